//! Request parsing (server side) and request encoding (client side).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use memchr::memchr;

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
        Limits { bulk_bytes_max: 64 * 1024 * 1024, array_len_max: 1024 * 1024, inline_bytes_max: 64 * 1024 }
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
///
/// This function keeps no state, so a request that arrives in many reads is re-scanned from its
/// start on each call (only its headers: payloads are skipped by length). A connection that expects
/// requests with very many arguments can use [`RequestParser`], which resumes where it stopped.
pub fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    RequestParser::new().parse(buf, limits)
}

/// A request parser that remembers how far it validated an incomplete multibulk request, so that a
/// request with a million arguments arriving in a thousand reads costs one scan, not a thousand.
///
/// Same results as [`parse_request`]. Contract: between a call that returned `Ok(None)` and the next
/// call, the caller only appends to `buf` (as a read loop does). Breaking it cannot make the parser
/// panic or return arguments that are not in the consumed bytes (the whole frame is checked again
/// when it is split off), but it can make it return an error; call [`RequestParser::reset`] after
/// changing the buffer in any other way.
#[derive(Debug, Clone, Default)]
pub struct RequestParser {
    progress: Option<Progress>,
}

/// How far a multibulk request at the front of the buffer has been validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// The `<n>` of `*<n>`.
    args_total: usize,
    /// Arguments whose header, payload and CRLF have been checked.
    args_done: usize,
    /// Offset of the next argument's `$` (or of the end of the frame when all are done).
    pos: usize,
}

impl RequestParser {
    pub fn new() -> Self {
        RequestParser { progress: None }
    }

    /// Forgets any partially validated request.
    pub fn reset(&mut self) {
        self.progress = None;
    }

    /// As [`parse_request`], resuming an incomplete multibulk request where the last call stopped.
    pub fn parse(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let progress = self.progress.take();
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'*' {
            return parse_inline(buf, limits);
        }

        let mut progress = match progress.filter(|p| p.pos <= buf.len()) {
            Some(progress) => progress,
            None => match read_multibulk_header(buf, limits)? {
                None => return Ok(None),
                Some((0, header_end)) => {
                    buf.advance(header_end);
                    return Ok(Some(Vec::new()));
                }
                Some((args_total, header_end)) => Progress { args_total, args_done: 0, pos: header_end },
            },
        };

        if !walk_args(buf, limits, &mut progress, |_, _| {})? {
            self.progress = Some(progress);
            return Ok(None);
        }
        let frame = buf.split_to(progress.pos).freeze();
        split_frame(&frame, limits).map(Some)
    }
}

/// The longest text a valid length header can carry between its type byte and CR:
/// `-9223372036854775808` is 20 characters.
const HEADER_TEXT_BYTES_MAX: usize = 20;

/// Reads a `<type><integer>\r\n` header whose type byte is at `start`.
/// `Ok(Some((value, offset after the LF)))`, `Ok(None)` when incomplete, `Err(())` when malformed.
/// Rejects a bad character as soon as it arrives instead of waiting for the CR.
fn read_header(buf: &[u8], start: usize) -> Result<Option<(i64, usize)>, ()> {
    let text_start = start + 1;
    let window_end = buf.len().min(text_start + HEADER_TEXT_BYTES_MAX + 1);
    let window = buf.get(text_start..window_end).unwrap_or_default();
    for (i, &byte) in window.iter().enumerate() {
        match byte {
            b'0'..=b'9' | b'-' => {}
            b'\r' => {
                let cr = text_start + i;
                return match buf.get(cr + 1) {
                    None => Ok(None),
                    Some(b'\n') => parse_i64(&window[..i]).map(|value| Some((value, cr + 2))).ok_or(()),
                    Some(_) => Err(()),
                };
            }
            _ => return Err(()),
        }
    }
    if window.len() > HEADER_TEXT_BYTES_MAX { Err(()) } else { Ok(None) }
}

/// Parses a decimal `i64` exactly as Redis's `string2ll` does: optional `-`, no `+`, no leading
/// zeros (except `0` itself), no `-0`, no spaces, no overflow.
pub(crate) fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
    }
    if negative { 0i64.checked_sub_unsigned(magnitude) } else { i64::try_from(magnitude).ok() }
}

/// Reads `*<n>\r\n` at the front of `buf`: `Some((n, header_end))` with `n` clamped to 0 for
/// negative counts (Redis treats `*-1` like `*0`), checked against `limits.array_len_max`.
fn read_multibulk_header(buf: &[u8], limits: &Limits) -> Result<Option<(usize, usize)>, ProtocolError> {
    match read_header(buf, 0) {
        Err(()) => Err(ProtocolError::InvalidMultibulkLength),
        Ok(None) => Ok(None),
        Ok(Some((count, header_end))) => {
            if count <= 0 {
                return Ok(Some((0, header_end)));
            }
            match usize::try_from(count) {
                Ok(count) if count <= limits.array_len_max => Ok(Some((count, header_end))),
                _ => Err(ProtocolError::InvalidMultibulkLength),
            }
        }
    }
}

/// Validates bulk strings from `progress.pos` on, advancing `progress` past each whole one and
/// calling `on_arg(payload_start, payload_end)` for it. `Ok(true)` once all `args_total` are done,
/// `Ok(false)` when the buffer ends first. Never indexes out of bounds: every access is checked.
fn walk_args(
    buf: &[u8],
    limits: &Limits,
    progress: &mut Progress,
    mut on_arg: impl FnMut(usize, usize),
) -> Result<bool, ProtocolError> {
    while progress.args_done < progress.args_total {
        let pos = progress.pos;
        let Some(&kind) = buf.get(pos) else {
            return Ok(false);
        };
        if kind != b'$' {
            return Err(ProtocolError::ExpectedBulk(char::from(kind)));
        }
        let (len, payload_start) = match read_header(buf, pos) {
            Err(()) => return Err(ProtocolError::InvalidBulkLength),
            Ok(None) => return Ok(false),
            Ok(Some(header)) => header,
        };
        let len = match usize::try_from(len) {
            Ok(len) if len <= limits.bulk_bytes_max => len,
            _ => return Err(ProtocolError::InvalidBulkLength),
        };
        let Some(payload_end) = payload_start.checked_add(len) else {
            return Err(ProtocolError::InvalidBulkLength);
        };
        match buf.get(payload_end) {
            None => return Ok(false),
            Some(b'\r') => {}
            Some(_) => return Err(ProtocolError::MissingCrlf),
        }
        match buf.get(payload_end + 1) {
            None => return Ok(false),
            Some(b'\n') => {}
            Some(_) => return Err(ProtocolError::MissingCrlf),
        }
        on_arg(payload_start, payload_end);
        progress.args_done += 1;
        progress.pos = payload_end + 2;
    }
    Ok(true)
}

/// Splits a complete, already validated multibulk frame into argument slices. Checks everything
/// again (headers only; payloads are skipped by length), so a frame that does not parse to exactly
/// its own length is an error rather than wrong arguments.
fn split_frame(frame: &Bytes, limits: &Limits) -> Result<Vec<Bytes>, ProtocolError> {
    let Some((args_total, header_end)) = read_multibulk_header(frame, limits)? else {
        return Err(ProtocolError::InvalidMultibulkLength);
    };
    // The frame is complete, so it really holds `args_total` arguments of at least 6 bytes each
    // (`$0\r\n\r\n`): this capacity is bounded by bytes received, not by a claimed length.
    let mut args = Vec::with_capacity(args_total.min(frame.len() / 6));
    let mut progress = Progress { args_total, args_done: 0, pos: header_end };
    let complete = walk_args(frame, limits, &mut progress, |start, end| args.push(frame.slice(start..end)))?;
    if !complete || progress.pos != frame.len() {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    debug_assert_eq!(args.len(), args_total);
    Ok(args)
}

/// One inline argument: a span of the line when it had no quotes, else its unescaped bytes.
enum InlineArg {
    Span(usize, usize),
    Owned(Vec<u8>),
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    // A line is too big when more than `inline_bytes_max` bytes precede its `\n`. Looking only at
    // that many bytes gives the same answer however the line is split across reads.
    let window_end = buf.len().min(limits.inline_bytes_max.saturating_add(1));
    let Some(newline) = memchr(b'\n', &buf[..window_end]) else {
        return if buf.len() > limits.inline_bytes_max { Err(ProtocolError::InlineTooBig) } else { Ok(None) };
    };
    let line_end = if newline > 0 && buf[newline - 1] == b'\r' { newline - 1 } else { newline };
    let inline_args = split_inline(&buf[..line_end])?;
    let frame = buf.split_to(newline + 1).freeze();
    let args = inline_args
        .into_iter()
        .map(|arg| match arg {
            InlineArg::Span(start, end) => frame.slice(start..end),
            InlineArg::Owned(bytes) => Bytes::from(bytes),
        })
        .collect();
    Ok(Some(args))
}

/// C's `isspace` in the "C" locale, which Redis uses to skip blanks between inline arguments.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline line with the rules of Redis's `sdssplitargs`: blanks separate arguments;
/// `"..."` takes the escapes `\n \r \t \b \a \xHH` and `\<any>` for that character; `'...'` takes
/// only `\'`; a closing quote must be followed by a blank or the end of the line; quotes may start
/// in the middle of an argument (`a"b c"` is `ab c`). Like Redis (which works on a C string), a NUL
/// byte ends the line.
fn split_inline(line: &[u8]) -> Result<Vec<InlineArg>, ProtocolError> {
    #[derive(Clone, Copy)]
    enum Mode {
        Plain,
        Double,
        Single,
    }

    let line = match memchr(0, line) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p >= line.len() {
            return Ok(args);
        }
        let start = p;
        // Only a quoted argument needs its own bytes; a plain one stays a span of the line.
        let mut owned: Option<Vec<u8>> = None;
        let mut mode = Mode::Plain;
        loop {
            let byte = line.get(p).copied();
            match mode {
                Mode::Plain => match byte {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(quote @ (b'"' | b'\'')) => {
                        owned.get_or_insert_with(|| line[start..p].to_vec());
                        mode = if quote == b'"' { Mode::Double } else { Mode::Single };
                        p += 1;
                    }
                    Some(other) => {
                        if let Some(owned) = owned.as_mut() {
                            owned.push(other);
                        }
                        p += 1;
                    }
                },
                Mode::Double => {
                    let owned = owned.get_or_insert_with(Vec::new);
                    match byte {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'\\') => {
                            let hex = line.get(p + 1) == Some(&b'x');
                            let high = line.get(p + 2).copied().and_then(hex_value);
                            let low = line.get(p + 3).copied().and_then(hex_value);
                            match (hex, high, low, line.get(p + 1)) {
                                (true, Some(high), Some(low), _) => {
                                    owned.push((high << 4) | low);
                                    p += 4;
                                }
                                (_, _, _, Some(&escaped)) => {
                                    owned.push(match escaped {
                                        b'n' => b'\n',
                                        b'r' => b'\r',
                                        b't' => b'\t',
                                        b'b' => 0x08,
                                        b'a' => 0x07,
                                        other => other,
                                    });
                                    p += 2;
                                }
                                // A backslash ending the line: the quote is never closed.
                                (_, _, _, None) => return Err(ProtocolError::UnbalancedQuotes),
                            }
                        }
                        Some(b'"') => {
                            if line.get(p + 1).is_some_and(|&next| !is_space(next)) {
                                return Err(ProtocolError::UnbalancedQuotes);
                            }
                            p += 1;
                            break;
                        }
                        Some(other) => {
                            owned.push(other);
                            p += 1;
                        }
                    }
                }
                Mode::Single => {
                    let owned = owned.get_or_insert_with(Vec::new);
                    match byte {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'\\') if line.get(p + 1) == Some(&b'\'') => {
                            owned.push(b'\'');
                            p += 2;
                        }
                        Some(b'\'') => {
                            if line.get(p + 1).is_some_and(|&next| !is_space(next)) {
                                return Err(ProtocolError::UnbalancedQuotes);
                            }
                            p += 1;
                            break;
                        }
                        Some(other) => {
                            owned.push(other);
                            p += 1;
                        }
                    }
                }
            }
        }
        args.push(match owned {
            Some(bytes) => InlineArg::Owned(bytes),
            None => InlineArg::Span(start, p),
        });
    }
}

/// Appends `args` encoded as a RESP array of bulk strings (what clients send).
pub fn encode_request<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    // `$<len>\r\n` + `\r\n` is at most 25 bytes around each payload.
    let payload_bytes: usize = args.iter().map(|arg| arg.as_ref().len() + 25).sum();
    out.reserve(payload_bytes + 25);
    let mut digits = itoa::Buffer::new();
    out.put_u8(b'*');
    out.put_slice(digits.format(args.len()).as_bytes());
    out.put_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.put_u8(b'$');
        out.put_slice(digits.format(arg.len()).as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn small_limits() -> Limits {
        Limits { bulk_bytes_max: 16, array_len_max: 4, inline_bytes_max: 32 }
    }

    /// Parses one request from `input` with `limits`, returning the result and the bytes left.
    fn parse_with(input: &[u8], limits: &Limits) -> (Result<Option<Vec<Bytes>>, ProtocolError>, Vec<u8>) {
        let mut buf = BytesMut::from(input);
        let result = parse_request(&mut buf, limits);
        (result, buf.to_vec())
    }

    fn parse_one(input: &[u8]) -> (Result<Option<Vec<Bytes>>, ProtocolError>, Vec<u8>) {
        parse_with(input, &limits())
    }

    fn args(list: &[&[u8]]) -> Vec<Bytes> {
        list.iter().map(|arg| Bytes::copy_from_slice(arg)).collect()
    }

    fn ok(list: &[&[u8]]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        Ok(Some(args(list)))
    }

    /// Parses every whole request in `buf`, stopping at the first incomplete one or error.
    fn drain(
        parser: &mut RequestParser,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut requests = Vec::new();
        while let Some(request) = parser.parse(buf, limits)? {
            requests.push(request);
        }
        Ok(requests)
    }

    #[test]
    fn multibulk_request() {
        let (result, rest) = parse_one(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n");
        assert_eq!(result, ok(&[b"SET", b"k", b"value"]));
        assert!(rest.is_empty(), "the whole frame is consumed");
    }

    #[test]
    fn multibulk_args_are_slices_of_one_chunk() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]);
        let args = parse_request(&mut buf, &limits()).unwrap().unwrap();
        // Slices of one frozen chunk sit at their offsets inside it.
        let first = args[0].as_ptr() as usize;
        let second = args[1].as_ptr() as usize;
        assert_eq!(second - first, 9, "`GET\\r\\n$1\\r\\n` separates the payloads: no copies");
    }

    #[test]
    fn empty_and_negative_multibulk_are_empty_requests() {
        assert_eq!(parse_one(b"*0\r\n"), (ok(&[]), vec![]));
        assert_eq!(parse_one(b"*-1\r\n"), (ok(&[]), vec![]));
        // Redis treats any negative count like zero.
        assert_eq!(parse_one(b"*-7\r\nPING\r\n"), (ok(&[]), b"PING\r\n".to_vec()));
    }

    #[test]
    fn empty_bulk_argument() {
        assert_eq!(parse_one(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n").0, ok(&[b"ECHO", b""]));
    }

    #[test]
    fn binary_payloads_may_hold_nul_and_crlf() {
        let payload: &[u8] = b"a\r\nb\0c\r\n$3\r\n*1\r\n";
        let mut buf = BytesMut::new();
        encode_request(&[&b"SET"[..], b"k", payload], &mut buf);
        let (result, rest) = parse_one(&buf);
        assert_eq!(result, ok(&[b"SET", b"k", payload]));
        assert!(rest.is_empty());
    }

    #[test]
    fn inline_request() {
        assert_eq!(parse_one(b"PING\r\n"), (ok(&[b"PING"]), vec![]));
        assert_eq!(parse_one(b"SET k v\n").0, ok(&[b"SET", b"k", b"v"]));
        assert_eq!(parse_one(b"  GET \t  key   \r\n").0, ok(&[b"GET", b"key"]));
    }

    #[test]
    fn inline_empty_line_is_an_empty_request() {
        assert_eq!(parse_one(b"\r\n"), (ok(&[]), vec![]));
        assert_eq!(parse_one(b"\n"), (ok(&[]), vec![]));
        assert_eq!(parse_one(b"   \t \r\nPING\r\n"), (ok(&[]), b"PING\r\n".to_vec()));
    }

    #[test]
    fn inline_double_quotes_and_escapes() {
        assert_eq!(parse_one(b"SET k \"hello world\"\r\n").0, ok(&[b"SET", b"k", b"hello world"]));
        assert_eq!(
            parse_one(b"ECHO \"a\\nb\\rc\\td\\be\\af\\\\g\\\"h\"\r\n").0,
            ok(&[b"ECHO", b"a\nb\rc\td\x08e\x07f\\g\"h"])
        );
        assert_eq!(parse_one(b"ECHO \"\\x41\\x7a\\xff\\x00\"\r\n").0, ok(&[b"ECHO", b"Az\xff\0"]));
        // Not a hex escape: `\x` followed by non-hex takes the `x` literally, like any `\<c>`.
        assert_eq!(parse_one(b"ECHO \"\\xZZ\\q\"\r\n").0, ok(&[b"ECHO", b"xZZq"]));
        assert_eq!(parse_one(b"ECHO \"\"\r\n").0, ok(&[b"ECHO", b""]));
        // A quote may start in the middle of an argument.
        assert_eq!(parse_one(b"ECHO a\"b c\"\r\n").0, ok(&[b"ECHO", b"ab c"]));
        // Single quotes inside double quotes are literal.
        assert_eq!(parse_one(b"ECHO \"it's\"\r\n").0, ok(&[b"ECHO", b"it's"]));
    }

    #[test]
    fn inline_single_quotes() {
        assert_eq!(parse_one(b"ECHO 'a b'\r\n").0, ok(&[b"ECHO", b"a b"]));
        assert_eq!(parse_one(b"ECHO 'it\\'s'\r\n").0, ok(&[b"ECHO", b"it's"]));
        // Only `\'` is an escape in single quotes.
        assert_eq!(parse_one(b"ECHO 'a\\nb'\r\n").0, ok(&[b"ECHO", b"a\\nb"]));
        assert_eq!(parse_one(b"ECHO '\"'\r\n").0, ok(&[b"ECHO", b"\""]));
    }

    #[test]
    fn inline_unbalanced_quotes() {
        for line in [
            &b"ECHO \"abc\r\n"[..],
            b"ECHO 'abc\r\n",
            b"ECHO \"abc\"def\r\n",
            b"ECHO 'abc'def\r\n",
            b"ECHO \"abc\\\"\r\n",
            b"ECHO \"abc\\\n",
        ] {
            let (result, rest) = parse_one(line);
            assert_eq!(result, Err(ProtocolError::UnbalancedQuotes), "{:?}", String::from_utf8_lossy(line));
            assert_eq!(rest, line, "an error consumes nothing");
        }
    }

    #[test]
    fn inline_closing_quote_may_be_followed_by_any_blank() {
        assert_eq!(parse_one(b"ECHO \"a\"\x0bb\r\n").0, ok(&[b"ECHO", b"a", b"b"]));
        assert_eq!(parse_one(b"ECHO \"a\"\tb\r\n").0, ok(&[b"ECHO", b"a", b"b"]));
    }

    #[test]
    fn inline_nul_ends_the_line_as_in_redis() {
        assert_eq!(parse_one(b"ECHO a\0b c\r\nPING\r\n"), (ok(&[b"ECHO", b"a"]), b"PING\r\n".to_vec()));
    }

    #[test]
    fn inline_bare_cr_is_a_separator() {
        assert_eq!(parse_one(b"ECHO a\rb\n").0, ok(&[b"ECHO", b"a", b"b"]));
    }

    #[test]
    fn inline_too_big() {
        let limits = small_limits();
        // 32 bytes before the newline are allowed, 33 are not, with or without the newline present.
        let fits = [b'a'; 32];
        let (result, _) = parse_with(&[&fits[..], b"\n"].concat(), &limits);
        assert_eq!(result, ok(&[&fits[..]]));
        let too_long = [b'a'; 33];
        assert_eq!(parse_with(&too_long, &limits).0, Err(ProtocolError::InlineTooBig));
        assert_eq!(parse_with(&[&too_long[..], b"\n"].concat(), &limits).0, Err(ProtocolError::InlineTooBig));
        // Up to the limit without a newline is just incomplete.
        assert_eq!(parse_with(&fits, &limits), (Ok(None), fits.to_vec()));
    }

    #[test]
    fn multibulk_length_errors() {
        for input in [&b"*abc\r\n"[..], b"*1x\r\n", b"*+1\r\n", b"* 1\r\n", b"*01\r\n", b"*-0\r\n", b"*\r\n", b"*1\rX"]
        {
            assert_eq!(
                parse_one(input).0,
                Err(ProtocolError::InvalidMultibulkLength),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Too many digits to be a number is an error before any CR arrives.
        assert_eq!(parse_one(b"*123456789012345678901").0, Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse_one(b"*99999999999999999999\r\n").0, Err(ProtocolError::InvalidMultibulkLength));
    }

    #[test]
    fn multibulk_length_limit_checked_on_the_header_alone() {
        let limits = small_limits();
        assert_eq!(parse_with(b"*4\r\n", &limits), (Ok(None), b"*4\r\n".to_vec()));
        assert_eq!(parse_with(b"*5\r\n", &limits).0, Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse_one(b"*1048577\r\n").0, Err(ProtocolError::InvalidMultibulkLength));
    }

    #[test]
    fn bulk_length_errors() {
        for input in [
            &b"*1\r\n$-1\r\n"[..],
            b"*1\r\n$abc\r\n",
            b"*1\r\n$01\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$3 \r\n",
            b"*1\r\n$3\rX",
            b"*1\r\n$123456789012345678901",
        ] {
            assert_eq!(
                parse_one(input).0,
                Err(ProtocolError::InvalidBulkLength),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bulk_length_limit_checked_before_the_payload() {
        let limits = small_limits();
        assert_eq!(parse_with(b"*1\r\n$16\r\n", &limits), (Ok(None), b"*1\r\n$16\r\n".to_vec()));
        assert_eq!(parse_with(b"*1\r\n$17\r\n", &limits).0, Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse_one(b"*1\r\n$67108865\r\n").0, Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse_one(b"*1\r\n$67108864\r\n").0, Ok(None), "exactly the default limit is fine");
    }

    #[test]
    fn expected_bulk() {
        assert_eq!(parse_one(b"*1\r\n:3\r\n").0, Err(ProtocolError::ExpectedBulk(':')));
        assert_eq!(parse_one(b"*2\r\n$1\r\na\r\nx").0, Err(ProtocolError::ExpectedBulk('x')));
        assert_eq!(parse_one(b"*1\r\n\xff").0, Err(ProtocolError::ExpectedBulk('\u{ff}')));
        assert_eq!(
            ProtocolError::ExpectedBulk('x').to_string(),
            "Protocol error: expected '$', got 'x'",
            "the text Redis sends after `ERR `"
        );
    }

    #[test]
    fn missing_crlf_after_payload() {
        assert_eq!(parse_one(b"*1\r\n$3\r\nabcd\r\n").0, Err(ProtocolError::MissingCrlf));
        assert_eq!(parse_one(b"*1\r\n$3\r\nabc\rX").0, Err(ProtocolError::MissingCrlf));
        assert_eq!(parse_one(b"*1\r\n$3\r\nabc\nX").0, Err(ProtocolError::MissingCrlf));
        // Only the CR so far: still waiting.
        assert_eq!(parse_one(b"*1\r\n$3\r\nabc\r").0, Ok(None));
    }

    #[test]
    fn incomplete_input_consumes_nothing() {
        let full = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for end in 0..full.len() {
            let (result, rest) = parse_one(&full[..end]);
            assert_eq!(result, Ok(None), "prefix of {end} bytes");
            assert_eq!(rest, &full[..end], "prefix of {end} bytes left intact");
        }
        assert_eq!(parse_one(b"PING"), (Ok(None), b"PING".to_vec()));
        assert_eq!(parse_one(b"PING\r"), (Ok(None), b"PING\r".to_vec()));
    }

    #[test]
    fn pipelined_requests_in_one_buffer() {
        let mut buf = BytesMut::new();
        encode_request(&["SET", "a", "1"], &mut buf);
        buf.extend_from_slice(b"PING\r\n");
        encode_request(&["GET", "a"], &mut buf);
        buf.extend_from_slice(b"\r\n");
        encode_request::<&str>(&[], &mut buf);
        buf.extend_from_slice(b"*1\r\n$4\r\nPI");
        let requests = drain(&mut RequestParser::new(), &mut buf, &limits()).unwrap();
        assert_eq!(
            requests,
            vec![args(&[b"SET", b"a", b"1"]), args(&[b"PING"]), args(&[b"GET", b"a"]), args(&[]), args(&[])]
        );
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPI", "the incomplete tail stays");
    }

    /// A buffer mixing every request form, for the split tests.
    fn mixed_stream() -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_request(&[&b"SET"[..], b"key", b"v\r\n\0x"], &mut buf);
        buf.extend_from_slice(b"ECHO \"a b\\x41\" 'c\\'d' plain\r\n");
        encode_request(&[&b"MGET"[..], b"", b"a", b"bb", b"ccc"], &mut buf);
        buf.extend_from_slice(b"\n*0\r\n*-1\r\nPING\n");
        encode_request(&[vec![b'z'; 300]], &mut buf);
        buf.to_vec()
    }

    fn expected_mixed() -> Vec<Vec<Bytes>> {
        vec![
            args(&[b"SET", b"key", b"v\r\n\0x"]),
            args(&[b"ECHO", b"a bA", b"c'd", b"plain"]),
            args(&[b"MGET", b"", b"a", b"bb", b"ccc"]),
            args(&[]),
            args(&[]),
            args(&[]),
            args(&[b"PING"]),
            vec![Bytes::from(vec![b'z'; 300])],
        ]
    }

    #[test]
    fn whole_mixed_stream() {
        let mut buf = BytesMut::from(&mixed_stream()[..]);
        assert_eq!(drain(&mut RequestParser::new(), &mut buf, &limits()).unwrap(), expected_mixed());
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_by_byte_gives_the_same_requests() {
        let stream = mixed_stream();
        for stateful in [false, true] {
            let mut parser = RequestParser::new();
            let mut buf = BytesMut::new();
            let mut requests = Vec::new();
            for &byte in &stream {
                buf.extend_from_slice(&[byte]);
                if !stateful {
                    parser.reset();
                }
                requests.extend(drain(&mut parser, &mut buf, &limits()).unwrap());
            }
            assert_eq!(requests, expected_mixed(), "stateful parser: {stateful}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn every_split_point_gives_the_same_requests() {
        let stream = mixed_stream();
        for split in 0..=stream.len() {
            let mut parser = RequestParser::new();
            let mut buf = BytesMut::from(&stream[..split]);
            let mut requests = drain(&mut parser, &mut buf, &limits()).unwrap();
            buf.extend_from_slice(&stream[split..]);
            requests.extend(drain(&mut parser, &mut buf, &limits()).unwrap());
            assert_eq!(requests, expected_mixed(), "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn stateful_parser_resumes_after_validated_arguments() {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::from(&b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1"[..]);
        assert_eq!(parser.parse(&mut buf, &limits()), Ok(None));
        assert_eq!(parser.progress, Some(Progress { args_total: 3, args_done: 2, pos: 18 }));
        buf.extend_from_slice(b"\r\nc\r\n");
        assert_eq!(parser.parse(&mut buf, &limits()), ok(&[b"a", b"b", b"c"]));
        assert_eq!(parser.progress, None);
    }

    #[test]
    fn stateful_parser_misuse_is_an_error_not_wrong_arguments() {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::from(&b"*2\r\n$1\r\na\r\n"[..]);
        assert_eq!(parser.parse(&mut buf, &limits()), Ok(None));
        // Replace the validated bytes behind the parser's back: the final check catches it.
        buf.clear();
        buf.extend_from_slice(b"*2\r\n$2\r\nab\r\n$1\r\nc\r\n");
        let result = parser.parse(&mut buf, &limits());
        assert!(matches!(result, Err(_) | Ok(Some(_))), "{result:?}");
        if let Ok(Some(request)) = result {
            assert_eq!(request, args(&[b"ab", b"c"]), "any arguments returned are the real ones");
        }
    }

    #[test]
    fn errors_in_a_pipeline_come_after_the_good_requests() {
        let mut buf = BytesMut::from(&b"PING\r\n*1\r\n$x\r\n"[..]);
        let mut parser = RequestParser::new();
        assert_eq!(parser.parse(&mut buf, &limits()), ok(&[b"PING"]));
        assert_eq!(parser.parse(&mut buf, &limits()), Err(ProtocolError::InvalidBulkLength));
    }

    #[test]
    fn encode_request_bytes() {
        let mut buf = BytesMut::new();
        encode_request(&["SET", "k", ""], &mut buf);
        assert_eq!(&buf[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn parse_i64_follows_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"1-",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn protocol_error_texts_match_redis() {
        assert_eq!(ProtocolError::InvalidMultibulkLength.to_string(), "Protocol error: invalid multibulk length");
        assert_eq!(ProtocolError::InvalidBulkLength.to_string(), "Protocol error: invalid bulk length");
        assert_eq!(ProtocolError::InlineTooBig.to_string(), "Protocol error: too big inline request");
        assert_eq!(ProtocolError::UnbalancedQuotes.to_string(), "Protocol error: unbalanced quotes in request");
    }
}
