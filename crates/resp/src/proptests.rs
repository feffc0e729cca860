//! Property tests: encoders and parsers agree, and no input makes a parser panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::reply::DoubleText;
use crate::{Limits, Protocol, Reply, RequestParser, encode_reply, encode_request, parse_reply, parse_request};

fn arb_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8)
}

/// Text for status and error lines: anything but CR and LF.
fn arb_line() -> impl Strategy<Value = String> {
    "[^\r\n]{0,20}"
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["OK", "PONG", "QUEUED", ""]).prop_map(Reply::Status),
        arb_line().prop_map(Reply::StatusOwned),
        arb_line().prop_map(Reply::Error),
        any::<i64>().prop_map(Reply::Integer),
        arb_bytes().prop_map(Reply::Bulk),
        Just(Reply::Null),
        Just(Reply::NullArray),
        any::<f64>().prop_map(Reply::Double),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-0.0)].prop_map(Reply::Double),
        any::<bool>().prop_map(Reply::Boolean),
        arb_bytes().prop_map(Reply::Verbatim),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Reply::Array),
            prop::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Reply::Map),
            prop::collection::vec(inner, 0..6).prop_map(Reply::Set),
        ]
    })
}

/// What a RESP3 encoding parses back to: statuses come back owned and both nulls are `_`.
fn resp3_expected(reply: &Reply) -> Reply {
    match reply {
        Reply::Status(text) => Reply::StatusOwned((*text).to_owned()),
        Reply::NullArray => Reply::Null,
        Reply::Array(items) => Reply::Array(items.iter().map(resp3_expected).collect()),
        Reply::Set(items) => Reply::Set(items.iter().map(resp3_expected).collect()),
        Reply::Map(pairs) => Reply::Map(pairs.iter().map(|(k, v)| (resp3_expected(k), resp3_expected(v))).collect()),
        other => other.clone(),
    }
}

/// What a RESP2 encoding parses back to: the degraded forms documented on `Reply`.
fn resp2_expected(reply: &Reply) -> Reply {
    match reply {
        Reply::Status(text) => Reply::StatusOwned((*text).to_owned()),
        Reply::Array(items) | Reply::Set(items) => Reply::Array(items.iter().map(resp2_expected).collect()),
        Reply::Map(pairs) => {
            Reply::Array(pairs.iter().flat_map(|(k, v)| [resp2_expected(k), resp2_expected(v)]).collect())
        }
        Reply::Double(value) => Reply::Bulk(Bytes::copy_from_slice(DoubleText::new(*value).as_bytes())),
        Reply::Boolean(value) => Reply::Integer(i64::from(*value)),
        Reply::Verbatim(data) => Reply::Bulk(data.clone()),
        other => other.clone(),
    }
}

/// `==`, except that a NaN double equals a NaN double.
fn same(a: &Reply, b: &Reply) -> bool {
    match (a, b) {
        (Reply::Double(x), Reply::Double(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Reply::Array(xs), Reply::Array(ys)) | (Reply::Set(xs), Reply::Set(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same(x, y))
        }
        (Reply::Map(xs), Reply::Map(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|((xk, xv), (yk, yv))| same(xk, yk) && same(xv, yv))
        }
        _ => a == b,
    }
}

/// Feeds `stream` in pieces cut at `cuts`, parsing every whole request after each piece.
fn parse_in_pieces(stream: &[u8], cuts: &[usize], stateful: bool) -> Vec<Vec<Bytes>> {
    let limits = Limits::default();
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let mut fed = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[fed..cut]);
        fed = cut;
        loop {
            if !stateful {
                parser.reset();
            }
            match parser.parse(&mut buf, &limits).expect("a valid stream") {
                Some(request) => requests.push(request),
                None => break,
            }
        }
    }
    assert!(buf.is_empty(), "every byte is consumed");
    requests
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_round_trip(args in arb_args()) {
        let mut buf = BytesMut::new();
        encode_request(&args, &mut buf);
        let parsed = parse_request(&mut buf, &Limits::default()).expect("valid").expect("complete");
        prop_assert_eq!(parsed, args.iter().map(|a| Bytes::copy_from_slice(a)).collect::<Vec<_>>());
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn pipelined_requests_round_trip_at_any_split(
        requests in prop::collection::vec(arb_args(), 1..5),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        stateful in any::<bool>(),
    ) {
        let mut stream = BytesMut::new();
        for args in &requests {
            encode_request(args, &mut stream);
        }
        let parsed = parse_in_pieces(&stream, &cuts, stateful);
        let expected: Vec<Vec<Bytes>> =
            requests.iter().map(|args| args.iter().map(|a| Bytes::copy_from_slice(a)).collect()).collect();
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn reply_round_trip_resp3(reply in arb_reply(), cut in any::<usize>()) {
        let mut encoded = BytesMut::new();
        encode_reply(&reply, Protocol::Resp3, &mut encoded);
        let encoded = encoded.freeze();
        // Any strict prefix is incomplete and left alone.
        let cut = cut % encoded.len();
        let mut partial = BytesMut::from(&encoded[..cut]);
        prop_assert_eq!(parse_reply(&mut partial), Ok(None));
        prop_assert_eq!(partial.len(), cut);
        partial.extend_from_slice(&encoded[cut..]);
        let parsed = parse_reply(&mut partial).expect("valid").expect("complete");
        let expected = resp3_expected(&reply);
        prop_assert!(same(&parsed, &expected), "parsed {:?}\nexpected {:?}", parsed, expected);
        prop_assert!(partial.is_empty());
    }

    #[test]
    fn reply_degrades_in_resp2(reply in arb_reply()) {
        let mut encoded = BytesMut::new();
        encode_reply(&reply, Protocol::Resp2, &mut encoded);
        let parsed = parse_reply(&mut encoded).expect("valid").expect("complete");
        let expected = resp2_expected(&reply);
        prop_assert!(same(&parsed, &expected), "parsed {:?}\nexpected {:?}", parsed, expected);
        prop_assert!(encoded.is_empty());
    }

    #[test]
    fn doubles_round_trip_through_their_text(value in any::<f64>()) {
        let text = DoubleText::new(value);
        let text = std::str::from_utf8(text.as_bytes()).expect("ascii");
        let back: f64 = text.parse().expect("a number");
        prop_assert!(back == value || (back.is_nan() && value.is_nan()), "{} -> {}", value, text);
    }

    #[test]
    fn garbage_never_panics_parse_request(
        data in prop::collection::vec(prop_oneof![
            any::<u8>(),
            prop::sample::select(b"*$\r\n0123456789-\"' \\x".to_vec()),
        ], 0..200),
        small in any::<bool>(),
    ) {
        let limits = if small {
            Limits { bulk_bytes_max: 8, array_len_max: 4, inline_bytes_max: 16 }
        } else {
            Limits::default()
        };
        let mut buf = BytesMut::from(&data[..]);
        loop {
            let before = buf.len();
            match parse_request(&mut buf, &limits) {
                Ok(Some(_)) => prop_assert!(buf.len() < before, "a request consumes bytes"),
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before, "incomplete consumes nothing");
                    break;
                }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn garbage_never_panics_parse_reply(
        data in prop::collection::vec(prop_oneof![
            any::<u8>(),
            prop::sample::select(b"+-:$*_,#%~=(|>!\r\n0123456789tf".to_vec()),
        ], 0..200),
    ) {
        let mut buf = BytesMut::from(&data[..]);
        loop {
            let before = buf.len();
            match parse_reply(&mut buf) {
                Ok(Some(reply)) => {
                    prop_assert!(buf.len() < before, "a reply consumes bytes");
                    // Whatever parsed can be encoded again without panicking.
                    let mut out = BytesMut::new();
                    encode_reply(&reply, Protocol::Resp3, &mut out);
                    encode_reply(&reply, Protocol::Resp2, &mut out);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before, "incomplete consumes nothing");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}
