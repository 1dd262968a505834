//! Request paths that must not reach a router or an upstream as they are.

/// Whether `path` holds a `.` or `..` segment, literally or percent-encoded (`%2e%2E`).
///
/// A layer that routes or rewrites by path refuses these: `/v1/../v2/x` would be matched as
/// `v1` here and resolved as `v2` by whatever sits behind, and `/api/../../secret` would climb
/// out of an upstream's base path.
///
/// # Example
///
/// ```
/// use tollgate_core::has_dot_segment;
///
/// assert!(has_dot_segment("/v1/../admin"));
/// assert!(has_dot_segment("/v1/%2E%2e/admin"));
/// assert!(!has_dot_segment("/v1/orders.json"));
/// ```
pub fn has_dot_segment(path: &str) -> bool {
    // Most paths have neither a dot nor an escape: one scan decides.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(is_dot_segment)
}

/// Whether one segment is `.` or `..`, literally or percent-encoded.
pub fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.replace("%2e", ".").replace("%2E", ".");
    decoded == "." || decoded == ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_literal_or_encoded() {
        assert!(has_dot_segment("/v1/../v2/orders"));
        assert!(has_dot_segment("/v1/.."));
        assert!(has_dot_segment("/v1/%2e%2E/v2"));
        assert!(has_dot_segment("/./x"));
        assert!(!has_dot_segment("/v1/orders.json"));
        assert!(!has_dot_segment("/v1/..hidden/x"));
        assert!(!has_dot_segment("/v1/a%20b"));
    }
}
