//! Reading the namespaces of a round: the agent's own, the selected or
//! discovered others, their failures, the per-CPU rows turned into
//! totals (wraps and resets), the eBPF bracket around each read, and the
//! ageing of series not found.

use super::*;

impl Sampler {
    pub(super) fn read_own(&mut self, round: &mut Snapshot) -> Vec<Read> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut file = std::mem::replace(&mut self.own_file, KeptStat::new(PathBuf::new()));
        let result = {
            let around = self.around();
            netns::read_own(&mut file, self.own_id, &around, &mut buf)
        };
        self.own_file = file;
        self.buf = buf;
        let name = std::mem::take(&mut self.own_name);
        let reads = match result {
            Ok((id, before, reading, after)) => {
                let read = self.track(SeriesKey::Own, &name, "", reading);
                vec![Read {
                    ebpf_key: id.map(|id| id.ebpf_key()),
                    before,
                    after,
                    ..read
                }]
            }
            Err(e) => {
                if matches!(e, ReadError::Missing { .. }) {
                    if let Some(series) = self.series.get_mut(&SeriesKey::Own) {
                        series.tracker.counters_gone();
                    }
                }
                self.fail("", e.to_string(), round);
                Vec::new()
            }
        };
        self.own_name = name;
        reads
    }

    pub(super) fn read_namespaces(
        &mut self,
        targets: &[NetnsTarget],
        round: &mut Snapshot,
    ) -> Vec<Read> {
        let mut reader = std::mem::take(&mut self.reader);
        let results = {
            let around = self.around();
            reader.read(targets, &self.config.proc_root, &around)
        };
        self.reader = reader;
        // Failures of namespaces no longer selected go with them (their
        // recovery cannot be seen), so the map stays bounded under churn.
        if !self.failing.is_empty() {
            let labels: HashSet<&str> = targets.iter().map(|t| t.label.as_str()).collect();
            self.failing
                .retain(|label, _| label.starts_with('\0') || labels.contains(label.as_str()));
        }
        let mut reads = Vec::with_capacity(targets.len());
        for (target, result) in targets.iter().zip(results) {
            match result {
                Ok(ns) => {
                    let key = SeriesKey::Netns(ns.id);
                    let name = format!("netns {}", target.label);
                    let read = self.track(key, &name, &target.label, ns.reading);
                    reads.push(Read {
                        target: Some(target.clone()),
                        ebpf_key: Some(ns.id.ebpf_key()),
                        before: ns.before,
                        after: ns.after,
                        ..read
                    });
                }
                Err(e) if target.transient && e.is_vanished() => {
                    debug!("{e} (process exited during the scan)");
                }
                Err(e) => {
                    if let NetnsError::Read { id, source, .. } = &e {
                        // The namespace is there (it was entered), its file is
                        // not: it is not "gone", and a missing file means its
                        // counters were destroyed (module unloaded).
                        self.present_failing.insert(SeriesKey::Netns(*id));
                        if let (ReadError::Missing { .. }, Some(series)) =
                            (source, self.series.get_mut(&SeriesKey::Netns(*id)))
                        {
                            series.tracker.counters_gone();
                        }
                    }
                    self.fail(&target.label, e.to_string(), round);
                }
            }
        }
        reads
    }

    /// `--netns all`: processes whose namespace could not be inspected are
    /// never skipped silently (a namespace only they use would go unreported).
    /// For lack of CAP_SYS_PTRACE it is a failure of the round (logged once,
    /// with its recovery); with it, something else (a security module's
    /// policy) refuses, which is logged once as a warning.
    pub(super) fn report_denied(&mut self, found: &netns::Discovery, round: &mut Snapshot) {
        let Some((path, e)) = &found.first_denied else {
            if self.failing.remove(DISCOVERY_LABEL).is_some() {
                info!("--netns all: every process's network namespace can be inspected again");
            }
            return;
        };
        debug!(
            "--netns all: {} processes could not be inspected (first: {}: {e})",
            found.denied,
            path.display()
        );
        let error = std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EACCES));
        if privileges::effective_has(privileges::CAP_SYS_PTRACE) {
            let message = format!(
                "--netns all: {}: {error} even with CAP_SYS_PTRACE (a security policy?); namespaces only such processes use are not reported",
                path.display()
            );
            if !self.failing.contains_key(DENIED_ANYWAY_LABEL) {
                warn!("{message}");
                self.failing
                    .insert(DENIED_ANYWAY_LABEL.to_string(), message);
            }
            return;
        }
        let message = format!(
            "--netns all: cannot inspect the network namespace of other users' processes \
             ({}: {error}); namespaces only they use are not reported: the agent needs CAP_SYS_PTRACE for --netns all",
            self.config.proc_root.join("PID/ns/net").display(),
        );
        self.fail(DISCOVERY_LABEL, message, round);
    }

    fn fail(&mut self, label: &str, message: String, round: &mut Snapshot) {
        if self.config.once {
            log::error!("{message}");
        } else if self.failing.get(label) != Some(&message) {
            warn!("{message}; retrying every interval");
            self.failing.insert(label.to_string(), message.clone());
        }
        round.failures.push(message);
    }

    /// Feeds a reading to its series' wrap tracker.
    pub(super) fn track(
        &mut self,
        key: SeriesKey,
        name: &str,
        label: &str,
        reading: Reading,
    ) -> Read {
        if self.failing.remove(label).is_some() {
            info!("{name}: synproxy counters readable again");
        }
        let next_id = self.last_series_id + 1;
        let series = self
            .series
            .entry(key)
            .or_insert_with(|| Series::new(next_id, label));
        if series.id == next_id {
            self.last_series_id = next_id;
        }
        let came_back = series.missing_rounds > 0;
        series.missing_rounds = 0;
        if came_back && key != SeriesKey::Own {
            // Its eBPF slot was released when it was not found: the counts
            // start again from zero, so the reconcile learns a new baseline.
            series.reconciler = Reconciler::new();
        }
        if series.label != label {
            info!("netns {}: now labelled {label}", series.label);
            series.label = label.to_string();
        }
        if reading.recreated {
            // The kept file went stale: its counters were destroyed.
            series.tracker.counters_gone();
        }
        let (mut totals, mut update) = series.tracker.update(reading.identity, &reading.stat);
        if let (true, Update::Reset(_), SeriesKey::Netns(id)) = (came_back, update, key) {
            if id.cookie.is_none() {
                // Without netns cookies (before 5.14) an inode can belong to a new
                // namespace: one that returns with restarted counters is one.
                info!("{name}: a new namespace with a reused inode; new series");
                self.last_series_id += 1;
                *series = Series::new(self.last_series_id, label);
                (totals, update) = series.tracker.update(reading.identity, &reading.stat);
            }
        }
        log_update(name, update);
        Read {
            key,
            label: label.to_string(),
            target: None,
            ebpf_key: None,
            before: None,
            after: None,
            totals,
            reset: matches!(update, Update::Reset(_)),
        }
    }

    /// Re-reads namespaces whose /proc totals fell outside their eBPF bracket
    /// (an event held between its probe and its increment): /proc again, then
    /// the eBPF counts again, keeping the first read's lower bound.
    pub(super) fn settle_brackets(&mut self, reads: &mut [Read], generation: u64) {
        for pause in BRACKET_RETRIES {
            let outside: Vec<usize> = (0..reads.len())
                .filter(|&i| !self.bracket_holds(&reads[i], generation))
                .collect();
            if outside.is_empty() {
                return;
            }
            std::thread::sleep(pause);
            for i in outside {
                self.reread(&mut reads[i]);
            }
        }
    }

    fn bracket_holds(&self, read: &Read, generation: u64) -> bool {
        let (Some(before), Some(after)) = (read.before, read.after) else {
            return true;
        };
        self.series.get(&read.key).is_none_or(|series| {
            series.reconciler.consistent(
                &ebpf_vs_proc::proc_counts(&read.totals),
                read.reset,
                &Bracket {
                    generation,
                    before,
                    after,
                },
            )
        })
    }

    fn reread(&mut self, read: &mut Read) {
        let reading = match (&read.target, read.key) {
            (Some(target), _) => {
                let mut reader = std::mem::take(&mut self.reader);
                let results = {
                    let around = self.around();
                    reader.read(
                        std::slice::from_ref(target),
                        &self.config.proc_root,
                        &around,
                    )
                };
                self.reader = reader;
                match results.into_iter().next() {
                    Some(Ok(ns)) if SeriesKey::Netns(ns.id) == read.key => {
                        Some((ns.reading, ns.after))
                    }
                    _ => None,
                }
            }
            (None, SeriesKey::Own) => {
                let mut buf = std::mem::take(&mut self.buf);
                let result = self.own_file.read(&mut buf).ok();
                self.buf = buf;
                result.map(|r| {
                    let after = self.own_id.and_then(|id| self.around()(&id));
                    (r, after)
                })
            }
            _ => None,
        };
        let Some((reading, after)) = reading else {
            return;
        };
        let Some(series) = self.series.get_mut(&read.key) else {
            return;
        };
        if reading.recreated {
            series.tracker.counters_gone();
        }
        let (totals, update) = series.tracker.update(reading.identity, &reading.stat);
        read.totals = totals;
        read.reset |= matches!(update, Update::Reset(_));
        read.after = after;
    }

    /// Series not read this round age; after [`VANISHED_ROUNDS_KEPT`] rounds
    /// they are forgotten, so state stays bounded.
    pub(super) fn age_series(&mut self, reads: &[Read]) {
        let mut seen: HashSet<SeriesKey> = reads.iter().map(|r| r.key).collect();
        seen.extend(self.present_failing.drain());
        self.series.retain(|key, series| {
            if seen.contains(key) {
                series.missing_rounds = 0;
                return true;
            }
            series.missing_rounds += 1;
            if series.missing_rounds == 1 && *key != SeriesKey::Own {
                info!(
                    "netns {}: not found this round, no longer reported",
                    series.label
                );
            }
            series.missing_rounds <= VANISHED_ROUNDS_KEPT
        });
        forget_excess_missing(&mut self.series, self.max_retained);
    }
}

/// Under churn, only the `max` most recently seen of the series not found
/// are kept.
pub(super) fn forget_excess_missing(series: &mut HashMap<SeriesKey, Series>, max: usize) {
    let mut missing: Vec<(u32, SeriesKey)> = series
        .iter()
        .filter(|(_, s)| s.missing_rounds > 0)
        .map(|(k, s)| (s.missing_rounds, *k))
        .collect();
    if missing.len() > max {
        missing.sort_unstable_by_key(|&(rounds, _)| std::cmp::Reverse(rounds));
        for (_, key) in &missing[..missing.len() - max] {
            series.remove(key);
        }
    }
}

fn log_update(name: &str, update: Update) {
    match update {
        Update::Reset(
            reason @ (ResetReason::NewCounters
            | ResetReason::FileWasGone
            | ResetReason::CountersWentBack),
        ) => warn!(
            "{name}: synproxy counters were recreated (module reloaded or namespace replaced; {}); totals continue from a new baseline",
            match reason {
                ResetReason::FileWasGone => "the file was gone",
                ResetReason::NewCounters => "new proc entry",
                _ => "counters went back",
            }
        ),
        Update::Reset(ResetReason::CpuCountChanged { before, after }) => warn!(
            "{name}: CPU rows changed from {before} to {after}; totals continue from a new baseline"
        ),
        Update::Continued { wrapped_cpus } if wrapped_cpus > 0 => {
            debug!("{name}: 32-bit counter wrap on {wrapped_cpus} CPU(s) absorbed")
        }
        _ => {}
    }
}
