//! The HTTP+JSON API on the SWD's Unix socket. Who a client is comes from the kernel (the
//! socket's peer credentials), never from what the client says.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/jobs` (a `SubmitRequest`) | `Submitted`, once the jobs are on disk |
//! | `GET /v1/jobs?state=&user=&name=&limit=` | `[JobView]`, newest first |
//! | `GET /v1/jobs/ID` | `JobView`, with why it waits |
//! | `GET /v1/jobs/ID/wait?timeout=SECONDS` | `JobView` when it is over, or as it is at the timeout |
//! | `POST /v1/jobs/ID/stop` | `{"message": ...}` |
//! | `GET /v1/taskers` | `[TaskerView]` |

use crate::daemon::{Caller, Event, Handle};
use crate::http::{write_response, Conn, ReadError, Request};
use crate::policy::Policy;
use berth_proto::{ApiError, JobView, State, SubmitRequest};
use berth_store::Filter;
use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// The most connections open at once, in all.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most connections one user may have open at once.
pub const MAX_CONNECTIONS_PER_USER: usize = 64;
/// How long an answer may take to be taken by its client.
const WRITE_TIME: Duration = Duration::from_secs(30);

/// The connections open now, in all and by uid.
#[derive(Default)]
struct Open {
    all: usize,
    by_uid: HashMap<u32, usize>,
}

/// One connection's place in [`Open`], given back when it ends.
struct Slot<'a> {
    open: &'a Mutex<Open>,
    uid: u32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        o.all -= 1;
        if let Some(n) = o.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                o.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Takes a place for a connection of `uid`, or says which limit it would pass.
fn take_slot(open: &Mutex<Open>, uid: u32) -> Result<Slot<'_>, String> {
    let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
    let mine = o.by_uid.get(&uid).copied().unwrap_or(0);
    if mine >= MAX_CONNECTIONS_PER_USER {
        return Err(format!(
            "uid {uid} has {mine} connections open to the server, the most one user may have; \
             close some (another berth command may hang)"
        ));
    }
    if o.all >= MAX_CONNECTIONS {
        return Err(format!(
            "the server has {} connections open, the most it takes; try again shortly",
            o.all
        ));
    }
    o.all += 1;
    *o.by_uid.entry(uid).or_default() += 1;
    Ok(Slot { open, uid })
}

/// Serves the API until the listener fails, under `policy` (who is an administrator, what
/// a submission may ask). Each connection has a thread; their number is bounded in all and
/// per user, each request's size and time is bounded, and an error of `accept` (such as
/// running out of descriptors) is waited out rather than retried at once.
/// The connections open now, local and remote: one table, so that a user's limit counts
/// both.
static OPEN: std::sync::LazyLock<Mutex<Open>> = std::sync::LazyLock::new(Mutex::default);

/// Connections still proving who they are, by address: past a few from one address or
/// many in all, a new one is closed at once, so that silent connections cannot hold every
/// place or every descriptor.
pub(crate) struct Unproven {
    by_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// The most connections still proving who they are, from one address.
pub(crate) const UNPROVEN_PER_ADDRESS: usize = 8;
/// The most in all.
pub(crate) const UNPROVEN: usize = 64;

/// A place among the unproven, given back when dropped.
pub(crate) struct UnprovenPlace<'a>(&'a Unproven, std::net::IpAddr);

impl Unproven {
    pub(crate) fn new() -> Unproven {
        Unproven {
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn take(&self, ip: std::net::IpAddr) -> Option<UnprovenPlace<'_>> {
        let mut m = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let all: usize = m.values().sum();
        let mine = m.get(&ip).copied().unwrap_or(0);
        if all >= UNPROVEN || mine >= UNPROVEN_PER_ADDRESS {
            return None;
        }
        *m.entry(ip).or_default() += 1;
        Some(UnprovenPlace(self, ip))
    }
}

impl Drop for UnprovenPlace<'_> {
    fn drop(&mut self) {
        let mut m = self.0.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// The next connection with a place among the unproven (few at once may still be proving
/// who they are, from one address and in all; the others are closed at once), waiting
/// out errors of `accept` (such as running out of descriptors).
pub(crate) fn accept_unproven<'a>(
    listener: &std::net::TcpListener,
    unproven: &'a Unproven,
    what: &str,
    backoff: &mut Duration,
) -> (std::net::TcpStream, std::net::IpAddr, UnprovenPlace<'a>) {
    loop {
        let conn = match listener.accept() {
            Ok((c, _)) => {
                *backoff = Duration::from_millis(10);
                c
            }
            Err(e) => {
                berth_sys::say!("berth server: accepting {what}: {e}; waiting {backoff:?}");
                std::thread::sleep(*backoff);
                *backoff = (*backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(ip) = conn.peer_addr().map(|a| a.ip()) else {
            continue;
        };
        if let Some(place) = unproven.take(ip) {
            return (conn, ip, place);
        }
    }
}

pub fn serve(listener: UnixListener, handle: Handle, policy: Policy) {
    let policy = Arc::new(policy);
    let open: &'static Mutex<Open> = &OPEN;
    let mut backoff = Duration::from_millis(10);
    loop {
        let conn = match listener.accept() {
            Ok((c, _)) => {
                backoff = Duration::from_millis(10);
                c
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                berth_sys::say!("berth server: accepting a connection: {e}; waiting {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(cred) = berth_sys::peer_cred(&conn) else {
            continue;
        };
        let slot = match take_slot(open, cred.uid) {
            Ok(s) => s,
            Err(e) => {
                let mut conn = conn;
                let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = write_response(&mut conn, 429, &error_body(&e));
                continue;
            }
        };
        let handle = handle.clone();
        let policy = policy.clone();
        let spawned = std::thread::Builder::new()
            .name("berth-api".into())
            .spawn(move || {
                let _slot = slot;
                connection(conn, cred, handle, &policy)
            });
        if let Err(e) = spawned {
            berth_sys::say!("berth server: no thread for a connection: {e}");
            std::thread::sleep(backoff);
        }
    }
}

fn connection(conn: UnixStream, cred: berth_sys::PeerCred, handle: Handle, policy: &Policy) {
    let user = berth_sys::identity_by_uid(cred.uid)
        .map(|i| i.name)
        .unwrap_or_else(|_| cred.uid.to_string());
    let caller = Caller {
        uid: cred.uid,
        gid: cred.gid,
        user,
        admin: policy.is_admin(cred.uid),
    };
    let Ok(mut write) = conn.try_clone() else {
        return;
    };
    let here = berth_sys::short_hostname();
    let _ = write.set_write_timeout(Some(WRITE_TIME));
    let mut read = Conn::new(conn);
    loop {
        let req = match read.read_request() {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(ReadError::Io(_)) => return,
            Err(e) => {
                let _ = write_response(
                    &mut write,
                    e.status(),
                    &error_body(&format!("bad request: {e}")),
                );
                return;
            }
        };
        let (status, body) = route(&req, &caller, &handle, policy, &here);
        if write_response(&mut write, status, &body).is_err() || req.close {
            return;
        }
    }
}

/// What remote clients need: the server's private key and the munged to ask.
pub struct Remote {
    /// The server's static private key (`SWD/server.key`).
    pub private: Vec<u8>,
    /// The munged socket (None: libmunge's default).
    pub munge_socket: Option<std::path::PathBuf>,
}

/// Serves users on other hosts at `listener`: the secure channel with the server's key,
/// then a MUNGE credential that holds the channel's hash (so it proves who is at the
/// other end of this channel, and of no other), then requests, each answered as the
/// credential's uid. Without MUNGE here, every such user is told so and refused.
pub fn serve_remote(
    listener: std::net::TcpListener,
    handle: Handle,
    policy: Policy,
    remote: Remote,
) {
    let policy = Arc::new(policy);
    let remote = Arc::new(remote);
    let open: &'static Mutex<Open> = &OPEN;
    let unproven: &'static Unproven = Box::leak(Box::new(Unproven::new()));
    let mut backoff = Duration::from_millis(10);
    loop {
        // Who a connection is is known only once it proves it.
        let (conn, ip, place) =
            accept_unproven(&listener, unproven, "a remote client", &mut backoff);
        let (handle, policy, remote) = (handle.clone(), policy.clone(), remote.clone());
        let spawned = std::thread::Builder::new()
            .name("berth-remote".into())
            .spawn(move || {
                let peer = ip.to_string();
                let authed = remote_client(conn, &remote, &policy);
                drop(place);
                match authed {
                    Ok((ch, caller)) => {
                        let slot = match take_slot(open, caller.uid) {
                            Ok(s) => s,
                            Err(e) => {
                                let mut tx = ch.tx;
                                let mut buf = Vec::new();
                                let _ = write_response(&mut buf, 429, &error_body(&e));
                                let _ = tx.send(&buf);
                                return;
                            }
                        };
                        remote_requests(ch, &caller, &handle, &policy, &peer);
                        drop(slot);
                    }
                    Err(e) => berth_sys::say!("berth server: remote client {peer}: {e}"),
                }
            });
        if let Err(e) = spawned {
            berth_sys::say!(
                "berth server: no thread for a remote client: {e}; waiting {backoff:?}"
            );
            std::thread::sleep(backoff);
        }
    }
}

/// The channel and the credential: who is at the other end.
fn remote_client(
    conn: std::net::TcpStream,
    remote: &Remote,
    policy: &Policy,
) -> Result<(berth_channel::Channel, Caller), String> {
    let _ = conn.set_nodelay(true);
    let mut ch = berth_channel::open_keyed(
        conn,
        berth_channel::Keying::ServerPrivate(&remote.private),
        "client",
        false,
    )
    .map_err(|e| e.to_string())?;
    ch.rx
        .set_timeout(Some(berth_channel::HANDSHAKE_TIME))
        .map_err(|e| e.to_string())?;
    // The credential: a few KiB, whole within the handshake's time.
    let first = ch
        .rx
        .recv_bounded(16 * 1024, berth_channel::HANDSHAKE_TIME, &mut |_| true)
        .map_err(|e| e.to_string())?;
    let first: serde_json::Value =
        serde_json::from_slice(&first).map_err(|e| format!("bad first message: {e}"))?;
    let refuse = |ch: &mut berth_channel::Channel, why: String| {
        let _ = ch
            .tx
            .send(serde_json::json!({ "error": why }).to_string().as_bytes());
        Err(why)
    };
    let Some(cred) = first["munge"].as_str() else {
        return refuse(&mut ch, "no MUNGE credential".into());
    };
    let munge = match berth_sys::munge::load() {
        Ok(m) => m,
        Err(e) => {
            return refuse(
                &mut ch,
                format!("the server cannot check MUNGE credentials: {e}"),
            )
        }
    };
    let (payload, uid, gid) = match munge.decode(remote.munge_socket.as_deref(), cred) {
        Ok(d) => d,
        Err(e) => return refuse(&mut ch, format!("the credential does not hold: {e}")),
    };
    if payload != ch.hash {
        return refuse(
            &mut ch,
            "the credential was made for another connection".into(),
        );
    }
    let user = berth_sys::identity_by_uid(uid)
        .map(|i| i.name)
        .unwrap_or_else(|_| uid.to_string());
    let caller = Caller {
        uid,
        gid,
        user,
        // root of another host is not this farm's administrator.
        admin: uid != 0 && policy.is_admin(uid),
    };
    let _ = ch.tx.send(
        serde_json::json!({ "ok": true, "uid": uid })
            .to_string()
            .as_bytes(),
    );
    let _ = ch.rx.set_timeout(Some(crate::http::IDLE_TIME));
    Ok((ch, caller))
}

/// A remote client's requests, one a message, each answered in one.
fn remote_requests(
    mut ch: berth_channel::Channel,
    caller: &Caller,
    h: &Handle,
    policy: &Policy,
    peer: &str,
) {
    let _ = ch.tx.set_timeout(Some(WRITE_TIME));
    loop {
        // As on the local socket: a request's size and time bounded, and a large body
        // taken only while one of the few places for one is free.
        let mut place = None;
        let msg = match ch.rx.recv_bounded(
            crate::http::MAX_HEAD + crate::http::MAX_BODY,
            crate::http::REQUEST_TIME,
            &mut |len| {
                if len <= crate::http::BIG_BODY {
                    return true;
                }
                place = crate::http::BigPlace::take(Instant::now() + crate::http::REQUEST_TIME);
                place.is_some()
            },
        ) {
            Ok(m) => m,
            Err(_) => return,
        };
        let mut answer = Vec::new();
        match Conn::new(&msg[..]).read_request() {
            Ok(Some(req)) => {
                let (status, body) = route(&req, caller, h, policy, peer);
                let _ = write_response(&mut answer, status, &body);
            }
            Ok(None) => return,
            Err(e) => {
                let _ = write_response(
                    &mut answer,
                    e.status(),
                    &error_body(&format!("bad request: {e}")),
                );
            }
        }
        drop(place);
        if ch.tx.send(&answer).is_err() {
            return;
        }
    }
}

fn error_body(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&ApiError {
        error: msg.to_string(),
    })
    .unwrap_or_default()
}

fn json<T: serde::Serialize>(r: Result<T, String>) -> (u16, Vec<u8>) {
    match r {
        Ok(v) => (200, serde_json::to_vec(&v).unwrap_or_default()),
        Err(e) => {
            let status = if e.starts_with("the server could not record") {
                503
            } else if e.starts_with("no job") {
                404
            } else if e.contains("only an administrator") {
                403
            } else {
                400
            };
            (status, error_body(&e))
        }
    }
}

/// The most jobs one `POST /v1/stop` stops (an array's, at most the largest submission).
pub const STOP_MAX: usize = 100_000;

/// The most jobs one `POST /v1/wait` waits for.
pub const WAIT_MAX: usize = 5_000;

/// The most jobs `GET /v1/jobs` returns without a `limit`, and with one.
const LIST_DEFAULT: u32 = 10_000;
const LIST_MAX: u32 = 100_000;

/// Another user's job as a listing shows it to someone who is not an administrator: who,
/// what state, when and where, but not its command, directory, log, request or reasons.
fn redacted(mut v: JobView, caller: &Caller) -> JobView {
    if v.uid != caller.uid && !caller.admin {
        v.command = Vec::new();
        v.dir = String::new();
        v.log = String::new();
        v.resources = None;
        v.reason = v.reason.map(|_| "(another user's job)".to_string());
        v.hook_failures = Vec::new();
        v.why_waiting = None;
        v.after = Vec::new();
        v.attempts = Vec::new();
    }
    v
}

/// A job's details (its command, directory, log, request) only for its owner or an
/// administrator (SPEC §9).
fn mine(v: Result<JobView, String>, caller: &Caller) -> Result<JobView, String> {
    match v {
        Ok(v) if v.uid != caller.uid && !caller.admin => Err(format!(
            "job {} is {}'s: only an administrator may see another user's job, its details or its log",
            v.id, v.user
        )),
        other => other,
    }
}

fn route(
    req: &Request,
    caller: &Caller,
    h: &Handle,
    policy: &Policy,
    client_host: &str,
) -> (u16, Vec<u8>) {
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("POST", ["v1", "jobs"]) => match serde_json::from_slice::<SubmitRequest>(&req.body) {
            Ok(mut s) => match policy.check(&s, caller.uid) {
                Ok(()) => {
                    // The client's host is the one its connection came from (this one,
                    // for the local socket), whatever the submission says, so that a
                    // tasker never connects to a host of the submitter's choosing.
                    let here = client_host.to_string();
                    for j in &mut s.jobs {
                        if let Some(i) = &mut j.interactive {
                            i.host = here.clone();
                        }
                    }
                    json(h.ask(|r| Event::Submit(caller.clone(), s, r)))
                }
                Err(e) => (400, error_body(&e)),
            },
            Err(e) => (
                400,
                error_body(&format!("the submission is not valid JSON: {e}")),
            ),
        },
        ("GET", ["v1", "jobs"]) => {
            let mut f = Filter::default();
            if let Some(s) = req.param("state") {
                for one in s.split(',') {
                    match State::parse(one) {
                        Some(st) => f.states.push(st),
                        None => {
                            return (
                                400,
                                error_body(&format!(
                                "unknown state {one:?}; states are Queued, Running, Done, Failed"
                            )),
                            )
                        }
                    }
                }
            }
            if let Some(u) = req.param("user") {
                match u
                    .parse::<u32>()
                    .ok()
                    .or_else(|| berth_sys::identity_by_name(u).ok().map(|i| i.uid))
                {
                    Some(uid) => f.uid = Some(uid),
                    None => {
                        return (
                            400,
                            error_body(&format!("no user {u:?} on the server's host")),
                        )
                    }
                }
            }
            f.name = req.param("name").map(str::to_string);
            if let Some(b) = req.param("below") {
                match b.parse() {
                    Ok(b) => f.below = Some(b),
                    Err(_) => return (400, error_body(&format!("{b:?} is not a job id"))),
                }
            }
            if let Some(a) = req.param("array") {
                match a.parse() {
                    Ok(a) => f.array = Some(a),
                    Err(_) => return (400, error_body(&format!("{a:?} is not an array id"))),
                }
            }
            // Bounded, so that one request cannot make the server build any length of list.
            f.limit = Some(
                req.param("limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(LIST_DEFAULT)
                    .min(LIST_MAX),
            );
            json(h.ask(|r| Event::List(f, r)).map(|jobs| {
                jobs.into_iter()
                    .map(|v| redacted(v, caller))
                    .collect::<Vec<_>>()
            }))
        }
        ("GET", ["v1", "jobs", id]) => match id.parse() {
            Ok(id) => json(mine(h.ask(|r| Event::Info(id, r)), caller)),
            Err(_) => (400, error_body(&format!("{id:?} is not a job id"))),
        },
        ("GET", ["v1", "jobs", id, "wait"]) => {
            let Ok(id) = id.parse::<u64>() else {
                return (400, error_body(&format!("{id:?} is not a job id")));
            };
            let timeout = req
                .param("timeout")
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(30)
                .min(3600);
            static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = mpsc::channel();
            if !h.send(Event::Wait(id, token, tx)) {
                return (503, error_body("the server is shutting down"));
            }
            match rx.recv_timeout(Duration::from_secs(timeout)) {
                Ok(r) => json(mine(r, caller)),
                Err(_) => {
                    // Withdraw the waiter, or a long wait would leave one per poll.
                    h.send(Event::Unwait(id, token));
                    json(mine(h.ask(|r| Event::Info(id, r)), caller))
                }
            }
        }
        ("POST", ["v1", "resolve"]) => {
            // Which of these ids name arrays: `{"arrays": {"12": [13, 14, ...]}}`.
            #[derive(serde::Deserialize)]
            struct Ids {
                ids: Vec<u64>,
            }
            match serde_json::from_slice::<Ids>(&req.body) {
                Ok(i) if i.ids.len() <= WAIT_MAX => json(
                    h.ask(|r| Event::Arrays(i.ids, r))
                        .map(|a| serde_json::json!({ "arrays": a })),
                ),
                Ok(i) => (
                    400,
                    error_body(&format!(
                        "resolve at most {WAIT_MAX} ids at a time, not {}",
                        i.ids.len()
                    )),
                ),
                Err(e) => (400, error_body(&format!("not valid JSON: {e}"))),
            }
        }
        ("POST", ["v1", "stop"]) => {
            // Many jobs in one request (an array's): each answered as alone.
            #[derive(serde::Deserialize)]
            struct Jobs {
                jobs: Vec<u64>,
            }
            let jobs = match serde_json::from_slice::<Jobs>(&req.body) {
                Ok(j) if j.jobs.len() <= STOP_MAX => j.jobs,
                Ok(j) => {
                    return (
                        400,
                        error_body(&format!(
                            "stop at most {STOP_MAX} jobs at a time, not {}",
                            j.jobs.len()
                        )),
                    )
                }
                Err(e) => return (400, error_body(&format!("not valid JSON: {e}"))),
            };
            let ids = jobs.clone();
            json(
                h.ask(|r| Event::StopMany(caller.clone(), ids, r))
                    .map(|answers| {
                        jobs.iter()
                            .zip(answers)
                            .map(|(id, a)| match a {
                                Ok(m) => serde_json::json!({ "job": id, "message": m }),
                                Err(e) => serde_json::json!({ "job": id, "error": e }),
                            })
                            .collect::<Vec<_>>()
                    }),
            )
        }
        ("POST", ["v1", "wait"]) => {
            #[derive(serde::Deserialize)]
            struct WaitFor {
                jobs: Vec<u64>,
                #[serde(default)]
                timeout: Option<u64>,
            }
            let w: WaitFor = match serde_json::from_slice(&req.body) {
                Ok(w) => w,
                Err(e) => return (400, error_body(&format!("the wait is not valid JSON: {e}"))),
            };
            if w.jobs.is_empty() || w.jobs.len() > WAIT_MAX {
                return (
                    400,
                    error_body(&format!(
                        "wait for 1 to {WAIT_MAX} jobs at a time, not {}",
                        w.jobs.len()
                    )),
                );
            }
            let timeout = w.timeout.unwrap_or(30).min(3600);
            static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = mpsc::channel();
            if !h.send(Event::WaitMany(w.jobs.clone(), token, tx)) {
                return (503, error_body("the server is shutting down"));
            }
            let mut got = Vec::new();
            if let Ok(first) = rx.recv_timeout(Duration::from_secs(timeout)) {
                got.push(first);
                while let Ok(more) = rx.try_recv() {
                    got.push(more);
                }
            }
            // Withdraw the waiter from the jobs not over, or each poll would leave one.
            let over: std::collections::HashSet<u64> = got
                .iter()
                .filter_map(|v| v.as_ref().ok().map(|v| v.id))
                .collect();
            let left: Vec<u64> = w.jobs.into_iter().filter(|id| !over.contains(id)).collect();
            if !left.is_empty() {
                h.send(Event::UnwaitMany(left, token));
            }
            json(
                got.into_iter()
                    .map(|v| v.and_then(|v| mine(Ok(v), caller)))
                    .collect::<Result<Vec<_>, _>>(),
            )
        }
        ("GET", ["v1", "jobs", id, "log"]) => {
            let Ok(id) = id.parse::<u64>() else {
                return (400, error_body(&format!("{id:?} is not a job id")));
            };
            let offset = req
                .param("offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::channel();
            if !h.send(Event::ReadLog(id, caller.clone(), offset, tx)) {
                return (503, error_body("the server is shutting down"));
            }
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(r) => json(r),
                Err(_) => (
                    504,
                    error_body(&format!(
                        "job {id}: its tasker did not send the log in time"
                    )),
                ),
            }
        }
        ("POST", ["v1", "jobs", id, "stop"]) => match id.parse() {
            Ok(id) => json(
                h.ask(|r| Event::Stop(caller.clone(), id, r))
                    .map(|m| serde_json::json!({ "message": m })),
            ),
            Err(_) => (400, error_body(&format!("{id:?} is not a job id"))),
        },
        ("POST", ["v1", "jobs", id, action @ ("hold" | "release")]) => match id.parse() {
            Ok(id) => {
                let hold = *action == "hold";
                json(
                    h.ask(|r| Event::Hold(caller.clone(), id, hold, r))
                        .map(|m| serde_json::json!({ "message": m })),
                )
            }
            Err(_) => (400, error_body(&format!("{id:?} is not a job id"))),
        },
        ("POST", ["v1", "jobs", id, "exec"]) => {
            #[derive(serde::Deserialize)]
            struct ExecBody {
                command: Vec<String>,
                terminal: berth_proto::Interactive,
                #[serde(default)]
                stdin: bool,
                #[serde(default)]
                tty: bool,
            }
            let Ok(id) = id.parse::<u64>() else {
                return (400, error_body(&format!("{id:?} is not a job id")));
            };
            let mut b: ExecBody = match serde_json::from_slice(&req.body) {
                Ok(b) => b,
                Err(e) => return (400, error_body(&format!("not valid JSON: {e}"))),
            };
            if let Err(e) = crate::policy::valid_terminal(&b.terminal) {
                return (400, error_body(&e));
            }
            // The terminal is on the host the request came from, whatever it says.
            b.terminal.host = client_host.to_string();
            let x = berth_proto::ExecRequest {
                req: 0,
                job: id,
                command: b.command,
                terminal: b.terminal,
                stdin: b.stdin,
                tty: b.tty,
            };
            json(
                h.ask(|r| Event::Exec(caller.clone(), x, r))
                    .map(|req| serde_json::json!({ "req": req })),
            )
        }
        ("GET", ["v1", "exec", req]) => match req.parse() {
            Ok(n) => json(
                h.ask(|r| Event::ExecResult(caller.clone(), n, r))
                    .map(|d| match d {
                        None => serde_json::json!({ "done": false }),
                        Some((code, error)) => {
                            serde_json::json!({ "done": true, "exit_code": code, "error": error })
                        }
                    }),
            ),
            Err(_) => (400, error_body(&format!("{req:?} is not an exec number"))),
        },
        ("POST", ["v1", "jobs", id, "rerun"]) => match id.parse() {
            Ok(id) => json(
                h.ask(|r| Event::Rerun(caller.clone(), id, r))
                    .map(|new| serde_json::json!({ "id": new })),
            ),
            Err(_) => (400, error_body(&format!("{id:?} is not a job id"))),
        },
        ("GET", ["v1", "taskers"]) => json(h.ask(Event::Taskers)),
        ("POST", ["v1", "down"]) => {
            if !caller.admin {
                return (
                    403,
                    error_body(&format!(
                        "{} may not stop the server: only an administrator may (root, the \
                         server's user, or one named by --admins)",
                        caller.user
                    )),
                );
            }
            berth_sys::say!(
                "berth server: {} asked it to stop (berth down)",
                caller.user
            );
            // The same clean stop as a SIGTERM: the process's signal thread takes it.
            berth_sys::terminate_self();
            json::<serde_json::Value>(Ok(serde_json::json!({
                "message": "the server stops: it starts nothing more, waits for what it started \
                            to be recorded, and exits; running jobs run on"
            })))
        }
        (_, ["v1", ..]) => (
            404,
            error_body(&format!("no route {} {}", req.method, req.path)),
        ),
        _ => (
            404,
            error_body(&format!(
                "no route {} {}; the API is under /v1",
                req.method, req.path
            )),
        ),
    }
}
