//! berth's state in SQLite: the job history, with schema migrations and typed methods.
//! Nothing else in berth touches SQL.
//!
//! The database is `SWD/berth.db` in WAL mode with `synchronous=FULL`: a change is on disk
//! when its commit returns. Writes go in batches ([`Store::batch`]): the server gathers
//! everything that happened since its last commit into one transaction, so one fsync
//! serves many jobs.

use berth_proto::{Assignment, JobView, State};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The error a [`Batch`] step fails with.
pub use rusqlite::Error as SqlError;

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("job store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The database was written by a newer berth.
    #[error("job store {path}: schema version {found} is newer than this berth knows ({known}); run a newer berth")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// The database file could not be made private.
    #[error("job store {path}: {source}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A row that does not read back (a damaged database).
    #[error("job store {path}: job {id}: {what}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The job.
        id: u64,
        /// What is wrong.
        what: String,
    },
}

/// Migrations, in order; the database's `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    // 1: jobs and their (shared) environments
    "CREATE TABLE envs (
        hash BLOB PRIMARY KEY,
        data TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        state TEXT NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        user TEXT NOT NULL,
        name TEXT,
        command TEXT NOT NULL,
        dir TEXT NOT NULL,
        env BLOB NOT NULL REFERENCES envs(hash),
        resources TEXT,
        log TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        array_id INTEGER,
        array_index INTEGER,
        submitted_ms INTEGER NOT NULL,
        started_ms INTEGER,
        ended_ms INTEGER,
        tasker TEXT,
        slot INTEGER,
        exit_code INTEGER,
        reason TEXT,
        hook_failures TEXT
    );
    CREATE INDEX jobs_unfinished ON jobs(state) WHERE state IN ('Queued', 'Running');",
    // 2: which run of its tasker a job's start was sent to
    "ALTER TABLE jobs ADD COLUMN tasker_run TEXT;",
    // 3: where an interactive job's terminal is (JSON berth_proto::Interactive)
    "ALTER TABLE jobs ADD COLUMN interactive TEXT;",
    // 4: the submitter's umask, for the job and its log (022 for jobs from before)
    "ALTER TABLE jobs ADD COLUMN umask INTEGER NOT NULL DEFAULT 18;",
    // 5: time limits, dependencies, holds, retries of jobs lost with their tasker
    "ALTER TABLE jobs ADD COLUMN time_limit_ms INTEGER;
     ALTER TABLE jobs ADD COLUMN after TEXT;
     ALTER TABLE jobs ADD COLUMN after_any INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN attempts TEXT;
     ALTER TABLE jobs ADD COLUMN log_template TEXT;
     CREATE TABLE arrays (id INTEGER PRIMARY KEY, first INTEGER NOT NULL, last INTEGER NOT NULL);",
];

/// Makes `path` (if it does not exist) and its WAL and shared-memory files readable by
/// their owner alone.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The job store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// The owner's uid, gid and name.
    pub uid: u32,
    /// Gid.
    pub gid: u32,
    /// Login name.
    pub user: &'a str,
    /// `-J`.
    pub name: Option<&'a str>,
    /// The command line.
    pub command: &'a [String],
    /// Its directory.
    pub dir: &'a str,
    /// Its environment.
    pub env: &'a [(String, String)],
    /// Its request as given.
    pub resources: Option<&'a str>,
    /// Its log, when given.
    pub log: Option<&'a str>,
    /// Priority.
    pub priority: i32,
    /// The submitter's umask.
    pub umask: u32,
    /// Array id and index.
    pub array: Option<(u64, u32)>,
    /// Submission time.
    pub submitted_ms: u64,
    /// Its time limit (ms).
    pub time_limit_ms: Option<u64>,
    /// The jobs it waits for.
    pub after: &'a [u64],
    /// Whether any end of theirs will do.
    pub after_any: bool,
    /// Held at submission.
    pub held: bool,
    /// How many times it may be queued again when lost.
    pub retries: u32,
}

/// What the server needs of an unfinished job when it starts again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// Id.
    pub id: u64,
    /// Queued or Running.
    pub state: State,
    /// Owner.
    pub uid: u32,
    /// Priority.
    pub priority: i32,
    /// Request.
    pub resources: Option<String>,
    /// Where it was running.
    pub tasker: Option<String>,
    /// Which run (incarnation) of that tasker its start was sent to.
    pub tasker_run: Option<String>,
    /// When it started, while it runs.
    pub started_ms: Option<u64>,
    /// Its time limit (ms).
    pub time_limit_ms: Option<u64>,
    /// The jobs it waits for.
    pub after: Vec<u64>,
    /// Whether any end of theirs will do.
    pub after_any: bool,
    /// Held.
    pub held: bool,
    /// How many times it may be queued again when lost, and how many it was.
    pub retries: u32,
    /// How many times it was lost and queued again.
    pub attempts: u32,
}

/// Filters for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these states.
    pub states: Vec<State>,
    /// Only this owner.
    pub uid: Option<u32>,
    /// Only jobs of this name.
    pub name: Option<String>,
    /// Only these ids.
    pub ids: Vec<u64>,
    /// Only the jobs of this array.
    pub array: Option<u64>,
    /// Only jobs below this id (the next page of a listing, newest first).
    pub below: Option<u64>,
    /// At most this many, newest first.
    pub limit: Option<u32>,
}

fn state_of(s: &str) -> State {
    State::parse(s).unwrap_or(State::Failed)
}

/// The default log of a job: `DIR/berth-ID.log`.
pub fn default_log(dir: &str, id: u64) -> String {
    format!("{}/berth-{id}.log", dir.trim_end_matches('/'))
}

impl Store {
    /// Opens (creating if needed) the store and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        // The store holds every job's environment and every interactive job's token: root's
        // alone. The file is made 0600 before SQLite opens it; SQLite gives its WAL and
        // shared-memory files the database's mode, and those of an older store are set too.
        private_file(path).map_err(|e| StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 10000;",
        )
        .map_err(err)?;
        // The query planner's stability guarantee: plans do not depend on the values bound,
        // so that a cached statement is not prepared again each time they change (with
        // the bundled SQLite's STAT4, the start of every job was).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(err)?;
        let mut s = Store {
            conn,
            path: path.to_path_buf(),
        };
        s.migrate()?;
        Ok(s)
    }

    /// Stops fsyncing commits (`PRAGMA synchronous = OFF`): a crash of the host may then
    /// lose the last commits. Only for measuring what durability costs.
    pub fn without_fsync(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA synchronous = OFF;")
            .map_err(self.err())
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m).map_err(err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Runs `f` in one transaction, committed (and on disk) when this returns Ok.
    pub fn batch<T>(
        &mut self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut b = Batch { tx };
        let out = f(&mut b).map_err(err)?;
        b.tx.commit().map_err(err)?;
        Ok(out)
    }

    /// Removes at most `max` jobs that ended before `before_ms` (never a log file: they
    /// are the users'), and the environments no job uses any more; how many jobs.
    pub fn purge(&mut self, before_ms: u64, max: usize) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let n = tx
            .execute(
                // Oldest first, by the primary key: no index of its own to keep up at
                // every end (the old jobs are at the front).
                "DELETE FROM jobs WHERE id IN (
                     SELECT id FROM jobs WHERE ended_ms IS NOT NULL AND ended_ms < ?1
                     AND state IN ('Done', 'Failed') ORDER BY id LIMIT ?2)",
                params![before_ms as i64, max as i64],
            )
            .map_err(err)?;
        // The environments no job uses: one pass over the jobs, once a purge has removed
        // all it had to (not after each part of it).
        if n > 0 && n < max {
            tx.execute(
                "DELETE FROM envs WHERE hash NOT IN (SELECT DISTINCT env FROM jobs)",
                [],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(n)
    }

    /// A job's `-l` as given, when it held `@...@` to substitute.
    pub fn log_template(&self, id: u64) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT log_template FROM jobs WHERE id = ?1",
                [id as i64],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(self.err())
    }

    /// The span of ids array `id`'s jobs were given, if it is an array.
    fn array_span(&self, id: u64) -> Result<Option<(u64, u64)>, StoreError> {
        self.conn
            .prepare_cached("SELECT first, last FROM arrays WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([id as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .optional()
            })
            .map_err(self.err())
    }

    /// Of these ids, those that name arrays, each with its jobs (still in the store) in
    /// order. An array's jobs have the ids of its span: read by the primary key.
    pub fn arrays(&self, ids: &[u64]) -> Result<HashMap<u64, Vec<u64>>, StoreError> {
        let mut out: HashMap<u64, Vec<u64>> = HashMap::new();
        for a in ids {
            let Some((first, last)) = self.array_span(*a)? else {
                continue;
            };
            let mut st = self
                .conn
                .prepare_cached(
                    "SELECT id FROM jobs WHERE id BETWEEN ?1 AND ?2 AND array_id = ?3 ORDER BY id",
                )
                .map_err(self.err())?;
            let jobs = st
                .query_map(params![first as i64, last as i64, *a as i64], |r| {
                    r.get::<_, i64>(0).map(|v| v as u64)
                })
                .map_err(self.err())?
                .collect::<Result<Vec<u64>, _>>()
                .map_err(self.err())?;
            out.insert(*a, jobs);
        }
        Ok(out)
    }

    /// Every job that is Queued or Running, oldest first.
    pub fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, state, uid, priority, resources, tasker, tasker_run, started_ms,
                        time_limit_ms, after, after_any, held, retries, attempts FROM jobs
                 WHERE state IN ('Queued', 'Running') ORDER BY id",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok(Unfinished {
                    id: r.get::<_, i64>(0)? as u64,
                    state: state_of(&r.get::<_, String>(1)?),
                    uid: r.get(2)?,
                    priority: r.get(3)?,
                    resources: r.get(4)?,
                    tasker: r.get(5)?,
                    tasker_run: r.get(6)?,
                    started_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                    time_limit_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                    after: r
                        .get::<_, Option<String>>(9)?
                        .and_then(|a| serde_json::from_str(&a).ok())
                        .unwrap_or_default(),
                    after_any: r.get(10)?,
                    held: r.get(11)?,
                    retries: r.get(12)?,
                    attempts: r
                        .get::<_, Option<String>>(13)?
                        .and_then(|a| serde_json::from_str::<Vec<serde_json::Value>>(&a).ok())
                        .map_or(0, |v| v.len() as u32),
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// What a tasker needs to run job `id`, with slot 0: the dispatcher sets the slot.
    pub fn run_spec(&self, id: u64) -> Result<Option<Assignment>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT j.uid, j.gid, j.user, j.command, j.dir, e.data, j.resources, j.log,
                        j.interactive, j.umask
                 FROM jobs j JOIN envs e ON e.hash = j.env WHERE j.id = ?1",
            )
            .and_then(|mut st| {
                st.query_row([id as i64], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, u32>(9)?,
                    ))
                })
            })
            .optional()
            .map_err(self.err())?;
        let Some((uid, gid, user, command, dir, env, resources, log, interactive, umask)) = row
        else {
            return Ok(None);
        };
        let corrupt = |what: String| StoreError::Corrupt {
            path: self.path.clone(),
            id,
            what,
        };
        let command: Vec<String> =
            serde_json::from_str(&command).map_err(|e| corrupt(format!("command: {e}")))?;
        let env: Vec<(String, String)> =
            serde_json::from_str(&env).map_err(|e| corrupt(format!("environment: {e}")))?;
        let log = log.unwrap_or_else(|| default_log(&dir, id));
        let interactive = interactive
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| corrupt(format!("interactive: {e}")))?;
        Ok(Some(Assignment {
            job: id,
            slot: 0,
            uid,
            gid,
            user,
            command,
            dir,
            env,
            resources,
            log,
            interactive,
            container: None,
            umask,
            env_ref: None,
        }))
    }

    /// Jobs as shown to users, newest first.
    pub fn list(&self, f: &Filter) -> Result<Vec<JobView>, StoreError> {
        // SQLite takes at most 32,766 parameters: many ids are asked for in parts.
        if f.ids.len() > 10_000 {
            let mut ids = f.ids.clone();
            ids.sort_unstable();
            ids.dedup();
            let mut all = Vec::new();
            for chunk in ids.chunks(10_000) {
                all.extend(self.list(&Filter {
                    ids: chunk.to_vec(),
                    ..f.clone()
                })?);
            }
            all.sort_unstable_by_key(|v| std::cmp::Reverse(v.id));
            if let Some(l) = f.limit {
                all.truncate(l as usize);
            }
            return Ok(all);
        }
        let mut sql = String::from(
            "SELECT id, state, user, uid, name, command, dir, resources, log, priority, array_id,
                    array_index, submitted_ms, started_ms, ended_ms, tasker, slot, exit_code,
                    reason, hook_failures, time_limit_ms, after, after_any, held, retries,
                    attempts FROM jobs WHERE 1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if !f.states.is_empty() {
            sql += &format!(" AND state IN ({})", vec!["?"; f.states.len()].join(","));
            args.extend(f.states.iter().map(|s| s.as_str().to_string().into()));
        }
        if let Some(uid) = f.uid {
            sql += " AND uid = ?";
            args.push((uid as i64).into());
        }
        if let Some(n) = &f.name {
            sql += " AND name = ?";
            args.push(n.clone().into());
        }
        if !f.ids.is_empty() {
            sql += &format!(" AND id IN ({})", vec!["?"; f.ids.len()].join(","));
            args.extend(f.ids.iter().map(|i| (*i as i64).into()));
        }
        if let Some(a) = f.array {
            // Within the array's span: read by the primary key.
            let (first, last) = self.array_span(a)?.unwrap_or((1, 0));
            sql += " AND id BETWEEN ? AND ? AND array_id = ?";
            args.push((first as i64).into());
            args.push((last as i64).into());
            args.push((a as i64).into());
        }
        if let Some(b) = f.below {
            sql += " AND id < ?";
            args.push((b as i64).into());
        }
        sql += " ORDER BY id DESC";
        if let Some(l) = f.limit {
            sql += &format!(" LIMIT {l}");
        }
        let mut st = self.conn.prepare(&sql).map_err(self.err())?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| {
                let id = r.get::<_, i64>(0)? as u64;
                let dir: String = r.get(6)?;
                let command: String = r.get(5)?;
                let hooks: Option<String> = r.get(19)?;
                Ok(JobView {
                    id,
                    state: state_of(&r.get::<_, String>(1)?),
                    user: r.get(2)?,
                    uid: r.get(3)?,
                    name: r.get(4)?,
                    command: serde_json::from_str(&command).unwrap_or_default(),
                    resources: r.get(7)?,
                    log: r
                        .get::<_, Option<String>>(8)?
                        .unwrap_or_else(|| default_log(&dir, id)),
                    dir,
                    priority: r.get(9)?,
                    array: match (r.get::<_, Option<i64>>(10)?, r.get::<_, Option<u32>>(11)?) {
                        (Some(a), Some(i)) => Some((a as u64, i)),
                        _ => None,
                    },
                    submitted_ms: r.get::<_, i64>(12)? as u64,
                    started_ms: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
                    ended_ms: r.get::<_, Option<i64>>(14)?.map(|v| v as u64),
                    tasker: r.get(15)?,
                    slot: r.get(16)?,
                    exit_code: r.get(17)?,
                    reason: r.get(18)?,
                    hook_failures: hooks
                        .and_then(|h| serde_json::from_str(&h).ok())
                        .unwrap_or_default(),
                    why_waiting: None,
                    time_limit_ms: r.get::<_, Option<i64>>(20)?.map(|v| v as u64),
                    after: r
                        .get::<_, Option<String>>(21)?
                        .and_then(|a| serde_json::from_str(&a).ok())
                        .unwrap_or_default(),
                    after_any: r.get(22)?,
                    held: r.get(23)?,
                    retries: r.get(24)?,
                    attempts: r
                        .get::<_, Option<String>>(25)?
                        .and_then(|a| serde_json::from_str(&a).ok())
                        .unwrap_or_default(),
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }
}

/// The changes of one transaction.
pub struct Batch<'a> {
    tx: Transaction<'a>,
}

impl Batch<'_> {
    /// Inserts a job, Queued, and returns its id.
    pub fn insert_job(&mut self, j: &NewJob<'_>) -> Result<u64, rusqlite::Error> {
        use sha2::Digest;
        // Jobs of one submitter share their environment: stored once, by content.
        let env = serde_json::to_string(j.env).expect("strings serialize");
        let hash: [u8; 32] = sha2::Sha256::digest(env.as_bytes()).into();
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO envs(hash, data) VALUES (?1, ?2)")?
            .execute(params![&hash[..], env])?;
        let command = serde_json::to_string(j.command).expect("strings serialize");
        self.tx
            .prepare_cached(
                "INSERT INTO jobs(state, uid, gid, user, name, command, dir, env, resources, log,
                                  priority, array_id, array_index, submitted_ms, umask,
                                  time_limit_ms, after, after_any, held, retries, log_template)
                 VALUES ('Queued', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                         ?15, ?16, ?17, ?18, ?19, ?20)",
            )?
            .execute(params![
                j.uid,
                j.gid,
                j.user,
                j.name,
                command,
                j.dir,
                &hash[..],
                j.resources,
                j.log,
                j.priority,
                j.array.map(|a| a.0 as i64),
                j.array.map(|a| a.1),
                j.submitted_ms as i64,
                j.umask & 0o777,
                j.time_limit_ms.map(|t| t as i64),
                (!j.after.is_empty()).then(|| serde_json::to_string(j.after).expect("numbers")),
                j.after_any,
                j.held,
                j.retries,
                j.log.filter(|l| l.contains('@'))
            ])?;
        Ok(self.tx.last_insert_rowid() as u64)
    }

    /// Sets a job's log (its `@JOBID@`, `@INDEX@`, `@ARRAYID@` substituted).
    pub fn set_log(&mut self, id: u64, log: &str) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached("UPDATE jobs SET log = ?2 WHERE id = ?1")?
            .execute(params![id as i64, log])?;
        Ok(())
    }

    /// Records where an interactive job's terminal is.
    pub fn set_interactive(
        &mut self,
        id: u64,
        i: &berth_proto::Interactive,
    ) -> Result<(), rusqlite::Error> {
        let text = serde_json::to_string(i).expect("strings serialize");
        self.tx
            .prepare_cached("UPDATE jobs SET interactive = ?2 WHERE id = ?1")?
            .execute(params![id as i64, text])?;
        Ok(())
    }

    /// Rewrites a job's command line (array substitutions need the job's own id).
    pub fn set_command(
        &mut self,
        id: u64,
        command: &[String],
        array: Option<(u64, u32)>,
    ) -> Result<(), rusqlite::Error> {
        let command = serde_json::to_string(command).expect("strings serialize");
        self.tx
            .prepare_cached(
                "UPDATE jobs SET command = ?2, array_id = ?3, array_index = ?4 WHERE id = ?1",
            )?
            .execute(params![
                id as i64,
                command,
                array.map(|a| a.0 as i64),
                array.map(|a| a.1)
            ])?;
        Ok(())
    }

    /// Marks a job Running on a tasker's slot, sent to that tasker's run `run`.
    pub fn set_running(
        &mut self,
        id: u64,
        tasker: &str,
        run: &str,
        slot: u32,
        at_ms: u64,
    ) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached(
                "UPDATE jobs SET state = 'Running', tasker = ?2, tasker_run = ?3, slot = ?4, started_ms = ?5
                 WHERE id = ?1",
            )?
            .execute(params![id as i64, tasker, run, slot, at_ms as i64])?;
        Ok(())
    }

    /// Puts a job back in the queue (its tasker never started it).
    pub fn set_queued(&mut self, id: u64) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached(
                "UPDATE jobs SET state = 'Queued', tasker = NULL, tasker_run = NULL, slot = NULL, started_ms = NULL WHERE id = ?1",
            )?
            .execute(params![id as i64])?;
        Ok(())
    }

    /// An id no job will have (the next one is taken): an array's, so that naming it
    /// names the array and nothing else.
    pub fn reserve_id(&mut self) -> Result<u64, rusqlite::Error> {
        self.tx.execute(
            "INSERT INTO sqlite_sequence(name, seq)
             SELECT 'jobs', COALESCE((SELECT MAX(id) FROM jobs), 0)
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'jobs')",
            [],
        )?;
        self.tx.execute(
            "UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'jobs'",
            [],
        )?;
        self.tx.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'jobs'",
            [],
            |r| r.get::<_, i64>(0).map(|v| v as u64),
        )
    }

    /// Records array `id` and the span of ids its jobs were given.
    pub fn add_array(&mut self, id: u64, first: u64, last: u64) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached("INSERT INTO arrays(id, first, last) VALUES (?1, ?2, ?3)")?
            .execute(params![id as i64, first as i64, last as i64])?;
        Ok(())
    }

    /// A new job, queued, identical to job `id` (its command, directory, environment,
    /// request, log, name, priority, umask, time limit and retries; not what it waited
    /// for); its id.
    pub fn copy_job(&mut self, id: u64, submitted_ms: u64) -> Result<u64, rusqlite::Error> {
        self.tx
            .prepare_cached(
                "INSERT INTO jobs(state, uid, gid, user, name, command, dir, env, resources, log,
                                  priority, submitted_ms, umask, time_limit_ms, retries,
                                  log_template)
                 SELECT 'Queued', uid, gid, user, name, command, dir, env, resources,
                        CASE WHEN log_template IS NULL THEN log END,
                        priority, ?2, umask, time_limit_ms, retries, log_template
                 FROM jobs WHERE id = ?1",
            )?
            .execute(params![id as i64, submitted_ms as i64])?;
        Ok(self.tx.last_insert_rowid() as u64)
    }

    /// Holds a queued job, or releases it.
    pub fn set_held(&mut self, id: u64, held: bool) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached("UPDATE jobs SET held = ?2 WHERE id = ?1 AND state = 'Queued'")?
            .execute(params![id as i64, held])?;
        Ok(())
    }

    /// Queues again a job lost with its tasker, keeping the run that was lost among its
    /// attempts.
    pub fn requeue_lost(&mut self, id: u64, at_ms: u64) -> Result<(), rusqlite::Error> {
        let (tasker, started, attempts): (Option<String>, Option<i64>, Option<String>) = self
            .tx
            .prepare_cached("SELECT tasker, started_ms, attempts FROM jobs WHERE id = ?1")?
            .query_row([id as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let mut all: Vec<berth_proto::Attempt> = attempts
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default();
        all.push(berth_proto::Attempt {
            tasker,
            started_ms: started.map(|s| s as u64),
            ended_ms: at_ms,
            reason: "lost".into(),
        });
        let text = serde_json::to_string(&all).expect("attempts serialize");
        self.tx
            .prepare_cached(
                "UPDATE jobs SET state = 'Queued', tasker = NULL, tasker_run = NULL, slot = NULL,
                        started_ms = NULL, attempts = ?2
                 WHERE id = ?1 AND state = 'Running'",
            )?
            .execute(params![id as i64, text])?;
        Ok(())
    }

    /// Marks a job ended.
    pub fn set_ended(
        &mut self,
        id: u64,
        state: State,
        exit_code: Option<i32>,
        reason: Option<&str>,
        hook_failures: &[String],
        at_ms: u64,
    ) -> Result<(), rusqlite::Error> {
        // A job ends once: what came first (its end, say, before a loss in the same
        // turn) is what it ended with.
        let hooks = (!hook_failures.is_empty())
            .then(|| serde_json::to_string(hook_failures).expect("strings"));
        self.tx
            .prepare_cached(
                "UPDATE jobs SET state = ?2, exit_code = ?3, reason = ?4, hook_failures = ?5, ended_ms = ?6
                 WHERE id = ?1 AND state IN ('Queued', 'Running')",
            )?
            .execute(params![id as i64, state.as_str(), exit_code, reason, hooks, at_ms as i64])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job<'a>(command: &'a [String], env: &'a [(String, String)]) -> NewJob<'a> {
        NewJob {
            uid: 1000,
            gid: 1000,
            user: "u",
            name: Some("n"),
            command,
            dir: "/home/u",
            env,
            resources: Some("CORES/2"),
            log: None,
            priority: 0,
            umask: 0o022,
            array: None,
            submitted_ms: 1,
            time_limit_ms: None,
            after: &[],
            after_any: false,
            held: false,
            retries: 0,
        }
    }

    #[test]
    fn jobs_survive_a_reopen_and_go_through_their_states() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("berth.db");
        let cmd = vec!["echo".to_string(), "hi".to_string()];
        let env = vec![("A".to_string(), "1".to_string())];
        let ids = {
            let mut s = Store::open(&path).unwrap();
            s.batch(|b| {
                (0..3)
                    .map(|_| b.insert_job(&job(&cmd, &env)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
        };
        assert_eq!(ids, [1, 2, 3]);
        let mut s = Store::open(&path).unwrap();
        let u = s.unfinished().unwrap();
        assert_eq!(u.len(), 3);
        assert_eq!(u[0].state, State::Queued);
        assert_eq!(u[0].resources.as_deref(), Some("CORES/2"));
        let spec = s.run_spec(2).unwrap().unwrap();
        assert_eq!(spec.command, cmd);
        assert_eq!(spec.env, env);
        assert_eq!(spec.log, "/home/u/berth-2.log");
        s.batch(|b| {
            b.set_running(1, "t1", "r1", 0, 5)?;
            b.set_running(2, "t1", "r1", 1, 5)?;
            b.set_ended(1, State::Done, Some(0), None, &[], 9)?;
            b.set_ended(
                2,
                State::Failed,
                None,
                Some("lost"),
                &["teardown failed".into()],
                9,
            )
        })
        .unwrap();
        let u = s.unfinished().unwrap();
        assert_eq!(u.iter().map(|j| j.id).collect::<Vec<_>>(), [3]);
        let v = s
            .list(&Filter {
                ids: vec![2],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(v[0].state, State::Failed);
        assert_eq!(v[0].reason.as_deref(), Some("lost"));
        assert_eq!(v[0].hook_failures, ["teardown failed"]);
        assert_eq!(v[0].tasker.as_deref(), Some("t1"));
        let done = s
            .list(&Filter {
                states: vec![State::Done],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(done.iter().map(|j| j.id).collect::<Vec<_>>(), [1]);
        // one environment row for three jobs
        let n: i64 = s
            .conn
            .query_row("SELECT count(*) FROM envs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_failed_batch_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Store::open(&tmp.path().join("b.db")).unwrap();
        let cmd = vec!["true".to_string()];
        let r = s.batch(|b| {
            b.insert_job(&job(&cmd, &[]))?;
            Err::<(), _>(rusqlite::Error::InvalidQuery)
        });
        assert!(r.is_err());
        assert!(s.unfinished().unwrap().is_empty());
    }

    #[test]
    fn a_version_1_store_is_migrated_with_its_jobs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v1.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(
            "INSERT INTO envs(hash, data) VALUES (x'00', '[]');
             INSERT INTO jobs(state, uid, gid, user, command, dir, env, submitted_ms, tasker)
             VALUES ('Running', 1, 1, 'u', '[\"true\"]', '/', x'00', 1, 't1');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(c);
        let s = Store::open(&path).unwrap();
        let u = s.unfinished().unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].tasker.as_deref(), Some("t1"));
        assert_eq!(u[0].tasker_run, None);
        let v: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.db");
        drop(Store::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("schema version 99 is newer than this berth knows"),
            "{e}"
        );
    }

    #[test]
    fn a_job_ends_once() {
        let d = tempfile::tempdir().unwrap();
        let mut st = Store::open(&d.path().join("b.db")).unwrap();
        let cmd = vec!["true".to_string()];
        let mut id = 0;
        st.batch(|b| {
            id = b.insert_job(&job(&cmd, &[]))?;
            b.set_running(id, "t1", "a", 0, 2)?;
            b.set_ended(id, State::Done, Some(0), None, &[], 3)?;
            // A loss or a stop in the same turn, after its end, changes nothing.
            b.set_ended(id, State::Failed, None, Some("lost"), &[], 4)
        })
        .unwrap();
        let v = st
            .list(&Filter {
                ids: vec![id],
                ..Default::default()
            })
            .unwrap();
        assert_eq!((v[0].state, v[0].reason.as_deref()), (State::Done, None));
    }
}
