//! A minimal vpcd *server* for tests that talk to `civic-card` directly, without pcscd.
//!
//! pcscd needs about a second per card reconnect (its 400 ms presence poll, see
//! [`crate::RECONNECT_GAP`]); tests that restart a card hundreds of times (the tearing test)
//! play vpcd themselves instead: bind `127.0.0.1:0`, start `civic-card --vpcd-port PORT`,
//! accept its connection, power it on, ask for the ATR, then exchange APDUs.
//!
//! vpcd framing (see `card-applet/src/bin/civic-card.rs`): every frame is a 2-byte big-endian
//! length then the payload; 1-byte payloads are control frames (00 power off, 01 power on,
//! 02 reset, 04 ATR request), longer ones are APDUs. The card answers APDUs and the ATR
//! request with one frame each.
//!
//! Secure messaging (issue 7): given the card's CAN ([`VpcdCard::set_can`], or seen in a
//! plain PUT DATA of the CAN object), [`VpcdCard::transmit`] opens a PACE session after a
//! SELECT or ACTIVATE leaves an issued card, then protects every APDU and returns the plain
//! answer, as the reader's transport does; [`VpcdCard::send`] protects too, and
//! [`VpcdCard::recv_after_kill_raw`] unprotects a complete frame. `transmit_raw` bypasses it.
//!
//! Every read is bounded ([`VpcdCard::set_timeout`], default [`TRANSMIT_TIMEOUT`]): a frozen
//! or dead card gives an error, never a hang. The card process is watched by the harness's
//! orphan watchdog, so it dies with the test binary even if no destructor runs.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let mut card = civic_e2e::vpcd::VpcdCard::start(dir.path().join("card.state"))?;
//! let rsp = card.transmit(&[0x00, 0xA4, 0x04, 0x00, 0x07,
//!     0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01, 0x00])?;
//! assert_eq!(&rsp[rsp.len() - 2..], &[0x90, 0x00]);
//! card.kill()?; // SIGKILL, reaped
//! card.restart()?; // same state file
//! # Ok(())
//! # }
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use zeroize::Zeroizing;

use crate::{existing_bin, Guarded};

/// Default bound for one response (or the ATR) from the card.
pub const TRANSMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for a started card to connect to our listener.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// vpcd control frames.
pub mod control {
    pub const POWER_OFF: u8 = 0x00;
    pub const POWER_ON: u8 = 0x01;
    pub const RESET: u8 = 0x02;
    pub const ATR_REQUEST: u8 = 0x04;
}

/// What `civic-card` prints when its state file does not load.
const DAMAGED: &str = "the card is damaged";

/// One `civic-card` process connected to our own vpcd endpoint on `127.0.0.1:<ephemeral>`.
/// Dropping it kills the card.
#[derive(Debug)]
pub struct VpcdCard {
    listener: TcpListener,
    port: u16,
    state: PathBuf,
    stderr_path: PathBuf,
    proc: Option<Guarded>,
    conn: Option<TcpStream>,
    timeout: Duration,
    atr: Vec<u8>,
    starts: usize,
    /// The PACE password (CAN) of this card, if known.
    can: Option<Vec<u8>>,
    /// The secure-messaging session, if one is open.
    channel: Option<card_applet::sm::Channel>,
    /// The last [`VpcdCard::send`] went protected.
    sent_protected: bool,
    /// Extra arguments for `civic-card`.
    extra_args: Vec<String>,
    _log_dir: tempfile::TempDir,
}

impl VpcdCard {
    /// Start `civic-card --state STATE` (missing file = blank card) against a fresh listener,
    /// power it on and read its ATR.
    pub fn start(state: impl AsRef<Path>) -> Result<Self> {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).context("bind the vpcd listener on 127.0.0.1")?;
        listener
            .set_nonblocking(true)
            .context("make the vpcd listener non-blocking")?;
        let port = listener.local_addr()?.port();
        let log_dir = tempfile::Builder::new()
            .prefix("civic-e2e-vpcd-")
            .tempdir()
            .context("temporary directory for the card's stderr")?;
        let mut card = Self {
            listener,
            port,
            state: state.as_ref().to_path_buf(),
            stderr_path: log_dir.path().join("civic-card.stderr"),
            proc: None,
            conn: None,
            timeout: TRANSMIT_TIMEOUT,
            atr: Vec::new(),
            starts: 0,
            can: None,
            channel: None,
            sent_protected: false,
            extra_args: Vec::new(),
            _log_dir: log_dir,
        };
        // Whoever holds an issued card can read its CAN off it (tearing tests set it too).
        card.can = stored_can(state.as_ref())
            .ok()
            .flatten()
            .map(|c| c.to_vec());
        card.launch()?;
        Ok(card)
    }

    /// Like [`VpcdCard::start`], with extra `civic-card` arguments (e.g. the secure-messaging
    /// benchmark's `--benchmark-plaintext-baseline`).
    pub fn start_with_args(state: impl AsRef<Path>, args: &[&str]) -> Result<Self> {
        let mut card = Self::start(state)?;
        card.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
        card.restart()?;
        Ok(card)
    }

    fn launch(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("civic-card (port {}) is already running", self.port);
        }
        self.conn = None;
        self.channel = None;
        let bin = existing_bin("civic-card")?;
        // Append: the log keeps every start of this card, which helps when a restart fails.
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .context("open the card's stderr log")?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--state")
            .arg(&self.state)
            .args(["--vpcd-host", "127.0.0.1", "--vpcd-port"])
            .arg(self.port.to_string())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let damaged_before = self.stderr().matches(DAMAGED).count();
        self.proc = Some(Guarded::spawn(&mut cmd, "civic-card")?);
        self.starts += 1;
        match self.accept_and_power_on() {
            // A state that does not load makes a damaged card that still connects (it answers
            // 6581 to everything, and says so on stderr before connecting): for these tests
            // that is a card that did not start.
            Ok(()) if self.stderr().matches(DAMAGED).count() > damaged_before => {
                if let Some(mut p) = self.proc.take() {
                    p.kill();
                }
                self.conn = None;
                bail!(
                    "civic-card found its state file {} corrupt; its stderr:\n{}",
                    self.state.display(),
                    self.stderr()
                )
            }
            Ok(()) => Ok(()),
            Err(e) => {
                let exited = self.proc.as_mut().and_then(Guarded::try_status);
                if let Some(mut p) = self.proc.take() {
                    p.kill();
                }
                self.conn = None;
                let what = match exited {
                    Some(st) => format!("civic-card exited ({st}) during start-up"),
                    None => "civic-card did not come up".to_owned(),
                };
                Err(e.context(format!(
                    "{what} (state {}); its stderr:\n{}",
                    self.state.display(),
                    self.stderr()
                )))
            }
        }
    }

    fn accept_and_power_on(&mut self) -> Result<()> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("accept the card's connection"),
            }
            if let Some(st) = self.proc.as_mut().and_then(Guarded::try_status) {
                bail!("civic-card exited ({st}) before connecting");
            }
            if Instant::now() >= deadline {
                bail!("civic-card did not connect within {CONNECT_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_micros(200));
        };
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        self.conn = Some(stream);
        self.control(control::POWER_ON)?;
        self.control(control::ATR_REQUEST)?;
        let atr = self.recv().context("read the ATR")?;
        if atr.first() != Some(&0x3B) && atr.first() != Some(&0x3F) {
            bail!("not an ATR: {atr:02X?}");
        }
        self.atr = atr;
        Ok(())
    }

    fn stream(&mut self) -> Result<&mut TcpStream> {
        self.conn
            .as_mut()
            .ok_or_else(|| anyhow!("civic-card is not connected (killed?)"))
    }

    /// Send one control frame (see [`control`]). Only the ATR request gets an answer (read it
    /// with [`VpcdCard::recv`]).
    pub fn control(&mut self, code: u8) -> Result<()> {
        self.write_frame(&[code])
    }

    fn write_frame(&mut self, payload: &[u8]) -> Result<()> {
        let len = u16::try_from(payload.len())
            .map_err(|_| anyhow!("frame of {} bytes is too long for vpcd", payload.len()))?;
        let mut frame = Vec::with_capacity(payload.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        // One write: the card then reads length and body without waiting on an ACK.
        self.stream()?
            .write_all(&frame)
            .context("send a frame to the card")
    }

    /// The card's CAN, if known (set, or seen in a plain PUT DATA at personalisation).
    pub fn can(&self) -> Option<&[u8]> {
        self.can.as_deref()
    }

    /// The card's CAN, for the secure channel [`VpcdCard::transmit`] opens.
    pub fn set_can(&mut self, can: &[u8]) {
        self.can = Some(can.to_vec());
    }

    /// Whether a secure-messaging session is open.
    pub fn in_session(&self) -> bool {
        self.channel.is_some()
    }

    /// Send an APDU without reading the answer (the tearing test kills the card meanwhile);
    /// protected inside a session.
    pub fn send(&mut self, apdu: &[u8]) -> Result<()> {
        if apdu.len() < 4 {
            bail!("an APDU has at least 4 bytes (got {})", apdu.len());
        }
        let protected = self.protect(apdu)?;
        self.sent_protected = protected.is_some();
        self.write_frame(protected.as_deref().unwrap_or(apdu))
    }

    /// `apdu` protected, if a session is open and it is a well-formed plain command.
    fn protect(&mut self, apdu: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(ch) = self.channel.as_mut() else {
            return Ok(None);
        };
        match card_applet::apdu::CommandApdu::parse(apdu) {
            Ok(cmd) if cmd.cla & !0x10 == 0 => Ok(Some(
                ch.protect_command(&cmd)
                    .map_err(|e| anyhow!("protecting an APDU: {e}"))?,
            )),
            _ => Ok(None),
        }
    }

    /// Send an APDU and return the card's response, without secure messaging.
    pub fn transmit_raw(&mut self, apdu: &[u8]) -> Result<Vec<u8>> {
        if apdu.len() < 4 {
            bail!("an APDU has at least 4 bytes (got {})", apdu.len());
        }
        self.write_frame(apdu)?;
        let rsp = self.recv()?;
        if rsp.len() < 2 {
            bail!("response shorter than a status word: {rsp:02X?}");
        }
        Ok(rsp)
    }

    /// PACE with the CAN, if known (the card is selected and issued).
    fn open_session(&mut self) -> Result<()> {
        let Some(can) = self.can.clone() else {
            return Ok(());
        };
        let mut transmit = |a: &[u8]| self.transmit_raw(a);
        let ch = card_applet::sm::establish(
            &mut transmit,
            &mut rand_core::OsRng,
            &card_applet::sm::Password::Can(&can),
        )
        .map_err(|e| anyhow!("PACE with the card's CAN: {e}"))?;
        self.channel = Some(ch);
        Ok(())
    }

    /// Read one frame, bounded by the timeout.
    pub fn recv(&mut self) -> Result<Vec<u8>> {
        let timeout = self.timeout;
        let stream = self.stream()?;
        read_frame(stream).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                anyhow!("the card did not answer within {timeout:?}")
            }
            io::ErrorKind::UnexpectedEof => anyhow!("the card closed the connection"),
            _ => anyhow::Error::new(e).context("read a frame from the card"),
        })
    }

    /// Send an APDU and return the card's response (data || SW1 SW2), through the secure
    /// channel once the card is issued (see the module documentation).
    pub fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>> {
        use card_applet::apdu::CommandApdu;
        use card_applet::sm::SmError;
        let parsed = CommandApdu::parse(apdu).ok();
        let plain = parsed.as_ref().is_some_and(|a| a.cla & !0x10 == 0);
        let is = |i: u8| plain && parsed.as_ref().is_some_and(|a| a.ins == i);
        let select = is(0xA4);
        if let Some(protected) = self.protect(apdu)? {
            let r = self.transmit_raw(&protected)?;
            let ch = self.channel.as_mut().context("session")?;
            match ch.unprotect_response(&r) {
                Ok(plain) => return Ok(plain),
                // Session lost (a reset): SELECT starts again in plain.
                Err(SmError::Plain(_)) if select => self.channel = None,
                Err(SmError::Plain(_)) => {
                    self.channel = None;
                    return Ok(r);
                }
                Err(e) => bail!("protected answer does not verify: {e}"),
            }
        }
        if let Some(cmd) = parsed.as_ref().filter(|_| is(0xDA)) {
            if cmd.p1p2() == card_applet::protocol::object::CAN {
                self.can = Some(cmd.data.clone());
            }
        }
        self.channel = None;
        let r = self.transmit_raw(apdu)?;
        let ok = r.ends_with(&[0x90, 0x00]);
        let issued_fci = select && ok && fci_says_issued(&r[..r.len() - 2]);
        if issued_fci || (is(0x44) && ok) {
            self.open_session()?;
        }
        Ok(r)
    }

    /// Bound for every later read (and write).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.timeout = timeout;
        if let Some(s) = &self.conn {
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
        }
        Ok(())
    }

    /// SIGKILL the card (power lost) and reap it. The connection is kept so that a response
    /// the card sent before it died can still be read with [`VpcdCard::recv_after_kill`].
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let mut p = self
            .proc
            .take()
            .ok_or_else(|| anyhow!("civic-card is not running"))?;
        p.kill()
            .ok_or_else(|| anyhow!("civic-card (pid {}) could not be reaped", p.pid()))
    }

    /// After [`VpcdCard::kill`]: the complete response frame the card sent before it died, if
    /// any (`None` when it died first, or in the middle of the frame). Drops the connection.
    pub fn recv_after_kill(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.recv_after_kill_raw()?.frame)
    }

    /// After [`VpcdCard::kill`]: every byte the card sent before it died, and the complete
    /// frame if those bytes hold one. A non-empty [`AfterKill::raw`] without a frame means the
    /// card died while writing its answer (so the answer, or part of it, had left the card).
    /// Drops the connection.
    pub fn recv_after_kill_raw(&mut self) -> Result<AfterKill> {
        if self.is_running() {
            bail!("recv_after_kill on a running card");
        }
        let Some(mut s) = self.conn.take() else {
            return Ok(AfterKill::default());
        };
        // The peer is gone: everything it wrote is already in our receive buffer, then EOF
        // (or a reset). A short bound only guards against surprises.
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Reset by the dying peer, or the bound: what arrived is all there is.
                Err(_) => break,
            }
        }
        let _ = s.shutdown(Shutdown::Both);
        let mut frame = match raw.as_slice() {
            [a, b, body @ ..] if body.len() >= usize::from(u16::from_be_bytes([*a, *b])) => {
                Some(body[..usize::from(u16::from_be_bytes([*a, *b]))].to_vec())
            }
            _ => None,
        };
        // A protected answer that got out whole: the plain one (a plain status word, e.g.
        // 6988, stays as it is).
        if let (Some(mut ch), Some(f), true) =
            (self.channel.take(), frame.as_ref(), self.sent_protected)
        {
            if let Ok(plain) = ch.unprotect_response(f) {
                frame = Some(plain);
            }
        }
        Ok(AfterKill { raw, frame })
    }

    /// Start the card again on the same state file and the same port (after [`kill`]).
    ///
    /// [`kill`]: VpcdCard::kill
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.kill()?;
        }
        self.launch()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_status().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Guarded::pid)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state_path(&self) -> &Path {
        &self.state
    }

    /// The ATR read at the last (re)start.
    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    /// How many times the process was started.
    pub fn starts(&self) -> usize {
        self.starts
    }

    /// Everything the card printed on stderr, over all its starts.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for VpcdCard {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// What [`VpcdCard::recv_after_kill_raw`] found on the connection of a killed card.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfterKill {
    /// Every byte received (length prefix included); empty when the card died first.
    pub raw: Vec<u8>,
    /// The first complete frame in `raw`, if any.
    pub frame: Option<Vec<u8>>,
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body)?;
    Ok(body)
}

/// Whether an FCI (`6F { .. A5 { .. 82 LCS .. } }`) says the card is issued (LCS 05).
fn fci_says_issued(fci: &[u8]) -> bool {
    use card_applet::protocol::{tag, tlv};
    tlv::find(fci, tag::FCI)
        .ok()
        .flatten()
        .and_then(|f| tlv::find(f, tag::FCI_PROPRIETARY).ok().flatten())
        .and_then(|p| tlv::find(p, tag::LIFE_CYCLE).ok().flatten())
        == Some(&[0x05][..])
}

/// The CAN stored in a card state file (none for a blank card or a missing file): what is
/// printed on the card, which whoever holds the card can read.
pub fn stored_can(state: &Path) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if !state.exists() {
        return Ok(None);
    }
    let card = card_applet::Card::with_os_rng(card_applet::FileStore::new(state))
        .map_err(|e| anyhow!("read the CAN from {}: {e}", state.display()))?;
    Ok(card
        .applet()
        .state()
        .can
        .as_ref()
        .map(|c| Zeroizing::new(c.to_vec())))
}

/// The chip's private key in a card state file (none for a blank card, before GENERATE KEY,
/// or a missing file): for the hostile card, which plays the genuine chip's side of PACE-CAM.
pub fn stored_chip_key(state: &Path) -> Result<Option<Zeroizing<[u8; 32]>>> {
    if !state.exists() {
        return Ok(None);
    }
    let card = card_applet::Card::with_os_rng(card_applet::FileStore::new(state))
        .map_err(|e| anyhow!("read the chip key from {}: {e}", state.display()))?;
    Ok(card.applet().state().card_key.clone())
}
