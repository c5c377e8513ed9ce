//! Following module (re)loads: attaching when `nf_synproxy_core` appears,
//! detaching when it goes, retrying a failed attach with backoff, and
//! releasing the probes on SIGUSR1.

use super::kprobe_attach::remove_events;
use super::probes::MODULES;
use super::{AttachError, EbpfSource, ProbeType, Stop, FENTRY_PROBES};
use log::{info, warn};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// When to try attaching again after a failure.
pub(super) struct Retry {
    modules: Vec<Option<u64>>,
    at: Instant,
    backoff: Duration,
}

/// After SIGUSR1, how long the probes stay released if the modules are not
/// reloaded meanwhile.
pub const RELEASE_HOLD: Duration = Duration::from_secs(60);

/// Probes released on request (SIGUSR1): not attached again while the modules
/// are the ones they were released from, until `until`.
pub(super) struct Released {
    modules: Vec<Option<u64>>,
    until: Instant,
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Identity of a loaded module: the inode of /sys/module/NAME (a new one per load).
fn module_identities() -> Vec<Option<u64>> {
    MODULES
        .iter()
        .map(|m| {
            std::fs::metadata(Path::new("/sys/module").join(m))
                .ok()
                .map(|md| md.ino())
        })
        .collect()
}

impl EbpfSource {
    /// Follows module (re)loads: detaches probes whose module changed and
    /// (re)attaches when possible; after a failed attach, retries with backoff
    /// (1 s doubling to 30 s) or at once when a module changes. Cheap when
    /// nothing changed (a few stat calls). Returns true when the probes were
    /// (re)attached by this call.
    pub fn poll(&mut self, stop: &Stop) -> bool {
        let modules = module_identities();
        if let Some(released) = &self.released {
            if released.modules == modules && Instant::now() < released.until {
                return false;
            }
            if released.modules == modules {
                info!(
                    "nf_synproxy_core was not reloaded within {} s of SIGUSR1: attaching the eBPF probes again",
                    RELEASE_HOLD.as_secs()
                );
            }
            self.released = None;
            self.retry = None;
        }
        if let Some(att) = &self.attached {
            if att.modules == modules {
                return false;
            }
            info!("nf_synproxy_core or nf_conntrack was unloaded or reloaded: detaching the eBPF probes");
            self.detach();
        }
        if let Some(retry) = &self.retry {
            if retry.modules == modules && Instant::now() < retry.at {
                return false;
            }
        }
        let mut attached = self.attach(&modules, stop);
        if matches!(attached, Err(AttachError::FentryUnusable(_))) && module_identities() != modules
        {
            // A module came or went meanwhile: not a reason to give fentry up.
            attached = Err(AttachError::Other(
                "nf_synproxy_core or nf_conntrack changed during the attach".into(),
            ));
        }
        if let Err(AttachError::FentryUnusable(reason)) = &attached {
            warn!("--probes fentry: {reason}; using kprobes");
            self.active = ProbeType::Kprobe;
            attached = match self.load_kprobes(stop) {
                Ok(()) => self.attach(&modules, stop),
                Err(reason) => {
                    if self.opening {
                        // open() reports it as the reason eBPF is disabled.
                        self.unusable = Some(reason);
                        return false;
                    }
                    Err(AttachError::Other(reason.to_string()))
                }
            };
        }
        match attached {
            Ok(what) => {
                self.retry = None;
                info!("eBPF probes attached ({what})");
                true
            }
            Err(AttachError::Stopped) => false,
            Err(AttachError::FentryUnusable(reason)) => {
                // Not reached: the fallback above replaced it.
                warn!("cannot attach the eBPF probes: {reason}");
                false
            }
            Err(AttachError::Missing(function)) => {
                if self.retry.as_ref().is_none_or(|r| r.modules != modules) {
                    info!("eBPF loaded; waiting for nf_synproxy_core ({function} not found): probes attach when it is loaded");
                }
                // A module appearing changes the identities: checked every round.
                self.retry = Some(Retry {
                    modules,
                    at: Instant::now() + RETRY_MAX,
                    backoff: RETRY_MAX,
                });
                false
            }
            Err(AttachError::Other(message)) => {
                let backoff = match &self.retry {
                    Some(r) if r.modules == modules => (r.backoff * 2).min(RETRY_MAX),
                    _ => RETRY_FIRST,
                };
                warn!(
                    "cannot attach the eBPF probes: {message}; reporting /proc only, retrying in {} s",
                    backoff.as_secs()
                );
                self.retry = Some(Retry {
                    modules,
                    at: Instant::now() + backoff,
                    backoff,
                });
                false
            }
        }
    }

    /// Attaches the probes of the type in use; Ok names what was attached.
    fn attach(&mut self, modules: &[Option<u64>], stop: &Stop) -> Result<String, AttachError> {
        match self.active {
            ProbeType::Kprobe => {
                let n = self.attach_kprobes(modules, stop)?;
                let via = self
                    .tracefs
                    .as_ref()
                    .map(|t| t.root().display().to_string())
                    .unwrap_or_default();
                Ok(format!(
                    "{n} kprobes/kretprobes on the SYNPROXY paths, via {via}"
                ))
            }
            ProbeType::Fentry => self.attach_fentry(modules, stop),
        }
    }

    /// SIGUSR1: detaches the probes and unloads fentry programs, so that
    /// nothing of the agent holds `nf_synproxy_core` or `nf_conntrack` (a
    /// loaded fentry program on a module function keeps the module from being
    /// unloaded). They are attached again, fentry programs loaded against the
    /// new module BTF, once the modules were unloaded or reloaded, or after
    /// [`RELEASE_HOLD`] if they were not.
    pub fn release(&mut self) {
        self.detach();
        self.released = Some(Released {
            modules: module_identities(),
            until: Instant::now() + RELEASE_HOLD,
        });
        info!(
            "SIGUSR1: eBPF probes released; nf_synproxy_core and nf_conntrack can be unloaded now. The probes attach again once they are reloaded, or in {} s if they are not",
            RELEASE_HOLD.as_secs()
        );
    }

    /// Detaches every probe: kprobe events are removed; fentry/fexit programs
    /// are unloaded (they are loaded again against the modules' BTF at the
    /// next attach).
    pub fn detach(&mut self) {
        if let Some(att) = self.attached.take() {
            match att.kind {
                ProbeType::Kprobe => {
                    if let Some(tracefs) = self.tracefs.as_ref() {
                        remove_events(tracefs, att.events);
                    }
                }
                ProbeType::Fentry => {
                    let started = Instant::now();
                    self.unload_fentry();
                    info!(
                        "eBPF probes detached ({} fentry/fexit programs unloaded in {} ms)",
                        FENTRY_PROBES.len(),
                        started.elapsed().as_millis()
                    );
                }
            }
        }
    }
}
