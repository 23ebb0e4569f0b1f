//! Civic Card registry: the credential model (CBOR/COSE), Merkle batches, status lists, and the
//! registry behind one trait ([`Registry`]) with an embedded SQLite ledger ([`SqliteLedger`]).
//!
//! The registry holds salted commitments (as Merkle roots), issuer certificates and status bits,
//! never personal data. It answers one question in one call: the [`Verdict`] on a credential,
//! always with the [`Watermark`] (block height, hash, time) it rests on.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cert;
mod cose;
pub mod credential;
#[cfg(feature = "evm")]
pub mod evm;
pub mod keys;
pub mod ledger;
pub mod merkle;
pub mod record;
pub mod status;
pub mod verdict;

use std::fmt;

use p256::ecdsa::{SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use cert::{IssuerCertBody, IssuerCertificate, KeyRetirement, KeyRetirementBody};
pub use credential::{
    commitment, Claims, Credential, Degree, EducationClaims, EmergencyInfo, HealthClaims,
    IdentityClaims, Kind, SignedCredential, Vaccination,
};
pub use ledger::{SignedBlock, SqliteLedger, SyncSource};
pub use merkle::InclusionProof;
pub use record::CardRecord;
pub use status::{CredentialStatus, StatusList};
pub use verdict::{CardEvidence, Verdict, VerdictReport};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("registry database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(String),
    #[error("encoding: {0}")]
    Encoding(String),
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    #[error("unknown issuer {0:?}")]
    UnknownIssuer(String),
    #[error("not authorised: {0}")]
    NotAuthorised(String),
    #[error("ledger chain broken at height {height}: {reason}")]
    ChainBroken { height: u64, reason: String },
    #[error("registry opened without the authority key")]
    ReadOnly,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The chain node could not be reached or did not answer (EVM backend).
    #[error("registry node unreachable: {0}")]
    Unreachable(String),
    /// The registry contract refused the transaction: its custom error, by name (EVM backend).
    #[error("refused by the registry contract: {0}")]
    Reverted(String),
    /// The node serves another chain, or the address holds no registry contract (EVM backend).
    #[error("wrong chain or contract: {0}")]
    WrongChain(String),
}

/// The point of the ledger a answer rests on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Watermark {
    pub height: u64,
    #[serde(with = "hex32")]
    pub block_hash: [u8; 32],
    /// Unix seconds of the block.
    pub time: u64,
}

// Hex in human-readable formats (JSON), a byte string in binary ones (CBOR).
use cose::fixed_bytes as hex32;

/// A registered issuer certificate (one per key; key rotation adds another).
#[derive(Clone, Debug, PartialEq)]
pub struct IssuerRecord {
    pub cert: IssuerCertificate,
    pub body: IssuerCertBody,
    /// The block that registered it.
    pub registered_at: Watermark,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    pub batch_id: u64,
    pub issuer_id: String,
    #[serde(with = "hex32")]
    pub root: [u8; 32],
    pub size: u64,
    pub first_status_index: u32,
    pub status_count: u32,
    /// The block that anchored it.
    pub height: u64,
    /// Unix seconds of that block: the latest a credential in the batch can have been issued,
    /// whatever issue time it claims.
    pub anchored_at: u64,
}

/// A retired issuer key, as the registry holds it: the authority's latest statement about that
/// key (the one with the earliest `from`).
#[derive(Clone, Debug, PartialEq)]
pub struct RetiredKey {
    pub retirement: KeyRetirement,
    pub body: KeyRetirementBody,
    /// The block that recorded this statement.
    pub recorded_at: Watermark,
}

impl BatchRecord {
    /// Whether `index` lies in this batch's status index range.
    pub fn covers(&self, index: u32) -> bool {
        index >= self.first_status_index
            && u64::from(index) < u64::from(self.first_status_index) + u64::from(self.status_count)
    }
}

/// An issuer's request to anchor one batch root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnchorRequest {
    pub issuer_id: String,
    #[serde(with = "cose::fixed_bytes")]
    pub root: [u8; 32],
    pub size: u64,
    pub first_status_index: u32,
    pub status_count: u32,
}

impl AnchorRequest {
    /// One past the last status index, if it does not overflow u32.
    pub fn end_index(&self) -> Option<u32> {
        self.first_status_index.checked_add(self.status_count)
    }
}

/// An issuer's request to set one status entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub issuer_id: String,
    pub status_index: u32,
    pub status: CredentialStatus,
}

/// The most status changes one [`StatusBatch`] may carry.
pub const MAX_BATCH_CHANGES: usize = 100_000;

/// An issuer's request to set many status entries at once: signed once, recorded as one ledger
/// block, applied as one effect. Every index must have been anchored by the issuer, and none may
/// appear twice; at most [`MAX_BATCH_CHANGES`] changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatusBatch {
    pub issuer_id: String,
    /// (status index, new status) pairs.
    pub changes: Vec<(u32, CredentialStatus)>,
}

/// A request an issuer signs.
pub trait Request: Serialize + DeserializeOwned + Clone + fmt::Debug {
    #[doc(hidden)]
    const CONTENT_TYPE: &'static str;
    fn issuer_id(&self) -> &str;
}

impl Request for AnchorRequest {
    const CONTENT_TYPE: &'static str = cose::CT_ANCHOR;
    fn issuer_id(&self) -> &str {
        &self.issuer_id
    }
}

impl Request for StatusChange {
    const CONTENT_TYPE: &'static str = cose::CT_STATUS;
    fn issuer_id(&self) -> &str {
        &self.issuer_id
    }
}

impl Request for StatusBatch {
    const CONTENT_TYPE: &'static str = cose::CT_STATUS_BATCH;
    fn issuer_id(&self) -> &str {
        &self.issuer_id
    }
}

/// A request signed by its issuer: tagged COSE_Sign1, ES256, kid = issuer id, payload = CBOR of
/// the request, and a random 16-byte nonce in the protected header so that two requests with the
/// same content (suspend, reinstate, suspend again) are distinct and none can be replayed.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedRequest<T> {
    inner: cose::Signed,
    request: T,
}

pub type SignedAnchor = SignedRequest<AnchorRequest>;
pub type SignedStatusChange = SignedRequest<StatusChange>;
pub type SignedStatusBatch = SignedRequest<StatusBatch>;

impl<T: Request> SignedRequest<T> {
    pub fn sign(req: &T, issuer_key: &SigningKey) -> Result<Self> {
        let payload = cose::to_cbor(req)?;
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let inner = cose::Signed::sign_with_nonce(
            payload,
            req.issuer_id().as_bytes(),
            T::CONTENT_TYPE,
            &nonce,
            issuer_key,
        )?;
        Self::from_signed(inner)
    }

    fn from_signed(inner: cose::Signed) -> Result<Self> {
        let request: T = cose::from_cbor(inner.payload(), "request")?;
        if request.issuer_id().as_bytes() != inner.kid() {
            return Err(Error::Encoding(
                "request kid does not name its issuer".into(),
            ));
        }
        Ok(Self { inner, request })
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        Self::from_signed(cose::Signed::from_bytes(b, T::CONTENT_TYPE)?)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.inner.as_bytes()
    }

    /// The request, not yet authenticated.
    pub fn request(&self) -> &T {
        &self.request
    }

    /// The request's identity for replay protection: SHA-256 of the signed Sig_structure
    /// (immune to signature malleability).
    pub fn request_id(&self) -> [u8; 32] {
        Sha256::digest(self.inner.tbs()).into()
    }

    /// Check the issuer's signature; return the request.
    pub fn verify(&self, issuer_key: &VerifyingKey) -> Result<&T> {
        self.inner.verify(issuer_key, "issuer request signature")?;
        Ok(&self.request)
    }
}

/// What [`Registry::verify_chain`] found.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    pub blocks: u64,
    pub issuers: usize,
    pub batches: usize,
    pub status_changes: usize,
    /// Issuer keys retired (each counted once, however often its retirement was moved earlier).
    pub retired_keys: usize,
    pub head: Watermark,
}

/// One registry, whatever the backend (embedded SQLite ledger now, an EVM chain later).
pub trait Registry {
    /// The authority key recorded at genesis.
    fn authority_key(&self) -> Result<VerifyingKey>;
    /// The current head.
    fn watermark(&self) -> Result<Watermark>;
    /// Register an issuer certificate (verified against the authority). A second certificate for
    /// the same issuer id is a key rotation and must carry a new key; old ones are kept.
    fn register_issuer(&mut self, cert: &IssuerCertificate) -> Result<Watermark>;
    /// Record the authority's retirement of an issuer key. The key must be one certified for
    /// that issuer ([`Error::UnknownIssuer`], [`Error::NotFound`] otherwise). A key already
    /// retired may only be retired again from an earlier time ([`Error::Conflict`] otherwise):
    /// a retirement can grow, never shrink or be withdrawn. From the recorded block on, the key
    /// signs no anchor or status request dated at or after `from`.
    fn retire_issuer_key(&mut self, retirement: &KeyRetirement) -> Result<Watermark>;
    /// Every retired key of `issuer_id` (empty if none or unknown), oldest retirement first.
    fn retired_keys(&self, issuer_id: &str) -> Result<Vec<RetiredKey>>;
    /// The retirement in force for one key of `issuer_id`, if any.
    fn retirement(&self, issuer_id: &str, public_key: &[u8]) -> Result<Option<RetiredKey>> {
        Ok(self
            .retired_keys(issuer_id)?
            .into_iter()
            .find(|r| r.body.public_key == public_key))
    }
    /// Anchor a batch root signed by its issuer; assigns the next batch id (from 1).
    fn anchor_batch(&mut self, req: &SignedAnchor) -> Result<BatchRecord>;
    /// Set one status entry, signed by the issuer that anchored that index.
    fn set_status(&mut self, change: &SignedStatusChange) -> Result<Watermark>;
    /// Set many status entries in one block, signed once by the issuer that anchored every
    /// index. All or nothing: an index not anchored by that issuer, an index listed twice, an
    /// empty or oversized batch ([`MAX_BATCH_CHANGES`]) or a replay refuses the whole batch.
    fn set_status_batch(&mut self, batch: &SignedStatusBatch) -> Result<Watermark>;
    /// Every certificate registered for `issuer_id`, oldest first (empty if unknown).
    fn issuer_certs(&self, issuer_id: &str) -> Result<Vec<IssuerRecord>>;
    /// Every certificate of every issuer.
    fn issuers(&self) -> Result<Vec<IssuerRecord>>;
    fn batch(&self, batch_id: u64) -> Result<Option<BatchRecord>>;
    /// The status of an index; never set (or unknown issuer) is `Valid`.
    fn status(&self, issuer_id: &str, index: u32) -> Result<CredentialStatus>;
    /// One past the highest status index anchored by `issuer_id` (0 if none).
    fn next_status_index(&self, issuer_id: &str) -> Result<u32>;
    /// Recheck everything; `Err(ChainBroken)` on any tampering.
    fn verify_chain(&self) -> Result<ChainReport>;
    /// The verdict on one credential, in one call, with the watermark it rests on.
    fn verdict(
        &self,
        record: &CardRecord,
        evidence: Option<&CardEvidence>,
        now: u64,
    ) -> Result<VerdictReport> {
        verdict::assess(self, record, evidence, now)
    }
}
