//! The Windows Event Log: registering the service's source (registry), `RegisterEventSourceW`,
//! `ReportEventW`, `DeregisterEventSource`.
//!
//! Events are written to the Application log with event id 1 and the message as the only
//! insertion string. The source's `EventMessageFile` is the .NET Framework's
//! `EventLogMessages.dll`, whose message for every id is `%1`, so Event Viewer shows the text
//! as written.
//!
//! NOTE: the message file path assumes the .NET Framework 4 is installed (it ships with every
//! supported Windows release); without it Event Viewer still shows the text, with a notice that
//! the description is missing.

use windows::Win32::Foundation::{ERROR_SUCCESS, HANDLE, WIN32_ERROR};
use windows::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
    RegisterEventSourceW, ReportEventW,
};
use windows::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_WRITE, REG_DWORD, REG_EXPAND_SZ, REG_OPTION_NON_VOLATILE,
    RegCloseKey, RegCreateKeyExW, RegDeleteTreeW, RegSetValueExW,
};
use windows::core::{HSTRING, PCWSTR};

use super::OsError;
use crate::logging::{EventLevel, EventLogSink};

const APPLICATION_LOG_KEY: &str = r"SYSTEM\CurrentControlSet\Services\EventLog\Application";
const MESSAGE_FILE: &str =
    r"%SystemRoot%\Microsoft.NET\Framework64\v4.0.30319\EventLogMessages.dll";
/// EVENTLOG_ERROR_TYPE | EVENTLOG_WARNING_TYPE | EVENTLOG_INFORMATION_TYPE.
const TYPES_SUPPORTED: u32 = 0x7;
/// ReportEventW rejects strings longer than 31,839 characters.
const MAX_MESSAGE_CHARS: usize = 31_000;

/// Creates the registry key that makes `source` a source of the Application log.
pub fn register_source(source: &str) -> Result<(), OsError> {
    let key = RegistryKey::create(&format!(r"{APPLICATION_LOG_KEY}\{source}"))?;
    key.set_expand_string("EventMessageFile", MESSAGE_FILE)?;
    key.set_dword("TypesSupported", TYPES_SUPPORTED)
}

/// Removes the registry key of `source`. An absent key is not an error.
pub fn remove_source(source: &str) -> Result<(), OsError> {
    let subkey = HSTRING::from(format!(r"{APPLICATION_LOG_KEY}\{source}"));
    // SAFETY: HKEY_LOCAL_MACHINE is a predefined key; the subkey name outlives the call.
    let status = unsafe { RegDeleteTreeW(HKEY_LOCAL_MACHINE, &subkey) };
    if status.0 == super::codes::ERROR_FILE_NOT_FOUND {
        return Ok(());
    }
    check("RegDeleteTreeW", status)
}

/// An open event source; writes go to the Application log.
#[derive(Debug)]
pub struct EventSource(HANDLE);

// SAFETY: an event log handle may be used from any thread; ReportEventW is thread-safe.
unsafe impl Send for EventSource {}
// SAFETY: as above; the handle is never mutated after opening.
unsafe impl Sync for EventSource {}

impl EventSource {
    /// Opens the source `name` on the local machine.
    pub fn open(name: &str) -> Result<Self, OsError> {
        // SAFETY: the name is a NUL-terminated HSTRING that outlives the call.
        let handle = unsafe { RegisterEventSourceW(PCWSTR::null(), &HSTRING::from(name)) }
            .map_err(|error| OsError::from_windows("RegisterEventSourceW", &error))?;
        Ok(Self(handle))
    }

    /// Writes one event with `message` as its text.
    pub fn report(&self, level: EventLevel, message: &str) -> Result<(), OsError> {
        let kind = match level {
            EventLevel::Error => EVENTLOG_ERROR_TYPE,
            EventLevel::Warning => EVENTLOG_WARNING_TYPE,
            EventLevel::Information => EVENTLOG_INFORMATION_TYPE,
        };
        let text: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
        let text = HSTRING::from(text);
        let strings = [PCWSTR(text.as_ptr())];
        // SAFETY: the handle is open; `strings` holds one NUL-terminated string that outlives
        // the call; no raw data is passed.
        unsafe { ReportEventW(self.0, kind, 0, 1, None, 0, Some(&strings), None) }
            .map_err(|error| OsError::from_windows("ReportEventW", &error))
    }
}

impl EventLogSink for EventSource {
    fn write(&self, level: EventLevel, message: &str) {
        // Nothing can report a failure to report: the rolling file still has the line.
        let _ = self.report(level, message);
    }
}

impl Drop for EventSource {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is closed once.
        let _ = unsafe { DeregisterEventSource(self.0) };
    }
}

/// A registry key opened for writing, closed on drop.
struct RegistryKey(HKEY);

impl RegistryKey {
    fn create(path: &str) -> Result<Self, OsError> {
        let mut key = HKEY::default();
        // SAFETY: the subkey name outlives the call; `key` is a valid out pointer.
        let status = unsafe {
            RegCreateKeyExW(
                HKEY_LOCAL_MACHINE,
                &HSTRING::from(path),
                None,
                PCWSTR::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_WRITE,
                None,
                &mut key,
                None,
            )
        };
        check("RegCreateKeyExW", status)?;
        Ok(Self(key))
    }

    fn set_expand_string(&self, name: &str, value: &str) -> Result<(), OsError> {
        let bytes: Vec<u8> = value
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect();
        // SAFETY: the key is open for writing; name and data outlive the call.
        let status = unsafe {
            RegSetValueExW(
                self.0,
                &HSTRING::from(name),
                None,
                REG_EXPAND_SZ,
                Some(&bytes),
            )
        };
        check("RegSetValueExW", status)
    }

    fn set_dword(&self, name: &str, value: u32) -> Result<(), OsError> {
        // SAFETY: the key is open for writing; name and data outlive the call.
        let status = unsafe {
            RegSetValueExW(
                self.0,
                &HSTRING::from(name),
                None,
                REG_DWORD,
                Some(&value.to_le_bytes()),
            )
        };
        check("RegSetValueExW", status)
    }
}

impl Drop for RegistryKey {
    fn drop(&mut self) {
        // SAFETY: the key came from RegCreateKeyExW and is closed once.
        let _ = unsafe { RegCloseKey(self.0) };
    }
}

fn check(api: &'static str, status: WIN32_ERROR) -> Result<(), OsError> {
    if status == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(OsError::new(api, status.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_registered_written_and_removed() {
        let source = format!("EdrSensorTest{}", std::process::id());
        register_source(&source).unwrap();
        let events = EventSource::open(&source).unwrap();
        events
            .report(EventLevel::Information, "edr-windows event log test")
            .unwrap();
        events
            .report(EventLevel::Error, &"x".repeat(40_000))
            .unwrap();
        drop(events);
        remove_source(&source).unwrap();
        // Removing twice is not an error.
        remove_source(&source).unwrap();
    }
}
