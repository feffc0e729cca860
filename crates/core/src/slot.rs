//! Hash slots: every key belongs to one of 16384 slots, by Redis Cluster's rule, so that
//! cluster-aware Redis clients can route by themselves once the keyspace is partitioned.

use serde::{Deserialize, Serialize};

/// Number of hash slots (Redis Cluster's constant).
pub const SLOT_COUNT: u16 = 16384;

/// One of the 16384 hash slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Slot(pub u16);

const CRC16_XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

impl Slot {
    /// The slot of `key`: CRC16 (XMODEM) of the key modulo 16384, hashing only the part between the
    /// first `{` and the following `}` when that part is non-empty (a "hash tag"), so that
    /// `{user1000}.following` and `{user1000}.followers` share a slot.
    pub fn of_key(key: &[u8]) -> Slot {
        let hashed = hash_tag(key).unwrap_or(key);
        Slot(CRC16_XMODEM.checksum(hashed) % SLOT_COUNT)
    }

    /// The slot as two big-endian bytes: the prefix under which its keys are stored, so that a slot
    /// is one contiguous key range on disk and can later be moved between nodes by a range scan.
    pub fn prefix(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    if close == 0 { None } else { Some(&rest[..close]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_redis_cluster_keyslot() {
        // Values from `redis-cli CLUSTER KEYSLOT` against Redis 7.
        assert_eq!(Slot::of_key(b"foo"), Slot(12182));
        assert_eq!(Slot::of_key(b"bar"), Slot(5061));
        assert_eq!(Slot::of_key(b"hello"), Slot(866));
        assert_eq!(Slot::of_key(b""), Slot(0));
    }

    #[test]
    fn hash_tags_pick_the_braced_part() {
        assert_eq!(Slot::of_key(b"{user1000}.following"), Slot::of_key(b"user1000"));
        assert_eq!(Slot::of_key(b"{user1000}.followers"), Slot::of_key(b"user1000"));
        // An empty tag hashes the whole key, as Redis does.
        assert_eq!(Slot::of_key(b"foo{}{bar}"), Slot(CRC16_XMODEM.checksum(b"foo{}{bar}") % 16384));
        // Only the first `{` counts.
        assert_eq!(Slot::of_key(b"foo{{bar}}zap"), Slot::of_key(b"{bar"));
        // No closing brace: the whole key.
        assert_eq!(Slot::of_key(b"foo{bar"), Slot(CRC16_XMODEM.checksum(b"foo{bar") % 16384));
    }
}
