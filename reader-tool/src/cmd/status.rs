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

/// A status change recorded in the registry.
#[derive(Debug, serde::Serialize)]
pub struct Changed {
    pub issuer_id: String,
    pub status_index: u32,
    pub from: CredentialStatus,
    pub to: CredentialStatus,
    pub watermark: civic_registry::Watermark,
}

/// Flip the status of the `kind` credential this office issued to `card_id` (CLI and desk).
pub fn change(ctx: &Ctx, card_id: &str, kind: Kind, to: CredentialStatus) -> Result<Changed> {
    let data = ctx.data()?;
    let book = IssuanceBook::open(&data.office_db())?;
    let Some(issued) = book.find(card_id, kind)? else {
        bail!("this office has no record of a {kind} credential for card {card_id}");
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
    Ok(Changed {
        issuer_id: issued.issuer_id,
        status_index: issued.status_index,
        from: current,
        to,
        watermark: wm,
    })
}

pub fn run(ctx: &Ctx, a: StatusArgs, to: CredentialStatus) -> Result<Exit> {
    let c = change(ctx, &a.card_id, a.kind, to)?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "card_id": a.card_id, "kind": a.kind, "issuer_id": c.issuer_id,
            "status_index": c.status_index, "from": c.from.to_string(),
            "to": c.to.to_string(), "watermark": c.watermark }))?;
    } else {
        println!(
            "{} credential of card {}: {} -> {} (issuer {}, status index {}, block {})",
            a.kind, a.card_id, c.from, c.to, c.issuer_id, c.status_index, c.watermark.height
        );
    }
    Ok(Exit::Ok)
}
