//! The `chain_verify` target: the registry's hash-chained ledger fed tampered blocks, through
//! both verifiers that trust it: the ledger's own `verify_chain` (a tampered `blocks` table in
//! the SQLite file) and the clinic cache's `sync` (a hostile sync source), which checks each block
//! with `civic_registry::ledger::check_block`.
//!
//! The chain (built once per process with real keys): 0 genesis, 1 register issuer "health", 2
//! anchor a batch, 3-4 two status changes, 5 a status batch, 6 a second certificate of the issuer
//! (key rotation), 7 the authority retires the first key. The fuzzer never holds the authority
//! key, so no edit of it can make a block that verifies.
//!
//! Input: `prefix(1)` (the cache is first synced honestly to blocks `0..prefix % 9`, 0 = an empty
//! cache), then edits of the served chain, each `op(1)` and its arguments (zero-padded at the end
//! of the input); `k`, `j` are positions in the served list (mod its length):
//!
//! | op % 10 | edit |
//! |---|---|
//! | 0 | flip bit `bit(1)` of field `field(1) % 6` (height, prev_hash, time, event, hash, signature) of block `k(1)` at byte `pos(2)` |
//! | 1 | drop block `k(1)` |
//! | 2 | insert a copy of block `k(1)` at `j(1)` |
//! | 3 | swap blocks `k(1)` and `j(1)` |
//! | 4 | block `k(1)` takes the event of block `j(1)` (its hash and signature stay) |
//! | 5 | block `k(1)`'s event becomes `len(1)` bytes of the input |
//! | 6 | block `k(1)` is signed again, over its stored hash, by another key (a forged authority) |
//! | 7 | block `k(1)`'s time becomes `u64(8)` |
//! | 8 | block `k(1)`'s height becomes `u64(8)` |
//! | 9 | the served chain ends before `k(1)` |
//!
//! Invariants, for the clinic cache: no panic; a sync that succeeds applied only blocks identical
//! to the real chain's at their height, its head is a real block, the cache still verifies
//! (`check`) and matches a replay of the real chain (`audit`); a sync that fails wrote nothing
//! (same watermark) and the cache still verifies. For the ledger: no panic; `open` +
//! `verify_chain` succeed only if the stored blocks are exactly the real chain.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use civic_reader::cache::Cache;
use civic_registry::credential::Kind;
use civic_registry::ledger::{SignedBlock, SyncSource};
use civic_registry::status::CredentialStatus;
use civic_registry::{
    keys, merkle, AnchorRequest, IssuerCertBody, IssuerCertificate, Registry, SignedAnchor,
    SignedStatusBatch, SignedStatusChange, SqliteLedger, StatusBatch, StatusChange,
};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rusqlite::{params, Connection};

use super::take;

const YEAR: u64 = 365 * 86_400;

pub struct Fixture {
    /// The ledger file of the real chain (closed: no WAL beside it).
    ledger: Vec<u8>,
    pub blocks: Vec<SignedBlock>,
    pub authority: VerifyingKey,
    /// Cache files honestly synced to blocks `0..p`, by `p` (index 0: never synced), copied
    /// at the start of each run: syncing from scratch every run would dominate the run time.
    caches: Vec<Vec<u8>>,
    forger: SigningKey,
}

fn key(seed: u8) -> SigningKey {
    let mut scalar = [0u8; 32];
    scalar[31] = seed;
    scalar[0] = 0x11;
    SigningKey::from_slice(&scalar).expect("valid scalar")
}

fn cert(issuer: &SigningKey, authority: &SigningKey, now: u64) -> IssuerCertificate {
    IssuerCertificate::sign(
        &IssuerCertBody {
            issuer_id: "health".into(),
            name: "Health Bureau".into(),
            kinds: vec![Kind::Health],
            public_key: keys::public_key_bytes(issuer.verifying_key()).to_vec(),
            not_before: now - YEAR,
            not_after: now + YEAR,
        },
        authority,
    )
    .expect("sign issuer certificate")
}

fn build(dir: &Path) -> Vec<u8> {
    let path = dir.join("chain.db");
    let authority = key(1);
    let issuer = key(2);
    let issuer2 = key(3);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let mut reg = SqliteLedger::create(&path, &authority).expect("create ledger");
    reg.register_issuer(&cert(&issuer, &authority, now))
        .expect("register");
    let leaves = [[1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]];
    let anchor = AnchorRequest {
        issuer_id: "health".into(),
        root: merkle::root(&leaves),
        size: 4,
        first_status_index: 0,
        status_count: 8,
    };
    reg.anchor_batch(&SignedAnchor::sign(&anchor, &issuer).expect("sign"))
        .expect("anchor");
    for (i, s) in [
        (1, CredentialStatus::Revoked),
        (2, CredentialStatus::Suspended),
    ] {
        let change = StatusChange {
            issuer_id: "health".into(),
            status_index: i,
            status: s,
        };
        reg.set_status(&SignedStatusChange::sign(&change, &issuer).expect("sign"))
            .expect("status");
    }
    let batch = StatusBatch {
        issuer_id: "health".into(),
        changes: vec![(2, CredentialStatus::Valid), (5, CredentialStatus::Revoked)],
    };
    reg.set_status_batch(&SignedStatusBatch::sign(&batch, &issuer).expect("sign"))
        .expect("status batch");
    reg.register_issuer(&cert(&issuer2, &authority, now))
        .expect("rotate");
    reg.retire_key(
        "health",
        &keys::public_key_bytes(issuer.verifying_key()),
        now - 60,
        "fuzz fixture",
    )
    .expect("retire");
    assert_eq!(reg.verify_chain().expect("fixture verifies").blocks, 8);
    drop(reg);
    std::fs::read(&path).expect("read ledger file")
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Everything the runs need is kept in memory; the directory goes away here (a static
        // is never dropped).
        let dir = scratch();
        let ledger = build(dir.path());
        let path = dir.path().join("chain.db");
        std::fs::write(&path, &ledger).expect("write ledger copy");
        let l = SqliteLedger::open(&path).expect("open fixture");
        let blocks = l.blocks_since(0, usize::MAX).expect("fixture blocks");
        let authority = l.authority_key().expect("authority key");
        drop(l);
        remove_db(&path);
        let caches = (0..=blocks.len())
            .map(|p| {
                let path = dir.path().join("template.db");
                let mut cache = Cache::open_or_create(&path, &authority).expect("create cache");
                if p > 0 {
                    let honest = Served {
                        blocks: &blocks[..p],
                        log: RefCell::default(),
                    };
                    cache.sync(&honest, &authority).expect("honest sync");
                }
                drop(cache);
                let bytes = std::fs::read(&path).expect("read cache template");
                remove_db(&path);
                bytes
            })
            .collect();
        Fixture {
            ledger,
            blocks,
            authority,
            caches,
            forger: key(9),
        }
    })
}

/// A fresh temporary directory, on tmpfs when there is one (every run writes two small SQLite
/// files).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("civic-fuzz-chain")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temporary directory")
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A sync source that serves a fixed list by position (not by height: what a hostile source
/// serves need not match what was asked) and records what it served.
struct Served<'a> {
    blocks: &'a [SignedBlock],
    log: RefCell<Vec<SignedBlock>>,
}

impl SyncSource for Served<'_> {
    fn blocks_since(&self, from: u64, limit: usize) -> civic_registry::Result<Vec<SignedBlock>> {
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let page: Vec<SignedBlock> = self.blocks.iter().skip(from).take(limit).cloned().collect();
        self.log.borrow_mut().extend(page.iter().cloned());
        Ok(page)
    }
}

fn flip(bytes: &mut [u8], pos: u16, bit: u8) {
    if !bytes.is_empty() {
        bytes[usize::from(pos) % bytes.len()] ^= 1 << (bit % 8);
    }
}

/// The served chain after the edits of the input.
pub fn tamper(f: &Fixture, mut rest: &[u8]) -> Vec<SignedBlock> {
    let mut served = f.blocks.clone();
    while !rest.is_empty() {
        let [op, k] = take::<2>(&mut rest);
        let len = served.len();
        if len == 0 {
            break;
        }
        let k = usize::from(k) % len;
        match op % 10 {
            0 => {
                let [field, p0, p1, bit] = take::<4>(&mut rest);
                let pos = u16::from_be_bytes([p0, p1]);
                let b = &mut served[k];
                match field % 6 {
                    0 => b.height ^= 1 << (bit % 64),
                    1 => flip(&mut b.prev_hash, pos, bit),
                    2 => b.time ^= 1 << (bit % 64),
                    3 => flip(&mut b.event, pos, bit),
                    4 => flip(&mut b.hash, pos, bit),
                    _ => flip(&mut b.signature, pos, bit),
                }
            }
            1 => {
                served.remove(k);
            }
            2 => {
                let [j] = take::<1>(&mut rest);
                let copy = served[k].clone();
                served.insert(usize::from(j) % (len + 1), copy);
            }
            3 => {
                let [j] = take::<1>(&mut rest);
                served.swap(k, usize::from(j) % len);
            }
            4 => {
                let [j] = take::<1>(&mut rest);
                served[k].event = served[usize::from(j) % len].event.clone();
            }
            5 => {
                let [n] = take::<1>(&mut rest);
                let n = usize::from(n).min(rest.len());
                served[k].event = rest[..n].to_vec();
                rest = &rest[n..];
            }
            6 => {
                let sig: Signature = f.forger.sign(&served[k].hash);
                served[k].signature = sig.to_bytes().to_vec();
            }
            7 => served[k].time = u64::from_be_bytes(take(&mut rest)),
            8 => served[k].height = u64::from_be_bytes(take(&mut rest)),
            _ => served.truncate(k),
        }
    }
    served
}

fn check_cache(f: &Fixture, prefix: usize, served: &[SignedBlock], path: &Path) {
    std::fs::write(path, &f.caches[prefix]).expect("write cache copy");
    let mut cache = Cache::open(path, Some(&f.authority)).expect("open cache copy");
    let before = cache.freshness().map(|fr| fr.watermark);
    let source = Served {
        blocks: served,
        log: RefCell::default(),
    };
    let result = cache.sync(&source, &f.authority);
    cache.check().expect("the cache verifies after any sync");
    let after = cache.freshness().map(|fr| fr.watermark);
    match result {
        Ok(report) => {
            let from = before.as_ref().map_or(0, |w| w.height + 1);
            for b in source.log.borrow().iter().filter(|b| b.height >= from) {
                let real = usize::try_from(b.height)
                    .ok()
                    .and_then(|h| f.blocks.get(h))
                    .unwrap_or_else(|| panic!("applied block {} past the real chain", b.height));
                assert_eq!(b, real, "a tampered block was applied at {}", b.height);
            }
            let head = after.expect("a synced cache has a head");
            assert_eq!(report.to, head);
            let real = &f.blocks[usize::try_from(head.height).expect("height")];
            assert_eq!(head, real.watermark(), "the cache head is not a real block");
            let honest = Served {
                blocks: &f.blocks,
                log: RefCell::default(),
            };
            cache
                .audit(&honest)
                .expect("the cache matches a replay of the real chain");
        }
        Err(_) => assert_eq!(before, after, "a refused sync moved the watermark"),
    }
    drop(cache);
    remove_db(path);
}

fn check_ledger(f: &Fixture, served: &[SignedBlock], path: &Path) {
    std::fs::write(path, &f.ledger).expect("write ledger copy");
    {
        let c = Connection::open(path).expect("open ledger copy");
        c.execute_batch(
            "PRAGMA foreign_keys = OFF; DROP TRIGGER blocks_no_update; \
             DROP TRIGGER blocks_no_delete; DELETE FROM blocks;",
        )
        .expect("clear blocks");
        for b in served {
            // Heights past i64::MAX wrap negative, as a raw edit of the file could make them;
            // a second row at one height is dropped (the column is the primary key).
            c.execute(
                "INSERT OR IGNORE INTO blocks (height, prev_hash, time, event, hash, signature) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    b.height as i64,
                    b.prev_hash.as_slice(),
                    b.time as i64,
                    b.event,
                    b.hash.as_slice(),
                    b.signature
                ],
            )
            .expect("insert block");
        }
    }
    if let Ok(ledger) = SqliteLedger::open(path) {
        if ledger.verify_chain().is_ok() {
            let stored = ledger
                .blocks_since(0, usize::MAX)
                .expect("a verified ledger serves its blocks");
            assert_eq!(
                stored, f.blocks,
                "verify_chain accepted a ledger whose blocks are not the real chain"
            );
        }
    }
    remove_db(path);
}

pub fn check(data: &[u8]) {
    let f = fixture();
    let mut rest = data;
    let [prefix] = take::<1>(&mut rest);
    let prefix = usize::from(prefix) % (f.blocks.len() + 1);
    let served = tamper(f, rest);
    let dir = scratch();
    check_cache(f, prefix, &served, &dir.path().join("cache.db"));
    check_ledger(f, &served, &dir.path().join("ledger.db"));
}
