//! Just enough HTTP/1.1 for berth's API on a Unix socket: requests with a Content-Length
//! body, keep-alive, JSON answers. The request line and headers are parsed by `httparse`;
//! every size and every wait is bounded, so that a hostile client costs the server one
//! bounded buffer and one thread for a bounded time.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// The largest request line and header block accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest body accepted (a submission of many jobs with their environments; `berth
/// run -f` sends larger files in several submissions).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// A body larger than this is read and parsed only while one of [`BIG_AT_ONCE`] places is
/// free: parsed, a body takes several times its size in memory, and users have many
/// connections.
pub const BIG_BODY: usize = 64 * 1024;
/// How many large bodies the server takes at once, from all users.
pub const BIG_AT_ONCE: usize = 2;

/// The places for large bodies.
static BIG: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// A place for a large body, given back when the request is dropped.
#[derive(Debug)]
pub struct BigPlace(());

impl BigPlace {
    /// Waits for a place until `deadline`.
    pub fn take(deadline: Instant) -> Option<BigPlace> {
        let mut n = BIG.0.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= BIG_AT_ONCE {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            n = BIG
                .1
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *n += 1;
        Some(BigPlace(()))
    }
}

impl Drop for BigPlace {
    fn drop(&mut self) {
        let mut n = BIG.0.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        BIG.1.notify_one();
    }
}
/// The most headers a request may have.
const MAX_HEADERS: usize = 32;
/// How long a request may take to arrive, from its first byte to its last.
pub const REQUEST_TIME: Duration = Duration::from_secs(30);
/// How long a connection may stay idle between requests.
pub const IDLE_TIME: Duration = Duration::from_secs(120);

/// Why a request was not read; each maps to the status the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed, or timed out.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not HTTP/1.1 as this server speaks it (400).
    #[error("{0}")]
    Bad(String),
    /// The request line and headers are larger than [`MAX_HEAD`] (431).
    #[error("the request's headers pass {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The body is declared larger than [`MAX_BODY`] (413); nothing of it was read.
    #[error(
        "a body of {0} bytes is larger than the {MAX_BODY} accepted; submit fewer jobs at a time"
    )]
    BodyTooLarge(u64),
    /// The request did not arrive within [`REQUEST_TIME`] (408).
    #[error("the request did not arrive within {} s", REQUEST_TIME.as_secs())]
    TooSlow,
}

impl ReadError {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            ReadError::Io(_) | ReadError::Bad(_) => 400,
            ReadError::HeadTooLarge => 431,
            ReadError::BodyTooLarge(_) => 413,
            ReadError::TooSlow => 408,
        }
    }
}

/// One request.
#[derive(Debug)]
pub struct Request {
    /// GET, POST, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query's pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the client asked to close the connection after the answer.
    pub close: bool,
    /// For a large body, its place, held while the request is handled.
    pub place: Option<BigPlace>,
}

impl Request {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decodes a query component (`+` is a blank).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query component.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A connection's reading side: its bytes not yet consumed, kept between requests.
pub struct Conn<R> {
    inner: R,
    buf: Vec<u8>,
}

/// What a stream needs so that reads can be bounded in time.
pub trait Timed: Read {
    /// Sets how long the next read may wait (None: for ever).
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Timed for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Timed for &[u8] {
    fn set_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

impl<R: Timed> Conn<R> {
    /// Reads requests from `inner`.
    pub fn new(inner: R) -> Conn<R> {
        Conn {
            inner,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer, waiting until `deadline` at most; false at the
    /// end of the stream.
    fn fill(&mut self, deadline: Instant, idle: bool) -> Result<bool, ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::TooSlow);
        }
        self.inner.set_timeout(Some(left))?;
        let mut chunk = [0u8; 8192];
        match self.inner.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if idle {
                    Err(ReadError::Io(e))
                } else {
                    Err(ReadError::TooSlow)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one request; Ok(None) at a clean end of the connection, or after
    /// [`IDLE_TIME`] without a new request.
    pub fn read_request(&mut self) -> Result<Option<Request>, ReadError> {
        // Idle until the first byte of a request.
        if self.buf.is_empty() {
            match self.fill(Instant::now() + IDLE_TIME, true) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(ReadError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        let deadline = Instant::now() + REQUEST_TIME;
        // The head: parsed as it arrives, never more than MAX_HEAD bytes of it.
        let (head_len, method, target, close, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let window = &self.buf[..self.buf.len().min(MAX_HEAD)];
            match req.parse(window) {
                Ok(httparse::Status::Complete(n)) => {
                    let method = req.method.unwrap_or("").to_string();
                    let target = req.path.unwrap_or("/").to_string();
                    let mut close = req.version == Some(0);
                    let mut len: u64 = 0;
                    for h in req.headers.iter() {
                        let v = std::str::from_utf8(h.value)
                            .map_err(|_| ReadError::Bad("a header is not UTF-8".into()))?
                            .trim();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            len = v
                                .parse()
                                .map_err(|_| ReadError::Bad(format!("bad content-length {v:?}")))?;
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = v.eq_ignore_ascii_case("close");
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err(ReadError::Bad(
                                "chunked bodies are not accepted; send a content-length".into(),
                            ));
                        }
                    }
                    break (n, method, target, close, len);
                }
                Ok(httparse::Status::Partial) if self.buf.len() >= MAX_HEAD => {
                    return Err(ReadError::HeadTooLarge)
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadTooLarge),
                Err(e) => return Err(ReadError::Bad(format!("not an HTTP request: {e}"))),
            }
            if !self.fill(deadline, false)? {
                return Err(ReadError::Bad(
                    "the connection closed in the headers".into(),
                ));
            }
        };
        if len > MAX_BODY as u64 {
            return Err(ReadError::BodyTooLarge(len));
        }
        let len = len as usize;
        let place = if len > BIG_BODY {
            Some(BigPlace::take(deadline).ok_or(ReadError::TooSlow)?)
        } else {
            None
        };
        // The body: the buffer grows only as its bytes arrive.
        while self.buf.len() < head_len + len {
            if !self.fill(deadline, false)? {
                return Err(ReadError::Bad("the connection closed in the body".into()));
            }
        }
        let body = self.buf[head_len..head_len + len].to_vec();
        self.buf.drain(..head_len + len);
        let (path, q) = target.split_once('?').unwrap_or((&target, ""));
        let query = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        Ok(Some(Request {
            method,
            path: path.to_string(),
            query,
            body,
            close,
            place,
        }))
    }
}

/// Writes one JSON answer.
pub fn write_response(w: &mut impl Write, status: u16, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut buf = Vec::with_capacity(head.len() + body.len());
    buf.extend_from_slice(head.as_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_table() {
        let raw = b"POST /v1/jobs?state=Queued&user=a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /v1/taskers HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut r = Conn::new(&raw[..]);
        let a = r.read_request().unwrap().unwrap();
        assert_eq!((a.method.as_str(), a.path.as_str()), ("POST", "/v1/jobs"));
        assert_eq!(a.param("user"), Some("a b"));
        assert_eq!(a.body, b"{}");
        assert!(!a.close);
        let b = r.read_request().unwrap().unwrap();
        assert_eq!(b.path, "/v1/taskers");
        assert!(b.close);
        assert!(r.read_request().unwrap().is_none());
        let long_line = [b"GET /".as_slice(), &[b'a'; MAX_HEAD + 10]].concat();
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(40));
        let cases: &[(&[u8], u16)] = &[
            (b"GET\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n",
                413,
            ),
            (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 400),
            (&long_line, 431),
            (many.as_bytes(), 431),
        ];
        for (bad, status) in cases {
            let e = Conn::new(*bad).read_request().unwrap_err();
            assert_eq!(
                e.status(),
                *status,
                "{:?}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn codes_round_trip() {
        for s in ["a b", "Container:c1", "x&y=z%", "ü"] {
            assert_eq!(decode(&encode(s)), s);
        }
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%4"), "%4");
    }
}
