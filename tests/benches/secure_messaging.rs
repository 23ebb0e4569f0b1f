//! Secure messaging (issue 7, "Performance"): what PACE and the protected APDUs cost, against
//! the plaintext path measured in the same run.
//!
//! A benchmark, not a test: it prints numbers with their goals and never asserts on time.
//!
//! ```sh
//! cargo build --release -p card-applet --bins
//! cargo bench -p civic-e2e --bench secure_messaging
//! CIVIC_SM_SCANS=500 cargo bench -p civic-e2e --bench secure_messaging
//! ```
//!
//! One card is provisioned in this process (the real workflow, the real applet); a second card
//! is loaded from the same state with the applet's plaintext baseline switched on (an issued
//! card that also answers plain commands, as before issue 7: never used by the `civic-card`
//! runner). Both run the same bytes but for the protection, so the difference is the price of
//! secure messaging:
//! - **session set-up**: SELECT + PACE (MSE:SET AT, four GENERAL AUTHENTICATE), median;
//! - **per APDU**: GET DATA card info (about 60 bytes back) and a 1 KB credential read,
//!   protected against plain, median of each;
//! - **clinic scan**: the whole `scan` workflow (chip authentication, terminal authentication,
//!   every credential read and verified against the registry), with and without SM, runs
//!   interleaved (which runs first alternates); goal: SM within 1.3x of plain, judged on the
//!   ratio of the medians, with the median of the per-pair ratios beside it.
//!
//! Twice: first with both cards in this process (no transport at all: every APDU costs only
//! what the applet and the crypto cost, the pessimistic ratio), then on **the virtual card**:
//! two `civic-card` processes on the same state, over the vpcd protocol (the test's own vpcd
//! endpoint, [`civic_e2e::vpcd`], no pcscd: with TCP_QUICKACK a round trip is ~0.1 ms, as
//! through pcscd), the second started with `--benchmark-plaintext-baseline`. The reader side is
//! the real `scan` workflow of `civic` in this process, a new connection (so a new PACE) per
//! scan. Under `cargo test --benches` (no `--bench` argument) it does nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use card_applet::protocol::{access, object};
use card_applet::terminal::{self, TerminalCert};
use card_applet::{Card, MemoryStore};
use civic_e2e::vpcd::VpcdCard;
use civic_reader::apdu::{exchange, ApduMode, Command};
use civic_reader::office::IssuanceBook;
use civic_reader::session::{Pin, TerminalKey};
use civic_reader::sm::{CardPassword, SmTransport};
use civic_reader::terminal::Role;
use civic_reader::transport::{InProcess, Transport, TransportError};
use civic_reader::workflow::provision::{provision, Bureau, CitizenData, Office, Validity};
use civic_reader::workflow::scan::scan;
use civic_registry::cert::{IssuerCertBody, IssuerCertificate};
use civic_registry::credential::Kind;
use civic_registry::ledger::SqliteLedger;
use civic_registry::{keys, Registry};
use p256::ecdsa::SigningKey;
use zeroize::Zeroizing;

const NOW: u64 = 1_790_000_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The clinic scan's line. The goal is judged on the ratio of the medians; beside it, the
/// median of the per-pair ratios (each SM scan over the plain scan run right after it, the two
/// under nearly the same load) is a second estimate, less sensitive to load that changes during
/// the run on this shared machine (as the critical-paths bench does against its floors).
/// Returns the plain scans' median.
fn report_scans(scans: usize, with_sm: &[Duration], without: &[Duration]) -> Duration {
    let pairs: Vec<f64> = with_sm
        .iter()
        .zip(without)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    let paired = median_f64(pairs);
    let (a, b) = (median(with_sm.to_vec()), median(without.to_vec()));
    let ratio = a.as_secs_f64() / b.as_secs_f64();
    println!(
        "  clinic scan ({scans} each)            SM {:>7.3} ms   plain {:>7.3} ms   ratio {:.3}  goal <= 1.3  {}  (paired {:.3})",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        ratio,
        if ratio <= 1.3 { "met" } else { "NOT MET" },
        paired
    );
    b
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct World {
    registry: SqliteLedger,
    authority: SigningKey,
    bureaus: Vec<(IssuerCertBody, SigningKey)>,
    book: IssuanceBook,
    _dir: tempfile::TempDir,
}

fn world() -> Result<World> {
    let authority = keys::generate();
    let mut registry = SqliteLedger::open_in_memory(&authority)?;
    let mut bureaus = Vec::new();
    for (id, kinds) in [
        ("identity-bureau", vec![Kind::Identity]),
        ("health-bureau", vec![Kind::Health, Kind::Emergency]),
        ("education-bureau", vec![Kind::Education]),
    ] {
        let key = keys::generate();
        let body = IssuerCertBody {
            issuer_id: id.into(),
            name: format!("City {id}"),
            kinds,
            public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
            not_before: NOW - 86_400,
            not_after: NOW + 365 * 86_400,
        };
        registry.register_issuer(&IssuerCertificate::sign(&body, &authority)?)?;
        bureaus.push((body, key));
    }
    let dir = tempfile::tempdir()?;
    let book = IssuanceBook::open(&dir.path().join("office.sqlite"))?;
    Ok(World {
        registry,
        authority,
        bureaus,
        book,
        _dir: dir,
    })
}

type SmCard = SmTransport<InProcess<MemoryStore>>;

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let scans: usize = std::env::var("CIVIC_SM_SCANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut w = world()?;
    let citizen: CitizenData = serde_json::from_str(include_str!("../../scripts/data/alice.json"))?;
    let pin = Pin::parse("482913").map_err(anyhow::Error::msg)?;

    // Provision through the secure-messaging transport (the CAN it writes is remembered).
    let mut sm_card: SmCard = SmTransport::new(InProcess::blank(), Box::new(|_| None));
    let office = Office {
        authority_public_key: keys::public_key_bytes(w.authority.verifying_key()),
        book: &w.book,
        validity: Validity::default(),
    };
    let bureaus = w.bureaus.clone();
    let bureau_for = |k: Kind| {
        let (cert, key) = bureaus
            .iter()
            .find(|(c, _)| c.kinds.contains(&k))
            .context("a bureau per kind")?;
        Ok(Bureau {
            cert: cert.clone(),
            key: key.clone(),
        })
    };
    let done = provision(
        &mut sm_card,
        ApduMode::Extended,
        &mut w.registry,
        &office,
        &bureau_for,
        &citizen,
        &pin,
        NOW,
    )?;
    let can = w.book.can_of(&done.card_id)?.context("the CAN")?;
    // The same card again, with the plaintext baseline.
    let state = sm_card.inner().card.serialized_state().to_vec();
    let mut plain_card = InProcess {
        card: Card::with_os_rng(MemoryStore::with_state(state))?,
    };
    plain_card.card.plaintext_baseline_for_benchmarks();
    // Each connection is a fresh SM transport with the CAN (as `civic --can` is): its SELECT
    // runs PACE, as every `civic scan` does.
    let mut inner = Some(InProcess {
        card: Card::with_os_rng(MemoryStore::with_state(
            sm_card.inner().card.serialized_state().to_vec(),
        ))?,
    });
    let connect = |inner: &mut Option<InProcess<MemoryStore>>| -> SmCard {
        SmTransport::with_password(
            inner.take().expect("card back"),
            CardPassword::Can(Zeroizing::new(can.to_string())),
        )
    };

    let clinic_key = keys::generate();
    let body = TerminalCert {
        terminal_id: "clinic-bench".into(),
        role: Role::Clinic.byte(),
        access: Role::Clinic.access(),
        not_before: NOW - 86_400,
        not_after: NOW + 30 * 86_400,
        public_key: keys::public_key_bytes(clinic_key.verifying_key()),
    };
    let cert = terminal::sign(&body, &w.authority);
    let term = TerminalKey {
        certificate: &cert,
        terminal_id: &body.terminal_id,
        role: body.role,
        access: body.access,
        key: &clinic_key,
    };
    assert_eq!(body.access & access::READ_IDENTITY, access::READ_IDENTITY);

    println!("Secure messaging (issue 7), release build. In-process cards (no transport):");

    // 1. Session set-up: SELECT + PACE, against a plain SELECT.
    let select = Command::select();
    let mut setup = Vec::new();
    let mut plain_select = Vec::new();
    let mut paces = 0;
    for _ in 0..scans.max(100) {
        let mut sm_card = connect(&mut inner);
        let t = Instant::now();
        exchange(&mut sm_card, &select, ApduMode::Extended)?;
        setup.push(t.elapsed());
        paces += sm_card.sessions_opened();
        inner = Some(sm_card.into_inner());
        let t = Instant::now();
        exchange(&mut plain_card, &select, ApduMode::Extended)?;
        plain_select.push(t.elapsed());
    }
    assert_eq!(paces as usize, scans.max(100));
    let mut sm_card = connect(&mut inner);
    exchange(&mut sm_card, &select, ApduMode::Extended)?;
    let (setup, plain_select) = (median(setup), median(plain_select));
    println!(
        "  session set-up (SELECT + PACE)    {:>9.1} us   plain SELECT {:>7.1} us   PACE adds {:>8.1} us",
        us(setup),
        us(plain_select),
        us(setup.saturating_sub(plain_select))
    );

    // 2. Per APDU: card info and a credential read (the office terminal would be needed for
    //    nothing here: identity is read with the PIN verified in the session).
    let verify = Command::verify_pin(b"482913");
    exchange(&mut sm_card, &verify, ApduMode::Extended)?;
    exchange(&mut plain_card, &verify, ApduMode::Extended)?;
    for (what, cmd) in [
        ("GET DATA card info", Command::get_data(object::CARD_INFO)),
        (
            "GET DATA identity credential",
            Command::get_data(object::credential(0)),
        ),
    ] {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut len = 0;
        for _ in 0..2_000 {
            let t = Instant::now();
            let r = exchange(&mut sm_card, &cmd, ApduMode::Extended)?;
            a.push(t.elapsed());
            len = r.data.len();
            let t = Instant::now();
            exchange(&mut plain_card, &cmd, ApduMode::Extended)?;
            b.push(t.elapsed());
        }
        let (a, b) = (median(a), median(b));
        println!(
            "  {what:<30} ({len:>4} B)  SM {:>7.1} us   plain {:>7.1} us   overhead {:>6.1} us/APDU",
            us(a),
            us(b),
            us(a.saturating_sub(b))
        );
    }

    // 3. The clinic scan, interleaved.
    let mut with_sm = Vec::new();
    let mut without = Vec::new();
    inner = Some(sm_card.into_inner());
    let mut paces = 0;
    let mut sm_scan = || -> Result<Duration> {
        let mut sm_card = connect(&mut inner);
        let t = Instant::now();
        let r = scan(
            &mut sm_card as &mut dyn Transport,
            ApduMode::Extended,
            &w.registry,
            &term,
            None,
            NOW + 60,
        )?;
        let a = t.elapsed();
        assert!(r.valid, "{r:?}");
        paces += sm_card.sessions_opened();
        inner = Some(sm_card.into_inner());
        Ok(a)
    };
    let mut plain_scan = || -> Result<Duration> {
        let t = Instant::now();
        let r = scan(
            &mut plain_card as &mut dyn Transport,
            ApduMode::Extended,
            &w.registry,
            &term,
            None,
            NOW + 60,
        )?;
        let b = t.elapsed();
        assert!(r.valid, "{r:?}");
        Ok(b)
    };
    for i in 0..scans + 5 {
        // Which of the pair runs first alternates, so neither always follows the other.
        let (a, b) = if i % 2 == 0 {
            (sm_scan()?, plain_scan()?)
        } else {
            let b = plain_scan()?;
            (sm_scan()?, b)
        };
        if i >= 5 {
            with_sm.push(a);
            without.push(b);
        }
    }
    let b = report_scans(scans, &with_sm, &without);
    println!("  PACE runs in the SM scans: {paces} (one per scan)");

    // 4. The same scan on one open session (a second scan on the same connection: its SELECT
    //    goes protected, no new PACE): what the protected APDUs of a scan cost.
    let mut sm_card = connect(&mut inner);
    let mut reused = Vec::new();
    for i in 0..scans + 5 {
        let t = Instant::now();
        let r = scan(
            &mut sm_card as &mut dyn Transport,
            ApduMode::Extended,
            &w.registry,
            &term,
            None,
            NOW + 60,
        )?;
        if i >= 5 {
            reused.push(t.elapsed());
        }
        assert!(r.valid, "{r:?}");
    }
    let c = median(reused);
    println!(
        "  clinic scan on an open session    SM {:>7.3} ms   (PACE once for all {} scans; ratio to plain {:.3})",
        c.as_secs_f64() * 1e3,
        scans + 5,
        c.as_secs_f64() / b.as_secs_f64()
    );

    // 5. On the virtual card: civic-card processes over vpcd, the same state. The state files
    //    (the virtual chips' non-volatile memory, fsynced on every commit) go where
    //    scripts/bench keeps its cards (CIVIC_BENCH_CARD_DIR, tmpfs), as critical_paths does:
    //    on this VM's disk a commit's fsyncs measured the disk under other work, not the card.
    let dir = match std::env::var_os("CIVIC_BENCH_CARD_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        // Run alone (not by scripts/bench): tmpfs too where there is one, for the same reason.
        None if Path::new("/dev/shm").is_dir() => tempfile::tempdir_in("/dev/shm")?,
        None => tempfile::tempdir()?,
    };
    let state = sm_card.inner().card.serialized_state().to_vec();
    std::fs::write(dir.path().join("sm.state"), &state)?;
    std::fs::write(dir.path().join("plain.state"), &state)?;
    let mut sm_vcard = VpcdCard::start(dir.path().join("sm.state"))?;
    let mut plain_vcard = VpcdCard::start_with_args(
        dir.path().join("plain.state"),
        &["--benchmark-plaintext-baseline"],
    )?;
    println!("On the virtual card (civic-card over vpcd, a new connection and PACE per SM scan):");
    let mut setup = Vec::new();
    let mut plain_select = Vec::new();
    for _ in 0..scans.max(100) {
        let mut t = SmTransport::with_password(
            Vpcd(&mut sm_vcard),
            CardPassword::Can(Zeroizing::new(can.to_string())),
        );
        let t0 = Instant::now();
        exchange(&mut t, &select, ApduMode::Extended)?;
        setup.push(t0.elapsed());
        assert!(t.in_session());
        let t0 = Instant::now();
        exchange(&mut Vpcd(&mut plain_vcard), &select, ApduMode::Extended)?;
        plain_select.push(t0.elapsed());
    }
    let (setup, plain_select) = (median(setup), median(plain_select));
    println!(
        "  session set-up (SELECT + PACE)    {:>9.1} us   plain SELECT {:>7.1} us   PACE adds {:>8.1} us",
        us(setup),
        us(plain_select),
        us(setup.saturating_sub(plain_select))
    );
    let mut with_sm = Vec::new();
    let mut without = Vec::new();
    let mut sm_scan = || -> Result<Duration> {
        let mut t = SmTransport::with_password(
            Vpcd(&mut sm_vcard),
            CardPassword::Can(Zeroizing::new(can.to_string())),
        );
        let t0 = Instant::now();
        let r = scan(
            &mut t,
            ApduMode::Extended,
            &w.registry,
            &term,
            None,
            NOW + 60,
        )?;
        let a = t0.elapsed();
        assert!(r.valid && t.sessions_opened() == 1, "{r:?}");
        Ok(a)
    };
    let mut plain_scan = || -> Result<Duration> {
        let t0 = Instant::now();
        let r = scan(
            &mut Vpcd(&mut plain_vcard),
            ApduMode::Extended,
            &w.registry,
            &term,
            None,
            NOW + 60,
        )?;
        let b = t0.elapsed();
        assert!(r.valid, "{r:?}");
        Ok(b)
    };
    for i in 0..scans + 5 {
        let (a, b) = if i % 2 == 0 {
            (sm_scan()?, plain_scan()?)
        } else {
            let b = plain_scan()?;
            (sm_scan()?, b)
        };
        if i >= 5 {
            with_sm.push(a);
            without.push(b);
        }
    }
    report_scans(scans, &with_sm, &without);
    Ok(())
}

/// The raw vpcd card as a reader transport (no secure messaging of its own).
struct Vpcd<'a>(&'a mut VpcdCard);

impl Transport for Vpcd<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0
            .transmit_raw(apdu)
            .map_err(|_| TransportError::Pcsc(pcsc::Error::CommError))
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Vpcd(&mut *self.0)))
    }
}
