//! A store rebuilt from another (what a configuration reload does) keeps the allowances of
//! the rules that did not change, and only theirs.

use std::time::Duration;

use tollgate_core::key::Global;
use tollgate_core::{Key, ManualClock};
use tollgate_throttle::{index_rules, Check, MemoryStore, Outcome, Rate, Rule, ThrottleStore};

const CAPACITY: usize = 100;

/// `rules` numbered as a layer numbers them.
fn indexed(mut rules: Vec<Rule>) -> Vec<Rule> {
    index_rules(&mut rules, CAPACITY).unwrap();
    rules
}

/// Whether `store` admits one request of `key` under `rule`.
fn admits(store: &MemoryStore, rule: &Rule, key: &Key) -> bool {
    let Check::Ready(outcome) = store.check(rule, key) else {
        unreachable!("the memory store decides at once");
    };
    match outcome.unwrap() {
        Outcome::Allowed { .. } => true,
        Outcome::Limited { .. } => false,
    }
}

/// Spends `rule`'s whole burst for `key`, checking it was whole, and that the next request is
/// limited.
fn drain(store: &MemoryStore, rule: &Rule, key: &Key) {
    for n in 0..rule.burst_size().get() {
        assert!(admits(store, rule, key), "{}: request {n}", rule.name());
    }
    assert!(
        !admits(store, rule, key),
        "{}: after the burst",
        rule.name()
    );
}

fn per_minute(name: &str, requests: u32, burst: u32) -> Rule {
    Rule::new(name, Rate::per_minute(requests), Global).burst(burst)
}

fn client(n: u8) -> Key {
    Key::ip([192, 0, 2, n].into())
}

#[test]
fn an_unchanged_rule_keeps_the_allowance_its_keys_spent() {
    let clock = ManualClock::new();
    let rules = indexed(vec![per_minute("per-client", 1, 2)]);
    let before = MemoryStore::new(&rules, CAPACITY, clock.clone().into());
    drain(&before, &rules[0], &client(1));
    assert!(admits(&before, &rules[0], &client(2)));

    let again = indexed(vec![per_minute("per-client", 1, 2)]);
    let after = MemoryStore::carrying_over(&again, CAPACITY, clock.clone().into(), Some(&before));
    assert!(!admits(&after, &again[0], &client(1)));
    // Client 2 spent one of two.
    assert!(admits(&after, &again[0], &client(2)));
    assert!(!admits(&after, &again[0], &client(2)));
    assert!(admits(&after, &again[0], &client(3)));

    // The kept allowance refills at the rule's rate, as it would have without the rebuild.
    clock.advance(Duration::from_secs(60));
    assert!(admits(&after, &again[0], &client(1)));
    assert!(!admits(&after, &again[0], &client(1)));
}

#[test]
fn a_kept_rule_is_shared_with_the_store_it_came_from() {
    // Requests still in flight on the old configuration spend the same allowance.
    let clock = ManualClock::new();
    let rules = indexed(vec![per_minute("global", 1, 3)]);
    let before = MemoryStore::new(&rules, CAPACITY, clock.clone().into());
    let after = MemoryStore::carrying_over(&rules, CAPACITY, clock.into(), Some(&before));
    let key = Key::global();
    assert!(admits(&before, &rules[0], &key));
    assert!(admits(&after, &rules[0], &key));
    assert!(admits(&before, &rules[0], &key));
    assert!(!admits(&after, &rules[0], &key));
    assert!(!admits(&before, &rules[0], &key));
}

#[test]
fn a_rule_whose_burst_rate_or_capacity_changed_starts_afresh() {
    let clock = ManualClock::new();
    let key = Key::global();
    let rules = indexed(vec![per_minute("global", 1, 2)]);
    let before = MemoryStore::new(&rules, CAPACITY, clock.clone().into());
    drain(&before, &rules[0], &key);

    for changed in [
        per_minute("global", 1, 3),
        per_minute("global", 2, 2),
        per_minute("global", 1, 2).capacity(CAPACITY + 1),
    ] {
        let changed = indexed(vec![changed]);
        let after =
            MemoryStore::carrying_over(&changed, CAPACITY, clock.clone().into(), Some(&before));
        drain(&after, &changed[0], &key);
    }
    // The store they came from is untouched by theirs.
    assert!(!admits(&before, &rules[0], &key));
}

#[test]
fn a_new_or_renamed_rule_starts_afresh() {
    let clock = ManualClock::new();
    let key = Key::global();
    let rules = indexed(vec![per_minute("a", 1, 1), per_minute("b", 1, 1)]);
    let before = MemoryStore::new(&rules, CAPACITY, clock.clone().into());
    drain(&before, &rules[0], &key);
    drain(&before, &rules[1], &key);

    // "a" is renamed "c", a new rule comes first, and "b" moves to the end.
    let after_rules = indexed(vec![
        per_minute("new", 1, 1),
        per_minute("c", 1, 1),
        per_minute("b", 1, 1),
    ]);
    let after = MemoryStore::carrying_over(&after_rules, CAPACITY, clock.into(), Some(&before));
    drain(&after, &after_rules[0], &key);
    drain(&after, &after_rules[1], &key);
    assert!(
        !admits(&after, &after_rules[2], &key),
        "\"b\" kept its state"
    );
}

#[test]
fn a_reordered_rule_keeps_its_state_at_its_new_index() {
    let clock = ManualClock::new();
    let key = Key::global();
    let rules = indexed(vec![per_minute("spent", 1, 1), per_minute("whole", 1, 1)]);
    let before = MemoryStore::new(&rules, CAPACITY, clock.clone().into());
    drain(&before, &rules[0], &key);

    let swapped = indexed(vec![per_minute("whole", 1, 1), per_minute("spent", 1, 1)]);
    let after = MemoryStore::carrying_over(&swapped, CAPACITY, clock.into(), Some(&before));
    assert!(!admits(&after, &swapped[1], &key), "\"spent\" at index 1");
    drain(&after, &swapped[0], &key);
}
