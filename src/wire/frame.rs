//! Length-prefixed frames: a 2-byte big-endian length, then 1 to 65,535 bytes.
//!
//! Every message of the control stream (handshake messages, aborts, Noise transport
//! messages) is one frame. A zero length is an error, and since the length field holds at
//! most 65,535 a frame can never announce more than [`MAX_FRAME`] bytes: the decoder
//! never buffers more than one frame.

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
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the decoder still needs before it can yield the next frame (at least 1).
    pub fn wanted(&self) -> usize {
        match self.buf.as_slice() {
            [a, b, rest @ ..] => {
                let len = usize::from(u16::from_be_bytes([*a, *b]));
                len.saturating_sub(rest.len()).max(1)
            }
            other => LEN_PREFIX - other.len(),
        }
    }

    /// Feeds bytes; at most [`FrameDecoder::wanted`] are taken, and the number taken is
    /// returned, so the buffer never exceeds one frame.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        while taken < bytes.len() && !self.complete() {
            let n = (bytes.len() - taken).min(self.wanted());
            self.buf.extend_from_slice(&bytes[taken..taken + n]);
            taken += n;
        }
        taken
    }

    /// True when the buffer holds a whole frame (or a zero length, an error).
    fn complete(&self) -> bool {
        match self.buf.as_slice() {
            [a, b, rest @ ..] => rest.len() >= usize::from(u16::from_be_bytes([*a, *b])),
            _ => false,
        }
    }

    /// The next complete frame body, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let [a, b, rest @ ..] = self.buf.as_slice() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([*a, *b]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if rest.len() < len {
            return Ok(None);
        }
        let body = rest[..len].to_vec();
        self.buf.clear();
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
pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut d = FrameDecoder::new();
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

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_all(&bytes);
        }
    }
}
