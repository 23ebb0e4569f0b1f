//! A bound on every call into the card, for the CLI.
//!
//! A frozen card (or a stuck reader driver) blocks `SCardTransmit`, `SCardConnect` and
//! `SCardBeginTransaction` in pcscd with no timeout of their own (NOTES-pcsc.md: a SIGSTOPped
//! card hangs every client), and `SCardCancel` does not cancel a transmit. A clerk must not be
//! left with a terminal that never comes back, so each such call is armed on a watchdog; if
//! it is still running when the bound passes, the process says which reader did not answer
//! and exits with code 3 ("could not run"). Nothing is lost by leaving that way: the card
//! commits its own state before it answers, and no `civic` database is written while a card
//! call is in flight on that thread (SQLite rolls back a transaction cut short anyway).

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use civic_reader::transport::{PcscTransport, Transport, TransportError};

/// The default bound on one card call. Generous: a real chip generating a key or a slow
/// contactless link takes seconds, not tens of seconds.
pub const DEFAULT_CARD_TIMEOUT: Duration = Duration::from_secs(30);

struct Watchdog {
    /// The bound for each call.
    bound: Duration,
    /// Armed calls: (id, deadline, reader). Several threads (batch provisioning) may each
    /// have one in flight.
    armed: Mutex<Vec<(u64, Instant, String)>>,
    changed: Condvar,
    next_id: Mutex<u64>,
}

static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

/// Set the bound for every card call in this process (once, at start-up); `None` = no bound.
pub fn install(bound: Option<Duration>) {
    let Some(bound) = bound.filter(|b| !b.is_zero()) else {
        return;
    };
    let dog = WATCHDOG.get_or_init(|| Watchdog {
        bound,
        armed: Mutex::new(Vec::new()),
        changed: Condvar::new(),
        next_id: Mutex::new(0),
    });
    let spawned = std::thread::Builder::new()
        .name("civic-card-watchdog".into())
        .spawn(move || watch(dog));
    if let Err(e) = spawned {
        eprintln!("civic: cannot start the card watchdog ({e}): card calls are not bounded");
    }
}

fn watch(dog: &'static Watchdog) {
    let mut armed = dog.armed.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        if let Some((_, _, reader)) = armed.iter().find(|(_, d, _)| *d <= now) {
            eprintln!(
                "civic: the card in reader {reader:?} did not answer within {} s (a frozen or \
                 faulty card, or a stuck reader): giving up; take the card out, put it back and \
                 try again (bound: --card-timeout / CIVIC_CARD_TIMEOUT)",
                dog.bound.as_secs_f64()
            );
            std::process::exit(crate::cmd::Exit::Failed as i32);
        }
        let wait = armed
            .iter()
            .map(|(_, d, _)| d.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        armed = dog
            .changed
            .wait_timeout(armed, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Run `f` (one call into the card) under the watchdog, if one is installed.
pub fn bounded<T>(reader: &str, f: impl FnOnce() -> T) -> T {
    let Some(dog) = WATCHDOG.get() else {
        return f();
    };
    let id = {
        let mut n = dog.next_id.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        *n
    };
    {
        let mut armed = dog.armed.lock().unwrap_or_else(|p| p.into_inner());
        armed.push((id, Instant::now() + dog.bound, reader.to_owned()));
        dog.changed.notify_all();
    }
    let out = f();
    let mut armed = dog.armed.lock().unwrap_or_else(|p| p.into_inner());
    armed.retain(|(i, _, _)| *i != id);
    dog.changed.notify_all();
    out
}

/// A PC/SC card connection whose every call is bounded.
/// Dropping it (disconnecting) is bounded too.
#[derive(Debug)]
pub struct Watched {
    inner: Option<PcscTransport>,
    reader: String,
}

impl Watched {
    /// Connect (bounded too: connecting to a frozen card hangs).
    pub fn connect(reader: Option<&str>) -> Result<Self, TransportError> {
        let inner = bounded(reader.unwrap_or("(the first with a card)"), || {
            PcscTransport::connect(reader)
        })?;
        Ok(Self {
            reader: inner.reader().to_owned(),
            inner: Some(inner),
        })
    }

    pub fn reader(&self) -> &str {
        &self.reader
    }

    fn inner(&mut self) -> Result<&mut PcscTransport, TransportError> {
        self.inner
            .as_mut()
            .ok_or(TransportError::Pcsc(pcsc::Error::InvalidHandle))
    }
}

impl Transport for Watched {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let reader = self.reader.clone();
        let inner = self.inner()?;
        bounded(&reader, || inner.transmit(apdu))
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        let reader = self.reader.clone();
        let inner = self.inner()?;
        let tx = bounded(&reader, || inner.transaction())?;
        Ok(Box::new(WatchedTx {
            inner: Some(tx),
            reader,
        }))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(t) = self.inner.take() {
            bounded(&self.reader, || drop(t));
        }
    }
}

/// A transaction (`SCardEndTransaction` on drop, bounded).
struct WatchedTx<'a> {
    inner: Option<Box<dyn Transport + 'a>>,
    reader: String,
}

impl<'a> WatchedTx<'a> {
    fn inner(&mut self) -> Result<&mut (dyn Transport + 'a), TransportError> {
        self.inner
            .as_deref_mut()
            .ok_or(TransportError::Pcsc(pcsc::Error::InvalidHandle))
    }
}

impl Transport for WatchedTx<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let reader = self.reader.clone();
        let inner = self.inner()?;
        bounded(&reader, || inner.transmit(apdu))
    }

    fn transaction(&mut self) -> Result<Box<dyn Transport + '_>, TransportError> {
        let reader = self.reader.clone();
        let inner = self.inner()?;
        let tx = bounded(&reader, || inner.transaction())?;
        Ok(Box::new(WatchedTx {
            inner: Some(tx),
            reader,
        }))
    }
}

impl Drop for WatchedTx<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.inner.take() {
            bounded(&self.reader, || drop(t));
        }
    }
}
