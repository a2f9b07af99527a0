//! What many taskers cost the server, and how soon a silent one's jobs are lost, measured
//! with the real `berth server` (a release build: `cargo bench -p berth --bench taskers`).
//! It prints figures and asserts nothing. Needs root (jobs run as nobody).
//!
//! - N simulated taskers (default 1,000; `BERTH_BENCH_TASKERS`), each a connection that
//!   completes the channel's handshake, says hello and sends keepalives as a tasker does,
//!   idle for 20 s: the server's resident memory and its CPU (user + system) meanwhile.
//! - A real tasker running a job, frozen with SIGSTOP: the time until the job is reported
//!   lost, against the server's `--tasker-grace` (5 s here) and heartbeat (2 s).

use berth_proto::FromTasker;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn berth() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/taskers-HASH -> target/release/berth
    exe.parent().unwrap().parent().unwrap().join("berth")
}

fn stat(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    (ticks, rss_kb)
}

fn start_server(swd: &Path, grace: &str) -> (Child, String) {
    let child = Command::new(berth())
        .args(["server", "--listen", "127.0.0.1:0", "--tasker-grace", grace])
        .env("BERTH_SWD", swd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr_file = swd.join("listen.addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !addr_file.exists() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let addr = std::fs::read_to_string(addr_file)
        .unwrap()
        .trim()
        .to_string();
    (child, addr)
}

fn idle_taskers(n: usize) {
    let d = tempfile::tempdir().unwrap();
    let swd = d.path().join("swd");
    let (mut server, addr) = start_server(&swd, "30");
    let secret = std::fs::read(swd.join("cluster.secret")).unwrap();
    let secret = secret.trim_ascii().to_vec();
    let (_, rss0) = stat(server.id());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        let (addr, secret, stop) = (addr.clone(), secret.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    // The server proves at most 8 connections of one address at once and
                    // closes the rest: as a tasker does, try again.
                    let mut ch = loop {
                        let opened = TcpStream::connect(&addr)
                            .map_err(|e| e.to_string())
                            .and_then(|s| {
                                berth_channel::open(s, &secret, "tasker", true, "secret")
                                    .map_err(|e| e.to_string())
                            });
                        match opened {
                            Ok(ch) => break ch,
                            Err(_) if !stop.load(Ordering::Relaxed) => {
                                std::thread::sleep(Duration::from_millis(20))
                            }
                            Err(e) => panic!("{e}"),
                        }
                    };
                    let name = format!("sim{i}");
                    ch.tx
                        .send(&serde_json::to_vec(&serde_json::json!({ "name": name })).unwrap())
                        .unwrap();
                    let hello = FromTasker::Hello {
                        name: name.clone(),
                        host: name,
                        resources: "CORES/4 SLOTS/4 RAM/8000".into(),
                        slots: 4,
                        containers_refused: Vec::new(),
                        running: Vec::new(),
                        ended: Vec::new(),
                        incarnation: format!("{i:024x}"),
                    };
                    ch.tx.send(&serde_json::to_vec(&hello).unwrap()).unwrap();
                    let mut rx = ch.rx;
                    std::thread::spawn(move || while rx.recv().is_ok() {});
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(berth_server::tcp::HEARTBEAT);
                        if ch.tx.keepalive().is_err() {
                            return;
                        }
                    }
                })
                .unwrap(),
        );
    }
    // All joined?
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new(berth())
            .args(["taskers", "--json"])
            .env("BERTH_SWD", &swd)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v.as_array().map(|a| a.len()).unwrap_or(0) >= n || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{n} taskers joined in {:.1} s", t0.elapsed().as_secs_f64());
    let (ticks0, _) = stat(server.id());
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let (ticks1, rss1) = stat(server.id());
    let hz = 100.0; // USER_HZ
    let cpu = (ticks1 - ticks0) as f64 / hz / window.as_secs_f64() * 100.0;
    println!(
        "{n} idle taskers with heartbeats: server resident memory {} MB (empty: {} MB), CPU {cpu:.1} % of a core (target: < 100 MB, < 5 %)",
        rss1 / 1024,
        rss0 / 1024
    );
    stop.store(true, Ordering::Relaxed);
    let _ = server.kill();
    let _ = server.wait();
    for t in threads {
        let _ = t.join();
    }
}

fn time_to_lost() {
    let d = tempfile::tempdir().unwrap();
    let swd = d.path().join("swd");
    let work = d.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
    let grace = 5;
    let (mut server, _) = start_server(&swd, &grace.to_string());
    let mut tasker = Command::new(berth())
        .args(["tasker", "--name", "t1", "--slots", "1"])
        .env("BERTH_SWD", &swd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    use std::os::unix::process::CommandExt;
    let out = Command::new(berth())
        .args(["run", "--", "sleep", "600"])
        .env("BERTH_SWD", &swd)
        .current_dir(&work)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::thread::sleep(Duration::from_secs(2));
    berth_sys::kill_pid(tasker.id(), libc::SIGSTOP);
    let t0 = Instant::now();
    loop {
        let out = Command::new(berth())
            .args(["info", "--json", &id])
            .env("BERTH_SWD", &swd)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["reason"] == "lost" || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "a tasker frozen with a job: lost after {:.1} s (grace {grace} s, heartbeat {:?}, silence {:?})",
        t0.elapsed().as_secs_f64(),
        berth_server::tcp::HEARTBEAT,
        berth_server::tcp::SILENCE
    );
    berth_sys::kill_pid(tasker.id(), libc::SIGKILL);
    let _ = tasker.wait();
    let _ = Command::new("pkill").args(["-f", "^sleep 600$"]).status();
    let _ = server.kill();
    let _ = server.wait();
}

fn main() {
    if berth_sys::euid() != 0 {
        eprintln!("taskers bench: run as root (jobs run as nobody)");
        return;
    }
    let n = std::env::var("BERTH_BENCH_TASKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    idle_taskers(n);
    time_to_lost();
}
