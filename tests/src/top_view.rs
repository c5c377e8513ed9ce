//! The `top-view` check (VM suite): `synproxy-agent top` read from a tmux
//! pane as a person reads it, with eBPF, while crafted SYNs from five known
//! sources arrive in one burst.
//!
//! A server netns with the xt SYNPROXY rules and a default route back over the
//! veth (the SYNs carry spoofed source addresses; SYNPROXY's SYN/ACKs to them
//! go to the client netns, which forwards nothing and drops them), and
//! `synproxy-agent top --netns SRV --interval 1s` in a 120x40 pane. Once the
//! view shows the namespace with eBPF on, a burst goes out right after a round
//! began (the header's clock moved): [`SOURCES`], interleaved, 150 SYNs, far
//! less than the interval even under TCG. The top sources table shows the last
//! interval's events, so the burst's round must show exactly those five
//! sources, ranked 1-5 by their counts (their address order differs from their
//! count order), each `ipv4` with exactly its count and its share of the
//! round's `syn_received` events (nothing else arrives in the namespace), and
//! in the same frame the counters panel's `syn_received` rate times the
//! round's length must be the burst (within the display's rounding: /proc and
//! the per-source counts agree). A burst that straddles two rounds (the table
//! shows part of it, then a quiet round) is sent again, up to [`MAX_BURSTS`]
//! times. /proc's `syn_received` must then have moved by exactly the SYNs
//! sent. Then `q`: exit 0, the shell's screen back (alternate screen off,
//! cursor shown, `stty -g` as before) and none of the agent's kprobe events,
//! BPF programs or maps left in the kernel.

use crate::check::{Check, Judged};
use crate::live_agent::KernelState;
use crate::netns::Topology;
use crate::packet::{TcpSegment, V6Checksum, SYN};
use crate::proc_counters;
use crate::rng::XorShift;
use crate::rules::{Family, Flavour, ServerRules};
use crate::scenario::Config;
use crate::tmux::Tmux;
use crate::tools;
use crate::top_view_judge::{self, TopView};
use crate::traffic::RawSender;
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

pub const WIDTH: u16 = 120;
pub const HEIGHT: u16 = 40;

/// The burst: each source and its SYNs. Distinct counts, listed here in
/// address order, which is not their count order: the table's order can only
/// come from the counts.
pub const SOURCES: [(Ipv4Addr, u64); 5] = [
    (Ipv4Addr::new(192, 0, 2, 10), 10),
    (Ipv4Addr::new(192, 0, 2, 50), 40),
    (Ipv4Addr::new(198, 51, 100, 20), 50),
    (Ipv4Addr::new(198, 51, 100, 40), 20),
    (Ipv4Addr::new(203, 0, 113, 30), 30),
];

/// Bursts sent at most (each one more after a burst split over two rounds).
pub const MAX_BURSTS: u32 = 4;
/// From typing the command to the view with eBPF on (loading and attaching
/// the probes under TCG on a busy host takes tens of seconds).
const VIEW_TIMEOUT: Duration = Duration::from_secs(240);
/// For one round's frame to come (1 s rounds; TCG and a busy host).
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// For the shell's marker after `q`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// For the agent's programs and maps to be freed after its exit.
const CLEAN_TIMEOUT: Duration = Duration::from_secs(30);

/// One row of the top sources table as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub rank: u32,
    pub source: String,
    pub family: String,
    pub events: u64,
    /// As shown: `33.3%`.
    pub share: String,
}

/// What the top sources panel says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Table {
    /// The panel is not on the screen.
    Absent,
    /// "no per-source counts: ...": the round carries no per-source counts.
    NoCounts(String),
    /// "no sources of COUNTER in this namespace this interval".
    Quiet,
    Rows(Vec<Row>),
    /// Anything else (the text of its first line).
    Other(String),
}

/// The panel's content lines (between its title and its bottom border),
/// without the side borders.
fn panel_lines<'a>(screen: &'a str, title: &str) -> Option<Vec<&'a str>> {
    let mut lines = screen.lines().skip_while(|l| !l.contains(title));
    lines.next()?;
    Some(
        lines
            .take_while(|l| !l.starts_with('└'))
            .map(|l| l.trim_start_matches('│').trim_end_matches('│').trim())
            .collect(),
    )
}

/// The top sources panel of a captured screen.
pub fn table(screen: &str) -> Table {
    let Some(lines) = panel_lines(screen, "Top sources: ") else {
        return Table::Absent;
    };
    let first = lines.first().copied().unwrap_or_default();
    if first.starts_with("no per-source counts") {
        return Table::NoCounts(first.to_string());
    }
    if first.starts_with("no sources of ") {
        return Table::Quiet;
    }
    let header: Vec<&str> = first.split_whitespace().collect();
    if header != ["rank", "source", "family", "events", "rate/s", "share"] {
        return Table::Other(first.to_string());
    }
    let mut rows = Vec::new();
    for line in lines[1..].iter().filter(|l| !l.is_empty()) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let parsed = match cells[..] {
            [rank, source, family, events, _rate, share] => rank
                .parse()
                .ok()
                .zip(events.parse().ok())
                .map(|(rank, events)| Row {
                    rank,
                    source: source.to_string(),
                    family: family.to_string(),
                    events,
                    share: share.to_string(),
                }),
            _ => None,
        };
        match parsed {
            Some(row) => rows.push(row),
            None => return Table::Other(line.to_string()),
        }
    }
    Table::Rows(rows)
}

/// The rows the burst's round must show: by events, most first (the counts
/// are distinct), ranks 1.., each with its share of the burst to one decimal
/// as the view prints it.
pub fn expected_rows(sources: &[(Ipv4Addr, u64)]) -> Vec<Row> {
    let total: u64 = sources.iter().map(|(_, n)| n).sum();
    let mut sorted = sources.to_vec();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.1));
    sorted
        .iter()
        .zip(1..)
        .map(|((addr, n), rank)| Row {
            rank,
            source: addr.to_string(),
            family: "ipv4".into(),
            events: *n,
            share: format!("{:.1}%", *n as f64 * 100.0 / total as f64),
        })
        .collect()
}

/// The header's clock (`HH:MM:SS UTC`, the round's timestamp), once the view
/// has a round.
pub fn header_clock(screen: &str) -> Option<String> {
    let first = screen.lines().next()?;
    if !first.starts_with("synproxy-agent top |") {
        return None;
    }
    let clock = first.rsplit(" | ").next()?.trim();
    clock.ends_with(" UTC").then(|| clock.to_string())
}

/// A rate as the view prints it (`12.5`, `200`, `1.2k`, `3.4M`).
pub fn parse_rate(text: &str) -> Option<f64> {
    let (number, scale) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1e3),
        'M' => (&text[..text.len() - 1], 1e6),
        _ => (text, 1.0),
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The counters panel of `ns`: its round length (the title's `over 1.00 s`)
/// and `counter`'s rate.
pub fn counter_rate(screen: &str, ns: &str, counter: &str) -> Option<(f64, f64)> {
    let title = format!(" {ns}: rates from /proc over ");
    let lines = panel_lines(screen, &title)?;
    let secs = screen
        .lines()
        .find_map(|l| l.split_once(&title))?
        .1
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    let rate = lines.iter().find_map(|line| {
        let mut cells = line.split_whitespace();
        (cells.next()? == counter).then_some(())?;
        parse_rate(cells.next()?)
    })?;
    Some((secs, rate))
}

/// The view of `ns` with eBPF on: one namespace, `ns` selected with its
/// counters, the eBPF panel without an "eBPF off" line, the top sources
/// panel of `syn_received` by events.
pub fn view_ready(screen: &str, ns: &str) -> bool {
    screen.contains("| 1 namespace | eBPF on |")
        && screen.contains(&format!("> {ns}"))
        && screen.contains(&format!(" {ns}: rates from /proc over "))
        && !screen.lines().any(|l| l.contains("eBPF off"))
        && screen.contains("┌ eBPF ")
        && screen.contains("Top sources: syn_received, by events")
}

/// The reconcile status at the end of the eBPF panel's `ipv4` line.
fn ipv4_reconcile(screen: &str) -> Option<String> {
    panel_lines(screen, "┌ eBPF ")?
        .iter()
        .find(|l| l.starts_with("ipv4 "))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string)
}

pub fn compact(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "none".into();
    }
    rows.iter()
        .map(|r| format!("{}:{}", r.source, r.events))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn top_view(cfg: &Config, kernel: &str) -> Check {
    let head = top_view_judge::head(kernel, cfg.fentry);
    let mut notes = Vec::new();
    match run(cfg, kernel, &mut notes) {
        Ok(check) => check,
        Err(e) => {
            let mut failed = Check::failed(head.head(), &e);
            notes.append(&mut failed.notes);
            failed.notes = notes;
            failed
        }
    }
}

/// Sends every source's SYNs, interleaved (one from each source still
/// owing, in turn); returns how many.
fn send_burst(senders: &mut [(RawSender, u64)], dst: IpAddr, rng: &mut XorShift) -> Result<u64> {
    let most = senders.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let mut sent = 0;
    for i in 0..most {
        for (tx, n) in senders.iter_mut() {
            if i < *n {
                let seg = TcpSegment::to_protected(rng.port(), rng.next_u32(), 0, SYN);
                tx.send(dst, &seg)?;
                sent += 1;
            }
        }
    }
    Ok(sent)
}

/// What came after a burst.
enum Seen {
    /// The burst's round, with this screen.
    Frame(String),
    /// Part of the burst in one round (these rows), the rest in another.
    Split(Vec<Row>),
}

fn run(cfg: &Config, kernel: &str, notes: &mut Vec<String>) -> Result<Check> {
    if !cfg.ebpf.enabled() {
        bail!("the top sources table needs eBPF (per-source counts come from the probes): --ebpf require, or a kernel with kprobes");
    }
    let tools = &cfg.tools;
    let topo = Topology::create(tools, cfg.server_netns.as_deref()).context("netns setup")?;
    let _rules = ServerRules::install(tools, &topo.srv, Flavour::Xt, Family::Ipv4, &topo.srv_if)
        .context("SYNPROXY rules")?;
    let ns = topo.srv.name().to_string();
    let cli4 = topo.cli4.to_string();
    tools::run(
        &tools.ip,
        &[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &cli4,
            "dev",
            &topo.srv_if,
        ],
    )
    .context("default route of the server netns (for the spoofed sources)")?;
    let mut senders = SOURCES
        .iter()
        .map(|(addr, n)| {
            RawSender::new(&topo.cli, IpAddr::V4(*addr), V6Checksum::Correct).map(|tx| (tx, *n))
        })
        .collect::<Result<Vec<_>>>()?;
    let burst: u64 = SOURCES.iter().map(|(_, n)| n).sum();
    let expected = expected_rows(&SOURCES);
    let mut rng = XorShift::from_time();
    let proc_before = proc_counters::read(&topo.srv)?.get("syn_received");
    let kernel_before = KernelState::now()?;
    let tmux = Tmux::start(WIDTH, HEIGHT)?;
    let dir = tmux.dir().display().to_string();
    let probes = if cfg.fentry { " --probes fentry" } else { "" };
    let agent = cfg.agent.display();
    // The markers are quoted in two pieces, so the typed command (which the
    // pane may wrap anywhere) never shows them as they are printed.
    tmux.type_line(&format!(
        "cd {dir} && stty -g > before; {agent} top --netns {ns} --interval 1s{probes}; echo \"top \"\"exited: $?\"; stty -g > after; echo \"top-\"\"done\""
    ))?;
    let started = Instant::now();
    let ready = tmux.wait_for(
        &format!("the view of netns {ns} with eBPF on (header `| 1 namespace | eBPF on |`, no `eBPF off` line, the top sources panel)"),
        VIEW_TIMEOUT,
        |s| view_ready(s, &ns).then_some(()),
    );
    let view_secs = started.elapsed().as_secs_f64();
    let mut sent = 0;
    let mut splits = Vec::new();
    let bursts = ready.and_then(|()| {
        let mut burst_sender = |rng: &mut XorShift| {
            send_burst(&mut senders, topo.srv4.into(), rng).inspect(|n| sent += n)
        };
        bursts(&tmux, &ns, &mut burst_sender, &mut rng, &mut splits, notes)
    });
    let (bursts, frame) = match bursts {
        Ok(found) => found,
        Err(e) => {
            // The screen is in the error; q gives the terminal back (and the
            // probes go) before the tmux server does.
            quit_quietly(&tmux);
            return Err(e);
        }
    };
    for line in frame.lines() {
        notes.push(format!("top-view screen |{line}"));
    }
    for split in &splits {
        notes.push(format!("split over two rounds, sent again: {split}"));
    }
    let Table::Rows(rows) = table(&frame) else {
        bail!("the burst's frame has no table rows");
    };
    let (round_secs, syn_rate) = counter_rate(&frame, &ns, "syn_received")
        .with_context(|| format!("no syn_received rate of {ns} in the burst's frame"))?;
    let reconcile = ipv4_reconcile(&frame).unwrap_or_else(|| "none".into());

    // All the SYNs sent, split bursts included, and nothing else.
    let proc_syn = wait_proc_syn(&topo, proc_before, sent)?;

    // q: the view goes, the shell's screen is back.
    tmux.keys("q")?;
    let after = tmux.wait_for("`top-done` from the shell after q", EXIT_TIMEOUT, |s| {
        s.lines()
            .any(|l| l.trim() == "top-done")
            .then(|| s.to_string())
    })?;
    let exit = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("top exited: "))
        .unwrap_or("none")
        .to_string();
    let shell_back = after.contains("stty -g > before") && !after.contains("synproxy-agent top |");
    let alternate = tmux.display("#{alternate_on}")?;
    let cursor = tmux.display("#{cursor_flag}")?;
    let read = |name: &str| {
        let path = tmux.dir().join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let (stty_before, stty_after) = (read("before")?, read("after")?);
    let modes_same = !stty_before.trim().is_empty() && stty_before == stty_after;
    let restored = shell_back && alternate == "0" && cursor == "1" && modes_same;
    if !restored {
        notes.push(format!(
            "terminal after q: shell screen back={shell_back} alternate_on={alternate} cursor_flag={cursor} stty before={:?} after={:?}",
            stty_before.trim(),
            stty_after.trim()
        ));
        notes.extend(after.lines().map(|l| format!("after q |{l}")));
    }
    let left = wait_kernel_clean(&kernel_before)?;
    for l in &left {
        notes.push(format!("left in the kernel: {l}"));
    }

    let measured = TopView {
        fentry: cfg.fentry,
        netns: ns,
        sources: SOURCES.len(),
        expected,
        rows,
        bursts,
        burst,
        view_secs,
        syn_rate,
        round_secs,
        reconcile,
        sent,
        proc_syn,
        exit,
        restored,
        left,
    };
    Ok(measured.check(kernel, std::mem::take(notes)))
}

/// Sends bursts until one shows in a single round; returns how many were
/// sent and that round's screen. Split bursts are described in `splits`.
fn bursts(
    tmux: &Tmux,
    ns: &str,
    send: &mut dyn FnMut(&mut XorShift) -> Result<u64>,
    rng: &mut XorShift,
    splits: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<(u32, String)> {
    let burst: u64 = SOURCES.iter().map(|(_, n)| n).sum();
    let expected = expected_rows(&SOURCES);
    for n in 1..=MAX_BURSTS {
        // A quiet round first: the table is live and empty, and its clock
        // tells when the next round begins.
        let clock = tmux.wait_for(
            &format!("burst {n}: a round with no sources in the table before the burst"),
            ROUND_TIMEOUT,
            |s| match table(s) {
                Table::Quiet if view_ready(s, ns) => header_clock(s),
                _ => None,
            },
        )?;
        // Right after a round began, so the burst falls within the next.
        tmux.wait_for(
            &format!("burst {n}: the next round (the header's clock moving on from {clock})"),
            ROUND_TIMEOUT,
            |s| header_clock(s).filter(|c| *c != clock),
        )?;
        let t = Instant::now();
        send(rng)?;
        let send_ms = t.elapsed().as_millis();
        let mut shown: Vec<Row> = Vec::new();
        let seen = tmux.wait_for(
            &format!(
                "burst {n}: its {burst} SYNs from {} sources in the top sources table (or the table empty again after part of them)",
                SOURCES.len()
            ),
            ROUND_TIMEOUT,
            |s| match table(s) {
                Table::Rows(rows) if rows == expected => Some(Seen::Frame(s.to_string())),
                Table::Rows(rows) => {
                    shown = rows;
                    None
                }
                Table::Quiet if !shown.is_empty() => Some(Seen::Split(shown.clone())),
                _ => None,
            },
        )?;
        match seen {
            Seen::Frame(screen) => {
                notes.push(format!("burst {n}: sent in {send_ms} ms"));
                return Ok((n, screen));
            }
            Seen::Split(rows) => {
                splits.push(format!("burst {n} ({send_ms} ms): {}", compact(&rows)));
            }
        }
    }
    bail!(
        "{MAX_BURSTS} bursts, each split over two rounds: {}",
        splits.join("; ")
    )
}

/// `q`, then up to [`EXIT_TIMEOUT`] for the shell's marker; errors ignored
/// (the check has already failed).
fn quit_quietly(tmux: &Tmux) {
    if tmux.keys("q").is_ok() {
        let _ = tmux.wait_for("`top-done` after q", EXIT_TIMEOUT, |s| {
            s.lines().any(|l| l.trim() == "top-done").then_some(())
        });
    }
}

/// /proc's `syn_received` of the server netns since `before`, once it
/// reaches `sent` (or after a while, whatever it is then).
fn wait_proc_syn(topo: &Topology, before: u64, sent: u64) -> Result<u64> {
    let deadline = Instant::now() + ROUND_TIMEOUT;
    loop {
        let now = proc_counters::read(&topo.srv)?.get("syn_received") - before;
        if now >= sent || Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kprobe events, BPF programs and maps of the agent's names that
/// appeared since `before` and are still there once they stop going away
/// (programs and maps are freed after an RCU grace period), at most
/// [`CLEAN_TIMEOUT`].
fn wait_kernel_clean(before: &KernelState) -> Result<Vec<String>> {
    let deadline = Instant::now() + CLEAN_TIMEOUT;
    loop {
        let left = KernelState::now()?.since(before);
        if (left.events.is_empty() && left.objects.is_empty()) || Instant::now() > deadline {
            let mut out: Vec<String> = left
                .events
                .iter()
                .map(|e| format!("kprobe event {e}"))
                .collect();
            for (prog, id, name) in &left.objects {
                let kind = if *prog { "program" } else { "map" };
                out.push(format!("BPF {kind} {id} {name}"));
            }
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 120x40 frame as `tmux capture-pane -p` gives it (trailing blanks
    /// trimmed by tmux), from the view's own layout.
    fn frame(sources: &str) -> String {
        format!(
            "synproxy-agent top | every 1s | 1 namespace | eBPF on | 14:31:11 UTC
┌ Namespaces ───────────────────────────────────────────────┐
│  namespace                           syn_received/s  cookie_invalid/s    cookie_valid/s  (order: name)               │
│> spx-1-0-srv                                150               0.0               0.0                              │
└───────────────────────────────────────────────────────────┘
┌ spx-1-0-srv: rates from /proc over 1.01 s ────────────────┐
│counter              rate/s                 total      peak/s  last 5 min                                             │
│syn_received            149                   150        1500                ▁█│
│cookie_invalid          0.0                     0         0.0                                                         │
└───────────────────────────────────────────────────────────┘
┌ eBPF ─────────────────────────────────────────────────────┐
│family      syn_received  cookie_invalid    cookie_valid  cookie_retrans   conn_reopened  reconcile│
│ipv4             149.0/s           0.0/s           0.0/s           0.0/s           0.0/s  exact│
│ipv6               0.0/s           0.0/s           0.0/s           0.0/s           0.0/s  exact│
└───────────────────────────────────────────────────────────┘
┌ Top sources: syn_received, by events ─────────────────────┐
{sources}└───────────────────────────────────────────────────────────┘
INFO  eBPF probes attached
"
        )
    }

    fn table_lines(rows: &[Row]) -> String {
        let mut s = format!(
            "│{:>4}  {:<42}{:<7}{:>12}{:>12}{:>8}│\n",
            "rank", "source", "family", "events", "rate/s", "share"
        );
        for r in rows {
            s.push_str(&format!(
                "│{:>4}  {:<42}{:<7}{:>12}{:>12}{:>8}│\n",
                r.rank, r.source, r.family, r.events, "49.5", r.share
            ));
        }
        s.push_str("│                                                                        │\n");
        s
    }

    #[test]
    fn expected_rows_rank_by_count_with_shares() {
        let rows = expected_rows(&SOURCES);
        let got: Vec<(u32, &str, u64, &str)> = rows
            .iter()
            .map(|r| (r.rank, r.source.as_str(), r.events, r.share.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "198.51.100.20", 50, "33.3%"),
                (2, "192.0.2.50", 40, "26.7%"),
                (3, "203.0.113.30", 30, "20.0%"),
                (4, "198.51.100.40", 20, "13.3%"),
                (5, "192.0.2.10", 10, "6.7%"),
            ]
        );
        // The address order is not the count order.
        let mut by_address: Vec<&Row> = rows.iter().collect();
        by_address.sort_by_key(|r| r.source.parse::<Ipv4Addr>().ok());
        assert_ne!(by_address[0].source, rows[0].source);
    }

    #[test]
    fn reads_the_table_the_clock_and_the_rates() {
        let rows = expected_rows(&SOURCES);
        let screen = frame(&table_lines(&rows));
        assert_eq!(table(&screen), Table::Rows(rows));
        assert_eq!(header_clock(&screen).as_deref(), Some("14:31:11 UTC"));
        assert_eq!(
            counter_rate(&screen, "spx-1-0-srv", "syn_received"),
            Some((1.01, 149.0))
        );
        assert!(view_ready(&screen, "spx-1-0-srv"));
        assert!(!view_ready(&screen, "spx-1-1-srv"));
        assert_eq!(ipv4_reconcile(&screen).as_deref(), Some("exact"));
    }

    #[test]
    fn tells_the_empty_tables_apart() {
        let quiet = frame("│no sources of syn_received in this namespace this interval   │\n");
        assert_eq!(table(&quiet), Table::Quiet);
        let off =
            frame("│no per-source counts: per-source counting needs eBPF and --top above 0 │\n");
        assert!(matches!(table(&off), Table::NoCounts(_)));
        assert_eq!(table("synproxy-agent top | every 1s\n$ "), Table::Absent);
        let ebpf_off = quiet.replace("eBPF on", "eBPF off");
        assert!(!view_ready(&ebpf_off, "spx-1-0-srv"));
        let garbled = frame("│rank  source  family  events  rate/s  share│\n│1 x│\n");
        assert!(matches!(table(&garbled), Table::Other(_)));
    }

    #[test]
    fn rates_as_printed() {
        assert_eq!(parse_rate("150"), Some(150.0));
        assert_eq!(parse_rate("1.5k"), Some(1500.0));
        assert_eq!(parse_rate("-"), None);
    }
}
