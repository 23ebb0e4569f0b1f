//! The wire contract shared by the card and the reader: the AID, instruction bytes,
//! data-object identifiers, BER-TLV tags and status words. `no_std`; the reader depends on
//! this module and nothing else in the applet.

use alloc::vec::Vec;

/// Proprietary application identifier (ISO 7816-5 category F: not registered).
pub const AID: &[u8] = &[0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01];

/// Applet version reported in the FCI (major, minor).
pub const APPLET_VERSION: [u8; 2] = [1, 0];

/// Storage budget of the card, as on a 64 KB chip (bytes of credential records and fixed
/// objects). A write that would exceed it is refused with 6A84.
pub const STORAGE_BUDGET: usize = 64 * 1024;

/// Number of credential slots.
pub const CREDENTIAL_SLOTS: u8 = 16;

/// Citizen PIN: exactly this many ASCII digits.
pub const PIN_LEN: usize = 6;
/// Tries before the PIN blocks.
pub const PIN_TRIES: u8 = 3;
/// Card id: printable ASCII, 1..=32 bytes.
pub const CARD_ID_MAX: usize = 32;
/// INTERNAL AUTHENTICATE challenge length bounds.
pub const CHALLENGE_MIN: usize = 16;
pub const CHALLENGE_MAX: usize = 64;
/// GET CHALLENGE: length of the card's nonce for EXTERNAL AUTHENTICATE.
pub const TERMINAL_CHALLENGE_LEN: usize = 16;
/// EXTERNAL AUTHENTICATE data: time (8 bytes BE unix seconds) || r||s signature (64).
pub const EXTERNAL_AUTH_DATA_LEN: usize = 8 + 64;
/// How far (seconds) a terminal's authenticated time may lag behind the card's latest time
/// seen before EXTERNAL AUTHENTICATE is refused.
pub const CLOCK_SKEW: u64 = 300;
/// Entries kept in the access log; the oldest is dropped beyond this.
pub const ACCESS_LOG_MAX: usize = 64;

/// Class byte bits (ISO 7816-4 section 5.4.1).
pub mod cla {
    pub const PLAIN: u8 = 0x00;
    /// Command chaining: "not the last command of a chain".
    pub const CHAINING: u8 = 0x10;
}

/// Instruction bytes (ISO 7816-4 section 5.4.2 and the table in DESIGN.md).
pub mod ins {
    pub const SELECT: u8 = 0xA4;
    pub const GET_DATA: u8 = 0xCA;
    pub const PUT_DATA: u8 = 0xDA;
    pub const GENERATE_KEY: u8 = 0x47;
    pub const INTERNAL_AUTHENTICATE: u8 = 0x88;
    pub const VERIFY: u8 = 0x20;
    pub const CHANGE_REFERENCE_DATA: u8 = 0x24;
    pub const RESET_RETRY_COUNTER: u8 = 0x2C;
    pub const ACTIVATE: u8 = 0x44;
    pub const GET_RESPONSE: u8 = 0xC0;
    /// GET CHALLENGE (P1P2 0000, Le 16): a fresh nonce for EXTERNAL AUTHENTICATE.
    pub const GET_CHALLENGE: u8 = 0x84;
    /// PERFORM SECURITY OPERATION (ISO 7816-8); only VERIFY CERTIFICATE (P1 00, P2 BE).
    pub const PSO: u8 = 0x2A;
    /// EXTERNAL AUTHENTICATE (P1P2 0000): time (8) || terminal signature (64).
    pub const EXTERNAL_AUTHENTICATE: u8 = 0x82;
    /// MANAGE SECURITY ENVIRONMENT (P1P2 C1A4: set authentication template for PACE,
    /// BSI TR-03110-3 B.1.1 / ICAO Doc 9303-11 4.4). See [`crate::sm`].
    pub const MSE: u8 = 0x22;
    /// GENERAL AUTHENTICATE (P1P2 0000), the four PACE steps (TR-03110-3 B.1.2).
    pub const GENERAL_AUTHENTICATE: u8 = 0x86;
}

/// PERFORM SECURITY OPERATION: VERIFY CERTIFICATE (ISO 7816-8 section 5.3.7), the data field
/// being a terminal certificate (see [`crate::terminal`]).
pub mod pso {
    pub const VERIFY_CERTIFICATE_P1: u8 = 0x00;
    pub const VERIFY_CERTIFICATE_P2: u8 = 0xBE;
}

/// Terminal roles (the `role` of a terminal certificate). The card decides on the access
/// bits only; the role is recorded in the access log.
pub mod role {
    pub const CLINIC: u8 = 1;
    pub const ISSUING_OFFICE: u8 = 2;
    pub const EDUCATION_OFFICE: u8 = 3;

    /// A human name for a role, if it is one of the defined ones.
    pub const fn name(r: u8) -> Option<&'static str> {
        match r {
            CLINIC => Some("clinic"),
            ISSUING_OFFICE => Some("issuing office"),
            EDUCATION_OFFICE => Some("education office"),
            _ => None,
        }
    }
}

/// Access bits of a terminal certificate (and of card info 89 / log entry 83).
pub mod access {
    use super::kind;

    pub const READ_IDENTITY: u8 = 0x01;
    pub const READ_EMERGENCY: u8 = 0x02;
    pub const READ_HEALTH: u8 = 0x04;
    pub const READ_EDUCATION: u8 = 0x08;
    pub const WRITE_CREDENTIALS: u8 = 0x10;
    pub const PIN_MANAGEMENT: u8 = 0x20;

    /// Every defined bit with its name, lowest bit first.
    pub const NAMES: [(u8, &str); 6] = [
        (READ_IDENTITY, "read identity"),
        (READ_EMERGENCY, "read emergency data"),
        (READ_HEALTH, "read health"),
        (READ_EDUCATION, "read education"),
        (WRITE_CREDENTIALS, "write credentials"),
        (PIN_MANAGEMENT, "PIN management"),
    ];

    /// The read right that covers a credential of kind `k` (0 for an unknown kind).
    pub const fn read_right(k: u8) -> u8 {
        match k {
            kind::IDENTITY => READ_IDENTITY,
            kind::EMERGENCY => READ_EMERGENCY,
            kind::HEALTH => READ_HEALTH,
            kind::EDUCATION => READ_EDUCATION,
            _ => 0,
        }
    }
}

/// SELECT P1/P2 (ISO 7816-4 section 11.2.2): select by DF name, first occurrence, return FCI.
pub const SELECT_BY_NAME: u8 = 0x04;
pub const SELECT_FCI: u8 = 0x00;

/// GENERATE ASYMMETRIC KEY PAIR P1 (ISO 7816-8 section 5.1): generate, or read the public key.
pub mod genkey {
    pub const GENERATE: u8 = 0x80;
    pub const READ_PUBLIC: u8 = 0x81;
}

/// RESET RETRY COUNTER P1 = 02: new reference data only (ISO 7816-4 section 11.5.10).
pub const RESET_WITH_NEW_PIN: u8 = 0x02;

/// Reference data qualifiers (VERIFY / CHANGE / RESET P2).
pub mod reference {
    /// The citizen's PIN (specific reference, ISO 7816-4 table 65).
    pub const CITIZEN_PIN: u8 = 0x81;
}

/// Data objects addressed by P1-P2 of GET DATA / PUT DATA.
pub mod object {
    pub const CARD_INFO: u16 = 0x0101;
    pub const CARD_PUBLIC_KEY: u16 = 0x0102;
    pub const DIRECTORY: u16 = 0x0103;
    /// The access log (GET only, citizen PIN only): log entries (tag 62), oldest first.
    pub const ACCESS_LOG: u16 = 0x0104;
    /// PUT during personalisation only.
    pub const CARD_ID: u16 = 0x0110;
    /// PUT during personalisation only; GET by anyone (65-byte SEC1 point).
    pub const AUTHORITY_KEY: u16 = 0x0111;
    /// PUT during personalisation only, never readable: the card access number (CAN, 6 ASCII
    /// digits) printed on the card, the PACE password of [`crate::sm`].
    pub const CAN: u16 = 0x0113;
    /// Credential slot `n` is `CREDENTIAL_BASE | n`, n < CREDENTIAL_SLOTS.
    pub const CREDENTIAL_BASE: u16 = 0x0200;

    /// The object id of credential slot `slot`.
    pub const fn credential(slot: u8) -> u16 {
        CREDENTIAL_BASE | slot as u16
    }
}

/// BER-TLV tags used in responses and PUT DATA bodies.
pub mod tag {
    pub const FCI: u16 = 0x6F;
    pub const DF_NAME: u16 = 0x84;
    pub const FCI_PROPRIETARY: u16 = 0xA5;
    // Inside FCI proprietary data and the card-info object.
    pub const VERSION: u16 = 0x80;
    pub const CARD_ID: u16 = 0x81;
    pub const LIFE_CYCLE: u16 = 0x82;
    pub const FREE_STORAGE: u16 = 0x83;
    pub const TOTAL_STORAGE: u16 = 0x84;
    pub const PIN_TRIES_LEFT: u16 = 0x85;
    pub const CREDENTIAL_COUNT: u16 = 0x86;
    pub const HAS_CARD_KEY: u16 = 0x87;
    /// Latest authenticated time the card has seen (8 bytes BE unix seconds; card info, FCI).
    pub const LATEST_TIME: u16 = 0x88;
    /// The access bits this session holds from a terminal (1 byte; card info only).
    pub const RIGHTS: u16 = 0x89;
    /// Whether the citizen's PIN is verified in this session (1 byte 0/1; card info only).
    pub const PIN_VERIFIED: u16 = 0x8A;
    /// Public key template (ISO 7816-8), with the EC point in 0x86.
    pub const PUBLIC_KEY_TEMPLATE: u16 = 0x7F49;
    pub const EC_POINT: u16 = 0x86;
    /// One directory entry: slot (0x80), kind (0x81), record length (0x82, 2 bytes).
    pub const DIRECTORY_ENTRY: u16 = 0x61;
    pub const SLOT: u16 = 0x80;
    pub const KIND: u16 = 0x81;
    pub const LENGTH: u16 = 0x82;
    /// PUT DATA credential body: kind (0x80, 1 byte) then the opaque record (0x81).
    pub const PUT_KIND: u16 = 0x80;
    pub const PUT_RECORD: u16 = 0x81;
    /// One access-log entry: 80 terminal id, 81 role (1), 82 time (8 BE), 83 what was read (1).
    pub const LOG_ENTRY: u16 = 0x62;
    pub const LOG_TERMINAL: u16 = 0x80;
    pub const LOG_ROLE: u16 = 0x81;
    pub const LOG_TIME: u16 = 0x82;
    pub const LOG_READ: u16 = 0x83;
}

/// Credential kinds as stored in the directory.
pub mod kind {
    pub const IDENTITY: u8 = 1;
    pub const HEALTH: u8 = 2;
    pub const EDUCATION: u8 = 3;
    /// The health bureau's separately signed emergency subset (blood type, allergies,
    /// emergency contact), by convention in slot 3.
    pub const EMERGENCY: u8 = 4;

    pub const fn is_valid(k: u8) -> bool {
        matches!(k, IDENTITY | HEALTH | EDUCATION | EMERGENCY)
    }
}

/// Life-cycle status byte (ISO 7816-4 section 5.3.3.2, table 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LifeCycle {
    /// Initialisation state: the issuing office personalises the card.
    Personalisation = 0x03,
    /// Operational state (activated): issued to the citizen.
    Issued = 0x05,
}

impl LifeCycle {
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x03 => Some(Self::Personalisation),
            0x05 => Some(Self::Issued),
            _ => None,
        }
    }
}

/// The message the card signs in INTERNAL AUTHENTICATE. Domain-separated and bound to the
/// card id, so the card is never a signing oracle for arbitrary data.
pub fn internal_auth_message(card_id: &[u8], challenge: &[u8]) -> Vec<u8> {
    const DOMAIN: &[u8] = b"CIVIC-CARD/INTERNAL-AUTHENTICATE/v1";
    let mut m = Vec::with_capacity(DOMAIN.len() + 1 + card_id.len() + challenge.len());
    m.extend_from_slice(DOMAIN);
    m.push(card_id.len() as u8);
    m.extend_from_slice(card_id);
    m.extend_from_slice(challenge);
    m
}

/// The message a terminal signs in EXTERNAL AUTHENTICATE: domain-separated, bound to the
/// card id, the card's challenge (from GET CHALLENGE) and the terminal's time.
pub fn external_auth_message(card_id: &[u8], challenge: &[u8], time: u64) -> Vec<u8> {
    const DOMAIN: &[u8] = b"CIVIC-CARD/EXTERNAL-AUTHENTICATE/v1";
    let mut m = Vec::with_capacity(DOMAIN.len() + 1 + card_id.len() + challenge.len() + 8);
    m.extend_from_slice(DOMAIN);
    m.push(card_id.len() as u8);
    m.extend_from_slice(card_id);
    m.extend_from_slice(challenge);
    m.extend_from_slice(&time.to_be_bytes());
    m
}

/// Status words (ISO 7816-4 section 5.6). Errors of handlers are values of this type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// 61xx: xx more bytes available with GET RESPONSE (00 = 256 or more).
    MoreData(u8),
    /// 63Cx: verification failed, x tries left.
    TriesLeft(u8),
    /// 6581: memory failure (the state could not be persisted).
    MemoryFailure,
    WrongLength,
    /// 6883: last command of the chain expected.
    LastCommandExpected,
    /// 6884: command chaining not supported (for this command).
    ChainingNotSupported,
    SecurityNotSatisfied,
    /// 6983: authentication method blocked.
    Blocked,
    /// 6987: expected secure-messaging data objects missing (a plain command on an issued
    /// card, ISO 7816-4 table 6).
    SmMissing,
    /// 6988: incorrect secure-messaging data objects (bad MAC, wrong counter, bad padding);
    /// the session is closed.
    SmIncorrect,
    ConditionsNotSatisfied,
    WrongData,
    NotFound,
    NotEnoughMemory,
    IncorrectP1P2,
    ReferenceNotFound,
    InsNotSupported,
    ClaNotSupported,
    Unknown,
}

impl Status {
    pub const fn sw(self) -> u16 {
        match self {
            Status::Ok => 0x9000,
            Status::MoreData(n) => 0x6100 | n as u16,
            Status::TriesLeft(n) => 0x63C0 | (n as u16 & 0x0F),
            Status::MemoryFailure => 0x6581,
            Status::WrongLength => 0x6700,
            Status::LastCommandExpected => 0x6883,
            Status::ChainingNotSupported => 0x6884,
            Status::SecurityNotSatisfied => 0x6982,
            Status::Blocked => 0x6983,
            Status::SmMissing => 0x6987,
            Status::SmIncorrect => 0x6988,
            Status::ConditionsNotSatisfied => 0x6985,
            Status::WrongData => 0x6A80,
            Status::NotFound => 0x6A82,
            Status::NotEnoughMemory => 0x6A84,
            Status::IncorrectP1P2 => 0x6A86,
            Status::ReferenceNotFound => 0x6A88,
            Status::InsNotSupported => 0x6D00,
            Status::ClaNotSupported => 0x6E00,
            Status::Unknown => 0x6F00,
        }
    }

    pub const fn from_sw(sw: u16) -> Self {
        match sw {
            0x9000 => Status::Ok,
            0x6581 => Status::MemoryFailure,
            0x6700 => Status::WrongLength,
            0x6883 => Status::LastCommandExpected,
            0x6884 => Status::ChainingNotSupported,
            0x6982 => Status::SecurityNotSatisfied,
            0x6983 => Status::Blocked,
            0x6987 => Status::SmMissing,
            0x6988 => Status::SmIncorrect,
            0x6985 => Status::ConditionsNotSatisfied,
            0x6A80 => Status::WrongData,
            0x6A82 => Status::NotFound,
            0x6A84 => Status::NotEnoughMemory,
            0x6A86 => Status::IncorrectP1P2,
            0x6A88 => Status::ReferenceNotFound,
            0x6D00 => Status::InsNotSupported,
            0x6E00 => Status::ClaNotSupported,
            _ if sw & 0xFF00 == 0x6100 => Status::MoreData(sw as u8),
            _ if sw & 0xFFF0 == 0x63C0 => Status::TriesLeft(sw as u8 & 0x0F),
            _ => Status::Unknown,
        }
    }

    /// What the status word means, in words a clinic or office clerk can act on.
    pub const fn describe(self) -> &'static str {
        match self {
            Status::Ok => "success",
            Status::MoreData(_) => "more data available",
            Status::TriesLeft(_) => "wrong PIN",
            Status::MemoryFailure => {
                "memory failure: the card could not read or store its data (it keeps its last \
                 good state); have an issuing office check or replace the card"
            }
            Status::WrongLength => "wrong length",
            Status::LastCommandExpected => "command chain interrupted",
            Status::ChainingNotSupported => "command chaining not supported here",
            Status::SecurityNotSatisfied => "access right missing",
            Status::Blocked => "PIN blocked",
            Status::SmMissing => "the card needs a secure channel (secure messaging) for this",
            Status::SmIncorrect => "secure channel broken (bad MAC or sequence): session closed",
            Status::ConditionsNotSatisfied => "not allowed in the card's current state",
            Status::WrongData => "malformed data",
            Status::NotFound => "no such object on the card",
            Status::NotEnoughMemory => "card storage full",
            Status::IncorrectP1P2 => "incorrect parameters P1-P2",
            Status::ReferenceNotFound => "reference data not set",
            Status::InsNotSupported => "instruction not supported",
            Status::ClaNotSupported => "class not supported",
            Status::Unknown => "unknown error",
        }
    }
}

/// Minimal BER-TLV (ISO 7816-4 section 5.2 / ISO 8825-1): one- or two-byte tags, definite
/// lengths up to 0xFFFF.
pub mod tlv {
    use alloc::vec::Vec;

    /// Append one TLV.
    pub fn push(out: &mut Vec<u8>, tag: u16, value: &[u8]) {
        if tag > 0xFF {
            out.extend_from_slice(&tag.to_be_bytes());
        } else {
            out.push(tag as u8);
        }
        let len = value.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len <= 0xFF {
            out.extend_from_slice(&[0x81, len as u8]);
        } else {
            // Callers never build values above 64 KB; clamp defensively rather than panic.
            let len = len.min(0xFFFF) as u16;
            out.push(0x82);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(value);
    }

    /// Malformed TLV input.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Malformed;

    /// Iterate over the TLVs at one level of `data`.
    pub fn iter(data: &[u8]) -> Iter<'_> {
        Iter { rest: data }
    }

    #[derive(Debug)]
    pub struct Iter<'a> {
        rest: &'a [u8],
    }

    impl<'a> Iterator for Iter<'a> {
        type Item = Result<(u16, &'a [u8]), Malformed>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.rest.is_empty() {
                return None;
            }
            let r = parse_one(self.rest);
            match r {
                Ok((tag, value, rest)) => {
                    self.rest = rest;
                    Some(Ok((tag, value)))
                }
                Err(e) => {
                    self.rest = &[];
                    Some(Err(e))
                }
            }
        }
    }

    fn parse_one(d: &[u8]) -> Result<(u16, &[u8], &[u8]), Malformed> {
        let (&t0, mut rest) = d.split_first().ok_or(Malformed)?;
        let tag = if t0 & 0x1F == 0x1F {
            let (&t1, r) = rest.split_first().ok_or(Malformed)?;
            rest = r;
            u16::from_be_bytes([t0, t1])
        } else {
            t0 as u16
        };
        let (&l0, r) = rest.split_first().ok_or(Malformed)?;
        rest = r;
        let len = match l0 {
            0x00..=0x7F => l0 as usize,
            0x81 => {
                let (&l, r) = rest.split_first().ok_or(Malformed)?;
                rest = r;
                l as usize
            }
            0x82 => {
                if rest.len() < 2 {
                    return Err(Malformed);
                }
                let l = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                rest = &rest[2..];
                l
            }
            _ => return Err(Malformed),
        };
        if rest.len() < len {
            return Err(Malformed);
        }
        let (value, rest) = rest.split_at(len);
        Ok((tag, value, rest))
    }

    /// The value of the first TLV with `tag` at this level.
    pub fn find(data: &[u8], tag: u16) -> Result<Option<&[u8]>, Malformed> {
        for item in iter(data) {
            let (t, v) = item?;
            if t == tag {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_words_round_trip() {
        for s in [
            Status::Ok,
            Status::MoreData(0),
            Status::MoreData(0x10),
            Status::TriesLeft(2),
            Status::WrongLength,
            Status::SecurityNotSatisfied,
            Status::Blocked,
            Status::SmMissing,
            Status::SmIncorrect,
            Status::WrongData,
            Status::NotFound,
            Status::NotEnoughMemory,
            Status::IncorrectP1P2,
            Status::InsNotSupported,
            Status::ClaNotSupported,
        ] {
            assert_eq!(Status::from_sw(s.sw()), s);
        }
    }

    #[test]
    fn tlv_round_trip_with_long_lengths() {
        let mut out = Vec::new();
        tlv::push(&mut out, 0x80, &[1]);
        tlv::push(&mut out, 0x7F49, &[7u8; 200]);
        tlv::push(&mut out, 0x81, &[9u8; 1000]);
        let items: Vec<_> = tlv::iter(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].0, 0x7F49);
        assert_eq!(items[1].1.len(), 200);
        assert_eq!(items[2].1.len(), 1000);
    }

    #[test]
    fn tlv_truncated_is_malformed_not_panic() {
        assert_eq!(tlv::find(&[0x81, 0x05, 1, 2], 0x81), Err(tlv::Malformed));
        assert_eq!(tlv::find(&[0x7F], 0x81), Err(tlv::Malformed));
        assert_eq!(tlv::find(&[0x81, 0x83, 0, 0, 0], 0x81), Err(tlv::Malformed));
    }
}
