//! Small file helpers: random-access reading for the RDC core, and atomic
//! writes (temporary file, fsync, rename) so a crash never leaves a partial
//! file under the final name.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use peerdelta_protocol::rdc::ReadAt;

/// A file opened for [`ReadAt`], with its length fixed at open time.
pub struct FileSource {
    file: File,
    len: u64,
    path: PathBuf,
}

impl FileSource {
    /// Opens `path` for reading; fails if it is not a regular file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("reading metadata of {}", path.display()))?;
        if !meta.is_file() {
            anyhow::bail!("{} is not a regular file", path.display());
        }
        Ok(FileSource {
            file,
            len: meta.len(),
            path: path.to_owned(),
        })
    }

    /// The open file (its metadata now, say).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// BLAKE3 of the file on `threads` threads
    /// (`protocol::hash::hash_parallel`).
    pub fn hash(&self, threads: usize) -> anyhow::Result<peerdelta_protocol::ContentHash> {
        peerdelta_protocol::hash::hash_parallel(self, threads)
            .with_context(|| format!("reading {}", self.path.display()))
    }
}

impl ReadAt for FileSource {
    type Error = io::Error;

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    e.kind(),
                    format!("{} shrank while it was being read", self.path.display()),
                )
            } else {
                e
            }
        })
    }
}

/// Writes a file atomically: a temporary file beside it, fsynced, then
/// renamed over `path`, then the directory fsynced.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    /// Starts writing `path`.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .with_context(|| format!("{} has no file name", path.display()))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            path: path.to_owned(),
        })
    }

    /// Flushes, fsyncs and renames into place.
    pub fn commit(mut self) -> anyhow::Result<()> {
        let file = self.file.take().context("file already committed")?;
        file.sync_all()
            .with_context(|| format!("syncing {}", self.tmp.display()))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.path.display())
        })?;
        sync_dir(&parent_dir(&self.path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("file already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Creates `path` (a new file) with `bytes`, fsynced: the first step of a
/// write that is checked or batched before it is moved into place. To
/// replace a file atomically, use [`write_atomic`].
pub fn create_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces `path` with `bytes` atomically and durably (a temporary file
/// beside it, fsynced, renamed over it, the directory fsynced): the one
/// helper for durable replacement.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.commit()
}

/// The directory containing `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// fsyncs a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    let d = File::open(dir).with_context(|| format!("opening directory {}", dir.display()))?;
    d.sync_all()
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Flushes every file and directory change on the filesystem holding `path`
/// to disk (`syncfs`). One call makes a whole batch of unsynced writes and
/// renames durable, where an fsync per file and per directory costs a disk
/// flush each.
#[allow(unsafe_code)]
pub fn sync_filesystem(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the descriptor is open for the whole call and `syncfs` only
    // reads it.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("syncing the filesystem of {}", path.display()));
    }
    Ok(())
}

/// Blocks of this many bytes that are all zeros are left as holes by
/// [`write_sparse`] (the page size, which every Linux filesystem's blocks
/// divide or equal).
pub const SPARSE_BLOCK: usize = 4096;

/// Appends `buf` at `offset` (the file's end) of a new file, leaving every
/// aligned [`SPARSE_BLOCK`] of zeros unwritten: a file that is not written
/// there reads as zeros (a hole), so a disk image's empty space costs no
/// write and no disk. `offset` must be a multiple of [`SPARSE_BLOCK`]; the
/// file is `offset + buf.len()` bytes long afterwards, so readers see the
/// zeros at its end too. Returns whether `buf` was all zeros.
pub fn write_sparse(file: &File, offset: u64, buf: &[u8]) -> io::Result<bool> {
    debug_assert!(offset.is_multiple_of(SPARSE_BLOCK as u64));
    // The start of the data not yet written, while in data.
    let mut pending: Option<usize> = None;
    let mut all_zero = true;
    let mut at = 0;
    for block in buf.chunks(SPARSE_BLOCK) {
        let zero = peerdelta_protocol::rdc::all_equal(block, 0);
        all_zero &= zero;
        match (zero, pending) {
            (false, None) => pending = Some(at),
            (true, Some(start)) => {
                file.write_all_at(&buf[start..at], offset + start as u64)?;
                pending = None;
            }
            _ => {}
        }
        at += block.len();
    }
    match pending {
        Some(start) => file.write_all_at(&buf[start..], offset + start as u64)?,
        // A hole at the end has no length until the file is given one.
        None if !buf.is_empty() => file.set_len(offset + buf.len() as u64)?,
        None => {}
    }
    Ok(all_zero)
}

/// Starts writing `len` bytes of `file` from `offset` to disk without waiting
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`), so a large copy reaches
/// the disk while it is still being made rather than all at the final sync.
/// A hint: failures are ignored, durability still comes from a later sync.
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the whole call; the call takes no
    // pointers.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// Waits until `len` bytes of `file` from `offset` are written to disk
/// (`sync_file_range`, not a durability barrier) and drops them from the
/// page cache (`posix_fadvise` `DONTNEED`). A large copy that nothing reads
/// soon then reuses the same few pages rather than filling the page cache.
/// A hint: failures are ignored.
#[allow(unsafe_code)]
pub fn drop_written(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor is open for both calls; they take no pointers.
    unsafe {
        if libc::sync_file_range(file.as_raw_fd(), offset, len, flags) == 0 {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// A file one thread is writing while others read it through [`ReadAt`]:
/// a read waits until the range it asks for has been written. It lets a
/// publisher sign a content on several threads while copying it.
pub struct GrowingFile {
    file: File,
    len: u64,
    written: std::sync::Mutex<(u64, bool)>,
    cond: std::sync::Condvar,
}

impl GrowingFile {
    /// Reads `file` (opened for reading) that will reach `len` bytes.
    pub fn new(file: File, len: u64) -> Self {
        GrowingFile {
            file,
            len,
            written: std::sync::Mutex::new((0, false)),
            cond: std::sync::Condvar::new(),
        }
    }

    /// Records that the writer has written `n` bytes in total.
    pub fn advance(&self, n: u64) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.0 = n;
        self.cond.notify_all();
    }

    /// The writer gave up: pending and future reads fail.
    pub fn fail(&self) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.1 = true;
        self.cond.notify_all();
    }
}

impl ReadAt for GrowingFile {
    type Error = io::Error;

    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let need = offset + buf.len() as u64;
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        while w.0 < need && !w.1 {
            w = self.cond.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        if w.0 < need {
            return Err(io::Error::other("the copy being read was abandoned"));
        }
        drop(w);
        self.file.read_exact_at(buf, offset)
    }
}

/// Free bytes for an unprivileged user on the file system holding `path`.
#[allow(unsafe_code)]
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path; `statvfs` writes only into
    // the buffer we own, and we read it only when the call succeeded.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the call succeeded, so the buffer is initialised.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn sparse_writes_read_back_the_same_and_leave_zeros_unwritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let block = SPARSE_BLOCK;
        // Data, zeros, a block with one byte set, then zeros to the end (the
        // last buffer all zeros): the length still counts them.
        let mut data = vec![7u8; block + 100];
        data.resize(66 * block, 0);
        data[65 * block + 9] = 1;
        data.resize(96 * block, 0);
        let mut all_zero = Vec::new();
        for (k, piece) in data.chunks(16 * block).enumerate() {
            all_zero.push(write_sparse(&file, (k * 16 * block) as u64, piece).unwrap());
        }
        assert_eq!(all_zero, [false, true, true, true, false, true]);
        drop(file);
        assert_eq!(fs::read(&path).unwrap(), data);
        let meta = fs::metadata(&path).unwrap();
        assert!(
            meta.blocks() * 512 <= 8 * block as u64,
            "{} blocks",
            meta.blocks()
        );
    }
}
