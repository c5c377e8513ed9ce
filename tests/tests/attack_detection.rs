//! The attack detector from /proc alone (`--no-ebpf`, one step per round)
//! against real traffic on the host kernel, in a namespace behind SYNPROXY:
//! benign SYNs swinging 10x (20/s and 200/s), learnt in the warm-up, raise
//! no event afterwards, although 200/s is four times the floor; a spoofed
//! flood starts an event within three rounds of its onset and ends it within
//! the release time and two rounds of its end, with one log line at each; an
//! agent restarted during a flood goes on with the same event (state file)
//! instead of starting a new one or learning the flood as normal.

use std::time::Duration;
use synproxy_tests::attack_judge::{judge_flood, judge_quiet, judge_restart, Expect};
use synproxy_tests::attack_watch::AttackWatch;
use synproxy_tests::defense_traffic::DefenseLab;
use synproxy_tests::defense_verdict::now_ns;
use synproxy_tests::harness::{agent_binary, Needs};
use synproxy_tests::require;
use synproxy_tests::tools::Tools;
use synproxy_tests::traffic::ServerMode;

const NEEDS: Needs = Needs {
    what: "attack detection traffic",
    root: true,
    programs: &["ip", "iptables"],
    synproxy: true,
};

const S: u64 = 1_000_000_000;
/// The flood: far above the learnt threshold (about 4 x 200/s).
const FLOOD: u32 = 4000;

fn args(state_dir: &str) -> Vec<&str> {
    vec![
        "--interval",
        "500ms",
        "--no-ebpf",
        "--no-verdict",
        "--attack-warmup",
        "4s",
        "--attack-bucket",
        "1s",
        "--attack-floor",
        "50",
        "--attack-release",
        "1s",
        "--state-dir",
        state_dir,
    ]
}

/// A fresh state directory, removed at the end.
struct StateDir(std::path::PathBuf);

impl StateDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "synproxy-attack-state-{}-{}",
            std::process::id(),
            synproxy_tests::netns::next_seq()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The benign swing: 20/s then 200/s.
fn swing(lab: &DefenseLab, secs: f64) {
    for rate in [20, 200] {
        lab.syn_flood(rate, secs)
            .unwrap_or_else(|e| panic!("benign traffic: {e:#}"));
    }
}

#[test]
fn proc_only_detector_learns_swings_flags_a_flood_and_keeps_it_across_a_restart() {
    require!(NEEDS.check());
    let lab = DefenseLab::new(&Tools::default(), ServerMode::Hold)
        .unwrap_or_else(|e| panic!("lab set-up: {e:#}"));
    let state = StateDir::new();
    let state_dir = state.0.to_str().expect("utf-8 temporary path").to_string();
    let netns = lab.srv().name().to_string();
    let mut a = AttackWatch::start(&agent_binary(), &netns, &args(&state_dir))
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Warm-up (4 s): the swing is learnt. Then the same swing is judged.
    swing(&lab, 2.5);
    swing(&lab, 2.0);
    a.rounds_more(2).unwrap_or_else(|e| panic!("{e:#}"));
    judge_quiet(&a.lines).unwrap_or_else(|e| panic!("{e}"));

    // A flood: start and end in time.
    let onset = now_ns();
    lab.syn_flood(FLOOD, 3.0)
        .unwrap_or_else(|e| panic!("flood: {e:#}"));
    let stop = now_ns();
    a.phase("end", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let expect = Expect {
        kind: "syn_flood",
        port: "all",
        start_within_ns: 3 * S / 2,
        end_within_ns: 3 * S,
        sources: &[],
    };
    let (_, _, summary) =
        judge_flood(&a.lines, onset, stop, &expect).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("flood: {summary}");
    let log = a.agent.stderr_lines();
    let started: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("attack started"))
        .collect();
    let ended: Vec<&String> = log.iter().filter(|l| l.contains("attack ended")).collect();
    assert_eq!(
        (started.len(), ended.len()),
        (1, 1),
        "one log line each: {log:?}"
    );
    assert!(
        started[0].contains(&netns) && started[0].contains("syn_flood"),
        "{started:?}"
    );

    // A restart during a flood: the second agent goes on with the event.
    a.lines.clear();
    let (first, second) = std::thread::scope(|s| {
        let flood = s.spawn(|| lab.syn_flood(FLOOD, 8.0));
        a.phase("start", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let first = a.lines.clone();
        // SIGTERM: the first agent writes its state as it stops.
        a.terminate()
            .unwrap_or_else(|e| panic!("stopping the first agent: {e:#}"));
        let mut b = AttackWatch::start(&agent_binary(), &netns, &args(&state_dir))
            .unwrap_or_else(|e| panic!("second agent: {e:#}"));
        let _ = flood.join();
        b.phase("end", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"));
        (first, std::mem::take(&mut b.lines))
    });
    let summary = judge_restart(&first, &second).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("restart: {summary}");
}
