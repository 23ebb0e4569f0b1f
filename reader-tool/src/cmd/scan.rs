//! `civic scan`: the clinic's check of a card.

use anyhow::Result;
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
}

pub fn run(ctx: &Ctx, a: ScanArgs) -> Result<Exit> {
    let data = ctx.data()?;
    let registry = data.registry()?;
    let now = civic_reader::now();
    let clinic = terminal::pick(&data, a.terminal.terminal.as_deref(), Role::Clinic, now)?;
    let pin = if a.consent {
        Some(
            a.pin
                .read("Citizen's PIN (consent to read the health record): ")?,
        )
    } else {
        None
    };
    let mut t = ctx.connect(&a.reader)?;
    let report = scan(
        &mut t,
        ctx.mode,
        &registry,
        &clinic.as_key(),
        pin.as_ref(),
        now,
    )?;
    if ctx.json {
        ctx.print_json(&report)?;
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
