//! Reply parsing (client side): used by `chorus bench`, the CLI and tests.

use bytes::BytesMut;

use crate::Reply;

/// A reply stream that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// Parses one reply (RESP2 or RESP3) from the front of `buf`, removing it. `Ok(None)` when incomplete.
/// Simple strings come back as `Reply::StatusOwned`, `$-1` as `Reply::Null`, `*-1` as
/// `Reply::NullArray`, RESP3 `_` as `Reply::Null`, attributes (`|`) and pushes (`>`) as arrays.
pub fn parse_reply(buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
    let _ = buf;
    todo!("implemented by the resp helper")
}
