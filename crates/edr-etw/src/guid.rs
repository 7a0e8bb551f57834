//! GUIDs as ETW stores them: `Data1`, `Data2` and `Data3` little-endian, `Data4` as bytes.

use std::fmt;
use std::str::FromStr;

/// A GUID, held as the 128-bit number that its canonical text spells, so that
/// `Guid::from_u128(0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716)` reads like the registry form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(u128);

impl Guid {
    /// The all-zero GUID, used where an event carries no provider or activity id.
    pub const NIL: Guid = Guid(0);

    /// Builds a GUID from the number its canonical text spells.
    pub const fn from_u128(value: u128) -> Self {
        Guid(value)
    }

    /// Returns the number that the canonical text spells.
    pub const fn to_u128(self) -> u128 {
        self.0
    }

    /// Reads the in-memory `GUID` layout (`Data1..3` little-endian, `Data4` big-endian bytes).
    pub fn from_le_bytes(bytes: [u8; 16]) -> Self {
        let data1 = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let data2 = u16::from_le_bytes([bytes[4], bytes[5]]);
        let data3 = u16::from_le_bytes([bytes[6], bytes[7]]);
        let mut data4 = [0u8; 8];
        data4.copy_from_slice(&bytes[8..16]);
        Guid(
            (u128::from(data1) << 96)
                | (u128::from(data2) << 80)
                | (u128::from(data3) << 64)
                | u128::from(u64::from_be_bytes(data4)),
        )
    }

    /// Returns `true` for the all-zero GUID.
    pub fn is_nil(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// A string that is not a GUID in `8-4-4-4-12` hexadecimal form, with or without braces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid GUID {0:?}: expected the form 22fb2cd6-0e7b-422b-a0c7-2fad1fd0e716")]
pub struct ParseGuidError(String);

impl FromStr for Guid {
    type Err = ParseGuidError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim().trim_start_matches('{').trim_end_matches('}');
        let groups: Vec<&str> = trimmed.split('-').collect();
        let lengths = [8, 4, 4, 4, 12];
        let well_formed = groups.len() == 5
            && groups
                .iter()
                .zip(lengths)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Err(ParseGuidError(text.to_owned()));
        }
        let hex: String = groups.concat();
        u128::from_str_radix(&hex, 16)
            .map(Guid)
            .map_err(|_| ParseGuidError(text.to_owned()))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips_through_text_and_bytes() {
        let text = "22fb2cd6-0e7b-422b-a0c7-2fad1fd0e716";
        let guid: Guid = text.parse().unwrap();
        assert_eq!(
            guid,
            Guid::from_u128(0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716)
        );
        assert_eq!(guid.to_string(), text);
        let bytes = [
            0xd6, 0x2c, 0xfb, 0x22, 0x7b, 0x0e, 0x2b, 0x42, 0xa0, 0xc7, 0x2f, 0xad, 0x1f, 0xd0,
            0xe7, 0x16,
        ];
        assert_eq!(Guid::from_le_bytes(bytes), guid);
        assert_eq!(
            "{22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716}"
                .parse::<Guid>()
                .unwrap(),
            guid
        );
        assert!("22fb2cd6-0e7b-422b-a0c7".parse::<Guid>().is_err());
    }
}
