//! A job without a container: its command, as its owner, in its directory, with its
//! environment, output to its log; stopped with SIGTERM to its process group, then SIGKILL
//! after the grace period.

use crate::lifecycle::{supervise, End, HookEnd, Job, Outcome, Stop};
use crate::log::Sink;
use crate::terminal::Terminal;
use berth_sys as sys;
use berth_sys::spawn::{spawn, Spawn, Stdio};
use std::os::unix::process::ExitStatusExt;
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
    let sink = match Sink::open_with_umask(&job.log, &job.owner, job.umask) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open the log as {}: {e}", job.owner.name)),
    };
    let who = (sys::euid() == 0).then_some(&job.owner);
    if who.is_none() && job.owner.uid != sys::euid() {
        return fail(format!("only root can run a job as {}", job.owner.name));
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
            let why = format!(
                "cannot run {:?} as {} in {}: {e}",
                job.command[0],
                job.owner.name,
                job.dir.display()
            );
            sink.note(&why);
            finish(relay);
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
    on_start(child.pid);
    let end = supervise(child.pid, None, grace, Some(stop), || child.wait());
    finish(relay);
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
        End::NotRun if !stopped => Some("ended without a status".into()),
        _ => end.failure(stopped),
    };
    Outcome {
        end,
        failure,
        after_failures: Vec::new(),
    }
}
