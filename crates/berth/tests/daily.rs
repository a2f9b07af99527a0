//! A user's daily loop with the real binary (issue 9): a job that says how it ended, exit
//! statuses that tell the cases apart, an interrupted wait, times and tables people read,
//! fields for workflow managers, logs of their own per array job, no panic on a closed
//! pipe, completions and a manual page, and `berth down`.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

fn info(fx: &Fixture, id: &str) -> serde_json::Value {
    let out = fx.run(&["info", "--json", id], T);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_waiting_run_says_how_each_job_ended_and_its_exit_status_tells_the_cases_apart() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "4", "-r", "CORES/4"]);

    // The job's own status, with one line on standard error as it ends; no `--` needed.
    let out = as_nobody(&fx, &["run", "-w", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("berth run: submitted job 1\n"), "{err}");
    assert!(
        err.contains("berth: job 1 Failed (exit status 3) after "),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{}", text(&out));

    // Quiet: nothing said, the status still tells.
    let out = as_nobody(&fx, &["run", "-w", "-q", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).is_empty(), "{}", text(&out));

    // The job's options stay the job's: `grep -wl` is grep's, after the command's first
    // word; before it, `-wl` is Accelerator's wait-and-show-the-log.
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-wl",
            "sh",
            "-c",
            "echo one; sleep 0.5; echo two; exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(stdout(&out), "one\ntwo\n", "{}", text(&out));
    let out = as_nobody(&fx, &["run", "-w", "grep", "-wl", "x", "/dev/null"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "grep finds nothing: {}",
        text(&out)
    );
    let v = info(&fx, "4");
    assert_eq!(
        v["command"],
        serde_json::json!(["grep", "-wl", "x", "/dev/null"])
    );

    // Several jobs: one line each, as each ends (the short one first), and the status of
    // the first that failed.
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "--array",
            "3",
            "sh",
            "-c",
            "sleep $((3 - @INDEX@)); exit @INDEX@",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let ends: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("berth: job "))
        .map(str::to_string)
        .collect();
    assert_eq!(ends.len(), 3, "{}", text(&out));
    assert!(ends[0].contains("(exit status 3)"), "{ends:?}");
    assert!(ends[2].contains("(exit status 1)"), "{ends:?}");

    // No such job; no server; a wait that runs out of time; a job that never ran.
    let out = as_nobody(&fx, &["wait", "999"]);
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    assert!(stderr(&out).contains("no job 999"), "{}", text(&out));
    let out = as_nobody(&fx, &["info", "-o", "state", "999"]);
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    let nowhere = fx.root.join("no-server");
    let out = as_nobody(&fx, &["wait", "--swd", nowhere.to_str().unwrap(), "1"]);
    assert_eq!(out.status.code(), Some(120), "{}", text(&out));
    assert!(
        stderr(&out).contains("no berth server answers"),
        "{}",
        text(&out)
    );
    let out = as_nobody(&fx, &["run", "sleep", "30"]);
    let sleeper = stdout(&out).trim().to_string();
    let out = as_nobody(&fx, &["wait", "--timeout", "1", &sleeper]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert!(
        stderr(&out).contains("not over after 1s (they go on)"),
        "{}",
        text(&out)
    );
    assert_eq!(info(&fx, &sleeper)["state"], "Running");
    let out = as_nobody(&fx, &["run", "-r", "NoSuchThing/1", "true"]);
    let never = stdout(&out).trim().to_string();
    assert!(as_nobody(&fx, &["stop", &never]).status.success());
    let out = as_nobody(&fx, &["wait", &never]);
    assert_eq!(out.status.code(), Some(122), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!(
            "job {never} Failed (stopped by request), never started"
        )),
        "{}",
        text(&out)
    );
    let _ = as_nobody(&fx, &["stop", &sleeper]);
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn an_interrupted_run_says_its_job_goes_on_or_stops_it_when_asked() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let running = |id: &str| {
        let out = fx.run(&["info", "-o", "state", id], T);
        stdout(&out).trim() == "Running"
    };

    let child = fx
        .berth(&["run", "-w", "sleep", "60"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("job 1 to run", T, || running("1"));
    signal(&child, libc::SIGINT);
    let out = wait_output(child, T);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        stderr(&out).contains(
            "interrupted; job 1 goes on (berth stops waiting): follow with `berth wait 1`, \
             stop with `berth stop 1`"
        ),
        "{}",
        text(&out)
    );
    assert!(running("1"), "the job goes on");

    let child = fx
        .berth(&["run", "-w", "--stop-on-interrupt", "sleep", "60"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("job 2 to run", T, || running("2"));
    signal(&child, libc::SIGINT);
    let out = wait_output(child, T);
    // Stopped, and waited for: its own status, the SIGTERM of the stop.
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert!(
        stderr(&out).contains("berth: job 2 Failed (stopped by request) after "),
        "{}",
        text(&out)
    );
    let _ = fx.run(&["stop", "1"], T);
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn times_and_tables_read_as_people_read_them_and_fields_are_bare_for_programs() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let name = "a-job-name-much-longer-than-twelve-characters";
    assert!(as_nobody(&fx, &["run", "-w", "-J", name, "sleep", "1.1"])
        .status
        .success());
    assert!(as_nobody(&fx, &["run", "-w", "-J", "b", "true"])
        .status
        .success());

    // Columns as wide as their content: every STATE starts where its heading does.
    let out = as_nobody(&fx, &["list"]);
    let listed = stdout(&out);
    let lines: Vec<&str> = listed.lines().collect();
    let head = lines[0];
    for h in [
        "ID", "STATE", "USER", "NAME", "TASKER", "ELAPSED", "EXIT", "COMMAND",
    ] {
        assert!(head.contains(h), "{head}");
    }
    let at = head.find("STATE").unwrap();
    for l in &lines[1..] {
        assert!(
            l[at..].starts_with("Done"),
            "a column moved:\n{}",
            stdout(&out)
        );
    }
    assert!(lines.iter().any(|l| l.contains(name)), "{}", stdout(&out));
    // The elapsed time as `1.1s` (its value is the clock's: only its form is checked).
    let el = head.find("ELAPSED").unwrap();
    for l in &lines[1..] {
        let cell = l[el..].split_whitespace().next().unwrap();
        let (secs, tenth) = cell.strip_suffix('s').unwrap().split_once('.').unwrap();
        assert!(
            secs.parse::<u32>().is_ok() && tenth.len() == 1,
            "{cell}: {}",
            stdout(&out)
        );
    }

    // Bare values, for programs.
    let out = as_nobody(&fx, &["list", "-o", "id,state"]);
    assert_eq!(stdout(&out), "2\tDone\n1\tDone\n", "{}", text(&out));
    let out = as_nobody(&fx, &["info", "-o", "state", "1", "2"]);
    assert_eq!(stdout(&out), "Done\nDone\n", "{}", text(&out));
    let out = as_nobody(&fx, &["list", "-o", "id,colour"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no field \"colour\""),
        "{}",
        text(&out)
    );

    // Local times, to the second, and durations.
    let out = as_nobody(&fx, &["info", "1"]);
    let said = stdout(&out);
    let submitted = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("submitted: "))
        .unwrap();
    let b = submitted.as_bytes();
    assert!(
        submitted.len() == 19 && b[4] == b'-' && b[10] == b' ' && b[13] == b':',
        "{said}"
    );
    assert!(said.contains("(queued "), "{said}");
    assert!(said.contains("(ran 1."), "{said}");

    // JSON keeps the milliseconds and adds RFC 3339.
    let v = info(&fx, "1");
    assert!(v["submitted_ms"].is_u64(), "{v}");
    let rfc = v["submitted"].as_str().unwrap();
    assert!(rfc.ends_with('Z') && rfc.contains('T'), "{v}");
    assert!(v["elapsed_ms"].as_u64().unwrap() >= 1100, "{v}");
    let out = as_nobody(&fx, &["info", "--json", "1", "2"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn each_array_job_gets_its_own_log_and_a_log_nowhere_is_refused_at_submission() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "--array",
            "3",
            "-l",
            "out.@ARRAYID@.@INDEX@.@JOBID@.log",
            "--",
            "echo",
            "@INDEX@",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for (i, id) in [(1, 2), (2, 3), (3, 4)] {
        assert_eq!(
            fx.read_work(&format!("out.1.{i}.{id}.log")),
            format!("{i}\n")
        );
    }
    let out = as_nobody(&fx, &["run", "-l", "no/such/dir/x.log", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no/such/dir/x.log: its directory")
            && err.contains("No such file or directory")
            && err.contains("mkdir -p"),
        "{err}"
    );
    assert!(!err.contains("File("), "{err}");
    // Nothing was submitted.
    let out = as_nobody(&fx, &["list", "-o", "id"]);
    assert_eq!(stdout(&out).lines().count(), 3, "{}", text(&out));
}

/// Runs `berth ARGS` with its standard output a pipe whose reader has already gone:
/// its exit status and standard error.
fn into_closed_pipe(fx: &Fixture, args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    let mut c = fx.berth(args);
    c.stdout(w).stderr(Stdio::piped());
    if args[0] == "run" {
        c.uid(NOBODY).gid(NOBODY);
    }
    let mut child = c.spawn().unwrap();
    drop(c);
    let mut err = child.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let st = wait_status(child, T);
    (st, said.join().unwrap())
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn no_command_panics_on_a_closed_pipe() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    assert!(
        as_nobody(&fx, &["run", "-w", "--array", "300", "echo", "@INDEX@"])
            .status
            .success()
    );
    let cfg = fx.cfg("c1", "containerHook enter user /bin/true SKIP\n");
    let cfg = cfg.to_str().unwrap().to_string();
    let every: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["list", "--json"],
        vec!["list", "-o", "id,state,command"],
        vec!["info", "1"],
        vec!["info", "--json", "1"],
        vec!["info", "-o", "state", "1", "2", "3"],
        vec!["wait", "1", "2"],
        vec!["wait", "--json", "1"],
        vec!["getlog", "2"],
        vec!["taskers"],
        vec!["taskers", "--json"],
        vec!["containers"],
        vec!["containers", "--json"],
        vec!["container", "check", &cfg],
        vec!["container", "list"],
        vec!["run", "true"],
        vec!["run", "-w", "--json", "true"],
        vec!["signfile", "/bin/true"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
        vec!["run", "--help"],
        vec!["--version"],
    ];
    for args in &every {
        let (st, err) = into_closed_pipe(&fx, args);
        assert!(
            !err.contains("panicked") && matches!(st.code(), Some(0 | 141)),
            "{args:?}: {st}: {err}"
        );
    }
    // And as a shell pipes it, into `head -1`.
    for args in [
        "list",
        "list -o id",
        "info 1",
        "taskers",
        "man",
        "completions bash",
    ] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} {args} | head -1 >/dev/null", berth().display()))
            .env("BERTH_SWD", &fx.swd)
            .output()
            .unwrap();
        assert!(
            out.status.success() && !stderr(&out).contains("panicked"),
            "{args}: {}",
            text(&out)
        );
    }
}

#[test]
fn completions_and_the_manual_page_come_from_the_command_line_definition() {
    let run = |args: &[&str]| Command::new(berth()).args(args).output().unwrap();
    let out = run(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out));
    let bash = stdout(&out);
    assert!(
        bash.contains("complete -F") && bash.contains("getlog"),
        "{bash}"
    );
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(stdout(&out).contains("stop-on-interrupt"), "{shell}");
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(&["man"]);
    assert!(out.status.success(), "{}", text(&out));
    let man = stdout(&out);
    assert!(man.starts_with(".ie") || man.contains(".TH berth"), "{man}");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn berth_down_stops_the_server_cleanly_for_administrators_only() {
    need_root!();
    let fx = Fixture::new();
    let mut up = Up::start_keeping(&fx, &["--slots", "2"]);
    let out = as_nobody(&fx, &["run", "sh", "-c", "sleep 2; exit 7"]);
    let id = stdout(&out).trim().to_string();
    wait_until("the job to run", T, || info(&fx, &id)["state"] == "Running");
    let out = as_nobody(&fx, &["down"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("nobody may not stop the server: only an administrator may"),
        "{}",
        text(&out)
    );
    let out = fx.run(&["down"], T);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("the server has stopped; running jobs run on"),
        "{}",
        text(&out)
    );
    assert!(up.ends(T).success());
    // The job ran on, and the next start takes its end over.
    let _up = Up::start_keeping(&fx, &["--slots", "2"]);
    let out = fx.run(&["wait", &id], T);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_job_past_its_time_limit_is_stopped_with_that_reason_and_its_hooks_still_run() {
    need_root!();
    let fx = Fixture::new();
    // A configuration whose cleanup hook leaves a mark in the job's directory.
    let enter = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    let cleanup = fx.hook("cleanup.sh", "#!/bin/sh\necho \"$VOV_JOBID\" >> cleaned\n");
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {} SIG({})\ncontainerHook cleanup user {} SIG({})\n",
            enter.display(),
            enter.display(),
            cleanup.display(),
            cleanup.display()
        ),
    );
    let _up = Up::start(
        &fx,
        &[
            "--slots",
            "4",
            "-r",
            "CORES/4",
            "--time-max",
            "1h",
            "--time-default",
            "30m",
        ],
    );
    // A plain job and a container job, each stopped at 2 s with the reason.
    for (n, res) in [(1, None), (2, Some("Container:c1"))] {
        let mut args = vec!["run", "-w", "--time", "2"];
        if let Some(r) = res {
            args.extend(["-r", r]);
        }
        args.extend(["sh", "-c", "echo started; sleep 60"]);
        let out = as_nobody(&fx, &args);
        assert_eq!(out.status.code(), Some(143), "{}", text(&out));
        let v = info(&fx, &n.to_string());
        assert_eq!(v["state"], "Failed");
        assert_eq!(v["reason"], "time limit 2s exceeded", "{v}");
        assert_eq!(v["time_limit_ms"], 2000);
        assert!(v["elapsed_ms"].as_u64().unwrap() >= 2000, "{v}");
        assert!(
            stderr(&out).contains(&format!("job {n} Failed (time limit 2s exceeded) after")),
            "{}",
            text(&out)
        );
    }
    assert_eq!(fx.read_work("cleaned"), "2\n", "the cleanup hook ran");
    // The server's default applies to a job without --time; above the maximum is refused,
    // nothing created.
    let out = as_nobody(&fx, &["run", "true"]);
    let id = stdout(&out).trim().to_string();
    assert_eq!(info(&fx, &id)["time_limit_ms"], 30 * 60 * 1000);
    let out = as_nobody(&fx, &["run", "--autokill", "2h", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(
            "--time 2h: above the longest time limit of 1h (set by the administrator: --time-max)"
        ),
        "{}",
        text(&out)
    );
    let out = as_nobody(&fx, &["run", "--time", "ten", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("\"ten\" is not a duration"),
        "{}",
        text(&out)
    );
    let out = fx.run(&["list", "-o", "id"], T);
    assert_eq!(stdout(&out).lines().count(), 3, "{}", text(&out));
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn dependencies_start_after_their_jobs_and_fail_with_them_and_holds_wait_for_a_release() {
    need_root!();
    let fx = Fixture::new();
    let mut up = Up::start_keeping(&fx, &["--slots", "4", "-r", "CORES/4"]);
    let run = |args: &[&str]| {
        let out = as_nobody(&fx, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        stdout(&out).trim().to_string()
    };
    let state = |id: &str| {
        let v = info(&fx, id);
        (
            v["state"].as_str().unwrap().to_string(),
            v["reason"].clone(),
        )
    };
    // 1 is Done late, 2 fails; 3 runs after 1, 4 never (2 failed), 5 after 2 however it
    // ends, 6 after 4 (which fails): the failure goes down the chain.
    let ok = run(&["run", "sh", "-c", "sleep 2; date +%s%N > one"]);
    let bad = run(&["run", "sh", "-c", "sleep 1; exit 1"]);
    let after_ok = run(&["run", "--after", &ok, "sh", "-c", "date +%s%N > three"]);
    let after_bad = run(&["run", "--after", &format!("{ok},{bad}"), "touch", "four"]);
    let any = run(&["run", "--after-any", &bad, "touch", "five"]);
    let chain = run(&["run", "--after", &after_bad, "touch", "six"]);
    let v = info(&fx, &after_ok);
    assert_eq!(v["state"], "Queued");
    assert_eq!(
        v["why_waiting"],
        format!("waiting for job {ok} to be Done"),
        "{v}"
    );
    let out = as_nobody(&fx, &["wait", &after_ok, &after_bad, &any, &chain]);
    assert_eq!(out.status.code(), Some(122), "{}", text(&out));
    assert_eq!(state(&after_ok).0, "Done");
    let (one, three): (u128, u128) = (
        fx.read_work("one").trim().parse().unwrap(),
        fx.read_work("three").trim().parse().unwrap(),
    );
    assert!(three > one, "job {after_ok} ran before job {ok} ended");
    assert_eq!(
        state(&after_bad),
        ("Failed".into(), format!("dependency {bad} failed").into())
    );
    assert_eq!(
        state(&chain),
        (
            "Failed".into(),
            format!("dependency {after_bad} failed").into()
        )
    );
    assert_eq!(state(&any).0, "Done");
    assert!(!fx.work.join("four").exists() && !fx.work.join("six").exists());
    // A job that waits for one that has failed already fails at once; one that does not
    // exist is refused.
    let late = run(&["run", "--after", &bad, "true"]);
    assert_eq!(
        state(&late),
        ("Failed".into(), format!("dependency {bad} failed").into())
    );
    let out = as_nobody(&fx, &["run", "--after", "9999", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("--after 9999: no job 9999"),
        "{}",
        text(&out)
    );

    // Held: queued, not started, across a restart of the server; released, it runs.
    let held = run(&["run", "--hold", "touch", "held"]);
    let waits = run(&["run", "--after", &held, "touch", "after-held"]);
    let v = info(&fx, &held);
    assert_eq!(v["held"], true);
    assert!(
        v["why_waiting"]
            .as_str()
            .unwrap()
            .starts_with("held: it starts once released"),
        "{v}"
    );
    let other = test_user();
    let out = as_user(&fx, other, &["release", &held]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("only an administrator may hold or release"),
        "{}",
        text(&out)
    );
    up.stop();
    let mut up = Up::start_keeping(&fx, &["--slots", "4", "-r", "CORES/4"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(state(&held).0, "Queued");
    assert_eq!(state(&waits).0, "Queued");
    assert!(!fx.work.join("held").exists());
    let out = as_nobody(&fx, &["release", &held]);
    assert!(out.status.success(), "{}", text(&out));
    let out = as_nobody(&fx, &["wait", &held, &waits]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(fx.work.join("held").exists() && fx.work.join("after-held").exists());
    // Only a queued job is held; a held job can be stopped.
    let long = run(&["run", "sleep", "60"]);
    wait_until("the long job to run", T, || state(&long).0 == "Running");
    let out = as_nobody(&fx, &["hold", &long]);
    assert!(
        stderr(&out).contains(&format!(
            "job {long} is Running: only a queued job can be held"
        )),
        "{}",
        text(&out)
    );
    let h2 = run(&["run", "--hold", "true"]);
    assert!(as_nobody(&fx, &["stop", &h2, &long]).status.success());
    assert_eq!(state(&h2), ("Failed".into(), "stopped by request".into()));

    // Rerun: an identical new job, its command and directory and environment.
    let out = as_nobody(&fx, &["rerun", &ok]);
    assert!(out.status.success(), "{}", text(&out));
    let again = stdout(&out).trim().to_string();
    let (a, b) = (info(&fx, &ok), info(&fx, &again));
    assert_eq!(a["command"], b["command"]);
    assert_eq!(a["dir"], b["dir"]);
    let out = as_nobody(&fx, &["wait", &again]);
    assert!(out.status.success(), "{}", text(&out));
    let out = as_user(&fx, other, &["rerun", &ok]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    up.stop();
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn an_arrays_id_is_a_handle_on_all_its_jobs() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "4", "-r", "CORES/4"]);
    let out = as_nobody(&fx, &["run", "true"]);
    assert_eq!(stdout(&out).trim(), "1");
    // 30 jobs: ids 3-32, the array 2 (an id no job has).
    let out = as_nobody(
        &fx,
        &[
            "run",
            "--array",
            "30",
            "sh",
            "-c",
            "[ @INDEX@ -le 25 ] || exec sleep 60",
        ],
    );
    assert_eq!(
        stdout(&out).trim(),
        "3-32 (30 jobs, array 2)",
        "{}",
        text(&out)
    );
    let out = as_nobody(&fx, &["info", "2"]);
    assert!(stdout(&out).contains("array: 2"), "{}", text(&out));
    assert!(stdout(&out).contains("jobs: 30 (3-32)"), "{}", text(&out));
    wait_until("25 jobs Done, 4 running (4 slots)", T, || {
        let out = as_nobody(&fx, &["info", "--json", "2"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["states"]["Done"] == 25 && v[0]["states"]["Running"] == 4
    });
    let out = as_nobody(&fx, &["list", "-o", "id", "2"]);
    assert_eq!(stdout(&out).lines().count(), 30, "{}", text(&out));
    let out = as_nobody(&fx, &["info", "-o", "state", "2"]);
    assert_eq!(stdout(&out).lines().filter(|l| *l == "Done").count(), 25);
    // Waiting runs out of time on the array's sleepers; stopping the array stops them.
    let out = as_nobody(&fx, &["wait", "--timeout", "1", "-q", "2"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    let out = as_nobody(&fx, &["stop", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).trim(),
        "array 2: 5 jobs stopped or stopping, 25 over already",
        "{}",
        text(&out)
    );
    let out = as_nobody(&fx, &["wait", "2"]);
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    let ends = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("berth: job "))
        .count();
    assert_eq!(ends, 30, "{}", text(&out));
    let out = as_nobody(&fx, &["info", "--json", "2"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["states"]["Failed"], 5, "{v}");
    // Job 1 is a job, not an array.
    let out = as_nobody(&fx, &["info", "-o", "state", "1"]);
    assert_eq!(stdout(&out), "Done\n");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn ended_jobs_leave_the_store_after_keep_their_logs_stay_and_listings_page() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "4", "-r", "CORES/4", "--keep", "3"]);
    let out = as_nobody(&fx, &["run", "-w", "-q", "--array", "5", "echo", "@INDEX@"]);
    assert!(out.status.success(), "{}", text(&out));
    let held = as_nobody(&fx, &["run", "--hold", "true"]);
    let held = stdout(&held).trim().to_string();
    // Pages, newest first.
    let out = as_nobody(&fx, &["list", "-o", "id", "--limit", "2"]);
    assert_eq!(stdout(&out), format!("{held}\n6\n"), "{}", text(&out));
    let out = as_nobody(
        &fx,
        &["list", "-o", "id", "--limit", "2", "--after-id", "5"],
    );
    assert_eq!(stdout(&out), "4\n3\n", "{}", text(&out));
    // Three seconds after they ended, the ended jobs are gone; the held one stays, and
    // so do the logs.
    wait_until("the ended jobs to leave the store", T, || {
        let out = as_nobody(&fx, &["list", "-o", "id"]);
        stdout(&out) == format!("{held}\n")
    });
    for (i, id) in [(1, 2), (5, 6)] {
        assert_eq!(fx.read_work(&format!("berth-{id}.log")), format!("{i}\n"));
    }
    let out = as_nobody(&fx, &["info", "2"]);
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    let out = fx.berth(&["up", "--keep", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("or forever"), "{}", text(&out));
}

/// A v1 memory cgroup of the test's own, removed when dropped.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(limit_mb: u64) -> MemoryCgroup {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/memory/berth-test-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("memory.limit_in_bytes"),
            format!("{}", limit_mb << 20),
        )
        .unwrap();
        MemoryCgroup(dir)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_job_killed_for_memory_says_so_and_one_killed_otherwise_does_not() {
    need_root!();
    let fx = Fixture::new();
    image();
    // berth up, and so its jobs, in a memory cgroup of 300 MB.
    let cg = MemoryCgroup::new(300);
    let join = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cg.0.display());
    let _up = Up::start_wrapped(
        &fx,
        &["--slots", "2", "--examples", "--project", "t-oom"],
        &["sh", "-c", &join, "sh"],
    );
    let hog = "x=$(head -c 600000000 /dev/zero | tr '\\0' a); echo ${#x}";
    // A plain job over the cgroup's limit: the kernel's log names it.
    let out = as_nobody(&fx, &["run", "-w", "sh", "-c", hog]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    assert!(
        stderr(&out).contains(
            "job 1 Failed (out of memory (the memory cgroup it ran in reached its limit))"
        ),
        "{}",
        text(&out)
    );
    // A container job over its RAM/64: the wrapper reads its container's cgroup.
    let out = as_nobody(
        &fx,
        &[
            "run",
            "-w",
            "-r",
            "Container:docker RAM/64",
            "sh",
            "-c",
            hog,
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    let v = info(&fx, "2");
    assert_eq!(v["reason"], "out of memory (limit 64 MB)", "{v}");
    // Killed by SIGKILL for another reason: not out of memory, in a container or not.
    for (id, res) in [("3", None), ("4", Some("Container:docker RAM/64"))] {
        let mut args = vec!["run", "-w"];
        if let Some(r) = res {
            args.extend(["-r", r]);
        }
        args.extend(["sh", "-c", "kill -9 $$"]);
        let out = as_nobody(&fx, &args);
        assert_eq!(out.status.code(), Some(137), "{}", text(&out));
        assert_eq!(info(&fx, id)["reason"], "killed by signal 9 (SIGKILL)");
    }
    assert!(podman_containers("t-oom").is_empty());
}

/// Snakemake 9 from PyPI, in a virtual environment in `dir` that others may run; its
/// `bin`.
fn snakemake(dir: &std::path::Path) -> std::path::PathBuf {
    let run = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {}", text(&out));
    };
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(dir));
    run(Command::new(dir.join("bin/pip")).args([
        "install",
        "-q",
        "snakemake>=9,<10",
        "snakemake-executor-plugin-cluster-generic",
    ]));
    run(Command::new("chmod").args(["-R", "go+rX"]).arg(dir));
    dir.join("bin")
}

#[test]
#[ignore = "needs root and PyPI: .ci/run runs it with --include-ignored"]
fn a_snakemake_workflow_runs_through_berth_with_the_example_profile() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "4", "-r", "CORES/4"]);
    let bin = snakemake(&fx.root.join("venv"));
    let profile = repo().join("examples/snakemake");
    std::fs::copy(profile.join("Snakefile"), fx.work.join("Snakefile")).unwrap();
    let path = format!("{}:{}:/usr/bin:/bin", profile.display(), bin.display());
    let as_nobody_with = |program: &str, args: &[&str]| {
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(&fx.work)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &fx.work)
            .env("XDG_CACHE_HOME", fx.work.join(".cache"))
            .env("BERTH", berth())
            .env("BERTH_SWD", &fx.swd)
            .uid(NOBODY)
            .gid(NOBODY);
        output_within(&mut c, std::time::Duration::from_secs(300))
    };
    let out = as_nobody_with("snakemake", &["--profile", profile.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let all = fx.read_work("all.txt");
    assert_eq!(all.lines().count(), 19, "{all}");
    assert!(all.lines().all(|l| l.ends_with("as nobody")), "{all}");
    // 20 berth jobs; the one that gathers waited for the 19 parts (--after).
    let out = fx.run(&["list", "--json", "--name", "snakemake"], T);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 20, "{}", text(&out));
    assert!(jobs.iter().all(|j| j["state"] == "Done"));
    assert_eq!(
        jobs[0]["after"].as_array().unwrap().len(),
        19,
        "{}",
        jobs[0]
    );
    // The status script tells a missing job (failed) from a server that does not answer
    // (running: ask again), and both from a job's own states.
    let status = |id: &str, swd: &std::path::Path| {
        let mut c = Command::new(profile.join("berth-status"));
        c.arg(id)
            .env("BERTH", berth())
            .env("BERTH_SWD", swd)
            .uid(NOBODY)
            .gid(NOBODY);
        let out = output_within(&mut c, T);
        assert!(out.status.success(), "{}", text(&out));
        stdout(&out).trim().to_string()
    };
    assert_eq!(status("1", &fx.swd), "success");
    assert_eq!(status("999", &fx.swd), "failed");
    assert_eq!(status("1", &fx.root.join("nowhere")), "running");
    let out = as_nobody(&fx, &["run", "sh", "-c", "exit 2"]);
    let failed = stdout(&out).trim().to_string();
    let _ = as_nobody(&fx, &["wait", &failed]);
    assert_eq!(status(&failed, &fx.swd), "failed");
    // Cancel: one executable, any number of jobs.
    let a = stdout(&as_nobody(&fx, &["run", "sleep", "60"]))
        .trim()
        .to_string();
    let b = stdout(&as_nobody(&fx, &["run", "sleep", "60"]))
        .trim()
        .to_string();
    let out = as_nobody_with(profile.join("berth-cancel").to_str().unwrap(), &[&a, &b]);
    assert!(out.status.success(), "{}", text(&out));
    let out = as_nobody(&fx, &["wait", &a, &b]);
    assert!(
        stderr(&out).matches("Failed (stopped by request)").count() == 2,
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn berth_exec_enters_a_running_job_of_each_example_as_its_owner_and_no_one_else() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["docker", "podman-split", "bwrap"]);
    // A configuration without an exec hook.
    let enter = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "plainc",
        &format!(
            "containerHook enter user {} SIG({})\n",
            enter.display(),
            enter.display()
        ),
    );
    let _up = Up::start(
        &fx,
        &["--slots", "5", "-r", "CORES/5", "--project", "t-exec"],
    );
    let other = test_user();
    let host_init = std::fs::read_to_string("/proc/1/comm").unwrap();
    for cfg in ["docker", "podman-split", "bwrap"] {
        let out = as_nobody(
            &fx,
            &[
                "run",
                "-r",
                &format!("Container:{cfg}"),
                "sh",
                "-c",
                &format!("touch started.{cfg}; exec sleep 120"),
            ],
        );
        let id = stdout(&out).trim().to_string();
        wait_until(&format!("the {cfg} job to start"), T, || {
            fx.work.join(format!("started.{cfg}")).exists()
        });
        // In the job's container (its own process 1, the job's sleep, its directory),
        // as the job's owner; the command's status is berth exec's.
        let out = as_nobody(
            &fx,
            &[
                "exec",
                &id,
                "sh",
                "-c",
                &format!(
                    "id -u; cat /proc/1/comm; grep -l sleep /proc/[0-9]*/comm | wc -l; \
                     test -e started.{cfg} && echo here; exit 7"
                ),
            ],
        );
        assert_eq!(out.status.code(), Some(7), "{cfg}: {}", text(&out));
        let said: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        assert_eq!(said.len(), 4, "{cfg}: {}", text(&out));
        assert_eq!(said[0], "65534", "{cfg}: {said:?}");
        assert_ne!(
            said[1],
            host_init.trim(),
            "{cfg}: the host's process 1: {said:?}"
        );
        assert!(
            said[2].parse::<u32>().unwrap() >= 1,
            "{cfg}: no sleep in sight: {said:?}"
        );
        assert_eq!(said[3], "here", "{cfg}: {said:?}");
        // With a terminal (here the one `script` makes): the window's size goes along.
        let cmd = format!("{} exec -t {id} sh -c 'stty size'", berth().display());
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .current_dir(&fx.work)
            .env("BERTH_SWD", &fx.swd)
            .uid(NOBODY)
            .gid(NOBODY);
        let out = output_within(&mut c, T);
        assert!(out.status.success(), "{cfg}: {}", text(&out));
        assert!(stdout(&out).contains("24 80"), "{cfg}: {}", text(&out));
        // The engines' hooks exec into the container by its id, once its label says it is
        // this job's: a container of the slot's next job (same name) is refused.
        if cfg != "bwrap" {
            let hook = fx.hooks.join(if cfg == "docker" {
                "docker-exec.sh"
            } else {
                "podman-exec.sh"
            });
            let slot = info(&fx, &id)["slot"].to_string();
            let out = Command::new(&hook)
                .args(["/bin/true"])
                .current_dir(&fx.work)
                .env("VOV_PROJECT_NAME", "t-exec")
                .env("HOST", berth_sys::short_hostname())
                .env("VOV_CONTAINER_NAME", cfg)
                .env("VOV_JOBSLOT", &slot)
                .env("VOV_JOBID", "999999")
                .env("VOV_CONTAINER_ENV_FILE", "/dev/null")
                .env("BERTH_JOB_UID", "65534")
                .env("BERTH_JOB_GID", "65534")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{cfg}: {}", text(&out));
            assert!(
                stderr(&out).contains("is not job 999999's"),
                "{cfg}: {}",
                text(&out)
            );
        }
        // Nobody else may, and the job is untouched.
        let out = as_user(&fx, other, &["exec", &id, "true"]);
        assert_eq!(out.status.code(), Some(1), "{cfg}: {}", text(&out));
        assert!(
            stderr(&out).contains("only an administrator may enter another user's job"),
            "{cfg}: {}",
            text(&out)
        );
        assert_eq!(info(&fx, &id)["state"], "Running", "{cfg}");
        assert!(as_nobody(&fx, &["stop", &id]).status.success());
    }
    // Without an exec hook, or without a container, or not running: said.
    let out = as_nobody(&fx, &["run", "-r", "Container:plainc", "sleep", "60"]);
    let c1 = stdout(&out).trim().to_string();
    let out = as_nobody(&fx, &["run", "sleep", "60"]);
    let plain = stdout(&out).trim().to_string();
    let running = |id: &str| info(&fx, id)["state"] == "Running";
    wait_until("both to run", T, || running(&c1) && running(&plain));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = as_nobody(&fx, &["exec", &c1, "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("has no exec hook"), "{}", text(&out));
    let out = as_nobody(&fx, &["exec", &plain, "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("berth exec enters container jobs only"),
        "{}",
        text(&out)
    );
    let out = as_nobody(&fx, &["exec", "1", "true"]);
    assert!(
        stderr(&out).contains("berth exec enters running jobs only"),
        "{}",
        text(&out)
    );
    let _ = as_nobody(&fx, &["stop", &c1, &plain]);
    wait_until("the containers to go", T, || {
        podman_containers("t-exec").is_empty()
    });
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_file_of_jobs_may_be_a_graph() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "4", "-r", "CORES/4"]);
    let graph = "# a build, its tests, a report whatever happens\n\
                 lib: sleep 1; date +%s%N > lib\n\
                 tools: date +%s%N > tools\n\
                 test after lib,tools: date +%s%N > test\n\
                 bad: exit 3\n\
                 never after bad: touch never\n\
                 report after-any bad,test: touch report\n";
    std::fs::write(fx.work.join("graph.txt"), graph).unwrap();
    std::os::unix::fs::chown(fx.work.join("graph.txt"), Some(NOBODY), Some(NOBODY)).unwrap();
    let out = as_nobody(&fx, &["run", "-w", "-f", "graph.txt"]);
    // The first job that is not Done, in the file's order: `bad`.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = |f: &str| fx.read_work(f).trim().parse::<u128>().unwrap();
    assert!(t("test") > t("lib") && t("test") > t("tools"));
    assert!(fx.work.join("report").exists());
    assert!(!fx.work.join("never").exists());
    // Jobs 1-6 in the file's order: `never` is 5, `bad` 4.
    let v = info(&fx, "5");
    assert_eq!(v["reason"], "dependency 4 failed", "{v}");
    assert_eq!(v["after"], serde_json::json!([]), "{v}");
    // A label that no line before gives is refused, naming the line; nothing submitted.
    std::fs::write(fx.work.join("bad.txt"), "a: true\nb after c: true\n").unwrap();
    std::os::unix::fs::chown(fx.work.join("bad.txt"), Some(NOBODY), Some(NOBODY)).unwrap();
    let out = as_nobody(&fx, &["run", "-f", "bad.txt"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("bad.txt:2: after c: no job labelled \"c\" on a line before"),
        "{}",
        text(&out)
    );
    let out = as_nobody(&fx, &["list", "-o", "id"]);
    assert_eq!(stdout(&out).lines().count(), 6, "{}", text(&out));
}

/// `curl` as nobody against the server's socket: the HTTP status and the body.
fn api(fx: &Fixture, method: &str, path: &str, body: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(fx.swd.join("berth.sock"))
        .args([
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("http://berth{path}"))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let text = stdout(&out);
    let (b, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), b.to_string())
}

/// What one user's requests may cost the server is bounded, and past a bound the request
/// is refused with the reason; the server goes on serving.
#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn the_job_controls_bound_what_a_request_costs_the_server() {
    need_root!();
    let fx = Fixture::new();
    let _up = Up::start(&fx, &["--slots", "2"]);
    let out = as_nobody(&fx, &["run", "--hold", "true"]);
    let id = stdout(&out).trim().to_string();
    let job = |extra: serde_json::Value| {
        let mut j = serde_json::json!({"command": ["true"], "dir": fx.work.to_str().unwrap(),
                                       "env": [], "resources": null, "name": null, "log": null});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        j
    };
    let submit = |jobs: serde_json::Value, array: serde_json::Value| {
        api(
            &fx,
            "POST",
            "/v1/jobs",
            &serde_json::json!({"jobs": jobs, "array": array}).to_string(),
        )
    };
    let n: u64 = id.parse().unwrap();
    // More than 1,000 jobs waited for, a job named twice, too many waits in one submission.
    let many: Vec<u64> = (0..1001).map(|_| n).collect();
    let (code, body) = submit(
        serde_json::json!([job(serde_json::json!({"after": many}))]),
        serde_json::Value::Null,
    );
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("names a job twice"), "{body}");
    let (code, body) = submit(
        serde_json::json!([job(serde_json::json!({"after": [n]}))]),
        serde_json::json!([1, 100_001]),
    );
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("100,000") || body.contains("limit"), "{body}");
    // A time limit past a year, or of nothing.
    for t in [366u64 * 86_400_000, 0] {
        let (code, body) = submit(
            serde_json::json!([job(serde_json::json!({"time_limit_ms": t}))]),
            serde_json::Value::Null,
        );
        assert_eq!(code, "400", "{t}: {body}");
    }
    // A job that waits for one not before it in its submission.
    let (code, body) = submit(
        serde_json::json!([job(serde_json::json!({"after_in": [0]}))]),
        serde_json::Value::Null,
    );
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("not before it"), "{body}");
    // Waits, resolves and stops of too many ids at once.
    let ids: Vec<u64> = (1..=5001).collect();
    for (path, key) in [("/v1/wait", "jobs"), ("/v1/resolve", "ids")] {
        let (code, body) = api(
            &fx,
            "POST",
            path,
            &serde_json::json!({ key: ids }).to_string(),
        );
        assert_eq!(code, "400", "{path}: {body}");
    }
    let ids: Vec<u64> = (1..=100_001).collect();
    let (code, body) = api(
        &fx,
        "POST",
        "/v1/stop",
        &serde_json::json!({ "jobs": ids }).to_string(),
    );
    assert_eq!(code, "400", "{body}");
    // Bad bodies are refused, not a panic; the server still answers.
    for (path, body) in [
        ("/v1/wait", "{"),
        ("/v1/stop", "[]"),
        ("/v1/resolve", "null"),
    ] {
        let (code, _) = api(&fx, "POST", path, body);
        assert_eq!(code, "400", "{path} {body}");
    }
    let out = as_nobody(&fx, &["info", "-o", "state", &id]);
    assert_eq!(stdout(&out).trim(), "Queued", "{}", text(&out));
}
