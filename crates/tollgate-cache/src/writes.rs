use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use http::header::{CONTENT_LOCATION, HOST, LOCATION};
use http::{HeaderMap, Method, Response, Uri};
use tollgate_core::{Clock, SharedClock};

/// How many written paths are remembered; past it moka's policy forgets some, and a response
/// stored before a forgotten write can be served again until it expires, as without this
/// record.
const CAPACITY: u64 = 10_000;

/// How long a write is remembered: longer than any response stays fresh by default, with room
/// for stale serving.
const REMEMBERED_FOR: Duration = Duration::from_secs(24 * 3600);

/// Paths that unsafe requests changed, and when: RFC 9111 §4.4 has a cache invalidate a
/// resource when a POST, PUT, PATCH or DELETE to it succeeds, and the resources its `Location`
/// and `Content-Location` name on the same host.
///
/// Responses stored before a write to their path are treated as absent, for every query,
/// caller and stage (RFC 9111 lets a cache invalidate more than the target URI). Marks are
/// kept by path, so a hit looks up its path only once any write has been seen.
pub(crate) struct Writes {
    // By a seeded hash of the path, so a mark costs the same whatever the path's length; a
    // collision only hides one more resource until it is fetched again.
    marks: moka::sync::Cache<u64, SystemTime>,
    seed: foldhash::quality::RandomState,
    any: AtomicBool,
    clock: SharedClock,
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("paths", &self.marks.entry_count())
            .finish()
    }
}

impl Writes {
    pub(crate) fn new(clock: SharedClock) -> Self {
        Self {
            marks: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBERED_FOR)
                .build(),
            any: AtomicBool::new(false),
            seed: foldhash::quality::RandomState::default(),
            clock,
        }
    }

    /// Whether `method` changes the resource it is sent to.
    pub(crate) fn is_unsafe(method: &Method) -> bool {
        matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        )
    }

    /// Whether `path` was written at or after `stored_at`.
    pub(crate) fn since(&self, path: &str, stored_at: SystemTime) -> bool {
        self.any.load(Ordering::Relaxed)
            && self
                .marks
                .get(&self.seed.hash_one(path))
                .is_some_and(|at| at >= stored_at)
    }

    /// Records the paths a finished unsafe request changed, if it succeeded.
    pub(crate) fn record<B>(&self, path: &str, host: Option<&str>, response: &Response<B>) {
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        let now = self.clock.system_time();
        self.mark(path, now);
        for name in [LOCATION, CONTENT_LOCATION] {
            if let Some(path) = same_host_path(response.headers(), name, host) {
                self.mark(path, now);
            }
        }
    }

    fn mark(&self, path: &str, at: SystemTime) {
        self.any.store(true, Ordering::Relaxed);
        self.marks.insert(self.seed.hash_one(path), at);
    }
}

/// The host a request was sent to, to tell which `Location` URIs are on the same host.
pub(crate) fn request_host(uri: &Uri, headers: &HeaderMap) -> Option<Box<str>> {
    uri.authority()
        .map(|a| a.as_str().into())
        .or_else(|| headers.get(HOST)?.to_str().ok().map(Into::into))
}

/// The path of a `Location`-like header when it names the same host (or is relative).
fn same_host_path<'h>(
    headers: &'h HeaderMap,
    name: http::HeaderName,
    host: Option<&str>,
) -> Option<&'h str> {
    let value = headers.get(name)?.to_str().ok()?;
    if value.starts_with('/') && !value.starts_with("//") {
        return Some(value.split(['?', '#']).next().unwrap_or(value));
    }
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))?;
    let (authority, path) = rest.split_at(rest.find('/')?);
    (Some(authority) == host).then(|| path.split(['?', '#']).next().unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::ManualClock;

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(()).unwrap()
    }

    #[test]
    fn a_successful_write_marks_its_path_and_the_locations_on_its_host() {
        let clock = ManualClock::new();
        let writes = Writes::new(clock.clone().into());
        let before = clock.system_time();
        assert!(!writes.since("/items", before));
        writes.record(
            "/items",
            Some("api.example.com"),
            &response(
                201,
                &[
                    ("location", "https://api.example.com/items/7?x=1"),
                    ("content-location", "https://elsewhere.example/items/8"),
                ],
            ),
        );
        assert!(writes.since("/items", before));
        assert!(writes.since("/items/7", before));
        assert!(!writes.since("/items/8", before), "another host's resource");
        clock.advance(Duration::from_secs(1));
        assert!(
            !writes.since("/items", clock.system_time()),
            "stored after the write"
        );
    }

    #[test]
    fn a_failed_write_marks_nothing() {
        let clock = ManualClock::new();
        let writes = Writes::new(clock.clone().into());
        writes.record("/items", None, &response(500, &[]));
        writes.record("/items", None, &response(404, &[]));
        assert!(!writes.since("/items", clock.system_time()));
    }

    #[test]
    fn relative_locations_count_and_scheme_relative_ones_do_not() {
        let clock = ManualClock::new();
        let writes = Writes::new(clock.clone().into());
        writes.record(
            "/a",
            None,
            &response(
                303,
                &[("location", "/b?page=2"), ("content-location", "//evil/c")],
            ),
        );
        assert!(writes.since("/b", clock.system_time()));
        assert!(!writes.since("/c", clock.system_time()));
    }
}
