//! The administrator's commands (SPEC §4): `berth signfile`, `berth container check`,
//! `sign` and `list`; and the job wrapper on its own (SPEC §6).

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn berth_cmd(args: &[&str]) -> std::process::Output {
    output_within(Command::new(berth()).args(args).stdin(Stdio::null()), T)
}

#[test]
fn signfile_prints_one_signature_or_one_line_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::write(&a, "").unwrap();
    std::fs::write(&b, "what do ya want for nothing?").unwrap();
    let out = berth_cmd(&["signfile", a.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
    );
    let out = berth_cmd(&["signfile", a.to_str().unwrap(), b.to_str().unwrap()]);
    let so = stdout(&out);
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].ends_with(&format!("  {}", a.display())), "{so}");
    assert!(
        lines[1].starts_with("sha256:") && lines[1].ends_with(&format!("  {}", b.display())),
        "{so}"
    );

    let out = berth_cmd(&["signfile", "-h"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("Usage: berth signfile [OPTIONS] <FILE>..."),
        "{}",
        text(&out)
    );

    let out = berth_cmd(&["signfile", "/nonexistent/hook.sh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("berth signfile: /nonexistent/hook.sh: No such file"),
        "{}",
        text(&out)
    );
}

#[test]
fn signfile_with_a_key_is_an_hmac_and_the_key_must_be_private() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("site.key");
    std::fs::write(&key, "Jefe-is-a-key-of-16+\n").unwrap();
    chmod(&key, 0o600);
    let f = tmp.path().join("hook");
    std::fs::write(&f, "what do ya want for nothing?").unwrap();
    let out = berth_cmd(&[
        "signfile",
        "--key",
        key.to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let want = berth_container::sign::sign_file(
        &f,
        Some(&berth_container::Key::from_bytes(b"Jefe-is-a-key-of-16+")),
    )
    .unwrap();
    assert_eq!(stdout(&out).trim(), want);
    assert!(want.starts_with("hmac-sha256:"));
    chmod(&key, 0o644);
    let out = berth_cmd(&[
        "signfile",
        "--key",
        key.to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("readable by group or others (mode 644); run: chmod 600"),
        "{}",
        text(&out)
    );
}

fn setup_cfg(fx: &Fixture) -> (std::path::PathBuf, std::path::PathBuf) {
    let s = fx.hook("setup.sh", "#!/bin/sh\necho setup\n");
    let e = fx.hook("enter.sh", "#!/bin/sh\nexec \"$@\"\n");
    fx.cfg(
        "c1",
        &format!(
            "# c1: a test configuration\ncontainerHook setup root {s}   12345678   ;# signed by another product\n\ncontainerHook enter user \"{e}\" SIG({e})\ncontainerLimit RAM 100 1000\n",
            s = s.display(),
            e = e.display()
        ),
    );
    (s, e)
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn check_prints_each_check_and_fails_on_any() {
    need_root!();
    let fx = Fixture::new();
    let (s, e) = setup_cfg(&fx);
    let out = fx.run(&["container", "check", "c1"], T);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let so = stdout(&out);
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(lines.len(), 3, "{so}");
    assert!(
        lines[0].starts_with("ok    ") && lines[0].contains("c1.cfg: parsed, 2 hooks"),
        "{so}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "FAIL  container c1: setup hook {}: signature \"12345678\" is in another product's format (decimal), not berth's; re-sign it: berth container sign c1",
            s.display()
        )),
        "{so}"
    );
    assert_eq!(
        lines[2],
        format!(
            "ok    enter hook {} (user): regular, executable, signature matches",
            e.display()
        )
    );

    // sign: shows the change, rewrites only the signature, keeps owner and mode
    let cfg = fx.swd.join("containers/c1.cfg");
    let before = std::fs::read_to_string(&cfg).unwrap();
    let out = fx.run(&["container", "sign", "--dry-run", "c1"], T);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("-   12345678\n+   sha256:"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        before,
        "dry run changed the file"
    );
    chmod(&cfg, 0o640);
    let out = fx.run(&["container", "sign", "c1"], T);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("{}:2: setup hook {}", cfg.display(), s.display())),
        "{}",
        text(&out)
    );
    let after = std::fs::read_to_string(&cfg).unwrap();
    let sig = berth_container::sign::sign_file(&s, None).unwrap();
    assert_eq!(after, before.replace("12345678", &sig));
    assert_eq!(std::fs::metadata(&cfg).unwrap().mode() & 0o7777, 0o640);
    let out = fx.run(&["container", "check", "c1"], T);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).lines().all(|l| l.starts_with("ok    ")),
        "{}",
        text(&out)
    );
    let out = fx.run(&["container", "sign", "c1"], T);
    assert!(
        stdout(&out).contains("every signature is current"),
        "{}",
        text(&out)
    );
}

#[test]
fn check_reports_every_error_of_a_bad_file_with_its_line() {
    let fx = Fixture::new();
    fx.cfg(
        "bad",
        "containerHook enter root relative.sh x\ncontainerHook setup admin /s x\nfrobnicate\n",
    );
    let out = fx.run(&["container", "check", "bad"], T);
    assert_eq!(out.status.code(), Some(1));
    let so = stdout(&out);
    let cfg = fx.swd.join("containers/bad.cfg");
    for want in [
        format!("FAIL  {}: no enter hook", cfg.display()),
        format!(
            "FAIL  {}:1: containerHook enter: \"relative.sh\" is a relative path",
            cfg.display()
        ),
        format!(
            "FAIL  {}:2: containerHook setup: unknown privilege \"admin\"",
            cfg.display()
        ),
        format!(
            "FAIL  {}:3: unknown directive \"frobnicate\"",
            cfg.display()
        ),
    ] {
        assert!(so.contains(&want), "{want}\nnot in:\n{so}");
    }
    let out = fx.run(&["container", "check", "../etc/passwd"], T);
    assert!(
        stdout(&out).contains("container name \"../etc/passwd\" is not valid"),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn list_shows_each_configuration_and_its_state() {
    need_root!();
    let fx = Fixture::new();
    setup_cfg(&fx);
    let e = fx.hooks.join("enter.sh");
    fx.cfg(
        "good",
        &format!("containerHook enter user {e} SIG({e})\n", e = e.display()),
    );
    fx.cfg("broken", "nonsense\n");
    let out = fx.run(&["container", "list"], T);
    assert!(out.status.success(), "{}", text(&out));
    let so = stdout(&out);
    let rows: Vec<&str> = so.lines().collect();
    assert!(rows[0].starts_with("NAME"), "{so}");
    assert!(
        rows[1].starts_with("broken") && rows[1].contains("error"),
        "{so}"
    );
    assert!(
        rows[2].starts_with("c1")
            && rows[2].contains("error")
            && rows[2].contains("another product's format"),
        "{so}"
    );
    assert!(
        rows[3].starts_with("good") && rows[3].contains(" ok ") && rows[3].contains("enter:user"),
        "{so}"
    );
    let out = fx.run(&["container", "list", "--json"], T);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[2]["name"], "good");
    assert_eq!(arr[2]["ok"], true);
    assert_eq!(arr[2]["hooks"][0]["type"], "enter");
    assert_eq!(arr[1]["ok"], false);
}

fn wrapper() -> &'static Path {
    Path::new(env!("BERTH_VW_PATH"))
}

#[test]
fn the_wrapper_is_static() {
    let out = output_within(Command::new("ldd").arg(wrapper()), T);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("not a dynamic executable"), "ldd says: {all}");
}

#[test]
fn the_wrapper_reports_the_commands_status() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("status");
    for (cmd, code, report) in [
        ("exit 0", 0, "exit 0"),
        ("exit 5", 5, "exit 5"),
        ("kill -KILL $$", 128 + 9, "signal 9"),
    ] {
        let out = output_within(
            Command::new(wrapper())
                .args(["sh", "-c", cmd])
                .env("BERTH_VW_STATUS", &st),
            T,
        );
        assert_eq!(out.status.code(), Some(code), "{cmd}");
        let text = std::fs::read_to_string(&st).unwrap();
        assert!(text.starts_with("started "), "{text}");
        assert_eq!(text.lines().last(), Some(report), "{cmd}");
    }
    let out = output_within(
        Command::new(wrapper())
            .arg("/no/such/command")
            .env("BERTH_VW_STATUS", &st),
        T,
    );
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out)
            .contains("berth-vw: cannot run the job command: /no/such/command: no such file"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&st).unwrap().lines().last(),
        Some("exit 127")
    );
    let out = output_within(Command::new(wrapper()).stdin(Stdio::null()), T);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("usage: berth-vw CMD"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_wrapper_forwards_signals_to_the_commands_group() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let tmp = tempfile::tempdir().unwrap();
        let ready = tmp.path().join("ready");
        let script = format!(
            "trap 'echo child got $1; exit 3' {name}; touch {r}; while :; do sleep 0.1; done",
            name = match sig {
                libc::SIGTERM => "TERM",
                libc::SIGINT => "INT",
                _ => "HUP",
            },
            r = ready.display()
        );
        let child = Command::new(wrapper())
            .args(["sh", "-c", &script, "-", "it"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the command to start", T, || ready.exists());
        signal(&child, sig);
        let out = wait_output(child, T);
        assert_eq!(out.status.code(), Some(3), "signal {sig}: {}", text(&out));
        assert!(
            stdout(&out).contains("child got it"),
            "signal {sig}: {}",
            text(&out)
        );
    }
}

#[test]
fn example_signatures_match_the_hooks_as_committed() {
    let dir = repo().join("examples/containers");
    for name in ["docker", "podman-split", "bwrap"] {
        let path = dir.join(format!("{name}.cfg"));
        let src = std::fs::read_to_string(&path).unwrap();
        let cfg =
            berth_container::config::parse(name, &path, &src).unwrap_or_else(|e| panic!("{e}"));
        for h in &cfg.hooks {
            let file = dir.join("hooks").join(h.path.file_name().unwrap());
            let sig = berth_container::sign::sign_file(&file, None).unwrap();
            assert_eq!(
                h.signature,
                sig,
                "{}:{}: the signature of {} is stale; write {sig} there",
                path.display(),
                h.line,
                file.display()
            );
        }
    }
}
