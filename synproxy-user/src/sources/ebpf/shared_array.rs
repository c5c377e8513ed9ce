//! A BPF array map created with `BPF_F_MMAPABLE`, mapped into the agent: the
//! programs add to it atomically and the agent reads (and writes its own
//! parts) with atomic loads and stores, without a system call. Map syscalls
//! would not do for reads that run every round: while a CPU is inside one, the
//! kernel skips every kprobe program on that CPU.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

pub struct SharedArray {
    base: NonNull<u8>,
    /// Bytes mapped (whole pages).
    len: usize,
    /// Bytes of values (`max_entries * value_size`).
    values: usize,
}

// SAFETY: the mapping is only reached through atomic types (`u64s`, `u32s`),
// which are Sync; the pointer itself is not tied to a thread.
unsafe impl Send for SharedArray {}
// SAFETY: as above.
unsafe impl Sync for SharedArray {}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

impl SharedArray {
    /// Maps the values of an mmapable array map of `max_entries` values of
    /// `value_size` bytes (a multiple of 8).
    pub fn map(fd: BorrowedFd<'_>, value_size: usize, max_entries: usize) -> std::io::Result<Self> {
        let values = value_size
            .checked_mul(max_entries)
            .filter(|&n| n > 0 && value_size.is_multiple_of(8))
            .ok_or_else(|| std::io::Error::other("bad array map geometry"))?;
        let page = page_size();
        let len = values.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a BPF array map's values, which the
        // kernel page-aligns for mmapable arrays; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null pointer"))?;
        Ok(Self { base, len, values })
    }

    /// The values as u64 words.
    pub fn u64s(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned, at least `values` bytes long and
        // lives as long as `self`; every access to it (kernel and agent) is
        // atomic, and AtomicU64 has the size and alignment of u64.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU64>(), self.values / 8)
        }
    }

    /// The values as u32 words.
    pub fn u32s(&self) -> &[AtomicU32] {
        // SAFETY: as in `u64s`.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU32>(), self.values / 4)
        }
    }
}

impl Drop for SharedArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it
        // outlives `self` (the slices borrow `self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
