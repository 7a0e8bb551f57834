//! Platform-neutral sensor runtime.
#![forbid(unsafe_code)]

pub mod buffer;
