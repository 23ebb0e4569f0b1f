//! Tearing safety (issue 3, item 5): SIGKILL `civic-card` at random points of state-changing
//! operations, restart it from its state file, and check that the state is the old one or the
//! new one (never a mix), that the file is never corrupt, and that no PIN try is ever gained.
//!
//! No pcscd in the loop: the test is its own vpcd ([`civic_e2e::vpcd`]), so a card restart
//! costs a few milliseconds instead of pcscd's ~1 s.
//!
//! ```text
//! cargo build --release -p card-applet --bins
//! cargo test -p civic-e2e --test tearing -- --nocapture                          # 66 trials (CI)
//! CIVIC_TEARING_TRIALS=500 cargo test -p civic-e2e --test tearing -- --nocapture # full run
//! CIVIC_TEARING_SEED=<seed printed by a run> ...                                 # replay
//! CIVIC_TEARING_ONLY="new terminal" ...            # only the operations whose name has it
//! ```
//!
//! # How
//!
//! 1. **Golden states**, made once per run by driving the personalisation APDUs through the
//!    real binary: one snapshot of the state file after each personalisation step (blank, card
//!    id, authority key, key, credentials, PIN, ACTIVATE), then issued cards. The authority
//!    key installed is the public key of a fixed test authority ([`authority`]), so the test
//!    certifies its own terminals (issue 3); the issued card has met the issuing office once
//!    (EXTERNAL AUTHENTICATE at [`NOW`], so its latest time seen is `NOW`), and exists with 3,
//!    2, 1 and 0 (blocked) PIN tries left.
//! 2. **Operations** ([`operations`], a table): each has a start state, a session (the APDUs
//!    sent and answered before the torn one, e.g. SELECT, or a terminal authentication: a
//!    closure, so it can sign the challenge), the torn APDU, an optional APDU that produces the
//!    one allowed intermediate state (a right PIN commits "tries - 1" before it restores the
//!    counter), and whether its result is random (a generated key, a PIN salt).
//! 3. **Reference runs**, un-killed, from the same start: the before-state (the file after the
//!    session: the start state itself unless the session is declared to write) and after-state
//!    file bytes, what the card reports for each (SELECT, card info, public key, directory,
//!    card id, authority key, credential slots, PIN status; then the slots and the access log
//!    after the right PIN), and the operation's latency, which sets the kill-delay range.
//! 4. **Trials**: start from the start state, run the session, send the torn APDU, SIGKILL the
//!    card after a random delay (0..=2 x the reference latency, in µs, slept; one trial
//!    in eight kills right after the send), read the response if the card got it out before
//!    dying, restart on the same file and compare.
//!
//! # Checks (each failure names the seed, trial, operation and delay)
//! - the card restarts (a corrupt state file is refused at start-up, so this is the corruption
//!   check) and does not rewrite its file at start;
//! - the raw state file equals the before- or the after-state bytes (or the allowed interim
//!   one), and what the card reports agrees with the same one: anything else is a *mix*;
//!   for random operations the "new" file must have the reference's length and differ from it
//!   in at most the random field plus the SHA-256 trailer;
//! - a response read before the kill means the new state (the card commits before answering);
//!   so does any part of one (the card died while writing it): for a terminal read, the data
//!   never leaves the card before its access-log entry is on disk;
//! - a terminal read leaves the access log with the old entries or the new / widened entry,
//!   nothing else, and an answered read returned the credential;
//! - a wrong PIN answered 63Cx leaves exactly x tries persisted (6983: 0);
//! - PIN tries never go up, except to the full count by a right PIN or an office's PIN reset
//!   whose new state landed;
//! - a `FILE.tmp` left by a kill is ignored at start and replaced by the next commit;
//! - EXTERNAL AUTHENTICATE by a terminal the card has not met records its certificate's
//!   digest in the same commit as the new latest time (issue 8's verified-certificate list,
//!   state tag CA): the decoded state holds the old time with the old list or the new time
//!   with the new list (the digest first, the oldest evicted from a full list), never one
//!   without the other, and that terminal authenticates and reads on the restarted card.
//!
//! Not tested here: power loss below the process (fsync ordering); SIGKILL leaves the page
//! cache intact.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use card_applet::protocol::{access, external_auth_message, role};
use card_applet::terminal::{self, TerminalCert};
use civic_e2e::vpcd::VpcdCard;
use p256::ecdsa::{signature::Signer as _, Signature, SigningKey};

const SELECT: &[u8] = &[
    0x00, 0xA4, 0x04, 0x00, 0x07, 0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01, 0x00,
];
const PIN: &[u8; 6] = b"123456";
const WRONG_PIN: &[u8; 6] = b"999999";
/// The card access number: the secure channel's password (issue 7).
const CAN: &[u8; 6] = b"318642";
const PIN_TRIES: u8 = 3;
const CARD_ID: &[u8] = b"CITIZEN-TEAR-0001";
/// Private scalar of the test authority; the golden personalisation installs its public key.
const AUTHORITY_SCALAR: [u8; 32] = [0xA7; 32];
/// "Now" of every terminal session: 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;
const DAY: u64 = 86_400;
/// Identity slot (kind 1) and emergency slot (kind 4) of the golden card.
const IDENTITY_SLOT: u8 = 0;
const EMERGENCY_SLOT: u8 = 3;
/// Credential slot that no golden state uses: a PUT there always commits.
const SCRATCH_SLOT: u8 = 15;
/// The SHA-256 trailer of the state file (CF 20 <32 bytes>).
const TRAILER_LEN: usize = 34;

/// About three per operation (22 of them).
const DEFAULT_TRIALS: usize = 66;

// ---------------------------------------------------------------------------------------
// APDUs

/// A card on `path`, its CAN known to the harness: an issued card talks through a secure
/// channel (the test's APDUs are protected by the harness, answers checked and decrypted).
fn start_card(path: impl AsRef<Path>) -> Result<VpcdCard> {
    let mut card = VpcdCard::start(path)?;
    card.set_can(CAN);
    Ok(card)
}

fn sw(rsp: &[u8]) -> u16 {
    match rsp {
        [.., a, b] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

/// Command APDU; the extended form when the data needs it. `le`: `Some(0)` = Le 00 (short,
/// 256) or 0000 (extended, 65536).
fn apdu(ins: u8, p1: u8, p2: u8, data: &[u8], le: Option<u16>) -> Vec<u8> {
    let mut a = vec![0x00, ins, p1, p2];
    let extended = data.len() > 255;
    if !data.is_empty() {
        if extended {
            a.push(0);
            a.extend_from_slice(&(data.len() as u16).to_be_bytes());
        } else {
            a.push(data.len() as u8);
        }
        a.extend_from_slice(data);
    }
    if let Some(le) = le {
        if extended {
            a.extend_from_slice(&le.to_be_bytes());
        } else if data.is_empty() && le == 0 {
            // Case 2E, Le = 0000: up to 65,536 bytes in one response.
            a.extend_from_slice(&[0, 0, 0]);
        } else {
            a.push(le as u8);
        }
    }
    a
}

fn put_data(obj: u16, data: &[u8]) -> Vec<u8> {
    let [p1, p2] = obj.to_be_bytes();
    apdu(0xDA, p1, p2, data, None)
}

fn get_data(obj: u16) -> Vec<u8> {
    let [p1, p2] = obj.to_be_bytes();
    apdu(0xCA, p1, p2, &[], Some(0))
}

fn verify_pin(pin: &[u8; 6]) -> Vec<u8> {
    apdu(0x20, 0x00, 0x81, pin, None)
}

/// PUT DATA body of a credential: 80 kind 81 record.
fn credential_body(kind: u8, record: &[u8]) -> Vec<u8> {
    let mut b = vec![0x80, 0x01, kind, 0x81];
    match record.len() {
        n if n < 0x80 => b.push(n as u8),
        n if n <= 0xFF => b.extend_from_slice(&[0x81, n as u8]),
        n => {
            b.push(0x82);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    b.extend_from_slice(record);
    b
}

fn put_credential(slot: u8, kind: u8, record: &[u8]) -> Vec<u8> {
    put_data(0x0200 | u16::from(slot), &credential_body(kind, record))
}

/// A recognisable, non-repeating record.
fn record(tag: &str, len: usize) -> Vec<u8> {
    let mut r = Vec::with_capacity(len);
    let mut x: u32 = 0x9E37_79B9
        ^ tag
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    while r.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        r.push((x >> 8) as u8);
    }
    r
}

/// One-level BER-TLV lookup with one-byte tags (card info).
fn tlv_find(mut data: &[u8], tag: u8) -> Option<&[u8]> {
    while let [t, rest @ ..] = data {
        let (len, rest) = match rest {
            [l, r @ ..] if *l < 0x80 => (usize::from(*l), r),
            [0x81, l, r @ ..] => (usize::from(*l), r),
            [0x82, a, b, r @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), r),
            _ => return None,
        };
        let value = rest.get(..len)?;
        if *t == tag {
            return Some(value);
        }
        data = &rest[len..];
    }
    None
}

/// One access-log entry as GET DATA 0104 shows it: 62 { 80 terminal id, 81 role, 82 time,
/// 83 what }.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogEntry {
    terminal_id: Vec<u8>,
    role: u8,
    time: u64,
    what: u8,
}

/// The access log from a GET DATA 0104 response (data || 9000); `None` if it does not parse.
fn parse_log(rsp: &[u8]) -> Option<Vec<LogEntry>> {
    if sw(rsp) != 0x9000 {
        return None;
    }
    let mut data = &rsp[..rsp.len() - 2];
    let mut out = Vec::new();
    while !data.is_empty() {
        let (tag, len, rest) = match data {
            [t, l, r @ ..] if *l < 0x80 => (*t, usize::from(*l), r),
            [t, 0x81, l, r @ ..] => (*t, usize::from(*l), r),
            _ => return None,
        };
        if tag != 0x62 {
            return None;
        }
        let inner = rest.get(..len)?;
        data = &rest[len..];
        out.push(LogEntry {
            terminal_id: tlv_find(inner, 0x80)?.to_vec(),
            role: *tlv_find(inner, 0x81)?.first()?,
            time: u64::from_be_bytes(tlv_find(inner, 0x82)?.try_into().ok()?),
            what: *tlv_find(inner, 0x83)?.first()?,
        });
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Terminals (issue 3): certificates by the test authority, authentication as a session.

fn authority() -> Result<SigningKey> {
    SigningKey::from_slice(&AUTHORITY_SCALAR).context("test authority key")
}

/// The authority's public key, SEC1 uncompressed: what the golden card installs (PUT DATA 0111).
fn authority_public_key() -> Result<Vec<u8>> {
    Ok(authority()?
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec())
}

/// A terminal: its key and its certificate (valid NOW - 1 day ..= NOW + 30 days).
#[derive(Debug, Clone)]
struct Terminal {
    key: SigningKey,
    body: TerminalCert,
    cert: Vec<u8>,
}

impl Terminal {
    fn new(id: &str, role: u8, access: u8, key_scalar: u8) -> Result<Self> {
        let key = SigningKey::from_slice(&[key_scalar; 32]).context("terminal key")?;
        let body = TerminalCert {
            terminal_id: id.into(),
            role,
            access,
            not_before: NOW - DAY,
            not_after: NOW + 30 * DAY,
            public_key: key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .try_into()
                .context("SEC1 point of 65 bytes")?,
        };
        let cert = terminal::sign(&body, &authority()?);
        ensure!(cert.len() <= 255, "certificate of {} bytes", cert.len());
        Ok(Terminal { key, body, cert })
    }

    /// GET CHALLENGE, PSO VERIFY CERTIFICATE, EXTERNAL AUTHENTICATE at `time`; each 9000.
    fn authenticate(&self, card: &mut VpcdCard, time: u64) -> Result<()> {
        let ea = self.challenge_and_certificate(card, time)?;
        let r = card.transmit(&ea)?;
        ensure!(
            sw(&r) == 0x9000,
            "EXTERNAL AUTHENTICATE ({}) answered {:04X}",
            self.body.terminal_id,
            sw(&r)
        );
        Ok(())
    }

    /// GET CHALLENGE and PSO VERIFY CERTIFICATE (each 9000); returns the EXTERNAL
    /// AUTHENTICATE at `time` that answers the challenge.
    fn challenge_and_certificate(&self, card: &mut VpcdCard, time: u64) -> Result<Vec<u8>> {
        let r = card.transmit(&[0x00, 0x84, 0x00, 0x00, 0x10])?;
        ensure!(
            sw(&r) == 0x9000 && r.len() == 18,
            "GET CHALLENGE answered {}",
            short_hex(&r)
        );
        let challenge = &r[..16];
        let r = card.transmit(&apdu(0x2A, 0x00, 0xBE, &self.cert, None))?;
        ensure!(
            sw(&r) == 0x9000,
            "PSO VERIFY CERTIFICATE ({}) answered {:04X}",
            self.body.terminal_id,
            sw(&r)
        );
        let sig: Signature = self
            .key
            .sign(&external_auth_message(CARD_ID, challenge, time));
        let mut data = time.to_be_bytes().to_vec();
        data.extend_from_slice(&sig.to_bytes());
        Ok(apdu(0x82, 0x00, 0x00, &data, None))
    }

    /// The digest under which the card remembers this terminal's certificate.
    fn digest(&self) -> Result<[u8; 32]> {
        Ok(terminal::digest(&self.cert, &authority_public_key()?))
    }

    /// The log entry this terminal's session at [`NOW`] leaves after reading `what`.
    fn entry(&self, what: u8) -> LogEntry {
        LogEntry {
            terminal_id: self.body.terminal_id.as_bytes().to_vec(),
            role: self.body.role,
            time: NOW,
            what,
        }
    }
}

/// A clinic: reads identity and emergency data without the PIN.
fn clinic() -> Result<Terminal> {
    Terminal::new(
        "clinic-tearing",
        role::CLINIC,
        access::READ_IDENTITY | access::READ_EMERGENCY,
        0x3C,
    )
}

/// The issuing office: writes credentials and manages the PIN on an issued card.
fn office() -> Result<Terminal> {
    Terminal::new(
        "office-tearing",
        role::ISSUING_OFFICE,
        access::WRITE_CREDENTIALS | access::PIN_MANAGEMENT,
        0x5D,
    )
}

/// Another clinic, which no golden card has met: its first EXTERNAL AUTHENTICATE records its
/// certificate's digest.
fn new_clinic() -> Result<Terminal> {
    Terminal::new(
        "clinic-tearing-new",
        role::CLINIC,
        access::READ_IDENTITY | access::READ_EMERGENCY,
        0x4E,
    )
}

/// Two more clinics met at [`NOW`] in [`Goldens::issued_full_list`], which fill the card's
/// verified-certificate list.
fn list_fillers() -> Result<[Terminal; 2]> {
    let t = |id: &str, k: u8| Terminal::new(id, role::CLINIC, access::READ_IDENTITY, k);
    Ok([t("clinic-tearing-a", 0x61)?, t("clinic-tearing-b", 0x72)?])
}

// ---------------------------------------------------------------------------------------
// Deterministic RNG (SplitMix64): trials replay from the seed.

#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn env_u64(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let v = v.trim();
            let n = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            Ok(Some(n.with_context(|| {
                format!("{name}={v:?} is not a number")
            })?))
        }
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------
// Observations: what a restarted card reports, compared with the reference runs.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Observation {
    /// (what, response) in a fixed order.
    items: Vec<(String, Vec<u8>)>,
    /// Card info tag 85; `None` when no PIN is set.
    tries: Option<u8>,
    /// Card info tag 82.
    life_cycle: Option<u8>,
}

impl Observation {
    /// Equal, ignoring the public key when the operation generates one.
    fn same_as(&self, other: &Observation, random: bool) -> bool {
        if !random {
            return self == other;
        }
        self.items.len() == other.items.len()
            && self
                .items
                .iter()
                .zip(&other.items)
                .all(|((w1, r1), (w2, r2))| w1 == w2 && (r1 == r2 || w1 == "public key"))
    }

    fn get(&self, what: &str) -> Option<&[u8]> {
        self.items
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, r)| r.as_slice())
    }

    fn diff(&self, other: &Observation) -> String {
        let mut s = String::new();
        for ((w, a), (_, b)) in self.items.iter().zip(&other.items) {
            if a != b {
                let _ = writeln!(s, "    {w}: {} vs {}", short_hex(a), short_hex(b));
            }
        }
        s
    }
}

fn short_hex(b: &[u8]) -> String {
    if b.len() <= 24 {
        hex::encode_upper(b)
    } else {
        format!(
            "{}..{} ({} bytes)",
            hex::encode_upper(&b[..12]),
            hex::encode_upper(&b[b.len() - 4..]),
            b.len()
        )
    }
}

/// Everything observable about the persistent state. The last part (after the right PIN)
/// commits twice, so call it only after the raw file has been captured.
fn observe(card: &mut VpcdCard) -> Result<(Observation, bool)> {
    let mut items = Vec::new();
    let mut ask = |card: &mut VpcdCard, what: &str, a: &[u8]| -> Result<Vec<u8>> {
        let r = card
            .transmit(a)
            .with_context(|| format!("observe {what}"))?;
        items.push((what.to_owned(), r.clone()));
        Ok(r)
    };
    ask(card, "SELECT", SELECT)?;
    let info = ask(card, "card info", &get_data(0x0101))?;
    ask(card, "public key", &get_data(0x0102))?;
    ask(card, "directory", &get_data(0x0103))?;
    ask(card, "card id", &get_data(0x0110))?;
    ask(card, "authority key", &get_data(0x0111))?;
    for slot in 0..4u8 {
        ask(
            card,
            &format!("slot {slot}"),
            &get_data(0x0200 | u16::from(slot)),
        )?;
    }
    ask(card, "PIN status", &[0x00, 0x20, 0x00, 0x81])?;
    let body = info.get(..info.len().saturating_sub(2)).unwrap_or(&[]);
    let tries = tlv_find(body, 0x85).and_then(|v| v.first().copied());
    let life_cycle = tlv_find(body, 0x82).and_then(|v| v.first().copied());
    // With the PIN, the issue 3 applet shows every slot and the access log: read them again
    // (the citizen's own reads are not logged, so this changes no log).
    let mut committed = false;
    if tries.is_some_and(|t| t > 0) {
        let r = ask(card, "VERIFY right PIN", &verify_pin(PIN))?;
        committed = sw(&r) == 0x9000;
        for slot in 0..4u8 {
            ask(
                card,
                &format!("slot {slot} (PIN)"),
                &get_data(0x0200 | u16::from(slot)),
            )?;
        }
        ask(card, "access log (PIN)", &get_data(0x0104))?;
    }
    Ok((
        Observation {
            items,
            tries,
            life_cycle,
        },
        committed,
    ))
}

// ---------------------------------------------------------------------------------------
// State files

fn tmp_path(state: &Path) -> PathBuf {
    let mut s = state.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn read_state(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Put `state` (None = blank card: no file) at `path`, with no leftover tmp file.
fn install_state(path: &Path, state: Option<&[u8]>) -> Result<()> {
    for p in [path.to_path_buf(), tmp_path(path)] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
        }
    }
    if let Some(bytes) = state {
        fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn describe_state(s: Option<&[u8]>) -> String {
    match s {
        None => "no file (blank)".to_owned(),
        Some(b) => format!("{} bytes", b.len()),
    }
}

// ---------------------------------------------------------------------------------------
// Golden states

#[derive(Debug)]
struct Goldens {
    /// (step name, torn APDU, random result, state before the step); in order.
    steps: Vec<ProvisionStep>,
    /// Personalised (credentials, PIN) but not activated: credential writes are open.
    personalised: Vec<u8>,
    /// Issued, latest time seen [`NOW`], 3 / 2 / 1 / 0 (blocked) PIN tries left.
    issued: [Vec<u8>; 4],
    /// `issued[0]` after two more terminals at [`NOW`]: its verified-certificate list is
    /// full ([`card_applet::state::VERIFIED_CERTS_MAX`]).
    issued_full_list: Vec<u8>,
}

#[derive(Debug, Clone)]
struct ProvisionStep {
    name: &'static str,
    apdu: Vec<u8>,
    random_bytes: usize,
    before: Option<Vec<u8>>,
}

/// The personalisation sequence. `random_bytes`: bytes of the state that differ from run to
/// run (the key scalar; the PIN salt and hash).
fn personalisation() -> Result<Vec<(&'static str, Vec<u8>, usize)>> {
    Ok(vec![
        ("card id", put_data(0x0110, CARD_ID), 0),
        (
            "authority key",
            put_data(0x0111, &authority_public_key()?),
            0,
        ),
        ("generate key", vec![0x00, 0x47, 0x80, 0x00, 0x00], 32),
        (
            "identity credential 300 B",
            put_credential(IDENTITY_SLOT, 1, &record("identity", 300)),
            0,
        ),
        (
            "health credential 4 KB",
            put_credential(1, 2, &record("health", 4096)),
            0,
        ),
        (
            "education credential 200 B",
            put_credential(2, 3, &record("education", 200)),
            0,
        ),
        (
            "emergency credential 150 B",
            put_credential(EMERGENCY_SLOT, 4, &record("emergency", 150)),
            0,
        ),
        ("initial PIN", apdu(0x2C, 0x02, 0x81, PIN, None), 16 + 32),
        ("CAN", put_data(0x0113, CAN), 0),
        ("ACTIVATE", vec![0x00, 0x44, 0x00, 0x00], 0),
    ])
}

fn make_goldens(dir: &Path) -> Result<Goldens> {
    let path = dir.join("golden.state");
    install_state(&path, None)?;
    let mut card = start_card(&path)?;
    ensure!(
        sw(&card.transmit(SELECT)?) == 0x9000,
        "SELECT on a blank card"
    );
    let mut steps = Vec::new();
    let mut personalised = None;
    for (name, a, random_bytes) in personalisation()? {
        let before = read_state(&path)?;
        if name == "ACTIVATE" {
            personalised = before.clone();
        }
        let r = card.transmit(&a)?;
        ensure!(
            sw(&r) == 0x9000,
            "personalisation step {name}: {:04X}",
            sw(&r)
        );
        steps.push(ProvisionStep {
            name,
            apdu: a,
            random_bytes,
            before,
        });
    }
    let personalised = personalised.context("no state before ACTIVATE")?;
    // The card meets the issuing office once at NOW: its latest time seen becomes NOW (one
    // commit), so every later session at NOW authenticates without writing (time == latest).
    card.restart()?;
    card.transmit(SELECT)?;
    office()?
        .authenticate(&mut card, NOW)
        .context("first office authentication")?;
    // And the clinic once (no read): the card remembers a terminal certificate it verified
    // (issue 8), in EXTERNAL AUTHENTICATE's commit; after this a clinic session at NOW writes
    // nothing either.
    card.restart()?;
    card.transmit(SELECT)?;
    clinic()?
        .authenticate(&mut card, NOW)
        .context("first clinic authentication")?;
    let issued3 = read_state(&path)?.context("no state file after personalisation")?;
    let mut issued = vec![issued3];
    for expect in [0x63C2u16, 0x63C1, 0x6983] {
        // A fresh session each time: a restarted card, like a real reader.
        card.restart()?;
        card.transmit(SELECT)?;
        let r = card.transmit(&verify_pin(WRONG_PIN))?;
        ensure!(
            sw(&r) == expect,
            "wrong PIN after a restart: {:04X}, want {expect:04X} (a try gained?)",
            sw(&r)
        );
        issued.push(read_state(&path)?.context("state file")?);
    }
    card.kill()?;
    install_state(&path, Some(&issued[0]))?;
    let mut card = start_card(&path)?;
    for t in list_fillers()? {
        card.restart()?;
        card.transmit(SELECT)?;
        t.authenticate(&mut card, NOW)
            .with_context(|| format!("first authentication of {}", t.body.terminal_id))?;
    }
    let issued_full_list = read_state(&path)?.context("state file")?;
    card.kill()?;
    let issued: [Vec<u8>; 4] = issued
        .try_into()
        .map_err(|_| anyhow::anyhow!("four issued states"))?;
    Ok(Goldens {
        steps,
        personalised,
        issued,
        issued_full_list,
    })
}

// ---------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinEffect {
    None,
    Wrong,
    Right,
    /// RESET RETRY COUNTER by an office: back to the full count once the new state lands.
    Reset,
}

/// Run on a freshly started card before the torn APDU; returns the torn APDU when the session
/// makes it (an EXTERNAL AUTHENTICATE signs the challenge the session got), else `None`
/// ([`Operation::torn`]).
type Session = Box<dyn Fn(&mut VpcdCard) -> Result<Option<Vec<u8>>>>;

/// One state-changing operation to tear.
struct Operation {
    name: String,
    /// The state the card starts from (None = blank card).
    start: Option<Vec<u8>>,
    /// Run on a freshly started card before the torn APDU.
    session: Session,
    /// Whether the session itself commits (deterministically): then the operation's "before"
    /// state is the file after the session, not `start`. Otherwise the reference runs check
    /// that the session leaves the file alone.
    session_writes: bool,
    /// The APDU the card is killed during (unless the session makes it).
    torn: Vec<u8>,
    /// The status word of an un-killed run.
    expect_sw: u16,
    /// The response data of an un-killed run, when it is checked (a credential read).
    expect_data: Option<Vec<u8>>,
    /// The access log before and after (checked on the reference runs and on every trial).
    log: Option<(Vec<LogEntry>, Vec<LogEntry>)>,
    /// An APDU whose un-killed run (same start, same session) leaves the one allowed
    /// intermediate state, if the operation commits twice.
    interim: Option<Vec<u8>>,
    /// Bytes of the new state that differ from run to run (0 = deterministic).
    random_bytes: usize,
    pin: PinEffect,
    /// EXTERNAL AUTHENTICATE's commit of a newly verified certificate (checked on the
    /// reference runs and on every trial).
    certs: Option<CertCommit>,
}

/// The latest time and the verified-certificate list, before and after a first
/// authentication of `terminal` at `time`.
#[derive(Debug, Clone)]
struct CertCommit {
    old: (u64, Vec<[u8; 32]>),
    new: (u64, Vec<[u8; 32]>),
    terminal: Terminal,
    time: u64,
}

impl CertCommit {
    /// `terminal`'s first authentication at `time` on the card state `start`.
    fn first(start: &[u8], terminal: Terminal, time: u64) -> Result<Self> {
        let state = card_applet::state::PersistentState::decode(start)
            .map_err(|e| anyhow::anyhow!("golden state: {e}"))?;
        let digest = terminal.digest()?;
        ensure!(
            !state.verified_certs.contains(&digest),
            "the start state already knows {}",
            terminal.body.terminal_id
        );
        let mut list = vec![digest];
        list.extend_from_slice(&state.verified_certs);
        list.truncate(card_applet::state::VERIFIED_CERTS_MAX);
        Ok(CertCommit {
            old: (state.latest_time, state.verified_certs),
            new: (state.latest_time.max(time), list),
            terminal,
            time,
        })
    }

    /// Which of old / new the state file holds, by its latest time and list; an error names
    /// a mix.
    fn outcome(&self, raw: Option<&[u8]>) -> Result<Outcome, String> {
        let raw = raw.ok_or("no state file")?;
        let s = card_applet::state::PersistentState::decode(raw)
            .map_err(|e| format!("the state file does not decode: {e}"))?;
        let got = (s.latest_time, s.verified_certs);
        if got == self.old {
            Ok(Outcome::Old)
        } else if got == self.new {
            Ok(Outcome::New)
        } else {
            Err(format!(
                "latest time {} with {} certificate digests (first known: {}) is neither the \
                 old ({}, {}) nor the new ({}, {}, the new terminal's first)",
                got.0,
                got.1.len(),
                got.1.first() == self.new.1.first(),
                self.old.0,
                self.old.1.len(),
                self.new.0,
                self.new.1.len()
            ))
        }
    }

    /// The next scan works: the terminal authenticates at its time on the restarted card
    /// (whether it was recorded or not) and reads the identity credential.
    fn next_scan(&self, card: &mut VpcdCard) -> Result<(), String> {
        let mut run = || -> Result<Vec<u8>> {
            let r = card.transmit(SELECT)?;
            ensure!(sw(&r) == 0x9000, "SELECT answered {:04X}", sw(&r));
            self.terminal.authenticate(card, self.time)?;
            card.transmit(&read_slot(IDENTITY_SLOT, true))
        };
        match run() {
            Ok(r)
                if r.get(..r.len() - 2)
                    == Some(&credential_body(1, &record("identity", 300))[..]) =>
            {
                Ok(())
            }
            Ok(r) => Err(format!("the next scan read {}", short_hex(&r))),
            Err(e) => Err(format!("the next scan failed: {e:#}")),
        }
    }
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Operation {
    /// A deterministic, non-PIN operation answering 9000 after a fixed session.
    fn simple(
        name: impl Into<String>,
        start: Option<Vec<u8>>,
        session: Session,
        torn: Vec<u8>,
    ) -> Self {
        Operation {
            name: name.into(),
            start,
            session,
            session_writes: false,
            torn,
            expect_sw: 0x9000,
            expect_data: None,
            log: None,
            interim: None,
            random_bytes: 0,
            pin: PinEffect::None,
            certs: None,
        }
    }
}

/// A session of fixed APDUs, each expected to answer 9000.
fn script(apdus: Vec<Vec<u8>>) -> Session {
    Box::new(move |card: &mut VpcdCard| {
        for a in &apdus {
            let r = card.transmit(a)?;
            ensure!(
                sw(&r) == 0x9000,
                "session APDU {} answered {:04X}",
                short_hex(a),
                sw(&r)
            );
        }
        Ok(None)
    })
}

/// SELECT, then `t` authenticates at [`NOW`] (GET CHALLENGE, PSO, EXTERNAL AUTHENTICATE),
/// then the fixed APDUs `then`, each expected to answer 9000.
///
/// Why NOW: EXTERNAL AUTHENTICATE persists latest_time_seen = max(latest, time). The issued
/// goldens already have latest = NOW (see [`make_goldens`]), so an authentication at NOW
/// writes nothing and the operation's "before" state is simply its start state; the
/// reference runs check that (see [`Operation::session_writes`]). The alternative, a later
/// time and the "before" state captured after the authentication, would make every trial's
/// session a commit of its own, outside the torn window.
fn terminal_session(t: Terminal, then: Vec<Vec<u8>>) -> Session {
    Box::new(move |card: &mut VpcdCard| {
        let r = card.transmit(SELECT)?;
        ensure!(sw(&r) == 0x9000, "SELECT answered {:04X}", sw(&r));
        t.authenticate(card, NOW)?;
        for a in &then {
            let r = card.transmit(a)?;
            ensure!(
                sw(&r) == 0x9000,
                "session APDU {} answered {:04X}",
                short_hex(a),
                sw(&r)
            );
        }
        Ok(None)
    })
}

/// SELECT, GET CHALLENGE and PSO VERIFY CERTIFICATE of `t` (a certificate the card verifies
/// now), and the EXTERNAL AUTHENTICATE at `time` as the torn APDU.
fn first_certificate_session(t: Terminal, time: u64) -> Session {
    Box::new(move |card: &mut VpcdCard| {
        let r = card.transmit(SELECT)?;
        ensure!(sw(&r) == 0x9000, "SELECT answered {:04X}", sw(&r));
        Ok(Some(t.challenge_and_certificate(card, time)?))
    })
}

/// GET DATA of a credential slot; `extended`: Le 0000 (case 2E), else short Le 00.
fn read_slot(slot: u8, extended: bool) -> Vec<u8> {
    if extended {
        get_data(0x0200 | u16::from(slot))
    } else {
        vec![0x00, 0xCA, 0x02, slot, 0x00]
    }
}

/// The operations, as a table. To add one, push an [`Operation`] with its start state, a
/// session (e.g. [`terminal_session`]), the torn APDU and its status word; the checks are
/// generic.
fn operations(g: &Goldens) -> Result<Vec<Operation>> {
    let mut ops = Vec::new();
    // Provisioning: each personalisation step, torn, from the state just before it.
    for step in &g.steps {
        ops.push(Operation {
            random_bytes: step.random_bytes,
            ..Operation::simple(
                format!("provision: {}", step.name),
                step.before.clone(),
                script(vec![SELECT.to_vec()]),
                step.apdu.clone(),
            )
        });
    }
    // Credential replacement with a large record (extended APDU), and a delete, on a
    // personalised card (writes open during personalisation).
    ops.push(Operation::simple(
        "replace health credential 4 KB",
        Some(g.personalised.clone()),
        script(vec![SELECT.to_vec()]),
        put_credential(1, 2, &record("health v2", 4000)),
    ));
    ops.push(Operation::simple(
        "delete education credential",
        Some(g.personalised.clone()),
        script(vec![SELECT.to_vec()]),
        put_data(0x0202, &[]),
    ));
    // Issued card: the office (WRITE_CREDENTIALS) replaces the 4 KB health credential
    // (extended APDU).
    ops.push(Operation::simple(
        "office: replace health 4 KB (issued)",
        Some(g.issued[0].clone()),
        terminal_session(office()?, Vec::new()),
        put_credential(1, 2, &record("health v2", 4000)),
    ));
    // Blocked card: the office (PIN_MANAGEMENT) sets a PIN again (a new salt: random).
    ops.push(Operation {
        random_bytes: 16 + 32,
        pin: PinEffect::Reset,
        ..Operation::simple(
            "office: reset PIN of a blocked card",
            Some(g.issued[3].clone()),
            terminal_session(office()?, Vec::new()),
            apdu(0x2C, 0x02, 0x81, PIN, None),
        )
    });
    // A clinic's read: its session's first read appends a log entry before the data leaves
    // the card (identity, extended Le); a later read widens that entry (emergency, short Le,
    // after an untorn identity read in the session, which commits the entry: the "before"
    // state is the file after the session).
    let clinic = clinic()?;
    ops.push(Operation {
        expect_data: Some(credential_body(1, &record("identity", 300))),
        log: Some((Vec::new(), vec![clinic.entry(access::READ_IDENTITY)])),
        ..Operation::simple(
            "clinic: read identity, log appended",
            Some(g.issued[0].clone()),
            terminal_session(clinic.clone(), Vec::new()),
            read_slot(IDENTITY_SLOT, true),
        )
    });
    ops.push(Operation {
        session_writes: true,
        expect_data: Some(credential_body(4, &record("emergency", 150))),
        log: Some((
            vec![clinic.entry(access::READ_IDENTITY)],
            vec![clinic.entry(access::READ_IDENTITY | access::READ_EMERGENCY)],
        )),
        ..Operation::simple(
            "clinic: read emergency, log widened",
            Some(g.issued[0].clone()),
            terminal_session(clinic, vec![read_slot(IDENTITY_SLOT, true)]),
            read_slot(EMERGENCY_SLOT, false),
        )
    });
    // A terminal the card has not met, at a later time: EXTERNAL AUTHENTICATE moves the
    // latest time and records the certificate's digest in one commit; with a full list the
    // oldest digest goes in the same commit. What could break: a torn commit leaving the
    // time without the digest or the digest without the time, or a corrupt list.
    let later = NOW + 60;
    for (name, start) in [
        ("new terminal: time + digest in one commit", &g.issued[0]),
        ("new terminal, full list: one commit", &g.issued_full_list),
    ] {
        let t = new_clinic()?;
        ops.push(Operation {
            certs: Some(CertCommit::first(start, t.clone(), later)?),
            ..Operation::simple(
                name,
                Some(start.clone()),
                first_certificate_session(t, later),
                Vec::new(),
            )
        });
    }
    // PIN verification on an issued card, from 3, 2 and 1 tries left.
    for (tries, expect) in [(3u8, 0x63C2u16), (1, 0x6983)] {
        ops.push(Operation {
            expect_sw: expect,
            pin: PinEffect::Wrong,
            ..Operation::simple(
                format!("wrong PIN, {tries} tries left"),
                Some(g.issued[usize::from(PIN_TRIES - tries)].clone()),
                script(vec![SELECT.to_vec()]),
                verify_pin(WRONG_PIN),
            )
        });
    }
    for tries in [3u8, 2] {
        ops.push(Operation {
            // Decrement committed, restore not yet: what a wrong PIN leaves.
            interim: Some(verify_pin(WRONG_PIN)),
            pin: PinEffect::Right,
            ..Operation::simple(
                format!("right PIN, {tries} tries left"),
                Some(g.issued[usize::from(PIN_TRIES - tries)].clone()),
                script(vec![SELECT.to_vec()]),
                verify_pin(PIN),
            )
        });
    }
    Ok(ops)
}

// ---------------------------------------------------------------------------------------
// Reference runs

#[derive(Debug)]
struct Reference {
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
    interim: Option<Option<Vec<u8>>>,
    obs_before: Observation,
    obs_after: Observation,
    obs_interim: Option<Observation>,
    /// Median latency of the torn APDU, µs.
    latency_us: u64,
    /// Kill delays are drawn from 0..=max_delay_us.
    max_delay_us: u64,
}

/// One un-killed run of `op` from its start with `torn`.
struct Run {
    /// The state file after the session, before `torn`.
    after_session: Option<Vec<u8>>,
    /// The state file after `torn`.
    after: Option<Vec<u8>>,
    rsp: Vec<u8>,
    took: Duration,
}

fn run_once(op: &Operation, torn: &[u8], path: &Path) -> Result<Run> {
    install_state(path, op.start.as_deref())?;
    let mut card = start_card(path)?;
    let made = (op.session)(&mut card)?;
    let torn = made.as_deref().unwrap_or(torn);
    let after_session = read_state(path)?;
    let t0 = Instant::now();
    let rsp = card.transmit(torn)?;
    let took = t0.elapsed();
    card.kill()?;
    Ok(Run {
        after_session,
        after: read_state(path)?,
        rsp,
        took,
    })
}

fn observe_state(state: Option<&[u8]>, path: &Path) -> Result<Observation> {
    install_state(path, state)?;
    let mut card = start_card(path)?;
    let (obs, _) = observe(&mut card)?;
    card.kill()?;
    Ok(obs)
}

/// The access log an observation read (with the PIN); `None` when it did not read one.
fn observed_log(obs: &Observation) -> Option<Option<Vec<LogEntry>>> {
    obs.get("access log (PIN)").map(parse_log)
}

fn reference(op: &Operation, dir: &Path) -> Result<Reference> {
    let path = dir.join("reference.state");
    let mut before = None;
    let mut after = None;
    let mut latencies = Vec::new();
    for run in 0..5 {
        let r = run_once(op, &op.torn, &path)?;
        ensure!(
            sw(&r.rsp) == op.expect_sw,
            "{}: reference run answered {:04X}, expected {:04X}",
            op.name,
            sw(&r.rsp),
            op.expect_sw
        );
        if let Some(want) = &op.expect_data {
            ensure!(
                r.rsp.get(..r.rsp.len() - 2) == Some(want.as_slice()),
                "{}: reference run answered {}, expected {}",
                op.name,
                short_hex(&r.rsp),
                short_hex(want)
            );
        }
        if !op.session_writes {
            ensure!(
                r.after_session == op.start,
                "{}: the session changed the state file (declare session_writes?)",
                op.name
            );
        }
        latencies.push(r.took.as_micros() as u64);
        if run == 0 {
            before = Some(r.after_session);
            after = Some(r.after);
        } else {
            ensure!(
                before.as_ref() == Some(&r.after_session),
                "{}: two sessions from the same start left different state files",
                op.name
            );
            if op.random_bytes == 0 {
                ensure!(
                    after.as_ref() == Some(&r.after),
                    "{}: two un-killed runs from the same start left different state files",
                    op.name
                );
            }
        }
    }
    let before = before.context("no reference run")?;
    let after = after.context("no reference run")?;
    latencies.sort_unstable();
    let latency_us = latencies[latencies.len() / 2];
    let interim = match &op.interim {
        Some(a) => Some(run_once(op, a, &path)?.after),
        None => None,
    };
    let obs_before = observe_state(before.as_deref(), &path)?;
    let obs_after = observe_state(after.as_deref(), &path)?;
    let obs_interim = match &interim {
        Some(s) => Some(observe_state(s.as_deref(), &path)?),
        None => None,
    };
    // The commit the operation is about holds what it should, before and after.
    if let Some(c) = &op.certs {
        for (when, state, want) in [
            ("before", &before, Outcome::Old),
            ("after", &after, Outcome::New),
        ] {
            let got = c.outcome(state.as_deref()).map_err(anyhow::Error::msg);
            ensure!(
                got.as_ref().ok() == Some(&want),
                "{}: certificate list {when}: {got:?}, expected {want:?}",
                op.name
            );
        }
    }
    // The log the operation is about is the one the card shows, before and after.
    if let Some((log_before, log_after)) = &op.log {
        for (when, obs, want) in [
            ("before", &obs_before, log_before),
            ("after", &obs_after, log_after),
        ] {
            let got = observed_log(obs);
            ensure!(
                got.as_ref() == Some(&Some(want.clone())),
                "{}: access log {when}: {got:?}, expected {want:?}",
                op.name
            );
        }
    }
    Ok(Reference {
        before,
        after,
        interim,
        obs_before,
        obs_after,
        obs_interim,
        latency_us,
        max_delay_us: (latency_us * 2).max(50),
    })
}

// ---------------------------------------------------------------------------------------
// Trials

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Old,
    Interim,
    New,
}

#[derive(Debug, Default, Clone)]
struct Tally {
    trials: usize,
    old: usize,
    interim: usize,
    new: usize,
    /// The response got out before the kill.
    answered: usize,
    /// Part of the response got out: the card died while writing it.
    partial: usize,
    /// Killed right after the send, no delay.
    immediate: usize,
    /// A FILE.tmp was left by the kill.
    tmp_left: usize,
    failed: usize,
}

struct Trial<'a> {
    n: usize,
    op: &'a Operation,
    reference: &'a Reference,
    delay_us: Option<u64>,
}

impl Trial<'_> {
    fn what(&self) -> String {
        format!(
            "trial {} [{}], kill {}",
            self.n,
            self.op.name,
            match self.delay_us {
                None => "right after the send".to_owned(),
                Some(d) => format!("after {d} µs"),
            }
        )
    }
}

/// Does `raw` count as the operation's new state?
fn is_new_file(raw: Option<&[u8]>, after: Option<&[u8]>, random_bytes: usize) -> bool {
    if random_bytes == 0 {
        return raw == after;
    }
    match (raw, after) {
        (Some(r), Some(a)) if r.len() == a.len() => {
            let differing = r.iter().zip(a).filter(|(x, y)| x != y).count();
            differing <= random_bytes + TRAILER_LEN - 2
        }
        _ => false,
    }
}

/// One trial; `Ok(Err(msg))` is a tearing failure, `Err` a harness problem.
fn run_trial(t: &Trial<'_>, path: &Path, tally: &mut Tally) -> Result<Result<Outcome, String>> {
    let op = t.op;
    let rf = t.reference;
    install_state(path, op.start.as_deref())?;
    let mut card = start_card(path)?;
    let made = (op.session)(&mut card)?;

    card.send(made.as_deref().unwrap_or(&op.torn))?;
    if let Some(d) = t.delay_us {
        // Sleep, not spin: on a 2-CPU machine a spinning test thread slowed the card's commit
        // down several-fold, and nearly every kill landed before it.
        std::thread::sleep(Duration::from_micros(d));
    }
    card.kill()?;
    let got = card.recv_after_kill_raw()?;
    let answered = got.frame;
    let partial = answered.is_none() && !got.raw.is_empty();
    if answered.is_some() {
        tally.answered += 1;
    }
    if partial {
        tally.partial += 1;
    }
    let tmp = tmp_path(path);
    let tmp_left = tmp.exists();
    if tmp_left {
        tally.tmp_left += 1;
    }
    let raw = read_state(path)?;

    // 1. It starts: the state file is never corrupt, and a leftover tmp is ignored.
    if let Err(e) = card.restart() {
        return Ok(Err(format!(
            "the card does not start after the kill (state file {}, tmp left: {tmp_left}): {e:#}",
            describe_state(raw.as_deref())
        )));
    }
    if read_state(path)? != raw {
        return Ok(Err("the card rewrote its state file at start-up".into()));
    }

    // 2. Old or new (or the allowed interim), in the file and in what the card reports.
    let (obs, committed) = observe(&mut card)?;
    let random = op.random_bytes > 0;
    let mut by_file = Vec::new();
    let mut by_card = Vec::new();
    if raw == rf.before {
        by_file.push(Outcome::Old);
    }
    if obs.same_as(&rf.obs_before, false) {
        by_card.push(Outcome::Old);
    }
    if let (Some(i), Some(oi)) = (&rf.interim, &rf.obs_interim) {
        if &raw == i {
            by_file.push(Outcome::Interim);
        }
        if obs.same_as(oi, false) {
            by_card.push(Outcome::Interim);
        }
    }
    if is_new_file(raw.as_deref(), rf.after.as_deref(), op.random_bytes) {
        by_file.push(Outcome::New);
    }
    if obs.same_as(&rf.obs_after, random) {
        by_card.push(Outcome::New);
    }
    let Some(outcome) = by_file.iter().copied().find(|o| by_card.contains(o)) else {
        let mut msg = format!(
            "MIX: the state is neither the old nor the new one (file {}: matches {by_file:?}; \
             card reports match {by_card:?})\n  vs before:\n{}  vs after:\n{}",
            describe_state(raw.as_deref()),
            obs.diff(&rf.obs_before),
            obs.diff(&rf.obs_after)
        );
        if let Some(oi) = &rf.obs_interim {
            let _ = write!(msg, "  vs interim:\n{}", obs.diff(oi));
        }
        return Ok(Err(msg));
    };
    let old_is_new = rf.before == rf.after;

    // 3. An answer (even part of one) means the card had committed: for a terminal read,
    //    data never leaves the card before its log entry is on disk.
    if partial && outcome != Outcome::New && !(old_is_new && outcome == Outcome::Old) {
        return Ok(Err(format!(
            "{} bytes of the answer got out before the kill, but the state is {outcome:?}",
            got.raw.len()
        )));
    }
    if let Some(rsp) = &answered {
        if outcome != Outcome::New && !(old_is_new && outcome == Outcome::Old) {
            return Ok(Err(format!(
                "the card answered {} before the kill, but the state is {outcome:?}",
                short_hex(rsp)
            )));
        }
        if sw(rsp) != op.expect_sw {
            return Ok(Err(format!(
                "the card answered {:04X} before the kill, expected {:04X}",
                sw(rsp),
                op.expect_sw
            )));
        }
        if let Some(want) = &op.expect_data {
            if rsp.get(..rsp.len() - 2) != Some(want.as_slice()) {
                return Ok(Err(format!(
                    "the card answered {} before the kill, expected {}",
                    short_hex(rsp),
                    short_hex(want)
                )));
            }
        }
        if random && outcome == Outcome::New {
            // A generated key that was reported is the one on the card.
            if let (Some(key), Some(now)) = (
                rsp.get(..rsp.len().saturating_sub(2)),
                obs.get("public key"),
            ) {
                if !key.is_empty() && now.get(..now.len().saturating_sub(2)) != Some(key) {
                    return Ok(Err(
                        "the public key answered before the kill is not the card's key".into(),
                    ));
                }
            }
        }
    }

    // 4. The access log: the old entries, or the new / widened entry; nothing else. (Implied
    //    by the observation match above; checked on its own so a failure says so.)
    if let Some((log_before, log_after)) = &op.log {
        let want = if outcome == Outcome::New {
            log_after
        } else {
            log_before
        };
        let got = observed_log(&obs);
        if got.as_ref() != Some(&Some(want.clone())) {
            return Ok(Err(format!(
                "access log after the restart ({outcome:?}): {got:?}, expected {want:?}"
            )));
        }
    }

    // 5. PIN tries: never gained; a wrong PIN that was answered is persisted.
    let before = rf.obs_before.tries;
    let now = obs.tries;
    let restores = matches!(op.pin, PinEffect::Right | PinEffect::Reset);
    let gained = match (before, now) {
        (Some(b), Some(n)) => n > b && !(restores && outcome == Outcome::New && n == PIN_TRIES),
        (Some(_), None) => true,
        _ => false,
    };
    if gained {
        return Ok(Err(format!(
            "a PIN try was gained: {before:?} before, {now:?} after"
        )));
    }
    if op.pin == PinEffect::None && before != now && !(before.is_none() && outcome == Outcome::New)
    {
        return Ok(Err(format!(
            "PIN tries changed by a non-PIN operation: {before:?} -> {now:?}"
        )));
    }
    if op.pin == PinEffect::Wrong {
        if let Some(rsp) = &answered {
            let want = match sw(rsp) {
                s if s & 0xFFF0 == 0x63C0 => Some((s & 0x0F) as u8),
                0x6983 => Some(0),
                _ => None,
            };
            if want.is_some() && now != want {
                return Ok(Err(format!(
                    "wrong PIN answered {:04X} but {now:?} tries are persisted",
                    sw(rsp)
                )));
            }
        }
    }
    if obs.life_cycle.is_none() {
        return Ok(Err("card info has no life-cycle byte".into()));
    }

    // 6. A newly verified certificate: the latest time and the list moved together, and the
    //    terminal's next scan works on the restarted card.
    if let Some(c) = &op.certs {
        match c.outcome(raw.as_deref()) {
            Ok(o) if o == outcome => {}
            Ok(o) => {
                return Ok(Err(format!(
                    "the certificate list reads {o:?} but the state as a whole {outcome:?}"
                )))
            }
            Err(mix) => return Ok(Err(format!("MIX in EXTERNAL AUTHENTICATE's commit: {mix}"))),
        }
        if let Err(e) = c.next_scan(&mut card) {
            return Ok(Err(format!("after the restart ({outcome:?}): {e}")));
        }
    }

    // 7. A leftover FILE.tmp is replaced by the next commit.
    if tmp_left {
        // The next scan of step 6 commits too (its read appends to the access log).
        let mut did_commit = committed || op.certs.is_some();
        if !did_commit && obs.life_cycle == Some(0x03) {
            let r = card.transmit(&put_credential(SCRATCH_SLOT, 1, b"scratch"))?;
            did_commit = sw(&r) == 0x9000;
        }
        if did_commit {
            if tmp.exists() {
                return Ok(Err(format!(
                    "{} is still there after a commit",
                    tmp.display()
                )));
            }
            card.restart()?;
            let r = card.transmit(SELECT)?;
            if sw(&r) != 0x9000 {
                return Ok(Err(format!(
                    "SELECT after the commit over a leftover tmp: {:04X}",
                    sw(&r)
                )));
            }
        }
    }
    card.kill()?;
    Ok(Ok(outcome))
}

// ---------------------------------------------------------------------------------------

#[test]
fn tearing_never_mixes_states_nor_gains_pin_tries() -> Result<()> {
    let trials = match env_u64("CIVIC_TEARING_TRIALS")? {
        Some(n) => usize::try_from(n)?,
        None => DEFAULT_TRIALS,
    };
    let seed = match env_u64("CIVIC_TEARING_SEED")? {
        Some(s) => s,
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    println!("tearing: {trials} trials, seed {seed} (replay: CIVIC_TEARING_SEED={seed})");
    let started = Instant::now();
    // On the same disk as the target dir (not a tmpfs): the commit's fsyncs take real time.
    let dir = tempfile::Builder::new()
        .prefix("civic-tearing-")
        .tempdir()
        .context("temporary directory")?;

    let goldens = make_goldens(dir.path()).context("golden states")?;
    let only = std::env::var("CIVIC_TEARING_ONLY")
        .ok()
        .filter(|f| !f.is_empty());
    let ops: Vec<Operation> = operations(&goldens)?
        .into_iter()
        .filter(|o| only.as_deref().is_none_or(|f| o.name.contains(f)))
        .collect();
    ensure!(!ops.is_empty(), "no operation named like {only:?}");
    let mut refs = Vec::new();
    for op in &ops {
        refs.push(
            reference(op, dir.path()).with_context(|| format!("reference run: {}", op.name))?,
        );
    }
    let setup_time = started.elapsed();
    println!(
        "tearing: {} operations, golden states and reference runs in {:.2} s",
        ops.len(),
        setup_time.as_secs_f64()
    );

    let mut rng = Rng(seed);
    let mut tallies: BTreeMap<usize, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    let path = dir.path().join("trial.state");
    let trials_started = Instant::now();
    for n in 0..trials {
        let i = rng.below(ops.len() as u64) as usize;
        let (op, rf) = (&ops[i], &refs[i]);
        let delay_us = if rng.below(8) == 0 {
            None
        } else {
            Some(rng.below(rf.max_delay_us + 1))
        };
        let trial = Trial {
            n,
            op,
            reference: rf,
            delay_us,
        };
        let tally = tallies.entry(i).or_default();
        tally.trials += 1;
        if delay_us.is_none() {
            tally.immediate += 1;
        }
        match run_trial(&trial, &path, tally).with_context(|| trial.what())? {
            Ok(Outcome::Old) => tally.old += 1,
            Ok(Outcome::Interim) => tally.interim += 1,
            Ok(Outcome::New) => tally.new += 1,
            Err(msg) => {
                tally.failed += 1;
                let line = format!("seed {seed}, {}: {msg}", trial.what());
                println!("tearing: FAIL {line}");
                failures.push(line);
            }
        }
    }
    let trial_time = trials_started.elapsed();

    // The table.
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\n{:<44} {:>6} {:>5} {:>7} {:>5} {:>8} {:>4} {:>6} {:>6} {:>8} {:>9} {:>5}",
        "operation",
        "trials",
        "old",
        "interim",
        "new",
        "answered",
        "part",
        "t=0",
        "tmp",
        "ref µs",
        "delay µs",
        "FAIL"
    );
    let mut total = Tally::default();
    for (i, (op, rf)) in ops.iter().zip(&refs).enumerate() {
        let t = tallies.get(&i).cloned().unwrap_or_default();
        let name = if rf.before == rf.after {
            format!("{} (old = new)", op.name)
        } else {
            op.name.clone()
        };
        let _ = writeln!(
            table,
            "{:<44} {:>6} {:>5} {:>7} {:>5} {:>8} {:>4} {:>6} {:>6} {:>8} {:>9} {:>5}",
            name,
            t.trials,
            t.old,
            if op.interim.is_some() {
                t.interim.to_string()
            } else {
                "-".into()
            },
            t.new,
            t.answered,
            t.partial,
            t.immediate,
            t.tmp_left,
            rf.latency_us,
            format!("0..={}", rf.max_delay_us),
            t.failed
        );
        total.trials += t.trials;
        total.old += t.old;
        total.interim += t.interim;
        total.new += t.new;
        total.answered += t.answered;
        total.partial += t.partial;
        total.immediate += t.immediate;
        total.tmp_left += t.tmp_left;
        total.failed += t.failed;
    }
    let _ = writeln!(
        table,
        "{:<44} {:>6} {:>5} {:>7} {:>5} {:>8} {:>4} {:>6} {:>6} {:>8} {:>9} {:>5}",
        "total",
        total.trials,
        total.old,
        total.interim,
        total.new,
        total.answered,
        total.partial,
        total.immediate,
        total.tmp_left,
        "",
        "",
        total.failed
    );
    let _ = writeln!(
        table,
        "old/new/interim: state after the restart; answered: the response got out before the \
         kill (then it must be new); part: only part of it got out (then too); t=0: killed right after the send; tmp: a FILE.tmp was left \
         by the kill; ref µs: median latency of the un-killed operation.\n\
         {trials} trials in {:.2} s ({:.1} ms each), setup {:.2} s, seed {seed}",
        trial_time.as_secs_f64(),
        trial_time.as_secs_f64() * 1000.0 / trials.max(1) as f64,
        setup_time.as_secs_f64()
    );
    println!("{table}");

    ensure!(
        failures.is_empty(),
        "{} of {trials} trials failed (seed {seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}
