//! Shared helpers of the fuzz targets and of `examples/make_seeds.rs`: a deterministic RNG,
//! the personalisation script the `applet_session` target starts from, and the session input
//! format (so seeds and target agree on it).

use std::sync::OnceLock;

use card_applet::{Card, MemoryStore};
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
    assert!(digits.len().is_multiple_of(2), "odd hex length: {s}");
    digits
        .chunks(2)
        .map(|p| {
            let txt = std::str::from_utf8(p).expect("ascii hex");
            u8::from_str_radix(txt, 16).expect("hex digit")
        })
        .collect()
}

pub const SELECT: &str = "00A4040007F043495649430100";
/// The P-256 generator (a valid authority key).
pub const AUTHORITY_KEY: &str = "046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5";
/// 32 bytes of 0x11.
pub const OFFICE_SECRET: &str = "1111111111111111111111111111111111111111111111111111111111111111";
/// The citizen PIN "123456".
pub const PIN: &str = "313233343536";

/// Personalisation up to, not including, ACTIVATE. Every line must answer 9000.
pub fn personalise_script() -> Vec<Vec<u8>> {
    [
        SELECT.to_owned(),
        // card id "CIV-FUZZ-0001"
        "00DA0110 0D 4349562D46555A5A2D30303031".to_owned(),
        format!("00DA0111 41 {AUTHORITY_KEY}"),
        format!("00DA0112 20 {OFFICE_SECRET}"),
        "0047800000".to_owned(),
        // slot 0 identity, slot 1 health, slot 2 education (small opaque records)
        "00DA0200 08 800101 8103414243".to_owned(),
        "00DA0201 09 800102 810448454C54".to_owned(),
        "00DA0202 07 800103 81024544".to_owned(),
        format!("002C0281 06 {PIN}"),
    ]
    .iter()
    .map(|s| hex(s))
    .collect()
}

pub const ACTIVATE: &str = "00440000";

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
}

/// Length prefix that means "power cycle" instead of an APDU.
pub const RESET_MARKER: u16 = 0xFFFF;

/// Session input: `start(1)` then frames `len(2, big-endian) apdu(len)`; a length of
/// [`RESET_MARKER`] is a power cycle; a frame longer than what is left takes what is left.
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
        let len = u16::from_be_bytes(*len);
        if len == RESET_MARKER {
            ops.push(Op::Reset);
            rest = tail;
            continue;
        }
        let n = usize::from(len).min(tail.len());
        let (apdu, tail) = tail.split_at(n);
        ops.push(Op::Apdu(apdu));
        rest = tail;
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
                assert_ne!(len, RESET_MARKER);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(a);
            }
        }
    }
    out
}
