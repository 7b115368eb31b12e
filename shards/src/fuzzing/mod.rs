//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` (one-line wrappers) and
//! by the unit test that replays the committed corpora (`fuzz/corpus/<target>/`) in
//! `cargo test`, so every corpus file keeps being checked without a fuzzer.
//!
//! Each function takes arbitrary bytes, drives one decoder or state machine of the engine
//! with them, and panics when an invariant breaks: a panic is what the fuzzer reports. The
//! code under test must never panic on its own; decode errors are values, lengths stay
//! bounded by the input, and whatever decodes re-encodes to the same bytes.
//!
//! Not a stable API: the module exists for fuzzing and tests only.

mod cid_route;
mod handshake_msg;
mod session_recv;
mod wire_batch;

#[cfg(test)]
mod seeds;
#[cfg(test)]
mod tests;

pub use cid_route::cid_route;
pub use handshake_msg::handshake_msg;
pub use session_recv::session_recv;
pub use wire_batch::wire_batch;

/// A target body: arbitrary bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by the name of its cargo-fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_batch", wire_batch),
    ("handshake_msg", handshake_msg),
    ("session_recv", session_recv),
    ("cid_route", cid_route),
];

/// A cursor over fuzzer input that yields control values; past the end it yields nothing,
/// so every input is a valid (possibly short) program.
struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(*first)
    }

    fn u16(&mut self) -> Option<u16> {
        let (head, rest) = self.rest.split_first_chunk::<2>()?;
        self.rest = rest;
        Some(u16::from_be_bytes(*head))
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}
