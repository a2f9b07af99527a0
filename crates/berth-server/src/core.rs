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
    /// Each queued job's class and priority (its key in the class's queue).
    queued: HashMap<u64, (usize, i32)>,
    running: HashMap<u64, Running>,
    taskers: BTreeMap<String, Tasker>,
    /// Every job recorded as Running, with where and to which process of its tasker its
    /// start went: also the jobs of taskers away (which `running` no longer holds).
    placed: HashMap<u64, Placed>,
    /// Taskers away, with when their grace ends.
    away: Away,
}

/// What a tasker's hello says, as the core needs it.
#[derive(Debug)]
pub struct TaskerHello<'a> {
    /// The tasker's name.
    pub name: &'a str,
    /// What it offers.
    pub offer: Offer,
    /// Its slots.
    pub slots: u32,
    /// The process saying hello.
    pub incarnation: &'a str,
    /// What it runs: (job, slot).
    pub listed: &'a [(u64, u32)],
    /// The jobs whose ends it lists.
    pub ended: &'a [u64],
}

/// Where a job recorded as Running runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its tasker.
    pub tasker: String,
    /// The incarnation of the tasker its start was sent to.
    pub run: String,
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
        self.queued.insert(id, (c, priority));
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

    /// Job `id` is recorded as Running on `tasker`, its start sent to the process `run`.
    pub fn place(&mut self, id: u64, tasker: &str, run: &str) {
        self.placed.insert(
            id,
            Placed {
                tasker: tasker.to_string(),
                run: run.to_string(),
            },
        );
    }

    /// Job `id` is no longer recorded as Running (it ended, was lost, stopped, or queued
    /// again).
    pub fn unplace(&mut self, id: u64) {
        self.placed.remove(&id);
    }

    /// The tasker job `id` is recorded as running on.
    pub fn placed_on(&self, id: u64) -> Option<&str> {
        self.placed.get(&id).map(|p| p.tasker.as_str())
    }

    /// After a start: every tasker with jobs recorded as Running, and not connected, has
    /// `grace` from `now` to come back (an earlier deadline is kept).
    pub fn await_taskers(&mut self, now: std::time::Instant, grace: std::time::Duration) {
        let names: std::collections::BTreeSet<String> =
            self.placed.values().map(|p| p.tasker.clone()).collect();
        for name in names {
            if !self.taskers.contains_key(&name) {
                self.away.gone(&name, now, grace, true);
            }
        }
    }

    /// Tasker `name`'s link broke, last heard at `heard`: its slots are no longer counted,
    /// and its jobs are lost unless it is back within `grace` of then.
    pub fn tasker_away(
        &mut self,
        name: &str,
        heard: std::time::Instant,
        grace: std::time::Duration,
    ) {
        self.tasker_gone(name);
        self.away.gone(name, heard, grace, false);
    }

    /// A tasker says hello: it joins afresh, and the jobs recorded on it are judged
    /// ([`judge_hello`]). A job it still runs but that no longer fits (it came back with
    /// less) is lost and stopped. `request` gives a job's resource request.
    pub fn hello(
        &mut self,
        h: TaskerHello<'_>,
        request: impl Fn(u64) -> Option<String>,
    ) -> HelloVerdict {
        let TaskerHello {
            name,
            offer,
            slots,
            incarnation,
            listed,
            ended,
        } = h;
        self.away.back(name);
        self.tasker_gone(name);
        self.tasker_joined(name, offer, slots);
        let recorded: Vec<(u64, &str)> = self
            .placed
            .iter()
            .filter(|(_, p)| p.tasker == name)
            .map(|(id, p)| (*id, p.run.as_str()))
            .collect();
        let mut v = judge_hello(&recorded, listed, ended, incarnation);
        let keep = std::mem::take(&mut v.keep);
        for (id, slot) in keep {
            if self.adopt_running(id, name, slot, request(id).as_deref()) {
                v.keep.push((id, slot));
            } else {
                v.lost.push(id);
                v.stop.push(id);
            }
        }
        v
    }

    /// What to do with an end tasker `from` reports ([`judge_end`]); `seen` when the same
    /// end came earlier in this turn.
    pub fn end_verdict(&self, id: u64, from: &str, seen: bool) -> EndVerdict {
        judge_end(self.placed_on(id), from, seen)
    }

    /// Tasker `from` declined job `id` (sent, never started): when [`judge_decline`] says
    /// it queues again, its slot and resources are given back and true is returned.
    pub fn decline(&mut self, id: u64, from: &str, ended: bool) -> bool {
        if judge_decline(self.placed_on(id), from, ended) {
            self.ended(id);
            true
        } else {
            false
        }
    }

    /// The jobs of taskers whose grace has ended by `now` and that are not back: lost,
    /// except those for which `ended` is true (their end came, and waits to be written).
    pub fn expired(&mut self, now: std::time::Instant, ended: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut lost = Vec::new();
        for name in self.away.expired(now) {
            if self.taskers.contains_key(&name) {
                continue;
            }
            lost.extend(
                self.placed
                    .iter()
                    .filter(|(id, p)| p.tasker == name && !ended(**id))
                    .map(|(id, _)| *id),
            );
        }
        lost.sort_unstable();
        lost
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
        if let Some((c, priority)) = self.queued.remove(&id) {
            self.classes[c].queue.remove(&(Reverse(priority), id));
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

    /// The server's rules for taskers, over the core alone, driven by random lives: taskers
    /// start jobs, end them, lose their link, crash and come back as a new process, come
    /// back in time or too late; users stop jobs; time passes. A model of the store and of
    /// each tasker process checks, after every step: no slot shared, consumables held
    /// exactly by the jobs that run (given back once), no job run twice, no accepted job
    /// lost (each is queued, recorded as running, or ended once, and an ended job never
    /// changes again).
    mod lives {
        use super::super::*;
        use proptest::prelude::*;
        use std::time::{Duration, Instant};

        #[derive(Debug, Clone)]
        enum Act {
            Submit(u8),
            Schedule,
            End(u8, u8),
            LinkDown(u8),
            Crash(u8),
            Hello(u8),
            Stop(u8),
            Time(u8),
        }

        fn act() -> impl Strategy<Value = Act> {
            prop_oneof![
                (1u8..4).prop_map(Act::Submit),
                Just(Act::Schedule),
                (0u8..3, any::<u8>()).prop_map(|(t, k)| Act::End(t, k)),
                (0u8..3).prop_map(Act::LinkDown),
                (0u8..3).prop_map(Act::Crash),
                (0u8..3).prop_map(Act::Hello),
                any::<u8>().prop_map(Act::Stop),
                (1u8..20).prop_map(Act::Time),
            ]
        }

        #[derive(Debug, Clone, PartialEq)]
        enum Fate {
            Queued,
            Running,
            Done,
            Lost,
            Stopped,
        }

        /// A tasker process as the model sees it.
        #[derive(Default)]
        struct Proc {
            run: u32,
            connected: bool,
            /// What it runs: job -> slot.
            running: BTreeMap<u64, u32>,
            /// Ends it keeps until acknowledged.
            unacked: Vec<u64>,
        }

        const GRACE: Duration = Duration::from_secs(5);
        const OFFER: &str = "CORES/8 L/2 SLOTS/3";
        const REQUEST: &str = "L/1";

        struct World {
            core: Core,
            store: BTreeMap<u64, Fate>,
            runs: BTreeMap<u64, u32>,
            procs: Vec<Proc>,
            next: u64,
            now: Instant,
        }

        fn name(t: usize) -> String {
            format!("t{t}")
        }

        impl World {
            fn new() -> World {
                let mut w = World {
                    core: Core::new(),
                    store: BTreeMap::new(),
                    runs: BTreeMap::new(),
                    procs: (0..3).map(|_| Proc::default()).collect(),
                    next: 1,
                    now: Instant::now(),
                };
                for t in 0..3 {
                    w.hello(t);
                }
                w
            }

            fn set(&mut self, id: u64, to: Fate) {
                let from = self.store.get(&id).cloned();
                let legal = matches!(
                    (&from, &to),
                    (None, Fate::Queued)
                        | (Some(Fate::Queued), Fate::Running | Fate::Stopped)
                        | (
                            Some(Fate::Running),
                            Fate::Queued | Fate::Done | Fate::Lost | Fate::Stopped
                        )
                );
                assert!(legal, "job {id}: {from:?} -> {to:?}");
                self.store.insert(id, to);
            }

            /// A tasker reports an end (on its link): the server's rule, then the ack.
            fn deliver_end(&mut self, t: usize, id: u64) {
                match self.core.end_verdict(id, &name(t), false) {
                    EndVerdict::Record => {
                        self.core.ended(id);
                        self.core.unplace(id);
                        self.set(id, Fate::Done);
                    }
                    EndVerdict::Forget => {}
                }
                self.procs[t].unacked.retain(|j| *j != id);
            }

            fn hello(&mut self, t: usize) {
                let p = &self.procs[t];
                let listed: Vec<(u64, u32)> = p.running.iter().map(|(j, s)| (*j, *s)).collect();
                let ended = p.unacked.clone();
                let run = p.run.to_string();
                let v = self.core.hello(
                    TaskerHello {
                        name: &name(t),
                        offer: Offer::parse(OFFER).unwrap(),
                        slots: 3,
                        incarnation: &run,
                        listed: &listed,
                        ended: &ended,
                    },
                    |_| Some(REQUEST.to_string()),
                );
                self.procs[t].connected = true;
                for id in v.requeue {
                    self.core.unplace(id);
                    self.set(id, Fate::Queued);
                    self.core.enqueue(id, 0, Some(REQUEST)).unwrap();
                }
                for id in v.lost {
                    self.core.unplace(id);
                    self.set(id, Fate::Lost);
                }
                for id in v.stop {
                    // Not counted as running there: the tasker ends it; its end is
                    // then forgotten.
                    if self.procs[t].running.remove(&id).is_some() {
                        self.procs[t].unacked.push(id);
                    }
                }
                for id in std::mem::take(&mut self.procs[t].unacked) {
                    self.procs[t].unacked.push(id);
                    self.deliver_end(t, id);
                }
            }

            fn away(&mut self, t: usize) {
                if self.procs[t].connected {
                    self.procs[t].connected = false;
                    let now = self.now;
                    self.core.tasker_away(&name(t), now, GRACE);
                }
            }

            fn step(&mut self, a: &Act) {
                match *a {
                    Act::Submit(n) => {
                        for _ in 0..n {
                            let id = self.next;
                            self.next += 1;
                            self.set(id, Fate::Queued);
                            self.core.enqueue(id, 0, Some(REQUEST)).unwrap();
                        }
                    }
                    Act::Schedule => {
                        for d in self.core.schedule() {
                            let t: usize = d.tasker[1..].parse().unwrap();
                            let run = self.procs[t].run.to_string();
                            self.set(d.job, Fate::Running);
                            self.core.place(d.job, &d.tasker, &run);
                            // Only a connected tasker is chosen, and it gets the job.
                            assert!(
                                self.procs[t].connected,
                                "job {} sent to {}, away",
                                d.job, d.tasker
                            );
                            let p = &mut self.procs[t];
                            assert!(
                                p.running.values().all(|s| *s != d.slot),
                                "slot {} of {} given twice",
                                d.slot,
                                d.tasker
                            );
                            p.running.insert(d.job, d.slot);
                            *self.runs.entry(d.job).or_default() += 1;
                        }
                    }
                    Act::End(t, k) => {
                        let t = t as usize;
                        let jobs: Vec<u64> = self.procs[t].running.keys().copied().collect();
                        if jobs.is_empty() {
                            return;
                        }
                        let id = jobs[k as usize % jobs.len()];
                        self.procs[t].running.remove(&id);
                        self.procs[t].unacked.push(id);
                        if self.procs[t].connected {
                            self.deliver_end(t, id);
                        }
                    }
                    Act::LinkDown(t) => self.away(t as usize),
                    Act::Crash(t) => {
                        let t = t as usize;
                        self.away(t);
                        // Its jobs and the ends it kept die with it.
                        let p = &mut self.procs[t];
                        p.running.clear();
                        p.unacked.clear();
                        p.run += 1;
                    }
                    Act::Hello(t) => {
                        if !self.procs[t as usize].connected {
                            self.hello(t as usize);
                        }
                    }
                    Act::Stop(k) => {
                        if self.next == 1 {
                            return;
                        }
                        let id = 1 + k as u64 % (self.next - 1);
                        match self.core.stop(id) {
                            StopWhat::Dequeued => self.set(id, Fate::Stopped),
                            StopWhat::Running(tasker) => {
                                // The tasker stops it; its end follows.
                                let t: usize = tasker[1..].parse().unwrap();
                                if self.procs[t].running.remove(&id).is_some() {
                                    self.procs[t].unacked.push(id);
                                    self.deliver_end(t, id);
                                }
                            }
                            StopWhat::Unknown => {
                                if self.store.get(&id) == Some(&Fate::Running) {
                                    self.core.unplace(id);
                                    self.set(id, Fate::Stopped);
                                }
                            }
                        }
                    }
                    Act::Time(s) => {
                        self.now += Duration::from_secs(s as u64);
                        let now = self.now;
                        for id in self.core.expired(now, |_| false) {
                            self.core.unplace(id);
                            self.set(id, Fate::Lost);
                        }
                    }
                }
                self.check();
            }

            fn check(&self) {
                // No slot shared, and each running job in its one slot.
                let mut seen = BTreeSet::new();
                for (name, t) in &self.core.taskers {
                    for (i, s) in t.slots.iter().enumerate() {
                        if let Some(j) = s {
                            assert!(seen.insert(*j), "job {j} holds two slots");
                            let r = &self.core.running[j];
                            assert_eq!((r.tasker.as_str(), r.slot), (name.as_str(), i as u32));
                        }
                    }
                    // Consumables held exactly by the jobs that run there.
                    let n = t.slots.iter().filter(|s| s.is_some()).count() as u64;
                    assert_eq!(t.ledger.used("L"), n, "L on {name}");
                    assert!(n <= 2);
                }
                assert_eq!(seen.len(), self.core.running.len());
                // No job run twice.
                for (j, n) in &self.runs {
                    assert!(*n <= 1, "job {j} ran {n} times");
                }
                // No accepted job lost: each is where the store says.
                for (j, f) in &self.store {
                    let queued = self.core.queued.contains_key(j);
                    let placed = self.core.placed.contains_key(j);
                    match f {
                        Fate::Queued => assert!(queued && !placed, "job {j} queued"),
                        Fate::Running => assert!(placed && !queued, "job {j} running"),
                        _ => assert!(!placed && !queued, "job {j} ended"),
                    }
                }
                // A job the core counts as running, its tasker process runs.
                for (j, r) in &self.core.running {
                    let t: usize = r.tasker[1..].parse().unwrap();
                    assert!(
                        self.procs[t].running.contains_key(j) || self.procs[t].unacked.contains(j),
                        "job {j} counted on {} that does not run it",
                        r.tasker
                    );
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
            #[test]
            fn random_tasker_lives_keep_every_rule(acts in proptest::collection::vec(act(), 1..120)) {
                let mut w = World::new();
                for a in &acts {
                    w.step(a);
                }
                // In the end, every tasker back and every job ended: everything given back.
                for t in 0..3 {
                    if !w.procs[t].connected {
                        w.hello(t);
                    }
                    w.check();
                }
                for t in 0..3 {
                    let jobs: Vec<u64> = w.procs[t].running.keys().copied().collect();
                    for id in jobs {
                        w.procs[t].running.remove(&id);
                        w.procs[t].unacked.push(id);
                        w.deliver_end(t, id);
                    }
                }
                w.check();
                for t in w.core.taskers.values() {
                    prop_assert_eq!(t.ledger.used("L"), 0);
                }
                prop_assert!(w.core.running.is_empty());
                prop_assert!(w.store.values().all(|f| *f != Fate::Running));
            }
        }
    }
}
