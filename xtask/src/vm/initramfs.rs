//! The guest's initramfs: busybox, iproute2, iptables (legacy and nft), nft, tmux with
//! their shared libraries and xtables extensions, the terminfo entries and the C.UTF-8
//! locale tmux needs, the project's static binaries, the init script, and per kernel
//! the SYNPROXY module closure.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;

use super::host::{run_captured, run_inherited};
use super::kernel::{read_module, KernelImage, ModulePlan};
use super::newc::Archive;

const INIT_SCRIPT: &str = include_str!("init.sh");

/// Guest paths handed to the init script (and from there to synproxy-scenario).
pub const GUEST_IPROUTE2: &str = "/usr/sbin/ip";
pub const GUEST_SBIN: &str = "/usr/sbin";
pub const GUEST_AGENT: &str = "/bin/synproxy-agent";
pub const GUEST_SCENARIO: &str = "/bin/synproxy-scenario";
pub const GUEST_PROMETHEUS: &str = "/usr/bin/prometheus";
const GUEST_MODULE_DIR: &str = "/lib/vmtest-modules";

/// Terminal descriptions copied into the guest (all from Debian's `ncurses-base`):
/// the pane's `TERM` (tmux's `default-terminal`, `screen` in tmux 3.3, `tmux-256color`
/// in later releases) and the common outer terminals, so tmux and a shell find theirs.
const TERMINFO_ENTRIES: &[&str] = &[
    "dumb",
    "linux",
    "screen",
    "screen-256color",
    "tmux",
    "tmux-256color",
    "vt100",
    "xterm",
    "xterm-256color",
];
/// Where the host keeps them (ncurses searches these, and /etc/terminfo, in the guest too).
const TERMINFO_DIRS: &[&str] = &["/lib/terminfo", "/usr/share/terminfo"];
/// tmux refuses to start without a UTF-8 locale (it tries `en_US.UTF-8`, then
/// `C.UTF-8`); glibc's C.UTF-8 is this directory of `libc-bin`.
const C_UTF8_LOCALE: &str = "/usr/lib/locale/C.utf8";

/// Static builds of the project's binaries for the guest.
#[derive(Debug, Clone)]
pub struct GuestBinaries {
    pub agent: PathBuf,
    pub scenario: PathBuf,
}

/// `cargo build --release --target x86_64-unknown-linux-gnu` with crt-static into
/// target/vm-static, so it does not disturb the host builds in target/.
pub fn build_guest_binaries(workspace: &Path) -> Result<GuestBinaries> {
    let target_dir = workspace.join("target/vm-static");
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.contains("crt-static") {
        rustflags = format!("{rustflags} -C target-feature=+crt-static")
            .trim()
            .to_string();
    }
    println!("building static synproxy-agent and synproxy-scenario (target/vm-static)");
    run_inherited(
        Command::new(cargo)
            .current_dir(workspace)
            .env("RUSTFLAGS", rustflags)
            .env("CARGO_TARGET_DIR", &target_dir)
            .args(["build", "--quiet", "--release", "--target", triple])
            .args(["--package", "synproxy-user", "--bin", "synproxy-agent"])
            .args(["--package", "synproxy-tests", "--bin", "synproxy-scenario"]),
    )?;
    let release_dir = target_dir.join(triple).join("release");
    let binaries = GuestBinaries {
        agent: release_dir.join("synproxy-agent"),
        scenario: release_dir.join("synproxy-scenario"),
    };
    for binary in [&binaries.agent, &binaries.scenario] {
        if !binary.is_file() {
            bail!("cargo build succeeded but {} is missing", binary.display());
        }
    }
    Ok(binaries)
}

fn find_host_program(name: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| anyhow!("{name} not found in /usr/sbin, /usr/bin, /sbin or /bin"))
}

/// Where a host file goes in the guest: its canonical directory plus its own file name,
/// so sonames that are symlinks on the host become regular files under that name.
fn guest_path_for(host_path: &Path) -> Result<String> {
    let parent = host_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", host_path.display()))?;
    let file_name = host_path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", host_path.display()))?;
    let parent = parent
        .canonicalize()
        .with_context(|| format!("resolving {}", parent.display()))?;
    Ok(parent.join(file_name).to_string_lossy().into_owned())
}

/// Shared libraries (including the dynamic loader) that `ldd` reports for `elf`.
fn shared_libraries(elf: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(elf)
        .output()
        .with_context(|| format!("ldd {} failed to start", elf.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // Static executables: "not a dynamic executable" (exit status 1).
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", elf.display(), stderr.trim());
    }
    let mut libraries = Vec::new();
    for line in stdout.lines() {
        let line = line.trim();
        if line.contains("statically linked") || line.starts_with("linux-vdso") {
            continue;
        }
        if line.contains("not found") {
            bail!("ldd {}: {line}", elf.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

struct ArchiveBuilder {
    archive: Archive,
    libraries: BTreeSet<PathBuf>,
}

impl ArchiveBuilder {
    fn add_host_file(
        &mut self,
        host_path: &Path,
        guest_path: &str,
        permissions: u32,
    ) -> Result<()> {
        let contents =
            std::fs::read(host_path).with_context(|| format!("reading {}", host_path.display()))?;
        self.archive.add_file(guest_path, permissions, contents)
    }

    /// Adds an ELF file at its canonical place and remembers its shared libraries.
    fn add_elf(
        &mut self,
        host_path: &Path,
        guest_path: Option<&str>,
        permissions: u32,
    ) -> Result<String> {
        let guest_path = match guest_path {
            Some(path) => path.to_string(),
            None => guest_path_for(host_path)?,
        };
        self.add_host_file(host_path, &guest_path, permissions)?;
        self.libraries.extend(shared_libraries(host_path)?);
        Ok(guest_path)
    }

    fn add_collected_libraries(&mut self) -> Result<()> {
        let libraries = std::mem::take(&mut self.libraries);
        for library in libraries {
            let guest_path = guest_path_for(&library)?;
            if !self.archive.contains(&guest_path) {
                self.add_host_file(&library, &guest_path, 0o755)?;
            }
        }
        Ok(())
    }
}

/// The kernel-independent part: tools, libraries, binaries, init.
pub fn build_common_archive(binaries: &GuestBinaries) -> Result<Archive> {
    let mut builder = ArchiveBuilder {
        archive: Archive::new(),
        libraries: BTreeSet::new(),
    };
    let archive = &mut builder.archive;
    for dir in [
        "proc", "sys", "dev", "run", "tmp", "root", "etc", "var", "usr/sbin", "usr/bin",
    ] {
        archive.add_directory(dir)?;
    }
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    archive.add_char_device("dev/null", 0o666, 1, 3)?;
    // Merged /usr: /lib and /lib64 are links into /usr on the host, so libraries are
    // stored under /usr and the loader finds them through these links too.
    for link in ["lib", "lib64"] {
        if let Ok(target) = std::fs::read_link(Path::new("/").join(link)) {
            archive.add_symlink(link, &target.to_string_lossy())?;
        }
    }
    archive.add_file("init", 0o755, INIT_SCRIPT.as_bytes().to_vec())?;
    archive.add_file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    )?;
    archive.add_file("etc/group", 0o644, b"root:x:0:\n".to_vec())?;
    for file in ["/etc/protocols", "/etc/services"] {
        if Path::new(file).is_file() {
            builder.add_host_file(Path::new(file), file, 0o644)?;
        }
    }

    // busybox (static) with its applets, except `ip`: iproute2 is needed for netns.
    let busybox = find_host_program("busybox")?;
    builder.add_elf(&busybox, Some("/bin/busybox"), 0o755)?;
    let applets = run_captured(Command::new(&busybox).arg("--list"))?;
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .map(str::trim)
    {
        if applet.is_empty() || applet == "busybox" || applet == "ip" || applet.contains('/') {
            continue;
        }
        builder
            .archive
            .add_symlink(&format!("bin/{applet}"), "busybox")?;
    }

    // iproute2, iptables (legacy and nft backends) and nft.
    builder.add_elf(&find_host_program("ip")?, Some(GUEST_IPROUTE2), 0o755)?;
    builder.add_elf(
        &find_host_program("nft")?,
        Some(&format!("{GUEST_SBIN}/nft")),
        0o755,
    )?;
    for (multi, names) in [
        (
            "xtables-legacy-multi",
            ["iptables-legacy", "ip6tables-legacy"],
        ),
        ("xtables-nft-multi", ["iptables-nft", "ip6tables-nft"]),
    ] {
        builder.add_elf(
            &find_host_program(multi)?,
            Some(&format!("{GUEST_SBIN}/{multi}")),
            0o755,
        )?;
        for name in names {
            builder
                .archive
                .add_symlink(&format!("{GUEST_SBIN}/{name}"), multi)?;
        }
    }
    // iptables dlopens its extensions (libxt_*, libipt_*, libip6t_*): ldd cannot see
    // them, so copy the whole extension directory and their libraries.
    let xtables_dir = [
        "/usr/lib/x86_64-linux-gnu/xtables",
        "/lib/x86_64-linux-gnu/xtables",
        "/usr/lib/xtables",
    ]
    .iter()
    .map(Path::new)
    .find(|dir| dir.is_dir())
    .ok_or_else(|| anyhow!("xtables extension directory not found (is iptables installed?)"))?;
    let mut extensions: Vec<PathBuf> = std::fs::read_dir(xtables_dir)
        .with_context(|| format!("reading {}", xtables_dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "so"))
        .collect();
    extensions.sort();
    for required in [
        "libxt_CT.so",
        "libxt_conntrack.so",
        "libxt_SYNPROXY.so",
        "libxt_tcp.so",
        "libxt_standard.so",
    ] {
        if !extensions
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == required))
        {
            bail!("{} has no {required}", xtables_dir.display());
        }
    }
    for extension in &extensions {
        builder.add_elf(extension, None, 0o755)?;
    }

    // tmux, for the live view's check (`synproxy-agent top` read from a tmux pane):
    // the program, its terminfo entries and a UTF-8 locale.
    builder.add_elf(&find_host_program("tmux")?, Some("/usr/bin/tmux"), 0o755)?;
    for entry in TERMINFO_ENTRIES {
        let host = terminfo_entry(entry)?;
        let guest = guest_path_for(&host)?;
        builder.add_host_file(&host, &guest, 0o644)?;
    }
    add_host_tree(&mut builder, Path::new(C_UTF8_LOCALE))?;

    builder.add_elf(&binaries.agent, Some(GUEST_AGENT), 0o755)?;
    builder.add_elf(&binaries.scenario, Some(GUEST_SCENARIO), 0o755)?;
    builder.add_collected_libraries()?;
    Ok(builder.archive)
}

/// The host file of terminfo entry `name` (`<dir>/<first letter>/<name>`).
fn terminfo_entry(name: &str) -> Result<PathBuf> {
    let first = name
        .chars()
        .next()
        .ok_or_else(|| anyhow!("empty terminfo entry name"))?;
    TERMINFO_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(first.to_string()).join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            anyhow!(
                "terminfo entry {name} not found in {} (package ncurses-base)",
                TERMINFO_DIRS.join(" or ")
            )
        })
}

/// Copies the regular files under host directory `dir` to the same guest paths.
fn add_host_tree(builder: &mut ArchiveBuilder, dir: &Path) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {} (package libc-bin)", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            add_host_tree(builder, &path)?;
        } else if path.is_file() {
            let guest = guest_path_for(&path)?;
            builder.add_host_file(&path, &guest, 0o644)?;
        }
    }
    Ok(())
}

/// The per-kernel part: decompressed modules and the two load-order lists.
pub fn build_module_archive(image: &KernelImage, plan: &ModulePlan) -> Result<Archive> {
    let mut archive = Archive::new();
    for (list_name, modules) in [("early", &plan.early), ("late", &plan.late)] {
        let mut list = String::new();
        for module in modules {
            let guest_path = format!("{GUEST_MODULE_DIR}/{}.ko", module.name);
            archive.add_file(&guest_path, 0o644, read_module(image, module)?)?;
            list.push_str(&guest_path);
            list.push('\n');
        }
        archive.add_file(
            &format!("etc/vmtest/modules-{list_name}"),
            0o644,
            list.into_bytes(),
        )?;
    }
    Ok(archive)
}

/// Gzip-compressed newc bytes of `archive`.
pub fn compress(archive: &Archive) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    archive.write_to(&mut encoder)?;
    encoder.finish().context("finishing gzip stream")
}

/// Debian's `prometheus` (and its libraries) for the boot that scrapes the
/// agent with it, as uncompressed newc bytes: the kernel copies them without
/// inflating 50 MB under TCG. Its `GUEST_PROMETHEUS` path is what the guest's
/// check runs.
pub fn build_prometheus_archive() -> Result<Vec<u8>> {
    let mut builder = ArchiveBuilder {
        archive: Archive::new(),
        libraries: BTreeSet::new(),
    };
    let host = find_host_program("prometheus").context("apt-get install prometheus")?;
    builder.add_elf(&host, Some(GUEST_PROMETHEUS), 0o755)?;
    builder.add_collected_libraries()?;
    let mut bytes = Vec::new();
    builder.archive.write_to(&mut bytes)?;
    Ok(bytes)
}

/// Writes the initrd for one boot: an optional uncompressed archive first (the
/// kernel finds an uncompressed member only at a 4-byte aligned offset, which
/// the start is), then the common archive and the module archive (the kernel
/// unpacks concatenated cpio members in order).
pub fn write_initrd(
    path: &Path,
    uncompressed: Option<&[u8]>,
    common_gz: &[u8],
    modules_gz: &[u8],
) -> Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(uncompressed.unwrap_or_default())
        .and_then(|_| file.write_all(common_gz))
        .and_then(|_| file.write_all(modules_gz))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
