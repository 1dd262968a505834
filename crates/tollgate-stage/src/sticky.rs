use std::hash::{Hash, Hasher};

use tollgate_core::Key;

/// Canary shares are counted in millionths of the clients: 0.0001 % steps.
pub(crate) const BUCKETS: u64 = 1_000_000;

/// The bucket (0 to 999,999) a client falls in for a stage.
///
/// The hash is fixed (FNV-1a with a SplitMix64 finish) rather than std's or a seeded one: a
/// client must land in the same bucket after a restart and on every gateway instance, and
/// std's hasher may change between Rust releases. The stage's name salts it, so each stage's
/// canary takes a different slice of the clients.
pub(crate) fn bucket(stage: &str, key: &Key) -> u64 {
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    hasher.write(stage.as_bytes());
    hasher.write_u8(0xff);
    key.hash(&mut hasher);
    splitmix(hasher.0) % BUCKETS
}

/// The bucket threshold of a percentage: clients in buckets below it go to the canary, so
/// raising the percent only ever moves clients from stable to canary.
pub(crate) fn threshold(percent: f64) -> u64 {
    (percent.clamp(0.0, 100.0) * (BUCKETS as f64 / 100.0)).round() as u64
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    // Fixed byte order, so every platform hashes a key the same way.
    fn write_u16(&mut self, n: u16) {
        self.write(&n.to_le_bytes());
    }

    fn write_u32(&mut self, n: u32) {
        self.write(&n.to_le_bytes());
    }

    fn write_u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes());
    }

    fn write_u128(&mut self, n: u128) {
        self.write(&n.to_le_bytes());
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&(n as u64).to_le_bytes());
    }
}

/// SplitMix64's finalizer: FNV's low bits are poorly mixed, and the bucket is taken from them.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const PINNED: u64 = 824_055;

    #[test]
    fn a_client_keeps_its_bucket_and_stages_split_differently() {
        let key = Key::ip(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
        assert_eq!(bucket("v2", &key), bucket("v2", &key));
        // Fixed across builds and platforms: a change here moves every client.
        assert_eq!(
            bucket("v2", &key),
            PINNED,
            "the bucket of 203.0.113.9 on v2 moved"
        );
        let spread: std::collections::HashSet<u64> = (0..64)
            .map(|i| bucket(&format!("stage-{i}"), &key))
            .collect();
        assert!(spread.len() > 60, "the stage name salts the bucket");
    }

    #[test]
    fn thresholds_count_millionths_and_clamp() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(10.0), 100_000);
        assert_eq!(threshold(0.0001), 1);
        assert_eq!(threshold(100.0), BUCKETS);
        assert_eq!(threshold(250.0), BUCKETS);
        assert_eq!(threshold(-1.0), 0);
    }

    #[test]
    fn buckets_spread_evenly() {
        let under_ten_percent = (0..100_000u32)
            .map(|i| Key::custom(i.to_le_bytes().to_vec()))
            .filter(|key| bucket("v2", key) < threshold(10.0))
            .count();
        assert!(
            (9_500..=10_500).contains(&under_ten_percent),
            "{under_ten_percent}"
        );
    }
}
