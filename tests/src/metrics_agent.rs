//! The agent serving `/metrics` on a free loopback port, for the endpoint
//! tests: started with extra flags, its address read from its log, its log
//! kept for assertions, stopped (SIGTERM) when dropped.

use crate::harness::agent_binary;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct MetricsAgent {
    child: Child,
    /// `IP:PORT` of the endpoint.
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// How a start went: serving, or exited with this code and log.
pub enum Started {
    Serving(MetricsAgent),
    Exited(Option<i32>, String),
}

impl MetricsAgent {
    /// Starts `synproxy-agent ARGS --prometheus-listen 127.0.0.1:0` and waits
    /// (60 s at most) until it logs its address or exits.
    pub fn start(args: &[&str]) -> Started {
        let mut child = Command::new(agent_binary())
            .args(args)
            .args(["--prometheus-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the agent: {e}"));
        let Some(stderr) = child.stderr.take() else {
            panic!("the agent's stderr is not piped");
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("agent: {line}");
                kept.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.clone());
                let _ = tx.send(line);
            }
        });
        match wait_for_addr(&rx, &mut child) {
            Some(addr) => Started::Serving(Self { child, addr, log }),
            None => {
                let status = child.wait().ok().and_then(|s| s.code());
                // The log thread ends with the pipe.
                let deadline = Instant::now() + Duration::from_secs(5);
                while rx.recv_timeout(Duration::from_millis(100)).is_ok()
                    && Instant::now() < deadline
                {}
                let text = log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                Started::Exited(status, text)
            }
        }
    }

    /// [`start`](Self::start) that must serve.
    pub fn serving(args: &[&str]) -> Self {
        match Self::start(args) {
            Started::Serving(agent) => agent,
            Started::Exited(code, log) => panic!("the agent exited ({code:?}):\n{log}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }

    /// Open sockets of the agent (its listener included).
    pub fn sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .filter(|t| t.to_string_lossy().starts_with("socket:"))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn wait_for_addr(rx: &Receiver<String>, child: &mut Child) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                if let Some((_, rest)) = line.split_once("Prometheus metrics on http") {
                    let rest = rest.trim_start_matches('s').trim_start_matches("://");
                    return Some(rest.trim_end_matches("/metrics").to_string());
                }
            }
            Err(_) if matches!(child.try_wait(), Ok(Some(_))) => return None,
            Err(_) if left.is_zero() => {
                let _ = child.kill();
                panic!("timeout waiting for the agent to log its metrics address (60s)");
            }
            Err(_) => {}
        }
    }
}

impl Drop for MetricsAgent {
    fn drop(&mut self) {
        crate::child::stop(&mut self.child);
    }
}
