//! A job's log: a file opened as the job's owner, or this process's terminal. Hook output
//! is copied in line by line, each line marked with the hook's name.

use berth_sys::spawn::Stdio;
use berth_sys::{self as sys, Identity};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Where a job's output goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogTarget {
    /// A file, opened for appending as the job's owner.
    File(PathBuf),
    /// The standard output and error of this process (`berth container try`).
    Terminal,
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogTarget::File(p) => write!(f, "{}", p.display()),
            LogTarget::Terminal => write!(f, "(the terminal)"),
        }
    }
}

/// An open job log.
#[derive(Debug)]
pub enum Sink {
    /// Appends to a file.
    File(File),
    /// Writes to this process's standard output and error.
    Terminal,
}

impl Sink {
    /// Opens a log target. A file is opened as `owner`, with O_NOFOLLOW, so that a job
    /// cannot make root write through a symbolic link.
    pub fn open(target: &LogTarget, owner: &Identity) -> io::Result<Sink> {
        Sink::open_with_umask(target, owner, 0o022)
    }

    /// Opens a log target; a file that is new gets the mode the owner's `umask` gives.
    pub fn open_with_umask(target: &LogTarget, owner: &Identity, umask: u32) -> io::Result<Sink> {
        match target {
            LogTarget::Terminal => Ok(Sink::Terminal),
            LogTarget::File(p) => {
                let f = sys::as_user(owner, || open_log(p, umask))?;
                Ok(Sink::File(f))
            }
        }
    }

    /// Another handle on the log file (None for the terminal).
    pub fn file(&self) -> Option<File> {
        match self {
            Sink::File(f) => f.try_clone().ok(),
            Sink::Terminal => None,
        }
    }

    /// Writes one line from berth itself, marked `[berth]`.
    pub fn note(&self, line: &str) {
        self.write_marked("berth", line.as_bytes(), true);
    }

    fn write_marked(&self, mark: &str, line: &[u8], err: bool) {
        let mut buf = Vec::with_capacity(line.len() + mark.len() + 4);
        buf.push(b'[');
        buf.extend_from_slice(mark.as_bytes());
        buf.extend_from_slice(b"] ");
        buf.extend_from_slice(line);
        if !buf.ends_with(b"\n") {
            buf.push(b'\n');
        }
        // One write per line, so that lines from several hooks never interleave.
        let _ = match self {
            Sink::File(f) => (&*f).write_all(&buf),
            Sink::Terminal if err => io::stderr().lock().write_all(&buf),
            Sink::Terminal => io::stdout().lock().write_all(&buf),
        };
    }

    /// Standard output and error for a process that writes to the log unmarked (the
    /// enter hook, whose output is the job's own).
    pub fn direct(&self) -> (Stdio<'_>, Stdio<'_>) {
        match self {
            Sink::File(f) => (Stdio::Fd(f), Stdio::Fd(f)),
            Sink::Terminal => (Stdio::Inherit, Stdio::Inherit),
        }
    }
}

/// Opens a job's log for appending; a new one gets mode 0666 less the owner's umask
/// exactly (set after creation: the tasker's own umask would mask it further).
fn open_log(p: &Path, umask: u32) -> io::Result<File> {
    let mode = 0o666 & !umask & 0o777;
    let mut o = std::fs::OpenOptions::new();
    o.append(true).create_new(true).mode(mode);
    match open_regular(&mut o, p) {
        Ok(f) => {
            // Only when this process's umask took bits the owner's leaves: one system
            // call per job saved in the usual case (both 022).
            static OWN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
            let own = *OWN.get_or_init(sys::current_umask);
            if mode & own != 0 {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let mut o = std::fs::OpenOptions::new();
            o.append(true);
            open_regular(&mut o, p)
        }
        Err(e) => Err(e),
    }
}

/// Opens a file on a user's behalf: never through a symbolic link at its end, never
/// blocking (a FIFO would hold the tasker's thread in `open` until someone opened its other
/// end), and only a regular file; a FIFO, socket or device is refused with what it is.
pub(crate) fn open_regular(o: &mut std::fs::OpenOptions, p: &Path) -> io::Result<File> {
    use std::os::unix::fs::FileTypeExt;
    let f = match o
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(p)
    {
        Ok(f) => f,
        // Opened for writing without blocking, a FIFO with no reader says ENXIO.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                "{}: is not a regular file (a FIFO); give a path to a regular file or a new one",
                p.display()
            ),
            ))
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
    };
    let ft = f.metadata()?.file_type();
    if ft.is_file() && sys::on_kernel_fs(&f) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: is a file of the kernel's (/proc, /sys), not a regular file; give a path to a regular file",
                p.display()
            ),
        ));
    }
    if !ft.is_file() {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "a device"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: is not a regular file ({what}); give a path to a regular file or a new one",
                p.display()
            ),
        ));
    }
    Ok(f)
}

/// Copies a hook's output into the log, marking each line. `finish` waits for the copy
/// to end, but not forever: a daemon that a hook started may hold its pipe open.
pub struct Pump {
    done: mpsc::Receiver<()>,
    count: usize,
}

impl Pump {
    /// Starts copying `out` and `err` into `sink`, marked with `mark`.
    pub fn start(
        sink: &std::sync::Arc<Sink>,
        mark: &str,
        out: impl Read + Send + 'static,
        err: impl Read + Send + 'static,
    ) -> Pump {
        let (tx, done) = mpsc::channel();
        let spawn = |r: Box<dyn Read + Send>, is_err: bool| {
            let sink = sink.clone();
            let mark = mark.to_string();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(r);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => sink.write_marked(&mark, &line, is_err),
                    }
                }
                let _ = tx.send(());
            });
        };
        spawn(Box::new(out), false);
        spawn(Box::new(err), true);
        Pump { done, count: 2 }
    }

    /// Waits up to `limit` for both copies to end.
    pub fn finish(self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        for _ in 0..self.count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.done.recv_timeout(left).is_err() {
                break;
            }
        }
    }
}
