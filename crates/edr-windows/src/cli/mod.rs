//! Subcommand handlers of the `edr-windows` binary, one module per subcommand.

pub(crate) mod etl;
