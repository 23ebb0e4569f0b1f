//! `civic desk`: the clinic's, the issuing office's and the citizen's web interface, served on
//! 127.0.0.1 to a browser on this machine (as Germany's AusweisApp serves its interface on
//! localhost). Every page is rendered here; every card and registry operation runs the same
//! functions as the CLI (crate::cmd::*, civic_reader::workflow::*) on a blocking thread.
//!
//! Safety model (README "The desk"; guard.rs does the checking):
//! - the listening socket is 127.0.0.1 only;
//! - a random token per start, printed once in the desk's address, exchanged for an HttpOnly,
//!   SameSite=Strict cookie, and checked on every request (another user on this machine, or a
//!   page in another tab, does not have it);
//! - the Host header must be the desk's own (a DNS-rebinding page has another host name), and
//!   every state-changing request is a POST whose Origin is the desk's own origin;
//! - `Cache-Control: no-store` and a strict Content-Security-Policy on every response;
//! - PINs come in POST bodies only, are parsed into [`Pin`](civic_reader::session::Pin)
//!   (zeroized), never logged, never rendered back; the citizen's session (what their PIN
//!   unlocked) is dropped when the card leaves the reader.

mod guard;
mod i18n;
mod pages;
mod routes;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio::sync::watch;

use crate::cmd::{Ctx, ReaderArg};
use civic_reader::workflow::batch::{BatchSummary, RowProblem};
use civic_reader::workflow::view::ViewReport;

/// The reader and card status the pages show live (Server-Sent Events, `/events`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Live {
    /// Whether pcscd answers.
    pub service: bool,
    pub readers: Vec<ReaderLive>,
    /// The card operation running now ("scan", "view", ...), if any.
    pub busy: Option<&'static str>,
    pub batch: Option<BatchLive>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReaderLive {
    pub name: String,
    pub present: bool,
    /// pcscd's insertion/removal counter for the reader: a card swapped between two polls
    /// still changes it.
    pub events: u32,
}

/// A batch run's progress.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchLive {
    /// "key" or "write" (the two card passes), empty before the first.
    pub pass: String,
    pub done: u64,
    pub total: u64,
    /// The last line for the operator ("Insert a blank card into ...").
    pub note: String,
    pub finished: bool,
}

/// The outcome of the last batch run, for its page.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub running: bool,
    /// Rows the file refused before the run (also in the summary's skipped rows).
    pub problems: Vec<RowProblem>,
    pub summary: Option<BatchSummary>,
    /// Why the run stopped (it resumes when the same file is run again).
    pub error: Option<String>,
}

/// What the citizen's PIN unlocked: held until the card leaves the reader. The PIN itself is
/// not held.
#[derive(Debug)]
pub struct CitizenSession {
    pub reader: String,
    /// The reader's event counter when the session opened.
    pub events: Option<u32>,
    pub report: ViewReport,
}

/// The desk's state, shared by every request.
#[derive(Debug)]
pub struct Desk {
    pub ctx: Ctx,
    /// `--reader`: which reader the desk works with (default: the first with a card).
    pub reader: ReaderArg,
    token: Token,
    /// `127.0.0.1:PORT`: the only Host header accepted.
    host: String,
    /// `http://127.0.0.1:PORT`: the only Origin accepted on a POST.
    origin: String,
    live: watch::Sender<Live>,
    pub citizen: Mutex<Option<CitizenSession>>,
    pub batch: Mutex<BatchResult>,
    /// One card operation at a time: a second one is refused with "busy", never queued behind
    /// a batch that waits for cards.
    card_busy: AtomicBool,
}

/// Held while a card operation runs (see [`Desk::card_busy`]).
pub struct CardGuard {
    desk: Arc<Desk>,
}

impl Drop for CardGuard {
    fn drop(&mut self) {
        self.desk.live.send_modify(|l| l.busy = None);
        self.desk.card_busy.store(false, Ordering::SeqCst);
    }
}

impl Desk {
    pub fn new(ctx: Ctx, reader: ReaderArg, addr: SocketAddr, token: String) -> Arc<Self> {
        let (live, _) = watch::channel(Live::default());
        Arc::new(Self {
            ctx,
            reader,
            token: Token(zeroize::Zeroizing::new(token)),
            host: addr.to_string(),
            origin: format!("http://{addr}"),
            live,
            citizen: Mutex::new(None),
            batch: Mutex::new(BatchResult::default()),
            card_busy: AtomicBool::new(false),
        })
    }

    /// Claim the card for one operation, or `None` when another one holds it.
    pub fn claim_card(self: &Arc<Self>, what: &'static str) -> Option<CardGuard> {
        self.card_busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        self.live.send_modify(|l| l.busy = Some(what));
        Some(CardGuard {
            desk: Arc::clone(self),
        })
    }

    pub fn live(&self) -> Live {
        self.live.borrow().clone()
    }

    pub fn update_batch(&self, f: impl FnOnce(&mut BatchLive)) {
        self.live
            .send_modify(|l| f(l.batch.get_or_insert_with(BatchLive::default)));
    }

    /// The reader's event counter now, if it holds a card.
    pub fn reader_events(&self, reader: &str) -> Option<u32> {
        self.live
            .borrow()
            .readers
            .iter()
            .find(|r| r.name == reader && r.present)
            .map(|r| r.events)
    }

    /// A new reader status from the watcher: ends the citizen's session when their card left.
    fn set_readers(&self, service: bool, readers: Vec<ReaderLive>) {
        {
            let mut citizen = self.citizen.lock().unwrap_or_else(|p| p.into_inner());
            let gone = citizen.as_ref().is_some_and(|s| {
                !readers.iter().any(|r| {
                    r.name == s.reader && r.present && s.events.is_none_or(|e| e == r.events)
                })
            });
            if gone {
                *citizen = None;
            }
        }
        self.live.send_if_modified(|l| {
            let changed = l.service != service || l.readers != readers;
            l.service = service;
            l.readers = readers;
            changed
        });
    }
}

/// This start's token: whoever holds it drives the desk, so it never shows in `Debug` (the
/// desk's state is `Debug`) and is wiped when the desk stops.
struct Token(zeroize::Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A fresh random token: 32 bytes from the OS, hex.
fn new_token() -> String {
    let mut b = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// Watch the readers (a thread of its own: PC/SC calls block). Polls pcscd's reader states
/// every 200 ms with a zero timeout, as `civic readers` does.
fn watch_readers(desk: Arc<Desk>) {
    let mut ctx: Option<pcsc::Context> = None;
    loop {
        if Arc::strong_count(&desk) == 1 {
            return; // the server is gone
        }
        let ok = (|| -> Result<Vec<ReaderLive>, pcsc::Error> {
            let c = match &ctx {
                Some(c) => c,
                None => ctx.insert(pcsc::Context::establish(pcsc::Scope::User)?),
            };
            let names = match c.list_readers_owned() {
                Ok(n) => n,
                Err(pcsc::Error::NoReadersAvailable) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut states: Vec<pcsc::ReaderState> = names
                .iter()
                .map(|n| pcsc::ReaderState::new(n.clone(), pcsc::State::UNAWARE))
                .collect();
            c.get_status_change(Duration::from_millis(0), &mut states)?;
            Ok(states
                .iter()
                .map(|s| ReaderLive {
                    name: s.name().to_string_lossy().into_owned(),
                    present: s.event_state().contains(pcsc::State::PRESENT),
                    events: s.event_count(),
                })
                .collect())
        })();
        match ok {
            Ok(readers) => desk.set_readers(true, readers),
            Err(_) => {
                // pcscd went away (or restarted): a new context next time.
                ctx = None;
                desk.set_readers(false, Vec::new());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The address the desk listens on: 127.0.0.1 only. A desk on another address would hand the
/// citizen's data and the office's keys to the network.
pub fn listen_addr(address: &str, port: u16) -> Result<SocketAddr> {
    let ip: std::net::IpAddr = address
        .parse()
        .with_context(|| format!("{address:?} is not an IP address"))?;
    anyhow::ensure!(
        ip == std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
        "the desk listens on 127.0.0.1 only (it serves personal data and the office's signing \
         keys to whoever can reach it), not on {ip}"
    );
    Ok(SocketAddr::new(ip, port))
}

/// Serve the desk until the process is stopped. `announce` gets the address with the token,
/// once.
pub fn serve(
    ctx: Ctx,
    reader: ReaderArg,
    addr: SocketAddr,
    announce: impl FnOnce(&str),
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the desk's runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let addr = listener.local_addr()?;
        let token = new_token();
        let url = format!("http://{addr}/?token={token}");
        let desk = Desk::new(ctx, reader, addr, token);
        let watcher = Arc::clone(&desk);
        std::thread::Builder::new()
            .name("desk-readers".into())
            .spawn(move || watch_readers(watcher))
            .context("starting the reader watcher")?;
        announce(&url);
        axum::serve(listener, routes::router(desk))
            .await
            .context("serving the desk")
    })
}
