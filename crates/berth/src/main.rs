//! The `berth` command: the CLI, and (later) the server and tasker daemons, in one binary.

mod container;
mod swd;
mod wrapper;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// berth: a workload manager for compute farms, with named container configurations.
#[derive(Parser)]
#[command(name = "berth", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the signature of each FILE, for a `containerHook` line.
    Signfile {
        /// Sign under a site key (HMAC-SHA256) instead of a plain SHA-256.
        #[arg(long, value_name = "KEYFILE")]
        key: Option<PathBuf>,
        /// The files to sign.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Check, sign, list and try named container configurations.
    Container {
        #[command(subcommand)]
        cmd: container::Cmd,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Signfile { key, files } => container::signfile(key.as_deref(), &files),
        Cmd::Container { cmd } => container::run(cmd),
    }
}
