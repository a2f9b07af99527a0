//! A farm of several hosts on one machine: the server and each tasker in a network
//! namespace of its own, joined by veth links to a bridge in a namespace of the test's
//! (addresses in 198.18.0.0/24, which reach nothing outside). Links are cut and restored,
//! taskers frozen, and every scenario checks that nothing accepted is lost and nothing runs
//! twice. The namespaces, links and processes are removed even when a test fails.

mod common;

use common::*;
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
        };
        let hub = format!("{id}-hub");
        ip(&["netns", "add", &hub]);
        farm.namespaces.push(hub.clone());
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..=hosts {
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
        format!(
            "{}-{}",
            self.id,
            if i == 0 {
                "srv".into()
            } else {
                format!("h{i}")
            }
        )
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
        // The jobs the taskers ran (their sleeps) go with their cgroups' owners: end them.
        let _ = Command::new("pkill")
            .args(["-f", &format!("farm-job-{}", self.id)])
            .status();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
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
