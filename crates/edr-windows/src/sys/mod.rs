//! Thin typed wrappers over every Win32 call this crate makes.
//!
//! Each wrapper returns [`OsError`], which names the failing API and carries the OS error code.
//! Only the OS bindings are gated on `cfg(windows)`; the error type and codes compile everywhere
//! so that the logic above them is tested on Linux.
#![allow(unsafe_code, reason = "this module is the crate's only FFI boundary")]

mod os_error;
pub use os_error::{OsError, codes};

#[cfg(windows)]
pub mod etw;
#[cfg(windows)]
pub mod eventlog;
#[cfg(windows)]
pub mod privilege;
#[cfg(windows)]
pub mod security;
#[cfg(windows)]
pub mod service;
