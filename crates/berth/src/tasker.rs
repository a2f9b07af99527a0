//! `berth tasker`: a tasker that joins a server over TCP, runs what it is given, and keeps
//! running its jobs when the server goes away; it reconnects, reports the ends it kept,
//! then says hello with the jobs it still runs.

use crate::up::{make_agent, AgentOpts};
use anyhow::{bail, Context, Result};
use berth_channel::{Channel, ChannelError};
use berth_proto::{FromTasker, ToTasker};
use std::collections::{HashMap, VecDeque};
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
    /// The connection's sending half, while there is one: a job's thread that ends it
    /// writes its end itself when no one else is writing (no wake of the writer thread).
    wire: Mutex<Option<Arc<Mutex<berth_channel::Sender>>>>,
}

impl Outbox {
    fn push(&self, m: FromTasker) {
        let direct = matches!(m, FromTasker::Ended(_));
        self.q.lock().expect("lock").push_back(m);
        if direct {
            let wire = self.wire.lock().expect("lock").clone();
            if let Some(w) = wire {
                if let Ok(mut tx) = w.try_lock() {
                    self.send_waiting(&mut tx);
                    return;
                }
            }
        }
        self.cv.notify_all();
    }

    /// Writes what waits (at most 256 messages) in one write, with the sender held: the
    /// order of messages is the order of the queue. On failure the ends go back to the
    /// front, and the connection is closed (its reader then ends the session).
    fn send_waiting(&self, tx: &mut berth_channel::Sender) -> bool {
        let batch: Vec<FromTasker> = {
            let mut q = self.q.lock().expect("lock");
            let n = q.len().min(256);
            q.drain(..n).collect()
        };
        let sent = if batch.is_empty() {
            tx.keepalive()
        } else {
            let bodies: Vec<Vec<u8>> = batch.iter().map(berth_proto::encode_from_tasker).collect();
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            tx.send_all(&refs)
        };
        if sent.is_err() {
            // A hello is stale on the next connection; the ends are kept.
            let mut q = self.q.lock().expect("lock");
            for m in batch.into_iter().rev() {
                if matches!(m, FromTasker::Ended(_)) {
                    q.push_front(m);
                }
            }
            drop(q);
            *self.wire.lock().expect("lock") = None;
            tx.shutdown();
            return false;
        }
        true
    }
}

pub fn tasker(a: TaskerArgs) -> Result<i32> {
    let signals = berth_sys::block_signals(&berth_sys::STOP_SIGNALS);
    let swd = std::path::absolute(crate::swd::resolve(a.agent.swd.as_deref()))?;
    let secret_path = a
        .secret
        .clone()
        .unwrap_or_else(|| swd.join("cluster.secret"));
    // A host of its own needs nothing made beforehand: its SWD (local state, the job
    // wrapper, its container configurations) is made here, and checked to be root's.
    crate::up::own_swd(&swd)?;
    let secret = read_secret(&secret_path)?;
    let outbox = Arc::new(Outbox::default());
    let ob = outbox.clone();
    let agent = make_agent(&swd, &a.agent, Box::new(move |m| ob.push(m)))?;
    // However this ends (a wrong secret, say), an empty cgroup directory is not left.
    struct CloseCgroups(Arc<berth_tasker::agent::Agent>);
    impl Drop for CloseCgroups {
        fn drop(&mut self) {
            if let Ok(cg) = &self.0.cgroups {
                cg.close();
            }
        }
    }
    let _close = CloseCgroups(agent.clone());
    let name = agent.name.clone();
    {
        let agent = agent.clone();
        let ob = outbox.clone();
        let stop_jobs = a.agent.stop_jobs;
        std::thread::spawn(move || {
            let sig = signals.wait();
            berth_sys::say!(
                "berth tasker: {}: stopping",
                berth_tasker::lifecycle::signal_name(sig)
            );
            // The server is told first, so that it sends nothing more; what it sent
            // meanwhile is declined, and queued again.
            agent.close();
            ob.push(berth_proto::FromTasker::Leaving);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !agent.said_bye() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            crate::up::stop_tasker(&agent, stop_jobs, &format!("berth tasker {}", agent.name));
            // The last messages (ends, declines) are on their way.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !ob.q.lock().expect("lock").is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(100));
            agent.forget_all();
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
                berth_sys::say!("berth tasker {name}: no server at {addr:?} yet; retrying every second (jobs keep running)");
                said_unreachable = true;
            }
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        said_unreachable = false;
        match session(conn, &name, &secret, &agent, &outbox) {
            Ok(()) => berth_sys::say!(
                "berth tasker {name}: the server went away; reconnecting (jobs keep running)"
            ),
            // Neither gets better by trying again.
            Err(e @ (ChannelError::Handshake(..) | ChannelError::Version { .. })) => {
                bail!("the server at {addr}: {e}")
            }
            Err(e) => berth_sys::say!("berth tasker {name}: {e}; reconnecting"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The cluster secret, from a file no one but its owner may read.
fn read_secret(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the cluster secret {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the cluster secret {} is readable by others (mode {:o}); run: chmod 600 {}",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    let secret = std::fs::read(path)
        .with_context(|| format!("reading the cluster secret {}", path.display()))?;
    Ok(secret.trim_ascii().to_vec())
}

fn session(
    conn: TcpStream,
    name: &str,
    secret: &[u8],
    agent: &Arc<berth_tasker::agent::Agent>,
    outbox: &Arc<Outbox>,
) -> Result<(), ChannelError> {
    use berth_server::tcp::{Hello, HEARTBEAT, PURPOSE, SECRET_NAME, SILENCE, WRITE_TIME};
    conn.set_nodelay(true)?;
    // The server must prove it holds the secret too (the handshake fails otherwise): jobs
    // name the uid they run as.
    let Channel { mut tx, mut rx, .. } =
        berth_channel::open(conn, secret, PURPOSE, true, SECRET_NAME)?;
    tx.send(
        &serde_json::to_vec(&Hello {
            name: name.to_string(),
        })
        .unwrap_or_default(),
    )?;
    rx.set_timeout(Some(SILENCE))?;
    let _ = tx.set_timeout(Some(WRITE_TIME));
    // Ends kept while away go first, then the hello that lists what still runs.
    // A hello left from a session that ended before sending it is stale: only this one.
    outbox
        .q
        .lock()
        .expect("lock")
        .retain(|m| !matches!(m, FromTasker::Hello { .. }));
    outbox.push(agent.hello());
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let tx = Arc::new(Mutex::new(tx));
    *outbox.wire.lock().expect("lock") = Some(tx.clone());
    let writer = {
        let outbox = outbox.clone();
        let alive = alive.clone();
        std::thread::Builder::new()
            .name("berth-writer".into())
            .spawn(move || {
                while alive.load(std::sync::atomic::Ordering::SeqCst) {
                    {
                        let q = outbox.q.lock().expect("lock");
                        if q.is_empty() && alive.load(std::sync::atomic::Ordering::SeqCst) {
                            drop(outbox.cv.wait_timeout(q, HEARTBEAT).expect("lock"));
                        }
                    }
                    let mut t = tx.lock().expect("lock");
                    if !outbox.send_waiting(&mut t) {
                        break;
                    }
                }
                *outbox.wire.lock().expect("lock") = None;
                tx.lock().expect("lock").shutdown();
            })?
    };
    // The environments the server sent on this connection, by number (see EnvRef).
    let mut envs: (u32, HashMap<u32, Vec<(String, String)>>) = (0, HashMap::new());
    let why = loop {
        match rx.recv() {
            Ok(body) => match serde_json::from_slice::<ToTasker>(&body) {
                Ok(ToTasker::Run(mut a)) => {
                    if let Some(r) = a.env_ref {
                        if r.epoch != envs.0 {
                            envs = (r.epoch, HashMap::new());
                        }
                        if r.elided {
                            match envs.1.get(&r.id) {
                                Some(env) => a.env = env.clone(),
                                None => {
                                    // Never run a job with another environment than its
                                    // own: the connection ends, the job is sent again.
                                    berth_sys::say!("berth tasker {name}: job {}: an environment the server did not send; reconnecting", a.job);
                                    break ChannelError::Corrupt;
                                }
                            }
                        } else {
                            envs.1.insert(r.id, a.env.clone());
                        }
                    }
                    agent.handle(ToTasker::Run(a))
                }
                Ok(m) => agent.handle(m),
                Err(e) => berth_sys::say!("berth tasker {name}: bad message from the server: {e}"),
            },
            Err(e) => break e,
        }
    };
    alive.store(false, std::sync::atomic::Ordering::SeqCst);
    outbox.cv.notify_all();
    let _ = writer.join();
    match why {
        ChannelError::Closed => Ok(()),
        e => Err(e),
    }
}
