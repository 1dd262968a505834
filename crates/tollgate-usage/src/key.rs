//! API keys as they are stored: never the secret, only its hash.

use std::future::{ready, Future, Ready};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use tollgate_core::Principal;

use crate::secret::{is_valid_id, KeyHash};
use crate::time;

/// An API key: who it belongs to, which plan it is on, and the hash of its secret.
///
/// Cloning is cheap enough for an admin call; the request path shares keys behind an `Arc`.
/// `Debug` and `Serialize` show the key's settings and never a hash; [`KeyRecord`] is the form
/// with hashes, for stores and configuration files.
#[derive(Clone, Debug)]
pub struct ApiKey {
    id: Arc<str>,
    name: String,
    plan: Arc<str>,
    enabled: bool,
    created: SystemTime,
    expires: Option<SystemTime>,
    stages: Option<Arc<[String]>>,
    hash: KeyHash,
    /// The secret a rotation replaced, valid until the instant given.
    previous: Option<(KeyHash, SystemTime)>,
    /// The principal a request with this key carries, made once per change of the key.
    principal: Principal,
}

/// A key or plan setting that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The id has characters a key id cannot hold, or is empty or too long.
    #[error("invalid key id {0:?}: expected 1 to 64 characters of A-Z, a-z, 0-9, '-', '.' or '_', starting with a letter or digit")]
    InvalidId(String),
}

impl ApiKey {
    /// A key with id `id` on plan `plan`, whose secret hashes to `hash`: enabled, no expiry,
    /// valid on every stage its plan allows.
    pub fn new(
        id: impl Into<Arc<str>>,
        plan: impl Into<Arc<str>>,
        hash: KeyHash,
        created: SystemTime,
    ) -> Result<Self, KeyError> {
        let id = id.into();
        if !is_valid_id(&id) {
            return Err(KeyError::InvalidId(id.to_string()));
        }
        let plan = plan.into();
        Ok(Self {
            principal: Principal::builder()
                .api_key(id.clone(), plan.clone())
                .build(),
            id,
            name: String::new(),
            plan,
            enabled: true,
            created,
            expires: None,
            stages: None,
            hash,
            previous: None,
        })
    }

    /// The key's id: what logs, metrics and usage reports name it by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's id, shared.
    pub fn id_shared(&self) -> &Arc<str> {
        &self.id
    }

    /// A name for people (the customer, the application).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id of the usage plan the key is on.
    pub fn plan(&self) -> &str {
        &self.plan
    }

    /// Whether the key may be used; a disabled key is refused with 403.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// When the key was made.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// When the key stops working, if ever.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// The stages the key may be used on; `None` for every stage its plan allows.
    pub fn stages(&self) -> Option<&[String]> {
        self.stages.as_deref()
    }

    /// The hash of the key's current secret.
    pub fn hash(&self) -> KeyHash {
        self.hash
    }

    /// The hash of the secret a rotation replaced, and until when it still works.
    pub fn previous(&self) -> Option<(KeyHash, SystemTime)> {
        self.previous
    }

    /// The [`Principal`] a request made with this key carries: its key id and plan id.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// This key with `name`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// This key enabled or disabled.
    #[must_use]
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// This key expiring at `expires` (or never).
    #[must_use]
    pub fn with_expiry(mut self, expires: Option<SystemTime>) -> Self {
        self.expires = expires;
        self
    }

    /// This key limited to `stages` (or allowed on every stage its plan allows).
    #[must_use]
    pub fn with_stages(mut self, stages: Option<Vec<String>>) -> Self {
        self.stages = stages.map(Into::into);
        self
    }

    /// This key on plan `plan`.
    #[must_use]
    pub fn with_plan(mut self, plan: impl Into<Arc<str>>) -> Self {
        self.plan = plan.into();
        self.principal = Principal::builder()
            .api_key(self.id.clone(), self.plan.clone())
            .build();
        self
    }

    /// This key with a new secret, `hash`; the current one keeps working until `grace_until`.
    #[must_use]
    pub fn with_rotated_secret(mut self, hash: KeyHash, grace_until: SystemTime) -> Self {
        self.previous = Some((self.hash, grace_until));
        self.hash = hash;
        self
    }

    /// Whether `presented` (the hash of the key a request sent) is this key's secret at `now`.
    /// Both hashes are compared whether or not the first matched.
    #[inline]
    pub(crate) fn verify(&self, presented: &KeyHash, now: SystemTime) -> bool {
        let current = self.hash.matches(presented);
        let previous = self
            .previous
            .is_some_and(|(hash, until)| hash.matches(presented) && now < until);
        current | previous
    }

    /// The stored form of this key, with its hashes.
    pub fn record(&self) -> KeyRecord {
        KeyRecord {
            id: self.id.to_string(),
            name: self.name.clone(),
            plan: self.plan.to_string(),
            enabled: self.enabled,
            created: self.created,
            expires: self.expires,
            stages: self.stages.as_deref().map(<[String]>::to_vec),
            hash: self.hash,
            previous_hash: self.previous.map(|(hash, _)| hash),
            previous_valid_until: self.previous.map(|(_, until)| until),
        }
    }
}

impl serde::Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("ApiKey", 8)?;
        out.serialize_field("id", &*self.id)?;
        out.serialize_field("name", &self.name)?;
        out.serialize_field("plan", &*self.plan)?;
        out.serialize_field("enabled", &self.enabled)?;
        out.serialize_field("created", &time::format(self.created))?;
        out.serialize_field("expires", &self.expires.map(time::format))?;
        out.serialize_field("stages", &self.stages.as_deref())?;
        out.serialize_field(
            "previous_secret_valid_until",
            &self.previous.map(|(_, until)| time::format(until)),
        )?;
        out.end()
    }
}

/// A key as a store or a configuration file holds it: settings and hashes, never a secret.
///
/// ```
/// let record: tollgate_usage::KeyRecord = serde_json::from_str(r#"{
///     "id": "acme",
///     "name": "Acme Corp",
///     "plan": "pro",
///     "created": "2026-11-01T00:00:00Z",
///     "hash": "sha256:4ef7303f4cb824eef2ae3f88a9ed54bac663c1aa5c30e1680404fe3d0a890a1c"
/// }"#).unwrap();
/// let key = tollgate_usage::ApiKey::try_from(record).unwrap();
/// assert_eq!(key.plan(), "pro");
/// assert!(key.enabled());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// The key's id (the part between `tg_` and the last `_` of the key).
    pub id: String,
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// The usage plan's id.
    pub plan: String,
    /// Whether the key may be used (default `true`).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// When the key was made.
    #[serde(with = "time::rfc3339")]
    pub created: SystemTime,
    /// When the key stops working.
    #[serde(
        default,
        with = "time::rfc3339_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<SystemTime>,
    /// The stages the key may be used on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<String>>,
    /// `sha256:` and the hex SHA-256 of the whole key.
    pub hash: KeyHash,
    /// The hash of the secret a rotation replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<KeyHash>,
    /// Until when the replaced secret works.
    #[serde(
        default,
        with = "time::rfc3339_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub previous_valid_until: Option<SystemTime>,
}

fn enabled_by_default() -> bool {
    true
}

impl TryFrom<KeyRecord> for ApiKey {
    type Error = KeyError;

    fn try_from(record: KeyRecord) -> Result<Self, KeyError> {
        let mut key = ApiKey::new(record.id, record.plan, record.hash, record.created)?
            .with_name(record.name)
            .with_enabled(record.enabled)
            .with_expiry(record.expires)
            .with_stages(record.stages);
        key.previous = record.previous_hash.zip(record.previous_valid_until);
        Ok(key)
    }
}

/// A store that could not answer.
#[derive(Debug, thiserror::Error)]
#[error("usage store failed: {0}")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A store's answer: now, or a future for stores that ask over the network.
#[derive(Debug)]
pub enum Found<T, F> {
    /// The answer, without waiting.
    Ready(Result<T, StoreError>),
    /// The answer will come from `F`.
    Pending(F),
}

impl<T, F: Future<Output = Result<T, StoreError>>> Found<T, F> {
    /// The answer, waiting for it if needed.
    pub async fn settle(self) -> Result<T, StoreError> {
        match self {
            Found::Ready(result) => result,
            Found::Pending(future) => future.await,
        }
    }
}

/// Where API keys live: in memory ([`MemoryKeyStore`]) or shared by several gateway instances.
///
/// `get` is on every request's path and may answer at once; the changes are admin calls. A
/// change made through one store handle is seen by the next `get` through any other.
pub trait KeyStore: Send + Sync + 'static {
    /// The future of a `get` that cannot answer at once.
    type Get: Future<Output = Result<Option<Arc<ApiKey>>, StoreError>> + Send + 'static;

    /// The key with id `id`.
    fn get(&self, id: &str) -> Found<Option<Arc<ApiKey>>, Self::Get>;

    /// Adds `key` unless a key with its id exists; `false` when one does.
    fn insert(&self, key: ApiKey) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores `key`, replacing the key with its id.
    fn put(&self, key: ApiKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the key with id `id` by `edit` of it, atomically: a key removed meanwhile
    /// stays removed, and two edits at once do not lose one. `None` when there is no such key.
    fn update<F>(
        &self,
        id: &str,
        edit: F,
    ) -> impl Future<Output = Result<Option<Arc<ApiKey>>, StoreError>> + Send
    where
        F: Fn(&ApiKey) -> ApiKey + Send;

    /// Removes the key with id `id`; `false` when there was none.
    fn remove(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Up to `limit` keys whose ids sort after `after` (from the first when `None`), in id
    /// order: one page of a listing.
    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<ApiKey>>, StoreError>> + Send;
}

/// A shared store: the layer and its owner (a configuration reload that keeps the keys) both
/// hold it.
impl<K: KeyStore> KeyStore for Arc<K> {
    type Get = K::Get;

    #[inline]
    fn get(&self, id: &str) -> Found<Option<Arc<ApiKey>>, Self::Get> {
        (**self).get(id)
    }

    fn insert(&self, key: ApiKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).insert(key)
    }

    fn put(&self, key: ApiKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).put(key)
    }

    fn update<F>(
        &self,
        id: &str,
        edit: F,
    ) -> impl Future<Output = Result<Option<Arc<ApiKey>>, StoreError>> + Send
    where
        F: Fn(&ApiKey) -> ApiKey + Send,
    {
        (**self).update(id, edit)
    }

    fn remove(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).remove(id)
    }

    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<ApiKey>>, StoreError>> + Send {
        (**self).list(after, limit)
    }
}

/// Keys in memory: a sharded hash map, one lookup per request whatever the number of keys.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    keys: DashMap<Arc<str>, Arc<ApiKey>, foldhash::fast::RandomState>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `keys`; a later key replaces an earlier one with its id.
    pub fn with_keys(keys: impl IntoIterator<Item = ApiKey>) -> Self {
        let store = Self::new();
        for key in keys {
            store.keys.insert(key.id.clone(), Arc::new(key));
        }
        store
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl KeyStore for MemoryKeyStore {
    type Get = Ready<Result<Option<Arc<ApiKey>>, StoreError>>;

    #[inline]
    fn get(&self, id: &str) -> Found<Option<Arc<ApiKey>>, Self::Get> {
        Found::Ready(Ok(self.keys.get(id).map(|entry| entry.value().clone())))
    }

    fn insert(&self, key: ApiKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let inserted = match self.keys.entry(key.id.clone()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Arc::new(key));
                true
            }
        };
        ready(Ok(inserted))
    }

    fn put(&self, key: ApiKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.keys.insert(key.id.clone(), Arc::new(key));
        ready(Ok(()))
    }

    fn update<F>(
        &self,
        id: &str,
        edit: F,
    ) -> impl Future<Output = Result<Option<Arc<ApiKey>>, StoreError>> + Send
    where
        F: Fn(&ApiKey) -> ApiKey + Send,
    {
        // The shard's write lock is held from read to write.
        let updated = self.keys.get_mut(id).map(|mut entry| {
            let key = Arc::new(edit(entry.value()));
            *entry.value_mut() = key.clone();
            key
        });
        ready(Ok(updated))
    }

    fn remove(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.keys.remove(id).is_some()))
    }

    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<ApiKey>>, StoreError>> + Send {
        // One pass keeping the `limit` smallest ids after `after` in a max-heap: a page of a
        // million keys costs a scan, not a copy and sort of them all.
        let mut page = std::collections::BinaryHeap::with_capacity(limit.saturating_add(1));
        for entry in self.keys.iter() {
            let id = &**entry.key();
            let full_with_smaller =
                page.len() >= limit && page.peek().is_some_and(|ById(top): &ById| id >= &*top.id);
            if after.is_some_and(|after| id <= after) || full_with_smaller {
                continue;
            }
            page.push(ById(entry.value().clone()));
            if page.len() > limit {
                page.pop();
            }
        }
        let page = page
            .into_sorted_vec()
            .into_iter()
            .map(|ById(key)| key)
            .collect();
        ready(Ok(page))
    }
}

/// A key ordered by its id.
struct ById(Arc<ApiKey>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> ApiKey {
        ApiKey::new(
            id,
            "basic",
            KeyHash::of(id.as_bytes()),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    fn now<T>(future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("the memory store answers at once"),
        }
    }

    #[test]
    fn memory_store_inserts_once_and_updates_in_place() {
        let store = MemoryKeyStore::new();
        assert!(now(store.insert(key("a"))).unwrap());
        assert!(!now(store.insert(key("a").with_name("second"))).unwrap());
        let updated = now(store.update("a", |key| key.clone().with_enabled(false)))
            .unwrap()
            .unwrap();
        assert!(!updated.enabled());
        match store.get("a") {
            Found::Ready(Ok(Some(found))) => assert!(!found.enabled() && found.name().is_empty()),
            other => panic!("unexpected {other:?}"),
        }
        now(store.put(key("b"))).unwrap();
        assert_eq!(now(store.list(None, 10)).unwrap().len(), 2);
    }

    #[test]
    fn an_update_after_removal_does_not_bring_the_key_back() {
        let store = MemoryKeyStore::with_keys([key("a")]);
        assert!(now(store.remove("a")).unwrap());
        assert!(now(store.update("a", |key| key.clone().with_enabled(true)))
            .unwrap()
            .is_none());
        assert!(matches!(store.get("a"), Found::Ready(Ok(None))));
        assert!(!now(store.remove("a")).unwrap());
        assert!(store.is_empty());
    }

    #[test]
    fn listing_pages_through_keys_in_id_order() {
        let store = MemoryKeyStore::with_keys(["d", "a", "c", "e", "b"].map(key));
        let ids =
            |page: Vec<Arc<ApiKey>>| page.iter().map(|k| k.id().to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(now(store.list(None, 2)).unwrap()), ["a", "b"]);
        assert_eq!(ids(now(store.list(Some("b"), 2)).unwrap()), ["c", "d"]);
        assert_eq!(ids(now(store.list(Some("d"), 2)).unwrap()), ["e"]);
        assert!(now(store.list(Some("e"), 2)).unwrap().is_empty());
        assert!(now(store.list(None, 0)).unwrap().is_empty());
    }

    #[test]
    fn invalid_ids_are_refused() {
        let error = ApiKey::new(
            "has space",
            "basic",
            KeyHash::of(b"x"),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap_err();
        assert_eq!(error, KeyError::InvalidId("has space".into()));
    }

    #[test]
    fn records_round_trip_with_their_hashes() {
        let until = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        let original = key("a")
            .with_name("Acme")
            .with_stages(Some(vec!["prod".into()]))
            .with_rotated_secret(KeyHash::of(b"new"), until);
        let back = ApiKey::try_from(original.record()).unwrap();
        assert_eq!(back.record(), original.record());
        assert!(back.verify(&KeyHash::of(b"new"), until));
        assert!(back.verify(&KeyHash::of(b"a"), SystemTime::UNIX_EPOCH));
        assert!(!back.verify(&KeyHash::of(b"a"), until));
        let shown = serde_json::to_string(&back).unwrap();
        assert!(!shown.contains("sha256"), "{shown}");
    }
}
