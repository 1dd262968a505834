use std::fmt;
use std::sync::Arc;

use http::header::HeaderName;
use tollgate_core::{InnerBody, RouteTable, RouteTableError, WrapBody};
use tower::Layer;

use crate::service::Shared;
use crate::{Auth, Authorizer, RoutePolicy};

/// Why an [`AuthLayer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A route template was refused.
    #[error(transparent)]
    Route(#[from] RouteTableError),
    /// A claim-to-header mapping names a header that is not a valid header name.
    #[error("claim {claim:?} maps to {header:?}, which is not a valid header name")]
    InvalidHeaderName {
        /// The claim.
        claim: String,
        /// The header name as given.
        header: String,
    },
}

/// Puts an [`Authorizer`] in front of a service: only verified callers get through, with a
/// [`Principal`](tollgate_core::Principal) in the request's extensions.
///
/// Every route needs credentials unless a [`RoutePolicy`] says otherwise; policies also name
/// the scopes a route requires. Refusals are problem+json: 401 with an RFC 6750
/// `WWW-Authenticate: Bearer` challenge for missing or bad credentials, 403 with
/// `error="insufficient_scope"` for missing scopes.
pub struct AuthLayer<A, M = WrapBody> {
    shared: Arc<Shared<A>>,
    mode: M,
}

impl<A, M: Clone> Clone for AuthLayer<A, M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<A, M> fmt::Debug for AuthLayer<A, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("routes", &self.shared.routes.len())
            .field("default", &self.shared.default)
            .finish_non_exhaustive()
    }
}

impl<A: Authorizer> AuthLayer<A> {
    /// A layer that requires verified credentials on every route, with no scopes.
    pub fn new(authorizer: A) -> Self {
        Self {
            shared: Arc::new(Shared::new(
                authorizer,
                RouteTable::new(),
                RoutePolicy::authenticated(),
                Box::new([]),
            )),
            mode: WrapBody,
        }
    }

    /// Starts a layer with per-route policies and claim-to-header mappings.
    pub fn builder(authorizer: A) -> AuthBuilder<A> {
        AuthBuilder {
            authorizer,
            routes: RouteTable::new(),
            default: RoutePolicy::authenticated(),
            claim_headers: Vec::new(),
            error: None,
            mode: WrapBody,
        }
    }
}

impl<A, M> AuthLayer<A, M> {
    /// The authorizer the layer asks.
    pub fn authorizer(&self) -> &A {
        &self.shared.authorizer
    }

    /// This layer, its refusals built as the inner service's body type and the inner
    /// service's responses passed through untouched, as
    /// [`AuthBuilder::keep_inner_body`] makes it.
    pub fn keep_inner_body(self) -> AuthLayer<A, InnerBody> {
        AuthLayer {
            shared: self.shared,
            mode: InnerBody,
        }
    }
}

impl<S, A, M: Clone> Layer<S> for AuthLayer<A, M> {
    type Service = Auth<S, A, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

/// Builds an [`AuthLayer`].
///
/// ```
/// use tollgate_auth::{AuthLayer, RoutePolicy};
/// use tollgate_auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
///
/// # fn build() -> Result<(), Box<dyn std::error::Error>> {
/// let jwt = JwtAuthorizer::builder()
///     .provider(
///         JwtProvider::new("https://issuer.example", Keys::hmac(b"a secret of at least 32 bytes!!!"))
///             .audience("orders-api"),
///     )
///     .build()?;
/// let auth = AuthLayer::builder(jwt)
///     .route("GET /health", RoutePolicy::anonymous())
///     .route("POST /orders", RoutePolicy::authenticated().all_scopes(["orders:write"]))
///     .claim_header("sub", "x-user-id")
///     .build()?;
/// # let _ = auth;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct AuthBuilder<A, M = WrapBody> {
    authorizer: A,
    routes: RouteTable<RoutePolicy>,
    default: RoutePolicy,
    claim_headers: Vec<(String, String)>,
    error: Option<AuthError>,
    mode: M,
}

impl<A, M> fmt::Debug for AuthBuilder<A, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthBuilder")
            .field("routes", &self.routes.len())
            .field("default", &self.default)
            .field("claim_headers", &self.claim_headers)
            .finish_non_exhaustive()
    }
}

impl<A: Authorizer, M> AuthBuilder<A, M> {
    /// Sets the policy of one route (`"GET /orders/{id}"`, `"* /admin/{*rest}"`). A bad
    /// template is reported by [`build`](Self::build).
    pub fn route(mut self, route: &str, policy: RoutePolicy) -> Self {
        if let Err(error) = self.routes.insert(route, policy) {
            self.error.get_or_insert(error.into());
        }
        self
    }

    /// Sets the policies of many routes at once, replacing those set so far.
    pub fn routes(mut self, routes: RouteTable<RoutePolicy>) -> Self {
        self.routes = routes;
        self
    }

    /// The policy of requests that match no route: [`RoutePolicy::authenticated`] unless set.
    pub fn default_policy(mut self, policy: RoutePolicy) -> Self {
        self.default = policy;
        self
    }

    /// Copies a verified claim (or custom authorizer context value) into a request header for
    /// the service behind, after removing any header of that name the client sent — otherwise
    /// a client could forge `x-user-id` itself. Strings are copied as they are, other values
    /// as JSON; a value a header cannot hold is left out.
    pub fn claim_header(mut self, claim: impl Into<String>, header: impl Into<String>) -> Self {
        self.claim_headers.push((claim.into(), header.into()));
        self
    }

    /// Keeps the inner service's body type and builds refusals in it, for bodies made from
    /// bytes (axum's `Body`): responses then pass through untouched.
    pub fn keep_inner_body(self) -> AuthBuilder<A, InnerBody> {
        AuthBuilder {
            authorizer: self.authorizer,
            routes: self.routes,
            default: self.default,
            claim_headers: self.claim_headers,
            error: self.error,
            mode: InnerBody,
        }
    }

    /// Builds the layer.
    pub fn build(self) -> Result<AuthLayer<A, M>, AuthError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let claim_headers = self
            .claim_headers
            .into_iter()
            .map(
                |(claim, header)| match HeaderName::try_from(header.as_str()) {
                    Ok(name) => Ok((claim, name)),
                    Err(_) => Err(AuthError::InvalidHeaderName { claim, header }),
                },
            )
            .collect::<Result<Box<[_]>, _>>()?;
        Ok(AuthLayer {
            shared: Arc::new(Shared::new(
                self.authorizer,
                self.routes,
                self.default,
                claim_headers,
            )),
            mode: self.mode,
        })
    }
}
