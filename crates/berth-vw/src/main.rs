//! berth-vw: the job wrapper that runs inside a container (SPEC §6).
//!
//! `berth-vw CMD ARGS...` runs CMD in a process group of its own, forwards SIGTERM, SIGINT,
//! SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to that group, reaps every orphan when it is
//! process 1, and writes the command's exit status to the file named by `BERTH_VW_STATUS`
//! (a file in the job's directory, which the enter hook mounts). It is linked statically and
//! reads nothing from the image, so it runs in an image that holds only a static busybox.
//!
//! The status file holds `started PID` once the command is running, then `exit N` or
//! `signal N`; the tasker reads the last line. The wrapper's own exit code is N, or 128+N
//! for a signal, as a shell would report it.
//!
//! A command killed by SIGKILL while the kernel's count of OOM kills in the wrapper's own
//! memory cgroup (the container's: v2 `memory.events`, v1 `memory.oom_control`) went up
//! was killed for memory: the line is then `signal 9 oom BYTES`, BYTES the cgroup's limit
//! (`-` when it has none).

// A static wrapper that forks, waits and forwards signals by system calls of its own.
#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() || args[0] == "-h" || args[0] == "--help" {
        eprintln!("usage: berth-vw CMD [ARGS...]\n\nruns CMD for a berth job inside a container; BERTH_VW_STATUS names the file that receives its exit status");
        std::process::exit(if args.is_empty() { 2 } else { 0 });
    }
    if args[0] == "--enter" {
        std::process::exit(enter(&args[1..]));
    }
    // Empty: no report (`berth exec` runs the wrapper where the job's own reports).
    let status_path = std::env::var_os("BERTH_VW_STATUS").filter(|p| !p.is_empty());
    std::process::exit(run(&args, status_path.as_deref()));
}

fn report(path: Option<&std::ffi::OsStr>, line: &str, truncate: bool) {
    let Some(p) = path else { return };
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .append(!truncate)
        .mode(0o600)
        // A job may replace the file with a FIFO: never wait for a reader.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p);
    match f {
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(e) => eprintln!(
            "berth-vw: cannot write the status file {}: {e}",
            std::path::Path::new(p).display()
        ),
    }
}

fn cstring(s: &OsString) -> CString {
    CString::new(s.clone().into_vec()).unwrap_or_else(|_| {
        eprintln!("berth-vw: an argument holds a NUL byte");
        std::process::exit(2)
    })
}

fn run(args: &[OsString], status_path: Option<&std::ffi::OsStr>) -> i32 {
    let argv: Vec<CString> = args.iter().map(cstring).collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let is_init = std::process::id() == 1;

    // Block the signals we handle before forking, so none is lost between fork and the
    // sigwaitinfo loop; the child unblocks them before exec.
    // SAFETY: sigset_t is plain data; these calls only fill and install it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigset operations on locals; the mask of this thread.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
    }

    // An interactive job: when the terminal on stdin is ours and we are in its foreground,
    // the command's new group takes the foreground, or it would be stopped (SIGTTIN) as
    // soon as it read from its terminal. Asked before the fork: the parent's setpgid may
    // come first. SIGTTOU is blocked for the child's call, as a new group is a background
    // one until then.
    // SAFETY: tcgetpgrp and getpgrp only read.
    let foreground = unsafe { libc::tcgetpgrp(0) == libc::getpgrp() };
    // SAFETY: the child only calls async-signal-safe functions (setpgid,
    // tcsetpgrp, sigprocmask, execvp, write, _exit) before exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("berth-vw: fork: {}", std::io::Error::last_os_error());
        report(status_path, "exit 126\n", true);
        return 126;
    }
    if pid == 0 {
        // SAFETY: see the fork above.
        unsafe {
            libc::setpgid(0, 0);
            if foreground {
                let mut ttou: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut ttou);
                libc::sigaddset(&mut ttou, libc::SIGTTOU);
                libc::sigprocmask(libc::SIG_BLOCK, &ttou, std::ptr::null_mut());
                libc::tcsetpgrp(0, libc::getpid());
            }
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            let err = *libc::__errno_location();
            let msg = b"berth-vw: cannot run the job command: ";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            let name = args[0].as_bytes();
            libc::write(2, name.as_ptr().cast(), name.len());
            let why: &[u8] = if err == libc::ENOENT {
                b": no such file in the container\n"
            } else if err == libc::EACCES {
                b": permission denied\n"
            } else {
                b": exec failed\n"
            };
            libc::write(2, why.as_ptr().cast(), why.len());
            libc::_exit(if err == libc::ENOENT { 127 } else { 126 });
        }
    }
    // Also set it from the parent, so a signal forwarded right away finds the group.
    // SAFETY: setpgid on our own child.
    unsafe { libc::setpgid(pid, pid) };
    report(status_path, &format!("started {pid}\n"), true);
    let memory = Memory::find();
    let ooms_before = memory.as_ref().and_then(Memory::oom_kills);

    loop {
        // SAFETY: siginfo_t is plain data filled by the kernel.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: set and info are locals; the call fills info.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if sig < 0 {
            continue; // EINTR
        }
        if sig != libc::SIGCHLD {
            // SAFETY: signalling our child's group (or the child, if the group is gone).
            unsafe {
                if libc::kill(-pid, sig) < 0 {
                    libc::kill(pid, sig);
                }
            }
            continue;
        }
        // Reap everything that has ended: the command, and any orphan when we are init.
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out pointer.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
            if r == pid {
                let (line, code) = if libc::WIFEXITED(status) {
                    let c = libc::WEXITSTATUS(status);
                    (format!("exit {c}\n"), c)
                } else {
                    let s = libc::WTERMSIG(status);
                    let oom = s == libc::SIGKILL
                        && memory.as_ref().is_some_and(
                            |m| matches!((ooms_before, m.oom_kills()), (Some(a), Some(b)) if b > a),
                        );
                    if oom {
                        let limit = memory
                            .as_ref()
                            .and_then(Memory::limit)
                            .map_or("-".to_string(), |b| b.to_string());
                        (format!("signal {s} oom {limit}\n"), 128 + s)
                    } else {
                        (format!("signal {s}\n"), 128 + s)
                    }
                };
                report(status_path, &line, false);
                if is_init {
                    // As process 1, our exit ends the namespace; give the group the same
                    // chance to end cleanly that a stop would.
                    // SAFETY: signalling the command's group.
                    unsafe { libc::kill(-pid, libc::SIGTERM) };
                }
                return code;
            }
        }
    }
}

/// The memory cgroup the wrapper (and so the command) is in, as seen from inside its
/// container: where the kernel counts its OOM kills, and its limit.
struct Memory {
    /// `memory.events` (v2) or `memory.oom_control` (v1): both have `oom_kill N`.
    events: std::path::PathBuf,
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1).
    limit: std::path::PathBuf,
}

impl Memory {
    /// The first of the places the cgroup may be mounted that has the files: its own
    /// path below the mount (no cgroup namespace), or the mount's root (a container's
    /// cgroup mounted as the root, or a cgroup namespace).
    fn find() -> Option<Memory> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut candidates: Vec<(String, &str, &str)> = Vec::new();
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(id), Some(ctl), Some(path)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let path = if path == "/" { "" } else { path };
            if ctl.split(',').any(|c| c == "memory") {
                let base = "/sys/fs/cgroup/memory";
                candidates.push((
                    format!("{base}{path}"),
                    "memory.oom_control",
                    "memory.limit_in_bytes",
                ));
                candidates.push((
                    base.to_string(),
                    "memory.oom_control",
                    "memory.limit_in_bytes",
                ));
            } else if id == "0" && ctl.is_empty() {
                for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                    candidates.push((format!("{base}{path}"), "memory.events", "memory.max"));
                    candidates.push((base.to_string(), "memory.events", "memory.max"));
                }
            }
        }
        // Only the wrapper's own cgroup (its processes list it): a mount's root may be
        // the host's, where every OOM kill of the host is counted.
        let me = std::process::id().to_string();
        candidates.into_iter().find_map(|(dir, events, limit)| {
            let procs = std::fs::read_to_string(std::path::Path::new(&dir).join("cgroup.procs"))
                .unwrap_or_default();
            if !procs.lines().any(|p| p.trim() == me) {
                return None;
            }
            let m = Memory {
                events: std::path::Path::new(&dir).join(events),
                limit: std::path::Path::new(&dir).join(limit),
            };
            m.oom_kills().map(|_| m)
        })
    }

    /// How many processes the kernel has killed in it for memory.
    fn oom_kills(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.events).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Its limit in bytes; None when it has none.
    fn limit(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.limit).ok()?;
        let n: u64 = text.trim().parse().ok()?; // v2 says "max"
        (n < 1 << 62).then_some(n)
    }
}

/// `berth-vw --enter PID DIR CMD ARGS...`: runs CMD in the namespaces of process PID
/// (user, mount, pid, ipc, uts), in DIR, and exits with its status: what an exec hook
/// needs to enter a sandbox such as bubblewrap's, whose namespaces belong to the parent
/// of the user namespace its process is in (which `nsenter` cannot enter in that order).
fn enter(args: &[OsString]) -> i32 {
    let fail = |what: &str| -> i32 {
        eprintln!(
            "berth-vw --enter: {what}: {}",
            std::io::Error::last_os_error()
        );
        126
    };
    if args.len() < 3 {
        eprintln!("usage: berth-vw --enter PID DIR CMD [ARGS...]");
        return 2;
    }
    let Some(pid) = args[0].to_str().and_then(|p| p.parse::<u32>().ok()) else {
        eprintln!("berth-vw --enter: {:?} is not a process id", args[0]);
        return 2;
    };
    // All opened before any is entered: /proc is another once the mounts are.
    let open = |ns: &str| -> libc::c_int {
        let path = CString::new(format!("/proc/{pid}/ns/{ns}")).expect("no NUL");
        // SAFETY: a valid path; the descriptor is ours.
        unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
    };
    let user = open("user");
    if user < 0 {
        return fail(&format!("/proc/{pid}/ns/user"));
    }
    let others: Vec<(libc::c_int, libc::c_int, &str)> = [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
    ]
    .into_iter()
    .map(|(n, f)| (open(n), f, n))
    .collect();
    if let Some((_, _, n)) = others.iter().find(|(fd, _, _)| *fd < 0) {
        return fail(&format!("/proc/{pid}/ns/{n}"));
    }
    // The parent of its user namespace first (NS_GET_PARENT): the other namespaces are
    // that one's; then they; then its own.
    const NS_GET_PARENT: libc::c_ulong = 0xb702;
    // SAFETY: an ioctl on a namespace descriptor of ours.
    let parent = unsafe { libc::ioctl(user, NS_GET_PARENT) };
    if parent >= 0 {
        // SAFETY: setns with a namespace descriptor of ours. Failing (it is ours already),
        // the entries below say what is missing.
        unsafe { libc::setns(parent, libc::CLONE_NEWUSER) };
    }
    for (fd, flag, n) in &others {
        // SAFETY: as above.
        if unsafe { libc::setns(*fd, *flag) } < 0 {
            return fail(&format!("entering the {n} namespace of process {pid}"));
        }
    }
    // SAFETY: as above; EINVAL: in it already.
    if unsafe { libc::setns(user, libc::CLONE_NEWUSER) } < 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
    {
        return fail(&format!("entering the user namespace of process {pid}"));
    }
    let dir = cstring(&args[1]);
    // SAFETY: a valid path.
    if unsafe { libc::chdir(dir.as_ptr()) } < 0 {
        return fail(&format!("{:?}", args[1]));
    }
    // The pid namespace is the children's: the command runs in a child.
    let argv: Vec<CString> = args[2..].iter().map(cstring).collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: the child only execs or exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return fail("fork");
    }
    if child == 0 {
        // SAFETY: a NULL-terminated argv of valid strings.
        unsafe {
            libc::execvp(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return fail("waitpid");
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}
