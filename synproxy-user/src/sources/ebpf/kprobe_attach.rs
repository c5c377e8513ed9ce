//! Attaching the kprobe programs: one tracefs kprobe event per probe, each
//! with its program; removing them again in parallel.

use super::error::CAPS;
use super::kprobe_events::{self, TraceFs};
use super::{AttachError, Attachment, EbpfSource, ProbeType, Stop, PROBES};
use aya::programs::KProbe;
use log::{info, warn};
use std::os::fd::{AsFd, OwnedFd};

impl EbpfSource {
    pub(super) fn attach_kprobes(
        &mut self,
        modules: &[Option<u64>],
        stop: &Stop,
    ) -> Result<usize, AttachError> {
        let Some(tracefs) = self.tracefs.as_ref() else {
            return Err(AttachError::Other("tracefs is not mounted".into()));
        };
        let mut events: Vec<(String, OwnedFd)> = Vec::new();
        let result = (|| {
            for spec in PROBES {
                if !stop.allow_events() {
                    return Err(AttachError::Stopped);
                }
                let event = kprobe_events::event_name(&self.token, spec.short);
                let id = match tracefs.create(&event, spec.function, spec.ret) {
                    Ok(id) => id,
                    Err(e) => {
                        // The write may have created the event before failing to read its id.
                        let _ = tracefs.remove(&event);
                        return Err(match e.raw_os_error() {
                            Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::EADDRNOTAVAIL)
                                if !symbol_exists(spec.function) =>
                            {
                                AttachError::Missing(spec.function)
                            }
                            Some(libc::EPERM) | Some(libc::EACCES) => {
                                AttachError::Other(format!("{CAPS}: kprobe_events: {e}"))
                            }
                            _ => AttachError::Other(format!("kprobe on {}: {e}", spec.function)),
                        });
                    }
                };
                let program: &KProbe = match self.ebpf.program(spec.program) {
                    Some(p) => p
                        .try_into()
                        .map_err(|e| AttachError::Other(format!("{}: {e}", spec.program)))?,
                    None => {
                        return Err(AttachError::Other(format!(
                            "program {} missing",
                            spec.program
                        )))
                    }
                };
                let prog_fd = program
                    .fd()
                    .map_err(|e| AttachError::Other(format!("{}: {e}", spec.program)))?;
                match kprobe_events::attach_program(id, prog_fd.as_fd()) {
                    Ok(fd) => events.push((event, fd)),
                    Err(e) => {
                        let _ = tracefs.remove(&event);
                        return Err(AttachError::Other(format!(
                            "attaching {} to {}: {e}",
                            spec.program, spec.function
                        )));
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.generation += 1;
                let n = events.len();
                // kprobe_profile restarts with the new events.
                self.last_missed = 0;
                self.attached = Some(Attachment {
                    generation: self.generation,
                    modules: modules.to_vec(),
                    events,
                    kind: ProbeType::Kprobe,
                });
                Ok(n)
            }
            Err(e) => {
                remove_events(tracefs, events);
                Err(e)
            }
        }
    }
}

pub(super) fn remove_events(tracefs: &TraceFs, events: Vec<(String, OwnedFd)>) {
    // Each close and removal waits for an RCU grace period in the kernel; done
    // in parallel the waits overlap (shutdown must finish within 1 s).
    let started = std::time::Instant::now();
    let n = events.len();
    if n == 0 {
        return;
    }
    std::thread::scope(|scope| {
        for (name, fd) in events {
            let spawned = std::thread::Builder::new()
                .name("kprobe-detach".into())
                .spawn_scoped(scope, move || {
                    drop(fd);
                    if let Err(e) = tracefs.remove(&name) {
                        warn!(
                            "cannot remove kprobe event {}/{name}: {e}",
                            kprobe_events::GROUP
                        );
                    }
                });
            if let Err(e) = spawned {
                warn!("cannot start a detach thread: {e}");
            }
        }
    });
    info!(
        "eBPF probes detached ({n} kprobe events closed and removed in {} ms)",
        started.elapsed().as_millis()
    );
}

/// Whether `function` is a kernel symbol right now (/proc/kallsyms), only
/// consulted after an attach failed.
pub(super) fn symbol_exists(function: &str) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return false;
    };
    text.lines().any(|l| {
        let mut parts = l.split_whitespace();
        parts.nth(2) == Some(function)
    })
}
