//! The local record of each container job (SPEC §5, extension): written before setup
//! starts and removed after teardown, so that a tasker (or `berth container try`) that was
//! killed in the middle leaves behind what the next one needs to finish the cleanup and
//! teardown it owes.
//!
//! `STATE/records/JOB.json` holds the record; `STATE/records/JOB.lock` is held (flock) by
//! the process running the job for as long as it runs, so that a record whose lock can be
//! taken belongs to a process that has ended.

use crate::log::LogTarget;
use berth_container::Hook;
use berth_sys::Identity;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The enter hook's process, so that a recovery can end what it left running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnterProcess {
    /// Its pid, which is also its process group.
    pub pid: u32,
    /// Its start time, to tell it from a later process with the same pid.
    pub start_time: u64,
}

/// Everything needed to run a job's cleanup and teardown again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The job's id.
    pub job_id: String,
    /// The configuration's NAME.
    pub container: String,
    /// The configuration file.
    pub cfg_path: PathBuf,
    /// The job's owner.
    pub owner: Identity,
    /// The job's directory.
    pub job_dir: PathBuf,
    /// Where the hooks run.
    pub hook_dir: PathBuf,
    /// The job's environment (lossy for names or values that are not UTF-8).
    pub job_env: Vec<(String, String)>,
    /// The variables every hook gets.
    pub vars: Vec<(String, String)>,
    /// The job's log.
    pub log: LogTarget,
    /// The cleanup and teardown hooks, as configured when the job started.
    pub after: Vec<Hook>,
    /// Their timeouts, in seconds, in the order of `after`.
    pub after_timeouts: Vec<u64>,
    /// Between SIGTERM and SIGKILL, in seconds.
    pub kill_grace: u64,
    /// The enter hook's process, once it is running.
    pub enter: Option<EnterProcess>,
    /// The submitter's umask (for `berth exec`; absent in records of older taskers).
    #[serde(default)]
    pub umask: Option<u32>,
}

/// The records directory under a tasker's local state directory.
pub fn dir(state: &Path) -> PathBuf {
    state.join("records")
}

fn paths(state: &Path, job_id: &str) -> (PathBuf, PathBuf) {
    let d = dir(state);
    (
        d.join(format!("{job_id}.json")),
        d.join(format!("{job_id}.lock")),
    )
}

/// A record on disk and the lock that says its job is being run.
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

fn lock(path: &Path) -> io::Result<Option<File>> {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    Ok(berth_sys::flock_exclusive(&f, false)?.then_some(f))
}

/// Writes a record by a rename. `durable` also syncs the file and its directory: needed
/// when the record is created (after a machine crash, a container may still owe its
/// teardown), not for later updates, which only matter while the machine stays up and its
/// page cache with it.
fn write_atomic(path: &Path, rec: &Record, durable: bool) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let text = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
    f.write_all(&text)?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if durable {
        // The rename must reach the disk too, or a crash could leave no record.
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

impl Held {
    /// Writes a new record and holds its lock.
    pub fn create(state: &Path, rec: &Record) -> io::Result<Held> {
        let d = dir(state);
        std::fs::create_dir_all(&d)?;
        let (path, lock_path) = paths(state, &rec.job_id);
        let lock = lock(&lock_path)?.ok_or_else(|| {
            io::Error::other(format!(
                "job {} is already being run by another process (lock {})",
                rec.job_id,
                lock_path.display()
            ))
        })?;
        write_atomic(&path, rec, true)?;
        Ok(Held {
            path,
            lock_path,
            _lock: lock,
        })
    }

    /// Replaces the record on disk.
    pub fn update(&self, rec: &Record) -> io::Result<()> {
        write_atomic(&self.path, rec, false)
    }

    /// Removes the record: the job owes nothing any more.
    pub fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)?;
        let _ = std::fs::remove_file(&self.lock_path);
        Ok(())
    }
}

/// A record left by a process that has ended, now held by us.
#[derive(Debug)]
pub struct Orphan {
    /// What the record says.
    pub record: Record,
    /// The held record, to remove once its hooks have run.
    pub held: Held,
}

/// What could not be read while looking for orphans.
#[derive(Debug, thiserror::Error)]
#[error("record {path}: {cause}")]
pub struct BadRecord {
    /// The record file.
    pub path: PathBuf,
    /// What is wrong.
    pub cause: String,
}

/// Finds the records whose process has ended and takes them over.
pub fn orphans(state: &Path) -> (Vec<Orphan>, Vec<BadRecord>) {
    let mut found = Vec::new();
    let mut bad = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir(state)) else {
        return (found, bad);
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .collect();
    names.sort();
    for id in names {
        let (path, lock_path) = paths(state, &id);
        let lock = match lock(&lock_path) {
            Ok(Some(l)) => l,
            Ok(None) => continue, // its job is running
            Err(e) => {
                bad.push(BadRecord {
                    path,
                    cause: e.to_string(),
                });
                continue;
            }
        };
        let held = Held {
            path: path.clone(),
            lock_path,
            _lock: lock,
        };
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
        {
            Ok(record) => found.push(Orphan { record, held }),
            Err(cause) => bad.push(BadRecord { path, cause }),
        }
    }
    (found, bad)
}
