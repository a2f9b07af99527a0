//! A job without a container: its command, as its owner, in its directory, with its
//! environment, output to its log; stopped with SIGTERM to its process group, then SIGKILL
//! after the grace period.

use crate::keeper::{Keeper, Kept, SpawnJob, Started};
use crate::lifecycle::{supervise, End, HookEnd, Job, Outcome, Stop};
use crate::log::{LogTarget, Sink};
use crate::terminal::Terminal;
use berth_sys as sys;
use berth_sys::spawn::{spawn, Spawn, Stdio};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

/// Runs a job that asks for no container, to its end. `on_start` gets the pid of its
/// process (also its process group) once it runs.
///
/// With a `keeper`, a job with a log file and no terminal is started by the keeper, as its
/// child: it outlives this process, and the next tasker process takes it over ([`resume`]).
pub fn run(
    job: &Job,
    grace: Duration,
    stop: &Stop,
    keeper: Option<&Keeper>,
    on_start: &mut dyn FnMut(u32),
) -> Outcome {
    let fail = Outcome::refused;
    if job.owner.uid == 0 {
        return fail("a job never runs as root; submit it as another user".into());
    }
    if job.command.is_empty() {
        return fail("the command line is empty".into());
    }
    let sink = match Sink::open_with_umask(&job.log, &job.owner, job.umask) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open the log as {}: {e}", job.owner.name)),
    };
    let who = (sys::euid() == 0).then_some(&job.owner);
    if who.is_none() && job.owner.uid != sys::euid() {
        return fail(format!("only root can run a job as {}", job.owner.name));
    }
    if let (Some(k), None, LogTarget::File(log)) = (keeper, &job.interactive, &job.log) {
        return run_kept(job, grace, stop, k, &sink, log, on_start);
    }
    let (mut terminal, slave) = match &job.interactive {
        None => (None, None),
        Some(i) => match Terminal::connect(i, &sys::short_hostname()) {
            Ok((t, s)) => (Some(t), Some(s)),
            Err(e) => {
                sink.note(&format!("job {}: {e}", job.id));
                return fail(format!("interactive: {e}"));
            }
        },
    };
    let (stdin, stdout, stderr) = match &slave {
        Some(t) => (Stdio::Fd(t), Stdio::Fd(t), Stdio::Fd(t)),
        None => {
            let (o, e) = sink.direct();
            (Stdio::Null, o, e)
        }
    };
    let spawned = spawn(&Spawn {
        program: &job.command[0],
        args: &job.command[1..],
        env: &job.env,
        who,
        dir: &job.dir,
        stdin,
        stdout,
        stderr,
        terminal: slave.is_some(),
        exec_fd: None,
        cgroup: job.cgroup.as_ref().map(|c| c.join()),
        umask: Some(job.umask),
        dir_fd: None,
    });
    // The relay ends once no process has the terminal open: not while we do.
    drop(slave);
    let relay = terminal.take().map(|t| t.relay(sink.file()));
    let finish = |relay: Option<crate::terminal::Relay>| {
        if let Some(r) = relay {
            r.finish(Duration::from_secs(2));
        }
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            finish(relay);
            return not_started(job, &sink, e.kind() == std::io::ErrorKind::NotFound, &e);
        }
    };
    on_start(child.pid);
    let end = supervise(child.pid, None, grace, Some(stop), || child.wait());
    finish(relay);
    outcome_of_end(end, &job.id)
}

/// A job whose command could not be started: exit status 127 when it was not found, else
/// 126, as a shell says; the reason goes in its log too.
fn not_started(job: &Job, sink: &Sink, not_found: bool, e: &dyn std::fmt::Display) -> Outcome {
    let why = format!(
        "cannot run {:?} as {} in {}: {e}",
        job.command[0],
        job.owner.name,
        job.dir.display()
    );
    sink.note(&why);
    Outcome {
        end: End::Exited(if not_found { 127 } else { 126 }),
        failure: Some(why),
        after_failures: Vec::new(),
    }
}

/// What a supervised job's end means.
fn outcome_of_end(end: HookEnd, job: &str) -> Outcome {
    match end {
        HookEnd::Exited(s) => outcome_of(s, false),
        HookEnd::Stopped(s) | HookEnd::TimedOut(s, _) => outcome_of(s, true),
        HookEnd::NotStarted(e) => Outcome::refused(format!("job {job}: {e}")),
    }
}

/// What a job's wait status means, `stopped` when it was stopped.
pub fn outcome_of(status: std::process::ExitStatus, stopped: bool) -> Outcome {
    let end = match (status.code(), status.signal()) {
        (Some(c), _) => End::Exited(c),
        (_, Some(s)) => End::Signaled(s),
        _ => End::NotRun,
    };
    let failure = match end {
        End::NotRun if !stopped => Some("ended without a status".into()),
        _ => end.failure(stopped),
    };
    Outcome {
        end,
        failure,
        after_failures: Vec::new(),
    }
}

/// Runs a job as the keeper's child.
fn run_kept(
    job: &Job,
    grace: Duration,
    stop: &Stop,
    keeper: &Keeper,
    sink: &Sink,
    log: &std::path::Path,
    on_start: &mut dyn FnMut(u32),
) -> Outcome {
    let Some(file) = sink.file() else {
        return Outcome::refused("the job's log is not a file".into());
    };
    let join = job.cgroup.as_ref().map(|c| c.keeper_join());
    let cgroup = join.as_ref().map(|(k, _)| *k);
    let req = SpawnJob {
        job: job.id.parse().unwrap_or(0),
        slot: job.slot,
        command: job
            .command
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect(),
        env: job
            .env
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect(),
        who: job.owner.clone(),
        dir: job.dir.clone(),
        umask: job.umask,
        log: log.to_path_buf(),
        cgroup,
    };
    let since = berth_sys::monotonic_us();
    let pid = match keeper.spawn(&req, &file, join.map(|(_, fd)| fd)) {
        Ok(Started::Pid(pid)) => pid,
        Ok(Started::Not(not_found, e)) => return not_started(job, sink, not_found, &e),
        Err(e) => return Outcome::refused(format!("the tasker's keeper: {e}")),
    };
    on_start(pid);
    stop.set_steady(true);
    let id = req.job;
    let end = supervise(pid, None, grace, Some(stop), || {
        stop.set_steady(false);
        keeper.reap(id, stop.requested())
    });
    stop.set_steady(false);
    let mut out = outcome_of_end(end, &job.id);
    named_oom(&mut out, pid, since, sink);
    out
}

/// A job that SIGKILL ended, which the kernel's log says it killed for memory, ended for
/// that: its reason says so (and its log).
fn named_oom(out: &mut Outcome, pid: u32, since_us: u64, sink: &Sink) {
    if out.end != End::Signaled(libc::SIGKILL)
        || out
            .failure
            .as_deref()
            .is_some_and(|f| f.starts_with("stopped"))
    {
        return;
    }
    if let Some(memcg) = berth_sys::oom_killed(pid, since_us) {
        let why = if memcg {
            "out of memory (the memory cgroup it ran in reached its limit)"
        } else {
            "out of memory (the host ran out)"
        };
        sink.note(why);
        out.failure = Some(why.to_string());
    }
}

/// Takes over a job that the keeper kept while no tasker ran: waits for it (or, on a
/// stop, ends it), and takes its status from the keeper.
pub fn resume(kept: &Kept, grace: Duration, stop: &Stop, keeper: &Keeper) -> Outcome {
    crate::keeper::note(
        kept,
        &format!("job {}: a new tasker process took the job over", kept.job),
    );
    if let Some(status) = kept.status {
        return outcome_of(std::process::ExitStatus::from_raw(status), kept.stopped);
    }
    stop.set_steady(true);
    let end = supervise(kept.pid, None, grace, Some(stop), || {
        stop.set_steady(false);
        keeper.reap(kept.job, stop.requested())
    });
    stop.set_steady(false);
    outcome_of_end(end, &kept.job.to_string())
}
