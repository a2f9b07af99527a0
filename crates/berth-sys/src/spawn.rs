//! Starting a job or hook process: as its owner, in its directory, with its environment
//! and descriptors, in a session of its own with no controlling terminal (so it cannot
//! reach the terminal of whoever started berth, e.g. with `TIOCSTI`), with every signal at
//! its default and none blocked; optionally executing an opened descriptor, so that what
//! runs is the very file that was checked.
//!
//! `std::process::Command` forks when a child must change its identity, and a fork of a
//! tasker with many threads and a large address space costs more than the job it starts:
//! the copy of the page tables, a TLB shootdown on every core, copy-on-write faults in
//! both processes, and the copy torn down again at exec. This starts the child the way
//! glibc's `posix_spawn` does, with `clone(CLONE_VM | CLONE_VFORK)`: the child borrows
//! the parent's memory on a stack of its own, makes only raw system calls on data
//! prepared beforehand, and execs; the calling thread waits until it has. `posix_spawn`
//! itself cannot set groups, gid and uid, which is why this exists.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use crate::Identity;

/// Where one of the child's standard descriptors comes from.
pub enum Stdio<'a> {
    /// `/dev/null`.
    Null,
    /// A descriptor of the caller's (duplicated into the child; the caller keeps it).
    Fd(&'a dyn AsRawFd),
    /// A new pipe, whose reading end the caller gets in [`Child`].
    Piped,
    /// This process's own descriptor of the same number.
    Inherit,
}

/// What to start.
pub struct Spawn<'a> {
    /// The program: a path (with a `/`), or a name looked up in the `PATH` of `env` (or
    /// `/bin:/usr/bin` when it has none), as the child, from its directory.
    pub program: &'a OsStr,
    /// The arguments after the program name (`argv[1..]`); `argv[0]` is `program`.
    pub args: &'a [OsString],
    /// The whole environment.
    pub env: &'a [(OsString, OsString)],
    /// Who the child runs as; None keeps this process's identity.
    pub who: Option<&'a Identity>,
    /// The child's working directory.
    pub dir: &'a Path,
    /// Standard input, output and error.
    pub stdin: Stdio<'a>,
    /// Standard output.
    pub stdout: Stdio<'a>,
    /// Standard error.
    pub stderr: Stdio<'a>,
    /// Make the child's standard input (a pseudo-terminal of the job's own) the
    /// controlling terminal of its new session. Without it the session has none.
    pub terminal: bool,
    /// Execute this opened file (`execveat(fd, "", AT_EMPTY_PATH)`) instead of looking
    /// `program` up, which is then only `argv[0]`. A script's interpreter finds it as
    /// `/dev/fd/3`: the descriptor is the child's 3, left open across exec for that.
    pub exec_fd: Option<RawFd>,
    /// The cgroup the child starts in.
    pub cgroup: Option<Join>,
    /// The child's umask (None: this process's).
    pub umask: Option<u32>,
    /// Enter this opened directory (`fchdir`) rather than looking `dir` up again: for a
    /// root hook, the job's directory as its owner opened it.
    pub dir_fd: Option<RawFd>,
}

/// How a child joins a cgroup, so that every process it starts is tracked.
#[derive(Debug, Clone, Copy)]
pub enum Join {
    /// A cgroup v2 directory: the child is created in it (`clone3` with
    /// `CLONE_INTO_CGROUP`), which needs no migration; where the kernel cannot, the child
    /// writes `0` to its `cgroup.procs` before anything else.
    Dir(RawFd),
    /// A v1 `cgroup.procs`, open for writing: the child writes `0` to it first of all,
    /// while it is still root.
    Procs(RawFd),
}

/// A started child, leader of its own session and process group.
#[derive(Debug)]
pub struct Child {
    /// Its pid, also its process group and session id.
    pub pid: u32,
    /// The reading end of its standard output, when piped.
    pub stdout: Option<std::fs::File>,
    /// The reading end of its standard error, when piped.
    pub stderr: Option<std::fs::File>,
}

impl Child {
    /// Waits for the child to end and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waitpid on our own child, writing into a local.
            let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, 0) };
            if r >= 0 {
                return Ok(ExitStatus::from_raw(status));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn cstring(s: &[u8], what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} holds a NUL byte"),
        )
    })
}

/// The paths to try, in order, as `execvp` would.
fn candidates(program: &OsStr, env: &[(OsString, OsString)]) -> io::Result<Vec<CString>> {
    let p = program.as_bytes();
    if p.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the program name is empty",
        ));
    }
    if p.contains(&b'/') {
        return Ok(vec![cstring(p, "the program path")?]);
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_bytes())
        .unwrap_or(b"/bin:/usr/bin");
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut full = Vec::with_capacity(dir.len() + 1 + p.len());
            if dir.is_empty() {
                full.extend_from_slice(b"./");
            } else {
                full.extend_from_slice(dir);
                full.push(b'/');
            }
            full.extend_from_slice(p);
            cstring(&full, "a PATH entry")
        })
        .collect()
}

/// Everything the child reads, prepared before the clone so that it allocates nothing.
struct Prepared {
    candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    fds: [RawFd; 3],
    ids: Option<(Vec<libc::gid_t>, libc::gid_t, libc::uid_t)>,
    dir: CString,
    terminal: bool,
    /// The file to execute, at 3 or above; -1 to execute by path.
    exec_fd: RawFd,
    /// `cgroup.procs` of the cgroup to join by writing; -1 for none.
    cgroup: RawFd,
    /// The umask to set, if any.
    umask: Option<u32>,
    /// The directory to enter by descriptor, or -1.
    dir_fd: RawFd,
    /// An empty path for `execveat`.
    empty: CString,
    /// Written by the child when it fails before or at exec: the errno.
    err: libc::c_int,
    /// And the step that failed.
    step: Step,
}

/// The steps of the child, for the error message.
#[derive(Clone, Copy)]
enum Step {
    Exec,
    Cgroup,
    Group,
    Descriptors,
    Identity,
    Directory,
}

const STACK: usize = 64 * 1024;

/// Starts the child. Returns once it runs the program, or with the error that kept it
/// from doing so (the child is reaped then).
pub fn spawn(s: &Spawn<'_>) -> io::Result<Child> {
    let candidates = match s.exec_fd {
        Some(_) => Vec::new(),
        None => candidates(s.program, s.env)?,
    };
    let argv_c: Vec<CString> = std::iter::once(s.program.as_bytes())
        .chain(s.args.iter().map(|a| a.as_bytes()))
        .map(|a| cstring(a, "an argument"))
        .collect::<io::Result<_>>()?;
    let env_c: Vec<CString> = s
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = Vec::with_capacity(k.len() + 1 + v.len());
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv, "an environment variable")
        })
        .collect::<io::Result<_>>()?;
    let dir = cstring(s.dir.as_os_str().as_bytes(), "the directory")?;

    // The descriptors, each at 3 or above so that moving one onto 0, 1 or 2 in the child
    // cannot overwrite another before it is moved.
    let mut keep: Vec<OwnedFd> = Vec::new(); // closed when this returns
    let mut readers: [Option<OwnedFd>; 3] = [None, None, None];
    let mut fds = [-1; 3];
    for (i, how) in [&s.stdin, &s.stdout, &s.stderr].into_iter().enumerate() {
        let fd = match how {
            Stdio::Null => {
                let f = std::fs::OpenOptions::new()
                    .read(i == 0)
                    .write(i != 0)
                    .open("/dev/null")?;
                let fd = OwnedFd::from(f);
                let raw = fd.as_raw_fd();
                keep.push(fd);
                raw
            }
            Stdio::Fd(f) => f.as_raw_fd(),
            Stdio::Inherit => i as RawFd,
            Stdio::Piped => {
                let mut p = [0 as libc::c_int; 2];
                // SAFETY: pipe2 writes two new descriptors into p, which we then own.
                if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: both are new descriptors owned by nothing else.
                let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
                readers[i] = Some(r);
                let raw = w.as_raw_fd();
                keep.push(w);
                raw
            }
        };
        fds[i] = if fd < 3 {
            // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, which we then own.
            let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
            if d < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: d is new and ours.
            keep.push(unsafe { OwnedFd::from_raw_fd(d) });
            d
        } else {
            fd
        };
    }

    // The file to execute, at 3 or above for the same reason (the child moves it to 3).
    let exec_fd = match s.exec_fd {
        None => -1,
        Some(fd) if fd >= 3 => fd,
        Some(fd) => {
            // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, which we then own.
            let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
            if d < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: d is new and ours.
            keep.push(unsafe { OwnedFd::from_raw_fd(d) });
            d
        }
    };

    let mut prep = Prepared {
        argv: argv_c
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        envp: env_c
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        candidates,
        fds,
        ids: s.who.map(|w| (w.groups.clone(), w.gid, w.uid)),
        dir,
        terminal: s.terminal,
        exec_fd,
        cgroup: match s.cgroup {
            Some(Join::Procs(fd)) => fd,
            _ => -1,
        },
        umask: s.umask,
        dir_fd: s.dir_fd.unwrap_or(-1),
        empty: CString::default(),
        err: 0,
        step: Step::Exec,
    };
    // The child's stack: on this thread's own, which is idle until the child has exec'd.
    // Not zeroed, and allocated nowhere: a heap block here cost page faults and
    // mprotect calls on every start.
    let mut stack = std::mem::MaybeUninit::<[u8; STACK]>::uninit();

    // Block every signal for the clone, so that no handler of ours runs in the child
    // while it shares our memory; the child sets its own mask before it execs.
    // SAFETY: sigset_t is plain data, zero is a valid value.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigset operations on locals; pthread_sigmask on this thread.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the stack is ours and outlives the child's use of it (CLONE_VFORK: this
    // thread resumes only once the child has exec'd or exited); the top is 16-aligned.
    // `child` reads `prep` and writes only `prep.err`, and makes only raw system calls.
    let top = unsafe {
        let top = stack.as_mut_ptr().cast::<u8>().add(STACK);
        top.sub(top as usize % 16)
    };
    let prep_ptr: *mut libc::c_void = (&mut prep as *mut Prepared).cast();
    // Into a cgroup v2 directory: created there, which takes no write lock of the cgroup
    // hierarchy. Migrating a process (writing cgroup.procs) does, and that waits a whole
    // RCU grace period (10-20 ms) when none was taken lately: most jobs, on a quiet host.
    let mut pid: libc::c_long = -1;
    let mut procs_opened: Option<OwnedFd> = None;
    if let Some(Join::Dir(dir)) = s.cgroup {
        let base = stack.as_mut_ptr() as usize;
        let args = clone3::Args {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | clone3::CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            stack: base as u64,
            stack_size: (top as usize - base) as u64,
            cgroup: dir as u64,
            ..Default::default()
        };
        // SAFETY: as for clone above: the child runs `child(prep)` on our idle stack and
        // never returns into this function.
        pid = unsafe { clone3::run(&args, child, prep_ptr) };
        if pid < 0 {
            // A kernel without clone3 or CLONE_INTO_CGROUP: the child joins by writing.
            // SAFETY: openat on the caller's directory descriptor; the fd is then ours.
            let fd = unsafe {
                libc::openat(
                    dir,
                    c"cgroup.procs".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                // SAFETY: restores this thread's mask saved above.
                unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot join the job's cgroup: {e}"),
                ));
            }
            prep.cgroup = fd;
            // SAFETY: fd is new and ours.
            procs_opened = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    if pid < 0 {
        // SAFETY: as above.
        pid = unsafe {
            libc::clone(
                child,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                prep_ptr,
            )
        } as libc::c_long;
    }
    drop(procs_opened);
    let clone_err = io::Error::last_os_error();
    // SAFETY: restores this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_err);
    }
    // SAFETY: the child has exec'd or exited (CLONE_VFORK), so it no longer writes.
    let (err, step) = unsafe { (std::ptr::read_volatile(&prep.err), prep.step) };
    if err != 0 {
        let mut c = Child {
            pid: pid as u32,
            stdout: None,
            stderr: None,
        };
        let _ = c.wait();
        let os = io::Error::from_raw_os_error(err);
        let what = match step {
            Step::Exec => return Err(os),
            Step::Cgroup => "cannot join the job's cgroup".to_string(),
            Step::Group => "cannot make a session".to_string(),
            Step::Descriptors => "cannot set up standard input and output".to_string(),
            Step::Identity => match s.who {
                Some(w) => format!("cannot become {} (uid {})", w.name, w.uid),
                None => "cannot set the identity".to_string(),
            },
            Step::Directory => format!("cannot enter the directory {}", s.dir.display()),
        };
        return Err(io::Error::new(os.kind(), format!("{what}: {os}")));
    }
    drop(keep);
    let [_, out, errp] = readers;
    Ok(Child {
        pid: pid as u32,
        stdout: out.map(std::fs::File::from),
        stderr: errp.map(std::fs::File::from),
    })
}

/// Says why the child failed, to the parent that waits for it, and ends the child.
///
/// # Safety
/// Only in the child, with `p` the parent's Prepared.
unsafe fn fail(p: *mut Prepared, step: Step, e: libc::c_int) -> ! {
    std::ptr::write_volatile(&mut (*p).step, step);
    std::ptr::write_volatile(&mut (*p).err, e.max(1));
    libc::syscall(libc::SYS_exit_group, 127);
    libc::_exit(127)
}

/// The kernel's `struct sigaction` for `rt_sigaction` (x86_64 and aarch64 layout).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// The child, between clone and exec. Raw system calls only (`libc::syscall` and the
/// plain wrappers that are one system call each): glibc's `setuid` family would signal
/// every thread of the parent, whose memory this shares.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: arg is the Prepared the parent passed, alive and not touched by the parent
    // until this child execs or exits.
    unsafe {
        let p = arg as *mut Prepared;
        let errno = || *libc::__errno_location();
        // Every signal at its default (std ignores SIGPIPE; a job must not inherit that).
        let dfl = KernelSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
        // Into the job's cgroup before anything else, so that all it starts is tracked.
        if (*p).cgroup >= 0
            && libc::syscall(libc::SYS_write, (*p).cgroup, c"0".as_ptr(), 1usize) != 1
        {
            fail(p, Step::Cgroup, errno());
        }
        // A session of its own, always: in the tasker's session a job could open
        // /dev/tty, the terminal berth up was started from, and push input into root's
        // shell with TIOCSTI. A new session has no controlling terminal.
        if libc::syscall(libc::SYS_setsid) < 0 {
            fail(p, Step::Group, errno());
        }
        for (target, &fd) in (*p).fds.iter().enumerate() {
            if libc::syscall(libc::SYS_dup2, fd, target) < 0 {
                fail(p, Step::Descriptors, errno());
            }
        }
        if (*p).terminal && libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSCTTY, 0) != 0 {
            fail(p, Step::Group, errno());
        }
        if let Some((groups, gid, uid)) = &(*p).ids {
            if libc::syscall(libc::SYS_getuid) == 0 || libc::syscall(libc::SYS_geteuid) == 0 {
                if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                    || libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) != 0
                    || libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) != 0
                {
                    fail(p, Step::Identity, errno());
                }
                // Never go on as root by mistake: a job or user hook must not be able to
                // get root back.
                if *uid != 0 && libc::syscall(libc::SYS_setuid, 0) == 0 {
                    fail(p, Step::Identity, libc::EPERM);
                }
            }
        }
        if let Some(m) = (*p).umask {
            libc::syscall(libc::SYS_umask, m & 0o777);
        }
        let entered = if (*p).dir_fd >= 0 {
            libc::syscall(libc::SYS_fchdir, (*p).dir_fd)
        } else {
            libc::syscall(libc::SYS_chdir, (*p).dir.as_ptr())
        };
        if entered != 0 {
            fail(p, Step::Directory, errno());
        }
        // Descriptors leaked by a library (without close-on-exec) do not reach the child.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32);
        // The checked file at 3, open across exec: a script's interpreter reads it from
        // /dev/fd/3 (the kernel names it so).
        let exec_fd = (*p).exec_fd;
        if exec_fd >= 0 {
            let r = if exec_fd == 3 {
                libc::syscall(libc::SYS_fcntl, 3, libc::F_SETFD, 0)
            } else {
                libc::syscall(libc::SYS_dup2, exec_fd, 3)
            };
            if r < 0 {
                fail(p, Step::Descriptors, errno());
            }
        }
        // The mask last: none blocked, or a stop's SIGTERM would never reach the child.
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        if exec_fd >= 0 {
            libc::syscall(
                libc::SYS_execveat,
                3,
                (*p).empty.as_ptr(),
                (*p).argv.as_ptr(),
                (*p).envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            fail(p, Step::Exec, errno());
        }
        let mut seen = libc::ENOENT;
        for c in &(*p).candidates {
            libc::syscall(
                libc::SYS_execve,
                c.as_ptr(),
                (*p).argv.as_ptr(),
                (*p).envp.as_ptr(),
            );
            match errno() {
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {}
                libc::EACCES => seen = libc::EACCES,
                e => fail(p, Step::Exec, e),
            }
        }
        fail(p, Step::Exec, seen)
    }
}

/// `clone3` with a child that runs a function on a stack of its own, as glibc's `clone`
/// does for `clone` (glibc has no `clone3` of its own): a few instructions that call the
/// function in the child and exit with what it returns.
mod clone3 {
    /// `struct clone_args` of the kernel (its size 88: `CLONE_ARGS_SIZE_VER2`).
    #[repr(C)]
    #[derive(Default)]
    pub struct Args {
        pub flags: u64,
        pub pidfd: u64,
        pub child_tid: u64,
        pub parent_tid: u64,
        pub exit_signal: u64,
        pub stack: u64,
        pub stack_size: u64,
        pub tls: u64,
        pub set_tid: u64,
        pub set_tid_size: u64,
        pub cgroup: u64,
    }

    pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

    type ChildFn = extern "C" fn(*mut libc::c_void) -> libc::c_int;

    /// Returns the child's pid, or -1 when the kernel refused (the caller falls back).
    ///
    /// # Safety
    /// As `libc::clone`: `args.stack` is a stack for the child that outlives its use, and
    /// with `CLONE_VM` the child shares this memory; `f` never returns into the caller.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn run(args: &Args, f: ChildFn, arg: *mut libc::c_void) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the caller's contract; the child's path never leaves this block.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                // The child, on its new stack (16-aligned: `call` leaves it as the ABI wants).
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "mov edi, eax",
                "mov eax, 60", // exit
                "syscall",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") args as *const Args,
                in("rsi") std::mem::size_of::<Args>(),
                in("r12") arg,
                in("r13") f,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            -1
        } else {
            ret
        }
    }

    /// As for x86_64.
    ///
    /// # Safety
    /// As for x86_64.
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn run(args: &Args, f: ChildFn, arg: *mut libc::c_void) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the caller's contract; the child's path never leaves this block.
        unsafe {
            std::arch::asm!(
                "svc #0",
                "cbnz x0, 2f",
                "mov x29, xzr",
                "mov x0, x9",
                "blr x10",
                "mov x8, #93", // exit
                "svc #0",
                "brk #0",
                "2:",
                inlateout("x0") args as *const Args as libc::c_long => ret,
                in("x1") std::mem::size_of::<Args>(),
                in("x8") libc::SYS_clone3,
                in("x9") arg,
                in("x10") f,
                options(nostack),
            );
        }
        if ret < 0 {
            -1
        } else {
            ret
        }
    }

    /// Elsewhere the caller falls back to `clone` and a write of `cgroup.procs`.
    ///
    /// # Safety
    /// None needed: it does nothing.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub unsafe fn run(_: &Args, _: ChildFn, _: *mut libc::c_void) -> libc::c_long {
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn env() -> Vec<(OsString, OsString)> {
        vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("X".into(), "1".into()),
        ]
    }

    /// Runs `program ARGS` as `who` in /, and returns it ended, with its standard output.
    fn output(program: &str, args: &[&str], who: Option<&Identity>) -> (Child, ExitStatus, String) {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let mut c = spawn(&Spawn {
            program: program.as_ref(),
            args: &args,
            env: &env(),
            who,
            dir: Path::new("/"),
            stdin: Stdio::Null,
            stdout: Stdio::Piped,
            stderr: Stdio::Null,
            terminal: false,
            exec_fd: None,
            cgroup: None,
            umask: None,
            dir_fd: None,
        })
        .unwrap();
        let mut o = String::new();
        c.stdout.take().unwrap().read_to_string(&mut o).unwrap();
        let status = c.wait().unwrap();
        (c, status, o)
    }

    #[test]
    fn runs_with_the_given_environment_directory_and_pipes() {
        let mut c = spawn(&Spawn {
            program: "sh".as_ref(),
            args: &["-c".into(), "echo $X $(pwd); echo err >&2; exit 3".into()],
            env: &env(),
            who: None,
            dir: Path::new("/tmp"),
            stdin: Stdio::Null,
            stdout: Stdio::Piped,
            stderr: Stdio::Piped,
            terminal: false,
            exec_fd: None,
            cgroup: None,
            umask: None,
            dir_fd: None,
        })
        .unwrap();
        let (mut o, mut e) = (String::new(), String::new());
        c.stdout.take().unwrap().read_to_string(&mut o).unwrap();
        c.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        assert_eq!(c.wait().unwrap().code(), Some(3));
        assert_eq!(o, "1 /tmp\n");
        assert_eq!(e, "err\n");
    }

    #[test]
    fn a_missing_program_or_directory_is_an_error_not_a_child() {
        let s = |program: &'static str, dir: &'static str| {
            spawn(&Spawn {
                program: program.as_ref(),
                args: &[],
                env: &env(),
                who: None,
                dir: Path::new(dir),
                stdin: Stdio::Null,
                stdout: Stdio::Null,
                stderr: Stdio::Null,
                terminal: false,
                exec_fd: None,
                cgroup: None,
                umask: None,
                dir_fd: None,
            })
        };
        assert_eq!(
            s("no-such-program-here", "/").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            s("/no/such/path", "/").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let e = s("true", "/no/such/dir").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with("cannot enter the directory /no/such/dir: "),
            "{e}"
        );
        assert!(s("true", "/").unwrap().wait().unwrap().success());
    }

    #[test]
    fn the_child_leads_its_own_group_with_no_signal_blocked_or_ignored() {
        let _blocked = crate::block_signals(&[libc::SIGTERM, libc::SIGUSR1]);
        // grep itself, not a shell: a shell blocks every signal while it waits.
        let (c, _, o) = output(
            "grep",
            &[
                "-E",
                "^(Pid|NSpgid|NSsid|SigBlk|SigIgn):",
                "/proc/self/status",
            ],
            None,
        );
        let field = |k: &str| {
            o.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {k} in {o}"))
                .to_string()
        };
        assert_eq!(field("SigBlk:"), "0000000000000000", "{o}");
        assert_eq!(field("SigIgn:"), "0000000000000000", "{o}");
        assert_eq!(field("Pid:"), c.pid.to_string(), "{o}");
        assert_eq!(
            field("NSpgid:"),
            c.pid.to_string(),
            "the child leads its group: {o}"
        );
        assert_eq!(
            field("NSsid:"),
            c.pid.to_string(),
            "the child leads its session: {o}"
        );
    }

    #[test]
    fn the_child_has_no_controlling_terminal() {
        // /dev/tty of a process without a controlling terminal fails with ENXIO, whether
        // or not the test itself runs on a terminal.
        let (_, status, o) = output(
            "/bin/sh",
            &[
                "-c",
                "if (: </dev/tty) 2>/dev/null; then echo tty; else echo none; fi",
            ],
            None,
        );
        assert!(status.success());
        assert_eq!(o, "none\n");
    }

    #[test]
    #[ignore = "needs root to make a cgroup: .ci/run runs it with --include-ignored"]
    fn the_child_starts_in_the_cgroup_it_is_given() {
        assert_eq!(crate::euid(), 0, "run as root");
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .find(|r| Path::new(r).join("cgroup.subtree_control").exists())
            .expect("a cgroup v2 hierarchy");
        let name = format!("berth-spawn-test-{}", std::process::id());
        let dir = Path::new(root).join(&name);
        std::fs::create_dir(&dir).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        let args: Vec<OsString> = vec!["/proc/self/cgroup".into()];
        let mut c = spawn(&Spawn {
            program: "cat".as_ref(),
            args: &args,
            env: &env(),
            who: None,
            dir: Path::new("/"),
            stdin: Stdio::Null,
            stdout: Stdio::Piped,
            stderr: Stdio::Null,
            terminal: false,
            exec_fd: None,
            cgroup: Some(Join::Dir(fd.as_raw_fd())),
            umask: None,
            dir_fd: None,
        })
        .unwrap();
        let mut o = String::new();
        c.stdout.take().unwrap().read_to_string(&mut o).unwrap();
        assert!(c.wait().unwrap().success());
        std::fs::remove_dir(&dir).unwrap();
        assert!(
            o.lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&name)),
            "{o}"
        );
    }

    #[test]
    fn executes_the_opened_file_not_the_path() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("hook.sh");
        std::fs::write(&script, "#!/bin/sh\necho checked \"$0\" \"$@\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let f = std::fs::File::open(&script).unwrap();
        // The path now names another program: what runs is still the opened file.
        std::fs::remove_file(&script).unwrap();
        std::fs::write(&script, "#!/bin/sh\necho swapped\n").unwrap();
        let args: Vec<OsString> = vec!["a b".into()];
        let mut c = spawn(&Spawn {
            program: script.as_os_str(),
            args: &args,
            env: &env(),
            who: None,
            dir: Path::new("/"),
            stdin: Stdio::Null,
            stdout: Stdio::Piped,
            stderr: Stdio::Null,
            terminal: false,
            exec_fd: Some(f.as_raw_fd()),
            cgroup: None,
            umask: None,
            dir_fd: None,
        })
        .unwrap();
        let mut o = String::new();
        c.stdout.take().unwrap().read_to_string(&mut o).unwrap();
        assert!(c.wait().unwrap().success());
        assert_eq!(o, "checked /dev/fd/3 a b\n");
    }

    #[test]
    #[ignore = "needs root: .ci/run runs it with --include-ignored"]
    fn runs_as_the_given_user_with_its_groups_only() {
        assert_eq!(crate::euid(), 0, "run as root");
        let nobody = crate::identity_by_name("nobody").unwrap();
        let (_, status, o) = output(
            "/bin/sh",
            &["-c", "id -u; id -g; id -G; grep ^CapEff /proc/$$/status"],
            Some(&nobody),
        );
        assert!(status.success());
        let groups: Vec<String> = nobody.groups.iter().map(|g| g.to_string()).collect();
        assert_eq!(
            o,
            format!(
                "{}\n{}\n{}\nCapEff:\t0000000000000000\n",
                nobody.uid,
                nobody.gid,
                groups.join(" ")
            )
        );
    }
}
