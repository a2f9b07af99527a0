//! `berth up`: the embedded default. A server and a tasker in one process, the state in
//! `SWD/berth.db`, the API on `SWD/berth.sock`.

use crate::{swd, wrapper};
use anyhow::{bail, Context, Result};
use berth_proto::ToTasker;
use berth_server::daemon::{Event, Handle, Server, TaskerLink};
use berth_tasker::agent::Agent;
use berth_tasker::{lifecycle, Host};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The options of `berth up`.
#[derive(clap::Args)]
pub struct Up {
    /// The server working directory (default: $BERTH_SWD, else ./berth.swd).
    #[arg(long, value_name = "DIR")]
    swd: Option<PathBuf>,
    /// Job slots of the embedded tasker (default: its cores).
    #[arg(long)]
    slots: Option<u32>,
    /// More resources for the embedded tasker, e.g. "License:spice/2 GPU#1".
    #[arg(short = 'r', value_name = "RES")]
    resources: Option<String>,
    /// The project name (VOV_PROJECT_NAME).
    #[arg(long, default_value = "berth")]
    project: String,
    /// The site key for keyed hook signatures.
    #[arg(long, value_name = "KEYFILE")]
    key: Option<PathBuf>,
    /// Install the example container configurations (docker, podman-split, bwrap) and
    /// their busybox image into the SWD first.
    #[arg(long)]
    examples: bool,
}

struct LocalLink(Arc<Agent>);

impl TaskerLink for LocalLink {
    fn send(&self, m: ToTasker) -> bool {
        self.0.handle(m);
        true
    }
}

const EXAMPLES: &[(&str, &str)] = &[
    (
        "docker.cfg",
        include_str!("../../../examples/containers/docker.cfg"),
    ),
    (
        "podman-split.cfg",
        include_str!("../../../examples/containers/podman-split.cfg"),
    ),
    (
        "bwrap.cfg",
        include_str!("../../../examples/containers/bwrap.cfg"),
    ),
    (
        "install.sh",
        include_str!("../../../examples/containers/install.sh"),
    ),
    (
        "make-image.sh",
        include_str!("../../../examples/containers/make-image.sh"),
    ),
    (
        "containers.conf",
        include_str!("../../../examples/containers/containers.conf"),
    ),
    (
        "hooks/docker-enter.sh",
        include_str!("../../../examples/containers/hooks/docker-enter.sh"),
    ),
    (
        "hooks/podman-setup.sh",
        include_str!("../../../examples/containers/hooks/podman-setup.sh"),
    ),
    (
        "hooks/podman-enter.sh",
        include_str!("../../../examples/containers/hooks/podman-enter.sh"),
    ),
    (
        "hooks/podman-cleanup.sh",
        include_str!("../../../examples/containers/hooks/podman-cleanup.sh"),
    ),
    (
        "hooks/podman-teardown.sh",
        include_str!("../../../examples/containers/hooks/podman-teardown.sh"),
    ),
    (
        "hooks/bwrap-setup.sh",
        include_str!("../../../examples/containers/hooks/bwrap-setup.sh"),
    ),
    (
        "hooks/bwrap-enter.sh",
        include_str!("../../../examples/containers/hooks/bwrap-enter.sh"),
    ),
];

/// Installs the examples with the very scripts of examples/containers, carried in the
/// binary: hooks in SWD/hooks, image tree in SWD/rootfs, podman settings in
/// SWD/containers.conf.
fn install_examples(swd: &Path) -> Result<()> {
    let src = tempfile_dir()?;
    for (name, text) in EXAMPLES {
        let p = src.join(name);
        std::fs::create_dir_all(p.parent().unwrap_or(&src))?;
        std::fs::write(&p, text)?;
    }
    let conf = swd.join("containers.conf");
    std::fs::write(
        &conf,
        EXAMPLES
            .iter()
            .find(|(n, _)| *n == "containers.conf")
            .map(|(_, t)| *t)
            .unwrap_or(""),
    )?;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644))?;
    let rootfs = swd.join("rootfs");
    eprintln!("berth up: making the image localhost/berth-test:latest from local files");
    let st = std::process::Command::new("sh")
        .arg(src.join("make-image.sh"))
        .arg(&rootfs)
        .env("CONTAINERS_CONF", &conf)
        .status()
        .context("running make-image.sh")?;
    if !st.success() {
        bail!("making the example image failed; it needs podman and busybox-static (apt-get install podman runc busybox-static)");
    }
    let engine = if which("podman") { "podman" } else { "docker" };
    let me = std::env::current_exe().context("finding the berth binary")?;
    eprintln!(
        "berth up: installing the example configurations into {}",
        swd::containers(swd).display()
    );
    let st = std::process::Command::new("sh")
        .arg(src.join("install.sh"))
        .arg("--swd")
        .arg(swd)
        .arg("--hooks")
        .arg(swd.join("hooks"))
        .arg("--berth")
        .arg(&me)
        .args(["--engine", engine, "--image", "localhost/berth-test:latest"])
        .arg("--containers-conf")
        .arg(&conf)
        .arg("--rootfs")
        .arg(&rootfs)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running install.sh")?;
    let _ = std::fs::remove_dir_all(&src);
    if !st.success() {
        bail!("installing the example configurations failed");
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("berth-examples.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    Ok(d)
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Runs the embedded default until SIGINT or SIGTERM.
pub fn up(o: Up) -> Result<i32> {
    // Blocked before any thread exists: every thread inherits the mask.
    let signals = berth_sys::block_signals(&berth_sys::STOP_SIGNALS);
    let swd = std::path::absolute(swd::resolve(o.swd.as_deref()))?;
    std::fs::create_dir_all(swd::containers(&swd))
        .with_context(|| format!("creating {}", swd.display()))?;
    std::fs::set_permissions(&swd, std::fs::Permissions::from_mode(0o755))?;
    let sock = swd.join("berth.sock");
    if UnixStream::connect(&sock).is_ok() {
        bail!(
            "a berth server already runs on {} (its socket {} answers)",
            swd.display(),
            sock.display()
        );
    }
    let _ = std::fs::remove_file(&sock);
    if o.examples {
        install_examples(&swd)?;
    }
    let key = o
        .key
        .as_deref()
        .map(berth_container::Key::load)
        .transpose()?;
    let store = berth_store::Store::open(&swd.join("berth.db"))?;
    let (server, handle) = Server::open(store)?;
    let actor = std::thread::spawn(move || server.run());

    let listener =
        UnixListener::bind(&sock).with_context(|| format!("listening on {}", sock.display()))?;
    // Anyone on the host may connect; the kernel tells the server who they are.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    let admins = vec![berth_sys::euid()];
    {
        let handle = handle.clone();
        std::thread::spawn(move || berth_server::api::serve(listener, handle, admins));
    }

    let name = berth_sys::short_hostname();
    let host = Host {
        host: name.clone(),
        project: o.project.clone(),
        wrapper: wrapper::install(&swd)?,
        state_dir: swd.join("tasker").join(&name),
        key,
    };
    let recovered = lifecycle::recover(&host, &mut |line| eprintln!("berth up: {line}"));
    if !recovered.is_empty() {
        eprintln!("berth up: finished the cleanup and teardown of {} container job(s) left by an earlier run", recovered.len());
    }
    let slots = o.slots.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let report_handle = handle.clone();
    let tasker_name = name.clone();
    let agent = Agent::new(
        &name,
        host,
        swd::containers(&swd),
        slots,
        o.resources.clone().unwrap_or_default(),
        Box::new(move |m| {
            report_handle.send(Event::Tasker(tasker_name.clone(), m));
        }),
    );
    if let Some(extra) = &o.resources {
        berth_resources::Offer::parse(extra).context("-r")?;
    }
    handle.send(Event::Connect(
        name.clone(),
        Box::new(LocalLink(agent.clone())),
    ));
    let hello = agent.hello();
    if let berth_proto::FromTasker::Hello {
        resources,
        containers_refused,
        ..
    } = &hello
    {
        eprintln!("berth up: tasker {name} with {slots} slots offers {resources}");
        for (c, why) in containers_refused {
            eprintln!("berth up: not offering Container:{c}: {why}");
        }
    }
    handle.send(Event::Tasker(name.clone(), hello));
    eprintln!(
        "berth up: serving {} (SWD {}); stop with Ctrl-C",
        sock.display(),
        swd.display()
    );

    let sig = signals.wait();
    eprintln!("berth up: {}: stopping", lifecycle::signal_name(sig));
    shutdown(&agent, &handle);
    let _ = std::fs::remove_file(&sock);
    handle.send(Event::Shutdown);
    let _ = actor.join();
    Ok(0)
}

fn shutdown(agent: &Arc<Agent>, _handle: &Handle) {
    let n = agent.stop_all();
    if n > 0 {
        eprintln!("berth up: stopping {n} running job(s); their cleanup and teardown run first");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.running() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give the last reports a moment to be recorded.
    std::thread::sleep(Duration::from_millis(100));
}
