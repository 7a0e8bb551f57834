//! Platform-neutral sensor runtime.
#![forbid(unsafe_code)]
