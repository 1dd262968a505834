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
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use tollgate_core::{
    has_dot_segment, remove_hop_by_hop, Principal, Rejection, RequestHead, ResponseBody,
    TrustedProxies,
};
use tower::Service;

use crate::claims::ClaimHeaders;
use crate::client::{upstream_body, BoxError, HttpClient, SendError, SendErrorKind};
use crate::forwarded::{requested_host, set_forwarding, Hop};
use crate::template::{Slot, Template};

/// The response body of an [`HttpUpstream`]: the upstream's body as it streams in, or a
/// problem+json document when the call failed.
pub type UpstreamResponseBody = ResponseBody<Incoming>;

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
/// let app: Router = Router::new().nest_service("/api/users", users);
/// # Ok(()) }
/// ```
///
/// Under axum's `nest_service` the path this service sees has the nest prefix removed; rewrite
/// rules apply to that path.
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
    preserve_host: bool,
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
            preserve_host: false,
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
    preserve_host: bool,
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
    /// the body needs). By default every end-to-end header is forwarded.
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

    /// How long the upstream may take to send its response head (default 30 s), after which
    /// the client gets 504. The body then streams for as long as it takes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the client's `Host` upstream instead of the upstream's own.
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
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
            .map(|names| names.iter().map(|name| header_name(name)).collect())
            .transpose()?;
        let mut claims = ClaimHeaders::default();
        for (claim, header) in self.claims {
            claims.push(claim, header_name(&header)?);
        }
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
                preserve_host: self.preserve_host,
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
        target: target_template,
    })
}

/// `path` without `prefix`, when the prefix matches by whole segments.
fn strip<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

impl Inner {
    /// The upstream URI for `uri`, or `None` when a route template does not match.
    fn target(&self, uri: &Uri) -> Option<Uri> {
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
                target: template,
            } => {
                let matched = route.at(path).ok()?;
                let params: Vec<(String, String)> = matched
                    .params
                    .iter()
                    .map(|(name, value)| (name.to_owned(), percent_decode(value)))
                    .collect();
                let vars = crate::template::Vars {
                    params: &params,
                    query: &[],
                    responses: &[],
                };
                target.push_str(&template.fill_url(&vars).ok()?);
            }
        }
        if !target.starts_with('/') {
            target.insert(0, '/');
        }
        if let Some(query) = uri.query() {
            target.push('?');
            target.push_str(query);
        }
        let path_and_query = PathAndQuery::try_from(target).ok()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }

    fn headers(&self, incoming: &mut HeaderMap, hop: &Hop<'_>, principal: Option<&Principal>) {
        remove_hop_by_hop(incoming);
        // The server in front already answered `100-continue` when the body was first read.
        incoming.remove(EXPECT);
        if let Some(allowed) = &self.forward {
            let mut kept = HeaderMap::with_capacity(allowed.len() + 2);
            for name in allowed.iter().chain([&CONTENT_TYPE, &CONTENT_LENGTH]) {
                for value in incoming.get_all(name) {
                    kept.append(name.clone(), value.clone());
                }
            }
            *incoming = kept;
        }
        self.claims.apply(incoming, principal);
        set_forwarding(incoming, hop, &self.trusted);
        if !self.preserve_host || !incoming.contains_key(HOST) {
            incoming.insert(HOST, self.host.clone());
        }
    }
}

/// Path parameters arrive percent-encoded; the template encodes them again when it fills.
pub(crate) fn percent_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
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
        let Some(uri) = inner.target(&parts.uri) else {
            return Box::pin(std::future::ready(Ok(
                Rejection::not_found().into_response()
            )));
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
            proto: parts.uri.scheme_str().unwrap_or("http"),
            host: requested_host(&parts.headers, &parts.uri),
        };
        let principal = parts.extensions.get::<Principal>().cloned();
        inner.headers(&mut parts.headers, &hop, principal.as_ref());

        let mut outgoing = Request::new(upstream_body(body));
        *outgoing.method_mut() = parts.method;
        *outgoing.uri_mut() = uri;
        *outgoing.version_mut() = Version::HTTP_11;
        *outgoing.headers_mut() = parts.headers;

        Box::pin(async move {
            let response =
                match tokio::time::timeout(inner.timeout, inner.client.send(outgoing)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => return Ok(failed(&inner, &error).into_response()),
                    Err(_) => {
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
            Ok(Response::from_parts(parts, ResponseBody::inner(body)))
        })
    }
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
        ];
        for builder in cases {
            let shown = format!("{builder:?}");
            assert!(builder.build().is_err(), "{shown}");
        }
    }
}
