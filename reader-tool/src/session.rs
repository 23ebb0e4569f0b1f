//! Card sessions as types. A [`Session`] is opened by SELECT and moves between states only
//! by the commands that earn them: `Public` (anyone), `Terminal` (a terminal proved its
//! certificate's key), `Citizen` (the citizen's PIN), `Consented` (a terminal and the
//! citizen's PIN: consent) and `Personalising` (a blank card at the issuing office). What a
//! state may do is what its `impl` blocks offer: `read_health` exists only where the PIN was
//! given, so no code path can ask for health data before the session holds the right. The card
//! enforces the same rules (CONTRACTS.md); the types keep the reader from even trying.

use std::marker::PhantomData;

use card_applet::protocol::{
    external_auth_message, kind, object, tag, tlv, LifeCycle, Status, CREDENTIAL_SLOTS, PIN_LEN,
};
use zeroize::Zeroizing;

use crate::apdu::{exchange, ApduError, ApduMode, Command, Response, TERMINAL_CHALLENGE_LEN};
use crate::transport::Transport;

/// A failure talking to the card, with the command it happened in.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(transparent)]
    Apdu(#[from] ApduError),
    #[error("{what}: the card said {sw:04X} ({})", describe_sw(*.status, *.sw))]
    Refused {
        what: &'static str,
        status: Status,
        sw: u16,
    },
    #[error("wrong PIN: {} left", tries(*.0))]
    WrongPin(u8),
    #[error("the PIN is blocked: an issuing office must unblock it")]
    PinBlocked,
    #[error("{what}: malformed answer from the card ({why})")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    /// An answer of the wrong size where the protocol fixes it (CONTRACTS.md).
    #[error("{what}: the card answered {got} bytes where the protocol says {expected}")]
    WrongLength {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("not allowed: {what} needs {needed}")]
    MissingRight {
        what: &'static str,
        needed: &'static str,
    },
    #[error("the card refused terminal {terminal:?}: {why}")]
    TerminalRefused { terminal: String, why: String },
    #[error("this is not a blank card (life-cycle {0:?}): refusing to personalise it")]
    NotBlank(LifeCycle),
    #[error("the card is not issued yet (still in personalisation)")]
    NotIssued,
}

impl CardError {
    /// The status word the card answered, if it answered one.
    pub fn status(&self) -> Option<Status> {
        match self {
            CardError::Refused { status, .. } => Some(*status),
            CardError::WrongPin(n) => Some(Status::TriesLeft(*n)),
            CardError::PinBlocked => Some(Status::Blocked),
            CardError::MissingRight { .. } | CardError::TerminalRefused { .. } => {
                Some(Status::SecurityNotSatisfied)
            }
            _ => None,
        }
    }
}

/// The meaning of a status word; for one this reader does not know, say so instead of
/// "unknown error", which reads like the card's own diagnosis.
fn describe_sw(status: Status, sw: u16) -> &'static str {
    match (status, sw >> 8) {
        (Status::Unknown, 0x6F) => "unknown error",
        // ISO 7816-4 section 5.1.3: SW1 is 6X or 9X (not 60); anything else is not a status.
        (Status::Unknown, sw1) if !matches!(sw1 & 0xF0, 0x60 | 0x90) || sw1 == 0x60 => {
            "not a valid ISO 7816-4 status word"
        }
        (Status::Unknown, _) => "a status word this reader does not expect here",
        (s, _) => s.describe(),
    }
}

fn tries(n: u8) -> String {
    if n == 1 {
        "1 try".to_owned()
    } else {
        format!("{n} tries")
    }
}

/// A citizen PIN: exactly six ASCII digits, zeroized on drop, never printed.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let s = s.trim_end_matches(['\r', '\n']);
        if s.len() != PIN_LEN || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a PIN is exactly 6 digits");
        }
        Ok(Self(Zeroizing::new(s.to_owned())))
    }
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
    /// The digits, for the PACE password ([`crate::sm`]).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }
    /// Whether two entries of a new PIN agree.
    pub fn matches(&self, other: &Pin) -> bool {
        self.bytes() == other.bytes()
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(******)")
    }
}

/// What SELECT and GET DATA card-info report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CardInfo {
    pub version: String,
    pub card_id: Option<String>,
    #[serde(serialize_with = "ser_lcs")]
    pub life_cycle: LifeCycle,
    pub free_storage: u32,
    pub total_storage: u32,
    pub pin_tries_left: Option<u8>,
    pub credential_count: u8,
    pub has_card_key: bool,
}

fn ser_lcs<S: serde::Serializer>(l: &LifeCycle, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match l {
        LifeCycle::Personalisation => "personalisation",
        LifeCycle::Issued => "issued",
    })
}

impl CardInfo {
    fn parse(what: &'static str, d: &[u8]) -> Result<Self, CardError> {
        let bad = |why| CardError::Malformed { what, why };
        let get = |t| tlv::find(d, t).map_err(|_| bad("bad TLV"));
        let version = get(tag::VERSION)?
            .filter(|v| v.len() == 2)
            .map(|v| format!("{}.{}", v[0], v[1]))
            .ok_or(bad("no version"))?;
        let card_id = match get(tag::CARD_ID)? {
            Some(v) if !v.is_empty() => Some(
                std::str::from_utf8(v)
                    .map_err(|_| bad("card id not UTF-8"))?
                    .to_owned(),
            ),
            _ => None,
        };
        let life_cycle = get(tag::LIFE_CYCLE)?
            .and_then(|v| v.first().copied())
            .and_then(LifeCycle::from_byte)
            .ok_or(bad("unknown life-cycle state"))?;
        let u32_of = |v: Option<&[u8]>| {
            v.and_then(|v| <[u8; 4]>::try_from(v).ok())
                .map(u32::from_be_bytes)
        };
        Ok(Self {
            version,
            card_id,
            life_cycle,
            free_storage: u32_of(get(tag::FREE_STORAGE)?).ok_or(bad("no free storage"))?,
            total_storage: u32_of(get(tag::TOTAL_STORAGE)?).ok_or(bad("no total storage"))?,
            pin_tries_left: get(tag::PIN_TRIES_LEFT)?.and_then(|v| v.first().copied()),
            credential_count: get(tag::CREDENTIAL_COUNT)?
                .and_then(|v| v.first().copied())
                .unwrap_or(0),
            has_card_key: get(tag::HAS_CARD_KEY)?.and_then(|v| v.first().copied()) == Some(1),
        })
    }
}

/// One occupied credential slot.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DirEntry {
    pub slot: u8,
    pub kind: u8,
    pub length: u16,
}

/// Session states.
#[derive(Debug)]
pub struct Public;
#[derive(Debug)]
pub struct Terminal;
#[derive(Debug)]
pub struct Citizen;
#[derive(Debug)]
pub struct Consented;
#[derive(Debug)]
pub struct Personalising;

/// States in which the citizen gave the PIN: the full health record may be read.
pub trait HealthAccess {}
impl HealthAccess for Citizen {}
impl HealthAccess for Consented {}

/// What a terminal's certificate granted in this session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Grant {
    pub terminal_id: String,
    pub role: u8,
    pub access: u8,
}

impl Grant {
    pub fn has(&self, bit: u8) -> bool {
        self.access & bit == bit
    }
}

/// The terminal side of terminal authentication: its certificate and its key.
pub struct TerminalKey<'a> {
    pub certificate: &'a [u8],
    pub terminal_id: &'a str,
    pub role: u8,
    pub access: u8,
    pub key: &'a p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for TerminalKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalKey")
            .field("terminal_id", &self.terminal_id)
            .finish_non_exhaustive()
    }
}

/// One entry of the card's access log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogEntry {
    pub terminal_id: String,
    pub role: u8,
    pub time: u64,
    /// The access bits the session actually used.
    pub read: u8,
}

/// An open session with the Civic Card application.
pub struct Session<'t, S> {
    t: &'t mut dyn Transport,
    mode: ApduMode,
    info: CardInfo,
    grant: Option<Grant>,
    _state: PhantomData<S>,
}

impl<S> std::fmt::Debug for Session<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &std::any::type_name::<S>())
            .field("card_id", &self.info.card_id)
            .finish()
    }
}

impl<'t> Session<'t, Public> {
    /// SELECT the application and read its FCI.
    pub fn open(t: &'t mut dyn Transport, mode: ApduMode) -> Result<Self, CardError> {
        let r = exchange(t, &Command::select(), mode)?;
        let data = ok("SELECT", r)?;
        let fci = tlv::find(&data, tag::FCI)
            .ok()
            .flatten()
            .ok_or(CardError::Malformed {
                what: "SELECT",
                why: "no FCI template",
            })?;
        let prop =
            tlv::find(fci, tag::FCI_PROPRIETARY)
                .ok()
                .flatten()
                .ok_or(CardError::Malformed {
                    what: "SELECT",
                    why: "no proprietary FCI data",
                })?;
        let info = CardInfo::parse("SELECT", prop)?;
        Ok(Self {
            t,
            mode,
            info,
            grant: None,
            _state: PhantomData,
        })
    }

    /// Present the citizen's PIN. Consumes the session: a refused PIN leaves nothing usable.
    pub fn verify_pin(mut self, pin: &Pin) -> Result<Session<'t, Citizen>, CardError> {
        self.simple("VERIFY PIN", &Command::verify_pin(pin.bytes()))?;
        Ok(self.into_state())
    }

    /// Terminal authentication (the German eID's TA, simplified): GET CHALLENGE, the
    /// terminal's certificate for the card to check against the authority key, then the
    /// terminal's signature over the card's nonce, the card id and the terminal's time.
    pub fn authenticate(
        mut self,
        terminal: &TerminalKey<'_>,
        now: u64,
    ) -> Result<Session<'t, Terminal>, CardError> {
        use p256::ecdsa::signature::Signer;
        if self.info.life_cycle != LifeCycle::Issued {
            return Err(CardError::NotIssued);
        }
        let card_id = self.info.card_id.clone().unwrap_or_default();
        let refused = |why: String| CardError::TerminalRefused {
            terminal: terminal.terminal_id.to_owned(),
            why,
        };
        let challenge = self.simple("GET CHALLENGE", &Command::get_challenge())?;
        exact_len("GET CHALLENGE", &challenge, TERMINAL_CHALLENGE_LEN)?;
        // A refusal is 6982/6985; anything else (6581: the card could not store its state) is
        // the card's own failure, not a verdict on the terminal.
        let not_refusal = |what: &'static str, r: &Response| {
            (!matches!(
                r.status,
                Status::Ok | Status::SecurityNotSatisfied | Status::ConditionsNotSatisfied
            ))
            .then_some(CardError::Refused {
                what,
                status: r.status,
                sw: r.sw,
            })
        };
        let r = self.run(&Command::verify_certificate(terminal.certificate))?;
        if let Some(e) = not_refusal("PSO VERIFY CERTIFICATE", &r) {
            return Err(e);
        }
        if r.status != Status::Ok {
            return Err(refused(format!(
                "its certificate is not valid for this card ({:04X}: forged, expired or not \
                 signed by this card's authority)",
                r.sw
            )));
        }
        let msg = external_auth_message(card_id.as_bytes(), &challenge, now);
        let sig: p256::ecdsa::Signature = terminal.key.sign(&msg);
        let r = self.run(&Command::external_authenticate(now, &sig.to_bytes().into()))?;
        if let Some(e) = not_refusal("EXTERNAL AUTHENTICATE", &r) {
            return Err(e);
        }
        if r.status != Status::Ok {
            return Err(refused(format!(
                "it could not prove its key or its clock is behind the card's ({:04X})",
                r.sw
            )));
        }
        self.grant = Some(Grant {
            terminal_id: terminal.terminal_id.to_owned(),
            role: terminal.role,
            access: terminal.access,
        });
        Ok(self.into_state())
    }

    /// Start personalising a blank card.
    pub fn personalise(self) -> Result<Session<'t, Personalising>, CardError> {
        if self.info.life_cycle != LifeCycle::Personalisation {
            return Err(CardError::NotBlank(self.info.life_cycle));
        }
        Ok(self.into_state())
    }
}

impl<'t, S> Session<'t, S> {
    fn into_state<T>(self) -> Session<'t, T> {
        Session {
            t: self.t,
            mode: self.mode,
            info: self.info,
            grant: self.grant,
            _state: PhantomData,
        }
    }

    fn run(&mut self, cmd: &Command) -> Result<Response, CardError> {
        Ok(exchange(self.t, cmd, self.mode)?)
    }

    fn simple(&mut self, what: &'static str, cmd: &Command) -> Result<Vec<u8>, CardError> {
        let r = self.run(cmd)?;
        ok(what, r)
    }

    /// A command that needs a right: 6982 becomes a sentence naming the right.
    fn guarded(
        &mut self,
        what: &'static str,
        needed: &'static str,
        cmd: &Command,
    ) -> Result<(), CardError> {
        let r = self.run(cmd)?;
        if r.status == Status::SecurityNotSatisfied {
            return Err(CardError::MissingRight { what, needed });
        }
        ok(what, r).map(drop)
    }

    /// The chip authentication data of the secure channel's PACE-CAM run, if the transport
    /// opened one (see [`Transport::chip_authentication`]).
    pub fn chip_authentication(&self) -> Option<card_applet::sm::ChipAuthentication> {
        self.t.chip_authentication()
    }

    /// The card as SELECT last described it.
    pub fn info(&self) -> &CardInfo {
        &self.info
    }

    /// Re-read the card info object (free storage, PIN tries, ...).
    pub fn refresh_info(&mut self) -> Result<&CardInfo, CardError> {
        let d = self.simple("GET DATA card info", &Command::get_data(object::CARD_INFO))?;
        self.info = CardInfo::parse("GET DATA card info", &d)?;
        Ok(&self.info)
    }

    /// The card's public key (65-byte SEC1 point).
    pub fn public_key(&mut self) -> Result<[u8; 65], CardError> {
        let d = self.simple(
            "GET DATA card public key",
            &Command::get_data(object::CARD_PUBLIC_KEY),
        )?;
        parse_public_key("GET DATA card public key", &d)
    }

    /// The authority key installed at personalisation.
    pub fn authority_key(&mut self) -> Result<Vec<u8>, CardError> {
        self.simple(
            "GET DATA authority key",
            &Command::get_data(object::AUTHORITY_KEY),
        )
    }

    /// The occupied credential slots.
    pub fn directory(&mut self) -> Result<Vec<DirEntry>, CardError> {
        let what = "GET DATA directory";
        let d = self.simple(what, &Command::get_data(object::DIRECTORY))?;
        let bad = |why| CardError::Malformed { what, why };
        let mut out = Vec::new();
        for item in tlv::iter(&d) {
            let (t, v) = item.map_err(|_| bad("bad TLV"))?;
            if t != tag::DIRECTORY_ENTRY {
                continue;
            }
            let byte = |tg| {
                tlv::find(v, tg)
                    .ok()
                    .flatten()
                    .and_then(|x| x.first().copied())
            };
            let length = tlv::find(v, tag::LENGTH)
                .ok()
                .flatten()
                .and_then(|x| <[u8; 2]>::try_from(x).ok())
                .map(u16::from_be_bytes);
            match (byte(tag::SLOT), byte(tag::KIND), length) {
                (Some(slot), _, _) if slot >= CREDENTIAL_SLOTS => {
                    return Err(bad("a slot number beyond the card's slots"))
                }
                (Some(slot), _, _) if out.iter().any(|e: &DirEntry| e.slot == slot) => {
                    return Err(bad("a slot listed twice"))
                }
                (Some(slot), Some(kind), Some(length)) => out.push(DirEntry { slot, kind, length }),
                _ => return Err(bad("incomplete directory entry")),
            }
        }
        Ok(out)
    }

    /// The record in a credential slot (opaque to the card). The card answers with the body
    /// PUT DATA wrote: 80 kind, 81 record. Health records are not readable here: see
    /// [`Session::read_health`], which exists only once the citizen gave the PIN.
    pub fn read_record(&mut self, entry: &DirEntry) -> Result<Vec<u8>, CardError> {
        if entry.kind == kind::HEALTH {
            return Err(CardError::MissingRight {
                what: "reading the full health record",
                needed: "the citizen's PIN (consent), with a clinic terminal or alone",
            });
        }
        self.fetch_record(entry)
    }

    fn fetch_record(&mut self, entry: &DirEntry) -> Result<Vec<u8>, CardError> {
        let what = "GET DATA credential";
        let r = self.run(&Command::get_data(object::credential(entry.slot)))?;
        if r.status == Status::SecurityNotSatisfied {
            return Err(CardError::MissingRight {
                what: read_what(entry.kind),
                needed: read_needs(entry.kind),
            });
        }
        let body = ok(what, r)?;
        tlv::find(&body, tag::PUT_RECORD)
            .map_err(|_| CardError::Malformed {
                what,
                why: "bad TLV",
            })?
            .map(<[u8]>::to_vec)
            .ok_or(CardError::Malformed {
                what,
                why: "no record in the slot",
            })
    }

    /// Chip authentication: the card signs `challenge` with its on-card key; the answer is
    /// the 64-byte r||s signature (CONTRACTS.md), nothing else.
    pub fn internal_authenticate(&mut self, challenge: &[u8]) -> Result<[u8; 64], CardError> {
        let what = "INTERNAL AUTHENTICATE";
        let sig = self.simple(what, &Command::internal_authenticate(challenge))?;
        exact_len(what, &sig, 64)?;
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig);
        Ok(out)
    }

    /// PIN tries left, without presenting a PIN.
    pub fn pin_tries_left(&mut self) -> Result<u8, CardError> {
        let r = self.run(&Command::pin_status())?;
        match r.status {
            Status::Ok => Ok(card_applet::protocol::PIN_TRIES),
            Status::TriesLeft(n) if n > card_applet::protocol::PIN_TRIES => {
                Err(CardError::Malformed {
                    what: "PIN status",
                    why: "the card reports more PIN tries left than a card has",
                })
            }
            Status::TriesLeft(n) => Ok(n),
            Status::Blocked => Ok(0),
            status => Err(CardError::Refused {
                what: "PIN status",
                status,
                sw: r.sw,
            }),
        }
    }
}

impl<S: HealthAccess> Session<'_, S> {
    /// The full health record: only in states where the citizen gave the PIN.
    pub fn read_health(&mut self, entry: &DirEntry) -> Result<Vec<u8>, CardError> {
        self.fetch_record(entry)
    }
}

impl Session<'_, Citizen> {
    /// The card's access log, oldest first: which terminals read what, and when.
    pub fn access_log(&mut self) -> Result<Vec<LogEntry>, CardError> {
        let what = "GET DATA access log";
        let d = self.simple(what, &Command::get_data(object::ACCESS_LOG))?;
        let bad = |why| CardError::Malformed { what, why };
        let mut out = Vec::new();
        for item in tlv::iter(&d) {
            let (t, v) = item.map_err(|_| bad("bad TLV"))?;
            if t != tag::LOG_ENTRY {
                continue;
            }
            let field = |tg| tlv::find(v, tg).ok().flatten();
            let terminal_id = field(tag::LOG_TERMINAL)
                .and_then(|x| std::str::from_utf8(x).ok())
                .ok_or(bad("log entry without terminal id"))?
                .to_owned();
            let role = field(tag::LOG_ROLE)
                .and_then(|x| x.first().copied())
                .ok_or(bad("log entry without role"))?;
            let time = field(tag::LOG_TIME)
                .and_then(|x| <[u8; 8]>::try_from(x).ok())
                .map(u64::from_be_bytes)
                .ok_or(bad("log entry without time"))?;
            let read = field(tag::LOG_READ)
                .and_then(|x| x.first().copied())
                .ok_or(bad("log entry without what was read"))?;
            out.push(LogEntry {
                terminal_id,
                role,
                time,
                read,
            });
        }
        Ok(out)
    }
}

pub(crate) fn read_what(k: u8) -> &'static str {
    match k {
        kind::IDENTITY => "reading the identity credential",
        kind::HEALTH => "reading the full health record",
        kind::EDUCATION => "reading the education credential",
        kind::EMERGENCY => "reading the emergency data",
        _ => "reading this credential",
    }
}

pub(crate) fn read_needs(k: u8) -> &'static str {
    match k {
        kind::IDENTITY => "a terminal allowed to read identity, or the citizen's PIN",
        kind::HEALTH => "a clinic terminal and the citizen's PIN (consent), or the PIN alone",
        kind::EDUCATION => "an education terminal, or the citizen's PIN",
        kind::EMERGENCY => "a clinic terminal, or the citizen's PIN",
        _ => "the citizen's PIN",
    }
}

/// Writing credential records: offices at personalisation and afterwards.
pub trait WriteRecords {
    fn write_record(&mut self, slot: u8, kind: u8, record: &[u8]) -> Result<(), CardError>;
    fn delete_record(&mut self, slot: u8) -> Result<(), CardError>;
}

fn record_body(kind: u8, record: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(record.len() + 8);
    tlv::push(&mut body, tag::PUT_KIND, &[kind]);
    tlv::push(&mut body, tag::PUT_RECORD, record);
    body
}

const WRITE_NEEDS: &str = "an issuing-office terminal (write right)";

macro_rules! impl_write_records {
    ($state:ty) => {
        impl WriteRecords for Session<'_, $state> {
            fn write_record(&mut self, slot: u8, kind: u8, record: &[u8]) -> Result<(), CardError> {
                self.guarded(
                    "writing a credential",
                    WRITE_NEEDS,
                    &Command::put_credential(slot, record_body(kind, record)),
                )
            }
            fn delete_record(&mut self, slot: u8) -> Result<(), CardError> {
                self.guarded(
                    "deleting a credential",
                    WRITE_NEEDS,
                    &Command::put_credential(slot, Vec::new()),
                )
            }
        }
    };
}
impl_write_records!(Personalising);
impl_write_records!(Terminal);

impl<'t> Session<'t, Terminal> {
    /// What this terminal may do in this session.
    pub fn grant(&self) -> &Grant {
        // A Terminal session is only made by `authenticate`, which sets the grant.
        self.grant.as_ref().unwrap_or(&NO_GRANT)
    }

    /// The citizen consents by entering the PIN at this terminal.
    pub fn consent(mut self, pin: &Pin) -> Result<Session<'t, Consented>, CardError> {
        self.simple("VERIFY PIN", &Command::verify_pin(pin.bytes()))?;
        Ok(self.into_state())
    }
}

static NO_GRANT: Grant = Grant {
    terminal_id: String::new(),
    role: 0,
    access: 0,
};

impl<'t> Session<'t, Personalising> {
    pub fn set_card_id(&mut self, id: &str) -> Result<(), CardError> {
        self.simple(
            "PUT DATA card id",
            &Command::put_data(object::CARD_ID, id.as_bytes().to_vec()),
        )?;
        self.info.card_id = Some(id.to_owned());
        Ok(())
    }
    pub fn set_authority_key(&mut self, key: &[u8]) -> Result<(), CardError> {
        self.simple(
            "PUT DATA authority key",
            &Command::put_data(object::AUTHORITY_KEY, key.to_vec()),
        )
        .map(drop)
    }
    /// Generate the card key on the card; returns its public half.
    pub fn generate_key(&mut self) -> Result<[u8; 65], CardError> {
        let d = self.simple("GENERATE ASYMMETRIC KEY PAIR", &Command::generate_key())?;
        parse_public_key("GENERATE ASYMMETRIC KEY PAIR", &d)
    }
    pub fn set_pin(&mut self, pin: &Pin) -> Result<(), CardError> {
        self.simple("RESET RETRY COUNTER", &Command::reset_pin(pin.bytes()))
            .map(drop)
    }
    /// The card access number (CAN), the PACE password printed on the card.
    pub fn set_can(&mut self, can: &str) -> Result<(), CardError> {
        self.simple(
            "PUT DATA (card access number)",
            &Command::put_data(object::CAN, can.as_bytes().to_vec()),
        )
        .map(drop)
    }
    /// Personalisation -> issued.
    pub fn activate(mut self) -> Result<Session<'t, Public>, CardError> {
        self.simple("ACTIVATE", &Command::activate())?;
        self.refresh_info()?;
        Ok(self.into_state())
    }
}

impl Session<'_, Terminal> {
    /// Unblock: a new PIN and a full retry counter (PIN-management right).
    pub fn reset_pin(&mut self, pin: &Pin) -> Result<(), CardError> {
        self.guarded(
            "resetting the PIN",
            "an issuing-office terminal (PIN-management right)",
            &Command::reset_pin(pin.bytes()),
        )
    }
}

impl Session<'_, Citizen> {
    pub fn change_pin(&mut self, old: &Pin, new: &Pin) -> Result<(), CardError> {
        self.simple(
            "CHANGE REFERENCE DATA",
            &Command::change_pin(old.bytes(), new.bytes()),
        )
        .map(drop)
    }
}

fn ok(what: &'static str, r: Response) -> Result<Vec<u8>, CardError> {
    let pin_command = what.starts_with("VERIFY PIN") || what.starts_with("CHANGE");
    match r.status {
        Status::Ok => Ok(r.data),
        // A card has PIN_TRIES tries; a higher count is a lie, not a wrong PIN.
        Status::TriesLeft(n) if pin_command && n > card_applet::protocol::PIN_TRIES => {
            Err(CardError::Malformed {
                what,
                why: "the card reports more PIN tries left than a card has",
            })
        }
        Status::TriesLeft(n) if pin_command => Err(CardError::WrongPin(n)),
        Status::Blocked => Err(CardError::PinBlocked),
        status => Err(CardError::Refused {
            what,
            status,
            sw: r.sw,
        }),
    }
}

fn exact_len(what: &'static str, d: &[u8], expected: usize) -> Result<(), CardError> {
    if d.len() == expected {
        Ok(())
    } else {
        Err(CardError::WrongLength {
            what,
            got: d.len(),
            expected,
        })
    }
}

fn parse_public_key(what: &'static str, d: &[u8]) -> Result<[u8; 65], CardError> {
    let bad = |why| CardError::Malformed { what, why };
    let tmpl = tlv::find(d, tag::PUBLIC_KEY_TEMPLATE)
        .map_err(|_| bad("bad TLV"))?
        .ok_or(bad("no public key template"))?;
    let point = tlv::find(tmpl, tag::EC_POINT)
        .map_err(|_| bad("bad TLV"))?
        .ok_or(bad("no EC point"))?;
    <[u8; 65]>::try_from(point).map_err(|_| bad("EC point is not 65 bytes"))
}
