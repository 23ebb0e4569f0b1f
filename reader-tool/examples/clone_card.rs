//! What a card cloner would do, for the demo and the end-to-end tests: read everything a
//! card gives away without a PIN (card id, credential records with their signatures and
//! proofs) and write it onto a blank card. The cloner cannot read the original's private
//! key, so the copy generates its own: chip authentication then exposes the copy.
//!
//! Usage: clone_card FROM_READER TO_READER

use anyhow::{Context, Result};
use civic_reader::apdu::ApduMode;
use civic_reader::session::{Pin, Session, WriteRecords};
use civic_reader::transport::PcscTransport;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [from, to] = args.as_slice() else {
        anyhow::bail!("usage: clone_card FROM_READER TO_READER");
    };
    let mut src = PcscTransport::connect(Some(from)).context("connecting to the original")?;
    let mut s = Session::open(&mut src, ApduMode::Extended)?;
    let card_id = s
        .info()
        .card_id
        .clone()
        .context("original has no card id")?;
    let authority = s.authority_key()?;
    let mut records = Vec::new();
    for e in s.directory()? {
        records.push((e.slot, e.kind, s.read_record(e.slot)?));
    }

    let mut dst = PcscTransport::connect(Some(to)).context("connecting to the blank card")?;
    let mut c = Session::open(&mut dst, ApduMode::Extended)?.personalise()?;
    c.set_card_id(&card_id)?;
    c.set_authority_key(&authority)?;
    // The office secret is not readable from the original: the cloner picks its own.
    c.set_office_secret(&[0x5A; 32])?;
    c.generate_key()?;
    for (slot, kind, record) in &records {
        c.write_record(*slot, *kind, record)?;
    }
    c.set_pin(&Pin::parse("000000").map_err(anyhow::Error::msg)?)?;
    c.activate()?;
    eprintln!(
        "copied card {card_id}: {} credential records onto the card in {to}",
        records.len()
    );
    Ok(())
}
