//! The merge is deterministic: the same backend answers give the same response, status and
//! body byte for byte, whatever order the backends complete in, under every merge policy.
//!
//! Each backend answers after a delay on tokio's paused clock (nothing sleeps for real), so a
//! permutation of the delays is a completion order.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use serde_json::{Map, Value};
use tollgate_aggregate::{Aggregate, Backend, Collision, Merge};
use tower::{service_fn, ServiceExt};

/// Few field names, so backends often return the same fields, at the top and deeper down.
fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "user", "items"]).prop_map(str::to_owned)
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        prop::sample::select(vec!["", "x", "y z"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((name(), inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((name(), json()), 0..5).prop_map(|fields| fields.into_iter().collect())
}

fn policy() -> impl Strategy<Value = (Merge, Collision)> {
    (
        prop::sample::select(vec![Merge::Shallow, Merge::Deep]),
        prop::sample::select(vec![
            Collision::Error,
            Collision::FirstWins,
            Collision::LastWins,
            Collision::Collect,
        ]),
    )
}

/// The answers in declaration order, and a completion order (a permutation of their indices).
fn answers_and_order() -> impl Strategy<Value = (Vec<Map<String, Value>>, Vec<usize>)> {
    prop::collection::vec(object(), 2..=4).prop_flat_map(|answers| {
        let order = Just((0..answers.len()).collect::<Vec<_>>()).prop_shuffle();
        (Just(answers), order)
    })
}

fn backend(index: usize, answer: &Map<String, Value>, delay: Duration) -> Backend {
    let body = Bytes::from(Value::Object(answer.clone()).to_string());
    Backend::service(
        format!("backend-{index}"),
        service_fn(move |_: Request<Full<Bytes>>| {
            let body = body.clone();
            async move {
                tokio::time::sleep(delay).await;
                let mut response = Response::new(Full::new(body));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok::<_, Infallible>(response)
            }
        }),
    )
}

/// Calls an aggregate of `answers` whose backend `order[k]` completes k-th.
fn call(
    answers: &[Map<String, Value>],
    order: &[usize],
    (merge, collision): (Merge, Collision),
) -> (StatusCode, Bytes) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut builder = Aggregate::builder().merge(merge).collision(collision);
        for (index, answer) in answers.iter().enumerate() {
            let rank = order
                .iter()
                .position(|&i| i == index)
                .expect("a permutation");
            let delay = Duration::from_millis(10 * (rank as u64 + 1));
            builder = builder.backend(backend(index, answer, delay));
        }
        let aggregate = builder.build().expect("a valid aggregate");
        let request = Request::builder()
            .uri("/")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let response = aggregate
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
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn merge_gives_the_same_response_in_any_completion_order(
        (answers, order) in answers_and_order(),
        policy in policy(),
    ) {
        let declared: Vec<usize> = (0..answers.len()).collect();
        let reversed: Vec<usize> = declared.iter().rev().copied().collect();
        let expected = call(&answers, &declared, policy);
        prop_assert!(
            expected.0 == StatusCode::OK || policy.1 == Collision::Error,
            "{:?} answered {}",
            policy,
            expected.0,
        );
        for order in [order, reversed] {
            let (status, body) = call(&answers, &order, policy);
            prop_assert_eq!(status, expected.0, "completion order {:?}", order);
            prop_assert_eq!(
                &body,
                &expected.1,
                "completion order {:?}: {} != {}",
                order,
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&expected.1),
            );
        }
    }
}
