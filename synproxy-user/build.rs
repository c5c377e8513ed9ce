//! Builds the eBPF object (synproxy-ebpf, for bpfel-unknown-none) with aya-build and
//! leaves it in OUT_DIR for `include_bytes_aligned!`. Prerequisites are checked
//! first so that a missing tool is one line naming the command that installs it,
//! not a linker error. `AYA_BUILD_SKIP=1` builds the agent without eBPF (it then
//! reports /proc only).

use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLCHAIN: &str = "nightly";
const OBJECT: &str = "synproxy";

fn main() {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = match std::env::var_os("OUT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => fail("OUT_DIR is not set (run through cargo)"),
    };
    let skip = std::env::var("AYA_BUILD_SKIP")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if skip {
        // An empty object: the agent starts, says eBPF is not in this build and
        // reports /proc only.
        if let Err(e) = std::fs::write(out_dir.join(OBJECT), []) {
            fail(&format!(
                "cannot write {}: {e}",
                out_dir.join(OBJECT).display()
            ));
        }
        println!(
            "cargo:warning=AYA_BUILD_SKIP set: synproxy-agent built without its eBPF programs"
        );
        return;
    }
    check_prerequisites();
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../synproxy-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize().unwrap_or(ebpf_dir);
    let common_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../synproxy-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root = ebpf_dir.to_string_lossy().into_owned();
    // aya-build turns every stderr line of the inner cargo into a warning: keep
    // it to real diagnostics.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let package = aya_build::Package {
        name: "synproxy-ebpf",
        root_dir: &root,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        fail(&format!("building the eBPF programs failed: {e:#}"));
    }
    if !out_dir.join(OBJECT).is_file() {
        fail(&format!(
            "aya-build succeeded but {} is missing",
            out_dir.join(OBJECT).display()
        ));
    }
}

/// One line on stderr and a failed build.
fn fail(message: &str) -> ! {
    println!("cargo::error={message}");
    eprintln!("error: {message}");
    std::process::exit(1);
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn check_prerequisites() {
    if find_in_path("rustup").is_none() {
        fail("rustup not found: the eBPF programs need rustup's nightly toolchain (https://rustup.rs), or build with AYA_BUILD_SKIP=1 for a /proc-only agent");
    }
    let sysroot = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        _ => fail(&format!(
            "the {TOOLCHAIN} toolchain is not installed: run `rustup toolchain install {TOOLCHAIN} --profile minimal --component rust-src` (or `cargo xtask setup-ebpf`)"
        )),
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        fail(&format!(
            "rust-src is missing from the {TOOLCHAIN} toolchain: run `rustup component add rust-src --toolchain {TOOLCHAIN}` (or `cargo xtask setup-ebpf`)"
        ));
    }
    match find_in_path("bpf-linker") {
        Some(path) => println!("cargo:rerun-if-changed={}", path.display()),
        None => {
            // bpf-linker's LLVM major must equal the nightly's.
            let llvm = Command::new("rustup")
                .args(["run", TOOLCHAIN, "rustc", "-vV"])
                .output()
                .ok()
                .and_then(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .find_map(|l| l.strip_prefix("LLVM version: ").map(str::to_string))
                })
                .and_then(|v| v.split('.').next().map(str::to_string))
                .unwrap_or_else(|| "22".to_string());
            fail(&format!(
                "bpf-linker not found: run `cargo xtask setup-ebpf`, or: apt-get install -y llvm-{llvm}-dev libpolly-{llvm}-dev libzstd-dev && LLVM_PREFIX=/usr/lib/llvm-{llvm} cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-{llvm}"
            ))
        }
    }
}
