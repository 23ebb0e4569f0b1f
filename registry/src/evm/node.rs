//! A local anvil chain for tests, benchmarks and the demo: started on 127.0.0.1 with port 0
//! (anvil picks a free port and prints it), stopped by its PID when dropped. Not `--silent` or
//! `--quiet`: anvil 1.7.1 then prints nothing, not even its "Listening on" line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{Error, Result};

/// Where `npm ci` in registry/contracts puts the pinned anvil binary.
pub fn default_anvil_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CIVIC_ANVIL") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// Chain id of the local chain (anvil's default).
pub const LOCAL_CHAIN_ID: u64 = 31337;

/// anvil / hardhat dev account #0 (funded on the local chain only; public knowledge).
pub const DEV_ACCOUNT_0: &str =
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// One running anvil. Dropping it kills that process (by its PID, nothing else) and reaps it.
#[derive(Debug)]
pub struct LocalNode {
    child: Child,
    url: String,
}

impl LocalNode {
    /// Start anvil with `extra` arguments after the defaults; wait until it listens.
    pub fn start(anvil: &Path, extra: &[&str]) -> Result<Self> {
        let mut child = Command::new(anvil)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--chain-id",
                &LOCAL_CHAIN_ID.to_string(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Io(format!(
                    "cannot start anvil at {} ({e}); install it with `npm ci --ignore-scripts` in \
                     registry/contracts (scripts/lib.sh: civic_install_npm) or set CIVIC_ANVIL",
                    anvil.display()
                ))
            })?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        // Read until "Listening on 127.0.0.1:PORT", then keep draining so anvil never blocks on
        // a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(addr) = line.trim().strip_prefix("Listening on ") {
                        let _ = tx.send(addr.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(LocalNode {
                child,
                url: format!("http://{addr}"),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(Error::Io(
                    "anvil did not report its listening address within 30 s".into(),
                ))
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One JSON-RPC call to this node (tests drive anvil's own methods with it: `evm_snapshot`,
    /// `evm_revert`, `evm_mine`).
    pub fn call(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value> {
        super::rpc::Rpc::new(&self.url, Duration::from_secs(10)).req(method, params)
    }

    /// Give `account` 1000 ether on this local chain (anvil's `anvil_setBalance`; mines no
    /// block). On a real permissioned chain the operator funds accounts, or gas is free.
    pub fn fund(&self, account: alloy_primitives::Address) -> Result<()> {
        let rpc = super::rpc::Rpc::new(&self.url, Duration::from_secs(10));
        rpc.req(
            "anvil_setBalance",
            serde_json::json!([account.to_string(), "0x3635c9adc5dea00000"]),
        )?;
        Ok(())
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID (SIGKILL); wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
