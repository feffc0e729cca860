//! Execution of each key-value command: reads through the overlay, writes as logical ops.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use chorus_resp::Reply;

use super::glob::glob_match;
use super::number::parse_i64;
use super::{KvMachine, STRING_BYTES_MAX};
use crate::command::{ExpireCondition, ExpiryArg, GetExOption, KvCommand, SetCondition, SetExpiry, not_an_integer};
use crate::log::WriteOp;
use crate::slot::Slot;
use crate::state::{ScanFrom, StateError, StateView, StoredValue};
use crate::types::{LogIndex, UnixMillis};

/// What executing a command produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// The changes to log, in order (empty for reads and for writes that changed nothing).
    pub ops: Vec<WriteOp>,
    pub reply: Reply,
    /// The highest index of a pending (unapplied) write the command read: its reply may leave only
    /// once the commit index has reached it.
    pub read_barrier: LogIndex,
}

/// One command's view of the keyspace and its writes.
struct Txn<'a, S: StateView> {
    kv: &'a mut KvMachine,
    state: &'a S,
    now: UnixMillis,
    read_barrier: LogIndex,
    ops: Vec<WriteOp>,
    /// Values this command already wrote, so `DEL a a` counts one deletion.
    written: Vec<(Bytes, Option<StoredValue>)>,
}

impl<S: StateView> Txn<'_, S> {
    /// The live value of `key` (expired values read as absent).
    fn read(&mut self, key: &Bytes) -> Result<Option<StoredValue>, StateError> {
        let stored = if let Some((_, value)) = self.written.iter().rev().find(|(written, _)| written == key) {
            value.clone()
        } else if let Some(pending) = self.kv.overlay.get(key) {
            self.read_barrier = self.read_barrier.max(pending.index);
            pending.value.clone()
        } else if let Some(clear) = self.kv.pending_clear {
            self.read_barrier = self.read_barrier.max(clear);
            None
        } else {
            self.state.get(key)?
        };
        Ok(stored.filter(|stored| !stored.is_expired(self.now)))
    }

    fn put(&mut self, key: &Bytes, value: Bytes, expire_at: Option<UnixMillis>) {
        if expire_at.is_some_and(|at| at <= self.now) {
            // A write that expires at once is a delete; logging it as such keeps replicas from
            // holding a dead value until active expiry reaches it.
            self.delete(key);
            return;
        }
        // Key and value may be slices of the connection's read buffer: the log entry and the overlay
        // hold them only until the entry is applied, and the applied state copies them into
        // allocations of their own, so no read buffer stays pinned by a stored key.
        self.ops.push(WriteOp::Put { key: key.clone(), value: value.clone(), expire_at });
        self.written.push((key.clone(), Some(StoredValue { value, expire_at })));
    }

    fn delete(&mut self, key: &Bytes) {
        self.ops.push(WriteOp::Delete { key: key.clone() });
        self.written.push((key.clone(), None));
    }

    fn resolve(&self, arg: ExpiryArg, command: &str) -> Result<UnixMillis, Reply> {
        match arg {
            ExpiryArg::Absolute(at) => Ok(at),
            ExpiryArg::RelativeMillis(millis) => {
                let at = i128::from(self.now.0) + i128::from(millis);
                if at > i128::from(i64::MAX) {
                    return Err(Reply::err(format!("invalid expire time in '{command}' command")));
                }
                Ok(UnixMillis(u64::try_from(at.max(0)).unwrap_or(0)))
            }
        }
    }
}

fn bulk_or_null(value: Option<StoredValue>) -> Reply {
    value.map_or(Reply::Null, |stored| Reply::Bulk(stored.value))
}

fn storage_error(error: StateError) -> Reply {
    Reply::err(error.to_string())
}

impl KvMachine {
    /// Executes a command against the latest view at time `now`.
    pub fn execute<S: StateView>(&mut self, now: UnixMillis, command: &KvCommand, state: &S) -> Execution {
        let mut txn = Txn { kv: self, state, now, read_barrier: LogIndex::ZERO, ops: Vec::new(), written: Vec::new() };
        let reply = match run(&mut txn, command) {
            Ok(reply) => reply,
            Err(reply) => {
                // A failed command changes nothing, even if it had queued ops before failing.
                txn.ops.clear();
                reply
            }
        };
        Execution { ops: txn.ops, reply, read_barrier: txn.read_barrier }
    }
}

/// A position in storage order: (slot, key).
type Position = (Slot, Bytes);

impl<S: StateView> Txn<'_, S> {
    /// Folds every pending write into `merged` (entries of the applied state at positions accepted
    /// by `in_range`), and raises the read barrier to each pending index it used.
    fn overlay_onto(&mut self, merged: &mut BTreeMap<Position, StoredValue>, in_range: impl Fn(&Position) -> bool) {
        if let Some(clear) = self.kv.pending_clear {
            self.read_barrier = self.read_barrier.max(clear);
        }
        for (key, pending) in &self.kv.overlay {
            let position = (Slot::of_key(key), key.clone());
            if !in_range(&position) {
                continue;
            }
            self.read_barrier = self.read_barrier.max(pending.index);
            match &pending.value {
                Some(stored) => merged.insert(position, stored.clone()),
                None => merged.remove(&position),
            };
        }
    }

    /// Keys in the latest view: the applied state with pending writes laid over it (DBSIZE counts
    /// expired keys not yet deleted, as Redis does).
    fn key_count(&mut self) -> Result<u64, StateError> {
        self.read_barrier = self.read_barrier.max(self.kv.pending_barrier());
        self.kv.key_count(self.state)
    }

    fn keys(&mut self, pattern: &Bytes) -> Result<Reply, StateError> {
        const CHUNK: usize = 1024;
        let mut merged = BTreeMap::new();
        if self.kv.pending_clear.is_none() {
            let mut from = ScanFrom::default();
            loop {
                let batch = self.state.scan(&from, CHUNK)?;
                let done = batch.len() < CHUNK;
                if let Some((last_key, _)) = batch.last() {
                    from = ScanFrom { slot: Slot::of_key(last_key), after_key: Some(last_key.clone()) };
                }
                merged.extend(batch.into_iter().map(|(key, stored)| ((Slot::of_key(&key), key), stored)));
                if done {
                    break;
                }
            }
        }
        self.overlay_onto(&mut merged, |_| true);
        let now = self.now;
        Ok(Reply::Array(
            merged
                .into_iter()
                .filter(|((_, key), stored)| !stored.is_expired(now) && glob_match(pattern, key))
                .map(|((_, key), _)| Reply::Bulk(key))
                .collect(),
        ))
    }

    fn scan(
        &mut self,
        cursor: u64,
        pattern: Option<&Bytes>,
        count: usize,
        type_filter: Option<&Bytes>,
    ) -> Result<Reply, StateError> {
        let slot = Slot((cursor & 0x3FFF) as u16);
        let from = match self.kv.scan_cursors.get(&(cursor >> 14)) {
            Some((remembered_slot, last_key)) if cursor != 0 => {
                ScanFrom { slot: *remembered_slot, after_key: Some(last_key.clone()) }
            }
            _ => ScanFrom { slot, after_key: None },
        };
        let applied = if self.kv.pending_clear.is_some() { Vec::new() } else { self.state.scan(&from, count)? };
        // The applied batch ends at `bound` when it is full; pending writes up to the same bound
        // belong to this call, the rest to later ones.
        let bound: Option<Position> =
            applied.last().filter(|_| applied.len() == count).map(|(key, _)| (Slot::of_key(key), key.clone()));
        let mut merged: BTreeMap<Position, StoredValue> =
            applied.into_iter().map(|(key, stored)| ((Slot::of_key(&key), key), stored)).collect();
        let after_start = |position: &Position| match &from.after_key {
            Some(after) => (position.0, &position.1) > (from.slot, after),
            None => position.0 >= from.slot,
        };
        self.overlay_onto(&mut merged, |position| {
            after_start(position) && bound.as_ref().is_none_or(|bound| position <= bound)
        });
        let next_cursor = match bound {
            Some((bound_slot, bound_key)) => self.kv.remember_cursor(bound_slot, bound_key),
            None => 0,
        };
        let only_strings = type_filter.is_none_or(|wanted| wanted.eq_ignore_ascii_case(b"string"));
        let now = self.now;
        let keys = merged
            .into_iter()
            .filter(|((_, key), stored)| {
                only_strings && !stored.is_expired(now) && pattern.is_none_or(|pattern| glob_match(pattern, key))
            })
            .map(|((_, key), _)| Reply::Bulk(key))
            .collect();
        Ok(Reply::Array(vec![Reply::Bulk(Bytes::from(next_cursor.to_string())), Reply::Array(keys)]))
    }
}

fn run<S: StateView>(txn: &mut Txn<'_, S>, command: &KvCommand) -> Result<Reply, Reply> {
    let reply = match command {
        KvCommand::Get { key } => {
            let value = txn.read(key).map_err(storage_error)?;
            if value.is_some() {
                txn.kv.stats.keyspace_hits += 1;
            } else {
                txn.kv.stats.keyspace_misses += 1;
            }
            bulk_or_null(value)
        }
        KvCommand::Set { key, value, condition, expiry, return_old, name } => {
            let needs_old = *condition != SetCondition::Always || *return_old || *expiry == SetExpiry::Keep;
            let old = if needs_old { txn.read(key).map_err(storage_error)? } else { None };
            let allowed = match condition {
                SetCondition::Always => true,
                SetCondition::IfAbsent => old.is_none(),
                SetCondition::IfPresent => old.is_some(),
            };
            if allowed {
                let expire_at = match expiry {
                    SetExpiry::Clear => None,
                    SetExpiry::Keep => old.as_ref().and_then(|stored| stored.expire_at),
                    SetExpiry::Set(arg) => Some(txn.resolve(*arg, name)?),
                };
                txn.put(key, value.clone(), expire_at);
            }
            match (*return_old, *name) {
                (true, _) => bulk_or_null(old),
                (false, "setnx") => Reply::Integer(i64::from(allowed)),
                (false, _) if allowed => Reply::OK,
                (false, _) => Reply::Null,
            }
        }
        KvCommand::GetSet { key, value } => {
            let old = txn.read(key).map_err(storage_error)?;
            txn.put(key, value.clone(), None);
            bulk_or_null(old)
        }
        KvCommand::GetDel { key } => {
            let old = txn.read(key).map_err(storage_error)?;
            if old.is_some() {
                txn.delete(key);
            }
            bulk_or_null(old)
        }
        KvCommand::GetEx { key, option } => {
            let old = txn.read(key).map_err(storage_error)?;
            if let Some(stored) = &old {
                match option {
                    GetExOption::Leave => {}
                    GetExOption::Persist if stored.expire_at.is_none() => {}
                    GetExOption::Persist => txn.put(key, stored.value.clone(), None),
                    GetExOption::Set(arg) => {
                        let at = txn.resolve(*arg, "getex")?;
                        txn.put(key, stored.value.clone(), Some(at));
                    }
                }
            }
            bulk_or_null(old)
        }
        KvCommand::Delete { keys } => {
            let mut deleted = 0;
            for key in keys {
                if txn.read(key).map_err(storage_error)?.is_some() {
                    txn.delete(key);
                    deleted += 1;
                }
            }
            Reply::Integer(deleted)
        }
        KvCommand::Exists { keys } => {
            let mut present = 0;
            for key in keys {
                if txn.read(key).map_err(storage_error)?.is_some() {
                    present += 1;
                }
            }
            Reply::Integer(present)
        }
        KvCommand::IncrBy { key, delta } => {
            let old = txn.read(key).map_err(storage_error)?;
            let current = match &old {
                Some(stored) => parse_i64(&stored.value).ok_or_else(not_an_integer)?,
                None => 0,
            };
            let next =
                current.checked_add(*delta).ok_or_else(|| Reply::err("increment or decrement would overflow"))?;
            let expire_at = old.and_then(|stored| stored.expire_at);
            txn.put(key, Bytes::from(next.to_string()), expire_at);
            Reply::Integer(next)
        }
        KvCommand::Append { key, value } => {
            let old = txn.read(key).map_err(storage_error)?;
            let (current, expire_at) = old.map_or((Bytes::new(), None), |stored| (stored.value, stored.expire_at));
            if current.len() + value.len() > STRING_BYTES_MAX {
                return Err(Reply::err("string exceeds maximum allowed size (proto-max-bulk-len)"));
            }
            let mut joined = BytesMut::with_capacity(current.len() + value.len());
            joined.extend_from_slice(&current);
            joined.extend_from_slice(value);
            let length = joined.len();
            txn.put(key, joined.freeze(), expire_at);
            Reply::Integer(i64::try_from(length).unwrap_or(i64::MAX))
        }
        KvCommand::StrLen { key } => {
            let length = txn.read(key).map_err(storage_error)?.map_or(0, |stored| stored.value.len());
            Reply::Integer(i64::try_from(length).unwrap_or(i64::MAX))
        }
        KvCommand::GetRange { key, start, end } => {
            let value = txn.read(key).map_err(storage_error)?.map(|stored| stored.value).unwrap_or_default();
            Reply::Bulk(substring(&value, *start, *end))
        }
        KvCommand::SetRange { key, offset, value } => {
            let old = txn.read(key).map_err(storage_error)?;
            let (current, expire_at) = old.map_or((Bytes::new(), None), |stored| (stored.value, stored.expire_at));
            let offset = usize::try_from(*offset).map_err(|_| Reply::err("offset is out of range"))?;
            if value.is_empty() {
                return Ok(Reply::Integer(i64::try_from(current.len()).unwrap_or(i64::MAX)));
            }
            if offset.saturating_add(value.len()) > STRING_BYTES_MAX {
                return Err(Reply::err("string exceeds maximum allowed size (proto-max-bulk-len)"));
            }
            let mut updated = BytesMut::from(&current[..]);
            if updated.len() < offset + value.len() {
                updated.resize(offset + value.len(), 0);
            }
            updated[offset..offset + value.len()].copy_from_slice(value);
            let length = updated.len();
            txn.put(key, updated.freeze(), expire_at);
            Reply::Integer(i64::try_from(length).unwrap_or(i64::MAX))
        }
        KvCommand::MGet { keys } => {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(bulk_or_null(txn.read(key).map_err(storage_error)?));
            }
            Reply::Array(values)
        }
        KvCommand::MSet { pairs, only_if_none_exist } => {
            if *only_if_none_exist {
                for (key, _) in pairs {
                    if txn.read(key).map_err(storage_error)?.is_some() {
                        return Ok(Reply::Integer(0));
                    }
                }
            }
            for (key, value) in pairs {
                txn.put(key, value.clone(), None);
            }
            if *only_if_none_exist { Reply::Integer(1) } else { Reply::OK }
        }
        KvCommand::Expire { key, at, condition, name } => {
            let Some(stored) = txn.read(key).map_err(storage_error)? else {
                return Ok(Reply::Integer(0));
            };
            let new_at = txn.resolve(*at, name)?;
            let allowed = match condition {
                ExpireCondition::Always => true,
                ExpireCondition::NoExpiry => stored.expire_at.is_none(),
                ExpireCondition::HasExpiry => stored.expire_at.is_some(),
                ExpireCondition::GreaterThan => stored.expire_at.is_some_and(|current| new_at > current),
                ExpireCondition::LessThan => stored.expire_at.is_none_or(|current| new_at < current),
            };
            if !allowed {
                return Ok(Reply::Integer(0));
            }
            txn.put(key, stored.value, Some(new_at));
            Reply::Integer(1)
        }
        KvCommand::Ttl { key, unit_millis } => match txn.read(key).map_err(storage_error)? {
            None => Reply::Integer(-2),
            Some(StoredValue { expire_at: None, .. }) => Reply::Integer(-1),
            Some(StoredValue { expire_at: Some(at), .. }) => {
                let remaining = i64::try_from(at.0.saturating_sub(txn.now.0)).unwrap_or(i64::MAX);
                Reply::Integer(if *unit_millis { remaining } else { (remaining + 500) / 1000 })
            }
        },
        KvCommand::ExpireTime { key, unit_millis } => match txn.read(key).map_err(storage_error)? {
            None => Reply::Integer(-2),
            Some(StoredValue { expire_at: None, .. }) => Reply::Integer(-1),
            Some(StoredValue { expire_at: Some(at), .. }) => {
                let at = i64::try_from(at.0).unwrap_or(i64::MAX);
                Reply::Integer(if *unit_millis { at } else { at / 1000 })
            }
        },
        KvCommand::Persist { key } => match txn.read(key).map_err(storage_error)? {
            Some(StoredValue { value, expire_at: Some(_) }) => {
                txn.put(key, value, None);
                Reply::Integer(1)
            }
            _ => Reply::Integer(0),
        },
        KvCommand::Type { key } => {
            if txn.read(key).map_err(storage_error)?.is_some() {
                Reply::Status("string")
            } else {
                Reply::Status("none")
            }
        }
        KvCommand::FlushAll => {
            txn.ops.push(WriteOp::Clear);
            Reply::OK
        }
        KvCommand::Wait { .. } => return Err(Reply::err("internal error: WAIT reached the key-value layer")),
        KvCommand::DbSize => Reply::Integer(i64::try_from(txn.key_count().map_err(storage_error)?).unwrap_or(i64::MAX)),
        KvCommand::Keys { pattern } => txn.keys(pattern).map_err(storage_error)?,
        KvCommand::Scan { cursor, pattern, count, type_filter } => {
            txn.scan(*cursor, pattern.as_ref(), *count, type_filter.as_ref()).map_err(storage_error)?
        }
    };
    Ok(reply)
}

/// Redis's GETRANGE arithmetic: negative offsets count from the end, and out-of-range ends clamp.
fn substring(value: &Bytes, start: i64, end: i64) -> Bytes {
    let length = i64::try_from(value.len()).unwrap_or(i64::MAX);
    if length == 0 {
        return Bytes::new();
    }
    let start = if start < 0 { (length + start).max(0) } else { start };
    let end = if end < 0 { (length + end).max(0) } else { end.min(length - 1) };
    if start > end || start >= length {
        return Bytes::new();
    }
    let (start, end) = (usize::try_from(start).unwrap_or(0), usize::try_from(end).unwrap_or(0));
    value.slice(start..=end)
}
