//! The server's core: the queue, the taskers and what they hold, and the scheduling
//! decisions, as plain functions over state. No I/O: the daemon around it persists and
//! sends what the core decides, and tests drive it directly.
//!
//! Queued jobs are grouped in classes of identical requests, each an ordered set of
//! (priority, id). A scheduling pass merges the classes' heads in priority-then-submission
//! order and gives each head to the first tasker where it fits; a class whose head fits
//! nowhere is left for the rest of the pass, since nothing frees during a pass. A pass
//! thus costs what it dispatches, however long the queue.

use berth_resources::{with_defaults, Expr, Ledger, Offer, Take};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

/// A job's place in the queue: higher priority first, then lower id (older) first.
type Key = (Reverse<i32>, u64);

struct Class {
    request: Arc<Expr>,
    queue: BTreeSet<Key>,
}

/// A tasker as the core knows it.
pub struct Tasker {
    /// What it offers, and what its jobs hold.
    pub ledger: Ledger,
    /// Slot i holds the job running there.
    pub slots: Vec<Option<u64>>,
    /// Its process is stopping (it said it leaves): nothing starts there.
    pub leaving: bool,
}

impl Tasker {
    fn free_slot(&self) -> Option<u32> {
        if self.leaving {
            return None;
        }
        self.slots
            .iter()
            .position(|s| s.is_none())
            .map(|i| i as u32)
    }
}

struct Running {
    tasker: String,
    slot: u32,
    take: Take,
}

/// A decision: start job on tasker, in slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// The job.
    pub job: u64,
    /// The tasker's name.
    pub tasker: String,
    /// The slot (`VOV_JOBSLOT`).
    pub slot: u32,
    /// The container configuration the match went through: the job runs in exactly this
    /// one (a request may name several as alternatives), or bare when None.
    pub container: Option<String>,
}

/// What stopping a job means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopWhat {
    /// It was queued and is now out of the queue.
    Dequeued,
    /// It runs on this tasker: ask the tasker to stop it.
    Running(String),
    /// The core does not know it (ended already, or never existed).
    Unknown,
}

/// What a tasker's hello means for the jobs: the rules of a tasker that (re)joins,
/// decided with no I/O (the daemon applies them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HelloVerdict {
    /// Jobs recorded as running there that it still runs, with their slots: they keep
    /// them.
    pub keep: Vec<(u64, u32)>,
    /// Jobs recorded as running there that it neither runs nor has ended, sent to this
    /// very process, which never got them: they never ran, and queue again.
    pub requeue: Vec<u64>,
    /// Jobs recorded as running there that it neither runs nor has ended, sent to an
    /// earlier process of the tasker: nobody can know what became of them.
    pub lost: Vec<u64>,
    /// Jobs it runs that are not recorded as running there (failed as lost while it was
    /// away too long, say): they must not go on unaccounted, and are stopped.
    pub stop: Vec<u64>,
}

/// Judges a tasker's hello. `recorded` are the jobs recorded as running on it, each with
/// the process (incarnation) its start was sent to; `listed` what it says it runs (job,
/// slot); `ended` the jobs whose ends it lists; `incarnation` the process saying hello.
pub fn judge_hello(
    recorded: &[(u64, &str)],
    listed: &[(u64, u32)],
    ended: &[u64],
    incarnation: &str,
) -> HelloVerdict {
    let mut v = HelloVerdict::default();
    let listed_map: HashMap<u64, u32> = listed.iter().copied().collect();
    for &(id, sent_to) in recorded {
        match listed_map.get(&id) {
            Some(slot) => v.keep.push((id, *slot)),
            None if ended.contains(&id) => {}
            None if sent_to == incarnation => v.requeue.push(id),
            None => v.lost.push(id),
        }
    }
    for &(id, _) in listed {
        if !recorded.iter().any(|(r, _)| *r == id) {
            v.stop.push(id);
        }
    }
    v
}

/// What to do with a job's end that a tasker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndVerdict {
    /// Record it: the job ran there, and this is its end.
    Record,
    /// Acknowledge it without recording: recorded already, or the job no longer counts as
    /// running there (it was lost while its tasker was away too long), so that the tasker
    /// forgets it.
    Forget,
}

/// Judges an end reported by tasker `from` for a job recorded as running on
/// `recorded_on`; `seen` when the same end came earlier in this turn.
pub fn judge_end(recorded_on: Option<&str>, from: &str, seen: bool) -> EndVerdict {
    if recorded_on == Some(from) && !seen {
        EndVerdict::Record
    } else {
        EndVerdict::Forget
    }
}

/// Whether a job that tasker `from` declined (sent, not started: it is stopping) queues
/// again: only if it is recorded as running there, and its end has not come (`ended`).
pub fn judge_decline(recorded_on: Option<&str>, from: &str, ended: bool) -> bool {
    recorded_on == Some(from) && !ended
}

/// Taskers away, each with the moment its grace ends: the rule of liveness, with the time
/// handed in.
#[derive(Debug, Default)]
pub struct Away {
    until: HashMap<String, std::time::Instant>,
}

impl Away {
    /// Tasker `name` was last heard at `heard`: it has `grace` from then to come back.
    /// An earlier deadline is kept (`first`) when asked, as for taskers a restarted server
    /// waits for.
    pub fn gone(
        &mut self,
        name: &str,
        heard: std::time::Instant,
        grace: std::time::Duration,
        first: bool,
    ) {
        let until = heard + grace;
        if first {
            self.until.entry(name.to_string()).or_insert(until);
        } else {
            self.until.insert(name.to_string(), until);
        }
    }

    /// It is back.
    pub fn back(&mut self, name: &str) {
        self.until.remove(name);
    }

    /// The taskers whose grace has ended by `now`, forgotten here: their jobs are lost.
    pub fn expired(&mut self, now: std::time::Instant) -> Vec<String> {
        let out: Vec<String> = self
            .until
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &out {
            self.until.remove(n);
        }
        out
    }
}

/// The core.
#[derive(Default)]
pub struct Core {
    classes: Vec<Class>,
    by_text: HashMap<Option<String>, usize>,
    queued: HashMap<u64, usize>,
    running: HashMap<u64, Running>,
    taskers: BTreeMap<String, Tasker>,
}

impl Core {
    /// An empty core.
    pub fn new() -> Core {
        Core::default()
    }

    /// Parses a request and adds the implicit `CORES/1 SLOTS/1`.
    pub fn parse_request(text: Option<&str>) -> Result<Expr, berth_resources::ParseError> {
        Ok(with_defaults(text.map(berth_resources::parse).transpose()?))
    }

    fn class_of(&mut self, text: Option<&str>) -> Result<usize, berth_resources::ParseError> {
        let key = text.map(str::to_string);
        if let Some(&c) = self.by_text.get(&key) {
            return Ok(c);
        }
        let request = Arc::new(Core::parse_request(text)?);
        self.classes.push(Class {
            request,
            queue: BTreeSet::new(),
        });
        let c = self.classes.len() - 1;
        self.by_text.insert(key, c);
        Ok(c)
    }

    /// Queues a job.
    pub fn enqueue(
        &mut self,
        id: u64,
        priority: i32,
        request: Option<&str>,
    ) -> Result<(), berth_resources::ParseError> {
        let c = self.class_of(request)?;
        self.classes[c].queue.insert((Reverse(priority), id));
        self.queued.insert(id, c);
        Ok(())
    }

    /// How many jobs wait, and how many run.
    pub fn counts(&self) -> (usize, usize) {
        (self.queued.len(), self.running.len())
    }

    /// A tasker joins (or joins again with new resources). Its slots start empty.
    pub fn tasker_joined(&mut self, name: &str, offer: Offer, slots: u32) {
        self.taskers.insert(
            name.to_string(),
            Tasker {
                ledger: Ledger::new(offer),
                slots: vec![None; slots as usize],
                leaving: false,
            },
        );
    }

    /// The tasker's process is stopping: nothing more starts there (its jobs go on; the
    /// next process of it joins afresh).
    pub fn tasker_leaving(&mut self, name: &str) {
        if let Some(t) = self.taskers.get_mut(name) {
            t.leaving = true;
        }
    }

    /// The taskers, by name.
    pub fn taskers(&self) -> &BTreeMap<String, Tasker> {
        &self.taskers
    }

    /// Marks a job as running where the tasker says it runs, taking its resources (used
    /// when a tasker comes back and reports jobs it kept running).
    pub fn adopt_running(
        &mut self,
        id: u64,
        tasker: &str,
        slot: u32,
        request: Option<&str>,
    ) -> bool {
        let Ok(req) = Core::parse_request(request) else {
            return false;
        };
        let Some(t) = self.taskers.get_mut(tasker) else {
            return false;
        };
        let Some(take) = t.ledger.fits(&req) else {
            return false;
        };
        if t.slots.get(slot as usize).is_none_or(|s| s.is_some()) || !t.ledger.take(&take) {
            return false;
        }
        t.slots[slot as usize] = Some(id);
        self.running.insert(
            id,
            Running {
                tasker: tasker.to_string(),
                slot,
                take,
            },
        );
        true
    }

    /// A tasker is gone: the jobs it was running are returned, and no longer held.
    pub fn tasker_gone(&mut self, name: &str) -> Vec<u64> {
        self.taskers.remove(name);
        let lost: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.tasker == name)
            .map(|(id, _)| *id)
            .collect();
        for id in &lost {
            self.running.remove(id);
        }
        lost
    }

    /// Where a running job runs: its tasker and slot.
    pub fn running_at(&self, id: u64) -> Option<(&str, u32)> {
        self.running.get(&id).map(|r| (r.tasker.as_str(), r.slot))
    }

    /// A job ended: its slot and resources are given back, exactly once.
    pub fn ended(&mut self, id: u64) -> bool {
        let Some(r) = self.running.remove(&id) else {
            return false;
        };
        if let Some(t) = self.taskers.get_mut(&r.tasker) {
            t.ledger.give_back(&r.take);
            if let Some(s) = t.slots.get_mut(r.slot as usize) {
                *s = None;
            }
        }
        true
    }

    /// A dispatched job that its tasker could not start goes back to the queue.
    pub fn requeue(&mut self, id: u64, priority: i32, request: Option<&str>) {
        if self.ended(id) {
            let _ = self.enqueue(id, priority, request);
        }
    }

    /// Stops a job as far as the core is concerned.
    pub fn stop(&mut self, id: u64) -> StopWhat {
        if let Some(c) = self.queued.remove(&id) {
            self.classes[c].queue.retain(|(_, j)| *j != id);
            return StopWhat::Dequeued;
        }
        match self.running.get(&id) {
            Some(r) => StopWhat::Running(r.tasker.clone()),
            None => StopWhat::Unknown,
        }
    }

    /// One scheduling pass: every job that can start now, and where.
    pub fn schedule(&mut self) -> Vec<Dispatch> {
        let mut out = Vec::new();
        let mut free_slots: usize = self
            .taskers
            .values()
            .filter(|t| !t.leaving)
            .map(|t| t.slots.iter().filter(|s| s.is_none()).count())
            .sum();
        if free_slots == 0 {
            return out;
        }
        let mut heads: BinaryHeap<Reverse<(Key, usize)>> = self
            .classes
            .iter()
            .enumerate()
            .filter_map(|(c, cl)| cl.queue.first().map(|k| Reverse((*k, c))))
            .collect();
        // Nothing frees during a pass, so a tasker where a class did not fit will not take
        // it later in the pass either: each class resumes its first-fit scan where it last
        // found a place.
        let mut resume: HashMap<usize, usize> = HashMap::new();
        while let Some(Reverse((key, c))) = heads.pop() {
            let request = self.classes[c].request.clone();
            let start = resume.get(&c).copied().unwrap_or(0);
            let found = self
                .taskers
                .iter()
                .enumerate()
                .skip(start)
                .find_map(|(i, (name, t))| {
                    let slot = t.free_slot()?;
                    let take = t.ledger.fits(&request)?;
                    Some((i, name.clone(), slot, take))
                });
            let Some((at, tasker, slot, take)) = found else {
                continue; // this class waits for the rest of the pass
            };
            resume.insert(c, at);
            let container = take.container().map(str::to_string);
            let t = self.taskers.get_mut(&tasker).expect("found above");
            t.ledger.take(&take);
            t.slots[slot as usize] = Some(key.1);
            self.classes[c].queue.remove(&key);
            self.queued.remove(&key.1);
            self.running.insert(
                key.1,
                Running {
                    tasker: tasker.clone(),
                    slot,
                    take,
                },
            );
            out.push(Dispatch {
                job: key.1,
                tasker,
                slot,
                container,
            });
            if let Some(next) = self.classes[c].queue.first() {
                heads.push(Reverse((*next, c)));
            }
            free_slots -= 1;
            if free_slots == 0 {
                break;
            }
        }
        out
    }

    /// Why a request cannot start: no tasker could ever run it, or those that could are
    /// busy. None when it could start now.
    pub fn why_waiting(&self, request: Option<&str>) -> Option<String> {
        let req = match Core::parse_request(request) {
            Ok(r) => r,
            Err(e) => return Some(e.to_string()),
        };
        if self.taskers.is_empty() {
            return Some("no tasker has joined the server".to_string());
        }
        let able: Vec<&String> = self
            .taskers
            .iter()
            .filter(|(_, t)| t.ledger.could_fit(&req))
            .map(|(n, _)| n)
            .collect();
        if able.is_empty() {
            let shown = request.unwrap_or("CORES/1 SLOTS/1");
            return Some(format!(
                "no tasker can ever satisfy {shown:?} (taskers: {}); it stays queued in case one joins",
                self.taskers.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let now = self
            .taskers
            .values()
            .any(|t| t.free_slot().is_some() && t.ledger.fits(&req).is_some());
        if now {
            None
        } else {
            Some(format!(
                "waiting for resources: the taskers that could run it ({}) are busy",
                able.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_with(taskers: &[(&str, &str, u32)]) -> Core {
        let mut c = Core::new();
        for (n, o, s) in taskers {
            c.tasker_joined(n, Offer::parse(o).unwrap(), *s);
        }
        c
    }

    fn ids(d: &[Dispatch]) -> Vec<u64> {
        d.iter().map(|d| d.job).collect()
    }

    #[test]
    fn dispatches_in_priority_then_submission_order_first_fit() {
        let mut c = core_with(&[("a", "CORES/2 SLOTS/2", 2), ("b", "CORES/4 SLOTS/4 GPU", 4)]);
        c.enqueue(1, 0, None).unwrap();
        c.enqueue(2, 0, Some("GPU")).unwrap();
        c.enqueue(3, 5, None).unwrap();
        c.enqueue(4, 0, Some("CORES/3")).unwrap();
        let d = c.schedule();
        assert_eq!(ids(&d), [3, 1, 2, 4]);
        assert_eq!(
            d[0],
            Dispatch {
                job: 3,
                tasker: "a".into(),
                slot: 0,
                container: None,
            }
        );
        assert_eq!(
            d[1],
            Dispatch {
                job: 1,
                tasker: "a".into(),
                slot: 1,
                container: None,
            }
        );
        assert_eq!(d[2].tasker, "b");
        assert_eq!(
            d[3],
            Dispatch {
                job: 4,
                tasker: "b".into(),
                slot: 1,
                container: None,
            }
        );
        assert!(c.schedule().is_empty());
        assert_eq!(c.counts(), (0, 4));
    }

    #[test]
    fn a_job_that_may_run_in_a_container_is_dispatched_with_the_one_matched() {
        let mut c = core_with(&[
            ("a", "CORES/4 SLOTS/4 Container:c2 GPU/1", 4),
            ("b", "CORES/4 SLOTS/4", 4),
        ]);
        c.enqueue(1, 0, Some("Container:c1 | Container:c2"))
            .unwrap();
        c.enqueue(2, 0, Some("(Container:nope | Container:c2) GPU/1"))
            .unwrap();
        c.enqueue(3, 0, Some("Container:c1 | CORES/3")).unwrap();
        c.enqueue(4, 0, Some("!Container:c2")).unwrap();
        let d = c.schedule();
        let got: Vec<(u64, &str, Option<&str>)> = d
            .iter()
            .map(|d| (d.job, d.tasker.as_str(), d.container.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "a", Some("c2")),
                (2, "a", Some("c2")),
                (3, "b", None),
                (4, "b", None)
            ]
        );
    }

    #[test]
    fn a_tasker_away_past_its_grace_counted_from_when_it_was_last_heard() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut away = Away::default();
        away.gone("a", t0, Duration::from_secs(30), false);
        away.gone(
            "b",
            t0 + Duration::from_secs(5),
            Duration::from_secs(30),
            false,
        );
        assert!(away.expired(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(away.expired(t0 + Duration::from_secs(30)), ["a"]);
        away.back("b");
        assert!(away.expired(t0 + Duration::from_secs(99)).is_empty());
        // A restarted server's first deadline is not pushed back by a later one.
        away.gone("c", t0, Duration::from_secs(10), true);
        away.gone(
            "c",
            t0 + Duration::from_secs(60),
            Duration::from_secs(10),
            true,
        );
        assert_eq!(away.expired(t0 + Duration::from_secs(10)), ["c"]);
    }

    #[test]
    fn end_verdicts_table() {
        use EndVerdict::*;
        for (recorded, from, seen, want) in [
            (Some("t1"), "t1", false, Record),
            (Some("t1"), "t1", true, Forget),
            (Some("t2"), "t1", false, Forget),
            (None, "t1", false, Forget),
        ] {
            assert_eq!(
                judge_end(recorded, from, seen),
                want,
                "{recorded:?} {from} {seen}"
            );
        }
    }

    #[test]
    fn hello_verdicts_table() {
        // (recorded: job and the process its start went to, listed, ended, incarnation,
        //  keep, requeue, lost, stop)
        type Case<'a> = (
            &'a [(u64, &'a str)],
            &'a [(u64, u32)],
            &'a [u64],
            &'a str,
            &'a [(u64, u32)],
            &'a [u64],
            &'a [u64],
            &'a [u64],
        );
        let cases: &[Case] = &[
            // Back in time: what runs keeps its slot.
            (
                &[(1, "a"), (2, "a")],
                &[(1, 0), (2, 1)],
                &[],
                "a",
                &[(1, 0), (2, 1)],
                &[],
                &[],
                &[],
            ),
            // An end listed is neither lost nor queued again.
            (&[(1, "a")], &[], &[1], "a", &[], &[], &[], &[]),
            // Sent to this process, never heard of: never delivered, queued again.
            (&[(1, "b")], &[], &[], "b", &[], &[1], &[], &[]),
            // Sent to an earlier process: lost.
            (&[(1, "a")], &[], &[], "b", &[], &[], &[1], &[]),
            // Runs what the server does not count as running there: stopped.
            (&[], &[(7, 0)], &[], "a", &[], &[], &[], &[7]),
        ];
        for (recorded, listed, ended, inc, keep, requeue, lost, stop) in cases {
            assert_eq!(
                judge_hello(recorded, listed, ended, inc),
                HelloVerdict {
                    keep: keep.to_vec(),
                    requeue: requeue.to_vec(),
                    lost: lost.to_vec(),
                    stop: stop.to_vec(),
                },
                "recorded {recorded:?}, listed {listed:?}, ended {ended:?}, by {inc}"
            );
        }
    }

    #[test]
    fn a_freed_slot_starts_the_next_job_and_resources_come_back_once() {
        let mut c = core_with(&[("a", "CORES/1 SLOTS/1", 1)]);
        for id in 1..=3 {
            c.enqueue(id, 0, None).unwrap();
        }
        assert_eq!(ids(&c.schedule()), [1]);
        assert!(c.schedule().is_empty());
        assert!(c.ended(1));
        assert!(!c.ended(1), "a job ends once");
        let d = c.schedule();
        assert_eq!(
            d,
            [Dispatch {
                job: 2,
                tasker: "a".into(),
                slot: 0,
                container: None,
            }]
        );
        assert_eq!(c.taskers()["a"].ledger.free("CORES"), Some(0));
        c.ended(2);
        assert_eq!(c.taskers()["a"].ledger.free("CORES"), Some(1));
    }

    #[test]
    fn a_class_that_fits_nowhere_does_not_block_others() {
        let mut c = core_with(&[("a", "CORES/2 SLOTS/4", 4)]);
        c.enqueue(1, 9, Some("CORES/8")).unwrap();
        c.enqueue(2, 0, None).unwrap();
        assert_eq!(ids(&c.schedule()), [2]);
        assert!(c
            .why_waiting(Some("CORES/8"))
            .unwrap()
            .contains("no tasker can ever satisfy \"CORES/8\""));
        assert_eq!(c.why_waiting(None), None);
    }

    #[test]
    fn stop_dequeues_or_names_the_tasker() {
        let mut c = core_with(&[("a", "CORES/1 SLOTS/1", 1)]);
        c.enqueue(1, 0, None).unwrap();
        c.enqueue(2, 0, None).unwrap();
        c.schedule();
        assert_eq!(c.stop(2), StopWhat::Dequeued);
        assert_eq!(c.stop(1), StopWhat::Running("a".into()));
        assert_eq!(c.stop(7), StopWhat::Unknown);
        c.ended(1);
        assert!(c.schedule().is_empty(), "the stopped job must not start");
    }

    #[test]
    fn a_lost_tasker_gives_its_jobs_back() {
        let mut c = core_with(&[("a", "CORES/2 SLOTS/2", 2)]);
        c.enqueue(1, 0, None).unwrap();
        c.enqueue(2, 0, None).unwrap();
        c.schedule();
        let mut lost = c.tasker_gone("a");
        lost.sort();
        assert_eq!(lost, [1, 2]);
        assert_eq!(c.counts(), (0, 0));
        assert!(c
            .why_waiting(None)
            .unwrap()
            .contains("no tasker has joined"));
    }

    #[test]
    fn a_returning_tasker_keeps_its_running_jobs() {
        let mut c = core_with(&[("a", "CORES/2 SLOTS/2", 2)]);
        assert!(c.adopt_running(5, "a", 1, None));
        assert!(!c.adopt_running(6, "a", 1, None), "slot 1 is taken");
        c.enqueue(7, 0, None).unwrap();
        assert_eq!(
            c.schedule(),
            [Dispatch {
                job: 7,
                tasker: "a".into(),
                slot: 0,
                container: None,
            }]
        );
    }

    #[test]
    fn slots_are_numbered_from_zero_and_never_shared() {
        let mut c = core_with(&[("a", "CORES/8 SLOTS/3", 3)]);
        for id in 1..=5 {
            c.enqueue(id, 0, None).unwrap();
        }
        let slots: Vec<u32> = c.schedule().iter().map(|d| d.slot).collect();
        assert_eq!(slots, [0, 1, 2]);
        c.ended(2);
        assert_eq!(
            c.schedule(),
            [Dispatch {
                job: 4,
                tasker: "a".into(),
                slot: 1,
                container: None,
            }]
        );
    }
}
