//! The types that cross a process boundary: the CLI's requests to the server and its
//! answers (JSON over HTTP on the SWD's Unix socket), and nothing else.

use serde::{Deserialize, Serialize};

/// A job's state (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Waiting for a tasker.
    Queued,
    /// On a tasker.
    Running,
    /// Ended with exit 0 (or a legal exit).
    Done,
    /// Ended otherwise, with a reason.
    Failed,
}

impl State {
    /// The name as printed and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "Queued",
            State::Running => "Running",
            State::Done => "Done",
            State::Failed => "Failed",
        }
    }

    /// Parses a name, any case.
    pub fn parse(s: &str) -> Option<State> {
        [State::Queued, State::Running, State::Done, State::Failed]
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Failed)
    }
}

/// One job as the CLI submits it. Who submits it is not in here: the server learns that
/// from the socket's peer credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    /// The command line.
    pub command: Vec<String>,
    /// The directory it runs in.
    pub dir: String,
    /// The environment it runs with.
    pub env: Vec<(String, String)>,
    /// The resource request, in the language of SPEC §7.
    pub resources: Option<String>,
    /// A name for the job (`-J`).
    pub name: Option<String>,
    /// The log file (`-l`); default `DIR/berth-JOBID.log`.
    pub log: Option<String>,
    /// Higher runs first; default 0.
    #[serde(default)]
    pub priority: i32,
    /// `-I`: the job's terminal is the submitter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Interactive>,
    /// The submitter's umask: the job runs with it, and its log is created with it.
    #[serde(default = "default_umask")]
    pub umask: u32,
    /// `--time`: stopped once it has run this long (milliseconds); None: the server's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    /// `--after`/`--after-any`: the jobs it waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<u64>,
    /// The jobs of the same submission it waits for, by their place in it (earlier ones
    /// only): a graph from `-f`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_in: Vec<usize>,
    /// Whether it starts once they have ended in any state (`--after-any`), rather than
    /// once they are all Done (`--after`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_any: bool,
    /// `--hold`: queued, but not started until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// `--retries N`: queued again, up to N times, when lost with its tasker.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One earlier run of a job that was lost with its tasker and queued again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Where it ran.
    pub tasker: Option<String>,
    /// When it started and was lost (ms since the epoch).
    pub started_ms: Option<u64>,
    /// When it was lost.
    pub ended_ms: u64,
    /// Why it ended (`lost`).
    pub reason: String,
}

impl Submit {
    /// A job of `command` in `dir`, with nothing else said: no environment, request, name,
    /// log, limit or dependency; priority 0, umask 022.
    pub fn new(command: Vec<String>, dir: String) -> Submit {
        Submit {
            command,
            dir,
            env: Vec::new(),
            resources: None,
            name: None,
            log: None,
            priority: 0,
            interactive: None,
            umask: default_umask(),
            time_limit_ms: None,
            after: Vec::new(),
            after_in: Vec::new(),
            after_any: false,
            hold: false,
            retries: 0,
        }
    }
}

/// The umask of a submission that does not say (from an older client).
pub fn default_umask() -> u32 {
    0o022
}

/// Where an interactive job's terminal is: `berth run -I` listens on `host:port` and
/// takes the first connection that sends `token`; the tasker then relays between it and
/// the job's pseudo-terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interactive {
    /// The submitting host's name.
    pub host: String,
    /// The port `berth run -I` listens on.
    pub port: u16,
    /// A secret of 32 random bytes, hex: the tasker proves with it that it is the one.
    pub token: String,
    /// The terminal's size.
    pub rows: u16,
    /// The terminal's size.
    pub cols: u16,
}

/// A submission: jobs given one by one, or one job repeated as an array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The jobs.
    pub jobs: Vec<Submit>,
    /// `--array A-B`: the single job in `jobs` is made once for each index from A to B,
    /// with `@INDEX@`, `@JOBID@` and `@ARRAYID@` substituted in its command line.
    pub array: Option<(u32, u32)>,
}

/// What the server says to a submission, once every job is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The new jobs' ids, in order.
    pub ids: Vec<u64>,
    /// The array's id, for an array.
    pub array_id: Option<u64>,
    /// Things the submitter should know, such as a request no tasker can satisfy now.
    pub warnings: Vec<String>,
}

/// A job as the server shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The id.
    pub id: u64,
    /// The state.
    pub state: State,
    /// The owner's login name.
    pub user: String,
    /// The owner's uid.
    pub uid: u32,
    /// The job's name.
    pub name: Option<String>,
    /// The command line.
    pub command: Vec<String>,
    /// Its directory.
    pub dir: String,
    /// Its resource request, as given (without the implicit CORES/1 SLOTS/1).
    pub resources: Option<String>,
    /// The log file.
    pub log: String,
    /// Priority.
    pub priority: i32,
    /// The array it belongs to, and its index there.
    pub array: Option<(u64, u32)>,
    /// When it was submitted, started, ended (ms since the epoch).
    pub submitted_ms: u64,
    /// Start.
    pub started_ms: Option<u64>,
    /// End.
    pub ended_ms: Option<u64>,
    /// The tasker and slot it ran on.
    pub tasker: Option<String>,
    /// The slot.
    pub slot: Option<u32>,
    /// The exit code.
    pub exit_code: Option<i32>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Cleanup or teardown failures, which do not change the state.
    pub hook_failures: Vec<String>,
    /// For a queued job: why it waits.
    pub why_waiting: Option<String>,
    /// Its time limit (ms), if it has one.
    #[serde(default)]
    pub time_limit_ms: Option<u64>,
    /// The jobs it waits for, and whether any end will do (`--after-any`).
    #[serde(default)]
    pub after: Vec<u64>,
    /// `--after-any`.
    #[serde(default)]
    pub after_any: bool,
    /// Held (`berth hold`): not started until released.
    #[serde(default)]
    pub held: bool,
    /// How many times it may be queued again when lost with its tasker.
    #[serde(default)]
    pub retries: u32,
    /// Its earlier runs, lost with their taskers.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// A tasker as the server shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskerView {
    /// Its name.
    pub name: String,
    /// Its host.
    pub host: String,
    /// Everything it offers.
    pub resources: String,
    /// Its slots.
    pub slots: u32,
    /// Jobs running on it.
    pub running: u32,
    /// What of its pools is free.
    pub free: String,
    /// Configurations it does not offer, with why.
    pub containers_refused: Vec<(String, String)>,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
}

/// A job as the server hands it to a tasker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job's id.
    pub job: u64,
    /// Its slot on the tasker (`VOV_JOBSLOT`).
    pub slot: u32,
    /// The owner, as the server learnt it from the submitting socket.
    pub uid: u32,
    /// The owner's gid.
    pub gid: u32,
    /// The owner's login name.
    pub user: String,
    /// The command line.
    pub command: Vec<String>,
    /// The directory.
    pub dir: String,
    /// The environment.
    pub env: Vec<(String, String)>,
    /// The request as given.
    pub resources: Option<String>,
    /// The log file.
    pub log: String,
    /// Where its terminal is, for an interactive job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Interactive>,
    /// The container configuration the server matched on this tasker: the job runs in
    /// exactly this one, or, when None, in none.
    #[serde(default)]
    pub container: Option<String>,
    /// The submitter's umask.
    #[serde(default = "default_umask")]
    pub umask: u32,
    /// Over a network link: which environment of this connection's this is; when
    /// `elided`, `env` is empty and the tasker takes the one it was sent before under this
    /// number (a submitter's jobs share one environment, often of kilobytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<EnvRef>,
}

/// A number for an environment sent on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRef {
    /// Numbers are valid within an epoch; a new one forgets the old.
    pub epoch: u32,
    /// The environment's number.
    pub id: u32,
    /// The environment was left out: the tasker has it.
    pub elided: bool,
}

/// What the server tells a tasker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToTasker {
    /// Run this job (boxed: the other messages are a few bytes).
    Run(Box<Assignment>),
    /// Stop this job (SIGTERM, grace, SIGKILL; cleanup and teardown still run).
    Stop(u64),
    /// Stop this job for this reason (its time limit, say), which its failure names.
    StopBecause(u64, String),
    /// Run a command in a running container job's container, with its exec hook
    /// (`berth exec`); answered with [`FromTasker::ExecEnded`].
    Exec(ExecRequest),
    /// These jobs' ends are recorded: forget them.
    Ack(Vec<u64>),
    /// Read part of a job's log, as its owner, for a user who cannot read it from where
    /// they are (another host): answered with [`FromTasker::Log`].
    ReadLog(LogRead),
    /// The answer to [`FromTasker::Leaving`]: nothing more is sent to this process.
    Bye,
}

/// How a job ended, as its tasker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnd {
    /// The job.
    pub job: u64,
    /// The exit code a shell would report, when there is one.
    pub exit_code: Option<i32>,
    /// Why it failed; None when Done.
    pub failure: Option<String>,
    /// Cleanup or teardown failures.
    pub hook_failures: Vec<String>,
}

/// What a tasker tells the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromTasker {
    /// Here I am, with these resources and slots, and these jobs still running.
    Hello {
        /// The tasker's name.
        name: String,
        /// Its host.
        host: String,
        /// Its resources, in the language of SPEC §7.
        resources: String,
        /// Its slots.
        slots: u32,
        /// Configurations not offered, with why.
        containers_refused: Vec<(String, String)>,
        /// Jobs it runs now (after a reconnection): (job, slot).
        running: Vec<(u64, u32)>,
        /// Jobs that ended and whose end the server has not acknowledged.
        ended: Vec<JobEnd>,
        /// The tasker process's random id: a job whose start went to this incarnation
        /// and that it neither runs nor has ended was never delivered; one whose start
        /// went to an earlier incarnation is lost.
        incarnation: String,
    },
    /// A job ended.
    Ended(JobEnd),
    /// Part of a job's log, for a [`ToTasker::ReadLog`].
    Log(LogPart),
    /// These jobs were sent but not started (this process is stopping): queue them again.
    Declined(Vec<u64>),
    /// This process stops, leaving its jobs running for the next: start nothing more
    /// here. Answered with [`ToTasker::Bye`].
    Leaving,
    /// An exec ended: its exit status, or why it could not run.
    ExecEnded {
        /// The request.
        req: u64,
        /// The exit status a shell would report.
        exit_code: Option<i32>,
        /// Why it did not run.
        error: Option<String>,
    },
}

/// `berth exec JOB -- CMD`: what the tasker runs, and where the user's terminal is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The request's number, for the answer.
    pub req: u64,
    /// The job.
    pub job: u64,
    /// The command to run in its container.
    pub command: Vec<String>,
    /// The user's terminal, which the tasker connects to (as for `berth run -I`).
    pub terminal: Interactive,
    /// `-i`: the user's input goes to the command (else it reads an end of file).
    #[serde(default)]
    pub stdin: bool,
    /// `-t`: the command has a terminal of its own in the container.
    #[serde(default)]
    pub tty: bool,
}

/// Which part of which log to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRead {
    /// The request's number, for the answer.
    pub req: u64,
    /// The job.
    pub job: u64,
    /// Its owner, as whom the log is opened.
    pub uid: u32,
    /// The log's path.
    pub path: String,
    /// From this byte.
    pub offset: u64,
    /// At most this many bytes.
    pub max: u32,
}

/// Part of a log.
///
/// In JSON its bytes are hex. From a tasker to the server they go as they are, after the
/// JSON of the part without them and a newline ([`encode_from_tasker`],
/// [`decode_from_tasker`]): the server's actor decrypts a MiB of log instead of parsing
/// two MiB of hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPart {
    /// The request's number.
    pub req: u64,
    /// The bytes (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
    /// The log's length now.
    pub size: u64,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// Bytes as a hex string in JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
        hex::decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// A tasker's message as it goes to the server: JSON, except that a log part's bytes
/// follow the JSON of the part without them, after a newline (JSON as serde_json writes
/// it has no newline of its own).
pub fn encode_from_tasker(m: &FromTasker) -> Vec<u8> {
    match m {
        FromTasker::Log(part) if !part.data.is_empty() => {
            let head = FromTasker::Log(part.clone_without_data());
            let mut out = serde_json::to_vec(&head).unwrap_or_default();
            out.reserve(1 + part.data.len());
            out.push(b'\n');
            out.extend_from_slice(&part.data);
            out
        }
        m => serde_json::to_vec(m).unwrap_or_default(),
    }
}

/// A tasker's message as [`encode_from_tasker`] made it (or plain JSON).
pub fn decode_from_tasker(mut body: Vec<u8>) -> Result<FromTasker, serde_json::Error> {
    let Some(nl) = body.iter().position(|&b| b == b'\n') else {
        return serde_json::from_slice(&body);
    };
    let data = body.split_off(nl + 1);
    match serde_json::from_slice(&body[..nl])? {
        FromTasker::Log(mut part) if part.data.is_empty() => {
            part.data = data;
            Ok(FromTasker::Log(part))
        }
        _ => Err(serde::de::Error::custom(
            "bytes after a message that is not a log part",
        )),
    }
}

impl LogPart {
    fn clone_without_data(&self) -> LogPart {
        LogPart {
            req: self.req,
            data: Vec::new(),
            size: self.size,
            error: self.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_part_crosses_as_bytes_and_anything_else_as_json() {
        let data: Vec<u8> = (0..=255u8)
            .chain(b"\n{\"Log\":\n".iter().copied())
            .collect();
        let part = FromTasker::Log(LogPart {
            req: 7,
            data: data.clone(),
            size: 1 << 40,
            error: None,
        });
        let wire = encode_from_tasker(&part);
        // The bytes as they are, not hex.
        assert!(wire.len() < 100 + data.len(), "{}", wire.len());
        assert_eq!(decode_from_tasker(wire).unwrap(), part);
        // In JSON (the API's answer), hex.
        let json = serde_json::to_string(&part).unwrap();
        assert!(json.contains(&hex::encode(&data)), "{json}");
        assert_eq!(decode_from_tasker(json.into_bytes()).unwrap(), part);
        // Every other message is JSON; bytes after one are refused.
        let m = FromTasker::Leaving;
        assert_eq!(decode_from_tasker(encode_from_tasker(&m)).unwrap(), m);
        let mut bad = serde_json::to_vec(&m).unwrap();
        bad.extend_from_slice(b"\nextra");
        assert!(decode_from_tasker(bad).is_err());
        // An empty part is plain JSON too.
        let empty = FromTasker::Log(LogPart {
            req: 1,
            data: vec![],
            size: 0,
            error: Some("job 1: gone".into()),
        });
        assert_eq!(
            decode_from_tasker(encode_from_tasker(&empty)).unwrap(),
            empty
        );
    }
}
