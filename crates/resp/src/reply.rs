//! Replies and their RESP2/RESP3 encodings.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

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
    let resp3 = protocol == Protocol::Resp3;
    match reply {
        Reply::Status(text) => put_line(b'+', text.as_bytes(), out),
        Reply::StatusOwned(text) => put_line(b'+', text.as_bytes(), out),
        Reply::Error(text) => put_line(b'-', text.as_bytes(), out),
        Reply::Integer(value) => put_header(b':', *value, out),
        Reply::Bulk(data) => put_bulk(data, out),
        Reply::Null if resp3 => out.put_slice(b"_\r\n"),
        Reply::Null => out.put_slice(b"$-1\r\n"),
        Reply::NullArray if resp3 => out.put_slice(b"_\r\n"),
        Reply::NullArray => out.put_slice(b"*-1\r\n"),
        Reply::Array(items) => {
            put_header(b'*', items.len(), out);
            for item in items {
                encode_reply(item, protocol, out);
            }
        }
        Reply::Map(pairs) => {
            if resp3 {
                put_header(b'%', pairs.len(), out);
            } else {
                put_header(b'*', pairs.len() * 2, out);
            }
            for (key, value) in pairs {
                encode_reply(key, protocol, out);
                encode_reply(value, protocol, out);
            }
        }
        Reply::Set(items) => {
            put_header(if resp3 { b'~' } else { b'*' }, items.len(), out);
            for item in items {
                encode_reply(item, protocol, out);
            }
        }
        Reply::Double(value) => {
            let text = DoubleText::new(*value);
            if resp3 {
                out.reserve(text.as_bytes().len() + 3);
                out.put_u8(b',');
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            } else {
                put_bulk(text.as_bytes(), out);
            }
        }
        Reply::Boolean(value) => out.put_slice(match (resp3, value) {
            (true, true) => b"#t\r\n",
            (true, false) => b"#f\r\n",
            (false, true) => b":1\r\n",
            (false, false) => b":0\r\n",
        }),
        Reply::Verbatim(data) if resp3 => {
            put_header(b'=', data.len() + 4, out);
            out.reserve(data.len() + 6);
            out.put_slice(b"txt:");
            out.put_slice(data);
            out.put_slice(b"\r\n");
        }
        Reply::Verbatim(data) => put_bulk(data, out),
    }
}

/// `<prefix><text>\r\n` with any CR or LF in `text` replaced by a space, so a reply can never
/// smuggle a second reply into the stream.
fn put_line(prefix: u8, text: &[u8], out: &mut BytesMut) {
    out.reserve(text.len() + 3);
    out.put_u8(prefix);
    if memchr::memchr2(b'\r', b'\n', text).is_none() {
        out.put_slice(text);
    } else {
        out.extend(text.iter().map(|&byte| if byte == b'\r' || byte == b'\n' { b' ' } else { byte }));
    }
    out.put_slice(b"\r\n");
}

fn put_header(prefix: u8, value: impl itoa::Integer, out: &mut BytesMut) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value).as_bytes();
    out.reserve(digits.len() + 3);
    out.put_u8(prefix);
    out.put_slice(digits);
    out.put_slice(b"\r\n");
}

fn put_bulk(data: &[u8], out: &mut BytesMut) {
    put_header(b'$', data.len(), out);
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The text of a double as Redis writes it: `inf`, `-inf`, `nan`, otherwise the shortest text that
/// parses back to the same value, in plain notation (`10`, `0.5`) for magnitudes in [1e-5, 1e17)
/// and in exponent notation (`1e300`, `5e-324`) outside, as `%.17g` would switch.
pub(crate) struct DoubleText {
    bytes: [u8; Self::BYTES_MAX],
    len: usize,
}

impl DoubleText {
    /// The longest plain text in range is `-0.0000` plus 17 significant digits; the longest
    /// exponent text is `-2.2250738585072014e-308`: both fit with room to spare.
    const BYTES_MAX: usize = 40;

    pub(crate) fn new(value: f64) -> DoubleText {
        let mut text = DoubleText { bytes: [0; Self::BYTES_MAX], len: 0 };
        let magnitude = value.abs();
        let written = if value.is_nan() {
            text.write_str("nan")
        } else if value.is_infinite() {
            text.write_str(if value > 0.0 { "inf" } else { "-inf" })
        } else if magnitude == 0.0 || (1e-5..1e17).contains(&magnitude) {
            write!(text, "{value}")
        } else {
            write!(text, "{value:e}")
        };
        debug_assert!(written.is_ok(), "double text overflowed its buffer");
        text
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Write for DoubleText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let Some(slot) = self.bytes.get_mut(self.len..end) else {
            return Err(std::fmt::Error);
        };
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(reply: &Reply, protocol: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_reply(reply, protocol, &mut out);
        out.to_vec()
    }

    /// Asserts the RESP2 and RESP3 encodings of `reply`.
    #[track_caller]
    fn assert_encodes(reply: Reply, resp2: &[u8], resp3: &[u8]) {
        assert_eq!(
            String::from_utf8_lossy(&encode(&reply, Protocol::Resp2)),
            String::from_utf8_lossy(resp2),
            "RESP2 of {reply:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&encode(&reply, Protocol::Resp3)),
            String::from_utf8_lossy(resp3),
            "RESP3 of {reply:?}"
        );
    }

    #[test]
    fn simple_types() {
        assert_encodes(Reply::OK, b"+OK\r\n", b"+OK\r\n");
        assert_encodes(Reply::StatusOwned("string".into()), b"+string\r\n", b"+string\r\n");
        assert_encodes(Reply::err("boom"), b"-ERR boom\r\n", b"-ERR boom\r\n");
        assert_encodes(Reply::Integer(-42), b":-42\r\n", b":-42\r\n");
        assert_encodes(Reply::Integer(i64::MIN), b":-9223372036854775808\r\n", b":-9223372036854775808\r\n");
        assert_encodes(Reply::bulk("hi"), b"$2\r\nhi\r\n", b"$2\r\nhi\r\n");
        assert_encodes(Reply::bulk(""), b"$0\r\n\r\n", b"$0\r\n\r\n");
    }

    #[test]
    fn nulls() {
        assert_encodes(Reply::Null, b"$-1\r\n", b"_\r\n");
        assert_encodes(Reply::NullArray, b"*-1\r\n", b"_\r\n");
    }

    #[test]
    fn errors_and_statuses_cannot_break_the_line() {
        assert_encodes(Reply::Error("ERR a\r\nb\rc\nd".into()), b"-ERR a  b c d\r\n", b"-ERR a  b c d\r\n");
        assert_encodes(Reply::StatusOwned("a\r\n+b".into()), b"+a  +b\r\n", b"+a  +b\r\n");
    }

    #[test]
    fn aggregates() {
        assert_encodes(Reply::Array(vec![]), b"*0\r\n", b"*0\r\n");
        assert_encodes(
            Reply::Array(vec![Reply::Integer(1), Reply::bulk("a"), Reply::Null]),
            b"*3\r\n:1\r\n$1\r\na\r\n$-1\r\n",
            b"*3\r\n:1\r\n$1\r\na\r\n_\r\n",
        );
        assert_encodes(
            Reply::Map(vec![(Reply::bulk("k"), Reply::Integer(1)), (Reply::bulk("m"), Reply::Boolean(true))]),
            b"*4\r\n$1\r\nk\r\n:1\r\n$1\r\nm\r\n:1\r\n",
            b"%2\r\n$1\r\nk\r\n:1\r\n$1\r\nm\r\n#t\r\n",
        );
        assert_encodes(Reply::Set(vec![Reply::bulk("x")]), b"*1\r\n$1\r\nx\r\n", b"~1\r\n$1\r\nx\r\n");
    }

    #[test]
    fn booleans() {
        assert_encodes(Reply::Boolean(true), b":1\r\n", b"#t\r\n");
        assert_encodes(Reply::Boolean(false), b":0\r\n", b"#f\r\n");
    }

    #[test]
    fn verbatim() {
        assert_encodes(
            Reply::Verbatim(Bytes::from_static(b"Some string")),
            b"$11\r\nSome string\r\n",
            b"=15\r\ntxt:Some string\r\n",
        );
    }

    #[test]
    fn doubles() {
        assert_encodes(Reply::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n");
        assert_encodes(Reply::Double(10.0), b"$2\r\n10\r\n", b",10\r\n");
        assert_encodes(Reply::Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n");
        assert_encodes(Reply::Double(f64::NEG_INFINITY), b"$4\r\n-inf\r\n", b",-inf\r\n");
        assert_encodes(Reply::Double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n");
        assert_encodes(Reply::Double(0.0), b"$1\r\n0\r\n", b",0\r\n");
    }

    #[test]
    fn double_text_is_short_and_round_trips() {
        let cases: [(f64, &str); 10] = [
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e-5, "0.00001"),
            (1e300, "1e300"),
            (1.5e-7, "1.5e-7"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (1e17, "1e17"),
            (1e16, "10000000000000000"),
        ];
        for (value, text) in cases {
            let encoded = DoubleText::new(value);
            assert_eq!(std::str::from_utf8(encoded.as_bytes()).unwrap(), text);
            assert_eq!(text.parse::<f64>().unwrap(), value);
        }
        // About the longest plain text there is: it fits the buffer.
        let long = DoubleText::new(-1.2345678901234567e-5);
        let long = std::str::from_utf8(long.as_bytes()).unwrap();
        assert_eq!(long, "-0.000012345678901234568");
        assert_eq!(long.parse::<f64>().unwrap(), -1.2345678901234567e-5);
    }
}
