//! `berth run -I`: the job's terminal is this one. berth run listens on a TCP port of its
//! own, says where in the submission with a one-time token, and relays between this
//! terminal (in raw mode, so that ^C and the like reach the job) and the tasker that
//! connects and proves the token (a secure channel keyed with it: the terminal's bytes
//! are encrypted). Then it waits for the job's end and exits with its status.

use crate::client::Client;
use anyhow::{Context, Result};
use berth_proto::{Interactive, JobView};
use berth_tasker::terminal::{escape_keys, resize_message};
use std::io::{IsTerminal, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A listener waiting for the tasker of one interactive job.
pub struct Listening {
    listener: TcpListener,
    /// What goes in the submission.
    pub interactive: Interactive,
    /// The channel to the tasker, once there is one: the keys and the window sizes
    /// are written to it whole, one writer at a time.
    to_job: Arc<Mutex<Option<berth_channel::Sender>>>,
}

/// Where to listen: the loopback address when every tasker runs on this host (the tasker
/// then connects to 127.0.0.1), else this host's own address, never every address.
fn bind_address(client: &Client) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
    let me = berth_sys::short_hostname();
    let taskers: Vec<berth_proto::TaskerView> =
        client.call("GET", "/v1/taskers", None).unwrap_or_default();
    if taskers.iter().all(|t| t.host == me) {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    }
    (me.as_str(), 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|a| !a.ip().is_loopback()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Opens the port the tasker will connect to.
pub fn listen(client: &Client) -> Result<Listening> {
    let listener = TcpListener::bind((bind_address(client), 0))
        .context("listening for the interactive job's tasker")?;
    let port = listener.local_addr()?.port();
    let mut raw = [0u8; 32];
    berth_sys::random_bytes(&mut raw).context("making the terminal's token")?;
    let (rows, cols) = berth_sys::pty::window_size(&std::io::stdin())
        .or_else(|| berth_sys::pty::window_size(&std::io::stdout()))
        .unwrap_or((24, 80));
    Ok(Listening {
        listener,
        interactive: Interactive {
            host: berth_sys::short_hostname(),
            port,
            token: hex::encode(raw),
            rows,
            cols,
        },
        to_job: Arc::new(Mutex::new(None)),
    })
}

impl Listening {
    /// Takes the blocked signals on a thread of their own: SIGWINCH sends the terminal's
    /// new size to the job; the others stop job `id`, whose end then comes back as any
    /// job's (the relay ends, the wait returns).
    pub fn on_signals(&self, signals: berth_sys::SignalWaiter, stopper: Client, id: u64) {
        let to_job = self.to_job.clone();
        std::thread::spawn(move || loop {
            let sig = signals.wait();
            if sig == libc::SIGWINCH {
                if let Some((rows, cols)) = berth_sys::pty::window_size(&std::io::stdin()) {
                    if let Some(s) = to_job.lock().expect("lock").as_mut() {
                        let _ = s.send(&resize_message(rows, cols));
                    }
                }
                continue;
            }
            if let Err(e) =
                stopper.call::<serde_json::Value>("POST", &format!("/v1/jobs/{id}/stop"), None)
            {
                errln!(
                    "\r\nberth run: {}: cannot stop job {id}: {e}\r",
                    berth_tasker::lifecycle::signal_name(sig)
                );
            }
        });
    }

    /// Waits for job `id`'s tasker (saying so on a terminal), relays the terminal until
    /// the job is over, and returns the job as it ended.
    pub fn attach(self, client: &Client, id: u64) -> Result<JobView> {
        let tty = std::io::stderr().is_terminal();
        let channel = match self.accept(client, id, tty)? {
            Ok(c) => c,
            Err(v) => return Ok(v), // ended without ever starting
        };
        *self.to_job.lock().expect("lock") = Some(channel.tx);
        relay(channel.rx, self.to_job.clone())?;
        loop {
            let v: JobView = client.call("GET", &format!("/v1/jobs/{id}/wait?timeout=5"), None)?;
            if v.state.is_final() {
                return Ok(v);
            }
        }
    }

    /// `berth exec`: waits for the tasker of exec `req` to connect (or for the exec to
    /// end without it), relays this terminal, and returns how the exec ended: its exit
    /// status, or why it did not run.
    pub fn exec(self, client: &Client, req: u64, stdin: bool, tty: bool) -> Result<i32> {
        let result = |client: &Client| -> Result<Option<(Option<i32>, Option<String>)>> {
            let v: serde_json::Value = client.call("GET", &format!("/v1/exec/{req}"), None)?;
            Ok(v["done"].as_bool().unwrap_or(false).then(|| {
                (
                    v["exit_code"].as_i64().map(|c| c as i32),
                    v["error"].as_str().map(str::to_string),
                )
            }))
        };
        let mut early = None;
        let channel = self.accept_until(|| {
            early = result(client)?;
            Ok(early.is_some())
        })?;
        let ended = |r: (Option<i32>, Option<String>)| -> Result<i32> {
            match r {
                (_, Some(e)) => anyhow::bail!("{e}"),
                (Some(c), None) => Ok(c),
                (None, None) => Ok(crate::exit::NO_STATUS),
            }
        };
        let Some(channel) = channel else {
            return ended(early.unwrap_or((None, None)));
        };
        *self.to_job.lock().expect("lock") = Some(channel.tx);
        relay_with(channel.rx, self.to_job.clone(), stdin, tty)?;
        // The tasker reports the end once its hook has ended.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = result(client)? {
                return ended(r);
            }
            if Instant::now() > deadline {
                anyhow::bail!("berth exec {req}: its end was not reported within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tasker's channel, once it has proven the token; None when `over` says, first,
    /// that there is nothing to wait for.
    fn accept_until(
        &self,
        mut over: impl FnMut() -> Result<bool>,
    ) -> Result<Option<berth_channel::Channel>> {
        self.listener.set_nonblocking(true)?;
        let want = Arc::new(self.interactive.token.clone());
        let (found_tx, found) = std::sync::mpsc::channel::<berth_channel::Channel>();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut next_check = Instant::now() + Duration::from_millis(100);
        loop {
            if let Ok(c) = found.try_recv() {
                c.rx.set_timeout(None)?;
                return Ok(Some(c));
            }
            match self.listener.accept() {
                Ok((s, _)) => {
                    use std::sync::atomic::Ordering;
                    if pending.load(Ordering::Relaxed) < 64 {
                        pending.fetch_add(1, Ordering::Relaxed);
                        let (want, tx, pending) = (want.clone(), found_tx.clone(), pending.clone());
                        std::thread::spawn(move || {
                            let opened =
                                s.set_nonblocking(false).is_ok() && s.set_nodelay(true).is_ok();
                            if opened {
                                if let Ok(c) = berth_channel::open(
                                    s,
                                    want.as_bytes(),
                                    berth_tasker::terminal::PURPOSE,
                                    false,
                                    berth_tasker::terminal::SECRET_NAME,
                                ) {
                                    let _ = tx.send(c);
                                }
                            }
                            pending.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("waiting for the tasker to connect"),
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + Duration::from_millis(300);
                if over()? {
                    // A short job may have run and ended while its tasker's connection
                    // was being proven here: what it wrote waits in that connection.
                    // A moment for the handshakes under way (silent ones take longer).
                    use std::sync::atomic::Ordering;
                    let deadline = Instant::now() + Duration::from_secs(1);
                    loop {
                        if let Ok(c) = found.recv_timeout(Duration::from_millis(20)) {
                            c.rx.set_timeout(None)?;
                            return Ok(Some(c));
                        }
                        if pending.load(Ordering::Relaxed) == 0 || Instant::now() >= deadline {
                            break;
                        }
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The tasker's channel, once it has proven the token; or the job, if it ended first.
    fn accept(
        &self,
        client: &Client,
        id: u64,
        tty: bool,
    ) -> Result<std::result::Result<berth_channel::Channel, JobView>> {
        let mut said = false;
        let mut ended = None;
        let channel = self.accept_until(|| {
            let v: JobView = client.call("GET", &format!("/v1/jobs/{id}"), None)?;
            if v.state.is_final() {
                ended = Some(v);
                return Ok(true);
            }
            if tty && !said {
                errpart!(
                    "berth run: job {id} is {}{}; its terminal connects here when it starts",
                    v.state.as_str(),
                    v.why_waiting
                        .as_deref()
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                );
                said = true;
            }
            Ok(false)
        })?;
        if said {
            errpart!("\r\x1b[K");
        }
        match (channel, ended) {
            (Some(c), _) => Ok(Ok(c)),
            (None, Some(v)) => Ok(Err(v)),
            (None, None) => anyhow::bail!("job {id}: its terminal never connected"),
        }
    }
}

/// This terminal to the job and back, until the tasker closes the connection (the job
/// and everything it started are gone).
fn relay(
    from_job: berth_channel::Receiver,
    to_job: Arc<Mutex<Option<berth_channel::Sender>>>,
) -> Result<()> {
    relay_with(from_job, to_job, true, true)
}

/// The same; `stdin`: the keys go to the job (else it reads an end of file); `tty`: this
/// terminal in raw mode (when standard input is one).
fn relay_with(
    mut from_job: berth_channel::Receiver,
    to_job: Arc<Mutex<Option<berth_channel::Sender>>>,
    stdin_too: bool,
    tty: bool,
) -> Result<()> {
    let stdin = std::io::stdin();
    let raw = if tty && stdin_too && stdin.is_terminal() {
        Some(berth_sys::pty::RawMode::enable(&stdin).context("putting the terminal in raw mode")?)
    } else {
        None
    };
    // The keys: a thread of their own, left behind blocked in read when the job ends.
    std::thread::spawn(move || {
        if !stdin_too {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut input = std::io::stdin().lock();
        loop {
            let n = input.read(&mut buf).unwrap_or(0);
            let mut w = to_job.lock().expect("lock");
            let Some(s) = w.as_mut() else { return };
            if n == 0 {
                s.finish();
                return;
            }
            if s.send(&escape_keys(&buf[..n])).is_err() {
                return;
            }
        }
    });
    let mut out = std::io::stdout().lock();
    // Without a terminal here, the far terminal's line ends (CR LF) are plain ones.
    let mut cr = false;
    while let Ok(mut data) = from_job.recv() {
        if !tty {
            let mut plain = Vec::with_capacity(data.len());
            for b in data {
                if cr && b != b'\n' {
                    plain.push(b'\r');
                }
                cr = b == b'\r';
                if !cr {
                    plain.push(b);
                }
            }
            data = plain;
        }
        if let Err(e) = out.write_all(&data).and_then(|()| out.flush()) {
            drop(raw);
            crate::closed_output(e);
        }
    }
    drop(raw);
    Ok(())
}
