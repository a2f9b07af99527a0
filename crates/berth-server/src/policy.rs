//! What a submission must satisfy before it is accepted (SPEC §8, §9): checked on the
//! connection's thread, before the server's one actor sees it, so that a hostile
//! submission costs only its own connection.

use crate::core::Core;
use berth_proto::SubmitRequest;
use std::collections::HashMap;
use std::path::PathBuf;

/// The limits and rights an administrator sets (`berth up` / `berth server` options).
#[derive(Debug, Clone)]
pub struct Policy {
    /// The uids that may act on others' jobs and set a priority above 0 (root always may).
    pub admins: Vec<u32>,
    /// The configurations (`SWD/containers`), for their `containerLimit` MAX.
    pub containers: Option<PathBuf>,
    /// The most jobs one submission may make (an array's size, or the lines of `-f`).
    pub max_jobs_per_submission: u64,
    /// The most unfinished (queued or running) jobs one user may have.
    pub max_unfinished_per_user: u64,
    /// The time limit of a job submitted without one (ms).
    pub time_default_ms: Option<u64>,
    /// The longest time limit a job may ask for (ms); a longer one is refused.
    pub time_max_ms: Option<u64>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            admins: Vec::new(),
            containers: None,
            max_jobs_per_submission: DEFAULT_MAX_JOBS_PER_SUBMISSION,
            max_unfinished_per_user: DEFAULT_MAX_UNFINISHED_PER_USER,
            time_default_ms: None,
            time_max_ms: None,
        }
    }
}

/// The most bytes a submission may come to once its array is made: its jobs' command
/// lines (each job keeps its own) and environments (kept once for all).
pub const MAX_SUBMISSION_BYTES: u64 = 64 * 1024 * 1024;
/// The longest command line or environment of one job, as the kernel would take at exec.
pub const MAX_JOB_BYTES: usize = 2 * 1024 * 1024;

/// The default of [`Policy::max_jobs_per_submission`].
pub const DEFAULT_MAX_JOBS_PER_SUBMISSION: u64 = 100_000;
/// The default of [`Policy::max_unfinished_per_user`].
pub const DEFAULT_MAX_UNFINISHED_PER_USER: u64 = 1_000_000;

impl Policy {
    /// Whether `uid` is an administrator.
    pub fn is_admin(&self, uid: u32) -> bool {
        uid == 0 || self.admins.contains(&uid)
    }

    /// How many jobs a submission makes.
    pub fn size(req: &SubmitRequest) -> u64 {
        match req.array {
            Some((a, z)) if a <= z => u64::from(z - a) + 1,
            Some(_) => 0,
            None => req.jobs.len() as u64,
        }
    }

    /// Checks a submission from `uid`; the error is the reason, for the submitter.
    pub fn check(&self, req: &SubmitRequest, uid: u32) -> Result<(), String> {
        if uid == 0 {
            return Err(
                "a job never runs as root: submit it as the user it should run as \
                 (e.g. sudo -u USER berth run ...)"
                    .into(),
            );
        }
        if req.jobs.is_empty() {
            return Err("no job in the submission".into());
        }
        if req.jobs.iter().any(|j| j.interactive.is_some())
            && (req.array.is_some() || req.jobs.len() > 1)
        {
            return Err("an interactive job (-I) is a single job: not an array, not -f".into());
        }
        if let Some((a, z)) = req.array {
            if req.jobs.len() != 1 {
                return Err("an array repeats one job; give exactly one".into());
            }
            if a > z {
                return Err(format!(
                    "--array {a}-{z}: the first index is above the last"
                ));
            }
        }
        let n = Policy::size(req);
        if n > self.max_jobs_per_submission {
            return Err(format!(
                "the submission makes {n} jobs, above the limit of {} jobs per submission \
                 (set by the administrator: --max-jobs-per-submission); submit fewer at a time",
                self.max_jobs_per_submission
            ));
        }
        let admin = self.is_admin(uid);
        // What the submission comes to on disk: a job of a large command line repeated by
        // an array would otherwise make gigabytes, and hold the server while it did.
        let mut bytes: u64 = 0;
        for j in &req.jobs {
            let command: usize = j.command.iter().map(|a| a.len() + 1).sum();
            let env: usize = j.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            if command > MAX_JOB_BYTES || env > MAX_JOB_BYTES {
                return Err(format!(
                    "a job's command line ({command} bytes) or environment ({env} bytes) is \
                     longer than the {MAX_JOB_BYTES} bytes a program can be given"
                ));
            }
            let times = if req.array.is_some() { n } else { 1 };
            bytes = bytes.saturating_add(times.saturating_mul(command as u64) + env as u64);
        }
        if bytes > MAX_SUBMISSION_BYTES {
            return Err(format!(
                "the submission comes to {bytes} bytes, above the {MAX_SUBMISSION_BYTES} one \
                 submission may make; submit fewer or shorter jobs at a time"
            ));
        }
        // A request's verdict is the same for every job that makes it: checked once.
        let mut seen: HashMap<Option<&str>, ()> = HashMap::new();
        for (k, j) in req.jobs.iter().enumerate() {
            if j.after_in.iter().any(|i| *i >= k) {
                return Err(format!(
                    "job {} of the submission waits for one that is not before it",
                    k + 1
                ));
            }
            if !j.after_in.is_empty() && req.array.is_some() {
                return Err("an array's jobs cannot wait for one another".into());
            }
            if j.command.is_empty() {
                return Err("a job has an empty command line".into());
            }
            if !j.dir.starts_with('/') {
                return Err(format!("the job directory {:?} is not absolute", j.dir));
            }
            if let Some(log) = &j.log {
                if !log.starts_with('/') {
                    return Err(format!(
                        "the log {log:?} is not an absolute path (berth run makes -l absolute)"
                    ));
                }
            }
            if let Some(i) = &j.interactive {
                valid_terminal(i)?;
            }
            if j.priority > 0 && !admin {
                return Err(format!(
                    "priority {}: only an administrator may set a priority above 0; \
                     submit with priority 0 or below",
                    j.priority
                ));
            }
            if let (Some(t), Some(max)) =
                (j.time_limit_ms.or(self.time_default_ms), self.time_max_ms)
            {
                if t > max {
                    return Err(format!(
                        "--time {}: above the longest time limit of {} (set by the \
                         administrator: --time-max); ask for {} or less",
                        crate::daemon::limit_text(t),
                        crate::daemon::limit_text(max),
                        crate::daemon::limit_text(max)
                    ));
                }
            }
            if j.time_limit_ms == Some(0) {
                return Err("--time 0: a time limit is above 0".into());
            }
            if j.time_limit_ms.is_some_and(|t| t > MAX_TIME_LIMIT_MS) {
                return Err("--time: at most 365d".into());
            }
            let mut after = j.after.clone();
            after.sort_unstable();
            after.dedup();
            if after.len() != j.after.len() {
                return Err("--after names a job twice".into());
            }
            // What a submission's dependencies cost the server: bounded.
            if ((j.after.len() + j.after_in.len()) as u64).saturating_mul(n) > 100_000 {
                return Err(format!(
                    "the submission makes {n} jobs that wait for {} jobs each: at most 100,000 \
                     waits in one submission (wait for fewer jobs, or chain them)",
                    j.after.len()
                ));
            }
            if j.after.len() > 1000 {
                return Err(format!(
                    "a job waits for {} jobs; at most 1,000 (wait for an array's last jobs, or \
                     chain them)",
                    j.after.len()
                ));
            }
            if seen.insert(j.resources.as_deref(), ()).is_none() {
                self.check_request(j.resources.as_deref())?;
            }
        }
        Ok(())
    }

    /// A request parses, asks for at most one container at a time, and not above the
    /// `containerLimit` MAX of any configuration it may run in.
    fn check_request(&self, text: Option<&str>) -> Result<(), String> {
        let request = Core::parse_request(text).map_err(|e| e.to_string())?;
        let containers = request.containers().map_err(|e| e.to_string())?;
        let Some(dir) = &self.containers else {
            return Ok(());
        };
        for name in &containers.names {
            // A configuration the server does not have is not refused here: a tasker may
            // have it, and `no tasker can ever satisfy` says so otherwise.
            if let Ok(cfg) = berth_container::check::load(dir, name) {
                berth_container::plan::limits(&cfg, Some(&request)).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// The longest time limit a job may have: a year.
pub const MAX_TIME_LIMIT_MS: u64 = 365 * 86_400_000;

/// An interactive job's terminal: a token of 64 hex digits (the tasker sends it in a
/// line of its own), and an unprivileged port (the tasker, as root, connects to it).
pub fn valid_terminal(i: &berth_proto::Interactive) -> Result<(), String> {
    if i.token.len() != 64 || !i.token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("-I: the terminal's token must be 64 hex digits".into());
    }
    if i.port < 1024 {
        return Err(format!(
            "-I: port {} is privileged; berth run listens on a port of its own above 1023",
            i.port
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::Submit;

    fn job(resources: Option<&str>, priority: i32) -> Submit {
        Submit {
            resources: resources.map(str::to_string),
            priority,
            ..Submit::new(vec!["true".into()], "/tmp".into())
        }
    }

    fn term(token: &str, port: u16) -> berth_proto::Interactive {
        berth_proto::Interactive {
            host: "elsewhere".into(),
            port,
            token: token.into(),
            rows: 24,
            cols: 80,
        }
    }

    #[test]
    fn refusals_table() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("c1.cfg"),
            "containerHook enter user /bin/true sha256:0000000000000000000000000000000000000000000000000000000000000000\ncontainerLimit CORES 1 4\ncontainerLimit RAM 100 1000\n",
        )
        .unwrap();
        let p = Policy {
            admins: vec![1000],
            containers: Some(d.path().to_path_buf()),
            max_jobs_per_submission: 100,
            ..Policy::default()
        };
        let one = |r: Option<&str>, pri: i32| SubmitRequest {
            jobs: vec![job(r, pri)],
            array: None,
        };
        let one_with = |command: Vec<String>| SubmitRequest {
            jobs: vec![Submit {
                command,
                ..job(None, 0)
            }],
            array: None,
        };
        let cases: Vec<(&str, SubmitRequest, u32, Result<(), &str>)> = vec![
            ("plain", one(None, 0), 65534, Ok(())),
            ("root", one(None, 0), 0, Err("a job never runs as root")),
            (
                "within MAX",
                one(Some("Container:c1 CORES/4 RAM/1000"), 0),
                65534,
                Ok(()),
            ),
            (
                "above MAX",
                one(Some("Container:c1 CORES/5"), 0),
                65534,
                Err("container c1: the job asks for CORES 5 but"),
            ),
            (
                "above MAX in one alternative",
                one(Some("(Container:c1 | Container:other) RAM/2000"), 0),
                65534,
                Err("container c1: the job asks for RAM 2000"),
            ),
            (
                "two containers",
                one(Some("Container:c1 Container:c2"), 0),
                65534,
                Err("the request needs both Container:c1 and Container:c2"),
            ),
            (
                "either container",
                one(Some("Container:c1 | Container:c2"), 0),
                65534,
                Ok(()),
            ),
            (
                "a configuration the server lacks",
                one(Some("Container:zz CORES/99"), 0),
                65534,
                Ok(()),
            ),
            (
                "priority above 0",
                one(None, 1),
                65534,
                Err("priority 1: only an administrator may set a priority above 0"),
            ),
            ("priority of an administrator", one(None, 5), 1000, Ok(())),
            ("priority below 0", one(None, -5), 65534, Ok(())),
            (
                "too many jobs",
                SubmitRequest {
                    jobs: vec![job(None, 0)],
                    array: Some((1, 101)),
                },
                65534,
                Err("the submission makes 101 jobs, above the limit of 100 jobs per submission"),
            ),
            (
                "a token that is not 64 hex digits",
                SubmitRequest {
                    jobs: vec![Submit {
                        interactive: Some(term("x\nGET / HTTP/1.1", 40000)),
                        ..job(None, 0)
                    }],
                    array: None,
                },
                65534,
                Err("-I: the terminal's token must be 64 hex digits"),
            ),
            (
                "a privileged port",
                SubmitRequest {
                    jobs: vec![Submit {
                        interactive: Some(term(&"ab".repeat(32), 25)),
                        ..job(None, 0)
                    }],
                    array: None,
                },
                65534,
                Err("-I: port 25 is privileged"),
            ),
            (
                "an array of a command line of 1 MiB",
                SubmitRequest {
                    jobs: vec![Submit {
                        command: vec!["true".into(), "A".repeat(1 << 20)],
                        ..job(None, 0)
                    }],
                    array: Some((1, 10)),
                },
                65534,
                Ok(()),
            ),
            (
                "an array of 100 jobs of a command line of 1 MiB",
                SubmitRequest {
                    jobs: vec![Submit {
                        command: vec!["true".into(), "A".repeat(1 << 20)],
                        ..job(None, 0)
                    }],
                    array: Some((1, 100)),
                },
                65534,
                Err("above the 67108864 one submission may make"),
            ),
            (
                "a command line longer than a program can take",
                one_with(vec!["x".repeat(3 << 20)]),
                65534,
                Err("is longer than the 2097152 bytes a program can be given"),
            ),
            (
                "a relative log",
                SubmitRequest {
                    jobs: vec![Submit {
                        log: Some("relative.log".into()),
                        ..job(None, 0)
                    }],
                    array: None,
                },
                65534,
                Err("the log \"relative.log\" is not an absolute path"),
            ),
            (
                "a bad request",
                one(Some("(a"), 0),
                65534,
                Err("unbalanced parenthesis"),
            ),
        ];
        for (what, req, uid, want) in cases {
            let got = p.check(&req, uid);
            match (want, got) {
                (Ok(()), Ok(())) => {}
                (Err(w), Err(g)) => assert!(g.contains(w), "{what}: {g}"),
                (w, g) => panic!("{what}: wanted {w:?}, got {g:?}"),
            }
        }
    }
}
