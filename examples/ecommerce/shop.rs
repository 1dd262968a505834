//! The shop behind the gateway: its services as axum handlers and routers over in-memory state, the names
//! `gateway.yaml` knows them by, and the demo credentials. [`gateway`] builds a configuration
//! with them; `main.rs` serves it and `tests/ecommerce.rs` includes this file by path.
//!
//! | name | paths | what it does |
//! |---|---|---|
//! | `openapi` | `GET /openapi.json` | the OpenAPI 3.1 document of the configuration the gateway serves now |
//! | `products`, `product` | `GET /products?limit=&sort=`, `GET /products/{id}` | the products and their prices (`product` is also the product page's `catalog` backend) |
//! | `inventory` | `GET /stock/{id}` | stock per product; product 5 is not in the warehouse yet |
//! | `reviews` | `GET /reviews/{id}` | reviews per product; down for product 3 |
//! | `cart` | `GET /cart`, `POST /cart` | the signed-in customer's cart |
//! | `orders-v1` | `GET /orders`, `POST /orders` | orders, prices as `"25.00"` |
//! | `orders-v2` | `GET /orders`, `POST /orders` | the same orders, prices in cents with a currency |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate::config::{ConfigError, GatewayConfig, GatewayHandle, Handlers};
use tollgate::{Principal, ProblemType, Rejection};

/// The issuer of the shop's customer tokens (HS256, secret in `SHOP_JWT_SECRET`).
pub const ISSUER: &str = "https://login.shop.example/";
/// The audience the gateway accepts.
pub const AUDIENCE: &str = "shop";
/// The scopes a customer token carries: the cart, and reading and placing orders.
pub const CUSTOMER_SCOPES: &str = "cart orders:read orders:write";

/// A partner's API key on plan `partner-basic` (key id `acme`). A demo key: only its SHA-256
/// is in `gateway.yaml` (`printf %s "$KEY" | sha256sum`).
pub const ACME_KEY: &str = "tg_acme_Xq7pR2mK9vL4sT8wN3bF6hJd";
/// A partner's API key on plan `partner-pro` (key id `globex`).
pub const GLOBEX_KEY: &str = "tg_globex_Bn5cY8tW2kP7rM4zQ9xG3vHe";

/// The product whose reviews cannot be read: its details come without them.
pub const REVIEWS_DOWN_FOR: u32 = 3;
/// The product the warehouse does not know yet: its details cannot be put together.
pub const NOT_IN_WAREHOUSE: u32 = 5;

/// A token for `subject` with the space-separated `scopes`, signed with `secret` and valid
/// for an hour, as the shop's login service would issue it.
pub fn customer_token(
    secret: &[u8],
    subject: &str,
    scopes: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "scope": scopes,
        "iat": now,
        "exp": now + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

/// The shop's gateway: `config` built with every service of a fresh shop (empty carts, no
/// orders), its `openapi` handler describing whatever configuration the gateway serves.
pub async fn gateway(config: GatewayConfig) -> Result<GatewayHandle, ConfigError> {
    // The handlers are given before the gateway exists, so the document's handler finds the
    // gateway here once it is built. The two then hold each other and are never freed: the
    // shop's gateway lives as long as the process.
    let serving = Arc::new(OnceLock::new());
    let gateway = GatewayHandle::new(config, handlers(serving.clone())).await?;
    let _ = serving.set(gateway.clone());
    Ok(gateway)
}

/// Every service of a fresh shop under the name `gateway.yaml` gives it.
fn handlers(serving: Arc<OnceLock<GatewayHandle>>) -> Handlers {
    let shop = Shop::default();
    let orders = |version| {
        Router::new()
            .route("/orders", get(list_orders).post(place_order))
            .with_state((shop.clone(), version))
    };
    Handlers::new()
        .handler("openapi", move |headers: HeaderMap| {
            openapi(serving.get().cloned(), headers)
        })
        // Handlers extract path parameters from the template that calls them: a route's
        // (`GET /products/{id}`) or an aggregate backend's (`path: /stock/{id}`).
        .handler("products", products)
        .handler("product", product)
        .handler("inventory", stock)
        .handler("reviews", reviews)
        // Two methods under one name: a router (with no path parameters of its own).
        .service(
            "cart",
            Router::new()
                .route("/cart", get(cart).post(add_to_cart))
                .with_state(shop.clone()),
        )
        .service("orders-v1", orders(Version::V1))
        .service("orders-v2", orders(Version::V2))
}

struct Product {
    id: u32,
    sku: &'static str,
    name: &'static str,
    price_cents: u64,
}

const PRODUCTS: [Product; 5] = [
    Product {
        id: 1,
        sku: "MUG-001",
        name: "Ceramic mug",
        price_cents: 1250,
    },
    Product {
        id: 2,
        sku: "KET-002",
        name: "Pour-over kettle",
        price_cents: 3900,
    },
    Product {
        id: 3,
        sku: "GRN-003",
        name: "Burr grinder",
        price_cents: 8900,
    },
    Product {
        id: 4,
        sku: "FIL-004",
        name: "Paper filters (100)",
        price_cents: 420,
    },
    Product {
        id: NOT_IN_WAREHOUSE,
        sku: "BRW-005",
        name: "Cold brew bottle",
        price_cents: 2400,
    },
];

impl Product {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "sku": self.sku,
            "name": self.name,
            "price": money(self.price_cents),
        })
    }
}

/// `1250` cents as `"12.50"`.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// The product a path segment names.
fn find(id: &str) -> Option<&'static Product> {
    let id = id.parse::<u32>().ok()?;
    PRODUCTS.iter().find(|product| product.id == id)
}

/// The 404 of a path segment that names no product.
fn unknown_product(id: &str) -> Rejection {
    Rejection::not_found().with_detail(format!("no product {id:?}"))
}

/// The OpenAPI 3.1 document of the configuration `gateway` serves now, so it follows reloads,
/// with the address the client called as its server.
async fn openapi(
    gateway: Option<GatewayHandle>,
    headers: HeaderMap,
) -> Result<Json<Value>, Rejection> {
    let gateway = gateway.ok_or_else(|| Rejection::unavailable(Duration::from_secs(1)))?;
    let mut document = gateway
        .config()
        .openapi("Shop", "1.0.0")
        .map_err(|error| Rejection::internal(&error))?
        .description("The coffee-gear shop of tollgate's `examples/ecommerce`.");
    let called = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| host.parse::<Authority>().ok());
    if let Some(authority) = called {
        document = document.server(format!("http://{authority}"), "this gateway");
    }
    let document = document
        .build()
        .map_err(|error| Rejection::internal(&error))?;
    Ok(Json(document))
}

/// `GET /products`' query: at most `limit` products, sorted by `sort`. `gateway.yaml`
/// validates both, so the 400 below is for callers that bypass the gateway.
#[derive(serde::Deserialize)]
struct Listing {
    limit: Option<usize>,
    sort: Option<SortBy>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum SortBy {
    Price,
    Name,
}

async fn products(
    listing: Result<Query<Listing>, QueryRejection>,
) -> Result<Json<Value>, Rejection> {
    let Query(listing) = listing.map_err(|error| Rejection::bad_request(error.body_text()))?;
    let mut products: Vec<&Product> = PRODUCTS.iter().collect();
    match listing.sort {
        Some(SortBy::Price) => products.sort_by_key(|product| product.price_cents),
        Some(SortBy::Name) => products.sort_by_key(|product| product.name),
        None => {}
    }
    products.truncate(listing.limit.unwrap_or(PRODUCTS.len()));
    let products: Vec<Value> = products.into_iter().map(Product::json).collect();
    Ok(Json(json!({ "products": products })))
}

async fn product(Path(id): Path<String>) -> Result<Json<Value>, Rejection> {
    let product = find(&id).ok_or_else(|| unknown_product(&id))?;
    Ok(Json(product.json()))
}

async fn stock(Path(id): Path<String>) -> Result<Json<Value>, Rejection> {
    let product = find(&id).ok_or_else(|| unknown_product(&id))?;
    let (available, warehouse) = match product.id {
        1 => (42, "Rotterdam"),
        2 => (7, "Rotterdam"),
        3 => (0, "Leipzig"),
        4 => (300, "Leipzig"),
        _ => {
            return Err(Rejection::not_found().with_detail(format!(
                "{} is not in the warehouse system yet",
                product.sku
            )))
        }
    };
    Ok(Json(
        json!({ "available": available, "warehouse": warehouse }),
    ))
}

async fn reviews(Path(id): Path<String>) -> Result<Json<Value>, Rejection> {
    let product = find(&id).ok_or_else(|| unknown_product(&id))?;
    let reviews = match product.id {
        1 => json!([
            { "rating": 5, "text": "Keeps the coffee hot." },
            { "rating": 4, "text": "Bigger than it looks." },
        ]),
        2 => json!([{ "rating": 5, "text": "Pours like a dream." }]),
        REVIEWS_DOWN_FOR => {
            return Err(Rejection::unavailable(std::time::Duration::from_secs(30))
                .with_detail("the reviews of this product are being re-indexed"))
        }
        _ => json!([]),
    };
    Ok(Json(reviews))
}

/// The carts and orders, shared by every service that needs them.
#[derive(Clone, Default)]
struct Shop(Arc<Mutex<Books>>);

#[derive(Default)]
struct Books {
    /// Product id and quantity, by customer.
    carts: HashMap<String, Vec<(u32, u32)>>,
    orders: Vec<Order>,
}

struct Order {
    id: u64,
    customer: String,
    /// The partner whose API key placed it.
    partner: Option<String>,
    lines: Vec<(u32, u32)>,
}

impl Shop {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The signed-in customer (the token's subject), and the partner whose API key the request
/// came with.
struct Customer {
    id: String,
    partner: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Customer {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let id = principal
            .subject()
            .ok_or_else(|| Rejection::forbidden().with_detail("a signed-in customer is needed"))?;
        Ok(Customer {
            id: id.to_owned(),
            partner: principal.api_key_id().map(str::to_owned),
        })
    }
}

/// The cart's lines with names and prices, and their total in cents.
fn priced(lines: &[(u32, u32)]) -> (Vec<Value>, u64) {
    let mut total = 0;
    let items = lines
        .iter()
        .filter_map(|&(id, quantity)| {
            let product = PRODUCTS.iter().find(|product| product.id == id)?;
            total += product.price_cents * u64::from(quantity);
            Some(json!({
                "product_id": id,
                "name": product.name,
                "quantity": quantity,
                "price": money(product.price_cents),
            }))
        })
        .collect();
    (items, total)
}

fn cart_json(lines: &[(u32, u32)]) -> Value {
    let (items, total) = priced(lines);
    json!({ "items": items, "total": money(total) })
}

async fn cart(State(shop): State<Shop>, customer: Customer) -> Json<Value> {
    let books = shop.books();
    let lines = books.carts.get(&customer.id).map_or(&[][..], Vec::as_slice);
    Json(cart_json(lines))
}

#[derive(serde::Deserialize)]
struct AddItem {
    product_id: u32,
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

async fn add_to_cart(
    State(shop): State<Shop>,
    customer: Customer,
    item: Result<Json<AddItem>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Rejection> {
    let Json(item) = item.map_err(|error| {
        Rejection::bad_request(format!(
            "expected {{\"product_id\": 1, \"quantity\": 2}}: {}",
            error.body_text()
        ))
    })?;
    if !PRODUCTS.iter().any(|product| product.id == item.product_id) {
        return Err(Rejection::bad_request(format!(
            "no product {}",
            item.product_id
        )));
    }
    if !(1..=99).contains(&item.quantity) {
        return Err(Rejection::bad_request("the quantity must be 1 to 99"));
    }
    let mut books = shop.books();
    let lines = books.carts.entry(customer.id).or_default();
    match lines.iter_mut().find(|(id, _)| *id == item.product_id) {
        Some((_, quantity)) => *quantity = (*quantity + item.quantity).min(99),
        None => lines.push((item.product_id, item.quantity)),
    }
    Ok((StatusCode::CREATED, Json(cart_json(lines))))
}

/// Which orders service: v2 gives prices in cents with a currency, and string ids.
#[derive(Clone, Copy)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn order(self, order: &Order) -> Value {
        let (items, total) = priced(&order.lines);
        match self {
            Version::V1 => json!({
                "id": order.id,
                "status": "placed",
                "items": items,
                "total": money(total),
            }),
            Version::V2 => json!({
                "id": format!("ord_{}", order.id),
                "status": "placed",
                "items": items,
                "total": { "amount": total, "currency": "EUR" },
                "partner": order.partner,
            }),
        }
    }

    fn served_by(self) -> &'static str {
        match self {
            Version::V1 => "orders-v1",
            Version::V2 => "orders-v2",
        }
    }
}

async fn list_orders(
    State((shop, version)): State<(Shop, Version)>,
    customer: Customer,
) -> Json<Value> {
    let books = shop.books();
    let orders: Vec<Value> = books
        .orders
        .iter()
        .filter(|order| order.customer == customer.id)
        .map(|order| version.order(order))
        .collect();
    Json(json!({ "orders": orders, "served_by": version.served_by() }))
}

/// Checks the customer's cart out as an order.
async fn place_order(
    State((shop, version)): State<(Shop, Version)>,
    customer: Customer,
) -> Result<(StatusCode, Json<Value>), Rejection> {
    let mut books = shop.books();
    let lines = books.carts.remove(&customer.id).unwrap_or_default();
    if lines.is_empty() {
        return Err(Rejection::new(StatusCode::CONFLICT, ProblemType::Conflict)
            .with_detail("the cart is empty: POST /cart first"));
    }
    let order = Order {
        id: 1001 + books.orders.len() as u64,
        customer: customer.id,
        partner: customer.partner,
        lines,
    };
    let mut body = version.order(&order);
    body["served_by"] = json!(version.served_by());
    books.orders.push(order);
    Ok((StatusCode::CREATED, Json(body)))
}
