//! Job and hook execution on a host: the only crate that forks, changes identity, or holds
//! `unsafe` (each block with a `SAFETY:` line), apart from the static wrapper.

pub mod lifecycle;
pub mod log;
pub mod record;
pub mod sys;

pub use lifecycle::{recover, run, End, Host, Job, Outcome, Recovered, Stop};
pub use log::LogTarget;
pub use sys::Identity;
