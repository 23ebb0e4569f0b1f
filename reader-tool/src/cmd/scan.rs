//! `civic scan`: the clinic's check of a card.

use anyhow::Result;
use civic_reader::workflow::scan::{scan, ChipCheck};
use clap::Args;

use super::{Ctx, Exit, ReaderArg};

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    reader: ReaderArg,
}

pub fn run(ctx: &Ctx, a: ScanArgs) -> Result<Exit> {
    let data = ctx.data()?;
    let registry = data.registry()?;
    let mut t = ctx.connect(&a.reader)?;
    let report = scan(&mut t, ctx.mode, &registry, civic_reader::now())?;
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        println!(
            "Card {}  ({}, applet {})",
            report.card.card_id.as_deref().unwrap_or("?"),
            super::lcs_name(report.card.life_cycle),
            report.card.version
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
            println!(
                "  {:<10} {:<22} {:<24} {}",
                c.kind.map(|k| k.as_str()).unwrap_or("unknown"),
                c.verdict.label(),
                c.issuer.as_deref().unwrap_or("-"),
                if c.verdict.is_valid() {
                    c.summary.clone().unwrap_or_default()
                } else {
                    c.reason.clone()
                }
            );
        }
        super::print_watermark(&report.watermark);
        match &report.problem {
            None => println!("Overall: VALID"),
            Some(p) => println!("Overall: NOT VALID: {p}"),
        }
    }
    Ok(if report.valid {
        Exit::Ok
    } else {
        Exit::Negative
    })
}
