//! Job and hook execution on a host: the only crate that forks or changes identity. Its
//! system calls are in `berth-sys`.

pub mod agent;
pub mod cgroup;
pub mod definitions;
pub mod keeper;
pub mod lifecycle;
pub mod log;
pub mod plain;
pub mod pool;
pub mod record;
pub mod terminal;

pub use berth_sys::Identity;
pub use lifecycle::{recover, run, End, Host, Job, Outcome, Recovered, Stop};
pub use log::LogTarget;
