//! Building a [`Record`] straight from a record's BinXML template instance, without rendering
//! the record to JSON and parsing that text back.
//!
//! Almost every record written by Windows is one template instance. The chunk stores the
//! template definition (the element tree with numbered substitution slots) once, and each
//! record stores only the substitution values. This module reads a definition once per chunk
//! into a [`Plan`] (which slot fills which `System` value and which field) and then fills a
//! `Record` from each record's typed values.
//!
//! The result must equal what [`Record::from_slice`] reads from the `evtx` crate's JSON rendering
//! of the same record, because that rendering is the reference. So the plan takes only the shapes
//! whose JSON form is simple and known. That is an `Event` with `System` and `EventData` (`Data`
//! elements named by a literal `Name` attribute) or `UserData` (one wrapper of plain elements).
//! Each value must be one substitution or literal text, of a scalar type. The usual `Event`
//! template passes `EventData` or `UserData` as a nested template instance in a BinXML value, which
//! takes a second plan. For anything else ([`Plan::compile`] or [`Plan::build`] returns `None`) the
//! caller renders the record to JSON as before. Records without templates, such as forwarded (WEC)
//! records, always take that path.
//!
//! NOTE: this path does not charge the `evtx` crate's render budget, so a record that the
//! renderer would reject for its size still converts. Plans expand nothing (arrays and deeper
//! nesting fall back), so a record's cost stays bounded by its size.
//!
//! Definition layout (MS-EVEN6 BinXML, as the `evtx` crate 0.15.1 reads it): at the definition
//! offset in the chunk, a 4-byte offset of the next definition, the 16-byte template GUID, a 4-byte
//! data size, then a BinXML fragment whose element-start tokens carry a 2-byte dependency id. Names
//! are offsets into the chunk's string table (4-byte link, 2-byte hash, 2-byte length, UTF-16LE),
//! stored inline the first time they are used.

use std::collections::HashMap;
use std::sync::Arc;

use evtx::binxml::value_variant::{BinXmlValue, FileTime, SysTime};

use crate::record::{FieldValue, Fields, Record};

/// Template plans of one chunk, by definition offset; `None` marks a definition whose shape
/// the plan does not take, so it is not read again.
///
/// A definition offset names one definition only within its chunk, so a cache must not
/// outlive its chunk. `EvtxParser::serialized_records` clones its closure for every chunk,
/// which gives each chunk an empty clone of the cache captured there.
#[derive(Debug, Clone, Default)]
pub(crate) struct TemplateCache {
    events: HashMap<u32, Option<Arc<Plan>>>,
    bodies: HashMap<u32, Option<Arc<BodyPlan>>>,
}

impl TemplateCache {
    /// Builds a record from its template values, or returns `None` when it must be rendered.
    /// `binxml` is the record's BinXML, a slice of `chunk`. `record_id` and `time_ms` from the
    /// record header are the fallbacks of [`Record::from_slice`].
    pub(crate) fn build(
        &mut self,
        chunk: &[u8],
        binxml: &[u8],
        record_id: u64,
        time_ms: i64,
    ) -> Option<Record> {
        // Only a fragment that is exactly one template instance has this shape.
        if !matches!(binxml, [0x0f, _, _, _, 0x0c, ..]) {
            return None;
        }
        // The record's instance has the layout of a nested one, and its values are decoded the
        // same way, from their stored bytes.
        let instance = NestedInstance::read(chunk, binxml)?;
        let plan = self
            .events
            .entry(instance.definition)
            .or_insert_with(|| Plan::compile(chunk, instance.definition).map(Arc::new))
            .clone()?;
        // The crate parses every nested BinXML value; this module reads only the body's.
        if !instance.binxml_only_at(plan.body) {
            return None;
        }
        let mut record = plan.build(&instance, record_id, time_ms)?;

        // Most events keep `EventData` or `UserData` in a template of its own, passed to the
        // `Event` template as a nested BinXML value.
        if let Some(index) = plan.body {
            match instance.values.get(usize::from(index)) {
                None | Some((0x00, _)) => {}
                Some((0x21, [])) => {}
                Some((0x21, fragment)) => {
                    let nested = NestedInstance::read(chunk, fragment)?;
                    if !nested.binxml_only_at(None) {
                        return None;
                    }
                    let body = self
                        .bodies
                        .entry(nested.definition)
                        .or_insert_with(|| {
                            BodyPlan::compile(chunk, nested.definition).map(Arc::new)
                        })
                        .clone()?;
                    record.fields = body.fields(&nested)?;
                    record.is_user_data = body.is_user_data;
                }
                Some(_) => return None,
            }
        }
        Some(record)
    }
}

/// The substitution values of a template instance nested in a BinXML value, still raw:
/// (value type, bytes) pairs.
struct NestedInstance<'a> {
    definition: u32,
    values: Vec<(u8, &'a [u8])>,
}

impl<'a> NestedInstance<'a> {
    /// Returns whether every value of type BinXML is the one at `index`.
    fn binxml_only_at(&self, index: Option<u16>) -> bool {
        self.values
            .iter()
            .enumerate()
            .all(|(at, (value_type, _))| *value_type != 0x21 || Some(at) == index.map(usize::from))
    }

    /// Reads `fragment`, a slice of `chunk`, as one template instance.
    fn read(chunk: &'a [u8], fragment: &'a [u8]) -> Option<NestedInstance<'a>> {
        // The fragment's offset in the chunk: definition offsets inside it are chunk offsets.
        let start = (fragment.as_ptr() as usize).checked_sub(chunk.as_ptr() as usize)?;
        let end = start.checked_add(fragment.len())?;
        if end > chunk.len() {
            return None;
        }

        let mut reader = Reader {
            chunk,
            position: start,
            end,
        };
        // The fragment header is optional in nested BinXML.
        if reader.peek()? == 0x0f {
            reader.bytes(4)?;
        }
        if reader.u8()? != 0x0c {
            return None;
        }
        reader.bytes(5)?;
        let definition = reader.u32()?;

        if reader.position == definition as usize {
            // The definition is stored here, on its first use in the chunk: skip it.
            reader.bytes(20)?;
            let size = reader.u32()? as usize;
            reader.bytes(size)?;
        }

        let count = reader.u32()? as usize;
        let descriptors = reader.bytes(count.checked_mul(4)?)?;
        let mut values = Vec::with_capacity(count);
        for descriptor in descriptors.chunks_exact(4) {
            let &[low, high, value_type, _] = descriptor else {
                return None;
            };
            let size = usize::from(u16::from_le_bytes([low, high]));
            let bytes = reader.bytes(size)?;
            if !value_fits(value_type, bytes) {
                return None;
            }
            values.push((value_type, bytes));
        }

        // Anything after the instance but the end of the fragment is a shape not taken here.
        match reader.peek() {
            None | Some(0x00) => Some(NestedInstance { definition, values }),
            Some(_) => None,
        }
    }
}

/// Returns whether the `evtx` crate reads a value of BinXML type `value_type` stored as `bytes`
/// exactly as those bytes. It reads a fixed-width value by its type, a SID by its count of
/// sub-authorities and a string array up to a NUL unit, not by the declared size. So on a
/// mismatch it reads the following values from other offsets than this module would, and the
/// record is left to the crate, as is a value of an unknown type.
fn value_fits(value_type: u8, bytes: &[u8]) -> bool {
    let width = |base: u8| -> Option<usize> {
        match base {
            0x03 | 0x04 => Some(1),
            0x05 | 0x06 => Some(2),
            0x07 | 0x08 | 0x0b | 0x0d | 0x14 => Some(4),
            0x09 | 0x0a | 0x0c | 0x11 | 0x15 => Some(8),
            0x0f | 0x12 => Some(16),
            _ => None,
        }
    };
    let size = bytes.len();
    match value_type {
        // Windows often stores an empty value as NullType of 2 bytes; the crate skips them.
        0x00 | 0x02 | 0x0e | 0x21 => true,
        0x01 => size.is_multiple_of(2),
        0x10 => size == 4 || size == 8,
        0x13 => bytes
            .get(1)
            .is_some_and(|&count| size == 8 + 4 * usize::from(count)),
        // String arrays are read up to a NUL unit, whatever their declared size.
        0x81 => false,
        array if array & 0x80 != 0 => width(array & 0x7f).is_some_and(|w| size.is_multiple_of(w)),
        scalar => width(scalar) == Some(size),
    }
}

// === The template definition as a tree ===

/// One piece of element text or attribute value in a template definition.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// Substitution slot `index`; optional slots with an empty value render nothing.
    Slot {
        index: u16,
        optional: bool,
    },
}

#[derive(Debug, Default)]
struct Element {
    name: String,
    /// The slot whose NullType value leaves this element out of the record.
    dependency: Option<u16>,
    attributes: Vec<(String, Vec<Piece>)>,
    children: Vec<Element>,
    text: Vec<Piece>,
}

/// Reads BinXML tokens of a template definition; every read returns `None` past the data.
struct Reader<'a> {
    chunk: &'a [u8],
    position: usize,
    end: usize,
}

/// Deepest element nesting accepted, which bounds recursion on damaged definitions.
const MAX_DEPTH: usize = 16;

impl<'a> Reader<'a> {
    fn bytes(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(count)?;
        if end > self.end {
            return None;
        }
        let bytes = self.chunk.get(self.position..end)?;
        self.position = end;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    fn peek(&self) -> Option<u8> {
        (self.position < self.end)
            .then(|| self.chunk.get(self.position).copied())
            .flatten()
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    /// Reads a name reference and returns the name from the chunk's string table.
    fn name(&mut self) -> Option<String> {
        let offset = self.u32()? as usize;
        if offset == self.position {
            // Stored inline: link, hash, length, the characters and a NUL unit.
            self.bytes(6)?;
            let length = self.u16()? as usize;
            self.bytes(length.checked_mul(2)?.checked_add(2)?)?;
        }
        let mut table = Reader {
            chunk: self.chunk,
            position: offset.checked_add(6)?,
            end: self.chunk.len(),
        };
        let length = table.u16()? as usize;
        // The `evtx` crate ends a name at its first NUL unit, whatever its stored length.
        let bytes = table.bytes(length.checked_mul(2)?)?;
        utf16_until_nul(bytes)
    }

    /// Reads value text (token 0x05) or a substitution (0x0d, 0x0e); `None` for other tokens.
    fn piece(&mut self, token: u8) -> Option<Piece> {
        match token {
            0x05 | 0x45 => {
                // Only UTF-16 string values (type 0x01) occur as literal text.
                if self.u8()? != 0x01 {
                    return None;
                }
                let length = self.u16()? as usize;
                // The `evtx` crate ends literal text at its first NUL unit, as it ends values.
                let bytes = self.bytes(length.checked_mul(2)?)?;
                Some(Piece::Text(utf16_until_nul(bytes)?))
            }
            0x0d | 0x0e => {
                let index = self.u16()?;
                self.u8()?;
                Some(Piece::Slot {
                    index,
                    optional: token == 0x0e,
                })
            }
            _ => None,
        }
    }

    /// Reads an element whose start token has been read; `None` for tokens this plan does not
    /// take (CDATA, character and entity references, processing instructions).
    fn element(&mut self, token: u8, depth: usize) -> Option<Element> {
        if depth > MAX_DEPTH {
            return None;
        }
        let dependency = self.u16()?;
        self.u32()?;
        let mut element = Element {
            name: self.name()?,
            dependency: (dependency != 0xffff).then_some(dependency),
            ..Element::default()
        };
        if token & 0x40 != 0 {
            self.u32()?;
        }

        while let Some(0x06 | 0x46) = self.peek() {
            self.u8()?;
            let name = self.name()?;
            let mut value = Vec::new();
            while let Some(next @ (0x05 | 0x45 | 0x0d | 0x0e)) = self.peek() {
                self.u8()?;
                value.push(self.piece(next)?);
            }
            element.attributes.push((name, value));
        }

        match self.u8()? {
            0x03 => return Some(element),
            0x02 => {}
            _ => return None,
        }
        loop {
            match self.u8()? {
                0x04 => return Some(element),
                next @ (0x01 | 0x41) => element.children.push(self.element(next, depth + 1)?),
                next => element.text.push(self.piece(next)?),
            }
        }
    }
}

/// Reads the template definition at `offset` in `chunk` into its root element.
fn read_definition(chunk: &[u8], offset: u32) -> Option<Element> {
    let start = offset as usize;
    let mut header = Reader {
        chunk,
        position: start.checked_add(20)?,
        end: chunk.len(),
    };
    let size = header.u32()? as usize;
    let mut reader = Reader {
        chunk,
        position: header.position,
        end: header.position.checked_add(size)?.min(chunk.len()),
    };
    if reader.u8()? != 0x0f {
        return None;
    }
    reader.bytes(3)?;
    match reader.u8()? {
        token @ (0x01 | 0x41) => reader.element(token, 0),
        _ => None,
    }
}

// === The plan ===

/// The origin of one value of a record.
#[derive(Debug, Clone)]
struct Source {
    /// The element's dependency slot: a NullType value there leaves the value out. Plans only
    /// take elements whose ancestors have no dependency.
    dependency: Option<u16>,
    /// The pieces of the text or attribute; empty for an empty element.
    pieces: Vec<Piece>,
}

/// The sources of the `System` values of a [`Record`].
#[derive(Debug, Default)]
struct SystemPlan {
    provider: Option<Source>,
    event_id: Option<Source>,
    version: Option<Source>,
    time_created: Option<Source>,
    event_record_id: Option<Source>,
    activity_id: Option<Source>,
    process_id: Option<Source>,
    thread_id: Option<Source>,
    channel: Option<Source>,
    computer: Option<Source>,
    user_id: Option<Source>,
}

/// A template definition reduced to the sources of a [`Record`]'s values.
#[derive(Debug)]
pub(crate) struct Plan {
    system: SystemPlan,
    /// `EventData` or `UserData` written in this template.
    inline: Option<BodyPlan>,
    /// The slot that contains `EventData` or `UserData` as a nested template instance.
    body: Option<u16>,
}

/// The fields of `EventData` or `UserData`.
#[derive(Debug)]
pub(crate) struct BodyPlan {
    fields: Vec<(String, Source)>,
    is_user_data: bool,
}

impl BodyPlan {
    /// Reads a definition whose root is `EventData` or `UserData`.
    fn compile(chunk: &[u8], offset: u32) -> Option<BodyPlan> {
        BodyPlan::of(&read_definition(chunk, offset)?)
    }

    fn of(element: &Element) -> Option<BodyPlan> {
        match element.name.as_str() {
            "EventData" => Some(BodyPlan {
                fields: compile_event_data(element)?,
                is_user_data: false,
            }),
            "UserData" => Some(BodyPlan {
                fields: compile_user_data(element)?,
                is_user_data: true,
            }),
            _ => None,
        }
    }

    /// Builds the fields of one record, in template order.
    fn fields(&self, values: &impl Values) -> Option<Fields> {
        let mut fields = Vec::with_capacity(self.fields.len());
        for (name, source) in &self.fields {
            let Some(mut value) = resolve_present(source, values)? else {
                continue;
            };
            // The `evtx` crate (0.15.1) renders an empty `Data` element, or one whose value is
            // NullType, empty binary or missing, as `""`, but the other elements as `null`.
            if !self.is_user_data && value == FieldValue::Null {
                value = FieldValue::Str(String::new());
            }
            fields.push((name.clone(), value));
        }
        Some(Fields::from_vec(fields))
    }
}

impl Plan {
    /// Reads the definition at `offset` in `chunk`; `None` when it is damaged or has a shape
    /// whose JSON rendering this plan would not reproduce.
    pub(crate) fn compile(chunk: &[u8], offset: u32) -> Option<Plan> {
        let root = read_definition(chunk, offset)?;
        // The root's dependency is ignored: the `evtx` crate always renders a template's root.
        if root.name != "Event" {
            return None;
        }
        let body = match root.text.as_slice() {
            [] => None,
            [Piece::Slot { index, .. }] => Some(*index),
            _ => return None,
        };
        let mut plan = Plan {
            system: SystemPlan::default(),
            inline: None,
            body,
        };
        let mut seen_system = false;
        for child in &root.children {
            match child.name.as_str() {
                "System" if !seen_system => {
                    seen_system = true;
                    plan.system = compile_system(child)?;
                }
                "EventData" | "UserData" if plan.inline.is_none() && body.is_none() => {
                    plan.inline = Some(BodyPlan::of(child)?);
                }
                _ => return None,
            }
        }
        seen_system.then_some(plan)
    }

    /// Fills a record from the values of one instance, without the fields of a nested body.
    /// Returns `None` when a value has a type or shape whose JSON rendering this plan would
    /// not reproduce.
    fn build(&self, values: &impl Values, record_id: u64, time_ms: i64) -> Option<Record> {
        let system = &self.system;
        let text = |source: &Option<Source>| -> Option<Option<String>> {
            match resolve(source.as_ref(), values)? {
                // The `evtx` crate leaves out an attribute whose value is empty. The element
                // texts read here (`Channel`, `Computer`) default to "" either way.
                FieldValue::Str(text) if text.is_empty() => Some(None),
                FieldValue::Str(text) => Some(Some(text)),
                FieldValue::Null => Some(None),
                _ => None,
            }
        };
        let number = |source: &Option<Source>| -> Option<Option<u64>> {
            Some(resolve(source.as_ref(), values)?.as_u64())
        };

        let event_id = number(&system.event_id)?.and_then(|id| u32::try_from(id).ok())?;
        let system_time = text(&system.time_created)?;
        let stored_time = match system
            .time_created
            .as_ref()
            .map(|source| source.pieces.as_slice())
        {
            Some([Piece::Slot { index, .. }]) if system_time.is_some() => {
                values.file_time_ms(usize::from(*index))
            }
            _ => None,
        };
        // Reading the time from the stored FILETIME saves parsing the text made from it; both
        // give the same milliseconds (`file_time_ms_matches_its_text`).
        let time_ms = stored_time
            .or_else(|| system_time.as_deref().and_then(crate::map::parse_utc_time))
            .unwrap_or(time_ms);
        let (fields, is_user_data) = match &self.inline {
            Some(body) => (body.fields(values)?, body.is_user_data),
            None => (Fields::default(), false),
        };

        Some(Record {
            provider: text(&system.provider)?.unwrap_or_default(),
            channel: text(&system.channel)?.unwrap_or_default(),
            event_id,
            version: number(&system.version)?.and_then(|v| u32::try_from(v).ok()),
            system_time,
            time_ms,
            record_id: number(&system.event_record_id)?.unwrap_or(record_id),
            computer: text(&system.computer)?.unwrap_or_default(),
            execution_pid: number(&system.process_id)?.and_then(|v| u32::try_from(v).ok()),
            execution_tid: number(&system.thread_id)?.and_then(|v| u32::try_from(v).ok()),
            user_sid: text(&system.user_id)?,
            activity_id: text(&system.activity_id)?,
            fields,
            is_user_data,
        })
    }
}

/// Takes the values `Record` reads from `System`; other children are left alone, as the JSON
/// reader ignores them.
fn compile_system(system: &Element) -> Option<SystemPlan> {
    if !system.text.is_empty() || system.dependency.is_some() {
        return None;
    }
    let mut plan = SystemPlan::default();
    let mut names: Vec<&str> = Vec::new();
    for child in &system.children {
        // A repeated element is a duplicate key to the JSON reader, which rejects the record.
        if names.contains(&child.name.as_str()) {
            return None;
        }
        names.push(child.name.as_str());
        let text = || element_text(child);
        let attribute = |name: &str| attribute_source(child, name);
        match child.name.as_str() {
            "Provider" => plan.provider = attribute("Name")?,
            "EventID" => plan.event_id = Some(text()?),
            "Version" => plan.version = Some(text()?),
            "TimeCreated" => plan.time_created = attribute("SystemTime")?,
            "EventRecordID" => plan.event_record_id = Some(text()?),
            "Correlation" => plan.activity_id = attribute("ActivityID")?,
            "Execution" => {
                plan.process_id = attribute("ProcessID")?;
                plan.thread_id = attribute("ThreadID")?;
            }
            "Channel" => plan.channel = Some(text()?),
            "Computer" => plan.computer = Some(text()?),
            "Security" => plan.user_id = attribute("UserID")?,
            _ => {}
        }
    }
    Some(plan)
}

/// `EventData` children must all be `Data` elements named by a literal `Name` attribute.
fn compile_event_data(event_data: &Element) -> Option<Vec<(String, Source)>> {
    if !event_data.text.is_empty() || event_data.dependency.is_some() {
        return None;
    }
    let mut fields: Vec<(String, Source)> = Vec::with_capacity(event_data.children.len());
    for data in &event_data.children {
        let [(attribute, name)] = data.attributes.as_slice() else {
            return None;
        };
        let [Piece::Text(name)] = name.as_slice() else {
            return None;
        };
        if data.name != "Data" || attribute != "Name" || name.is_empty() {
            return None;
        }
        if fields.iter().any(|(known, _)| known == name) {
            return None;
        }
        fields.push((name.clone(), element_text(data)?));
    }
    Some(fields)
}

/// `UserData` contains one wrapper element whose children, without attributes, are the fields.
fn compile_user_data(user_data: &Element) -> Option<Vec<(String, Source)>> {
    let [wrapper] = user_data.children.as_slice() else {
        return None;
    };
    if !user_data.text.is_empty()
        || !user_data.attributes.is_empty()
        || user_data.dependency.is_some()
        || wrapper.dependency.is_some()
        || !wrapper.text.is_empty()
    {
        return None;
    }
    let mut fields: Vec<(String, Source)> = Vec::with_capacity(wrapper.children.len());
    for field in &wrapper.children {
        if !field.attributes.is_empty() || fields.iter().any(|(known, _)| *known == field.name) {
            return None;
        }
        fields.push((field.name.clone(), element_text(field)?));
    }
    Some(fields)
}

/// Returns the source of an element's text; `None` when it has child elements or several
/// pieces of text.
fn element_text(element: &Element) -> Option<Source> {
    if !element.children.is_empty() || element.text.len() > 1 {
        return None;
    }
    Some(Source {
        dependency: element.dependency,
        pieces: element.text.clone(),
    })
}

/// Returns the source of attribute `name`: `Some(None)` when the element has no such
/// attribute, and `None` when the element has children or several pieces in that attribute.
fn attribute_source(element: &Element, name: &str) -> Option<Option<Source>> {
    if !element.children.is_empty() {
        return None;
    }
    let Some((_, pieces)) = element.attributes.iter().find(|(key, _)| key == name) else {
        return Some(None);
    };
    // NOTE: how the `evtx` crate renders an attribute of literal empty text is not checked,
    // so such a record is rendered to JSON.
    match pieces.as_slice() {
        [Piece::Slot { .. }] => {}
        [Piece::Text(text)] if !text.is_empty() => {}
        _ => return None,
    }
    Some(Some(Source {
        dependency: element.dependency,
        pieces: pieces.clone(),
    }))
}

/// Substitution values of one template instance.
trait Values {
    /// Returns whether value `index` is NullType, which leaves out elements that depend on it.
    fn is_null_type(&self, index: usize) -> bool;
    /// Value `index` as its JSON rendering parses, `Null` past the values; `None` for a type
    /// whose rendering this module does not reproduce.
    fn field(&self, index: usize) -> Option<FieldValue>;
    /// Value `index` in milliseconds since 1970 when it is a FILETIME of the years 1601 to
    /// 9999.
    fn file_time_ms(&self, _index: usize) -> Option<i64> {
        None
    }
}

/// Values as the `evtx` crate decodes them, for tests that fill a plan by hand.
#[cfg(test)]
impl Values for &[BinXmlValue<'_>] {
    fn is_null_type(&self, index: usize) -> bool {
        matches!(self.get(index), Some(BinXmlValue::NullType))
    }

    fn field(&self, index: usize) -> Option<FieldValue> {
        match self.get(index) {
            None => Some(FieldValue::Null),
            Some(value) => field_value(value),
        }
    }
}

impl Values for NestedInstance<'_> {
    fn is_null_type(&self, index: usize) -> bool {
        matches!(self.values.get(index), Some((0x00, _)))
    }

    fn field(&self, index: usize) -> Option<FieldValue> {
        match self.values.get(index) {
            None => Some(FieldValue::Null),
            Some((value_type, bytes)) => raw_field_value(*value_type, bytes),
        }
    }

    fn file_time_ms(&self, index: usize) -> Option<i64> {
        match self.values.get(index) {
            Some((0x11, bytes)) => file_time_ms(u64::from_le_bytes((*bytes).try_into().ok()?)),
            _ => None,
        }
    }
}

/// FILETIME of 9999-12-31T23:59:59.9999999Z, the last one a four-digit year can show. The
/// `evtx` crate's record header times end earlier: see [`LAST_HEADER_FILE_TIME`].
const LAST_FILE_TIME: u64 = 2_650_467_743_999_999_999;

/// FILETIME of 9999-12-30T00:00:00Z. The `evtx` crate rejects a record whose header time is
/// after 9999-12-30T22:00:00.999999999Z, the last time its date library holds.
pub(crate) const LAST_HEADER_FILE_TIME: u64 = 2_650_466_016_000_000_000;

/// Milliseconds between 1601-01-01 and 1970-01-01.
const FILE_TIME_EPOCH_MS: i64 = 11_644_473_600_000;

/// Converts a FILETIME (100 ns units since 1601) to milliseconds since 1970, rounded down as
/// the first three digits of its rendered fraction are.
pub(crate) fn file_time_ms(file_time: u64) -> Option<i64> {
    if file_time > LAST_FILE_TIME {
        return None;
    }
    i64::try_from(file_time / 10_000)
        .ok()
        .map(|ms| ms - FILE_TIME_EPOCH_MS)
}

/// Returns the value of `source`, `Null` when it is absent or empty, and `None` when it cannot
/// be built.
fn resolve(source: Option<&Source>, values: &impl Values) -> Option<FieldValue> {
    match source {
        Some(source) => Some(resolve_present(source, values)?.unwrap_or(FieldValue::Null)),
        None => Some(FieldValue::Null),
    }
}

/// The value of `source`: `Some(None)` when a dependency leaves its element out, `Null` for
/// an empty element, and `None` when the value cannot be built.
fn resolve_present(source: &Source, values: &impl Values) -> Option<Option<FieldValue>> {
    let left_out = source
        .dependency
        .is_some_and(|index| values.is_null_type(usize::from(index)));
    if left_out {
        return Some(None);
    }
    let value = match source.pieces.first() {
        None => FieldValue::Null,
        Some(Piece::Text(text)) => FieldValue::Str(text.clone()),
        Some(Piece::Slot { index, .. }) => values.field(usize::from(*index))?,
    };
    Some(Some(value))
}

/// Converts a substitution value to the field value its JSON rendering parses to: strings
/// stay strings, integers become numbers, and GUIDs, SIDs, times, binary and hex integers
/// become the text the `evtx` crate writes for them.
fn field_value(value: &BinXmlValue<'_>) -> Option<FieldValue> {
    let field = match value {
        BinXmlValue::NullType => FieldValue::Null,
        BinXmlValue::StringType(text) => {
            let units = text.as_bytes().get(..text.num_chars().checked_mul(2)?)?;
            FieldValue::Str(utf16_to_string(units)?)
        }
        BinXmlValue::AnsiStringType(text) => FieldValue::Str((*text).to_owned()),
        BinXmlValue::Int8Type(n) => signed(i64::from(*n)),
        BinXmlValue::Int16Type(n) => signed(i64::from(*n)),
        BinXmlValue::Int32Type(n) => signed(i64::from(*n)),
        BinXmlValue::Int64Type(n) => signed(*n),
        BinXmlValue::UInt8Type(n) => FieldValue::Unsigned(u64::from(*n)),
        BinXmlValue::UInt16Type(n) => FieldValue::Unsigned(u64::from(*n)),
        BinXmlValue::UInt32Type(n) => FieldValue::Unsigned(u64::from(*n)),
        BinXmlValue::UInt64Type(n) => FieldValue::Unsigned(*n),
        BinXmlValue::BoolType(flag) => FieldValue::Bool(*flag),
        BinXmlValue::BinaryType([]) => FieldValue::Null,
        BinXmlValue::GuidType(bytes) => FieldValue::Str(guid_text(bytes)),
        BinXmlValue::HexInt32Type(n) => FieldValue::Str(hex_text(u64::from(*n))),
        BinXmlValue::HexInt64Type(n) => FieldValue::Str(hex_text(*n)),
        BinXmlValue::BinaryType(_)
        | BinXmlValue::FileTimeType(_)
        | BinXmlValue::SysTimeType(_)
        | BinXmlValue::SidType(_) => FieldValue::Str(value.to_string()),
        // Floats, arrays (which repeat their element), nested BinXML and handles render in
        // ways this plan does not reproduce.
        _ => return None,
    };
    Some(field)
}

/// [`field_value`] for a value still in its stored form, decoded as the `evtx` crate decodes
/// substitution values.
fn raw_field_value(value_type: u8, bytes: &[u8]) -> Option<FieldValue> {
    let value = match (value_type, bytes.len()) {
        (0x00, _) => BinXmlValue::NullType,
        (0x01, _) => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            return utf16_until_nul(bytes).map(FieldValue::Str);
        }
        (0x02, _) => return ascii_text(bytes).map(FieldValue::Str),
        (0x03, 1) => BinXmlValue::Int8Type(i8::from_le_bytes(bytes.try_into().ok()?)),
        (0x04, 1) => BinXmlValue::UInt8Type(bytes[0]),
        (0x05, 2) => BinXmlValue::Int16Type(i16::from_le_bytes(bytes.try_into().ok()?)),
        (0x06, 2) => BinXmlValue::UInt16Type(u16::from_le_bytes(bytes.try_into().ok()?)),
        (0x07, 4) => BinXmlValue::Int32Type(i32::from_le_bytes(bytes.try_into().ok()?)),
        (0x08, 4) => BinXmlValue::UInt32Type(u32::from_le_bytes(bytes.try_into().ok()?)),
        (0x09, 8) => BinXmlValue::Int64Type(i64::from_le_bytes(bytes.try_into().ok()?)),
        (0x0a, 8) => BinXmlValue::UInt64Type(u64::from_le_bytes(bytes.try_into().ok()?)),
        // Windows writes bitmasks into some boolean slots; the crate keeps those as integers.
        (0x0d, 4) => match i32::from_le_bytes(bytes.try_into().ok()?) {
            0 => BinXmlValue::BoolType(false),
            1 => BinXmlValue::BoolType(true),
            raw => BinXmlValue::Int32Type(raw),
        },
        (0x0e, _) => BinXmlValue::BinaryType(bytes),
        (0x0f, 16) => BinXmlValue::GuidType(bytes.try_into().ok()?),
        (0x10 | 0x14, 4) => BinXmlValue::HexInt32Type(u32::from_le_bytes(bytes.try_into().ok()?)),
        (0x10 | 0x15, 8) => BinXmlValue::HexInt64Type(u64::from_le_bytes(bytes.try_into().ok()?)),
        (0x11, 8) => {
            BinXmlValue::FileTimeType(FileTime(u64::from_le_bytes(bytes.try_into().ok()?)))
        }
        (0x12, 16) => BinXmlValue::SysTimeType(SysTime::from_bytes(bytes.try_into().ok()?)),
        (0x13, _) => return sid_text(bytes).map(FieldValue::Str),
        // Floats, arrays and nested BinXML render in ways this module does not reproduce.
        _ => return None,
    };
    field_value(&value)
}

/// Formats `n` as `0x` and lower-case hex digits without leading zeros, as `format!("0x{n:x}")`
/// does.
fn hex_text(n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    let mut text = String::with_capacity(2 + digits as usize);
    text.push_str("0x");
    for digit in (0..digits).rev() {
        text.push(char::from(HEX[((n >> (digit * 4)) & 0x0f) as usize]));
    }
    text
}

/// Formats a GUID as Windows does: lower-case hex in braces, the first three groups stored
/// little-endian.
fn guid_text(bytes: &[u8; 16]) -> String {
    const ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(38);
    text.push('{');
    for (position, &index) in ORDER.iter().enumerate() {
        if matches!(position, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(bytes[index] >> 4)]));
        text.push(char::from(HEX[usize::from(bytes[index] & 0x0f)]));
    }
    text.push('}');
    text
}

/// Decodes an ANSI string that is plain ASCII, which reads the same in every code page the
/// parser may use; NUL bytes are dropped, as the `evtx` crate drops them.
fn ascii_text(bytes: &[u8]) -> Option<String> {
    let text: Vec<u8> = bytes.iter().copied().filter(|&byte| byte != 0).collect();
    if !text.is_ascii() {
        return None;
    }
    String::from_utf8(text).ok()
}

/// Formats a stored SID as `S-R-A-S1-...-Sn`; `None` unless the bytes hold exactly the
/// sub-authorities their count names.
fn sid_text(bytes: &[u8]) -> Option<String> {
    use std::fmt::Write as _;

    let [revision, count, a0, a1, a2, a3, a4, a5, ref subs @ ..] = *bytes else {
        return None;
    };
    if subs.len() != usize::from(count) * 4 {
        return None;
    }
    let authority = u64::from_be_bytes([0, 0, a0, a1, a2, a3, a4, a5]);
    let mut text = format!("S-{revision}-{authority}");
    for sub in subs.chunks_exact(4) {
        write!(text, "-{}", u32::from_le_bytes(sub.try_into().ok()?)).ok()?;
    }
    Some(text)
}

fn signed(n: i64) -> FieldValue {
    match u64::try_from(n) {
        Ok(n) => FieldValue::Unsigned(n),
        Err(_) => FieldValue::Signed(n),
    }
}

/// Decodes UTF-16LE; `None` for an odd length or unpaired surrogates.
fn utf16_to_string(bytes: &[u8]) -> Option<String> {
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    // Most event text is ASCII, which needs no surrogate handling: copy the low bytes, and
    // start over as UTF-16 at the first unit that is not ASCII.
    let mut ascii = Vec::with_capacity(bytes.len() / 2);
    for unit in bytes.chunks_exact(2) {
        if unit[1] != 0 || unit[0] >= 0x80 {
            break;
        }
        ascii.push(unit[0]);
    }
    if ascii.len() * 2 == bytes.len() {
        return String::from_utf8(ascii).ok();
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|unit| u16::from_le_bytes([unit[0], unit[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

/// [`utf16_to_string`] of the code units before the first NUL unit, where the `evtx` crate
/// stops a sized string.
fn utf16_until_nul(bytes: &[u8]) -> Option<String> {
    match bytes.chunks_exact(2).position(|unit| *unit == [0, 0]) {
        Some(end) => utf16_to_string(&bytes[..end * 2]),
        None => utf16_to_string(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evtx::Utf16LeSlice;

    #[test]
    fn hex_text_matches_format() {
        for n in [
            0,
            1,
            0xf,
            0x10,
            0x8020_0000_0000_0000,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            assert_eq!(hex_text(n), format!("0x{n:x}"));
        }
    }

    #[test]
    fn file_time_ms_matches_its_text() {
        // 1601, before 1970, the epoch, a recorded time, 9999, and the first year too large.
        let times = [
            0,
            116_444_735_999_999_999,
            116_444_736_000_000_000,
            132_000_000_123_456_789,
            LAST_FILE_TIME,
        ];
        for file_time in times {
            let text = BinXmlValue::FileTimeType(FileTime(file_time)).to_string();
            assert_eq!(
                file_time_ms(file_time),
                crate::map::parse_utc_time(&text),
                "{file_time} rendered as {text}"
            );
        }
        assert_eq!(file_time_ms(LAST_FILE_TIME + 1), None);
    }

    #[test]
    fn utf16_text_with_and_without_ascii() {
        let encode =
            |text: &str| -> Vec<u8> { text.encode_utf16().flat_map(u16::to_le_bytes).collect() };
        for text in [
            "",
            "C:\\Windows\\system32",
            "Zürich",
            "x\u{1F600}y",
            "\u{7f}\u{80}",
        ] {
            assert_eq!(utf16_to_string(&encode(text)).as_deref(), Some(text));
        }
        assert_eq!(utf16_to_string(&[0x41]), None);
        // An unpaired surrogate is not text.
        assert_eq!(utf16_to_string(&[0x41, 0, 0x00, 0xd8]), None);
    }

    /// Writes a template definition the way a chunk stores one, names inline.
    struct Definition(Vec<u8>);

    impl Definition {
        fn new() -> Definition {
            // Next-definition offset, GUID, data size (patched in `finish`), fragment header.
            let mut bytes = vec![0; 24];
            bytes.extend_from_slice(&[0x0f, 1, 1, 0]);
            Definition(bytes)
        }

        fn name(&mut self, name: &str) {
            let offset = u32::try_from(self.0.len() + 4).unwrap();
            self.0.extend_from_slice(&offset.to_le_bytes());
            self.0.extend_from_slice(&[0; 6]);
            let units: Vec<u16> = name.encode_utf16().collect();
            self.0
                .extend_from_slice(&u16::try_from(units.len()).unwrap().to_le_bytes());
            for unit in units {
                self.0.extend_from_slice(&unit.to_le_bytes());
            }
            self.0.extend_from_slice(&[0, 0]);
        }

        fn open(&mut self, name: &str, dependency: u16, attributes: bool) {
            self.0.push(if attributes { 0x41 } else { 0x01 });
            self.0.extend_from_slice(&dependency.to_le_bytes());
            self.0.extend_from_slice(&[0; 4]);
            self.name(name);
            if attributes {
                self.0.extend_from_slice(&[0; 4]);
            }
        }

        fn text(&mut self, text: &str) {
            self.0.extend_from_slice(&[0x05, 0x01]);
            let units: Vec<u16> = text.encode_utf16().collect();
            self.0
                .extend_from_slice(&u16::try_from(units.len()).unwrap().to_le_bytes());
            for unit in units {
                self.0.extend_from_slice(&unit.to_le_bytes());
            }
        }

        fn slot(&mut self, index: u16, optional: bool) {
            self.0.push(if optional { 0x0e } else { 0x0d });
            self.0.extend_from_slice(&index.to_le_bytes());
            self.0.push(0x01);
        }

        /// `<Data Name="name">slot</Data>`.
        fn data(&mut self, name: &str, index: u16) {
            self.open("Data", 0xffff, true);
            self.0.push(0x06);
            self.name("Name");
            self.text(name);
            self.0.push(0x02);
            self.slot(index, true);
            self.0.push(0x04);
        }

        fn finish(mut self) -> Vec<u8> {
            self.0.push(0x00);
            let size = u32::try_from(self.0.len() - 24).unwrap();
            self.0[20..24].copy_from_slice(&size.to_le_bytes());
            self.0
        }
    }

    /// `<Event><System><EventID>{0}</EventID><Channel>C</Channel></System><EventData>`
    /// `<Data Name="Image">{1}</Data><Data Name="Extra">{2}</Data>` (dependent on slot 3)
    /// `</EventData></Event>`.
    fn definition(extra_dependency: u16) -> Vec<u8> {
        let mut d = Definition::new();
        d.open("Event", 0xffff, false);
        d.0.push(0x02);
        d.open("System", 0xffff, false);
        d.0.push(0x02);
        d.open("EventID", 0xffff, false);
        d.0.push(0x02);
        d.slot(0, false);
        d.0.push(0x04);
        d.open("Channel", 0xffff, false);
        d.0.push(0x02);
        d.text("C");
        d.0.push(0x04);
        d.0.push(0x04);
        d.open("EventData", 0xffff, false);
        d.0.push(0x02);
        d.data("Image", 1);
        d.open("Data", extra_dependency, true);
        d.0.push(0x06);
        d.name("Name");
        d.text("Extra");
        d.0.push(0x03);
        d.0.push(0x04);
        d.0.push(0x04);
        d.finish()
    }

    fn utf16(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn definition_fills_record() {
        let chunk = definition(3);
        let plan = Plan::compile(&chunk, 0).expect("plan compiles");
        let image = utf16("C:\\a.exe\0");
        let values = [
            BinXmlValue::UInt16Type(4688),
            BinXmlValue::StringType(Utf16LeSlice::new(&image, 8)),
            BinXmlValue::NullType,
            BinXmlValue::UInt8Type(1),
        ];
        let record = plan
            .build(&values.as_slice(), 7, 11)
            .expect("record builds");
        assert_eq!(record.event_id, 4688);
        assert_eq!(record.channel, "C");
        assert_eq!(record.record_id, 7);
        assert_eq!(record.time_ms, 11);
        assert_eq!(record.peek_str("Image"), Some("C:\\a.exe"));
        assert_eq!(
            record.fields.get("Extra"),
            Some(&FieldValue::Str(String::new()))
        );
    }

    #[test]
    fn null_dependency_leaves_element_out() {
        let chunk = definition(2);
        let plan = Plan::compile(&chunk, 0).unwrap();
        let values = [
            BinXmlValue::UInt16Type(1),
            BinXmlValue::NullType,
            BinXmlValue::NullType,
        ];
        let record = plan.build(&values.as_slice(), 1, 0).unwrap();
        assert_eq!(record.fields.get("Extra"), None);
        assert_eq!(
            record.fields.get("Image"),
            Some(&FieldValue::Str(String::new()))
        );
    }

    #[test]
    fn empty_data_value_is_empty_string() {
        let plan = Plan::compile(&definition(3), 0).unwrap();
        let empty_values = [
            ("NullType", BinXmlValue::NullType),
            ("empty binary", BinXmlValue::BinaryType(&[])),
        ];
        for (kind, value) in empty_values {
            let values = [BinXmlValue::UInt16Type(1), value];
            let record = plan.build(&values.as_slice(), 1, 0).unwrap();
            assert_eq!(
                record.fields.get("Image"),
                Some(&FieldValue::Str(String::new())),
                "{kind}"
            );
        }

        let values = [BinXmlValue::UInt16Type(1)];
        let record = plan.build(&values.as_slice(), 1, 0).unwrap();
        assert_eq!(
            record.fields.get("Image"),
            Some(&FieldValue::Str(String::new())),
            "value missing from the instance"
        );
    }

    #[test]
    fn empty_user_data_value_is_null() {
        // `<Event><System><EventID>{0}</EventID></System>`
        // `<UserData><Wrapper><Field>{1}</Field></Wrapper></UserData></Event>`.
        let mut d = Definition::new();
        d.open("Event", 0xffff, false);
        d.0.push(0x02);
        d.open("System", 0xffff, false);
        d.0.push(0x02);
        d.open("EventID", 0xffff, false);
        d.0.push(0x02);
        d.slot(0, false);
        d.0.push(0x04);
        d.0.push(0x04);
        d.open("UserData", 0xffff, false);
        d.0.push(0x02);
        d.open("Wrapper", 0xffff, false);
        d.0.push(0x02);
        d.open("Field", 0xffff, false);
        d.0.push(0x02);
        d.slot(1, true);
        d.0.push(0x04);
        d.0.push(0x04);
        d.0.push(0x04);
        d.0.push(0x04);
        let plan = Plan::compile(&d.finish(), 0).expect("plan compiles");

        let values = [BinXmlValue::UInt16Type(1), BinXmlValue::NullType];
        let record = plan.build(&values.as_slice(), 1, 0).unwrap();
        assert!(record.is_user_data);
        assert_eq!(record.fields.get("Field"), Some(&FieldValue::Null));
    }

    #[test]
    fn literal_text_ends_at_nul() {
        let mut d = Definition::new();
        d.open("Event", 0xffff, false);
        d.0.push(0x02);
        d.open("System", 0xffff, false);
        d.0.push(0x02);
        d.open("EventID", 0xffff, false);
        d.0.push(0x02);
        d.slot(0, false);
        d.0.push(0x04);
        d.open("Channel", 0xffff, false);
        d.0.push(0x02);
        d.text("Security\0Extra");
        d.0.push(0x04);
        d.0.push(0x04);
        d.open("EventData", 0xffff, false);
        d.0.push(0x02);
        d.data("Image\0\u{1}Name", 1);
        d.0.push(0x04);
        d.0.push(0x04);
        let plan = Plan::compile(&d.finish(), 0).expect("plan compiles");

        let values = [BinXmlValue::UInt16Type(1), BinXmlValue::UInt8Type(2)];
        let record = plan.build(&values.as_slice(), 1, 0).unwrap();
        assert_eq!(record.channel, "Security");
        assert_eq!(record.fields.get("Image"), Some(&FieldValue::Unsigned(2)));
    }

    #[test]
    fn element_name_ends_at_nul() {
        let mut d = Definition::new();
        d.open("Event", 0xffff, false);
        d.0.push(0x02);
        d.open("System", 0xffff, false);
        d.0.push(0x02);
        d.open("EventID", 0xffff, false);
        d.0.push(0x02);
        d.slot(0, false);
        d.0.push(0x04);
        d.open("Computer\0\u{1}\u{2}", 0xffff, false);
        d.0.push(0x02);
        d.text("host");
        d.0.push(0x04);
        d.0.push(0x04);
        d.0.push(0x04);
        let plan = Plan::compile(&d.finish(), 0).expect("plan compiles");

        let values = [BinXmlValue::UInt16Type(1)];
        let record = plan.build(&values.as_slice(), 1, 0).unwrap();
        assert_eq!(record.computer, "host");
    }

    #[test]
    fn empty_attribute_value_left_out() {
        // `<Event><System><EventID>{0}</EventID><Security UserID="{1}"/></System></Event>`.
        let mut d = Definition::new();
        d.open("Event", 0xffff, false);
        d.0.push(0x02);
        d.open("System", 0xffff, false);
        d.0.push(0x02);
        d.open("EventID", 0xffff, false);
        d.0.push(0x02);
        d.slot(0, false);
        d.0.push(0x04);
        d.open("Security", 0xffff, true);
        d.0.push(0x06);
        d.name("UserID");
        d.slot(1, true);
        d.0.push(0x03);
        d.0.push(0x04);
        d.0.push(0x04);
        let plan = Plan::compile(&d.finish(), 0).expect("plan compiles");

        let empty = utf16("");
        let values = [
            BinXmlValue::UInt16Type(1),
            BinXmlValue::StringType(Utf16LeSlice::new(&empty, 0)),
        ];
        let record = plan.build(&values.as_slice(), 1, 0).unwrap();
        assert_eq!(record.user_sid, None);
    }

    #[test]
    fn unsupported_values_fall_back() {
        let plan = Plan::compile(&definition(3), 0).unwrap();
        let values = [
            BinXmlValue::UInt16Type(1),
            BinXmlValue::Real64Type(0.5),
            BinXmlValue::NullType,
        ];
        assert!(plan.build(&values.as_slice(), 1, 0).is_none());
        let values = [BinXmlValue::Real64Type(1.0)];
        assert!(
            plan.build(&values.as_slice(), 1, 0).is_none(),
            "EventID must be a number"
        );
    }

    #[test]
    fn damaged_definition_rejected() {
        let chunk = definition(3);
        for cut in [10, 30, chunk.len() / 2, chunk.len() - 2] {
            assert!(Plan::compile(&chunk[..cut], 0).is_none(), "cut at {cut}");
        }
        assert!(Plan::compile(&chunk, u32::MAX).is_none());
        let mut wrong_root = chunk.clone();
        // The first name's first UTF-16 unit: `Event` becomes `Xvent`.
        let first_char = 28 + 7 + 4 + 6 + 2;
        wrong_root[first_char] = b'X';
        assert!(Plan::compile(&wrong_root, 0).is_none());
    }
}
