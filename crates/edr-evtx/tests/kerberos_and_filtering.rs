//! Security auditing records beyond the required set: Kerberos ticket requests
//! (4768, 4769, 4770) and pre-authentication failures (4771) as Authentication, and Windows
//! Filtering Platform connections (5156, 5157) and port bindings (5154, 5155, 5158, 5159)
//! as Network Activity. Built records carry the fields domain controllers and WFP write; one
//! recorded 5157 pins real values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use edr_evtx::Converter;
use edr_evtx::record::Record;
use serde_json::{Value, json};

/// Converts one Security record of `event_id` and returns its only event, checked against the
/// schema when the schema is present.
fn convert_security(event_id: u32, data: Value) -> Value {
    let value = json!({"Event": {"System": {
        "Provider": {"#attributes": {"Name": "Microsoft-Windows-Security-Auditing"}},
        "EventID": event_id,
        "Channel": "Security",
        "Computer": "dc01.example.org",
        "TimeCreated": {"#attributes": {"SystemTime": "2024-03-01T10:00:00.0000000Z"}},
        "Execution": {"#attributes": {"ProcessID": 716, "ThreadID": 2204}}
    }, "EventData": data}});
    let mut converter = Converter::new();
    let mut out = Vec::new();
    converter.convert(
        Record::from_json(value, 11, 1_709_287_200_000).unwrap(),
        &mut out,
    );
    converter.finish(&mut out);
    assert_eq!(out.len(), 1, "one event for Security {event_id}");
    assert!(
        converter.stats().unmapped.is_empty(),
        "Security {event_id} fell back to unmapped"
    );
    let event = serde_json::to_value(&out[0]).unwrap();
    if let Some(schema) = common::schema()
        && let Err(error) = schema.validate(&event)
    {
        panic!("Security {event_id}: {error}\n{event}");
    }
    event
}

#[test]
fn tgt_request_is_authentication_ticket() {
    let event = convert_security(
        4768,
        json!({
            "TargetUserName": "alice", "TargetDomainName": "EXAMPLE.ORG",
            "TargetSid": "S-1-5-21-1004336348-1177238915-682003330-1104",
            "ServiceName": "krbtgt", "ServiceSid": "S-1-5-21-1004336348-1177238915-682003330-502",
            "TicketOptions": "0x40810010", "Status": "0x0", "TicketEncryptionType": "0x12",
            "PreAuthType": "2", "IpAddress": "::ffff:192.0.2.15", "IpPort": "49874",
            "CertIssuerName": "", "CertSerialNumber": "", "CertThumbprint": ""
        }),
    );

    assert_eq!(event["type_uid"], 300203, "{event}");
    assert_eq!(event["status_id"], 1);
    assert_eq!(event["auth_protocol_id"], 2);
    assert_eq!(event["user"]["name"], "alice");
    assert_eq!(
        event["user"]["uid"],
        "S-1-5-21-1004336348-1177238915-682003330-1104"
    );

    assert_eq!(event["service"]["name"], "krbtgt");
    assert_eq!(event["src_endpoint"]["ip"], "::ffff:192.0.2.15");
    assert_eq!(event["src_endpoint"]["port"], 49874);
    assert_eq!(event["dst_endpoint"]["hostname"], "dc01.example.org");

    let token = &event["authentication_token"];
    assert_eq!(token["type_id"], 1);
    assert_eq!(token["kerberos_flags"], "0x40810010");
    assert_eq!(
        token["encryption_details"]["type"],
        "AES256-CTS-HMAC-SHA1-96"
    );
    assert_eq!(token["encryption_details"]["algorithm_id"], 3);
    assert_eq!(token["encryption_details"]["key_length"], 256);
    assert_eq!(event["unmapped"]["PreAuthType"], "2", "{event}");
}

#[test]
fn failed_tgt_request_names_the_kerberos_error() {
    let event = convert_security(
        4768,
        json!({
            "TargetUserName": "nobody", "TargetDomainName": "EXAMPLE.ORG",
            "TargetSid": "S-1-0-0", "ServiceName": "krbtgt/EXAMPLE.ORG", "ServiceSid": "S-1-0-0",
            "TicketOptions": "0x50800000", "Status": "0x6", "TicketEncryptionType": "0xffffffff",
            "PreAuthType": "-", "IpAddress": "::ffff:192.0.2.15", "IpPort": "47388"
        }),
    );
    assert_eq!(event["status_id"], 2, "{event}");
    assert_eq!(event["status_code"], "0x6");
    assert!(
        event["status_detail"]
            .as_str()
            .unwrap()
            .starts_with("KDC_ERR_C_PRINCIPAL_UNKNOWN"),
        "{event}"
    );
    assert!(
        event["service"].get("uid").is_none(),
        "the NULL SID is no uid"
    );
    assert!(
        event["authentication_token"]
            .get("encryption_details")
            .is_none(),
        "0xffffffff is no encryption type: {event}"
    );
}

#[test]
fn rc4_service_ticket_is_visible() {
    // Kerberoasting requests service tickets encrypted with RC4.
    let event = convert_security(
        4769,
        json!({
            "TargetUserName": "alice@EXAMPLE.ORG", "TargetDomainName": "EXAMPLE.ORG",
            "ServiceName": "svc-sql",
            "ServiceSid": "S-1-5-21-1004336348-1177238915-682003330-1620",
            "TicketOptions": "0x40810000", "TicketEncryptionType": "0x17",
            "IpAddress": "::ffff:192.0.2.15", "IpPort": "50270", "Status": "0x0",
            "LogonGuid": "{5ca0e4a1-93c2-7d3a-6b1e-2f0c8e5d7a41}", "TransmittedServices": "-"
        }),
    );
    assert_eq!(event["type_uid"], 300204, "{event}");
    assert_eq!(event["service"]["name"], "svc-sql");
    assert_eq!(
        event["session"]["uuid"],
        "5ca0e4a1-93c2-7d3a-6b1e-2f0c8e5d7a41"
    );
    let encryption = &event["authentication_token"]["encryption_details"];
    assert_eq!(encryption["type"], "RC4-HMAC");
    assert_eq!(encryption["algorithm_id"], 99);
    assert_eq!(encryption["algorithm"], "RC4");
    assert_eq!(event["authentication_token"]["type_id"], 2);
}

#[test]
fn ticket_renewal_and_preauth_failure() {
    let renewal = convert_security(
        4770,
        json!({
            "TargetUserName": "alice@EXAMPLE.ORG", "TargetDomainName": "EXAMPLE.ORG",
            "ServiceName": "host01$", "ServiceSid": "S-1-5-21-1004336348-1177238915-682003330-1105",
            "TicketOptions": "0x10002", "TicketEncryptionType": "0x12",
            "IpAddress": "::ffff:192.0.2.15", "IpPort": "50271"
        }),
    );
    assert_eq!(renewal["type_uid"], 300205, "{renewal}");
    assert_eq!(renewal["status_id"], 1);

    let failure = convert_security(
        4771,
        json!({
            "TargetUserName": "bob",
            "TargetSid": "S-1-5-21-1004336348-1177238915-682003330-1147",
            "ServiceName": "krbtgt/EXAMPLE.ORG", "TicketOptions": "0x40810010",
            "Status": "0x18", "PreAuthType": "2", "IpAddress": "::ffff:192.0.2.16",
            "IpPort": "47404", "CertIssuerName": "", "CertSerialNumber": "", "CertThumbprint": ""
        }),
    );
    assert_eq!(failure["type_uid"], 300206, "{failure}");
    assert_eq!(failure["status_id"], 2);
    assert!(
        failure["status_detail"]
            .as_str()
            .unwrap()
            .contains("wrong password")
    );
    assert_eq!(failure["user"]["name"], "bob");
    assert_eq!(failure["src_endpoint"]["ip"], "::ffff:192.0.2.16");
}

#[test]
fn permitted_outbound_connection_keeps_its_sides() {
    let event = convert_security(
        5156,
        json!({
            "ProcessID": 3048, "Application": "\\device\\harddiskvolume2\\windows\\system32\\curl.exe",
            "Direction": "%%14593", "SourceAddress": "192.0.2.20", "SourcePort": "51234",
            "DestAddress": "198.51.100.7", "DestPort": "443", "Protocol": 6,
            "FilterRTID": 65865, "LayerName": "%%14611", "LayerRTID": 48,
            "RemoteUserID": "S-1-0-0", "RemoteMachineID": "S-1-0-0"
        }),
    );
    assert_eq!(event["type_uid"], 400101, "{event}");
    assert_eq!(event["src_endpoint"]["ip"], "192.0.2.20");
    assert_eq!(event["src_endpoint"]["port"], 51234);
    assert_eq!(event["dst_endpoint"]["ip"], "198.51.100.7");
    assert_eq!(event["dst_endpoint"]["port"], 443);
    assert_eq!(event["connection_info"]["direction_id"], 2);
    assert_eq!(event["connection_info"]["protocol_name"], "tcp");
    assert_eq!(event["connection_info"]["protocol_num"], 6);
    assert_eq!(event["actor"]["process"]["pid"], 3048);
    assert_eq!(event["actor"]["process"]["name"], "curl.exe");
    assert_eq!(event["unmapped"]["LayerName"], "%%14611", "{event}");
}

#[test]
fn inbound_connection_starts_at_the_remote_side() {
    // WFP writes the local side as Source in both directions.
    let event = convert_security(
        5156,
        json!({
            "ProcessID": 4, "Application": "System", "Direction": "%%14592",
            "SourceAddress": "192.0.2.20", "SourcePort": "445",
            "DestAddress": "192.0.2.99", "DestPort": "55873", "Protocol": 6,
            "FilterRTID": 0, "LayerName": "%%14610", "LayerRTID": 44
        }),
    );
    assert_eq!(event["connection_info"]["direction_id"], 1, "{event}");
    assert_eq!(event["src_endpoint"]["ip"], "192.0.2.99");
    assert_eq!(event["dst_endpoint"]["ip"], "192.0.2.20");
    assert_eq!(event["dst_endpoint"]["port"], 445);
}

#[test]
fn port_bindings_and_listens() {
    for (id, type_uid, activity) in [
        (5154, 400107, "Listen"),
        (5155, 400105, "Refuse"),
        (5158, 400199, "Bind"),
        (5159, 400105, "Refuse"),
    ] {
        let event = convert_security(
            id,
            json!({
                "ProcessId": 1280,
                "Application": "\\device\\harddiskvolume2\\windows\\system32\\svchost.exe",
                "SourceAddress": "0.0.0.0", "SourcePort": "55355", "Protocol": 17,
                "FilterRTID": 0, "LayerName": "%%14608", "LayerRTID": 36
            }),
        );
        assert_eq!(event["type_uid"], type_uid, "{id}: {event}");
        assert_eq!(event["activity_name"], activity, "{id}");
        let local = if id == 5154 || id == 5155 {
            &event["dst_endpoint"]
        } else {
            &event["src_endpoint"]
        };
        assert_eq!(local["port"], 55355, "{id}: {event}");
        assert_eq!(event["connection_info"]["protocol_name"], "udp");
        assert_eq!(event["actor"]["process"]["pid"], 1280);
    }
}

/// A blocked inbound ICMP packet recorded on a real host.
#[test]
fn recorded_blocked_connection() {
    let (Some(schema), Some(path)) = (
        common::schema(),
        common::evtx_file(
            "omerbenamram-evtx_MIT-or-Apache-2.0/samples/Security_short_selected.evtx",
        ),
    ) else {
        return;
    };
    let events = common::convert_validated(&path, schema);
    let blocked = events
        .iter()
        .find(|e| e["metadata"]["event_code"] == "5157")
        .expect("the file holds one 5157");
    assert_eq!(blocked["type_uid"], 400105, "{blocked}");
    assert_eq!(blocked["connection_info"]["direction_id"], 1);
    assert_eq!(blocked["connection_info"]["protocol_num"], 1);
    assert_eq!(blocked["src_endpoint"]["ip"], "169.46.118.42");
    assert_eq!(blocked["dst_endpoint"]["ip"], "169.46.6.101");
    assert_eq!(blocked["actor"]["process"]["pid"], 4);
}
