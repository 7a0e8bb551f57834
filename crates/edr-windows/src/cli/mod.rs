//! Subcommand handlers of the `edr-windows` binary.

pub(crate) mod enroll;
pub(crate) mod service;
