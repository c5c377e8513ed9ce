//! The kernel's BTF objects of loaded modules, for fentry/fexit programs on
//! module functions (`--probes fentry`): such a program is loaded with the
//! module's BTF object (a file descriptor) and the function's id in the
//! module's split BTF. The object is found by name among the kernel's BTF
//! objects (`BPF_BTF_GET_NEXT_ID`, `BPF_BTF_GET_FD_BY_ID`, both need
//! `CAP_SYS_ADMIN`; the name in `bpf_btf_info` needs Linux 5.11), and its raw
//! BTF is read through the same descriptor, so ids and descriptor belong to the
//! same load of the module.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;

/// A module's BTF object: its descriptor, kernel id and raw (split) BTF.
pub struct ModuleBtf {
    pub fd: OwnedFd,
    pub id: u32,
    pub data: Vec<u8>,
}

/// `bpf(cmd, attr)` with a 128-byte zero-padded attribute block that the
/// kernel may write back into (`next_id`).
fn sys_bpf(cmd: libc::c_long, attr: &mut [u32; 32]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of 128 bytes that
    // outlives the call; a pointer inside it (GET_INFO) is set by the caller
    // to a buffer of the stated length that outlives the call too.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn attr(head: &[u32]) -> [u32; 32] {
    let mut attr = [0u32; 32];
    attr[..head.len()].copy_from_slice(head);
    attr
}

/// `struct bpf_btf_info` (5.11+ layout; older kernels fill a prefix).
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

fn btf_info(fd: BorrowedFd<'_>, info: &mut BtfInfo) -> io::Result<()> {
    let ptr = info as *mut BtfInfo as u64;
    let mut a = attr(&[
        fd.as_raw_fd() as u32,
        std::mem::size_of::<BtfInfo>() as u32,
        ptr as u32,
        (ptr >> 32) as u32,
    ]);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map(|_| ())
}

/// The BTF object of the loaded module `name`; None if no kernel BTF object
/// has that name (module not loaded, or built without BTF).
pub fn find_module_btf(name: &str) -> io::Result<Option<ModuleBtf>> {
    let mut id = 0u32;
    loop {
        let mut a = attr(&[id]);
        match sys_bpf(BPF_BTF_GET_NEXT_ID, &mut a) {
            Ok(_) => id = a[1],
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        let fd = match sys_bpf(BPF_BTF_GET_FD_BY_ID, &mut attr(&[id])) {
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
            // Freed since it was listed (a module unloaded meanwhile).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let mut name_buf = [0u8; 64];
        let mut info = BtfInfo {
            name: name_buf.as_mut_ptr() as u64,
            name_len: name_buf.len() as u32,
            ..Default::default()
        };
        btf_info(fd.as_fd(), &mut info)?;
        let end = name_buf.iter().position(|&b| b == 0).unwrap_or(0);
        if info.kernel_btf == 0 || &name_buf[..end] != name.as_bytes() {
            continue;
        }
        let mut data = vec![0u8; info.btf_size as usize];
        let mut full = BtfInfo {
            btf: data.as_mut_ptr() as u64,
            btf_size: data.len() as u32,
            ..Default::default()
        };
        btf_info(fd.as_fd(), &mut full)?;
        data.truncate(full.btf_size as usize);
        return Ok(Some(ModuleBtf { fd, id, data }));
    }
}
