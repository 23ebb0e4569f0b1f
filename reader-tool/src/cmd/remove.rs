//! `civic remove-credential`: an issuing office deletes a credential from a card (a withdrawn
//! or revoked credential, or to free storage). Needs a terminal with the write right.

use anyhow::{bail, Result};
use civic_reader::session::WriteRecords;
use civic_reader::terminal::Role;
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
    let (card_id, slot) = ctx.with_terminal(
        &a.reader,
        &a.terminal,
        Role::IssuingOffice,
        |office, card_id| {
            let Some(entry) = office
                .directory()?
                .into_iter()
                .find(|e| e.kind == a.kind.as_byte())
            else {
                bail!("card {card_id} holds no {} credential", a.kind);
            };
            office.delete_record(entry.slot)?;
            Ok((card_id.to_owned(), entry.slot))
        },
    )?;
    if ctx.json {
        ctx.print_json(
            &serde_json::json!({ "card_id": card_id, "removed": a.kind, "slot": slot }),
        )?;
    } else {
        println!(
            "Removed the {} credential (slot {slot}) from card {card_id}",
            a.kind
        );
    }
    Ok(Exit::Ok)
}
