//! The thin FUSE layer: each `fuser::Filesystem` call runs the matching [`Filesystem`]
//! operation on the tokio runtime and turns its result into a reply. Nothing is decided here.
//!
//! FUSE calls arrive on the session's own thread (not a runtime worker), which blocks on the
//! operation with a time limit: an operation stuck on the store (retries of an unreachable
//! endpoint) answers EIO after [`Adapter::new`]'s `timeout` instead of hanging the mount.

use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    IoctlFlags, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::error::{FsError, FsResult};
use crate::fs::{Attr, Filesystem, OpenMode};
use crate::inode::Kind;

/// Directory entries taken from the listing per `readdir` call (more than one reply holds).
const READDIR_WINDOW: usize = 512;

pub struct Adapter {
    fs: Arc<Filesystem>,
    runtime: Handle,
    timeout: Duration,
}

impl Adapter {
    pub fn new(fs: Arc<Filesystem>, runtime: Handle, timeout: Duration) -> Self {
        Self {
            fs,
            runtime,
            timeout,
        }
    }

    fn run<T>(&self, op: &str, fut: impl Future<Output = FsResult<T>>) -> Result<T, Errno> {
        let limit = self.timeout;
        self.runtime
            .block_on(async move {
                match tokio::time::timeout(limit, fut).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::error!(op, "gave up after {limit:?}: the store does not answer");
                        Err(FsError::Io)
                    }
                }
            })
            .map_err(errno)
    }

    fn ttl(&self) -> Duration {
        self.fs.config().ttl
    }
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    // Keys are UTF-8: other names cannot be stored.
    name.to_str().ok_or(Errno::EINVAL)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: match attr.kind {
            Kind::File => 1,
            Kind::Dir => 2,
        },
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl fuser::Filesystem for Adapter {
    fn destroy(&mut self) {
        let fs = self.fs.clone();
        self.runtime.block_on(async move { fs.shutdown().await });
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result =
            name_str(name).and_then(|name| self.run("lookup", self.fs.lookup(parent.0, name)));
        match result {
            Ok(attr) => reply.entry(&self.ttl(), &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run("getattr", self.fs.getattr(ino.0)) {
            Ok(attr) => reply.attr(&self.ttl(), &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.run("setattr", self.fs.setattr(ino.0, size)) {
            Ok(attr) => reply.attr(&self.ttl(), &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result =
            name_str(name).and_then(|name| self.run("mkdir", self.fs.mkdir(parent.0, name)));
        match result {
            Ok(attr) => reply.entry(&self.ttl(), &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let result =
            name_str(name).and_then(|name| self.run("mknod", self.fs.mknod(parent.0, name, mode)));
        match result {
            Ok(attr) => reply.entry(&self.ttl(), &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    // Links cannot be stored: EPERM, as link(2) and symlink(2) say for a file system that does
    // not support them. Answered here, quietly: fuser's default logs a warning per call, and
    // git tries a hard link for every object it writes.
    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result =
            name_str(name).and_then(|name| self.run("unlink", self.fs.unlink(parent.0, name)));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result =
            name_str(name).and_then(|name| self.run("rmdir", self.fs.rmdir(parent.0, name)));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let result = name_str(name).and_then(|name| {
            let newname = name_str(newname)?;
            self.run(
                "rename",
                self.fs
                    .rename(parent.0, name, newparent.0, newname, no_replace),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.run("open", self.fs.open(ino.0, OpenMode::from_flags(flags.0))) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.run("read", self.fs.read(fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.run("write", self.fs.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.run("flush", self.fs.flush(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.run("release", self.fs.release(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.run("fsync", self.fs.fsync(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.run("opendir", self.fs.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // A reply holds a few pages of entries; more than fit are read again from the next offset.
        match self.fs.readdir(fh.0, offset, READDIR_WINDOW) {
            Ok(entries) => {
                for (i, entry) in entries.iter().enumerate() {
                    let next = offset + i as u64 + 1;
                    if reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    // Extended attributes are not stored. ENOSYS (rather than ENOTSUP) makes the kernel stop
    // asking for the rest of the mount: it otherwise asks `security.capability` on every write.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    // No ioctl is supported. Answered here, quietly: programs probe every file they open
    // (isatty's TCGETS), and fuser's default logs a warning for each call.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // An object store has no fixed capacity: report plenty, so tools that check free
        // space before writing go ahead.
        const BLOCKS: u64 = 1 << 40;
        let namelen = crate::fs::NAME_MAX as u32;
        reply.statfs(
            BLOCKS,
            BLOCKS,
            BLOCKS,
            1 << 32,
            1 << 32,
            4096,
            namelen,
            4096,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = name_str(name).and_then(|name| {
            self.run(
                "create",
                self.fs.create(parent.0, name, OpenMode::from_flags(flags)),
            )
        });
        match result {
            Ok((attr, fh)) => reply.created(
                &self.ttl(),
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}
