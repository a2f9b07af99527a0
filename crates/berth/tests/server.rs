//! `berth up` and the job commands, with the real binary: who runs what, who may stop
//! what, what is said at submission, arrays, and nothing lost when the server is killed.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_job_runs_as_its_submitter_and_exits_with_its_status() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "-J",
            "hello",
            "--",
            "sh",
            "-c",
            "echo I am $(id -u) in $(pwd); exit 4",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let log = fx.read_work("berth-1.log");
    assert_eq!(log, format!("I am 65534 in {}\n", fx.work.display()));
    let out = fx.run(&["info", "--json", "1"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "Failed");
    assert_eq!(v["reason"], "exit status 4");
    assert_eq!(v["user"], "nobody");
    assert_eq!(v["name"], "hello");
    assert_eq!(v["slot"], 0);
    // A job submitted by root is refused at submission, with the reason; nothing is
    // created.
    let out = fx.run(&["run", "-w", "--", "true"], T);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("a job never runs as root: submit it as the user"),
        "{}",
        text(&out)
    );
    let out = fx.run(&["info", "2"], T);
    assert!(stderr(&out).contains("no job 2"), "{}", text(&out));
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn only_the_owner_or_an_administrator_may_stop_a_job() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    // Another user's job: queued forever (no tasker has GPU), so it stays stoppable.
    let other = test_user();
    let out = as_user(&fx, other, &["run", "-r", "GPU#1", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("no tasker can ever satisfy \"GPU#1\""),
        "{}",
        text(&out)
    );
    let theirs = stdout(&out).trim().to_string();
    let out = fx.run(&["info", &theirs], T);
    assert!(
        stdout(&out).contains("why it waits: no tasker can ever satisfy"),
        "{}",
        text(&out)
    );
    let out = as_nobody(&fx, &["stop", &theirs]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("only an administrator may stop another user's job"),
        "{}",
        text(&out)
    );
    // nobody's running job, stopped by root: SIGTERM reaches it.
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 7' TERM; touch started; while :; do sleep 0.1; done",
        ],
    );
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    let out = fx.run(&["stop", &job], T);
    assert!(out.status.success(), "{}", text(&out));
    let out = fx.run(&["wait", &job], T);
    assert!(
        stderr(&out).contains(&format!("job {job} Failed (stopped by request)")),
        "{}",
        text(&out)
    );
    assert!(fx
        .read_work(&format!("berth-{job}.log"))
        .contains("got TERM"));
    // a queued job stopped before it starts
    let out = fx.run(&["stop", &theirs], T);
    assert!(
        stdout(&out).contains("stopped before it started"),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn arrays_substitute_their_indices() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "4"]);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "--array",
            "3-5",
            "--",
            "sh",
            "-c",
            "echo @INDEX@ @JOBID@ @ARRAYID@ > out.@INDEX@",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The array's id is one no job has: jobs 2 to 4 make array 1.
    assert_eq!(fx.read_work("out.3"), "3 2 1\n");
    assert_eq!(fx.read_work("out.5"), "5 4 1\n");
    let out = fx.run(&["list", "--json", "--state", "Done"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    let out = as_nobody(&fx, &["run", "--array", "5-3", "--", "true"]);
    assert!(stderr(&out).contains("5 is above 3"), "{}", text(&out));
    let out = as_nobody(&fx, &["run", "-r", "CORES/", "--", "true"]);
    assert!(
        stderr(&out).contains("needs a whole number after '/'"),
        "{}",
        text(&out)
    );
    let out = fx.run(&["taskers", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["slots"], 4);
    assert!(v[0]["resources"].as_str().unwrap().contains("SLOTS/4"));
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn nothing_accepted_is_lost_when_the_server_is_killed() {
    need_root!();
    let fx = Fixture::new();
    let mut up = Up::start(&fx, &["--slots", "4"]);
    // Five submitters of 300 jobs each, as nobody, while the server is killed.
    let lines: String = (0..300)
        .map(|i| format!("echo $BERTH_TEST_MARK {i} >> ran.txt\n"))
        .collect();
    std::fs::write(fx.work.join("jobs.txt"), &lines).unwrap();
    let mut accepted: Vec<u64> = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..5 {
        let mut c = Command::new(berth());
        c.args(["run", "-f", "jobs.txt"])
            .current_dir(&fx.work)
            .env("BERTH_SWD", &fx.swd)
            .env("BERTH_TEST_MARK", "m")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        handles.push(c.spawn().unwrap());
    }
    std::thread::sleep(Duration::from_millis(150));
    up.kill9();
    for h in handles {
        let out = wait_output(h, T);
        if out.status.success() {
            let s = stdout(&out);
            let (a, b) = s
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            accepted.extend(a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap());
        }
    }
    // Start again: every accepted job is there and ends; those queued run to Done.
    let _up = Up::start(&fx, &["--slots", "4"]);
    let out = fx.run(&["list", "--json", "--limit", "100000"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let known: std::collections::HashSet<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    for id in &accepted {
        assert!(known.contains(id), "accepted job {id} is lost");
    }
    let all: Vec<String> = known.iter().map(|i| i.to_string()).collect();
    let mut args = vec!["wait"];
    args.extend(all.iter().map(String::as_str));
    let out = fx.run(&args, Duration::from_secs(300));
    // One line per job as it ends, on standard error.
    let waited = stderr(&out);
    let ends: Vec<&str> = waited
        .lines()
        .filter(|l| l.starts_with("berth: job "))
        .collect();
    assert_eq!(ends.len(), known.len(), "{waited}");
    for line in &ends {
        assert!(
            line.contains(" Done after ") || line.contains(" Failed (lost)"),
            "{line}"
        );
    }
    // None ran twice: each job appended one line; the lines never exceed the jobs.
    let ran = fx.read_work("ran.txt");
    let done = ends.iter().filter(|l| l.contains(" Done after ")).count();
    assert!(
        ran.lines().count() >= done,
        "{} lines for {done} jobs Done",
        ran.lines().count()
    );
    assert!(ran.lines().count() <= known.len(), "a job ran twice");
}

/// What a job leaves running when its command ends is ended with it, and its log says so;
/// what ends by itself a moment later (a container runtime's monitor) is neither killed nor
/// counted (see the container test above, which ran into that under load).
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn what_a_job_leaves_running_is_ended_and_said() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let left = format!("sleep 301.{}", std::process::id());
    let brief = format!("sleep 0.2{}", std::process::id() % 10);
    // Sessions of their own: out of the job's process group, which ends with it anyway.
    let script = format!(
        "setsid {left} >/dev/null 2>&1 & setsid {brief} >/dev/null 2>&1 & sleep 0.1; echo started"
    );
    let out = as_nobody(&fx, &["run", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let job = stdout(&out).trim().to_string();
    let out = fx.run(&["wait", "--timeout", "30", &job], T);
    assert!(out.status.success(), "{}", text(&out));
    let log = fx.read_work(&format!("berth-{job}.log"));
    assert_eq!(
        log,
        format!("started\n[berth] job {job}: ended 1 process(es) it left running\n"),
        "the brief one ended by itself and is not counted"
    );
    assert_eq!(nobodys(&left), [0u32; 0], "left running");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_container_job_runs_through_berth_up() {
    need_root!();
    let fx = Fixture::new();
    image();
    let _up = Up::start(&fx, &["--slots", "2", "--examples", "--project", "t-up"]);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "-r",
            "Container:docker RAM/64",
            "--",
            "sh",
            "-c",
            "id -u; cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fx.read_work("berth-1.log"),
        format!("65534\n{}\n", 64 * 1024 * 1024)
    );
    let out = fx.run(&["containers", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bwrap", "docker", "podman-split"]);
    let out = as_nobody(&fx, &["run", "-r", "Container:nope", "--", "true"]);
    assert!(
        stderr(&out).contains("no tasker can ever satisfy \"Container:nope\""),
        "{}",
        text(&out)
    );
    assert!(podman_containers("t-up").is_empty());
}

/// A `berth server --listen` and a `berth tasker`, each a process of its own.
struct Split {
    server: Option<Child>,
    tasker: Option<Child>,
    fx_swd: std::path::PathBuf,
    grace: String,
}

fn spawn_quiet(args: &[&str], swd: &std::path::Path) -> Child {
    Command::new(berth())
        .args(args)
        .env("BERTH_SWD", swd)
        .env("CONTAINERS_CONF", containers_conf())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Split {
    /// The server alone (a grace of 30 s), for a test that starts its taskers itself.
    fn server_only(fx: &Fixture) -> Split {
        let mut s = Split {
            server: None,
            tasker: None,
            fx_swd: fx.swd.clone(),
            grace: "30".into(),
        };
        s.start_server("127.0.0.1:0");
        s
    }

    fn start(fx: &Fixture, slots: &str) -> Split {
        Split::start_with_grace(fx, slots, "2")
    }

    fn start_with_grace(fx: &Fixture, slots: &str, grace: &str) -> Split {
        let mut s = Split {
            server: None,
            tasker: None,
            fx_swd: fx.swd.clone(),
            grace: grace.to_string(),
        };
        s.start_server("127.0.0.1:0");
        s.start_tasker(slots);
        s
    }

    fn start_server(&mut self, addr: &str) {
        let _ = std::fs::remove_file(self.fx_swd.join("listen.addr"));
        self.server = Some(spawn_quiet(
            &["server", "--listen", addr, "--tasker-grace", &self.grace],
            &self.fx_swd,
        ));
        let sock = self.fx_swd.join("berth.sock");
        wait_until("the server", T, || {
            self.fx_swd.join("listen.addr").exists()
                && std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    fn start_tasker(&mut self, slots: &str) {
        // A project of its own (the fixture's directory name), so that the container
        // names of tests running at once never meet.
        let project = self
            .fx_swd
            .parent()
            .and_then(|p| p.file_name())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        self.tasker = Some(spawn_quiet(
            &[
                "tasker",
                "--name",
                "t1",
                "--slots",
                slots,
                "--project",
                &project,
                "--stop-jobs",
            ],
            &self.fx_swd,
        ));
        wait_for_tasker(&self.fx_swd, "t1");
    }

    /// The tasker's project: the fixture's directory name, which its containers' names
    /// start with.
    fn project(&self) -> String {
        self.fx_swd
            .parent()
            .and_then(|p| p.file_name())
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn addr(&self) -> String {
        std::fs::read_to_string(self.fx_swd.join("listen.addr"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn kill9(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        for c in [self.tasker.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            signal(&c, libc::SIGTERM);
            let _ = wait_status(c, T);
        }
    }
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_killed_server_loses_nothing_and_runs_nothing_twice() {
    need_root!();
    let fx = Fixture::new();
    let mut split = Split::start(&fx, "8");
    let lines: String = (0..1000)
        .map(|i| format!("echo {i} >> ran.txt\n"))
        .collect();
    std::fs::write(fx.work.join("jobs.txt"), lines).unwrap();
    std::os::unix::fs::chown(fx.work.join("jobs.txt"), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut subs = Vec::new();
    for _ in 0..2 {
        let mut c = Command::new(berth());
        c.args(["run", "-f", "jobs.txt"])
            .current_dir(&fx.work)
            .env("BERTH_SWD", &fx.swd)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        subs.push(c.spawn().unwrap());
    }
    // Kill the server while jobs are being submitted and running.
    wait_until("jobs to run", T, || {
        fx.read_work("ran.txt").lines().count() > 20
    });
    let addr = split.addr();
    Split::kill9(&mut split.server);
    let mut accepted = Vec::new();
    for s in subs {
        let out = wait_output(s, T);
        if out.status.success() {
            let so = stdout(&out);
            let (a, b) = so
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            accepted.extend(a..=b);
        }
    }
    split.start_server(&addr);
    let out = fx.run(&["list", "--json", "--limit", "100000"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].to_string())
        .collect();
    for id in &accepted {
        assert!(ids.contains(&id.to_string()), "accepted job {id} is lost");
    }
    let mut args = vec!["wait", "--timeout", "240"];
    args.extend(ids.iter().map(String::as_str));
    let out = fx.run(&args, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "not every job is Done:\n{}",
        stderr(&out)
            .lines()
            .filter(|l| !l.contains(" Done after "))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let ran = fx.read_work("ran.txt");
    assert_eq!(ran.lines().count(), ids.len(), "each job ran exactly once");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_killed_tasker_loses_its_jobs_and_tears_down_when_it_returns() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["podman-split"]);
    let mut split = Split::start(&fx, "2");
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-r",
            "Container:podman-split",
            "--",
            "sh",
            "-c",
            "touch started; sleep 300",
        ],
    );
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    assert_eq!(
        podman_containers(&split.project())
            .iter()
            .filter(|n| n.ends_with("-podman-split-0"))
            .count(),
        1
    );
    Split::kill9(&mut split.tasker);
    let out = fx.run(&["wait", "--timeout", "30", &job], T);
    assert!(
        stderr(&out).contains(&format!("job {job} Failed (lost)")),
        "{}",
        text(&out)
    );
    // Its return finishes the cleanup and teardown it owed.
    split.start_tasker("2");
    wait_until("the container to be removed", T, || {
        podman_containers(&split.project())
            .iter()
            .all(|n| !n.ends_with("-podman-split-0"))
    });
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_killed_tasker_back_in_time_takes_its_container_job_over_and_finishes_it() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["podman-split"]);
    let mut split = Split::start_with_grace(&fx, "2", "60");
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-r",
            "Container:podman-split",
            "--",
            "sh",
            "-c",
            "touch started; while [ ! -e go ]; do sleep 0.1; done; echo finished as $(id -u)",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    Split::kill9(&mut split.tasker);
    split.start_tasker("2");
    let out = fx.run(&["info", "--json", &job], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "Running", "{v}");
    std::fs::write(fx.work.join("go"), "").unwrap();
    let out = fx.run(&["wait", "--timeout", "60", &job], Duration::from_secs(90));
    assert!(
        stderr(&out).contains(&format!("job {job} Done")),
        "{}\n{}",
        text(&out),
        fx.read_work(&format!("berth-{job}.log"))
    );
    let log = fx.read_work(&format!("berth-{job}.log"));
    assert!(log.contains("finished as 65534"), "{log}");
    assert!(
        log.contains("a new tasker process took the job over"),
        "{log}"
    );
    // Its cleanup and teardown ran: the container is gone.
    wait_until("the container to be removed", T, || {
        podman_containers(&split.project())
            .iter()
            .all(|n| !n.ends_with("-podman-split-0"))
    });
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_tasker_without_the_secret_is_refused_and_a_client_cannot_claim_another_user() {
    need_root!();
    let fx = Fixture::new();
    let _split = Split::start(&fx, "2");
    let bad = fx.root.join("bad.secret");
    std::fs::write(&bad, "not the secret").unwrap();
    chmod(&bad, 0o600);
    let out = fx.run(
        &[
            "tasker",
            "--name",
            "evil",
            "--secret",
            bad.to_str().unwrap(),
        ],
        T,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not hold the same secret")
            && stderr(&out).contains("cluster secret (SWD/cluster.secret)"),
        "{}",
        text(&out)
    );
    // The user is the socket's peer, whatever the environment says.
    let mut c = fx.berth(&["run", "-w", "--", "sh", "-c", "id -u"]);
    c.uid(NOBODY)
        .gid(NOBODY)
        .env("USER", "root")
        .env("LOGNAME", "root");
    let out = output_within(&mut c, T);
    assert!(out.status.success(), "{}", text(&out));
    let out = fx.run(&["info", "--json", "1"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["user"], "nobody");
    assert_eq!(v["uid"], NOBODY);
    assert_eq!(fx.read_work("berth-1.log"), "65534\n");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn the_tasker_class_table_is_read_again_when_it_changes() {
    need_root!();
    let fx = Fixture::new();
    let e = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "c1",
        &format!("containerHook enter user {e} SIG({e})\n", e = e.display()),
    );
    fx.cfg(
        "c2",
        &format!("containerHook enter user {e} SIG({e})\n", e = e.display()),
    );
    let _up = Up::start(&fx, &["--slots", "2", "--containers", "c1"]);
    let out = fx.run(&["containers", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "c1");
    assert_eq!(v[1]["name"], "c2");
    assert!(
        v[1]["refused_by"][0][1]
            .as_str()
            .unwrap()
            .contains("not in this tasker's --containers list"),
        "{v}"
    );
    let out = as_nobody(&fx, &["run", "-r", "License:spice", "--", "true"]);
    assert!(
        stderr(&out).contains("no tasker can ever satisfy \"License:spice\""),
        "{}",
        text(&out)
    );
    let job = stdout(&out).trim().to_string();
    std::fs::write(
        fx.swd.join("taskerClass.table"),
        "# site resources\n(default): License:spice/1 GPU#2\n",
    )
    .unwrap();
    let out = fx.run(&["wait", "--timeout", "30", &job], T);
    assert!(out.status.success(), "{}", text(&out));
    let out = fx.run(&["taskers", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let res = v[0]["resources"].as_str().unwrap();
    assert!(
        res.contains("License:spice/1") && res.contains("GPU#2") && res.contains("Container:c1"),
        "{res}"
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_restarted_tasker_takes_over_a_killed_runs_plain_jobs_and_ends_its_keepers_orphans() {
    need_root!();
    let fx = Fixture::new();
    let mut split = Split::start(&fx, "2");
    // A command line of this test's own, to find the job's process by.
    let sleep = format!("sleep 313.{}", std::process::id());
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--",
            "sh",
            "-c",
            &format!("touch started; exec {sleep}"),
        ],
    );
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    let alive = || !nobodys(&sleep).is_empty();
    // The tasker killed: its keeper keeps the job, the next process takes it over.
    Split::kill9(&mut split.tasker);
    assert!(alive(), "the job should outlive its killed tasker");
    split.start_tasker("2");
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(), "the job was ended, not taken over");
    let v: serde_json::Value =
        serde_json::from_slice(&fx.run(&["info", "--json", &job], T).stdout).unwrap();
    assert_eq!(v["state"], "Running", "{v}");
    // The tasker and its keeper killed: the job is init's, its status gone; the next
    // tasker ends it (by the slot's record), and it is lost.
    Split::kill9(&mut split.tasker);
    let keeper = fx.swd.join("tasker").join("t1");
    let out = Command::new("pkill")
        .args([
            "-9",
            "-f",
            &format!("berth keeper --state {}", keeper.display()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "no keeper to kill: {}", text(&out));
    assert!(alive(), "the job should outlive its tasker and keeper");
    split.start_tasker("2");
    wait_until("the orphaned job to be ended", T, || !alive());
    let out = fx.run(&["wait", "--timeout", "30", &job], T);
    assert!(
        stderr(&out).contains(&format!("job {job} Failed (lost)")),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn getlog_and_list_filters() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-J",
            "slow",
            "--",
            "sh",
            "-c",
            "echo one; sleep 0.5; echo two",
        ],
    );
    let job = stdout(&out).trim().to_string();
    // -f follows the log until the job ends
    let mut c = fx.berth(&["getlog", "-f", &job]);
    c.uid(NOBODY).gid(NOBODY);
    let out = output_within(&mut c, T);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "one\ntwo\n");
    let out = as_nobody(&fx, &["run", "-w", "-J", "other", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let ids = |args: &[&str]| -> Vec<u64> {
        let mut a = vec!["list", "--json"];
        a.extend_from_slice(args);
        let out = fx.run(&a, T);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&["--name", "slow"]), [1]);
    assert_eq!(ids(&["--user", "nobody"]), [2, 1]);
    assert_eq!(ids(&["--user", "root"]), Vec::<u64>::new());
    assert_eq!(ids(&["--state", "Done"]), [2, 1]);
    let out = fx.run(&["list", "--state", "Sleeping"], T);
    assert!(
        stderr(&out).contains("unknown state \"Sleeping\""),
        "{}",
        text(&out)
    );
    let out = fx.run(&["getlog", "99"], T);
    assert!(stderr(&out).contains("no job 99"), "{}", text(&out));
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_tasker_takes_no_job_from_a_server_that_cannot_prove_the_secret() {
    need_root!();
    use std::io::{BufRead, BufReader, Write};
    let fx = Fixture::new();
    std::fs::write(fx.swd.join("cluster.secret"), "the real secret").unwrap();
    chmod(&fx.swd.join("cluster.secret"), 0o600);
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap().to_string();
    let marker = fx.work.join("pwned");
    let job = format!(
        "{{\"Run\":{{\"job\":1,\"slot\":0,\"uid\":65534,\"gid\":65534,\"user\":\"nobody\",\"command\":[\"touch\",\"{}\"],\"dir\":\"/\",\"env\":[],\"resources\":null,\"log\":\"/dev/null\"}}}}\n",
        marker.display()
    );
    let server = std::thread::spawn(move || {
        let (conn, _) = fake.accept().unwrap();
        let mut w = conn.try_clone().unwrap();
        // The right protocol version, then a handshake it cannot complete without the
        // secret (bytes of its own instead), then a job.
        w.write_all(b"berth-channel 1\n").unwrap();
        let mut r = BufReader::new(conn);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut noise = [0u8; 2];
        std::io::Read::read_exact(&mut r, &mut noise).unwrap();
        let mut first = vec![0u8; u16::from_be_bytes(noise) as usize];
        std::io::Read::read_exact(&mut r, &mut first).unwrap();
        let mut fake_reply = vec![0u8, 48];
        fake_reply.extend_from_slice(&[7u8; 48]);
        let _ = w.write_all(&fake_reply);
        let _ = w.write_all(job.as_bytes());
    });
    let out = fx.run(&["tasker", "--name", "t9", "--server", &addr], T);
    server.join().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("does not hold the same secret"),
        "{}",
        text(&out)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marker.exists(),
        "the tasker ran a job from an unproven server"
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn the_tasker_definitions_in_the_swd_give_resources_and_slots() {
    need_root!();
    let fx = Fixture::new();
    std::fs::create_dir_all(&fx.swd).unwrap();
    let defs = fx.swd.join("taskers.tcl");
    std::fs::write(
        &defs,
        "# as Accelerator writes them\n\
         vtk_tasker_set_defaults -resources \"@STD@ License:spice/1\"\n\
         vtk_tasker_define other -CPUS 8\n\
         vtk_tasker_define thishost -name t1 -resources \"@STD@ big_memory\" -CPUS 3 -coeff 2.0\n",
    )
    .unwrap();
    let _up = Up::start(&fx, &["--name", "t1"]);
    let out = fx.run(&["taskers", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let res = v[0]["resources"].as_str().unwrap().to_string();
    assert_eq!(v[0]["slots"], 3, "{v}");
    assert!(
        res.contains("big_memory") && res.contains("CORES/3"),
        "{res}"
    );
    // The define's -resources replaced the default's, as in Accelerator.
    assert!(!res.contains("License:spice"), "{res}");
    let out = as_nobody(
        &fx,
        &["run", "-w", "-r", "big_memory CORES/3", "--", "true"],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Read again when it changes.
    let out = as_nobody(&fx, &["run", "-r", "GPU/2", "--", "true"]);
    assert!(
        stderr(&out).contains("no tasker can ever satisfy"),
        "{}",
        text(&out)
    );
    let job = stdout(&out).trim().to_string();
    std::fs::write(
        &defs,
        "vtk_tasker_define thishost -name t1 -resources \"GPU/2\" -CPUS 3\n",
    )
    .unwrap();
    let out = fx.run(&["wait", "--timeout", "30", &job], T);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_tasker_definition_berth_cannot_honour_stops_the_start_with_its_line() {
    need_root!();
    let fx = Fixture::new();
    std::fs::create_dir_all(&fx.swd).unwrap();
    std::fs::write(
        fx.swd.join("taskers.tcl"),
        "foreach h {a b} {\n  vtk_tasker_define $h\n}\n",
    )
    .unwrap();
    let mut c = Command::new(berth());
    c.args(["up", "--swd"]).arg(&fx.swd).stdin(Stdio::null());
    let out = output_within(&mut c, T);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:1: \"foreach\": berth knows only vtk_tasker_define",
            fx.swd.join("taskers.tcl").display()
        )),
        "{err}"
    );
}

/// `berth run -I ARGS` as nobody, its standard input fed by `feed` (bytes after pauses).
fn interactive(
    fx: &Fixture,
    args: &[&str],
    feed: &'static [(u64, &'static [u8])],
) -> std::process::Output {
    let mut c = fx.berth(&[&["run", "-I"], args].concat());
    c.uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        for (ms, bytes) in feed {
            std::thread::sleep(Duration::from_millis(*ms));
            if input.write_all(bytes).is_err() {
                return;
            }
        }
        // and keep stdin open until the job is over
        std::thread::sleep(Duration::from_secs(60));
    });
    wait_output(child, T)
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn an_interactive_job_has_the_submitters_terminal() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let out = interactive(
        &fx,
        &[
            "--",
            "sh",
            "-c",
            "tty; read x; echo got $x as $(id -u); exit 3",
        ],
        &[(300, b"hello\n")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let so = stdout(&out);
    assert!(so.contains("/dev/pts/"), "{so}");
    assert!(so.contains("got hello as 65534"), "{so}");
    // The output is in its log too.
    let log = fx.read_work("berth-1.log");
    assert!(log.contains("got hello as 65534\n"), "{log}");
    // ^C reaches the job as SIGINT, through its terminal.
    let out = interactive(
        &fx,
        &[
            "--",
            "sh",
            "-c",
            "echo ready; sleep 100; echo not interrupted",
        ],
        &[(500, b"\x03")],
    );
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(!stdout(&out).contains("not interrupted"), "{}", text(&out));
    assert!(
        stderr(&out).contains("killed by signal 2 (SIGINT)"),
        "{}",
        text(&out)
    );
    // Not with an array.
    let out = interactive(&fx, &["--array", "2", "--", "true"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("-I runs one job"), "{}", text(&out));
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn an_interactive_container_job_gets_the_terminal_in_its_container() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["bwrap", "docker", "podman-split"]);
    let _up = Up::start(&fx, &["--slots", "2", "--project", "t-it"]);
    for name in ["bwrap", "docker", "podman-split"] {
        let res = format!("Container:{name}");
        let out = interactive(
            &fx,
            &[
                "-r",
                &res,
                "--",
                "sh",
                "-c",
                "test -t 0 && echo a terminal; read x; echo got $x; exit 5",
            ],
            &[(1500, b"hi there\n")],
        );
        assert_eq!(out.status.code(), Some(5), "{name}: {}", text(&out));
        let so = stdout(&out);
        assert!(
            so.contains("a terminal") && so.contains("got hi there"),
            "{name}: {so}"
        );
    }
    assert!(podman_containers("t-it").is_empty());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_stopped_job_that_ignores_sigterm_is_killed_after_the_grace() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2", "--kill-grace", "1"]);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "trap 'echo ignored TERM' TERM; touch started; while :; do sleep 0.1; done",
        ],
    );
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    let out = fx.run(&["stop", &job], T);
    assert!(out.status.success(), "{}", text(&out));
    let out = fx.run(&["wait", "--timeout", "30", &job], T);
    assert!(
        stderr(&out).contains(&format!("job {job} Failed (stopped by request)")),
        "{}",
        text(&out)
    );
    let log = fx.read_work(&format!("berth-{job}.log"));
    assert!(log.contains("ignored TERM"), "{log}");
    let out = fx.run(&["info", "--json", &job], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // SIGKILL, after SIGTERM was ignored for the grace.
    assert_eq!(v["exit_code"], 137, "{v}");
    assert!(
        nobodys("ignored TERM").is_empty(),
        "the job's group was not ended"
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn killing_an_interactive_berth_run_stops_its_job() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let mut c = fx.berth(&["run", "-I", "--", "sh", "-c", "touch started; sleep 200"]);
    c.uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    signal(&child, libc::SIGTERM);
    let out = wait_output(child, T);
    // The job's own status: its shell was ended by the stop's SIGTERM.
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert!(
        stderr(&out).contains("Failed (stopped by request)"),
        "{}",
        text(&out)
    );
}

/// A clean stop (SIGTERM, without --stop-jobs) leaves a running container job running:
/// the next `berth up` takes it over, and its cleanup and teardown run once it ends.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_stopped_berth_up_leaves_its_container_job_to_the_next() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["docker"]);
    let args = ["--slots", "2", "--project", "t-upstop"];
    let mut up = Up::start_keeping(&fx, &args);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-r",
            "Container:docker",
            "--",
            "sh",
            "-c",
            "touch started; while [ ! -e go ]; do sleep 0.1; done; echo finished; exit 4",
        ],
    );
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    up.stop();
    assert!(
        !podman_containers("t-upstop").is_empty(),
        "the container went with the tasker"
    );
    let _up = Up::start(&fx, &args);
    std::fs::write(fx.work.join("go"), "").unwrap();
    let _ = fx.run(&["wait", "--timeout", "60", &job], Duration::from_secs(90));
    let out = fx.run(&["info", "--json", &job], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        v["reason"],
        "exit status 4",
        "{v}\n{}",
        fx.read_work(&format!("berth-{job}.log"))
    );
    wait_until("the container to be removed", T, || {
        podman_containers("t-upstop").is_empty()
    });
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_killed_berth_up_takes_its_container_job_over_when_started_again() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["docker"]);
    let args = ["--slots", "2", "--project", "t-upkill"];
    let mut up = Up::start(&fx, &args);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-r",
            "Container:docker",
            "--",
            "sh",
            "-c",
            "touch started; while [ ! -e go ]; do sleep 0.1; done; echo finished",
        ],
    );
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    up.kill9();
    drop(up);
    let _up = Up::start(&fx, &args);
    std::fs::write(fx.work.join("go"), "").unwrap();
    let out = fx.run(&["wait", "--timeout", "60", &job], Duration::from_secs(90));
    assert!(
        stderr(&out).contains(&format!("job {job} Done")),
        "{}\n{}",
        text(&out),
        fx.read_work(&format!("berth-{job}.log"))
    );
    assert!(fx
        .read_work(&format!("berth-{job}.log"))
        .contains("finished"));
    wait_until("the container to be removed", T, || {
        podman_containers("t-upkill").is_empty()
    });
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn an_interactive_job_ends_even_if_something_it_left_holds_the_terminal() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    // setsid puts the sleep out of the job's group: it outlives the job, terminal open.
    let out = interactive(
        &fx,
        &["--", "sh", "-c", "setsid sleep 30 & echo left; exit 4"],
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(stdout(&out).contains("left"), "{}", text(&out));
    let _ = Command::new("pkill")
        .args(["-u", "nobody", "-f", "^sleep 30$"])
        .status();
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn an_interactive_job_follows_the_size_of_the_users_terminal() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    // berth run's own terminal: a pseudo-terminal of 30 by 100 that the test types into.
    let (master, slave) = berth_sys::pty::openpty(30, 100).unwrap();
    let mut c = fx.berth(&[
        "run",
        "-I",
        "--",
        "sh",
        "-c",
        "trap 'stty size' WINCH; stty size; while :; do sleep 0.1; done",
    ]);
    c.uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let child = c.spawn().unwrap();
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut keyboard = std::fs::File::from(master.try_clone().unwrap());
    {
        let screen = screen.clone();
        let mut m = std::fs::File::from(master.try_clone().unwrap());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let shows = |what: &str| screen.lock().unwrap().contains(what);
    wait_until("the job's first size", T, || shows("30 100"));
    // The user's window grows: the terminal says so to berth run, which passes it on.
    berth_sys::pty::set_window_size(&master, 40, 120).unwrap();
    signal(&child, libc::SIGWINCH);
    wait_until("the job to see the new size", T, || shows("40 120"));
    use std::io::Write;
    keyboard.write_all(b"\x03").unwrap();
    let status = wait_status(child, T);
    assert_eq!(status.code(), Some(130), "{}", screen.lock().unwrap());
}

/// What can never run, or what a user may not ask, is refused at submission with the
/// reason and a non-zero exit, and nothing is created (SPEC §8, §9).
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn refused_at_submission_with_the_reason_and_nothing_created() {
    need_root!();
    let fx = Fixture::new();
    let enter = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {} SIG({})\ncontainerLimit CORES 1 2\ncontainerLimit RAM 100 1000\n",
            enter.display(),
            enter.display()
        ),
    );
    let _up = Up::start(
        &fx,
        &[
            "--slots",
            "4",
            "--max-jobs-per-submission",
            "50",
            "--max-unfinished-per-user",
            "60",
        ],
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "-r", "Container:c1 CORES/3", "--", "true"],
            "container c1: the job asks for CORES 3 but",
        ),
        (
            &[
                "run",
                "-r",
                "(Container:c1 | Container:c2) RAM/4000",
                "--",
                "true",
            ],
            "container c1: the job asks for RAM 4000",
        ),
        (
            &["run", "-r", "Container:c1 Container:c2", "--", "true"],
            "the request needs both Container:c1 and Container:c2; a job runs in one container",
        ),
        (
            &["run", "--priority", "5", "--", "true"],
            "priority 5: only an administrator may set a priority above 0",
        ),
        (
            &["run", "--array", "51", "--", "true"],
            "the submission makes 51 jobs, above the limit of 50 jobs per submission",
        ),
    ];
    for (args, want) in cases {
        let out = as_nobody(&fx, args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", text(&out));
    }
    let out = fx.run(&["run", "--", "true"], T);
    assert!(
        stderr(&out).contains("a job never runs as root"),
        "{}",
        text(&out)
    );
    let out = fx.run(&["list", "--json"], T);
    assert_eq!(stdout(&out).trim(), "[]", "nothing was created");
    // The per-user limit counts unfinished jobs: 40 that wait forever, then 30 more pass it,
    // while another user is not held back.
    let out = as_nobody(&fx, &["run", "--array", "40", "-r", "GPU", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = as_nobody(&fx, &["run", "--array", "30", "-r", "GPU", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "user nobody has 40 unfinished jobs, and 30 more would pass the limit of 60 per user"
        ),
        "{}",
        text(&out)
    );
    chmod(&fx.work, 0o1777);
    let out = as_user(&fx, test_user(), &["run", "-w", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    // A priority below 0 is anyone's, and an administrator may set one above.
    let out = as_nobody(&fx, &["run", "--priority", "-3", "-r", "GPU", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A tasker that falls silent without closing its connection (frozen with SIGSTOP, as a
/// hung host would be) is noticed by the missing heartbeats: past the grace its job is
/// Failed as lost, exactly once; resumed, it rejoins, the server stops the job it no longer
/// counts, and new work runs.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_frozen_tasker_is_noticed_by_its_silence_and_rejoins() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let split = Split::start_with_grace(&fx, "2", "2");
    let out = as_nobody(
        &fx,
        &["run", "--", "sh", "-c", "touch started; exec sleep 3301"],
    );
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    let running = || {
        let out = Command::new("pgrep")
            .args(["-f", "^sleep 3301"])
            .output()
            .unwrap();
        stdout(&out).split_whitespace().count()
    };
    wait_until("the job's sleep", T, || running() == 1);
    let tasker = split.tasker.as_ref().unwrap();
    signal(tasker, libc::SIGSTOP);
    let out = fx.run(&["wait", "--timeout", "40", &job], Duration::from_secs(50));
    let said = text(&out);
    signal(tasker, libc::SIGCONT);
    assert!(said.contains(&format!("job {job} Failed (lost)")), "{said}");
    // Back, it says hello with the job still running; the server stops it.
    wait_until("the lost job's process to be stopped", T, || running() == 0);
    let out = as_nobody(&fx, &["run", "-w", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = fx.run(&["info", "--json", &job], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reason"], "lost");
}

/// Nothing of a job crosses the network in clear: everything the server and a tasker say
/// to each other is captured on the way (a relay between them), and a secret in the job's
/// environment and its command line is not in it.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_jobs_environment_does_not_cross_the_network_in_clear() {
    need_root!();
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let mut split = Split::server_only(&fx);
    // The relay: every byte both ways is kept.
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let server_addr = split.addr();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for c in relay.incoming() {
                let Ok(c) = c else { return };
                let Ok(s) = std::net::TcpStream::connect(&server_addr) else {
                    return;
                };
                for (mut from, mut to) in [(c.try_clone().unwrap(), s.try_clone().unwrap()), (s, c)]
                {
                    let seen = seen.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
    }
    split.tasker = Some(spawn_quiet(
        &[
            "tasker",
            "--name",
            "t1",
            "--slots",
            "2",
            "--server",
            &relay_addr,
        ],
        &fx.swd,
    ));
    wait_for_tasker(&fx.swd, "t1");
    let mut c = fx.berth(&["run", "-w", "--", "sh", "-c", "echo license-$LICENSE_KEY"]);
    c.uid(NOBODY)
        .gid(NOBODY)
        .env("LICENSE_KEY", "s3cr3t-f00d-cafe-4242");
    let out = output_within(&mut c, T);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fx.read_work("berth-1.log"),
        "license-s3cr3t-f00d-cafe-4242\n"
    );
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 1000, "the relay saw {} bytes", seen.len());
    let has = |needle: &[u8]| seen.windows(needle.len()).any(|w| w == needle);
    assert!(
        !has(b"s3cr3t-f00d-cafe-4242"),
        "the secret crossed in clear"
    );
    assert!(!has(b"LICENSE_KEY"), "the environment crossed in clear");
    assert!(!has(b"echo license"), "the command line crossed in clear");
}

/// Unmounts a test's filesystem when dropped, even when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// With the SWD's filesystem full, jobs that end are not dropped nor called lost: the
/// server keeps their ends, says so to whoever submits (503), and writes them once there
/// is room again.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn ends_are_kept_while_the_state_directory_is_full_and_written_after() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    // The SWD on a filesystem of its own, small enough to fill.
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m,mode=0755", "berth-test-swd"])
        .arg(&fx.swd)
        .status()
        .unwrap();
    assert!(st.success());
    let _unmount = Unmount(fx.swd.clone());
    std::fs::create_dir_all(fx.swd.join("containers")).unwrap();
    // Its log on the same filesystem, as a daemon's often is: a log that cannot be
    // written must not take the server down.
    let up = Up::start_logging(
        &fx,
        &["--slots", "4", "-r", "CORES/4"],
        Some(&fx.swd.join("up.log")),
    );
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--array",
            "4",
            "--",
            "sh",
            "-c",
            "until [ -e go ]; do sleep 0.05; done",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let count = |state: &str| {
        let out = fx.run(&["list", "--json", "--state", state], T);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array().map(|a| a.len()).unwrap_or(0)
    };
    wait_until("the four jobs to run", T, || count("Running") == 4);
    // Fill the filesystem to the last byte.
    let filler = fx.swd.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    std::fs::write(fx.work.join("go"), "").unwrap();
    wait_until("the jobs' processes to end", T, || {
        let out = Command::new("pgrep")
            .args(["-f", "until \\[ -e go \\]"])
            .output()
            .unwrap();
        stdout(&out).trim().is_empty()
    });
    // Their ends cannot be written: they are neither Done nor lost yet.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count("Running"), 4);
    assert_eq!(count("Failed"), 0);
    let out = as_nobody(&fx, &["run", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("state directory is full or read-only"),
        "{}",
        text(&out)
    );
    // Room again: the ends are written, as they were.
    std::fs::remove_file(&filler).unwrap();
    let out = fx.run(&["wait", "--timeout", "30", "1", "2", "3", "4"], T);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count("Done"), 4);
    drop(up);
}

/// A clean stop of `berth up` first starts no more jobs, then records the end of every
/// job it stopped: none starts after the signal, none is lost.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_clean_stop_starts_nothing_more_and_loses_nothing() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let mut up = Up::start(&fx, &["--slots", "2", "-r", "License:x/2 CORES/2"]);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--array",
            "200",
            "-r",
            "License:x/1",
            "--",
            "sleep",
            "0.1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let count = |state: &str| {
        let out = fx.run(&["list", "--json", "--state", state], T);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array().map(|a| a.len()).unwrap_or(0)
    };
    wait_until("some jobs done", T, || count("Done") >= 6);
    let signalled_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    up.stop();
    // Again, with nothing that offers License:x, so that nothing starts: only to look.
    let _up = Up::start(&fx, &["--slots", "2"]);
    let out = fx.run(&["list", "--json", "--limit", "1000"], T);
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 200);
    let late: Vec<u64> = jobs
        .iter()
        .filter(|j| {
            j["started_ms"]
                .as_u64()
                .is_some_and(|s| s > signalled_ms + 250)
        })
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert!(late.is_empty(), "jobs started after the stop: {late:?}");
    let lost = jobs.iter().filter(|j| j["reason"] == "lost").count();
    let running = jobs.iter().filter(|j| j["state"] == "Running").count();
    assert_eq!((lost, running), (0, 0), "{}", text(&out));
}

/// A host joins with two things, the server's address and the cluster secret: a tasker
/// whose SWD does not exist yet, and that shares no directory with the server, makes its
/// own state and runs jobs; a secret others can read is refused.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_host_joins_with_the_address_and_the_secret_alone() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let mut split = Split::server_only(&fx);
    // The "other host": a directory of its own, with only a copy of the secret.
    let host = tempfile::Builder::new()
        .prefix("berth-host-")
        .tempdir()
        .unwrap();
    chmod(host.path(), 0o755);
    let secret = host.path().join("cluster.secret");
    std::fs::copy(fx.swd.join("cluster.secret"), &secret).unwrap();
    chmod(&secret, 0o644);
    let own_swd = host.path().join("berth");
    let args = |s: &std::path::Path| {
        vec![
            "tasker".to_string(),
            "--swd".into(),
            own_swd.display().to_string(),
            "--name".into(),
            "far".into(),
            "--server".into(),
            split.addr(),
            "--secret".into(),
            s.display().to_string(),
        ]
    };
    let a = args(&secret);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = fx.run(&a, T);
    assert!(
        stderr(&out).contains("is readable by others (mode 644); run: chmod 600"),
        "{}",
        text(&out)
    );
    chmod(&secret, 0o600);
    split.tasker = Some(spawn_quiet(&a, host.path()));
    wait_for_tasker(&fx.swd, "far");
    let out = as_nobody(&fx, &["run", "-w", "--", "sh", "-c", "echo far away"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fx.read_work("berth-1.log"), "far away\n");
    assert!(own_swd.join("bin/berth-vw").exists());
}

/// A remote tasker is sent each environment once per connection and each job after with
/// its number: jobs of two users, interleaved, each run with its own environment.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn jobs_on_a_remote_tasker_each_get_their_own_environment() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let _split = Split::start(&fx, "2");
    let mut ids = Vec::new();
    for i in 0..12 {
        let (uid, value) = if i % 2 == 0 {
            (NOBODY, "of-nobody")
        } else {
            (test_user(), "of-berth-test")
        };
        let mut c = fx.berth(&["run", "--", "sh", "-c", "echo $WHOSE $(id -u)"]);
        c.uid(uid).gid(uid).env("WHOSE", value);
        let out = output_within(&mut c, T);
        assert!(out.status.success(), "{}", text(&out));
        ids.push((stdout(&out).trim().to_string(), uid, value));
    }
    for (id, _, _) in &ids {
        let out = fx.run(&["wait", id], T);
        assert!(out.status.success(), "{}", text(&out));
    }
    for (id, uid, value) in &ids {
        assert_eq!(
            fx.read_work(&format!("berth-{id}.log")),
            format!("{value} {uid}\n"),
            "job {id}"
        );
    }
}

/// Silent connections to the tasker port, which prove nothing, hold a few places for a
/// few seconds and no more: the server's descriptors stay few, and a tasker from another
/// address joins meanwhile.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn silent_connections_to_the_tasker_port_hold_nothing() {
    need_root!();
    let fx = Fixture::new();
    let mut split = Split::server_only(&fx);
    let port = split.addr().rsplit(':').next().unwrap().to_string();
    let silent = r#"
import socket, sys
held = []
for _ in range(300):
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", int(sys.argv[1])))
    s.send(b"berth-channel 1\n")
    held.append(s)
print("holding", len(held), flush=True)
sys.stdin.read()
"#;
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", silent, &port])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(py.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "holding 300\n");
    }
    let server_pid = split.server.as_ref().unwrap().id();
    let fds = std::fs::read_dir(format!("/proc/{server_pid}/fd"))
        .unwrap()
        .count();
    assert!(
        fds < 100,
        "the server holds {fds} descriptors for 300 silent connections"
    );
    split.start_tasker("2");
    drop(py.stdin.take());
    let _ = wait_status(py, T);
}

/// A tasker that ran jobs when the server was killed, and never comes back, loses them
/// once the restarted server's grace has passed (they are not left Running for ever).
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_tasker_that_never_comes_back_after_a_server_restart_loses_its_jobs() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let mut split = Split::start_with_grace(&fx, "2", "2");
    let out = as_nobody(
        &fx,
        &["run", "--", "sh", "-c", "touch started; exec sleep 3302"],
    );
    let job = stdout(&out).trim().to_string();
    wait_until("the job to start", T, || fx.work.join("started").exists());
    Split::kill9(&mut split.tasker);
    Split::kill9(&mut split.server);
    let _ = Command::new("pkill").args(["-f", "^sleep 3302"]).status();
    split.start_server("127.0.0.1:0");
    let out = fx.run(&["wait", "--timeout", "30", &job], T);
    assert!(
        stderr(&out).contains(&format!("job {job} Failed (lost)")),
        "{}",
        text(&out)
    );
}

/// A second tasker process under the name of one that is connected is refused: the jobs of
/// the first run on and end Done, none is lost.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_second_tasker_of_a_connected_name_is_refused_and_takes_nothing() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let split = Split::start(&fx, "4");
    let out = as_nobody(&fx, &["run", "--array", "8", "--", "sleep", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let other = fx.root.join("other");
    let mut second = Command::new(berth())
        .args(["tasker", "--name", "t1", "--slots", "4", "--swd"])
        .arg(&other)
        .args(["--server", &split.addr(), "--secret"])
        .arg(fx.swd.join("cluster.secret"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = fx.run(
        &[
            "wait",
            "--timeout",
            "60",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "7",
            "8",
        ],
        T,
    );
    signal(&second, libc::SIGTERM);
    let _ = second.wait();
    assert!(out.status.success(), "{}", text(&out));
    let out = fx.run(&["list", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let done = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "Done")
        .count();
    assert_eq!(done, 8, "{}", text(&out));
}

fn job_json(fx: &Fixture, id: &str) -> serde_json::Value {
    let out = fx.run(&["info", "--json", id], T);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn submit_nobody(fx: &Fixture, script: &str) -> String {
    let out = as_nobody(fx, &["run", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", text(&out));
    stdout(&out).trim().to_string()
}

/// Stopping `berth up` (SIGTERM) or killing it (-9) leaves its jobs without a container
/// running, kept by the tasker's keeper; the next `berth up` takes them over and reports
/// their own exit status, also of a job that ended while no tasker ran. Only
/// `--stop-jobs` ends them, and says so.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn plain_jobs_outlive_their_tasker_and_end_with_their_own_status() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let mut up = Up::start_keeping(&fx, &["--slots", "4"]);
    let a = submit_nobody(
        &fx,
        "touch a.started; while [ ! -e a.go ]; do sleep 0.05; done; echo a-after; exit 3",
    );
    let b = submit_nobody(
        &fx,
        "touch b.started; while [ ! -e b.go ]; do sleep 0.05; done; echo b-after",
    );
    wait_until("both running", T, || {
        fx.work.join("a.started").exists() && fx.work.join("b.started").exists()
    });
    up.stop();
    // Still running, with no tasker process: they end now.
    std::fs::write(fx.work.join("a.go"), "").unwrap();
    std::fs::write(fx.work.join("b.go"), "").unwrap();
    wait_until("b's output, with no tasker", T, || {
        fx.read_work(&format!("berth-{b}.log")).contains("b-after")
    });
    let mut up = Up::start_keeping(&fx, &["--slots", "4"]);
    let out = fx.run(
        &["wait", "--timeout", "60", &a, &b],
        Duration::from_secs(90),
    );
    let v = job_json(&fx, &a);
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("Failed"), Some("exit status 3")),
        "{v}"
    );
    let v = job_json(&fx, &b);
    assert_eq!(v["state"], "Done", "{v} {}", text(&out));
    assert!(fx.read_work(&format!("berth-{a}.log")).contains("a-after"));

    // Killed with -9 while a job runs, which ends before the tasker is back.
    let c = submit_nobody(&fx, "touch c.started; sleep 1; exit 5");
    wait_until("c running", T, || fx.work.join("c.started").exists());
    up.kill9();
    std::thread::sleep(Duration::from_millis(2500));
    let mut up = Up::start(&fx, &["--slots", "4"]);
    let _ = fx.run(&["wait", "--timeout", "60", &c], Duration::from_secs(90));
    let v = job_json(&fx, &c);
    assert_eq!(v["reason"], "exit status 5", "{v}");

    // --stop-jobs (this one was started with it) ends them, and says why.
    let d = submit_nobody(&fx, "touch d.started; sleep 300");
    wait_until("d running", T, || fx.work.join("d.started").exists());
    up.stop();
    let _up = Up::start(&fx, &["--slots", "4"]);
    let v = job_json(&fx, &d);
    assert_eq!(v["state"], "Failed", "{v}");
    assert_eq!(
        v["reason"], "stopped: its tasker was stopped with --stop-jobs",
        "{v}"
    );
    // A stop by request is still called one.
    let e = submit_nobody(&fx, "touch e.started; sleep 300");
    wait_until("e running", T, || fx.work.join("e.started").exists());
    let out = fx.run(&["stop", &e], T);
    assert!(out.status.success(), "{}", text(&out));
    let _ = fx.run(&["wait", "--timeout", "60", &e], Duration::from_secs(90));
    assert_eq!(job_json(&fx, &e)["reason"], "stopped by request");
}

/// A remote tasker stopped with SIGTERM tells the server first: nothing more starts
/// there, its running job goes on and is taken over by the next process, and jobs
/// submitted meanwhile wait for it. Nothing is lost, nothing runs twice.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_remote_tasker_restarts_under_its_jobs() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let split = Split::server_only(&fx);
    let start = || {
        spawn_quiet(
            &[
                "tasker",
                "--name",
                "t1",
                "--slots",
                "2",
                "--server",
                &split.addr(),
            ],
            &fx.swd,
        )
    };
    let t = start();
    wait_for_tasker(&fx.swd, "t1");
    let a = submit_nobody(
        &fx,
        "touch a.started; while [ ! -e a.go ]; do sleep 0.05; done; echo $$ >> a.ran; exit 7",
    );
    wait_until("a running", T, || fx.work.join("a.started").exists());
    signal(&t, libc::SIGTERM);
    let st = wait_status(t, T);
    assert!(st.success(), "the tasker ended with {st}");
    // Submitted while no tasker runs: it waits.
    let b = submit_nobody(&fx, "echo $$ >> b.ran");
    std::fs::write(fx.work.join("a.go"), "").unwrap();
    let mut t = start();
    let _ = fx.run(
        &["wait", "--timeout", "60", &a, &b],
        Duration::from_secs(90),
    );
    let va = job_json(&fx, &a);
    let vb = job_json(&fx, &b);
    signal(&t, libc::SIGTERM);
    let _ = t.wait();
    assert_eq!(va["reason"], "exit status 7", "{va}");
    assert_eq!(vb["state"], "Done", "{vb}");
    assert_eq!(fx.read_work("a.ran").lines().count(), 1);
    assert_eq!(fx.read_work("b.ran").lines().count(), 1);
}

/// The keeper's socket answers only its own uid: another user can neither start a job
/// through it nor learn what it keeps.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn the_keeper_answers_no_other_user() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let _up = Up::start(&fx, &["--slots", "2"]);
    let sock = std::fs::read_dir(fx.swd.join("tasker"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("keeper.1.sock");
    assert!(sock.exists(), "{}", sock.display());
    // As nobody: the socket is root's, mode 0600.
    let out = Command::new("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1]); print('connected', s.recv(100))\nexcept Exception as e: print('refused', e)",
            sock.to_str().unwrap(),
        ])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(stdout(&out).starts_with("refused"), "{}", text(&out));
    // Even with the socket's mode opened up, a peer of another uid gets nothing: the
    // keeper checks who connects.
    chmod(&sock, 0o666);
    let out = Command::new("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1]); s.settimeout(3)\ntry:\n d=s.recv(100); print('got', d)\nexcept Exception as e: print('nothing', e)",
            sock.to_str().unwrap(),
        ])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        stdout(&out).starts_with("got b''"),
        "the keeper answered another uid: {}",
        text(&out)
    );
}

/// A job that cannot outlive its tasker process (here, without a keeper) is stopped by a
/// clean stop, and says why, rather than left running unwatched.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_clean_stop_stops_what_cannot_outlive_the_tasker_and_says_why() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let mut up = Up::start_keeping(&fx, &["--slots", "2", "--no-keeper"]);
    let a = submit_nobody(&fx, "touch a.started; sleep 300");
    wait_until("a running", T, || fx.work.join("a.started").exists());
    up.stop();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let v = job_json(&fx, &a);
    assert_eq!(v["state"], "Failed", "{v}");
    assert_eq!(
        v["reason"], "stopped: its tasker stopped, and it had no keeper to outlive it",
        "{v}"
    );
}

/// A keeper killed while its tasker runs is started again when next needed: the jobs
/// that follow run (they would all fail otherwise).
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_killed_keeper_is_started_again() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let _up = Up::start(&fx, &["--slots", "2"]);
    let a = submit_nobody(&fx, "exit 0");
    let _ = fx.run(&["wait", "--timeout", "30", &a], T);
    let keeper = format!(
        "{} keeper --state {}",
        berth().display(),
        fx.swd.join("tasker").display()
    );
    let pids = pids_of(&keeper);
    assert!(!pids.is_empty(), "no keeper: {keeper}");
    for p in pids {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    let ids: Vec<String> = (0..5)
        .map(|i| submit_nobody(&fx, &format!("exit {i}")))
        .collect();
    let mut args = vec!["wait", "--timeout", "60"];
    args.extend(ids.iter().map(String::as_str));
    let _ = fx.run(&args, Duration::from_secs(90));
    for (i, id) in ids.iter().enumerate() {
        let v = job_json(&fx, id);
        let want = if i == 0 {
            serde_json::Value::Null
        } else {
            serde_json::Value::from(format!("exit status {i}"))
        };
        assert_eq!(v["reason"], want, "{v}");
    }
}

/// A second process of a tasker whose first still runs (same state directory) refuses to
/// start, and ends nothing of the first's.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_second_tasker_process_on_the_same_state_refuses_to_start() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let _split = Split::start(&fx, "2");
    let a = submit_nobody(&fx, "touch a.started; sleep 300");
    wait_until("a running", T, || fx.work.join("a.started").exists());
    let out = fx.run(&["tasker", "--name", "t1", "--slots", "2"], T);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("serves another process of this tasker"),
        "{}",
        text(&out)
    );
    let v = job_json(&fx, &a);
    assert_eq!(v["state"], "Running", "{v}");
}

/// A tasker's state directory that another user owns or could change is refused: root
/// keeps its keeper's socket and its jobs' records there.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_state_directory_a_user_controls_is_refused() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let theirs = fx.work.join("evilstate");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = fx.run(
        &["up", "--slots", "1", "--state", theirs.to_str().unwrap()],
        T,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("state directory"), "{}", text(&out));
    // Root's own, but in nobody's directory (1777 work): refused too.
    let under = fx.work.join("rootstate");
    let out = fx.run(
        &["up", "--slots", "1", "--state", under.to_str().unwrap()],
        T,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("state directory"), "{}", text(&out));
}

/// A tasker that stops reading (frozen) with megabytes of starts on their way does not
/// hold the server: the server answers while its writer for that tasker still waits (its
/// write times out only after 30 s, and says so in the server's log).
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_tasker_that_stops_reading_holds_nothing_of_the_server() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let log = fx.root.join("server.log");
    let _ = std::fs::remove_file(fx.swd.join("listen.addr"));
    // Ended with the test, whatever happens.
    struct Ends(Child);
    impl Drop for Ends {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Command::new(berth())
        .args(["server", "--listen", "127.0.0.1:0"])
        .env("BERTH_SWD", &fx.swd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let _server = Ends(server);
    wait_until("the server", T, || fx.swd.join("listen.addr").exists());
    let tasker = Ends(spawn_quiet(
        &[
            "tasker",
            "--name",
            "t1",
            "--slots",
            "48",
            "-r",
            "CORES/48",
            "--stop-jobs",
        ],
        &fx.swd,
    ));
    wait_for_tasker(&fx.swd, "t1");
    signal(&tasker.0, libc::SIGSTOP);
    // 48 starts of about 1 MB each (a command line of its own each), for a tasker that
    // reads nothing.
    // (An argument is at most 128 KiB: ten of 100 KB.)
    let big = "x".repeat(100_000);
    let mut args = vec!["run", "--array", "48", "--", "echo", "@INDEX@"];
    args.extend(std::iter::repeat_n(big.as_str(), 10));
    let out = as_nobody(&fx, &args);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the starts sent", T, || {
        let out = fx.run(&["list", "--json", "--state", "Running"], T);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array().map(|a| a.len()).unwrap_or(0) == 48
    });
    // The server answers, while its write to the frozen tasker has not given up.
    let out = fx.run(&["taskers", "--json"], T);
    assert!(out.status.success(), "{}", text(&out));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        !said.contains("closing its connection"),
        "the server answered only once its write gave up:\n{said}"
    );
    signal(&tasker.0, libc::SIGCONT);
}

/// `--retries N`: a job lost with its host (the tasker, its keeper and the job's own
/// processes killed, as a power cut does) is queued again, up to N times, each attempt in
/// `berth info`; a job without retries is lost.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_job_lost_with_its_host_runs_again_when_it_has_retries() {
    need_root!();
    let fx = Fixture::new();
    let mut split = Split::start(&fx, "2");
    let tag = std::process::id();
    let again =
        format!("echo run >> runs.txt; [ $(wc -l < runs.txt) -ge 2 ] || exec sleep 313.{tag}");
    let out = as_nobody(&fx, &["run", "--retries", "1", "sh", "-c", &again]);
    let retried = stdout(&out).trim().to_string();
    let out = as_nobody(&fx, &["run", "sh", "-c", &format!("exec sleep 314.{tag}")]);
    let once = stdout(&out).trim().to_string();
    let running = |id: &str| {
        let out = fx.run(&["info", "-o", "state", id], T);
        stdout(&out).trim() == "Running"
    };
    wait_until("both jobs to run", T, || {
        running(&retried) && running(&once)
    });
    wait_until("the first run", T, || fx.work.join("runs.txt").exists());
    // The host goes: its tasker, its keeper, the jobs' processes.
    Split::kill9(&mut split.tasker);
    let keeper = fx.swd.join("tasker").join("t1");
    for pattern in [
        format!("berth keeper --state {}", keeper.display()),
        format!("sleep 31[34].{tag}"),
    ] {
        let _ = Command::new("pkill").args(["-9", "-f", &pattern]).output();
    }
    let out = fx.run(&["wait", "--timeout", "30", &once], T);
    assert!(
        stderr(&out).contains(&format!("job {once} Failed (lost)")),
        "{}",
        text(&out)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&fx.run(&["info", "--json", &retried], T).stdout).unwrap();
    assert_eq!(v["state"], "Queued", "{v}");
    assert_eq!(v["retries"], 1);
    assert_eq!(v["attempts"][0]["reason"], "lost", "{v}");
    assert_eq!(v["attempts"][0]["tasker"], "t1", "{v}");
    // The host back: the job runs again, and this time ends.
    split.start_tasker("2");
    let out = fx.run(&["wait", "--timeout", "30", &retried], T);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fx.read_work("runs.txt"), "run\nrun\n");
    let out = fx.run(&["info", &retried], T);
    assert!(
        stdout(&out).contains("attempt 1: lost on t1"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("retries: 1 (1 used)"),
        "{}",
        text(&out)
    );
}
