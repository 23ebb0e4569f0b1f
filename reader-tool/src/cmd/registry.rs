//! `civic registry sync | verify | status | deploy`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use civic_reader::cache::Cache;
use civic_registry::{Registry, SqliteLedger};
use clap::Subcommand;

use super::{Ctx, Exit};

#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// Check every block: hashes, links, authority signatures, and the events themselves
    Verify {
        /// Verify the clinic cache instead (head block signature, every table against the
        /// digest recorded at its last sync)
        #[arg(long)]
        cache: bool,
    },
    /// The registry's head and contents
    Status,
    /// Bring the clinic cache (the offline mirror for scans) up to the registry's head: fetch
    /// only the blocks after its watermark, verify each, apply them in one transaction
    Sync {
        /// The registry database to sync from [default: the data directory's registry]
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        /// Discard the clinic cache first and rebuild it from block 0 (after it failed to verify)
        #[arg(long)]
        rebuild: bool,
    },
    /// Deploy the registry contract to an EVM chain and record it in this data directory
    /// (evm.json): from then on `status` and `verify` read the registry on that chain. The
    /// authority's P-256 key (authority.key) is recorded in the contract; the transaction is
    /// sent from the Ethereum account in --signer-key-file, which becomes the administering
    /// account
    Deploy {
        /// JSON-RPC endpoint of the chain node
        #[arg(long, value_name = "URL")]
        rpc_url: String,
        /// The chain id the node must serve (a node serving another chain is refused)
        #[arg(long, value_name = "ID")]
        chain_id: u64,
        /// File holding the authority's Ethereum account key (hex); its contents are never
        /// printed
        #[arg(long, value_name = "PATH")]
        signer_key_file: PathBuf,
        /// Blocks to wait before a reader trusts a block (reorganisation safety)
        #[arg(long, default_value_t = 0)]
        confirmations: u64,
    },
}

pub fn run(ctx: &Ctx, cmd: RegistryCmd) -> Result<Exit> {
    let data = ctx.data()?;
    if let RegistryCmd::Deploy {
        rpc_url,
        chain_id,
        signer_key_file,
        confirmations,
    } = cmd
    {
        return deploy(
            ctx,
            &data,
            rpc_url,
            chain_id,
            signer_key_file,
            confirmations,
        );
    }
    if let Some(settings) = data.evm_settings()? {
        if matches!(
            cmd,
            RegistryCmd::Status | RegistryCmd::Verify { cache: false }
        ) {
            return evm_status(
                ctx,
                &data,
                &settings,
                matches!(cmd, RegistryCmd::Verify { .. }),
            );
        }
    }
    if let (
        RegistryCmd::Sync {
            from: None,
            rebuild,
        },
        Some(s),
    ) = (&cmd, data.evm_settings()?)
    {
        return sync_chain(ctx, &data, &s, *rebuild);
    }
    match cmd {
        RegistryCmd::Sync { from, rebuild } => return sync(ctx, &data, from, rebuild),
        RegistryCmd::Verify { cache: true } => return verify_cache(ctx, &data),
        _ => {}
    }
    let opened = data.ledger();
    // Opening already checks the head block; a broken head is a verification result.
    let reg = match opened {
        Ok(reg) => reg,
        Err(e) => match (&cmd, e.downcast_ref::<civic_registry::Error>()) {
            (
                RegistryCmd::Verify { .. },
                Some(civic_registry::Error::ChainBroken { height, reason }),
            ) => return broken(ctx, *height, reason),
            _ => return Err(e),
        },
    };
    match cmd {
        RegistryCmd::Verify { .. } => match reg.verify_chain() {
            Ok(r) => {
                if ctx.json {
                    ctx.print_json(&serde_json::json!({ "ok": true, "report": r }))?;
                } else {
                    println!(
                        "Ledger OK: {} blocks, {} issuers, {} batches, {} status changes",
                        r.blocks, r.issuers, r.batches, r.status_changes
                    );
                    super::print_watermark(&r.head);
                }
                Ok(Exit::Ok)
            }
            Err(civic_registry::Error::ChainBroken { height, reason }) => {
                broken(ctx, height, &reason)
            }
            Err(e) => Err(e.into()),
        },
        RegistryCmd::Status => {
            let wm = reg.watermark()?;
            let issuers = reg.issuers()?;
            if ctx.json {
                ctx.print_json(&serde_json::json!({ "watermark": wm, "issuers": issuers.len() }))?;
            } else {
                super::print_watermark(&wm);
                println!("{} issuers registered", issuers.len());
            }
            Ok(Exit::Ok)
        }
        RegistryCmd::Sync { .. } | RegistryCmd::Deploy { .. } => Ok(Exit::Ok),
    }
}

fn deploy(
    ctx: &Ctx,
    data: &civic_reader::datadir::DataDir,
    rpc_url: String,
    chain_id: u64,
    signer_key_file: PathBuf,
    confirmations: u64,
) -> Result<Exit> {
    use civic_reader::datadir::EvmSettings;
    if let Some(old) = data.evm_settings()? {
        if let Some(c) = old.contract {
            anyhow::bail!(
                "this data directory already uses the registry contract {c} on chain {} \
                 ({}); remove it first to deploy another",
                old.chain_id,
                data.evm_config().display()
            );
        }
    }
    let authority = data.load_authority()?;
    let signer_key_file = std::path::absolute(&signer_key_file)
        .with_context(|| format!("resolving {}", signer_key_file.display()))?;
    let mut settings = EvmSettings {
        backend: "evm".into(),
        rpc_url,
        chain_id,
        contract: None,
        signer_key_file,
        confirmations,
    };
    let account = settings.signer()?;
    let mut cfg = civic_registry::evm::EvmConfig::new(
        &settings.rpc_url,
        settings.chain_id,
        Default::default(),
    );
    cfg.confirmations = confirmations;
    let receipt = civic_registry::evm::deploy(&cfg, &account, authority.verifying_key())
        .with_context(|| format!("deploying the registry contract via {}", settings.rpc_url))?;
    let contract = receipt
        .contract
        .context("the deployment receipt names no contract")?;
    settings.contract = Some(contract.to_string());
    data.save_evm_settings(&settings)?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "ok": true,
            "contract": contract.to_string(),
            "chain_id": settings.chain_id,
            "block": receipt.block,
            "gas_used": receipt.gas_used,
            "authority_account": account.address().to_string(),
            "config": data.evm_config(),
        }))?;
    } else {
        println!(
            "Registry contract deployed at {contract} on chain {} (block {}, {} gas)",
            settings.chain_id, receipt.block, receipt.gas_used
        );
        println!("Administering account {}", account.address());
        println!("Recorded in {}", data.evm_config().display());
    }
    Ok(Exit::Ok)
}

fn evm_status(
    ctx: &Ctx,
    data: &civic_reader::datadir::DataDir,
    settings: &civic_reader::datadir::EvmSettings,
    verify: bool,
) -> Result<Exit> {
    let reg = data.evm_registry(settings)?;
    let contract = settings.contract.clone().unwrap_or_default();
    if verify {
        return match reg.verify_chain() {
            Ok(r) => {
                if ctx.json {
                    ctx.print_json(&serde_json::json!({
                        "ok": true, "backend": "evm", "contract": contract, "report": r,
                        "events": reg.events_mirrored(),
                    }))?;
                } else {
                    println!(
                        "EVM registry OK ({contract} on chain {}): {} events replayed with every \
                         signature, {} issuers, {} batches, {} status changes; contract storage \
                         matches",
                        settings.chain_id,
                        reg.events_mirrored(),
                        r.issuers,
                        r.batches,
                        r.status_changes
                    );
                    super::print_watermark(&r.head);
                }
                Ok(Exit::Ok)
            }
            Err(civic_registry::Error::ChainBroken { height, reason }) => {
                broken(ctx, height, &reason)
            }
            Err(e) => Err(e.into()),
        };
    }
    let wm = reg.watermark()?;
    let issuers = reg.issuers()?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "backend": "evm", "contract": contract, "chain_id": settings.chain_id,
            "watermark": wm, "issuers": issuers.len(),
        }))?;
    } else {
        println!(
            "EVM registry {contract} on chain {} via {} ({} confirmations)",
            settings.chain_id, settings.rpc_url, settings.confirmations
        );
        super::print_watermark(&wm);
        println!("{} issuers registered", issuers.len());
    }
    Ok(Exit::Ok)
}

fn sync(
    ctx: &Ctx,
    data: &civic_reader::datadir::DataDir,
    from: Option<PathBuf>,
    rebuild: bool,
) -> Result<Exit> {
    let source_path = from.unwrap_or_else(|| data.registry_db());
    let source = SqliteLedger::open(&source_path)
        .with_context(|| format!("opening the sync source {}", source_path.display()))?;
    let cache_path = data.cache_db();
    if rebuild {
        remove_cache(&cache_path)?;
    }
    sync_ledger(ctx, data, source, source_path, cache_path)
}

/// Delete the clinic cache (for `--rebuild`).
fn remove_cache(cache_path: &std::path::Path) -> Result<()> {
    {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = cache_path.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("removing {}", std::path::Path::new(&p).display())
                    })
                }
            }
        }
    }
    Ok(())
}

/// `civic registry sync` in a data directory on the chain: the clinic cache fed the effects of
/// the EVM backend's verified event replay, up to the head less the confirmations.
fn sync_chain(
    ctx: &Ctx,
    data: &civic_reader::datadir::DataDir,
    settings: &civic_reader::datadir::EvmSettings,
    rebuild: bool,
) -> Result<Exit> {
    if rebuild {
        remove_cache(&data.cache_db())?;
    }
    let (cache, report, pinned_now) = civic_reader::cache::sync_from_chain(data, settings)?;
    drop(cache);
    report_sync(ctx, data, &report, pinned_now, "events")
}

fn sync_ledger(
    ctx: &Ctx,
    data: &civic_reader::datadir::DataDir,
    source: SqliteLedger,
    source_path: PathBuf,
    cache_path: PathBuf,
) -> Result<Exit> {
    // The trust anchor: the authority key of this data directory; else the one the cache already
    // follows; else (first sync of a clinic without it) the key in the source's genesis block.
    let (authority, pinned_now) = match data.authority_public()? {
        Some(k) => (k, false),
        None if cache_path.exists() => (*data.cache()?.authority(), false),
        None => (source.authority_key()?, true),
    };
    let mut cache = Cache::open_or_create(&cache_path, &authority)
        .with_context(|| format!("opening the clinic cache {}", cache_path.display()))?;
    let report = cache
        .sync(&source, &authority)
        .with_context(|| format!("syncing the clinic cache from {}", source_path.display()))?;
    drop(cache);
    report_sync(ctx, data, &report, pinned_now, "blocks")
}

/// Re-read and re-check what a sync wrote, as a scan will, and say what was done. `unit`: what
/// was applied ("blocks" from the ledger, "events" from the chain).
fn report_sync(
    ctx: &Ctx,
    data: &civic_reader::datadir::DataDir,
    report: &civic_reader::cache::SyncReport,
    pinned_now: bool,
    unit: &str,
) -> Result<Exit> {
    let cache = data.cache()?;
    let authority = *cache.authority();
    let check = cache.verify_chain()?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "ok": true,
            "sync": report,
            "cache": check,
            "authority_pinned_from_source": pinned_now,
        }))?;
    } else {
        if pinned_now {
            println!(
                "Authority key {}… taken from the source's genesis block (no authority key in \
                 this data directory)",
                hex::encode(&civic_registry::keys::public_key_bytes(&authority)[1..13])
            );
        }
        match &report.from {
            Some(_) if report.applied == 0 => {
                println!("Clinic cache up to date at block {}", report.to.height)
            }
            Some(f) => println!(
                "Clinic cache synced: blocks {}..{} verified and applied ({} new {unit})",
                f.height + 1,
                report.to.height,
                report.applied
            ),
            None => println!(
                "Clinic cache created: blocks 0..{} verified and applied ({} {unit})",
                report.to.height, report.applied
            ),
        }
        println!(
            "Cache OK: {} issuers, {} batches, {} status changes, {} retired keys",
            check.issuers, check.batches, check.status_changes, check.retired_keys
        );
        super::print_watermark(&report.to);
    }
    Ok(Exit::Ok)
}

/// The clinic cache brought up to the registry's head (created on first use), for answers
/// that must rest on verified blocks: every block's hash, link and authority signature is
/// checked before it is applied, whereas the registry file's index rows are only as honest as
/// whoever can write that file (a revoked credential's status bits set back to valid went
/// unnoticed by a verdict read straight from them: tests/tests/tampered_stores.rs). A full
/// sync takes under a second at city scale (BENCHMARKS.md); later ones fetch only new blocks.
/// The trust anchor is the one `civic registry sync` uses.
pub fn verified_mirror(data: &civic_reader::datadir::DataDir) -> Result<Cache> {
    let source_path = data.registry_db();
    let source = SqliteLedger::open(&source_path)
        .with_context(|| format!("opening the registry {}", source_path.display()))?;
    let cache_path = data.cache_db();
    let authority = match data.authority_public()? {
        Some(k) => k,
        None if cache_path.exists() => *data.cache()?.authority(),
        None => source.authority_key()?,
    };
    let mut cache = Cache::open_or_create(&cache_path, &authority)
        .with_context(|| format!("opening the clinic cache {}", cache_path.display()))?;
    cache
        .sync(&source, &authority)
        .with_context(|| format!("verifying the registry {}", source_path.display()))?;
    Ok(cache)
}

fn verify_cache(ctx: &Ctx, data: &civic_reader::datadir::DataDir) -> Result<Exit> {
    // Against the registry's chain too when it can be read: that names the changed row and the
    // block that wrote it.
    // On the chain: against a replay of the contract's verified events (when the node answers).
    let evm = data.evm_settings()?;
    let chain = match &evm {
        Some(s) => data
            .evm_registry(s)
            .ok()
            .map(|r| civic_reader::cache::chain_name(s).map(|n| (r, n)))
            .transpose()?,
        None => None,
    };
    let registry = if evm.is_some() {
        None
    } else {
        data.ledger().ok()
    };
    let against_registry = registry.is_some() || chain.is_some();
    let checked = (|| -> Result<_> {
        let trusted = data.authority_public()?;
        let p = data.cache_db();
        let c = Cache::open_unchecked(&p, trusted.as_ref())
            .with_context(|| format!("opening the clinic cache {}", p.display()))?;
        let local = c.check();
        let audited = match &chain {
            Some((reg, name)) => Some(c.audit_chain(reg, name)),
            None => registry.as_ref().map(|reg| c.audit(reg)),
        };
        match (local, audited) {
            (Ok(()), None | Some(Ok(()))) => {}
            (_, Some(Err(e @ civic_reader::cache::CacheError::Tampered { .. }))) => {
                return Err(e.into())
            }
            (Err(e), _) | (Ok(()), Some(Err(e))) => return Err(e.into()),
        }
        let r = c.verify_chain()?;
        Ok((r, c.freshness()))
    })();
    match checked {
        Ok((r, f)) => {
            if ctx.json {
                ctx.print_json(&serde_json::json!({
                    "ok": true, "report": r, "freshness": f,
                    "checked_against_registry": against_registry,
                }))?;
            } else {
                println!(
                    "Clinic cache OK: block {}, {} issuers, {} batches, {} status changes",
                    r.head.height, r.issuers, r.batches, r.status_changes
                );
                super::print_watermark(&r.head);
                if against_registry {
                    println!(
                        "Every row matches a replay of the registry's chain up to block {}",
                        r.head.height
                    );
                }
                if let Some(f) = f {
                    println!(
                        "Synced {} ({} ago)",
                        civic_reader::fmt_time(f.synced_at),
                        civic_reader::cache::fmt_age(
                            civic_reader::now().saturating_sub(f.synced_at)
                        )
                    );
                }
            }
            Ok(Exit::Ok)
        }
        Err(e) => match e.downcast_ref::<civic_reader::cache::CacheError>() {
            Some(t @ civic_reader::cache::CacheError::Tampered { height, .. }) => {
                if ctx.json {
                    ctx.print_json(&serde_json::json!({
                        "ok": false, "height": height, "reason": t.to_string()
                    }))?;
                } else {
                    println!("Clinic cache BROKEN: {t}");
                }
                Ok(Exit::Negative)
            }
            _ => match e.downcast_ref::<civic_registry::Error>() {
                Some(civic_registry::Error::ChainBroken { height, reason }) => {
                    broken(ctx, *height, reason)
                }
                _ => Err(e),
            },
        },
    }
}

fn broken(ctx: &Ctx, height: u64, reason: &str) -> Result<Exit> {
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "ok": false, "height": height, "reason": reason }))?;
    } else {
        match reason.strip_prefix("index table ") {
            // The blocks verified; a lookup table was changed behind the ledger's back (the
            // ledger reports index faults at height 0: no block is to blame).
            Some(rest) => println!(
                "Ledger BROKEN: the signed blocks verify, but index table {rest}: it was \
                 changed outside the ledger; do not trust answers from this file until it is \
                 restored"
            ),
            None => println!("Ledger BROKEN at block {height}: {reason}"),
        }
    }
    Ok(Exit::Negative)
}
