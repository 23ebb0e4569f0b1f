//! A malicious card against the real reader: the `civic` CLI through real pcscd + vpcd,
//! talking to a [`HostileCard`] that rewrites a genuine card's answers. One test per attack;
//! each asserts the clear error (or the negative verdict), the exit code, that nothing
//! panicked and that the reader gave up in bounded time.
//!
//! Exit codes: 1 = the verdict is negative (a forged credential, a failed chip check), 3 = could
//! not run (the card's answer is unusable). The reader's bound per APDU is set to
//! [`CARD_TIMEOUT`] through `CIVIC_CARD_TIMEOUT`; every CLI run is bounded by [`RUN_BOUND`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use card_applet::protocol::{ins, object, tag, tlv};
use civic_e2e::hostile::{
    honest, rewrite_all, rewrite_nth, Attack, ChipProof, Genuine, HostileCard, Reply,
};
use civic_e2e::{pcscd, run_civic_timeout, serial, with_timeout, VirtualCard};

const PIN: &str = "482913";
/// The reader's bound for one APDU in these tests.
const CARD_TIMEOUT: &str = "2s";
/// Bound for one CLI run: far above a scan (~0.1 s) and the card timeout, far below a hang.
const RUN_BOUND: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Fixture: one city and one provisioned card per test binary; each test scans a copy.

struct City {
    home: PathBuf,
    pristine: PathBuf,
}

static CITY: OnceLock<City> = OnceLock::new();

fn citizen_file() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/data/alice.json")
        .display()
        .to_string()
}

/// Call with [`serial`] held.
fn city() -> &'static City {
    CITY.get_or_init(|| set_up_city().expect("set up the city and provision the card"))
}

fn set_up_city() -> Result<City> {
    pcscd();
    // Fixtures of earlier runs (a static is never dropped, so each run leaves its own).
    if let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) {
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
            if old
                && e.file_name()
                    .to_string_lossy()
                    .starts_with("civic-malicious-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("civic-malicious-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?
        .keep();
    let home = dir.join("home");
    let civic = |args: &[&str], stdin: Option<&str>| -> Result<()> {
        let r = civic_in(&home, args, stdin)?;
        ensure!(
            r.code == 0,
            "`civic {}` exited {}:\n{}",
            args.join(" "),
            r.code,
            r.all()
        );
        Ok(())
    };
    civic(&["authority", "init"], None)?;
    for (id, name, kind) in [
        ("identity-bureau", "City Identity Bureau", "identity"),
        ("health-bureau", "City Health Bureau", "health,emergency"),
        ("education-bureau", "City Education Bureau", "education"),
    ] {
        civic(
            &["issuer", "add", "--id", id, "--name", name, "--kinds", kind],
            None,
        )?;
    }
    for (id, role) in [("office-01", "issuing-office"), ("clinic-01", "clinic")] {
        civic(&["terminal", "enroll", "--id", id, "--role", role], None)?;
    }
    let mut card = VirtualCard::blank(next_reader())?;
    let reader = card.reader();
    let citizen = citizen_file();
    civic(
        &[
            "provision",
            "--reader",
            &reader,
            "--citizen",
            &citizen,
            "--pin-stdin",
        ],
        Some(PIN),
    )?;
    card.stop()?;
    let pristine = dir.join("pristine.state");
    std::fs::copy(card.state_path(), &pristine)?;
    Ok(City { home, pristine })
}

/// Readers in turn: a reader just left waits out pcscd's reconnect gap, the next one need not.
fn next_reader() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) % civic_e2e::READERS.len()
}

/// A hostile card over a fresh copy of the provisioned card.
fn hostile(attack: impl Attack + 'static) -> Result<(HostileCard, tempfile::TempDir)> {
    let c = city();
    let dir = tempfile::Builder::new()
        .prefix("civic-malicious-card-")
        .tempdir()?;
    let state = dir.path().join("card.state");
    std::fs::copy(&c.pristine, &state)?;
    Ok((HostileCard::start(next_reader(), &state, attack)?, dir))
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn all(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

fn civic_in(home: &Path, args: &[&str], stdin: Option<&str>) -> Result<Ran> {
    let home = home.display().to_string();
    let start = Instant::now();
    let out = run_civic_timeout(
        args,
        stdin,
        &[
            ("CIVIC_HOME", home.as_str()),
            ("CIVIC_CARD_TIMEOUT", CARD_TIMEOUT),
        ],
        RUN_BOUND,
    )?;
    Ok(Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    })
}

fn civic(args: &[&str], stdin: Option<&str>) -> Result<Ran> {
    civic_in(&city().home, args, stdin)
}

fn scan(card: &HostileCard) -> Result<Ran> {
    civic(&["--json", "scan", "--reader", &card.reader()], None)
}

fn scan_consent(card: &HostileCard) -> Result<Ran> {
    civic(
        &[
            "--json",
            "scan",
            "--reader",
            &card.reader(),
            "--consent",
            "--pin-stdin",
        ],
        Some(PIN),
    )
}

/// The run ended with `code`, said every one of `needles` (stdout or stderr), did not panic,
/// and gave up well inside its bound.
fn expect(card: &HostileCard, r: &Ran, code: i32, needles: &[&str]) -> Result<()> {
    let all = r.all();
    let context = || {
        format!(
            "{all}\n--- the card's transcript ---\n{}",
            card.transcript()
        )
    };
    ensure!(
        !all.contains("panicked"),
        "the reader panicked:\n{}",
        context()
    );
    ensure!(
        r.code == code,
        "exit {} (wanted {code}):\n{}",
        r.code,
        context()
    );
    for n in needles {
        ensure!(all.contains(n), "no {n:?} in the output:\n{}", context());
    }
    ensure!(r.took < RUN_BOUND / 2, "took {:?}:\n{}", r.took, context());
    // With --nocapture: what the reader said about each attack, and how long it took.
    eprintln!(
        "exit {} after {:?}: {}",
        r.code,
        r.took,
        r.stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("(nothing on stderr)")
    );
    Ok(())
}

fn scan_json(r: &Ran) -> Result<serde_json::Value> {
    serde_json::from_str(&r.stdout).with_context(|| format!("scan --json printed:\n{}", r.all()))
}

fn ok_sw(mut data: Vec<u8>) -> Vec<u8> {
    data.extend_from_slice(&[0x90, 0x00]);
    data
}

fn p1p2(apdu: &[u8]) -> u16 {
    u16::from_be_bytes([apdu[2], apdu[3]])
}

/// Rewrite the genuine answer to GET DATA of object `obj`.
fn rewrite_object(obj: u16, mut f: impl FnMut(Vec<u8>) -> Reply + Send + 'static) -> impl Attack {
    rewrite_all(ins::GET_DATA, move |apdu, genuine| {
        if p1p2(apdu) == obj {
            f(genuine)
        } else {
            Reply::Send(genuine)
        }
    })
}

// ---------------------------------------------------------------------------------------
// The honest card first: the harness itself does not break a scan.

#[test]
fn honest_card_through_the_hostile_harness_scans_valid() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(honest())?;
    let r = scan(&card)?;
    expect(&card, &r, 0, &[])?;
    let v = scan_json(&r)?;
    ensure!(v["chip"] == "passed" && v["valid"] == true, "{v}");
    // Short APDUs: the genuine 61xx / GET RESPONSE chains still work under the new bounds.
    let r = civic(
        &[
            "--short-apdus",
            "--json",
            "scan",
            "--reader",
            &card.reader(),
        ],
        None,
    )?;
    expect(&card, &r, 0, &[])?;
    ensure!(
        card.log().iter().any(|e| e.command[1] == ins::GET_RESPONSE),
        "no GET RESPONSE in short mode:\n{}",
        card.transcript()
    );
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// Oversize

#[test]
fn select_answer_longer_than_le_is_refused() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_nth(ins::SELECT, 0, |_, genuine| {
        let mut d = genuine[..genuine.len() - 2].to_vec();
        d.resize(300, 0xA5);
        Reply::Send(ok_sw(d))
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["the card answered 300 data bytes to SELECT (0400), which allows at most 256"],
    )?;
    card.unplug()
}

#[test]
fn challenge_one_byte_longer_than_asked_is_refused() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_all(ins::GET_CHALLENGE, |_, genuine| {
        let mut d = genuine[..genuine.len() - 2].to_vec();
        d.push(0);
        Reply::Send(ok_sw(d))
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["17 data bytes to GET CHALLENGE", "at most 16"],
    )?;
    card.unplug()
}

#[test]
fn data_in_answer_to_a_command_without_le_is_refused() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_all(ins::EXTERNAL_AUTHENTICATE, |_, _| {
        Reply::Send(ok_sw(vec![0x42; 8]))
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["8 data bytes to EXTERNAL AUTHENTICATE (0000), which allows at most 0"],
    )?;
    card.unplug()
}

#[test]
fn largest_vpcd_frame_of_garbage_is_a_malformed_directory() -> Result<()> {
    let _lock = serial();
    // 65,503 data bytes + SW: the largest plain answer whose protected form (DO87 with the
    // padded cryptogram, DO99, DO8E, SW: 65,535 bytes) vpcd can carry.
    let (card, _dir) = hostile(rewrite_object(object::DIRECTORY, |_| {
        Reply::Send(ok_sw(vec![0xFF; 65_503]))
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["GET DATA directory: malformed answer from the card"],
    )?;
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// Truncated

/// vpcd takes an empty frame for no answer at all: the reader's bound ends the wait.
#[test]
fn empty_answer_frame_is_a_timeout_not_a_hang() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_nth(
        ins::GET_DATA,
        0,
        |_, _| Reply::Send(Vec::new()),
    ))?;
    let r = scan(&card)?;
    expect(&card, &r, 3, &["did not answer within 2s: it is frozen"])?;
    card.unplug()
}

#[test]
fn one_byte_answer_is_refused_as_no_status_word() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_nth(ins::GET_DATA, 0, |_, _| {
        Reply::Send(vec![0x90])
    }))?;
    let r = scan(&card)?;
    expect(&card, &r, 3, &["fewer than two bytes (no status word)"])?;
    card.unplug()
}

#[test]
fn credential_cut_mid_tlv_is_a_malformed_answer() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_object(object::credential(0), |genuine| {
        let data = &genuine[..genuine.len() - 2];
        Reply::Send(ok_sw(data[..data.len() / 2].to_vec()))
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["GET DATA credential: malformed answer from the card (bad TLV)"],
    )?;
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// Malformed TLV and CBOR

#[test]
fn malformed_directory_tlv_is_a_malformed_answer() -> Result<()> {
    let _lock = serial();
    // A directory entry whose length runs past the end.
    let (card, _dir) = hostile(rewrite_object(object::DIRECTORY, |_| {
        Reply::Send(ok_sw(vec![0x61, 0x7F, 0x80, 0x01, 0x00]))
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["GET DATA directory: malformed answer from the card (bad TLV)"],
    )?;
    card.unplug()
}

#[test]
fn malformed_cbor_record_is_a_forged_verdict() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_object(object::credential(0), |_| {
        // A well-formed slot body (80 kind, 81 record) around bytes that are not CBOR.
        let mut body = Vec::new();
        tlv::push(
            &mut body,
            tag::PUT_KIND,
            &[card_applet::protocol::kind::IDENTITY],
        );
        tlv::push(&mut body, tag::PUT_RECORD, &[0xA5, 0xFF, 0x00, 0x1B, 0x13]);
        Reply::Send(ok_sw(body))
    }))?;
    let r = scan(&card)?;
    expect(&card, &r, 1, &["the record on the card is malformed"])?;
    let v = scan_json(&r)?;
    ensure!(
        v["credentials"][0]["verdict"] == "forged" && v["valid"] == false,
        "{v}"
    );
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// Wrong signatures and replay

/// A hostile card over a fresh copy of the provisioned card, answering PACE-CAM's chip
/// authentication as `proof` says.
fn hostile_chip(proof: ChipProof) -> Result<(HostileCard, tempfile::TempDir)> {
    let c = city();
    let dir = tempfile::Builder::new()
        .prefix("civic-malicious-card-")
        .tempdir()?;
    let state = dir.path().join("card.state");
    std::fs::copy(&c.pristine, &state)?;
    Ok((
        HostileCard::start_with(next_reader(), &state, honest(), proof)?,
        dir,
    ))
}

/// The scan of a card whose chip authentication failed: exit 1, chip failed, a copy, and no
/// credential judged valid (genuine data on a copy is CLONED).
fn expect_copy(card: &HostileCard, r: &Ran) -> Result<()> {
    expect(card, r, 1, &[])?;
    let v = scan_json(r)?;
    ensure!(v["chip"] == "failed" && v["valid"] == false, "{v}");
    ensure!(
        v["problem"]
            .as_str()
            .is_some_and(|p| p.contains("this card is a copy")),
        "{v}"
    );
    let creds = v["credentials"].as_array().context("credentials")?;
    ensure!(
        creds
            .iter()
            .all(|c| c["verdict"].is_null() || c["verdict"] == "cloned"),
        "a credential on a card that failed chip authentication was not CLONED: {v}"
    );
    // PACE-CAM replaced INTERNAL AUTHENTICATE: the scan never sends one.
    ensure!(
        card.log()
            .iter()
            .all(|e| e.command.get(1) != Some(&ins::INTERNAL_AUTHENTICATE)),
        "INTERNAL AUTHENTICATE sent:\n{}",
        card.transcript()
    );
    Ok(())
}

#[test]
fn wrong_pace_cam_chip_authentication_data_fails_the_clone_check() -> Result<()> {
    let _lock = serial();
    // A card with the right CAN and data but another chip key: its CA_IC is well formed and
    // decrypts, but PK_Map,IC != CA_IC * PK_IC for the key in the identity credential.
    let (card, _dir) = hostile_chip(ChipProof::WrongKey)?;
    let r = scan(&card)?;
    expect_copy(&card, &r)?;
    card.unplug()
}

#[test]
fn card_that_omits_pace_cam_chip_authentication_data_fails_the_clone_check() -> Result<()> {
    let _lock = serial();
    // The channel opens (the CAN is right), but the last PACE answer has no tag 8A.
    let (card, _dir) = hostile_chip(ChipProof::Omit)?;
    let r = scan(&card)?;
    expect_copy(&card, &r)?;
    card.unplug()
}

#[test]
fn credential_with_a_wrong_issuer_signature_is_forged() -> Result<()> {
    use civic_registry::credential::SignedCredential;
    use civic_registry::record::CardRecord;
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_object(object::credential(0), |genuine| {
        let body = &genuine[..genuine.len() - 2];
        let kind = tlv::find(body, tag::PUT_KIND)
            .ok()
            .flatten()
            .unwrap_or(&[0])
            .to_vec();
        let raw = tlv::find(body, tag::PUT_RECORD)
            .ok()
            .flatten()
            .unwrap_or(&[]);
        let mut rec = CardRecord::decode(raw).expect("the genuine record decodes");
        // COSE_Sign1 ends with the 64-byte signature: flip its last bit.
        let mut cose = rec.credential.as_bytes().to_vec();
        *cose.last_mut().expect("non-empty") ^= 0x01;
        rec.credential = SignedCredential::from_bytes(&cose).expect("still a COSE_Sign1");
        let mut out = Vec::new();
        tlv::push(&mut out, tag::PUT_KIND, &kind);
        tlv::push(&mut out, tag::PUT_RECORD, &rec.encode());
        Reply::Send(ok_sw(out))
    }))?;
    let r = scan(&card)?;
    expect(&card, &r, 1, &[])?;
    let v = scan_json(&r)?;
    ensure!(
        v["credentials"][0]["verdict"] == "forged" && v["valid"] == false,
        "{v}"
    );
    card.unplug()
}

#[test]
fn emergency_data_transplanted_from_another_citizens_card_is_not_valid() -> Result<()> {
    let _lock = serial();
    city();
    // Provision a second citizen with another blood type, then take their emergency record
    // (correctly signed, anchored and valid) straight from their card.
    let dir = tempfile::Builder::new()
        .prefix("civic-malicious-donor-")
        .tempdir()?;
    let donor_state = dir.path().join("donor.state");
    let donor = HostileCard::start(next_reader(), &donor_state, honest())?;
    let citizen = dir.path().join("donor.json");
    std::fs::write(
        &citizen,
        std::fs::read_to_string(citizen_file())?
            .replace("CIV-2026-0000-0001", "CIV-2026-0000-0002")
            .replace("Alice Example", "Dora Donor")
            .replace("\"A+\"", "\"O-\""),
    )?;
    let citizen = citizen.display().to_string();
    let r = civic(
        &[
            "provision",
            "--reader",
            &donor.reader(),
            "--citizen",
            &citizen,
            "--pin-stdin",
        ],
        Some(PIN),
    )?;
    expect(&donor, &r, 0, &[])?;
    donor.unplug()?;
    let mut direct = civic_e2e::vpcd::VpcdCard::start(&donor_state)?;
    let select = [
        0x00, 0xA4, 0x04, 0x00, 0x07, 0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01, 0x00,
    ];
    direct.transmit(&select)?;
    let mut verify = vec![0x00, ins::VERIFY, 0x00, 0x81, 0x06];
    verify.extend_from_slice(PIN.as_bytes());
    ensure!(direct.transmit(&verify)? == [0x90, 0x00], "donor PIN");
    let [p1, p2] = object::credential(3).to_be_bytes();
    let transplant = direct.transmit(&[0x00, ins::GET_DATA, p1, p2, 0x00, 0x00, 0x00])?;
    ensure!(transplant.ends_with(&[0x90, 0x00]), "donor slot 3");
    drop(direct);

    let (card, _dir) = hostile(rewrite_object(object::credential(3), move |_| {
        Reply::Send(transplant.clone())
    }))?;
    let r = scan(&card)?;
    expect(&card, &r, 1, &[])?;
    let v = scan_json(&r)?;
    let emergency = &v["credentials"][3];
    ensure!(
        emergency["verdict"] == "cloned"
            && emergency["reason"]
                .as_str()
                .is_some_and(|r| r.contains("belongs to card \"CIV-2026-0000-0002\""))
            && v["valid"] == false,
        "{v}"
    );
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// Out of order

#[test]
fn answers_lagging_one_command_behind_are_refused() -> Result<()> {
    let _lock = serial();
    // From the second command on, every answer is the genuine answer to the command before.
    let mut previous: Option<Vec<u8>> = None;
    let (card, _dir) = hostile(move |apdu: &[u8], card: &mut Genuine| {
        let genuine = card.transmit(apdu)?;
        if apdu[1] == ins::SELECT {
            previous = Some(genuine.clone());
            return Ok(Reply::Send(genuine));
        }
        Ok(Reply::Send(previous.replace(genuine).unwrap_or_default()))
    })?;
    let r = scan(&card)?;
    // GET CHALLENGE (the terminal authentication's first command) gets SELECT's FCI.
    expect(
        &card,
        &r,
        3,
        &["the card answered 71 data bytes to GET CHALLENGE (0000), which allows at most 16"],
    )?;
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// 61xx and 6Cxx

#[test]
fn endless_61xx_chain_with_data_is_cut_off() -> Result<()> {
    let _lock = serial();
    // Every answer to the directory and to GET RESPONSE: one byte and "61 01, one more".
    let (card, _dir) = hostile(move |apdu: &[u8], card: &mut Genuine| {
        let chained = apdu[1] == ins::GET_RESPONSE
            || (apdu[1] == ins::GET_DATA && p1p2(apdu) == object::DIRECTORY);
        if chained {
            return Ok(Reply::Send(vec![0x61, 0x61, 0x01]));
        }
        Ok(Reply::Send(card.transmit(apdu)?))
    })?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["kept answering 61xx (more data) to GET DATA (0103): gave up after 256 GET RESPONSE rounds"],
    )?;
    card.unplug()
}

#[test]
fn endless_empty_61xx_chain_is_cut_off_at_once() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(move |apdu: &[u8], card: &mut Genuine| {
        if apdu[1] == ins::GET_RESPONSE || apdu[1] == ins::SELECT {
            return Ok(Reply::Send(vec![0x61, 0x00]));
        }
        Ok(Reply::Send(card.transmit(apdu)?))
    })?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["kept answering 61xx (more data) to SELECT (0400): gave up after 1"],
    )?;
    let rounds = card
        .log()
        .iter()
        .filter(|e| e.command[1] == ins::GET_RESPONSE)
        .count();
    ensure!(rounds == 1, "{rounds} GET RESPONSE rounds");
    card.unplug()
}

#[test]
fn endless_6cxx_loop_is_refused_after_one_retry() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_all(ins::SELECT, |_, _| {
        Reply::Send(vec![0x6C, 0x10])
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["the card answered 6C10 (wrong Le) to SELECT (0400) even with the Le it asked for"],
    )?;
    let selects = card
        .log()
        .iter()
        .filter(|e| e.command[1] == ins::SELECT)
        .count();
    ensure!(selects == 2, "{selects} SELECTs");
    card.unplug()
}

#[test]
fn one_6cxx_naming_the_right_le_is_followed_and_the_scan_passes() -> Result<()> {
    let _lock = serial();
    let mut first = true;
    let (card, _dir) = hostile(move |apdu: &[u8], card: &mut Genuine| {
        let genuine = card.transmit(apdu)?;
        if apdu[1] == ins::SELECT && std::mem::take(&mut first) {
            let n = u8::try_from(genuine.len() - 2).unwrap_or(0);
            return Ok(Reply::Send(vec![0x6C, n]));
        }
        Ok(Reply::Send(genuine))
    })?;
    let r = scan(&card)?;
    expect(&card, &r, 0, &[])?;
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// Wrong and unknown status words

#[test]
fn unknown_status_word_to_select_is_named() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_all(ins::SELECT, |_, _| {
        Reply::Send(vec![0x6F, 0x00])
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["SELECT: the card said 6F00 (unknown error)"],
    )?;
    card.unplug()
}

#[test]
fn invalid_status_word_is_called_invalid() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_object(object::DIRECTORY, |_| {
        Reply::Send(vec![0x12, 0x34])
    }))?;
    let r = scan(&card)?;
    expect(
        &card,
        &r,
        3,
        &["GET DATA directory: the card said 1234 (not a valid ISO 7816-4 status word)"],
    )?;
    card.unplug()
}

#[test]
fn more_pin_tries_than_a_card_has_is_a_malformed_answer() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_all(ins::VERIFY, |_, _| {
        Reply::Send(vec![0x63, 0xC9])
    }))?;
    let r = scan_consent(&card)?;
    expect(
        &card,
        &r,
        3,
        &["VERIFY PIN: malformed answer from the card (the card reports more PIN tries left than a card has)"],
    )?;
    card.unplug()
}

#[test]
fn access_log_with_bad_tlv_fails_the_citizen_view_clearly() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_object(object::ACCESS_LOG, |_| {
        Reply::Send(ok_sw(vec![0x62, 0x05, 0x80]))
    }))?;
    let r = civic(
        &["view", "--reader", &card.reader(), "--log", "--pin-stdin"],
        Some(PIN),
    )?;
    expect(
        &card,
        &r,
        3,
        &["GET DATA access log: malformed answer from the card (bad TLV)"],
    )?;
    card.unplug()
}

#[test]
fn generated_key_point_of_64_bytes_stops_provisioning() -> Result<()> {
    let _lock = serial();
    city();
    let dir = tempfile::Builder::new()
        .prefix("civic-malicious-card-")
        .tempdir()?;
    let blank = dir.path().join("blank.state");
    let card = HostileCard::start(
        next_reader(),
        &blank,
        rewrite_all(ins::GENERATE_KEY, |_, genuine| {
            // 7F49 41 86 41 <65>: drop the last byte of the point, fix both lengths.
            let mut d = genuine[..genuine.len() - 3].to_vec();
            d[2] = 0x42;
            d[4] = 0x40;
            Reply::Send(ok_sw(d))
        }),
    )?;
    // Another citizen: the office refuses to issue a card id twice.
    let citizen = dir.path().join("citizen.json");
    std::fs::write(
        &citizen,
        std::fs::read_to_string(citizen_file())?
            .replace("CIV-2026-0000-0001", "CIV-2026-0000-0666"),
    )?;
    let citizen = citizen.display().to_string();
    let r = civic(
        &[
            "provision",
            "--reader",
            &card.reader(),
            "--citizen",
            &citizen,
            "--pin-stdin",
        ],
        Some(PIN),
    )?;
    expect(
        &card,
        &r,
        3,
        &["GENERATE ASYMMETRIC KEY PAIR: malformed answer from the card (EC point is not 65 bytes)"],
    )?;
    card.unplug()
}

#[test]
fn generated_key_the_card_does_not_hold_is_not_issued() -> Result<()> {
    let _lock = serial();
    city();
    let dir = tempfile::Builder::new()
        .prefix("civic-malicious-card-")
        .tempdir()?;
    // A well-formed P-256 key of someone else's (a key held outside any chip, say).
    let other = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let point = other.verifying_key().to_encoded_point(false);
    let mut answer = vec![0x7F, 0x49, 0x43, 0x86, 0x41];
    answer.extend_from_slice(point.as_bytes());
    let card = HostileCard::start(
        next_reader(),
        dir.path().join("blank.state"),
        rewrite_all(ins::GENERATE_KEY, move |_, _| {
            Reply::Send(ok_sw(answer.clone()))
        }),
    )?;
    let citizen = dir.path().join("citizen.json");
    std::fs::write(
        &citizen,
        std::fs::read_to_string(citizen_file())?
            .replace("CIV-2026-0000-0001", "CIV-2026-0000-0777"),
    )?;
    let citizen = citizen.display().to_string();
    let provision = |card: &HostileCard| {
        civic(
            &[
                "provision",
                "--reader",
                &card.reader(),
                "--citizen",
                &citizen,
                "--pin-stdin",
            ],
            Some(PIN),
        )
    };
    let r = provision(&card)?;
    expect(
        &card,
        &r,
        3,
        &["the card could not prove it holds the key it reported from GENERATE ASYMMETRIC KEY PAIR"],
    )?;
    card.unplug()?;
    // Nothing was issued for that card id: an honest blank card takes it.
    let card = HostileCard::start(next_reader(), dir.path().join("blank2.state"), honest())?;
    let r = provision(&card)?;
    expect(&card, &r, 0, &["CIV-2026-0000-0777"])?;
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// Slow and silent cards

#[test]
fn slow_card_within_the_bound_still_scans() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(move |apdu: &[u8], card: &mut Genuine| {
        Ok(Reply::Late(Duration::from_millis(30), card.transmit(apdu)?))
    })?;
    let r = scan(&card)?;
    expect(&card, &r, 0, &[])?;
    card.unplug()
}

#[test]
fn silent_card_times_out_with_a_clear_error() -> Result<()> {
    let _lock = serial();
    // The last APDU of a scan (PACE-CAM left no INTERNAL AUTHENTICATE): the second record.
    let (card, _dir) = hostile(rewrite_nth(ins::GET_DATA, 2, |_, _| Reply::Silent))?;
    let r = scan(&card)?;
    expect(&card, &r, 3, &["did not answer within 2s: it is frozen"])?;
    ensure!(r.took < Duration::from_secs(8), "took {:?}", r.took);
    card.unplug()
}

#[test]
fn silent_card_gives_the_library_a_timeout_then_refuses_further_use() -> Result<()> {
    use civic_reader::apdu::ApduMode;
    use civic_reader::session::{CardError, Session};
    use civic_reader::transport::{PcscTransport, TransportError};
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_all(ins::GET_DATA, |_, _| Reply::Silent))?;
    let reader = card.reader();
    let outcome = with_timeout(Duration::from_secs(10), move || -> Result<()> {
        let mut t = PcscTransport::connect_with_timeout(Some(&reader), Duration::from_millis(500))?;
        let mut s = Session::open(&mut t, ApduMode::Extended)?;
        let e = s.directory().expect_err("a silent card cannot answer");
        ensure!(
            matches!(
                &e,
                CardError::Apdu(civic_reader::apdu::ApduError::Transport(
                    TransportError::Timeout { .. }
                ))
            ),
            "{e:?}"
        );
        let e = s.directory().expect_err("the connection was given up");
        ensure!(e.to_string().contains("given up"), "{e}");
        Ok(())
    });
    ensure!(outcome.is_ok(), "the library hung on a silent card");
    outcome.unwrap_or(Ok(()))?;
    card.unplug()
}

// ---------------------------------------------------------------------------------------
// Secure messaging (issue 7): the hostile card terminates the channel itself (it holds the
// CAN), so it can also break the protection. `Reply::Raw` goes out unprotected.

/// A protected answer whose MAC does not verify: the session ends, nothing of it is used.
#[test]
fn protected_answer_with_a_bad_mac_is_a_secure_channel_error() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_object(object::DIRECTORY, |_| {
        // DO99 (status 9000) and a DO8E of zeros: well-formed, wrong MAC.
        let mut r = vec![0x99, 0x02, 0x90, 0x00, 0x8E, 0x08];
        r.extend_from_slice(&[0; 8]);
        r.extend_from_slice(&[0x90, 0x00]);
        Reply::Raw(r)
    }))?;
    let r = scan(&card)?;
    expect(&card, &r, 3, &["secure channel", "altered on the way"])?;
    card.unplug()
}

/// The genuine, correctly signed directory sent in plain inside the session: refused, not
/// read as card data.
#[test]
fn plain_answer_inside_the_session_is_a_secure_channel_error() -> Result<()> {
    let _lock = serial();
    let (card, _dir) = hostile(rewrite_object(object::DIRECTORY, Reply::Raw))?;
    let r = scan(&card)?;
    expect(&card, &r, 3, &["secure channel", "altered on the way"])?;
    card.unplug()
}
