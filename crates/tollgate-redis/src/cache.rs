//! The response cache's second level in Redis, shared by every instance.
