//! `System` channel records to OCSF: service installs (7045) and cleared logs (104).

use edr_ocsf::model::WinService;
use edr_ocsf::{Class, Event};

use crate::convert::{base_event, keep_remaining, writer_actor};
use crate::record::Record;

/// Maps one System record, or returns `None` for an event id without a mapper.
pub(crate) fn map(record: &mut Record) -> Option<Box<Event>> {
    let mut event = match (record.event_id, record.provider.as_str()) {
        (7045, _) => service_installed(record),
        (104, "Microsoft-Windows-Eventlog") => log_cleared(record),
        _ => return None,
    };
    keep_remaining(record, &mut event);
    Some(event)
}

fn service_installed(record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::WindowsServiceActivity, 1);
    let mut service = WinService {
        name: record.take_str("ServiceName").unwrap_or_default(),
        cmd_line: record.take_str("ImagePath"),
        service_start_name: record.take_str("AccountName"),
        ..WinService::default()
    };
    if let Some(kind) = record.take_str("ServiceType") {
        service.set_service_type(&kind);
    }
    if let Some(start) = record.take_str("StartType") {
        service.set_start_type(&start);
    }
    event.win_service = Some(service);
    event.actor = Some(writer_actor(record));
    event
}

fn log_cleared(record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::EventLogActivity, 1);
    let mut actor = writer_actor(record);
    let name = record.take_str("SubjectUserName");
    let domain = record.take_str("SubjectDomainName");
    if let Some(user) = edr_ocsf::model::User::from_parts(
        domain.as_deref(),
        name.as_deref(),
        record.user_sid.as_deref(),
    ) {
        actor.user = Some(user);
    }
    event.actor = Some(actor);
    if let Some(channel) = record.take_str("Channel") {
        event.log_name = Some(channel);
    }
    event
}
