//! Network namespaces an unprivileged user makes, as `unshare -rn` does:
//! a process running as nobody/nogroup creates a user namespace, then forks
//! one child per network namespace; each child unshares its own network
//! namespace and sleeps in it (a process must be in a namespace for
//! `--netns all` to find it). All of them are one process group, killed on
//! drop; each also dies with its parent (`PR_SET_PDEATHSIG`), so nothing
//! outlives a test that panics.

use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The uid and gid the namespaces' creator runs as (nobody/nogroup).
const NOBODY: libc::uid_t = 65534;

pub struct UserNamespaces {
    leader: libc::pid_t,
    /// nsfs inodes of the namespaces.
    pub inodes: HashSet<u64>,
}

/// The child's side: only async-signal-safe calls (the parent may have
/// threads), never returns.
unsafe fn creator(count: usize, report: libc::c_int) -> ! {
    let say = |b: &[u8; 1]| {
        // SAFETY: a one-byte write from a live buffer to our pipe.
        unsafe { libc::write(report, b.as_ptr().cast(), 1) };
    };
    // SAFETY (whole block): plain syscalls on this process's own state.
    unsafe {
        libc::setpgid(0, 0);
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
            || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
        {
            say(b"C");
            libc::_exit(1);
        }
        if libc::unshare(libc::CLONE_NEWUSER) != 0 {
            say(b"U");
            libc::_exit(1);
        }
        // Credentials changed above clear the parent-death signal: set it now.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        for _ in 0..count {
            match libc::fork() {
                0 => {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        say(b"N");
                        libc::_exit(1);
                    }
                    say(b"k");
                    loop {
                        libc::pause();
                    }
                }
                pid if pid < 0 => {
                    say(b"F");
                    break;
                }
                _ => {}
            }
        }
        loop {
            libc::pause();
        }
    }
}

impl UserNamespaces {
    /// `count` namespaces owned by a user namespace nobody created, each held
    /// by a sleeping process; waits (up to `deadline`) until all exist.
    pub fn create(count: usize, deadline: Duration) -> Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills in `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe2");
        }
        let [read_end, write_end] = fds;
        // SAFETY: the child only makes async-signal-safe calls (`creator`).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child, which never returns.
            unsafe {
                libc::close(read_end);
                creator(count, write_end)
            }
        }
        // SAFETY: our copy of the write end; the child has its own.
        unsafe { libc::close(write_end) };
        if pid < 0 {
            // SAFETY: closing our read end.
            unsafe { libc::close(read_end) };
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        let mut this = Self {
            leader: pid,
            inodes: HashSet::new(),
        };
        let started = Instant::now();
        let mut ready = 0usize;
        let mut buf = [0u8; 4096];
        let outcome = loop {
            if ready == count {
                break Ok(());
            }
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                break Err(format!("{ready} of {count} namespaces after {deadline:?}"));
            }
            let mut pfd = libc::pollfd {
                fd: read_end,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd that outlives the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
            // SAFETY: reads into `buf`, which outlives the call.
            let n = unsafe { libc::read(read_end, buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                break Err(format!("the creator exited after {ready} namespaces"));
            }
            for &b in buf.iter().take(n.max(0) as usize) {
                match b {
                    b'k' => ready += 1,
                    other => {
                        let what = match other {
                            b'U' => "unshare(CLONE_NEWUSER) as nobody failed (unprivileged user namespaces disabled?)",
                            b'N' => "unshare(CLONE_NEWNET) in the user namespace failed",
                            b'F' => "fork failed",
                            _ => "cannot drop to nobody",
                        };
                        // SAFETY: closing our read end.
                        unsafe { libc::close(read_end) };
                        bail!("{what} (after {ready} namespaces)");
                    }
                }
            }
        };
        // SAFETY: closing our read end.
        unsafe { libc::close(read_end) };
        if let Err(e) = outcome {
            bail!("{e}");
        }
        this.inodes = this.namespace_inodes()?;
        if this.inodes.len() != count {
            bail!("{} distinct namespaces, want {count}", this.inodes.len());
        }
        Ok(this)
    }

    /// The network namespaces of the group's processes (the creator's excluded).
    fn namespace_inodes(&self) -> Result<HashSet<u64>> {
        let own = std::fs::metadata("/proc/self/ns/net")?.ino();
        let mut inodes = HashSet::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: getpgid has no memory arguments.
            if pid == self.leader || unsafe { libc::getpgid(pid) } != self.leader {
                continue;
            }
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                if m.ino() != own {
                    inodes.insert(m.ino());
                }
            }
        }
        Ok(inodes)
    }
}

impl Drop for UserNamespaces {
    fn drop(&mut self) {
        // SAFETY: signals our own process group and reaps its leader.
        unsafe {
            libc::kill(-self.leader, libc::SIGKILL);
            libc::waitpid(self.leader, std::ptr::null_mut(), 0);
        }
    }
}
