//! Field reads over an event payload, aware of pointer width and of how strictly a layout
//! must fit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edr_etw::bytes::ByteReader;
use edr_etw::{FileTime, PointerSize};

/// The payload is shorter than the layout, or a string lacks its terminator where the layout
/// must be proven to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayoutMismatch;

/// Cursor over a payload.
///
/// In strict mode (used when the event version is newer than every known layout) a string must
/// end with its NUL terminator inside the payload, so that a payload whose shape differs from
/// the layout is rejected rather than misread.
#[derive(Debug)]
pub(crate) struct Payload<'a> {
    reader: ByteReader<'a>,
    pointer: usize,
    strict: bool,
}

type Field<T> = Result<T, LayoutMismatch>;

impl<'a> Payload<'a> {
    pub(crate) fn new(data: &'a [u8], pointer_size: PointerSize, strict: bool) -> Self {
        Payload {
            reader: ByteReader::new(data),
            pointer: pointer_size.bytes(),
            strict,
        }
    }

    pub(crate) fn u8(&mut self) -> Field<u8> {
        self.reader.u8().ok_or(LayoutMismatch)
    }

    pub(crate) fn u16(&mut self) -> Field<u16> {
        self.reader.u16().ok_or(LayoutMismatch)
    }

    pub(crate) fn u32(&mut self) -> Field<u32> {
        self.reader.u32().ok_or(LayoutMismatch)
    }

    pub(crate) fn i32(&mut self) -> Field<i32> {
        self.reader.i32().ok_or(LayoutMismatch)
    }

    pub(crate) fn u64(&mut self) -> Field<u64> {
        self.reader.u64().ok_or(LayoutMismatch)
    }

    pub(crate) fn i64(&mut self) -> Field<i64> {
        self.reader.i64().ok_or(LayoutMismatch)
    }

    pub(crate) fn filetime(&mut self) -> Field<FileTime> {
        self.i64().map(FileTime)
    }

    /// Reads a pointer-sized value.
    pub(crate) fn pointer(&mut self) -> Field<u64> {
        self.reader.pointer(self.pointer).ok_or(LayoutMismatch)
    }

    /// Reads a port stored in network byte order.
    pub(crate) fn port(&mut self) -> Field<u16> {
        self.u16().map(u16::from_be)
    }

    pub(crate) fn ipv4(&mut self) -> Field<IpAddr> {
        let bytes = self.reader.bytes(4).ok_or(LayoutMismatch)?;
        Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        )))
    }

    pub(crate) fn ipv6(&mut self) -> Field<IpAddr> {
        let bytes = self.reader.bytes(16).ok_or(LayoutMismatch)?;
        let mut octets = [0u8; 16];
        octets.copy_from_slice(bytes);
        Ok(IpAddr::V6(Ipv6Addr::from(octets)))
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Field<&'a [u8]> {
        self.reader.bytes(len).ok_or(LayoutMismatch)
    }

    pub(crate) fn skip(&mut self, len: usize) -> Field<()> {
        self.reader.skip(len).ok_or(LayoutMismatch)
    }

    /// Reads a NUL-terminated UTF-16 string. An empty remainder reads as an empty string outside
    /// strict mode, as writers omit trailing empty strings.
    pub(crate) fn utf16(&mut self) -> Field<String> {
        if self.strict && !self.has_terminator(2) {
            return Err(LayoutMismatch);
        }
        if self.reader.is_empty() && !self.strict {
            return Ok(String::new());
        }
        self.reader.utf16z().ok_or(LayoutMismatch)
    }

    /// Reads a NUL-terminated 8-bit string.
    pub(crate) fn ansi(&mut self) -> Field<String> {
        if self.strict && !self.has_terminator(1) {
            return Err(LayoutMismatch);
        }
        if self.reader.is_empty() && !self.strict {
            return Ok(String::new());
        }
        self.reader.ansiz().ok_or(LayoutMismatch)
    }

    /// Reads the kernel's `SID` field: a `TOKEN_USER` (two pointers) followed by the SID, or a
    /// single zero `u32` when there is none.
    pub(crate) fn kernel_sid(&mut self) -> Field<Option<Vec<u8>>> {
        let rest = self.reader.remaining();
        if rest.len() >= 4 && rest[..4] == [0, 0, 0, 0] {
            self.skip(4)?;
            return Ok(None);
        }
        self.skip(2 * self.pointer)?;
        let sub_authorities = *self.reader.remaining().get(1).ok_or(LayoutMismatch)?;
        let sid = self.bytes(8 + 4 * usize::from(sub_authorities))?;
        Ok(Some(sid.to_vec()))
    }

    fn has_terminator(&self, width: usize) -> bool {
        self.reader
            .remaining()
            .chunks_exact(width)
            .any(|unit| unit.iter().all(|&b| b == 0))
    }
}

/// Formats a binary SID as `S-1-5-18`.
pub fn format_sid(sid: &[u8]) -> Option<String> {
    let revision = *sid.first()?;
    let count = usize::from(*sid.get(1)?);
    let authority = sid
        .get(2..8)?
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let mut text = format!("S-{revision}-{authority}");
    for i in 0..count {
        let at = 8 + 4 * i;
        let bytes = sid.get(at..at + 4)?;
        let sub = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        text.push_str(&format!("-{sub}"));
    }
    Some(text)
}
