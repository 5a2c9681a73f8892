//! Spare part buffers, shared by the writers of one service.
//!
//! Every full part leaves the writer as its own part-sized buffer, uploaded in the background
//! and dropped when its upload ends. Allocating the next one fresh costs more than the copy
//! that fills it: a buffer of several MiB is a new mapping from the allocator, and the kernel
//! zeroes each of its pages on first touch (about a tenth of the CPU of a file sink writing
//! CSV lines to the local store). A buffer whose upload has ended is therefore handed back
//! here, when nothing else still holds a slice of it, and the next part fills it again.
//!
//! At most [`MAX_SPARE`] buffers wait here: one part ending makes room for the next, so a
//! writer in steady state finds one; more would only be idle memory.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// How many part buffers wait for reuse, per writer service.
pub(crate) const MAX_SPARE: usize = 2;

/// Part-sized buffers whose parts are uploaded, ready to be filled again.
#[derive(Debug)]
pub(crate) struct PartBuffers {
    part_size: usize,
    spare: Mutex<Vec<BytesMut>>,
}

impl PartBuffers {
    pub(crate) fn new(part_size: usize) -> Self {
        Self {
            part_size,
            spare: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer with room for one part: a spare one if any waits, else a new one.
    pub(crate) fn take(&self) -> BytesMut {
        let spare = self.spare.lock().ok().and_then(|mut spare| spare.pop());
        spare.unwrap_or_else(|| BytesMut::with_capacity(self.part_size))
    }

    /// Offers the bytes of a part whose upload has ended. They are kept only when nothing
    /// else refers to them (a reader may still hold a slice) and they are a part buffer: not
    /// smaller, and not the rest of a much larger caller's buffer (a part sliced from a
    /// `write_bytes` body), which would keep all of that memory.
    pub(crate) fn give_back(&self, part: Bytes) {
        let Ok(mut buffer) = part.try_into_mut() else {
            return;
        };
        if !(self.part_size..=2 * self.part_size).contains(&buffer.capacity()) {
            return;
        }
        buffer.clear();
        if let Ok(mut spare) = self.spare.lock()
            && spare.len() < MAX_SPARE
        {
            spare.push(buffer);
        }
    }

    /// How many buffers wait for reuse.
    #[cfg(test)]
    pub(crate) fn spare(&self) -> usize {
        self.spare.lock().map_or(0, |spare| spare.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part cut from a full buffer, as the writer cuts them.
    fn full_part(buffers: &PartBuffers) -> Bytes {
        let mut tail = buffers.take();
        tail.resize(buffers.part_size, 7);
        tail.split_to(buffers.part_size).freeze()
    }

    #[test]
    fn an_uploaded_part_is_filled_again_without_a_new_allocation() {
        let buffers = PartBuffers::new(1024);
        let part = full_part(&buffers);
        let address = part.as_ptr();
        buffers.give_back(part);
        assert_eq!(buffers.spare(), 1);
        let again = buffers.take();
        assert!(again.is_empty());
        assert!(again.capacity() >= 1024);
        assert_eq!(again.as_ptr(), address, "the same memory is reused");
        assert_eq!(buffers.spare(), 0);
    }

    #[test]
    fn a_part_still_read_elsewhere_or_too_small_is_not_kept() {
        let buffers = PartBuffers::new(1024);
        let part = full_part(&buffers);
        let reader_slice = part.slice(10..20);
        buffers.give_back(part);
        assert_eq!(buffers.spare(), 0, "a reader still holds a slice of it");
        assert_eq!(&reader_slice[..], &[7; 10]);

        buffers.give_back(Bytes::from(vec![1u8; 100]));
        assert_eq!(buffers.spare(), 0, "smaller than a part");

        let mut large = Bytes::from(vec![1u8; 8 * 1024]);
        let first_part = large.split_to(1024);
        drop(large);
        buffers.give_back(first_part);
        assert_eq!(buffers.spare(), 0, "the rest of a buffer of eight parts");
    }

    #[test]
    fn at_most_a_few_buffers_wait() {
        let buffers = PartBuffers::new(64);
        let parts: Vec<Bytes> = (0..MAX_SPARE + 3).map(|_| full_part(&buffers)).collect();
        for part in parts {
            buffers.give_back(part);
        }
        assert_eq!(buffers.spare(), MAX_SPARE);
    }
}
