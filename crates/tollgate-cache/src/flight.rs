use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::key::CacheKey;
use crate::store::CachedResponse;

/// How a flight ended.
#[derive(Clone, Debug)]
pub(crate) enum Landing {
    /// Still in the air.
    Flying,
    /// The response was stored; waiters whose `Vary` values match serve it.
    Stored(Arc<CachedResponse>),
    /// The response was not stored (not cacheable, too large, failed, or the leader's client
    /// went away): waiters go upstream themselves.
    Aborted,
}

/// Upstream requests in flight, by key, so concurrent misses on one key send one request.
///
/// The map is private to the layer and holds an entry only while a request is in flight.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flights {
    map: Arc<DashMap<CacheKey, watch::Receiver<Landing>, foldhash::fast::RandomState>>,
}

/// A request's place in a flight.
pub(crate) enum Join {
    /// This request goes upstream; the guard tells the waiters how it ended.
    Lead(Leader),
    /// Another request is upstream; wait for it.
    Wait(watch::Receiver<Landing>),
}

impl Flights {
    pub(crate) fn join(&self, key: &CacheKey) -> Join {
        match self.map.entry(key.clone()) {
            Entry::Occupied(flight) => Join::Wait(flight.get().clone()),
            Entry::Vacant(slot) => {
                let (sender, receiver) = watch::channel(Landing::Flying);
                slot.insert(receiver);
                Join::Lead(Leader {
                    flights: self.clone(),
                    key: key.clone(),
                    sender,
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
    sender: watch::Sender<Landing>,
}

impl Leader {
    /// Hands the stored response to the waiters.
    pub(crate) fn land(self, stored: Arc<CachedResponse>) {
        self.sender.send_replace(Landing::Stored(stored));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Out of the map first: a request arriving now finds the stored response, or leads.
        self.flights.map.remove_if(&self.key, |_, receiver| {
            receiver.same_channel(&self.sender.subscribe())
        });
        self.sender.send_if_modified(|landing| {
            let flying = matches!(landing, Landing::Flying);
            if flying {
                *landing = Landing::Aborted;
            }
            flying
        });
    }
}

/// Waits for a flight to land; a leader that vanished counts as aborted.
pub(crate) async fn landing(mut receiver: watch::Receiver<Landing>) -> Landing {
    match receiver
        .wait_for(|landing| !matches!(landing, Landing::Flying))
        .await
    {
        Ok(landing) => landing.clone(),
        Err(_) => Landing::Aborted,
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
