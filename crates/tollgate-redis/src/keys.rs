//! API keys in Redis.
