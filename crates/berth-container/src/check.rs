//! Loading a configuration safely, and the checks a hook passes before any hook of a job
//! runs (SPEC §2 file rules, §3 hook checks).

use crate::config::{self, Config, ConfigError, ConfigErrors, Hook, HookType, Privilege};
use crate::sign::{self, Key, Mismatch};
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_sys::walk::{self, WalkError};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// NAME is not a valid configuration name.
    #[error("{0}")]
    BadName(String),
    /// There is no `NAME.cfg`.
    #[error("container {name}: no configuration {path}; the configurations here are: {known}")]
    Missing {
        /// The name asked for.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
        /// The names that exist, for the message.
        known: String,
    },
    /// The file could not be read.
    #[error("container {name}: {path}: {source}")]
    Io {
        /// The name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The text has errors.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The file's owner or mode makes its signatures worthless.
    #[error("{0}")]
    Unsafe(ConfigError),
}

/// The path of configuration NAME under a containers directory, with NAME checked first:
/// no user-given name reaches the filesystem unchecked.
pub fn config_path(dir: &Path, name: &str) -> Result<PathBuf, LoadError> {
    if !config::valid_name(name) {
        return Err(LoadError::BadName(config::name_error(name)));
    }
    Ok(dir.join(format!("{name}.cfg")))
}

/// The names of the configurations in a directory, sorted.
pub fn list_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let stem = n.strip_suffix(".cfg")?.to_string();
            config::valid_name(&stem).then_some(stem)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Reads, parses and checks the file rules of `DIR/NAME.cfg`.
pub fn load(dir: &Path, name: &str) -> Result<Config, LoadError> {
    let path = config_path(dir, name)?;
    let io_err = |source| LoadError::Io {
        name: name.to_string(),
        path: path.clone(),
        source,
    };
    let mut f = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let known = list_names(dir).map(|n| n.join(", ")).unwrap_or_default();
            return Err(LoadError::Missing {
                name: name.to_string(),
                path,
                known: if known.is_empty() { "none".into() } else { known },
            });
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(LoadError::Unsafe(ConfigError {
                file: path.clone(),
                line: 0,
                message: "is a symbolic link; a configuration must be a regular file in the containers directory".into(),
            }))
        }
        Err(e) => return Err(io_err(e)),
    };
    let meta = f.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(LoadError::Unsafe(ConfigError {
            file: path.clone(),
            line: 0,
            message: "is not a regular file".into(),
        }));
    }
    let mut src = String::new();
    f.read_to_string(&mut src).map_err(io_err)?;
    let cfg = config::parse(name, &path, &src).map_err(LoadError::Invalid)?;
    check_file(&cfg, &meta).map_err(LoadError::Unsafe)?;
    Ok(cfg)
}

/// The file rules of SPEC §2: not writable by anyone but its owner and root; owned by root
/// when it declares a root hook (and then, as for root hooks, in directories only root can
/// change).
pub fn check_file(cfg: &Config, meta: &Metadata) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError {
        file: cfg.path.clone(),
        line: 0,
        message,
    };
    let mode = meta.mode() & 0o7777;
    let p = cfg.path.display();
    if mode & 0o022 != 0 {
        return Err(err(format!(
            "writable by group or others (mode {mode:o}); anyone who can edit it chooses what \
             the hooks run; run: chmod go-w {p}"
        )));
    }
    if cfg.has_root_hook() {
        if meta.uid() != 0 {
            let line = cfg
                .hooks
                .iter()
                .find(|h| h.privilege == Privilege::Root)
                .map(|h| h.line)
                .unwrap_or(0);
            return Err(err(format!(
                "declares a root hook (line {line}) but is owned by uid {}; whoever can edit it \
                 chooses what runs as root; run: chown root {p}",
                meta.uid()
            )));
        }
        if let Some(parent) = cfg.path.parent() {
            if let Err(d) = safe_dirs(parent) {
                return Err(err(format!("declares a root hook, but {d}")));
            }
        }
    }
    Ok(())
}

/// What is wrong with one hook.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// No such file.
    #[error("does not exist; install it there or correct the path")]
    Missing,
    /// A directory, device or other non-regular file.
    #[error("is not a regular file ({0})")]
    NotRegular(&'static str),
    /// No execute bit.
    #[error("is not executable (mode {mode:o}); run: chmod 755 {path}")]
    NotExecutable {
        /// Permission bits.
        mode: u32,
        /// The hook's path.
        path: PathBuf,
    },
    /// The content does not match the signature.
    #[error("{mismatch}; {fix}")]
    Signature {
        /// How it does not match.
        mismatch: Mismatch,
        /// The command that re-signs.
        fix: String,
    },
    /// A root hook owned by another user.
    #[error("not owned by root (owner uid {uid}); run: chown root {path}")]
    NotOwnedByRoot {
        /// The owner.
        uid: u32,
        /// The hook's path.
        path: PathBuf,
    },
    /// A root hook writable by group or others.
    #[error("writable by group or others (mode {mode:o}); run: chmod go-w {path}")]
    Writable {
        /// Permission bits.
        mode: u32,
        /// The hook's path.
        path: PathBuf,
    },
    /// A root hook below a directory that a non-root user can change.
    #[error("{0}")]
    UnsafeDir(String),
    /// The file could not be read.
    #[error("{0}")]
    Io(io::Error),
}

/// A hook refused before the job ran, printed as
/// `container c1: enter hook /opt/hooks/c1-enter.sh: signature mismatch; ...`.
#[derive(Debug, thiserror::Error)]
#[error("container {container}: {kind} hook {path}: {problem}")]
pub struct Refusal {
    /// The configuration's NAME.
    pub container: String,
    /// Which hook.
    pub kind: HookType,
    /// The hook's path as configured.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: Problem,
}

/// What the checks need to know about this host.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy<'a> {
    /// The site key; when given, root hooks must carry keyed signatures.
    pub key: Option<&'a Key>,
}

/// A hook that passed its checks, with the very file that was checked, opened: the hook
/// is executed from this descriptor, so a path changed after the check changes nothing.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The hook as configured.
    pub hook: Hook,
    /// The file that was checked and hashed; execute this.
    pub file: Arc<File>,
}

/// Runs every check of SPEC §3 on one hook.
///
/// The file is reached by walking its configured path one component at a time from `/`
/// and opened from its directory, never by a second lookup; for a root hook, every
/// directory and symbolic link passed through must be one that only root can change.
pub fn check_hook(container: &str, hook: &Hook, policy: Policy<'_>) -> Result<Checked, Refusal> {
    let refuse = |problem| Refusal {
        container: container.to_string(),
        kind: hook.kind,
        path: hook.path.clone(),
        problem,
    };
    let root = hook.privilege == Privilege::Root;
    let walked = match walk::open_walked(&hook.path) {
        Ok(w) => w,
        Err(WalkError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Err(refuse(Problem::Missing))
        }
        Err(WalkError::NotRegular(what)) => return Err(refuse(Problem::NotRegular(what))),
        Err(WalkError::Io(e)) => return Err(refuse(Problem::Io(e))),
        Err(e @ WalkError::Replaced(_)) => {
            return Err(refuse(Problem::Io(io::Error::other(e.to_string()))))
        }
    };
    if root {
        safe_walk(&walked.passed).map_err(|d| refuse(Problem::UnsafeDir(d)))?;
    }
    let f = walked.file;
    let meta = f.metadata().map_err(|e| refuse(Problem::Io(e)))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o111 == 0 {
        return Err(refuse(Problem::NotExecutable {
            mode,
            path: hook.path.clone(),
        }));
    }
    let root = hook.privilege == Privilege::Root;
    if root {
        if meta.uid() != 0 {
            return Err(refuse(Problem::NotOwnedByRoot {
                uid: meta.uid(),
                path: hook.path.clone(),
            }));
        }
        if mode & 0o022 != 0 {
            return Err(refuse(Problem::Writable {
                mode,
                path: hook.path.clone(),
            }));
        }
    }
    let require_keyed = root && policy.key.is_some();
    match sign::verify_reader(&f, &hook.signature, policy.key, require_keyed) {
        Ok(Ok(())) => Ok(Checked {
            hook: hook.clone(),
            file: Arc::new(f),
        }),
        Ok(Err(mismatch)) => {
            let fix = match &mismatch {
                Mismatch::NoKey => "the host must hold the site key".to_string(),
                Mismatch::Differs => format!(
                    "if the change is intended, re-sign it: berth container sign {container}"
                ),
                Mismatch::NotKeyed => format!(
                    "re-sign it with the key: berth container sign --key KEYFILE {container}"
                ),
                Mismatch::Foreign(_) | Mismatch::Unknown(_) => format!(
                    "re-sign it: berth container sign {container} (or: berth signfile {})",
                    hook.path.display()
                ),
            };
            Err(refuse(Problem::Signature { mismatch, fix }))
        }
        Err(e) => Err(refuse(Problem::Io(e))),
    }
}

/// Checks every hook of a configuration, stopping at the first refusal: what runs before
/// each job.
pub fn check_hooks(cfg: &Config, policy: Policy<'_>) -> Result<Vec<Checked>, Refusal> {
    cfg.hooks
        .iter()
        .map(|h| check_hook(&cfg.name, h, policy))
        .collect()
}

/// Every directory and symbolic link a root hook's path passed through must be one only
/// root can change: owned by root, and a directory not writable by group or others unless
/// it is sticky (as `/tmp`: there, others cannot replace an entry that root owns).
fn safe_walk(passed: &[walk::Passed]) -> Result<(), String> {
    for p in passed {
        let what = if p.dir { "directory" } else { "symbolic link" };
        if p.uid != 0 {
            return Err(format!(
                "{what} {} on its path is owned by uid {}, who could change what the path \
                 leads to; a root hook's path may pass only through directories and links \
                 that only root can change; run: chown -h root {}",
                p.path.display(),
                p.uid,
                p.path.display()
            ));
        }
        if p.dir && p.mode & 0o022 != 0 && p.mode & 0o1000 == 0 {
            return Err(format!(
                "directory {} on its path is writable by group or others (mode {:o}); a root \
                 hook's path may pass only through directories that only root can change; \
                 run: chmod go-w {}",
                p.path.display(),
                p.mode,
                p.path.display()
            ));
        }
    }
    Ok(())
}

/// Every directory from `dir` up to `/` must be changeable by root only: owned by root and
/// not writable by group or others, except a root-owned sticky directory such as `/tmp`
/// (there, others cannot replace an entry that root owns).
pub fn safe_dirs(dir: &Path) -> Result<(), String> {
    let dir =
        std::fs::canonicalize(dir).map_err(|e| format!("directory {}: {e}", dir.display()))?;
    let mut cur = Some(dir.as_path());
    while let Some(d) = cur {
        let meta = std::fs::metadata(d).map_err(|e| format!("directory {}: {e}", d.display()))?;
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 {
            return Err(format!(
                "directory {} above it is owned by uid {}, who could replace it; \
                 root hooks must live in directories only root can change; run: chown root {}",
                d.display(),
                meta.uid(),
                d.display()
            ));
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "directory {} above it is writable by group or others (mode {mode:o}); \
                 root hooks must live in directories only root can change; run: chmod go-w {}",
                d.display(),
                d.display()
            ));
        }
        cur = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::chown;

    const NOBODY: u32 = 65534;

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fixture { _tmp: tmp, dir }
    }

    fn write(path: &Path, content: &str, mode: u32) {
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn is_root() -> bool {
        berth_sys::euid() == 0
    }

    fn cfg_with(fx: &Fixture, privilege: &str, hook: &Path, sig: &str) -> Config {
        let text = format!("containerHook enter {privilege} {} {sig}\n", hook.display());
        let path = fx.dir.join("c1.cfg");
        write(&path, &text, 0o644);
        load(&fx.dir, "c1").unwrap()
    }

    fn refusal(cfg: &Config, key: Option<&Key>) -> String {
        check_hooks(cfg, Policy { key }).unwrap_err().to_string()
    }

    #[test]
    #[ignore = "needs root to own files as root: .ci/run runs it with --include-ignored"]
    fn accepts_a_good_root_hook() {
        assert_eq!(berth_sys::euid(), 0, "run as root");
        let fx = fixture();
        let h = fx.dir.join("enter.sh");
        write(&h, "#!/bin/sh\n", 0o755);
        let sig = sign::sign_file(&h, None).unwrap();
        let cfg = cfg_with(&fx, "root", &h, &sig);
        let checked = check_hooks(&cfg, Policy::default()).unwrap();
        // What was checked is the hook's very file.
        let (a, b) = (
            checked[0].file.metadata().unwrap(),
            std::fs::metadata(&h).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }

    #[test]
    #[ignore = "needs root to chown files to nobody: .ci/run runs it with --include-ignored"]
    fn refusals_table() {
        assert_eq!(berth_sys::euid(), 0, "run as root");
        let good = "#!/bin/sh\nexit 0\n";
        let good_sig = sign::sign_reader(good.as_bytes(), None).unwrap();
        // (what, privilege, setup of the fixture returning the hook path, expected message)
        type Setup = Box<dyn Fn(&Fixture) -> PathBuf>;
        let cases: Vec<(&str, &str, Setup, String)> = vec![
            (
                "missing",
                "user",
                Box::new(|fx| fx.dir.join("nope.sh")),
                "enter hook {DIR}/nope.sh: does not exist".into(),
            ),
            (
                "directory",
                "user",
                Box::new(|fx| {
                    let d = fx.dir.join("d");
                    std::fs::create_dir(&d).unwrap();
                    d
                }),
                "is not a regular file (a directory)".into(),
            ),
            (
                "not executable",
                "user",
                Box::new(move |fx| {
                    let h = fx.dir.join("e.sh");
                    write(&h, good, 0o644);
                    h
                }),
                "is not executable (mode 644); run: chmod 755 {DIR}/e.sh".into(),
            ),
            (
                "signature mismatch",
                "user",
                Box::new(|fx| {
                    let h = fx.dir.join("e.sh");
                    write(&h, "#!/bin/sh\nrm -rf /\n", 0o755);
                    h
                }),
                "container c1: enter hook {DIR}/e.sh: signature mismatch; if the change is intended, re-sign it: berth container sign c1".into(),
            ),
            (
                "root hook owned by nobody",
                "root",
                Box::new(move |fx| {
                    let h = fx.dir.join("e.sh");
                    write(&h, good, 0o755);
                    chown(&h, Some(NOBODY), None).unwrap();
                    h
                }),
                "not owned by root (owner uid 65534); run: chown root {DIR}/e.sh".into(),
            ),
            (
                "root hook group-writable",
                "root",
                Box::new(move |fx| {
                    let h = fx.dir.join("e.sh");
                    write(&h, good, 0o775);
                    h
                }),
                "writable by group or others (mode 775); run: chmod go-w {DIR}/e.sh".into(),
            ),
            (
                "root hook world-writable",
                "root",
                Box::new(move |fx| {
                    let h = fx.dir.join("e.sh");
                    write(&h, good, 0o757);
                    h
                }),
                "writable by group or others (mode 757)".into(),
            ),
            (
                "root hook in a directory owned by nobody",
                "root",
                Box::new(move |fx| {
                    let d = fx.dir.join("hooks");
                    std::fs::create_dir(&d).unwrap();
                    chown(&d, Some(NOBODY), None).unwrap();
                    let h = d.join("e.sh");
                    write(&h, good, 0o755);
                    h
                }),
                "directory {DIR}/hooks on its path is owned by uid 65534, who could change what the path leads to".into(),
            ),
            (
                "root hook through a symbolic link of nobody's",
                "root",
                Box::new(move |fx| {
                    let h = fx.dir.join("e.sh");
                    write(&h, good, 0o755);
                    let l = fx.dir.join("link.sh");
                    std::os::unix::fs::symlink(&h, &l).unwrap();
                    std::os::unix::fs::lchown(&l, Some(NOBODY), None).unwrap();
                    l
                }),
                "symbolic link {DIR}/link.sh on its path is owned by uid 65534".into(),
            ),
            (
                "root hook through a link to a directory of nobody's",
                "root",
                Box::new(move |fx| {
                    let d = fx.dir.join("theirs");
                    std::fs::create_dir(&d).unwrap();
                    chown(&d, Some(NOBODY), None).unwrap();
                    write(&d.join("e.sh"), good, 0o755);
                    std::os::unix::fs::symlink(&d, fx.dir.join("ours")).unwrap();
                    fx.dir.join("ours/e.sh")
                }),
                "directory {DIR}/theirs on its path is owned by uid 65534".into(),
            ),
            (
                "a FIFO (never opened, so never blocks)",
                "user",
                Box::new(|fx| {
                    let f = fx.dir.join("fifo");
                    let st = std::process::Command::new("mkfifo")
                        .args(["-m", "755"])
                        .arg(&f)
                        .status()
                        .unwrap();
                    assert!(st.success());
                    f
                }),
                "is not a regular file (a FIFO)".into(),
            ),
            (
                "root hook in a world-writable directory",
                "root",
                Box::new(move |fx| {
                    let d = fx.dir.join("hooks");
                    std::fs::create_dir(&d).unwrap();
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
                    let h = d.join("e.sh");
                    write(&h, good, 0o755);
                    h
                }),
                "directory {DIR}/hooks on its path is writable by group or others (mode 777)".into(),
            ),
        ];
        for (what, privilege, setup, want) in cases {
            let fx = fixture();
            let h = setup(&fx);
            let cfg = cfg_with(&fx, privilege, &h, &good_sig);
            let got = refusal(&cfg, None);
            let want = want.replace("{DIR}", &fx.dir.display().to_string());
            assert!(
                got.contains(&want),
                "{what}:\n  got:  {got}\n  want: {want}"
            );
            assert!(
                got.starts_with("container c1: enter hook "),
                "{what}: {got}"
            );
        }
    }

    #[test]
    fn a_root_owned_hook_in_a_sticky_dir_is_accepted() {
        if !is_root() {
            return;
        }
        let fx = fixture();
        let d = fx.dir.join("sticky");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let h = d.join("e.sh");
        write(&h, "#!/bin/sh\n", 0o755);
        let cfg = cfg_with(&fx, "root", &h, &sign::sign_file(&h, None).unwrap());
        check_hooks(&cfg, Policy::default()).unwrap();
    }

    #[test]
    fn keyed_policy_table() {
        if !is_root() {
            return;
        }
        let key = Key::from_bytes(b"0123456789abcdef0123");
        let fx = fixture();
        let h = fx.dir.join("e.sh");
        write(&h, "#!/bin/sh\n", 0o755);
        let plain = sign::sign_file(&h, None).unwrap();
        let keyed = sign::sign_file(&h, Some(&key)).unwrap();
        let cfg = cfg_with(&fx, "root", &h, &plain);
        assert!(refusal(&cfg, Some(&key)).contains("takes only keyed signatures for root hooks"));
        let cfg = cfg_with(&fx, "root", &h, &keyed);
        check_hooks(&cfg, Policy { key: Some(&key) }).unwrap();
        assert!(refusal(&cfg, None).contains("no key was given"));
        // a user hook may keep a plain signature on a keyed host
        let cfg = cfg_with(&fx, "user", &h, &plain);
        check_hooks(&cfg, Policy { key: Some(&key) }).unwrap();
        let cfg = cfg_with(&fx, "user", &h, "123456789");
        let got = refusal(&cfg, None);
        assert!(
            got.contains("signature \"123456789\" is in another product's format (decimal)")
                && got.contains("re-sign it: berth container sign c1"),
            "{got}"
        );
    }

    #[test]
    fn file_rules_table() {
        let fx = fixture();
        let path = fx.dir.join("c1.cfg");
        let sig = format!("sha256:{}", "0".repeat(64));
        write(
            &path,
            &format!("containerHook enter user /e {sig}\n"),
            0o666,
        );
        let err = load(&fx.dir, "c1").unwrap_err().to_string();
        assert!(err.ends_with(&format!("c1.cfg: writable by group or others (mode 666); anyone who can edit it chooses what the hooks run; run: chmod go-w {}", path.display())), "{err}");
        write(
            &path,
            &format!("containerHook enter user /e {sig}\n"),
            0o620,
        );
        assert!(load(&fx.dir, "c1")
            .unwrap_err()
            .to_string()
            .contains("mode 620"));
        if is_root() {
            write(
                &path,
                &format!("containerHook enter root /e {sig}\n"),
                0o644,
            );
            chown(&path, Some(NOBODY), None).unwrap();
            let err = load(&fx.dir, "c1").unwrap_err().to_string();
            assert!(
                err.contains("declares a root hook (line 1) but is owned by uid 65534"),
                "{err}"
            );
            // a user-hook configuration may belong to anyone
            write(
                &path,
                &format!("containerHook enter user /e {sig}\n"),
                0o644,
            );
            load(&fx.dir, "c1").unwrap();
        }
        let err = load(&fx.dir, "../c1").unwrap_err().to_string();
        assert!(
            err.contains("container name \"../c1\" is not valid"),
            "{err}"
        );
        let err = load(&fx.dir, "c2").unwrap_err().to_string();
        assert!(
            err.contains("container c2: no configuration") && err.contains("here are: c1"),
            "{err}"
        );
        std::os::unix::fs::symlink(&path, fx.dir.join("c3.cfg")).unwrap();
        let err = load(&fx.dir, "c3").unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
    }
}
