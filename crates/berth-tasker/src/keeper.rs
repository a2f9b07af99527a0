//! The keeper: a small process per tasker that is the parent of its jobs without a
//! container, so that they outlive the tasker process (a stop, an upgrade, a crash) and
//! the next one takes them over with their true exit status.
//!
//! A job's status goes to its parent only. The keeper starts each job at the tasker's
//! request and never reaps one on its own: a job that ended stays a zombie, its status
//! and its pid kept by the kernel, until a tasker asks for the status (`Reap`). That makes
//! the pid safe to signal for as long as the tasker watches it (it cannot be reused), and
//! a status is never lost while no tasker runs. A reaped status is kept too, until the
//! tasker says the server has recorded the end (`Forget`).
//!
//! The keeper listens on `STATE/keeper.1.sock` (the protocol's version is in the name)
//! and takes one tasker connection at a time, from its own uid only. It holds
//! `STATE/keeper.lock` while it lives, and ends once it keeps nothing and no tasker is
//! connected. Messages are a 4-byte length and JSON; a `Spawn` carries the job's log and
//! cgroup descriptors (`SCM_RIGHTS`).

use berth_sys::spawn::{spawn, Join, Spawn, Stdio};
use berth_sys::Identity;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The socket, under the tasker's state directory.
pub const SOCKET: &str = "keeper.1.sock";
const LOCK: &str = "keeper.lock";
/// The largest message (a job's environment is in it).
const MAX_MESSAGE: usize = 64 << 20;

/// How a job joins its cgroup, the descriptor going with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupJoin {
    /// A v2 directory.
    Dir,
    /// A v1 `cgroup.procs`.
    Procs,
}

/// A job to start. The log's descriptor goes with it, then the cgroup's when there is one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnJob {
    /// The job.
    pub job: u64,
    /// Its slot.
    pub slot: u32,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Its owner.
    pub who: Identity,
    /// Its directory.
    pub dir: PathBuf,
    /// The submitter's umask.
    pub umask: u32,
    /// Its log, for a note when a new tasker takes it over.
    pub log: PathBuf,
    /// Its cgroup, if it has one.
    pub cgroup: Option<CgroupJoin>,
}

#[derive(Debug, Serialize, Deserialize)]
enum ToKeeper {
    Spawn(SpawnJob),
    /// The status of a job that has ended, reaped now; `stopped` when it was stopped.
    Reap {
        job: u64,
        stopped: bool,
    },
    /// Their ends are recorded: nothing to keep.
    Forget(Vec<u64>),
}

#[derive(Debug, Serialize, Deserialize)]
enum FromKeeper {
    /// On connection: what the keeper keeps.
    Kept(Vec<Kept>),
    Spawned {
        pid: u32,
    },
    NotSpawned {
        not_found: bool,
        error: String,
    },
    /// The raw wait status.
    Reaped {
        status: i32,
    },
    NotReaped(String),
    /// Another tasker process is connected.
    Busy,
}

/// A job the keeper keeps: running (or ended, not yet reaped), or reaped and not forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The job.
    pub job: u64,
    /// Its slot.
    pub slot: u32,
    /// Its process (and process group).
    pub pid: u32,
    /// Its owner.
    pub who: Identity,
    /// Its log.
    pub log: PathBuf,
    /// Its raw wait status, once reaped.
    pub status: Option<i32>,
    /// Whether a tasker stopped it.
    pub stopped: bool,
}

fn write_frame(s: &UnixStream, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut data = Vec::with_capacity(body.len() + 4);
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(body);
    berth_sys::send_with_fds(s, &data, fds)
}

/// Reads frames and the descriptors that come with them.
struct Reader {
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// The next frame; None when the peer closed between frames.
    fn next(&mut self, s: &UnixStream) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if n > MAX_MESSAGE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a message of {n} bytes (at most {MAX_MESSAGE})"),
                    ));
                }
                if self.buf.len() >= 4 + n {
                    let body = self.buf[4..4 + n].to_vec();
                    self.buf.drain(..4 + n);
                    return Ok(Some(body));
                }
            }
            let mut chunk = vec![0u8; 64 << 10];
            let mut fds = Vec::new();
            let got = berth_sys::recv_with_fds(s, &mut chunk, &mut fds)?;
            self.fds.extend(fds);
            if got == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }
}

/// What the keeper keeps of one job.
struct Entry {
    kept: Kept,
}

/// Runs the keeper for `state` (`berth keeper`), until it keeps nothing and no tasker is
/// connected. Returns without error at once when another keeper holds the lock.
pub fn serve(state: &Path) -> io::Result<()> {
    std::fs::create_dir_all(state)?;
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(state.join(LOCK))?;
    if !berth_sys::flock_exclusive(&lock, false)? {
        return Ok(()); // another keeper serves this state directory
    }
    let path = state.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let me = berth_sys::euid();
    let mut jobs: BTreeMap<u64, Entry> = BTreeMap::new();
    let started = Instant::now();
    let mut served = false;
    listener.set_nonblocking(true)?;
    loop {
        // Nothing kept and nobody connected: done (after the first tasker, or a minute
        // without one).
        if jobs.is_empty() && (served || started.elapsed() > Duration::from_secs(60)) {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        if !berth_sys::poll_readable_for(&[listener.as_raw_fd()], Some(Duration::from_secs(1)))?[0]
        {
            continue;
        }
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                berth_sys::say!("berth keeper: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        conn.set_nonblocking(false)?;
        match berth_sys::peer_cred(&conn) {
            Ok(c) if c.uid == me => {}
            _ => continue, // only the tasker's own uid
        }
        served = true;
        if let Err(e) = session(&conn, &listener, &mut jobs) {
            berth_sys::say!("berth keeper {}: {e}", state.display());
        }
    }
}

/// Serves one tasker connection to its end.
fn session(
    conn: &UnixStream,
    listener: &UnixListener,
    jobs: &mut BTreeMap<u64, Entry>,
) -> io::Result<()> {
    let answer =
        |m: &FromKeeper| write_frame(conn, &serde_json::to_vec(m).unwrap_or_default(), &[]);
    answer(&FromKeeper::Kept(
        jobs.values().map(|e| e.kept.clone()).collect(),
    ))?;
    let mut reader = Reader::new();
    loop {
        // A second tasker process is told, and not served.
        loop {
            let ready = berth_sys::poll_readable(&[conn.as_raw_fd(), listener.as_raw_fd()])?;
            if ready[1] {
                if let Ok((other, _)) = listener.accept() {
                    if !berth_sys::peer_cred(&other).is_ok_and(|c| c.uid == berth_sys::euid()) {
                        continue; // only the tasker's own uid hears anything
                    }
                    let _ = other.set_nonblocking(false);
                    let _ = write_frame(
                        &other,
                        &serde_json::to_vec(&FromKeeper::Busy).unwrap_or_default(),
                        &[],
                    );
                }
            }
            if ready[0] {
                break;
            }
        }
        let Some(body) = reader.next(conn)? else {
            return Ok(());
        };
        let msg: ToKeeper = serde_json::from_slice(&body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match msg {
            ToKeeper::Spawn(s) => {
                let log = reader.fds.pop_front();
                let cg = match s.cgroup {
                    Some(_) => reader.fds.pop_front(),
                    None => None,
                };
                let answer_of = match start(&s, log.as_ref(), cg.as_ref()) {
                    Ok(pid) => {
                        jobs.insert(
                            s.job,
                            Entry {
                                kept: Kept {
                                    job: s.job,
                                    slot: s.slot,
                                    pid,
                                    who: s.who,
                                    log: s.log,
                                    status: None,
                                    stopped: false,
                                },
                            },
                        );
                        FromKeeper::Spawned { pid }
                    }
                    Err(e) => FromKeeper::NotSpawned {
                        not_found: e.kind() == io::ErrorKind::NotFound,
                        error: e.to_string(),
                    },
                };
                answer(&answer_of)?;
            }
            ToKeeper::Reap { job, stopped } => {
                let a = match jobs.get_mut(&job) {
                    None => FromKeeper::NotReaped(format!("job {job}: not kept here")),
                    Some(e) => match e.kept.status {
                        Some(status) => FromKeeper::Reaped { status },
                        None => match reap(e.kept.pid) {
                            Ok(Some(status)) => {
                                e.kept.status = Some(status);
                                e.kept.stopped |= stopped;
                                FromKeeper::Reaped { status }
                            }
                            Ok(None) => FromKeeper::NotReaped(format!("job {job}: still running")),
                            Err(e) => FromKeeper::NotReaped(format!("job {job}: {e}")),
                        },
                    },
                };
                answer(&a)?;
            }
            ToKeeper::Forget(list) => {
                for j in list {
                    if jobs.get(&j).is_some_and(|e| e.kept.status.is_some()) {
                        jobs.remove(&j);
                    }
                }
            }
        }
    }
}

fn start(s: &SpawnJob, log: Option<&OwnedFd>, cg: Option<&OwnedFd>) -> io::Result<u32> {
    let Some(log) = log else {
        return Err(io::Error::other("the job's log did not come with it"));
    };
    let Some((program, args)) = s.command.split_first() else {
        return Err(io::Error::other("the command line is empty"));
    };
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> =
        s.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    let cgroup = match (s.cgroup, cg) {
        (Some(CgroupJoin::Dir), Some(fd)) => Some(Join::Dir(fd.as_raw_fd())),
        (Some(CgroupJoin::Procs), Some(fd)) => Some(Join::Procs(fd.as_raw_fd())),
        (None, _) => None,
        (Some(_), None) => return Err(io::Error::other("the job's cgroup did not come with it")),
    };
    let child = spawn(&Spawn {
        program: program.as_ref(),
        args: &args,
        env: &env,
        who: Some(&s.who),
        dir: &s.dir,
        stdin: Stdio::Null,
        stdout: Stdio::Fd(log),
        stderr: Stdio::Fd(log),
        terminal: false,
        exec_fd: None,
        cgroup,
        umask: Some(s.umask),
        dir_fd: None,
    })?;
    Ok(child.pid)
}

/// The wait status of `pid` if it has ended (reaping it), None while it runs.
fn reap(pid: u32) -> io::Result<Option<i32>> {
    let mut status: libc::c_int = 0;
    loop {
        match berth_sys::waitpid_nohang(pid, &mut status) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A tasker's connection to its keeper.
pub struct Keeper {
    conn: Mutex<(UnixStream, Reader)>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keeper")
    }
}

/// How a started job ended, or why it did not start.
pub enum Started {
    /// Its pid.
    Pid(u32),
    /// It could not start: whether the program was not found, and why.
    Not(bool, String),
}

impl Keeper {
    /// Connects to the keeper of `state`, starting one with `start` (which runs
    /// [`serve`] in a new process) when there is none; returns what it keeps.
    pub fn open(
        state: &Path,
        start: &dyn Fn() -> io::Result<()>,
    ) -> io::Result<(Keeper, Vec<Kept>)> {
        let path = state.join(SOCKET);
        let mut started = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    let mut reader = Reader::new();
                    let first = reader.next(&s)?.ok_or_else(|| {
                        io::Error::other(format!("{}: the keeper closed at once", path.display()))
                    })?;
                    match serde_json::from_slice::<FromKeeper>(&first) {
                        Ok(FromKeeper::Kept(kept)) => {
                            s.set_read_timeout(None)?;
                            return Ok((
                                Keeper {
                                    conn: Mutex::new((s, reader)),
                                },
                                kept,
                            ));
                        }
                        Ok(FromKeeper::Busy) => {
                            return Err(io::Error::other(format!(
                                "{}: the keeper serves another process of this tasker (same state \
                                 directory); stop it, or give this one another --name or --state",
                                path.display()
                            )))
                        }
                        other => {
                            return Err(io::Error::other(format!(
                                "{}: the keeper said {other:?} first",
                                path.display()
                            )))
                        }
                    }
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(io::Error::other(format!(
                        "{}: no keeper answers: {e}",
                        path.display()
                    )))
                }
                Err(_) => {
                    if !started {
                        start()?;
                        started = true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn ask(&self, m: &ToKeeper, fds: &[BorrowedFd<'_>]) -> io::Result<FromKeeper> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let (s, r) = &mut *c;
        write_frame(s, &serde_json::to_vec(m).map_err(io::Error::other)?, fds)?;
        let body = r
            .next(s)?
            .ok_or_else(|| io::Error::other("the keeper went away"))?;
        serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Starts a job, as the keeper's child.
    pub fn spawn(
        &self,
        s: &SpawnJob,
        log: &impl AsFd,
        cgroup: Option<BorrowedFd<'_>>,
    ) -> io::Result<Started> {
        let mut fds = vec![log.as_fd()];
        fds.extend(cgroup);
        match self.ask(&ToKeeper::Spawn(s.clone()), &fds)? {
            FromKeeper::Spawned { pid } => Ok(Started::Pid(pid)),
            FromKeeper::NotSpawned { not_found, error } => Ok(Started::Not(not_found, error)),
            other => Err(io::Error::other(format!("the keeper answered {other:?}"))),
        }
    }

    /// The wait status of a job that has ended (its process readable as a pidfd).
    pub fn reap(&self, job: u64, stopped: bool) -> io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.ask(&ToKeeper::Reap { job, stopped }, &[])? {
                FromKeeper::Reaped { status } => {
                    return Ok(std::process::ExitStatus::from_raw(status))
                }
                FromKeeper::NotReaped(why)
                    if why.ends_with("still running") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                FromKeeper::NotReaped(why) => return Err(io::Error::other(why)),
                other => return Err(io::Error::other(format!("the keeper answered {other:?}"))),
            }
        }
    }

    /// The server has recorded these jobs' ends.
    pub fn forget(&self, jobs: Vec<u64>) {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let body = serde_json::to_vec(&ToKeeper::Forget(jobs)).unwrap_or_default();
        let _ = write_frame(&c.0, &body, &[]);
    }
}

/// Writes a note into a job's log as its owner.
pub fn note(k: &Kept, line: &str) {
    if let Ok(sink) = crate::log::Sink::open(&crate::log::LogTarget::File(k.log.clone()), &k.who) {
        sink.note(line);
    }
}
