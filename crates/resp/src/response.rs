//! Reply parsing (client side): used by `chorus bench`, the CLI and tests.

use bytes::{Bytes, BytesMut};

use crate::Reply;
use crate::request::parse_i64;

/// A reply stream that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// Parses one reply (RESP2 or RESP3) from the front of `buf`, removing it. `Ok(None)` when incomplete.
/// Simple strings come back as `Reply::StatusOwned`, `$-1` as `Reply::Null`, `*-1` as
/// `Reply::NullArray`, RESP3 `_` as `Reply::Null`, pushes (`>`) as arrays. Attributes (`|`) are
/// auxiliary data by the RESP3 spec: they are skipped and the reply that follows them is returned.
/// Other RESP3 types: `,` as `Double`, `#` as `Boolean`, `%` as `Map`, `~` as `Set`, `=` as
/// `Verbatim` (its format prefix dropped), `(` big numbers as `StatusOwned` of their digits, `!`
/// blob errors as `Error`. Nesting deeper than 64 aggregates is an error, not a stack overflow.
pub fn parse_reply(buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
    // First pass: find where the reply ends without building anything, so an incomplete reply
    // costs no allocation. Second pass: build it from the frozen bytes, bulk strings as slices.
    let scan = Parser { src: buf, frozen: None };
    let Some((_, end)) = scan.value(0, 0)? else {
        return Ok(None);
    };
    let frame = buf.split_to(end).freeze();
    let build = Parser { src: &frame, frozen: Some(&frame) };
    match build.value(0, 0)? {
        Some((reply, built_end)) if built_end == end => Ok(Some(reply)),
        _ => Err(malformed("reply changed between scan and build")),
    }
}

/// How deep aggregates may nest: real replies stay within a handful of levels.
const DEPTH_MAX: usize = 64;

fn malformed(detail: impl Into<String>) -> ReplyError {
    ReplyError::Malformed(detail.into())
}

/// A parsed value and the offset just past it; `None` when the buffer ends first.
type Parsed<T> = Result<Option<(T, usize)>, ReplyError>;

/// Returns `None` from the enclosing function when the inner result is incomplete.
macro_rules! ready {
    ($e:expr) => {
        match $e? {
            Some(parsed) => parsed,
            None => return Ok(None),
        }
    };
}

/// Reads one reply from `src`. Without `frozen` it only validates and measures (building
/// placeholders that do not allocate); with `frozen` (the same bytes) it builds the real reply.
struct Parser<'a> {
    src: &'a [u8],
    frozen: Option<&'a Bytes>,
}

impl Parser<'_> {
    fn value(&self, pos: usize, depth: usize) -> Parsed<Reply> {
        if depth > DEPTH_MAX {
            return Err(malformed(format!("nesting deeper than {DEPTH_MAX}")));
        }
        let Some(&kind) = self.src.get(pos) else {
            return Ok(None);
        };
        let body = pos + 1;
        let parsed = match kind {
            b'+' => {
                let (line, next) = ready!(self.line(body));
                (self.text(line, Reply::StatusOwned), next)
            }
            b'-' => {
                let (line, next) = ready!(self.line(body));
                (self.text(line, Reply::Error), next)
            }
            b'(' => {
                let (line, next) = ready!(self.line(body));
                let digits = line.strip_prefix(b"-").or_else(|| line.strip_prefix(b"+")).unwrap_or(line);
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(malformed("invalid big number"));
                }
                (self.text(line, Reply::StatusOwned), next)
            }
            b':' => {
                let (value, next) = ready!(self.integer(body));
                (Reply::Integer(value), next)
            }
            b',' => {
                let (line, next) = ready!(self.line(body));
                (Reply::Double(parse_double(line).ok_or_else(|| malformed("invalid double"))?), next)
            }
            b'#' => {
                let (line, next) = ready!(self.line(body));
                let value = match line {
                    b"t" => true,
                    b"f" => false,
                    _ => return Err(malformed("invalid boolean")),
                };
                (Reply::Boolean(value), next)
            }
            b'_' => {
                let (line, next) = ready!(self.line(body));
                if !line.is_empty() {
                    return Err(malformed("invalid null"));
                }
                (Reply::Null, next)
            }
            b'$' => match ready!(self.blob(body)) {
                (None, next) => (Reply::Null, next),
                (Some((start, end)), next) => (self.bytes(start, end, Reply::Bulk), next),
            },
            b'!' => match ready!(self.blob(body)) {
                (None, _) => return Err(malformed("null blob error")),
                (Some((start, end)), next) => (self.text(&self.src[start..end], Reply::Error), next),
            },
            b'=' => match ready!(self.blob(body)) {
                (Some((start, end)), next) if end - start >= 4 && self.src[start + 3] == b':' => {
                    (self.bytes(start + 4, end, Reply::Verbatim), next)
                }
                _ => return Err(malformed("invalid verbatim string")),
            },
            b'*' | b'~' | b'>' => {
                let (count, next) = ready!(self.integer(body));
                if count == -1 && kind == b'*' {
                    (Reply::NullArray, next)
                } else {
                    let count = usize::try_from(count).map_err(|_| malformed("invalid aggregate length"))?;
                    let (items, next) = ready!(self.items(count, next, depth));
                    (if kind == b'~' { Reply::Set(items) } else { Reply::Array(items) }, next)
                }
            }
            b'%' => {
                let (pairs, next) = ready!(self.map(body, depth));
                (Reply::Map(pairs), next)
            }
            b'|' => {
                let (_attributes, next) = ready!(self.map(body, depth));
                ready!(self.value(next, depth + 1))
            }
            other => return Err(malformed(format!("unexpected type byte {other:#04x}"))),
        };
        Ok(Some(parsed))
    }

    fn building(&self) -> bool {
        self.frozen.is_some()
    }

    /// The text between `pos` and the next CRLF, and the offset after the LF.
    fn line(&self, pos: usize) -> Parsed<&[u8]> {
        let rest = self.src.get(pos..).unwrap_or_default();
        let Some(newline) = memchr::memchr(b'\n', rest) else {
            return Ok(None);
        };
        match newline.checked_sub(1).map(|cr| (cr, rest[cr])) {
            Some((cr, b'\r')) => Ok(Some((&rest[..cr], pos + newline + 1))),
            _ => Err(malformed("line not terminated by CRLF")),
        }
    }

    fn integer(&self, pos: usize) -> Parsed<i64> {
        let (line, next) = ready!(self.line(pos));
        let value = parse_i64(line).ok_or_else(|| malformed("invalid integer"))?;
        Ok(Some((value, next)))
    }

    /// A `<len>\r\n<payload>\r\n` body: `None` for the null length -1, else the payload's span.
    fn blob(&self, pos: usize) -> Parsed<Option<(usize, usize)>> {
        let (len, start) = ready!(self.integer(pos));
        if len == -1 {
            return Ok(Some((None, start)));
        }
        let len = usize::try_from(len).map_err(|_| malformed("invalid bulk length"))?;
        let end = start.checked_add(len).ok_or_else(|| malformed("invalid bulk length"))?;
        match self.src.get(end) {
            None => return Ok(None),
            Some(b'\r') => {}
            Some(_) => return Err(malformed("bulk string not terminated by CRLF")),
        }
        // `end` indexes a byte, so `end + 1` cannot overflow.
        match self.src.get(end + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((Some((start, end)), end + 2))),
            Some(_) => Err(malformed("bulk string not terminated by CRLF")),
        }
    }

    fn items(&self, count: usize, mut pos: usize, depth: usize) -> Parsed<Vec<Reply>> {
        let mut items = Vec::new();
        if self.building() {
            // Building happens only on a complete frame whose elements take 3 bytes or more.
            items.reserve(count.min(self.src.len() / 3));
        }
        for _ in 0..count {
            let (item, next) = ready!(self.value(pos, depth + 1));
            if self.building() {
                items.push(item);
            }
            pos = next;
        }
        Ok(Some((items, pos)))
    }

    /// A `<count>\r\n` then `count` key/value pairs (the body of `%` and `|`).
    fn map(&self, pos: usize, depth: usize) -> Parsed<Vec<(Reply, Reply)>> {
        let (count, mut pos) = ready!(self.integer(pos));
        let count = usize::try_from(count).map_err(|_| malformed("invalid map length"))?;
        let mut pairs = Vec::new();
        if self.building() {
            pairs.reserve(count.min(self.src.len() / 6));
        }
        for _ in 0..count {
            let (key, next) = ready!(self.value(pos, depth + 1));
            let (value, next) = ready!(self.value(next, depth + 1));
            if self.building() {
                pairs.push((key, value));
            }
            pos = next;
        }
        Ok(Some((pairs, pos)))
    }

    /// A text reply when building, a placeholder that does not allocate when scanning.
    fn text(&self, bytes: &[u8], make: fn(String) -> Reply) -> Reply {
        if self.building() { make(String::from_utf8_lossy(bytes).into_owned()) } else { Reply::Null }
    }

    fn bytes(&self, start: usize, end: usize, make: fn(Bytes) -> Reply) -> Reply {
        match self.frozen {
            Some(frozen) => make(frozen.slice(start..end)),
            None => Reply::Null,
        }
    }
}

/// A RESP3 double: `inf`, `-inf`, `nan` or a decimal/exponent number.
fn parse_double(text: &[u8]) -> Option<f64> {
    match text {
        b"inf" | b"+inf" => Some(f64::INFINITY),
        b"-inf" => Some(f64::NEG_INFINITY),
        b"nan" | b"-nan" => Some(f64::NAN),
        _ => std::str::from_utf8(text).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> (Result<Option<Reply>, ReplyError>, Vec<u8>) {
        let mut buf = BytesMut::from(input);
        let result = parse_reply(&mut buf);
        (result, buf.to_vec())
    }

    #[track_caller]
    fn assert_parses(input: &[u8], expected: Reply) {
        let (result, rest) = parse(input);
        assert_eq!(result, Ok(Some(expected)), "{:?}", String::from_utf8_lossy(input));
        assert!(rest.is_empty(), "the whole reply is consumed");
    }

    #[track_caller]
    fn assert_malformed(input: &[u8]) {
        let (result, rest) = parse(input);
        assert!(matches!(result, Err(ReplyError::Malformed(_))), "{:?}: {result:?}", String::from_utf8_lossy(input));
        assert_eq!(rest, input, "an error consumes nothing");
    }

    fn bulk(text: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn resp2_types() {
        assert_parses(b"+OK\r\n", Reply::StatusOwned("OK".into()));
        assert_parses(b"-ERR boom\r\n", Reply::Error("ERR boom".into()));
        assert_parses(b":-7\r\n", Reply::Integer(-7));
        assert_parses(b"$5\r\nhe\r\no\r\n", bulk("he\r\no"));
        assert_parses(b"$0\r\n\r\n", bulk(""));
        assert_parses(b"$-1\r\n", Reply::Null);
        assert_parses(b"*-1\r\n", Reply::NullArray);
        assert_parses(b"*0\r\n", Reply::Array(vec![]));
        assert_parses(
            b"*2\r\n:1\r\n*1\r\n+x\r\n",
            Reply::Array(vec![Reply::Integer(1), Reply::Array(vec![Reply::StatusOwned("x".into())])]),
        );
    }

    #[test]
    fn resp3_types() {
        assert_parses(b"_\r\n", Reply::Null);
        assert_parses(b",1.5\r\n", Reply::Double(1.5));
        assert_parses(b",-inf\r\n", Reply::Double(f64::NEG_INFINITY));
        assert_parses(b",inf\r\n", Reply::Double(f64::INFINITY));
        assert_parses(b",1e300\r\n", Reply::Double(1e300));
        assert!(matches!(parse(b",nan\r\n").0, Ok(Some(Reply::Double(value))) if value.is_nan()));
        assert_parses(b"#t\r\n", Reply::Boolean(true));
        assert_parses(b"#f\r\n", Reply::Boolean(false));
        assert_parses(b"%1\r\n+k\r\n:1\r\n", Reply::Map(vec![(Reply::StatusOwned("k".into()), Reply::Integer(1))]));
        assert_parses(b"~2\r\n:1\r\n:2\r\n", Reply::Set(vec![Reply::Integer(1), Reply::Integer(2)]));
        assert_parses(b"=15\r\ntxt:Some string\r\n", Reply::Verbatim(Bytes::from_static(b"Some string")));
        assert_parses(
            b"(3492890328409238509324850943850943825024385\r\n",
            Reply::StatusOwned("3492890328409238509324850943850943825024385".into()),
        );
        assert_parses(b"(-12\r\n", Reply::StatusOwned("-12".into()));
        assert_parses(b"!21\r\nSYNTAX invalid syntax\r\n", Reply::Error("SYNTAX invalid syntax".into()));
        assert_parses(
            b">2\r\n+message\r\n:1\r\n",
            Reply::Array(vec![Reply::StatusOwned("message".into()), Reply::Integer(1)]),
        );
    }

    #[test]
    fn attributes_are_skipped() {
        assert_parses(
            b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2039123\r\n",
            Reply::Array(vec![Reply::Integer(2039123)]),
        );
        // Inside an aggregate too.
        assert_parses(
            b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n",
            Reply::Array(vec![Reply::Integer(1), Reply::Integer(2)]),
        );
        // An attribute without its reply is incomplete.
        assert_eq!(parse(b"|1\r\n+a\r\n+b\r\n").0, Ok(None));
    }

    #[test]
    fn pipelined_replies() {
        let mut buf = BytesMut::from(&b"+OK\r\n:1\r\n$1\r\na\r\n*1\r\n"[..]);
        assert_eq!(parse_reply(&mut buf), Ok(Some(Reply::StatusOwned("OK".into()))));
        assert_eq!(parse_reply(&mut buf), Ok(Some(Reply::Integer(1))));
        assert_eq!(parse_reply(&mut buf), Ok(Some(bulk("a"))));
        assert_eq!(parse_reply(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"*1\r\n");
    }

    #[test]
    fn bulk_replies_are_slices_not_copies() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nabc\r\n$3\r\ndef\r\n"[..]);
        let Some(Reply::Array(items)) = parse_reply(&mut buf).unwrap() else { panic!("an array") };
        let (Reply::Bulk(first), Reply::Bulk(second)) = (&items[0], &items[1]) else { panic!("bulk strings") };
        assert_eq!(second.as_ptr() as usize - first.as_ptr() as usize, 9, "both point into one frozen frame");
    }

    #[test]
    fn incomplete_replies_consume_nothing() {
        let full: &[u8] = b"*3\r\n%1\r\n+k\r\n,2.5\r\n$3\r\nabc\r\n=7\r\ntxt:abc\r\n";
        for end in 0..full.len() {
            assert_eq!(parse(&full[..end]), (Ok(None), full[..end].to_vec()), "prefix of {end} bytes");
        }
        assert!(matches!(parse(full).0, Ok(Some(Reply::Array(_)))));
    }

    #[test]
    fn malformed_replies() {
        assert_malformed(b"?\r\n");
        assert_malformed(b":abc\r\n");
        assert_malformed(b":1\n");
        assert_malformed(b"$-2\r\n");
        assert_malformed(b"$3\r\nabcd\r\n");
        assert_malformed(b"*-2\r\n");
        assert_malformed(b"%-1\r\n");
        assert_malformed(b"~-1\r\n");
        assert_malformed(b"#x\r\n");
        assert_malformed(b",abc\r\n");
        assert_malformed(b",\r\n");
        assert_malformed(b"_x\r\n");
        assert_malformed(b"=3\r\nabc\r\n");
        assert_malformed(b"=4\r\nabcd\r\n");
        assert_malformed(b"(12a\r\n");
        assert_malformed(b"!-1\r\n");
        assert_malformed(b"$?\r\n");
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "*1\r\n".repeat(10_000);
        assert_malformed(deep.as_bytes());
        let ok_depth = format!("{}:1\r\n", "*1\r\n".repeat(DEPTH_MAX));
        assert!(matches!(parse(ok_depth.as_bytes()).0, Ok(Some(Reply::Array(_)))));
        let too_deep = format!("{}:1\r\n", "*1\r\n".repeat(DEPTH_MAX + 1));
        assert_malformed(too_deep.as_bytes());
    }

    #[test]
    fn huge_claimed_lengths_allocate_nothing_and_wait() {
        assert_eq!(parse(b"$9223372036854775807\r\nabc").0, Ok(None));
        assert_eq!(parse(b"*9223372036854775807\r\n:1\r\n").0, Ok(None));
        assert_eq!(parse(b"%9223372036854775807\r\n:1\r\n:2\r\n").0, Ok(None));
    }
}
