//! A stable 64-bit hash for digests that replicas compare (Merkle leaves, version digests).
//!
//! Replicas of different builds compare these numbers, so the function is fixed forever: FNV-1a
//! (Fowler, Noll, Vo) over byte strings, whole words mixed in with the SplitMix64 / MurmurHash3
//! finalizer, and that finalizer again at the end so that nearby inputs spread over all 64 bits. Not cryptographic: it detects divergence between honest
//! replicas, it does not resist an adversary. Every variable-length field is prefixed with its
//! length, so two different field sequences never feed the same bytes.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A streaming hasher: feed fields in a fixed order, then [`StableHasher::finish`].
#[derive(Debug, Clone)]
pub struct StableHasher {
    state: u64,
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher { state: FNV_OFFSET_BASIS }
    }
}

impl StableHasher {
    pub fn new() -> StableHasher {
        StableHasher::default()
    }

    fn raw(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.state ^= u64::from(byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }

    /// A fixed-size field, absorbed a word at a time: `state = mix64(state ^ value) + GOLDEN`
    /// (a bijection of the state for each value, eight times cheaper than byte by byte).
    pub fn u64(&mut self, value: u64) -> &mut StableHasher {
        self.state = mix64(self.state ^ value).wrapping_add(GOLDEN);
        self
    }

    /// A variable-length field: its length, then its bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut StableHasher {
        self.u64(bytes.len() as u64);
        self.raw(bytes);
        self
    }

    pub fn finish(&self) -> u64 {
        mix64(self.state)
    }
}

/// The hash of one byte string (a key).
pub fn stable_hash64(bytes: &[u8]) -> u64 {
    StableHasher::new().bytes(bytes).finish()
}

/// The SplitMix64 finalizer: a bijection on `u64` with full avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv1a(bytes: &[u8]) -> u64 {
        let mut hasher = StableHasher::new();
        hasher.raw(bytes);
        hasher.state
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn is_stable_across_builds() {
        // Pinned: a change here breaks anti-entropy between nodes of different versions.
        assert_eq!(stable_hash64(b"chorus"), 0xba76_d17f_8d9c_ff88);
        assert_eq!(stable_hash64(b""), 0xe587_d3df_f9e9_2ed0);
        let mut empty = StableHasher::new();
        empty.u64(0);
        assert_eq!(stable_hash64(b""), empty.finish());
    }

    #[test]
    fn words_are_not_commutative() {
        let ab = StableHasher::new().u64(1).u64(2).finish();
        let ba = StableHasher::new().u64(2).u64(1).finish();
        assert_ne!(ab, ba);
        assert_ne!(StableHasher::new().u64(0).finish(), StableHasher::new().u64(0).u64(0).finish());
    }

    #[test]
    fn length_prefixes_keep_field_boundaries() {
        let ab_c = StableHasher::new().bytes(b"ab").bytes(b"c").finish();
        let a_bc = StableHasher::new().bytes(b"a").bytes(b"bc").finish();
        assert_ne!(ab_c, a_bc);
    }
}
