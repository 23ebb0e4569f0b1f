//! A malicious card behind the real pcscd: a man in the middle between pcscd's vpcd driver
//! and a genuine `civic-card`, whose answers an [`Attack`] rewrites, delays or withholds.
//!
//! ```text
//! civic (reader) -- PC/SC --> pcscd -- vpcd driver --> [HostileCard] -- own vpcd --> civic-card
//!                                                       (the attack)    (genuine applet)
//! ```
//!
//! The hostile card connects to pcscd's vpcd port like any card; control frames (power,
//! reset, ATR) go to the genuine card as they are, and every command APDU is handed to the
//! attack together with the genuine card ([`Genuine`]), so any phase of a real scan, view or
//! provisioning can be attacked with the genuine card's own, correctly signed answers as the
//! raw material. Every exchange is logged ([`HostileCard::log`]) for assertions and failure
//! messages.
//!
//! Secure messaging (issue 7): a malicious card is the card, so it holds the CAN. The hostile
//! card terminates secure messaging itself: it answers the reader's PACE as the card side
//! (card-applet's own `CardSm`, with the genuine card's CAN: read from its state file, or seen
//! in the plain PUT DATA that personalises it), unwraps each protected command, hands the
//! *plain* command to the attack, and protects whatever the attack answers with its own
//! session keys. Behind it, [`Genuine::transmit`] talks to the genuine card through a second,
//! independent PACE session (the vpcd harness's SM-aware transmit). So attacks rewrite
//! plaintext answers and the reader sees them correctly protected: they test the reader's
//! checks behind secure messaging, not the MAC. [`Reply::Raw`] bypasses the protection (a card
//! that breaks the channel itself). The log holds the plain commands.
//!
//! Dropping the card closes its connection: pcscd sees the card removed, which also frees a
//! pcscd thread blocked on an answer the attack withheld.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use card_applet::apdu::CommandApdu;
use card_applet::protocol::Status;
use card_applet::sm::{self, CardSm, PacePasswords, PaceSecret};
use zeroize::Zeroizing;

use crate::vpcd::{control, VpcdCard};
use crate::{
    lock, port, reader_name, wait_card_state, CARD_SEEN_TIMEOUT, LAST_GONE, RECONNECT_GAP,
};

/// How the hostile card answers the chip authentication of PACE-CAM (Doc 9303-11 4.4.3.5):
/// the reader asks for PACE-CAM, and the card side of it is the hostile card's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChipProof {
    /// With the genuine card's chip key (read from its state file at each PACE run).
    #[default]
    Genuine,
    /// With a key of its own: a copy of the card that does not hold the chip's key sends a
    /// well-formed but wrong CA_IC.
    WrongKey,
    /// No chip authentication data (tag 8A) in its last PACE answer at all.
    Omit,
}

/// What the hostile card does with one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes as the response APDU (any length, even shorter than a status word).
    Send(Vec<u8>),
    /// Send these bytes after a delay.
    Late(Duration, Vec<u8>),
    /// Never answer (a frozen card). pcscd stays blocked until the card is dropped.
    Silent,
    /// Send these bytes exactly as they are, even inside a secure-messaging session (no
    /// protection: a bad MAC, a plain answer to a protected command).
    Raw(Vec<u8>),
}

/// The genuine card behind the attack.
#[derive(Debug)]
pub struct Genuine {
    card: VpcdCard,
}

impl Genuine {
    /// The genuine card's answer to `apdu` (data || SW1 SW2).
    pub fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>> {
        self.card.transmit(apdu)
    }
}

/// An attack: decides the answer to every command APDU.
pub trait Attack: Send {
    fn answer(&mut self, apdu: &[u8], card: &mut Genuine) -> Result<Reply>;
}

impl<F> Attack for F
where
    F: FnMut(&[u8], &mut Genuine) -> Result<Reply> + Send,
{
    fn answer(&mut self, apdu: &[u8], card: &mut Genuine) -> Result<Reply> {
        self(apdu, card)
    }
}

/// No attack: the genuine card's answers, unchanged.
pub fn honest() -> impl Attack {
    |apdu: &[u8], card: &mut Genuine| Ok(Reply::Send(card.transmit(apdu)?))
}

/// Rewrite the genuine answer to the `nth` (0-based) command with instruction `ins` with
/// `f(command, genuine answer)`; everything else passes unchanged.
pub fn rewrite_nth(
    ins: u8,
    nth: usize,
    mut f: impl FnMut(&[u8], Vec<u8>) -> Reply + Send,
) -> impl Attack {
    let mut seen = 0;
    move |apdu: &[u8], card: &mut Genuine| {
        let genuine = card.transmit(apdu)?;
        if apdu.get(1) == Some(&ins) {
            seen += 1;
            if seen == nth + 1 {
                return Ok(f(apdu, genuine));
            }
        }
        Ok(Reply::Send(genuine))
    }
}

/// Rewrite the genuine answer to every command with instruction `ins`.
pub fn rewrite_all(ins: u8, mut f: impl FnMut(&[u8], Vec<u8>) -> Reply + Send) -> impl Attack {
    move |apdu: &[u8], card: &mut Genuine| {
        let genuine = card.transmit(apdu)?;
        Ok(if apdu.get(1) == Some(&ins) {
            f(apdu, genuine)
        } else {
            Reply::Send(genuine)
        })
    }
}

/// One command and what the hostile card did with it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub command: Vec<u8>,
    pub reply: Reply,
}

type SharedAttack = Arc<Mutex<Box<dyn Attack>>>;

/// A hostile card plugged into one of the harness's readers. Dropping it unplugs it.
pub struct HostileCard {
    index: usize,
    stream: TcpStream,
    stop: Arc<AtomicBool>,
    attack: SharedAttack,
    log: Arc<Mutex<Vec<Exchange>>>,
    proxy: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for HostileCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostileCard")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl HostileCard {
    /// Start a genuine `civic-card` on `state` (missing = blank) behind `attack`, plug the
    /// hostile card into reader `index` of the shared pcscd, and return once pcscd shows it.
    pub fn start(
        index: usize,
        state: impl AsRef<Path>,
        attack: impl Attack + 'static,
    ) -> Result<Self> {
        Self::start_with(index, state, attack, ChipProof::Genuine)
    }

    /// [`HostileCard::start`], answering PACE-CAM's chip authentication as `proof` says.
    pub fn start_with(
        index: usize,
        state: impl AsRef<Path>,
        attack: impl Attack + 'static,
        proof: ChipProof,
    ) -> Result<Self> {
        let state_path = state.as_ref().to_path_buf();
        // VpcdCard::start reads the CAN from the state (or sees it at personalisation).
        let card = VpcdCard::start(state.as_ref()).context("start the genuine card")?;
        let genuine = Genuine { card };
        let reader = reader_name(index);
        wait_card_state(&reader, false, Duration::from_secs(3))
            .with_context(|| format!("reader \"{reader}\" already has a card"))?;
        let gone = lock(&LAST_GONE)[index];
        if let Some(since) = gone.map(|t| t.elapsed()) {
            if since < RECONNECT_GAP {
                thread::sleep(RECONNECT_GAP - since);
            }
        }
        let stream = TcpStream::connect(("127.0.0.1", port(index)))
            .with_context(|| format!("connect to pcscd's vpcd port {}", port(index)))?;
        if stream.local_addr()? == stream.peer_addr()? {
            bail!(
                "self-connection on port {} (pcscd not listening)",
                port(index)
            );
        }
        stream.set_nodelay(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let attack: SharedAttack = Arc::new(Mutex::new(Box::new(attack)));
        let log = Arc::new(Mutex::new(Vec::new()));
        let proxy = {
            let stream = stream.try_clone()?;
            let (stop, attack, log) = (Arc::clone(&stop), Arc::clone(&attack), Arc::clone(&log));
            thread::Builder::new()
                .name(format!("hostile-card-{index}"))
                .spawn(move || {
                    let mut front = Front::new(state_path, proof);
                    serve(stream, genuine, &mut front, &stop, &attack, &log)
                })?
        };
        let me = Self {
            index,
            stream,
            stop,
            attack,
            log,
            proxy: Some(proxy),
        };
        wait_card_state(&reader, true, CARD_SEEN_TIMEOUT)
            .context("pcscd does not show the hostile card")?;
        Ok(me)
    }

    /// Replace the attack (e.g. honest while provisioning, hostile while scanning).
    pub fn set_attack(&self, attack: impl Attack + 'static) {
        *lock(&self.attack) = Box::new(attack);
    }

    pub fn reader(&self) -> String {
        reader_name(self.index)
    }

    /// Every command so far and what the hostile card did with it.
    pub fn log(&self) -> Vec<Exchange> {
        lock(&self.log).clone()
    }

    /// The log as hex lines, for failure messages.
    pub fn transcript(&self) -> String {
        self.log()
            .iter()
            .map(|e| {
                let r = match &e.reply {
                    Reply::Send(b) => hex(b),
                    Reply::Late(d, b) => format!("(after {d:?}) {}", hex(b)),
                    Reply::Raw(b) => format!("(unprotected) {}", hex(b)),
                    Reply::Silent => "(no answer)".to_owned(),
                };
                // Only the header: the data may be a PIN.
                format!("{} -> {r}", hex(&e.command[..e.command.len().min(4)]))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Unplug the card and report the proxy's own failure, if it had one.
    pub fn unplug(mut self) -> Result<()> {
        self.shut()
    }

    fn shut(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        lock(&LAST_GONE)[self.index] = Some(Instant::now());
        match self.proxy.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow!("the hostile card's proxy thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for HostileCard {
    fn drop(&mut self) {
        let _ = self.shut();
    }
}

fn hex(b: &[u8]) -> String {
    let s: String = b.iter().take(48).map(|x| format!("{x:02X}")).collect();
    if b.len() > 48 {
        format!("{s}... ({} bytes)", b.len())
    } else {
        s
    }
}

/// The CAN for the hostile card's own PACE (card side), and the chip key it answers PACE-CAM
/// with. Never counts failures: a hostile card has no reason to protect itself.
struct Can<'a>(Option<&'a [u8]>, Option<Zeroizing<[u8; 32]>>);

impl PacePasswords for Can<'_> {
    fn chip_key(&self) -> Option<Zeroizing<[u8; 32]>> {
        self.1.clone()
    }
    fn pace_secret(&self, password: u8) -> Result<PaceSecret, Status> {
        match (password, self.0) {
            (sm::password::CAN, Some(can)) => Ok((Zeroizing::new(can.to_vec()), None)),
            _ => Err(Status::ReferenceNotFound),
        }
    }
    fn pace_attempt(&mut self, _: u8) -> Result<(), Status> {
        Ok(())
    }
    fn pace_success(&mut self, _: u8) -> Result<(), Status> {
        Ok(())
    }
    fn pace_failure(&mut self, _: u8) -> Status {
        Status::SecurityNotSatisfied
    }
}

/// A GENERAL AUTHENTICATE answer `7C { ... }` without its tag 8A (the encrypted chip
/// authentication data of PACE-CAM); other answers unchanged.
fn without_chip_data(out: Vec<u8>) -> Vec<u8> {
    use card_applet::protocol::tlv;
    let Ok(Some(inner)) = tlv::find(&out, sm::tag::DYNAMIC_AUTH) else {
        return out;
    };
    let Ok(items) = tlv::iter(inner).collect::<Result<Vec<_>, _>>() else {
        return out;
    };
    let mut kept = Vec::new();
    for (t, v) in items.iter().filter(|(t, _)| *t != sm::tag::CAM_DATA) {
        tlv::push(&mut kept, *t, v);
    }
    let mut rebuilt = Vec::new();
    tlv::push(&mut rebuilt, sm::tag::DYNAMIC_AUTH, &kept);
    rebuilt
}

fn status(s: Status) -> Vec<u8> {
    s.sw().to_be_bytes().to_vec()
}

/// The reader-facing side of the hostile card's secure messaging.
struct Front {
    sm: CardSm,
    /// A SELECT went through since the last reset (PACE needs a selected application).
    selected: bool,
    /// The genuine card's state file (its chip key, once generated).
    state: std::path::PathBuf,
    proof: ChipProof,
    /// The key of a [`ChipProof::WrongKey`] card.
    own_key: Zeroizing<[u8; 32]>,
    /// The chip key of the PACE run in progress.
    chip_key: Option<Zeroizing<[u8; 32]>>,
}

/// What the front does with one APDU from pcscd.
enum Step {
    /// Answered by the front itself (PACE set-up, a broken protected command).
    Answer(Vec<u8>),
    /// Give this (plain) command to the attack; `protect` if it came protected.
    Attack { command: Vec<u8>, protect: bool },
}

impl Front {
    fn new(state: std::path::PathBuf, proof: ChipProof) -> Self {
        // A random P-256 scalar: the top bit cleared keeps it below the group order.
        let mut own = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut own[..]);
        own[0] &= 0x7F;
        own[31] |= 1;
        Front {
            sm: CardSm::default(),
            selected: false,
            state,
            proof,
            own_key: own,
            chip_key: None,
        }
    }

    fn reset(&mut self) {
        self.sm.close();
        self.selected = false;
    }

    fn step(&mut self, apdu: &[u8], can: Option<&[u8]>) -> Step {
        let parsed = match CommandApdu::parse(apdu) {
            Ok(a) => a,
            Err(_) => {
                return Step::Attack {
                    command: apdu.to_vec(),
                    protect: false,
                }
            }
        };
        if parsed.cla & !0x10 == sm::CLA_SM {
            let Some(mut channel) = self.sm.take_channel() else {
                self.sm.close();
                return Step::Answer(status(Status::SmIncorrect));
            };
            return match channel.unprotect_command(&parsed) {
                Ok(inner) => {
                    self.sm.put_channel(channel);
                    Step::Attack {
                        command: inner.to_bytes(),
                        protect: true,
                    }
                }
                Err(_) => {
                    self.sm.close();
                    Step::Answer(status(Status::SmIncorrect))
                }
            };
        }
        // A plain command ends a session (ISO 7816-4 10.1); a PACE run in progress goes on.
        if self.sm.active() {
            self.sm.close();
        }
        if sm::is_pace(parsed.ins) && can.is_some() && self.selected {
            let r = if parsed.ins == card_applet::protocol::ins::MSE {
                // The chip key as the genuine card has it now (generated after the hostile
                // card started, when it is personalised through it).
                self.chip_key = match self.proof {
                    ChipProof::WrongKey => Some(self.own_key.clone()),
                    _ => crate::vpcd::stored_chip_key(&self.state).ok().flatten(),
                };
                self.sm.mse_set_at(&parsed)
            } else {
                let key = self.chip_key.clone();
                self.sm
                    .general_authenticate(&parsed, &mut rand_core::OsRng, &mut Can(can, key))
                    .map(|out| match self.proof {
                        ChipProof::Omit => without_chip_data(out),
                        _ => out,
                    })
            };
            return Step::Answer(match r {
                Ok(mut data) => {
                    data.extend_from_slice(&status(Status::Ok));
                    data
                }
                Err(s) => {
                    self.sm.close();
                    status(s)
                }
            });
        }
        if parsed.ins == card_applet::protocol::ins::SELECT {
            self.selected = true;
        }
        Step::Attack {
            command: apdu.to_vec(),
            protect: false,
        }
    }

    /// Protect an answer to a protected command; a reply too short to carry a status word
    /// cannot be protected and goes out as it is (the reader sees a broken answer, as from
    /// any card).
    fn protect(&mut self, reply: Reply) -> Reply {
        let wrap = |sm: &mut CardSm, b: Vec<u8>| -> Vec<u8> {
            if b.len() < 2 {
                return b;
            }
            match sm.take_channel() {
                Some(mut ch) => {
                    let out = ch.protect_response(&b);
                    sm.put_channel(ch);
                    out
                }
                None => b,
            }
        };
        match reply {
            Reply::Send(b) => Reply::Send(wrap(&mut self.sm, b)),
            Reply::Late(d, b) => Reply::Late(d, wrap(&mut self.sm, b)),
            other => other,
        }
    }
}

/// The proxy loop: frames from pcscd, answers from the attack.
fn serve(
    mut stream: TcpStream,
    mut genuine: Genuine,
    front: &mut Front,
    stop: &AtomicBool,
    attack: &SharedAttack,
    log: &Mutex<Vec<Exchange>>,
) -> Result<()> {
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(f) => f,
            // Unplugged (our own shutdown) or pcscd gone.
            Err(_) if stop.load(Ordering::SeqCst) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).context("read a frame from pcscd"),
        };
        match frame.as_slice() {
            [] => {}
            [control::ATR_REQUEST] => {
                let atr = genuine.card.atr().to_vec();
                write_frame(&mut stream, &atr)?;
            }
            [code] => {
                front.reset();
                genuine.card.control(*code)?
            }
            apdu => {
                let reply = match front.step(apdu, genuine.card.can()) {
                    Step::Answer(b) => Reply::Send(b),
                    Step::Attack { command, protect } => {
                        let reply = lock(attack).answer(&command, &mut genuine)?;
                        lock(log).push(Exchange {
                            command,
                            reply: reply.clone(),
                        });
                        if protect {
                            front.protect(reply)
                        } else {
                            reply
                        }
                    }
                };
                match reply {
                    Reply::Send(b) | Reply::Raw(b) => write_frame(&mut stream, &b)?,
                    Reply::Late(d, b) => {
                        let until = Instant::now() + d;
                        while Instant::now() < until {
                            if stop.load(Ordering::SeqCst) {
                                return Ok(());
                            }
                            thread::sleep(Duration::from_millis(5));
                        }
                        write_frame(&mut stream, &b)?;
                    }
                    Reply::Silent => {}
                }
            }
        }
    }
}

/// vpcd sends the length and the body in two writes: re-arm TCP_QUICKACK before each read,
/// or every APDU waits ~40 ms on a delayed ACK (NOTES-pcsc.md).
fn read_exact_quickack(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    socket2::SockRef::from(&*stream).set_quickack(true)?;
    stream.read_exact(buf)
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    read_exact_quickack(stream, &mut len)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    read_exact_quickack(stream, &mut body)?;
    Ok(body)
}

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> Result<()> {
    let len = u16::try_from(payload.len()).map_err(|_| {
        anyhow!(
            "a vpcd frame holds at most 65,535 bytes ({})",
            payload.len()
        )
    })?;
    let mut frame = Vec::with_capacity(payload.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).context("send a frame to pcscd")
}
