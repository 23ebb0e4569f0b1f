//! The data directory: keys, the embedded registry, the office's issuance records and the clinic
//! cache (`cache.sqlite`, a verified mirror of the registry for offline scans).
//! Resolved from `--data-dir`, then `CIVIC_HOME`, then `$XDG_DATA_HOME/civic`, then
//! `~/.local/share/civic`; created on first use so the demo needs no configuration.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use civic_registry::ledger::SqliteLedger;
use p256::ecdsa::SigningKey;

/// Environment variable naming the data directory.
pub const ENV_HOME: &str = "CIVIC_HOME";

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Resolve (and create, mode 0700) the data directory.
    pub fn resolve(flag: Option<&Path>) -> Result<Self> {
        let root = match flag {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os(ENV_HOME) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => default_root()?,
            },
        };
        Self::at(root)
    }

    pub fn at(root: PathBuf) -> Result<Self> {
        create_private_dir(&root)?;
        create_private_dir(&root.join("issuers"))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn authority_key(&self) -> PathBuf {
        self.root.join("authority.key")
    }
    pub fn registry_db(&self) -> PathBuf {
        self.root.join("registry.sqlite")
    }
    /// The clinic cache: a verified mirror of the registry for offline scans.
    pub fn cache_db(&self) -> PathBuf {
        self.root.join("cache.sqlite")
    }
    pub fn issuer_key(&self, id: &str) -> PathBuf {
        self.root.join("issuers").join(format!("{id}.key"))
    }
    pub fn office_key(&self) -> PathBuf {
        self.root.join("office.key")
    }
    pub fn office_db(&self) -> PathBuf {
        self.root.join("office.sqlite")
    }
    /// The EVM backend's configuration (`civic registry deploy` writes it); absent = the
    /// embedded ledger.
    pub fn evm_config(&self) -> PathBuf {
        self.root.join("evm.json")
    }

    /// The EVM backend's settings, if this data directory uses it.
    pub fn evm_settings(&self) -> Result<Option<EvmSettings>> {
        let p = self.evm_config();
        if !p.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let s: EvmSettings =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        Ok(Some(s))
    }

    pub fn save_evm_settings(&self, s: &EvmSettings) -> Result<()> {
        let p = self.evm_config();
        let text = serde_json::to_string_pretty(s)?;
        std::fs::write(&p, text + "\n").with_context(|| format!("writing {}", p.display()))
    }

    /// The registry on the chain `evm.json` names, read-only (no signer).
    pub fn evm_registry(&self, s: &EvmSettings) -> Result<civic_registry::evm::EvmRegistry> {
        civic_registry::evm::EvmRegistry::open(s.config()?, Default::default()).with_context(|| {
            format!(
                "opening the EVM registry {} on chain {} at {}",
                s.contract.as_deref().unwrap_or("(not deployed)"),
                s.chain_id,
                s.rpc_url
            )
        })
    }

    pub fn load_authority(&self) -> Result<SigningKey> {
        let p = self.authority_key();
        if !p.exists() {
            bail!(
                "no authority key in {}: run `civic authority init` first",
                self.root.display()
            );
        }
        civic_registry::keys::load_signing_key(&p)
            .with_context(|| format!("reading the authority key {}", p.display()))
    }

    /// The registry, read-only (verdicts, verification).
    pub fn registry(&self) -> Result<SqliteLedger> {
        let p = self.registry_db();
        if !p.exists() {
            bail!(
                "no registry at {}: run `civic authority init` first",
                p.display()
            );
        }
        SqliteLedger::open(&p).with_context(|| format!("opening the registry {}", p.display()))
    }

    /// The registry, able to append blocks (needs the authority key, which signs them).
    pub fn registry_writer(&self) -> Result<SqliteLedger> {
        let key = self.load_authority()?;
        let p = self.registry_db();
        SqliteLedger::open_writer(&p, key)
            .with_context(|| format!("opening the registry {} for writing", p.display()))
    }

    /// The authority's public key, if this data directory holds the authority key (the trust
    /// anchor a clinic cache is checked against).
    pub fn authority_public(&self) -> Result<Option<p256::ecdsa::VerifyingKey>> {
        if !self.authority_key().exists() {
            return Ok(None);
        }
        Ok(Some(*self.load_authority()?.verifying_key()))
    }

    /// Open the clinic cache, verified; checked against the authority key when this directory
    /// holds it.
    pub fn cache(&self) -> Result<crate::cache::Cache> {
        let trusted = self.authority_public()?;
        let p = self.cache_db();
        crate::cache::Cache::open(&p, trusted.as_ref())
            .with_context(|| format!("opening the clinic cache {}", p.display()))
    }

    pub fn load_issuer(&self, id: &str) -> Result<SigningKey> {
        let p = self.issuer_key(id);
        if !p.exists() {
            bail!(
                "this office holds no key for issuer {id:?} (expected {})",
                p.display()
            );
        }
        civic_registry::keys::load_signing_key(&p)
            .with_context(|| format!("reading issuer key {}", p.display()))
    }
}

/// `evm.json`: where the registry contract lives and how this directory talks to it. The signer's
/// key stays in its own file (mode 0600, never printed or logged); only its path is here.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmSettings {
    /// Always "evm" (the embedded ledger needs no file).
    pub backend: String,
    pub rpc_url: String,
    pub chain_id: u64,
    /// The registry contract's address (0x...), set by `civic registry deploy`.
    pub contract: Option<String>,
    /// The Ethereum account key file (hex) of whoever sends transactions from this directory.
    pub signer_key_file: PathBuf,
    /// Blocks left out at the head when reading (reorganisation safety).
    pub confirmations: u64,
}

impl EvmSettings {
    pub fn config(&self) -> Result<civic_registry::evm::EvmConfig> {
        let contract = self
            .contract
            .as_deref()
            .context("no registry contract recorded: run `civic registry deploy` first")?
            .parse()
            .context("the contract address in evm.json is not an address")?;
        let mut c = civic_registry::evm::EvmConfig::new(&self.rpc_url, self.chain_id, contract);
        c.confirmations = self.confirmations;
        Ok(c)
    }

    pub fn signer(&self) -> Result<civic_registry::evm::EthKey> {
        civic_registry::evm::EthKey::from_file(&self.signer_key_file)
            .context("loading the Ethereum account key")
    }
}

fn default_root() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("civic"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CIVIC_HOME, XDG_DATA_HOME nor HOME is set: pass --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/civic"))
}

fn create_private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if p.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating data directory {}", p.display()))
}
