//! In-process tests of the secure-messaging transport when the card is reset under a session
//! (the PC/SC runs are in tests/tests/sm_reset.rs): a transport that resets (or swaps) the
//! in-process card before a chosen command and reports it as PC/SC does
//! ([`TransportError::CardReset`] from `transmit_unless_reset`, the command not sent).

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::collections::VecDeque;

use card_applet::protocol::ins;
use card_applet::store::MemoryStore;
use card_applet::terminal::{self, TerminalCert};
use civic_reader::apdu::{ApduError, ApduMode};
use civic_reader::session::{CardError, Pin, Session, TerminalKey};
use civic_reader::sm::{CardPassword, SmTransport};
use civic_reader::terminal::Role;
use civic_reader::transport::{InProcess, Transport, TransportError};
use civic_registry::keys;
use p256::ecdsa::SigningKey;
use zeroize::Zeroizing;

const NOW: u64 = 1_790_000_000;
const CAN: &str = "135790";
const PIN: &str = "123456";

type Chip = card_applet::Card<MemoryStore, rand_core::OsRng>;

/// A reset planned before the next command with this instruction byte (protected or not),
/// optionally with another card in the reader afterwards (a feeder's power cycle).
struct Planned {
    ins: u8,
    swap: Option<Chip>,
}

/// The in-process card behind a reader that other clients may reset.
struct Resettable {
    card: Chip,
    plan: VecDeque<Planned>,
    /// (card number, INS) of every command that reached a card; the number goes up by one
    /// with each swap.
    sent: Vec<(usize, u8)>,
    card_no: usize,
    last_select: Option<Vec<u8>>,
    /// Flip a bit of the next answer that is not a bare status word (the card's own SM
    /// error, or an attacker: no reset involved).
    tamper_next: bool,
    /// Answer the next command with a plain 6988 (the card refusing the protection).
    refuse_next: bool,
}

impl Resettable {
    fn new(card: Chip) -> Self {
        Self {
            card,
            plan: VecDeque::new(),
            sent: Vec::new(),
            card_no: 0,
            last_select: None,
            tamper_next: false,
            refuse_next: false,
        }
    }

    fn reset_before(&mut self, ins: u8, swap: Option<Chip>) {
        self.plan.push_back(Planned { ins, swap });
    }

    /// Instruction bytes that reached card `no`.
    fn sent_to(&self, no: usize) -> Vec<u8> {
        self.sent
            .iter()
            .filter(|(n, _)| *n == no)
            .map(|(_, i)| *i)
            .collect()
    }

    fn send(&mut self, apdu: &[u8], report: bool) -> Result<Vec<u8>, TransportError> {
        if self.plan.front().is_some_and(|p| p.ins == apdu[1]) {
            let planned = self.plan.pop_front().unwrap();
            match planned.swap {
                Some(other) => {
                    self.card = other;
                    self.card_no += 1;
                }
                None => self.card.reset(),
            }
            if report {
                return Err(TransportError::CardReset);
            }
            // What PcscTransport does for plain `transmit`: re-select, send.
            if let Some(select) = self.last_select.clone().filter(|s| s != apdu) {
                self.sent.push((self.card_no, select[1]));
                self.card.process(&select);
            }
        }
        if apdu[1] == ins::SELECT && apdu[0] & 0x0C == 0 {
            self.last_select = Some(apdu.to_vec());
        }
        self.sent.push((self.card_no, apdu[1]));
        let mut r = self.card.process(apdu);
        if std::mem::take(&mut self.refuse_next) {
            return Ok(vec![0x69, 0x88]);
        }
        if r.len() > 2 && std::mem::take(&mut self.tamper_next) {
            r[0] ^= 0x01;
        }
        Ok(r)
    }
}

impl Transport for Resettable {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.send(apdu, false)
    }
    fn transmit_unless_reset(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.send(apdu, true)
    }
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Nested(self)))
    }
}

struct Nested<'a>(&'a mut Resettable);

impl Transport for Nested<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.send(apdu, false)
    }
    fn transmit_unless_reset(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.send(apdu, true)
    }
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Nested(&mut *self.0)))
    }
}

/// An issued card (personalised honestly through the reader's own sessions) and its
/// authority.
fn issued(card_id: &str) -> (Chip, SigningKey) {
    let authority = keys::generate();
    let mut t = SmTransport::new(InProcess::blank(), Box::new(|_| None));
    let s = Session::open(&mut t, ApduMode::Extended).unwrap();
    let mut p = s.personalise().unwrap();
    p.set_card_id(card_id).unwrap();
    p.set_authority_key(&keys::public_key_bytes(authority.verifying_key()))
        .unwrap();
    p.generate_key().unwrap();
    p.set_pin(&Pin::parse(PIN).unwrap()).unwrap();
    p.set_can(CAN).unwrap();
    drop(p.activate().unwrap());
    (t.into_inner().card, authority)
}

/// `card` with its state changed by `change` (a copy of it, another card).
fn variant(card: &Chip, change: impl FnOnce(&mut card_applet::state::PersistentState)) -> Chip {
    let mut state = card.state().clone();
    change(&mut state);
    let bytes = state.encode().unwrap().to_vec();
    card_applet::Card::with_os_rng(MemoryStore::with_state(bytes)).unwrap()
}

fn with_can(card: Chip) -> SmTransport<Resettable> {
    SmTransport::with_password(
        Resettable::new(card),
        CardPassword::Can(Zeroizing::new(CAN.to_owned())),
    )
}

fn transport_error(e: &CardError) -> &TransportError {
    match e {
        CardError::Apdu(ApduError::Transport(t)) => t,
        other => panic!("not a transport error: {other}"),
    }
}

#[test]
fn reset_before_a_protected_command_reopens_the_session_on_the_same_chip_and_sends_it_once() {
    let (card, _) = issued("CIV-TEST-0001");
    let mut t = with_can(card);
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    let key = s.public_key().unwrap();
    s.refresh_info().unwrap();
    drop(s);
    let before = t.inner().sent.len();

    t.inner_mut().reset_before(ins::GET_DATA, None);
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    let info = s.refresh_info().unwrap().clone();
    assert_eq!(info.card_id.as_deref(), Some("CIV-TEST-0001"));
    assert!(s.chip_authentication().unwrap().verify(&key));
    drop(s);
    assert_eq!((t.sessions_opened(), t.sessions_recovered()), (2, 1));
    // After the reset: SELECT, PACE (MSE + 4 GENERAL AUTHENTICATE), GET DATA of the chip key
    // for the same-chip check, then the command itself, once (plus the protected SELECT
    // that opened the second Session before it).
    let after: Vec<u8> = t.inner().sent[before..].iter().map(|(_, i)| *i).collect();
    assert_eq!(
        after,
        [
            ins::SELECT,
            ins::SELECT,
            ins::MSE,
            ins::GENERAL_AUTHENTICATE,
            ins::GENERAL_AUTHENTICATE,
            ins::GENERAL_AUTHENTICATE,
            ins::GENERAL_AUTHENTICATE,
            ins::GET_DATA,
            ins::GET_DATA
        ],
        "{after:02X?}"
    );
}

#[test]
fn terminal_authentication_cut_by_a_reset_is_reported_as_the_reset_and_not_replayed() {
    let (card, authority) = issued("CIV-TEST-0001");
    let key = keys::generate();
    let body = TerminalCert {
        terminal_id: "clinic-test".into(),
        role: Role::Clinic.byte(),
        access: Role::Clinic.access(),
        not_before: NOW - 86_400,
        not_after: NOW + 86_400,
        public_key: keys::public_key_bytes(key.verifying_key()),
    };
    let cert = terminal::sign(&body, &authority);
    let terminal = TerminalKey {
        certificate: &cert,
        terminal_id: &body.terminal_id,
        role: body.role,
        access: body.access,
        key: &key,
    };
    let mut t = with_can(card);
    // Between the card's challenge and the terminal's answer to it.
    t.inner_mut().reset_before(ins::EXTERNAL_AUTHENTICATE, None);
    let e = Session::open(&mut t, ApduMode::Extended)
        .unwrap()
        .authenticate(&terminal, NOW)
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(transport_error(&e), TransportError::ResetDuringOperation(_)),
        "{msg}"
    );
    assert!(
        msg.contains("reset during the operation") && msg.contains("6985"),
        "{msg}"
    );
    // The re-sent EXTERNAL AUTHENTICATE reached the card once (refused: no challenge); no
    // GET CHALLENGE or certificate was replayed to make it pass.
    let sent = t.inner().sent_to(0);
    let count = |i: u8| sent.iter().filter(|&&x| x == i).count();
    assert_eq!(count(ins::EXTERNAL_AUTHENTICATE), 1);
    assert_eq!(count(ins::GET_CHALLENGE), 1);
    assert_eq!(t.sessions_recovered(), 1);
}

#[test]
fn a_copy_with_the_same_id_and_can_but_its_own_chip_key_is_refused_after_a_reset() {
    let (card, _) = issued("CIV-TEST-0001");
    let copy = variant(&card, |s| {
        s.card_key = Some(Zeroizing::new(
            SigningKey::random(&mut rand_core::OsRng).to_bytes().into(),
        ));
    });
    let mut t = with_can(card);
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    s.refresh_info().unwrap();
    drop(s);
    t.inner_mut().reset_before(ins::GET_DATA, Some(copy));
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    let e = s.directory().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("not the one the operation started with"),
        "{msg}"
    );
    assert!(s.chip_authentication().is_none());
    drop(s);
    assert!(!t.in_session());
    assert_eq!(t.sessions_recovered(), 0);
    // The copy never got the command (only the recovery's SELECT, PACE and key read).
    let to_copy = t.inner().sent_to(1);
    assert_eq!(to_copy.iter().filter(|&&i| i == ins::GET_DATA).count(), 1);
}

#[test]
fn another_card_after_a_reset_is_refused_before_any_password_is_spent_on_it() {
    let (card, _) = issued("CIV-TEST-0001");
    let other = variant(&card, |s| s.card_id = Some(b"CIV-TEST-0002".to_vec()));
    let mut t = with_can(card);
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    s.refresh_info().unwrap();
    drop(s);
    t.inner_mut().reset_before(ins::GET_DATA, Some(other));
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    let e = s.refresh_info().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("another card answers now (card CIV-TEST-0001 before, CIV-TEST-0002 now)"),
        "{msg}"
    );
    drop(s);
    // Its SELECT only: no MSE or GENERAL AUTHENTICATE with the first card's CAN.
    assert_eq!(t.inner().sent_to(1), [ins::SELECT]);
    assert!(!t.in_session());
}

#[test]
fn a_card_reset_again_during_the_recovery_gets_no_second_one() {
    let (card, _) = issued("CIV-TEST-0001");
    let mut t = with_can(card);
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    s.refresh_info().unwrap();
    drop(s);
    t.inner_mut().reset_before(ins::GET_DATA, None);
    t.inner_mut().reset_before(ins::GENERAL_AUTHENTICATE, None);
    let before = t.inner().sent.len();
    let r = t.transmit(&[0x00, 0xCA, 0x01, 0x01, 0x00]);
    let e = r.unwrap_err();
    assert!(matches!(e, TransportError::ResetDuringOperation(_)), "{e}");
    assert!(e.to_string().contains("set up"), "{e}");
    assert!(!t.in_session());
    // SELECT and MSE of the one recovery, then nothing: no loop.
    assert_eq!(t.inner().sent.len() - before, 2);
    assert_eq!(t.sessions_recovered(), 0);
}

#[test]
fn a_session_opened_with_the_pin_is_not_reopened_after_a_reset() {
    let (card, _) = issued("CIV-TEST-0001");
    let mut t = SmTransport::with_password(
        Resettable::new(card),
        CardPassword::Pin(Pin::parse(PIN).unwrap()),
    );
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    s.refresh_info().unwrap();
    drop(s);
    t.inner_mut().reset_before(ins::GET_DATA, None);
    let before = t.inner().sent.len();
    let e = t.transmit(&[0x00, 0xCA, 0x01, 0x01, 0x00]).unwrap_err();
    assert!(e.to_string().contains("PIN"), "{e}");
    // Nothing was sent: the PIN is not presented again on the reader's own initiative.
    assert_eq!(t.inner().sent.len(), before);
    assert_eq!((t.sessions_opened(), t.sessions_recovered()), (1, 0));
}

#[test]
fn secure_messaging_errors_the_card_reports_are_never_retried() {
    let (card, _) = issued("CIV-TEST-0001");
    let mut t = with_can(card);
    let mut s = Session::open(&mut t, ApduMode::Extended).unwrap();
    s.refresh_info().unwrap();
    drop(s);

    // A bad MAC on the answer: the session closes with an error, no new PACE.
    t.inner_mut().tamper_next = true;
    let e = t.transmit(&[0x00, 0xCA, 0x01, 0x01, 0x00]).unwrap_err();
    assert!(matches!(e, TransportError::SecureChannel(_)), "{e}");
    assert!(!t.in_session());
    assert_eq!((t.sessions_opened(), t.sessions_recovered()), (1, 0));

    // A plain 6988 (the card refusing the protection, no reset reported): the answer is
    // returned as it is, the session closed, nothing retried.
    let s = Session::open(&mut t, ApduMode::Extended).unwrap();
    drop(s);
    assert_eq!(t.sessions_opened(), 2);
    let before = t.inner().sent.len();
    t.inner_mut().refuse_next = true;
    let r = t.transmit(&[0x00, 0xCA, 0x01, 0x01, 0x00]).unwrap();
    assert_eq!(r, [0x69, 0x88]);
    assert!(!t.in_session());
    assert_eq!(t.inner().sent.len() - before, 1);
    assert_eq!((t.sessions_opened(), t.sessions_recovered()), (2, 0));
}
