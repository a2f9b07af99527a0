//! Named container configurations (SPEC §2–§5): the `.cfg` language, signatures, the
//! checks every hook passes before a job runs, and the pure part of the life-cycle plan.
//!
//! Nothing here forks or changes identity; `berth-tasker` executes what this crate
//! decides.

pub mod check;
pub mod config;
pub mod plan;
pub mod resign;
pub mod sign;
pub mod words;

pub use check::{check_hooks, load, Checked, LoadError, Policy, Refusal};
pub use config::{Config, Hook, HookType, Privilege};
pub use sign::Key;
