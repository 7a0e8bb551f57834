//! Subcommand handlers of the `edr-windows` binary.

pub(crate) mod service;
