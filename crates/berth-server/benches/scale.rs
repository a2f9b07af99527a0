//! Scale: the memory of a million queued jobs, and the time of one scheduling pass with a
//! thousand taskers. Prints figures; asserts nothing.
//!
//! cargo bench -p berth-server --bench scale            (BERTH_BENCH_JOBS=1000000)

use berth_resources::Offer;
use berth_server::core::Core;
use berth_store::{NewJob, Store};
use std::time::Instant;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

const REQUESTS: [Option<&str>; 8] = [
    None,
    Some("CORES/2 RAM/4000"),
    Some("Container:docker CORES/1"),
    Some("License:spice RAM/1000"),
    Some("GPU#1 CORES/4"),
    Some("(ARCH:x86_64 | ARCH:aarch64) RAM/500"),
    Some("!Container:bwrap CORES/1"),
    Some("CORES/8 RAM/64000"),
];

fn taskers(core: &mut Core, n: usize) {
    for i in 0..n {
        let extra = match i % 4 {
            0 => " Container:docker",
            1 => " GPU#2",
            2 => " License:spice/4",
            _ => "",
        };
        let offer =
            Offer::parse(&format!("CORES/16 RAM/128000 SLOTS/16 ARCH:x86_64{extra}")).unwrap();
        core.tasker_joined(&format!("t{i:04}"), offer, 16);
    }
}

fn main() {
    let n: u64 = std::env::var("BERTH_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);

    // The core alone: a million queued jobs in eight request classes.
    let before = rss_kb();
    let mut core = Core::new();
    for id in 1..=n {
        core.enqueue(id, (id % 3) as i32, REQUESTS[(id % 8) as usize])
            .unwrap();
    }
    let core_kb = rss_kb().saturating_sub(before);
    println!(
        "core: {n} queued jobs take {:.0} bytes each ({} MB)",
        core_kb as f64 * 1024.0 / n as f64,
        core_kb / 1024
    );

    // A pass with 1,000 taskers, all free: it fills every slot.
    taskers(&mut core, 1000);
    let t = Instant::now();
    let d = core.schedule();
    println!(
        "scheduling pass, 1,000 free taskers, {n} queued: {} dispatched in {:.1} ms",
        d.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    // The steady state: one job ends, a pass fills its slot.
    let mut times = Vec::new();
    for k in 0..200 {
        core.ended(d[k * 7].job);
        let t = Instant::now();
        let _ = core.schedule();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "scheduling pass after one job ends (1,000 busy taskers, ~{n} queued): median {:.3} ms, max {:.3} ms",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    drop(core);

    // The whole server: a store holding the jobs, opened as after a restart.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("berth.db");
    let mut store = Store::open(&path).unwrap();
    let cmd = vec!["true".to_string()];
    let env: Vec<(String, String)> = std::env::vars().collect();
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let k = (n - done).min(100_000);
        store
            .batch(|b| {
                for i in 0..k {
                    b.insert_job(&NewJob {
                        uid: 1000,
                        gid: 1000,
                        user: "u",
                        name: None,
                        command: &cmd,
                        dir: "/tmp",
                        env: &env,
                        resources: REQUESTS[((done + i) % 8) as usize],
                        log: None,
                        priority: 0,
                        umask: 0o022,
                        array: None,
                        submitted_ms: 0,
                        time_limit_ms: None,
                        after: &[],
                        after_any: false,
                        held: false,
                        retries: 0,
                    })?;
                }
                Ok(())
            })
            .unwrap();
        done += k;
    }
    println!(
        "store: {n} jobs written in batches of 100,000 in {:.1} s ({:.0} jobs/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    drop(store);
    let store = Store::open(&path).unwrap();
    let before = rss_kb();
    let t = Instant::now();
    let (server, _handle) = berth_server::daemon::Server::open(store).unwrap();
    let kb = rss_kb().saturating_sub(before);
    println!(
        "server: {n} queued jobs loaded in {:.1} s; its memory grew by {:.0} bytes per queued job ({} MB)",
        t.elapsed().as_secs_f64(),
        kb as f64 * 1024.0 / n as f64,
        kb / 1024
    );
    drop(server);
}
