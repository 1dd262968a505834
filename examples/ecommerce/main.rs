//! A serverless shop behind one configuration file: the gateway is `gateway.yaml`, the shop's
//! services are handlers of this program (`shop.rs`), and editing the file changes the running
//! gateway. `README.md` beside it walks through every route with curl.
//!
//! ```sh
//! cargo run --example ecommerce --features config
//! ```
//!
//! - `GET /products`, `GET /products/{id}`: public, cached for everyone (30 s and 5 min).
//! - `GET /products/{id}/details`: the product, its stock and its reviews in one call; the
//!   reviews are optional (product 3's are down), the stock is not (product 5 has none).
//! - `GET|POST /cart`, `GET|POST /orders`: a customer's token (HS256) and a partner's API key
//!   on a usage plan; checkouts have a plan throttle of their own.
//! - `/orders` has a v2 canary: 10 % of clients, by `x-client-id`, get `orders-v2`
//!   (`x-deployment: prod-v2`).
//! - `GET /products` checks `limit` and `sort`, `POST /cart` its JSON body: a 400 lists every
//!   violation. `GET /openapi.json` is the OpenAPI 3.1 document of the configuration serving.
//! - Every request is one access-log line on stdout (`tracing`, target `tollgate::access`);
//!   `RUST_LOG=tollgate::access=info` shows only those, `RUST_LOG=warn` hides them.
//!
//! The JWT secret comes from `SHOP_JWT_SECRET`; without it a development secret is set. Listen
//! elsewhere with `TOLLGATE_ADDR=127.0.0.1:8080` or `cargo run ... -- 127.0.0.1:8080`.

mod shop;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tollgate::config::GatewayConfig;

const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/ecommerce/gateway.yaml"
);

/// The secret variable `gateway.yaml` names, and the value used when it is unset.
const SECRET_VARIABLE: &str = "SHOP_JWT_SECRET";
const DEVELOPMENT_SECRET: &str = "development-only-secret-change-me-0123456789";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Before the runtime starts any thread: the environment is only safe to change while
    // nothing else reads it.
    if std::env::var_os(SECRET_VARIABLE).is_none() {
        std::env::set_var(SECRET_VARIABLE, DEVELOPMENT_SECRET);
        println!("{SECRET_VARIABLE} is not set: using a development secret for customer tokens");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // The access log (INFO, target `tollgate::access`), each reload (INFO) and each refused
    // file (WARN), as text; `RUST_LOG` picks, such as `RUST_LOG=tollgate::access=info`.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let addr: SocketAddr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("TOLLGATE_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()
        .map_err(|e| format!("the address must be host:port, such as 127.0.0.1:3000 ({e})"))?;

    // Errors name the file, line and field: `gateway.yaml:12:9: routes[3].cache.ttl: ...`.
    let config = GatewayConfig::from_file(CONFIG)?;
    let gateway = shop::gateway(config).await?;
    let _watcher = gateway.watch(CONFIG, Duration::from_secs(1));

    let secret = std::env::var(SECRET_VARIABLE)?;
    let token = shop::customer_token(secret.as_bytes(), "customer-42", shop::CUSTOMER_SCOPES)?;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    print_try(addr, &token);

    axum::serve(
        listener,
        gateway
            .router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

fn print_try(addr: SocketAddr, token: &str) {
    let url = format!("http://{addr}");
    let auth = "-H \"Authorization: Bearer $TOKEN\"";
    let config = Path::new(CONFIG).display();
    println!("tollgate ecommerce gateway on {url}, from {config}");
    println!();
    println!(
        "A customer token (customer-42, scopes {:?}, valid for an hour):",
        shop::CUSTOMER_SCOPES
    );
    println!("  export TOKEN={token}");
    println!("Partner API keys (only their hashes are in gateway.yaml):");
    println!("  export ACME={}     # plan partner-basic", shop::ACME_KEY);
    println!("  export GLOBEX={}   # plan partner-pro", shop::GLOBEX_KEY);
    println!();
    println!("Try (examples/ecommerce/README.md walks through each):");
    println!("  curl -i {url}/products");
    println!("      public; x-cache-status: MISS, then HIT for 30 s");
    println!("  curl -i {url}/products/1/details");
    println!("      catalog + stock + reviews in one answer, x-tollgate-completed: true");
    println!(
        "  curl -i {url}/products/{}/details",
        shop::REVIEWS_DOWN_FOR
    );
    println!(
        "      the reviews are down: 200 without them, x-tollgate-completed: false, \"errors\""
    );
    println!(
        "  curl -i {url}/products/{}/details",
        shop::NOT_IN_WAREHOUSE
    );
    println!("      the stock is required and missing: 502 problem+json");
    println!("  curl -i {url}/cart -H \"x-api-key: $ACME\"");
    println!("      401: no customer token (WWW-Authenticate: Bearer)");
    println!("  curl -i {url}/cart {auth}");
    println!("      401: no API key (WWW-Authenticate: ApiKey)");
    println!("  curl -i {url}/cart {auth} -H \"x-api-key: $ACME\" --json '{{\"product_id\": 1, \"quantity\": 2}}'");
    println!("      201, the cart");
    println!(
        "  curl -i {url}/cart {auth} -H \"x-api-key: $ACME\" --json '{{\"product_id\": \"x\"}}'"
    );
    println!("      400 before the cart service: errors[0].pointer is /product_id");
    println!("  curl -i '{url}/products?limit=0&sort=size'");
    println!("      400 listing both violations, in: query");
    println!("  curl -s {url}/openapi.json");
    println!("      the OpenAPI 3.1 document of the configuration serving now");
    println!("  curl -i -X POST {url}/orders {auth} -H \"x-api-key: $ACME\"");
    println!("      201, the order; a third checkout within a minute on partner-basic: 429 with Retry-After");
    println!("  curl -i {url}/orders {auth} -H \"x-api-key: $GLOBEX\" -H 'x-client-id: device-45'");
    println!("      x-deployment: prod-v2, orders-v2's answer; most ids (device-1) get prod and orders-v1,");
    println!("      and an id always gets the same side");
    println!();
    println!(
        "Each request is an access-log line below (RUST_LOG=tollgate::access=info for only those)."
    );
    println!("Edit {config} (say, the canary's percent: 50): the gateway reloads within a second.");
    println!("Press Ctrl-C to stop.");
}
