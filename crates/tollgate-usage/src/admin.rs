//! An axum router for API key administration — create, list, disable, rotate, revoke, move
//! to another plan, read usage — JSON in and out, for the application to mount behind its own
//! authentication.
//!
//! | route | does | answers |
//! |---|---|---|
//! | `POST /keys` | creates a key from a [`NewKey`] | 201 `{"key": …, "secret": "tg_…"}` |
//! | `GET /keys?limit=100&after=<id>` | lists keys by id, a page at a time | 200 `{"keys": […], "next": <id or null>}` |
//! | `GET /keys/{id}` | reads a key | 200 the key |
//! | `POST /keys/{id}/disable`, `/enable` | disables or enables a key | 200 the key |
//! | `DELETE /keys/{id}` | revokes a key and forgets its usage | 204 |
//! | `POST /keys/{id}/rotate` | new secret; the old one works for `grace` (default `"24h"`) | 200 `{"key": …, "secret": "tg_…"}` |
//! | `PUT /keys/{id}/plan` | moves a key to `{"plan": "pro"}` | 200 the key |
//! | `GET /keys/{id}/usage?from=2026-11-01&to=2026-11-24` | daily usage | 200 a [`UsageReport`](crate::UsageReport) |
//!
//! A key reads as its [`ApiKey`] settings, never a hash. The plaintext key is in the answers
//! of create and rotate only, which is the one time anyone sees it; every answer carries
//! `Cache-Control: no-store`. A page of keys names the last id in `next` when more follow:
//! ask again with `after` set to it.
//!
//! Refusals are `application/problem+json`: 400 for a body or query that cannot be read, or
//! names an unknown plan, with a `detail` that names the field; 404 for an unknown key; 409
//! for a key id that is taken; 500, with the cause logged and not sent, when a store fails.
//!
//! # Example
//!
//! ```
//! use axum::body::Body;
//! use axum::extract::Request;
//! use axum::middleware::{self, Next};
//! use axum::response::Response;
//! use axum::{routing::get, Router};
//! use tollgate_core::{Principal, Rejection};
//! use tollgate_usage::{UsagePlan, UsagePlans};
//! use tower::ServiceExt;
//!
//! /// Lets through the callers that the authorizer in front gave the `keys:admin` scope.
//! async fn key_admins_only(
//!     principal: Option<Principal>,
//!     request: Request,
//!     next: Next,
//! ) -> Result<Response, Rejection> {
//!     match principal {
//!         Some(principal) if principal.has_scope("keys:admin") => Ok(next.run(request).await),
//!         _ => Err(Rejection::forbidden()),
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let plans = UsagePlans::builder().plan(UsagePlan::new("basic")).build()?;
//! let api = Router::new()
//!     .route("/widgets", get(|| async { "[]" }))
//!     .layer(plans.layer());
//! let admin = tollgate_usage::admin::router(plans.clone())
//!     .layer(middleware::from_fn(key_admins_only));
//! let app = api.nest("/admin", admin);
//!
//! let create = |principal: Option<Principal>| {
//!     let mut request = Request::post("/admin/keys")
//!         .header("content-type", "application/json")
//!         .body(Body::from(r#"{"plan": "basic", "name": "Acme"}"#))
//!         .unwrap();
//!     if let Some(principal) = principal {
//!         // What an authorizer layer does for a caller it verified.
//!         request.extensions_mut().insert(principal);
//!     }
//!     request
//! };
//! let refused = app.clone().oneshot(create(None)).await?;
//! assert_eq!(refused.status(), 403);
//!
//! let operator = Principal::builder().subject("ops").scopes(["keys:admin"]).build();
//! let created = app.clone().oneshot(create(Some(operator))).await?;
//! assert_eq!(created.status(), 201);
//! let body = axum::body::to_bytes(created.into_body(), 64 * 1024).await?;
//! let created: serde_json::Value = serde_json::from_slice(&body)?;
//! let secret = created["secret"].as_str().unwrap();
//!
//! let widgets = Request::get("/widgets").header("x-api-key", secret).body(Body::empty())?;
//! assert_eq!(app.oneshot(widgets).await?.status(), 200);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! An application whose router has state mounts the admin router with
//! [`Router::nest_service`] instead of [`Router::nest`].

use std::error::Error as _;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{
    FromRequest, FromRequestParts, OptionalFromRequest, Path, Query, Request, State,
};
use axum::http::header::CACHE_CONTROL;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tollgate_core::{HumanDuration, ProblemType, Rejection};
use tollgate_throttle::ThrottleStore;

use crate::{AdminError, ApiKey, Day, KeyStore, NewKey, QuotaStore, Secret, UsagePlans};

/// Keys in a page when the query does not say.
const DEFAULT_PAGE: usize = 100;
/// The most keys a page holds.
const MAX_PAGE: usize = 1000;
/// How long a rotated-out secret keeps working when the request does not say.
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// The admin router over `plans`: mount it with [`Router::nest`] behind the application's
/// own authentication. The routes are in the [module documentation](self).
pub fn router<K, Q, T>(plans: UsagePlans<K, Q, T>) -> Router
where
    K: KeyStore,
    Q: QuotaStore,
    T: ThrottleStore,
{
    Router::new()
        .route("/keys", get(list::<K, Q, T>).post(create::<K, Q, T>))
        .route("/keys/{id}", get(show::<K, Q, T>).delete(revoke::<K, Q, T>))
        .route("/keys/{id}/enable", post(enable::<K, Q, T>))
        .route("/keys/{id}/disable", post(disable::<K, Q, T>))
        .route("/keys/{id}/rotate", post(rotate::<K, Q, T>))
        .route("/keys/{id}/plan", put(change_plan::<K, Q, T>))
        .route("/keys/{id}/usage", get(usage::<K, Q, T>))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(map_response(no_store))
        .with_state(plans)
}

/// A key and its plaintext: the answer to create and rotate.
#[derive(Serialize)]
struct Issued<'a> {
    key: &'a ApiKey,
    secret: &'a str,
}

impl Issued<'_> {
    fn respond(status: StatusCode, key: &ApiKey, secret: &Secret) -> Response {
        let issued = Issued {
            key,
            secret: secret.expose(),
        };
        (status, Json(issued)).into_response()
    }
}

#[derive(Serialize)]
struct KeyPage<'a> {
    keys: Vec<&'a ApiKey>,
    /// The id to ask for the next page `after`, when there is one.
    next: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotation {
    grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanChange {
    plan: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    from: String,
    to: String,
}

async fn create<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    Body(new): Body<NewKey>,
) -> Result<Response, Rejection> {
    let (key, secret) = plans.create_key(new).await.map_err(refusal)?;
    Ok(Issued::respond(StatusCode::CREATED, &key, &secret))
}

async fn list<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    Params(page): Params<PageQuery>,
) -> Result<Response, Rejection> {
    let limit = match page.limit {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse()
            .ok()
            .filter(|limit| (1..=MAX_PAGE).contains(limit))
            .ok_or_else(|| {
                Rejection::bad_request(format!(
                    "limit: expected a number from 1 to {MAX_PAGE}, found {text:?}"
                ))
            })?,
    };
    // One key more than the page holds tells whether another page follows.
    let keys = plans
        .list_keys(page.after.as_deref(), limit + 1)
        .await
        .map_err(refusal)?;
    let shown = &keys[..keys.len().min(limit)];
    let next = if keys.len() > shown.len() {
        shown.last().map(|key| key.id())
    } else {
        None
    };
    let page = KeyPage {
        keys: shown.iter().map(|key| &**key).collect(),
        next,
    };
    Ok(Json(page).into_response())
}

async fn show<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    KeyId(id): KeyId,
) -> Result<Response, Rejection> {
    let key = plans.get_key(&id).await.map_err(refusal)?;
    Ok(Json(&*key).into_response())
}

async fn enable<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    KeyId(id): KeyId,
) -> Result<Response, Rejection> {
    let key = plans.set_enabled(&id, true).await.map_err(refusal)?;
    Ok(Json(&*key).into_response())
}

async fn disable<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    KeyId(id): KeyId,
) -> Result<Response, Rejection> {
    let key = plans.set_enabled(&id, false).await.map_err(refusal)?;
    Ok(Json(&*key).into_response())
}

async fn revoke<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    KeyId(id): KeyId,
) -> Result<StatusCode, Rejection> {
    plans.revoke(&id).await.map_err(refusal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    KeyId(id): KeyId,
    rotation: Option<Body<Rotation>>,
) -> Result<Response, Rejection> {
    let grace = match rotation.and_then(|Body(rotation)| rotation.grace) {
        None => DEFAULT_GRACE,
        Some(text) => {
            let grace: HumanDuration = text
                .parse()
                .map_err(|error| Rejection::bad_request(format!("grace: {error}")))?;
            grace.0
        }
    };
    let (key, secret) = plans.rotate(&id, grace).await.map_err(refusal)?;
    Ok(Issued::respond(StatusCode::OK, &key, &secret))
}

async fn change_plan<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    KeyId(id): KeyId,
    Body(change): Body<PlanChange>,
) -> Result<Response, Rejection> {
    let key = plans
        .change_plan(&id, &change.plan)
        .await
        .map_err(refusal)?;
    Ok(Json(&*key).into_response())
}

async fn usage<K: KeyStore, Q: QuotaStore, T: ThrottleStore>(
    State(plans): State<UsagePlans<K, Q, T>>,
    KeyId(id): KeyId,
    Params(range): Params<Range>,
) -> Result<Response, Rejection> {
    let day = |field: &str, text: &str| {
        text.parse::<Day>()
            .map_err(|error| format!("{field}: {error}"))
    };
    let from = day("from", &range.from).map_err(Rejection::bad_request)?;
    let to = day("to", &range.to).map_err(Rejection::bad_request)?;
    let report = plans.usage(&id, from, to).await.map_err(refusal)?;
    Ok(Json(report).into_response())
}

async fn unknown_route() -> Rejection {
    Rejection::not_found().with_detail("no admin route has this path")
}

async fn method_not_allowed() -> Rejection {
    Rejection::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ProblemType::MethodNotAllowed,
    )
    .with_detail("this admin route does not take this method")
}

/// Admin answers hold keys' settings and, once, their secrets: no cache may keep them.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The refusal for a key lifecycle call that failed.
fn refusal(error: AdminError) -> Rejection {
    match error {
        AdminError::UnknownKey(_) => Rejection::not_found().with_detail(error.to_string()),
        AdminError::UnknownPlan(_) => Rejection::bad_request(format!("plan: {error}")),
        AdminError::InvalidId(_) => Rejection::bad_request(format!("id: {error}")),
        AdminError::KeyExists(_) => Rejection::new(StatusCode::CONFLICT, ProblemType::Conflict)
            .with_detail(format!("id: {error}")),
        AdminError::InvalidRange { .. } => Rejection::bad_request(error.to_string()),
        AdminError::Random(_) | AdminError::Store(_) => Rejection::internal(&error),
    }
}

/// A JSON request body, refused with problem+json that names the field when it cannot be read.
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Rejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Rejection> {
        let Json(body) = <Json<T> as FromRequest<S>>::from_request(request, state)
            .await
            .map_err(unreadable_body)?;
        Ok(Self(body))
    }
}

/// No body at all (no `Content-Type`) reads as `None`.
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for Body<T> {
    type Rejection = Rejection;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Rejection> {
        let body = <Json<T> as OptionalFromRequest<S>>::from_request(request, state)
            .await
            .map_err(unreadable_body)?;
        Ok(body.map(|Json(body)| Self(body)))
    }
}

fn unreadable_body(rejection: JsonRejection) -> Rejection {
    match rejection {
        // The source is serde's error with the path to the field: `plan: invalid type: …`.
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
            let detail = rejection
                .source()
                .map_or_else(|| rejection.body_text(), ToString::to_string);
            Rejection::bad_request(detail)
        }
        JsonRejection::MissingJsonContentType(_) => Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemType::UnsupportedMediaType,
        )
        .with_detail("expected a JSON body with Content-Type: application/json"),
        // A body too large or cut short.
        _ => Rejection::new(rejection.status(), ProblemType::BadRequest)
            .with_detail(rejection.body_text()),
    }
}

/// A query string, refused with problem+json that names the parameter when it cannot be read.
struct Params<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let Query(params) =
            Query::<T>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    let detail = rejection
                        .source()
                        .map_or_else(|| rejection.body_text(), ToString::to_string);
                    Rejection::bad_request(detail)
                })?;
        Ok(Self(params))
    }
}

/// The `{id}` of a key route.
struct KeyId(String);

impl<S: Send + Sync> FromRequestParts<S> for KeyId {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                Rejection::bad_request(format!("id: {}", rejection.body_text()))
            })?;
        Ok(Self(id))
    }
}
