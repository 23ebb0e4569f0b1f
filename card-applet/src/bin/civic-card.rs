//! civic-card: a virtual Civic Card for pcscd, through vsmartcard's vpcd driver.
//!
//! ```text
//! civic-card --state FILE [--vpcd-host 127.0.0.1] [--vpcd-port 35963] [--feed N]
//! ```
//!
//! `--feed N` models an issuing office's card feeder (the hopper of a personalisation
//! machine) for provisioning benchmarks: the reader holds one of N cards, whose states are
//! `FILE.0` .. `FILE.{N-1}`, and a power-off (the vpcd control frame 00, which pcscd sends
//! for `SCardReconnect(SCARD_UNPOWER_CARD)`) ejects the card and presents the next one, in a
//! ring. Without it there is one card, in FILE.
//!
//! `--benchmark-plaintext-baseline` (deliberately not in `--help`) exists only for the
//! secure-messaging benchmark (`scripts/bench`, tests/benches/critical_paths.rs and
//! secure_messaging.rs): the same applet over the same kind of issued state, but answering
//! plain commands too, as cards did before issue 7, so the cost of PACE + SM is measured
//! against the same virtual card in the same run (not against an older binary or a
//! different process). It weakens the card (no secure channel required) and says so on
//! stderr; never use it for a card anyone relies on.
//!
//! The card's state lives in FILE (a missing file is a blank card) and is committed
//! atomically before every response that follows a change, so the process can be killed at
//! any time. vpcd protocol: frames are a 2-byte big-endian length then the payload; 1-byte
//! payloads are control frames (00 power off, 01 power on, 02 reset, 04 ATR request), longer
//! ones are APDUs.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use card_applet::{atr::ATR, Card, FileStore};
use zeroize::Zeroize;

const RECONNECT_DELAY: Duration = Duration::from_secs(1);

struct Args {
    state: PathBuf,
    host: String,
    port: u16,
    /// The secure-messaging benchmark's plaintext baseline (see Card::plaintext_baseline_for_benchmarks).
    plaintext_baseline: bool,
    /// Cards in the feeder (1: no feeder).
    feed: usize,
}

const USAGE: &str =
    "usage: civic-card --state FILE [--vpcd-host HOST] [--vpcd-port PORT] [--feed N]\n\
    \n\
    Runs a virtual Civic Card connected to vpcd (vsmartcard). A missing FILE is a blank card.\n\
    --feed N: a card feeder of N cards (FILE.0 .. FILE.N-1); each power-off presents the next.\n\
    Defaults: --vpcd-host 127.0.0.1 --vpcd-port 35963";

fn parse_args() -> Result<Args, String> {
    let mut state = None;
    let mut host = String::from("127.0.0.1");
    let mut port = 35963u16;
    let mut plaintext_baseline = false;
    let mut feed = 1usize;
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy().into_owned();
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(String::new());
        }
        let mut value = || -> Result<std::ffi::OsString, String> {
            match &inline {
                Some(v) => Ok(v.into()),
                None => it.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match name.as_str() {
            // Not in USAGE: only the secure-messaging benchmark's baseline card uses it.
            "--benchmark-plaintext-baseline" => plaintext_baseline = true,
            "--state" => state = Some(PathBuf::from(value()?)),
            "--vpcd-host" => host = value()?.to_string_lossy().into_owned(),
            "--vpcd-port" => {
                let v = value()?;
                port = v
                    .to_string_lossy()
                    .parse()
                    .map_err(|_| format!("invalid port {v:?}"))?;
            }
            "--feed" => {
                let v = value()?;
                feed = v
                    .to_string_lossy()
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or_else(|| format!("invalid --feed {v:?} (1 to 100000 cards)"))?;
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Args {
        state: state.ok_or("--state FILE is required")?,
        host,
        port,
        plaintext_baseline,
        feed,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("civic-card: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Every state change is committed atomically (tmp file + rename) before the response is
    // sent, so exiting at any point is safe.
    if let Err(e) = ctrlc::set_handler(|| std::process::exit(0)) {
        eprintln!("civic-card: cannot install the signal handler: {e}");
    }
    if args.plaintext_baseline {
        eprintln!(
            "civic-card: WARNING: benchmark baseline: this issued card also answers plain \
             commands (no secure messaging required); never use it outside the benchmark"
        );
    }
    let mut feeder = Feeder::new(&args);
    let mut card = feeder.load(0);
    loop {
        match connect(&args.host, args.port) {
            Ok(stream) => {
                eprintln!("civic-card: connected to {}:{}", args.host, args.port);
                card.reset();
                let result = serve(&mut card, &mut feeder, stream);
                card.reset();
                match result {
                    Ok(()) => eprintln!("civic-card: vpcd closed the connection"),
                    Err(e) => eprintln!("civic-card: connection lost: {e}"),
                }
            }
            Err(e) => eprintln!(
                "civic-card: cannot connect to {}:{}: {e}",
                args.host, args.port
            ),
        }
        // pcscd polls every 400 ms; reconnecting faster can leave the slot stuck.
        std::thread::sleep(RECONNECT_DELAY);
    }
}

/// The chip in the reader: the applet over its state file, or a damaged chip.
type VirtualCard = Box<dyn Chip>;

/// The card in the reader, and (with `--feed`) where the next ones come from.
struct Feeder {
    state: PathBuf,
    count: usize,
    current: usize,
    /// `--benchmark-plaintext-baseline`: every card of the feeder skips the SM requirement.
    plaintext_baseline: bool,
}

impl Feeder {
    fn new(args: &Args) -> Self {
        Feeder {
            state: args.state.clone(),
            count: args.feed,
            current: 0,
            plaintext_baseline: args.plaintext_baseline,
        }
    }

    fn path(&self, i: usize) -> PathBuf {
        if self.count == 1 {
            return self.state.clone();
        }
        let mut p = self.state.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    }

    /// A state that does not load (a changed byte fails the SHA-256 trailer, an unreadable
    /// file) makes a damaged chip, not a missing one: like a real card whose memory check
    /// fails, it still answers the reader, with 6581 (memory failure, ISO 7816-4 5.6) to every
    /// command, so the clerk is told the card is damaged rather than that no card is there.
    /// The file is never written in that mode: it stays as found, for the office to examine.
    fn load(&self, i: usize) -> VirtualCard {
        let path = self.path(i);
        match Card::with_os_rng(Logged(FileStore::new(&path))) {
            Ok(mut c) => {
                if self.plaintext_baseline {
                    c.plaintext_baseline_for_benchmarks();
                }
                Box::new(c)
            }
            Err(e) => {
                eprintln!(
                    "civic-card: {}: {e}: the card is damaged; it answers every command with \
                     6581 (memory failure) and leaves the file as it is",
                    path.display()
                );
                Box::new(Damaged)
            }
        }
    }

    /// Power-off: with a feeder, the next card of the ring replaces `card`.
    fn power_off(&mut self, card: &mut VirtualCard) -> io::Result<()> {
        if self.count > 1 {
            let next = (self.current + 1) % self.count;
            *card = self.load(next);
            self.current = next;
        }
        card.reset();
        Ok(())
    }
}

fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                // A connect to a port in the ephemeral range can "succeed" against itself
                // (TCP simultaneous open) when nothing listens: refuse such a connection.
                if stream.local_addr()? == stream.peer_addr()? {
                    last = io::Error::new(io::ErrorKind::ConnectionRefused, "self-connection");
                    continue;
                }
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Read exactly `buf.len()` bytes, re-arming TCP_QUICKACK first: vpcd sends the length and
/// the body in two writes, and a delayed ACK would cost ~40 ms per APDU.
fn read_exact_quickack(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    socket2::SockRef::from(&*stream).set_quickack(true)?;
    stream.read_exact(buf)
}

fn send_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too long"))?;
    let mut frame = Vec::with_capacity(payload.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

/// The state file, with failed commits said on stderr: the applet answers 6581 and keeps its
/// previous state, and whoever runs the card needs to know why (a full disk, permissions).
struct Logged(FileStore);

impl card_applet::Store for Logged {
    fn load(&mut self) -> Result<Option<Vec<u8>>, card_applet::store::StoreError> {
        self.0.load()
    }
    fn commit(&mut self, state: &[u8]) -> Result<(), card_applet::store::StoreError> {
        let r = self.0.commit(state);
        if let Err(e) = &r {
            eprintln!(
                "civic-card: {e}: the command is refused with 6581 (memory failure); the card \
                 keeps its previous state"
            );
        }
        r
    }
}

/// What the runner serves: the applet, or a damaged chip.
trait Chip {
    fn process(&mut self, apdu: &[u8]) -> Vec<u8>;
    fn reset(&mut self);
}

impl<S, R> Chip for Card<S, R>
where
    S: card_applet::Store,
    R: rand_core::RngCore + rand_core::CryptoRng,
{
    fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        Card::process(self, apdu)
    }
    fn reset(&mut self) {
        Card::reset(self);
    }
}

/// A card whose stored state failed to load.
struct Damaged;

impl Chip for Damaged {
    fn process(&mut self, _apdu: &[u8]) -> Vec<u8> {
        card_applet::protocol::Status::MemoryFailure
            .sw()
            .to_be_bytes()
            .to_vec()
    }
    fn reset(&mut self) {}
}

/// Serve one vpcd connection until EOF (Ok) or an error.
fn serve(card: &mut VirtualCard, feeder: &mut Feeder, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 0x1_0000];
    loop {
        let mut len = [0u8; 2];
        match read_exact_quickack(&mut stream, &mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = usize::from(u16::from_be_bytes(len));
        let Some(msg) = buf.get_mut(..n) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
        };
        read_exact_quickack(&mut stream, msg)?;
        match msg {
            [] => {}
            [0x00] => feeder.power_off(card)?,
            [0x01] | [0x02] => card.reset(),
            [0x04] => send_frame(&mut stream, &ATR)?,
            [other] => eprintln!("civic-card: ignoring unknown vpcd control {other:#04x}"),
            apdu => {
                let response = card.process(apdu);
                // The APDU may have carried a PIN.
                apdu.zeroize();
                send_frame(&mut stream, &response)?;
            }
        }
    }
}
