//! The CLI's side of the API: one HTTP request per connection, to the server's Unix socket
//! on its host, or from another host over the secure channel to its `--clients` address,
//! the user proven by a MUNGE credential bound to the channel.

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The server's socket: `--server PATH`, else `$BERTH_SERVER`, else `SWD/berth.sock`.
pub fn socket(swd: &Path, server: Option<&Path>) -> PathBuf {
    if let Some(s) = server {
        return s.to_path_buf();
    }
    match std::env::var_os("BERTH_SERVER") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => swd.join("berth.sock"),
    }
}

/// `HOST:PORT` when the server named is on another host (a name with a colon and no
/// slash), else None (a socket path).
pub fn remote_address(target: &Path) -> Option<String> {
    let t = target.to_str()?;
    (t.contains(':') && !t.contains('/')).then(|| t.to_string())
}

/// The server's public key file: `--server-key`, else $BERTH_SERVER_KEY, else
/// /etc/berth/server.pub if it exists, else SWD/server.pub.
pub fn server_key_file(swd: &Path, given: Option<&Path>) -> PathBuf {
    if let Some(g) = given {
        return g.to_path_buf();
    }
    if let Some(v) = std::env::var_os("BERTH_SERVER_KEY").filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    let etc = Path::new("/etc/berth/server.pub");
    if etc.exists() {
        return etc.to_path_buf();
    }
    swd.join("server.pub")
}

/// The munged socket to ask: $BERTH_MUNGE_SOCKET, else libmunge's default.
pub fn munge_socket() -> Option<PathBuf> {
    std::env::var_os("BERTH_MUNGE_SOCKET")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// No server answers: nothing listens where the client looked, or it stopped mid-answer.
#[derive(Debug)]
pub struct NoServer(pub String);

impl std::fmt::Display for NoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoServer {}

/// The server's error answer: its HTTP status and what it said.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// Where a client's requests go.
enum Target {
    Local(PathBuf),
    Remote { addr: String, key: PathBuf },
}

/// A client of one server.
pub struct Client {
    target: Target,
}

impl Client {
    /// A client of the server at `path`.
    pub fn new(path: PathBuf) -> Client {
        Client {
            target: Target::Local(path),
        }
    }

    /// A client of the server at `addr` on another host, whose public key is in `key`.
    pub fn remote(addr: String, key: PathBuf) -> Client {
        Client {
            target: Target::Remote { addr, key },
        }
    }

    /// Whether the server is on another host.
    pub fn is_remote(&self) -> bool {
        matches!(self.target, Target::Remote { .. })
    }

    /// One request over the secure channel to a remote server: the channel, a MUNGE
    /// credential of ours holding the channel's hash, then the request and its answer.
    fn remote_exchange(addr: &str, key: &Path, request: &[u8]) -> Result<Vec<u8>> {
        let text = std::fs::read_to_string(key).with_context(|| {
            format!(
                "reading the server's public key {} (copy the server's SWD/server.pub there, \
                 or give --server-key)",
                key.display()
            )
        })?;
        let public = hex::decode(text.trim())
            .map_err(|_| anyhow!("{}: not a server key (64 hex digits)", key.display()))?;
        let munge = berth_sys::munge::load().map_err(|e| anyhow!("remote use needs MUNGE: {e}"))?;
        let stream = std::net::TcpStream::connect(addr)
            .map_err(|e| NoServer(format!("no berth server answers at {addr} ({e})")))?;
        let _ = stream.set_nodelay(true);
        let mut ch = berth_channel::open_keyed(
            stream,
            berth_channel::Keying::ServerPublic(&public),
            "client",
            true,
        )
        .map_err(|e| anyhow!("the server at {addr}: {e}"))?;
        let cred = munge
            .encode(munge_socket().as_deref(), &ch.hash)
            .map_err(|e| anyhow!("remote use needs MUNGE on this host: {e}"))?;
        ch.tx
            .send(&serde_json::to_vec(&serde_json::json!({ "munge": cred }))?)
            .map_err(|e| anyhow!("the server at {addr}: {e}"))?;
        let answer: serde_json::Value = serde_json::from_slice(
            &ch.rx
                .recv()
                .map_err(|e| anyhow!("the server at {addr}: {e}"))?,
        )?;
        if let Some(e) = answer["error"].as_str() {
            bail!("the server at {addr} refused this user: {e}");
        }
        ch.tx
            .send(request)
            .map_err(|e| anyhow!("the server at {addr}: {e}"))?;
        ch.rx
            .recv()
            .map_err(|e| anyhow!("the server at {addr}: {e}"))
    }

    /// Sends a request and decodes the JSON answer; an error answer becomes an error.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<T> {
        let path = match &self.target {
            Target::Local(p) => p,
            Target::Remote { addr, key } => {
                let body = body.unwrap_or(b"");
                let mut req = format!(
                    "{method} {target} HTTP/1.1\r\nHost: berth\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(body);
                let answer = Client::remote_exchange(addr, key, &req)?;
                return Self::answer(BufReader::new(&answer[..]), method, target);
            }
        };
        let mut s = UnixStream::connect(path).map_err(|e| {
            NoServer(format!(
                "no berth server answers at {} ({e}); start one with: berth up --swd DIR",
                path.display()
            ))
        })?;
        let body = body.unwrap_or(b"");
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        // A server that refuses the connection (too many of this user's) answers and
        // closes before reading: its answer is still there to read.
        let sent = s.write_all(&req);
        let mut r = BufReader::new(s);
        match (r.fill_buf().map(|b| b.len()), sent) {
            (Ok(n), _) if n > 0 => {}
            (_, Err(e)) => return Err(e).context("sending to the server"),
            (Err(e), Ok(())) => return Err(e).context("reading the server's answer"),
            (Ok(_), Ok(())) => {
                return Err(NoServer(
                    "the server closed the connection without an answer (it may be stopping)"
                        .into(),
                )
                .into())
            }
        }
        Self::answer(r, method, target)
    }

    /// Reads an HTTP answer and decodes its JSON; an error answer becomes an error.
    fn answer<T: DeserializeOwned>(mut r: impl BufRead, method: &str, target: &str) -> Result<T> {
        let mut status = String::new();
        r.read_line(&mut status)
            .context("reading the server's answer")?;
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("the server's answer is not HTTP: {status:?}"))?;
        let mut len = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                break;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut buf = Vec::new();
        match len {
            Some(n) => {
                buf.resize(n, 0);
                r.read_exact(&mut buf)?;
            }
            None => {
                r.read_to_end(&mut buf)?;
            }
        }
        if code != 200 {
            let msg = serde_json::from_slice::<berth_proto::ApiError>(&buf)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&buf).into_owned());
            return Err(Refused {
                status: code,
                message: msg,
            }
            .into());
        }
        serde_json::from_slice(&buf)
            .with_context(|| format!("decoding the server's answer to {method} {target}"))
    }
}
