//! The replication log: our own segmented append-only files.
//!
//! ```text
//! dir/
//!   log.meta                    prev point (index, term before the first entry), reset flag
//!   00000000000000000001.log    sealed segment: entries 1..=k
//!   0000000000000000000k+1.log  active segment: appends go here, one write per append call
//! ```
//!
//! Durability is explicit: `append` only hands bytes to the OS; `sync` (one `fdatasync`) makes
//! every earlier append durable, so a driver can group-commit many appends behind one sync.
//! Recovery (`open`) keeps every record it can prove we wrote: a torn record at the very end of the
//! last segment is the unsynced tail of a write the process died in, and is cut off; any other bad
//! record is reported as corruption, never skipped.

mod meta;
mod segment;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chorus_core::{LogEntry, LogIndex, Term};

use crate::error::StorageError;
use meta::LogMeta;
use segment::{
    RecordRead, SEGMENT_HEADER_BYTES, create_segment_file, decode_header, open_segment_file, parse_segment_file_name,
    read_record, scan_records, sync_dir, valid_record_after,
};

/// Tuning of a [`SegmentedLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// A segment that has grown to this size is sealed before the next append. A single append
    /// is never split, so a segment can exceed this by one append's worth of bytes.
    pub segment_bytes_max: u64,
    /// Write the active segment's space ahead of its appends: zeros, in chunks of
    /// [`RESERVE_CHUNK_BYTES`] (or `segment_bytes_max` if smaller), so that appends overwrite
    /// blocks the file already has. An `fdatasync` after an append that grew the file, or that
    /// wrote into space reserved with `fallocate` (its extents still marked unwritten), must also
    /// write metadata: a second device write in series with the data's. Into written zeros it
    /// writes the data alone. Measured in a 3-node cluster on this project's ext4 machines: mean
    /// `fdatasync` 0.34 ms appending, 0.31 ms into `fallocate`d space, 0.22 ms into zeros (see
    /// docs/storage-and-protocol.md). Zeros read as the end of the segment in recovery.
    pub preallocate: bool,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions { segment_bytes_max: 64 * 1024 * 1024, preallocate: true }
    }
}

/// Zeros written at a time ahead of the active segment's appends: one file-size change (an inode
/// write in that round's `fdatasync`, with the chunk's data) per this many bytes of log, small
/// enough that the round that writes it is not held up long, and at most this much unused space.
pub const RESERVE_CHUNK_BYTES: u64 = 256 * 1024;

impl LogOptions {
    /// Bytes reserved at a time, if reserving.
    fn reserve_chunk_bytes(&self) -> Option<u64> {
        self.preallocate.then_some(RESERVE_CHUNK_BYTES.min(self.segment_bytes_max).max(1))
    }
}

/// The replication log on disk. See the module documentation for the layout and the recovery
/// rules.
///
/// Writers take `&mut self`; `read` takes `&self` and uses positioned reads, so it never disturbs
/// an append in progress on the same file.
#[derive(Debug)]
pub struct SegmentedLog {
    dir: PathBuf,
    options: LogOptions,
    meta: LogMeta,
    /// Sorted by base index, contiguous; never empty. The last one is active (takes appends).
    segments: Vec<Segment>,
    term_runs: TermRuns,
    /// Set by a failed fsync (or a failed multi-step change whose on-disk outcome is unknown).
    poisoned: bool,
}

#[derive(Debug)]
struct Segment {
    base: LogIndex,
    path: PathBuf,
    file: File,
    /// Byte offset of the record of entry `base + i`, so a read seeks straight to it.
    record_offsets: Vec<u64>,
    /// Where the records end (the next append goes here).
    len_bytes: u64,
    /// The file's length: the space from `len_bytes` to here is reserved and reads as zeros.
    file_bytes: u64,
    /// Writing space ahead failed for this file (a full disk): it grows by appends.
    reserve_failed: bool,
}

impl Segment {
    fn entry_count(&self) -> u64 {
        self.record_offsets.len() as u64
    }

    /// The index of the last entry, or `base - 1` if the segment is empty.
    fn last_index(&self) -> LogIndex {
        LogIndex(self.base.0 + self.entry_count() - 1)
    }

    /// Makes sure the file reaches `end` in written zeros, writing them up to the next multiple
    /// of `chunk` when it does not (see `LogOptions::preallocate`). The zeros need no sync of
    /// their own: the next `fdatasync` makes them durable with the records written into them, as
    /// for any append that grows a file. A refusal (a full disk) only means the file grows by
    /// appends.
    fn reserve(&mut self, end: u64, chunk: Option<u64>) {
        let Some(chunk) = chunk else { return };
        if end <= self.file_bytes || self.reserve_failed {
            return;
        }
        match segment::write_zeros(&self.file, &self.path, self.file_bytes, end.div_ceil(chunk) * chunk) {
            Some(file_bytes) => self.file_bytes = file_bytes,
            None => self.reserve_failed = true,
        }
    }

    /// Byte offset where the record of `index` starts; `index` may be one past the last entry.
    fn offset_of(&self, index: LogIndex) -> u64 {
        let position = (index.0 - self.base.0) as usize;
        self.record_offsets.get(position).copied().unwrap_or(self.len_bytes)
    }
}

/// The term of every entry, stored as runs (terms change rarely), so `term_at` never reads disk.
#[derive(Debug, Default)]
struct TermRuns {
    /// `(first index of the run, term)`, ascending in both.
    runs: Vec<(LogIndex, Term)>,
}

impl TermRuns {
    fn push(&mut self, index: LogIndex, term: Term) {
        if self.runs.last().is_none_or(|&(_, last_term)| last_term != term) {
            self.runs.push((index, term));
        }
    }

    /// The term of `index`, which the caller knows is present.
    fn term_at(&self, index: LogIndex) -> Option<Term> {
        let runs_starting_at_or_before = self.runs.partition_point(|&(start, _)| start <= index);
        let position = runs_starting_at_or_before.checked_sub(1)?;
        Some(self.runs[position].1)
    }

    fn remove_from(&mut self, index: LogIndex) {
        self.runs.retain(|&(start, _)| start < index);
    }

    fn remove_before(&mut self, index: LogIndex) {
        let runs_starting_at_or_before = self.runs.partition_point(|&(start, _)| start <= index);
        let still_needed_from = runs_starting_at_or_before.saturating_sub(1);
        self.runs.drain(..still_needed_from);
    }
}

impl SegmentedLog {
    /// Opens the log in `dir`, creating it if missing, and recovers it: every record is checked;
    /// a torn record at the end of the last segment is truncated (with a warning); any other bad
    /// record, or a gap between segments, is [`StorageError::Corrupt`].
    pub fn open(dir: &Path, options: LogOptions) -> Result<SegmentedLog, StorageError> {
        assert!(options.segment_bytes_max > 0, "segment_bytes_max must be positive");
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|error| StorageError::io(format!("create {}", dir.display()), error))?;
            // The new directory's own entry must be durable before anything synced inside it is.
            if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut bases = list_segment_bases(dir)?;

        let meta_on_disk = LogMeta::read(dir)?;
        let mut meta = meta_on_disk.unwrap_or_default();

        if meta.reset_pending {
            tracing::warn!(dir = %dir.display(), "finishing a log reset interrupted by a crash");
            remove_segments(dir, &bases)?;
            bases.clear();
            meta.reset_pending = false;
        }

        // A compaction records its new prev point before deleting segments; finish any deletion a
        // crash interrupted. Segment `i` holds `bases[i]..bases[i + 1]`, so it is wholly compacted
        // when the next one starts at or before `prev + 1`.
        let first_kept = bases.windows(2).take_while(|pair| pair[1] <= meta.prev_index.next()).count();
        if first_kept > 0 {
            tracing::info!(
                dir = %dir.display(),
                segments = first_kept,
                "removing log segments left over from an interrupted compaction"
            );
            remove_segments(dir, &bases[..first_kept])?;
            bases.drain(..first_kept);
        }

        if bases.is_empty() {
            create_segment_file(dir, meta.prev_index.next())?;
            bases.push(meta.prev_index.next());
        }
        if meta_on_disk != Some(meta) {
            meta.write(dir)?;
        }

        let mut log = SegmentedLog {
            dir: dir.to_owned(),
            options,
            meta,
            segments: Vec::with_capacity(bases.len()),
            term_runs: TermRuns::default(),
            poisoned: false,
        };
        let last_position = bases.len() - 1;
        for (position, &base) in bases.iter().enumerate() {
            let segment = log.recover_segment(base, position == last_position)?;
            log.segments.push(segment);
        }
        // The previous process may have died between a write and its sync; what recovery just
        // accepted is about to be reported (last index, votes), so it must be durable first.
        let active = log.active_segment();
        active.file.sync_data().map_err(|error| StorageError::io(format!("fsync {}", active.path.display()), error))?;
        Ok(log)
    }

    fn recover_segment(&mut self, base: LogIndex, is_last: bool) -> Result<Segment, StorageError> {
        let path = self.dir.join(segment::segment_file_name(base));
        let corrupt = |offset: u64, detail: String| StorageError::Corrupt { path: path.clone(), offset, detail };
        let index_expected = self.last_index().next();
        if base != index_expected {
            return Err(corrupt(0, format!("segment starts at {base}, expected {index_expected}")));
        }
        let mut bytes =
            std::fs::read(&path).map_err(|error| StorageError::io(format!("read {}", path.display()), error))?;
        let file = open_segment_file(&path)?;

        if let Err(detail) = decode_header(&bytes) {
            // A crash while the segment was being created leaves a missing or partial header, and
            // nothing after it.
            let nothing_after = valid_record_after(&bytes, 0, base).is_none();
            if !(is_last && nothing_after) {
                return Err(corrupt(0, detail));
            }
            tracing::warn!(
                path = %path.display(),
                detail,
                bytes_dropped = bytes.len(),
                "rewriting the torn header of the last log segment"
            );
            file.set_len(0)
                .and_then(|()| file.write_all_at(&segment::encode_header(base), 0))
                .and_then(|()| file.sync_all())
                .map_err(|error| StorageError::io(format!("rewrite {}", path.display()), error))?;
            bytes = segment::encode_header(base).to_vec();
        }
        match decode_header(&bytes) {
            Ok(header_base) if header_base == base => {}
            Ok(header_base) => {
                return Err(corrupt(0, format!("header says base {header_base}, file name {base}")));
            }
            Err(detail) => return Err(corrupt(0, detail)),
        }

        let scan = scan_records(&path, &bytes, base)?;
        if let Some(damage) = &scan.damage {
            if !is_last || damage.valid_record_follows {
                let place = if is_last { "followed by valid records" } else { "in a sealed segment" };
                return Err(corrupt(damage.offset, format!("{} ({place})", damage.detail)));
            }
            let bytes_dropped = bytes.len() as u64 - scan.valid_len;
            tracing::warn!(
                path = %path.display(),
                offset = damage.offset,
                detail = damage.detail,
                bytes_dropped,
                "truncating a torn write at the end of the log"
            );
            file.set_len(scan.valid_len)
                .and_then(|()| file.sync_all())
                .map_err(|error| StorageError::io(format!("truncate {}", path.display()), error))?;
            bytes.truncate(scan.valid_len as usize);
        }
        for head in &scan.heads {
            self.term_runs.push(head.index, head.term);
        }
        let mut segment = Segment {
            base,
            path,
            file,
            record_offsets: scan.record_offsets,
            len_bytes: scan.valid_len,
            file_bytes: bytes.len() as u64,
            reserve_failed: false,
        };
        if is_last {
            segment.reserve(scan.valid_len + 1, self.options.reserve_chunk_bytes());
        }
        Ok(segment)
    }

    /// The first entry present; when the log is empty, the index the next append must have.
    pub fn first_index(&self) -> LogIndex {
        self.meta.prev_index.next()
    }

    /// The last entry present; when the log is empty, the entry before the first (the snapshot
    /// point after a reset, or 0 for a log that never had one).
    pub fn last_index(&self) -> LogIndex {
        self.segments.last().map_or(self.meta.prev_index, Segment::last_index)
    }

    /// The term of [`last_index`](Self::last_index).
    pub fn last_term(&self) -> Term {
        let last = self.last_index();
        if last == self.meta.prev_index {
            self.meta.prev_term
        } else {
            self.term_runs.term_at(last).unwrap_or(self.meta.prev_term)
        }
    }

    /// The term of the entry at `index`: known for every entry present and for the entry just
    /// before the first (the compaction or snapshot point, index 0 with term 0 in a fresh log);
    /// `None` for anything else.
    pub fn term_at(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        if index == self.meta.prev_index {
            return Ok(Some(self.meta.prev_term));
        }
        if index < self.first_index() || index > self.last_index() {
            return Ok(None);
        }
        Ok(self.term_runs.term_at(index))
    }

    /// Bytes the segment files take on disk.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.len_bytes).sum()
    }

    /// The directory holding the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `entries` after the last entry, as one write to the OS. Not durable until
    /// [`sync`](Self::sync) returns.
    ///
    /// # Panics
    /// If the entries do not continue the log (`last_index + 1`, `+ 2`, ...) or a term goes
    /// backwards: that is a bug in the caller.
    pub fn append(&mut self, entries: &[LogEntry]) -> Result<(), StorageError> {
        self.check_not_poisoned()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut index_expected = self.last_index().next();
        let mut term_min = self.last_term();
        assert_eq!(first.index, index_expected, "append does not continue the log");
        for entry in entries {
            assert_eq!(entry.index, index_expected, "appended entries are not contiguous");
            assert!(entry.term >= term_min, "term goes backwards at index {}", entry.index);
            index_expected = index_expected.next();
            term_min = entry.term;
        }

        let mut buf = Vec::new();
        let mut record_starts = Vec::with_capacity(entries.len());
        for entry in entries {
            record_starts.push(buf.len() as u64);
            buf = segment::encode_record(entry, buf)?;
        }

        let active = self.active_segment();
        if active.len_bytes >= self.options.segment_bytes_max && active.entry_count() > 0 {
            let result = self.rotate();
            self.poison_on_error(result)?;
        }

        let chunk = self.options.reserve_chunk_bytes();
        let active = self.active_segment_mut();
        let write_at = active.len_bytes;
        // Reserve first: only the append that crosses into a new chunk changes the file's size.
        active.reserve(write_at + buf.len() as u64, chunk);
        if let Err(error) = active.file.write_all_at(&buf, write_at) {
            // A partial write may have left whole records past the length we track. The next
            // append overwrites from that length and may be shorter, so recovery could later find
            // those stale records after the new ones and take them for entries.
            let rollback = active.file.set_len(write_at);
            // The cut also dropped the zeros written ahead: the next append writes them again.
            active.file_bytes = write_at;
            let context = format!("append to {}", active.path.display());
            if let Err(rollback_error) = rollback {
                tracing::error!(%rollback_error, "cannot roll back a failed log append");
                self.poisoned = true;
            }
            return Err(StorageError::io(context, error));
        }
        active.record_offsets.extend(record_starts.iter().map(|start| write_at + start));
        active.len_bytes = write_at + buf.len() as u64;
        active.file_bytes = active.file_bytes.max(active.len_bytes);
        for entry in entries {
            self.term_runs.push(entry.index, entry.term);
        }
        Ok(())
    }

    /// Makes every appended entry durable (`fdatasync` of the active segment; sealed segments were
    /// synced when they were sealed). If it fails the log is poisoned for good.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_not_poisoned()?;
        let active = self.active_segment();
        let result = active
            .file
            .sync_data()
            .map_err(|error| StorageError::io(format!("fsync {}", active.path.display()), error));
        self.poison_on_error(result)
    }

    /// The entries `from..=to_inclusive`, read from disk with their checksums verified. An empty
    /// range (`from > to_inclusive`) gives an empty vector.
    pub fn read(&self, from: LogIndex, to_inclusive: LogIndex) -> Result<Vec<LogEntry>, StorageError> {
        if from > to_inclusive {
            return Ok(Vec::new());
        }
        if from < self.first_index() || to_inclusive > self.last_index() {
            return Err(StorageError::OutOfRange {
                from,
                to_inclusive,
                first: self.first_index(),
                last: self.last_index(),
            });
        }
        let capacity = usize::try_from(to_inclusive.0 - from.0 + 1).unwrap_or(usize::MAX);
        let mut entries = Vec::with_capacity(capacity.min(1 << 16));
        let mut position = self.segment_position(from);
        let mut index = from;
        while index <= to_inclusive {
            let segment = &self.segments[position];
            let last_here = segment.last_index().min(to_inclusive);
            read_segment_range(segment, index, last_here, &mut entries)?;
            index = last_here.next();
            position += 1;
        }
        Ok(entries)
    }

    /// Removes the entries `from..`, durably, and returns them (the caller keeps them in a rollback
    /// file). Whole later segments are deleted; the one holding `from` is truncated and becomes
    /// active.
    ///
    /// # Panics
    /// If `from` is before the first entry: compacted entries are committed and never truncated.
    pub fn truncate_suffix(&mut self, from: LogIndex) -> Result<Vec<LogEntry>, StorageError> {
        self.check_not_poisoned()?;
        assert!(from >= self.first_index(), "truncating from {from}, before the first entry {}", self.first_index());
        if from > self.last_index() {
            return Ok(Vec::new());
        }
        let removed = self.read(from, self.last_index())?;
        let result = self.truncate_suffix_on_disk(from);
        self.poison_on_error(result)?;
        self.term_runs.remove_from(from);
        Ok(removed)
    }

    fn truncate_suffix_on_disk(&mut self, from: LogIndex) -> Result<(), StorageError> {
        let keep = self.segment_position(from);
        // Newest first, each removal made durable before the next, so a crash leaves a log that
        // is a prefix of the old one rather than one with a hole.
        while self.segments.len() > keep + 1 {
            let Some(segment) = self.segments.pop() else { break };
            drop(segment.file);
            std::fs::remove_file(&segment.path)
                .map_err(|error| StorageError::io(format!("remove {}", segment.path.display()), error))?;
            sync_dir(&self.dir)?;
        }
        let chunk = self.options.reserve_chunk_bytes();
        let segment = self.active_segment_mut();
        let cut_at = segment.offset_of(from);
        segment
            .file
            .set_len(cut_at)
            .and_then(|()| segment.file.sync_all())
            .map_err(|error| StorageError::io(format!("truncate {}", segment.path.display()), error))?;
        let entries_kept = (from.0 - segment.base.0) as usize;
        segment.record_offsets.truncate(entries_kept);
        segment.len_bytes = cut_at;
        segment.file_bytes = cut_at;
        // The cut dropped the reserved space after it; reserve it again.
        segment.reserve(cut_at + 1, chunk);
        Ok(())
    }

    /// Deletes every sealed segment whose entries are all at or before `up_to` (a snapshot covers
    /// them). The active segment is never deleted, so some entries `<= up_to` may remain readable.
    pub fn compact_prefix(&mut self, up_to: LogIndex) -> Result<(), StorageError> {
        self.check_not_poisoned()?;
        let sealed = &self.segments[..self.segments.len() - 1];
        let removable = sealed.iter().take_while(|segment| segment.last_index() <= up_to).count();
        if removable == 0 {
            return Ok(());
        }
        let new_prev_index = self.segments[removable - 1].last_index();
        let Some(new_prev_term) = self.term_at(new_prev_index)? else {
            unreachable!("term of {new_prev_index} unknown although the log holds it");
        };
        let new_meta = LogMeta { prev_index: new_prev_index, prev_term: new_prev_term, reset_pending: false };
        let result = self.compact_prefix_on_disk(removable, new_meta);
        self.poison_on_error(result)?;
        self.term_runs.remove_before(self.first_index());
        Ok(())
    }

    fn compact_prefix_on_disk(&mut self, removable: usize, new_meta: LogMeta) -> Result<(), StorageError> {
        // The new prev point goes first: recovery deletes segments wholly before it, so a crash
        // between the two steps only leaves work for the next open.
        new_meta.write(&self.dir)?;
        self.meta = new_meta;
        for segment in self.segments.drain(..removable) {
            drop(segment.file);
            std::fs::remove_file(&segment.path)
                .map_err(|error| StorageError::io(format!("remove {}", segment.path.display()), error))?;
        }
        sync_dir(&self.dir)
    }

    /// Discards the whole log and starts it empty after `after` (whose term is `term`), so the
    /// next append must be `after + 1`. Used when a snapshot is installed. Durable on return.
    pub fn reset(&mut self, after: LogIndex, term: Term) -> Result<(), StorageError> {
        self.check_not_poisoned()?;
        let result = self.reset_on_disk(after, term);
        self.poison_on_error(result)?;
        self.term_runs = TermRuns::default();
        Ok(())
    }

    fn reset_on_disk(&mut self, after: LogIndex, term: Term) -> Result<(), StorageError> {
        let mut meta = LogMeta { prev_index: after, prev_term: term, reset_pending: true };
        meta.write(&self.dir)?;
        self.meta = meta;
        let bases: Vec<LogIndex> = self.segments.iter().map(|segment| segment.base).collect();
        self.segments.clear();
        remove_segments(&self.dir, &bases)?;
        let base = after.next();
        self.start_segment(base)?;
        meta.reset_pending = false;
        meta.write(&self.dir)?;
        self.meta = meta;
        Ok(())
    }

    /// Creates an empty segment whose first entry will be `base`, and makes it the active one.
    fn start_segment(&mut self, base: LogIndex) -> Result<(), StorageError> {
        let (path, file) = create_segment_file(&self.dir, base)?;
        let mut segment = Segment {
            base,
            path,
            file,
            record_offsets: Vec::new(),
            len_bytes: SEGMENT_HEADER_BYTES as u64,
            file_bytes: SEGMENT_HEADER_BYTES as u64,
            reserve_failed: false,
        };
        segment.reserve(SEGMENT_HEADER_BYTES as u64 + 1, self.options.reserve_chunk_bytes());
        self.segments.push(segment);
        Ok(())
    }

    /// Seals the active segment (durably: later syncs only cover the new one) and starts a new one.
    fn rotate(&mut self) -> Result<(), StorageError> {
        let active = self.active_segment();
        active.file.sync_data().map_err(|error| StorageError::io(format!("fsync {}", active.path.display()), error))?;
        let base = self.last_index().next();
        self.start_segment(base)?;
        Ok(())
    }

    fn check_not_poisoned(&self) -> Result<(), StorageError> {
        if self.poisoned { Err(StorageError::Poisoned) } else { Ok(()) }
    }

    /// The fsync gate: once a durability step has failed, what is on disk is unknown, so the log
    /// refuses every later write (reads stay allowed).
    fn poison_on_error<T>(&mut self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(error) = &result {
            tracing::error!(%error, dir = %self.dir.display(), "log poisoned: refusing further writes");
            self.poisoned = true;
        }
        result
    }

    fn active_segment(&self) -> &Segment {
        let Some(segment) = self.segments.last() else {
            unreachable!("the log always has an active segment");
        };
        segment
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        let Some(segment) = self.segments.last_mut() else {
            unreachable!("the log always has an active segment");
        };
        segment
    }

    /// Position of the segment that holds (or would hold next) `index >= first_index`.
    fn segment_position(&self, index: LogIndex) -> usize {
        self.segments.partition_point(|segment| segment.base <= index).saturating_sub(1)
    }
}

/// Reads `from..=to_inclusive`, all inside `segment`, with one positioned read.
fn read_segment_range(
    segment: &Segment,
    from: LogIndex,
    to_inclusive: LogIndex,
    entries: &mut Vec<LogEntry>,
) -> Result<(), StorageError> {
    let start = segment.offset_of(from);
    let end = segment.offset_of(to_inclusive.next());
    let mut buf = vec![0u8; (end - start) as usize];
    segment
        .file
        .read_exact_at(&mut buf, start)
        .map_err(|error| StorageError::io(format!("read {}", segment.path.display()), error))?;
    let corrupt = |offset: usize, detail: String| StorageError::Corrupt {
        path: segment.path.clone(),
        offset: start + offset as u64,
        detail,
    };
    let mut offset = 0;
    let mut index = from;
    while index <= to_inclusive {
        let (payload, end) = match read_record(&buf, offset) {
            RecordRead::Valid { payload, end, .. } => (payload, end),
            RecordRead::Incomplete => return Err(corrupt(offset, "record cut short".to_owned())),
            RecordRead::Invalid(detail) => return Err(corrupt(offset, detail)),
        };
        let entry: LogEntry = postcard::from_bytes(payload)
            .map_err(|error| corrupt(offset, format!("entry does not decode: {error}")))?;
        if entry.index != index {
            return Err(corrupt(offset, format!("record holds index {}, expected {index}", entry.index)));
        }
        entries.push(entry);
        offset = end;
        index = index.next();
    }
    Ok(())
}

fn list_segment_bases(dir: &Path) -> Result<Vec<LogIndex>, StorageError> {
    let listing = std::fs::read_dir(dir).map_err(|error| StorageError::io(format!("list {}", dir.display()), error))?;
    let mut bases = Vec::new();
    for item in listing {
        let item = item.map_err(|error| StorageError::io(format!("list {}", dir.display()), error))?;
        if let Some(base) = item.file_name().to_str().and_then(parse_segment_file_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn remove_segments(dir: &Path, bases: &[LogIndex]) -> Result<(), StorageError> {
    for &base in bases {
        let path = dir.join(segment::segment_file_name(base));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(StorageError::io(format!("remove {}", path.display()), error)),
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use chorus_core::EntryPayload;

    use super::*;

    fn entries(from: u64, to_inclusive: u64, term: u64) -> Vec<LogEntry> {
        (from..=to_inclusive)
            .map(|index| LogEntry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Noop })
            .collect()
    }

    #[test]
    fn a_failed_durability_step_poisons_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).unwrap();
        log.append(&entries(1, 3, 1)).unwrap();
        log.sync().unwrap();

        let failed_fsync = std::io::Error::other("injected fsync failure");
        let result: Result<(), _> = log.poison_on_error(Err(StorageError::io("fsync", failed_fsync)));
        assert!(matches!(result, Err(StorageError::Io { .. })), "the first error says what failed");

        assert!(matches!(log.append(&entries(4, 4, 1)), Err(StorageError::Poisoned)));
        assert!(matches!(log.sync(), Err(StorageError::Poisoned)));
        assert!(matches!(log.truncate_suffix(LogIndex(2)), Err(StorageError::Poisoned)));
        assert!(matches!(log.compact_prefix(LogIndex(2)), Err(StorageError::Poisoned)));
        assert!(matches!(log.reset(LogIndex(9), Term(2)), Err(StorageError::Poisoned)));
        assert_eq!(log.last_index(), LogIndex(3), "nothing was written after the failure");
        assert_eq!(log.read(LogIndex(1), LogIndex(3)).unwrap(), entries(1, 3, 1), "reads still work");
    }

    fn segment_count(dir: &Path) -> usize {
        list_segment_bases(dir).unwrap().len()
    }

    #[test]
    fn reopen_finishes_a_compaction_interrupted_after_its_meta_write() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions { segment_bytes_max: 64, preallocate: false };
        let mut log = SegmentedLog::open(dir.path(), options).unwrap();
        for index in 1..=20 {
            log.append(&entries(index, index, 1 + index / 10)).unwrap();
        }
        let third_base = log.segments[2].base;
        let prev_index = LogIndex(third_base.0 - 1);
        let prev_term = log.term_at(prev_index).unwrap().unwrap();
        let segments_before = segment_count(dir.path());
        drop(log);

        // The crash: the new prev point is on disk, the segments it covers are not yet deleted.
        LogMeta { prev_index, prev_term, reset_pending: false }.write(dir.path()).unwrap();
        let log = SegmentedLog::open(dir.path(), options).unwrap();
        assert_eq!(log.first_index(), third_base);
        assert_eq!(log.term_at(prev_index).unwrap(), Some(prev_term));
        assert_eq!(segment_count(dir.path()), segments_before - 2);
        let expected: Vec<LogEntry> =
            (third_base.0..=20).flat_map(|index| entries(index, index, 1 + index / 10)).collect();
        assert_eq!(log.read(log.first_index(), log.last_index()).unwrap(), expected);
    }

    #[test]
    fn reopen_finishes_a_reset_interrupted_half_way() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions { segment_bytes_max: 64, preallocate: false };
        let mut log = SegmentedLog::open(dir.path(), options).unwrap();
        for index in 1..=20 {
            log.append(&entries(index, index, 1)).unwrap();
        }
        drop(log);

        // The crash: the reset is recorded, the old segments (which straddle the new prev point)
        // are still there.
        let meta = LogMeta { prev_index: LogIndex(10), prev_term: Term(5), reset_pending: true };
        meta.write(dir.path()).unwrap();
        let mut log = SegmentedLog::open(dir.path(), options).unwrap();
        assert_eq!(log.first_index(), LogIndex(11));
        assert_eq!(log.last_index(), LogIndex(10));
        assert_eq!(log.last_term(), Term(5));
        assert_eq!(segment_count(dir.path()), 1);
        assert!(!LogMeta::read(dir.path()).unwrap().unwrap().reset_pending);
        log.append(&entries(11, 12, 5)).unwrap();
        drop(log);
        let log = SegmentedLog::open(dir.path(), options).unwrap();
        assert_eq!(log.read(LogIndex(11), LogIndex(12)).unwrap(), entries(11, 12, 5));
    }

    #[test]
    fn a_prev_point_inside_a_segment_without_a_pending_reset_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).unwrap();
        log.append(&entries(1, 20, 1)).unwrap();
        drop(log);
        let meta = LogMeta { prev_index: LogIndex(10), prev_term: Term(1), reset_pending: false };
        meta.write(dir.path()).unwrap();
        let result = SegmentedLog::open(dir.path(), LogOptions::default());
        assert!(matches!(result, Err(StorageError::Corrupt { .. })), "{result:?}");
    }

    #[test]
    fn term_runs_answer_for_every_index() {
        let mut runs = TermRuns::default();
        for (index, term) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 5)] {
            runs.push(LogIndex(index), Term(term));
        }
        assert_eq!(runs.runs.len(), 3);
        assert_eq!(runs.term_at(LogIndex(2)), Some(Term(1)));
        assert_eq!(runs.term_at(LogIndex(4)), Some(Term(2)));
        assert_eq!(runs.term_at(LogIndex(9)), Some(Term(5)));
        runs.remove_before(LogIndex(4));
        assert_eq!(runs.term_at(LogIndex(4)), Some(Term(2)));
        assert_eq!(runs.runs.len(), 2);
        runs.remove_from(LogIndex(5));
        assert_eq!(runs.term_at(LogIndex(9)), Some(Term(2)));
    }
}
