use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Boot Debian kernels under QEMU and run the SYNPROXY scenarios inside them.
    VmTest(vm::VmTestArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::VmTest(args) => vm::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
