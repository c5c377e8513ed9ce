//! What the detectors keep across a restart (the state file's content, as
//! JSON): per namespace label, the warm-up progress and each subject's
//! history and attack in progress. Only the format lives here; reading and
//! writing the file is the sampler's.

use super::detector::{NamespaceDetector, SubjectKey, MAX_PORT_SUBJECTS};
use super::subject::{Params, Subject};
use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const STATE_FILE: &str = "attacks.json";
/// Larger files are refused (2,048 namespaces with every port subject
/// take about 10 MiB).
pub const STATE_FILE_CAP: usize = 32 << 20;
/// Namespaces kept in the file at most.
pub const MAX_SAVED_NAMESPACES: usize = 4096;
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    /// When it was written, ns since the epoch.
    saved_ns: u64,
    namespaces: Vec<SavedNamespace>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedNamespace {
    /// The label (`None`: the agent's own namespace).
    netns: Option<String>,
    learnt_secs: f64,
    subjects: Vec<(SubjectKey, Subject)>,
}

/// The detectors to save, by label.
pub fn encode<'a>(
    saved_ns: u64,
    namespaces: impl Iterator<Item = (Option<&'a str>, &'a NamespaceDetector)>,
) -> Vec<u8> {
    let file = File {
        version: VERSION,
        saved_ns,
        namespaces: namespaces
            .take(MAX_SAVED_NAMESPACES)
            .map(|(netns, d)| SavedNamespace {
                netns: netns.map(str::to_string),
                learnt_secs: d.learnt_secs,
                subjects: d
                    .subjects
                    .iter()
                    .filter(|(_, s)| !s.is_idle())
                    .map(|(k, s)| (*k, s.clone()))
                    .collect(),
            })
            .collect(),
    };
    // Plain data with finite numbers: serialising cannot fail.
    serde_json::to_vec(&file).unwrap_or_default()
}

/// Why a state file was not used (one line after its path).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    #[error("not a state file of this agent ({0})")]
    Format(String),
    #[error("version {0}, this agent reads version {VERSION}: not used")]
    Version(u32),
}

/// The detectors a file brings back, by label, checked and bounded.
pub fn decode(
    bytes: &[u8],
    p: &Params,
) -> Result<Vec<(Option<String>, NamespaceDetector)>, StateError> {
    let file: File =
        serde_json::from_slice(bytes).map_err(|e| StateError::Format(e.to_string()))?;
    if file.version != VERSION {
        return Err(StateError::Version(file.version));
    }
    let mut out = Vec::new();
    for ns in file.namespaces.into_iter().take(MAX_SAVED_NAMESPACES) {
        let mut d = NamespaceDetector {
            learnt_secs: if ns.learnt_secs.is_finite() {
                ns.learnt_secs.clamp(0.0, p.warmup_secs.max(0.0) + 1.0)
            } else {
                0.0
            },
            ..NamespaceDetector::default()
        };
        let mut ports = 0;
        for (key, mut subject) in ns.subjects {
            if key.port.is_some() {
                if ports == MAX_PORT_SUBJECTS {
                    continue;
                }
                ports += 1;
            }
            subject.history = subject.history.sanitised(p.quantile);
            if let Some(a) = subject.active.as_mut() {
                for v in [
                    &mut a.baseline,
                    &mut a.threshold,
                    &mut a.peak_rate,
                    &mut a.rate,
                ] {
                    if !v.is_finite() || *v < 0.0 {
                        *v = 0.0;
                    }
                }
                if a.threshold <= 0.0 {
                    a.threshold = p.threshold(a.baseline);
                }
            }
            d.subjects.insert(key, subject);
        }
        out.push((ns.netns, d));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::attack::detector::Scope;
    use crate::analysis::attack::AttackKind;

    const S: u64 = 1_000_000_000;

    #[test]
    fn an_attack_in_progress_and_the_baselines_come_back() {
        let p = Params {
            bucket_secs: 1.0,
            warmup_secs: 1.0,
            ..Params::default()
        };
        let mut d = NamespaceDetector::default();
        let ns = SubjectKey {
            kind: AttackKind::SynFlood,
            port: None,
        };
        for i in 1..=6 {
            d.step(i * S / 2, 0.5, Scope::Namespace, &[(ns, 20)], &p);
        }
        let c = d.step(4 * S, 0.5, Scope::Namespace, &[(ns, 5000)], &p);
        assert_eq!(c.len(), 1);
        let bytes = encode(9 * S, [(Some("blue"), &d)].into_iter());
        let back = decode(&bytes, &p).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0.as_deref(), Some("blue"));
        let restored = &back[0].1;
        assert!(restored.judging(&p));
        assert_eq!(restored.active().count(), 1);
        assert_eq!(
            restored.subjects[&ns].history.baseline(),
            d.subjects[&ns].history.baseline()
        );
        // The restored attack goes on: no second start.
        let mut r = back.into_iter().next().unwrap().1;
        assert!(r
            .step(5 * S, 0.5, Scope::Namespace, &[(ns, 5000)], &p)
            .is_empty());
    }

    #[test]
    fn damaged_files_are_one_line_errors() {
        let p = Params::default();
        for bad in [&b""[..], b"{", b"[1,2]", b"\xff\xfe", b"{\"version\":1}"] {
            let e = decode(bad, &p).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        let e = decode(br#"{"version":9,"saved_ns":0,"namespaces":[]}"#, &p).unwrap_err();
        assert_eq!(e, StateError::Version(9));
    }
}
