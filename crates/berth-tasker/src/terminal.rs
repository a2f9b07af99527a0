//! The terminal of an interactive job (`berth run -I`): a pseudo-terminal on the tasker,
//! relayed over TCP to the `berth run` that waits for it.
//!
//! The tasker connects to the submitting host (to 127.0.0.1 when that is its own) and
//! opens the secure channel of `berth-channel` on it, keyed with the job's one-time token
//! (which only the submitter, the server and this tasker know: it proves each to the
//! other, and never crosses the network itself). From then on the channel's messages
//! carry the terminal's bytes both ways, encrypted. The job's output comes back as it is
//! (and also goes to its log). The user's side is escaped: `FF FF` is a byte FF, and
//! `FF 01` followed by rows and columns (two bytes each, big-endian) is a new window size.

use berth_channel::Channel;
use berth_proto::Interactive;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// The channel's purpose for a terminal.
pub const PURPOSE: &str = "terminal";
/// How the token is named in errors.
pub const SECRET_NAME: &str = "terminal token";

/// The tasker's end of an interactive job's terminal.
pub struct Terminal {
    channel: Channel,
    master: File,
}

impl Terminal {
    /// Reaches the `berth run -I` that waits for the job, and makes the job's
    /// pseudo-terminal; the slave that comes with it is the job's standard input, output
    /// and error, to be closed here once the job has it.
    pub fn connect(i: &Interactive, own_host: &str) -> io::Result<(Terminal, OwnedFd)> {
        // The token goes out in a line: nothing but the 64 hex digits berth run makes.
        if i.token.len() != 64 || !i.token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the terminal's token is not 64 hex digits",
            ));
        }
        if i.port < 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the terminal's port {} is privileged", i.port),
            ));
        }
        let mut tried = Vec::new();
        // The submitting host (the server sets it), and on this host only loopback.
        let hosts = if i.host == own_host {
            vec!["127.0.0.1"]
        } else {
            vec![i.host.as_str()]
        };
        let mut sock = None;
        'hosts: for h in hosts {
            let addrs = match (h, i.port).to_socket_addrs() {
                Ok(a) => a,
                Err(e) => {
                    tried.push(format!("{h}: {e}"));
                    continue;
                }
            };
            for a in addrs {
                match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
                    Ok(s) => {
                        sock = Some(s);
                        break 'hosts;
                    }
                    Err(e) => tried.push(format!("{a}: {e}")),
                }
            }
        }
        let Some(sock) = sock else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "cannot reach the terminal of `berth run -I` at {}:{} ({}); has it been stopped?",
                    i.host,
                    i.port,
                    tried.join("; ")
                ),
            ));
        };
        sock.set_nodelay(true)?;
        let channel = berth_channel::open(sock, i.token.as_bytes(), PURPOSE, true, SECRET_NAME)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "the terminal of `berth run -I` at {}:{}: {e}",
                        i.host, i.port
                    ),
                )
            })?;
        let (master, slave) = berth_sys::pty::openpty(i.rows.max(1), i.cols.max(1))?;
        Ok((
            Terminal {
                channel,
                master: File::from(master),
            },
            slave,
        ))
    }

    /// Relays until the job's side of the terminal is closed by every process that had
    /// it; the job's output also goes to `log`.
    pub fn relay(self, log: Option<File>) -> Relay {
        let Terminal { channel, master } = self;
        let (done_tx, done) = std::sync::mpsc::channel();
        let sock2 = channel.tx.stream().try_clone().ok();
        std::thread::spawn(move || {
            relay(channel, master, log);
            let _ = done_tx.send(());
        });
        Relay { done, sock: sock2 }
    }
}

/// A running relay.
pub struct Relay {
    done: std::sync::mpsc::Receiver<()>,
    sock: Option<TcpStream>,
}

impl Relay {
    /// Waits up to `limit` for the relay to pass on the last of the job's output. (When
    /// the job, the terminal's session leader, ends, the kernel hangs the terminal up for
    /// whatever it left behind, so the relay ends; should it not, the connection is closed
    /// anyway, so that `berth run -I` never waits for a leftover.)
    pub fn finish(self, limit: Duration) {
        if self.done.recv_timeout(limit).is_err() {
            if let Some(s) = &self.sock {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn relay(channel: Channel, mut master: File, mut log: Option<File>) {
    let Channel { mut tx, mut rx, .. } = channel;
    let mut buf = [0u8; 16 * 1024];
    let mut from_user = true;
    let mut input = Input::default();
    loop {
        // A message of the user's already read into the channel's buffer is not seen by
        // poll: take it first.
        let fds = if from_user && rx.buffered() {
            vec![false, true]
        } else {
            match berth_sys::poll_readable(&[
                master.as_raw_fd(),
                if from_user {
                    rx.stream().as_raw_fd()
                } else {
                    -1
                },
            ]) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        };
        if fds[0] {
            match master.read(&mut buf) {
                // EIO once no process has the slave open any more: the job is over.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = tx.send(&buf[..n]);
                    if let Some(l) = log.as_mut() {
                        // The terminal's line ends are \r\n; the log's are \n.
                        let text: Vec<u8> = buf[..n]
                            .iter()
                            .enumerate()
                            .filter(|&(k, &b)| !(b == b'\r' && buf[..n].get(k + 1) == Some(&b'\n')))
                            .map(|(_, &b)| b)
                            .collect();
                        let _ = l.write_all(&text);
                    }
                }
            }
        }
        if fds[1] {
            match rx.recv() {
                Err(_) => {
                    // The user's input ended: an end-of-file character, as a terminal
                    // would give it.
                    from_user = false;
                    let _ = master.write_all(&[4]);
                }
                Ok(data) => {
                    let (keys, sizes) = input.feed(&data);
                    for (rows, cols) in sizes {
                        let _ = berth_sys::pty::set_window_size(&master, rows, cols);
                    }
                    let _ = master.write_all(&keys);
                }
            }
        }
    }
    tx.finish();
}

/// The user's side of the stream, unescaped; a message may span reads.
#[derive(Debug, Default)]
pub struct Input {
    /// The bytes of an escape read so far (FF, then up to five more).
    pending: Vec<u8>,
}

/// Marks an escape in the user's stream.
pub const ESCAPE: u8 = 0xFF;
/// After ESCAPE: a new window size follows.
pub const RESIZE: u8 = 0x01;

impl Input {
    /// The keys in `data`, and the window sizes it announces, in order of arrival within
    /// their kinds.
    pub fn feed(&mut self, data: &[u8]) -> (Vec<u8>, Vec<(u16, u16)>) {
        let mut keys = Vec::with_capacity(data.len());
        let mut sizes = Vec::new();
        for &b in data {
            if self.pending.is_empty() {
                if b == ESCAPE {
                    self.pending.push(b);
                } else {
                    keys.push(b);
                }
                continue;
            }
            self.pending.push(b);
            match self.pending[1] {
                ESCAPE => {
                    keys.push(ESCAPE);
                    self.pending.clear();
                }
                RESIZE if self.pending.len() == 6 => {
                    let p = &self.pending;
                    sizes.push((
                        u16::from_be_bytes([p[2], p[3]]),
                        u16::from_be_bytes([p[4], p[5]]),
                    ));
                    self.pending.clear();
                }
                RESIZE => {}
                // Not a message this tasker knows: dropped, as a terminal drops a bad
                // escape sequence.
                _ => self.pending.clear(),
            }
        }
        (keys, sizes)
    }
}

/// The user's keys, escaped for the stream.
pub fn escape_keys(keys: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.len() + 8);
    for &b in keys {
        out.push(b);
        if b == ESCAPE {
            out.push(ESCAPE);
        }
    }
    out
}

/// A window-size message for the stream.
pub fn resize_message(rows: u16, cols: u16) -> [u8; 6] {
    let (r, c) = (rows.to_be_bytes(), cols.to_be_bytes());
    [ESCAPE, RESIZE, r[0], r[1], c[0], c[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_sizes_come_through_however_the_stream_is_cut() {
        let mut stream = escape_keys(b"ab\xffc");
        stream.extend(resize_message(40, 300));
        stream.extend(escape_keys(b"\xff\xff"));
        stream.extend([ESCAPE, 0x7e, b'z']); // an unknown message is dropped
        for cut in 1..stream.len() {
            let mut input = Input::default();
            let mut keys = Vec::new();
            let mut sizes = Vec::new();
            for chunk in stream.chunks(cut) {
                let (k, s) = input.feed(chunk);
                keys.extend(k);
                sizes.extend(s);
            }
            assert_eq!(keys, b"ab\xffc\xff\xffz", "cut {cut}");
            assert_eq!(sizes, [(40, 300)], "cut {cut}");
        }
    }
}
