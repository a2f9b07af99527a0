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
    /// Wait for the job(s), saying on standard error how each ended, and exit with the
    /// job's status.
    #[arg(short = 'w')]
    wait: bool,
    /// Wait for the job and show its log as it is written (Accelerator's `-wl`); exit with
    /// the job's status.
    #[arg(long)]
    follow: bool,
    /// With -w: say nothing of how the jobs ended (the exit status still does).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// When interrupted while waiting (Ctrl-C), stop the jobs instead of leaving them
    /// running.
    #[arg(long)]
    stop_on_interrupt: bool,
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
    /// Stop the job (SIGTERM, grace, SIGKILL; hooks still run) once it has run this long:
    /// 90 (seconds), 10m, 2h30m, 1d; its reason says `time limit 10m exceeded`.
    #[arg(long, visible_alias = "autokill", value_name = "DURATION", value_parser = crate::show::parse_duration)]
    time: Option<u64>,
    /// Start only once these jobs are all Done; fail (`dependency 12 failed`) if one
    /// fails.
    #[arg(
        long,
        value_name = "JOB[,JOB...]",
        value_delimiter = ',',
        conflicts_with = "after_any"
    )]
    after: Vec<u64>,
    /// Start only once these jobs have all ended, however they ended.
    #[arg(long, value_name = "JOB[,JOB...]", value_delimiter = ',')]
    after_any: Vec<u64>,
    /// Queue the job held: it starts once released (`berth release JOB`).
    #[arg(long)]
    hold: bool,
    /// Queue the job again, up to N times, when it is lost with its host (each attempt is
    /// in `berth info`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,
    /// The command line: its first word is the first that is not one of berth's options
    /// (or give `--` before it).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
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
    if let Some(l) = &log {
        check_log_dir(l)?;
    }
    let env = environment();
    if r.interactive && (r.array.is_some() || r.file.is_some()) {
        bail!("-I runs one job on this terminal: not with --array or -f");
    }
    if r.follow && (r.array.is_some() || r.file.is_some() || r.interactive) {
        bail!("--follow (-wl) shows one job's log: not with --array, -f or -I (use -w)");
    }
    let waits = r.wait || r.follow;
    // Blocked before any thread exists (every thread inherits the mask): an interrupt
    // while waiting is this command's to handle.
    let wait_signals =
        (waits && !r.interactive).then(|| berth_sys::block_signals(&berth_sys::STOP_SIGNALS));
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
        time_limit_ms: r.time,
        after_in: Vec::new(),
        after: if r.after_any.is_empty() {
            r.after.clone()
        } else {
            r.after_any.clone()
        },
        after_any: !r.after_any.is_empty(),
        hold: r.hold,
        retries: r.retries,
    };
    let req = match (&r.file, r.command.is_empty()) {
        (Some(_), false) => bail!("give either -f FILE or a command after --, not both"),
        (Some(f), true) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let mut jobs: Vec<Submit> = Vec::new();
            let mut labels: std::collections::HashMap<String, usize> = Default::default();
            for (n, raw) in text.lines().enumerate() {
                let l = raw.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let g = graph_line(l);
                let mut j = job(vec!["/bin/sh".into(), "-c".into(), g.command.to_string()]);
                for dep in &g.after {
                    match labels.get(*dep) {
                        Some(i) => j.after_in.push(*i),
                        None => bail!(
                            "{}:{}: after {dep}: no job labelled {dep:?} on a line before \
                             (a line `LABEL: COMMAND` labels its job)",
                            f.display(),
                            n + 1
                        ),
                    }
                }
                j.after_any |= g.any;
                if let Some(label) = g.label {
                    if labels.insert(label.to_string(), jobs.len()).is_some() {
                        bail!(
                            "{}:{}: the label {label:?} is given twice",
                            f.display(),
                            n + 1
                        );
                    }
                }
                jobs.push(j);
            }
            if jobs.is_empty() {
                bail!("{}: no job in it (one command per line)", f.display());
            }
            SubmitRequest { jobs, array: None }
        }
        (None, true) => bail!(
            "no command: berth run [OPTIONS] CMD ARGS... (or -- CMD ARGS... when CMD \
             begins with -)"
        ),
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
        errln!("berth run: warning: {w}");
    }
    if let Some(l) = listening {
        if let Some(signals) = signals {
            l.on_signals(signals, r.conn.client(), sub.ids[0]);
        }
        let v = l.attach(&client, sub.ids[0])?;
        if v.state != State::Done && !r.quiet {
            errln!("berth run: {}", ended(&v, crate::show::now_ms()));
        }
        if r.json {
            outln!("{}", json_jobs(std::slice::from_ref(&v))?);
        }
        return Ok(exit_of(std::slice::from_ref(&v)));
    }
    if r.json && !waits {
        outln!("{}", serde_json::to_string_pretty(&sub)?);
        return Ok(0);
    }
    if !waits {
        if sub.ids.len() > 20 {
            outln!(
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
                outln!("{id}");
            }
        }
        return Ok(0);
    }
    if let Some(signals) = wait_signals {
        on_interrupt(signals, r.conn.client(), &sub, r.stop_on_interrupt);
    }
    if !r.quiet && !r.json {
        errln!("berth run: submitted {}", submitted(&sub));
    }
    if r.follow {
        follow_log(&client, sub.ids[0], true)?;
    }
    let views = wait_all(&client, &sub.ids, None, r.quiet)?;
    if r.json {
        outln!("{}", json_jobs(&views)?);
    }
    Ok(exit_of(&views))
}

/// What a submission made: `job 12`, `jobs 12-111 (array 11)`.
fn submitted(sub: &Submitted) -> String {
    match (sub.ids.as_slice(), sub.array_id) {
        ([one], None) => format!("job {one}"),
        (ids, a) => format!(
            "jobs {}{}",
            ranges(ids),
            a.map(|a| format!(" (array {a})")).unwrap_or_default()
        ),
    }
}

/// `12-15,18`.
fn ranges(ids: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// On an interrupt (Ctrl-C, SIGTERM, SIGHUP) while `berth run` waits: the jobs go on,
/// and the user is told how to follow or stop them; or, with `--stop-on-interrupt`,
/// they are stopped and the wait goes on until they have ended.
fn on_interrupt(signals: berth_sys::SignalWaiter, client: Client, sub: &Submitted, stop: bool) {
    let ids = sub.ids.clone();
    let what = submitted(sub);
    let handle = match sub.array_id {
        Some(a) if sub.ids.len() > 1 => a.to_string(),
        _ => ranges(&sub.ids).replace(',', " "),
    };
    std::thread::spawn(move || {
        let sig = signals.wait();
        if !stop {
            errln!(
                "\nberth run: interrupted; {what} {} on (berth stops waiting): follow with \
                 `berth wait {handle}`, stop with `berth stop {handle}`",
                if ids.len() == 1 { "goes" } else { "go" }
            );
            std::process::exit(128 + sig);
        }
        errln!("\nberth run: interrupted; stopping {what}");
        for id in &ids {
            if let Err(e) =
                client.call::<serde_json::Value>("POST", &format!("/v1/jobs/{id}/stop"), None)
            {
                errln!("berth run: cannot stop job {id}: {e}");
            }
        }
        // A second interrupt ends the wait at once.
        let sig = signals.wait();
        std::process::exit(128 + sig);
    });
}

/// A log whose directory does not exist is refused now, not when the job starts. A
/// directory with `@...@` in it is made by the job's own name: not checked.
fn check_log_dir(log: &str) -> Result<()> {
    let p = std::path::Path::new(log);
    let Some(parent) = p.parent() else {
        return Ok(());
    };
    if parent.to_string_lossy().contains('@') {
        return Ok(());
    }
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!(
            "-l {log}: {} is not a directory; give a log in an existing directory",
            parent.display()
        ),
        Err(e) => bail!(
            "-l {log}: its directory {}: {e}; make it first (mkdir -p {}) or give another",
            parent.display(),
            parent.display()
        ),
    }
}

/// A line of an `-f` file: `COMMAND`, or `LABEL: COMMAND` (the job is known by LABEL to
/// the lines after it), or `LABEL after A,B: COMMAND` / `LABEL after-any A,B: COMMAND`
/// (it waits for the jobs labelled A and B: until they are Done, or have ended). A
/// label is letters, digits, `_`, `.` and `-`.
struct GraphLine<'a> {
    label: Option<&'a str>,
    after: Vec<&'a str>,
    any: bool,
    command: &'a str,
}

fn graph_line(l: &str) -> GraphLine<'_> {
    let plain = GraphLine {
        label: None,
        after: Vec::new(),
        any: false,
        command: l,
    };
    let Some((head, command)) = l.split_once(": ") else {
        return plain;
    };
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let mut w = head.split_whitespace();
    let (Some(label), kind, deps, None) = (w.next(), w.next(), w.next(), w.next()) else {
        return plain;
    };
    if !word(label) {
        return plain;
    }
    let (after, any) = match (kind, deps) {
        (None, None) => (Vec::new(), false),
        (Some(k @ ("after" | "after-any")), Some(d)) if d.split(',').all(word) => {
            (d.split(',').collect(), k == "after-any")
        }
        _ => return plain,
    };
    GraphLine {
        label: Some(label),
        after,
        any,
        command: command.trim_start(),
    }
}

/// Sends a submission; one of many jobs (`-f`) larger than the server takes in one
/// request goes in several, each well below the limit (not a graph: its jobs name one
/// another by their place in it).
fn submit(client: &crate::client::Client, req: SubmitRequest) -> Result<Submitted> {
    let body = serde_json::to_vec(&req)?;
    let limit = berth_server::http::MAX_BODY / 2;
    if body.len() <= limit || req.array.is_some() || req.jobs.len() < 2 {
        return client.call("POST", "/v1/jobs", Some(&body));
    }
    if req.jobs.iter().any(|j| !j.after_in.is_empty()) {
        bail!(
            "a file whose jobs wait for one another goes in one submission, of at most {} \
             bytes; this one comes to {}: split it into files that do not",
            limit,
            body.len()
        );
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

/// How a job ended, for a person: `job 12 Done after 1.2s`,
/// `job 13 Failed (exit status 3) after 2.0s`, `job 14 Failed (lost) after 5m02s`.
fn ended(v: &JobView, now: u64) -> String {
    let how = match (v.state, v.reason.as_deref()) {
        (State::Done, _) => String::new(),
        (_, Some(r)) => format!(" ({})", shown(r)),
        (_, None) => match v.exit_code {
            Some(c) => format!(" (exit status {c})"),
            None => String::new(),
        },
    };
    let when = match crate::show::elapsed_ms(v, now) {
        Some(e) => format!(" after {}", crate::show::duration(e)),
        None if v.state.is_final() => ", never started".to_string(),
        None => String::new(),
    };
    format!("job {} {}{how}{when}", v.id, v.state.as_str())
}

/// Jobs as `--json` prints them.
fn json_jobs(views: &[JobView]) -> Result<String> {
    let now = crate::show::now_ms();
    let all: Vec<serde_json::Value> = views
        .iter()
        .map(|v| crate::show::json_job(v, now))
        .collect();
    Ok(serde_json::to_string_pretty(&all)?)
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

    #[test]
    fn lines_of_a_file_may_label_their_jobs_and_wait_for_others() {
        let g = super::graph_line("make -C lib");
        assert_eq!((g.label, g.command), (None, "make -C lib"));
        let g = super::graph_line("lib: make -C lib");
        assert_eq!(
            (g.label, g.command, g.after.len()),
            (Some("lib"), "make -C lib", 0)
        );
        let g = super::graph_line("test after lib,tools: make test");
        assert_eq!(
            (g.label, g.after, g.any),
            (Some("test"), vec!["lib", "tools"], false)
        );
        let g = super::graph_line("report after-any test: ./report");
        assert_eq!(
            (g.label, g.after, g.any),
            (Some("report"), vec!["test"], true)
        );
        // Commands that only look like it stay commands.
        for l in [
            "echo a: b c",
            "x y z: w",
            "sh -c 'echo: hi'",
            "a after: b",
            "a b c: d",
        ] {
            let g = super::graph_line(l);
            assert!(g.label.is_none() && g.command == l, "{l}");
        }
    }

    #[test]
    fn ranges_are_short() {
        assert_eq!(super::ranges(&[3]), "3");
        assert_eq!(super::ranges(&[3, 4, 5, 9, 11, 12]), "3-5,9,11-12");
    }
}

/// The exit status of a wait (README, "Exit statuses"): 0 when every job is Done; else,
/// of the first job that is not, its own exit status, or 122 when it has none.
fn exit_of(views: &[JobView]) -> i32 {
    match views.iter().find(|v| v.state != State::Done) {
        None => 0,
        Some(v) => match v.exit_code {
            Some(c) if c != 0 => c,
            _ => crate::exit::NO_STATUS,
        },
    }
}

/// A wait that ran out of time: the jobs go on.
#[derive(Debug)]
struct TimedOut(String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// Waits for every job, saying on standard error how each ends as it ends (unless
/// `quiet`), with progress on a terminal; None waits without limit. The jobs come back
/// in the order given.
fn wait_all(
    client: &Client,
    ids: &[u64],
    limit: Option<Duration>,
    quiet: bool,
) -> Result<Vec<JobView>> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut seen = std::collections::HashSet::new();
    let mut pending: Vec<u64> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    let mut over: std::collections::HashMap<u64, JobView> = Default::default();
    let mut shown_progress = false;
    while !pending.is_empty() {
        let left = limit.map(|l| l.saturating_sub(start.elapsed()));
        let secs = left.map(|l| l.as_secs().clamp(1, 5)).unwrap_or(5);
        let window = &pending[..pending.len().min(berth_server::api::WAIT_MAX)];
        let body = serde_json::to_vec(&serde_json::json!({ "jobs": window, "timeout": secs }))?;
        let got: Vec<JobView> = client.call("POST", "/v1/wait", Some(&body))?;
        let now = crate::show::now_ms();
        if shown_progress && !got.is_empty() {
            errpart!("\r\x1b[K");
            shown_progress = false;
        }
        for v in got {
            if !quiet {
                errln!("berth: {}", ended(&v, now));
            }
            over.insert(v.id, v);
        }
        pending.retain(|id| !over.contains_key(id));
        if pending.is_empty() {
            break;
        }
        if tty && !quiet {
            errpart!(
                "\r\x1b[Kwaiting for {} of {} job{} ({:.0?})",
                pending.len(),
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                Duration::from_secs(start.elapsed().as_secs())
            );
            shown_progress = true;
        }
        if left.is_some_and(|l| l.is_zero()) {
            if shown_progress {
                errpart!("\r\x1b[K");
            }
            return Err(TimedOut(format!(
                "{} of {} job{} not over after {:?} (they go on): {}",
                pending.len(),
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                limit.unwrap_or_default(),
                ranges(&pending)
            ))
            .into());
        }
    }
    if shown_progress {
        errpart!("\r\x1b[K");
    }
    Ok(ids.iter().filter_map(|id| over.get(id).cloned()).collect())
}

/// What an id given on the command line names: a job, or an array and its jobs.
enum Named {
    Job(u64),
    Array(u64, Vec<u64>),
}

/// Finds which ids name arrays (an array's id is one no job has).
fn resolve(c: &Client, ids: &[u64]) -> Result<Vec<Named>> {
    let mut arrays: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    for chunk in ids.chunks(berth_server::api::WAIT_MAX) {
        let body = serde_json::to_vec(&serde_json::json!({ "ids": chunk }))?;
        #[derive(serde::Deserialize)]
        struct Answer {
            arrays: std::collections::HashMap<u64, Vec<u64>>,
        }
        let a: Answer = c.call("POST", "/v1/resolve", Some(&body))?;
        arrays.extend(a.arrays);
    }
    Ok(ids
        .iter()
        .map(|id| match arrays.remove(id) {
            Some(jobs) => Named::Array(*id, jobs),
            None => Named::Job(*id),
        })
        .collect())
}

/// The jobs the ids name, arrays expanded, in order.
fn expand(named: &[Named]) -> Vec<u64> {
    named
        .iter()
        .flat_map(|n| match n {
            Named::Job(id) => vec![*id],
            Named::Array(_, jobs) => jobs.clone(),
        })
        .collect()
}

/// `berth wait JOB...`.
#[derive(clap::Args)]
pub struct Wait {
    #[command(flatten)]
    conn: Conn,
    /// Give up after SECONDS (exit 124); the jobs go on.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Say nothing of how the jobs ended (the exit status still does).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Print the jobs as JSON once all are over.
    #[arg(long)]
    json: bool,
    /// The jobs (an array's id: all its jobs).
    #[arg(required = true, value_name = "JOB|ARRAY")]
    jobs: Vec<u64>,
}

pub fn wait(w: Wait) -> Result<i32> {
    let c = w.conn.client();
    let ids = expand(&resolve(&c, &w.jobs)?);
    let views = match wait_all(&c, &ids, w.timeout.map(Duration::from_secs), w.quiet) {
        Ok(v) => v,
        Err(e) if e.downcast_ref::<TimedOut>().is_some() => {
            errln!("berth wait: {e}");
            return Ok(crate::exit::TIMEOUT);
        }
        Err(e) => return Err(e),
    };
    if w.json {
        outln!("{}", json_jobs(&views)?);
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
    /// The next page: the jobs listed after job ID (older than it).
    #[arg(long, value_name = "ID")]
    after_id: Option<u64>,
    /// The fields to print, without a heading, tab-separated (e.g. `-o id,state`); the
    /// fields: id, state, user, name, exit, reason, tasker, slot, submitted, started,
    /// ended, queued, elapsed, array, index, priority, resources, dir, log, command.
    #[arg(short = 'o', value_name = "FIELDS")]
    fields: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Only these jobs (an array's id: its jobs).
    #[arg(value_name = "JOB|ARRAY")]
    jobs: Vec<u64>,
}

pub fn list(l: List) -> Result<i32> {
    let fields = l
        .fields
        .as_deref()
        .map(crate::show::parse_fields)
        .transpose()?;
    let mut q = format!("/v1/jobs?limit={}", l.limit);
    for (k, v) in [("state", &l.state), ("user", &l.user), ("name", &l.name)] {
        if let Some(v) = v {
            q += &format!("&{k}={}", berth_server::http::encode(v));
        }
    }
    if let Some(b) = l.after_id {
        q += &format!("&below={b}");
    }
    let c = l.conn.client();
    let jobs: Vec<JobView> = if l.jobs.is_empty() {
        c.call("GET", &q, None)?
    } else {
        let mut all = Vec::new();
        for n in resolve(&c, &l.jobs)? {
            match n {
                Named::Array(a, _) => {
                    all.extend(c.call::<Vec<JobView>>("GET", &format!("{q}&array={a}"), None)?)
                }
                Named::Job(id) => {
                    all.push(c.call::<JobView>("GET", &format!("/v1/jobs/{id}"), None)?)
                }
            }
        }
        all
    };
    if l.json {
        outln!("{}", json_jobs(&jobs)?);
        return Ok(0);
    }
    print_jobs(&jobs, fields.as_deref());
    if l.jobs.is_empty() && jobs.len() as u64 >= l.limit as u64 && std::io::stdout().is_terminal() {
        if let Some(last) = jobs.last() {
            errln!(
                "berth list: the newest {} shown; the next page: berth list --after-id {}",
                jobs.len(),
                last.id
            );
        }
    }
    Ok(0)
}

/// Jobs as a table with a heading (the default fields), or bare values (`-o`).
fn print_jobs(jobs: &[JobView], fields: Option<&[&'static str]>) {
    let now = crate::show::now_ms();
    if let Some(fields) = fields {
        for j in jobs {
            let row: Vec<String> = fields
                .iter()
                .map(|f| crate::show::field(j, f, now))
                .collect();
            outln!("{}", row.join("\t"));
        }
        return;
    }
    let fields = crate::show::parse_fields(crate::show::LIST_DEFAULT).unwrap_or_default();
    let headings: Vec<&str> = fields.iter().map(|f| crate::show::heading(f)).collect();
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            fields
                .iter()
                .map(|f| crate::show::field(j, f, now))
                .collect()
        })
        .collect();
    let right: Vec<usize> = fields
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(**f, "id" | "exit" | "elapsed" | "queued" | "slot"))
        .map(|(i, _)| i)
        .collect();
    outln!("{}", crate::show::table(&headings, &rows, &right));
}

/// `berth info JOB...`.
#[derive(clap::Args)]
pub struct Info {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Only these fields, bare, one line per job, tab-separated (e.g. `-o state`: the
    /// one-word status a workflow manager asks for); the fields of `berth list -o`.
    #[arg(short = 'o', value_name = "FIELDS")]
    fields: Option<String>,
    /// The jobs (an array's id: its jobs counted by state; with -o, each of them).
    #[arg(required = true, value_name = "JOB|ARRAY")]
    jobs: Vec<u64>,
}

/// An array's jobs counted by state.
fn array_summary(array: u64, jobs: &[u64], views: &[JobView]) -> serde_json::Value {
    let count = |st: State| views.iter().filter(|v| v.state == st).count();
    serde_json::json!({
        "array": array,
        "jobs": jobs.len(),
        "ids": ranges(jobs),
        "states": {
            "Queued": count(State::Queued),
            "Running": count(State::Running),
            "Done": count(State::Done),
            "Failed": count(State::Failed),
        },
    })
}

pub fn info(i: Info) -> Result<i32> {
    let fields = i
        .fields
        .as_deref()
        .map(crate::show::parse_fields)
        .transpose()?;
    let c = i.conn.client();
    let named = resolve(&c, &i.jobs)?;
    // An array without -o: what its jobs are doing, counted by state.
    if fields.is_none() && named.iter().all(|n| matches!(n, Named::Array(..))) {
        let mut out = Vec::new();
        for n in &named {
            if let Named::Array(a, jobs) = n {
                let views: Vec<JobView> =
                    c.call("GET", &format!("/v1/jobs?array={a}&limit=1000000"), None)?;
                out.push(array_summary(*a, jobs, &views));
            }
        }
        if i.json {
            outln!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            for (k, a) in out.iter().enumerate() {
                if k > 0 {
                    outln!("");
                }
                outln!("{:>13}: {}", "array", a["array"]);
                outln!(
                    "{:>13}: {} ({})",
                    "jobs",
                    a["jobs"],
                    a["ids"].as_str().unwrap_or("")
                );
                for st in ["Queued", "Running", "Done", "Failed"] {
                    outln!("{st:>13}: {}", a["states"][st]);
                }
            }
        }
        return Ok(0);
    }
    let mut views = Vec::new();
    for id in expand(&named) {
        views.push(c.call::<JobView>("GET", &format!("/v1/jobs/{id}"), None)?);
    }
    if i.json {
        // One job: its object (as always); several: a list of them.
        match views.as_slice() {
            [one] => outln!(
                "{}",
                serde_json::to_string_pretty(&crate::show::json_job(one, crate::show::now_ms()))?
            ),
            many => outln!("{}", json_jobs(many)?),
        }
        return Ok(0);
    }
    if fields.is_some() {
        print_jobs(&views, fields.as_deref());
        return Ok(0);
    }
    let now = crate::show::now_ms();
    for (n, v) in views.iter().enumerate() {
        if n > 0 {
            outln!("");
        }
        let f = |name: &str| crate::show::field(v, name, now);
        let rows: Vec<(&str, String)> = vec![
            ("id", f("id")),
            ("state", f("state")),
            ("reason", f("reason")),
            (
                "why it waits",
                shown(v.why_waiting.as_deref().unwrap_or("-")).into_owned(),
            ),
            ("user", format!("{} (uid {})", f("user"), v.uid)),
            ("name", f("name")),
            ("command", f("command")),
            ("directory", f("dir")),
            (
                "resources",
                v.resources
                    .as_deref()
                    .map(|r| shown(r).into_owned())
                    .unwrap_or_else(|| "CORES/1 SLOTS/1 (default)".into()),
            ),
            ("log", f("log")),
            ("priority", f("priority")),
            (
                "array",
                v.array
                    .map(|(a, i)| format!("{a} index {i}"))
                    .unwrap_or_else(|| "-".into()),
            ),
            ("tasker", f("tasker")),
            ("slot", f("slot")),
            ("submitted", f("submitted")),
            (
                "started",
                match v.started_ms {
                    Some(_) => format!("{} (queued {})", f("started"), f("queued")),
                    None if v.state == State::Queued => format!("- (queued {})", f("queued")),
                    None => "-".into(),
                },
            ),
            (
                "ended",
                match v.ended_ms {
                    Some(_) if v.started_ms.is_some() => {
                        format!("{} (ran {})", f("ended"), f("elapsed"))
                    }
                    _ => f("ended"),
                },
            ),
            (
                "elapsed",
                if v.state == State::Running {
                    f("elapsed")
                } else {
                    "-".into()
                },
            ),
            ("exit status", f("exit")),
            (
                "time limit",
                v.time_limit_ms
                    .map(berth_server::daemon::limit_text)
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "after",
                if v.after.is_empty() {
                    "-".into()
                } else {
                    format!(
                        "{} ({})",
                        v.after
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        if v.after_any {
                            "once they have ended"
                        } else {
                            "once they are Done"
                        }
                    )
                },
            ),
            (
                "retries",
                if v.retries == 0 && v.attempts.is_empty() {
                    "-".into()
                } else {
                    format!("{} ({} used)", v.retries, v.attempts.len())
                },
            ),
            (
                "hook failures",
                if v.hook_failures.is_empty() {
                    "-".into()
                } else {
                    shown(&v.hook_failures.join("; ")).into_owned()
                },
            ),
        ];
        for (k, val) in rows {
            if matches!(k, "elapsed" | "time limit" | "after" | "retries") && val == "-" {
                continue;
            }
            outln!("{k:>13}: {val}");
        }
        for (n, a) in v.attempts.iter().enumerate() {
            outln!(
                "{:>13}: {} on {}, started {}, {} {}",
                format!("attempt {}", n + 1),
                shown(&a.reason),
                shown(a.tasker.as_deref().unwrap_or("-")),
                a.started_ms
                    .map(crate::show::local_time)
                    .unwrap_or_else(|| "-".into()),
                shown(&a.reason),
                crate::show::local_time(a.ended_ms)
            );
        }
    }
    Ok(0)
}

/// `berth stop JOB...`.
#[derive(clap::Args)]
pub struct Stop {
    #[command(flatten)]
    conn: Conn,
    /// The jobs (an array's id: all its jobs).
    #[arg(required = true, value_name = "JOB|ARRAY")]
    jobs: Vec<u64>,
}

pub fn stop(s: Stop) -> Result<i32> {
    let c = s.conn.client();
    let mut code = 0;
    for n in resolve(&c, &s.jobs)? {
        match n {
            Named::Job(id) => {
                match c.call::<serde_json::Value>("POST", &format!("/v1/jobs/{id}/stop"), None) {
                    Ok(v) => outln!("{}", v["message"].as_str().unwrap_or("")),
                    Err(e) => {
                        errln!("berth stop: {e}");
                        code = code.max(crate::exit_of_error(&e));
                    }
                }
            }
            Named::Array(a, jobs) => {
                let (mut stopped, mut over, mut refused) = (0, 0, Vec::new());
                for chunk in jobs.chunks(10_000) {
                    let body = serde_json::to_vec(&serde_json::json!({ "jobs": chunk }))?;
                    let answers: Vec<serde_json::Value> =
                        c.call("POST", "/v1/stop", Some(&body))?;
                    for a in answers {
                        match a["error"].as_str() {
                            None => stopped += 1,
                            Some(e) if e.contains("is not queued or running") => over += 1,
                            Some(e) => refused.push(e.to_string()),
                        }
                    }
                }
                outln!(
                    "array {a}: {stopped} job{} stopped or stopping, {over} over already",
                    if stopped == 1 { "" } else { "s" }
                );
                if let Some(e) = refused.first() {
                    errln!(
                        "berth stop: array {a}: {} job{} not stopped: {e}",
                        refused.len(),
                        if refused.len() == 1 { "" } else { "s" }
                    );
                    code = code.max(crate::exit::ERROR);
                }
            }
        }
    }
    Ok(code)
}

/// `berth exec`.
#[derive(clap::Args)]
pub struct Exec {
    #[command(flatten)]
    conn: Conn,
    /// Pass this command's standard input to the command (else it reads an end of file).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// This terminal in raw mode, as the command's (for a shell, an editor, `top`).
    #[arg(short = 't', long)]
    tty: bool,
    /// The running container job.
    job: u64,
    /// The command to run in its container.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

pub fn exec(x: Exec) -> Result<i32> {
    let client = x.conn.client();
    let listening = crate::interactive::listen(&client)?;
    let body = serde_json::to_vec(&serde_json::json!({
        "command": x.command,
        "terminal": listening.interactive,
        "stdin": x.interactive,
        "tty": x.tty,
    }))?;
    let v: serde_json::Value =
        client.call("POST", &format!("/v1/jobs/{}/exec", x.job), Some(&body))?;
    let req = v["req"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no exec number: {v}"))?;
    listening.exec(&client, req, x.interactive, x.tty)
}

/// `berth hold`, `berth release` and `berth rerun`.
#[derive(clap::Args)]
pub struct Jobs {
    #[command(flatten)]
    conn: Conn,
    /// The jobs.
    #[arg(required = true)]
    jobs: Vec<u64>,
}

/// Holds (`hold`) or releases (`release`) queued jobs.
pub fn hold(j: Jobs, action: &str) -> Result<i32> {
    let c = j.conn.client();
    let mut code = 0;
    for id in j.jobs {
        match c.call::<serde_json::Value>("POST", &format!("/v1/jobs/{id}/{action}"), None) {
            Ok(v) => outln!("{}", v["message"].as_str().unwrap_or("")),
            Err(e) => {
                errln!("berth {action}: {e}");
                code = code.max(crate::exit_of_error(&e));
            }
        }
    }
    Ok(code)
}

/// Submits a job identical to each of these; prints the new ids.
pub fn rerun(j: Jobs) -> Result<i32> {
    let c = j.conn.client();
    let mut code = 0;
    for id in j.jobs {
        match c.call::<serde_json::Value>("POST", &format!("/v1/jobs/{id}/rerun"), None) {
            Ok(v) => outln!("{}", v["id"]),
            Err(e) => {
                errln!("berth rerun: {e}");
                code = code.max(crate::exit_of_error(&e));
            }
        }
    }
    Ok(code)
}

/// `berth down`.
#[derive(clap::Args)]
pub struct Down {
    #[command(flatten)]
    conn: Conn,
    /// Give up waiting for the server to end after SECONDS (it goes on stopping).
    #[arg(long, value_name = "SECONDS", default_value_t = 90)]
    timeout: u64,
}

pub fn down(d: Down) -> Result<i32> {
    let c = d.conn.client();
    let v: serde_json::Value = c.call("POST", "/v1/down", None)?;
    errln!(
        "berth down: {}",
        v["message"].as_str().unwrap_or("stopping")
    );
    // Gone once nothing answers; a clean stop waits for what it started to be recorded.
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    loop {
        match c.call::<Vec<TaskerView>>("GET", "/v1/taskers", None) {
            Err(e) if e.downcast_ref::<crate::client::NoServer>().is_some() => break,
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(d.timeout) {
            if tty {
                errpart!("\r\x1b[K");
            }
            bail!(
                "the server still answers after {}s; it goes on stopping (its log says why \
                 it waits)",
                d.timeout
            );
        }
        if tty {
            errpart!(
                "\r\x1b[Kwaiting for the server to stop ({}s)",
                start.elapsed().as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if tty {
        errpart!("\r\x1b[K");
    }
    errln!("berth down: the server has stopped; running jobs run on");
    Ok(0)
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
    follow_log(&c, g.job, g.follow)?;
    Ok(0)
}

/// Copies job `job`'s log to standard output; with `follow`, as it grows, until the job
/// has ended (a job that has not started yet is waited for).
fn follow_log(c: &Client, job: u64, follow: bool) -> Result<()> {
    let v: JobView = c.call("GET", &format!("/v1/jobs/{job}"), None)?;
    let mut pos = 0u64;
    let mut out = std::io::stdout();
    let written = |r: std::io::Result<()>| {
        if let Err(e) = r {
            crate::closed_output(e);
        }
    };
    // From another host the log is read by the job's tasker, as the job's owner; here,
    // from the file itself.
    let remote = c.is_remote();
    // Once the job is over, one more read takes what it wrote last.
    let mut over = false;
    loop {
        let mut size = None;
        if remote {
            let part: berth_proto::LogPart =
                c.call("GET", &format!("/v1/jobs/{job}/log?offset={pos}"), None)?;
            match part.error {
                Some(e) if !follow => bail!("{e}"),
                Some(_) => {}
                None => {
                    let data = part.data;
                    pos += data.len() as u64;
                    written(out.write_all(&data).and_then(|()| out.flush()));
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
            written(out.write_all(&buf).and_then(|()| out.flush()));
            size = std::fs::metadata(&v.log).ok().map(|m| m.len());
        } else if !follow {
            bail!(
                "job {job}: no log at {} (yet), or it is not readable by you",
                v.log
            );
        }
        if !follow || (over && size.is_none_or(|s| s <= pos)) {
            return Ok(());
        }
        if !over {
            let now: JobView = c.call("GET", &format!("/v1/jobs/{job}/wait?timeout=1"), None)?;
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
        outln!("{}", serde_json::to_string_pretty(&ts)?);
        return Ok(0);
    }
    outln!(
        "{:16}  {:12}  {:>5}  {:>7}  FREE",
        "NAME",
        "HOST",
        "SLOTS",
        "RUNNING"
    );
    for x in &ts {
        outln!(
            "{:16}  {:12}  {:>5}  {:>7}  {}",
            x.name,
            x.host,
            x.slots,
            x.running,
            x.free
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
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows.values().collect::<Vec<_>>())?
        );
        return Ok(0);
    }
    outln!("{:16}  {:20}  NOT OFFERED BY", "NAME", "OFFERED BY");
    for r in rows.values() {
        let refused: Vec<String> = r
            .refused_by
            .iter()
            .map(|(t, w)| format!("{t}: {w}"))
            .collect();
        outln!(
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
