//! `civic unblock` (office) and `civic change-pin` (citizen).

use anyhow::{Context, Result};
use civic_reader::session::{Pin, Session};
use civic_reader::terminal::Role;
use civic_reader::transport::Transport;
use clap::Args;

use super::{Ctx, Exit, PinSource, ReaderArg, TerminalArg};

#[derive(Debug, Args)]
pub struct UnblockArgs {
    #[command(flatten)]
    reader: ReaderArg,
    #[command(flatten)]
    terminal: TerminalArg,
    #[command(flatten)]
    pin: PinSource,
}

#[derive(Debug, Args)]
pub struct ChangePinArgs {
    #[command(flatten)]
    reader: ReaderArg,
    /// Read the current PIN, then the new PIN, from standard input (one per line)
    #[command(flatten)]
    pin: PinSource,
}

/// As the issuing office's terminal, set a new PIN on the card in `reader` (which unblocks
/// it); the card id and the tries the card now allows (CLI and desk).
pub fn unblock_card(
    ctx: &Ctx,
    reader: &ReaderArg,
    terminal: &TerminalArg,
    new_pin: &Pin,
) -> Result<(String, u8)> {
    ctx.with_terminal(reader, terminal, Role::IssuingOffice, |office, card_id| {
        office.reset_pin(new_pin)?;
        Ok((card_id.to_owned(), office.pin_tries_left()?))
    })
}

/// As the citizen, change the PIN of the card in `reader` (CLI and desk).
pub fn change_card_pin(ctx: &Ctx, reader: &ReaderArg, old: &Pin, new: &Pin) -> Result<()> {
    let mut t = ctx.connect_with_pin(reader, Some(old))?;
    let mut tx = t.transaction()?;
    let s = Session::open(&mut *tx, ctx.mode).context("selecting the Civic Card application")?;
    let mut citizen = s.verify_pin(old)?;
    citizen.change_pin(old, new)?;
    Ok(())
}

pub fn unblock(ctx: &Ctx, a: UnblockArgs) -> Result<Exit> {
    let new_pin = a.pin.read_new("Citizen's new PIN (6 digits): ")?;
    let (card_id, tries) = unblock_card(ctx, &a.reader, &a.terminal, &new_pin)?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "card_id": card_id, "pin_tries_left": tries }))?;
    } else {
        println!("PIN of card {card_id} reset: {tries} tries");
    }
    Ok(Exit::Ok)
}

pub fn change(ctx: &Ctx, a: ChangePinArgs) -> Result<Exit> {
    let old = a.pin.read("Current PIN: ")?;
    let new = a.pin.read_new("New PIN: ")?;
    change_card_pin(ctx, &a.reader, &old, &new)?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "changed": true }))?;
    } else {
        println!("PIN changed.");
    }
    Ok(Exit::Ok)
}
