//! Applying the drop: `capset(2)` on the calling thread, then on every
//! other thread through a real-time signal, the check of every thread's
//! status file, and the one-line report of what was kept.

use super::*;

// What every thread applies, set before any thread is asked to.
static KEEP: AtomicU64 = AtomicU64::new(0);
static APPLIED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static BOUNDING_KEPT: AtomicBool = AtomicBool::new(false);

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted) sets.
fn capget() -> Result<(CapSet, CapSet), i32> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 takes a header and two data structs, both valid for
    // the call; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(errno());
    }
    let join = |lo: u32, hi: u32| CapSet(u64::from(lo) | (u64::from(hi) << 32));
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// `capset(2)` on the calling thread: its effective, permitted and
/// inheritable sets; the errno when the kernel refuses. Async-signal-safe
/// (one raw system call).
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), i32> {
    let part = |shift: u32| CapData {
        effective: (effective >> shift) as u32,
        permitted: (permitted >> shift) as u32,
        inheritable: (inheritable >> shift) as u32,
    };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [part(0), part(32)];
    // SAFETY: as in capget; the kernel only reads `data`.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Whether the calling thread has `cap` in its effective set.
pub fn effective_has(cap: u32) -> bool {
    capget().is_ok_and(|(effective, _)| effective.contains(cap))
}

fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Applies [`KEEP`] to the calling thread. Async-signal-safe: only raw
/// system calls and atomics (it runs in the signal handler).
fn apply_here() -> Result<(), i32> {
    let keep = KEEP.load(Ordering::SeqCst);
    // Bounding set first, while CAP_SETPCAP may still be effective.
    for cap in 0..64u32 {
        // SAFETY: PR_CAPBSET_READ reads the thread's bounding set; EINVAL past
        // the last capability the kernel knows.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) };
        if present < 0 {
            break;
        }
        if present == 1 && keep & (1 << cap) == 0 {
            // SAFETY: drops one capability from this thread's bounding set.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) } != 0 {
                // EPERM: no CAP_SETPCAP (a non-root agent); the service
                // manager's bounding set stands.
                BOUNDING_KEPT.store(true, Ordering::SeqCst);
            }
        }
    }
    // SAFETY: clears this thread's ambient set (EINVAL before Linux 4.3,
    // which has none: ignored).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    let (_, permitted) = capget()?;
    let kept = permitted.0 & keep;
    // Lowering the permitted set and setting effective within it needs no
    // capability.
    capset(kept, kept, 0)?;
    // SAFETY: sets this thread's no_new_privs bit (irreversible by design).
    if unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } != 0
    {
        return Err(errno());
    }
    Ok(())
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: the handler must leave errno as it found it.
    let saved = unsafe { *libc::__errno_location() };
    if apply_here().is_err() {
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    APPLIED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// The threads of this process. Without a readable `/proc/self/task` (no
/// procfs mounted, as in some containers) the other threads cannot be found,
/// so the drop cannot be made on all of them: an error, not an empty list.
fn thread_ids() -> Result<Vec<libc::pid_t>, String> {
    let dir = "/proc/self/task";
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list threads in {dir}: {e}"))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list threads in {dir}: {e}"))?;
        if let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) {
            ids.push(tid);
        }
    }
    if !ids.contains(&gettid()) {
        return Err(format!(
            "{dir} does not list the calling thread (not this process's procfs)"
        ));
    }
    Ok(ids)
}

/// How long other threads get to run the handler (they only need to be
/// scheduled once; a loaded machine can be slow).
const THREAD_DEADLINE: Duration = Duration::from_secs(10);

/// Drops every capability `features` do not need, on every thread, and sets
/// `no_new_privs`. Logs what was kept (and what was needed but missing).
pub fn restrict(features: Features) -> Result<Outcome, String> {
    let host = Host::current();
    let needed = required(features, host);
    let (_, permitted) =
        capget().map_err(|e| format!("capget: {}", std::io::Error::from_raw_os_error(e)))?;
    let kept = needed.intersection(permitted);
    let missing = needed.minus(permitted);
    KEEP.store(kept.0, Ordering::SeqCst);
    APPLIED.store(0, Ordering::SeqCst);
    FAILED.store(0, Ordering::SeqCst);
    BOUNDING_KEPT.store(false, Ordering::SeqCst);

    let signal = libc::SIGRTMIN() + 3;
    // SAFETY: installs an async-signal-safe handler (raw syscalls and atomics
    // only) for a real-time signal nothing else in the agent uses.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
    }
    apply_here().map_err(|e| format!("capset: {}", std::io::Error::from_raw_os_error(e)))?;
    let me = gettid();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let mut done: HashSet<libc::pid_t> = HashSet::from([me]);
    let mut asked = 0usize;
    // A thread that had not applied the drop may start another one before it
    // gets the signal: repeat until a pass finds no new thread.
    for _ in 0..100 {
        let new: Vec<libc::pid_t> = thread_ids()?
            .into_iter()
            .filter(|t| !done.contains(t))
            .collect();
        if new.is_empty() {
            break;
        }
        for tid in new {
            done.insert(tid);
            // SAFETY: signals one thread of this process.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) } == 0 {
                asked += 1;
            } // ESRCH: the thread has exited meanwhile.
        }
        let deadline = Instant::now() + THREAD_DEADLINE;
        while APPLIED.load(Ordering::SeqCst) < asked {
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {THREAD_DEADLINE:?} waiting for {} of {asked} threads to drop their capabilities",
                    asked - APPLIED.load(Ordering::SeqCst)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if FAILED.load(Ordering::SeqCst) > 0 {
        return Err(format!(
            "{} threads could not drop their capabilities",
            FAILED.load(Ordering::SeqCst)
        ));
    }
    let threads = verify(kept)?;
    let outcome = Outcome {
        kept,
        missing,
        bounding_reduced: !BOUNDING_KEPT.load(Ordering::SeqCst),
        threads,
    };
    Ok(outcome)
}

/// Checks every thread's `/proc/self/task/TID/status`: effective and
/// permitted are `kept`, ambient empty, `NoNewPrivs: 1`. Returns how many
/// threads there are.
fn verify(kept: CapSet) -> Result<usize, String> {
    let mut n = 0;
    for tid in thread_ids()? {
        let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
            continue; // exited
        };
        let sets = ThreadStatus::parse(&status)
            .ok_or_else(|| format!("/proc/self/task/{tid}/status: no capability lines"))?;
        if sets.effective != kept
            || sets.permitted != kept
            || !sets.ambient.is_empty()
            || !sets.no_new_privs
        {
            return Err(format!(
                "thread {tid} still has effective {}, permitted {}, ambient {}, no_new_privs {}",
                sets.effective.names(),
                sets.permitted.names(),
                sets.ambient.names(),
                sets.no_new_privs
            ));
        }
        n += 1;
    }
    Ok(n)
}

/// The capability lines of `/proc/PID/status` (or of one thread's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadStatus {
    pub effective: CapSet,
    pub permitted: CapSet,
    pub bounding: CapSet,
    pub ambient: CapSet,
    pub no_new_privs: bool,
}

impl ThreadStatus {
    pub fn parse(status: &str) -> Option<ThreadStatus> {
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        let set =
            |key: &str| -> Option<CapSet> { u64::from_str_radix(field(key)?, 16).ok().map(CapSet) };
        Some(ThreadStatus {
            effective: set("CapEff:")?,
            permitted: set("CapPrm:")?,
            bounding: set("CapBnd:")?,
            // CapAmb: is absent before Linux 4.3.
            ambient: set("CapAmb:").unwrap_or_default(),
            no_new_privs: field("NoNewPrivs:") == Some("1"),
        })
    }
}

/// [`restrict`] with the result logged: one line at `level` with the sets
/// kept (info for a long-running agent; `--once` stays quiet), a warning
/// naming what the features need but the agent was not given. A drop that
/// failed is one error line and `Err` (the agent stops: it cannot promise
/// least privilege), or with `allow_failure` one warning and `Ok`.
pub fn restrict_and_log(
    features: Features,
    level: log::Level,
    allow_failure: bool,
) -> Result<(), DropFailed> {
    match restrict(features) {
        Ok(outcome) => {
            if !outcome.missing.is_empty() {
                warn!(
                    "capabilities: the agent was started without {} ({}); {}",
                    outcome.missing.names(),
                    what_needs(outcome.missing),
                    "see the capability table in docs/operations.md"
                );
            }
            log::log!(
                level,
                "capabilities after start-up: {} (effective, permitted{}), no_new_privs set on {} threads",
                outcome.kept.names(),
                if outcome.bounding_reduced {
                    " and bounding"
                } else {
                    "; bounding set left to the service manager: no CAP_SETPCAP"
                },
                outcome.threads
            );
            debug!("capability mask kept: {:#x}", outcome.kept.0);
            Ok(())
        }
        Err(e) if allow_failure => {
            warn!("cannot drop capabilities: {e}; going on without least privilege ({ALLOW_FLAG})");
            Ok(())
        }
        Err(e) => {
            let failed = DropFailed(e);
            log::error!("{failed}");
            Err(failed)
        }
    }
}

/// The flag that lets the agent go on when the drop fails.
pub const ALLOW_FLAG: &str = "--allow-failed-capability-drop";

/// The capability drop failed; the agent stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropFailed(pub String);

impl std::fmt::Display for DropFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot drop capabilities: {}; stopping (least privilege cannot be ensured; {ALLOW_FLAG} goes on anyway)",
            self.0
        )
    }
}

impl std::error::Error for DropFailed {}

fn what_needs(missing: CapSet) -> String {
    let mut parts = Vec::new();
    if missing.contains(CAP_BPF) || missing.contains(CAP_PERFMON) {
        parts.push("eBPF needs CAP_BPF and CAP_PERFMON");
    }
    if missing.contains(CAP_DAC_OVERRIDE) {
        parts.push("eBPF as a non-root user needs CAP_DAC_OVERRIDE for tracefs");
    }
    if missing.contains(CAP_SYS_ADMIN) {
        parts.push(
            "--netns, --probes fentry (module BTF) and eBPF before Linux 5.8 need CAP_SYS_ADMIN",
        );
    }
    if missing.contains(CAP_SYS_PTRACE) {
        parts.push("--netns all needs CAP_SYS_PTRACE");
    }
    parts.join("; ")
}
