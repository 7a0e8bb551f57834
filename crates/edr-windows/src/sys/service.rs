//! The service control manager: create, configure, start, stop, query and delete a service, and
//! the dispatcher a service process runs (`StartServiceCtrlDispatcherW`).

use std::ffi::c_void;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use windows::Win32::System::Services::{
    ChangeServiceConfig2W, CloseServiceHandle, ControlService, CreateServiceW, DeleteService,
    OpenSCManagerW, OpenServiceW, QueryServiceStatus, RegisterServiceCtrlHandlerExW, SC_ACTION,
    SC_ACTION_RESTART, SC_HANDLE, SC_MANAGER_ALL_ACCESS, SC_MANAGER_CONNECT,
    SERVICE_ACCEPT_SHUTDOWN, SERVICE_ACCEPT_STOP, SERVICE_ALL_ACCESS, SERVICE_AUTO_START,
    SERVICE_CONFIG_DESCRIPTION, SERVICE_CONFIG_FAILURE_ACTIONS, SERVICE_CONTROL_INTERROGATE,
    SERVICE_CONTROL_SHUTDOWN, SERVICE_CONTROL_STOP, SERVICE_DESCRIPTIONW, SERVICE_ERROR_NORMAL,
    SERVICE_FAILURE_ACTIONSW, SERVICE_QUERY_STATUS, SERVICE_RUNNING, SERVICE_START,
    SERVICE_START_PENDING, SERVICE_STATUS, SERVICE_STATUS_CURRENT_STATE, SERVICE_STATUS_HANDLE,
    SERVICE_STOP, SERVICE_STOP_PENDING, SERVICE_STOPPED, SERVICE_TABLE_ENTRYW,
    SERVICE_WIN32_OWN_PROCESS, SetServiceStatus, StartServiceCtrlDispatcherW, StartServiceW,
};
use windows::core::{HSTRING, PCWSTR, PWSTR};

use super::{OsError, codes};
use crate::service::{ServiceDefinition, ServiceState, StopSignal};

/// `DELETE` standard access right.
const DELETE_ACCESS: u32 = 0x0001_0000;
/// `ERROR_CALL_NOT_IMPLEMENTED`, returned for controls the service does not handle.
const ERROR_CALL_NOT_IMPLEMENTED: u32 = 120;

/// An open service control manager or service handle, closed on drop.
#[derive(Debug)]
struct ScHandle(SC_HANDLE);

impl Drop for ScHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenSCManagerW, CreateServiceW or OpenServiceW and is
        // closed once.
        let _ = unsafe { CloseServiceHandle(self.0) };
    }
}

fn open_manager(access: u32) -> Result<ScHandle, OsError> {
    // SAFETY: null machine and database names select the local active database.
    let handle = unsafe { OpenSCManagerW(PCWSTR::null(), PCWSTR::null(), access) }
        .map_err(|error| OsError::from_windows("OpenSCManagerW", &error))?;
    Ok(ScHandle(handle))
}

fn open_service(name: &str, access: u32) -> Result<ScHandle, OsError> {
    let manager = open_manager(SC_MANAGER_CONNECT)?;
    // SAFETY: the manager handle is open; the name outlives the call.
    let handle = unsafe { OpenServiceW(manager.0, &HSTRING::from(name), access) }
        .map_err(|error| OsError::from_windows("OpenServiceW", &error))?;
    Ok(ScHandle(handle))
}

/// Creates the service as LocalSystem with automatic start, its description and its restart
/// actions.
pub fn install(definition: &ServiceDefinition) -> Result<(), OsError> {
    let manager = open_manager(SC_MANAGER_ALL_ACCESS)?;
    // SAFETY: the manager handle is open; every string outlives the call; a null account name
    // means LocalSystem.
    let service = unsafe {
        CreateServiceW(
            manager.0,
            &HSTRING::from(definition.name.as_str()),
            &HSTRING::from(definition.display_name.as_str()),
            SERVICE_ALL_ACCESS,
            SERVICE_WIN32_OWN_PROCESS,
            SERVICE_AUTO_START,
            SERVICE_ERROR_NORMAL,
            &HSTRING::from(definition.command_line()),
            PCWSTR::null(),
            None,
            PCWSTR::null(),
            PCWSTR::null(),
            PCWSTR::null(),
        )
    }
    .map_err(|error| OsError::from_windows("CreateServiceW", &error))?;
    let service = ScHandle(service);

    let mut description: Vec<u16> = definition.description.encode_utf16().chain([0]).collect();
    let info = SERVICE_DESCRIPTIONW {
        lpDescription: PWSTR(description.as_mut_ptr()),
    };
    // SAFETY: the service handle is open; `info` points to a NUL-terminated string that
    // outlives the call.
    unsafe {
        ChangeServiceConfig2W(
            service.0,
            SERVICE_CONFIG_DESCRIPTION,
            Some(std::ptr::from_ref(&info).cast()),
        )
    }
    .map_err(|error| {
        OsError::from_windows("ChangeServiceConfig2W(SERVICE_CONFIG_DESCRIPTION)", &error)
    })?;

    let mut actions: Vec<SC_ACTION> = definition
        .restart_delays
        .iter()
        .map(|delay| SC_ACTION {
            Type: SC_ACTION_RESTART,
            Delay: millis(*delay),
        })
        .collect();
    let failure = SERVICE_FAILURE_ACTIONSW {
        dwResetPeriod: u32::try_from(definition.failure_reset_period.as_secs()).unwrap_or(u32::MAX),
        lpRebootMsg: PWSTR::null(),
        lpCommand: PWSTR::null(),
        cActions: actions.len() as u32,
        lpsaActions: actions.as_mut_ptr(),
    };
    // SAFETY: the service handle is open; `failure` points to `actions`, which outlives the call.
    unsafe {
        ChangeServiceConfig2W(
            service.0,
            SERVICE_CONFIG_FAILURE_ACTIONS,
            Some(std::ptr::from_ref(&failure).cast()),
        )
    }
    .map_err(|error| {
        OsError::from_windows(
            "ChangeServiceConfig2W(SERVICE_CONFIG_FAILURE_ACTIONS)",
            &error,
        )
    })
}

/// Marks the service for deletion; it disappears once stopped and every handle is closed.
pub fn uninstall(name: &str) -> Result<(), OsError> {
    let service = open_service(name, DELETE_ACCESS)?;
    // SAFETY: the service handle is open with DELETE access.
    unsafe { DeleteService(service.0) }
        .map_err(|error| OsError::from_windows("DeleteService", &error))
}

/// Asks the service control manager to start the service.
pub fn start(name: &str) -> Result<(), OsError> {
    let service = open_service(name, SERVICE_START)?;
    // SAFETY: the service handle is open with SERVICE_START access; no arguments are passed.
    unsafe { StartServiceW(service.0, None) }
        .map_err(|error| OsError::from_windows("StartServiceW", &error))
}

/// Sends the stop control and waits up to `timeout` for the service to stop.
pub fn stop(name: &str, timeout: Duration) -> Result<ServiceState, OsError> {
    let service = open_service(name, SERVICE_STOP | SERVICE_QUERY_STATUS)?;
    let mut status = SERVICE_STATUS::default();
    // SAFETY: the service handle is open with SERVICE_STOP access; `status` is a valid out
    // pointer.
    unsafe { ControlService(service.0, SERVICE_CONTROL_STOP, &mut status) }
        .map_err(|error| OsError::from_windows("ControlService(SERVICE_CONTROL_STOP)", &error))?;
    let deadline = Instant::now() + timeout;
    loop {
        let state = query_handle(&service)?;
        if state == ServiceState::Stopped || Instant::now() >= deadline {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Returns the service's state, or [`ServiceState::NotInstalled`].
pub fn query(name: &str) -> Result<ServiceState, OsError> {
    match open_service(name, SERVICE_QUERY_STATUS) {
        Ok(service) => query_handle(&service),
        Err(error) if error.code == codes::ERROR_SERVICE_DOES_NOT_EXIST => {
            Ok(ServiceState::NotInstalled)
        }
        Err(error) => Err(error),
    }
}

fn query_handle(service: &ScHandle) -> Result<ServiceState, OsError> {
    let mut status = SERVICE_STATUS::default();
    // SAFETY: the service handle is open with SERVICE_QUERY_STATUS; `status` is a valid out
    // pointer.
    unsafe { QueryServiceStatus(service.0, &mut status) }
        .map_err(|error| OsError::from_windows("QueryServiceStatus", &error))?;
    Ok(ServiceState::from_raw(status.dwCurrentState.0))
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

// === dispatcher ===

/// The service body: runs until the stop signal is set, returns the Win32 exit code.
pub type ServiceBody = fn(StopSignal) -> u32;

struct DispatchState {
    body: ServiceBody,
    stop: StopSignal,
    status_handle: OnceLock<SERVICE_STATUS_HANDLE>,
}

// SAFETY: SERVICE_STATUS_HANDLE is an opaque value the SCM allows SetServiceStatus to be
// called with from any thread.
unsafe impl Send for DispatchState {}
// SAFETY: as above; the handle is written once through OnceLock.
unsafe impl Sync for DispatchState {}

static DISPATCH: OnceLock<DispatchState> = OnceLock::new();

/// Connects the process to the service control manager and runs `body` as the service. Returns
/// when the service has stopped. Fails with `ERROR_FAILED_SERVICE_CONTROLLER_CONNECT` when the
/// process was not started by the service control manager.
pub fn run_dispatcher(body: ServiceBody) -> Result<(), OsError> {
    let _ = DISPATCH.set(DispatchState {
        body,
        stop: StopSignal::default(),
        status_handle: OnceLock::new(),
    });
    // SERVICE_WIN32_OWN_PROCESS ignores the name, but the table needs one.
    let mut name: Vec<u16> = "EdrSensor".encode_utf16().chain([0]).collect();
    let table = [
        SERVICE_TABLE_ENTRYW {
            lpServiceName: PWSTR(name.as_mut_ptr()),
            lpServiceProc: Some(service_main),
        },
        SERVICE_TABLE_ENTRYW::default(),
    ];
    // SAFETY: the table ends with a null entry and outlives the call, which blocks until the
    // service stops.
    unsafe { StartServiceCtrlDispatcherW(table.as_ptr()) }
        .map_err(|error| OsError::from_windows("StartServiceCtrlDispatcherW", &error))
}

unsafe extern "system" fn service_main(_argc: u32, _argv: *mut PWSTR) {
    let Some(state) = DISPATCH.get() else { return };
    let name = HSTRING::from("EdrSensor");
    // SAFETY: the handler is a valid function for the life of the process; no context is used.
    let handle = match unsafe { RegisterServiceCtrlHandlerExW(&name, Some(control_handler), None) }
    {
        Ok(handle) => handle,
        Err(_) => return,
    };
    let _ = state.status_handle.set(handle);

    set_status(SERVICE_START_PENDING, 0, 0);
    set_status(
        SERVICE_RUNNING,
        SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN,
        0,
    );
    let exit_code = (state.body)(state.stop.clone());
    set_status(SERVICE_STOPPED, 0, exit_code);
}

unsafe extern "system" fn control_handler(
    control: u32,
    _event: u32,
    _data: *mut c_void,
    _context: *mut c_void,
) -> u32 {
    match control {
        SERVICE_CONTROL_STOP | SERVICE_CONTROL_SHUTDOWN => {
            set_status(SERVICE_STOP_PENDING, 0, 0);
            if let Some(state) = DISPATCH.get() {
                state.stop.request_stop();
            }
            codes::ERROR_SUCCESS
        }
        SERVICE_CONTROL_INTERROGATE => codes::ERROR_SUCCESS,
        _ => ERROR_CALL_NOT_IMPLEMENTED,
    }
}

fn set_status(state: SERVICE_STATUS_CURRENT_STATE, accepted: u32, exit_code: u32) {
    let Some(handle) = DISPATCH
        .get()
        .and_then(|dispatch| dispatch.status_handle.get())
    else {
        return;
    };
    let status = SERVICE_STATUS {
        dwServiceType: SERVICE_WIN32_OWN_PROCESS,
        dwCurrentState: state,
        dwControlsAccepted: accepted,
        dwWin32ExitCode: exit_code,
        dwServiceSpecificExitCode: 0,
        dwCheckPoint: 0,
        // Draining the queue and syncing the ring buffer may take this long at stop.
        dwWaitHint: 30_000,
    };
    // SAFETY: the handle came from RegisterServiceCtrlHandlerExW; `status` outlives the call.
    let _ = unsafe { SetServiceStatus(*handle, &status) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn install_query_and_uninstall() {
        let mut definition = ServiceDefinition::sensor(Path::new(r"C:\windows\system32\cmd.exe"));
        definition.name = format!("EdrSensorTest{}", std::process::id());
        definition.display_name = "EDR Sensor (test)".to_owned();

        install(&definition).unwrap();
        assert_eq!(query(&definition.name).unwrap(), ServiceState::Stopped);
        let again = install(&definition).unwrap_err();
        assert_eq!(again.code, codes::ERROR_SERVICE_EXISTS, "{again}");

        uninstall(&definition.name).unwrap();
        assert_eq!(query(&definition.name).unwrap(), ServiceState::NotInstalled);
        let absent = uninstall(&definition.name).unwrap_err();
        assert_eq!(absent.code, codes::ERROR_SERVICE_DOES_NOT_EXIST, "{absent}");
    }

    #[test]
    fn dispatcher_outside_scm_fails() {
        fn body(_stop: StopSignal) -> u32 {
            0
        }
        let error = run_dispatcher(body).unwrap_err();
        assert_eq!(error.api, "StartServiceCtrlDispatcherW");
        println!("{error}");
    }
}
