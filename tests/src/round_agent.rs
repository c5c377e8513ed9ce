//! A long-running agent in `--signal stdin` mode without eBPF: one round of
//! line protocol for each newline written to its stdin, ended by closing
//! its stdin.

use crate::child::pump;
use crate::harness::agent_binary;
use std::ffi::OsStr;
use std::io::Write;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Generous: the machine may be twice as slow and busy.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

pub struct RoundAgent {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl RoundAgent {
    /// The agent with `args` after `--signal stdin --no-ebpf`, its stderr
    /// going to `stderr`.
    pub fn start<I, S>(args: I, stderr: Stdio) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(agent_binary())
            .args(["--signal", "stdin", "--no-ebpf"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the agent: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines: pump(stdout),
        }
    }

    /// Asks for one round and returns its `synproxy` lines, unparsed (all
    /// share one timestamp; the other sources' lines are left out).
    pub fn round(&mut self) -> Vec<String> {
        let stdin = self.stdin.as_mut().expect("agent stdin");
        stdin
            .write_all(b"\n")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot ask the agent for a round: {e}"));
        let first = self
            .lines
            .recv_timeout(ROUND_TIMEOUT)
            .unwrap_or_else(|e| panic!("waiting for the agent's round: {e}"));
        let stamp = |l: &str| l.rsplit(' ').next().unwrap_or_default().to_string();
        let ts = stamp(&first);
        let mut raw = vec![first];
        // The round is one write: its other lines are already in the pipe.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            assert_eq!(stamp(&line), ts, "a line of another round: {line}");
            raw.push(line);
        }
        raw.retain(|l| l.split([',', ' ']).next() == Some("synproxy"));
        raw
    }

    /// Closes its stdin, so that it ends, and waits for it.
    pub fn finish(&mut self) -> std::io::Result<ExitStatus> {
        self.stdin = None;
        self.child.wait()
    }
}

impl Drop for RoundAgent {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
