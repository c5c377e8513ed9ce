//! The agent the module checks keep running while modules come and go:
//! `synproxy-agent --interval 500ms --netns NAME [...]`, sampling on its own.
//! Its stdout and stderr are kept whole; the readings the checks take from
//! them are pure functions of those lines. Also the polling wait those checks
//! use, which records what timed out instead of failing at once (a check goes
//! on and reports every figure).

use crate::line_protocol::{self, FieldValue, Line};
use crate::live_agent::{self, Launch, LiveAgent, Stopped};
use crate::netns::Netns;
use crate::proc_counters;
use crate::rules::{Family, Flavour};
use crate::scenario::{self, AgentMode, Combo, Config};
use crate::sustained_judge::Counts;
use crate::tools;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use synproxy_common::{Counter, COUNTER_COUNT};

/// How often a wait re-evaluates its condition.
const POLL: Duration = Duration::from_millis(250);

/// Whether a log line reports the missing proc file of the unloaded module.
pub fn reports_missing_file(line: &str) -> bool {
    line.find("file not found")
        .is_some_and(|at| line[at..].contains("nf_synproxy_core"))
}

/// Whether a log line says the probes are attached.
pub fn reports_attach(line: &str) -> bool {
    line.contains(live_agent::ATTACHED_LOG)
}

/// The `nf_synproxy_core` BTF object id of the `n`-th (from 1) attach log line.
pub fn btf_id_of_attach(stderr: &[String], n: usize) -> Option<u32> {
    let line = stderr
        .iter()
        .filter(|l| reports_attach(l))
        .nth(n.checked_sub(1)?)?;
    let (_, rest) = line.split_once("nf_synproxy_core (BTF id ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn parsed<'a>(
    lines: &'a [String],
    measurement: &str,
) -> impl DoubleEndedIterator<Item = Line> + 'a {
    let measurement = measurement.to_string();
    lines
        .iter()
        .filter(move |l| {
            l.strip_prefix(measurement.as_str())
                .is_some_and(|rest| rest.starts_with([',', ' ']))
        })
        .filter_map(|l| line_protocol::parse_line(l).ok())
}

/// The five totals of the last `synproxy` line, in [`Counter::ALL`] order.
pub fn last_totals(stdout: &[String]) -> Option<Counts> {
    let line = parsed(stdout, "synproxy").next_back()?;
    let mut totals = [0; COUNTER_COUNT];
    for c in Counter::ALL {
        totals[c.index()] = line.counter(c.name()).ok()?;
    }
    Some(totals)
}

fn ebpf_lines_of<'a>(
    stdout: &'a [String],
    netns: &'a str,
) -> impl DoubleEndedIterator<Item = Line> + 'a {
    parsed(stdout, "synproxy_ebpf")
        .filter(move |l| l.tags.get("netns").map(String::as_str) == Some(netns))
}

fn exact(line: &Line) -> bool {
    matches!(line.fields.get("reconcile"), Some(FieldValue::Str(s)) if s == "exact")
}

/// `counter`'s eBPF events of `netns` summed over the lines after the first `mark`.
pub fn ebpf_since(stdout: &[String], mark: usize, netns: &str, counter: Counter) -> u64 {
    let after = stdout.get(mark..).unwrap_or_default();
    ebpf_lines_of(after, netns)
        .map(|l| l.counter(counter.name()).unwrap_or(0))
        .sum()
}

/// How many of the last two `synproxy_ebpf` lines of `netns` (a round's IPv4
/// and IPv6 lines) are `reconcile="exact"`.
pub fn exact_of_last_two(stdout: &[String], netns: &str) -> usize {
    ebpf_lines_of(stdout, netns)
        .rev()
        .take(2)
        .filter(exact)
        .count()
}

/// Whether an exact `synproxy_ebpf` line of `netns` came after the first `mark` lines.
pub fn exact_round_after(stdout: &[String], mark: usize, netns: &str) -> bool {
    let after = stdout.get(mark..).unwrap_or_default();
    ebpf_lines_of(after, netns).any(|l| exact(&l))
}

/// The `probe_type` of the last `synproxy_ebpf_probes` line, or `none`.
pub fn last_probe_type(stdout: &[String]) -> String {
    parsed(stdout, "synproxy_ebpf_probes")
        .next_back()
        .and_then(|l| live_agent::probe_type(std::slice::from_ref(&l)))
        .unwrap_or_else(|| "none".to_string())
}

/// The server namespace of a module check (`spx-PID-mod-WHAT`), lo up; the
/// agent reads it through `--netns` and the driven traffic reuses it.
pub fn server_netns(cfg: &Config, what: &str) -> Result<Netns> {
    let name = format!("spx-{}-mod-{what}", std::process::id());
    let srv = Netns::create(&cfg.tools, &name)?;
    tools::run(&cfg.tools.ip, &["-n", &name, "link", "set", "lo", "up"])?;
    Ok(srv)
}

/// The namespace's /proc totals in [`Counter::ALL`] order.
pub fn proc_counts(netns: &Netns) -> Result<Counts> {
    let totals = proc_counters::read(netns)?;
    Ok(Counter::ALL.map(|c| totals.get(c.name())))
}

/// Five real connections through xt IPv4 SYNPROXY into `srv` (the matrix's
/// cookie_valid check, with its own agents): how many it drove and whether
/// that check passed; its lines go to `notes` prefixed with `label`.
pub fn drive_cookie_valid(
    cfg: &Config,
    kernel: &str,
    srv: &Netns,
    label: &str,
    notes: &mut Vec<String>,
) -> (u64, bool) {
    let inner = Config {
        server_netns: Some(srv.name().to_string()),
        count: 5,
        agent_mode: AgentMode::Both,
        extra_agent_args: Vec::new(),
        fentry: false,
        ..cfg.clone()
    };
    let combo = Combo {
        rules: Flavour::Xt,
        family: Family::Ipv4,
        counter: Counter::CookieValid,
    };
    let outcome = scenario::run_combo(&inner, combo);
    notes.push(format!("{label} scenario: {}", outcome.result_line(kernel)));
    notes.extend(
        outcome
            .notes
            .iter()
            .map(|n| format!("{label} scenario: {n}")),
    );
    (outcome.driven, outcome.pass)
}

/// Waits that poll a condition; each one that timed out is kept, named.
#[derive(Debug, Default)]
pub struct Waits {
    pub timeouts: Vec<String>,
}

impl Waits {
    /// Polls `cond` until it holds (true) or `limit` passed (false, recorded).
    pub fn until(&mut self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() > deadline {
                self.timeouts
                    .push(format!("timeout waiting for {what} ({}s)", limit.as_secs()));
                return false;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The last `n` of `lines` as `PREFIX: line`.
fn tail(lines: &[String], n: usize, prefix: &str) -> Vec<String> {
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("{prefix}: {l}"))
        .collect()
}

/// The running agent and everything it wrote so far.
pub struct ModuleAgent {
    live: LiveAgent,
    stdout: Vec<String>,
    netns: String,
}

impl ModuleAgent {
    /// `agent --interval 500ms --netns NETNS EXTRA...` from the root namespace.
    pub fn start(agent: &Path, netns: &str, extra: &[&str]) -> Result<Self> {
        let mut args: Vec<String> = ["--interval", "500ms", "--netns", netns]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        let live = LiveAgent::spawn(agent, &args, &Launch::Direct).context("agent")?;
        Ok(ModuleAgent {
            live,
            stdout: Vec::new(),
            netns: netns.to_string(),
        })
    }

    pub fn live(&self) -> &LiveAgent {
        &self.live
    }

    /// Every stdout line so far.
    pub fn stdout(&mut self) -> &[String] {
        let new = self.live.take_lines();
        self.stdout.extend(new);
        &self.stdout
    }

    /// Every stderr line so far.
    pub fn stderr(&mut self) -> Vec<String> {
        self.live.stderr_lines()
    }

    /// Stderr lines for which `pred` holds.
    pub fn count_logged(&mut self, pred: impl Fn(&str) -> bool) -> usize {
        self.stderr().iter().filter(|l| pred(l)).count()
    }

    pub fn running(&mut self) -> bool {
        self.live.running()
    }

    /// How many stdout lines there are now (a mark for the `*_since` readings).
    pub fn mark(&mut self) -> usize {
        self.stdout().len()
    }

    pub fn totals(&mut self) -> Option<Counts> {
        last_totals(self.stdout())
    }

    pub fn ebpf_since(&mut self, mark: usize, counter: Counter) -> u64 {
        let netns = self.netns.clone();
        ebpf_since(self.stdout(), mark, &netns, counter)
    }

    pub fn exact_of_last_two(&mut self) -> usize {
        let netns = self.netns.clone();
        exact_of_last_two(self.stdout(), &netns)
    }

    pub fn exact_round_after(&mut self, mark: usize) -> bool {
        let netns = self.netns.clone();
        exact_round_after(self.stdout(), mark, &netns)
    }

    pub fn probe_type(&mut self) -> String {
        last_probe_type(self.stdout())
    }

    /// Waits for attach log line number `n` (`what` says which), then for an
    /// exact eBPF round after it: from then on eBPF sees every event. Whether
    /// it attached, and the stdout mark of that moment.
    pub fn wait_attach(&mut self, waits: &mut Waits, n: usize, what: &str) -> (bool, usize) {
        let attached = waits.until(what, Duration::from_secs(120), || {
            self.count_logged(reports_attach) >= n
        });
        let mark = self.mark();
        waits.until(
            &format!("an exact eBPF round after {what}"),
            Duration::from_secs(60),
            || self.exact_round_after(mark),
        );
        (attached, mark)
    }

    /// Whether every thread of the agent is stopped (state T).
    pub fn stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.live.pid())) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                stat.rfind(") ")
                    .is_some_and(|at| stat[at + 2..].starts_with('T'))
            })
        })
    }

    /// The last 20 stderr lines, prefixed with `check`.
    pub fn stderr_tail(&mut self, check: &str) -> Vec<String> {
        tail(&self.stderr(), 20, &format!("{check} agent stderr"))
    }

    /// The last 4 stdout lines, prefixed with `check`.
    pub fn stdout_tail(&mut self, check: &str) -> Vec<String> {
        tail(self.stdout(), 4, &format!("{check} agent stdout"))
    }

    /// SIGTERM and the exit.
    pub fn stop(self) -> Result<Stopped> {
        self.live.stop(Some(libc::SIGTERM))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    /// Two rounds of an agent on `srv` (as the guest printed them), traffic in the second.
    const OUT: &str = "\
synproxy,netns=srv entries=0i,syn_received=0i,cookie_invalid=0i,cookie_valid=0i,cookie_retrans=0i,conn_reopened=0i 1000
synproxy_ebpf,netns=srv,family=ipv4 syn_received=0i,cookie_invalid=0i,cookie_valid=0i,cookie_retrans=0i,conn_reopened=0i,reconcile=\"pending\" 1000
synproxy_ebpf,netns=srv,family=ipv6 syn_received=0i,cookie_invalid=0i,cookie_valid=0i,cookie_retrans=0i,conn_reopened=0i,reconcile=\"exact\" 1000
synproxy_ebpf_probes attached=1i,probe_type=\"fentry\" 1000
synproxy,netns=srv entries=0i,syn_received=5i,cookie_invalid=0i,cookie_valid=5i,cookie_retrans=0i,conn_reopened=0i 2000
synproxy_ebpf,netns=srv,family=ipv4 syn_received=5i,cookie_invalid=0i,cookie_valid=5i,cookie_retrans=0i,conn_reopened=0i,reconcile=\"exact\" 2000
synproxy_ebpf,netns=srv,family=ipv6 syn_received=0i,cookie_invalid=0i,cookie_valid=0i,cookie_retrans=0i,conn_reopened=0i,reconcile=\"exact\" 2000
synproxy_ebpf,netns=other,family=ipv4 syn_received=1i,cookie_invalid=0i,cookie_valid=9i,cookie_retrans=0i,conn_reopened=0i,reconcile=\"exact\" 2000
synproxy_ebpf_probes attached=1i,probe_type=\"kprobe\" 2000
";

    #[test]
    fn readings_of_the_agents_output() {
        let out = lines(OUT);
        assert_eq!(last_totals(&out), Some([5, 0, 5, 0, 0]));
        assert_eq!(last_totals(&out[..0]), None);
        assert_eq!(ebpf_since(&out, 0, "srv", Counter::CookieValid), 5);
        assert_eq!(ebpf_since(&out, 6, "srv", Counter::CookieValid), 0);
        assert_eq!(ebpf_since(&out, 99, "srv", Counter::CookieValid), 0);
        assert_eq!(exact_of_last_two(&out, "srv"), 2);
        assert_eq!(exact_of_last_two(&out[..4], "srv"), 1);
        assert!(exact_round_after(&out, 4, "srv"));
        assert!(!exact_round_after(&out, 7, "srv"));
        assert_eq!(last_probe_type(&out), "kprobe");
        assert_eq!(last_probe_type(&out[..1]), "none");
    }

    #[test]
    fn log_lines_the_checks_look_for() {
        let err = lines(
            "WARN /proc/net/stat/synproxy: file not found (nf_synproxy_core may not be loaded in this network namespace)
INFO eBPF probes attached (fentry on nf_synproxy_core (BTF id 48))
INFO SIGUSR1: eBPF probes released; nf_synproxy_core and nf_conntrack can be unloaded now
INFO eBPF probes attached (fentry on nf_synproxy_core (BTF id 825))",
        );
        assert!(reports_missing_file(&err[0]));
        assert!(!reports_missing_file("nf_synproxy_core: file not found"));
        assert_eq!(btf_id_of_attach(&err, 1), Some(48));
        assert_eq!(btf_id_of_attach(&err, 2), Some(825));
        assert_eq!(btf_id_of_attach(&err, 3), None);
        assert_eq!(btf_id_of_attach(&err, 0), None);
    }

    #[test]
    fn a_wait_records_its_timeout() {
        let mut waits = Waits::default();
        assert!(waits.until("now", Duration::ZERO, || true));
        assert!(!waits.until("never", Duration::ZERO, || false));
        assert_eq!(waits.timeouts, ["timeout waiting for never (0s)"]);
    }
}
