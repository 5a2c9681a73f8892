//! Spare part buffers, shared by the writers of one service.
//!
//! Every full part leaves the writer as its own part-sized buffer, uploaded in the background
//! and dropped when its upload ends. Allocating the next one fresh costs more than the copy
//! that fills it: a buffer of several MiB is a new mapping from the allocator, and the kernel
//! zeroes each of its pages on first touch (about a tenth of the CPU of a file sink writing
//! CSV lines to the local store). A buffer whose upload has ended is therefore handed back
//! here, when nothing else still holds a slice of it, and the next part fills it again.
//!
//! The same goes for the buffer behind the tail of a file that went idle
//! (`FileWriter::shrink_idle_buffer`): a sink with a bucket per minute holds a file open per
//! past minute, and the next minute's file fills the buffers they gave back.
//!
//! At most `max_in_flight + 2` buffers wait here, the most that one writer holds at once: a
//! burst of parts after an idle spell finds them all, and the service's idle memory stays
//! within one writer's bound.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// Part-sized buffers whose parts are uploaded, ready to be filled again.
#[derive(Debug)]
pub(crate) struct PartBuffers {
    part_size: usize,
    /// How many buffers may wait for reuse.
    max_spare: usize,
    spare: Mutex<Vec<BytesMut>>,
}

impl PartBuffers {
    /// The spare buffers of a service whose writers upload up to `max_in_flight` parts each.
    pub(crate) fn new(part_size: usize, max_in_flight: usize) -> Self {
        Self {
            part_size,
            max_spare: max_in_flight + 2,
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
            && spare.len() < self.max_spare
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
        let buffers = PartBuffers::new(1024, 4);
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
    fn the_buffer_of_a_shrunk_tail_is_kept_whole() {
        // A tail never cut into a part, given back by `FileWriter::shrink_idle_buffer`.
        let buffers = PartBuffers::new(1024, 4);
        let mut tail = buffers.take();
        tail.extend_from_slice(&[5; 100]);
        let address = tail.as_ptr();
        buffers.give_back(tail.freeze());
        assert_eq!(buffers.spare(), 1);
        let again = buffers.take();
        assert!(again.is_empty());
        assert!(again.capacity() >= 1024);
        assert_eq!(again.as_ptr(), address);
    }

    #[test]
    fn a_part_still_read_elsewhere_or_too_small_is_not_kept() {
        let buffers = PartBuffers::new(1024, 4);
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
        let buffers = PartBuffers::new(64, 2);
        let parts: Vec<Bytes> = (0..4 + 3).map(|_| full_part(&buffers)).collect();
        for part in parts {
            buffers.give_back(part);
        }
        assert_eq!(buffers.spare(), 4, "two in flight, and two more");
    }
}
