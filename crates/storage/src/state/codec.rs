//! How the key-value state is laid out in fjall's keyspaces.
//!
//! ```text
//! data:    slot:u16be key                  -> flags:u8 [expire_at:u64le if flags & 1] value
//! expiry:  expire_at:u64be slot:u16be key  -> (empty)
//! meta:    "applied_index"                 -> u64le
//!          "applied_term"                  -> u64le
//!          "key_count"                     -> u64le
//! ```
//!
//! Data keys start with the slot so that a slot is one contiguous range (for slot migration and
//! for scans in (slot, key) order); expiry keys start with the big-endian expiry so that the keys
//! due first come first.

use bytes::Bytes;
use chorus_core::{Slot, StoredValue, UnixMillis};

const SLOT_PREFIX_BYTES: usize = 2;
const EXPIRY_PREFIX_BYTES: usize = 8 + SLOT_PREFIX_BYTES;
const FLAG_HAS_EXPIRY: u8 = 1;
const FLAGS_KNOWN: u8 = FLAG_HAS_EXPIRY;
const VALUE_HEADER_BYTES_MAX: usize = 1 + 8;

/// The longest key the store accepts: fjall keys are at most `u16::MAX` bytes, and the expiry
/// index adds a 10-byte prefix. Callers must reject longer keys before they enter the replication
/// log, or every replica would fail to apply the entry.
pub const KEY_BYTES_MAX: usize = u16::MAX as usize - EXPIRY_PREFIX_BYTES;

/// The largest value the store accepts (fjall values are at most `u32::MAX` bytes, and the value
/// header takes up to 9 of them).
pub const VALUE_BYTES_MAX: usize = u32::MAX as usize - VALUE_HEADER_BYTES_MAX;

pub(crate) const APPLIED_INDEX_KEY: &[u8] = b"applied_index";
pub(crate) const APPLIED_TERM_KEY: &[u8] = b"applied_term";
pub(crate) const KEY_COUNT_KEY: &[u8] = b"key_count";

pub(crate) fn data_key(key: &[u8]) -> Vec<u8> {
    data_key_in_slot(Slot::of_key(key), key)
}

pub(crate) fn data_key_in_slot(slot: Slot, key: &[u8]) -> Vec<u8> {
    let mut data_key = Vec::with_capacity(SLOT_PREFIX_BYTES + key.len());
    data_key.extend_from_slice(&slot.prefix());
    data_key.extend_from_slice(key);
    data_key
}

/// The user key inside a data key.
pub(crate) fn key_of_data_key(data_key: &[u8]) -> Result<&[u8], String> {
    data_key.get(SLOT_PREFIX_BYTES..).ok_or_else(|| format!("data key of {} bytes has no slot prefix", data_key.len()))
}

pub(crate) fn expiry_key(expire_at: UnixMillis, data_key: &[u8]) -> Vec<u8> {
    let mut expiry_key = Vec::with_capacity(8 + data_key.len());
    expiry_key.extend_from_slice(&expire_at.0.to_be_bytes());
    expiry_key.extend_from_slice(data_key);
    expiry_key
}

/// The user key inside an expiry key.
pub(crate) fn key_of_expiry_key(expiry_key: &[u8]) -> Result<&[u8], String> {
    expiry_key
        .get(EXPIRY_PREFIX_BYTES..)
        .ok_or_else(|| format!("expiry key of {} bytes has no prefix", expiry_key.len()))
}

/// The exclusive upper bound of the expiry keys due at `now`, or `None` if every key is due.
pub(crate) fn expiry_keys_due_end(now: UnixMillis) -> Option<[u8; 8]> {
    now.0.checked_add(1).map(u64::to_be_bytes)
}

pub(crate) fn encode_value(value: &[u8], expire_at: Option<UnixMillis>) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(VALUE_HEADER_BYTES_MAX + value.len());
    match expire_at {
        Some(at) => {
            encoded.push(FLAG_HAS_EXPIRY);
            encoded.extend_from_slice(&at.0.to_le_bytes());
        }
        None => encoded.push(0),
    }
    encoded.extend_from_slice(value);
    encoded
}

/// The expiry and the offset of the value bytes in an encoded value.
fn decode_value_header(encoded: &[u8]) -> Result<(Option<UnixMillis>, usize), String> {
    let Some((&flags, rest)) = encoded.split_first() else {
        return Err("empty stored value".to_owned());
    };
    if flags & !FLAGS_KNOWN != 0 {
        return Err(format!("stored value has unknown flags {flags:#04x}"));
    }
    if flags & FLAG_HAS_EXPIRY == 0 {
        return Ok((None, 1));
    }
    let Some(at) = rest.get(..8) else {
        return Err(format!("stored value of {} bytes cut inside its expiry", encoded.len()));
    };
    let mut at_bytes = [0u8; 8];
    at_bytes.copy_from_slice(at);
    Ok((Some(UnixMillis(u64::from_le_bytes(at_bytes))), 1 + 8))
}

pub(crate) fn decode_expiry(encoded: &[u8]) -> Result<Option<UnixMillis>, String> {
    decode_value_header(encoded).map(|(expire_at, _)| expire_at)
}

pub(crate) fn decode_value(encoded: &[u8]) -> Result<StoredValue, String> {
    let (expire_at, value_start) = decode_value_header(encoded)?;
    Ok(StoredValue { value: Bytes::copy_from_slice(&encoded[value_start..]), expire_at })
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Result<u64, String> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| format!("expected 8 bytes, found {}", bytes.len()))?;
    Ok(u64::from_le_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for expire_at in [None, Some(UnixMillis(0)), Some(UnixMillis(u64::MAX))] {
            for value in [&b""[..], b"v", &[0u8, 1, 0xff]] {
                let decoded = decode_value(&encode_value(value, expire_at)).unwrap();
                assert_eq!(decoded, StoredValue { value: Bytes::copy_from_slice(value), expire_at });
            }
        }
    }

    #[test]
    fn bad_value_headers_are_errors_not_panics() {
        assert!(decode_value(b"").is_err());
        assert!(decode_value(&[FLAG_HAS_EXPIRY, 1, 2, 3]).is_err());
        assert!(decode_value(&[0x80, 1, 2, 3]).is_err());
        assert!(decode_u64(b"1234567").is_err());
    }

    #[test]
    fn expiry_keys_sort_by_time_then_slot_then_key() {
        let early = expiry_key(UnixMillis(255), &data_key(b"zzz"));
        let late = expiry_key(UnixMillis(256), &data_key(b"aaa"));
        assert!(early < late, "big-endian time must dominate the order");
        assert_eq!(key_of_expiry_key(&late).unwrap(), b"aaa");
        let end = expiry_keys_due_end(UnixMillis(255)).unwrap();
        assert!(early.as_slice() < end.as_slice());
        assert!(late.as_slice() >= end.as_slice());
        assert_eq!(expiry_keys_due_end(UnixMillis(u64::MAX)), None);
    }

    #[test]
    fn data_keys_group_by_slot() {
        let data_key = data_key(b"{user}.a");
        assert_eq!(&data_key[..2], &Slot::of_key(b"user").prefix());
        assert_eq!(key_of_data_key(&data_key).unwrap(), b"{user}.a");
        assert!(key_of_data_key(b"x").is_err());
    }
}
