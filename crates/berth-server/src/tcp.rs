//! Taskers join over TCP, on the secure channel of `berth-channel` keyed with the cluster
//! secret (a tasker never takes jobs from a server that cannot prove it holds it, since a
//! job names the uid it runs as). The tasker's first message names it; then the server
//! sends `ToTasker` messages and the tasker `FromTasker` ones, as JSON.
//!
//! Each tasker has a writer thread of its own, so that the server's actor never waits on a
//! socket: a tasker that stops reading is cut off after [`WRITE_TIME`], never the actor.
//! What a turn sends a tasker the actor writes itself when the writer is idle and the
//! socket takes it all at once (`MSG_DONTWAIT`); the rest, and all after it, is the
//! writer's.
//! The actor reads what taskers send itself, when their sockets are ready (see
//! [`crate::daemon::TaskerInbox`]): no thread of the server stands between a tasker's
//! message and the decision it brings.
//! Both sides send a keepalive every [`HEARTBEAT`] when they have nothing else to say, and
//! take a peer silent for [`SILENCE`] as gone.

use crate::daemon::{Event, Handle, TaskerInbox, TaskerLink};
use berth_channel::{Channel, ChannelError};
use berth_proto::{FromTasker, ToTasker};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// How often each side says something, a keepalive when nothing else: two keepalives
/// fit in the [`SILENCE`] that ends a connection. (Every second, a thousand idle taskers
/// woke the server's actor a thousand times a second, 5 % of a core on this machine.)
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a silent peer is waited for before its connection is taken as gone.
pub const SILENCE: Duration = crate::daemon::TASKER_SILENCE;
/// How long one message may take to be taken by a tasker.
pub const WRITE_TIME: Duration = Duration::from_secs(30);
/// How the cluster secret is named in errors.
pub const SECRET_NAME: &str = "cluster secret (SWD/cluster.secret)";
/// The channel's purpose for taskers.
pub const PURPOSE: &str = "tasker";

/// The tasker's first message.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// The tasker's name.
    pub name: String,
}

/// Reads the cluster secret, making one (mode 0600) if there is none.
pub fn cluster_secret(swd: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let p = swd.join("cluster.secret");
    match std::fs::read(&p) {
        Ok(s) => {
            let mode = std::fs::metadata(&p)?.mode() & 0o077;
            if mode != 0 {
                return Err(io::Error::other(format!(
                    "{}: readable by others; run: chmod 600 {}",
                    p.display(),
                    p.display()
                )));
            }
            Ok(s.trim_ascii().to_vec())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            berth_sys::random_bytes(&mut raw)?;
            let text = hex::encode(raw);
            let mut f = std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)?;
            f.write_all(text.as_bytes())?;
            Ok(text.into_bytes())
        }
        Err(e) => Err(e),
    }
}

/// The server's static key pair for remote clients: `SWD/server.key` (private, mode
/// 0600) and `SWD/server.pub` (public, to copy to client hosts), made on first use.
pub fn server_key(swd: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let p = swd.join("server.key");
    match std::fs::read_to_string(&p) {
        Ok(text) => {
            if std::fs::metadata(&p)?.mode() & 0o077 != 0 {
                return Err(io::Error::other(format!(
                    "{}: readable by others; run: chmod 600 {}",
                    p.display(),
                    p.display()
                )));
            }
            hex::decode(text.trim()).map_err(|_| {
                io::Error::other(format!("{}: not a key (64 hex digits)", p.display()))
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (private, public) = berth_channel::generate_keypair();
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)?
                .write_all(hex::encode(&private).as_bytes())?;
            std::fs::write(swd.join("server.pub"), hex::encode(&public) + "\n")?;
            Ok(private)
        }
        Err(e) => Err(e),
    }
}

/// The server's end of a tasker's connection: messages go to its writer thread, those of
/// one turn together (one wake of the writer, one write, one wake of the tasker).
///
/// When the writer is idle and the socket takes the whole batch at once, the actor writes
/// it itself (never waiting: `MSG_DONTWAIT`), which spares the writer's wake; whatever the
/// socket does not take at once is the writer's, and so is everything after it until it
/// has written it, so that the order holds.
struct TcpLink {
    /// The receiving half, until the actor takes it to read itself.
    inbox: Option<Box<dyn TaskerInbox>>,
    to_writer: mpsc::Sender<Vec<ToTasker>>,
    serial: u64,
    pending: std::sync::Mutex<Vec<ToTasker>>,
    /// False once the writer has ended (the connection is gone).
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
    out: std::sync::Arc<std::sync::Mutex<Out>>,
    /// Batches handed to the writer and not yet written.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The sending side of a tasker's connection, shared by the actor and the writer.
struct Out {
    tx: berth_channel::Sender,
    envs: Envs,
    /// Sealed bytes the socket has not taken yet: the writer writes them first.
    backlog: Vec<u8>,
}

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The receiving half of a tasker's connection, read by the actor (see
/// [`crate::daemon::TaskerInbox`]).
struct TcpInbox {
    rx: berth_channel::Incoming,
    bodies: Vec<Vec<u8>>,
    /// The link's: false once the connection is over (its writer then ends quietly).
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TaskerInbox for TcpInbox {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self.rx.stream())
    }

    fn read(&mut self, out: &mut Vec<FromTasker>) -> Result<bool, String> {
        let r = self.rx.read(&mut self.bodies);
        for body in self.bodies.drain(..) {
            match berth_proto::decode_from_tasker(body) {
                Ok(m) => out.push(m),
                Err(e) => return Err(format!("bad message: {e}")),
            }
        }
        match r {
            Ok(heard) => Ok(heard),
            Err(ChannelError::Closed) => Err("closed the connection".to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn close(&self) {
        self.alive.store(false, std::sync::atomic::Ordering::SeqCst);
        self.rx.shutdown();
    }
}

impl TaskerLink for TcpLink {
    fn serial(&self) -> u64 {
        self.serial
    }

    fn inbox(&mut self) -> Option<Box<dyn TaskerInbox>> {
        self.inbox.take()
    }

    fn send(&self, m: ToTasker) -> bool {
        if !self.alive.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(m);
        true
    }

    fn flush(&self) {
        use std::sync::atomic::Ordering;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return;
        }
        if self.queued.load(Ordering::SeqCst) == 0 {
            if let Ok(mut o) = self.out.try_lock() {
                if o.backlog.is_empty() && self.queued.load(Ordering::SeqCst) == 0 {
                    let o = &mut *o;
                    let bodies: Vec<Vec<u8>> =
                        batch.into_iter().map(|m| o.envs.encode(m)).collect();
                    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
                    let written = o.tx.seal_all(&refs).and_then(|sealed| {
                        let n = o.tx.write_now(&sealed)?;
                        Ok((sealed, n))
                    });
                    match written {
                        Ok((sealed, n)) if n == sealed.len() => {}
                        Ok((sealed, n)) => {
                            // The rest is the writer's, before anything else.
                            o.backlog = sealed[n..].to_vec();
                            self.queued.fetch_add(1, Ordering::SeqCst);
                            if self.to_writer.send(Vec::new()).is_err() {
                                self.alive.store(false, Ordering::SeqCst);
                            }
                        }
                        Err(_) => {
                            // The connection is broken: its reader sees it and says so.
                            o.tx.shutdown();
                            self.alive.store(false, Ordering::SeqCst);
                        }
                    }
                    return;
                }
            }
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.to_writer.send(batch).is_err() {
            self.alive.store(false, Ordering::SeqCst);
        }
    }
}

/// Accepts taskers until the listener fails.
pub fn serve_taskers(listener: TcpListener, handle: Handle, secret: Vec<u8>) {
    let mut backoff = Duration::from_millis(10);
    let unproven: &'static crate::api::Unproven = Box::leak(Box::new(crate::api::Unproven::new()));
    loop {
        // Few connections at once may still be proving they hold the secret: silent ones
        // cannot take the server's descriptors.
        let (conn, _, place) =
            crate::api::accept_unproven(&listener, unproven, "a tasker", &mut backoff);
        let handle = handle.clone();
        let secret = secret.clone();
        let spawned = std::thread::Builder::new()
            .name("berth-tasker-link".into())
            .spawn(move || {
                let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                if let Err(e) = tasker_conn(conn, &handle, &secret, place) {
                    berth_sys::say!("berth server: tasker connection from {peer}: {e}");
                }
            });
        if let Err(e) = spawned {
            berth_sys::say!("berth server: no thread for a tasker: {e}; waiting {backoff:?}");
            std::thread::sleep(backoff);
        }
    }
}

/// Sends what the actor hands over, and a keepalive when there is nothing; ends the
/// connection when a write does not go through in time.
/// The environments already sent on one connection, by content, numbered; a job whose
/// environment was sent goes without it (see `berth_proto::EnvRef`).
#[derive(Default)]
struct Envs {
    epoch: u32,
    ids: HashMap<Vec<(String, String)>, u32>,
}

impl Envs {
    /// The most environments remembered at once, on both ends.
    const MAX: usize = 256;

    fn encode(&mut self, m: ToTasker) -> Vec<u8> {
        let m = match m {
            ToTasker::Run(mut a) => {
                if self.ids.len() >= Envs::MAX {
                    self.ids.clear();
                    self.epoch += 1;
                }
                let (id, elided) = match self.ids.get(&a.env) {
                    Some(id) => (*id, true),
                    None => {
                        let id = self.ids.len() as u32;
                        self.ids.insert(a.env.clone(), id);
                        (id, false)
                    }
                };
                if elided {
                    a.env = Vec::new();
                }
                a.env_ref = Some(berth_proto::EnvRef {
                    epoch: self.epoch,
                    id,
                    elided,
                });
                ToTasker::Run(a)
            }
            m => m,
        };
        serde_json::to_vec(&m).unwrap_or_default()
    }
}

fn writer(
    out: std::sync::Arc<std::sync::Mutex<Out>>,
    rx: mpsc::Receiver<Vec<ToTasker>>,
    name: String,
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let lock = || out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = lock().tx.set_timeout(Some(WRITE_TIME));
    loop {
        let sent = match rx.recv_timeout(HEARTBEAT) {
            Ok(ms) => {
                let mut taken = 1;
                let mut o = lock();
                let o = &mut *o;
                // First what the actor left unwritten, then what waits, in one write.
                let mut batch: Vec<Vec<u8>> = ms.into_iter().map(|m| o.envs.encode(m)).collect();
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(ms) => {
                            taken += 1;
                            batch.extend(ms.into_iter().map(|m| o.envs.encode(m)));
                        }
                        Err(_) => break,
                    }
                }
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                let backlog = std::mem::take(&mut o.backlog);
                let r = o.tx.seal_all(&refs).and_then(|sealed| {
                    let mut all = backlog;
                    all.extend_from_slice(&sealed);
                    o.tx.write_sealed(&all)
                });
                queued.fetch_sub(taken, Ordering::SeqCst);
                r
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let mut o = lock();
                if o.backlog.is_empty() {
                    o.tx.keepalive()
                } else {
                    Ok(())
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Err(e) = sent {
            // Unless the actor ended the connection itself (and said why).
            if alive.load(Ordering::SeqCst) {
                berth_sys::say!("berth server: tasker {name}: {e}; closing its connection");
            }
            break;
        }
    }
    alive.store(false, Ordering::SeqCst);
    lock().tx.shutdown();
}

fn tasker_conn(
    conn: TcpStream,
    handle: &Handle,
    secret: &[u8],
    place: crate::api::UnprovenPlace<'_>,
) -> Result<(), ChannelError> {
    conn.set_nodelay(true)?;
    let Channel { tx, mut rx, .. } =
        berth_channel::open(conn, secret, PURPOSE, false, SECRET_NAME)?;
    rx.set_timeout(Some(berth_channel::HANDSHAKE_TIME))?;
    let first = rx.recv_bounded(4096, berth_channel::HANDSHAKE_TIME, &mut |_| true)?;
    drop(place);
    let hello: Hello = serde_json::from_slice(&first)
        .map_err(|e| io::Error::other(format!("bad first message: {e}")))?;
    if hello.name.is_empty()
        || hello.name.len() > 200
        || hello
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(io::Error::other(format!("tasker name {:?} is not valid", hello.name)).into());
    }
    let name = hello.name;
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (to_writer, from_actor) = mpsc::channel();
    let alive = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = std::sync::Arc::new(std::sync::Mutex::new(Out {
        tx,
        envs: Envs::default(),
        backlog: Vec::new(),
    }));
    {
        let name = name.clone();
        let alive = alive.clone();
        let out = out.clone();
        let queued = queued.clone();
        std::thread::Builder::new()
            .name("berth-tasker-out".into())
            .spawn(move || writer(out, from_actor, name, alive, queued))?;
    }
    // From here the actor reads the connection itself, and says when it ends.
    rx.set_timeout(None)?;
    handle.send(Event::Connect(
        name,
        Box::new(TcpLink {
            inbox: Some(Box::new(TcpInbox {
                rx: rx.incoming(),
                bodies: Vec::new(),
                alive: alive.clone(),
            })),
            to_writer,
            serial,
            pending: std::sync::Mutex::new(Vec::new()),
            alive,
            out,
            queued,
        }),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A tasker's hello that came with its first message (read with it, in the handshake's
    /// buffer) is taken at once: no further byte comes to wake the actor for it.
    #[test]
    fn a_hello_read_with_the_handshake_is_not_left_waiting() {
        let d = tempfile::tempdir().unwrap();
        let store = berth_store::Store::open(&d.path().join("b.db")).unwrap();
        let (server, handle) = crate::daemon::Server::open(store).unwrap();
        std::thread::spawn(move || server.run());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h = handle.clone();
        std::thread::spawn(move || serve_taskers(listener, h, b"k".to_vec()));
        let conn = TcpStream::connect(addr).unwrap();
        let Channel { mut tx, rx, .. } =
            berth_channel::open(conn, b"k", PURPOSE, true, SECRET_NAME).unwrap();
        let first = serde_json::to_vec(&Hello { name: "t1".into() }).unwrap();
        let hello = serde_json::to_vec(&crate::daemon::tests::hello_message(
            &"a".repeat(24),
            vec![],
            vec![],
        ))
        .unwrap();
        // Both in one write: the server reads them together; then nothing more.
        tx.send_all(&[&first, &hello]).unwrap();
        // Before the silence check (5 s) would read the connection for another reason.
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let taskers = handle.ask(crate::daemon::Event::Taskers).unwrap();
            if taskers.iter().any(|t| t.name == "t1") {
                break;
            }
            assert!(Instant::now() < deadline, "the hello was left unread");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop((tx, rx));
    }

    #[test]
    fn the_cluster_secret_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = cluster_secret(d.path()).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(cluster_secret(d.path()).unwrap(), a);
        let p = d.path().join("cluster.secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(cluster_secret(d.path()).is_err());
    }
}
