//! Shared harness of the APDU tests: in-process `Card` with a `MemoryStore`, a
//! deterministic RNG, hex scripts, and terminal-authentication helpers.
//!
//! Script lines: `REQUEST -> RESPONSE` in hex (spaces ignored, `#` starts a comment).
//! In RESPONSE, `..` matches any run of bytes (possibly none), so variable parts such as
//! free storage or a public key can be skipped while the status word is still checked.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use card_applet::protocol::{access, external_auth_message, role};
use card_applet::terminal::{self, TerminalCert};
use card_applet::{Card, MemoryStore};
use p256::ecdsa::{signature::Signer, Signature, SigningKey};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

/// Deterministic test RNG: SHA-256 in counter mode over a seed. Test-only.
#[derive(Debug, Clone)]
pub struct TestRng {
    seed: u64,
    counter: u64,
}

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng { seed, counter: 0 }
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let mut h = Sha256::new();
            h.update(self.seed.to_le_bytes());
            h.update(self.counter.to_le_bytes());
            self.counter += 1;
            let out = h.finalize();
            chunk.copy_from_slice(&out[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for TestRng {}

/// The CAN the test cards are personalised with ([`PERSONALISE`]).
pub const CAN: &[u8] = b"654321";

/// A card with a transparent secure-messaging client in front, as the reader's transport
/// has: a plain SELECT (or ACTIVATE) that leaves an issued card with a CAN is followed by
/// PACE with [`CAN`], and from then on every APDU is protected and every answer checked and
/// decrypted, so the hex scripts read plain bytes. `card.card` is the card itself, for tests
/// of the protected bytes.
pub struct TestCard<S: card_applet::Store = MemoryStore> {
    pub card: Card<S, TestRng>,
    pub channel: Option<card_applet::sm::Channel>,
    rng: TestRng,
}

impl<S: card_applet::Store> std::fmt::Debug for TestCard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCard")
            .field("card", &self.card)
            .field("sm", &self.channel.is_some())
            .finish()
    }
}

impl<S: card_applet::Store> From<Card<S, TestRng>> for TestCard<S> {
    fn from(card: Card<S, TestRng>) -> Self {
        TestCard {
            card,
            channel: None,
            rng: TestRng::new(4242),
        }
    }
}

impl<S: card_applet::Store> std::ops::Deref for TestCard<S> {
    type Target = Card<S, TestRng>;
    fn deref(&self) -> &Self::Target {
        &self.card
    }
}

impl<S: card_applet::Store> std::ops::DerefMut for TestCard<S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.card
    }
}

impl<S: card_applet::Store> TestCard<S> {
    /// Send `raw` as the reader's SM transport would.
    pub fn process(&mut self, raw: &[u8]) -> Vec<u8> {
        use card_applet::apdu::CommandApdu;
        let parsed = CommandApdu::parse(raw).ok();
        let plain_cla = parsed.as_ref().is_some_and(|a| a.cla & !0x10 == 0);
        let select = parsed.as_ref().is_some_and(|a| a.ins == 0xA4) && plain_cla;
        let activate = parsed.as_ref().is_some_and(|a| a.ins == 0x44) && plain_cla;
        if let (Some(apdu), Some(channel), true) = (&parsed, self.channel.as_mut(), plain_cla) {
            let protected = channel.protect_command(apdu).expect("protectable");
            let r = self.card.process(&protected);
            match channel.unprotect_response(&r) {
                Ok(plain) => return plain,
                // The session is gone (a reset): a SELECT starts again in plain.
                Err(card_applet::sm::SmError::Plain(_)) if select => self.channel = None,
                Err(card_applet::sm::SmError::Plain(_)) => {
                    self.channel = None;
                    return r;
                }
                Err(e) => panic!("bad protected response: {e}"),
            }
        }
        // Plain: before a session, or a test of the class byte / length handling (which
        // closes the card's session and its security state: open a new one).
        let had_session = self.channel.take().is_some();
        let r = self.card.process(raw);
        if ((select || activate) && r.ends_with(&[0x90, 0x00])) || had_session {
            self.open_session();
        }
        r
    }

    /// PACE with [`CAN`] if the card is issued, selected and has a CAN. Whether it worked.
    pub fn open_session(&mut self) -> bool {
        let st = self.card.state();
        if st.life_cycle != card_applet::protocol::LifeCycle::Issued || st.can.is_none() {
            return false;
        }
        let card = &mut self.card;
        let mut transmit = |a: &[u8]| -> Result<Vec<u8>, ()> { Ok(card.process(a)) };
        self.channel = card_applet::sm::establish(
            &mut transmit,
            &mut self.rng,
            &card_applet::sm::Password::Can(CAN),
        )
        .ok();
        self.channel.is_some()
    }
}

pub fn blank() -> TestCard {
    Card::new(MemoryStore::new(), TestRng::new(42))
        .unwrap()
        .into()
}

pub fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase()
}

/// Does `actual` (hex) match `pattern` (hex with `..` wildcards)? Byte-aligned.
pub fn matches(pattern: &str, actual: &str) -> bool {
    let parts: Vec<&str> = pattern.split("..").collect();
    if parts.len() == 1 {
        return pattern == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || !actual.ends_with(last) {
        return false;
    }
    if actual.len() < first.len() + last.len() {
        return false;
    }
    let mut pos = first.len();
    let end = actual.len() - last.len();
    for mid in &parts[1..parts.len() - 1] {
        let mut found = None;
        let mut from = pos;
        while let Some(i) = actual[from..end].find(mid) {
            if (from + i) % 2 == 0 {
                found = Some(from + i);
                break;
            }
            from += i + 1;
        }
        match found {
            Some(i) => pos = i + mid.len(),
            None => return false,
        }
    }
    pos <= end && (end - pos) % 2 == 0
}

pub fn tx<S: card_applet::Store>(card: &mut TestCard<S>, req: &str) -> String {
    let raw = hex::decode(clean(req)).expect("request hex");
    hex::encode_upper(card.process(&raw))
}

/// Run a script; panics with the line number on the first mismatch.
pub fn run<S: card_applet::Store>(card: &mut TestCard<S>, script: &str) {
    for (n, line) in script.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (req, resp) = line.split_once("->").expect("REQ -> RESP");
        let want = clean(resp);
        let got = tx(card, req);
        assert!(
            matches(&want, &got),
            "script line {}: {}\n  want {}\n  got  {}",
            n + 1,
            req.trim(),
            want,
            got
        );
    }
}

pub fn sw(resp: &[u8]) -> u16 {
    u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]])
}

pub const SELECT: &str = "00A4040007F043495649430100";
/// The P-256 generator in SEC1 uncompressed form: the authority key of the test cards (the
/// authority's private scalar is 1, see [`authority`]).
pub const AUTHORITY_KEY: &str = "046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5";
pub const CARD_ID: &[u8] = b"CITIZEN-0001";

/// The whole personalisation of a blank card.
pub const PERSONALISE: &str = "
# SELECT: FCI 6F { 84 AID, A5 { 80 version, 81 card id (empty), 82 LCS 03, 83 free, 84 total,
#                               no 85 tries: no PIN yet, 86 count 0, 87 has key 0,
#                               88 latest time 0 } }
00A4040007F043495649430100 -> 6F 30 84 07 F0434956494301 A5 25 8002 0100 8100 8201 03 8304 .. 8404 00010000 8601 00 8701 00 8808 0000000000000000 9000
# Nothing set yet
00CA010200 -> 6A88
00CA011000 -> 6A88
0044 0000  -> 6985
# Card id 'CITIZEN-0001'
00DA0110 0C 434954495A454E2D30303031 -> 9000
00CA011000 -> 434954495A454E2D30303031 9000
# Authority key, then read it back
00DA0111 41 046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5 -> 9000
00CA011100 -> 046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5 9000
# The office secret of issue 2 is gone
00DA0112 20 1111111111111111111111111111111111111111111111111111111111111111 -> 6A82
00CA011200 -> 6A82
# Generate the card key (regeneration allowed in personalisation): 7F49 { 86 <04..> }
0047800000 -> 7F49 43 86 41 04 .. 9000
0047800000 -> 7F49 43 86 41 04 .. 9000
0047810000 -> 7F49 43 86 41 04 .. 9000
00CA010200 -> 7F49 43 86 41 04 .. 9000
# Credentials: slot 0 identity, slot 1 health, slot 3 emergency, slot 5 education
00DA0200 08 8001 01 8103 414243 -> 9000
00DA0201 09 8001 02 8104 48454C54 -> 9000
00DA0203 08 8001 04 8103 454D45 -> 9000
00DA0205 07 8001 03 8102 4544 -> 9000
# Delete slot 5 again (empty body), then write it once more
00DA0205 -> 9000
00CA020500 -> 6A88
00DA0205 07 8001 03 8102 4544 -> 9000
# Reads are open during personalisation
00CA020000 -> 8001 01 8103 414243 9000
00CA020100 -> 8001 02 8104 48454C54 9000
# Directory: 61 { 80 slot, 81 kind, 82 length } per slot
00CA010300 -> 61 0A 8001 00 8101 01 8202 0003  61 0A 8001 01 8101 02 8202 0004  61 0A 8001 03 8101 04 8202 0003  61 0A 8001 05 8101 03 8202 0002 9000
# Initial PIN 123456 (RESET RETRY COUNTER P1=02, open in personalisation)
002C0281 06 313233343536 -> 9000
# The CAN (PACE password printed on the card): 654321; never readable
00DA0113 06 363534333231 -> 9000
00CA011300 -> 6A82
00DA0113 05 3635343332 -> 6A80
# Activate
00440000 -> 9000
00440000 -> 6985
00CA010100 -> 8002 0100 810C 434954495A454E2D30303031 8201 05 8304 .. 8404 00010000 8501 03 8601 04 8701 01 8808 0000000000000000 8901 00 8A01 00 9000
";

pub fn personalised() -> TestCard {
    let mut card = blank();
    run(&mut card, PERSONALISE);
    card
}

/// Run `req` and check both the SW and that the state (in memory and in the store) is
/// unchanged.
pub fn refused_unchanged(card: &mut TestCard, req: &str, want_sw: u16) {
    let before = card.serialized_state();
    let stored = card.store().data().map(<[u8]>::to_vec);
    let commits = card.store().commits();
    let raw = hex::decode(clean(req)).unwrap();
    let resp = card.process(&raw);
    assert_eq!(resp, want_sw.to_be_bytes().to_vec(), "{req}");
    assert_eq!(card.serialized_state(), before, "{req}: state changed");
    assert_eq!(card.store().data().map(<[u8]>::to_vec), stored);
    assert_eq!(card.store().commits(), commits);
}

pub fn selected_blank() -> TestCard {
    let mut card = blank();
    run(&mut card, &format!("{SELECT} -> ..9000"));
    card
}

/// The authority's signing key (scalar 1: its public key is [`AUTHORITY_KEY`]).
pub fn authority() -> SigningKey {
    let mut scalar = [0u8; 32];
    scalar[31] = 1;
    SigningKey::from_slice(&scalar).unwrap()
}

/// Some other authority (a forger).
pub fn other_authority() -> SigningKey {
    SigningKey::from_slice(&[0x5A; 32]).unwrap()
}

/// 2026-01-01T00:00:00Z: "now" of the tests.
pub const NOW: u64 = 1_767_225_600;
pub const DAY: u64 = 86_400;

/// A terminal: its key and its certificate.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub key: SigningKey,
    pub body: TerminalCert,
    pub cert: Vec<u8>,
}

impl Terminal {
    /// A terminal valid from NOW - 1 day to NOW + 30 days, certified by [`authority`], its
    /// key derived from its id.
    pub fn new(id: &str, role: u8, access: u8) -> Self {
        Self::custom(id, role, access, NOW - DAY, NOW + 30 * DAY, &authority())
    }

    pub fn custom(
        id: &str,
        role: u8,
        access: u8,
        not_before: u64,
        not_after: u64,
        signer: &SigningKey,
    ) -> Self {
        let seed: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let key = SigningKey::from_slice(&seed).unwrap();
        let body = TerminalCert {
            terminal_id: id.into(),
            role,
            access,
            not_before,
            not_after,
            public_key: key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .try_into()
                .unwrap(),
        };
        let cert = terminal::sign(&body, signer);
        Terminal { key, body, cert }
    }

    /// EXTERNAL AUTHENTICATE APDU for `card_id`, `challenge` and `time`.
    pub fn external_auth(&self, card_id: &[u8], challenge: &[u8], time: u64) -> Vec<u8> {
        let sig: Signature = self
            .key
            .sign(&external_auth_message(card_id, challenge, time));
        let mut apdu = vec![0x00, 0x82, 0x00, 0x00, 72];
        apdu.extend_from_slice(&time.to_be_bytes());
        apdu.extend_from_slice(&sig.to_bytes());
        apdu
    }
}

pub fn clinic() -> Terminal {
    Terminal::new(
        "clinic-st-mary",
        role::CLINIC,
        access::READ_IDENTITY | access::READ_EMERGENCY | access::READ_HEALTH,
    )
}

pub fn office() -> Terminal {
    Terminal::new(
        "office-city-hall",
        role::ISSUING_OFFICE,
        access::READ_IDENTITY | access::WRITE_CREDENTIALS | access::PIN_MANAGEMENT,
    )
}

pub fn education() -> Terminal {
    Terminal::new(
        "school-board",
        role::EDUCATION_OFFICE,
        access::READ_EDUCATION,
    )
}

/// PSO VERIFY CERTIFICATE APDU.
pub fn pso(cert: &[u8]) -> Vec<u8> {
    assert!(cert.len() <= 255);
    let mut apdu = vec![0x00, 0x2A, 0x00, 0xBE, cert.len() as u8];
    apdu.extend_from_slice(cert);
    apdu
}

/// GET CHALLENGE; panics unless 16 bytes + 9000.
pub fn challenge(card: &mut TestCard) -> Vec<u8> {
    let r = card.process(&[0x00, 0x84, 0x00, 0x00, 0x10]);
    assert_eq!(r.len(), 18, "{r:02X?}");
    assert_eq!(sw(&r), 0x9000);
    r[..16].to_vec()
}

/// PSO + GET CHALLENGE + EXTERNAL AUTHENTICATE at `time`; returns the SW of EXTERNAL
/// AUTHENTICATE (PSO must succeed).
pub fn try_authenticate(card: &mut TestCard, t: &Terminal, time: u64) -> u16 {
    assert_eq!(card.process(&pso(&t.cert)), [0x90, 0x00], "PSO");
    let c = challenge(card);
    sw(&card.process(&t.external_auth(CARD_ID, &c, time)))
}

/// Authenticate `t` at `time`; panics unless it succeeds.
pub fn authenticate(card: &mut TestCard, t: &Terminal, time: u64) {
    assert_eq!(
        try_authenticate(card, t, time),
        0x9000,
        "EXTERNAL AUTHENTICATE"
    );
}

/// Issued card, selected, the issuing office authenticated (may write and manage the PIN).
pub fn selected_personalised() -> TestCard {
    let mut card = personalised();
    run(&mut card, &format!("{SELECT} -> ..9000"));
    authenticate(&mut card, &office(), NOW);
    card
}

/// The card-info TLVs (GET DATA 0101) as (tag, value) pairs.
pub fn card_info(card: &mut TestCard) -> Vec<(u16, Vec<u8>)> {
    let r = card.process(&[0x00, 0xCA, 0x01, 0x01, 0x00]);
    assert_eq!(sw(&r), 0x9000);
    card_applet::protocol::tlv::iter(&r[..r.len() - 2])
        .map(|i| i.map(|(t, v)| (t, v.to_vec())).unwrap())
        .collect()
}

pub fn info_field(card: &mut TestCard, tag: u16) -> Option<Vec<u8>> {
    card_info(card)
        .into_iter()
        .find(|(t, _)| *t == tag)
        .map(|(_, v)| v)
}
