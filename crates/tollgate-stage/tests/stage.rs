//! The stage router as a client sees it: a real server on loopback TCP, a real HTTP client,
//! stage services that echo the path and the `Stage` they were given, an injected clock for
//! deprecation and sunsets, and real concurrency for canary changes under load. Stickiness
//! across ten thousand clients is checked in-process, each request from its own peer address.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::LINK;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;
use support::{at, clock, echo, get_request, seen, serve, serve_hyper, verified, Client, Reply};
use tokio::sync::watch;
use tollgate_core::key::HeaderKey;
use tollgate_core::{ManualClock, Stage};
use tollgate_stage::{
    AfterSunset, Canary, StageError, StageHandle, StageRouter, StageRouterBuilder, StageSpec,
    DEFAULT_OVERRIDE_HEADER, MAX_VARIABLES, MAX_VARIABLE_NAME, MAX_VARIABLE_VALUE,
};
use tower::{Service, ServiceExt};

const NOT_FOUND: &str = "urn:tollgate:problem:not-found";
const GONE: &str = "urn:tollgate:problem:gone";
const DAY: i64 = 24 * 60 * 60;

/// Serves `stages` as the whole application, with connect info.
async fn serve_stages(stages: StageRouter<Router>) -> SocketAddr {
    serve(Router::new().fallback_service(stages)).await
}

/// The stage a GET of `path` with `headers` was served by, as the handler saw it.
async fn stage_of(
    client: &Client,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let reply = client.get(addr, path, headers).await;
    let body = seen(&reply);
    assert_eq!(
        reply.header("x-deployment"),
        body["deployment"],
        "{reply:?}"
    );
    body["stage"].as_str().unwrap().to_owned()
}

/// A builder that honours `X-Canary`, which is off by default.
fn with_x_canary() -> StageRouterBuilder<Router> {
    StageRouter::builder().override_header(Some(HeaderName::from_static(DEFAULT_OVERRIDE_HEADER)))
}

/// `v2` on `/v2` with a canary at `percent`, behind `v1` on `/v1`; `X-Canary` forces a side.
fn with_canary(percent: f64) -> StageRouter<Router> {
    with_x_canary()
        .stage(StageSpec::new("v1", echo("v1")).base_path("/v1"))
        .stage(
            StageSpec::new("v2", echo("v2"))
                .base_path("/v2")
                .canary(Canary::new(echo("v2-next")).percent(percent)),
        )
        .build()
        .unwrap()
}

// Selection rules.

#[tokio::test]
async fn a_base_path_is_stripped_before_the_stage_sees_the_path_and_the_query_is_kept() {
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", echo("v1")).base_path("/v1"))
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let reply = client.get(addr, "/v1/orders?page=2&sort=desc", &[]).await;
    let body = seen(&reply);
    assert_eq!(body["path"], "/orders?page=2&sort=desc");
    assert_eq!(body["original"], "/v1/orders?page=2&sort=desc");
    assert_eq!(body["stage"], "v1");
    assert_eq!(reply.header("x-deployment"), "v1");
    // The base path itself is the stage's root.
    assert_eq!(seen(&client.get(addr, "/v1", &[]).await)["path"], "/");
    assert_eq!(seen(&client.get(addr, "/v1/", &[]).await)["path"], "/");
    assert_eq!(
        seen(&client.get(addr, "/v1?page=3", &[]).await)["path"],
        "/?page=3"
    );
}

#[tokio::test]
async fn with_strip_prefix_off_the_stage_sees_the_full_path() {
    let stages = StageRouter::builder()
        .stage(
            StageSpec::new("v1", echo("v1"))
                .base_path("/v1")
                .strip_prefix(false),
        )
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let body = seen(&client.get(addr, "/v1/orders?page=2", &[]).await);

    assert_eq!(body["path"], "/v1/orders?page=2");
    assert_eq!(body["stage"], "v1");
}

#[tokio::test]
async fn the_longest_matching_base_path_wins() {
    // The shorter prefix is declared first, so declaration order cannot be what decides.
    let stages = StageRouter::builder()
        .stage(StageSpec::new("orders", echo("orders")).base_path("/orders"))
        .stage(StageSpec::new("orders-v2", echo("orders-v2")).base_path("/orders/v2"))
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());
    let path_and_stage = |reply: Reply| {
        let body = seen(&reply);
        (body["path"].clone(), body["stage"].clone())
    };

    let cases = [
        ("/orders/v2/items", "/items", "orders-v2"),
        ("/orders/v2", "/", "orders-v2"),
        ("/orders/items", "/items", "orders"),
        ("/orders", "/", "orders"),
        // Whole segments: `/orders/v2x` is not under `/orders/v2`.
        ("/orders/v2x", "/v2x", "orders"),
    ];
    for (path, inner, stage) in cases {
        assert_eq!(
            path_and_stage(client.get(addr, path, &[]).await),
            (json!(inner), json!(stage)),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_base_path_matches_whole_segments_only() {
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", echo("v1")).base_path("/v1"))
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    for path in ["/v10", "/v10/orders", "/v1orders"] {
        let reply = client.get(addr, path, &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {reply:?}");
        assert_eq!(reply.problem(), NOT_FOUND, "{path}");
    }
    assert_eq!(stage_of(&client, addr, "/v1/orders", &[]).await, "v1");
}

#[tokio::test]
async fn a_host_selects_its_stage_on_any_port_and_in_any_case() {
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", echo("v1")))
        .stage(StageSpec::new("v2", echo("v2")).host("v2.api.example.com"))
        .default_stage("v1")
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());
    let stage_for_host = |host: &'static str| {
        let client = client.clone();
        async move { stage_of(&client, addr, "/orders", &[("host", host)]).await }
    };

    assert_eq!(stage_for_host("v2.api.example.com:8080").await, "v2");
    assert_eq!(stage_for_host("v2.api.example.com").await, "v2");
    assert_eq!(stage_for_host("V2.Api.Example.COM:443").await, "v2");
    assert_eq!(stage_for_host("api.example.com:8080").await, "v1");
    assert_eq!(stage_for_host("v2.api.example.com.evil.test").await, "v1");
}

#[tokio::test]
async fn accept_version_then_x_api_version_select_a_stage() {
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", echo("v1")).version("1"))
        .stage(StageSpec::new("v2", echo("v2")).version("2"))
        .default_stage("v2")
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    assert_eq!(
        stage_of(&client, addr, "/orders", &[("accept-version", "1")]).await,
        "v1"
    );
    assert_eq!(
        stage_of(&client, addr, "/orders", &[("x-api-version", "1")]).await,
        "v1"
    );
    // Accept-Version is read first; a version no stage has falls through to the next header.
    let both = [("accept-version", "1"), ("x-api-version", "2")];
    assert_eq!(stage_of(&client, addr, "/orders", &both).await, "v1");
    let unknown_first = [("accept-version", "9"), ("x-api-version", "1")];
    assert_eq!(
        stage_of(&client, addr, "/orders", &unknown_first).await,
        "v1"
    );
    assert_eq!(
        stage_of(&client, addr, "/orders", &[("accept-version", "9")]).await,
        "v2"
    );
    // The path is not stripped when a header chose the stage.
    let reply = client
        .get(addr, "/orders?page=2", &[("accept-version", "1")])
        .await;
    assert_eq!(seen(&reply)["path"], "/orders?page=2");
}

#[tokio::test]
async fn custom_version_headers_replace_the_default_ones() {
    let stages = StageRouter::builder()
        .version_headers([HeaderName::from_static("api-version")])
        .stage(StageSpec::new("v1", echo("v1")).version("1"))
        .stage(StageSpec::new("v2", echo("v2")).version("2"))
        .default_stage("v2")
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    assert_eq!(
        stage_of(&client, addr, "/orders", &[("api-version", "1")]).await,
        "v1"
    );
    assert_eq!(
        stage_of(&client, addr, "/orders", &[("accept-version", "1")]).await,
        "v2"
    );
    assert_eq!(
        stage_of(&client, addr, "/orders", &[("x-api-version", "1")]).await,
        "v2"
    );
}

#[tokio::test]
async fn vendor_media_types_in_accept_select_a_stage() {
    // `vnd.acme.v1+json` names the version `v1`, `vnd.acme+json; version=2` names `2`; a
    // leading `v` does not matter, so each form reaches either stage.
    let stages = StageRouter::builder()
        .media_type_vendor("acme")
        .stage(StageSpec::new("v1", echo("v1")).version("v1"))
        .stage(StageSpec::new("v2", echo("v2")).version("2"))
        .stage(StageSpec::new("latest", echo("latest")))
        .default_stage("latest")
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());
    let stage_for_accept = |accept: &'static str| {
        let client = client.clone();
        async move { stage_of(&client, addr, "/orders", &[("accept", accept)]).await }
    };

    assert_eq!(stage_for_accept("application/vnd.acme.v1+json").await, "v1");
    assert_eq!(
        stage_for_accept("application/vnd.acme+json; version=2").await,
        "v2"
    );
    assert_eq!(
        stage_for_accept("text/html, application/vnd.acme+json;version=\"2\";q=0.8").await,
        "v2"
    );
    assert_eq!(
        stage_for_accept("application/vnd.other.v1+json").await,
        "latest"
    );
    assert_eq!(
        stage_for_accept("application/vnd.acme.v3+json").await,
        "latest"
    );
    assert_eq!(stage_for_accept("application/json").await, "latest");
    assert_eq!(stage_for_accept("application/vnd.acme.v2+json").await, "v2");
    assert_eq!(
        stage_for_accept("application/vnd.acme+json; version=1").await,
        "v1"
    );
    assert_eq!(
        stage_for_accept("application/vnd.acme.v2+json; q=0").await,
        "latest",
        "q=0 refuses the type"
    );
}

#[tokio::test]
async fn without_a_media_type_vendor_accept_selects_nothing() {
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", echo("v1")).version("v1"))
        .stage(StageSpec::new("latest", echo("latest")))
        .default_stage("latest")
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let accept = [("accept", "application/vnd.acme.v1+json")];
    assert_eq!(stage_of(&client, addr, "/orders", &accept).await, "latest");
}

#[tokio::test]
async fn base_path_beats_host_beats_version_header_beats_media_type_beats_the_default() {
    let stages = StageRouter::builder()
        .media_type_vendor("acme")
        .stage(StageSpec::new("by-path", echo("by-path")).base_path("/p"))
        .stage(StageSpec::new("by-host", echo("by-host")).host("h.example"))
        .stage(StageSpec::new("by-header", echo("by-header")).version("hdr"))
        .stage(StageSpec::new("by-media", echo("by-media")).version("med"))
        .stage(StageSpec::new("fallback", echo("fallback")))
        .default_stage("fallback")
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());
    let host = ("host", "h.example");
    let header = ("accept-version", "hdr");
    let media = ("accept", "application/vnd.acme.med+json");

    let stage = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let client = client.clone();
        async move { stage_of(&client, addr, path, &headers).await }
    };
    assert_eq!(stage("/p/x", vec![host, header, media]).await, "by-path");
    assert_eq!(stage("/x", vec![host, header, media]).await, "by-host");
    assert_eq!(stage("/x", vec![header, media]).await, "by-header");
    assert_eq!(stage("/x", vec![media]).await, "by-media");
    assert_eq!(stage("/x", vec![]).await, "fallback");
}

#[tokio::test]
async fn the_default_stage_serves_what_no_rule_selects_with_the_path_untouched() {
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", echo("v1")).base_path("/v1"))
        .stage(StageSpec::new("v2", echo("v2")).base_path("/v2"))
        .default_stage("v2")
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let reply = client.get(addr, "/orders?page=2", &[]).await;
    let body = seen(&reply);

    assert_eq!(body["stage"], "v2");
    assert_eq!(body["path"], "/orders?page=2");
    assert_eq!(reply.header("x-deployment"), "v2");
}

#[tokio::test]
async fn without_a_default_stage_an_unselected_request_is_a_404_problem() {
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", echo("v1")).base_path("/v1"))
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let reply = client
        .get(addr, "/orders", &[("accept-version", "1")])
        .await;

    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.problem(), NOT_FOUND);
    assert_eq!(reply.json()["status"], 404);
    assert_eq!(reply.json()["detail"], "no stage serves this request");
    assert!(reply.headers.get("x-deployment").is_none(), "{reply:?}");
}

#[tokio::test]
async fn the_handler_reads_the_stage_name_deployment_and_variables() {
    let stages = with_x_canary()
        .stage(
            StageSpec::new("prod", echo("prod"))
                .deployment("prod-2027-01")
                .base_path("/prod")
                .variable("orders_table", "orders")
                .variable("backend_url", "https://orders.internal")
                .canary(
                    Canary::new(echo("prod-next"))
                        .variable("orders_table", "orders_next")
                        .variable("feature_x", "on"),
                ),
        )
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let stable = client.get(addr, "/prod/orders", &[]).await;
    let body = seen(&stable);
    assert_eq!(body["service"], "prod");
    assert_eq!(body["stage"], "prod");
    assert_eq!(body["deployment"], "prod-2027-01");
    assert_eq!(stable.header("x-deployment"), "prod-2027-01");
    assert_eq!(
        body["variables"],
        json!({ "orders_table": "orders", "backend_url": "https://orders.internal" })
    );

    // The canary keeps the stage's variables, with its own on top.
    let canary = client
        .get(addr, "/prod/orders", &[("x-canary", "always")])
        .await;
    let body = seen(&canary);
    assert_eq!(body["service"], "prod-next");
    assert_eq!(body["stage"], "prod");
    assert_eq!(body["deployment"], "prod-canary");
    assert_eq!(canary.header("x-deployment"), "prod-canary");
    assert_eq!(
        body["variables"],
        json!({
            "orders_table": "orders_next",
            "backend_url": "https://orders.internal",
            "feature_x": "on",
        })
    );
}

// Build-time refusals.

/// A stage service for builds that never serve.
fn empty() -> Router {
    Router::new()
}

fn refusal(stages: impl IntoIterator<Item = StageSpec<Router>>) -> StageError {
    stages
        .into_iter()
        .fold(StageRouter::builder(), |builder, stage| {
            builder.stage(stage)
        })
        .build()
        .unwrap_err()
}

/// Asserts the error's message names each of `parts`.
#[track_caller]
fn assert_names(error: &StageError, parts: &[&str]) {
    let message = error.to_string();
    for part in parts {
        assert!(message.contains(part), "{message:?} does not name {part:?}");
    }
}

fn with_variables(name: &str, count: usize) -> StageSpec<Router> {
    (0..count).fold(StageSpec::new(name, empty()), |spec, i| {
        spec.variable(format!("var_{i}"), "x")
    })
}

#[test]
fn more_than_a_hundred_variables_are_refused_naming_the_stage() {
    assert_eq!(MAX_VARIABLES, 100);
    assert!(StageRouter::builder()
        .stage(with_variables("v1", 100))
        .build()
        .is_ok());

    let error = refusal([with_variables("v1", 101)]);
    assert_eq!(
        error,
        StageError::TooManyVariables {
            stage: "v1".into(),
            count: 101
        }
    );
    assert_names(&error, &["\"v1\"", "101", "100"]);

    // A canary's own variables count together with the stage's.
    let canary = Canary::new(empty()).variable("extra", "y");
    let error = refusal([with_variables("v2", 100).canary(canary)]);
    assert_eq!(
        error,
        StageError::TooManyVariables {
            stage: "v2".into(),
            count: 101
        }
    );
}

#[test]
fn variable_names_must_be_up_to_64_letters_digits_or_underscores() {
    assert_eq!(MAX_VARIABLE_NAME, 64);
    let longest = "n".repeat(64);
    let spec = StageSpec::new("v1", empty()).variable(&longest, "x");
    assert!(StageRouter::builder().stage(spec).build().is_ok());

    for bad in [
        "n".repeat(65),
        "orders-table".into(),
        "orders.table".into(),
        "tablé".into(),
        String::new(),
    ] {
        let error = refusal([StageSpec::new("v1", empty()).variable(&bad, "x")]);
        assert_eq!(
            error,
            StageError::VariableName {
                stage: "v1".into(),
                name: bad.clone()
            }
        );
        assert_names(&error, &["\"v1\"", &format!("{bad:?}"), "64"]);
    }

    // On a canary too, naming the stage.
    let canary = Canary::new(empty()).variable("bad name", "x");
    let error = refusal([StageSpec::new("v2", empty()).canary(canary)]);
    assert_eq!(
        error,
        StageError::VariableName {
            stage: "v2".into(),
            name: "bad name".into()
        }
    );
}

#[test]
fn variable_values_over_512_bytes_are_refused() {
    assert_eq!(MAX_VARIABLE_VALUE, 512);
    let spec = StageSpec::new("v1", empty()).variable("url", "x".repeat(512));
    assert!(StageRouter::builder().stage(spec).build().is_ok());

    let error = refusal([StageSpec::new("v1", empty()).variable("url", "x".repeat(513))]);
    assert_eq!(
        error,
        StageError::VariableValue {
            stage: "v1".into(),
            name: "url".into(),
            len: 513
        }
    );
    assert_names(&error, &["\"v1\"", "\"url\"", "513", "512"]);

    // Bytes, not characters: 257 two-byte characters are 514 bytes.
    let error = refusal([StageSpec::new("v1", empty()).variable("name", "é".repeat(257))]);
    assert_eq!(
        error,
        StageError::VariableValue {
            stage: "v1".into(),
            name: "name".into(),
            len: 514
        }
    );
}

#[test]
fn a_canary_percent_outside_0_to_100_or_nan_is_refused() {
    for fine in [0.0, 0.0001, 37.5, 100.0] {
        let spec = StageSpec::new("v2", empty()).canary(Canary::new(empty()).percent(fine));
        assert!(StageRouter::builder().stage(spec).build().is_ok(), "{fine}");
    }
    for bad in [-0.5, 100.5, f64::NAN, f64::INFINITY] {
        let spec = StageSpec::new("v2", empty()).canary(Canary::new(empty()).percent(bad));
        let error = refusal([spec]);
        match &error {
            StageError::InvalidPercent { stage, percent } => {
                assert_eq!(stage, "v2");
                assert_eq!(percent.to_bits(), bad.to_bits());
            }
            other => panic!("{bad}: expected InvalidPercent, got {other:?}"),
        }
        assert_names(&error, &["\"v2\"", &bad.to_string()]);
    }
}

#[test]
fn two_stages_with_one_name_are_refused() {
    let error = refusal([
        StageSpec::new("v1", empty()).base_path("/v1"),
        StageSpec::new("v1", empty()).base_path("/v1-beta"),
    ]);

    assert_eq!(error, StageError::DuplicateStage("v1".into()));
    assert_names(&error, &["\"v1\""]);
}

#[test]
fn two_stages_claiming_one_base_path_host_or_version_are_refused() {
    let error = refusal([
        StageSpec::new("v1", empty()).base_path("/api"),
        StageSpec::new("v2", empty()).base_path("/api"),
    ]);
    assert_eq!(
        error,
        StageError::Conflict {
            what: "base path",
            value: "/api".into(),
            first: "v1".into(),
            second: "v2".into(),
        }
    );
    assert_names(&error, &["base path", "\"/api\""]);

    // Hosts compare without case.
    let error = refusal([
        StageSpec::new("v1", empty()).host("api.example.com"),
        StageSpec::new("v2", empty()).host("API.example.com"),
    ]);
    assert_eq!(
        error,
        StageError::Conflict {
            what: "host",
            value: "API.example.com".into(),
            first: "v1".into(),
            second: "v2".into(),
        }
    );
    assert_names(&error, &["host", "\"API.example.com\""]);

    let error = refusal([
        StageSpec::new("v1", empty()).version("2"),
        StageSpec::new("v2", empty()).version("2"),
    ]);
    assert_eq!(
        error,
        StageError::Conflict {
            what: "version",
            value: "2".into(),
            first: "v1".into(),
            second: "v2".into(),
        }
    );
    assert_names(&error, &["version", "\"2\""]);

    // `v2` and `2` are one version, so they cannot go to two stages either.
    let error = refusal([
        StageSpec::new("v1", empty()).version("v2"),
        StageSpec::new("v2", empty()).version("2"),
    ]);
    assert_eq!(
        error,
        StageError::Conflict {
            what: "version",
            value: "2".into(),
            first: "v1".into(),
            second: "v2".into(),
        }
    );
}

#[test]
fn hosts_with_ports_empty_versions_and_a_canary_named_like_its_stable_side_are_refused() {
    let error = refusal([StageSpec::new("v1", empty()).host("api.example.com:8080")]);
    assert!(
        matches!(&error, StageError::InvalidRule { what: "host", .. }),
        "{error:?}"
    );
    assert_names(&error, &["\"v1\"", "host", "\"api.example.com:8080\""]);

    let error = refusal([StageSpec::new("v1", empty()).version("")]);
    assert!(
        matches!(
            &error,
            StageError::InvalidRule {
                what: "version",
                ..
            }
        ),
        "{error:?}"
    );

    let error =
        refusal([StageSpec::new("v2", empty())
            .canary(tollgate_stage::Canary::new(empty()).deployment("v2"))]);
    assert_eq!(
        error,
        StageError::Conflict {
            what: "deployment",
            value: "v2".into(),
            first: "v2".into(),
            second: "v2".into(),
        }
    );
}

#[test]
fn an_unknown_default_stage_is_refused() {
    let error = StageRouter::builder()
        .stage(StageSpec::new("v1", empty()))
        .default_stage("v9")
        .build()
        .unwrap_err();

    assert_eq!(error, StageError::UnknownStage("v9".into()));
    assert_names(&error, &["\"v9\""]);
}

#[test]
fn a_base_path_must_be_slash_separated_segments() {
    for fine in ["/", "/v1", "/orders/v2"] {
        let spec = StageSpec::new("v1", empty()).base_path(fine);
        assert!(StageRouter::builder().stage(spec).build().is_ok(), "{fine}");
    }
    for bad in ["v1", "/v1/", "/v1?beta=1", "/v1#top", "", "//"] {
        let error = refusal([StageSpec::new("v1", empty()).base_path(bad)]);
        assert_eq!(
            error,
            StageError::InvalidBasePath {
                stage: "v1".into(),
                path: bad.into()
            }
        );
        assert_names(&error, &["\"v1\"", &format!("{bad:?}")]);
    }
}

#[test]
fn names_and_successors_that_cannot_be_sent_in_a_header_are_refused() {
    assert_eq!(
        StageRouter::<Router>::builder().build().unwrap_err(),
        StageError::NoStages
    );
    assert_eq!(
        refusal([StageSpec::new("v1\n", empty())]),
        StageError::InvalidName("v1\n".into())
    );
    assert_eq!(
        refusal([StageSpec::new("", empty())]),
        StageError::InvalidName(String::new())
    );
    let error = refusal([StageSpec::new("v1", empty()).deployment("x".repeat(129))]);
    assert_eq!(error, StageError::InvalidName("x".repeat(129)));
    let canary = Canary::new(empty()).deployment("v2 canary\r");
    assert_eq!(
        refusal([StageSpec::new("v2", empty()).canary(canary)]),
        StageError::InvalidName("v2 canary\r".into())
    );
    let error = refusal([StageSpec::new("v1", empty()).successor("https://x.test/<v2>")]);
    assert_eq!(
        error,
        StageError::InvalidSuccessor {
            stage: "v1".into(),
            uri: "https://x.test/<v2>".into()
        }
    );
    assert_names(&error, &["\"v1\"", "https://x.test/<v2>"]);
}

#[test]
fn stage_and_deployment_names_must_be_visible_ascii() {
    for bad in ["blå", "prod canary", "prod\tcanary"] {
        assert_eq!(
            refusal([StageSpec::new(bad, empty())]),
            StageError::InvalidName(bad.into()),
            "stage {bad:?}"
        );
        assert_eq!(
            refusal([StageSpec::new("v1", empty()).deployment(bad)]),
            StageError::InvalidName(bad.into()),
            "deployment {bad:?}"
        );
        let canary = Canary::new(empty()).deployment(bad);
        assert_eq!(
            refusal([StageSpec::new("v2", empty()).canary(canary)]),
            StageError::InvalidName(bad.into()),
            "canary deployment {bad:?}"
        );
    }
    let longest = "x".repeat(128);
    let spec = StageSpec::new(&longest, empty()).deployment("prod-2027.01_b~1");
    assert!(StageRouter::builder().stage(spec).build().is_ok());
}

// Canary stickiness.

/// Whether each client was served by `v2`'s canary, in-process: one GET of `/v2/orders` per
/// client, from its IP and the source port `port` (a new connection each round).
async fn canary_sides(stages: &StageRouter<Router>, clients: &[IpAddr], port: u16) -> Vec<bool> {
    let mut sides = Vec::with_capacity(clients.len());
    for &ip in clients {
        let request = get_request("/v2/orders", Some(SocketAddr::new(ip, port)), &[]);
        let response = stages.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{ip}");
        let deployment = &response.headers()["x-deployment"];
        assert!(
            deployment == "v2" || deployment == "v2-canary",
            "{ip}: {deployment:?}"
        );
        sides.push(deployment == "v2-canary");
    }
    sides
}

fn on_canary(sides: &[bool]) -> usize {
    sides.iter().filter(|&&canary| canary).count()
}

/// How many clients changed side between two rounds, by direction: (to canary, to stable).
fn moves(before: &[bool], after: &[bool]) -> (usize, usize) {
    let to_canary = before
        .iter()
        .zip(after)
        .filter(|(b, a)| !**b && **a)
        .count();
    let to_stable = before
        .iter()
        .zip(after)
        .filter(|(b, a)| **b && !**a)
        .count();
    (to_canary, to_stable)
}

#[tokio::test]
async fn ten_thousand_clients_split_ten_percent_to_the_canary_and_keep_their_side() {
    let stages = with_canary(10.0);
    let handle = stages.handle();
    let clients: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7)))
        .collect();

    let first = canary_sides(&stages, &clients, 40_001).await;
    let share = on_canary(&first);
    assert!(
        (900..=1_100).contains(&share),
        "{share} of 10,000 on the canary at 10 %"
    );
    let again = canary_sides(&stages, &clients, 40_002).await;
    assert_eq!(
        moves(&first, &again),
        (0, 0),
        "clients changed side between requests"
    );

    handle.set_percent("v2", 20.0).unwrap();
    assert_eq!(handle.percent("v2").unwrap(), 20.0);
    let raised = canary_sides(&stages, &clients, 40_003).await;
    let (to_canary, to_stable) = moves(&first, &raised);
    assert_eq!(
        to_stable, 0,
        "raising the percent moved canary clients back to stable"
    );
    let share = on_canary(&raised);
    assert!(
        (1_900..=2_100).contains(&share),
        "{share} of 10,000 on the canary at 20 %"
    );
    assert_eq!(to_canary, share - on_canary(&first));

    // Lowering it again sends exactly the newcomers back.
    handle.set_percent("v2", 10.0).unwrap();
    assert_eq!(canary_sides(&stages, &clients, 40_004).await, first);
}

#[tokio::test]
async fn a_client_id_header_can_be_the_sticky_key() {
    let stages = StageRouter::builder()
        .sticky_by(HeaderKey::new("x-client-id"))
        .stage(
            StageSpec::new("v2", echo("v2"))
                .base_path("/v2")
                .canary(Canary::new(echo("v2-next")).percent(10.0)),
        )
        .build()
        .unwrap();
    let handle = stages.handle();
    // Every request comes from one address: only the header tells the clients apart.
    let peer: SocketAddr = "192.0.2.1:50000".parse().unwrap();
    let side_of = |id: String| {
        let stages = stages.clone();
        async move {
            let request = get_request("/v2/orders", Some(peer), &[("x-client-id", id.as_str())]);
            let response = stages.oneshot(request).await.unwrap();
            response.headers()["x-deployment"] == "v2-canary"
        }
    };

    let mut first = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        first.push(side_of(format!("client-{i}")).await);
    }
    let share = on_canary(&first);
    assert!(
        (900..=1_100).contains(&share),
        "{share} of 10,000 on the canary at 10 %"
    );
    for (i, was_canary) in first.iter().enumerate().step_by(7) {
        assert_eq!(
            side_of(format!("client-{i}")).await,
            *was_canary,
            "client-{i}"
        );
    }

    // A request without the key goes to the stable side, whatever the percent.
    handle.set_percent("v2", 100.0).unwrap();
    let response = stages
        .clone()
        .oneshot(get_request("/v2/orders", Some(peer), &[]))
        .await;
    assert_eq!(response.unwrap().headers()["x-deployment"], "v2");
    assert!(side_of("client-0".into()).await);
}

#[tokio::test]
async fn each_loopback_client_address_keeps_its_side_across_connections() {
    let addr = serve_stages(with_canary(50.0)).await;
    let ips: Vec<String> = (2..34).map(|n| format!("127.0.0.{n}")).collect();

    let mut rounds = Vec::new();
    for _ in 0..3 {
        let mut round = Vec::with_capacity(ips.len());
        for ip in &ips {
            // A new client each round: a new connection from a new port, the same address.
            let reply = Client::from_ip(ip).get(addr, "/v2/orders", &[]).await;
            let body = seen(&reply);
            assert_eq!(reply.header("x-deployment"), body["deployment"], "{ip}");
            round.push(reply.header("x-deployment").to_owned());
        }
        rounds.push(round);
    }

    assert_eq!(rounds[0], rounds[1]);
    assert_eq!(rounds[0], rounds[2]);
    let canaries = rounds[0].iter().filter(|d| *d == "v2-canary").count();
    assert!(
        (1..ips.len()).contains(&canaries),
        "at 50 % both sides serve some of 32 clients: {:?}",
        rounds[0]
    );
}

// Override header.

#[tokio::test]
async fn the_override_header_forces_a_side_whatever_the_bucket() {
    let stages = with_canary(0.0);
    let handle = stages.handle();
    let (addr, client) = (serve_stages(stages).await, Client::new());
    let deployment = |headers: &'static [(&'static str, &'static str)]| {
        let client = client.clone();
        async move {
            let reply = client.get(addr, "/v2/orders", headers).await;
            seen(&reply)["deployment"].as_str().unwrap().to_owned()
        }
    };

    assert_eq!(deployment(&[]).await, "v2");
    assert_eq!(deployment(&[("x-canary", "always")]).await, "v2-canary");
    assert_eq!(deployment(&[("x-canary", "ALWAYS")]).await, "v2-canary");
    assert_eq!(deployment(&[("x-canary", "sometimes")]).await, "v2");

    handle.set_percent("v2", 100.0).unwrap();
    assert_eq!(deployment(&[]).await, "v2-canary");
    assert_eq!(deployment(&[("x-canary", "never")]).await, "v2");
    assert_eq!(deployment(&[("x-canary", "sometimes")]).await, "v2-canary");
}

#[tokio::test]
async fn with_an_override_scope_only_principals_holding_it_may_force_a_side() {
    let stages = with_x_canary()
        .override_scope("canary:override")
        .stage(
            StageSpec::new("v2", echo("v2"))
                .base_path("/v2")
                .canary(Canary::new(echo("v2-next"))),
        )
        .build()
        .unwrap();
    let handle = stages.handle();
    let addr = serve(verified(Router::new().fallback_service(stages))).await;
    let client = Client::new();
    let deployment = |headers: Vec<(&'static str, &'static str)>| {
        let client = client.clone();
        async move {
            let reply = client.get(addr, "/v2/orders", &headers).await;
            seen(&reply)["deployment"].as_str().unwrap().to_owned()
        }
    };
    let tester = |side| {
        vec![
            ("x-user", "tess"),
            ("x-scopes", "orders:read canary:override"),
            ("x-canary", side),
        ]
    };
    let user = |side| {
        vec![
            ("x-user", "ursula"),
            ("x-scopes", "orders:read"),
            ("x-canary", side),
        ]
    };

    assert_eq!(deployment(vec![("x-canary", "always")]).await, "v2");
    assert_eq!(deployment(user("always")).await, "v2");
    assert_eq!(deployment(tester("always")).await, "v2-canary");

    handle.set_percent("v2", 100.0).unwrap();
    assert_eq!(deployment(vec![("x-canary", "never")]).await, "v2-canary");
    assert_eq!(deployment(user("never")).await, "v2-canary");
    assert_eq!(deployment(tester("never")).await, "v2");
}

#[tokio::test]
async fn no_override_header_is_read_by_default_and_a_named_one_replaces_x_canary() {
    let canary_at = |builder: StageRouterBuilder<Router>, percent: f64| {
        builder
            .stage(
                StageSpec::new("v2", echo("v2"))
                    .base_path("/v2")
                    .canary(Canary::new(echo("v2-next")).percent(percent)),
            )
            .build()
            .unwrap()
    };
    let default = canary_at(StageRouter::builder(), 0.0);
    let full = canary_at(StageRouter::builder(), 100.0);
    let beta = canary_at(
        StageRouter::builder().override_header(Some(HeaderName::from_static("x-beta"))),
        0.0,
    );
    let off = canary_at(with_x_canary().override_header(None), 0.0);
    let (default, full, beta, off, client) = (
        serve_stages(default).await,
        serve_stages(full).await,
        serve_stages(beta).await,
        serve_stages(off).await,
        Client::new(),
    );
    let deployment = |addr, headers: &'static [(&'static str, &'static str)]| {
        let client = client.clone();
        async move {
            let reply = client.get(addr, "/v2/orders", headers).await;
            seen(&reply)["deployment"].as_str().unwrap().to_owned()
        }
    };

    // A client cannot put itself on a canary, or off one, unless the router says so.
    assert_eq!(deployment(default, &[("x-canary", "always")]).await, "v2");
    assert_eq!(
        deployment(full, &[("x-canary", "never")]).await,
        "v2-canary"
    );
    assert_eq!(deployment(beta, &[("x-beta", "always")]).await, "v2-canary");
    assert_eq!(deployment(beta, &[("x-canary", "always")]).await, "v2");
    assert_eq!(deployment(off, &[("x-canary", "always")]).await, "v2");
}

// Runtime changes under load.

const TASKS: usize = 8;
const REQUESTS: usize = 200;

/// A change the handle makes while the load runs.
#[derive(Clone, Copy, Debug)]
enum Change {
    Percent(f64),
    Promote,
    Rollback,
}

/// One reply seen under load.
#[derive(Debug)]
struct Served {
    /// How many changes had finished when the request was sent.
    changes_before: usize,
    status: StatusCode,
    /// `x-deployment`.
    header: String,
    /// The deployment the handler saw.
    handler: String,
}

/// Runs `TASKS` clients of `REQUESTS` GETs of `/v2/orders` each, from their own loopback
/// address, while the handle applies each change once `after` requests have finished.
async fn under_load(
    addr: SocketAddr,
    handle: StageHandle<Router>,
    changes: Vec<(usize, Change)>,
) -> Vec<Served> {
    let changes_done = Arc::new(AtomicUsize::new(0));
    let (finished, mut progress) = watch::channel(0usize);
    let finished = Arc::new(finished);
    let controller = tokio::spawn({
        let changes_done = changes_done.clone();
        async move {
            for (done, (after, change)) in changes.into_iter().enumerate() {
                progress.wait_for(|n| *n >= after).await.unwrap();
                match change {
                    Change::Percent(percent) => handle.set_percent("v2", percent),
                    Change::Promote => handle.promote("v2"),
                    Change::Rollback => handle.rollback("v2"),
                }
                .unwrap();
                changes_done.store(done + 1, Ordering::SeqCst);
            }
        }
    });
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let client = Client::from_ip(&format!("127.0.0.{}", 100 + task));
            let (changes_done, finished) = (changes_done.clone(), finished.clone());
            tokio::spawn(async move {
                let mut served = Vec::with_capacity(REQUESTS);
                for _ in 0..REQUESTS {
                    let changes_before = changes_done.load(Ordering::SeqCst);
                    let reply = client.get(addr, "/v2/orders", &[]).await;
                    finished.send_modify(|n| *n += 1);
                    let header = reply
                        .headers
                        .get("x-deployment")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let handler = match reply.status {
                        StatusCode::OK => reply.json()["deployment"].as_str().unwrap().to_owned(),
                        _ => String::new(),
                    };
                    served.push(Served {
                        changes_before,
                        status: reply.status,
                        header,
                        handler,
                    });
                }
                served
            })
        })
        .collect();
    let mut all = Vec::with_capacity(TASKS * REQUESTS);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    controller.await.unwrap();
    all
}

/// Asserts every reply is a 200 from a valid deployment, reported as the handler saw it.
#[track_caller]
fn assert_all_served(served: &[Served]) {
    for reply in served {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert!(
            reply.header == "v2" || reply.header == "v2-canary",
            "{reply:?}"
        );
        assert_eq!(reply.header, reply.handler, "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promoting_under_concurrent_load_fails_no_request_and_then_serves_only_the_canary() {
    let stages = with_canary(10.0);
    let handle = stages.handle();
    let addr = serve_stages(stages).await;

    let changes = vec![(400, Change::Percent(50.0)), (800, Change::Promote)];
    let served = under_load(addr, handle.clone(), changes).await;

    assert_all_served(&served);
    let after: Vec<&Served> = served.iter().filter(|s| s.changes_before == 2).collect();
    assert!(!after.is_empty(), "no request was sent after the promotion");
    for reply in after {
        assert_eq!(reply.header, "v2-canary", "{reply:?}");
    }
    assert_eq!(
        handle.deployments("v2").unwrap(),
        ("v2-canary".into(), None)
    );
    assert_eq!(handle.percent("v2").unwrap(), 0.0);
    let client = Client::from_ip("127.0.0.99");
    assert_eq!(
        seen(
            &client
                .get(addr, "/v2/orders", &[("x-canary", "never")])
                .await
        )["service"],
        "v2-next"
    );
    assert_eq!(
        handle.rollback("v2"),
        Err(StageError::NoCanary("v2".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_back_under_concurrent_load_fails_no_request_and_then_serves_only_stable() {
    let stages = with_canary(30.0);
    let handle = stages.handle();
    let addr = serve_stages(stages).await;

    let changes = vec![(400, Change::Percent(60.0)), (800, Change::Rollback)];
    let served = under_load(addr, handle.clone(), changes).await;

    assert_all_served(&served);
    let after: Vec<&Served> = served.iter().filter(|s| s.changes_before == 2).collect();
    assert!(!after.is_empty(), "no request was sent after the rollback");
    for reply in after {
        assert_eq!(reply.header, "v2", "{reply:?}");
    }
    assert_eq!(handle.deployments("v2").unwrap(), ("v2".into(), None));
    assert_eq!(handle.percent("v2").unwrap(), 0.0);
    let client = Client::from_ip("127.0.0.99");
    assert_eq!(
        seen(
            &client
                .get(addr, "/v2/orders", &[("x-canary", "always")])
                .await
        )["service"],
        "v2"
    );
    assert_eq!(
        handle.set_percent("v2", 10.0),
        Err(StageError::NoCanary("v2".into()))
    );
}

#[test]
fn the_handle_reports_the_canary_and_refuses_what_it_cannot_change() {
    let stages = with_canary(12.5);
    let handle = stages.handle();

    assert_eq!(handle.percent("v2").unwrap(), 12.5);
    assert_eq!(handle.percent("v1").unwrap(), 0.0);
    assert_eq!(
        handle.deployments("v2").unwrap(),
        ("v2".into(), Some("v2-canary".into()))
    );
    assert_eq!(handle.deployments("v1").unwrap(), ("v1".into(), None));

    for bad in [-1.0, 100.5, f64::NAN] {
        assert!(
            matches!(handle.set_percent("v2", bad), Err(StageError::InvalidPercent { ref stage, .. }) if stage == "v2"),
            "{bad}"
        );
    }
    assert_eq!(
        handle.percent("v2").unwrap(),
        12.5,
        "a refused change changed nothing"
    );
    assert_eq!(
        handle.set_percent("v9", 5.0),
        Err(StageError::UnknownStage("v9".into()))
    );
    assert_eq!(
        handle.set_percent("v1", 5.0),
        Err(StageError::NoCanary("v1".into()))
    );
    assert_eq!(handle.promote("v1"), Err(StageError::NoCanary("v1".into())));
    assert_eq!(
        handle.rollback("v9"),
        Err(StageError::UnknownStage("v9".into()))
    );
    handle.set_percent("v2", 0.0001).unwrap();
    assert_eq!(handle.percent("v2").unwrap(), 0.0001);
}

/// The service and deployment that served a GET of `/v2/orders` from each of `ips`, a new
/// connection each.
async fn served_from(addr: SocketAddr, ips: &[String]) -> Vec<(String, String)> {
    let mut served = Vec::with_capacity(ips.len());
    for ip in ips {
        let reply = Client::from_ip(ip).get(addr, "/v2/orders", &[]).await;
        let body = seen(&reply);
        assert_eq!(reply.header("x-deployment"), body["deployment"], "{ip}");
        let service = body["service"].as_str().unwrap().to_owned();
        served.push((service, reply.header("x-deployment").to_owned()));
    }
    served
}

#[tokio::test]
async fn after_a_promotion_a_new_canary_starts_with_its_share_and_sticky_clients() {
    let stages = with_canary(10.0);
    let handle = stages.handle();
    let addr = serve_stages(stages).await;
    let ips: Vec<String> = (2..202).map(|n| format!("127.0.0.{n}")).collect();
    let stable = ("v2-next".to_owned(), "v2-canary".to_owned());

    handle.promote("v2").unwrap();
    let promoted = served_from(addr, &ips).await;
    assert!(promoted.iter().all(|s| *s == stable), "{promoted:?}");

    // The promoted deployment kept the canary's default name, so the next one needs its own.
    assert_eq!(
        handle.start_canary("v2", Canary::new(echo("v2-r3")).percent(25.0)),
        Err(StageError::Conflict {
            what: "deployment",
            value: "v2-canary".into(),
            first: "v2".into(),
            second: "v2".into(),
        })
    );
    assert_eq!(
        handle.deployments("v2").unwrap(),
        ("v2-canary".into(), None)
    );
    let next = Canary::new(echo("v2-r3"))
        .deployment("v2-r3")
        .percent(25.0)
        .variable("feature_x", "on");
    handle.start_canary("v2", next).unwrap();
    assert_eq!(handle.percent("v2").unwrap(), 25.0);
    assert_eq!(
        handle.deployments("v2").unwrap(),
        ("v2-canary".into(), Some("v2-r3".into()))
    );

    let first = served_from(addr, &ips).await;
    let canary = ("v2-r3".to_owned(), "v2-r3".to_owned());
    assert!(
        first.iter().all(|s| *s == stable || *s == canary),
        "{first:?}"
    );
    let on_canary: Vec<bool> = first.iter().map(|s| *s == canary).collect();
    let share = on_canary.iter().filter(|&&c| c).count();
    assert!(
        (25..=75).contains(&share),
        "{share} of 200 clients on a 25 % canary"
    );
    assert_eq!(
        served_from(addr, &ips).await,
        first,
        "clients changed side between requests"
    );

    // The new canary's variables go on top of the stable deployment's.
    let forced = client_on_canary(addr).await;
    assert_eq!(forced["service"], "v2-r3");
    assert_eq!(forced["variables"], json!({ "feature_x": "on" }));

    // Replacing a running canary keeps the split: the same clients reach the replacement.
    let replacement = Canary::new(echo("v2-r4")).deployment("v2-r4").percent(25.0);
    handle.start_canary("v2", replacement).unwrap();
    let replaced = served_from(addr, &ips).await;
    let on_replacement: Vec<bool> = replaced
        .iter()
        .map(|s| *s == ("v2-r4".to_owned(), "v2-r4".to_owned()))
        .collect();
    assert_eq!(on_replacement, on_canary);
}

/// What the handler saw for a GET of `/v2/orders` forced onto the canary.
async fn client_on_canary(addr: SocketAddr) -> serde_json::Value {
    let reply = Client::new()
        .get(addr, "/v2/orders", &[("x-canary", "always")])
        .await;
    seen(&reply)
}

#[test]
fn starting_a_canary_checks_it_as_the_build_does_and_a_refusal_changes_nothing() {
    let stages = with_canary(10.0);
    let handle = stages.handle();
    let start = |canary: Canary<Router>| handle.start_canary("v2", canary);

    for bad in [-1.0, 100.5, f64::NAN] {
        assert!(
            matches!(start(Canary::new(empty()).percent(bad)), Err(StageError::InvalidPercent { ref stage, .. }) if stage == "v2"),
            "{bad}"
        );
    }
    let many = (0..=MAX_VARIABLES).fold(Canary::new(empty()), |canary, i| {
        canary.variable(format!("var_{i}"), "x")
    });
    assert_eq!(
        start(many),
        Err(StageError::TooManyVariables {
            stage: "v2".into(),
            count: MAX_VARIABLES + 1
        })
    );
    assert_eq!(
        start(Canary::new(empty()).variable("feature-x", "on")),
        Err(StageError::VariableName {
            stage: "v2".into(),
            name: "feature-x".into()
        })
    );
    let long = "x".repeat(MAX_VARIABLE_VALUE + 1);
    assert!(matches!(
        start(Canary::new(empty()).variable("feature_x", long)),
        Err(StageError::VariableValue { .. })
    ));
    assert_eq!(
        start(Canary::new(empty()).deployment("v2 next")),
        Err(StageError::InvalidName("v2 next".into()))
    );
    assert_eq!(
        start(Canary::new(empty()).deployment("v2")),
        Err(StageError::Conflict {
            what: "deployment",
            value: "v2".into(),
            first: "v2".into(),
            second: "v2".into(),
        })
    );
    assert_eq!(
        handle.start_canary("v9", Canary::new(empty())),
        Err(StageError::UnknownStage("v9".into()))
    );
    assert_eq!(
        handle.deployments("v2").unwrap(),
        ("v2".into(), Some("v2-canary".into()))
    );
    assert_eq!(handle.percent("v2").unwrap(), 10.0);

    // A stage built without a canary can start one.
    handle
        .start_canary("v1", Canary::new(empty()).percent(5.0))
        .unwrap();
    assert_eq!(
        handle.deployments("v1").unwrap(),
        ("v1".into(), Some("v1-canary".into()))
    );
    assert_eq!(handle.percent("v1").unwrap(), 5.0);

    // The stable deployment's variables count towards the bound too.
    let stages = StageRouter::builder()
        .stage(with_variables("v3", 60))
        .build()
        .unwrap();
    let canary = (0..60).fold(Canary::new(empty()), |canary, i| {
        canary.variable(format!("canary_{i}"), "x")
    });
    assert_eq!(
        stages.handle().start_canary("v3", canary),
        Err(StageError::TooManyVariables {
            stage: "v3".into(),
            count: 120
        })
    );
}

// Deprecation and sunset.

const SUCCESSOR: &str = "https://api.example.com/v2/";
/// T0 minus a day, as RFC 9745 writes it.
const DEPRECATED: &str = "@1799913600";
/// T0 plus 30 days, as an HTTP-date.
const SUNSET: &str = "Sun, 14 Feb 2027 08:00:00 GMT";

/// `v1` deprecated a day before T0, retiring 30 days after it, with `v2` as its successor.
fn retiring(clock: &ManualClock, after_sunset: AfterSunset) -> StageRouter<Router> {
    StageRouter::builder()
        .clock(clock.clone())
        .stage(
            StageSpec::new("v1", echo("v1"))
                .base_path("/v1")
                .deprecated_at(at(-DAY))
                .sunset_at(at(30 * DAY))
                .successor(SUCCESSOR)
                .after_sunset(after_sunset),
        )
        .stage(StageSpec::new("v2", echo("v2")).base_path("/v2"))
        .build()
        .unwrap()
}

#[track_caller]
fn assert_announces_retirement(reply: &Reply) {
    assert_eq!(reply.header("deprecation"), DEPRECATED, "{reply:?}");
    assert_eq!(reply.header("sunset"), SUNSET, "{reply:?}");
    assert_eq!(
        reply.header("link"),
        format!("<{SUCCESSOR}>; rel=\"successor-version\""),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_deprecated_stage_announces_its_deprecation_sunset_and_successor() {
    let clock = clock();
    let (addr, client) = (
        serve_stages(retiring(&clock, AfterSunset::Refuse)).await,
        Client::new(),
    );

    let reply = client.get(addr, "/v1/orders", &[]).await;
    assert_eq!(seen(&reply)["stage"], "v1");
    assert_announces_retirement(&reply);
    assert_eq!(reply.header("x-deployment"), "v1");

    let current = client.get(addr, "/v2/orders", &[]).await;
    assert_eq!(seen(&current)["stage"], "v2");
    for name in ["deprecation", "sunset", "link"] {
        assert!(current.headers.get(name).is_none(), "{name}: {current:?}");
    }
}

#[tokio::test]
async fn after_its_sunset_a_stage_answers_410_gone_naming_the_successor() {
    let clock = clock();
    let (addr, client) = (
        serve_stages(retiring(&clock, AfterSunset::Refuse)).await,
        Client::new(),
    );

    clock.advance(Duration::from_secs(30 * DAY as u64 - 1));
    let last = client.get(addr, "/v1/orders", &[]).await;
    assert_eq!(seen(&last)["stage"], "v1");

    clock.advance(Duration::from_secs(1));
    let gone = client.get(addr, "/v1/orders", &[]).await;
    assert_eq!(gone.status, StatusCode::GONE, "{gone:?}");
    assert_eq!(gone.problem(), GONE);
    let detail = gone.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("v1") && detail.contains(SUCCESSOR),
        "{detail}"
    );
    assert_eq!(gone.header("sunset"), SUNSET);
    assert_eq!(
        gone.header("link"),
        format!("<{SUCCESSOR}>; rel=\"successor-version\"")
    );
    // The successor still serves.
    assert_eq!(
        seen(&client.get(addr, "/v2/orders", &[]).await)["stage"],
        "v2"
    );
}

#[tokio::test]
async fn a_stage_told_to_keep_serving_after_its_sunset_still_sends_the_headers() {
    let clock = clock();
    let stages = retiring(&clock, AfterSunset::KeepServing);
    let (addr, client) = (serve_stages(stages).await, Client::new());

    clock.advance(Duration::from_secs(365 * DAY as u64));
    let reply = client.get(addr, "/v1/orders", &[]).await;

    assert_eq!(seen(&reply)["stage"], "v1");
    assert_announces_retirement(&reply);
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The counter `name` with exactly `labels` in `snapshot`, or `None` if it was never
/// registered.
fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    snapshot
        .iter()
        .find(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && key.labels().count() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
}

#[tokio::test]
async fn refusals_are_counted_by_reason_and_stage() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = clock();
    // The handles are made at build, on the recorder then installed.
    let (unselected, retired) = metrics::with_local_recorder(&recorder, || {
        let unselected = StageRouter::builder()
            .stage(StageSpec::new("v2", echo("v2")).base_path("/v2"))
            .default_stage("v2")
            .build()
            .unwrap();
        (unselected, retiring(&clock, AfterSunset::Refuse))
    });
    let status = |stages: &StageRouter<Router>, path: &'static str| {
        let stages = stages.clone();
        async move {
            let response = stages.oneshot(get_request(path, None, &[])).await.unwrap();
            response.status()
        }
    };

    assert_eq!(status(&unselected, "/v9/orders").await, StatusCode::OK);
    assert_eq!(status(&retired, "/v9/orders").await, StatusCode::NOT_FOUND);
    assert_eq!(status(&retired, "/orders").await, StatusCode::NOT_FOUND);
    assert_eq!(status(&retired, "/v1/orders").await, StatusCode::OK);
    clock.advance(Duration::from_secs(30 * DAY as u64));
    assert_eq!(status(&retired, "/v1/orders").await, StatusCode::GONE);
    assert_eq!(status(&retired, "/v2/orders").await, StatusCode::OK);

    // A snapshot reads the counters and resets them: one for all the checks.
    let snapshot = snapshotter.snapshot().into_vec();
    let refused = "tollgate_stage_refused_total";
    let no_stage = [("reason", "no_stage"), ("stage", "")];
    assert_eq!(counter(&snapshot, refused, &no_stage), Some(2));
    let sunset = [("reason", "sunset"), ("stage", "v1")];
    assert_eq!(counter(&snapshot, refused, &sunset), Some(1));
    // Nothing that cannot refuse registers a counter: a router with a default stage, a stage
    // with no sunset.
    let series = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == refused)
        .count();
    assert_eq!(series, 2);
    let served = [("stage", "v2"), ("deployment", "v2")];
    assert_eq!(
        counter(&snapshot, "tollgate_stage_requests_total", &served),
        Some(2)
    );
}

#[tokio::test]
async fn the_successor_link_joins_the_services_own_links() {
    let paged = Router::new().route(
        "/orders",
        get(|| async { ([(LINK, "</v1/orders?page=2>; rel=\"next\"")], "page 1") }),
    );
    let stages = StageRouter::builder()
        .stage(
            StageSpec::new("v1", paged)
                .base_path("/v1")
                .successor(SUCCESSOR),
        )
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let reply = client.get(addr, "/v1/orders", &[]).await;

    assert_eq!(reply.status, StatusCode::OK);
    let links: Vec<&str> = reply
        .headers
        .get_all(LINK)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        links,
        [
            "</v1/orders?page=2>; rel=\"next\"".to_owned(),
            format!("<{SUCCESSOR}>; rel=\"successor-version\"")
        ]
    );
}

// The deployment header and bodies.

#[tokio::test]
async fn every_response_a_stage_serves_names_its_deployment_even_its_own_errors() {
    let v1 = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        );
    let stages = StageRouter::builder()
        .stage(
            StageSpec::new("v1", v1)
                .base_path("/v1")
                .deployment("v1-build-7"),
        )
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    for (path, status) in [("/v1/orders", 200), ("/v1/missing", 404), ("/v1/fail", 500)] {
        let reply = client.get(addr, path, &[]).await;
        assert_eq!(reply.status, status, "{path}: {reply:?}");
        assert_eq!(reply.header("x-deployment"), "v1-build-7", "{path}");
    }
}

#[tokio::test]
async fn a_custom_deployment_header_replaces_x_deployment() {
    let stages = StageRouter::builder()
        .deployment_header(Some(HeaderName::from_static("x-served-by")))
        .stage(StageSpec::new("v1", echo("v1")).base_path("/v1"))
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let reply = client.get(addr, "/v1/orders", &[]).await;

    assert_eq!(seen(&reply)["stage"], "v1");
    assert_eq!(reply.header("x-served-by"), "v1");
    assert!(reply.headers.get("x-deployment").is_none(), "{reply:?}");
}

#[tokio::test]
async fn without_a_deployment_header_responses_do_not_name_the_deployment() {
    let stages = StageRouter::builder()
        .deployment_header(None)
        .stage(StageSpec::new("v1", echo("v1")).base_path("/v1"))
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    let reply = client.get(addr, "/v1/orders", &[]).await;

    assert_eq!(seen(&reply)["stage"], "v1");
    assert!(reply.headers.get("x-deployment").is_none(), "{reply:?}");
}

#[tokio::test]
async fn keep_inner_body_serves_and_refuses_in_axums_own_body() {
    let clock = clock();
    let stages = retiring(&clock, AfterSunset::Refuse).keep_inner_body();
    let app: Router = Router::new().fallback_service(stages);
    let (addr, client) = (serve(app).await, Client::new());

    let reply = client.get(addr, "/v1/orders?page=2", &[]).await;
    assert_eq!(seen(&reply)["path"], "/orders?page=2");
    assert_eq!(reply.header("x-deployment"), "v1");
    assert_announces_retirement(&reply);

    let unselected = client.get(addr, "/v3/orders", &[]).await;
    assert_eq!(unselected.status, StatusCode::NOT_FOUND);
    assert_eq!(unselected.problem(), NOT_FOUND);

    clock.advance(Duration::from_secs(30 * DAY as u64));
    let gone = client.get(addr, "/v1/orders", &[]).await;
    assert_eq!(gone.status, StatusCode::GONE);
    assert_eq!(gone.problem(), GONE);
}

// Readiness.

/// A stage service that is not ready until its gate opens, and then answers `200`.
#[derive(Clone, Default)]
struct Gated {
    open: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
    fail: bool,
}

impl Gated {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

impl Service<Request<axum::body::Body>> for Gated {
    type Response = Response<Full<Bytes>>;
    type Error = String;
    type Future = std::future::Ready<Result<Self::Response, String>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        if self.fail {
            return Poll::Ready(Err("the stage's backend is down".into()));
        }
        if self.open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, _: Request<axum::body::Body>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ready")))))
    }
}

#[tokio::test]
async fn a_stage_service_that_is_not_ready_at_once_is_awaited_then_called() {
    let gated = Gated::default();
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", gated.clone()))
        .default_stage("v1")
        .build()
        .unwrap();

    let response = tokio::spawn(stages.oneshot(get_request("/orders", None, &[])));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !response.is_finished(),
        "answered before the service was ready"
    );
    gated.open();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("the request was not woken when the service became ready")
        .unwrap()
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-deployment"], "v1");
}

#[tokio::test]
async fn a_stage_service_that_fails_readiness_fails_the_request_with_its_error() {
    let failing = Gated {
        fail: true,
        ..Gated::default()
    };
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", failing))
        .default_stage("v1")
        .build()
        .unwrap();

    let error = stages
        .oneshot(get_request("/orders", None, &[]))
        .await
        .unwrap_err();

    assert_eq!(error, "the stage's backend is down");
}

// A plain hyper service.

/// A hyper stage answering `<service> <path> stage=<name> deployment=<deployment>`.
fn hyper_echo(
    service: &'static str,
) -> impl Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(move |request: Request<Incoming>| async move {
        let stage = request.extensions().get::<Stage>();
        let body = format!(
            "{service} {} stage={} deployment={}",
            request.uri(),
            stage.map_or("none", Stage::name),
            stage.map_or("none", Stage::deployment),
        );
        Ok(Response::new(Full::new(Bytes::from(body))))
    })
}

#[tokio::test]
async fn the_router_serves_plain_hyper_stages() {
    let stages = StageRouter::builder()
        .override_header(Some(HeaderName::from_static(DEFAULT_OVERRIDE_HEADER)))
        .stage(StageSpec::new("v1", hyper_echo("v1")).base_path("/v1"))
        .stage(
            StageSpec::new("v2", hyper_echo("v2"))
                .base_path("/v2")
                .canary(Canary::new(hyper_echo("v2-next")).percent(100.0)),
        )
        .build()
        .unwrap();
    let (addr, client) = (serve_hyper(stages).await, Client::new());

    let v1 = client.get(addr, "/v1/orders?page=2", &[]).await;
    assert_eq!(v1.status, StatusCode::OK);
    assert_eq!(v1.text(), "v1 /orders?page=2 stage=v1 deployment=v1");
    assert_eq!(v1.header("x-deployment"), "v1");

    // The peer address the server inserted is the sticky key: at 100 % it is on the canary.
    let v2 = client.get(addr, "/v2/orders", &[]).await;
    assert_eq!(v2.text(), "v2-next /orders stage=v2 deployment=v2-canary");
    assert_eq!(v2.header("x-deployment"), "v2-canary");
    let forced = client
        .get(addr, "/v2/orders", &[("x-canary", "never")])
        .await;
    assert_eq!(forced.text(), "v2 /orders stage=v2 deployment=v2");

    let unselected = client.get(addr, "/v3/orders", &[]).await;
    assert_eq!(unselected.status, StatusCode::NOT_FOUND);
    assert_eq!(unselected.problem(), NOT_FOUND);
}

#[tokio::test]
async fn a_path_with_dot_segments_is_refused_rather_than_routed_to_one_stage_and_resolved_to_another(
) {
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", echo("v1")).base_path("/v1"))
        .stage(StageSpec::new("v2", echo("v2")).base_path("/v2"))
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());

    for path in ["/v1/../v2/orders", "/v1/%2e%2e/v2/orders", "/v2/./orders"] {
        let refused = client.get(addr, path, &[]).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{path}: {refused:?}"
        );
        assert_eq!(refused.problem(), "urn:tollgate:problem:bad-request");
    }
    assert_eq!(stage_of(&client, addr, "/v1/orders.json", &[]).await, "v1");
}

#[tokio::test]
async fn the_most_preferred_vendor_media_type_selects_the_stage() {
    let stages = StageRouter::builder()
        .media_type_vendor("acme")
        .stage(StageSpec::new("v1", echo("v1")).version("1"))
        .stage(StageSpec::new("v2", echo("v2")).version("2"))
        .build()
        .unwrap();
    let (addr, client) = (serve_stages(stages).await, Client::new());
    let accept = "application/vnd.acme.v1+json;q=0.1, application/vnd.acme.v2+json";
    assert_eq!(
        stage_of(&client, addr, "/orders", &[("accept", accept)]).await,
        "v2"
    );
}

#[test]
fn a_sunset_an_http_date_cannot_state_is_refused() {
    use std::time::{Duration, SystemTime};
    for at in [
        SystemTime::UNIX_EPOCH - Duration::from_secs(1),
        SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800),
    ] {
        let error = refusal([StageSpec::new("v1", empty()).sunset_at(at)]);
        assert_eq!(error, StageError::InvalidDate { stage: "v1".into() });
    }
}
