//! Self-test of the end-to-end harness: pcscd with four readers, cards that come and go,
//! and a frozen card that does not hang the test.

use std::ffi::CString;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use civic_e2e::{
    card_present, list_readers, pcscd, reader_name, serial, with_timeout, TimedOut, VirtualCard,
    CARD_SEEN_TIMEOUT, READERS,
};

const SELECT: [u8; 13] = [
    0x00, 0xA4, 0x04, 0x00, 0x07, 0xF0, 0x43, 0x49, 0x56, 0x49, 0x43, 0x01, 0x00,
];

/// SELECT the applet in `reader` with the pcsc crate; returns the status word.
fn select_sw(reader: &str) -> Result<u16> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
    let name = CString::new(reader)?;
    let card = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    let rsp = card.transmit(&SELECT, &mut buf)?;
    ensure!(rsp.len() >= 2, "short response {rsp:02X?}");
    let sw = u16::from_be_bytes([rsp[rsp.len() - 2], rsp[rsp.len() - 1]]);
    // Dropping a Card resets it; leave it as it is.
    card.disconnect(pcsc::Disposition::LeaveCard)
        .map_err(|(_, e)| e)?;
    Ok(sw)
}

fn present(reader: String) -> Result<bool> {
    with_timeout(Duration::from_secs(5), move || card_present(&reader))?
}

#[test]
fn pcscd_lists_four_readers() -> Result<()> {
    let _lock = serial();
    let p = pcscd();
    ensure!(p.is_running(), "pcscd not running");
    let names = with_timeout(Duration::from_secs(5), list_readers)??;
    for r in READERS {
        ensure!(names.iter().any(|n| n == r), "{r} missing from {names:?}");
    }
    // Empty once pcscd has noticed that the previous test's cards are gone (400 ms poll).
    for i in 0..4 {
        civic_e2e::wait_card_state(&reader_name(i), false, CARD_SEEN_TIMEOUT)?;
    }
    Ok(())
}

#[test]
fn killed_card_leaves_pcscd_running_and_a_restarted_card_is_seen() -> Result<()> {
    let _lock = serial();
    let p = pcscd();
    let pid = p.pid().context("pcscd pid")?;
    let mut card = VirtualCard::blank(1)?;
    ensure!(present(card.reader())?, "card not present after start");
    // The other readers are empty: cards do not leak between slots.
    for i in [0, 2, 3] {
        civic_e2e::wait_card_state(&reader_name(i), false, CARD_SEEN_TIMEOUT)?;
    }
    let reader = card.reader();
    ensure!(
        with_timeout(Duration::from_secs(5), move || select_sw(&reader))?? == 0x9000,
        "SELECT did not answer 9000"
    );

    card.kill();
    card.wait_absent(CARD_SEEN_TIMEOUT)?;
    ensure!(p.pid() == Some(pid), "pcscd died or changed with the card");
    let names = with_timeout(Duration::from_secs(5), list_readers)??;
    ensure!(names.len() == 4, "readers after the kill: {names:?}");

    card.restart()?;
    ensure!(present(card.reader())?, "restarted card not seen");
    let reader = card.reader();
    ensure!(
        with_timeout(Duration::from_secs(5), move || select_sw(&reader))?? == 0x9000,
        "SELECT after restart did not answer 9000"
    );
    let status = card.stop()?;
    ensure!(
        status.success(),
        "civic-card exited with {status} on SIGTERM"
    );
    card.wait_absent(CARD_SEEN_TIMEOUT)?;
    Ok(())
}

#[test]
fn frozen_card_times_out_instead_of_hanging() -> Result<()> {
    let _lock = serial();
    pcscd();
    let card = VirtualCard::blank(3)?;
    card.pause()?;
    let reader = card.reader();
    let frozen = with_timeout(Duration::from_secs(2), move || select_sw(&reader));
    ensure!(
        matches!(frozen, Err(TimedOut(_))),
        "a transmit to a frozen card returned: {frozen:?}"
    );
    card.resume()?;
    // The abandoned call completes once the card runs again; a new one works.
    let reader = card.reader();
    let sw = with_timeout(Duration::from_secs(10), move || select_sw(&reader))??;
    ensure!(sw == 0x9000, "SELECT after resume: {sw:04X}");
    Ok(())
}
