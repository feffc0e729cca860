//! The on-disk format of one log segment, and the parsing that recovery relies on.
//!
//! ```text
//! segment file  = header record*
//! header        = "CHLOG" version:u8 base_index:u64le crc32(previous 14 bytes):u32le
//! record        = payload_len:u32le crc32(payload):u32le payload
//! payload       = postcard(LogEntry)
//! ```
//!
//! A segment's file may be longer than its records: space written ahead of the appends (zeros;
//! see `LogOptions::preallocate`). A record never starts with a zero length, so an all-zero rest
//! of the file after the last record is its end, not damage.
//!
//! Nothing here trusts the bytes it reads: every length is checked against the buffer before it is
//! used, so recovery can be handed any file content without panicking.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use chorus_core::{LogEntry, LogIndex, Term};
use serde::Deserialize;

use crate::error::StorageError;

const SEGMENT_MAGIC: &[u8; 5] = b"CHLOG";
const SEGMENT_FORMAT_VERSION: u8 = 1;
pub(crate) const SEGMENT_HEADER_BYTES: usize = 5 + 1 + 8 + 4;
pub(crate) const RECORD_HEADER_BYTES: usize = 4 + 4;

const SEGMENT_EXTENSION: &str = ".log";
/// `u64::MAX` has 20 decimal digits, so every index fits and names sort like the indexes they hold.
const SEGMENT_NAME_DIGITS: usize = 20;

pub(crate) fn segment_file_name(base: LogIndex) -> String {
    format!("{:0width$}{SEGMENT_EXTENSION}", base.0, width = SEGMENT_NAME_DIGITS)
}

/// The base index encoded in a segment file name, or `None` for files that are not segments.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_suffix(SEGMENT_EXTENSION)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

pub(crate) fn encode_header(base: LogIndex) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..5].copy_from_slice(SEGMENT_MAGIC);
    header[5] = SEGMENT_FORMAT_VERSION;
    header[6..14].copy_from_slice(&base.0.to_le_bytes());
    let crc = crc32fast::hash(&header[..14]);
    header[14..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The base index stored in a segment header, or why the header is not one.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<LogIndex, String> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(format!("header is {} bytes, expected {SEGMENT_HEADER_BYTES}", bytes.len()));
    };
    if &header[..5] != SEGMENT_MAGIC {
        return Err("bad magic".to_owned());
    }
    let crc_stored = u32::from_le_bytes(array_at(header, 14));
    if crc32fast::hash(&header[..14]) != crc_stored {
        return Err("header checksum mismatch".to_owned());
    }
    if header[5] != SEGMENT_FORMAT_VERSION {
        return Err(format!("unsupported format version {}", header[5]));
    }
    Ok(LogIndex(u64::from_le_bytes(array_at(header, 6))))
}

/// Appends one record holding `entry` to `buf`.
pub(crate) fn encode_record(entry: &LogEntry, buf: Vec<u8>) -> Result<Vec<u8>, StorageError> {
    let record_start = buf.len();
    let mut buf = buf;
    buf.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    let mut buf = postcard::to_extend(entry, buf)
        .map_err(|error| StorageError::Encode(format!("log entry {}: {error}", entry.index)))?;
    let payload_start = record_start + RECORD_HEADER_BYTES;
    let payload_len = u32::try_from(buf.len() - payload_start)
        .map_err(|_| StorageError::Encode(format!("log entry {} is larger than 4 GiB", entry.index)))?;
    let crc = crc32fast::hash(&buf[payload_start..]);
    buf[record_start..record_start + 4].copy_from_slice(&payload_len.to_le_bytes());
    buf[record_start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// The fields recovery needs, decoded from the front of a payload without decoding the rest
/// (postcard encodes struct fields in declaration order).
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct EntryHead {
    pub index: LogIndex,
    pub term: Term,
}

#[derive(Debug)]
pub(crate) enum RecordRead<'a> {
    Valid {
        head: EntryHead,
        payload: &'a [u8],
        end: usize,
    },
    /// The record's header or payload runs past the end of the buffer.
    Incomplete,
    /// The record is all there but is not one we wrote.
    Invalid(String),
}

/// Reads the record starting at `offset` in `buf`.
pub(crate) fn read_record(buf: &[u8], offset: usize) -> RecordRead<'_> {
    let Some(header) = buf.get(offset..).and_then(|rest| rest.get(..RECORD_HEADER_BYTES)) else {
        return RecordRead::Incomplete;
    };
    let payload_len = u32::from_le_bytes(array_at(header, 0)) as usize;
    let crc_stored = u32::from_le_bytes(array_at(header, 4));
    if payload_len == 0 {
        return RecordRead::Invalid("zero-length record".to_owned());
    }
    let payload_start = offset + RECORD_HEADER_BYTES;
    let Some(payload) = buf.get(payload_start..).and_then(|rest| rest.get(..payload_len)) else {
        return RecordRead::Incomplete;
    };
    if crc32fast::hash(payload) != crc_stored {
        return RecordRead::Invalid("record checksum mismatch".to_owned());
    }
    match postcard::take_from_bytes::<EntryHead>(payload) {
        Ok((head, _)) => RecordRead::Valid { head, payload, end: payload_start + payload_len },
        Err(error) => RecordRead::Invalid(format!("record payload does not decode: {error}")),
    }
}

/// Whether any record we could have written, holding an index at or after `index_min`, starts
/// anywhere after `offset`. Recovery uses it to tell a torn tail (nothing valid after the damage:
/// the end of an interrupted write) from damage in the middle (valid records follow: truncating
/// there would throw away entries that may have been acknowledged).
pub(crate) fn valid_record_after(buf: &[u8], offset: usize, index_min: LogIndex) -> Option<usize> {
    // Cheap checks first (length fits, the head decodes to a plausible index) so that scanning a
    // long stretch of garbage stays linear; the checksum is computed only for plausible candidates.
    let record_bytes_min = RECORD_HEADER_BYTES + 2;
    let candidates = offset.saturating_add(1)..buf.len().saturating_sub(record_bytes_min - 1);
    candidates.into_iter().find(|&candidate| {
        let header = &buf[candidate..candidate + RECORD_HEADER_BYTES];
        let payload_len = u32::from_le_bytes(array_at(header, 0)) as usize;
        let payload_start = candidate + RECORD_HEADER_BYTES;
        if payload_len == 0 || payload_len > buf.len() - payload_start {
            return false;
        }
        let payload = &buf[payload_start..payload_start + payload_len];
        let records_max_after = (buf.len() - candidate) as u64 / record_bytes_min as u64;
        let plausible = postcard::take_from_bytes::<EntryHead>(payload)
            .is_ok_and(|(head, _)| head.index >= index_min && head.index.0 - index_min.0 <= records_max_after);
        plausible && crc32fast::hash(payload) == u32::from_le_bytes(array_at(header, 4))
    })
}

/// What recovery found in one segment file.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    pub heads: Vec<EntryHead>,
    pub record_offsets: Vec<u64>,
    /// Bytes up to the end of the last good record.
    pub valid_len: u64,
    pub damage: Option<Damage>,
}

#[derive(Debug)]
pub(crate) struct Damage {
    pub offset: u64,
    pub detail: String,
    /// Whether a valid record starts after the damage, which makes it corruption rather than a
    /// torn write.
    pub valid_record_follows: bool,
}

/// Scans the records of a segment whose header has been checked, expecting the first to hold
/// `base`. A record with a valid checksum but an unexpected index is corruption at once: it cannot
/// come from a torn write.
pub(crate) fn scan_records(path: &Path, buf: &[u8], base: LogIndex) -> Result<SegmentScan, StorageError> {
    let mut scan = SegmentScan {
        heads: Vec::new(),
        record_offsets: Vec::new(),
        valid_len: SEGMENT_HEADER_BYTES as u64,
        damage: None,
    };
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut index_expected = base;
    while offset < buf.len() {
        if is_reserved_space(&buf[offset..]) {
            break;
        }
        let detail = match read_record(buf, offset) {
            RecordRead::Valid { head, end, .. } => {
                if head.index != index_expected {
                    return Err(StorageError::Corrupt {
                        path: path.to_owned(),
                        offset: offset as u64,
                        detail: format!("record holds index {}, expected {index_expected}", head.index),
                    });
                }
                scan.heads.push(head);
                scan.record_offsets.push(offset as u64);
                index_expected = index_expected.next();
                offset = end;
                scan.valid_len = end as u64;
                continue;
            }
            RecordRead::Incomplete => "record runs past the end of the file".to_owned(),
            RecordRead::Invalid(detail) => detail,
        };
        let valid_record_follows = valid_record_after(buf, offset, index_expected).is_some();
        scan.damage = Some(Damage { offset: offset as u64, detail, valid_record_follows });
        break;
    }
    Ok(scan)
}

/// Whether `rest` (the bytes after the last record) is space written ahead: all zeros. A torn
/// record leaves some non-zero byte (its length is never zero), so it is not mistaken for this.
fn is_reserved_space(rest: &[u8]) -> bool {
    rest.iter().all(|&byte| byte == 0)
}

/// Writes zeros to `file` from `from` (its length) up to `length`; returns the new length, or
/// `None` when a write fails (a full disk: the zeros are an optimization, the caller goes on
/// without them; whatever part was written reads as zeros too).
pub(crate) fn write_zeros(file: &File, path: &Path, from: u64, length: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;

    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < length {
        let piece = usize::try_from(length - at).map_or(ZEROS.len(), |left| left.min(ZEROS.len()));
        if let Err(error) = file.write_all_at(&ZEROS[..piece], at) {
            tracing::debug!(path = %path.display(), %error, "cannot write a log segment's space ahead; it grows by appends");
            return None;
        }
        at += piece as u64;
    }
    Some(length)
}

/// Opens a segment file for reading and writing (reads and writes are positioned, so one handle
/// serves both).
pub(crate) fn open_segment_file(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| StorageError::io(format!("open {}", path.display()), error))
}

/// Creates an empty segment holding `base` next and makes it durable (file and directory entry),
/// so that entries later synced in it can never sit in a file the directory forgot.
pub(crate) fn create_segment_file(dir: &Path, base: LogIndex) -> Result<(PathBuf, File), StorageError> {
    use std::os::unix::fs::FileExt;

    let path = dir.join(segment_file_name(base));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|error| StorageError::io(format!("create {}", path.display()), error))?;
    file.write_all_at(&encode_header(base), 0)
        .map_err(|error| StorageError::io(format!("write header of {}", path.display()), error))?;
    file.sync_all().map_err(|error| StorageError::io(format!("fsync {}", path.display()), error))?;
    sync_dir(dir)?;
    Ok((path, file))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| StorageError::io(format!("fsync directory {}", dir.display()), error))
}

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(&bytes[at..at + N]);
    array
}

#[cfg(test)]
mod tests {
    use chorus_core::EntryPayload;

    use super::*;

    fn entry(index: u64) -> LogEntry {
        LogEntry { index: LogIndex(index), term: Term(3), payload: EntryPayload::Noop }
    }

    #[test]
    fn file_names_round_trip_and_sort_by_index() {
        assert_eq!(segment_file_name(LogIndex(1)), "00000000000000000001.log");
        assert_eq!(parse_segment_file_name("00000000000000000001.log"), Some(LogIndex(1)));
        let max = segment_file_name(LogIndex(u64::MAX));
        assert_eq!(parse_segment_file_name(&max), Some(LogIndex(u64::MAX)));
        assert!(segment_file_name(LogIndex(9)) < segment_file_name(LogIndex(10)));
        assert_eq!(parse_segment_file_name("1.log"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.log"), None);
        assert_eq!(parse_segment_file_name("99999999999999999999.log"), None, "overflows u64");
        assert_eq!(parse_segment_file_name("log.meta"), None);
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = encode_header(LogIndex(42));
        assert_eq!(decode_header(&header), Ok(LogIndex(42)));
        assert!(decode_header(&header[..SEGMENT_HEADER_BYTES - 1]).is_err());
        for byte in 0..SEGMENT_HEADER_BYTES {
            let mut damaged = header;
            damaged[byte] ^= 0x10;
            assert!(decode_header(&damaged).is_err(), "flip in byte {byte} went unnoticed");
        }
    }

    #[test]
    fn record_round_trips() {
        let buf = encode_record(&entry(7), Vec::new()).expect("encode");
        match read_record(&buf, 0) {
            RecordRead::Valid { head, payload, end } => {
                assert_eq!(head.index, LogIndex(7));
                assert_eq!(head.term, Term(3));
                assert_eq!(end, buf.len());
                let decoded: LogEntry = postcard::from_bytes(payload).expect("decode");
                assert_eq!(decoded, entry(7));
            }
            other => panic!("expected a valid record, got {other:?}"),
        }
    }

    #[test]
    fn read_record_never_panics_on_short_or_garbage_input() {
        let buf = encode_record(&entry(7), Vec::new()).expect("encode");
        for cut in 0..buf.len() {
            assert!(matches!(read_record(&buf[..cut], 0), RecordRead::Incomplete), "cut at {cut}");
        }
        let garbage = [0xffu8; 64];
        assert!(matches!(read_record(&garbage, 0), RecordRead::Incomplete));
        assert!(matches!(read_record(&[0u8; 64], 0), RecordRead::Invalid(_)));
        assert!(matches!(read_record(&buf, buf.len() + 10), RecordRead::Incomplete));
        assert!(valid_record_after(&[], 0, LogIndex(1)).is_none());
        assert!(valid_record_after(&garbage, 100, LogIndex(1)).is_none());
    }
}
