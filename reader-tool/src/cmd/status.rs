//! `civic revoke | suspend | reinstate`: a bureau flips its credential's status bits.

use anyhow::{bail, Context, Result};
use civic_reader::office::IssuanceBook;
use civic_registry::credential::Kind;
use civic_registry::status::CredentialStatus;
use civic_registry::{Registry, SignedStatusChange, StatusChange};
use clap::Args;

use super::{Ctx, Exit};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The card whose credential changes
    #[arg(long)]
    card_id: String,
    /// Which credential: identity, health or education
    #[arg(long)]
    kind: Kind,
}

pub fn run(ctx: &Ctx, a: StatusArgs, to: CredentialStatus) -> Result<Exit> {
    let data = ctx.data()?;
    let book = IssuanceBook::open(&data.office_db())?;
    let Some(issued) = book.find(&a.card_id, a.kind)? else {
        bail!(
            "this office has no record of a {} credential for card {}",
            a.kind,
            a.card_id
        );
    };
    let mut registry = data.registry_writer()?;
    let current = registry.status(&issued.issuer_id, issued.status_index)?;
    if current == CredentialStatus::Revoked {
        bail!("the credential is already revoked; revocation is final");
    }
    let key = data.load_issuer(&issued.issuer_id)?;
    let change = StatusChange {
        issuer_id: issued.issuer_id.clone(),
        status_index: issued.status_index,
        status: to,
    };
    let wm = registry
        .set_status(&SignedStatusChange::sign(&change, &key)?)
        .context("recording the status change")?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "card_id": a.card_id, "kind": a.kind, "issuer_id": issued.issuer_id,
            "status_index": issued.status_index, "from": current.to_string(),
            "to": to.to_string(), "watermark": wm }))?;
    } else {
        println!(
            "{} credential of card {}: {current} -> {to} (issuer {}, status index {}, block {})",
            a.kind, a.card_id, issued.issuer_id, issued.status_index, wm.height
        );
    }
    Ok(Exit::Ok)
}
