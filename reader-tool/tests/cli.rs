//! The `civic` binary without a card: set-up, refusals with clear messages and distinct
//! exit codes, and a tampered ledger caught by `civic registry verify`.

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

use std::path::Path;
use std::process::{Command, Output};

fn civic(home: &Path, args: &[&str]) -> (i32, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_civic"))
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

fn city(home: &Path) {
    assert_eq!(civic(home, &["authority", "init"]).0, 0);
    let (code, out) = civic(
        home,
        &[
            "issuer",
            "add",
            "--id",
            "health-bureau",
            "--name",
            "City Health Bureau",
            "--kinds",
            "health",
        ],
    );
    assert_eq!(code, 0, "{out}");
}

/// What an attacker with write access to the file does first.
fn drop_append_only_triggers(db: &rusqlite::Connection) {
    let triggers: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in triggers {
        db.execute_batch(&format!("DROP TRIGGER {t}")).unwrap();
    }
}

#[test]
fn commands_before_authority_init_say_what_to_run() {
    let home = tempfile::tempdir().unwrap();
    for args in [&["registry", "verify"][..], &["issuer", "list"], &["scan"]] {
        let (code, out) = civic(home.path(), args);
        assert_eq!(code, 3, "{args:?}: {out}");
        assert!(out.contains("civic authority init"), "{args:?}: {out}");
    }
}

#[test]
fn authority_init_refuses_to_replace_the_root_of_trust() {
    let home = tempfile::tempdir().unwrap();
    city(home.path());
    let key_before = std::fs::read(home.path().join("authority.key")).unwrap();
    let (code, out) = civic(home.path(), &["authority", "init"]);
    assert_eq!(code, 3);
    assert!(out.contains("already exists"), "{out}");
    assert_eq!(
        std::fs::read(home.path().join("authority.key")).unwrap(),
        key_before
    );
}

#[test]
fn bad_issuer_input_is_refused() {
    let home = tempfile::tempdir().unwrap();
    city(home.path());
    let (code, out) = civic(
        home.path(),
        &[
            "issuer", "add", "--id", "Bad Id", "--name", "X", "--kinds", "health",
        ],
    );
    assert_eq!(code, 3, "{out}");
    let (code, _) = civic(
        home.path(),
        &[
            "issuer", "add", "--id", "x", "--name", "X", "--kinds", "tax",
        ],
    );
    assert_eq!(code, 2, "an unknown kind is a usage error");
    let (code, out) = civic(
        home.path(),
        &[
            "issuer",
            "add",
            "--id",
            "health-bureau",
            "--name",
            "Again",
            "--kinds",
            "health",
        ],
    );
    assert_eq!(code, 3);
    assert!(out.contains("already registered"), "{out}");
}

#[test]
fn revoking_an_unknown_card_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    city(home.path());
    let (code, out) = civic(
        home.path(),
        &["revoke", "--card-id", "CIV-NOPE", "--kind", "health"],
    );
    assert_eq!(code, 3);
    assert!(out.contains("no record"), "{out}");
}

#[test]
fn malformed_citizen_file_is_refused_before_any_card_is_touched() {
    let home = tempfile::tempdir().unwrap();
    city(home.path());
    let f = home.path().join("citizen.json");
    std::fs::write(&f, r#"{"identity": {"name": "A"}, "unexpected": 1}"#).unwrap();
    let (code, out) = civic(
        home.path(),
        &[
            "provision",
            "--reader",
            "none",
            "--citizen",
            f.to_str().unwrap(),
            "--pin-stdin",
        ],
    );
    assert_eq!(code, 3);
    assert!(out.contains("not a valid citizen file"), "{out}");
}

#[test]
fn tampered_ledger_row_fails_registry_verify() {
    let home = tempfile::tempdir().unwrap();
    city(home.path());
    let (code, out) = civic(
        home.path(),
        &[
            "issuer",
            "add",
            "--id",
            "school-bureau",
            "--name",
            "Schools",
            "--kinds",
            "education",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = civic(home.path(), &["registry", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Ledger OK: 3 blocks"), "{out}");

    // Someone with write access to the file edits the issuer registration (block 1),
    // after removing the append-only triggers.
    let db = rusqlite::Connection::open(home.path().join("registry.sqlite")).unwrap();
    drop_append_only_triggers(&db);
    let event: Vec<u8> = db
        .query_row("SELECT event FROM blocks WHERE height = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut altered = event.clone();
    let last = altered.len() - 1;
    altered[last] ^= 0x01;
    db.execute("UPDATE blocks SET event = ?1 WHERE height = 1", [&altered])
        .unwrap();
    drop(db);

    let (code, out) = civic(home.path(), &["registry", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at block 1"), "{out}");
    let (code, out) = civic(home.path(), &["--json", "registry", "verify"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["height"], 1);
}

#[test]
fn tampered_head_block_fails_registry_verify_and_scans_refuse_the_registry() {
    let home = tempfile::tempdir().unwrap();
    city(home.path());
    let db = rusqlite::Connection::open(home.path().join("registry.sqlite")).unwrap();
    drop_append_only_triggers(&db);
    db.execute("UPDATE blocks SET time = time + 1 WHERE height = 1", [])
        .unwrap();
    drop(db);
    let (code, out) = civic(home.path(), &["registry", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at block 1"), "{out}");
    let (code, out) = civic(home.path(), &["scan", "--reader", "none"]);
    assert_eq!(code, 3, "a scan must not trust a broken registry: {out}");
    assert!(out.contains("broken"), "{out}");
}
