//! Whole-stack tests of aggregation and the HTTP upstream: written next.
