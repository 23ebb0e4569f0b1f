//! `civic provision`: issuing office personalises a blank card.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use civic_reader::office::IssuanceBook;
use civic_reader::workflow::provision::{provision, Bureau, CitizenData, Office, Validity};
use civic_registry::credential::Kind;
use civic_registry::{keys, Registry};
use clap::Args;

use super::{Ctx, Exit, PinSource, ReaderArg};

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    reader: ReaderArg,
    /// The citizen's data (JSON: card_id?, identity{name,birth_date}, health?, education?)
    #[arg(long)]
    citizen: PathBuf,
    #[command(flatten)]
    pin: PinSource,
    /// Bureau signing the identity credential (default: the one bureau held here for it)
    #[arg(long)]
    identity_issuer: Option<String>,
    /// Bureau signing the health credential
    #[arg(long)]
    health_issuer: Option<String>,
    /// Bureau signing the education credential
    #[arg(long)]
    education_issuer: Option<String>,
}

pub fn run(ctx: &Ctx, a: ProvisionArgs) -> Result<Exit> {
    let data = ctx.data()?;
    let text = std::fs::read_to_string(&a.citizen)
        .with_context(|| format!("reading {}", a.citizen.display()))?;
    let citizen: CitizenData = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid citizen file", a.citizen.display()))?;
    let pin = a.pin.read_new("Citizen's new PIN (6 digits): ")?;

    let mut registry = data.registry_writer()?;
    let authority_public_key = keys::public_key_bytes(&registry.authority_key()?);
    let book = IssuanceBook::open(&data.office_db())?;
    let now = civic_reader::now();

    let issuers = registry.issuers()?;
    let bureau_for = |kind: Kind| -> Result<Bureau> {
        let chosen = match kind {
            Kind::Identity => &a.identity_issuer,
            // The emergency subset comes from the bureau that signs the health record.
            Kind::Health | Kind::Emergency => &a.health_issuer,
            Kind::Education => &a.education_issuer,
        };
        // Certificates whose key this office holds: after a rotation only the newest
        // certificate of a bureau matches its key file.
        let mut candidates: Vec<Bureau> = Vec::new();
        for i in issuers
            .iter()
            .filter(|i| chosen.as_ref().is_none_or(|c| *c == i.body.issuer_id))
            .filter(|i| i.body.may_issue(kind, now))
            .filter(|i| data.issuer_key(&i.body.issuer_id).exists())
        {
            let key = data.load_issuer(&i.body.issuer_id)?;
            if keys::public_key_bytes(key.verifying_key()).as_slice() == i.body.public_key {
                candidates.push(Bureau {
                    cert: i.body.clone(),
                    key,
                });
            }
        }
        match candidates.len() {
            1 => Ok(candidates.remove(0)),
            0 => bail!(
                "no bureau held by this office may issue {kind} credentials now \
                 (register one with `civic issuer add --kinds {kind} ...`)"
            ),
            _ => bail!(
                "several bureaus may issue {kind} credentials: choose one with --{kind}-issuer"
            ),
        }
    };

    let mut t = ctx.connect(&a.reader)?;
    let office = Office {
        authority_public_key,
        book: &book,
        validity: Validity::default(),
    };
    let done = provision(
        &mut t,
        ctx.mode,
        &mut registry,
        &office,
        &bureau_for,
        &citizen,
        &pin,
        now,
    )?;
    if ctx.json {
        ctx.print_json(&done)?;
    } else {
        println!("Provisioned card {} in reader {}", done.card_id, t.reader());
        println!(
            "  card key   generated on the card: {}…",
            &hex::encode(done.card_public_key)[..24]
        );
        for c in &done.credentials {
            println!(
                "  {:<10} signed by {:<18} status index {:<4} batch {} anchored",
                c.kind.as_str(),
                c.issuer_id,
                c.status_index,
                c.batch_id
            );
        }
        println!(
            "  PIN set, card activated (registry block {})",
            done.registry_height
        );
    }
    Ok(Exit::Ok)
}
