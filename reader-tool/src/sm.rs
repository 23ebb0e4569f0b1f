//! Secure messaging in the transport layer: [`SmTransport`] wraps any [`Transport`] and, once
//! the card in it is issued, runs PACE right after SELECT and protects every APDU after it
//! (`card_applet::sm` has the construction; notes/SECURE-MESSAGING.md the bytes). Sessions,
//! workflows and the commands above see plain APDUs and do not change.
//!
//! The password comes from a [`PasswordSource`], asked with the card id the FCI names: the
//! CLI tries `--can` / `CIVIC_CAN`, then the office's issuance book, then the citizen's PIN
//! when the command has one. A CAN the office writes to a blank card (PUT DATA 0113) is
//! remembered for the ACTIVATE that follows it.

use card_applet::apdu::{chain_pieces, CommandApdu};
use card_applet::protocol::{cla, ins, object, tag, tlv, LifeCycle};
use card_applet::sm::{self, Channel, Password, SmError};
use zeroize::Zeroizing;

use crate::session::Pin;
use crate::transport::{Transport, TransportError};

/// A PACE password the reader holds for a card.
pub enum CardPassword {
    /// The card access number printed on the card.
    Can(Zeroizing<String>),
    /// The citizen's PIN (counts against its retry counter when wrong).
    Pin(Pin),
}

impl std::fmt::Debug for CardPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CardPassword::Can(_) => "CardPassword::Can(..)",
            CardPassword::Pin(_) => "CardPassword::Pin(..)",
        })
    }
}

/// Where the reader finds the password for the card with a given id.
pub type PasswordSource = Box<dyn FnMut(&str) -> Option<CardPassword>>;

/// What the wrapper keeps between APDUs (shared by the connection and its transactions).
#[derive(Default)]
struct SmState {
    channel: Option<Channel>,
    /// The card id from the last SELECT.
    card_id: Option<String>,
    /// A CAN written to the card in this connection (personalisation).
    written_can: Option<Zeroizing<String>>,
    /// The last SELECT found an issued card and no password: say so instead of sending
    /// commands the card refuses.
    no_password: bool,
    /// PACE runs completed (for benchmarks and tests).
    sessions: u64,
    /// The open session's PACE-CAM chip authentication data (Doc 9303-11 4.4.3.5), checked
    /// by the workflow against the key the identity credential names.
    chip: Option<sm::ChipAuthentication>,
    /// The reader takes short APDUs only (`--short-apdus`): every protected APDU must be
    /// short too, see [`SmTransport::short_apdus_only`].
    short_only: bool,
}

/// A transport that speaks secure messaging with issued cards.
pub struct SmTransport<T> {
    inner: T,
    source: PasswordSource,
    state: SmState,
}

impl<T> std::fmt::Debug for SmTransport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmTransport")
            .field("session", &self.state.channel.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Transport> SmTransport<T> {
    pub fn new(inner: T, source: PasswordSource) -> Self {
        // PACE's multiplications by G use a table built once per process: start it now, so a
        // one-shot command does not wait for it in its first PACE.
        card_applet::fixed_base::build_table_in_background();
        SmTransport {
            inner,
            source,
            state: SmState::default(),
        }
    }

    /// With one fixed password for whatever card is inserted.
    pub fn with_password(inner: T, password: CardPassword) -> Self {
        let mut once = Some(password);
        let mut can = None;
        Self::new(
            inner,
            Box::new(move |_| match once.take() {
                Some(CardPassword::Can(c)) => {
                    can = Some(c.clone());
                    Some(CardPassword::Can(c))
                }
                Some(CardPassword::Pin(p)) => Some(CardPassword::Pin(p)),
                None => can.clone().map(CardPassword::Can),
            }),
        )
    }

    /// For a reader without extended lengths (`ApduMode::Short`): keep every protected APDU
    /// short. A plain command's data goes in protected links of at most
    /// [`sm::SHORT_PROTECTED_MAX`] bytes (ISO 7816-4 5.3.3 command chaining, each link
    /// protected on its own, 10.2), and it asks for at most that many bytes of answer at a
    /// time: the card keeps the rest for GET RESPONSE (61xx), which the APDU layer above
    /// already follows. Without it a 255-byte chained piece, or a 256-byte answer, grows
    /// past a short APDU once protected.
    pub fn short_apdus_only(mut self, on: bool) -> Self {
        self.state.short_only = on;
        self
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Whether a secure-messaging session is open.
    pub fn in_session(&self) -> bool {
        self.state.channel.is_some()
    }

    /// PACE runs completed on this connection.
    pub fn sessions_opened(&self) -> u64 {
        self.state.sessions
    }
}

impl<T: Transport> Transport for SmTransport<T> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        sm_transmit(&mut self.inner, &mut self.state, &mut self.source, apdu)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        let inner = self.inner.transaction()?;
        Ok(Box::new(SmTransaction {
            inner,
            state: &mut self.state,
            source: &mut self.source,
        }))
    }

    fn chip_authentication(&self) -> Option<sm::ChipAuthentication> {
        self.state.current_chip()
    }
}

impl SmState {
    /// The chip authentication data of the session now open; none once it is closed (a reset,
    /// another card): a later session's data is never checked against an earlier card.
    fn current_chip(&self) -> Option<sm::ChipAuthentication> {
        self.channel.as_ref().and(self.chip.clone())
    }
}

struct SmTransaction<'a> {
    inner: Box<dyn Transport + 'a>,
    state: &'a mut SmState,
    source: &'a mut PasswordSource,
}

impl Transport for SmTransaction<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        sm_transmit(&mut *self.inner, self.state, self.source, apdu)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        let inner = self.inner.transaction()?;
        Ok(Box::new(SmTransaction {
            inner,
            state: &mut *self.state,
            source: &mut *self.source,
        }))
    }

    fn chip_authentication(&self) -> Option<sm::ChipAuthentication> {
        self.state.current_chip()
    }
}

fn broken(e: impl std::fmt::Display) -> TransportError {
    TransportError::SecureChannel(e.to_string())
}

fn sm_transmit(
    inner: &mut dyn Transport,
    st: &mut SmState,
    source: &mut PasswordSource,
    apdu: &[u8],
) -> Result<Vec<u8>, TransportError> {
    let parsed = CommandApdu::parse(apdu).ok();
    let plain_cla = parsed.as_ref().is_some_and(|a| a.cla & !0x10 == 0);
    let is = |i: u8| plain_cla && parsed.as_ref().is_some_and(|a| a.ins == i);
    let select = is(ins::SELECT);
    let short_only = st.short_only;
    if let (Some(cmd), Some(channel), true) = (&parsed, st.channel.as_mut(), plain_cla) {
        match exchange_protected(inner, channel, cmd, short_only)? {
            Protected::Answer(plain) => return Ok(plain),
            // The card lost the session (a reset): a SELECT starts again in plain.
            Protected::Plain(_) if select => st.channel = None,
            Protected::Plain(r) => {
                st.channel = None;
                return Ok(r);
            }
            Protected::Broken(e) => {
                st.channel = None;
                return Err(e);
            }
        }
    }
    let plain_allowed = select
        || is(ins::GET_CHALLENGE)
        || is(ins::GET_RESPONSE)
        || is(ins::MSE)
        || is(ins::GENERAL_AUTHENTICATE);
    if st.no_password && !plain_allowed {
        return Err(broken(
            "this card is issued and answers only inside a secure channel: give its card \
             access number (CAN, the 6 digits printed on the card) with --can or CIVIC_CAN",
        ));
    }
    if let Some(cmd) = parsed.as_ref() {
        if is(ins::PUT_DATA) && cmd.p1p2() == object::CAN {
            st.written_can = std::str::from_utf8(&cmd.data)
                .ok()
                .map(|s| Zeroizing::new(s.to_owned()));
        }
    }
    if select {
        // A plain SELECT starts over (no session, or the card lost it): the last session's
        // chip data no longer applies. (A SELECT inside a session keeps it: same keys, same
        // chip.)
        st.chip = None;
    }
    let r = inner.transmit(apdu)?;
    let ok = r.ends_with(&[0x90, 0x00]);
    if select && ok {
        st.no_password = false;
        let (issued, card_id) = fci_info(&r[..r.len() - 2]);
        if st.card_id.is_some() && st.card_id != card_id {
            // Another card: the CAN written to the last one is not its.
            st.written_can = None;
        }
        st.card_id = card_id;
        if issued {
            open_session(inner, st, source)?;
        }
    } else if is(ins::ACTIVATE) && ok {
        open_session(inner, st, source)?;
    }
    Ok(r)
}

/// How a command sent through the open session came back.
enum Protected {
    /// The unprotected answer (data and status word).
    Answer(Vec<u8>),
    /// A plain status word: the card no longer has the session (a reset).
    Plain(Vec<u8>),
    /// No status word, or an answer that does not verify: the session is over.
    Broken(TransportError),
}

/// Send `cmd` through the session: one protected APDU, or with `short_only` as many chained
/// short links as its data needs (see [`SmTransport::short_apdus_only`]). A link before the
/// last that is not answered 9000 ends the chain with that answer. Errors of the transport
/// below are returned as they are.
fn exchange_protected(
    inner: &mut dyn Transport,
    channel: &mut Channel,
    cmd: &CommandApdu,
    short_only: bool,
) -> Result<Protected, TransportError> {
    let max = sm::SHORT_PROTECTED_MAX;
    let split;
    let links: &[CommandApdu] = if short_only && (cmd.data.len() > max || cmd.ne > max) {
        split = short_links(cmd);
        &split
    } else {
        std::slice::from_ref(cmd)
    };
    let mut links = links.iter().peekable();
    while let Some(link) = links.next() {
        let protected = match channel.protect_command(link) {
            Ok(p) => p,
            Err(e) => return Ok(Protected::Broken(broken(e))),
        };
        let r = inner.transmit(&protected)?;
        if r.len() < 2 {
            // No status word at all: the same error as without secure messaging (the session
            // is over either way).
            return Ok(Protected::Broken(TransportError::ShortResponse));
        }
        let plain = match channel.unprotect_response(&r) {
            Ok(plain) => plain,
            Err(SmError::Plain(_)) => return Ok(Protected::Plain(r)),
            Err(e) => {
                return Ok(Protected::Broken(broken(format!(
                    "{e}: the answer was altered on the way (session closed)"
                ))))
            }
        };
        if links.peek().is_none() || plain != [0x90, 0x00] {
            return Ok(Protected::Answer(plain));
        }
    }
    Err(broken("no command to send"))
}

/// `cmd` as short links: its data in pieces of at most [`sm::SHORT_PROTECTED_MAX`] bytes,
/// all but the last with the chaining bit (ISO 7816-4 5.3.3) and no Le; the last asks for at
/// most that many bytes of answer.
fn short_links(cmd: &CommandApdu) -> Vec<CommandApdu> {
    let max = sm::SHORT_PROTECTED_MAX;
    chain_pieces(&cmd.data, max)
        .map(|(piece, more)| CommandApdu {
            cla: if more {
                cmd.cla | cla::CHAINING
            } else {
                cmd.cla
            },
            ins: cmd.ins,
            p1: cmd.p1,
            p2: cmd.p2,
            data: piece.to_vec(),
            ne: if more { 0 } else { cmd.ne.min(max) },
            extended: false,
        })
        .collect()
}

/// PACE with the password for the selected card; none known: remember that.
fn open_session(
    inner: &mut dyn Transport,
    st: &mut SmState,
    source: &mut PasswordSource,
) -> Result<(), TransportError> {
    let card_id = st.card_id.clone().unwrap_or_default();
    let password = match st.written_can.clone() {
        Some(c) => Some(CardPassword::Can(c)),
        None => source(&card_id),
    };
    let Some(password) = password else {
        st.no_password = true;
        return Ok(());
    };
    let pass = match &password {
        CardPassword::Can(c) => Password::Can(c.as_bytes()),
        CardPassword::Pin(p) => Password::Pin(p.as_bytes()),
    };
    // An answer without a status word during set-up is the card going away (pulled out, reset:
    // seen in the card-removed-mid-scan fault test), as it is inside a session: the transport's
    // error, not a protocol fault of the card.
    let mut transmit = |a: &[u8]| match inner.transmit(a)? {
        r if r.len() < 2 => Err(TransportError::ShortResponse),
        r => Ok(r),
    };
    // PACE-CAM (Doc 9303-11 4.4.3.5): the run also proves the chip's static key, which the
    // workflow checks once it has read the key from the identity credential; that replaces
    // the separate INTERNAL AUTHENTICATE (a signature on the card, a verify here, one APDU).
    match sm::establish_cam(&mut transmit, &mut rand_core::OsRng, &pass) {
        Ok(done) => {
            st.channel = Some(done.channel);
            st.chip = done.chip;
            st.sessions += 1;
            Ok(())
        }
        Err(sm::PaceError::Transport(e)) => Err(e),
        Err(sm::PaceError::Refused { sw, .. }) => {
            Err(TransportError::PasswordRefused(match (&password, sw) {
                (CardPassword::Can(_), 0x6983) => format!(
                    "card {card_id} refuses its access number after too many wrong ones: \
                     remove it from the reader and insert it again ({sw:04X})"
                ),
                (CardPassword::Can(_), _) => format!(
                    "the card access number (CAN) is not the one of card {card_id} ({sw:04X})"
                ),
                (CardPassword::Pin(_), 0x6983) => "the PIN is blocked (6983)".to_owned(),
                (CardPassword::Pin(_), s) if s & 0xFFF0 == 0x63C0 => {
                    format!("wrong PIN, {} tries left ({sw:04X})", s & 0x0F)
                }
                (CardPassword::Pin(_), _) => {
                    format!("the card refused the PIN for a secure channel ({sw:04X})")
                }
            }))
        }
        Err(e @ sm::PaceError::Protocol(_)) => Err(broken(e)),
    }
}

/// (issued?, card id) from an FCI.
fn fci_info(data: &[u8]) -> (bool, Option<String>) {
    let prop = tlv::find(data, tag::FCI)
        .ok()
        .flatten()
        .and_then(|fci| tlv::find(fci, tag::FCI_PROPRIETARY).ok().flatten());
    let Some(prop) = prop else {
        return (false, None);
    };
    let issued =
        tlv::find(prop, tag::LIFE_CYCLE).ok().flatten() == Some(&[LifeCycle::Issued as u8][..]);
    let id = tlv::find(prop, tag::CARD_ID)
        .ok()
        .flatten()
        .filter(|v| !v.is_empty())
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned);
    (issued, id)
}
