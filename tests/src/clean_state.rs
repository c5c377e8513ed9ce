//! The VM suite's precondition: every check starts from the kernel state the
//! guest had before its first check. `synproxy-scenario --clean-state record
//! FILE` writes that baseline (called again after each module load, it adds the
//! reference counts of modules it did not know yet); `--clean-state check FILE
//! NAME [SECS]` waits (polling) until the kernel is back at it, or fails check
//! NAME with a RESULT line naming every leftover. Inside one scenario run the
//! same wait precedes each check when `SPX_CLEAN_STATE=FILE` is set (empty:
//! not, for a scenario started inside a check that holds state on purpose).
//!
//! Compared with the baseline: named network namespaces (/run/netns), network
//! namespaces any process still holds (as its own, by an open fd, or by an nsfs
//! mount in any mount namespace), the reference count of every module (rules
//! and programs hold their modules, including rules of a namespace the kernel
//! still tears down in the background), kprobe events, BPF programs, maps,
//! links and user BTF objects; and no process of the suite (anything that is
//! not busybox) still running. Only for the guest: on a shared host other
//! people's namespaces and programs come and go.

use crate::bpf_objects::{self, Kind};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// First argument of synproxy-scenario that selects this mode.
pub const HELPER_FLAG: &str = "--clean-state";
/// The environment variable that makes synproxy-scenario wait before each check.
pub const ENV: &str = "SPX_CLEAN_STATE";
/// Generous: network namespaces are torn down by a kernel worker, one batch at
/// a time, and each batch waits for RCU grace periods (slow under QEMU/TCG).
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// What is compared with the baseline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Names in /run/netns.
    pub named: BTreeSet<String>,
    /// `net:[inode]` -> who holds it.
    pub netns: BTreeMap<String, Vec<String>>,
    pub modules: BTreeMap<String, Module>,
    pub kprobe_events: BTreeSet<String>,
    pub bpf: BTreeMap<(Kind, u32), String>,
}

fn read_link(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Every network namespace reachable from a process: `net:[inode]` -> holders.
fn held_netns() -> BTreeMap<String, Vec<String>> {
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut mount_namespaces = BTreeSet::new();
    for pid in pids() {
        let proc_dir = format!("/proc/{pid}");
        let who = format!("pid {pid} ({})", comm(pid));
        let tasks = std::fs::read_dir(format!("{proc_dir}/task"))
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut own = BTreeSet::new();
        for task in tasks {
            if let Some(ns) = read_link(&task.join("ns/net")) {
                own.insert(ns);
            }
        }
        for ns in own {
            held.entry(ns)
                .or_default()
                .push(format!("{who}: its netns"));
        }
        if let Ok(fds) = std::fs::read_dir(format!("{proc_dir}/fd")) {
            for fd in fds.flatten() {
                if let Some(target) = read_link(&fd.path()).filter(|t| t.starts_with("net:[")) {
                    held.entry(target)
                        .or_default()
                        .push(format!("{who}: fd {}", fd.file_name().to_string_lossy()));
                }
            }
        }
        let Some(mnt) = read_link(Path::new(&format!("{proc_dir}/ns/mnt"))) else {
            continue;
        };
        if !mount_namespaces.insert(mnt.clone()) {
            continue;
        }
        let mountinfo =
            std::fs::read_to_string(format!("{proc_dir}/mountinfo")).unwrap_or_default();
        for line in mountinfo.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT ... - FSTYPE SOURCE OPTIONS
            let fields: Vec<&str> = line.split(' ').collect();
            let fstype = line.split(" - ").nth(1).and_then(|r| r.split(' ').next());
            if fstype != Some("nsfs") || fields.len() < 5 || !fields[3].starts_with("net:[") {
                continue;
            }
            held.entry(fields[3].to_string())
                .or_default()
                .push(format!("mount {} in {mnt} of {who}", fields[4]));
        }
    }
    held
}

fn named_netns() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A loaded module as `/proc/modules` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub refcnt: i64,
    /// Modules using this one: each holds one of its references.
    pub used_by: usize,
    /// Live, Loading or Unloading.
    pub state: String,
}

impl Module {
    /// References besides those of the modules using it: what rules,
    /// programs and open objects hold. The baseline compares these, so
    /// loading a module that uses another does not move it.
    pub fn other_refs(&self) -> i64 {
        self.refcnt - self.used_by as i64
    }
}

/// `/proc/modules`: name size refcnt users state address (users: `a,b,` or `-`).
fn modules() -> BTreeMap<String, Module> {
    parse_modules(&std::fs::read_to_string("/proc/modules").unwrap_or_default())
}

fn parse_modules(text: &str) -> BTreeMap<String, Module> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let module = Module {
                refcnt: f.get(2)?.parse().ok()?,
                used_by: f
                    .get(3)?
                    .split(',')
                    .filter(|u| !u.is_empty() && *u != "-")
                    .count(),
                state: f.get(4)?.to_string(),
            };
            Some((f[0].to_string(), module))
        })
        .collect()
}

fn kprobe_events() -> BTreeSet<String> {
    TRACEFS
        .iter()
        .find_map(|t| std::fs::read_to_string(Path::new(t).join("kprobe_events")).ok())
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

impl State {
    pub fn now() -> Result<State> {
        let mut bpf = BTreeMap::new();
        for kind in Kind::ALL {
            let listed =
                bpf_objects::list(kind).with_context(|| format!("listing BPF {}s", kind.name()))?;
            bpf.extend(listed.into_iter().map(|(id, what)| ((kind, id), what)));
        }
        Ok(State {
            named: named_netns(),
            netns: held_netns(),
            modules: modules(),
            kprobe_events: kprobe_events(),
            bpf,
        })
    }
}

/// One difference from the baseline: a short key for the RESULT line and a
/// sentence for the `#` line under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub key: String,
    pub detail: String,
}

/// The baseline as written to the file: one item per line, fields tab-separated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Baseline {
    named: BTreeSet<String>,
    netns: BTreeSet<String>,
    /// Module -> references besides its users' ([`Module::other_refs`]).
    modules: BTreeMap<String, i64>,
    kprobe_events: BTreeSet<String>,
    bpf: BTreeSet<(Kind, u32)>,
}

impl Baseline {
    pub fn from_state(state: &State) -> Baseline {
        Baseline {
            named: state.named.clone(),
            netns: state.netns.keys().cloned().collect(),
            modules: state
                .modules
                .iter()
                .map(|(name, m)| (name.clone(), m.other_refs()))
                .collect(),
            kprobe_events: state.kprobe_events.clone(),
            bpf: state.bpf.keys().copied().collect(),
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for n in &self.named {
            out.push_str(&format!("named\t{n}\n"));
        }
        for n in &self.netns {
            out.push_str(&format!("netns\t{n}\n"));
        }
        for (m, r) in &self.modules {
            out.push_str(&format!("module\t{m}\t{r}\n"));
        }
        for e in &self.kprobe_events {
            out.push_str(&format!("kprobe\t{e}\n"));
        }
        for (kind, id) in &self.bpf {
            out.push_str(&format!("bpf\t{}\t{id}\n", kind.name()));
        }
        out
    }

    pub fn parse(text: &str) -> Result<Baseline> {
        let mut b = Baseline::default();
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split('\t').collect();
            let bad = || format!("baseline line {}: {line:?}", n + 1);
            match (f[0], f.len()) {
                ("named", 2) => {
                    b.named.insert(f[1].to_string());
                }
                ("netns", 2) => {
                    b.netns.insert(f[1].to_string());
                }
                ("module", 3) => {
                    b.modules
                        .insert(f[1].to_string(), f[2].parse().with_context(bad)?);
                }
                ("kprobe", 2) => {
                    b.kprobe_events.insert(f[1].to_string());
                }
                ("bpf", 3) => {
                    let kind = Kind::from_name(f[1]).with_context(bad)?;
                    b.bpf.insert((kind, f[2].parse().with_context(bad)?));
                }
                _ => bail!("{}", bad()),
            }
        }
        Ok(b)
    }

    /// Adds the modules of `state` the baseline does not know yet (loaded
    /// since it was written, with nothing using them yet).
    pub fn add_new_modules(&mut self, state: &State) -> Vec<String> {
        let mut added = Vec::new();
        for (name, m) in &state.modules {
            if !self.modules.contains_key(name) {
                self.modules.insert(name.clone(), m.other_refs());
                added.push(format!("{name}={}", m.other_refs()));
            }
        }
        added
    }

    /// What `state` has that the baseline had not (or lacks that it had).
    pub fn leftovers(&self, state: &State) -> Vec<Leftover> {
        let mut out = Vec::new();
        let mut push = |key: String, detail: String| out.push(Leftover { key, detail });
        for n in state.named.difference(&self.named) {
            push(
                format!("netns:{n}"),
                format!("named network namespace /run/netns/{n}"),
            );
        }
        for (ns, holders) in &state.netns {
            if !self.netns.contains(ns) {
                push(
                    format!("netns:{ns}"),
                    format!("network namespace {ns} held by {}", holders.join("; ")),
                );
            }
        }
        for (name, base) in &self.modules {
            match state.modules.get(name) {
                None => push(
                    format!("module:{name}:unloaded"),
                    format!("module {name} is not loaded (it was at the baseline)"),
                ),
                Some(m) if m.other_refs() != *base || m.state != "Live" => push(
                    format!("module:{name}:{}/{base}", m.other_refs()),
                    format!(
                        "module {name}: other references {} (baseline {base}), besides {} from modules using it; refcnt {}, state {}",
                        m.other_refs(),
                        m.used_by,
                        m.refcnt,
                        m.state
                    ),
                ),
                Some(_) => {}
            }
        }
        for e in state.kprobe_events.difference(&self.kprobe_events) {
            let name = e.split_whitespace().next().unwrap_or(e);
            push(format!("kprobe:{name}"), format!("kprobe event `{e}`"));
        }
        for ((kind, id), what) in &state.bpf {
            if !self.bpf.contains(&(*kind, *id)) {
                push(
                    format!("bpf-{}:{id}:{what}", kind.name()).replace(' ', "_"),
                    format!("BPF {} {id} {what}", kind.name()),
                );
            }
        }
        for (pid, what) in stray_processes() {
            push(
                format!("process:{pid}:{}", comm(pid)),
                format!("process {pid} still running: {what}"),
            );
        }
        out
    }
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Processes that are neither busybox (the init script, its pipes and
/// applets) nor this process or its ancestors, nor kernel threads or zombies:
/// pid -> command line.
fn stray_processes() -> Vec<(u32, String)> {
    let busybox = read_link(Path::new("/proc/1/exe"));
    let mut mine = BTreeSet::new();
    let mut pid = std::process::id();
    while mine.insert(pid) && pid > 1 {
        match ppid(pid) {
            Some(p) => pid = p,
            None => break,
        }
    }
    let mut out = Vec::new();
    for pid in pids() {
        if pid == 1 || mine.contains(&pid) {
            continue;
        }
        // Kernel threads and zombies have no executable.
        let Some(exe) = read_link(Path::new(&format!("/proc/{pid}/exe"))) else {
            continue;
        };
        if Some(&exe) == busybox.as_ref() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, format!("{} ({exe})", cmdline.trim())));
    }
    out
}

/// Writes the baseline (first call), or adds modules loaded since (later calls).
pub fn record(file: &Path) -> Result<String> {
    let state = State::now()?;
    if file.exists() {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut baseline = Baseline::parse(&text)?;
        let added = baseline.add_new_modules(&state);
        std::fs::write(file, baseline.to_text())
            .with_context(|| format!("writing {}", file.display()))?;
        return Ok(format!(
            "modules added to the baseline: {}",
            added.join(" ")
        ));
    }
    let baseline = Baseline::from_state(&state);
    std::fs::write(file, baseline.to_text())
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(format!(
        "baseline: {} network namespaces, {} modules, {} kprobe events, {} BPF objects",
        baseline.netns.len(),
        baseline.modules.len(),
        baseline.kprobe_events.len(),
        baseline.bpf.len()
    ))
}

/// How a wait for the baseline ended.
pub struct Settled {
    pub elapsed: Duration,
    /// What was still there at the first look (empty: clean at once).
    pub first_seen: Vec<Leftover>,
    /// What is still there (empty: clean).
    pub left: Vec<Leftover>,
}

/// Polls until the kernel is back at the baseline in `file`, at most `within`.
pub fn settle(file: &Path, within: Duration) -> Result<Settled> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let baseline = Baseline::parse(&text)?;
    let started = Instant::now();
    let mut first_seen = None;
    loop {
        let left = baseline.leftovers(&State::now()?);
        let first = first_seen.get_or_insert_with(|| left.clone());
        if left.is_empty() || started.elapsed() > within {
            return Ok(Settled {
                elapsed: started.elapsed(),
                first_seen: first.clone(),
                left,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The lines for check `name`: a `#` note when clean, else a failing RESULT
/// line and one `#` line per leftover. True when clean.
pub fn report(
    kernel: &str,
    name: &str,
    settled: &Settled,
    within: Duration,
) -> (bool, Vec<String>) {
    let secs = settled.elapsed.as_secs_f64();
    if settled.left.is_empty() {
        let mut line = format!("# clean-state before {name}: ok after {secs:.1}s");
        if !settled.first_seen.is_empty() {
            let keys: Vec<&str> = settled.first_seen.iter().map(|l| l.key.as_str()).collect();
            line.push_str(&format!(" (waited for: {})", keys.join(",")));
        }
        return (true, vec![line]);
    }
    let keys: Vec<String> = settled
        .left
        .iter()
        .map(|l| l.key.replace(char::is_whitespace, "_"))
        .take(8)
        .collect();
    let mut lines = vec![format!(
        "RESULT kernel={kernel} check={name} precondition=clean-state leftovers={} leftover={} waited={secs:.1}s limit={}s status=FAIL",
        settled.left.len(),
        keys.join(","),
        within.as_secs()
    )];
    for l in &settled.left {
        lines.push(format!(
            "# {name}: not started: the kernel is not back at its state before the first check: {}",
            l.detail
        ));
    }
    (false, lines)
}

/// `SPX_CLEAN_STATE` inside a scenario run: waits before check `name`; prints
/// a note, or the failing RESULT line and returns false.
pub fn gate(kernel: &str, name: &str) -> bool {
    let Some(file) = std::env::var_os(ENV).filter(|f| !f.is_empty()) else {
        return true;
    };
    match settle(Path::new(&file), DEFAULT_WITHIN) {
        Ok(settled) => {
            let (clean, lines) = report(kernel, name, &settled, DEFAULT_WITHIN);
            for line in lines {
                println!("{line}");
            }
            clean
        }
        Err(e) => {
            println!("RESULT kernel={kernel} check={name} precondition=clean-state status=FAIL");
            println!("# {name}: clean-state check failed: {e:#}");
            false
        }
    }
}

/// What differs from the baseline in `file` now, as `#` lines, without a
/// verdict (a check's own diagnostics while it holds state on purpose).
pub fn show(file: &Path, name: &str) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let left = Baseline::parse(&text)?.leftovers(&State::now()?);
    if left.is_empty() {
        return Ok(vec![format!("# {name}: kernel state as at the baseline")]);
    }
    Ok(left
        .into_iter()
        .map(|l| format!("# {name}: differs from the baseline: {}", l.detail))
        .collect())
}

/// `--clean-state record FILE` / `check FILE NAME [SECS]` / `show FILE NAME`;
/// returns the exit code.
pub fn helper_main(kernel: &str, args: &[String]) -> Result<i32> {
    match args {
        [mode, file] if mode == "record" => {
            println!("# clean-state {}", record(Path::new(file))?);
            Ok(0)
        }
        [mode, file, name] if mode == "show" => {
            for line in show(Path::new(file), name)? {
                println!("{line}");
            }
            Ok(0)
        }
        [mode, file, name, rest @ ..] if mode == "check" && rest.len() <= 1 => {
            let within = match rest.first() {
                Some(s) => Duration::from_secs(
                    s.parse()
                        .with_context(|| format!("{HELPER_FLAG} check: {s:?} is not seconds"))?,
                ),
                None => DEFAULT_WITHIN,
            };
            let settled = settle(Path::new(file), within)?;
            let (clean, lines) = report(kernel, name, &settled, within);
            for line in lines {
                println!("{line}");
            }
            Ok(if clean { 0 } else { 1 })
        }
        _ => bail!(
            "usage: {HELPER_FLAG} record FILE | {HELPER_FLAG} check FILE NAME [SECS] | {HELPER_FLAG} show FILE NAME"
        ),
    }
}

#[cfg(test)]
mod tests;
