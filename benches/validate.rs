//! What request validation costs a request that passes it, beside a bare service in the
//! same group (`validate`). Every case serves `POST /orders` with axum bodies:
//!
//! - `bare`: a service that answers at once, without reading the body.
//! - `off_route`: `ValidateLayer` with checks for another route only: the table lookup.
//! - `head_checks`: a required header, and two query parameters (an integer with bounds, an
//!   enum), no body schema: the body streams through unread.
//! - `json_body`: the same, plus a JSON Schema for a 140-byte order (an object with an array
//!   of two items, each with required typed fields): the body is read whole, parsed, checked
//!   against the schema and handed on as bytes.
//!
//! The body is in memory, so reading it costs no waiting; the request's future is polled
//! once with a no-op waker, as in the other benches.
//!
//! Run with `cargo bench --bench validate --features validate`.

mod support;

use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;

use axum::body::Body;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use serde_json::json;
use support::{configure, hello, serve};
use tollgate::validate::{QueryParam, ValidateLayer, Validation};
use tower::{Layer, Service};

const ORDER: &str = r#"{"customer":"c-1234","items":[{"sku":"SKU-001","quantity":2},{"sku":"SKU-002","quantity":1}],"notes":"leave at the door"}"#;

fn bare() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
    tower::service_fn(|_: Request<Body>| ready(Ok::<_, Infallible>(hello(Body::empty()))))
}

fn request() -> Request<Body> {
    Request::post("/orders?limit=10&sort=price")
        .header("content-type", "application/json")
        .header("content-length", ORDER.len())
        .header("idempotency-key", "k-1")
        .body(Body::from(ORDER))
        .expect("a valid request")
}

fn head_checks() -> Validation {
    Validation::new()
        .header("idempotency-key")
        .query("limit", QueryParam::integer().min(1).max(100))
        .query("sort", QueryParam::one_of(["price", "name"]))
}

fn layer(route: &str, validation: Validation) -> ValidateLayer<tollgate::core::InnerBody> {
    ValidateLayer::builder()
        .route(route, validation)
        .build()
        .expect("the checks are valid")
        .keep_inner_body()
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    configure(&mut group);
    let mut run = |name: &str, mut service: Box<dyn FnMut(Request<Body>) -> Response<Body>>| {
        group.bench_function(name, |b| {
            b.iter(|| {
                let response = service(black_box(request()));
                assert_eq!(response.status(), StatusCode::OK);
                response
            })
        });
    };
    let service = bare();
    run("bare", Box::new(move |r| serve(&mut service.clone(), r)));
    let service = layer("GET /elsewhere", head_checks()).layer(bare());
    run(
        "off_route",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    let service = layer("POST /orders", head_checks()).layer(bare());
    run(
        "head_checks",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    let schema = json!({
        "type": "object",
        "required": ["customer", "items"],
        "properties": {
            "customer": { "type": "string", "minLength": 1 },
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["sku", "quantity"],
                    "properties": {
                        "sku": { "type": "string" },
                        "quantity": { "type": "integer", "minimum": 1 }
                    }
                }
            },
            "notes": { "type": "string", "maxLength": 200 }
        }
    });
    let service = layer("POST /orders", head_checks().body(schema)).layer(bare());
    run(
        "json_body",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
