//! civic-card: a virtual Civic Card for pcscd, through vsmartcard's vpcd driver.
//!
//! ```text
//! civic-card --state FILE [--vpcd-host 127.0.0.1] [--vpcd-port 35963]
//! ```
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
}

const USAGE: &str = "usage: civic-card --state FILE [--vpcd-host HOST] [--vpcd-port PORT]\n\
    \n\
    Runs a virtual Civic Card connected to vpcd (vsmartcard). A missing FILE is a blank card.\n\
    Defaults: --vpcd-host 127.0.0.1 --vpcd-port 35963";

fn parse_args() -> Result<Args, String> {
    let mut state = None;
    let mut host = String::from("127.0.0.1");
    let mut port = 35963u16;
    let mut plaintext_baseline = false;
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
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Args {
        state: state.ok_or("--state FILE is required")?,
        host,
        port,
        plaintext_baseline,
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
    let mut card = match Card::with_os_rng(FileStore::new(&args.state)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("civic-card: {}: {e}", args.state.display());
            return ExitCode::from(1);
        }
    };
    if args.plaintext_baseline {
        eprintln!(
            "civic-card: WARNING: benchmark baseline: this issued card also answers plain \
             commands (no secure messaging required); never use it outside the benchmark"
        );
        card.plaintext_baseline_for_benchmarks();
    }
    loop {
        match connect(&args.host, args.port) {
            Ok(stream) => {
                eprintln!("civic-card: connected to {}:{}", args.host, args.port);
                card.reset();
                let result = serve(&mut card, stream);
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

/// Serve one vpcd connection until EOF (Ok) or an error.
fn serve<S, R>(card: &mut Card<S, R>, mut stream: TcpStream) -> io::Result<()>
where
    S: card_applet::Store,
    R: rand_core::RngCore + rand_core::CryptoRng,
{
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
            [0x00] | [0x01] | [0x02] => card.reset(),
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
