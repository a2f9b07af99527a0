//! `berth signfile` and `berth container ...`: what an administrator uses to write, sign,
//! check and try named container configurations.

use crate::{swd, wrapper};
use anyhow::{bail, Context, Result};
use berth_container::check::{self, LoadError, Policy};
use berth_container::{resign, sign, Config, Key, Privilege};
use berth_tasker::{lifecycle, End, Host, Identity, Job, LogTarget, Stop};
use clap::Subcommand;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone)]
pub struct Common {
    /// The server working directory (default: $BERTH_SWD, else ./berth.swd).
    #[arg(long, value_name = "DIR")]
    swd: Option<PathBuf>,
    /// The site key: keyed signatures are checked with it, and root hooks must carry one.
    #[arg(long, value_name = "KEYFILE")]
    key: Option<PathBuf>,
}

impl Common {
    fn swd(&self) -> PathBuf {
        swd::resolve(self.swd.as_deref())
    }

    fn key(&self) -> Result<Option<Key>> {
        self.key
            .as_deref()
            .map(Key::load)
            .transpose()
            .map_err(Into::into)
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run every check of a configuration and its hooks on this host, one line each.
    Check {
        #[command(flatten)]
        common: Common,
        /// The configuration's NAME (SWD/containers/NAME.cfg).
        name: String,
    },
    /// Rewrite the signatures in NAME.cfg in place, after showing what changes.
    Sign {
        #[command(flatten)]
        common: Common,
        /// Show the changes without writing them.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// The configuration's NAME.
        name: String,
    },
    /// List every configuration with its state on this host.
    List {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole life cycle of one job on this host, without a server.
    Try {
        #[command(flatten)]
        common: Common,
        /// Run the job as USER (root only; default: yourself).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// The job's resources, e.g. "CORES/2 RAM/4000 TMP#100".
        #[arg(short = 'r', value_name = "RES")]
        resources: Option<String>,
        /// Append the job's output to LOG (opened as the job's owner) instead of the terminal.
        #[arg(short = 'l', value_name = "LOG")]
        log: Option<PathBuf>,
        /// The project name given to hooks as VOV_PROJECT_NAME.
        #[arg(long, default_value = "berth")]
        project: String,
        /// The configuration's NAME.
        name: String,
        /// The job's command line.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Finish the cleanup and teardown left by a `try` that was killed.
    Recover {
        #[command(flatten)]
        common: Common,
    },
}

pub fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Check { common, name } => check_cmd(&common, &name),
        Cmd::Sign {
            common,
            dry_run,
            name,
        } => sign_cmd(&common, &name, dry_run),
        Cmd::List { common, json } => list_cmd(&common, json),
        Cmd::Try {
            common,
            user,
            resources,
            log,
            project,
            name,
            command,
        } => try_cmd(&common, user, resources, log, project, &name, command),
        Cmd::Recover { common } => {
            let host = try_host(&common, "berth".into())?;
            let n = recover_try(&host);
            if n == 0 {
                errln!(
                    "berth: nothing to recover under {}",
                    host.state_dir.display()
                );
            }
            Ok(0)
        }
    }
}

pub fn signfile(key: Option<&Path>, files: &[PathBuf]) -> Result<i32> {
    let key = key.map(Key::load).transpose()?;
    let mut code = 0;
    let out = std::io::stdout();
    for f in files {
        match sign::sign_file(f, key.as_ref()) {
            Ok(sig) if files.len() == 1 => writeln!(out.lock(), "{sig}")?,
            Ok(sig) => writeln!(out.lock(), "{sig}  {}", f.display())?,
            Err(e) => {
                errln!("berth signfile: {}: {e}", f.display());
                code = 1;
            }
        }
    }
    Ok(code)
}

fn check_cmd(common: &Common, name: &str) -> Result<i32> {
    let key = common.key()?;
    let dir = swd::containers(&common.swd());
    let cfg = match check::load(&dir, name) {
        Ok(c) => c,
        Err(LoadError::Invalid(errs)) => {
            for e in &errs.0 {
                outln!("FAIL  {e}");
            }
            return Ok(1);
        }
        Err(e) => {
            outln!("FAIL  {e}");
            return Ok(1);
        }
    };
    let meta = std::fs::metadata(&cfg.path)?;
    outln!(
        "ok    {}: parsed, {} hook{}; owner uid {}, mode {:o}",
        cfg.path.display(),
        cfg.hooks.len(),
        if cfg.hooks.len() == 1 { "" } else { "s" },
        meta.uid(),
        meta.mode() & 0o7777
    );
    let mut failed = false;
    if cfg.has_root_hook() && berth_sys::euid() != 0 {
        outln!("FAIL  {name}: has root hooks, but this check runs as uid {}; root hooks run only when berth runs as root", berth_sys::euid());
        failed = true;
    }
    for h in &cfg.hooks {
        match check::check_hook(&cfg.name, h, Policy { key: key.as_ref() }) {
            Ok(_) => outln!(
                "ok    {} hook {} ({}): {}",
                h.kind,
                h.path.display(),
                h.privilege.as_str(),
                if h.privilege == Privilege::Root {
                    "regular, executable, owned by root, not writable by others, in root-only directories, signature matches"
                } else {
                    "regular, executable, signature matches"
                }
            ),
            Err(r) => {
                outln!("FAIL  {r}");
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}

fn sign_cmd(common: &Common, name: &str, dry_run: bool) -> Result<i32> {
    let key = common.key()?;
    let dir = swd::containers(&common.swd());
    let cfg = check::load(&dir, name)?;
    let src = std::fs::read_to_string(&cfg.path)?;
    let (text, changes) = resign::resign(&cfg, &src, key.as_ref()).map_err(|(p, e)| {
        anyhow::anyhow!("cannot sign {}: {e}; nothing was changed", p.display())
    })?;
    if changes.is_empty() {
        outln!("{}: every signature is current", cfg.path.display());
        return Ok(0);
    }
    for c in &changes {
        outln!(
            "{}:{}: {} hook {}",
            cfg.path.display(),
            c.line,
            c.kind,
            c.path.display()
        );
        outln!("-   {}", c.old);
        outln!("+   {}", c.new);
    }
    if dry_run {
        outln!("(dry run: {} not changed)", cfg.path.display());
        return Ok(0);
    }
    write_in_place(&cfg.path, text.as_bytes())?;
    outln!(
        "{}: {} signature{} rewritten",
        cfg.path.display(),
        changes.len(),
        if changes.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}

/// Replaces a file by a rename, keeping its owner and mode.
fn write_in_place(path: &Path, content: &[u8]) -> Result<()> {
    let meta = std::fs::metadata(path)?;
    let tmp = path.with_extension(format!("cfg.{}.tmp", std::process::id()));
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content)?;
    if berth_sys::euid() == 0 {
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[derive(serde::Serialize)]
struct ListEntry {
    name: String,
    path: PathBuf,
    ok: bool,
    error: Option<String>,
    hooks: Vec<serde_json::Value>,
}

fn list_cmd(common: &Common, json: bool) -> Result<i32> {
    let key = common.key()?;
    let dir = swd::containers(&common.swd());
    let names = check::list_names(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let entries: Vec<ListEntry> = names
        .iter()
        .map(|n| {
            let path = dir.join(format!("{n}.cfg"));
            match check::load(&dir, n) {
                Ok(cfg) => {
                    let err = check::check_hooks(&cfg, Policy { key: key.as_ref() }).err();
                    ListEntry {
                        name: n.clone(),
                        path,
                        ok: err.is_none(),
                        error: err.map(|e| e.to_string()),
                        hooks: hooks_json(&cfg),
                    }
                }
                Err(e) => ListEntry {
                    name: n.clone(),
                    path,
                    ok: false,
                    error: Some(e.to_string().lines().next().unwrap_or_default().to_string()),
                    hooks: Vec::new(),
                },
            }
        })
        .collect();
    if json {
        outln!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(0);
    }
    if entries.is_empty() {
        outln!("no configurations in {}", dir.display());
        return Ok(0);
    }
    let w = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!("{:w$}  {:5}  {:24}  DETAIL", "NAME", "STATE", "HOOKS");
    for e in &entries {
        let hooks: Vec<String> = e
            .hooks
            .iter()
            .map(|h| {
                format!(
                    "{}:{}",
                    h["type"].as_str().unwrap_or(""),
                    h["privilege"].as_str().unwrap_or("")
                )
            })
            .collect();
        outln!(
            "{:w$}  {:5}  {:24}  {}",
            e.name,
            if e.ok { "ok" } else { "error" },
            hooks.join(","),
            e.error.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}

fn hooks_json(cfg: &Config) -> Vec<serde_json::Value> {
    cfg.hooks
        .iter()
        .map(|h| {
            serde_json::json!({
                "type": h.kind.as_str(),
                "privilege": h.privilege.as_str(),
                "path": h.path,
            })
        })
        .collect()
}

fn try_host(common: &Common, project: String) -> Result<Host> {
    let swd = common.swd();
    if !swd.is_dir() {
        bail!(
            "no SWD at {}; create it with {}/containers in it, or pass --swd DIR",
            swd.display(),
            swd.display()
        );
    }
    let swd = std::path::absolute(&swd)?;
    Ok(Host {
        host: berth_sys::short_hostname(),
        project,
        wrapper: wrapper::install(&swd)?,
        state_dir: swd.join("try"),
        key: common.key()?,
    })
}

fn recover_try(host: &Host) -> usize {
    let done = lifecycle::recover(host, &mut |line| errln!("[berth] {line}"));
    done.len()
}

/// Opens (making it, mode 0600) and flocks a file of the try state directory, waiting for
/// the lock or not; says whether it holds it.
fn locked(path: &Path, wait: bool) -> Result<(std::fs::File, bool)> {
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let held = berth_sys::flock_exclusive(&f, wait)
        .with_context(|| format!("locking {}", path.display()))?;
    Ok((f, held))
}

/// A job id for `try`: the next number of a counter under the try state directory.
fn next_try_id(state: &Path) -> Result<String> {
    use std::io::{Read, Seek};
    std::fs::create_dir_all(state)?;
    let (mut f, _) = locked(&state.join("seq"), true)?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    let n = s.trim().parse::<u64>().unwrap_or(0) + 1;
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{n}")?;
    Ok(n.to_string())
}

/// The first slot no other `try` on this state directory holds, with the lock that holds
/// it (released when the try ends, however it ends): two `try`s of one configuration at
/// once get different VOV_JOBSLOTs, and so different container names.
fn free_try_slot(state: &Path) -> Result<(u32, std::fs::File)> {
    let dir = state.join("try-slots");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for slot in 0..1024u32 {
        if let (f, true) = locked(&dir.join(format!("{slot}.lock")), false)? {
            return Ok((slot, f));
        }
    }
    bail!("1024 tries run at once on {}", state.display())
}

#[allow(clippy::too_many_arguments)]
fn try_cmd(
    common: &Common,
    user: Option<String>,
    resources: Option<String>,
    log: Option<PathBuf>,
    project: String,
    name: &str,
    command: Vec<OsString>,
) -> Result<i32> {
    let euid = berth_sys::euid();
    let owner: Identity = match &user {
        Some(u) => berth_sys::identity_by_name(u)?,
        None => berth_sys::identity_by_uid(euid)?,
    };
    if owner.uid == 0 {
        bail!(
            "a job never runs as root; pass --user USER (as root: berth container try --user nobody {name} -- ...)"
        );
    }
    if owner.uid != euid && euid != 0 {
        bail!("only root can run a job as {}", owner.name);
    }
    let request = resources
        .as_deref()
        .map(berth_resources::parse)
        .transpose()?;
    let host = try_host(common, project)?;
    // Stops are asked for with SIGINT, SIGTERM or SIGHUP: block them here, before any
    // thread exists, and take them on a thread of their own.
    let stop = Stop::new()?;
    spawn_signal_thread(stop.clone());
    recover_try(&host);
    let cfg = check::load(&swd::containers(&common.swd()), name)?;
    let dir = std::env::current_dir().context("the current directory")?;
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    if owner.uid != euid {
        for (k, v) in [
            ("USER", owner.name.clone()),
            ("LOGNAME", owner.name.clone()),
            ("HOME", owner.home.display().to_string()),
        ] {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v.into()));
        }
    }
    let (slot, _slot_lock) = free_try_slot(&host.state_dir)?;
    let job = Job {
        id: next_try_id(&host.state_dir)?,
        owner,
        dir,
        env,
        command,
        slot,
        request,
        log: log.map(LogTarget::File).unwrap_or(LogTarget::Terminal),
        interactive: None,
        cgroup: None,
        umask: berth_sys::current_umask(),
    };
    errln!(
        "[berth] job {}: container {} as {} in {}",
        job.id,
        cfg.name,
        job.owner.name,
        job.dir.display()
    );
    let out = lifecycle::run(&host, &job, &cfg, &stop);
    let status = match out.end {
        End::Exited(c) => format!("exit {c}"),
        End::Signaled(s) => format!("signal {s} ({})", lifecycle::signal_name(s)),
        End::NotRun => "not run".to_string(),
    };
    match &out.failure {
        None => errln!("[berth] job {}: Done ({status})", job.id),
        Some(f) => errln!("[berth] job {}: Failed ({status}): {f}", job.id),
    }
    for f in &out.after_failures {
        errln!("[berth] job {}: {f}", job.id);
    }
    Ok(out.exit_code())
}

fn spawn_signal_thread(stop: Stop) {
    // Blocked here, before any other thread exists, so that every thread inherits the
    // mask and only this one sees them. Hooks start with no signal blocked.
    let waiter = berth_sys::block_signals(&berth_sys::STOP_SIGNALS);
    std::thread::spawn(move || {
        let mut first = true;
        loop {
            let sig = waiter.wait();
            if first {
                errln!(
                    "[berth] {}: stopping the job (SIGTERM to its enter hook, SIGKILL after the grace period); cleanup and teardown will run",
                    lifecycle::signal_name(sig)
                );
                first = false;
            } else {
                errln!(
                    "[berth] already stopping; cleanup and teardown are running and will finish"
                );
            }
            stop.trigger();
        }
    });
}
