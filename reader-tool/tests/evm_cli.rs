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
