//! Bulk file I/O past the page cache (`O_DIRECT`), falling back to ordinary I/O where the file
//! system refuses it.
//!
//! Why: the local caches beside the store (the writer's part cache, the mount's read cache)
//! write bytes that are read rarely, if ever, before they would be evicted. A buffered write
//! still pays for the page cache: on the project machine's ext4 a buffered 1 GiB write costs
//! about 2.4 s of CPU against 0.2 s with `O_DIRECT` (docs/benchmarks.md), and on a 2-core
//! machine that CPU is taken from the uploads. The local store itself does not use this: its
//! parts are read back by the completion moments later, from memory when they are cached, and
//! going direct there made the disk, not the CPU, the limit (measured 2026-11-26).
//!
//! `O_DIRECT` wants the memory, the file offset and the length aligned to the device's block
//! size. Callers' bytes are arbitrary, so they go through an aligned bounce buffer (a copy in
//! user space costs a small fraction of a page-cache write); the last partial block is written
//! padded and the file is cut back to its length. The flag is switched on the caller's open
//! file with `fcntl`, so the caller keeps its handle (and whatever it checked about it) and
//! gets it back as an ordinary file.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Alignment of memory, offsets and lengths for direct I/O: 4 KiB satisfies every common
/// device (512-byte and 4 KiB logical blocks) and the page size.
pub const ALIGN: usize = 4096;

/// The bounce buffer's size: large enough that one direct request keeps the disk busy (a
/// direct write is synchronous; 1 MiB requests ran at half the rate of 4-8 MiB ones here).
const CHUNK: usize = 8 << 20;

/// Below this size a file is written the ordinary way: the page cache costs little there and
/// a direct write of a few blocks is mostly latency.
pub const DIRECT_MIN: usize = 256 << 10;

/// How many idle bounce buffers are kept for reuse (a fresh one costs page faults on every
/// 4 KiB of it, about as much as the copy it saves).
const POOL_MAX: usize = 4;

static POOL: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

/// A `CHUNK`-byte buffer whose start is `ALIGN`-aligned (an over-allocated `Vec`, so no unsafe
/// allocation code).
struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    /// A buffer from the pool or a new one; `None` if the allocation cannot be aligned.
    fn take() -> Option<Self> {
        if let Some(buf) = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(buf);
        }
        let vec = vec![0u8; CHUNK + ALIGN];
        let start = vec.as_ptr().align_offset(ALIGN);
        (start < ALIGN).then_some(Self { vec, start })
    }

    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }

    fn bytes(&self) -> &[u8] {
        self.vec
            .get(self.start..self.start + CHUNK)
            .unwrap_or_default()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.vec
            .get_mut(self.start..self.start + CHUNK)
            .unwrap_or_default()
    }
}

/// Turns `O_DIRECT` on or off for an open file; false if the file system refuses it.
fn set_direct(file: &File, on: bool) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns; F_GETFL/F_SETFL pass no memory.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let wanted = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        wanted == flags || libc::fcntl(fd, libc::F_SETFL, wanted) == 0
    }
}

fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Writes a file from its start, past the page cache where possible. Call [`finish`] to write
/// the last bytes and get the plain file back; dropping it unfinished leaves the file's
/// content undefined (callers write to temporaries and drop those too).
///
/// [`finish`]: DirectWriter::finish
pub struct DirectWriter<'a> {
    file: &'a File,
    /// `None` once writing the ordinary way (refused, or never worth it).
    buf: Option<AlignedBuf>,
    /// Bytes of `buf` holding data not yet written.
    filled: usize,
    /// Bytes of the file written so far (a multiple of `ALIGN` while direct).
    written: u64,
}

impl<'a> DirectWriter<'a> {
    /// A writer of `file` (empty, opened for writing) for about `size_hint` bytes: direct when
    /// that is `DIRECT_MIN` or more and the file system allows it.
    pub fn new(file: &'a File, size_hint: usize) -> Self {
        let buf = if size_hint >= DIRECT_MIN && set_direct(file, true) {
            let buf = AlignedBuf::take();
            if buf.is_none() {
                set_direct(file, false);
            }
            buf
        } else {
            None
        };
        Self {
            file,
            buf,
            filled: 0,
            written: 0,
        }
    }

    /// Whether the bytes are going past the page cache (for tests and logs).
    pub fn is_direct(&self) -> bool {
        self.buf.is_some()
    }

    /// Appends `data` to the file.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let Some(buf) = self.buf.as_mut() else {
                self.file.write_all_at(data, self.written)?;
                self.written += data.len() as u64;
                return Ok(());
            };
            let room = buf.bytes_mut().get_mut(self.filled..).unwrap_or_default();
            let n = room.len().min(data.len());
            let (now, rest) = data.split_at(n);
            room.get_mut(..n).unwrap_or_default().copy_from_slice(now);
            self.filled += n;
            data = rest;
            if self.filled == CHUNK {
                self.flush_buffer(CHUNK)?;
            }
        }
        Ok(())
    }

    /// Writes the first `len` bytes of the buffer (a multiple of `ALIGN`) at `written`. If the
    /// file system turns out to refuse direct writes, goes on the ordinary way.
    fn flush_buffer(&mut self, len: usize) -> io::Result<()> {
        let Some(buf) = self.buf.as_ref() else {
            return Ok(());
        };
        let mut done = 0usize;
        while done < len {
            let chunk = buf.bytes().get(done..len).unwrap_or_default();
            match self.file.write_at(chunk, self.written + done as u64) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                // A short direct write that leaves the next offset unaligned: finish ordinarily.
                Ok(n) if n % ALIGN != 0 => {
                    done += n;
                    return self.go_buffered(done);
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return self.go_buffered(done);
                }
                Err(e) => return Err(e),
            }
        }
        self.written += len as u64;
        self.filled = 0;
        Ok(())
    }

    /// Switches to ordinary writes, writing `done..filled` of the buffer (the data not yet on
    /// disk) first.
    fn go_buffered(&mut self, done: usize) -> io::Result<()> {
        let buf = self.buf.take();
        set_direct(self.file, false);
        if let Some(buf) = buf {
            let rest = buf.bytes().get(done..self.filled).unwrap_or_default();
            self.file.write_all_at(rest, self.written + done as u64)?;
            self.written += self.filled as u64;
            self.filled = 0;
            buf.give_back();
        }
        Ok(())
    }

    /// Writes what is left and returns the number of bytes in the file. The file is an
    /// ordinary (buffered) file again afterwards.
    pub fn finish(mut self) -> io::Result<u64> {
        let result = self.write_rest();
        set_direct(self.file, false);
        result
    }

    fn write_rest(&mut self) -> io::Result<u64> {
        let Some(buf) = self.buf.as_mut() else {
            return Ok(self.written);
        };
        let len = self.written + self.filled as u64;
        let padded = round_up(self.filled);
        if padded != self.filled {
            buf.bytes_mut()
                .get_mut(self.filled..padded)
                .unwrap_or_default()
                .fill(0);
        }
        let tail = self.filled;
        self.flush_buffer(padded)?;
        if padded != tail {
            // Some or all of the padding went to disk too: cut it off.
            self.file.set_len(len)?;
        }
        self.written = len;
        Ok(len)
    }
}

impl Drop for DirectWriter<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            set_direct(self.file, false);
            buf.give_back();
        }
    }
}

/// Passes the bytes of `range` of `file` to `sink` in order, reading past the page cache where
/// possible; returns how many bytes it passed (fewer than asked when the file is shorter).
/// The file is an ordinary file again afterwards.
pub fn read_range_with(
    file: &File,
    range: Range<u64>,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    if range.start >= range.end {
        return Ok(0);
    }
    let want = range.end - range.start;
    let mut buf = None;
    if usize::try_from(want).is_ok_and(|n| n >= DIRECT_MIN) && set_direct(file, true) {
        buf = AlignedBuf::take();
        if buf.is_none() {
            set_direct(file, false);
        }
    }
    let Some(mut buf) = buf else {
        return read_buffered(file, range, &mut sink);
    };
    let outcome = read_direct(file, range.clone(), &mut buf, &mut sink);
    buf.give_back();
    set_direct(file, false);
    match outcome {
        Ok(result) => result,
        // Refused on this file after all: go on the ordinary way from where it stopped.
        Err(Refused { passed }) => {
            read_buffered(file, range.start + passed..range.end, &mut sink).map(|n| n + passed)
        }
    }
}

/// A direct read the file system refused (EINVAL) after `passed` bytes had gone to the sink.
struct Refused {
    passed: u64,
}

fn read_direct(
    file: &File,
    range: Range<u64>,
    buf: &mut AlignedBuf,
    sink: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<io::Result<u64>, Refused> {
    let mut passed = 0u64;
    // Aligned reads from the block holding `range.start`; the bytes before it are skipped.
    let mut pos = range.start - range.start % ALIGN as u64;
    while pos < range.end {
        let span = usize::try_from(range.end - pos).map_or(CHUNK, |n| round_up(n).min(CHUNK));
        let dest = buf.bytes_mut().get_mut(..span).unwrap_or_default();
        let n = loop {
            match file.read_at(dest, pos) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(Refused { passed });
                }
                Err(e) => return Ok(Err(e)),
            }
        };
        if n == 0 {
            break;
        }
        let skip = usize::try_from(range.start.saturating_sub(pos)).unwrap_or(0);
        let end = usize::try_from((range.end - pos).min(n as u64)).unwrap_or(n);
        if skip < end {
            let bytes = buf.bytes().get(skip..end).unwrap_or_default();
            if let Err(e) = sink(bytes) {
                return Ok(Err(e));
            }
            passed += bytes.len() as u64;
        }
        pos += n as u64;
        // An unaligned count is the end of the file; an aligned short one may not be (the next
        // read says).
        if n % ALIGN != 0 {
            break;
        }
    }
    Ok(Ok(passed))
}

fn read_buffered(
    file: &File,
    range: Range<u64>,
    sink: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    const BUF: usize = 1 << 20;
    let want = range.end.saturating_sub(range.start);
    let mut buf = vec![0u8; usize::try_from(want).map_or(BUF, |n| n.min(BUF))];
    let mut pos = range.start;
    while pos < range.end {
        let span = usize::try_from(range.end - pos).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match file.read_at(buf.get_mut(..span).unwrap_or_default(), pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sink(buf.get(..n).unwrap_or_default())?;
        pos += n as u64;
    }
    Ok(pos - range.start)
}

/// Writes `bytes` as the whole content of `file` (empty, open for writing), past the page cache
/// when they are large enough. Returns the length written.
pub fn write_file(file: &File, bytes: &[u8]) -> io::Result<u64> {
    let mut writer = DirectWriter::new(file, bytes.len());
    writer.write_all(bytes)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) as u8)
            .collect()
    }

    fn new_file(dir: &tempfile::TempDir, name: &str) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join(name))
            .unwrap()
    }

    #[test]
    fn written_files_hold_exactly_the_bytes_written_in_any_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            CHUNK,
            CHUNK + 17,
            2 * CHUNK + ALIGN,
        ];
        for (i, &size) in sizes.iter().enumerate() {
            let data = pattern(size, i as u64);
            for (j, piece) in [size.max(1), 4095, 100_000].into_iter().enumerate() {
                let name = format!("f{i}-{j}");
                let file = new_file(&dir, &name);
                let mut writer = DirectWriter::new(&file, size);
                assert_eq!(writer.is_direct(), size >= DIRECT_MIN, "size {size}");
                for part in data.chunks(piece) {
                    writer.write_all(part).unwrap();
                }
                assert_eq!(writer.finish().unwrap(), size as u64);
                assert_eq!(std::fs::read(dir.path().join(&name)).unwrap(), data);
                // The handle is ordinary again: unaligned I/O through it works.
                file.write_all_at(b"x", 3).unwrap();
            }
        }
    }

    #[test]
    fn a_small_hint_writes_the_ordinary_way_even_when_more_comes() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir, "f");
        let data = pattern(3 * CHUNK / 2, 9);
        let mut writer = DirectWriter::new(&file, 10);
        assert!(!writer.is_direct());
        writer.write_all(&data).unwrap();
        assert_eq!(writer.finish().unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), data);
    }

    #[test]
    fn ranges_read_back_exactly_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir, "f");
        let data = pattern(2 * CHUNK + 5000, 3);
        write_file(&file, &data).unwrap();
        let len = data.len() as u64;
        for range in [
            0..len,
            1..len,
            0..1,
            4095..4097,
            5..DIRECT_MIN as u64 + 77,
            CHUNK as u64 - 3..len - 1,
            len - 10..len,
            len..len,
        ] {
            let mut got = Vec::new();
            let n = read_range_with(&file, range.clone(), |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            let want = data.get(range.start as usize..range.end as usize).unwrap();
            assert_eq!(n, want.len() as u64, "{range:?}");
            assert!(got == want, "{range:?}");
        }
        // Past the end: only what the file holds.
        let mut got = 0u64;
        let n = read_range_with(&file, len - 100..len + DIRECT_MIN as u64, |b| {
            got += b.len() as u64;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, got), (100, 100));
    }

    #[test]
    fn a_sink_error_stops_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir, "f");
        write_file(&file, &pattern(CHUNK * 2, 1)).unwrap();
        let mut calls = 0;
        let err = read_range_with(&file, 0..(CHUNK * 2) as u64, |_| {
            calls += 1;
            Err(io::Error::other("sink full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "sink full");
        assert_eq!(calls, 1);
    }
}
