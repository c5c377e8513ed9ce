//! The defense verdict against real floods: the agent samples a lab's server
//! namespace every [`ROUND`] while one of [`crate::defense_traffic`]'s floods
//! runs; its `synproxy_defense` lines must name the flood's state within two
//! rounds of the onset, hold it while the flood lasts, and return to calm
//! soon after it ends. The judging is pure ([`judge`]), the watching needs a
//! kernel ([`Watch`]).

use crate::line_protocol::{parse_line, FieldValue};
use crate::live_agent::{Launch, LiveAgent};
use crate::netns::Netns;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The agent's interval in these checks.
pub const ROUND: Duration = Duration::from_millis(500);
/// The onset must be named within this many rounds (the one the flood began
/// in and the next).
pub const ONSET_ROUNDS: usize = 2;
/// Calm must be back within this many rounds after the flood's last packet:
/// one that may still hold flood packets, the two of the release, one more.
pub const RELEASE_ROUNDS: usize = 4;

/// One round's verdict of the watched namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub ts_ns: u64,
    pub state: String,
    pub reasons: String,
}

/// The verdict of one flood: `Ok` with a summary, or what went wrong.
pub fn judge(
    rounds: &[Observed],
    onset_ns: u64,
    end_ns: u64,
    expected: &str,
) -> Result<String, String> {
    let shown = || {
        rounds
            .iter()
            .map(|r| format!("{}@{}", r.state, r.ts_ns))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let before: Vec<&Observed> = rounds.iter().filter(|r| r.ts_ns < onset_ns).collect();
    if let Some(r) = before.iter().find(|r| r.state != "calm") {
        return Err(format!(
            "{} before the flood ({}): {}",
            r.state,
            r.reasons,
            shown()
        ));
    }
    let Some(first) = rounds.iter().position(|r| r.ts_ns >= onset_ns) else {
        return Err(format!("no round after the onset: {}", shown()));
    };
    let Some(named) = rounds[first..]
        .iter()
        .take(ONSET_ROUNDS)
        .position(|r| r.state == expected)
    else {
        return Err(format!(
            "{expected} not within {ONSET_ROUNDS} rounds of the onset: {}",
            shown()
        ));
    };
    let named = first + named;
    let during = rounds[named..].iter().take_while(|r| r.ts_ns < end_ns);
    if let Some(r) = during.clone().find(|r| r.state != expected) {
        return Err(format!(
            "{} during the flood ({}): {}",
            r.state,
            r.reasons,
            shown()
        ));
    }
    let Some(after) = rounds.iter().position(|r| r.ts_ns >= end_ns) else {
        return Err(format!("no round after the flood: {}", shown()));
    };
    let Some(calm) = rounds[after..]
        .iter()
        .take(RELEASE_ROUNDS)
        .position(|r| r.state == "calm")
    else {
        return Err(format!(
            "not calm within {RELEASE_ROUNDS} rounds after the flood: {}",
            shown()
        ));
    };
    Ok(format!(
        "{expected} in round {} of the flood ({}), calm {} rounds after it",
        named - first + 1,
        rounds[named].reasons,
        calm + 1
    ))
}

/// Now, in the agent's clock (ns since the Unix epoch).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The agent with `--netns` on the lab's server namespace, in interval mode.
pub struct Watch {
    agent: LiveAgent,
    netns: String,
    pub rounds: Vec<Observed>,
}

impl Watch {
    /// Starts the agent (no eBPF, a 1 s warm-up) and waits until the
    /// namespace is calm.
    pub fn start(agent: &Path, srv: &Netns) -> Result<Self> {
        let args: Vec<String> = [
            "--netns",
            srv.name(),
            "--interval",
            "500ms",
            "--no-ebpf",
            "--verdict-warmup",
            "1s",
            "--log-format",
            "telegraf",
        ]
        .map(String::from)
        .to_vec();
        let agent = LiveAgent::spawn(agent, &args, &Launch::Direct)?;
        let mut watch = Self {
            agent,
            netns: srv.name().to_string(),
            rounds: Vec::new(),
        };
        watch.until("the namespace to be calm after the warm-up", |r| {
            r.state == "calm"
        })?;
        watch.rounds.clear();
        Ok(watch)
    }

    /// Takes the agent's lines so far.
    fn collect(&mut self) -> Result<()> {
        for line in self.agent.take_lines() {
            if !line.starts_with("synproxy_defense,") {
                continue;
            }
            let parsed = parse_line(&line)?;
            if parsed.tags.get("netns") != Some(&self.netns) {
                continue;
            }
            let text = |k: &str| match parsed.fields.get(k) {
                Some(FieldValue::Str(s)) => Ok(s.clone()),
                other => bail!("{k} is {other:?} in {line}"),
            };
            self.rounds.push(Observed {
                ts_ns: parsed
                    .timestamp
                    .and_then(|t| u64::try_from(t).ok())
                    .context("no timestamp")?,
                state: text("state")?,
                reasons: text("reasons")?,
            });
        }
        Ok(())
    }

    /// Polls until a round satisfies `done` (generous: 60 s).
    pub fn until(&mut self, what: &str, done: impl Fn(&Observed) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = self.rounds.len();
            self.collect()?;
            if self.rounds[seen..].iter().any(&done) {
                return Ok(());
            }
            if !self.agent.running() {
                bail!("the agent exited: {:?}", self.agent.stderr_lines());
            }
            if Instant::now() > deadline {
                bail!("timeout waiting for {what}: {:?}", self.rounds);
            }
            std::thread::sleep(ROUND / 5);
        }
    }

    /// Watches until `rounds` more rounds arrived.
    pub fn rounds_more(&mut self, rounds: usize) -> Result<()> {
        let target = self.rounds.len() + rounds;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.rounds.len() < target {
            self.collect()?;
            if Instant::now() > deadline {
                bail!("timeout waiting for {rounds} rounds: {:?}", self.rounds);
            }
            std::thread::sleep(ROUND / 5);
        }
        Ok(())
    }

    /// The agent's log so far.
    pub fn log(&mut self) -> Vec<String> {
        self.agent.stderr_lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn rounds(states: &[&str]) -> Vec<Observed> {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| Observed {
                ts_ns: (i as u64 + 1) * S / 2,
                state: s.to_string(),
                reasons: String::new(),
            })
            .collect()
    }

    // Rounds every 0.5 s; the flood from 1.2 s to 2.7 s.
    const ON: u64 = 1_200_000_000;
    const OFF: u64 = 2_700_000_000;
    const X: &str = "syn_flood_absorbed";

    #[test]
    fn named_in_time_held_and_released_passes() {
        let r = rounds(&["calm", "calm", X, X, X, X, "calm"]);
        let ok = judge(&r, ON, OFF, X).unwrap();
        assert!(
            ok.starts_with("syn_flood_absorbed in round 1 of the flood"),
            "{ok}"
        );
        // Recorded on this machine: named in the flood's first round, the
        // release after three.
        let r = rounds(&["calm", "calm", "calm", X, X, X, X, X, "calm"]);
        assert!(judge(&r, ON, OFF, X).is_ok());
    }

    #[test]
    fn each_failure_says_what() {
        let fail = |states: &[&str]| judge(&rounds(states), ON, OFF, X).unwrap_err();
        assert!(fail(&["calm", X, X, X, "calm"]).contains("before the flood"));
        assert!(fail(&["calm", "calm", "calm", "calm", X, "calm"]).contains("not within 2 rounds"));
        assert!(fail(&["calm", "calm", X, "calm", X, "calm"]).contains("calm during the flood"));
        assert!(fail(&["calm", "calm", X, X, X, X, X, X, X, X]).contains("not calm within 4"));
        assert!(fail(&["calm", "calm"]).contains("no round after the onset"));
        assert!(fail(&["calm", "calm", X, X, X]).contains("no round after the flood"));
        assert!(
            fail(&["calm", "calm", "invalid_ack_flood", "invalid_ack_flood", X])
                .contains("not within")
        );
    }
}
