//! Faults during work, through the real `civic` and `civic-card` processes: the ledger locked
//! by another writer, the disk full during a write, `civic` SIGKILLed during ledger appends,
//! pcscd killed mid-scan, the card pulled out mid-scan, a frozen card. Each must end in a
//! clear error (exit 3, saying what happened) or success, never a hang or a panic; afterwards
//! every store verifies and nothing that was reported committed is lost.
//!
//! `CIVIC_KILL_TRIALS` (default 40) sets the number of SIGKILLs during ledger appends,
//! `CIVIC_FAULT_TRIALS` (default 3) the number of pcscd kills and card removals mid-scan;
//! `CIVIC_KILL_SEED` replays a run (each test prints its seed).

use std::io::{BufRead, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use civic_e2e::office::{Office, Ran, PIN};
use civic_e2e::{civic_bin, pcscd, run_with_timeout, serial, VirtualCard, CARD_SEEN_TIMEOUT};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift PRNG: the kill points only need to be spread and replayable.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("CIVIC_KILL_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("{test}: seed {seed} (CIVIC_KILL_SEED={seed} replays it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in 0..=max.
    fn micros(&mut self, max: Duration) -> Duration {
        let m = max.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % (m + 1))
    }
}

/// "Ledger OK: N blocks" from `civic registry verify`; fails unless it verifies.
fn ledger_blocks(office: &Office) -> Result<u64> {
    let out = office.expect(0, &["registry", "verify"], None)?;
    let n = out
        .split("Ledger OK: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no block count in:\n{out}"))?;
    Ok(n)
}

fn registered_issuers(office: &Office) -> Result<Vec<String>> {
    let out = office.expect(0, &["--json", "issuer", "list"], None)?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array()
        .context("issuer list is not an array")?
        .iter()
        .filter_map(|i| i["issuer_id"].as_str().map(str::to_owned))
        .collect())
}

// ---------------------------------------------------------------------------------------
// The ledger locked by another writer

#[test]
fn ledger_locked_by_another_writer_is_a_clear_error_and_loses_nothing() -> Result<()> {
    let office = Office::new()?;
    office.expect(0, &["authority", "init"], None)?;
    let add = |id: &str| {
        office.civic(
            &[
                "issuer", "add", "--id", id, "--name", "Bureau", "--kinds", "health",
            ],
            None,
        )
    };
    ensure!(add("first-bureau")?.code == 0);
    let blocks = ledger_blocks(&office)?;

    // Another writer (an administrator's sqlite3 shell, a second office process) holds the
    // write lock.
    let db = office.home().join("registry.sqlite");
    let other = rusqlite::Connection::open(&db)?;
    other.execute_batch("BEGIN IMMEDIATE")?;

    let r = add("second-bureau")?;
    eprintln!("while locked ({:?}):\n{}", r.took, r.out);
    ensure!(r.code == 3, "exit {} while locked:\n{}", r.code, r.out);
    ensure!(
        r.out.contains("locked by another writer") && r.out.contains("nothing was written"),
        "unclear error while locked:\n{}",
        r.out
    );
    ensure!(
        r.took >= Duration::from_secs(4) && r.took < Duration::from_secs(30),
        "gave up after {:?}, not after the 5 s busy timeout",
        r.took
    );
    // Reading is not blocked by a writer (WAL): the clinic keeps verifying.
    ensure!(
        ledger_blocks(&office)? == blocks,
        "a block appeared while locked"
    );

    other.execute_batch("ROLLBACK")?;
    drop(other);
    // The failed add left nothing behind: the same command now succeeds.
    let r = add("second-bureau")?;
    ensure!(
        r.code == 0,
        "retry after the lock: exit {}:\n{}",
        r.code,
        r.out
    );
    ensure!(ledger_blocks(&office)? == blocks + 1);
    ensure!(registered_issuers(&office)? == ["first-bureau", "second-bureau"]);
    Ok(())
}

#[test]
fn clinic_cache_locked_by_another_writer_is_a_clear_error() -> Result<()> {
    let office = Office::new()?;
    office.expect(0, &["authority", "init"], None)?;
    office.expect(0, &["registry", "sync"], None)?;
    office.expect(
        0,
        &[
            "issuer", "add", "--id", "b", "--name", "B", "--kinds", "health",
        ],
        None,
    )?;
    let other = rusqlite::Connection::open(office.home().join("cache.sqlite"))?;
    other.execute_batch("BEGIN IMMEDIATE")?;
    let r = office.civic(&["registry", "sync"], None)?;
    eprintln!("sync while locked:\n{}", r.out);
    ensure!(r.code == 3, "exit {}:\n{}", r.code, r.out);
    ensure!(
        r.out.contains("clinic cache") && r.out.contains("locked by another writer"),
        "{}",
        r.out
    );
    other.execute_batch("ROLLBACK")?;
    drop(other);
    office.expect(0, &["registry", "sync"], None)?;
    let out = office.expect(0, &["registry", "verify", "--cache"], None)?;
    ensure!(out.contains("Clinic cache OK: block 1"), "{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The disk full during a write

/// A small tmpfs mounted in a private mount namespace held by a `sleep` process; commands run
/// inside it with `nsenter`. Nothing is visible outside the namespace, and the mount goes
/// away with the holder.
struct SmallDisk {
    holder: Child,
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with the reason) when mount namespaces or tmpfs are not available here.
    fn mount(size: &str) -> Result<std::result::Result<Self, String>> {
        let dir = tempfile::Builder::new()
            .prefix("civic-e2e-small-disk-")
            .tempdir()?;
        let spawned = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o size=\"$2\",mode=700 civic-small-disk \"$1\" || exit 1; \
                 echo mounted; exec sleep 600",
            )
            .args(["sh"])
            .arg(dir.path())
            .arg(size)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut holder = match spawned {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("cannot run unshare (util-linux): {e}"))),
        };
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "mounted" {
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = holder.kill();
            let _ = holder.wait();
            return Ok(Err(format!(
                "cannot mount a tmpfs in a private mount namespace: {}",
                err.trim()
            )));
        }
        Ok(Ok(Self { holder, dir }))
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run a program inside the namespace.
    fn run(&self, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Ran> {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .arg(program)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let t0 = Instant::now();
        let out = run_with_timeout(cmd, None, Duration::from_secs(60))?;
        Ok(Ran {
            code: out.status.code().unwrap_or(-1),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            took: t0.elapsed(),
        })
    }

    fn sh(&self, script: &str) -> Result<Ran> {
        let dir = self.path().display().to_string();
        self.run(Path::new("/bin/sh"), &["-c", script, "sh", &dir], &[])
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn disk_full_during_ledger_and_cache_writes_is_a_clear_error_and_loses_nothing() -> Result<()> {
    let disk = match SmallDisk::mount("4m")? {
        Ok(d) => d,
        Err(why) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED disk_full_during_ledger_and_cache_writes: {why} !!!!!!!!\n"
            );
            return Ok(());
        }
    };
    let home = disk.path().join("home").display().to_string();
    let env = [("CIVIC_HOME", home.as_str())];
    let civic = |args: &[&str]| disk.run(&civic_bin(), args, &env);
    let expect = |code: i32, args: &[&str]| -> Result<String> {
        let r = civic(args)?;
        ensure!(
            r.code == code,
            "`civic {}` exited {} (wanted {code}):\n{}",
            args.join(" "),
            r.code,
            r.out
        );
        Ok(r.out)
    };
    expect(0, &["authority", "init"])?;
    for id in ["health-bureau", "other-bureau"] {
        expect(
            0,
            &[
                "issuer", "add", "--id", id, "--name", "B", "--kinds", "health",
            ],
        )?;
    }
    expect(0, &["registry", "sync"])?;
    expect(
        0,
        &[
            "issuer", "add", "--id", "third", "--name", "C", "--kinds", "health",
        ],
    )?;
    let verify = expect(0, &["registry", "verify"])?;
    ensure!(verify.contains("Ledger OK: 4 blocks"), "{verify}");

    // Fill the disk, then give back a little: enough for SQLite to open the files, not
    // enough for a block (several 4 KiB pages in the WAL). Tried from small to larger
    // headroom, so whichever write runs out of space first, it is one of ours.
    let mut saw_ledger_full = false;
    let mut saw_cache_full = false;
    let mut retired = false;
    let mut inside_append = 0;
    for headroom_kib in (0..=64).step_by(4) {
        let fill = disk.sh(&format!(
            "rm -f \"$1/fill\"; dd if=/dev/zero of=\"$1/fill\" bs=4k 2>/dev/null; \
             truncate -s -{headroom_kib}K \"$1/fill\"; df -k \"$1\" | tail -1"
        ))?;
        let retire = civic(&[
            "issuer",
            "retire",
            "--id",
            "other-bureau",
            "--from",
            "now",
            "--reason",
            "disk-full test",
        ])?;
        eprintln!(
            "headroom {headroom_kib} KiB ({}): retire exited {}:\n{}",
            fill.out.trim(),
            retire.code,
            retire.out.trim()
        );
        ensure!(
            retire.code == 0 || retire.code == 3,
            "retire on a full disk: exit {}:\n{}",
            retire.code,
            retire.out
        );
        if retire.code == 3 {
            ensure!(
                retire.out.contains("full"),
                "unclear error on a full disk:\n{}",
                retire.out
            );
            if retire.out.contains("the ledger")
                && retire.out.contains("the disk is full")
                && retire.out.contains("nothing was written")
            {
                saw_ledger_full = true;
                if !retire.out.contains("opening the registry") {
                    inside_append += 1;
                }
            }
            let sync = civic(&["registry", "sync"])?;
            eprintln!("  sync exited {}: {}", sync.code, sync.out.trim());
            ensure!(
                sync.code == 0 || sync.code == 3,
                "sync on a full disk: exit {}:\n{}",
                sync.code,
                sync.out
            );
            if sync.code == 3 {
                ensure!(sync.out.contains("full"), "unclear error:\n{}", sync.out);
                saw_cache_full |= sync.out.contains("clinic cache database");
            }
            // Reading a WAL database may need a page for its index: on a full disk a verify
            // may fail too, but only with the same clear error.
            for args in [
                &["registry", "verify"][..],
                &["registry", "verify", "--cache"],
            ] {
                let r = civic(args)?;
                ensure!(
                    r.code == 0 || (r.code == 3 && r.out.contains("full")),
                    "`civic {}` on a full disk: exit {}:\n{}",
                    args.join(" "),
                    r.code,
                    r.out
                );
                ensure!(
                    r.code != 0
                        || !args.ends_with(&["verify"])
                        || r.out.contains("Ledger OK: 4 blocks"),
                    "a failed write changed the ledger:\n{}",
                    r.out
                );
            }
        } else {
            // Enough room: the block went in.
            retired = true;
            break;
        }
    }
    disk.sh("rm -f \"$1/fill\"")?;
    ensure!(
        saw_ledger_full,
        "no headroom made the ledger append fail with its disk-full error"
    );
    // The failed writes changed nothing; with space again the refused write goes through.
    let blocks = if retired { 5 } else { 4 };
    let out = expect(0, &["registry", "verify"])?;
    ensure!(
        out.contains(&format!("Ledger OK: {blocks} blocks")),
        "a failed write changed the ledger:\n{out}"
    );
    expect(0, &["registry", "verify", "--cache"])?;
    eprintln!(
        "disk full: ledger writes refused with a clear error ({inside_append} of them inside the \
         append transaction, the others when opening the WAL), cache sync refused: \
         {saw_cache_full}; nothing changed"
    );
    if !retired {
        expect(
            0,
            &[
                "issuer",
                "retire",
                "--id",
                "other-bureau",
                "--from",
                "now",
                "--reason",
                "disk-full test",
            ],
        )?;
    }
    let out = expect(0, &["registry", "verify"])?;
    ensure!(out.contains("Ledger OK: 5 blocks"), "{out}");
    expect(0, &["registry", "sync"])?;
    let out = expect(0, &["registry", "verify", "--cache"])?;
    ensure!(out.contains("Clinic cache OK: block 4"), "{out}");
    Ok(())
}

/// The card's state file on a disk that fills up: the write that needs space is refused with
/// 6581 (memory failure), the card keeps its last state (no PIN try lost, the file as it
/// was), and once there is room again it works as before.
#[test]
fn disk_full_during_a_card_write_keeps_the_cards_last_state() -> Result<()> {
    let _lock = serial();
    pcscd();
    let disk = match SmallDisk::mount("512k")? {
        Ok(d) => d,
        Err(why) => {
            eprintln!("\n!!!!!!!! SKIPPED disk_full_during_a_card_write: {why} !!!!!!!!\n");
            return Ok(());
        }
    };
    let pid = disk.holder.id().to_string();
    let state = disk.path().join("card.state");
    let office = Office::new()?;
    office.set_up_city()?;
    let card = VirtualCard::start_wrapped(3, &state, &["nsenter", "-t", &pid, "-m", "--"])?;
    let reader = card.reader();
    office.provision(&reader)?;
    let digest = |d: &SmallDisk| -> Result<String> {
        let r = d.sh("sha256sum \"$1/card.state\"")?;
        ensure!(r.code == 0, "{}", r.out);
        Ok(r.out
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    };
    let before = digest(&disk)?;
    let fill =
        disk.sh("dd if=/dev/zero of=\"$1/fill\" bs=4k 2>/dev/null; df -k \"$1\" | tail -1")?;
    eprintln!("card disk filled: {}", fill.out.trim());

    // A clinic read appends to the access log before any data leaves the card: refused.
    let scan = office.civic(&["scan", "--reader", &reader], None)?;
    eprintln!(
        "scan on a full disk: exit {}\n{}",
        scan.code,
        scan.out.trim()
    );
    ensure!(
        scan.code == 3 && scan.out.contains("6581") && scan.out.contains("memory failure"),
        "exit {}:\n{}",
        scan.code,
        scan.out
    );
    // The PIN counter is decremented and stored before the compare: no room, no compare, and
    // no try lost.
    let view = office.civic(&["view", "--reader", &reader, "--pin-stdin"], Some(PIN))?;
    eprintln!(
        "view on a full disk: exit {}\n{}",
        view.code,
        view.out.trim()
    );
    ensure!(view.code == 3 && view.out.contains("6581"), "{}", view.out);
    ensure!(
        card.log().contains("No space left on device"),
        "the card did not say why:\n{}",
        card.log()
    );
    ensure!(
        digest(&disk)? == before,
        "the card's state file changed on a full disk"
    );

    disk.sh("rm -f \"$1/fill\"")?;
    card_verifies(&office, &card)?;
    let view = office.civic(&["view", "--reader", &reader, "--pin-stdin"], Some(PIN))?;
    ensure!(view.code == 0, "view after freeing space:\n{}", view.out);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// SIGKILL during ledger appends

#[test]
fn civic_killed_during_ledger_appends_loses_no_committed_block() -> Result<()> {
    let trials = env_usize("CIVIC_KILL_TRIALS", 40);
    let mut rng = Rng::seeded("civic_killed_during_ledger_appends");
    let office = Office::new()?;
    office.expect(0, &["authority", "init"], None)?;
    let home = office.home().display().to_string();
    let spawn_add = |id: &str| -> Result<Child> {
        Command::new(civic_bin())
            .env("CIVIC_HOME", &home)
            .args([
                "issuer", "add", "--id", id, "--name", "Bureau", "--kinds", "health",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn civic")
    };
    // How long one append takes from exec to exit, to spread the kills over it.
    let mut reference = Duration::ZERO;
    for i in 0..3 {
        let t0 = Instant::now();
        let out = spawn_add(&format!("reference-{i}"))?.wait_with_output()?;
        ensure!(out.status.success(), "{out:?}");
        reference = reference.max(t0.elapsed());
    }

    let (mut reported, mut killed, mut committed_unreported, mut interrupted) =
        (Vec::new(), 0, 0, Vec::new());
    for t in 0..trials {
        let id = format!("bureau-{t}");
        let delay = rng.micros(reference + reference / 2);
        let mut child = spawn_add(&id)?;
        thread::sleep(delay);
        let _ = child.kill(); // SIGKILL; no-op if it already exited
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.code() {
            Some(0) => {
                let block: u64 = text
                    .rsplit("block ")
                    .next()
                    .and_then(|b| b.trim().parse().ok())
                    .with_context(|| format!("no block in {text:?}"))?;
                reported.push((id, block));
            }
            Some(code) => bail!(
                "trial {t}: civic exited {code} without being killed:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            ),
            None => {
                killed += 1;
                interrupted.push(id);
            }
        }
    }

    // The ledger verifies; every reported block is there, at the height reported.
    let blocks = ledger_blocks(&office)?;
    let ids = registered_issuers(&office)?;
    for (id, _) in &reported {
        ensure!(
            ids.contains(id),
            "{id} was reported registered but is missing"
        );
    }
    let mut heights: Vec<u64> = reported.iter().map(|(_, b)| *b).collect();
    heights.sort_unstable();
    heights.dedup();
    ensure!(
        heights.len() == reported.len(),
        "two appends reported one height"
    );
    ensure!(heights.last().is_none_or(|h| *h < blocks));
    for id in &interrupted {
        if ids.contains(id) {
            committed_unreported += 1;
        }
    }
    ensure!(
        blocks == 1 + ids.len() as u64,
        "{blocks} blocks for {} issuers",
        ids.len()
    );
    // An interrupted add whose block never landed is named when retried.
    if let Some(id) = interrupted.iter().find(|id| !ids.contains(id)) {
        let key = office.home().join("issuers").join(format!("{id}.key"));
        if key.exists() {
            let r = office.civic(
                &[
                    "issuer", "add", "--id", id, "--name", "Bureau", "--kinds", "health",
                ],
                None,
            )?;
            ensure!(
                r.code == 3 && r.out.contains("was interrupted"),
                "retry of an interrupted add:\n{}",
                r.out
            );
        }
    }
    eprintln!(
        "ledger kill test: {trials} appends (one takes up to {reference:?}), {} reported \
         committed and all present, {killed} killed ({committed_unreported} of those had \
         committed, {} had not), ledger verifies: {blocks} blocks",
        reported.len(),
        killed - committed_unreported
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Card and reader faults mid-scan (pcscd)

fn spawn_scan(office: &Office, reader: &str, timeout_secs: &str) -> Result<Child> {
    Command::new(civic_bin())
        .env("CIVIC_HOME", office.home())
        .env("CIVIC_CARD_TIMEOUT", timeout_secs)
        .args(["scan", "--reader", reader])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn civic scan")
}

/// Wait for a child with a bound; kill it (and fail) on timeout.
fn finish(mut child: Child, bound: Duration) -> Result<(Option<i32>, String)> {
    let deadline = Instant::now() + bound;
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            return Ok((
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "civic hung for {bound:?}; it printed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The card is whole: it starts from its state file, scans VALID, and kept all its PIN tries.
fn card_verifies(office: &Office, card: &VirtualCard) -> Result<()> {
    let scan = office.scan_json(&card.reader(), 0)?;
    ensure!(scan["valid"] == true, "{scan}");
    let info = office.expect(
        0,
        &["--json", "card-info", "--reader", &card.reader()],
        None,
    )?;
    let v: serde_json::Value = serde_json::from_str(&info)?;
    ensure!(v["card"]["pin_tries_left"] == 3, "{info}");
    ensure!(v["card"]["life_cycle"] == "issued", "{info}");
    Ok(())
}

fn scan_reference(office: &Office, reader: &str) -> Result<Duration> {
    let mut longest = Duration::ZERO;
    for _ in 0..3 {
        let r = office.civic(&["scan", "--reader", reader], None)?;
        ensure!(r.code == 0, "{}", r.out);
        longest = longest.max(r.took);
    }
    Ok(longest)
}

/// One fault injected into a scan. Even trials make sure the scan is in flight: the card is
/// frozen first, so the scan is blocked inside a card call when the fault hits; odd trials
/// hit a free-running scan after a random delay (finished scans are fine: exit 0).
fn fault_mid_scan(
    office: &Office,
    card: &mut VirtualCard,
    rng: &mut Rng,
    reference: Duration,
    trial: usize,
    fault: &mut dyn FnMut(&mut VirtualCard) -> Result<()>,
) -> Result<bool> {
    let in_flight = trial % 2 == 0;
    let delay = if in_flight {
        card.pause()?;
        Duration::from_millis(500)
    } else {
        Duration::from_millis(5) + rng.micros(reference * 3 / 4)
    };
    let scan = spawn_scan(office, &card.reader(), "20")?;
    thread::sleep(delay);
    let faulted = fault(card);
    let done = finish(scan, Duration::from_secs(30));
    if in_flight && card.is_running() {
        card.resume()?;
    }
    faulted?;
    let (code, out) = done?;
    eprintln!(
        "trial {trial}: fault {} {delay:?} into a scan (one takes {reference:?}): exit \
         {code:?}\n{}",
        if in_flight {
            "while a card call was in flight,"
        } else {
            "at random,"
        },
        out.trim()
    );
    match code {
        Some(0) if !in_flight => Ok(false),
        Some(3) => {
            ensure!(
                out.contains("run the command again"),
                "no plain-language explanation:\n{out}"
            );
            ensure!(!out.contains("panicked"), "{out}");
            Ok(true)
        }
        other => bail!("exit {other:?}:\n{out}"),
    }
}

#[test]
fn pcscd_killed_mid_scan_gives_a_clear_error_and_the_card_survives() -> Result<()> {
    let _lock = serial();
    let p = pcscd();
    let trials = env_usize("CIVIC_FAULT_TRIALS", 4);
    let mut rng = Rng::seeded("pcscd_killed_mid_scan");
    let office = Office::new()?;
    office.set_up_city()?;
    let mut card = VirtualCard::blank(0)?;
    office.provision(&card.reader())?;
    office.expect(0, &["registry", "sync"], None)?;
    let reference = scan_reference(&office, &card.reader())?;
    let mut hit = 0;
    for t in 0..trials {
        let connects = card.connect_count();
        let mut crash = |_: &mut VirtualCard| {
            p.kill(); // a crash: SIGKILL
            Ok(())
        };
        hit += usize::from(fault_mid_scan(
            &office, &mut card, &mut rng, reference, t, &mut crash,
        )?);
        pcscd(); // started again, as an init system would
        card.wait_reconnected(connects + 1, Duration::from_secs(15))?;
        card_verifies(&office, &card)?;
    }
    eprintln!(
        "pcscd killed mid-scan: {trials} trials, {hit} cut a scan short, card whole after each"
    );
    Ok(())
}

#[test]
fn card_removed_mid_scan_gives_a_clear_error_and_the_card_survives() -> Result<()> {
    let _lock = serial();
    pcscd();
    let trials = env_usize("CIVIC_FAULT_TRIALS", 4);
    let mut rng = Rng::seeded("card_removed_mid_scan");
    let office = Office::new()?;
    office.set_up_city()?;
    let mut card = VirtualCard::blank(1)?;
    office.provision(&card.reader())?;
    office.expect(0, &["registry", "sync"], None)?;
    let reference = scan_reference(&office, &card.reader())?;
    let mut hit = 0;
    for t in 0..trials {
        let mut pull = |c: &mut VirtualCard| {
            c.kill(); // pulled out: power gone, mid-APDU or between APDUs
            Ok(())
        };
        hit += usize::from(fault_mid_scan(
            &office, &mut card, &mut rng, reference, t, &mut pull,
        )?);
        card.wait_absent(CARD_SEEN_TIMEOUT)?;
        card.restart()?;
        card_verifies(&office, &card)?;
    }
    eprintln!(
        "card pulled mid-scan: {trials} trials, {hit} cut a scan short, card whole after each"
    );
    Ok(())
}

#[test]
fn frozen_card_scan_gives_up_with_a_clear_error_after_the_card_timeout() -> Result<()> {
    let _lock = serial();
    pcscd();
    let office = Office::new()?;
    office.set_up_city()?;
    let card = VirtualCard::blank(2)?;
    office.provision(&card.reader())?;
    card.pause()?;
    let t0 = Instant::now();
    let scan = spawn_scan(&office, &card.reader(), "2")?;
    let result = finish(scan, Duration::from_secs(20));
    let took = t0.elapsed();
    card.resume()?;
    let (code, out) = result?;
    eprintln!("frozen card: exit {code:?} after {took:?}:\n{}", out.trim());
    ensure!(code == Some(3), "exit {code:?}:\n{out}");
    ensure!(
        out.contains("did not answer within 2s") && out.contains(&card.reader()),
        "unclear error:\n{out}"
    );
    ensure!(
        took < Duration::from_secs(10),
        "gave up only after {took:?}"
    );
    // Once the card runs again, it is whole.
    thread::sleep(Duration::from_millis(500));
    card_verifies(&office, &card)?;
    Ok(())
}
