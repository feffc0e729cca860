//! Chorus's sans-IO core.
//!
//! Everything that decides what the database does lives here, as plain state machines: the
//! key-value semantics of the Redis commands, and the replication protocols. Nothing in this crate
//! opens a socket or a file, reads a clock or draws a random number; those arrive as inputs, and
//! everything the core wants done leaves as an [`Effect`]. The same code runs in the node
//! (`chorus-server`), the deterministic simulator (`chorus-sim`) and unit tests.
//!
//! ```text
//!   driver                           core
//!   ------                           ----
//!   client command  ───submit────▶  KvMachine (execute against applied state + pending overlay)
//!                                      │ write? ─▶ Effect::Persist(entry)
//!   "log durable up to N" ─────────▶  Replica (commit rule of the mode)
//!                                      │        ─▶ Effect::Apply(entries), Effect::Reply(held replies)
//!   "applied up to N"     ─────────▶  release barrier reads ─▶ Effect::Reply
//!   tick(now)             ─────────▶  active expiry ─▶ Effect::Persist(deletes)
//! ```

pub mod command;
pub mod kv;
pub mod leaderless;
pub mod log;
pub mod multileader;
pub mod raft;
pub mod replica;
pub mod slot;
pub mod state;
pub mod types;

pub use log::{EntryPayload, LogEntry, WriteOp};
pub use replica::{Effect, Recovered, Replica, ReplicaConfig, ReplicaStatus, RequestId};
pub use slot::{SLOT_COUNT, Slot};
pub use state::{ScanFrom, StateError, StateView, StoredValue};
pub use types::{LogIndex, NodeId, Term, UnixMillis};
