//! Opening a file by walking its path one component at a time from `/`, recording the
//! owner and mode of every directory and symbolic link passed through, so that a caller
//! can tell whether anyone but root could have changed what the path leads to.
//!
//! Each step is `openat(parent, name, O_PATH | O_NOFOLLOW)` on a descriptor of the step
//! before, so what is recorded is what was passed through, and the file at the end is
//! opened from its directory's descriptor: no second lookup of the path by name.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What one step of a walk passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// The path of this step as walked (symbolic links followed).
    pub path: PathBuf,
    /// A directory (else a symbolic link).
    pub dir: bool,
    /// Its owner.
    pub uid: u32,
    /// Its mode (permission bits and sticky bit).
    pub mode: u32,
}

/// The file a walk ended at, and what it passed through to get there.
#[derive(Debug)]
pub struct Walked {
    /// The file, opened for reading (`O_NONBLOCK`, so a FIFO does not block; close on exec).
    pub file: File,
    /// The directories and symbolic links passed through, in order, `/` first.
    pub passed: Vec<Passed>,
}

/// Why a walk did not end at a file.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A system call failed (a missing component, too many links, a non-directory).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The path leads to something other than a regular file; it was not opened.
    #[error("is not a regular file ({0})")]
    NotRegular(&'static str),
    /// The file was replaced between its last two looks.
    #[error("{0}: replaced while it was opened; try again")]
    Replaced(PathBuf),
}

/// The most symbolic links a walk follows, as the kernel's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

fn stat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: fstat writes into a zeroed local stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn open_at(dir: &OwnedFd, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))?;
    // SAFETY: openat on an open directory descriptor and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_link(link: &OwnedFd) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat on an O_PATH descriptor of the link with an empty path reads the
    // link itself; buf is writable for its length.
    let n = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// Walks the absolute `path` from `/` and opens the regular file at its end for reading.
///
/// Fails with the kernel's error where a component is missing, with `ELOOP` past 40
/// symbolic links, with `ENOTDIR` where a non-directory is passed through; a directory,
/// FIFO, socket or device at the end is never opened.
pub fn open_walked(path: &Path) -> Result<Walked, WalkError> {
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not an absolute path", path.display()),
        )
        .into());
    }
    let root = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open("/")
        .map(OwnedFd::from)?;
    let root_st = stat(&root)?;
    let mut passed = vec![Passed {
        path: PathBuf::from("/"),
        dir: true,
        uid: root_st.st_uid,
        mode: root_st.st_mode & 0o7777,
    }];
    // The directories we are in, `/` first; ".." pops one (never `/`).
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::from("/"))];
    // What is left to walk, next component last.
    let mut todo: Vec<OsString> = components_rev(path.as_os_str());
    let mut links = 0usize;
    while let Some(name) = todo.pop() {
        if name == "." {
            continue;
        }
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let (dir, dir_path) = stack.last().expect("never empty");
        let here = dir_path.join(&name);
        let fd = open_at(dir, &name, libc::O_PATH | libc::O_NOFOLLOW)?;
        let st = stat(&fd)?;
        match file_type(&st) {
            libc::S_IFLNK => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP).into());
                }
                passed.push(Passed {
                    path: here,
                    dir: false,
                    uid: st.st_uid,
                    mode: st.st_mode & 0o7777,
                });
                let target = read_link(&fd)?;
                if target.as_bytes().first() == Some(&b'/') {
                    stack.truncate(1);
                }
                todo.extend(components_rev(&target));
            }
            libc::S_IFDIR => {
                passed.push(Passed {
                    path: here.clone(),
                    dir: true,
                    uid: st.st_uid,
                    mode: st.st_mode & 0o7777,
                });
                stack.push((fd, here));
            }
            _ if !todo.is_empty() => return Err(io::Error::from_raw_os_error(libc::ENOTDIR).into()),
            libc::S_IFREG => {
                // The end: open it for reading from the same directory, and make sure it
                // is the file just looked at.
                let file = File::from(open_at(
                    dir,
                    &name,
                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                )?);
                let fst = stat(&OwnedFd::from(file.try_clone()?))?;
                if fst.st_dev != st.st_dev || fst.st_ino != st.st_ino {
                    return Err(WalkError::Replaced(here));
                }
                return Ok(Walked { file, passed });
            }
            libc::S_IFIFO => return Err(WalkError::NotRegular("a FIFO")),
            libc::S_IFSOCK => return Err(WalkError::NotRegular("a socket")),
            _ => return Err(WalkError::NotRegular("a device")),
        }
    }
    Err(WalkError::NotRegular("a directory"))
}

/// The non-empty components of a path, last first.
fn components_rev(p: &OsStr) -> Vec<OsString> {
    p.as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_links_and_dots_and_records_what_it_passed() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::fs::write(base.join("real/hook"), "content").unwrap();
        symlink("real", base.join("rel")).unwrap();
        symlink(base.join("rel/./hook"), base.join("abs")).unwrap();
        let mut w = open_walked(&base.join("abs")).unwrap();
        let mut s = String::new();
        w.file.read_to_string(&mut s).unwrap();
        assert_eq!(s, "content");
        let links: Vec<_> = w.passed.iter().filter(|p| !p.dir).collect();
        assert_eq!(links.len(), 2, "{:?}", w.passed);
        assert_eq!(links[0].path, base.join("abs"));
        assert_eq!(links[1].path, base.join("rel"));
        assert!(w
            .passed
            .iter()
            .any(|p| p.dir && p.path == base.join("real")));
        assert_eq!(w.passed[0].path, Path::new("/"));

        let w = open_walked(&base.join("real/../real/hook")).unwrap();
        assert!(w.passed.iter().all(|p| p.dir));
    }

    #[test]
    fn refuses_loops_missing_files_directories_and_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        symlink(base.join("b"), base.join("a")).unwrap();
        symlink(base.join("a"), base.join("b")).unwrap();
        let os = |p: &Path| match open_walked(p).unwrap_err() {
            WalkError::Io(e) => e,
            e => panic!("{e}"),
        };
        assert_eq!(os(&base.join("a")).raw_os_error(), Some(libc::ELOOP));
        assert_eq!(os(&base.join("none")).kind(), io::ErrorKind::NotFound);
        assert!(matches!(
            open_walked(&base),
            Err(WalkError::NotRegular("a directory"))
        ));
        assert!(open_walked(Path::new("rel/x")).is_err());
        std::fs::write(base.join("f"), "").unwrap();
        assert_eq!(os(&base.join("f/x")).raw_os_error(), Some(libc::ENOTDIR));
    }

    #[test]
    fn a_fifo_at_the_end_is_not_opened() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        let fifo = CString::new(base.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            open_walked(&base.join("fifo")),
            Err(WalkError::NotRegular("a FIFO"))
        ));
    }
}
