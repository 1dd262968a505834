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
    assert_eq!(get["security"], json!([{ "apiKey": [] }, {}]));
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
