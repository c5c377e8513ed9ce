//! The attack detector's cost at the agent's limits: 2,048 namespaces, each
//! with its two namespace subjects and every one of its port subjects busy
//! (the bound), stepped as the agent steps them between rounds (every
//! 250 ms: the namespace's totals, then its ports) through more than the
//! 60 learning buckets a history keeps, so every history is full. Prints
//! the heap the detectors hold (a counting global allocator) per namespace
//! and in all, and the time of one tick over all namespaces; fails above
//! the figures docs/attacks.md gives.
//!
//! `cargo bench -p synproxy-user --bench attack_detector`
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use synproxy_user::analysis::attack::detector::{
    NamespaceDetector, Scope, SubjectKey, MAX_PORT_SUBJECTS,
};
use synproxy_user::analysis::attack::subject::Params;
use synproxy_user::analysis::attack::AttackKind;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            CURRENT.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NAMESPACES: usize = 2048;
/// docs/attacks.md: the detectors of 2,048 busy namespaces stay under this.
const HEAP_LIMIT: usize = 24 << 20;
/// ... and one tick over all of them under this (ms, optimised build).
const TICK_LIMIT_MS: f64 = 50.0;

fn main() {
    let p = Params {
        bucket_secs: 1.0,
        warmup_secs: 0.0,
        ..Params::default()
    };
    let before = CURRENT.load(Ordering::Relaxed);
    let mut detectors: Vec<NamespaceDetector> = (0..NAMESPACES)
        .map(|_| NamespaceDetector::default())
        .collect();
    let ns_events: Vec<(SubjectKey, u64)> = AttackKind::ALL
        .iter()
        .map(|&kind| (SubjectKey { kind, port: None }, 10))
        .collect();
    // Ports busy in both kinds, below any threshold (no attack: every
    // subject learns, the worst case for memory).
    let port_events: Vec<(SubjectKey, u64)> = (0..MAX_PORT_SUBJECTS as u16 / 2)
        .flat_map(|port| {
            AttackKind::ALL.iter().map(move |&kind| {
                (
                    SubjectKey {
                        kind,
                        port: Some(1000 + port),
                    },
                    5,
                )
            })
        })
        .collect();
    let tick_ns = 250_000_000u64;
    let ticks = 4 * 70;
    let mut slowest = 0f64;
    let mut total = 0f64;
    for t in 1..=ticks {
        let now = t * tick_ns;
        let started = Instant::now();
        for d in &mut detectors {
            d.step(now, 0.25, Scope::Namespace, &ns_events, &p);
            d.step(now, 0.25, Scope::Ports, &port_events, &p);
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        slowest = slowest.max(ms);
        total += ms;
    }
    let heap = CURRENT.load(Ordering::Relaxed) - before;
    let subjects: usize = detectors.iter().map(|d| d.subjects.len()).sum();
    println!(
        "attack detector: {NAMESPACES} namespaces, {subjects} subjects with full histories: heap {:.1} MiB ({} bytes per namespace); one tick over all {:.2} ms on average, {:.2} ms at most",
        heap as f64 / f64::from(1 << 20),
        heap / NAMESPACES,
        total / ticks as f64,
        slowest
    );
    assert_eq!(subjects, NAMESPACES * (2 + MAX_PORT_SUBJECTS));
    assert!(heap <= HEAP_LIMIT, "heap {heap} above {HEAP_LIMIT}");
    let average = total / ticks as f64;
    assert!(
        average <= TICK_LIMIT_MS,
        "a tick takes {average:.2} ms, above {TICK_LIMIT_MS}"
    );
}
