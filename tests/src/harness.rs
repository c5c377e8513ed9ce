//! What every host test file needs, once: the agent binary built beside the
//! test, and a prerequisite check that skips with a message on a developer's
//! machine but fails under CI=true (a missing tool on CI is a defect, never a
//! silent pass).

use crate::tools::find_program;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// target/<profile>/synproxy-agent, next to the running test's deps/ directory.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let agent = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("synproxy-agent"))
        .unwrap_or_default();
    assert!(
        agent.is_file(),
        "agent binary {} is missing: run `cargo build -p synproxy-user` first",
        agent.display()
    );
    agent
}

/// What a group of tests needs; `check` says whether it is all there.
#[derive(Debug, Default, Clone)]
pub struct Needs {
    /// The tests' name in the message ("host kernel tests").
    pub what: &'static str,
    pub root: bool,
    /// Programs looked up in PATH.
    pub programs: &'static [&'static str],
    /// The kernel's SYNPROXY counters (`/proc/net/stat/synproxy`).
    pub synproxy: bool,
}

impl Needs {
    /// `Ok(true)`: all there. `Ok(false)`: something is missing and this is
    /// not CI (skip, the message printed). `Err`: missing under CI=true.
    pub fn check(&self) -> Result<bool, String> {
        let mut missing = Vec::new();
        // SAFETY: geteuid() has no preconditions and cannot fail.
        if self.root && unsafe { libc::geteuid() } != 0 {
            missing.push("root".to_string());
        }
        for prog in self.programs {
            if find_program(Path::new(prog)).is_none() {
                missing.push(format!("`{prog}` in PATH"));
            }
        }
        if self.synproxy && !Path::new("/proc/net/stat/synproxy").exists() {
            missing.push("/proc/net/stat/synproxy (SYNPROXY support in the kernel)".to_string());
        }
        if missing.is_empty() {
            return Ok(true);
        }
        skip_or_fail(&format!("{} need: {}", self.what, missing.join(", ")))
    }
}

/// The one rule for a missing prerequisite: a failure under CI=true, a skip
/// with the message elsewhere.
pub fn skip_or_fail(msg: &str) -> Result<bool, String> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        Err(format!("{msg} (CI=true, so this is a failure)"))
    } else {
        eprintln!("SKIPPED: {msg}");
        Ok(false)
    }
}

/// Polls `check` every 200 ms until it returns `Ok`, failing with its last
/// error after `timeout`; `what` names the condition.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => {
                panic!("timeout waiting for {what} ({timeout:?}): {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `require!(check)`: returns from the test on `Ok(false)` (skip), panics on
/// `Err` (CI), goes on on `Ok(true)`.
#[macro_export]
macro_rules! require {
    ($check:expr) => {
        match $check {
            Ok(true) => {}
            Ok(false) => return,
            Err(msg) => panic!("{msg}"),
        }
    };
}
