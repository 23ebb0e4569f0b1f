//! Moving APDU bytes to a card: the [`Transport`] trait, its PC/SC implementation and an
//! in-process one over the applet (for unit tests and fuzzing without pcscd).

use std::ffi::{CStr, CString};
use std::sync::mpsc;
use std::time::Duration;

use zeroize::Zeroizing;

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
    #[error("the card answered with fewer than two bytes (no status word)")]
    ShortResponse,
    /// Secure messaging (crate::sm): no password, or a broken session.
    #[error("secure channel: {0}")]
    SecureChannel(String),
    /// Secure messaging (crate::sm): the card refused the password (wrong or blocked).
    #[error("secure channel: {0}")]
    PasswordRefused(String),
    #[error(
        "the card in reader {reader:?} did not answer within {after:?}: it is frozen or was \
         removed without the reader noticing; take it out and try again"
    )]
    Timeout { reader: String, after: Duration },
    #[error("this connection was given up after the card stopped answering")]
    Abandoned,
    #[error("cannot start the PC/SC worker thread: {0}")]
    Thread(std::io::Error),
    /// [`Transport::transmit_unless_reset`]: another client reset the card before this
    /// command reached it (PC/SC `SCARD_W_RESET_CARD`); the transport reconnected and did
    /// not send the command. Everything the card held in volatile memory (the selection, a
    /// secure-messaging session, terminal and PIN verification) is gone.
    #[error(
        "the card was reset by another application before the command reached it (the \
         command was not sent)"
    )]
    CardReset,
    /// Secure messaging (crate::sm): the card was reset during an operation and the session
    /// could not carry on as if nothing happened (another card answers now, the state the
    /// operation built was lost, or it kept resetting). The message says which.
    #[error("the card was reset during the operation: {0}")]
    ResetDuringOperation(String),
}

impl From<pcsc::Error> for TransportError {
    fn from(e: pcsc::Error) -> Self {
        TransportError::Pcsc(e)
    }
}

/// The transport error at the root of `e`, however the layers above wrapped it (an
/// [`ApduError`](crate::apdu::ApduError), a [`CardError`](crate::session::CardError), context).
pub fn transport_error_in(e: &anyhow::Error) -> Option<&TransportError> {
    use crate::apdu::ApduError;
    use crate::session::CardError;
    e.chain().find_map(|c| {
        c.downcast_ref::<TransportError>()
            .or_else(|| match c.downcast_ref::<ApduError>() {
                Some(ApduError::Transport(t)) => Some(t),
                _ => None,
            })
            .or_else(|| match c.downcast_ref::<CardError>() {
                Some(CardError::Apdu(ApduError::Transport(t))) => Some(t),
                _ => None,
            })
    })
}

/// One card connection that carries command APDUs and returns response APDUs (data || SW1 SW2).
pub trait Transport {
    /// Send one command APDU; return the response data followed by SW1 SW2.
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError>;

    /// Hold the card exclusively until the returned guard is dropped (PC/SC
    /// `SCardBeginTransaction`), so a multi-APDU exchange is not interleaved with another
    /// client's.
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError>;

    /// [`Transport::transmit`] for a caller that keeps state on the card across APDUs (a
    /// secure-messaging session, a PACE run): when the card was reset by another client
    /// before this command reached it, reconnect and return [`TransportError::CardReset`]
    /// without sending the command, so that the caller rebuilds its state and decides what
    /// to send again (plain `transmit` re-selects the application and sends the command, which
    /// cannot work for a command protected under a session the reset destroyed). A transport
    /// no other client can reset (the default, the in-process applet) just transmits.
    /// Wrappers forward it.
    fn transmit_unless_reset(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.transmit(apdu)
    }

    /// What the secure channel's PACE-CAM run (Doc 9303-11 4.4.3.5) left for the chip
    /// authentication check, if this transport opened one on the card now selected: `None`
    /// for a transport without secure messaging (or a session without CAM), and the caller
    /// then authenticates the chip with INTERNAL AUTHENTICATE. Wrappers forward it.
    fn chip_authentication(&self) -> Option<card_applet::sm::ChipAuthentication> {
        None
    }
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

/// How long one APDU (or the connection) may take before the card counts as frozen. PC/SC
/// itself has no bound: a card that never answers blocks `SCardTransmit` (and pcscd) forever
/// (NOTES-pcsc.md). Real P-256 chips sign or generate a key in well under a second.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A card in a PC/SC reader, connected in shared mode.
///
/// The PC/SC handle lives on a worker thread of its own and every call waits for it at most
/// the transport's timeout: a card that answers slowly or not at all gives
/// [`TransportError::Timeout`], never a hang. After a timeout the worker is still blocked in
/// pcscd, so the transport refuses every later call ([`TransportError::Abandoned`]); the
/// worker ends once pcscd lets go (card removed, pcscd restarted) or with the process.
pub struct PcscTransport {
    jobs: mpsc::Sender<Job>,
    replies: mpsc::Receiver<Reply>,
    reader: String,
    timeout: Duration,
    abandoned: bool,
}

enum Job {
    /// An APDU, and what to do after a reset by another client: `false` re-select and send
    /// it ([`Transport::transmit`]), `true` report [`TransportError::CardReset`]
    /// ([`Transport::transmit_unless_reset`]).
    Transmit(Zeroizing<Vec<u8>>, bool),
    Begin,
    End,
    /// Disconnect leaving the card as it is, then reply.
    Close,
}

type Reply = Result<Vec<u8>, TransportError>;

impl std::fmt::Debug for PcscTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscTransport")
            .field("reader", &self.reader)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PcscTransport {
    /// Connect to the card in `reader` (exact name, or the first reader whose name contains
    /// it; `None` picks the first reader with a card), bounded by [`DEFAULT_TIMEOUT`].
    pub fn connect(reader: Option<&str>) -> Result<Self, TransportError> {
        Self::connect_with_timeout(reader, DEFAULT_TIMEOUT)
    }

    /// [`PcscTransport::connect`] with another bound for the connection and for each APDU.
    pub fn connect_with_timeout(
        reader: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (reply_tx, replies) = mpsc::sync_channel::<Reply>(1);
        let wanted = reader.map(str::to_owned);
        std::thread::Builder::new()
            .name("civic-pcsc".into())
            .spawn(move || worker(wanted, job_rx, reply_tx))
            .map_err(TransportError::Thread)?;
        let mut me = Self {
            jobs,
            replies,
            // Until the worker names the reader it connected to: the one asked for.
            reader: reader.unwrap_or("(the first with a card)").to_owned(),
            timeout,
            abandoned: false,
        };
        // The worker's first reply is the outcome of connecting: the reader's name.
        let name = me.wait()?;
        me.reader = String::from_utf8_lossy(&name).into_owned();
        Ok(me)
    }

    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// The bound for each APDU.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn call(&mut self, job: Job) -> Reply {
        if self.abandoned {
            return Err(TransportError::Abandoned);
        }
        self.jobs
            .send(job)
            .map_err(|_| TransportError::Pcsc(pcsc::Error::InvalidHandle))?;
        self.wait()
    }

    fn wait(&mut self) -> Reply {
        match self.replies.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.abandoned = true;
                Err(TransportError::Timeout {
                    reader: self.reader.clone(),
                    after: self.timeout,
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(TransportError::Pcsc(pcsc::Error::InvalidHandle))
            }
        }
    }
}

/// The worker: owns the PC/SC context and card handle. Replies once to the connection, then
/// once to every job but `End`.
fn worker(wanted: Option<String>, jobs: mpsc::Receiver<Job>, replies: mpsc::SyncSender<Reply>) {
    let connected = (|| {
        let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
        let name = resolve_reader(&ctx, wanted.as_deref())?;
        let card = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
        Ok::<_, TransportError>((ctx, card, name))
    })();
    let (_ctx, mut card, name) = match connected {
        Ok(c) => c,
        Err(e) => {
            let _ = replies.send(Err(e));
            return;
        }
    };
    if replies.send(Ok(name.as_bytes().to_vec())).is_err() {
        let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        return;
    }
    // The last SELECT this connection sent, replayed after the card was reset under us, and
    // whether a reset was found (and recovered from) when a transaction began: the next
    // `transmit_unless_reset` reports it.
    let mut last_select: Option<Vec<u8>> = None;
    let mut reset_seen = false;
    while let Ok(job) = jobs.recv() {
        let reply = match job {
            Job::Transmit(apdu, report) => {
                transmit_on(&mut card, &mut last_select, &mut reset_seen, &apdu, report)
            }
            Job::End => continue,
            Job::Close => break,
            Job::Begin => {
                // A reset by another client shows up when the transaction begins: reconnect
                // leaving the card as it is, then begin again.
                let tx = match card.transaction2() {
                    Ok(tx) => Ok(tx),
                    Err((card, pcsc::Error::ResetCard)) => {
                        reset_seen = true;
                        card.reconnect_leaving_card()
                            .and_then(|()| card.transaction())
                    }
                    Err((_, e)) => Err(e),
                };
                match tx {
                    Err(e) => Err(e.into()),
                    Ok(mut tx) => {
                        if replies.send(Ok(Vec::new())).is_err() {
                            break;
                        }
                        // Serve inside the transaction until it ends (or the transport is
                        // dropped); dropping `tx` ends it leaving the card as it is.
                        while let Ok(job) = jobs.recv() {
                            let reply = match job {
                                Job::Transmit(apdu, report) => transmit_on(
                                    &mut tx,
                                    &mut last_select,
                                    &mut reset_seen,
                                    &apdu,
                                    report,
                                ),
                                Job::Begin => Ok(Vec::new()),
                                Job::End | Job::Close => break,
                            };
                            if replies.send(reply).is_err() {
                                break;
                            }
                        }
                        continue;
                    }
                }
            }
        };
        if replies.send(reply).is_err() {
            break;
        }
    }
    // Dropping a pcsc::Card resets the card (NOTES-pcsc.md); leave it as it is instead, so
    // the next client (or a citizen's own session) finds it unchanged.
    let _ = card.disconnect(pcsc::Disposition::LeaveCard);
    let _ = replies.try_send(Ok(Vec::new()));
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

/// Transmit on `conn`; after `SCARD_W_RESET_CARD` (another client reset the card; the command
/// was not sent), reconnect leaving the card as it is, then with `report` return
/// [`TransportError::CardReset`], otherwise re-select the application and send the command
/// once more. The card's security state is gone after a reset, so a re-sent command that
/// needed it fails with 6982, which the session reports. `reset_seen`: a reset already found
/// when the transaction began (reported once, to the first `report` caller).
fn transmit_on(
    conn: &mut impl Connection,
    last_select: &mut Option<Vec<u8>>,
    reset_seen: &mut bool,
    apdu: &[u8],
    report: bool,
) -> Result<Vec<u8>, TransportError> {
    if std::mem::take(reset_seen) && report {
        return Err(TransportError::CardReset);
    }
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
    if report {
        return Err(TransportError::CardReset);
    }
    if let Some(select) = last_select.as_deref() {
        if select != apdu {
            conn.send(select, &mut buf)?;
        }
    }
    Ok(conn.send(apdu, &mut buf)?.to_vec())
}

impl Transport for PcscTransport {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.call(Job::Transmit(Zeroizing::new(apdu.to_vec()), false))
    }

    fn transmit_unless_reset(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.call(Job::Transmit(Zeroizing::new(apdu.to_vec()), true))
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        self.call(Job::Begin)?;
        Ok(Box::new(PcscTransaction(self)))
    }
}

impl Drop for PcscTransport {
    fn drop(&mut self) {
        // Wait (bounded) for the disconnect, so a process that exits right after still leaves
        // the card as it is rather than letting pcscd clean up after a vanished client.
        if !self.abandoned && self.jobs.send(Job::Close).is_ok() {
            let _ = self.replies.recv_timeout(self.timeout);
        }
    }
}

/// A transaction on the worker; dropping it ends the transaction.
struct PcscTransaction<'a>(&'a mut PcscTransport);

impl Transport for PcscTransaction<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit(apdu)
    }

    fn transmit_unless_reset(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit_unless_reset(apdu)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Reborrow(self)))
    }
}

impl Drop for PcscTransaction<'_> {
    fn drop(&mut self) {
        // No reply to wait for; an abandoned worker never reads it.
        let _ = self.0.jobs.send(Job::End);
    }
}

/// A nested transaction is the enclosing one.
struct Reborrow<'a, T: Transport + ?Sized>(&'a mut T);

impl<T: Transport + ?Sized> Transport for Reborrow<'_, T> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit(apdu)
    }
    fn transmit_unless_reset(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit_unless_reset(apdu)
    }
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Reborrow(&mut *self.0)))
    }
    fn chip_authentication(&self) -> Option<card_applet::sm::ChipAuthentication> {
        self.0.chip_authentication()
    }
}

/// The applet itself, in this process: the same bytes a PC/SC reader would carry. No other
/// client can reset it, so [`Transport::transmit_unless_reset`] is plain `transmit` (a test
/// that wants a reset under a session wraps it: reader-tool/tests/sm_reset.rs).
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
