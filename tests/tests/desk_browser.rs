//! `civic desk` end to end in a real browser: Debian's headless Chromium driven by
//! playwright-core (tests/browser/desk.mjs), against a virtual card through pcscd + vpcd.
//! This test starts the world (pcscd, the city, Alice's card, `civic desk`), runs the script
//! and moves the card when it asks (`@@PULL`, `@@RESTORE`, `@@PAUSE`, `@@BLANK`).
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules` (scripts/lib.sh
//! installs all three: civic_install_packages and civic_install_npm). Screenshots go to
//! `CIVIC_DESK_SCREENSHOTS` (default: a directory under the target dir; the README's set is
//! tests/browser/screenshots).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use civic_e2e::office::{Office, PIN};
use civic_e2e::{civic_bin, pcscd, serial, VirtualCard, CARD_SEEN_TIMEOUT};

/// The whole browser run; generous for a loaded 2-core machine (it takes ~30 s here).
const RUN_BOUND: Duration = Duration::from_secs(240);

/// A child process killed (by its own handle) when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Start `civic desk` on a free port; returns the process and the address it printed.
fn start_desk(office: &Office) -> Result<(Killed, String)> {
    let mut child = Command::new(civic_bin())
        .args(["desk", "--port", "0"])
        .env("CIVIC_HOME", office.home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} desk", civic_bin().display()))?;
    let stdout = child.stdout.take().context("desk stdout")?;
    let child = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| anyhow!("civic desk printed no address within 30 s"))?;
        if let Some(url) = line.strip_prefix("Civic desk: open ") {
            return Ok((child, url.trim().to_owned()));
        }
    }
}

#[test]
fn desk_in_chromium_scan_pin_revocation_log_office_batch_and_refusals() -> Result<()> {
    let _lock = serial();
    let node_modules = browser_dir().join("node_modules/playwright-core");
    ensure!(
        node_modules.is_dir(),
        "{} is missing: run `npm ci` in tests/browser (scripts/lib.sh civic_install_npm does)",
        node_modules.display()
    );
    ensure!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: install Debian's chromium (scripts/lib.sh \
         civic_install_packages does)"
    );
    pcscd();
    let office = Office::new()?;
    office.set_up_city()?;
    let mut card = VirtualCard::blank(0)?;
    let reader = card.reader();
    office.provision(&reader)?;
    // Cards taken out of the reader for a blank one stay alive until the end of the test.
    let mut retired: Vec<VirtualCard> = Vec::new();

    let (_desk, url) = start_desk(&office)?;
    let shots = std::env::var_os("CIVIC_DESK_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("desk-screenshots"));

    let mut node = Killed(
        Command::new("node")
            .arg(browser_dir().join("desk.mjs"))
            .current_dir(browser_dir())
            .env("DESK_URL", &url)
            .env("DESK_PIN", PIN)
            .env("DESK_CARD_ID", "CIV-2026-0000-0001")
            .env("DESK_SCREENSHOTS", &shots)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting node (is Node.js installed?)")?,
    );
    let mut to_node = node.0.stdin.take().context("node stdin")?;
    let from_node = node.0.stdout.take().context("node stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from_node).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let mut steps = 0;
    let mut done = None;
    while done.is_none() {
        let left = RUN_BOUND.saturating_sub(started.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the browser run took over {RUN_BOUND:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        println!("browser: {line}");
        if line.starts_with("step ") {
            steps += 1;
        }
        if let Some(d) = line.strip_prefix("DONE ") {
            done = Some(d.to_owned());
        }
        let Some(cmd) = line.strip_prefix("@@") else {
            continue;
        };
        let did: Result<()> = match cmd {
            // The card leaves the reader (power gone mid-operation, as a pulled card).
            "PULL" => {
                card.kill();
                card.wait_absent(CARD_SEEN_TIMEOUT)
            }
            // The same card back in the reader.
            "RESTORE" => card.restart(),
            // A frozen card: the next operation blocks in the middle until PULL.
            "PAUSE" => card.pause(),
            // A new blank card in place of the one in the reader.
            "BLANK" => (|| {
                card.stop()?;
                card.wait_absent(CARD_SEEN_TIMEOUT)?;
                let blank = VirtualCard::blank(0)?;
                retired.push(std::mem::replace(&mut card, blank));
                Ok(())
            })(),
            other => Err(anyhow!("unknown request {other:?}")),
        };
        let answer = match &did {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("error: {e:#}"),
        };
        writeln!(to_node, "{answer}").context("answering the browser script")?;
        to_node.flush()?;
        did.with_context(|| format!("doing {cmd} for the browser script"))?;
    }
    let status = node.0.wait()?;
    ensure!(
        status.success(),
        "the browser script failed ({status}) after {steps} steps"
    );
    let done = done.context("the browser script ended without DONE")?;
    println!(
        "desk browser test: {done} in {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    ensure!(steps >= 15, "only {steps} steps ran");
    Ok(())
}
