//! Every BPF program, map, link and user-loaded BTF object in the kernel, by id
//! (what `bpftool prog/map/link/btf list` shows), with the bpf(2) syscall: the
//! VM guest has no bpftool. Ids are never reused while the kernel runs, so an
//! id that was not there before is an object created since.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

/// The kinds of BPF objects listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Prog,
    Map,
    Link,
    /// BTF loaded from user space (a program's or map's); vmlinux and module
    /// BTF objects are left out (they come and go with modules).
    Btf,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Prog, Kind::Map, Kind::Link, Kind::Btf];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Prog => "program",
            Kind::Map => "map",
            Kind::Link => "link",
            Kind::Btf => "btf",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn commands(self) -> (libc::c_long, libc::c_long) {
        match self {
            Kind::Prog => (BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID),
            Kind::Map => (BPF_MAP_GET_NEXT_ID, BPF_MAP_GET_FD_BY_ID),
            Kind::Link => (BPF_LINK_GET_NEXT_ID, BPF_LINK_GET_FD_BY_ID),
            Kind::Btf => (BPF_BTF_GET_NEXT_ID, BPF_BTF_GET_FD_BY_ID),
        }
    }
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
    // SAFETY: `attr` is a zeroed 128-byte buffer, larger than every bpf_attr
    // variant used here; the kernel reads/writes only within the size given.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<[u64; 16]>() as libc::c_uint,
        )
    }
}

/// `bpf_*_info` of `fd` into `info` (the kernel fills what it knows).
fn info(fd: &OwnedFd, info: &mut [u8; 256]) -> bool {
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64 | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) == 0
}

fn c_name(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn u32_at(info: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&info[at..at + 4]);
    u32::from_ne_bytes(b)
}

/// A short description of the object: a program's or map's name, a link's
/// type and program id, a BTF object's name. `None`: not listed (kernel BTF).
fn describe(kind: Kind, fd: &OwnedFd) -> Option<String> {
    let mut buf = [0u8; 256];
    match kind {
        Kind::Prog => Some(if info(fd, &mut buf) {
            c_name(&buf[64..80])
        } else {
            String::new()
        }),
        Kind::Map => Some(if info(fd, &mut buf) {
            c_name(&buf[24..40])
        } else {
            String::new()
        }),
        // struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; ... }
        Kind::Link => Some(if info(fd, &mut buf) {
            format!("type={} prog={}", u32_at(&buf, 0), u32_at(&buf, 8))
        } else {
            String::new()
        }),
        // struct bpf_btf_info { __u64 btf; __u32 btf_size; __u32 id; __u64 name;
        // __u32 name_len; __u32 kernel_btf; }
        Kind::Btf => {
            let mut name = [0u8; 64];
            buf[16..24].copy_from_slice(&(name.as_mut_ptr() as u64).to_ne_bytes());
            buf[24..28].copy_from_slice(&(name.len() as u32).to_ne_bytes());
            if !info(fd, &mut buf) {
                return Some(String::new());
            }
            (u32_at(&buf, 28) == 0).then(|| c_name(&name))
        }
    }
}

/// Every object of `kind`: id -> description. An error when the kernel
/// refuses the listing itself (EPERM, or no bpf(2) at all).
pub fn list(kind: Kind) -> std::io::Result<BTreeMap<u32, String>> {
    let (next, by_id) = kind.commands();
    let mut out = BTreeMap::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id);
        if bpf(next, &mut attr) != 0 {
            let e = std::io::Error::last_os_error();
            // ENOENT: no more; EINVAL: a kernel without this kind of listing.
            if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) {
                return Ok(out);
            }
            return Err(e);
        }
        id = (attr[0] >> 32) as u32;
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id);
        let fd = bpf(by_id, &mut attr);
        if fd < 0 {
            continue; // freed in between
        }
        // SAFETY: a new descriptor returned by the kernel, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if let Some(what) = describe(kind, &fd) {
            out.insert(id, what);
        }
    }
}
