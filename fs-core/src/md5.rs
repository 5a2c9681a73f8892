//! MD5, the hash behind S3's ETags, which the local store computes over every byte it holds.
//!
//! The hashing is AWS-LC's assembly implementation, already linked into every build for the
//! S3 client's TLS: on this project's x86-64 machines it runs at about 1.35x the speed of the
//! pure-Rust `md-5` crate (about 720 against 530 MB/s on one core), and a local store's parts,
//! objects and completes are all bound by it when the disk is fast. The wrapper below is the
//! only foreign code in fs-core; its three calls cannot fail (AWS-LC's MD5 functions always
//! return 1) and touch no memory but the context and the slices handed to them.

use aws_lc_sys::{MD5_CTX, MD5_Final, MD5_Init, MD5_Update};

/// The length of an MD5 digest in bytes.
pub const DIGEST_LEN: usize = 16;

/// An incremental MD5 hash.
#[derive(Clone)]
pub struct Md5 {
    ctx: MD5_CTX,
}

impl Md5 {
    pub fn new() -> Self {
        let mut ctx = MD5_CTX {
            h: [0; 4],
            Nl: 0,
            Nh: 0,
            data: [0; 64],
            num: 0,
        };
        // SAFETY: `ctx` is a valid, exclusively borrowed MD5_CTX for the duration of the call.
        unsafe { MD5_Init(&mut ctx) };
        Md5 { ctx }
    }

    pub fn update(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // SAFETY: the context was initialized by `MD5_Init`; `data` is valid for `data.len()`
        // bytes and only read.
        unsafe { MD5_Update(&mut self.ctx, data.as_ptr().cast(), data.len()) };
    }

    pub fn finalize(mut self) -> [u8; DIGEST_LEN] {
        let mut out = [0u8; DIGEST_LEN];
        // SAFETY: `out` has room for the 16-byte digest; the context is initialized.
        unsafe { MD5_Final(out.as_mut_ptr(), &mut self.ctx) };
        out
    }

    /// The MD5 of `data` in one call.
    pub fn digest(data: &[u8]) -> [u8; DIGEST_LEN] {
        let mut hasher = Md5::new();
        hasher.update(data);
        hasher.finalize()
    }
}

impl Default for Md5 {
    fn default() -> Self {
        Md5::new()
    }
}

impl std::fmt::Debug for Md5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Md5 { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: [u8; DIGEST_LEN]) -> String {
        hex::encode(digest)
    }

    #[test]
    fn matches_the_rfc_1321_test_suite() {
        let suite: [(&[u8], &str); 7] = [
            (b"", "d41d8cd98f00b204e9800998ecf8427e"),
            (b"a", "0cc175b9c0f1b6a831c399e269772661"),
            (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
            (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                b"abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, expected) in suite {
            assert_eq!(hex(Md5::digest(input)), expected, "MD5 of {input:?}");
        }
    }

    #[test]
    fn incremental_updates_of_any_split_hash_like_one_call() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = Md5::digest(&data);
        for split in [0, 1, 63, 64, 65, 4_999, 9_999, 10_000] {
            let mut hasher = Md5::new();
            hasher.update(&data[..split]);
            hasher.update(&[]);
            let copy = hasher.clone();
            hasher.update(&data[split..]);
            assert_eq!(hasher.finalize(), whole, "split at {split}");
            // A clone carries on from where it was taken.
            let mut copy = copy;
            copy.update(&data[split..]);
            assert_eq!(copy.finalize(), whole, "clone at {split}");
        }
    }
}
