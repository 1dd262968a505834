//! Quota counters and daily usage in Redis.
