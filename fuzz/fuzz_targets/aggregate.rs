//! The aggregation JSON pipeline (target, allow, deny, mapping, group, collection), the
//! templates that carry one backend's fields into the next one's URL and body, and the merge
//! under every policy, through the public `Aggregate` service with `Mock` backends that answer
//! the fuzz input, driven with `oneshot` on a current-thread runtime.
//!
//! Every call must be answered, a 200 with a JSON object, and a value from a backend's answer
//! must stay inside its path segment.
#![no_main]

use std::sync::{Mutex, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tollgate::aggregate::{Aggregate, Backend, Collision, Merge, Mock};
use tower::ServiceExt;

const BACKENDS: usize = 4;
/// Field names the generated JSON draws from, so backends and pipeline paths meet.
const NAMES: [&str; 12] = [
    "data", "user", "id", "name", "items", "sku", "secret", "address", "city", "tags", "order_id",
    "errors",
];

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    endpoint: u8,
    id: &'a str,
    query: Option<&'a str>,
    answers: [Answer<'a>; BACKENDS],
}

#[derive(Arbitrary, Debug)]
struct Answer<'a> {
    status: Status,
    body: Body<'a>,
}

#[derive(Arbitrary, Debug)]
enum Status {
    Ok,
    NoContent,
    NotFound,
    Unavailable,
    Other(u16),
}

#[derive(Arbitrary, Debug)]
enum Body<'a> {
    Raw(&'a [u8]),
    Json(Json),
}

/// A JSON value whose object keys come from [`NAMES`].
#[derive(Debug)]
struct Json(Value);

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        tollgate_fuzz::json(u, &NAMES).map(Json)
    }
}

/// The call in progress: each backend's answer, and the URIs the backends were called at.
struct Call {
    answers: Vec<Response<Bytes>>,
    seen: Vec<(usize, String)>,
}

static CALL: Mutex<Option<Call>> = Mutex::new(None);

fn mock(index: usize) -> Mock {
    Mock::from_fn(move |parts| {
        let mut call = CALL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(call) = call.as_mut() else {
            return Response::new(Bytes::new());
        };
        call.seen.push((index, parts.uri.to_string()));
        let answer = &call.answers[index];
        let mut response = Response::new(answer.body().clone());
        *response.status_mut() = answer.status();
        *response.headers_mut() = answer.headers().clone();
        response
    })
}

/// Every merge policy, each with independent backends and with a chain (a backend whose URL
/// and body are filled from an earlier one's answer, a partial answer's `errors` object and
/// the status taken from the first backend); `true` marks the chained ones.
fn endpoints() -> &'static [(bool, Aggregate)] {
    static ENDPOINTS: OnceLock<Vec<(bool, Aggregate)>> = OnceLock::new();
    ENDPOINTS.get_or_init(|| {
        let mut endpoints = Vec::new();
        for merge in [Merge::Shallow, Merge::Deep] {
            for collision in [
                Collision::Error,
                Collision::FirstWins,
                Collision::LastWins,
                Collision::Collect,
            ] {
                for chained in [false, true] {
                    let (profile, orders) = if chained {
                        (
                            Backend::service("profile", mock(0))
                                .path("/profile/{id}?page={query.page}")
                                .forward_query(true),
                            Backend::service("orders", mock(1))
                                .path("/orders/{profile.user.id}?tag={profile.tags}")
                                .method(Method::POST)
                                .body(json!({"user": "{profile.user.name}", "n": "{query.n}"})),
                        )
                    } else {
                        (
                            Backend::service("profile", mock(0)).path("/profile/{id}"),
                            Backend::service("orders", mock(1)).path("/orders"),
                        )
                    };
                    let mut builder = Aggregate::builder()
                        .route("/agg/{id}")
                        .merge(merge)
                        .collision(collision)
                        .backend(profile)
                        .backend(
                            orders
                                .target("data")
                                .deny(["secret", "items.secret"])
                                .mapping([("id", "order_id"), ("order_id", "id")]),
                        )
                        .backend(
                            Backend::service("extra", mock(2))
                                .allow(["name", "address.city", "items.sku"])
                                .group("extra")
                                .optional(),
                        )
                        .backend(
                            Backend::service("list", mock(3))
                                .collection("list")
                                .optional(),
                        );
                    if chained {
                        builder = builder.errors_field("errors").status_from("profile");
                    }
                    endpoints.push((chained, builder.build().expect("a valid aggregate")));
                }
            }
        }
        endpoints
    })
}

fn response(answer: &Answer<'_>) -> Response<Bytes> {
    let body = match &answer.body {
        Body::Raw(raw) => Bytes::copy_from_slice(raw),
        Body::Json(Json(value)) => Bytes::from(value.to_string()),
    };
    let mut response = Response::new(body);
    *response.status_mut() = match answer.status {
        Status::Ok => StatusCode::OK,
        Status::NoContent => StatusCode::NO_CONTENT,
        Status::NotFound => StatusCode::NOT_FOUND,
        Status::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Status::Other(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fuzz_target!(|input: Input<'_>| {
    let endpoints = endpoints();
    let (chained, endpoint) = &endpoints[usize::from(input.endpoint) % endpoints.len()];
    // The parameters the chained templates read are always there, so that most calls get as
    // far as the backends.
    let uri = match input.query {
        Some(query) => format!("/agg/{}?page=1&n=2&{query}", input.id),
        None => format!("/agg/{}?page=1&n=2", input.id),
    };
    let Ok(request) = Request::builder().uri(uri).body(Full::new(Bytes::new())) else {
        return;
    };
    let answers = input.answers.iter().map(response).collect();
    *CALL.lock().unwrap_or_else(|e| e.into_inner()) = Some(Call {
        answers,
        seen: Vec::new(),
    });

    let (status, body) = tollgate_fuzz::runtime().block_on(async {
        let response = endpoint
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|never| match never {})
            .to_bytes();
        (status, body)
    });
    let call = CALL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("the call's answers");

    for (index, uri) in &call.seen {
        let path = uri.split('?').next().unwrap_or_default();
        let segments = path.split('/').count();
        let expected = match index {
            0 => 3,
            1 if *chained => 3,
            _ => 2,
        };
        assert_eq!(segments, expected, "backend {index} was called at {uri}");
    }
    if status == StatusCode::OK {
        let merged: Value = serde_json::from_slice(&body).expect("a 200 carries JSON");
        assert!(merged.is_object(), "a 200 carries an object, not {merged}");
    }
});
