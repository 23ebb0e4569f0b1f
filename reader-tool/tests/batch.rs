//! Batch issuance against in-process cards: one anchor per bureau for the whole run, malformed
//! rows reported by line, resumption after an interruption, and every card scanning valid.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use card_applet::terminal::{self, TerminalCert};
use civic_reader::apdu::ApduMode;
use civic_reader::office::IssuanceBook;
use civic_reader::session::{CardInfo, Session, TerminalKey};
use civic_reader::terminal::Role;
use civic_reader::transport::{InProcess, Transport, TransportError};
use civic_reader::workflow::batch::{
    parse_csv, run_batch, BatchFile, BatchSummary, CardSource, Quiet,
};
use civic_reader::workflow::provision::{Bureau, Office, Validity};
use civic_reader::workflow::scan::{scan, ChipCheck};
use civic_registry::cert::{IssuerCertBody, IssuerCertificate};
use civic_registry::credential::Kind;
use civic_registry::ledger::SqliteLedger;
use civic_registry::{keys, BatchRecord, Registry};
use p256::ecdsa::SigningKey;

const NOW: u64 = 1_790_000_000;
const MODE: ApduMode = ApduMode::Extended;

/// An in-process card behind the reader's secure-messaging transport (which remembers the
/// CAN it writes during personalisation).
type Card = civic_reader::sm::SmTransport<InProcess<card_applet::store::MemoryStore>>;

fn blank_card() -> Card {
    civic_reader::sm::SmTransport::new(InProcess::blank(), Box::new(|_| None))
}

const CSV: &str = "\
card_id,name,birth_date,pin,blood_type,allergies,emergency_contact,chronic_conditions,vaccinations,degrees
CIV-B-0001,Alice Example,1990-04-12,482913,A+,penicillin,Bob Example +86 10 5555 0100,asthma,measles (MMR)@1991-05-02;influenza@2026-10-01,BSc Computer Science@City University@2012
CIV-B-0002,Bob Example,1988-01-30,111222,O-,,Alice Example +86 10 5555 0101,,,
CIV-B-0003,Eve Broken,1990-13-45,333444,,,,,,
CIV-B-0004,Carol Example,2001-07-07,555666,,,,,,MSc Physics@Tech Institute@2025
CIV-B-0005,Dan Example,1975-12-24,777888,B+,latex;nuts,Erin Example +86 10 5555 0102,,tetanus@2020-03-03,PhD History@City University@2005
";

struct World {
    registry: SqliteLedger,
    authority: SigningKey,
    bureaus: Vec<(IssuerCertBody, SigningKey)>,
    clinic: (Vec<u8>, TerminalCert, SigningKey),
    book: IssuanceBook,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let authority = keys::generate();
    let mut registry = SqliteLedger::open_in_memory(&authority).unwrap();
    let mut bureaus = Vec::new();
    for (id, kinds) in [
        ("identity-bureau", vec![Kind::Identity]),
        ("health-bureau", vec![Kind::Health, Kind::Emergency]),
        ("education-bureau", vec![Kind::Education]),
    ] {
        let key = keys::generate();
        let body = IssuerCertBody {
            issuer_id: id.into(),
            name: format!("City {id}"),
            kinds,
            public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
            not_before: NOW - 86_400,
            not_after: NOW + 365 * 86_400,
        };
        registry
            .register_issuer(&IssuerCertificate::sign(&body, &authority).unwrap())
            .unwrap();
        bureaus.push((body, key));
    }
    let key = keys::generate();
    let body = TerminalCert {
        terminal_id: "clinic-01".into(),
        role: Role::Clinic.byte(),
        access: Role::Clinic.access(),
        not_before: NOW - 86_400,
        not_after: NOW + 30 * 86_400,
        public_key: keys::public_key_bytes(key.verifying_key()),
    };
    let cert = terminal::sign(&body, &authority);
    let dir = tempfile::tempdir().unwrap();
    let book = IssuanceBook::open(&dir.path().join("office.sqlite")).unwrap();
    World {
        registry,
        authority,
        bureaus,
        clinic: (cert, body, key),
        book,
        _dir: dir,
    }
}

/// A card that stops answering after `left` APDUs, as one pulled from the reader mid-write.
struct Flaky<'a> {
    card: &'a mut Card,
    left: Option<usize>,
}

impl Transport for Flaky<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        if let Some(n) = &mut self.left {
            if *n == 0 {
                return Err(TransportError::ShortResponse);
            }
            *n -= 1;
        }
        self.card.transmit(apdu)
    }
    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        Ok(Box::new(Flaky {
            card: &mut *self.card,
            left: self.left,
        }))
    }
}

/// N in-process cards "in readers"; the run is handed whichever the workflow wants, in turn.
/// `fail_on`: the k-th card handed out (from 1) is pulled after `fail_after` APDUs.
struct Cards {
    cards: Vec<Card>,
    next: usize,
    handed: usize,
    fail_on: Option<usize>,
    fail_after: usize,
}

impl Cards {
    fn blank(n: usize) -> Self {
        Self {
            cards: (0..n).map(|_| blank_card()).collect(),
            next: 0,
            handed: 0,
            fail_on: None,
            fail_after: 0,
        }
    }
}

impl CardSource for Cards {
    fn next_card(
        &mut self,
        _what: &str,
        wanted: &dyn Fn(&CardInfo) -> bool,
    ) -> anyhow::Result<Option<Box<dyn Transport + '_>>> {
        let n = self.cards.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let info = Session::open(&mut self.cards[i], MODE)?.info().clone();
            if wanted(&info) {
                self.next = i + 1;
                self.handed += 1;
                let left = (self.fail_on == Some(self.handed)).then_some(self.fail_after);
                return Ok(Some(Box::new(Flaky {
                    card: &mut self.cards[i],
                    left,
                })));
            }
        }
        Ok(None)
    }
}

fn run(w: &mut World, cards: &mut Cards, file: &BatchFile) -> anyhow::Result<BatchSummary> {
    let office = Office {
        authority_public_key: keys::public_key_bytes(w.authority.verifying_key()),
        book: &w.book,
        validity: Validity::default(),
    };
    let bureaus = &w.bureaus;
    let bureau_for = |k: Kind| {
        let (cert, key) = bureaus.iter().find(|(c, _)| c.kinds.contains(&k)).unwrap();
        Ok(Bureau {
            cert: cert.clone(),
            key: key.clone(),
        })
    };
    run_batch(
        cards,
        MODE,
        &mut w.registry,
        &office,
        &bureau_for,
        file,
        &mut Quiet,
        NOW,
    )
}

fn batches(r: &SqliteLedger) -> Vec<BatchRecord> {
    (1..).map_while(|id| r.batch(id).unwrap()).collect()
}

/// (issuer, size, status count) of every batch in the registry.
fn shape(r: &SqliteLedger) -> Vec<(String, u64, u32)> {
    batches(r)
        .into_iter()
        .map(|b| (b.issuer_id, b.size, b.status_count))
        .collect()
}

fn expected_shape() -> Vec<(String, u64, u32)> {
    vec![
        ("identity-bureau".into(), 4, 4),
        // Alice, Bob and Dan: health and emergency share one status index per card.
        ("health-bureau".into(), 6, 3),
        ("education-bureau".into(), 3, 3),
    ]
}

fn assert_all_scan_valid(w: &World, cards: &mut Cards) {
    let (cert, body, key) = &w.clinic;
    let clinic = TerminalKey {
        certificate: cert,
        terminal_id: &body.terminal_id,
        role: body.role,
        access: body.access,
        key,
    };
    let mut ids = Vec::new();
    for card in &mut cards.cards {
        let r = scan(card, MODE, &w.registry, &clinic, None, NOW + 60).unwrap();
        assert_eq!(r.chip, ChipCheck::Passed);
        assert!(r.valid, "{r:?}");
        ids.push(r.card.card_id.clone());
    }
    ids.sort();
    assert_eq!(
        ids,
        ["CIV-B-0001", "CIV-B-0002", "CIV-B-0004", "CIV-B-0005"].map(|s| Some(s.to_owned()))
    );
}

/// No status index given twice, and every credential recorded once.
fn assert_issued_once(w: &World) {
    let issued = w.book.all_issued().unwrap();
    // 4 identity, 3 health, 3 emergency, 3 education.
    assert_eq!(issued.len(), 13, "{issued:?}");
    for issuer in ["identity-bureau", "health-bureau", "education-bureau"] {
        let mut idx: Vec<(u32, String)> = issued
            .iter()
            .filter(|i| i.issuer_id == issuer)
            .map(|i| (i.status_index, i.card_id.clone()))
            .collect();
        idx.sort();
        idx.dedup();
        let mut only: Vec<u32> = idx.iter().map(|(i, _)| *i).collect();
        only.dedup();
        assert_eq!(
            only.len(),
            idx.len(),
            "{issuer}: a status index on two cards"
        );
    }
}

#[test]
fn malformed_row_is_reported_by_line_and_the_rest_is_one_anchor_per_bureau() {
    let file = parse_csv(CSV.as_bytes()).unwrap();
    assert_eq!(file.rows.len(), 4);
    assert_eq!(file.problems.len(), 1);
    assert_eq!(file.problems[0].line, 4);
    assert!(
        file.problems[0].reason.contains("birth_date"),
        "{:?}",
        file.problems
    );

    let mut w = world();
    let before = w.registry.watermark().unwrap().height;
    let mut cards = Cards::blank(4);
    let s = run(&mut w, &mut cards, &file).unwrap();
    assert_eq!(s.provisioned.len(), 4);
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].line, 4);
    assert!(!s.complete());
    // One registry write per bureau for the whole run.
    assert_eq!(shape(&w.registry), expected_shape());
    assert_eq!(w.registry.watermark().unwrap().height, before + 3);
    assert_issued_once(&w);
    assert_all_scan_valid(&w, &mut cards);

    // The same file again: everything is done, nothing is anchored.
    let mut more = Cards::blank(1);
    let again = run(&mut w, &mut more, &file).unwrap();
    assert!(again.resumed);
    assert!(again.provisioned.is_empty());
    assert_eq!(again.already_done.len(), 4);
    assert_eq!(w.registry.watermark().unwrap().height, before + 3);
}

#[test]
fn interrupted_while_writing_card_3_resumes_without_anchoring_again() {
    let file = parse_csv(CSV.as_bytes()).unwrap();
    let mut w = world();
    let mut cards = Cards::blank(4);
    // Handouts 1-4 key the cards, 5-8 write them: the third card of the write pass is pulled
    // after SELECT, the key check and two records.
    cards.fail_on = Some(7);
    cards.fail_after = 4;
    let e = run(&mut w, &mut cards, &file).unwrap_err();
    assert!(format!("{e:#}").contains("writing card"), "{e:#}");
    assert_eq!(shape(&w.registry), expected_shape());
    let height = w.registry.watermark().unwrap().height;
    let half = cards
        .cards
        .iter_mut()
        .filter_map(|c| {
            let s = Session::open(c, MODE).unwrap();
            (s.info().life_cycle == card_applet::protocol::LifeCycle::Personalisation
                && s.info().credential_count > 0)
                .then_some(())
        })
        .count();
    assert_eq!(half, 1, "one card half-written, still personalising");

    cards.fail_on = None;
    let s = run(&mut w, &mut cards, &file).unwrap();
    assert!(s.resumed);
    assert_eq!(s.already_done.len(), 2, "{s:?}");
    assert_eq!(s.provisioned.len(), 2, "{s:?}");
    assert_eq!(
        w.registry.watermark().unwrap().height,
        height,
        "nothing anchored"
    );
    assert_eq!(shape(&w.registry), expected_shape());
    assert_issued_once(&w);
    assert_all_scan_valid(&w, &mut cards);
}

#[test]
fn interrupted_while_keying_card_3_anchors_once_on_resume() {
    let file = parse_csv(CSV.as_bytes()).unwrap();
    let mut w = world();
    let before = w.registry.watermark().unwrap().height;
    let mut cards = Cards::blank(4);
    cards.fail_on = Some(3);
    cards.fail_after = 2;
    run(&mut w, &mut cards, &file).unwrap_err();
    assert!(
        batches(&w.registry).is_empty(),
        "nothing anchored before all are keyed"
    );

    cards.fail_on = None;
    let s = run(&mut w, &mut cards, &file).unwrap();
    assert_eq!(s.provisioned.len(), 4);
    assert_eq!(shape(&w.registry), expected_shape());
    assert_eq!(w.registry.watermark().unwrap().height, before + 3);
    assert_issued_once(&w);
    assert_all_scan_valid(&w, &mut cards);
}

#[test]
fn pins_are_never_in_problems_or_debug_output() {
    let csv = "card_id,name,birth_date,pin,blood_type,allergies,emergency_contact,chronic_conditions,vaccinations,degrees\n\
               CIV-P-1,Pat,1990-01-01,98765,,,,,,\n\
               CIV-P-2,Quinn,1990-01-01,246810,,,,,,\n\
               CIV-P-3,,1990-01-01,135790,,,,,,\n";
    let file = parse_csv(csv.as_bytes()).unwrap();
    assert_eq!(file.rows.len(), 1);
    let lines: Vec<u64> = file.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [2, 4]);
    let all = format!("{file:?}");
    for pin in ["98765", "246810", "135790"] {
        assert!(!all.contains(pin), "a PIN leaked: {all}");
    }
    // The PIN is not part of the run's identity: the same rows with other PINs resume it.
    let other = parse_csv(csv.replace("246810", "111111").as_bytes()).unwrap();
    assert_eq!(file.hash, other.hash);
}

#[test]
fn missing_fields_and_malformed_lists_name_line_and_column() {
    let csv = "card_id,name,birth_date,pin,blood_type,allergies,emergency_contact,chronic_conditions,vaccinations,degrees\n\
               CIV-M-1,Ann,1990-01-01,123456,A+,,,,,\n\
               CIV-M-2,Ben,1990-01-01,123456,,,,,flu-2020,\n\
               CIV-M-3,Cat,1990-01-01,123456,,,,,,BSc@Uni\n\
               CIV-M-4,Dee,1990-01-01\n\
               CIV-M-5,Eli,1990-01-01,123456,,,,,,\n";
    let file = parse_csv(csv.as_bytes()).unwrap();
    let got: Vec<(u64, &str)> = file
        .problems
        .iter()
        .map(|p| (p.line, p.reason.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (2, "emergency_contact"),
            (3, "vaccinations"),
            (4, "degrees"),
            (5, "pin"),
        ]
    );
    assert_eq!(file.rows.len(), 1);
    assert_eq!(file.rows[0].line, 6);
}

#[test]
fn batches_anchored_before_the_journal_heard_of_it_are_found_not_anchored_again() {
    let file = parse_csv(CSV.as_bytes()).unwrap();
    let mut w = world();
    let mut cards = Cards::blank(4);
    // Interrupt in the write pass (everything anchored), on the first card written.
    cards.fail_on = Some(5);
    cards.fail_after = 3;
    run(&mut w, &mut cards, &file).unwrap_err();
    let height = w.registry.watermark().unwrap().height;

    // As if the office crashed between each registry write and its journal entry: the
    // journal says signed but not anchored.
    let db = rusqlite::Connection::open(w._dir.path().join("office.sqlite")).unwrap();
    db.execute_batch(
        "UPDATE batch_anchor SET batch_id = NULL;
         UPDATE batch_credential SET record = NULL;
         UPDATE batch_row SET state = 'keyed' WHERE state IN ('anchored', 'written');",
    )
    .unwrap();
    drop(db);

    cards.fail_on = None;
    let s = run(&mut w, &mut cards, &file).unwrap();
    assert_eq!(s.provisioned.len(), 4, "{s:?}");
    assert_eq!(
        w.registry.watermark().unwrap().height,
        height,
        "nothing anchored twice"
    );
    assert_eq!(shape(&w.registry), expected_shape());
    assert_issued_once(&w);
    assert_all_scan_valid(&w, &mut cards);
}

#[test]
fn cli_reports_rows_by_line_never_prints_pins_and_exits_1_when_rows_are_skipped() {
    use std::process::Command;
    let home = tempfile::tempdir().unwrap();
    let civic = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_civic"))
            .env("CIVIC_HOME", home.path())
            .env_remove("CIVIC_READER")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(civic(&["authority", "init"]).0, 0);
    let csv = home.path().join("batch.csv");
    std::fs::write(&csv, CSV).unwrap();
    // No bureau registered: every row is refused before any card is asked for.
    let (code, out, err) = civic(&["provision", "--batch", csv.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("line 4: birth_date"), "{err}");
    assert!(out.contains("0 provisioned"), "{out}");
    assert!(out.contains("5 skipped"), "{out}");
    for pin in ["482913", "111222", "333444", "555666", "777888"] {
        assert!(!out.contains(pin) && !err.contains(pin), "a PIN leaked");
    }
    let (code, _, err) = civic(&["provision", "--batch", csv.to_str().unwrap(), "--pin-stdin"]);
    assert_eq!(code, 3, "{err}");
}
