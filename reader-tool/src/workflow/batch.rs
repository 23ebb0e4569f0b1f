//! Batch issuance (`civic provision --batch FILE.csv`): many cards in one run, every bureau's
//! credentials anchored as ONE Merkle batch (one registry write per bureau for the run).
//!
//! The identity credential names the card's own key, which only exists once the chip has
//! generated it, so a run goes in three passes, each resumable from the office's journal:
//!
//! 1. **Key**: each blank card presented gets its card number, the authority key and a key
//!    pair generated on the chip (it stays in personalisation state). Row: planned -> keyed.
//! 2. **Anchor**: every credential of every keyed row is signed, the signed batches are
//!    journalled, then each bureau's batch is anchored once. Row: keyed -> anchored. A batch
//!    journalled but not marked anchored is looked up in the registry before anchoring, so an
//!    interruption between the registry write and the journal never anchors it twice.
//! 3. **Write**: each keyed card presented again (in any order: the card number on the chip
//!    says which row it is) gets its records with inclusion proofs, its PIN, and ACTIVATE. Row:
//!    anchored -> written -> activated. A card interrupted before ACTIVATE is still in
//!    personalisation state and is simply written again; a card counts as done only once
//!    activated.
//!
//! With several readers each holding a card, both passes run without touching a card.
//!
//! **The PIN column is sensitive.** It is parsed straight into a [`Pin`] (zeroized on drop,
//! never printed, never in an error message, never journalled), and it is left out of the
//! file hash that identifies the run (a hash over a six-digit secret could be brute-forced).
//! The CSV parser's own buffers cannot be zeroized: keep batch files on encrypted storage and
//! delete them after the run.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use card_applet::protocol::LifeCycle;
use civic_registry::credential::{
    Degree, EducationClaims, EmergencyInfo, HealthClaims, Kind, SignedCredential, Vaccination,
};
use civic_registry::Registry;
use sha2::{Digest, Sha256};

use crate::apdu::ApduMode;
use crate::office::{JournalAnchor, JournalCredential, RowState};
use crate::session::{CardInfo, Pin, Session};
use crate::transport::Transport;

use super::provision::{
    anchor, check_card_id, key_card, kinds_of, new_card_id, records_of, sign_batches,
    write_and_activate, Bureau, CardPlan, CitizenData, IdentityInput, Office, PlannedBatch,
    SignedItem,
};

/// The CSV columns, in any order (header row required).
pub const COLUMNS: [&str; 10] = [
    "card_id",
    "name",
    "birth_date",
    "pin",
    "blood_type",
    "allergies",
    "emergency_contact",
    "chronic_conditions",
    "vaccinations",
    "degrees",
];

/// One valid row of a batch file.
#[derive(Debug)]
pub struct Row {
    /// Line number in the file (the header is line 1).
    pub line: u64,
    pub citizen: CitizenData,
    pub pin: Pin,
}

/// A row left out of the run, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowProblem {
    pub line: u64,
    pub reason: String,
}

/// A parsed batch file: its valid rows, the rows refused, and the run's identity.
#[derive(Debug)]
pub struct BatchFile {
    pub rows: Vec<Row>,
    pub problems: Vec<RowProblem>,
    /// SHA-256 over every row's fields except the PIN column (hex).
    pub hash: String,
}

fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
    let digits = b
        .iter()
        .enumerate()
        .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    matches!((digits, num(5..7), num(8..10)), (true, Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d))
}

fn list(s: &str) -> Vec<String> {
    s.split(';')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One citizen entered field by field (the desk's provisioning form), by the batch file's
/// column names and with the batch file's rules: the citizen and their PIN, or what is wrong
/// (naming the field, never quoting the PIN).
pub fn citizen_from_fields(
    get: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(CitizenData, Pin), String> {
    parse_row(get, 0).map(|r| (r.citizen, r.pin))
}

/// Parse one record's fields (by column index) into a row; the error names the column.
fn parse_row(get: &dyn Fn(&str) -> Result<String, String>, line: u64) -> Result<Row, String> {
    // The PIN first, and its error never quotes it.
    let pin = Pin::parse(&zeroize::Zeroizing::new(get("pin")?)).map_err(|e| format!("pin: {e}"))?;
    let card_id = get("card_id")?;
    let card_id = if card_id.is_empty() {
        None
    } else {
        check_card_id(&card_id).map_err(|e| format!("card_id: {e}"))?;
        Some(card_id)
    };
    let name = get("name")?;
    if name.is_empty() {
        return Err("name: missing".into());
    }
    let birth_date = get("birth_date")?;
    if !valid_date(&birth_date) {
        return Err(format!(
            "birth_date: {birth_date:?} is not a date (YYYY-MM-DD)"
        ));
    }
    let blood_type = get("blood_type")?;
    let allergies = list(&get("allergies")?);
    let contact = get("emergency_contact")?;
    let chronic = list(&get("chronic_conditions")?);
    let vaccinations = list(&get("vaccinations")?)
        .into_iter()
        .map(|v| match v.split_once('@') {
            Some((n, d)) if !n.trim().is_empty() && valid_date(d.trim()) => Ok(Vaccination {
                name: n.trim().to_owned(),
                date: d.trim().to_owned(),
            }),
            _ => Err(format!("vaccinations: {v:?} is not name@YYYY-MM-DD")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let any_health = !blood_type.is_empty()
        || !allergies.is_empty()
        || !contact.is_empty()
        || !chronic.is_empty()
        || !vaccinations.is_empty();
    let health = if any_health {
        const TYPES: [&str; 8] = ["A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-"];
        if !TYPES.contains(&blood_type.as_str()) {
            return Err(format!(
                "blood_type: {blood_type:?} is not one of {} (needed with any health field)",
                TYPES.join(" ")
            ));
        }
        if contact.is_empty() {
            return Err("emergency_contact: missing (needed with any health field)".into());
        }
        Some(HealthClaims {
            emergency: EmergencyInfo {
                blood_type,
                allergies,
                emergency_contact: contact,
            },
            chronic_conditions: chronic,
            vaccinations,
        })
    } else {
        None
    };
    let degrees = list(&get("degrees")?)
        .into_iter()
        .map(|d| {
            let parts: Vec<&str> = d.split('@').map(str::trim).collect();
            match parts.as_slice() {
                [t, i, y] if !t.is_empty() && !i.is_empty() => match y.parse::<u16>() {
                    Ok(year) if (1900..=2200).contains(&year) => Ok(Degree {
                        title: (*t).to_owned(),
                        institution: (*i).to_owned(),
                        year,
                    }),
                    _ => Err(format!("degrees: year {y:?} in {d:?} is not a year")),
                },
                _ => Err(format!("degrees: {d:?} is not title@institution@year")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let education = (!degrees.is_empty()).then_some(EducationClaims { degrees });
    Ok(Row {
        line,
        citizen: CitizenData {
            card_id,
            identity: IdentityInput { name, birth_date },
            health,
            education,
        },
        pin,
    })
}

/// Parse and validate a batch file. A row with missing or malformed fields becomes a
/// [`RowProblem`] with its line number; the other rows are unaffected. Only a file without
/// the required header is an error.
pub fn parse_csv(bytes: &[u8]) -> Result<BatchFile> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = rdr
        .byte_headers()
        .context("reading the CSV header")?
        .clone();
    let mut index = Vec::new();
    for c in COLUMNS {
        let i = headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(c.as_bytes()))
            .with_context(|| {
                format!(
                    "the batch file has no {c:?} column (columns: {})",
                    COLUMNS.join(",")
                )
            })?;
        index.push(i);
    }
    let mut hasher = Sha256::new();
    hasher.update(b"civic-batch-v1\n");
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut seen_ids: HashSet<String> = HashSet::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                problems.push(RowProblem {
                    line,
                    reason: "unreadable CSV record".into(),
                });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        // The run's identity: every field but the PIN, length-prefixed.
        hasher.update(line.to_be_bytes());
        for (c, &i) in COLUMNS.iter().zip(&index) {
            if *c == "pin" {
                continue;
            }
            let f = rec.get(i).unwrap_or_default();
            hasher.update((f.len() as u64).to_be_bytes());
            hasher.update(f);
        }
        let get = |name: &str| -> Result<String, String> {
            let Some(ci) = COLUMNS.iter().position(|c| *c == name) else {
                return Err(format!("{name}: unknown column"));
            };
            match rec.get(index[ci]) {
                None => Err(format!("{name}: missing (too few fields)")),
                Some(f) => std::str::from_utf8(f)
                    .map(str::to_owned)
                    .map_err(|_| format!("{name}: not UTF-8")),
            }
        };
        match parse_row(&get, line) {
            Ok(row) => {
                if let Some(id) = &row.citizen.card_id {
                    if !seen_ids.insert(id.clone()) {
                        problems.push(RowProblem {
                            line,
                            reason: format!("card_id: {id} appears on an earlier line"),
                        });
                        continue;
                    }
                }
                rows.push(row);
            }
            Err(reason) => problems.push(RowProblem { line, reason }),
        }
    }
    Ok(BatchFile {
        rows,
        problems,
        hash: hex::encode(hasher.finalize()),
    })
}

/// Where the cards come from: readers polled for a card in personalisation state (CLI), or
/// in-process cards (tests).
pub trait CardSource {
    /// Wait for a card that `wanted` accepts (given what SELECT says about it), and return a
    /// connection to it; `None` when no such card will come. `what` says what the run waits
    /// for, for a prompt.
    fn next_card(
        &mut self,
        what: &str,
        wanted: &dyn Fn(&CardInfo) -> bool,
    ) -> Result<Option<Box<dyn Transport + '_>>>;
    /// The run is done with the card it was last given (it may be removed).
    fn card_done(&mut self, _card_id: &str, _pass: Pass) {}
}

/// The card passes of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    Key,
    Write,
}

/// What a run reports as it goes (a progress bar in the CLI).
pub trait Progress {
    /// A pass starts, with this many cards to handle.
    fn pass(&mut self, _pass: Pass, _cards: u64) {}
    /// One card of the pass is done.
    fn card(&mut self, _pass: Pass, _line: u64, _card_id: &str) {}
    /// One bureau's batch is anchored.
    fn anchored(&mut self, _issuer_id: &str, _batch_id: u64, _size: u64) {}
}

/// A [`Progress`] that reports nothing.
#[derive(Debug)]
pub struct Quiet;
impl Progress for Quiet {}

/// One anchored batch of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AnchoredBatch {
    pub issuer_id: String,
    pub batch_id: u64,
    pub size: u64,
    pub first_status_index: u32,
    pub status_count: u32,
}

/// A row provisioned (in this run or an earlier, interrupted one).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowDone {
    pub line: u64,
    pub card_id: String,
}

/// The outcome of a run.
#[derive(Debug, Default, serde::Serialize)]
pub struct BatchSummary {
    pub run_id: i64,
    pub resumed: bool,
    /// Provisioned (activated) in this invocation.
    pub provisioned: Vec<RowDone>,
    /// Activated by an earlier invocation of the same file: skipped.
    pub already_done: Vec<RowDone>,
    /// Rows left out: malformed, or refused at planning (card number taken, no bureau).
    pub skipped: Vec<RowProblem>,
    /// The run's batches (anchored in this invocation or before).
    pub batches: Vec<AnchoredBatch>,
}

impl BatchSummary {
    /// Whether every row of the file was provisioned.
    pub fn complete(&self) -> bool {
        self.skipped.is_empty()
    }
}

fn take_card<'s>(
    source: &'s mut dyn CardSource,
    what: &str,
    wanted: &dyn Fn(&CardInfo) -> bool,
    waiting: usize,
) -> Result<Box<dyn Transport + 's>> {
    source.next_card(what, wanted)?.with_context(|| {
        format!(
            "no more cards ({waiting} row(s) still wait for theirs): run the same file again \
             to resume"
        )
    })
}

/// Run (or resume) a batch: key the blank cards, anchor one batch per bureau, write and
/// activate each card. An error interrupts the run with the journal consistent: running the
/// same file again resumes it.
#[allow(clippy::too_many_arguments)]
pub fn run_batch<R: Registry>(
    source: &mut dyn CardSource,
    mode: ApduMode,
    registry: &mut R,
    office: &Office<'_>,
    bureau_for: &dyn Fn(Kind) -> Result<Bureau>,
    file: &BatchFile,
    progress: &mut dyn Progress,
    now: u64,
) -> Result<BatchSummary> {
    let book = office.book;
    let (run, new) = book.open_run(&file.hash, now)?;
    let mut summary = BatchSummary {
        run_id: run,
        resumed: !new,
        skipped: file.problems.clone(),
        ..BatchSummary::default()
    };

    // Plan: rows new to the journal get their card number (checked unique) and their bureaus
    // resolved; rows already in the journal keep theirs.
    let journal = book.run_rows(run)?;
    for row in &file.rows {
        if journal.iter().any(|j| j.line == row.line) {
            continue;
        }
        let card_id = row.citizen.card_id.clone().unwrap_or_else(new_card_id);
        if book.knows_card(&card_id)? || book.card_in_journal(&card_id)? {
            summary.skipped.push(RowProblem {
                line: row.line,
                reason: format!("card_id: {card_id} was already issued by this office"),
            });
            continue;
        }
        if let Err(e) = kinds_of(&row.citizen)
            .into_iter()
            .try_for_each(|k| bureau_for(k).map(drop))
        {
            summary.skipped.push(RowProblem {
                line: row.line,
                reason: format!("{e:#}"),
            });
            continue;
        }
        book.plan_row(run, row.line, &card_id)?;
    }
    summary.skipped.sort_by_key(|p| p.line);
    let row_of = |line: u64| file.rows.iter().find(|r| r.line == line);

    // Pass 1: key every planned card.
    let planned: Vec<_> = book
        .run_rows(run)?
        .into_iter()
        .filter(|j| j.state == RowState::Planned && row_of(j.line).is_some())
        .collect();
    if !planned.is_empty() {
        progress.pass(Pass::Key, planned.len() as u64);
    }
    let mut waiting: Vec<_> = planned;
    while !waiting.is_empty() {
        let ids: HashSet<String> = waiting.iter().map(|j| j.card_id.clone()).collect();
        // A blank card: one without a card key (an interrupted run may have given it a card
        // number already: it is numbered again), or one keyed for a row the journal still
        // has as planned (interrupted before the journal heard of its key).
        let wanted = |i: &CardInfo| {
            i.life_cycle == LifeCycle::Personalisation
                && (!i.has_card_key || i.card_id.as_ref().is_some_and(|id| ids.contains(id)))
        };
        let n = waiting.len();
        let what = format!("a blank card ({n} to go)");
        let mut t = take_card(source, &what, &wanted, n)?;
        let mut tx = t.transaction().context("reserving the card")?;
        let s = Session::open(&mut *tx, mode).context("selecting the Civic Card application")?;
        let pos = s
            .info()
            .card_id
            .as_ref()
            .and_then(|id| waiting.iter().position(|j| j.card_id == *id))
            .unwrap_or(0);
        let row = waiting.remove(pos);
        let mut card = s.personalise()?;
        let key = key_card(&mut card, &row.card_id, &office.authority_public_key)
            .with_context(|| format!("line {}: keying card {}", row.line, row.card_id))?;
        drop(card);
        drop(tx);
        drop(t);
        book.set_keyed(run, row.line, &key)?;
        progress.card(Pass::Key, row.line, &row.card_id);
        source.card_done(&row.card_id, Pass::Key);
    }

    // Pass 2: sign every keyed row not yet signed, journal the batches, anchor each once.
    // Batches journalled by an interrupted invocation are finished first (looked up in the
    // registry before anchoring), then the rows keyed since are signed as new batches.
    loop {
        let rows = book.run_rows(run)?;
        anchor_journalled(registry, office, bureau_for, run, &rows, progress, now)?;
        let mut to_sign = Vec::new();
        for j in rows.iter().filter(|j| j.state == RowState::Keyed) {
            if !book.row_signed(run, j.line)? && row_of(j.line).is_some() {
                to_sign.push(j);
            }
        }
        if to_sign.is_empty() {
            break;
        }
        let mut plans = Vec::new();
        for j in &to_sign {
            let row = row_of(j.line).context("a journal row not in the file")?;
            let key = j
                .card_key
                .as_ref()
                .context("a keyed row without its card key")?;
            plans.push(CardPlan {
                card_id: &j.card_id,
                card_key: key,
                citizen: &row.citizen,
            });
        }
        let batches = sign_batches(registry, &office.validity, bureau_for, &plans, now)?;
        let base = book
            .anchors(run)?
            .iter()
            .map(|a| a.seq + 1)
            .max()
            .unwrap_or(0);
        let mut anchors = Vec::new();
        let mut creds = Vec::new();
        for (n, b) in batches.iter().enumerate() {
            let seq = base + n as u32;
            anchors.push(JournalAnchor {
                seq,
                request: b.request.clone(),
                key_kind: b.key_kind,
                batch_id: None,
            });
            for (leaf, item) in b.items.iter().enumerate() {
                creds.push(JournalCredential {
                    line: to_sign[item.card].line,
                    kind: item.kind,
                    anchor_seq: seq,
                    leaf: leaf as u32,
                    status_index: item.status_index,
                    signed: item.credential.to_bytes(),
                });
            }
        }
        book.save_signed(run, &anchors, &creds)?;
    }
    for a in book.anchors(run)? {
        if let Some(batch_id) = a.batch_id {
            summary.batches.push(AnchoredBatch {
                issuer_id: a.request.issuer_id.clone(),
                batch_id,
                size: a.request.size,
                first_status_index: a.request.first_status_index,
                status_count: a.request.status_count,
            });
        }
    }
    book.promote_anchored(run)?;

    // Pass 3: write and activate every anchored card, in whatever order they come.
    let rows = book.run_rows(run)?;
    for j in rows.iter().filter(|j| j.state == RowState::Activated) {
        summary.already_done.push(RowDone {
            line: j.line,
            card_id: j.card_id.clone(),
        });
    }
    let mut waiting: Vec<_> = rows
        .into_iter()
        .filter(|j| matches!(j.state, RowState::Anchored | RowState::Written))
        .filter(|j| row_of(j.line).is_some())
        .collect();
    if !waiting.is_empty() {
        progress.pass(Pass::Write, waiting.len() as u64);
    }
    while !waiting.is_empty() {
        let ids: HashSet<String> = waiting.iter().map(|j| j.card_id.clone()).collect();
        // Still personalising, or already issued (an interruption after ACTIVATE, before
        // the journal heard of it).
        let wanted =
            |i: &CardInfo| i.has_card_key && i.card_id.as_ref().is_some_and(|id| ids.contains(id));
        let n = waiting.len();
        let what = if n <= 3 {
            let ids: Vec<&str> = waiting.iter().map(|j| j.card_id.as_str()).collect();
            format!("card {} again (keyed in pass 1)", ids.join(" or "))
        } else {
            format!("one of the {n} cards keyed in pass 1, again")
        };
        let mut t = take_card(source, &what, &wanted, n)?;
        let mut tx = t.transaction().context("reserving the card")?;
        let mut s =
            Session::open(&mut *tx, mode).context("selecting the Civic Card application")?;
        let id = s.info().card_id.clone().unwrap_or_default();
        let pos = waiting
            .iter()
            .position(|j| j.card_id == id)
            .context("the card changed under the run")?;
        let j = waiting.remove(pos);
        let row = row_of(j.line).context("a journal row not in the file")?;
        let on_card = s.public_key().context("reading the card key")?;
        if Some(on_card) != j.card_key {
            bail!(
                "line {}: the card numbered {} holds another key than the one its credentials \
                 name: it is not the card keyed for this row",
                j.line,
                j.card_id
            );
        }
        if s.info().life_cycle == LifeCycle::Personalisation {
            let records = book.row_records(run, j.line)?;
            let can = book.can_for(&j.card_id)?;
            let card = s.personalise()?;
            // Mark written before PIN and ACTIVATE: an interruption now re-writes the card.
            write_and_activate_journalled(card, &records, &row.pin, &can, || {
                book.set_state(run, j.line, RowState::Written)
            })
            .with_context(|| format!("line {}: writing card {}", j.line, j.card_id))?;
        }
        drop(tx);
        drop(t);
        book.set_state(run, j.line, RowState::Activated)?;
        progress.card(Pass::Write, j.line, &j.card_id);
        source.card_done(&j.card_id, Pass::Write);
        summary.provisioned.push(RowDone {
            line: j.line,
            card_id: j.card_id,
        });
    }
    summary.skipped.retain(|p| {
        !summary
            .provisioned
            .iter()
            .chain(&summary.already_done)
            .any(|d| d.line == p.line)
    });
    Ok(summary)
}

fn write_and_activate_journalled(
    mut card: Session<'_, crate::session::Personalising>,
    records: &[(Kind, Vec<u8>)],
    pin: &Pin,
    can: &str,
    written: impl FnOnce() -> Result<()>,
) -> Result<()> {
    use crate::session::WriteRecords;
    for (kind, record) in records {
        card.write_record(super::slot_of(*kind), kind.as_byte(), record)
            .with_context(|| format!("writing the {kind} credential to the card"))?;
    }
    written()?;
    write_and_activate(card, &[], pin, can)
}

/// Anchor every batch of the run that is journalled but not anchored yet.
#[allow(clippy::too_many_arguments)]
fn anchor_journalled<R: Registry>(
    registry: &mut R,
    office: &Office<'_>,
    bureau_for: &dyn Fn(Kind) -> Result<Bureau>,
    run: i64,
    rows: &[crate::office::JournalRow],
    progress: &mut dyn Progress,
    now: u64,
) -> Result<()> {
    let book = office.book;
    for a in book.anchors(run)? {
        if a.batch_id.is_some() {
            continue;
        }
        // Rebuild the planned batch from the journal: the signed credentials by leaf.
        let creds = book.batch_credentials(run, a.seq)?;
        let mut plans_rows = Vec::new();
        for c in &creds {
            let j = rows
                .iter()
                .find(|j| j.line == c.line)
                .context("a journalled credential without its row")?;
            plans_rows.push(j);
        }
        let keys: Vec<[u8; 65]> = plans_rows
            .iter()
            .map(|j| j.card_key.unwrap_or([0; 65]))
            .collect();
        let citizen = CitizenData {
            card_id: None,
            identity: IdentityInput {
                name: String::new(),
                birth_date: String::new(),
            },
            health: None,
            education: None,
        };
        // One CardPlan per credential (only its card id is used for the records).
        let plans: Vec<CardPlan<'_>> = plans_rows
            .iter()
            .zip(&keys)
            .map(|(j, k)| CardPlan {
                card_id: &j.card_id,
                card_key: k,
                citizen: &citizen,
            })
            .collect();
        let items = creds
            .iter()
            .enumerate()
            .map(|(n, c)| {
                Ok(SignedItem {
                    card: n,
                    kind: c.kind,
                    status_index: c.status_index,
                    credential: SignedCredential::from_bytes(&c.signed)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = PlannedBatch {
            request: a.request.clone(),
            key_kind: a.key_kind,
            items,
        };
        if civic_registry::merkle::root(&batch.leaves()) != a.request.root {
            bail!(
                "the journalled batch of {} does not match its root",
                a.request.issuer_id
            );
        }
        let key = bureau_for(a.key_kind)?.key;
        let rec = anchor(registry, &a.request, &key)?;
        let out = records_of(&batch, rec.batch_id, &plans, now)?;
        let records: Vec<(u64, Kind, Vec<u8>)> = out
            .iter()
            .map(|(n, r, i)| (creds[*n].line, i.kind, r.encode()))
            .collect();
        let issued: Vec<_> = out.into_iter().map(|(_, _, i)| i).collect();
        book.save_anchored(run, a.seq, rec.batch_id, &records, &issued)?;
        progress.anchored(&a.request.issuer_id, rec.batch_id, a.request.size);
    }
    Ok(())
}
