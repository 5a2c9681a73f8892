//! The file sink's checkpoint state and its versioned binary form.
//!
//! ```text
//! magic "RVSINK" | version u8 (=1) | checkpoint u64 | next counter u64
//! | in-progress count u32 | per file: bucket (bytes) | created i64 | resume token (bytes)
//! | pending group count u32 | per group: checkpoint u64 | count u32 | commit tokens (bytes)
//! ```
//!
//! Integers are little-endian; "bytes" is a u32 length then the bytes. Tokens are fs-core's own
//! encoding (which carries its own version and checksum). Anything unexpected is an
//! [`EngineError::State`] that says what could not be read.

use std::collections::BTreeMap;

use fs_core::{CommitToken, ResumeToken};

use crate::data::Timestamp;
use crate::error::EngineError;

const MAGIC: &[u8; 6] = b"RVSINK";
/// The state format version this build writes and reads.
pub const STATE_VERSION: u8 = 1;

const WHAT: &str = "file sink";

/// An in-progress part file as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProgressState {
    pub bucket: String,
    /// When the part file was started (ms), for the rollover interval after a restore.
    pub created: Timestamp,
    pub token: ResumeToken,
}

/// What one sink subtask keeps in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SinkState {
    /// The checkpoint this state was taken for.
    pub checkpoint_id: u64,
    /// The next part file counter of the subtask.
    pub next_counter: u64,
    pub in_progress: Vec<InProgressState>,
    /// Closed files not yet published, by the checkpoint that made them pending.
    pub pending: BTreeMap<u64, Vec<CommitToken>>,
}

impl SinkState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 256 * self.in_progress.len());
        out.extend_from_slice(MAGIC);
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.checkpoint_id.to_le_bytes());
        out.extend_from_slice(&self.next_counter.to_le_bytes());
        put_len(&mut out, self.in_progress.len());
        for file in &self.in_progress {
            put_bytes(&mut out, file.bucket.as_bytes());
            out.extend_from_slice(&file.created.to_le_bytes());
            put_bytes(&mut out, &file.token.encode());
        }
        put_len(&mut out, self.pending.len());
        for (checkpoint, tokens) in &self.pending {
            out.extend_from_slice(&checkpoint.to_le_bytes());
            put_len(&mut out, tokens.len());
            for token in tokens {
                put_bytes(&mut out, &token.encode());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len(), "magic")? != MAGIC {
            return Err(EngineError::state(
                WHAT,
                "not a file sink state (bad magic bytes)",
            ));
        }
        let version = r.take(1, "version")?[0];
        if version != STATE_VERSION {
            return Err(EngineError::state(
                WHAT,
                format!(
                    "state format version {version} is not supported by this build (it reads version {STATE_VERSION})"
                ),
            ));
        }
        let checkpoint_id = r.u64("checkpoint id")?;
        let next_counter = r.u64("part counter")?;
        let count = r.u32("in-progress file count")?;
        let mut in_progress = Vec::new();
        for i in 0..count {
            let bucket = String::from_utf8(r.bytes("bucket")?.to_vec()).map_err(|_| {
                EngineError::state(WHAT, format!("in-progress file {i}: bucket is not UTF-8"))
            })?;
            let created = r.u64("creation time")? as i64;
            let token = ResumeToken::decode(r.bytes("resume token")?).map_err(|e| {
                EngineError::state(WHAT, format!("in-progress file {i} ({bucket}): {e}"))
            })?;
            in_progress.push(InProgressState {
                bucket,
                created,
                token,
            });
        }
        let groups = r.u32("pending group count")?;
        let mut pending = BTreeMap::new();
        for _ in 0..groups {
            let checkpoint = r.u64("pending checkpoint id")?;
            let count = r.u32("pending file count")?;
            let mut tokens = Vec::new();
            for i in 0..count {
                let token = CommitToken::decode(r.bytes("commit token")?).map_err(|e| {
                    EngineError::state(
                        WHAT,
                        format!("pending file {i} of checkpoint {checkpoint}: {e}"),
                    )
                })?;
                tokens.push(token);
            }
            pending.insert(checkpoint, tokens);
        }
        if r.at != bytes.len() {
            return Err(EngineError::state(
                WHAT,
                format!("{} unexpected bytes after the state", bytes.len() - r.at),
            ));
        }
        Ok(Self {
            checkpoint_id,
            next_counter,
            in_progress,
            pending,
        })
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Counts and lengths are bounded far below 4 GiB (a state lists files and tokens).
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], EngineError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let got = &self.bytes[self.at..end];
                self.at = end;
                Ok(got)
            }
            None => Err(EngineError::state(
                WHAT,
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, {} left",
                    self.at,
                    self.bytes.len() - self.at
                ),
            )),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32, EngineError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, EngineError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], EngineError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_core::store::PutCondition;
    use fs_core::token::PartRecord;

    fn sample() -> SinkState {
        let part = PartRecord {
            number: 1,
            etag: "e1".into(),
            size: 10,
        };
        let resume = ResumeToken {
            key: "out/b/part-0-3.jsonl".into(),
            upload_id: "u3".into(),
            writer_id: "w".into(),
            condition: PutCondition::IfNoneMatch,
            parts: vec![part.clone()],
            tail_key: ".rivulet/tails/u3/x".into(),
            tail_len: 4,
            tail_crc32c: 7,
            seq: 2,
        };
        let commit = CommitToken {
            key: "out/b/part-0-1.jsonl".into(),
            upload_id: "u1".into(),
            writer_id: "w".into(),
            condition: PutCondition::IfNoneMatch,
            parts: vec![part],
        };
        SinkState {
            checkpoint_id: 9,
            next_counter: 4,
            in_progress: vec![InProgressState {
                bucket: "b".into(),
                created: -5,
                token: resume,
            }],
            pending: BTreeMap::from([(8, vec![commit.clone()]), (9, vec![commit])]),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(SinkState::decode(&s.encode()).unwrap(), s);
        let empty = SinkState::default();
        assert_eq!(SinkState::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            let err = SinkState::decode(&bytes[..n]).unwrap_err();
            assert!(matches!(err, EngineError::State { .. }), "{n}: {err}");
        }
    }

    #[test]
    fn bad_magic_version_trailing_and_token_are_named() {
        let mut bytes = sample().encode();
        bytes[6] = 2;
        let err = SinkState::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        let err = SinkState::decode(b"nope-not-state")
            .unwrap_err()
            .to_string();
        assert!(err.contains("magic"), "{err}");
        let mut bytes = sample().encode();
        bytes.push(0);
        let err = SinkState::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("unexpected bytes"), "{err}");
        // Corrupt a byte inside the resume token: fs-core's checksum catches it.
        let mut bytes = sample().encode();
        let at = 6 + 1 + 8 + 8 + 4 + 4 + 1 + 8 + 4 + 6;
        bytes[at] ^= 0xff;
        let err = SinkState::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("in-progress file 0 (b)"), "{err}");
    }
}
