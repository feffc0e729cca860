//! Peer transport: the frames nodes exchange over TCP.
//!
//! A frame is `[payload length u32 LE][crc32 of payload u32 LE][payload]`. The length is bounded so a
//! confused or hostile peer cannot make a node allocate without limit, and the checksum catches
//! corruption that TCP's own 16-bit checksum lets through. Payloads are opaque here: the protocol
//! crates encode their messages (postcard) and decode them.
//!
//! Decoding is sans-IO ([`FrameDecoder`] over a byte buffer); [`read_frame`] and [`write_frame`] are
//! the thin tokio glue.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod link;
mod network;

pub use network::{NetworkError, PeerConfig, PeerNetwork};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const HEADER_BYTES: usize = 8;

/// Default bound on one frame's payload (a snapshot chunk is the largest thing we send).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the limit of {limit}")]
    TooLarge { length: usize, limit: usize },
    #[error("frame checksum mismatch: expected {expected:08x}, computed {computed:08x}")]
    Checksum { expected: u32, computed: u32 },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Appends one frame carrying `payload` to `out`.
///
/// # Panics
/// If the payload is longer than `u32::MAX` bytes: callers chunk large transfers.
pub fn encode_frame(payload: &[u8], out: &mut BytesMut) {
    let length = u32::try_from(payload.len()).expect("frame payloads are chunked below 4 GiB");
    out.reserve(HEADER_BYTES + payload.len());
    out.put_u32_le(length);
    out.put_u32_le(crc32fast::hash(payload));
    out.put_slice(payload);
}

/// Splits frames off the front of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    pub frame_bytes_max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder { frame_bytes_max: FRAME_BYTES_MAX_DEFAULT }
    }
}

impl FrameDecoder {
    /// One whole frame's payload, removed from `buffer`; `Ok(None)` if more bytes are needed.
    pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if buffer.len() < HEADER_BYTES {
            return Ok(None);
        }
        let length = u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
        if length > self.frame_bytes_max {
            return Err(FrameError::TooLarge { length, limit: self.frame_bytes_max });
        }
        if buffer.len() < HEADER_BYTES + length {
            return Ok(None);
        }
        let expected = u32::from_le_bytes([buffer[4], buffer[5], buffer[6], buffer[7]]);
        buffer.advance(HEADER_BYTES);
        let payload = buffer.split_to(length).freeze();
        let computed = crc32fast::hash(&payload);
        if computed != expected {
            return Err(FrameError::Checksum { expected, computed });
        }
        Ok(Some(payload))
    }
}

/// Reads one frame from `reader`, buffering in `buffer`. `Ok(None)` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Option<Bytes>, FrameError> {
    loop {
        if let Some(payload) = decoder.decode(buffer)? {
            return Ok(Some(payload));
        }
        if reader.read_buf(buffer).await? == 0 {
            return if buffer.is_empty() { Ok(None) } else { Err(FrameError::Truncated) };
        }
    }
}

/// Writes one frame carrying `payload`.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let mut out = BytesMut::with_capacity(HEADER_BYTES + payload.len());
    encode_frame(payload, &mut out);
    writer.write_all(&out).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_and_byte_by_byte() {
        let payloads: Vec<&[u8]> = vec![b"", b"hello", &[0u8; 1000]];
        let mut wire = BytesMut::new();
        for payload in &payloads {
            encode_frame(payload, &mut wire);
        }
        let decoder = FrameDecoder::default();
        let mut whole = wire.clone();
        for payload in &payloads {
            assert_eq!(decoder.decode(&mut whole).unwrap().as_deref(), Some(*payload));
        }
        assert!(whole.is_empty());
        let mut trickle = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            trickle.put_u8(*byte);
            if let Some(payload) = decoder.decode(&mut trickle).unwrap() {
                decoded.push(payload);
            }
        }
        assert_eq!(decoded.iter().map(|p| p.as_ref()).collect::<Vec<_>>(), payloads);
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let mut wire = BytesMut::new();
        encode_frame(b"replicate me", &mut wire);
        wire[10] ^= 0x01;
        assert!(matches!(FrameDecoder::default().decode(&mut wire), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_payload_arrives() {
        let mut wire = BytesMut::new();
        wire.put_u32_le(1 << 30);
        wire.put_u32_le(0);
        let decoder = FrameDecoder { frame_bytes_max: 1024 };
        assert!(matches!(decoder.decode(&mut wire), Err(FrameError::TooLarge { length: 1_073_741_824, limit: 1024 })));
    }

    #[tokio::test]
    async fn frames_cross_a_real_socket_pair() {
        let (mut left, mut right) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for i in 0..50u32 {
                write_frame(&mut left, &i.to_le_bytes().repeat(i as usize)).await.unwrap();
            }
        });
        let mut buffer = BytesMut::new();
        let decoder = FrameDecoder::default();
        for i in 0..50u32 {
            let payload = read_frame(&mut right, &mut buffer, &decoder).await.unwrap().unwrap();
            assert_eq!(payload.as_ref(), i.to_le_bytes().repeat(i as usize).as_slice());
        }
        writer.await.unwrap();
        assert!(read_frame(&mut right, &mut buffer, &decoder).await.unwrap().is_none());
    }
}
