//! APDU round-trip latency through the real stack: pcsc crate -> pcscd -> vpcd (TCP) ->
//! `civic-card`, against the floor of a bare loopback TCP ping-pong with the same framing.
//!
//! A benchmark, not a test: it prints numbers and never asserts on time.
//!
//! ```sh
//! cargo build --release -p card-applet --bins     # the civic-card this measures
//! cargo bench -p civic-e2e --bench apdu_latency
//! ```
//!
//! It starts the harness's pcscd (reader 0, port 31337) and one blank card. Other engineers run
//! the e2e tests on the same machine and only one pcscd can run, so it first waits (up to 10
//! minutes) until no pcscd runs. Under `cargo test --benches` (no `--bench` argument) it
//! does nothing.
//!
//! Measurements (1,000 samples each after 50 warm-up round trips):
//! - `select`: SELECT by AID with Le 00 (FCI back, ~45 bytes);
//! - `get_data_1024_extended`: GET DATA of slot 0 with extended Le 0000, 1,024 data bytes back;
//! - `get_data_1024_short`: the same with Le 00, then 61xx / GET RESPONSE (4 APDUs in all);
//! - `tcp_floor`: two threads of this process, loopback TCP, 2-byte length + 13-byte payload
//!   each way, written as two writes like vpcd does, TCP_QUICKACK set before every read on
//!   both sides.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use civic_e2e::stats::{stats, Stats};
use civic_e2e::{bin_dir, pcscd, serial, with_timeout, VirtualCard};
use socket2::SockRef;

const SAMPLES: usize = 1_000;
const WARM_UP: usize = 50;
/// How long to wait for someone else's pcscd to go away.
const PCSCD_WAIT: Duration = Duration::from_secs(600);
/// Bound for the whole PC/SC part (a frozen card would hang the client forever).
const PCSC_BOUND: Duration = Duration::from_secs(300);
/// The median below which the 44 ms delayed-ACK trap is certainly absent.
const TRAP_LINE: Duration = Duration::from_millis(5);

const SELECT: [u8; 13] = [
    0x00, 0xA4, 0x04, 0x00, 0x07, 0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01, 0x00,
];
/// GET DATA slot 0, extended Le 0000 (up to 65,536 bytes).
const GET_DATA_EXTENDED: [u8; 7] = [0x00, 0xCA, 0x02, 0x00, 0x00, 0x00, 0x00];
/// GET DATA slot 0, short Le 00 (256 bytes, then 61xx).
const GET_DATA_SHORT: [u8; 5] = [0x00, 0xCA, 0x02, 0x00, 0x00];
const GET_RESPONSE: [u8; 5] = [0x00, 0xC0, 0x00, 0x00, 0x00];
/// The record length that makes GET DATA of the slot exactly 1,024 bytes
/// (`80 01 02` + `81 82 LL LL` + record).
const RECORD_LEN: usize = 1_024 - 7;
/// The floor's message: as long as a SELECT.
const FLOOR_MESSAGE_LEN: usize = 13;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn sw(resp: &[u8]) -> u16 {
    match resp {
        [.., a, b] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

/// Wait until no pcscd runs (someone else's e2e run owns the machine's only pcscd socket).
fn wait_for_free_pcscd() -> Result<()> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let pids = civic_e2e::pcscd_pids();
        if pids.is_empty() {
            if said {
                eprintln!(
                    "apdu_latency: pcscd is free after {:.0} s",
                    start.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        let list = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        if start.elapsed() >= PCSCD_WAIT {
            bail!(
                "a pcscd (pids {list}) has been running for {PCSCD_WAIT:?}; rerun when it is gone"
            );
        }
        if !said {
            eprintln!(
                "apdu_latency: a pcscd is running (pids {list}): waiting up to {PCSCD_WAIT:?} for \
                 it to go away"
            );
            said = true;
        }
        thread::sleep(Duration::from_secs(2));
    }
}

struct PcscResults {
    select: Stats,
    extended: Stats,
    short: Stats,
    response_len: usize,
    short_apdus: usize,
}

fn transmit<'b>(card: &pcsc::Card, apdu: &[u8], buf: &'b mut [u8]) -> Result<&'b [u8]> {
    card.transmit(apdu, buf)
        .map_err(|e| anyhow!("SCardTransmit({:02X?}..): {e}", &apdu[..4.min(apdu.len())]))
}

/// Time `n` runs of `f` (after `WARM_UP` untimed ones).
fn measure(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<Duration>> {
    for _ in 0..WARM_UP {
        f()?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

fn pcsc_part(reader: String) -> Result<PcscResults> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).context("SCardEstablishContext")?;
    let name = CString::new(reader.as_str())?;
    let card = ctx
        .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .with_context(|| format!("SCardConnect({reader})"))?;
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];

    // Personalisation-state card: write the credential that GET DATA reads back.
    let r = transmit(&card, &SELECT, &mut buf)?;
    if sw(r) != 0x9000 {
        bail!("SELECT answered {:04X}", sw(r));
    }
    let body_len = 3 + 4 + RECORD_LEN;
    let mut put = vec![0x00, 0xDA, 0x02, 0x00, 0x00];
    put.extend_from_slice(&u16::try_from(body_len)?.to_be_bytes());
    put.extend_from_slice(&[0x80, 0x01, 0x02, 0x81, 0x82]);
    put.extend_from_slice(&u16::try_from(RECORD_LEN)?.to_be_bytes());
    put.extend((0..RECORD_LEN).map(|i| i as u8));
    let r = transmit(&card, &put, &mut buf)?;
    if sw(r) != 0x9000 {
        bail!(
            "PUT DATA (extended, {} bytes) answered {:04X}",
            put.len(),
            sw(r)
        );
    }
    let r = transmit(&card, &GET_DATA_EXTENDED, &mut buf)?;
    if sw(r) != 0x9000 {
        bail!("GET DATA (extended) answered {:04X}", sw(r));
    }
    let response_len = r.len().saturating_sub(2);

    let mut select = measure(SAMPLES, || {
        let r = transmit(&card, &SELECT, &mut buf)?;
        match sw(r) {
            0x9000 => Ok(()),
            s => bail!("SELECT answered {s:04X}"),
        }
    })?;

    let mut extended = measure(SAMPLES, || {
        let r = transmit(&card, &GET_DATA_EXTENDED, &mut buf)?;
        match (sw(r), r.len().saturating_sub(2)) {
            (0x9000, n) if n == response_len => Ok(()),
            (s, n) => bail!("GET DATA extended: {n} bytes, {s:04X}"),
        }
    })?;

    let mut short_apdus = 0;
    let mut short = measure(SAMPLES, || {
        let mut apdus = 1;
        let mut got;
        let mut r = transmit(&card, &GET_DATA_SHORT, &mut buf)?;
        got = r.len().saturating_sub(2);
        while sw(r) >> 8 == 0x61 {
            r = transmit(&card, &GET_RESPONSE, &mut buf)?;
            got += r.len().saturating_sub(2);
            apdus += 1;
        }
        short_apdus = apdus;
        match sw(r) {
            0x9000 if got == response_len => Ok(()),
            s => bail!("GET DATA short chain: {got} bytes, {s:04X}"),
        }
    })?;

    card.disconnect(pcsc::Disposition::LeaveCard)
        .map_err(|(_, e)| anyhow!("SCardDisconnect: {e}"))?;
    Ok(PcscResults {
        select: stats(&mut select),
        extended: stats(&mut extended),
        short: stats(&mut short),
        response_len,
        short_apdus,
    })
}

fn write_frame(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    // Two writes, as Debian's vpcd does: the case TCP_QUICKACK is there for.
    s.write_all(&len.to_be_bytes())?;
    s.write_all(payload)
}

fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    // Quick-ACK mode is not sticky: set it before every read.
    SockRef::from(&*s).set_quickack(true)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    SockRef::from(&*s).set_quickack(true)?;
    s.read_exact(buf)
}

/// The floor: 1,000 framed round trips between two threads over loopback TCP.
fn tcp_floor() -> Result<Stats> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind the floor's listener")?;
    let addr = listener.local_addr()?;
    let echo = thread::Builder::new().name("floor-echo".into()).spawn(
        move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            let mut buf = Vec::new();
            loop {
                match read_frame(&mut s, &mut buf) {
                    Ok(()) => write_frame(&mut s, &buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        },
    )?;
    let mut s = TcpStream::connect(addr).context("connect to the floor's listener")?;
    let msg = [0x5Au8; FLOOR_MESSAGE_LEN];
    let mut buf = Vec::new();
    let mut samples = measure(SAMPLES, || {
        write_frame(&mut s, &msg)?;
        read_frame(&mut s, &mut buf)?;
        if buf.len() != msg.len() {
            bail!("floor echo returned {} bytes", buf.len());
        }
        Ok(())
    })?;
    drop(s);
    echo.join()
        .map_err(|_| anyhow!("the floor's echo thread panicked"))?
        .context("the floor's echo thread")?;
    Ok(stats(&mut samples))
}

fn line(name: &str, s: Stats, floor: Stats) {
    println!(
        "{name}: median {:.1} us, p99 {:.1} us, ratio to floor {:.1}",
        us(s.median),
        us(s.p99),
        s.median.as_secs_f64() / floor.median.as_secs_f64()
    );
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "apdu_latency: a benchmark; run it with cargo bench -p civic-e2e --bench apdu_latency"
        );
        return Ok(());
    }
    let bin = bin_dir().join("civic-card");
    if !bin.is_file() {
        bail!(
            "{} not found: run cargo build --release -p card-applet --bins first",
            bin.display()
        );
    }
    if !bin_dir().ends_with("release") {
        eprintln!(
            "apdu_latency: warning: measuring a non-release civic-card ({})",
            bin.display()
        );
    }

    wait_for_free_pcscd()?;
    let _lock = serial();
    let daemon = pcscd();
    let card = VirtualCard::blank(0)?;
    let reader = card.reader();
    println!(
        "apdu_latency: {SAMPLES} samples each, card {} in \"{reader}\" (pcscd pid {})",
        bin.display(),
        daemon
            .pid()
            .map_or_else(|| "?".to_owned(), |p| p.to_string())
    );

    let floor = tcp_floor()?;
    let results = with_timeout(PCSC_BOUND, move || pcsc_part(reader))
        .map_err(|t| anyhow!("PC/SC measurements: {t}"))??;
    drop(card);
    daemon.stop();

    line(
        "tcp_floor (13-byte framed ping-pong, loopback)",
        floor,
        floor,
    );
    line("select", results.select, floor);
    line(
        &format!("get_data_{}_extended (1 APDU)", results.response_len),
        results.extended,
        floor,
    );
    line(
        &format!(
            "get_data_{}_short ({} APDUs, 61xx + GET RESPONSE)",
            results.response_len, results.short_apdus
        ),
        results.short,
        floor,
    );
    let per_apdu = [
        results.select.median,
        results.extended.median,
        results.short.median / u32::try_from(results.short_apdus.max(1))?,
    ];
    let worst = per_apdu.iter().copied().max().unwrap_or_default();
    println!(
        "44 ms delayed-ACK trap: {} (worst median per APDU {:.1} us, line {} ms)",
        if worst < TRAP_LINE {
            "absent"
        } else {
            "PRESENT"
        },
        us(worst),
        TRAP_LINE.as_millis()
    );
    Ok(())
}
