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
use crate::office::{card_secret, IssuanceBook, Issued};
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
    pub office_key: &'a [u8; 32],
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
    // missing key leaves the card blank.
    let mut kinds = vec![Kind::Identity];
    if citizen.health.is_some() {
        kinds.push(Kind::Health);
    }
    if citizen.education.is_some() {
        kinds.push(Kind::Education);
    }
    let mut bureaus = kinds
        .iter()
        .map(|k| bureau_for(*k))
        .collect::<Result<Vec<_>>>()?;

    let mut wanted: Vec<(Kind, Claims)> = Vec::new();
    let mut tx = t.transaction().context("reserving the card")?;
    let session = Session::open(&mut *tx, mode).context("selecting the Civic Card application")?;
    let mut card = session.personalise()?;

    card.set_card_id(&card_id)?;
    card.set_authority_key(&office.authority_public_key)?;
    let secret = card_secret(office.office_key, &card_id);
    card.set_office_secret(secret.as_slice())?;
    let card_key = card
        .generate_key()
        .context("generating the card key on the card")?;

    wanted.push((
        Kind::Identity,
        Claims::Identity(IdentityClaims {
            name: citizen.identity.name.clone(),
            birth_date: citizen.identity.birth_date.clone(),
            card_public_key: card_key.to_vec(),
        }),
    ));
    if let Some(h) = &citizen.health {
        wanted.push((Kind::Health, Claims::Health(h.clone())));
    }
    if let Some(e) = &citizen.education {
        wanted.push((Kind::Education, Claims::Education(e.clone())));
    }

    // Sign, then anchor each bureau's credentials as one batch.
    let mut records: Vec<(Kind, CardRecord)> = Vec::new();
    let mut issued = Vec::new();
    let mut height = 0;
    for ((kind, claims), bureau) in wanted.into_iter().zip(bureaus.drain(..)) {
        let issuer_id = bureau.cert.issuer_id.clone();
        let status_index = registry
            .next_status_index(&issuer_id)
            .context("allocating a status index")?;
        let cred = Credential {
            version: 1,
            kind,
            card_id: card_id.clone(),
            issuer_id: issuer_id.clone(),
            issued_at: now,
            expires_at: now + office.validity.days(kind) * 86_400,
            status_index,
            salt: Credential::new_salt(),
            claims,
        };
        let signed = SignedCredential::sign(&cred, &bureau.key)?;
        let leaves = [signed.commitment()];
        let anchor = AnchorRequest {
            issuer_id: issuer_id.clone(),
            root: merkle::root(&leaves),
            size: leaves.len() as u64,
            first_status_index: status_index,
            status_count: 1,
        };
        let batch = registry
            .anchor_batch(&SignedAnchor::sign(&anchor, &bureau.key)?)
            .with_context(|| format!("anchoring the {kind} credential"))?;
        height = batch.height;
        let proof = merkle::prove(&leaves, 0).context("building the inclusion proof")?;
        issued.push(Issued {
            card_id: card_id.clone(),
            kind,
            issuer_id,
            status_index,
            batch_id: batch.batch_id,
            commitment: hex::encode(signed.commitment()),
            issued_at: now,
        });
        records.push((
            kind,
            CardRecord {
                credential: signed,
                batch_id: batch.batch_id,
                proof,
            },
        ));
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
