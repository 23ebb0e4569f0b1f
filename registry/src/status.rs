//! Per-issuer status lists in the style of the W3C Bitstring Status List: 2 bits per status
//! index (00 valid, 01 suspended, 10 revoked), index 0 in the two most significant bits of the
//! first byte.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum CredentialStatus {
    Valid = 0,
    Suspended = 1,
    Revoked = 2,
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::Valid => "valid",
            CredentialStatus::Suspended => "suspended",
            CredentialStatus::Revoked => "revoked",
        }
    }

    pub fn as_bits(self) -> u8 {
        self as u8
    }

    /// 0, 1, 2; the unused value 3 is refused.
    pub fn from_bits(b: u8) -> Option<Self> {
        match b {
            0 => Some(CredentialStatus::Valid),
            1 => Some(CredentialStatus::Suspended),
            2 => Some(CredentialStatus::Revoked),
            _ => None,
        }
    }
}

impl fmt::Display for CredentialStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "valid" => Ok(CredentialStatus::Valid),
            "suspended" => Ok(CredentialStatus::Suspended),
            "revoked" => Ok(CredentialStatus::Revoked),
            _ => Err(Error::Encoding(format!(
                "unknown status {s:?} (valid, suspended, revoked)"
            ))),
        }
    }
}

/// A growable 2-bit-per-index status list. Trailing zero bytes carry no information and are
/// trimmed, so two lists with the same statuses have the same bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusList {
    bits: Vec<u8>,
}

impl StatusList {
    pub fn new() -> Self {
        Self::default()
    }

    /// The status at `index`; beyond the end is `Valid`.
    pub fn get(&self, index: u32) -> CredentialStatus {
        let byte = (index / 4) as usize;
        let shift = 6 - 2 * (index % 4);
        match self.bits.get(byte) {
            Some(b) => CredentialStatus::from_bits((b >> shift) & 0b11)
                .unwrap_or(CredentialStatus::Revoked),
            None => CredentialStatus::Valid,
        }
    }

    pub fn set(&mut self, index: u32, s: CredentialStatus) {
        let byte = (index / 4) as usize;
        let shift = 6 - 2 * (index % 4);
        if byte >= self.bits.len() {
            if s == CredentialStatus::Valid {
                return;
            }
            self.bits.resize(byte + 1, 0);
        }
        let b = &mut self.bits[byte];
        *b = (*b & !(0b11 << shift)) | (s.as_bits() << shift);
        self.trim();
    }

    fn trim(&mut self) {
        while self.bits.last() == Some(&0) {
            self.bits.pop();
        }
    }

    /// The status at `index` from the one byte of the list that holds it (`None`: past the
    /// end, so valid). Lets a store read one byte instead of the whole list.
    pub fn status_in_byte(byte: Option<u8>, index: u32) -> Result<CredentialStatus> {
        let Some(b) = byte else {
            return Ok(CredentialStatus::Valid);
        };
        let shift = 6 - 2 * (index % 4);
        CredentialStatus::from_bits((b >> shift) & 0b11).ok_or_else(|| {
            Error::Encoding(format!(
                "status list: invalid status value at index {index}"
            ))
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Parse a list; the unused 2-bit value 3 is refused. Trailing zero bytes are accepted.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        for (i, byte) in b.iter().enumerate() {
            for k in 0..4 {
                if (byte >> (6 - 2 * k)) & 0b11 == 0b11 {
                    return Err(Error::Encoding(format!(
                        "status list: invalid status value at index {}",
                        i * 4 + k
                    )));
                }
            }
        }
        let mut l = Self { bits: b.to_vec() };
        l.trim();
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get() {
        let mut l = StatusList::new();
        assert_eq!(l.get(1_000_000), CredentialStatus::Valid);
        l.set(5, CredentialStatus::Revoked);
        l.set(6, CredentialStatus::Suspended);
        assert_eq!(l.get(5), CredentialStatus::Revoked);
        assert_eq!(l.get(6), CredentialStatus::Suspended);
        assert_eq!(l.get(4), CredentialStatus::Valid);
        assert_eq!(l.get(7), CredentialStatus::Valid);
        assert_eq!(l.as_bytes(), &[0, 0b0010_0100]);
        l.set(5, CredentialStatus::Valid);
        l.set(6, CredentialStatus::Valid);
        assert!(l.as_bytes().is_empty());
        l.set(u32::MAX, CredentialStatus::Valid);
        assert!(l.as_bytes().is_empty());
        l.set(0, CredentialStatus::Suspended);
        assert_eq!(l.as_bytes(), &[0b0100_0000]);
    }

    #[test]
    fn bytes_roundtrip() {
        let mut l = StatusList::new();
        for i in (0..100).step_by(7) {
            l.set(i, CredentialStatus::Revoked);
        }
        assert_eq!(StatusList::from_bytes(l.as_bytes()).unwrap(), l);
        assert!(StatusList::from_bytes(&[0b0000_0011]).is_err());
    }

    #[test]
    fn one_byte_reads_agree_with_the_whole_list() {
        let mut l = StatusList::new();
        l.set(5, CredentialStatus::Revoked);
        l.set(6, CredentialStatus::Suspended);
        for i in 0..40u32 {
            let pos = (i / 4) as usize;
            let byte = l.as_bytes().get(pos).copied();
            assert_eq!(
                StatusList::status_in_byte(byte, i).unwrap(),
                l.get(i),
                "{i}"
            );
        }
        assert!(StatusList::status_in_byte(Some(0b1100_0000), 0).is_err());
        assert_eq!(StatusList::from_bytes(&[0, 0]).unwrap(), StatusList::new());
    }

    #[test]
    fn display_parse() {
        for s in [
            CredentialStatus::Valid,
            CredentialStatus::Suspended,
            CredentialStatus::Revoked,
        ] {
            assert_eq!(s.to_string().parse::<CredentialStatus>().unwrap(), s);
        }
        assert!("gone".parse::<CredentialStatus>().is_err());
    }
}
