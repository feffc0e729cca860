//! The Chorus node runtime: everything that does IO around the sans-IO core.
//!
//! - `connection`: the RESP client port (one task per client, pipelined, replies in order);
//! - `node_commands`: commands the node answers itself (HELLO, AUTH, INFO, COMMAND, ...);
//! - `core_handle`: the replica behind a mutex, and where its effects go;
//! - `pipeline`: the log writer (group commit) and applier threads;
//! - `admin`: the HTTP admin port (`/metrics`, `/status`);
//! - `node`: start-up (recovery), listeners and shutdown.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod config;
pub mod connection;
pub mod context;
pub mod core_handle;
pub mod group;
pub mod info;
pub mod leaderless;
pub mod metrics_names;
pub mod multileader;
pub mod node;
pub mod node_commands;
pub mod peer;
pub mod pipeline;
pub mod shared_state;

pub use config::{FsyncPolicy, Mode, NodeConfig};
pub use node::{BoundAddrs, NodeError, run};
