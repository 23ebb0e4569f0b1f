//! A data directory (`CIVIC_HOME`) for one test and a `civic` runner bound to it: the city
//! (authority, three bureaus, three terminals) and provisioned cards, as an office sets them up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::{run_civic_timeout, CIVIC_TIMEOUT};

/// The citizen PIN the helpers provision with.
pub const PIN: &str = "482913";

/// `scripts/data/alice.json`.
pub fn citizen_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/data/alice.json")
}

/// One `civic` run: exit code (-1 when killed by a signal), stdout and stderr together, and
/// how long it took.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub out: String,
    pub took: Duration,
}

/// A data directory and the environment every `civic` run gets.
#[derive(Debug)]
pub struct Office {
    home: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Office {
    pub fn new() -> Result<Self> {
        Ok(Self {
            home: tempfile::Builder::new()
                .prefix("civic-e2e-home-")
                .tempdir()?,
            env: Vec::new(),
        })
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Add an environment variable to every later run.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Run `civic args` (bounded by [`CIVIC_TIMEOUT`]).
    pub fn civic(&self, args: &[&str], stdin: Option<&str>) -> Result<Ran> {
        self.civic_timeout(args, stdin, CIVIC_TIMEOUT)
    }

    pub fn civic_timeout(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        bound: Duration,
    ) -> Result<Ran> {
        let home = self.home().display().to_string();
        let mut env: Vec<(&str, &str)> = vec![("CIVIC_HOME", home.as_str())];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let t0 = Instant::now();
        let out = run_civic_timeout(args, stdin, &env, bound)?;
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

    /// Run and insist on an exit code; returns what it printed.
    pub fn expect(&self, code: i32, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let r = self.civic(args, stdin)?;
        ensure!(
            r.code == code,
            "`civic {}` exited {} (wanted {code}):\n{}",
            args.join(" "),
            r.code,
            r.out
        );
        Ok(r.out)
    }

    /// Authority, the identity, health and education bureaus, and one office, clinic and
    /// school terminal.
    pub fn set_up_city(&self) -> Result<()> {
        self.expect(0, &["authority", "init"], None)?;
        for (id, name, kind) in [
            ("identity-bureau", "City Identity Bureau", "identity"),
            ("health-bureau", "City Health Bureau", "health,emergency"),
            ("education-bureau", "City Education Bureau", "education"),
        ] {
            self.expect(
                0,
                &["issuer", "add", "--id", id, "--name", name, "--kinds", kind],
                None,
            )?;
        }
        for (id, role) in [
            ("office-01", "issuing-office"),
            ("clinic-01", "clinic"),
            ("school-01", "education-office"),
        ] {
            self.expect(0, &["terminal", "enroll", "--id", id, "--role", role], None)?;
        }
        Ok(())
    }

    /// Provision the blank card in `reader` with `citizen` (a JSON file) and [`PIN`].
    pub fn provision_citizen(&self, reader: &str, citizen: &Path) -> Result<String> {
        let citizen = citizen.display().to_string();
        self.expect(
            0,
            &[
                "provision",
                "--reader",
                reader,
                "--citizen",
                &citizen,
                "--pin-stdin",
            ],
            Some(PIN),
        )
    }

    /// Alice's citizen file with another card id (`CIV-2026-0000-1NNN`), written into the
    /// data directory: one per card when several cards are provisioned.
    pub fn citizen_numbered(&self, n: u32) -> Result<PathBuf> {
        let text = std::fs::read_to_string(citizen_file())?;
        let text = text.replace(
            "CIV-2026-0000-0001",
            &format!("CIV-2026-0000-{:04}", 1000 + n),
        );
        let path = self.home().join(format!("citizen-{n}.json"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Provision the blank card in `reader` as Alice.
    pub fn provision(&self, reader: &str) -> Result<String> {
        self.provision_citizen(reader, &citizen_file())
    }

    /// `civic --json scan --reader R` insisting on `code`; the parsed report.
    pub fn scan_json(&self, reader: &str, code: i32) -> Result<serde_json::Value> {
        let out = self.expect(code, &["--json", "scan", "--reader", reader], None)?;
        serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("scan --json printed ({e}):\n{out}"))
    }
}
