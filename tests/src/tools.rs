//! Paths of the external tools and helpers to run them with useful errors.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// External binaries. In a VM guest busybox's `ip` applet has no netns support, so
/// every path is configurable; defaults are bare names resolved through PATH.
#[derive(Clone, Debug)]
pub struct Tools {
    pub ip: PathBuf,
    pub iptables: PathBuf,
    pub ip6tables: PathBuf,
    pub nft: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            ip: "ip".into(),
            iptables: "iptables".into(),
            ip6tables: "ip6tables".into(),
            nft: "nft".into(),
        }
    }
}

/// Resolve a bare program name through PATH (a path with a `/` is checked as is).
pub fn find_program(prog: &Path) -> Option<PathBuf> {
    if prog.components().count() > 1 {
        return prog.is_file().then(|| prog.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(prog))
        .find(|candidate| candidate.is_file())
}

fn describe(prog: &Path, args: &[&str]) -> String {
    let mut s = prog.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Run a command (in the calling thread's netns), failing with its stderr.
pub fn run(prog: &Path, args: &[&str]) -> Result<()> {
    run_with_stdin(prog, args, None)
}

/// Like [`run`], feeding `stdin` to the command (used for `nft -f -`).
pub fn run_with_stdin(prog: &Path, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let what = describe(prog, args);
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing stdin of `{what}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{what}`"))?;
    check_status(&out, &what)
}

/// An error naming `what` and its stderr unless the command succeeded.
pub fn check_status(out: &std::process::Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Kernel release, for the RESULT lines.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
