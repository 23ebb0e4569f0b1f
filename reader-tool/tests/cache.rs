//! The clinic cache in-process: incremental sync, verdicts equal to the registry's, refusal of
//! forked and truncated sources, tamper evidence, offline scans and the staleness policy.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::cell::RefCell;
use std::time::Duration;

use card_applet::terminal::{self as tcert, TerminalCert};
use civic_reader::apdu::ApduMode;
use civic_reader::cache::{self, Cache, CacheError, ScanRegistry, StalePolicy};
use civic_reader::datadir::DataDir;
use civic_reader::session::{Pin, Session, TerminalKey, WriteRecords};
use civic_reader::terminal::Role;
use civic_reader::transport::InProcess;
use civic_reader::workflow::scan::scan;
use civic_reader::workflow::slot_of;
use civic_registry::ledger::{SignedBlock, SyncSource};
use civic_registry::verdict::Verdict;
use civic_registry::*;
use p256::ecdsa::SigningKey;

const YEAR: u64 = 365 * 86_400;
const CARD: &str = "CIV-2026-0000-0042";

fn now() -> u64 {
    civic_reader::now()
}

struct Bureau {
    id: &'static str,
    key: SigningKey,
}

/// A data directory with the authority key and a registry holding two bureaus.
struct World {
    dir: tempfile::TempDir,
    data: DataDir,
    authority: SigningKey,
    identity: Bureau,
    health: Bureau,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::at(dir.path().join("clinic")).unwrap();
        let authority = keys::generate();
        keys::save_signing_key(&data.authority_key(), &authority).unwrap();
        let mut reg = SqliteLedger::create(&data.registry_db(), &authority).unwrap();
        let identity = Bureau {
            id: "identity-bureau",
            key: keys::generate(),
        };
        let health = Bureau {
            id: "health-bureau",
            key: keys::generate(),
        };
        for (b, kinds) in [
            (&identity, vec![Kind::Identity]),
            (&health, vec![Kind::Health, Kind::Emergency]),
        ] {
            let cert = IssuerCertificate::sign(
                &IssuerCertBody {
                    issuer_id: b.id.into(),
                    name: format!("City {}", b.id),
                    kinds,
                    public_key: keys::public_key_bytes(b.key.verifying_key()).to_vec(),
                    not_before: now() - 86_400,
                    not_after: now() + YEAR,
                },
                &authority,
            )
            .unwrap();
            reg.register_issuer(&cert).unwrap();
        }
        Self {
            dir,
            data,
            authority,
            identity,
            health,
        }
    }

    fn writer(&self) -> SqliteLedger {
        SqliteLedger::open_writer(&self.data.registry_db(), self.authority.clone()).unwrap()
    }

    fn registry(&self) -> SqliteLedger {
        SqliteLedger::open(&self.data.registry_db()).unwrap()
    }

    fn cache(&self) -> Cache {
        Cache::open_or_create(&self.data.cache_db(), self.authority.verifying_key()).unwrap()
    }

    fn sync(&self) -> cache::SyncReport {
        self.cache()
            .sync(&self.registry(), self.authority.verifying_key())
            .unwrap()
    }

    /// Sign `creds` by `bureau` and anchor them as one batch; the card records.
    fn issue(&self, bureau: &Bureau, creds: &[Credential]) -> Vec<CardRecord> {
        let signed: Vec<SignedCredential> = creds
            .iter()
            .map(|c| SignedCredential::sign(c, &bureau.key).unwrap())
            .collect();
        let leaves: Vec<[u8; 32]> = signed.iter().map(|s| s.commitment()).collect();
        let first = creds.iter().map(|c| c.status_index).min().unwrap();
        let last = creds.iter().map(|c| c.status_index).max().unwrap();
        let req = AnchorRequest {
            issuer_id: bureau.id.into(),
            root: merkle::root(&leaves),
            size: leaves.len() as u64,
            first_status_index: first,
            status_count: last - first + 1,
        };
        let batch = self
            .writer()
            .anchor_batch(&SignedAnchor::sign(&req, &bureau.key).unwrap())
            .unwrap();
        signed
            .into_iter()
            .enumerate()
            .map(|(i, credential)| CardRecord {
                credential,
                batch_id: batch.batch_id,
                proof: merkle::prove(&leaves, i).unwrap(),
            })
            .collect()
    }

    fn set_status(&self, bureau: &Bureau, index: u32, status: CredentialStatus) -> Watermark {
        let change = StatusChange {
            issuer_id: bureau.id.into(),
            status_index: index,
            status,
        };
        self.writer()
            .set_status(&SignedStatusChange::sign(&change, &bureau.key).unwrap())
            .unwrap()
    }
}

fn credential(kind: Kind, issuer: &str, index: u32, claims: Claims) -> Credential {
    Credential {
        version: 1,
        kind,
        card_id: CARD.into(),
        issuer_id: issuer.into(),
        issued_at: now() - 60,
        expires_at: now() + YEAR,
        status_index: index,
        salt: Credential::new_salt(),
        claims,
    }
}

fn emergency() -> Claims {
    Claims::Emergency(EmergencyInfo {
        blood_type: "O+".into(),
        allergies: vec!["latex".into()],
        emergency_contact: "Wang Fang +86 10 5555 0199".into(),
    })
}

fn health_claims() -> Claims {
    Claims::Health(HealthClaims {
        emergency: EmergencyInfo {
            blood_type: "O+".into(),
            allergies: vec!["latex".into()],
            emergency_contact: "Wang Fang +86 10 5555 0199".into(),
        },
        chronic_conditions: vec![],
        vaccinations: vec![],
    })
}

/// Two health-bureau records (status indices 0 and 1).
fn two_health_records(w: &World) -> Vec<CardRecord> {
    w.issue(
        &w.health,
        &[
            credential(Kind::Health, w.health.id, 0, health_claims()),
            credential(Kind::Emergency, w.health.id, 1, emergency()),
        ],
    )
}

/// A source that records what it was asked and can be cut short or altered.
struct Source<'a> {
    inner: &'a SqliteLedger,
    asked: RefCell<Vec<u64>>,
    served: RefCell<u64>,
    /// Serve nothing above this height.
    max_height: Option<u64>,
    /// Alter the block at this height (its time, so hash and signature no longer match).
    corrupt: Option<u64>,
}

impl<'a> Source<'a> {
    fn new(inner: &'a SqliteLedger) -> Self {
        Self {
            inner,
            asked: RefCell::new(Vec::new()),
            served: RefCell::new(0),
            max_height: None,
            corrupt: None,
        }
    }
}

impl SyncSource for Source<'_> {
    fn blocks_since(&self, from: u64, limit: usize) -> civic_registry::Result<Vec<SignedBlock>> {
        self.asked.borrow_mut().push(from);
        let mut blocks = self.inner.blocks_since(from, limit)?;
        if let Some(max) = self.max_height {
            blocks.retain(|b| b.height <= max);
        }
        for b in &mut blocks {
            if Some(b.height) == self.corrupt {
                b.time += 1;
            }
        }
        *self.served.borrow_mut() += blocks.len() as u64;
        Ok(blocks)
    }
}

#[test]
fn incremental_sync_fetches_only_new_blocks() {
    let w = World::new();
    two_health_records(&w);
    let reg = w.registry();
    let mut c = w.cache();
    assert!(c.freshness().is_none());

    let s = Source::new(&reg);
    let r = c.sync(&s, w.authority.verifying_key()).unwrap();
    assert!(r.from.is_none());
    assert_eq!(r.applied, 4, "genesis, two issuers, one batch");
    assert_eq!(r.to, reg.watermark().unwrap());
    assert_eq!(s.asked.borrow()[0], 0);

    w.set_status(&w.health, 0, CredentialStatus::Suspended);
    w.set_status(&w.health, 1, CredentialStatus::Revoked);
    let s = Source::new(&reg);
    let r = c.sync(&s, w.authority.verifying_key()).unwrap();
    assert_eq!(r.from.as_ref().map(|f| f.height), Some(3));
    assert_eq!(r.applied, 2);
    // Asked from the cached head (re-served once, to detect a fork), nothing before it.
    assert_eq!(s.asked.borrow()[0], 3);
    assert_eq!(*s.served.borrow(), 3);
    assert_eq!(r.to.height, 5);

    // Nothing new: only the head is fetched again.
    let s = Source::new(&reg);
    let r = c.sync(&s, w.authority.verifying_key()).unwrap();
    assert_eq!(r.applied, 0);
    assert_eq!(*s.served.borrow(), 1);

    // The mirror agrees with the registry.
    assert_eq!(c.watermark().unwrap(), reg.watermark().unwrap());
    assert_eq!(c.issuers().unwrap(), reg.issuers().unwrap());
    assert_eq!(c.batch(1).unwrap(), reg.batch(1).unwrap());
    assert_eq!(
        c.status(w.health.id, 0).unwrap(),
        CredentialStatus::Suspended
    );
    assert_eq!(c.status(w.health.id, 1).unwrap(), CredentialStatus::Revoked);
    assert_eq!(
        c.next_status_index(w.health.id).unwrap(),
        reg.next_status_index(w.health.id).unwrap()
    );
    let (cr, rr) = (c.verify_chain().unwrap(), reg.verify_chain().unwrap());
    assert_eq!(
        (
            cr.blocks,
            cr.issuers,
            cr.batches,
            cr.status_changes,
            cr.head
        ),
        (
            rr.blocks,
            rr.issuers,
            rr.batches,
            rr.status_changes,
            rr.head
        )
    );
    // Reopened, it still verifies.
    drop(c);
    Cache::open(&w.data.cache_db(), Some(w.authority.verifying_key())).unwrap();
}

#[test]
fn verdicts_from_the_cache_equal_verdicts_from_the_registry() {
    let w = World::new();
    let records = two_health_records(&w);
    // Retired key case: a third bureau key retired from the past.
    w.sync();
    let t = now();
    let same = |c: &Cache, reg: &SqliteLedger, r: &CardRecord| {
        let a = c.verdict(r, None, t).unwrap();
        let b = reg.verdict(r, None, t).unwrap();
        assert_eq!(a, b);
        a.verdict
    };
    let c = w.cache();
    let reg = w.registry();
    assert_eq!(same(&c, &reg, &records[0]), Verdict::Valid);
    assert_eq!(same(&c, &reg, &records[1]), Verdict::Valid);
    // A record for a batch that does not exist.
    let mut other = records[0].clone();
    other.batch_id = 9;
    assert_eq!(same(&c, &reg, &other), Verdict::NotAnchored);

    // Revoked in the registry: the cache is stale until it syncs.
    w.set_status(&w.health, 0, CredentialStatus::Revoked);
    let reg = w.registry();
    assert_eq!(
        reg.verdict(&records[0], None, t).unwrap().verdict,
        Verdict::Revoked
    );
    let before = c.verdict(&records[0], None, t).unwrap();
    assert_eq!(before.verdict, Verdict::Valid);
    assert_eq!(
        before.watermark.height, 3,
        "and says which block it rests on"
    );
    drop(c);
    w.sync();
    let c = w.cache();
    assert_eq!(same(&c, &reg, &records[0]), Verdict::Revoked);
    assert_eq!(same(&c, &reg, &records[1]), Verdict::Valid);

    // A retired key: the cache mirrors the retirement.
    w.writer()
        .retire_key(
            w.health.id,
            &keys::public_key_bytes(w.health.key.verifying_key()),
            0,
            "test compromise",
        )
        .unwrap();
    drop(c);
    w.sync();
    let (c, reg) = (w.cache(), w.registry());
    assert_eq!(same(&c, &reg, &records[1]), Verdict::IssuerKeyRetired);
    assert_eq!(
        c.retired_keys(w.health.id).unwrap(),
        reg.retired_keys(w.health.id).unwrap()
    );
}

#[test]
fn the_cache_is_read_only() {
    let w = World::new();
    w.sync();
    let mut c = w.cache();
    let change = StatusChange {
        issuer_id: w.health.id.into(),
        status_index: 0,
        status: CredentialStatus::Revoked,
    };
    let err = c
        .set_status(&SignedStatusChange::sign(&change, &w.health.key).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("read-only mirror"), "{err}");
}

#[test]
fn forked_source_refused_nothing_written() {
    let w = World::new();
    w.sync();
    let before = w.cache().freshness().unwrap().watermark;
    assert_eq!(before.height, 2);

    // Another chain under the same authority: same genesis key, other events.
    let forked_dir = tempfile::tempdir().unwrap();
    let mut forked =
        SqliteLedger::create(&forked_dir.path().join("r.sqlite"), &w.authority).unwrap();
    for id in ["rogue-a", "rogue-b", "rogue-c"] {
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
            &w.authority,
        )
        .unwrap();
        forked.register_issuer(&cert).unwrap();
    }
    let mut c = w.cache();
    match c.sync(&forked, w.authority.verifying_key()) {
        Err(e @ CacheError::Fork { height: 2, .. }) => {
            assert!(e.to_string().contains("block 2"), "{e}")
        }
        other => panic!("fork not refused: {other:?}"),
    }
    drop(c);
    let c = Cache::open(&w.data.cache_db(), Some(w.authority.verifying_key())).unwrap();
    assert_eq!(c.freshness().unwrap().watermark, before);
    assert!(c.issuer_certs("rogue-c").unwrap().is_empty());

    // A chain under another authority is refused outright.
    let other = keys::generate();
    let err = Cache::open(&w.data.cache_db(), Some(other.verifying_key())).unwrap_err();
    assert!(matches!(err, CacheError::OtherAuthority { .. }), "{err}");
}

#[test]
fn truncated_or_corrupt_source_refused_nothing_written() {
    let w = World::new();
    two_health_records(&w);
    w.sync();
    let reg = w.registry();
    let head = w.cache().freshness().unwrap().watermark;
    assert_eq!(head.height, 3);

    // Shorter than the cached head: refused, naming the height.
    let mut s = Source::new(&reg);
    s.max_height = Some(1);
    let mut c = w.cache();
    match c.sync(&s, w.authority.verifying_key()) {
        Err(e @ CacheError::Truncated { height: 3 }) => {
            assert!(e.to_string().contains("block 3"), "{e}")
        }
        other => panic!("truncated source not refused: {other:?}"),
    }

    // New blocks, one of them altered in transit: nothing of the batch is applied.
    w.set_status(&w.health, 0, CredentialStatus::Revoked);
    w.set_status(&w.health, 1, CredentialStatus::Revoked);
    let mut s = Source::new(&reg);
    s.corrupt = Some(5);
    match c.sync(&s, w.authority.verifying_key()) {
        Err(CacheError::Chain(Error::ChainBroken { height: 5, reason })) => {
            assert!(reason.contains("hash"), "{reason}")
        }
        other => panic!("corrupt block not refused: {other:?}"),
    }
    drop(c);
    let c = Cache::open(&w.data.cache_db(), None).unwrap();
    assert_eq!(c.freshness().unwrap().watermark, head);
    assert_eq!(c.status(w.health.id, 0).unwrap(), CredentialStatus::Valid);

    // The honest source afterwards brings it up to date.
    drop(c);
    assert_eq!(w.sync().applied, 2);
}

#[test]
fn a_tampered_cache_row_is_detected_and_named() {
    for (table, sql) in [
        (
            "status_lists",
            "UPDATE status_lists SET bits = zeroblob(length(bits))",
        ),
        ("batches", "UPDATE batches SET root = zeroblob(32)"),
        (
            "issuers",
            "DELETE FROM issuers WHERE seq = 0 AND issuer_id = 'identity-bureau'",
        ),
        ("meta", "UPDATE meta SET synced_at = synced_at + 86400"),
        ("head block", "UPDATE meta SET time = time + 1"),
    ] {
        let w = World::new();
        two_health_records(&w);
        w.set_status(&w.health, 0, CredentialStatus::Revoked);
        w.sync();
        {
            let conn = rusqlite::Connection::open(w.data.cache_db()).unwrap();
            assert_eq!(conn.execute(sql, []).unwrap(), 1, "{table}");
        }
        match Cache::open(&w.data.cache_db(), None) {
            Err(e @ CacheError::Tampered { height: 4, .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(table), "{table}: {msg}");
                assert!(msg.contains("block 4"), "{table}: {msg}");
            }
            other => panic!("{table}: tampering not detected: {other:?}"),
        }
        // A scan refuses it, with or without the registry.
        for cache_only in [false, true] {
            let err = cache::open_for_scan(&w.data, cache_only).unwrap_err();
            assert!(
                matches!(
                    err.downcast_ref::<CacheError>(),
                    Some(CacheError::Tampered { .. })
                ),
                "{table}: {err:#}"
            );
        }
        // And a sync does not build on it.
        let err =
            Cache::open_or_create(&w.data.cache_db(), w.authority.verifying_key()).unwrap_err();
        assert!(matches!(err, CacheError::Tampered { .. }), "{err}");
    }
}

struct Term {
    cert: Vec<u8>,
    body: TerminalCert,
    key: SigningKey,
}

impl Term {
    fn clinic(authority: &SigningKey) -> Self {
        let key = keys::generate();
        let role = Role::Clinic;
        let body = TerminalCert {
            terminal_id: "clinic-09".into(),
            role: role.byte(),
            access: role.access(),
            not_before: now() - 86_400,
            not_after: now() + 30 * 86_400,
            public_key: keys::public_key_bytes(key.verifying_key()),
        };
        Self {
            cert: tcert::sign(&body, authority),
            body,
            key,
        }
    }

    fn key(&self) -> TerminalKey<'_> {
        TerminalKey {
            certificate: &self.cert,
            terminal_id: &self.body.terminal_id,
            role: self.body.role,
            access: self.body.access,
            key: &self.key,
        }
    }
}

/// A card personalised in-process with an identity and an emergency credential.
/// Behind the reader's secure-messaging transport, which keeps the CAN it writes.
fn card(w: &World) -> civic_reader::sm::SmTransport<InProcess<card_applet::store::MemoryStore>> {
    let mut card = civic_reader::sm::SmTransport::new(InProcess::blank(), Box::new(|_| None));
    let mut s = Session::open(&mut card, ApduMode::Extended)
        .unwrap()
        .personalise()
        .unwrap();
    s.set_card_id(CARD).unwrap();
    s.set_authority_key(&keys::public_key_bytes(w.authority.verifying_key()))
        .unwrap();
    let card_key = s.generate_key().unwrap();
    let id = w.issue(
        &w.identity,
        &[credential(
            Kind::Identity,
            w.identity.id,
            0,
            Claims::Identity(IdentityClaims {
                name: "Chen Jie".into(),
                birth_date: "1985-03-04".into(),
                card_public_key: card_key.to_vec(),
            }),
        )],
    );
    let em = w.issue(
        &w.health,
        &[credential(Kind::Emergency, w.health.id, 0, emergency())],
    );
    for (kind, rec) in [(Kind::Identity, &id[0]), (Kind::Emergency, &em[0])] {
        s.write_record(slot_of(kind), kind.as_byte(), &rec.encode())
            .unwrap();
    }
    s.set_pin(&Pin::parse("482913").unwrap()).unwrap();
    s.set_can("246810").unwrap();
    s.activate().unwrap();
    card
}

#[test]
fn scan_from_the_cache_when_the_registry_file_is_gone() {
    let w = World::new();
    let mut card = card(&w);
    let clinic = Term::clinic(&w.authority);

    // No cache yet: the registry itself.
    let (reg, note) = cache::open_for_scan(&w.data, false).unwrap();
    assert!(matches!(reg, ScanRegistry::Live(_)) && note.is_none());
    let live = scan(
        &mut card,
        ApduMode::Extended,
        &reg,
        &clinic.key(),
        None,
        now(),
    )
    .unwrap();
    assert!(live.valid, "{:?}", live.problem);
    drop(reg);

    w.sync();
    // With a cache and the registry: the cache, synced first.
    let (reg, note) = cache::open_for_scan(&w.data, false).unwrap();
    assert!(
        matches!(reg, ScanRegistry::Cache(_)) && note.is_none(),
        "{note:?}"
    );
    drop(reg);

    std::fs::remove_file(w.data.registry_db()).unwrap();
    let (reg, note) = cache::open_for_scan(&w.data, false).unwrap();
    assert!(matches!(reg, ScanRegistry::Cache(_)));
    assert!(note.unwrap().contains("registry"));
    let f = reg
        .freshness(
            now(),
            Duration::from_secs(86_400),
            StalePolicy::Refuse,
            None,
        )
        .unwrap();
    assert_eq!(f.source, "cache");
    assert_eq!(f.watermark, live.watermark);
    assert!(!f.stale);
    let offline = scan(
        &mut card,
        ApduMode::Extended,
        &reg,
        &clinic.key(),
        None,
        now(),
    )
    .unwrap();
    assert!(offline.valid, "{:?}", offline.problem);
    assert_eq!(offline.watermark, live.watermark);
    let verdicts = |r: &civic_reader::workflow::scan::ScanReport| {
        r.credentials
            .iter()
            .map(|c| (c.kind, c.verdict, c.reason.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(verdicts(&offline), verdicts(&live));
    drop(reg);

    // --cache-only never needs the registry, and without a cache it says what to do.
    assert!(matches!(
        cache::open_for_scan(&w.data, true).unwrap().0,
        ScanRegistry::Cache(_)
    ));
    std::fs::remove_file(w.data.cache_db()).unwrap();
    let err = cache::open_for_scan(&w.data, true).unwrap_err();
    assert!(
        format!("{err:#}").contains("civic registry sync"),
        "{err:#}"
    );
    drop(w.dir);
}

#[test]
fn staleness_policy() {
    let w = World::new();
    w.sync();
    let (reg, _) = cache::open_for_scan(&w.data, true).unwrap();
    let day = Duration::from_secs(86_400);
    let later = now() + 2 * 86_400;
    // Warn: scans, flagged stale.
    let f = reg.freshness(later, day, StalePolicy::Warn, None).unwrap();
    assert!(f.stale);
    assert!(f.age_seconds >= 2 * 86_400);
    // Refuse: a clear error naming the block.
    let err = reg
        .freshness(later, day, StalePolicy::Refuse, None)
        .unwrap_err();
    let msg = err.to_string();
    assert!(err.downcast_ref::<cache::TooStale>().is_some(), "{msg}");
    assert!(msg.contains("block 2") && msg.contains("1day"), "{msg}");
    // Fresh enough: fine under either policy.
    assert!(
        !reg.freshness(now(), day, StalePolicy::Refuse, None)
            .unwrap()
            .stale
    );
}

#[test]
fn an_audit_against_the_chain_names_the_changed_row_and_its_block() {
    for (sql, expected) in [
        (
            "UPDATE status_lists SET bits = zeroblob(length(bits))",
            "table status_lists: row issuer_id=\"health-bureau\" (written by block 4)",
        ),
        (
            "UPDATE batches SET size = size + 1",
            "table batches: row batch_id=1 (written by block 3)",
        ),
        (
            "DELETE FROM issuers WHERE issuer_id = 'identity-bureau'",
            "table issuers: missing row issuer_id=\"identity-bureau\", seq=0 (written by block 1)",
        ),
    ] {
        let w = World::new();
        two_health_records(&w);
        w.set_status(&w.health, 0, CredentialStatus::Revoked);
        w.sync();
        // An untouched cache matches the chain.
        let c = Cache::open(&w.data.cache_db(), None).unwrap();
        c.audit(&w.registry()).unwrap();
        drop(c);
        {
            let conn = rusqlite::Connection::open(w.data.cache_db()).unwrap();
            assert_eq!(conn.execute(sql, []).unwrap(), 1, "{sql}");
        }
        let c = Cache::open_unchecked(&w.data.cache_db(), None).unwrap();
        assert!(c.check().is_err());
        match c.audit(&w.registry()) {
            Err(e @ CacheError::Tampered { .. }) => {
                assert!(e.to_string().contains(expected), "{e}")
            }
            other => panic!("{sql}: not found by the audit: {other:?}"),
        }
    }
}

fn civic(home: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_civic"))
        .env("CIVIC_HOME", home)
        .env_remove("CIVIC_READER")
        .env_remove("CIVIC_TERMINAL")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The CLI: sync, verify, the refuse policy and a tampered cache, with their exit codes.
#[test]
fn cli_sync_verify_stale_and_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    assert_eq!(civic(home, &["authority", "init"]).0, 0);
    let add = [
        "issuer",
        "add",
        "--id",
        "health-bureau",
        "--name",
        "Health",
        "--kinds",
        "health",
    ];
    assert_eq!(civic(home, &add).0, 0);

    let (code, out) = civic(home, &["registry", "sync"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Clinic cache created: blocks 0..1"), "{out}");
    let (code, out) = civic(home, &["registry", "sync"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("up to date at block 1"), "{out}");
    let (code, out) = civic(home, &["registry", "verify", "--cache"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Clinic cache OK: block 1"), "{out}");

    // Refuse: exit 3 before any reader is touched.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, out) = civic(
        home,
        &[
            "scan",
            "--cache-only",
            "--max-staleness",
            "0s",
            "--stale",
            "refuse",
        ],
    );
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("refusing to scan") && out.contains("block 1"),
        "{out}"
    );

    // A changed row: verify says which (exit 1); scan will not use the cache (exit 3).
    {
        let conn = rusqlite::Connection::open(home.join("cache.sqlite")).unwrap();
        conn.execute("UPDATE issuers SET time = time + 1", [])
            .unwrap();
    }
    let (code, out) = civic(home, &["registry", "verify", "--cache"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("row issuer_id=\"health-bureau\", seq=0 (written by block 1)"),
        "{out}"
    );
    let (code, out) = civic(home, &["scan", "--cache-only"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("does not verify: table issuers"), "{out}");
    let (code, out) = civic(home, &["registry", "sync", "--rebuild"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(civic(home, &["registry", "verify", "--cache"]).0, 0);
}

#[test]
fn the_cache_mirrors_a_status_batch() {
    let w = World::new();
    let records = two_health_records(&w);
    w.sync();
    let batch = StatusBatch {
        issuer_id: w.health.id.into(),
        changes: vec![
            (1, CredentialStatus::Revoked),
            (0, CredentialStatus::Suspended),
        ],
    };
    let wm = w
        .writer()
        .set_status_batch(&SignedStatusBatch::sign(&batch, &w.health.key).unwrap())
        .unwrap();
    // Another issuer's key cannot sign a batch for the health bureau.
    let forged = StatusBatch {
        issuer_id: w.health.id.into(),
        changes: vec![(0, CredentialStatus::Valid)],
    };
    assert!(w
        .writer()
        .set_status_batch(&SignedStatusBatch::sign(&forged, &w.identity.key).unwrap())
        .is_err());
    let r = w.sync();
    assert_eq!(r.applied, 1, "one block for the whole batch");
    assert_eq!(r.to, wm);
    let c = w.cache();
    let reg = w.registry();
    for i in 0..2 {
        assert_eq!(
            c.status(w.health.id, i).unwrap(),
            reg.status(w.health.id, i).unwrap()
        );
    }
    assert_eq!(c.status(w.health.id, 1).unwrap(), CredentialStatus::Revoked);
    assert_eq!(
        c.status(w.health.id, 0).unwrap(),
        CredentialStatus::Suspended
    );
    let t = now();
    assert_eq!(
        c.verdict(&records[0], None, t).unwrap().verdict,
        Verdict::Suspended
    );
    assert_eq!(
        c.verdict(&records[1], None, t).unwrap().verdict,
        Verdict::Revoked
    );
    // Reopened, the mirror still verifies against its digests.
    drop(c);
    Cache::open(&w.data.cache_db(), Some(w.authority.verifying_key()))
        .unwrap()
        .verify_chain()
        .unwrap();
}

#[test]
fn opening_the_cache_while_another_process_syncs_it_used_to_read_as_tampering() {
    // Cache::open read the head and then the tables it seals in separate reads; a sync
    // committed in between made the tables newer than the head ("table meta changed since the
    // sync"), seen with four concurrent scans of one clinic. Here one thread keeps changing
    // the registry and syncing while another keeps opening the cache.
    let w = World::new();
    two_health_records(&w);
    w.sync();
    let done = std::sync::atomic::AtomicBool::new(false);
    let opened = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..60 {
                let status = if i % 2 == 0 {
                    CredentialStatus::Suspended
                } else {
                    CredentialStatus::Valid
                };
                w.set_status(&w.health, 0, status);
                w.sync();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut opened = 0u32;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            if let Err(e) = Cache::open(&w.data.cache_db(), Some(w.authority.verifying_key())) {
                panic!("open {opened} failed while another sync ran: {e}");
            }
            opened += 1;
        }
        opened
    });
    assert!(opened > 0);
}
