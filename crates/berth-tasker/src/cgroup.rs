//! A cgroup for each job, so that every process a job starts ends with it, also one that
//! left the job's process group and session (`setsid -f sleep 300`).
//!
//! berth uses no controller: only membership, and `cgroup.kill` to end every member at
//! once. It takes the cgroup v2 hierarchy where there is one (`/sys/fs/cgroup`, or
//! `/sys/fs/cgroup/unified` on a hybrid host), below the tasker's own cgroup, else the v1
//! `pids` hierarchy, where the members are killed one by one until none is left. A job's
//! processes join it in the child before exec (`cgroup.procs`, written by the child itself
//! while it is still root), so not one instruction of the job runs outside it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// cgroup v2: `cgroup.kill` ends every member at once.
    V2,
    /// The v1 `pids` hierarchy: members are killed one by one.
    V1Pids,
}

/// Which hierarchy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// v2 where there is one, else v1 `pids`.
    Auto,
    /// v2 only.
    V2,
    /// The v1 `pids` hierarchy only (a hybrid host's, for testing that path).
    V1,
    /// None: jobs are tracked by their process group only.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "v2" => Ok(Mode::V2),
            "v1" => Ok(Mode::V1),
            "none" => Ok(Mode::Off),
            other => Err(format!("--cgroups {other}: auto, v2, v1 or none")),
        }
    }
}

/// Where this tasker makes its jobs' cgroups: one per slot.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
    kind: Kind,
    slots: Mutex<HashMap<u32, Arc<JobCgroup>>>,
}

/// One slot's cgroup, where the job of that slot runs: made once, kept open, and emptied
/// after each job. One per slot rather than per job, because making and removing a
/// cgroup per job cost more than the short jobs themselves.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    /// The directory, for `clone3(CLONE_INTO_CGROUP)` (v2).
    dir_fd: File,
    /// `cgroup.procs`, open for writing (v1: the child writes `0` to it).
    procs: Option<File>,
    /// `cgroup.events` (v2): whether anything is left in it.
    events: Option<File>,
    kind: Kind,
    /// Whether it was ever killed (and so must not take new processes).
    killed: std::sync::atomic::AtomicBool,
}

impl JobCgroup {
    /// How a child joins it.
    pub fn join(&self) -> berth_sys::spawn::Join {
        match (&self.procs, self.kind) {
            (Some(p), Kind::V1Pids) => berth_sys::spawn::Join::Procs(p.as_raw_fd()),
            _ => berth_sys::spawn::Join::Dir(self.dir_fd.as_raw_fd()),
        }
    }

    /// How a child the keeper starts joins it: what to send the keeper with the job.
    pub fn keeper_join(&self) -> (crate::keeper::CgroupJoin, std::os::fd::BorrowedFd<'_>) {
        use std::os::fd::AsFd;
        match (&self.procs, self.kind) {
            (Some(p), Kind::V1Pids) => (crate::keeper::CgroupJoin::Procs, p.as_fd()),
            _ => (crate::keeper::CgroupJoin::Dir, self.dir_fd.as_fd()),
        }
    }

    /// Whether a process is still in it.
    fn populated(&self) -> bool {
        use std::os::unix::fs::FileExt;
        match &self.events {
            Some(f) => {
                let mut buf = [0u8; 256];
                let n = f.read_at(&mut buf, 0).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]);
                text.lines().any(|l| l.trim() == "populated 1")
            }
            None => !members(&self.dir).is_empty(),
        }
    }

    /// Kills every process left in it and waits until none is; returns how many there
    /// were. Processes on their way out are not left: a container runtime's monitor
    /// (podman's `conmon`, which removes the container once its process has ended) may
    /// still be finishing when the job's hooks are done, slower on a loaded host; what
    /// ends within [`SETTLE`] by itself is not killed or counted.
    pub fn empty(&self) -> usize {
        if !self.populated() {
            return 0;
        }
        let settle = Instant::now() + SETTLE;
        while self.populated() && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.populated() {
            return 0;
        }
        let left = members(&self.dir).len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.populated() && Instant::now() < deadline {
            self.killed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            match self.kind {
                Kind::V2 => {
                    let _ = File::options()
                        .write(true)
                        .open(self.dir.join("cgroup.kill"))
                        .and_then(|mut f| f.write_all(b"1"));
                }
                Kind::V1Pids => {
                    for pid in members(&self.dir) {
                        berth_sys::kill_pid(pid, libc::SIGKILL);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        left
    }
}

/// How long what a job's processes leave in its cgroup may take to end by itself.
pub const SETTLE: Duration = Duration::from_millis(500);

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
    pub fn open(tasker: &str, state_dir: &Path, mode: Mode) -> Result<Cgroups, String> {
        if mode == Mode::Off {
            return Err("--cgroups none".into());
        }
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
        if mode == Mode::V1 {
            why.push("--cgroups v1".to_string());
        } else if let (Some(root), Some(own)) = (v2_root, own_v2_path()) {
            let base = root.join(own).join(&leaf);
            match std::fs::create_dir_all(&base) {
                Ok(()) if base.join("cgroup.kill").exists() => {
                    return Ok(Cgroups {
                        base,
                        kind: Kind::V2,
                        slots: Mutex::default(),
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
        if mode == Mode::V2 {
            why.push("--cgroups v2".to_string());
        } else if v1.join("cgroup.procs").exists() {
            let base = v1.join(&leaf);
            match std::fs::create_dir_all(&base) {
                Ok(()) => {
                    return Ok(Cgroups {
                        base,
                        kind: Kind::V1Pids,
                        slots: Mutex::default(),
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

    /// Removes the slots' cgroups that are empty, and this tasker's directory if none is
    /// left (a tasker that stops with jobs running leaves theirs, and the next one ends
    /// what they leave).
    pub fn close(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for (_, c) in slots.drain() {
            let _ = std::fs::remove_dir(&c.dir);
        }
        let _ = std::fs::remove_dir(&self.base);
    }

    /// Slot `slot`'s cgroup, made if need be, emptied of anything an earlier job of the
    /// slot (or an earlier tasker process) left in it.
    pub fn slot(&self, slot: u32) -> io::Result<Arc<JobCgroup>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slots.get(&slot) {
            return Ok(c.clone());
        }
        let dir = self.base.join(format!("slot-{slot}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let dir_fd = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&dir)?;
        let (procs, events) = match self.kind {
            Kind::V2 => (None, Some(File::open(dir.join("cgroup.events"))?)),
            Kind::V1Pids => (
                Some(File::options().write(true).open(dir.join("cgroup.procs"))?),
                None,
            ),
        };
        let c = Arc::new(JobCgroup {
            dir,
            dir_fd,
            procs,
            events,
            kind: self.kind,
            killed: std::sync::atomic::AtomicBool::new(false),
        });
        slots.insert(slot, c.clone());
        Ok(c)
    }

    /// Ends every process left in slot `slot`'s cgroup; returns how many there were.
    ///
    /// A cgroup that had to be killed is removed, and the slot's next job gets a new one:
    /// this kernel (6.18) kills every child later created in a cgroup once killed with
    /// `cgroup.kill` (`CLONE_INTO_CGROUP` compares the kill counts of two cgroups).
    pub fn end(&self, slot: u32) -> usize {
        let Ok(c) = self.slot(slot) else { return 0 };
        let left = c.empty();
        if left > 0 || c.killed.load(std::sync::atomic::Ordering::Relaxed) {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.remove(&slot);
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(&c.dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
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
