//! Bounds-checked little-endian reads over untrusted bytes.
//!
//! Every read returns `None` past the end of the slice, so a parser built on [`ByteReader`]
//! cannot index out of bounds whatever the input.

use crate::guid::Guid;

/// A forward cursor over a byte slice.
#[derive(Debug, Clone)]
pub struct ByteReader<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> ByteReader<'a> {
    /// Starts a cursor at the first byte of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        ByteReader { data, position: 0 }
    }

    /// Byte offset of the next read from the start of the slice.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> &'a [u8] {
        self.data.get(self.position..).unwrap_or(&[])
    }

    /// Returns `true` once every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.position >= self.data.len()
    }

    /// Reads `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(len)?;
        let slice = self.data.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    /// Skips `len` bytes.
    pub fn skip(&mut self, len: usize) -> Option<()> {
        self.bytes(len).map(|_| ())
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let slice = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Some(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|b| b[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// Reads a little-endian `i32`.
    pub fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_le_bytes)
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Reads a little-endian `i64`.
    pub fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    /// Reads a pointer-sized unsigned value of `pointer_size` bytes (4 or 8).
    pub fn pointer(&mut self, pointer_size: usize) -> Option<u64> {
        if pointer_size == 4 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }

    /// Reads a GUID in its in-memory layout.
    pub fn guid(&mut self) -> Option<Guid> {
        self.array().map(Guid::from_le_bytes)
    }

    /// Reads a NUL-terminated UTF-16LE string and consumes its terminator. A string that runs
    /// to the end of the slice without a terminator is returned whole, as ETW writers do
    /// truncate the last string of a payload. Unpaired surrogates become U+FFFD.
    pub fn utf16z(&mut self) -> Option<String> {
        let rest = self.remaining();
        if rest.len() < 2 {
            return None;
        }
        let units = rest.len() / 2;
        let mut end = units;
        for i in 0..units {
            if rest[2 * i] == 0 && rest[2 * i + 1] == 0 {
                end = i;
                break;
            }
        }
        let consumed = if end < units { 2 * end + 2 } else { 2 * units };
        let text = decode_utf16le(&rest[..2 * end]);
        self.position += consumed;
        Some(text)
    }

    /// Reads a NUL-terminated 8-bit string (ANSI code page, decoded as Latin-1 where it is not
    /// UTF-8) and consumes its terminator; an unterminated string runs to the end of the slice.
    pub fn ansiz(&mut self) -> Option<String> {
        let rest = self.remaining();
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == 0);
        let (text, consumed) = match end {
            Some(e) => (&rest[..e], e + 1),
            None => (rest, rest.len()),
        };
        self.position += consumed;
        Some(decode_ansi(text))
    }
}

/// Decodes UTF-16LE bytes (an odd trailing byte is ignored).
pub fn decode_utf16le(bytes: &[u8]) -> String {
    // Fast path for ASCII, the common case of paths and command lines.
    let pairs = bytes.chunks_exact(2);
    if pairs.clone().all(|pair| pair[0] < 0x80 && pair[1] == 0) {
        let ascii: Vec<u8> = pairs.map(|pair| pair[0]).collect();
        if let Ok(text) = String::from_utf8(ascii) {
            return text;
        }
    }
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]));
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// Decodes an 8-bit string: UTF-8 when valid, otherwise byte for byte as Latin-1.
pub fn decode_ansi(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}
