//! Replies and their RESP2/RESP3 encodings.

use bytes::{Bytes, BytesMut};

/// Which reply dialect a connection speaks (`HELLO 3` switches to RESP3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// A reply to a client. Each variant encodes in both protocols; RESP3-only types degrade to their
/// RESP2 equivalents exactly as Redis does (maps and sets become flat arrays, nulls become `$-1`/`*-1`,
/// doubles become bulk strings, verbatim strings become bulk strings, booleans become integers).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK` style status. The text must not contain CR or LF.
    Status(&'static str),
    /// A status built at run time (e.g. `TYPE` answers `+string`). Must not contain CR or LF.
    StatusOwned(String),
    /// An error line, including its code: `"ERR unknown command 'FOO'..."`, `"WRONGTYPE ..."`.
    /// Encoded as `-<text>\r\n`; CR/LF inside are replaced by spaces.
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// The null bulk string: RESP2 `$-1`, RESP3 `_`.
    Null,
    /// The null array: RESP2 `*-1`, RESP3 `_`.
    NullArray,
    Array(Vec<Reply>),
    /// RESP3 `%` map; RESP2 a flat array of key, value, key, value...
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~` set; RESP2 an array.
    Set(Vec<Reply>),
    /// RESP3 `,` double; RESP2 a bulk string of its shortest round-trip text.
    Double(f64),
    /// RESP3 `#t`/`#f`; RESP2 integer 1/0.
    Boolean(bool),
    /// RESP3 `=` verbatim string with a three-letter format (`txt`); RESP2 a bulk string.
    Verbatim(Bytes),
}

impl Reply {
    pub const OK: Reply = Reply::Status("OK");

    /// An error reply with Redis's generic `ERR` code.
    pub fn err(message: impl AsRef<str>) -> Reply {
        Reply::Error(format!("ERR {}", message.as_ref()))
    }

    pub fn bulk(data: impl Into<Bytes>) -> Reply {
        Reply::Bulk(data.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// Appends the encoding of `reply` in `protocol` to `out`.
pub fn encode_reply(reply: &Reply, protocol: Protocol, out: &mut BytesMut) {
    let _ = (reply, protocol, out);
    todo!("implemented by the resp helper")
}
