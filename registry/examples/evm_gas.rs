//! Gas benchmark of the EVM backend (issue 5), on its own local anvil (stopped by PID at exit):
//!
//! - gas per credential of one 10,000-credential batch anchored as one Merkle root, against the
//!   same contract's cost of one credential per transaction (one single-leaf anchor per
//!   credential: the EAS pattern); goal <= 1%;
//! - gas of a status change (one change per transaction, and per change in a status batch);
//! - the time a fresh reader takes to mirror and verify 10,000 events (each one replayed through
//!   the ledger's rules, every signature checked).
//!
//!     cargo run --release -p civic-registry --features evm --example evm_gas [-- --events N]
//!
//! The figures in BENCHMARKS.md come from this command's output.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use civic_registry::evm::{
    self, default_anvil_path, EthKey, EvmConfig, EvmRegistry, LocalNode, Signers, DEV_ACCOUNT_0,
    LOCAL_CHAIN_ID,
};
use civic_registry::keys;
use civic_registry::*;

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut events: u32 = 10_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => events = args.next().ok_or("--events N")?.parse()?,
            other => return Err(format!("unknown argument {other:?} (--events N)").into()),
        }
    }
    const BATCH: u32 = 10_000;
    let t = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    let node = LocalNode::start(&default_anvil_path(), &[])?;
    let admin = EthKey::from_hex(DEV_ACCOUNT_0)?;
    let authority = keys::generate();
    let mut cfg = EvmConfig::new(node.url(), LOCAL_CHAIN_ID, Default::default());
    let deployed = evm::deploy(&cfg, &admin, authority.verifying_key())?;
    cfg.contract = deployed.contract.ok_or("no contract")?;
    println!("anvil pid {} at {}", node.pid(), node.url());
    println!("deploy: {} gas", deployed.gas_used);

    let issuer_key = keys::generate();
    let account = EthKey::generate();
    node.fund(account.address())?;
    let mut signers = Signers {
        authority: Some(admin),
        ..Default::default()
    };
    signers.issuers.insert("health".into(), account);
    let mut reg = EvmRegistry::open(cfg.clone(), signers)?.with_node(node);
    reg.register_issuer(&IssuerCertificate::sign(
        &IssuerCertBody {
            issuer_id: "health".into(),
            name: "health bureau".into(),
            kinds: vec![Kind::Health],
            public_key: keys::public_key_bytes(issuer_key.verifying_key()).to_vec(),
            not_before: t - 3600,
            not_after: t + 365 * 24 * 3600,
        },
        &authority,
    )?)?;
    let gas = |reg: &EvmRegistry| reg.last_receipt().map_or(0, |r| r.gas_used);
    println!("register issuer: {} gas", gas(&reg));

    // One root for 10,000 credentials.
    let leaves: Vec<[u8; 32]> = (0..BATCH)
        .map(|i| {
            let mut l = [0u8; 32];
            l[..4].copy_from_slice(&i.to_be_bytes());
            l
        })
        .collect();
    let req = AnchorRequest {
        issuer_id: "health".into(),
        root: merkle::root(&leaves),
        size: u64::from(BATCH),
        first_status_index: 0,
        status_count: BATCH,
    };
    reg.anchor_batch(&SignedAnchor::sign(&req, &issuer_key)?)?;
    let batch_gas = gas(&reg);

    // One credential per transaction, `events` times: also the events the reader mirrors below.
    let start = Instant::now();
    let mut single_total: u64 = 0;
    let (mut single_min, mut single_max) = (u64::MAX, 0);
    for i in 0..events {
        let req = AnchorRequest {
            issuer_id: "health".into(),
            root: [(i % 251) as u8 + 1; 32],
            size: 1,
            first_status_index: BATCH + i,
            status_count: 1,
        };
        reg.anchor_batch(&SignedAnchor::sign(&req, &issuer_key)?)?;
        let g = gas(&reg);
        single_total += g;
        single_min = single_min.min(g);
        single_max = single_max.max(g);
    }
    let send_secs = start.elapsed().as_secs_f64();
    let single_avg = single_total as f64 / f64::from(events.max(1));
    let per_cred = batch_gas as f64 / f64::from(BATCH);
    println!(
        "anchor {BATCH} credentials as one root: {batch_gas} gas = {per_cred:.1} gas per credential"
    );
    println!(
        "anchor one credential per transaction ({events} tx): mean {single_avg:.0} gas \
         (min {single_min}, max {single_max}); {:.0} tx/s through the backend",
        f64::from(events) / send_secs
    );
    println!(
        "batch / single per credential: {:.3}% (goal <= 1%)",
        100.0 * per_cred / single_avg
    );

    // Status changes.
    let change = |index: u32, status: CredentialStatus| StatusChange {
        issuer_id: "health".into(),
        status_index: index,
        status,
    };
    reg.set_status(&SignedStatusChange::sign(
        &change(7, CredentialStatus::Revoked),
        &issuer_key,
    )?)?;
    let first = gas(&reg);
    reg.set_status(&SignedStatusChange::sign(
        &change(8, CredentialStatus::Suspended),
        &issuer_key,
    )?)?;
    let same_word = gas(&reg);
    println!(
        "status change, one per transaction: {first} gas (first in its 128-index word), \
         {same_word} gas (word already non-zero)"
    );
    let changes: Vec<(u32, CredentialStatus)> = (1000..2000)
        .map(|i| (i, CredentialStatus::Suspended))
        .collect();
    reg.set_status_batch(&SignedStatusBatch::sign(
        &StatusBatch {
            issuer_id: "health".into(),
            changes,
        },
        &issuer_key,
    )?)?;
    let sb = gas(&reg);
    println!(
        "status batch of 1000 changes: {sb} gas = {:.0} gas per change",
        sb as f64 / 1000.0
    );

    // A fresh reader mirrors everything from the contract's genesis block.
    let start = Instant::now();
    let reader = EvmRegistry::open(cfg, Signers::default())?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fresh mirror sync: {} events in {secs:.2} s ({:.0} events/s), every signature checked",
        reader.events_mirrored(),
        reader.events_mirrored() as f64 / secs
    );
    let start = Instant::now();
    let report = reader.verify_chain()?;
    println!(
        "verify_chain (replay + contract storage comparison): {} batches in {:.2} s",
        report.batches,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
