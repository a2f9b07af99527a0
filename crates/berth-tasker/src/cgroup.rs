//! A cgroup for each job, so that every process a job starts ends with it, also one that
//! left the job's process group and session (`setsid -f sleep 300`).
//!
//! berth uses no controller: only membership, and `cgroup.kill` to end every member at
//! once. It takes the cgroup v2 hierarchy where there is one (`/sys/fs/cgroup`, or
//! `/sys/fs/cgroup/unified` on a hybrid host), below the tasker's own cgroup, else the v1
//! `pids` hierarchy, where the members are killed one by one until none is left. A job's
//! processes join it in the child before exec (`cgroup.procs`, written by the child itself
//! while it is still root), so not one instruction of the job runs outside it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// cgroup v2: `cgroup.kill` ends every member at once.
    V2,
    /// The v1 `pids` hierarchy: members are killed one by one.
    V1Pids,
}

/// Where this tasker makes its jobs' cgroups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    base: PathBuf,
    kind: Kind,
}

/// One job's cgroup, removed (its members killed) by [`Cgroups::end`].
#[derive(Debug)]
pub struct JobCgroup {
    /// `cgroup.procs`, open for writing: the child writes `0` to it to join.
    procs: File,
}

impl JobCgroup {
    /// The descriptor a child writes `0` to, to join the cgroup.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }
}

/// A short stable hash, so that two taskers of one name (two SWDs on one host) have
/// cgroups of their own.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn own_v2_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_string())
}

impl Cgroups {
    /// Finds a hierarchy and makes this tasker's directory in it; the error says why jobs
    /// will not be tracked.
    pub fn open(tasker: &str, state_dir: &Path) -> Result<Cgroups, String> {
        use std::os::unix::ffi::OsStrExt;
        let leaf = format!(
            "berth.{}.{:08x}",
            tasker.replace(['/', '.'], "_"),
            fnv(state_dir.as_os_str().as_bytes()) as u32
        );
        let mut why = Vec::new();
        let v2_root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|r| r.join("cgroup.kill").exists() || r.join("cgroup.subtree_control").exists());
        if let (Some(root), Some(own)) = (v2_root, own_v2_path()) {
            let base = root.join(own).join(&leaf);
            match std::fs::create_dir_all(&base) {
                Ok(()) if base.join("cgroup.kill").exists() => {
                    return Ok(Cgroups {
                        base,
                        kind: Kind::V2,
                    })
                }
                Ok(()) => why.push(format!(
                    "{}: this kernel has no cgroup.kill",
                    base.display()
                )),
                Err(e) => why.push(format!("{}: {e}", base.display())),
            }
        } else {
            why.push("no cgroup v2 hierarchy".to_string());
        }
        let v1 = Path::new("/sys/fs/cgroup/pids");
        if v1.join("cgroup.procs").exists() {
            let base = v1.join(&leaf);
            match std::fs::create_dir_all(&base) {
                Ok(()) => {
                    return Ok(Cgroups {
                        base,
                        kind: Kind::V1Pids,
                    })
                }
                Err(e) => why.push(format!("{}: {e}", base.display())),
            }
        } else {
            why.push("no v1 pids hierarchy".to_string());
        }
        Err(why.join("; "))
    }

    /// Which hierarchy, and where.
    pub fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.base.display(),
            match self.kind {
                Kind::V2 => "cgroup v2",
                Kind::V1Pids => "cgroup v1 pids",
            }
        )
    }

    /// Removes this tasker's directory if no job's cgroup is left in it (a tasker that
    /// stops with jobs running leaves them, and the next one ends them).
    pub fn close(&self) {
        let _ = std::fs::remove_dir(&self.base);
    }

    fn dir(&self, job: &str) -> PathBuf {
        self.base.join(format!("job-{job}"))
    }

    /// Makes job `job`'s cgroup (ending what an earlier one of that name held).
    pub fn make(&self, job: &str) -> io::Result<JobCgroup> {
        let dir = self.dir(job);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.end(job);
                std::fs::create_dir(&dir)?;
            }
            Err(e) => return Err(e),
        }
        let procs = File::options().write(true).open(dir.join("cgroup.procs"))?;
        Ok(JobCgroup { procs })
    }

    /// Ends every process of job `job`'s cgroup and removes it; nothing if there is none.
    /// Returns how many processes were still in it.
    pub fn end(&self, job: &str) -> usize {
        let dir = self.dir(job);
        // The usual case: every process has ended with the job.
        match std::fs::remove_dir(&dir) {
            Ok(()) => return 0,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
            Err(_) => {}
        }
        let left = members(&dir).len();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.kind {
                Kind::V2 => {
                    let _ = File::options()
                        .write(true)
                        .open(dir.join("cgroup.kill"))
                        .and_then(|mut f| f.write_all(b"1"));
                }
                Kind::V1Pids => {
                    for pid in members(&dir) {
                        berth_sys::kill_pid(pid, libc::SIGKILL);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
            if std::fs::remove_dir(&dir).is_ok() || Instant::now() > deadline {
                break;
            }
        }
        left
    }
}

/// The pids in a cgroup.
fn members(dir: &Path) -> Vec<u32> {
    let mut text = String::new();
    let _ = File::open(dir.join("cgroup.procs")).and_then(|mut f| f.read_to_string(&mut text));
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}
