//! Developer and CI entry points: `cargo xtask run | test | bench | vm-test | package | image | man | fuzz | soak`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cargo;
// The VM suite's check names, shared with synproxy-scenario's --list.
mod cargo_tools;
#[path = "../../tests/src/check_names.rs"]
mod check_names;
mod ebpf_toolchain;
mod fuzz;
mod image;
mod interrupt;
mod package;
mod package_upgrade;
mod run;
mod soak;
mod test;
mod timing;
mod vm;

/// Project tasks: `cargo xtask <command>`.
#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the agent and run it as root, printing line protocol (args after `--`).
    Run(run::RunArgs),
    /// Install what the tests need, then run every test (CI runs this).
    Test(test::TestArgs),
    /// Parse+encode benchmark and the agent's steady-state memory.
    Bench(bench::BenchArgs),
    /// Boot Debian kernels under QEMU and run the SYNPROXY scenarios inside them.
    VmTest(vm::VmTestArgs),
    /// Install the eBPF toolchain: nightly + rust-src, bpf-linker for the nightly's LLVM.
    SetupEbpf,
    /// Build the Debian package with cargo-deb (target/debian/*.deb); --check installs,
    /// runs and removes it.
    Package(package::PackageArgs),
    /// Build the container image (FROM scratch, the static agent) with podman:
    /// target/container/synproxy-agent.oci.tar.
    Image(image::ImageArgs),
    /// Generate the man page from the CLI (target/release/package/synproxy-agent.1).
    Man,
    /// Run the cargo-fuzz targets (libFuzzer, nightly) for --secs each.
    Fuzz(fuzz::FuzzArgs),
    /// The release agent for --minutes under namespace churn, scrapes, InfluxDB
    /// restarts and signals (root); its RSS, fds, threads and warnings, flat or growing.
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::VmTest(args) => vm::run(args),
        Command::SetupEbpf => ebpf_toolchain::ensure(),
        Command::Package(args) => package::run(args),
        Command::Image(args) => image::run(args),
        Command::Man => package::man().map(|page| println!("{}", page.display())),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Soak(args) => soak::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
