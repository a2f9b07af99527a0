//! The berth server. `core` holds the state and makes the scheduling decisions, with no
//! I/O; the daemon around it persists, serves the API and talks to taskers.

pub mod api;
pub mod core;
pub mod daemon;
pub mod http;
pub mod policy;
pub mod tcp;
