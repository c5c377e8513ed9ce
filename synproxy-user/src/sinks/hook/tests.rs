//! The sink with real commands: one run per namespace at a time in order,
//! namespaces in parallel, bounded queues, and the exit deadline.

use super::dispatch::{Logger, QUEUE_PER_NETNS};
use super::runner_tests::{event, hook, script};
use super::HookSink;
use crate::analysis::attack::{AttackEvent, AttackPhase};
use crate::sinks::Sink;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Lines = Arc<Mutex<Vec<(log::Level, String)>>>;

fn collector() -> (Logger, Lines) {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let log: Logger = Arc::new(move |level, line| sink.lock().unwrap().push((level, line)));
    (log, lines)
}

/// Polls until `check` holds (generous deadline).
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A hook that logs its begin and end to DIR/log, and in namespace `a`
/// waits for DIR/release in between.
fn gated_hook(dir: &Path) -> std::path::PathBuf {
    let d = dir.display();
    script(
        dir,
        "hook",
        &format!(
            "echo \"begin $SYNPROXY_ATTACK_NETNS $SYNPROXY_ATTACK_PHASE $SYNPROXY_ATTACK_START_NS\" >> {d}/log\n\
             if [ \"$SYNPROXY_ATTACK_NETNS\" = a ]; then while [ ! -e {d}/release ]; do sleep 0.02; done; fi\n\
             echo \"end $SYNPROXY_ATTACK_NETNS $SYNPROXY_ATTACK_PHASE $SYNPROXY_ATTACK_START_NS\" >> {d}/log"
        ),
    )
}

fn send(sink: &mut HookSink, ev: AttackEvent) {
    sink.attack(&Arc::new(ev)).unwrap();
}

#[test]
fn one_run_per_namespace_in_order_and_namespaces_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let (log, lines) = collector();
    let program = gated_hook(dir.path());
    let mut sink = HookSink::start_logging(hook(program, Duration::from_secs(60)), log).unwrap();
    send(&mut sink, event("a", AttackPhase::Start, 1));
    send(&mut sink, event("a", AttackPhase::Ongoing, 1));
    send(&mut sink, event("a", AttackPhase::End, 1));
    send(&mut sink, event("b", AttackPhase::Start, 2));
    send(&mut sink, event("b", AttackPhase::End, 2));
    let log_file = dir.path().join("log");
    // b's start and end both ran while a's start is held...
    wait_until("b's end", || read(&log_file).contains("end b end 2"));
    let so_far = read(&log_file);
    assert!(so_far.contains("begin a start 1"), "{so_far}");
    // ...and a's end waits for a's start.
    assert!(!so_far.contains("a end"), "{so_far}");
    std::fs::write(dir.path().join("release"), "").unwrap();
    wait_until("a's end", || read(&log_file).contains("end a end 1"));
    let a: Vec<String> = read(&log_file)
        .lines()
        .filter(|l| l.contains(" a "))
        .map(String::from)
        .collect();
    assert_eq!(
        a,
        [
            "begin a start 1",
            "end a start 1",
            "begin a end 1",
            "end a end 1"
        ]
    );
    sink.finish(Instant::now() + Duration::from_secs(10))
        .unwrap();
    // The ongoing document ran nothing; successes are logged at debug only.
    assert_eq!(read(&log_file).lines().count(), 8);
    let lines = lines.lock().unwrap();
    assert!(
        lines.iter().all(|(level, _)| *level == log::Level::Debug),
        "{lines:?}"
    );
}

#[test]
fn a_full_namespace_queue_drops_the_oldest_start_with_its_end_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let (log, lines) = collector();
    let program = gated_hook(dir.path());
    let mut sink = HookSink::start_logging(hook(program, Duration::from_secs(60)), log).unwrap();
    let log_file = dir.path().join("log");
    send(&mut sink, event("a", AttackPhase::Start, 100));
    wait_until("the first run", || {
        read(&log_file).contains("begin a start 100")
    });
    // Eight starts fill the queue; two more push out the two oldest.
    for start in 1..=QUEUE_PER_NETNS as u64 + 2 {
        send(&mut sink, event("a", AttackPhase::Start, start));
    }
    // The ends of the dropped starts are dropped too.
    send(&mut sink, event("a", AttackPhase::End, 1));
    send(&mut sink, event("a", AttackPhase::End, 2));
    std::fs::write(dir.path().join("release"), "").unwrap();
    wait_until("the last run", || {
        read(&log_file).contains("end a start 10")
    });
    sink.finish(Instant::now() + Duration::from_secs(10))
        .unwrap();
    let ran = read(&log_file);
    assert!(!ran.contains(" 1\n") && !ran.contains(" 2\n"), "{ran}");
    assert!(ran.contains("end a start 10"), "{ran}");
    let lines = lines.lock().unwrap();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|(level, _)| *level == log::Level::Warn)
        .map(|(_, line)| line)
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(
        warnings[0],
        "hook: namespace \"a\" has 8 events waiting behind its running hook; dropped the oldest waiting start (attack a/syn_flood/443/1) and its end (further drops are counted until its queue empties)"
    );
    assert_eq!(
        warnings[1],
        "hook: namespace \"a\": 2 events dropped while its queue was full"
    );
}

#[test]
fn finish_kills_what_runs_at_the_deadline_and_counts_what_did_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (log, lines) = collector();
    let d = dir.path().display();
    let program = script(dir.path(), "slow", &format!("touch {d}/running\nsleep 30"));
    let mut sink = HookSink::start_logging(hook(program, Duration::from_secs(60)), log).unwrap();
    send(&mut sink, event("a", AttackPhase::Start, 1));
    send(&mut sink, event("a", AttackPhase::End, 1));
    wait_until("the hook", || dir.path().join("running").exists());
    let started = Instant::now();
    sink.finish(Instant::now() + Duration::from_millis(300))
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let lines = lines.lock().unwrap();
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].contains(
            "for attack a/syn_flood/443/1 (start) was still running at the agent's exit after"
        ),
        "{text:?}"
    );
    assert_eq!(
        text[1],
        "hook: 1 queued run(s) not started: the agent exits"
    );
}
