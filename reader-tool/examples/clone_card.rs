//! What a card cloner would do, for the demo and the end-to-end tests: read everything the
//! card gives to someone who knows the PIN (card id, credential records with their signatures
//! and proofs) and write it onto a blank card. The cloner cannot read the original's private
//! key, so the copy generates its own: chip authentication then exposes the copy.
//!
//! Usage: clone_card FROM_READER TO_READER PIN [CAN]
//!
//! The original is read inside a secure channel opened with the PIN. The copy gets the CAN
//! printed on the original (the cloner holds the card and can read it): the 4th argument,
//! or `CIVIC_CAN`, or, standing in for reading it off the plastic in the demo, the issuing
//! office's book in `CIVIC_HOME`.

use anyhow::{Context, Result};
use card_applet::protocol::kind;
use civic_reader::apdu::ApduMode;
use civic_reader::session::{Pin, Session, WriteRecords};
use civic_reader::sm::{CardPassword, SmTransport};
use civic_reader::transport::PcscTransport;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (from, to, pin, can) = match args.as_slice() {
        [from, to, pin] => (from, to, pin, None),
        [from, to, pin, can] => (from, to, pin, Some(can.clone())),
        _ => anyhow::bail!("usage: clone_card FROM_READER TO_READER PIN [CAN]"),
    };
    let pin = Pin::parse(pin).map_err(anyhow::Error::msg)?;
    let src = PcscTransport::connect(Some(from)).context("connecting to the original")?;
    let mut src = SmTransport::with_password(src, CardPassword::Pin(pin.clone()));
    let s = Session::open(&mut src, ApduMode::Extended)?;
    let card_id = s
        .info()
        .card_id
        .clone()
        .context("original has no card id")?;
    let mut s = s.verify_pin(&pin)?;
    let authority = s.authority_key()?;
    let mut records = Vec::new();
    for e in s.directory()? {
        let r = if e.kind == kind::HEALTH {
            s.read_health(&e)?
        } else {
            s.read_record(&e)?
        };
        records.push((e.slot, e.kind, r));
    }

    let can = match can.or_else(|| std::env::var("CIVIC_CAN").ok()) {
        Some(c) => c,
        None => civic_reader::datadir::DataDir::resolve(None)
            .and_then(|d| civic_reader::office::IssuanceBook::open(&d.office_db()))
            .and_then(|b| b.can_of(&card_id))?
            .map(|c| c.to_string())
            .context("the original's CAN: give it as the 4th argument or CIVIC_CAN")?,
    };
    let dst = PcscTransport::connect(Some(to)).context("connecting to the blank card")?;
    let mut dst = SmTransport::new(dst, Box::new(|_| None));
    let mut c = Session::open(&mut dst, ApduMode::Extended)?.personalise()?;
    c.set_card_id(&card_id)?;
    c.set_authority_key(&authority)?;
    c.generate_key()?;
    for (slot, kind, record) in &records {
        c.write_record(*slot, *kind, record)?;
    }
    c.set_pin(&pin)?;
    c.set_can(&can)?;
    c.activate()?;
    eprintln!(
        "copied card {card_id}: {} credential records onto the card in {to}",
        records.len()
    );
    Ok(())
}
