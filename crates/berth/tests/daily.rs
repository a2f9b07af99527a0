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
    for (i, id) in [(1, 1), (2, 2), (3, 3)] {
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
        vec!["getlog", "1"],
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
