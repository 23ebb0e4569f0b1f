//! `civic provision`: issuing office personalises a blank card, or a batch of them
//! (`--batch FILE.csv`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use card_applet::protocol::LifeCycle;
use civic_reader::apdu::ApduMode;
use civic_reader::office::IssuanceBook;
use civic_reader::session::{CardInfo, Session};
use civic_reader::transport::{list_readers, PcscTransport, Transport};
use civic_reader::workflow::batch::{self, BatchSummary, CardSource, Pass, Progress};
use civic_reader::workflow::provision::{
    provision, Bureau, CitizenData, Office, Provisioned, Validity,
};
use civic_registry::credential::Kind;
use civic_registry::{keys, Registry};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Ctx, Exit, PinSource, ReaderArg};

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Reader name (or a unique part of it); default: the first reader with a card. With
    /// --batch, repeat it for several readers (default: every reader)
    #[arg(long, short = 'r', env = "CIVIC_READER")]
    reader: Vec<String>,
    /// The citizen's data (JSON: card_id?, identity{name,birth_date}, health?, education?)
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    citizen: Option<PathBuf>,
    /// Provision one card per row of a CSV file with the header
    /// card_id,name,birth_date,pin,blood_type,allergies,emergency_contact,chronic_conditions,vaccinations,degrees
    /// (lists separated by ';', vaccinations as name@YYYY-MM-DD, degrees as
    /// title@institution@year; empty health columns: no health credential; empty degrees: no
    /// education credential). THE PIN COLUMN IS SENSITIVE: never printed or stored; keep the
    /// file on encrypted storage and delete it after the run. Interrupted? Run the same file
    /// again: it resumes. Exit code 1 if some rows were skipped
    #[arg(long, value_name = "FILE.csv")]
    batch: Option<PathBuf>,
    #[command(flatten)]
    pin: PinSource,
    /// Bureau signing the identity credential (default: the one bureau held here for it)
    #[arg(long)]
    identity_issuer: Option<String>,
    /// Bureau signing the health credential
    #[arg(long)]
    health_issuer: Option<String>,
    /// Bureau signing the education credential
    #[arg(long)]
    education_issuer: Option<String>,
}

/// What provisioning needs from this office's data directory, for one card or a batch (CLI
/// and desk): the registry to anchor in, the issuance book, the authority key and the bureaus
/// this office holds keys for.
pub struct OfficeDesk {
    data: civic_reader::datadir::DataDir,
    pub registry: Box<dyn Registry>,
    pub book: IssuanceBook,
    authority_public_key: [u8; 65],
    issuers: Vec<civic_registry::IssuerRecord>,
    pub now: u64,
}

/// Which bureau signs each kind (`--identity-issuer` and so on); `None`: the one held here.
#[derive(Debug, Default, Clone)]
pub struct BureauChoice {
    pub identity: Option<String>,
    pub health: Option<String>,
    pub education: Option<String>,
}

impl OfficeDesk {
    pub fn open(ctx: &Ctx) -> Result<Self> {
        let data = ctx.data()?;
        let registry = data.registry_writer()?;
        let authority_public_key = keys::public_key_bytes(&registry.authority_key()?);
        let book = IssuanceBook::open(&data.office_db())?;
        let issuers = registry.issuers()?;
        Ok(Self {
            data,
            registry,
            book,
            authority_public_key,
            issuers,
            now: civic_reader::now(),
        })
    }

    /// The bureau that signs `kind` credentials, as `choice` names it or the only one held here.
    pub fn bureau(&self, choice: &BureauChoice, kind: Kind) -> Result<Bureau> {
        let chosen = match kind {
            Kind::Identity => &choice.identity,
            // The emergency subset comes from the bureau that signs the health record.
            Kind::Health | Kind::Emergency => &choice.health,
            Kind::Education => &choice.education,
        };
        // Certificates whose key this office holds: after a rotation only the newest
        // certificate of a bureau matches its key file.
        let mut candidates: Vec<Bureau> = Vec::new();
        for i in self
            .issuers
            .iter()
            .filter(|i| chosen.as_ref().is_none_or(|c| *c == i.body.issuer_id))
            .filter(|i| i.body.may_issue(kind, self.now))
            .filter(|i| self.data.issuer_key(&i.body.issuer_id).exists())
        {
            let key = self.data.load_issuer(&i.body.issuer_id)?;
            if keys::public_key_bytes(key.verifying_key()).as_slice() == i.body.public_key {
                candidates.push(Bureau {
                    cert: i.body.clone(),
                    key,
                });
            }
        }
        match candidates.len() {
            1 => Ok(candidates.remove(0)),
            0 => bail!(
                "no bureau held by this office may issue {kind} credentials now \
                 (register one with `civic issuer add --kinds {kind} ...`)"
            ),
            _ => bail!(
                "several bureaus may issue {kind} credentials: choose one with --{kind}-issuer"
            ),
        }
    }

    /// Split borrows: the registry to write, and the office (book, authority key) to read.
    pub fn parts(&mut self) -> (&mut Box<dyn Registry>, Office<'_>) {
        (
            &mut self.registry,
            Office {
                authority_public_key: self.authority_public_key,
                book: &self.book,
                validity: Validity::default(),
            },
        )
    }
}

/// Provision the blank card `t` holds for `citizen` with `pin` (CLI and desk).
pub fn provision_card(
    ctx: &Ctx,
    desk: &mut OfficeDesk,
    choice: &BureauChoice,
    t: &mut dyn Transport,
    citizen: &CitizenData,
    pin: &civic_reader::session::Pin,
) -> Result<Provisioned> {
    let now = desk.now;
    let bureau_for = bureau_lookup(desk, choice);
    let (registry, office) = desk.parts();
    provision(
        t,
        ctx.mode,
        registry,
        &office,
        &bureau_for,
        citizen,
        pin,
        now,
    )
}

/// A `bureau_for` over the bureaus `choice` picks for every kind, chosen up front (the
/// workflows ask per kind; the errors of kinds the run never needs are never shown).
fn bureau_lookup(desk: &OfficeDesk, choice: &BureauChoice) -> impl Fn(Kind) -> Result<Bureau> {
    let bureaus: Vec<(Kind, Result<Bureau, String>)> = [
        Kind::Identity,
        Kind::Health,
        Kind::Emergency,
        Kind::Education,
    ]
    .into_iter()
    .map(|k| (k, desk.bureau(choice, k).map_err(|e| format!("{e:#}"))))
    .collect();
    move |kind| match bureaus.iter().find(|(k, _)| *k == kind) {
        Some((_, Ok(b))) => Ok(Bureau {
            cert: b.cert.clone(),
            key: b.key.clone(),
        }),
        Some((_, Err(e))) => Err(anyhow::anyhow!("{e}")),
        None => bail!("no bureau for {kind}"),
    }
}

/// Run (or resume) a batch file's bytes from the given readers (CLI and desk); `progress` and
/// `notes` report as it goes. The file's broken rows are in `file.problems` and the summary's
/// skipped rows: the other rows are provisioned.
#[allow(clippy::too_many_arguments)]
pub fn run_batch_bytes(
    ctx: &Ctx,
    desk: &mut OfficeDesk,
    choice: &BureauChoice,
    readers: Vec<String>,
    file: &batch::BatchFile,
    progress: &mut dyn Progress,
    notes: &dyn Fn(&str),
) -> Result<BatchSummary> {
    let now = desk.now;
    let bureau_for = bureau_lookup(desk, choice);
    let mut source = PcscSource {
        single: readers.len() == 1,
        readers,
        mode: ctx.mode,
        card_timeout: ctx.card_timeout,
        notes,
        passwords: Box::new(|| ctx.passwords(None)),
    };
    let (registry, office) = desk.parts();
    batch::run_batch(
        &mut source,
        ctx.mode,
        registry,
        &office,
        &bureau_for,
        file,
        progress,
        now,
    )
}

pub fn run(ctx: &Ctx, a: ProvisionArgs) -> Result<Exit> {
    let mut office = OfficeDesk::open(ctx)?;
    let choice = BureauChoice {
        identity: a.identity_issuer.clone(),
        health: a.health_issuer.clone(),
        education: a.education_issuer.clone(),
    };

    if let Some(path) = &a.batch {
        if a.pin.pin_stdin {
            bail!("--pin-stdin does not apply to --batch: the PINs are in the file's pin column");
        }
        // The file holds PINs: keep its bytes in memory that is wiped on drop.
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        );
        let file = batch::parse_csv(&bytes)
            .with_context(|| format!("{} is not a batch file", path.display()))?;
        drop(bytes);
        for p in &file.problems {
            eprintln!(
                "civic: {}: line {}: {} (row skipped)",
                path.display(),
                p.line,
                p.reason
            );
        }
        let bar = if ctx.json || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        };
        let mut progress = Bars { bar: bar.clone() };
        let notes = |m: &str| note(&bar, m);
        let summary = run_batch_bytes(
            ctx,
            &mut office,
            &choice,
            a.reader.clone(),
            &file,
            &mut progress,
            &notes,
        );
        bar.finish_and_clear();
        let summary =
            summary.context("the batch run was interrupted (run the same file again to resume)")?;
        print_summary(ctx, path, &summary)?;
        return Ok(if summary.complete() {
            Exit::Ok
        } else {
            Exit::Negative
        });
    }

    let citizen_path = a
        .citizen
        .as_ref()
        .context("--citizen or --batch is needed")?;
    let text = std::fs::read_to_string(citizen_path)
        .with_context(|| format!("reading {}", citizen_path.display()))?;
    let citizen: CitizenData = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid citizen file", citizen_path.display()))?;
    if a.reader.len() > 1 {
        bail!("one card, one reader: several --reader only with --batch");
    }
    let pin = a.pin.read_new("Citizen's new PIN (6 digits): ")?;
    let mut t = connect_blank(
        ctx,
        &ReaderArg {
            reader: a.reader.first().cloned(),
        },
    )?;
    let done = provision_card(ctx, &mut office, &choice, &mut t, &citizen, &pin)?;
    if ctx.json {
        // The CAN too (issue 7): the operator prints it on the card, as the text output says.
        #[derive(serde::Serialize)]
        struct WithCan<'a, T: serde::Serialize> {
            #[serde(flatten)]
            done: &'a T,
            can: Option<&'a str>,
        }
        let can = office.book.can_of(&done.card_id)?;
        ctx.print_json(&WithCan {
            done: &done,
            can: can.as_deref().map(String::as_str),
        })?;
    } else {
        println!(
            "Provisioned card {} in reader {}",
            done.card_id,
            t.inner().reader()
        );
        println!(
            "  card key   generated on the card: {}…",
            &hex::encode(done.card_public_key)[..24]
        );
        for c in &done.credentials {
            println!(
                "  {:<10} signed by {:<18} status index {:<4} batch {} anchored",
                c.kind.as_str(),
                c.issuer_id,
                c.status_index,
                c.batch_id
            );
        }
        println!(
            "  PIN set, card activated (registry block {})",
            done.registry_height
        );
        if let Some(can) = office.book.can_of(&done.card_id)? {
            println!(
                "  access no. {} (CAN, the secure channel's password: print it on the card)",
                can.as_str()
            );
        }
    }
    Ok(Exit::Ok)
}

fn print_summary(ctx: &Ctx, path: &std::path::Path, s: &BatchSummary) -> Result<()> {
    if ctx.json {
        return ctx.print_json(s);
    }
    println!(
        "Batch {} ({}{}): {} provisioned, {} already done earlier, {} skipped",
        s.run_id,
        path.display(),
        if s.resumed { ", resumed" } else { "" },
        s.provisioned.len(),
        s.already_done.len(),
        s.skipped.len()
    );
    for b in &s.batches {
        println!(
            "  batch {:<4} {:<18} {:>5} credential{}   status indices {} to {}",
            b.batch_id,
            b.issuer_id,
            b.size,
            if b.size == 1 { "" } else { "s" },
            b.first_status_index,
            (u64::from(b.first_status_index) + u64::from(b.status_count)).saturating_sub(1)
        );
    }
    for d in &s.provisioned {
        println!("  provisioned  line {:<5} {}", d.line, d.card_id);
    }
    for p in &s.skipped {
        println!("  skipped      line {:<5} {}", p.line, p.reason);
    }
    Ok(())
}

/// A line for the operator: above the progress bar, or on stderr when there is none.
fn note(bar: &ProgressBar, msg: &str) {
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}

/// Cards from PC/SC readers: poll until one holds a card the run wants.
struct PcscSource<'c> {
    /// Reader names (or parts of them); empty: every reader.
    readers: Vec<String>,
    /// One reader named: tell the operator when to swap cards.
    single: bool,
    /// Lines for the operator (above the progress bar, or on the desk's page).
    notes: &'c dyn Fn(&str),
    /// The secure channel's password source for each connection.
    passwords: Box<dyn Fn() -> civic_reader::sm::PasswordSource + 'c>,
    mode: ApduMode,
    card_timeout: Duration,
}

impl PcscSource<'_> {
    fn ours(&self, name: &str) -> bool {
        self.readers.is_empty() || self.readers.iter().any(|r| name == r || name.contains(r))
    }

    /// One look at every reader of ours that holds a card: the first card `wanted` accepts
    /// (given what SELECT says about it), connected behind secure messaging.
    fn first_wanted(
        &self,
        readers: &[(String, bool)],
        wanted: &dyn Fn(&CardInfo) -> bool,
    ) -> Option<civic_reader::sm::SmTransport<PcscTransport>> {
        for (name, present) in readers {
            if !present || !self.ours(name) {
                continue;
            }
            let Ok(t) = PcscTransport::connect_with_timeout(Some(name), self.card_timeout) else {
                continue;
            };
            let mut t = civic_reader::sm::SmTransport::new(t, (self.passwords)())
                .short_apdus_only(self.mode == ApduMode::Short);
            let info = match Session::open(&mut t, self.mode) {
                Ok(s) => s.info().clone(),
                Err(_) => continue,
            };
            if wanted(&info) {
                return Some(t);
            }
        }
        None
    }
}

/// A blank card: still in personalisation, without a card key.
fn is_blank(i: &CardInfo) -> bool {
    i.life_cycle == LifeCycle::Personalisation && !i.has_card_key
}

/// The card to provision one citizen onto: the card in `reader` if one is named, else the
/// first blank card in any reader (an issued card in the first reader is not taken for it).
pub fn connect_blank(
    ctx: &Ctx,
    reader: &ReaderArg,
) -> Result<civic_reader::sm::SmTransport<PcscTransport>> {
    if reader.reader.is_some() {
        return ctx.connect(reader);
    }
    let source = PcscSource {
        readers: Vec::new(),
        single: false,
        notes: &|_| {},
        passwords: Box::new(|| ctx.passwords(None)),
        mode: ctx.mode,
        card_timeout: ctx.card_timeout,
    };
    let readers = list_readers().context("listing PC/SC readers")?;
    source
        .first_wanted(&readers, &is_blank)
        .context("no blank card in any reader: insert one, or name the reader (--reader)")
}

impl CardSource for PcscSource<'_> {
    fn next_card(
        &mut self,
        what: &str,
        wanted: &dyn Fn(&CardInfo) -> bool,
    ) -> Result<Option<Box<dyn Transport + '_>>> {
        let mut told = false;
        loop {
            let readers = list_readers().context("listing PC/SC readers")?;
            let ours: Vec<&String> = readers
                .iter()
                .map(|(n, _)| n)
                .filter(|n| self.ours(n))
                .collect();
            if ours.is_empty() {
                bail!("no reader matches {:?} (see `civic readers`)", self.readers);
            }
            if let Some(t) = self.first_wanted(&readers, wanted) {
                return Ok(Some(Box::new(t)));
            }
            if !told {
                let names: Vec<&str> = ours.iter().map(|s| s.as_str()).collect();
                (self.notes)(&format!("Insert {what} into {}", names.join(" or ")));
                told = true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn card_done(&mut self, card_id: &str, pass: Pass) {
        if self.single {
            let done = match pass {
                Pass::Key => "keyed (it will be asked for again to be written)",
                Pass::Write => "provisioned",
            };
            (self.notes)(&format!("Card {card_id} {done}: remove it"));
        }
    }
}

/// The progress bar: one per pass.
struct Bars {
    bar: ProgressBar,
}

impl Progress for Bars {
    fn pass(&mut self, pass: Pass, cards: u64) {
        self.bar.set_length(cards);
        self.bar.set_position(0);
        self.bar.set_message(match pass {
            Pass::Key => "keying cards (pass 1 of 2)",
            Pass::Write => "writing cards (pass 2 of 2)",
        });
    }
    fn card(&mut self, _pass: Pass, _line: u64, _card_id: &str) {
        self.bar.inc(1);
    }
    fn anchored(&mut self, issuer_id: &str, batch_id: u64, size: u64) {
        note(
            &self.bar,
            &format!("Anchored batch {batch_id} of {issuer_id}: {size} credentials"),
        );
    }
}
