//! Access control over real loopback TCP: the IP filter judges the client the trusted proxies
//! name (never a left-most address the client wrote itself), on an axum `Router` and on a
//! plain hyper service, and fails closed without a peer address; in `Gateway` it runs before
//! the throttle and the authorizer, and CORS runs before everything, so a browser's preflight
//! is never throttled, authorized or counted, and every refusal carries the CORS headers.

mod support;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, Method, Response, StatusCode};
use http_body_util::{Empty, Full};
use support::{
    counting_authorizer, serve_axum, serve_hyper, Calls, Client, KeyedPlan, Reply, ALICE,
};
use tollgate::access::cors::CorsLayer;
use tollgate::access::IpFilterLayer;
use tollgate::auth::{AuthLayer, CustomAuthorizer};
use tollgate::key::{ClientIp, Global};
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::{ForwardedHeader, Gateway, PeerAddr, TrustedProxies};
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

const FORBIDDEN: &str = "urn:tollgate:problem:forbidden";
const INTERNAL: &str = "urn:tollgate:problem:internal-error";
const UNAUTHORIZED: &str = "urn:tollgate:problem:unauthorized";
const THROTTLED: &str = "urn:tollgate:problem:throttled";
const QUOTA_EXCEEDED: &str = "urn:tollgate:problem:quota-exceeded";

/// How long one client call may take before the test fails instead of hanging.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// The browser application's origin, the one CORS allows.
const APP_ORIGIN: &str = "https://app.example";

/// `method /widgets` with `headers`, from `client`.
async fn send(client: &Client, method: &str, addr: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    tokio::time::timeout(CALL_LIMIT, client.send(method, addr, "/widgets", headers))
        .await
        .unwrap_or_else(|_| panic!("{method} /widgets got no answer within {CALL_LIMIT:?}"))
}

/// `GET /widgets` with `headers`, from `client`.
async fn get_widgets(client: &Client, addr: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    send(client, "GET", addr, headers).await
}

/// The application: `GET /widgets` answers `widgets`, counting the calls that reach it.
fn widgets(calls: &Calls) -> Router {
    let calls = calls.clone();
    Router::new().route(
        "/widgets",
        get(move || {
            calls.next();
            async { "widgets" }
        }),
    )
}

fn assert_refused(reply: &Reply, status: StatusCode, problem: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.problem(), problem, "{reply:?}");
}

fn assert_forbidden(reply: &Reply) {
    assert_refused(reply, StatusCode::FORBIDDEN, FORBIDDEN);
    assert_eq!(
        reply.json()["detail"],
        "the client's address may not call this API",
        "{reply:?}"
    );
}

/// One request through the proxy on 127.0.0.1: the forwarding headers it arrives with, and
/// whether the client they name may pass.
struct Case {
    headers: &'static [(&'static str, &'static str)],
    admitted: bool,
    why: &'static str,
}

/// For a filter that allows 203.0.113.0/24 and 2001:db8::/32, denies 203.0.113.66, and
/// trusts the proxy on 127.0.0.1 (the test client's address) and inner proxies in
/// 192.168.0.0/16, reading `X-Forwarded-For`.
const X_FORWARDED_FOR_CASES: &[Case] = &[
    Case {
        headers: &[("x-forwarded-for", "203.0.113.7")],
        admitted: true,
        why: "an allowed client behind the proxy",
    },
    Case {
        headers: &[("x-forwarded-for", "203.0.113.66")],
        admitted: false,
        why: "a denied client inside the allowed range",
    },
    Case {
        headers: &[("x-forwarded-for", "198.51.100.1")],
        admitted: false,
        why: "a client off the allow list",
    },
    Case {
        headers: &[("x-forwarded-for", "2001:db8::7")],
        admitted: true,
        why: "an allowed IPv6 client",
    },
    Case {
        headers: &[("x-forwarded-for", "203.0.113.7, 192.168.1.1")],
        admitted: true,
        why: "an inner trusted proxy is walked past",
    },
    Case {
        headers: &[("x-forwarded-for", "198.51.100.1, 192.168.1.1")],
        admitted: false,
        why: "a client off the list behind an inner trusted proxy",
    },
    Case {
        headers: &[("x-forwarded-for", "10.0.0.5, 203.0.113.9")],
        admitted: true,
        why: "judged by the address the proxy appended, not the left-most one",
    },
    Case {
        headers: &[("x-forwarded-for", "203.0.113.7, 198.51.100.1")],
        admitted: false,
        why: "an allowed left-most address the client wrote does not help",
    },
    Case {
        headers: &[("x-forwarded-for", "203.0.113.7, 203.0.113.66")],
        admitted: false,
        why: "a denied client cannot hide behind an allowed left-most address",
    },
    Case {
        headers: &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.1"),
        ],
        admitted: false,
        why: "the proxy's line is the last one, not the client's first",
    },
    Case {
        headers: &[],
        admitted: false,
        why: "no chain: the proxy itself (127.0.0.1) is the client, off the list",
    },
    Case {
        headers: &[("forwarded", "for=203.0.113.7")],
        admitted: false,
        why: "the header the proxy does not write is ignored",
    },
];

fn behind_the_proxy(header: ForwardedHeader) -> IpFilterLayer {
    IpFilterLayer::builder()
        .allow("203.0.113.0/24")
        .allow("2001:db8::/32")
        .deny("203.0.113.66")
        .trusted_proxies(TrustedProxies::new(["127.0.0.1", "192.168.0.0/16"]).unwrap())
        .forwarded_header(header)
        .build()
        .unwrap()
}

/// Sends every case to `addr`; returns how many were let through. `body` is what the
/// application answers.
async fn assert_cases(addr: SocketAddr, cases: &[Case], body: &str, server: &str) -> usize {
    let client = Client::new();
    let mut admitted = 0;
    for case in cases {
        let reply = get_widgets(&client, addr, case.headers).await;
        let why = format!("{} ({:?}) on {server}", case.why, case.headers);
        if case.admitted {
            assert_eq!(reply.status, StatusCode::OK, "{why}: {reply:?}");
            assert_eq!(reply.text(), body, "{why}");
            admitted += 1;
        } else {
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{why}: {reply:?}");
            assert_forbidden(&reply);
        }
    }
    admitted
}

#[tokio::test]
async fn the_lists_judge_the_client_the_trusted_proxies_name() {
    let handler = Calls::default();
    let filter = behind_the_proxy(ForwardedHeader::XForwardedFor);
    let addr = serve_axum(widgets(&handler).layer(filter)).await;

    let admitted = assert_cases(addr, X_FORWARDED_FOR_CASES, "widgets", "axum").await;
    assert_eq!(handler.count(), admitted);
}

#[tokio::test]
async fn the_forwarded_header_names_the_client_when_the_proxy_writes_it() {
    const CASES: &[Case] = &[
        Case {
            headers: &[("forwarded", "for=203.0.113.7;proto=https")],
            admitted: true,
            why: "an allowed client behind the proxy",
        },
        Case {
            headers: &[("forwarded", "for=203.0.113.66")],
            admitted: false,
            why: "a denied client inside the allowed range",
        },
        Case {
            headers: &[("forwarded", "for=198.51.100.1")],
            admitted: false,
            why: "a client off the allow list",
        },
        Case {
            headers: &[("forwarded", "for=\"[2001:db8::7]:4711\"")],
            admitted: true,
            why: "an allowed IPv6 client with a port",
        },
        Case {
            headers: &[("forwarded", "for=10.0.0.5, for=203.0.113.9")],
            admitted: true,
            why: "judged by the element the proxy appended",
        },
        Case {
            headers: &[("forwarded", "for=203.0.113.7, for=198.51.100.1")],
            admitted: false,
            why: "an allowed left-most element the client wrote does not help",
        },
        Case {
            headers: &[("forwarded", "for=203.0.113.7, for=192.168.1.1")],
            admitted: true,
            why: "an inner trusted proxy is walked past",
        },
        Case {
            headers: &[("x-forwarded-for", "203.0.113.7")],
            admitted: false,
            why: "X-Forwarded-For is ignored: the proxy (127.0.0.1) is judged",
        },
        Case {
            headers: &[
                ("x-forwarded-for", "203.0.113.7"),
                ("forwarded", "for=198.51.100.1"),
            ],
            admitted: false,
            why: "only the configured header counts",
        },
    ];
    let handler = Calls::default();
    let filter = behind_the_proxy(ForwardedHeader::Forwarded);
    let addr = serve_axum(widgets(&handler).layer(filter)).await;

    let admitted = assert_cases(addr, CASES, "widgets", "axum").await;
    assert_eq!(handler.count(), admitted);
}

#[tokio::test]
async fn without_trusted_proxies_forwarding_headers_are_ignored() {
    let handler = Calls::default();
    let filter = IpFilterLayer::builder()
        .allow("127.0.0.0/8")
        .deny("127.0.0.2")
        .build()
        .unwrap();
    let addr = serve_axum(widgets(&handler).layer(filter)).await;
    let claims_to_be_denied = [
        ("x-forwarded-for", "127.0.0.2"),
        ("forwarded", "for=127.0.0.2"),
    ];
    let claims_to_be_allowed = [
        ("x-forwarded-for", "127.0.0.3"),
        ("forwarded", "for=127.0.0.3"),
    ];

    // The peer 127.0.0.1 is judged, whatever the headers say.
    let allowed_peer = Client::new();
    for header in claims_to_be_denied {
        let reply = get_widgets(&allowed_peer, addr, &[header]).await;
        assert_eq!(reply.status, StatusCode::OK, "{header:?}: {reply:?}");
    }
    let denied_peer = Client::from_ip("127.0.0.2");
    for header in claims_to_be_allowed {
        assert_forbidden(&get_widgets(&denied_peer, addr, &[header]).await);
    }
    assert_forbidden(&get_widgets(&denied_peer, addr, &[]).await);
    let other_peer = Client::from_ip("127.0.0.3");
    assert_eq!(
        get_widgets(&other_peer, addr, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(handler.count(), 3);
}

#[tokio::test]
async fn a_peer_that_is_not_a_trusted_proxy_cannot_name_its_own_address() {
    let handler = Calls::default();
    let filter = IpFilterLayer::builder()
        .allow("203.0.113.0/24")
        .trusted_proxies(TrustedProxies::new(["10.0.0.0/8"]).unwrap())
        .build()
        .unwrap();
    let addr = serve_axum(widgets(&handler).layer(filter)).await;

    let reply = get_widgets(&Client::new(), addr, &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_forbidden(&reply);
    assert_eq!(handler.count(), 0);
}

#[tokio::test]
async fn a_plain_hyper_service_is_judged_by_its_peer_addr() {
    let handler = Calls::default();
    let calls = handler.clone();
    let service = ServiceBuilder::new()
        .layer(behind_the_proxy(ForwardedHeader::XForwardedFor))
        .service(service_fn(move |_request| {
            calls.next();
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"plain")))) }
        }));
    let addr = serve_hyper(service).await;

    let admitted = assert_cases(addr, X_FORWARDED_FOR_CASES, "plain", "hyper").await;
    assert_eq!(handler.count(), admitted);
}

#[tokio::test]
async fn a_request_without_a_peer_address_is_refused_with_a_500() {
    let handler = Calls::default();
    let calls = handler.clone();
    // Only a deny list, which everyone else passes: still, an unknown address fails closed.
    let filter = IpFilterLayer::builder()
        .deny("198.51.100.0/24")
        .trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap())
        .build()
        .unwrap();
    let service = filter.layer(service_fn(move |_request: http::Request<Empty<Bytes>>| {
        calls.next();
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"plain")))) }
    }));
    let request = || {
        http::Request::builder()
            .uri("/widgets")
            .header("x-forwarded-for", "203.0.113.7")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    // A forwarding chain is no substitute for the peer that would vouch for it.
    let response = service.clone().oneshot(request()).await.unwrap();
    let reply = Reply::of(response).await;
    assert_refused(&reply, StatusCode::INTERNAL_SERVER_ERROR, INTERNAL);
    assert!(reply.json().get("detail").is_none(), "{reply:?}");
    assert_eq!(handler.count(), 0);

    // The same request with the peer a server inserts passes.
    let mut request = request();
    request
        .extensions_mut()
        .insert(PeerAddr("127.0.0.1:50000".parse().unwrap()));
    let reply = Reply::of(service.oneshot(request).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.text(), "plain");
    assert_eq!(handler.count(), 1);
}

/// Bytes written by the log subscriber of one test.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn building_a_filter_logs_no_error() {
    use tracing_subscriber::util::SubscriberInitExt;

    let log = Log::default();
    let writer = log.clone();
    let _guard = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish()
        .set_default();

    let filter = IpFilterLayer::builder()
        .allow("203.0.113.0/24")
        .build()
        .unwrap();
    assert!(filter.allows("203.0.113.7".parse().unwrap()));

    // A correctly served filter has nothing to complain about until a request comes without
    // a peer address.
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(!logged.contains("ERROR"), "{logged}");
}

/// A gateway's steps, each counting what reaches it, on one manual clock (noon UTC), with a
/// usage plan `basic` whose daily quota is `quota`, and one key on it.
struct Fixture {
    keyed: KeyedPlan,
    authorizer_calls: Calls,
    handler_calls: Calls,
}

/// The plan, its key and the clock.
impl std::ops::Deref for Fixture {
    type Target = KeyedPlan;

    fn deref(&self) -> &KeyedPlan {
        &self.keyed
    }
}

impl Fixture {
    async fn new(quota: u32) -> Self {
        Self {
            keyed: KeyedPlan::new(quota).await,
            authorizer_calls: Calls::default(),
            handler_calls: Calls::default(),
        }
    }

    /// A throttle of `rule` on the fixture's clock, which never moves: nothing refills.
    fn throttle(&self, rule: Rule) -> ThrottleLayer {
        ThrottleLayer::builder()
            .rule(rule)
            .clock(self.clock.clone())
            .build()
            .unwrap()
    }

    /// The counting authorizer: `ALICE` is allowed, any other token refused.
    fn authorizer(&self) -> AuthLayer<CustomAuthorizer> {
        counting_authorizer(self.authorizer_calls.clone())
    }

    fn app(&self) -> Router {
        widgets(&self.handler_calls)
    }
}

#[tokio::test]
async fn a_denied_client_never_reaches_the_throttle_the_authorizer_or_the_quota() {
    let fixture = Fixture::new(10).await;
    // One request in all, for everyone: had a denied client met the throttle first, it
    // would have spent it (and been told 429 the second time, not 403).
    let throttle = fixture.throttle(Rule::new("everyone", Rate::per_hour(1), Global).burst(1));
    let filter = IpFilterLayer::builder().deny("127.0.0.2").build().unwrap();
    // Added in reverse: the order is the builder's.
    let gateway = Gateway::builder()
        .usage(fixture.plans.layer())
        .authorizer(fixture.authorizer())
        .throttle(throttle)
        .ip_filter(filter)
        .build();
    assert_eq!(
        gateway.steps().collect::<Vec<_>>(),
        ["ip_filter", "throttle", "authorizer", "usage"]
    );
    let addr = serve_axum(fixture.app().layer(gateway)).await;
    let credentials = [
        ("authorization", ALICE),
        ("x-api-key", fixture.key.as_str()),
    ];

    let denied = Client::from_ip("127.0.0.2");
    for _ in 0..3 {
        let reply = get_widgets(&denied, addr, &credentials).await;
        assert_forbidden(&reply);
        assert!(reply.headers.get("ratelimit").is_none(), "{reply:?}");
    }
    assert_eq!(fixture.authorizer_calls.count(), 0);
    assert_eq!(fixture.usage_today().await, (0, Some(10)));

    // The one request is still there for an allowed client, and then it is spent.
    let allowed = Client::from_ip("127.0.0.3");
    let admitted = get_widgets(&allowed, addr, &credentials).await;
    assert_eq!(admitted.status, StatusCode::OK, "{admitted:?}");
    assert_eq!(admitted.text(), "widgets");
    let throttled = get_widgets(&allowed, addr, &credentials).await;
    assert_refused(&throttled, StatusCode::TOO_MANY_REQUESTS, THROTTLED);
    // With the throttle spent, a denied client still hears 403.
    assert_forbidden(&get_widgets(&denied, addr, &credentials).await);

    assert_eq!(fixture.authorizer_calls.count(), 1);
    assert_eq!(fixture.usage_today().await, (1, Some(9)));
    assert_eq!(fixture.handler_calls.count(), 1);
}

/// CORS for `APP_ORIGIN`: `GET` and `POST`, with `Authorization` and `X-Api-Key`.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin([APP_ORIGIN.parse().unwrap()])
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([AUTHORIZATION, HeaderName::from_static("x-api-key")])
}

/// Every step, with a throttle of one request an hour per client IP, and an IP filter that
/// denies 127.0.0.9.
fn cors_gateway(fixture: &Fixture) -> Gateway {
    let per_client = Rule::new(
        "per-client",
        Rate::per_hour(1),
        ClientIp::new(TrustedProxies::none()),
    )
    .burst(1);
    let gateway = Gateway::builder()
        .usage(fixture.plans.layer())
        .authorizer(fixture.authorizer())
        .throttle(fixture.throttle(per_client))
        .ip_filter(IpFilterLayer::builder().deny("127.0.0.9").build().unwrap())
        .cors(cors())
        .build();
    assert_eq!(
        gateway.steps().collect::<Vec<_>>(),
        ["ip_filter", "cors", "throttle", "authorizer", "usage"]
    );
    gateway
}

/// A browser's preflight for `GET /widgets` with credentials, from `origin`.
async fn preflight(client: &Client, addr: SocketAddr, origin: &str) -> Reply {
    send(
        client,
        "OPTIONS",
        addr,
        &[
            ("origin", origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization, x-api-key"),
        ],
    )
    .await
}

/// The items of a comma-separated header, lowercased.
fn items(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .header(name)
        .split(',')
        .map(|item| item.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn a_preflight_is_answered_before_the_throttle_the_authorizer_and_the_quota() {
    let fixture = Fixture::new(2).await;
    let addr = serve_axum(fixture.app().layer(cors_gateway(&fixture))).await;

    // The throttle admits one request an hour from this client; its preflights spend none.
    let browser = Client::from_ip("127.0.0.2");
    for _ in 0..5 {
        let reply = preflight(&browser, addr, APP_ORIGIN).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.header("access-control-allow-origin"), APP_ORIGIN);
        assert_eq!(
            items(&reply, "access-control-allow-methods"),
            ["get", "post"]
        );
        assert_eq!(
            items(&reply, "access-control-allow-headers"),
            ["authorization", "x-api-key"]
        );
        assert!(reply.headers.get("ratelimit").is_none(), "{reply:?}");
    }
    assert_eq!(fixture.authorizer_calls.count(), 0);
    assert_eq!(fixture.handler_calls.count(), 0);
    assert_eq!(fixture.usage_today().await, (0, Some(2)));

    let with_key = [
        ("origin", APP_ORIGIN),
        ("authorization", ALICE),
        ("x-api-key", fixture.key.as_str()),
    ];
    let first = get_widgets(&browser, addr, &with_key).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.text(), "widgets");
    assert_eq!(first.header("access-control-allow-origin"), APP_ORIGIN);
    // That was the client's one request: the refusal is readable by the browser.
    let throttled = get_widgets(&browser, addr, &with_key).await;
    assert_refused(&throttled, StatusCode::TOO_MANY_REQUESTS, THROTTLED);
    assert_eq!(throttled.header("access-control-allow-origin"), APP_ORIGIN);

    // A page that has not signed in yet can read why it was refused, too.
    let signed_out = Client::from_ip("127.0.0.5");
    let anonymous = get_widgets(&signed_out, addr, &[("origin", APP_ORIGIN)]).await;
    assert_refused(&anonymous, StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    assert_eq!(anonymous.header("access-control-allow-origin"), APP_ORIGIN);

    let second_tab = Client::from_ip("127.0.0.3");
    let second = get_widgets(&second_tab, addr, &with_key).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert_eq!(second.header("access-control-allow-origin"), APP_ORIGIN);

    // The quota of 2 was all the key's for real requests.
    let third_tab = Client::from_ip("127.0.0.4");
    let over_quota = get_widgets(&third_tab, addr, &with_key).await;
    assert_refused(&over_quota, StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED);
    assert_eq!(over_quota.header("access-control-allow-origin"), APP_ORIGIN);

    // The IP lists come before CORS: a denied client is refused even its preflight (any
    // OPTIONS is a preflight to tower-http), and its refusals carry no CORS headers.
    let denied_ip = Client::from_ip("127.0.0.9");
    let denied = get_widgets(&denied_ip, addr, &with_key).await;
    assert_forbidden(&denied);
    assert!(
        !denied.headers.contains_key("access-control-allow-origin"),
        "{denied:?}"
    );
    let denied_preflight = preflight(&denied_ip, addr, APP_ORIGIN).await;
    assert_forbidden(&denied_preflight);

    assert_eq!(fixture.authorizer_calls.count(), 3);
    assert_eq!(fixture.usage_today().await, (2, Some(0)));
    assert_eq!(fixture.handler_calls.count(), 2);
}

#[tokio::test]
async fn a_preflight_from_another_origin_is_not_allowed() {
    let fixture = Fixture::new(2).await;
    let addr = serve_axum(fixture.app().layer(cors_gateway(&fixture))).await;
    let browser = Client::from_ip("127.0.0.2");

    let reply = preflight(&browser, addr, "https://evil.example").await;
    assert!(
        reply.headers.get("access-control-allow-origin").is_none(),
        "{reply:?}"
    );
    // Nor does a real request from there carry it, so the browser keeps the answer from
    // the page.
    let with_key = [
        ("origin", "https://evil.example"),
        ("authorization", ALICE),
        ("x-api-key", fixture.key.as_str()),
    ];
    let real = get_widgets(&browser, addr, &with_key).await;
    assert_eq!(real.status, StatusCode::OK, "{real:?}");
    assert!(
        real.headers.get("access-control-allow-origin").is_none(),
        "{real:?}"
    );
    // The preflight spent nothing: that request was the client's one.
    assert_eq!(fixture.authorizer_calls.count(), 1);
    assert_eq!(fixture.usage_today().await, (1, Some(1)));
}
