use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::key::CacheKey;
use crate::store::CachedResponse;

/// How a flight ended.
#[derive(Clone, Debug)]
pub(crate) enum Landing {
    /// Still in the air.
    Flying,
    /// The response was stored; waiters whose `Vary` values match serve it.
    Stored(Arc<CachedResponse>),
    /// The response was not stored (not cacheable, too large, or the leader's client went
    /// away): waiters go upstream themselves.
    Aborted,
    /// The upstream failed and the leader served a stale response: waiters that have one
    /// serve it too, rather than each waiting on the failing upstream again.
    Failed,
}

/// One upstream request that others wait on.
#[derive(Debug)]
pub(crate) struct Flight {
    landing: Mutex<Landing>,
    landed: Notify,
}

impl Flight {
    fn landing(&self) -> Landing {
        self.landing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets how the flight ended, once, and wakes the waiters.
    fn end(&self, how: Landing) {
        {
            let mut landing = self.landing.lock().unwrap_or_else(PoisonError::into_inner);
            if !matches!(*landing, Landing::Flying) {
                return;
            }
            *landing = how;
        }
        self.landed.notify_waiters();
    }
}

/// Upstream requests in flight, by key, so concurrent misses on one key send one request.
///
/// The map is private to the layer and holds an entry only while a request is in flight.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flights {
    map: Arc<DashMap<CacheKey, Arc<Flight>, foldhash::fast::RandomState>>,
    /// Counts landings, so a request can tell whether any flight stored a response since it
    /// looked.
    landings: Arc<AtomicU64>,
}

/// A request's place in a flight.
pub(crate) enum Join {
    /// This request goes upstream; the guard tells the waiters how it ended.
    Lead(Leader),
    /// Another request is upstream; wait for it.
    Wait(Arc<Flight>),
}

impl Flights {
    /// The number of landings so far.
    pub(crate) fn epoch(&self) -> u64 {
        self.landings.load(Ordering::Acquire)
    }

    pub(crate) fn join(&self, key: &CacheKey) -> Join {
        match self.map.entry(key.clone()) {
            Entry::Occupied(flight) => Join::Wait(flight.get().clone()),
            Entry::Vacant(slot) => {
                let flight = Arc::new(Flight {
                    landing: Mutex::new(Landing::Flying),
                    landed: Notify::new(),
                });
                slot.insert(flight.clone());
                Join::Lead(Leader {
                    flights: self.clone(),
                    key: key.clone(),
                    flight,
                })
            }
        }
    }

    /// Leads a flight only if none is in the air (a background refresh).
    pub(crate) fn lead(&self, key: &CacheKey) -> Option<Leader> {
        match self.join(key) {
            Join::Lead(leader) => Some(leader),
            Join::Wait(_) => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.map.len()
    }
}

/// The request that went upstream for a key. Dropping it without [`Leader::land`] — the
/// response was not stored, or the request was cancelled — releases the waiters to go upstream
/// themselves.
pub(crate) struct Leader {
    flights: Flights,
    key: CacheKey,
    flight: Arc<Flight>,
}

impl Leader {
    /// Hands the stored response to the waiters.
    pub(crate) fn land(self, stored: Arc<CachedResponse>) {
        // After the store has the response: a request that sees the new epoch finds it there.
        self.flights.landings.fetch_add(1, Ordering::Release);
        self.flight.end(Landing::Stored(stored));
    }
}

impl Leader {
    /// Tells the waiters the upstream failed.
    pub(crate) fn fail(self) {
        self.flight.end(Landing::Failed);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Out of the map first: a request arriving now finds the stored response, or leads.
        self.flights
            .map
            .remove_if(&self.key, |_, flight| Arc::ptr_eq(flight, &self.flight));
        self.flight.end(Landing::Aborted);
    }
}

/// Waits for a flight to land.
pub(crate) async fn landing(flight: Arc<Flight>) -> Landing {
    loop {
        // Registered before the check, so a landing between the two still wakes this waiter.
        let landed = flight.landed.notified();
        let landing = flight.landing();
        if !matches!(landing, Landing::Flying) {
            return landing;
        }
        landed.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_learn_that_a_dropped_leader_stored_nothing() {
        let flights = Flights::default();
        let key = CacheKey::from_bytes(b"k");
        let Join::Lead(leader) = flights.join(&key) else {
            panic!("the first request leads");
        };
        let Join::Wait(waiter) = flights.join(&key) else {
            panic!("the second request waits");
        };
        assert!(flights.lead(&key).is_none());
        drop(leader);
        assert!(matches!(landing(waiter).await, Landing::Aborted));
        assert_eq!(flights.in_flight(), 0);
        assert!(flights.lead(&key).is_some(), "a new flight can start");
    }
}
