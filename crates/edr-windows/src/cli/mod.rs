//! Subcommands of the `edr-windows` binary, one module each.

pub(crate) mod convert;
