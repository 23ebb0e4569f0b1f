//! `civic readers`, `civic card-info`.

use anyhow::{Context, Result};
use civic_reader::session::Session;
use civic_reader::transport::list_readers;

use super::{Ctx, Exit, ReaderArg};

pub fn run(ctx: &Ctx) -> Result<Exit> {
    let readers = list_readers().context("listing PC/SC readers")?;
    if ctx.json {
        let v: Vec<_> = readers
            .iter()
            .map(|(name, card)| serde_json::json!({ "reader": name, "card_present": card }))
            .collect();
        ctx.print_json(&v)?;
    } else if readers.is_empty() {
        println!("No readers. Is pcscd running?");
    } else {
        for (name, card) in &readers {
            println!(
                "{name:<28} {}",
                if *card { "card present" } else { "empty" }
            );
        }
    }
    Ok(Exit::Ok)
}

pub fn card_info(ctx: &Ctx, reader: ReaderArg) -> Result<Exit> {
    let mut t = ctx.connect(&reader)?;
    let mut s = Session::open(&mut t, ctx.mode).context("selecting the Civic Card application")?;
    let info = s.refresh_info()?.clone();
    let dir = s.directory()?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "card": info, "directory": dir }))?;
        return Ok(Exit::Ok);
    }
    println!(
        "Card id:        {}",
        info.card_id.as_deref().unwrap_or("(none)")
    );
    println!("Life cycle:     {}", super::lcs_name(info.life_cycle));
    println!("Applet version: {}", info.version);
    println!(
        "Storage:        {} bytes used, {} free (of {})",
        info.total_storage.saturating_sub(info.free_storage),
        info.free_storage,
        info.total_storage
    );
    match info.pin_tries_left {
        Some(t) => println!("PIN tries left: {t}"),
        None => println!("PIN:            not set"),
    }
    println!(
        "Card key:       {}",
        if info.has_card_key {
            "generated on the card"
        } else {
            "none"
        }
    );
    for e in dir {
        let kind = civic_registry::credential::Kind::from_byte(e.kind)
            .map(|k| k.as_str())
            .unwrap_or("unknown");
        println!(
            "Slot {}:         {kind} credential, {} bytes",
            e.slot, e.length
        );
    }
    Ok(Exit::Ok)
}
