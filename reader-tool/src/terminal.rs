//! Terminal certificates held by this installation: `civic terminal enroll` makes a key pair
//! for a terminal and has the authority certify it (COSE_Sign1, small enough for one short
//! APDU); the workflows load the one they need.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use card_applet::protocol::{access, role};
use card_applet::terminal::{self, TerminalCert};
use p256::ecdsa::SigningKey;

use crate::datadir::DataDir;
use crate::session::TerminalKey;

/// Terminal roles, as the CLI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads identity basics and emergency data; the full health record with the PIN.
    Clinic,
    /// Writes credentials, resets and unblocks PINs.
    IssuingOffice,
    /// Reads identity basics and education credentials.
    EducationOffice,
}

impl Role {
    pub fn byte(self) -> u8 {
        match self {
            Role::Clinic => role::CLINIC,
            Role::IssuingOffice => role::ISSUING_OFFICE,
            Role::EducationOffice => role::EDUCATION_OFFICE,
        }
    }

    pub fn from_byte(b: u8) -> Option<Role> {
        [Role::Clinic, Role::IssuingOffice, Role::EducationOffice]
            .into_iter()
            .find(|r| r.byte() == b)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Clinic => "clinic",
            Role::IssuingOffice => "issuing office",
            Role::EducationOffice => "education office",
        }
    }

    /// The rights a certificate for this role carries (CHAT-like access bitmask).
    pub fn access(self) -> u8 {
        match self {
            Role::Clinic => access::READ_IDENTITY | access::READ_EMERGENCY | access::READ_HEALTH,
            Role::IssuingOffice => {
                access::READ_IDENTITY | access::WRITE_CREDENTIALS | access::PIN_MANAGEMENT
            }
            Role::EducationOffice => access::READ_IDENTITY | access::READ_EDUCATION,
        }
    }
}

/// The access bits in words, for tables.
pub fn describe_access(bits: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (access::READ_IDENTITY, "identity"),
        (access::READ_EMERGENCY, "emergency data"),
        (access::READ_HEALTH, "health"),
        (access::READ_EDUCATION, "education"),
        (access::WRITE_CREDENTIALS, "write"),
        (access::PIN_MANAGEMENT, "PIN management"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| bits & b == *b)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "nothing".to_owned()
    } else {
        v.join(", ")
    }
}

/// A terminal's certificate and key, loaded from the data directory.
pub struct Enrolled {
    pub certificate: Vec<u8>,
    pub cert: TerminalCert,
    pub key: SigningKey,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("terminal_id", &self.cert.terminal_id)
            .finish_non_exhaustive()
    }
}

impl Enrolled {
    pub fn as_key(&self) -> TerminalKey<'_> {
        TerminalKey {
            certificate: &self.certificate,
            terminal_id: &self.cert.terminal_id,
            role: self.cert.role,
            access: self.cert.access,
            key: &self.key,
        }
    }
}

fn dir(data: &DataDir) -> PathBuf {
    data.root().join("terminals")
}

fn cert_path(data: &DataDir, id: &str) -> PathBuf {
    dir(data).join(format!("{id}.cert"))
}

fn key_path(data: &DataDir, id: &str) -> PathBuf {
    dir(data).join(format!("{id}.key"))
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("a terminal id is 1-32 lowercase letters, digits or '-': {id:?}");
    }
    Ok(())
}

/// Create a terminal key and its certificate (or, with `renew`, a new certificate for the
/// existing key).
pub fn enroll(
    data: &DataDir,
    id: &str,
    role: Role,
    valid_days: u64,
    now: u64,
    renew: bool,
) -> Result<Enrolled> {
    check_id(id)?;
    let authority = data.load_authority()?;
    std::fs::create_dir_all(dir(data)).context("creating the terminals directory")?;
    let kp = key_path(data, id);
    let key = if renew {
        if !kp.exists() {
            bail!("terminal {id:?} is not enrolled here: nothing to renew");
        }
        civic_registry::keys::load_signing_key(&kp)?
    } else {
        if kp.exists() {
            bail!("terminal {id:?} is already enrolled (use `civic terminal renew`)");
        }
        let key = civic_registry::keys::generate();
        civic_registry::keys::save_signing_key(&kp, &key)?;
        key
    };
    let cert = TerminalCert {
        terminal_id: id.to_owned(),
        role: role.byte(),
        access: role.access(),
        // A minute of grace for terminals whose clocks run slightly behind ours.
        not_before: now.saturating_sub(60),
        not_after: now + valid_days * 86_400,
        public_key: civic_registry::keys::public_key_bytes(key.verifying_key()),
    };
    let certificate = terminal::sign(&cert, &authority);
    write_atomically(&cert_path(data, id), &certificate)?;
    Ok(Enrolled {
        certificate,
        cert,
        key,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("cert.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Every terminal enrolled here.
pub fn list(data: &DataDir) -> Result<Vec<Enrolled>> {
    let d = dir(data);
    if !d.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&d)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cert"))
        .collect();
    names.sort();
    for p in names {
        if let Some(id) = p.file_stem().and_then(|s| s.to_str()) {
            out.push(load(data, id)?);
        }
    }
    Ok(out)
}

/// Load terminal `id`.
pub fn load(data: &DataDir, id: &str) -> Result<Enrolled> {
    check_id(id)?;
    let cp = cert_path(data, id);
    let certificate =
        std::fs::read(&cp).with_context(|| format!("terminal {id:?} is not enrolled here"))?;
    let (cert, _, _) = terminal::parse(&certificate)
        .map_err(|e| anyhow::anyhow!("{}: not a terminal certificate ({e:?})", cp.display()))?;
    let key = civic_registry::keys::load_signing_key(&key_path(data, id))?;
    if civic_registry::keys::public_key_bytes(key.verifying_key()) != cert.public_key {
        bail!("terminal {id:?}: the key does not match its certificate");
    }
    Ok(Enrolled {
        certificate,
        cert,
        key,
    })
}

/// The terminal to use: the one named, or else the only one enrolled with `role`.
pub fn pick(data: &DataDir, wanted: Option<&str>, role: Role, now: u64) -> Result<Enrolled> {
    let t = match wanted {
        Some(id) => load(data, id)?,
        None => {
            let mut all: Vec<_> = list(data)?
                .into_iter()
                .filter(|t| t.cert.role == role.byte())
                .collect();
            match all.len() {
                1 => all.remove(0),
                0 => bail!(
                    "no {} terminal is enrolled here: run `civic terminal enroll --role {} --id NAME`",
                    role.name(),
                    clap::ValueEnum::to_possible_value(&role)
                        .map(|v| v.get_name().to_owned())
                        .unwrap_or_default()
                ),
                _ => bail!(
                    "several {} terminals are enrolled here: choose one with --terminal",
                    role.name()
                ),
            }
        }
    };
    // A terminal named explicitly is used as it is: the card, not the reader, decides what
    // its certificate allows (and says so when it refuses).
    if wanted.is_none() && t.cert.role != role.byte() {
        bail!(
            "terminal {:?} is not a {} terminal",
            t.cert.terminal_id,
            role.name()
        );
    }
    if t.cert.not_after <= now {
        bail!(
            "the certificate of terminal {:?} expired at {}: run `civic terminal renew --id {}`",
            t.cert.terminal_id,
            crate::fmt_time(t.cert.not_after),
            t.cert.terminal_id
        );
    }
    Ok(t)
}
