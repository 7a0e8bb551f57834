//! Subcommand handlers of the `edr-windows` binary, one module each.

pub(crate) mod convert;
pub(crate) mod enroll;
pub(crate) mod etl;
pub(crate) mod replay;
pub(crate) mod service;
