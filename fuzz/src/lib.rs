//! Shared helpers of the fuzz targets and of `examples/make_seeds.rs`: a deterministic RNG,
//! the personalisation script the `applet_session` target starts from, the fixed test
//! authority and terminal keys (so the harness can sign terminal certificates and EXTERNAL
//! AUTHENTICATE), and the session input format (so seeds and target agree on it).

pub mod apdu_parse;
pub mod applet_session;
pub mod cbor_decoders;
pub mod chain_verify;
pub mod merkle_proof;
pub mod terminal_cert;

use std::sync::OnceLock;

use card_applet::protocol::external_auth_message;
use card_applet::terminal::{self, TerminalCert, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use card_applet::{Card, MemoryStore};
use p256::ecdsa::{signature::Signer, Signature, SigningKey};
use rand_core::{CryptoRng, RngCore};

/// Deterministic RNG for fuzzing only (splitmix64). Marked `CryptoRng` because the card
/// requires it; it is nothing of the kind and never leaves this crate.
#[derive(Debug, Clone)]
pub struct FuzzRng(u64);

impl FuzzRng {
    pub fn new(seed: u64) -> Self {
        FuzzRng(seed)
    }
}

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FuzzRng {}

/// FNV-1a 64: the RNG seed of a session is a hash of the whole input.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// Hex (spaces allowed) to bytes. Panics on bad hex: only used on constants.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    // `% 2`, not `is_multiple_of`: this file is also built by the workspace tests (MSRV 1.85).
    #[allow(clippy::manual_is_multiple_of)]
    let even = digits.len() % 2 == 0;
    assert!(even, "odd hex length: {s}");
    digits
        .chunks(2)
        .map(|p| {
            let txt = std::str::from_utf8(p).expect("ascii hex");
            u8::from_str_radix(txt, 16).expect("hex digit")
        })
        .collect()
}

pub const SELECT: &str = "00A4040007F043495649430100";
/// The card id of the non-blank start states: "CIV-FUZZ-0001".
pub const CARD_ID: &[u8] = b"CIV-FUZZ-0001";
/// The P-256 generator: the public key of the test authority (private scalar 1, see
/// [`authority`]; the same authority as `card-applet/tests/common`).
pub const AUTHORITY_KEY: &str = "046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5";
/// The citizen PIN "123456".
pub const PIN: &str = "313233343536";
/// 2026-01-01T00:00:00Z: a plausible "now" for seeds.
pub const NOW: u64 = 1_767_225_600;
pub const DAY: u64 = 86_400;

/// Personalisation up to, not including, ACTIVATE. Every line must answer 9000.
pub fn personalise_script() -> Vec<Vec<u8>> {
    [
        SELECT.to_owned(),
        // card id "CIV-FUZZ-0001"
        "00DA0110 0D 4349562D46555A5A2D30303031".to_owned(),
        format!("00DA0111 41 {AUTHORITY_KEY}"),
        "0047800000".to_owned(),
        // slot 0 identity, slot 1 health, slot 2 education, slot 3 emergency (small opaque
        // records)
        "00DA0200 08 800101 8103414243".to_owned(),
        "00DA0201 09 800102 810448454C54".to_owned(),
        "00DA0202 07 800103 81024544".to_owned(),
        "00DA0203 08 800104 8103454D45".to_owned(),
        format!("002C0281 06 {PIN}"),
    ]
    .iter()
    .map(|s| hex(s))
    .collect()
}

pub const ACTIVATE: &str = "00440000";

/// The test authority's signing key (scalar 1: its public key is [`AUTHORITY_KEY`]).
pub fn authority() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut scalar = [0u8; 32];
        scalar[31] = 1;
        SigningKey::from_slice(&scalar).expect("scalar 1")
    })
}

/// Some other authority (a forger), for certificates that must not verify.
pub fn other_authority() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_slice(&[0x5A; 32]).expect("valid scalar"))
}

/// Number of fixed terminal keys.
pub const TERMINAL_KEYS: usize = 4;

/// Fixed terminal key `i % TERMINAL_KEYS` (scalars 0x21.., 0x22.., ...).
pub fn terminal_key(i: u8) -> &'static SigningKey {
    static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        (0..TERMINAL_KEYS as u8)
            .map(|k| SigningKey::from_slice(&[0x21 + k; 32]).expect("valid scalar"))
            .collect()
    });
    &keys[usize::from(i) % TERMINAL_KEYS]
}

/// Uncompressed SEC1 point of a signing key.
pub fn public_point(key: &SigningKey) -> [u8; PUBLIC_KEY_LEN] {
    key.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .try_into()
        .expect("65-byte point")
}

fn sign_bytes(key: &SigningKey, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
    let sig: Signature = key.sign(msg);
    sig.to_bytes().into()
}

/// `CertSpec::flags`: bits 0-1 pick the terminal key ([`terminal_key`]).
pub const CERT_KEY_MASK: u8 = 0x03;
/// `CertSpec::flags`: sign with [`other_authority`] instead of the test authority.
pub const CERT_FORGED: u8 = 0x80;
/// `CertSpec::flags`: flip one bit of the (otherwise valid) signature.
pub const CERT_BAD_SIGNATURE: u8 = 0x40;

/// A terminal certificate the harness signs (session op [`Op::Cert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec<'a> {
    /// [`CERT_KEY_MASK`], [`CERT_FORGED`], [`CERT_BAD_SIGNATURE`]; other bits ignored.
    pub flags: u8,
    pub role: u8,
    pub access: u8,
    pub not_before: u64,
    pub not_after: u64,
    /// The terminal id (made UTF-8 lossily; an empty or over-long id gives a certificate
    /// the card must refuse as malformed, validly signed all the same).
    pub id: &'a [u8],
}

impl CertSpec<'_> {
    /// The terminal key whose public point the certificate carries.
    pub fn key(&self) -> &'static SigningKey {
        terminal_key(self.flags & CERT_KEY_MASK)
    }

    pub fn body(&self) -> TerminalCert {
        TerminalCert {
            terminal_id: String::from_utf8_lossy(self.id).into_owned(),
            role: self.role,
            access: self.access,
            not_before: self.not_before,
            not_after: self.not_after,
            public_key: public_point(self.key()),
        }
    }

    /// The signed certificate bytes (COSE_Sign1 per `card_applet::terminal`).
    pub fn certificate(&self) -> Vec<u8> {
        let payload = self.body().encode_body();
        let signer = if self.flags & CERT_FORGED != 0 {
            other_authority()
        } else {
            authority()
        };
        let mut sig = sign_bytes(signer, &terminal::sig_structure(&payload));
        if self.flags & CERT_BAD_SIGNATURE != 0 {
            sig[SIGNATURE_LEN - 1] ^= 0x01;
        }
        terminal::assemble(&payload, &sig)
    }

    /// PSO VERIFY CERTIFICATE with [`Self::certificate`] (extended Lc if it is over 255
    /// bytes, which the card must refuse).
    pub fn apdu(&self) -> Vec<u8> {
        pso_apdu(&self.certificate())
    }
}

/// PSO VERIFY CERTIFICATE (00 2A 00 BE) carrying `cert`.
pub fn pso_apdu(cert: &[u8]) -> Vec<u8> {
    let mut apdu = vec![0x00, 0x2A, 0x00, 0xBE];
    match u8::try_from(cert.len()) {
        Ok(n) => apdu.push(n),
        Err(_) => {
            let n = u16::try_from(cert.len()).expect("certificate under 64 KB");
            apdu.push(0);
            apdu.extend_from_slice(&n.to_be_bytes());
        }
    }
    apdu.extend_from_slice(cert);
    apdu
}

/// GET CHALLENGE, Le 16.
pub const GET_CHALLENGE: &str = "0084000010";

/// `AuthSpec::flags`: send GET CHALLENGE first and answer that challenge.
pub const AUTH_FRESH_CHALLENGE: u8 = 0x01;
/// `AuthSpec::flags`: flip one bit of the signature.
pub const AUTH_BAD_SIGNATURE: u8 = 0x02;
/// `AuthSpec::flags`: sign for another card id (the binding to the card must fail).
pub const AUTH_WRONG_CARD: u8 = 0x04;

/// EXTERNAL AUTHENTICATE the harness signs (session op [`Op::Auth`]) with the key of the
/// last [`Op::Cert`] of the run (terminal key 0 before any), over the card's current card id,
/// the last challenge the card answered (16 zero bytes before any) and `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSpec {
    /// [`AUTH_FRESH_CHALLENGE`], [`AUTH_BAD_SIGNATURE`], [`AUTH_WRONG_CARD`].
    pub flags: u8,
    pub time: u64,
}

impl AuthSpec {
    /// The EXTERNAL AUTHENTICATE APDU: `00 82 00 00 48 time(8) sig(64)`.
    pub fn apdu(&self, key: &SigningKey, card_id: &[u8], challenge: &[u8]) -> Vec<u8> {
        let msg = if self.flags & AUTH_WRONG_CARD != 0 {
            let mut other = card_id.to_vec();
            other.push(b'X');
            external_auth_message(&other, challenge, self.time)
        } else {
            external_auth_message(card_id, challenge, self.time)
        };
        let mut sig = sign_bytes(key, &msg);
        if self.flags & AUTH_BAD_SIGNATURE != 0 {
            sig[SIGNATURE_LEN - 1] ^= 0x01;
        }
        let mut apdu = vec![0x00, 0x82, 0x00, 0x00, 72];
        apdu.extend_from_slice(&self.time.to_be_bytes());
        apdu.extend_from_slice(&sig);
        apdu
    }
}

/// Serialised states the `applet_session` target can start from.
#[derive(Debug)]
pub struct Snapshots {
    /// Everything set, not activated (life cycle 03).
    pub personalised: Vec<u8>,
    /// Activated (life cycle 05).
    pub issued: Vec<u8>,
}

/// Built once per process by running [`personalise_script`] and ACTIVATE through a card.
pub fn snapshots() -> &'static Snapshots {
    static SNAP: OnceLock<Snapshots> = OnceLock::new();
    SNAP.get_or_init(|| {
        let mut card = Card::new(MemoryStore::new(), FuzzRng::new(7)).expect("blank card");
        for apdu in personalise_script() {
            let r = card.process(&apdu);
            assert!(r.ends_with(&[0x90, 0x00]), "personalisation step failed");
        }
        let personalised = card.serialized_state().to_vec();
        let r = card.process(&hex(ACTIVATE));
        assert_eq!(r, [0x90, 0x00], "ACTIVATE failed");
        Snapshots {
            personalised,
            issued: card.serialized_state().to_vec(),
        }
    })
}

/// Where a session starts (first input byte, modulo 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Issued = 0,
    Personalised = 1,
    Blank = 2,
}

/// One step of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    Apdu(&'a [u8]),
    /// Power cycle (`Card::reset`).
    Reset,
    /// PSO VERIFY CERTIFICATE with a certificate the harness signs.
    Cert(CertSpec<'a>),
    /// (GET CHALLENGE and) EXTERNAL AUTHENTICATE the harness signs.
    Auth(AuthSpec),
}

/// Length prefix that means "power cycle" instead of an APDU.
pub const RESET_MARKER: u16 = 0xFFFF;
/// Length prefix of [`Op::Cert`]: then `flags(1) role(1) access(1) not_before(8 BE)
/// not_after(8 BE) id_len(1) id(id_len)`.
pub const CERT_MARKER: u16 = 0xFFFE;
/// Length prefix of [`Op::Auth`]: then `flags(1) time(8 BE)`.
pub const AUTH_MARKER: u16 = 0xFFFD;

/// Take `N` bytes, zero-padded when the input ends early.
pub(crate) fn take<const N: usize>(rest: &mut &[u8]) -> [u8; N] {
    let n = N.min(rest.len());
    let mut out = [0u8; N];
    out[..n].copy_from_slice(&rest[..n]);
    *rest = &rest[n..];
    out
}

/// Session input: `start(1)` then frames `len(2, big-endian) apdu(len)`; a length of
/// [`RESET_MARKER`] is a power cycle, [`CERT_MARKER`] and [`AUTH_MARKER`] are followed by
/// the fixed fields of [`Op::Cert`] / [`Op::Auth`] (zero-padded at the end of the input);
/// an APDU frame longer than what is left takes what is left, so does a terminal id.
pub fn parse_session(data: &[u8]) -> (Start, Vec<Op<'_>>) {
    let Some((first, mut rest)) = data.split_first() else {
        return (Start::Issued, Vec::new());
    };
    let start = match first % 3 {
        0 => Start::Issued,
        1 => Start::Personalised,
        _ => Start::Blank,
    };
    let mut ops = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        rest = tail;
        match u16::from_be_bytes(*len) {
            RESET_MARKER => ops.push(Op::Reset),
            CERT_MARKER => {
                let [flags, role, access] = take::<3>(&mut rest);
                let not_before = u64::from_be_bytes(take::<8>(&mut rest));
                let not_after = u64::from_be_bytes(take::<8>(&mut rest));
                let [id_len] = take::<1>(&mut rest);
                let (id, tail) = rest.split_at(usize::from(id_len).min(rest.len()));
                rest = tail;
                ops.push(Op::Cert(CertSpec {
                    flags,
                    role,
                    access,
                    not_before,
                    not_after,
                    id,
                }));
            }
            AUTH_MARKER => {
                let [flags] = take::<1>(&mut rest);
                let time = u64::from_be_bytes(take::<8>(&mut rest));
                ops.push(Op::Auth(AuthSpec { flags, time }));
            }
            len => {
                let (apdu, tail) = rest.split_at(usize::from(len).min(rest.len()));
                ops.push(Op::Apdu(apdu));
                rest = tail;
            }
        }
    }
    (start, ops)
}

/// The inverse of [`parse_session`], for seeds.
pub fn encode_session(start: Start, ops: &[Op<'_>]) -> Vec<u8> {
    let mut out = vec![start as u8];
    for op in ops {
        match op {
            Op::Reset => out.extend_from_slice(&RESET_MARKER.to_be_bytes()),
            Op::Apdu(a) => {
                let len = u16::try_from(a.len()).expect("APDU shorter than 65535 bytes");
                assert!(
                    ![RESET_MARKER, CERT_MARKER, AUTH_MARKER].contains(&len),
                    "APDU length is a marker"
                );
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(a);
            }
            Op::Cert(c) => {
                out.extend_from_slice(&CERT_MARKER.to_be_bytes());
                out.extend_from_slice(&[c.flags, c.role, c.access]);
                out.extend_from_slice(&c.not_before.to_be_bytes());
                out.extend_from_slice(&c.not_after.to_be_bytes());
                let n = u8::try_from(c.id.len()).expect("terminal id under 256 bytes");
                out.push(n);
                out.extend_from_slice(c.id);
            }
            Op::Auth(a) => {
                out.extend_from_slice(&AUTH_MARKER.to_be_bytes());
                out.push(a.flags);
                out.extend_from_slice(&a.time.to_be_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_round_trip() {
        let ops = [
            Op::Apdu(&[0x00, 0xA4, 0x04, 0x00]),
            Op::Reset,
            Op::Cert(CertSpec {
                flags: 0x81,
                role: 1,
                access: 7,
                not_before: 1,
                not_after: u64::MAX,
                id: b"clinic",
            }),
            Op::Auth(AuthSpec {
                flags: 1,
                time: NOW,
            }),
            Op::Apdu(&[]),
        ];
        let bytes = encode_session(Start::Personalised, &ops);
        assert_eq!(parse_session(&bytes), (Start::Personalised, ops.to_vec()));
    }

    #[test]
    fn harness_certificates_verify() {
        let spec = CertSpec {
            flags: 2,
            role: 1,
            access: 7,
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            id: b"clinic",
        };
        let cert = spec.certificate();
        let key = hex(AUTHORITY_KEY);
        assert_eq!(terminal::verify(&cert, &key), Ok(spec.body()));
        for flags in [CERT_FORGED, CERT_BAD_SIGNATURE] {
            let bad = CertSpec {
                flags,
                ..spec.clone()
            }
            .certificate();
            assert!(terminal::verify(&bad, &key).is_err());
        }
    }

    #[test]
    fn personalisation_runs() {
        let _ = snapshots();
    }
}
