//! Running the agent under test (`synproxy-agent --once --no-ebpf`) and reading its
//! one line of line protocol.

use crate::line_protocol::{self, Line};
use crate::netns::Netns;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

fn run_with_timeout(cmd: &mut Command, what: &str) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let deadline = Instant::now() + AGENT_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            return child
                .wait_with_output()
                .with_context(|| format!("collecting output of {what}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not exit within {AGENT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn parse_output(out: &Output, what: &str) -> Result<Line> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // One `synproxy` line; the round's `nstat` and `conntrack` lines are
    // another source's.
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| l.split([',', ' ']).next() == Some("synproxy"))
        .collect();
    let [line] = lines.as_slice() else {
        bail!(
            "{what} printed {} synproxy lines, expected 1: {stdout:?}",
            lines.len()
        );
    };
    line_protocol::parse_line(line).with_context(|| format!("output of {what}"))
}

fn describe(agent: &Path, args: &[String]) -> String {
    format!("`{} {}`", agent.display(), args.join(" "))
}

/// Run the agent as a child of a thread inside `netns` (children inherit the
/// forking thread's netns), so it reads that netns as its own.
pub fn run_inside(netns: &Netns, agent: &Path, extra: &[String]) -> Result<Line> {
    let mut args = vec!["--once".to_string(), "--no-ebpf".to_string()];
    args.extend_from_slice(extra);
    let what = format!("{} inside netns {}", describe(agent, &args), netns.name());
    let out = netns.run(|| run_with_timeout(Command::new(agent).args(&args), &what))?;
    parse_output(&out, &what)
}

/// Run the agent from the caller's netns with `--netns NAME`.
pub fn run_with_netns_flag(netns: &Netns, agent: &Path, extra: &[String]) -> Result<Line> {
    let mut args = vec![
        "--once".to_string(),
        "--no-ebpf".to_string(),
        "--netns".to_string(),
        netns.name().to_string(),
    ];
    args.extend_from_slice(extra);
    let what = describe(agent, &args);
    let out = run_with_timeout(Command::new(agent).args(&args), &what)?;
    let line = parse_output(&out, &what)?;
    match line.tags.get("netns") {
        Some(n) if n == netns.name() => Ok(line),
        other => bail!("{what}: tag netns={other:?}, expected {:?}", netns.name()),
    }
}
