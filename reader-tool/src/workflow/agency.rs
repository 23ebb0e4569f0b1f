//! Agencies that share no database verify each other's attestations through the registry
//! alone: the citizen exports a credential with its inclusion proof; the agency checks the
//! issuer's signature, the issuer's authorisation, the proof against the anchored batch root
//! and the status bits. No card, no issuer database, no personal data in the registry.

use anyhow::{bail, Context, Result};
use civic_registry::record::CardRecord;
use civic_registry::verdict::{Verdict, VerdictReport};
use civic_registry::Registry;
use serde::{Deserialize, Serialize};

/// The export format's name and version.
pub const FORMAT: &str = "civic-card/credential-export/v1";

/// An exported credential: the card record (COSE_Sign1 credential, batch id, inclusion proof)
/// as hex, in a small JSON envelope.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub format: String,
    pub card_id: String,
    pub kind: String,
    /// Hex of the CBOR card record.
    pub record: String,
}

/// Wrap a record read from the card.
pub fn export(card_id: &str, kind: &str, record: &[u8]) -> Vec<u8> {
    let e = Export {
        format: FORMAT.to_owned(),
        card_id: card_id.to_owned(),
        kind: kind.to_owned(),
        record: hex::encode(record),
    };
    // Serialising a struct of strings cannot fail.
    serde_json::to_vec_pretty(&e).unwrap_or_default()
}

/// The registry's verdict on an exported credential. The envelope's card id and kind are
/// only labels: what counts is the signed credential inside the record.
pub fn verify<R: Registry>(registry: &R, file: &[u8], now: u64) -> Result<VerdictReport> {
    let e: Export = serde_json::from_slice(file).context("not a credential export (JSON)")?;
    if e.format != FORMAT {
        bail!("unknown export format {:?} (expected {FORMAT})", e.format);
    }
    let bytes = hex::decode(e.record.trim()).context("the record is not hex")?;
    match CardRecord::decode(&bytes) {
        Ok(record) => Ok(registry.verdict(&record, None, now)?),
        Err(err) => Ok(VerdictReport {
            verdict: Verdict::Forged,
            reason: format!("the exported record cannot be decoded ({err})"),
            credential: None,
            watermark: registry.watermark()?,
        }),
    }
}
