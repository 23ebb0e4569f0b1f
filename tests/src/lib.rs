//! Harness for the end-to-end tests: a real `pcscd` with four vsmartcard (vpcd) readers, and
//! `civic-card` virtual cards plugged into them, driven through PC/SC like any other client.
//!
//! # Layout (the same as `scripts/lib.sh`)
//!
//! | index | reader name             | vpcd port |
//! |-------|-------------------------|-----------|
//! | 0     | `Virtual PCD 00 00`     | 31337     |
//! | 1     | `Virtual PCD 00 01`     | 31338     |
//! | 2     | `Virtual PCD 2 00 00`   | 31339     |
//! | 3     | `Virtual PCD 2 00 01`   | 31340     |
//!
//! Readers 2 and 3 come from a second config entry with its own friendly name (with the same
//! name pcscd lists duplicate reader names) and its own copy of the driver `.so` (two entries
//! sharing one `.so` misroute APDUs).
//!
//! # Usage
//!
//! ```no_run
//! use std::time::Duration;
//! let _lock = civic_e2e::serial(); // one test at a time: one pcscd per machine
//! civic_e2e::pcscd(); // shared, started on first use, running when returned
//! let card = civic_e2e::VirtualCard::blank(0).expect("card");
//! let reader = card.reader();
//! // Every PC/SC client call goes through with_timeout: a frozen card hangs clients.
//! let seen = civic_e2e::with_timeout(Duration::from_secs(5), move || {
//!     civic_e2e::card_present(&reader)
//! });
//! ```
//!
//! Only one pcscd can run on a machine (its socket is always `/run/pcscd/pcscd.comm`), so
//! tests take [`serial`] and share [`pcscd`]. A pcscd the tests did not start makes them fail
//! with a message saying so. Every process the harness starts is watched by a small `sh`
//! watchdog that kills it if the test process dies without running destructors (statics are
//! never dropped, and a test binary can be killed).
//!
//! Binaries come from `CIVIC_BIN_DIR`, else `<target>/release`, else `<target>/debug`
//! (`<target>` = `CARGO_TARGET_DIR` or `<workspace>/target`). `scripts/test` builds the release
//! binaries first and sets `CIVIC_BIN_DIR`.

pub mod hostile;
pub mod office;
pub mod stats;
pub mod vpcd;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

/// Reader names, by index.
pub const READERS: [&str; 4] = [
    "Virtual PCD 00 00",
    "Virtual PCD 00 01",
    "Virtual PCD 2 00 00",
    "Virtual PCD 2 00 01",
];
/// vpcd ports, by index (below 32768: outside Linux's ephemeral port range).
pub const PORTS: [u16; 4] = [31337, 31338, 31339, 31340];
/// Debian's vpcd driver; `CIVIC_VPCD_DRIVER` overrides it.
pub const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
/// pcscd's socket (fixed at build time of pcsc-lite).
pub const PCSCD_SOCKET: &str = "/run/pcscd/pcscd.comm";
const PCSCD_RUN_DIR: &str = "/run/pcscd";
/// Prefix of the harness's temporary directories; it appears in our pcscd's command line,
/// which is how a pcscd left behind by an earlier test binary is recognised.
const MARKER: &str = "civic-e2e-pcscd";

/// Bound for pcscd's start-up (socket, ports, readers listed).
pub const PCSCD_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound for a card to print its "connected" line.
pub const CARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for pcscd to report a card present or absent (it polls every 400 ms).
pub const CARD_SEEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Gap between a card leaving a reader and the next card connecting to it: a card that
/// reconnects within pcscd's 400 ms poll can leave the slot stuck at "no card".
pub const RECONNECT_GAP: Duration = Duration::from_millis(1000);
/// Default bound for [`run_civic`].
pub const CIVIC_TIMEOUT: Duration = Duration::from_secs(60);

/// The reader name for index 0..4. Panics on another index.
pub fn reader_name(index: usize) -> String {
    READERS[index].to_owned()
}

/// The vpcd port for index 0..4. Panics on another index.
pub fn port(index: usize) -> u16 {
    PORTS[index]
}

// ---------------------------------------------------------------------------------------
// Timeouts

/// A call did not finish within its bound (its thread is left behind, still blocked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

/// Run `f` on its own thread and wait at most `dur` for it. A panic in `f` is re-raised here.
/// On timeout the thread is abandoned (a PC/SC call to a frozen card blocks until the card
/// is resumed or killed).
pub fn with_timeout<T: Send + 'static>(
    dur: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TimedOut> {
    let (tx, rx) = mpsc::sync_channel(1);
    let handle = thread::Builder::new()
        .name("civic-e2e-with-timeout".into())
        .spawn(move || {
            // The receiver is gone only after a timeout: nobody wants the value then.
            let _ = tx.send(f());
        })
        .expect("spawn a thread");
    match rx.recv_timeout(dur) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(TimedOut(dur)),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Test serialisation

static SERIAL: Mutex<()> = Mutex::new(());

/// The global test lock: tests in one binary run one at a time (one pcscd, four readers).
/// A panicking test poisons nothing: the next one gets the lock.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Processes

/// Send a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) with the shell's `kill` builtin
/// (no `unsafe`, no procps needed).
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run sh to send a signal")?;
    if !status.success() {
        bail!("kill -s {signal} {pid} failed ({status})");
    }
    Ok(())
}

/// `Some(state letter)` from /proc/PID/stat, `None` when the process is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Parent PID from /proc/PID/stat.
fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// True while `pid` exists and is not a zombie.
fn proc_alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

fn proc_cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The live pcscd processes that own *our* /run/pcscd: those in this process's mount
/// namespace. A pcscd in another mount namespace (another checkout's tests inside
/// `scripts/sandbox`, which has its own /run) neither conflicts with ours nor is ours to
/// kill: regression for an outside test run that SIGKILLed a sandboxed run's pcscd.
pub fn pcscd_pids() -> Vec<u32> {
    let ours = fs::read_link("/proc/self/ns/mnt").ok();
    pids_named("pcscd")
        .into_iter()
        .filter(|pid| {
            // Unreadable (no permission): count it, as before namespaces were looked at.
            let theirs = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
            ours.is_none() || theirs.is_none() || theirs == ours
        })
        .collect()
}

/// PIDs of live processes whose comm is `name` (read from /proc: procps may be absent).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
                && proc_alive(*pid)
        })
        .collect()
}

/// Watchdog: kills `child` (if it is still the process called `comm`) once this test process
/// is gone; exits by itself when the child is gone.
const WATCHDOG: &str = r#"
parent=$1; child=$2; comm=$3
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.2; done
if kill -0 "$child" 2>/dev/null && [ "$(cat /proc/$child/comm 2>/dev/null)" = "$comm" ]; then
    kill -s TERM "$child" 2>/dev/null; kill -s CONT "$child" 2>/dev/null
    i=0
    while [ $i -lt 10 ] && kill -0 "$child" 2>/dev/null; do sleep 0.1; i=$((i+1)); done
    kill -s KILL "$child" 2>/dev/null
fi
"#;

/// A child process with a watchdog that kills it if the test process dies first.
#[derive(Debug)]
struct Guarded {
    child: Child,
    watchdog: Option<Child>,
}

impl Guarded {
    fn spawn(cmd: &mut Command, comm: &str) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
        let watchdog = Command::new("sh")
            .args([
                "-c",
                WATCHDOG,
                "civic-e2e-watchdog",
                &std::process::id().to_string(),
                &child.id().to_string(),
                comm,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut me = Self {
            child,
            watchdog: None,
        };
        match watchdog {
            Ok(w) => me.watchdog = Some(w),
            Err(e) => {
                me.kill();
                return Err(e).context("spawn the watchdog (sh)");
            }
        }
        Ok(me)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// SIGKILL and reap.
    fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        let st = self.child.wait().ok();
        self.stop_watchdog();
        st
    }

    /// SIGTERM (and SIGCONT, in case it is paused); SIGKILL after `grace`.
    fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.try_status() {
            self.stop_watchdog();
            return Some(st);
        }
        let _ = send_signal(self.pid(), "TERM");
        let _ = send_signal(self.pid(), "CONT");
        match self.wait_exit(grace) {
            Some(st) => {
                self.stop_watchdog();
                Some(st)
            }
            None => {
                eprintln!(
                    "civic-e2e: pid {} ignored SIGTERM for {grace:?}: SIGKILL",
                    self.pid()
                );
                self.kill()
            }
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            self.kill();
        }
        self.stop_watchdog();
    }
}

fn file_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// PC/SC helpers

fn establish() -> Result<pcsc::Context> {
    pcsc::Context::establish(pcsc::Scope::User).context("SCardEstablishContext")
}

/// Reader names as pcscd lists them. Call through [`with_timeout`] when a card may be frozen.
pub fn list_readers() -> Result<Vec<String>> {
    let ctx = establish()?;
    let names = match ctx.list_readers_owned() {
        Ok(n) => n,
        Err(pcsc::Error::NoReadersAvailable) => Vec::new(),
        Err(e) => return Err(e).context("SCardListReaders"),
    };
    Ok(names
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect())
}

/// pcscd's current state flags for `reader` (no connection to the card).
pub fn reader_state(reader: &str) -> Result<pcsc::State> {
    let ctx = establish()?;
    let mut states = [pcsc::ReaderState::new(
        CString::new(reader).context("reader name")?,
        pcsc::State::UNAWARE,
    )];
    ctx.get_status_change(Duration::ZERO, &mut states)
        .with_context(|| format!("SCardGetStatusChange({reader})"))?;
    Ok(states[0].event_state())
}

/// True when pcscd reports a (responsive) card in `reader`.
/// Another application connects to `reader` and leaves with a reset (as dropping a
/// `pcsc::Card` does). Our handle then gets SCARD_W_RESET_CARD.
pub fn other_client_resets(reader: &str) -> Result<()> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User)?;
    let other = ctx.connect(
        &std::ffi::CString::new(reader)?,
        pcsc::ShareMode::Shared,
        pcsc::Protocols::ANY,
    )?;
    other
        .disconnect(pcsc::Disposition::ResetCard)
        .map_err(|(_, e)| e)?;
    Ok(())
}

pub fn card_present(reader: &str) -> Result<bool> {
    let s = reader_state(reader)?;
    Ok(s.contains(pcsc::State::PRESENT) && !s.contains(pcsc::State::MUTE))
}

/// Wait (bounded, event driven) until pcscd reports `reader` with a card (`present`) or
/// empty. Safe to call with a frozen card: the whole wait runs under [`with_timeout`].
pub fn wait_card_state(reader: &str, present: bool, bound: Duration) -> Result<()> {
    let name = reader.to_owned();
    let outcome = with_timeout(bound + Duration::from_secs(2), move || -> Result<()> {
        let deadline = Instant::now() + bound;
        let ctx = establish()?;
        let mut states = [pcsc::ReaderState::new(
            CString::new(name.as_str()).context("reader name")?,
            pcsc::State::UNAWARE,
        )];
        let mut wait = Duration::ZERO;
        loop {
            match ctx.get_status_change(wait, &mut states) {
                Ok(()) | Err(pcsc::Error::Timeout) => {}
                Err(e) => return Err(e).with_context(|| format!("SCardGetStatusChange({name})")),
            }
            let s = states[0].event_state();
            let has_card = s.contains(pcsc::State::PRESENT) && !s.contains(pcsc::State::MUTE);
            if has_card == present {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "reader \"{name}\" still {} after {bound:?} (state {s:?})",
                    if present { "has no card" } else { "has a card" }
                );
            }
            states[0].sync_current_state();
            wait = (deadline - now).min(Duration::from_millis(500));
        }
    });
    match outcome {
        Ok(r) => r,
        Err(t) => Err(anyhow!(
            "waiting for reader \"{reader}\": pcscd did not answer ({t}); is a card frozen?"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// pcscd

/// A pcscd started by the harness with the four-reader configuration in a temporary
/// directory. Dropping it stops it; [`pcscd()`] gives the shared one (never dropped: its
/// watchdog stops it when the test process exits).
#[derive(Debug)]
pub struct Pcscd {
    dir: tempfile::TempDir,
    conf_dir: PathBuf,
    log: PathBuf,
    proc: Mutex<Option<Guarded>>,
}

impl Pcscd {
    /// Write the configuration and start pcscd; returns once the socket exists, the four
    /// vpcd ports listen and PC/SC lists the four readers.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{MARKER}-"))
            .tempdir()
            .context("create pcscd's temporary directory")?;
        let conf_dir = dir.path().join("reader.conf.d");
        fs::create_dir(&conf_dir)?;
        let driver = std::env::var("CIVIC_VPCD_DRIVER").unwrap_or_else(|_| VPCD_DRIVER.into());
        let driver_copy = dir.path().join("libifdvpcd-2.so");
        fs::copy(&driver, &driver_copy).with_context(|| {
            format!("copy the vpcd driver {driver} (is vsmartcard-vpcd installed?)")
        })?;
        let config = format!(
            "# Generated by civic-e2e: four vpcd readers on ports {PORTS:?}.\n\
             FRIENDLYNAME \"Virtual PCD\"\n\
             DEVICENAME /dev/null:0x{:X}\n\
             LIBPATH {driver}\n\
             CHANNELID 0x{:X}\n\n\
             FRIENDLYNAME \"Virtual PCD 2\"\n\
             DEVICENAME /dev/null:0x{:X}\n\
             LIBPATH {}\n\
             CHANNELID 0x{:X}\n",
            PORTS[0],
            PORTS[0],
            PORTS[2],
            driver_copy.display(),
            PORTS[2],
        );
        fs::write(conf_dir.join("civic-vpcd"), config)?;
        let log = dir.path().join("pcscd.log");
        let me = Self {
            dir,
            conf_dir,
            log,
            proc: Mutex::new(None),
        };
        me.launch()?;
        Ok(me)
    }

    fn launch(&self) -> Result<()> {
        let mut slot = lock(&self.proc);
        if let Some(p) = slot.as_mut() {
            if p.try_status().is_none() {
                return Ok(());
            }
        }
        *slot = None;
        ensure_no_foreign_pcscd()?;
        // A SIGKILLed pcscd leaves its socket and pid file behind.
        match fs::remove_dir_all(PCSCD_RUN_DIR) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("remove /run/pcscd (are we root?)"),
        }
        let logfile = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new("pcscd");
        cmd.arg("--foreground").arg("--config").arg(&self.conf_dir);
        if std::env::var("CIVIC_PCSCD_DEBUG").is_ok_and(|v| v == "1") {
            cmd.args(["-a", "-d"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile);
        let mut proc = Guarded::spawn(&mut cmd, "pcscd")
            .context("start pcscd (is the pcscd package installed?)")?;

        let deadline = Instant::now() + PCSCD_START_TIMEOUT;
        let mut last = String::from("no socket yet");
        loop {
            if let Some(st) = proc.try_status() {
                bail!(
                    "pcscd exited during start-up ({st}); log {}:\n{}",
                    self.log.display(),
                    file_tail(&self.log, 25)
                );
            }
            if Path::new(PCSCD_SOCKET).exists() {
                let closed: Vec<u16> = PORTS
                    .iter()
                    .copied()
                    .filter(|p| !port_listening(*p))
                    .collect();
                if closed.is_empty() {
                    match with_timeout(Duration::from_secs(5), list_readers) {
                        Ok(Ok(names)) if READERS.iter().all(|r| names.iter().any(|n| n == r)) => {
                            break
                        }
                        Ok(Ok(names)) => last = format!("readers listed: {names:?}"),
                        Ok(Err(e)) => last = format!("{e:#}"),
                        Err(t) => last = format!("list readers: {t}"),
                    }
                } else {
                    last = format!("vpcd ports not listening yet: {closed:?}");
                }
            }
            if Instant::now() >= deadline {
                proc.terminate(Duration::from_secs(2));
                bail!(
                    "pcscd not ready after {PCSCD_START_TIMEOUT:?} ({last}); log {}:\n{}",
                    self.log.display(),
                    file_tail(&self.log, 25)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        *slot = Some(proc);
        Ok(())
    }

    /// Our pcscd's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut slot = lock(&self.proc);
        let p = slot.as_mut()?;
        p.try_status().is_none().then(|| p.pid())
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// SIGKILL pcscd (a crash: the socket stays behind; clients get SCARD_E_NO_SERVICE).
    pub fn kill(&self) {
        if let Some(mut p) = lock(&self.proc).take() {
            p.kill();
        }
    }

    /// Stop pcscd (SIGTERM, bounded) and remove /run/pcscd.
    pub fn stop(&self) {
        if let Some(mut p) = lock(&self.proc).take() {
            p.terminate(Duration::from_secs(5));
            let _ = fs::remove_dir_all(PCSCD_RUN_DIR);
        }
    }

    /// Start pcscd again (after [`Pcscd::kill`] or [`Pcscd::stop`]) with the same config.
    /// Cards reconnect by themselves (about a second later).
    pub fn restart(&self) -> Result<()> {
        self.stop();
        self.launch()
    }

    /// The temporary directory holding the config and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of pcscd's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when something listens on TCP `port` (from /proc/net/tcp{,6}; no iproute2 needed).
pub fn port_listening(port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[3] == "0A" && cols[1].ends_with(&suffix)
            })
        })
    })
}

/// Fail unless no pcscd runs, except ours. A pcscd from an earlier test binary (its config
/// path carries our marker) is being stopped by its watchdog: wait for it, then kill it.
fn ensure_no_foreign_pcscd() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let others = pcscd_pids();
        if others.is_empty() {
            return Ok(());
        }
        let me = std::process::id();
        if let Some(pid) = others.iter().find(|p| proc_ppid(**p) == Some(me)) {
            bail!(
                "this test process already runs a pcscd (pid {pid}): use the shared \
                 civic_e2e::pcscd() or drop the other Pcscd first"
            );
        }
        let foreign: Vec<(u32, String)> = others
            .iter()
            .map(|p| (*p, proc_cmdline(*p)))
            // An empty command line is a process already exiting (its memory, and with it
            // its argv, is gone): regression for a leftover test pcscd taken for a foreign
            // one while its watchdog was still killing it.
            .filter(|(_, c)| !c.is_empty() && !c.contains(MARKER))
            .collect();
        if let Some((pid, cmdline)) = foreign.first() {
            bail!(
                "a pcscd not started by the tests is running (pid {pid}: {cmdline}). Only one \
                 pcscd can own {PCSCD_SOCKET}: stop it (e.g. /etc/init.d/pcscd stop, or \
                 kill {pid}) and rerun"
            );
        }
        if Instant::now() >= deadline {
            for pid in &others {
                eprintln!("civic-e2e: killing leftover test pcscd (pid {pid})");
                let _ = send_signal(*pid, "KILL");
            }
            thread::sleep(Duration::from_millis(200));
            if !pcscd_pids().is_empty() {
                bail!("a leftover test pcscd (pids {others:?}) does not go away");
            }
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

static SHARED_PCSCD: Mutex<Option<&'static Pcscd>> = Mutex::new(None);

/// The shared pcscd of this test binary: started on first use, restarted if a test killed it;
/// running when this returns. Panics (failing the test) with the reason when it cannot start,
/// e.g. a pcscd the tests did not start is running. Take [`serial`] first.
pub fn pcscd() -> &'static Pcscd {
    let mut shared = lock(&SHARED_PCSCD);
    if let Some(p) = *shared {
        if !p.is_running() {
            if let Err(e) = p.launch() {
                panic!("cannot restart pcscd for the end-to-end tests: {e:#}");
            }
        }
        return p;
    }
    match Pcscd::start() {
        Ok(p) => {
            let p: &'static Pcscd = Box::leak(Box::new(p));
            *shared = Some(p);
            p
        }
        Err(e) => panic!("cannot start pcscd for the end-to-end tests: {e:#}"),
    }
}

// ---------------------------------------------------------------------------------------
// Binaries

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where `civic-card` and `civic` are taken from (see the crate docs).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CIVIC_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace_root().join(t),
        None => workspace_root().join("target"),
    };
    let release = target.join("release");
    let debug = target.join("debug");
    if !release.join("civic-card").exists() && debug.join("civic-card").exists() {
        debug
    } else {
        release
    }
}

fn existing_bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (cargo build --workspace --release --bins) or set \
             CIVIC_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// Path of the `civic-card` binary.
pub fn card_bin() -> PathBuf {
    bin_dir().join("civic-card")
}

/// Path of the `civic` CLI.
pub fn civic_bin() -> PathBuf {
    bin_dir().join("civic")
}

/// Run a command with piped stdio, optional stdin, and a bound: on timeout the child is
/// killed and the error carries what it printed so far.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<&[u8]>, bound: Duration) -> Result<Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let read_all = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read_all(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = read_all(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    // A grandchild holding the pipes open would block these joins; the child is gone.
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "{cmd:?} timed out after {bound:?} and was killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Run the `civic` CLI with `args`, optional stdin and extra environment, bounded by
/// [`CIVIC_TIMEOUT`] (the child is killed on timeout).
pub fn run_civic(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Result<Output> {
    run_civic_timeout(args, stdin, env, CIVIC_TIMEOUT)
}

/// [`run_civic`] with an explicit bound.
pub fn run_civic_timeout(
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
    bound: Duration,
) -> Result<Output> {
    let mut cmd = Command::new(existing_bin("civic")?);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, stdin.map(str::as_bytes), bound)
}

// ---------------------------------------------------------------------------------------
// Virtual cards

/// When a card last left each reader (see [`RECONNECT_GAP`]).
static LAST_GONE: Mutex<[Option<Instant>; 4]> = Mutex::new([None; 4]);

#[derive(Debug, Default)]
struct CardLog {
    text: String,
    connects: usize,
}

type SharedLog = Arc<(Mutex<CardLog>, Condvar)>;

/// A `civic-card` process plugged into one of the four readers. Dropping it kills it.
#[derive(Debug)]
pub struct VirtualCard {
    index: usize,
    state: PathBuf,
    proc: Option<Guarded>,
    log: SharedLog,
    /// A command the card is started through (e.g. `nsenter -t PID -m --`), or empty.
    wrapper: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl VirtualCard {
    /// [`VirtualCard::start`] through `wrapper` (a program and its arguments that end by
    /// running the command after them, e.g. `nsenter -t PID -m --` to see a private mount).
    pub fn start_wrapped(index: usize, state: impl AsRef<Path>, wrapper: &[&str]) -> Result<Self> {
        let mut card = Self::new(index, state.as_ref());
        card.wrapper = wrapper.iter().map(|s| (*s).to_owned()).collect();
        card.launch()?;
        Ok(card)
    }

    /// A blank card (no state file yet) in reader `index`; the state lives in a temporary
    /// directory owned by the card.
    pub fn blank(index: usize) -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("civic-e2e-card-")
            .tempdir()?;
        let state = tmp.path().join("card.state");
        let mut card = Self::new(index, &state);
        card._tmp = Some(tmp);
        card.launch()?;
        Ok(card)
    }

    /// A card with state file `state` (missing = blank, created on first write) in reader
    /// `index`. Returns once pcscd shows the card in that reader. Needs a running pcscd.
    pub fn start(index: usize, state: impl AsRef<Path>) -> Result<Self> {
        let mut card = Self::new(index, state.as_ref());
        card.launch()?;
        Ok(card)
    }

    fn new(index: usize, state: &Path) -> Self {
        assert!(index < READERS.len(), "reader index {index} out of 0..4");
        Self {
            index,
            state: state.to_path_buf(),
            proc: None,
            log: Arc::new((Mutex::new(CardLog::default()), Condvar::new())),
            wrapper: Vec::new(),
            _tmp: None,
        }
    }

    fn launch(&mut self) -> Result<()> {
        if let Some(p) = self.proc.as_mut() {
            if p.try_status().is_none() {
                bail!("card in reader {} is already running", self.index);
            }
        }
        let bin = existing_bin("civic-card")?;
        if !Path::new(PCSCD_SOCKET).exists() {
            bail!("no pcscd running: call civic_e2e::pcscd() before starting cards");
        }
        let reader = self.reader();
        // The slot must be empty (a leftover card on this port would be taken for ours).
        wait_card_state(&reader, false, Duration::from_secs(3)).with_context(|| {
            format!(
                "reader \"{reader}\" already has a card: is another civic-card connected to \
                 port {}?",
                self.port()
            )
        })?;
        let gone = lock(&LAST_GONE)[self.index];
        if let Some(since) = gone.map(|t| t.elapsed()) {
            if since < RECONNECT_GAP {
                thread::sleep(RECONNECT_GAP - since);
            }
        }

        let connects_before = lock(&self.log.0).connects;
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--state")
            .arg(&self.state)
            .args(["--vpcd-host", "127.0.0.1", "--vpcd-port"])
            .arg(self.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Guarded::spawn(&mut cmd, "civic-card")?;
        if let Some(stderr) = proc.child.stderr.take() {
            let log = Arc::clone(&self.log);
            thread::Builder::new()
                .name(format!("civic-card-{}-stderr", self.index))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        let (m, cv) = &*log;
                        let mut l = lock(m);
                        if line.contains("civic-card: connected to") {
                            l.connects += 1;
                        }
                        l.text.push_str(&line);
                        l.text.push('\n');
                        cv.notify_all();
                    }
                })?;
        }
        self.proc = Some(proc);

        if let Err(e) = self.wait_connects(connects_before + 1, CARD_CONNECT_TIMEOUT) {
            self.kill_quietly();
            return Err(e);
        }
        if let Err(e) = wait_card_state(&reader, true, CARD_SEEN_TIMEOUT) {
            let log = self.log();
            self.kill_quietly();
            return Err(e.context(format!("card log:\n{log}")));
        }
        Ok(())
    }

    fn wait_connects(&mut self, n: usize, bound: Duration) -> Result<()> {
        let deadline = Instant::now() + bound;
        loop {
            {
                let (m, cv) = &*self.log;
                let l = lock(m);
                if l.connects >= n {
                    return Ok(());
                }
                let _ = cv
                    .wait_timeout(l, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner());
            }
            if let Some(st) = self.proc.as_mut().and_then(Guarded::try_status) {
                bail!(
                    "civic-card (reader {}) exited ({st}) before connecting; its stderr:\n{}",
                    self.index,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "civic-card did not print \"connected\" for port {} within {bound:?}; its \
                     stderr:\n{}",
                    self.port(),
                    self.log()
                );
            }
        }
    }

    /// Wait until the card has connected to vpcd `n` times in total (e.g. after pcscd was
    /// restarted, `connect_count() + 1`).
    pub fn wait_reconnected(&mut self, n: usize, bound: Duration) -> Result<()> {
        self.wait_connects(n, bound)?;
        wait_card_state(&self.reader(), true, CARD_SEEN_TIMEOUT)
    }

    /// How many times this card printed its "connected" line (over restarts).
    pub fn connect_count(&self) -> usize {
        lock(&self.log.0).connects
    }

    fn mark_gone(&self) {
        lock(&LAST_GONE)[self.index] = Some(Instant::now());
    }

    fn kill_quietly(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
            self.mark_gone();
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn reader(&self) -> String {
        reader_name(self.index)
    }

    pub fn port(&self) -> u16 {
        port(self.index)
    }

    pub fn state_path(&self) -> &Path {
        &self.state
    }

    /// PID while the process exists (also while paused).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Guarded::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_status().is_none())
    }

    /// Everything the card printed on stderr so far.
    pub fn log(&self) -> String {
        lock(&self.log.0).text.clone()
    }

    /// SIGKILL (a card pulled out mid-operation, or power lost). Waits for the process to be
    /// gone, not for pcscd to notice (use [`VirtualCard::wait_absent`]).
    pub fn kill(&mut self) {
        self.kill_quietly();
    }

    /// SIGTERM, bounded wait (then SIGKILL); returns the exit status (0 expected).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut p = self
            .proc
            .take()
            .ok_or_else(|| anyhow!("card is not running"))?;
        let st = p.terminate(Duration::from_secs(5));
        self.mark_gone();
        st.ok_or_else(|| anyhow!("civic-card did not exit"))
    }

    /// SIGSTOP: a frozen card. PC/SC clients of this reader hang until [`VirtualCard::resume`]:
    /// use [`with_timeout`].
    pub fn pause(&self) -> Result<()> {
        send_signal(
            self.pid().ok_or_else(|| anyhow!("card not running"))?,
            "STOP",
        )
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<()> {
        send_signal(
            self.pid().ok_or_else(|| anyhow!("card not running"))?,
            "CONT",
        )
    }

    /// Start the card again with the same state file (after kill/stop; waits out
    /// [`RECONNECT_GAP`] and until pcscd shows it).
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        self.launch()
    }

    /// Wait until pcscd shows no card in this reader.
    pub fn wait_absent(&self, bound: Duration) -> Result<()> {
        wait_card_state(&self.reader(), false, bound)
    }

    /// Wait until pcscd shows a card in this reader.
    pub fn wait_present(&self, bound: Duration) -> Result<()> {
        wait_card_state(&self.reader(), true, bound)
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        self.kill_quietly();
    }
}
