//! Xpress "plain LZ77" decompression ([MS-XCA] section 2.4), the codec of ETL buffers written
//! in compressed mode (`EVENT_TRACE_COMPRESSED_MODE`, set by the relogger).
//!
//! Format: a stream of 32-bit little-endian flag words, each describing the next 32 items from
//! the most significant bit down. A clear bit is one literal byte; a set bit is a match whose
//! 16-bit token contains `offset - 1` in its upper 13 bits and a length code in its lower 3 bits,
//! with longer lengths continued in a shared nibble, then a byte, then a 16-bit and a 32-bit word.
//!
//! Limits: the output never grows beyond the caller's `expected_len`, a match may not reach
//! before the start of the output, and every loop step consumes input, so hostile input ends in
//! an [`XpressError`] after at most `input.len()` steps.

/// Errors decompressing a buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XpressError {
    /// A match refers to bytes before the start of the output.
    #[error(
        "invalid LZ77 match at input byte {input_offset}: offset {match_offset} reaches before the start of {output_len} decompressed bytes"
    )]
    OffsetBeforeStart {
        /// Input position of the match token.
        input_offset: usize,
        /// Distance back from the current output position.
        match_offset: usize,
        /// Output produced so far.
        output_len: usize,
    },
    /// The decompressed data would exceed the size the buffer header declares.
    #[error("LZ77 output exceeds the declared {expected_len} bytes at input byte {input_offset}")]
    OutputOverflow {
        /// Size the buffer header declares.
        expected_len: usize,
        /// Input position where the overflow happened.
        input_offset: usize,
    },
    /// The input ended before the declared output size was produced.
    #[error("LZ77 input ended after {output_len} of the declared {expected_len} bytes")]
    ShortOutput {
        /// Output produced.
        output_len: usize,
        /// Size the buffer header declares.
        expected_len: usize,
    },
    /// A match length field is smaller than its encoding allows.
    #[error("invalid LZ77 match length encoding at input byte {input_offset}")]
    InvalidLength {
        /// Input position of the length field.
        input_offset: usize,
    },
}

/// Decompresses `input`, appending exactly `expected_len` bytes to `output`. Matches cannot
/// reach into bytes that were in `output` before the call.
pub fn decompress_plain_lz77(
    input: &[u8],
    output: &mut Vec<u8>,
    expected_len: usize,
) -> Result<(), XpressError> {
    let base = output.len();
    output.reserve(expected_len);

    let mut position = 0usize;
    let mut flags = 0u32;
    let mut flag_count = 0u32;
    let mut shared_nibble_at: Option<usize> = None;

    loop {
        if flag_count == 0 {
            let Some(word) = read_u32(input, position) else {
                break;
            };
            flags = word;
            position += 4;
            flag_count = 32;
        }
        flag_count -= 1;

        // Literal byte.
        if flags & (1 << flag_count) == 0 {
            let Some(&byte) = input.get(position) else {
                break;
            };
            if output.len() - base >= expected_len {
                return Err(XpressError::OutputOverflow {
                    expected_len,
                    input_offset: position,
                });
            }
            output.push(byte);
            position += 1;
            continue;
        }

        // Match: a missing token is the normal end of the stream.
        let token_offset = position;
        let Some(token) = read_u16(input, position) else {
            break;
        };
        position += 2;
        let match_offset = usize::from(token >> 3) + 1;
        let mut length = usize::from(token & 7);

        if length == 7 {
            // The extra length nibble is shared between two consecutive long matches.
            length = match shared_nibble_at.take() {
                None => {
                    let byte = *input.get(position).ok_or(XpressError::InvalidLength {
                        input_offset: position,
                    })?;
                    shared_nibble_at = Some(position);
                    position += 1;
                    usize::from(byte & 0x0f)
                }
                Some(at) => usize::from(input.get(at).copied().unwrap_or(0) >> 4),
            };
            if length == 15 {
                let byte = *input.get(position).ok_or(XpressError::InvalidLength {
                    input_offset: position,
                })?;
                position += 1;
                length = usize::from(byte);
                if length == 255 {
                    let word = read_u16(input, position).ok_or(XpressError::InvalidLength {
                        input_offset: position,
                    })?;
                    position += 2;
                    length = usize::from(word);
                    if length == 0 {
                        let long = read_u32(input, position).ok_or(XpressError::InvalidLength {
                            input_offset: position,
                        })?;
                        position += 4;
                        length = long as usize;
                    }
                    length = length
                        .checked_sub(15 + 7)
                        .ok_or(XpressError::InvalidLength {
                            input_offset: position,
                        })?;
                }
                length += 15;
            }
            length += 7;
        }
        length += 3;

        let produced = output.len() - base;
        if match_offset > produced {
            return Err(XpressError::OffsetBeforeStart {
                input_offset: token_offset,
                match_offset,
                output_len: produced,
            });
        }
        if produced.saturating_add(length) > expected_len {
            return Err(XpressError::OutputOverflow {
                expected_len,
                input_offset: token_offset,
            });
        }
        let start = output.len() - match_offset;
        if match_offset >= length {
            output.extend_from_within(start..start + length);
        } else {
            // Overlapping copy: the match repeats bytes it is producing.
            for i in 0..length {
                let byte = output[start + i];
                output.push(byte);
            }
        }
    }

    if output.len() - base != expected_len {
        return Err(XpressError::ShortOutput {
            output_len: output.len() - base,
            expected_len,
        });
    }
    Ok(())
}

fn read_u16(input: &[u8], at: usize) -> Option<u16> {
    let bytes = input.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn read_u32(input: &[u8], at: usize) -> Option<u32> {
    let bytes = input.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compresses with literals and matches chosen by hand, following the encoder rules of
    /// MS-XCA, to test the decoder without a Windows compressor.
    struct Encoder {
        out: Vec<u8>,
        flag_at: usize,
        flag_bits: u32,
        flag_count: u32,
        nibble_at: Option<usize>,
    }

    impl Encoder {
        fn new() -> Self {
            Encoder {
                out: vec![0; 4],
                flag_at: 0,
                flag_bits: 0,
                flag_count: 0,
                nibble_at: None,
            }
        }
        fn flag(&mut self, bit: bool) {
            if self.flag_count == 32 {
                self.out[self.flag_at..self.flag_at + 4]
                    .copy_from_slice(&self.flag_bits.to_le_bytes());
                self.flag_at = self.out.len();
                self.out.extend_from_slice(&[0; 4]);
                self.flag_bits = 0;
                self.flag_count = 0;
            }
            self.flag_bits = (self.flag_bits << 1) | u32::from(bit);
            self.flag_count += 1;
        }
        fn literal(&mut self, b: u8) {
            self.flag(false);
            self.out.push(b);
        }
        fn matched(&mut self, offset: usize, length: usize) {
            self.flag(true);
            let l = length - 3;
            let code = l.min(7) as u16;
            self.out
                .extend_from_slice(&((((offset - 1) as u16) << 3) | code).to_le_bytes());
            if l >= 7 {
                let rest = l - 7;
                let nib = rest.min(15) as u8;
                match self.nibble_at.take() {
                    None => {
                        self.nibble_at = Some(self.out.len());
                        self.out.push(nib);
                    }
                    Some(at) => self.out[at] |= nib << 4,
                }
                if rest >= 15 {
                    let rest2 = rest - 15;
                    if rest2 < 255 {
                        self.out.push(rest2 as u8);
                    } else {
                        self.out.push(255);
                        self.out
                            .extend_from_slice(&((rest2 + 15 + 7) as u16).to_le_bytes());
                    }
                }
            }
        }
        fn finish(mut self) -> Vec<u8> {
            // Pad the last flag word with set bits, as the end marker.
            let pad = 32 - self.flag_count;
            self.flag_bits = (self.flag_bits << pad) | ((1u32 << pad) - 1);
            self.out[self.flag_at..self.flag_at + 4].copy_from_slice(&self.flag_bits.to_le_bytes());
            self.out
        }
    }

    #[test]
    fn literals_and_matches_decompress() {
        let mut enc = Encoder::new();
        for &b in b"abcabc" {
            enc.literal(b);
        }
        enc.matched(3, 9); // "abcabcabc"
        enc.matched(1, 40); // long run of 'c', uses the nibble and the extra byte
        enc.matched(2, 300); // uses the 16-bit length
        let compressed = enc.finish();
        let mut expected = b"abcabcabcabcabc".to_vec();
        expected.extend(std::iter::repeat_n(b'c', 40));
        for _ in 0..300 {
            let b = expected[expected.len() - 2];
            expected.push(b);
        }
        let mut out = Vec::new();
        decompress_plain_lz77(&compressed, &mut out, expected.len()).unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn match_before_start_is_rejected() {
        let mut enc = Encoder::new();
        enc.literal(b'a');
        enc.matched(5, 3);
        let compressed = enc.finish();
        let mut out = Vec::new();
        let err = decompress_plain_lz77(&compressed, &mut out, 4).unwrap_err();
        assert!(
            matches!(err, XpressError::OffsetBeforeStart { .. }),
            "{err}"
        );
    }

    #[test]
    fn output_larger_than_declared_is_rejected() {
        let mut enc = Encoder::new();
        enc.literal(b'a');
        enc.matched(1, 100);
        let compressed = enc.finish();
        let mut out = Vec::new();
        let err = decompress_plain_lz77(&compressed, &mut out, 50).unwrap_err();
        assert!(matches!(err, XpressError::OutputOverflow { .. }), "{err}");
        assert!(out.len() <= 50);
    }

    #[test]
    fn short_output_is_rejected() {
        let mut out = Vec::new();
        let err = decompress_plain_lz77(&[0, 0, 0, 0, b'x'], &mut out, 2).unwrap_err();
        assert!(
            matches!(err, XpressError::ShortOutput { output_len: 1, .. }),
            "{err}"
        );
    }
}
