//! Moving APDU bytes to a card: the [`Transport`] trait, its PC/SC implementation and an
//! in-process one over the applet (for unit tests and fuzzing without pcscd).

use std::ffi::{CStr, CString};

use card_applet::protocol::ins;

/// A failure below the APDU level: no reader, no card, pcscd gone, card removed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    // Not `#[from]`/`#[source]`: the message already includes pcsc's, and an error chain
    // would print it twice.
    #[error("PC/SC: {0}")]
    Pcsc(pcsc::Error),
    #[error("no reader named {0:?} (see `civic readers`)")]
    NoSuchReader(String),
    #[error("no smart-card reader found (is pcscd running?)")]
    NoReaders,
    #[error("the card answered with fewer than two bytes")]
    ShortResponse,
    /// Secure messaging (crate::sm): no password, or a broken session.
    #[error("secure channel: {0}")]
    SecureChannel(String),
    /// Secure messaging (crate::sm): the card refused the password (wrong or blocked).
    #[error("secure channel: {0}")]
    PasswordRefused(String),
}

impl From<pcsc::Error> for TransportError {
    fn from(e: pcsc::Error) -> Self {
        TransportError::Pcsc(e)
    }
}

/// One card connection that carries command APDUs and returns response APDUs (data || SW1 SW2).
pub trait Transport {
    /// Send one command APDU; return the response data followed by SW1 SW2.
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError>;

    /// Hold the card exclusively until the returned guard is dropped (PC/SC
    /// `SCardBeginTransaction`), so a multi-APDU exchange is not interleaved with another
    /// client's.
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError>;
}

/// The names of the readers pcscd knows.
pub fn list_readers() -> Result<Vec<(String, bool)>, TransportError> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
    let names = match ctx.list_readers_owned() {
        Ok(n) => n,
        Err(pcsc::Error::NoReadersAvailable) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut states: Vec<pcsc::ReaderState> = names
        .iter()
        .map(|n| pcsc::ReaderState::new(n.clone(), pcsc::State::UNAWARE))
        .collect();
    ctx.get_status_change(std::time::Duration::from_millis(0), &mut states)?;
    Ok(states
        .iter()
        .map(|s| {
            (
                s.name().to_string_lossy().into_owned(),
                s.event_state().contains(pcsc::State::PRESENT),
            )
        })
        .collect())
}

/// A card in a PC/SC reader, connected in shared mode.
pub struct PcscTransport {
    // Kept alive for the card handle's lifetime.
    _ctx: pcsc::Context,
    card: Option<pcsc::Card>,
    reader: String,
    /// The last SELECT this connection sent, replayed after the card was reset under us.
    last_select: Option<Vec<u8>>,
}

impl std::fmt::Debug for PcscTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscTransport")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl PcscTransport {
    /// Connect to the card in `reader` (exact name, or the first reader whose name contains
    /// it; `None` picks the first reader with a card).
    pub fn connect(reader: Option<&str>) -> Result<Self, TransportError> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
        let name = resolve_reader(&ctx, reader)?;
        let card = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
        Ok(Self {
            _ctx: ctx,
            card: Some(card),
            reader: name.to_string_lossy().into_owned(),
            last_select: None,
        })
    }

    pub fn reader(&self) -> &str {
        &self.reader
    }
}

fn resolve_reader(ctx: &pcsc::Context, wanted: Option<&str>) -> Result<CString, TransportError> {
    let names = match ctx.list_readers_owned() {
        Ok(n) => n,
        Err(pcsc::Error::NoReadersAvailable) => return Err(TransportError::NoReaders),
        Err(e) => return Err(e.into()),
    };
    if names.is_empty() {
        return Err(TransportError::NoReaders);
    }
    let as_str = |n: &CStr| n.to_string_lossy().into_owned();
    match wanted {
        Some(w) => names
            .iter()
            .find(|n| as_str(n) == w)
            .or_else(|| names.iter().find(|n| as_str(n).contains(w)))
            .cloned()
            .ok_or_else(|| TransportError::NoSuchReader(w.to_owned())),
        None => {
            let mut states: Vec<pcsc::ReaderState> = names
                .iter()
                .map(|n| pcsc::ReaderState::new(n.clone(), pcsc::State::UNAWARE))
                .collect();
            ctx.get_status_change(std::time::Duration::from_millis(0), &mut states)?;
            states
                .iter()
                .find(|s| s.event_state().contains(pcsc::State::PRESENT))
                .map(|s| s.name().to_owned())
                .ok_or(TransportError::Pcsc(pcsc::Error::NoSmartcard))
        }
    }
}

/// What reset recovery needs of a connection: a `pcsc::Card`, or one inside a transaction.
trait Connection {
    fn send<'b>(&self, apdu: &[u8], buf: &'b mut [u8]) -> Result<&'b [u8], pcsc::Error>;
    fn reconnect_leaving_card(&mut self) -> Result<(), pcsc::Error>;
}

macro_rules! impl_connection {
    ($($t:ty),*) => {$(
        impl Connection for $t {
            fn send<'b>(&self, apdu: &[u8], buf: &'b mut [u8]) -> Result<&'b [u8], pcsc::Error> {
                self.transmit(apdu, buf)
            }
            fn reconnect_leaving_card(&mut self) -> Result<(), pcsc::Error> {
                self.reconnect(
                    pcsc::ShareMode::Shared,
                    pcsc::Protocols::ANY,
                    pcsc::Disposition::LeaveCard,
                )
            }
        }
    )*};
}
impl_connection!(pcsc::Card, pcsc::Transaction<'_>);

/// Transmit on `conn`; after `SCARD_W_RESET_CARD` (another client reset the card), reconnect
/// leaving the card as it is, re-select the application and retry once. The card's security
/// state is gone after a reset, so a retried command that needed it fails with 6982, which
/// the session reports.
fn transmit_on(
    conn: &mut impl Connection,
    last_select: &mut Option<Vec<u8>>,
    apdu: &[u8],
) -> Result<Vec<u8>, TransportError> {
    if apdu.len() > 4 && apdu[1] == ins::SELECT {
        *last_select = Some(apdu.to_vec());
    }
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    match conn.send(apdu, &mut buf) {
        Ok(r) => return Ok(r.to_vec()),
        Err(pcsc::Error::ResetCard) => {}
        Err(e) => return Err(e.into()),
    }
    conn.reconnect_leaving_card()?;
    if let Some(select) = last_select.as_deref() {
        if select != apdu {
            conn.send(select, &mut buf)?;
        }
    }
    Ok(conn.send(apdu, &mut buf)?.to_vec())
}

impl Transport for PcscTransport {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let card = self
            .card
            .as_mut()
            .ok_or(TransportError::Pcsc(pcsc::Error::InvalidHandle))?;
        transmit_on(card, &mut self.last_select, apdu)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        let card = self
            .card
            .as_mut()
            .ok_or(TransportError::Pcsc(pcsc::Error::InvalidHandle))?;
        // A reset by another client shows up when the transaction begins: reconnect leaving
        // the card as it is, then begin again.
        let tx = match card.transaction2() {
            Ok(tx) => tx,
            Err((card, pcsc::Error::ResetCard)) => {
                card.reconnect_leaving_card()?;
                card.transaction()?
            }
            Err((_, e)) => return Err(e.into()),
        };
        Ok(Box::new(PcscTransaction {
            tx,
            last_select: &mut self.last_select,
        }))
    }
}

impl Drop for PcscTransport {
    fn drop(&mut self) {
        // Dropping a pcsc::Card resets the card (NOTES-pcsc.md); leave it as it is instead,
        // so the next client (or a citizen's own session) finds it unchanged.
        if let Some(card) = self.card.take() {
            let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        }
    }
}

struct PcscTransaction<'a> {
    tx: pcsc::Transaction<'a>,
    last_select: &'a mut Option<Vec<u8>>,
}

impl Transport for PcscTransaction<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        transmit_on(&mut self.tx, self.last_select, apdu)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Reborrow(self)))
    }
}

/// A nested transaction is the enclosing one.
struct Reborrow<'a, T: Transport + ?Sized>(&'a mut T);

impl<T: Transport + ?Sized> Transport for Reborrow<'_, T> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit(apdu)
    }
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Reborrow(&mut *self.0)))
    }
}

/// The applet itself, in this process: the same bytes a PC/SC reader would carry.
pub struct InProcess<S: card_applet::store::Store> {
    pub card: card_applet::Card<S, rand_core::OsRng>,
}

impl<S: card_applet::store::Store> std::fmt::Debug for InProcess<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcess")
    }
}

impl InProcess<card_applet::store::MemoryStore> {
    /// A blank card in personalisation state, held in memory.
    pub fn blank() -> Self {
        Self {
            card: card_applet::Card::with_os_rng(card_applet::store::MemoryStore::new())
                .expect("a blank in-memory card always loads"),
        }
    }
}

impl<S: card_applet::store::Store> Transport for InProcess<S> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let r = self.card.process(apdu);
        if r.len() < 2 {
            return Err(TransportError::ShortResponse);
        }
        Ok(r)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Reborrow(self)))
    }
}
