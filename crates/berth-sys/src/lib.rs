//! The operating-system calls of berth: identities, process groups, pidfds, per-thread
//! filesystem identity, signals, locks, peer credentials. This is the one crate with
//! `unsafe` (apart from the static wrapper); each block says why it is sound.

// The one library crate that makes system calls: every other crate denies unsafe code.
#![allow(unsafe_code)]

/// Writes a line to standard error and never panics: `eprintln!` panics when the write
/// fails (the disk of a daemon's log full), which would take a server's actor with it.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod munge;
pub mod pty;
pub mod spawn;
pub mod walk;

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A user that jobs and user hooks run as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// The login name.
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Every group the user is in, the primary one included.
    pub groups: Vec<u32>,
    /// The home directory.
    pub home: PathBuf,
}

/// Why a user could not be found.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No such user in the system's user database.
    #[error("no user {0:?} on this host")]
    NoSuchUser(String),
    /// No such uid.
    #[error("no user with uid {0} on this host")]
    NoSuchUid(u32),
    /// The lookup itself failed.
    #[error("looking up user {0:?}: {1}")]
    Lookup(String, io::Error),
}

fn passwd_to_identity(pw: &libc::passwd) -> Identity {
    // SAFETY: getpwnam_r/getpwuid_r filled pw with pointers into our buffer, valid for the
    // duration of this call.
    let name = unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned();
    let home = PathBuf::from(OsStr::from_bytes(
        // SAFETY: pw_dir points into buf, a C string that getpw*_r filled.
        unsafe { CStr::from_ptr(pw.pw_dir) }.to_bytes(),
    ));
    let mut groups = vec![pw.pw_gid; 64];
    let mut n = groups.len() as libc::c_int;
    let cname = CString::new(name.clone()).unwrap_or_default();
    loop {
        // SAFETY: groups has room for n entries; n is updated to the number needed.
        let r =
            unsafe { libc::getgrouplist(cname.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            break;
        }
        groups.resize(n.max(groups.len() as i32 * 2) as usize, 0);
        n = groups.len() as libc::c_int;
    }
    Identity {
        name,
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        groups,
        home,
    }
}

/// Looks a user up by name in the system's user database (NSS: files, LDAP, ...).
pub fn identity_by_name(name: &str) -> Result<Identity, IdentityError> {
    let cname = CString::new(name).map_err(|_| IdentityError::NoSuchUser(name.to_string()))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; getpwnam_r fills it with pointers into buf.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a local of ours, buf for its length.
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut res,
        )
    };
    if r != 0 {
        return Err(IdentityError::Lookup(
            name.to_string(),
            io::Error::from_raw_os_error(r),
        ));
    }
    if res.is_null() {
        return Err(IdentityError::NoSuchUser(name.to_string()));
    }
    Ok(passwd_to_identity(&pw))
}

/// Looks a user up by uid.
pub fn identity_by_uid(uid: u32) -> Result<Identity, IdentityError> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in identity_by_name.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a local of ours, buf for its length.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if r != 0 {
        return Err(IdentityError::Lookup(
            uid.to_string(),
            io::Error::from_raw_os_error(r),
        ));
    }
    if res.is_null() {
        return Err(IdentityError::NoSuchUid(uid));
    }
    Ok(passwd_to_identity(&pw))
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The host's short name: up to the first dot.
pub fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let full = String::from_utf8_lossy(&buf[..end]).into_owned();
    full.split('.').next().unwrap_or("localhost").to_string()
}

/// Runs `f` with this thread's filesystem identity (fsuid, fsgid and supplementary
/// groups) set to `who`'s, so that every path it opens is opened with that user's
/// permissions: root never follows a user's symbolic link with root's rights. The
/// thread's own identity comes back when `f` returns or unwinds; if it cannot, the
/// process aborts rather than go on with a user's rights, or a root's where a user's were
/// meant. Without root, `f` runs as this process.
pub fn as_user<T>(who: &Identity, f: impl FnOnce() -> T) -> T {
    if euid() != 0 {
        return f();
    }
    struct Restore {
        groups: Vec<libc::gid_t>,
        fsuid: libc::uid_t,
        fsgid: libc::gid_t,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: raw syscalls on this thread's credentials only (glibc's wrappers
            // would change every thread's). setfsuid(-1) changes nothing and says the
            // current value.
            unsafe {
                libc::syscall(libc::SYS_setfsuid, self.fsuid);
                libc::syscall(libc::SYS_setfsgid, self.fsgid);
                let g = libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
                if g != 0
                    || libc::syscall(libc::SYS_setfsuid, u32::MAX) as libc::uid_t != self.fsuid
                    || libc::syscall(libc::SYS_setfsgid, u32::MAX) as libc::gid_t != self.fsgid
                {
                    std::process::abort();
                }
            }
        }
    }
    // SAFETY: as above; getgroups writes at most the room it is given.
    let restore = unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut groups = vec![0; n.max(0) as usize];
        let n = libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr());
        groups.truncate(n.max(0) as usize);
        Restore {
            groups,
            fsuid: libc::syscall(libc::SYS_setfsuid, u32::MAX) as libc::uid_t,
            fsgid: libc::syscall(libc::SYS_setfsgid, u32::MAX) as libc::gid_t,
        }
    };
    // SAFETY: as above. The order matters: groups and gid while fsuid is still root.
    let ok = unsafe {
        libc::syscall(libc::SYS_setgroups, who.groups.len(), who.groups.as_ptr()) == 0
            && {
                libc::syscall(libc::SYS_setfsgid, who.gid);
                libc::syscall(libc::SYS_setfsgid, u32::MAX) as libc::gid_t == who.gid
            }
            && {
                libc::syscall(libc::SYS_setfsuid, who.uid);
                libc::syscall(libc::SYS_setfsuid, u32::MAX) as libc::uid_t == who.uid
            }
    };
    if !ok {
        // Never run f with a half-changed identity.
        drop(restore);
        std::process::abort();
    }
    let out = f();
    drop(restore);
    out
}

/// Opens a process's pidfd, to wait for its end with poll.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What a wait for a process ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The process ended (it is not reaped yet).
    Exited,
    /// The deadline passed.
    TimedOut,
    /// The stop descriptor became readable.
    Stopped,
}

/// Waits until the process behind `pidfd` ends, `deadline` passes, or `stop` is readable.
pub fn wait_pidfd(
    pidfd: &OwnedFd,
    deadline: Option<Instant>,
    stop: Option<RawFd>,
) -> io::Result<Woke> {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Woke::TimedOut);
                }
                left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: fds is a valid array of two pollfd; a negative fd is ignored by poll.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            return Ok(Woke::Exited);
        }
        if fds[1].revents != 0 {
            return Ok(Woke::Stopped);
        }
    }
}

/// Sends a signal to a process group. A group that is gone already is not an error.
/// Sends `sig` to one process.
pub fn kill_pid(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory effects; a pid that is gone gives ESRCH.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

pub fn kill_group(pgid: u32, sig: libc::c_int) {
    if pgid <= 1 {
        return; // never signal every process, or init's group
    }
    // SAFETY: kill with a negative pid signals that process group only.
    unsafe { libc::kill(-(pgid as libc::pid_t), sig) };
}

/// CLOCK_MONOTONIC in microseconds: the clock of the kernel log's timestamps.
pub fn monotonic_us() -> u64 {
    // SAFETY: timespec is plain data, filled by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Whether the kernel's log says it killed process `pid` for memory at or after
/// `since_us` (CLOCK_MONOTONIC): `Some(true)` in a memory cgroup at its limit,
/// `Some(false)` when the host ran out, None when it did not (or the log cannot be
/// read: it needs root).
pub fn oom_killed(pid: u32, since_us: u64) -> Option<bool> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let needle = format!("Killed process {pid} (");
    let mut buf = vec![0u8; 8192];
    let mut found = None;
    loop {
        // One record per read.
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // Overwritten while read: the next one follows.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break, // EAGAIN: no more
        };
        let rec = String::from_utf8_lossy(&buf[..n]);
        let Some((head, msg)) = rec.split_once(';') else {
            continue;
        };
        let ts: u64 = head
            .split(',')
            .nth(2)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if ts >= since_us && msg.contains(&needle) {
            found = Some(msg.contains("Memory cgroup out of memory"));
        }
    }
    found
}

/// Sends this process SIGTERM: the clean stop its signal thread (which waits for the
/// blocked [`STOP_SIGNALS`]) carries out.
pub fn terminate_self() {
    // SAFETY: kill(2) on this process's own pid.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

/// Whether any process of a group is still alive.
pub fn group_alive(pgid: u32) -> bool {
    // SAFETY: signal 0 checks for existence only.
    pgid > 1 && unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0
}

/// A process's start time in clock ticks since boot (from /proc/PID/stat), which tells a
/// process from a later one that reuses its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold blanks: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// An eventfd, readable once it has been written: a stop signal that poll can wait on.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes it readable, for good.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// The descriptor, for poll.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Many descriptors waited on at once (epoll, level-triggered), each known by a number of
/// the caller's: an event loop's wait, however many connections it watches.
#[derive(Debug)]
pub struct Poller {
    epoll: OwnedFd,
}

impl Poller {
    /// A poller watching nothing yet.
    pub fn new() -> io::Result<Poller> {
        use rustix::event::epoll;
        Ok(Poller {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
    }

    /// Watches `fd` for something to read (or its peer hanging up), as `key`.
    pub fn add(&self, fd: impl std::os::fd::AsFd, key: u64) -> io::Result<()> {
        use rustix::event::epoll::{self, EventData, EventFlags};
        epoll::add(
            &self.epoll,
            fd,
            EventData::new_u64(key),
            EventFlags::IN | EventFlags::RDHUP,
        )?;
        Ok(())
    }

    /// Stops watching `fd` (before it is closed: a descriptor duplicated elsewhere would
    /// otherwise stay watched).
    pub fn remove(&self, fd: impl std::os::fd::AsFd) -> io::Result<()> {
        rustix::event::epoll::delete(&self.epoll, fd)?;
        Ok(())
    }

    /// Waits at most `timeout` (not at all when zero) for watched descriptors to be ready,
    /// and puts their keys in `keys`; an interrupted wait finds none.
    pub fn wait(&self, timeout: Duration, keys: &mut Vec<u64>) -> io::Result<()> {
        use rustix::event::{epoll, Timespec};
        let t = Timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64 / 1000) as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut ready = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 64];
        match epoll::wait(&self.epoll, &mut ready, Some(&t)) {
            Ok((ready, _)) => keys.extend(ready.iter().map(|e| e.data.u64())),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// Wakes a thread that waits in a [`Poller`] (which watches [`Waker::fd`]) when another
/// thread has handed it something, and only when it sleeps: the sleeper says it is about
/// to ([`Waker::sleeping`]), looks once more for work, then waits; the giver hands over
/// first, then wakes it ([`Waker::wake`]). Either the sleeper sees the work, or the giver
/// sees it sleeping.
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
    asleep: std::sync::atomic::AtomicBool,
}

impl Waker {
    /// A new waker.
    pub fn new() -> io::Result<Waker> {
        Ok(Waker {
            fd: EventFd::new()?,
            asleep: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Wakes the sleeper, if it sleeps (or is about to); call after handing over.
    pub fn wake(&self) {
        use std::sync::atomic::{fence, Ordering};
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::SeqCst) {
            self.fd.signal();
        }
    }

    /// The sleeper is about to sleep (true: look for work once more after this), or is
    /// awake again (false).
    pub fn sleeping(&self, asleep: bool) {
        use std::sync::atomic::{fence, Ordering};
        self.asleep.store(asleep, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Takes the wake that made [`Waker::fd`] readable.
    pub fn clear(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads 8 bytes into a buffer of 8 from our own (non-blocking) eventfd.
        unsafe { libc::read(self.fd.raw(), n.as_mut_ptr().cast(), 8) };
    }

    /// The descriptor to watch.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd.0)
    }
}

/// Fills `buf` with random bytes from the kernel (getrandom).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            done += n as usize;
        }
    }
    Ok(())
}

/// How long to sleep between checks of something that cannot be polled.
pub const SHORT: Duration = Duration::from_millis(20);

/// Takes an exclusive flock on an open file, waiting for it (`wait`) or not. Ok(false)
/// when it is held elsewhere and `wait` is false.
pub fn flock_exclusive(f: &std::fs::File, wait: bool) -> io::Result<bool> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a descriptor the caller owns for as long as the call lasts.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Signals that a daemon or `try` takes on a thread of its own.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks `signals` in the calling thread (call it before any other thread exists, so
/// that all inherit the mask) and returns a waiter that a dedicated thread calls.
pub fn block_signals(signals: &[libc::c_int]) -> SignalWaiter {
    // SAFETY: sigset_t is plain data, filled and installed by these calls.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigset operations on a local; the mask of this thread.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    SignalWaiter(set)
}

/// Waits for one of the blocked signals.
pub struct SignalWaiter(libc::sigset_t);

// SAFETY: a sigset_t is plain data with no thread affinity.
unsafe impl Send for SignalWaiter {}

impl SignalWaiter {
    /// Blocks until one of the signals arrives, and returns it.
    pub fn wait(&self) -> libc::c_int {
        loop {
            let mut sig = 0;
            // SAFETY: self.0 is a valid signal set; sig receives the signal number.
            if unsafe { libc::sigwait(&self.0, &mut sig) } == 0 {
                return sig;
            }
        }
    }
}

/// The uid, gid and pid of the process at the other end of a Unix socket, from the
/// kernel: a client cannot claim to be someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's pid.
    pub pid: u32,
    /// The peer's uid.
    pub uid: u32,
    /// The peer's gid.
    pub gid: u32,
}

/// The peer credentials of a connected Unix socket.
pub fn peer_cred(sock: &impl AsRawFd) -> io::Result<PeerCred> {
    // SAFETY: ucred is plain data; getsockopt fills at most len bytes of it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are locals; len says how much of cred may be written.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Megabytes free for unprivileged users in the filesystem holding `path`.
pub fn free_mb(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs is plain data, filled by the call for a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a C string; st a local the call fills.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64 / (1024 * 1024))
}

/// Waits until one of `fds` can be read (or has hung up), for ever; a negative entry is
/// left out. Returns which can.
pub fn poll_readable(fds: &[RawFd]) -> io::Result<Vec<bool>> {
    poll_readable_for(fds, None)
}

/// As [`poll_readable`], for at most `timeout` (then none can); an interrupted wait says
/// none can either.
pub fn poll_readable_for(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: poll on pollfds of ours, for as long as the call lasts.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// Whether an open file lies on a filesystem of the kernel's (proc, sysfs, cgroup, debugfs,
/// tracefs, securityfs, bpf, configfs): no job's log is one, and reading or writing one as
/// a user from within the tasker's process would reach the tasker itself (`/proc/self`).
pub fn on_kernel_fs(f: &impl AsRawFd) -> bool {
    // SAFETY: fstatfs writes into a zeroed local.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: f is open; st is a valid out-pointer.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return true;
    }
    const KERNEL: [i64; 9] = [
        0x9fa0,     // proc
        0x62656572, // sysfs
        0x27e0eb,   // cgroup
        0x63677270, // cgroup2
        0x64626720, // debugfs
        0x74726163, // tracefs
        0x73636673, // securityfs
        0xcafe4a11, // bpf
        0x62656570, // configfs
    ];
    KERNEL.contains(&(st.f_type as i64))
}

/// This process's umask, read without changing it (from /proc/self/status), else 022.
pub fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Raises this process's soft limit of open descriptors to its hard limit, and returns
/// it: a server holds a descriptor per client, and the usual soft limit of 1024 is low.
pub fn raise_open_files() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    r.rlim_cur = r.rlim_max;
    // SAFETY: setrlimit reads a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r.rlim_cur)
}

/// Sends all of `data` on a Unix stream socket, with `fds` attached to its first byte
/// (`SCM_RIGHTS`): the receiver gets them with that byte, through [`recv_with_fds`].
pub fn send_with_fds(
    sock: &std::os::unix::net::UnixStream,
    data: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_FDS} descriptors go with one message"),
        ));
    }
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    let mut sent = loop {
        match sendmsg(
            sock,
            &[io::IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // The rest, if the socket took only part of it, goes without descriptors.
    while sent < data.len() {
        match rustix::net::send(sock, &data[sent..], SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends what the socket takes of `data` now, without waiting (`MSG_DONTWAIT`, and no
/// SIGPIPE): `WouldBlock` when it takes nothing.
pub fn send_nowait(sock: &impl std::os::fd::AsFd, data: &[u8]) -> io::Result<usize> {
    use rustix::net::SendFlags;
    rustix::net::send(sock, data, SendFlags::DONTWAIT | SendFlags::NOSIGNAL).map_err(Into::into)
}

/// Reads what a socket has now, without waiting (`MSG_DONTWAIT`, whatever the socket's
/// own mode): `WouldBlock` when it has nothing, 0 when the peer closed.
pub fn recv_nowait(sock: &impl std::os::fd::AsFd, buf: &mut [u8]) -> io::Result<usize> {
    use rustix::net::RecvFlags;
    loop {
        match rustix::net::recv(sock, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The most descriptors [`send_with_fds`] attaches to one message.
pub const MAX_FDS: usize = 4;

/// Reads what is there (at most `buf.len()` bytes) from a Unix stream socket, adding any
/// descriptors that came with it to `fds`, in order. 0 means the peer closed.
pub fn recv_with_fds(
    sock: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(
            sock,
            &mut [io::IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => break r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        // Descriptors past the room were closed by the kernel: the message is unusable.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors came than one message may carry",
        ));
    }
    Ok(got.bytes)
}

/// Reaps child `pid` if it has ended, writing its wait status: its pid then, 0 while it
/// runs.
pub fn waitpid_nohang(pid: u32, status: &mut libc::c_int) -> io::Result<u32> {
    // SAFETY: waitpid on a pid with WNOHANG, writing into the caller's integer.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, status, libc::WNOHANG) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    #[ignore = "needs root: .ci/run runs it with --include-ignored"]
    fn as_user_opens_with_the_users_rights_and_gives_the_thread_back() {
        assert_eq!(euid(), 0, "run as root");
        let nobody = identity_by_name("nobody").unwrap();
        let dir = std::env::temp_dir().join(format!("berth-sys-as-user-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let root_only = dir.join("root-only");
        std::fs::write(&root_only, "x").unwrap();
        std::fs::set_permissions(
            &root_only,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();

        let made = as_user(&nobody, || {
            std::fs::write(dir.join("by-nobody"), "x").unwrap();
            std::fs::read(&root_only)
        });
        assert_eq!(made.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            std::fs::metadata(dir.join("by-nobody")).unwrap().uid(),
            nobody.uid
        );

        // A panic inside gives the identity back too.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            as_user(&nobody, || panic!("inside"))
        }));
        assert!(r.is_err());
        std::fs::write(dir.join("by-root"), "x").unwrap();
        assert_eq!(std::fs::metadata(dir.join("by-root")).unwrap().uid(), 0);
        assert_eq!(std::fs::read(&root_only).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
