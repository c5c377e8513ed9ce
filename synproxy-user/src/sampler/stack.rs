//! The TCP stack's and conntrack's files of a round: read per namespace
//! beside the SYNPROXY file ([`StackReader`]), parsed, turned into totals
//! (wraps and resets, [`RowTracker`] and [`SumTracker`]) and into the
//! round's [`StackSample`]s. A file that cannot be read (nf_conntrack not
//! loaded) is logged once, retried every round and logged again when it
//! is back; it does not fail the round.

use super::*;
use crate::reconcile::row_tracker::{RowTracker, SumTracker};
use crate::sample::{ConntrackSample, StackSample};
use crate::sources::proc::conntrack_stat::{self, COLUMNS, COLUMN_COUNT, ENTRIES};
use crate::sources::proc::netns::{FileRead, StackFile, StackReadError};
use crate::sources::proc::tcp_counters::{self, Kind, StackField, NETSTAT_FIELDS, SNMP_FIELDS};

/// Which stack sources are on (`--no-nstat`, `--no-conntrack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackSources {
    /// `/proc/net/netstat` and `/proc/net/snmp` (the `nstat` lines).
    pub nstat: bool,
    /// `/proc/net/stat/nf_conntrack`, `nf_conntrack_count` and `_max`.
    pub conntrack: bool,
}

impl StackSources {
    pub fn files(self) -> Vec<StackFile> {
        StackFile::ALL
            .into_iter()
            .filter(|f| match f {
                StackFile::Netstat | StackFile::Snmp => self.nstat,
                _ => self.conntrack,
            })
            .collect()
    }
}

/// Per-namespace trackers of the stack sources.
#[derive(Debug, Default)]
pub(super) struct StackSeries {
    netstat: SumTracker<{ NETSTAT_FIELDS.len() }>,
    snmp: SumTracker<{ SNMP_FIELDS.len() }>,
    conntrack: RowTracker<COLUMN_COUNT>,
    /// Read this round.
    seen: bool,
}

type FileResults = Vec<(StackFile, Result<FileRead, StackReadError>)>;

impl Sampler {
    /// Reads the stack files of this round's namespaces (`targets`, or the
    /// agent's own with `None`) into `round.stack`.
    /// Reads the stack files of `targets` (`None`: the agent's own
    /// namespace) into `round.stack`; returns each series' index there.
    pub(super) fn read_stack(
        &mut self,
        targets: Option<&[NetnsTarget]>,
        round: &mut Snapshot,
    ) -> HashMap<SeriesKey, usize> {
        let mut index = HashMap::new();
        let wanted = self.config.stack.files();
        if wanted.is_empty() {
            return index;
        }
        let proc_root = self.config.proc_root.clone();
        match targets {
            None => {
                let files = self.stack_reader.read_own(&wanted, &proc_root);
                if let Some(sample) = self.stack_sample(SeriesKey::Own, "", files) {
                    index.insert(SeriesKey::Own, round.stack.len());
                    round.stack.push(sample);
                }
            }
            Some(targets) => {
                let results = self.stack_reader.read(targets, &proc_root, &wanted);
                for (target, result) in targets.iter().zip(results) {
                    match result {
                        Ok(ns) => {
                            let key = SeriesKey::Netns(ns.id);
                            if let Some(sample) = self.stack_sample(key, &target.label, ns.files) {
                                index.insert(key, round.stack.len());
                                round.stack.push(sample);
                            }
                        }
                        // The SYNPROXY reading of the round reports why a
                        // namespace could not be entered.
                        Err(e) => debug!("{e} (stack counters)"),
                    }
                }
            }
        }
        self.stack_reader.end_round();
        self.stack_series.retain(|_, s| std::mem::take(&mut s.seen));
        index
    }

    fn stack_sample(
        &mut self,
        key: SeriesKey,
        label: &str,
        files: FileResults,
    ) -> Option<StackSample> {
        let mut series = self.stack_series.remove(&key).unwrap_or_default();
        series.seen = true;
        let mut sample = StackSample {
            netns: (key != SeriesKey::Own).then(|| label.to_string()),
            netstat: None,
            snmp: None,
            conntrack: None,
        };
        let mut conntrack = ConntrackSample {
            count: None,
            max: None,
            stats: None,
        };
        for (file, result) in files {
            let read = match result {
                Ok(read) => read,
                Err(e) => {
                    if e.is_missing() {
                        match file {
                            StackFile::Netstat => series.netstat.counters_gone(),
                            StackFile::Snmp => series.snmp.counters_gone(),
                            StackFile::ConntrackStat => series.conntrack.counters_gone(),
                            _ => {}
                        }
                    }
                    self.stack_failed(label, file, e.to_string());
                    continue;
                }
            };
            let parsed =
                match file {
                    StackFile::Netstat => tcp_fields(&NETSTAT_FIELDS, &mut series.netstat, &read)
                        .map(|v| sample.netstat = Some(v)),
                    StackFile::Snmp => tcp_fields(&SNMP_FIELDS, &mut series.snmp, &read)
                        .map(|v| sample.snmp = Some(v)),
                    StackFile::ConntrackStat => conntrack_stats(&mut series.conntrack, &read)
                        .map(|v| conntrack.stats = Some(v)),
                    StackFile::ConntrackCount => conntrack_stat::parse_sysctl(&read.bytes)
                        .map(|v| conntrack.count = Some(v))
                        .map_err(|e| e.to_string()),
                    StackFile::ConntrackMax => conntrack_stat::parse_sysctl(&read.bytes)
                        .map(|v| conntrack.max = Some(v))
                        .map_err(|e| e.to_string()),
                };
            let path = self.config.proc_root.join(file.relative());
            match parsed {
                Ok(()) => self.stack_recovered(label, file),
                Err(e) => self.stack_failed(label, file, format!("{}: {e}", path.display())),
            }
        }
        if conntrack.count.is_some() || conntrack.max.is_some() || conntrack.stats.is_some() {
            sample.conntrack = Some(conntrack);
        }
        self.stack_series.insert(key, series);
        let any = sample.netstat.is_some() || sample.snmp.is_some() || sample.conntrack.is_some();
        any.then_some(sample)
    }

    fn stack_failed(&mut self, label: &str, file: StackFile, message: String) {
        let message = if label.is_empty() {
            message
        } else {
            format!("netns {label}: {message}")
        };
        let key = (label.to_string(), file);
        if self.stack_failing.get(&key) != Some(&message) {
            warn!("{message}; retrying every interval");
            self.stack_failing.insert(key, message);
        }
    }

    fn stack_recovered(&mut self, label: &str, file: StackFile) {
        if self
            .stack_failing
            .remove(&(label.to_string(), file))
            .is_some()
        {
            let name = if label.is_empty() {
                String::new()
            } else {
                format!("netns {label}: ")
            };
            info!("{name}{} readable again", file.relative());
        }
    }

    /// Forgets the logged failures of namespaces no longer selected.
    pub(super) fn forget_stack_failures(&mut self, targets: &[NetnsTarget]) {
        if self.stack_failing.is_empty() {
            return;
        }
        let labels: HashSet<&str> = targets.iter().map(|t| t.label.as_str()).collect();
        self.stack_failing
            .retain(|(label, _), _| label.is_empty() || labels.contains(label.as_str()));
    }
}

/// Parses a netstat or snmp file and tracks its counters; gauges as read.
/// The namespaces whose stack files are read this round. With `--netns
/// all`, only those where SYNPROXY has counted something (any counter above
/// 0): on a host with many namespaces the TCP stack's files cost the kernel
/// about 40 us each per round (docs/performance.md), and a namespace
/// SYNPROXY never worked in is not the agent's to judge. With `--netns NAME`
/// or without `--netns`, every namespace is read.
pub(super) fn stack_targets(
    all: bool,
    targets: Vec<NetnsTarget>,
    counted: &HashSet<&str>,
) -> Vec<NetnsTarget> {
    if !all {
        return targets;
    }
    targets
        .into_iter()
        .filter(|t| counted.contains(t.label.as_str()))
        .collect()
}

fn tcp_fields<const N: usize>(
    fields: &'static [StackField; N],
    tracker: &mut SumTracker<N>,
    read: &FileRead,
) -> Result<Vec<(&'static StackField, u64)>, String> {
    let values = tcp_counters::parse(&read.bytes, fields).map_err(|e| e.to_string())?;
    let counters: [u64; N] = std::array::from_fn(|i| match fields[i].kind {
        Kind::Counter => values[i].unwrap_or(0),
        Kind::Gauge => 0,
    });
    if read.recreated {
        tracker.counters_gone();
    }
    let (totals, _) = tracker.update(read.identity, &counters);
    Ok(fields
        .iter()
        .zip(values)
        .enumerate()
        .filter_map(|(i, (field, value))| {
            let value = value?;
            Some((
                field,
                if field.kind == Kind::Gauge {
                    value
                } else {
                    totals[i]
                },
            ))
        })
        .collect())
}

/// Parses conntrack's statistics and sums them over CPUs into totals;
/// `entries` (the table size on every row) as read.
fn conntrack_stats(
    tracker: &mut RowTracker<COLUMN_COUNT>,
    read: &FileRead,
) -> Result<Vec<(&'static str, u64)>, String> {
    let stat = conntrack_stat::parse(&read.bytes).map_err(|e| e.to_string())?;
    let rows: Vec<[u32; COLUMN_COUNT]> = stat
        .cpus
        .iter()
        .map(|row| {
            let mut row = *row;
            row[ENTRIES] = 0;
            row
        })
        .collect();
    if read.recreated {
        tracker.counters_gone();
    }
    let (totals, _) = tracker.update(read.identity, &rows);
    Ok(COLUMNS
        .iter()
        .enumerate()
        .filter(|(i, _)| stat.present[*i])
        .map(|(i, name)| {
            let value = if i == ENTRIES {
                stat.entries().map_or(0, u64::from)
            } else {
                totals[i]
            };
            (*name, value)
        })
        .collect())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sources::ebpf::Stop;
    use std::fs;

    fn sampler(proc_root: &std::path::Path, stack: StackSources) -> Sampler {
        sampler_with(proc_root, stack, None)
    }

    /// A sampler of the own namespace under the fake `proc_root`.
    pub(in crate::sampler) fn sampler_with(
        proc_root: &std::path::Path,
        stack: StackSources,
        verdict: Option<VerdictParams>,
    ) -> Sampler {
        Sampler::new(SamplerConfig {
            once: false,
            proc_root: proc_root.into(),
            netns_dir: "/nonexistent-netns-dir".into(),
            selection: NetnsSelection::Own,
            ebpf: None,
            ebpf_off: None,
            stop: Arc::new(Stop::default()),
            top: crate::ranking::TopConfig {
                n: 0,
                prefix_v4: 32,
                prefix_v6: 128,
                map_entries: synproxy_common::SOURCES_DEFAULT_ENTRIES,
                ..Default::default()
            },
            stack,
            verdict,
            attacks: None,
        })
    }

    pub(in crate::sampler) fn write(root: &std::path::Path, file: StackFile, text: &str) {
        let path = root.join(file.relative());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn value(fields: &[(&'static StackField, u64)], name: &str) -> Option<u64> {
        fields.iter().find(|(f, _)| f.name == name).map(|(_, v)| *v)
    }

    const CT_HEADER: &str = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n";

    fn ct_row(entries: u32, invalid: u32, drop: u32) -> String {
        format!("{entries:08x}  00000000 00000000 00000000 {invalid:08x} 00000000 00000000 00000000 00000000 00000000 {drop:08x} 00000000 00000000  00000000 00000000 00000000 00000000\n")
    }

    #[test]
    fn stack_counters_are_totals_gauges_are_levels_and_a_missing_module_is_no_failure() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            StackFile::Netstat,
            "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 5 1\n",
        );
        write(
            root,
            StackFile::Snmp,
            "Tcp: MaxConn ActiveOpens CurrEstab\nTcp: -1 10 3\n",
        );
        write(
            root,
            StackFile::ConntrackStat,
            &format!(
                "{CT_HEADER}{}{}",
                ct_row(7, 1, 2),
                ct_row(7, 4, 0xffff_fff0)
            ),
        );
        write(root, StackFile::ConntrackCount, "7\n");
        write(root, StackFile::ConntrackMax, "262144\n");
        let all = StackSources {
            nstat: true,
            conntrack: true,
        };
        let mut s = sampler(root, all);
        let round = s.sample();
        let [stack] = &round.stack[..] else {
            panic!("{:?}", round.stack)
        };
        assert_eq!(stack.netns, None);
        let netstat = stack.netstat.as_ref().unwrap();
        assert_eq!(value(netstat, "SyncookiesSent"), Some(5));
        assert_eq!(value(netstat, "TCPReqQFullDrop"), None, "not in this file");
        let snmp = stack.snmp.as_ref().unwrap();
        assert_eq!(value(snmp, "ActiveOpens"), Some(10));
        assert_eq!(value(snmp, "CurrEstab"), Some(3));
        let ct = stack.conntrack.as_ref().unwrap();
        assert_eq!((ct.count, ct.max), (Some(7), Some(262_144)));
        let stats = ct.stats.as_ref().unwrap();
        let stat = |name: &str| stats.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(stat("entries"), Some(7), "a gauge, not 14");
        assert_eq!(stat("invalid"), Some(5));
        assert_eq!(stat("drop"), Some(0xffff_fff2));
        assert_eq!(stat("searched"), None, "this header has clashres instead");

        // Next round: a CPU's drop wraps, the gauge falls, a counter goes
        // back (new counters): totals go on, never down.
        write(
            root,
            StackFile::Netstat,
            "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 2 1\n",
        );
        write(
            root,
            StackFile::Snmp,
            "Tcp: MaxConn ActiveOpens CurrEstab\nTcp: -1 12 0\n",
        );
        write(
            root,
            StackFile::ConntrackStat,
            &format!("{CT_HEADER}{}{}", ct_row(3, 1, 2), ct_row(3, 4, 0x10)),
        );
        let round = s.sample();
        let stack = &round.stack[0];
        assert_eq!(
            value(stack.netstat.as_ref().unwrap(), "SyncookiesSent"),
            Some(7)
        );
        assert_eq!(value(stack.snmp.as_ref().unwrap(), "ActiveOpens"), Some(12));
        assert_eq!(value(stack.snmp.as_ref().unwrap(), "CurrEstab"), Some(0));
        let stats = stack.conntrack.as_ref().unwrap().stats.as_ref().unwrap();
        let stat = |name: &str| stats.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(stat("drop"), Some(0xffff_fff2 + 0x20));
        assert_eq!(stat("entries"), Some(3));

        // nf_conntrack unloaded: logged once, retried, not a failed round.
        for file in [
            StackFile::ConntrackStat,
            StackFile::ConntrackCount,
            StackFile::ConntrackMax,
        ] {
            fs::remove_file(root.join(file.relative())).unwrap();
        }
        for _ in 0..2 {
            let round = s.sample();
            assert!(round.stack[0].conntrack.is_none());
            assert!(round.stack[0].netstat.is_some());
            assert!(round.failures.iter().all(|f| !f.contains("nf_conntrack")));
        }
        assert_eq!(s.stack_failing.len(), 3);
        // Back: a new baseline (the file was gone), no longer failing.
        write(
            root,
            StackFile::ConntrackStat,
            &format!("{CT_HEADER}{}", ct_row(1, 1, 1)),
        );
        write(root, StackFile::ConntrackCount, "1\n");
        write(root, StackFile::ConntrackMax, "262144\n");
        let round = s.sample();
        let stats = round.stack[0]
            .conntrack
            .as_ref()
            .unwrap()
            .stats
            .as_ref()
            .unwrap();
        assert!(
            stats.contains(&("drop", 0xffff_fff2 + 0x20 + 1)),
            "{stats:?}"
        );
        assert!(s.stack_failing.is_empty());

        // Each source can be turned off.
        let mut s = sampler(
            root,
            StackSources {
                nstat: false,
                conntrack: true,
            },
        );
        let round = s.sample();
        assert!(round.stack[0].netstat.is_none() && round.stack[0].snmp.is_none());
        assert!(round.stack[0].conntrack.is_some());
        let mut s = sampler(root, StackSources::default());
        assert!(s.sample().stack.is_empty());
    }

    #[test]
    fn a_hostile_file_is_one_logged_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), StackFile::Snmp, "Tcp: InSegs\nTcp: 1 2\n");
        let mut s = sampler(
            dir.path(),
            StackSources {
                nstat: true,
                conntrack: false,
            },
        );
        let round = s.sample();
        assert!(round.stack.is_empty());
        let message = s
            .stack_failing
            .values()
            .find(|m| m.contains("net/snmp"))
            .unwrap();
        assert!(
            message.ends_with(
                "net/snmp: line 2: invalid number of columns in data, expected 1 found 2"
            ),
            "{message}"
        );
    }

    #[test]
    fn with_netns_all_only_namespaces_synproxy_counted_in_are_read() {
        let target = |label: &str| NetnsTarget {
            label: label.to_string(),
            handle: format!("/run/netns/{label}").into(),
            transient: false,
            expected: None,
        };
        let targets = || vec![target("busy"), target("quiet"), target("new")];
        let counted: HashSet<&str> = ["busy"].into();
        let labels =
            |t: Vec<NetnsTarget>| -> Vec<String> { t.into_iter().map(|t| t.label).collect() };
        assert_eq!(labels(stack_targets(true, targets(), &counted)), ["busy"]);
        assert_eq!(
            labels(stack_targets(false, targets(), &counted)),
            ["busy", "quiet", "new"]
        );
    }
}
