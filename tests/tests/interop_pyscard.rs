//! Interop: tools nobody here wrote (pyscard, opensc-tool, scriptor) read a blank civic-card
//! through the real pcscd + vpcd.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use civic_e2e::{pcscd, run_with_timeout, serial, VirtualCard};

/// SELECT by AID with Le=00 (case 4: the card returns the FCI; without Le it may not).
const SELECT: &str = "00A4040007F043495649430100";
const SELECT_LE: &str = "00 A4 04 00 07 F0 43 49 56 49 43 01 00";
const GET_CARD_INFO: &str = "00CA010100";
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/read_card_info.py")
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
