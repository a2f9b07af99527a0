//! Taskers join over TCP: JSON lines. Each side proves it holds the cluster secret without
//! sending it: the server sends a nonce, the tasker answers HMAC(secret, "tasker:" nonce)
//! with a nonce of its own, and the server answers HMAC(secret, "server:" that nonce). A
//! tasker never takes jobs from a server that cannot prove it, since a job names the uid
//! it runs as. Then the server sends `ToTasker` lines and the tasker `FromTasker` lines.

use crate::daemon::{Event, Handle, TaskerLink};
use berth_proto::{FromTasker, ToTasker};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The longest line accepted from a tasker.
const MAX_LINE: u64 = 64 * 1024 * 1024;

/// The first line a tasker sends.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Auth {
    /// The tasker's name.
    pub name: String,
    /// hex(HMAC-SHA256(secret, "tasker:" nonce)).
    pub mac: String,
    /// The tasker's nonce, for the server's proof.
    pub nonce: String,
}

/// hex(HMAC-SHA256(secret, ROLE ":" nonce)); the role keeps one side's proof from being
/// replayed as the other's.
pub fn mac(secret: &[u8], role: &str, nonce: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac takes any key");
    m.update(role.as_bytes());
    m.update(b":");
    m.update(nonce.as_bytes());
    hex::encode(m.finalize().into_bytes())
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
            std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
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

struct TcpLink(Mutex<TcpStream>, u64);

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl TaskerLink for TcpLink {
    fn serial(&self) -> u64 {
        self.1
    }

    fn send(&self, m: ToTasker) -> bool {
        let mut line = serde_json::to_vec(&m).unwrap_or_default();
        line.push(b'\n');
        self.0
            .lock()
            .map(|mut s| s.write_all(&line).is_ok())
            .unwrap_or(false)
    }
}

/// 128 random bits, in hex.
pub fn nonce() -> String {
    let mut raw = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw));
    hex::encode(raw)
}

/// Accepts taskers until the listener fails.
pub fn serve_taskers(listener: TcpListener, handle: Handle, secret: Vec<u8>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let handle = handle.clone();
        let secret = secret.clone();
        std::thread::spawn(move || {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            if let Err(e) = tasker_conn(conn, &handle, &secret) {
                eprintln!("berth server: tasker connection from {peer}: {e}");
            }
        });
    }
}

fn tasker_conn(conn: TcpStream, handle: &Handle, secret: &[u8]) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut w = conn.try_clone()?;
    let n = nonce();
    w.write_all(format!("{}\n", serde_json::json!({ "nonce": n })).as_bytes())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    (&mut r).take(4096).read_line(&mut line)?;
    let auth: Auth =
        serde_json::from_str(&line).map_err(|e| io::Error::other(format!("bad greeting: {e}")))?;
    if !constant_eq(auth.mac.as_bytes(), mac(secret, "tasker", &n).as_bytes()) {
        let _ = w.write_all(b"{\"error\":\"wrong cluster secret\"}\n");
        return Err(io::Error::other(format!(
            "tasker {:?}: wrong cluster secret; refused",
            auth.name
        )));
    }
    if auth.name.is_empty()
        || auth.name.len() > 200
        || auth
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(io::Error::other(format!(
            "tasker name {:?} is not valid",
            auth.name
        )));
    }
    if auth.nonce.len() < 16 {
        return Err(io::Error::other(format!(
            "tasker {:?}: no nonce of its own",
            auth.name
        )));
    }
    let proof = mac(secret, "server", &auth.nonce);
    w.write_all(format!("{}\n", serde_json::json!({ "ok": true, "mac": proof })).as_bytes())?;
    conn.set_read_timeout(None)?;
    let name = auth.name;
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    handle.send(Event::Connect(
        name.clone(),
        Box::new(TcpLink(Mutex::new(w), serial)),
    ));
    loop {
        line.clear();
        let n = (&mut r).take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            break;
        }
        match serde_json::from_str::<FromTasker>(&line) {
            Ok(m) => {
                handle.send(Event::Tasker(name.clone(), m));
            }
            Err(e) => {
                eprintln!("berth server: tasker {name}: bad message: {e}");
                break;
            }
        }
    }
    handle.send(Event::Gone(name, serial));
    Ok(())
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |x, (p, q)| x | (p ^ q)) == 0
}
