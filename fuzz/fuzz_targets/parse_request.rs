//! `parse_request` over arbitrary bytes: never panics, consumes bytes exactly when it returns a
//! request, consumes nothing when incomplete, and gives the same requests (and the same first error)
//! whether the bytes arrive at once or in pieces, statelessly or with a resuming `RequestParser`.
#![no_main]

use bytes::{Bytes, BytesMut};
use chorus_resp::{Limits, ProtocolError, RequestParser, parse_request};
use libfuzzer_sys::fuzz_target;

/// Small limits so that the limit paths are reached by small inputs.
const LIMITS: Limits = Limits { bulk_bytes_max: 64, array_len_max: 16, inline_bytes_max: 128 };

type Outcome = (Vec<Vec<Bytes>>, Option<ProtocolError>);

/// Parses every request in `buf`; the requests and the error that stopped it, if any.
fn drain(buf: &mut BytesMut, mut parse: impl FnMut(&mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError>) -> Outcome {
    let mut requests = Vec::new();
    loop {
        let before = buf.len();
        match parse(buf) {
            Ok(Some(request)) => {
                assert!(buf.len() < before, "a request consumes bytes");
                requests.push(request);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "incomplete consumes nothing");
                return (requests, None);
            }
            Err(error) => return (requests, Some(error)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk_bytes = usize::from(chunk).max(1);

    let mut whole = BytesMut::from(data);
    let expected = drain(&mut whole, |buf| parse_request(buf, &LIMITS));

    // The same bytes in pieces, with a resuming parser: the same requests, the same error.
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let mut error = None;
    for piece in data.chunks(chunk_bytes) {
        buf.extend_from_slice(piece);
        let (more, stopped) = drain(&mut buf, |buf| parser.parse(buf, &LIMITS));
        requests.extend(more);
        if stopped.is_some() {
            error = stopped;
            break;
        }
    }
    assert_eq!((requests, error), expected, "pieces of {chunk_bytes} bytes");
});
