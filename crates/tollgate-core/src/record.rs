//! What the layers decided about one request, gathered for the access log and the metrics.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::Extensions;

use crate::{Principal, Stage};

/// A shared slot, in a request's extensions, where each layer notes what it decided about the
/// request: the route that matched, who called, which key and plan, which stage, how long the
/// upstreams took. The access log (outermost) puts one in the request, lets the request
/// through every layer, and reads it when the response comes back, whichever layer answered.
///
/// Layers write with [`AccessRecord::update`], which does nothing when no access log asked
/// for a record: a stack without one pays a type-map lookup per note. Clones share the slot.
///
/// ```
/// use tollgate_core::AccessRecord;
///
/// let mut request = http::Request::new(());
/// let record = AccessRecord::new();
/// request.extensions_mut().insert(record.clone());
///
/// // A layer further in, with only the request:
/// AccessRecord::update(request.extensions(), |fields| fields.route = Some("/pets/{id}".into()));
///
/// assert_eq!(record.fields().route.as_deref(), Some("/pets/{id}"));
/// ```
#[derive(Clone, Default)]
pub struct AccessRecord(Arc<Mutex<AccessFields>>);

/// What an [`AccessRecord`] holds. Every field is empty until a layer fills it.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct AccessFields {
    /// The path template of the route that serves the request (`/pets/{id}`).
    pub route: Option<Arc<str>>,
    /// Who is calling, as the authorizer verified it, with the API key id and usage plan once
    /// the usage plan admitted the key.
    pub principal: Option<Principal>,
    /// The id of the API key the usage plan found and verified (never the key itself), noted
    /// even when the key is then refused (disabled, over its quota).
    pub api_key_id: Option<Arc<str>>,
    /// The usage plan of that key.
    pub usage_plan: Option<Arc<str>>,
    /// The stage and deployment that serve the request.
    pub stage: Option<Stage>,
    /// The time spent waiting for upstreams (an HTTP upstream, or an aggregate's fan-out from
    /// its start until its last backend answered).
    pub upstream: Option<Duration>,
}

impl AccessRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The record in `extensions`, if an access log asked for one.
    #[inline]
    pub fn of(extensions: &Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }

    /// Lets `note` write to the record in `extensions`, if there is one.
    #[inline]
    pub fn update(extensions: &Extensions, note: impl FnOnce(&mut AccessFields)) {
        if let Some(record) = Self::of(extensions) {
            record.note(note);
        }
    }

    /// Lets `note` write to this record.
    pub fn note(&self, note: impl FnOnce(&mut AccessFields)) {
        note(&mut self.lock());
    }

    /// Notes the time an upstream took; a second upstream's time is added to the first's.
    pub fn add_upstream(extensions: &Extensions, took: Duration) {
        Self::update(extensions, |fields| fields.add_upstream(took));
    }

    /// What `read` makes of the notes so far, without copying them all.
    pub fn read<R>(&self, read: impl FnOnce(&AccessFields) -> R) -> R {
        read(&self.lock())
    }

    /// A copy of what the layers have noted so far.
    pub fn fields(&self) -> AccessFields {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, AccessFields> {
        // A note is a few assignments; a panic inside one leaves nothing half-written that
        // matters more than losing the log line.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AccessFields {
    /// Adds `took` to the upstream time noted so far.
    pub fn add_upstream(&mut self, took: Duration) {
        self.upstream = Some(self.upstream.unwrap_or_default() + took);
    }
}

impl fmt::Debug for AccessRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AccessRecord").field(&*self.lock()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_without_a_record_do_nothing_and_clones_share_one() {
        let mut extensions = Extensions::new();
        AccessRecord::update(&extensions, |_| panic!("no record was asked for"));
        let record = AccessRecord::new();
        extensions.insert(record.clone());
        AccessRecord::add_upstream(&extensions, Duration::from_millis(3));
        AccessRecord::add_upstream(&extensions, Duration::from_millis(4));
        AccessRecord::update(&extensions, |fields| {
            fields.stage = Some(Stage::new("prod").with_deployment("prod-canary"));
        });
        let fields = record.fields();
        assert_eq!(fields.upstream, Some(Duration::from_millis(7)));
        assert_eq!(fields.stage.unwrap().deployment(), "prod-canary");
    }
}
