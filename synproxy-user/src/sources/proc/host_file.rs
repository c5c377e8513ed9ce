//! Opening and reading files the host (or whoever controls `--proc-root`,
//! `HOST_PROC` or a flag's path) put there: never blocking, never following
//! a FIFO or a device, never reading without a bound. Each file is opened
//! with `O_NONBLOCK | O_CLOEXEC | O_NOCTTY` (a FIFO then opens at once
//! instead of waiting for a writer), after `stat` said it is a regular file
//! (a device node is never opened: opening some has side effects), and
//! checked again with `fstat` on the open descriptor (it may have been
//! swapped in between). procfs files are regular files of size 0, read
//! with the same cap as any other.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not read; the Display is a short phrase for after the path.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a regular file: what it is instead.
    #[error("{0}, not a regular file: not read")]
    NotRegular(&'static str),
    /// A symbolic link where none is followed.
    #[error("a symbolic link, not followed")]
    Symlink,
    /// Longer than the cap (bytes).
    #[error("larger than {}: not read", describe_size(*.0))]
    TooLarge(usize),
}

impl HostFileError {
    /// The I/O error, if that is what it is.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            HostFileError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`): nsfs files are
/// regular once the link is followed; a FIFO or a device put in their place
/// is refused without blocking.
pub fn open_ns(path: &Path) -> io::Result<File> {
    match open_regular(path, true) {
        Ok((file, _)) => Ok(file),
        Err(HostFileError::Io(e)) => Err(e),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// `1 MiB`, `64 KiB` or bytes.
fn describe_size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// What a non-regular file is, for the error.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    }
}

fn check_regular(meta: &Metadata) -> Result<(), HostFileError> {
    if meta.file_type().is_file() {
        Ok(())
    } else {
        Err(HostFileError::NotRegular(kind(meta)))
    }
}

/// Opens the regular file at `path` without blocking; `follow`: whether a
/// symbolic link as the last component is followed (to a regular file).
/// Returns the file and its `fstat`.
pub fn open_regular(path: &Path, follow: bool) -> Result<(File, Metadata), HostFileError> {
    let before = if follow {
        std::fs::metadata(path)?
    } else {
        std::fs::symlink_metadata(path)?
    };
    if !follow && before.file_type().is_symlink() {
        return Err(HostFileError::Symlink);
    }
    check_regular(&before)?;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) if !follow => HostFileError::Symlink,
            _ => HostFileError::Io(e),
        })?;
    let meta = file.metadata()?;
    check_regular(&meta)?;
    Ok((file, meta))
}

/// Reads all of `file` from offset 0 into `buf` (cleared first) with
/// `pread`, at most `cap` bytes: one more is [`HostFileError::TooLarge`].
/// The file's size is not trusted (procfs reports 0).
pub fn pread_capped(file: &File, buf: &mut Vec<u8>, cap: usize) -> Result<(), HostFileError> {
    // A reused buffer's size fits the file last time: one read, and one for EOF.
    let mut chunk = buf.capacity().max(4096);
    buf.clear();
    loop {
        let len = buf.len();
        if len > cap {
            buf.clear();
            return Err(HostFileError::TooLarge(cap));
        }
        // Grows geometrically, never past one byte over the cap.
        let want = chunk.min(cap + 1 - len);
        buf.resize(len + want, 0);
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(());
            }
            Ok(n) => {
                buf.truncate(len + n);
                chunk = chunk.saturating_mul(2);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(len),
            Err(e) => {
                buf.truncate(len);
                return Err(HostFileError::Io(e));
            }
        }
    }
}

/// [`open_regular`] (following links) and [`pread_capped`], also refusing
/// a regular file whose size is over `cap` before reading it.
pub fn read_regular(path: &Path, cap: usize) -> Result<Vec<u8>, HostFileError> {
    let (file, meta) = open_regular(path, true)?;
    if meta.len() > cap as u64 {
        return Err(HostFileError::TooLarge(cap));
    }
    let mut buf = Vec::new();
    pread_capped(&file, &mut buf, cap)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> bool {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::mknod(c.as_ptr(), mode, dev) == 0 }
    }

    #[test]
    fn fifos_devices_and_links_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(mknod(&fifo, libc::S_IFIFO | 0o600, 0));
        let err = open_regular(&fifo, false).unwrap_err().to_string();
        assert_eq!(err, "a FIFO (named pipe), not a regular file: not read");
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert_eq!(
            open_regular(&link, false).unwrap_err().to_string(),
            "a symbolic link, not followed"
        );
        assert_eq!(
            open_regular(&link, true).unwrap_err().to_string(),
            "a character device, not a regular file: not read"
        );
        // A device node of its own (root only: mknod needs CAP_MKNOD).
        let zero = dir.path().join("zero-node");
        if mknod(&zero, libc::S_IFCHR | 0o600, libc::makedev(1, 5)) {
            assert!(open_regular(&zero, true)
                .unwrap_err()
                .to_string()
                .starts_with("a character device"));
        }
        assert!(open_regular(dir.path(), true)
            .unwrap_err()
            .to_string()
            .starts_with("a directory"));
    }

    #[test]
    fn reads_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'a'; 10_000]).unwrap();
        assert_eq!(read_regular(&path, 10_000).unwrap().len(), 10_000);
        assert_eq!(
            read_regular(&path, 9_999).unwrap_err().to_string(),
            "larger than 9999 bytes: not read"
        );
        let (file, _) = open_regular(&path, false).unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            pread_capped(&file, &mut buf, 4096),
            Err(HostFileError::TooLarge(4096))
        ));
        assert!(buf.capacity() < 10_000);
        // procfs: size 0, read in full.
        let (file, meta) = open_regular(Path::new("/proc/self/status"), false).unwrap();
        assert_eq!(meta.len(), 0);
        pread_capped(&file, &mut buf, 1 << 20).unwrap();
        assert!(buf.starts_with(b"Name:"));
    }
}
