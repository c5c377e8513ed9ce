//! What the agent's `synproxy_attack` lines say, and the pure rules a
//! detection scenario is judged by: no event while traffic is benign, a
//! start soon after a flood's onset naming the flood's port (and, with
//! eBPF, its sources), one end soon after the flood stops, the same event
//! (id) across a restart.

use crate::line_protocol::{FieldValue, Line};
use anyhow::{bail, Context, Result};

/// One `synproxy_attack` line.
#[derive(Clone, Debug, PartialEq)]
pub struct AttackLine {
    pub netns: String,
    pub kind: String,
    /// `all` or the port.
    pub port: String,
    pub phase: String,
    pub id: String,
    pub ts_ns: u64,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub events: u64,
    pub rate: f64,
    pub threshold: f64,
    pub top_sources: String,
    pub top_ports: String,
}

impl AttackLine {
    pub fn parse(line: &Line) -> Result<Self> {
        if line.measurement != "synproxy_attack" {
            bail!("not an attack line: {}", line.measurement);
        }
        let tag = |k: &str| line.tags.get(k).cloned().unwrap_or_default();
        let text = |k: &str| match line.fields.get(k) {
            Some(FieldValue::Str(s)) => Ok(s.clone()),
            other => bail!("{k} is {other:?}"),
        };
        let float = |k: &str| match line.fields.get(k) {
            Some(FieldValue::Float(v)) => Ok(*v),
            Some(FieldValue::Int(v)) => Ok(*v as f64),
            other => bail!("{k} is {other:?}"),
        };
        Ok(Self {
            netns: tag("netns"),
            kind: tag("kind"),
            port: tag("port"),
            phase: tag("phase"),
            id: text("id")?,
            ts_ns: line
                .timestamp
                .and_then(|t| u64::try_from(t).ok())
                .context("no timestamp")?,
            start_ns: line.counter("start")?,
            end_ns: line.counter("end").ok(),
            events: line.counter("events")?,
            rate: float("rate")?,
            threshold: float("threshold")?,
            top_sources: text("top_sources")?,
            top_ports: text("top_ports")?,
        })
    }

    fn brief(&self) -> String {
        format!(
            "{} {}/{} port {} @{} rate {:.0} (thr {:.0})",
            self.phase, self.netns, self.kind, self.port, self.ts_ns, self.rate, self.threshold
        )
    }
}

/// What a flood must produce: its kind and port (`all` without per-port
/// counting), the limits on the delays, and the sources expected among the
/// top ones (empty: not checked).
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    pub kind: &'a str,
    pub port: &'a str,
    /// From the onset to the start line's timestamp.
    pub start_within_ns: u64,
    /// From the flood's last packet to the end line's timestamp.
    pub end_within_ns: u64,
    pub sources: &'a [String],
}

/// The one attack of `lines` (of one namespace) matching `expect` between
/// `onset_ns` and `stop_ns` (the flood's first and last packet): `Ok` with
/// (start delay, end delay, summary) or what is wrong.
pub fn judge_flood(
    lines: &[AttackLine],
    onset_ns: u64,
    stop_ns: u64,
    expect: &Expect<'_>,
) -> Result<(u64, u64, String), String> {
    let shown = || {
        lines
            .iter()
            .map(AttackLine::brief)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let of_subject = |l: &&AttackLine| l.kind == expect.kind && l.port == expect.port;
    let starts: Vec<&AttackLine> = lines
        .iter()
        .filter(of_subject)
        .filter(|l| l.phase == "start")
        .collect();
    let [start] = starts.as_slice() else {
        return Err(format!(
            "{} start lines for {} port {} (want 1): {}",
            starts.len(),
            expect.kind,
            expect.port,
            shown()
        ));
    };
    if start.ts_ns < onset_ns {
        return Err(format!("started before the flood's onset: {}", shown()));
    }
    let start_delay = start.ts_ns - onset_ns;
    if start_delay > expect.start_within_ns {
        return Err(format!(
            "start {:.2}s after the onset (limit {:.2}s): {}",
            start_delay as f64 / 1e9,
            expect.start_within_ns as f64 / 1e9,
            shown()
        ));
    }
    for want in expect.sources {
        if !start
            .top_sources
            .split(',')
            .any(|s| s.split('=').next() == Some(want.as_str()))
        {
            return Err(format!(
                "source {want} not among the start's top sources {:?}",
                start.top_sources
            ));
        }
    }
    let ends: Vec<&AttackLine> = lines
        .iter()
        .filter(|l| l.id == start.id && l.phase == "end")
        .collect();
    let [end] = ends.as_slice() else {
        return Err(format!(
            "{} end lines for {} (want 1): {}",
            ends.len(),
            start.id,
            shown()
        ));
    };
    if end.ts_ns < stop_ns {
        return Err(format!("ended before the flood stopped: {}", shown()));
    }
    let end_delay = end.ts_ns - stop_ns;
    if end_delay > expect.end_within_ns {
        return Err(format!(
            "end {:.2}s after the flood stopped (limit {:.2}s): {}",
            end_delay as f64 / 1e9,
            expect.end_within_ns as f64 / 1e9,
            shown()
        ));
    }
    Ok((
        start_delay,
        end_delay,
        format!(
            "{} port {}: start {:.2}s after onset, end {:.2}s after the flood, {} events, top sources {}",
            expect.kind,
            expect.port,
            start_delay as f64 / 1e9,
            end_delay as f64 / 1e9,
            end.events,
            start.top_sources
        ),
    ))
}

/// No line at all (benign traffic).
pub fn judge_quiet(lines: &[AttackLine]) -> Result<(), String> {
    match lines.first() {
        None => Ok(()),
        Some(_) => Err(format!(
            "attack lines during benign traffic: {}",
            lines
                .iter()
                .map(AttackLine::brief)
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// Across a restart: the second agent goes on with the first's event (same
/// id, no start line of its own) and ends it.
pub fn judge_restart(first: &[AttackLine], second: &[AttackLine]) -> Result<String, String> {
    let Some(start) = first.iter().find(|l| l.phase == "start") else {
        return Err("the first agent reported no start".into());
    };
    if let Some(again) = second.iter().find(|l| l.phase == "start") {
        return Err(format!(
            "the restarted agent started again: {}",
            again.brief()
        ));
    }
    let Some(ongoing) = second
        .iter()
        .find(|l| l.id == start.id && l.phase == "ongoing")
    else {
        return Err(format!(
            "the restarted agent did not go on with {}: {:?}",
            start.id,
            second.iter().map(AttackLine::brief).collect::<Vec<_>>()
        ));
    };
    let Some(end) = second.iter().find(|l| l.id == start.id && l.phase == "end") else {
        return Err(format!("the restarted agent did not end {}", start.id));
    };
    if end.events < ongoing.events {
        return Err(format!(
            "events went backwards: {} then {}",
            ongoing.events, end.events
        ));
    }
    Ok(format!(
        "{} kept across the restart (start {}, {} events at the end)",
        start.id, start.start_ns, end.events
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line_protocol::parse_line;

    const S: u64 = 1_000_000_000;

    fn line(phase: &str, port: &str, ts: u64, extra: &str) -> AttackLine {
        let text = format!(
            "synproxy_attack,kind=syn_flood,netns=srv,phase={phase},port={port} baseline=20,duration=1,events=5000i,id=\"srv/syn_flood/{port}/{}\",peak_rate=9000,rate=9000,start={}i,threshold=100{extra},top_ports=\"\",top_sources=\"100.64.0.1=400,100.64.0.2=300\" {ts}",
            10 * S,
            10 * S
        );
        AttackLine::parse(&parse_line(&text).unwrap()).unwrap()
    }

    fn expect(port: &str) -> Expect<'_> {
        Expect {
            kind: "syn_flood",
            port,
            start_within_ns: S,
            end_within_ns: 3 * S,
            sources: &[],
        }
    }

    #[test]
    fn a_flood_started_and_ended_in_time_passes() {
        let lines = [
            line("start", "80", 10 * S + S / 2, ""),
            line("ongoing", "80", 11 * S, ""),
            line("end", "80", 14 * S, &format!(",end={}i", 13 * S)),
        ];
        let (start, end, _) = judge_flood(&lines, 10 * S, 12 * S, &expect("80")).unwrap();
        assert_eq!((start, end), (S / 2, 2 * S));
        let sources = ["100.64.0.2".to_string()];
        let with_sources = Expect {
            sources: &sources,
            ..expect("80")
        };
        assert!(judge_flood(&lines, 10 * S, 12 * S, &with_sources).is_ok());
    }

    #[test]
    fn late_missing_or_wrong_port_events_fail() {
        let late = [
            line("start", "80", 12 * S, ""),
            line("end", "80", 14 * S, ""),
        ];
        let e = judge_flood(&late, 10 * S, 12 * S, &expect("80")).unwrap_err();
        assert!(e.contains("start 2.00s after the onset"), "{e}");
        let no_end = [line("start", "80", 10 * S + 1, "")];
        assert!(judge_flood(&no_end, 10 * S, 12 * S, &expect("80"))
            .unwrap_err()
            .contains("0 end lines"));
        assert!(judge_flood(&no_end, 10 * S, 12 * S, &expect("443"))
            .unwrap_err()
            .contains("0 start lines"));
        let sources = ["198.51.100.9".to_string()];
        let e = judge_flood(
            &[
                line("start", "80", 10 * S + 1, ""),
                line("end", "80", 13 * S, ""),
            ],
            10 * S,
            12 * S,
            &Expect {
                sources: &sources,
                ..expect("80")
            },
        )
        .unwrap_err();
        assert!(e.contains("198.51.100.9"), "{e}");
        assert!(judge_quiet(&no_end).is_err());
        assert!(judge_quiet(&[]).is_ok());
    }

    #[test]
    fn a_restart_must_go_on_with_the_same_event() {
        let first = [line("start", "all", 10 * S + 1, "")];
        let second = [
            line("ongoing", "all", 12 * S, ""),
            line("end", "all", 15 * S, ""),
        ];
        assert!(judge_restart(&first, &second).is_ok());
        let restarted = [line("start", "all", 12 * S, "")];
        assert!(judge_restart(&first, &restarted)
            .unwrap_err()
            .contains("started again"));
    }
}
