//! Citizen: present the PIN, then read every credential on the card in full, with its
//! status in the registry, and (on request) the card's access log.

use anyhow::{Context, Result};
use civic_registry::credential::Credential;
use civic_registry::record::CardRecord;
use civic_registry::verdict::Verdict;
use civic_registry::{Registry, Watermark};
use serde::Serialize;

use crate::apdu::ApduMode;
use crate::session::{CardInfo, LogEntry, Pin, Session};
use crate::transport::Transport;

#[derive(Debug, Serialize)]
pub struct ViewedCredential {
    pub slot: u8,
    pub credential: Option<Credential>,
    pub verdict: Verdict,
    pub reason: String,
    /// The record as stored on the card (credential, signature, inclusion proof): what an
    /// export hands to another agency.
    #[serde(skip)]
    pub record: Vec<u8>,
}

#[derive(Debug, Serialize)]
pub struct ViewReport {
    pub card: CardInfo,
    pub credentials: Vec<ViewedCredential>,
    /// The card's access log, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<Vec<LogEntry>>,
    pub watermark: Watermark,
}

/// Read the card as its holder. A wrong or blocked PIN is an error carrying the card's answer
/// (see [`crate::session::CardError`]).
pub fn view<R: Registry>(
    t: &mut dyn Transport,
    mode: ApduMode,
    registry: &R,
    pin: &Pin,
    with_log: bool,
    now: u64,
) -> Result<ViewReport> {
    let mut tx = t.transaction().context("reserving the card")?;
    let session = Session::open(&mut *tx, mode).context("selecting the Civic Card application")?;
    let mut citizen = session.verify_pin(pin)?;
    let info = citizen.refresh_info()?.clone();
    let mut credentials = Vec::new();
    for entry in citizen.directory()? {
        let raw = if entry.kind == card_applet::protocol::kind::HEALTH {
            citizen.read_health(&entry)?
        } else {
            citizen.read_record(&entry)?
        };
        credentials.push(match CardRecord::decode(&raw) {
            Ok(record) => {
                // No chip evidence: the holder is reading their own card, not proving it.
                let r = registry.verdict(&record, None, now)?;
                ViewedCredential {
                    slot: entry.slot,
                    credential: r.credential,
                    verdict: r.verdict,
                    reason: r.reason,
                    record: raw,
                }
            }
            Err(e) => ViewedCredential {
                slot: entry.slot,
                credential: None,
                verdict: Verdict::Forged,
                reason: format!("the record on the card is malformed: {e}"),
                record: raw,
            },
        });
    }
    let log = if with_log {
        Some(citizen.access_log()?)
    } else {
        None
    };
    Ok(ViewReport {
        card: info,
        credentials,
        log,
        watermark: registry.watermark()?,
    })
}
