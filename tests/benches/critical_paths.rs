//! Every critical path against its floor, through the real stack (pcsc crate -> pcscd -> vpcd
//! -> `civic-card`), in one run. Run it with `scripts/bench`, which installs the packages,
//! builds the release binaries, starts its own pcscd and the virtual cards through
//! `scripts/lib.sh`, runs this and writes the generated section of BENCHMARKS.md from its
//! output. A benchmark, not a test: it prints figures and never asserts on time (it does
//! insist that every scan, view and provisioned card is correct).
//!
//! Environment (set by `scripts/bench`):
//! - `CIVIC_BENCH_READER`: the reader holding a blank card (scan, view, PIN, peer);
//! - `CIVIC_BENCH_FEED_READER`, `CIVIC_BENCH_FEED`: the reader whose card runs with
//!   `civic-card --feed N` (a card feeder of N blank cards; a power-off presents the next);
//! - `CIVIC_BENCH_SCANS` (default 500): timed scans; views and PIN verifies take a fifth;
//! - `CIVIC_BIN_DIR`: where `civic` and `civic-card` live (release build).
//!
//! stdout is the generated markdown section (between `<!-- bench:begin -->` and
//! `<!-- bench:end -->`); progress goes to stderr. Under `cargo test --benches` (no `--bench`
//! argument) it does nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use card_applet::protocol::ins;
use civic_e2e::stats::{stats, Stats};
use civic_e2e::{bin_dir, run_civic, with_timeout};
use civic_reader::apdu::ApduMode;
use civic_reader::datadir::DataDir;
use civic_reader::office::IssuanceBook;
use civic_reader::session::{CardInfo, Pin, Session};
use civic_reader::sm::{CardPassword, SmTransport};
use civic_reader::terminal::{self, Role};
use civic_reader::transport::{PcscTransport, Transport, TransportError};
use civic_reader::workflow::batch::{self, CardSource, Pass, Progress};
use civic_reader::workflow::provision::{Bureau, Office, Validity};
use civic_reader::workflow::scan::{scan, ChipCheck};
use civic_reader::workflow::view::view;
use civic_registry::credential::Kind;
use civic_registry::{keys, Registry};
use p256::ecdsa::signature::{Signer, Verifier};

const PIN: &str = "482913";
/// Bound for the whole run (a frozen card would hang a PC/SC client forever).
const BOUND: Duration = Duration::from_secs(1_500);
const WARM_UP: usize = 20;
/// Samples of the floors.
const FLOOR_SAMPLES: usize = 2_000;
/// A case-1 APDU (no data either way) with an instruction the applet does not know: the card
/// answers 6D00 at once, so its round trip is pcscd + vpcd + the card's dispatch, nothing more.
const EMPTY_APDU: [u8; 4] = [0x00, 0x00, 0x00, 0x00];

// ----------------------------------------------------------------------------------------
// Counting transport

/// What crossed the transport: APDUs, command bytes, response bytes (data + SW), and (when
/// recording) each APDU with its response length.
#[derive(Debug, Default, Clone)]
struct Counts {
    apdus: u64,
    command_bytes: u64,
    response_bytes: u64,
    recording: bool,
    log: Vec<Exchange>,
}

/// One APDU as sent: command, response length, round trip.
type Exchange = (Vec<u8>, usize, Duration);

/// One scan: credentials judged, its APDUs, how many.
type ScanRun = (usize, Vec<Exchange>, u64);

impl Counts {
    fn since(&self, before: &Counts) -> (u64, u64, u64) {
        (
            self.apdus - before.apdus,
            self.command_bytes - before.command_bytes,
            self.response_bytes - before.response_bytes,
        )
    }
}

/// A [`Transport`] that counts what passes through it, transactions included.
struct Counting<'a> {
    inner: Box<dyn Transport + 'a>,
    counts: Rc<RefCell<Counts>>,
}

impl Transport for Counting<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let t = Instant::now();
        let r = self.inner.transmit(apdu)?;
        let took = t.elapsed();
        let mut c = self.counts.borrow_mut();
        c.apdus += 1;
        c.command_bytes += apdu.len() as u64;
        c.response_bytes += r.len() as u64;
        if c.recording {
            c.log.push((apdu.to_vec(), r.len(), took));
        }
        Ok(r)
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Counting {
            inner: self.inner.transaction()?,
            counts: Rc::clone(&self.counts),
        }))
    }

    fn chip_authentication(&self) -> Option<card_applet::sm::ChipAuthentication> {
        self.inner.chip_authentication()
    }
}

// ----------------------------------------------------------------------------------------
// Statistics

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Time `n` runs of `f` after `WARM_UP` untimed ones.
fn measure(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    for _ in 0..WARM_UP {
        f()?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    Ok(stats(&mut samples))
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

// ----------------------------------------------------------------------------------------
// Floors

struct Floors {
    /// Round trip of [`EMPTY_APDU`] through the same transport the workflows use.
    empty_apdu: Stats,
    /// One bare P-256 ECDSA verify (RustCrypto p256, this process), the faster of two runs.
    verify: Duration,
    /// One bare P-256 ECDSA sign.
    sign: Duration,
}

/// Median time of one bare P-256 verify and one sign (`FLOOR_SAMPLES` each, after a warm-up).
/// Called before and after the paths; the faster run is the floor, so a slow floor (another
/// process on the core) cannot flatter a ratio.
fn crypto_floors() -> (Duration, Duration) {
    let key = keys::generate();
    let vk = *key.verifying_key();
    let msg = b"civic bench floor: one signature over a short message";
    let sig: p256::ecdsa::Signature = key.sign(msg);
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..50 {
            f();
        }
        let mut samples: Vec<Duration> = (0..FLOOR_SAMPLES)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        stats(&mut samples).median
    };
    let mut verify = || {
        assert!(
            vk.verify(msg, &sig).is_ok(),
            "the floor's own signature verifies"
        );
    };
    let v = time(&mut verify);
    let mut sign = || {
        let _: p256::ecdsa::Signature = key.sign(msg);
    };
    (v, time(&mut sign))
}

fn empty_apdu_floor(reader: &str) -> Result<Stats> {
    let mut t = PcscTransport::connect(Some(reader)).context("connecting for the floor")?;
    measure(FLOOR_SAMPLES, || {
        let r = t.transmit(&EMPTY_APDU)?;
        ensure!(r.len() == 2, "the empty APDU got {} bytes back", r.len());
        Ok(())
    })
}

/// The floor of one path, sampled right before each run of the path so both see the same
/// load on this shared machine: the path's APDU count of empty APDUs on a second connection
/// to the same card, then its bare signature work (verifies and signs) in this process.
struct FloorProbe {
    t: PcscTransport,
    key: p256::ecdsa::SigningKey,
    sig: p256::ecdsa::Signature,
}

const FLOOR_MSG: &[u8] = b"civic bench floor: one signature over a short message";

/// A floor's make-up: (APDUs, verifies, signs, P-256 point multiplications, PACE sides:
/// per side two multiplications of `G` by the fixed-base table, the mapping key and the
/// `(sk*s)*G` of the ephemeral key).
type FloorSpec = (u64, u64, u64, u64, u64);

/// What one PACE run (issue 7, notes/SECURE-MESSAGING.md) adds to a path's floor: its APDUs
/// (MSE:SET AT and four GENERAL AUTHENTICATE, sent below the counting wrapper) and its
/// elliptic-curve work on both sides, since the virtual card computes on this machine too:
/// per side the mapping key pair `sk_map*G` (by `card_applet::fixed_base`'s table), the
/// ephemeral key on the mapped generator with `G'` folded in (`sk*G' = (sk*s)*G +
/// (sk*sk_map)*PK_map,other`: one multiplication by the table, one multiplication;
/// `card_applet::sm::mapped_public_key`) and the shared point: 2 multiplications and 2 by the
/// table per side, 4 and 4 in all.
const PACE: FloorSpec = (5, 0, 0, 4, 2);

/// A path's own make-up plus one PACE run (every SM path opens its session once).
fn with_pace((a, v, s, m, g): FloorSpec) -> FloorSpec {
    (a + PACE.0, v + PACE.1, s + PACE.2, m + PACE.3, g + PACE.4)
}

impl FloorProbe {
    fn new(reader: &str) -> Result<Self> {
        let key = keys::generate();
        let sig = key.sign(FLOOR_MSG);
        Ok(Self {
            t: PcscTransport::connect(Some(reader)).context("connecting for the floor")?,
            key,
            sig,
        })
    }

    fn sample(&mut self, (apdus, verifies, signs, mults, g_sides): FloorSpec) -> Result<Duration> {
        let vk = *self.key.verifying_key();
        let point = p256::ProjectivePoint::from(*vk.as_affine());
        let scalar = *self.key.as_nonzero_scalar();
        let t = Instant::now();
        for _ in 0..apdus {
            let r = self.t.transmit(&EMPTY_APDU)?;
            ensure!(r.len() == 2, "the empty APDU got {} bytes back", r.len());
        }
        for _ in 0..verifies {
            ensure!(vk.verify(FLOOR_MSG, &self.sig).is_ok(), "floor verify");
        }
        for _ in 0..signs {
            let _: p256::ecdsa::Signature = self.key.sign(FLOOR_MSG);
        }
        for _ in 0..mults {
            std::hint::black_box(point * *scalar);
        }
        for _ in 0..g_sides {
            std::hint::black_box(card_applet::fixed_base::mul_generator(&scalar));
            std::hint::black_box(card_applet::fixed_base::mul_generator(&(*scalar * *scalar)));
        }
        Ok(t.elapsed())
    }
}

/// Run `path` `WARM_UP` times, learn its floor's make-up from the last run with `spec`, then
/// `n` times, each right after one floor sample. Returns (path, floor, last run's value).
fn paired<T>(
    n: usize,
    probe: &mut FloorProbe,
    mut path: impl FnMut() -> Result<T>,
    spec: impl Fn(&T) -> FloorSpec,
) -> Result<(Stats, Stats, f64, T)> {
    let mut last = None;
    for _ in 0..WARM_UP {
        last = Some(path()?);
    }
    let mut make_up = spec(last.as_ref().context("no warm-up run")?);
    let mut ps = Vec::with_capacity(n);
    let mut fs = Vec::with_capacity(n);
    for _ in 0..n {
        fs.push(probe.sample(make_up)?);
        let t = Instant::now();
        let v = path()?;
        ps.push(t.elapsed());
        make_up = spec(&v);
        last = Some(v);
    }
    // Each run over the floor sample taken just before it: the two saw nearly the same load.
    let mut ratios: Vec<f64> = ps
        .iter()
        .zip(&fs)
        .map(|(p, f)| p.as_secs_f64() / f.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let pair = ratios[ratios.len() / 2];
    Ok((
        stats(&mut ps),
        stats(&mut fs),
        pair,
        last.context("no run")?,
    ))
}

// ----------------------------------------------------------------------------------------
// The city and its card

struct City {
    _home: tempfile::TempDir,
    data: DataDir,
}

fn civic(home: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let h = home.display().to_string();
    let out = run_civic(args, stdin, &[("CIVIC_HOME", h.as_str())])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "`civic {}` failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    Ok(text)
}

/// A connection to the issued card in `reader` behind secure messaging (issue 7), the
/// password being the CAN this office recorded, as `civic` finds it: every scan, view and PIN
/// verify pays its SELECT + PACE, as a `civic` command does.
fn sm_connect(data: &DataDir, reader: &str) -> Result<SmTransport<PcscTransport>> {
    Ok(sm_over(data, PcscTransport::connect(Some(reader))?))
}

/// Secure messaging as [`sm_connect`] sets it up, over any transport (the scan bench puts a
/// counter under it to see the APDUs on the wire).
fn sm_over<T: Transport>(data: &DataDir, inner: T) -> SmTransport<T> {
    let book = data.office_db();
    // As `civic` does (cmd::password_source): the book is opened once per card id, not on
    // every SELECT of this long-lived connection.
    let mut known: Option<(String, zeroize::Zeroizing<String>)> = None;
    let source: civic_reader::sm::PasswordSource = Box::new(move |card_id: &str| {
        if let Some((id, can)) = &known {
            if id == card_id {
                return Some(CardPassword::Can(can.clone()));
            }
        }
        let can = IssuanceBook::open(&book)
            .ok()?
            .can_of(card_id)
            .ok()
            .flatten()?;
        known = Some((card_id.to_owned(), can.clone()));
        Some(CardPassword::Can(can))
    });
    SmTransport::new(inner, source)
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Authority, three bureaus, three terminals, one provisioned card (with the CLI, as an
/// office would), and the clinic cache synced.
fn set_up_city(reader: &str) -> Result<City> {
    let home = tempfile::Builder::new()
        .prefix("civic-bench-home-")
        .tempdir()?;
    let h = home.path();
    civic(h, &["authority", "init"], None)?;
    for (id, name, kinds) in [
        ("identity-bureau", "City Identity Bureau", "identity"),
        ("health-bureau", "City Health Bureau", "health,emergency"),
        ("education-bureau", "City Education Bureau", "education"),
    ] {
        civic(
            h,
            &[
                "issuer", "add", "--id", id, "--name", name, "--kinds", kinds,
            ],
            None,
        )?;
    }
    for (id, role) in [
        ("office-01", "issuing-office"),
        ("clinic-01", "clinic"),
        ("school-01", "education-office"),
    ] {
        civic(h, &["terminal", "enroll", "--id", id, "--role", role], None)?;
    }
    let alice = repo_file("scripts/data/alice.json").display().to_string();
    civic(
        h,
        &[
            "provision",
            "--reader",
            reader,
            "--citizen",
            &alice,
            "--pin-stdin",
        ],
        Some(PIN),
    )?;
    civic(h, &["registry", "sync"], None)?;
    let data = DataDir::at(h.to_path_buf())?;
    Ok(City { _home: home, data })
}

// ----------------------------------------------------------------------------------------
// Clinic scan

struct ScanFigures {
    wall: Stats,
    /// The floor sampled before each scan.
    floor: Stats,
    /// Median over scans of scan time / the floor sample just before it.
    pair_ratio: f64,
    /// The floor's make-up.
    make_up: FloorSpec,
    /// Median round trip of each APDU, in scan order.
    apdu_median: Vec<Duration>,
    /// Time inside `transmit` per scan (all its APDUs).
    in_card: Stats,
    apdus: u64,
    command_bytes: u64,
    response_bytes: u64,
    /// Per APDU of one scan: (INS, command bytes, response bytes).
    trace: Vec<(u8, usize, usize)>,
    /// The same scan on the wire, below secure messaging: its SELECT, the PACE run's
    /// MSE:SET AT and GENERAL AUTHENTICATEs, and every other APDU protected (INS is kept in
    /// the clear by ISO 7816-4 SM, section 10.2).
    wire: Vec<(u8, usize, usize)>,
    /// Signatures verified by the reader in one scan (chip authentication + one per
    /// credential judged).
    credentials_read: usize,
    consent: bool,
}

fn scan_path(
    city: &City,
    reader: &str,
    probe: &mut FloorProbe,
    n: usize,
    consent: Option<&Pin>,
) -> Result<ScanFigures> {
    let now = civic_reader::now();
    let (registry, _note) = civic_reader::cache::open_for_scan(&city.data, false)?;
    let clinic = terminal::pick(&city.data, Some("clinic-01"), Role::Clinic, now)?;
    let counts = Rc::new(RefCell::new(Counts {
        recording: true,
        ..Counts::default()
    }));
    let wire = Rc::new(RefCell::new(Counts::default()));
    let under_sm = Counting {
        inner: Box::new(PcscTransport::connect(Some(reader))?),
        counts: Rc::clone(&wire),
    };
    let mut t = Counting {
        inner: Box::new(sm_over(&city.data, under_sm)),
        counts: Rc::clone(&counts),
    };
    let mut per_scan = None;
    let mut card_time = Vec::new();
    let one_scan = || -> Result<ScanRun> {
        let before = counts.borrow().clone();
        // Only the last scan's wire log is kept (the model needs one scan).
        *wire.borrow_mut() = Counts {
            recording: true,
            ..Counts::default()
        };
        let report = scan(
            &mut t,
            ApduMode::Extended,
            &registry,
            &clinic.as_key(),
            consent,
            civic_reader::now(),
        )?;
        ensure!(
            report.valid && report.chip == ChipCheck::Passed,
            "a scan was not valid: {:?}",
            report.problem
        );
        let d = counts.borrow().since(&before);
        let log = std::mem::take(&mut counts.borrow_mut().log);
        card_time.push(log.iter().map(|l| l.2).collect::<Vec<_>>());
        if let Some(p) = per_scan {
            ensure!(p == d, "APDUs per scan changed: {p:?} then {d:?}");
        }
        per_scan = Some(d);
        let read = report
            .credentials
            .iter()
            .filter(|c| c.verdict.is_some())
            .count();
        Ok((read, log, d.0))
    };
    let spec = |(read, log, apdus): &ScanRun| {
        let (signs, verifies) = trace_crypto(log.iter().map(|l| l.0.get(1).copied().unwrap_or(0)));
        // Chip authentication: by INTERNAL AUTHENTICATE (the card signs, the reader verifies)
        // or, with PACE-CAM, one multiplication on the reader (`CA_IC * PK_IC`).
        let (chip_verifies, cam_mults) = if signs > 0 { (1, 0) } else { (0, 1) };
        // The card remembers the clinic's certificate from the warm-up scans (a repeat visit
        // of the terminal): its PSO VERIFY CERTIFICATE makes no signature verify.
        let pso = log.iter().filter(|l| l.0.get(1) == Some(&ins::PSO)).count() as u64;
        let verifies = verifies.saturating_sub(pso);
        // Reader: the chip check and one issuer signature per credential judged; card: its
        // verifies and its sign (if any); terminal: one sign.
        with_pace((
            *apdus,
            chip_verifies + *read as u64 + verifies,
            signs + 1,
            cam_mults,
            0,
        ))
    };
    let (wall, floor, pair_ratio, (credentials_read, log, _)) = paired(n, probe, one_scan, spec)?;
    let (apdus, command_bytes, response_bytes) = per_scan.context("no scan ran")?;
    let shape = |log: &[Exchange]| -> Vec<(u8, usize, usize)> {
        log.iter()
            .map(|(c, r, _)| (c.get(1).copied().unwrap_or(0), c.len(), *r))
            .collect()
    };
    let trace = shape(&log);
    let wire = shape(&wire.borrow().log);
    // Median round trip of each APDU of the scan (the timed scans only, warm-up excluded).
    let timed = &card_time[card_time.len().saturating_sub(n)..];
    let apdu_median = (0..trace.len())
        .map(|i| {
            let mut v: Vec<Duration> = timed.iter().filter_map(|s| s.get(i).copied()).collect();
            if v.is_empty() {
                Duration::ZERO
            } else {
                stats(&mut v).median
            }
        })
        .collect();
    let mut in_card: Vec<Duration> = timed.iter().map(|s| s.iter().sum()).collect();
    let in_card = stats(&mut in_card);
    let make_up = spec(&(credentials_read, log, apdus));
    Ok(ScanFigures {
        wall,
        floor,
        pair_ratio,
        make_up,
        apdu_median,
        in_card,
        apdus,
        command_bytes,
        response_bytes,
        trace,
        wire,
        credentials_read,
        consent: consent.is_some(),
    })
}

// ----------------------------------------------------------------------------------------
// Citizen view, PIN verify, and the peer

struct Timed {
    wall: Stats,
    floor: Stats,
    pair_ratio: f64,
    make_up: FloorSpec,
    apdus: u64,
    bytes: u64,
}

fn view_path(
    city: &City,
    reader: &str,
    probe: &mut FloorProbe,
    n: usize,
) -> Result<(Timed, Vec<Vec<u8>>)> {
    let pin = Pin::parse(PIN).map_err(|e| anyhow!(e))?;
    let registry = city.data.cache()?;
    let counts = Rc::new(RefCell::new(Counts::default()));
    let mut t = Counting {
        inner: Box::new(sm_connect(&city.data, reader)?),
        counts: Rc::clone(&counts),
    };
    let one = || -> Result<((u64, u64, u64), u64)> {
        let before = counts.borrow().clone();
        let r = view(
            &mut t,
            ApduMode::Extended,
            &registry,
            &pin,
            false,
            civic_reader::now(),
        )?;
        ensure!(
            r.credentials.iter().all(|c| c.verdict.is_valid()),
            "a view found a credential not valid"
        );
        Ok((counts.borrow().since(&before), r.credentials.len() as u64))
    };
    // The view's signature work: one issuer signature per credential.
    let (wall, floor, pair_ratio, ((apdus, c, r), verifies)) =
        paired(n, probe, one, |((apdus, _, _), v)| {
            with_pace((*apdus, *v, 0, 0, 0))
        })?;
    counts.borrow_mut().recording = true;
    view(
        &mut t,
        ApduMode::Extended,
        &registry,
        &pin,
        false,
        civic_reader::now(),
    )?;
    let apdu_list = std::mem::take(&mut counts.borrow_mut().log)
        .into_iter()
        .map(|(a, _, _)| a)
        .collect();
    Ok((
        Timed {
            wall,
            floor,
            pair_ratio,
            make_up: with_pace((apdus, verifies, 0, 0, 0)),
            apdus,
            bytes: c + r,
        },
        apdu_list,
    ))
}

fn pin_path(city: &City, reader: &str, probe: &mut FloorProbe, n: usize) -> Result<Timed> {
    let pin = Pin::parse(PIN).map_err(|e| anyhow!(e))?;
    let counts = Rc::new(RefCell::new(Counts::default()));
    let mut t = Counting {
        inner: Box::new(sm_connect(&city.data, reader)?),
        counts: Rc::clone(&counts),
    };
    let one = || -> Result<(u64, u64, u64)> {
        let before = counts.borrow().clone();
        let s = Session::open(&mut t, ApduMode::Extended)?;
        s.verify_pin(&pin)?;
        Ok(counts.borrow().since(&before))
    };
    let (wall, floor, pair_ratio, (apdus, c, r)) = paired(n, probe, one, |(apdus, _, _)| {
        with_pace((*apdus, 0, 0, 0, 0))
    })?;
    Ok(Timed {
        wall,
        floor,
        pair_ratio,
        make_up: with_pace((apdus, 0, 0, 0, 0)),
        apdus,
        bytes: c + r,
    })
}

/// The same APDUs (the card part of a citizen view) sent `n` times by our transport and by
/// pyscard, an independent PC/SC client. Returns (ours, pyscard) medians per sequence and the
/// response bytes of one sequence.
fn peer(reader: &str, apdus: &[Vec<u8>], n: usize) -> Result<(Stats, Duration, usize)> {
    let mut t = PcscTransport::connect(Some(reader))?;
    let mut bytes = 0;
    let ours = measure(n, || {
        bytes = 0;
        for a in apdus {
            let r = t.transmit(a)?;
            ensure!(r.ends_with(&[0x90, 0x00]), "replayed APDU refused");
            bytes += r.len();
        }
        Ok(())
    })?;
    drop(t);
    let hex_list: String = apdus.iter().map(|a| hex::encode(a) + "\n").collect();
    let script = repo_file("tests/interop/replay_apdus.py");
    let mut cmd = Process::new("/usr/bin/python3");
    cmd.arg(&script)
        .arg(reader)
        .arg(n.to_string())
        .arg(WARM_UP.to_string());
    let out =
        civic_e2e::run_with_timeout(cmd, Some(hex_list.as_bytes()), Duration::from_secs(300))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{} failed: {text}{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // "median_us <x> bytes <n>"
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (median_us, py_bytes) = match fields.as_slice() {
        ["median_us", m, "bytes", b, ..] => (m.parse::<f64>()?, b.parse::<usize>()?),
        _ => bail!("unexpected output of {}: {text}", script.display()),
    };
    ensure!(
        py_bytes == bytes,
        "pyscard read {py_bytes} bytes, our transport {bytes}: not the same exchange"
    );
    Ok((ours, Duration::from_secs_f64(median_us / 1e6), bytes))
}

// ----------------------------------------------------------------------------------------
// Provisioning through the card feeder

/// Cards from the feeder reader: each `next_card` power-cycles the reader's card
/// (`SCardReconnect(SCARD_UNPOWER_CARD)`), which makes `civic-card --feed` present the next
/// card of its ring, until one that the run wants comes up.
struct Feeder {
    reader: String,
    /// The office's data, for the CAN of a card already issued (as `civic provision`).
    data: DataDir,
    ring: usize,
    swaps: u64,
    swap_time: Duration,
}

impl Feeder {
    fn present_next(&mut self) -> Result<()> {
        let t = Instant::now();
        let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
        let name = std::ffi::CString::new(self.reader.as_str())?;
        let mut card = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
        card.reconnect(
            pcsc::ShareMode::Shared,
            pcsc::Protocols::ANY,
            pcsc::Disposition::UnpowerCard,
        )?;
        card.disconnect(pcsc::Disposition::LeaveCard)
            .map_err(|(_, e)| e)?;
        self.swaps += 1;
        self.swap_time += t.elapsed();
        Ok(())
    }
}

impl CardSource for Feeder {
    fn next_card(
        &mut self,
        _what: &str,
        wanted: &dyn Fn(&CardInfo) -> bool,
    ) -> Result<Option<Box<dyn Transport + '_>>> {
        for _ in 0..=self.ring {
            self.present_next()?;
            let mut t = sm_connect(&self.data, &self.reader)?;
            let info = Session::open(&mut t, ApduMode::Extended)?.info().clone();
            if wanted(&info) {
                return Ok(Some(Box::new(t)));
            }
        }
        Ok(None)
    }
}

#[derive(Default)]
struct Phases {
    start: Option<Instant>,
    key_pass: Option<Instant>,
    last_keyed: Option<Instant>,
    write_pass: Option<Instant>,
    anchored: u64,
    credentials_anchored: u64,
}

impl Progress for Phases {
    fn pass(&mut self, pass: Pass, _cards: u64) {
        match pass {
            Pass::Key => self.key_pass = Some(Instant::now()),
            Pass::Write => self.write_pass = Some(Instant::now()),
        }
    }
    fn card(&mut self, pass: Pass, _line: u64, _card_id: &str) {
        if pass == Pass::Key {
            self.last_keyed = Some(Instant::now());
        }
    }
    fn anchored(&mut self, _issuer_id: &str, _batch_id: u64, size: u64) {
        self.anchored += 1;
        self.credentials_anchored += size;
    }
}

struct ProvisionFigures {
    cards: usize,
    credentials: u64,
    total: Duration,
    key_pass: Duration,
    sign_anchor: Duration,
    write_pass: Duration,
    anchors: u64,
    swaps: u64,
    swap_time: Duration,
}

fn batch_csv(cards: usize) -> String {
    let mut s = batch::COLUMNS.join(",") + "\n";
    for i in 0..cards {
        let _ = writeln!(
            s,
            "CIV-2026-9{:03}-{:04},Citizen {i},1980-01-{:02},{},O+,penicillin,Kin {i} +86 10 5555 {:04},asthma,influenza@2026-10-01,BSc@City University@2004",
            i / 10_000,
            i % 10_000,
            1 + i % 28,
            PIN,
            i % 10_000
        );
    }
    s
}

fn provisioning(city: &City, reader: &str, cards: usize) -> Result<ProvisionFigures> {
    let data = &city.data;
    let mut registry = data.registry_writer()?;
    let authority_public_key = keys::public_key_bytes(&registry.authority_key()?);
    let book = IssuanceBook::open(&data.office_db())?;
    let now = civic_reader::now();
    let issuers = registry.issuers()?;
    // The one bureau of this city that may issue each kind (the CLI's --*-issuer choice is not
    // needed: each kind has exactly one bureau here).
    let bureau_for = |kind: Kind| -> Result<Bureau> {
        let kind = if kind == Kind::Emergency {
            Kind::Health
        } else {
            kind
        };
        let i = issuers
            .iter()
            .find(|i| i.body.may_issue(kind, now))
            .with_context(|| format!("no bureau issues {kind}"))?;
        Ok(Bureau {
            cert: i.body.clone(),
            key: data.load_issuer(&i.body.issuer_id)?,
        })
    };
    let office = Office {
        authority_public_key,
        book: &book,
        validity: Validity::default(),
    };
    let file = batch::parse_csv(batch_csv(cards).as_bytes())?;
    ensure!(
        file.rows.len() == cards,
        "batch file: {:?}",
        file.problems.first()
    );
    let mut source = Feeder {
        reader: reader.to_owned(),
        data: city.data.clone(),
        ring: cards,
        swaps: 0,
        swap_time: Duration::ZERO,
    };
    let mut phases = Phases {
        start: Some(Instant::now()),
        ..Phases::default()
    };
    let summary = batch::run_batch(
        &mut source,
        ApduMode::Extended,
        &mut registry,
        &office,
        &bureau_for,
        &file,
        &mut phases,
        now,
    )?;
    let end = Instant::now();
    ensure!(
        summary.provisioned.len() == cards && summary.complete(),
        "provisioned {} of {cards} cards; skipped {:?}",
        summary.provisioned.len(),
        summary.skipped.first()
    );
    let start = phases.start.context("start")?;
    let key = phases.key_pass.context("no key pass")?;
    let keyed = phases.last_keyed.context("no card keyed")?;
    let write = phases.write_pass.context("no write pass")?;
    let credentials = phases.credentials_anchored;
    Ok(ProvisionFigures {
        cards,
        credentials,
        total: end - start,
        key_pass: keyed - key,
        // From the last card keyed to the write pass: signing every credential, journalling
        // the signed batches, anchoring one batch per bureau.
        sign_anchor: write - keyed,
        write_pass: end - write,
        anchors: phases.anchored,
        swaps: source.swaps,
        swap_time: source.swap_time,
    })
}

// ----------------------------------------------------------------------------------------
// Contactless model

/// Published on-card P-256 timings, in milliseconds: ECDSA sign and verify, and one ECDH key
/// agreement (one scalar multiplication by a card-held secret).
struct Chip {
    name: &'static str,
    sign_ms: f64,
    verify_ms: f64,
    ecdh_ms: f64,
}

/// ECTester's performance table (neuromancer.sk/ECTester, "F_p performance", 256-bit, ECDSA
/// given as sign+verify in ms, ALG_ECDSA_SHA type 1a; ECDH ALG_EC_SVDP_DH, type 1), for Java
/// Cards measured by the ECTester project (Masaryk University / CRoCS).
const CHIPS: [Chip; 3] = [
    Chip {
        name: "Infineon CJTOP (ECTester)",
        sign_ms: 175.0,
        verify_ms: 138.0,
        ecdh_ms: 166.0,
    },
    Chip {
        name: "G&D SmartCafe 6.0 (ECTester)",
        sign_ms: 145.0,
        verify_ms: 197.0,
        ecdh_ms: 192.0,
    },
    Chip {
        name: "Athena IDProtect (ECTester)",
        sign_ms: 148.0,
        verify_ms: 228.0,
        ecdh_ms: 209.0,
    },
];

/// ISO/IEC 14443 air interface at fc/32 = 423.75 kbit/s (14443-2 bit rates), 9 bits per byte
/// on air (8 data bits + odd parity, Type A, 14443-3 6.2.3).
const BIT_RATE: f64 = 423_750.0;
const BITS_PER_BYTE: f64 = 9.0;
/// ISO/IEC 14443-4 block frame overhead without CID/NAD: PCB (1) + CRC (2) (14443-4 7.1).
const BLOCK_OVERHEAD: usize = 3;
/// FSD = FSC = 256 bytes (FSDI/FSCI 8, 14443-4 5.1/5.2.3): at most 253 INF bytes per block;
/// longer APDUs are chained, each chained block acknowledged by an R(ACK) block.
const FRAME_SIZE: usize = 256;
/// Frame delay time between any two frames: 1172/fc = 86.4 us, the 14443-3 (6.2.1.1) minimum
/// PCD->PICC delay, used in both directions.
const FDT_US: f64 = 1172.0 / 13.56;
/// Assumed per-APDU command processing on the chip, crypto excluded (dispatch, a record read
/// from non-volatile memory): 2 ms.
const CHIP_APDU_MS: f64 = 2.0;
/// Assumed cost of one non-volatile write (EEPROM/flash page): 5 ms; a clinic scan makes two
/// (EXTERNAL AUTHENTICATE persists the latest time seen; the first read appends the access-log
/// entry; CONTRACTS.md issue 3).
const NVM_WRITE_MS: f64 = 5.0;
const SCAN_NVM_WRITES: f64 = 2.0;

struct Air {
    bytes: usize,
    frames: usize,
}

fn air(trace: &[(u8, usize, usize)]) -> Air {
    let inf = FRAME_SIZE - BLOCK_OVERHEAD;
    let mut bytes = 0;
    let mut frames = 0;
    for &(_, c, r) in trace {
        let bc = c.div_ceil(inf).max(1);
        let br = r.div_ceil(inf).max(1);
        // I-blocks both ways, plus one R(ACK) per chained block but the last in each direction.
        bytes += c + r + BLOCK_OVERHEAD * (bc + br) + BLOCK_OVERHEAD * (bc - 1 + br - 1);
        frames += bc + br + (bc - 1) + (br - 1);
    }
    Air { bytes, frames }
}

/// (transfer ms, chip processing ms, crypto ms) for one scan on `chip`, from the scan's
/// APDUs on the wire (PACE and the protected APDUs, as a contactless reader would send them).
fn contactless(scan: &ScanFigures, chip: &Chip) -> (f64, f64, f64) {
    let a = air(&scan.wire);
    let transfer = a.bytes as f64 * BITS_PER_BYTE / BIT_RATE * 1e3 + a.frames as f64 * FDT_US / 1e3;
    let processing = scan.wire.len() as f64 * CHIP_APDU_MS + SCAN_NVM_WRITES * NVM_WRITE_MS;
    let c = card_crypto(scan);
    let crypto = c.signs as f64 * chip.sign_ms
        + c.verifies as f64 * chip.verify_ms
        + c.multiplications as f64 * chip.ecdh_ms;
    (transfer, processing, crypto)
}

/// Scalar multiplications the card makes in one PACE run with Generic Mapping (Doc 9303-11
/// 4.4.3.3.1 and 4.4.1): its mapping key pair, the mapping secret `H`, the mapped generator
/// `G' = s*G + H`, its ephemeral key pair on `G'` and the shared secret. PACE-CAM's `CA_IC`
/// (4.4.3.5.1) adds a modular inversion of scalars, not a point multiplication. Charged as
/// five operations, as a chip's ECDH primitives run them; our applet folds `G'` into the
/// ephemeral key (`card_applet::sm::mapped_public_key`), which needs point addition.
const PACE_CARD_MULTIPLICATIONS: u64 = 5;

/// The card's public-key work in one scan.
struct CardCrypto {
    signs: u64,
    verifies: u64,
    /// Scalar multiplications outside ECDSA (PACE's key agreement), each charged as one ECDH.
    multiplications: u64,
}

/// On-card public-key operations of one scan, from the APDUs on the wire: INTERNAL
/// AUTHENTICATE signs; PSO VERIFY CERTIFICATE and EXTERNAL AUTHENTICATE verify; a PACE run
/// (its MSE:SET AT) makes [`PACE_CARD_MULTIPLICATIONS`].
fn card_crypto(scan: &ScanFigures) -> CardCrypto {
    let (signs, verifies) = trace_crypto(scan.wire.iter().map(|t| t.0));
    let pace_runs = scan.wire.iter().filter(|t| t.0 == ins::MSE).count() as u64;
    CardCrypto {
        signs,
        verifies,
        multiplications: pace_runs * PACE_CARD_MULTIPLICATIONS,
    }
}

/// (signs, verifies) the card makes for this sequence of instructions.
fn trace_crypto(ins: impl Iterator<Item = u8>) -> (u64, u64) {
    let mut signs = 0;
    let mut verifies = 0;
    for i in ins {
        match i {
            ins::INTERNAL_AUTHENTICATE => signs += 1,
            ins::PSO | ins::EXTERNAL_AUTHENTICATE => verifies += 1,
            _ => {}
        }
    }
    (signs, verifies)
}

fn ins_name(i: u8) -> &'static str {
    match i {
        ins::SELECT => "SELECT",
        ins::GET_DATA => "GET DATA",
        ins::INTERNAL_AUTHENTICATE => "INTERNAL AUTHENTICATE",
        ins::GET_CHALLENGE => "GET CHALLENGE",
        ins::PSO => "PSO VERIFY CERTIFICATE",
        ins::EXTERNAL_AUTHENTICATE => "EXTERNAL AUTHENTICATE",
        ins::VERIFY => "VERIFY",
        _ => "other",
    }
}

// ----------------------------------------------------------------------------------------
// Report

fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    m.insert("cpu", cpu);
    m.insert(
        "nproc",
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into()),
    );
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    m.insert("memory", mem);
    let cmd_out = |c: &str, args: &[&str]| {
        Process::new(c)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    m.insert("kernel", cmd_out("uname", &["-sr"]));
    m.insert(
        "load average at the start (1, 5, 15 min; 2 cores shared with other work)",
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into()),
    );
    m.insert("rustc", cmd_out("rustc", &["--version"]));
    m.insert(
        "pcscd",
        cmd_out("dpkg-query", &["-W", "-f=${Version}", "pcscd"]),
    );
    m.insert(
        "vpcd",
        cmd_out("dpkg-query", &["-W", "-f=${Version}", "vsmartcard-vpcd"]),
    );
    m.insert("date", cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    m
}

fn make_up((apdus, verifies, signs, mults, g_sides): FloorSpec) -> String {
    let mut parts = vec![format!("{apdus} empty APDUs")];
    if verifies > 0 {
        parts.push(format!("{verifies} verifies"));
    }
    if signs > 0 {
        parts.push(format!("{signs} signs"));
    }
    if mults > 0 {
        parts.push(format!("{mults} point multiplications (PACE)"));
    }
    if g_sides > 0 {
        parts.push(format!(
            "{} fixed-base multiplications of G (PACE)",
            2 * g_sides
        ));
    }
    parts.join(" + ")
}

fn goal(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

#[allow(clippy::too_many_lines)]
fn run() -> Result<String> {
    let reader = std::env::var("CIVIC_BENCH_READER")
        .context("CIVIC_BENCH_READER is not set: run scripts/bench")?;
    let feed_reader = std::env::var("CIVIC_BENCH_FEED_READER")
        .context("CIVIC_BENCH_FEED_READER is not set: run scripts/bench")?;
    let feed = env_usize("CIVIC_BENCH_FEED", 200)?;
    let scans = env_usize("CIVIC_BENCH_SCANS", 500)?;
    let small = (scans / 5).max(20);

    let m = machine();
    eprintln!("bench: setting up the city and provisioning one card in {reader:?}");
    let city = set_up_city(&reader)?;

    eprintln!("bench: floors");
    let (verify1, sign1) = crypto_floors();
    let empty1 = empty_apdu_floor(&reader)?;

    eprintln!("bench: {scans} clinic scans");
    let mut probe = FloorProbe::new(&reader)?;
    let scan_f = scan_path(&city, &reader, &mut probe, scans, None)?;
    let pin = Pin::parse(PIN).map_err(|e| anyhow!(e))?;
    eprintln!("bench: {small} clinic scans with consent");
    let consent_f = scan_path(&city, &reader, &mut probe, small, Some(&pin))?;
    eprintln!("bench: {small} citizen views and PIN verifies");
    let (view_f, _view_apdus) = view_path(&city, &reader, &mut probe, small)?;
    // The issued card answers only SELECT and GET CHALLENGE outside a secure channel, and a
    // recorded SM session cannot be replayed (fresh keys, send sequence counter), so the
    // transport comparison replays a plain sequence of the same length: SELECT, then GET
    // CHALLENGE seven times.
    let mut view_apdus = vec![vec![
        0x00, 0xA4, 0x04, 0x00, 0x07, 0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01, 0x00,
    ]];
    view_apdus.extend(std::iter::repeat_n(vec![0x00, 0x84, 0x00, 0x00, 0x10], 7));
    let pin_f = pin_path(&city, &reader, &mut probe, small)?;
    drop(probe);
    eprintln!("bench: peer (pyscard), {small} sequences each");
    let (ours, theirs, peer_bytes) = peer(&reader, &view_apdus, small)?;
    eprintln!("bench: provisioning {feed} cards through the feeder in {feed_reader:?}");
    let prov = provisioning(&city, &feed_reader, feed)?;
    eprintln!("bench: floors again");
    let (verify2, sign2) = crypto_floors();
    let empty2 = empty_apdu_floor(&reader)?;
    let floors = Floors {
        empty_apdu: if empty2.median < empty1.median {
            empty2
        } else {
            empty1
        },
        verify: verify1.min(verify2),
        sign: sign1.min(sign2),
    };

    // ---- the markdown section ----
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<!-- bench:begin (generated by scripts/bench; do not edit by hand) -->"
    );
    let _ = writeln!(o, "## Critical paths against their floors (issue 8)\n");
    let _ = writeln!(
        o,
        "Generated by `scripts/bench` (`CIVIC_BENCH_SCANS={scans} CIVIC_BENCH_FEED={feed} scripts/bench`), \
         which runs `cargo bench -p civic-e2e --bench critical_paths` against its own pcscd and \
         virtual cards. Source: `tests/benches/critical_paths.rs`. Every figure below comes from \
         one run; floors were measured in the same run.\n"
    );
    let _ = writeln!(o, "| machine | |\n|---|---|");
    for (k, v) in &m {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    let card_dir = std::env::var("CIVIC_BENCH_CARD_DIR").unwrap_or_else(|_| "?".into());
    let _ = writeln!(
        o,
        "| virtual cards' state (their non-volatile memory) | `{card_dir}` ({}) |",
        if card_dir.starts_with("/dev/shm") {
            "tmpfs: a commit's fsync returns at once"
        } else {
            "fsynced on every commit"
        }
    );
    let _ = writeln!(
        o,
        "| build | release (`bench` profile), ApduMode::Extended, card `civic-card` from `{}` |\n",
        bin_dir().display()
    );

    // Floors
    let _ = writeln!(o, "### Reference floors (same run)\n");
    let _ = writeln!(
        o,
        "Measured alone, before and after the paths; the ratios below use floors sampled next \
         to each run instead (see the clinic scan).\n"
    );
    let _ = writeln!(o, "| floor | median | p99 |\n|---|---|---|");
    let _ = writeln!(
        o,
        "| empty APDU round trip (`00 00 00 00` -> `6D00`, {} samples, our PC/SC transport; the faster of a run before and one after the paths) | {:.1} µs | {:.1} µs |",
        floors.empty_apdu.n,
        us(floors.empty_apdu.median),
        us(floors.empty_apdu.p99)
    );
    let _ = writeln!(
        o,
        "| bare P-256 ECDSA verify (p256 0.13, one core, median of {FLOOR_SAMPLES}, faster of two runs) | {:.1} µs | |",
        us(floors.verify)
    );
    let _ = writeln!(
        o,
        "| bare P-256 ECDSA sign (median of {FLOOR_SAMPLES}, faster of two runs) | {:.1} µs | |\n",
        us(floors.sign)
    );

    // Scan
    let _ = writeln!(o, "### Clinic scan\n");
    let scan_row = |o: &mut String, name: &str, f: &ScanFigures| {
        let ratio = f.wall.median.as_secs_f64() / f.floor.median.as_secs_f64();
        let _ = writeln!(
            o,
            "| {name} | {} | {:.3} ms | {:.3} ms | {} | {} + {} | {:.3} ms ({}) | **{:.2}** | {:.2} | {} ({}) |",
            f.wall.n,
            ms(f.wall.median),
            ms(f.wall.p99),
            f.apdus,
            f.command_bytes,
            f.response_bytes,
            ms(f.floor.median),
            make_up(f.make_up),
            ratio,
            f.pair_ratio,
            if f.consent {
                "(stated for the scan without PIN)"
            } else {
                goal(ratio <= 1.5 && f.apdus <= 8)
            },
            if f.apdus <= 8 { "≤ 8 APDUs" } else { "> 8 APDUs" },
        );
    };
    let _ = writeln!(
        o,
        "| path | scans | median | p99 | APDUs | bytes (command + response) | floor (median) | ratio of medians | median of paired ratios | goal (≤ 1.5, ≤ 8 APDUs) |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    scan_row(&mut o, "scan (clinic terminal, no PIN)", &scan_f);
    scan_row(
        &mut o,
        "scan with consent (`--consent`, citizen's PIN)",
        &consent_f,
    );
    let _ = writeln!(
        o,
        "\nThe scan is `civic_reader::workflow::scan::scan` (what `civic scan` runs once the \
         clinic cache is open) over one long-lived PC/SC connection **behind secure messaging** \
         (issue 7: `SmTransport` over `PcscTransport`, the CAN from the office's book): every \
         scan's SELECT is followed by a full PACE run (MSE:SET AT and four GENERAL \
         AUTHENTICATE, in the time but not in the APDU column) and every later APDU is \
         protected. APDUs and bytes are the scan's own commands and answers before \
         protection (the counting wrapper sits above the SM layer). The floor includes one \
         PACE run done bare (its 5 APDUs as empty APDUs, its 4 P-256 point multiplications and its 4 \
         multiplications of G by the fixed-base table (per side the mapping key and `(sk*s)*G`, \
         the mapped generator folded into the ephemeral key), \
         both sides', since the virtual card computes on this machine); the PACE run is \
         PACE-CAM (ICAO 9303-11 4.4.3.5), so it also proves the chip key and the scan sends no \
         INTERNAL AUTHENTICATE. The secure channel's \
         cost against the same scan in plain is the secure-messaging section below. Against the synced clinic \
         cache; {} credentials judged (no PIN), {} with consent. **The floor is sampled right \
         before each scan** (so both see the same load on this shared machine): the scan's \
         number of empty APDUs on a second connection to the same card, then its signature \
         work done bare in this process: the reader checks the chip (PACE-CAM: one point \
         multiplication `CA_IC * PK_IC`; an INTERNAL AUTHENTICATE would be a verify here and a \
         sign on the card) and verifies each credential's issuer signature (issuer certificates \
         are verified once per cache); the card verifies the EXTERNAL AUTHENTICATE signature \
         (the clinic's certificate, verified in the warm-up scans, is remembered by the card: \
         no verify for it); the terminal signs once. The goal is \
         judged on the ratio of medians (median scan / median floor); the median of the \
         per-scan ratios (each scan over the floor sample just before it) is shown beside it as \
         a second estimate, less sensitive to load that drifts during the run. Not in the floor: SCardBeginTransaction and \
         SCardEndTransaction, the card's two non-volatile commits (EXTERNAL AUTHENTICATE's \
         latest time, the access-log entry), decoding and the registry lookups.\n",
        scan_f.credentials_read, consent_f.credentials_read
    );
    let _ = writeln!(o, "APDUs of one scan (no PIN):\n");
    let _ = writeln!(
        o,
        "| # | command | command bytes | response bytes | median round trip |\n|---|---|---|---|---|"
    );
    for (n, (i, c, r)) in scan_f.trace.iter().enumerate() {
        let _ = writeln!(
            o,
            "| {} | {} | {c} | {r} | {:.1} µs |",
            n + 1,
            ins_name(*i),
            scan_f.apdu_median.get(n).map_or(0.0, |d| us(*d))
        );
    }
    let _ = writeln!(
        o,
        "\nTime inside the transport per scan (all APDUs, card work included): median {:.3} ms, \
         p99 {:.3} ms; the rest of the scan's {:.3} ms median is the reader's own work (the \
         terminal's signature, the chip-signature and credential verifies, the verdicts).",
        ms(scan_f.in_card.median),
        ms(scan_f.in_card.p99),
        ms(scan_f.wall.median)
    );

    // Contactless
    let a = air(&scan_f.wire);
    let cc = card_crypto(&scan_f);
    let (cs, cv, cm) = (cc.signs, cc.verifies, cc.multiplications);
    let _ = writeln!(o, "\n### Contactless model of the same scan\n");
    let _ = writeln!(
        o,
        "The scan as it crosses the air (above: {} APDUs and {} bytes before protection; on \
         the wire {} APDUs and {} bytes: the plain SELECT, PACE's MSE:SET AT and four GENERAL \
         AUTHENTICATE, every other APDU protected) and its on-card public-key operations ({cs} \
         signs, {cv} verifies, {cm} scalar multiplications of PACE's key agreement) put \
         through a model of a real contactless chip. Model: ISO/IEC 14443 at \
         fc/32 = 423.75 kbit/s, 9 bits per byte on air (8 + parity, 14443-3 Type A); \
         14443-4 blocks with PCB + CRC (3 bytes), FSD = FSC = 256 (chained blocks each \
         acknowledged by an R(ACK)); a frame delay of 1172/fc = 86.4 µs before every frame \
         (14443-3 6.2.1.1); {CHIP_APDU_MS} ms of chip processing per APDU and \
         {SCAN_NVM_WRITES} non-volatile writes of {NVM_WRITE_MS} ms each (assumptions, not \
         measurements); on-card P-256 times from ECTester's published performance table \
         (neuromancer.sk/ECTester, 256-bit: ECDSA sign + verify, ECDH) for three Java Cards, \
         each of PACE's {PACE_CARD_MULTIPLICATIONS} card-side scalar multiplications (mapping \
         key pair, mapping secret, mapped generator, ephemeral key pair, shared secret; Doc \
         9303-11 4.4.3.3.1) charged as one ECDH. PACE-CAM's chip authentication data (a \
         modular inversion of scalars, 4.4.3.5.1) is not charged: no chip figure for it is at \
         hand, and it is small next to a scalar multiplication. On air: {} bytes in {} frames. \
         The reader's own work (its verifies and multiplications, the terminal's sign, the \
         registry) is left out: it is what the scan above measures.\n",
        scan_f.trace.len(),
        scan_f.command_bytes + scan_f.response_bytes,
        scan_f.wire.len(),
        scan_f.wire.iter().map(|w| w.1 + w.2).sum::<usize>(),
        a.bytes,
        a.frames
    );
    let _ = writeln!(
        o,
        "| chip | ECDSA sign / verify, ECDH | transfer | chip processing | on-card crypto | total, first visit of a terminal | total, repeat visit (certificate remembered) | goal < 500 ms |\n|---|---|---|---|---|---|---|---|"
    );
    for chip in &CHIPS {
        let (t, p, c) = contactless(&scan_f, chip);
        let total = t + p + c;
        let repeat = total - chip.verify_ms;
        let _ = writeln!(
            o,
            "| {} | {:.0} / {:.0} ms, {:.0} ms | {t:.1} ms | {p:.1} ms | {c:.0} ms | **{total:.0} ms** | **{repeat:.0} ms** | first visit: {}; repeat: {} |",
            chip.name,
            chip.sign_ms,
            chip.verify_ms,
            chip.ecdh_ms,
            goal(total < 500.0),
            goal(repeat < 500.0)
        );
    }
    let _ = writeln!(
        o,
        "\nWhere the time goes: on-card public-key operations are {:.0}% to {:.0}% of the first \
         visit's total; the bytes on air and the chip's other processing together are {:.0} ms. \
         The card remembers the digests of the last {} terminal certificates it verified and \
         whose terminal then passed EXTERNAL AUTHENTICATE (persistent state, written in the \
         commit EXTERNAL AUTHENTICATE makes anyway), so a repeat visit's PSO VERIFY \
         CERTIFICATE parses the certificate and checks its validity time but makes no \
         signature verify: the repeat column is the first visit's total less one verify. \
         PACE's on-card key agreement alone takes {:.0} to {:.0} ms on these chips, more than \
         the goal by itself: on them no PACE-protected read can meet 500 ms, whatever the \
         protocol around it (eMRTDs and eID cards, which run PACE, take a second or more; the \
         EMV target assumes no key agreement). Meeting it needs a chip whose P-256 scalar \
         multiplication is several times faster than these Java Cards' ECDH.",
        CHIPS
            .iter()
            .map(|c| {
                let (t, p, k) = contactless(&scan_f, c);
                100.0 * k / (t + p + k)
            })
            .fold(f64::INFINITY, f64::min),
        CHIPS
            .iter()
            .map(|c| {
                let (t, p, k) = contactless(&scan_f, c);
                100.0 * k / (t + p + k)
            })
            .fold(0.0, f64::max),
        {
            let (t, p, _) = contactless(&scan_f, &CHIPS[0]);
            t + p
        },
        card_applet::state::VERIFIED_CERTS_MAX,
        CHIPS
            .iter()
            .map(|c| cc.multiplications as f64 * c.ecdh_ms)
            .fold(f64::INFINITY, f64::min),
        CHIPS
            .iter()
            .map(|c| cc.multiplications as f64 * c.ecdh_ms)
            .fold(0.0, f64::max),
    );

    // Provisioning
    let _ = writeln!(o, "\n### Provisioning\n");
    let cpm = prov.cards as f64 / prov.total.as_secs_f64() * 60.0;
    let _ = writeln!(
        o,
        "`civic_reader::workflow::batch::run_batch` (what `civic provision --batch` runs) over \
         {} cards through pcscd, from a card feeder: `civic-card --feed {}` holds a ring of \
         {} blank cards in one reader, and a power-off (`SCardReconnect` with \
         `SCARD_UNPOWER_CARD`) presents the next. Each card is generated a key on the card, \
         written 4 credentials with their inclusion proofs, given its PIN and activated; every \
         bureau's credentials are anchored as one batch. The card swaps are in the time \
         ({} swaps, {:.1} ms in all).\n",
        prov.cards,
        feed,
        feed,
        prov.swaps,
        ms(prov.swap_time)
    );
    let _ = writeln!(
        o,
        "| figure | measured | goal |\n|---|---|---|\n| cards per minute through pcscd | **{cpm:.0}** ({} cards in {:.2} s) | ≥ 600: {} |",
        prov.cards,
        prov.total.as_secs_f64(),
        goal(cpm >= 600.0)
    );
    let per_card = prov.total / u32::try_from(prov.cards.max(1)).unwrap_or(1);
    let _ = writeln!(
        o,
        "| per card | {:.1} ms | |\n| key pass (key generated on each card) | {:.2} s | |\n| write pass (records, PIN, activate) | {:.2} s | |\n| sign and anchor (every credential signed by its bureau, journalled, one anchor per bureau) | {:.3} s: {} credentials in {} anchors | |\n| credentials signed and anchored per second | **{:.0}** | (none stated) |",
        ms(per_card),
        prov.key_pass.as_secs_f64(),
        prov.write_pass.as_secs_f64(),
        prov.sign_anchor.as_secs_f64(),
        prov.credentials,
        prov.anchors,
        prov.credentials as f64 / prov.sign_anchor.as_secs_f64(),
    );

    // Citizen
    let _ = writeln!(o, "\n### Citizen view and PIN verify\n");
    let _ = writeln!(
        o,
        "| path | runs | median | p99 | APDUs | bytes | floor (median) | ratio of medians | median of paired ratios |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (name, f) in [
        (
            "citizen view (PIN, every credential judged, no log)",
            &view_f,
        ),
        ("PIN verify (SELECT + VERIFY)", &pin_f),
    ] {
        let _ = writeln!(
            o,
            "| {name} | {} | {:.3} ms | {:.3} ms | {} | {} | {:.3} ms ({}) | {:.2} | {:.2} |",
            f.wall.n,
            ms(f.wall.median),
            ms(f.wall.p99),
            f.apdus,
            f.bytes,
            ms(f.floor.median),
            make_up(f.make_up),
            f.wall.median.as_secs_f64() / f.floor.median.as_secs_f64(),
            f.pair_ratio
        );
    }

    // Peer
    let _ = writeln!(o, "\n### A peer for the card path\n");
    let _ = writeln!(
        o,
        "A plain APDU sequence the issued card answers outside a secure channel ({} APDUs: \
         SELECT, then GET CHALLENGE seven times, {peer_bytes} response bytes; a recorded \
         secure-messaging session cannot be replayed), sent {} times by our transport \
         (`PcscTransport`) and by pyscard 2 (`tests/interop/replay_apdus.py`, \
         `smartcard.System.readers()` then `connection.transmit`), on the same card and reader.\n",
        view_apdus.len(),
        ours.n
    );
    let _ = writeln!(
        o,
        "| client | median per sequence | ratio |\n|---|---|---|\n| civic (`PcscTransport`) | {:.1} µs | **{:.2}** of pyscard |\n| pyscard | {:.1} µs | 1 |",
        us(ours.median),
        ours.median.as_secs_f64() / theirs.as_secs_f64(),
        us(theirs)
    );
    let _ = writeln!(o, "\n<!-- bench:end -->");
    Ok(o)
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("critical_paths: a benchmark; run it with scripts/bench");
        return Ok(());
    }
    if !bin_dir().ends_with("release") {
        eprintln!(
            "critical_paths: warning: measuring non-release binaries ({})",
            bin_dir().display()
        );
    }
    let out = with_timeout(BOUND, run).map_err(|t| anyhow!("the benchmark: {t}"))??;
    print!("{out}");
    Ok(())
}
