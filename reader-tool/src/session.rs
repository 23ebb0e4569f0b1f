//! Card sessions as types. A [`Session`] is opened by SELECT and moves between states only
//! by the commands that earn them: `Public` (anyone), `Citizen` (PIN verified), `Office`
//! (office secret verified) and `Personalising` (blank card at the issuing office). What a
//! state may do is what its `impl` block offers, so a citizen-only call cannot be written
//! against a public session.

use std::marker::PhantomData;

use card_applet::protocol::{object, tag, tlv, LifeCycle, Status, PIN_LEN};
use zeroize::Zeroizing;

use crate::apdu::{exchange, ApduError, ApduMode, Command, Response};
use crate::transport::Transport;

/// A failure talking to the card, with the command it happened in.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(transparent)]
    Apdu(#[from] ApduError),
    #[error("{what}: the card said {sw:04X} ({})", status.describe())]
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
            _ => None,
        }
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
pub struct Citizen;
#[derive(Debug)]
pub struct Office;
#[derive(Debug)]
pub struct Personalising;

/// An open session with the Civic Card application.
pub struct Session<'t, S> {
    t: &'t mut dyn Transport,
    mode: ApduMode,
    info: CardInfo,
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
            _state: PhantomData,
        })
    }

    /// Present the citizen's PIN. Consumes the session: a refused PIN leaves nothing usable.
    pub fn verify_pin(mut self, pin: &Pin) -> Result<Session<'t, Citizen>, CardError> {
        self.simple("VERIFY PIN", &Command::verify_pin(pin.bytes()))?;
        Ok(self.into_state())
    }

    /// Present the per-card office secret (issuing office).
    pub fn office_login(mut self, secret: &[u8]) -> Result<Session<'t, Office>, CardError> {
        if self.info.life_cycle != LifeCycle::Issued {
            return Err(CardError::NotIssued);
        }
        self.simple("VERIFY office secret", &Command::verify_office(secret))?;
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
                (Some(slot), Some(kind), Some(length)) => out.push(DirEntry { slot, kind, length }),
                _ => return Err(bad("incomplete directory entry")),
            }
        }
        Ok(out)
    }

    /// The record stored in credential slot `slot` (opaque to the card). The card answers
    /// with the body PUT DATA wrote: 80 kind, 81 record.
    pub fn read_record(&mut self, slot: u8) -> Result<Vec<u8>, CardError> {
        let what = "GET DATA credential";
        let body = self.simple(what, &Command::get_data(object::credential(slot)))?;
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

    /// Chip authentication: the card signs `challenge` with its on-card key.
    pub fn internal_authenticate(&mut self, challenge: &[u8]) -> Result<Vec<u8>, CardError> {
        self.simple(
            "INTERNAL AUTHENTICATE",
            &Command::internal_authenticate(challenge),
        )
    }

    /// PIN tries left, without presenting a PIN.
    pub fn pin_tries_left(&mut self) -> Result<u8, CardError> {
        let r = self.run(&Command::pin_status())?;
        match r.status {
            Status::Ok => Ok(card_applet::protocol::PIN_TRIES),
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

macro_rules! impl_write_records {
    ($state:ty) => {
        impl WriteRecords for Session<'_, $state> {
            fn write_record(&mut self, slot: u8, kind: u8, record: &[u8]) -> Result<(), CardError> {
                self.simple(
                    "PUT DATA credential",
                    &Command::put_credential(slot, record_body(kind, record)),
                )
                .map(drop)
            }
            fn delete_record(&mut self, slot: u8) -> Result<(), CardError> {
                self.simple(
                    "PUT DATA delete credential",
                    &Command::put_credential(slot, Vec::new()),
                )
                .map(drop)
            }
        }
    };
}
impl_write_records!(Personalising);
impl_write_records!(Office);

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
    pub fn set_office_secret(&mut self, secret: &[u8]) -> Result<(), CardError> {
        self.simple(
            "PUT DATA office secret",
            &Command::put_data(object::OFFICE_SECRET, secret.to_vec()),
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
    /// Personalisation -> issued.
    pub fn activate(mut self) -> Result<Session<'t, Public>, CardError> {
        self.simple("ACTIVATE", &Command::activate())?;
        self.refresh_info()?;
        Ok(self.into_state())
    }
}

impl Session<'_, Office> {
    /// Unblock: a new PIN and a full retry counter.
    pub fn reset_pin(&mut self, pin: &Pin) -> Result<(), CardError> {
        self.simple("RESET RETRY COUNTER", &Command::reset_pin(pin.bytes()))
            .map(drop)
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
    match r.status {
        Status::Ok => Ok(r.data),
        Status::TriesLeft(n) if what.starts_with("VERIFY PIN") || what.starts_with("CHANGE") => {
            Err(CardError::WrongPin(n))
        }
        Status::Blocked => Err(CardError::PinBlocked),
        status => Err(CardError::Refused {
            what,
            status,
            sw: r.sw,
        }),
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
