//! The example configurations of examples/containers, installed with their install.sh and
//! run for real: podman with runc on a busybox image imported from local files, and
//! bubblewrap as nobody.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// Runs `berth container try` as root for the job owner nobody, with a project name of
/// the test's own so that parallel tests never share a container name.
fn try_job(fx: &Fixture, project: &str, cfg: &str, res: &str, cmd: &str) -> std::process::Output {
    fx.run(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "--project",
            project,
            "-r",
            res,
            cfg,
            "--",
            "sh",
            "-c",
            cmd,
        ],
        T,
    )
}

fn limits_script() -> &'static str {
    "echo uid=$(id -u) gid=$(id -g); \
     echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); \
     echo tmp=$(df -m /tmp | tail -1 | awk '{print $2}'); \
     echo pwd=$(pwd); echo hello > out.txt"
}

fn check_limits(fx: &Fixture, out: &std::process::Output, ram_mb: u64, tmp_mb: u64) {
    let so = stdout(out);
    assert!(so.contains("uid=65534 gid=65534"), "{}", text(out));
    assert!(
        so.contains(&format!("mem={}", ram_mb * 1024 * 1024)),
        "{}",
        text(out)
    );
    assert!(so.contains(&format!("tmp={tmp_mb}\n")), "{}", text(out));
    assert!(
        so.contains(&format!("pwd={}", fx.work.display())),
        "{}",
        text(out)
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(fx.work.join("out.txt")).unwrap();
    assert_eq!(meta.uid(), NOBODY, "the job wrote as its owner");
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn docker_runs_the_job_in_a_container_with_its_limits() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["docker"]);
    let out = try_job(
        &fx,
        "t-docker-ok",
        "docker",
        "CORES/1 RAM/200 TMP#20",
        limits_script(),
    );
    assert!(out.status.success(), "{}", text(&out));
    check_limits(&fx, &out, 200, 20);
    // the default TMP of docker.cfg is 100 MB; a non-zero exit is the job's
    let out = try_job(
        &fx,
        "t-docker-ok",
        "docker",
        "CORES/1",
        "df -m /tmp | tail -1 | awk '{print $2}'; exit 3",
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "100");
    assert!(stderr(&out).contains("exit status 3"), "{}", text(&out));
    // above the MAX of 10000 MB of TMP: refused before any hook
    let out = try_job(&fx, "t-docker-ok", "docker", "TMP#20000", "true");
    assert!(
        stderr(&out).contains("asks for TMP 20000"),
        "{}",
        text(&out)
    );
    assert!(podman_containers("t-docker-ok").is_empty());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn docker_wrapper_is_pid_1_reaps_orphans_and_forwards_signals() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["docker"]);
    // Orphans reparent to process 1, the wrapper: none stays a zombie.
    let out = try_job(
        &fx,
        "t-docker-pid1",
        "docker",
        "CORES/1",
        "echo pid1=$(cat /proc/1/cmdline | tr '\\0' ' '); for i in 1 2 3; do (sleep 0.1 &); done; sleep 1; \
         echo zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)",
    );
    assert!(out.status.success(), "{}", text(&out));
    let so = stdout(&out);
    assert!(
        so.contains(&format!(
            "pid1={} sh -c",
            fx.swd.join("bin/berth-vw").display()
        )),
        "{so}"
    );
    assert!(so.contains("zombies=0"), "{so}");

    // Stop in the middle: SIGTERM reaches the command through the wrapper, the job ends,
    // and the container is gone.
    let child = fx.spawn(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "--project",
            "t-docker-stop",
            "docker",
            "--",
            "sh",
            "-c",
            "trap 'echo job got TERM; exit 42' TERM; touch started; while :; do sleep 0.1; done",
        ],
        false,
    );
    wait_until("the job to start", T, || fx.work.join("started").exists());
    signal(&child, libc::SIGINT);
    let out = wait_output(child, T);
    assert!(stdout(&out).contains("job got TERM"), "{}", text(&out));
    assert!(
        stderr(&out).contains("stopped by request"),
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(42), "{}", text(&out));
    wait_until("the container to be removed", T, || {
        podman_containers("t-docker-stop").is_empty()
    });
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn podman_split_runs_setup_enter_cleanup_teardown() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["podman-split"]);
    let out = try_job(
        &fx,
        "t-split-ok",
        "podman-split",
        "CORES/1 RAM/300 TMP#40",
        &format!("{}; touch core", limits_script()),
    );
    assert!(out.status.success(), "{}", text(&out));
    check_limits(&fx, &out, 300, 40);
    let so = stdout(&out);
    assert!(so.contains("[setup] container t-split-ok-"), "{so}");
    assert!(
        so.contains(&format!("[cleanup] removed {}/core", fx.work.display())),
        "{so}"
    );
    assert!(so.contains("[teardown] container t-split-ok-"), "{so}");
    assert!(!fx.work.join("core").exists());
    let out = try_job(&fx, "t-split-ok", "podman-split", "CORES/1", "exit 6");
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(podman_containers("t-split-ok").is_empty());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn podman_split_stop_ends_the_command_inside() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["podman-split"]);
    // podman exec passes no signal on: the teardown's removal of the container must end
    // the command, which here would otherwise tick forever.
    let child = fx.spawn(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "--project",
            "t-split-stop",
            "podman-split",
            "--",
            "sh",
            "-c",
            "trap '' TERM; while :; do date +%s%N > tick; sleep 0.1; done",
        ],
        false,
    );
    wait_until("the job to tick", T, || fx.work.join("tick").exists());
    signal(&child, libc::SIGTERM);
    let out = wait_output(child, T);
    assert!(
        stderr(&out).contains("stopped by request"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("[teardown] container t-split-stop-"),
        "{}",
        text(&out)
    );
    assert!(podman_containers("t-split-stop").is_empty());
    let before = fx.read_work("tick");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        fx.read_work("tick"),
        before,
        "the command inside still runs"
    );
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn podman_split_failing_setup_still_tears_down() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["podman-split"]);
    // An image that does not exist: setup fails, the job never runs, teardown runs.
    let setup = fx.hooks.join("podman-setup.sh");
    let text_s = std::fs::read_to_string(&setup).unwrap();
    write_exec(
        &setup,
        &text_s.replace(
            &format!("IMAGE={IMAGE}"),
            "IMAGE=localhost/no-such-image:latest",
        ),
    );
    let out = fx.run(&["container", "sign", "podman-split"], T);
    assert!(out.status.success(), "{}", text(&out));
    let out = try_job(&fx, "t-split-fail", "podman-split", "CORES/1", "touch ran");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("container podman-split: setup hook")
            && stderr(&out).contains("exited"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("[cleanup] cleanup of job"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("[teardown] container t-split-fail-"),
        "{}",
        text(&out)
    );
    assert!(!fx.work.join("ran").exists());
    assert!(podman_containers("t-split-fail").is_empty());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn podman_split_is_recovered_after_the_runner_is_killed() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["podman-split"]);
    let child = fx.spawn(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "--project",
            "t-split-kill",
            "podman-split",
            "--",
            "sh",
            "-c",
            "touch started; sleep 300",
        ],
        true,
    );
    wait_until("the job to start", T, || fx.work.join("started").exists());
    signal(&child, libc::SIGKILL);
    wait_status(child, T);
    assert_eq!(
        podman_containers("t-split-kill").len(),
        1,
        "the container outlives its killed runner"
    );
    let out = fx.run(&["container", "recover"], T);
    assert!(out.status.success(), "{}", text(&out));
    let se = stderr(&out);
    assert!(
        se.contains("job 1: the process that ran it ended in the middle"),
        "{se}"
    );
    assert!(se.contains("job 1: teardown hook ran"), "{se}");
    assert!(podman_containers("t-split-kill").is_empty());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn docker_is_recovered_after_the_runner_is_killed() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["docker"]);
    let child = fx.spawn(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "--project",
            "t-docker-kill",
            "docker",
            "--",
            "sh",
            "-c",
            "touch started; sleep 300",
        ],
        true,
    );
    wait_until("the job to start", T, || fx.work.join("started").exists());
    signal(&child, libc::SIGKILL);
    wait_status(child, T);
    // The next try ends the orphaned enter hook (SIGTERM, which podman passes on to the
    // wrapper) and the container goes with it (--rm).
    let out = try_job(&fx, "t-docker-kill", "docker", "CORES/1", "echo second job");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("job 1: ended its enter hook"),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("second job"), "{}", text(&out));
    wait_until("the first container to be removed", T, || {
        podman_containers("t-docker-kill").is_empty()
    });
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn bwrap_runs_the_job_unprivileged() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["bwrap"]);
    let out = try_job(
        &fx,
        "t-bwrap",
        "bwrap",
        "RAM/100 TMP#16",
        "echo uid=$(id -u); echo tmp=$(df -m /tmp | tail -1 | awk '{print $2}'); echo vmem=$(ulimit -v); \
         echo root=$(ls / | tr '\\n' ' '); echo pid1=$(cat /proc/1/cmdline | tr '\\0' ' ' | cut -c1-5); echo x > out.txt",
    );
    assert!(out.status.success(), "{}", text(&out));
    let so = stdout(&out);
    assert!(so.contains("uid=65534"), "{so}");
    assert!(so.contains("tmp=16\n"), "{so}");
    assert!(so.contains(&format!("vmem={}", 100 * 1024)), "{so}");
    assert!(so.contains("root=bin dev etc proc"), "{so}");
    assert!(fx.work.join("out.txt").exists());
    // the default TMP is 64 MB; the status is the command's
    let out = try_job(
        &fx,
        "t-bwrap",
        "bwrap",
        "CORES/1",
        "df -m /tmp | tail -1 | awk '{print $2}'; exit 9",
    );
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "64");
    // a missing image fails the setup with its reason, and the job never runs
    let setup = fx.hooks.join("bwrap-setup.sh");
    let s = std::fs::read_to_string(&setup).unwrap();
    write_exec(&setup, &s.replacen("ROOTFS=", "ROOTFS=/nonexistent #", 1));
    assert!(fx.run(&["container", "sign", "bwrap"], T).status.success());
    let out = try_job(&fx, "t-bwrap", "bwrap", "CORES/1", "touch ran");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("[setup] bwrap: no image at /nonexistent"),
        "{}",
        text(&out)
    );
    assert!(!fx.work.join("ran").exists());
}

#[test]
#[ignore = "needs root: .ci/run runs it with --include-ignored"]
fn bwrap_stop_ends_the_job() {
    need_root!();
    let fx = Fixture::new();
    fx.install_examples(&["bwrap"]);
    let child = fx.spawn(
        &[
            "container",
            "try",
            "--user",
            "nobody",
            "--project",
            "t-bwrap-stop",
            "bwrap",
            "--",
            "sh",
            "-c",
            "trap 'echo job got TERM; exit 42' TERM; touch started; while :; do sleep 0.1; done",
        ],
        false,
    );
    wait_until("the job to start", T, || fx.work.join("started").exists());
    signal(&child, libc::SIGINT);
    let out = wait_output(child, T);
    assert!(
        stderr(&out).contains("stopped by request"),
        "{}",
        text(&out)
    );
    assert_eq!(nobodys("touch started"), [0u32; 0], "the job still runs");
}
