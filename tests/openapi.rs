//! The OpenAPI export: the quickstart's document passes the official OpenAPI 3.1 schema, says
//! what the gateway does in front of each route, and is what the running quickstart serves and
//! answers by.

mod support;

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)] // the example's `main`, which the test does not run
mod quickstart;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::Client;
use tokio::net::TcpListener;
use tollgate::openapi::{OpenApi, Operation};

/// The OpenAPI Initiative's schema for OpenAPI 3.1 documents (see the README beside it).
fn openapi_schema() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(include_str!("fixtures/openapi-3.1-schema.json")).unwrap();
    // Draft 2020-12, from its `$schema`; its meta-schema is built into jsonschema, and its
    // `$dynamicRef: "#meta"` resolves inside the file, so nothing is fetched.
    jsonschema::validator_for(&schema).unwrap()
}

/// Every way `document` breaks the schema, one per line.
fn violations(document: &Value) -> String {
    openapi_schema()
        .iter_errors(document)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn addr() -> SocketAddr {
    "127.0.0.1:3000".parse().unwrap()
}

#[test]
fn quickstart_document_is_valid_openapi_3_1() {
    let document = quickstart::openapi(addr()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(
        openapi_schema().is_valid(&document),
        "{}",
        violations(&document)
    );
}

#[test]
fn a_document_the_schema_must_refuse_is_refused() {
    let validator = openapi_schema();
    let mut cookie_jar = quickstart::openapi(addr()).unwrap();
    cookie_jar["paths"]["/hello"]["get"]["parameters"] =
        json!([{ "name": "session", "in": "cookiejar", "schema": { "type": "string" } }]);
    assert!(!validator.is_valid(&cookie_jar));

    let mut no_version = quickstart::openapi(addr()).unwrap();
    no_version["info"]
        .as_object_mut()
        .unwrap()
        .remove("version");
    assert!(!validator.is_valid(&no_version));

    // Deep inside, through the schema's references: a response needs its description.
    let mut undescribed = quickstart::openapi(addr()).unwrap();
    undescribed["paths"]["/api/widgets"]["get"]["responses"]["200"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    assert!(!validator.is_valid(&undescribed));

    let mut openapi_3_0 = quickstart::openapi(addr()).unwrap();
    openapi_3_0["openapi"] = "3.0.3".into();
    assert!(!validator.is_valid(&openapi_3_0));
}

#[test]
fn quickstart_document_declares_the_bearer_and_api_key_schemes() {
    let document = quickstart::openapi(addr()).unwrap();
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["apiKey"]["type"], "apiKey");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["apiKey"]["name"], "x-api-key");
}

#[test]
fn quickstart_document_says_what_each_route_needs_and_how_it_can_be_refused() {
    let document = quickstart::openapi(addr()).unwrap();
    let paths = &document["paths"];
    let refusal = |name: &str| json!({ "$ref": format!("#/components/responses/{name}") });

    let hello = &paths["/hello"]["get"];
    assert!(hello.get("security").is_none(), "{hello}");
    assert_eq!(hello["responses"]["429"], refusal("TooManyRequests"));

    let me = &paths["/me"]["get"];
    assert_eq!(me["security"], json!([{ "bearer": [] }]));
    assert_eq!(me["responses"]["401"], refusal("Unauthorized"));
    assert_eq!(me["responses"]["403"], refusal("Forbidden"));
    assert_eq!(me["responses"]["429"], refusal("TooManyRequests"));

    let widgets = &paths["/api/widgets"]["get"];
    assert_eq!(widgets["security"], json!([{ "apiKey": [] }]));
    assert_eq!(widgets["responses"]["401"], refusal("Unauthorized"));
    assert_eq!(widgets["responses"]["429"], refusal("TooManyRequests"));
    assert_eq!(widgets["operationId"], "getApiWidgets");

    let slow = &paths["/api/slow"]["get"]["responses"]["200"];
    assert!(slow["headers"]["X-Cache-Status"].is_object(), "{slow}");
    assert!(slow["headers"]["Age"].is_object(), "{slow}");

    let too_many = &document["components"]["responses"]["TooManyRequests"];
    for header in ["Retry-After", "RateLimit", "RateLimit-Policy"] {
        assert!(
            too_many["headers"][header].is_object(),
            "{header}: {too_many}"
        );
    }
    assert_eq!(
        too_many["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    assert!(
        document["components"]["responses"]["Unauthorized"]["headers"]["WWW-Authenticate"]
            .is_object()
    );
    let problem = &document["components"]["schemas"]["Problem"];
    assert_eq!(problem["required"], json!(["type", "title", "status"]));
    assert!(problem["properties"]["errors"]["items"]["properties"]["pointer"].is_object());

    for path in ["/api/dashboard", "/openapi.json"] {
        assert!(paths[path]["get"]["responses"]["200"].is_object(), "{path}");
    }
    assert_eq!(
        paths["/openapi.json"]["get"]["operationId"],
        "getOpenapiJson"
    );
}

#[test]
fn quickstart_orders_are_on_the_stage_servers_and_the_rest_on_the_plain_one() {
    let document = quickstart::openapi(addr()).unwrap();
    let urls = |servers: &Value| -> Vec<String> {
        servers
            .as_array()
            .unwrap()
            .iter()
            .map(|server| server["url"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        urls(&document["servers"]),
        [
            "http://127.0.0.1:3000",
            "http://127.0.0.1:3000/v1",
            "http://127.0.0.1:3000/v2"
        ]
    );
    assert_eq!(document["servers"][1]["description"], "stage v1");
    assert_eq!(
        urls(&document["paths"]["/orders"]["servers"]),
        ["http://127.0.0.1:3000/v1", "http://127.0.0.1:3000/v2"]
    );
    assert_eq!(
        urls(&document["paths"]["/hello"]["servers"]),
        ["http://127.0.0.1:3000"]
    );
    assert!(document["paths"].get("/v1/orders").is_none());
}

#[test]
fn quickstart_document_is_the_same_every_time() {
    let once = serde_json::to_string(&quickstart::openapi(addr()).unwrap()).unwrap();
    let again = serde_json::to_string(&quickstart::openapi(addr()).unwrap()).unwrap();
    assert_eq!(once, again);
}

/// Every builder method of `Operation` at once, so the schema sees each shape the export makes.
fn pets() -> OpenApi {
    OpenApi::new("Pets", "2.0.0")
        .description("Pets, behind tollgate.")
        .stage("prod", "https://api.example.com/v1")
        .stage("beta", "https://api.example.com/beta")
        .bearer_jwt()
        .api_key_header("x-api-key")
        .route(
            "GET /pets/{id}",
            Operation::new()
                .summary("One pet")
                .api_key()
                .optional_auth()
                .cached()
                .query("fields", json!({ "type": "string" }), false)
                .header("x-client", true)
                .response(200, "The pet", Some(json!({ "type": "object" })))
                .response(404, "No such pet", None),
        )
        .route(
            "POST /pets",
            Operation::new()
                .operation_id("createPet")
                .tag("pets")
                .description("Adds a pet.")
                .bearer(["pets:write"])
                .api_key()
                .throttled()
                .json_body(json!({
                    "type": "object",
                    "required": ["name"],
                    "properties": { "name": { "type": "string", "minLength": 1 } },
                }))
                .response(201, "Created", Some(json!({ "type": "object" }))),
        )
        .route(
            "GET\t/files/{*path}",
            Operation::new()
                .stages(["beta"])
                .response(200, "The file", None),
        )
}

#[test]
fn every_operation_feature_makes_valid_openapi_3_1() {
    let document = pets().build().unwrap();
    assert!(
        openapi_schema().is_valid(&document),
        "{}",
        violations(&document)
    );

    let get = &document["paths"]["/pets/{id}"]["get"];
    assert_eq!(get["operationId"], "getPetsById");
    assert_eq!(
        get["parameters"],
        json!([
            { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } },
            { "name": "fields", "in": "query", "required": false, "schema": { "type": "string" } },
            { "name": "x-client", "in": "header", "required": true, "schema": { "type": "string" } },
        ])
    );
    // The token is optional, the key never is: `optional_auth` adds no anonymous requirement.
    assert_eq!(get["security"], json!([{ "apiKey": [] }]));
    assert_eq!(
        get["responses"]["404"],
        json!({ "description": "No such pet" })
    );

    let post = &document["paths"]["/pets"]["post"];
    assert_eq!(post["operationId"], "createPet");
    assert_eq!(
        post["security"],
        json!([{ "bearer": ["pets:write"], "apiKey": [] }])
    );
    assert_eq!(post["requestBody"]["required"], true);
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["required"],
        json!(["name"])
    );
    for (status, name) in [
        ("400", "BadRequest"),
        ("413", "PayloadTooLarge"),
        ("415", "UnsupportedMediaType"),
    ] {
        assert_eq!(
            post["responses"][status]["$ref"],
            format!("#/components/responses/{name}")
        );
    }

    let files = &document["paths"]["/files/{path}"];
    assert_eq!(files["get"]["parameters"][0]["name"], "path");
    assert_eq!(
        files["servers"],
        json!([{ "url": "https://api.example.com/beta", "description": "stage beta" }])
    );
    // Stages only: an unrestricted operation is on every stage, as the document says.
    assert!(document["paths"]["/pets"].get("servers").is_none());
}

#[test]
fn build_lists_every_problem_in_the_description() {
    let error = OpenApi::new("Broken", "1")
        .stage("prod", "https://api.example.com/v1")
        .route("GET /pets/{id}", Operation::new())
        .route("GET /pets/{name}", Operation::new())
        .route("GET pets", Operation::new())
        .route("GET /me", Operation::new().bearer(["read"]))
        .route("GET /widgets", Operation::new().api_key())
        .route("GET /orders", Operation::new().stages(["prod", "v3"]))
        .build()
        .unwrap_err();

    let problems = error.problems();
    assert_eq!(problems.len(), 5, "{error}");
    assert!(
        problems[0].contains("\"GET /pets/{name}\" conflicts with \"GET /pets/{id}\""),
        "{error}"
    );
    assert!(
        problems[1].contains("invalid route \"GET pets\""),
        "{error}"
    );
    assert!(
        problems[2].contains("\"GET /me\" needs the bearer scheme"),
        "{error}"
    );
    assert!(
        problems[3].contains("\"GET /widgets\" needs the API key scheme"),
        "{error}"
    );
    assert!(
        problems[4].contains("stage \"v3\", which is not declared"),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("5 problems"), "{message}");
    for problem in problems {
        assert!(message.contains(problem.as_str()), "{message}");
    }
}

#[test]
fn an_operation_id_given_twice_is_a_problem() {
    let error = OpenApi::new("Twice", "1")
        .route("GET /a", Operation::new().operation_id("list"))
        .route("GET /b", Operation::new().operation_id("list"))
        .build()
        .unwrap_err();
    assert_eq!(error.problems().len(), 1, "{error}");
    assert!(
        error.to_string().contains("operationId \"list\""),
        "{error}"
    );
}

/// The quickstart as `main` serves it, on a free port, with the credentials it made.
async fn serve_quickstart() -> (SocketAddr, quickstart::App) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = quickstart::app(addr).await.unwrap();
    let router = app.router.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, app)
}

#[tokio::test]
async fn quickstart_serves_its_document_at_openapi_json() {
    let (addr, _) = serve_quickstart().await;
    let reply = Client::new().get(addr, "/openapi.json", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.json(), quickstart::openapi(addr).unwrap());
    assert_eq!(reply.json()["servers"][0]["url"], format!("http://{addr}"));
}

/// Calls every operation the served document lists, on each of its servers, without
/// credentials, and checks the answer is one the document gives for it.
#[tokio::test]
async fn quickstart_answers_every_documented_route_with_a_documented_status() {
    let (addr, app) = serve_quickstart().await;
    let client = Client::new();
    let document = client.get(addr, "/openapi.json", &[]).await.json();
    let origin = format!("http://{addr}");
    let mut calls = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        let operation = &item["get"];
        let servers = operation
            .get("servers")
            .or_else(|| item.get("servers"))
            .unwrap_or(&document["servers"]);
        for server in servers.as_array().unwrap() {
            let base = server["url"]
                .as_str()
                .unwrap()
                .strip_prefix(&origin)
                .unwrap();
            let reply = client.get(addr, &format!("{base}{path}"), &[]).await;
            let status = reply.status.as_str();
            assert!(
                operation["responses"].get(status).is_some(),
                "GET {base}{path} answered {status}, which the document does not list"
            );
            if status == "401" {
                assert!(reply.headers.contains_key("www-authenticate"), "{path}");
                assert!(
                    reply.problem().starts_with("urn:tollgate:problem:"),
                    "{path}"
                );
            }
            calls += 1;
        }
    }
    assert_eq!(calls, 8, "every route once, /orders on v1 and v2");

    // With credentials the secured routes answer their documented 200.
    assert_eq!(client.bearer(addr, "/me", &app.token).await.status, 200);
    let widgets = client.with_key(addr, "/api/widgets", &app.basic_key).await;
    assert_eq!(widgets.status, 200);
    assert_eq!(widgets.json()["plan"], "basic");
}

#[cfg(feature = "validate")]
#[test]
fn a_validated_route_makes_valid_openapi_3_1() {
    use tollgate::validate::{QueryParam, Validation};

    let validation = Validation::new()
        .header("idempotency-key")
        .query("dry_run", QueryParam::boolean())
        .query("sort", QueryParam::one_of(["asc", "desc"]).required())
        .body(json!({ "type": "object", "required": ["items"] }));
    let document = OpenApi::new("Orders", "1")
        .route("POST /orders", Operation::new().validation(&validation))
        .build()
        .unwrap();
    assert!(
        openapi_schema().is_valid(&document),
        "{}",
        violations(&document)
    );
    let post = &document["paths"]["/orders"]["post"];
    assert_eq!(
        post["parameters"][2]["schema"],
        json!({ "type": "string", "enum": ["asc", "desc"] })
    );
    assert_eq!(post["requestBody"]["description"], "At most 1048576 bytes.");
    assert_eq!(
        post["responses"]["400"]["$ref"],
        "#/components/responses/BadRequest"
    );
}

/// The OpenAPI document of the configuration `yaml`, with servers added as a user would.
fn config_document(yaml: &str, servers: &[&str]) -> Value {
    let mut document = tollgate::config::GatewayConfig::from_yaml(yaml)
        .unwrap()
        .openapi("Config", "1")
        .unwrap();
    for url in servers {
        document = document.server(*url, "added");
    }
    let document = document.build().unwrap();
    assert!(
        openapi_schema().is_valid(&document),
        "{}",
        violations(&document)
    );
    document
}

const JWT: &str = "auth:
  authorizer:
    jwt:
      providers:
        - issuer: https://login.example/
          audiences: [shop]
          algorithms: [HS256]
          keys: { hmac_secret_env: SHOP_JWT_SECRET }
";

fn usage(key_sources: &str) -> String {
    format!("usage:\n  key_sources: {key_sources}\n  plans:\n    basic: {{ name: Basic }}\n")
}

const KEYED_ROUTE: &str = "routes:
  - route: GET /widgets
    integration: { handler: widgets }
    api_key: true
";

#[test]
fn a_configured_query_key_source_is_the_api_key_scheme() {
    let document = config_document(&(usage("[{ query: api_key }]") + KEYED_ROUTE), &[]);
    assert_eq!(
        document["components"]["securitySchemes"]["apiKey"],
        json!({
            "type": "apiKey", "in": "query", "name": "api_key",
            "description": "An API key on a usage plan, which sets its throttle and quota.",
        })
    );
    assert_eq!(
        document["paths"]["/widgets"]["get"]["security"],
        json!([{ "apiKey": [] }])
    );

    // The first source a client sends the key in, in order.
    let sources = "[authorizer, { query: k }, { header: x-key }]";
    let document = config_document(&(usage(sources) + KEYED_ROUTE), &[]);
    let scheme = &document["components"]["securitySchemes"]["apiKey"];
    assert_eq!(
        (&scheme["in"], &scheme["name"]),
        (&json!("query"), &json!("k"))
    );
    let document = config_document(
        &(usage("[{ header: x-key }, { query: k }]") + KEYED_ROUTE),
        &[],
    );
    let scheme = &document["components"]["securitySchemes"]["apiKey"];
    assert_eq!(
        (&scheme["in"], &scheme["name"]),
        (&json!("header"), &json!("x-key"))
    );
}

#[test]
fn a_key_read_only_from_the_authorizer_declares_no_api_key_scheme() {
    let document = config_document(&(usage("[authorizer]") + KEYED_ROUTE), &[]);
    assert!(
        document["components"].get("securitySchemes").is_none(),
        "{document}"
    );
    let get = &document["paths"]["/widgets"]["get"];
    assert!(get.get("security").is_none(), "{get}");
    // The plan still throttles the route.
    assert_eq!(
        get["responses"]["429"]["$ref"],
        "#/components/responses/TooManyRequests"
    );
}

#[test]
fn a_route_for_any_method_leaves_out_the_methods_routes_of_their_own_serve() {
    let yaml = "routes:
  - route: GET /pets
    integration: { handler: list }
    validate: { query: { limit: { type: integer } } }
  - route: '* /pets'
    integration: { handler: other }
  - route: '* /toys'
    integration: { handler: toys }
";
    let document = config_document(yaml, &[]);
    let pets = document["paths"]["/pets"].as_object().unwrap();
    let mut methods: Vec<&str> = pets.keys().map(String::as_str).collect();
    methods.sort_unstable();
    assert_eq!(methods, ["delete", "get", "patch", "post", "put"]);
    assert_eq!(pets["get"]["operationId"], "getPets");
    assert_eq!(pets["get"]["parameters"][0]["name"], "limit");
    assert!(pets["post"].get("parameters").is_none(), "{}", pets["post"]);
    assert_eq!(document["paths"]["/toys"].as_object().unwrap().len(), 5);
}

#[test]
fn an_anonymous_route_with_an_api_key_still_requires_the_key() {
    let yaml = format!(
        "{JWT}{}routes:
  - route: GET /catalog
    integration: {{ handler: catalog }}
    auth: {{ anonymous: true }}
    api_key: true
  - route: GET /public
    integration: {{ handler: public }}
    auth: {{ anonymous: true }}
",
        usage("[{ header: x-api-key }]")
    );
    let document = config_document(&yaml, &[]);
    assert_eq!(
        document["paths"]["/catalog"]["get"]["security"],
        json!([{ "bearer": [], "apiKey": [] }, { "apiKey": [] }])
    );
    assert_eq!(
        document["paths"]["/public"]["get"]["security"],
        json!([{ "bearer": [] }, {}])
    );
}

#[test]
fn any_of_scopes_are_alternative_requirements_each_with_the_all_of_scopes() {
    let yaml = format!(
        "{JWT}{}routes:
  - route: GET /orders
    integration: {{ handler: orders }}
    auth: {{ any_of: [read, admin] }}
  - route: POST /orders
    integration: {{ handler: orders }}
    auth: {{ any_of: [write, admin], all_of: [orders] }}
    api_key: true
  - route: DELETE /orders
    integration: {{ handler: orders }}
    auth: {{ all_of: [orders, admin] }}
",
        usage("[]")
    );
    let document = config_document(&yaml, &[]);
    let orders = &document["paths"]["/orders"];
    assert_eq!(
        orders["get"]["security"],
        json!([{ "bearer": ["read"] }, { "bearer": ["admin"] }])
    );
    assert_eq!(
        orders["post"]["security"],
        json!([
            { "bearer": ["orders", "write"], "apiKey": [] },
            { "bearer": ["orders", "admin"], "apiKey": [] },
        ])
    );
    assert_eq!(
        orders["delete"]["security"],
        json!([{ "bearer": ["orders", "admin"] }])
    );
    let description = document["components"]["securitySchemes"]["bearer"]["description"]
        .as_str()
        .unwrap();
    assert!(
        description.contains("meeting one of them is enough"),
        "{description}"
    );
}

#[test]
fn configured_stages_stay_on_their_operations_when_servers_are_added() {
    let yaml = "stages:
  stages:
    v1: { base_paths: [/v1] }
    v2: { hosts: [v2.example.com] }
    beta: { versions: [beta] }
routes:
  - route: GET /pets
    integration: { handler: pets }
";
    let urls = |servers: &Value| -> Vec<String> {
        servers
            .as_array()
            .unwrap_or_else(|| panic!("no servers: {servers}"))
            .iter()
            .map(|server| server["url"].as_str().unwrap().to_owned())
            .collect()
    };
    // Stages only: every operation is on every stage with a server; `beta`, selected by a
    // version header, has none.
    let document = config_document(yaml, &[]);
    assert_eq!(
        urls(&document["servers"]),
        ["/v1", "https://v2.example.com"]
    );
    assert!(document["paths"]["/pets"].get("servers").is_none());

    let document = config_document(yaml, &["https://api.example.com"]);
    assert_eq!(
        urls(&document["servers"]),
        ["/v1", "https://v2.example.com", "https://api.example.com"]
    );
    assert_eq!(
        urls(&document["paths"]["/pets"]["servers"]),
        ["/v1", "https://v2.example.com"]
    );
}

#[test]
fn accept_content_type_and_authorization_are_never_header_parameters() {
    let yaml = "routes:
  - route: POST /orders
    integration: { handler: orders }
    validate: { headers: [Authorization, accept, Content-Type, x-client] }
";
    let document = config_document(yaml, &[]);
    let post = &document["paths"]["/orders"]["post"];
    assert_eq!(
        post["parameters"],
        json!([{ "name": "x-client", "in": "header", "required": true,
                 "schema": { "type": "string" } }])
    );
    assert_eq!(
        post["responses"]["400"]["$ref"],
        "#/components/responses/BadRequest"
    );

    let document = OpenApi::new("t", "1")
        .route(
            "GET /a",
            Operation::new()
                .header("ACCEPT", true)
                .header("authorization", true)
                .header("content-type", false),
        )
        .build()
        .unwrap();
    assert!(document["paths"]["/a"]["get"].get("parameters").is_none());
}
