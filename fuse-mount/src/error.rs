//! The file system's errors, each one errno. Backend failures become `EIO` after being logged
//! with the key they concern: the kernel only passes a number on, so the log is where the
//! cause goes.

use std::fmt::Display;

/// What a file-system operation can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsError {
    /// ENOENT: no such file or directory (or it was removed outside the mount).
    NotFound,
    /// EEXIST: the name is taken.
    Exists,
    /// ENOTEMPTY: rmdir of a directory that has entries.
    NotEmpty,
    /// EISDIR: a file operation on a directory.
    IsDir,
    /// ENOTDIR: a directory operation on a file.
    NotDir,
    /// EROFS: a change on a read-only mount.
    ReadOnly,
    /// EINVAL: a name the store cannot hold, or an unsupported flag.
    Invalid,
    /// ENAMETOOLONG: a name longer than 255 bytes, or a path longer than a key may be.
    NameTooLong,
    /// EPERM: a kind of file the store cannot hold (FIFOs, sockets, devices).
    NotPermitted,
    /// EBADF: the handle is unknown or not open for this operation.
    BadHandle,
    /// EIO: the store or the writer failed (logged with the key).
    Io,
}

impl FsError {
    pub fn errno(self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::IsDir => libc::EISDIR,
            FsError::NotDir => libc::ENOTDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::Invalid => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NotPermitted => libc::EPERM,
            FsError::BadHandle => libc::EBADF,
            FsError::Io => libc::EIO,
        }
    }
}

impl Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.errno());
        write!(f, "{text}")
    }
}

impl std::error::Error for FsError {}

/// Logs a backend failure naming the operation and key, and turns it into `EIO`.
pub(crate) fn io_error(op: &str, key: &str, err: impl Display) -> FsError {
    tracing::error!(op, key, "{err}");
    FsError::Io
}

pub type FsResult<T> = Result<T, FsError>;
