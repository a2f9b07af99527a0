//! The trust boundary, attacked for real (SPEC §3, §5, §9): as `nobody` against the real
//! binaries, with real terminals, symbolic links, FIFOs and connections. Each test performs
//! an attack that worked against an earlier berth and shows that it no longer does.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A job's state, reason and exit status, from `berth info --json`.
fn info(fx: &Fixture, id: &str) -> serde_json::Value {
    let out = fx.run(&["info", "--json", id], T);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A job that tries to reach the terminal `berth up` was started from, and to type a
/// command into it with TIOCSTI, cannot: every job starts in a session of its own with no
/// controlling terminal, so root's shell never reads what a job pushed.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_job_cannot_type_into_the_terminal_berth_up_runs_on() {
    need_root!();
    let fx = Fixture::new();
    let pidfile = fx.root.join("up.pid");
    // berth up on a pseudo-terminal, as in root's shell; when it has stopped, the shell
    // reads whatever the terminal holds, as root's shell would.
    let shell = format!(
        "{} up --swd {} --slots 2 & echo $! > {}; wait; IFS= read -r -t 3 l; echo \"after:[$l]\"",
        berth().display(),
        fx.swd.display(),
        pidfile.display()
    );
    let mut script = Command::new("script")
        .args(["-qfec", &shell, "/dev/null"])
        .env("CONTAINERS_CONF", containers_conf())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Whatever happens below, nothing of this test is left running.
    struct Cleanup(std::path::PathBuf, u32);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(pid) = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                berth_sys::kill_pid(pid, libc::SIGKILL);
            }
            berth_sys::kill_pid(self.1, libc::SIGKILL);
        }
    }
    let _cleanup = Cleanup(pidfile.clone(), script.id());
    let sock = fx.swd.join("berth.sock");
    wait_until("berth up on a terminal", T, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok() && pidfile.exists()
    });
    let attack = "open(T, '+<', '/dev/tty') or do { print \"no terminal: $!\\n\"; exit 0 }; \
                  ioctl(T, 0x5412, $_) or print \"TIOCSTI: $!\\n\" for split //, \"echo INJECTED-BY-JOB\\n\"; \
                  print \"typed into the terminal\\n\"";
    let out = as_nobody(&fx, &["run", "-w", "--", "perl", "-e", attack]);
    assert!(out.status.success(), "{}", text(&out));
    let log = fx.read_work("berth-1.log");
    assert!(
        log.starts_with("no terminal: "),
        "the job opened the terminal of berth up: {log}"
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    berth_sys::kill_pid(pid, libc::SIGTERM);
    let stdin = script.stdin.take();
    let out = wait_output(script, T);
    drop(stdin);
    let outer = text(&out);
    assert!(
        outer.contains("after:[]") && !outer.contains("INJECTED-BY-JOB"),
        "the terminal received input from the job:\n{outer}"
    );
}

/// A root hook whose configured path passes through a directory or link that a user can
/// change is refused, by `berth container check`, by `try` and per job; and a hook whose
/// path a user flips between the checked program and another, 200 times over, never runs
/// the other: what runs is the very file that was checked.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_hook_swapped_between_check_and_exec_never_runs() {
    need_root!();
    let fx = Fixture::new();
    // A directory of nobody's, holding the checked hook, another program, and the link
    // the configurations name, which nobody flips between the two.
    let theirs = fx.root.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let marks = fx.root.join("marks");
    std::fs::create_dir(&marks).unwrap();
    chmod(&marks, 0o777);
    write_exec(&theirs.join("good.sh"), "#!/bin/sh\nexec \"$@\"\n");
    write_exec(
        &theirs.join("evil.sh"),
        &format!(
            "#!/bin/sh\nid -u >> {}/evil-ran\nexec \"$@\"\n",
            marks.display()
        ),
    );
    std::os::unix::fs::symlink("good.sh", theirs.join("enter")).unwrap();
    for p in ["", "good.sh", "evil.sh", "enter"] {
        std::os::unix::fs::lchown(theirs.join(p), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let good = theirs.join("good.sh");
    let link = theirs.join("enter");
    // The same hook as root: refused, whatever the link points at.
    fx.cfg(
        "asroot",
        &format!(
            "containerHook enter root {} SIG({})\n",
            link.display(),
            good.display()
        ),
    );
    let out = fx.run(&["container", "check", "asroot"], T);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!(
            "directory {} on its path is owned by uid {NOBODY}",
            theirs.display()
        )),
        "{}",
        text(&out)
    );
    let out = fx.run(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "asroot",
            "--",
            "true",
        ],
        T,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("on its path is owned by uid"),
        "{}",
        text(&out)
    );

    // As a user hook (which nobody may own), over 200 jobs while nobody flips the link.
    fx.cfg(
        "asuser",
        &format!(
            "containerHook enter user {} SIG({})\n",
            link.display(),
            good.display()
        ),
    );
    let _up = Up::start(&fx, &["--slots", "4", "--containers", "asuser"]);
    // Atomic replacements, thousands a second.
    let flipper = Command::new("perl")
        .arg("-e")
        .arg(
            "chdir $ARGV[0] or die; while (1) { symlink 'evil.sh', 'e.new'; rename 'e.new', 'enter'; \
             symlink 'good.sh', 'g.new'; rename 'g.new', 'enter' }",
        )
        .arg(&theirs)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--array",
            "200",
            "-r",
            "Container:asuser",
            "--",
            "true",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Jobs 2-201, array 1.
    assert_eq!(
        stdout(&out).trim(),
        "2-201 (200 jobs, array 1)",
        "{}",
        text(&out)
    );
    let out = fx.run(&["wait", "--timeout", "120", "1"], Duration::from_secs(150));
    let mut flipper = flipper;
    let flipping = flipper.try_wait().unwrap().is_none();
    signal(&flipper, libc::SIGKILL);
    let _ = wait_status(flipper, T);
    let (mut done, mut mismatch) = (0, 0);
    for id in 2..=201 {
        let v = info(&fx, &id.to_string());
        match v["state"].as_str() {
            Some("Done") => done += 1,
            Some("Failed") => {
                let reason = v["reason"].as_str().unwrap_or_default();
                assert!(
                    reason.contains("signature mismatch"),
                    "job {id}: {reason} ({})",
                    text(&out)
                );
                mismatch += 1;
            }
            s => panic!("job {id} is {s:?}"),
        }
    }
    let evil = std::fs::read_to_string(marks.join("evil-ran")).unwrap_or_default();
    assert!(
        evil.is_empty(),
        "the swapped-in program ran {} times ({done} jobs done, {mismatch} refused)",
        evil.lines().count()
    );
    eprintln!("{done} jobs ran the checked hook, {mismatch} were refused, 0 ran another");
    assert!(
        flipping,
        "the flipper stopped before the jobs ended: the attack was not exercised"
    );
    // The link at the checked hook again: a job runs it (a flipper stopped on the other
    // program, as a loaded machine may leave it, refuses them all above).
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("good.sh", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = as_nobody(&fx, &["run", "-w", "-r", "Container:asuser", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_to_string(marks.join("evil-ran"))
        .unwrap_or_default()
        .is_empty());
}

/// `berth up --examples` runs its install scripts from a directory only root can have
/// made: a user who plants scripts in every directory it used to use in $TMPDIR gets
/// nothing run.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn up_examples_runs_no_script_a_user_planted() {
    need_root!();
    let fx = Fixture::new();
    let tmp = fx.root.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    chmod(&tmp, 0o1777);
    let marks = fx.root.join("marks");
    std::fs::create_dir(&marks).unwrap();
    chmod(&marks, 0o777);
    // nobody pre-creates berth-examples.PID for the next few thousand pids, each with
    // its own install.sh and make-image.sh.
    let next: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let plant = format!(
        "i={}; while [ $i -lt {} ]; do d={}/berth-examples.$i; mkdir -p $d && \
         for s in install.sh make-image.sh; do printf '#!/bin/sh\\nid -u > {}/planted-ran\\n' > $d/$s; \
         chmod 755 $d/$s; done; i=$((i+1)); done",
        next + 1,
        next + 3000,
        tmp.display(),
        marks.display()
    );
    let st = Command::new("sh")
        .args(["-c", &plant])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(st.success());
    let mut up = fx.berth(&["up", "--examples", "--swd", fx.swd.to_str().unwrap()]);
    up.env("TMPDIR", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = up.spawn().unwrap();
    let sock = fx.swd.join("berth.sock");
    let mut child = Some(child);
    wait_until("berth up --examples", Duration::from_secs(180), || {
        let c = child.as_mut().unwrap();
        std::os::unix::net::UnixStream::connect(&sock).is_ok() || c.try_wait().unwrap().is_some()
    });
    let c = child.take().unwrap();
    signal(&c, libc::SIGTERM);
    let out = wait_output(c, T);
    assert!(
        !marks.join("planted-ran").exists(),
        "a script planted by nobody ran as uid {}",
        std::fs::read_to_string(marks.join("planted-ran")).unwrap_or_default()
    );
    assert!(
        fx.swd.join("containers/docker.cfg").exists(),
        "the examples were not installed: {}",
        text(&out)
    );
}

/// A job that may run in a container runs in exactly the one its tasker matched, never
/// bare; and a tasker told to offer a configuration it does not have, or one its
/// `--containers` excludes, does not offer it.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_job_with_containers_as_alternatives_runs_in_the_one_matched_never_bare() {
    need_root!();
    let fx = Fixture::new();
    let marks = fx.root.join("marks");
    std::fs::create_dir(&marks).unwrap();
    chmod(&marks, 0o777);
    for c in ["c1", "c2"] {
        let enter = fx.hook(
            &format!("{c}-enter.sh"),
            &format!(
                "#!/bin/sh\necho \"$VOV_CONTAINER_NAME $VOV_JOBID\" >> {}/ran\nexec \"$@\"\n",
                marks.display()
            ),
        );
        fx.cfg(
            c,
            &format!(
                "containerHook enter user {} SIG({})\n",
                enter.display(),
                enter.display()
            ),
        );
    }
    let _up = Up::start(
        &fx,
        &[
            "--slots",
            "2",
            "--containers",
            "c2",
            "-r",
            "Container:ghost Container:c1 GPU/1",
        ],
    );
    let out = fx.run(&["taskers", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let offered = v[0]["resources"].as_str().unwrap().to_string();
    assert!(offered.contains("Container:c2"), "{offered}");
    assert!(
        !offered.contains("Container:ghost") && !offered.contains("Container:c1"),
        "{offered}"
    );
    let out = fx.run(&["containers"], T);
    assert!(
        stdout(&out).contains("ghost") && stdout(&out).contains("there is no configuration"),
        "{}",
        text(&out)
    );
    for r in [
        "Container:c1 | Container:c2",
        "(Container:nope | Container:c2) GPU/1",
    ] {
        let out = as_nobody(&fx, &["run", "-w", "-r", r, "--", "true"]);
        assert!(out.status.success(), "{r}: {}", text(&out));
    }
    let ran = std::fs::read_to_string(marks.join("ran")).unwrap_or_default();
    assert_eq!(ran, "c2 1\nc2 2\n", "each ran in the container matched");
    for r in ["Container:ghost", "Container:c1"] {
        let out = as_nobody(&fx, &["run", "-r", r, "--", "true"]);
        assert!(
            stderr(&out).contains("no tasker can ever satisfy"),
            "{r}: {}",
            text(&out)
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = fx.run(&["list", "--json", "--state", "Queued"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(marks.join("ran")).unwrap_or_default(),
        "c2 1\nc2 2\n"
    );
}

/// A FIFO where the tasker expects a file of the user's (the job's log, the wrapper's
/// status file) never blocks a tasker's thread: the job fails with the reason, its slot
/// is free for the next job, and its cleanup still runs.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_fifo_for_a_log_or_a_status_file_blocks_nothing() {
    need_root!();
    let fx = Fixture::new();
    let marks = fx.root.join("marks");
    std::fs::create_dir(&marks).unwrap();
    chmod(&marks, 0o777);
    let enter = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    let cleanup = fx.hook(
        "cleanup.sh",
        &format!(
            "#!/bin/sh\necho \"cleanup $VOV_JOBID\" >> {}/ran\n",
            marks.display()
        ),
    );
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {e} SIG({e})\ncontainerHook cleanup user {c} SIG({c})\n",
            e = enter.display(),
            c = cleanup.display()
        ),
    );
    // One slot: a job that held it would hold every later job.
    let _up = Up::start(&fx, &["--slots", "1"]);
    let mk = Command::new("mkfifo")
        .arg(fx.work.join("fifo.log"))
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(mk.success());
    let out = as_nobody(&fx, &["run", "-w", "-l", "fifo.log", "--", "true"]);
    assert!(!out.status.success());
    let v = info(&fx, "1");
    assert_eq!(v["state"], "Failed");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("fifo.log: is not a regular file (a FIFO)"),
        "{v}"
    );
    // The container job's command puts a FIFO where the wrapper reports its status.
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "-r",
            "Container:c1",
            "--",
            "sh",
            "-c",
            "rm -f \"$BERTH_VW_STATUS\"; mkfifo \"$BERTH_VW_STATUS\"",
        ],
    );
    assert!(!out.status.success());
    let v = info(&fx, "2");
    assert_eq!(v["state"], "Failed");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("the wrapper's status file")
            && v["reason"].as_str().unwrap().contains("(a FIFO)"),
        "{v}"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("ran")).unwrap(),
        "cleanup 2\n"
    );
    let out = as_nobody(&fx, &["run", "-w", "--", "true"]);
    assert!(out.status.success(), "the slot is free: {}", text(&out));
}

/// The abuse of the API socket that used to stall or crash the server, by nobody: a
/// request nested 4,000 deep, a body of 250 MB declared, a header line without an end, and
/// 2,000 idle connections held open. Meanwhile another user's `berth run -w true`
/// completes, and the server's memory stays bounded.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn no_user_stalls_the_server_through_its_socket() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let up = Up::start(&fx, &["--slots", "2"]);
    let before = up.rss_kb();
    let deep = "(".repeat(4000) + "a" + &")".repeat(4000);
    let out = as_nobody(&fx, &["run", "-r", &deep, "--", "true"]);
    assert!(
        stderr(&out).contains("nested deeper than 32 levels"),
        "{}",
        text(&out)
    );
    let long = "a ".repeat(50_000);
    let out = as_nobody(&fx, &["run", "-r", &long, "--", "true"]);
    assert!(
        stderr(&out).contains("longer than the 8192 accepted"),
        "{}",
        text(&out)
    );
    let abuse = r#"
import socket, sys
path = sys.argv[1]
def conn():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s
def status(s):
    try:
        return s.recv(64).split(b" ")[1].decode()
    except Exception as e:
        return "none (%s)" % e
s = conn()
s.sendall(b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 262144000\r\n\r\n")
print("huge body:", status(s), flush=True)
s = conn()
try:
    for _ in range(1000):
        s.sendall(b"a" * 1024)
except OSError:
    pass
print("endless line:", status(s), flush=True)
held, refused = [], 0
for _ in range(2000):
    s = conn()
    held.append(s)
print("past the cap:", status(s), flush=True)
print("holding", len(held), flush=True)
sys.stdin.read()
"#;
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", abuse])
        .arg(fx.swd.join("berth.sock"))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read what the abuser saw, up to "holding", with the connections still held.
    let mut seen = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(py.stdout.take().unwrap());
        while !seen.contains("holding") {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
        }
    }
    assert!(seen.contains("huge body: 413"), "{seen}");
    assert!(seen.contains("endless line: 431"), "{seen}");
    assert!(seen.contains("past the cap: 429"), "{seen}");
    assert!(seen.contains("holding 2000"), "{seen}");
    // nobody's own commands are refused with the reason; another user's run is not held.
    let out = as_nobody(&fx, &["list"]);
    assert!(
        stderr(&out).contains("connections open to the server, the most one user may have"),
        "{}",
        text(&out)
    );
    let out = as_user(&fx, test_user(), &["run", "-w", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = up.rss_kb();
    eprintln!("berth up: {before} kB before the abuse, {after} kB during it");
    assert!(
        after < before + 64 * 1024,
        "the server grew from {before} kB to {after} kB"
    );
    drop(py.stdin.take());
    let _ = wait_status(py, T);
}

/// A process that leaves its job's process group and session (`setsid -f`) ends with the
/// job all the same: every job has a cgroup, and what is left in it is killed at its end;
/// likewise when the job is stopped, and for a container job's hooks.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn no_process_of_a_job_outlives_it() {
    escapes_end_with_their_job("auto");
}

/// The same through the v1 `pids` hierarchy, where a hybrid host has one.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn no_process_of_a_job_outlives_it_with_cgroup_v1() {
    if !std::path::Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        panic!(
            "this host has no cgroup v1 pids hierarchy; run no_process_of_a_job_outlives_it only"
        );
    }
    escapes_end_with_their_job("v1");
}

fn escapes_end_with_their_job(cgroups: &str) {
    need_root!();
    // Sleeps of lengths of their own, so that the two tests at once do not see each other's.
    let n = if cgroups == "v1" { 42 } else { 41 };
    let fx = Fixture::new();
    let enter = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {} SIG({})\n",
            enter.display(),
            enter.display()
        ),
    );
    // One slot: each job runs where the one before left processes that were killed.
    let _up = Up::start(&fx, &["--slots", "1", "--cgroups", cgroups]);
    let escaped = |tag: &str| {
        let out = Command::new("pgrep")
            .args(["-f", &format!("sleep {n}{tag}")])
            .output()
            .unwrap();
        stdout(&out).split_whitespace().count()
    };
    // A job ending on its own, bare and in a container.
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "--",
            "sh",
            "-c",
            &format!("setsid -f sleep {n}71; setsid -f sleep {n}72 & sleep 0.2"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "-r",
            "Container:c1",
            "--",
            "sh",
            "-c",
            &format!("setsid -f sleep {n}73; sleep 0.2"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // A job stopped while it runs.
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--",
            "sh",
            "-c",
            &format!("setsid -f sleep {n}74; touch escaped; exec sleep 300"),
        ],
    );
    let id = stdout(&out).trim().to_string();
    wait_until("the job's escaped process", T, || {
        fx.work.join("escaped").exists()
    });
    assert_eq!(
        escaped("74"),
        1,
        "the escaped process runs while its job does"
    );
    let out = fx.run(&["stop", &id], T);
    assert!(out.status.success(), "{}", text(&out));
    let out = fx.run(&["wait", &id], T);
    assert!(!out.status.success());
    wait_until("no escaped process left", Duration::from_secs(10), || {
        escaped("71") + escaped("72") + escaped("73") + escaped("74") == 0
    });
    // The slot runs jobs as before, bare and in a container.
    for r in [
        &["run", "-w", "--", "true"][..],
        &["run", "-w", "-r", "Container:c1", "--", "true"],
    ] {
        let out = as_nobody(&fx, r);
        assert!(out.status.success(), "{r:?}: {}", text(&out));
    }
}

/// A job runs with its submitter's umask and its log is made with it; another user may
/// not read a job's details or its log through berth (an administrator may).
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_job_keeps_its_umask_and_its_details_to_its_owner() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let with_umask = |mask: &str, args: &[&str]| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("umask {mask}; exec \"$0\" \"$@\""))
            .arg(berth())
            .args(args)
            .current_dir(&fx.work)
            .env("BERTH_SWD", &fx.swd)
            .uid(NOBODY)
            .gid(NOBODY);
        output_within(&mut c, T)
    };
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(fx.work.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let out = with_umask(
        "077",
        &["run", "-w", "--", "sh", "-c", "umask; touch made-1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fx.read_work("berth-1.log"), "0077\n");
    assert_eq!(mode("berth-1.log"), 0o600);
    assert_eq!(mode("made-1"), 0o600);
    let out = with_umask(
        "002",
        &["run", "-w", "--", "sh", "-c", "umask; touch made-2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fx.read_work("berth-2.log"), "0002\n");
    assert_eq!(mode("berth-2.log"), 0o664);
    assert_eq!(mode("made-2"), 0o664);

    let other = test_user();
    for args in [&["info", "1"][..], &["getlog", "1"], &["wait", "1"]] {
        let out = as_user(&fx, other, args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            stderr(&out)
                .contains("job 1 is nobody's: only an administrator may see another user's job"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = fx.run(&["info", "1"], T);
    assert!(out.status.success(), "an administrator may: {}", text(&out));
}

/// `berth run -I` listens on loopback when its taskers are on this host, and serves
/// connections at once: another user's silent connections to its port do not keep the
/// tasker's out.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn silent_connections_do_not_keep_an_interactive_job_from_its_terminal() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "1"]);
    // The one slot is taken until the file `go` exists, so the -I job waits, listening.
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "until [ -e go ]; do sleep 0.05; done",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let mut c = fx.berth(&["run", "-I", "--", "sh", "-c", "echo interactive-ok"]);
    c.uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = c.spawn().unwrap();
    let keep_stdin = run.stdin.take();
    let pid = run.id();
    let mut listening = String::new();
    wait_until("berth run -I to listen", T, || {
        let out = Command::new("ss").args(["-ltnpH"]).output().unwrap();
        listening = stdout(&out)
            .lines()
            .find(|l| l.contains(&format!("pid={pid},")))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap_or_default()
            .to_string();
        !listening.is_empty()
    });
    assert!(
        listening.starts_with("127.0.0.1:"),
        "berth run -I listens on {listening}, not only on loopback"
    );
    // Another user connects three times and says nothing.
    let port = listening.rsplit(':').next().unwrap().to_string();
    let silent = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket, sys; s = [socket.create_connection(('127.0.0.1', int(sys.argv[1]))) for _ in range(3)]; print('connected', flush=True); sys.stdin.read()",
            &port,
        ])
        .uid(test_user())
        .gid(test_user())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut silent = silent;
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(silent.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "connected\n");
    }
    std::fs::write(fx.work.join("go"), "").unwrap();
    let out = wait_output(run, Duration::from_secs(25));
    drop(keep_stdin);
    signal(&silent, libc::SIGKILL);
    let _ = wait_status(silent, T);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("interactive-ok"), "{}", text(&out));
}

/// The job store is root's alone (it holds every job's environment and every interactive
/// job's token), and a listing shows another user's jobs without their details.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn no_user_reads_another_users_job_from_the_store_or_a_listing() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let _up = Up::start(&fx, &["--slots", "2"]);
    let mut c = fx.berth(&["run", "-w", "--", "sh", "-c", "echo done"]);
    c.uid(test_user())
        .gid(test_user())
        .env("SECRET_TOKEN", "hunter2-in-the-env");
    let out = output_within(&mut c, T);
    assert!(out.status.success(), "{}", text(&out));
    for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let p = fx.swd.join(f);
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(
                m.permissions().mode() & 0o077,
                0,
                "{f} is readable by others"
            );
        }
    }
    let out = Command::new("sh")
        .args(["-c", "cat berth.db* 2>&1 | grep -c hunter2 || true"])
        .current_dir(&fx.swd)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).trim(),
        "0",
        "nobody read the store: {}",
        text(&out)
    );
    let out = as_nobody(&fx, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs = &v[0];
    assert_eq!(theirs["user"], "berth-test");
    assert_eq!(theirs["command"], serde_json::json!([]));
    assert_eq!(theirs["dir"], "");
    assert_eq!(theirs["log"], "");
    let out = fx.run(&["list", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["command"][0], "sh", "an administrator sees it all");
}

/// A root hook runs in the job's directory only if the job's owner can enter it: a job
/// of nobody's that names /root as its directory is refused before any hook runs.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn root_hooks_never_run_in_a_directory_the_owner_cannot_enter() {
    need_root!();
    let fx = Fixture::new();
    let marks = fx.root.join("marks");
    std::fs::create_dir(&marks).unwrap();
    let setup = fx.hook(
        "setup.sh",
        &format!("#!/bin/sh\npwd >> {}/setup-ran\n", marks.display()),
    );
    let enter = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "c1",
        &format!(
            "containerHook setup root {s} SIG({s})\ncontainerHook enter user {e} SIG({e})\n",
            s = setup.display(),
            e = enter.display()
        ),
    );
    let _up = Up::start(&fx, &["--slots", "2"]);
    let body = serde_json::json!({
        "jobs": [{"command": ["true"], "dir": "/root", "env": [], "resources": "Container:c1",
                  "log": fx.work.join("r.log").to_str().unwrap(), "name": null}],
        "array": null
    })
    .to_string();
    let out = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(fx.swd.join("berth.sock"))
        .args(["-X", "POST", "-d", &body, "http://berth/v1/jobs"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("\"ids\":[1]"), "{}", text(&out));
    let out = fx.run(&["wait", "1"], T);
    assert!(!out.status.success());
    let v = info(&fx, "1");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("the job's directory /root: nobody cannot enter it"),
        "{v}"
    );
    assert!(
        !marks.join("setup-ran").exists(),
        "a root hook ran in /root for nobody"
    );
}

/// Large bodies are parsed two at a time, from all users: sixteen submissions of 8 MiB of
/// tiny JSON strings at once (each parsed takes many times its size) leave the server's
/// peak memory bounded.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn large_bodies_at_once_do_not_blow_the_servers_memory() {
    need_root!();
    let fx = Fixture::new();
    let up = Up::start(&fx, &["--slots", "2"]);
    let peak = || {
        std::fs::read_to_string(format!("/proc/{}/status", up.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    let before = peak();
    let flood = r#"
import socket, sys, threading
path = sys.argv[1]
n = (8 * 1024 * 1024 - 200) // 3
body = b'{"jobs":[{"command":[' + b'"",' * n + b'""],"dir":"rel","env":[]}],"array":null}'
answers = []
def one():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"POST /v1/jobs HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    answers.append(s.recv(64).split(b" ")[1])
ts = [threading.Thread(target=one) for _ in range(16)]
[t.start() for t in ts]
[t.join() for t in ts]
print(sorted(set(answers)))
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", flood])
        .arg(fx.swd.join("berth.sock"))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("b'400'"), "{}", text(&out));
    let after = peak();
    eprintln!("berth up's peak memory: {before} kB before, {after} kB after");
    assert!(
        after < before + 400 * 1024,
        "the server's peak memory grew from {before} kB to {after} kB"
    );
}
