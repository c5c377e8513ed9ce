//! The defense verdict of each namespace read this round, kept with its
//! series (so a relabelled namespace keeps its baselines), and one log line
//! each time a namespace's state changes.

use super::*;
use crate::analysis::verdict::readings::readings;
use crate::analysis::verdict::DefenseState;
use crate::sample::{DefenseSample, StackSample};

impl Sampler {
    /// The verdict of `read` (with its stack sample, when read), or `None`
    /// with the verdict off.
    pub(super) fn judge_defense(
        &mut self,
        read: &Read,
        stack: Option<&StackSample>,
        timestamp_ns: u64,
    ) -> Option<DefenseSample> {
        let params = self.config.verdict.as_ref()?;
        let series = self.series.get_mut(&read.key)?;
        let verdict = series
            .verdict
            .observe(timestamp_ns, readings(&read.totals, stack), params);
        if let Some(from) = verdict.changed_from {
            let name = if read.key == SeriesKey::Own {
                self.own_name.as_str()
            } else {
                read.label.as_str()
            };
            let to = verdict.state;
            let why = verdict.reasons_line();
            // Learning ends quietly in calm; anything else is news.
            if from == DefenseState::Learning && to == DefenseState::Calm {
                debug!("{name}: defense calm after learning");
            } else if why.is_empty() {
                info!("{name}: defense {} -> {}", from.name(), to.name());
            } else {
                info!("{name}: defense {} -> {}: {why}", from.name(), to.name());
            }
        }
        Some(DefenseSample {
            series: series.id,
            netns: (read.key != SeriesKey::Own).then(|| read.label.clone()),
            verdict,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::stack::tests::{sampler_with, write};
    use super::*;
    use crate::sources::proc::netns::StackFile;

    const SYNPROXY_HEADER: &str =
        "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n";

    fn round(root: &std::path::Path, syn: u32, listen_drops: u64) {
        let path = root.join("net/stat/synproxy");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            path,
            format!("{SYNPROXY_HEADER}00000000 {syn:08x} 00000000 00000000 00000000 00000000\n"),
        )
        .unwrap();
        write(
            root,
            StackFile::Netstat,
            &format!("TcpExt: SyncookiesSent ListenDrops\nTcpExt: 0 {listen_drops}\n"),
        );
    }

    /// The whole path from the files to the snapshot: SYNPROXY's counter and
    /// the TCP stack's reach the verdict of the same namespace.
    #[test]
    fn each_round_judges_the_namespace_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stack = StackSources {
            nstat: true,
            conntrack: false,
        };
        let params = VerdictParams {
            warmup_secs: 0.0,
            ..VerdictParams::default()
        };
        let mut s = sampler_with(root, stack, Some(params));
        round(root, 0, 0);
        let first = s.sample();
        assert_eq!(first.defense.len(), 1);
        assert_eq!(first.defense[0].verdict.state, DefenseState::Calm);
        // A million SYNs and listen drops since: whatever the round's
        // length, far above both floors.
        round(root, 1_000_000, 1_000_000);
        let second = s.sample();
        let v = &second.defense[0].verdict;
        assert_eq!(v.state, DefenseState::BackendSaturated, "{v:?}");
        let signals: Vec<&str> = v.reasons.iter().map(|r| r.signal.name()).collect();
        assert_eq!(signals, ["TcpExtListenDrops", "syn_received"]);
        assert_eq!(second.defense[0].netns, None);
    }

    #[test]
    fn off_means_no_verdict() {
        let dir = tempfile::tempdir().unwrap();
        round(dir.path(), 0, 0);
        let mut s = sampler_with(dir.path(), StackSources::default(), None);
        assert!(s.sample().defense.is_empty());
    }
}
