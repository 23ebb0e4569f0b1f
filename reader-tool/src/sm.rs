//! Secure messaging in the transport layer: [`SmTransport`] wraps any [`Transport`] and, once
//! the card in it is issued, runs PACE right after SELECT and protects every APDU after it
//! (`card_applet::sm` has the construction; notes/SECURE-MESSAGING.md the bytes). Sessions,
//! workflows and the commands above see plain APDUs and do not change.
//!
//! The password comes from a [`PasswordSource`], asked with the card id the FCI names: the
//! CLI tries `--can` / `CIVIC_CAN`, then the office's issuance book, then the citizen's PIN
//! when the command has one. A CAN the office writes to a blank card (PUT DATA 0113) is
//! remembered for the ACTIVATE that follows it.
//!
//! # A reset under the session
//! Another PC/SC client may reset the card between two of our APDUs (it cannot inside our
//! transaction: pcscd holds its connect until the transaction ends). The reset wipes the
//! card's session keys and SSC, its selection, terminal and PIN verification. When the
//! transport reports that the card was reset *before* a protected command reached it
//! ([`TransportError::CardReset`]: the command was not sent, so sending it again is safe),
//! the wrapper re-establishes the session once and sends the command again (`recover`):
//! - only after a reset the transport reported: an SM error the card itself reports (a bad
//!   MAC, a plain 6988) still closes the session with an error, never a retry;
//! - only for a session opened with the CAN: PACE with the PIN is the citizen presenting the
//!   PIN (the card marks it verified), which the reader does not repeat on its own;
//! - only with the same chip: the SELECT must name the same card id (before any password is
//!   spent), and the new PACE-CAM run and the old one must both verify against the key the
//!   card reports (GET DATA, inside the new session). PACE-CAM data verifies against one key
//!   only (`PK_Map,IC = CA_IC * PK_IC`), so both runs proved the same chip key, and the
//!   workflow's check of the current run against the identity credential's key covers both;
//!   another card, or a copy with the same id and CAN but its own key, is refused;
//! - at most once per command: a reset during the recovery, or of the re-sent command, ends
//!   it with an error;
//! - the state the operation built (terminal authentication, PIN) is not rebuilt: once a
//!   session was recovered, the card's 6982 / 6985 becomes an error that names the reset
//!   (until the next SELECT starts an operation over), instead of "missing right".

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
    /// The plain SELECT that found the card of the open session, and the CAN the session was
    /// opened with (`None` for the PIN): what re-establishing it after a reset needs.
    select: Option<Vec<u8>>,
    session_can: Option<Zeroizing<String>>,
    /// The open session was re-established after a reset since the last SELECT: terminal
    /// and PIN verification are gone, so the card's 6982/6985 is reported as the reset.
    recovered: bool,
    /// Sessions re-established after a reset (for tests).
    recoveries: u64,
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

    /// Sessions re-established after the card was reset under them (see the module docs).
    pub fn sessions_recovered(&self) -> u64 {
        self.state.recoveries
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
    if let (Some(cmd), true, true) = (&parsed, st.channel.is_some(), plain_cla) {
        match protected_exchange(inner, st, cmd, select) {
            // The card was reset before the command reached it; a SELECT starts an
            // operation over anyway: send it in plain below (a new session follows).
            Err(TransportError::CardReset) if select => st.channel = None,
            Err(TransportError::CardReset) => {
                st.channel = None;
                return recover(inner, st, cmd);
            }
            Ok(Some(plain)) => {
                if select && plain.ends_with(&[0x90, 0x00]) {
                    st.recovered = false;
                }
                return Ok(plain);
            }
            Ok(None) => {}
            Err(e) => return Err(e),
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
        st.recovered = false;
        st.select = Some(apdu.to_vec());
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
    st.session_can = match &password {
        CardPassword::Can(c) => Some(c.clone()),
        CardPassword::Pin(_) => None,
    };
    // An answer without a status word during set-up is the card going away (pulled out, reset:
    // seen in the card-removed-mid-scan fault test), as it is inside a session: the transport's
    // error, not a protocol fault of the card.
    // A reset in the middle of PACE would have the transport re-select and send a later
    // step, which the card refuses as if the password were wrong: have it reported instead.
    let mut transmit = |a: &[u8]| match inner.transmit_unless_reset(a) {
        Err(TransportError::CardReset) => Err(TransportError::ResetDuringOperation(
            "it happened while the secure channel was being set up; run the command again"
                .to_owned(),
        )),
        Err(e) => Err(e),
        Ok(r) if r.len() < 2 => Err(TransportError::ShortResponse),
        Ok(r) => Ok(r),
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

/// One command under the open session: `Some(answer)` unprotected, `None` when the card
/// answered a SELECT in plain (it lost the session without the transport seeing a reset:
/// the SELECT goes again in plain), [`TransportError::CardReset`] when the transport saw the
/// card reset before the command (or one of its links) reached it (the session is gone).
///
/// With `short_only` the command goes as many chained short links as its data needs (see
/// [`SmTransport::short_apdus_only`]); a link before the last that is not answered 9000 ends
/// the chain with that answer.
fn protected_exchange(
    inner: &mut dyn Transport,
    st: &mut SmState,
    cmd: &CommandApdu,
    select: bool,
) -> Result<Option<Vec<u8>>, TransportError> {
    let max = sm::SHORT_PROTECTED_MAX;
    let split;
    let links: &[CommandApdu] = if st.short_only && (cmd.data.len() > max || cmd.ne > max) {
        split = short_links(cmd);
        &split
    } else {
        std::slice::from_ref(cmd)
    };
    let Some(channel) = st.channel.as_mut() else {
        return Ok(None);
    };
    let mut links = links.iter().peekable();
    let (r, unprotected) = loop {
        let Some(link) = links.next() else {
            return Err(broken("no command to send"));
        };
        let protected = channel.protect_command(link).map_err(broken)?;
        let r = inner.transmit_unless_reset(&protected)?;
        if r.len() < 2 {
            // No status word at all: the same error as without secure messaging (the session
            // is over either way).
            st.channel = None;
            return Err(TransportError::ShortResponse);
        }
        let unprotected = channel.unprotect_response(&r);
        if links.peek().is_some() && matches!(unprotected.as_deref(), Ok([0x90, 0x00])) {
            continue;
        }
        break (r, unprotected);
    };
    match unprotected {
        Ok(plain) => {
            let sw = match plain.as_slice() {
                [.., sw1, sw2] => u16::from_be_bytes([*sw1, *sw2]),
                _ => 0,
            };
            if st.recovered && matches!(sw, 0x6982 | 0x6985) {
                return Err(TransportError::ResetDuringOperation(format!(
                    "the secure channel was re-established, but the terminal authentication \
                     and PIN verification the card had granted were lost with the reset (the \
                     card answered {sw:04X}); run the command again"
                )));
            }
            Ok(Some(plain))
        }
        // The card lost the session (a reset): a SELECT starts again in plain.
        Err(SmError::Plain(_)) if select => {
            st.channel = None;
            Ok(None)
        }
        // Any other status in plain (6988: the card refused the protection) is the card's
        // own answer: the session is closed and the answer returned, never retried.
        Err(SmError::Plain(_)) => {
            st.channel = None;
            Ok(Some(r))
        }
        Err(e) => {
            st.channel = None;
            Err(broken(format!(
                "{e}: the answer was altered on the way (session closed)"
            )))
        }
    }
}

/// The card was reset before `cmd` reached it, inside a session: open the session again on
/// the same chip with the same CAN and send `cmd` once more (module docs: when and why).
fn recover(
    inner: &mut dyn Transport,
    st: &mut SmState,
    cmd: &CommandApdu,
) -> Result<Vec<u8>, TransportError> {
    let lost = |why: &str| TransportError::ResetDuringOperation(why.to_owned());
    let again = |e: TransportError| match e {
        TransportError::CardReset => lost(
            "it was reset again while the secure channel was being re-established; giving up \
             (is another application resetting it?)",
        ),
        e => e,
    };
    // Whatever happens below, the old session's chip data no longer describes an open
    // session.
    let old_chip = st.chip.take();
    let (Some(select), Some(can)) = (st.select.clone(), st.session_can.clone()) else {
        return Err(lost(
            "the secure channel was opened with the citizen's PIN, which the reader does not \
             present again on its own; run the command again",
        ));
    };
    let r = inner.transmit_unless_reset(&select).map_err(again)?;
    if !r.ends_with(&[0x90, 0x00]) {
        return Err(lost("the application cannot be selected again"));
    }
    let (issued, card_id) = fci_info(&r[..r.len() - 2]);
    // (A session opened by ACTIVATE began on a blank card whose id the SELECT did not name:
    // the chip check below decides alone.)
    if !issued {
        return Err(lost(
            "the card in the reader no longer reports itself issued: refusing to go on",
        ));
    }
    if st.card_id.is_some() && card_id != st.card_id {
        let named = |id: &Option<String>| id.clone().unwrap_or_else(|| "without an id".into());
        let msg = format!(
            "another card answers now (card {} before, {} now): refusing to go on with data \
             from two cards",
            named(&st.card_id),
            named(&card_id)
        );
        if card_id.is_some() {
            st.card_id = card_id;
            st.written_can = None;
        }
        return Err(lost(&msg));
    }
    let before = st.sessions;
    let mut once = Some(CardPassword::Can(can));
    let mut source: PasswordSource = Box::new(move |_| once.take());
    open_session(inner, st, &mut source).map_err(|e| match e {
        TransportError::PasswordRefused(why) => lost(&format!(
            "the card refuses the access number the operation began with ({why}): is it \
             another card?"
        )),
        e => again(e),
    })?;
    if st.sessions == before || st.channel.is_none() {
        return Err(lost("the secure channel could not be re-established"));
    }
    // The same chip: the key the card reports now must be the one both PACE-CAM runs prove.
    let same_chip = match (&old_chip, st.chip.clone(), card_public_key(inner, st)?) {
        (Some(old), Some(new), Some(key)) => old.verify(&key) && new.verify(&key),
        _ => false,
    };
    if !same_chip {
        st.channel = None;
        st.chip = None;
        return Err(lost(
            "the chip that answers now is not the one the operation started with (its \
             PACE-CAM chip authentication does not match): refusing to go on with data from \
             two cards",
        ));
    }
    st.recovered = true;
    st.recoveries += 1;
    match protected_exchange(inner, st, cmd, false) {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(lost("the card dropped the re-established secure channel")),
        Err(e) => Err(again(e)),
    }
}

/// GET DATA card public key (no right needed) under the session: the chip key the card
/// reports, `None` if it reports none (or a malformed one).
fn card_public_key(
    inner: &mut dyn Transport,
    st: &mut SmState,
) -> Result<Option<[u8; 65]>, TransportError> {
    let [p1, p2] = object::CARD_PUBLIC_KEY.to_be_bytes();
    let get = CommandApdu {
        cla: 0,
        ins: ins::GET_DATA,
        p1,
        p2,
        data: Vec::new(),
        ne: 256,
        extended: false,
    };
    let r = match protected_exchange(inner, st, &get, false) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(TransportError::CardReset) => {
            return Err(TransportError::ResetDuringOperation(
                "it was reset again while the secure channel was being re-established; \
                 giving up (is another application resetting it?)"
                    .to_owned(),
            ))
        }
        Err(e) => return Err(e),
    };
    if !r.ends_with(&[0x90, 0x00]) {
        return Ok(None);
    }
    let point = tlv::find(&r[..r.len() - 2], tag::PUBLIC_KEY_TEMPLATE)
        .ok()
        .flatten()
        .and_then(|t| tlv::find(t, tag::EC_POINT).ok().flatten())
        .and_then(|p| <[u8; 65]>::try_from(p).ok());
    Ok(point)
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
