//! IP allow and deny lists.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tollgate_core::key::ClientIp;
use tollgate_core::{
    BodyMode, ForwardedHeader, InnerBody, Rejection, RequestHead, TrustedProxies, WrapBody,
};
use tower::{Layer, Service};

/// A list that could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpFilterError {
    /// A value that is neither a CIDR (`10.0.0.0/8`) nor an address (`192.0.2.7`).
    #[error("{list}: {value:?} is neither a CIDR like \"10.0.0.0/8\" nor an IP address")]
    InvalidCidr {
        /// `allow` or `deny`.
        list: &'static str,
        /// The value.
        value: String,
    },
}

/// Why a client was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Denied,
    NotAllowed,
    Unknown,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Unknown => "unknown_address",
        }
    }
}

struct Shared {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    client_ip: ClientIp,
    refused: Rejection,
    unknown: Rejection,
}

impl Shared {
    fn decide(&self, request: &RequestHead<'_>) -> Result<(), Refusal> {
        let Some(ip) = self.client_ip.client_ip(request) else {
            return Err(Refusal::Unknown);
        };
        match check(&self.allow, &self.deny, ip) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }
}

/// `None` when `ip` may pass: not denied, and allowed when there is an allow list.
fn check(allow: &[IpNet], deny: &[IpNet], ip: IpAddr) -> Option<Refusal> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if deny.iter().any(|net| net.contains(&ip)) {
        return Some(Refusal::Denied);
    }
    if !allow.is_empty() && !allow.iter().any(|net| net.contains(&ip)) {
        return Some(Refusal::NotAllowed);
    }
    None
}

/// Refuses clients by address, as Amazon API Gateway's resource policies (`aws:SourceIp`) and
/// Kong's ip-restriction do: a client on the deny list, or off a non-empty allow list, gets a
/// 403 problem+json before anything else runs. The address is the client's as the trusted
/// proxies report it (`X-Forwarded-For` or `Forwarded` walked from the right), never a header
/// an untrusted peer sent.
///
/// A request whose address cannot be known (the server passes no peer address) is refused
/// too, with a 500 naming the server's misconfiguration: an access list must not fail open.
///
/// ```
/// use tollgate_access::IpFilterLayer;
/// use tollgate_core::TrustedProxies;
///
/// let office_only = IpFilterLayer::builder()
///     .allow("203.0.113.0/24")
///     .allow("2001:db8::/32")
///     .deny("203.0.113.66")
///     .trusted_proxies(TrustedProxies::new(["10.0.0.0/8"]).unwrap())
///     .build()
///     .unwrap();
/// let app = axum::Router::<()>::new().layer(office_only);
/// # let _ = app;
/// ```
#[must_use]
pub struct IpFilterLayer<M = WrapBody> {
    shared: Arc<Shared>,
    mode: PhantomData<fn() -> M>,
}

impl<M> Clone for IpFilterLayer<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for IpFilterLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpFilterLayer")
            .field("allow", &self.shared.allow)
            .field("deny", &self.shared.deny)
            .finish_non_exhaustive()
    }
}

impl IpFilterLayer {
    /// No list yet: everyone passes until `allow` or `deny` is given.
    pub fn builder() -> IpFilterBuilder {
        IpFilterBuilder::default()
    }
}

impl<M> IpFilterLayer<M> {
    /// Keeps the inner service's body type, building refusals in it (axum's `Body`,
    /// `Full<Bytes>`): responses pass through untouched.
    pub fn keep_inner_body(self) -> IpFilterLayer<InnerBody> {
        IpFilterLayer {
            shared: self.shared,
            mode: PhantomData,
        }
    }

    /// Whether a client at `ip` may pass.
    pub fn allows(&self, ip: IpAddr) -> bool {
        check(&self.shared.allow, &self.shared.deny, ip).is_none()
    }
}

impl<S, M> Layer<S> for IpFilterLayer<M> {
    type Service = IpFilter<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        IpFilter {
            inner,
            shared: self.shared.clone(),
            mode: PhantomData,
        }
    }
}

/// Builds an [`IpFilterLayer`]; CIDRs are read when it is built.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct IpFilterBuilder {
    allow: Vec<String>,
    deny: Vec<String>,
    trusted: TrustedProxies,
    header: ForwardedHeader,
}

impl IpFilterBuilder {
    /// Lets clients in `cidr` (`10.0.0.0/8`, or an address) through; once any is given, only
    /// clients in one may pass.
    pub fn allow(mut self, cidr: impl Into<String>) -> Self {
        self.allow.push(cidr.into());
        self
    }

    /// Refuses clients in `cidr`, even those an allowed range holds.
    pub fn deny(mut self, cidr: impl Into<String>) -> Self {
        self.deny.push(cidr.into());
        self
    }

    /// The proxies whose forwarding headers name the client (default: none, so the TCP peer
    /// is the client).
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// The forwarding header those proxies write (default `X-Forwarded-For`).
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// A value that is neither a CIDR nor an address, named with its list.
    pub fn build(self) -> Result<IpFilterLayer, IpFilterError> {
        let parse = |list: &'static str, values: &[String]| {
            values
                .iter()
                .map(|value| {
                    parse_net(value).ok_or_else(|| IpFilterError::InvalidCidr {
                        list,
                        value: value.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let allow = parse("allow", &self.allow)?;
        let deny = parse("deny", &self.deny)?;
        Ok(IpFilterLayer {
            shared: Arc::new(Shared {
                allow,
                deny,
                client_ip: ClientIp::new(self.trusted).header(self.header),
                refused: Rejection::forbidden()
                    .with_detail("the client's address may not call this API")
                    .prerendered(),
                // Not `Rejection::internal`, which logs as it is made: the missing peer is
                // logged when a request comes without one.
                unknown: Rejection::new(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    tollgate_core::ProblemType::Internal,
                )
                .prerendered(),
            }),
            mode: PhantomData,
        })
    }
}

/// Why a request's address could not be known: said in the 500's log line.
#[derive(Debug, thiserror::Error)]
#[error(
    "no peer address on the request: serve axum with into_make_service_with_connect_info::<SocketAddr>() \
     or insert tollgate_core::PeerAddr in your hyper service"
)]
struct MissingPeer;

/// A CIDR, or an address as its own /32 or /128; IPv4-mapped IPv6 ranges as IPv4.
fn parse_net(value: &str) -> Option<IpNet> {
    let value = value.trim();
    let net = value
        .parse::<IpNet>()
        .ok()
        .or_else(|| value.parse::<IpAddr>().ok().map(IpNet::from))?;
    Some(net.trunc())
}

/// The service of an [`IpFilterLayer`].
pub struct IpFilter<S, M = WrapBody> {
    inner: S,
    shared: Arc<Shared>,
    mode: PhantomData<fn() -> M>,
}

impl<S: Clone, M> Clone for IpFilter<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for IpFilter<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpFilter")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody, M> Service<Request<ReqBody>> for IpFilter<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: BodyMode<ResBody>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, M, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.shared.decide(&RequestHead::of(&request)) {
            Ok(()) => ResponseFuture::inner(self.inner.call(request)),
            Err(refusal) => {
                metrics::counter!("tollgate_access_refusals_total", "reason" => refusal.label())
                    .increment(1);
                let rejection = if refusal == Refusal::Unknown {
                    tracing::error!("tollgate access: {MissingPeer}");
                    self.shared.unknown.clone()
                } else {
                    tracing::debug!(reason = refusal.label(), "tollgate access: client refused");
                    self.shared.refused.clone()
                };
                ResponseFuture::refused(M::refuse(rejection))
            }
        }
    }
}

pin_project! {
    /// The future of an [`IpFilter`]: the inner service's, or a refusal.
    pub struct ResponseFuture<F, M, B>
    where
        M: BodyMode<B>,
    {
        #[pin]
        kind: Kind<F, M::Body>,
        mode: PhantomData<fn() -> (M, B)>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, R> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<R>> },
    }
}

impl<F, M: BodyMode<B>, B> ResponseFuture<F, M, B> {
    fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
            mode: PhantomData,
        }
    }

    fn refused(response: Response<M::Body>) -> Self {
        Self {
            kind: Kind::Refused {
                response: Some(response),
            },
            mode: PhantomData,
        }
    }
}

impl<F, M, B, E> Future for ResponseFuture<F, M, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    M: BodyMode<B>,
{
    type Output = Result<Response<M::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx).map_ok(M::pass),
            KindProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

/// An [`IpFilterLayer`] as configuration: `{ allow: [...], deny: [...], trusted_proxies: [...] }`.
///
/// ```
/// let config: tollgate_access::IpFilterConfig = serde_json::from_value(serde_json::json!({
///     "allow": ["203.0.113.0/24"],
///     "deny": ["203.0.113.66"],
///     "trusted_proxies": ["10.0.0.0/8"]
/// })).unwrap();
/// let layer = config.build().unwrap();
/// assert!(layer.allows("203.0.113.7".parse().unwrap()));
/// assert!(!layer.allows("203.0.113.66".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// Ranges let through; when not empty, only they are.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Ranges refused, even inside an allowed one.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Proxies whose forwarding headers name the client (default: none).
    #[serde(default)]
    pub trusted_proxies: TrustedProxies,
    /// The forwarding header those proxies write (default `x-forwarded-for`).
    #[serde(default)]
    pub forwarded_header: ForwardedHeader,
}

impl IpFilterConfig {
    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// A value that is neither a CIDR nor an address.
    pub fn build(&self) -> Result<IpFilterLayer, IpFilterError> {
        let mut builder = IpFilterLayer::builder()
            .trusted_proxies(self.trusted_proxies.clone())
            .forwarded_header(self.forwarded_header);
        for cidr in &self.allow {
            builder = builder.allow(cidr.clone());
        }
        for cidr in &self.deny {
            builder = builder.deny(cidr.clone());
        }
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(values: &[&str]) -> Vec<IpNet> {
        values.iter().map(|v| parse_net(v).unwrap()).collect()
    }

    #[test]
    fn deny_wins_and_an_allow_list_admits_only_its_ranges() {
        let allow = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let deny = nets(&["10.9.9.9"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(check(&allow, &deny, ip("10.1.2.3")), None);
        assert_eq!(check(&allow, &deny, ip("10.9.9.9")), Some(Refusal::Denied));
        assert_eq!(
            check(&allow, &deny, ip("192.0.2.1")),
            Some(Refusal::NotAllowed)
        );
        assert_eq!(check(&allow, &deny, ip("2001:db8::1")), None);
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert_eq!(
            check(&allow, &deny, ip("::ffff:10.9.9.9")),
            Some(Refusal::Denied)
        );
        assert_eq!(check(&allow, &deny, ip("::ffff:10.1.2.3")), None);
        // Only a deny list: everyone else passes.
        assert_eq!(check(&[], &deny, ip("192.0.2.1")), None);
    }

    #[test]
    fn values_that_are_not_ranges_are_refused_by_list() {
        let error = IpFilterLayer::builder()
            .allow("10.0.0.0/8")
            .deny("ten.0.0.1")
            .build()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "deny: \"ten.0.0.1\" is neither a CIDR like \"10.0.0.0/8\" nor an IP address"
        );
        // Host bits are dropped, as a range means.
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }
}
