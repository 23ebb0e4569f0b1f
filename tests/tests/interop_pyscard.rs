//! Interop: tools nobody here wrote (pyscard, opensc-tool, scriptor) read a blank civic-card
//! through the real pcscd + vpcd; an independent Python PACE-CAM terminal
//! (`interop/pace_client.py`, written from notes/SECURE-MESSAGING.md alone) opens the secure
//! channel of an issued one.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use civic_e2e::office::{Office, PIN};
use civic_e2e::{bin_dir, pcscd, run_with_timeout, serial, VirtualCard};

/// SELECT by AID with Le=00 (case 4: the card returns the FCI; without Le it may not).
const SELECT: &str = "00A4040007F043495649430100";
const SELECT_LE: &str = "00 A4 04 00 07 F0 43 49 56 49 43 01 00";
const GET_CARD_INFO: &str = "00CA010100";
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/read_card_info.py")
}

fn pace_client() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/pace_client.py")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn pyscard_reads_fci_and_card_info_of_a_blank_card() -> Result<()> {
    let _lock = serial();
    pcscd();
    // Reader 2: the second config entry (its own copy of the driver).
    let card = VirtualCard::blank(2)?;

    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script()).arg(card.reader());
    let out = run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success(),
        "read_card_info.py failed ({}):\n{stdout}\n{}\ncard log:\n{}",
        out.status,
        text(&out.stderr),
        card.log()
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).context("parse the script's JSON")?;

    assert_eq!(v["select_sw"], "9000", "{stdout}");
    let fci = v["fci"].as_str().context("fci")?;
    assert!(fci.starts_with("6f"), "FCI must be a 6F template: {fci}");
    assert_eq!(v["fci_has_aid"], true, "{stdout}");
    assert_eq!(
        v["fci_proprietary"]["life_cycle"], 3,
        "FCI A5 life cycle: {stdout}"
    );

    // Short APDU, Le=00: either the whole object (9000) or 61xx to be fetched.
    let first = v["card_info_first_sw"].as_str().context("first sw")?;
    assert!(
        first == "9000" || first.starts_with("61"),
        "GET DATA card info answered {first}"
    );
    assert_eq!(v["card_info_sw"], "9000", "{stdout}");
    assert_eq!(
        v["life_cycle"], 3,
        "blank card is in personalisation: {stdout}"
    );
    assert_eq!(v["life_cycle_name"], "personalisation");
    assert_eq!(v["total_storage"], 65536, "{stdout}");
    assert_eq!(
        v["total_storage_len"], 4,
        "total storage is 4 BE bytes: {stdout}"
    );
    if let Some(free) = v["free_storage"].as_u64() {
        assert!(free <= 65536, "free storage {free} > total");
    }
    if let Some(has_key) = v["has_card_key"].as_bool() {
        assert!(!has_key, "a blank card has no key");
    }
    Ok(())
}

/// opensc-tool's reader number for `reader` (its `-l` list, which follows pcscd's order).
fn opensc_index(reader: &str) -> Result<String> {
    let mut cmd = Command::new("opensc-tool");
    cmd.arg("-l");
    let out = run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
    let list = text(&out.stdout);
    list.lines()
        .find(|l| l.trim_end().ends_with(reader) && l.split_whitespace().next().is_some())
        .and_then(|l| l.split_whitespace().next())
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .with_context(|| format!("reader \"{reader}\" not in opensc-tool -l:\n{list}"))
}

#[test]
fn opensc_tool_selects_and_reads_card_info() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(0)?;
    let index = opensc_index(&card.reader())?;

    let mut cmd = Command::new("opensc-tool");
    cmd.args(["-r", &index, "-s", SELECT, "-s", GET_CARD_INFO]);
    let out = run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success(),
        "opensc-tool failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    // "Received (SW1=0x90, SW2=0x00):" per APDU; OpenSC follows 61xx itself, so GET DATA
    // ends in 9000 too (a 61xx line would mean it did not).
    let sws: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("Received (SW1="))
        .collect();
    assert_eq!(sws.len(), 2, "two responses expected:\n{stdout}");
    assert!(sws[0].contains("SW1=0x90, SW2=0x00"), "SELECT:\n{stdout}");
    assert!(
        sws[1].contains("SW1=0x90, SW2=0x00") || sws[1].contains("SW1=0x61"),
        "GET DATA:\n{stdout}"
    );
    // The hex dump of the FCI starts with 6F and names the applet.
    let dump: String = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Received"))
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(dump.starts_with("6F "), "FCI dump: {dump}");
    assert!(
        dump.contains("84 07 F0 43 49 56 49 43 01"),
        "FCI dump: {dump}"
    );
    Ok(())
}

/// scriptor's responses: "< XX XX ... SW1 SW2 : meaning", wrapped over several lines; each
/// is returned on one line.
fn scriptor_responses(stdout: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("< ") {
            out.push(format!("< {}", rest.trim_end()));
            open = !rest.contains(" : ");
        } else if open {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
            open = !line.contains(" : ");
        }
    }
    out
}

#[test]
fn scriptor_follows_61xx_with_get_response() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(3)?;
    let dir = tempfile::tempdir()?;
    let apdus = dir.path().join("card-info.apdu");
    std::fs::write(&apdus, format!("{SELECT_LE}\n00 CA 01 01 00\n"))?;

    let mut cmd = Command::new("scriptor");
    cmd.arg("-r").arg(card.reader()).arg(&apdus);
    let out = run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success(),
        "scriptor failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    let responses = scriptor_responses(&stdout);
    assert_eq!(responses.len(), 2, "two responses expected:\n{stdout}");
    assert!(responses[0].starts_with("< 6F "), "SELECT:\n{stdout}");
    assert!(responses[0].contains("90 00 :"), "SELECT:\n{stdout}");
    let info = &responses[1];
    if let Some(rest) = info.strip_prefix("< 61 ") {
        // pcscd returns 61xx as is: fetch it like a client must.
        let le = rest.get(..2).context("61xx length")?;
        std::fs::write(
            &apdus,
            format!("{SELECT_LE}\n00 CA 01 01 00\n00 C0 00 00 {le}\n"),
        )?;
        let mut cmd = Command::new("scriptor");
        cmd.arg("-r").arg(card.reader()).arg(&apdus);
        let out = run_with_timeout(cmd, None, TOOL_TIMEOUT)?;
        let stdout = text(&out.stdout);
        let responses = scriptor_responses(&stdout);
        assert_eq!(responses.len(), 3, "{stdout}");
        assert!(responses[2].contains("90 00 :"), "GET RESPONSE:\n{stdout}");
        assert!(
            responses[2].contains("84 04 00 01 00 00"),
            "total storage 65536:\n{stdout}"
        );
    } else {
        assert!(info.contains("90 00 :"), "GET DATA:\n{stdout}");
        assert!(
            info.contains("84 04 00 01 00 00"),
            "total storage:\n{stdout}"
        );
    }
    Ok(())
}

/// The CAN the office printed on Alice's card (its issuance book).
fn can_of_alice(office: &Office) -> Result<zeroize::Zeroizing<String>> {
    let book = civic_reader::office::IssuanceBook::open(&office.home().join("office.sqlite"))?;
    book.can_of(ALICE)?
        .context("the office recorded Alice's CAN")
}

const ALICE: &str = "CIV-2026-0000-0001";
/// Three PACE runs and a few reads, with pure-Python point additions: seconds, not minutes.
const PACE_TIMEOUT: Duration = Duration::from_secs(90);

/// Run `pace_client.py` on `reader` with the CAN and the PIN in its environment; exit status
/// and the parsed JSON.
fn run_pace_client(reader: &str, can: &str) -> Result<(bool, serde_json::Value, String)> {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(pace_client())
        .arg(reader)
        .env("CIVIC_CAN", can)
        .env("CIVIC_PIN", PIN);
    let out = run_with_timeout(cmd, None, PACE_TIMEOUT)?;
    let stdout = text(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "pace_client.py printed no JSON ({}):\n{stdout}\n{}",
            out.status,
            text(&out.stderr)
        )
    })?;
    // Shown with --nocapture: what an independent client saw.
    eprintln!("pace_client.py on {reader}:\n{stdout}");
    Ok((out.status.success(), v, stdout))
}

/// The interop proof of issue 7 item 4: a terminal written in Python from the note alone
/// (pyscard, `cryptography`) opens PACE-CAM with the CAN, reads inside the channel with every
/// MAC checked, checks chip authentication, and sees a wrong CAN and a flipped bit refused.
#[test]
fn independent_python_pace_cam_client_opens_the_secure_channel_of_an_issued_card() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(1)?;
    let reader = card.reader();
    let office = Office::new()?;
    office.set_up_city()?;
    office.provision(&reader)?;
    let can = can_of_alice(&office)?;

    let (ok, v, stdout) = run_pace_client(&reader, &can)?;
    ensure!(
        ok && v["ok"] == true,
        "pace_client.py failed:\n{stdout}\ncard log:\n{}",
        card.log()
    );
    assert_eq!(v["fci"]["life_cycle"], 5, "issued: {stdout}");

    // PACE-CAM with the CAN: the card's token verified, A_IC 48 bytes and decrypted.
    let s = &v["can_session"];
    assert_eq!(s["established"], true, "{stdout}");
    assert_eq!(
        s["pace"]["oid"], "04007f00070202040604",
        "PACE-CAM: {stdout}"
    );
    assert_eq!(s["pace"]["token_verified"], true, "{stdout}");
    assert_eq!(s["pace"]["a_ic_len"], 48, "{stdout}");
    assert_eq!(s["pace"]["a_ic_decrypted"], true, "{stdout}");

    // Protected reads, each answer's MAC checked at the expected send sequence counter
    // (command n odd, its answer n+1): card info at 2, public key at 4, directory at 6.
    for (read, ssc) in [("card_info", 2), ("card_public_key", 4), ("directory", 6)] {
        assert_eq!(s["reads"][read]["sw"], "9000", "{read}: {stdout}");
        assert_eq!(s["reads"][read]["mac_verified"], true, "{read}: {stdout}");
        assert_eq!(s["reads"][read]["ssc"], ssc, "{read}: {stdout}");
    }
    assert_eq!(s["card_info"]["card_id"], ALICE, "{stdout}");
    assert_eq!(s["card_info"]["life_cycle"], 5, "{stdout}");
    // The CAN opens the channel, not the credentials: identity needs a terminal right or
    // the PIN (a MAC-checked 6982).
    assert_eq!(v["identity_object"], "0200", "{stdout}");
    assert_eq!(s["reads"]["identity_credential"]["sw"], "6982", "{stdout}");
    assert_eq!(s["reads"]["identity_credential"]["mac_verified"], true);
    // ... and leaves the session open.
    assert_eq!(s["reads"]["card_info_after_refusal"]["sw"], "9000");
    assert_eq!(s["reads"]["card_info_after_refusal"]["ssc"], 10);
    assert_eq!(s["chip_authentication"]["passed"], true, "{stdout}");
    assert_eq!(
        s["chip_authentication"]["tampered_ca_ic_refused"], true,
        "{stdout}"
    );

    // PACE-CAM with the PIN: the identity credential, PK_IC from its signed claims.
    let p = &v["pin_session"];
    assert_eq!(p["pace"]["pin_salt_received"], true, "{stdout}");
    assert_eq!(p["pace"]["token_verified"], true, "{stdout}");
    let cred = &p["identity_credential"];
    assert_eq!(cred["sw"], "9000", "{stdout}");
    assert_eq!(cred["mac_verified"], true, "{stdout}");
    assert_eq!(cred["card_id"], ALICE, "{stdout}");
    assert_eq!(cred["issuer_id"], "identity-bureau", "{stdout}");
    // Over 256 bytes: short APDUs need protected GET RESPONSEs (a short protected answer
    // carries at most 223 plain bytes, sm::SHORT_PROTECTED_MAX); one extended APDU does not.
    let bytes = cred["bytes"].as_u64().context("bytes")?;
    assert!(bytes > 256, "{stdout}");
    assert_eq!(
        cred["get_response_rounds"],
        bytes.div_ceil(223) - 1,
        "{stdout}"
    );
    let ext = &p["identity_credential_extended"];
    assert_eq!(ext["sw"], "9000", "{stdout}");
    assert_eq!(ext["bytes"], cred["bytes"], "{stdout}");
    // The short read: one command and its GET RESPONSEs, two SSC steps each; the extended
    // read after it: one command, one answer.
    let rounds = cred["get_response_rounds"].as_u64().context("rounds")?;
    assert_eq!(cred["ssc"], 2 * (1 + rounds), "{stdout}");
    assert_eq!(
        ext["ssc"],
        2 * (1 + rounds) + 2,
        "one command, one answer: {stdout}"
    );
    assert_eq!(
        cred["card_public_key"], s["card_public_key"],
        "the credential names the key the card reports: {stdout}"
    );
    assert_eq!(p["chip_authentication"]["passed"], true, "{stdout}");
    assert_eq!(
        p["chip_authentication"]["pk_ic_from"],
        "identity credential claims.card_public_key"
    );

    // Tampering and a wrong password.
    assert_eq!(v["flipped_bit"]["sw"], "6988", "{stdout}");
    assert_eq!(v["flipped_bit"]["next_sw"], "6988", "{stdout}");
    assert_eq!(v["flipped_bit"]["session_closed"], true, "{stdout}");
    assert_eq!(v["wrong_can"]["refused"], true, "{stdout}");
    assert_eq!(v["wrong_can"]["sw"], "63C2", "first wrong CAN: {stdout}");
    assert_eq!(v["wrong_can"]["step"], "GENERAL AUTHENTICATE 4", "{stdout}");
    Ok(())
}

/// The same client on a clone (every readable byte and the CAN copied onto a blank card, which
/// has its own key): the clone's CA_IC matches the key it reports itself, but not the key in
/// the issuer-signed identity credential, and the client says so (exit 1).
#[test]
fn independent_python_pace_cam_client_catches_a_cloned_card() -> Result<()> {
    let _lock = serial();
    pcscd();
    let original = VirtualCard::blank(2)?;
    let copy = VirtualCard::blank(3)?;
    let office = Office::new()?;
    office.set_up_city()?;
    office.provision(&original.reader())?;
    let can = can_of_alice(&office)?;
    let clone_tool = bin_dir().join("examples/clone_card");
    ensure!(
        clone_tool.exists(),
        "{} missing: build with `cargo build --release --examples`",
        clone_tool.display()
    );
    let mut cmd = Command::new(clone_tool);
    cmd.arg(original.reader())
        .arg(copy.reader())
        .arg(PIN)
        .env("CIVIC_CAN", can.as_str());
    let out = run_with_timeout(cmd, None, PACE_TIMEOUT)?;
    ensure!(out.status.success(), "clone_card: {}", text(&out.stderr));

    let (ok, v, stdout) = run_pace_client(&copy.reader(), &can)?;
    ensure!(!ok && v["ok"] == false, "the clone passed:\n{stdout}");
    // The channel works (the CAN was copied) and CA_IC fits the clone's own key ...
    assert_eq!(v["can_session"]["established"], true, "{stdout}");
    assert_eq!(v["can_session"]["chip_authentication"]["passed"], true);
    // ... but not the card key the identity bureau signed.
    let p = &v["pin_session"];
    assert_eq!(p["identity_credential"]["card_id"], ALICE, "{stdout}");
    assert_ne!(
        p["identity_credential"]["card_public_key"], v["can_session"]["card_public_key"],
        "{stdout}"
    );
    assert_eq!(p["chip_authentication"]["passed"], false, "{stdout}");
    let failures = v["failures"].to_string();
    assert!(
        failures.contains("chip authentication failed (PIN session, credential key)"),
        "{stdout}"
    );
    Ok(())
}
