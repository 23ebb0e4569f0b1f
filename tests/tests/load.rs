//! Load: four cards in four virtual readers, scanned concurrently by four clinic terminals
//! (one `civic scan` process after another per reader, as four clerks would) for
//! `CIVIC_LOAD_SECS` seconds (default 3; the full run is 60). Every scan must succeed with
//! every credential VALID: zero errors. Throughput and p50/p99 scan latency are printed, with
//! a line for BENCHMARKS.md; they are reported, not asserted (timed tests flake on shared
//! machines).
//!
//! ```sh
//! CIVIC_LOAD_SECS=60 cargo test -p civic-e2e --test load -- --nocapture
//! ```

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use civic_e2e::office::Office;
use civic_e2e::{pcscd, serial, VirtualCard, READERS};

/// The q-quantile (0..=1) of sorted samples, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// What one phase of scanning measured.
struct Phase {
    /// Latencies of the successful scans, sorted.
    took: Vec<Duration>,
    per_reader: Vec<usize>,
    errors: Vec<String>,
    /// Successful scans per second of wall time.
    rate: f64,
}

/// Scan every reader in `readers` concurrently, one `civic scan` after another per reader,
/// for `secs` seconds.
fn phase(office: &Arc<Office>, readers: &[String], secs: u64) -> Result<Phase> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers: Vec<_> = readers
        .iter()
        .map(|reader| {
            let office = Arc::clone(office);
            let reader = reader.clone();
            thread::spawn(move || -> Result<(Vec<Duration>, Vec<String>)> {
                let mut took = Vec::new();
                let mut errors = Vec::new();
                while Instant::now() < deadline {
                    let r = office.civic(&["--json", "scan", "--reader", &reader], None)?;
                    let valid = r.code == 0
                        && serde_json::from_str::<serde_json::Value>(&r.out)
                            .is_ok_and(|v| v["valid"] == true);
                    if valid {
                        took.push(r.took);
                    } else {
                        errors.push(format!("{reader}: exit {}: {}", r.code, r.out.trim()));
                    }
                }
                Ok((took, errors))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = Vec::new();
    let mut per_reader = Vec::new();
    for w in workers {
        let (took, errs) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        per_reader.push(took.len());
        all.extend(took);
        errors.extend(errs);
    }
    let wall = started.elapsed();
    all.sort_unstable();
    let rate = all.len() as f64 / wall.as_secs_f64();
    Ok(Phase {
        took: all,
        per_reader,
        errors,
        rate,
    })
}

#[test]
fn four_readers_scanned_concurrently_without_errors() -> Result<()> {
    let secs: u64 = std::env::var("CIVIC_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let _lock = serial();
    pcscd();
    let office = Arc::new(Office::new()?);
    office.set_up_city()?;
    let mut cards = Vec::new();
    for i in 0..READERS.len() {
        let card = VirtualCard::blank(i)?;
        office.provision_citizen(&card.reader(), &office.citizen_numbered(i as u32)?)?;
        cards.push(card);
    }
    office.expect(0, &["registry", "sync"], None)?;

    // The floor, measured in the same run: one reader scanned alone.
    let solo_secs = (secs / 4).clamp(1, 15);
    let solo = phase(&office, &[cards[0].reader()], solo_secs)?;
    let readers: Vec<String> = cards.iter().map(VirtualCard::reader).collect();
    let all = phase(&office, &readers, secs)?;
    let (p50, p99, max) = (
        quantile(&all.took, 0.50),
        quantile(&all.took, 0.99),
        all.took.last().copied().unwrap_or_default(),
    );
    eprintln!(
        "load: one reader alone for {solo_secs} s: {} scans, {:.1} scans/s, p50 {}, p99 {}",
        solo.took.len(),
        solo.rate,
        ms(quantile(&solo.took, 0.5)),
        ms(quantile(&solo.took, 0.99)),
    );
    eprintln!(
        "load: 4 readers x {secs} s: {} scans ({:?} per reader), {} errors, {:.1} scans/s \
         ({:.2}x one reader alone), latency p50 {}, p99 {}, max {}",
        all.took.len(),
        all.per_reader,
        all.errors.len(),
        all.rate,
        all.rate / solo.rate.max(f64::MIN_POSITIVE),
        ms(p50),
        ms(p99),
        ms(max)
    );
    eprintln!(
        "BENCHMARKS.md: | {secs} s | 4 | {} | {} | {:.1} | {:.2} | {} | {} | {} |",
        all.took.len(),
        all.errors.len(),
        all.rate,
        all.rate / solo.rate.max(f64::MIN_POSITIVE),
        ms(p50),
        ms(p99),
        ms(max)
    );
    let errors = [solo.errors, all.errors].concat();
    let per_reader = all.per_reader;
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }
    ensure!(
        errors.is_empty(),
        "{} scans failed under load",
        errors.len()
    );
    ensure!(
        per_reader.iter().all(|c| *c > 0),
        "a reader never completed a scan: {per_reader:?}"
    );
    Ok(())
}
