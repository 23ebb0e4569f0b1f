//! The clinic cache: a verified mirror of the registry in the data directory (`cache.sqlite`),
//! so that scans keep working when the registry cannot be reached.
//!
//! It holds what verdicts need and nothing personal: issuer certificates, batch roots with their
//! anchoring time, status lists, retired keys, the ids of the requests already recorded (replay
//! protection), and the head block the mirror stands at (the watermark).
//!
//! [`Cache::sync`] fetches only the blocks after the watermark from a [`SyncSource`], checks each
//! one exactly as the ledger's own replay does ([`civic_registry::ledger::check_block`]: height,
//! link, time, hash, authority signature, the event under the rules that admitted it) against
//! the mirrored state, and applies them in one transaction. It never moves backwards: a source
//! whose chain is shorter than the cached head, or whose block at that height differs, is refused
//! and nothing is written.
//!
//! On an EVM chain ([`Cache::sync_chain`]) the cache is fed the effects the EVM backend's mirror
//! admitted (the events after the watermark block, replayed and checked there), up to the head
//! less the configured confirmations; its watermark is that chain block (notes/EVM.md).
//!
//! Tamper evidence: the cache keeps the whole head block and re-checks its hash and the
//! authority's signature every time it is opened; and at each sync it records a SHA-256 digest of
//! every mirrored table (canonical content, row by row in key order), recomputed on open. A
//! changed row is reported with its table and the block the digest was recorded at; a cache that
//! does not verify is not used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use civic_registry::cert::{IssuerCertificate, KeyRetirement};
use civic_registry::ledger::{check_block, CertEntry, Effect, SignedBlock, SyncSource, View};
use civic_registry::status::{CredentialStatus, StatusList};
use civic_registry::{
    keys, BatchRecord, ChainReport, Error as RegError, IssuerRecord, Registry, RetiredKey,
    SignedAnchor, SignedStatusChange, Watermark,
};
use p256::ecdsa::VerifyingKey;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

/// Blocks fetched per request to the source.
const PAGE: usize = 1000;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    authority  BLOB NOT NULL,
    -- the head block, whole, so that its hash and signature can be re-checked on open
    height     INTEGER,
    prev_hash  BLOB,
    time       INTEGER,
    event      BLOB,
    hash       BLOB,
    signature  BLOB,
    -- unix seconds of the last sync that reached the source (the freshness of the mirror)
    synced_at  INTEGER
);
CREATE TABLE issuers (
    issuer_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    cert       BLOB NOT NULL,
    height     INTEGER NOT NULL,
    block_hash BLOB NOT NULL,
    time       INTEGER NOT NULL,
    PRIMARY KEY (issuer_id, seq)
);
CREATE TABLE batches (
    batch_id           INTEGER PRIMARY KEY,
    issuer_id          TEXT NOT NULL,
    root               BLOB NOT NULL,
    size               INTEGER NOT NULL,
    first_status_index INTEGER NOT NULL,
    status_count       INTEGER NOT NULL,
    height             INTEGER NOT NULL,
    anchored_at        INTEGER NOT NULL
);
CREATE INDEX batches_issuer ON batches(issuer_id);
CREATE TABLE status_lists (
    issuer_id  TEXT PRIMARY KEY,
    bits       BLOB NOT NULL,
    height     INTEGER NOT NULL
);
CREATE TABLE retired_keys (
    issuer_id  TEXT NOT NULL,
    public_key BLOB NOT NULL,
    statement  BLOB NOT NULL,
    height     INTEGER NOT NULL,
    block_hash BLOB NOT NULL,
    time       INTEGER NOT NULL,
    PRIMARY KEY (issuer_id, public_key)
);
CREATE TABLE requests (
    request_id BLOB PRIMARY KEY,
    height     INTEGER NOT NULL
);
CREATE TABLE digests (
    tbl        TEXT PRIMARY KEY,
    digest     BLOB NOT NULL,
    height     INTEGER NOT NULL
);
"#,
    // 2: a cache fed from an EVM chain's verified events (notes/EVM.md). The chain has no
    // authority-signed blocks: the watermark is the confirmed chain block (number, hash, time) and
    // `chain` names the contract ("evm:<chain id>:<address>") so that a cache never mixes two
    // registries. A ledger-fed cache leaves these NULL.
    r#"
ALTER TABLE meta ADD COLUMN chain TEXT;
ALTER TABLE meta ADD COLUMN chain_height INTEGER;
ALTER TABLE meta ADD COLUMN chain_hash BLOB;
ALTER TABLE meta ADD COLUMN chain_time INTEGER;
"#,
];

/// The mirrored tables and the order their rows are digested in.
const TABLES: &[(&str, &str)] = &[
    ("meta", "id"),
    ("issuers", "issuer_id, seq"),
    ("batches", "batch_id"),
    ("status_lists", "issuer_id"),
    ("retired_keys", "issuer_id, public_key"),
    ("requests", "request_id"),
];

#[derive(thiserror::Error, Debug)]
pub enum CacheError {
    #[error("no clinic cache at {0}: run `civic registry sync` first")]
    Missing(PathBuf),
    #[error("the clinic cache {0} has never been synced: run `civic registry sync`")]
    Empty(PathBuf),
    #[error(
        "the sync source's chain forks from the cache at block {height}: its block {height} is \
         {theirs}…, the cache holds {ours}…; refused, nothing written"
    )]
    Fork {
        height: u64,
        ours: String,
        theirs: String,
    },
    #[error(
        "the sync source ends before block {height}, which the cache already holds (a truncated \
         or rolled-back chain); refused, nothing written"
    )]
    Truncated { height: u64 },
    #[error(
        "the clinic cache does not verify: {what} changed since the sync at block {height}; \
         run `civic registry sync --rebuild` to rebuild it from the registry ({path})"
    )]
    Tampered {
        what: String,
        height: u64,
        path: PathBuf,
    },
    #[error("the clinic cache follows authority key {pinned}…, not {given}…")]
    OtherAuthority { pinned: String, given: String },
    #[error("block from the sync source: {0}")]
    Chain(RegError),
    #[error(
        "the clinic cache {path} follows {ours}, not {theirs}: run `civic registry sync \
         --rebuild` to rebuild it from this registry"
    )]
    OtherSource {
        path: PathBuf,
        ours: String,
        theirs: String,
    },
    // Not `#[from]`: the message already includes SQLite's, and an error chain would print it
    // twice.
    #[error("clinic cache database: {}", sqlite_fault(.0))]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for CacheError {
    fn from(e: rusqlite::Error) -> Self {
        CacheError::Sqlite(e)
    }
}

/// SQLite's terse codes for the faults a clinic can act on, in words. Either way SQLite
/// rolled the transaction back: the cache is as it was.
fn sqlite_fault(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => format!(
            "locked by another writer (another `civic` syncing?): gave up after {} s, nothing \
             was written; try again",
            civic_registry::ledger::BUSY_TIMEOUT.as_secs()
        ),
        Some(C::DiskFull) => "the disk is full: nothing was written, the cache is as it was; \
                              free some space and try again"
            .to_owned(),
        // A full disk also shows up as an I/O error when the WAL index cannot grow.
        Some(C::SystemIoFailure) => format!(
            "{e}: is the disk full? nothing was written, the cache is as it was; free some \
             space and try again"
        ),
        _ => e.to_string(),
    }
}

impl From<RegError> for CacheError {
    fn from(e: RegError) -> Self {
        match e {
            RegError::Sqlite(s) => CacheError::Sqlite(s),
            other => CacheError::Chain(other),
        }
    }
}

pub type Result<T> = std::result::Result<T, CacheError>;

/// What one sync did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncReport {
    /// The watermark before (None: the cache was empty).
    pub from: Option<Watermark>,
    pub to: Watermark,
    /// New blocks verified and applied (from the chain: contract events).
    pub applied: u64,
    /// Blocks the source served (the new ones plus the cached head, re-fetched to detect forks).
    pub fetched: u64,
}

/// How fresh the mirror is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Freshness {
    pub watermark: Watermark,
    /// Unix seconds of the last sync that reached the registry.
    pub synced_at: u64,
}

/// The clinic cache.
#[derive(Debug)]
pub struct Cache {
    conn: Connection,
    path: PathBuf,
    authority: VerifyingKey,
    head: Option<SignedBlock>,
    /// A chain-fed cache: the contract it follows and the confirmed block it stands at (then
    /// `head` is None).
    chain_head: Option<(String, Option<Watermark>)>,
    synced_at: u64,
    /// Issuer certificates already checked against the authority key in this process, by
    /// their exact bytes (a changed row has other bytes and is checked again): a verdict
    /// should not pay an ECDSA verify for a certificate it verified a moment ago.
    verified_certs: VerifiedCerts,
}

fn short(b: &[u8]) -> String {
    hex::encode(&b[..b.len().min(6)])
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn hash32(v: &[u8]) -> [u8; 32] {
    <[u8; 32]>::try_from(v).unwrap_or([0; 32])
}

fn configure(conn: &mut Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(CacheError::Chain(RegError::Conflict(format!(
            "clinic cache schema version {version} is newer than this software"
        ))));
    }
    for (n, m) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(m)?;
        tx.pragma_update(None, "user_version", (n + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// SHA-256 over a table's canonical content: every column of every row, in key order, each value
/// tagged with its type and length-prefixed.
fn table_digest(conn: &Connection, table: &str, order: &str) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"civic-cache/table/v1\0");
    h.update(table.as_bytes());
    h.update([0]);
    let mut st = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))?;
    let n = st.column_count();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        h.update([0xff]);
        for c in 0..n {
            let (tag, bytes): (u8, Vec<u8>) = match r.get_ref(c)? {
                ValueRef::Null => (0, Vec::new()),
                ValueRef::Integer(v) => (1, v.to_be_bytes().to_vec()),
                ValueRef::Real(v) => (2, v.to_be_bytes().to_vec()),
                ValueRef::Text(t) => (3, t.to_vec()),
                ValueRef::Blob(b) => (4, b.to_vec()),
            };
            h.update([tag]);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
        }
    }
    Ok(h.finalize().into())
}

/// A source that serves nothing above `max`.
struct Capped<'a> {
    inner: &'a dyn SyncSource,
    max: u64,
}

impl SyncSource for Capped<'_> {
    fn blocks_since(&self, from: u64, limit: usize) -> civic_registry::Result<Vec<SignedBlock>> {
        let mut blocks = self.inner.blocks_since(from, limit)?;
        blocks.retain(|b| b.height <= self.max);
        Ok(blocks)
    }
}

/// Every row of a table in key order: (its key columns, rendered; its height column; all values).
type AuditRow = (String, u64, Vec<rusqlite::types::Value>);

fn table_rows(conn: &Connection, table: &str, order: &str) -> Result<Vec<AuditRow>> {
    let mut st = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))?;
    let names: Vec<String> = st.column_names().iter().map(|c| c.to_string()).collect();
    let keys: Vec<&str> = order.split(',').map(str::trim).collect();
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(names.len());
        let mut key = Vec::new();
        let mut height = 0;
        for (c, name) in names.iter().enumerate() {
            let v: rusqlite::types::Value = r.get(c)?;
            if name == "height" {
                if let rusqlite::types::Value::Integer(h) = v {
                    height = u(h);
                }
            }
            if keys.contains(&name.as_str()) {
                key.push(match &v {
                    rusqlite::types::Value::Integer(x) => format!("{name}={x}"),
                    rusqlite::types::Value::Text(t) => format!("{name}={t:?}"),
                    rusqlite::types::Value::Blob(b) => format!("{name}={}…", short(b)),
                    other => format!("{name}={other:?}"),
                });
            }
            values.push(v);
        }
        out.push((key.join(", "), height, values));
    }
    Ok(out)
}

/// The chain a chain-fed cache follows and the block it stands at (None: ledger-fed or new).
fn read_chain_head(conn: &Connection) -> Result<Option<(String, Option<Watermark>)>> {
    type Row = (Option<String>, Option<i64>, Option<Vec<u8>>, Option<i64>);
    let row: Option<Row> = conn
        .query_row(
            "SELECT chain, chain_height, chain_hash, chain_time FROM meta WHERE id = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    Ok(match row {
        Some((Some(chain), height, hash, time)) => {
            let wm = match (height, hash, time) {
                (Some(h), Some(hash), Some(t)) => Some(Watermark {
                    height: u(h),
                    block_hash: hash32(&hash),
                    time: u(t),
                }),
                _ => None,
            };
            Some((chain, wm))
        }
        _ => None,
    })
}

fn read_head(conn: &Connection) -> Result<(Vec<u8>, Option<SignedBlock>, u64)> {
    type Row = (
        Vec<u8>,
        Option<i64>,
        Option<Vec<u8>>,
        Option<i64>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<i64>,
    );
    let row: Option<Row> = conn
        .query_row(
            "SELECT authority, height, prev_hash, time, event, hash, signature, synced_at \
             FROM meta WHERE id = 0",
            [],
            |r| {
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
            },
        )
        .optional()?;
    let Some((authority, height, prev, time, event, hash, sig, synced_at)) = row else {
        return Ok((Vec::new(), None, 0));
    };
    let head = match (height, prev, time, event, hash, sig) {
        (Some(height), Some(prev), Some(time), Some(event), Some(hash), Some(signature)) => {
            Some(SignedBlock {
                height: u(height),
                prev_hash: hash32(&prev),
                time: u(time),
                event,
                hash: hash32(&hash),
                signature,
            })
        }
        _ => None,
    };
    Ok((authority, head, u(synced_at.unwrap_or(0))))
}

impl Cache {
    /// Open an existing cache and verify it (head block signature, table digests). `trusted`,
    /// when given, must be the authority key the cache follows.
    pub fn open(path: &Path, trusted: Option<&VerifyingKey>) -> Result<Self> {
        let mut cache = Self::open_unchecked(path, trusted)?;
        // The head and the tables it seals are read in one snapshot (a deferred read
        // transaction; WAL): another process of the clinic may commit a sync between two
        // separate reads. Regression: four concurrent scans saw "table meta changed since the
        // sync" when one of them synced while another opened.
        cache.conn.execute_batch("BEGIN DEFERRED")?;
        let checked = cache.reload_head().and_then(|()| cache.check());
        let ended = cache.conn.execute_batch(if checked.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        });
        checked?;
        ended?;
        Ok(cache)
    }

    /// Read the head again (inside the caller's snapshot).
    fn reload_head(&mut self) -> Result<()> {
        let (_, head, synced_at) = read_head(&self.conn)?;
        self.head = head;
        self.synced_at = synced_at;
        self.chain_head = read_chain_head(&self.conn)?;
        Ok(())
    }

    /// Open without verifying the tables (to audit a cache that failed [`Cache::check`]);
    /// never verdicts from it.
    pub fn open_unchecked(path: &Path, trusted: Option<&VerifyingKey>) -> Result<Self> {
        if !path.exists() {
            return Err(CacheError::Missing(path.to_path_buf()));
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&mut conn)?;
        let (authority, head, synced_at) = read_head(&conn)?;
        let chain_head = read_chain_head(&conn)?;
        let tampered = |what: &str| CacheError::Tampered {
            what: what.to_owned(),
            height: 0,
            path: path.to_path_buf(),
        };
        let authority = keys::verifying_key_from_bytes(&authority)
            .map_err(|_| tampered("the authority key in table meta"))?;
        if let Some(t) = trusted {
            if *t != authority {
                return Err(CacheError::OtherAuthority {
                    pinned: short(&keys::public_key_bytes(&authority)[1..]),
                    given: short(&keys::public_key_bytes(t)[1..]),
                });
            }
        }
        let cache = Self {
            conn,
            path: path.to_path_buf(),
            authority,
            head,
            chain_head,
            synced_at,
            verified_certs: Default::default(),
        };
        Ok(cache)
    }

    /// Open the cache at `path`, creating an empty one that follows `authority` if there is
    /// none.
    pub fn open_or_create(path: &Path, authority: &VerifyingKey) -> Result<Self> {
        if path.exists() {
            return Self::open(path, Some(authority));
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&mut conn)?;
        conn.execute(
            "INSERT INTO meta (id, authority) VALUES (0, ?1)",
            [keys::public_key_bytes(authority).as_slice()],
        )?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            authority: *authority,
            head: None,
            chain_head: None,
            synced_at: 0,
            verified_certs: Default::default(),
        })
    }

    /// Compare this cache with a replay of `source`'s chain up to the cache's head, row by row:
    /// the first row that differs is reported with its table, key and the block that wrote it
    /// (as the chain says, or as the cache claims when the chain has no such row). Refuses a
    /// source whose block at the cache's head differs ([`CacheError::Fork`]).
    pub fn audit(&self, source: &dyn SyncSource) -> Result<()> {
        let Some(head) = &self.head else {
            return Ok(());
        };
        let capped = Capped {
            inner: source,
            max: head.height,
        };
        let mut replay = Self::in_memory(&self.authority)?;
        let report = replay.sync(&capped, &self.authority)?;
        if report.to.height < head.height {
            return Err(CacheError::Truncated {
                height: head.height,
            });
        }
        if report.to.block_hash != head.hash {
            return Err(CacheError::Fork {
                height: head.height,
                ours: short(&head.hash),
                theirs: short(&report.to.block_hash),
            });
        }
        self.compare_rows(&replay, head.height)
    }

    /// [`Cache::audit`] for a chain-fed cache: compared row by row with a replay of the
    /// contract's verified events up to the block the cache stands at. Refuses a chain on which
    /// that block is no longer (reorganised away).
    pub fn audit_chain(
        &self,
        registry: &civic_registry::evm::EvmRegistry,
        chain: &str,
    ) -> Result<()> {
        let Some(head) = self.head_watermark() else {
            return Ok(());
        };
        if self.chain() != Some(chain) {
            return Err(CacheError::OtherSource {
                path: self.path.clone(),
                ours: self.chain().map_or("an embedded ledger".into(), |c| {
                    format!("the registry contract {c}")
                }),
                theirs: format!("the registry contract {chain}"),
            });
        }
        // Checks that the cache's block is still on the chain, too.
        registry.verified_effects(Some(&head))?;
        let replay = Self::in_memory(&self.authority)?;
        let mut lists = BTreeMap::new();
        for (wm, effect) in registry.verified_effects(None)?.effects {
            if wm.height <= head.height {
                apply(&replay.conn, effect, &wm, &mut lists)?;
            }
        }
        for (issuer_id, (list, height)) in &lists {
            replay.conn.execute(
                "INSERT INTO status_lists (issuer_id, bits, height) VALUES (?1, ?2, ?3)",
                params![issuer_id, list.as_bytes(), i(*height)],
            )?;
        }
        self.compare_rows(&replay, head.height)
    }

    /// The first row in which this cache and `replay` differ, as [`CacheError::Tampered`].
    fn compare_rows(&self, replay: &Cache, height: u64) -> Result<()> {
        let head = Watermark {
            height,
            block_hash: [0; 32],
            time: 0,
        };
        for (table, order) in TABLES.iter().filter(|(t, _)| *t != "meta") {
            let ours = table_rows(&self.conn, table, order)?;
            let chain = table_rows(&replay.conn, table, order)?;
            let n = ours.len().max(chain.len());
            for k in 0..n {
                let (a, b) = (ours.get(k), chain.get(k));
                if a == b {
                    continue;
                }
                let row = b.or(a).map(|r| r.0.clone()).unwrap_or_default();
                let height = b.or(a).map_or(head.height, |r| r.1);
                let what = match (a, b) {
                    (Some(_), None) => format!("table {table}: extra row {row}"),
                    (None, Some(_)) => format!("table {table}: missing row {row}"),
                    _ => format!("table {table}: row {row}"),
                };
                return Err(CacheError::Tampered {
                    what: format!("{what} (written by block {height})"),
                    height: head.height,
                    path: self.path.clone(),
                });
            }
        }
        Ok(())
    }

    fn in_memory(authority: &VerifyingKey) -> Result<Self> {
        let mut conn = Connection::open_in_memory()?;
        configure(&mut conn)?;
        conn.execute(
            "INSERT INTO meta (id, authority) VALUES (0, ?1)",
            [keys::public_key_bytes(authority).as_slice()],
        )?;
        Ok(Self {
            conn,
            path: PathBuf::from(":memory:"),
            authority: *authority,
            head: None,
            chain_head: None,
            synced_at: 0,
            verified_certs: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The authority key this cache follows.
    pub fn authority(&self) -> &VerifyingKey {
        &self.authority
    }

    /// The head the mirror stands at, and when it last heard from the registry; `None` if it
    /// was never synced.
    pub fn freshness(&self) -> Option<Freshness> {
        self.head_watermark().map(|watermark| Freshness {
            watermark,
            synced_at: self.synced_at,
        })
    }

    /// The block the mirror stands at: the ledger's head block, or the chain's confirmed block.
    fn head_watermark(&self) -> Option<Watermark> {
        match &self.chain_head {
            Some((_, wm)) => wm.clone(),
            None => self.head.as_ref().map(SignedBlock::watermark),
        }
    }

    fn head_height(&self) -> u64 {
        self.head_watermark().map_or(0, |w| w.height)
    }

    /// The contract a chain-fed cache follows ("evm:<chain id>:<address>").
    pub fn chain(&self) -> Option<&str> {
        self.chain_head.as_ref().map(|(c, _)| c.as_str())
    }

    /// Verify the cache: the head block's hash and the authority's signature over it, and every
    /// mirrored table against the digest recorded at the last sync.
    pub fn check(&self) -> Result<()> {
        let height = self.head_height();
        let tampered = |what: String| CacheError::Tampered {
            what,
            height,
            path: self.path.clone(),
        };
        if let Some(h) = &self.head {
            h.check_sealed(&self.authority)
                .map_err(|e| tampered(format!("the head block (table meta: {e})")))?;
        }
        let mut st = self
            .conn
            .prepare("SELECT tbl, digest, height FROM digests ORDER BY tbl")?;
        let recorded: Vec<(String, Vec<u8>, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<std::result::Result<_, _>>()?;
        if self.head_watermark().is_none() {
            if !recorded.is_empty() {
                return Err(tampered("table digests".into()));
            }
            return Ok(());
        }
        for (table, order) in TABLES {
            let Some((_, digest, at)) = recorded.iter().find(|(t, _, _)| t == table) else {
                return Err(tampered(format!("table {table} (its digest is missing)")));
            };
            if u(*at) != height {
                return Err(tampered(format!(
                    "table digests (the digest of {table} is for block {at})"
                )));
            }
            if table_digest(&self.conn, table, order)?.as_slice() != digest.as_slice() {
                return Err(tampered(format!("table {table}")));
            }
        }
        if recorded.len() != TABLES.len() {
            return Err(tampered("table digests (unknown entries)".into()));
        }
        Ok(())
    }

    /// Fetch the blocks after the watermark from `source`, verify each against the mirrored
    /// state and apply them in one transaction. `authority` is the key the caller trusts; it
    /// must be the one this cache follows.
    pub fn sync(
        &mut self,
        source: &dyn SyncSource,
        authority: &VerifyingKey,
    ) -> Result<SyncReport> {
        if *authority != self.authority {
            return Err(CacheError::OtherAuthority {
                pinned: short(&keys::public_key_bytes(&self.authority)[1..]),
                given: short(&keys::public_key_bytes(authority)[1..]),
            });
        }
        if let Some(chain) = self.chain() {
            return Err(CacheError::OtherSource {
                path: self.path.clone(),
                ours: format!("the registry contract {chain}"),
                theirs: "an embedded ledger".into(),
            });
        }
        // Never build on a cache that does not verify.
        self.check()?;
        let from = self.head.as_ref().map(SignedBlock::watermark);
        let now = crate::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut prev = from.clone();
        let mut last: Option<SignedBlock> = None;
        let mut applied = 0u64;
        let mut fetched = 0u64;
        let mut next = self.head.as_ref().map_or(0, |h| h.height);
        let mut first_page = true;
        // Status lists changed in this sync, held in memory and written once at the end (the
        // rules never read them).
        let mut lists = BTreeMap::new();
        loop {
            let page = source.blocks_since(next, PAGE)?;
            fetched += page.len() as u64;
            let mut blocks = page.into_iter().peekable();
            if first_page {
                first_page = false;
                if let Some(head) = &self.head {
                    match blocks.next() {
                        None => {
                            return Err(CacheError::Truncated {
                                height: head.height,
                            })
                        }
                        Some(b) if b.height != head.height => {
                            return Err(CacheError::Chain(RegError::ChainBroken {
                                height: b.height,
                                reason: format!("the source served it for height {}", head.height),
                            }))
                        }
                        Some(b) if b.hash != head.hash => {
                            return Err(CacheError::Fork {
                                height: head.height,
                                ours: short(&head.hash),
                                theirs: short(&b.hash),
                            })
                        }
                        Some(_) => {}
                    }
                }
            }
            if blocks.peek().is_none() {
                break;
            }
            for block in blocks {
                let view = CacheView {
                    conn: &tx,
                    authority: &self.authority,
                    verified: &self.verified_certs,
                };
                if let Some(effect) = check_block(&view, prev.as_ref(), &block)? {
                    apply(&tx, effect, &block.watermark(), &mut lists)?;
                }
                applied += 1;
                prev = Some(block.watermark());
                next = block.height + 1;
                last = Some(block);
            }
        }
        for (issuer_id, (list, height)) in &lists {
            tx.execute(
                "INSERT INTO status_lists (issuer_id, bits, height) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(issuer_id) DO UPDATE SET bits = excluded.bits, height = excluded.height",
                params![issuer_id, list.as_bytes(), i(*height)],
            )?;
        }
        let head = match last.or_else(|| self.head.clone()) {
            Some(h) => h,
            None => {
                return Err(CacheError::Chain(RegError::ChainBroken {
                    height: 0,
                    reason: "the sync source has no blocks".into(),
                }))
            }
        };
        tx.execute(
            "UPDATE meta SET height = ?1, prev_hash = ?2, time = ?3, event = ?4, hash = ?5, \
             signature = ?6, synced_at = ?7 WHERE id = 0",
            params![
                i(head.height),
                head.prev_hash.as_slice(),
                i(head.time),
                head.event,
                head.hash.as_slice(),
                head.signature,
                i(now)
            ],
        )?;
        for (table, order) in TABLES {
            let d = table_digest(&tx, table, order)?;
            tx.execute(
                "INSERT INTO digests (tbl, digest, height) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(tbl) DO UPDATE SET digest = excluded.digest, height = excluded.height",
                params![table, d.as_slice(), i(head.height)],
            )?;
        }
        tx.commit()?;
        let to = head.watermark();
        self.head = Some(head);
        self.synced_at = now;
        Ok(SyncReport {
            from,
            to,
            applied,
            fetched,
        })
    }

    /// Bring a chain-fed cache up to the registry contract's confirmed head: the effects the EVM
    /// backend's mirror verified (`eth_getLogs` replayed through the ledger's rules, every event
    /// checked against the statement it carries) in the blocks after this cache's watermark,
    /// applied in one transaction. `chain` names the contract ("evm:<chain id>:<address>"); a
    /// cache that follows another contract or a ledger is refused. The backend leaves the newest
    /// `confirmations` blocks out, so a block that is reorganised away never reaches the cache;
    /// a reorganisation below the cache's block is refused and nothing is written.
    pub fn sync_chain(
        &mut self,
        registry: &civic_registry::evm::EvmRegistry,
        chain: &str,
    ) -> Result<SyncReport> {
        let authority = registry.authority_key()?;
        if authority != self.authority {
            return Err(CacheError::OtherAuthority {
                pinned: short(&keys::public_key_bytes(&self.authority)[1..]),
                given: short(&keys::public_key_bytes(&authority)[1..]),
            });
        }
        let other = |ours: String| CacheError::OtherSource {
            path: self.path.clone(),
            ours,
            theirs: format!("the registry contract {chain}"),
        };
        if self.head.is_some() {
            return Err(other("an embedded ledger".into()));
        }
        if let Some(c) = self.chain() {
            if c != chain {
                return Err(other(format!("the registry contract {c}")));
            }
        }
        self.check()?;
        let from = self.head_watermark();
        let verified = registry.verified_effects(from.as_ref())?;
        let now = crate::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut lists = BTreeMap::new();
        let applied = verified.effects.len() as u64;
        for (wm, effect) in verified.effects {
            apply(&tx, effect, &wm, &mut lists)?;
        }
        for (issuer_id, (list, height)) in &lists {
            tx.execute(
                "INSERT INTO status_lists (issuer_id, bits, height) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(issuer_id) DO UPDATE SET bits = excluded.bits, height = excluded.height",
                params![issuer_id, list.as_bytes(), i(*height)],
            )?;
        }
        let head = verified.head;
        tx.execute(
            "UPDATE meta SET chain = ?1, chain_height = ?2, chain_hash = ?3, chain_time = ?4, \
             synced_at = ?5 WHERE id = 0",
            params![
                chain,
                i(head.height),
                head.block_hash.as_slice(),
                i(head.time),
                i(now)
            ],
        )?;
        for (table, order) in TABLES {
            let d = table_digest(&tx, table, order)?;
            tx.execute(
                "INSERT INTO digests (tbl, digest, height) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(tbl) DO UPDATE SET digest = excluded.digest, height = excluded.height",
                params![table, d.as_slice(), i(head.height)],
            )?;
        }
        tx.commit()?;
        self.chain_head = Some((chain.to_owned(), Some(head.clone())));
        self.synced_at = now;
        Ok(SyncReport {
            from,
            to: head,
            applied,
            fetched: applied,
        })
    }

    fn read_only() -> RegError {
        RegError::Invalid(
            "the clinic cache is a read-only mirror of the registry: write to the registry itself"
                .into(),
        )
    }

    fn certs_where(&self, issuer_id: Option<&str>) -> civic_registry::Result<Vec<IssuerRecord>> {
        let mut st = self.conn.prepare_cached(
            "SELECT cert, height, block_hash, time FROM issuers \
             WHERE ?1 IS NULL OR issuer_id = ?1 ORDER BY issuer_id, seq",
        )?;
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
            let (raw, height, hash, time) = row?;
            let cert = IssuerCertificate::from_bytes(&raw).map_err(|e| row_broken("issuers", e))?;
            let known = self.verified_certs.borrow().get(&raw).cloned();
            let body = match known {
                Some(body) => body,
                None => {
                    let body = cert
                        .verify(&self.authority)
                        .map_err(|e| row_broken("issuers", e))?;
                    self.verified_certs.borrow_mut().insert(raw, body.clone());
                    body
                }
            };
            out.push(IssuerRecord {
                cert,
                body,
                registered_at: Watermark {
                    height: u(height),
                    block_hash: hash32(&hash),
                    time: u(time),
                },
            });
        }
        Ok(out)
    }
}

fn row_broken(table: &str, e: RegError) -> RegError {
    RegError::ChainBroken {
        height: 0,
        reason: format!("clinic cache table {table}: {e}"),
    }
}

/// Issuer certificates verified in this process, by their exact bytes.
type VerifiedCerts =
    std::cell::RefCell<std::collections::HashMap<Vec<u8>, civic_registry::cert::IssuerCertBody>>;

/// The mirrored state as the chain rules see it.
struct CacheView<'a> {
    conn: &'a Connection,
    authority: &'a VerifyingKey,
    /// Certificates already verified against `authority`: a sync verifies each certificate
    /// once, not once per block that names its issuer.
    verified: &'a VerifiedCerts,
}

impl View for CacheView<'_> {
    fn authority(&self) -> &VerifyingKey {
        self.authority
    }
    fn certs(&self, issuer_id: &str) -> civic_registry::Result<Vec<CertEntry>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT cert FROM issuers WHERE issuer_id = ?1 ORDER BY seq")?;
        let rows = st.query_map([issuer_id], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for cert in rows {
            let cert = cert?;
            let known = self.verified.borrow().get(&cert).cloned();
            let body = match known {
                Some(body) => body,
                None => {
                    let body = IssuerCertificate::from_bytes(&cert)
                        .and_then(|c| c.verify(self.authority))
                        .map_err(|e| row_broken("issuers", e))?;
                    self.verified
                        .borrow_mut()
                        .insert(cert.clone(), body.clone());
                    body
                }
            };
            out.push(CertEntry { cert, body });
        }
        Ok(out)
    }
    fn ranges(&self, issuer_id: &str) -> civic_registry::Result<Vec<(u32, u32)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT first_status_index, status_count FROM batches WHERE issuer_id = ?1",
        )?;
        let rows = st.query_map([issuer_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
    fn next_batch_id(&self) -> civic_registry::Result<u64> {
        let max: Option<i64> =
            self.conn
                .query_row("SELECT MAX(batch_id) FROM batches", [], |r| r.get(0))?;
        Ok(u(max.unwrap_or(0)) + 1)
    }
    fn seen(&self, request_id: &[u8; 32]) -> civic_registry::Result<bool> {
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
    fn retirement(
        &self,
        issuer_id: &str,
        public_key: &[u8],
    ) -> civic_registry::Result<Option<civic_registry::KeyRetirementBody>> {
        Ok(retired_row(self.conn, self.authority, issuer_id, public_key)?.map(|r| r.body))
    }
}

fn retired_row(
    conn: &Connection,
    authority: &VerifyingKey,
    issuer_id: &str,
    public_key: &[u8],
) -> civic_registry::Result<Option<RetiredKey>> {
    let row: Option<(Vec<u8>, i64, Vec<u8>, i64)> = conn
        .query_row(
            "SELECT statement, height, block_hash, time FROM retired_keys \
             WHERE issuer_id = ?1 AND public_key = ?2",
            params![issuer_id, public_key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((statement, height, hash, time)) = row else {
        return Ok(None);
    };
    let retirement =
        KeyRetirement::from_bytes(&statement).map_err(|e| row_broken("retired_keys", e))?;
    let body = retirement
        .verify(authority)
        .map_err(|e| row_broken("retired_keys", e))?;
    if body.issuer_id != issuer_id || body.public_key != public_key {
        return Err(row_broken(
            "retired_keys",
            RegError::Invalid("a retirement is filed under another key".into()),
        ));
    }
    Ok(Some(RetiredKey {
        retirement,
        body,
        recorded_at: Watermark {
            height: u(height),
            block_hash: hash32(&hash),
            time: u(time),
        },
    }))
}

/// Status lists being changed by a sync: by issuer, the list and the last block that changed it.
type PendingLists = BTreeMap<String, (StatusList, u64)>;

/// Apply one verified block's effect to the mirrored tables (status lists to `lists`).
fn apply(
    conn: &Connection,
    effect: Effect,
    block: &Watermark,
    lists: &mut PendingLists,
) -> Result<()> {
    let h = i(block.height);
    let hash = block.block_hash.as_slice();
    let time = i(block.time);
    match effect {
        Effect::Issuer {
            issuer_id, cert, ..
        } => {
            conn.execute(
                "INSERT INTO issuers (issuer_id, seq, cert, height, block_hash, time) VALUES (?1, \
                 (SELECT COALESCE(MAX(seq) + 1, 0) FROM issuers WHERE issuer_id = ?1), ?2, ?3, ?4, ?5)",
                params![issuer_id, cert, h, hash, time],
            )?;
        }
        Effect::Batch { batch, request_id } => {
            conn.execute(
                "INSERT INTO batches (batch_id, issuer_id, root, size, first_status_index, \
                 status_count, height, anchored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    i(batch.batch_id),
                    batch.issuer_id,
                    batch.root.as_slice(),
                    i(batch.size),
                    batch.first_status_index,
                    batch.status_count,
                    h,
                    i(batch.anchored_at)
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
            apply_status(conn, lists, issuer_id, &[(index, status)], block.height)?;
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
            apply_status(conn, lists, issuer_id, &changes, block.height)?;
            conn.execute(
                "INSERT INTO requests (request_id, height) VALUES (?1, ?2)",
                params![request_id.as_slice(), h],
            )?;
        }
        Effect::Retire { statement, body } => {
            conn.execute(
                "INSERT INTO retired_keys (issuer_id, public_key, statement, height, block_hash, \
                 time) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(issuer_id, public_key) \
                 DO UPDATE SET statement = excluded.statement, height = excluded.height, \
                 block_hash = excluded.block_hash, time = excluded.time",
                params![body.issuer_id, body.public_key, statement, h, hash, time],
            )?;
        }
    }
    Ok(())
}

/// Apply status changes to the pending copy of one issuer's list (read from the table the first
/// time this sync touches it; written once at the end of the sync).
fn apply_status(
    conn: &Connection,
    lists: &mut PendingLists,
    issuer_id: String,
    changes: &[(u32, CredentialStatus)],
    height: u64,
) -> Result<()> {
    let entry = match lists.entry(issuer_id) {
        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => {
            let bits: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT bits FROM status_lists WHERE issuer_id = ?1",
                    [v.key()],
                    |r| r.get(0),
                )
                .optional()?;
            let list = match bits {
                Some(b) => StatusList::from_bytes(&b).map_err(|e| row_broken("status_lists", e))?,
                None => StatusList::new(),
            };
            v.insert((list, height))
        }
    };
    for (index, status) in changes {
        entry.0.set(*index, *status);
    }
    entry.1 = height;
    Ok(())
}

impl Registry for Cache {
    fn authority_key(&self) -> civic_registry::Result<VerifyingKey> {
        Ok(self.authority)
    }

    fn watermark(&self) -> civic_registry::Result<Watermark> {
        self.head_watermark()
            .ok_or_else(|| RegError::NotFound("the clinic cache has never been synced".into()))
    }

    fn register_issuer(&mut self, _: &IssuerCertificate) -> civic_registry::Result<Watermark> {
        Err(Self::read_only())
    }

    fn retire_issuer_key(&mut self, _: &KeyRetirement) -> civic_registry::Result<Watermark> {
        Err(Self::read_only())
    }

    fn retired_keys(&self, issuer_id: &str) -> civic_registry::Result<Vec<RetiredKey>> {
        let mut st = self.conn.prepare_cached(
            "SELECT public_key FROM retired_keys WHERE issuer_id = ?1 ORDER BY height",
        )?;
        let keys: Vec<Vec<u8>> = st
            .query_map([issuer_id], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        keys.iter()
            .filter_map(|k| retired_row(&self.conn, &self.authority, issuer_id, k).transpose())
            .collect()
    }

    fn retirement(
        &self,
        issuer_id: &str,
        public_key: &[u8],
    ) -> civic_registry::Result<Option<RetiredKey>> {
        retired_row(&self.conn, &self.authority, issuer_id, public_key)
    }

    fn anchor_batch(&mut self, _: &SignedAnchor) -> civic_registry::Result<BatchRecord> {
        Err(Self::read_only())
    }

    fn set_status(&mut self, _: &SignedStatusChange) -> civic_registry::Result<Watermark> {
        Err(Self::read_only())
    }

    fn set_status_batch(
        &mut self,
        _: &civic_registry::SignedStatusBatch,
    ) -> civic_registry::Result<Watermark> {
        Err(Self::read_only())
    }

    fn issuer_certs(&self, issuer_id: &str) -> civic_registry::Result<Vec<IssuerRecord>> {
        self.certs_where(Some(issuer_id))
    }

    fn issuers(&self) -> civic_registry::Result<Vec<IssuerRecord>> {
        self.certs_where(None)
    }

    fn batch(&self, batch_id: u64) -> civic_registry::Result<Option<BatchRecord>> {
        let Ok(id) = i64::try_from(batch_id) else {
            return Ok(None);
        };
        type Raw = (i64, String, Vec<u8>, i64, u32, u32, i64, i64);
        let row: Option<Raw> = self
            .conn
            .query_row(
                "SELECT batch_id, issuer_id, root, size, first_status_index, status_count, \
                 height, anchored_at FROM batches WHERE batch_id = ?1",
                [id],
                |r| {
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
                },
            )
            .optional()?;
        Ok(row.map(
            |(batch_id, issuer_id, root, size, first, count, height, at)| BatchRecord {
                batch_id: u(batch_id),
                issuer_id,
                root: hash32(&root),
                size: u(size),
                first_status_index: first,
                status_count: count,
                height: u(height),
                anchored_at: u(at),
            },
        ))
    }

    fn status(&self, issuer_id: &str, index: u32) -> civic_registry::Result<CredentialStatus> {
        // Only the byte that holds the index is read (the tables as a whole are checked
        // against their digests when the cache is opened).
        let byte = civic_registry::ledger::read_status_byte(&self.conn, issuer_id, index)?;
        StatusList::status_in_byte(byte, index).map_err(|e| row_broken("status_lists", e))
    }

    fn next_status_index(&self, issuer_id: &str) -> civic_registry::Result<u32> {
        let max: Option<i64> = self.conn.query_row(
            "SELECT MAX(first_status_index + status_count) FROM batches WHERE issuer_id = ?1",
            [issuer_id],
            |r| r.get(0),
        )?;
        u32::try_from(max.unwrap_or(0)).map_err(|_| {
            row_broken(
                "batches",
                RegError::Invalid("status index out of range".into()),
            )
        })
    }

    /// The cache cannot replay the chain (it keeps only the head block): this checks the head
    /// block's signature and every table against its recorded digest.
    fn verify_chain(&self) -> civic_registry::Result<ChainReport> {
        let head = self.watermark()?;
        self.check().map_err(|e| RegError::ChainBroken {
            height: head.height,
            reason: e.to_string(),
        })?;
        let count = |sql: &str| -> civic_registry::Result<usize> {
            let n: i64 = self.conn.query_row(sql, [], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        let batches = count("SELECT COUNT(*) FROM batches")?;
        Ok(ChainReport {
            blocks: head.height + 1,
            issuers: count("SELECT COUNT(DISTINCT issuer_id) FROM issuers")?,
            batches,
            // Status requests, not changes: a status batch counts once here (the mirror keeps
            // no per-change history), while the ledger's replay counts each of its changes.
            status_changes: count("SELECT COUNT(*) FROM requests")?.saturating_sub(batches),
            retired_keys: count("SELECT COUNT(*) FROM retired_keys")?,
            head,
        })
    }

    /// As the provided method, inside one read snapshot.
    fn verdict(
        &self,
        record: &civic_registry::CardRecord,
        evidence: Option<&civic_registry::CardEvidence>,
        now: u64,
    ) -> civic_registry::Result<civic_registry::VerdictReport> {
        let snapshot = self.conn.unchecked_transaction()?;
        let report = civic_registry::verdict::assess(self, record, evidence, now)?;
        snapshot.commit()?;
        Ok(report)
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing what a scan verifies against.

/// What to do with a mirror older than the allowed staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StalePolicy {
    /// Scan, with a warning line.
    Warn,
    /// Do not scan ("could not run").
    Refuse,
}

/// The registry a scan verifies against: the registry itself, or the clinic cache.
pub enum ScanRegistry {
    /// The configured registry (embedded ledger or EVM chain).
    Live(Box<dyn Registry>),
    Cache(Box<Cache>),
}

/// How fresh the status a scan rests on is (the `freshness` of `civic scan --json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScanFreshness {
    /// "registry" or "cache".
    pub source: &'static str,
    pub watermark: Watermark,
    /// Unix seconds at which the status was last known current: now for the registry, the last
    /// sync for the cache.
    pub as_of: u64,
    pub age_seconds: u64,
    pub max_staleness_seconds: u64,
    pub stale: bool,
    /// Why the cache was used without syncing, or why the sync failed.
    pub note: Option<String>,
}

/// The status is older than the refuse policy allows.
#[derive(thiserror::Error, Debug)]
#[error(
    "the clinic cache is {age} old (status as of block {height}), older than the allowed {max}: \
     refusing to scan (--stale refuse); run `civic registry sync`"
)]
pub struct TooStale {
    pub age: String,
    pub max: String,
    pub height: u64,
}

/// A duration in whole seconds, for people ("2h 5m").
pub fn fmt_age(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// The name a chain-fed cache records for the contract it follows.
pub fn chain_name(s: &crate::datadir::EvmSettings) -> anyhow::Result<String> {
    let cfg = s.config()?;
    Ok(format!("evm:{}:{}", cfg.chain_id, cfg.contract))
}

/// Sync the data directory's clinic cache from the registry contract `s` names (created on
/// first use). The trust anchor, as for the ledger: this directory's authority key; else the one
/// the cache already follows; else the contract's (the bool says the latter was taken).
pub fn sync_from_chain(
    data: &crate::datadir::DataDir,
    s: &crate::datadir::EvmSettings,
) -> anyhow::Result<(Cache, SyncReport, bool)> {
    use anyhow::Context;
    let reg = data.evm_registry(s)?;
    let path = data.cache_db();
    let (authority, pinned_now) = match data.authority_public()? {
        Some(k) => (k, false),
        None if path.exists() => (*data.cache()?.authority(), false),
        None => (reg.authority_key()?, true),
    };
    let mut cache = Cache::open_or_create(&path, &authority)
        .with_context(|| format!("opening the clinic cache {}", path.display()))?;
    let report = cache
        .sync_chain(&reg, &chain_name(s)?)
        .with_context(|| format!("syncing the clinic cache from {}", s.rpc_url))?;
    Ok((cache, report, pinned_now))
}

/// Pick the registry for a scan. With a clinic cache in `data`: sync it from the registry first
/// (unless `cache_only`), and when the registry cannot be reached or the sync fails, use the
/// cache as it is (the note says why). Without a cache: the registry itself. A cache that does
/// not verify is an error: never scanned against.
pub fn open_for_scan(
    data: &crate::datadir::DataDir,
    cache_only: bool,
) -> anyhow::Result<(ScanRegistry, Option<String>)> {
    use anyhow::Context;
    let cache_path = data.cache_db();
    if let Some(s) = data.evm_settings()? {
        if !cache_path.exists() {
            if cache_only {
                return Err(CacheError::Missing(cache_path).into());
            }
            // No cache yet: the chain live (node down = the error, naming the node).
            return Ok((ScanRegistry::Live(data.registry()?), None));
        }
        let mut cache = data.cache()?;
        let mut note = None;
        if !cache_only {
            match data.evm_registry(&s) {
                Ok(reg) => {
                    let chain = chain_name(&s)?;
                    if let Err(e) = cache
                        .sync_chain(&reg, &chain)
                        .context("syncing the clinic cache from the chain")
                    {
                        note = Some(format!(
                            "registry not used ({e:#}); scanning from the clinic cache"
                        ));
                    }
                }
                Err(e) => {
                    let unreachable =
                        matches!(e.downcast_ref::<RegError>(), Some(RegError::Unreachable(_)));
                    let as_of = cache.freshness().map(|f| {
                        format!(
                            "status as of block {}, {} ago (clinic cache)",
                            f.watermark.height,
                            fmt_age(crate::now().saturating_sub(f.synced_at))
                        )
                    });
                    let as_of = as_of.unwrap_or_else(|| "clinic cache".into());
                    note = Some(if unreachable {
                        format!("registry node unreachable: {as_of} ({e:#})")
                    } else {
                        format!("registry not used ({e:#}): {as_of}")
                    });
                }
            }
        }
        if cache.freshness().is_none() {
            return Err(CacheError::Empty(cache_path).into());
        }
        return Ok((ScanRegistry::Cache(Box::new(cache)), note));
    }
    if !cache_path.exists() {
        if cache_only {
            return Err(CacheError::Missing(cache_path).into());
        }
        return Ok((ScanRegistry::Live(data.registry()?), None));
    }
    let mut cache = data.cache()?;
    let mut note = None;
    if !cache_only && !data.registry_db().exists() {
        note = Some(format!(
            "registry {} not reachable: scanning offline from the clinic cache",
            data.registry_db().display()
        ));
    } else if !cache_only {
        let synced = data.ledger().and_then(|reg| {
            let authority = *cache.authority();
            cache
                .sync(&reg, &authority)
                .context("syncing the clinic cache")
        });
        if let Err(e) = synced {
            note = Some(format!(
                "registry not used ({e:#}); scanning from the clinic cache"
            ));
        }
    }
    if cache.freshness().is_none() {
        return Err(CacheError::Empty(cache_path).into());
    }
    Ok((ScanRegistry::Cache(Box::new(cache)), note))
}

impl std::fmt::Debug for ScanRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanRegistry::Live(_) => f.write_str("ScanRegistry::Live"),
            ScanRegistry::Cache(c) => f.debug_tuple("ScanRegistry::Cache").field(c).finish(),
        }
    }
}

impl ScanRegistry {
    /// The freshness of the status, and an error under the refuse policy when it is too old.
    pub fn freshness(
        &self,
        now: u64,
        max_staleness: std::time::Duration,
        policy: StalePolicy,
        note: Option<String>,
    ) -> anyhow::Result<ScanFreshness> {
        let (source, watermark, as_of) = match self {
            ScanRegistry::Live(r) => ("registry", r.watermark()?, now),
            ScanRegistry::Cache(c) => {
                let f = c
                    .freshness()
                    .ok_or_else(|| CacheError::Empty(c.path().to_path_buf()))?;
                ("cache", f.watermark, f.synced_at)
            }
        };
        let age = now.saturating_sub(as_of);
        let max = max_staleness.as_secs();
        let stale = age > max;
        if stale && policy == StalePolicy::Refuse {
            return Err(TooStale {
                age: fmt_age(age),
                max: fmt_age(max),
                height: watermark.height,
            }
            .into());
        }
        Ok(ScanFreshness {
            source,
            watermark,
            as_of,
            age_seconds: age,
            max_staleness_seconds: max,
            stale,
            note,
        })
    }

    fn inner(&self) -> &dyn Registry {
        match self {
            ScanRegistry::Live(r) => r.as_ref(),
            ScanRegistry::Cache(c) => c.as_ref(),
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Registry {
        match self {
            ScanRegistry::Live(r) => r.as_mut(),
            ScanRegistry::Cache(c) => c.as_mut(),
        }
    }
}

impl Registry for ScanRegistry {
    fn authority_key(&self) -> civic_registry::Result<VerifyingKey> {
        self.inner().authority_key()
    }
    fn watermark(&self) -> civic_registry::Result<Watermark> {
        self.inner().watermark()
    }
    fn register_issuer(&mut self, c: &IssuerCertificate) -> civic_registry::Result<Watermark> {
        self.inner_mut().register_issuer(c)
    }
    fn retire_issuer_key(&mut self, r: &KeyRetirement) -> civic_registry::Result<Watermark> {
        self.inner_mut().retire_issuer_key(r)
    }
    fn retired_keys(&self, issuer_id: &str) -> civic_registry::Result<Vec<RetiredKey>> {
        self.inner().retired_keys(issuer_id)
    }
    fn retirement(&self, id: &str, key: &[u8]) -> civic_registry::Result<Option<RetiredKey>> {
        self.inner().retirement(id, key)
    }
    fn anchor_batch(&mut self, r: &SignedAnchor) -> civic_registry::Result<BatchRecord> {
        self.inner_mut().anchor_batch(r)
    }
    fn set_status(&mut self, c: &SignedStatusChange) -> civic_registry::Result<Watermark> {
        self.inner_mut().set_status(c)
    }
    fn set_status_batch(
        &mut self,
        b: &civic_registry::SignedStatusBatch,
    ) -> civic_registry::Result<Watermark> {
        self.inner_mut().set_status_batch(b)
    }
    fn issuer_certs(&self, issuer_id: &str) -> civic_registry::Result<Vec<IssuerRecord>> {
        self.inner().issuer_certs(issuer_id)
    }
    fn issuers(&self) -> civic_registry::Result<Vec<IssuerRecord>> {
        self.inner().issuers()
    }
    fn batch(&self, batch_id: u64) -> civic_registry::Result<Option<BatchRecord>> {
        self.inner().batch(batch_id)
    }
    fn status(&self, issuer_id: &str, index: u32) -> civic_registry::Result<CredentialStatus> {
        self.inner().status(issuer_id, index)
    }
    fn next_status_index(&self, issuer_id: &str) -> civic_registry::Result<u32> {
        self.inner().next_status_index(issuer_id)
    }
    fn verify_chain(&self) -> civic_registry::Result<ChainReport> {
        self.inner().verify_chain()
    }
    fn verdict(
        &self,
        record: &civic_registry::CardRecord,
        evidence: Option<&civic_registry::CardEvidence>,
        now: u64,
    ) -> civic_registry::Result<civic_registry::VerdictReport> {
        self.inner().verdict(record, evidence, now)
    }
}
