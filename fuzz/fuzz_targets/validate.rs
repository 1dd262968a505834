//! Request validation on hostile requests, through the public layer: query strings
//! (percent-decoding, integers with bounds, booleans, enumerations), required headers,
//! `Content-Type` and `Content-Length`, and JSON bodies against a fixed schema.
//!
//! Every request is answered 200 (the handler saw the body unchanged), 400 (problem+json with
//! at most 20 violations), 413 or 415, and nothing panics.
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tollgate::validate::{QueryParam, ValidateLayer, Validation};
use tower::{service_fn, Layer, ServiceExt};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    search: bool,
    query: Option<&'a str>,
    idempotency_key: Option<&'a [u8]>,
    content_type: ContentType<'a>,
    content_length: Option<u64>,
    body: Body<'a>,
}

#[derive(Arbitrary, Debug)]
enum Body<'a> {
    Raw(&'a [u8]),
    Json(Json),
}

/// A JSON value whose object keys are mostly the schema's.
#[derive(Debug)]
struct Json(Value);

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        tollgate_fuzz::json(u, &["items", "sku", "quantity", "price", "note", "coupon"]).map(Json)
    }
}

#[derive(Arbitrary, Debug)]
enum ContentType<'a> {
    None,
    Json,
    Problem,
    Other(&'a [u8]),
}

fn layer() -> &'static ValidateLayer {
    static LAYER: OnceLock<ValidateLayer> = OnceLock::new();
    LAYER.get_or_init(|| {
        ValidateLayer::builder()
            .route(
                "POST /orders",
                Validation::new()
                    .header("idempotency-key")
                    .query("notify", QueryParam::boolean())
                    .query("priority", QueryParam::integer().min(1).max(5))
                    .body(json!({
                        "type": "object",
                        "required": ["items"],
                        "additionalProperties": false,
                        "properties": {
                            "note": {"type": "string", "maxLength": 40, "pattern": "^[a-z ]*$"},
                            "coupon": {"enum": ["SPRING", "FALL", null]},
                            "items": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 8,
                                "items": {
                                    "type": "object",
                                    "required": ["sku", "quantity"],
                                    "properties": {
                                        "sku": {"type": "string", "minLength": 1},
                                        "quantity": {"type": "integer", "minimum": 1},
                                        "price": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01}
                                    }
                                }
                            }
                        }
                    }))
                    .max_body_bytes(4096),
            )
            .route(
                "GET /search",
                Validation::new()
                    .query("q", QueryParam::string().required())
                    .query("page", QueryParam::integer().min(1))
                    .query("offset", QueryParam::integer().min(i64::MIN).max(i64::MAX))
                    .query("sort", QueryParam::one_of(["asc", "desc", "ä ö"])),
            )
            .build()
            .expect("a valid validation layer")
    })
}

fuzz_target!(|input: Input<'_>| {
    let (method, path) = if input.search {
        (Method::GET, "/search")
    } else {
        (Method::POST, "/orders")
    };
    let uri = match input.query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let body = match &input.body {
        Body::Raw(raw) => Bytes::copy_from_slice(raw),
        Body::Json(Json(value)) => Bytes::from(value.to_string()),
    };
    let Ok(mut request) = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body.clone()))
    else {
        return;
    };
    let headers = request.headers_mut();
    if let Some(Ok(value)) = input.idempotency_key.map(HeaderValue::from_bytes) {
        headers.insert("idempotency-key", value);
    }
    let content_type = match input.content_type {
        ContentType::None => None,
        ContentType::Json => Some(HeaderValue::from_static("application/json")),
        ContentType::Problem => Some(HeaderValue::from_static(
            "application/problem+json; charset=utf-8",
        )),
        ContentType::Other(raw) => HeaderValue::from_bytes(raw).ok(),
    };
    if let Some(value) = content_type {
        headers.insert(CONTENT_TYPE, value);
    }
    if let Some(length) = input.content_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }

    let echo = service_fn(|request: Request<Full<Bytes>>| async move {
        let body = request
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|never| match never {})
            .to_bytes();
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    });
    let service = layer().clone().layer(echo);
    let (status, answer) = tollgate_fuzz::runtime().block_on(async {
        let response = service
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|never| match never {})
            .to_bytes();
        (status, answer)
    });
    match status {
        StatusCode::OK => assert_eq!(answer, body, "the handler saw another body"),
        StatusCode::BAD_REQUEST => {
            let problem: Value = serde_json::from_slice(&answer).expect("a problem+json 400");
            let errors = problem["errors"].as_array().expect("a list of violations");
            assert!(!errors.is_empty() && errors.len() <= 20, "{problem}");
        }
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => {}
        other => panic!("unexpected status {other}"),
    }
});
