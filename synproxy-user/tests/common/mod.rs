//! What the agent's CLI test files share: the agent binary on /proc only,
//! and a child's output read line by line on a thread of its own.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;

pub const AGENT: &str = env!("CARGO_BIN_EXE_synproxy-agent");

/// The agent reading /proc only (the eBPF side has its own tests), its
/// stdin empty and its outputs piped: its stderr then holds exactly what the
/// /proc path logs.
pub fn agent(args: &[&str]) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.args(args)
        .env_remove("HOST_PROC")
        .env("SYNPROXY_AGENT_NO_EBPF", "true")
        // The fake proc trees hold the SYNPROXY file only, and the tests
        // count its lines.
        .env("SYNPROXY_AGENT_NO_NSTAT", "true")
        .env("SYNPROXY_AGENT_NO_CONNTRACK", "true")
        .env("SYNPROXY_AGENT_NO_VERDICT", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The lines of `r` (a child's stdout or stderr) on a channel, until EOF, a
/// read error or the receiver is dropped.
pub fn lines_of<R: Read + Send + 'static>(r: R) -> mpsc::Receiver<String> {
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
