//! Every recorded ETL file reads to the end, and its counts match the independent inventory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use edr_etw::{EtlReader, HeaderKind, kernel, record::ext_type, tracelogging};
use serde_json::Value;

#[derive(Default, Debug)]
struct Counts {
    header_types: BTreeMap<String, u64>,
    providers: BTreeMap<String, BTreeMap<String, u64>>,
    kernel_groups: BTreeMap<String, u64>,
    classic: BTreeMap<String, u64>,
    ext_types: BTreeMap<String, u64>,
    tl_event_names: BTreeMap<(String, String), u64>,
    tl_provider_names: BTreeMap<(String, String), u64>,
}

fn count_file(path: &std::path::Path) -> (Counts, EtlReader<std::io::BufReader<std::fs::File>>) {
    let mut reader = EtlReader::open(path).unwrap();
    let mut c = Counts::default();
    reader
        .for_each_record(|r| {
            let header = match r.header_kind {
                HeaderKind::Classic => "EVENT_TRACE_HEADER(classic)".to_owned(),
                kind => kind.name().to_owned(),
            };
            *c.header_types.entry(header).or_default() += 1;
            match r.header_kind {
                HeaderKind::Event => {
                    *c.providers
                        .entry(r.provider_id.to_string())
                        .or_default()
                        .entry(r.descriptor.id.to_string())
                        .or_default() += 1;
                    for item in r.extended.iter() {
                        *c.ext_types.entry(item.ext_type.to_string()).or_default() += 1;
                    }
                    if let Some(meta) = r.extended.find(ext_type::EVENT_SCHEMA_TL) {
                        let schema = tracelogging::parse_event_schema(meta).unwrap();
                        *c.tl_event_names
                            .entry((r.provider_id.to_string(), schema.name.to_owned()))
                            .or_default() += 1;
                    }
                    if let Some(name) = r
                        .extended
                        .provider_traits()
                        .and_then(tracelogging::provider_name)
                    {
                        *c.tl_provider_names
                            .entry((r.provider_id.to_string(), name.to_owned()))
                            .or_default() += 1;
                    }
                }
                HeaderKind::Classic => {
                    *c.classic
                        .entry(format!("{} type={}", r.provider_id, r.descriptor.opcode))
                        .or_default() += 1;
                }
                HeaderKind::Instance | HeaderKind::Message => {}
                _ => {
                    // The inventory counts raw hook groups, image loads under the Process
                    // group's hook included.
                    let group = (r.hook_id >> 8) as u8;
                    *c.kernel_groups
                        .entry(format!(
                            "{}/{}",
                            kernel::group_name(group),
                            r.descriptor.opcode
                        ))
                        .or_default() += 1;
                }
            }
        })
        .unwrap();
    (c, reader)
}

fn as_map(value: &Value) -> BTreeMap<String, u64> {
    value
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

#[test]
fn every_file_matches_inventory() {
    let Some(files) = common::etl_files() else {
        return;
    };
    let inventory_path = common::data_dir().join("inventory/etl_inventory.json");
    let inventory: Value =
        serde_json::from_slice(&std::fs::read(&inventory_path).unwrap()).unwrap();
    assert!(!files.is_empty());

    for (relative, path) in &files {
        let expected = inventory
            .get(relative)
            .unwrap_or_else(|| panic!("{relative} is missing from the inventory"));
        let (counts, reader) = count_file(path);
        let stats = reader.stats();
        let header = reader.header();

        assert_eq!(
            stats.unparsed_buffers, 0,
            "{relative}: skips {:?}",
            stats.skips
        );
        assert_eq!(stats.skip_count, 0, "{relative}");
        assert_eq!(
            stats.buffers,
            expected["buffers"].as_u64().unwrap(),
            "{relative}: buffers"
        );
        assert_eq!(
            stats.compressed_buffers,
            expected["compressed_buffers"].as_u64().unwrap(),
            "{relative}: compressed buffers"
        );
        assert_eq!(
            counts.header_types,
            as_map(&expected["header_types"]),
            "{relative}: header types"
        );
        assert_eq!(
            counts.kernel_groups,
            as_map(&expected["kernel_groups"]),
            "{relative}: kernel groups"
        );
        assert_eq!(
            counts.ext_types,
            as_map(&expected["ext_types"]),
            "{relative}: extended items"
        );

        let mut providers = BTreeMap::new();
        for p in expected["providers"].as_array().unwrap() {
            providers.insert(p[0].as_str().unwrap().to_owned(), as_map(&p[3]));
        }
        assert_eq!(counts.providers, providers, "{relative}: providers");

        let mut classic = BTreeMap::new();
        for entry in expected["classic_guids"].as_array().unwrap() {
            classic.insert(
                entry[0].as_str().unwrap().to_owned(),
                entry[2].as_u64().unwrap(),
            );
        }
        assert_eq!(counts.classic, classic, "{relative}: classic events");

        let names = |key: &str| -> BTreeMap<(String, String), u64> {
            expected[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        (
                            e[0].as_str().unwrap().to_owned(),
                            e[1].as_str().unwrap().to_owned(),
                        ),
                        e[2].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(
            counts.tl_event_names,
            names("tl_event_names"),
            "{relative}: TraceLogging events"
        );
        assert_eq!(
            counts.tl_provider_names,
            names("tl_provider_names"),
            "{relative}: TraceLogging providers"
        );

        let facts = &expected["logfile_header"];
        assert_eq!(
            u64::from(header.provider_version),
            facts["provider_version(build)"].as_u64().unwrap(),
            "{relative}"
        );
        assert_eq!(
            u64::from(header.number_of_processors),
            facts["num_processors"].as_u64().unwrap(),
            "{relative}"
        );
        assert_eq!(
            u64::from(header.pointer_size),
            facts["pointer_size"].as_u64().unwrap(),
            "{relative}"
        );
        assert_eq!(
            format!("{:#x}", header.log_file_mode),
            facts["log_file_mode"].as_str().unwrap(),
            "{relative}"
        );
        assert_eq!(
            u64::from(header.events_lost),
            facts["events_lost"].as_u64().unwrap(),
            "{relative}"
        );
        assert_eq!(
            u64::from(header.cpu_speed_mhz),
            facts["cpu_mhz"].as_u64().unwrap(),
            "{relative}"
        );
        assert_eq!(
            header.logger_name,
            expected["logger"][0].as_str().unwrap(),
            "{relative}"
        );
        assert_eq!(
            header.log_file_name,
            expected["logger"][1].as_str().unwrap(),
            "{relative}"
        );
        println!(
            "{relative}: {} buffers, {:?}",
            stats.buffers,
            stats.records_by_header.by_name()
        );
    }
}
