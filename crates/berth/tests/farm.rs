//! A farm of several hosts on one machine: the server and each tasker in a network
//! namespace of its own, joined by veth links to a bridge in a namespace of the test's
//! (addresses in 198.18.0.0/24, which reach nothing outside). Links are cut and restored,
//! taskers frozen, and every scenario checks that nothing accepted is lost and nothing runs
//! twice. The namespaces, links and processes are removed even when a test fails.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The farm: its namespaces (the hub with the bridge first), its processes, its SWDs.
struct Farm {
    id: String,
    namespaces: Vec<String>,
    server: Option<Child>,
    taskers: Vec<Option<Child>>,
    fx: Fixture,
    port: u16,
    /// The munged of each host (the server's first, then the workstation's), all of one key.
    munged: Vec<(Child, std::path::PathBuf)>,
    /// A namespace with no tasker, for a user's workstation.
    workstation: Option<usize>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Farm {
    /// A server and `hosts` tasker hosts of 4 slots each, with a grace of `grace` s.
    fn new(hosts: usize, grace: &str) -> Farm {
        Farm::build(hosts, grace, false)
    }

    /// The same, and a workstation: a host of its own with MUNGE, from which a user works.
    fn with_workstation(hosts: usize, grace: &str) -> Farm {
        Farm::build(hosts, grace, true)
    }

    fn build(hosts: usize, grace: &str, workstation: bool) -> Farm {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "b{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let fx = Fixture::new();
        chmod(&fx.work, 0o1777);
        let mut farm = Farm {
            id: id.clone(),
            namespaces: Vec::new(),
            server: None,
            taskers: Vec::new(),
            fx,
            port: 7600,
            munged: Vec::new(),
            workstation: workstation.then_some(hosts + 1),
        };
        let hub = format!("{id}-hub");
        ip(&["netns", "add", &hub]);
        farm.namespaces.push(hub.clone());
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        let last = if workstation { hosts + 1 } else { hosts };
        for i in 0..=last {
            let ns = farm.ns(i);
            ip(&["netns", "add", &ns]);
            farm.namespaces.push(ns.clone());
            let outer = farm.link(i);
            ip(&[
                "-n", &hub, "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.18.0.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        if workstation {
            for host in ["srv", "ws"] {
                farm.munged
                    .push(farm_munged(&farm.fx.root.join(format!("munge-{host}"))));
            }
        }
        let munge_sock = farm
            .munged
            .first()
            .map(|(_, s)| s.display().to_string())
            .unwrap_or_default();
        let mut args: Vec<String> = vec![
            "server".into(),
            "--swd".into(),
            farm.fx.swd.display().to_string(),
            "--listen".into(),
            format!("198.18.0.1:{}", farm.port),
            "--tasker-grace".into(),
            grace.into(),
        ];
        if workstation {
            args.extend([
                "--clients".into(),
                format!("198.18.0.1:{}", farm.port + 1),
                "--munge-socket".into(),
                munge_sock,
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        farm.server = Some(farm.spawn_in(0, &args));
        let sock = farm.fx.swd.join("berth.sock");
        wait_until("the server", T, || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        for h in 1..=hosts {
            farm.taskers.push(None);
            farm.start_tasker(h);
        }
        farm
    }

    /// Host `i`'s namespace (0 is the server's).
    fn ns(&self, i: usize) -> String {
        let name = match i {
            0 => "srv".to_string(),
            i if Some(i) == self.workstation => "ws".to_string(),
            i => format!("h{i}"),
        };
        format!("{}-{}", self.id, name)
    }

    /// `berth ARGS --server` the server's client address, as `uid` on the workstation,
    /// with the workstation's munged and the server's public key.
    fn on_workstation(
        &self,
        uid: u32,
        munge: &std::path::Path,
        args: &[&str],
    ) -> std::process::Output {
        let ws = self.workstation.expect("a workstation");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(ws), "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--"])
            .arg(berth())
            .arg(args[0])
            .args(["--server", &format!("198.18.0.1:{}", self.port + 1)])
            .arg("--server-key")
            .arg(self.fx.swd.join("server.pub"))
            .args(&args[1..])
            .current_dir(&self.fx.work)
            .env_remove("BERTH_SWD")
            .env("BERTH_MUNGE_SOCKET", munge)
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null());
        output_within(&mut c, T)
    }

    /// Host `i`'s end of its link, in the hub.
    fn link(&self, i: usize) -> String {
        format!("{}v{i}", self.id)
    }

    fn spawn_in(&self, i: usize, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .arg(berth())
            .args(args)
            .env("CONTAINERS_CONF", containers_conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts host `h`'s tasker: an SWD of its own, a copy of the secret.
    fn start_tasker(&mut self, h: usize) {
        let dir = self.fx.root.join(format!("host{h}"));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("cluster.secret");
        if !secret.exists() {
            std::fs::copy(self.fx.swd.join("cluster.secret"), &secret).unwrap();
            chmod(&secret, 0o600);
        }
        let name = format!("h{h}");
        let child = self.spawn_in(
            h,
            &[
                "tasker",
                "--swd",
                dir.join("swd").to_str().unwrap(),
                "--name",
                &name,
                "--server",
                &format!("198.18.0.1:{}", self.port),
                "--secret",
                secret.to_str().unwrap(),
                "--slots",
                "4",
                "--stop-jobs",
                "-r",
                "CORES/4",
            ],
        );
        self.taskers[h - 1] = Some(child);
        wait_until(&format!("tasker {name} to join"), T, || {
            self.taskers_joined().contains(&name)
        });
    }

    fn taskers_joined(&self) -> Vec<String> {
        let out = self.fx.run(&["taskers", "--json"], T);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn cut(&self, h: usize) {
        ip(&[
            "-n",
            &self.namespaces[0],
            "link",
            "set",
            &self.link(h),
            "down",
        ]);
    }

    fn restore(&self, h: usize) {
        ip(&[
            "-n",
            &self.namespaces[0],
            "link",
            "set",
            &self.link(h),
            "up",
        ]);
    }

    /// Every job, from `berth list`.
    fn jobs(&self) -> Vec<serde_json::Value> {
        let out = self.fx.run(&["list", "--json", "--limit", "100000"], T);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn count(&self, state: &str) -> usize {
        self.jobs().iter().filter(|j| j["state"] == state).count()
    }

    /// How many times each job ran, from the lines the jobs appended.
    fn runs(&self) -> std::collections::HashMap<String, usize> {
        let text = std::fs::read_to_string(self.fx.work.join("ran")).unwrap_or_default();
        let mut m = std::collections::HashMap::new();
        for l in text.lines() {
            *m.entry(l.to_string()).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        for c in self.taskers.iter_mut().chain([&mut self.server]).flatten() {
            signal(c, libc::SIGKILL);
            let _ = c.wait();
        }
        for (c, _) in &mut self.munged {
            signal(c, libc::SIGTERM);
            let _ = c.wait();
        }
        // The jobs the taskers ran (their sleeps) go with their cgroups' owners: end them.
        let _ = Command::new("pkill")
            .args(["-f", &format!("farm-job-{}", self.id)])
            .status();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A munged of the farm's key, its socket in `dir`.
fn farm_munged(dir: &std::path::Path) -> (Child, std::path::PathBuf) {
    start_munged(dir, 7)
}

/// Submits `n` jobs that each append their index to `ran` and sleep `secs`.
fn submit(farm: &Farm, n: usize, secs: &str) -> String {
    let out = as_nobody(
        &farm.fx,
        &[
            "run",
            "--array",
            &n.to_string(),
            "--",
            "sh",
            "-c",
            &format!(
                "echo @INDEX@ >> ran; exec sleep {secs} # farm-job-{}",
                farm.id
            ),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    stdout(&out).trim().to_string()
}

/// Every job is Done or lost, none runs twice, the lost ones ran on the cut host.
fn check_end(farm: &Farm, n: usize) -> (usize, usize) {
    let jobs = farm.jobs();
    assert_eq!(jobs.len(), n);
    let done = jobs.iter().filter(|j| j["state"] == "Done").count();
    let lost: Vec<&serde_json::Value> = jobs.iter().filter(|j| j["reason"] == "lost").collect();
    assert_eq!(done + lost.len(), n, "every job Done or lost");
    for (index, times) in farm.runs() {
        assert_eq!(times, 1, "job index {index} ran {times} times");
    }
    (done, lost.len())
}

#[test]
#[ignore = "needs root (network namespaces): .ci/run runs it with --include-ignored"]
fn a_host_cut_off_past_the_grace_loses_its_jobs_once_and_rejoins() {
    need_root!();
    let mut farm = Farm::new(3, "3");
    let n = 300;
    submit(&farm, n, "0.2");
    wait_until("some jobs done", T, || farm.count("Done") >= 30);
    farm.cut(1);
    // Silent for 5 s, then 3 s of grace: its running jobs are lost; the rest go on.
    wait_until("the cut host's jobs lost", T, || {
        farm.jobs().iter().any(|j| j["reason"] == "lost")
    });
    wait_until("every job over", Duration::from_secs(120), || {
        farm.count("Queued") + farm.count("Running") == 0
    });
    let (done, lost) = check_end(&farm, n);
    assert!(
        lost > 0 && lost <= 4,
        "{lost} lost (4 slots on the cut host)"
    );
    for j in farm.jobs().iter().filter(|j| j["reason"] == "lost") {
        assert_eq!(j["tasker"], "h1", "{j}");
    }
    // Back, it rejoins and runs new work; what it lost stays lost.
    farm.restore(1);
    wait_until("h1 back", T, || {
        farm.taskers_joined().contains(&"h1".to_string())
    });
    let out = as_nobody(&farm.fx, &["run", "-w", "-r", "NAME:h1", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let again = farm.jobs();
    assert_eq!(
        again.iter().filter(|j| j["reason"] == "lost").count(),
        lost,
        "lost exactly once"
    );
    eprintln!("{done} done, {lost} lost with the cut host");
    let _ = &mut farm;
}

#[test]
#[ignore = "needs root (network namespaces): .ci/run runs it with --include-ignored"]
fn a_host_cut_off_within_the_grace_finishes_its_jobs() {
    need_root!();
    let farm = Farm::new(3, "30");
    let n = 120;
    submit(&farm, n, "0.5");
    wait_until("some jobs done", T, || farm.count("Done") >= 12);
    farm.cut(2);
    std::thread::sleep(Duration::from_secs(7));
    farm.restore(2);
    wait_until("every job over", Duration::from_secs(120), || {
        farm.count("Queued") + farm.count("Running") == 0
    });
    let (done, lost) = check_end(&farm, n);
    assert_eq!((done, lost), (n, 0));
}

#[test]
#[ignore = "needs root (network namespaces): .ci/run runs it with --include-ignored"]
fn a_frozen_host_past_the_grace_loses_its_jobs_once() {
    need_root!();
    let farm = Farm::new(3, "3");
    let n = 200;
    submit(&farm, n, "0.2");
    wait_until("some jobs done", T, || farm.count("Done") >= 20);
    let frozen = farm.taskers[2].as_ref().unwrap();
    signal(frozen, libc::SIGSTOP);
    wait_until("the frozen host's jobs lost", T, || {
        farm.jobs().iter().any(|j| j["reason"] == "lost")
    });
    signal(frozen, libc::SIGCONT);
    wait_until("every job over", Duration::from_secs(120), || {
        farm.count("Queued") + farm.count("Running") == 0
    });
    let (_, lost) = check_end(&farm, n);
    assert!(lost > 0 && lost <= 4, "{lost} lost");
    for j in farm.jobs().iter().filter(|j| j["reason"] == "lost") {
        assert_eq!(j["tasker"], "h3", "{j}");
    }
}

#[test]
#[ignore = "needs root (network namespaces): .ci/run runs it with --include-ignored"]
fn the_server_killed_and_restarted_loses_nothing() {
    need_root!();
    let mut farm = Farm::new(3, "30");
    let n = 200;
    submit(&farm, n, "0.2");
    wait_until("some jobs done", T, || farm.count("Done") >= 20);
    let mut server = farm.server.take().unwrap();
    signal(&server, libc::SIGKILL);
    let _ = server.wait();
    std::thread::sleep(Duration::from_secs(1));
    let grace = "30";
    farm.server = Some(farm.spawn_in(
        0,
        &[
            "server",
            "--swd",
            farm.fx.swd.to_str().unwrap(),
            "--listen",
            &format!("198.18.0.1:{}", farm.port),
            "--tasker-grace",
            grace,
        ],
    ));
    let sock = farm.fx.swd.join("berth.sock");
    wait_until("the server again", T, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    wait_until("every job over", Duration::from_secs(120), || {
        farm.count("Queued") + farm.count("Running") == 0
    });
    let (done, lost) = check_end(&farm, n);
    assert_eq!((done, lost), (n, 0));
}

#[test]
#[ignore = "needs root (network namespaces) and munge: .ci/run runs it with --include-ignored"]
fn a_user_on_a_workstation_submits_follows_and_stops_and_no_one_else_passes_for_them() {
    need_root!();
    let farm = Farm::with_workstation(2, "30");
    let ws_munge = farm.munged[1].1.clone();
    let out = farm.on_workstation(
        NOBODY,
        &ws_munge,
        &[
            "run",
            "-w",
            "--",
            "sh",
            "-c",
            "echo from the workstation as $(id -u)",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = farm.on_workstation(
        NOBODY,
        &ws_munge,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3; do echo tick $i; sleep 0.2; done",
        ],
    );
    let follow = stdout(&out).trim().to_string();
    let out = farm.on_workstation(NOBODY, &ws_munge, &["getlog", "-f", &follow]);
    assert_eq!(stdout(&out), "tick 1\ntick 2\ntick 3\n", "{}", text(&out));
    let out = farm.on_workstation(NOBODY, &ws_munge, &["getlog", "1"]);
    assert_eq!(
        stdout(&out),
        format!("from the workstation as {NOBODY}\n"),
        "{}",
        text(&out)
    );
    let out = farm.on_workstation(NOBODY, &ws_munge, &["run", "--", "sleep", "300"]);
    let long = stdout(&out).trim().to_string();
    let out = farm.on_workstation(NOBODY, &ws_munge, &["stop", &long]);
    assert!(out.status.success(), "{}", text(&out));
    let out = farm.on_workstation(NOBODY, &ws_munge, &["wait", &long]);
    assert!(
        stderr(&out).contains("Failed (stopped by request)"),
        "{}",
        text(&out)
    );
    // Another farm's credentials are refused.
    let (mut other, other_sock) = start_munged(&farm.fx.root.join("munge-other"), 9);
    let out = farm.on_workstation(NOBODY, &other_sock, &["list"]);
    signal(&other, libc::SIGTERM);
    let _ = other.wait();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the credential does not hold"),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs root (network namespaces) and tcpdump: .ci/run runs it with --include-ignored"]
fn a_packet_capture_of_a_link_shows_no_job_secret() {
    need_root!();
    let farm = Farm::new(2, "30");
    let pcap = farm.fx.root.join("h1.pcap");
    let mut dump = Command::new("ip")
        .args(["netns", "exec", &farm.namespaces[0], "tcpdump", "-U", "-i"])
        .arg(farm.link(1))
        .arg("-w")
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("tcpdump to start", T, || pcap.exists());
    std::thread::sleep(Duration::from_millis(500));
    let mut c = farm.fx.berth(&[
        "run",
        "-w",
        "-r",
        "NAME:h1",
        "--",
        "sh",
        "-c",
        "echo license-$LICENSE_KEY",
    ]);
    c.uid(NOBODY)
        .gid(NOBODY)
        .env("LICENSE_KEY", "s3cr3t-on-the-wire-9921");
    let out = output_within(&mut c, T);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        farm.fx.read_work("berth-1.log"),
        "license-s3cr3t-on-the-wire-9921\n"
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(&dump, libc::SIGINT);
    let _ = dump.wait();
    let captured = std::fs::read(&pcap).unwrap();
    assert!(
        captured.len() > 2000,
        "the capture holds {} bytes",
        captured.len()
    );
    let has = |needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    assert!(
        !has(b"s3cr3t-on-the-wire-9921"),
        "the secret crossed the link in clear"
    );
    assert!(
        !has(b"LICENSE_KEY"),
        "the environment crossed the link in clear"
    );
}
