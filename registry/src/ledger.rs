//! The embedded backend: an append-only, hash-chained ledger of authority-signed blocks in
//! SQLite, with index tables (issuers, batches, status lists, seen requests) maintained in the
//! same transaction as each block and used by the getters.
//!
//! Block hash = SHA-256 of the CBOR array `["civic-registry/block/v1", height, prev_hash, time,
//! event]`; the authority signs the hash (ECDSA P-256/SHA-256). Anyone holding the file can
//! re-verify the whole chain ([`Registry::verify_chain`]): every hash, link and signature, every
//! event replayed under the rules that admitted it, and the index tables against the replay.
//!
//! Key retirement (`RetireIssuerKey`, schema version 2) was added after the first release: the
//! event enum only grew a variant, so every block written before decodes and hashes exactly as
//! it did, and older software refuses a ledger of the newer schema version instead of
//! misreading it.
//!
//! Status batches (`SetStatusBatch`, schema version 3) were added the same way: one
//! issuer-signed [`crate::StatusBatch`] of many `(index, status)` changes is one block and one
//! [`Effect`], and the issuer's status list is read and written once for the whole block.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cert::{IssuerCertBody, IssuerCertificate, KeyRetirement, KeyRetirementBody};
use crate::cose;
use crate::keys;
use crate::status::{CredentialStatus, StatusList};
use crate::{
    BatchRecord, ChainReport, Error, IssuerRecord, Registry, Result, RetiredKey, SignedAnchor,
    SignedStatusBatch, SignedStatusChange, Watermark, MAX_BATCH_CHANGES,
};

/// Schema migrations, applied in order by `PRAGMA user_version`. Append only: never edit one
/// that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE blocks (
    height     INTEGER PRIMARY KEY,
    prev_hash  BLOB NOT NULL,
    time       INTEGER NOT NULL,
    event      BLOB NOT NULL,
    hash       BLOB NOT NULL,
    signature  BLOB NOT NULL
);
CREATE TRIGGER blocks_no_update BEFORE UPDATE ON blocks
BEGIN SELECT RAISE(ABORT, 'blocks are append-only'); END;
CREATE TRIGGER blocks_no_delete BEFORE DELETE ON blocks
BEGIN SELECT RAISE(ABORT, 'blocks are append-only'); END;

CREATE TABLE issuers (
    issuer_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    cert       BLOB NOT NULL,
    height     INTEGER NOT NULL REFERENCES blocks(height),
    PRIMARY KEY (issuer_id, seq)
);
CREATE TABLE batches (
    batch_id           INTEGER PRIMARY KEY,
    issuer_id          TEXT NOT NULL,
    root               BLOB NOT NULL,
    size               INTEGER NOT NULL,
    first_status_index INTEGER NOT NULL,
    status_count       INTEGER NOT NULL,
    height             INTEGER NOT NULL REFERENCES blocks(height)
);
CREATE INDEX batches_issuer ON batches(issuer_id);
CREATE TABLE status_lists (
    issuer_id  TEXT PRIMARY KEY,
    bits       BLOB NOT NULL
);
CREATE TABLE requests (
    request_id BLOB PRIMARY KEY,
    height     INTEGER NOT NULL REFERENCES blocks(height)
);
"#,
    // 2: issuer key retirement. One row per retired key: the authority's latest statement about it
    // (a key can only be retired again from an earlier time) and the block that recorded it.
    r#"
CREATE TABLE retired_keys (
    issuer_id  TEXT NOT NULL,
    public_key BLOB NOT NULL,
    statement  BLOB NOT NULL,
    height     INTEGER NOT NULL REFERENCES blocks(height),
    PRIMARY KEY (issuer_id, public_key)
);
"#,
    // 3: batched status changes (`SetStatusBatch` events). No new table: the version bump makes
    // older software refuse a ledger that may hold blocks it cannot read.
    "-- set_status_batch events",
];

const BLOCK_DOMAIN: &str = "civic-registry/block/v1";

/// Status indices of one issuer stay below this (2^26 indices = a 16 MiB status list), so no
/// request can make the status list grow without bound.
pub const MAX_STATUS_INDEX: u32 = 1 << 26;

/// What a block records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Event {
    Genesis {
        #[serde(with = "serde_bytes")]
        authority_key: Vec<u8>,
    },
    RegisterIssuer {
        #[serde(with = "serde_bytes")]
        cert: Vec<u8>,
    },
    AnchorBatch {
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
    },
    SetStatus {
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
    },
    /// A [`KeyRetirement`] signed by the authority (appended in schema version 2).
    RetireIssuerKey {
        #[serde(with = "serde_bytes")]
        retirement: Vec<u8>,
    },
    /// A [`crate::StatusBatch`] signed by its issuer (appended in schema version 3).
    SetStatusBatch {
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
    },
}

fn block_hash(height: u64, prev_hash: &[u8; 32], time: u64, event: &[u8]) -> Result<[u8; 32]> {
    use ciborium::Value;
    let v = Value::Array(vec![
        Value::Text(BLOCK_DOMAIN.into()),
        Value::Integer(height.into()),
        Value::Bytes(prev_hash.to_vec()),
        Value::Integer(time.into()),
        Value::Bytes(event.to_vec()),
    ]);
    Ok(Sha256::digest(cose::to_cbor(&v)?).into())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Invalid(format!("{what} {v} is too large")))
}

fn from_i64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::ChainBroken {
        height: 0,
        reason: format!("{what} is negative in the database"),
    })
}

fn to_hash(v: Vec<u8>, what: &str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| Error::ChainBroken {
        height: 0,
        reason: format!("{what} is not 32 bytes"),
    })
}

// ---------------------------------------------------------------------------------------------
// Validation: one set of rules, run against the database when writing and against the in-memory
// replay when verifying.

/// A registered issuer certificate: its bytes and its verified body.
#[derive(Clone, Debug)]
pub struct CertEntry {
    pub cert: Vec<u8>,
    pub body: IssuerCertBody,
}

/// What the rules need to know about the state before a block: implemented by the ledger's index
/// tables, its in-memory replay, and any mirror that follows the chain (the clinic cache).
pub trait View {
    fn authority(&self) -> &VerifyingKey;
    fn certs(&self, issuer_id: &str) -> Result<Vec<CertEntry>>;
    /// (first_status_index, status_count) of every batch of the issuer.
    fn ranges(&self, issuer_id: &str) -> Result<Vec<(u32, u32)>>;
    fn next_batch_id(&self) -> Result<u64>;
    fn seen(&self, request_id: &[u8; 32]) -> Result<bool>;
    /// The retirement in force for this issuer key, if any.
    fn retirement(&self, issuer_id: &str, public_key: &[u8]) -> Result<Option<KeyRetirementBody>>;
}

/// What one admitted event changes in the state; a mirror applies it to its own tables.
#[derive(Clone, Debug)]
pub enum Effect {
    Issuer {
        issuer_id: String,
        cert: Vec<u8>,
        body: Box<IssuerCertBody>,
    },
    Batch {
        batch: BatchRecord,
        request_id: [u8; 32],
    },
    Status {
        issuer_id: String,
        index: u32,
        status: CredentialStatus,
        request_id: [u8; 32],
    },
    Retire {
        statement: Vec<u8>,
        body: Box<KeyRetirementBody>,
    },
    /// Every change of one status batch, in request order (no index twice).
    StatusBatch {
        issuer_id: String,
        changes: Vec<(u32, CredentialStatus)>,
        request_id: [u8; 32],
    },
}

/// Find the issuer certificate valid at `time` whose key verifies the request.
fn request_signer<T: crate::Request>(
    view: &dyn View,
    req: &crate::SignedRequest<T>,
    time: u64,
) -> Result<IssuerCertBody> {
    let issuer_id = req.request().issuer_id();
    let certs = view.certs(issuer_id)?;
    if certs.is_empty() {
        return Err(Error::UnknownIssuer(issuer_id.to_owned()));
    }
    let valid: Vec<CertEntry> = certs
        .into_iter()
        .filter(|c| c.body.valid_at(time))
        .collect();
    if valid.is_empty() {
        return Err(Error::NotAuthorised(format!(
            "issuer {issuer_id:?} has no certificate valid at {time}"
        )));
    }
    let mut retired = None;
    for c in valid {
        let key = c.body.verifying_key()?;
        if req.verify(&key).is_ok() {
            match view.retirement(issuer_id, &c.body.public_key)? {
                Some(r) if r.covers(time) => retired = Some(r),
                _ => return Ok(c.body),
            }
        }
    }
    match retired {
        Some(r) => Err(Error::NotAuthorised(format!(
            "issuer {issuer_id:?}: the key that signed this request is retired from {} ({})",
            r.from, r.reason
        ))),
        None => Err(Error::BadSignature(
            "request is not signed by the issuer's current key",
        )),
    }
}

pub(crate) fn validate(view: &dyn View, event: &Event, time: u64) -> Result<Effect> {
    match event {
        Event::Genesis { .. } => Err(Error::Invalid("a second genesis block".into())),
        Event::RegisterIssuer { cert } => {
            let c = IssuerCertificate::from_bytes(cert)?;
            let body = c.verify(view.authority())?;
            for old in view.certs(&body.issuer_id)? {
                if old.cert == *cert {
                    return Err(Error::Conflict(format!(
                        "issuer {:?}: this certificate is already registered",
                        body.issuer_id
                    )));
                }
                if old.body.public_key == body.public_key {
                    return Err(Error::Conflict(format!(
                        "issuer {:?} is already registered with this key (a rotation needs a new key)",
                        body.issuer_id
                    )));
                }
            }
            Ok(Effect::Issuer {
                issuer_id: body.issuer_id.clone(),
                cert: cert.clone(),
                body: Box::new(body),
            })
        }
        Event::AnchorBatch { request } => {
            let sa = SignedAnchor::from_bytes(request)?;
            request_signer(view, &sa, time)?;
            let req = sa.request();
            if req.size == 0 || req.status_count == 0 {
                return Err(Error::Invalid(
                    "a batch needs at least one credential and one status index".into(),
                ));
            }
            to_i64(req.size, "batch size")?;
            let end = req
                .end_index()
                .filter(|e| *e <= MAX_STATUS_INDEX)
                .ok_or_else(|| {
                    Error::Invalid(format!("status indices must stay below {MAX_STATUS_INDEX}"))
                })?;
            for (first, count) in view.ranges(&req.issuer_id)? {
                let other_end = u64::from(first) + u64::from(count);
                if u64::from(req.first_status_index) < other_end && first < end {
                    return Err(Error::Conflict(format!(
                        "status indices {}..{} overlap an earlier batch of issuer {:?} ({}..{})",
                        req.first_status_index, end, req.issuer_id, first, other_end
                    )));
                }
            }
            let request_id = sa.request_id();
            if view.seen(&request_id)? {
                return Err(Error::Conflict(
                    "this anchor request was already recorded".into(),
                ));
            }
            Ok(Effect::Batch {
                batch: BatchRecord {
                    batch_id: view.next_batch_id()?,
                    issuer_id: req.issuer_id.clone(),
                    root: req.root,
                    size: req.size,
                    first_status_index: req.first_status_index,
                    status_count: req.status_count,
                    height: 0,
                    anchored_at: time,
                },
                request_id,
            })
        }
        Event::SetStatus { request } => {
            let sc = SignedStatusChange::from_bytes(request)?;
            request_signer(view, &sc, time)?;
            let req = sc.request();
            let anchored = view.ranges(&req.issuer_id)?.into_iter().any(|(f, c)| {
                req.status_index >= f && u64::from(req.status_index) < u64::from(f) + u64::from(c)
            });
            if !anchored {
                return Err(Error::NotAuthorised(format!(
                    "status index {} was never anchored by issuer {:?}",
                    req.status_index, req.issuer_id
                )));
            }
            let request_id = sc.request_id();
            if view.seen(&request_id)? {
                return Err(Error::Conflict(
                    "this status change was already recorded (replay)".into(),
                ));
            }
            Ok(Effect::Status {
                issuer_id: req.issuer_id.clone(),
                index: req.status_index,
                status: req.status,
                request_id,
            })
        }
        Event::SetStatusBatch { request } => {
            let sb = SignedStatusBatch::from_bytes(request)?;
            request_signer(view, &sb, time)?;
            let req = sb.request();
            if req.changes.is_empty() {
                return Err(Error::Invalid(
                    "a status batch needs at least one change".into(),
                ));
            }
            if req.changes.len() > MAX_BATCH_CHANGES {
                return Err(Error::Invalid(format!(
                    "a status batch holds at most {MAX_BATCH_CHANGES} changes, not {}",
                    req.changes.len()
                )));
            }
            let mut ranges = view.ranges(&req.issuer_id)?;
            ranges.sort_unstable();
            let mut indices: Vec<u32> = req.changes.iter().map(|(i, _)| *i).collect();
            indices.sort_unstable();
            if let Some(w) = indices.windows(2).find(|w| w[0] == w[1]) {
                return Err(Error::Invalid(format!(
                    "status index {} appears twice in the batch",
                    w[0]
                )));
            }
            for &index in &indices {
                // The last range starting at or before `index` (ranges never overlap).
                let pos = ranges.partition_point(|(f, _)| *f <= index);
                let anchored = pos > 0 && {
                    let (f, c) = ranges[pos - 1];
                    u64::from(index) < u64::from(f) + u64::from(c)
                };
                if !anchored {
                    return Err(Error::NotAuthorised(format!(
                        "status index {index} was never anchored by issuer {:?}",
                        req.issuer_id
                    )));
                }
            }
            let request_id = sb.request_id();
            if view.seen(&request_id)? {
                return Err(Error::Conflict(
                    "this status batch was already recorded (replay)".into(),
                ));
            }
            Ok(Effect::StatusBatch {
                issuer_id: req.issuer_id.clone(),
                changes: req.changes.clone(),
                request_id,
            })
        }
        Event::RetireIssuerKey { retirement } => {
            let body = KeyRetirement::from_bytes(retirement)?.verify(view.authority())?;
            let certs = view.certs(&body.issuer_id)?;
            if certs.is_empty() {
                return Err(Error::UnknownIssuer(body.issuer_id));
            }
            if !certs.iter().any(|c| c.body.public_key == body.public_key) {
                return Err(Error::NotFound(format!(
                    "issuer {:?} has no certificate for key {}",
                    body.issuer_id,
                    key_label(&body.public_key)
                )));
            }
            if let Some(old) = view.retirement(&body.issuer_id, &body.public_key)? {
                // A retirement only ever grows: moving `from` later (or withdrawing it) would
                // make valid again what verifiers already refused, the very thing someone holding
                // the compromised key would want.
                if body.from >= old.from {
                    return Err(Error::Conflict(format!(
                        "key {} of issuer {:?} is already retired from {}; a new retirement may \
                         only start earlier",
                        key_label(&body.public_key),
                        body.issuer_id,
                        old.from
                    )));
                }
            }
            Ok(Effect::Retire {
                statement: retirement.clone(),
                body: Box::new(body),
            })
        }
    }
}

/// Check one block as the replay does, given the state before it (`view`) and the block before
/// it (`prev`, `None` for the genesis block): height, link, time, hash, the authority's signature
/// (the key `view` was built with), and the event under the rules that admit it. Returns what the
/// block changes (`None` for the genesis block, which changes nothing but must record the
/// authority key `view` trusts). Every failure is [`Error::ChainBroken`] naming the block.
pub fn check_block(
    view: &dyn View,
    prev: Option<&Watermark>,
    block: &SignedBlock,
) -> Result<Option<Effect>> {
    let broken = |reason: String| Error::ChainBroken {
        height: block.height,
        reason,
    };
    let expected = prev.map_or(0, |p| p.height + 1);
    if block.height != expected {
        return Err(broken(format!("expected block height {expected}")));
    }
    let event = block.event()?;
    match prev {
        None => {
            let Event::Genesis { authority_key } = event else {
                return Err(broken("the first block is not a genesis block".into()));
            };
            if block.prev_hash != [0; 32] {
                return Err(broken("genesis previous hash is not zero".into()));
            }
            let authority = keys::verifying_key_from_bytes(&authority_key)
                .map_err(|e| broken(e.to_string()))?;
            if authority != *view.authority() {
                return Err(broken("genesis authority key changed".into()));
            }
            block.check_sealed(&authority)?;
            Ok(None)
        }
        Some(p) => {
            if block.prev_hash != p.block_hash {
                return Err(broken(
                    "previous hash does not link to the block before".into(),
                ));
            }
            if block.time < p.time {
                return Err(broken("block time goes backwards".into()));
            }
            block.check_sealed(view.authority())?;
            let effect = validate(view, &event, block.time)
                .map_err(|e| broken(format!("event rejected on replay: {e}")))?;
            Ok(Some(effect))
        }
    }
}

/// Where a mirror fetches the chain from: the embedded ledger here, the network registry later.
/// Blocks are served as stored; the mirror verifies them ([`check_block`]).
pub trait SyncSource {
    /// The blocks at heights `from..`, in order, at most `limit` of them (empty past the head).
    fn blocks_since(&self, from: u64, limit: usize) -> Result<Vec<SignedBlock>>;
}

impl SyncSource for SqliteLedger {
    fn blocks_since(&self, from: u64, limit: usize) -> Result<Vec<SignedBlock>> {
        let Ok(from) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks WHERE height >= ?1 ORDER BY height LIMIT ?2"
        ))?;
        let rows = st.query_map(params![from, limit], read_block)?;
        let mut out = Vec::new();
        for raw in rows {
            out.push(block_from_raw(raw?)?);
        }
        Ok(out)
    }
}

/// A short, stable name for a key in messages: the first 8 bytes of its SEC1 encoding after the
/// 0x04 prefix, in hex.
pub(crate) fn key_label(public_key: &[u8]) -> String {
    hex::encode(public_key.get(1..9).unwrap_or(public_key))
}

// ---------------------------------------------------------------------------------------------
// The in-memory replay.

pub(crate) struct IssuerRow {
    pub(crate) cert: Vec<u8>,
    pub(crate) body: IssuerCertBody,
    pub(crate) height: u64,
}

pub(crate) struct RetiredRow {
    pub(crate) statement: Vec<u8>,
    pub(crate) body: KeyRetirementBody,
    pub(crate) height: u64,
}

/// The state the rules see, replayed in memory (also the EVM backend's verified mirror).
pub(crate) struct State {
    pub(crate) authority: VerifyingKey,
    pub(crate) issuers: BTreeMap<String, Vec<IssuerRow>>,
    /// By (issuer id, public key).
    pub(crate) retired: BTreeMap<(String, Vec<u8>), RetiredRow>,
    pub(crate) batches: Vec<BatchRecord>,
    pub(crate) status: BTreeMap<String, StatusList>,
    pub(crate) requests: BTreeMap<[u8; 32], u64>,
    pub(crate) status_changes: usize,
}

impl View for State {
    fn authority(&self) -> &VerifyingKey {
        &self.authority
    }
    fn certs(&self, issuer_id: &str) -> Result<Vec<CertEntry>> {
        Ok(self
            .issuers
            .get(issuer_id)
            .map(|v| {
                v.iter()
                    .map(|r| CertEntry {
                        cert: r.cert.clone(),
                        body: r.body.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
    fn ranges(&self, issuer_id: &str) -> Result<Vec<(u32, u32)>> {
        Ok(self
            .batches
            .iter()
            .filter(|b| b.issuer_id == issuer_id)
            .map(|b| (b.first_status_index, b.status_count))
            .collect())
    }
    fn next_batch_id(&self) -> Result<u64> {
        Ok(self.batches.len() as u64 + 1)
    }
    fn seen(&self, request_id: &[u8; 32]) -> Result<bool> {
        Ok(self.requests.contains_key(request_id))
    }
    fn retirement(&self, issuer_id: &str, public_key: &[u8]) -> Result<Option<KeyRetirementBody>> {
        Ok(self
            .retired
            .get(&(issuer_id.to_owned(), public_key.to_vec()))
            .map(|r| r.body.clone()))
    }
}

impl State {
    pub(crate) fn new(authority: VerifyingKey) -> Self {
        State {
            authority,
            issuers: BTreeMap::new(),
            retired: BTreeMap::new(),
            batches: Vec::new(),
            status: BTreeMap::new(),
            requests: BTreeMap::new(),
            status_changes: 0,
        }
    }

    pub(crate) fn apply(&mut self, effect: Effect, height: u64) {
        match effect {
            Effect::Issuer {
                issuer_id,
                cert,
                body,
            } => self.issuers.entry(issuer_id).or_default().push(IssuerRow {
                cert,
                body: *body,
                height,
            }),
            Effect::Batch {
                mut batch,
                request_id,
            } => {
                batch.height = height;
                self.batches.push(batch);
                self.requests.insert(request_id, height);
            }
            Effect::Status {
                issuer_id,
                index,
                status,
                request_id,
            } => {
                self.status.entry(issuer_id).or_default().set(index, status);
                self.requests.insert(request_id, height);
                self.status_changes += 1;
            }
            Effect::StatusBatch {
                issuer_id,
                changes,
                request_id,
            } => {
                let list = self.status.entry(issuer_id).or_default();
                for (index, status) in &changes {
                    list.set(*index, *status);
                }
                self.requests.insert(request_id, height);
                self.status_changes += changes.len();
            }
            Effect::Retire { statement, body } => {
                self.retired.insert(
                    (body.issuer_id.clone(), body.public_key.clone()),
                    RetiredRow {
                        statement,
                        body: *body,
                        height,
                    },
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The database view.

struct DbView<'a> {
    conn: &'a Connection,
    authority: &'a VerifyingKey,
}

impl View for DbView<'_> {
    fn authority(&self) -> &VerifyingKey {
        self.authority
    }
    fn certs(&self, issuer_id: &str) -> Result<Vec<CertEntry>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT cert FROM issuers WHERE issuer_id = ?1 ORDER BY seq")?;
        let rows = st.query_map([issuer_id], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for cert in rows {
            let cert = cert?;
            let body = IssuerCertificate::from_bytes(&cert)
                .and_then(|c| c.verify(self.authority))
                .map_err(|e| index_broken("issuers", &e.to_string()))?;
            out.push(CertEntry { cert, body });
        }
        Ok(out)
    }
    fn ranges(&self, issuer_id: &str) -> Result<Vec<(u32, u32)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT first_status_index, status_count FROM batches WHERE issuer_id = ?1",
        )?;
        let rows = st.query_map([issuer_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
    fn next_batch_id(&self) -> Result<u64> {
        let max: Option<i64> =
            self.conn
                .query_row("SELECT MAX(batch_id) FROM batches", [], |r| r.get(0))?;
        Ok(from_i64(max.unwrap_or(0), "batch id")? + 1)
    }
    fn retirement(&self, issuer_id: &str, public_key: &[u8]) -> Result<Option<KeyRetirementBody>> {
        retired_row(self.conn, self.authority, issuer_id, public_key)
            .map(|r| r.map(|(_, body, _)| body))
    }
    fn seen(&self, request_id: &[u8; 32]) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM requests WHERE request_id = ?1",
                [request_id.as_slice()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

fn index_broken(table: &str, reason: &str) -> Error {
    Error::ChainBroken {
        height: 0,
        reason: format!("index table {table}: {reason}"),
    }
}

/// The retired_keys row of one key: (statement, its verified body, height). Defence in depth: a
/// row is only believed if the authority signed it and it names the key it is filed under.
fn retired_row(
    conn: &Connection,
    authority: &VerifyingKey,
    issuer_id: &str,
    public_key: &[u8],
) -> Result<Option<(KeyRetirement, KeyRetirementBody, u64)>> {
    let row: Option<(Vec<u8>, i64)> = conn
        .query_row(
            "SELECT statement, height FROM retired_keys WHERE issuer_id = ?1 AND public_key = ?2",
            params![issuer_id, public_key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((statement, height)) = row else {
        return Ok(None);
    };
    let retirement = KeyRetirement::from_bytes(&statement)
        .map_err(|e| index_broken("retired_keys", &e.to_string()))?;
    let body = retirement
        .verify(authority)
        .map_err(|e| index_broken("retired_keys", &e.to_string()))?;
    if body.issuer_id != issuer_id || body.public_key != public_key {
        return Err(index_broken(
            "retired_keys",
            "a retirement is filed under another key",
        ));
    }
    Ok(Some((retirement, body, from_i64(height, "height")?)))
}

fn apply_db(conn: &Connection, effect: &Effect, height: u64) -> Result<()> {
    let h = to_i64(height, "height")?;
    match effect {
        Effect::Issuer {
            issuer_id, cert, ..
        } => {
            conn.execute(
                "INSERT INTO issuers (issuer_id, seq, cert, height) VALUES (?1, \
                 (SELECT COALESCE(MAX(seq) + 1, 0) FROM issuers WHERE issuer_id = ?1), ?2, ?3)",
                params![issuer_id, cert, h],
            )?;
        }
        Effect::Batch { batch, request_id } => {
            conn.execute(
                "INSERT INTO batches (batch_id, issuer_id, root, size, first_status_index, \
                 status_count, height) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    to_i64(batch.batch_id, "batch id")?,
                    batch.issuer_id,
                    batch.root.as_slice(),
                    to_i64(batch.size, "batch size")?,
                    batch.first_status_index,
                    batch.status_count,
                    h
                ],
            )?;
            conn.execute(
                "INSERT INTO requests (request_id, height) VALUES (?1, ?2)",
                params![request_id.as_slice(), h],
            )?;
        }
        Effect::Status {
            issuer_id,
            index,
            status,
            request_id,
        } => {
            write_status(conn, issuer_id, &[(*index, *status)])?;
            conn.execute(
                "INSERT INTO requests (request_id, height) VALUES (?1, ?2)",
                params![request_id.as_slice(), h],
            )?;
        }
        Effect::StatusBatch {
            issuer_id,
            changes,
            request_id,
        } => {
            // The issuer's list is read and written once for the whole batch.
            write_status(conn, issuer_id, changes)?;
            conn.execute(
                "INSERT INTO requests (request_id, height) VALUES (?1, ?2)",
                params![request_id.as_slice(), h],
            )?;
        }
        Effect::Retire { statement, body } => {
            conn.execute(
                "INSERT INTO retired_keys (issuer_id, public_key, statement, height) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT(issuer_id, public_key) \
                 DO UPDATE SET statement = excluded.statement, height = excluded.height",
                params![body.issuer_id, body.public_key, statement, h],
            )?;
        }
    }
    Ok(())
}

/// Apply status changes to one issuer's list: one read and one write of its blob.
fn write_status(
    conn: &Connection,
    issuer_id: &str,
    changes: &[(u32, CredentialStatus)],
) -> Result<()> {
    let bits: Option<Vec<u8>> = conn
        .query_row(
            "SELECT bits FROM status_lists WHERE issuer_id = ?1",
            [issuer_id],
            |r| r.get(0),
        )
        .optional()?;
    let mut list = match bits {
        Some(b) => {
            StatusList::from_bytes(&b).map_err(|e| index_broken("status_lists", &e.to_string()))?
        }
        None => StatusList::new(),
    };
    for (index, status) in changes {
        list.set(*index, *status);
    }
    conn.execute(
        "INSERT INTO status_lists (issuer_id, bits) VALUES (?1, ?2) \
         ON CONFLICT(issuer_id) DO UPDATE SET bits = excluded.bits",
        params![issuer_id, list.as_bytes()],
    )?;
    Ok(())
}

/// A batch row with the time of the block that anchored it.
const BATCH_SELECT: &str = "SELECT x.batch_id, x.issuer_id, x.root, x.size, \
     x.first_status_index, x.status_count, x.height, b.time \
     FROM batches x JOIN blocks b ON b.height = x.height";

type RawBatch = (i64, String, Vec<u8>, i64, u32, u32, i64, i64);

fn read_batch(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawBatch> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn batch_from_raw(raw: RawBatch) -> Result<BatchRecord> {
    let (id, issuer_id, root, size, first, count, height, time) = raw;
    Ok(BatchRecord {
        batch_id: from_i64(id, "batch id")?,
        issuer_id,
        root: to_hash(root, "batch root")?,
        size: from_i64(size, "batch size")?,
        first_status_index: first,
        status_count: count,
        height: from_i64(height, "batch height")?,
        anchored_at: from_i64(time, "block time")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Blocks.

/// One block as stored and as served to mirrors ([`SyncSource`]): everything needed to verify it
/// independently of whoever served it ([`check_block`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedBlock {
    pub height: u64,
    pub prev_hash: [u8; 32],
    /// Unix seconds.
    pub time: u64,
    /// CBOR of the block's event.
    pub event: Vec<u8>,
    /// SHA-256 of `["civic-registry/block/v1", height, prev_hash, time, event]`.
    pub hash: [u8; 32],
    /// The authority's ECDSA P-256 signature over `hash` (64 bytes, r || s).
    pub signature: Vec<u8>,
}

/// A block row as SQLite returns it, before any checking.
type RawBlock = (i64, Vec<u8>, i64, Vec<u8>, Vec<u8>, Vec<u8>);

const BLOCK_COLUMNS: &str = "height, prev_hash, time, event, hash, signature";

fn read_block(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawBlock> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn block_from_raw(raw: RawBlock) -> Result<SignedBlock> {
    let (height, prev, time, event, hash, signature) = raw;
    let height = from_i64(height, "block height")?;
    let broken = |reason: &str| Error::ChainBroken {
        height,
        reason: reason.to_owned(),
    };
    Ok(SignedBlock {
        height,
        prev_hash: <[u8; 32]>::try_from(prev.as_slice())
            .map_err(|_| broken("previous hash is not 32 bytes"))?,
        time: u64::try_from(time).map_err(|_| broken("negative time"))?,
        event,
        hash: <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| broken("hash is not 32 bytes"))?,
        signature,
    })
}

impl SignedBlock {
    /// Recompute the hash and check the authority's signature over it.
    pub fn check_sealed(&self, authority: &VerifyingKey) -> Result<()> {
        let broken = |reason: &str| Error::ChainBroken {
            height: self.height,
            reason: reason.to_owned(),
        };
        let h = block_hash(self.height, &self.prev_hash, self.time, &self.event)?;
        if h != self.hash {
            return Err(broken("block hash does not match its contents"));
        }
        let sig = Signature::from_slice(&self.signature)
            .map_err(|_| broken("block signature is malformed"))?;
        authority
            .verify(&self.hash, &sig)
            .map_err(|_| broken("block signature does not verify with the authority key"))
    }

    fn event(&self) -> Result<Event> {
        cose::from_cbor(&self.event, "block event").map_err(|e| Error::ChainBroken {
            height: self.height,
            reason: e.to_string(),
        })
    }

    /// Height, hash and time of this block.
    pub fn watermark(&self) -> Watermark {
        Watermark {
            height: self.height,
            block_hash: self.hash,
            time: self.time,
        }
    }
}

fn block_at(conn: &Connection, height: u64) -> Result<Option<SignedBlock>> {
    conn.query_row(
        &format!("SELECT {BLOCK_COLUMNS} FROM blocks WHERE height = ?1"),
        [to_i64(height, "height")?],
        read_block,
    )
    .optional()?
    .map(block_from_raw)
    .transpose()
}

fn head_block(conn: &Connection) -> Result<SignedBlock> {
    let raw = conn
        .query_row(
            &format!("SELECT {BLOCK_COLUMNS} FROM blocks ORDER BY height DESC LIMIT 1"),
            [],
            read_block,
        )
        .optional()?
        .ok_or_else(|| Error::ChainBroken {
            height: 0,
            reason: "the ledger has no blocks".into(),
        })?;
    block_from_raw(raw)
}

/// The authority key from the genesis block, after checking the genesis block and the head.
fn check_ends(conn: &Connection) -> Result<VerifyingKey> {
    let genesis = block_at(conn, 0)?.ok_or_else(|| Error::ChainBroken {
        height: 0,
        reason: "no genesis block".into(),
    })?;
    let authority = match genesis.event()? {
        Event::Genesis { authority_key } => keys::verifying_key_from_bytes(&authority_key)
            .map_err(|_| Error::ChainBroken {
                height: 0,
                reason: "genesis authority key is not a P-256 key".into(),
            })?,
        _ => {
            return Err(Error::ChainBroken {
                height: 0,
                reason: "the first block is not a genesis block".into(),
            })
        }
    };
    if genesis.prev_hash != [0; 32] {
        return Err(Error::ChainBroken {
            height: 0,
            reason: "genesis previous hash is not zero".into(),
        });
    }
    genesis.check_sealed(&authority)?;
    head_block(conn)?.check_sealed(&authority)?;
    Ok(authority)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(Error::Conflict(format!(
            "registry schema version {version} is newer than this software ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(m)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// How long a writer waits for another writer's transaction before giving up.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Free bytes on the filesystem holding `db` (for the caller's error message).
pub fn free_space(db: &Path) -> Option<u64> {
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// The storage faults an operator can act on (another writer holds the lock, the disk is
/// full) in words instead of SQLite's codes; `None` for any other error. SQLite reports a full
/// disk as SQLITE_FULL, or, when the shared-memory index or the WAL cannot grow, as an
/// SQLITE_IOERR variant: an I/O error with under 1 MiB free is taken for a full disk. Either
/// way SQLite has rolled the transaction back: the database is as it was before the call.
pub fn storage_fault_message(e: &rusqlite::Error, db: &Path) -> Option<String> {
    let shown = db.display();
    match e.sqlite_error_code()? {
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => Some(format!(
            "{shown} is locked by another writer: gave up after {} s, nothing was written; \
             try again when the other writer is done",
            BUSY_TIMEOUT.as_secs()
        )),
        code @ (rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure) => {
            let free = free_space(db);
            if code == rusqlite::ErrorCode::SystemIoFailure && free.is_none_or(|f| f >= 1 << 20) {
                return None;
            }
            let free = free.map_or(String::new(), |f| format!(" ({} KiB free)", f / 1024));
            Some(format!(
                "{shown}: the disk is full{free}: nothing was written, it is unchanged; free \
                 some space and try again"
            ))
        }
        _ => None,
    }
}

fn storage_fault(e: Error, conn: &Connection) -> Error {
    let Error::Sqlite(s) = &e else {
        return e;
    };
    let path = Path::new(conn.path().unwrap_or(""));
    match storage_fault_message(s, path) {
        Some(m) if !path.as_os_str().is_empty() => Error::Io(format!("the ledger {m}")),
        _ => e,
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The ledger.

/// The embedded registry: one SQLite file.
#[derive(Debug)]
pub struct SqliteLedger {
    conn: Connection,
    authority: VerifyingKey,
    /// Present only for a writer.
    signer: Option<SigningKey>,
}

impl SqliteLedger {
    /// Create a new ledger file with its genesis block (height 0) recording the authority key.
    /// An existing file is refused ([`Error::Conflict`]).
    pub fn create(path: &Path, authority: &SigningKey) -> Result<Self> {
        if path.exists() {
            return Err(Error::Conflict(format!(
                "registry {} already exists",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Self::init(conn, authority)
    }

    /// A ledger in memory (tests).
    pub fn open_in_memory(authority: &SigningKey) -> Result<Self> {
        Self::init(Connection::open_in_memory()?, authority)
    }

    fn init(mut conn: Connection, authority: &SigningKey) -> Result<Self> {
        Self::genesis(&mut conn, authority).map_err(|e| storage_fault(e, &conn))?;
        Ok(Self {
            conn,
            authority: *authority.verifying_key(),
            signer: Some(authority.clone()),
        })
    }

    fn genesis(conn: &mut Connection, authority: &SigningKey) -> Result<()> {
        configure(conn)?;
        migrate(conn)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: i64 = tx.query_row("SELECT COUNT(*) FROM blocks", [], |r| r.get(0))?;
        if existing != 0 {
            return Err(Error::Conflict(
                "the registry already has a genesis block".into(),
            ));
        }
        let vk = *authority.verifying_key();
        let event = cose::to_cbor(&Event::Genesis {
            authority_key: keys::public_key_bytes(&vk).to_vec(),
        })?;
        insert_block(&tx, authority, 0, &[0; 32], now_secs(), &event)?;
        tx.commit()?;
        Ok(())
    }

    fn open_existing(path: &Path) -> Result<(Connection, VerifyingKey)> {
        if !path.exists() {
            return Err(Error::NotFound(format!("registry {}", path.display())));
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn)
            .and_then(|()| migrate(&mut conn))
            .map_err(|e| storage_fault(e, &conn))?;
        let authority = check_ends(&conn)?;
        Ok((conn, authority))
    }

    /// Open for reading (verdicts, verification). Writes fail with [`Error::ReadOnly`].
    pub fn open(path: &Path) -> Result<Self> {
        let (conn, authority) = Self::open_existing(path)?;
        Ok(Self {
            conn,
            authority,
            signer: None,
        })
    }

    /// Open for writing; `authority` must be the key recorded at genesis.
    pub fn open_writer(path: &Path, authority: SigningKey) -> Result<Self> {
        let (conn, vk) = Self::open_existing(path)?;
        if *authority.verifying_key() != vk {
            return Err(Error::NotAuthorised(
                "this key is not the registry's authority key".into(),
            ));
        }
        Ok(Self {
            conn,
            authority: vk,
            signer: Some(authority),
        })
    }

    /// Whether this ledger holds the authority key.
    pub fn is_writer(&self) -> bool {
        self.signer.is_some()
    }

    /// Retire an issuer key from time `from` (unix seconds): sign the [`KeyRetirement`] with
    /// this writer's authority key and record it ([`Registry::retire_issuer_key`]).
    pub fn retire_key(
        &mut self,
        issuer_id: &str,
        public_key: &[u8],
        from: u64,
        reason: &str,
    ) -> Result<Watermark> {
        let signer = self.signer.as_ref().ok_or(Error::ReadOnly)?;
        let retirement = KeyRetirement::sign(
            &KeyRetirementBody {
                issuer_id: issuer_id.to_owned(),
                public_key: public_key.to_vec(),
                from,
                reason: reason.to_owned(),
            },
            signer,
        )?;
        self.retire_issuer_key(&retirement)
    }

    /// Validate `event` against the index tables and append it as a new block, in one
    /// transaction.
    fn append(&mut self, event: Event) -> Result<(Watermark, Effect)> {
        self.append_tx(event)
            .map_err(|e| storage_fault(e, &self.conn))
    }

    fn append_tx(&mut self, event: Event) -> Result<(Watermark, Effect)> {
        let signer = self.signer.as_ref().ok_or(Error::ReadOnly)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head = head_block(&tx)?;
        let time = now_secs().max(head.time);
        let effect = validate(
            &DbView {
                conn: &tx,
                authority: &self.authority,
            },
            &event,
            time,
        )?;
        let height = head.height + 1;
        let bytes = cose::to_cbor(&event)?;
        let wm = insert_block(&tx, signer, height, &head.hash, time, &bytes)?;
        apply_db(&tx, &effect, height)?;
        tx.commit()?;
        Ok((wm, effect))
    }

    fn certs_where(&self, issuer_id: Option<&str>) -> Result<Vec<IssuerRecord>> {
        let sql = "SELECT i.cert, i.height, b.hash, b.time FROM issuers i \
                   JOIN blocks b ON b.height = i.height \
                   WHERE ?1 IS NULL OR i.issuer_id = ?1 ORDER BY i.issuer_id, i.seq";
        let mut st = self.conn.prepare_cached(sql)?;
        let rows = st.query_map([issuer_id], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (cert, height, hash, time) = row?;
            let cert = IssuerCertificate::from_bytes(&cert)
                .map_err(|e| index_broken("issuers", &e.to_string()))?;
            // Defence in depth: an index row is only believed if the authority signed it.
            let body = cert
                .verify(&self.authority)
                .map_err(|e| index_broken("issuers", &e.to_string()))?;
            out.push(IssuerRecord {
                cert,
                body,
                registered_at: Watermark {
                    height: from_i64(height, "height")?,
                    block_hash: to_hash(hash, "block hash")?,
                    time: from_i64(time, "time")?,
                },
            });
        }
        Ok(out)
    }

    /// Replay every block into memory, checking hashes, links, signatures and rules.
    fn replay(&self) -> Result<(State, Watermark, u64)> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks ORDER BY height"
        ))?;
        let mut rows = st.query([])?;
        let mut state = State::new(self.authority);
        let mut prev: Option<Watermark> = None;
        let mut count = 0u64;
        while let Some(r) = rows.next()? {
            let block = block_from_raw(read_block(r)?)?;
            if let Some(effect) = check_block(&state, prev.as_ref(), &block)? {
                state.apply(effect, block.height);
            }
            count += 1;
            prev = Some(block.watermark());
        }
        match prev {
            Some(p) => Ok((state, p, count)),
            None => Err(Error::ChainBroken {
                height: 0,
                reason: "the ledger has no blocks".into(),
            }),
        }
    }

    /// Check that the index tables hold exactly what the replay derived.
    fn check_indexes(&self, state: &State) -> Result<()> {
        // issuers
        let mut st = self
            .conn
            .prepare("SELECT issuer_id, seq, cert, height FROM issuers ORDER BY issuer_id, seq")?;
        let rows: Vec<(String, i64, Vec<u8>, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let expected: Vec<(String, i64, Vec<u8>, i64)> = state
            .issuers
            .iter()
            .flat_map(|(id, v)| {
                v.iter().enumerate().map(move |(seq, r)| {
                    (
                        id.clone(),
                        seq as i64,
                        r.cert.clone(),
                        i64::try_from(r.height).unwrap_or(-1),
                    )
                })
            })
            .collect();
        if rows != expected {
            return Err(index_broken("issuers", "does not match the chain"));
        }
        // batches
        let mut st = self
            .conn
            .prepare(&format!("{BATCH_SELECT} ORDER BY x.batch_id"))?;
        let rows: Vec<BatchRecord> = st
            .query_map([], read_batch)?
            .map(|row| batch_from_raw(row?))
            .collect::<Result<_>>()
            .map_err(|e| index_broken("batches", &e.to_string()))?;
        if rows != state.batches {
            return Err(index_broken("batches", "does not match the chain"));
        }
        // retired keys
        let mut st = self.conn.prepare(
            "SELECT issuer_id, public_key, statement, height FROM retired_keys \
             ORDER BY issuer_id, public_key",
        )?;
        let rows: Vec<(String, Vec<u8>, Vec<u8>, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let expected: Vec<(String, Vec<u8>, Vec<u8>, i64)> = state
            .retired
            .iter()
            .map(|((id, key), r)| {
                (
                    id.clone(),
                    key.clone(),
                    r.statement.clone(),
                    i64::try_from(r.height).unwrap_or(-1),
                )
            })
            .collect();
        if rows != expected {
            return Err(index_broken("retired_keys", "does not match the chain"));
        }
        // status lists (empty lists and absent rows are the same thing)
        let mut st = self
            .conn
            .prepare("SELECT issuer_id, bits FROM status_lists ORDER BY issuer_id")?;
        let mut lists = BTreeMap::new();
        for row in st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })? {
            let (id, bits) = row?;
            let list = StatusList::from_bytes(&bits)
                .map_err(|e| index_broken("status_lists", &e.to_string()))?;
            if !list.as_bytes().is_empty() {
                lists.insert(id, list);
            }
        }
        let expected: BTreeMap<String, StatusList> = state
            .status
            .iter()
            .filter(|(_, l)| !l.as_bytes().is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if lists != expected {
            return Err(index_broken("status_lists", "does not match the chain"));
        }
        // seen requests
        let mut st = self
            .conn
            .prepare("SELECT request_id, height FROM requests ORDER BY request_id")?;
        let rows: BTreeSet<(Vec<u8>, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let expected: BTreeSet<(Vec<u8>, i64)> = state
            .requests
            .iter()
            .map(|(k, h)| (k.to_vec(), i64::try_from(*h).unwrap_or(-1)))
            .collect();
        if rows != expected {
            return Err(index_broken("requests", "does not match the chain"));
        }
        Ok(())
    }
}

fn insert_block(
    tx: &Connection,
    key: &SigningKey,
    height: u64,
    prev_hash: &[u8; 32],
    time: u64,
    event: &[u8],
) -> Result<Watermark> {
    let hash = block_hash(height, prev_hash, time, event)?;
    let sig: Signature = key.sign(&hash);
    tx.execute(
        &format!("INSERT INTO blocks ({BLOCK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            to_i64(height, "height")?,
            prev_hash.as_slice(),
            to_i64(time, "time")?,
            event,
            hash.as_slice(),
            &sig.to_bytes()[..]
        ],
    )?;
    Ok(Watermark {
        height,
        block_hash: hash,
        time,
    })
}

/// The byte of `issuer_id`'s status list that holds `index`, read through SQLite's
/// incremental blob I/O: a verdict needs 2 bits, and reading the whole list (up to megabytes
/// at city scale) for them made verdicts 5x slower than the signature check. `None`: no list,
/// or the index is past its end (valid). Shared by the ledger and the clinic cache, whose
/// `status_lists` tables have the same `issuer_id`/`bits` columns.
pub fn read_status_byte(
    conn: &Connection,
    issuer_id: &str,
    index: u32,
) -> rusqlite::Result<Option<u8>> {
    let rowid: Option<i64> = conn
        .query_row(
            "SELECT rowid FROM status_lists WHERE issuer_id = ?1",
            [issuer_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(rowid) = rowid else {
        return Ok(None);
    };
    let blob = conn.blob_open(
        rusqlite::DatabaseName::Main,
        "status_lists",
        "bits",
        rowid,
        true,
    )?;
    let pos = (index / 4) as usize;
    if pos >= blob.len() {
        return Ok(None);
    }
    let mut byte = [0u8];
    blob.read_at_exact(&mut byte, pos)?;
    Ok(Some(byte[0]))
}

impl Registry for SqliteLedger {
    fn authority_key(&self) -> Result<VerifyingKey> {
        Ok(self.authority)
    }

    fn watermark(&self) -> Result<Watermark> {
        Ok(head_block(&self.conn)?.watermark())
    }

    fn register_issuer(&mut self, cert: &IssuerCertificate) -> Result<Watermark> {
        let (wm, _) = self.append(Event::RegisterIssuer {
            cert: cert.to_bytes(),
        })?;
        Ok(wm)
    }

    fn anchor_batch(&mut self, req: &SignedAnchor) -> Result<BatchRecord> {
        let (wm, effect) = self.append(Event::AnchorBatch {
            request: req.to_bytes(),
        })?;
        match effect {
            Effect::Batch { mut batch, .. } => {
                batch.height = wm.height;
                Ok(batch)
            }
            _ => Err(Error::Invalid("internal: anchor produced no batch".into())),
        }
    }

    fn set_status(&mut self, change: &SignedStatusChange) -> Result<Watermark> {
        let (wm, _) = self.append(Event::SetStatus {
            request: change.to_bytes(),
        })?;
        Ok(wm)
    }

    fn set_status_batch(&mut self, batch: &SignedStatusBatch) -> Result<Watermark> {
        let (wm, _) = self.append(Event::SetStatusBatch {
            request: batch.to_bytes(),
        })?;
        Ok(wm)
    }

    fn retire_issuer_key(&mut self, retirement: &KeyRetirement) -> Result<Watermark> {
        let (wm, _) = self.append(Event::RetireIssuerKey {
            retirement: retirement.to_bytes(),
        })?;
        Ok(wm)
    }

    fn retired_keys(&self, issuer_id: &str) -> Result<Vec<RetiredKey>> {
        let mut st = self.conn.prepare_cached(
            "SELECT public_key FROM retired_keys WHERE issuer_id = ?1 ORDER BY height",
        )?;
        let keys: Vec<Vec<u8>> = st
            .query_map([issuer_id], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        keys.iter()
            .filter_map(|k| self.retirement(issuer_id, k).transpose())
            .collect()
    }

    fn retirement(&self, issuer_id: &str, public_key: &[u8]) -> Result<Option<RetiredKey>> {
        let Some((retirement, body, height)) =
            retired_row(&self.conn, &self.authority, issuer_id, public_key)?
        else {
            return Ok(None);
        };
        let block = block_at(&self.conn, height)?
            .ok_or_else(|| index_broken("retired_keys", "names a block that does not exist"))?;
        Ok(Some(RetiredKey {
            retirement,
            body,
            recorded_at: block.watermark(),
        }))
    }

    /// As the provided method, inside one read snapshot so that the answer and its watermark
    /// agree even while a writer appends.
    fn verdict(
        &self,
        record: &crate::CardRecord,
        evidence: Option<&crate::CardEvidence>,
        now: u64,
    ) -> Result<crate::VerdictReport> {
        let snapshot = self.conn.unchecked_transaction()?;
        let report = crate::verdict::assess(self, record, evidence, now)?;
        snapshot.commit()?;
        Ok(report)
    }

    fn issuer_certs(&self, issuer_id: &str) -> Result<Vec<IssuerRecord>> {
        self.certs_where(Some(issuer_id))
    }

    fn issuers(&self) -> Result<Vec<IssuerRecord>> {
        self.certs_where(None)
    }

    fn batch(&self, batch_id: u64) -> Result<Option<BatchRecord>> {
        let Ok(id) = i64::try_from(batch_id) else {
            return Ok(None);
        };
        self.conn
            .query_row(
                &format!("{BATCH_SELECT} WHERE x.batch_id = ?1"),
                [id],
                read_batch,
            )
            .optional()?
            .map(batch_from_raw)
            .transpose()
    }

    fn status(&self, issuer_id: &str, index: u32) -> Result<CredentialStatus> {
        // Only the byte that holds the index is read.
        let byte = read_status_byte(&self.conn, issuer_id, index)?;
        StatusList::status_in_byte(byte, index)
            .map_err(|e| index_broken("status_lists", &e.to_string()))
    }

    fn next_status_index(&self, issuer_id: &str) -> Result<u32> {
        let max: Option<i64> = self.conn.query_row(
            "SELECT MAX(first_status_index + status_count) FROM batches WHERE issuer_id = ?1",
            [issuer_id],
            |r| r.get(0),
        )?;
        u32::try_from(max.unwrap_or(0))
            .map_err(|_| index_broken("batches", "status index out of range"))
    }

    fn verify_chain(&self) -> Result<ChainReport> {
        // One read snapshot for the replay and the index comparison.
        let snapshot = self.conn.unchecked_transaction()?;
        let (state, head, blocks) = self.replay()?;
        self.check_indexes(&state)?;
        snapshot.commit()?;
        Ok(ChainReport {
            blocks,
            issuers: state.issuers.len(),
            batches: state.batches.len(),
            status_changes: state.status_changes,
            retired_keys: state.retired.len(),
            head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.db");
        let auth = keys::generate();
        let l = SqliteLedger::create(&path, &auth).unwrap();
        let wm = l.watermark().unwrap();
        assert_eq!(wm.height, 0);
        drop(l);
        assert!(matches!(
            SqliteLedger::create(&path, &auth),
            Err(Error::Conflict(_))
        ));
        let r = SqliteLedger::open(&path).unwrap();
        assert_eq!(r.watermark().unwrap(), wm);
        assert_eq!(&r.authority_key().unwrap(), auth.verifying_key());
        assert!(!r.is_writer());
        assert_eq!(r.verify_chain().unwrap().blocks, 1);
        assert!(matches!(
            SqliteLedger::open_writer(&path, keys::generate()),
            Err(Error::NotAuthorised(_))
        ));
        assert!(SqliteLedger::open_writer(&path, auth).unwrap().is_writer());
        assert!(matches!(
            SqliteLedger::open(&dir.path().join("missing.db")),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn blocks_since_serves_verifiable_blocks_in_pages() {
        use crate::credential::Kind;
        let auth = keys::generate();
        let mut l = SqliteLedger::open_in_memory(&auth).unwrap();
        for id in ["a", "b", "c"] {
            let key = keys::generate();
            let cert = IssuerCertificate::sign(
                &IssuerCertBody {
                    issuer_id: id.into(),
                    name: id.into(),
                    kinds: vec![Kind::Health],
                    public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
                    not_before: 0,
                    not_after: u64::MAX,
                },
                &auth,
            )
            .unwrap();
            l.register_issuer(&cert).unwrap();
        }
        let page = l.blocks_since(1, 2).unwrap();
        assert_eq!(page.iter().map(|b| b.height).collect::<Vec<_>>(), [1, 2]);
        assert!(l.blocks_since(4, 10).unwrap().is_empty());
        assert!(l.blocks_since(u64::MAX, 10).unwrap().is_empty());

        // A follower replays them with the ledger's own rules.
        let mut state = State {
            authority: *auth.verifying_key(),
            issuers: BTreeMap::new(),
            retired: BTreeMap::new(),
            batches: Vec::new(),
            status: BTreeMap::new(),
            requests: BTreeMap::new(),
            status_changes: 0,
        };
        let blocks = l.blocks_since(0, 100).unwrap();
        let mut prev: Option<Watermark> = None;
        for b in &blocks {
            if let Some(e) = check_block(&state, prev.as_ref(), b).unwrap() {
                state.apply(e, b.height);
            }
            prev = Some(b.watermark());
        }
        assert_eq!(prev, Some(l.watermark().unwrap()));
        assert_eq!(state.issuers.len(), 3);
        // A block re-sealed elsewhere with another hash is refused (hash, then signature).
        let again = SignedBlock {
            height: 4,
            prev_hash: blocks[3].hash,
            ..blocks[3].clone()
        };
        assert!(matches!(
            check_block(&state, prev.as_ref(), &again),
            Err(Error::ChainBroken { height: 4, .. })
        ));
        // Another authority's chain is refused at genesis.
        let other = SqliteLedger::open_in_memory(&keys::generate()).unwrap();
        let g = &other.blocks_since(0, 1).unwrap()[0];
        assert!(matches!(
            check_block(&state, None, g),
            Err(Error::ChainBroken { height: 0, reason }) if reason.contains("authority")
        ));
    }

    #[test]
    fn blocks_are_append_only() {
        let auth = keys::generate();
        let l = SqliteLedger::open_in_memory(&auth).unwrap();
        assert!(l.conn.execute("DELETE FROM blocks", []).is_err());
        assert!(l.conn.execute("UPDATE blocks SET time = 0", []).is_err());
    }

    /// A block the authority sealed but whose retirement breaks the rules (a statement not
    /// signed by the authority, a key the issuer never had) is caught on replay.
    #[test]
    fn replay_checks_retirements_inside_sealed_blocks() {
        use crate::credential::Kind;
        for case in 0..2 {
            let auth = keys::generate();
            let mut l = SqliteLedger::open_in_memory(&auth).unwrap();
            let issuer = keys::generate();
            let cert = IssuerCertificate::sign(
                &IssuerCertBody {
                    issuer_id: "health".into(),
                    name: "Health".into(),
                    kinds: vec![Kind::Health],
                    public_key: keys::public_key_bytes(issuer.verifying_key()).to_vec(),
                    not_before: 0,
                    not_after: u64::MAX,
                },
                &auth,
            )
            .unwrap();
            l.register_issuer(&cert).unwrap();
            let (key, signer) = match case {
                0 => (issuer.clone(), keys::generate()),
                _ => (keys::generate(), auth.clone()),
            };
            let statement = KeyRetirement::sign(
                &KeyRetirementBody {
                    issuer_id: "health".into(),
                    public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
                    from: 0,
                    reason: "test".into(),
                },
                &signer,
            )
            .unwrap();
            // The writer refuses it...
            assert!(l.retire_issuer_key(&statement).is_err());
            // ...so seal it behind the writer's back.
            let head = head_block(&l.conn).unwrap();
            let event = cose::to_cbor(&Event::RetireIssuerKey {
                retirement: statement.to_bytes(),
            })
            .unwrap();
            insert_block(&l.conn, &auth, 2, &head.hash, head.time, &event).unwrap();
            match l.verify_chain() {
                Err(Error::ChainBroken { height: 2, reason }) => {
                    assert!(reason.contains("rejected on replay"), "{reason}")
                }
                other => panic!("case {case}: not detected: {other:?}"),
            }
        }
    }

    /// A status batch the authority sealed behind the writer's back with an index listed twice
    /// is caught on replay; a good one replays.
    #[test]
    fn replay_checks_status_batches_inside_sealed_blocks() {
        use crate::credential::Kind;
        use crate::{AnchorRequest, StatusBatch};
        let auth = keys::generate();
        let mut l = SqliteLedger::open_in_memory(&auth).unwrap();
        let issuer = keys::generate();
        let cert = IssuerCertificate::sign(
            &IssuerCertBody {
                issuer_id: "health".into(),
                name: "Health".into(),
                kinds: vec![Kind::Health],
                public_key: keys::public_key_bytes(issuer.verifying_key()).to_vec(),
                not_before: 0,
                not_after: u64::MAX,
            },
            &auth,
        )
        .unwrap();
        l.register_issuer(&cert).unwrap();
        let anchor = AnchorRequest {
            issuer_id: "health".into(),
            root: [1; 32],
            size: 4,
            first_status_index: 0,
            status_count: 4,
        };
        l.anchor_batch(&SignedAnchor::sign(&anchor, &issuer).unwrap())
            .unwrap();
        let sign = |changes: Vec<(u32, CredentialStatus)>| {
            SignedStatusBatch::sign(
                &StatusBatch {
                    issuer_id: "health".into(),
                    changes,
                },
                &issuer,
            )
            .unwrap()
        };
        l.set_status_batch(&sign(vec![(0, CredentialStatus::Revoked)]))
            .unwrap();
        assert_eq!(l.verify_chain().unwrap().status_changes, 1);
        let bad = sign(vec![
            (1, CredentialStatus::Revoked),
            (1, CredentialStatus::Valid),
        ]);
        assert!(matches!(l.set_status_batch(&bad), Err(Error::Invalid(_))));
        let head = head_block(&l.conn).unwrap();
        let event = cose::to_cbor(&Event::SetStatusBatch {
            request: bad.to_bytes(),
        })
        .unwrap();
        insert_block(&l.conn, &auth, 4, &head.hash, head.time, &event).unwrap();
        match l.verify_chain() {
            Err(Error::ChainBroken { height: 4, reason }) => {
                assert!(reason.contains("twice"), "{reason}")
            }
            other => panic!("not detected: {other:?}"),
        }
    }

    #[test]
    fn old_events_encode_as_before() {
        // Adding the retirement variant must not change how existing events are encoded (their
        // bytes are hashed into every block already written).
        let e = Event::SetStatus {
            request: vec![1, 2],
        };
        assert_eq!(
            cose::to_cbor(&e).unwrap(),
            [
                &[0xa1, 0x6a][..],
                b"set_status",
                &[0xa1, 0x67],
                b"request",
                &[0x42, 1, 2]
            ]
            .concat()
        );
        let e = Event::SetStatusBatch { request: vec![7] };
        assert_eq!(
            cose::to_cbor(&e).unwrap(),
            [
                &[0xa1, 0x70][..],
                b"set_status_batch",
                &[0xa1, 0x67],
                b"request",
                &[0x41, 7]
            ]
            .concat()
        );
    }
}
