//! Clinic: prove the card is the one its identity credential names (chip authentication),
//! authenticate the clinic's terminal to the card, read what the terminal may read (the full
//! health record only with the citizen's PIN: consent), and ask the registry for a verdict on
//! every credential read.

use anyhow::{Context, Result};
use card_applet::protocol::{access, internal_auth_message, kind};
use civic_registry::credential::{Claims, Credential, Kind};
use civic_registry::record::CardRecord;
use civic_registry::verdict::{CardEvidence, Verdict};
use civic_registry::{Registry, Watermark};
use p256::ecdsa::signature::Verifier;
use serde::Serialize;

use crate::apdu::ApduMode;
use crate::session::{
    read_needs, read_what, CardError, CardInfo, DirEntry, Grant, Pin, Session, TerminalKey,
};
use crate::transport::Transport;

/// The outcome of chip authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChipCheck {
    /// The card proved it holds the key (PACE-CAM's chip authentication data, or a signature
    /// over a fresh challenge).
    Passed,
    /// The proof did not verify (or the card gave none): the card does not hold the key.
    Failed,
    /// The card has no key at all.
    NoKey,
}

/// The verdict on one credential slot, or why it was not read.
#[derive(Debug, Clone, Serialize)]
pub struct SlotVerdict {
    pub slot: u8,
    pub kind: Option<Kind>,
    /// `None`: not read (the terminal lacks the right, or consent was not given).
    pub verdict: Option<Verdict>,
    pub reason: String,
    pub issuer: Option<String>,
    pub summary: Option<String>,
    #[serde(skip)]
    pub credential: Option<Credential>,
}

/// The whole scan.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub card: CardInfo,
    pub chip: ChipCheck,
    pub terminal: Grant,
    pub consent: bool,
    pub credentials: Vec<SlotVerdict>,
    /// True only when the chip check passed, the identity credential was read and every
    /// credential read is valid.
    pub valid: bool,
    /// Why the card as a whole is not valid, if it is not.
    pub problem: Option<String>,
    pub watermark: Watermark,
}

/// Scan the card behind `t` with a clinic terminal; `consent` is the citizen's PIN, given to
/// read the full health record. Errors are "could not run"; a negative outcome is a report.
pub fn scan<R: Registry>(
    t: &mut dyn Transport,
    mode: ApduMode,
    registry: &R,
    terminal: &TerminalKey<'_>,
    consent: Option<&Pin>,
    now: u64,
) -> Result<ScanReport> {
    let mut tx = t.transaction().context("reserving the card")?;
    let card = Session::open(&mut *tx, mode).context("selecting the Civic Card application")?;
    let info = card.info().clone();
    let card_id = info
        .card_id
        .clone()
        .context("the card has no card id: it was never personalised")?;

    let mut term = card
        .authenticate(terminal, now)
        .context("authenticating the clinic terminal to the card")?;
    let grant = term.grant().clone();
    let entries = term
        .directory()
        .context("reading the card's credential directory")?;
    let mut raw: Vec<(DirEntry, Result<Vec<u8>, CardError>)> = Vec::new();
    for e in entries.iter().filter(|e| e.kind != kind::HEALTH) {
        // A read the terminal's certificate does not grant is not sent: the card would only
        // answer 6982 (CONTRACTS.md, issue 3 card rules), and each APDU costs a round trip
        // (a tap, on a contactless reader).
        let read = match read_right(e.kind) {
            Some(bit) if !grant.has(bit) => Err(CardError::MissingRight {
                what: read_what(e.kind),
                needed: read_needs(e.kind),
            }),
            _ => term.read_record(e),
        };
        raw.push((*e, read));
    }

    // Chip authentication against the card key that the identity credential names (the
    // registry then verifies that credential: ICAO 9303's passive authentication of the chip
    // key). With a secure channel opened by PACE-CAM the card has already proved the key in
    // the PACE run (Doc 9303-11 4.4.3.5.2: PK_Map,IC == CA_IC * PK_IC), checked here now that
    // the key is known; otherwise, as ICAO active authentication, the card signs a fresh
    // challenge (INTERNAL AUTHENTICATE). The card's own report of its key (GET DATA) is read
    // only when no identity credential names one. No verdict is formed before this check:
    // every credential is judged with its outcome.
    let named_key = raw
        .iter()
        .find(|(e, _)| e.kind == kind::IDENTITY)
        .and_then(|(_, r)| r.as_ref().ok())
        .and_then(|bytes| identity_card_key(bytes));
    let (chip, chip_key) = match term.chip_authentication() {
        Some(cam) => chip_authenticate_cam(&mut term, &cam, named_key),
        None => chip_authenticate(&mut term, &card_id, named_key),
    }
    .context("chip authentication (the card proving it holds its key)")?;
    let evidence = CardEvidence {
        card_id: card_id.clone(),
        chip_key,
    };

    let health: Vec<DirEntry> = entries
        .iter()
        .filter(|e| e.kind == kind::HEALTH)
        .copied()
        .collect();
    match consent {
        Some(pin) if !health.is_empty() => {
            let mut consented = term
                .consent(pin)
                .context("presenting the citizen's PIN (consent)")?;
            for e in &health {
                raw.push((*e, consented.read_health(e)));
            }
        }
        _ => {
            for e in &health {
                raw.push((
                    *e,
                    Err(CardError::MissingRight {
                        what: "reading the full health record",
                        needed: "the citizen's consent: their PIN (scan with --consent)",
                    }),
                ));
            }
        }
    }
    drop(tx);
    raw.sort_by_key(|(e, _)| e.slot);

    let mut credentials = Vec::new();
    for (entry, read) in raw {
        credentials.push(match read {
            Ok(bytes) => judge(registry, &entry, &bytes, &evidence, chip, now)?,
            Err(e @ CardError::MissingRight { .. }) => SlotVerdict {
                slot: entry.slot,
                kind: Kind::from_byte(entry.kind),
                verdict: None,
                reason: e.to_string(),
                issuer: None,
                summary: None,
                credential: None,
            },
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("reading credential slot {}", entry.slot)))
            }
        });
    }

    // The identity credential binds the card key to the citizen; if this chip is not that
    // card, nothing else on it speaks for the citizen either, however genuine the data.
    let copied = credentials
        .iter()
        .any(|c| c.kind == Some(Kind::Identity) && c.verdict == Some(Verdict::Cloned));
    if copied {
        for c in credentials
            .iter_mut()
            .filter(|c| c.verdict == Some(Verdict::Valid))
        {
            c.verdict = Some(Verdict::Cloned);
            c.reason = "genuine data on a copied card (see the identity credential)".to_owned();
        }
    }

    let has_identity = credentials
        .iter()
        .any(|c| c.kind == Some(Kind::Identity) && c.credential.is_some());
    let problem = if copied {
        Some(
            "this card is a copy: its chip key is not the key in the identity credential"
                .to_owned(),
        )
    } else if chip != ChipCheck::Passed {
        Some(
            "chip authentication failed: this card is not the one its credentials were issued to"
                .to_owned(),
        )
    } else if !has_identity {
        Some("no identity credential: nothing binds this card's key to a citizen".to_owned())
    } else {
        credentials
            .iter()
            .find(|c| c.verdict.is_some_and(|v| !v.is_valid()))
            .map(|c| {
                format!(
                    "{} credential {}",
                    c.kind.map(|k| k.as_str()).unwrap_or("unknown"),
                    c.verdict.map(|v| v.label()).unwrap_or("?")
                )
            })
    };
    Ok(ScanReport {
        card: info,
        chip,
        terminal: grant,
        consent: consent.is_some(),
        valid: problem.is_none(),
        problem,
        credentials,
        watermark: registry.watermark()?,
    })
}

/// The registry's verdict on one record read from the card.
fn judge<R: Registry>(
    registry: &R,
    entry: &DirEntry,
    bytes: &[u8],
    evidence: &CardEvidence,
    chip: ChipCheck,
    now: u64,
) -> Result<SlotVerdict> {
    let record = match CardRecord::decode(bytes) {
        Ok(r) => r,
        Err(e) => {
            return Ok(SlotVerdict {
                slot: entry.slot,
                kind: Kind::from_byte(entry.kind),
                verdict: Some(Verdict::Forged),
                reason: format!("the record on the card is malformed: {e}"),
                issuer: None,
                summary: None,
                credential: None,
            })
        }
    };
    let report = registry
        .verdict(&record, Some(evidence), now)
        .context("asking the registry for a verdict")?;
    let mut verdict = report.verdict;
    let mut reason = report.reason;
    // A card that cannot prove its key is a copy, whatever its data says.
    if chip != ChipCheck::Passed && verdict == Verdict::Valid {
        verdict = Verdict::Cloned;
        reason = if entry.kind == kind::IDENTITY {
            "The chip cannot sign with the card key in the identity credential.".to_owned()
        } else {
            "the card could not prove it holds its key".to_owned()
        };
    }
    let cred = report.credential;
    if let Some(c) = &cred {
        if c.kind.as_byte() != entry.kind && verdict == Verdict::Valid {
            verdict = Verdict::Forged;
            reason = format!("slot {} is labelled with another kind", entry.slot);
        }
    }
    Ok(SlotVerdict {
        slot: entry.slot,
        kind: cred.as_ref().map(|c| c.kind),
        verdict: Some(verdict),
        reason,
        issuer: cred
            .as_ref()
            .and_then(|c| issuer_name(registry, &c.issuer_id)),
        summary: cred.as_ref().map(|c| super::summary(&c.claims)),
        credential: cred,
    })
}

fn issuer_name<R: Registry>(registry: &R, id: &str) -> Option<String> {
    registry
        .issuer_certs(id)
        .ok()?
        .last()
        .map(|r| r.body.name.clone())
}

/// The access bit a terminal needs to read a credential of kind `k` without the PIN, if the
/// reader knows it (the full health record also needs consent and is handled apart).
fn read_right(k: u8) -> Option<u8> {
    match k {
        kind::IDENTITY => Some(access::READ_IDENTITY),
        kind::EMERGENCY => Some(access::READ_EMERGENCY),
        kind::EDUCATION => Some(access::READ_EDUCATION),
        _ => None,
    }
}

/// The card key named by an identity record read from the card, unverified: only to check
/// the chip's signature against it. The registry verifies the credential itself (issuer
/// signature, anchoring, status), so a key from a forged record makes a forged verdict.
fn identity_card_key(record: &[u8]) -> Option<[u8; 65]> {
    let record = CardRecord::decode(record).ok()?;
    match record.credential.credential_unverified().ok()?.claims {
        Claims::Identity(id) => <[u8; 65]>::try_from(id.card_public_key.as_slice()).ok(),
        _ => None,
    }
}

/// The chip key to authenticate against: `named` (the key in the identity credential) or,
/// without one, the key the card reports (GET DATA); `None` for a card without a key.
fn chip_key<S>(card: &mut Session<'_, S>, named: Option<[u8; 65]>) -> Result<Option<[u8; 65]>> {
    if named.is_some() {
        return Ok(named);
    }
    match card.public_key() {
        Ok(k) => Ok(Some(k)),
        Err(CardError::Refused { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Chip authentication from the secure channel's PACE-CAM run (Doc 9303-11 4.4.3.5.2),
/// against `named` (the key in the identity credential) or, without one, the key the card
/// reports. No APDU when the identity credential names the key.
fn chip_authenticate_cam<S>(
    card: &mut Session<'_, S>,
    cam: &card_applet::sm::ChipAuthentication,
    named: Option<[u8; 65]>,
) -> Result<(ChipCheck, [u8; 65])> {
    let Some(key) = chip_key(card, named)? else {
        return Ok((ChipCheck::NoKey, [0u8; 65]));
    };
    let check = if cam.verify(&key) {
        ChipCheck::Passed
    } else {
        ChipCheck::Failed
    };
    Ok((check, key))
}

/// Send a fresh random challenge and check the card's signature over it with `named` (the
/// key in the identity credential), or, without one, with the key the card reports. With
/// `named`, a copy holding a key of its own fails here; otherwise the registry compares the
/// reported key with the identity credential.
fn chip_authenticate<S>(
    card: &mut Session<'_, S>,
    card_id: &str,
    named: Option<[u8; 65]>,
) -> Result<(ChipCheck, [u8; 65])> {
    let Some(key) = chip_key(card, named)? else {
        return Ok((ChipCheck::NoKey, [0u8; 65]));
    };
    let mut challenge = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut challenge);
    let sig = match card.internal_authenticate(&challenge) {
        Ok(sig) => sig,
        // A card without a key of its own cannot sign.
        Err(CardError::Refused { .. }) => return Ok((ChipCheck::NoKey, key)),
        Err(e) => return Err(e.into()),
    };
    let passed = (|| {
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key).ok()?;
        let sig = p256::ecdsa::Signature::from_slice(&sig).ok()?;
        vk.verify(&internal_auth_message(card_id.as_bytes(), &challenge), &sig)
            .ok()
    })()
    .is_some();
    Ok((
        if passed {
            ChipCheck::Passed
        } else {
            ChipCheck::Failed
        },
        key,
    ))
}
