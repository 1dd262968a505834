//! API keys in Redis: a key created, disabled, rotated or revoked through one gateway instance
//! is seen by another on its next request, and the key store keeps the key store contract
//! (no overwriting insert, atomic updates that lose no edit and bring no removed key back,
//! listing in id order) across connections.

mod support;
mod usage_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use support::RedisServer;
use tollgate_core::ManualClock;
use tollgate_redis::{Redis, RedisConfig, RedisKeyStore, RedisQuotaStore};
use tollgate_usage::{
    ApiKey, KeyHash, KeyStore, MemoryKeyStore, NewKey, QuotaPeriod, UsagePlan, UsagePlans,
};
use usage_support::{gateway, noon, on_redis, raw, serve, Client, FORBIDDEN, INVALID_API_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_on_one_instance_is_seen_by_another_on_its_next_request() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    // One clock for both: the rotation's grace period is read on the instance that did not
    // rotate.
    let clock = ManualClock::starting_at(noon());
    let builder = || {
        UsagePlans::builder()
            .plan(UsagePlan::new("basic").quota(1_000, QuotaPeriod::Day))
            .clock(clock.clone())
    };
    let a = gateway(Redis::connect(&url).await.unwrap(), builder()).await;
    // B remembers the keys it saw, for outages: that must not delay a change while Redis is up.
    let redis = Redis::connect(&url).await.unwrap();
    let b = serve(on_redis(
        builder(),
        &redis,
        RedisKeyStore::new(redis.clone()).remember_keys(100),
        RedisQuotaStore::new(redis.clone()),
    ))
    .await;
    let client = Client::default();

    let (key, secret) = a.plans.create_key(NewKey::new("basic")).await.unwrap();
    let reply = client.widgets(b.addr, secret.expose()).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "created on A, works on B: {reply:?}"
    );
    // Redis holds the key's hash, never its secret.
    let mut plain = raw(&url).await;
    let stored: String = redis::cmd("GET")
        .arg(format!("tollgate:key:{}", key.id()))
        .query_async(&mut plain)
        .await
        .unwrap();
    let random_part = secret.expose().rsplit('_').next().unwrap();
    assert!(
        !stored.contains(random_part) && stored.contains(&key.hash().to_string()),
        "{stored}"
    );

    a.plans.set_enabled(key.id(), false).await.unwrap();
    client
        .widgets(b.addr, secret.expose())
        .await
        .assert_refused(StatusCode::FORBIDDEN, FORBIDDEN);
    a.plans.set_enabled(key.id(), true).await.unwrap();
    let reply = client.widgets(b.addr, secret.expose()).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "enabled again on A: {reply:?}"
    );

    let (_, rotated) = a
        .plans
        .rotate(key.id(), Duration::from_secs(3_600))
        .await
        .unwrap();
    for (which, presented) in [("new", &rotated), ("old, in its grace", &secret)] {
        let reply = client.widgets(b.addr, presented.expose()).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "the {which} secret: {reply:?}"
        );
    }
    clock.advance(Duration::from_secs(3_600));
    client
        .widgets(b.addr, secret.expose())
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, INVALID_API_KEY);
    let reply = client.widgets(b.addr, rotated.expose()).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the new secret after the grace: {reply:?}"
    );

    let usage = format!("tollgate:usage:{{{}}}", key.id());
    let counted: u32 = redis::cmd("EXISTS")
        .arg(&usage)
        .query_async(&mut plain)
        .await
        .unwrap();
    assert_eq!(counted, 1, "B counted the key's requests in Redis");

    a.plans.revoke(key.id()).await.unwrap();
    let reply = client.widgets(b.addr, rotated.expose()).await;
    reply.assert_refused(StatusCode::UNAUTHORIZED, INVALID_API_KEY);
    assert_eq!(reply.header("www-authenticate"), Some("ApiKey"));
    // Revoking deletes the key's usage with it, for every instance.
    let left: u32 = redis::cmd("EXISTS")
        .arg(format!("tollgate:key:{}", key.id()))
        .arg(&usage)
        .query_async(&mut plain)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(b.plans.get_key(key.id()).await.is_err());
}

fn key(id: &str, name: &str) -> ApiKey {
    ApiKey::new(
        id,
        "basic",
        KeyHash::of(id.as_bytes()),
        SystemTime::UNIX_EPOCH,
    )
    .unwrap()
    .with_name(name)
}

async fn name_in(store: &impl KeyStore, id: &str) -> Option<String> {
    store
        .get(id)
        .settle()
        .await
        .unwrap()
        .map(|key| key.name().to_owned())
}

/// Two handles on one Redis, each with a connection of its own.
async fn two_stores(url: &str, prefix: &str) -> (RedisKeyStore, RedisKeyStore) {
    let connect = || async {
        RedisConfig::new(url)
            .prefix(prefix)
            // Generous: this test is about atomicity, not about a loaded machine's latency.
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap()
    };
    (
        RedisKeyStore::new(connect().await),
        RedisKeyStore::new(connect().await),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_do_not_overwrite_puts_replace_and_a_removed_key_stays_removed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let (one, other) = two_stores(&url, "admin").await;

    assert!(one.insert(key("acme", "first")).await.unwrap());
    assert!(!other.insert(key("acme", "second")).await.unwrap());
    assert_eq!(name_in(&other, "acme").await.as_deref(), Some("first"));
    let mut plain = raw(&url).await;
    let mut names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut plain)
        .await
        .unwrap();
    names.sort();
    assert_eq!(names, ["admin:key:acme", "admin:keys"], "under the prefix");

    other.put(key("acme", "replaced")).await.unwrap();
    assert_eq!(name_in(&one, "acme").await.as_deref(), Some("replaced"));
    let updated = one
        .update("acme", |key| key.clone().with_enabled(false))
        .await
        .unwrap()
        .expect("the key exists");
    assert!(!updated.enabled() && updated.name() == "replaced");
    assert_eq!(
        other
            .get("acme")
            .settle()
            .await
            .unwrap()
            .map(|key| key.enabled()),
        Some(false)
    );

    assert!(one.remove("acme").await.unwrap());
    assert!(!other.remove("acme").await.unwrap());
    let edited = other
        .update("acme", |key| key.clone().with_enabled(true))
        .await
        .unwrap();
    assert!(edited.is_none(), "no key to update: {edited:?}");
    assert_eq!(name_in(&one, "acme").await, None);
    assert!(one.list(None, 10).await.unwrap().is_empty());
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut plain)
        .await
        .unwrap();
    assert!(
        names.is_empty(),
        "nothing is left of a removed key: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_through_two_connections_lose_no_edit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    const EDITS: usize = 50;
    let (one, other) = two_stores(&server.url(), "admin").await;
    assert!(one.insert(key("acme", "")).await.unwrap());

    let edits: Vec<_> = [(one, 'a'), (other, 'b')]
        .into_iter()
        .flat_map(|(store, letter)| {
            (0..EDITS).map(move |_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .update("acme", move |key| {
                            let name = format!("{}{letter}", key.name());
                            key.clone().with_name(name)
                        })
                        .await
                })
            })
        })
        .collect();
    let mut failed = Vec::new();
    for edit in edits {
        match edit.await.expect("no edit panics") {
            Ok(Some(_)) => {}
            other => failed.push(format!("{other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} edits failed: {failed:?}",
        failed.len()
    );
    let (store, _) = two_stores(&server.url(), "admin").await;
    let name = name_in(&store, "acme").await.unwrap();
    let count = |letter| name.chars().filter(|&c| c == letter).count();
    assert_eq!((count('a'), count('b')), (EDITS, EDITS), "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_keys_in_id_order_as_the_memory_store_does() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (in_redis, _) = two_stores(&server.url(), "list").await;
    let ids = ["d", "a", "c", "e", "b", "a-2", "B", "a.1", "a_3", "0"];
    let in_memory = MemoryKeyStore::new();
    for id in ids {
        assert!(in_redis.insert(key(id, id)).await.unwrap());
        assert!(in_memory.insert(key(id, id)).await.unwrap());
    }
    let listed = |page: Vec<Arc<ApiKey>>| {
        page.iter()
            .map(|key| key.id().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(in_redis.list(None, 100).await.unwrap()),
        ["0", "B", "a", "a-2", "a.1", "a_3", "b", "c", "d", "e"]
    );
    for limit in 0..=4 {
        for after in [
            None,
            Some("a"),
            Some("a-"),
            Some("a_3"),
            Some("bb"),
            Some("e"),
            Some("z"),
        ] {
            let got = listed(in_redis.list(after, limit).await.unwrap());
            let expected = listed(in_memory.list(after, limit).await.unwrap());
            assert_eq!(got, expected, "after {after:?}, limit {limit}");
        }
    }
    // Paging from the first key to the last visits each once, in order.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = listed(in_redis.list(after.as_deref(), 3).await.unwrap());
        let Some(last) = page.last().cloned() else {
            break;
        };
        paged.extend(page);
        after = Some(last);
    }
    let mut sorted = ids.map(str::to_owned).to_vec();
    sorted.sort();
    assert_eq!(paged, sorted);
}
