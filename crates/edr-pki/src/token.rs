//! Enrollment tokens: one-time credentials that let a new sensor obtain a certificate.
//!
//! Token text format, version 1 (all hex is lower case; parsing accepts upper case and
//! ignores surrounding whitespace):
//!
//! ```text
//! edr1.<id: 16 hex>.<secret: 64 hex>.<ca-sha256: 64 hex>.<check: 8 hex>
//! ```
//!
//! - `id` names the token in `edr-collector token list|revoke` and is not secret.
//! - `secret` is 32 bytes from the operating system's CSPRNG. The Collector stores only its
//!   SHA-256; a plain hash suffices because the secret has 256 bits of entropy.
//! - `ca-sha256` is the SHA-256 of the Collector CA certificate (DER). A new sensor accepts the
//!   Collector's TLS chain only if it contains a CA certificate with this digest.
//! - `check` is the first 4 bytes of the SHA-256 of everything before the last dot, so a
//!   truncated or mistyped token is reported as such instead of failing later as a wrong secret.
//!
//! The alphabet is `[0-9a-f.]` plus the `edr` prefix: nothing that a shell, a terminal or a
//! chat client rewrites. A future format changes the `edr1` prefix.
//!
//! Expiry, maximum uses and labels ([`TokenPolicy`]) are stored by the Collector next to the
//! secret's hash and are not part of the token text.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::CaFingerprint;

/// Version prefix of the token text.
pub const TOKEN_PREFIX: &str = "edr1";

const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;
const CHECK_LEN: usize = 4;

/// Errors from generating, parsing or checking an enrollment token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token text is empty.
    #[error(
        "the enrollment token is empty: pass the token printed by `edr-collector token create`"
    )]
    Empty,
    /// The token does not start with a known version prefix.
    #[error(
        "the enrollment token \"{preview}\" is not an EDR token (expected it to start with \"{TOKEN_PREFIX}.\"): copy the whole token printed by `edr-collector token create`"
    )]
    UnknownFormat { preview: String },
    /// The token has the wrong number of dot-separated fields or a field of the wrong length.
    #[error(
        "the enrollment token \"{preview}\" is malformed ({reason}): copy the whole token printed by `edr-collector token create`"
    )]
    Malformed { preview: String, reason: String },
    /// The check digits do not match, so the token was truncated or changed.
    #[error(
        "the enrollment token \"{preview}\" fails its checksum, so it was truncated or changed while being copied: copy it again"
    )]
    Checksum { preview: String },
    /// The token has expired.
    #[error(
        "enrollment token {id} has expired (expired at {expired_at}): create a new one with `edr-collector token create`"
    )]
    Expired { id: String, expired_at: String },
    /// The token has been used as often as allowed.
    #[error(
        "enrollment token {id} has already been used {uses} of {max_uses} times: create a new one with `edr-collector token create`"
    )]
    Exhausted {
        id: String,
        uses: u32,
        max_uses: u32,
    },
    /// A label is not of the form `key=value`.
    #[error(
        "invalid token label \"{label}\": write labels as key=value with a non-empty key of letters, digits, '-', '_' or '.'"
    )]
    InvalidLabel { label: String },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A parsed or freshly generated enrollment token. The secret is held in memory only.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
    ca_sha256: CaFingerprint,
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("id", &self.id())
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

impl EnrollmentToken {
    /// Generates a token with a random id and secret for the CA with `ca_sha256`.
    pub fn generate(ca_sha256: CaFingerprint) -> Result<Self, TokenError> {
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        crate::random_bytes(&mut id).map_err(|_| TokenError::Random)?;
        crate::random_bytes(&mut secret).map_err(|_| TokenError::Random)?;
        Ok(Self {
            id,
            secret,
            ca_sha256,
        })
    }

    /// Parses token text in the format described in the module documentation.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        let lower = text.to_ascii_lowercase();
        let preview = preview(&lower);
        let Some(rest) = lower
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
        else {
            return Err(TokenError::UnknownFormat { preview });
        };
        let fields: Vec<&str> = rest.split('.').collect();
        let [id, secret, ca, check] = fields.as_slice() else {
            return Err(TokenError::Malformed {
                preview,
                reason: format!(
                    "expected 5 dot-separated fields, found {}",
                    fields.len() + 1
                ),
            });
        };

        let malformed = |reason: String| TokenError::Malformed {
            preview: preview.clone(),
            reason,
        };
        let check = decode_hex::<CHECK_LEN>(check, "check").map_err(malformed)?;
        let body_len = lower.len() - CHECK_LEN * 2 - 1;
        if check != check_digits(&lower[..body_len]) {
            return Err(TokenError::Checksum { preview });
        }
        Ok(Self {
            id: decode_hex::<ID_LEN>(id, "id").map_err(malformed)?,
            secret: decode_hex::<SECRET_LEN>(secret, "secret").map_err(malformed)?,
            ca_sha256: CaFingerprint(decode_hex::<32>(ca, "CA SHA-256").map_err(malformed)?),
        })
    }

    /// The token text to hand to an operator.
    pub fn to_text(&self) -> String {
        let body = format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            hex::encode(self.id),
            hex::encode(self.secret),
            self.ca_sha256.to_hex()
        );
        let check = hex::encode(check_digits(&body));
        format!("{body}.{check}")
    }

    /// Public token id, 16 hex characters.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// SHA-256 of the CA certificate the sensor must pin.
    pub fn ca_sha256(&self) -> CaFingerprint {
        self.ca_sha256
    }

    /// SHA-256 of the secret; the only form in which the Collector stores it.
    pub fn secret_hash(&self) -> [u8; 32] {
        crate::sha256(&self.secret)
    }

    /// Returns whether this token's secret hashes to `stored_hash`, in constant time.
    pub fn secret_matches(&self, stored_hash: &[u8]) -> bool {
        let ours = self.secret_hash();
        if stored_hash.len() != ours.len() {
            return false;
        }
        ours.iter()
            .zip(stored_hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The Collector-side rules for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    pub expires_at: OffsetDateTime,
    pub max_uses: u32,
    pub labels: BTreeMap<String, String>,
}

impl TokenPolicy {
    /// Checks that a token with this policy and `uses` past uses may be used once more at `now`.
    pub fn check_usable(&self, id: &str, uses: u32, now: OffsetDateTime) -> Result<(), TokenError> {
        if now >= self.expires_at {
            return Err(TokenError::Expired {
                id: id.to_string(),
                expired_at: format_time(self.expires_at),
            });
        }
        if uses >= self.max_uses {
            return Err(TokenError::Exhausted {
                id: id.to_string(),
                uses,
                max_uses: self.max_uses,
            });
        }
        Ok(())
    }
}

/// Parses a `key=value` label.
pub fn parse_label(label: &str) -> Result<(String, String), TokenError> {
    let invalid = || TokenError::InvalidLabel {
        label: label.to_string(),
    };
    let (key, value) = label.split_once('=').ok_or_else(invalid)?;
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !key_ok || value.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok((key.to_string(), value.to_string()))
}

/// Formats a time as RFC 3339 in UTC, for messages and storage.
pub fn format_time(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

fn check_digits(body: &str) -> [u8; CHECK_LEN] {
    let digest = crate::sha256(body.as_bytes());
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&digest[..CHECK_LEN]);
    out
}

fn decode_hex<const N: usize>(field: &str, name: &str) -> Result<[u8; N], String> {
    if field.len() != N * 2 {
        return Err(format!(
            "the {name} field has {} characters, expected {}",
            field.len(),
            N * 2
        ));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(field, &mut out)
        .map_err(|_| format!("the {name} field is not hexadecimal"))?;
    Ok(out)
}

/// A bounded preview of token text for messages: the prefix and id, never the secret.
fn preview(text: &str) -> String {
    let shown: String = text.chars().take(21).collect();
    if text.chars().count() > 21 {
        format!("{shown}...")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn token() -> EnrollmentToken {
        EnrollmentToken::generate(CaFingerprint([7u8; 32])).unwrap()
    }

    #[test]
    fn text_round_trips() {
        let token = token();
        let text = token.to_text();
        assert!(text.starts_with("edr1."));
        assert!(text.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
        assert_eq!(EnrollmentToken::parse(&text).unwrap(), token);
        assert_eq!(
            EnrollmentToken::parse(&format!("  {}\n", text.to_uppercase())).unwrap(),
            token
        );
    }

    #[test]
    fn truncated_token_fails_checksum_or_shape() {
        let text = token().to_text();
        let err = EnrollmentToken::parse(&text[..text.len() - 1]).unwrap_err();
        assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
        let mut changed = text.clone().into_bytes();
        changed[30] = if changed[30] == b'a' { b'b' } else { b'a' };
        let err = EnrollmentToken::parse(std::str::from_utf8(&changed).unwrap()).unwrap_err();
        assert!(matches!(err, TokenError::Checksum { .. }), "{err}");
    }

    #[test]
    fn garbage_is_unknown_format() {
        for text in ["hello", "edr2.aa", "Bearer xyz"] {
            let err = EnrollmentToken::parse(text).unwrap_err();
            assert!(
                matches!(err, TokenError::UnknownFormat { .. }),
                "{text}: {err}"
            );
            assert!(err.to_string().contains("token create"), "{err}");
        }
        assert!(matches!(
            EnrollmentToken::parse(" "),
            Err(TokenError::Empty)
        ));
    }

    #[test]
    fn messages_never_show_secret() {
        let token = token();
        let text = token.to_text();
        let broken = text.replace(&token.ca_sha256().to_hex(), "zz");
        let err = EnrollmentToken::parse(&broken).unwrap_err().to_string();
        assert!(!err.contains(&hex::encode(token.secret)), "{err}");
        assert!(!format!("{token:?}").contains(&hex::encode(token.secret)));
    }

    #[test]
    fn secret_matches_only_its_hash() {
        let token = token();
        assert!(token.secret_matches(&token.secret_hash()));
        assert!(!token.secret_matches(&[0u8; 32]));
        assert!(!token.secret_matches(&[]));
    }

    #[test]
    fn policy_rejects_expired_and_exhausted() {
        let now = OffsetDateTime::now_utc();
        let policy = TokenPolicy {
            expires_at: now + Duration::hours(1),
            max_uses: 1,
            labels: BTreeMap::new(),
        };
        assert!(policy.check_usable("ab", 0, now).is_ok());
        let err = policy.check_usable("ab", 1, now).unwrap_err();
        assert!(matches!(err, TokenError::Exhausted { .. }), "{err}");
        let err = policy
            .check_usable("ab", 0, now + Duration::hours(2))
            .unwrap_err();
        assert!(
            err.to_string().contains("has expired (expired at "),
            "{err}"
        );
    }

    #[test]
    fn labels_parse_key_value() {
        assert_eq!(
            parse_label("site=berlin-1").unwrap(),
            ("site".to_string(), "berlin-1".to_string())
        );
        assert_eq!(parse_label("empty=").unwrap().1, "");
        for bad in ["novalue", "=x", "a b=c"] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
    }
}
