//! The agent in interval mode on one namespace, its `synproxy_attack` lines
//! collected as they come ([`crate::attack_judge::AttackLine`]), and every
//! round's `synproxy` line counted, so a scenario can wait for rounds,
//! events or a quiet spell.

use crate::attack_judge::AttackLine;
use crate::line_protocol::parse_line;
use crate::live_agent::{Launch, LiveAgent};
use anyhow::{bail, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// Dropped (a scenario that failed half-way included), the agent is stopped
/// with SIGTERM, so that it removes its kprobe events for the checks after.
pub struct AttackWatch {
    pub agent: LiveAgent,
    netns: String,
    pub lines: Vec<AttackLine>,
    /// `synproxy` lines of the namespace seen.
    pub rounds: usize,
}

impl AttackWatch {
    /// `agent --netns NETNS --log-format telegraf ARGS`, waiting for its first
    /// round.
    pub fn start(agent: &Path, netns: &str, args: &[&str]) -> Result<Self> {
        let mut all: Vec<String> = ["--netns", netns, "--log-format", "telegraf"]
            .map(String::from)
            .to_vec();
        all.extend(args.iter().map(|a| a.to_string()));
        let agent = LiveAgent::spawn(agent, &all, &Launch::Direct)?;
        let mut watch = Self {
            agent,
            netns: netns.to_string(),
            lines: Vec::new(),
            rounds: 0,
        };
        watch.until("the first round", Duration::from_secs(60), |w| w.rounds > 0)?;
        Ok(watch)
    }

    fn collect(&mut self) -> Result<()> {
        for line in self.agent.take_lines() {
            let is_round = line.starts_with("synproxy,");
            if !is_round && !line.starts_with("synproxy_attack,") {
                continue;
            }
            let parsed = parse_line(&line)?;
            if parsed.tags.get("netns") != Some(&self.netns) {
                continue;
            }
            if is_round {
                self.rounds += 1;
            } else {
                self.lines.push(AttackLine::parse(&parsed)?);
            }
        }
        Ok(())
    }

    /// Polls (every 50 ms) until `done`, failing after `timeout` or if the
    /// agent exits.
    pub fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.collect()?;
            if done(self) {
                return Ok(());
            }
            if !self.agent.running() {
                bail!(
                    "the agent exited while waiting for {what}: {:?}",
                    self.agent.stderr_lines()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout ({timeout:?}) waiting for {what}; attack lines: {:?}; log: {:?}",
                    self.lines,
                    self.agent.stderr_lines()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `n` more rounds.
    pub fn rounds_more(&mut self, n: usize) -> Result<()> {
        let target = self.rounds + n;
        self.until(&format!("{n} rounds"), Duration::from_secs(60), |w| {
            w.rounds >= target
        })
    }

    /// Stops the agent with SIGTERM (it detaches its probes and writes its
    /// state) and waits for it to exit (20 s at most).
    pub fn terminate(&mut self) -> Result<()> {
        if !self.agent.running() {
            return Ok(());
        }
        self.agent.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.agent.running() {
            if Instant::now() > deadline {
                bail!("the agent did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits for a line of `phase`.
    pub fn phase(&mut self, phase: &str, timeout: Duration) -> Result<()> {
        self.until(&format!("an attack {phase} line"), timeout, |w| {
            w.lines.iter().any(|l| l.phase == phase)
        })
    }
}

impl Drop for AttackWatch {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
