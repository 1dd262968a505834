//! `HttpUpstream`: a streaming reverse proxy to one base URL (Amazon API Gateway's HTTP
//! integration).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use tollgate_core::{
    has_dot_segment, remove_hop_by_hop, AccessRecord, Principal, Rejection, RequestHead,
    ResponseBody, TrustedProxies,
};
use tower::Service;

use crate::body::{Download, Upload};
use crate::claims::ClaimHeaders;
use crate::client::{upstream_body, BoxError, HttpClient, SendError, SendErrorKind};
use crate::forwarded::{requested_host, set_forwarding, Hop};
use crate::template::{route_params, Slot, Template, Vars};

/// The response body of an [`HttpUpstream`]: the upstream's body as it streams in (cut off at
/// the [total timeout](HttpUpstreamBuilder::total_timeout)), or a problem+json document when
/// the call failed.
pub type UpstreamResponseBody = ResponseBody<Download<Incoming>>;

/// The future an [`HttpUpstream`] returns.
pub type UpstreamFuture =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamResponseBody>, Infallible>> + Send>>;

/// A tower service that forwards each request to a base URL and streams the answer back.
///
/// - The path is kept, stripped of a prefix, given a new prefix, or rebuilt from a template
///   with the route's path parameters; the query goes along.
/// - Hop-by-hop headers (RFC 9110 §7.6.1, and those `Connection` names) are removed both
///   ways; `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` are set, extending a chain
///   only when the peer is a [trusted proxy](HttpUpstreamBuilder::trusted_proxies).
/// - Bodies stream both ways, so an upload or download of any size passes through in
///   bounded memory.
/// - Unreachable upstream → 502, no answer in time → 504, both problem+json; the upstream's
///   own 4xx and 5xx pass through unchanged.
///
/// # Example
///
/// ```no_run
/// use axum::Router;
/// use tollgate_aggregate::HttpUpstream;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // GET /api/users/7 → GET http://127.0.0.1:8081/v1/users/7
/// let users = HttpUpstream::builder("http://127.0.0.1:8081")
///     .replace_prefix("/api", "/v1")
///     .claim_header("sub", "x-user-id")
///     .build()?;
/// let app: Router = Router::new().route_service("/api/users/{*rest}", users);
/// # Ok(()) }
/// ```
///
/// Rewrite rules apply to the path this service sees: under axum's `nest_service` that path
/// has the nest prefix removed already (`nest_service("/api", upstream)` sends `/api/users/7`
/// upstream as `/users/7` with no rule at all).
#[derive(Clone)]
pub struct HttpUpstream {
    inner: Arc<Inner>,
}

struct Inner {
    client: HttpClient,
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    base_path: String,
    rewrite: Rewrite,
    forward: Option<Vec<HeaderName>>,
    claims: ClaimHeaders,
    trusted: TrustedProxies,
    timeout: Duration,
    total_timeout: Option<Duration>,
    preserve_host: bool,
    proto: &'static str,
}

enum Rewrite {
    Keep,
    Strip(String),
    Replace {
        from: String,
        to: String,
    },
    Template {
        route: matchit::Router<()>,
        route_text: String,
        target: Template,
    },
}

impl fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("scheme", &self.inner.scheme)
            .field("authority", &self.inner.authority)
            .field("base_path", &self.inner.base_path)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpUpstream {
    /// Starts an upstream at `base_url` (`http://host:port` with an optional base path, such
    /// as `http://10.0.0.5:8080/internal`). The URL is checked by
    /// [`build`](HttpUpstreamBuilder::build).
    pub fn builder(base_url: impl Into<String>) -> HttpUpstreamBuilder {
        HttpUpstreamBuilder {
            base_url: base_url.into(),
            client: None,
            rewrite: RewriteSpec::Keep,
            forward: None,
            claims: Vec::new(),
            trusted: TrustedProxies::none(),
            timeout: Duration::from_secs(30),
            total_timeout: None,
            preserve_host: false,
            proto: "http".to_owned(),
        }
    }
}

enum RewriteSpec {
    Keep,
    Strip(String),
    Replace(String, String),
    Template(String, String),
}

/// Builds an [`HttpUpstream`].
#[must_use]
pub struct HttpUpstreamBuilder {
    base_url: String,
    client: Option<HttpClient>,
    rewrite: RewriteSpec,
    forward: Option<Vec<String>>,
    claims: Vec<(String, String)>,
    trusted: TrustedProxies,
    timeout: Duration,
    total_timeout: Option<Duration>,
    preserve_host: bool,
    proto: String,
}

impl fmt::Debug for HttpUpstreamBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpUpstreamBuilder")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl HttpUpstreamBuilder {
    /// Sends through `client`, sharing its connection pool (by default each upstream has its
    /// own [`HttpClient`] with the default settings).
    pub fn client(mut self, client: HttpClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Removes `prefix` from the path, matched by whole segments: with `/api`, `/api/users`
    /// goes upstream as `/users` and `/apiary` as it is.
    pub fn strip_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.rewrite = RewriteSpec::Strip(prefix.into());
        self
    }

    /// Replaces the path prefix `from` (by whole segments) with `to`.
    pub fn replace_prefix(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rewrite = RewriteSpec::Replace(from.into(), to.into());
        self
    }

    /// Matches the path against `route` (`/pets/{id}`) and sends `target` (`/v2/animals/{id}`)
    /// upstream, filled with the route's parameters. A path the route does not match is
    /// answered 404 here.
    pub fn route(mut self, route: impl Into<String>, target: impl Into<String>) -> Self {
        self.rewrite = RewriteSpec::Template(route.into(), target.into());
        self
    }

    /// Forwards only these request headers (plus `Content-Type` and `Content-Length`, which
    /// the body needs, and [`TRACE_HEADERS`](crate::TRACE_HEADERS)). By default every
    /// end-to-end header is forwarded.
    pub fn forward_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.forward = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Sends the verified principal's `claim` upstream as `header` (`("sub", "x-user-id")`).
    /// A client's own `header` is always removed first, so the upstream can trust it.
    pub fn claim_header(mut self, claim: impl Into<String>, header: impl Into<String>) -> Self {
        self.claims.push((claim.into(), header.into()));
        self
    }

    /// Believes and extends the forwarding headers of requests from these proxies; from
    /// anyone else they are replaced (the default trusts nobody).
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted = proxies;
        self
    }

    /// How long the exchange may go without progress (default 30 s), after which the client
    /// gets 504: while the request body uploads, each chunk passed upstream restarts it, and
    /// once the upload is done it bounds the wait for the response head. A slow but steady
    /// upload never runs out; a stalled one, or an upstream that stops reading, does.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A bound on the whole exchange, upload and download included (default none). Before the
    /// response head it means 504; after it the response body is cut off, which the client
    /// sees as an incomplete response.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Some(timeout);
        self
    }

    /// Sends the client's `Host` upstream instead of the upstream's own. Over an
    /// [h2c](crate::HttpClientBuilder::http2_prior_knowledge) client the request's
    /// `:authority` is the upstream's, so no `Host` is sent and this has no effect.
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }

    /// The scheme clients reach this gateway with, for `X-Forwarded-Proto` and `Forwarded:
    /// proto=` (default `http`; say `https` when TLS terminates in this process). It is never
    /// read from the request, which the client writes.
    pub fn forwarded_proto(mut self, proto: impl Into<String>) -> Self {
        self.proto = proto.into();
        self
    }

    /// Checks the settings and builds the upstream.
    ///
    /// # Errors
    ///
    /// An [`UpstreamError`] naming the setting that is wrong.
    pub fn build(self) -> Result<HttpUpstream, UpstreamError> {
        let (scheme, authority, base_path) = parse_base(&self.base_url)?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
            UpstreamError::InvalidBaseUrl {
                url: self.base_url.clone(),
                reason: "the host is not a valid header value",
            }
        })?;
        let rewrite = match self.rewrite {
            RewriteSpec::Keep => Rewrite::Keep,
            RewriteSpec::Strip(prefix) => Rewrite::Strip(prefix_of(prefix)?),
            RewriteSpec::Replace(from, to) => Rewrite::Replace {
                from: prefix_of(from)?,
                to: prefix_of(to)?,
            },
            RewriteSpec::Template(route, target) => template_rewrite(route, target)?,
        };
        let forward = self
            .forward
            .map(|names| {
                let mut names: Vec<HeaderName> = names
                    .iter()
                    .map(|name| header_name(name))
                    .collect::<Result<_, _>>()?;
                // The trace context and the request id travel whatever the list.
                for name in crate::TRACE_HEADERS {
                    let name = HeaderName::from_static(name);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                Ok::<_, UpstreamError>(names)
            })
            .transpose()?;
        let mut claims = ClaimHeaders::default();
        for (claim, header) in self.claims {
            claims.push(claim, header_name(&header)?);
        }
        let proto = match self.proto.as_str() {
            "http" => "http",
            "https" => "https",
            _ => return Err(UpstreamError::InvalidProto(self.proto)),
        };
        Ok(HttpUpstream {
            inner: Arc::new(Inner {
                client: self.client.unwrap_or_default(),
                scheme,
                authority,
                host,
                base_path,
                rewrite,
                forward,
                claims,
                trusted: self.trusted,
                timeout: self.timeout,
                total_timeout: self.total_timeout,
                preserve_host: self.preserve_host,
                proto,
            }),
        })
    }
}

/// A setting of an [`HttpUpstream`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The base URL is not `http://host[:port][/path]`.
    #[error("invalid upstream URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path prefix does not start with `/` or has a query.
    #[error("invalid path prefix {0:?}: expected a path such as \"/api\"")]
    InvalidPrefix(String),
    /// A route or target template cannot be parsed, or the target uses a parameter the route
    /// does not have.
    #[error("invalid path template: {0}")]
    InvalidTemplate(String),
    /// A header name is not valid.
    #[error("invalid header name {0:?}")]
    InvalidHeader(String),
    /// The forwarded proto is neither `http` nor `https`.
    #[error("invalid forwarded proto {0:?}: expected \"http\" or \"https\"")]
    InvalidProto(String),
}

fn parse_base(url: &str) -> Result<(Scheme, Authority, String), UpstreamError> {
    let invalid = |reason| UpstreamError::InvalidBaseUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| invalid("expected http://host[:port][/path]"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| invalid("expected http://host[:port][/path]"))?;
    if scheme != Scheme::HTTP {
        return Err(invalid(
            "only http:// is supported: TLS upstreams are not built in yet",
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid("expected a host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("credentials in the URL are not supported"));
    }
    if uri.query().is_some() {
        return Err(invalid("a base URL cannot have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok((scheme, authority, base_path))
}

fn prefix_of(prefix: String) -> Result<String, UpstreamError> {
    if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
        return Err(UpstreamError::InvalidPrefix(prefix));
    }
    Ok(prefix.trim_end_matches('/').to_owned())
}

pub(crate) fn header_name(name: &str) -> Result<HeaderName, UpstreamError> {
    HeaderName::try_from(name).map_err(|_| UpstreamError::InvalidHeader(name.to_owned()))
}

fn template_rewrite(route: String, target: String) -> Result<Rewrite, UpstreamError> {
    let mut router = matchit::Router::new();
    router
        .insert(route.clone(), ())
        .map_err(|error| UpstreamError::InvalidTemplate(format!("{route:?}: {error}")))?;
    let target_template =
        Template::parse(&target).map_err(|error| UpstreamError::InvalidTemplate(error.0))?;
    for slot in target_template.slots() {
        let known = matches!(slot, Slot::Param(name) if route.contains(&format!("{{{name}}}")) || route.contains(&format!("{{*{name}}}")));
        if !known {
            return Err(UpstreamError::InvalidTemplate(format!(
                "{target:?} uses {} but the route {route:?} has no such parameter",
                slot.spelled()
            )));
        }
    }
    Ok(Rewrite::Template {
        route: router,
        route_text: route,
        target: target_template,
    })
}

/// `path` without `prefix`, when the prefix matches by whole segments.
fn strip<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

impl Inner {
    /// The upstream URI for `uri`, or the refusal when a route template does not match it or
    /// its parameters cannot be used.
    fn target(&self, uri: &Uri) -> Result<Uri, Box<Rejection>> {
        let path = uri.path();
        let mut target = String::with_capacity(self.base_path.len() + path.len() + 32);
        target.push_str(&self.base_path);
        match &self.rewrite {
            Rewrite::Keep => target.push_str(path),
            Rewrite::Strip(prefix) => target.push_str(strip(path, prefix).unwrap_or(path)),
            Rewrite::Replace { from, to } => match strip(path, from) {
                Some(rest) => {
                    target.push_str(to);
                    target.push_str(rest);
                }
                None => target.push_str(path),
            },
            Rewrite::Template {
                route,
                route_text,
                target: template,
            } => {
                let matched = route
                    .at(path)
                    .map_err(|_| Box::new(Rejection::not_found()))?;
                let params = route_params(route_text, &matched.params).map_err(|name| {
                    Box::new(Rejection::bad_request(format!(
                        "the path parameter {name:?} is not UTF-8"
                    )))
                })?;
                let vars = Vars {
                    params: &params,
                    query: &[],
                    responses: &[],
                };
                let filled = template
                    .fill_url(&vars)
                    .map_err(|error| Box::new(Rejection::bad_request(error.to_string())))?;
                target.push_str(&filled);
            }
        }
        if !target.starts_with('/') {
            target.insert(0, '/');
        }
        if let Some(query) = uri.query() {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(query);
        }
        PathAndQuery::try_from(target)
            .ok()
            .and_then(|path_and_query| {
                Uri::builder()
                    .scheme(self.scheme.clone())
                    .authority(self.authority.clone())
                    .path_and_query(path_and_query)
                    .build()
                    .ok()
            })
            .ok_or_else(|| Box::new(Rejection::bad_request("the path cannot be forwarded")))
    }

    fn headers(&self, incoming: &mut HeaderMap, hop: &Hop<'_>, principal: Option<&Principal>) {
        // `TE: trailers` is the one TE value that crosses a proxy: gRPC needs it end to end.
        let trailers = incoming.get_all(TE).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
        remove_hop_by_hop(incoming);
        if trailers {
            incoming.insert(TE, HeaderValue::from_static("trailers"));
        }
        // The server in front already answered `100-continue` when the body was first read.
        incoming.remove(EXPECT);
        if let Some(allowed) = &self.forward {
            let mut kept = HeaderMap::with_capacity(allowed.len() + 4);
            let body = [&CONTENT_TYPE, &CONTENT_LENGTH, &CONTENT_ENCODING, &TE];
            for name in allowed.iter().chain(body) {
                for value in incoming.get_all(name) {
                    kept.append(name.clone(), value.clone());
                }
            }
            *incoming = kept;
        }
        self.claims.apply(incoming, principal);
        set_forwarding(incoming, hop, &self.trusted);
        if self.client.is_http2() {
            // The URI's authority travels as `:authority`; a `Host` beside it must not differ.
            incoming.remove(HOST);
        } else {
            match (&hop.host, self.preserve_host) {
                (Some(host), true) => incoming.insert(HOST, host.clone()),
                _ => incoming.insert(HOST, self.host.clone()),
            };
        }
    }
}

impl<B> Service<Request<B>> for HttpUpstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamResponseBody>;
    type Error = Infallible;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let (mut parts, body) = request.into_parts();
        if has_dot_segment(parts.uri.path()) {
            // `/api/../../secret` would climb out of the base path once the upstream resolves
            // it: refused rather than passed on.
            return Box::pin(std::future::ready(Ok(Rejection::bad_request(
                "the path must not hold `.` or `..` segments",
            )
            .into_response())));
        }
        let uri = match inner.target(&parts.uri) {
            Ok(uri) => uri,
            Err(rejection) => return Box::pin(std::future::ready(Ok(rejection.into_response()))),
        };
        let peer = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
        .peer_addr()
        .map(|addr| addr.ip());
        let hop = Hop {
            peer,
            proto: inner.proto,
            host: requested_host(&parts.headers, &parts.uri),
        };
        let principal = parts.extensions.get::<Principal>().cloned();
        let record = AccessRecord::of(&parts.extensions).cloned();
        inner.headers(&mut parts.headers, &hop, principal.as_ref());

        let (upload, mut progress) = Upload::new(body);
        let mut outgoing = Request::new(upstream_body(upload));
        *outgoing.method_mut() = parts.method;
        *outgoing.uri_mut() = uri;
        *outgoing.version_mut() = Version::HTTP_11;
        *outgoing.headers_mut() = parts.headers;

        Box::pin(async move {
            let total = inner.total_timeout.map(deadline_after);
            let exchange = async {
                let send = inner.client.send(outgoing);
                tokio::pin!(send);
                // The timer restarts on each chunk of the upload, then runs once more for the
                // response head. The upstream may answer first, as it may to refuse an upload.
                let stalled = async {
                    loop {
                        match tokio::time::timeout(inner.timeout, progress.changed()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => {
                                tokio::time::sleep(inner.timeout).await;
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                tokio::select! {
                    result = &mut send => Some(result),
                    () = stalled => None,
                }
            };
            let started = std::time::Instant::now();
            let outcome = match total {
                Some(at) => tokio::time::timeout_at(at, exchange).await.unwrap_or(None),
                None => exchange.await,
            };
            if let Some(record) = record {
                // Until the response's head (or the gateway gave up on it).
                record.note(|fields| fields.add_upstream(started.elapsed()));
            }
            let response = match outcome {
                Some(Ok(response)) => response,
                Some(Err(error)) => return Ok(failed(&inner, &error).into_response()),
                None => {
                    tracing::warn!(
                        upstream = %inner.authority,
                        timeout_ms = inner.timeout.as_millis() as u64,
                        "tollgate: upstream did not answer in time"
                    );
                    return Ok(Rejection::gateway_timeout()
                        .with_detail("the upstream did not answer in time")
                        .into_response());
                }
            };
            let (mut parts, body) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                ResponseBody::inner(Download::new(body, total)),
            ))
        })
    }
}

/// `timeout` from now, saturating far in the future rather than overflowing.
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

/// The refusal for a call that got no response, logged with its cause.
pub(crate) fn send_failure(authority: &dyn fmt::Display, error: &SendError) -> Rejection {
    tracing::warn!(upstream = %authority, error = %error.source, cause = ?std::error::Error::source(&error.source), "tollgate: upstream call failed");
    match error.kind {
        SendErrorKind::Unreachable => {
            Rejection::bad_gateway().with_detail("the upstream could not be reached")
        }
        SendErrorKind::ConnectTimedOut => Rejection::gateway_timeout()
            .with_detail("the upstream did not accept a connection in time"),
        SendErrorKind::Broken => {
            Rejection::bad_gateway().with_detail("the connection to the upstream failed")
        }
    }
}

fn failed(inner: &Inner, error: &SendError) -> Rejection {
    send_failure(&inner.authority, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(builder: HttpUpstreamBuilder, uri: &str) -> Option<String> {
        let upstream = builder.build().unwrap();
        upstream
            .inner
            .target(&uri.parse().unwrap())
            .ok()
            .map(|uri| uri.to_string())
    }

    #[test]
    fn paths_are_kept_stripped_replaced_or_templated() {
        let base = || HttpUpstream::builder("http://10.0.0.5:8080/internal/");
        assert_eq!(
            target(base(), "/a/b?x=1").as_deref(),
            Some("http://10.0.0.5:8080/internal/a/b?x=1")
        );
        assert_eq!(
            target(base().strip_prefix("/api"), "/api/users/7").as_deref(),
            Some("http://10.0.0.5:8080/internal/users/7")
        );
        assert_eq!(
            target(base().strip_prefix("/api"), "/apiary").as_deref(),
            Some("http://10.0.0.5:8080/internal/apiary")
        );
        assert_eq!(
            target(base().replace_prefix("/api", "/v1"), "/api?q").as_deref(),
            Some("http://10.0.0.5:8080/internal/v1?q")
        );
        assert_eq!(
            target(
                base().route("/pets/{id}", "/animals/{id}/card"),
                "/pets/a%20b?x"
            )
            .as_deref(),
            Some("http://10.0.0.5:8080/internal/animals/a%20b/card?x")
        );
        assert_eq!(
            target(base().route("/pets/{id}", "/animals/{id}"), "/cats/1"),
            None
        );
    }

    #[test]
    fn catch_alls_keep_slashes_and_a_target_query_is_extended() {
        let base = || HttpUpstream::builder("http://h");
        assert_eq!(
            target(
                base().route("/files/{*path}", "/static/{path}"),
                "/files/css/site.css"
            )
            .as_deref(),
            Some("http://h/static/css/site.css")
        );
        assert_eq!(
            target(
                base().route("/pets/{id}", "/animals?id={id}"),
                "/pets/7?fields=name"
            )
            .as_deref(),
            Some("http://h/animals?id=7&fields=name")
        );
        assert_eq!(
            target(base().route("/files/{*path}", "/s/{path}"), "/files/%FF"),
            None
        );
    }

    #[test]
    fn a_stripped_root_becomes_slash() {
        let upstream = HttpUpstream::builder("http://h").strip_prefix("/api");
        assert_eq!(target(upstream, "/api").as_deref(), Some("http://h/"));
    }

    #[test]
    fn bad_settings_are_refused_with_their_reason() {
        let cases = [
            HttpUpstream::builder("https://h"),
            HttpUpstream::builder("h:80"),
            HttpUpstream::builder("http://u:p@h"),
            HttpUpstream::builder("http://h?x=1"),
            HttpUpstream::builder("http://h").strip_prefix("api"),
            HttpUpstream::builder("http://h").route("/pets/{id}", "/x/{name}"),
            HttpUpstream::builder("http://h").route("/pets/{id", "/x"),
            HttpUpstream::builder("http://h").forward_headers(["bad header"]),
            HttpUpstream::builder("http://h").claim_header("sub", "x y"),
            HttpUpstream::builder("http://h").forwarded_proto("ftp"),
        ];
        for builder in cases {
            let shown = format!("{builder:?}");
            assert!(builder.build().is_err(), "{shown}");
        }
    }
}
