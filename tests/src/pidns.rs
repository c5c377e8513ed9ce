//! Running a program as PID 1 of its own PID namespace, with a /proc of that
//! namespace (what `unshare --pid --fork --mount-proc` does), as a container
//! runtime starts an agent. synproxy-scenario's `--pidns-exec PROGRAM ARGS...`
//! mode calls [`helper_main`]: it unshares, forks PROGRAM as PID 1, forwards
//! SIGTERM/SIGINT/SIGHUP to it and exits with its status (128 + signal if killed).

use anyhow::{bail, Context, Result};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// First argument of synproxy-scenario that selects the helper mode.
pub const HELPER_FLAG: &str = "--pidns-exec";

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill() is async-signal-safe; `pid` is our unreaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

fn cstring(s: &[u8]) -> Result<CString> {
    CString::new(s).context("argument contains a NUL byte")
}

/// The helper: must run before the process starts any thread (first thing in
/// main). Returns the exit code to exit with.
pub fn helper_main(args: &[OsString]) -> Result<i32> {
    let Some(program) = args.first() else {
        bail!("{HELPER_FLAG} needs a program");
    };
    let argv: Vec<CString> = args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let program = cstring(program.as_bytes())?;
    let proc_src = cstring(b"proc")?;
    let proc_dir = cstring(b"/proc")?;
    let root = cstring(b"/")?;
    // SAFETY: plain syscall with flags only; this process is single-threaded.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) },
        "unshare(CLONE_NEWPID | CLONE_NEWNS) (needs CAP_SYS_ADMIN)",
    )?;
    // SAFETY: single-threaded process; the child only makes syscalls and execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // PID 1 of the new namespace: a private mount tree, its own /proc.
        // SAFETY: valid NUL-terminated strings and a NULL-terminated argv that
        // outlive the calls; on failure the child exits without unwinding.
        unsafe {
            let null = std::ptr::null();
            if libc::mount(
                null,
                root.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    proc_src.as_ptr(),
                    proc_dir.as_ptr(),
                    proc_src.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) != 0
            {
                libc::_exit(126);
            }
            libc::execv(program.as_ptr(), argv_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    CHILD.store(pid, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler (it only calls kill()).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            check(
                libc::sigaction(sig, &action, std::ptr::null_mut()),
                "sigaction",
            )?;
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e).context("waitpid");
        }
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Ok(128 + libc::WTERMSIG(status))
    } else {
        Ok(1)
    }
}

/// Parent pid of `pid` from /proc/PID/stat (`pid (comm) state ppid ...`; comm
/// may contain spaces and parentheses).
fn ppid_of(pid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Host pid of the (first) child of `parent`, waiting for it to appear.
pub fn wait_child_of(parent: u32, timeout: Duration) -> Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let entries = std::fs::read_dir("/proc").context("read_dir /proc")?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if ppid_of(name) == Some(parent) {
                if let Ok(pid) = name.parse() {
                    return Ok(pid);
                }
            }
        }
        if !std::path::Path::new(&format!("/proc/{parent}")).exists() {
            bail!("process {parent} exited before its child appeared");
        }
        if Instant::now() > deadline {
            bail!("no child of process {parent} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pid namespace inode of `pid` (`/proc/PID/ns/pid` -> `pid:[N]`).
pub fn pid_namespace_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}
