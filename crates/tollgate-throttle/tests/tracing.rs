//! Each refusal is a tracing event. A test binary of its own: tracing caches per-callsite
//! interest globally, and tests on other threads hitting the same callsites without a
//! subscriber would race with this one's.

mod support;

use std::sync::{Arc, Mutex};

use support::{bare, request_from};
use tollgate_core::key::PeerIp;
use tollgate_core::ManualClock;
use tollgate_throttle::{Rate, Rule, ThrottleLayer};
use tower::{Layer, Service};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_refusal_is_a_tracing_event_naming_rule_and_client() {
    let layer = ThrottleLayer::builder()
        .rule(Rule::new("per-client", Rate::per_minute(1), PeerIp).burst(1))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer(bare());
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..3 {
            // The in-memory store decides inside `call`, where the event is emitted.
            drop(service.call(request_from("192.0.2.9:1")));
        }
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let refusals: Vec<_> = log.lines().filter(|l| l.contains("limited")).collect();
    assert_eq!(refusals.len(), 2, "{log}");
    for line in refusals {
        assert!(
            line.contains("rule=per-client") && line.contains("client=192.0.2.9"),
            "{line}"
        );
    }
}
