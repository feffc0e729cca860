//! A stable 64-bit hash for digests that replicas compare (Merkle leaves, version digests).
//!
//! Replicas of different builds compare these numbers, so the function is fixed forever: FNV-1a
//! (Fowler, Noll, Vo) over the bytes, finished with the SplitMix64 / MurmurHash3 mixer so that
//! nearby inputs spread over all 64 bits. Not cryptographic: it detects divergence between honest
//! replicas, it does not resist an adversary. Every variable-length field is prefixed with its
//! length, so two different field sequences never feed the same bytes.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

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

    pub fn u64(&mut self, value: u64) -> &mut StableHasher {
        self.raw(&value.to_le_bytes());
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
        assert_eq!(stable_hash64(b"chorus"), 0xb815_700f_a803_44a5);
        assert_eq!(stable_hash64(b""), 0x813f_0174_a236_7c13);
        assert_eq!(stable_hash64(b""), mix64(fnv1a(&0u64.to_le_bytes())));
    }

    #[test]
    fn length_prefixes_keep_field_boundaries() {
        let ab_c = StableHasher::new().bytes(b"ab").bytes(b"c").finish();
        let a_bc = StableHasher::new().bytes(b"a").bytes(b"bc").finish();
        assert_ne!(ab_c, a_bc);
    }
}
