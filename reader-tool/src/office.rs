//! What an issuing office keeps: the record of which status index it gave which card's
//! credential, so a credential can be revoked when the card is lost.

use std::path::Path;

use anyhow::{Context, Result};
use civic_registry::credential::Kind;
use rusqlite::{params, Connection, OptionalExtension};

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

const MIGRATIONS: &[&str] = &["CREATE TABLE issued (
        card_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        issuer_id TEXT NOT NULL,
        status_index INTEGER NOT NULL,
        batch_id INTEGER NOT NULL,
        commitment TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        PRIMARY KEY (issuer_id, status_index, kind)
    );
    CREATE INDEX issued_by_card ON issued (card_id, kind);"];

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
            tx.execute(
                "INSERT INTO issued VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    r.card_id,
                    r.kind.as_str(),
                    r.issuer_id,
                    r.status_index,
                    r.batch_id as i64,
                    r.commitment,
                    r.issued_at as i64
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
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
}
