//! The relay: real relay processes end to end, hostile clients against it, and the
//! in-process splice with a test tap.

#[path = "../common/mod.rs"]
mod common;

mod code_wait;
mod relay;
mod relay_hostile;
mod relay_log;
mod relay_tap;
mod switch;
