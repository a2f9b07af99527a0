//! The CLI's side of the API: one HTTP request per connection to the server's Unix socket.

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Read, Write};
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

/// A client of one server.
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client of the server at `path`.
    pub fn new(path: PathBuf) -> Client {
        Client { path }
    }

    /// Sends a request and decodes the JSON answer; an error answer becomes an error.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<T> {
        let mut s = UnixStream::connect(&self.path).map_err(|e| {
            anyhow!(
                "no berth server answers at {} ({e}); start one with: berth up --swd DIR",
                self.path.display()
            )
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
        let mut status = String::new();
        match (r.read_line(&mut status), sent) {
            (Ok(n), _) if n > 0 => {}
            (_, Err(e)) => return Err(e).context("sending to the server"),
            (Err(e), Ok(())) => return Err(e).context("reading the server's answer"),
            (Ok(_), Ok(())) => bail!("the server closed the connection without an answer"),
        }
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
            bail!("{msg}");
        }
        serde_json::from_slice(&buf)
            .with_context(|| format!("decoding the server's answer to {method} {target}"))
    }
}
