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
use crate::http::{read_request, write_response, Request};
use crate::policy::Policy;
use berth_proto::{ApiError, State, SubmitRequest};
use berth_store::Filter;
use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Serves the API until the listener fails, under `policy` (who is an administrator, what
/// a submission may ask).
pub fn serve(listener: UnixListener, handle: Handle, policy: Policy) {
    let policy = Arc::new(policy);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let handle = handle.clone();
        let policy = policy.clone();
        std::thread::spawn(move || connection(conn, handle, &policy));
    }
}

fn connection(conn: UnixStream, handle: Handle, policy: &Policy) {
    let Ok(cred) = berth_sys::peer_cred(&conn) else {
        return;
    };
    let user = berth_sys::identity_by_uid(cred.uid)
        .map(|i| i.name)
        .unwrap_or_else(|_| cred.uid.to_string());
    let caller = Caller {
        uid: cred.uid,
        gid: cred.gid,
        user,
        admin: policy.is_admin(cred.uid),
    };
    let Ok(write) = conn.try_clone() else { return };
    let mut write = write;
    let mut read = BufReader::new(conn);
    loop {
        let req = match read_request(&mut read) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = write_response(&mut write, 400, &error_body(&format!("bad request: {e}")));
                return;
            }
        };
        let (status, body) = route(&req, &caller, &handle, policy);
        if write_response(&mut write, status, &body).is_err() || req.close {
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
            let status = if e.starts_with("no job") {
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

fn route(req: &Request, caller: &Caller, h: &Handle, policy: &Policy) -> (u16, Vec<u8>) {
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("POST", ["v1", "jobs"]) => match serde_json::from_slice::<SubmitRequest>(&req.body) {
            Ok(s) => match policy.check(&s, caller.uid) {
                Ok(()) => json(h.ask(|r| Event::Submit(caller.clone(), s, r))),
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
            f.limit = req.param("limit").and_then(|l| l.parse().ok());
            json(h.ask(|r| Event::List(f, r)))
        }
        ("GET", ["v1", "jobs", id]) => match id.parse() {
            Ok(id) => json(h.ask(|r| Event::Info(id, r))),
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
                Ok(r) => json(r),
                Err(_) => {
                    // Withdraw the waiter, or a long wait would leave one per poll.
                    h.send(Event::Unwait(id, token));
                    json(h.ask(|r| Event::Info(id, r)))
                }
            }
        }
        ("POST", ["v1", "jobs", id, "stop"]) => match id.parse() {
            Ok(id) => json(
                h.ask(|r| Event::Stop(caller.clone(), id, r))
                    .map(|m| serde_json::json!({ "message": m })),
            ),
            Err(_) => (400, error_body(&format!("{id:?} is not a job id"))),
        },
        ("GET", ["v1", "taskers"]) => json(h.ask(Event::Taskers)),
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
