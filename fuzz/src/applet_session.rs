//! A sequence of APDUs, power cycles and harness-signed terminal authentications through one
//! `Card` with a `MemoryStore` and a deterministic RNG seeded from the input. Input format:
//! see `civic_fuzz::parse_session`.
//!
//! After every step: no panic; every response ends with a known status word and only
//! 9000/61xx carry data; the PIN retry counter is never above 3 (63Cx never says more); the
//! store holds exactly the serialised in-memory state, and a new card loaded from that state
//! succeeds and has the same state; once issued, a card never goes back to personalisation and
//! its card id, authority key and card key never change; the latest time seen never
//! decreases; the access log never holds more than 64 entries.
//!
//! Access control, against a model of the session kept by the harness (cleared by a
//! successful SELECT and by a reset): on an issued card, a credential read that succeeds
//! without a PIN verified in this session needs a successful EXTERNAL AUTHENTICATE in this
//! session whose certificate holds the read right of the credential's kind (health never
//! without the PIN); the access log needs the PIN; PUT DATA of a credential needs
//! WRITE_CREDENTIALS, RESET RETRY COUNTER needs PIN_MANAGEMENT. A certificate the card
//! accepts is one the authority signed; EXTERNAL AUTHENTICATE succeeds only with a verified
//! certificate, a challenge from this session and a time inside the validity and the skew;
//! a terminal read leaves its bit in the newest log entry.

use super::{
    fnv1a, hex, parse_session, snapshots, terminal_key, AuthSpec, FuzzRng, Op, Start,
    AUTH_FRESH_CHALLENGE, GET_CHALLENGE,
};
use card_applet::apdu::CommandApdu;
use card_applet::command::{cla_supported, ins_supported};
use card_applet::io::MAX_CHAIN;
use card_applet::io::MAX_RESPONSE_DATA;
use card_applet::protocol::{
    access, cla, ins, kind, object, LifeCycle, Status, ACCESS_LOG_MAX, CLOCK_SKEW,
    CREDENTIAL_SLOTS, PIN_TRIES, TERMINAL_CHALLENGE_LEN,
};
use card_applet::state::PersistentState;
use card_applet::terminal::{self, TerminalCert};
use card_applet::{Card, MemoryStore};
use p256::ecdsa::SigningKey;

type FuzzCard = Card<MemoryStore, FuzzRng>;

/// What may never change once the card is issued.
#[derive(PartialEq)]
struct Frozen {
    card_id: Option<Vec<u8>>,
    authority_key: Option<Vec<u8>>,
    card_key: Option<[u8; 32]>,
}

fn frozen(s: &PersistentState) -> Frozen {
    Frozen {
        card_id: s.card_id.clone(),
        authority_key: s.authority_key.clone(),
        card_key: s.card_key.as_deref().copied(),
    }
}

/// The harness's own view of the volatile session, updated from the commands the card
/// executed and their status words. Where the card's behaviour is uncertain from the
/// outside, the model errs towards granting (it can miss a bug, never invent one).
#[derive(Debug, Default)]
struct Model {
    /// A command chain being accumulated, mirroring `card_applet::io` (ins, p1, p2, data).
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    /// A VERIFY / CHANGE REFERENCE DATA succeeded since the session began (and no RESET
    /// RETRY COUNTER or wrong PIN since).
    pin: bool,
    /// The last certificate PSO VERIFY CERTIFICATE accepted in this session.
    cert: Option<TerminalCert>,
    /// The certificate of the last successful EXTERNAL AUTHENTICATE and its time.
    terminal: Option<(TerminalCert, u64)>,
    /// GET CHALLENGE succeeded since the last successful EXTERNAL AUTHENTICATE.
    challenge_fresh: bool,
}

impl Model {
    fn session_over(&mut self) {
        *self = Model::default();
    }

    fn rights(&self) -> u8 {
        self.terminal.as_ref().map_or(0, |(c, _)| c.access)
    }

    /// The command `raw` completes, if any, exactly as `Card::process` de-chains it.
    fn complete(&mut self, raw: &[u8]) -> Option<CommandApdu> {
        let Ok(mut apdu) = CommandApdu::parse(raw) else {
            self.chain = None;
            return None;
        };
        if !cla_supported(apdu.cla) {
            self.chain = None;
            return None;
        }
        if apdu.ins == ins::GET_RESPONSE && apdu.cla == cla::PLAIN && self.chain.is_none() {
            return None;
        }
        let chained = apdu.cla & cla::CHAINING != 0;
        match self.chain.take() {
            Some((i, p1, p2, mut data)) => {
                if (i, p1, p2) != (apdu.ins, apdu.p1, apdu.p2)
                    || data.len() + apdu.data.len() > MAX_CHAIN
                {
                    return None;
                }
                data.extend_from_slice(&apdu.data);
                if chained {
                    self.chain = Some((i, p1, p2, data));
                    return None;
                }
                Some(CommandApdu {
                    cla: apdu.cla & !cla::CHAINING,
                    ins: apdu.ins,
                    p1: apdu.p1,
                    p2: apdu.p2,
                    data,
                    ne: apdu.ne,
                    extended: apdu.extended,
                })
            }
            None if chained => {
                if ins_supported(apdu.ins)
                    && apdu.ins != ins::GET_RESPONSE
                    && apdu.data.len() <= MAX_CHAIN
                {
                    let data = std::mem::take(&mut apdu.data);
                    self.chain = Some((apdu.ins, apdu.p1, apdu.p2, data));
                }
                None
            }
            None => Some(apdu),
        }
    }
}

/// One run: the card, the model and what the harness needs to sign.
struct Run {
    card: FuzzCard,
    seed: u64,
    model: Model,
    /// The key of the last harness-signed certificate.
    terminal_key: &'static SigningKey,
    /// The last challenge the card answered in full (16 bytes + 9000).
    challenge: [u8; TERMINAL_CHALLENGE_LEN],
    issued: Option<Frozen>,
    step: usize,
}

fn check_response(resp: &[u8], step: usize) {
    assert!(
        resp.len() >= 2,
        "step {step}: response without a status word"
    );
    assert!(
        resp.len() <= MAX_RESPONSE_DATA + 2,
        "step {step}: response of {} bytes",
        resp.len()
    );
    let sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
    let status = Status::from_sw(sw);
    assert_eq!(status.sw(), sw, "step {step}: unknown status word {sw:04X}");
    if resp.len() > 2 {
        assert!(
            matches!(status, Status::Ok | Status::MoreData(_)),
            "step {step}: data with error status {sw:04X}"
        );
    }
    if let Status::TriesLeft(n) = status {
        assert!(
            n <= PIN_TRIES,
            "step {step}: 63C{n:X} above {PIN_TRIES} tries"
        );
    }
}

fn check_state(card: &FuzzCard, seed: u64, step: usize) {
    let state = card.state();
    assert!(
        state.pin_tries <= PIN_TRIES,
        "step {step}: PIN retry counter {} above {PIN_TRIES}",
        state.pin_tries
    );
    assert!(
        state.access_log.len() <= ACCESS_LOG_MAX,
        "step {step}: {} access-log entries",
        state.access_log.len()
    );
    let serialized = card.serialized_state();
    assert!(!serialized.is_empty(), "step {step}: state does not encode");
    if let Some(stored) = card.store().data() {
        assert!(
            stored == serialized.as_slice(),
            "step {step}: the store differs from the in-memory state"
        );
    }
    let reloaded = match Card::new(
        MemoryStore::with_state(serialized.to_vec()),
        FuzzRng::new(seed),
    ) {
        Ok(c) => c,
        Err(e) => panic!("step {step}: the serialised state does not load: {e}"),
    };
    assert!(
        reloaded.state() == state,
        "step {step}: reloaded state differs: {:?} vs {:?}",
        reloaded.state(),
        state
    );
}

impl Run {
    fn new(start: Start, seed: u64) -> Self {
        let snap = snapshots();
        let store = match start {
            Start::Issued => MemoryStore::with_state(snap.issued.clone()),
            Start::Personalised => MemoryStore::with_state(snap.personalised.clone()),
            Start::Blank => MemoryStore::new(),
        };
        let card = Card::new(store, FuzzRng::new(seed)).expect("snapshot loads");
        let issued = (card.state().life_cycle == LifeCycle::Issued).then(|| frozen(card.state()));
        Run {
            card,
            seed,
            model: Model::default(),
            terminal_key: terminal_key(0),
            challenge: [0; TERMINAL_CHALLENGE_LEN],
            issued,
            step: 0,
        }
    }

    fn op(&mut self, op: &Op<'_>) {
        match op {
            Op::Reset => {
                self.card.reset();
                self.model.session_over();
                self.after(None);
            }
            Op::Apdu(apdu) => self.apdu(apdu),
            Op::Cert(spec) => {
                self.terminal_key = spec.key();
                self.apdu(&spec.apdu());
            }
            Op::Auth(spec) => self.auth(spec),
        }
    }

    fn auth(&mut self, spec: &AuthSpec) {
        if spec.flags & AUTH_FRESH_CHALLENGE != 0 {
            self.apdu(&hex(GET_CHALLENGE));
        }
        let card_id = self.card.state().card_id.clone().unwrap_or_default();
        let apdu = spec.apdu(self.terminal_key, &card_id, &self.challenge);
        self.apdu(&apdu);
    }

    fn apdu(&mut self, raw: &[u8]) {
        let before = self.card.state().clone();
        let command = self.model.complete(raw);
        let resp = self.card.process(raw);
        check_response(&resp, self.step);
        if let Some(cmd) = command {
            self.check_command(&before, &cmd, &resp);
        }
        self.after(Some(&before));
    }

    /// Access-control invariants of one executed command, and the model's update.
    fn check_command(&mut self, before: &PersistentState, cmd: &CommandApdu, resp: &[u8]) {
        let step = self.step;
        let (data, sw) = resp.split_at(resp.len() - 2);
        let sw = u16::from_be_bytes([sw[0], sw[1]]);
        let ok = sw == 0x9000 || sw & 0xFF00 == 0x6100;
        let issued = before.life_cycle == LifeCycle::Issued;
        let after = self.card.state();
        let m = &mut self.model;
        let object = u16::from_be_bytes([cmd.p1, cmd.p2]);
        match cmd.ins {
            ins::SELECT if ok => m.session_over(),
            ins::VERIFY | ins::CHANGE_REFERENCE_DATA if !cmd.data.is_empty() => {
                if ok {
                    m.pin = true;
                } else if sw & 0xFFF0 == 0x63C0 {
                    m.pin = false;
                }
            }
            ins::VERIFY if ok => assert!(
                m.pin,
                "step {step}: VERIFY says the PIN is verified, but no PIN was in this session"
            ),
            ins::RESET_RETRY_COUNTER if ok => {
                assert!(
                    !issued || m.rights() & access::PIN_MANAGEMENT != 0,
                    "step {step}: RESET RETRY COUNTER without PIN_MANAGEMENT: {m:?}"
                );
                m.pin = false;
            }
            ins::GET_CHALLENGE if ok => {
                m.challenge_fresh = true;
                if sw == 0x9000 && data.len() == TERMINAL_CHALLENGE_LEN {
                    self.challenge.copy_from_slice(data);
                }
            }
            ins::PSO if ok => {
                let authority = before.authority_key.as_deref().unwrap_or_else(|| {
                    panic!("step {step}: a certificate accepted without an authority key")
                });
                let cert = match terminal::verify(&cmd.data, authority) {
                    Ok(c) => c,
                    Err(e) => panic!(
                        "step {step}: the card accepted a certificate that fails verify ({e}): {:02X?}",
                        cmd.data
                    ),
                };
                assert!(
                    cert.not_after >= before.latest_time,
                    "step {step}: accepted a certificate expired before the latest time seen"
                );
                m.cert = Some(cert);
            }
            ins::EXTERNAL_AUTHENTICATE if ok => {
                let time = u64::from_be_bytes(cmd.data[..8].try_into().expect("8 bytes"));
                let cert = m.cert.clone().unwrap_or_else(|| {
                    panic!("step {step}: EXTERNAL AUTHENTICATE without an accepted certificate")
                });
                assert!(
                    m.challenge_fresh,
                    "step {step}: EXTERNAL AUTHENTICATE without a fresh challenge"
                );
                assert!(
                    cert.valid_at(time) && time.saturating_add(CLOCK_SKEW) >= before.latest_time,
                    "step {step}: EXTERNAL AUTHENTICATE at {time} outside {cert:?} / latest {}",
                    before.latest_time
                );
                assert_eq!(
                    after.latest_time,
                    before.latest_time.max(time),
                    "step {step}: latest time seen not moved to the authenticated time"
                );
                m.challenge_fresh = false;
                m.terminal = Some((cert, time));
            }
            ins::PUT_DATA
                if ok
                    && object == object::AUTHORITY_KEY
                    && after.authority_key != before.authority_key =>
            {
                m.cert = None;
                m.terminal = None;
            }
            ins::PUT_DATA if ok && issued && credential_slot(object).is_some() => assert!(
                m.rights() & access::WRITE_CREDENTIALS != 0,
                "step {step}: PUT DATA {object:04X} without WRITE_CREDENTIALS: {m:?}"
            ),
            ins::GET_DATA if ok && issued && object == object::ACCESS_LOG => {
                assert!(m.pin, "step {step}: the access log read without the PIN")
            }
            ins::GET_DATA if ok && issued => {
                let Some(slot) = credential_slot(object) else {
                    return;
                };
                let Some(c) = &before.credentials[usize::from(slot)] else {
                    panic!("step {step}: empty slot {slot} read successfully");
                };
                let right = access::read_right(c.kind);
                if !m.pin {
                    assert!(
                        c.kind != kind::HEALTH,
                        "step {step}: health (slot {slot}) read without the PIN: {m:?}"
                    );
                    assert!(
                        m.rights() & right != 0,
                        "step {step}: slot {slot} (kind {}) read without the PIN and without \
                         the right from an EXTERNAL AUTHENTICATE of this session: {m:?}",
                        c.kind
                    );
                }
                if let Some((cert, time)) = &m.terminal {
                    let newest = after.access_log.last();
                    assert!(
                        newest.is_some_and(|e| e.terminal_id == cert.terminal_id
                            && e.role == cert.role
                            && e.time == *time
                            && e.what & right != 0),
                        "step {step}: terminal read of slot {slot} not in the newest log entry: \
                         {newest:?}"
                    );
                }
            }
            _ => {}
        }
    }

    /// The state invariants after every step.
    fn after(&mut self, before: Option<&PersistentState>) {
        let step = self.step;
        check_state(&self.card, self.seed, step);
        let state = self.card.state();
        if let Some(before) = before {
            assert!(
                state.latest_time >= before.latest_time,
                "step {step}: latest time seen went back from {} to {}",
                before.latest_time,
                state.latest_time
            );
        }
        match &self.issued {
            Some(f) => {
                assert_eq!(
                    state.life_cycle,
                    LifeCycle::Issued,
                    "step {step}: back to personalisation"
                );
                assert!(
                    frozen(state) == *f,
                    "step {step}: card id, authority key or card key changed after issue"
                );
            }
            None if state.life_cycle == LifeCycle::Issued => self.issued = Some(frozen(state)),
            None => {}
        }
        self.step += 1;
    }
}

fn credential_slot(obj: u16) -> Option<u8> {
    let [hi, lo] = obj.to_be_bytes();
    (u16::from(hi) << 8 == object::CREDENTIAL_BASE && lo < CREDENTIAL_SLOTS).then_some(lo)
}

/// Run the target on one input; panics where an invariant fails.
pub fn check(data: &[u8]) {
    let (start, ops) = parse_session(data);
    let mut run = Run::new(start, fnv1a(data));
    for op in &ops {
        run.op(op);
    }
}
