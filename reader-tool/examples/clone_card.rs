//! What a card cloner would do, for the demo and the end-to-end tests: read everything the
//! card gives to someone who knows the PIN (card id, credential records with their signatures
//! and proofs) and write it onto a blank card. The cloner cannot read the original's private
//! key, so the copy generates its own: chip authentication then exposes the copy.
//!
//! Usage: clone_card FROM_READER TO_READER PIN

use anyhow::{Context, Result};
use card_applet::protocol::kind;
use civic_reader::apdu::ApduMode;
use civic_reader::session::{Pin, Session, WriteRecords};
use civic_reader::transport::PcscTransport;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [from, to, pin] = args.as_slice() else {
        anyhow::bail!("usage: clone_card FROM_READER TO_READER PIN");
    };
    let pin = Pin::parse(pin).map_err(anyhow::Error::msg)?;
    let mut src = PcscTransport::connect(Some(from)).context("connecting to the original")?;
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

    let mut dst = PcscTransport::connect(Some(to)).context("connecting to the blank card")?;
    let mut c = Session::open(&mut dst, ApduMode::Extended)?.personalise()?;
    c.set_card_id(&card_id)?;
    c.set_authority_key(&authority)?;
    c.generate_key()?;
    for (slot, kind, record) in &records {
        c.write_record(*slot, *kind, record)?;
    }
    c.set_pin(&pin)?;
    c.activate()?;
    eprintln!(
        "copied card {card_id}: {} credential records onto the card in {to}",
        records.len()
    );
    Ok(())
}
