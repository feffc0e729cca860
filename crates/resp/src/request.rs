//! Request parsing (server side) and request encoding (client side).

use bytes::{Bytes, BytesMut};

/// Bounds on what one request may claim, so a hostile client cannot make the node allocate
/// unbounded memory. Defaults follow Redis (`proto-max-bulk-len` 512 MiB is far too generous for
/// us; we default to 64 MiB bulk strings and 1M arguments, 64 KiB inline lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub bulk_bytes_max: usize,
    pub array_len_max: usize,
    pub inline_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bulk_bytes_max: 64 * 1024 * 1024,
            array_len_max: 1024 * 1024,
            inline_bytes_max: 64 * 1024,
        }
    }
}

/// A request that cannot be parsed. The connection replies `-ERR Protocol error: <detail>` and closes,
/// as Redis does. `Display` gives exactly Redis's text after `ERR `, e.g.
/// `Protocol error: invalid multibulk length`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: bulk string not terminated by CRLF")]
    MissingCrlf,
}

/// Parses one request from the front of `buf`.
///
/// - `Ok(Some(args))`: a whole request was removed from `buf`; `args` are slices of one frozen
///   chunk (no copy per argument). An empty inline line yields `Ok(Some(vec![]))`, which callers skip.
/// - `Ok(None)`: `buf` holds only part of a request; nothing was consumed; read more and call again.
/// - `Err(_)`: the bytes can never form a request; the caller should reply with the error and close.
///
/// Accepts `*<n>\r\n` arrays of `$<len>\r\n<bytes>\r\n` bulk strings (n may be 0; `*-1` and
/// `*0` yield an empty request) and inline commands (a line not starting with `*`, split on
/// whitespace with Redis's quoting rules, ended by `\n` or `\r\n`). Lengths over `limits` are errors
/// as soon as the header is seen, before any payload arrives.
pub fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let _ = (buf, limits);
    todo!("implemented by the resp helper")
}

/// Appends `args` encoded as a RESP array of bulk strings (what clients send).
pub fn encode_request<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    let _ = (args, out);
    todo!("implemented by the resp helper")
}
