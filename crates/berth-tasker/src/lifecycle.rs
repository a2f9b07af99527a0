//! The life cycle of one container job (SPEC §5): checks, setup, enter with the wrapper,
//! cleanup and teardown, with timeouts, stop, and a local record for recovery.
//!
//! One call of [`run`] runs one job to its end on the calling thread; a tasker runs one
//! per slot, in parallel. Nothing here is global: the [`Host`] is shared, read-only.

use crate::log::{LogTarget, Pump, Sink};
use crate::record::{self, EnterProcess, Held, Record};
use berth_container::check::{self, Checked, Policy};
use berth_container::plan::{self, JobFacts, Limits};
use berth_container::{Config, Hook, HookType, Key, Privilege};
use berth_resources::Expr;
use berth_sys::spawn::{spawn, Spawn, Stdio};
use berth_sys::{self as sys, EventFd, Identity, Woke};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fixed `PATH` of root hooks.
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What every job on a host shares.
#[derive(Debug, Clone)]
pub struct Host {
    /// The host's short name (`HOST`).
    pub host: String,
    /// The server's project name (`VOV_PROJECT_NAME`).
    pub project: String,
    /// The absolute path of the job wrapper, `berth-vw`.
    pub wrapper: PathBuf,
    /// A local directory for records and per-job files, owned by the tasker.
    pub state_dir: PathBuf,
    /// The site key, when this host holds it.
    pub key: Option<Key>,
}

/// One job to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's id (`VOV_JOBID`); letters, digits, `.`, `_` and `-` only.
    pub id: String,
    /// Whom the job runs as; never root.
    pub owner: Identity,
    /// The job's directory.
    pub dir: PathBuf,
    /// The job's environment.
    pub env: Vec<(OsString, OsString)>,
    /// The command line.
    pub command: Vec<OsString>,
    /// The slot on this tasker (`VOV_JOBSLOT`).
    pub slot: u32,
    /// The job's resource request.
    pub request: Option<Expr>,
    /// Where its output goes.
    pub log: LogTarget,
    /// For an interactive job: where its terminal is.
    pub interactive: Option<berth_proto::Interactive>,
    /// The job's cgroup, which every process of it joins (its hooks too).
    pub cgroup: Option<Arc<crate::cgroup::JobCgroup>>,
    /// The submitter's umask: the job and its user hooks run with it, its log is made
    /// with it.
    pub umask: u32,
}

/// Asks a running job to stop; cheap to clone, safe to trigger from any thread.
#[derive(Debug, Clone)]
pub struct Stop(Arc<StopInner>);

#[derive(Debug)]
struct StopInner {
    requested: AtomicBool,
    fd: EventFd,
    /// The job only waits for its command (or enter hook): it can be left running while
    /// the tasker process stops, and the next one takes it over.
    steady: AtomicBool,
    /// Why it was stopped, when not at a user's or administrator's request.
    reason: std::sync::Mutex<Option<String>>,
}

impl Stop {
    /// A stop that has not been asked for.
    pub fn new() -> io::Result<Stop> {
        Ok(Stop(Arc::new(StopInner {
            requested: AtomicBool::new(false),
            fd: EventFd::new()?,
            steady: AtomicBool::new(false),
            reason: std::sync::Mutex::new(None),
        })))
    }

    /// Asks the job to stop.
    pub fn trigger(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        self.0.fd.signal();
    }

    /// Asks the job to stop, for a reason other than a request (a tasker stopped with
    /// `--stop-jobs`, say): its failure names it.
    pub fn trigger_because(&self, reason: &str) {
        *self.0.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        self.trigger();
    }

    /// Why it was stopped, if not by request.
    pub fn reason(&self) -> Option<String> {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Says whether the job only waits for its command now (see [`Stop::steady`]).
    pub fn set_steady(&self, steady: bool) {
        self.0.steady.store(steady, Ordering::SeqCst);
    }

    /// Whether the job only waits for its command: a tasker process may stop then and
    /// leave it running, for the next one to take over.
    pub fn steady(&self) -> bool {
        self.0.steady.load(Ordering::SeqCst)
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.0.fd.raw()
    }
}

/// How the job's command ended, as far as anyone knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// It never ran.
    NotRun,
}

impl End {
    /// Why a job whose command ended so failed; None when it is Done (or never ran, which
    /// the caller says better). A stop's reason wins.
    pub(crate) fn failure(self, stopped: bool) -> Option<String> {
        match self {
            _ if stopped => Some("stopped by request".to_string()),
            End::Exited(0) | End::NotRun => None,
            End::Exited(c) => Some(format!("exit status {c}")),
            End::Signaled(s) => Some(format!("killed by signal {s} ({})", signal_name(s))),
        }
    }
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How the command (or, without the wrapper's report, the enter hook) ended.
    pub end: End,
    /// Why the job failed; `None` when it is Done.
    pub failure: Option<String>,
    /// Cleanup or teardown failures: recorded, but they do not change the job's status.
    pub after_failures: Vec<String>,
}

impl Outcome {
    /// The exit code a shell would report: the code, 128+signal, or 1 when nothing ran.
    pub fn exit_code(&self) -> i32 {
        match self.end {
            End::Exited(c) => c,
            End::Signaled(s) => 128 + s,
            End::NotRun => 1,
        }
    }

    pub(crate) fn refused(why: String) -> Outcome {
        Outcome {
            end: End::NotRun,
            failure: Some(why),
            after_failures: Vec::new(),
        }
    }
}

/// How a hook's process ended.
#[derive(Debug)]
pub(crate) enum HookEnd {
    Exited(ExitStatus),
    TimedOut(ExitStatus, Duration),
    Stopped(ExitStatus),
    NotStarted(io::Error),
}

pub(crate) fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited {c}"),
        (_, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        _ => "ended".to_string(),
    }
}

/// The usual name of a signal.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGABRT => "SIGABRT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

impl HookEnd {
    fn ok(&self) -> bool {
        matches!(self, HookEnd::Exited(s) if s.success())
    }

    fn status(&self) -> Option<ExitStatus> {
        match self {
            HookEnd::Exited(s) | HookEnd::TimedOut(s, _) | HookEnd::Stopped(s) => Some(*s),
            HookEnd::NotStarted(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            HookEnd::Exited(s) => describe(*s),
            HookEnd::TimedOut(_, t) => {
                format!("ran past its timeout of {} s and was killed", t.as_secs())
            }
            HookEnd::Stopped(_) => "was stopped".to_string(),
            HookEnd::NotStarted(e) => format!("could not be started: {e}"),
        }
    }
}

/// What running one hook takes.
struct HookRun<'a> {
    hook: &'a Checked,
    args: &'a [OsString],
    env: &'a [(OsString, OsString)],
    dir: &'a Path,
    owner: &'a Identity,
    timeout: Option<Duration>,
    grace: Duration,
    stop: Option<&'a Stop>,
    sink: &'a Arc<Sink>,
    /// The job's terminal (an interactive job's enter hook).
    tty: Option<&'a std::os::fd::OwnedFd>,
    /// The job's cgroup.
    cgroup: Option<&'a crate::cgroup::JobCgroup>,
    /// The job's umask, for a user hook.
    umask: u32,
    /// The job's directory opened by its owner, when the hooks run there.
    dir_fd: Option<std::os::fd::RawFd>,
}

fn run_hook(r: &HookRun<'_>, on_start: impl FnOnce(u32)) -> HookEnd {
    let kind = r.hook.hook.kind;
    let who = (r.hook.hook.privilege == Privilege::User && sys::euid() == 0).then_some(r.owner);
    let marked = kind != HookType::Enter;
    let (stdin, stdout, stderr) = match r.tty {
        Some(t) => (Stdio::Fd(t), Stdio::Fd(t), Stdio::Fd(t)),
        None if marked => (Stdio::Null, Stdio::Piped, Stdio::Piped),
        None => {
            let (o, e) = r.sink.direct();
            (Stdio::Null, o, e)
        }
    };
    let mut child = match spawn(&Spawn {
        program: r.hook.hook.path.as_os_str(),
        args: r.args,
        env: r.env,
        who,
        dir: r.dir,
        stdin,
        stdout,
        stderr,
        terminal: r.tty.is_some(),
        // The very file that was checked and hashed, not the path looked up again.
        exec_fd: Some(r.hook.file.as_raw_fd()),
        cgroup: r.cgroup.map(|c| c.join()),
        umask: who.map(|_| r.umask),
        // A root hook enters the job's directory as its owner opened it: never one the
        // owner could not enter, nor one swapped since.
        dir_fd: if who.is_none() { r.dir_fd } else { None },
    }) {
        Ok(c) => c,
        Err(e) => {
            let e = if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{e} (as {} in {})",
                        who.map(|w| w.name.as_str()).unwrap_or("root"),
                        r.dir.display()
                    ),
                )
            } else {
                e
            };
            return HookEnd::NotStarted(e);
        }
    };
    let pid = child.pid;
    let pump = (marked && r.tty.is_none()).then(|| {
        Pump::start(
            r.sink,
            kind.as_str(),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        )
    });
    on_start(pid);
    let end = supervise(pid, r.timeout, r.grace, r.stop, || child.wait());
    if let Some(p) = pump {
        p.finish(Duration::from_secs(2));
    }
    end
}

/// Waits for a process group leader, enforcing a timeout and a stop; ends the whole group
/// when the leader ends or is ended (SIGTERM, grace, SIGKILL).
pub(crate) fn supervise(
    pid: u32,
    timeout: Option<Duration>,
    grace: Duration,
    stop: Option<&Stop>,
    reap: impl FnOnce() -> io::Result<ExitStatus>,
) -> HookEnd {
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => return HookEnd::NotStarted(e),
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let woke = if stop.is_some_and(|s| s.requested()) {
        Woke::Stopped
    } else {
        sys::wait_pidfd(&pidfd, deadline, stop.map(|s| s.fd())).unwrap_or(Woke::Exited)
    };
    if woke != Woke::Exited {
        terminate(pid, &pidfd, grace);
    }
    // The leader is a zombie until reaped, so its pid still names the group: end what is
    // left of the group before reaping, and no other process can be hit.
    sys::kill_group(pid, libc::SIGKILL);
    let status = match reap() {
        Ok(s) => s,
        Err(e) => return HookEnd::NotStarted(e),
    };
    match woke {
        Woke::Exited => HookEnd::Exited(status),
        Woke::TimedOut => HookEnd::TimedOut(status, timeout.unwrap_or_default()),
        Woke::Stopped => HookEnd::Stopped(status),
    }
}

/// SIGTERM to the group, up to `grace` for the leader to end, then SIGKILL.
fn terminate(pid: u32, pidfd: &std::os::fd::OwnedFd, grace: Duration) {
    sys::kill_group(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    if sys::wait_pidfd(pidfd, Some(deadline), None).ok() != Some(Woke::Exited) {
        sys::kill_group(pid, libc::SIGKILL);
        let _ = sys::wait_pidfd(pidfd, None, None);
    }
}

fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The per-job files the tasker keeps: `STATE/jobs/JOB/`.
fn job_state_dir(host: &Host, job_id: &str) -> PathBuf {
    host.state_dir.join("jobs").join(job_id)
}

/// The file in the job's directory where the wrapper writes the command's status.
pub fn status_path(job_dir: &Path, job_id: &str) -> PathBuf {
    job_dir.join(format!(".berth-vw.{job_id}.status"))
}

/// The environment for a hook: the job's own for a user hook; for a root hook a clean one
/// (fixed `PATH`, no `LD_PRELOAD`, `LD_LIBRARY_PATH`, `BASH_ENV`, `ENV`, `IFS`), the job's
/// environment being in the file `VOV_CONTAINER_ENV_FILE`. Both get the variables of §5
/// and berth's extensions.
fn hook_env(
    privilege: Privilege,
    job_env: &[(OsString, OsString)],
    vars: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = match privilege {
        Privilege::User => job_env.to_vec(),
        Privilege::Root => vec![
            ("PATH".into(), ROOT_PATH.into()),
            ("HOME".into(), "/root".into()),
            ("USER".into(), "root".into()),
            ("LOGNAME".into(), "root".into()),
            ("LANG".into(), "C".into()),
        ],
    };
    for (k, v) in vars {
        env.retain(|(ek, _)| ek != OsStr::new(k));
        env.push((k.into(), v.into()));
    }
    env
}

/// The job's environment as a file of `NAME=VALUE` lines (the format of `docker run
/// --env-file`). A value holding a newline cannot be written so and is left out, with a
/// note.
fn env_file_text(env: &[(OsString, OsString)]) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (k, v) in env {
        let kb = k.as_bytes();
        let name_ok = !kb.is_empty()
            && !kb[0].is_ascii_digit()
            && kb.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !name_ok || v.as_bytes().contains(&b'\n') {
            skipped.push(k.to_string_lossy().into_owned());
            continue;
        }
        out.extend_from_slice(kb);
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    (out, skipped)
}

/// The job's directory, opened as its owner (who must be able to enter it): hooks run
/// there, root ones too, so a directory the owner cannot enter is refused.
pub(crate) fn enter_as_owner(job: &Job) -> Result<std::fs::File, String> {
    let dot = job.dir.join(".");
    sys::as_user(&job.owner, || {
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dot)
    })
    .map_err(|e| {
        format!(
            "the job's directory {}: {} cannot enter it: {e}",
            job.dir.display(),
            job.owner.name
        )
    })
}

/// Reads the wrapper's report, as the job's owner, and removes it. A report that is not a
/// regular file (the job can replace it: it lies in the job's directory) is an error,
/// and is never opened in a way that could block.
fn read_status(owner: &Identity, path: &Path) -> Result<Option<String>, String> {
    sys::as_user(owner, || {
        let mut o = std::fs::File::options();
        o.read(true);
        let f = match crate::log::open_regular(&mut o, path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                let _ = std::fs::remove_file(path);
                return Err(format!("the wrapper's status file {e}"));
            }
            Err(_) => return Ok(None),
        };
        let mut text = String::new();
        let _ = f.take(4096).read_to_string(&mut text);
        let _ = std::fs::remove_file(path);
        Ok(Some(text))
    })
}

/// How the wrapper's report reads.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    None,
    Started,
    Ended(End),
    /// Killed by the kernel for memory, in a cgroup with this limit (bytes), if any.
    OutOfMemory(End, Option<u64>),
    /// The report was replaced by something that is not a regular file.
    Refused(String),
}

fn report_of(read: Result<Option<String>, String>) -> Report {
    match read {
        Ok(text) => parse_report(text.as_deref()),
        Err(why) => Report::Refused(why),
    }
}

fn parse_report(text: Option<&str>) -> Report {
    let Some(text) = text else {
        return Report::None;
    };
    let Some(last) = text.lines().rfind(|l| !l.trim().is_empty()) else {
        return Report::None;
    };
    let mut w = last.split_whitespace();
    match (w.next(), w.next().and_then(|n| n.parse::<i32>().ok())) {
        (Some("exit"), Some(c)) => Report::Ended(End::Exited(c)),
        (Some("signal"), Some(s)) => match (w.next(), w.next()) {
            (Some("oom"), limit) => {
                Report::OutOfMemory(End::Signaled(s), limit.and_then(|l| l.parse().ok()))
            }
            _ => Report::Ended(End::Signaled(s)),
        },
        (Some("started"), _) => Report::Started,
        _ => Report::None,
    }
}

/// `berth exec`: runs `command` in running job `job_id`'s container with the
/// configuration's exec hook (checked again now, as every hook is before it runs), as
/// the hook says (`user`: the job's owner; `root`), with the job's variables and
/// `"$@"` = WRAPPER COMMAND..., its standard input, output and error the user's
/// terminal (relayed as `berth run -I`'s). Returns the exit status a shell would report.
pub fn exec(
    host: &Host,
    containers_dir: &Path,
    job_id: &str,
    x: &berth_proto::ExecRequest,
    cgroup: Option<&crate::cgroup::JobCgroup>,
    still_runs: &dyn Fn() -> bool,
) -> Result<i32, String> {
    let (command, terminal) = (&x.command, &x.terminal);
    if !valid_job_id(job_id) || command.is_empty() {
        return Err("a job id and a command are needed".into());
    }
    // The user's terminal first: however long its far end takes, the job is looked at
    // after, just before the hook runs.
    let (terminal, slave) = crate::terminal::Terminal::connect(terminal, &host.host)
        .map_err(|e| format!("reaching the terminal of berth exec: {e}"))?;
    if !still_runs() {
        return Err(format!("job {job_id} has ended"));
    }
    let path = record::dir(&host.state_dir).join(format!("{job_id}.json"));
    let text = std::fs::read(&path).map_err(|e| {
        format!("job {job_id} runs in no container on this tasker ({}: {e}); berth exec enters container jobs only", path.display())
    })?;
    let rec: Record = serde_json::from_slice(&text)
        .map_err(|e| format!("job {job_id}: its record {}: {e}", path.display()))?;
    let Some(enter) = &rec.enter else {
        return Err(format!(
            "job {job_id} has not entered its container yet; try again"
        ));
    };
    // The very enter hook the record names, not a process that took its pid since.
    if sys::start_time(enter.pid) != Some(enter.start_time) {
        return Err(format!("job {job_id}: its enter hook has ended"));
    }
    let cfg = check::load(containers_dir, &rec.container).map_err(|e| e.to_string())?;
    let Some(hook) = cfg.hooks.iter().find(|h| h.kind == HookType::Exec) else {
        return Err(format!(
            "container {}: {} has no exec hook (containerHook exec PRIVILEGE PATH SIGNATURE), \
             so berth exec cannot enter its jobs; ask an administrator to add one",
            cfg.name,
            cfg.path.display()
        ));
    };
    if hook.privilege == Privilege::Root && sys::euid() != 0 {
        return Err(format!(
            "container {}: its exec hook runs as root, but berth runs as uid {}",
            cfg.name,
            sys::euid()
        ));
    }
    let checked = check::check_hook(
        &cfg.name,
        hook,
        Policy {
            key: host.key.as_ref(),
        },
    )
    .map_err(|r| r.to_string())?;
    // The job's own wrapper reports to BERTH_VW_STATUS; the one of an exec must not.
    let job_env: Vec<(OsString, OsString)> = rec
        .job_env
        .iter()
        .filter(|(k, _)| k != "BERTH_VW_STATUS")
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let mut vars: Vec<(String, String)> = rec
        .vars
        .iter()
        .filter(|(k, _)| k != "BERTH_VW_STATUS")
        .cloned()
        .collect();
    vars.push(("BERTH_ENTER_PID".into(), enter.pid.to_string()));
    // Whether the command reads the user's input, and has a terminal of its own.
    vars.push(("BERTH_EXEC_STDIN".into(), u8::from(x.stdin).to_string()));
    vars.push(("BERTH_EXEC_TTY".into(), u8::from(x.tty).to_string()));
    let env = hook_env(hook.privilege, &job_env, &vars);
    let mut args: Vec<OsString> = vec![host.wrapper.clone().into()];
    args.extend(command.iter().map(OsString::from));
    // The job's directory, entered as its owner (who need not read it): a root hook
    // enters only one the owner could enter.
    let dir = if rec.hook_dir == rec.job_dir {
        let dot = rec.job_dir.join(".");
        Some(
            sys::as_user(&rec.owner, || {
                std::fs::File::options()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(&dot)
            })
            .map_err(|e| format!("{}: {e}", rec.job_dir.display()))?,
        )
    } else {
        None
    };
    let sink = Arc::new(Sink::Terminal);
    let mut terminal = Some(terminal);
    let mut relay = None;
    let end = run_hook(
        &HookRun {
            hook: &checked,
            args: &args,
            env: &env,
            dir: &rec.hook_dir,
            owner: &rec.owner,
            timeout: None,
            grace: Duration::from_secs(rec.kill_grace),
            stop: None,
            sink: &sink,
            tty: Some(&slave),
            // The job's: what the exec leaves behind ends with the job.
            cgroup,
            umask: rec.umask.unwrap_or(0o077),
            dir_fd: dir.as_ref().map(|d| d.as_raw_fd()),
        },
        |_| relay = terminal.take().map(|t| t.relay(None)),
    );
    drop(slave);
    if let Some(r) = relay {
        r.finish(Duration::from_secs(2));
    }
    match end {
        HookEnd::NotStarted(e) => Err(format!(
            "container {}: exec hook {} could not be started: {e}",
            cfg.name,
            hook.path.display()
        )),
        e => Ok(e
            .status()
            .map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
            .unwrap_or(1)),
    }
}

/// The reason of a job the kernel killed for memory: `out of memory (limit 64 MB)`.
pub fn out_of_memory(limit: Option<u64>) -> String {
    match limit {
        Some(b) if b % (1 << 20) == 0 => format!("out of memory (limit {} MB)", b >> 20),
        Some(b) => format!("out of memory (limit {b} bytes)"),
        None => "out of memory".to_string(),
    }
}

/// The variables and environments of one job.
struct Prepared {
    vars: Vec<(String, String)>,
    env_file: PathBuf,
    status_file: PathBuf,
    job_env: Vec<(OsString, OsString)>,
    hook_dir: PathBuf,
}

fn prepare(
    host: &Host,
    job: &Job,
    cfg: &Config,
    limits: &Limits,
    sink: &Sink,
) -> io::Result<Prepared> {
    let state = job_state_dir(host, &job.id);
    std::fs::create_dir_all(&state)?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o711))?;
    let status_file = status_path(&job.dir, &job.id);
    // A report left by an earlier run of the same id must not be taken for this one's.
    sys::as_user(&job.owner, || std::fs::remove_file(&status_file).ok());
    let mut job_env: Vec<(OsString, OsString)> = job
        .env
        .iter()
        .filter(|(k, _)| k != "BERTH_VW_STATUS")
        .cloned()
        .collect();
    job_env.push(("BERTH_VW_STATUS".into(), status_file.clone().into()));
    let env_file = state.join("env");
    let (text, skipped) = env_file_text(&job_env);
    if !skipped.is_empty() {
        sink.note(&format!(
            "job {}: left out of {}: {} (a value with a newline or a bad name)",
            job.id,
            env_file.display(),
            skipped.join(", ")
        ));
    }
    {
        use std::io::Write;
        let mut f = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&env_file)?;
        f.write_all(&text)?;
        if sys::euid() == 0 {
            std::os::unix::fs::fchown(&f, Some(job.owner.uid), Some(job.owner.gid))?;
        }
    }
    let facts = JobFacts {
        host: &host.host,
        project: &host.project,
        slot: job.slot,
        job_id: &job.id,
        job_dir: &job.dir,
        limits,
    };
    let mut vars = plan::hook_variables(cfg, &facts);
    vars.push((
        "VOV_CONTAINER_ENV_FILE".into(),
        env_file.display().to_string(),
    ));
    vars.push(("BERTH_JOB_USER".into(), job.owner.name.clone()));
    vars.push(("BERTH_JOB_UID".into(), job.owner.uid.to_string()));
    vars.push(("BERTH_JOB_GID".into(), job.owner.gid.to_string()));
    vars.push(("BERTH_JOB_DIR".into(), job.dir.display().to_string()));
    vars.push(("BERTH_VW_STATUS".into(), status_file.display().to_string()));
    vars.push(("BERTH_VW".into(), host.wrapper.display().to_string()));
    Ok(Prepared {
        vars,
        env_file,
        status_file,
        job_env,
        hook_dir: plan::hook_dir(cfg, &job.dir).to_path_buf(),
    })
}

/// Runs one container job to its end: the whole of SPEC §5. The job's log receives the
/// hooks' output and berth's own notes; the outcome says how the job ended.
pub fn run(host: &Host, job: &Job, cfg: &Config, stop: &Stop) -> Outcome {
    let sink = match Sink::open_with_umask(&job.log, &job.owner, job.umask) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            return Outcome::refused(format!("cannot open the log as {}: {e}", job.owner.name))
        }
    };
    let out = run_with_sink(host, job, cfg, stop, &sink);
    if let Some(f) = &out.failure {
        sink.note(&format!("job {}: failed: {f}", job.id));
    }
    out
}

fn run_with_sink(host: &Host, job: &Job, cfg: &Config, stop: &Stop, sink: &Arc<Sink>) -> Outcome {
    // Everything that can refuse the job comes before any hook runs.
    if !valid_job_id(&job.id) {
        return Outcome::refused(format!("job id {:?} is not valid", job.id));
    }
    if job.owner.uid == 0 {
        return Outcome::refused("a job never runs as root; submit it as another user".into());
    }
    if job.command.is_empty() {
        return Outcome::refused("the command line is empty".to_string());
    }
    let limits = match plan::limits(cfg, job.request.as_ref()) {
        Ok(l) => l,
        Err(e) => return Outcome::refused(e.to_string()),
    };
    let job_dir = match enter_as_owner(job) {
        Ok(d) => d,
        Err(why) => return Outcome::refused(why),
    };
    if sys::euid() != 0 {
        if let Some(h) = cfg.hooks.iter().find(|h| h.privilege == Privilege::Root) {
            return Outcome::refused(format!(
                "container {}: {} hook {} runs as root, but berth runs as uid {}; run it as root",
                cfg.name,
                h.kind,
                h.path.display(),
                sys::euid()
            ));
        }
        if job.owner.uid != sys::euid() {
            return Outcome::refused(format!("only root can run a job as {}", job.owner.name));
        }
    }
    let checked = match check::check_hooks(
        cfg,
        Policy {
            key: host.key.as_ref(),
        },
    ) {
        Ok(c) => c,
        Err(r) => return Outcome::refused(r.to_string()),
    };
    let prepared = match prepare(host, job, cfg, &limits, sink) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::refused(format!(
                "preparing {}: {e}",
                job_state_dir(host, &job.id).display()
            ))
        }
    };
    let after: Vec<&Checked> = plan::AFTER
        .iter()
        .filter_map(|k| checked.iter().find(|c| c.hook.kind == *k))
        .collect();
    let mut rec = Record {
        job_id: job.id.clone(),
        container: cfg.name.clone(),
        cfg_path: cfg.path.clone(),
        owner: job.owner.clone(),
        job_dir: job.dir.clone(),
        hook_dir: prepared.hook_dir.clone(),
        job_env: prepared
            .job_env
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect(),
        vars: prepared.vars.clone(),
        log: job.log.clone(),
        after: after.iter().map(|c| c.hook.clone()).collect(),
        after_timeouts: after
            .iter()
            .map(|c| cfg.timeout(c.hook.kind).unwrap_or_default().as_secs())
            .collect(),
        kill_grace: cfg.kill_grace.as_secs(),
        enter: None,
        umask: Some(job.umask),
    };
    // The record reaches the disk before setup starts: from here on, cleanup and teardown
    // are owed.
    let held = match Held::create(&host.state_dir, &rec) {
        Ok(h) => h,
        Err(e) => {
            return Outcome::refused(format!(
                "cannot write its record under {}: {e}",
                record::dir(&host.state_dir).display()
            ))
        }
    };

    let run_one = |c: &Checked,
                   args: &[OsString],
                   timeout,
                   stop: Option<&Stop>,
                   tty: Option<&std::os::fd::OwnedFd>,
                   on_start: &mut dyn FnMut(u32)| {
        let env = hook_env(c.hook.privilege, &prepared.job_env, &prepared.vars);
        run_hook(
            &HookRun {
                hook: c,
                args,
                env: &env,
                dir: &prepared.hook_dir,
                owner: &job.owner,
                timeout,
                grace: cfg.kill_grace,
                stop,
                sink,
                tty,
                cgroup: job.cgroup.as_deref(),
                umask: job.umask,
                dir_fd: (prepared.hook_dir == job.dir).then(|| job_dir.as_raw_fd()),
            },
            on_start,
        )
    };
    let failed_hook = |c: &Checked, end: &HookEnd| {
        format!(
            "container {}: {} hook {} {}",
            cfg.name,
            c.hook.kind,
            c.hook.path.display(),
            end.describe()
        )
    };

    let mut outcome = Outcome {
        end: End::NotRun,
        failure: None,
        after_failures: Vec::new(),
    };
    let setup_ok = match checked.iter().find(|c| c.hook.kind == HookType::Setup) {
        None => true,
        Some(c) => {
            let end = run_one(
                c,
                &[],
                cfg.timeout(HookType::Setup),
                Some(stop),
                None,
                &mut |_| {},
            );
            if !end.ok() {
                outcome.failure = Some(failed_hook(c, &end));
            }
            end.ok()
        }
    };
    if setup_ok && stop.requested() {
        outcome.failure = Some("stopped before it started".to_string());
    } else if setup_ok {
        let enter = checked
            .iter()
            .find(|c| c.hook.kind == HookType::Enter)
            .expect("a parsed configuration has an enter hook");
        let mut args: Vec<OsString> = vec![host.wrapper.clone().into()];
        args.extend(job.command.iter().cloned());
        let terminal = match &job.interactive {
            None => Ok(None),
            Some(i) => crate::terminal::Terminal::connect(i, &host.host).map(Some),
        };
        let end = match terminal {
            Err(e) => HookEnd::NotStarted(e),
            Ok(terminal) => {
                let (mut terminal, slave) = match terminal {
                    Some((t, s)) => (Some(t), Some(s)),
                    None => (None, None),
                };
                let mut relay = None;
                let end = run_one(enter, &args, None, Some(stop), slave.as_ref(), &mut |pid| {
                    relay = terminal.take().map(|t| t.relay(sink.file()));
                    rec.enter =
                        sys::start_time(pid).map(|start_time| EnterProcess { pid, start_time });
                    if let Err(e) = held.update(&rec) {
                        sink.note(&format!("job {}: cannot update its record: {e}", job.id));
                    }
                    // Recorded: a next tasker process can take it over from here. An
                    // interactive one cannot (its terminal is this process's).
                    if job.interactive.is_none() {
                        stop.set_steady(true);
                    }
                });
                stop.set_steady(false);
                // The relay ends once no process has the terminal open: not while we do.
                drop(slave);
                if let Some(r) = relay {
                    r.finish(Duration::from_secs(2));
                }
                end
            }
        };
        let report = report_of(read_status(&job.owner, &prepared.status_file));
        let stopped = matches!(end, HookEnd::Stopped(_));
        let hook_end = match end.status() {
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => End::Exited(c),
                (_, Some(sig)) => End::Signaled(sig),
                _ => End::NotRun,
            },
            None => End::NotRun,
        };
        match report {
            Report::Ended(e) => {
                outcome.end = e;
                outcome.failure = e.failure(stopped);
            }
            Report::OutOfMemory(e, limit) => {
                outcome.end = e;
                // A stop's reason wins: its SIGKILL may have come while memory ran out.
                outcome.failure = if stopped {
                    e.failure(stopped)
                } else {
                    Some(out_of_memory(limit))
                };
            }
            Report::Refused(why) => {
                outcome.end = hook_end;
                outcome.failure = Some(why);
            }
            Report::Started | Report::None => {
                outcome.end = hook_end;
                let what = if report == Report::Started {
                    "the wrapper started but did not report the command's status"
                } else {
                    "the wrapper never ran"
                };
                outcome.failure = Some(if stopped {
                    format!("stopped by request ({what})")
                } else {
                    format!(
                        "{} ({what}; the status is the enter hook's)",
                        failed_hook(enter, &end)
                    )
                });
            }
        }
    }

    // Cleanup and teardown: always, once setup was started, and not stoppable.
    for c in &after {
        let end = run_one(c, &[], cfg.timeout(c.hook.kind), None, None, &mut |_| {});
        if !end.ok() {
            let f = failed_hook(c, &end);
            sink.note(&format!("job {}: {f}", job.id));
            outcome.after_failures.push(f);
        }
    }
    let _ = std::fs::remove_file(&prepared.env_file);
    let _ = std::fs::remove_dir(job_state_dir(host, &job.id));
    if let Err(e) = held.remove() {
        sink.note(&format!("job {}: cannot remove its record: {e}", job.id));
    }
    outcome
}

/// What a recovery did for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The job's id.
    pub job_id: String,
    /// The configuration's NAME.
    pub container: String,
    /// Whether its enter hook was still running and had to be ended.
    pub ended_enter: bool,
    /// The hooks that ran, with how each ended.
    pub hooks: Vec<(HookType, Result<(), String>)>,
}

/// A container job whose tasker process ended while its enter hook went on running: a
/// new tasker process takes it over, waits for it, and finishes it.
#[derive(Debug)]
pub struct Adopted {
    orphan: record::Orphan,
    enter: EnterProcess,
    /// The job's id, as the server knows it.
    pub job: u64,
    /// Its slot.
    pub slot: u32,
}

/// Finishes the cleanup and teardown that processes which ended in the middle of a
/// container job owe (a killed tasker, a killed `try`), ending enter hooks still running.
/// Each hook is checked again before it runs. `note` receives one line per action, for
/// the caller to show.
pub fn recover(host: &Host, note: &mut dyn FnMut(String)) -> Vec<Recovered> {
    recover_or_adopt(host, false, note).0
}

/// As [`recover`], but with `adopt` a job whose enter hook still runs (a tasker killed and
/// started again while its container went on) is not ended: it is returned, for
/// [`resume`] to see it to its end.
pub fn recover_or_adopt(
    host: &Host,
    adopt: bool,
    note: &mut dyn FnMut(String),
) -> (Vec<Recovered>, Vec<Adopted>) {
    let (orphans, bad) = record::orphans(&host.state_dir);
    for b in bad {
        note(format!(
            "cannot recover from {b}; remove it once its container is gone"
        ));
    }
    let mut done = Vec::new();
    let mut adopted = Vec::new();
    for o in orphans {
        if adopt {
            let rec = &o.record;
            let live = rec
                .enter
                .filter(|e| sys::start_time(e.pid) == Some(e.start_time));
            let job = rec.job_id.parse::<u64>().ok();
            let slot = rec
                .vars
                .iter()
                .find(|(k, _)| k == "VOV_JOBSLOT")
                .and_then(|(_, v)| v.parse::<u32>().ok());
            if let (Some(enter), Some(job), Some(slot)) = (live, job, slot) {
                note(format!(
                    "job {job}: its enter hook (process group {}) still runs; taking it over",
                    enter.pid
                ));
                adopted.push(Adopted {
                    orphan: o,
                    enter,
                    job,
                    slot,
                });
                continue;
            }
        }
        let rec = &o.record;
        let sink = Arc::new(Sink::open(&rec.log, &rec.owner).unwrap_or(Sink::Terminal));
        let msg = format!(
            "job {}: the process that ran it ended in the middle; finishing the cleanup and teardown of container {}",
            rec.job_id, rec.container
        );
        sink.note(&msg);
        note(msg);
        let grace = Duration::from_secs(rec.kill_grace);
        let mut ended_enter = false;
        if let Some(e) = rec.enter {
            if sys::start_time(e.pid) == Some(e.start_time) {
                if let Ok(fd) = sys::pidfd_open(e.pid) {
                    terminate(e.pid, &fd, grace);
                    ended_enter = true;
                    note(format!(
                        "job {}: ended its enter hook (process group {})",
                        rec.job_id, e.pid
                    ));
                }
            } else if sys::group_alive(e.pid) {
                sys::kill_group(e.pid, libc::SIGKILL);
            }
        }
        let vars = rec.vars.clone();
        let job_env: Vec<(OsString, OsString)> = rec
            .job_env
            .iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let mut hooks = Vec::new();
        for (h, t) in rec.after.iter().zip(&rec.after_timeouts) {
            let r = recover_hook(
                host,
                rec,
                h,
                Duration::from_secs(*t),
                grace,
                &job_env,
                &vars,
                &sink,
            );
            let line = match &r {
                Ok(()) => format!("job {}: {} hook ran", rec.job_id, h.kind),
                Err(e) => format!("job {}: {e}", rec.job_id),
            };
            sink.note(&line);
            note(line);
            hooks.push((h.kind, r));
        }
        let _ = std::fs::remove_file(job_state_dir(host, &rec.job_id).join("env"));
        let _ = std::fs::remove_dir(job_state_dir(host, &rec.job_id));
        let status = status_path(&rec.job_dir, &rec.job_id);
        sys::as_user(&rec.owner, || std::fs::remove_file(&status).ok());
        if let Err(e) = o.held.remove() {
            note(format!("job {}: cannot remove its record: {e}", rec.job_id));
        }
        done.push(Recovered {
            job_id: rec.job_id.clone(),
            container: rec.container.clone(),
            ended_enter,
            hooks,
        });
    }
    (done, adopted)
}

/// Sees an adopted job to its end: waits for its enter hook (or, on a stop, ends it),
/// takes the command's status from the wrapper's report, and runs cleanup and teardown.
pub fn resume(host: &Host, a: Adopted, stop: &Stop) -> Outcome {
    let rec = &a.orphan.record;
    let sink = Arc::new(Sink::open(&rec.log, &rec.owner).unwrap_or(Sink::Terminal));
    sink.note(&format!(
        "job {}: a new tasker process took the job over",
        rec.job_id
    ));
    let grace = Duration::from_secs(rec.kill_grace);
    let mut stopped = false;
    match sys::pidfd_open(a.enter.pid) {
        Ok(fd) if sys::start_time(a.enter.pid) == Some(a.enter.start_time) => {
            stop.set_steady(true);
            let woke = sys::wait_pidfd(&fd, None, Some(stop.fd())).unwrap_or(Woke::Exited);
            stop.set_steady(false);
            if woke != Woke::Exited {
                stopped = true;
                terminate(a.enter.pid, &fd, grace);
            }
        }
        _ => {} // it ended in between
    }
    // Not our child: its status is gone with it, but the wrapper's report is not.
    sys::kill_group(a.enter.pid, libc::SIGKILL);
    let status_file = status_path(&rec.job_dir, &rec.job_id);
    let report = report_of(read_status(&rec.owner, &status_file));
    let mut outcome = match report {
        Report::Ended(e) => Outcome {
            end: e,
            failure: e.failure(stopped),
            after_failures: Vec::new(),
        },
        Report::OutOfMemory(e, limit) => Outcome {
            end: e,
            failure: if stopped {
                e.failure(stopped)
            } else {
                Some(out_of_memory(limit))
            },
            after_failures: Vec::new(),
        },
        Report::Refused(why) => Outcome::refused(why),
        Report::Started | Report::None => Outcome::refused(if stopped {
            "stopped by request (the wrapper did not report the command's status)".to_string()
        } else {
            format!(
                "container {}: the enter hook ended while no tasker watched it, and the wrapper {}",
                rec.container,
                if report == Report::Started {
                    "did not report the command's status"
                } else {
                    "never ran"
                }
            )
        }),
    };
    let job_env: Vec<(OsString, OsString)> = rec
        .job_env
        .iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    for (h, t) in rec.after.iter().zip(&rec.after_timeouts) {
        if let Err(e) = recover_hook(
            host,
            rec,
            h,
            Duration::from_secs(*t),
            grace,
            &job_env,
            &rec.vars,
            &sink,
        ) {
            sink.note(&format!("job {}: {e}", rec.job_id));
            outcome.after_failures.push(e);
        }
    }
    let _ = std::fs::remove_file(job_state_dir(host, &rec.job_id).join("env"));
    let _ = std::fs::remove_dir(job_state_dir(host, &rec.job_id));
    if let Some(f) = &outcome.failure {
        sink.note(&format!("job {}: failed: {f}", rec.job_id));
    }
    if let Err(e) = a.orphan.held.remove() {
        sink.note(&format!(
            "job {}: cannot remove its record: {e}",
            rec.job_id
        ));
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
fn recover_hook(
    host: &Host,
    rec: &Record,
    h: &Hook,
    timeout: Duration,
    grace: Duration,
    job_env: &[(OsString, OsString)],
    vars: &[(String, String)],
    sink: &Arc<Sink>,
) -> Result<(), String> {
    let checked = check::check_hook(
        &rec.container,
        h,
        Policy {
            key: host.key.as_ref(),
        },
    )
    .map_err(|r| r.to_string())?;
    let env = hook_env(h.privilege, job_env, vars);
    let end = run_hook(
        &HookRun {
            hook: &checked,
            args: &[],
            env: &env,
            dir: &rec.hook_dir,
            owner: &rec.owner,
            timeout: Some(timeout),
            grace,
            stop: None,
            sink,
            tty: None,
            cgroup: None,
            umask: 0o022,
            dir_fd: None,
        },
        |_| {},
    );
    if end.ok() {
        Ok(())
    } else {
        Err(format!(
            "container {}: {} hook {} {}",
            rec.container,
            h.kind,
            h.path.display(),
            end.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_table() {
        assert_eq!(parse_report(None), Report::None);
        assert_eq!(parse_report(Some("")), Report::None);
        assert_eq!(parse_report(Some("started 12\n")), Report::Started);
        assert_eq!(
            parse_report(Some("started 12\nexit 3\n")),
            Report::Ended(End::Exited(3))
        );
        assert_eq!(
            parse_report(Some("started 12\nsignal 9\n")),
            Report::Ended(End::Signaled(9))
        );
        assert_eq!(parse_report(Some("garbage")), Report::None);
        assert_eq!(
            parse_report(Some("started 12\nsignal 9 oom 67108864\n")),
            Report::OutOfMemory(End::Signaled(9), Some(64 << 20))
        );
        assert_eq!(
            parse_report(Some("signal 9 oom -\n")),
            Report::OutOfMemory(End::Signaled(9), None)
        );
        assert_eq!(out_of_memory(Some(64 << 20)), "out of memory (limit 64 MB)");
        assert_eq!(out_of_memory(None), "out of memory");
    }

    #[test]
    fn root_hooks_get_a_clean_environment() {
        let job_env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/home/u/bin:/usr/bin".into()),
            ("LD_PRELOAD".into(), "/tmp/evil.so".into()),
            ("LD_LIBRARY_PATH".into(), "/tmp".into()),
            ("BASH_ENV".into(), "/tmp/x".into()),
            ("ENV".into(), "/tmp/x".into()),
            ("IFS".into(), "x".into()),
            ("MY_VAR".into(), "1".into()),
        ];
        let vars = vec![("VOV_JOBID".to_string(), "7".to_string())];
        let root = hook_env(Privilege::Root, &job_env, &vars);
        let names: Vec<_> = root
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["PATH", "HOME", "USER", "LOGNAME", "LANG", "VOV_JOBID"]
        );
        assert_eq!(root[0].1, ROOT_PATH);
        let user = hook_env(Privilege::User, &job_env, &vars);
        assert!(user.iter().any(|(k, v)| k == "MY_VAR" && v == "1"));
        assert!(user.iter().any(|(k, v)| k == "VOV_JOBID" && v == "7"));
    }

    #[test]
    fn env_file_table() {
        let env: Vec<(OsString, OsString)> = vec![
            ("A".into(), "1".into()),
            ("B".into(), "two words".into()),
            ("C".into(), "line\nbreak".into()),
            ("BASH_FUNC_x%%".into(), "() { :; }".into()),
            ("D".into(), "".into()),
        ];
        let (text, skipped) = env_file_text(&env);
        assert_eq!(String::from_utf8(text).unwrap(), "A=1\nB=two words\nD=\n");
        assert_eq!(skipped, ["C", "BASH_FUNC_x%%"]);
    }

    #[test]
    fn job_ids_table() {
        for ok in ["1", "42", "try-7", "a.b_c"] {
            assert!(valid_job_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_job_id(bad), "{bad:?}");
        }
    }
}
