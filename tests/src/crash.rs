//! Shared by the crash test and its child process: the content of the file the children write.
//! Each child run has a generation number and writes bytes that depend on the offset and on
//! it, so the committed file shows which run wrote each byte: a byte a token should have
//! discarded, kept by mistake, differs from the one the next run wrote in its place.

/// The byte at `offset` as the run of `generation` writes it.
pub fn byte_at(offset: u64, generation: u64) -> u8 {
    let mixed = offset ^ generation.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (offset as u8)
}

/// Which run wrote each offset of the file: the runs that started writing, in order, each
/// with the length it resumed at. A run owns the bytes from its start to the next run's start
/// (every run resumes from the latest persisted token, so starts never decrease).
#[derive(Debug, Default, Clone)]
pub struct Runs(Vec<(u64, u64)>);

impl Runs {
    /// Records that the run of `generation` resumed the file at `start`.
    pub fn started(&mut self, start: u64, generation: u64) {
        if let Some(&(last, _)) = self.0.last() {
            assert!(start >= last, "a run resumed at {start}, before {last}");
        }
        self.0.push((start, generation));
    }

    /// The generation of the run that wrote `offset`.
    pub fn generation_at(&self, offset: u64) -> u64 {
        self.0
            .iter()
            .rev()
            .find(|(start, _)| *start <= offset)
            .map(|(_, generation)| *generation)
            .expect("a run starts at 0")
    }

    /// The file's expected bytes in `range`.
    pub fn expected(&self, range: std::ops::Range<u64>) -> Vec<u8> {
        range
            .map(|offset| byte_at(offset, self.generation_at(offset)))
            .collect()
    }
}
