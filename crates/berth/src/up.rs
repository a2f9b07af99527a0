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

/// What a tasker is made of, for `berth up` and `berth tasker`.
#[derive(clap::Args)]
pub struct AgentOpts {
    /// The server working directory (default: $BERTH_SWD, else ./berth.swd).
    #[arg(long, value_name = "DIR")]
    pub swd: Option<PathBuf>,
    /// Job slots (default: the cores).
    #[arg(long)]
    pub slots: Option<u32>,
    /// More resources, e.g. "License:spice/2 GPU#1".
    #[arg(short = 'r', value_name = "RES")]
    pub resources: Option<String>,
    /// The project name (VOV_PROJECT_NAME).
    #[arg(long, default_value = "berth")]
    pub project: String,
    /// The site key for keyed hook signatures.
    #[arg(long, value_name = "KEYFILE")]
    pub key: Option<PathBuf>,
    /// The tasker's name (default: the host's short name).
    #[arg(long)]
    pub name: Option<String>,
    /// The tasker's local state: container job records (default: SWD/tasker/NAME).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Which configurations to offer as Container:NAME: `auto` (every one that passes
    /// `berth container check` here), `none`, or a comma-separated list of names.
    #[arg(long, value_name = "auto|none|NAMES", default_value = "auto")]
    pub containers: String,
    /// Between SIGTERM and SIGKILL when a job without a container is stopped (container
    /// jobs take their configuration's containerKillGrace).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub kill_grace: u64,
    /// Which cgroup hierarchy tracks the jobs: auto, v2, v1 (pids) or none; for tests.
    #[arg(
        long,
        value_name = "auto|v2|v1|none",
        default_value = "auto",
        hide = true
    )]
    pub cgroups: berth_tasker::cgroup::Mode,
    /// On SIGTERM or SIGINT, stop the running jobs too (their cleanup and teardown run).
    /// Without it they go on running, and the next start of this tasker takes them over.
    #[arg(long)]
    pub stop_jobs: bool,
    /// For measuring what the keeper costs only: run jobs without a container as this
    /// process's children, so that they end with it.
    #[arg(long, hide = true)]
    pub no_keeper: bool,
}

/// The options of `berth up`.
#[derive(clap::Args)]
pub struct Up {
    #[command(flatten)]
    agent: AgentOpts,
    /// Install the example container configurations (docker, podman-split, bwrap) and
    /// their busybox image into the SWD first.
    #[arg(long)]
    examples: bool,
    /// Also accept taskers over TCP at ADDR (e.g. 0.0.0.0:7600; port 0 picks one, written
    /// to SWD/listen.addr); they join with SWD/cluster.secret.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// For measuring what durability costs only: do not fsync the store's commits, so
    /// that a crash of the host may lose the last of them.
    #[arg(long, hide = true)]
    no_fsync: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Users on other hosts.
#[derive(clap::Args, Clone)]
pub struct RemoteArgs {
    /// Accept users of other hosts at ADDR (e.g. 0.0.0.0:7601), over the secure channel
    /// with the server's key (SWD/server.pub, to copy to their hosts), each proven by a
    /// MUNGE credential.
    #[arg(long, value_name = "ADDR")]
    clients: Option<String>,
    /// The munged socket that checks their credentials (default: libmunge's own).
    #[arg(long, value_name = "SOCKET")]
    munge_socket: Option<PathBuf>,
}

/// Who may do what, and the limits that keep one user from stalling the others.
#[derive(clap::Args, Clone)]
pub struct PolicyArgs {
    /// Administrators besides root and the server's own user: login names or uids,
    /// comma-separated. They may stop others' jobs and set a priority above 0.
    #[arg(long, value_name = "USERS", value_delimiter = ',')]
    admins: Vec<String>,
    /// The most jobs one submission may make (an array, or the lines of -f).
    #[arg(long, value_name = "N", default_value_t = berth_server::policy::DEFAULT_MAX_JOBS_PER_SUBMISSION)]
    max_jobs_per_submission: u64,
    /// The most unfinished (queued or running) jobs one user may have.
    #[arg(long, value_name = "N", default_value_t = berth_server::policy::DEFAULT_MAX_UNFINISHED_PER_USER)]
    max_unfinished_per_user: u64,
    /// The time limit of a job submitted without --time (90, 10m, 2h30m, 1d; default:
    /// none).
    #[arg(long, value_name = "DURATION", value_parser = crate::show::parse_duration)]
    time_default: Option<u64>,
    /// The longest --time a job may ask for; a longer one is refused at submission.
    #[arg(long, value_name = "DURATION", value_parser = crate::show::parse_duration)]
    time_max: Option<u64>,
    /// How long ended jobs stay in the store (`berth list`, `info`), as 30d, 12h;
    /// `forever` keeps them all. Their log files are the users' and always stay.
    #[arg(long, value_name = "DURATION|forever", default_value = "30d", value_parser = parse_keep)]
    pub keep: Keep,
}

/// `--keep`: a duration, or for ever.
#[derive(Clone, Copy, Debug)]
pub struct Keep(pub Option<std::time::Duration>);

fn parse_keep(s: &str) -> Result<Keep> {
    if s == "forever" {
        return Ok(Keep(None));
    }
    crate::show::parse_duration(s)
        .map(|ms| Keep(Some(std::time::Duration::from_millis(ms))))
        .map_err(|e| anyhow::anyhow!("{e}, or forever"))
}

impl PolicyArgs {
    fn policy(&self, swd: &Path) -> Result<berth_server::policy::Policy> {
        if let (Some(d), Some(m)) = (self.time_default, self.time_max) {
            if d > m {
                anyhow::bail!(
                    "--time-default {} is above --time-max {}: give a default within the maximum",
                    berth_server::daemon::limit_text(d),
                    berth_server::daemon::limit_text(m)
                );
            }
        }
        let mut admins = vec![berth_sys::euid()];
        for a in &self.admins {
            let uid = match a.parse::<u32>() {
                Ok(uid) => uid,
                Err(_) => {
                    berth_sys::identity_by_name(a)
                        .with_context(|| format!("--admins: {a}"))?
                        .uid
                }
            };
            admins.push(uid);
        }
        Ok(berth_server::policy::Policy {
            admins,
            containers: Some(swd::containers(swd)),
            max_jobs_per_submission: self.max_jobs_per_submission,
            max_unfinished_per_user: self.max_unfinished_per_user,
            time_default_ms: self.time_default,
            time_max_ms: self.time_max,
        })
    }
}

/// The options of `berth server`.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// The server working directory (default: $BERTH_SWD, else ./berth.swd).
    #[arg(long, value_name = "DIR")]
    swd: Option<PathBuf>,
    /// Accept taskers over TCP at ADDR (port 0 picks one, written to SWD/listen.addr).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// How long a tasker may be away before its running jobs are Failed as lost.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    tasker_grace: u64,
    /// For measuring what durability costs only: do not fsync the store's commits, so
    /// that a crash of the host may lose the last of them.
    #[arg(long, hide = true)]
    no_fsync: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    remote: RemoteArgs,
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
    (
        "hooks/docker-exec.sh",
        include_str!("../../../examples/containers/hooks/docker-exec.sh"),
    ),
    (
        "hooks/podman-exec.sh",
        include_str!("../../../examples/containers/hooks/podman-exec.sh"),
    ),
    (
        "hooks/bwrap-exec.sh",
        include_str!("../../../examples/containers/hooks/bwrap-exec.sh"),
    ),
];

/// Installs the examples with the very scripts of examples/containers, carried in the
/// binary: hooks in SWD/hooks, image tree in SWD/rootfs, podman settings in
/// SWD/containers.conf.
fn install_examples(swd: &Path) -> Result<()> {
    let src = scripts_dir(swd)?;
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
    berth_sys::say!("berth up: making the image localhost/berth-test:latest from local files");
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
    berth_sys::say!(
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

/// A new directory for the example scripts, which run as root: under the SWD (root's,
/// checked by `start_server`'s caller), made here and now with mode 0700, never one that
/// already existed. A predictable name in $TMPDIR would let any user plant the scripts.
fn scripts_dir(swd: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let d = swd.join(".examples.tmp");
    // Left by an earlier run that was killed; the SWD is root's, so only root made it.
    match std::fs::remove_dir_all(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("removing {}: {e}", d.display()),
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&d)
        .with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// A running server: its handle, its actor thread, its socket.
pub struct Running {
    handle: Handle,
    actor: std::thread::JoinHandle<()>,
    sock: PathBuf,
}

/// Makes the SWD if need be, and refuses one that another user could change: the server
/// keeps its database there, and the tasker its records and the wrapper it runs as root.
pub(crate) fn own_swd(swd: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(swd).with_context(|| format!("creating {}", swd.display()))?;
    let me = berth_sys::euid();
    let meta = std::fs::metadata(swd).with_context(|| format!("reading {}", swd.display()))?;
    if meta.uid() != me {
        bail!(
            "the SWD {} is owned by uid {}, not by this server's uid {me}; whoever owns it \
             controls what the server and taskers run; choose another --swd, or run: chown {me} {}",
            swd.display(),
            meta.uid(),
            swd.display()
        );
    }
    std::fs::set_permissions(swd, std::fs::Permissions::from_mode(0o755))?;
    std::fs::create_dir_all(swd::containers(swd))
        .with_context(|| format!("creating {}", swd::containers(swd).display()))?;
    if me == 0 {
        if let Some(parent) = swd.parent() {
            berth_container::check::safe_dirs(parent).map_err(|d| {
                anyhow::anyhow!(
                    "the SWD {}: {}",
                    swd.display(),
                    d.replace("above it", "above the SWD")
                        .replace("root hooks must live", "the SWD must live")
                )
            })?;
        }
    }
    Ok(())
}

/// A tasker's local state directory, absolute, made if need be, and checked as the SWD is:
/// its owner's, writable by it alone (mode 0711: a user hook goes through it to the job's
/// environment file it is given), under directories only root can change. Root keeps its
/// jobs' records, the keeper's socket and the plain-jobs record there: a user who could
/// write it could plant a keeper of their own, or links for root to follow.
fn own_state(state: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let state = std::path::absolute(state)?;
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let me = berth_sys::euid();
    let meta = std::fs::symlink_metadata(&state)
        .with_context(|| format!("reading {}", state.display()))?;
    if !meta.is_dir() || meta.uid() != me {
        bail!(
            "the tasker's state directory {} is not a directory owned by this tasker's uid {me}; \
             whoever owns it controls what the tasker runs; choose another --state",
            state.display()
        );
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o711))?;
    if me == 0 {
        if let Some(parent) = state.parent() {
            berth_container::check::safe_dirs(parent).map_err(|d| {
                anyhow::anyhow!(
                    "the tasker's state directory {}: {}",
                    state.display(),
                    d.replace("above it", "above the state directory")
                        .replace("root hooks must live", "the state directory must live")
                )
            })?;
        }
    }
    Ok(state)
}

/// Opens the store, starts the actor and the API on SWD/berth.sock, and, with `listen`,
/// the TCP listener for taskers.
fn start_server(
    swd: &Path,
    listen: Option<&str>,
    grace: Duration,
    no_fsync: bool,
    policy: &PolicyArgs,
    remote: &RemoteArgs,
) -> Result<Running> {
    let keep = policy.keep;
    let policy = policy.policy(swd)?;
    if let Err(e) = berth_sys::raise_open_files() {
        berth_sys::say!("berth: warning: cannot raise the limit of open files: {e}");
    }
    std::fs::create_dir_all(swd::containers(swd))
        .with_context(|| format!("creating {}", swd.display()))?;
    std::fs::set_permissions(swd, std::fs::Permissions::from_mode(0o755))?;
    let sock = swd.join("berth.sock");
    if UnixStream::connect(&sock).is_ok() {
        bail!(
            "a berth server already runs on {} (its socket {} answers)",
            swd.display(),
            sock.display()
        );
    }
    let _ = std::fs::remove_file(&sock);
    let mut store = berth_store::Store::open(&swd.join("berth.db"))?;
    if no_fsync {
        store.without_fsync()?;
        berth_sys::say!(
            "berth: warning: --no-fsync: a crash of this host may lose the last commits"
        );
    }
    let (mut server, handle) = Server::open(store)?;
    server.tasker_grace = grace;
    server.max_unfinished_per_user = policy.max_unfinished_per_user;
    server.time_default_ms = policy.time_default_ms;
    server.time_max_ms = policy.time_max_ms;
    server.keep = keep.0;
    let actor = std::thread::Builder::new()
        .name("berth-actor".into())
        .spawn(move || server.run())
        .context("no thread for the server")?;
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("listening on {}", sock.display()))?;
    // Anyone on the host may connect; the kernel tells the server who they are.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    let remote_policy = policy.clone();
    {
        let handle = handle.clone();
        std::thread::spawn(move || berth_server::api::serve(listener, handle, policy));
    }
    if let Some(addr) = &remote.clients {
        let private = berth_server::tcp::server_key(swd).context("the server's key")?;
        let l = std::net::TcpListener::bind(addr)
            .with_context(|| format!("listening for remote users on {addr}"))?;
        let bound = l.local_addr()?.to_string();
        std::fs::write(swd.join("clients.addr"), format!("{bound}\n"))?;
        if let Err(e) = berth_sys::munge::load() {
            berth_sys::say!("berth: warning: {e}; remote users are refused until it is");
        }
        berth_sys::say!(
            "berth: users of other hosts reach this server at {bound} with {}",
            swd.join("server.pub").display()
        );
        let (handle, policy) = (handle.clone(), remote_policy.clone());
        let r = berth_server::api::Remote {
            private,
            munge_socket: remote.munge_socket.clone(),
        };
        std::thread::spawn(move || berth_server::api::serve_remote(l, handle, policy, r));
    }
    if let Some(addr) = listen {
        let secret = berth_server::tcp::cluster_secret(swd).context("the cluster secret")?;
        let l = std::net::TcpListener::bind(addr)
            .with_context(|| format!("listening for taskers on {addr}"))?;
        let bound = l.local_addr()?.to_string();
        std::fs::write(swd.join("listen.addr"), format!("{bound}\n"))?;
        berth_sys::say!(
            "berth: taskers join at {bound} with {}",
            swd.join("cluster.secret").display()
        );
        let handle = handle.clone();
        std::thread::spawn(move || berth_server::tcp::serve_taskers(l, handle, secret));
    }
    Ok(Running {
        handle,
        actor,
        sock,
    })
}

impl Running {
    fn stop(self) {
        let _ = std::fs::remove_file(&self.sock);
        self.handle.send(Event::Shutdown);
        let _ = self.actor.join();
    }
}

/// A tasker's agent: installs the wrapper, finishes what earlier runs left, and says what
/// it offers.
pub fn make_agent(
    swd: &Path,
    o: &AgentOpts,
    report: berth_tasker::agent::Report,
) -> Result<Arc<Agent>> {
    if let Some(extra) = &o.resources {
        berth_resources::Offer::parse(extra).context("-r")?;
    }
    let name = o.name.clone().unwrap_or_else(berth_sys::short_hostname);
    let key = o
        .key
        .as_deref()
        .map(berth_container::Key::load)
        .transpose()?;
    let host = Host {
        host: berth_sys::short_hostname(),
        project: o.project.clone(),
        wrapper: wrapper::install(swd)?,
        state_dir: own_state(
            &o.state
                .clone()
                .unwrap_or_else(|| swd.join("tasker").join(&name)),
        )?,
        key,
    };
    let (recovered, adopted) = lifecycle::recover_or_adopt(&host, true, &mut |line| {
        berth_sys::say!("berth tasker {name}: {line}")
    });
    if !recovered.is_empty() {
        berth_sys::say!("berth tasker {name}: finished the cleanup and teardown of {} container job(s) left by an earlier run", recovered.len());
    }
    let definitions = swd.join(berth_tasker::definitions::FILE);
    let definition = berth_tasker::definitions::read(&definitions, &name).map_err(|errors| {
        anyhow::anyhow!(
            "{}\n(fix SWD/taskers.tcl, or move it away, and start the tasker again)",
            errors.join("\n")
        )
    })?;
    let slots = o
        .slots
        .or(definition.as_ref().and_then(|d| d.slots))
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        });
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let cores_given = [
        o.resources.as_deref(),
        definition.as_ref().map(|d| d.resources.as_str()),
    ]
    .into_iter()
    .flatten()
    .filter_map(|r| berth_resources::Offer::parse(r).ok())
    .any(|r| r.get("CORES").is_some());
    if slots > cores && !cores_given {
        berth_sys::say!(
            "berth tasker {name}: note: {slots} slots but CORES/{cores}: jobs that ask for \
             CORES/1 (the default) run {cores} at a time; add -r CORES/{slots} to run {slots}"
        );
    }
    let agent = Agent::new(
        &name,
        host,
        swd::containers(swd),
        slots,
        o.resources.clone().unwrap_or_default(),
        Duration::from_secs(o.kill_grace),
        report,
        o.cgroups,
    );
    // The jobs without a container an earlier process left running, kept by the keeper.
    let keeper = if o.no_keeper {
        Err(std::io::Error::other("--no-keeper"))
    } else {
        berth_tasker::keeper::Keeper::open(&agent.host.state_dir, &|| {
            start_keeper(&agent.host.state_dir)
        })
    };
    // Another live process of this tasker has it: two would end each other's jobs.
    if let Err(e) = &keeper {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            bail!("{e}");
        }
    }
    // First the leftovers of a run whose keeper is gone (the jobs the keeper still keeps
    // are not): the plain-jobs record is then rewritten, with the jobs taken over in it.
    let kept_ids: Vec<u64> = match &keeper {
        Ok((_, kept)) => kept.iter().map(|k| k.job).collect(),
        Err(_) => Vec::new(),
    };
    agent.end_leftovers(&kept_ids, &mut |line| {
        berth_sys::say!("berth tasker {name}: {line}")
    });
    match keeper {
        Ok((mut keeper, kept)) => {
            let state = agent.host.state_dir.clone();
            keeper.restart_with(Box::new(move || start_keeper(&state)));
            let n = kept.len();
            agent
                .use_keeper(keeper, kept)
                .context("taking over the jobs the keeper kept")?;
            if n > 0 {
                berth_sys::say!(
                    "berth tasker {name}: took over {n} job(s) without a container left by an earlier run"
                );
            }
        }
        Err(e) => berth_sys::say!(
            "berth tasker {name}: warning: {e}; jobs without a container end if this process stops"
        ),
    }
    for a in adopted {
        agent
            .adopt(a)
            .context("taking over a container job left running")?;
    }
    agent.watch();
    agent.set_containers(match o.containers.as_str() {
        "auto" => None,
        "none" => Some(Vec::new()),
        list => Some(
            list.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
    });
    if let berth_proto::FromTasker::Hello {
        resources,
        containers_refused,
        ..
    } = agent.hello()
    {
        berth_sys::say!("berth tasker {name}: {slots} slots, offers {resources}");
        match &agent.cgroups {
            Ok(cg) => berth_sys::say!("berth tasker {name}: each job in a cgroup of its own under {}", cg.describe()),
            Err(why) => berth_sys::say!(
                "berth tasker {name}: warning: no cgroup for jobs ({why}); a process that leaves a job's session outlives the job"
            ),
        }
        for (c, why) in containers_refused {
            berth_sys::say!("berth tasker {name}: not offering Container:{c}: {why}");
        }
    }
    Ok(agent)
}

/// Starts `berth keeper` for a tasker's state directory, in a session of its own, so that
/// it outlives this process; its messages go to STATE/keeper.log.
fn start_keeper(state: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state)?;
    let exe = std::env::current_exe()?;
    let log = std::fs::File::options()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(state.join("keeper.log"))?;
    let args = [
        std::ffi::OsString::from("keeper"),
        "--state".into(),
        state.as_os_str().to_owned(),
    ];
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = Vec::new();
    let mut child = berth_sys::spawn::spawn(&berth_sys::spawn::Spawn {
        program: exe.as_os_str(),
        args: &args,
        env: &env,
        who: None,
        dir: Path::new("/"),
        stdin: berth_sys::spawn::Stdio::Null,
        stdout: berth_sys::spawn::Stdio::Fd(&log),
        stderr: berth_sys::spawn::Stdio::Fd(&log),
        terminal: false,
        exec_fd: None,
        cgroup: None,
        umask: Some(0o077),
        dir_fd: None,
    })?;
    // Our child while we live: reaped when it ends.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// The tasker process stops. With `--stop-jobs` its jobs are stopped first; otherwise no
/// job starts any more and it waits (up to a minute) until each running job only waits
/// for its command and every end is acknowledged, then leaves them running for the next
/// process to take over.
pub fn stop_tasker(agent: &Arc<Agent>, stop_jobs: bool, who: &str) {
    if stop_jobs {
        let n = agent.stop_all(Some("stopped: its tasker was stopped with --stop-jobs"));
        if n > 0 {
            berth_sys::say!("{who}: stopping {n} running job(s) (--stop-jobs); their cleanup and teardown run first");
        }
        agent.close();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (agent.running() > 0 || !agent.settled()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        let n = agent.close();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent.settled() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let n = n.min(agent.running());
        if n > 0 {
            berth_sys::say!(
                "{who}: {n} job(s) keep running; the next start of this tasker takes them over (--stop-jobs stops them instead)"
            );
        }
    }
    if let Ok(cg) = &agent.cgroups {
        cg.close();
    }
}

/// `berth server`: the server alone; taskers join over TCP.
pub fn server(o: ServerArgs) -> Result<i32> {
    let signals = berth_sys::block_signals(&berth_sys::STOP_SIGNALS);
    let swd = std::path::absolute(swd::resolve(o.swd.as_deref()))?;
    own_swd(&swd)?;
    let running = start_server(
        &swd,
        o.listen.as_deref(),
        Duration::from_secs(o.tasker_grace),
        o.no_fsync,
        &o.policy,
        &o.remote,
    )?;
    berth_sys::say!(
        "berth server: serving {} (SWD {}); stop with Ctrl-C",
        running.sock.display(),
        swd.display()
    );
    let sig = signals.wait();
    berth_sys::say!(
        "berth server: {}: stopping; taskers keep their jobs running",
        lifecycle::signal_name(sig)
    );
    running.handle.send(Event::Drain);
    running.stop();
    Ok(0)
}

/// Runs the embedded default until SIGINT or SIGTERM.
pub fn up(o: Up) -> Result<i32> {
    // Blocked before any thread exists: every thread inherits the mask.
    let signals = berth_sys::block_signals(&berth_sys::STOP_SIGNALS);
    let swd = std::path::absolute(swd::resolve(o.agent.swd.as_deref()))?;
    own_swd(&swd)?;
    if o.examples {
        install_examples(&swd)?;
    }
    let running = start_server(
        &swd,
        o.listen.as_deref(),
        Duration::from_secs(30),
        o.no_fsync,
        &o.policy,
        &o.remote,
    )?;
    let handle = running.handle.clone();
    let report_handle = handle.clone();
    let name = o
        .agent
        .name
        .clone()
        .unwrap_or_else(berth_sys::short_hostname);
    let tasker_name = name.clone();
    let agent = make_agent(
        &swd,
        &o.agent,
        Box::new(move |m| {
            report_handle.send(Event::Tasker(tasker_name.clone(), m));
        }),
    )?;
    handle.send(Event::Connect(
        name.clone(),
        Box::new(LocalLink(agent.clone())),
    ));
    handle.send(Event::Tasker(name.clone(), agent.hello()));
    berth_sys::say!(
        "berth up: serving {} (SWD {}); stop with Ctrl-C",
        running.sock.display(),
        swd.display()
    );

    let sig = signals.wait();
    berth_sys::say!("berth up: {}: stopping", lifecycle::signal_name(sig));
    // First no new start, then the running jobs' ends, recorded before the actor stops.
    running.handle.send(Event::Drain);
    stop_tasker(&agent, o.agent.stop_jobs, "berth up");
    // Give the last reports a moment to be recorded.
    std::thread::sleep(Duration::from_millis(100));
    running.stop();
    agent.forget_all();
    Ok(0)
}
