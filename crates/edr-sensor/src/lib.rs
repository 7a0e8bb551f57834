//! Platform-neutral sensor runtime: the enrollment client, the identity store and the offline
//! ring buffer.
//!
//! Platform crates supply a [`identity::KeyProtection`] (file permissions on Unix, DPAPI on
//! Windows) and host facts; everything else here is plain Rust and tested on Linux.
#![forbid(unsafe_code)]

pub mod buffer;
pub mod connect;
pub mod enrollment;
pub mod identity;
pub mod transport;
