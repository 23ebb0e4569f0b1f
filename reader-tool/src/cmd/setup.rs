//! `civic authority init|show`, `civic issuer add|list|rotate|retire`.

use anyhow::{bail, Context, Result};
use civic_registry::cert::{IssuerCertBody, IssuerCertificate};
use civic_registry::credential::Kind;
use civic_registry::ledger::SqliteLedger;
use civic_registry::{keys, IssuerRecord, Registry};
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
    /// Give a bureau a new key: a new certificate (same name and kinds); the old key stays
    /// valid for what it signed inside its window and is kept as issuers/ID.<key>.key.old
    Rotate(IssuerRotateArgs),
    /// Retire a bureau's key after a compromise: what it signed from --from on (by its claimed
    /// issue time or by its anchoring time) verifies as ISSUER KEY RETIRED; earlier credentials
    /// stay valid. Signed by the authority; it can later only be moved earlier, never undone
    Retire(IssuerRetireArgs),
}

#[derive(Debug, Args)]
pub struct IssuerRotateArgs {
    /// The bureau's id
    #[arg(long)]
    id: String,
    /// Validity of the new certificate in days
    #[arg(long, default_value_t = 5 * 365)]
    valid_days: u64,
}

#[derive(Debug, Args)]
pub struct IssuerRetireArgs {
    /// The bureau's id
    #[arg(long)]
    id: String,
    /// The key to retire, hex (the 65-byte key or a unique prefix of at least 8 digits, with or
    /// without the leading 04) [default: the bureau's newest key]
    #[arg(long)]
    key: Option<String>,
    /// The earliest time the key may have been in other hands: RFC 3339
    /// (2025-03-01T08:00:00Z), unix seconds, or "now"
    #[arg(long)]
    from: String,
    /// Why, in one sentence (shown with every verdict this retirement causes)
    #[arg(long)]
    reason: String,
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

/// A time given on the command line: RFC 3339, unix seconds, or "now".
fn parse_time(s: &str) -> Result<u64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(civic_reader::now());
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .with_context(|| format!("{s:?} is not a unix time"));
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("{s:?} is neither an RFC 3339 time (2025-03-01T08:00:00Z) nor unix seconds")
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .context("times before 1970 are not supported")?
        .as_secs())
}

/// The issuer key a `--key` argument names among `certs` (the newest when absent).
fn pick_key<'a>(certs: &'a [IssuerRecord], key: Option<&str>) -> Result<&'a IssuerRecord> {
    let Some(want) = key else {
        return certs.last().context("the issuer has no certificate");
    };
    let want = want.trim().to_ascii_lowercase();
    if want.len() < 8 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--key takes at least 8 hex digits of the key: {want:?}");
    }
    let found: Vec<_> = certs
        .iter()
        .filter(|c| {
            let h = hex::encode(&c.body.public_key);
            h.starts_with(&want) || h.get(2..).is_some_and(|rest| rest.starts_with(&want))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "issuer {:?} has no key starting with {want}",
            certs[0].body.issuer_id
        ),
        _ => bail!("--key {want} names several keys: give more digits"),
    }
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
            let key_file = data.issuer_key(&a.id);
            if key_file.exists() {
                bail!(
                    "{} exists but issuer {:?} is not registered: an earlier `civic issuer add` \
                     was interrupted before its block was written; remove that file and run \
                     the command again",
                    key_file.display(),
                    a.id
                );
            }
            keys::save_signing_key(&key_file, &key)?;
            let wm = match reg.register_issuer(&cert) {
                Ok(wm) => wm,
                Err(e) => {
                    // Not registered (the ledger rolled the block back): the key signs
                    // nothing, and leaving it would block a retry.
                    let _ = std::fs::remove_file(&key_file);
                    return Err(e).context("registering the issuer");
                }
            };
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
                let mut ids: Vec<_> = reg
                    .issuers()?
                    .into_iter()
                    .map(|i| i.body.issuer_id)
                    .collect();
                ids.dedup();
                let mut retired = Vec::new();
                for id in &ids {
                    retired.extend(reg.retired_keys(id)?);
                }
                if !retired.is_empty() {
                    println!();
                    println!("Retired keys:");
                    for r in retired {
                        println!(
                            "  {:<20} {}  from {}  ({})",
                            r.body.issuer_id,
                            short_key(&r.body.public_key),
                            civic_reader::fmt_time(r.body.from),
                            r.body.reason
                        );
                    }
                }
            }
        }
        IssuerCmd::Rotate(a) => {
            let mut reg = data.registry_writer()?;
            let certs = reg.issuer_certs(&a.id)?;
            let Some(newest) = certs.last() else {
                bail!("issuer {:?} is not registered", a.id);
            };
            let authority = data.load_authority()?;
            let current = data.issuer_key(&a.id);
            let staged = current.with_extension("key.new");
            if staged.exists() {
                bail!(
                    "{} exists: an earlier rotation was interrupted; check whether its key is \
                     registered (`civic issuer list`) and move it into place or remove it",
                    staged.display()
                );
            }
            let key = keys::generate();
            let now = civic_reader::now();
            let body = IssuerCertBody {
                issuer_id: a.id.clone(),
                name: newest.body.name.clone(),
                kinds: newest.body.kinds.clone(),
                public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
                not_before: now,
                not_after: now + a.valid_days * 86_400,
            };
            let cert = IssuerCertificate::sign(&body, &authority)?;
            // Key first (staged next to the current one), then the certificate, then the swap:
            // a crash leaves both keys on disk, never a registered key that was lost.
            keys::save_signing_key(&staged, &key)?;
            let wm = match reg.register_issuer(&cert) {
                Ok(wm) => wm,
                Err(e) => {
                    let _ = std::fs::remove_file(&staged);
                    return Err(e).context("registering the new certificate");
                }
            };
            let archived = if current.exists() {
                let old = keys::load_signing_key(&current)?;
                let label = hex::encode(&keys::public_key_bytes(old.verifying_key())[1..9]);
                let to = current.with_file_name(format!("{}.{label}.key.old", a.id));
                std::fs::rename(&current, &to)
                    .with_context(|| format!("keeping the old key as {}", to.display()))?;
                Some(to)
            } else {
                None
            };
            std::fs::rename(&staged, &current)
                .with_context(|| format!("installing the new key as {}", current.display()))?;
            let pk = hex::encode(&body.public_key);
            if ctx.json {
                ctx.print_json(&serde_json::json!({
                    "issuer_id": a.id, "public_key": pk, "not_before": body.not_before,
                    "not_after": body.not_after,
                    "previous_public_key": hex::encode(&newest.body.public_key),
                    "old_key_file": archived, "watermark": wm }))?;
            } else {
                println!(
                    "Rotated {} ({}): new key {}, certificate valid until {}, block {}",
                    newest.body.name,
                    a.id,
                    short_key(&body.public_key),
                    civic_reader::fmt_time(body.not_after),
                    wm.height
                );
                println!(
                    "  previous key {} stays valid for what it signed inside its window",
                    short_key(&newest.body.public_key)
                );
                if let Some(p) = archived {
                    println!("  old key kept in {}", p.display());
                }
            }
        }
        IssuerCmd::Retire(a) => {
            let from = parse_time(&a.from)?;
            let reason = a.reason.trim();
            if reason.is_empty() {
                bail!("--reason must say why the key is retired");
            }
            let mut reg = data.registry_writer()?;
            let certs = reg.issuer_certs(&a.id)?;
            if certs.is_empty() {
                bail!("issuer {:?} is not registered", a.id);
            }
            let target = pick_key(&certs, a.key.as_deref())?;
            let pk = target.body.public_key.clone();
            let wm = reg
                .retire_key(&a.id, &pk, from, reason)
                .context("recording the retirement")?;
            // Does this office still sign with the key it just retired?
            let office_key_retired = data.issuer_key(&a.id).exists()
                && data
                    .load_issuer(&a.id)
                    .is_ok_and(|k| keys::public_key_bytes(k.verifying_key())[..] == pk[..]);
            if ctx.json {
                ctx.print_json(&serde_json::json!({
                    "issuer_id": a.id, "public_key": hex::encode(&pk), "from": from,
                    "reason": reason, "office_key_retired": office_key_retired,
                    "watermark": wm }))?;
            } else {
                println!(
                    "Retired key {} of {} from {} (unix {from}), block {}",
                    short_key(&pk),
                    a.id,
                    civic_reader::fmt_time(from),
                    wm.height
                );
                println!(
                    "  credentials it signed that claim an issue time from then on, or were \
                     anchored from then on, now verify as ISSUER KEY RETIRED"
                );
                if office_key_retired {
                    println!(
                        "  this office signs with that key: run `civic issuer rotate --id {}` \
                         before issuing again",
                        a.id
                    );
                }
            }
        }
    }
    Ok(Exit::Ok)
}

/// A key as shown to people: the first 8 bytes after the SEC1 prefix, in hex (what `--key`
/// accepts).
fn short_key(public_key: &[u8]) -> String {
    hex::encode(public_key.get(1..9).unwrap_or(public_key))
}
