//! Child processes the host tests start: their output read line by line on a
//! thread of its own (a test polls a channel and never blocks on a pipe), a
//! stop that lets them exit cleanly first, a run to the end within a
//! deadline, and a copy of the agent that an unprivileged user can run.

use crate::harness::agent_binary;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The lines of `r` (a child's stdout or stderr) on a channel, until EOF, a
/// read error or the receiver is dropped.
pub fn pump<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// SIGTERM, up to 10 s to exit, then SIGKILL; reaped either way.
pub fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `cmd` (stdin empty, stdout and stderr captured) to its end; kills it
/// and panics when it runs longer than `timeout`. `what` names it in panics.
pub fn output_with_timeout(mut cmd: Command, what: &str, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("timed out after {timeout:?} waiting for {what} to exit");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("output of {what}: {e}"))
}

/// A copy of the agent that uid 65534 can run (the build tree may not be
/// readable to it), in a directory of its own, removed on drop.
pub struct AgentCopy {
    dir: PathBuf,
    pub agent: PathBuf,
}

impl AgentCopy {
    /// `prefix` names the directory in the temporary directory.
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            crate::netns::next_seq()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let agent = dir.join("synproxy-agent");
        std::fs::copy(agent_binary(), &agent)
            .unwrap_or_else(|e| panic!("copying the agent to {}: {e}", agent.display()));
        for path in [&dir, &agent] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        }
        Self { dir, agent }
    }
}

impl Drop for AgentCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
