//! The whole story through real pcscd + vpcd + `civic-card` processes, driven by the `civic`
//! CLI exactly as an office, a clinic and a citizen would run it. Every CLI call and every
//! direct PC/SC call is bounded (a frozen card hangs PC/SC clients).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use civic_e2e::{pcscd, run_civic, run_civic_timeout, serial, with_timeout, VirtualCard};

const PIN: &str = "482913";
const CARD: &str = "CIV-2026-0000-0001";

fn citizen_file() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/data/alice.json")
        .display()
        .to_string()
}

/// A data directory for one test and a `civic` runner bound to it.
struct Office {
    home: tempfile::TempDir,
}

struct Ran {
    code: i32,
    out: String,
}

impl Office {
    fn new() -> Result<Self> {
        Ok(Self {
            home: tempfile::Builder::new()
                .prefix("civic-e2e-home-")
                .tempdir()?,
        })
    }

    fn civic(&self, args: &[&str], stdin: Option<&str>) -> Result<Ran> {
        let home = self.home.path().display().to_string();
        let out = run_civic(args, stdin, &[("CIVIC_HOME", home.as_str())])?;
        Ok(Ran {
            code: out.status.code().unwrap_or(-1),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    /// Run and insist on an exit code.
    fn expect(&self, code: i32, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let r = self.civic(args, stdin)?;
        ensure!(
            r.code == code,
            "`civic {}` exited {} (wanted {code}):\n{}",
            args.join(" "),
            r.code,
            r.out
        );
        Ok(r.out)
    }

    fn set_up_city(&self) -> Result<()> {
        self.expect(0, &["authority", "init"], None)?;
        for (id, name, kind) in [
            ("identity-bureau", "City Identity Bureau", "identity"),
            ("health-bureau", "City Health Bureau", "health,emergency"),
            ("education-bureau", "City Education Bureau", "education"),
        ] {
            self.expect(
                0,
                &["issuer", "add", "--id", id, "--name", name, "--kinds", kind],
                None,
            )?;
        }
        for (id, role) in [
            ("office-01", "issuing-office"),
            ("clinic-01", "clinic"),
            ("school-01", "education-office"),
        ] {
            self.expect(0, &["terminal", "enroll", "--id", id, "--role", role], None)?;
        }
        Ok(())
    }

    fn provision(&self, reader: &str) -> Result<String> {
        let citizen = citizen_file();
        self.expect(
            0,
            &[
                "provision",
                "--reader",
                reader,
                "--citizen",
                &citizen,
                "--pin-stdin",
            ],
            Some(PIN),
        )
    }

    fn scan_json(&self, reader: &str, code: i32) -> Result<serde_json::Value> {
        let out = self.expect(code, &["--json", "scan", "--reader", reader], None)?;
        serde_json::from_str(&out).with_context(|| format!("scan --json printed:\n{out}"))
    }

    fn scan_consent_json(&self, reader: &str, pin: &str, code: i32) -> Result<serde_json::Value> {
        let out = self.expect(
            code,
            &[
                "--json",
                "scan",
                "--reader",
                reader,
                "--consent",
                "--pin-stdin",
            ],
            Some(pin),
        )?;
        serde_json::from_str(&out).with_context(|| format!("scan --json printed:\n{out}"))
    }
}

fn verdicts(scan: &serde_json::Value) -> Vec<(String, String)> {
    scan["credentials"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["kind"].as_str().unwrap_or("?").to_owned(),
                        c["verdict"].as_str().unwrap_or("not read").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn office_clinic_citizen_story_through_pcscd() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(0)?;
    let reader = card.reader();
    let office = Office::new()?;
    office.set_up_city()?;

    let out = office.provision(&reader)?;
    ensure!(out.contains(CARD), "{out}");

    // Clinic: all valid, exit 0, the watermark names a block.
    // Clinic without consent: identity and emergency data, nothing else; exit 0.
    let scan = office.scan_json(&reader, 0)?;
    assert_eq!(scan["chip"], "passed");
    assert_eq!(scan["valid"], true);
    assert_eq!(
        verdicts(&scan),
        pairs(&[
            ("identity", "valid"),
            ("health", "not read"),
            ("education", "not read"),
            ("emergency", "valid")
        ])
    );
    assert!(scan["watermark"]["height"].as_u64().context("height")? >= 6);

    // With the citizen's PIN (consent): the full health record.
    let scan = office.scan_consent_json(&reader, PIN, 0)?;
    assert_eq!(
        verdicts(&scan)[1],
        ("health".to_owned(), "valid".to_owned())
    );

    // The clinic's terminal may not write: the card refuses and says which right is missing.
    let r = office.civic(
        &[
            "remove-credential",
            "--reader",
            &reader,
            "--kind",
            "education",
            "--terminal",
            "clinic-01",
        ],
        None,
    )?;
    assert!(r.code == 4 && r.out.contains("write right"), "{}", r.out);

    // The health bureau revokes; the clinic sees it; the exit code says "negative".
    office.expect(0, &["revoke", "--card-id", CARD, "--kind", "health"], None)?;
    let scan = office.scan_consent_json(&reader, PIN, 1)?;
    assert_eq!(
        verdicts(&scan),
        pairs(&[
            ("identity", "valid"),
            ("health", "revoked"),
            ("education", "not read"),
            ("emergency", "revoked")
        ])
    );
    let human = office.expect(
        1,
        &["scan", "--reader", &reader, "--consent", "--pin-stdin"],
        Some(PIN),
    )?;
    assert!(
        human.contains("REVOKED") && human.contains("Overall: NOT VALID"),
        "{human}"
    );

    // The citizen reads everything with the PIN.
    let view = office.expect(
        0,
        &["view", "--reader", &reader, "--log", "--pin-stdin"],
        Some(PIN),
    )?;
    for needle in [
        "Alice Example",
        "penicillin",
        "BSc Computer Science",
        "REVOKED",
        "Access log (4 entries",
        "clinic-01",
    ] {
        assert!(view.contains(needle), "view lacks {needle:?}:\n{view}");
    }

    // The citizen exports a credential; an agency holding only a copy of the registry
    // verifies it (exit 0), and the revoked health credential is reported as such (exit 1).
    let agency = tempfile::tempdir()?;
    std::fs::copy(
        office.home.path().join("registry.sqlite"),
        agency.path().join("registry.sqlite"),
    )?;
    let agency_dir = agency.path().display().to_string();
    for (kind, code, word) in [("education", 0, "VALID"), ("health", 1, "REVOKED")] {
        let file = office.home.path().join(format!("{kind}.json"));
        let file = file.display().to_string();
        office.expect(
            0,
            &[
                "view",
                "--reader",
                &reader,
                "--export",
                kind,
                "--out",
                &file,
                "--pin-stdin",
            ],
            Some(PIN),
        )?;
        let out = office.expect(code, &["--data-dir", &agency_dir, "verify", &file], None)?;
        assert!(out.contains(word), "{out}");
    }

    // Three wrong PINs: 63C2, 63C1, blocked; then even the right PIN is refused (exit 4).
    let r = office.civic(
        &["view", "--reader", &reader, "--pin-stdin"],
        Some("000000"),
    )?;
    assert!(r.code == 4 && r.out.contains("2 tries left"), "{}", r.out);
    let r = office.civic(
        &["view", "--reader", &reader, "--pin-stdin"],
        Some("000001"),
    )?;
    assert!(r.code == 4 && r.out.contains("1 try left"), "{}", r.out);
    let r = office.civic(
        &["view", "--reader", &reader, "--pin-stdin"],
        Some("000002"),
    )?;
    assert!(r.code == 4 && r.out.contains("blocked"), "{}", r.out);
    let r = office.civic(&["view", "--reader", &reader, "--pin-stdin"], Some(PIN))?;
    assert!(r.code == 4 && r.out.contains("blocked"), "{}", r.out);

    // The office unblocks with a new PIN; the old one is gone, the new one works.
    office.expect(
        0,
        &["unblock", "--reader", &reader, "--pin-stdin"],
        Some("246810"),
    )?;
    office.expect(4, &["view", "--reader", &reader, "--pin-stdin"], Some(PIN))?;
    office.expect(
        0,
        &["view", "--reader", &reader, "--pin-stdin"],
        Some("246810"),
    )?;

    // The citizen changes the PIN (current, then new, on stdin).
    office.expect(
        0,
        &["change-pin", "--reader", &reader, "--pin-stdin"],
        Some("246810\n135790\n"),
    )?;
    office.expect(
        0,
        &["view", "--reader", &reader, "--pin-stdin"],
        Some("135790"),
    )?;

    let verify = office.expect(0, &["registry", "verify"], None)?;
    assert!(verify.contains("Ledger OK"), "{verify}");
    Ok(())
}

#[test]
fn copied_card_scans_as_cloned_through_pcscd() -> Result<()> {
    let _lock = serial();
    pcscd();
    let original = VirtualCard::blank(0)?;
    let copy = VirtualCard::blank(1)?;
    let office = Office::new()?;
    office.set_up_city()?;
    office.provision(&original.reader())?;

    // The cloner's tool: everything readable without a PIN, onto a blank card.
    let clone_tool = civic_e2e::bin_dir().join("examples/clone_card");
    ensure!(
        clone_tool.exists(),
        "{} missing: build with `cargo build --release --examples`",
        clone_tool.display()
    );
    let mut cmd = std::process::Command::new(clone_tool);
    cmd.arg(original.reader()).arg(copy.reader()).arg(PIN);
    // The cloner copies the CAN printed on the original; the tool finds it in the office's
    // book, standing in for reading the plastic.
    cmd.env("CIVIC_HOME", office.home.path());
    let out = civic_e2e::run_with_timeout(cmd, None, Duration::from_secs(60))?;
    ensure!(
        out.status.success(),
        "clone_card: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let scan = office.scan_json(&copy.reader(), 1)?;
    assert_eq!(scan["valid"], false);
    assert_eq!(
        verdicts(&scan),
        pairs(&[
            ("identity", "cloned"),
            ("health", "not read"),
            ("education", "not read"),
            ("emergency", "cloned")
        ])
    );
    // The original still scans valid.
    let scan = office.scan_json(&original.reader(), 0)?;
    assert_eq!(scan["valid"], true);
    Ok(())
}

#[test]
fn card_state_survives_a_restart_of_the_card_process() -> Result<()> {
    let _lock = serial();
    pcscd();
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("alice.card");
    let office = Office::new()?;
    office.set_up_city()?;
    {
        let card = VirtualCard::start(0, &state)?;
        office.provision(&card.reader())?;
        // A wrong PIN is persisted before the comparison: it must survive a SIGKILL.
        office.expect(
            4,
            &["view", "--reader", &card.reader(), "--pin-stdin"],
            Some("000000"),
        )?;
    } // dropped: SIGKILL
    let card = VirtualCard::start(0, &state)?;
    let info = office.expect(
        0,
        &["--json", "card-info", "--reader", &card.reader()],
        None,
    )?;
    let v: serde_json::Value = serde_json::from_str(&info)?;
    assert_eq!(v["card"]["card_id"], CARD);
    assert_eq!(v["card"]["life_cycle"], "issued");
    assert_eq!(v["card"]["pin_tries_left"], 2, "{info}");
    office.scan_json(&card.reader(), 0)?;
    Ok(())
}

#[test]
fn frozen_card_times_out_and_recovers_when_resumed() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(0)?;
    let reader = card.reader();
    let office = Office::new()?;
    office.set_up_city()?;
    office.provision(&reader)?;

    card.pause()?;
    let home = office.home.path().display().to_string();
    let frozen = run_civic_timeout(
        &["scan", "--reader", &reader],
        None,
        &[("CIVIC_HOME", home.as_str())],
        Duration::from_secs(3),
    );
    card.resume()?;
    assert!(frozen.is_err(), "a scan of a frozen card must not finish");
    // Once the card runs again, the next client gets through.
    office.scan_json(&reader, 0)?;
    Ok(())
}

#[test]
fn malformed_apdus_through_pcscd_get_status_words_and_change_nothing() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(0)?;
    let reader = card.reader();
    // (command, the status word the card must answer)
    const TABLE: &[(&str, &str)] = &[
        ("00A4040007F043495649430100", "9000"), // SELECT by AID
        ("80CA010100", "6E00"),                 // proprietary CLA
        ("00FE000000", "6D00"),                 // unknown INS
        ("00DA0200050102", "6700"),             // Lc 5, two data bytes
        ("00CA777700", "6A82"),                 // no such object
        ("00200081033132", "6700"),             // PIN of three digits
        ("00200081063132333435FF", "6A80"),     // PIN with a non-digit
        ("00DA02000481020102", "6A80"),         // credential body without a kind
        ("00A4040007F043495649439900", "6A82"), // SELECT of another AID
    ];
    let got = with_timeout(Duration::from_secs(20), move || -> Result<Vec<String>> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
        let name = std::ffi::CString::new(reader)?;
        let c = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
        let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        let mut out = Vec::new();
        for (apdu, _) in TABLE {
            let r = c.transmit(&hex::decode(apdu)?, &mut buf)?;
            out.push(hex::encode_upper(&r[r.len().saturating_sub(2)..]));
        }
        let _ = c.disconnect(pcsc::Disposition::LeaveCard);
        Ok(out)
    })??;
    let want: Vec<String> = TABLE.iter().map(|(_, sw)| (*sw).to_owned()).collect();
    assert_eq!(got, want);
    // A blank card's state file appears with its first successful write: none happened.
    assert!(
        !card.state_path().exists(),
        "a refused command wrote the card's state"
    );
    Ok(())
}

#[test]
fn reader_reconnects_and_reselects_after_another_client_resets_the_card() -> Result<()> {
    use civic_reader::apdu::ApduMode;
    use civic_reader::session::Session;
    use civic_reader::transport::PcscTransport;

    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(0)?;
    let reader = card.reader();
    with_timeout(Duration::from_secs(30), move || -> Result<()> {
        let mut t = PcscTransport::connect(Some(&reader))?;
        let mut s = Session::open(&mut t, ApduMode::Extended)?;
        s.refresh_info()?;

        // Another application connects and leaves with a reset (as dropping a pcsc::Card
        // does): our handle now gets SCARD_W_RESET_CARD and the applet is deselected.
        civic_e2e::other_client_resets(&reader)?;

        // The transport reconnects (leaving the card), re-selects, and the command succeeds.
        let info = s.refresh_info()?;
        ensure!(info.total_storage == 65_536, "{info:?}");
        s.directory()?;
        Ok(())
    })??;
    Ok(())
}

#[test]
fn rotated_issuer_keeps_issuing_and_a_retired_key_fails_only_after_its_retirement_time(
) -> Result<()> {
    let _lock = serial();
    pcscd();
    let first = VirtualCard::blank(0)?;
    let office = Office::new()?;
    office.set_up_city()?;
    office.provision(&first.reader())?;
    let issued_before = civic_e2e_now();

    // Rotation: a new key and certificate; the old credentials stay valid.
    let out = office.expect(
        0,
        &["--json", "issuer", "rotate", "--id", "identity-bureau"],
        None,
    )?;
    let rotated: serde_json::Value = serde_json::from_str(&out)?;
    let old_key = rotated["previous_public_key"]
        .as_str()
        .context("previous_public_key")?
        .to_owned();
    assert_eq!(office.scan_json(&first.reader(), 0)?["valid"], true);

    // A second card, issued after the rotation, is signed with the new key.
    let second = VirtualCard::blank(1)?;
    let citizen = citizen_file();
    let mut bob: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&citizen)?)?;
    bob["card_id"] = "CIV-2026-0000-0002".into();
    let bob_file = office.home.path().join("bob.json");
    std::fs::write(&bob_file, serde_json::to_vec(&bob)?)?;
    office.expect(
        0,
        &[
            "provision",
            "--reader",
            &second.reader(),
            "--citizen",
            &bob_file.display().to_string(),
            "--pin-stdin",
        ],
        Some(PIN),
    )?;

    // Retiring the old key from now: the first card's identity was issued earlier, still valid.
    let from = (issued_before + 3600).to_string();
    office.expect(
        0,
        &[
            "issuer",
            "retire",
            "--id",
            "identity-bureau",
            "--key",
            &old_key,
            "--from",
            &from,
            "--reason",
            "audit",
        ],
        None,
    )?;
    assert_eq!(office.scan_json(&first.reader(), 0)?["valid"], true);

    // A compromise discovered to date back before the first card: its identity credential
    // now fails with its own verdict; the second card (new key) is untouched.
    let earlier = (issued_before - 3600).to_string();
    office.expect(
        0,
        &[
            "issuer",
            "retire",
            "--id",
            "identity-bureau",
            "--key",
            &old_key,
            "--from",
            &earlier,
            "--reason",
            "key stolen",
        ],
        None,
    )?;
    let scan = office.scan_json(&first.reader(), 1)?;
    assert_eq!(
        verdicts(&scan)[0],
        ("identity".to_owned(), "issuer_key_retired".to_owned())
    );
    assert_eq!(office.scan_json(&second.reader(), 0)?["valid"], true);
    office.expect(0, &["registry", "verify"], None)?;
    Ok(())
}

fn civic_e2e_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn provisioning_without_a_reader_takes_the_blank_card_not_the_issued_one_in_the_first_reader(
) -> Result<()> {
    // `civic provision --citizen` without --reader (and the desk's office form, which calls
    // the same function) used to connect to the first reader holding any card: with an
    // issued card there, the office was refused instead of provisioning the blank card beside
    // it.
    let _lock = serial();
    pcscd();
    let office = civic_e2e::office::Office::new()?;
    office.set_up_city()?;
    let issued = VirtualCard::blank(0)?;
    office.provision(&issued.reader())?;
    let blank = VirtualCard::blank(1)?;
    let citizen = office.citizen_numbered(2)?.display().to_string();
    office.expect(
        0,
        &["provision", "--citizen", &citizen, "--pin-stdin"],
        Some(civic_e2e::office::PIN),
    )?;
    let scan = office.scan_json(&blank.reader(), 0)?;
    ensure!(
        scan.to_string().contains("CIV-2026-0000-1002"),
        "the blank card in reader 1 was not provisioned: {scan}"
    );
    let first = office.scan_json(&issued.reader(), 0)?;
    ensure!(
        first.to_string().contains("CIV-2026-0000-0001"),
        "the issued card in reader 0 changed: {first}"
    );
    Ok(())
}
