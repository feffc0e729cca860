//! `parse_reply` over arbitrary bytes: never panics (nesting is bounded), consumes bytes exactly
//! when it returns a reply, consumes nothing when incomplete, and whatever it returns can be encoded
//! in both protocols; the RESP3 encoding of a parsed reply parses again.
#![no_main]

use bytes::BytesMut;
use chorus_resp::{Protocol, encode_reply, parse_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match parse_reply(&mut buf) {
            Ok(Some(reply)) => {
                assert!(buf.len() < before, "a reply consumes bytes");
                let mut resp2 = BytesMut::new();
                encode_reply(&reply, Protocol::Resp2, &mut resp2);
                let mut resp3 = BytesMut::new();
                encode_reply(&reply, Protocol::Resp3, &mut resp3);
                let again = parse_reply(&mut resp3);
                assert!(matches!(again, Ok(Some(_))), "our own encoding parses: {again:?}");
                assert!(resp3.is_empty(), "and is exactly one reply");
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "incomplete consumes nothing");
                break;
            }
            Err(_) => break,
        }
    }
});
