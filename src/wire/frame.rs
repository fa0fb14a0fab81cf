//! Length-prefixed frames: a 2-byte big-endian length, then 1 to 65,535 bytes.
//!
//! Every message of the control stream (handshake messages, aborts, Noise transport
//! messages) is one frame. A zero length is an error, and since the length field holds at
//! most 65,535 a frame can never announce more than [`MAX_FRAME`] bytes: the decoder
//! never buffers more than one frame.
//!
//! A decoder can be given a lower limit ([`FrameDecoder::with_limit`]): the relay reads a
//! client's Hello through one limited to the largest Hello. The limit is checked as soon
//! as the length field is complete, before any byte of the body is buffered.
//!
//! Every framed read of peer bytes goes through [`FrameDecoder`]: the session's control
//! stream ([`crate::session::read_frame`]) and the relay's Hello
//! ([`crate::relay::hello`]).

use thiserror::Error;

/// Largest frame body.
pub const MAX_FRAME: usize = u16::MAX as usize;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 2;

/// Frame codec errors.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame with a zero length field.
    #[error("empty frame")]
    Empty,
    /// A body larger than 65,535 bytes was to be sent.
    #[error("frame of {0} bytes exceeds the 65,535-byte limit")]
    TooLarge(usize),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
    /// A length field announced more than the decoder's limit.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    OverLimit {
        /// The announced length.
        len: usize,
        /// The decoder's limit.
        limit: usize,
    },
}

/// Appends `body` as one frame to `out`.
pub fn encode(body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    let len = u16::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    out.reserve(LEN_PREFIX + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// `body` as one frame.
pub fn to_frame(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode(body, &mut out)?;
    Ok(out)
}

/// Reassembles frames from bytes as they arrive.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::with_limit(MAX_FRAME)
    }
}

impl FrameDecoder {
    /// An empty decoder taking frames of up to [`MAX_FRAME`] bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty decoder taking frames of up to `limit` bytes (at most [`MAX_FRAME`]); a
    /// longer length field is an error ([`FrameError::OverLimit`]) before the body is
    /// buffered.
    pub fn with_limit(limit: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            limit: limit.min(MAX_FRAME),
        }
    }

    /// The length field, once complete.
    fn announced(&self) -> Option<usize> {
        match self.buf.as_slice() {
            [a, b, ..] => Some(usize::from(u16::from_be_bytes([*a, *b]))),
            _ => None,
        }
    }

    /// Bytes the decoder still needs before it can yield the next frame (at least 1).
    pub fn wanted(&self) -> usize {
        match self.announced() {
            Some(len) => len.saturating_sub(self.buf.len() - LEN_PREFIX).max(1),
            None => LEN_PREFIX - self.buf.len(),
        }
    }

    /// Bytes buffered (of the length field and the body) for the frame in progress.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; at most [`FrameDecoder::wanted`] are taken, and the number taken is
    /// returned, so the buffer never exceeds one frame. Nothing is taken after a length
    /// field of zero or above the limit: [`FrameDecoder::next_frame`] reports it.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        while taken < bytes.len() && !self.complete() {
            let n = (bytes.len() - taken).min(self.wanted());
            self.buf.extend_from_slice(&bytes[taken..taken + n]);
            taken += n;
            if self.buf.len() == LEN_PREFIX {
                // The length is known and within the limit (else complete() stops here):
                // room for exactly this body.
                if let Some(len) = self.announced().filter(|&l| l <= self.limit) {
                    self.buf.reserve_exact(len);
                }
            }
        }
        taken
    }

    /// True when the buffer holds a whole frame, or a length field that is an error.
    fn complete(&self) -> bool {
        match self.announced() {
            Some(len) => len == 0 || len > self.limit || self.buf.len() - LEN_PREFIX >= len,
            None => false,
        }
    }

    /// The next complete frame body, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.announced() else {
            return Ok(None);
        };
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.limit {
            return Err(FrameError::OverLimit {
                len,
                limit: self.limit,
            });
        }
        if self.buf.len() - LEN_PREFIX < len {
            return Ok(None);
        }
        let mut body = std::mem::take(&mut self.buf);
        body.drain(..LEN_PREFIX);
        Ok(Some(body))
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }
}

/// Decodes all frames of a complete byte string.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    decode_all_within(bytes, MAX_FRAME)
}

/// Decodes all frames of a complete byte string, each at most `limit` bytes.
pub fn decode_all_within(mut bytes: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut d = FrameDecoder::with_limit(limit);
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = d.push(bytes);
        bytes = &bytes[n..];
        if let Some(f) = d.next_frame()? {
            out.push(f);
        }
    }
    d.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_limits() {
        let mut wire = Vec::new();
        encode(b"abc", &mut wire).unwrap();
        encode(&vec![7u8; MAX_FRAME], &mut wire).unwrap();
        let frames = decode_all(&wire).unwrap();
        assert_eq!(frames[0], b"abc");
        assert_eq!(frames[1].len(), MAX_FRAME);
        assert_eq!(
            encode(&vec![0u8; MAX_FRAME + 1], &mut wire),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
        assert_eq!(encode(b"", &mut wire), Err(FrameError::Empty));
    }

    #[test]
    fn zero_length_and_truncated_frames_are_errors() {
        assert_eq!(decode_all(&[0, 0]), Err(FrameError::Empty));
        assert_eq!(decode_all(&[0, 5, 1, 2]), Err(FrameError::Truncated(4)));
        assert_eq!(decode_all(&[0]), Err(FrameError::Truncated(1)));
    }

    #[test]
    fn decoder_never_buffers_beyond_one_frame() {
        let mut d = FrameDecoder::new();
        let wire = [0u8, 3, 1, 2, 3, 0, 1, 9];
        assert_eq!(d.push(&wire), 5);
        assert_eq!(d.next_frame().unwrap().unwrap(), vec![1, 2, 3]);
        assert_eq!(d.push(&wire[5..]), 3);
        assert_eq!(d.next_frame().unwrap().unwrap(), vec![9]);
    }

    #[test]
    fn a_length_above_the_limit_is_refused_before_the_body_is_buffered() {
        let mut d = FrameDecoder::with_limit(4);
        // Length 5, then body bytes: only the length field is taken.
        assert_eq!(d.push(&[0, 5, 1, 2, 3, 4, 5]), LEN_PREFIX);
        assert_eq!(d.buffered(), LEN_PREFIX);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::OverLimit { len: 5, limit: 4 })
        );
        assert_eq!(d.push(&[1]), 0);
        // At the limit is fine.
        assert_eq!(
            decode_all_within(&[0, 4, 1, 2, 3, 4], 4).unwrap(),
            vec![vec![1, 2, 3, 4]]
        );
        assert_eq!(
            decode_all_within(&[0, 4, 1, 2, 3, 4, 0, 5], 4),
            Err(FrameError::OverLimit { len: 5, limit: 4 })
        );
        // A limit above the length field's range is the length field's range.
        assert_eq!(
            decode_all_within(&[0xff, 0xff], usize::MAX),
            Err(FrameError::Truncated(2))
        );
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_pieces(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            step in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for b in &bodies {
                encode(b, &mut wire).unwrap();
            }
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let n = d.push(rest);
                    rest = &rest[n..];
                    if let Some(f) = d.next_frame().unwrap() {
                        got.push(f);
                    }
                }
            }
            d.finish().unwrap();
            prop_assert_eq!(got, bodies);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_all(&bytes);
        }
    }
}
