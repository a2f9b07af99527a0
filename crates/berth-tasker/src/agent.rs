//! A tasker's agent: what it offers, and the jobs the server hands it, each run on a
//! thread of its own (kept in a pool for the next job) in its slot, through the container
//! life cycle when the job asks for `Container:NAME`.

use crate::lifecycle::{self, End, Host, Job, Outcome, Stop};
use crate::log::LogTarget;
use berth_container::check::{self, Policy};
use berth_proto::{Assignment, FromTasker, JobEnd, ToTasker};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running job: its slot, its stop handle, and why it ends with this process if it
/// must.
type RunningJob = (u32, Stop, Option<&'static str>);

/// The most `berth exec` a tasker runs at once.
const MAX_EXECS: usize = 64;

/// How an agent reports to its server.
pub type Report = Box<dyn Fn(FromTasker) + Send + Sync>;

/// A tasker's agent.
pub struct Agent {
    /// The tasker's name.
    pub name: String,
    /// What every job on this host shares.
    pub host: Host,
    /// `SWD/containers`.
    pub containers_dir: PathBuf,
    /// Between SIGTERM and SIGKILL for jobs without a container.
    pub grace: Duration,
    /// Job slots.
    pub slots: u32,
    /// Resources given on the command line (`-r`), added to the host's own.
    pub extra: String,
    /// Running jobs: slot, stop handle, and why the job ends with this process if it
    /// must (interactive, or no keeper).
    running: Mutex<HashMap<u64, RunningJob>>,
    /// `berth exec` running here.
    execs: std::sync::atomic::AtomicUsize,
    /// The keeper, parent of the jobs without a container (see [`crate::keeper`]).
    keeper: std::sync::OnceLock<crate::keeper::Keeper>,
    /// Stopping: jobs sent now are declined, to be queued again.
    closing: std::sync::atomic::AtomicBool,
    /// The server said it sends nothing more to this process.
    bye: std::sync::atomic::AtomicBool,
    /// Ends not yet acknowledged by the server, repeated in every hello.
    unacked: Mutex<HashMap<u64, JobEnd>>,
    /// This process's random id, in every hello.
    pub incarnation: String,
    /// None: offer every configuration that passes its checks; Some: only these.
    only: Mutex<Option<Vec<String>>>,
    /// The plain-jobs record, one 64-byte line per slot.
    plain: Mutex<Option<std::fs::File>>,
    report: Report,
    /// The jobs' threads.
    pool: crate::pool::Pool,
    /// Job owners looked up lately, with when.
    identities: Mutex<HashMap<u32, (berth_sys::Identity, std::time::Instant)>>,
    /// Where the jobs' cgroups are, or why there are none.
    pub cgroups: Result<crate::cgroup::Cgroups, String>,
}

/// How long a looked-up job owner is used for.
const IDENTITY_TTL: Duration = Duration::from_secs(10);

/// The host's own resources (SPEC §7).
pub fn host_resources(name: &str, slots: u32) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    let tmp = berth_sys::free_mb(&std::env::temp_dir()).unwrap_or(0);
    let host = berth_sys::short_hostname();
    let arch = std::env::consts::ARCH;
    let os = std::env::consts::OS;
    format!(
        "CORES/{cores} RAM/{ram} RAMTOTAL#{ram} SLOTS/{slots} TMP#{tmp} HOST NAME ARCH OS OSCLASS MACHINE \
         HOST:{host} NAME:{name} ARCH:{arch} OS:{os} OSCLASS:unix MACHINE:{arch}"
    )
}

impl Agent {
    /// An agent; `report` carries its messages to the server.
    // Each argument is one setting of `berth tasker`; a struct for them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        host: Host,
        containers_dir: PathBuf,
        slots: u32,
        extra: String,
        grace: Duration,
        report: Report,
        cgroups: crate::cgroup::Mode,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            name: name.to_string(),
            containers_dir,
            grace,
            slots,
            extra,
            running: Mutex::new(HashMap::new()),
            execs: std::sync::atomic::AtomicUsize::new(0),
            keeper: std::sync::OnceLock::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            bye: std::sync::atomic::AtomicBool::new(false),
            unacked: Mutex::new(HashMap::new()),
            incarnation: incarnation(),
            only: Mutex::new(None),
            plain: Mutex::new(None),
            report,
            pool: crate::pool::Pool::default(),
            identities: Mutex::new(HashMap::new()),
            cgroups: crate::cgroup::Cgroups::open(name, &host.state_dir, cgroups),
            host,
        })
    }

    fn plain_file(&self) -> PathBuf {
        self.host.state_dir.join("plain-jobs")
    }

    /// Records that job `job` runs as process `pid` in `slot` (with the process's start time,
    /// to tell it from a later process of the same pid).
    fn record_process(&self, slot: u32, job: &str, pid: u32) {
        let st = berth_sys::start_time(pid).unwrap_or(0);
        self.record_slot(slot, &format!("{job} {pid} {st}"));
    }

    /// Writes slot `slot`'s line of the plain-jobs record: 64 bytes at a fixed place, one
    /// pwrite into the page cache (the record matters while the machine stays up).
    fn record_slot(&self, slot: u32, text: &str) {
        use std::os::unix::fs::FileExt;
        if let Some(f) = self.plain.lock().expect("lock").as_ref() {
            let mut line = format!("{text:<63}").into_bytes();
            line.truncate(63);
            line.push(b'\n');
            let _ = f.write_at(&line, slot as u64 * 64);
        }
    }

    /// Ends the jobs without a container that an earlier run of this tasker left running
    /// (their process group, if the recorded pid still has its start time), and says so.
    pub fn end_leftovers(&self, skip: &[u64], note: &mut dyn FnMut(String)) -> usize {
        let path = self.plain_file();
        let mut n = 0;
        // Line N is slot N's.
        for (slot, line) in std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .enumerate()
        {
            let mut w = line.split_whitespace().map(|x| x.parse::<u64>().ok());
            let (Some(Some(job)), Some(Some(pid)), Some(Some(st))) = (w.next(), w.next(), w.next())
            else {
                continue;
            };
            let pid = pid as u32;
            if skip.contains(&job) {
                continue; // taken over
            }
            if berth_sys::start_time(pid) == Some(st) {
                berth_sys::kill_group(pid, libc::SIGTERM);
                let deadline = std::time::Instant::now() + self.grace;
                while berth_sys::group_alive(pid) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                berth_sys::kill_group(pid, libc::SIGKILL);
                note(format!(
                    "job {job}: ended its process group {pid}, left running by an earlier run of this tasker"
                ));
                n += 1;
            }
            // What the job started outside its group is in its slot's cgroup.
            if let Ok(cg) = &self.cgroups {
                cg.end(slot as u32);
            }
        }
        let opened = std::fs::create_dir_all(&self.host.state_dir).and_then(|_| {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            f.set_len(self.slots as u64 * 64)?;
            Ok(f)
        });
        match opened {
            Ok(f) => *self.plain.lock().expect("lock") = Some(f),
            Err(e) => note(format!(
                "{}: {e}; jobs without a container are not recorded",
                path.display()
            )),
        }
        n
    }

    /// A file of the SWD (the parent of its containers directory).
    fn swd_file(&self, name: &str) -> PathBuf {
        self.containers_dir
            .parent()
            .unwrap_or(&self.containers_dir)
            .join(name)
    }

    fn class_table(&self) -> PathBuf {
        self.swd_file("taskerClass.table")
    }

    /// `SWD/taskers.tcl`, the tasker definitions.
    fn definitions_file(&self) -> PathBuf {
        self.swd_file(crate::definitions::FILE)
    }

    /// Tells the keeper every end the server has recorded, before this process stops: a
    /// keeper left with nothing to keep ends.
    pub fn forget_all(&self) {
        if let Some(k) = self.keeper.get() {
            k.forget_all();
        }
    }

    /// Watches SWD/taskerClass.table, SWD/taskers.tcl and the containers directory, and
    /// says hello again when one changes, so that the server learns the new resources;
    /// tells the keeper the Forgets that found no request to go with.
    pub fn watch(self: &Arc<Self>) {
        let me = self.clone();
        std::thread::spawn(move || {
            let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let stamps = || {
                (
                    stamp(&me.class_table()),
                    stamp(&me.definitions_file()),
                    stamp(&me.containers_dir),
                )
            };
            let mut last = stamps();
            loop {
                std::thread::sleep(crate::keeper::FORGET_WITHIN);
                if let Some(k) = me.keeper.get() {
                    k.forget_waiting();
                }
                let now = stamps();
                if now != last {
                    last = now;
                    (me.report)(me.hello());
                }
            }
        });
    }

    /// Limits the configurations offered to these names (None: every one that passes).
    pub fn set_containers(&self, only: Option<Vec<String>>) {
        *self.only.lock().expect("lock") = only;
    }

    /// The configurations that pass every check here (`--containers auto`), and why the
    /// others do not.
    pub fn containers(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut ok = Vec::new();
        let mut refused = Vec::new();
        let only = self.only.lock().expect("lock").clone();
        for name in check::list_names(&self.containers_dir).unwrap_or_default() {
            if only.as_ref().is_some_and(|o| !o.contains(&name)) {
                refused.push((name, "not in this tasker's --containers list".to_string()));
                continue;
            }
            let verdict = check::load(&self.containers_dir, &name)
                .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
                .and_then(|cfg| {
                    if cfg.has_root_hook() && berth_sys::euid() != 0 {
                        return Err("it has root hooks and this tasker does not run as root".into());
                    }
                    check::check_hooks(
                        &cfg,
                        Policy {
                            key: self.host.key.as_ref(),
                        },
                    )
                    .map(|_| ())
                    .map_err(|r| r.to_string())
                });
            match verdict {
                Ok(()) => ok.push(name),
                Err(why) => refused.push((name, why)),
            }
        }
        (ok, refused)
    }

    /// The hello that (re)introduces this tasker: its resources now, and its running jobs.
    pub fn hello(&self) -> FromTasker {
        let (ok, mut refused) = self.containers();
        let mut res = host_resources(&self.name, self.slots);
        for c in &ok {
            res += &format!(" Container:{c}");
        }
        // SWD/taskers.tcl, SWD/taskerClass.table, then -r: later terms replace earlier
        // ones of a name.
        match crate::definitions::read(&self.definitions_file(), &self.name) {
            Ok(Some(d)) if !d.resources.is_empty() => {
                res += " ";
                res += &d.resources;
            }
            Ok(_) => {}
            Err(errors) => {
                for e in errors {
                    berth_sys::say!("berth tasker {}: {e}", self.name);
                }
                berth_sys::say!(
                    "berth tasker {}: the tasker definitions are ignored until that is fixed",
                    self.name
                );
            }
        }
        if let Some(line) = std::fs::read_to_string(self.class_table())
            .ok()
            .and_then(|t| berth_resources::class_table_entry(&t, &self.name).map(str::to_string))
        {
            match berth_resources::Offer::parse(&line) {
                Ok(_) => {
                    res += " ";
                    res += &line;
                }
                Err(e) => berth_sys::say!(
                    "berth tasker {}: {}: {e}; line ignored",
                    self.name,
                    self.class_table().display()
                ),
            }
        }
        if !self.extra.trim().is_empty() {
            res += " ";
            res += &self.extra;
        }
        // Container:NAME is offered only for a configuration that passes every check here,
        // whatever -r, taskers.tcl or the class table say: a job matched to it would
        // otherwise fail, or, with an older server, run bare.
        if let Ok(mut offer) = berth_resources::Offer::parse(&res) {
            let named: Vec<String> = offer
                .iter()
                .filter_map(|(k, _)| k.strip_prefix(berth_resources::CONTAINER))
                .filter(|c| !ok.iter().any(|o| o == c))
                .map(str::to_string)
                .collect();
            for c in named {
                offer.remove(&format!("{}{c}", berth_resources::CONTAINER));
                if !refused.iter().any(|(n, _)| *n == c) {
                    refused.push((
                        c.clone(),
                        format!(
                            "named in this tasker's resources, but there is no configuration {}",
                            self.containers_dir.join(format!("{c}.cfg")).display()
                        ),
                    ));
                }
            }
            res = offer.to_string();
        }
        // Ends first, then what runs: a job that ends in between is in one list or both,
        // never in neither.
        let ended = self
            .unacked
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        let running = self
            .running
            .lock()
            .expect("lock")
            .iter()
            .map(|(j, (s, _, _))| (*j, *s))
            .collect();
        FromTasker::Hello {
            name: self.name.clone(),
            host: berth_sys::short_hostname(),
            resources: res,
            slots: self.slots,
            containers_refused: refused,
            running,
            ended,
            incarnation: self.incarnation.clone(),
        }
    }

    /// Handles a message from the server.
    pub fn handle(self: &Arc<Self>, m: ToTasker) {
        match m {
            ToTasker::Ack(jobs) => {
                {
                    let mut u = self.unacked.lock().expect("lock");
                    for j in &jobs {
                        u.remove(j);
                    }
                }
                // The server has them: the keeper keeps their statuses no longer.
                if let Some(k) = self.keeper.get() {
                    k.forget(jobs);
                }
            }
            ToTasker::Bye => self.bye.store(true, std::sync::atomic::Ordering::SeqCst),
            ToTasker::ReadLog(r) => {
                // Off the link's thread: a slow filesystem must not hold the tasker's
                // messages.
                let me = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("berth-log-read".into())
                    .spawn(move || (me.report)(FromTasker::Log(read_log(&r))));
                if let Err(e) = spawned {
                    berth_sys::say!("berth tasker {}: no thread to read a log: {e}", self.name);
                }
            }
            ToTasker::Stop(job) => {
                if let Some((_, s, _)) = self.running.lock().expect("lock").get(&job) {
                    s.trigger();
                }
            }
            ToTasker::Exec(x) => {
                // Off the link's thread: it lasts as long as the user's command. A few at
                // once on a tasker: each is a thread, a terminal and a hook.
                let req = x.req;
                let busy = self.execs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if busy >= MAX_EXECS {
                    self.execs.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    (self.report)(FromTasker::ExecEnded {
                        req,
                        exit_code: None,
                        error: Some(format!(
                            "this tasker runs {MAX_EXECS} berth exec already; try again later"
                        )),
                    });
                    return;
                }
                let me = self.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("berth-exec".into())
                        .spawn(move || {
                            let slot = me.running.lock().expect("lock").get(&x.job).map(|r| r.0);
                            let r = match slot {
                                Some(slot) => {
                                    let cg =
                                        me.cgroups.as_ref().ok().and_then(|c| c.slot(slot).ok());
                                    let job = x.job;
                                    let still = || {
                                        me.running.lock().expect("lock").get(&job).map(|r| r.0)
                                            == Some(slot)
                                    };
                                    lifecycle::exec(
                                        &me.host,
                                        &me.containers_dir,
                                        &x.job.to_string(),
                                        &x,
                                        cg.as_deref(),
                                        &still,
                                    )
                                }
                                None => Err(format!("job {} does not run on this tasker", x.job)),
                            };
                            me.execs.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            let (exit_code, error) = match r {
                                Ok(c) => (Some(c), None),
                                Err(e) => (None, Some(e)),
                            };
                            (me.report)(FromTasker::ExecEnded {
                                req,
                                exit_code,
                                error,
                            });
                        });
                if let Err(e) = spawned {
                    self.execs.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    (self.report)(FromTasker::ExecEnded {
                        req,
                        exit_code: None,
                        error: Some(format!("no thread for berth exec: {e}")),
                    });
                }
            }
            ToTasker::StopBecause(job, why) => {
                if let Some((_, s, _)) = self.running.lock().expect("lock").get(&job) {
                    s.trigger_because(&why);
                }
            }
            ToTasker::Run(a) => {
                let a = *a;
                if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    // Not started, so queued again: this process is stopping.
                    (self.report)(FromTasker::Declined(vec![a.job]));
                    return;
                }
                let stop = match Stop::new() {
                    Ok(s) => s,
                    Err(e) => {
                        (self.report)(FromTasker::Ended(end_of(
                            a.job,
                            failed(format!("cannot make a stop handle: {e}")),
                        )));
                        return;
                    }
                };
                // What cannot outlive this process: an interactive job (its terminal is
                // relayed here), and a job without a container when there is no keeper.
                let bound = if a.interactive.is_some() {
                    Some("stopped: its tasker stopped, and its terminal with it")
                } else if a.container.is_none() && self.keeper.get().is_none() {
                    Some("stopped: its tasker stopped, and it had no keeper to outlive it")
                } else {
                    None
                };
                let (job, slot) = (a.job, a.slot);
                self.start(job, slot, stop, bound, move |me, stop| me.run(a, stop));
            }
        }
    }

    /// Runs `f` on a thread of its own as job `job` in `slot`, and reports its end.
    fn start(
        self: &Arc<Self>,
        job: u64,
        slot: u32,
        stop: Stop,
        bound: Option<&'static str>,
        f: impl FnOnce(&Agent, &Stop) -> Outcome + Send + 'static,
    ) {
        self.running
            .lock()
            .expect("lock")
            .insert(job, (slot, stop.clone(), bound));
        let me = self.clone();
        self.pool.run(move || {
            let mut out = f(&me, &stop);
            // Stopped by its tasker rather than by request: says so.
            if let (Some(why), Some(f)) = (stop.reason(), &out.failure) {
                if let Some(rest) = f.strip_prefix("stopped by request") {
                    out.failure = Some(format!("{why}{rest}"));
                }
            }
            let end = end_of(job, out);
            // Kept until acknowledged, and before it leaves the running list.
            me.unacked.lock().expect("lock").insert(job, end.clone());
            me.running.lock().expect("lock").remove(&job);
            (me.report)(FromTasker::Ended(end));
        });
    }

    /// Takes over a container job that an earlier process of this tasker left running:
    /// it is in the hello's running list, and ends as any job does.
    pub fn adopt(self: &Arc<Self>, a: lifecycle::Adopted) -> std::io::Result<()> {
        let stop = Stop::new()?;
        let (job, slot) = (a.job, a.slot);
        self.start(job, slot, stop, None, move |me, stop| {
            let out = lifecycle::resume(&me.host, a, stop);
            if let Ok(cg) = &me.cgroups {
                cg.end(slot);
            }
            out
        });
        Ok(())
    }

    /// Uses `keeper` for the jobs without a container from now on, and takes over what it
    /// kept from an earlier process of this tasker: jobs still running (or ended, not yet
    /// reaped) are watched as any job; ends not yet recorded by the server go in the next
    /// hello. Returns the jobs taken over.
    pub fn use_keeper(
        self: &Arc<Self>,
        keeper: crate::keeper::Keeper,
        kept: Vec<crate::keeper::Kept>,
    ) -> std::io::Result<Vec<u64>> {
        if self.keeper.set(keeper).is_err() {
            return Err(std::io::Error::other("this tasker has a keeper already"));
        }
        let mut taken = Vec::new();
        for k in kept {
            taken.push(k.job);
            if let Some(status) = k.status {
                use std::os::unix::process::ExitStatusExt;
                let out =
                    crate::plain::outcome_of(std::process::ExitStatus::from_raw(status), k.stopped);
                self.unacked
                    .lock()
                    .expect("lock")
                    .insert(k.job, end_of(k.job, out));
                continue;
            }
            let stop = Stop::new()?;
            self.record_process(k.slot, &k.job.to_string(), k.pid);
            let (job, slot) = (k.job, k.slot);
            self.start(job, slot, stop, None, move |me, stop| {
                let Some(keeper) = me.keeper.get() else {
                    return failed("no keeper".into());
                };
                let out = crate::plain::resume(&k, me.grace, stop, keeper);
                me.record_slot(slot, "");
                if let Ok(cg) = &me.cgroups {
                    cg.end(slot);
                }
                out
            });
        }
        Ok(taken)
    }

    /// Asks every running job to stop; with a `reason`, its failure says that rather than
    /// "stopped by request".
    pub fn stop_all(&self, reason: Option<&str>) -> usize {
        let r = self.running.lock().expect("lock");
        for (_, s, _) in r.values() {
            match reason {
                Some(why) => s.trigger_because(why),
                None => s.trigger(),
            }
        }
        r.len()
    }

    /// This tasker process stops but its jobs go on: no job starts any more (one sent now
    /// is declined, and queued again); a job that cannot outlive it (interactive, whose
    /// terminal goes with it, or without a container when there is no keeper) is
    /// stopped. Returns how many jobs are left running.
    pub fn close(&self) -> usize {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let r = self.running.lock().expect("lock");
        for (_, s, bound) in r.values() {
            if let Some(why) = bound {
                s.trigger_because(why);
            }
        }
        r.len()
    }

    /// Whether the server has said it sends nothing more (after [`FromTasker::Leaving`]).
    pub fn said_bye(&self) -> bool {
        self.bye.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether every running job only waits for its command (so that this process may
    /// stop and leave it to the next), and every end has been acknowledged.
    pub fn settled(&self) -> bool {
        self.unacked.lock().expect("lock").is_empty()
            && self
                .running
                .lock()
                .expect("lock")
                .values()
                .all(|(_, s, _)| s.steady())
    }

    /// How many jobs run.
    pub fn running(&self) -> usize {
        self.running.lock().expect("lock").len()
    }

    /// The user `uid`, from the system's user database at most `IDENTITY_TTL` ago: a
    /// lookup reads /etc/passwd and /etc/group (or asks NSS), and a user's jobs come in
    /// thousands. A change of a user's groups reaches their jobs within that time.
    fn owner(&self, uid: u32) -> Result<berth_sys::Identity, berth_sys::IdentityError> {
        let now = std::time::Instant::now();
        if let Some((who, at)) = self.identities.lock().expect("lock").get(&uid) {
            if now.duration_since(*at) < IDENTITY_TTL {
                return Ok(who.clone());
            }
        }
        let who = berth_sys::identity_by_uid(uid)?;
        let mut cache = self.identities.lock().expect("lock");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(uid, (who.clone(), now));
        Ok(who)
    }

    fn run(&self, a: Assignment, stop: &Stop) -> Outcome {
        let owner = match self.owner(a.uid) {
            Ok(o) => o,
            Err(e) => return failed(format!("the job's owner: {e}")),
        };
        let request = match a
            .resources
            .as_deref()
            .map(berth_resources::parse)
            .transpose()
        {
            Ok(r) => r,
            Err(e) => return failed(e.to_string()),
        };
        // The configuration the server matched here, and only that: a request may name
        // several as alternatives. A request that may run in one but came without a match
        // (from an older server) is refused rather than run bare.
        let possible = match request.as_ref().map(|r| r.containers()).transpose() {
            Ok(Some(p)) => p,
            Ok(None) => berth_resources::Containers {
                bare: true,
                ..Default::default()
            },
            Err(e) => return failed(e.to_string()),
        };
        let containers: Vec<String> = match &a.container {
            Some(c) if possible.names.contains(c) => vec![c.clone()],
            Some(c) => {
                return failed(format!(
                    "the server matched Container:{c}, which the request does not name"
                ))
            }
            None if possible.bare => Vec::new(),
            None => {
                return failed(
                    "the job may run only in a container, but the server matched none; \
                     it is not run bare"
                        .to_string(),
                )
            }
        };
        let job = Job {
            id: a.job.to_string(),
            owner,
            dir: PathBuf::from(&a.dir),
            env: a
                .env
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            command: a.command.into_iter().map(Into::into).collect(),
            slot: a.slot,
            request,
            log: LogTarget::File(PathBuf::from(a.log)),
            interactive: a.interactive,
            cgroup: None,
            umask: a.umask,
        };
        // Every process the job starts joins its cgroup, and ends with the job.
        let mut job = job;
        if let Ok(cg) = &self.cgroups {
            cg.end(job.slot);
            match cg.slot(job.slot) {
                Ok(c) => job.cgroup = Some(c),
                Err(e) => return failed(format!("cannot make the slot's cgroup: {e}")),
            }
        }
        let out = self.run_job(&job, &containers, stop);
        if let (Some(_), Ok(cg)) = (job.cgroup.take(), &self.cgroups) {
            let left = cg.end(job.slot);
            if left > 0 {
                if let LogTarget::File(_) = job.log {
                    if let Ok(sink) = crate::log::Sink::open(&job.log, &job.owner) {
                        sink.note(&format!(
                            "job {}: ended {left} process(es) it left running",
                            job.id
                        ));
                    }
                }
            }
        }
        out
    }

    fn run_job(&self, job: &Job, containers: &[String], stop: &Stop) -> Outcome {
        match containers {
            [] => {
                // A record of the process, so that a tasker killed meanwhile ends it when
                // it starts again, instead of leaving it running unwatched. One file per
                // slot, rewritten in place: no file is made or removed per job.
                let out = crate::plain::run(job, self.grace, stop, self.keeper.get(), &mut |pid| {
                    self.record_process(job.slot, &job.id, pid);
                });
                self.record_slot(job.slot, "");
                out
            }
            [name] => match check::load(&self.containers_dir, name) {
                Ok(cfg) => lifecycle::run(&self.host, job, &cfg, stop),
                Err(e) => failed(e.to_string()),
            },
            more => failed(format!(
                "the job asks for {} containers ({}); a job runs in one",
                more.len(),
                more.join(", ")
            )),
        }
    }
}

/// Part of a job's log, read as its owner (never blocking, a regular file only).
fn read_log(r: &berth_proto::LogRead) -> berth_proto::LogPart {
    use std::io::{Read, Seek};
    let part = |data: Vec<u8>, size: u64, error: Option<String>| berth_proto::LogPart {
        req: r.req,
        data,
        size,
        error,
    };
    let owner = match berth_sys::identity_by_uid(r.uid) {
        Ok(o) => o,
        Err(e) => return part(Vec::new(), 0, Some(format!("the job's owner: {e}"))),
    };
    let read = berth_sys::as_user(&owner, || -> std::io::Result<(Vec<u8>, u64)> {
        let mut o = std::fs::File::options();
        o.read(true);
        let mut f = crate::log::open_regular(&mut o, std::path::Path::new(&r.path))?;
        let size = f.metadata()?.len();
        f.seek(std::io::SeekFrom::Start(r.offset.min(size)))?;
        let mut data = Vec::new();
        f.take(u64::from(r.max.min(1 << 20)))
            .read_to_end(&mut data)?;
        Ok((data, size))
    });
    match read {
        Ok((data, size)) => part(data, size, None),
        Err(e) => part(Vec::new(), 0, Some(format!("job {}: {e}", r.job))),
    }
}

fn incarnation() -> String {
    let mut raw = [0u8; 12];
    // Two processes with one incarnation could make the server run a job twice: no
    // fallback to a fixed value.
    berth_sys::random_bytes(&mut raw)
        .expect("getrandom(2) failed: no random bytes for the tasker's incarnation");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn failed(why: String) -> Outcome {
    Outcome::refused(why)
}

fn end_of(job: u64, o: Outcome) -> JobEnd {
    JobEnd {
        job,
        exit_code: match o.end {
            End::NotRun => None,
            _ => Some(o.exit_code()),
        },
        failure: o.failure,
        hook_failures: o.after_failures,
    }
}
