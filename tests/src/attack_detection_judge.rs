//! The `attack-detection` VM check's figures and how they are judged (pure):
//! the benign phase quiet, each flood started and ended in time with its
//! port (and the first one with its sources), two ports told apart, the hook
//! given both documents, the event kept across a restart.

use crate::attack_judge::AttackLine;
use crate::check::{yes_no, Judged, ResultLine, Verdict};

/// How one flood went: its subject and the judged delays (ns) or why not.
#[derive(Clone, Debug, PartialEq)]
pub struct Flood {
    pub what: String,
    pub result: Result<(u64, u64, String), String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AttackDetection {
    pub probes: String,
    pub quiet: Result<(), String>,
    /// The first flood (one port): its port's event and the namespace's.
    pub single: Vec<Flood>,
    /// Two floods on two ports, overlapping.
    pub two_ports: Vec<Flood>,
    /// The two port events of the second phase have different ids.
    pub distinct: bool,
    /// The hook's documents for the first flood's port event: (phase, id).
    pub hook_docs: Vec<(String, String)>,
    /// The first flood's port event id.
    pub hook_id: Option<String>,
    pub restart: Result<String, String>,
    /// The limits (ns) the floods were judged against.
    pub start_limit_ns: u64,
    pub end_limit_ns: u64,
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

fn delays(floods: &[Flood]) -> String {
    floods
        .iter()
        .map(|f| match &f.result {
            Ok((s, e, _)) => format!("{}/{}", ms(*s), ms(*e)),
            Err(_) => "-".into(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl AttackDetection {
    fn hook_ok(&self) -> bool {
        let Some(id) = &self.hook_id else {
            return false;
        };
        let phases: Vec<&str> = self
            .hook_docs
            .iter()
            .filter(|(_, i)| i == id)
            .map(|(p, _)| p.as_str())
            .collect();
        phases == ["start", "end"] || phases == ["end", "start"]
    }
}

impl Judged for AttackDetection {
    fn judge(&self) -> Verdict {
        let mut v = Verdict::default();
        if let Err(e) = &self.quiet {
            v.failed.push(format!("benign phase: {e}"));
        }
        for f in self.single.iter().chain(&self.two_ports) {
            if let Err(e) = &f.result {
                v.failed.push(format!("{}: {e}", f.what));
            }
        }
        v.require(self.distinct, || "the two ports' events share an id".into());
        v.require(self.hook_ok(), || {
            format!(
                "the hook did not get the start and end of {:?}: {:?}",
                self.hook_id, self.hook_docs
            )
        });
        if let Err(e) = &self.restart {
            v.failed.push(format!("restart: {e}"));
        }
        v
    }

    fn line(&self, kernel: &str) -> ResultLine {
        ResultLine::new(kernel, "attack-detection")
            .field("probes", &self.probes)
            .field("quiet", yes_no(self.quiet.is_ok()))
            .field("single_start_end_ms", delays(&self.single))
            .field("two_ports_start_end_ms", delays(&self.two_ports))
            .field("hook", yes_no(self.hook_ok()))
            .field("restart_kept", yes_no(self.restart.is_ok()))
            .field("start_limit_ms", ms(self.start_limit_ns))
            .field("end_limit_ms", ms(self.end_limit_ns))
    }
}

/// The lines of one port (`all`: the namespace's).
pub fn of_port(lines: &[AttackLine], port: &str) -> Vec<AttackLine> {
    lines.iter().filter(|l| l.port == port).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(what: &str) -> Flood {
        Flood {
            what: what.into(),
            result: Ok((400_000_000, 2_600_000_000, String::new())),
        }
    }

    fn passing() -> AttackDetection {
        AttackDetection {
            probes: "kprobe".into(),
            quiet: Ok(()),
            single: vec![ok("8080"), ok("all")],
            two_ports: vec![ok("8080"), ok("8081")],
            distinct: true,
            hook_docs: vec![("start".into(), "a".into()), ("end".into(), "a".into())],
            hook_id: Some("a".into()),
            restart: Ok("kept".into()),
            start_limit_ns: 1_000_000_000,
            end_limit_ns: 3_500_000_000,
        }
    }

    #[test]
    fn every_part_passing_is_a_pass_with_its_figures() {
        let c = passing().check("6.12", Vec::new());
        assert!(c.pass, "{c:?}");
        assert_eq!(
            c.line,
            "RESULT kernel=6.12 check=attack-detection probes=kprobe quiet=yes single_start_end_ms=400/2600,400/2600 two_ports_start_end_ms=400/2600,400/2600 hook=yes restart_kept=yes start_limit_ms=1000 end_limit_ms=3500 status=PASS"
        );
    }

    #[test]
    fn each_part_failing_fails_the_check_with_its_reason() {
        let mut m = passing();
        m.quiet = Err("attack lines during benign traffic".into());
        assert!(m.check("k", Vec::new()).notes[0].starts_with("benign phase"));
        let mut m = passing();
        m.two_ports[1].result = Err("0 start lines".into());
        let c = m.check("k", Vec::new());
        assert!(!c.pass && c.line.contains("two_ports_start_end_ms=400/2600,-"));
        let mut m = passing();
        m.hook_docs.pop();
        assert!(!m.check("k", Vec::new()).pass);
        let mut m = passing();
        m.distinct = false;
        assert!(!m.check("k", Vec::new()).pass);
        let mut m = passing();
        m.restart = Err("started again".into());
        let c = m.check("k", Vec::new());
        assert!(!c.pass && c.line.contains("restart_kept=no"));
    }
}
