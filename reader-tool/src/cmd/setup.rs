//! `civic authority init`, `civic issuer add|list`.

use anyhow::{bail, Context, Result};
use civic_registry::cert::{IssuerCertBody, IssuerCertificate};
use civic_registry::credential::Kind;
use civic_registry::ledger::SqliteLedger;
use civic_registry::{keys, Registry};
use clap::{Args, Subcommand};

use super::{Ctx, Exit};

#[derive(Debug, Subcommand)]
pub enum AuthorityCmd {
    /// Create the authority key and the registry's genesis block
    Init,
    /// Show the authority's public key (the trust anchor verifiers pin)
    Show,
}

#[derive(Debug, Subcommand)]
pub enum IssuerCmd {
    /// Create a bureau's key and register its certificate, signed by the authority
    Add(IssuerAddArgs),
    /// List registered bureaus
    List,
}

#[derive(Debug, Args)]
pub struct IssuerAddArgs {
    /// Short id, e.g. "health-bureau" (lowercase letters, digits, '-')
    #[arg(long)]
    id: String,
    /// Display name, e.g. "City Health Bureau"
    #[arg(long)]
    name: String,
    /// Credential kinds this bureau may issue (comma-separated: identity,health,education)
    #[arg(long, value_delimiter = ',', required = true)]
    kinds: Vec<Kind>,
    /// Certificate validity in days
    #[arg(long, default_value_t = 5 * 365)]
    valid_days: u64,
}

pub fn authority(ctx: &Ctx, cmd: AuthorityCmd) -> Result<Exit> {
    let data = ctx.data()?;
    match cmd {
        AuthorityCmd::Init => {
            if data.authority_key().exists() || data.registry_db().exists() {
                bail!(
                    "an authority already exists in {} (refusing to replace the root of trust)",
                    data.root().display()
                );
            }
            let key = keys::generate();
            keys::save_signing_key(&data.authority_key(), &key)?;
            let reg =
                SqliteLedger::create(&data.registry_db(), &key).context("creating the registry")?;
            let pk = hex::encode(keys::public_key_bytes(key.verifying_key()));
            let wm = reg.watermark()?;
            if ctx.json {
                ctx.print_json(
                    &serde_json::json!({ "authority_public_key": pk, "watermark": wm }),
                )?;
            } else {
                println!("Authority created in {}", data.root().display());
                println!("  public key  {pk}");
                println!(
                    "  registry    genesis block {}",
                    hex::encode(&wm.block_hash[..8])
                );
            }
        }
        AuthorityCmd::Show => {
            let reg = data.registry()?;
            let pk = hex::encode(keys::public_key_bytes(&reg.authority_key()?));
            if ctx.json {
                ctx.print_json(&serde_json::json!({ "authority_public_key": pk }))?;
            } else {
                println!("{pk}");
            }
        }
    }
    Ok(Exit::Ok)
}

pub fn issuer(ctx: &Ctx, cmd: IssuerCmd) -> Result<Exit> {
    let data = ctx.data()?;
    match cmd {
        IssuerCmd::Add(a) => {
            if a.id.is_empty()
                || a.id.len() > 32
                || !a
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                bail!(
                    "an issuer id is 1-32 lowercase letters, digits or '-': {:?}",
                    a.id
                );
            }
            let authority = data.load_authority()?;
            let mut reg = data.registry_writer()?;
            if !reg.issuer_certs(&a.id)?.is_empty() {
                bail!("issuer {:?} is already registered", a.id);
            }
            let key = keys::generate();
            let now = civic_reader::now();
            let body = IssuerCertBody {
                issuer_id: a.id.clone(),
                name: a.name.clone(),
                kinds: a.kinds.clone(),
                public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
                not_before: now,
                not_after: now + a.valid_days * 86_400,
            };
            let cert = IssuerCertificate::sign(&body, &authority)?;
            // Key first: a registered issuer whose key was lost could never sign.
            keys::save_signing_key(&data.issuer_key(&a.id), &key)?;
            let wm = reg
                .register_issuer(&cert)
                .context("registering the issuer")?;
            if ctx.json {
                ctx.print_json(&serde_json::json!({
                    "issuer_id": a.id, "name": a.name, "kinds": a.kinds, "watermark": wm }))?;
            } else {
                let kinds: Vec<_> = a.kinds.iter().map(|k| k.as_str()).collect();
                println!(
                    "Registered {} ({}) for {} credentials, block {}",
                    a.name,
                    a.id,
                    kinds.join(", "),
                    wm.height
                );
            }
        }
        IssuerCmd::List => {
            let reg = data.registry()?;
            let issuers = reg.issuers()?;
            if ctx.json {
                let v: Vec<_> = issuers.iter().map(|i| &i.body).collect();
                ctx.print_json(&v)?;
            } else {
                println!("{:<20} {:<28} {:<28} valid until", "id", "name", "kinds");
                for i in issuers {
                    let kinds: Vec<_> = i.body.kinds.iter().map(|k| k.as_str()).collect();
                    println!(
                        "{:<20} {:<28} {:<28} {}",
                        i.body.issuer_id,
                        i.body.name,
                        kinds.join(","),
                        civic_reader::fmt_time(i.body.not_after)
                    );
                }
            }
        }
    }
    Ok(Exit::Ok)
}
