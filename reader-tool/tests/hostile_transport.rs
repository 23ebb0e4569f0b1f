//! Fast, in-process variants of the malicious-card tests (the full ones run through pcscd in
//! `tests/tests/malicious_card.rs`): a hostile [`Transport`] rewrites the in-process applet's
//! answers, and the APDU layer and sessions must end with a clear error every time. Tests
//! named after what broke are regressions for weaknesses the malicious card found.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use card_applet::protocol::{ins, object, Status};
use card_applet::terminal::{self, TerminalCert};
use civic_reader::apdu::{exchange, ApduError, ApduMode, Command, MAX_GET_RESPONSE_ROUNDS};
use civic_reader::session::{CardError, Pin, Public, Session, TerminalKey};
use civic_reader::terminal::Role;
use civic_reader::transport::{InProcess, Transport, TransportError};
use civic_registry::keys;
use p256::ecdsa::SigningKey;

const NOW: u64 = 1_790_000_000;

type Rewrite = Box<dyn FnMut(&[u8], Vec<u8>) -> Vec<u8>>;

/// The in-process applet behind a rewriting attack; counts what it was sent.
///
/// Secure messaging (issue 7): a hostile card holds its own CAN, so it terminates the secure
/// channel itself and rewrites plain answers (as `civic_e2e::hostile` does through pcscd).
/// Here the genuine applet sits behind the reader's own `SmTransport` (which learns the CAN
/// at personalisation), and the reader's session under test gets the attack's plain bytes:
/// exactly what it sees once its own SM layer has unwrapped a correctly protected answer.
struct Hostile {
    card: civic_reader::sm::SmTransport<InProcess<card_applet::store::MemoryStore>>,
    attack: Rewrite,
    sent: Vec<Vec<u8>>,
}

impl Hostile {
    fn new(attack: impl FnMut(&[u8], Vec<u8>) -> Vec<u8> + 'static) -> Self {
        Self {
            card: civic_reader::sm::SmTransport::new(InProcess::blank(), Box::new(|_| None)),
            attack: Box::new(attack),
            sent: Vec::new(),
        }
    }

    fn count(&self, ins: u8) -> usize {
        self.sent.iter().filter(|a| a[1] == ins).count()
    }
}

impl Transport for Hostile {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.sent.push(apdu.to_vec());
        // The genuine card sees the command either way (a hostile card still runs it); the
        // bytes the reader gets are the attack's. Fewer than two is passed on as it is.
        let genuine = self.card.transmit(apdu)?;
        let out = (self.attack)(apdu, genuine);
        if out.len() < 2 {
            return Err(TransportError::ShortResponse);
        }
        Ok(out)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Nested(self)))
    }
}

struct Nested<'a>(&'a mut Hostile);

impl Transport for Nested<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit(apdu)
    }
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Nested(&mut *self.0)))
    }
}

fn sw(data: &[u8], sw: [u8; 2]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.extend_from_slice(&sw);
    v
}

#[test]
fn get_response_chain_without_data_used_to_loop_forever() {
    // 61 00 to SELECT and to every GET RESPONSE, with no data: the old loop only stopped at
    // 64 KB collected, which never came.
    let mut t = Hostile::new(|apdu, genuine| match apdu[1] {
        ins::SELECT | ins::GET_RESPONSE => vec![0x61, 0x00],
        _ => genuine,
    });
    let e = exchange(&mut t, &Command::select(), ApduMode::Extended).unwrap_err();
    assert!(
        matches!(
            e,
            ApduError::EndlessChain {
                rounds: 1,
                bytes: 0,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(t.count(ins::GET_RESPONSE), 1);
}

#[test]
fn one_byte_61xx_pieces_used_to_take_65536_rounds() {
    let mut t = Hostile::new(|apdu, genuine| match apdu[1] {
        ins::GET_DATA | ins::GET_RESPONSE => vec![0x42, 0x61, 0x01],
        _ => genuine,
    });
    let e = exchange(
        &mut t,
        &Command::get_data(object::DIRECTORY),
        ApduMode::Extended,
    )
    .unwrap_err();
    assert!(matches!(e, ApduError::EndlessChain { .. }), "{e}");
    assert_eq!(t.count(ins::GET_RESPONSE), MAX_GET_RESPONSE_ROUNDS);
}

#[test]
fn chain_longer_than_ne_used_to_be_accepted() {
    // SELECT asks for 256 bytes; the card chains 3 x 200.
    let mut rounds = 0;
    let mut t = Hostile::new(move |apdu, genuine| match apdu[1] {
        ins::SELECT => vec![0x61, 200],
        ins::GET_RESPONSE => {
            rounds += 1;
            sw(
                &[0x11; 200],
                if rounds < 3 { [0x61, 200] } else { [0x90, 0] },
            )
        }
        _ => genuine,
    });
    let e = exchange(&mut t, &Command::select(), ApduMode::Extended).unwrap_err();
    assert!(
        matches!(
            e,
            ApduError::MoreThanAsked {
                got: 400,
                allowed: 256,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn get_response_piece_longer_than_its_le_is_refused() {
    let mut t = Hostile::new(|apdu, genuine| match apdu[1] {
        ins::SELECT => vec![0x61, 0x10],
        ins::GET_RESPONSE => sw(&[0x11; 0x11], [0x90, 0]),
        _ => genuine,
    });
    let e = exchange(&mut t, &Command::select(), ApduMode::Extended).unwrap_err();
    assert!(
        matches!(
            e,
            ApduError::MoreThanAsked {
                got: 17,
                allowed: 16,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn answer_longer_than_le_used_to_be_accepted() {
    let mut t = Hostile::new(|_, _| sw(&[0; 300], [0x90, 0]));
    let e = exchange(&mut t, &Command::select(), ApduMode::Short).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the card answered 300 data bytes to SELECT (0400), which allows at most 256"
    );
}

#[test]
fn data_to_a_command_without_le_used_to_be_ignored() {
    let mut t = Hostile::new(|_, _| sw(b"surprise", [0x90, 0]));
    let e = exchange(&mut t, &Command::activate(), ApduMode::Extended).unwrap_err();
    assert!(
        matches!(
            e,
            ApduError::MoreThanAsked {
                got: 8,
                allowed: 0,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn wrong_le_6cxx_used_to_be_an_unknown_error_and_is_now_retried_once() {
    // Once: retried with the Le the card names, and the genuine answer comes back.
    let mut first = true;
    let mut t = Hostile::new(move |apdu, genuine| {
        if apdu[1] == ins::SELECT && std::mem::take(&mut first) {
            vec![0x6C, (genuine.len() - 2) as u8]
        } else {
            genuine
        }
    });
    let r = exchange(&mut t, &Command::select(), ApduMode::Extended).unwrap();
    assert_eq!(r.status, Status::Ok);
    assert_eq!(t.count(ins::SELECT), 2);
    // Always: one retry, then an error (never a loop).
    let mut t = Hostile::new(|_, _| vec![0x6C, 0x20]);
    let e = exchange(&mut t, &Command::select(), ApduMode::Extended).unwrap_err();
    assert!(
        matches!(e, ApduError::WrongLengthLoop { sw: 0x6C20, .. }),
        "{e}"
    );
    assert_eq!(t.count(ins::SELECT), 2);
}

#[test]
fn answers_without_a_status_word_are_errors_not_panics() {
    for cut in [0usize, 1] {
        let mut t = Hostile::new(move |_, genuine| genuine[..cut].to_vec());
        let e = exchange(&mut t, &Command::select(), ApduMode::Extended).unwrap_err();
        assert!(
            matches!(e, ApduError::Transport(TransportError::ShortResponse)),
            "{e}"
        );
    }
}

#[test]
fn invalid_and_unknown_status_words_are_named() {
    for (sw, says) in [
        ([0x12, 0x34], "1234 (not a valid ISO 7816-4 status word)"),
        ([0x6F, 0x00], "6F00 (unknown error)"),
        (
            [0x6A, 0x99],
            "6A99 (a status word this reader does not expect here)",
        ),
    ] {
        let mut t = Hostile::new(move |_, _| sw.to_vec());
        let e = Session::open(&mut t, ApduMode::Extended).unwrap_err();
        assert_eq!(e.to_string(), format!("SELECT: the card said {says}"));
    }
}

// ---------------------------------------------------------------------------------------
// Sessions on an issued in-process card

struct Issued {
    authority: SigningKey,
}

/// Personalise the hostile card's applet honestly (the attack passes personalisation).
fn issue(t: &mut Hostile) -> Issued {
    let authority = keys::generate();
    let s = Session::open(t, ApduMode::Extended).unwrap();
    let mut p = s.personalise().unwrap();
    p.set_card_id("CIV-TEST-0001").unwrap();
    p.set_authority_key(&keys::public_key_bytes(authority.verifying_key()))
        .unwrap();
    p.generate_key().unwrap();
    p.set_pin(&Pin::parse("123456").unwrap()).unwrap();
    p.set_can("135790").unwrap();
    p.activate().unwrap();
    Issued { authority }
}

fn clinic(authority: &SigningKey) -> (Vec<u8>, TerminalCert, SigningKey) {
    let key = keys::generate();
    let body = TerminalCert {
        terminal_id: "clinic-test".into(),
        role: Role::Clinic.byte(),
        access: Role::Clinic.access(),
        not_before: NOW - 86_400,
        not_after: NOW + 86_400,
        public_key: keys::public_key_bytes(key.verifying_key()),
    };
    (terminal::sign(&body, authority), body, key)
}

fn open(t: &mut Hostile) -> Session<'_, Public> {
    Session::open(t, ApduMode::Extended).unwrap()
}

#[test]
fn short_challenge_used_to_be_signed_as_it_was() {
    let mut t = Hostile::new(|apdu, genuine| {
        if apdu[1] == ins::GET_CHALLENGE {
            sw(&genuine[..15], [0x90, 0])
        } else {
            genuine
        }
    });
    let issued = issue(&mut t);
    let (cert, body, key) = clinic(&issued.authority);
    let term = TerminalKey {
        certificate: &cert,
        terminal_id: &body.terminal_id,
        role: body.role,
        access: body.access,
        key: &key,
    };
    let e = open(&mut t).authenticate(&term, NOW).unwrap_err();
    assert!(
        matches!(
            e,
            CardError::WrongLength {
                what: "GET CHALLENGE",
                got: 15,
                expected: 16
            }
        ),
        "{e}"
    );
    // Nothing was signed for the short nonce.
    assert_eq!(t.count(ins::PSO), 0);
}

#[test]
fn internal_authenticate_answer_of_the_wrong_length_used_to_read_as_a_clone() {
    for len in [0usize, 63, 65, 70] {
        let mut t = Hostile::new(move |apdu, genuine| {
            if apdu[1] == ins::INTERNAL_AUTHENTICATE {
                let mut d = genuine[..genuine.len() - 2].to_vec();
                d.resize(len, 0x5A);
                sw(&d, [0x90, 0])
            } else {
                genuine
            }
        });
        issue(&mut t);
        let e = open(&mut t).internal_authenticate(&[7; 32]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "INTERNAL AUTHENTICATE: the card answered {len} bytes where the protocol says 64"
            )
        );
    }
}

#[test]
fn more_pin_tries_than_a_card_has_used_to_read_as_a_wrong_pin() {
    let mut t = Hostile::new(|apdu, genuine| {
        if apdu[1] == ins::VERIFY {
            vec![0x63, 0xC9]
        } else {
            genuine
        }
    });
    issue(&mut t);
    let e = open(&mut t)
        .verify_pin(&Pin::parse("000000").unwrap())
        .unwrap_err();
    assert!(matches!(e, CardError::Malformed { .. }), "{e}");
    let e = open(&mut t).pin_tries_left().unwrap_err();
    assert!(matches!(e, CardError::Malformed { .. }), "{e}");
}

#[test]
fn directory_with_a_slot_beyond_the_card_or_listed_twice_used_to_be_read() {
    // 61 { 80 slot, 81 kind, 82 length }: slot 0x20 (a card has 16), then slot 0 twice.
    let entry = |slot: u8| {
        vec![
            0x61, 0x0A, 0x80, 0x01, slot, 0x81, 0x01, 0x01, 0x82, 0x02, 0x00, 0x10,
        ]
    };
    for (dir, why) in [
        (entry(0x20), "a slot number beyond the card's slots"),
        ([entry(0), entry(0)].concat(), "a slot listed twice"),
    ] {
        let mut t = Hostile::new(move |apdu, genuine| {
            if apdu[1] == ins::GET_DATA && apdu[2..4] == object::DIRECTORY.to_be_bytes() {
                sw(&dir, [0x90, 0])
            } else {
                genuine
            }
        });
        let e = open(&mut t).directory().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("GET DATA directory: malformed answer from the card ({why})")
        );
    }
}

#[test]
fn public_key_cut_short_is_a_malformed_answer() {
    // The scan reads the card's own report of its key only when no identity credential names
    // one (bench: the scan takes the key from the credential), so this attack runs here.
    let mut t = Hostile::new(|apdu, genuine| {
        if apdu[1] == ins::GET_DATA && apdu[2..4] == object::CARD_PUBLIC_KEY.to_be_bytes() {
            sw(&genuine[..20], [0x90, 0])
        } else {
            genuine
        }
    });
    issue(&mut t);
    let e = open(&mut t).public_key().unwrap_err();
    assert!(matches!(e, CardError::Malformed { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("GET DATA card public key: malformed answer from the card"),
        "{e}"
    );
}

#[test]
fn short_apdu_answered_with_more_than_256_bytes_used_to_be_accepted() {
    // GET DATA in short mode goes out with Le 00 (256): a 300-byte answer cannot be one.
    let mut t = Hostile::new(|apdu, genuine| {
        if apdu[1] == ins::GET_DATA {
            sw(&[0x61; 300], [0x90, 0])
        } else {
            genuine
        }
    });
    let e = exchange(
        &mut t,
        &Command::get_data(object::DIRECTORY),
        ApduMode::Short,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ApduError::MoreThanAsked {
                got: 300,
                allowed: 256,
                ..
            }
        ),
        "{e}"
    );
    // The same answer to the extended form (Le 0000 = 65,536) is fine.
    exchange(
        &mut t,
        &Command::get_data(object::DIRECTORY),
        ApduMode::Extended,
    )
    .unwrap();
}

#[test]
fn generated_key_the_card_does_not_hold_used_to_be_issued() {
    use civic_reader::workflow::provision::key_card;
    // GENERATE KEY answered with a well-formed key of someone else's.
    let other = keys::public_key_bytes(keys::generate().verifying_key());
    let mut t = Hostile::new(move |apdu, genuine| {
        if apdu[1] == ins::GENERATE_KEY {
            let mut d = vec![0x7F, 0x49, 0x43, 0x86, 0x41];
            d.extend_from_slice(&other);
            sw(&d, [0x90, 0])
        } else {
            genuine
        }
    });
    let authority = keys::generate();
    let mut card = open(&mut t).personalise().unwrap();
    let e = key_card(
        &mut card,
        "CIV-TEST-0002",
        &keys::public_key_bytes(authority.verifying_key()),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("could not prove it holds the key it reported"),
        "{e:#}"
    );
    // The honest card passes the same check.
    let mut t = Hostile::new(|_, genuine| genuine);
    let mut card = open(&mut t).personalise().unwrap();
    key_card(
        &mut card,
        "CIV-TEST-0003",
        &keys::public_key_bytes(authority.verifying_key()),
    )
    .unwrap();
}

/// The in-process card, answering one byte (no status word) to GENERAL AUTHENTICATE: a card
/// pulled out of the reader while the secure channel is being set up.
struct CutDuringPace(InProcess<card_applet::store::MemoryStore>);

impl Transport for CutDuringPace {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let genuine = self.0.transmit(apdu)?;
        if apdu.get(1) == Some(&ins::GENERAL_AUTHENTICATE) {
            return Ok(vec![0x90]);
        }
        Ok(genuine)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(CutRef(self)))
    }
}

struct CutRef<'a>(&'a mut CutDuringPace);

impl Transport for CutRef<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit(apdu)
    }
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(CutRef(&mut *self.0)))
    }
}

#[test]
fn card_pulled_during_secure_channel_set_up_used_to_read_as_a_protocol_fault() {
    let mut t = Hostile::new(|_, genuine| genuine);
    issue(&mut t);
    let card = t.card.into_inner();
    let mut sm = civic_reader::sm::SmTransport::with_password(
        CutDuringPace(card),
        civic_reader::sm::CardPassword::Can(zeroize::Zeroizing::new("135790".into())),
    );
    let e = Session::open(&mut sm, ApduMode::Extended).unwrap_err();
    // The transport's own error, which the CLI explains as a card that went away.
    assert!(
        e.to_string()
            .contains("the card answered with fewer than two bytes (no status word)"),
        "{e}"
    );
}
