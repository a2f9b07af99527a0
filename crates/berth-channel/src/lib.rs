//! The secure channel between berth's hosts: a TCP connection on which both ends first
//! say which version of this protocol they speak, then run a Noise handshake
//! (`Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, by `snow`) keyed with a secret both hold,
//! then exchange messages that are encrypted, authenticated and numbered (a message
//! replayed, reordered, altered or reflected fails to decrypt).
//!
//! On the wire, after the version lines, every Noise message is a 2-byte big-endian length
//! and the message. An application message is one Noise message holding its length (4
//! bytes), then its bytes in Noise messages of at most [`CHUNK`] bytes each; a message of
//! length 0 is a keepalive, which [`Receiver::recv`] takes and does not return. A message
//! longer than [`MAX_MESSAGE`] is refused before any of it is read.
//!
//! The secret is the cluster secret for taskers and the server; for an interactive job's
//! terminal, the one-time token that the submitter, the server and the tasker share.

use sha2::{Digest, Sha256};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The version of this protocol; both ends must speak the same.
pub const VERSION: u32 = 1;
/// The largest message accepted.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// The most application bytes in one Noise message.
pub const CHUNK: usize = 65535 - 16;
/// How long the version exchange and the handshake may take.
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(10);

const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

/// Why a channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer speaks another version of the protocol.
    #[error("the peer speaks berth channel protocol {theirs}, this side {ours}; run the same berth release on both")]
    Version {
        /// This side's.
        ours: u32,
        /// The peer's, as it said it.
        theirs: String,
    },
    /// The peer does not hold the same secret (or is not berth).
    #[error("the peer does not hold the same secret ({0}); check that both have the same {1}")]
    Handshake(String, &'static str),
    /// A message did not decrypt: altered, replayed or out of order.
    #[error("a message that does not decrypt (altered, replayed or out of order); closing")]
    Corrupt,
    /// The peer announced a message longer than [`MAX_MESSAGE`].
    #[error("the peer sent a message of {0} bytes, more than the {MAX_MESSAGE} accepted")]
    TooLarge(u64),
    /// The peer said nothing (not even a keepalive) for longer than the read timeout.
    #[error("the peer has been silent for longer than {0:?}")]
    Silent(Duration),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
}

/// What the secret is, for messages: "cluster secret (SWD/cluster.secret)".
pub type SecretName = &'static str;

/// The 32-byte pre-shared key made of a secret of any length, for one purpose: the same
/// secret used for two purposes gives two keys.
pub fn psk(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"berth-channel psk\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(secret);
    h.finalize().into()
}

/// The sending half of a channel.
pub struct Sender {
    stream: TcpStream,
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    buf: Vec<u8>,
}

/// The receiving half of a channel.
pub struct Receiver {
    stream: BufReader<TcpStream>,
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    buf: Vec<u8>,
}

/// Both halves.
pub struct Channel {
    /// Sends.
    pub tx: Sender,
    /// Receives.
    pub rx: Receiver,
    /// The handshake's hash: the same on both ends of this channel and no other, for
    /// binding a credential to it.
    pub hash: Vec<u8>,
}

/// How a channel is keyed.
pub enum Keying<'a> {
    /// A secret both ends hold (`NNpsk0`): taskers and the server, a terminal.
    Shared(&'a [u8], SecretName),
    /// The server's static key (`NK`): a client that knows the server's public key, and
    /// proves who it is afterwards (with MUNGE).
    ServerPublic(&'a [u8]),
    /// The server's side of `ServerPublic`.
    ServerPrivate(&'a [u8]),
}

const PATTERN_NK: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";

/// A new static key pair for a server: (private, public), 32 bytes each.
pub fn generate_keypair() -> (Vec<u8>, Vec<u8>) {
    let kp = snow::Builder::new(PATTERN_NK.parse().expect("a valid pattern"))
        .generate_keypair()
        .expect("a key pair from the system's randomness");
    (kp.private, kp.public)
}

fn version_line() -> String {
    format!("berth-channel {VERSION}\n")
}

/// Reads the peer's version line (at most 64 bytes).
fn read_version(r: &mut BufReader<TcpStream>) -> Result<(), ChannelError> {
    let mut line = Vec::new();
    r.by_ref().take(64).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(ChannelError::Closed);
    }
    let text = String::from_utf8_lossy(&line).trim().to_string();
    match text.strip_prefix("berth-channel ") {
        Some(v) if v == VERSION.to_string() => Ok(()),
        Some(v) => Err(ChannelError::Version {
            ours: VERSION,
            theirs: v.to_string(),
        }),
        None => Err(ChannelError::Version {
            ours: VERSION,
            theirs: format!("none (it said {text:?})"),
        }),
    }
}

fn write_noise(w: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    w.write_all(&out)
}

fn read_noise(r: &mut impl Read, into: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    into.resize(u16::from_be_bytes(len) as usize, 0);
    r.read_exact(into)
}

/// `read_exact` that gives up at `deadline`, however slowly the bytes come.
fn read_exact_by(
    r: &mut BufReader<TcpStream>,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "too slow"));
        }
        r.get_ref().set_read_timeout(Some(left))?;
        match r.read(&mut buf[at..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Shuts a connection down at a deadline unless told not to: a handshake trickled a byte
/// at a time must not last for ever.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    fn start(stream: &TcpStream, limit: Duration) -> io::Result<Watchdog> {
        let s = stream.try_clone()?;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("berth-handshake".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            })?;
        Ok(Watchdog(Some(tx)))
    }

    fn done(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Opens a channel on `stream`: the initiator (the side that connected) or the responder.
/// `purpose` binds the channel to its use (`tasker`, `terminal`); `secret_name` says, in
/// errors, which secret must match.
pub fn open(
    stream: TcpStream,
    secret: &[u8],
    purpose: &str,
    initiator: bool,
    secret_name: SecretName,
) -> Result<Channel, ChannelError> {
    open_keyed(
        stream,
        Keying::Shared(secret, secret_name),
        purpose,
        initiator,
    )
}

/// Opens a channel keyed as `keying` says.
pub fn open_keyed(
    stream: TcpStream,
    keying: Keying<'_>,
    purpose: &str,
    initiator: bool,
) -> Result<Channel, ChannelError> {
    let (psk, secret_name) = match keying {
        Keying::Shared(secret, name) => (psk(secret, purpose), name),
        _ => ([0u8; 32], "server key (SWD/server.pub)"),
    };
    stream.set_read_timeout(Some(HANDSHAKE_TIME))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIME))?;
    // The whole handshake within its time, however slowly the peer sends.
    let watchdog = Watchdog::start(&stream, HANDSHAKE_TIME)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream.try_clone()?);
    w.write_all(version_line().as_bytes())?;
    read_version(&mut r)?;
    let prologue = format!("berth-channel {VERSION} {purpose}");
    let builder = match keying {
        Keying::Shared(..) => snow::Builder::new(PATTERN.parse().expect("a valid pattern"))
            .psk(0, &psk)
            .prologue(prologue.as_bytes()),
        Keying::ServerPublic(public) => {
            snow::Builder::new(PATTERN_NK.parse().expect("a valid pattern"))
                .remote_public_key(public)
                .prologue(prologue.as_bytes())
        }
        Keying::ServerPrivate(private) => {
            snow::Builder::new(PATTERN_NK.parse().expect("a valid pattern"))
                .local_private_key(private)
                .prologue(prologue.as_bytes())
        }
    };
    let mut hs = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(|e| ChannelError::Handshake(e.to_string(), secret_name))?;
    let mut msg = vec![0u8; 1024];
    let mut got = Vec::new();
    let mut scratch = vec![0u8; 1024];
    let refused = |e: snow::Error| ChannelError::Handshake(e.to_string(), secret_name);
    if initiator {
        let n = hs.write_message(&[], &mut msg).map_err(refused)?;
        write_noise(&mut w, &msg[..n])?;
        // A responder that cannot read our first message (another secret) hangs up.
        read_noise(&mut r, &mut got).map_err(|e| {
            ChannelError::Handshake(
                format!("it closed the connection during the handshake: {e}"),
                secret_name,
            )
        })?;
        hs.read_message(&got, &mut scratch).map_err(refused)?;
    } else {
        read_noise(&mut r, &mut got)?;
        hs.read_message(&got, &mut scratch).map_err(refused)?;
        let n = hs.write_message(&[], &mut msg).map_err(refused)?;
        write_noise(&mut w, &msg[..n])?;
    }
    let hash = hs.get_handshake_hash().to_vec();
    watchdog.done();
    let state = Arc::new(
        hs.into_stateless_transport_mode()
            .map_err(|e| ChannelError::Handshake(e.to_string(), secret_name))?,
    );
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(Channel {
        tx: Sender {
            stream: w,
            state: state.clone(),
            nonce: 0,
            buf: vec![0u8; 65535],
        },
        rx: Receiver {
            stream: r,
            state,
            nonce: 0,
            buf: Vec::new(),
        },
        hash,
    })
}

impl Sender {
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let n = self
            .state
            .write_message(self.nonce, plain, &mut self.buf)
            .map_err(|_| ChannelError::Corrupt)?;
        self.nonce += 1;
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&self.buf[..n]);
        Ok(())
    }

    /// Sends one message (at most [`MAX_MESSAGE`] bytes) in one write.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        self.send_all(&[msg])
    }

    /// Sends several messages in one write: a burst of starts costs one system call and,
    /// with `TCP_NODELAY`, not a packet each.
    pub fn send_all(&mut self, msgs: &[&[u8]]) -> Result<(), ChannelError> {
        let out = self.seal_all(msgs)?;
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// Seals messages into the bytes that carry them, in order, to be written with
    /// [`Sender::write_now`] and [`Sender::write_sealed`]: once sealed, they must be
    /// written, whole and in order, before anything sealed after them.
    pub fn seal_all(&mut self, msgs: &[&[u8]]) -> Result<Vec<u8>, ChannelError> {
        let total: usize = msgs
            .iter()
            .map(|m| m.len() + 64 + 18 * (m.len() / CHUNK + 1))
            .sum();
        let mut out = Vec::with_capacity(total);
        for msg in msgs {
            if msg.len() > MAX_MESSAGE {
                return Err(ChannelError::TooLarge(msg.len() as u64));
            }
            self.seal(&(msg.len() as u32).to_be_bytes(), &mut out)?;
            for c in msg.chunks(CHUNK) {
                self.seal(c, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Writes as much of `sealed` as the socket takes without waiting; returns how much.
    pub fn write_now(&mut self, sealed: &[u8]) -> Result<usize, ChannelError> {
        let mut done = 0;
        while done < sealed.len() {
            match berth_sys::send_nowait(&self.stream, &sealed[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    /// Writes sealed bytes, waiting as the write timeout allows.
    pub fn write_sealed(&mut self, sealed: &[u8]) -> Result<(), ChannelError> {
        self.stream.write_all(sealed)?;
        Ok(())
    }

    /// Sends a keepalive: an empty message, which the peer's `recv` takes silently.
    pub fn keepalive(&mut self) -> Result<(), ChannelError> {
        self.send(&[])
    }

    /// Bounds how long a send may wait for the peer to take what was sent.
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(t)
    }

    /// Says that nothing more will be sent: the peer's `recv` ends with
    /// [`ChannelError::Closed`], while this side may still receive.
    pub fn finish(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Closes both directions of the connection (the receiver's `recv` then ends).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The stream underneath, for its address.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl Receiver {
    fn open_one(&mut self, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let mut sealed = std::mem::take(&mut self.buf);
        let r = read_noise(&mut self.stream, &mut sealed);
        let r = match r {
            Ok(()) => {
                let mut plain = vec![0u8; sealed.len()];
                match self.state.read_message(self.nonce, &sealed, &mut plain) {
                    Ok(n) => {
                        self.nonce += 1;
                        out.extend_from_slice(&plain[..n]);
                        Ok(())
                    }
                    Err(_) => Err(ChannelError::Corrupt),
                }
            }
            Err(e) => Err(e.into()),
        };
        self.buf = sealed;
        r
    }

    /// The next message, of at most `max` bytes (a longer one is refused before any of it
    /// is read), which must have arrived whole `within` of its first byte; the first byte
    /// is waited for as the read timeout says. `admit` is told the length first, and may
    /// refuse it (or wait for room) by returning false.
    pub fn recv_bounded(
        &mut self,
        max: usize,
        within: Duration,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<u8>, ChannelError> {
        let idle = self.stream.get_ref().read_timeout().ok().flatten();
        let r = self.recv_by(max, within, admit);
        let _ = self.stream.get_ref().set_read_timeout(idle);
        r
    }

    fn recv_by(
        &mut self,
        max: usize,
        within: Duration,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<u8>, ChannelError> {
        loop {
            // The first byte as long as the idle timeout allows, then the message by its
            // deadline.
            let mut first = [0u8; 1];
            if let Err(e) = self.stream.read_exact(&mut first) {
                return Err(self.map_end(e.into()));
            }
            let deadline = Instant::now() + within;
            let mut head = Vec::with_capacity(4);
            self.open_one_by(Some(first[0]), deadline, &mut head)?;
            let Ok(len) = <[u8; 4]>::try_from(head.as_slice()) else {
                return Err(ChannelError::Corrupt);
            };
            let len = u32::from_be_bytes(len) as usize;
            if len > max.min(MAX_MESSAGE) {
                return Err(ChannelError::TooLarge(len as u64));
            }
            if len == 0 {
                continue;
            }
            if !admit(len) {
                return Err(ChannelError::TooLarge(len as u64));
            }
            let mut msg = Vec::with_capacity(len.min(1 << 20));
            while msg.len() < len {
                self.open_one_by(None, deadline, &mut msg)?;
            }
            if msg.len() != len {
                return Err(ChannelError::Corrupt);
            }
            return Ok(msg);
        }
    }

    /// One Noise message read by `deadline` (its first byte maybe read already).
    fn open_one_by(
        &mut self,
        first: Option<u8>,
        deadline: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        let mut len = [0u8; 2];
        let timed = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ChannelError::Silent(Duration::ZERO)
            }
            io::ErrorKind::UnexpectedEof => ChannelError::Closed,
            _ => ChannelError::Io(e),
        };
        match first {
            Some(b) => {
                len[0] = b;
                read_exact_by(&mut self.stream, &mut len[1..], deadline).map_err(timed)?;
            }
            None => read_exact_by(&mut self.stream, &mut len, deadline).map_err(timed)?,
        }
        let mut sealed = vec![0u8; u16::from_be_bytes(len) as usize];
        read_exact_by(&mut self.stream, &mut sealed, deadline).map_err(timed)?;
        let mut plain = vec![0u8; sealed.len()];
        let n = self
            .state
            .read_message(self.nonce, &sealed, &mut plain)
            .map_err(|_| ChannelError::Corrupt)?;
        self.nonce += 1;
        out.extend_from_slice(&plain[..n]);
        Ok(())
    }

    /// The next message; keepalives are taken and not returned. With a read timeout set,
    /// a peer silent for longer fails with [`ChannelError::Silent`].
    pub fn recv(&mut self) -> Result<Vec<u8>, ChannelError> {
        loop {
            let mut head = Vec::with_capacity(4);
            if let Err(e) = self.open_one(&mut head) {
                return Err(self.map_end(e));
            }
            let Ok(len) = <[u8; 4]>::try_from(head.as_slice()) else {
                return Err(ChannelError::Corrupt);
            };
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_MESSAGE {
                return Err(ChannelError::TooLarge(len as u64));
            }
            if len == 0 {
                continue;
            }
            let mut msg = Vec::with_capacity(len.min(1 << 20));
            while msg.len() < len {
                if let Err(e) = self.open_one(&mut msg) {
                    return Err(self.map_end(e));
                }
            }
            if msg.len() != len {
                return Err(ChannelError::Corrupt);
            }
            return Ok(msg);
        }
    }

    fn map_end(&self, e: ChannelError) -> ChannelError {
        match e {
            ChannelError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => ChannelError::Closed,
            ChannelError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ChannelError::Silent(
                    self.stream
                        .get_ref()
                        .read_timeout()
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                )
            }
            e => e,
        }
    }

    /// Fails `recv` once the peer has said nothing for `t` (None: wait for ever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.get_ref().set_read_timeout(t)
    }

    /// Whether a message has begun to arrive and sits in the buffer (for a poll on the
    /// descriptor, which does not see it).
    pub fn buffered(&self) -> bool {
        !self.stream.buffer().is_empty()
    }

    /// The stream underneath, for polling.
    pub fn stream(&self) -> &TcpStream {
        self.stream.get_ref()
    }

    /// This receiver, to be read by an event loop without waiting (see [`Incoming`]),
    /// with what it had already read and not returned.
    pub fn incoming(self) -> Incoming {
        let mut raw = self.stream.buffer().to_vec();
        let end = raw.len();
        raw.resize(end.max(Incoming::START), 0);
        Incoming {
            stream: self.stream.into_inner(),
            state: self.state,
            nonce: self.nonce,
            raw,
            at: 0,
            end,
            msg: None,
            plain: Vec::new(),
        }
    }
}

/// The receiving half of a channel, read by an event loop: [`Incoming::read`] takes what
/// the socket has and returns the messages it completes, never waiting. The socket's own
/// mode is left as it is (the sending half may still wait on its copy of it).
pub struct Incoming {
    stream: TcpStream,
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    /// Bytes read and not yet opened: `raw[at..end]`.
    raw: Vec<u8>,
    at: usize,
    end: usize,
    /// The message being put together: its length and what has come of it.
    msg: Option<(usize, Vec<u8>)>,
    plain: Vec<u8>,
}

impl Incoming {
    /// The most read from the socket by one call of [`Incoming::read`], so that one busy
    /// peer does not hold an event loop from the others.
    pub const BUDGET: usize = 256 * 1024;

    /// Reads what the socket has (at most [`Incoming::BUDGET`] bytes), adding the
    /// messages it completes to `out` (keepalives are taken and not added). Ok(true): it
    /// read something (the peer is alive); Ok(false): there was nothing. An error (the
    /// peer closed, or sent what does not decrypt) comes after the messages before it
    /// were added.
    pub fn read(&mut self, out: &mut Vec<Vec<u8>>) -> Result<bool, ChannelError> {
        let mut heard = self.at < self.end;
        let mut taken = 0;
        self.open_all(out)?;
        while taken < Self::BUDGET {
            self.make_room();
            let room = self.raw.len() - self.end;
            match berth_sys::recv_nowait(&self.stream, &mut self.raw[self.end..]) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => {
                    heard = true;
                    taken += n;
                    self.end += n;
                    self.open_all(out)?;
                    // Less than there was room for: the socket had no more (what comes
                    // later makes it ready again), and a read to be told so is spared.
                    if n < room {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(ChannelError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(heard)
    }

    /// Room to read into: what is left (part of one Noise message, at most 65,537 bytes)
    /// goes to the front, and the buffer grows to hold that message whole. An idle
    /// connection keeps [`Incoming::START`] bytes: a server reads a thousand of them.
    fn make_room(&mut self) {
        if self.at == self.end {
            (self.at, self.end) = (0, 0);
            if self.raw.len() > Self::START {
                self.raw = vec![0u8; Self::START];
                self.plain = Vec::new();
            }
            return;
        }
        if self.at > 0 {
            self.raw.copy_within(self.at..self.end, 0);
            (self.at, self.end) = (0, self.end - self.at);
        }
        let need = match self.raw[..self.end] {
            [a, b, ..] => 2 + u16::from_be_bytes([a, b]) as usize,
            _ => 2,
        };
        let want = need.max(self.end + 4096);
        if self.raw.len() < want {
            self.raw.resize(want, 0);
        }
    }

    /// What an idle connection's buffer holds.
    const START: usize = 16 * 1024;

    /// Opens every whole Noise message read, putting messages together.
    fn open_all(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), ChannelError> {
        loop {
            let rest = &self.raw[self.at..self.end];
            if rest.len() < 2 {
                return Ok(());
            }
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            if rest.len() < 2 + len {
                return Ok(());
            }
            if self.plain.len() < len {
                self.plain.resize(len, 0);
            }
            let n = self
                .state
                .read_message(self.nonce, &rest[2..2 + len], &mut self.plain)
                .map_err(|_| ChannelError::Corrupt)?;
            self.nonce += 1;
            self.at += 2 + len;
            let plain = &self.plain[..n];
            match &mut self.msg {
                None => {
                    let Ok(head) = <[u8; 4]>::try_from(plain) else {
                        return Err(ChannelError::Corrupt);
                    };
                    let want = u32::from_be_bytes(head) as usize;
                    if want > MAX_MESSAGE {
                        return Err(ChannelError::TooLarge(want as u64));
                    }
                    if want > 0 {
                        self.msg = Some((want, Vec::with_capacity(want.min(1 << 20))));
                    }
                }
                Some((want, msg)) => {
                    if msg.len() + plain.len() > *want {
                        return Err(ChannelError::Corrupt);
                    }
                    msg.extend_from_slice(plain);
                    if msg.len() == *want {
                        if let Some((_, m)) = self.msg.take() {
                            out.push(m);
                        }
                    }
                }
            }
        }
    }

    /// The stream underneath, for the event loop's watch.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Closes both directions of the connection.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(
        a: &'static [u8],
        b: &'static [u8],
    ) -> (Result<Channel, ChannelError>, Result<Channel, ChannelError>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            open(s, b, "test", false, "test secret")
        });
        let c = open(
            TcpStream::connect(addr).unwrap(),
            a,
            "test",
            true,
            "test secret",
        );
        (c, t.join().unwrap())
    }

    #[test]
    fn messages_of_every_size_cross_and_keepalives_do_not_show() {
        let (c, s) = pair(b"secret", b"secret");
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let big: Vec<u8> = (0..3 * CHUNK + 7).map(|i| i as u8).collect();
        for m in [&b"hello"[..], &big, &[1u8; CHUNK], b"x"] {
            c.tx.keepalive().unwrap();
            c.tx.send(m).unwrap();
            assert_eq!(s.rx.recv().unwrap(), m);
            s.tx.send(m).unwrap();
            assert_eq!(c.rx.recv().unwrap(), m);
        }
        drop(c);
        assert!(matches!(s.rx.recv(), Err(ChannelError::Closed)));
    }

    /// Reads `inc` until `want` messages came or it fails, waiting on its socket.
    fn read_all(inc: &mut Incoming, want: usize) -> (Vec<Vec<u8>>, Option<ChannelError>) {
        use std::os::fd::AsRawFd;
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} messages",
                got.len()
            );
            if let Err(e) = inc.read(&mut got) {
                return (got, Some(e));
            }
            let fd = inc.stream().as_raw_fd();
            berth_sys::poll_readable_for(&[fd], Some(Duration::from_millis(200))).unwrap();
        }
        (got, None)
    }

    #[test]
    fn an_event_loop_reads_whole_messages_however_the_bytes_come() {
        let (c, s) = pair(b"secret", b"secret");
        let (mut c, s) = (c.unwrap(), s.unwrap());
        // Sent before the receiver changes hands: what it had read is not lost.
        c.tx.send(b"first").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut inc = s.rx.incoming();
        let mut none = Vec::new();
        let big: Vec<u8> = (0..3 * CHUNK + 7).map(|i| (i * 7) as u8).collect();
        let msgs: Vec<Vec<u8>> = vec![
            b"hello".to_vec(),
            big.clone(),
            vec![9u8; CHUNK],
            b"x".to_vec(),
        ];
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let mut sealed = c.tx.seal_all(&refs).unwrap();
        // A keepalive between them, and all of it a few bytes at a time.
        let mut ka = Vec::new();
        c.tx.seal(&0u32.to_be_bytes(), &mut ka).unwrap();
        let ka_at = sealed.len();
        sealed.extend_from_slice(&ka);
        let more = c.tx.seal_all(&[b"last"]).unwrap();
        sealed.extend_from_slice(&more);
        assert!(ka_at > 0);
        let writer = std::thread::spawn(move || {
            for part in sealed.chunks(1000) {
                c.tx.stream.write_all(part).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            c
        });
        let (got, err) = read_all(&mut inc, 6);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got[0], b"first");
        assert_eq!(&got[1..5], &msgs[..]);
        assert_eq!(got[5], b"last");
        // Nothing more: nothing read, and no error.
        assert!(!inc.read(&mut none).unwrap());
        assert!(none.is_empty());
        // The peer closes: said after what it sent.
        let mut c = writer.join().unwrap();
        c.tx.send(b"bye").unwrap();
        drop(c);
        let (got, err) = read_all(&mut inc, 2);
        assert_eq!(got, vec![b"bye".to_vec()]);
        assert!(matches!(err, Some(ChannelError::Closed)), "{err:?}");
    }

    #[test]
    fn an_event_loop_refuses_a_replayed_or_huge_message() {
        let (c, s) = pair(b"k", b"k");
        let (mut c, s) = (c.unwrap(), s.unwrap());
        let mut inc = s.rx.incoming();
        let sealed = c.tx.seal_all(&[b"once"]).unwrap();
        c.tx.stream.write_all(&sealed).unwrap();
        c.tx.stream.write_all(&sealed).unwrap();
        let (got, err) = read_all(&mut inc, 2);
        assert_eq!(got, vec![b"once".to_vec()]);
        assert!(matches!(err, Some(ChannelError::Corrupt)), "{err:?}");

        let (c, s) = pair(b"k", b"k");
        let (mut c, s) = (c.unwrap(), s.unwrap());
        let mut inc = s.rx.incoming();
        let mut out = Vec::new();
        c.tx.seal(&(MAX_MESSAGE as u32 + 1).to_be_bytes(), &mut out)
            .unwrap();
        c.tx.stream.write_all(&out).unwrap();
        let (_, err) = read_all(&mut inc, 1);
        assert!(matches!(err, Some(ChannelError::TooLarge(_))), "{err:?}");
    }

    #[test]
    fn a_wrong_secret_is_refused_on_both_sides() {
        let (c, s) = pair(b"secret", b"other");
        assert!(
            matches!(s, Err(ChannelError::Handshake(..))),
            "{:?}",
            s.err()
        );
        assert!(c.is_err());
    }

    #[test]
    fn another_version_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"berth-channel 7\n").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = open(
            TcpStream::connect(addr).unwrap(),
            b"s",
            "test",
            true,
            "test secret",
        )
        .err()
        .unwrap();
        assert_eq!(
            e.to_string(),
            "the peer speaks berth channel protocol 7, this side 1; run the same berth release on both"
        );
        t.join().unwrap();
    }

    #[test]
    fn a_replayed_or_altered_message_does_not_decrypt_and_a_huge_one_is_refused() {
        // A man in the middle that repeats the first message it relays.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut ch = open(s, b"k", "test", false, "test secret").unwrap();
            let first = ch.rx.recv().unwrap();
            (first, ch.rx.recv().map(|_| ()))
        });
        let s = TcpStream::connect(addr).unwrap();
        let mut ch = open(s, b"k", "test", true, "test secret").unwrap();
        // Send one message, then its very bytes again, as a replay would.
        let mut out = Vec::new();
        ch.tx.seal(&5u32.to_be_bytes(), &mut out).unwrap();
        ch.tx.seal(b"hello", &mut out).unwrap();
        ch.tx.stream.write_all(&out).unwrap();
        ch.tx.stream.write_all(&out).unwrap();
        let (first, second) = server.join().unwrap();
        assert_eq!(first, b"hello");
        assert!(matches!(second, Err(ChannelError::Corrupt)));

        let (c, s) = pair(b"k", b"k");
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let mut out = Vec::new();
        c.tx.seal(&(MAX_MESSAGE as u32 + 1).to_be_bytes(), &mut out)
            .unwrap();
        c.tx.stream.write_all(&out).unwrap();
        assert!(matches!(s.rx.recv(), Err(ChannelError::TooLarge(_))));
    }

    #[test]
    fn a_client_reaches_only_the_server_whose_key_it_knows() {
        let (private, public) = generate_keypair();
        let (_, other_public) = generate_keypair();
        for (known, works) in [(public.clone(), true), (other_public, false)] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let private = private.clone();
            let t = std::thread::spawn(move || {
                let (s, _) = l.accept().unwrap();
                open_keyed(s, Keying::ServerPrivate(&private), "client", false)
            });
            let c = open_keyed(
                TcpStream::connect(addr).unwrap(),
                Keying::ServerPublic(&known),
                "client",
                true,
            );
            let s = t.join().unwrap();
            if works {
                let (mut c, mut s) = (c.unwrap(), s.unwrap());
                assert_eq!(c.hash, s.hash);
                c.tx.send(b"hi").unwrap();
                assert_eq!(s.rx.recv().unwrap(), b"hi");
            } else {
                assert!(s.is_err() || c.is_err());
            }
        }
    }

    #[test]
    fn a_trickled_or_too_large_message_is_cut_off() {
        let (c, s) = pair(b"k", b"k");
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        // Its bytes one at a time, slower than the message may take.
        let mut out = Vec::new();
        c.tx.seal(&5u32.to_be_bytes(), &mut out).unwrap();
        c.tx.seal(b"hello", &mut out).unwrap();
        let t = std::thread::spawn(move || {
            for b in out {
                if c.tx.stream.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        let e =
            s.rx.recv_bounded(1024, Duration::from_millis(300), &mut |_| true)
                .unwrap_err();
        assert!(matches!(e, ChannelError::Silent(_)), "{e}");
        t.join().unwrap();

        let (c, s) = pair(b"k", b"k");
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.tx.send(&[0u8; 5000]).unwrap();
        let e =
            s.rx.recv_bounded(4096, Duration::from_secs(5), &mut |_| true)
                .unwrap_err();
        assert!(matches!(e, ChannelError::TooLarge(5000)), "{e}");
        c.tx.send(b"x").unwrap();
    }

    #[test]
    fn a_silent_peer_is_noticed() {
        let (c, s) = pair(b"k", b"k");
        let (_c, mut s) = (c.unwrap(), s.unwrap());
        s.rx.set_timeout(Some(Duration::from_millis(100))).unwrap();
        assert!(matches!(s.rx.recv(), Err(ChannelError::Silent(_))));
    }
}
