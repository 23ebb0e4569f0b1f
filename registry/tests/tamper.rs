//! Tampering with the SQLite file behind the ledger's back must be caught: by `verify_chain`
//! anywhere in the chain or the index tables, and by a plain `open` when the head is forged.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use civic_registry::keys::{self, SigningKey};
use civic_registry::*;
use rusqlite::{params, Connection};

const YEAR: u64 = 365 * 24 * 3600;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    authority: SigningKey,
    issuer: SigningKey,
}

/// A ledger with: genesis (0), issuer (1), anchor (2), status change (3), status change (4).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let authority = keys::generate();
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let issuer = keys::generate();
    let mut reg = SqliteLedger::create(&path, &authority).unwrap();
    let cert = IssuerCertificate::sign(
        &IssuerCertBody {
            issuer_id: "health".into(),
            name: "Health Bureau".into(),
            kinds: vec![Kind::Health],
            public_key: keys::public_key_bytes(issuer.verifying_key()).to_vec(),
            not_before: t - YEAR,
            not_after: t + YEAR,
        },
        &authority,
    )
    .unwrap();
    reg.register_issuer(&cert).unwrap();
    let leaves = [[1u8; 32], [2u8; 32], [3u8; 32]];
    let req = AnchorRequest {
        issuer_id: "health".into(),
        root: merkle::root(&leaves),
        size: 3,
        first_status_index: 0,
        status_count: 3,
    };
    reg.anchor_batch(&SignedAnchor::sign(&req, &issuer).unwrap())
        .unwrap();
    for (i, s) in [
        (1, CredentialStatus::Revoked),
        (2, CredentialStatus::Suspended),
    ] {
        let change = StatusChange {
            issuer_id: "health".into(),
            status_index: i,
            status: s,
        };
        reg.set_status(&SignedStatusChange::sign(&change, &issuer).unwrap())
            .unwrap();
    }
    let report = reg.verify_chain().unwrap();
    assert_eq!(report.blocks, 5);
    assert_eq!(report.status_changes, 2);
    drop(reg);
    Fixture {
        _dir: dir,
        path,
        authority,
        issuer,
    }
}

/// The fixture plus block 5: the authority retires the issuer's key from an hour ago.
fn retired_fixture() -> Fixture {
    let f = fixture();
    let mut reg = SqliteLedger::open_writer(&f.path, f.authority.clone()).unwrap();
    let from = reg.watermark().unwrap().time - 3600;
    let wm = reg
        .retire_key(
            "health",
            &keys::public_key_bytes(f.issuer.verifying_key()),
            from,
            "key found on a public file share",
        )
        .unwrap();
    assert_eq!(wm.height, 5);
    assert_eq!(reg.verify_chain().unwrap().retired_keys, 1);
    f
}

/// Open the file with plain rusqlite, switch off foreign keys (the bundled SQLite has them on by
/// default) and drop the append-only triggers.
fn raw(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA foreign_keys = OFF; DROP TRIGGER blocks_no_update; DROP TRIGGER blocks_no_delete;",
    )
    .unwrap();
    c
}

fn flip_byte(c: &Connection, column: &str, height: i64, at: usize) {
    let mut v: Vec<u8> = c
        .query_row(
            &format!("SELECT {column} FROM blocks WHERE height = ?1"),
            [height],
            |r| r.get(0),
        )
        .unwrap();
    let i = at.min(v.len() - 1);
    v[i] ^= 0x01;
    c.execute(
        &format!("UPDATE blocks SET {column} = ?1 WHERE height = ?2"),
        params![v, height],
    )
    .unwrap();
}

#[track_caller]
fn broken_at(path: &Path, want_height: Option<u64>) -> String {
    let reg = SqliteLedger::open(path).expect("head is intact, open must work");
    match reg.verify_chain() {
        Err(Error::ChainBroken { height, reason }) => {
            if let Some(h) = want_height {
                assert_eq!(height, h, "{reason}");
            }
            reason
        }
        other => panic!("tampering not detected: {other:?}"),
    }
}

#[test]
fn untouched_chain_verifies() {
    let f = fixture();
    let reg = SqliteLedger::open(&f.path).unwrap();
    assert_eq!(reg.verify_chain().unwrap().blocks, 5);
    assert_eq!(reg.status("health", 1).unwrap(), CredentialStatus::Revoked);
    // Read-only: no writes without the authority key.
    let mut reg = reg;
    let other = keys::generate();
    let cert = IssuerCertificate::sign(
        &IssuerCertBody {
            issuer_id: "x".into(),
            name: "x".into(),
            kinds: vec![Kind::Health],
            public_key: keys::public_key_bytes(other.verifying_key()).to_vec(),
            not_before: 0,
            not_after: u64::MAX,
        },
        &f.authority,
    )
    .unwrap();
    assert!(matches!(reg.register_issuer(&cert), Err(Error::ReadOnly)));
    // The writer with the right key can append, and the chain still verifies.
    let mut w = SqliteLedger::open_writer(&f.path, f.authority.clone()).unwrap();
    w.register_issuer(&cert).unwrap();
    assert_eq!(w.verify_chain().unwrap().blocks, 6);
}

#[test]
fn altered_event_byte() {
    let f = fixture();
    flip_byte(&raw(&f.path), "event", 2, 40);
    broken_at(&f.path, Some(2));
}

#[test]
fn altered_signature() {
    let f = fixture();
    flip_byte(&raw(&f.path), "signature", 1, 10);
    broken_at(&f.path, Some(1));
}

#[test]
fn altered_time() {
    let f = fixture();
    raw(&f.path)
        .execute("UPDATE blocks SET time = time + 1 WHERE height = 3", [])
        .unwrap();
    broken_at(&f.path, Some(3));
}

#[test]
fn deleted_last_block() {
    let f = fixture();
    raw(&f.path)
        .execute("DELETE FROM blocks WHERE height = 4", [])
        .unwrap();
    // The new head is a genuine block, so open works; the index tables still hold block 4.
    let reason = broken_at(&f.path, None);
    assert!(
        reason.contains("status_lists") || reason.contains("requests"),
        "{reason}"
    );
}

#[test]
fn deleted_middle_block() {
    let f = fixture();
    raw(&f.path)
        .execute("DELETE FROM blocks WHERE height = 2", [])
        .unwrap();
    broken_at(&f.path, Some(3));
}

#[test]
fn changed_status_bit_in_index() {
    let f = fixture();
    let c = Connection::open(&f.path).unwrap();
    // Un-revoke index 1 (revoked = 10 at bits 5..4 of byte 0); index 2 stays suspended.
    c.execute(
        "UPDATE status_lists SET bits = ?1 WHERE issuer_id = 'health'",
        [vec![0b0000_0100u8]],
    )
    .unwrap();
    let reg = SqliteLedger::open(&f.path).unwrap();
    assert_eq!(reg.status("health", 1).unwrap(), CredentialStatus::Valid);
    let reason = broken_at(&f.path, Some(0));
    assert!(reason.contains("status_lists"), "{reason}");
}

#[test]
fn changed_batch_root_in_index() {
    let f = fixture();
    Connection::open(&f.path)
        .unwrap()
        .execute(
            "UPDATE batches SET root = zeroblob(32) WHERE batch_id = 1",
            [],
        )
        .unwrap();
    let reason = broken_at(&f.path, Some(0));
    assert!(reason.contains("batches"), "{reason}");
}

#[test]
fn injected_issuer_row_is_refused() {
    let f = fixture();
    let rogue = keys::generate();
    let cert = IssuerCertificate::sign(
        &IssuerCertBody {
            issuer_id: "rogue".into(),
            name: "rogue".into(),
            kinds: vec![Kind::Identity],
            public_key: keys::public_key_bytes(rogue.verifying_key()).to_vec(),
            not_before: 0,
            not_after: u64::MAX,
        },
        &rogue,
    )
    .unwrap();
    Connection::open(&f.path)
        .unwrap()
        .execute(
            "INSERT INTO issuers (issuer_id, seq, cert, height) VALUES ('rogue', 0, ?1, 1)",
            [cert.to_bytes()],
        )
        .unwrap();
    let reg = SqliteLedger::open(&f.path).unwrap();
    // The getter does not believe a certificate the authority did not sign.
    assert!(matches!(
        reg.issuer_certs("rogue"),
        Err(Error::ChainBroken { .. })
    ));
    broken_at(&f.path, Some(0));
}

#[test]
fn forged_head_fails_open() {
    let f = fixture();
    flip_byte(&raw(&f.path), "event", 4, 30);
    assert!(matches!(
        SqliteLedger::open(&f.path),
        Err(Error::ChainBroken { height: 4, .. })
    ));
    assert!(SqliteLedger::open_writer(&f.path, f.authority.clone()).is_err());
}

#[test]
fn appended_block_signed_by_another_key_fails_open() {
    let f = fixture();
    let c = raw(&f.path);
    let (hash, time): (Vec<u8>, i64) = c
        .query_row("SELECT hash, time FROM blocks WHERE height = 4", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    // A well-formed block 5 with a correct hash but a signature by a stranger.
    let stranger = keys::generate();
    let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&stranger, &hash[..]);
    c.execute(
        "INSERT INTO blocks (height, prev_hash, time, event, hash, signature) \
         VALUES (5, ?1, ?2, x'00', ?3, ?4)",
        params![hash, time, vec![0u8; 32], sig.to_bytes().to_vec()],
    )
    .unwrap();
    assert!(matches!(
        SqliteLedger::open(&f.path),
        Err(Error::ChainBroken { height: 5, .. })
    ));
}

#[test]
fn newer_schema_is_refused() {
    let f = fixture();
    Connection::open(&f.path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        SqliteLedger::open(&f.path),
        Err(Error::Conflict(_))
    ));
}

#[test]
fn ledger_with_a_retirement_verifies_read_only() {
    let f = retired_fixture();
    let reg = SqliteLedger::open(&f.path).unwrap();
    let report = reg.verify_chain().unwrap();
    assert_eq!(report.blocks, 6);
    assert_eq!(report.retired_keys, 1);
    let r = reg.retired_keys("health").unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].body.reason, "key found on a public file share");
    assert_eq!(r[0].recorded_at.height, 5);
    // A reader cannot retire anything.
    let mut reg = reg;
    let pk = keys::public_key_bytes(f.issuer.verifying_key());
    assert!(matches!(
        reg.retire_key("health", &pk, 0, "x"),
        Err(Error::ReadOnly)
    ));
    // The retired key can no longer sign for the registry.
    let mut w = SqliteLedger::open_writer(&f.path, f.authority.clone()).unwrap();
    let change = StatusChange {
        issuer_id: "health".into(),
        status_index: 0,
        status: CredentialStatus::Revoked,
    };
    assert!(matches!(
        w.set_status(&SignedStatusChange::sign(&change, &f.issuer).unwrap()),
        Err(Error::NotAuthorised(_))
    ));
}

#[test]
fn altered_retirement_block() {
    let f = retired_fixture();
    let c = raw(&f.path);
    // One byte of the retirement's `from` (or anywhere in its event): the block hash breaks.
    flip_byte(&c, "event", 5, 60);
    // Block 5 is the head: a plain open already refuses it.
    assert!(matches!(
        SqliteLedger::open(&f.path),
        Err(Error::ChainBroken { height: 5, .. })
    ));
}

#[test]
fn altered_retirement_block_in_the_middle() {
    let f = retired_fixture();
    // Append one more block so that the retirement is no longer the head.
    let mut w = SqliteLedger::open_writer(&f.path, f.authority.clone()).unwrap();
    let other = keys::generate();
    let t = w.watermark().unwrap().time;
    let cert = IssuerCertificate::sign(
        &IssuerCertBody {
            issuer_id: "edu".into(),
            name: "Education Bureau".into(),
            kinds: vec![Kind::Education],
            public_key: keys::public_key_bytes(other.verifying_key()).to_vec(),
            not_before: t - YEAR,
            not_after: t + YEAR,
        },
        &f.authority,
    )
    .unwrap();
    w.register_issuer(&cert).unwrap();
    drop(w);
    flip_byte(&raw(&f.path), "event", 5, 60);
    broken_at(&f.path, Some(5));
}

#[test]
fn deleted_retirement_row_in_index() {
    let f = retired_fixture();
    Connection::open(&f.path)
        .unwrap()
        .execute("DELETE FROM retired_keys", [])
        .unwrap();
    // The getter now (wrongly) says nothing is retired; verify_chain says why not to trust it.
    let reg = SqliteLedger::open(&f.path).unwrap();
    assert!(reg.retired_keys("health").unwrap().is_empty());
    let reason = broken_at(&f.path, Some(0));
    assert!(reason.contains("retired_keys"), "{reason}");
}

#[test]
fn forged_retirement_row_in_index() {
    let f = retired_fixture();
    // Replace the statement by one that moves `from` far into the future, signed by a stranger.
    let stranger = keys::generate();
    let forged = KeyRetirement::sign(
        &KeyRetirementBody {
            issuer_id: "health".into(),
            public_key: keys::public_key_bytes(f.issuer.verifying_key()).to_vec(),
            from: u64::MAX / 2,
            reason: "never mind".into(),
        },
        &stranger,
    )
    .unwrap();
    Connection::open(&f.path)
        .unwrap()
        .execute(
            "UPDATE retired_keys SET statement = ?1",
            [forged.to_bytes()],
        )
        .unwrap();
    let reg = SqliteLedger::open(&f.path).unwrap();
    // The getter does not believe a statement the authority did not sign.
    assert!(matches!(
        reg.retired_keys("health"),
        Err(Error::ChainBroken { .. })
    ));
    broken_at(&f.path, Some(0));
}

/// A ledger written before key retirement existed (schema version 1) opens, is upgraded in
/// place and verifies; its blocks are untouched.
#[test]
fn schema_v1_ledger_upgrades() {
    let f = fixture();
    let before: Vec<u8> = Connection::open(&f.path)
        .unwrap()
        .query_row("SELECT hash FROM blocks WHERE height = 4", [], |r| r.get(0))
        .unwrap();
    {
        let c = Connection::open(&f.path).unwrap();
        c.execute_batch("DROP TABLE retired_keys; PRAGMA user_version = 1;")
            .unwrap();
    }
    let reg = SqliteLedger::open(&f.path).unwrap();
    let report = reg.verify_chain().unwrap();
    assert_eq!(report.blocks, 5);
    assert_eq!(report.retired_keys, 0);
    assert_eq!(report.head.block_hash.to_vec(), before);
    let v: i64 = Connection::open(&f.path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    // Upgraded to the current schema (3: status batches).
    assert_eq!(v, 3);
    drop(reg);
    let mut w = SqliteLedger::open_writer(&f.path, f.authority.clone()).unwrap();
    w.retire_key(
        "health",
        &keys::public_key_bytes(f.issuer.verifying_key()),
        0,
        "retired on upgrade",
    )
    .unwrap();
    assert_eq!(w.verify_chain().unwrap().retired_keys, 1);
}
