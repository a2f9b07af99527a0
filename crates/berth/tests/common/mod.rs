//! What the end-to-end tests share: a fixture directory laid out as an administrator would
//! (root-owned hooks, an SWD, a job directory owned by `nobody`), the real `berth` binary,
//! a busybox image built from local files, and waits that always end.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NOBODY: u32 = 65534;
pub const IMAGE: &str = "localhost/berth-test:latest";

pub fn berth() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn is_root() -> bool {
    berth_sys::euid() == 0
}

/// Tests that need root (hooks as root, jobs as nobody) are `#[ignore]`d, so that they
/// never pass without checking anything; `.ci/run` runs them as root with
/// `--include-ignored`, and run without root they fail saying so.
#[macro_export]
macro_rules! need_root {
    () => {
        assert!(
            common::is_root(),
            "this test needs root (it runs hooks as root and jobs as nobody)"
        );
    };
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn write_exec(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    chmod(p, 0o755);
}

/// A directory tree for one test: `root/` (0755) holds `hooks/`, `swd/containers/` and
/// `work/` (owned by nobody, the job's directory).
pub struct Fixture {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub hooks: PathBuf,
    pub swd: PathBuf,
    pub work: PathBuf,
}

/// The pids of nobody's processes whose command line matches `pattern` (`pgrep -f`).
pub fn nobodys(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-u", "nobody", "-f", pattern])
        .output()
        .unwrap();
    stdout(&out)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The pids whose command line starts with `prefix`.
pub fn pids_of(prefix: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with(prefix) {
            out.push(pid);
        }
    }
    out
}

impl Drop for Fixture {
    /// A tasker the test killed leaves its keeper, keeping its jobs for a next tasker
    /// that will not come: they end with the test.
    fn drop(&mut self) {
        let prefix = format!(
            "{} keeper --state {}",
            berth().display(),
            self.root.display()
        );
        for keeper in pids_of(&prefix) {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                    continue;
                };
                let ppid = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(keeper) {
                    if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                        // A job leads its own process group.
                        let _ = Command::new("kill")
                            .args(["-9", "--", &format!("-{pid}")])
                            .status();
                    }
                }
            }
            let _ = Command::new("kill")
                .args(["-9", &keeper.to_string()])
                .status();
        }
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        chmod(&root, 0o755);
        let hooks = root.join("hooks");
        let swd = root.join("swd");
        let work = root.join("work");
        for d in [&hooks, &swd.join("containers"), &work] {
            std::fs::create_dir_all(d).unwrap();
            chmod(d, 0o755);
        }
        std::os::unix::fs::chown(&work, Some(NOBODY), Some(NOBODY)).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            hooks,
            swd,
            work,
        }
    }

    /// Writes hook NAME into hooks/ and returns its path.
    pub fn hook(&self, name: &str, text: &str) -> PathBuf {
        let p = self.hooks.join(name);
        write_exec(&p, text);
        p
    }

    /// Writes SWD/containers/NAME.cfg, replacing `SIG(path)` by the signature of path.
    pub fn cfg(&self, name: &str, text: &str) -> PathBuf {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("SIG(") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find(')').unwrap() + i;
            let path = &rest[i + 4..end];
            let sig = berth_container::sign::sign_file(Path::new(path), None)
                .unwrap_or_else(|e| panic!("signing {path}: {e}"));
            out.push_str(&sig);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        let p = self.swd.join("containers").join(format!("{name}.cfg"));
        std::fs::write(&p, out).unwrap();
        chmod(&p, 0o644);
        p
    }

    /// `berth ARGS...` in the job directory, with the test's containers.conf.
    pub fn berth(&self, args: &[&str]) -> Command {
        let mut c = Command::new(berth());
        c.args(args)
            .current_dir(&self.work)
            .env("BERTH_SWD", &self.swd)
            .env("CONTAINERS_CONF", containers_conf())
            .stdin(Stdio::null());
        c
    }

    /// Starts `berth ARGS...` with its output piped (for `wait_output`), or thrown away
    /// (`quiet`, for a berth that will be killed and whose hooks would hold its pipes).
    pub fn spawn(&self, args: &[&str], quiet: bool) -> Child {
        let io = || if quiet { Stdio::null() } else { Stdio::piped() };
        self.berth(args).stdout(io()).stderr(io()).spawn().unwrap()
    }

    /// Runs `berth ARGS...` to its end, within `limit`.
    pub fn run(&self, args: &[&str], limit: Duration) -> Output {
        let mut c = self.berth(args);
        output_within(&mut c, limit)
    }

    /// Installs the example configurations NAMES with the settings of this machine.
    pub fn install_examples(&self, names: &[&str]) {
        let img = image();
        let mut c = Command::new("sh");
        c.arg(repo().join("examples/containers/install.sh"))
            .args(["--swd", self.swd.to_str().unwrap()])
            .args(["--hooks", self.hooks.to_str().unwrap()])
            .args(["--berth", berth().to_str().unwrap()])
            .args(["--engine", "podman", "--image", IMAGE])
            .args(["--rootfs", img.rootfs.to_str().unwrap()])
            .args(["--containers-conf", containers_conf().to_str().unwrap()])
            .args(names);
        let out = output_within(&mut c, Duration::from_secs(60));
        assert!(out.status.success(), "install.sh failed:\n{}", text(&out));
    }

    pub fn read_work(&self, name: &str) -> String {
        std::fs::read_to_string(self.work.join(name)).unwrap_or_default()
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command to its end, killing it (and failing the test) past `limit`.
pub fn output_within(c: &mut Command, limit: Duration) -> Output {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {c:?}: {e}"));
    wait_output(child, limit)
}

/// Collects a spawned child's output, within `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Waits for a child's exit, within `limit`, without reading its output (a killed berth
/// leaves its hooks holding its pipes).
pub fn wait_status(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `cond` holds, failing the test with `what` past `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(child: &Child, sig: libc::c_int) {
    // A child we spawned and have not reaped: its pid is still its own.
    berth_sys::kill_pid(child.id(), sig);
}

/// The containers.conf the examples are tested with (runc; no default ulimits).
pub fn containers_conf() -> PathBuf {
    repo().join("examples/containers/containers.conf")
}

pub struct Image {
    pub rootfs: PathBuf,
}

/// A busybox rootfs (for bwrap) and the same tree imported as IMAGE (for podman), made by
/// examples/containers/make-image.sh from the static busybox of this machine.
pub fn image() -> Image {
    use std::sync::OnceLock;
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    let rootfs = ROOTFS.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join("rootfs");
        let lock = std::fs::File::create(tmp.join("image.lock")).unwrap();
        // Serialises test binaries making the image.
        berth_sys::flock_exclusive(&lock, true).unwrap();
        let mut c = Command::new("sh");
        c.arg(repo().join("examples/containers/make-image.sh"))
            .arg(&dir)
            .arg(IMAGE)
            .env("CONTAINERS_CONF", containers_conf());
        let out = output_within(&mut c, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "make-image.sh failed (apt-get install podman runc busybox-static):\n{}",
            text(&out)
        );
        dir
    });
    Image {
        rootfs: rootfs.clone(),
    }
}

/// The names of every podman container, running or not, whose name starts with `prefix`.
pub fn podman_containers(prefix: &str) -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .env("CONTAINERS_CONF", containers_conf())
        .output()
        .unwrap();
    stdout(&out)
        .lines()
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

pub const T: Duration = Duration::from_secs(60);

/// A running `berth up`, stopped (and checked to be still alive) when dropped.
pub struct Up {
    child: Option<Child>,
    swd: std::path::PathBuf,
}

impl Up {
    /// Started with `--stop-jobs`, so that its jobs end with the test.
    pub fn start(fx: &Fixture, extra: &[&str]) -> Up {
        Up::start_logging(fx, extra, None)
    }

    /// Started without `--stop-jobs`: a stop leaves its jobs running for the next.
    pub fn start_keeping(fx: &Fixture, extra: &[&str]) -> Up {
        Up::start_inner(fx, extra, None, false)
    }

    /// The same, its standard error to `log` (a file) when given.
    pub fn start_logging(fx: &Fixture, extra: &[&str], log: Option<&Path>) -> Up {
        Up::start_inner(fx, extra, log, true)
    }

    /// Started by `wrapper` (a command that ends by exec'ing its arguments: `berth up ...`).
    pub fn start_wrapped(fx: &Fixture, extra: &[&str], wrapper: &[&str]) -> Up {
        Up::start_full(fx, extra, None, true, wrapper)
    }

    fn start_inner(fx: &Fixture, extra: &[&str], log: Option<&Path>, stop_jobs: bool) -> Up {
        Up::start_full(fx, extra, log, stop_jobs, &[])
    }

    fn start_full(
        fx: &Fixture,
        extra: &[&str],
        log: Option<&Path>,
        stop_jobs: bool,
        wrapper: &[&str],
    ) -> Up {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        };
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(berth());
                c
            }
            None => Command::new(berth()),
        };
        let child = cmd
            .arg("up")
            .arg("--swd")
            .arg(&fx.swd)
            .args(extra)
            .args(stop_jobs.then_some("--stop-jobs"))
            .env("CONTAINERS_CONF", containers_conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let sock = fx.swd.join("berth.sock");
        wait_until("the server's socket", T, || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        // The socket answers before the embedded tasker has said hello.
        let swd = fx.swd.clone();
        wait_until("the embedded tasker", T, || {
            let out = Command::new(berth())
                .args(["taskers", "--json"])
                .env("BERTH_SWD", &swd)
                .output()
                .unwrap();
            stdout(&out).contains("\"slots\"")
        });
        Up {
            child: Some(child),
            swd: fx.swd.clone(),
        }
    }

    /// The pid of `berth up`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its resident memory, in kB.
    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// Stops it with SIGTERM, as an administrator would, and waits for its end.
    pub fn stop(&mut self) {
        let c = self.child.take().unwrap();
        signal(&c, libc::SIGTERM);
        let st = wait_status(c, T);
        assert!(st.success(), "berth up ended with {st}");
    }

    /// Waits for it to end by itself (`berth down`), within `limit`.
    pub fn ends(&mut self, limit: Duration) -> std::process::ExitStatus {
        let c = self.child.take().unwrap();
        wait_status(c, limit)
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        signal(&c, libc::SIGKILL);
        let _ = c.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let alive = c.try_wait().unwrap().is_none();
            signal(&c, libc::SIGTERM);
            let _ = wait_status(c, T);
            if !std::thread::panicking() {
                assert!(
                    alive,
                    "berth up (SWD {}) died during the test",
                    self.swd.display()
                );
            }
        }
    }
}

/// A second unprivileged user, `berth-test`, made once for every test that needs one
/// (with `useradd`); its uid.
pub fn test_user() -> u32 {
    static MADE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MADE.get_or_init(|| {
        let id = || {
            Command::new("id")
                .args(["-u", "berth-test"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        };
        if let Some(uid) = id() {
            return uid;
        }
        // Another test binary may make it at the same time: its failure is fine if the
        // user exists afterwards.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "berth-test",
            ])
            .output();
        id().expect("useradd berth-test failed")
    })
}

/// `berth ARGS` as user `uid` (its group the same number) in the job directory.
pub fn as_user(fx: &Fixture, uid: u32, args: &[&str]) -> std::process::Output {
    let mut c = fx.berth(args);
    c.uid(uid).gid(uid).env("HOME", "/nonexistent");
    output_within(&mut c, T)
}

/// Waits until tasker `name` has joined the server of `swd`.
pub fn wait_for_tasker(swd: &Path, name: &str) {
    wait_until(&format!("tasker {name} to join"), T, || {
        let out = Command::new(berth())
            .args(["taskers", "--json"])
            .env("BERTH_SWD", swd)
            .output()
            .unwrap();
        stdout(&out).contains(&format!("\"{name}\""))
    });
}

/// `berth ARGS` as nobody in the job directory.
pub fn as_nobody(fx: &Fixture, args: &[&str]) -> std::process::Output {
    let mut c = fx.berth(args);
    c.uid(NOBODY)
        .gid(NOBODY)
        .env("HOME", "/nonexistent")
        .env("USER", "nobody");
    output_within(&mut c, T)
}

/// A munged of the test's own whose key is the byte `key` repeated, its socket in `dir`
/// (which others may enter, as a host's is). Killed with the returned child.
pub fn start_munged(dir: &Path, key: u8) -> (Child, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    chmod(dir, 0o755);
    let k = dir.join("munge.key");
    std::fs::write(&k, [key; 1024]).unwrap();
    chmod(&k, 0o400);
    let sock = dir.join("munge.sock");
    let child = Command::new("munged")
        .arg("--foreground")
        .arg("--force")
        .arg(format!("--key-file={}", k.display()))
        .arg(format!("--socket={}", sock.display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--log-file={}", dir.join("log").display()))
        .arg(format!("--seed-file={}", dir.join("seed").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("munged (apt-get install munge)");
    wait_until("munged", T, || sock.exists());
    (child, sock)
}
