//! Tampered stores, through the real `civic-card` and `civic` processes: what a clinic clerk
//! and an office see when a byte changed in the card's state file, a ledger row or a clinic
//! cache row. Each is detected, named in a clear error, and crashes nothing; undoing it (or
//! rebuilding from the signed chain) brings everything back.
//!
//! The library-level tests sit beside the code: `registry/tests/tamper.rs` (every kind of
//! ledger change), `reader-tool/tests/cache.rs` (cache rows), `card-applet` (state decoding).

use std::path::Path;

use anyhow::{ensure, Context as _, Result};
use civic_e2e::office::{Office, PIN};
use civic_e2e::{pcscd, serial, VirtualCard};
use sha2::{Digest, Sha256};

/// The card's state file ends in `CF 20 <SHA-256 of everything before>` (card-applet
/// state.rs): recompute it, as someone who knows the format would.
fn reseal(state: &mut Vec<u8>) {
    let body = state.len() - 34;
    let sum = Sha256::digest(&state[..body]);
    state.truncate(body);
    state.extend_from_slice(&[0xCF, 0x20]);
    state.extend_from_slice(&sum);
}

fn verdict_of(scan: &serde_json::Value, kind: &str) -> String {
    scan["credentials"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["kind"] == kind))
        .and_then(|c| c["verdict"].as_str())
        .unwrap_or("not read")
        .to_owned()
}

#[test]
fn card_state_file_with_a_changed_byte_is_a_damaged_card_not_a_crash() -> Result<()> {
    let _lock = serial();
    pcscd();
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("alice.card");
    let office = Office::new()?;
    office.set_up_city()?;
    let mut card = VirtualCard::start(0, &state)?;
    let reader = card.reader();
    office.provision(&reader)?;
    card.stop()?;

    let good = std::fs::read(&state)?;
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&state, &bad)?;

    // The card still comes up (a chip whose memory check fails still answers the reader)...
    let mut card = VirtualCard::start(0, &state)?;
    ensure!(
        card.log().contains("corrupt card state: invalid checksum")
            && card.log().contains("the card is damaged"),
        "card log:\n{}",
        card.log()
    );
    // ...and says 6581 to everything: the clerk is told the card is damaged.
    let scan = office.civic(&["scan", "--reader", &reader], None)?;
    eprintln!(
        "scan of a card with a changed state byte: exit {}\n{}",
        scan.code, scan.out
    );
    ensure!(scan.code == 3, "exit {}:\n{}", scan.code, scan.out);
    ensure!(
        scan.out.contains("6581")
            && scan.out.contains("memory failure")
            && scan.out.contains("replace the card"),
        "unclear:\n{}",
        scan.out
    );
    let view = office.civic(&["view", "--reader", &reader, "--pin-stdin"], Some(PIN))?;
    ensure!(view.code == 3 && view.out.contains("6581"), "{}", view.out);
    ensure!(card.is_running(), "civic-card died:\n{}", card.log());
    // The damaged card never writes its file: it stays as found, for the office to examine.
    ensure!(
        std::fs::read(&state)? == bad,
        "the damaged card rewrote its state"
    );

    // Undo the change: the card is whole again (nothing else was touched).
    card.stop()?;
    std::fs::write(&state, &good)?;
    let _card = VirtualCard::start(0, &state)?;
    let scan = office.scan_json(&reader, 0)?;
    ensure!(scan["valid"] == true, "{scan}");
    Ok(())
}

#[test]
fn card_credential_changed_with_a_recomputed_checksum_fails_its_issuer_signature() -> Result<()> {
    let _lock = serial();
    pcscd();
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("alice.card");
    let office = Office::new()?;
    office.set_up_city()?;
    let mut card = VirtualCard::start(1, &state)?;
    let reader = card.reader();
    office.provision(&reader)?;
    card.stop()?;

    // Someone with the file (and the format) renames the citizen and reseals the checksum:
    // the card loads it, but the identity bureau's signature no longer matches.
    let mut bytes = std::fs::read(&state)?;
    let name = b"Alice Example";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .context("the name is not in the state file")?;
    bytes[at..at + name.len()].copy_from_slice(b"Mallory Examp");
    reseal(&mut bytes);
    std::fs::write(&state, &bytes)?;
    let _card = VirtualCard::start(1, &state)?;

    let scan = office.scan_json(&reader, 1)?;
    let identity = verdict_of(&scan, "identity");
    eprintln!("identity verdict after the change: {identity}");
    ensure!(identity == "forged", "{scan}");
    ensure!(verdict_of(&scan, "emergency") == "valid", "{scan}");
    let human = office.civic(&["scan", "--reader", &reader], None)?;
    eprintln!("{}", human.out);
    ensure!(
        human.code == 1
            && human.out.contains("identity   FORGED")
            && human.out.contains("NOT VALID"),
        "{}",
        human.out
    );
    Ok(())
}

#[test]
fn ledger_and_cache_rows_changed_behind_civic_are_named_and_scans_stay_right() -> Result<()> {
    let _lock = serial();
    pcscd();
    let office = Office::new()?;
    office.set_up_city()?;
    let card = VirtualCard::blank(2)?;
    let reader = card.reader();
    office.provision(&reader)?;
    office.expect(
        0,
        &[
            "revoke",
            "--card-id",
            "CIV-2026-0000-0001",
            "--kind",
            "health",
        ],
        None,
    )?;
    office.expect(0, &["registry", "sync"], None)?;
    let registry = office.home().join("registry.sqlite");
    let cache = office.home().join("cache.sqlite");

    // 1. An insider flips the health bureau's status bits back to "valid" in the ledger's
    //    index table, behind the ledger's back.
    exec(
        &registry,
        "UPDATE status_lists SET bits = zeroblob(length(bits)) WHERE issuer_id = 'health-bureau'",
    )?;
    let v = office.civic(&["registry", "verify"], None)?;
    eprintln!("registry verify after a status row changed:\n{}", v.out);
    ensure!(
        v.code == 1 && v.out.contains("status_lists"),
        "exit {}:\n{}",
        v.code,
        v.out
    );
    // The clinic's cache is built from the signed blocks, not the index rows: still REVOKED.
    let scan = office.scan_json(&reader, 1)?;
    ensure!(verdict_of(&scan, "emergency") == "revoked", "{scan}");

    // 2. A byte of a signed block changes (the revocation's event).
    let fresh = Office::new()?;
    let height: i64 = query_i64(&registry, "SELECT MAX(height) FROM blocks")?;
    {
        // Past the append-only triggers, as someone editing the file would.
        let c = rusqlite::Connection::open(&registry)?;
        c.execute_batch("DROP TRIGGER blocks_no_update")?;
        let mut event: Vec<u8> = c.query_row(
            "SELECT event FROM blocks WHERE height = ?1",
            [height],
            |r| r.get(0),
        )?;
        let mid = event.len() / 2;
        event[mid] ^= 0x01;
        c.execute(
            "UPDATE blocks SET event = ?1 WHERE height = ?2",
            rusqlite::params![event, height],
        )?;
    }
    let v = office.civic(&["registry", "verify"], None)?;
    eprintln!("registry verify after a block byte changed:\n{}", v.out);
    ensure!(
        v.code == 1 && v.out.contains(&format!("block {height}")),
        "exit {}:\n{}",
        v.code,
        v.out
    );
    // A new clinic cannot build a cache from it: the block fails its hash and signature.
    std::fs::copy(&registry, fresh.home().join("registry.sqlite"))?;
    let sync = fresh.civic(&["registry", "sync"], None)?;
    eprintln!("sync from the changed ledger:\n{}", sync.out);
    ensure!(sync.code != 0, "a changed block was synced:\n{}", sync.out);
    // The clinic that already mirrors that block keeps scanning from its verified cache and
    // says why it did not use the registry.
    let scan = office.civic(&["scan", "--reader", &reader], None)?;
    eprintln!("scan with a changed ledger:\n{}", scan.out);
    ensure!(
        scan.code == 1 && scan.out.contains("REVOKED"),
        "exit {}:\n{}",
        scan.code,
        scan.out
    );

    // 3. A row of the clinic cache changes: the scan refuses the cache, naming the table.
    exec(
        &cache,
        "UPDATE status_lists SET bits = zeroblob(length(bits)) WHERE issuer_id = 'health-bureau'",
    )?;
    let scan = office.civic(&["scan", "--reader", &reader], None)?;
    eprintln!("scan with a changed cache row:\n{}", scan.out);
    ensure!(
        scan.code == 3 && scan.out.contains("does not verify") && scan.out.contains("status_lists"),
        "exit {}:\n{}",
        scan.code,
        scan.out
    );
    let v = office.civic(&["registry", "verify", "--cache"], None)?;
    ensure!(
        v.code == 1 && v.out.contains("status_lists"),
        "exit {}:\n{}",
        v.code,
        v.out
    );
    ensure!(
        card_still_answers(&office, &reader)?,
        "the card was affected"
    );
    Ok(())
}

fn exec(db: &Path, sql: &str) -> Result<()> {
    let c = rusqlite::Connection::open(db)?;
    c.execute_batch(sql)?;
    Ok(())
}

fn query_i64(db: &Path, sql: &str) -> Result<i64> {
    let c = rusqlite::Connection::open(db)?;
    Ok(c.query_row(sql, [], |r| r.get(0))?)
}

fn card_still_answers(office: &Office, reader: &str) -> Result<bool> {
    let out = office.expect(0, &["--json", "card-info", "--reader", reader], None)?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["card"]["pin_tries_left"] == 3)
}

/// Regression: with no clinic cache yet, a scan read verdicts straight from the registry
/// file's index rows, so a revoked credential whose status bits were set back to zero in the
/// file scanned VALID; so did an agency's `civic verify`. Both now answer from a mirror built
/// from the verified blocks.
#[test]
fn status_bits_reset_in_the_registry_file_do_not_revive_a_revoked_credential() -> Result<()> {
    let _lock = serial();
    pcscd();
    let office = Office::new()?;
    office.set_up_city()?;
    let card = VirtualCard::blank(3)?;
    let reader = card.reader();
    office.provision(&reader)?;
    let export = office.home().join("emergency.json");
    let export_arg = export.display().to_string();
    office.expect(
        0,
        &[
            "view",
            "--reader",
            &reader,
            "--export",
            "emergency",
            "--out",
            &export_arg,
            "--pin-stdin",
        ],
        Some(PIN),
    )?;
    office.expect(
        0,
        &[
            "revoke",
            "--card-id",
            "CIV-2026-0000-0001",
            "--kind",
            "health",
        ],
        None,
    )?;
    let registry = office.home().join("registry.sqlite");
    exec(
        &registry,
        "UPDATE status_lists SET bits = zeroblob(length(bits)) WHERE issuer_id = 'health-bureau'",
    )?;
    ensure!(
        !office.home().join("cache.sqlite").exists(),
        "this test needs a clinic without a cache"
    );
    let scan = office.scan_json(&reader, 1)?;
    ensure!(verdict_of(&scan, "emergency") == "revoked", "{scan}");

    // An agency holding only a copy of the registry file.
    let agency = Office::new()?;
    std::fs::copy(&registry, agency.home().join("registry.sqlite"))?;
    let r = agency.civic(&["verify", &export_arg], None)?;
    eprintln!("agency verify with reset status bits:\n{}", r.out);
    ensure!(
        r.code == 1 && r.out.contains("REVOKED"),
        "exit {}:\n{}",
        r.code,
        r.out
    );
    Ok(())
}
