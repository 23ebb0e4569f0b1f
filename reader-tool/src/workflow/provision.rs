//! Issuing office: personalise a blank card. The key is generated on the card; each bureau
//! signs its credential; each bureau's credentials are anchored as one Merkle batch; the
//! records (credential, signature, inclusion proof) are written; the PIN is set; the card is
//! activated.

use anyhow::{bail, Context, Result};
use civic_registry::cert::IssuerCertBody;
use civic_registry::credential::{
    Claims, Credential, EducationClaims, HealthClaims, IdentityClaims, Kind, SignedCredential,
};
use civic_registry::record::CardRecord;
use civic_registry::{merkle, AnchorRequest, Registry, SignedAnchor};
use p256::ecdsa::SigningKey;
use serde::Deserialize;

use crate::apdu::ApduMode;
use crate::office::{IssuanceBook, Issued};
use crate::session::{Pin, Session, WriteRecords};
use crate::transport::Transport;

use super::slot_of;

/// The citizen's data as the office enters it (a JSON file for the CLI).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitizenData {
    /// Printed card number; generated when absent.
    pub card_id: Option<String>,
    pub identity: IdentityInput,
    pub health: Option<HealthClaims>,
    pub education: Option<EducationClaims>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityInput {
    pub name: String,
    pub birth_date: String,
}

/// A bureau able to sign, as this office holds it.
#[derive(Debug)]
pub struct Bureau {
    pub cert: IssuerCertBody,
    pub key: SigningKey,
}

/// How long each kind of credential is valid, in days.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub identity_days: u64,
    pub health_days: u64,
    pub education_days: u64,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            identity_days: 10 * 365,
            health_days: 2 * 365,
            education_days: 50 * 365,
        }
    }
}

impl Validity {
    fn days(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Identity => self.identity_days,
            Kind::Health => self.health_days,
            Kind::Education => self.education_days,
            Kind::Emergency => self.health_days,
        }
    }
}

/// What was provisioned.
#[derive(Debug, serde::Serialize)]
pub struct Provisioned {
    pub card_id: String,
    #[serde(serialize_with = "hex_ser")]
    pub card_public_key: [u8; 65],
    pub credentials: Vec<Issued>,
    pub registry_height: u64,
}

fn hex_ser<S: serde::Serializer>(k: &[u8; 65], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(k))
}

/// A card number: CIV- and 12 random hex digits in groups of four.
pub fn new_card_id() -> String {
    let mut b = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    let h = hex::encode_upper(b);
    format!("CIV-{}-{}-{}", &h[0..4], &h[4..8], &h[8..12])
}

fn check_card_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > card_applet::protocol::CARD_ID_MAX
        || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        bail!("a card id is 1 to 32 printable ASCII characters without spaces: {id:?}");
    }
    Ok(())
}

/// Everything provisioning needs besides the card.
#[derive(Debug)]
pub struct Office<'a> {
    pub authority_public_key: [u8; 65],
    pub book: &'a IssuanceBook,
    pub validity: Validity,
}

/// Provision the blank card behind `t`.
#[allow(clippy::too_many_arguments)]
pub fn provision<R: Registry>(
    t: &mut dyn Transport,
    mode: ApduMode,
    registry: &mut R,
    office: &Office<'_>,
    bureau_for: &dyn Fn(Kind) -> Result<Bureau>,
    citizen: &CitizenData,
    pin: &Pin,
    now: u64,
) -> Result<Provisioned> {
    let card_id = citizen.card_id.clone().unwrap_or_else(new_card_id);
    check_card_id(&card_id)?;
    if office.book.knows_card(&card_id)? {
        // Two cards with one number would share status entries and confuse every revocation.
        bail!("card id {card_id} was already issued by this office: give the new card its own id");
    }

    // Which credentials, by whom: resolve every bureau before touching the card, so a
    // missing key leaves the card blank. The health bureau also signs the emergency subset
    // as a credential of its own: a clinic reads and verifies it without the PIN.
    let mut kinds = vec![Kind::Identity];
    if citizen.health.is_some() {
        kinds.extend([Kind::Health, Kind::Emergency]);
    }
    if citizen.education.is_some() {
        kinds.push(Kind::Education);
    }
    let bureaus = kinds
        .iter()
        .map(|k| bureau_for(*k))
        .collect::<Result<Vec<_>>>()?;

    let mut tx = t.transaction().context("reserving the card")?;
    let session = Session::open(&mut *tx, mode).context("selecting the Civic Card application")?;
    let mut card = session.personalise()?;
    card.set_card_id(&card_id)?;
    card.set_authority_key(&office.authority_public_key)?;
    let card_key = card
        .generate_key()
        .context("generating the card key on the card")?;

    let claims_of = |kind: Kind| -> Option<Claims> {
        match kind {
            Kind::Identity => Some(Claims::Identity(IdentityClaims {
                name: citizen.identity.name.clone(),
                birth_date: citizen.identity.birth_date.clone(),
                card_public_key: card_key.to_vec(),
            })),
            Kind::Health => citizen.health.clone().map(Claims::Health),
            Kind::Emergency => citizen
                .health
                .as_ref()
                .map(|h| Claims::Emergency(h.emergency.clone())),
            Kind::Education => citizen.education.clone().map(Claims::Education),
        }
    };

    // Group by bureau: each bureau signs its credentials and anchors them as one batch (one
    // registry write). The emergency subset shares the health credential's status index, so
    // revoking the health record revokes its emergency subset with the same bit.
    let mut records: Vec<(Kind, CardRecord)> = Vec::new();
    let mut issued = Vec::new();
    let mut height = 0;
    let mut groups: Vec<(String, Vec<(Kind, &Bureau)>)> = Vec::new();
    for (kind, bureau) in kinds.iter().zip(&bureaus) {
        let id = &bureau.cert.issuer_id;
        match groups.iter_mut().find(|(g, _)| g == id) {
            Some((_, members)) => members.push((*kind, bureau)),
            None => groups.push((id.clone(), vec![(*kind, bureau)])),
        }
    }
    for (issuer_id, members) in groups {
        let first = registry
            .next_status_index(&issuer_id)
            .context("allocating status indices")?;
        let has_health = members.iter().any(|(k, _)| *k == Kind::Health);
        let mut next = first;
        let mut signed = Vec::new();
        let mut health_index = None;
        for (kind, bureau) in &members {
            let status_index = match (kind, health_index) {
                (Kind::Emergency, Some(i)) if has_health => i,
                _ => {
                    let i = next;
                    next += 1;
                    if *kind == Kind::Health {
                        health_index = Some(i);
                    }
                    i
                }
            };
            let claims = claims_of(*kind).context("no claims for a planned credential")?;
            let cred = Credential {
                version: 1,
                kind: *kind,
                card_id: card_id.clone(),
                issuer_id: issuer_id.clone(),
                issued_at: now,
                expires_at: now + office.validity.days(*kind) * 86_400,
                status_index,
                salt: Credential::new_salt(),
                claims,
            };
            signed.push((
                *kind,
                status_index,
                SignedCredential::sign(&cred, &bureau.key)?,
            ));
        }
        let leaves: Vec<[u8; 32]> = signed.iter().map(|(_, _, s)| s.commitment()).collect();
        let anchor = AnchorRequest {
            issuer_id: issuer_id.clone(),
            root: merkle::root(&leaves),
            size: leaves.len() as u64,
            first_status_index: first,
            status_count: next - first,
        };
        let key = &members[0].1.key;
        let batch = registry
            .anchor_batch(&SignedAnchor::sign(&anchor, key)?)
            .with_context(|| format!("anchoring the batch of {issuer_id}"))?;
        height = batch.height;
        for (leaf, (kind, status_index, credential)) in signed.into_iter().enumerate() {
            let proof = merkle::prove(&leaves, leaf).context("building an inclusion proof")?;
            issued.push(Issued {
                card_id: card_id.clone(),
                kind,
                issuer_id: issuer_id.clone(),
                status_index,
                batch_id: batch.batch_id,
                commitment: hex::encode(credential.commitment()),
                issued_at: now,
            });
            records.push((
                kind,
                CardRecord {
                    credential,
                    batch_id: batch.batch_id,
                    proof,
                },
            ));
        }
    }

    for (kind, record) in &records {
        card.write_record(slot_of(*kind), kind.as_byte(), &record.encode())
            .with_context(|| format!("writing the {kind} credential to the card"))?;
    }
    card.set_pin(pin)?;
    card.activate()?;
    drop(tx);

    office.book.record(&issued)?;
    Ok(Provisioned {
        card_id,
        card_public_key: card_key,
        credentials: issued,
        registry_height: height,
    })
}
