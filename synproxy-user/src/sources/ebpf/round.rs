//! Each round's reads of the shared maps: the per-namespace counts around
//! /proc reads, the peak-rate buckets, probe and recursion misses and the
//! kernel-side diagnostics.

use super::kprobe_events::{self};
use super::ns_slots::{read_counts, FamilyCounts, NoSlot, NsKey, NsSlots};
use super::probes::{COUNTING_PROGRAMS, FENTRY_COUNTING_PROGRAMS};
use super::prog_info::bpf_stats_enabled;
use super::{EbpfRound, EbpfSource, ProbeType, Shared, PROBES};
use log::warn;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use synproxy_common::{
    diag, COUNTER_COUNT, NS_SLOTS, NS_STATS_RATES_U32, NS_STATS_U32S, RATE_RING,
};

/// Read access to the per-namespace counts, usable from the netns reader threads.
pub struct CountsView<'a> {
    pub(super) shared: &'a Shared,
    pub(super) slots: &'a Mutex<NsSlots>,
}

impl CountsView<'_> {
    /// The namespace's counts per family and counter (memory reads, no
    /// syscall). A namespace read for the first time gets a slot here, so its
    /// events count from now on; None if no slot is free.
    pub fn get(&self, ns: NsKey) -> Option<FamilyCounts> {
        let mut slots = lock(self.slots);
        let assigned = slots.slot(
            ns,
            self.shared.table.u64s(),
            self.shared.stats.u64s(),
            Instant::now(),
        );
        match assigned {
            Ok(slot) => Some(read_counts(self.shared.stats.u64s(), slot)),
            Err(NoSlot::Full) => {
                if slots.first_refusal(ns) {
                    warn!(
                        "eBPF: no room to count namespace inode {} ({} namespaces tracked, at most {NS_SLOTS}): it is reported from /proc only",
                        ns.0,
                        slots.len()
                    );
                }
                None
            }
            Err(NoSlot::BadKey) => None,
        }
    }
}

fn lock(slots: &Mutex<NsSlots>) -> MutexGuard<'_, NsSlots> {
    // The table stays consistent whatever a panicking holder did: each entry
    // is published by one store.
    slots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EbpfSource {
    /// Folds the completed rate buckets into the round's peaks, zeroes them and
    /// hands their ring entries to the buckets ahead (`RATE_TAGS`). Called
    /// every [`synproxy_common::RATE_DRAIN_BUCKETS`] buckets and at each round;
    /// a drain later than the ring allows loses events from the peaks only
    /// (counted as `rate_late_events`). Drains the event log too.
    pub fn drain_rates(&mut self) {
        self.drain_log();
        // A program that read the clock just before a bucket ended adds a
        // moment later: buckets are drained once they ended a while ago.
        let current = monotonic_ns().saturating_sub(DRAIN_MARGIN_NS) / self.rate_res_ns;
        let ring = u64::from(RATE_RING);
        let rates = self.shared.stats.u32s();
        let slots = lock(&self.slots);
        let first = self.last_drained.saturating_add(1);
        let last = current.min(self.last_drained.saturating_add(ring + 1));
        for bucket in first..last {
            let idx = (bucket % ring) as usize;
            for (ns, slot) in slots.assigned() {
                let base = slot as usize * NS_STATS_U32S + NS_STATS_RATES_U32;
                let mut events = [[0u64; COUNTER_COUNT]; 2];
                let mut any = false;
                for (f, family) in events.iter_mut().enumerate() {
                    for (c, n) in family.iter_mut().enumerate() {
                        let at = base + (f * COUNTER_COUNT + c) * RATE_RING as usize + idx;
                        if let Some(v) = rates.get(at) {
                            *n = u64::from(v.swap(0, Ordering::AcqRel));
                            any |= *n > 0;
                        }
                    }
                }
                if any {
                    let window = self.window.entry(ns).or_default();
                    for (c, n) in window.iter_mut().enumerate() {
                        *n = n.saturating_add(events[0][c] + events[1][c]);
                    }
                    let peak = self.peaks.entry(ns).or_default();
                    for f in 0..2 {
                        for c in 0..COUNTER_COUNT {
                            peak[f][c] = peak[f][c].max(events[f][c]);
                        }
                    }
                }
            }
        }
        drop(slots);
        self.window_buckets += last.saturating_sub(first);
        // Each ring entry counts the first bucket not drained yet that maps to it.
        for (idx, tag) in self.shared.tags.u64s().iter().enumerate() {
            let idx = idx as u64;
            let ahead = (idx + ring - current % ring) % ring;
            tag.store(current + ahead, Ordering::Release);
        }
        self.last_drained = current.saturating_sub(1);
    }

    /// The round's peaks, losses, probe stats and diagnostics; releases the
    /// slots of namespaces not in `keep` (gone, or not reported). None when
    /// the probes are not attached.
    pub fn read_round(&mut self, keep: &HashSet<NsKey>) -> Option<EbpfRound> {
        self.attached.as_ref()?;
        self.drain_rates();
        let mut round = EbpfRound {
            peaks: std::mem::take(&mut self.peaks),
            map_bytes: self.map_bytes,
            ..Default::default()
        };
        // kprobe_profile counts kprobe hits and misses; fentry programs
        // have no such counts (their skipped runs are recursion misses).
        if let (ProbeType::Kprobe, Some(tracefs)) = (self.active, self.tracefs.as_ref()) {
            let profile = tracefs.profile().unwrap_or_default();
            for spec in PROBES {
                let stats = profile
                    .get(&kprobe_events::event_name(&self.token, spec.short))
                    .copied()
                    .unwrap_or_default();
                round.probes.push((spec.short, stats));
            }
        }
        round.probe_type = self.active;
        for (slot, value) in self.shared.diag.u64s().iter().enumerate() {
            if let Some(out) = round.diag.get_mut(slot) {
                *out = value.load(Ordering::Acquire);
            }
        }
        let infos = self.program_infos();
        round.program_recursion = infos
            .iter()
            .map(|(n, i)| (*n, i.recursion_misses))
            .collect();
        round.recursion_misses = round.program_recursion.iter().map(|(_, n)| n).sum();
        if bpf_stats_enabled() {
            round.program_runs = infos
                .iter()
                .map(|(n, i)| (*n, i.run_time_ns, i.run_cnt))
                .collect();
        }
        let counting: &[&str] = match self.active {
            ProbeType::Kprobe => &COUNTING_PROGRAMS,
            ProbeType::Fentry => &FENTRY_COUNTING_PROGRAMS,
        };
        let recursion_counting: u64 = round
            .program_recursion
            .iter()
            .filter(|(name, _)| counting.contains(name))
            .map(|(_, n)| n)
            .sum();

        let delta = |now: u64, before: u64| now.saturating_sub(before);
        let missed = round.probes.iter().map(|(_, s)| s.missed).sum::<u64>();
        let d = |slot: u32| delta(round.diag[slot as usize], self.last_diag[slot as usize]);
        round.global_losses = delta(missed, self.last_missed)
            + delta(recursion_counting, self.last_recursion)
            + d(diag::ACK_RETURN_UNMATCHED)
            + d(diag::READ_FAILED);
        let rate_late = d(diag::RATE_LATE);
        if rate_late > 0 {
            warn!("eBPF: the agent drained the peak-rate buckets late: {rate_late} events missing from this interval's peak rates");
        }
        self.last_missed = missed;
        self.last_recursion = recursion_counting;
        self.last_diag = round.diag;

        round.sources = self.read_sources();
        round.ports = self.read_ports();
        self.prune(keep);
        Some(round)
    }

    /// The events of the rate buckets completed since the last call, per
    /// namespace (with any) and counter, both families summed, and the time
    /// those buckets cover: the detector's step between rounds. Drains first.
    pub fn take_window(&mut self) -> (HashMap<NsKey, [u64; COUNTER_COUNT]>, Duration) {
        self.drain_rates();
        let buckets = std::mem::take(&mut self.window_buckets);
        let covered = Duration::from_nanos(self.rate_res_ns.saturating_mul(buckets));
        (std::mem::take(&mut self.window), covered)
    }

    fn prune(&mut self, keep: &HashSet<NsKey>) {
        lock(&self.slots).release_except(keep, self.shared.table.u64s(), Instant::now());
    }

    pub fn rate_resolution(&self) -> Duration {
        Duration::from_nanos(self.rate_res_ns)
    }

    /// Whether the probes log events (per-source or per-port counting on),
    /// which the agent must drain often.
    pub fn logs_events(&self) -> bool {
        self.log.is_some()
    }
}

/// How long after its end a rate bucket is drained.
const DRAIN_MARGIN_NS: u64 = 1_000_000;

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
