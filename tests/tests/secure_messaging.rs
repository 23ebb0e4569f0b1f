//! Secure messaging through real pcscd + vpcd (issue 7): an issued card answers card data only
//! inside a PACE session; a flipped bit, a replay, a reordering or a wrong CAN is refused and
//! the session closed; `civic` finds the CAN (flag, environment, office book) or says why not.

use std::path::Path;

use anyhow::{ensure, Context as _, Result};
use card_applet::apdu::CommandApdu;
use card_applet::sm::{self, Channel, Password};
use civic_e2e::{pcscd, run_civic, serial, VirtualCard};

const PIN: &str = "482913";
const SELECT: &[u8] = &[
    0x00, 0xA4, 0x04, 0x00, 0x07, 0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01, 0x00,
];
const GET_INFO: &[u8] = &[0x00, 0xCA, 0x01, 0x01, 0x00];

fn civic(
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> Result<(i32, String)> {
    let home = home.display().to_string();
    let mut e = vec![("CIVIC_HOME", home.as_str())];
    e.extend_from_slice(env);
    let out = run_civic(args, stdin, &e)?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn ok(home: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let (code, out) = civic(home, args, stdin, &[])?;
    ensure!(
        code == 0,
        "`civic {}` exited {code}:\n{out}",
        args.join(" ")
    );
    Ok(out)
}

/// A city, its terminals, and one provisioned card in `reader`; returns the card's CAN.
fn issued_card(home: &Path, reader: &str) -> Result<String> {
    ok(home, &["authority", "init"], None)?;
    for (id, name, kind) in [
        ("identity-bureau", "City Identity Bureau", "identity"),
        ("health-bureau", "City Health Bureau", "health,emergency"),
        ("education-bureau", "City Education Bureau", "education"),
    ] {
        ok(
            home,
            &["issuer", "add", "--id", id, "--name", name, "--kinds", kind],
            None,
        )?;
    }
    ok(
        home,
        &[
            "terminal",
            "enroll",
            "--id",
            "clinic-01",
            "--role",
            "clinic",
        ],
        None,
    )?;
    let citizen = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/data/alice.json");
    let out = ok(
        home,
        &[
            "--json",
            "provision",
            "--reader",
            reader,
            "--citizen",
            &citizen.display().to_string(),
            "--pin-stdin",
        ],
        Some(PIN),
    )?;
    let printed: serde_json::Value = serde_json::from_str(&out).context("provision --json")?;
    let book = civic_reader::office::IssuanceBook::open(&home.join("office.sqlite"))?;
    let card_id = "CIV-2026-0000-0001";
    let can = book
        .can_of(card_id)?
        .context("the office recorded the CAN")?;
    ensure!(
        sm::valid_can(can.as_bytes()),
        "CAN {:?} is not 6 digits",
        can.len()
    );
    // Issue 7: the JSON output carries the CAN the operator prints on the card.
    ensure!(
        printed["can"].as_str() == Some(can.as_str()),
        "provision --json does not carry the CAN: {printed}"
    );
    Ok(can.to_string())
}

struct Pcsc {
    _ctx: pcsc::Context,
    card: pcsc::Card,
}

impl Pcsc {
    fn connect(reader: &str) -> Result<Self> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
        let name = std::ffi::CString::new(reader)?;
        let card = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
        Ok(Self { _ctx: ctx, card })
    }

    fn tx(&self, apdu: &[u8]) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        Ok(self.card.transmit(apdu, &mut buf)?.to_vec())
    }

    /// SELECT, then PACE with `can`.
    fn session(&self, can: &[u8]) -> Result<std::result::Result<Channel, u16>> {
        ensure!(self.tx(SELECT)?.ends_with(&[0x90, 0x00]), "SELECT");
        let mut transmit = |a: &[u8]| self.tx(a);
        match sm::establish(&mut transmit, &mut rand_core::OsRng, &Password::Can(can)) {
            Ok(ch) => Ok(Ok(ch)),
            Err(sm::PaceError::Refused { sw, .. }) => Ok(Err(sw)),
            Err(e) => anyhow::bail!("PACE: {e}"),
        }
    }
}

fn protect(ch: &mut Channel, apdu: &[u8]) -> Vec<u8> {
    let cmd = CommandApdu::parse(apdu).expect("a well-formed APDU");
    ch.protect_command(&cmd).expect("short enough to protect")
}

#[test]
fn issued_card_through_pcscd_needs_pace_and_refuses_tampering_replay_and_reordering() -> Result<()>
{
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(0)?;
    let reader = card.reader();
    let home = tempfile::Builder::new().prefix("civic-e2e-sm-").tempdir()?;
    let can = issued_card(home.path(), &reader)?;
    let c = Pcsc::connect(&reader)?;

    // Plain: SELECT answers (FCI), card data does not (6987).
    ensure!(c.tx(SELECT)?.ends_with(&[0x90, 0x00]));
    ensure!(
        c.tx(GET_INFO)? == [0x69, 0x87],
        "plain GET DATA on an issued card"
    );
    ensure!(
        c.tx(&[0x00, 0xCA, 0x02, 0x00, 0x00])? == [0x69, 0x87],
        "plain credential read"
    );

    // A wrong CAN: refused (63C2, 2 more this power cycle), no session.
    let wrong = if can == "000000" { "111111" } else { "000000" };
    ensure!(
        c.session(wrong.as_bytes())?.err() == Some(0x63C2),
        "wrong CAN"
    );

    // The right CAN: a protected GET DATA works.
    let mut ch = c
        .session(can.as_bytes())?
        .map_err(|sw| anyhow::anyhow!("PACE {sw:04X}"))?;
    let a = protect(&mut ch, GET_INFO);
    let r = ch
        .unprotect_response(&c.tx(&a)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        r.ends_with(&[0x90, 0x00]) && r.len() > 20,
        "protected card info: {r:02X?}"
    );

    // Replay of that command: 6988, session closed (the next good one fails too).
    ensure!(c.tx(&a)? == [0x69, 0x88], "replay");
    let next = protect(&mut ch, GET_INFO);
    ensure!(c.tx(&next)? == [0x69, 0x88], "old keys after a replay");

    // One flipped bit (in the MAC, in the header, in the Le object): 6988, session closed.
    for at in [1usize, 7, 12] {
        let mut ch = c
            .session(can.as_bytes())?
            .map_err(|sw| anyhow::anyhow!("PACE {sw:04X}"))?;
        let mut a = protect(&mut ch, GET_INFO);
        let i = at.min(a.len() - 2);
        a[i] ^= 0x01;
        let r = c.tx(&a)?;
        ensure!(
            r.len() == 2 && r != [0x90, 0x00],
            "flipped byte {i}: {r:02X?}"
        );
        let next = protect(&mut ch, GET_INFO);
        ensure!(
            c.tx(&next)? == [0x69, 0x88],
            "session open after flipped byte {i}"
        );
    }

    // Two commands reordered: 6988, session closed.
    let mut ch = c
        .session(can.as_bytes())?
        .map_err(|sw| anyhow::anyhow!("PACE {sw:04X}"))?;
    let first = protect(&mut ch, GET_INFO);
    let _ = protect(&mut ch, GET_INFO); // the answer's counter value
    let second = protect(&mut ch, GET_INFO);
    ensure!(c.tx(&second)? == [0x69, 0x88], "second before first");
    ensure!(
        c.tx(&first)? == [0x69, 0x88],
        "first after the session closed"
    );
    Ok(())
}

#[test]
fn civic_finds_the_can_or_says_it_needs_one() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(1)?;
    let reader = card.reader();
    let home = tempfile::Builder::new().prefix("civic-e2e-sm-").tempdir()?;
    let can = issued_card(home.path(), &reader)?;

    // The office's book has the CAN: card info works without a flag.
    let out = ok(home.path(), &["card-info", "--reader", &reader], None)?;
    ensure!(out.contains("CIV-2026-0000-0001"), "{out}");

    // Elsewhere (no book): refused with a sentence, exit 3; with --can or CIVIC_CAN it works.
    let elsewhere = tempfile::Builder::new().prefix("civic-e2e-sm-").tempdir()?;
    let (code, out) = civic(
        elsewhere.path(),
        &["card-info", "--reader", &reader],
        None,
        &[],
    )?;
    ensure!(
        code == 3 && out.contains("card access number"),
        "exit {code}:\n{out}"
    );
    let (code, out) = civic(
        elsewhere.path(),
        &["card-info", "--reader", &reader, "--can", &can],
        None,
        &[],
    )?;
    ensure!(code == 0, "--can: exit {code}:\n{out}");
    let (code, out) = civic(
        elsewhere.path(),
        &["card-info", "--reader", &reader],
        None,
        &[("CIVIC_CAN", &can)],
    )?;
    ensure!(code == 0, "CIVIC_CAN: exit {code}:\n{out}");

    // A wrong CAN: refused, exit 4, and the message says so.
    let wrong = if can == "000000" { "111111" } else { "000000" };
    let (code, out) = civic(
        elsewhere.path(),
        &["card-info", "--reader", &reader, "--can", wrong],
        None,
        &[],
    )?;
    ensure!(
        code == 4 && out.contains("access number"),
        "wrong CAN: exit {code}:\n{out}"
    );

    Ok(())
}
