use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::ResponseBody;

/// The kind of a refusal; its URI is the problem document's `type` member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemType {
    /// The request is malformed (400).
    BadRequest,
    /// Credentials are missing, malformed, expired or badly signed (401).
    Unauthorized,
    /// The API key is missing or unknown (401).
    InvalidApiKey,
    /// The caller is known but not allowed (403).
    Forbidden,
    /// No route or stage serves the request (404).
    NotFound,
    /// The route does not take this method (405).
    MethodNotAllowed,
    /// The request conflicts with what exists, such as an id that is taken (409).
    Conflict,
    /// The body is not of a media type the route reads (415).
    UnsupportedMediaType,
    /// The body is larger than the route accepts (413).
    PayloadTooLarge,
    /// The API version was retired after its sunset date (410).
    Gone,
    /// A rate limit refused the request (429).
    Throttled,
    /// The usage plan's quota for the period is used up (429).
    QuotaExceeded,
    /// A store the decision needs is unavailable and the policy fails closed (503).
    Unavailable,
    /// The upstream failed (502).
    BadGateway,
    /// The upstream did not answer in time (504).
    GatewayTimeout,
    /// The gateway itself failed or is misconfigured (500).
    Internal,
}

impl ProblemType {
    /// The short, stable name of this problem type (`throttled`, `quota-exceeded`, …).
    pub fn slug(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Unauthorized => "unauthorized",
            Self::InvalidApiKey => "invalid-api-key",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict => "conflict",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge => "payload-too-large",
            Self::Gone => "gone",
            Self::Throttled => "throttled",
            Self::QuotaExceeded => "quota-exceeded",
            Self::Unavailable => "unavailable",
            Self::BadGateway => "bad-gateway",
            Self::GatewayTimeout => "gateway-timeout",
            Self::Internal => "internal-error",
        }
    }

    /// The problem type URI, `urn:tollgate:problem:<slug>`.
    pub fn uri(self) -> &'static str {
        match self {
            Self::BadRequest => "urn:tollgate:problem:bad-request",
            Self::Unauthorized => "urn:tollgate:problem:unauthorized",
            Self::InvalidApiKey => "urn:tollgate:problem:invalid-api-key",
            Self::Forbidden => "urn:tollgate:problem:forbidden",
            Self::NotFound => "urn:tollgate:problem:not-found",
            Self::MethodNotAllowed => "urn:tollgate:problem:method-not-allowed",
            Self::Conflict => "urn:tollgate:problem:conflict",
            Self::UnsupportedMediaType => "urn:tollgate:problem:unsupported-media-type",
            Self::PayloadTooLarge => "urn:tollgate:problem:payload-too-large",
            Self::Gone => "urn:tollgate:problem:gone",
            Self::Throttled => "urn:tollgate:problem:throttled",
            Self::QuotaExceeded => "urn:tollgate:problem:quota-exceeded",
            Self::Unavailable => "urn:tollgate:problem:unavailable",
            Self::BadGateway => "urn:tollgate:problem:bad-gateway",
            Self::GatewayTimeout => "urn:tollgate:problem:gateway-timeout",
            Self::Internal => "urn:tollgate:problem:internal-error",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad request",
            Self::Unauthorized => "Unauthorized",
            Self::InvalidApiKey => "Missing or invalid API key",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflict",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::PayloadTooLarge => "Payload too large",
            Self::Gone => "Gone",
            Self::Throttled => "Too many requests",
            Self::QuotaExceeded => "Quota exceeded",
            Self::Unavailable => "Service unavailable",
            Self::BadGateway => "Bad gateway",
            Self::GatewayTimeout => "Gateway timeout",
            Self::Internal => "Internal error",
        }
    }
}

impl fmt::Display for ProblemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// Why bearer credentials were refused, as RFC 6750 §3.1 names it in `WWW-Authenticate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BearerError {
    /// No credentials at all: the challenge carries no `error` (RFC 6750 §3.1).
    Missing,
    /// The request is malformed (for example two credentials, or a bad `Authorization` scheme).
    InvalidRequest,
    /// The token is malformed, expired, revoked or badly signed.
    InvalidToken,
}

/// Whole seconds until `wait` has passed, rounded up and never 0, as `Retry-After` needs: a
/// client told "0" retries at once and is refused again.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// A refusal by any tollgate layer, rendered as an `application/problem+json` document
/// (RFC 9457) with the headers its status needs.
///
/// The `detail` is for the client: it never carries secrets, token contents or internal error
/// text, which go to `tracing` instead.
///
/// ```
/// use http_body_util::BodyExt;
/// use tollgate_core::{BearerError, Rejection};
///
/// # tokio_test();
/// # fn tokio_test() { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let response = Rejection::unauthorized(BearerError::InvalidToken)
///     .with_detail("the token has expired")
///     .into_response::<http_body_util::Empty<bytes::Bytes>>();
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.headers()["www-authenticate"], r#"Bearer error="invalid_token""#);
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(problem["type"], "urn:tollgate:problem:unauthorized");
/// assert_eq!(problem["status"], 401);
/// assert_eq!(problem["detail"], "the token has expired");
/// # }) }
/// ```
#[derive(Clone, Debug)]
pub struct Rejection {
    status: StatusCode,
    problem: ProblemType,
    detail: Option<Cow<'static, str>>,
    headers: HeaderMap,
    /// Extension members of the problem document (RFC 9457 §3.2), such as a list of
    /// violations; boxed, as most refusals have none.
    members: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    /// The problem document, when rendered ahead of time.
    rendered: Option<Bytes>,
}

#[derive(Serialize)]
struct ProblemDocument<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    members: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl Rejection {
    /// A refusal with `status` and `problem`, no detail and no extra headers.
    pub fn new(status: StatusCode, problem: ProblemType) -> Self {
        Self {
            status,
            problem,
            detail: None,
            headers: HeaderMap::new(),
            members: None,
            rendered: None,
        }
    }

    /// 400: the request is malformed; `detail` says what was expected.
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ProblemType::BadRequest).with_detail(detail)
    }

    /// 401 with an RFC 6750 `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(error: BearerError) -> Self {
        let challenge = match error {
            BearerError::Missing => "Bearer",
            BearerError::InvalidRequest => r#"Bearer error="invalid_request""#,
            BearerError::InvalidToken => r#"Bearer error="invalid_token""#,
        };
        Self::new(StatusCode::UNAUTHORIZED, ProblemType::Unauthorized)
            .with_header(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))
    }

    /// 401 with `WWW-Authenticate: ApiKey`: the API key is missing or unknown.
    pub fn invalid_api_key() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ProblemType::InvalidApiKey)
            .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"))
    }

    /// 403: the caller is known but not allowed.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, ProblemType::Forbidden)
    }

    /// 403 with `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` (RFC 6750
    /// §3.1): the token is valid but lacks the scopes the route needs. `scope` is the
    /// space-separated list the client should ask for; characters a quoted string cannot hold
    /// are dropped.
    pub fn insufficient_scope(scope: &str) -> Self {
        let scope: String = scope
            .chars()
            .filter(|c| matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e' | ' '))
            .collect();
        let challenge = format!(r#"Bearer error="insufficient_scope", scope="{scope}""#);
        let rejection =
            Self::forbidden().with_detail("the token lacks a scope this route requires");
        match HeaderValue::try_from(challenge) {
            Ok(value) => rejection.with_header(WWW_AUTHENTICATE, value),
            Err(_) => rejection,
        }
    }

    /// 413: the body is larger than the route accepts (`limit` bytes).
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ProblemType::PayloadTooLarge)
            .with_detail(format!("the body is larger than {limit} bytes"))
    }

    /// 404: nothing serves this request.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ProblemType::NotFound)
    }

    /// 410: the API version this request is for was retired (after its sunset date).
    pub fn gone() -> Self {
        Self::new(StatusCode::GONE, ProblemType::Gone)
    }

    /// 429 with `Retry-After`; the throttle adds its `RateLimit` fields.
    pub fn throttled(retry_after: Duration) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, ProblemType::Throttled)
            .with_retry_after(retry_after)
    }

    /// 429 of problem type `quota-exceeded`, with `Retry-After` = the time to the period's reset.
    pub fn quota_exceeded(reset_in: Duration) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, ProblemType::QuotaExceeded)
            .with_retry_after(reset_in)
    }

    /// 503 with `Retry-After`: a store is unavailable and the policy fails closed.
    pub fn unavailable(retry_after: Duration) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ProblemType::Unavailable)
            .with_retry_after(retry_after)
    }

    /// 502: the upstream failed.
    pub fn bad_gateway() -> Self {
        Self::new(StatusCode::BAD_GATEWAY, ProblemType::BadGateway)
    }

    /// 504: the upstream did not answer in time.
    pub fn gateway_timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, ProblemType::GatewayTimeout)
    }

    /// 500: the gateway failed. `error` goes to `tracing`, never to the client.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "tollgate: internal error while deciding a request");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ProblemType::Internal)
    }

    /// Sets the client-facing explanation. Never put secrets or internal errors here.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self.rendered = None;
        self
    }

    /// Adds an extension member to the problem document (RFC 9457 §3.2), such as `errors`,
    /// a list of what was wrong with the request. A member named like a standard one (`type`,
    /// `title`, `status`, `detail`, `instance`) is ignored. Never put secrets here.
    #[must_use]
    pub fn with_member(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        let name = name.into();
        if !matches!(
            name.as_str(),
            "type" | "title" | "status" | "detail" | "instance"
        ) {
            self.members
                .get_or_insert_with(Default::default)
                .insert(name, value);
            self.rendered = None;
        }
        self
    }

    /// An extension member of the problem document, if set.
    pub fn member(&self, name: &str) -> Option<&serde_json::Value> {
        self.members.as_ref()?.get(name)
    }

    /// Renders the problem document now, so that this refusal and its clones reuse it: for a
    /// layer that sends the same refusal many times (a throttle under a flood).
    #[must_use]
    pub fn prerendered(mut self) -> Self {
        self.rendered = Some(self.render());
        self
    }

    /// Adds a response header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets `Retry-After` in whole seconds, rounded up and never 0.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.headers
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds(wait)));
        self
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem type.
    pub fn problem(&self) -> ProblemType {
        self.problem
    }

    /// The client-facing explanation, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The headers sent with the refusal.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The headers sent with the refusal, to add to.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// The problem+json document.
    pub fn to_json(&self) -> Bytes {
        match &self.rendered {
            Some(rendered) => rendered.clone(),
            None => self.render(),
        }
    }

    fn render(&self) -> Bytes {
        let document = ProblemDocument {
            kind: self.problem.uri(),
            title: self.problem.title(),
            status: self.status.as_u16(),
            detail: self.detail.as_deref(),
            members: self.members.as_deref(),
        };
        // Serialising strings, an integer and JSON values with string keys cannot fail.
        serde_json::to_vec(&document).map_or_else(|_| Bytes::new(), Bytes::from)
    }

    /// Renders the refusal as a response whose body type fits any inner service.
    pub fn into_response<B>(self) -> Response<ResponseBody<B>> {
        self.into_response_with(ResponseBody::full)
    }

    /// Renders the refusal with the problem document made into a body by `body`. The
    /// response's extensions hold its [`ProblemType`], for the layers outside (metrics, access
    /// logs) to tell a refusal from an answer without reading the body.
    pub fn into_response_with<B>(self, body: impl FnOnce(Bytes) -> B) -> Response<B> {
        let mut response = Response::new(body(self.to_json()));
        *response.status_mut() = self.status;
        response.extensions_mut().insert(self.problem);
        let headers = response.headers_mut();
        *headers = self.headers;
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.problem.title(), self.status)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Rejection {
    fn into_response(self) -> axum::response::Response {
        self.into_response::<axum::body::Body>()
            .map(axum::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(rejection: &Rejection) -> serde_json::Value {
        serde_json::from_slice(&rejection.to_json()).unwrap()
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(3600)), 3600);
    }

    #[test]
    fn throttled_is_429_with_retry_after_and_problem_json() {
        let response =
            Rejection::throttled(Duration::from_millis(1200)).into_response::<ResponseBody<()>>();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            response.extensions().get::<ProblemType>(),
            Some(&ProblemType::Throttled)
        );
    }

    #[test]
    fn quota_exceeded_has_its_own_problem_type() {
        let rejection = Rejection::quota_exceeded(Duration::from_secs(86_400));
        let doc = problem(&rejection);
        assert_eq!(doc["type"], "urn:tollgate:problem:quota-exceeded");
        assert_eq!(doc["status"], 429);
        assert_eq!(rejection.headers()[RETRY_AFTER], "86400");
    }

    #[test]
    fn missing_bearer_credentials_challenge_has_no_error_code() {
        let rejection = Rejection::unauthorized(BearerError::Missing);
        assert_eq!(rejection.headers()[WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn insufficient_scope_is_403_naming_the_scopes_and_drops_unquotable_characters() {
        let rejection = Rejection::insufficient_scope("orders:read orders:write");
        assert_eq!(rejection.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            rejection.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="orders:read orders:write""#
        );
        let hostile = Rejection::insufficient_scope("a\"b\\c\r\nd");
        assert_eq!(
            hostile.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="abcd""#
        );
    }

    #[test]
    fn api_key_refusal_challenges_with_api_key_scheme() {
        let rejection = Rejection::invalid_api_key();
        assert_eq!(rejection.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(rejection.headers()[WWW_AUTHENTICATE], "ApiKey");
    }

    #[test]
    fn internal_error_text_never_reaches_the_client() {
        let error = std::io::Error::other("redis password=hunter2 refused");
        let rejection = Rejection::internal(&error);
        let body = String::from_utf8(rejection.to_json().to_vec()).unwrap();
        assert!(!body.contains("hunter2"), "{body}");
        assert_eq!(problem(&rejection)["status"], 500);
        assert!(problem(&rejection).get("detail").is_none());
    }

    #[test]
    fn a_prerendered_refusal_renders_the_same_document_and_follows_new_details() {
        let rejection = Rejection::bad_request("expected a token");
        let prerendered = rejection.clone().prerendered();
        assert_eq!(prerendered.to_json(), rejection.to_json());
        let changed = prerendered.with_detail("expected two tokens");
        assert_eq!(problem(&changed)["detail"], "expected two tokens");
    }

    #[test]
    fn members_extend_the_document_and_never_replace_a_standard_member() {
        let rejection = Rejection::bad_request("2 violations")
            .prerendered()
            .with_member("errors", serde_json::json!([{"pointer": "/a"}]))
            .with_member("status", serde_json::json!(200))
            .with_member("type", serde_json::json!("about:blank"));
        let document = problem(&rejection);
        assert_eq!(document["errors"][0]["pointer"], "/a");
        assert_eq!(document["status"], 400);
        assert_eq!(document["type"], "urn:tollgate:problem:bad-request");
        assert_eq!(rejection.member("errors").unwrap()[0]["pointer"], "/a");
        assert!(rejection.member("status").is_none());
        let too_large = Rejection::payload_too_large(1024);
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            problem(&too_large)["type"],
            "urn:tollgate:problem:payload-too-large"
        );
    }

    #[test]
    fn detail_is_json_escaped() {
        let rejection = Rejection::bad_request("expected \"x-client\" header");
        assert_eq!(
            problem(&rejection)["detail"],
            "expected \"x-client\" header"
        );
    }
}
