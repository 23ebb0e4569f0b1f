//! The registry at city scale: the clinic cache against a ledger of millions of credentials
//! across three issuers (issue 4, "Performance").
//!
//! A benchmark, not a test: it prints numbers with their goals and never asserts on time.
//!
//! ```sh
//! cargo bench -p civic-reader --bench registry_scale                      # 10 million
//! CIVIC_SCALE=300000 cargo bench -p civic-reader --bench registry_scale   # a quick run
//! ```
//!
//! Set-up (not measured, but its time is printed): a registry ledger in a temporary directory
//! (on `/dev/shm` when it exists: the registry is the server side here, and its per-block fsync
//! is not what this measures) with three issuers. Signing `CIVIC_SCALE` credentials would take
//! hours, so all but a sample are random 32-byte commitments used as Merkle leaves, anchored in
//! batches of 100,000 per anchor through the registry API (real anchor requests signed by their
//! issuer); a sample of 2,000 real signed credentials (identity, health, education) is anchored
//! in one batch per issuer, with their inclusion proofs kept for the verdict measurement. Then
//! 1,000 status changes at random indices (and the last index of each issuer, so that every
//! status list has its full length) before the first sync.
//!
//! Measured, each phase in a child process of this binary (it re-invokes itself with
//! `--phase NAME`) that reports its peak resident memory (VmHWM from /proc/self/status) at its
//! end:
//! - the size on disk of the clinic cache after a full sync, against the 2-bit floor
//!   (CIVIC_SCALE * 2 / 8 bytes);
//! - a full sync from an empty cache (and, at the end, another one of the whole chain including
//!   the status changes, into a second empty cache);
//! - an incremental sync of `CIVIC_CHANGES` (10,000) status changes, recorded as status batches
//!   of `CIVIC_BATCH` (1,000) changes each, one issuer-signed request and one block per batch;
//! - for comparison, an incremental sync of `CIVIC_SINGLE` (1,000) status changes recorded one
//!   per block (`set_status`), with the ECDSA verify floor from a bare verify loop in the same
//!   process;
//! - verdicts per second from the cache on one thread, as a ratio to a bare P-256 verify loop
//!   measured in the same process.
//!
//! Writes only to temporary directories. Under `cargo test --benches` (no `--bench` argument)
//! it does nothing.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use civic_reader::cache::Cache;
use civic_registry::status::CredentialStatus;
use civic_registry::*;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};

const DEFAULT_SCALE: u64 = 10_000_000;
const DEFAULT_CHANGES: u64 = 10_000;
/// Status changes per status batch.
const DEFAULT_BATCH_CHANGES: u64 = 1_000;
/// Status changes recorded one per block, for comparison.
const DEFAULT_SINGLE: u64 = 1_000;
/// Commitments per anchor request.
const BATCH: u64 = 100_000;
/// Real signed credentials, spread over the three issuers.
const SAMPLE: u64 = 2_000;
/// Status changes recorded before the first (full) sync.
const INITIAL_CHANGES: u64 = 1_000;
/// Iterations of the bare P-256 verify loop.
const VERIFY_LOOP: usize = 2_000;
const WARM_UP: usize = 50;
const YEAR: u64 = 365 * 86_400;

const ISSUERS: [(&str, Kind); 3] = [
    ("identity-bureau", Kind::Identity),
    ("health-bureau", Kind::Health),
    ("education-bureau", Kind::Education),
];

// ---------------------------------------------------------------------------------------------
// Plumbing.

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

struct Params {
    scale: u64,
    changes: u64,
    batch: u64,
    single: u64,
}

impl Params {
    fn from_env() -> Result<Self> {
        let scale = env_u64("CIVIC_SCALE", DEFAULT_SCALE)?;
        if scale < SAMPLE * 3 {
            bail!("CIVIC_SCALE must be at least {}", SAMPLE * 3);
        }
        Ok(Self {
            scale,
            changes: env_u64("CIVIC_CHANGES", DEFAULT_CHANGES)?,
            batch: env_u64("CIVIC_BATCH", DEFAULT_BATCH_CHANGES)?
                .clamp(1, MAX_BATCH_CHANGES as u64),
            single: env_u64("CIVIC_SINGLE", DEFAULT_SINGLE)?,
        })
    }

    /// Credentials of issuer `k` (status indices 0..n).
    fn per_issuer(&self, k: usize) -> u64 {
        self.scale / 3 + u64::from(k == 0) * (self.scale % 3)
    }

    fn sample_per_issuer(&self, k: usize) -> u64 {
        SAMPLE / 3 + u64::from(k == 0) * (SAMPLE % 3)
    }
}

/// splitmix64: fast, good enough for random leaves and indices.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        Self(OsRng.next_u64())
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn leaf(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

/// Peak resident set size of this process so far, in bytes.
fn vm_hwm() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow!("no VmHWM in /proc/self/status"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("parsing VmHWM")?;
    Ok(kb * 1024)
}

/// A figure a phase hands back to the parent (one `@key value` line on stdout).
fn report(key: &str, value: f64) {
    println!("@{key} {value}");
}

fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

fn file_size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The cache file and its WAL/shm companions, if any.
fn cache_bytes(cache: &Path) -> u64 {
    let mut total = file_size(cache);
    for ext in ["-wal", "-shm"] {
        let mut s = cache.as_os_str().to_owned();
        s.push(ext);
        total += file_size(Path::new(&s));
    }
    total
}

fn status_list_bytes(cache: &Path) -> Result<u64> {
    let conn = rusqlite::Connection::open_with_flags(
        cache,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(length(bits)), 0) FROM status_lists",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Bytes on disk per table and index of the cache (SQLite's dbstat), largest first.
fn table_sizes(cache: &Path) -> Result<Vec<(String, u64)>> {
    let conn = rusqlite::Connection::open_with_flags(
        cache,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut st =
        conn.prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, bytes) = row?;
        out.push((name, u64::try_from(bytes).unwrap_or(0)));
    }
    Ok(out)
}

fn print_table_sizes(sizes: &Result<Vec<(String, u64)>>) {
    match sizes {
        Ok(sizes) => {
            let parts: Vec<String> = sizes
                .iter()
                .map(|(name, bytes)| format!("{name} {:.0} KB", *bytes as f64 / 1e3))
                .collect();
            println!("    by table: {}", parts.join(", "));
        }
        Err(e) => println!("    by table: unavailable ({e})"),
    }
}

struct Paths {
    registry: PathBuf,
    cache: PathBuf,
}

impl Paths {
    fn ledger(&self) -> PathBuf {
        self.registry.join("registry.sqlite")
    }
    fn key(&self, name: &str) -> PathBuf {
        self.registry.join(format!("{name}.key"))
    }
    fn samples(&self) -> PathBuf {
        self.registry.join("samples.bin")
    }
}

/// Mean time of one bare P-256 verify (the same signature over a 200-byte message, as a
/// credential's Sig_structure is about that long), after a warm-up.
fn bare_verify() -> Result<Duration> {
    let key = keys::generate();
    let msg = [0x5au8; 200];
    let sig: Signature = key.sign(&msg);
    let vk = *key.verifying_key();
    for _ in 0..WARM_UP {
        vk.verify(&msg, &sig).map_err(|e| anyhow!("{e}"))?;
    }
    let t = Instant::now();
    for _ in 0..VERIFY_LOOP {
        vk.verify(std::hint::black_box(&msg), std::hint::black_box(&sig))
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(t.elapsed() / VERIFY_LOOP as u32)
}

// ---------------------------------------------------------------------------------------------
// Phases (each in its own process).

fn issuer_keys(paths: &Paths) -> Result<Vec<SigningKey>> {
    ISSUERS
        .iter()
        .map(|(id, _)| Ok(keys::load_signing_key(&paths.key(id))?))
        .collect()
}

fn claims(kind: Kind, n: u64) -> Claims {
    let emergency = EmergencyInfo {
        blood_type: "O+".into(),
        allergies: vec!["latex".into()],
        emergency_contact: format!("Contact {n} +86 10 5555 0199"),
    };
    match kind {
        Kind::Identity => Claims::Identity(IdentityClaims {
            name: format!("Citizen {n}"),
            birth_date: "1980-01-01".into(),
            card_public_key: keys::public_key_bytes(keys::generate().verifying_key()).to_vec(),
        }),
        Kind::Education => Claims::Education(EducationClaims {
            degrees: vec![Degree {
                title: "BSc".into(),
                institution: "City University".into(),
                year: 2001,
            }],
        }),
        Kind::Emergency => Claims::Emergency(emergency),
        Kind::Health => Claims::Health(HealthClaims {
            emergency,
            chronic_conditions: vec![],
            vaccinations: vec![],
        }),
    }
}

/// Sign one status change and record it.
fn change_status(
    reg: &mut SqliteLedger,
    issuer: usize,
    key: &SigningKey,
    index: u32,
    status: CredentialStatus,
) -> Result<()> {
    let change = StatusChange {
        issuer_id: ISSUERS[issuer].0.into(),
        status_index: index,
        status,
    };
    reg.set_status(&SignedStatusChange::sign(&change, key)?)?;
    Ok(())
}

fn random_changes(
    reg: &mut SqliteLedger,
    p: &Params,
    keys: &[SigningKey],
    n: u64,
    rng: &mut Rng,
) -> Result<()> {
    let t = Instant::now();
    for done in 0..n {
        let k = rng.below(3) as usize;
        let index = u32::try_from(rng.below(p.per_issuer(k)))?;
        let status = if rng.below(4) == 0 {
            CredentialStatus::Suspended
        } else {
            CredentialStatus::Revoked
        };
        change_status(reg, k, &keys[k], index, status)?;
        if (done + 1) % 1000 == 0 {
            eprintln!(
                "  {} status changes recorded ({:.1} s)",
                done + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Record `n` random status changes as status batches of at most `p.batch` changes, each batch
/// for one issuer (in turn) with distinct indices, signed once and sealed in one block.
fn random_batches(
    reg: &mut SqliteLedger,
    p: &Params,
    keys: &[SigningKey],
    n: u64,
    rng: &mut Rng,
) -> Result<u64> {
    let t = Instant::now();
    let mut done = 0u64;
    let mut batches = 0u64;
    while done < n {
        let k = (batches % 3) as usize;
        let want = p.batch.min(n - done).min(p.per_issuer(k));
        let mut changes: BTreeMap<u32, CredentialStatus> = BTreeMap::new();
        while (changes.len() as u64) < want {
            let index = u32::try_from(rng.below(p.per_issuer(k)))?;
            let status = if rng.below(4) == 0 {
                CredentialStatus::Suspended
            } else {
                CredentialStatus::Revoked
            };
            changes.insert(index, status);
        }
        let batch = StatusBatch {
            issuer_id: ISSUERS[k].0.into(),
            changes: changes.into_iter().collect(),
        };
        reg.set_status_batch(&SignedStatusBatch::sign(&batch, &keys[k])?)?;
        done += want;
        batches += 1;
    }
    eprintln!(
        "  {done} status changes recorded in {batches} batches ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(batches)
}

fn phase_build(p: &Params, paths: &Paths) -> Result<()> {
    let t0 = Instant::now();
    let now = civic_reader::now();
    let mut rng = Rng::seeded();
    let authority = keys::generate();
    keys::save_signing_key(&paths.key("authority"), &authority)?;
    let mut reg = SqliteLedger::create(&paths.ledger(), &authority)?;
    let mut issuer_keys = Vec::new();
    for (id, kind) in ISSUERS {
        let key = keys::generate();
        keys::save_signing_key(&paths.key(id), &key)?;
        let cert = IssuerCertificate::sign(
            &IssuerCertBody {
                issuer_id: id.into(),
                name: format!("City {id}"),
                kinds: vec![kind],
                public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
                not_before: now - 86_400,
                not_after: now + YEAR,
            },
            &authority,
        )?;
        reg.register_issuer(&cert)?;
        issuer_keys.push(key);
    }

    // The sample: real signed credentials, one batch per issuer at status indices 0..s.
    let mut samples = fs::File::create(paths.samples())?;
    let mut card = 0u64;
    for (k, (id, kind)) in ISSUERS.iter().enumerate() {
        let s = p.sample_per_issuer(k);
        let mut signed = Vec::new();
        for index in 0..s {
            card += 1;
            let cred = Credential {
                version: 1,
                kind: *kind,
                card_id: format!("CIV-2026-{:04}-{:04}", card / 10_000, card % 10_000),
                issuer_id: (*id).into(),
                issued_at: now - 60,
                expires_at: now + YEAR,
                status_index: u32::try_from(index)?,
                salt: Credential::new_salt(),
                claims: claims(*kind, card),
            };
            signed.push(SignedCredential::sign(&cred, &issuer_keys[k])?);
        }
        let leaves: Vec<[u8; 32]> = signed.iter().map(SignedCredential::commitment).collect();
        let req = AnchorRequest {
            issuer_id: (*id).into(),
            root: merkle::root(&leaves),
            size: s,
            first_status_index: 0,
            status_count: u32::try_from(s)?,
        };
        let batch = reg.anchor_batch(&SignedAnchor::sign(&req, &issuer_keys[k])?)?;
        for (n, credential) in signed.into_iter().enumerate() {
            let record = CardRecord {
                credential,
                batch_id: batch.batch_id,
                proof: merkle::prove(&leaves, n).ok_or_else(|| anyhow!("no proof for leaf {n}"))?,
            };
            let bytes = record.encode();
            samples.write_all(&u32::try_from(bytes.len())?.to_le_bytes())?;
            samples.write_all(&bytes)?;
        }
    }
    samples.flush()?;
    eprintln!(
        "  {SAMPLE} signed sample credentials anchored ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );

    // The rest: random commitments, BATCH per anchor request.
    let mut anchors = 3u64;
    let mut leaves = Vec::with_capacity(usize::try_from(BATCH)?);
    for (k, (id, _)) in ISSUERS.iter().enumerate() {
        let mut first = p.sample_per_issuer(k);
        let end = p.per_issuer(k);
        while first < end {
            let count = BATCH.min(end - first);
            leaves.clear();
            leaves.extend((0..count).map(|_| rng.leaf()));
            let req = AnchorRequest {
                issuer_id: (*id).into(),
                root: merkle::root(&leaves),
                size: count,
                first_status_index: u32::try_from(first)?,
                status_count: u32::try_from(count)?,
            };
            reg.anchor_batch(&SignedAnchor::sign(&req, &issuer_keys[k])?)?;
            anchors += 1;
            first += count;
            if anchors % 10 == 0 {
                eprintln!(
                    "  {anchors} batches anchored ({:.1} s)",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }
    let anchored_s = t0.elapsed().as_secs_f64();

    // Status changes before the first sync: the last index of each issuer (so every status list
    // has its full length on disk), then random ones.
    for (k, key) in issuer_keys.iter().enumerate() {
        let last = u32::try_from(p.per_issuer(k) - 1)?;
        change_status(&mut reg, k, key, last, CredentialStatus::Revoked)?;
    }
    // A few of the signed sample too, so that the verdicts include negative ones.
    for (k, key) in issuer_keys.iter().enumerate() {
        change_status(&mut reg, k, key, 1, CredentialStatus::Revoked)?;
        change_status(&mut reg, k, key, 2, CredentialStatus::Suspended)?;
    }
    random_changes(&mut reg, p, &issuer_keys, INITIAL_CHANGES - 9, &mut rng)?;
    let head = reg.watermark()?;
    report("build_s", t0.elapsed().as_secs_f64());
    report("build_anchor_s", anchored_s);
    report("build_anchors", anchors as f64);
    report("build_blocks", (head.height + 1) as f64);
    report("build_hwm", vm_hwm()? as f64);
    Ok(())
}

fn authority_vk(paths: &Paths) -> Result<VerifyingKey> {
    Ok(*keys::load_signing_key(&paths.key("authority"))?.verifying_key())
}

/// Sync the cache from the ledger; `prefix` names the figures.
fn phase_sync(paths: &Paths, prefix: &str) -> Result<()> {
    let authority = authority_vk(paths)?;
    let reg = SqliteLedger::open(&paths.ledger())?;
    let t = Instant::now();
    let mut cache = Cache::open_or_create(&paths.cache, &authority)?;
    let opened = t.elapsed();
    let t = Instant::now();
    let r = cache.sync(&reg, &authority)?;
    let synced = t.elapsed();
    drop(cache);
    report(&format!("{prefix}_open_s"), opened.as_secs_f64());
    report(&format!("{prefix}_s"), synced.as_secs_f64());
    report(&format!("{prefix}_blocks"), r.applied as f64);
    report(&format!("{prefix}_height"), r.to.height as f64);
    // The floor for this sync: one bare verify, measured here.
    report(&format!("{prefix}_verify_s"), bare_verify()?.as_secs_f64());
    report(&format!("{prefix}_hwm"), vm_hwm()? as f64);
    Ok(())
}

fn phase_changes(p: &Params, paths: &Paths) -> Result<()> {
    let t = Instant::now();
    let authority = keys::load_signing_key(&paths.key("authority"))?;
    let mut reg = SqliteLedger::open_writer(&paths.ledger(), authority)?;
    let keys = issuer_keys(paths)?;
    let batches = random_batches(&mut reg, p, &keys, p.changes, &mut Rng::seeded())?;
    report("changes_s", t.elapsed().as_secs_f64());
    report("changes_batches", batches as f64);
    report("changes_hwm", vm_hwm()? as f64);
    Ok(())
}

/// For comparison: `p.single` status changes recorded one per block.
fn phase_single_changes(p: &Params, paths: &Paths) -> Result<()> {
    let t = Instant::now();
    let authority = keys::load_signing_key(&paths.key("authority"))?;
    let mut reg = SqliteLedger::open_writer(&paths.ledger(), authority)?;
    let keys = issuer_keys(paths)?;
    random_changes(&mut reg, p, &keys, p.single, &mut Rng::seeded())?;
    report("single_changes_s", t.elapsed().as_secs_f64());
    Ok(())
}

fn read_samples(path: &Path) -> Result<Vec<CardRecord>> {
    let bytes = fs::read(path)?;
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| anyhow!("samples file truncated"))?;
        let len = usize::try_from(u32::from_le_bytes(*len))?;
        if tail.len() < len {
            bail!("samples file truncated");
        }
        out.push(CardRecord::decode(&tail[..len])?);
        rest = &tail[len..];
    }
    Ok(out)
}

fn phase_verdicts(paths: &Paths) -> Result<()> {
    let cache = Cache::open(&paths.cache, None)?;
    let records = read_samples(&paths.samples())?;
    let now = civic_reader::now();
    let floor_before = bare_verify()?;
    for r in records.iter().take(WARM_UP) {
        cache.verdict(r, None, now)?;
    }
    let mut verdicts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let t = Instant::now();
    for r in &records {
        let v = cache.verdict(std::hint::black_box(r), None, now)?;
        *verdicts.entry(v.verdict.label()).or_default() += 1;
    }
    let per_verdict = t.elapsed() / u32::try_from(records.len())?;
    let floor_after = bare_verify()?;
    // The faster of the two floor runs: the ratio is not flattered by a slow floor.
    let floor = floor_before.min(floor_after);

    // Where a verdict's time goes: the registry lookups it makes, alone.
    let creds: Vec<Credential> = records
        .iter()
        .map(|r| r.credential.credential_unverified())
        .collect::<civic_registry::Result<_>>()?;
    let n = u32::try_from(records.len())?;
    let t = Instant::now();
    for c in &creds {
        std::hint::black_box(cache.status(&c.issuer_id, c.status_index)?);
    }
    let per_status = t.elapsed() / n;
    let t = Instant::now();
    for c in &creds {
        std::hint::black_box(cache.issuer_certs(&c.issuer_id)?);
    }
    let per_certs = t.elapsed() / n;
    let t = Instant::now();
    for r in &records {
        std::hint::black_box(cache.batch(r.batch_id)?);
    }
    let per_batch = t.elapsed() / n;

    report("verdicts_n", records.len() as f64);
    report("verdict_s", per_verdict.as_secs_f64());
    report("verify_s", floor.as_secs_f64());
    report(
        "verify_spread",
        floor_before.max(floor_after).as_secs_f64() / floor.as_secs_f64(),
    );
    report("lookup_status_s", per_status.as_secs_f64());
    report("lookup_certs_s", per_certs.as_secs_f64());
    report("lookup_batch_s", per_batch.as_secs_f64());
    for (label, count) in &verdicts {
        eprintln!("  verdict {label}: {count}");
    }
    report("verdicts_hwm", vm_hwm()? as f64);
    Ok(())
}

fn child(args: &[String]) -> Result<()> {
    let arg = |name: &str| -> Result<&String> {
        let i = args
            .iter()
            .position(|a| a == name)
            .ok_or_else(|| anyhow!("missing {name}"))?;
        args.get(i + 1)
            .ok_or_else(|| anyhow!("{name} needs a value"))
    };
    let p = Params::from_env()?;
    let paths = Paths {
        registry: PathBuf::from(arg("--registry")?),
        cache: PathBuf::from(arg("--cache")?),
    };
    match arg("--phase")?.as_str() {
        "build" => phase_build(&p, &paths),
        "full-sync" => phase_sync(&paths, "full"),
        "changes" => phase_changes(&p, &paths),
        "incremental-sync" => phase_sync(&paths, "incr"),
        "rebuild" => phase_sync(&paths, "rebuild"),
        "single-changes" => phase_single_changes(&p, &paths),
        "single-sync" => phase_sync(&paths, "single"),
        "verdicts" => phase_verdicts(&paths),
        other => bail!("unknown phase {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the phases, prints the figures.

fn run_phase(phase: &str, paths: &Paths, figures: &mut HashMap<String, f64>) -> Result<()> {
    eprintln!("phase {phase}...");
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--phase")
        .arg(phase)
        .arg("--registry")
        .arg(&paths.registry)
        .arg("--cache")
        .arg(&paths.cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from the {phase} phase"))?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        match line.strip_prefix('@').and_then(|l| l.split_once(' ')) {
            Some((k, v)) => {
                figures.insert(k.to_owned(), v.parse()?);
            }
            None => println!("{line}"),
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("phase {phase} failed ({status})");
    }
    Ok(())
}

fn verdict_word(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn parent(p: &Params) -> Result<()> {
    let shm = Path::new("/dev/shm");
    let registry = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("civic-scale-registry.")
            .tempdir_in(shm)?
    } else {
        tempfile::Builder::new()
            .prefix("civic-scale-registry.")
            .tempdir()?
    };
    let cache_dir = tempfile::Builder::new()
        .prefix("civic-scale-cache.")
        .tempdir()?;
    let paths = Paths {
        registry: registry.path().to_path_buf(),
        cache: cache_dir.path().join("cache.sqlite"),
    };
    eprintln!(
        "registry_scale: {} credentials, {} status changes; registry in {}, cache in {}",
        p.scale,
        p.changes,
        paths.registry.display(),
        paths.cache.display()
    );
    let mut f = HashMap::new();
    run_phase("build", &paths, &mut f)?;
    run_phase("full-sync", &paths, &mut f)?;
    let size_full = cache_bytes(&paths.cache);
    let lists_full = status_list_bytes(&paths.cache)?;
    let tables_full = table_sizes(&paths.cache);
    run_phase("verdicts", &paths, &mut f)?;
    run_phase("changes", &paths, &mut f)?;
    run_phase("incremental-sync", &paths, &mut f)?;
    let size_incr = cache_bytes(&paths.cache);
    let lists_incr = status_list_bytes(&paths.cache)?;
    let tables_incr = table_sizes(&paths.cache);
    // A full sync again, into a second empty cache, of the whole chain including the changes.
    let rebuild = Paths {
        registry: paths.registry.clone(),
        cache: cache_dir.path().join("rebuild.sqlite"),
    };
    run_phase("rebuild", &rebuild, &mut f)?;
    // For comparison: status changes one per block, synced into the first cache.
    let single = p.single > 0;
    if single {
        run_phase("single-changes", &paths, &mut f)?;
        run_phase("single-sync", &paths, &mut f)?;
    }

    let get = |k: &str| -> Result<f64> {
        f.get(k)
            .copied()
            .ok_or_else(|| anyhow!("no figure {k} from the phases"))
    };
    let floor_bytes = p.scale as f64 * 2.0 / 8.0;
    let size_goal = 3e6;

    println!();
    println!(
        "registry_scale: {} credentials across 3 issuers ({} anchored batches, {} blocks before \
         the first sync), {} status changes",
        p.scale,
        get("build_anchors")?,
        get("build_blocks")?,
        p.changes
    );
    println!(
        "set-up (not measured): ledger built in {:.1} s (anchors {:.1} s), {} status changes \
         recorded in {:.2} s as {} batches of up to {}",
        get("build_s")?,
        get("build_anchor_s")?,
        p.changes,
        get("changes_s")?,
        get("changes_batches")?,
        p.batch
    );
    println!();
    for (what, bytes, lists, tables) in [
        ("after full sync", size_full, lists_full, tables_full),
        ("after incremental sync", size_incr, lists_incr, tables_incr),
    ] {
        let b = bytes as f64;
        println!(
            "mirror size on disk {what:<23} {:>8.2} MB  (status lists {:.2} MB)  floor {:.2} MB  \
             ratio {:.2}  goal <= 3 MB  {}",
            mb(b),
            mb(lists as f64),
            mb(floor_bytes),
            b / floor_bytes,
            verdict_word(b <= size_goal)
        );
        print_table_sizes(&tables);
    }
    let full = get("full_s")?;
    println!(
        "full sync from empty                         {:>8.3} s   ({} blocks, open {:.3} s)  \
         goal < 5 s  {}",
        full,
        get("full_blocks")?,
        get("full_open_s")?,
        verdict_word(full < 5.0)
    );
    let rebuild = get("rebuild_s")?;
    println!(
        "  again after the changes, into a new cache  {:>8.3} s   ({} blocks)  goal < 5 s  {}",
        rebuild,
        get("rebuild_blocks")?,
        verdict_word(rebuild < 5.0)
    );
    let incr = get("incr_s")?;
    let blocks = get("incr_blocks")?;
    let v = get("incr_verify_s")?;
    println!(
        "incremental sync of {} status changes      {:>8.3} s   ({} blocks of status batches, \
         {:.0} us/block, open+check {:.3} s)  goal < 1 s  {}",
        p.changes,
        incr,
        blocks,
        incr / blocks * 1e6,
        get("incr_open_s")?,
        verdict_word(incr < 1.0)
    );
    println!(
        "  ECDSA verify floor                          {:>8.3} s   ({} blocks x 2 verifies \
         (block seal, request) x {:.0} us)",
        blocks * 2.0 * v,
        blocks,
        v * 1e6
    );
    if single {
        let s = get("single_s")?;
        let sb = get("single_blocks")?;
        let sv = get("single_verify_s")?;
        println!(
            "  for comparison, one change per block: {} changes {:>8.3} s   ({} blocks, {:.0} \
             us/block; x{:.0} = {:.2} s for {} changes); floor 2 verifies/block {:.3} s; set-up \
             {:.1} s",
            p.single,
            s,
            sb,
            s / sb * 1e6,
            p.changes as f64 / sb,
            s / sb * p.changes as f64,
            p.changes,
            sb * 2.0 * sv,
            get("single_changes_s")?
        );
    }
    let per_verdict = get("verdict_s")?;
    let per_verify = get("verify_s")?;
    let ratio = per_verify / per_verdict;
    println!(
        "verdicts from the cache, one thread          {:>8.0} /s  bare P-256 verify {:.0} /s \
         (spread {:.2})  ratio {:.3}  goal >= 0.8  {}",
        1.0 / per_verdict,
        1.0 / per_verify,
        get("verify_spread")?,
        ratio,
        verdict_word(ratio >= 0.8)
    );
    println!(
        "  per verdict {:.0} us = lookups alone: status {:.0} us, issuer certificates {:.0} us, \
         batch {:.0} us; bare verify {:.0} us",
        per_verdict * 1e6,
        get("lookup_status_s")? * 1e6,
        get("lookup_certs_s")? * 1e6,
        get("lookup_batch_s")? * 1e6,
        per_verify * 1e6
    );
    println!("memory peak (VmHWM) of each phase, no goal stated:");
    for (phase, key) in [
        ("build (set-up)", "build_hwm"),
        ("full sync", "full_hwm"),
        ("verdicts", "verdicts_hwm"),
        ("status changes (set-up)", "changes_hwm"),
        ("incremental sync", "incr_hwm"),
        ("full sync after the changes", "rebuild_hwm"),
    ] {
        println!("  {phase:<26} {:>8.1} MB", mb(get(key)?));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--phase") {
        return child(&args);
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches`: nothing to do.
        return Ok(());
    }
    parent(&Params::from_env()?)
}
