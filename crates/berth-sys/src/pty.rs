//! Terminals: a pseudo-terminal for an interactive job, the size of the user's, and raw
//! mode on it while its keys go to the job.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A new pseudo-terminal of `rows` by `cols`: (master, slave), both close-on-exec.
pub fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors, which we then own; the name buffer and
    // termios are not asked for.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors owned by nothing else.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&m, &s] {
        // SAFETY: F_SETFD on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((m, s))
}

/// The size of the terminal on `fd` (rows, cols), if it is one.
pub fn window_size(fd: &impl AsRawFd) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes a winsize into a local.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above: the ioctl writes one winsize into ws.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sets the size of the terminal on `fd`; the kernel tells its foreground group
/// (SIGWINCH).
pub fn set_window_size(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a local.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal on a descriptor in raw mode (no echo, no line editing, no signals from
/// keys: ^C goes to the job), until dropped.
pub struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode.
    pub fn enable(fd: &impl AsRawFd) -> io::Result<RawMode> {
        let fd = fd.as_raw_fd();
        // SAFETY: tcgetattr/tcsetattr on a descriptor the caller keeps open, with locals.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in enable, on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_has_the_size_it_was_made_with() {
        let (m, s) = openpty(33, 111).unwrap();
        assert_eq!(window_size(&s), Some((33, 111)));
        assert_eq!(window_size(&m), Some((33, 111)));
        set_window_size(&m, 40, 120).unwrap();
        assert_eq!(window_size(&s), Some((40, 120)));
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(window_size(&null), None);
        let raw = RawMode::enable(&s).unwrap();
        drop(raw);
    }
}
