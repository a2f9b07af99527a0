//! `berth tasker`: a tasker that joins a server over TCP, runs what it is given, and keeps
//! running its jobs when the server goes away; it reconnects, reports the ends it kept,
//! then says hello with the jobs it still runs.

use crate::up::{make_agent, AgentOpts};
use anyhow::{bail, Context, Result};
use berth_proto::{FromTasker, ToTasker};
use berth_server::tcp::{frame, mac, nonce as new_nonce, session_key, unframe, Auth};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The options of `berth tasker`.
#[derive(clap::Args)]
pub struct TaskerArgs {
    #[command(flatten)]
    agent: AgentOpts,
    /// The server's tasker address, HOST:PORT (default: the one in SWD/listen.addr).
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    /// The cluster secret (default: SWD/cluster.secret).
    #[arg(long, value_name = "FILE")]
    secret: Option<PathBuf>,
}

/// Messages waiting for a connection: job ends are kept until written.
#[derive(Default)]
struct Outbox {
    q: Mutex<VecDeque<FromTasker>>,
    cv: Condvar,
}

impl Outbox {
    fn push(&self, m: FromTasker) {
        self.q.lock().expect("lock").push_back(m);
        self.cv.notify_all();
    }
}

pub fn tasker(a: TaskerArgs) -> Result<i32> {
    let signals = berth_sys::block_signals(&berth_sys::STOP_SIGNALS);
    let swd = std::path::absolute(crate::swd::resolve(a.agent.swd.as_deref()))?;
    let secret_path = a
        .secret
        .clone()
        .unwrap_or_else(|| swd.join("cluster.secret"));
    let secret = std::fs::read(&secret_path)
        .with_context(|| format!("reading the cluster secret {}", secret_path.display()))?;
    let secret = secret.trim_ascii().to_vec();
    let outbox = Arc::new(Outbox::default());
    let ob = outbox.clone();
    let agent = make_agent(&swd, &a.agent, Box::new(move |m| ob.push(m)))?;
    let name = agent.name.clone();
    {
        let agent = agent.clone();
        std::thread::spawn(move || {
            let sig = signals.wait();
            eprintln!(
                "berth tasker: {}: stopping",
                berth_tasker::lifecycle::signal_name(sig)
            );
            let n = agent.stop_all();
            if n > 0 {
                eprintln!("berth tasker: stopping {n} running job(s); their cleanup and teardown run first");
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while agent.running() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300));
            if let Ok(cg) = &agent.cgroups {
                cg.close();
            }
            std::process::exit(0);
        });
    }
    let mut said_unreachable = false;
    loop {
        let addr = match &a.server {
            Some(s) => s.clone(),
            None => std::fs::read_to_string(swd.join("listen.addr"))
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        let conn = if addr.is_empty() {
            None
        } else {
            TcpStream::connect(&addr).ok()
        };
        let Some(conn) = conn else {
            if !said_unreachable {
                eprintln!("berth tasker {name}: no server at {addr:?} yet; retrying every second (jobs keep running)");
                said_unreachable = true;
            }
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        said_unreachable = false;
        match session(conn, &name, &secret, &agent, &outbox) {
            Ok(()) => eprintln!(
                "berth tasker {name}: the server went away; reconnecting (jobs keep running)"
            ),
            Err(e) if e.to_string().contains("wrong cluster secret") => bail!("{e}"),
            Err(e) => eprintln!("berth tasker {name}: {e}; reconnecting"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn session(
    conn: TcpStream,
    name: &str,
    secret: &[u8],
    agent: &Arc<berth_tasker::agent::Agent>,
    outbox: &Arc<Outbox>,
) -> Result<()> {
    conn.set_nodelay(true)?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let greeting: serde_json::Value =
        serde_json::from_str(&line).context("the server's greeting")?;
    let nonce = greeting["nonce"]
        .as_str()
        .context("no nonce in the server's greeting")?
        .to_string();
    let mut w = conn.try_clone()?;
    let mine = new_nonce();
    let auth = Auth {
        name: name.to_string(),
        mac: mac(secret, "tasker", &nonce),
        nonce: mine.clone(),
    };
    w.write_all(format!("{}\n", serde_json::to_string(&auth)?).as_bytes())?;
    line.clear();
    r.read_line(&mut line)?;
    let ok: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    if ok["ok"] != true {
        bail!(
            "the server refused this tasker: {}",
            ok["error"].as_str().unwrap_or(line.trim())
        );
    }
    // The server must prove it holds the secret too: jobs name the uid they run as.
    if ok["mac"].as_str() != Some(mac(secret, "server", &mine).as_str()) {
        bail!(
            "the server at {} did not prove it holds the cluster secret (wrong cluster secret, or not a berth server); refusing its jobs",
            conn.peer_addr().map(|a| a.to_string()).unwrap_or_default()
        );
    }
    let key = session_key(secret, &nonce, &mine);
    // Ends kept while away go first, then the hello that lists what still runs.
    outbox.push(agent.hello());
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let outbox = outbox.clone();
        let alive = alive.clone();
        let key = key.clone();
        std::thread::spawn(move || {
            let mut seq = 0u64;
            while alive.load(std::sync::atomic::Ordering::SeqCst) {
                let m = {
                    let mut q = outbox.q.lock().expect("lock");
                    while q.is_empty() && alive.load(std::sync::atomic::Ordering::SeqCst) {
                        q = outbox
                            .cv
                            .wait_timeout(q, Duration::from_millis(500))
                            .expect("lock")
                            .0;
                    }
                    match q.pop_front() {
                        Some(m) => m,
                        None => continue,
                    }
                };
                let body = serde_json::to_string(&m).unwrap_or_default();
                let text = frame(&key, "t2s", seq, &body);
                seq += 1;
                if w.write_all(text.as_bytes()).is_err() {
                    // A hello is stale on the next connection; an end is kept.
                    if matches!(m, FromTasker::Ended(_)) {
                        outbox.q.lock().expect("lock").push_front(m);
                    }
                    break;
                }
            }
        })
    };
    let mut seq = 0u64;
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let Some(body) = unframe(&key, "s2t", seq, &line) else {
                    eprintln!("berth tasker {name}: a message from the server whose MAC does not hold; closing the connection");
                    break;
                };
                seq += 1;
                match serde_json::from_str::<ToTasker>(body) {
                    Ok(m) => agent.handle(m),
                    Err(e) => eprintln!("berth tasker {name}: bad message from the server: {e}"),
                }
            }
        }
    }
    alive.store(false, std::sync::atomic::Ordering::SeqCst);
    outbox.cv.notify_all();
    let _ = writer.join();
    Ok(())
}
