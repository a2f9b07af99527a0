//! Users of other hosts: `berth ... --server HOST:PORT` over the secure channel with the
//! server's key, each user proven by a MUNGE credential bound to the channel. Real munged
//! daemons of the test's own (one with the farm's key, one with another), real users.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A munged with `key`, stopped when dropped.
struct Munged {
    child: Child,
    sock: PathBuf,
}

impl Munged {
    fn start(dir: &Path, key: u8) -> Munged {
        let (child, sock) = start_munged(dir, key);
        Munged { child, sock }
    }
}

impl Drop for Munged {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The server with a tasker, taking remote users at `clients.addr`.
struct Server {
    children: Vec<Child>,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        for c in &mut self.children {
            signal(c, libc::SIGTERM);
            let _ = c.wait();
        }
    }
}

fn start(fx: &Fixture, munge: &Munged) -> Server {
    let q = |args: &[&str]| {
        Command::new(berth())
            .args(args)
            .env("BERTH_SWD", &fx.swd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let server = q(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--clients",
        "127.0.0.1:0",
        "--munge-socket",
        munge.sock.to_str().unwrap(),
    ]);
    wait_until("the server", T, || {
        fx.swd.join("clients.addr").exists() && fx.swd.join("listen.addr").exists()
    });
    let tasker = q(&["tasker", "--name", "t1", "--slots", "2", "--stop-jobs"]);
    wait_for_tasker(&fx.swd, "t1");
    let addr = std::fs::read_to_string(fx.swd.join("clients.addr"))
        .unwrap()
        .trim()
        .to_string();
    Server {
        children: vec![server, tasker],
        addr,
    }
}

/// `berth ARGS --server ADDR` as `uid`, as on another host: no SWD, the server's public
/// key and the host's munged.
fn remote(
    fx: &Fixture,
    uid: u32,
    server: &Server,
    munge_sock: &Path,
    args: &[&str],
) -> std::process::Output {
    let mut c = Command::new(berth());
    c.arg(args[0])
        .args(["--server", &server.addr])
        .arg("--server-key")
        .arg(fx.swd.join("server.pub"))
        .args(&args[1..])
        .current_dir(&fx.work)
        .env_remove("BERTH_SWD")
        .env("BERTH_MUNGE_SOCKET", munge_sock)
        .env("HOME", "/nonexistent")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null());
    output_within(&mut c, T)
}

#[test]
#[ignore = "needs root and munge: .ci/run runs it with --include-ignored"]
fn a_user_of_another_host_submits_waits_lists_and_stops() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let munge = Munged::start(&fx.root.join("munge"), 7);
    let server = start(&fx, &munge);
    // Submit and wait: the job runs as the user MUNGE proved.
    let out = remote(
        &fx,
        NOBODY,
        &server,
        &munge.sock,
        &["run", "-w", "--", "sh", "-c", "echo I am $(id -u)"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fx.read_work("berth-1.log"), format!("I am {NOBODY}\n"));
    // The log, read by the job's tasker (the client's host need not share the files),
    // and followed while a job writes it.
    let out = remote(&fx, NOBODY, &server, &munge.sock, &["getlog", "1"]);
    assert_eq!(stdout(&out), format!("I am {NOBODY}\n"), "{}", text(&out));
    let out = remote(
        &fx,
        NOBODY,
        &server,
        &munge.sock,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3; do echo line $i; sleep 0.3; done",
        ],
    );
    let follow_id = stdout(&out).trim().to_string();
    let out = remote(
        &fx,
        NOBODY,
        &server,
        &munge.sock,
        &["getlog", "-f", &follow_id],
    );
    assert_eq!(stdout(&out), "line 1\nline 2\nline 3\n", "{}", text(&out));
    let out = remote(&fx, test_user(), &server, &munge.sock, &["getlog", "1"]);
    assert!(
        stderr(&out).contains("only an administrator may see another user's job"),
        "{}",
        text(&out)
    );
    // A log in the kernel's files (the tasker's own /proc/self) is refused, written or read.
    let out = remote(
        &fx,
        NOBODY,
        &server,
        &munge.sock,
        &["run", "-w", "-l", "/proc/self/maps", "--", "true"],
    );
    assert!(!out.status.success());
    let proc_job = "3";
    let out = remote(&fx, NOBODY, &server, &munge.sock, &["getlog", proc_job]);
    assert!(
        !stdout(&out).contains("r-xp") && stderr(&out).contains("a file of the kernel's"),
        "{}",
        text(&out)
    );
    let out = remote(&fx, NOBODY, &server, &munge.sock, &["info", "--json", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["user"].as_str(), v["state"].as_str()),
        (Some("nobody"), Some("Done"))
    );
    // Stop one of one's own; another user may not see it.
    let out = remote(
        &fx,
        NOBODY,
        &server,
        &munge.sock,
        &["run", "--", "sleep", "300"],
    );
    let id = stdout(&out).trim().to_string();
    let out = remote(&fx, test_user(), &server, &munge.sock, &["info", &id]);
    assert!(
        stderr(&out).contains("only an administrator may see another user's job"),
        "{}",
        text(&out)
    );
    let out = remote(&fx, test_user(), &server, &munge.sock, &["stop", &id]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = remote(&fx, NOBODY, &server, &munge.sock, &["stop", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = remote(&fx, NOBODY, &server, &munge.sock, &["wait", &id]);
    assert!(
        stderr(&out).contains("Failed (stopped by request)"),
        "{}",
        text(&out)
    );
    let out = remote(&fx, NOBODY, &server, &munge.sock, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4);
}

#[test]
#[ignore = "needs root and munge: .ci/run runs it with --include-ignored"]
fn no_user_of_another_host_passes_for_someone_else() {
    need_root!();
    let fx = Fixture::new();
    chmod(&fx.work, 0o1777);
    let munge = Munged::start(&fx.root.join("munge"), 7);
    let foreign = Munged::start(&fx.root.join("foreign"), 9);
    let server = start(&fx, &munge);
    // No MUNGE on the client's host: refused, saying how to set it up.
    let out = remote(
        &fx,
        NOBODY,
        &server,
        Path::new("/nonexistent/munge.sock"),
        &["list"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("remote use needs MUNGE"),
        "{}",
        text(&out)
    );
    // A credential of another key (another farm's munged): refused.
    let out = remote(&fx, NOBODY, &server, &foreign.sock, &["list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the credential does not hold"),
        "{}",
        text(&out)
    );
    // A credential made for one connection, replayed on another: refused.
    let key = hex::decode(
        std::fs::read_to_string(fx.swd.join("server.pub"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let m = berth_sys::munge::load().unwrap();
    let open = || {
        berth_channel::open_keyed(
            std::net::TcpStream::connect(&server.addr).unwrap(),
            berth_channel::Keying::ServerPublic(&key),
            "client",
            true,
        )
        .unwrap()
    };
    let first = open();
    let cred = m.encode(Some(&munge.sock), &first.hash).unwrap();
    let mut second = open();
    second
        .tx
        .send(serde_json::json!({ "munge": cred }).to_string().as_bytes())
        .unwrap();
    let answer = String::from_utf8(second.rx.recv().unwrap()).unwrap();
    assert!(
        answer.contains("the credential was made for another connection")
            || answer.contains("Replayed"),
        "{answer}"
    );
    // A client that does not know the server's key gets nowhere.
    let (_, other) = berth_channel::generate_keypair();
    let wrong = fx.root.join("wrong.pub");
    std::fs::write(&wrong, hex::encode(other)).unwrap();
    let mut c = Command::new(berth());
    c.args(["list", "--server", &server.addr, "--server-key"])
        .arg(&wrong)
        .env("BERTH_MUNGE_SOCKET", &munge.sock)
        .uid(NOBODY)
        .gid(NOBODY);
    let out = output_within(&mut c, T);
    assert!(!out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(10));
}
