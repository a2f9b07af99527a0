//! The `berth` command: the CLI, and (later) the server and tasker daemons, in one binary.

/// Writes a line to standard output; a reader that went away (`berth list | head -1`)
/// ends the command quietly, as it ends `ls`, instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output_line(::std::format_args!($($arg)*)) };
}

/// The same for standard error: a line that cannot be written is dropped.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

/// Part of a line on standard error (progress on a terminal); dropped if it cannot be
/// written.
macro_rules! errpart {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let mut e = ::std::io::stderr();
        let _ = ::std::write!(e, $($arg)*);
        let _ = e.flush();
    }};
}

mod client;
mod container;
mod interactive;
mod jobs;
mod show;
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
    /// Run a command in a running container job's container (its configuration's exec
    /// hook), for the job's owner or an administrator: `berth exec -it JOB sh`.
    Exec(jobs::Exec),
    /// Hold queued jobs: they start once released.
    Hold(jobs::Jobs),
    /// Release held jobs.
    Release(jobs::Jobs),
    /// Submit a job identical to each JOB (its command, directory, environment, request,
    /// log, time limit); prints the new ids.
    Rerun(jobs::Jobs),
    /// Stop the server (`berth up` or `berth server`) cleanly: it starts nothing more and
    /// exits, leaving running jobs to run on (administrators).
    Down(jobs::Down),
    /// Print a shell's completion script: `berth completions bash > /etc/bash_completion.d/berth`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print berth's manual page (roff): `berth man | man -l -`.
    Man,
    /// The parent of a tasker's jobs without a container, which outlives the tasker
    /// process; started by the tasker itself.
    #[command(hide = true)]
    Keeper {
        /// The tasker's local state directory.
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
    },
}

/// Exit statuses of the commands that wait for jobs and of those that name one (README,
/// "Exit statuses"): the job's own status otherwise.
pub mod exit {
    /// berth could not do what was asked (a refused submission, bad input).
    pub const ERROR: i32 = 1;
    /// No server answers.
    pub const NO_SERVER: i32 = 120;
    /// No such job (or array).
    pub const NO_JOB: i32 = 121;
    /// A job failed without an exit status of its own (lost, never started).
    pub const NO_STATUS: i32 = 122;
    /// A wait's `--timeout` passed with jobs still unfinished (as GNU `timeout`'s).
    pub const TIMEOUT: i32 = 124;
    /// The reader of standard output went away (128 + SIGPIPE, as a shell reports it).
    pub const CLOSED_PIPE: i32 = 141;
}

/// Writes one line to standard output, flushed; see `outln!`.
pub fn output_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        closed_output(e);
    }
}

/// Writes bytes to standard output (see `outln!`).
fn write_all_out(b: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(b).and_then(|()| out.flush()) {
        closed_output(e);
    }
}

/// Ends the command when standard output cannot be written: quietly for a reader that
/// went away, with the error otherwise.
pub fn closed_output(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(exit::CLOSED_PIPE);
    }
    errln!("berth: writing to standard output: {e}");
    std::process::exit(exit::ERROR);
}

/// Accelerator's `-wl` (wait and show the log) is one option of `berth run`, not
/// `-w -l FILE`; only among its options, not in the job's command (`grep -wl`).
fn habits(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    if args.get(1).is_none_or(|a| a != "run") {
        return args;
    }
    let cmd = Cli::command();
    let Some(run) = cmd.find_subcommand("run") else {
        return args;
    };
    // The options that take a value: the word after one is its value, not the command.
    let takes_value = |a: &str| {
        run.get_arguments().any(|arg| {
            let valued = arg.get_action().takes_values();
            valued
                && (arg.get_short().is_some_and(|c| a == format!("-{c}"))
                    || arg.get_long().is_some_and(|l| a == format!("--{l}")))
        })
    };
    let mut out: Vec<std::ffi::OsString> = args[..2].to_vec();
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        let text = a.to_string_lossy();
        if text == "-wl" || text == "-lw" {
            out.push("--follow".into());
            continue;
        }
        out.push(a.clone());
        if text == "--" || !text.starts_with('-') {
            break; // the command begins
        }
        if takes_value(&text) {
            if let Some(v) = rest.next() {
                out.push(v.clone());
            }
        }
    }
    out.extend(rest.cloned());
    out
}

fn main() {
    let cli = Cli::parse_from(habits(std::env::args_os().collect()));
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            errln!("berth: {e:#}");
            exit_of_error(&e)
        }
    };
    use std::io::Write;
    if let Err(e) = std::io::stdout().flush() {
        closed_output(e);
    }
    std::process::exit(code);
}

/// The exit status an error means.
pub fn exit_of_error(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<client::NoServer>().is_some() {
        return exit::NO_SERVER;
    }
    match e.downcast_ref::<client::Refused>() {
        Some(r) if r.status == 404 => exit::NO_JOB,
        _ => exit::ERROR,
    }
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
        Cmd::Down(d) => jobs::down(d),
        Cmd::Exec(x) => jobs::exec(x),
        Cmd::Hold(j) => jobs::hold(j, "hold"),
        Cmd::Release(j) => jobs::hold(j, "release"),
        Cmd::Rerun(j) => jobs::rerun(j),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut out);
            write_all_out(&out);
            Ok(0)
        }
        Cmd::Man => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            write_all_out(&out);
            Ok(0)
        }
        Cmd::Keeper { state } => {
            berth_tasker::keeper::serve(&state)
                .map_err(|e| anyhow::anyhow!("keeper of {}: {e}", state.display()))?;
            Ok(0)
        }
    }
}
