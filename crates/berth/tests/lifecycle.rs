//! The hook life cycle of SPEC §5 and §6 through `berth container try`, with plain shell
//! hooks: what runs, in which order, as whom, with which variables, and what happens when
//! something fails, is stopped or is killed.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A hook that records its environment and identity in `work/NAME.env`, then exits 0
/// (or, for enter, runs "$@").
fn recording_hook(fx: &Fixture, kind: &str) -> std::path::PathBuf {
    let run = if kind == "enter" {
        "exec \"$@\""
    } else {
        "exit 0"
    };
    fx.hook(
        &format!("{kind}.sh"),
        &format!(
            "#!/bin/sh\n{{ env; echo \"ID=$(id -u):$(id -g)\"; echo \"PWD=$(pwd)\"; echo \"ARGS=$*\"; }} > {work}/{kind}.env\necho {kind} says hello\necho {kind} complains >&2\n{run}\n",
            work = fx.work.display()
        ),
    )
}

fn env_of(fx: &Fixture, kind: &str) -> BTreeMap<String, String> {
    fx.read_work(&format!("{kind}.env"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn four_hooks(fx: &Fixture, privilege: &str, extra: &str) {
    let mut cfg = String::new();
    for kind in ["setup", "enter", "cleanup", "teardown"] {
        let h = recording_hook(fx, kind);
        cfg += &format!(
            "containerHook {kind} {privilege} {} SIG({})\n",
            h.display(),
            h.display()
        );
    }
    cfg += extra;
    fx.cfg("c1", &cfg);
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn user_hooks_run_as_the_owner_with_the_exact_variables() {
    need_root!();
    let fx = Fixture::new();
    four_hooks(&fx, "user", "containerLimit RAM 500 1000\n");
    let out = fx.run(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "-r",
            "CORES/2 TMP#30",
            "c1",
            "--",
            "sh",
            "-c",
            "echo job ran as $(id -u)",
        ],
        T,
    );
    assert!(out.status.success(), "{}", text(&out));
    let so = stdout(&out);
    let se = stderr(&out);
    // The job's own output is unmarked; other hooks' lines are marked with the hook.
    assert!(so.contains("job ran as 65534\n"), "{}", text(&out));
    for kind in ["setup", "cleanup", "teardown"] {
        assert!(
            so.contains(&format!("[{kind}] {kind} says hello\n")),
            "{kind}: {}",
            text(&out)
        );
        assert!(
            se.contains(&format!("[{kind}] {kind} complains\n")),
            "{kind}: {}",
            text(&out)
        );
    }
    let host = berth_sys::short_hostname();
    for kind in ["setup", "enter", "cleanup", "teardown"] {
        let env = env_of(&fx, kind);
        assert_eq!(env["ID"], "65534:65534", "{kind}");
        assert_eq!(env["PWD"], fx.work.display().to_string(), "{kind}");
        assert_eq!(env["HOST"], host, "{kind}");
        assert_eq!(env["VOV_PROJECT_NAME"], "berth", "{kind}");
        assert_eq!(env["VOV_JOBSLOT"], "0", "{kind}");
        assert_eq!(env["VOV_CONTAINER_NAME"], "c1", "{kind}");
        assert_eq!(env["VOV_JOBID"], "1", "{kind}");
        assert_eq!(env["VOV_CONTAINER_CORES"], "2", "{kind}");
        assert_eq!(
            env["VOV_CONTAINER_RAM"], "500",
            "{kind}: default from the cfg"
        );
        assert_eq!(env["VOV_CONTAINER_TMP"], "30", "{kind}");
        assert!(!env.contains_key("VOV_CONTAINER_JOB_RUNDIR"), "{kind}");
        assert_eq!(env["USER"], "nobody", "{kind}: the job's environment");
        let vovs: Vec<&String> = env.keys().filter(|k| k.starts_with("VOV_")).collect();
        assert_eq!(
            vovs,
            [
                "VOV_CONTAINER_CORES",
                "VOV_CONTAINER_ENV_FILE",
                "VOV_CONTAINER_NAME",
                "VOV_CONTAINER_RAM",
                "VOV_CONTAINER_TMP",
                "VOV_JOBID",
                "VOV_JOBSLOT",
                "VOV_PROJECT_NAME"
            ],
            "{kind}"
        );
    }
    // enter gets WRAPPER CMD ARGS
    let args = &env_of(&fx, "enter")["ARGS"];
    assert_eq!(
        args,
        &format!(
            "{} sh -c echo job ran as $(id -u)",
            fx.swd.join("bin/berth-vw").display()
        )
    );
    assert_eq!(env_of(&fx, "setup")["ARGS"], "");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn root_hooks_run_as_root_with_a_clean_environment() {
    need_root!();
    let fx = Fixture::new();
    four_hooks(&fx, "root", "");
    let out = fx
        .berth(&["container", "try", "--user", "nobody", "c1", "--", "true"])
        .env("LD_PRELOAD", "")
        .env("LD_LIBRARY_PATH", "/tmp/evil")
        .env("BASH_ENV", "/tmp/evil")
        .env("ENV", "/tmp/evil")
        .env("IFS", "x")
        .env("MY_JOB_VAR", "kept in the env file")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(out, T);
    assert!(out.status.success(), "{}", text(&out));
    for kind in ["setup", "enter", "cleanup", "teardown"] {
        let env = env_of(&fx, kind);
        assert_eq!(env["ID"], "0:0", "{kind}");
        assert_eq!(
            env["PATH"], "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "{kind}"
        );
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "ENV",
            "MY_JOB_VAR",
            "CONTAINERS_CONF",
            "BERTH_SWD",
        ] {
            assert!(!env.contains_key(bad), "{kind} got {bad}");
        }
        assert!(
            !env.contains_key("IFS") || env["IFS"] != "x",
            "{kind} got IFS"
        );
        assert_eq!(
            env["VOV_CONTAINER_CORES"], "1",
            "{kind}: a job asks for CORES/1"
        );
        assert!(
            !env.contains_key("VOV_CONTAINER_RAM"),
            "{kind}: no RAM asked, no default"
        );
        assert_eq!(env["BERTH_JOB_UID"], "65534", "{kind}");
        // The env file exists while the hooks run and holds the job's environment.
        assert!(
            env["VOV_CONTAINER_ENV_FILE"].starts_with(&fx.swd.display().to_string()),
            "{kind}"
        );
    }
    // The env file is gone after the job; while it ran, it had the job's variables.
    let env_file = env_of(&fx, "enter")["VOV_CONTAINER_ENV_FILE"].clone();
    assert!(
        !std::path::Path::new(&env_file).exists(),
        "{env_file} left behind"
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn the_env_file_holds_the_jobs_environment() {
    need_root!();
    let fx = Fixture::new();
    let h = fx.hook(
        "enter.sh",
        &format!("#!/bin/sh\ncp \"$VOV_CONTAINER_ENV_FILE\" {}/envfile\nls -l \"$VOV_CONTAINER_ENV_FILE\" > {}/envfile.ls\nexec \"$@\"\n", fx.work.display(), fx.work.display()),
    );
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter root {} SIG({})\n",
            h.display(),
            h.display()
        ),
    );
    let child = fx
        .berth(&["container", "try", "--user", "nobody", "c1", "--", "true"])
        .env("MY_JOB_VAR", "two words")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, T);
    assert!(out.status.success(), "{}", text(&out));
    let envfile = fx.read_work("envfile");
    assert!(
        envfile.lines().any(|l| l == "MY_JOB_VAR=two words"),
        "{envfile}"
    );
    assert!(envfile.lines().any(|l| l == "USER=nobody"), "{envfile}");
    assert!(
        envfile.lines().any(|l| l.starts_with("BERTH_VW_STATUS=")),
        "{envfile}"
    );
    let ls = fx.read_work("envfile.ls");
    assert!(
        ls.starts_with("-rw-------") && ls.contains("nobody"),
        "{ls}"
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn hooks_run_in_the_run_dir_when_set() {
    need_root!();
    let fx = Fixture::new();
    let run_dir = fx.root.join("rundir");
    std::fs::create_dir(&run_dir).unwrap();
    four_hooks(
        &fx,
        "user",
        &format!("containerHooksRunDir {}\n", run_dir.display()),
    );
    let out = fx.run(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        T,
    );
    assert!(out.status.success(), "{}", text(&out));
    for kind in ["setup", "enter", "cleanup", "teardown"] {
        let env = env_of(&fx, kind);
        assert_eq!(env["PWD"], run_dir.display().to_string(), "{kind}");
        assert_eq!(
            env["VOV_CONTAINER_JOB_RUNDIR"],
            fx.work.display().to_string(),
            "{kind}"
        );
    }
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn exit_status_is_the_commands() {
    need_root!();
    let fx = Fixture::new();
    let h = fx.hook("enter.sh", "#!/bin/sh\n\"$@\"\necho enter saw $?\nexit 0\n");
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {} SIG({})\n",
            h.display(),
            h.display()
        ),
    );
    for (cmd, code, reason) in [
        ("exit 0", 0, "Done (exit 0)"),
        ("exit 7", 7, "Failed (exit 7): exit status 7"),
        (
            "kill -TERM $$",
            128 + 15,
            "Failed (signal 15 (SIGTERM)): killed by signal 15",
        ),
    ] {
        let out = fx.run(
            &[
                "container",
                "try",
                "--user",
                "nobody",
                "c1",
                "--",
                "sh",
                "-c",
                cmd,
            ],
            T,
        );
        assert_eq!(out.status.code(), Some(code), "{cmd}: {}", text(&out));
        assert!(stderr(&out).contains(reason), "{cmd}: {}", text(&out));
    }
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn without_the_wrapper_the_status_is_the_enter_hooks() {
    need_root!();
    let fx = Fixture::new();
    let h = fx.hook("enter.sh", "#!/bin/sh\necho not running the job\nexit 5\n");
    let t = fx.hook(
        "teardown.sh",
        &format!("#!/bin/sh\ntouch {}/teardown.ran\n", fx.work.display()),
    );
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {h} SIG({h})\ncontainerHook teardown user {t} SIG({t})\n",
            h = h.display(),
            t = t.display()
        ),
    );
    let out = fx.run(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        T,
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        stderr(&out).contains("enter hook")
            && stderr(&out)
                .contains("exited 5 (the wrapper never ran; the status is the enter hook's)"),
        "{}",
        text(&out)
    );
    assert!(fx.work.join("teardown.ran").exists());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_failing_setup_still_runs_cleanup_and_teardown() {
    need_root!();
    let fx = Fixture::new();
    let s = fx.hook("setup.sh", "#!/bin/sh\necho cannot set up >&2\nexit 3\n");
    let e = fx.hook(
        "enter.sh",
        &format!(
            "#!/bin/sh\ntouch {}/enter.ran\nexec \"$@\"\n",
            fx.work.display()
        ),
    );
    let c = fx.hook(
        "cleanup.sh",
        &format!("#!/bin/sh\ntouch {}/cleanup.ran\n", fx.work.display()),
    );
    let t = fx.hook(
        "teardown.sh",
        &format!("#!/bin/sh\ntouch {}/teardown.ran\n", fx.work.display()),
    );
    fx.cfg(
        "c1",
        &[
            ("setup", &s),
            ("enter", &e),
            ("cleanup", &c),
            ("teardown", &t),
        ]
        .iter()
        .map(|(k, p)| {
            format!(
                "containerHook {k} root {} SIG({})\n",
                p.display(),
                p.display()
            )
        })
        .collect::<String>(),
    );
    let out = fx.run(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        T,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!(
            "container c1: setup hook {} exited 3",
            s.display()
        )),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("[setup] cannot set up"),
        "{}",
        text(&out)
    );
    assert!(!fx.work.join("enter.ran").exists());
    assert!(fx.work.join("cleanup.ran").exists());
    assert!(fx.work.join("teardown.ran").exists());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_failing_teardown_is_recorded_but_keeps_the_status() {
    need_root!();
    let fx = Fixture::new();
    let e = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    let t = fx.hook("teardown.sh", "#!/bin/sh\nexit 9\n");
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {e} SIG({e})\ncontainerHook teardown user {t} SIG({t})\n",
            e = e.display(),
            t = t.display()
        ),
    );
    let out = fx.run(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        T,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).contains("Done (exit 0)"), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!(
            "container c1: teardown hook {} exited 9",
            t.display()
        )),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_setup_past_its_timeout_is_killed_and_teardown_runs() {
    need_root!();
    let fx = Fixture::new();
    // The setup ignores SIGTERM: the grace period ends it with SIGKILL.
    let s = fx.hook(
        "setup.sh",
        "#!/bin/sh\ntrap '' TERM\nsleep 30 & wait; sleep 30\n",
    );
    let e = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    let t = fx.hook(
        "teardown.sh",
        &format!("#!/bin/sh\ntouch {}/teardown.ran\n", fx.work.display()),
    );
    fx.cfg(
        "c1",
        &format!(
            "containerHook setup user {s} SIG({s})\ncontainerHook enter user {e} SIG({e})\ncontainerHook teardown user {t} SIG({t})\ncontainerHookTimeout setup 1\ncontainerKillGrace 1\n",
            s = s.display(),
            e = e.display(),
            t = t.display()
        ),
    );
    let out = fx.run(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        T,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("ran past its timeout of 1 s and was killed"),
        "{}",
        text(&out)
    );
    assert!(fx.work.join("teardown.ran").exists());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn stop_sends_sigterm_then_sigkill_to_the_enter_group_and_cleans_up() {
    need_root!();
    let fx = Fixture::new();
    // enter and its child both ignore SIGTERM, so only the SIGKILL after the grace ends them.
    let e = fx.hook(
        "enter.sh",
        &format!("#!/bin/sh\ntrap 'echo enter got TERM' TERM\nsh -c 'trap \"\" TERM; touch {w}/started; sleep 60' &\nwait; wait\n", w = fx.work.display()),
    );
    let t = fx.hook(
        "teardown.sh",
        &format!("#!/bin/sh\ntouch {}/teardown.ran\n", fx.work.display()),
    );
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {e} SIG({e})\ncontainerHook teardown user {t} SIG({t})\ncontainerKillGrace 1\n",
            e = e.display(),
            t = t.display()
        ),
    );
    let child = fx.spawn(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        false,
    );
    wait_until("the job to start", T, || fx.work.join("started").exists());
    signal(&child, libc::SIGINT);
    let out = wait_output(child, T);
    assert!(!out.status.success(), "{}", text(&out));
    let so = stdout(&out);
    assert!(so.contains("enter got TERM"), "{}", text(&out));
    assert!(
        stderr(&out).contains("stopped by request"),
        "{}",
        text(&out)
    );
    assert!(fx.work.join("teardown.ran").exists());
    // nothing of the job is left: no process of nobody's runs `sleep 60`
    assert_eq!(nobodys("sleep 60"), [0u32; 0], "left running");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_refused_hook_runs_no_hook_at_all() {
    need_root!();
    let fx = Fixture::new();
    let s = fx.hook(
        "setup.sh",
        &format!("#!/bin/sh\ntouch {}/setup.ran\n", fx.work.display()),
    );
    let e = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "c1",
        &format!(
            "containerHook setup root {s} SIG({s})\ncontainerHook enter root {e} SIG({e})\n",
            s = s.display(),
            e = e.display()
        ),
    );
    // Tamper with enter after signing.
    write_exec(&e, "#!/bin/sh\nexec \"$@\" # changed\n");
    let out = fx.run(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        T,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "container c1: enter hook {}: signature mismatch",
            e.display()
        )),
        "{}",
        text(&out)
    );
    assert!(
        !fx.work.join("setup.ran").exists(),
        "setup ran although enter was refused"
    );
    // A limit above the cfg's MAX is refused too, before any hook.
    fx.cfg(
        "c2",
        &format!("containerHook setup root {s} SIG({s})\ncontainerHook enter root {s} SIG({s})\ncontainerLimit RAM 100 200\n", s = s.display()),
    );
    let out = fx.run(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "-r",
            "RAM/300",
            "c2",
            "--",
            "true",
        ],
        T,
    );
    assert!(
        stderr(&out).contains("the job asks for RAM 300"),
        "{}",
        text(&out)
    );
    assert!(!fx.work.join("setup.ran").exists());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_job_never_runs_as_root() {
    need_root!();
    let fx = Fixture::new();
    let e = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "c1",
        &format!("containerHook enter user {e} SIG({e})\n", e = e.display()),
    );
    for args in [
        &["container", "try", "c1", "--", "true"][..],
        &["container", "try", "--user", "root", "c1", "--", "true"],
    ] {
        let out = fx.run(args, T);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("a job never runs as root"),
            "{}",
            text(&out)
        );
    }
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn the_log_file_gets_every_line_and_is_opened_as_the_owner() {
    need_root!();
    let fx = Fixture::new();
    four_hooks(&fx, "user", "");
    let log = fx.work.join("job.log");
    let out = fx.run(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "-l",
            log.to_str().unwrap(),
            "c1",
            "--",
            "echo",
            "from the job",
        ],
        T,
    );
    assert!(out.status.success(), "{}", text(&out));
    let text_log = std::fs::read_to_string(&log).unwrap();
    for want in [
        "[setup] setup says hello",
        "[setup] setup complains",
        "from the job",
        "[teardown] teardown says hello",
    ] {
        assert!(text_log.contains(want), "{want:?} not in:\n{text_log}");
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), NOBODY);
    // A log that is a symbolic link is refused, not followed as root.
    let victim = fx.root.join("victim");
    std::fs::write(&victim, "").unwrap();
    let link = fx.work.join("link.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = fx.run(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "-l",
            link.to_str().unwrap(),
            "c1",
            "--",
            "true",
        ],
        T,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot open the log"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn a_killed_try_is_recovered_by_the_next() {
    need_root!();
    let fx = Fixture::new();
    let e = fx.hook(
        "enter.sh",
        &format!(
            "#!/bin/sh\ntouch {w}/started\nexec \"$@\"\n",
            w = fx.work.display()
        ),
    );
    let c = fx.hook(
        "cleanup.sh",
        &format!(
            "#!/bin/sh\necho cleanup of $VOV_JOBID\ntouch {}/cleanup.$VOV_JOBID\n",
            fx.work.display()
        ),
    );
    let t = fx.hook(
        "teardown.sh",
        &format!(
            "#!/bin/sh\necho teardown of $VOV_JOBID\ntouch {}/teardown.$VOV_JOBID\n",
            fx.work.display()
        ),
    );
    fx.cfg(
        "c1",
        &format!(
            "containerHook enter user {e} SIG({e})\ncontainerHook cleanup user {c} SIG({c})\ncontainerHook teardown root {t} SIG({t})\ncontainerKillGrace 1\n",
            e = e.display(),
            c = c.display(),
            t = t.display()
        ),
    );
    let log = fx.work.join("job1.log");
    let child = fx.spawn(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "-l",
            log.to_str().unwrap(),
            "c1",
            "--",
            "sleep",
            "300",
        ],
        true,
    );
    wait_until("the job to start", T, || fx.work.join("started").exists());
    signal(&child, libc::SIGKILL);
    wait_status(child, T);
    assert!(!fx.work.join("teardown.1").exists());
    assert!(fx.swd.join("try/records/1.json").exists(), "no record left");
    // The next try finishes what the killed one owed, says so, then runs its own job.
    let out = fx.run(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        T,
    );
    assert!(out.status.success(), "{}", text(&out));
    let se = stderr(&out);
    assert!(se.contains("job 1: the process that ran it ended in the middle; finishing the cleanup and teardown of container c1"), "{se}");
    assert!(se.contains("job 1: ended its enter hook"), "{se}");
    assert!(
        se.contains("job 1: cleanup hook ran") && se.contains("job 1: teardown hook ran"),
        "{se}"
    );
    for f in ["cleanup.1", "teardown.1", "cleanup.2", "teardown.2"] {
        assert!(fx.work.join(f).exists(), "{f} missing: {se}");
    }
    assert!(!fx.swd.join("try/records/1.json").exists());
    // The job's log says what happened to it too.
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(
        l.contains("[cleanup] cleanup of 1") && l.contains("finishing the cleanup"),
        "{l}"
    );
    assert!(
        nobodys("sleep 300").is_empty(),
        "the killed job's command is still running"
    );
    // Nothing more to recover.
    let out = fx.run(&["container", "recover"], T);
    assert!(
        stderr(&out).contains("nothing to recover"),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn try_without_root_runs_user_hooks_as_the_caller() {
    need_root!();
    // Run berth itself as nobody: user hooks run as nobody, root hooks are refused.
    let fx = Fixture::new();
    let e = fx.hook("enter.sh", "#!/bin/sh\nid -u\nexec \"$@\"\n");
    fx.cfg(
        "u",
        &format!("containerHook enter user {e} SIG({e})\n", e = e.display()),
    );
    // The SWD stays root's (a root-hook cfg must sit in root-only directories); nobody
    // gets the directories that try writes.
    for d in ["try", "bin"] {
        std::fs::create_dir(fx.swd.join(d)).unwrap();
        std::os::unix::fs::chown(fx.swd.join(d), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let mut c = fx.berth(&["container", "try", "u", "--", "true"]);
    c.uid(NOBODY).gid(NOBODY);
    let out = output_within(&mut c, T);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "65534");
    fx.cfg(
        "r",
        &format!("containerHook enter root {e} SIG({e})\n", e = e.display()),
    );
    let mut c = fx.berth(&["container", "try", "r", "--", "true"]);
    c.uid(NOBODY).gid(NOBODY);
    let out = output_within(&mut c, T);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("runs as root, but berth runs as uid 65534"),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn the_wrapper_is_not_installed_where_a_user_could_replace_it() {
    need_root!();
    let fx = Fixture::new();
    let e = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "c1",
        &format!("containerHook enter user {e} SIG({e})\n", e = e.display()),
    );
    let bin = fx.swd.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::chown(&bin, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = fx.run(
        &["container", "try", "--user", "nobody", "c1", "--", "true"],
        T,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "the job wrapper goes in {}, which must be a directory owned by root",
            bin.display()
        )),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn tries_at_once_get_slots_of_their_own() {
    need_root!();
    let fx = Fixture::new();
    let e = fx.hook(
        "enter.sh",
        &format!(
            "#!/bin/sh\ntouch {w}/in.$VOV_JOBSLOT\nwhile [ ! -e {w}/in.0 ] || [ ! -e {w}/in.1 ]; do sleep 0.05; done\necho slot=$VOV_JOBSLOT\nexec \"$@\"\n",
            w = fx.work.display()
        ),
    );
    fx.cfg(
        "c1",
        &format!("containerHook enter user {e} SIG({e})\n", e = e.display()),
    );
    let start = || {
        fx.berth(&["container", "try", "--user", "nobody", "c1", "--", "true"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Both wait in their enter hook until the other is there too: they run at once.
    let (a, b) = (start(), start());
    let (a, b) = (wait_output(a, T), wait_output(b, T));
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        text(&a),
        text(&b)
    );
    let mut slots = vec![stdout(&a), stdout(&b)];
    slots.sort();
    assert_eq!(slots, ["slot=0\n", "slot=1\n"]);
    // Once they are done, slot 0 is free again.
    let c = wait_output(start(), T);
    assert_eq!(stdout(&c), "slot=0\n", "{}", text(&c));
}
