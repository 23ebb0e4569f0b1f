//! `civic registry verify | status`.

use anyhow::Result;
use civic_registry::Registry;
use clap::Subcommand;

use super::{Ctx, Exit};

#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// Check every block: hashes, links, authority signatures, and the events themselves
    Verify,
    /// The registry's head and contents
    Status,
}

pub fn run(ctx: &Ctx, cmd: RegistryCmd) -> Result<Exit> {
    let data = ctx.data()?;
    let opened = data.registry();
    // Opening already checks the head block; a broken head is a verification result.
    let reg = match opened {
        Ok(reg) => reg,
        Err(e) => match (&cmd, e.downcast_ref::<civic_registry::Error>()) {
            (RegistryCmd::Verify, Some(civic_registry::Error::ChainBroken { height, reason })) => {
                return broken(ctx, *height, reason)
            }
            _ => return Err(e),
        },
    };
    match cmd {
        RegistryCmd::Verify => match reg.verify_chain() {
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
    }
}

fn broken(ctx: &Ctx, height: u64, reason: &str) -> Result<Exit> {
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "ok": false, "height": height, "reason": reason }))?;
    } else {
        println!("Ledger BROKEN at block {height}: {reason}");
    }
    Ok(Exit::Negative)
}
