//! Copies into part buffers that bypass the CPU caches.
//!
//! A writer's part buffer is filled once and then only read by the upload (the local store's
//! MD5, a socket), often on another core, and never written again. Filling it through the
//! caches, as `memcpy` does below its very large threshold, pushes out of the writing core's
//! cache whatever the writing thread works on: a file sink writes every byte of its output
//! this way, and the operators chained before it (a source reading its tables, a projection)
//! then miss their data. Non-temporal stores write whole cache lines to memory instead. Small
//! copies stay ordinary (a line written in part would cost more than it saves).

use bytes::BytesMut;

/// Copies at least this long bypass the caches.
const STREAMING_MIN: usize = 16 * 1024;

/// Appends `src` to `dst`, with non-temporal stores when it is long enough and the CPU has
/// them (every x86-64 CPU does).
pub(crate) fn extend(dst: &mut BytesMut, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= STREAMING_MIN {
        dst.reserve(src.len());
        let start = dst.len();
        let spare = dst.spare_capacity_mut();
        // SAFETY: `reserve` made room for `src.len()` more bytes after `start`, `spare` is
        // that uninitialized room (exclusively borrowed), and `src` cannot overlap it.
        // `x86_64::copy` writes all `src.len()` bytes before `set_len` exposes them.
        unsafe {
            x86_64::copy(spare.as_mut_ptr().cast::<u8>(), src.as_ptr(), src.len());
            dst.set_len(start + src.len());
        }
        return;
    }
    dst.extend_from_slice(src);
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    use std::ptr;

    /// Copies `len` bytes from `src` to `dst`: an ordinary copy up to `dst`'s first 16-byte
    /// boundary, 16-byte non-temporal stores from there, an ordinary copy of the rest, then a
    /// store fence, so that the bytes are in memory before the buffer can be handed on (a
    /// non-temporal store is not ordered with the stores after it).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes, `src` valid for reads of `len` bytes,
    /// and the two must not overlap.
    pub(super) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
        let head = dst.align_offset(16).min(len);
        // SAFETY (whole function): the caller's guarantees; every offset below stays under
        // `len`, and the streamed destinations are 16-byte aligned (`head` aligns `dst`).
        // SSE2, which these intrinsics need, is part of x86-64.
        unsafe {
            ptr::copy_nonoverlapping(src, dst, head);
            let mut at = head;
            while at + 64 <= len {
                for lane in 0..4 {
                    let offset = at + 16 * lane;
                    let v = _mm_loadu_si128(src.add(offset).cast::<__m128i>());
                    _mm_stream_si128(dst.add(offset).cast::<__m128i>(), v);
                }
                at += 64;
            }
            while at + 16 <= len {
                let v = _mm_loadu_si128(src.add(at).cast::<__m128i>());
                _mm_stream_si128(dst.add(at).cast::<__m128i>(), v);
                at += 16;
            }
            ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at);
            _mm_sfence();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the lengths and the alignments, the bytes arrive whole and in order after
        /// what the buffer held.
        #[test]
        fn appends_exactly_the_bytes(
            held in 0usize..100,
            len in prop_oneof![0usize..200, STREAMING_MIN - 20..STREAMING_MIN + 300],
            skip in 0usize..16,
            seed in any::<u8>(),
        ) {
            let source: Vec<u8> = (0..len + skip).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let src = &source[skip..];
            let mut dst = BytesMut::with_capacity(held);
            dst.extend_from_slice(&vec![7u8; held]);
            extend(&mut dst, src);
            prop_assert_eq!(dst.len(), held + len);
            prop_assert!(dst[..held].iter().all(|&b| b == 7));
            prop_assert_eq!(&dst[held..], src);
        }
    }

    #[test]
    fn a_large_copy_fills_a_part_sized_buffer_in_place() {
        let part: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut dst = BytesMut::with_capacity(part.len());
        let at = dst.as_ptr();
        extend(&mut dst, &part[..3 << 20]);
        extend(&mut dst, &part[3 << 20..]);
        assert_eq!(dst.as_ptr(), at, "no reallocation when the room is there");
        assert_eq!(&dst[..], &part[..]);
    }
}
