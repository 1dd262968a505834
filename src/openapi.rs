//! An OpenAPI 3.1 document for the routes a gateway serves, for client SDK generators
//! (like Amazon API Gateway's SDK generation) and API explorers.
//!
//! Describe each route once, with what the gateway does in front of it — a bearer JWT, an API
//! key on a usage plan, a throttle, the cache, a validated JSON body — and the document lists
//! the refusals that brings: `401`, `403`, `429`, `400`, `413` and `415`, each an
//! `application/problem+json` response shared under `components.responses`, with the headers
//! tollgate sends (`WWW-Authenticate`, `Retry-After`, `RateLimit`, `RateLimit-Policy`).
//!
//! ```
//! use serde_json::json;
//! use tollgate::openapi::{OpenApi, Operation};
//!
//! let document = OpenApi::new("Pets", "1.0.0")
//!     .stage("prod", "https://api.example.com/v1")
//!     .bearer_jwt()
//!     .api_key_header("x-api-key")
//!     .route(
//!         "GET /pets/{id}",
//!         Operation::new()
//!             .summary("One pet")
//!             .api_key()
//!             .response(200, "The pet", Some(json!({ "type": "object" }))),
//!     )
//!     .route(
//!         "POST /pets",
//!         Operation::new()
//!             .bearer(["pets:write"])
//!             .json_body(json!({ "type": "object", "required": ["name"] }))
//!             .response(201, "Created", None),
//!     )
//!     .build()?;
//!
//! let get = &document["paths"]["/pets/{id}"]["get"];
//! assert_eq!(get["operationId"], "getPetsById");
//! assert_eq!(get["parameters"][0]["in"], "path");
//! assert_eq!(get["security"], json!([{ "apiKey": [] }]));
//! assert_eq!(get["responses"]["429"]["$ref"], "#/components/responses/TooManyRequests");
//! # Ok::<(), tollgate::openapi::OpenApiError>(())
//! ```
//!
//! # Routes
//!
//! Routes are written as for [`RouteTable`] and axum: `"METHOD /path"`
//! with `{name}` parameters, which become required string path parameters. A catch-all
//! `{*rest}` is written `{rest}` (OpenAPI has no catch-all) and its description says it takes
//! the rest of the path, `/` included. A route for any method (`"* /path"` or a bare
//! `"/path"`) is refused: OpenAPI describes one operation per method, and an SDK with a
//! method for each of the eight would promise what the route may not do; list the methods it
//! serves instead. Literal braces (`{{`, `}}`) are refused too, as OpenAPI reads braces as
//! parameters.
//!
//! # Servers and stages
//!
//! [`OpenApi::server`] and [`OpenApi::stage`] both add to the document's `servers`. An
//! operation restricted with [`Operation::stages`] lists only its stages' servers. One that is
//! not restricted is served by the plain servers, so in a document with both it lists those;
//! in a document with stages only, it is on every stage (an API deployed to each stage, as
//! with Amazon API Gateway).
//!
//! Output is deterministic: the same description gives the same document.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{json, Map, Value};
use tollgate_core::RouteTable;

/// The methods an OpenAPI 3.1 path item has a field for.
const METHODS: [&str; 8] = [
    "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
];

/// The name of the bearer-JWT security scheme in `components.securitySchemes`.
const BEARER: &str = "bearer";
/// The name of the API key security scheme in `components.securitySchemes`.
const API_KEY: &str = "apiKey";

/// An OpenAPI 3.1 document describing the routes a tollgate gateway serves.
///
/// Built up by value and turned into JSON by [`build`](Self::build), which checks the whole
/// description and lists every problem it finds.
#[derive(Clone, Debug)]
#[must_use]
pub struct OpenApi {
    title: String,
    version: String,
    description: Option<String>,
    servers: Vec<Server>,
    bearer: bool,
    api_key: Option<ApiKeyIn>,
    routes: Vec<(String, Operation)>,
}

/// Where the API key security scheme reads the key.
#[derive(Clone, Debug)]
struct ApiKeyIn {
    /// `header` or `query`, OpenAPI's `in`.
    location: &'static str,
    name: String,
}

#[derive(Clone, Debug)]
struct Server {
    url: String,
    description: String,
    /// The stage's name, for a server added by [`OpenApi::stage`].
    stage: Option<String>,
}

impl Server {
    fn to_json(&self) -> Value {
        json!({ "url": self.url, "description": self.description })
    }
}

impl OpenApi {
    /// A document for the API `title` at `version` (the API's version, not OpenAPI's).
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            description: None,
            servers: Vec::new(),
            bearer: false,
            api_key: None,
            routes: Vec::new(),
        }
    }

    /// The API's description (CommonMark).
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// A base URL the API is served at, such as `https://api.example.com`.
    pub fn server(mut self, url: impl Into<String>, description: impl Into<String>) -> Self {
        self.servers.push(Server {
            url: url.into(),
            description: description.into(),
            stage: None,
        });
        self
    }

    /// A stage and its base URL, such as `("v1", "https://api.example.com/v1")`: a server
    /// described as `stage <name>`. [`Operation::stages`] restricts an operation to some
    /// stages.
    pub fn stage(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        let name = name.into();
        self.servers.push(Server {
            url: url.into(),
            description: format!("stage {name}"),
            stage: Some(name),
        });
        self
    }

    /// Declares the bearer-JWT security scheme, named `bearer` (`type: http`,
    /// `scheme: bearer`, `bearerFormat: JWT`), for [`Operation::bearer`].
    pub fn bearer_jwt(mut self) -> Self {
        self.bearer = true;
        self
    }

    /// Declares the API key security scheme, named `apiKey`: the key in the request header
    /// `header` (`type: apiKey`, `in: header`), for [`Operation::api_key`]. Replaces an
    /// earlier [`api_key_query`](Self::api_key_query).
    pub fn api_key_header(mut self, header: impl Into<String>) -> Self {
        self.api_key = Some(ApiKeyIn {
            location: "header",
            name: header.into(),
        });
        self
    }

    /// Declares the API key security scheme, named `apiKey`: the key in the query parameter
    /// `name` (`type: apiKey`, `in: query`), for [`Operation::api_key`]. Replaces an earlier
    /// [`api_key_header`](Self::api_key_header).
    pub fn api_key_query(mut self, name: impl Into<String>) -> Self {
        self.api_key = Some(ApiKeyIn {
            location: "query",
            name: name.into(),
        });
        self
    }

    /// Describes a route: `"GET /pets/{id}"`, a method, a space or a tab, and a path template
    /// in axum's syntax (see the [module docs](self#routes)).
    pub fn route(mut self, route: &str, operation: Operation) -> Self {
        self.routes.push((route.to_owned(), operation));
        self
    }

    /// The document as JSON, or every problem with the description: a route that cannot be
    /// read or described, a route described twice, an operation that needs a security scheme
    /// or a stage that was not declared, an `operationId` used twice.
    pub fn build(&self) -> Result<Value, OpenApiError> {
        let mut problems = Vec::new();
        let stage_names = self.stage_names(&mut problems);
        let routes = self.parse_routes(&mut problems);
        let operation_ids = self.operation_ids(&routes, &mut problems);

        let mut components = Components::default();
        let mut paths: Vec<PathItem> = Vec::new();
        for (route, operation_id) in routes.iter().zip(operation_ids) {
            let (text, operation) = &self.routes[route.index];
            self.check_security(text, operation, &mut problems);
            let servers = self.operation_servers(text, operation, &stage_names, &mut problems);
            let described = operation.to_json(route, operation_id, &mut components);
            match paths.iter_mut().find(|item| item.path == route.path) {
                Some(item) => item
                    .operations
                    .push((route.method.clone(), described, servers)),
                None => paths.push(PathItem {
                    path: route.path.clone(),
                    operations: vec![(route.method.clone(), described, servers)],
                }),
            }
        }
        if !problems.is_empty() {
            return Err(OpenApiError { problems });
        }

        let mut info = Map::new();
        info.insert("title".into(), self.title.clone().into());
        info.insert("version".into(), self.version.clone().into());
        if let Some(description) = &self.description {
            info.insert("description".into(), description.clone().into());
        }
        let mut document = Map::new();
        document.insert("openapi".into(), "3.1.0".into());
        document.insert("info".into(), info.into());
        if !self.servers.is_empty() {
            let servers = self.servers.iter().map(Server::to_json).collect();
            document.insert("servers".into(), Value::Array(servers));
        }
        let paths: Map<String, Value> = paths
            .into_iter()
            .map(|item| (item.path.clone(), item.into_json()))
            .collect();
        document.insert("paths".into(), paths.into());
        let components = components.into_json(self.bearer, self.api_key.as_ref());
        if !components.is_empty() {
            document.insert("components".into(), components.into());
        }
        Ok(document.into())
    }

    /// The declared stages' names; a name declared twice is a problem.
    fn stage_names(&self, problems: &mut Vec<String>) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for name in self.servers.iter().filter_map(|s| s.stage.as_deref()) {
            if names.contains(&name) {
                problems.push(format!("stage {name:?} is declared twice"));
            } else {
                names.push(name);
            }
        }
        names
    }

    /// Every route that can be described, in the order given; the others are problems.
    fn parse_routes(&self, problems: &mut Vec<String>) -> Vec<ParsedRoute> {
        // The gateway's own route table reads the text and refuses overlapping templates.
        let mut table = RouteTable::new();
        // OpenAPI's key for a path is its template with the parameters' names erased.
        let mut shapes: Vec<(String, String, &str)> = Vec::new();
        let mut parsed = Vec::new();
        for (index, (text, _)) in self.routes.iter().enumerate() {
            if let Err(error) = table.insert(text, ()) {
                problems.push(error.to_string());
                continue;
            }
            let Some((method, template)) = table
                .iter()
                .last()
                .and_then(|(normalised, ())| normalised.split_once(' '))
            else {
                continue;
            };
            if method == "*" {
                problems.push(format!(
                    "route {text:?}: expected a method such as GET; OpenAPI describes one \
                     operation per method, so list the methods a route for any method serves"
                ));
                continue;
            }
            if !METHODS.contains(&method) {
                problems.push(format!(
                    "route {text:?}: expected a method OpenAPI 3.1 describes, one of {}, \
                     found {method:?}",
                    METHODS.join(", ")
                ));
                continue;
            }
            let (path, params) = match PathTemplate::parse(template) {
                Ok(template) => (template.path, template.params),
                Err(reason) => {
                    problems.push(format!("route {text:?}: {reason}"));
                    continue;
                }
            };
            let shape = erase_param_names(&path);
            match shapes.iter().find(|(s, _, _)| *s == shape) {
                Some((_, other_path, other_text)) if *other_path != path => {
                    problems.push(format!(
                        "routes {other_text:?} and {text:?} are the same OpenAPI path with \
                         different parameter names; expected the same names"
                    ));
                    continue;
                }
                Some(_) => {}
                None => shapes.push((shape, path.clone(), text)),
            }
            parsed.push(ParsedRoute {
                index,
                method: method.to_ascii_lowercase(),
                template: template.to_owned(),
                path,
                params,
            });
        }
        parsed
    }

    /// Each route's `operationId`: the one given, or one derived from the method and path and
    /// made unique with a number.
    fn operation_ids(&self, routes: &[ParsedRoute], problems: &mut Vec<String>) -> Vec<String> {
        let mut taken: Vec<(&str, &str)> = Vec::new();
        for route in routes {
            let (text, operation) = &self.routes[route.index];
            if let Some(id) = &operation.operation_id {
                match taken.iter().find(|(used, _)| used == id) {
                    Some((_, other)) => problems.push(format!(
                        "operationId {id:?} is given to both {other:?} and {text:?}; expected \
                         unique ids"
                    )),
                    None => taken.push((id, text)),
                }
            }
        }
        let mut used: BTreeSet<String> = taken.iter().map(|(id, _)| (*id).to_owned()).collect();
        routes
            .iter()
            .map(|route| match &self.routes[route.index].1.operation_id {
                Some(id) => id.clone(),
                None => {
                    let base = derive_operation_id(&route.method, &route.template);
                    let mut id = base.clone();
                    let mut n = 2;
                    while used.contains(&id) {
                        id = format!("{base}{n}");
                        n += 1;
                    }
                    used.insert(id.clone());
                    id
                }
            })
            .collect()
    }

    fn check_security(&self, text: &str, operation: &Operation, problems: &mut Vec<String>) {
        if operation.bearer.is_some() && !self.bearer {
            problems.push(format!(
                "route {text:?} needs the bearer scheme, which is not declared: expected \
                 OpenApi::bearer_jwt()"
            ));
        }
        if operation.api_key && self.api_key.is_none() {
            problems.push(format!(
                "route {text:?} needs the API key scheme, which is not declared: expected \
                 OpenApi::api_key_header(..) or OpenApi::api_key_query(..)"
            ));
        }
    }

    /// The servers an operation lists, when they differ from the document's.
    fn operation_servers(
        &self,
        text: &str,
        operation: &Operation,
        stage_names: &[&str],
        problems: &mut Vec<String>,
    ) -> Option<Vec<Value>> {
        let has_plain = self.servers.iter().any(|s| s.stage.is_none());
        if operation.stages.is_empty() {
            // Unrestricted: on the plain servers, which a document with stages too must say.
            return (has_plain && !stage_names.is_empty()).then(|| {
                self.servers
                    .iter()
                    .filter(|s| s.stage.is_none())
                    .map(Server::to_json)
                    .collect()
            });
        }
        for stage in &operation.stages {
            if !stage_names.contains(&stage.as_str()) {
                let declared = if stage_names.is_empty() {
                    "none is declared (OpenApi::stage)".to_owned()
                } else {
                    format!("expected one of {stage_names:?}")
                };
                problems.push(format!(
                    "route {text:?} is restricted to stage {stage:?}, which is not declared: \
                     {declared}"
                ));
            }
        }
        // Every stage is on the document's list already, so only a subset or a mix with plain
        // servers needs saying.
        let servers: Vec<Value> = self
            .servers
            .iter()
            .filter(|s| {
                s.stage
                    .as_ref()
                    .is_some_and(|name| operation.stages.contains(name))
            })
            .map(Server::to_json)
            .collect();
        (servers.len() != self.servers.len()).then_some(servers)
    }
}

/// A route as OpenAPI writes it.
struct ParsedRoute {
    /// Its place in [`OpenApi::routes`].
    index: usize,
    /// The method, lower case, as the path item's field.
    method: String,
    /// The template in axum's syntax.
    template: String,
    /// The template in OpenAPI's syntax (`{*rest}` written `{rest}`).
    path: String,
    params: Vec<PathParam>,
}

/// A path template parameter.
#[derive(Debug, PartialEq, Eq)]
struct PathParam {
    name: String,
    catch_all: bool,
}

/// An axum (matchit) path template, read for OpenAPI.
#[derive(Debug, PartialEq, Eq)]
struct PathTemplate {
    path: String,
    params: Vec<PathParam>,
}

impl PathTemplate {
    fn parse(template: &str) -> Result<Self, String> {
        if template.contains("{{") || template.contains("}}") {
            return Err(format!(
                "expected no literal braces ({{{{ or }}}}), which OpenAPI would read as \
                 parameters, found {template:?}"
            ));
        }
        let mut path = String::with_capacity(template.len());
        let mut params: Vec<PathParam> = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            path.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("expected a closing brace in {template:?}"));
            };
            let inside = &rest[open + 1..open + close];
            let (name, catch_all) = match inside.strip_prefix('*') {
                Some(name) => (name, true),
                None => (inside, false),
            };
            if params.iter().any(|p| p.name == name) {
                return Err(format!(
                    "expected each parameter once, found {name:?} twice"
                ));
            }
            path.push('{');
            path.push_str(name);
            path.push('}');
            params.push(PathParam {
                name: name.to_owned(),
                catch_all,
            });
            rest = &rest[open + close + 1..];
        }
        path.push_str(rest);
        Ok(Self { path, params })
    }
}

/// `/pets/{id}` and `/pets/{name}` are one path to OpenAPI: both become `/pets/{}`.
fn erase_param_names(path: &str) -> String {
    let mut erased = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                erased.push('{');
            }
            '}' => {
                in_param = false;
                erased.push('}');
            }
            _ if in_param => {}
            _ => erased.push(c),
        }
    }
    erased
}

/// `get` and `/pets/{id}` give `getPetsById`; `/` gives `getRoot`.
fn derive_operation_id(method: &str, template: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    let start = id.len();
    let mut rest = template;
    loop {
        let (text, param) = match rest.find('{') {
            Some(open) => {
                let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
                let name = rest[open + 1..close].trim_start_matches('*');
                let after = (close + 1).min(rest.len());
                let (text, param) = (&rest[..open], Some(name));
                rest = &rest[after..];
                (text, param)
            }
            None => {
                let text = rest;
                rest = "";
                (text, None)
            }
        };
        push_words(&mut id, text);
        if let Some(name) = param {
            id.push_str("By");
            push_words(&mut id, name);
        }
        if rest.is_empty() {
            break;
        }
    }
    if id.len() == start {
        id.push_str("Root");
    }
    id
}

/// Appends each alphanumeric word of `text` with its first letter in capitals.
fn push_words(id: &mut String, text: &str) {
    for word in text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.push_str(chars.as_str());
        }
    }
}

/// One path of the document and its operations, with the servers each lists.
struct PathItem {
    path: String,
    operations: Vec<(String, Value, Option<Vec<Value>>)>,
}

impl PathItem {
    fn into_json(self) -> Value {
        let mut item = Map::new();
        let first = self
            .operations
            .first()
            .map(|(_, _, servers)| servers.clone());
        // The same servers for every operation are said once, on the path item.
        let shared = first.flatten().filter(|servers| {
            self.operations
                .iter()
                .all(|(_, _, s)| s.as_ref() == Some(servers))
        });
        for (method, mut operation, servers) in self.operations {
            if let (None, Some(servers), Value::Object(fields)) = (&shared, servers, &mut operation)
            {
                fields.insert("servers".into(), Value::Array(servers));
            }
            item.insert(method, operation);
        }
        if let Some(servers) = shared {
            item.insert("servers".into(), Value::Array(servers));
        }
        item.into()
    }
}

/// What an operation needs under `components`.
#[derive(Default)]
struct Components {
    responses: BTreeSet<Refusal>,
}

impl Components {
    fn into_json(self, bearer: bool, api_key: Option<&ApiKeyIn>) -> Map<String, Value> {
        let mut components = Map::new();
        let mut schemes = Map::new();
        if bearer {
            schemes.insert(
                BEARER.into(),
                json!({
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT in `Authorization: Bearer <token>`. The token needs \
                        every scope a requirement names; where an operation lists several \
                        requirements, meeting one of them is enough.",
                }),
            );
        }
        if let Some(key) = api_key {
            schemes.insert(
                API_KEY.into(),
                json!({
                    "type": "apiKey",
                    "in": key.location,
                    "name": key.name,
                    "description": "An API key on a usage plan, which sets its throttle and quota.",
                }),
            );
        }
        if !schemes.is_empty() {
            components.insert("securitySchemes".into(), schemes.into());
        }
        if !self.responses.is_empty() {
            components.insert("schemas".into(), json!({ "Problem": problem_schema() }));
            let responses: Map<String, Value> = self
                .responses
                .iter()
                .map(|refusal| (refusal.name().to_owned(), refusal.to_json()))
                .collect();
            components.insert("responses".into(), responses.into());
        }
        components
    }
}

/// RFC 9457 problem details as tollgate renders every refusal.
fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "Problem details (RFC 9457), as every refusal by the gateway is sent.",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {
                "type": "string",
                "description": "The kind of refusal, `urn:tollgate:problem:<slug>`, such as \
                    `urn:tollgate:problem:throttled`.",
                "examples": ["urn:tollgate:problem:throttled"],
            },
            "title": { "type": "string", "description": "A short summary of the kind." },
            "status": { "type": "integer", "description": "The response's status code." },
            "detail": { "type": "string", "description": "What was wrong with this request." },
            "errors": {
                "type": "array",
                "description": "For a request that failed validation: each violation.",
                "items": {
                    "type": "object",
                    "required": ["in", "pointer", "detail"],
                    "properties": {
                        "in": {
                            "type": "string",
                            "description": "Where the violation is: `header`, `query` or `body`.",
                        },
                        "name": {
                            "type": "string",
                            "description": "The header or query parameter's name.",
                        },
                        "pointer": {
                            "type": "string",
                            "description": "A JSON Pointer (RFC 6901) to the offending value.",
                        },
                        "detail": { "type": "string", "description": "What was expected." },
                        "keyword": {
                            "type": "string",
                            "description": "The JSON Schema keyword that failed.",
                        },
                    },
                },
            },
        },
    })
}

/// A refusal the gateway makes, shared under `components.responses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    BadRequest,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    UnsupportedMediaType,
    TooManyRequests,
}

impl Refusal {
    fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::TooManyRequests => 429,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::UnsupportedMediaType => "UnsupportedMediaType",
            Self::TooManyRequests => "TooManyRequests",
        }
    }

    fn reference(self) -> Value {
        json!({ "$ref": format!("#/components/responses/{}", self.name()) })
    }

    fn to_json(self) -> Value {
        let (description, headers) = match self {
            Self::BadRequest => (
                "The request is malformed or fails validation (problem type `bad-request`); \
                 `errors` lists each violation.",
                json!({}),
            ),
            Self::Unauthorized => (
                "Credentials are missing, malformed, expired or badly signed (problem type \
                 `unauthorized`), or the API key is missing or unknown (`invalid-api-key`).",
                json!({
                    "WWW-Authenticate": {
                        "description": "The challenge: `Bearer` with an RFC 6750 `error`, or \
                            `ApiKey`.",
                        "schema": { "type": "string" },
                    },
                }),
            ),
            Self::Forbidden => (
                "The caller is known but not allowed: a scope is missing, or the API key is \
                 disabled or not on this route's plan or stage (problem type `forbidden`).",
                json!({}),
            ),
            Self::PayloadTooLarge => (
                "The body is larger than the route accepts (problem type `payload-too-large`).",
                json!({}),
            ),
            Self::UnsupportedMediaType => (
                "The body is not of a media type the route reads (problem type \
                 `unsupported-media-type`).",
                json!({}),
            ),
            Self::TooManyRequests => (
                "Throttled (problem type `throttled`), or the usage plan's quota for the \
                 period is used up (`quota-exceeded`).",
                json!({
                    "Retry-After": {
                        "description": "Seconds to wait before trying again; for a quota, \
                            the time to the period's reset.",
                        "schema": { "type": "integer", "minimum": 1 },
                    },
                    "RateLimit": {
                        "description": "The remaining quota of each policy that applies \
                            (IETF RateLimit header fields, `\"name\";r=0;t=1`).",
                        "schema": { "type": "string" },
                    },
                    "RateLimit-Policy": {
                        "description": "The policies that apply (`\"name\";q=5;w=1`).",
                        "schema": { "type": "string" },
                    },
                }),
            ),
        };
        let mut response = json!({
            "description": description,
            "content": {
                "application/problem+json": {
                    "schema": { "$ref": "#/components/schemas/Problem" },
                },
            },
        });
        if headers.as_object().is_some_and(|h| !h.is_empty()) {
            response["headers"] = headers;
        }
        response
    }
}

/// What one route does: its parameters, body and responses, and what the gateway asks of a
/// caller before it runs.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Operation {
    summary: Option<String>,
    description: Option<String>,
    operation_id: Option<String>,
    tags: Vec<String>,
    /// The scopes of each alternative requirement: a token needs every scope of one.
    bearer: Option<Vec<Vec<String>>>,
    api_key: bool,
    optional_auth: bool,
    throttled: bool,
    cached: bool,
    /// Required headers or query parameters, or a body, are checked by the gateway.
    validated: bool,
    parameters: Vec<Parameter>,
    body: Option<Value>,
    body_limit: Option<u64>,
    responses: Vec<(u16, String, Option<Value>)>,
    stages: Vec<String>,
}

#[derive(Clone, Debug)]
struct Parameter {
    location: &'static str,
    name: String,
    schema: Value,
    required: bool,
}

impl Operation {
    /// An operation answering `200 OK`, open to anyone.
    pub fn new() -> Self {
        Self::default()
    }

    /// A one-line summary.
    pub fn summary(mut self, text: impl Into<String>) -> Self {
        self.summary = Some(text.into());
        self
    }

    /// A longer description (CommonMark).
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// The `operationId`, the method's name in a generated SDK. By default it is derived
    /// from the method and path (`GET /pets/{id}` gives `getPetsById`), with a number added
    /// where two routes would get the same one.
    pub fn operation_id(mut self, id: impl Into<String>) -> Self {
        self.operation_id = Some(id.into());
        self
    }

    /// A tag, grouping operations in docs and SDKs; may be called again for more.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
        self
    }

    /// The caller needs a bearer JWT with every one of `scopes` (none: any valid token), under
    /// the `bearer` scheme ([`OpenApi::bearer_jwt`]). Adds the `401` and `403` refusals.
    /// Replaces an earlier [`bearer_any_of`](Self::bearer_any_of).
    pub fn bearer<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.bearer = Some(vec![scopes.into_iter().map(Into::into).collect()]);
        self
    }

    /// The caller needs a bearer JWT with every one of `all_of` and at least one of `any_of`
    /// (when not empty), as a route policy's `all_scopes` and `any_scope` say. OpenAPI has no "one of these scopes", so the operation lists one
    /// security requirement per scope of `any_of`, each naming it and all of `all_of`:
    /// `bearer_any_of(["orders"], ["read", "admin"])` gives
    /// `[{"bearer": ["orders", "read"]}, {"bearer": ["orders", "admin"]}]`. Otherwise as
    /// [`bearer`](Self::bearer), which it replaces.
    pub fn bearer_any_of<A, B, S, T>(mut self, all_of: A, any_of: B) -> Self
    where
        A: IntoIterator<Item = S>,
        B: IntoIterator<Item = T>,
        S: Into<String>,
        T: Into<String>,
    {
        let all_of: Vec<String> = all_of.into_iter().map(Into::into).collect();
        let mut alternatives: Vec<Vec<String>> = Vec::new();
        for scope in any_of {
            let scope = scope.into();
            let mut scopes = all_of.clone();
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
            if !alternatives.contains(&scopes) {
                alternatives.push(scopes);
            }
        }
        if alternatives.is_empty() {
            alternatives.push(all_of);
        }
        self.bearer = Some(alternatives);
        self
    }

    /// The caller needs an API key on a usage plan, under the `apiKey` scheme
    /// ([`OpenApi::api_key_header`] or [`OpenApi::api_key_query`]). Adds `401`
    /// (`invalid-api-key`), `403`, and `429` (the plan's throttle or quota). With
    /// [`bearer`](Self::bearer) too, the caller needs both: the key is named in every
    /// security requirement.
    pub fn api_key(mut self) -> Self {
        self.api_key = true;
        self
    }

    /// The bearer token is optional: callers without one are let through too, and one that
    /// is sent is still checked. The operation lists one more security requirement, `{}`, or
    /// `{"apiKey": []}` with [`api_key`](Self::api_key), as the API key is still required.
    /// Has no effect without [`bearer`](Self::bearer) or
    /// [`bearer_any_of`](Self::bearer_any_of).
    pub fn optional_auth(mut self) -> Self {
        self.optional_auth = true;
        self
    }

    /// A throttle applies: adds `429` with `Retry-After`, `RateLimit` and `RateLimit-Policy`.
    pub fn throttled(mut self) -> Self {
        self.throttled = true;
        self
    }

    /// The response cache serves this route: the `200` response documents `X-Cache-Status`
    /// and `Age`.
    pub fn cached(mut self) -> Self {
        self.cached = true;
        self
    }

    /// A query parameter with a JSON Schema. A later parameter of the same name replaces
    /// this one.
    pub fn query(mut self, name: impl Into<String>, schema: Value, required: bool) -> Self {
        self.push_parameter("query", name.into(), schema, required);
        self
    }

    /// A request header (a string); names are compared without regard to case, and a later
    /// header of the same name replaces this one. `Accept`, `Content-Type` and
    /// `Authorization` are left out: OpenAPI 3.1 says header parameters of those names are
    /// ignored, as the request body's media type and the security schemes say them.
    pub fn header(mut self, name: impl Into<String>, required: bool) -> Self {
        self.push_parameter("header", name.into(), json!({ "type": "string" }), required);
        self
    }

    /// A required `application/json` request body with this JSON Schema. Adds the refusals
    /// of a body the gateway reads: `400` (a validation problem whose `errors` lists each
    /// violation), `413` and `415`.
    pub fn json_body(mut self, schema: Value) -> Self {
        self.body = Some(schema);
        self
    }

    /// A response: its status, a description and, for a JSON body, its schema. Without any,
    /// the operation answers `200 OK`. A response given for a status the gateway's refusals
    /// would also document replaces theirs.
    pub fn response(
        mut self,
        status: u16,
        description: impl Into<String>,
        json_schema: Option<Value>,
    ) -> Self {
        self.responses.retain(|(s, _, _)| *s != status);
        self.responses
            .push((status, description.into(), json_schema));
        self
    }

    /// Restricts the operation to these stages ([`OpenApi::stage`]): it lists only their
    /// servers.
    pub fn stages<I, S>(mut self, stages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for stage in stages {
            let stage = stage.into();
            if !self.stages.contains(&stage) {
                self.stages.push(stage);
            }
        }
        self
    }

    /// What a [`Validation`](crate::validate::Validation) checks on this route: its required
    /// headers and its query parameters become parameters (replacing any of the same name
    /// described before; required `Accept`, `Content-Type` and `Authorization` headers are
    /// left out, as for [`header`](Self::header)), its body schema the JSON body, with its
    /// size cap; and the refusals it makes are documented: `400` (with `errors`), `413` and,
    /// for a body, `415`.
    #[cfg(feature = "validate")]
    #[cfg_attr(docsrs, doc(cfg(feature = "validate")))]
    pub fn validation(mut self, validation: &crate::validate::Validation) -> Self {
        for header in validation.headers() {
            let name = header.as_str().to_owned();
            self.push_parameter("header", name, json!({ "type": "string" }), true);
            self.validated = true;
        }
        for (name, param) in validation.query_params() {
            let (schema, required) = (param.json_schema(), param.is_required());
            self.push_parameter("query", name.to_owned(), schema, required);
            self.validated = true;
        }
        if let Some(schema) = validation.body_schema() {
            self.body = Some(schema.clone());
        }
        if let Some(limit) = validation.body_limit() {
            self.body_limit = Some(limit);
        }
        self
    }

    fn push_parameter(
        &mut self,
        location: &'static str,
        name: String,
        schema: Value,
        required: bool,
    ) {
        // OpenAPI 3.1: header parameters named so "SHALL be ignored".
        let ignored = ["accept", "content-type", "authorization"];
        if location == "header" && ignored.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            return;
        }
        let same = |p: &Parameter| {
            p.location == location
                && if location == "header" {
                    p.name.eq_ignore_ascii_case(&name)
                } else {
                    p.name == name
                }
        };
        self.parameters.retain(|p| !same(p));
        self.parameters.push(Parameter {
            location,
            name,
            schema,
            required,
        });
    }

    fn to_json(
        &self,
        route: &ParsedRoute,
        operation_id: String,
        components: &mut Components,
    ) -> Value {
        let mut operation = Map::new();
        operation.insert("operationId".into(), operation_id.into());
        if let Some(summary) = &self.summary {
            operation.insert("summary".into(), summary.clone().into());
        }
        if let Some(description) = &self.description {
            operation.insert("description".into(), description.clone().into());
        }
        if !self.tags.is_empty() {
            operation.insert("tags".into(), self.tags.clone().into());
        }

        let mut parameters: Vec<Value> = route
            .params
            .iter()
            .map(|param| {
                let mut parameter = json!({
                    "name": param.name,
                    "in": "path",
                    "required": true,
                    "schema": { "type": "string" },
                });
                if param.catch_all {
                    parameter["description"] = "The rest of the path, `/` included (a \
                        catch-all parameter: one or more characters)."
                        .into();
                }
                parameter
            })
            .collect();
        parameters.extend(self.parameters.iter().map(|p| {
            json!({
                "name": p.name,
                "in": p.location,
                "required": p.required,
                "schema": p.schema,
            })
        }));
        if !parameters.is_empty() {
            operation.insert("parameters".into(), parameters.into());
        }

        if let Some(schema) = &self.body {
            let mut body = json!({
                "required": true,
                "content": { "application/json": { "schema": schema } },
            });
            if let Some(limit) = self.body_limit {
                body["description"] = format!("At most {limit} bytes.").into();
            }
            operation.insert("requestBody".into(), body);
        }

        let security = self.security();
        if !security.is_empty() {
            operation.insert("security".into(), security.into());
        }

        operation.insert("responses".into(), self.responses_json(components).into());
        operation.into()
    }

    /// The security requirements, alternatives of which a caller meets one: one per bearer
    /// alternative, then the anonymous one when the token is optional; the API key, which is
    /// never optional, in each.
    fn security(&self) -> Vec<Value> {
        let requirement = |scopes: Option<&Vec<String>>| {
            let mut requirement = Map::new();
            if let Some(scopes) = scopes {
                requirement.insert(BEARER.into(), scopes.clone().into());
            }
            if self.api_key {
                requirement.insert(API_KEY.into(), json!([]));
            }
            Value::Object(requirement)
        };
        match &self.bearer {
            Some(alternatives) => {
                let mut security: Vec<Value> = alternatives
                    .iter()
                    .map(|scopes| requirement(Some(scopes)))
                    .collect();
                if self.optional_auth {
                    security.push(requirement(None));
                }
                security
            }
            None if self.api_key => vec![requirement(None)],
            None => Vec::new(),
        }
    }

    fn responses_json(&self, components: &mut Components) -> Map<String, Value> {
        let mut responses = Map::new();
        let declared: Vec<(u16, String, Option<Value>)> = if self.responses.is_empty() {
            vec![(200, "OK".to_owned(), None)]
        } else {
            self.responses.clone()
        };
        for (status, description, schema) in declared {
            let mut response = json!({ "description": description });
            if let Some(schema) = schema {
                response["content"] = json!({ "application/json": { "schema": schema } });
            }
            if self.cached && status == 200 {
                response["headers"] = json!({
                    "X-Cache-Status": {
                        "description": "How the response cache answered: `HIT`, `MISS`, \
                            `STALE`, `REFRESH` or `BYPASS`.",
                        "schema": { "type": "string" },
                    },
                    "Age": {
                        "description": "Seconds since the cached response was made (RFC 9111).",
                        "schema": { "type": "integer", "minimum": 0 },
                    },
                });
            }
            responses.insert(status.to_string(), response);
        }

        let authenticated = self.bearer.is_some() || self.api_key;
        let refusals = [
            (Refusal::BadRequest, self.body.is_some() || self.validated),
            (Refusal::Unauthorized, authenticated),
            (Refusal::Forbidden, authenticated),
            (
                Refusal::PayloadTooLarge,
                self.body.is_some() || self.body_limit.is_some(),
            ),
            (Refusal::UnsupportedMediaType, self.body.is_some()),
            (Refusal::TooManyRequests, self.throttled || self.api_key),
        ];
        for (refusal, applies) in refusals {
            let status = refusal.status().to_string();
            if applies && !responses.contains_key(&status) {
                responses.insert(status, refusal.reference());
                components.responses.insert(refusal);
            }
        }
        responses
    }
}

/// Why [`OpenApi::build`] could not make a document: every problem it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenApiError {
    problems: Vec<String>,
}

impl OpenApiError {
    /// Each problem, in the order of the description.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for OpenApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "cannot describe the API in OpenAPI: {one}"),
            problems => {
                write!(
                    f,
                    "cannot describe the API in OpenAPI, {} problems:",
                    problems.len()
                )?;
                for problem in problems {
                    write!(f, "\n- {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for OpenApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_derived_from_method_and_path() {
        assert_eq!(derive_operation_id("get", "/pets/{id}"), "getPetsById");
        assert_eq!(derive_operation_id("get", "/"), "getRoot");
        assert_eq!(
            derive_operation_id("post", "/api/widgets"),
            "postApiWidgets"
        );
        assert_eq!(
            derive_operation_id("get", "/openapi.json"),
            "getOpenapiJson"
        );
        assert_eq!(
            derive_operation_id("delete", "/pets/{pet_id}/toys/{toyId}"),
            "deletePetsByPetIdToysByToyId"
        );
        assert_eq!(
            derive_operation_id("get", "/files/{*rest}"),
            "getFilesByRest"
        );
        assert_eq!(
            derive_operation_id("get", "/files/{name}.json"),
            "getFilesByNameJson"
        );
    }

    #[test]
    fn derived_operation_ids_are_made_unique_and_given_ones_kept() {
        let document = OpenApi::new("t", "1")
            .route("GET /pet-list", Operation::new())
            .route("GET /pet_list", Operation::new())
            .route("GET /pet.list", Operation::new())
            .route("GET /other", Operation::new().operation_id("getPetList"))
            .build()
            .unwrap();
        let id = |path: &str| document["paths"][path]["get"]["operationId"].clone();
        assert_eq!(id("/other"), "getPetList");
        assert_eq!(id("/pet-list"), "getPetList2");
        assert_eq!(id("/pet_list"), "getPetList3");
        assert_eq!(id("/pet.list"), "getPetList4");
    }

    #[test]
    fn path_parameters_come_from_the_template_and_catch_alls_lose_their_star() {
        let template = PathTemplate::parse("/pets/{id}/files/{*rest}").unwrap();
        assert_eq!(template.path, "/pets/{id}/files/{rest}");
        assert_eq!(
            template.params,
            vec![
                PathParam {
                    name: "id".into(),
                    catch_all: false
                },
                PathParam {
                    name: "rest".into(),
                    catch_all: true
                },
            ]
        );
        let suffixed = PathTemplate::parse("/files/{name}.json").unwrap();
        assert_eq!(suffixed.path, "/files/{name}.json");
        assert_eq!(suffixed.params.len(), 1);
        assert!(PathTemplate::parse("/a/{{literal}}").is_err());
    }

    #[test]
    fn path_parameters_are_required_strings_on_the_operation() {
        let document = OpenApi::new("t", "1")
            .route("GET /files/{*path}", Operation::new())
            .build()
            .unwrap();
        let parameter = &document["paths"]["/files/{path}"]["get"]["parameters"][0];
        assert_eq!(parameter["name"], "path");
        assert_eq!(parameter["in"], "path");
        assert_eq!(parameter["required"], true);
        assert_eq!(parameter["schema"]["type"], "string");
        assert!(parameter["description"]
            .as_str()
            .unwrap()
            .contains("`/` included"));
    }

    #[test]
    fn one_path_with_different_parameter_names_is_refused() {
        let error = OpenApi::new("t", "1")
            .route("GET /pets/{id}", Operation::new())
            .route("DELETE /pets/{name}", Operation::new())
            .build()
            .unwrap_err();
        assert_eq!(error.problems().len(), 1, "{error}");
        assert!(
            error.problems()[0].contains("different parameter names"),
            "{error}"
        );
    }

    #[test]
    fn any_method_and_extension_methods_are_refused() {
        let error = OpenApi::new("t", "1")
            .route("* /a", Operation::new())
            .route("/b", Operation::new())
            .route("get /c", Operation::new())
            .build()
            .unwrap_err();
        assert_eq!(error.problems().len(), 3, "{error}");
        assert!(error.problems()[2].contains("found \"get\""), "{error}");
    }

    #[test]
    fn optional_auth_adds_the_anonymous_requirement() {
        let document = OpenApi::new("t", "1")
            .bearer_jwt()
            .route("GET /a", Operation::new().bearer(["read"]).optional_auth())
            .build()
            .unwrap();
        assert_eq!(
            document["paths"]["/a"]["get"]["security"],
            json!([{ "bearer": ["read"] }, {}])
        );
    }

    #[test]
    fn optional_auth_keeps_the_api_key_in_every_requirement() {
        let document = OpenApi::new("t", "1")
            .bearer_jwt()
            .api_key_query("api_key")
            .route(
                "GET /a",
                Operation::new().bearer(["read"]).api_key().optional_auth(),
            )
            .route("GET /b", Operation::new().api_key().optional_auth())
            .build()
            .unwrap();
        assert_eq!(
            document["paths"]["/a"]["get"]["security"],
            json!([{ "bearer": ["read"], "apiKey": [] }, { "apiKey": [] }])
        );
        assert_eq!(
            document["paths"]["/b"]["get"]["security"],
            json!([{ "apiKey": [] }])
        );
        let scheme = &document["components"]["securitySchemes"]["apiKey"];
        assert_eq!(
            (&scheme["in"], &scheme["name"]),
            (&json!("query"), &json!("api_key"))
        );
    }

    #[test]
    fn any_of_scopes_become_one_requirement_each() {
        let document = OpenApi::new("t", "1")
            .bearer_jwt()
            .route(
                "GET /a",
                Operation::new().bearer_any_of(["orders"], ["read", "admin", "read", "orders"]),
            )
            .route(
                "GET /b",
                Operation::new().bearer_any_of(["orders"], Vec::<String>::new()),
            )
            .build()
            .unwrap();
        assert_eq!(
            document["paths"]["/a"]["get"]["security"],
            json!([
                { "bearer": ["orders", "read"] },
                { "bearer": ["orders", "admin"] },
                { "bearer": ["orders"] },
            ])
        );
        assert_eq!(
            document["paths"]["/b"]["get"]["security"],
            json!([{ "bearer": ["orders"] }])
        );
    }

    #[cfg(feature = "validate")]
    #[test]
    fn a_validation_becomes_parameters_a_body_and_its_refusals() {
        use crate::validate::{QueryParam, Validation};

        let validation = Validation::new()
            .header("Idempotency-Key")
            .query("priority", QueryParam::integer().min(1).max(5).required())
            .body(json!({ "type": "object", "required": ["items"] }))
            .max_body_bytes(4096);
        let document = OpenApi::new("t", "1")
            .route(
                "POST /orders",
                Operation::new()
                    .query("priority", json!({ "type": "string" }), false)
                    .validation(&validation),
            )
            .build()
            .unwrap();
        let post = &document["paths"]["/orders"]["post"];
        assert_eq!(
            post["parameters"],
            json!([
                { "name": "idempotency-key", "in": "header", "required": true,
                  "schema": { "type": "string" } },
                { "name": "priority", "in": "query", "required": true,
                  "schema": { "type": "integer", "minimum": 1, "maximum": 5 } },
            ])
        );
        assert_eq!(post["requestBody"]["description"], "At most 4096 bytes.");
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["required"],
            json!(["items"])
        );
        for status in ["400", "413", "415"] {
            assert!(
                post["responses"][status]["$ref"].is_string(),
                "{status}: {post}"
            );
        }

        let headers_only = OpenApi::new("t", "1")
            .route(
                "GET /a",
                Operation::new().validation(&Validation::new().header("x-client")),
            )
            .build()
            .unwrap();
        let responses = &headers_only["paths"]["/a"]["get"]["responses"];
        assert!(responses["400"].is_object(), "{responses}");
        assert!(
            responses.get("413").is_none() && responses.get("415").is_none(),
            "{responses}"
        );
    }

    #[test]
    fn a_later_parameter_of_the_same_name_replaces_the_earlier() {
        let document = OpenApi::new("t", "1")
            .route(
                "GET /a",
                Operation::new()
                    .header("X-Client", false)
                    .header("x-client", true)
                    .query("limit", json!({ "type": "integer" }), false),
            )
            .build()
            .unwrap();
        let parameters = document["paths"]["/a"]["get"]["parameters"]
            .as_array()
            .unwrap();
        assert_eq!(parameters.len(), 2);
        assert_eq!(parameters[0]["name"], "x-client");
        assert_eq!(parameters[0]["required"], true);
        assert_eq!(parameters[1]["name"], "limit");
    }
}
