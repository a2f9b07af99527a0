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
//! and serves one tasker process at a time (on a connection per job thread that talks to
//! it at once, each on a thread of its own), of its own uid only. It holds
//! `STATE/keeper.lock` while it lives, and ends once it keeps nothing and no tasker is
//! connected. Messages are a 4-byte length and JSON; a `Spawn` carries the job's log and
//! cgroup descriptors (`SCM_RIGHTS`).

use berth_sys::spawn::{spawn, Join, Spawn, Stdio};
use berth_sys::Identity;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
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
    berth_sys::send_with_fds(s, &frame(body), fds)
}

/// A frame's bytes: its length, then its body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(body.len() + 4);
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(body);
    data
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
            // Read straight into the buffer's free room: no buffer made (and zeroed) per
            // read.
            let have = self.buf.len();
            self.buf.resize(have + (16 << 10), 0);
            let mut fds = Vec::new();
            let got = berth_sys::recv_with_fds(s, &mut self.buf[have..], &mut fds);
            self.buf.truncate(have + *got.as_ref().unwrap_or(&0));
            let got = got?;
            self.fds.extend(fds);
            if got == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// What the keeper keeps, shared by its connections' threads.
#[derive(Default)]
struct Shared {
    jobs: BTreeMap<u64, Kept>,
    /// The tasker process served now.
    owner: Option<Owner>,
    /// Owners so far, to number them.
    owners: u64,
}

/// The tasker process a keeper serves.
struct Owner {
    pid: u32,
    /// To tell that it has ended even while a connection of its is still being served
    /// (a start that hangs in its child, say): the next process is then served.
    pidfd: OwnedFd,
    /// Which owner this is.
    number: u64,
    /// Its connections open.
    conns: usize,
}

impl Shared {
    /// A connection of owner `number` ended.
    fn closed(&mut self, number: u64) {
        if let Some(o) = &mut self.owner {
            if o.number == number {
                o.conns -= 1;
                if o.conns == 0 {
                    self.owner = None;
                }
            }
        }
    }
}

/// Runs the keeper for `state` (`berth keeper`), until it keeps nothing and no tasker is
/// connected. Returns without error at once when another keeper holds the lock.
///
/// One tasker process is served at a time, on as many connections as it opens (one per
/// job thread that needs one), each on a thread of its own, so that jobs start in parallel
/// and one whose start hangs (its directory on a dead NFS server) holds up no other.
pub fn serve(state: &Path) -> io::Result<()> {
    std::fs::create_dir_all(state)?;
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(state.join(LOCK))?;
    if !berth_sys::flock_exclusive(&lock, false)? {
        return Ok(()); // another keeper serves this state directory
    }
    let path = state.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let me = berth_sys::euid();
    let shared = std::sync::Arc::new(Mutex::new(Shared::default()));
    let started = Instant::now();
    let mut served = false;
    listener.set_nonblocking(true)?;
    loop {
        {
            // Nothing kept and nobody connected: done (after the first tasker, or a
            // minute without one).
            let sh = shared.lock().unwrap_or_else(|e| e.into_inner());
            if sh.jobs.is_empty()
                && sh.owner.is_none()
                && (served || started.elapsed() > Duration::from_secs(60))
            {
                let _ = std::fs::remove_file(&path);
                return Ok(());
            }
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
        let pid = match berth_sys::peer_cred(&conn) {
            Ok(c) if c.uid == me => c.pid,
            _ => continue, // only the tasker's own uid hears anything
        };
        conn.set_nonblocking(false)?;
        let (kept, number) = {
            let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
            let gone = sh.owner.as_ref().is_some_and(|o| {
                o.pid != pid
                    && berth_sys::poll_readable_for(&[o.pidfd.as_raw_fd()], Some(Duration::ZERO))
                        .is_ok_and(|r| r[0])
            });
            if gone {
                sh.owner = None; // it ended: what it left hanging is its own
            }
            match &mut sh.owner {
                Some(o) if o.pid == pid => o.conns += 1,
                Some(_) => {
                    let _ = write_frame(
                        &conn,
                        &serde_json::to_vec(&FromKeeper::Busy).unwrap_or_default(),
                        &[],
                    );
                    continue;
                }
                None => {
                    let Ok(pidfd) = berth_sys::pidfd_open(pid) else {
                        continue; // it is gone already
                    };
                    sh.owners += 1;
                    let number = sh.owners;
                    sh.owner = Some(Owner {
                        pid,
                        pidfd,
                        number,
                        conns: 1,
                    });
                }
            }
            let number = sh.owner.as_ref().map_or(0, |o| o.number);
            (sh.jobs.values().cloned().collect::<Vec<_>>(), number)
        };
        served = true;
        let sh = shared.clone();
        let dir = state.display().to_string();
        let spawned = std::thread::Builder::new()
            .name("berth-keeper".into())
            .spawn(move || {
                if let Err(e) = session(&conn, kept, &sh) {
                    berth_sys::say!("berth keeper {dir}: {e}");
                }
                sh.lock().unwrap_or_else(|e| e.into_inner()).closed(number);
            });
        if let Err(e) = spawned {
            berth_sys::say!("berth keeper: no thread for a connection: {e}");
            shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .closed(number);
        }
    }
}

/// Serves one connection of the tasker to its end.
fn session(conn: &UnixStream, kept: Vec<Kept>, shared: &Mutex<Shared>) -> io::Result<()> {
    let answer =
        |m: &FromKeeper| write_frame(conn, &serde_json::to_vec(m).unwrap_or_default(), &[]);
    answer(&FromKeeper::Kept(kept))?;
    let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());
    let mut reader = Reader::new();
    loop {
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
                let a = match start(&s, log.as_ref(), cg.as_ref()) {
                    Ok(pid) => {
                        lock().jobs.insert(
                            s.job,
                            Kept {
                                job: s.job,
                                slot: s.slot,
                                pid,
                                who: s.who,
                                log: s.log,
                                status: None,
                                stopped: false,
                            },
                        );
                        FromKeeper::Spawned { pid }
                    }
                    Err(e) => FromKeeper::NotSpawned {
                        not_found: e.kind() == io::ErrorKind::NotFound,
                        error: e.to_string(),
                    },
                };
                answer(&a)?;
            }
            ToKeeper::Reap { job, stopped } => {
                let mut g = lock();
                let a = match g.jobs.get_mut(&job) {
                    None => FromKeeper::NotReaped(format!("job {job}: not kept here")),
                    Some(e) => match e.status {
                        Some(status) => FromKeeper::Reaped { status },
                        None => match reap(e.pid) {
                            Ok(Some(status)) => {
                                e.status = Some(status);
                                e.stopped |= stopped;
                                FromKeeper::Reaped { status }
                            }
                            Ok(None) => FromKeeper::NotReaped(format!("job {job}: still running")),
                            Err(err) => FromKeeper::NotReaped(format!("job {job}: {err}")),
                        },
                    },
                };
                drop(g);
                answer(&a)?;
            }
            ToKeeper::Forget(list) => {
                let mut g = lock();
                for j in list {
                    if g.jobs.get(&j).is_some_and(|e| e.status.is_some()) {
                        g.jobs.remove(&j);
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

/// A tasker's connections to its keeper: one per job thread that talks to it at once.
pub struct Keeper {
    path: PathBuf,
    idle: Mutex<Vec<(UnixStream, Reader)>>,
    /// Starts a keeper again when this one is gone (killed, say).
    restart: Option<Box<dyn Fn() -> io::Result<()> + Send + Sync>>,
    /// Jobs whose ends the server has recorded, and since when the first waits: told to
    /// the keeper with the next request (or at the latest after [`FORGET_WITHIN`]), which
    /// spares it a wake for each acknowledgement.
    forgets: Mutex<(Vec<u64>, Option<Instant>)>,
}

/// How long a Forget may wait for a request to go with (the agent looks as often: so at
/// most twice as long in all).
pub const FORGET_WITHIN: Duration = Duration::from_secs(1);

impl Drop for Keeper {
    fn drop(&mut self) {
        self.forget_all();
    }
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keeper({})", self.path.display())
    }
}

/// What became of a start: the job's pid, or why it did not start.
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
            match connect(&path) {
                Ok((s, r, kept)) => {
                    return Ok((
                        Keeper {
                            path,
                            idle: Mutex::new(vec![(s, r)]),
                            restart: None,
                            forgets: Mutex::new((Vec::new(), None)),
                        },
                        kept,
                    ))
                }
                // The process before this one may be ending: a moment for it.
                Err(Connect::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(Connect::Busy(e)) | Err(Connect::Bad(e)) => return Err(e),
                Err(Connect::Refused(e)) if Instant::now() > deadline => {
                    return Err(io::Error::other(format!(
                        "{}: no keeper answers: {e}",
                        path.display()
                    )))
                }
                Err(Connect::Refused(_)) => {
                    if !started {
                        start()?;
                        started = true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// With `restart`, a keeper that is gone is started again when next needed.
    pub fn restart_with(&mut self, restart: Box<dyn Fn() -> io::Result<()> + Send + Sync>) {
        self.restart = Some(restart);
    }

    /// A new connection; a keeper that is gone is started again (its jobs' statuses went
    /// with it).
    fn connect_again(&self) -> io::Result<(UnixStream, Reader)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut restarted = false;
        loop {
            match connect(&self.path) {
                Ok((s, r, _)) => return Ok((s, r)),
                Err(Connect::Refused(e)) => {
                    let Some(restart) = &self.restart else {
                        return Err(e);
                    };
                    if Instant::now() > deadline {
                        return Err(io::Error::other(format!(
                            "{}: no keeper answers: {e}",
                            self.path.display()
                        )));
                    }
                    if !restarted {
                        berth_sys::say!(
                            "berth tasker: the keeper of {} is gone; starting another (the \
                             statuses of the jobs it kept are lost)",
                            self.path.display()
                        );
                        restart()?;
                        restarted = true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(Connect::Busy(e) | Connect::Bad(e)) => return Err(e),
            }
        }
    }

    fn ask(&self, m: &ToKeeper, fds: &[BorrowedFd<'_>]) -> io::Result<FromKeeper> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // The Forgets waiting go first, in the same write (the keeper answers them not).
        let forgets = {
            let mut f = self.forgets.lock().unwrap_or_else(|e| e.into_inner());
            f.1 = None;
            std::mem::take(&mut f.0)
        };
        let mut out = Vec::new();
        if !forgets.is_empty() {
            let f = serde_json::to_vec(&ToKeeper::Forget(forgets.clone()));
            out = frame(&f.map_err(io::Error::other)?);
        }
        out.extend_from_slice(&frame(&serde_json::to_vec(m).map_err(io::Error::other)?));
        let sent = match idle {
            Some((s, r)) => match berth_sys::send_with_fds(&s, &out, fds) {
                Ok(()) => Ok((s, r)),
                Err(_) => {
                    // A keeper that is gone: the message was not read (a write to a closed
                    // peer fails), so it is sent once more, to a keeper started again. The
                    // other idle connections are to the same dead one.
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    self.connect_again()
                        .and_then(|(s, r)| berth_sys::send_with_fds(&s, &out, fds).map(|()| (s, r)))
                }
            },
            None => self
                .connect_again()
                .and_then(|(s, r)| berth_sys::send_with_fds(&s, &out, fds).map(|()| (s, r))),
        };
        let (s, mut r) = match sent {
            Ok(sr) => sr,
            Err(e) => {
                // Not told (no keeper took them): they wait for the next request.
                if !forgets.is_empty() {
                    let mut f = self.forgets.lock().unwrap_or_else(|e| e.into_inner());
                    f.0.extend(forgets);
                    f.1.get_or_insert_with(Instant::now);
                }
                return Err(e);
            }
        };
        let body = r
            .next(&s)?
            .ok_or_else(|| io::Error::other("the keeper went away"))?;
        // Only a connection that answered goes back for the next.
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((s, r));
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
                FromKeeper::NotReaped(why) if why.ends_with("not kept here") => {
                    return Err(io::Error::other(format!(
                        "the tasker's keeper ended while job {job} ran: its exit status is lost"
                    )))
                }
                FromKeeper::NotReaped(why) => return Err(io::Error::other(why)),
                other => return Err(io::Error::other(format!("the keeper answered {other:?}"))),
            }
        }
    }

    /// The server has recorded these jobs' ends: the keeper is told with the next
    /// request, or by [`Keeper::forget_waiting`].
    pub fn forget(&self, jobs: Vec<u64>) {
        let mut f = self.forgets.lock().unwrap_or_else(|e| e.into_inner());
        f.0.extend(jobs);
        f.1.get_or_insert_with(Instant::now);
        if f.0.len() >= 4096 {
            let jobs = std::mem::take(&mut f.0);
            f.1 = None;
            drop(f);
            self.forget_now(jobs);
        }
    }

    /// Tells the keeper the Forgets that have waited for [`FORGET_WITHIN`] or longer.
    pub fn forget_waiting(&self) {
        let mut f = self.forgets.lock().unwrap_or_else(|e| e.into_inner());
        if f.1.is_some_and(|t| t.elapsed() >= FORGET_WITHIN) {
            let jobs = std::mem::take(&mut f.0);
            f.1 = None;
            drop(f);
            self.forget_now(jobs);
        }
    }

    /// Tells the keeper every Forget waiting (this tasker process stops).
    pub fn forget_all(&self) {
        let jobs = {
            let mut f = self.forgets.lock().unwrap_or_else(|e| e.into_inner());
            f.1 = None;
            std::mem::take(&mut f.0)
        };
        if !jobs.is_empty() {
            self.forget_now(jobs);
        }
    }

    fn forget_now(&self, jobs: Vec<u64>) {
        let body = serde_json::to_vec(&ToKeeper::Forget(jobs)).unwrap_or_default();
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some((s, r)) = idle {
            if write_frame(&s, &body, &[]).is_ok() {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((s, r));
            }
        } else if let Ok((s, r, _)) = connect(&self.path) {
            if write_frame(&s, &body, &[]).is_ok() {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((s, r));
            }
        }
    }
}

enum Connect {
    /// Nothing listens.
    Refused(io::Error),
    /// The keeper serves another tasker process.
    Busy(io::Error),
    /// Something else went wrong.
    Bad(io::Error),
}

/// A new connection to the keeper at `path`, and what it keeps.
fn connect(path: &Path) -> Result<(UnixStream, Reader, Vec<Kept>), Connect> {
    let s = UnixStream::connect(path).map_err(Connect::Refused)?;
    let bad = |e: io::Error| Connect::Bad(io::Error::other(format!("{}: {e}", path.display())));
    // Only a keeper of our own uid is one: anything else listening there is not.
    match berth_sys::peer_cred(&s) {
        Ok(c) if c.uid == berth_sys::euid() => {}
        Ok(c) => {
            return Err(bad(io::Error::other(format!(
                "the process listening there is uid {}'s, not this tasker's; it is not a keeper",
                c.uid
            ))))
        }
        Err(e) => return Err(bad(e)),
    }
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(bad)?;
    let mut reader = Reader::new();
    let first = reader
        .next(&s)
        .map_err(bad)?
        .ok_or_else(|| bad(io::Error::other("the keeper closed at once")))?;
    match serde_json::from_slice::<FromKeeper>(&first) {
        Ok(FromKeeper::Kept(kept)) => {
            s.set_read_timeout(None).map_err(bad)?;
            Ok((s, reader, kept))
        }
        Ok(FromKeeper::Busy) => Err(Connect::Busy(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{}: the keeper serves another process of this tasker, still running (same \
                 state directory); stop it, or give this one another --name or --state",
                path.display()
            ),
        ))),
        other => Err(bad(io::Error::other(format!(
            "the keeper said {other:?} first"
        )))),
    }
}

/// Writes a note into a job's log as its owner.
pub fn note(k: &Kept, line: &str) {
    if let Ok(sink) = crate::log::Sink::open(&crate::log::LogTarget::File(k.log.clone()), &k.who) {
        sink.note(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> Identity {
        berth_sys::identity_by_uid(65534).expect("the user nobody")
    }

    fn job(id: u64, script: &str, dir: &Path) -> SpawnJob {
        SpawnJob {
            job: id,
            slot: id as u32,
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/bin:/usr/bin".into())],
            who: nobody(),
            dir: PathBuf::from("/"),
            umask: 0o022,
            log: dir.join(format!("{id}.log")),
            cgroup: None,
        }
    }

    /// A tasker process that ended is no longer served, even while a connection of its is
    /// still open (a start hanging in its child holds one): the next process is served,
    /// not told the keeper is busy. One that still runs is.
    #[test]
    fn the_next_tasker_is_served_once_the_last_one_ended() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let s2 = state.clone();
        let _server = std::thread::spawn(move || serve(&s2));
        let sock = state.join(SOCKET);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "no keeper socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        // A "tasker" that connects, hands its connection to a child that holds it, and
        // ends.
        let script = "import os,socket,sys,time\n\
                      s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(65536)\n\
                      if os.fork()==0:\n time.sleep(30); os._exit(0)\n\
                      print('connected', flush=True)\n";
        // Its child keeps no pipe of ours open: only the connection.
        let st = std::process::Command::new("python3")
            .args(["-c", script, sock.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        // A live one holding a connection: the next is told the keeper is busy...
        let mut live = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(65536); print('in', flush=True); time.sleep(30)",
                sock.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(live.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "in");
        }
        assert!(matches!(connect(&sock), Err(Connect::Busy(_))));
        // ...and served once it ends, though the first one's child still holds its.
        let _ = live.kill();
        let _ = live.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match connect(&sock) {
                Ok(_) => break,
                Err(Connect::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(Connect::Busy(e) | Connect::Bad(e) | Connect::Refused(e)) => {
                    panic!("not served after the last process ended: {e}")
                }
            }
        }
    }

    /// Statuses go to the tasker that asks, are kept across its connections until
    /// forgotten, and a Forget written right before a Spawn (two frames read at once) does
    /// not leave the Spawn unanswered.
    #[test]
    #[ignore = "needs root (jobs run as nobody): .ci/run runs it with --include-ignored"]
    fn statuses_are_kept_until_forgotten_across_tasker_connections() {
        assert_eq!(berth_sys::euid(), 0, "run as root");
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let s2 = state.clone();
        let server = std::thread::spawn(move || serve(&s2));
        let no_start = || Ok(());
        let (k, kept) = Keeper::open(&state, &no_start).unwrap();
        assert!(kept.is_empty());
        let log = std::fs::File::create(tmp.path().join("log")).unwrap();
        let mut pids = Vec::new();
        for id in 1..=20u64 {
            // A Forget with no answer, then a Spawn: both may arrive in one read.
            k.forget(vec![id + 1000]);
            match k
                .spawn(&job(id, &format!("exit {id}"), tmp.path()), &log, None)
                .unwrap()
            {
                Started::Pid(pid) => pids.push((id, pid)),
                Started::Not(_, e) => panic!("job {id}: {e}"),
            }
        }
        for (id, pid) in &pids {
            let fd = berth_sys::pidfd_open(*pid).unwrap();
            berth_sys::wait_pidfd(&fd, None, None).unwrap();
            // Not reaped: still a zombie of the keeper's, its pid not reused.
            assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
            use std::os::unix::process::ExitStatusExt;
            let st = k.reap(*id, false).unwrap();
            assert_eq!(st.code(), Some(*id as i32), "job {id}: {:?}", st.into_raw());
        }
        // A new tasker connection: the statuses not forgotten are there.
        drop(k);
        let (k, kept) = Keeper::open(&state, &no_start).unwrap();
        assert_eq!(kept.len(), 20);
        assert!(kept.iter().all(|j| j.status == Some((j.job as i32) << 8)));
        // A job that runs across connections is listed as running, then ends.
        let long = match k
            .spawn(&job(99, "sleep 0.5; exit 9", tmp.path()), &log, None)
            .unwrap()
        {
            Started::Pid(p) => p,
            Started::Not(_, e) => panic!("{e}"),
        };
        k.forget((1..=20).collect());
        drop(k);
        // A Forget is not answered: the next connection may come before it is read.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (k, kept) = loop {
            let (k, kept) = Keeper::open(&state, &no_start).unwrap();
            if kept.len() == 1 || Instant::now() > deadline {
                break (k, kept);
            }
            drop(k);
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!((kept[0].job, kept[0].pid, kept[0].status), (99, long, None));
        let fd = berth_sys::pidfd_open(long).unwrap();
        berth_sys::wait_pidfd(&fd, None, None).unwrap();
        assert_eq!(k.reap(99, false).unwrap().code(), Some(9));
        // A Forget that finds no request to go with is told within FORGET_WITHIN.
        k.forget(vec![99]);
        k.forget_waiting();
        let (k2, kept) = Keeper::open(&state, &no_start).unwrap();
        assert_eq!(kept.len(), 1, "told before its time: {kept:?}");
        // (It has no Forget of its own to tell as it goes.)
        drop(k2);
        std::thread::sleep(FORGET_WITHIN);
        k.forget_waiting();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, kept) = Keeper::open(&state, &no_start).unwrap();
            if kept.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "never told: {kept:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(k);
        // Nothing kept, nobody connected: the keeper ends.
        server.join().unwrap().unwrap();
        assert!(!state.join(SOCKET).exists());
    }
}
