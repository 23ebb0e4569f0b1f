//! `civic registry deploy` and the EVM configuration, against a real local chain (anvil on
//! 127.0.0.1 port 0, stopped by PID when the test ends).

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

use std::path::Path;
use std::process::Command;

use civic_registry::evm::{default_anvil_path, LocalNode, DEV_ACCOUNT_0};

fn civic(home: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_civic"))
        .env("CIVIC_HOME", home)
        .env_remove("CIVIC_READER")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn deploy_records_the_contract_and_status_reads_the_chain_without_showing_the_key() {
    let node = LocalNode::start(&default_anvil_path(), &[]).unwrap();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert_eq!(civic(h, &["authority", "init"]).0, 0);
    let key_file = h.join("eth.key");
    std::fs::write(&key_file, DEV_ACCOUNT_0).unwrap();
    let key_hex = DEV_ACCOUNT_0.trim_start_matches("0x");

    // A node on another chain id is refused before anything is signed.
    let (code, out) = civic(
        h,
        &[
            "registry",
            "deploy",
            "--rpc-url",
            node.url(),
            "--chain-id",
            "1",
            "--signer-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("chain id 31337"), "{out}");
    assert!(!h.join("evm.json").exists());

    let deploy = [
        "registry",
        "deploy",
        "--rpc-url",
        node.url(),
        "--chain-id",
        "31337",
        "--signer-key-file",
        key_file.to_str().unwrap(),
    ];
    let (code, out) = civic(h, &deploy);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Registry contract deployed at 0x"), "{out}");
    assert!(!out.contains(key_hex), "the key was printed: {out}");
    let config = std::fs::read_to_string(h.join("evm.json")).unwrap();
    assert!(!config.contains(key_hex), "the key is in evm.json");
    let settings: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(settings["backend"], "evm");
    assert_eq!(settings["chain_id"], 31337);
    assert!(settings["contract"].as_str().unwrap().starts_with("0x"));

    // A second deploy into the same directory is refused.
    let (code, out) = civic(h, &deploy);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("already uses the registry contract"), "{out}");

    let (code, out) = civic(h, &["registry", "status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("EVM registry 0x"), "{out}");
    assert!(out.contains("0 issuers registered"), "{out}");
    let (code, out) = civic(h, &["--json", "registry", "verify"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["events"], 1);

    // The node goes away: a clear error naming the endpoint, "could not run".
    let url = node.url().to_owned();
    drop(node);
    let (code, out) = civic(h, &["registry", "status"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("unreachable") && out.contains(&url), "{out}");
}

/// The clinic cache on the chain (issue 5 item 4): `civic registry sync` feeds it the effects of
/// the EVM backend's verified event replay up to the head less the confirmations; a revocation
/// reaches it on the next sync; a block reorganised away before it is confirmed never does; and
/// with the node stopped a scan falls back to the cache and says how old its status is.
#[test]
fn clinic_cache_syncs_from_chain_events_and_a_reorganised_block_never_reaches_it() {
    use civic_reader::cache::{open_for_scan, ScanRegistry};
    use civic_reader::datadir::DataDir;
    use civic_registry::status::CredentialStatus;
    use civic_registry::{AnchorRequest, Registry, SignedAnchor, SignedStatusChange, StatusChange};
    use serde_json::json;

    const CONFIRMATIONS: u64 = 2;
    let node = LocalNode::start(&default_anvil_path(), &[]).unwrap();
    let mine = |n: u64| {
        for _ in 0..n {
            node.call("evm_mine", json!([])).unwrap();
        }
    };
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert_eq!(civic(h, &["authority", "init"]).0, 0);
    let key_file = h.join("eth.key");
    std::fs::write(&key_file, DEV_ACCOUNT_0).unwrap();
    let (code, out) = civic(
        h,
        &[
            "registry",
            "deploy",
            "--rpc-url",
            node.url(),
            "--chain-id",
            "31337",
            "--signer-key-file",
            key_file.to_str().unwrap(),
            "--confirmations",
            &CONFIRMATIONS.to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    // No cache yet: an offline scan has nothing to scan against.
    let data = DataDir::at(h.to_path_buf()).unwrap();
    let err = open_for_scan(&data, true).unwrap_err();
    assert!(format!("{err:#}").contains("no clinic cache"), "{err:#}");

    let (code, out) = civic(
        h,
        &[
            "issuer", "add", "--id", "health", "--name", "Health", "--kinds", "health",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let account =
        civic_registry::evm::EthKey::from_file(&h.join("issuers/health.eth.key")).unwrap();
    node.fund(account.address()).unwrap();
    mine(CONFIRMATIONS);
    let issuer = data.load_issuer("health").unwrap();
    let mut office = data.registry_writer().unwrap();
    let batch = office
        .anchor_batch(
            &SignedAnchor::sign(
                &AnchorRequest {
                    issuer_id: "health".into(),
                    root: [7; 32],
                    size: 2,
                    first_status_index: 0,
                    status_count: 2,
                },
                &issuer,
            )
            .unwrap(),
        )
        .unwrap();
    let status_of = |index: u32| {
        civic_reader::cache::Cache::open(&data.cache_db(), None)
            .unwrap()
            .status("health", index)
            .unwrap()
    };

    // The anchor's block is not yet CONFIRMATIONS deep: the first sync stops before it.
    let (code, out) = civic(h, &["--json", "registry", "sync"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["sync"]["to"]["height"].as_u64().unwrap() < batch.height,
        "{out}"
    );
    assert_eq!(v["cache"]["issuers"], 1, "{out}");
    assert_eq!(v["cache"]["batches"], 0, "{out}");

    mine(CONFIRMATIONS);
    let (code, out) = civic(h, &["registry", "sync"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 new events"), "{out}");
    assert!(out.contains("1 batches"), "{out}");
    assert_eq!(status_of(0), CredentialStatus::Valid);

    // Revoke; once confirmed, the next sync sees it.
    let revoke = |index: u32, office: &mut Box<dyn Registry>| {
        office
            .set_status(
                &SignedStatusChange::sign(
                    &StatusChange {
                        issuer_id: "health".into(),
                        status_index: index,
                        status: CredentialStatus::Revoked,
                    },
                    &issuer,
                )
                .unwrap(),
            )
            .unwrap()
    };
    revoke(0, &mut office);
    mine(CONFIRMATIONS);
    let (code, out) = civic(h, &["registry", "sync"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 new events"), "{out}");
    assert_eq!(status_of(0), CredentialStatus::Revoked);

    // A revocation in a block that is reorganised away before it has CONFIRMATIONS blocks on
    // top: synced while it is on the chain, it is not in the cache; after the reorganisation
    // (and a longer chain without it) it never is.
    let snapshot = node.call("evm_snapshot", json!([])).unwrap();
    let gone = revoke(1, &mut office);
    let (code, out) = civic(h, &["--json", "registry", "sync"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["sync"]["to"]["height"].as_u64().unwrap() < gone.height,
        "{out}"
    );
    assert_eq!(status_of(1), CredentialStatus::Valid);
    assert_eq!(
        node.call("evm_revert", json!([snapshot])).unwrap(),
        json!(true)
    );
    mine(CONFIRMATIONS + 3);
    let (code, out) = civic(h, &["--json", "registry", "sync"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["sync"]["to"]["height"].as_u64().unwrap() >= gone.height,
        "{out}"
    );
    assert_eq!(status_of(1), CredentialStatus::Valid);
    assert_eq!(status_of(0), CredentialStatus::Revoked);

    // A reorganisation deeper than the confirmations, below the block the cache stands at: the
    // sync is refused and writes nothing; a scan uses the cache as it is and says why;
    // `--rebuild` starts over from the chain as it now is.
    let snapshot = node.call("evm_snapshot", json!([])).unwrap();
    mine(CONFIRMATIONS + 2);
    assert_eq!(civic(h, &["registry", "sync"]).0, 0);
    let before = std::fs::read(data.cache_db()).unwrap();
    assert_eq!(
        node.call("evm_revert", json!([snapshot])).unwrap(),
        json!(true)
    );
    mine(CONFIRMATIONS + 4);
    let (code, out) = civic(h, &["registry", "sync"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("reorganised away"), "{out}");
    assert_eq!(std::fs::read(data.cache_db()).unwrap(), before);
    let (registry, note) = open_for_scan(&data, false).unwrap();
    assert!(matches!(registry, ScanRegistry::Cache(_)), "{registry:?}");
    assert!(note.unwrap().contains("reorganised away"));
    drop(registry);
    let (code, out) = civic(h, &["--json", "registry", "sync", "--rebuild"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let synced_to = v["sync"]["to"]["height"].as_u64().unwrap();
    assert_eq!(status_of(0), CredentialStatus::Revoked);
    // Audited row by row against a replay of the contract's events.
    let (code, out) = civic(h, &["registry", "verify", "--cache"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "Every row matches a replay of the registry's chain up to block {synced_to}"
        )),
        "{out}"
    );
    drop(office);

    // The node stops: sync fails ("could not run"), a scan falls back to the cache and says so.
    let pid = node.pid();
    drop(node);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "anvil {pid} still running"
    );
    let (code, out) = civic(h, &["registry", "sync"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("registry node unreachable"), "{out}");
    let (registry, note) = open_for_scan(&data, false).unwrap();
    assert!(matches!(registry, ScanRegistry::Cache(_)), "{registry:?}");
    let note = note.unwrap();
    assert!(
        note.contains(&format!(
            "registry node unreachable: status as of block {synced_to}, "
        )) && note.contains("ago (clinic cache)"),
        "{note}"
    );
    assert_eq!(
        registry.status("health", 0).unwrap(),
        CredentialStatus::Revoked
    );
    assert_eq!(registry.watermark().unwrap().height, synced_to);
    // --cache-only: the cache, no note.
    let (registry, note) = open_for_scan(&data, true).unwrap();
    assert!(matches!(registry, ScanRegistry::Cache(_)) && note.is_none());
}
