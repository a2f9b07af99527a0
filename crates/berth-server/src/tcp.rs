//! Taskers join over TCP: JSON lines. Each side proves it holds the cluster secret without
//! sending it: the server sends a nonce, the tasker answers HMAC(secret, "tasker:" nonce)
//! with a nonce of its own, and the server answers HMAC(secret, "server:" that nonce). A
//! tasker never takes jobs from a server that cannot prove it, since a job names the uid
//! it runs as. Then the server sends `ToTasker` lines and the tasker `FromTasker` lines,
//! each framed with a MAC under the session's key (see [`frame`]).

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

/// The key of one connection: HMAC(secret, "session:" server nonce ":" tasker nonce).
pub fn session_key(secret: &[u8], server_nonce: &str, tasker_nonce: &str) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac takes any key");
    m.update(b"session:");
    m.update(server_nonce.as_bytes());
    m.update(b":");
    m.update(tasker_nonce.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn line_mac(key: &[u8], dir: &str, seq: u64, body: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes any key");
    m.update(format!("{dir}:{seq}:").as_bytes());
    m.update(body.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// One line of a session: `MAC JSON`, the MAC over the direction ("s2t" or "t2s"), the
/// line's sequence number in that direction, and the JSON.
pub fn frame(key: &[u8], dir: &str, seq: u64, body: &str) -> String {
    format!("{} {body}\n", line_mac(key, dir, seq, body))
}

/// The JSON of a framed line, if its MAC holds for this direction and sequence number.
pub fn unframe<'a>(key: &[u8], dir: &str, seq: u64, line: &'a str) -> Option<&'a str> {
    let (mac, body) = line.trim_end_matches(['\n', '\r']).split_once(' ')?;
    constant_eq(mac.as_bytes(), line_mac(key, dir, seq, body).as_bytes()).then_some(body)
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

/// The server's end of a session: the stream and the next sequence number, the link's
/// serial, the session key.
struct TcpLink(Mutex<(TcpStream, u64)>, u64, Vec<u8>);

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl TaskerLink for TcpLink {
    fn serial(&self) -> u64 {
        self.1
    }

    fn send(&self, m: ToTasker) -> bool {
        let body = serde_json::to_string(&m).unwrap_or_default();
        let Ok(mut g) = self.0.lock() else {
            return false;
        };
        let (stream, seq) = &mut *g;
        let line = frame(&self.2, "s2t", *seq, &body);
        *seq += 1;
        stream.write_all(line.as_bytes()).is_ok()
    }
}

/// 128 random bits, in hex.
pub fn nonce() -> String {
    let mut raw = [0u8; 16];
    // A nonce of zeros would let a recorded handshake be replayed: no fallback.
    berth_sys::random_bytes(&mut raw).expect("getrandom(2) failed: no random bytes for a nonce");
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
    let key = session_key(secret, &n, &auth.nonce);
    handle.send(Event::Connect(
        name.clone(),
        Box::new(TcpLink(Mutex::new((w, 0)), serial, key.clone())),
    ));
    let mut seq = 0u64;
    loop {
        line.clear();
        let got = (&mut r).take(MAX_LINE).read_line(&mut line)?;
        if got == 0 {
            break;
        }
        let Some(body) = unframe(&key, "t2s", seq, &line) else {
            eprintln!("berth server: tasker {name}: a message whose MAC does not hold; closing the connection");
            break;
        };
        seq += 1;
        match serde_json::from_str::<FromTasker>(body) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_hold_only_for_their_key_direction_and_place() {
        let k = session_key(b"secret", "n1", "n2");
        let line = frame(&k, "s2t", 0, "{\"Stop\":1}");
        assert_eq!(unframe(&k, "s2t", 0, &line), Some("{\"Stop\":1}"));
        assert_eq!(
            unframe(&k, "s2t", 1, &line),
            None,
            "replayed at another place"
        );
        assert_eq!(
            unframe(&k, "t2s", 0, &line),
            None,
            "reflected to the other side"
        );
        let other = session_key(b"secret", "n1", "n3");
        assert_eq!(
            unframe(&other, "s2t", 0, &line),
            None,
            "from another session"
        );
        let forged = line.replace("{\"Stop\":1}", "{\"Stop\":2}");
        assert_eq!(unframe(&k, "s2t", 0, &forged), None, "altered");
        assert_eq!(unframe(&k, "s2t", 0, "{\"Stop\":1}\n"), None, "no MAC");
        assert_ne!(mac(b"s", "tasker", "n"), mac(b"s", "server", "n"));
    }
}
