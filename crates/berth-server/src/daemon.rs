//! The server daemon around the core: one actor thread owns the core and the store and
//! handles every event; API threads and taskers send it events and wait for answers.
//!
//! Each turn of the actor takes every event waiting, writes them in one transaction and
//! commits (one fsync for all of them), then answers, schedules, writes the dispatches in a
//! second transaction and only then hands the jobs to their taskers. So an answer to a
//! submission means the jobs are on disk, and a job a tasker runs is recorded as Running.

use crate::core::{Core, Dispatch, StopWhat};
use berth_proto::{
    Assignment, FromTasker, JobEnd, JobView, State, SubmitRequest, Submitted, TaskerView, ToTasker,
};
use berth_resources::Offer;
use berth_store::{Batch, Filter, NewJob, SqlError, Store, StoreError};
use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Who is asking, as the kernel says (peer credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Login name.
    pub user: String,
    /// May stop others' jobs, change taskers, reload configurations.
    pub admin: bool,
}

/// How the server reaches a tasker.
pub trait TaskerLink: Send {
    /// Sends a message; false when the tasker is gone.
    fn send(&self, m: ToTasker) -> bool;
    /// Which connection this is, so that the end of an old one does not undo a new one.
    fn serial(&self) -> u64 {
        0
    }
    /// The turn is over: what was sent during it may go now, together.
    fn flush(&self) {}
    /// What the tasker says, for the actor to read itself (taken once, when the link
    /// connects); None when the tasker sends its messages as events.
    fn inbox(&mut self) -> Option<Box<dyn TaskerInbox>> {
        None
    }
}

/// What a tasker's connection says, read by the actor itself when its socket is ready: no
/// thread between the tasker and the server's decisions, and no wake of one per message.
pub trait TaskerInbox: Send {
    /// The descriptor to watch for something to read.
    fn fd(&self) -> std::os::fd::BorrowedFd<'_>;
    /// Takes what has arrived, never waiting, adding its messages to `out`: Ok(true) when
    /// something came (a keepalive counts), Err(why) when the connection is over.
    fn read(&mut self, out: &mut Vec<FromTasker>) -> Result<bool, String>;
    /// Ends the connection (its writer then ends too).
    fn close(&self);
}

/// Why a server could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The actor's wait on its connections (epoll, eventfd).
    #[error("the server's wait on its connections (epoll, eventfd): {0}; raise the limit of open files (ulimit -n)")]
    Wait(#[from] std::io::Error),
}

/// The taskers' connections the actor reads itself, and what wakes it from its wait.
struct Watch {
    poller: berth_sys::Poller,
    waker: Arc<berth_sys::Waker>,
    /// By key: the tasker's name, its link's serial, the inbox, when it was last heard.
    inboxes: HashMap<u64, (String, u64, Box<dyn TaskerInbox>, Instant)>,
    next_key: u64,
    /// When silent connections were last looked for.
    checked: Instant,
    keys: Vec<u64>,
    /// Events for the next turn (connections that could not be watched).
    later: Vec<Event>,
}

/// The key of the waker in the watch.
const WAKER_KEY: u64 = 0;

/// How long a tasker's connection may say nothing (not even a keepalive, which it sends
/// every `tcp::HEARTBEAT`, 2 s) before it is taken as gone.
pub const TASKER_SILENCE: Duration = Duration::from_secs(5);

impl Watch {
    fn new(waker: Arc<berth_sys::Waker>) -> std::io::Result<Watch> {
        let poller = berth_sys::Poller::new()?;
        poller.add(waker.fd(), WAKER_KEY)?;
        Ok(Watch {
            poller,
            waker,
            inboxes: HashMap::new(),
            next_key: WAKER_KEY + 1,
            checked: Instant::now(),
            keys: Vec::new(),
            later: Vec::new(),
        })
    }

    /// Watches a tasker's connection; a connection that cannot be watched is closed (its
    /// tasker comes back on a new one), and is gone in the next turn.
    fn add(&mut self, name: String, serial: u64, inbox: Box<dyn TaskerInbox>) {
        let key = self.next_key;
        self.next_key += 1;
        if let Err(e) = self.poller.add(inbox.fd(), key) {
            berth_sys::say!("berth server: tasker {name}: cannot watch its connection: {e}");
            inbox.close();
            self.later.push(Event::Gone(name, serial, Instant::now()));
            return;
        }
        self.inboxes
            .insert(key, (name, serial, inbox, Instant::now()));
        // What came with the handshake was read with it, and no new byte may come to make
        // the socket ready: read now, for the next turn.
        let mut later = std::mem::take(&mut self.later);
        self.read(key, &mut later);
        self.later = later;
    }

    /// Reads what connection `key` has, adding its messages to `batch`, or its end.
    fn read(&mut self, key: u64, batch: &mut Vec<Event>) {
        let Some((name, serial, inbox, heard)) = self.inboxes.get_mut(&key) else {
            return;
        };
        let mut got = Vec::new();
        let r = inbox.read(&mut got);
        let now = Instant::now();
        if got.is_empty() {
            if let Ok(true) = r {
                *heard = now;
            }
        } else {
            *heard = now;
            batch.extend(
                got.into_iter()
                    .map(|m| Event::FromLink(name.clone(), *serial, m)),
            );
        }
        if let Err(why) = r {
            berth_sys::say!("berth server: tasker {name}: {why}");
            // A connection that ended was there until it ended: its tasker's grace counts
            // from now, as a silent one's counts from when it was last heard.
            self.drop_inbox(key, Some(now), batch);
        }
    }

    fn drop_inbox(&mut self, key: u64, ended: Option<Instant>, batch: &mut Vec<Event>) {
        if let Some((name, serial, inbox, heard)) = self.inboxes.remove(&key) {
            let _ = self.poller.remove(inbox.fd());
            inbox.close();
            batch.push(Event::Gone(name, serial, ended.unwrap_or(heard)));
        }
    }

    /// Waits at most `timeout` for a connection to have something (or the waker to be
    /// woken), and reads what every ready connection has.
    fn wait(&mut self, timeout: Duration, batch: &mut Vec<Event>) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        if let Err(e) = self.poller.wait(timeout, &mut keys) {
            // Not expected (epoll fails on bad arguments only); said at most ten times a
            // second, while the events still go on.
            berth_sys::say!("berth server: waiting on connections: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        for &key in &keys {
            if key == WAKER_KEY {
                self.waker.clear();
            } else {
                self.read(key, batch);
            }
        }
        self.keys = keys;
    }

    /// Ends the connections silent for longer than [`TASKER_SILENCE`] (looked for at most
    /// once a second).
    fn end_silent(&mut self, now: Instant, batch: &mut Vec<Event>) {
        if now.duration_since(self.checked) < Duration::from_secs(1) {
            return;
        }
        self.checked = now;
        let silent: Vec<u64> = self
            .inboxes
            .iter()
            .filter(|(_, (_, _, _, heard))| now.duration_since(*heard) > TASKER_SILENCE)
            .map(|(k, _)| *k)
            .collect();
        for key in silent {
            // A turn that took long leaves connections unread: what waits there counts.
            self.read(key, batch);
            let Some((name, _, _, heard)) = self.inboxes.get(&key) else {
                continue;
            };
            if now.duration_since(*heard) <= TASKER_SILENCE {
                continue;
            }
            berth_sys::say!(
                "berth server: tasker {name}: silent for longer than {TASKER_SILENCE:?}"
            );
            self.drop_inbox(key, None, batch);
        }
    }
}

type Reply<T> = Sender<Result<T, String>>;

/// What the actor handles.
pub enum Event {
    /// A submission.
    Submit(Caller, SubmitRequest, Reply<Submitted>),
    /// A listing.
    List(Filter, Reply<Vec<JobView>>),
    /// One job, with why it waits.
    Info(u64, Reply<JobView>),
    /// Part of a job's log from its tasker: the job, who asks, from which byte.
    ReadLog(u64, Caller, u64, Reply<berth_proto::LogPart>),
    /// Answer when the job is over.
    Wait(u64, u64, Reply<JobView>),
    /// The waiter of that job with that token gave up (its poll timed out).
    Unwait(u64, u64),
    /// Answer with those of these jobs that are over; when none is, answer `Ok(vec![])`
    /// and send each job to the waiter (with that token) when it is over.
    WaitMany(Vec<u64>, u64, Reply<JobView>),
    /// The waiter with that token gave up on these jobs.
    UnwaitMany(Vec<u64>, u64),
    /// `berth exec`: run a command in a running container job's container, the user's
    /// terminal where it says; the request's number.
    Exec(Caller, berth_proto::ExecRequest, Reply<u64>),
    /// How an exec ended, once it has: (exit status, why it did not run).
    ExecResult(Caller, u64, Reply<Option<ExecEnd>>),
    /// Stop these jobs, in one turn: each one's answer.
    StopMany(Caller, Vec<u64>, Reply<Vec<Result<String, String>>>),
    /// Which of these ids name arrays, with their jobs.
    Arrays(Vec<u64>, Reply<HashMap<u64, Vec<u64>>>),
    /// Hold a queued job (true), or release it (false).
    Hold(Caller, u64, bool, Reply<String>),
    /// Submit a job identical to this one: the new job's id.
    Rerun(Caller, u64, Reply<u64>),
    /// Stop a job.
    Stop(Caller, u64, Reply<String>),
    /// The taskers.
    Taskers(Reply<Vec<TaskerView>>),
    /// A tasker connects, with its link.
    Connect(String, Box<dyn TaskerLink>),
    /// A tasker says something.
    Tasker(String, FromTasker),
    /// A tasker says something on its link of that serial: taken only while that link is
    /// the tasker's (or about to be, with its hello), never from a link replaced or refused.
    FromLink(String, u64, FromTasker),
    /// A tasker's link broke: its name, the link's serial, and when it was last heard (a
    /// connection that closed: when it closed).
    Gone(String, u64, Instant),
    /// Start no more jobs (the first step of a clean stop); what runs goes on, and its
    /// ends are recorded.
    Drain,
    /// Stop the actor.
    Shutdown,
}

/// How a `berth exec` ended: its exit status, or why it did not run.
pub type ExecEnd = (Option<i32>, Option<String>);

/// A handle for sending events to the actor.
#[derive(Clone)]
pub struct Handle(Sender<Event>, Arc<berth_sys::Waker>);

impl Handle {
    /// Sends an event; false when the server has stopped.
    pub fn send(&self, e: Event) -> bool {
        let sent = self.0.send(e).is_ok();
        self.1.wake();
        sent
    }

    /// Sends a request and waits for its answer.
    pub fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Event) -> Result<T, String> {
        let (tx, rx) = mpsc::channel();
        if !self.send(make(tx)) {
            return Err("the server is shutting down".into());
        }
        rx.recv()
            .map_err(|_| "the server is shutting down".to_string())?
    }
}

struct TaskerEntry {
    incarnation: String,
    link: Box<dyn TaskerLink>,
    host: String,
    resources: String,
    slots: u32,
    refused: Vec<(String, String)>,
}

/// A submission written in this turn: whom to answer, what, and the jobs to queue.
type Accepted = (
    Reply<Submitted>,
    Submitted,
    Vec<(u64, Option<String>, Meta)>,
);

/// What a hello settles about the jobs recorded as running on its tasker.
#[derive(Default)]
struct HelloOutcome {
    lost: Vec<u64>,
    requeue: Vec<u64>,
    /// The tasker was taken (not refused): what its hello says of ends counts.
    accepted: bool,
}

/// What the server keeps in memory of each unfinished job: little, so that a million
/// queued jobs fit; the rest is in the store.
#[derive(Debug, Clone, Default)]
struct Meta {
    uid: u32,
    priority: i32,
    /// Its time limit (ms).
    time_limit_ms: Option<u64>,
    /// Held: not in the core's queue until released.
    held: bool,
    /// How many more times it is queued again when lost with its tasker.
    retries_left: u32,
    /// When it passes its time limit, while it runs (ms since the epoch).
    deadline_ms: Option<u64>,
    /// The jobs it still waits for (not in the core's queue until none is left).
    deps: Option<Box<Deps>>,
}

#[derive(Debug, Clone, Default)]
struct Deps {
    waits_for: Vec<u64>,
    /// Any end will do (`--after-any`), not only Done.
    any: bool,
}

impl Meta {
    /// Whether it may be in the core's queue: not held, waiting for no job.
    fn eligible(&self) -> bool {
        !self.held && self.deps.is_none()
    }
}

/// The most `berth exec` one user may have running at once.
pub const MAX_EXECS_PER_USER: usize = 16;

/// How long ended jobs stay in the store unless `--keep` says.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(30 * 86_400);

/// `10m`, `2h30m`, `1m30s`: a limit as `--time` takes it.
pub fn limit_text(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    for (n, u) in [(d, "d"), (h, "h"), (m, "m"), (sec, "s")] {
        if n > 0 {
            out += &format!("{n}{u}");
        }
    }
    if out.is_empty() {
        out = format!("{ms}ms");
    }
    out
}

/// Changes of state not yet on disk.
#[derive(Default)]
struct Unwritten {
    /// Ends, with where their jobs ran.
    ends: Vec<(String, JobEnd, Option<u32>)>,
    /// Jobs lost with their tasker.
    lost: Vec<u64>,
    /// Queued jobs stopped.
    stopped: Vec<u64>,
}

impl Unwritten {
    fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.lost.is_empty() && self.stopped.is_empty()
    }
}

/// The server's state outside the core.
pub struct Server {
    store: Store,
    core: Core,
    rx: Receiver<Event>,
    watch: Watch,
    taskers: HashMap<String, TaskerEntry>,
    pending_links: HashMap<String, Box<dyn TaskerLink>>,
    waiters: HashMap<u64, Vec<(u64, Reply<JobView>)>>,
    unfinished: HashMap<u64, Meta>,
    /// How many unfinished jobs each user has, for [`Server::max_unfinished_per_user`].
    per_uid: HashMap<u32, u64>,
    /// What a turn decided but could not write (the store's disk full or read-only): kept,
    /// its jobs counted as they were, and written by a later turn. No end is dropped, no
    /// job that ended is called lost.
    unwritten: Unwritten,
    /// Stopping: no job is started any more.
    draining: bool,
    /// Log reads sent to taskers, by request number.
    log_reads: HashMap<u64, (String, Reply<berth_proto::LogPart>)>,
    next_log_read: u64,
    /// How long a tasker may be away before its jobs are lost.
    pub tasker_grace: Duration,
    /// The most unfinished jobs one user may have; a submission past it is refused.
    pub max_unfinished_per_user: u64,
    /// The time limit of a job submitted without `--time` (ms).
    pub time_default_ms: Option<u64>,
    /// The longest time limit a job may have (ms): a rerun is held to it as a submission.
    pub time_max_ms: Option<u64>,
    /// For each job, the queued jobs that wait for it (`--after`).
    dependents: HashMap<u64, Vec<u64>>,
    /// Queued jobs to fail in the next turn: a job they wait for failed.
    doomed: Vec<(u64, String)>,
    /// When each running job with a time limit passes it: (ms since the epoch, job).
    deadlines: std::collections::BTreeSet<(u64, u64)>,
    /// `berth exec` requests: who asked, and how each ended once it has.
    execs: HashMap<u64, (u32, String, Option<ExecEnd>)>,
    next_exec: u64,
    /// How long ended jobs stay in the store (`--keep`); None: for ever.
    pub keep: Option<Duration>,
    /// When ended jobs were last removed, and whether some are left to remove.
    purged: Option<(Instant, bool)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Substitutes `@INDEX@`, `@JOBID@` and `@ARRAYID@` in a command line.
pub fn substitute(command: &[String], index: u32, job: u64, array: u64) -> Vec<String> {
    command
        .iter()
        .map(|w| {
            w.replace("@INDEX@", &index.to_string())
                .replace("@JOBID@", &job.to_string())
                .replace("@ARRAYID@", &array.to_string())
        })
        .collect()
}

/// A job's end taken into the core: its slot and resources given back, and where it ran
/// kept, to count it there again should the end not be written.
fn take_end(core: &mut Core, end_slots: &mut HashMap<u64, u32>, job: u64) {
    if let Some((_, slot)) = core.running_at(job) {
        end_slots.insert(job, slot);
    }
    core.ended(job);
}

impl Server {
    /// Opens the store, puts the unfinished jobs back in the core, and returns the server
    /// with a handle to it. Run it with [`Server::run`] on a thread of its own.
    pub fn open(store: Store) -> Result<(Server, Handle), OpenError> {
        let (tx, rx) = mpsc::channel();
        let waker = Arc::new(berth_sys::Waker::new()?);
        let watch = Watch::new(waker.clone())?;
        let mut core = Core::new();
        let mut unfinished = HashMap::new();
        let mut per_uid: HashMap<u32, u64> = HashMap::new();
        let all = store.unfinished()?;
        let open_ids: std::collections::HashSet<u64> = all.iter().map(|j| j.id).collect();
        // The states of the jobs waited for that have ended.
        let mut ended_deps: Vec<u64> = all
            .iter()
            .flat_map(|j| j.after.iter().copied())
            .filter(|d| !open_ids.contains(d))
            .collect();
        ended_deps.sort_unstable();
        ended_deps.dedup();
        let ended_state: HashMap<u64, State> = if ended_deps.is_empty() {
            HashMap::new()
        } else {
            store
                .list(&Filter {
                    ids: ended_deps,
                    ..Default::default()
                })?
                .into_iter()
                .map(|v| (v.id, v.state))
                .collect()
        };
        let mut dependents: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut doomed = Vec::new();
        let mut deadlines = std::collections::BTreeSet::new();
        for j in all {
            *per_uid.entry(j.uid).or_default() += 1;
            let mut m = Meta {
                uid: j.uid,
                priority: j.priority,
                time_limit_ms: j.time_limit_ms,
                held: j.held,
                retries_left: j.retries.saturating_sub(j.attempts),
                deadline_ms: None,
                deps: None,
            };
            if j.state == State::Queued && !j.after.is_empty() {
                let mut waits_for = Vec::new();
                let mut failed = None;
                for d in &j.after {
                    match ended_state.get(d) {
                        _ if open_ids.contains(d) => waits_for.push(*d),
                        Some(State::Done) => {}
                        Some(_) if j.after_any => {}
                        Some(_) => failed = Some(*d),
                        // Gone from the store (--keep): its end was taken into account
                        // when it came (a failure fails its dependents in that commit).
                        None => {}
                    }
                }
                if let Some(d) = failed {
                    doomed.push((j.id, format!("dependency {d} failed")));
                    // Not queued: it fails in the first turn.
                    m.held = true;
                }
                for d in &waits_for {
                    dependents.entry(*d).or_default().push(j.id);
                }
                if !waits_for.is_empty() {
                    m.deps = Some(Box::new(Deps {
                        waits_for,
                        any: j.after_any,
                    }));
                }
            }
            match j.state {
                State::Running => {
                    core.place(
                        j.id,
                        j.tasker.as_deref().unwrap_or_default(),
                        j.tasker_run.as_deref().unwrap_or_default(),
                    );
                    if let (Some(limit), Some(start)) = (j.time_limit_ms, j.started_ms) {
                        deadlines.insert((start.saturating_add(limit), j.id));
                        m.deadline_ms = Some(start.saturating_add(limit));
                    }
                }
                _ if m.eligible() => {
                    // A request that no longer parses stays queued and says why.
                    let _ = core.enqueue(j.id, j.priority, j.resources.as_deref());
                }
                _ => {}
            }
            unfinished.insert(j.id, m);
        }
        Ok((
            Server {
                store,
                core,
                rx,
                watch,
                taskers: HashMap::new(),
                pending_links: HashMap::new(),
                waiters: HashMap::new(),
                unfinished,
                tasker_grace: Duration::from_secs(30),
                per_uid,
                unwritten: Unwritten::default(),
                draining: false,
                log_reads: HashMap::new(),
                next_log_read: 1,
                max_unfinished_per_user: crate::policy::DEFAULT_MAX_UNFINISHED_PER_USER,
                time_default_ms: None,
                time_max_ms: None,
                dependents,
                doomed,
                deadlines,
                keep: Some(DEFAULT_KEEP),
                purged: None,
                execs: HashMap::new(),
                next_exec: 1,
            },
            Handle(tx, waker),
        ))
    }

    /// Lets every tasker's link send what the turn gave it, in one write each.
    fn flush_links(&self) {
        for t in self.taskers.values() {
            t.link.flush();
        }
    }

    /// Handles events until Shutdown.
    pub fn run(mut self) {
        // Taskers that ran jobs when the server stopped have the grace to come back, from
        // now; one that never does loses its jobs, as one that goes away does.
        self.core.await_taskers(Instant::now(), self.tasker_grace);
        // Wake at least once a second, to lose the jobs of taskers away too long.
        const TICK: Duration = Duration::from_secs(1);
        let mut ticked = Instant::now();
        // Nothing turned since the last wait on the connections: what is ready there
        // now makes the next wait return at once.
        let mut waited = false;
        loop {
            // What waits: events, and what the taskers' connections have (not waiting).
            let mut batch = std::mem::take(&mut self.watch.later);
            let mut open = self.take_events(&mut batch);
            if !waited {
                self.watch.wait(Duration::ZERO, &mut batch);
            }
            if batch.is_empty() && open {
                // Nothing: sleep until an event or a connection wakes the actor, or the
                // tick. Said before looking once more, so that no event is slept through.
                self.watch.waker.sleeping(true);
                open = self.take_events(&mut batch);
                if batch.is_empty() && open {
                    let left = TICK.saturating_sub(ticked.elapsed());
                    self.watch.wait(left, &mut batch);
                }
                self.watch.waker.sleeping(false);
                open = self.take_events(&mut batch) && open;
            }
            let now = Instant::now();
            self.watch.end_silent(now, &mut batch);
            if batch.is_empty() {
                if !open {
                    break;
                }
                if now.duration_since(ticked) < TICK {
                    waited = true;
                    continue;
                }
            }
            waited = false;
            ticked = now;
            let stop = batch.iter().any(|e| matches!(e, Event::Shutdown));
            self.turn(batch);
            self.flush_links();
            if stop {
                break;
            }
        }
    }

    /// Takes the events waiting (at most 20,000 at once); false once no handle is left.
    fn take_events(&mut self, batch: &mut Vec<Event>) -> bool {
        while batch.len() < 20_000 {
            match self.rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn turn(&mut self, batch: Vec<Event>) {
        let t = now_ms();
        let mut queries = Vec::new();
        let mut submits = Vec::new();
        let mut ends: Vec<(String, JobEnd)> = Vec::new();
        // Where each ended job ran, to count it there again if its end cannot be written.
        let mut end_slots: HashMap<u64, u32> = HashMap::new();
        let mut requeued: Vec<u64> = Vec::new();
        let mut lost: Vec<u64> = Vec::new();
        let mut stopped: Vec<u64> = Vec::new();
        let mut stop_answers: Vec<(Reply<String>, Result<String, String>)> = Vec::new();
        type ManyAnswers = (
            Reply<Vec<Result<String, String>>>,
            Vec<Result<String, String>>,
        );
        let mut many_stop_answers: Vec<ManyAnswers> = Vec::new();
        let mut submitting: HashMap<u32, u64> = HashMap::new();

        // 1. What changes, decided in memory.
        for e in batch {
            let e = match e {
                Event::FromLink(name, serial, m) => {
                    let ours = |l: &dyn TaskerLink| l.serial() == serial;
                    let current = self
                        .pending_links
                        .get(&name)
                        .is_some_and(|l| ours(l.as_ref()))
                        || self
                            .taskers
                            .get(&name)
                            .is_some_and(|t| ours(t.link.as_ref()));
                    if !current {
                        continue;
                    }
                    Event::Tasker(name, m)
                }
                e => e,
            };
            match e {
                Event::Submit(c, r, reply) => {
                    // The rest of the policy was checked on the connection's thread.
                    let n = crate::policy::Policy::size(&r);
                    let has = self.per_uid.get(&c.uid).copied().unwrap_or(0)
                        + submitting.get(&c.uid).copied().unwrap_or(0);
                    if has + n > self.max_unfinished_per_user {
                        let _ = reply.send(Err(format!(
                            "user {} has {has} unfinished jobs, and {n} more would pass the limit \
                             of {} per user (set by the administrator: --max-unfinished-per-user); \
                             wait for some to end",
                            c.user, self.max_unfinished_per_user
                        )));
                    } else if let Err(e) = self.known_deps(&r) {
                        let _ = reply.send(Err(e));
                    } else {
                        *submitting.entry(c.uid).or_default() += n;
                        submits.push((c, r, reply));
                    }
                }
                Event::Connect(name, mut link) => {
                    if let Some(inbox) = link.inbox() {
                        self.watch.add(name.clone(), link.serial(), inbox);
                    }
                    self.pending_links.insert(name, link);
                }
                Event::Tasker(
                    name,
                    FromTasker::Hello {
                        host,
                        resources,
                        slots,
                        containers_refused,
                        running,
                        ended,
                        incarnation,
                        ..
                    },
                ) => {
                    let h = self.hello(
                        &name,
                        host,
                        resources,
                        slots,
                        containers_refused,
                        running,
                        &ended,
                        incarnation,
                    );
                    lost.extend(h.lost);
                    requeued.extend(h.requeue);
                    if !h.accepted {
                        // A process refused (a second one of the name) speaks for no job.
                        continue;
                    }
                    let mut forget = Vec::new();
                    for end in ended {
                        let seen = ends.iter().any(|(_, e)| e.job == end.job);
                        match self.core.end_verdict(end.job, &name, seen) {
                            crate::core::EndVerdict::Record => {
                                take_end(&mut self.core, &mut end_slots, end.job);
                                ends.push((name.clone(), end));
                            }
                            crate::core::EndVerdict::Forget => forget.push(end.job),
                        }
                    }
                    if let (false, Some(t)) = (forget.is_empty(), self.taskers.get(&name)) {
                        t.link.send(ToTasker::Ack(forget));
                    }
                }
                Event::Tasker(name, FromTasker::Log(part)) => {
                    if let Some((from, reply)) = self.log_reads.remove(&part.req) {
                        if from == name {
                            let _ = reply.send(Ok(part));
                        }
                    }
                }
                Event::Tasker(
                    name,
                    FromTasker::ExecEnded {
                        req,
                        exit_code,
                        error,
                    },
                ) => {
                    if let Some(e) = self.execs.get_mut(&req).filter(|e| e.1 == name) {
                        e.2 = Some((exit_code, error));
                    }
                }
                Event::Tasker(name, FromTasker::Leaving) => {
                    self.core.tasker_leaving(&name);
                    if let Some(t) = self.taskers.get(&name) {
                        t.link.send(ToTasker::Bye);
                    }
                }
                Event::Tasker(name, FromTasker::Declined(jobs)) => {
                    for id in jobs {
                        let ended = ends.iter().any(|(_, e)| e.job == id);
                        if !requeued.contains(&id) && self.core.decline(id, &name, ended) {
                            requeued.push(id);
                        }
                    }
                }
                Event::Tasker(name, FromTasker::Ended(end)) => {
                    let seen = ends.iter().any(|(_, e)| e.job == end.job);
                    match self.core.end_verdict(end.job, &name, seen) {
                        crate::core::EndVerdict::Record => {
                            take_end(&mut self.core, &mut end_slots, end.job);
                            ends.push((name, end));
                        }
                        crate::core::EndVerdict::Forget => {
                            if let Some(t) = self.taskers.get(&name) {
                                t.link.send(ToTasker::Ack(vec![end.job]));
                            }
                        }
                    }
                }
                Event::Gone(name, serial, heard) => {
                    let current = self.taskers.get(&name).map(|t| t.link.serial());
                    if current.is_some_and(|c| c != serial) {
                        continue; // an older connection of a tasker that is back
                    }
                    // Its jobs may still run: they are lost only if it stays away, for the
                    // grace, counted from when it was last heard.
                    self.taskers.remove(&name);
                    // Its execs are over as far as the server knows: their ends would come
                    // by this link (the tasker bounds how many run there).
                    for e in self.execs.values_mut() {
                        if e.1 == name && e.2.is_none() {
                            e.2 = Some((None, Some(format!("its tasker {name} went away"))));
                        }
                    }
                    self.core.tasker_away(&name, heard, self.tasker_grace);
                }
                Event::Stop(c, id, reply) => {
                    let answer = self.stop(&c, id, &mut stopped);
                    stop_answers.push((reply, answer));
                }
                Event::StopMany(c, ids, reply) => {
                    let answers = ids
                        .into_iter()
                        .map(|id| self.stop(&c, id, &mut stopped))
                        .collect();
                    many_stop_answers.push((reply, answers));
                }
                Event::Shutdown => {}
                Event::Drain => self.draining = true,
                q => queries.push(q),
            }
        }

        // What an earlier turn could not write, written with this one.
        let earlier = std::mem::take(&mut self.unwritten);
        for (name, end, slot) in earlier.ends {
            if !ends.iter().any(|(_, e)| e.job == end.job) {
                take_end(&mut self.core, &mut end_slots, end.job);
                if let Some(slot) = slot {
                    end_slots.insert(end.job, slot);
                }
                ends.push((name, end));
            }
        }
        for id in earlier.lost {
            if !lost.contains(&id) {
                lost.push(id);
            }
        }
        stopped.extend(earlier.stopped);

        // Not a job whose end came (and waits to be written): it ended.
        lost.extend(
            self.core
                .expired(Instant::now(), |id| ends.iter().any(|(_, e)| e.job == id)),
        );
        let idle = submits.is_empty()
            && ends.is_empty()
            && self.unwritten.is_empty()
            && lost.is_empty()
            && requeued.is_empty()
            && stopped.is_empty()
            && queries.is_empty()
            && stop_answers.is_empty()
            && many_stop_answers.is_empty()
            && self.doomed.is_empty();
        if idle {
            self.enforce_limits(t);
            self.purge(t);
            self.dispatch(t);
            return;
        }

        // Lost jobs with retries left are queued again, not ended.
        let mut retried: Vec<u64> = Vec::new();
        lost.retain(|id| {
            let again = self.unfinished.get(id).is_some_and(|m| m.retries_left > 0)
                && !ends.iter().any(|(_, e)| e.job == *id)
                && !stopped.contains(id);
            if again {
                retried.push(*id);
            }
            !again
        });
        // The jobs that wait for one that failed fail too (and those that wait for them).
        let mut doomed = std::mem::take(&mut self.doomed);
        {
            let mut over: Vec<(u64, bool)> = ends
                .iter()
                .map(|(_, e)| (e.job, e.failure.is_none()))
                .collect();
            over.extend(lost.iter().chain(&stopped).map(|id| (*id, false)));
            over.extend(doomed.iter().map(|(id, _)| (*id, false)));
            self.doom_dependents(over, &mut doomed);
        }

        // The slots freed by the ends go to queued jobs in the same transaction: one
        // fsync for a turn's ends and the starts they make room for.
        let starts = self.choose_starts();

        // 2. Written in one transaction: one fsync for the whole turn.
        let mut accepted: Vec<Accepted> = Vec::new();
        let mut refused: Vec<Reply<Submitted>> = Vec::new();
        let taskers = &self.taskers;
        let open = &self.unfinished;
        let time_default = self.time_default_ms;
        // The states of the ended jobs that new jobs wait for, and of those that end in
        // this very turn (Done or not).
        let dep_states = self.dep_states(&submits, open);
        let mut over_now: HashMap<u64, bool> = ends
            .iter()
            .map(|(_, e)| (e.job, e.failure.is_none()))
            .collect();
        for id in lost.iter().chain(&stopped) {
            over_now.entry(*id).or_insert(false);
        }
        for (id, _) in &doomed {
            over_now.entry(*id).or_insert(false);
        }
        let res = self.store.batch(|b| {
            Self::record_starts(taskers, b, &starts, t)?;
            for (c, req, reply) in &submits {
                let mut ids = Vec::new();
                let mut queued = Vec::new();
                let mut failed_now: std::collections::HashSet<u64> = Default::default();
                // An array's id is one no job has: naming it names the array.
                let array_id = match req.array {
                    Some(_) => Some(b.reserve_id()?),
                    None => None,
                };
                let n = req
                    .array
                    .map(|(a, z)| (z - a + 1) as usize)
                    .unwrap_or(req.jobs.len());
                for k in 0..n {
                    let (j, index) = match req.array {
                        Some((a, _)) => (&req.jobs[0], Some(a + k as u32)),
                        None => (&req.jobs[k], None),
                    };
                    let id = b.insert_job(&NewJob {
                        uid: c.uid,
                        gid: c.gid,
                        user: &c.user,
                        name: j.name.as_deref(),
                        command: &j.command,
                        dir: &j.dir,
                        env: &j.env,
                        resources: j.resources.as_deref(),
                        log: j.log.as_deref(),
                        priority: j.priority,
                        umask: j.umask,
                        array: None,
                        submitted_ms: t,
                        time_limit_ms: j.time_limit_ms.or(time_default),
                        after: &j.after,
                        after_any: j.after_any,
                        held: j.hold,
                        retries: j.retries,
                    })?;
                    if let Some(i) = &j.interactive {
                        b.set_interactive(id, i)?;
                    }
                    if let (Some(i), Some(aid)) = (index, array_id) {
                        b.set_command(id, &substitute(&j.command, i, id, aid), Some((aid, i)))?;
                    }
                    // `-l out.@JOBID@.log`: each job of an array its own log. Outside an
                    // array, @INDEX@ is 0 and @ARRAYID@ the job's own id.
                    if let Some(log) = j.log.as_deref().filter(|l| l.contains('@')) {
                        let aid = array_id.unwrap_or(id);
                        let log = substitute(&[log.to_string()], index.unwrap_or(0), id, aid);
                        b.set_log(id, &log[0])?;
                    }
                    ids.push(id);
                    // What it waits for: the jobs not over yet; one that failed (with
                    // --after) fails it now.
                    let mut waits_for = Vec::new();
                    let mut failed_dep = None;
                    // Earlier jobs of this submission: queued now, or failed at once.
                    for i in &j.after_in {
                        let Some(d) = ids.get(*i).copied() else {
                            continue;
                        };
                        if failed_now.contains(&d) {
                            if !j.after_any {
                                failed_dep = Some(d);
                            }
                        } else {
                            waits_for.push(d);
                        }
                    }
                    for d in &j.after {
                        let done = match over_now.get(d) {
                            Some(done) => Some(*done),
                            None if open.contains_key(d) => None,
                            // Not read (an error, said): counted as Done.
                            None => Some(dep_states.get(d).is_none_or(|s| *s == State::Done)),
                        };
                        match done {
                            None => waits_for.push(*d),
                            Some(false) if !j.after_any => failed_dep = Some(*d),
                            Some(_) => {}
                        }
                    }
                    if let Some(d) = failed_dep {
                        let why = format!("dependency {d} failed");
                        b.set_ended(id, State::Failed, None, Some(&why), &[], t)?;
                        failed_now.insert(id);
                        continue;
                    }
                    let meta = Meta {
                        uid: c.uid,
                        priority: j.priority,
                        time_limit_ms: j.time_limit_ms.or(time_default),
                        held: j.hold,
                        retries_left: j.retries,
                        deadline_ms: None,
                        deps: (!waits_for.is_empty()).then(|| {
                            Box::new(Deps {
                                waits_for,
                                any: j.after_any,
                            })
                        }),
                    };
                    queued.push((id, j.resources.clone(), meta));
                }
                if let (Some(aid), Some(first), Some(last)) = (array_id, ids.first(), ids.last()) {
                    b.add_array(aid, *first, *last)?;
                }
                accepted.push((
                    reply.clone(),
                    Submitted {
                        ids,
                        array_id,
                        warnings: Vec::new(),
                    },
                    queued,
                ));
            }
            for id in &requeued {
                b.set_queued(*id)?;
            }
            for (_, end) in &ends {
                let state = if end.failure.is_none() {
                    State::Done
                } else {
                    State::Failed
                };
                b.set_ended(
                    end.job,
                    state,
                    end.exit_code,
                    end.failure.as_deref(),
                    &end.hook_failures,
                    t,
                )?;
            }
            for id in &lost {
                b.set_ended(*id, State::Failed, None, Some("lost"), &[], t)?;
            }
            for id in &retried {
                b.requeue_lost(*id, t)?;
            }
            for (id, why) in &doomed {
                b.set_ended(*id, State::Failed, None, Some(why), &[], t)?;
            }
            for id in &stopped {
                b.set_ended(*id, State::Failed, None, Some("stopped by request"), &[], t)?;
            }
            Ok(())
        });
        let committed = res.is_ok();
        self.after_starts(
            starts,
            res.as_ref().map(|_| ()).map_err(|e| e.to_string()),
            t,
        );
        if let Err(e) = &res {
            berth_sys::say!(
                "berth server: cannot write to the state directory ({e}); the jobs' ends and \
                 losses are kept and written once it can be written again"
            );
            for (reply, _, _) in accepted.drain(..) {
                refused.push(reply);
            }
            for r in refused {
                let _ = r.send(Err(format!(
                    "the server could not record the jobs: {e}; its state directory is full or \
                     read-only (try again later; an administrator should free space)"
                )));
            }
            // Nothing of this turn is on disk: its ended jobs count as running where they
            // ran (their slots were given back above), until their ends are written.
            for (name, end) in ends.drain(..) {
                let slot = end_slots.get(&end.job).copied();
                if let Some(slot) = slot {
                    let req = self
                        .store
                        .run_spec(end.job)
                        .ok()
                        .flatten()
                        .and_then(|s| s.resources);
                    self.core
                        .adopt_running(end.job, &name, slot, req.as_deref());
                }
                self.unwritten.ends.push((name, end, slot));
            }
            self.unwritten.lost.append(&mut lost);
            self.unwritten.lost.append(&mut retried);
            self.unwritten.stopped.append(&mut stopped);
            self.doomed.append(&mut doomed);
        }

        // 3. After the commit: the core learns, and everyone is answered.
        let mut acks: HashMap<&str, Vec<u64>> = HashMap::new();
        for (name, e) in &ends {
            acks.entry(name.as_str()).or_default().push(e.job);
        }
        for (name, jobs) in acks {
            // Only what is on disk is acknowledged; the rest comes again in a hello.
            if !committed {
                break;
            }
            if let Some(t) = self.taskers.get(name) {
                t.link.send(ToTasker::Ack(jobs));
            }
        }
        for id in &requeued {
            self.core.unplace(*id);
            if let Some(m) = self.unfinished.get_mut(id) {
                if let Some(at) = m.deadline_ms.take() {
                    self.deadlines.remove(&(at, *id));
                }
                let priority = m.priority;
                let req = self
                    .store
                    .run_spec(*id)
                    .ok()
                    .flatten()
                    .and_then(|s| s.resources);
                let _ = self.core.enqueue(*id, priority, req.as_deref());
            }
        }
        for id in &retried {
            self.core.unplace(*id);
            let req = self
                .store
                .run_spec(*id)
                .ok()
                .flatten()
                .and_then(|s| s.resources);
            if let Some(m) = self.unfinished.get_mut(id) {
                m.retries_left -= 1;
                if let Some(at) = m.deadline_ms.take() {
                    self.deadlines.remove(&(at, *id));
                }
                let _ = self.core.enqueue(*id, m.priority, req.as_deref());
            }
        }
        let mut over: Vec<(u64, bool)> = ends
            .iter()
            .map(|(_, e)| (e.job, e.failure.is_none()))
            .collect();
        over.extend(lost.iter().chain(&stopped).map(|id| (*id, false)));
        over.extend(doomed.iter().map(|(id, _)| (*id, false)));
        let mut finals: Vec<u64> = over.iter().map(|(id, _)| *id).collect();
        for id in &finals {
            if let Some(m) = self.unfinished.remove(id) {
                if let Some(n) = self.per_uid.get_mut(&m.uid) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_uid.remove(&m.uid);
                    }
                }
                if let Some(at) = m.deadline_ms {
                    self.deadlines.remove(&(at, *id));
                }
                // Out of the core's queue, whatever put it there.
                if matches!(self.core.stop(*id), StopWhat::Dequeued) {
                    berth_sys::say!("berth server: job {id} ended while queued");
                }
                // No longer among the dependents of the jobs it waited for.
                for w in m.deps.map(|d| d.waits_for).unwrap_or_default() {
                    if let Some(list) = self.dependents.get_mut(&w) {
                        list.retain(|x| x != id);
                    }
                }
            }
            self.core.unplace(*id);
        }
        self.release_dependents(&over);
        for (reply, mut sub, queued) in accepted {
            let mut classes: Vec<Option<String>> = Vec::new();
            for (id, req, meta) in queued {
                let uid = meta.uid;
                let pri = meta.priority;
                if let Some(d) = &meta.deps {
                    for w in &d.waits_for {
                        self.dependents.entry(*w).or_default().push(id);
                    }
                }
                let eligible = meta.eligible();
                if self.unfinished.insert(id, meta).is_none() {
                    *self.per_uid.entry(uid).or_default() += 1;
                }
                if eligible {
                    let _ = self.core.enqueue(id, pri, req.as_deref());
                }
                if !classes.contains(&req) {
                    classes.push(req);
                }
            }
            // Those that failed at once (a job they wait for had failed).
            for id in &sub.ids {
                if !self.unfinished.contains_key(id) {
                    finals.push(*id);
                }
            }
            for req in classes {
                if let Some(why) = self.core.why_waiting(req.as_deref()) {
                    if !why.starts_with("waiting for resources") {
                        sub.warnings.push(why);
                    }
                }
            }
            let _ = reply.send(Ok(sub));
        }
        for (reply, answer) in stop_answers {
            let _ = reply.send(answer);
        }
        for (reply, answers) in many_stop_answers {
            let _ = reply.send(Ok(answers));
        }
        if !finals.is_empty() {
            self.notify(&finals);
        }
        for q in queries {
            self.answer(q);
        }

        // 4. The jobs submitted in this turn, and any other slot still free.
        self.enforce_limits(t);
        self.purge(t);
        self.dispatch(t);
    }

    /// Every job a submission waits for exists.
    fn known_deps(&self, r: &SubmitRequest) -> Result<(), String> {
        let mut ids: Vec<u64> = r
            .jobs
            .iter()
            .flat_map(|j| j.after.iter().copied())
            .filter(|d| !self.unfinished.contains_key(d))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        ids.dedup();
        let found: std::collections::HashSet<u64> = self
            .store
            .list(&Filter {
                ids: ids.clone(),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|v| v.id)
            .collect();
        match ids.iter().find(|d| !found.contains(d)) {
            Some(d) => Err(format!("--after {d}: no job {d}")),
            None => Ok(()),
        }
    }

    /// The states of the jobs that this turn's submissions wait for and that are over.
    fn dep_states(
        &self,
        submits: &[(Caller, SubmitRequest, Reply<Submitted>)],
        open: &HashMap<u64, Meta>,
    ) -> HashMap<u64, State> {
        let ids: Vec<u64> = submits
            .iter()
            .flat_map(|(_, r, _)| r.jobs.iter().flat_map(|j| j.after.iter().copied()))
            .filter(|d| !open.contains_key(d))
            .collect();
        if ids.is_empty() {
            return HashMap::new();
        }
        match self.store.list(&Filter {
            ids,
            ..Default::default()
        }) {
            Ok(v) => v.into_iter().map(|v| (v.id, v.state)).collect(),
            Err(e) => {
                // Unknown, a dependency counts as Done rather than failing its dependents.
                berth_sys::say!("berth server: reading the states of dependencies: {e}");
                HashMap::new()
            }
        }
    }

    /// Adds to `doomed` every queued job that waits (with `--after`) for one of `over` that
    /// failed, and so on down the graph.
    fn doom_dependents(&self, over: Vec<(u64, bool)>, doomed: &mut Vec<(u64, String)>) {
        let mut done: HashMap<u64, bool> = over.iter().copied().collect();
        let mut todo: std::collections::VecDeque<(u64, bool)> = over.into_iter().collect();
        while let Some((id, ok)) = todo.pop_front() {
            if ok {
                continue;
            }
            for d in self.dependents.get(&id).into_iter().flatten() {
                if done.contains_key(d) {
                    continue;
                }
                let any = self
                    .unfinished
                    .get(d)
                    .and_then(|m| m.deps.as_ref())
                    .is_some_and(|x| x.any);
                if !any {
                    doomed.push((*d, format!("dependency {id} failed")));
                    done.insert(*d, false);
                    todo.push_back((*d, false));
                }
            }
        }
    }

    /// Once jobs are over (and recorded): those that waited for them and wait for nothing
    /// more go to the core's queue, unless held.
    fn release_dependents(&mut self, over: &[(u64, bool)]) {
        for (id, ok) in over {
            let Some(waiting) = self.dependents.remove(id) else {
                continue;
            };
            for d in waiting {
                let Some(m) = self.unfinished.get_mut(&d) else {
                    continue;
                };
                let Some(deps) = m.deps.as_mut() else {
                    continue;
                };
                if !*ok && !deps.any {
                    continue; // doomed, and ended in this turn
                }
                deps.waits_for.retain(|w| w != id);
                if deps.waits_for.is_empty() {
                    m.deps = None;
                    if m.eligible() {
                        let pri = m.priority;
                        let req = self
                            .store
                            .run_spec(d)
                            .ok()
                            .flatten()
                            .and_then(|s| s.resources);
                        let _ = self.core.enqueue(d, pri, req.as_deref());
                    }
                }
            }
        }
    }

    /// Removes from the store the jobs that ended longer ago than `--keep`, a bounded
    /// number at a time (the actor is not held for long): every quarter of `--keep`
    /// (between a second and ten minutes), and at once again while some are left.
    fn purge(&mut self, now: u64) {
        let Some(keep) = self.keep else {
            return;
        };
        let every = (keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        if let Some((at, more)) = self.purged {
            if !more && at.elapsed() < every {
                return;
            }
        }
        let before = now.saturating_sub(keep.as_millis() as u64);
        const AT_ONCE: usize = 5_000;
        match self.store.purge(before, AT_ONCE) {
            Ok(n) => {
                if n > 0 {
                    berth_sys::say!(
                        "berth server: removed {n} job(s) that ended over {} ago from the \
                         store (--keep; their logs stay)",
                        limit_text(keep.as_millis() as u64)
                    );
                }
                self.purged = Some((Instant::now(), n == AT_ONCE));
            }
            Err(e) => {
                berth_sys::say!("berth server: removing old jobs from the store: {e}");
                self.purged = Some((Instant::now(), false));
            }
        }
    }

    /// Stops the running jobs past their time limit (and again, every 15 s, those whose
    /// tasker has not ended them).
    fn enforce_limits(&mut self, now: u64) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(m) = self.unfinished.get_mut(&id) else {
                continue;
            };
            let Some(limit) = m.time_limit_ms else {
                m.deadline_ms = None;
                continue;
            };
            let Some(tasker) = self.core.placed_on(id).map(str::to_string) else {
                m.deadline_ms = None;
                continue;
            };
            if let Some(t) = self.taskers.get(&tasker) {
                t.link.send(ToTasker::StopBecause(
                    id,
                    format!("time limit {} exceeded", limit_text(limit)),
                ));
            }
            let again = now + 15_000;
            m.deadline_ms = Some(again);
            self.deadlines.insert((again, id));
        }
    }

    /// Holds or releases a queued job, for its owner or an administrator.
    fn hold(&mut self, c: &Caller, id: u64, hold: bool) -> Result<String, String> {
        let verb = if hold { "held" } else { "released" };
        let Some(m) = self.unfinished.get(&id) else {
            return match self.view(id) {
                None => Err(format!("no job {id}")),
                Some(v) => Err(format!(
                    "job {id} is {}: only a queued job can be {verb}",
                    v.state.as_str()
                )),
            };
        };
        if !c.admin && c.uid != m.uid {
            return Err(format!(
                "job {id} belongs to uid {}; only an administrator may hold or release another \
                 user's job",
                m.uid
            ));
        }
        if self.core.placed_on(id).is_some() {
            return Err(format!(
                "job {id} is Running: only a queued job can be {verb} (stop it with: berth stop {id})"
            ));
        }
        if m.held == hold {
            return Ok(format!("job {id} is {verb} already"));
        }
        self.store
            .batch(|b| b.set_held(id, hold))
            .map_err(|e| format!("the server could not record it: {e}"))?;
        let Some(m) = self.unfinished.get_mut(&id) else {
            return Err(format!("no job {id}"));
        };
        if hold {
            if m.eligible() {
                self.core.stop(id);
            }
            m.held = true;
            Ok(format!(
                "job {id}: held; it starts once released (berth release {id})"
            ))
        } else {
            m.held = false;
            if m.eligible() {
                let pri = m.priority;
                let req = self
                    .store
                    .run_spec(id)
                    .ok()
                    .flatten()
                    .and_then(|s| s.resources);
                let _ = self.core.enqueue(id, pri, req.as_deref());
            }
            Ok(format!("job {id}: released"))
        }
    }

    /// Sends a `berth exec` to the tasker of running job `id`, for its owner or an
    /// administrator.
    fn exec(&mut self, c: &Caller, mut x: berth_proto::ExecRequest) -> Result<u64, String> {
        let id = x.job;
        let v = self.view(id).ok_or_else(|| format!("no job {id}"))?;
        if !c.admin && c.uid != v.uid {
            return Err(format!(
                "job {id} is {}'s: only an administrator may enter another user's job",
                v.user
            ));
        }
        if x.command.is_empty() || x.command.len() > 4096 {
            return Err("berth exec needs a command (at most 4,096 words)".into());
        }
        let Some(tasker) = self.core.running_at(id).map(|(t, _)| t.to_string()) else {
            return Err(format!(
                "job {id} is {}: berth exec enters running jobs only",
                v.state.as_str()
            ));
        };
        let Some(t) = self.taskers.get(&tasker) else {
            return Err(format!("job {id}: its tasker {tasker} cannot be reached"));
        };
        // Each is a thread and a terminal on the tasker: a user has a few at once.
        let open = self
            .execs
            .values()
            .filter(|(uid, _, done)| *uid == c.uid && done.is_none())
            .count();
        if open >= MAX_EXECS_PER_USER {
            return Err(format!(
                "{} has {open} berth exec running; at most {MAX_EXECS_PER_USER} at once",
                c.user
            ));
        }
        // Bounded: the oldest answers nobody came for are dropped; running ones never.
        if self.execs.len() >= 1000 {
            let oldest = self
                .execs
                .iter()
                .filter(|(_, (_, _, done))| done.is_some())
                .map(|(req, _)| *req)
                .min();
            match oldest {
                Some(r) => {
                    self.execs.remove(&r);
                }
                None => return Err("1,000 berth exec run already; try again later".into()),
            }
        }
        let req = self.next_exec;
        self.next_exec += 1;
        x.req = req;
        if !t.link.send(ToTasker::Exec(x)) {
            return Err(format!("job {id}: its tasker {tasker} cannot be reached"));
        }
        self.execs.insert(req, (c.uid, tasker, None));
        Ok(req)
    }

    /// A new job identical to job `id`, for its owner or an administrator.
    fn rerun(&mut self, c: &Caller, id: u64) -> Result<u64, String> {
        let v = self.view(id).ok_or_else(|| format!("no job {id}"))?;
        if !c.admin && c.uid != v.uid {
            return Err(format!(
                "job {id} is {}'s: only an administrator may run another user's job again",
                v.user
            ));
        }
        let spec = self
            .store
            .run_spec(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no job {id}"))?;
        if spec.interactive.is_some() {
            return Err(format!(
                "job {id} was interactive (-I): its terminal is gone; submit it again with berth run -I"
            ));
        }
        if let (Some(t), Some(max)) = (v.time_limit_ms, self.time_max_ms) {
            if t > max {
                return Err(format!(
                    "job {id} has a time limit of {}, above the longest of {} (set by the \
                     administrator: --time-max); submit it again with --time {} or less",
                    limit_text(t),
                    limit_text(max),
                    limit_text(max)
                ));
            }
        }
        let has = self.per_uid.get(&v.uid).copied().unwrap_or(0);
        if has + 1 > self.max_unfinished_per_user {
            return Err(format!(
                "user {} has {has} unfinished jobs, the limit of {} per user (set by the \
                 administrator: --max-unfinished-per-user); wait for some to end",
                v.user, self.max_unfinished_per_user
            ));
        }
        // A log given with @JOBID@ (and the like) is the new job's own.
        let template = self.store.log_template(id).map_err(|e| e.to_string())?;
        let index = v.array.map_or(0, |(_, i)| i);
        let new = self
            .store
            .batch(|b| {
                let new = b.copy_job(id, now_ms())?;
                if let Some(t) = &template {
                    b.set_log(
                        new,
                        &substitute(std::slice::from_ref(t), index, new, new)[0],
                    )?;
                }
                Ok(new)
            })
            .map_err(|e| {
                format!(
                    "the server could not record the jobs: {e}; its state directory is full or \
                     read-only (try again later; an administrator should free space)"
                )
            })?;
        self.unfinished.insert(
            new,
            Meta {
                uid: v.uid,
                priority: v.priority,
                time_limit_ms: v.time_limit_ms,
                retries_left: v.retries,
                ..Meta::default()
            },
        );
        *self.per_uid.entry(v.uid).or_default() += 1;
        let _ = self
            .core
            .enqueue(new, v.priority, spec.resources.as_deref());
        Ok(new)
    }

    #[allow(clippy::too_many_arguments)]
    fn hello(
        &mut self,
        name: &str,
        host: String,
        resources: String,
        slots: u32,
        refused: Vec<(String, String)>,
        running: Vec<(u64, u32)>,
        ended: &[JobEnd],
        incarnation: String,
    ) -> HelloOutcome {
        let mut out = HelloOutcome::default();
        // Another process of the same name while the first is connected: two taskers
        // would take each other's jobs for their own. The newcomer is refused (its link
        // dropped, so it tries again, and joins once the first is gone).
        if let Some(t) = self.taskers.get(name) {
            if t.incarnation != incarnation && self.pending_links.contains_key(name) {
                berth_sys::say!(
                    "berth server: tasker {name}: a second process of this name (on {host}) while \
                     the one on {} is connected; refused: give it another --name, or stop the other",
                    t.host
                );
                self.pending_links.remove(name);
                return out;
            }
        }
        let Some(link) = self
            .pending_links
            .remove(name)
            .or_else(|| self.taskers.remove(name).map(|t| t.link))
        else {
            return out;
        };
        let offer = match Offer::parse(&resources) {
            Ok(o) => o,
            Err(e) => {
                berth_sys::say!("berth server: tasker {name}: {e}");
                return out;
            }
        };
        // The rules are the core's (see `Core::hello`); here they are applied.
        let store = &self.store;
        let ended_ids: Vec<u64> = ended.iter().map(|e| e.job).collect();
        let verdict = self.core.hello(
            crate::core::TaskerHello {
                name,
                offer,
                slots,
                incarnation: &incarnation,
                listed: &running,
                ended: &ended_ids,
            },
            |id| store.run_spec(id).ok().flatten().and_then(|s| s.resources),
        );
        out.requeue.extend(verdict.requeue);
        out.lost.extend(verdict.lost);
        for id in verdict.stop {
            link.send(ToTasker::Stop(id));
        }
        self.taskers.insert(
            name.to_string(),
            TaskerEntry {
                incarnation,
                link,
                host,
                resources,
                slots,
                refused,
            },
        );
        out.accepted = true;
        out
    }

    fn stop(&mut self, c: &Caller, id: u64, stopped: &mut Vec<u64>) -> Result<String, String> {
        let Some(meta) = self.unfinished.get(&id) else {
            return Err(format!(
                "job {id} is not queued or running (see: berth info {id})"
            ));
        };
        if !c.admin && c.uid != meta.uid {
            return Err(format!(
                "job {id} belongs to uid {}; only an administrator may stop another user's job",
                meta.uid
            ));
        }
        if !meta.eligible() && self.core.placed_on(id).is_none() {
            // Held, or waiting for other jobs: not in the core's queue.
            stopped.push(id);
            return Ok(format!("job {id}: stopped before it started"));
        }
        match self.core.stop(id) {
            StopWhat::Dequeued => {
                stopped.push(id);
                Ok(format!("job {id}: stopped before it started"))
            }
            StopWhat::Running(tasker) => match self.taskers.get(&tasker) {
                Some(t) if t.link.send(ToTasker::Stop(id)) => {
                    Ok(format!("job {id}: stopping on {tasker}"))
                }
                _ => Err(format!("job {id}: its tasker {tasker} cannot be reached")),
            },
            StopWhat::Unknown => {
                // Recorded as running on a tasker that has not come back.
                stopped.push(id);
                Ok(format!(
                    "job {id}: marked stopped; its tasker has not reconnected"
                ))
            }
        }
    }

    fn view(&self, id: u64) -> Option<JobView> {
        let mut v = self
            .store
            .list(&Filter {
                ids: vec![id],
                ..Default::default()
            })
            .ok()?
            .pop()?;
        if v.state == State::Queued {
            let m = self.unfinished.get(&id);
            v.why_waiting = match (m.is_some_and(|m| m.held), m.and_then(|m| m.deps.as_ref())) {
                (true, _) => Some(format!(
                    "held: it starts once released (berth release {id})"
                )),
                (false, Some(d)) => Some(format!(
                    "waiting for job{} {} to {}",
                    if d.waits_for.len() == 1 { "" } else { "s" },
                    d.waits_for
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    if d.any { "end" } else { "be Done" }
                )),
                (false, None) => self.core.why_waiting(v.resources.as_deref()),
            };
        }
        Some(v)
    }

    fn notify(&mut self, finals: &[u64]) {
        for id in finals {
            if let Some(ws) = self.waiters.remove(id) {
                if let Some(v) = self.view(*id) {
                    for (_, w) in ws {
                        let _ = w.send(Ok(v.clone()));
                    }
                }
            }
        }
    }

    fn answer(&mut self, q: Event) {
        match q {
            Event::List(f, reply) => {
                let _ = reply.send(self.store.list(&f).map_err(|e| e.to_string()));
            }
            Event::Info(id, reply) => {
                let _ = reply.send(self.view(id).ok_or_else(|| format!("no job {id}")));
            }
            Event::ReadLog(id, caller, offset, reply) => {
                let Some(v) = self.view(id) else {
                    let _ = reply.send(Err(format!("no job {id}")));
                    return;
                };
                if v.uid != caller.uid && !caller.admin {
                    let _ = reply.send(Err(format!(
                        "job {id} is {}'s: only an administrator may see another user's job, its details or its log",
                        v.user
                    )));
                    return;
                }
                let Some(tasker) = v.tasker.clone() else {
                    let _ = reply.send(Err(format!("job {id} has not started: no log yet")));
                    return;
                };
                let Some(t) = self.taskers.get(&tasker) else {
                    let _ = reply.send(Err(format!(
                        "job {id} ran on {tasker}, which is not connected: its log cannot be read from here"
                    )));
                    return;
                };
                let req = self.next_log_read;
                self.next_log_read += 1;
                // Answers that never come (a tasker gone) are dropped with their waiters.
                if self.log_reads.len() > 10_000 {
                    self.log_reads.clear();
                }
                if t.link.send(ToTasker::ReadLog(berth_proto::LogRead {
                    req,
                    job: id,
                    uid: v.uid,
                    path: v.log.clone(),
                    offset,
                    max: 1 << 20,
                })) {
                    self.log_reads.insert(req, (tasker, reply));
                } else {
                    let _ = reply.send(Err(format!(
                        "job {id}: its tasker {tasker} cannot be reached"
                    )));
                }
            }
            Event::Unwait(id, token) => {
                if let Some(ws) = self.waiters.get_mut(&id) {
                    ws.retain(|(t, _)| *t != token);
                    if ws.is_empty() {
                        self.waiters.remove(&id);
                    }
                }
            }
            Event::Exec(c, x, reply) => {
                let _ = reply.send(self.exec(&c, x));
            }
            Event::ExecResult(c, req, reply) => {
                let r = match self.execs.get(&req) {
                    None => Err(format!("no berth exec {req}")),
                    Some((uid, _, _)) if *uid != c.uid && !c.admin => {
                        Err(format!("berth exec {req} is another user's"))
                    }
                    Some((_, _, done)) => Ok(done.clone()),
                };
                if matches!(r, Ok(Some(_))) {
                    self.execs.remove(&req);
                }
                let _ = reply.send(r);
            }
            Event::Arrays(ids, reply) => {
                let _ = reply.send(self.store.arrays(&ids).map_err(|e| e.to_string()));
            }
            Event::Hold(c, id, hold, reply) => {
                let _ = reply.send(self.hold(&c, id, hold));
            }
            Event::Rerun(c, id, reply) => {
                let _ = reply.send(self.rerun(&c, id));
            }
            Event::UnwaitMany(ids, token) => {
                for id in ids {
                    if let Some(ws) = self.waiters.get_mut(&id) {
                        ws.retain(|(t, _)| *t != token);
                        if ws.is_empty() {
                            self.waiters.remove(&id);
                        }
                    }
                }
            }
            Event::WaitMany(ids, token, waiter) => {
                // Answered through `waiter` alone: the jobs over now, each; else each as it
                // ends; or why not.
                let views = match self.store.list(&Filter {
                    ids: ids.clone(),
                    ..Default::default()
                }) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = waiter.send(Err(e.to_string()));
                        return;
                    }
                };
                if views.len() < ids.len() {
                    let known: std::collections::HashSet<u64> =
                        views.iter().map(|v| v.id).collect();
                    if let Some(id) = ids.iter().find(|i| !known.contains(i)) {
                        let _ = waiter.send(Err(format!("no job {id}")));
                        return;
                    }
                }
                let mut any = false;
                for v in views.into_iter().filter(|v| v.state.is_final()) {
                    any = true;
                    let _ = waiter.send(Ok(v));
                }
                if !any {
                    for id in ids {
                        self.waiters
                            .entry(id)
                            .or_default()
                            .push((token, waiter.clone()));
                    }
                }
            }
            Event::Wait(id, token, reply) => match self.view(id) {
                None => {
                    let _ = reply.send(Err(format!("no job {id}")));
                }
                Some(v) if v.state.is_final() => {
                    let _ = reply.send(Ok(v));
                }
                Some(_) => self.waiters.entry(id).or_default().push((token, reply)),
            },
            Event::Taskers(reply) => {
                let mut out: Vec<TaskerView> = self
                    .taskers
                    .iter()
                    .map(|(name, t)| {
                        let ct = self.core.taskers().get(name);
                        let running = ct
                            .map(|c| c.slots.iter().filter(|s| s.is_some()).count())
                            .unwrap_or(0);
                        let free = ct
                            .map(|c| {
                                c.ledger
                                    .offer
                                    .iter()
                                    .filter_map(|(n, _)| {
                                        c.ledger.free(n).map(|f| format!("{n}/{f}"))
                                    })
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .unwrap_or_default();
                        TaskerView {
                            name: name.clone(),
                            host: t.host.clone(),
                            resources: t.resources.clone(),
                            slots: t.slots,
                            running: running as u32,
                            free,
                            containers_refused: t.refused.clone(),
                        }
                    })
                    .collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(Ok(out));
            }
            _ => {}
        }
    }

    /// Schedules, records the starts, then hands the jobs over.
    fn dispatch(&mut self, t: u64) {
        let ready = self.choose_starts();
        if ready.is_empty() {
            return;
        }
        let res = self
            .store
            .batch(|b| Self::record_starts(&self.taskers, b, &ready, t));
        self.after_starts(ready, res.map_err(|e| e.to_string()), t);
    }

    /// The core's choice of jobs to start, each with what its tasker needs to run it.
    fn choose_starts(&mut self) -> Vec<(Dispatch, Assignment)> {
        let mut ready = Vec::new();
        if self.draining {
            return ready;
        }
        for d in self.core.schedule() {
            match self.store.run_spec(d.job) {
                Ok(Some(spec)) => ready.push((d, spec)),
                other => {
                    berth_sys::say!(
                        "berth server: job {}: cannot read it to start it: {other:?}",
                        d.job
                    );
                    self.core.ended(d.job);
                }
            }
        }
        ready
    }

    fn record_starts(
        taskers: &HashMap<String, TaskerEntry>,
        b: &mut Batch<'_>,
        ready: &[(Dispatch, Assignment)],
        t: u64,
    ) -> Result<(), SqlError> {
        for (d, _) in ready {
            let run = taskers
                .get(&d.tasker)
                .map(|t| t.incarnation.as_str())
                .unwrap_or("");
            b.set_running(d.job, &d.tasker, run, d.slot, t)?;
        }
        Ok(())
    }

    /// Once the starts are committed (or not): hands the jobs over, or queues them again.
    fn after_starts(
        &mut self,
        ready: Vec<(Dispatch, Assignment)>,
        committed: Result<(), String>,
        t: u64,
    ) {
        if ready.is_empty() {
            return;
        }
        if let Err(e) = committed {
            berth_sys::say!("berth server: recording starts: {e}; the jobs stay queued");
            for (d, spec) in ready {
                let pri = self.unfinished.get(&d.job).map(|m| m.priority).unwrap_or(0);
                self.core.requeue(d.job, pri, spec.resources.as_deref());
            }
            return;
        }
        let mut failed = Vec::new();
        for (d, mut a) in ready {
            let run = self
                .taskers
                .get(&d.tasker)
                .map(|tk| tk.incarnation.as_str())
                .unwrap_or("");
            self.core.place(d.job, &d.tasker, run);
            a.slot = d.slot;
            a.container = d.container.clone();
            let resources = a.resources.clone();
            let sent = self
                .taskers
                .get(&d.tasker)
                .is_some_and(|tk| tk.link.send(ToTasker::Run(Box::new(a))));
            if !sent {
                failed.push((d, resources));
            } else if let Some(m) = self.unfinished.get_mut(&d.job) {
                if let Some(limit) = m.time_limit_ms {
                    let at = t.saturating_add(limit);
                    if let Some(was) = m.deadline_ms.replace(at) {
                        self.deadlines.remove(&(was, d.job));
                    }
                    self.deadlines.insert((at, d.job));
                }
            }
        }
        if !failed.is_empty() {
            // Not written, they stay Running on disk, and a restart finds them neither
            // run nor ended there: queued again then. Said, at least.
            if let Err(e) = self.store.batch(|b| {
                for (d, _) in &failed {
                    b.set_queued(d.job)?;
                }
                Ok(())
            }) {
                berth_sys::say!(
                    "berth server: queuing again {} job(s) whose tasker could not be reached: {e}",
                    failed.len()
                );
            }
            for (d, req) in failed {
                self.core.unplace(d.job);
                let pri = self.unfinished.get(&d.job).map(|m| m.priority).unwrap_or(0);
                self.core.requeue(d.job, pri, req.as_deref());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_proto::Submit;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Vec<ToTasker>>>);

    impl TaskerLink for Fake {
        fn send(&self, m: ToTasker) -> bool {
            self.0.lock().unwrap().push(m);
            true
        }
    }

    impl Fake {
        fn runs(&self) -> Vec<u64> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|m| match m {
                    ToTasker::Run(a) => Some(a.job),
                    _ => None,
                })
                .collect()
        }
        fn stops(&self) -> Vec<u64> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|m| match m {
                    ToTasker::Stop(j) => Some(*j),
                    _ => None,
                })
                .collect()
        }
        fn acks(&self) -> Vec<u64> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .flat_map(|m| match m {
                    ToTasker::Ack(v) => v.clone(),
                    _ => vec![],
                })
                .collect()
        }
    }

    fn start(path: &std::path::Path) -> (Handle, std::thread::JoinHandle<()>) {
        let (s, h) = Server::open(Store::open(path).unwrap()).unwrap();
        (h, std::thread::spawn(move || s.run()))
    }

    /// Tasker t1's hello: 2 cores, 2 slots.
    pub(crate) fn hello_message(
        incarnation: &str,
        running: Vec<(u64, u32)>,
        ended: Vec<JobEnd>,
    ) -> FromTasker {
        FromTasker::Hello {
            name: "t1".into(),
            host: "h".into(),
            resources: "CORES/2 SLOTS/2".into(),
            slots: 2,
            containers_refused: vec![],
            running,
            ended,
            incarnation: incarnation.into(),
        }
    }

    fn hello(
        h: &Handle,
        link: &Fake,
        incarnation: &str,
        running: Vec<(u64, u32)>,
        ended: Vec<JobEnd>,
    ) {
        h.send(Event::Connect("t1".into(), Box::new(link.clone())));
        h.send(Event::Tasker(
            "t1".into(),
            hello_message(incarnation, running, ended),
        ));
    }

    /// A server whose tasker t1 (incarnation "a") runs one job.
    struct OneRunning {
        _tmp: tempfile::TempDir,
        h: Handle,
        actor: std::thread::JoinHandle<()>,
        link: Fake,
        id: u64,
    }

    fn one_running() -> OneRunning {
        let tmp = tempfile::tempdir().unwrap();
        let (h, actor) = start(&tmp.path().join("b.db"));
        let link = Fake::default();
        hello(&h, &link, "a", vec![], vec![]);
        let id = submit(&h);
        until("the run", || link.runs() == [id]);
        OneRunning {
            _tmp: tmp,
            h,
            actor,
            link,
            id,
        }
    }

    impl OneRunning {
        fn stop(self) {
            self.h.send(Event::Shutdown);
            self.actor.join().unwrap();
        }
    }

    fn caller() -> Caller {
        Caller {
            uid: 1000,
            gid: 1000,
            user: "u".into(),
            admin: false,
        }
    }

    fn submit(h: &Handle) -> u64 {
        let job = Submit::new(vec!["true".into()], "/tmp".into());
        h.ask(|r| {
            Event::Submit(
                caller(),
                SubmitRequest {
                    jobs: vec![job],
                    array: None,
                },
                r,
            )
        })
        .unwrap()
        .ids[0]
    }

    fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// An end with exit status 0.
    fn done(job: u64) -> JobEnd {
        JobEnd {
            job,
            exit_code: Some(0),
            failure: None,
            hook_failures: vec![],
        }
    }

    fn state(h: &Handle, id: u64) -> JobView {
        h.ask(|r| Event::Info(id, r)).unwrap()
    }

    /// A job that waits for one whose end comes in the very turn it is submitted: it
    /// starts (the end was Done), or fails with the dependency (it was not), never waits
    /// for ever.
    #[test]
    fn a_dependent_submitted_in_the_turn_its_dependency_ends_is_decided() {
        for ok in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let (mut s, _h) = Server::open(Store::open(&tmp.path().join("db")).unwrap()).unwrap();
            let link = Fake::default();
            s.turn(vec![
                Event::Connect("t1".into(), Box::new(link.clone())),
                Event::Tasker("t1".into(), hello_message("i1", vec![], vec![])),
            ]);
            let sub = |after: Vec<u64>| {
                let (tx, rx) = mpsc::channel();
                let job = Submit {
                    after,
                    ..Submit::new(vec!["true".into()], "/tmp".into())
                };
                let e = Event::Submit(
                    caller(),
                    SubmitRequest {
                        jobs: vec![job],
                        array: None,
                    },
                    tx,
                );
                (e, rx)
            };
            let (e, rx) = sub(vec![]);
            s.turn(vec![e]);
            let a = rx.recv().unwrap().unwrap().ids[0];
            assert_eq!(link.runs(), vec![a]);
            let mut end = done(a);
            if !ok {
                end.failure = Some("exit status 1".into());
                end.exit_code = Some(1);
            }
            let (e, rx) = sub(vec![a]);
            s.turn(vec![Event::Tasker("t1".into(), FromTasker::Ended(end)), e]);
            let b = rx.recv().unwrap().unwrap().ids[0];
            let v = s.view(b).unwrap();
            if ok {
                assert_eq!(link.runs(), vec![a, b], "{v:?}");
            } else {
                assert_eq!(v.state, State::Failed, "{v:?}");
                assert_eq!(
                    v.reason.as_deref(),
                    Some(format!("dependency {a} failed").as_str())
                );
            }
        }
    }

    /// `berth exec` is for the job's owner (or an administrator), on a running job, a few
    /// at once per user; a tasker that goes ends its execs.
    #[test]
    fn execs_are_the_owners_and_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let (h, _actor) = start(&tmp.path().join("db"));
        let link = Fake::default();
        hello(&h, &link, "i1", vec![], vec![]);
        let id = submit(&h);
        until("the job to run", || link.runs() == vec![id]);
        let term = berth_proto::Interactive {
            host: "h".into(),
            port: 5000,
            token: "ab".repeat(32),
            rows: 24,
            cols: 80,
        };
        let exec = |c: Caller| {
            let x = berth_proto::ExecRequest {
                req: 0,
                job: id,
                command: vec!["true".into()],
                terminal: term.clone(),
                stdin: false,
                tty: false,
            };
            h.ask(|r| Event::Exec(c, x, r))
        };
        let mut other = caller();
        other.uid = 1001;
        let e = exec(other).unwrap_err();
        assert!(e.contains("only an administrator may enter"), "{e}");
        for _ in 0..MAX_EXECS_PER_USER {
            exec(caller()).unwrap();
        }
        let e = exec(caller()).unwrap_err();
        assert!(e.contains("at most 16 at once"), "{e}");
        // The tasker goes: its execs are over, and the user may exec again once it is back.
        h.send(Event::Gone("t1".into(), 0, Instant::now()));
        let e = exec(caller()).unwrap_err();
        assert!(
            e.contains("cannot be reached") || e.contains("enters running jobs"),
            "{e}"
        );
        let r = h.ask(|r| Event::ExecResult(caller(), 1, r)).unwrap();
        assert!(
            matches!(r, Some((None, Some(ref why))) if why.contains("went away")),
            "{r:?}"
        );
    }

    #[test]
    fn ends_are_recorded_once_and_acknowledged() {
        let s = one_running();
        let (h, link, id) = (&s.h, &s.link, s.id);
        let end = done(id);
        h.send(Event::Tasker("t1".into(), FromTasker::Ended(end.clone())));
        until("the ack", || link.acks() == [id]);
        assert_eq!(state(h, id).state, State::Done);
        // The same end again (as in a later hello) changes nothing, and is acknowledged.
        h.send(Event::Tasker("t1".into(), FromTasker::Ended(end)));
        until("the second ack", || link.acks() == [id, id]);
        assert_eq!(state(h, id).state, State::Done);
        s.stop();
    }

    /// A job run again is held to `--time-max` as a submission is: the administrator may
    /// have lowered it since the job was accepted.
    #[test]
    fn a_rerun_is_held_to_the_longest_time_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, h) = Server::open(Store::open(&tmp.path().join("b.db")).unwrap()).unwrap();
        s.time_max_ms = Some(3_600_000);
        let actor = std::thread::spawn(move || s.run());
        let submit_for = |ms: u64| {
            let mut job = Submit::new(vec!["true".into()], "/tmp".into());
            job.time_limit_ms = Some(ms);
            h.ask(|r| {
                Event::Submit(
                    caller(),
                    SubmitRequest {
                        jobs: vec![job],
                        array: None,
                    },
                    r,
                )
            })
            .unwrap()
            .ids[0]
        };
        // Accepted before the limit was lowered (the policy checks submissions).
        let long = submit_for(7_200_000);
        let short = submit_for(1_800_000);
        let e = h.ask(|r| Event::Rerun(caller(), long, r)).unwrap_err();
        assert!(
            e.contains("time limit of 2h, above the longest of 1h") && e.contains("--time 1h"),
            "{e}"
        );
        let again = h.ask(|r| Event::Rerun(caller(), short, r)).unwrap();
        assert_eq!(state(&h, again).time_limit_ms, Some(1_800_000));
        h.send(Event::Shutdown);
        actor.join().unwrap();
    }

    /// A second process of a connected tasker's name is refused, and what its hello says
    /// of ends is not taken for the first's jobs.
    #[test]
    fn a_refused_second_process_ends_no_job() {
        let s = one_running();
        let (h, link, id) = (&s.h, &s.link, s.id);
        let other = Fake::default();
        hello(h, &other, "b", vec![], vec![done(id)]);
        assert_eq!(state(h, id).state, State::Running);
        assert!(other.acks().is_empty() && link.acks().is_empty());
        h.send(Event::Tasker("t1".into(), FromTasker::Ended(done(id))));
        until("the ack", || link.acks() == [id]);
        assert_eq!(state(h, id).state, State::Done);
        s.stop();
    }

    /// What comes on a link that is not the tasker's (replaced, or a second process of
    /// the name refused) is not taken for the tasker's.
    #[test]
    fn only_the_taskers_own_link_speaks_for_it() {
        let s = one_running();
        let (h, link, id) = (&s.h, &s.link, s.id);
        // The fake link's serial is 0: a link of serial 7 is another.
        h.send(Event::FromLink("t1".into(), 7, FromTasker::Ended(done(id))));
        h.send(Event::FromLink("t1".into(), 7, FromTasker::Leaving));
        assert_eq!(state(h, id).state, State::Running);
        h.send(Event::FromLink("t1".into(), 0, FromTasker::Ended(done(id))));
        until("the ack", || link.acks() == [id]);
        assert_eq!(state(h, id).state, State::Done);
        s.stop();
    }

    /// A tasker that leaves is sent nothing more (and told so); a job it declines queues
    /// again and runs on its next process, once.
    #[test]
    fn a_leaving_tasker_gets_nothing_more_and_what_it_declines_queues_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (h, actor) = start(&tmp.path().join("b.db"));
        let link = Fake::default();
        hello(&h, &link, "a", vec![], vec![]);
        let first = submit(&h);
        until("the run", || link.runs() == [first]);
        h.send(Event::Tasker("t1".into(), FromTasker::Leaving));
        until("the bye", || {
            link.0
                .lock()
                .unwrap()
                .iter()
                .any(|m| matches!(m, ToTasker::Bye))
        });
        let second = submit(&h);
        // It declines the first (sent before it said it leaves).
        h.send(Event::Tasker(
            "t1".into(),
            FromTasker::Declined(vec![first]),
        ));
        until("the first queued", || {
            state(&h, first).state == State::Queued
        });
        assert_eq!(link.runs(), [first], "a job was sent to a leaving tasker");
        assert_eq!(state(&h, second).state, State::Queued);
        // Its next process takes both, each once.
        h.send(Event::Gone("t1".into(), 0, Instant::now()));
        let next = Fake::default();
        hello(&h, &next, "b", vec![], vec![]);
        until("both run", || next.runs().len() == 2);
        let mut runs = next.runs();
        runs.sort();
        assert_eq!(runs, [first, second]);
        // A decline of a job that ended, or runs elsewhere, changes nothing.
        h.send(Event::Tasker("t1".into(), FromTasker::Ended(done(first))));
        until("the ack", || next.acks() == [first]);
        h.send(Event::Tasker(
            "t2".into(),
            FromTasker::Declined(vec![second]),
        ));
        h.send(Event::Tasker(
            "t1".into(),
            FromTasker::Declined(vec![first]),
        ));
        until("still", || state(&h, first).state == State::Done);
        assert_eq!(state(&h, second).state, State::Running);
        h.send(Event::Shutdown);
        actor.join().unwrap();
    }

    #[test]
    fn after_a_server_restart_undelivered_starts_queue_again_and_a_new_tasker_loses_them() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("b.db");
        let (h, actor) = start(&path);
        let first = Fake::default();
        hello(&h, &first, "a", vec![], vec![]);
        let j1 = submit(&h);
        let j2 = submit(&h);
        until("both runs", || first.runs().len() == 2);
        h.send(Event::Shutdown);
        actor.join().unwrap();

        // The same tasker process comes back: it runs j1, never got j2.
        let (h, actor) = start(&path);
        let second = Fake::default();
        hello(&h, &second, "a", vec![(j1, 0)], vec![]);
        until("j2 sent again", || second.runs() == [j2]);
        assert_eq!(state(&h, j1).state, State::Running);
        h.send(Event::Shutdown);
        actor.join().unwrap();

        // A new tasker process: what it does not run is lost, never run again.
        let (h, actor) = start(&path);
        let third = Fake::default();
        hello(&h, &third, "b", vec![], vec![]);
        until("both lost", || {
            [j1, j2]
                .iter()
                .all(|j| state(&h, *j).reason.as_deref() == Some("lost"))
        });
        assert!(third.runs().is_empty());
        h.send(Event::Shutdown);
        actor.join().unwrap();
    }

    #[test]
    fn a_new_tasker_process_keeps_what_it_took_over_and_is_told_to_stop_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("b.db");
        let (h, actor) = start(&path);
        let first = Fake::default();
        hello(&h, &first, "a", vec![], vec![]);
        let j1 = submit(&h);
        until("the run", || first.runs() == [j1]);

        // The first process's link breaks (killed); a new process of the tasker says it
        // runs j1 (it took the container over): j1 stays Running there. It also says it
        // runs 999, which the server never sent there: that is stopped.
        h.send(Event::Gone("t1".into(), 0, Instant::now()));
        let second = Fake::default();
        hello(&h, &second, "b", vec![(j1, 0), (999, 1)], vec![]);
        until("the stop of 999", || second.stops() == [999]);
        assert_eq!(state(&h, j1).state, State::Running);
        // Its end, when it comes, is the job's.
        h.send(Event::Tasker("t1".into(), FromTasker::Ended(done(j1))));
        until("the ack", || second.acks() == [j1]);
        assert_eq!(state(&h, j1).state, State::Done);
        h.send(Event::Shutdown);
        actor.join().unwrap();
    }

    /// What a simulated tasker does, in a random sequence.
    #[derive(Debug, Clone)]
    enum Act {
        Submit(u8),
        End(u8),
        Vanish,
        Return { restarted: bool },
        UserStop(u8),
    }

    fn act() -> impl proptest::strategy::Strategy<Value = Act> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (1u8..4).prop_map(Act::Submit),
            4 => any::<u8>().prop_map(Act::End),
            1 => Just(Act::Vanish),
            1 => any::<bool>().prop_map(|restarted| Act::Return { restarted }),
            1 => any::<u8>().prop_map(Act::UserStop),
        ]
    }

    /// The tasker as the test plays it: what it runs, by slot; the ends the server has not
    /// acknowledged; how many times it was asked to run each job.
    struct Sim {
        link: Fake,
        seen: usize,
        connected: bool,
        incarnation: u32,
        running: std::collections::BTreeMap<u32, u64>,
        unacked: Vec<JobEnd>,
        runs: HashMap<u64, usize>,
    }

    impl Sim {
        fn hello(&mut self, h: &Handle) {
            self.link = Fake::default();
            self.seen = 0;
            hello(
                h,
                &self.link,
                &self.incarnation.to_string(),
                self.running.iter().map(|(s, j)| (*j, *s)).collect(),
                self.unacked.clone(),
            );
            self.connected = true;
        }

        /// Takes what the server sent: runs (each in a free slot, each job once), stops,
        /// acknowledgements.
        fn take(&mut self, h: &Handle) {
            let msgs: Vec<ToTasker> = self.link.0.lock().unwrap()[self.seen..].to_vec();
            self.seen += msgs.len();
            for m in msgs {
                match m {
                    ToTasker::Run(a) => {
                        assert!(
                            !self.running.contains_key(&a.slot),
                            "job {} sent to slot {}, which runs job {}",
                            a.job,
                            a.slot,
                            self.running[&a.slot]
                        );
                        *self.runs.entry(a.job).or_default() += 1;
                        self.running.insert(a.slot, a.job);
                    }
                    ToTasker::Stop(job) | ToTasker::StopBecause(job, _) => {
                        if let Some(slot) = self
                            .running
                            .iter()
                            .find(|(_, j)| **j == job)
                            .map(|(s, _)| *s)
                        {
                            self.end_slot(h, slot, false);
                        }
                    }
                    ToTasker::Ack(jobs) => self.unacked.retain(|e| !jobs.contains(&e.job)),
                    ToTasker::ReadLog(_) | ToTasker::Bye | ToTasker::Exec(_) => {}
                }
            }
        }

        fn end_slot(&mut self, h: &Handle, slot: u32, ok: bool) {
            let job = self.running.remove(&slot).unwrap();
            let end = JobEnd {
                job,
                exit_code: Some(if ok { 0 } else { 143 }),
                failure: (!ok).then(|| "stopped by request".to_string()),
                hook_failures: vec![],
            };
            self.unacked.push(end.clone());
            if self.connected {
                h.send(Event::Tasker("t1".into(), FromTasker::Ended(end)));
            }
        }
    }

    /// Every event the actor has so far is handled once this returns.
    fn sync(h: &Handle) {
        let _ = h.ask(Event::Taskers);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..Default::default()
        })]
        /// Whatever a tasker does (vanishes, returns, restarts) while jobs are submitted,
        /// end and are stopped: no slot is given twice, no job is run twice, no accepted
        /// job is lost unless its tasker lost it, and the consumables all come back.
        #[test]
        fn the_server_keeps_its_promises_whatever_a_tasker_does(
            acts in proptest::collection::vec(act(), 1..40)
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let (mut server, h) = Server::open(Store::open(&tmp.path().join("b.db")).unwrap()).unwrap();
            server.tasker_grace = Duration::ZERO;
            let actor = std::thread::spawn(move || server.run());
            let mut sim = Sim {
                link: Fake::default(),
                seen: 0,
                connected: false,
                incarnation: 1,
                running: Default::default(),
                unacked: vec![],
                runs: HashMap::new(),
            };
            sim.hello(&h);
            let mut ids: Vec<u64> = Vec::new();
            for a in &acts {
                match a {
                    Act::Submit(n) => {
                        for _ in 0..*n {
                            ids.push(submit(&h));
                        }
                    }
                    Act::End(i) => {
                        let slots: Vec<u32> = sim.running.keys().copied().collect();
                        if !slots.is_empty() {
                            let slot = slots[*i as usize % slots.len()];
                            sim.end_slot(&h, slot, true);
                        }
                    }
                    Act::Vanish => {
                        if sim.connected {
                            sim.connected = false;
                            h.send(Event::Gone("t1".into(), 0, Instant::now()));
                        }
                    }
                    Act::Return { restarted } => {
                        if !sim.connected {
                            if *restarted {
                                // A new process: what the old one ran is gone with it.
                                sim.incarnation += 1;
                                sim.running.clear();
                                sim.unacked.clear();
                            }
                            sim.hello(&h);
                        }
                    }
                    Act::UserStop(i) => {
                        if !ids.is_empty() {
                            let id = ids[*i as usize % ids.len()];
                            let admin = Caller { admin: true, ..caller() };
                            let _ = h.ask(|r| Event::Stop(admin, id, r));
                        }
                    }
                }
                sync(&h);
                sim.take(&h);
                sync(&h);
                sim.take(&h);
            }
            // The end of the day: the tasker back, everything it runs ends, until the
            // queue is empty.
            if !sim.connected {
                sim.hello(&h);
            }
            for _ in 0..200 {
                sync(&h);
                sim.take(&h);
                let slots: Vec<u32> = sim.running.keys().copied().collect();
                for s in slots {
                    sim.end_slot(&h, s, true);
                }
                sync(&h);
                sim.take(&h);
                let unfinished = ids.iter().any(|id| !state(&h, *id).state.is_final());
                if !unfinished && sim.running.is_empty() {
                    break;
                }
            }
            for id in &ids {
                let v = state(&h, *id);
                proptest::prop_assert!(v.state.is_final(), "job {id} is {:?}", v.state);
                proptest::prop_assert!(sim.runs.get(id).copied().unwrap_or(0) <= 1, "job {id} ran twice");
                if v.state == State::Failed {
                    let r = v.reason.unwrap_or_default();
                    proptest::prop_assert!(
                        r == "lost" || r.contains("stopped"),
                        "job {id}: {r}"
                    );
                }
            }
            let t = &h.ask(Event::Taskers).unwrap()[0];
            proptest::prop_assert_eq!(t.running, 0);
            proptest::prop_assert_eq!(&t.free, "CORES/2 SLOTS/2");
            h.send(Event::Shutdown);
            actor.join().unwrap();
        }
    }
}
