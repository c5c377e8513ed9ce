//! The sustained-flood check's verdict and RESULT line from a recorded run
//! (the agent's stdout, /proc before and after, what was driven, how the
//! agent stopped); pure, so its pass and fail cases are unit-tested on the
//! host. See `sustained` for what the run does.

use crate::check::Check;
use crate::line_protocol::{FieldValue, Line};
use crate::live_agent;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::time::Duration;
use synproxy_common::{Counter, COUNTER_COUNT};

/// Counters in [`Counter::ALL`] order.
pub type Counts = [u64; COUNTER_COUNT];

pub fn delta(after: &Counts, before: &Counts) -> Counts {
    let mut d = [0; COUNTER_COUNT];
    for i in 0..COUNTER_COUNT {
        d[i] = after[i].saturating_sub(before[i]);
    }
    d
}

pub fn fmt_counts(c: &Counts) -> String {
    c.iter().map(u64::to_string).collect::<Vec<_>>().join("/")
}

/// What one sustained run recorded.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The agent's stdout, every line.
    pub lines: Vec<String>,
    pub ebpf: bool,
    /// The server namespace's `netns` tag.
    pub label: String,
    /// The server's /proc totals before and after the traffic.
    pub before: Counts,
    pub after: Counts,
    /// SYNs and bad ACKs driven per stream (xt4, xt6, nft4, nft6), and for how long.
    pub syn: [u64; 4],
    pub ack: [u64; 4],
    pub send_secs: f64,
    /// How the agent stopped on SIGTERM.
    pub exit_ok: bool,
    pub exit_code: i32,
    pub exit_elapsed: Duration,
    pub stderr: Vec<String>,
    /// What the agent left in the kernel.
    pub left: Vec<String>,
    /// Namespaces besides the server.
    pub others: u32,
    /// The run's timing, for the notes.
    pub timing: String,
}

/// The server namespace in one round.
#[derive(Debug)]
pub struct SrvRound {
    index: usize,
    timestamp: i64,
    totals: Counts,
    /// eBPF events of the round (both families), None without eBPF lines.
    ebpf: Option<Counts>,
    ebpf_v4: Counts,
    ebpf_v6: Counts,
    status: String,
}

pub fn srv_round(index: usize, round: &[Line], label: &str) -> Result<Option<SrvRound>> {
    let of_srv = |l: &&Line| l.tags.get("netns").map(String::as_str) == Some(label);
    let Some(proc_line) = round
        .iter()
        .filter(of_srv)
        .find(|l| l.measurement == "synproxy")
    else {
        return Ok(None);
    };
    let mut totals = [0; COUNTER_COUNT];
    for c in Counter::ALL {
        totals[c.index()] = proc_line.counter(c.name())?;
    }
    let ebpf_lines: Vec<&Line> = round
        .iter()
        .filter(of_srv)
        .filter(|l| l.measurement == "synproxy_ebpf")
        .collect();
    let mut r = SrvRound {
        index,
        timestamp: proc_line.timestamp.unwrap_or(0),
        totals,
        ebpf: None,
        ebpf_v4: [0; COUNTER_COUNT],
        ebpf_v6: [0; COUNTER_COUNT],
        status: String::new(),
    };
    if ebpf_lines.is_empty() {
        return Ok(Some(r));
    }
    let mut sum = [0; COUNTER_COUNT];
    let mut statuses = Vec::new();
    for line in &ebpf_lines {
        let family = line.tags.get("family").map(String::as_str);
        for c in Counter::ALL {
            let v = line.counter(c.name())?;
            sum[c.index()] += v;
            match family {
                Some("ipv4") => r.ebpf_v4[c.index()] += v,
                Some("ipv6") => r.ebpf_v6[c.index()] += v,
                _ => {}
            }
        }
        match line.fields.get("reconcile") {
            Some(FieldValue::Str(s)) => statuses.push(s.clone()),
            other => bail!("reconcile field {other:?} in {line:?}"),
        }
    }
    statuses.dedup();
    r.status = if ebpf_lines.len() != 2 {
        format!("lines:{}", ebpf_lines.len())
    } else {
        statuses.join("+")
    };
    r.ebpf = Some(sum);
    Ok(Some(r))
}

/// Judges every round for the server namespace; `probe_type_fields` gives
/// the probe-type fields and whether the type seen is the expected one.
pub fn judge(
    head: &str,
    rec: &Recorded,
    probe_type_fields: &dyn Fn(Option<&str>) -> (String, bool),
) -> Result<Check> {
    let ebpf = rec.ebpf;
    let label = rec.label.as_str();
    let mut rounds = live_agent::split_rounds(&rec.lines, ebpf)?;
    let mixed_ts = live_agent::mixed_timestamps(&rounds);
    if ebpf
        && rounds
            .last()
            .is_some_and(|r| !r.iter().any(|l| l.measurement == "synproxy_ebpf_probes"))
    {
        rounds.pop(); // cut short by SIGTERM
    }
    let namespaces = rounds
        .iter()
        .rev()
        .find(|r| !r.is_empty())
        .map(|r| r.iter().filter(|l| l.measurement == "synproxy").count())
        .unwrap_or(0);
    let mut srv_rounds = Vec::new();
    let mut absent = 0usize;
    let mut seen_ebpf = false;
    for (i, round) in rounds.iter().enumerate() {
        match srv_round(i, round, label)? {
            Some(r) => {
                if ebpf && r.ebpf.is_none() && seen_ebpf {
                    absent += 1;
                }
                seen_ebpf |= r.ebpf.is_some();
                srv_rounds.push(r);
            }
            None if seen_ebpf || !ebpf => absent += 1,
            None => {}
        }
    }
    let mut probe_misses = 0u64;
    // Program runs the kernel skipped since load (all programs, all namespaces).
    let mut recursion_misses = 0u64;
    let mut map_bytes = 0u64;
    // Which fields of the probes line carry the misses, for the report.
    let mut miss_detail: Vec<String> = Vec::new();
    let mut last_fields: BTreeMap<String, u64> = BTreeMap::new();
    for round in &rounds {
        if let Some(line) = round
            .iter()
            .find(|l| l.measurement == "synproxy_ebpf_probes")
        {
            let misses = line.counter("probe_misses")?;
            probe_misses += misses;
            map_bytes = line.counter("map_bytes")?;
            recursion_misses = line.counter("recursion_misses")?;
            let fields: BTreeMap<String, u64> = line
                .fields
                .keys()
                .filter(|k| k.ends_with("_missed") || !k.ends_with("_hits"))
                .filter_map(|k| Some((k.clone(), line.counter(k).ok()?)))
                .collect();
            let moved: Vec<(&String, &u64)> = fields
                .iter()
                .filter(|(k, v)| {
                    k.as_str() != "probe_misses"
                        && k.as_str() != "map_bytes"
                        && **v != last_fields.get(*k).copied().unwrap_or(0)
                })
                .collect();
            if misses > 0 && miss_detail.len() < 5 {
                let moved: Vec<String> = moved.iter().map(|(k, v)| format!("{k}={v}")).collect();
                miss_detail.push(format!(
                    "probes line with probe_misses={misses}: changed since the previous round: {}",
                    moved.join(",")
                ));
            }
            last_fields = fields;
        }
    }

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut busy = 0usize;
    let mut ebpf_sum = [0u64; COUNTER_COUNT];
    let (mut ebpf_v4, mut ebpf_v6) = ([0u64; COUNTER_COUNT], [0u64; COUNTER_COUNT]);
    let mut non_exact = Vec::new();
    let mut prev: Option<&SrvRound> = None;
    let first_ts = srv_rounds.first().map_or(0, |r| r.timestamp);
    for r in &srv_rounds {
        let moved = prev.is_some_and(|p| p.totals != r.totals);
        let proc_step = prev.map_or([0; COUNTER_COUNT], |p| delta(&r.totals, &p.totals));
        prev = Some(r);
        let Some(events) = r.ebpf else {
            if moved {
                busy += 1;
                *by_status.entry("no-ebpf".into()).or_default() += 1;
            }
            continue;
        };
        for i in 0..COUNTER_COUNT {
            ebpf_sum[i] += events[i];
            ebpf_v4[i] += r.ebpf_v4[i];
            ebpf_v6[i] += r.ebpf_v6[i];
        }
        if moved || events.iter().any(|&v| v != 0) {
            busy += 1;
            *by_status.entry(r.status.clone()).or_default() += 1;
            if r.status != "exact" && non_exact.len() < 8 {
                non_exact.push(format!(
                    "round {} at +{:.2}s: reconcile={} proc step {} ebpf {}",
                    r.index,
                    (r.timestamp - first_ts) as f64 / 1e9,
                    r.status,
                    fmt_counts(&proc_step),
                    fmt_counts(&events)
                ));
            }
        }
    }
    let count = |s: &str| by_status.get(s).copied().unwrap_or(0);
    let known = ["exact", "lagging", "missed", "proc-only"];
    let other: usize = by_status
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(_, v)| v)
        .sum();

    let proc_delta = delta(&rec.after, &rec.before);
    let syn_i = Counter::SynReceived.index();
    let inv_i = Counter::CookieInvalid.index();
    let mut want = [0u64; COUNTER_COUNT];
    want[syn_i] = rec.syn.iter().sum();
    want[inv_i] = rec.ack.iter().sum();
    // Per family: xt and nft streams of one family share its eBPF lines.
    let want_v4 = (rec.syn[0] + rec.syn[2], rec.ack[0] + rec.ack[2]);
    let want_v6 = (rec.syn[1] + rec.syn[3], rec.ack[1] + rec.ack[3]);
    let agent_last = srv_rounds.last().map(|r| r.totals);

    let mut notes = Vec::new();
    let mut pass = true;
    let seen_type = rounds
        .iter()
        .rev()
        .find_map(|r| crate::live_agent::probe_type(r));
    let (probe_fields, probe_type_ok) = probe_type_fields(seen_type.as_deref());
    if ebpf && !probe_type_ok {
        pass = false;
        notes.push(format!("probe type:{probe_fields}"));
    }
    if proc_delta != want {
        pass = false;
        notes.push(format!(
            "/proc delta {} != driven {} (counters {}): packets lost before SYNPROXY?",
            fmt_counts(&proc_delta),
            fmt_counts(&want),
            Counter::ALL.map(|c| c.name()).join("/")
        ));
    }
    if rec.send_secs < 5.0 {
        pass = false;
        notes.push(format!(
            "traffic ran {:.2}s, the check needs at least 5 s",
            rec.send_secs
        ));
    }
    if agent_last != Some(rec.after) {
        pass = false;
        notes.push(format!(
            "the agent's last srv totals {} != /proc {}",
            agent_last.map_or("none".into(), |t| fmt_counts(&t)),
            fmt_counts(&rec.after)
        ));
    }
    if absent > 0 {
        pass = false;
        notes.push(format!(
            "{absent} rounds without the srv namespace's lines ({})",
            rec.label
        ));
    }
    if srv_rounds.is_empty() || busy == 0 {
        pass = false;
        notes.push("no busy round for the server namespace".into());
    }
    if ebpf {
        if count("exact") != busy {
            pass = false;
            notes.push(format!(
                "{} of {busy} busy rounds not exact: {by_status:?}",
                busy - count("exact")
            ));
            notes.extend(non_exact);
        }
        if probe_misses != 0 {
            pass = false;
            notes.push(format!(
                "probe misses: {probe_misses} on the probes lines (recursion misses since load: {recursion_misses})"
            ));
            notes.append(&mut miss_detail);
        }
        if ebpf_sum != proc_delta {
            pass = false;
            notes.push(format!(
                "eBPF sum over the run {} != /proc delta {}",
                fmt_counts(&ebpf_sum),
                fmt_counts(&proc_delta)
            ));
        }
        let got_v4 = (ebpf_v4[syn_i], ebpf_v4[inv_i]);
        let got_v6 = (ebpf_v6[syn_i], ebpf_v6[inv_i]);
        if got_v4 != want_v4 || got_v6 != want_v6 {
            pass = false;
            notes.push(format!(
                "eBPF per family syn/inv ipv4 {got_v4:?} ipv6 {got_v6:?}, driven ipv4 {want_v4:?} ipv6 {want_v6:?}"
            ));
        }
    }
    if !rec.exit_ok {
        pass = false;
        notes.push(format!(
            "SIGTERM: exit {} after {:?}",
            rec.exit_code, rec.exit_elapsed
        ));
    } else if rec.exit_elapsed > live_agent::EXIT_LIMIT {
        // Reported, not judged here: the shutdown checks own the 1 s limit.
        notes.push(format!(
            "SIGTERM: exit 0 but after {} ms (over {:?})",
            rec.exit_elapsed.as_millis(),
            live_agent::EXIT_LIMIT
        ));
    }
    if !rec.left.is_empty() {
        pass = false;
        notes.push(format!("left in the kernel: {}", rec.left.join("; ")));
    }
    let span = match (srv_rounds.first(), srv_rounds.last()) {
        (Some(a), Some(b)) if srv_rounds.len() > 1 => {
            (b.timestamp - a.timestamp) as f64 / 1e6 / (srv_rounds.len() - 1) as f64
        }
        _ => 0.0,
    };
    notes.push(format!(
        "timing: {}, mean round interval {span:.0} ms",
        rec.timing
    ));
    if mixed_ts > 0 {
        notes.push(format!(
            "{mixed_ts} of {} rounds carry more than one timestamp (the contract: one per round)",
            rounds.len()
        ));
    }
    if !pass {
        let tail: Vec<String> = rec.stderr.iter().rev().take(5).rev().cloned().collect();
        notes.push(format!("agent stderr (last lines): {}", tail.join(" | ")));
    }
    let other_i: Vec<usize> = (0..COUNTER_COUNT)
        .filter(|&i| i != syn_i && i != inv_i)
        .collect();
    let sum_other = |c: &Counts| other_i.iter().map(|&i| c[i]).sum::<u64>();
    Ok(Check {
        line: format!(
            "{head}{probe_fields} namespaces={namespaces} others={} ebpf={} syn_driven={} ack_driven={} send_secs={:.2} rounds={} busy_rounds={busy} exact={} lagging={} missed={} proc_only={} other_status={other} absent_rounds={absent} probe_misses={probe_misses} recursion_misses={recursion_misses} map_kib={} ebpf_syn={} proc_syn={} ebpf_inv={} proc_inv={} ebpf_other={} proc_other={} exit={} exit_ms={} leftovers={} status={}",
            rec.others,
            if ebpf { "on" } else { "off" },
            want[syn_i],
            want[inv_i],
            rec.send_secs,
            srv_rounds.len(),
            count("exact"),
            count("lagging"),
            count("missed"),
            count("proc-only"),
            map_bytes / 1024,
            ebpf_sum[syn_i],
            proc_delta[syn_i],
            ebpf_sum[inv_i],
            proc_delta[inv_i],
            sum_other(&ebpf_sum),
            sum_other(&proc_delta),
            rec.exit_code,
            rec.exit_elapsed.as_millis(),
            rec.left.len(),
            if pass { "PASS" } else { "FAIL" }
        ),
        pass,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One round of an eBPF agent for namespace `srv`: its /proc totals, its
    /// per-family events (syn_received, cookie_invalid), the reconcile status
    /// and the probes line's misses.
    fn round(
        ts: u64,
        totals: [u64; 2],
        v4: [u64; 2],
        v6: [u64; 2],
        status: &str,
        misses: u64,
    ) -> Vec<String> {
        let fields = |c: [u64; 2]| {
            Counter::ALL
                .iter()
                .map(|k| {
                    let v = match k {
                        Counter::SynReceived => c[0],
                        Counter::CookieInvalid => c[1],
                        _ => 0,
                    };
                    format!("{}={v}i", k.name())
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        vec![
            format!("synproxy,host=h,netns=srv {},entries=0i {ts}", fields(totals)),
            format!("synproxy,host=h,netns=idle0 {},entries=0i {ts}", fields([0, 0])),
            format!("synproxy_ebpf,host=h,netns=srv,family=ipv4 {},reconcile=\"{status}\" {ts}", fields(v4)),
            format!("synproxy_ebpf,host=h,netns=srv,family=ipv6 {},reconcile=\"{status}\" {ts}", fields(v6)),
            format!("synproxy_ebpf_probes,host=h probe_misses={misses}i,map_bytes=4096i,recursion_misses=0i {ts}"),
        ]
    }

    /// A run of 100 SYNs and 30 bad ACKs, every round exact.
    fn recorded() -> Recorded {
        let mut lines = round(1_000_000_000, [0, 0], [0, 0], [0, 0], "exact", 0);
        lines.extend(round(
            1_200_000_000,
            [100, 30],
            [60, 20],
            [40, 10],
            "exact",
            0,
        ));
        lines.extend(round(1_400_000_000, [100, 30], [0, 0], [0, 0], "exact", 0));
        let mut after = [0; COUNTER_COUNT];
        after[Counter::SynReceived.index()] = 100;
        after[Counter::CookieInvalid.index()] = 30;
        Recorded {
            lines,
            ebpf: true,
            label: "srv".into(),
            before: [0; COUNTER_COUNT],
            after,
            syn: [30, 20, 30, 20],
            ack: [10, 5, 10, 5],
            send_secs: 6.0,
            exit_ok: true,
            exit_code: 0,
            exit_elapsed: Duration::from_millis(200),
            stderr: Vec::new(),
            left: Vec::new(),
            others: 1,
            timing: "recorded".into(),
        }
    }

    fn any_type(_: Option<&str>) -> (String, bool) {
        (String::new(), true)
    }

    #[test]
    fn an_exact_run_passes_with_its_figures() {
        let check = judge("RESULT x", &recorded(), &any_type).expect("judged");
        assert!(check.pass, "{:?}", check.notes);
        for field in [
            "namespaces=2 others=1 ebpf=on syn_driven=100 ack_driven=30 ",
            "rounds=3 busy_rounds=1 exact=1 lagging=0 ",
            "absent_rounds=0 probe_misses=0 ",
            "ebpf_syn=100 proc_syn=100 ebpf_inv=30 proc_inv=30 ",
            "status=PASS",
        ] {
            assert!(check.line.contains(field), "{field} not in {}", check.line);
        }
    }

    #[test]
    fn each_broken_part_of_a_run_fails() {
        let broken: [fn(&mut Recorded); 8] = [
            // a busy round that is not exact
            |r| {
                for l in &mut r.lines[7..9] {
                    *l = l.replace("\"exact\"", "\"lagging\"");
                }
            },
            // a SYN lost before SYNPROXY
            |r| r.syn[0] += 1,
            // a probe miss
            |r| r.lines[9] = r.lines[9].replace("probe_misses=0i", "probe_misses=1i"),
            // too short a flood
            |r| r.send_secs = 4.0,
            // a round without the server's lines
            |r| {
                r.lines.retain(|l| {
                    !(l.contains("netns=srv ")
                        && l.starts_with("synproxy,")
                        && l.ends_with("1400000000"))
                });
                r.lines
                    .retain(|l| !(l.contains("netns=srv,") && l.ends_with("1400000000")));
            },
            // a failed exit
            |r| r.exit_ok = false,
            // something left in the kernel
            |r| r.left.push("kprobe event spx_x".into()),
            // eBPF counted the wrong family
            |r| r.syn = [20, 30, 20, 30],
        ];
        for (i, breaking) in broken.iter().enumerate() {
            let mut r = recorded();
            breaking(&mut r);
            let check = judge("R", &r, &any_type).expect("judged");
            assert!(!check.pass, "case {i} passed: {}", check.line);
            assert!(check.line.ends_with("status=FAIL"), "case {i}");
        }
    }

    #[test]
    fn an_unexpected_probe_type_fails() {
        let wrong = |seen: Option<&str>| (format!(" probe_type={}", seen.unwrap_or("none")), false);
        let check = judge("R", &recorded(), &wrong).expect("judged");
        assert!(!check.pass);
        assert!(check.line.contains(" probe_type=none "), "{}", check.line);
    }
}
