//! The `berth` command: the CLI, and (later) the server and tasker daemons, in one binary.

mod client;
mod container;
mod interactive;
mod jobs;
mod swd;
mod tasker;
mod up;
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
    /// Start the embedded default: a server and a tasker in one process.
    Up(up::Up),
    /// Start a server alone; taskers join it over TCP (--listen).
    Server(up::ServerArgs),
    /// Start a tasker that joins a server over TCP.
    Tasker(tasker::TaskerArgs),
    /// Submit a job that runs as you, here, with your environment.
    Run(jobs::Run),
    /// List jobs.
    List(jobs::List),
    /// Show one job: state, reason, tasker, slot, times, exit status, why it waits.
    Info(jobs::Info),
    /// Wait for jobs to end; exits with their status.
    Wait(jobs::Wait),
    /// Stop jobs (SIGTERM, grace, SIGKILL; cleanup and teardown still run).
    Stop(jobs::Stop),
    /// Print a job's log.
    Getlog(jobs::Getlog),
    /// List the taskers.
    Taskers(jobs::Taskers),
    /// List the container configurations the taskers offer, and why some are not.
    Containers(jobs::Taskers),
    /// The parent of a tasker's jobs without a container, which outlives the tasker
    /// process; started by the tasker itself.
    #[command(hide = true)]
    Keeper {
        /// The tasker's local state directory.
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
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
        Cmd::Up(o) => up::up(o),
        Cmd::Server(o) => up::server(o),
        Cmd::Tasker(o) => tasker::tasker(o),
        Cmd::Run(r) => jobs::run(r),
        Cmd::List(l) => jobs::list(l),
        Cmd::Info(i) => jobs::info(i),
        Cmd::Wait(w) => jobs::wait(w),
        Cmd::Stop(s) => jobs::stop(s),
        Cmd::Getlog(g) => jobs::getlog(g),
        Cmd::Taskers(t) => jobs::taskers(t),
        Cmd::Containers(t) => jobs::containers(t),
        Cmd::Keeper { state } => {
            berth_tasker::keeper::serve(&state)
                .map_err(|e| anyhow::anyhow!("keeper of {}: {e}", state.display()))?;
            Ok(0)
        }
    }
}
