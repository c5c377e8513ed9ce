//! The top-view check's verdict and RESULT line from what a run measured
//! (see `top_view` for the run); pure, so its pass and fail cases are
//! unit-tested on the host with recorded figures.

use crate::check::{yes_no, Judged, ResultLine, Verdict};
use crate::top_view::{compact, Row};

/// What one top-view run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopView {
    pub fentry: bool,
    pub netns: String,
    pub sources: usize,
    /// The rows the burst's round must show, and those it showed.
    pub expected: Vec<Row>,
    pub rows: Vec<Row>,
    /// Bursts sent until one fell in a single round, and the SYNs of one burst.
    pub bursts: u32,
    pub burst: u64,
    pub view_secs: f64,
    /// The counters panel of the burst's frame: syn_received rate, round length.
    pub syn_rate: f64,
    pub round_secs: f64,
    pub reconcile: String,
    /// SYNs sent in all bursts, and what /proc counted.
    pub sent: u64,
    pub proc_syn: u64,
    /// The shell's `top exited: N`, and whether the terminal came back as it was.
    pub exit: String,
    pub restored: bool,
    pub left: Vec<String>,
}

impl TopView {
    /// The counters panel is /proc's change over the burst's round: rate x
    /// round length is the burst, to the display's rounding (the rate to a
    /// whole number, the length to 10 ms).
    fn frame_syn_ok(&self) -> bool {
        let frame_syn = self.syn_rate * self.round_secs;
        (frame_syn - self.burst as f64).abs() <= 0.5 * self.round_secs + 0.005 * self.syn_rate + 0.5
    }
}

impl Judged for TopView {
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        v.require(self.rows == self.expected, || {
            format!(
                "table {}, expected {}",
                compact(&self.rows),
                compact(&self.expected)
            )
        });
        v.require(self.frame_syn_ok(), || {
            format!(
                "syn_received rate {} over {:.2} s is not the burst of {}",
                self.syn_rate, self.round_secs, self.burst
            )
        });
        v.require(self.proc_syn == self.sent, || {
            format!("/proc counted {} SYNs, {} sent", self.proc_syn, self.sent)
        });
        v.require(self.exit == "0", || format!("top exited {}", self.exit));
        v.require(self.restored, || "the terminal was not restored".into());
        v.require(self.left.is_empty(), || {
            format!("left in the kernel: {}", self.left.join("; "))
        });
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        head(kernel, self.fentry)
            .field("netns", &self.netns)
            .field("ebpf", "on")
            .field("sources", self.sources)
            .field("driven", compact(&self.expected))
            .field("table", compact(&self.rows))
            .field("bursts", self.bursts)
            .field("view_secs", format!("{:.1}", self.view_secs))
            .field("frame_syn_rate", self.syn_rate)
            .field("frame_secs", format!("{:.2}", self.round_secs))
            .field("reconcile", &self.reconcile)
            .field("sent", self.sent)
            .field("proc_syn", self.proc_syn)
            .field("exit", &self.exit)
            .field("restored", yes_no(self.restored))
            .field("leftovers", self.left.len())
    }
}

/// `RESULT kernel=K check=top-view[ probes=fentry]`.
pub fn head(kernel: &str, fentry: bool) -> ResultLine {
    let head = ResultLine::new(kernel, "top-view");
    if fentry {
        head.field("probes", "fentry")
    } else {
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top_view::{expected_rows, SOURCES};

    #[test]
    fn the_recorded_run_passes_and_each_failure_fails() {
        const RECORDED: &str = "RESULT kernel=5.10.0-46-cloud-amd64 check=top-view netns=spx-3468-0-srv ebpf=on sources=5 driven=198.51.100.20:50,192.0.2.50:40,203.0.113.30:30,198.51.100.40:20,192.0.2.10:10 table=198.51.100.20:50,192.0.2.50:40,203.0.113.30:30,198.51.100.40:20,192.0.2.10:10 bursts=1 view_secs=2.8 frame_syn_rate=150 frame_secs=1.00 reconcile=exact sent=150 proc_syn=150 exit=0 restored=yes leftovers=0 status=PASS";
        let expected = expected_rows(&SOURCES);
        let recorded = TopView {
            fentry: false,
            netns: "spx-3468-0-srv".into(),
            sources: SOURCES.len(),
            rows: expected.clone(),
            expected,
            bursts: 1,
            burst: 150,
            view_secs: 2.8,
            syn_rate: 150.0,
            round_secs: 1.0,
            reconcile: "exact".into(),
            sent: 150,
            proc_syn: 150,
            exit: "0".into(),
            restored: true,
            left: Vec::new(),
        };
        let broken: [fn(&mut TopView); 7] = [
            |m| m.rows.swap(0, 1),
            |m| m.rows[4].events = 9,
            |m| m.syn_rate = 140.0,
            |m| m.proc_syn = 149,
            |m| m.exit = "101".into(),
            |m| m.restored = false,
            |m| m.left.push("bpf map spx_sources".into()),
        ];
        crate::check::each_fails(&recorded, "5.10.0-46-cloud-amd64", RECORDED, &broken);
        // A round of 1.01 s shows the burst's rate to a whole number.
        let mut long_round = recorded;
        (long_round.round_secs, long_round.syn_rate) = (1.01, 149.0);
        assert!(long_round.judge().pass());
    }
}
