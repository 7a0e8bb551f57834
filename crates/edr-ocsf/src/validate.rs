//! Validation of events against the official OCSF schema, loaded from its source tree.
//!
//! [`Schema::load`] reads the schema repository layout (`dictionary.json`, `categories.json`,
//! `objects/`, `events/`, `profiles/` and `extensions/<name>/`) and resolves it the way the OCSF
//! server does: `extends` chains are merged parent first, `$include`d profile attributes are
//! merged below the attributes a file declares itself, extension objects that extend an object
//! of the same name patch it, and every attribute takes its type, array flag, sibling and enum
//! from the dictionary unless the class or object overrides them. Extension classes get
//! `class_uid = extension uid * 100000 + category uid * 1000 + class uid`.
//!
//! [`Schema::validate`] checks one event and returns every violation it finds:
//! - `class_uid` names a known class, `category_uid`, `class_name` and `category_name` match it,
//!   `type_uid` is `class_uid * 100 + activity_id` and `type_name` is `"<class>: <activity>"`;
//! - every attribute the class or object requires is present, and each `at_least_one` and
//!   `just_one` constraint holds;
//! - no attribute appears that the class or object does not define, except inside `unmapped`,
//!   whose content is not checked;
//! - values have the JSON type of their OCSF type (`integer_t` fits 32 bits, `port_t` is 0 to
//!   65535, `ip_t` parses as an IP address, `uuid_t` has the 8-4-4-4-12 hex form), arrays are
//!   arrays, objects recurse into their object definition, and `null` is rejected;
//! - an enum id is one the schema lists, and its sibling name (for example `activity_name` for
//!   `activity_id`) is present and equals the enum caption, except for id 99 (`Other`), where
//!   the sibling carries the source's own name.
//!
//! Limits: regular expressions of string types other than `ip_t` and `uuid_t` (for example
//! `email_t`, `datetime_t`) are not evaluated, and profiles are not checked against
//! `metadata.profiles`: the attributes of every profile a class includes are accepted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Failure to load the schema tree.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A schema file could not be read; check that the directory holds an OCSF schema checkout.
    #[error("cannot read OCSF schema file {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A schema file is not valid JSON.
    #[error("invalid JSON in OCSF schema file {path:?}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A schema file lacks a field the loader needs, such as `attributes`.
    #[error("OCSF schema file {path:?} has no valid {field:?}")]
    MissingField { path: PathBuf, field: &'static str },
    /// An object or class extends a parent that the schema does not define.
    #[error("OCSF schema item {name:?} extends unknown {parent:?}")]
    UnknownParent { name: String, parent: String },
    /// An `extends` chain loops back on itself.
    #[error("OCSF schema item {name:?} has a cyclic extends chain")]
    CyclicExtends { name: String },
}

/// One rule an event breaks, with the JSON path of the offending attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path such as `process.parent_process.file.name` or `answers[0].rdata`.
    pub path: String,
    /// Problem found at that path.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The violations of one event; never empty when returned by [`Schema::validate`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("event breaks OCSF {version}: {}", join_violations(.violations))]
pub struct ValidationError {
    pub version: String,
    pub violations: Vec<Violation>,
}

fn join_violations(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requirement {
    Required,
    Other,
}

/// A resolved attribute of a class or object.
#[derive(Debug, Clone)]
struct Attribute {
    /// A type name such as `string_t`, or an object name such as `process`.
    type_name: String,
    is_array: bool,
    requirement: Requirement,
    enum_captions: Option<BTreeMap<i64, String>>,
    sibling: Option<String>,
    /// The profile that brings the attribute in; its requirement applies only when the event
    /// lists that profile in `metadata.profiles`.
    profile: Option<String>,
}

/// A resolved class or object: attributes plus constraints.
#[derive(Debug, Clone, Default)]
struct Definition {
    caption: String,
    attributes: HashMap<String, Attribute>,
    at_least_one: Vec<Vec<String>>,
    just_one: Vec<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Class {
    uid: i64,
    category_uid: i64,
    category_name: String,
    definition: Definition,
}

/// Primitive JSON shape that an OCSF scalar type reduces to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primitive {
    String,
    Integer,
    Long,
    Float,
    Boolean,
    Json,
}

/// The loaded and resolved OCSF schema.
#[derive(Debug)]
pub struct Schema {
    version: String,
    classes: HashMap<i64, Class>,
    objects: HashMap<String, Definition>,
    /// Scalar type name to its primitive and its own name (for `ip_t`, `port_t`, `uuid_t`).
    types: HashMap<String, Primitive>,
}

/// A raw schema item (class, object or profile) before resolution.
#[derive(Debug, Clone)]
struct RawItem {
    path: PathBuf,
    json: Map<String, Value>,
    /// `uid` of the extension the file belongs to, if any.
    extension_uid: Option<i64>,
}

impl Schema {
    /// Loads and resolves the schema under `root`, a checkout of the OCSF schema repository.
    pub fn load(root: &Path) -> Result<Schema, SchemaError> {
        // Step 1: the dictionary and its types, with every extension's dictionary merged in.
        let mut dictionary = object_field(
            &read_json(&root.join("dictionary.json"))?,
            root,
            "attributes",
        )?;
        let mut type_json = dictionary_types(&read_json(&root.join("dictionary.json"))?);
        let extension_dirs = list_extension_dirs(root)?;
        for dir in &extension_dirs {
            let path = dir.join("dictionary.json");
            if path.exists() {
                let json = read_json(&path)?;
                if let Some(Value::Object(attrs)) = json.get("attributes") {
                    for (name, value) in attrs {
                        dictionary.insert(name.clone(), value.clone());
                    }
                }
                type_json.extend(dictionary_types(&json));
            }
        }
        let types = resolve_types(&type_json);

        // Step 2: categories.
        let categories_json = object_field(
            &read_json(&root.join("categories.json"))?,
            root,
            "attributes",
        )?;
        let mut categories: HashMap<String, (i64, String)> = HashMap::new();
        for (name, value) in &categories_json {
            let uid = value.get("uid").and_then(Value::as_i64).unwrap_or(0);
            let caption = value
                .get("caption")
                .and_then(Value::as_str)
                .unwrap_or(name)
                .to_owned();
            categories.insert(name.clone(), (uid, caption));
        }

        // Step 3: raw objects, profiles and events from the core tree and the extensions.
        let mut raw_objects: HashMap<String, RawItem> = HashMap::new();
        let mut object_patches: Vec<RawItem> = Vec::new();
        let mut raw_events: HashMap<String, RawItem> = HashMap::new();
        collect_items(&root.join("objects"), None, &mut |item| {
            raw_objects.insert(item_name(&item), item);
        })?;
        collect_items(&root.join("events"), None, &mut |item| {
            raw_events.insert(item_name(&item), item);
        })?;
        for dir in &extension_dirs {
            let uid = read_json(&dir.join("extension.json"))
                .ok()
                .and_then(|json| json.get("uid").and_then(Value::as_i64));
            collect_items(&dir.join("objects"), uid, &mut |item| {
                let name = item.json.get("name").and_then(Value::as_str);
                let parent = item.json.get("extends").and_then(Value::as_str);
                // An extension object without a name of its own adds attributes to its parent.
                if name.is_none() || name == parent {
                    object_patches.push(item);
                } else {
                    raw_objects.insert(item_name(&item), item);
                }
            })?;
            collect_items(&dir.join("events"), uid, &mut |item| {
                raw_events.insert(item_name(&item), item);
            })?;
        }
        for patch in object_patches {
            let Some(parent) = patch.json.get("extends").and_then(Value::as_str) else {
                continue;
            };
            let Some(target) = raw_objects.get_mut(parent) else {
                return Err(SchemaError::UnknownParent {
                    name: item_name(&patch),
                    parent: parent.to_owned(),
                });
            };
            merge_attribute_maps(&mut target.json, &patch.json);
        }

        // Step 4: resolve every object and class through its extends chain.
        let resolver = Resolver {
            root,
            dictionary: &dictionary,
        };
        let mut objects = HashMap::new();
        for name in raw_objects.keys() {
            let merged = resolver.merge_chain(name, &raw_objects)?;
            objects.insert(name.clone(), resolver.definition(&merged)?);
        }
        let mut classes = HashMap::new();
        for name in raw_events.keys() {
            let merged = resolver.merge_chain(name, &raw_events)?;
            let category_key = merged.category.clone().unwrap_or_default();
            let (category_uid, category_name) = categories
                .get(&category_key)
                .cloned()
                .unwrap_or((0, "Uncategorized".to_owned()));
            let own_uid = raw_events[name]
                .json
                .get("uid")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let extension_uid = raw_events[name].extension_uid.unwrap_or(0);
            let uid = if name == "base_event" {
                0
            } else {
                extension_uid * 100_000 + category_uid * 1000 + own_uid
            };
            let mut definition = resolver.definition(&merged)?;
            // The dictionary lists only the base event's ids: each class allows its own.
            let class_ids = [
                ("class_uid", uid, definition.caption.clone()),
                ("category_uid", category_uid, category_name.clone()),
            ];
            for (attribute, id, caption) in class_ids {
                if let Some(attribute) = definition.attributes.get_mut(attribute) {
                    attribute.enum_captions = Some(BTreeMap::from([(id, caption)]));
                }
            }
            classes.insert(
                uid,
                Class {
                    uid,
                    category_uid,
                    category_name,
                    definition,
                },
            );
        }

        let version = read_json(&root.join("version.json"))
            .ok()
            .and_then(|json| {
                json.get("version")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Schema {
            version,
            classes,
            objects,
            types,
        })
    }

    /// The schema version from `version.json`, for example `1.8.0`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The caption of class `class_uid`, if the schema defines it.
    pub fn class_caption(&self, class_uid: i64) -> Option<&str> {
        self.classes
            .get(&class_uid)
            .map(|class| class.definition.caption.as_str())
    }

    /// Checks `event` against its class and returns every violation found.
    pub fn validate(&self, event: &Value) -> Result<(), ValidationError> {
        let mut violations = Vec::new();
        self.validate_event(event, &mut violations);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                version: self.version.clone(),
                violations,
            })
        }
    }

    fn validate_event(&self, event: &Value, out: &mut Vec<Violation>) {
        let Some(object) = event.as_object() else {
            push(out, "", "event is not a JSON object");
            return;
        };
        let Some(class_uid) = object.get("class_uid").and_then(Value::as_i64) else {
            push(out, "class_uid", "missing or not an integer");
            return;
        };
        let Some(class) = self.classes.get(&class_uid) else {
            push(out, "class_uid", format!("unknown class {class_uid}"));
            return;
        };

        // Classification attributes whose values follow from the class, not from enums.
        expect_value(
            out,
            object,
            "category_uid",
            &Value::from(class.category_uid),
        );
        expect_value(
            out,
            object,
            "class_name",
            &Value::from(class.definition.caption.clone()),
        );
        expect_value(
            out,
            object,
            "category_name",
            &Value::from(class.category_name.clone()),
        );
        if let Some(activity_id) = object.get("activity_id").and_then(Value::as_i64) {
            expect_value(
                out,
                object,
                "type_uid",
                &Value::from(class.uid * 100 + activity_id),
            );
            let activity = object
                .get("activity_name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let type_name = format!("{}: {}", class.definition.caption, activity);
            expect_value(out, object, "type_name", &Value::from(type_name));
        }

        let profiles: Vec<&str> = object
            .get("metadata")
            .and_then(|metadata| metadata.get("profiles"))
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let context = Context {
            profiles: &profiles,
        };
        self.validate_object(&context, "", object, &class.definition, true, out);
    }

    fn validate_object(
        &self,
        context: &Context<'_>,
        prefix: &str,
        object: &Map<String, Value>,
        definition: &Definition,
        is_event: bool,
        out: &mut Vec<Violation>,
    ) {
        for (name, attribute) in &definition.attributes {
            let applies = attribute
                .profile
                .as_deref()
                .is_none_or(|profile| context.profiles.contains(&profile));
            if attribute.requirement == Requirement::Required
                && applies
                && !object.contains_key(name)
            {
                push(out, &join(prefix, name), "required attribute missing");
            }
        }
        for group in &definition.at_least_one {
            if !group.iter().any(|name| object.contains_key(name)) {
                push(out, prefix, format!("at least one of {group:?} required"));
            }
        }
        for group in &definition.just_one {
            let present = group
                .iter()
                .filter(|name| object.contains_key(*name))
                .count();
            if present != 1 {
                push(
                    out,
                    prefix,
                    format!("exactly one of {group:?} required, found {present}"),
                );
            }
        }

        for (name, value) in object {
            let path = join(prefix, name);
            let Some(attribute) = definition.attributes.get(name) else {
                push(
                    out,
                    &path,
                    "attribute not defined by the schema here; move it under unmapped",
                );
                continue;
            };
            // The content of `unmapped` is free-form by definition.
            if is_event && name == "unmapped" {
                if !value.is_object() {
                    push(out, &path, "unmapped is not an object");
                }
                continue;
            }
            if attribute.is_array {
                let Some(items) = value.as_array() else {
                    push(out, &path, "expected an array");
                    continue;
                };
                for (index, item) in items.iter().enumerate() {
                    self.validate_value(context, &format!("{path}[{index}]"), item, attribute, out);
                }
            } else {
                self.validate_value(context, &path, value, attribute, out);
            }

            // A sibling name must match the caption of the id beside it.
            if let (Some(sibling), Some(captions)) = (&attribute.sibling, &attribute.enum_captions)
            {
                if attribute.is_array {
                    continue;
                }
                let Some(id) = value.as_i64() else { continue };
                let sibling_path = join(prefix, sibling);
                match object.get(sibling).and_then(Value::as_str) {
                    None => push(out, &sibling_path, format!("missing name for {name} {id}")),
                    Some(actual) if id != 99 => {
                        if let Some(expected) = captions.get(&id)
                            && expected != actual
                        {
                            push(
                                out,
                                &sibling_path,
                                format!("is {actual:?}, expected {expected:?} for {name} {id}"),
                            );
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn validate_value(
        &self,
        context: &Context<'_>,
        path: &str,
        value: &Value,
        attribute: &Attribute,
        out: &mut Vec<Violation>,
    ) {
        if value.is_null() {
            push(out, path, "null value; omit the attribute instead");
            return;
        }
        if let Some(definition) = self.objects.get(&attribute.type_name) {
            match value.as_object() {
                Some(object) => self.validate_object(context, path, object, definition, false, out),
                None => push(
                    out,
                    path,
                    format!("expected a {} object", attribute.type_name),
                ),
            }
            return;
        }
        if attribute.type_name == "object" {
            if !value.is_object() {
                push(out, path, "expected an object");
            }
            return;
        }
        let Some(primitive) = self.types.get(&attribute.type_name) else {
            push(
                out,
                path,
                format!(
                    "attribute has unknown type {:?} in the schema",
                    attribute.type_name
                ),
            );
            return;
        };
        let shape_ok = match primitive {
            Primitive::String => value.is_string(),
            Primitive::Integer => value.as_i64().is_some_and(|v| i32::try_from(v).is_ok()),
            Primitive::Long => value.is_i64() || value.is_u64(),
            Primitive::Float => value.is_number(),
            Primitive::Boolean => value.is_boolean(),
            Primitive::Json => true,
        };
        if !shape_ok {
            push(
                out,
                path,
                format!(
                    "value {} does not fit type {}",
                    preview(value),
                    attribute.type_name
                ),
            );
            return;
        }
        match attribute.type_name.as_str() {
            "port_t" if !value.as_i64().is_some_and(|v| (0..=65535).contains(&v)) => {
                push(
                    out,
                    path,
                    format!("port {} outside 0..=65535", preview(value)),
                );
            }
            "ip_t" if !value.as_str().is_some_and(is_ip_address) => {
                push(
                    out,
                    path,
                    format!("{} is not an IP address", preview(value)),
                );
            }
            "uuid_t" if !value.as_str().is_some_and(is_uuid) => {
                push(out, path, format!("{} is not a UUID", preview(value)));
            }
            _ => {}
        }
        if let (Some(captions), Some(id)) = (&attribute.enum_captions, value.as_i64())
            && !captions.contains_key(&id)
        {
            push(out, path, format!("enum value {id} not defined"));
        }
    }
}

/// What the validation of one event carries down into its objects.
struct Context<'a> {
    /// `metadata.profiles` of the event.
    profiles: &'a [&'a str],
}

/// Walks `extends` chains and turns merged JSON into [`Definition`]s.
struct Resolver<'a> {
    root: &'a Path,
    dictionary: &'a Map<String, Value>,
}

/// An item merged along its `extends` chain.
#[derive(Debug, Default)]
struct Merged {
    caption: String,
    category: Option<String>,
    attributes: Map<String, Value>,
    at_least_one: Vec<Vec<String>>,
    just_one: Vec<Vec<String>>,
}

impl Resolver<'_> {
    fn merge_chain(
        &self,
        name: &str,
        items: &HashMap<String, RawItem>,
    ) -> Result<Merged, SchemaError> {
        // Collect the chain child first, then merge from the root parent down.
        let mut chain: Vec<&RawItem> = Vec::new();
        let mut current = Some(name.to_owned());
        while let Some(key) = current {
            let Some(item) = items.get(&key) else {
                return Err(SchemaError::UnknownParent {
                    name: name.to_owned(),
                    parent: key,
                });
            };
            if chain.len() > 32 {
                return Err(SchemaError::CyclicExtends {
                    name: name.to_owned(),
                });
            }
            chain.push(item);
            current = item
                .json
                .get("extends")
                .and_then(Value::as_str)
                .filter(|parent| *parent != key)
                .map(str::to_owned);
        }

        let mut merged = Merged::default();
        for item in chain.iter().rev() {
            if let Some(caption) = item.json.get("caption").and_then(Value::as_str) {
                merged.caption = caption.to_owned();
            }
            if let Some(category) = item.json.get("category").and_then(Value::as_str) {
                merged.category = Some(category.to_owned());
            }
            let own = self.expand_includes(item)?;
            for (attribute, value) in own {
                merge_attribute(&mut merged.attributes, &attribute, &value);
            }
            // Constraints replace those of the parent when a child states its own.
            if let Some(constraints) = item.json.get("constraints").and_then(Value::as_object) {
                merged.at_least_one = constraint_groups(constraints.get("at_least_one"));
                merged.just_one = constraint_groups(constraints.get("just_one"));
            }
        }
        Ok(merged)
    }

    /// The attributes an item declares, with those of its `$include`d files merged below them.
    fn expand_includes(&self, item: &RawItem) -> Result<Map<String, Value>, SchemaError> {
        let mut result = Map::new();
        let Some(attributes) = item.json.get("attributes").and_then(Value::as_object) else {
            return Ok(result);
        };
        if let Some(includes) = attributes.get("$include").and_then(Value::as_array) {
            for include in includes.iter().filter_map(Value::as_str) {
                let path = self.root.join(include);
                let json = read_json(&path)?;
                let profile = json.get("name").cloned().unwrap_or(Value::Null);
                if let Some(Value::Object(included)) = json.get("attributes") {
                    for (name, value) in included {
                        if name != "$include" {
                            merge_attribute(&mut result, name, value);
                            if let Some(Value::Object(entry)) = result.get_mut(name) {
                                entry.insert("profile".to_owned(), profile.clone());
                            }
                        }
                    }
                }
            }
        }
        for (name, value) in attributes {
            if name != "$include" {
                merge_attribute(&mut result, name, value);
            }
        }
        Ok(result)
    }

    fn definition(&self, merged: &Merged) -> Result<Definition, SchemaError> {
        let mut attributes = HashMap::new();
        for (name, local) in &merged.attributes {
            let global = self.dictionary.get(name).and_then(Value::as_object);
            let lookup = |field: &str| {
                local
                    .get(field)
                    .or_else(|| global.and_then(|g| g.get(field)))
            };
            let type_name = lookup("type")
                .and_then(Value::as_str)
                .unwrap_or("string_t")
                .to_owned();
            let is_array = lookup("is_array").and_then(Value::as_bool).unwrap_or(false);
            let requirement = match local.get("requirement").and_then(Value::as_str) {
                Some("required") => Requirement::Required,
                _ => Requirement::Other,
            };
            let sibling = lookup("sibling").and_then(Value::as_str).map(str::to_owned);
            let profile = local
                .get("profile")
                .and_then(Value::as_str)
                .map(str::to_owned);

            // Enum ids: the dictionary's, extended by the class or object chain.
            let mut captions = BTreeMap::new();
            for source in [global.and_then(|g| g.get("enum")), local.get("enum")]
                .into_iter()
                .flatten()
            {
                if let Some(entries) = source.as_object() {
                    for (id, entry) in entries {
                        if let Ok(id) = id.parse::<i64>() {
                            let caption =
                                entry.get("caption").and_then(Value::as_str).unwrap_or("");
                            captions.insert(id, caption.to_owned());
                        }
                    }
                }
            }
            let enum_captions = (!captions.is_empty()).then_some(captions);
            attributes.insert(
                name.clone(),
                Attribute {
                    type_name,
                    is_array,
                    requirement,
                    enum_captions,
                    sibling,
                    profile,
                },
            );
        }
        Ok(Definition {
            caption: merged.caption.clone(),
            attributes,
            at_least_one: merged.at_least_one.clone(),
            just_one: merged.just_one.clone(),
        })
    }
}

/// Merges one attribute entry field by field over an existing entry of the same name.
fn merge_attribute(target: &mut Map<String, Value>, name: &str, value: &Value) {
    let Some(fields) = value.as_object() else {
        return;
    };
    let entry = target
        .entry(name.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(entry) = entry.as_object_mut() else {
        return;
    };
    for (field, field_value) in fields {
        if field == "enum"
            && let (Some(Value::Object(existing)), Some(added)) =
                (entry.get_mut("enum"), field_value.as_object())
        {
            for (id, caption) in added {
                existing.insert(id.clone(), caption.clone());
            }
            continue;
        }
        entry.insert(field.clone(), field_value.clone());
    }
}

/// Applies an extension patch's attributes onto the object it extends.
fn merge_attribute_maps(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    let Some(Value::Object(added)) = patch.get("attributes") else {
        return;
    };
    let attributes = target
        .entry("attributes")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(attributes) = attributes.as_object_mut() {
        for (name, value) in added {
            merge_attribute(attributes, name, value);
        }
    }
}

fn constraint_groups(value: Option<&Value>) -> Vec<Vec<String>> {
    let Some(names) = value.and_then(Value::as_array) else {
        return Vec::new();
    };
    let group: Vec<String> = names
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if group.is_empty() {
        Vec::new()
    } else {
        vec![group]
    }
}

fn read_json(path: &Path) -> Result<Value, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| SchemaError::Json {
        path: path.to_owned(),
        source,
    })
}

fn object_field(
    json: &Value,
    path: &Path,
    field: &'static str,
) -> Result<Map<String, Value>, SchemaError> {
    json.get(field)
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| SchemaError::MissingField {
            path: path.to_owned(),
            field,
        })
}

fn dictionary_types(json: &Value) -> Map<String, Value> {
    json.get("types")
        .and_then(|types| types.get("attributes"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Reduces every scalar type to its primitive by following its `type` field.
fn resolve_types(types: &Map<String, Value>) -> HashMap<String, Primitive> {
    let base = |name: &str| match name {
        "string_t" => Some(Primitive::String),
        "integer_t" => Some(Primitive::Integer),
        "long_t" => Some(Primitive::Long),
        "float_t" => Some(Primitive::Float),
        "boolean_t" => Some(Primitive::Boolean),
        "json_t" => Some(Primitive::Json),
        _ => None,
    };
    let mut resolved = HashMap::new();
    for name in types.keys() {
        let mut current = name.clone();
        for _ in 0..8 {
            if let Some(primitive) = base(&current) {
                resolved.insert(name.clone(), primitive);
                break;
            }
            match types
                .get(&current)
                .and_then(|t| t.get("type"))
                .and_then(Value::as_str)
            {
                Some(parent) => current = parent.to_owned(),
                None => break,
            }
        }
    }
    resolved
}

fn list_extension_dirs(root: &Path) -> Result<Vec<PathBuf>, SchemaError> {
    let dir = root.join("extensions");
    let mut dirs = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(dirs);
    };
    for entry in entries {
        let entry = entry.map_err(|source| SchemaError::Io {
            path: dir.clone(),
            source,
        })?;
        if entry.path().join("extension.json").exists() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Calls `sink` for every JSON file under `dir`, recursively.
fn collect_items(
    dir: &Path,
    extension_uid: Option<i64>,
    sink: &mut dyn FnMut(RawItem),
) -> Result<(), SchemaError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect_items(&path, extension_uid, sink)?;
        } else if path.extension().is_some_and(|ext| ext == "json") {
            let Value::Object(json) = read_json(&path)? else {
                return Err(SchemaError::MissingField {
                    path,
                    field: "attributes",
                });
            };
            sink(RawItem {
                path,
                json,
                extension_uid,
            });
        }
    }
    Ok(())
}

/// The name an item is known by: its `name` field, or its file stem.
fn item_name(item: &RawItem) -> String {
    item.json
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            item.path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

fn expect_value(
    out: &mut Vec<Violation>,
    object: &Map<String, Value>,
    name: &str,
    expected: &Value,
) {
    match object.get(name) {
        Some(actual) if actual == expected => {}
        Some(actual) => push(
            out,
            name,
            format!("is {}, expected {}", preview(actual), expected),
        ),
        None => push(out, name, format!("missing, expected {expected}")),
    }
}

fn push(out: &mut Vec<Violation>, path: &str, message: impl Into<String>) {
    out.push(Violation {
        path: path.to_owned(),
        message: message.into(),
    });
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A bounded rendering of a value for messages; event values are attacker-controlled.
fn preview(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 80 {
        return text;
    }
    let mut end = 80;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

fn is_ip_address(text: &str) -> bool {
    text.parse::<std::net::IpAddr>().is_ok()
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups.iter().zip(lengths).all(|(group, length)| {
            group.len() == length && group.chars().all(|c| c.is_ascii_hexdigit())
        })
}
