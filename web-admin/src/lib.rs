//! The admin panel and the REST API `/api/v1`, served by the gateway on its
//! one HTTP port.
//!
//! This crate owns who may do what (the admin password and its sessions,
//! API tokens, stream keys), what is kept across restarts (the admin tables
//! of the SQLite database) and the panel's pages. It reaches the running
//! gateway only through [`control::Control`], which the gateway implements.

pub mod control;
pub mod pattern;

pub use control::{Control, ControlError};
