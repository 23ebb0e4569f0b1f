//! `civic view`: the citizen reads their own card.

use anyhow::{Context, Result};
use civic_reader::session::Pin;
use civic_reader::terminal::{describe_access, Role};
use civic_reader::workflow::agency;
use civic_reader::workflow::view::{view, ViewReport};
use civic_registry::credential::{Claims, Kind};
use clap::Args;

use super::{Ctx, Exit, PinSource, ReaderArg};

#[derive(Debug, Args)]
pub struct ViewArgs {
    #[command(flatten)]
    reader: ReaderArg,
    #[command(flatten)]
    pin: PinSource,
    /// Also show the card's access log: which terminals read what, and when
    #[arg(long)]
    log: bool,
    /// Export one credential (with its proof) for another agency to verify: identity,
    /// health, education or emergency
    #[arg(long, requires = "out")]
    export: Option<civic_registry::credential::Kind>,
    /// Where to write the export
    #[arg(long, requires = "export")]
    out: Option<std::path::PathBuf>,
}

/// Read the card in `reader` as its holder (CLI and desk); also the reader's name.
pub fn read_card(
    ctx: &Ctx,
    reader: &ReaderArg,
    pin: &Pin,
    with_log: bool,
) -> Result<(ViewReport, String)> {
    let data = ctx.data()?;
    let registry = data.registry()?;
    let mut t = ctx.connect_with_pin(reader, Some(pin))?;
    let name = t.inner().reader().to_owned();
    let report = view(
        &mut t,
        ctx.mode,
        &registry,
        pin,
        with_log,
        civic_reader::now(),
    )
    .context("reading your card")?;
    Ok((report, name))
}

/// The export file of the `kind` credential in a citizen's view, for another agency.
pub fn export_of(report: &ViewReport, kind: Kind) -> Result<Vec<u8>> {
    let v = report
        .credentials
        .iter()
        .find(|v| v.credential.as_ref().is_some_and(|c| c.kind == kind))
        .with_context(|| format!("the card holds no readable {kind} credential"))?;
    let card_id = report.card.card_id.as_deref().unwrap_or_default();
    Ok(agency::export(card_id, kind.as_str(), &v.record))
}

pub fn run(ctx: &Ctx, a: ViewArgs) -> Result<Exit> {
    let pin = a.pin.read("Your PIN: ")?;
    let (report, _) = read_card(ctx, &a.reader, &pin, a.log)?;
    if let (Some(kind), Some(out)) = (a.export, &a.out) {
        std::fs::write(out, export_of(&report, kind)?)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("Exported the {kind} credential to {}", out.display());
    }
    if ctx.json {
        ctx.print_json(&report)?;
        return Ok(Exit::Ok);
    }
    println!("Card {}", report.card.card_id.as_deref().unwrap_or("?"));
    for v in &report.credentials {
        let Some(c) = &v.credential else {
            println!("\n[slot {}] unreadable: {}", v.slot, v.reason);
            continue;
        };
        println!(
            "\n{} credential from {}: {}",
            c.kind,
            c.issuer_id,
            v.verdict.label()
        );
        if !v.verdict.is_valid() {
            println!("  ({})", v.reason);
        }
        println!(
            "  issued {}, expires {}",
            civic_reader::fmt_time(c.issued_at),
            civic_reader::fmt_time(c.expires_at)
        );
        match &c.claims {
            Claims::Identity(i) => {
                println!("  name:        {}", i.name);
                println!("  born:        {}", i.birth_date);
            }
            Claims::Health(h) => {
                println!("  blood type:  {}", h.emergency.blood_type);
                println!("  allergies:   {}", list(&h.emergency.allergies));
                println!("  emergency:   {}", h.emergency.emergency_contact);
                println!("  conditions:  {}", list(&h.chronic_conditions));
                for x in &h.vaccinations {
                    println!("  vaccination: {} ({})", x.name, x.date);
                }
            }
            Claims::Emergency(e) => {
                println!("  blood type:  {}", e.blood_type);
                println!("  allergies:   {}", list(&e.allergies));
                println!("  emergency:   {}", e.emergency_contact);
            }
            Claims::Education(e) => {
                for d in &e.degrees {
                    println!("  degree:      {}, {} ({})", d.title, d.institution, d.year);
                }
            }
        }
    }
    if let Some(log) = &report.log {
        println!("\nAccess log ({} entries, oldest first)", log.len());
        println!("  {:<22} {:<20} {:<18} read", "time", "terminal", "role");
        for e in log {
            println!(
                "  {:<22} {:<20} {:<18} {}",
                civic_reader::fmt_time(e.time),
                e.terminal_id,
                Role::from_byte(e.role).map(Role::name).unwrap_or("?"),
                describe_access(e.read)
            );
        }
    }
    println!();
    super::print_watermark(&report.watermark);
    Ok(Exit::Ok)
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}
