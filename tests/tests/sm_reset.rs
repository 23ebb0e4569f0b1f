//! A card reset by another PC/SC client in the middle of a secure-messaging session (issue 7's
//! loose end), through real pcscd + vpcd: the reader's `SmTransport` re-establishes the session
//! on the same chip and sends the command again; it reports a reset that cost the operation
//! its terminal or PIN verification as the reset; and it refuses to carry on when another
//! chip answers after the reset (a card feeder swaps the card under a power cycle, which
//! pcscd reports to our handle as a reset, not as a removal).
//!
//! pcscd holds another client's connect until our transaction ends (checked here), so a reset
//! lands between transactions or between APDUs sent outside one: these tests send their APDUs
//! without a transaction, or begin one after the reset.
//!
//! ```text
//! cargo build --workspace --release --bins --examples
//! scripts/sandbox env CARGO_NET_OFFLINE=true cargo test --release -p civic-e2e --test sm_reset
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use card_applet::store::Store as _;
use civic_e2e::office::{Office, PIN};
use civic_e2e::{other_client_resets, pcscd, serial, with_timeout, VirtualCard};
use civic_reader::apdu::ApduMode;
use civic_reader::session::{Pin, Session};
use civic_reader::sm::{CardPassword, SmTransport};
use civic_reader::transport::{PcscTransport, Transport, TransportError};
use zeroize::Zeroizing;

const SELECT: &[u8] = &[
    0x00, 0xA4, 0x04, 0x00, 0x07, 0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01, 0x00,
];
/// GET DATA card info (no right needed).
const GET_INFO: &[u8] = &[0x00, 0xCA, 0x01, 0x01, 0x00];

/// Another application power-cycles the card in `reader` (`SCardReconnect(SCARD_UNPOWER_CARD)`,
/// as the provisioning benchmark's feeder does): a card feeder presents its next card, and
/// pcscd reports the cycle to our handle as SCARD_W_RESET_CARD, not as a removal.
fn other_client_power_cycles(reader: &str) -> Result<()> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
    let mut other = ctx.connect(
        &std::ffi::CString::new(reader)?,
        pcsc::ShareMode::Shared,
        pcsc::Protocols::ANY,
    )?;
    other.reconnect(
        pcsc::ShareMode::Shared,
        pcsc::Protocols::ANY,
        pcsc::Disposition::UnpowerCard,
    )?;
    other
        .disconnect(pcsc::Disposition::LeaveCard)
        .map_err(|(_, e)| e)?;
    Ok(())
}

/// The secure-messaging transport with the card's CAN, as `civic` builds it.
fn sm_transport(reader: &str, can: &str) -> Result<SmTransport<PcscTransport>> {
    Ok(SmTransport::with_password(
        PcscTransport::connect(Some(reader))?,
        CardPassword::Can(Zeroizing::new(can.to_owned())),
    ))
}

/// The CAN printed on the card in `state`.
fn can_of(state: &Path) -> Result<String> {
    let can = civic_e2e::vpcd::stored_can(state)?.context("the card has a CAN")?;
    Ok(String::from_utf8(can.to_vec())?)
}

/// A city and Alice's card, provisioned through `civic` in reader `index`, its state in `dir`.
fn issued_card(office: &Office, index: usize, dir: &Path) -> Result<VirtualCard> {
    let card = VirtualCard::start(index, dir.join("alice.state"))?;
    office.set_up_city()?;
    office.provision(&card.reader())?;
    Ok(card)
}

#[test]
fn reset_by_another_client_between_two_protected_apdus_reopens_the_session_on_the_same_chip(
) -> Result<()> {
    let _lock = serial();
    pcscd();
    let dir = tempfile::tempdir()?;
    let office = Office::new()?;
    let card = issued_card(&office, 0, dir.path())?;
    let can = can_of(card.state_path())?;
    let reader = card.reader();
    with_timeout(Duration::from_secs(60), move || -> Result<()> {
        let mut t = sm_transport(&reader, &can)?;
        let mut s = Session::open(&mut t, ApduMode::Extended)?;
        let before = s.refresh_info()?.clone();
        let entries = s.directory()?.len();

        // Between two protected APDUs: the card loses its session keys and SSC.
        other_client_resets(&reader)?;
        let after = s.refresh_info()?.clone();
        ensure!(after.card_id == before.card_id, "{after:?} vs {before:?}");
        ensure!(s.directory()?.len() == entries, "the directory changed");
        // The session now open is one PACE-CAM run of the same chip: its data verifies
        // against the key the card reported before the reset.
        let key = s.public_key()?;
        let cam = s
            .chip_authentication()
            .context("no chip data after recovery")?;
        ensure!(
            cam.verify(&key),
            "the recovered session's CAM data does not verify"
        );
        drop(s);
        ensure!(
            t.sessions_opened() == 2 && t.sessions_recovered() == 1,
            "sessions {} recovered {}",
            t.sessions_opened(),
            t.sessions_recovered()
        );

        // A reset between two transactions shows when the next one begins (pcscd reports it
        // to SCardBeginTransaction): the first protected APDU in it recovers the same way.
        other_client_resets(&reader)?;
        {
            let mut tx = t.transaction()?;
            let r = tx.transmit(GET_INFO)?;
            ensure!(
                r.ends_with(&[0x90, 0x00]),
                "GET DATA after the reset: {r:02X?}"
            );
        }
        ensure!(
            t.sessions_opened() == 3 && t.sessions_recovered() == 2,
            "sessions {} recovered {}",
            t.sessions_opened(),
            t.sessions_recovered()
        );

        // A SELECT after a reset starts an operation over: a new session, no recovery.
        other_client_resets(&reader)?;
        let r = t.transmit(SELECT)?;
        ensure!(
            r.ends_with(&[0x90, 0x00]),
            "SELECT after the reset: {r:02X?}"
        );
        ensure!(t.in_session(), "no session after SELECT");
        ensure!(
            t.sessions_opened() == 4 && t.sessions_recovered() == 2,
            "sessions {} recovered {}",
            t.sessions_opened(),
            t.sessions_recovered()
        );
        Ok(())
    })??;
    Ok(())
}

#[test]
fn pin_verification_lost_in_a_reset_is_reported_as_the_reset_not_as_a_missing_right() -> Result<()>
{
    let _lock = serial();
    pcscd();
    let dir = tempfile::tempdir()?;
    let office = Office::new()?;
    let card = issued_card(&office, 0, dir.path())?;
    let can = can_of(card.state_path())?;
    let reader = card.reader();
    with_timeout(Duration::from_secs(60), move || -> Result<()> {
        let mut t = sm_transport(&reader, &can)?;
        let pin = Pin::parse(PIN).map_err(anyhow::Error::msg)?;
        let mut citizen = Session::open(&mut t, ApduMode::Extended)?.verify_pin(&pin)?;
        citizen.access_log()?;

        other_client_resets(&reader)?;
        // The reader re-opens the channel (same chip, same CAN) but does not present the PIN
        // again on its own: the card answers 6982, and the error names the reset.
        let e = anyhow::Error::new(citizen.access_log().unwrap_err());
        let msg = format!("{e:#}");
        ensure!(
            matches!(
                civic_reader::transport::transport_error_in(&e),
                Some(TransportError::ResetDuringOperation(_))
            ),
            "not a reset error: {msg}"
        );
        ensure!(
            msg.contains("reset during the operation") && msg.contains("6982"),
            "{msg}"
        );
        eprintln!("after the reset: {msg}");
        drop(citizen);
        ensure!(t.sessions_recovered() == 1, "{}", t.sessions_recovered());
        // The PIN's tries were not touched by any of it.
        let mut s = Session::open(&mut t, ApduMode::Extended)?;
        ensure!(s.pin_tries_left()? == 3, "PIN tries changed");
        Ok(())
    })??;
    Ok(())
}

/// Start `civic-card --feed N` in reader `index` with the ring `base.0 .. base.{N-1}`: each
/// power-off presents the next card, and pcscd sees a power cycle, not a removal.
fn feeder(index: usize, base: &Path, n: usize) -> Result<VirtualCard> {
    let feed = format!("exec \"$0\" \"$@\" --feed {n}");
    VirtualCard::start_wrapped(index, base, &["sh", "-c", &feed])
}

/// Write a copy of the card state `from` to `to`, changed by `change`.
fn write_variant(
    from: &Path,
    to: &Path,
    change: impl FnOnce(&mut card_applet::state::PersistentState),
) -> Result<()> {
    let card = card_applet::Card::with_os_rng(card_applet::FileStore::new(from))
        .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    let mut state = card.state().clone();
    change(&mut state);
    let bytes = state
        .encode()
        .map_err(|_| anyhow::anyhow!("state too large"))?;
    card_applet::FileStore::new(to)
        .commit(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", to.display()))?;
    Ok(())
}

#[test]
fn card_swapped_under_a_reset_is_refused_instead_of_mixing_two_cards() -> Result<()> {
    let _lock = serial();
    pcscd();
    let dir = tempfile::tempdir()?;
    let office = Office::new()?;
    let mut alice = issued_card(&office, 0, dir.path())?;
    let can = can_of(alice.state_path())?;
    let state = alice.state_path().to_path_buf();
    alice.stop()?;

    // The ring: Alice's card; a copy with her card id and CAN but a chip key of its own (what
    // a cloner without her key can make); a card with another id and the same CAN.
    let base = dir.path().join("feed");
    std::fs::copy(&state, dir.path().join("feed.0"))?;
    write_variant(&state, &dir.path().join("feed.1"), |s| {
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        s.card_key = Some(Zeroizing::new(key.to_bytes().into()));
    })?;
    write_variant(&state, &dir.path().join("feed.2"), |s| {
        s.card_id = Some(b"CIV-2026-0000-0002".to_vec());
    })?;
    let ring = feeder(0, &base, 3)?;
    let reader = ring.reader();

    with_timeout(Duration::from_secs(60), move || -> Result<()> {
        let mut t = sm_transport(&reader, &can)?;
        let mut s = Session::open(&mut t, ApduMode::Extended)?;
        s.refresh_info()?;
        let alice_key = s.public_key()?;

        // Power cycle: the copy is in the reader now.
        other_client_power_cycles(&reader)?;
        let e = anyhow::Error::new(s.directory().unwrap_err());
        let msg = format!("{e:#}");
        eprintln!("copy after the reset: {msg}");
        ensure!(
            matches!(
                civic_reader::transport::transport_error_in(&e),
                Some(TransportError::ResetDuringOperation(_))
            ) && msg.contains("not the one the operation started with"),
            "{msg}"
        );
        // Nothing the copy said stands in for Alice's chip: no chip data, no session.
        ensure!(s.chip_authentication().is_none(), "chip data kept");
        drop(s);
        ensure!(!t.in_session(), "the session stayed open");
        ensure!(t.sessions_recovered() == 0, "{}", t.sessions_recovered());

        // A new operation on the copy is a new operation (its chip check against the
        // identity credential is the scan's business): its CAM data does not verify against
        // Alice's key.
        let mut s = Session::open(&mut t, ApduMode::Extended).context("SELECT the copy")?;
        let cam = s.chip_authentication().context("no chip data")?;
        ensure!(!cam.verify(&alice_key), "the copy proved Alice's key");
        s.refresh_info().context("card info of the copy")?;

        // Power cycle: a card with another id. Refused at its SELECT, before any password.
        other_client_power_cycles(&reader).context("second power cycle")?;
        let e = anyhow::Error::new(s.refresh_info().unwrap_err());
        let msg = format!("{e:#}");
        eprintln!("other card after the reset: {msg}");
        ensure!(
            msg.contains("another card answers now")
                && msg.contains("CIV-2026-0000-0001 before, CIV-2026-0000-0002 now"),
            "{msg}"
        );
        Ok(())
    })??;
    Ok(())
}

/// pcscd holds another client's connect (and so its reset) until our transaction ends: the
/// reason the tests above reset between transactions. If this changes, a reset can land
/// inside a workflow's transaction too (the recovery handles it the same way).
#[test]
fn pcscd_holds_another_clients_reset_until_our_transaction_ends() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(0)?;
    let reader = card.reader();
    with_timeout(Duration::from_secs(30), move || -> Result<()> {
        let name = std::ffi::CString::new(reader.as_str())?;
        let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
        let mut mine = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
        let tx = mine.transaction()?;
        let started = Instant::now();
        let other = std::thread::spawn(move || -> Result<Duration> {
            other_client_resets(&reader)?;
            Ok(started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(500));
        let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        let r = tx.transmit(SELECT, &mut buf)?.to_vec();
        ensure!(r.ends_with(&[0x90, 0x00]), "{r:02X?}");
        drop(tx);
        let reset_after = other.join().expect("the other client's thread")?;
        ensure!(
            reset_after >= Duration::from_millis(500),
            "the other client reset the card inside our transaction ({reset_after:?})"
        );
        match mine.transmit(SELECT, &mut buf) {
            Err(pcsc::Error::ResetCard) => {}
            other => anyhow::bail!("after the transaction: {other:?}"),
        }
        let _ = mine.disconnect(pcsc::Disposition::LeaveCard);
        Ok(())
    })??;
    Ok(())
}
