//! `civic verify FILE`: another agency checks an exported credential against the registry.

use std::path::PathBuf;

use anyhow::{Context, Result};
use civic_reader::workflow::agency;
use clap::Args;

use super::{Ctx, Exit};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A file written by `civic view --export KIND --out FILE`
    file: PathBuf,
}

pub fn run(ctx: &Ctx, a: VerifyArgs) -> Result<Exit> {
    let data = ctx.data()?;
    // Against the verified mirror, not the registry file's index rows (see
    // registry::verified_mirror).
    let registry = super::registry::verified_mirror(&data)?;
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let report = agency::verify(&registry, &bytes, civic_reader::now())
        .with_context(|| format!("verifying {}", a.file.display()))?;
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        match &report.credential {
            Some(c) => println!(
                "{} credential of card {} from {}: {}",
                c.kind,
                c.card_id,
                c.issuer_id,
                report.verdict.label()
            ),
            None => println!("credential: {}", report.verdict.label()),
        }
        if !report.verdict.is_valid() {
            println!("  {}", report.reason);
        } else if let Some(c) = &report.credential {
            println!("  {}", civic_reader::workflow::summary(&c.claims));
        }
        super::print_watermark(&report.watermark);
    }
    Ok(if report.verdict.is_valid() {
        Exit::Ok
    } else {
        Exit::Negative
    })
}
