//! RESP2/RESP3 codec, sans-IO.
//!
//! The server side reads requests (arrays of bulk strings, or inline commands) and writes replies;
//! the client side (used by `chorus bench` and tests) writes requests and reads replies. Nothing here
//! touches a socket: callers own the buffers, like mini-redis's `Frame::check`/`Frame::parse`.
//!
//! Requests are parsed by hand rather than with a general RESP crate: a request is only ever an array
//! of bulk strings or an inline line, and a narrow parser is several times faster (see
//! `docs/storage-and-protocol.md`).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod reply;
mod request;
mod response;

#[cfg(test)]
mod proptests;

pub use reply::{Protocol, Reply, encode_reply};
pub use request::{Limits, ProtocolError, RequestParser, encode_request, parse_request};
pub use response::{ReplyError, parse_reply};
