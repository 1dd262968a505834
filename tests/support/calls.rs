//! A counter of the calls that reach one step or handler, shared by its clones.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts the calls that reach one step or handler.
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    /// Counts one call; returns how many there have been, this one included.
    pub fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// How many calls there have been.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}
