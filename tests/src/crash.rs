//! Shared by the crash test and its child process: the deterministic content of the file the
//! child writes, as a function of the byte offset, so any prefix can be checked exactly.

/// The byte at `offset` of the crash test's file.
pub fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (offset as u8)
}
