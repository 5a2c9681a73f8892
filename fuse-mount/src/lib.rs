//! Rivulet's FUSE mount: an object store as a file system with append, truncate, overwrite,
//! durable `fsync` and crash recovery, built on fs-core's recoverable writer.
//!
//! - [`fs`]: the file system itself over a store, independent of FUSE (unit-tested over the
//!   memory store).
//! - [`adapter`]: the thin `fuser::Filesystem` that calls it.
//! - [`prefetch`]: sequential read-ahead of committed objects.
//! - [`cache`]: the on-disk block cache of committed objects (`--cache-size`).
//! - [`mount`]: mounting, serving until unmounted or signalled, committing open files.
//! - [`recovery`]: committing what a crashed mount left persisted.
//!
//! See `docs/fuse.md`.

pub mod adapter;
pub mod cache;
pub mod error;
pub mod fs;
pub mod inode;
pub mod mount;
pub mod prefetch;
pub mod recovery;

pub use error::{FsError, FsResult};
pub use fs::{Attr, DirEntry, Filesystem, FsConfig, OpenMode};
pub use inode::{Ino, Kind, ROOT};
pub use mount::{MountOptions, serve};
pub use recovery::{Recovered, recover_open_files};
