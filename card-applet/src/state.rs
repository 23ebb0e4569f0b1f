//! The card's persistent state and its versioned TLV serialisation.
//!
//! Format (version 2): a sequence of BER-TLVs (protocol::tlv), in this order, each at most
//! once except credentials and log entries:
//!
//! | tag | value |
//! |---|---|
//! | C0 | format version (1 byte, = 2), always first |
//! | C1 | life-cycle byte |
//! | C2 | card id |
//! | C3 | authority key (65-byte SEC1 point) |
//! | C5 | card private key scalar (32 bytes) |
//! | C6 | PIN salt (16) \|\| SHA-256(salt \|\| PIN) (32) |
//! | C7 | PIN tries left (1 byte) |
//! | C8 | latest authenticated time seen (8 bytes BE unix seconds), always present |
//! | C9 | card access number, the PACE password printed on the card (6 ASCII digits), optional |
//! | CA | digests of terminal certificates verified before, most recent first: n x 32 bytes, 1 <= n <= [`VERIFIED_CERTS_MAX`], optional |
//! | E0 | credential: { 80 slot, 81 kind, 82 record }, slot order |
//! | E1 | access-log entry: { 80 terminal id, 81 role, 82 time (8), 83 what }, oldest first, at most [`ACCESS_LOG_MAX`] |
//! | CF | SHA-256 of every preceding byte, always last (detects truncation and bit rot) |
//!
//! Version 1 (issue 2) is still read: it had C4 (the office secret, now dropped) and no C8 or
//! E1; the next commit writes version 2.
//!
//! The serialised length is what counts against [`protocol::STORAGE_BUDGET`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::protocol::{self, kind, tlv, LifeCycle, ACCESS_LOG_MAX, CARD_ID_MAX, CREDENTIAL_SLOTS};
use crate::terminal::TERMINAL_ID_MAX;

pub const FORMAT_VERSION: u8 = 2;
/// The issue-2 format, migrated on load.
const FORMAT_VERSION_1: u8 = 1;

mod t {
    pub const VERSION: u16 = 0xC0;
    pub const LIFE_CYCLE: u16 = 0xC1;
    pub const CARD_ID: u16 = 0xC2;
    pub const AUTHORITY_KEY: u16 = 0xC3;
    /// Version 1 only: the office secret (read and dropped).
    pub const OFFICE_SECRET_V1: u16 = 0xC4;
    pub const CARD_KEY: u16 = 0xC5;
    pub const PIN: u16 = 0xC6;
    pub const PIN_TRIES: u16 = 0xC7;
    pub const LATEST_TIME: u16 = 0xC8;
    pub const CAN: u16 = 0xC9;
    pub const VERIFIED_CERTS: u16 = 0xCA;
    pub const CREDENTIAL: u16 = 0xE0;
    pub const LOG_ENTRY: u16 = 0xE1;
    pub const CHECKSUM: u16 = 0xCF;
    pub const SLOT: u16 = 0x80;
    pub const KIND: u16 = 0x81;
    pub const RECORD: u16 = 0x82;
    pub const LOG_ID: u16 = 0x80;
    pub const LOG_ROLE: u16 = 0x81;
    pub const LOG_TIME: u16 = 0x82;
    pub const LOG_WHAT: u16 = 0x83;
}

pub const SALT_LEN: usize = 16;

/// How many terminal-certificate digests the card remembers ([`PersistentState::verified_certs`]).
pub const VERIFIED_CERTS_MAX: usize = 4;

/// The stored PIN: a per-card random salt and SHA-256(salt || PIN).
#[derive(Clone, PartialEq, Eq)]
pub struct PinRecord {
    pub salt: [u8; SALT_LEN],
    pub hash: Zeroizing<[u8; 32]>,
}

impl PinRecord {
    pub fn new(salt: [u8; SALT_LEN], pin: &[u8]) -> Self {
        PinRecord {
            salt,
            hash: Self::digest(&salt, pin),
        }
    }

    fn digest(salt: &[u8; SALT_LEN], pin: &[u8]) -> Zeroizing<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(salt);
        h.update(pin);
        Zeroizing::new(h.finalize().into())
    }

    /// Constant-time comparison of `pin` against the stored hash.
    pub fn matches(&self, pin: &[u8]) -> bool {
        let candidate = Self::digest(&self.salt, pin);
        bool::from(candidate.ct_eq(&*self.hash))
    }
}

impl fmt::Debug for PinRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinRecord(..)")
    }
}

/// One credential slot's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub kind: u8,
    pub record: Vec<u8>,
}

/// One access-log entry: a terminal session that read data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The certificate's terminal id (1..=32 bytes of UTF-8).
    pub terminal_id: String,
    pub role: u8,
    /// The terminal's authenticated time (EXTERNAL AUTHENTICATE), unix seconds.
    pub time: u64,
    /// The read rights actually used ([`protocol::access`] bits).
    pub what: u8,
}

impl LogEntry {
    /// The value of the E1 TLV in the state (also the 62 entry of GET DATA 0104, whose
    /// inner tags are the same).
    pub fn encode_inner(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.terminal_id.len() + 18);
        tlv::push(&mut v, t::LOG_ID, self.terminal_id.as_bytes());
        tlv::push(&mut v, t::LOG_ROLE, &[self.role]);
        tlv::push(&mut v, t::LOG_TIME, &self.time.to_be_bytes());
        tlv::push(&mut v, t::LOG_WHAT, &[self.what]);
        v
    }

    /// Bytes this entry takes in the serialised state (tag, length and value).
    pub fn encoded_len(&self) -> usize {
        // inner: 2 + id, 3, 10, 3; ids are at most 32 bytes, so one-byte lengths throughout.
        2 + 2 + self.terminal_id.len() + 3 + 10 + 3
    }
}

/// Everything the card keeps across power cycles.
#[derive(Clone, PartialEq, Eq)]
pub struct PersistentState {
    pub life_cycle: LifeCycle,
    pub card_id: Option<Vec<u8>>,
    pub authority_key: Option<Vec<u8>>,
    pub card_key: Option<Zeroizing<[u8; 32]>>,
    pub pin: Option<PinRecord>,
    pub pin_tries: u8,
    pub credentials: [Option<Credential>; CREDENTIAL_SLOTS as usize],
    /// Monotonic: the latest authenticated terminal time the card has accepted.
    pub latest_time: u64,
    /// Oldest first, at most [`ACCESS_LOG_MAX`] entries.
    pub access_log: Vec<LogEntry>,
    /// The card access number (PACE password, [`crate::sm`]); set at personalisation.
    pub can: Option<Zeroizing<[u8; crate::sm::CAN_LEN]>>,
    /// SHA-256 digests of (authority key || terminal certificate) for certificates whose
    /// signature the card verified and whose terminal then passed EXTERNAL AUTHENTICATE, most
    /// recent first, at most [`VERIFIED_CERTS_MAX`]: PSO VERIFY CERTIFICATE skips the
    /// signature check for these (its validity time is still checked).
    pub verified_certs: Vec<[u8; 32]>,
}

impl fmt::Debug for PersistentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentState")
            .field("life_cycle", &self.life_cycle)
            .field("card_id", &self.card_id)
            .field("authority_key_set", &self.authority_key.is_some())
            .field("card_key_set", &self.card_key.is_some())
            .field("pin_set", &self.pin.is_some())
            .field("pin_tries", &self.pin_tries)
            .field("credentials", &self.credential_count())
            .field("latest_time", &self.latest_time)
            .field("access_log", &self.access_log.len())
            .field("can_set", &self.can.is_some())
            .field("verified_certs", &self.verified_certs.len())
            .finish()
    }
}

impl Default for PersistentState {
    fn default() -> Self {
        PersistentState {
            life_cycle: LifeCycle::Personalisation,
            card_id: None,
            authority_key: None,
            card_key: None,
            pin: None,
            pin_tries: protocol::PIN_TRIES,
            credentials: Default::default(),
            latest_time: 0,
            access_log: Vec::new(),
            can: None,
            verified_certs: Vec::new(),
        }
    }
}

/// A state file that cannot be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Malformed,
    UnsupportedVersion(u8),
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed => f.write_str("malformed TLV"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            DecodeError::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// A value too large for the TLV encoding (never persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge;

fn push(out: &mut Vec<u8>, tag: u16, value: &[u8]) -> Result<(), TooLarge> {
    if value.len() > 0xFFFF {
        return Err(TooLarge);
    }
    tlv::push(out, tag, value);
    Ok(())
}

impl PersistentState {
    pub fn credential_count(&self) -> usize {
        self.credentials.iter().flatten().count()
    }

    /// The card's public key as an uncompressed SEC1 point, if a key exists.
    pub fn public_key(&self) -> Option<[u8; 65]> {
        let scalar = self.card_key.as_ref()?;
        let sk = p256::SecretKey::from_slice(&scalar[..]).ok()?;
        let point = sk.public_key().to_encoded_point(false);
        point.as_bytes().try_into().ok()
    }

    /// Serialise. Fails only for values above 64 KiB, which never fit the budget anyway.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, TooLarge> {
        let mut out = Zeroizing::new(Vec::new());
        push(&mut out, t::VERSION, &[FORMAT_VERSION])?;
        push(&mut out, t::LIFE_CYCLE, &[self.life_cycle as u8])?;
        if let Some(id) = &self.card_id {
            push(&mut out, t::CARD_ID, id)?;
        }
        if let Some(k) = &self.authority_key {
            push(&mut out, t::AUTHORITY_KEY, k)?;
        }
        if let Some(k) = &self.card_key {
            push(&mut out, t::CARD_KEY, &k[..])?;
        }
        if let Some(pin) = &self.pin {
            let mut v = Zeroizing::new([0u8; SALT_LEN + 32]);
            v[..SALT_LEN].copy_from_slice(&pin.salt);
            v[SALT_LEN..].copy_from_slice(&pin.hash[..]);
            push(&mut out, t::PIN, &v[..])?;
        }
        push(&mut out, t::PIN_TRIES, &[self.pin_tries])?;
        push(&mut out, t::LATEST_TIME, &self.latest_time.to_be_bytes())?;
        if let Some(can) = &self.can {
            push(&mut out, t::CAN, &can[..])?;
        }
        if !self.verified_certs.is_empty() {
            push(&mut out, t::VERIFIED_CERTS, &self.verified_certs.concat())?;
        }
        for (slot, cred) in self.credentials.iter().enumerate() {
            if let Some(c) = cred {
                let mut inner = Vec::with_capacity(c.record.len() + 12);
                push(&mut inner, t::SLOT, &[slot as u8])?;
                push(&mut inner, t::KIND, &[c.kind])?;
                push(&mut inner, t::RECORD, &c.record)?;
                push(&mut out, t::CREDENTIAL, &inner)?;
            }
        }
        for entry in &self.access_log {
            push(&mut out, t::LOG_ENTRY, &entry.encode_inner())?;
        }
        let sum = sha256(&out);
        push(&mut out, t::CHECKSUM, &sum)?;
        Ok(out)
    }

    /// Decode a state written by [`encode`](Self::encode). Rejects anything malformed,
    /// duplicated, out of range or out of order.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        // The checksum TLV is the last 34 bytes: CF 20 <32 bytes>.
        let Some(split) = data.len().checked_sub(34) else {
            return Err(DecodeError::Invalid("length"));
        };
        let (data, trailer) = data.split_at(split);
        let mut expected = [0u8; 34];
        expected[0] = t::CHECKSUM as u8;
        expected[1] = 32;
        expected[2..].copy_from_slice(&sha256(data));
        if trailer != expected {
            return Err(DecodeError::Invalid("checksum"));
        }
        let mut items = tlv::iter(data);
        let version = match items.next() {
            Some(Ok((t::VERSION, [v @ (FORMAT_VERSION | FORMAT_VERSION_1)]))) => *v,
            Some(Ok((t::VERSION, [v]))) => return Err(DecodeError::UnsupportedVersion(*v)),
            _ => return Err(DecodeError::Invalid("version header")),
        };
        let v1 = version == FORMAT_VERSION_1;
        let mut s = PersistentState::default();
        let mut seen_lcs = false;
        let mut seen_tries = false;
        let mut seen_time = false;
        let mut last_fixed_tag = t::VERSION;
        let mut last_slot: Option<u8> = None;
        for item in items {
            let (tag, value) = item.map_err(|_| DecodeError::Malformed)?;
            let in_order = match tag {
                // Credentials in slot order (checked below), before any log entry.
                t::CREDENTIAL => s.access_log.is_empty(),
                t::LOG_ENTRY => !v1,
                // Fixed objects: each at most once, in increasing tag order, before the rest.
                _ => tag > last_fixed_tag && last_slot.is_none() && s.access_log.is_empty(),
            };
            if !in_order {
                return Err(DecodeError::Invalid("object order"));
            }
            if tag != t::CREDENTIAL && tag != t::LOG_ENTRY {
                last_fixed_tag = tag;
            }
            match tag {
                t::LIFE_CYCLE => {
                    let [b] = value else {
                        return Err(DecodeError::Invalid("life cycle"));
                    };
                    s.life_cycle =
                        LifeCycle::from_byte(*b).ok_or(DecodeError::Invalid("life cycle"))?;
                    seen_lcs = true;
                }
                t::CARD_ID => {
                    if !valid_card_id(value) {
                        return Err(DecodeError::Invalid("card id"));
                    }
                    s.card_id = Some(value.to_vec());
                }
                t::AUTHORITY_KEY => {
                    if !valid_authority_key(value) {
                        return Err(DecodeError::Invalid("authority key"));
                    }
                    s.authority_key = Some(value.to_vec());
                }
                t::OFFICE_SECRET_V1 if v1 => {
                    // Replaced by terminal authentication: checked, then dropped.
                    if value.len() != 32 {
                        return Err(DecodeError::Invalid("office secret"));
                    }
                }
                t::CARD_KEY => {
                    let k: [u8; 32] = value
                        .try_into()
                        .map_err(|_| DecodeError::Invalid("card key"))?;
                    let k = Zeroizing::new(k);
                    if p256::SecretKey::from_slice(&k[..]).is_err() {
                        return Err(DecodeError::Invalid("card key"));
                    }
                    s.card_key = Some(k);
                }
                t::PIN => {
                    if value.len() != SALT_LEN + 32 {
                        return Err(DecodeError::Invalid("PIN record"));
                    }
                    let (salt, hash) = value.split_at(SALT_LEN);
                    let salt: [u8; SALT_LEN] = salt
                        .try_into()
                        .map_err(|_| DecodeError::Invalid("PIN record"))?;
                    let hash: [u8; 32] = hash
                        .try_into()
                        .map_err(|_| DecodeError::Invalid("PIN record"))?;
                    s.pin = Some(PinRecord {
                        salt,
                        hash: Zeroizing::new(hash),
                    });
                }
                t::PIN_TRIES => {
                    let [b] = value else {
                        return Err(DecodeError::Invalid("PIN tries"));
                    };
                    if *b > protocol::PIN_TRIES {
                        return Err(DecodeError::Invalid("PIN tries"));
                    }
                    s.pin_tries = *b;
                    seen_tries = true;
                }
                t::LATEST_TIME if !v1 => {
                    let b: [u8; 8] = value
                        .try_into()
                        .map_err(|_| DecodeError::Invalid("latest time"))?;
                    s.latest_time = u64::from_be_bytes(b);
                    seen_time = true;
                }
                t::CAN if !v1 => {
                    if !crate::sm::valid_can(value) {
                        return Err(DecodeError::Invalid("CAN"));
                    }
                    let mut can = Zeroizing::new([0u8; crate::sm::CAN_LEN]);
                    can.copy_from_slice(value);
                    s.can = Some(can);
                }
                t::VERIFIED_CERTS if !v1 => {
                    if value.is_empty()
                        || value.len() % 32 != 0
                        || value.len() / 32 > VERIFIED_CERTS_MAX
                    {
                        return Err(DecodeError::Invalid("verified certificates"));
                    }
                    s.verified_certs = value
                        .chunks_exact(32)
                        .map(|c| <[u8; 32]>::try_from(c).unwrap_or([0; 32]))
                        .collect();
                }
                t::CREDENTIAL => {
                    let (slot, cred) = decode_credential(value)?;
                    if last_slot.is_some_and(|l| slot <= l) {
                        return Err(DecodeError::Invalid("credential order"));
                    }
                    last_slot = Some(slot);
                    s.credentials[usize::from(slot)] = Some(cred);
                }
                t::LOG_ENTRY => {
                    if s.access_log.len() >= ACCESS_LOG_MAX {
                        return Err(DecodeError::Invalid("access log length"));
                    }
                    s.access_log.push(decode_log_entry(value)?);
                }
                _ => return Err(DecodeError::Invalid("unknown tag")),
            }
        }
        if !seen_lcs || !seen_tries || (!v1 && !seen_time) {
            return Err(DecodeError::Invalid(
                "missing life cycle, PIN tries or time",
            ));
        }
        Ok(s)
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

fn decode_credential(value: &[u8]) -> Result<(u8, Credential), DecodeError> {
    let mut it = tlv::iter(value);
    let mut next = || -> Result<(u16, &[u8]), DecodeError> {
        match it.next() {
            Some(Ok(x)) => Ok(x),
            _ => Err(DecodeError::Invalid("credential")),
        }
    };
    let (t1, slot) = next()?;
    let (t2, k) = next()?;
    let (t3, record) = next()?;
    let (t::SLOT, [slot], t::KIND, [k], t::RECORD) = (t1, slot, t2, k, t3) else {
        return Err(DecodeError::Invalid("credential"));
    };
    if it.next().is_some() || *slot >= CREDENTIAL_SLOTS || !kind::is_valid(*k) || record.is_empty()
    {
        return Err(DecodeError::Invalid("credential"));
    }
    Ok((
        *slot,
        Credential {
            kind: *k,
            record: record.to_vec(),
        },
    ))
}

fn decode_log_entry(value: &[u8]) -> Result<LogEntry, DecodeError> {
    const BAD: DecodeError = DecodeError::Invalid("access log entry");
    let mut it = tlv::iter(value);
    let mut next = || -> Result<(u16, &[u8]), DecodeError> {
        match it.next() {
            Some(Ok(x)) => Ok(x),
            _ => Err(BAD),
        }
    };
    let (t1, id) = next()?;
    let (t2, role) = next()?;
    let (t3, time) = next()?;
    let (t4, what) = next()?;
    let (t::LOG_ID, t::LOG_ROLE, [role], t::LOG_TIME, t::LOG_WHAT, [what]) =
        (t1, t2, role, t3, t4, what)
    else {
        return Err(BAD);
    };
    if it.next().is_some() || !(1..=TERMINAL_ID_MAX).contains(&id.len()) || *what == 0 {
        return Err(BAD);
    }
    let time: [u8; 8] = time.try_into().map_err(|_| BAD)?;
    let id = core::str::from_utf8(id).map_err(|_| BAD)?;
    Ok(LogEntry {
        terminal_id: String::from(id),
        role: *role,
        time: u64::from_be_bytes(time),
        what: *what,
    })
}

/// Card id: printable ASCII (0x20..=0x7E), 1..=32 bytes.
pub fn valid_card_id(id: &[u8]) -> bool {
    (1..=CARD_ID_MAX).contains(&id.len()) && id.iter().all(|b| (0x20..=0x7E).contains(b))
}

/// Authority key: an uncompressed SEC1 P-256 point on the curve.
pub fn valid_authority_key(k: &[u8]) -> bool {
    k.len() == 65 && k.first() == Some(&0x04) && p256::PublicKey::from_sec1_bytes(k).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> PersistentState {
        let mut s = PersistentState {
            life_cycle: LifeCycle::Issued,
            card_id: Some(b"CITIZEN-0001".to_vec()),
            card_key: Some(Zeroizing::new([1; 32])),
            pin: Some(PinRecord::new([3; 16], b"123456")),
            pin_tries: 2,
            latest_time: 1_750_000_000,
            ..Default::default()
        };
        for i in 0..3u8 {
            s.access_log.push(LogEntry {
                terminal_id: alloc::format!("clinic-{i}"),
                role: 1,
                time: 1_750_000_000 + u64::from(i),
                what: 1 << i,
            });
        }
        s.authority_key = Some(s.public_key().unwrap().to_vec());
        s.credentials[0] = Some(Credential {
            kind: 1,
            record: vec![1, 2, 3],
        });
        s.credentials[15] = Some(Credential {
            kind: 2,
            record: vec![9; 1000],
        });
        s
    }

    #[test]
    fn round_trip() {
        for s in [PersistentState::default(), sample()] {
            let enc = s.encode().unwrap();
            assert_eq!(PersistentState::decode(&enc).unwrap(), s);
        }
    }

    #[test]
    fn log_entry_encoded_len_is_exact() {
        let s = sample();
        let without = PersistentState {
            access_log: Vec::new(),
            ..s.clone()
        };
        let total: usize = s.access_log.iter().map(LogEntry::encoded_len).sum();
        assert_eq!(
            s.encode().unwrap().len(),
            without.encode().unwrap().len() + total
        );
    }

    #[test]
    fn log_limits() {
        let mut s = sample();
        let e = s.access_log[0].clone();
        s.access_log = vec![e.clone(); ACCESS_LOG_MAX];
        assert!(PersistentState::decode(&s.encode().unwrap()).is_ok());
        s.access_log.push(e.clone());
        assert!(PersistentState::decode(&s.encode().unwrap()).is_err());
        for bad in [
            LogEntry {
                what: 0,
                ..e.clone()
            },
            LogEntry {
                terminal_id: String::new(),
                ..e.clone()
            },
            LogEntry {
                terminal_id: "x".repeat(33),
                ..e
            },
        ] {
            s.access_log = vec![bad];
            assert!(PersistentState::decode(&s.encode().unwrap()).is_err());
        }
    }

    /// A version-1 state (issue 2, with an office secret) is read; the secret is dropped.
    #[test]
    fn version_1_is_migrated() {
        let mut want = sample();
        want.access_log.clear();
        want.latest_time = 0;
        let mut v1 = Vec::new();
        tlv::push(&mut v1, 0xC0, &[1]);
        tlv::push(&mut v1, 0xC1, &[0x05]);
        tlv::push(&mut v1, 0xC2, b"CITIZEN-0001");
        tlv::push(&mut v1, 0xC3, want.authority_key.as_deref().unwrap());
        tlv::push(&mut v1, 0xC4, &[7; 32]);
        tlv::push(&mut v1, 0xC5, &[1; 32]);
        let pin = want.pin.as_ref().unwrap();
        let mut p = pin.salt.to_vec();
        p.extend_from_slice(&pin.hash[..]);
        tlv::push(&mut v1, 0xC6, &p);
        tlv::push(&mut v1, 0xC7, &[2]);
        for (slot, c) in want.credentials.iter().enumerate() {
            if let Some(c) = c {
                let mut inner = Vec::new();
                tlv::push(&mut inner, 0x80, &[slot as u8]);
                tlv::push(&mut inner, 0x81, &[c.kind]);
                tlv::push(&mut inner, 0x82, &c.record);
                tlv::push(&mut v1, 0xE0, &inner);
            }
        }
        let with_sum = |mut d: Vec<u8>| {
            let sum = sha256(&d);
            tlv::push(&mut d, 0xCF, &sum);
            d
        };
        assert_eq!(
            PersistentState::decode(&with_sum(v1.clone())).unwrap(),
            want
        );
        // Version-2 objects in a version-1 state, and the reverse, are refused.
        let mut bad = v1.clone();
        tlv::push(&mut bad, 0xE1, &want.encode().unwrap()[..0]);
        assert!(PersistentState::decode(&with_sum(bad)).is_err());
        let mut v2 = want.encode().unwrap().to_vec();
        v2.truncate(v2.len() - 34);
        // C0 (3) C1 (3) C2 (2 + 12) C3 (2 + 65), then C5.
        let at = 3 + 3 + 14 + 67;
        assert_eq!(v2[at], 0xC5);
        let mut secret = Vec::new();
        tlv::push(&mut secret, 0xC4, &[7; 32]);
        v2.splice(at..at, secret);
        assert!(PersistentState::decode(&with_sum(v2)).is_err());
        // Unknown versions are refused.
        let mut v3 = v1;
        v3[2] = 3;
        assert_eq!(
            PersistentState::decode(&with_sum(v3)),
            Err(DecodeError::UnsupportedVersion(3))
        );
    }

    #[test]
    fn pin_hash() {
        let p = PinRecord::new([1; 16], b"123456");
        assert!(p.matches(b"123456"));
        assert!(!p.matches(b"123457"));
    }

    #[test]
    fn corrupt_inputs_are_errors() {
        let enc = sample().encode().unwrap();
        assert!(PersistentState::decode(&[]).is_err());
        assert!(PersistentState::decode(&[0xC0, 1, 2]).is_err());
        for cut in 0..enc.len() {
            assert!(PersistentState::decode(&enc[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..enc.len().min(300) {
            let mut e = enc.to_vec();
            e[i] ^= 0xFF;
            assert!(PersistentState::decode(&e).is_err(), "flip {i}");
        }
    }
}
