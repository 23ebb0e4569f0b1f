//! A blocking JSON-RPC 2.0 client over HTTP (ureq): the few `eth_*` calls the backend needs.
//! Errors keep the node's message and its `data` (revert data is decoded through the ABI by the
//! caller, never by error code: codes differ between nodes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{Error, Result};

/// What a call can fail with, before it becomes a registry [`Error`].
#[derive(Debug)]
pub(crate) enum RpcError {
    /// The node could not be reached or did not answer in time.
    Transport(String),
    /// The node answered with a JSON-RPC error.
    Node {
        message: String,
        data: Option<String>,
    },
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Transport(m) => Error::Unreachable(m),
            RpcError::Node { message, .. } => Error::Invalid(format!("node refused: {message}")),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Rpc {
    url: String,
    agent: ureq::Agent,
    next_id: AtomicU64,
}

impl Rpc {
    pub(crate) fn new(url: &str, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Rpc {
            url: url.to_owned(),
            agent,
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn call(&self, method: &str, params: Value) -> std::result::Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut resp = self
            .agent
            .post(&self.url)
            .send_json(&body)
            .map_err(|e| RpcError::Transport(format!("{method} to {}: {e}", self.url)))?;
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().map_err(|e| {
            RpcError::Transport(format!(
                "{method} to {}: HTTP {status}, unreadable answer: {e}",
                self.url
            ))
        })?;
        if let Some(err) = v.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_owned();
            let data = match err.get("data") {
                Some(Value::String(s)) => Some(s.clone()),
                // Some nodes nest it: {"data": {"data": "0x.."}}.
                Some(Value::Object(o)) => o.get("data").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            };
            return Err(RpcError::Node { message, data });
        }
        v.get("result")
            .cloned()
            .ok_or_else(|| RpcError::Transport(format!("{method}: answer without a result")))
    }

    /// `call`, any failure as a registry error.
    pub(crate) fn req(&self, method: &str, params: Value) -> Result<Value> {
        Ok(self.call(method, params)?)
    }
}

/// A hex quantity ("0x1a") as u64.
pub(crate) fn quantity(v: &Value, what: &str) -> Result<u64> {
    let s = v
        .as_str()
        .ok_or_else(|| Error::Encoding(format!("{what}: not a hex string")))?;
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| Error::Encoding(format!("{what}: bad quantity {s:?}")))
}

/// Hex data ("0x...") as bytes.
pub(crate) fn data(v: &Value, what: &str) -> Result<Vec<u8>> {
    let s = v
        .as_str()
        .ok_or_else(|| Error::Encoding(format!("{what}: not a hex string")))?;
    hex::decode(s.trim_start_matches("0x")).map_err(|_| Error::Encoding(format!("{what}: bad hex")))
}

pub(crate) fn hash32(v: &Value, what: &str) -> Result<[u8; 32]> {
    data(v, what)?
        .try_into()
        .map_err(|_| Error::Encoding(format!("{what}: not 32 bytes")))
}

pub(crate) fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

pub(crate) fn qty(n: u64) -> String {
    format!("{n:#x}")
}
