//! Platform-neutral sensor runtime: the enrollment client and the identity store.
//!
//! Platform crates supply a [`identity::KeyProtection`] (file permissions on Unix, DPAPI on
//! Windows) and host facts; everything else here is plain Rust and tested on Linux.
#![forbid(unsafe_code)]

pub mod connect;
pub mod enrollment;
pub mod identity;
