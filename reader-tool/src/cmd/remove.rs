//! `civic remove-credential`: an issuing office deletes a credential from a card (a withdrawn
//! or revoked credential, or to free storage). Needs a terminal with the write right.

use anyhow::{bail, Context, Result};
use civic_reader::session::{Session, WriteRecords};
use civic_reader::terminal::{self, Role};
use civic_reader::transport::Transport;
use civic_registry::credential::Kind;
use clap::Args;

use super::{Ctx, Exit, ReaderArg, TerminalArg};

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    reader: ReaderArg,
    #[command(flatten)]
    terminal: TerminalArg,
    /// Which credential: identity, health, education or emergency
    #[arg(long)]
    kind: Kind,
}

pub fn run(ctx: &Ctx, a: RemoveArgs) -> Result<Exit> {
    let data = ctx.data()?;
    let now = civic_reader::now();
    let term = terminal::pick(
        &data,
        a.terminal.terminal.as_deref(),
        Role::IssuingOffice,
        now,
    )?;
    let mut t = ctx.connect(&a.reader)?;
    let mut tx = t.transaction()?;
    let s = Session::open(&mut *tx, ctx.mode).context("selecting the Civic Card application")?;
    let card_id = s.info().card_id.clone().unwrap_or_default();
    let mut office = s
        .authenticate(&term.as_key(), now)
        .context("authenticating the terminal")?;
    let Some(entry) = office
        .directory()?
        .into_iter()
        .find(|e| e.kind == a.kind.as_byte())
    else {
        bail!("card {card_id} holds no {} credential", a.kind);
    };
    office.delete_record(entry.slot)?;
    if ctx.json {
        ctx.print_json(
            &serde_json::json!({ "card_id": card_id, "removed": a.kind, "slot": entry.slot }),
        )?;
    } else {
        println!(
            "Removed the {} credential (slot {}) from card {card_id}",
            a.kind, entry.slot
        );
    }
    Ok(Exit::Ok)
}
