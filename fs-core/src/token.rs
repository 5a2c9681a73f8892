//! Resume and commit tokens and their versioned binary form.
//!
//! A token is what a caller keeps (in a checkpoint, the sled index, a file) to resume or commit a
//! file later, possibly in another process. The encoding is compact and stable:
//!
//! ```text
//! magic "RVT" | version u8 (=1) | kind u8 (1 = resume, 2 = commit) | fields | crc32c u32 LE
//! ```
//!
//! Integers are unsigned LEB128 varints, strings are a varint length then UTF-8 bytes, and the
//! CRC-32C covers every byte before it. An unknown version, a wrong kind, a bad checksum or a
//! truncated token is rejected with a [`TokenError`] that says which. `docs/design.md` lists the
//! fields; `tests::golden_bytes` pins the format so that a change to it cannot go unnoticed.

use thiserror::Error;

use crate::store::PutCondition;

const MAGIC: &[u8; 3] = b"RVT";
/// The token format version this build writes and reads.
pub const TOKEN_VERSION: u8 = 1;
const KIND_RESUME: u8 = 1;
const KIND_COMMIT: u8 = 2;

/// A part of a multipart upload as a token records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    pub number: u32,
    pub etag: String,
    pub size: u64,
}

/// Where a file's final commit is allowed to land: the condition of CompleteMultipartUpload.
/// Appends and truncates of an existing object commit only over the version they copied.
pub type CommitCondition = PutCondition;

/// Everything needed to resume writing a file exactly at a persisted point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    /// The object key the file is committed to.
    pub key: String,
    pub upload_id: String,
    /// Random id of the writer that created the upload; the committed object carries it in its
    /// metadata so a retried commit can recognise its own object.
    pub writer_id: String,
    pub condition: CommitCondition,
    /// The parts uploaded at the persist point, in order.
    pub parts: Vec<PartRecord>,
    /// The staged tail object (the bytes after the parts), under the hidden tail prefix.
    pub tail_key: String,
    pub tail_len: u64,
    /// CRC-32C of the tail bytes.
    pub tail_crc32c: u32,
    /// Persist sequence number within the upload (1 for the first persist).
    pub seq: u64,
}

impl ResumeToken {
    /// The file's length at the persist point.
    pub fn len(&self) -> u64 {
        self.parts_len() + self.tail_len
    }

    /// Whether the file was empty at the persist point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in uploaded parts.
    pub fn parts_len(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(KIND_RESUME);
        w.str(&self.key);
        w.str(&self.upload_id);
        w.str(&self.writer_id);
        w.condition(&self.condition);
        w.parts(&self.parts);
        w.str(&self.tail_key);
        w.varint(self.tail_len);
        w.varint(u64::from(self.tail_crc32c));
        w.varint(self.seq);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let mut r = Reader::new(bytes, KIND_RESUME)?;
        let token = Self {
            key: r.str("key")?,
            upload_id: r.str("upload id")?,
            writer_id: r.str("writer id")?,
            condition: r.condition()?,
            parts: r.parts()?,
            tail_key: r.str("tail key")?,
            tail_len: r.varint("tail length")?,
            tail_crc32c: r.u32("tail checksum")?,
            seq: r.varint("sequence number")?,
        };
        r.end()?;
        Ok(token)
    }
}

/// Everything needed to complete a closed file's upload, in this process or another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitToken {
    pub key: String,
    pub upload_id: String,
    pub writer_id: String,
    pub condition: CommitCondition,
    /// Every part of the file, the tail included as the last part. Empty for an empty file,
    /// which commits as an empty object.
    pub parts: Vec<PartRecord>,
}

impl CommitToken {
    /// The committed object's size.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(KIND_COMMIT);
        w.str(&self.key);
        w.str(&self.upload_id);
        w.str(&self.writer_id);
        w.condition(&self.condition);
        w.parts(&self.parts);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let mut r = Reader::new(bytes, KIND_COMMIT)?;
        let token = Self {
            key: r.str("key")?,
            upload_id: r.str("upload id")?,
            writer_id: r.str("writer id")?,
            condition: r.condition()?,
            parts: r.parts()?,
        };
        r.end()?;
        Ok(token)
    }
}

/// Either kind of token, as the index stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Resume(ResumeToken),
    Commit(CommitToken),
}

impl Token {
    pub fn key(&self) -> &str {
        match self {
            Token::Resume(t) => &t.key,
            Token::Commit(t) => &t.key,
        }
    }

    pub fn upload_id(&self) -> &str {
        match self {
            Token::Resume(t) => &t.upload_id,
            Token::Commit(t) => &t.upload_id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Token::Resume(t) => t.encode(),
            Token::Commit(t) => t.encode(),
        }
    }

    /// Decodes a token of either kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        match bytes.get(4) {
            Some(&KIND_COMMIT) => CommitToken::decode(bytes).map(Token::Commit),
            _ => ResumeToken::decode(bytes).map(Token::Resume),
        }
    }
}

/// Why a token could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a Rivulet token (bad magic bytes)")]
    BadMagic,
    #[error(
        "token format version {0} is not supported by this build (it reads version {TOKEN_VERSION}); use the Rivulet version that wrote it"
    )]
    UnknownVersion(u8),
    #[error("expected a {expected} token, found a {found} token")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("token checksum mismatch: the token is corrupted")]
    Checksum,
    #[error("token is truncated or malformed: cannot read its {0}")]
    Malformed(&'static str),
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_RESUME => "resume",
        KIND_COMMIT => "commit",
        _ => "unknown",
    }
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(kind: u8) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(MAGIC);
        buf.push(TOKEN_VERSION);
        buf.push(kind);
        Self { buf }
    }

    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }

    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn condition(&mut self, c: &CommitCondition) {
        match c {
            PutCondition::None => self.varint(0),
            PutCondition::IfNoneMatch => self.varint(1),
            PutCondition::IfMatch(etag) => {
                self.varint(2);
                self.str(etag);
            }
        }
    }

    fn parts(&mut self, parts: &[PartRecord]) {
        self.varint(parts.len() as u64);
        for p in parts {
            self.varint(u64::from(p.number));
            self.str(&p.etag);
            self.varint(p.size);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], kind: u8) -> Result<Self, TokenError> {
        if bytes.len() < 3 || &bytes[..3] != MAGIC {
            return Err(TokenError::BadMagic);
        }
        let version = *bytes.get(3).ok_or(TokenError::Malformed("version"))?;
        if version != TOKEN_VERSION {
            return Err(TokenError::UnknownVersion(version));
        }
        let found = *bytes.get(4).ok_or(TokenError::Malformed("kind"))?;
        if found != kind {
            return Err(TokenError::WrongKind {
                expected: kind_name(kind),
                found: kind_name(found),
            });
        }
        if bytes.len() < 9 {
            return Err(TokenError::Malformed("checksum"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != stored {
            return Err(TokenError::Checksum);
        }
        Ok(Self { buf: body, pos: 5 })
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, TokenError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or(TokenError::Malformed(what))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(TokenError::Malformed(what))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, TokenError> {
        u32::try_from(self.varint(what)?).map_err(|_| TokenError::Malformed(what))
    }

    fn str(&mut self, what: &'static str) -> Result<String, TokenError> {
        let len = usize::try_from(self.varint(what)?).map_err(|_| TokenError::Malformed(what))?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or(TokenError::Malformed(what))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(TokenError::Malformed(what))?;
        self.pos = end;
        String::from_utf8(bytes.to_vec()).map_err(|_| TokenError::Malformed(what))
    }

    fn condition(&mut self) -> Result<CommitCondition, TokenError> {
        match self.varint("commit condition")? {
            0 => Ok(PutCondition::None),
            1 => Ok(PutCondition::IfNoneMatch),
            2 => Ok(PutCondition::IfMatch(self.str("commit condition ETag")?)),
            _ => Err(TokenError::Malformed("commit condition")),
        }
    }

    fn parts(&mut self) -> Result<Vec<PartRecord>, TokenError> {
        let n = self.varint("part count")?;
        // Each part takes at least 3 bytes: never trust a count the buffer cannot hold.
        if n > (self.buf.len() - self.pos) as u64 / 3 {
            return Err(TokenError::Malformed("part count"));
        }
        (0..n)
            .map(|_| {
                Ok(PartRecord {
                    number: self.u32("part number")?,
                    etag: self.str("part ETag")?,
                    size: self.varint("part size")?,
                })
            })
            .collect()
    }

    fn end(&self) -> Result<(), TokenError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(TokenError::Malformed("end (trailing bytes)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ResumeToken {
        ResumeToken {
            key: "dir/file.csv".into(),
            upload_id: "up1".into(),
            writer_id: "w".into(),
            condition: PutCondition::IfMatch("abc".into()),
            parts: vec![PartRecord {
                number: 1,
                etag: "e1".into(),
                size: 5 * 1024 * 1024,
            }],
            tail_key: ".rivulet/tails/x/1".into(),
            tail_len: 300,
            tail_crc32c: 0xdead_beef,
            seq: 1,
        }
    }

    /// The encoded form is part of the on-store contract (tokens live in checkpoints and in
    /// tail objects): this pins it byte for byte.
    #[test]
    fn golden_bytes() {
        let expected = concat!(
            "525654",
            "01",
            "01", // magic "RVT", version 1, resume
            "0c",
            "6469722f66696c652e637376", // key "dir/file.csv"
            "03",
            "757031", // upload id "up1"
            "01",
            "77", // writer id "w"
            "02",
            "03",
            "616263", // If-Match "abc"
            "01",
            "01",
            "02",
            "6531",
            "8080c002", // 1 part: number 1, "e1", 5 MiB
            "12",
            "2e726976756c65742f7461696c732f782f31", // tail key ".rivulet/tails/x/1"
            "ac02",                                 // tail length 300
            "effdb6f50d",                           // tail crc 0xdeadbeef
            "01",                                   // seq 1
            "c80c6d1b",                             // crc32c of all of the above, LE
        );
        assert_eq!(hex::encode(sample().encode()), expected);
        assert_eq!(
            ResumeToken::decode(&hex::decode(expected).unwrap()).unwrap(),
            sample()
        );
    }

    #[test]
    fn commit_token_round_trips_and_kinds_are_checked() {
        let t = CommitToken {
            key: "k".into(),
            upload_id: "u".into(),
            writer_id: "w".into(),
            condition: PutCondition::IfNoneMatch,
            parts: vec![],
        };
        let bytes = t.encode();
        assert_eq!(CommitToken::decode(&bytes).unwrap(), t);
        assert_eq!(Token::decode(&bytes).unwrap(), Token::Commit(t));
        assert!(matches!(
            ResumeToken::decode(&bytes),
            Err(TokenError::WrongKind { .. })
        ));
    }

    #[test]
    fn corrupt_unknown_and_truncated_tokens_are_rejected() {
        let bytes = sample().encode();
        let mut flipped = bytes.clone();
        flipped[10] ^= 0x40;
        assert_eq!(ResumeToken::decode(&flipped), Err(TokenError::Checksum));
        let mut v2 = bytes.clone();
        v2[3] = 2;
        assert_eq!(ResumeToken::decode(&v2), Err(TokenError::UnknownVersion(2)));
        assert_eq!(ResumeToken::decode(b"hello"), Err(TokenError::BadMagic));
        for cut in 0..bytes.len() {
            assert!(ResumeToken::decode(&bytes[..cut]).is_err());
        }
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Token::decode(&bytes);
        }

        #[test]
        fn resume_tokens_round_trip(
            key in "[a-z/._-]{1,40}",
            n in 0usize..20,
            tail_len in any::<u64>(),
            crc in any::<u32>(),
            seq in any::<u64>(),
        ) {
            let t = ResumeToken {
                key,
                upload_id: "u".repeat(n + 1),
                writer_id: "w".into(),
                condition: PutCondition::None,
                parts: (0..n).map(|i| PartRecord { number: i as u32 + 1, etag: format!("e{i}"), size: i as u64 * 77 }).collect(),
                tail_key: "t".into(),
                tail_len,
                tail_crc32c: crc,
                seq,
            };
            prop_assert_eq!(ResumeToken::decode(&t.encode()).unwrap(), t);
        }
    }
}
