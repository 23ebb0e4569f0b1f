//! What an issuing office keeps: the record of which status index it gave which card's
//! credential, so a credential can be revoked when the card is lost.

use std::path::Path;

use anyhow::{Context, Result};
use civic_registry::credential::Kind;
use rusqlite::{params, Connection, OptionalExtension};

/// Where a batch row stands. A card counts as done only once `Activated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowState {
    /// Validated, card number fixed.
    Planned,
    /// Its card holds the card number, authority key and a card key (still personalising).
    Keyed,
    /// Its credentials are signed and anchored.
    Anchored,
    /// Its records are on the card; PIN and ACTIVATE not yet done.
    Written,
    /// The card is issued.
    Activated,
}

impl RowState {
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Planned => "planned",
            RowState::Keyed => "keyed",
            RowState::Anchored => "anchored",
            RowState::Written => "written",
            RowState::Activated => "activated",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [
            RowState::Planned,
            RowState::Keyed,
            RowState::Anchored,
            RowState::Written,
            RowState::Activated,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// One row of a batch run, as the journal holds it.
#[derive(Debug, Clone)]
pub struct JournalRow {
    pub line: u64,
    pub card_id: String,
    pub state: RowState,
    pub card_key: Option<[u8; 65]>,
}

/// A bureau's batch of a run: signed, anchored once `batch_id` is set.
#[derive(Debug, Clone)]
pub struct JournalAnchor {
    pub seq: u32,
    pub request: civic_registry::AnchorRequest,
    pub key_kind: Kind,
    pub batch_id: Option<u64>,
}

/// A signed credential of a run, in its batch at `leaf`.
#[derive(Debug, Clone)]
pub struct JournalCredential {
    pub line: u64,
    pub kind: Kind,
    pub anchor_seq: u32,
    pub leaf: u32,
    pub status_index: u32,
    pub signed: Vec<u8>,
}

fn kind_of(s: &str) -> rusqlite::Result<Kind> {
    s.parse().map_err(|e: civic_registry::Error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// One credential this office issued.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    pub card_id: String,
    pub kind: Kind,
    pub issuer_id: String,
    pub status_index: u32,
    pub batch_id: u64,
    pub commitment: String,
    pub issued_at: u64,
}

/// The office's issuance book (SQLite). Append-only migrations, applied in order.
#[derive(Debug)]
pub struct IssuanceBook {
    db: Connection,
}

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE issued (
        card_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        issuer_id TEXT NOT NULL,
        status_index INTEGER NOT NULL,
        batch_id INTEGER NOT NULL,
        commitment TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        PRIMARY KEY (issuer_id, status_index, kind)
    );
    CREATE INDEX issued_by_card ON issued (card_id, kind);",
    // 2: the batch-issuance journal (`civic provision --batch`). A run is one batch file
    // (identified by a hash of its rows without the PIN column); each row moves
    // planned -> keyed -> anchored -> written -> activated. PINs are never stored.
    "CREATE TABLE batch_run (
        run_id INTEGER PRIMARY KEY,
        file_hash TEXT NOT NULL UNIQUE,
        started_at INTEGER NOT NULL
    );
    CREATE TABLE batch_row (
        run_id INTEGER NOT NULL REFERENCES batch_run (run_id),
        line INTEGER NOT NULL,
        card_id TEXT NOT NULL,
        state TEXT NOT NULL,
        card_key TEXT,
        PRIMARY KEY (run_id, line)
    );
    CREATE TABLE batch_anchor (
        run_id INTEGER NOT NULL REFERENCES batch_run (run_id),
        seq INTEGER NOT NULL,
        issuer_id TEXT NOT NULL,
        key_kind TEXT NOT NULL,
        root TEXT NOT NULL,
        size INTEGER NOT NULL,
        first_status_index INTEGER NOT NULL,
        status_count INTEGER NOT NULL,
        batch_id INTEGER,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE batch_credential (
        run_id INTEGER NOT NULL REFERENCES batch_run (run_id),
        line INTEGER NOT NULL,
        kind TEXT NOT NULL,
        anchor_seq INTEGER NOT NULL,
        leaf INTEGER NOT NULL,
        status_index INTEGER NOT NULL,
        signed BLOB NOT NULL,
        record BLOB,
        PRIMARY KEY (run_id, line, kind),
        UNIQUE (run_id, anchor_seq, leaf)
    );",
    // 3: the card access number (CAN) of every card this office personalised: the PACE
    // password printed on the card (notes/SECURE-MESSAGING.md). Like the printed number, it
    // opens a secure channel but proves nothing about the citizen (that is the PIN's job).
    "CREATE TABLE card_access (
        card_id TEXT PRIMARY KEY,
        can TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
];

impl IssuanceBook {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Connection::open(path)
            .with_context(|| format!("opening issuance book {}", path.display()))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        let version: usize = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = db.unchecked_transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(Self { db })
    }

    pub fn record(&self, rows: &[Issued]) -> Result<()> {
        let tx = self.db.unchecked_transaction()?;
        for r in rows {
            insert_issued(&tx, r, false)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The CAN of `card_id`: the one recorded, or a new random one recorded now (so an
    /// interrupted personalisation writes the same number again).
    pub fn can_for(&self, card_id: &str) -> Result<zeroize::Zeroizing<String>> {
        if let Some(can) = self.can_of(card_id)? {
            return Ok(can);
        }
        let can = zeroize::Zeroizing::new(new_can());
        self.db.execute(
            "INSERT INTO card_access (card_id, can, created_at) VALUES (?1, ?2, ?3)",
            params![card_id, can.as_str(), crate::now() as i64],
        )?;
        Ok(can)
    }

    /// The recorded CAN of `card_id`, if this office personalised it.
    pub fn can_of(&self, card_id: &str) -> Result<Option<zeroize::Zeroizing<String>>> {
        Ok(self
            .db
            .query_row(
                "SELECT can FROM card_access WHERE card_id = ?1",
                params![card_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(zeroize::Zeroizing::new))
    }

    /// Whether this office already issued anything to `card_id`.
    pub fn knows_card(&self, card_id: &str) -> Result<bool> {
        self.db
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM issued WHERE card_id = ?1)",
                params![card_id],
                |r| r.get(0),
            )
            .context("reading the issuance book")
    }

    /// The newest credential of `kind` issued to `card_id`.
    pub fn find(&self, card_id: &str, kind: Kind) -> Result<Option<Issued>> {
        self.db
            .query_row(
                "SELECT card_id, kind, issuer_id, status_index, batch_id, commitment, issued_at
                 FROM issued WHERE card_id = ?1 AND kind = ?2
                 ORDER BY issued_at DESC, batch_id DESC LIMIT 1",
                params![card_id, kind.as_str()],
                |r| {
                    Ok(Issued {
                        card_id: r.get(0)?,
                        kind,
                        issuer_id: r.get(2)?,
                        status_index: r.get(3)?,
                        batch_id: r.get::<_, i64>(4)? as u64,
                        commitment: r.get(5)?,
                        issued_at: r.get::<_, i64>(6)? as u64,
                    })
                },
            )
            .optional()
            .context("reading the issuance book")
    }

    /// Every credential this office issued, oldest first.
    pub fn all_issued(&self) -> Result<Vec<Issued>> {
        let mut st = self.db.prepare(
            "SELECT card_id, kind, issuer_id, status_index, batch_id, commitment, issued_at
             FROM issued ORDER BY issued_at, batch_id, issuer_id, status_index",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(Issued {
                    card_id: r.get(0)?,
                    kind: kind_of(&r.get::<_, String>(1)?)?,
                    issuer_id: r.get(2)?,
                    status_index: r.get(3)?,
                    batch_id: r.get::<_, i64>(4)? as u64,
                    commitment: r.get(5)?,
                    issued_at: r.get::<_, i64>(6)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The journal run of a batch file (by its hash), created if new. Returns (run id, new?).
    pub fn open_run(&self, file_hash: &str, now: u64) -> Result<(i64, bool)> {
        let found: Option<i64> = self
            .db
            .query_row(
                "SELECT run_id FROM batch_run WHERE file_hash = ?1",
                params![file_hash],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = found {
            return Ok((id, false));
        }
        self.db.execute(
            "INSERT INTO batch_run (file_hash, started_at) VALUES (?1, ?2)",
            params![file_hash, now as i64],
        )?;
        Ok((self.db.last_insert_rowid(), true))
    }

    /// The rows of a run, by line.
    pub fn run_rows(&self, run: i64) -> Result<Vec<JournalRow>> {
        let mut st = self.db.prepare(
            "SELECT line, card_id, state, card_key FROM batch_row WHERE run_id = ?1 ORDER BY line",
        )?;
        let rows = st
            .query_map(params![run], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(line, card_id, state, key)| {
                let card_key = match key {
                    Some(k) => Some(
                        hex::decode(&k)
                            .ok()
                            .and_then(|b| <[u8; 65]>::try_from(b).ok())
                            .context("a malformed card key in the batch journal")?,
                    ),
                    None => None,
                };
                Ok(JournalRow {
                    line: line as u64,
                    card_id,
                    state: RowState::parse(&state)
                        .context("an unknown row state in the journal")?,
                    card_key,
                })
            })
            .collect()
    }

    /// Whether a card number is taken by a row of any batch run.
    pub fn card_in_journal(&self, card_id: &str) -> Result<bool> {
        self.db
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM batch_row WHERE card_id = ?1)",
                params![card_id],
                |r| r.get(0),
            )
            .context("reading the batch journal")
    }

    pub fn plan_row(&self, run: i64, line: u64, card_id: &str) -> Result<()> {
        self.db.execute(
            "INSERT INTO batch_row (run_id, line, card_id, state) VALUES (?1, ?2, ?3, 'planned')",
            params![run, line as i64, card_id],
        )?;
        Ok(())
    }

    pub fn set_keyed(&self, run: i64, line: u64, key: &[u8; 65]) -> Result<()> {
        self.db.execute(
            "UPDATE batch_row SET state = 'keyed', card_key = ?3 WHERE run_id = ?1 AND line = ?2",
            params![run, line as i64, hex::encode(key)],
        )?;
        Ok(())
    }

    pub fn set_state(&self, run: i64, line: u64, state: RowState) -> Result<()> {
        self.db.execute(
            "UPDATE batch_row SET state = ?3 WHERE run_id = ?1 AND line = ?2",
            params![run, line as i64, state.as_str()],
        )?;
        Ok(())
    }

    /// Store a run's signed batches before anything is anchored (one transaction).
    pub fn save_signed(
        &self,
        run: i64,
        anchors: &[JournalAnchor],
        creds: &[JournalCredential],
    ) -> Result<()> {
        let tx = self.db.unchecked_transaction()?;
        for a in anchors {
            tx.execute(
                "INSERT INTO batch_anchor VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
                params![
                    run,
                    a.seq,
                    a.request.issuer_id,
                    a.key_kind.as_str(),
                    hex::encode(a.request.root),
                    a.request.size as i64,
                    a.request.first_status_index,
                    a.request.status_count
                ],
            )?;
        }
        for c in creds {
            tx.execute(
                "INSERT INTO batch_credential VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)",
                params![
                    run,
                    c.line as i64,
                    c.kind.as_str(),
                    c.anchor_seq,
                    c.leaf,
                    c.status_index,
                    c.signed
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The batches of a run, by sequence.
    pub fn anchors(&self, run: i64) -> Result<Vec<JournalAnchor>> {
        let mut st = self.db.prepare(
            "SELECT seq, issuer_id, key_kind, root, size, first_status_index, status_count,
                    batch_id
             FROM batch_anchor WHERE run_id = ?1 ORDER BY seq",
        )?;
        let rows = st
            .query_map(params![run], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    kind_of(&r.get::<_, String>(2)?)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, u32>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(
                |(seq, issuer_id, key_kind, root, size, first, count, batch)| {
                    let root = hex::decode(&root)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .context("a malformed batch root in the journal")?;
                    Ok(JournalAnchor {
                        seq,
                        request: civic_registry::AnchorRequest {
                            issuer_id,
                            root,
                            size: size as u64,
                            first_status_index: first,
                            status_count: count,
                        },
                        key_kind,
                        batch_id: batch.map(|b| b as u64),
                    })
                },
            )
            .collect()
    }

    /// The signed credentials of one batch of a run, by leaf.
    pub fn batch_credentials(&self, run: i64, seq: u32) -> Result<Vec<JournalCredential>> {
        let mut st = self.db.prepare(
            "SELECT line, kind, anchor_seq, leaf, status_index, signed FROM batch_credential
             WHERE run_id = ?1 AND anchor_seq = ?2 ORDER BY leaf",
        )?;
        let rows = st
            .query_map(params![run, seq], |r| {
                Ok(JournalCredential {
                    line: r.get::<_, i64>(0)? as u64,
                    kind: kind_of(&r.get::<_, String>(1)?)?,
                    anchor_seq: r.get(2)?,
                    leaf: r.get(3)?,
                    status_index: r.get(4)?,
                    signed: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// A batch was anchored: its id, each credential's card record, and the issuance-book
    /// entries (so the office can revoke them even before a card is written), in one
    /// transaction.
    pub fn save_anchored(
        &self,
        run: i64,
        seq: u32,
        batch_id: u64,
        records: &[(u64, Kind, Vec<u8>)],
        issued: &[Issued],
    ) -> Result<()> {
        let tx = self.db.unchecked_transaction()?;
        tx.execute(
            "UPDATE batch_anchor SET batch_id = ?3 WHERE run_id = ?1 AND seq = ?2",
            params![run, seq, batch_id as i64],
        )?;
        for (line, kind, record) in records {
            tx.execute(
                "UPDATE batch_credential SET record = ?4
                 WHERE run_id = ?1 AND line = ?2 AND kind = ?3",
                params![run, *line as i64, kind.as_str(), record],
            )?;
        }
        for r in issued {
            // A resumed run records the same credentials again: keep the first.
            insert_issued(&tx, r, true)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Rows whose credentials all have their card records move from keyed to anchored.
    pub fn promote_anchored(&self, run: i64) -> Result<()> {
        self.db.execute(
            "UPDATE batch_row SET state = 'anchored'
             WHERE run_id = ?1 AND state = 'keyed'
               AND EXISTS (SELECT 1 FROM batch_credential c
                           WHERE c.run_id = batch_row.run_id AND c.line = batch_row.line)
               AND NOT EXISTS (SELECT 1 FROM batch_credential c
                               WHERE c.run_id = batch_row.run_id AND c.line = batch_row.line
                                 AND c.record IS NULL)",
            params![run],
        )?;
        Ok(())
    }

    /// Whether a row has signed credentials in the journal.
    pub fn row_signed(&self, run: i64, line: u64) -> Result<bool> {
        self.db
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM batch_credential WHERE run_id = ?1 AND line = ?2)",
                params![run, line as i64],
                |r| r.get(0),
            )
            .context("reading the batch journal")
    }

    /// A row's card records, in write order (slot order of kinds).
    pub fn row_records(&self, run: i64, line: u64) -> Result<Vec<(Kind, Vec<u8>)>> {
        let mut st = self.db.prepare(
            "SELECT kind, record FROM batch_credential WHERE run_id = ?1 AND line = ?2
             ORDER BY anchor_seq, leaf",
        )?;
        let rows = st
            .query_map(params![run, line as i64], |r| {
                Ok((
                    kind_of(&r.get::<_, String>(0)?)?,
                    r.get::<_, Option<Vec<u8>>>(1)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(k, rec)| {
                Ok((
                    k,
                    rec.context("a credential of this row is not anchored yet")?,
                ))
            })
            .collect()
    }
}

/// One row of the issuance book. `or_ignore`: a row already there (same issuer, status index
/// and kind) is kept instead of refused.
fn insert_issued(conn: &Connection, r: &Issued, or_ignore: bool) -> rusqlite::Result<usize> {
    let sql = if or_ignore {
        "INSERT OR IGNORE INTO issued VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    } else {
        "INSERT INTO issued VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    };
    conn.execute(
        sql,
        params![
            r.card_id,
            r.kind.as_str(),
            r.issuer_id,
            r.status_index,
            r.batch_id as i64,
            r.commitment,
            r.issued_at as i64
        ],
    )
}

/// A fresh card access number: 6 uniformly random digits (rejection sampling, no modulo
/// bias).
pub fn new_can() -> String {
    use rand_core::RngCore;
    const LIMIT: u32 = u32::MAX - (u32::MAX % 1_000_000);
    loop {
        let v = rand_core::OsRng.next_u32();
        if v < LIMIT {
            return format!("{:06}", v % 1_000_000);
        }
    }
}
