//! `berth run`, `list`, `info`, `wait`, `stop`, `getlog`, `taskers`, `containers`.

use crate::client::{socket, Client};
use crate::swd;
use anyhow::{bail, Context, Result};
use berth_proto::{JobView, State, Submit, SubmitRequest, Submitted, TaskerView};
use std::io::{IsTerminal, Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the server is.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// The server working directory (default: $BERTH_SWD, else ./berth.swd).
    #[arg(long, value_name = "DIR")]
    swd: Option<PathBuf>,
    /// The server: its socket on this host, or HOST:PORT of its `--clients` address on
    /// another (default: $BERTH_SERVER, else SWD/berth.sock).
    #[arg(long, value_name = "SOCKET|HOST:PORT")]
    server: Option<PathBuf>,
    /// The server's public key, for HOST:PORT (default: $BERTH_SERVER_KEY, else
    /// /etc/berth/server.pub, else SWD/server.pub).
    #[arg(long, value_name = "FILE")]
    server_key: Option<PathBuf>,
}

impl Conn {
    fn client(&self) -> Client {
        let swd = swd::resolve(self.swd.as_deref());
        let target = socket(&swd, self.server.as_deref());
        match crate::client::remote_address(&target) {
            Some(addr) => Client::remote(
                addr,
                crate::client::server_key_file(&swd, self.server_key.as_deref()),
            ),
            None => Client::new(target),
        }
    }
}

/// `berth run`.
#[derive(clap::Args)]
pub struct Run {
    #[command(flatten)]
    conn: Conn,
    /// The job's resources, e.g. "Container:docker CORES/2 RAM/4000".
    #[arg(short = 'r', value_name = "RES")]
    resources: Option<String>,
    /// A name for the job.
    #[arg(short = 'J', value_name = "NAME")]
    name: Option<String>,
    /// The log file (default: DIR/berth-JOBID.log).
    #[arg(short = 'l', value_name = "LOG")]
    log: Option<PathBuf>,
    /// Wait for the job(s) and exit with the job's status.
    #[arg(short = 'w')]
    wait: bool,
    /// Interactive: the job's terminal is this one (its standard input, output and
    /// error); waits and exits with the job's status.
    #[arg(short = 'I')]
    interactive: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    /// Run the job N times (`--array N`, indices 1..N) or for indices A to B
    /// (`--array A-B`); @INDEX@, @JOBID@ and @ARRAYID@ are substituted in the command.
    #[arg(long, value_name = "N|A-B")]
    array: Option<String>,
    /// One job per line of FILE, each run with /bin/sh -c (blank lines and # lines skipped).
    #[arg(short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// The command line.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_array(s: &str) -> Result<(u32, u32)> {
    let bad = || {
        anyhow::anyhow!(
            "--array {s:?}: give a count N or a range A-B, such as --array 100 or --array 0-99"
        )
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if a > b {
                bail!("--array {s}: {a} is above {b}");
            }
            Ok((a, b))
        }
        None => {
            let n: u32 = s.parse().map_err(|_| bad())?;
            if n == 0 {
                bail!("--array 0: an array has at least one job");
            }
            Ok((1, n))
        }
    }
}

fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

pub fn run(r: Run) -> Result<i32> {
    let dir = std::env::current_dir().context("the current directory")?;
    let dir_s = dir
        .to_str()
        .context("the current directory is not UTF-8")?
        .to_string();
    let log = r
        .log
        .as_ref()
        .map(|l| dir.join(l).to_string_lossy().into_owned());
    let env = environment();
    if r.interactive && (r.array.is_some() || r.file.is_some()) {
        bail!("-I runs one job on this terminal: not with --array or -f");
    }
    // Blocked before any thread exists, so that every thread inherits the mask: a Ctrl-C
    // (before the job has the terminal) or a kill of this berth run stops the job; a
    // SIGWINCH sends the terminal's new size.
    let signals = r.interactive.then(|| {
        let mut sigs = berth_sys::STOP_SIGNALS.to_vec();
        sigs.push(libc::SIGWINCH);
        berth_sys::block_signals(&sigs)
    });
    let listening = if r.interactive {
        Some(crate::interactive::listen(&r.conn.client())?)
    } else {
        None
    };
    let umask = berth_sys::current_umask();
    let job = |command: Vec<String>| Submit {
        command,
        dir: dir_s.clone(),
        env: env.clone(),
        resources: r.resources.clone(),
        name: r.name.clone(),
        log: log.clone(),
        priority: r.priority,
        interactive: listening.as_ref().map(|l| l.interactive.clone()),
        umask,
    };
    let req = match (&r.file, r.command.is_empty()) {
        (Some(_), false) => bail!("give either -f FILE or a command after --, not both"),
        (Some(f), true) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let jobs: Vec<Submit> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| job(vec!["/bin/sh".into(), "-c".into(), l.to_string()]))
                .collect();
            if jobs.is_empty() {
                bail!("{}: no job in it (one command per line)", f.display());
            }
            SubmitRequest { jobs, array: None }
        }
        (None, true) => bail!("no command: berth run [OPTIONS] -- CMD ARGS..."),
        (None, false) => SubmitRequest {
            jobs: vec![job(r.command.clone())],
            array: r.array.as_deref().map(parse_array).transpose()?,
        },
    };
    if req.array.is_some() && r.file.is_some() {
        bail!("--array and -f do not go together");
    }
    let client = r.conn.client();
    let sub = submit(&client, req)?;
    for w in &sub.warnings {
        eprintln!("berth run: warning: {w}");
    }
    if let Some(l) = listening {
        if let Some(signals) = signals {
            l.on_signals(signals, r.conn.client(), sub.ids[0]);
        }
        let v = l.attach(&client, sub.ids[0])?;
        if v.state != State::Done {
            eprintln!("berth run: job {}", ended(&v));
        }
        if r.json {
            println!("{}", serde_json::to_string_pretty(&[&v])?);
        }
        return Ok(exit_of(std::slice::from_ref(&v)));
    }
    if r.json && !r.wait {
        println!("{}", serde_json::to_string_pretty(&sub)?);
        return Ok(0);
    }
    if !r.wait {
        if sub.ids.len() > 20 {
            println!(
                "{}-{} ({} jobs{})",
                sub.ids[0],
                sub.ids[sub.ids.len() - 1],
                sub.ids.len(),
                sub.array_id
                    .map(|a| format!(", array {a}"))
                    .unwrap_or_default()
            );
        } else {
            for id in &sub.ids {
                println!("{id}");
            }
        }
        return Ok(0);
    }
    let views = wait_all(&client, &sub.ids, None)?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    }
    Ok(exit_of(&views))
}

/// Sends a submission; one of many jobs (`-f`) larger than the server takes in one
/// request goes in several, each well below the limit.
fn submit(client: &crate::client::Client, req: SubmitRequest) -> Result<Submitted> {
    let body = serde_json::to_vec(&req)?;
    let limit = berth_server::http::MAX_BODY / 2;
    if body.len() <= limit || req.array.is_some() || req.jobs.len() < 2 {
        return client.call("POST", "/v1/jobs", Some(&body));
    }
    let parts = body.len().div_ceil(limit);
    let per = req.jobs.len().div_ceil(parts);
    let mut all = Submitted {
        ids: Vec::new(),
        array_id: None,
        warnings: Vec::new(),
    };
    for jobs in req.jobs.chunks(per) {
        let part = SubmitRequest {
            jobs: jobs.to_vec(),
            array: None,
        };
        let sub: Submitted = client.call("POST", "/v1/jobs", Some(&serde_json::to_vec(&part)?))?;
        all.ids.extend(sub.ids);
        for w in sub.warnings {
            if !all.warnings.contains(&w) {
                all.warnings.push(w);
            }
        }
    }
    Ok(all)
}

/// A user's text as it may be shown on a terminal: control characters (an escape
/// sequence that would clear the screen or retitle the window, a carriage return that
/// would overwrite a line) as `\xNN`.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\x{:02x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `ID STATE[: REASON]`.
fn ended(v: &JobView) -> String {
    format!(
        "{} {}{}",
        v.id,
        v.state.as_str(),
        v.reason
            .as_deref()
            .map(|r| format!(": {}", shown(r)))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(super::shown("plain text"), "plain text");
        assert_eq!(
            super::shown("x\x1b]0;OWNED\x07\x1b[2J\rFAKE"),
            "x\\x1b]0;OWNED\\x07\\x1b[2J\\x0dFAKE"
        );
    }
}

fn exit_of(views: &[JobView]) -> i32 {
    views
        .iter()
        .find(|v| v.state != State::Done)
        .map(|v| v.exit_code.filter(|c| *c != 0).unwrap_or(1))
        .unwrap_or(0)
}

/// Waits for every job, with progress on a terminal; None waits without limit.
fn wait_all(client: &Client, ids: &[u64], limit: Option<Duration>) -> Result<Vec<JobView>> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut out = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let mut last = String::new();
        loop {
            let left = limit.map(|l| l.saturating_sub(start.elapsed()));
            let secs = left.map(|l| l.as_secs().clamp(1, 5)).unwrap_or(5);
            let v: JobView =
                client.call("GET", &format!("/v1/jobs/{id}/wait?timeout={secs}"), None)?;
            if v.state.is_final() {
                out.push(v);
                break;
            }
            if tty {
                let line = format!(
                    "waiting for job {id} ({}/{}): {}{}",
                    n + 1,
                    ids.len(),
                    v.state.as_str(),
                    v.why_waiting
                        .as_deref()
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                );
                if line != last {
                    eprint!("\r\x1b[K{line}");
                    last = line;
                }
            }
            if left.is_some_and(|l| l.is_zero()) {
                if tty {
                    eprintln!();
                }
                bail!(
                    "job {id} is still {} after {:?}",
                    v.state.as_str(),
                    limit.unwrap_or_default()
                );
            }
        }
        if tty && !last.is_empty() {
            eprint!("\r\x1b[K");
        }
    }
    Ok(out)
}

/// `berth wait JOB...`.
#[derive(clap::Args)]
pub struct Wait {
    #[command(flatten)]
    conn: Conn,
    /// Give up after SECONDS (exit 2).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Print the jobs as JSON.
    #[arg(long)]
    json: bool,
    /// The jobs.
    #[arg(required = true)]
    jobs: Vec<u64>,
}

pub fn wait(w: Wait) -> Result<i32> {
    let views = match wait_all(
        &w.conn.client(),
        &w.jobs,
        w.timeout.map(Duration::from_secs),
    ) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("is still") => {
            eprintln!("berth wait: {e}");
            return Ok(2);
        }
        Err(e) => return Err(e),
    };
    if w.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        for v in &views {
            println!("{}", ended(v));
        }
    }
    Ok(exit_of(&views))
}

/// `berth list`.
#[derive(clap::Args)]
pub struct List {
    #[command(flatten)]
    conn: Conn,
    /// Only jobs in these states (comma-separated: Queued,Running,Done,Failed).
    #[arg(long)]
    state: Option<String>,
    /// Only jobs of this user (name or uid).
    #[arg(long)]
    user: Option<String>,
    /// Only jobs of this name.
    #[arg(long)]
    name: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn list(l: List) -> Result<i32> {
    let mut q = format!("/v1/jobs?limit={}", l.limit);
    for (k, v) in [("state", &l.state), ("user", &l.user), ("name", &l.name)] {
        if let Some(v) = v {
            q += &format!("&{k}={}", berth_server::http::encode(v));
        }
    }
    let jobs: Vec<JobView> = l.conn.client().call("GET", &q, None)?;
    if l.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(0);
    }
    println!(
        "{:>8}  {:8}  {:10}  {:12}  {:>4}  COMMAND",
        "ID", "STATE", "USER", "NAME", "EXIT"
    );
    for j in &jobs {
        println!(
            "{:>8}  {:8}  {:10}  {:12}  {:>4}  {}",
            j.id,
            j.state.as_str(),
            j.user,
            shown(j.name.as_deref().unwrap_or("-")),
            j.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            shown(&j.command.join(" "))
        );
    }
    Ok(0)
}

/// `berth info JOB`.
#[derive(clap::Args)]
pub struct Info {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The job.
    job: u64,
}

fn ms(t: Option<u64>) -> String {
    t.map(|t| format!("{}.{:03}", t / 1000, t % 1000))
        .unwrap_or_else(|| "-".into())
}

pub fn info(i: Info) -> Result<i32> {
    let v: JobView = i
        .conn
        .client()
        .call("GET", &format!("/v1/jobs/{}", i.job), None)?;
    if i.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let rows: Vec<(&str, String)> = vec![
        ("id", v.id.to_string()),
        ("state", v.state.as_str().to_string()),
        ("reason", v.reason.clone().unwrap_or_else(|| "-".into())),
        (
            "why it waits",
            v.why_waiting.clone().unwrap_or_else(|| "-".into()),
        ),
        ("user", format!("{} (uid {})", v.user, v.uid)),
        ("name", v.name.clone().unwrap_or_else(|| "-".into())),
        ("command", v.command.join(" ")),
        ("directory", v.dir.clone()),
        (
            "resources",
            v.resources
                .clone()
                .unwrap_or_else(|| "CORES/1 SLOTS/1 (default)".into()),
        ),
        ("log", v.log.clone()),
        ("priority", v.priority.to_string()),
        (
            "array",
            v.array
                .map(|(a, i)| format!("{a} index {i}"))
                .unwrap_or_else(|| "-".into()),
        ),
        ("tasker", v.tasker.clone().unwrap_or_else(|| "-".into())),
        (
            "slot",
            v.slot.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        ),
        ("submitted", ms(Some(v.submitted_ms))),
        ("started", ms(v.started_ms)),
        ("ended", ms(v.ended_ms)),
        (
            "exit status",
            v.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "hook failures",
            if v.hook_failures.is_empty() {
                "-".into()
            } else {
                v.hook_failures.join("; ")
            },
        ),
    ];
    for (k, val) in rows {
        println!("{k:>13}: {}", shown(&val));
    }
    Ok(0)
}

/// `berth stop JOB...`.
#[derive(clap::Args)]
pub struct Stop {
    #[command(flatten)]
    conn: Conn,
    /// The jobs.
    #[arg(required = true)]
    jobs: Vec<u64>,
}

pub fn stop(s: Stop) -> Result<i32> {
    let c = s.conn.client();
    let mut code = 0;
    for id in s.jobs {
        match c.call::<serde_json::Value>("POST", &format!("/v1/jobs/{id}/stop"), None) {
            Ok(v) => println!("{}", v["message"].as_str().unwrap_or("")),
            Err(e) => {
                eprintln!("berth stop: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `berth getlog JOB`.
#[derive(clap::Args)]
pub struct Getlog {
    #[command(flatten)]
    conn: Conn,
    /// Follow the log until the job ends.
    #[arg(short = 'f')]
    follow: bool,
    /// The job.
    job: u64,
}

pub fn getlog(g: Getlog) -> Result<i32> {
    let c = g.conn.client();
    let v: JobView = c.call("GET", &format!("/v1/jobs/{}", g.job), None)?;
    let mut pos = 0u64;
    let mut out = std::io::stdout();
    // From another host the log is read by the job's tasker, as the job's owner; here,
    // from the file itself.
    let remote = c.is_remote();
    // Once the job is over, one more read takes what it wrote last.
    let mut over = false;
    loop {
        let mut size = None;
        if remote {
            let part: berth_proto::LogPart =
                c.call("GET", &format!("/v1/jobs/{}/log?offset={pos}", g.job), None)?;
            match part.error {
                Some(e) if !g.follow => bail!("{e}"),
                Some(_) => {}
                None => {
                    let data = hex::decode(&part.data).context("the log's bytes")?;
                    pos += data.len() as u64;
                    out.write_all(&data)?;
                    out.flush()?;
                    size = Some(part.size);
                    if (pos as u128) < part.size as u128 {
                        continue; // more than one part: at once
                    }
                }
            }
        } else if let Ok(mut f) = std::fs::File::open(&v.log) {
            // Read as the caller: the log is the job owner's file.
            f.seek(std::io::SeekFrom::Start(pos))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
            size = std::fs::metadata(&v.log).ok().map(|m| m.len());
        } else if !g.follow {
            bail!(
                "job {}: no log at {} (yet), or it is not readable by you",
                g.job,
                v.log
            );
        }
        if !g.follow || (over && size.is_none_or(|s| s <= pos)) {
            return Ok(0);
        }
        if !over {
            let now: JobView =
                c.call("GET", &format!("/v1/jobs/{}/wait?timeout=1", g.job), None)?;
            over = now.state.is_final();
        }
    }
}

/// `berth taskers` and `berth containers`.
#[derive(clap::Args)]
pub struct Taskers {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn taskers(t: Taskers) -> Result<i32> {
    let ts: Vec<TaskerView> = t.conn.client().call("GET", "/v1/taskers", None)?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&ts)?);
        return Ok(0);
    }
    println!(
        "{:16}  {:12}  {:>5}  {:>7}  FREE",
        "NAME", "HOST", "SLOTS", "RUNNING"
    );
    for x in &ts {
        println!(
            "{:16}  {:12}  {:>5}  {:>7}  {}",
            x.name, x.host, x.slots, x.running, x.free
        );
    }
    Ok(0)
}

#[derive(serde::Serialize)]
struct ContainerRow {
    name: String,
    offered_by: Vec<String>,
    refused_by: Vec<(String, String)>,
}

pub fn containers(t: Taskers) -> Result<i32> {
    let ts: Vec<TaskerView> = t.conn.client().call("GET", "/v1/taskers", None)?;
    let mut rows: std::collections::BTreeMap<String, ContainerRow> = Default::default();
    for x in &ts {
        for r in x.resources.split_whitespace() {
            if let Some(n) = r.strip_prefix("Container:") {
                rows.entry(n.to_string())
                    .or_insert_with(|| ContainerRow {
                        name: n.into(),
                        offered_by: vec![],
                        refused_by: vec![],
                    })
                    .offered_by
                    .push(x.name.clone());
            }
        }
        for (n, why) in &x.containers_refused {
            rows.entry(n.clone())
                .or_insert_with(|| ContainerRow {
                    name: n.clone(),
                    offered_by: vec![],
                    refused_by: vec![],
                })
                .refused_by
                .push((x.name.clone(), why.clone()));
        }
    }
    if t.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows.values().collect::<Vec<_>>())?
        );
        return Ok(0);
    }
    println!("{:16}  {:20}  NOT OFFERED BY", "NAME", "OFFERED BY");
    for r in rows.values() {
        let refused: Vec<String> = r
            .refused_by
            .iter()
            .map(|(t, w)| format!("{t}: {w}"))
            .collect();
        println!(
            "{:16}  {:20}  {}",
            r.name,
            if r.offered_by.is_empty() {
                "-".into()
            } else {
                r.offered_by.join(",")
            },
            if refused.is_empty() {
                "-".into()
            } else {
                refused.join("; ")
            }
        );
    }
    Ok(0)
}
