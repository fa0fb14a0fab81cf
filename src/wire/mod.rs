//! Wire codecs, sans-IO, with every length checked before allocation.
//!
//! - [`frame`]: the length-prefixed frames of the control stream.

pub mod frame;
