//! `civic scan`: the clinic's check of a card.

use anyhow::{Context as _, Result};
use civic_reader::cache::{self, StalePolicy};
use civic_reader::terminal::{self, Role};
use civic_reader::workflow::scan::{scan, ChipCheck};
use clap::Args;

use super::{Ctx, Exit, PinSource, ReaderArg, TerminalArg};

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    reader: ReaderArg,
    #[command(flatten)]
    terminal: TerminalArg,
    /// The citizen consents to a full health read by entering their PIN
    #[arg(long)]
    consent: bool,
    #[command(flatten)]
    pin: PinSource,
    /// Verify against the clinic cache only, never the registry (offline)
    #[arg(long)]
    cache_only: bool,
    /// How old the status may be (time since the clinic cache last synced), e.g. 24h, 90m
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    max_staleness: std::time::Duration,
    /// What to do with a status older than --max-staleness
    #[arg(long, value_enum, default_value_t = Stale::Warn)]
    stale: Stale,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Stale {
    /// Scan, with a warning line
    Warn,
    /// Do not scan (exit 3)
    Refuse,
}

/// The registry a clinic scan verifies against, and how fresh its status is: the first online
/// scan at a clinic builds the clinic cache; a status older than `max_staleness` is refused
/// under [`StalePolicy::Refuse`] (before the card is touched or the citizen types a PIN).
/// Shared by `civic scan` and the desk.
pub fn scan_registry(
    ctx: &Ctx,
    cache_only: bool,
    max_staleness: std::time::Duration,
    policy: StalePolicy,
    now: u64,
) -> Result<(cache::ScanRegistry, cache::ScanFreshness)> {
    let data = ctx.data()?;
    // A clinic's first online scan builds its verified mirror first, so no verdict rests on
    // the registry file's unverified index rows (see registry::verified_mirror).
    if !cache_only && !data.cache_db().exists() {
        if let Some(s) = data.evm_settings()? {
            // On the chain, the same: the first online scan builds the cache from the chain's
            // verified events, so that later scans have it to fall back on when the node is
            // down (the ledger file `authority init` wrote is not the registry here).
            cache::sync_from_chain(&data, &s)
                .context("building the clinic cache (the first scan at this clinic)")?;
        } else if data.registry_db().exists() {
            super::registry::verified_mirror(&data)
                .context("building the clinic cache (the first scan at this clinic)")?;
        }
    }
    let (registry, note) = cache::open_for_scan(&data, cache_only)?;
    let freshness = registry.freshness(now, max_staleness, policy, note)?;
    Ok((registry, freshness))
}

pub fn run(ctx: &Ctx, a: ScanArgs) -> Result<Exit> {
    let data = ctx.data()?;
    let now = civic_reader::now();
    let policy = match a.stale {
        Stale::Warn => StalePolicy::Warn,
        Stale::Refuse => StalePolicy::Refuse,
    };
    // Refused before the card is touched (and before the citizen types a PIN).
    let (registry, freshness) = scan_registry(ctx, a.cache_only, a.max_staleness, policy, now)?;
    let clinic = terminal::pick(&data, a.terminal.terminal.as_deref(), Role::Clinic, now)?;
    let pin = if a.consent {
        Some(
            a.pin
                .read("Citizen's PIN (consent to read the health record): ")?,
        )
    } else {
        None
    };
    let mut t = ctx.connect_with_pin(&a.reader, pin.as_ref())?;
    let report = scan(
        &mut t,
        ctx.mode,
        &registry,
        &clinic.as_key(),
        pin.as_ref(),
        now,
    )?;
    if ctx.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("freshness".into(), serde_json::to_value(&freshness)?);
        }
        ctx.print_json(&v)?;
        if let Some(n) = &freshness.note {
            eprintln!("civic: note: {n}");
        }
        if freshness.stale {
            eprintln!("civic: warning: {}", stale_warning(&freshness));
        }
    } else {
        println!(
            "Card {}  ({}, applet {})   terminal {}{}",
            report.card.card_id.as_deref().unwrap_or("?"),
            super::lcs_name(report.card.life_cycle),
            report.card.version,
            report.terminal.terminal_id,
            if report.consent {
                ", citizen consented"
            } else {
                ""
            }
        );
        println!(
            "Chip authentication: {}",
            match report.chip {
                ChipCheck::Passed => "passed (the card holds its private key)",
                ChipCheck::Failed => "FAILED (the card cannot prove its key)",
                ChipCheck::NoKey => "FAILED (the card has no key)",
            }
        );
        for c in &report.credentials {
            let kind = c.kind.map(|k| k.as_str()).unwrap_or("unknown");
            match c.verdict {
                Some(v) => println!(
                    "  {:<10} {:<21} {:<24} {}",
                    kind,
                    v.label(),
                    c.issuer.as_deref().unwrap_or("-"),
                    if v.is_valid() {
                        c.summary.clone().unwrap_or_default()
                    } else {
                        c.reason.clone()
                    }
                ),
                None => println!("  {:<10} {:<21} {}", kind, "not read", c.reason),
            }
        }
        super::print_watermark(&report.watermark);
        if freshness.source == "cache" {
            println!(
                "Status as of block {}, {} ago (clinic cache, synced {})",
                freshness.watermark.height,
                cache::fmt_age(freshness.age_seconds),
                civic_reader::fmt_time(freshness.as_of)
            );
        }
        if let Some(n) = &freshness.note {
            println!("Note: {n}");
        }
        if freshness.stale {
            println!("Warning: {}", stale_warning(&freshness));
        }
        match &report.problem {
            None => println!("Overall: VALID (everything read)"),
            Some(p) => println!("Overall: NOT VALID: {p}"),
        }
    }
    Ok(if report.valid {
        Exit::Ok
    } else {
        Exit::Negative
    })
}

fn stale_warning(f: &cache::ScanFreshness) -> String {
    format!(
        "the status is {} old, older than --max-staleness {}: run `civic registry sync`",
        cache::fmt_age(f.age_seconds),
        cache::fmt_age(f.max_staleness_seconds)
    )
}
