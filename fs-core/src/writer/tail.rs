//! Tail objects: what `persist()` stages in the store.
//!
//! A tail object holds the bytes after the uploaded parts, followed by the resume token that
//! describes them, so the store alone is enough to rebuild the index:
//!
//! ```text
//! tail bytes | resume token (binary) | token length u32 LE | "RVTL"
//! ```
//!
//! Its key is `<tail prefix><upload hash>/<seq as 16 hex digits>-<session>`: grouped by upload,
//! ordered by sequence, and new for every persist even when two writers recovered from the
//! same token persist the same sequence number (the session is random per writer).

use bytes::{Bytes, BytesMut};

use crate::md5::Md5;
use crate::token::{ResumeToken, TokenError};

const TRAILER_MAGIC: &[u8; 4] = b"RVTL";

/// A short, path-safe name for an upload id (upload ids may hold any characters).
pub fn upload_hash(upload_id: &str) -> String {
    hex::encode(&Md5::digest(upload_id.as_bytes())[..12])
}

/// The folder of an upload's tails.
pub fn tail_dir(prefix: &str, upload_id: &str) -> String {
    format!("{prefix}{}/", upload_hash(upload_id))
}

/// The key of the tail staged by persist number `seq` of writer session `session`.
pub fn tail_key(prefix: &str, upload_id: &str, seq: u64, session: &str) -> String {
    format!("{}{seq:016x}-{session}", tail_dir(prefix, upload_id))
}

/// Builds a tail object's body.
pub fn encode(tail: &[u8], token: &ResumeToken) -> Bytes {
    let token_bytes = token.encode();
    let mut body = BytesMut::with_capacity(tail.len() + token_bytes.len() + 8);
    body.extend_from_slice(tail);
    body.extend_from_slice(&token_bytes);
    body.extend_from_slice(&(token_bytes.len() as u32).to_le_bytes());
    body.extend_from_slice(TRAILER_MAGIC);
    body.freeze()
}

/// Splits a tail object into its tail bytes and the token it embeds.
pub fn decode(body: &Bytes) -> Result<(Bytes, ResumeToken), TokenError> {
    let n = body.len();
    if n < 8 || &body[n - 4..] != TRAILER_MAGIC {
        return Err(TokenError::BadMagic);
    }
    let len = u32::from_le_bytes([body[n - 8], body[n - 7], body[n - 6], body[n - 5]]) as usize;
    let token_start = (n - 8)
        .checked_sub(len)
        .ok_or(TokenError::Malformed("tail trailer"))?;
    let token = ResumeToken::decode(&body[token_start..n - 8])?;
    Ok((body.slice(..token_start), token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PutCondition;

    #[test]
    fn tail_objects_round_trip_and_reject_garbage() {
        let token = ResumeToken {
            key: "k".into(),
            upload_id: "u".into(),
            writer_id: "w".into(),
            condition: PutCondition::None,
            parts: vec![],
            tail_key: tail_key(".rivulet/tails/", "u", 3, "s1"),
            tail_len: 5,
            tail_crc32c: crc32c::crc32c(b"hello"),
            seq: 3,
        };
        let body = encode(b"hello", &token);
        let (tail, decoded) = decode(&body).unwrap();
        assert_eq!(&tail[..], b"hello");
        assert_eq!(decoded, token);
        assert!(token.tail_key.ends_with("/0000000000000003-s1"));
        assert!(decode(&Bytes::from_static(b"hello")).is_err());
        let mut bad = body.to_vec();
        let n = bad.len();
        bad[n - 5] = 0xff; // token length points before the start
        assert!(decode(&Bytes::from(bad)).is_err());
    }
}
