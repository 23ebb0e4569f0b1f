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
use civic_registry::{merkle, AnchorRequest, BatchRecord, Registry, SignedAnchor};
use p256::ecdsa::SigningKey;
use serde::Deserialize;

use crate::apdu::ApduMode;
use crate::office::{IssuanceBook, Issued};
use crate::session::{Personalising, Pin, Session, WriteRecords};
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

pub fn check_card_id(id: &str) -> Result<()> {
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

/// The credentials a citizen's card carries, in write order. The health bureau also signs the
/// emergency subset as a credential of its own: a clinic reads and verifies it without the PIN.
pub fn kinds_of(citizen: &CitizenData) -> Vec<Kind> {
    let mut kinds = vec![Kind::Identity];
    if citizen.health.is_some() {
        kinds.extend([Kind::Health, Kind::Emergency]);
    }
    if citizen.education.is_some() {
        kinds.push(Kind::Education);
    }
    kinds
}

/// One card of a run: its number, the key its chip generated and the citizen's data.
#[derive(Debug, Clone, Copy)]
pub struct CardPlan<'a> {
    pub card_id: &'a str,
    pub card_key: &'a [u8; 65],
    pub citizen: &'a CitizenData,
}

/// A credential signed and placed in its bureau's batch.
#[derive(Debug, Clone)]
pub struct SignedItem {
    /// Index of its card in the `cards` given to [`sign_batches`].
    pub card: usize,
    pub kind: Kind,
    pub status_index: u32,
    pub credential: SignedCredential,
}

/// One bureau's batch for a whole run: signed, not yet anchored. Leaves are the items'
/// commitments in order.
#[derive(Debug, Clone)]
pub struct PlannedBatch {
    pub request: AnchorRequest,
    /// A kind this bureau signs here: `bureau_for(key_kind)` gives the key that signs the anchor.
    pub key_kind: Kind,
    pub items: Vec<SignedItem>,
}

impl PlannedBatch {
    pub fn leaves(&self) -> Vec<[u8; 32]> {
        self.items
            .iter()
            .map(|i| i.credential.commitment())
            .collect()
    }
}

/// Sign every credential of every card, grouped by bureau: one batch per bureau for the whole
/// run, status indices allocated in order from the registry's next free index. The emergency
/// subset shares its card's health status index, so revoking the health record revokes the
/// emergency subset with the same bit.
pub fn sign_batches<R: Registry>(
    registry: &R,
    validity: &Validity,
    bureau_for: &dyn Fn(Kind) -> Result<Bureau>,
    cards: &[CardPlan<'_>],
    now: u64,
) -> Result<Vec<PlannedBatch>> {
    // Resolve every bureau first: a missing key fails before anything is signed.
    let mut bureaus: Vec<(Kind, Bureau)> = Vec::new();
    for kind in Kind::ALL {
        if cards.iter().any(|c| kinds_of(c.citizen).contains(&kind)) {
            bureaus.push((kind, bureau_for(kind)?));
        }
    }
    let mut batches: Vec<PlannedBatch> = Vec::new();
    // (batch, card) -> health status index, for the emergency subset.
    let mut health_index: Vec<(usize, usize, u32)> = Vec::new();
    for (card_no, card) in cards.iter().enumerate() {
        for kind in kinds_of(card.citizen) {
            let Some((_, bureau)) = bureaus.iter().find(|(k, _)| *k == kind) else {
                bail!("no bureau resolved for {kind}");
            };
            let issuer_id = &bureau.cert.issuer_id;
            let b = match batches
                .iter()
                .position(|b| b.request.issuer_id == *issuer_id)
            {
                Some(b) => b,
                None => {
                    let first = registry
                        .next_status_index(issuer_id)
                        .context("allocating status indices")?;
                    batches.push(PlannedBatch {
                        request: AnchorRequest {
                            issuer_id: issuer_id.clone(),
                            root: [0; 32],
                            size: 0,
                            first_status_index: first,
                            status_count: 0,
                        },
                        key_kind: kind,
                        items: Vec::new(),
                    });
                    batches.len() - 1
                }
            };
            let batch = &mut batches[b];
            let shared = health_index
                .iter()
                .find(|(hb, hc, _)| *hb == b && *hc == card_no)
                .map(|(_, _, i)| *i);
            let status_index = match (kind, shared) {
                (Kind::Emergency, Some(i)) => i,
                _ => {
                    let i = batch
                        .request
                        .first_status_index
                        .checked_add(batch.request.status_count)
                        .context("status indices exhausted")?;
                    batch.request.status_count += 1;
                    if kind == Kind::Health {
                        health_index.push((b, card_no, i));
                    }
                    i
                }
            };
            let claims = match kind {
                Kind::Identity => Some(Claims::Identity(IdentityClaims {
                    name: card.citizen.identity.name.clone(),
                    birth_date: card.citizen.identity.birth_date.clone(),
                    card_public_key: card.card_key.to_vec(),
                })),
                Kind::Health => card.citizen.health.clone().map(Claims::Health),
                Kind::Emergency => card
                    .citizen
                    .health
                    .as_ref()
                    .map(|h| Claims::Emergency(h.emergency.clone())),
                Kind::Education => card.citizen.education.clone().map(Claims::Education),
            }
            .context("no claims for a planned credential")?;
            let cred = Credential {
                version: 1,
                kind,
                card_id: card.card_id.to_owned(),
                issuer_id: issuer_id.clone(),
                issued_at: now,
                expires_at: now + validity.days(kind) * 86_400,
                status_index,
                salt: Credential::new_salt(),
                claims,
            };
            batch.items.push(SignedItem {
                card: card_no,
                kind,
                status_index,
                credential: SignedCredential::sign(&cred, &bureau.key)?,
            });
        }
    }
    for b in &mut batches {
        let leaves = b.leaves();
        b.request.root = merkle::root(&leaves);
        b.request.size = leaves.len() as u64;
    }
    Ok(batches)
}

/// The batch the registry already holds for this request, if an earlier, interrupted run
/// anchored it (same issuer, root and status range).
pub fn find_anchored<R: Registry>(
    registry: &R,
    req: &AnchorRequest,
) -> Result<Option<BatchRecord>> {
    if registry.next_status_index(&req.issuer_id)? <= req.first_status_index {
        return Ok(None);
    }
    let mut id = 1;
    while let Some(b) = registry.batch(id)? {
        if b.issuer_id == req.issuer_id
            && b.root == req.root
            && b.size == req.size
            && b.first_status_index == req.first_status_index
            && b.status_count == req.status_count
        {
            return Ok(Some(b));
        }
        id += 1;
    }
    Ok(None)
}

/// Anchor one planned batch (one registry write), unless the registry already holds it.
pub fn anchor<R: Registry>(
    registry: &mut R,
    request: &AnchorRequest,
    key: &SigningKey,
) -> Result<BatchRecord> {
    if let Some(b) = find_anchored(registry, request)? {
        return Ok(b);
    }
    registry
        .anchor_batch(&SignedAnchor::sign(request, key)?)
        .with_context(|| format!("anchoring the batch of {}", request.issuer_id))
}

/// Each credential's card record (with its inclusion proof) and issuance-book entry, once
/// its batch is anchored as `batch_id`.
pub fn records_of(
    batch: &PlannedBatch,
    batch_id: u64,
    cards: &[CardPlan<'_>],
    now: u64,
) -> Result<Vec<(usize, CardRecord, Issued)>> {
    let leaves = batch.leaves();
    let mut out = Vec::with_capacity(batch.items.len());
    for (leaf, item) in batch.items.iter().enumerate() {
        let proof = merkle::prove(&leaves, leaf).context("building an inclusion proof")?;
        let card = cards.get(item.card).context("an item names no card")?;
        out.push((
            item.card,
            CardRecord {
                credential: item.credential.clone(),
                batch_id,
                proof,
            },
            Issued {
                card_id: card.card_id.to_owned(),
                kind: item.kind,
                issuer_id: batch.request.issuer_id.clone(),
                status_index: item.status_index,
                batch_id,
                commitment: hex::encode(leaves[leaf]),
                // As signed (a resumed run anchors credentials signed in an earlier one).
                issued_at: item
                    .credential
                    .credential_unverified()
                    .map(|c| c.issued_at)
                    .unwrap_or(now),
            },
        ));
    }
    Ok(out)
}

/// Start personalising: card number, authority key, and the card key generated on the card.
pub fn key_card(
    card: &mut Session<'_, Personalising>,
    card_id: &str,
    authority_public_key: &[u8; 65],
) -> Result<[u8; 65]> {
    card.set_card_id(card_id)?;
    card.set_authority_key(authority_public_key)?;
    let key = card
        .generate_key()
        .context("generating the card key on the card")?;
    prove_possession(card, card_id, &key)?;
    Ok(key)
}

/// Proof of possession before anything binds the key to a citizen: the card signs a fresh
/// challenge with the key it just reported. A card that reports a key it does not hold (a
/// garbled answer, or another chip's key) would otherwise get an identity credential for it.
fn prove_possession(
    card: &mut Session<'_, Personalising>,
    card_id: &str,
    key: &[u8; 65],
) -> Result<()> {
    use p256::ecdsa::signature::Verifier;
    let mut challenge = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut challenge);
    let sig = card
        .internal_authenticate(&challenge)
        .context("asking the card to prove it holds its new key")?;
    let holds = p256::ecdsa::VerifyingKey::from_sec1_bytes(key)
        .ok()
        .zip(p256::ecdsa::Signature::from_slice(&sig).ok())
        .is_some_and(|(vk, sig)| {
            vk.verify(
                &card_applet::protocol::internal_auth_message(card_id.as_bytes(), &challenge),
                &sig,
            )
            .is_ok()
        });
    if !holds {
        bail!(
            "the card could not prove it holds the key it reported from GENERATE ASYMMETRIC KEY \
             PAIR: nothing was issued for it; use another card"
        );
    }
    Ok(())
}

/// Write every record, set the PIN and activate. Until ACTIVATE the card stays in
/// personalisation state, so an interrupted card can be written again from the start.
pub fn write_and_activate(
    mut card: Session<'_, Personalising>,
    records: &[(Kind, Vec<u8>)],
    pin: &Pin,
    can: &str,
) -> Result<()> {
    for (kind, record) in records {
        card.write_record(slot_of(*kind), kind.as_byte(), record)
            .with_context(|| format!("writing the {kind} credential to the card"))?;
    }
    card.set_pin(pin)?;
    card.set_can(can)
        .context("writing the card access number (CAN)")?;
    card.activate()?;
    Ok(())
}

/// Provision the blank card behind `t`: a batch of one.
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
    if office.book.knows_card(&card_id)? || office.book.card_in_journal(&card_id)? {
        // Two cards with one number would share status entries and confuse every revocation.
        bail!("card id {card_id} was already issued by this office: give the new card its own id");
    }
    // Resolve every bureau before touching the card, so a missing key leaves the card blank.
    for kind in kinds_of(citizen) {
        bureau_for(kind)?;
    }

    let mut tx = t.transaction().context("reserving the card")?;
    let session = Session::open(&mut *tx, mode).context("selecting the Civic Card application")?;
    let mut card = session.personalise()?;
    let card_key = key_card(&mut card, &card_id, &office.authority_public_key)?;

    let cards = [CardPlan {
        card_id: &card_id,
        card_key: &card_key,
        citizen,
    }];
    let batches = sign_batches(registry, &office.validity, bureau_for, &cards, now)?;
    let mut records: Vec<(Kind, Vec<u8>)> = Vec::new();
    let mut issued = Vec::new();
    let mut height = 0;
    for b in &batches {
        let key = bureau_for(b.key_kind)?.key;
        let rec = anchor(registry, &b.request, &key)?;
        height = rec.height;
        for (_, record, i) in records_of(b, rec.batch_id, &cards, now)? {
            records.push((i.kind, record.encode()));
            issued.push(i);
        }
    }
    // Recorded before it goes to the card: an interrupted card is rewritten with the same.
    let can = office.book.can_for(&card_id)?;
    write_and_activate(card, &records, pin, &can)?;
    drop(tx);

    office.book.record(&issued)?;
    Ok(Provisioned {
        card_id,
        card_public_key: card_key,
        credentials: issued,
        registry_height: height,
    })
}
