//! The verdict on one credential, in one call, with the watermark it rests on.

use serde::Serialize;

use crate::credential::{Claims, Credential};
use crate::record::CardRecord;
use crate::status::CredentialStatus;
use crate::{IssuerRecord, Registry, Result, Watermark};

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Valid,
    Revoked,
    Suspended,
    Expired,
    UnknownIssuer,
    IssuerNotAuthorised,
    /// Signed by an issuer key the authority retired (after a compromise) from a time at or
    /// before the credential's issue time or its anchoring.
    IssuerKeyRetired,
    NotAnchored,
    Forged,
    Cloned,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Valid => "VALID",
            Verdict::Revoked => "REVOKED",
            Verdict::Suspended => "SUSPENDED",
            Verdict::Expired => "EXPIRED",
            Verdict::UnknownIssuer => "UNKNOWN ISSUER",
            Verdict::IssuerNotAuthorised => "ISSUER NOT AUTHORISED",
            Verdict::IssuerKeyRetired => "ISSUER KEY RETIRED",
            Verdict::NotAnchored => "NOT ANCHORED",
            Verdict::Forged => "FORGED",
            Verdict::Cloned => "CLONED",
        }
    }

    pub fn is_valid(self) -> bool {
        self == Verdict::Valid
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What the reader learnt from the physical card in this session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardEvidence {
    pub card_id: String,
    /// The key that just answered INTERNAL AUTHENTICATE, already verified by the reader.
    pub chip_key: [u8; 65],
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct VerdictReport {
    pub verdict: Verdict,
    /// One plain sentence.
    pub reason: String,
    /// The decoded credential; `None` if undecodable.
    pub credential: Option<Credential>,
    pub watermark: Watermark,
}

/// Assess a record given as the bytes read from a card slot: a record that does not decode is
/// [`Verdict::Forged`].
pub fn assess_bytes<R: Registry + ?Sized>(
    reg: &R,
    record: &[u8],
    evidence: Option<&CardEvidence>,
    now: u64,
) -> Result<VerdictReport> {
    match CardRecord::decode(record) {
        Ok(r) => assess(reg, &r, evidence, now),
        Err(e) => Ok(VerdictReport {
            verdict: Verdict::Forged,
            reason: format!("The card record cannot be decoded ({e})."),
            credential: None,
            watermark: reg.watermark()?,
        }),
    }
}

/// The verdict on `record` at time `now` (unix seconds). `Err` only when the registry could not
/// be consulted; every negative answer is a verdict.
///
/// Checks, in order: decodable, issuer known, an issuer certificate whose window contains the
/// issue time, issuer signature, kind allowed by that certificate, signing key not retired at
/// the issue time, anchored (batch of that issuer, status index in its range, proof reaching its
/// root from the commitment), signing key not retired when that batch was anchored, card matches
/// the evidence (card id, and for identity credentials the chip key), status, expiry.
///
/// Key retirement: the issue time is the issuer's own claim, and whoever holds a compromised key
/// can backdate a credential to before the retirement time T. The anchoring block's time is not
/// the issuer's to choose (the registry stamps it), so a credential signed by a retired key is
/// refused when it claims to be issued at or after T **or** was anchored in a block at or after
/// T. A genuine credential signed before T but anchored after T is refused too: nothing tells it
/// apart from a backdated forgery, and its issuer re-issues it under the new key.
pub fn assess<R: Registry + ?Sized>(
    reg: &R,
    record: &CardRecord,
    evidence: Option<&CardEvidence>,
    now: u64,
) -> Result<VerdictReport> {
    let watermark = reg.watermark()?;
    let report = |verdict, reason: String, credential| VerdictReport {
        verdict,
        reason,
        credential,
        watermark: watermark.clone(),
    };

    let cred = match record.credential.credential_unverified() {
        Ok(c) => c,
        Err(e) => {
            return Ok(report(
                Verdict::Forged,
                format!("The credential cannot be decoded ({e})."),
                None,
            ))
        }
    };
    let shown = Some(cred.clone());

    let certs = reg.issuer_certs(&cred.issuer_id)?;
    if certs.is_empty() {
        return Ok(report(
            Verdict::UnknownIssuer,
            format!("Issuer {:?} is not registered.", cred.issuer_id),
            shown,
        ));
    }
    let in_window: Vec<&IssuerRecord> = certs
        .iter()
        .filter(|c| c.body.valid_at(cred.issued_at))
        .collect();
    if in_window.is_empty() {
        return Ok(report(
            Verdict::IssuerNotAuthorised,
            format!(
                "No certificate of issuer {:?} was valid when the credential was issued.",
                cred.issuer_id
            ),
            shown,
        ));
    }
    // With overlapping certificates (a rotation in progress), the one whose key signed it.
    let signer = in_window.iter().find(|c| {
        c.body
            .verifying_key()
            .and_then(|k| record.credential.verify(&k))
            .is_ok_and(|verified| verified == cred)
    });
    let Some(signer) = signer else {
        return Ok(report(
            Verdict::Forged,
            format!(
                "The signature does not verify with the key of issuer {:?}.",
                cred.issuer_id
            ),
            shown,
        ));
    };
    if !signer.body.may_issue(cred.kind, cred.issued_at) {
        return Ok(report(
            Verdict::IssuerNotAuthorised,
            format!(
                "Issuer {:?} is not authorised to issue {} credentials.",
                cred.issuer_id, cred.kind
            ),
            shown,
        ));
    }
    let retired = reg
        .retirement(&cred.issuer_id, &signer.body.public_key)?
        .map(|r| r.body);
    if let Some(r) = retired.as_ref().filter(|r| r.covers(cred.issued_at)) {
        return Ok(report(
            Verdict::IssuerKeyRetired,
            format!(
                "Signed by a key of issuer {:?} retired from unix time {} ({}); the credential \
                 says it was issued at {}.",
                cred.issuer_id, r.from, r.reason, cred.issued_at
            ),
            shown,
        ));
    }

    let batch = match reg.batch(record.batch_id)? {
        Some(b) => b,
        None => {
            return Ok(report(
                Verdict::NotAnchored,
                format!("Batch {} is not in the registry.", record.batch_id),
                shown,
            ))
        }
    };
    if batch.issuer_id != cred.issuer_id {
        return Ok(report(
            Verdict::NotAnchored,
            format!("Batch {} was anchored by another issuer.", record.batch_id),
            shown,
        ));
    }
    if !batch.covers(cred.status_index) {
        return Ok(report(
            Verdict::NotAnchored,
            format!(
                "Status index {} is outside batch {}.",
                cred.status_index, record.batch_id
            ),
            shown,
        ));
    }
    if record.proof.tree_size != batch.size
        || !record
            .proof
            .verify(&record.credential.commitment(), &batch.root)
    {
        return Ok(report(
            Verdict::NotAnchored,
            format!(
                "The inclusion proof does not reach the root of batch {}.",
                record.batch_id
            ),
            shown,
        ));
    }

    // The issue time can be backdated by whoever holds the key; the anchoring time cannot.
    if let Some(r) = retired.as_ref().filter(|r| r.covers(batch.anchored_at)) {
        return Ok(report(
            Verdict::IssuerKeyRetired,
            format!(
                "Signed by a key of issuer {:?} retired from unix time {} ({}); the credential \
                 claims an earlier issue time but batch {} was only anchored at {}.",
                cred.issuer_id, r.from, r.reason, record.batch_id, batch.anchored_at
            ),
            shown,
        ));
    }

    if let Some(ev) = evidence {
        if ev.card_id != cred.card_id {
            return Ok(report(
                Verdict::Cloned,
                format!(
                    "The credential belongs to card {:?}, not to this card {:?}.",
                    cred.card_id, ev.card_id
                ),
                shown,
            ));
        }
        if let Claims::Identity(id) = &cred.claims {
            if id.card_public_key.as_slice() != ev.chip_key.as_slice() {
                return Ok(report(
                    Verdict::Cloned,
                    "The chip's key is not the card key in the identity credential.".into(),
                    shown,
                ));
            }
        }
    }

    match reg.status(&cred.issuer_id, cred.status_index)? {
        CredentialStatus::Revoked => {
            return Ok(report(
                Verdict::Revoked,
                format!("Issuer {:?} has revoked this credential.", cred.issuer_id),
                shown,
            ))
        }
        CredentialStatus::Suspended => {
            return Ok(report(
                Verdict::Suspended,
                format!("Issuer {:?} has suspended this credential.", cred.issuer_id),
                shown,
            ))
        }
        CredentialStatus::Valid => {}
    }
    if cred.expires_at <= now {
        return Ok(report(
            Verdict::Expired,
            format!("The credential expired at unix time {}.", cred.expires_at),
            shown,
        ));
    }
    Ok(report(
        Verdict::Valid,
        format!(
            "Signed by {:?}, anchored in batch {}, not revoked.",
            cred.issuer_id, record.batch_id
        ),
        shown,
    ))
}
