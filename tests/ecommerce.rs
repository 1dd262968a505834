//! The e-commerce example as its users meet it: `examples/ecommerce/gateway.yaml`, built with
//! the shop's services, served over loopback and called with a real HTTP client.

mod support;

#[path = "../examples/ecommerce/shop.rs"]
mod shop;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use serde_json::Value;
use tollgate::auth::KeysConfig;
use tollgate::config::{AuthorizerConfig, GatewayConfig, GatewayHandle};

use support::{serve_axum, Client, Reply};

const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/ecommerce/gateway.yaml"
);

/// The customer tokens' HMAC secret in these tests.
const SECRET: &str = "ecommerce-test-secret-0123456789abcdef";

/// A file holding [`SECRET`], written once for every test of this binary (in Cargo's
/// directory for tests' files, one per process so that no run reads another's half-written).
fn secret_file() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ecommerce-jwt-{}.secret", std::process::id()));
        std::fs::write(&path, SECRET).unwrap();
        path
    })
    .clone()
}

/// `gateway.yaml` as the example reads it, but with the JWT secret read from the tests' file
/// rather than the environment the file names.
fn config() -> GatewayConfig {
    let mut config = GatewayConfig::from_file(CONFIG).unwrap();
    let auth = config
        .auth
        .as_mut()
        .expect("gateway.yaml has an auth section");
    let AuthorizerConfig::Jwt(jwt) = &mut auth.authorizer else {
        panic!("gateway.yaml's authorizer is not the JWT one");
    };
    for provider in &mut jwt.providers {
        assert!(
            matches!(&provider.keys, KeysConfig::HmacSecretEnv(name) if name == "SHOP_JWT_SECRET"),
            "the secret stays out of gateway.yaml: {:?}",
            provider.keys
        );
        provider.keys = KeysConfig::HmacSecretFile(secret_file());
    }
    config
}

/// The shop behind `config`, fresh (no carts, no orders, no cache).
async fn serve(config: GatewayConfig) -> (GatewayHandle, SocketAddr) {
    let gateway = shop::gateway(config).await.unwrap();
    let addr = serve_axum(gateway.router()).await;
    (gateway, addr)
}

async fn shop() -> SocketAddr {
    serve(config()).await.1
}

/// `Authorization: Bearer ...` for customer-42 with every customer scope.
fn bearer() -> String {
    bearer_with_scopes(shop::CUSTOMER_SCOPES)
}

fn bearer_with_scopes(scopes: &str) -> String {
    let token = shop::customer_token(SECRET.as_bytes(), "customer-42", scopes).unwrap();
    format!("Bearer {token}")
}

/// A request with a JSON body, which the shared client does not send.
async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: serde_json::Value,
) -> Reply {
    let mut headers = headers.to_vec();
    headers.push(("content-type", "application/json"));
    post(addr, path, &headers, body.to_string()).await
}

/// A POST of `body` as it is, its content type among `headers`.
async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::post(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = Full::new(body.into());
    Reply::of(client.request(request.body(body).unwrap()).await.unwrap()).await
}

#[tokio::test]
async fn products_are_public_and_one_cached_copy_serves_everyone() {
    let addr = shop().await;
    let client = Client::new();

    let first = client.get(addr, "/products", &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.header("x-cache-status"), "MISS");
    assert_eq!(first.json()["products"].as_array().unwrap().len(), 5);
    let second = client.get(addr, "/products", &[]).await;
    assert_eq!(second.header("x-cache-status"), "HIT");
    assert_eq!(second.body, first.body);

    let mug = client.get(addr, "/products/1", &[]).await;
    assert_eq!(mug.status, StatusCode::OK, "{mug:?}");
    assert_eq!(mug.header("x-cache-status"), "MISS");
    assert_eq!(mug.json()["name"], "Ceramic mug");
    // Shared: a signed-in customer gets the copy an anonymous visitor filled.
    let signed_in = client
        .get(addr, "/products/1", &[("authorization", &bearer())])
        .await;
    assert_eq!(signed_in.header("x-cache-status"), "HIT");
    assert_eq!(signed_in.body, mug.body);

    let missing = client.get(addr, "/products/99", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.problem(), "urn:tollgate:problem:not-found");
}

#[tokio::test]
async fn product_details_merge_the_catalog_the_stock_and_the_reviews() {
    let addr = shop().await;

    let details = Client::new().get(addr, "/products/1/details", &[]).await;

    assert_eq!(details.status, StatusCode::OK, "{details:?}");
    assert_eq!(details.header("x-tollgate-completed"), "true");
    let body = details.json();
    assert_eq!(body["name"], "Ceramic mug");
    assert_eq!(body["price"], "12.50");
    assert_eq!(
        body["stock"],
        json!({ "available": 42, "warehouse": "Rotterdam" })
    );
    assert_eq!(body["reviews"].as_array().unwrap().len(), 2);
    assert!(body.get("errors").is_none(), "{body}");
}

#[tokio::test]
async fn product_details_come_without_the_optional_reviews_when_they_fail() {
    let addr = shop().await;
    let path = format!("/products/{}/details", shop::REVIEWS_DOWN_FOR);

    let details = Client::new().get(addr, &path, &[]).await;

    assert_eq!(details.status, StatusCode::OK, "{details:?}");
    assert_eq!(details.header("x-tollgate-completed"), "false");
    let body = details.json();
    assert_eq!(body["name"], "Burr grinder");
    assert_eq!(body["stock"]["available"], 0);
    assert!(body.get("reviews").is_none(), "{body}");
    assert_eq!(body["errors"], json!({ "reviews": { "status": 503 } }));
}

#[tokio::test]
async fn product_details_fail_without_the_required_stock_and_404_for_unknown_products() {
    let addr = shop().await;
    let client = Client::new();
    let path = format!("/products/{}/details", shop::NOT_IN_WAREHOUSE);

    let no_stock = client.get(addr, &path, &[]).await;
    assert_eq!(no_stock.status, StatusCode::BAD_GATEWAY, "{no_stock:?}");
    assert_eq!(no_stock.problem(), "urn:tollgate:problem:bad-gateway");
    assert!(
        no_stock.json()["detail"]
            .as_str()
            .unwrap()
            .contains("inventory"),
        "{no_stock:?}"
    );

    // The answer takes the catalog's status: an unknown product is its 404, not a 502.
    let unknown = client.get(addr, "/products/99/details", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");
    assert_eq!(unknown.problem(), "urn:tollgate:problem:not-found");
}

#[tokio::test]
async fn cart_and_orders_refuse_callers_without_a_customer_token() {
    let addr = shop().await;
    let client = Client::new();

    for (method, path) in [
        ("GET", "/cart"),
        ("POST", "/cart"),
        ("GET", "/orders"),
        ("POST", "/orders"),
    ] {
        let reply = client
            .send(method, addr, path, &[("x-api-key", shop::GLOBEX_KEY)])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {reply:?}"
        );
        assert_eq!(reply.header("www-authenticate"), "Bearer");
        assert_eq!(reply.problem(), "urn:tollgate:problem:unauthorized");
    }

    // A token without the route's scope is known but not allowed.
    let cart_only = bearer_with_scopes("cart");
    let reply = client
        .get(
            addr,
            "/orders",
            &[
                ("authorization", &cart_only),
                ("x-api-key", shop::GLOBEX_KEY),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
}

#[tokio::test]
async fn cart_and_orders_refuse_customers_without_a_partner_api_key() {
    let addr = shop().await;
    let client = Client::new();
    let bearer = bearer();

    for (method, path) in [
        ("GET", "/cart"),
        ("POST", "/cart"),
        ("GET", "/orders"),
        ("POST", "/orders"),
    ] {
        let reply = client
            .send(method, addr, path, &[("authorization", &bearer)])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {reply:?}"
        );
        assert_eq!(reply.header("www-authenticate"), "ApiKey");
        assert_eq!(reply.problem(), "urn:tollgate:problem:invalid-api-key");
    }

    let forged = "tg_acme_AAAAAAAAAAAAAAAAAAAAAAAA";
    let reply = client
        .get(
            addr,
            "/cart",
            &[("authorization", &bearer), ("x-api-key", forged)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(reply.problem(), "urn:tollgate:problem:invalid-api-key");
}

#[tokio::test]
async fn a_customer_fills_the_cart_and_checks_out_through_a_partner() {
    let addr = shop().await;
    let client = Client::new();
    let bearer = bearer();
    let both = [
        ("authorization", bearer.as_str()),
        ("x-api-key", shop::GLOBEX_KEY),
    ];

    let empty = client.get(addr, "/cart", &both).await;
    assert_eq!(empty.status, StatusCode::OK, "{empty:?}");
    assert_eq!(empty.json(), json!({ "items": [], "total": "0.00" }));
    assert!(
        empty.header("ratelimit-policy").contains("\"partner-pro\""),
        "{empty:?}"
    );

    let added = post_json(
        addr,
        "/cart",
        &both,
        json!({ "product_id": 1, "quantity": 2 }),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{added:?}");
    assert_eq!(added.json()["total"], "25.00");
    let unknown = post_json(addr, "/cart", &both, json!({ "product_id": 99 })).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{unknown:?}");

    // Without x-client-id a client is on the stable side: orders v1.
    let order = client.send("POST", addr, "/orders", &both).await;
    assert_eq!(order.status, StatusCode::CREATED, "{order:?}");
    assert_eq!(order.header("x-deployment"), "prod");
    let body = order.json();
    assert_eq!(body["served_by"], "orders-v1");
    assert_eq!(body["id"], 1001);
    assert_eq!(body["total"], "25.00");

    let orders = client.get(addr, "/orders", &both).await;
    assert_eq!(orders.status, StatusCode::OK, "{orders:?}");
    assert_eq!(orders.json()["orders"].as_array().unwrap().len(), 1);
    let emptied = client.get(addr, "/cart", &both).await;
    assert_eq!(emptied.json()["items"], json!([]));
    let again = client.send("POST", addr, "/orders", &both).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
}

#[tokio::test]
async fn checkouts_on_the_basic_plan_are_throttled_with_retry_after() {
    let addr = shop().await;
    let client = Client::new();
    let bearer = bearer();
    let acme = [
        ("authorization", bearer.as_str()),
        ("x-api-key", shop::ACME_KEY),
    ];
    let item = json!({ "product_id": 4 });

    for _ in 0..2 {
        let added = post_json(addr, "/cart", &acme, item.clone()).await;
        assert_eq!(added.status, StatusCode::CREATED, "{added:?}");
        let order = client.send("POST", addr, "/orders", &acme).await;
        assert_eq!(order.status, StatusCode::CREATED, "{order:?}");
    }
    post_json(addr, "/cart", &acme, item).await;
    let third = client.send("POST", addr, "/orders", &acme).await;

    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS, "{third:?}");
    assert_eq!(third.problem(), "urn:tollgate:problem:throttled");
    let retry_after: u64 = third.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{third:?}");
    // The checkout budget is the route's: the partner can still read, and another partner
    // can still check out.
    let cart = client.get(addr, "/cart", &acme).await;
    assert_eq!(cart.status, StatusCode::OK, "{cart:?}");
    let globex = [
        ("authorization", bearer.as_str()),
        ("x-api-key", shop::GLOBEX_KEY),
    ];
    let other = client.send("POST", addr, "/orders", &globex).await;
    assert_eq!(other.status, StatusCode::CREATED, "{other:?}");
}

/// The deployment each of 200 client ids is sent to, read on the cached product page from
/// several loopback addresses, so the per-client throttle is not what is measured.
async fn deployments(addr: SocketAddr) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for n in 0..200 {
        let client = Client::from_ip(&format!("127.0.0.{}", 10 + n / 25));
        let id = format!("client-{n}");
        let reply = client
            .get(addr, "/products/1", &[("x-client-id", &id)])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        seen.push((id, reply.header("x-deployment").to_owned()));
    }
    seen
}

#[tokio::test]
async fn the_orders_canary_takes_a_tenth_of_the_clients_and_keeps_them() {
    let addr = shop().await;
    let seen = deployments(addr).await;
    let on_canary = seen.iter().filter(|(_, side)| side == "prod-v2").count();
    assert!((10..=35).contains(&on_canary), "{on_canary} of 200");
    let canary_id = &seen.iter().find(|(_, side)| side == "prod-v2").unwrap().0;
    let stable_id = &seen.iter().find(|(_, side)| side == "prod").unwrap().0;

    let client = Client::new();
    let bearer = bearer();
    for (id, deployment, served_by) in [
        (canary_id, "prod-v2", "orders-v2"),
        (stable_id, "prod", "orders-v1"),
    ] {
        let headers = [
            ("authorization", bearer.as_str()),
            ("x-api-key", shop::GLOBEX_KEY),
            ("x-client-id", id.as_str()),
        ];
        for _ in 0..3 {
            let orders = client.get(addr, "/orders", &headers).await;
            assert_eq!(orders.status, StatusCode::OK, "{orders:?}");
            assert_eq!(orders.header("x-deployment"), deployment, "{id}");
            assert_eq!(orders.json()["served_by"], served_by, "{id}");
        }
    }

    // v2 writes prices in cents with a currency, over the same orders.
    let canary = [
        ("authorization", bearer.as_str()),
        ("x-api-key", shop::GLOBEX_KEY),
        ("x-client-id", canary_id.as_str()),
    ];
    post_json(addr, "/cart", &canary, json!({ "product_id": 2 })).await;
    let order = client.send("POST", addr, "/orders", &canary).await;
    assert_eq!(order.status, StatusCode::CREATED, "{order:?}");
    let body = order.json();
    assert_eq!(body["id"], "ord_1001");
    assert_eq!(body["total"], json!({ "amount": 3900, "currency": "EUR" }));
    assert_eq!(body["partner"], "globex");
}

#[tokio::test]
async fn a_reload_at_100_percent_moves_every_client_with_an_id_to_orders_v2() {
    let (gateway, addr) = serve(config()).await;
    let client = Client::new();
    let bearer = bearer();
    let orders = |id: Option<String>| {
        let client = client.clone();
        let bearer = bearer.clone();
        async move {
            let mut headers = vec![
                ("authorization", bearer.as_str()),
                ("x-api-key", shop::GLOBEX_KEY),
            ];
            if let Some(id) = &id {
                headers.push(("x-client-id", id.as_str()));
            }
            let reply = client.get(addr, "/orders", &headers).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            reply.json()["served_by"].as_str().unwrap().to_owned()
        }
    };
    let mut stable_id = None;
    for n in 0..20 {
        let id = format!("client-{n}");
        if orders(Some(id.clone())).await == "orders-v1" {
            stable_id = Some(id);
            break;
        }
    }
    let stable_id = stable_id.expect("no client of 20 on the stable side");
    let cached = client.get(addr, "/products", &[]).await;
    assert_eq!(cached.header("x-cache-status"), "MISS");

    let mut all_in = config();
    let prod = all_in
        .stages
        .as_mut()
        .unwrap()
        .stages
        .get_mut("prod")
        .unwrap();
    prod.canary.as_mut().unwrap().percent = 100.0;
    gateway.reload(all_in).await.unwrap();

    assert_eq!(orders(Some(stable_id)).await, "orders-v2");
    // The reload kept the cache's entries.
    let cached = client.get(addr, "/products", &[]).await;
    assert_eq!(cached.header("x-cache-status"), "HIT");
    // The side is chosen by the client's id: one without stays on the stable side.
    assert_eq!(orders(None).await, "orders-v1");

    // Promoting v2 is making it the stage's own variable.
    let mut promoted = config();
    let prod = promoted
        .stages
        .as_mut()
        .unwrap()
        .stages
        .get_mut("prod")
        .unwrap();
    prod.variables.insert("orders".into(), "v2".into());
    prod.canary = None;
    gateway.reload(promoted).await.unwrap();

    assert_eq!(orders(None).await, "orders-v2");
}

#[tokio::test]
async fn unknown_paths_are_404_problems_once_the_caller_is_known() {
    let addr = shop().await;
    let client = Client::new();

    let known = client
        .get(addr, "/checkout", &[("authorization", &bearer())])
        .await;
    assert_eq!(known.status, StatusCode::NOT_FOUND, "{known:?}");
    assert_eq!(known.problem(), "urn:tollgate:problem:not-found");

    // The authorizer runs before routing, and paths no route serves take the default
    // policy (credentials required), so an anonymous caller learns nothing about them.
    let anonymous = client.get(addr, "/checkout", &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{anonymous:?}");
}

#[tokio::test]
async fn a_flood_from_one_client_ip_is_throttled() {
    let addr = shop().await;
    let client = Client::new();

    let mut refused = None;
    for _ in 0..400 {
        let reply = client.get(addr, "/products", &[]).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(reply);
            break;
        }
    }

    let refused = refused.expect("no 429 within 400 requests");
    assert_eq!(refused.problem(), "urn:tollgate:problem:throttled");
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("per-client"),
        "{refused:?}"
    );
}

/// Each violation a validation 400 lists, as `(in, pointer)`.
fn violations(reply: &Reply) -> Vec<(String, String)> {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        "application/problem+json",
        "{reply:?}"
    );
    reply.json()["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {reply:?}"))
        .iter()
        .map(|error| {
            (
                error["in"].as_str().unwrap().to_owned(),
                error["pointer"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn at(place: &str, pointer: &str) -> (String, String) {
    (place.to_owned(), pointer.to_owned())
}

#[tokio::test]
async fn products_refuse_a_bad_limit_and_sort_listing_both_and_honour_good_ones() {
    let addr = shop().await;
    let client = Client::new();

    let refused = client.get(addr, "/products?limit=0&sort=size", &[]).await;
    let mut errors = violations(&refused);
    errors.sort();
    assert_eq!(errors, [at("query", "/limit"), at("query", "/sort")]);
    assert!(refused.headers.get("x-request-id").is_some(), "{refused:?}");

    let cheapest = client.get(addr, "/products?limit=2&sort=price", &[]).await;
    assert_eq!(cheapest.status, StatusCode::OK, "{cheapest:?}");
    let names: Vec<Value> = cheapest.json()["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|product| product["name"].clone())
        .collect();
    assert_eq!(names, [json!("Paper filters (100)"), json!("Ceramic mug")]);
}

#[tokio::test]
async fn a_cart_body_the_schema_refuses_never_reaches_the_cart() {
    let addr = shop().await;
    let bearer = bearer();
    let both = [
        ("authorization", bearer.as_str()),
        ("x-api-key", shop::GLOBEX_KEY),
    ];

    let not_a_number = post_json(addr, "/cart", &both, json!({ "product_id": "x" })).await;
    assert_eq!(violations(&not_a_number), [at("body", "/product_id")]);
    let detail = &not_a_number.json()["errors"][0];
    assert_eq!(detail["keyword"], "type", "{detail}");
    let too_many = post_json(
        addr,
        "/cart",
        &both,
        json!({ "product_id": 1, "quantity": 100 }),
    )
    .await;
    assert_eq!(violations(&too_many), [at("body", "/quantity")]);
    let no_product = post_json(addr, "/cart", &both, json!({ "quantity": 2 })).await;
    assert_eq!(violations(&no_product)[0].0, "body");

    let form = post(
        addr,
        "/cart",
        &[
            ("authorization", bearer.as_str()),
            ("x-api-key", shop::GLOBEX_KEY),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "product_id=1",
    )
    .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{form:?}");
    let huge = format!(r#"{{"product_id": 1, "note": "{}"}}"#, "x".repeat(5000));
    let mut json_headers = both.to_vec();
    json_headers.push(("content-type", "application/json"));
    let too_large = post(addr, "/cart", &json_headers, huge).await;
    assert_eq!(
        too_large.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{too_large:?}"
    );

    // None of them reached the cart service.
    let cart = Client::new().get(addr, "/cart", &both).await;
    assert_eq!(cart.json(), json!({ "items": [], "total": "0.00" }));

    let added = post_json(addr, "/cart", &both, json!({ "product_id": 2 })).await;
    assert_eq!(added.status, StatusCode::CREATED, "{added:?}");
    assert_eq!(added.json()["items"][0]["quantity"], 1);
}

#[tokio::test]
async fn openapi_json_describes_the_routes_and_what_each_needs() {
    let addr = shop().await;

    let reply = Client::new().get(addr, "/openapi.json", &[]).await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let document = reply.json();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["servers"][0]["url"], format!("http://{addr}"));
    for path in ["/products", "/products/{id}", "/cart", "/orders"] {
        assert!(
            document["paths"].get(path).is_some(),
            "no {path} in {document}"
        );
    }
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["apiKey"]["type"], "apiKey", "{schemes}");
    assert_eq!(schemes["apiKey"]["in"], "header", "{schemes}");
    assert_eq!(schemes["apiKey"]["name"], "x-api-key", "{schemes}");

    let add = &document["paths"]["/cart"]["post"];
    let config = config();
    let cart_route = config
        .routes
        .iter()
        .find(|route| route.route == "POST /cart")
        .unwrap();
    let schema = cart_route.validate.as_ref().unwrap().body.as_ref().unwrap();
    assert_eq!(
        add["requestBody"]["content"]["application/json"]["schema"],
        *schema.schema.as_ref().unwrap()
    );
    // One requirement: the token with scope `cart` and the partner's key, both.
    assert_eq!(
        add["security"],
        json!([{ "bearer": ["cart"], "apiKey": [] }])
    );
    for status in ["400", "401", "403", "413", "415", "429"] {
        assert!(
            add["responses"].get(status).is_some(),
            "no {status} in {add}"
        );
    }

    let list = &document["paths"]["/products"]["get"];
    let limit = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == "limit")
        .unwrap_or_else(|| panic!("no limit in {list}"));
    assert_eq!(limit["in"], "query");
    assert_eq!(limit["schema"]["minimum"], 1, "{limit}");
    assert_eq!(limit["schema"]["maximum"], 100, "{limit}");
    // The catalog is cached; the cart, off the cache's default, is not.
    let cache_header = |path: &str| {
        document["paths"][path]["get"]["responses"]["200"]["headers"]
            .get("X-Cache-Status")
            .is_some()
    };
    assert!(cache_header("/products"), "{list}");
    assert!(!cache_header("/cart"), "{}", document["paths"]["/cart"]);
}

#[tokio::test]
async fn openapi_json_follows_a_reload() {
    let (gateway, addr) = serve(config()).await;
    let client = Client::new();
    let before = client.get(addr, "/openapi.json", &[]).await.json();
    assert!(before["paths"]["/orders"].get("post").is_some(), "{before}");

    let mut no_checkouts = config();
    no_checkouts
        .routes
        .retain(|route| route.route != "POST /orders");
    gateway.reload(no_checkouts).await.unwrap();

    let after = client.get(addr, "/openapi.json", &[]).await.json();
    assert!(after["paths"]["/orders"].get("post").is_none(), "{after}");
    assert!(after["paths"]["/orders"].get("get").is_some(), "{after}");
}

/// The OpenAPI Initiative's schema for OpenAPI 3.1 documents (as `tests/openapi.rs` uses it).
fn openapi_schema() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(include_str!("fixtures/openapi-3.1-schema.json")).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn the_shop_document_is_valid_openapi_3_1() -> Result<(), Box<dyn std::error::Error>> {
    let document = GatewayConfig::from_file(CONFIG)?
        .openapi("Shop", "1.0.0")?
        .server("http://127.0.0.1:8080", "local")
        .build()?;

    let violations: Vec<String> = openapi_schema()
        .iter_errors(&document)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    Ok(())
}
