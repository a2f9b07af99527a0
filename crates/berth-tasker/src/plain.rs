//! A job without a container: its command, as its owner, in its directory, with its
//! environment, output to its log; stopped with SIGTERM to its process group, then SIGKILL
//! after the grace period.

use crate::lifecycle::{signal_name, supervise, End, HookEnd, Job, Outcome, Stop};
use crate::log::Sink;
use berth_sys::{self as sys, ChildSetup};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs a job that asks for no container, to its end. `on_start` gets the pid of its
/// process (also its process group) once it runs.
pub fn run(job: &Job, grace: Duration, stop: &Stop, on_start: &mut dyn FnMut(u32)) -> Outcome {
    let fail = |why: String| Outcome {
        end: End::NotRun,
        failure: Some(why),
        after_failures: Vec::new(),
    };
    if job.owner.uid == 0 {
        return fail("a job never runs as root; submit it as another user".into());
    }
    if job.command.is_empty() {
        return fail("the command line is empty".into());
    }
    let sink = match Sink::open(&job.log, &job.owner) {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "cannot open the log {:?} as {}: {e}",
                job.log, job.owner.name
            ))
        }
    };
    let (out, err) = match sink.direct() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot use the log: {e}")),
    };
    let who = (sys::euid() == 0).then_some(&job.owner);
    if who.is_none() && job.owner.uid != sys::euid() {
        return fail(format!("only root can run a job as {}", job.owner.name));
    }
    let setup = match ChildSetup::new(who, &job.dir) {
        Ok(s) => s,
        Err(e) => return fail(format!("directory {}: {e}", job.dir.display())),
    };
    let mut cmd = Command::new(&job.command[0]);
    cmd.args(&job.command[1..])
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    setup.install(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!(
                "cannot run {:?} as {} in {}: {e}",
                job.command[0],
                job.owner.name,
                job.dir.display()
            );
            sink.note(&why);
            return Outcome {
                end: End::Exited(if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                }),
                ..fail(why)
            };
        }
    };
    on_start(child.id());
    let end = supervise(child.id(), None, grace, Some(stop), || child.wait());
    let (status, stopped) = match end {
        HookEnd::Exited(s) => (s, false),
        HookEnd::Stopped(s) | HookEnd::TimedOut(s, _) => (s, true),
        HookEnd::NotStarted(e) => return fail(e.to_string()),
    };
    let end = match (status.code(), status.signal()) {
        (Some(c), _) => End::Exited(c),
        (_, Some(s)) => End::Signaled(s),
        _ => End::NotRun,
    };
    let failure = match end {
        _ if stopped => Some("stopped by request".to_string()),
        End::Exited(0) => None,
        End::Exited(c) => Some(format!("exit status {c}")),
        End::Signaled(s) => Some(format!("killed by signal {s} ({})", signal_name(s))),
        End::NotRun => Some("ended without a status".into()),
    };
    Outcome {
        end,
        failure,
        after_failures: Vec::new(),
    }
}
