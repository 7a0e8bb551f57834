//! Microsoft Defender Antivirus detections (1116) and actions (1117) to Detection Finding.

use edr_ocsf::model::{Analytic, Evidence, File, FindingInfo, Malware, User};
use edr_ocsf::{Class, Event, Severity};
use serde_json::Value;

use crate::convert::{base_event, keep_remaining, writer_actor};
use crate::record::Record;

/// Maps one Defender record, or returns `None` for an event id without a mapper.
pub(crate) fn map(record: &mut Record) -> Option<Box<Event>> {
    let activity = match record.event_id {
        1116 => 1,
        1117 => 2,
        _ => return None,
    };
    let mut event = base_event(record, Class::DetectionFinding, activity);
    let threat = record.take_str("Threat Name").unwrap_or_default();
    let threat_id = record.take_str("Threat ID");
    let category = record.take_str("Category Name");
    let path = record
        .take_str("Path")
        .map(|p| p.strip_prefix("file:_").unwrap_or(&p).to_owned());

    // Defender severities: 1 Low, 2 Moderate, 4 High, 5 Severe.
    let severity = match record.take_u32("Severity ID") {
        Some(1) => Severity::Low,
        Some(2) => Severity::Medium,
        Some(4) => Severity::High,
        Some(5) => Severity::Critical,
        Some(_) => Severity::Other,
        None => Severity::Unknown,
    };
    event.set_severity(severity);
    record.fields.remove("Severity Name");
    event.is_alert = Some(true);

    event.finding_info = Some(FindingInfo {
        uid: record
            .take_str("Detection ID")
            .map(|id| id.trim_matches(['{', '}']).to_owned())
            .unwrap_or_default(),
        title: Some(threat.clone()),
        src_url: record.take_str("FWLink"),
        types: category.clone().map(|c| vec![c]),
        analytic: Some(Analytic {
            name: threat.clone(),
            uid: threat_id.clone(),
            type_id: 99,
            type_name: "Signature",
        }),
        ..FindingInfo::default()
    });
    event.malware = Some(vec![Malware {
        name: threat,
        classification_ids: vec![0],
        classifications: vec![category.unwrap_or_else(|| "Unknown".to_owned())],
        path: path.clone(),
        severity_id: None,
        severity: None,
        uid: threat_id,
    }]);

    // Defender names the process by image only; OCSF needs a pid or uid, so the image stays
    // under `unmapped` as `Process Name`.
    let user = User::from_parts(None, record.take_str("Detection User").as_deref(), None);
    let evidence = Evidence {
        process: None,
        file: path.as_deref().map(File::from_path),
        user,
        data: None,
    };
    if evidence.process.is_some() || evidence.file.is_some() || evidence.user.is_some() {
        event.evidences = Some(vec![evidence]);
    }
    if let Some(action) = record.take_str("Action Name") {
        event.message = Some(format!("Defender action: {action}"));
        event.add_unmapped("Action Name", Value::String(action));
    }
    event.actor = Some(writer_actor(record));
    keep_remaining(record, &mut event);
    Some(event)
}
