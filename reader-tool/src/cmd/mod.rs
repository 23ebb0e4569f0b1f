//! One module per subcommand; this one holds the CLI grammar, the shared context and the
//! exit codes.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use card_applet::protocol::Status;
use civic_reader::apdu::ApduMode;
use civic_reader::datadir::DataDir;
use civic_reader::session::{CardError, Pin, Session, Terminal};
use civic_reader::sm::{CardPassword, PasswordSource, SmTransport};
use civic_reader::transport::{PcscTransport, Transport};
use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

mod desk;
pub mod pin;
pub mod provision;
mod readers;
mod registry;
mod remove;
pub mod scan;
mod setup;
pub mod status;
mod terminal;
mod verify;
pub mod view;

/// Exit codes: distinct for "the answer is no" and "could not run".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; for scans and verification: everything valid.
    Ok = 0,
    /// Ran, and the verdict is negative (a credential not valid, a broken ledger).
    Negative = 1,
    /// Could not run: no card, no registry, bad input file, I/O.
    Failed = 3,
    /// The card refused: wrong or blocked PIN, missing access right.
    Refused = 4,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

impl Exit {
    pub fn of_error(e: &anyhow::Error) -> Exit {
        use civic_reader::transport::{transport_error_in, TransportError};
        // The card refused the secure channel's password (wrong CAN or PIN, blocked).
        if matches!(
            transport_error_in(e),
            Some(TransportError::PasswordRefused(_))
        ) {
            return Exit::Refused;
        }
        match e.downcast_ref::<CardError>() {
            Some(
                CardError::WrongPin(_)
                | CardError::PinBlocked
                | CardError::MissingRight { .. }
                | CardError::TerminalRefused { .. },
            ) => Exit::Refused,
            Some(CardError::Refused {
                status: Status::SecurityNotSatisfied | Status::Blocked,
                ..
            }) => Exit::Refused,
            _ => Exit::Failed,
        }
    }
}

/// The error chain in one line, outermost context first, with what a clerk should do when
/// the reader or the card went away mid-operation.
pub fn describe_error(e: &anyhow::Error) -> String {
    match transport_hint(e) {
        Some(hint) => format!("{e:#}: {hint}"),
        None => format!("{e:#}"),
    }
}

/// The hint for a reader or pcscd gone mid-operation.
pub const SERVICE: &str = "the smart-card service (pcscd) or the reader went away during the \
    operation (pcscd stopped or restarted, the reader was unplugged) or refused the \
    connection; run the command again once it is back (the card keeps its last committed \
    state)";
/// The hint for a card gone mid-operation.
pub const CARD: &str = "the card was removed, lost power or was reset during the operation; put \
    it back and run the command again (the card keeps its last committed state)";

/// PC/SC's messages ("An attempt was made to end a non-existent transaction") mean nothing
/// to a clinic clerk; say what happened and that nothing is half-written (the card commits
/// each change before it answers, so a command cut short left its old state or its new one).
pub fn transport_hint(e: &anyhow::Error) -> Option<&'static str> {
    use civic_reader::transport::TransportError;
    let transport = civic_reader::transport::transport_error_in(e)?;
    match transport {
        TransportError::ShortResponse => Some(CARD),
        TransportError::Pcsc(p) => match p {
            // pcscd dying while a client talks to it shows up as any of these (seen here:
            // SCARD_F_COMM_ERROR mid-transmit, SCARD_W_SECURITY_VIOLATION when beginning a
            // transaction).
            pcsc::Error::NoService
            | pcsc::Error::ServiceStopped
            | pcsc::Error::CommError
            | pcsc::Error::SecurityViolation
            | pcsc::Error::UnknownReader
            | pcsc::Error::NoReadersAvailable => Some(SERVICE),
            pcsc::Error::RemovedCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::NotTransacted
            | pcsc::Error::ResetCard
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::UnresponsiveCard
            | pcsc::Error::ReaderUnavailable
            | pcsc::Error::InvalidHandle
            // Connecting while the card is being pulled out: pcscd still lists it, but its
            // ATR/protocol negotiation fails (seen here in the card-removed-mid-scan test).
            | pcsc::Error::ProtoMismatch => Some(CARD),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "civic",
    version,
    about = "Civic Card: provision, scan and view citizen cards"
)]
pub struct Cli {
    /// Data directory (keys, registry, office records) [default: $XDG_DATA_HOME/civic]
    #[arg(long, global = true, env = "CIVIC_HOME")]
    data_dir: Option<PathBuf>,
    /// Machine-readable JSON on stdout instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// Use short APDUs only (command chaining and GET RESPONSE), for readers without
    /// extended-length support
    #[arg(long, global = true)]
    short_apdus: bool,
    /// The card access number (CAN) printed on the card: the password of the secure channel
    /// to an issued card [default: the one in this office's issuance book, else the PIN the
    /// command asks for]
    #[arg(long, global = true, env = "CIVIC_CAN", hide_env_values = true)]
    can: Option<String>,
    /// Give up (exit 3) when the card does not answer one command within this bound (a
    /// frozen card or a stuck reader): seconds, or a duration such as 500ms
    #[arg(long, global = true, env = "CIVIC_CARD_TIMEOUT", value_name = "DURATION",
          default_value = "15s", value_parser = parse_card_timeout)]
    card_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List PC/SC readers and whether a card is present
    Readers,
    /// The city's root of trust
    #[command(subcommand)]
    Authority(setup::AuthorityCmd),
    /// Issuing bureaus (identity, health, education)
    #[command(subcommand)]
    Issuer(setup::IssuerCmd),
    /// Terminal certificates (clinic, issuing office, education office)
    #[command(subcommand)]
    Terminal(terminal::TerminalCmd),
    /// Issuing office: personalise a blank card for a citizen
    Provision(provision::ProvisionArgs),
    /// Clinic: authenticate the card and verify every credential
    Scan(scan::ScanArgs),
    /// Citizen: view your own records (needs your PIN)
    View(view::ViewArgs),
    /// Office: revoke a citizen's credential
    Revoke(status::StatusArgs),
    /// Office: suspend a credential (reversible)
    Suspend(status::StatusArgs),
    /// Office: reinstate a suspended credential
    Reinstate(status::StatusArgs),
    /// Office: unblock the PIN and set a new one
    Unblock(pin::UnblockArgs),
    /// Citizen: change your PIN
    ChangePin(pin::ChangePinArgs),
    /// Office: delete a credential from a card (needs the write right)
    RemoveCredential(remove::RemoveArgs),
    /// Show what the card says about itself (no PIN)
    CardInfo(ReaderArg),
    /// Agency: verify a credential exported by its holder, against the registry alone
    Verify(verify::VerifyArgs),
    /// The registry: verify the ledger, show its state
    #[command(subcommand)]
    Registry(registry::RegistryCmd),
    /// Clinic, office and citizen in a web browser on this machine (serves 127.0.0.1)
    Desk(desk::DeskArgs),
}

/// Which enrolled terminal this command acts as.
#[derive(Debug, Args)]
pub struct TerminalArg {
    /// Terminal id (default: the only one enrolled here with the role this command needs)
    #[arg(long, env = "CIVIC_TERMINAL")]
    pub terminal: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReaderArg {
    /// Reader name (or a unique part of it); default: the first reader with a card
    #[arg(long, short = 'r', env = "CIVIC_READER")]
    pub reader: Option<String>,
}

/// What every subcommand gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    data_dir: Option<PathBuf>,
    pub json: bool,
    pub mode: ApduMode,
    can: Option<Zeroizing<String>>,
    /// The bound for connecting and for each APDU (the PC/SC transport's worker thread).
    pub card_timeout: Duration,
}

/// Where the secure channel's password comes from (notes/SECURE-MESSAGING.md): the CAN
/// given (`--can`, `CIVIC_CAN`), else the CAN this office recorded when it personalised the
/// card, else the citizen's PIN if the command has one.
pub fn password_source(
    can: Option<Zeroizing<String>>,
    data_dir: Option<PathBuf>,
    pin: Option<Pin>,
) -> PasswordSource {
    // The book's answer per card id, looked up once per command: every SELECT of an issued
    // card asks (a batch, a scan after provisioning), and opening office.sqlite each time
    // cost more than PACE's arithmetic in the scan profile (BENCHMARKS.md).
    let mut looked_up: Option<(String, Option<Zeroizing<String>>)> = None;
    Box::new(move |card_id: &str| {
        if let Some(c) = &can {
            return Some(CardPassword::Can(c.clone()));
        }
        let from_book = match &looked_up {
            Some((id, c)) if id == card_id => c.clone(),
            _ => {
                let c = DataDir::resolve(data_dir.as_deref())
                    .ok()
                    .map(|d| d.office_db())
                    .filter(|p| p.exists())
                    .and_then(|p| civic_reader::office::IssuanceBook::open(&p).ok())
                    .and_then(|b| b.can_of(card_id).ok().flatten());
                // Only a CAN found is kept: a card the book did not know yet (being
                // personalised in this command) is asked again.
                if c.is_some() {
                    looked_up = Some((card_id.to_owned(), c.clone()));
                }
                c
            }
        };
        if let Some(c) = from_book {
            return Some(CardPassword::Can(c));
        }
        pin.clone().map(CardPassword::Pin)
    })
}

impl Ctx {
    /// The defaults of the command line, with this data directory (the desk's tests).
    #[cfg(test)]
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Self {
            data_dir: Some(data_dir),
            json: false,
            mode: ApduMode::Extended,
            can: None,
            card_timeout: Duration::from_secs(5),
        }
    }

    pub fn data(&self) -> Result<DataDir> {
        DataDir::resolve(self.data_dir.as_deref())
    }

    /// Connect to the card in `reader`, behind secure messaging (crate::sm).
    pub fn connect(&self, reader: &ReaderArg) -> Result<SmTransport<PcscTransport>> {
        self.connect_with_pin(reader, None)
    }

    /// [`connect`](Self::connect), with the citizen's PIN as the last resort for the secure
    /// channel's password.
    pub fn connect_with_pin(
        &self,
        reader: &ReaderArg,
        pin: Option<&Pin>,
    ) -> Result<SmTransport<PcscTransport>> {
        let t = PcscTransport::connect_with_timeout(reader.reader.as_deref(), self.card_timeout)
            .with_context(|| match &reader.reader {
                Some(r) => format!("connecting to the card in reader {r:?}"),
                None => "connecting to a card".to_owned(),
            })?;
        Ok(SmTransport::new(t, self.passwords(pin)).short_apdus_only(self.mode == ApduMode::Short))
    }

    /// The password source of this invocation.
    pub fn passwords(&self, pin: Option<&Pin>) -> PasswordSource {
        password_source(self.can.clone(), self.data_dir.clone(), pin.cloned())
    }

    /// Run `f` in a terminal-authenticated session with the card in `reader`, as the named
    /// terminal or the only one enrolled with `role`. `f` gets the session and the card id.
    pub fn with_terminal<T>(
        &self,
        reader: &ReaderArg,
        terminal: &TerminalArg,
        role: civic_reader::terminal::Role,
        f: impl FnOnce(&mut Session<'_, Terminal>, &str) -> Result<T>,
    ) -> Result<T> {
        let data = self.data()?;
        let now = civic_reader::now();
        let term = civic_reader::terminal::pick(&data, terminal.terminal.as_deref(), role, now)?;
        let mut t = self.connect(reader)?;
        let mut tx = t.transaction()?;
        let s =
            Session::open(&mut *tx, self.mode).context("selecting the Civic Card application")?;
        let card_id = s
            .info()
            .card_id
            .clone()
            .context("the card has no card id")?;
        let mut session = s
            .authenticate(&term.as_key(), now)
            .with_context(|| format!("authenticating terminal {}", term.cert.terminal_id))?;
        f(&mut session, &card_id)
    }

    /// Print a serialisable value as JSON (for `--json`).
    pub fn print_json<T: serde::Serialize>(&self, v: &T) -> Result<()> {
        // Written, not println!'d: a closed pipe (`civic --json scan | head`) is an error to
        // report, not a panic.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, v)?;
        match writeln!(out) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => Ok(r?),
        }
    }
}

/// `--card-timeout` / `CIVIC_CARD_TIMEOUT`: a duration (`5s`, `500ms`) or a number of seconds.
fn parse_card_timeout(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let d = match v.parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?,
        Err(_) => humantime::parse_duration(v).map_err(|e| e.to_string())?,
    };
    if d.is_zero() {
        return Err("a card timeout of zero would refuse every card".into());
    }
    Ok(d)
}

pub fn run(cli: Cli) -> Result<Exit> {
    let ctx = Ctx {
        data_dir: cli.data_dir,
        json: cli.json,
        card_timeout: cli.card_timeout,
        mode: if cli.short_apdus {
            ApduMode::Short
        } else {
            ApduMode::Extended
        },
        can: cli.can.map(Zeroizing::new),
    };
    match cli.command {
        Command::Readers => readers::run(&ctx),
        Command::Authority(c) => setup::authority(&ctx, c),
        Command::Issuer(c) => setup::issuer(&ctx, c),
        Command::Terminal(c) => terminal::run(&ctx, c),
        Command::Provision(a) => provision::run(&ctx, a),
        Command::Scan(a) => scan::run(&ctx, a),
        Command::View(a) => view::run(&ctx, a),
        Command::Revoke(a) => {
            status::run(&ctx, a, civic_registry::status::CredentialStatus::Revoked)
        }
        Command::Suspend(a) => {
            status::run(&ctx, a, civic_registry::status::CredentialStatus::Suspended)
        }
        Command::Reinstate(a) => {
            status::run(&ctx, a, civic_registry::status::CredentialStatus::Valid)
        }
        Command::Unblock(a) => pin::unblock(&ctx, a),
        Command::ChangePin(a) => pin::change(&ctx, a),
        Command::RemoveCredential(a) => remove::run(&ctx, a),
        Command::CardInfo(r) => readers::card_info(&ctx, r),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Registry(c) => registry::run(&ctx, c),
        Command::Desk(a) => desk::run(ctx, a),
    }
}

/// Where PINs come from: the terminal without echo, or lines on stdin (`--pin-stdin`).
#[derive(Debug, Args)]
pub struct PinSource {
    /// Read PIN(s) from standard input, one per line, instead of prompting
    #[arg(long)]
    pub pin_stdin: bool,
}

impl PinSource {
    /// Read one PIN; `prompt` is shown on the terminal.
    pub fn read(&self, prompt: &str) -> Result<Pin> {
        let text = zeroize::Zeroizing::new(if self.pin_stdin || !std::io::stdin().is_terminal() {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the PIN from standard input")?;
            if line.is_empty() {
                anyhow::bail!("no PIN on standard input");
            }
            line
        } else {
            rpassword::prompt_password(prompt).context("reading the PIN")?
        });
        Pin::parse(&text).map_err(|e| anyhow::anyhow!(e))
    }

    /// Read a new PIN; on a terminal, ask twice.
    pub fn read_new(&self, prompt: &str) -> Result<Pin> {
        let pin = self.read(prompt)?;
        if !self.pin_stdin && std::io::stdin().is_terminal() {
            let again = self.read("Repeat the new PIN: ")?;
            if !pin.matches(&again) {
                anyhow::bail!("the two PINs differ");
            }
        }
        Ok(pin)
    }
}

pub fn lcs_name(l: card_applet::protocol::LifeCycle) -> &'static str {
    match l {
        card_applet::protocol::LifeCycle::Personalisation => "personalisation (blank)",
        card_applet::protocol::LifeCycle::Issued => "issued",
    }
}

pub fn print_watermark(w: &civic_registry::Watermark) {
    println!(
        "Registry: block {} ({}…) at {}",
        w.height,
        hex::encode(&w.block_hash[..6]),
        civic_reader::fmt_time(w.time)
    );
}
