//! The defense scenarios on the host kernel: each flood moves the layer it
//! aims at, and not the layer the verdict must tell it from (SYNPROXY's
//! cookies never move the kernel's own, and the other way round), read from
//! the files inside the server namespace; and the agent, sampling that
//! namespace meanwhile, names the flood within two rounds of its onset, holds
//! it, logs the change, and is calm again soon after (see
//! `synproxy_tests::defense_verdict`); `top` shows it; and after each flood
//! the agent's `nstat` and `conntrack` values equal the files', `nstat
//! -asz`'s and `conntrack -S`'s in that namespace.

use std::time::Duration;
use synproxy_tests::defense_traffic::{ConntrackMaxOverride, ConntrackTurn, DefenseLab};
use synproxy_tests::defense_verdict::{judge, now_ns, Watch};
use synproxy_tests::harness::{agent_binary, wait_until, Needs};
use synproxy_tests::netns::Netns;
use synproxy_tests::require;
use synproxy_tests::stack_compare::assert_equal_to_kernel;
use synproxy_tests::tcp_counters::{read_conntrack, read_tcp};
use synproxy_tests::tmux::Tmux;
use synproxy_tests::tools::Tools;
use synproxy_tests::traffic::ServerMode;
use synproxy_tests::{proc_counters, tcp_counters};

const NEEDS: Needs = Needs {
    what: "defense scenario traffic",
    root: true,
    programs: &["ip", "iptables", "tmux", "nstat", "conntrack"],
    synproxy: true,
};

/// Generous: a loaded machine delivers a flood's last packets late.
const SETTLE: Duration = Duration::from_secs(30);

fn lab(mode: ServerMode) -> DefenseLab {
    DefenseLab::new(&Tools::default(), mode).unwrap_or_else(|e| panic!("lab set-up: {e:#}"))
}

/// `synproxy-agent top` on the lab's server namespace in a tmux pane,
/// showing its Defense panel calm after the warm-up.
fn top_view(lab: &DefenseLab) -> Tmux {
    let tmux = Tmux::start(100, 32).unwrap_or_else(|e| panic!("{e:#}"));
    tmux.type_line(&format!(
        "{} top --netns {} --no-ebpf --interval 500ms --verdict-warmup 1s",
        agent_binary().display(),
        lab.srv().name()
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    tmux.wait_for("top's Defense panel calm", SETTLE, |s| {
        s.contains("Defense: calm since").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    tmux
}

/// Runs `flood` while the agent and `top` watch the lab; the agent's verdict
/// must be `expected` (see the module comment), and `top`'s Defense panel
/// must show it during the flood (its pane is printed). `flood`'s result is
/// returned.
fn verdict_of<T>(lab: &DefenseLab, expected: &str, flood: impl FnOnce() -> T) -> T {
    let mut watch = Watch::start(&agent_binary(), lab.srv()).unwrap_or_else(|e| panic!("{e:#}"));
    let top = top_view(lab);
    let panel = format!("Defense: {expected} since");
    let onset = now_ns();
    let (out, pane) = std::thread::scope(|s| {
        let pane = s.spawn(|| {
            top.wait_for(&panel, SETTLE, |s| {
                s.contains(&panel).then(|| s.to_string())
            })
        });
        let out = flood();
        (out, pane.join())
    });
    let end = now_ns();
    match pane {
        Ok(Ok(pane)) => eprintln!("top during the flood:\n{pane}"),
        Ok(Err(e)) => panic!("top: {e:#}"),
        Err(_) => panic!("the thread reading top's pane panicked"),
    }
    let _ = top.keys("q");
    watch
        .until("calm after the flood", |r| {
            r.ts_ns >= end && r.state == "calm"
        })
        .and_then(|()| watch.rounds_more(1))
        .unwrap_or_else(|e| panic!("{e:#}"));
    match judge(&watch.rounds, onset, end, expected) {
        Ok(summary) => eprintln!("verdict: {summary}"),
        Err(e) => panic!("{e}\nlog: {:#?}", watch.log()),
    }
    // After the flood the agent's TCP stack and conntrack counters of the
    // namespace are the kernel's: its files, nstat -asz, conntrack -S/-C.
    assert_equal_to_kernel(lab.srv().name());
    let log = watch.log();
    let change = format!("defense calm -> {expected}");
    assert!(
        log.iter().any(|l| l.contains(&change)),
        "no {change:?} in the log: {log:#?}"
    );
    out
}

fn tcp(ns: &Netns) -> tcp_counters::Named {
    read_tcp(ns).unwrap_or_else(|e| panic!("{e:#}"))
}

fn synproxy(ns: &Netns) -> proc_counters::Totals {
    proc_counters::read(ns).unwrap_or_else(|e| panic!("{e:#}"))
}

fn moved(before: &tcp_counters::Named, after: &tcp_counters::Named, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

#[test]
fn a_spoofed_syn_flood_is_answered_by_synproxy_not_by_the_kernels_cookies() {
    require!(NEEDS.check());
    let lab = lab(ServerMode::Hold);
    let (p0, t0) = (synproxy(lab.srv()), tcp(lab.srv()));
    let sent = verdict_of(&lab, "syn_flood_absorbed", || lab.syn_flood(2000, 2.0))
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_until("syn_received to count every SYN", SETTLE, || {
        let d = synproxy(lab.srv()).get("syn_received") - p0.get("syn_received");
        (d == sent).then_some(()).ok_or(format!("{d} of {sent}"))
    });
    let t1 = tcp(lab.srv());
    assert_eq!(moved(&t0, &t1, "TcpExtSyncookiesSent"), 0);
    assert_eq!(moved(&t0, &t1, "TcpExtListenDrops"), 0);
    // With --netns all the TCP stack and conntrack lines are the server's,
    // where SYNPROXY counted, and not the client's, where it never did.
    let out = std::process::Command::new(agent_binary())
        .args(["--once", "--no-ebpf", "--netns", "all", "--no-host-tag"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines_of = |ns: &str, measurement: &str| {
        let prefix = format!("{measurement},");
        let tag = format!("netns={ns}");
        stdout
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.split([' ', ',']).any(|t| t == tag))
            .count()
    };
    let (srv, cli) = (lab.srv().name(), lab.setup.topo.cli.name());
    assert_eq!(lines_of(srv, "synproxy"), 1, "{stdout}");
    assert_eq!(lines_of(cli, "synproxy"), 1, "{stdout}");
    assert_eq!(lines_of(srv, "nstat"), 2, "{stdout}");
    assert_eq!(lines_of(cli, "nstat"), 0, "{stdout}");
    assert_eq!(lines_of(cli, "conntrack"), 0, "{stdout}");
}

#[test]
fn an_invalid_ack_flood_is_counted_as_cookie_invalid() {
    require!(NEEDS.check());
    let lab = lab(ServerMode::Hold);
    let p0 = synproxy(lab.srv());
    let sent = verdict_of(&lab, "invalid_ack_flood", || {
        lab.invalid_ack_flood(2000, 2.0)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    wait_until("cookie_invalid to count every ACK", SETTLE, || {
        let d = synproxy(lab.srv()).get("cookie_invalid") - p0.get("cookie_invalid");
        (d == sent).then_some(()).ok_or(format!("{d} of {sent}"))
    });
    assert_eq!(
        synproxy(lab.srv()).get("syn_received"),
        p0.get("syn_received")
    );
}

#[test]
fn a_syn_flood_to_an_uncovered_port_uses_the_kernels_own_cookies() {
    require!(NEEDS.check());
    let lab = lab(ServerMode::Hold);
    lab.srv()
        .write_sysctl("net.ipv4.tcp_syncookies", "1")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (p0, t0) = (synproxy(lab.srv()), tcp(lab.srv()));
    let sent = verdict_of(&lab, "unprotected_syn_flood", || {
        lab.unprotected_syn_flood(2000, 2.0)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The listener's SYN queue (backlog 1) takes the first; then cookies.
    wait_until("SyncookiesSent for all but the queued SYNs", SETTLE, || {
        let d = moved(&t0, &tcp(lab.srv()), "TcpExtSyncookiesSent");
        (d + 10 >= sent)
            .then_some(())
            .ok_or(format!("{d} of {sent}"))
    });
    assert_eq!(
        synproxy(lab.srv()).get("syn_received"),
        p0.get("syn_received")
    );
}

#[test]
fn a_connection_flood_against_a_stalled_server_drops_at_its_listener() {
    require!(NEEDS.check());
    let lab = lab(ServerMode::Stalled);
    let (p0, t0) = (synproxy(lab.srv()), tcp(lab.srv()));
    // It ends when the server accepts again: while it does not, the kernel
    // keeps retransmitting the queued SYN-ACKs and dropping their ACKs.
    let socks = verdict_of(&lab, "backend_saturated", || {
        let socks = lab.connection_flood(200, 2.0);
        lab.setup.resume_server();
        socks
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Through SYNPROXY each handshake completes with the client; the SYN it
    // then sends the server finds the accept queue (backlog 1) full.
    wait_until("ListenDrops behind the proxy", SETTLE, || {
        let d = moved(&t0, &tcp(lab.srv()), "TcpExtListenDrops");
        (d >= 50).then_some(()).ok_or(format!("{d} drops"))
    });
    let valid = synproxy(lab.srv()).get("cookie_valid") - p0.get("cookie_valid");
    assert!(valid >= 50, "cookie_valid moved {valid}");
    drop(socks);
}

#[test]
fn conntrack_at_its_maximum_drops_new_entries() {
    require!(NEEDS.check());
    // Before the namespaces: another run's lowered limit would hit them too.
    let turn = ConntrackTurn::take().unwrap_or_else(|e| panic!("{e:#}"));
    let lab = lab(ServerMode::Hold);
    let c0 = read_conntrack(lab.srv()).unwrap_or_else(|e| panic!("{e:#}"));
    // The maximum is global; each namespace's count is held against it. The
    // initial namespace keeps room for what it holds now and then some.
    let init = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let max = (init + 1000).max(c0.get("count") + 1000);
    // The flood ends when the maximum is back: the table has room again.
    let c1 = verdict_of(&lab, "conntrack_exhausted", || {
        let _max = ConntrackMaxOverride::set(max, &turn).unwrap_or_else(|e| panic!("{e:#}"));
        let per_sec = 4000;
        let secs = (max as f64 * 1.5 / per_sec as f64).max(2.0);
        lab.conntrack_fill(per_sec, secs)
            .unwrap_or_else(|e| panic!("{e:#}"));
        wait_until("conntrack to refuse or evict entries", SETTLE, || {
            let c = read_conntrack(lab.srv()).map_err(|e| format!("{e:#}"))?;
            let lost = ["drop", "early_drop", "insert_failed"]
                .iter()
                .map(|k| c.get(k) - c0.get(k))
                .sum::<u64>();
            if lost > 0 {
                Ok(c)
            } else {
                Err(format!("count {}, none lost", c.get("count")))
            }
        })
    });
    assert!(
        c1.get("count") * 100 >= max * 95,
        "count {} of {max}",
        c1.get("count")
    );
}
