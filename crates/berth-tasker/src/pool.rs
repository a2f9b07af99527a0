//! Threads for jobs, kept for the next job instead of made and unmade for each: a job
//! thread lives as long as its job, and a tasker runs thousands of short jobs a second.
//! A thread idle for a minute ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Task = Box<dyn FnOnce() + Send>;

/// The pool.
#[derive(Default)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The idle threads, each waiting on its own channel.
    idle: Mutex<Vec<(u64, mpsc::Sender<Task>)>>,
    next: AtomicU64,
    idle_for: Option<Duration>,
}

const IDLE: Duration = Duration::from_secs(60);

impl Pool {
    /// Runs `f` on an idle thread, or on a new one: never after another task.
    pub fn run(&self, f: impl FnOnce() + Send + 'static) {
        let task: Task = Box::new(f);
        let idle = self.inner.idle.lock().expect("lock").pop();
        match idle {
            // A thread taken off the list waits for this send (see worker).
            Some((_, tx)) => {
                if let Err(mpsc::SendError(task)) = tx.send(task) {
                    spawn(self.inner.clone(), task);
                }
            }
            None => spawn(self.inner.clone(), task),
        }
    }

    /// How many threads wait for a task.
    pub fn idle(&self) -> usize {
        self.inner.idle.lock().expect("lock").len()
    }
}

fn spawn(inner: Arc<Inner>, first: Task) {
    std::thread::Builder::new()
        .name("berth-job".into())
        .spawn(move || worker(inner, first))
        .expect("a thread for a job");
}

fn worker(inner: Arc<Inner>, first: Task) {
    let mut task = first;
    loop {
        task();
        let id = inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        inner.idle.lock().expect("lock").push((id, tx));
        task = match rx.recv_timeout(inner.idle_for.unwrap_or(IDLE)) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = inner.idle.lock().expect("lock");
                if let Some(pos) = idle.iter().position(|(i, _)| *i == id) {
                    idle.remove(pos);
                    return;
                }
                drop(idle);
                // Taken off the list by run: its task is on the way.
                match rx.recv() {
                    Ok(t) => t,
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_task_runs_once_and_threads_are_reused() {
        let pool = Pool::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
        for _ in 0..200 {
            let (ran, threads) = (ran.clone(), threads.clone());
            pool.run(move || {
                threads
                    .lock()
                    .unwrap()
                    .insert(format!("{:?}", std::thread::current().id()));
                ran.fetch_add(1, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_micros(200));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ran.load(Ordering::SeqCst) < 200 {
            assert!(std::time::Instant::now() < deadline, "tasks lost");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(threads.lock().unwrap().len() < 50, "threads are not reused");
    }

    #[test]
    fn a_long_task_never_delays_another() {
        let pool = Pool::default();
        let (tx, rx) = mpsc::channel();
        pool.run(|| std::thread::sleep(Duration::from_secs(3)));
        pool.run(move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(2))
            .expect("the second task waited for the first");
    }

    #[test]
    fn idle_threads_end_and_no_task_is_lost_to_one_ending() {
        let pool = Pool {
            inner: Arc::new(Inner {
                idle_for: Some(Duration::from_millis(1)),
                ..Inner::default()
            }),
        };
        let ran = Arc::new(AtomicUsize::new(0));
        for i in 0..300 {
            let ran = ran.clone();
            pool.run(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
            if i % 7 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ran.load(Ordering::SeqCst) < 300 {
            assert!(std::time::Instant::now() < deadline, "a task was lost");
            std::thread::sleep(Duration::from_millis(5));
        }
        while pool.idle() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "idle threads do not end"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
