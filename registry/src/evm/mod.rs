//! The EVM backend (feature `evm`): the registry as a contract (registry/contracts/
//! CivicRegistry.sol) on an Ethereum-compatible chain over standard JSON-RPC.
//!
//! Writes: every operation is first checked against the verified mirror by the same rules as the
//! ledger ([`crate::ledger::validate`]), so a refusal reads exactly as it does on the ledger and
//! costs no transaction; then the call is simulated (`eth_estimateGas`), which names the
//! contract's custom error if the contract refuses ([`Error::Reverted`]); only then is a signed
//! legacy transaction sent and its receipt awaited. The authority's account sends issuer
//! administration, each issuer's own account sends its anchors and status changes.
//!
//! Reads: the backend mirrors the contract's events (`eth_getLogs`) into the ledger's in-memory
//! state, replaying each event through the same rules and signature checks as a ledger block,
//! with the block's time. So every answer rests on the chain AND the issuers' and authority's
//! signatures, and the [`Watermark`] is the chain block (number, hash, time) it rests on.
//! [`EvmConfig::confirmations`] keeps the newest blocks out of the mirror, so a reorganised
//! block never reaches it; a reorganisation below the mirrored point is reported as
//! [`Error::ChainBroken`].

mod node;
mod rpc;
mod signer;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::{keccak256, Bytes, TxKind, B256, U256};
use alloy_sol_types::{SolConstructor, SolEventInterface, SolInterface};
use p256::ecdsa::VerifyingKey;
use serde_json::{json, Value};

pub use alloy_primitives::Address;
pub use alloy_sol_types::SolCall;
pub use node::{default_anvil_path, LocalNode, DEV_ACCOUNT_0, LOCAL_CHAIN_ID};
pub use signer::EthKey;

use crate::cert::{IssuerCertificate, KeyRetirement};
use crate::ledger::{validate, Effect, Event, State};
use crate::status::CredentialStatus;
use crate::{
    keys, BatchRecord, ChainReport, Error, IssuerRecord, Registry, Request, Result, RetiredKey,
    SignedAnchor, SignedRequest, SignedStatusBatch, SignedStatusChange, Watermark,
};
use rpc::{data, hash32, hex0x, qty, quantity, Rpc, RpcError};

/// The contract's ABI (from the committed `contracts/build/CivicRegistry.abi.json`): call,
/// event and custom-error types.
pub mod abi {
    alloy_sol_types::sol!(
        #[derive(Debug)]
        CivicRegistry,
        "contracts/build/CivicRegistry.abi.json"
    );
}

use abi::CivicRegistry;

use CivicRegistry::{CivicRegistryErrors, CivicRegistryEvents};

/// The contract's creation bytecode, as committed (rebuilt and compared by
/// `node registry/contracts/build.js --check`).
const BYTECODE_HEX: &str = include_str!("../../contracts/build/CivicRegistry.bin");

/// Blocks per `eth_getLogs` page (nodes cap the range a query may span).
const LOG_PAGE_BLOCKS: u64 = 2_000;

/// Where the registry lives on a chain, and how to talk to it.
#[derive(Clone, Debug)]
pub struct EvmConfig {
    pub rpc_url: String,
    pub chain_id: u64,
    pub contract: Address,
    /// Blocks to leave out of the mirror at the head (0 = read up to the newest block).
    pub confirmations: u64,
    /// How often to ask for a receipt (a few ms against a local chain).
    pub receipt_poll: Duration,
    /// How long to wait for a receipt before giving up.
    pub receipt_timeout: Duration,
    /// Per-request HTTP timeout.
    pub rpc_timeout: Duration,
}

impl EvmConfig {
    pub fn new(rpc_url: &str, chain_id: u64, contract: Address) -> Self {
        EvmConfig {
            rpc_url: rpc_url.to_owned(),
            chain_id,
            contract,
            confirmations: 0,
            receipt_poll: Duration::from_millis(5),
            receipt_timeout: Duration::from_secs(60),
            rpc_timeout: Duration::from_secs(10),
        }
    }
}

/// The 32-byte on-chain name of an issuer (or terminal) id.
pub fn id_hash(id: &str) -> B256 {
    keccak256(id.as_bytes())
}

/// The on-chain name of a P-256 issuer key (its 65-byte SEC1 encoding).
pub fn key_hash(public_key: &[u8]) -> B256 {
    keccak256(public_key)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A chain client that only reads and sends: no registry semantics. Shared by the backend and
/// `deploy`.
#[derive(Debug)]
struct Chain {
    rpc: Rpc,
    chain_id: u64,
    poll: Duration,
    timeout: Duration,
}

/// A mined transaction.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub tx_hash: [u8; 32],
    pub block: u64,
    pub gas_used: u64,
    pub contract: Option<Address>,
    /// The batch id of a `BatchAnchored` event of this transaction, if any.
    pub anchored_batch: Option<u64>,
}

impl Chain {
    fn new(cfg: &EvmConfig) -> Self {
        Chain {
            rpc: Rpc::new(&cfg.rpc_url, cfg.rpc_timeout),
            chain_id: cfg.chain_id,
            poll: cfg.receipt_poll,
            timeout: cfg.receipt_timeout,
        }
    }

    /// The node must serve the configured chain: a transaction signed for another chain id
    /// would be refused, and reads would come from the wrong registry.
    fn check_chain_id(&self) -> Result<()> {
        let id = quantity(&self.rpc.req("eth_chainId", json!([]))?, "chain id")?;
        if id != self.chain_id {
            return Err(Error::WrongChain(format!(
                "the node at {} serves chain id {id}, the configuration says {}",
                self.rpc.url(),
                self.chain_id
            )));
        }
        Ok(())
    }

    fn block_number(&self) -> Result<u64> {
        quantity(&self.rpc.req("eth_blockNumber", json!([]))?, "block number")
    }

    fn block(&self, number: u64) -> Result<Watermark> {
        let b = self
            .rpc
            .req("eth_getBlockByNumber", json!([qty(number), false]))?;
        if b.is_null() {
            return Err(Error::NotFound(format!("block {number}")));
        }
        Ok(Watermark {
            height: quantity(&b["number"], "block number")?,
            block_hash: hash32(&b["hash"], "block hash")?,
            time: quantity(&b["timestamp"], "block time")?,
        })
    }

    /// Call a view function of the contract at `to` (at the latest block) and decode what it
    /// returns.
    fn view<C: SolCall>(&self, to: Address, call: C) -> Result<C::Return> {
        let r = self.rpc.call(
            "eth_call",
            json!([{"to": to.to_string(), "data": hex0x(&call.abi_encode())}, "latest"]),
        );
        let bytes = match r {
            Ok(v) => data(&v, "eth_call result")?,
            Err(e) => return Err(node_error(e)),
        };
        C::abi_decode_returns(&bytes).map_err(|e| Error::Encoding(e.to_string()))
    }

    /// Simulate, sign, send and wait for the receipt. A refusal by the contract comes back
    /// from the simulation, decoded by name, and no transaction is sent.
    fn send(&self, from: &EthKey, to: TxKind, input: Vec<u8>) -> Result<Receipt> {
        let mut call = json!({"from": from.address().to_string(), "data": hex0x(&input)});
        if let TxKind::Call(a) = to {
            call["to"] = json!(a.to_string());
        }
        let gas = match self.rpc.call("eth_estimateGas", json!([call])) {
            Ok(v) => quantity(&v, "gas estimate")?,
            Err(e) => return Err(node_error(e)),
        };
        let gas_price = u128::from(quantity(
            &self.rpc.req("eth_gasPrice", json!([]))?,
            "gas price",
        )?);
        let nonce = quantity(
            &self.rpc.req(
                "eth_getTransactionCount",
                json!([from.address().to_string(), "pending"]),
            )?,
            "nonce",
        )?;
        let raw = from.sign_legacy(&signer::LegacyTx {
            nonce,
            gas_price,
            // The estimate is exact for this state; a margin covers state moving before mining.
            gas: gas + gas / 5 + 10_000,
            to,
            input: Bytes::from(input.clone()),
            chain_id: self.chain_id,
        })?;
        let hash = match self
            .rpc
            .call("eth_sendRawTransaction", json!([hex0x(&raw)]))
        {
            Ok(v) => hash32(&v, "transaction hash")?,
            Err(e) => return Err(node_error(e)),
        };
        let start = Instant::now();
        let receipt = loop {
            let r = self
                .rpc
                .req("eth_getTransactionReceipt", json!([hex0x(&hash)]))?;
            if !r.is_null() {
                break r;
            }
            if start.elapsed() > self.timeout {
                return Err(Error::Unreachable(format!(
                    "transaction {} not mined within {:?}",
                    hex0x(&hash),
                    self.timeout
                )));
            }
            std::thread::sleep(self.poll);
        };
        let block = quantity(&receipt["blockNumber"], "receipt block")?;
        if quantity(&receipt["status"], "receipt status")? != 1 {
            // Mined but reverted (the state moved between simulation and mining): ask again at
            // that block for the reason.
            let reason = match self.rpc.call(
                "eth_call",
                json!([{"from": from.address().to_string(), "to": call.get("to"), "data": hex0x(&input)}, qty(block)]),
            ) {
                Err(e) => node_error(e).to_string(),
                Ok(_) => "reverted".into(),
            };
            return Err(Error::Reverted(format!(
                "transaction {} in block {block}: {reason}",
                hex0x(&hash)
            )));
        }
        let contract = match receipt.get("contractAddress") {
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        let anchored_batch = receipt["logs"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|log| {
                let topics: Vec<B256> = log["topics"]
                    .as_array()?
                    .iter()
                    .map(|t| hash32(t, "topic").ok().map(B256::from))
                    .collect::<Option<_>>()?;
                let payload = data(&log["data"], "log data").ok()?;
                match CivicRegistryEvents::decode_raw_log(&topics, &payload).ok()? {
                    CivicRegistryEvents::BatchAnchored(e) => Some(e.batchId),
                    _ => None,
                }
            });
        Ok(Receipt {
            tx_hash: hash,
            block,
            gas_used: quantity(&receipt["gasUsed"], "gas used")?,
            contract,
            anchored_batch,
        })
    }
}

/// A node error, with the contract's custom error decoded by name when the node returned
/// revert data.
fn node_error(e: RpcError) -> Error {
    match e {
        RpcError::Transport(m) => Error::Unreachable(m),
        RpcError::Node { message, data } => {
            let bytes = data.and_then(|d| hex::decode(d.trim_start_matches("0x")).ok());
            match bytes {
                Some(b) if b.len() >= 4 => match CivicRegistryErrors::abi_decode(&b) {
                    Ok(err) => Error::Reverted(describe_revert(&err)),
                    Err(_) => Error::Reverted(format!("{message} (data {})", hex0x(&b))),
                },
                _ if message.contains("revert") => Error::Reverted(message),
                _ => Error::Invalid(format!("node refused: {message}")),
            }
        }
    }
}

/// "KeyNotAuthorised { issuer: 0x.., keyHash: 0x.. }": the custom error's name and arguments.
fn describe_revert(err: &CivicRegistryErrors) -> String {
    let dbg = format!("{err:?}");
    // The enum's Debug is "Variant(Variant { .. })": keep the inner struct.
    match (dbg.find('('), dbg.rfind(')')) {
        (Some(a), Some(b)) if b > a => dbg[a + 1..b].to_owned(),
        _ => dbg,
    }
}

/// Deploy the registry contract from `authority_account`, recording `authority_key` (the P-256
/// key that signs issuer certificates). Returns the contract's address and the receipt.
pub fn deploy(
    cfg: &EvmConfig,
    authority_account: &EthKey,
    authority_key: &VerifyingKey,
) -> Result<Receipt> {
    let chain = Chain::new(cfg);
    chain.check_chain_id()?;
    let mut code = hex::decode(BYTECODE_HEX.trim())
        .map_err(|_| Error::Encoding("committed contract bytecode is not hex".into()))?;
    let args = CivicRegistry::constructorCall {
        authorityKey_: Bytes::from(keys::public_key_bytes(authority_key).to_vec()),
    };
    code.extend(SolConstructor::abi_encode(&args));
    let r = chain.send(authority_account, TxKind::Create, code)?;
    if r.contract.is_none() {
        return Err(Error::Invalid(
            "deployment receipt names no contract".into(),
        ));
    }
    Ok(r)
}

/// Who sends the transactions: the authority's account (issuer administration) and the
/// accounts of the issuers this process acts for. `accounts` names issuer accounts the
/// authority registers without holding their keys.
#[derive(Clone, Debug, Default)]
pub struct Signers {
    pub authority: Option<EthKey>,
    pub issuers: BTreeMap<String, EthKey>,
    pub accounts: BTreeMap<String, Address>,
}

impl Signers {
    fn account_of(&self, issuer_id: &str) -> Option<Address> {
        self.accounts
            .get(issuer_id)
            .copied()
            .or_else(|| self.issuers.get(issuer_id).map(EthKey::address))
    }
}

/// The verified mirror of the contract's events.
struct Mirror {
    state: State,
    /// The last block scanned, and its watermark.
    head: Watermark,
    /// Watermarks of the blocks that hold events (issuer and retirement records need them).
    blocks: BTreeMap<u64, Watermark>,
    events: u64,
    terminals: BTreeMap<String, (String, u64)>,
    /// Every admitted effect with the block that holds it, in chain order: what a clinic cache
    /// is fed ([`EvmRegistry::verified_effects`]), so that it rests on this one verification.
    effects: Vec<(Watermark, Effect)>,
}

/// The verified effects after a watermark, up to the confirmed head.
#[derive(Debug, Clone)]
pub struct VerifiedEffects {
    /// The confirmed block the mirror rests on (newest block less the confirmations).
    pub head: Watermark,
    /// Effects in blocks after the caller's watermark, up to `head`, in chain order.
    pub effects: Vec<(Watermark, Effect)>,
}

/// The registry on an EVM chain.
pub struct EvmRegistry {
    chain: Chain,
    cfg: EvmConfig,
    signers: Signers,
    genesis: u64,
    mirror: RefCell<Mirror>,
    last_receipt: Option<Receipt>,
    node: Option<LocalNode>,
}

impl std::fmt::Debug for EvmRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmRegistry")
            .field("rpc_url", &self.cfg.rpc_url)
            .field("chain_id", &self.cfg.chain_id)
            .field("contract", &self.cfg.contract)
            .field("signers", &self.signers)
            .finish_non_exhaustive()
    }
}

impl EvmRegistry {
    /// Connect: check the chain id and that `cfg.contract` is a Civic registry, then mirror its
    /// events up to the head (less `cfg.confirmations`).
    pub fn open(cfg: EvmConfig, signers: Signers) -> Result<Self> {
        let chain = Chain::new(&cfg);
        chain.check_chain_id()?;
        let code = chain
            .rpc
            .req("eth_getCode", json!([cfg.contract.to_string(), "latest"]))?;
        if data(&code, "contract code")?.is_empty() {
            return Err(Error::WrongChain(format!(
                "no contract at {} on chain {}",
                cfg.contract, cfg.chain_id
            )));
        }
        let not_ours = |e: Error| {
            Error::WrongChain(format!(
                "the contract at {} is not a Civic registry ({e})",
                cfg.contract
            ))
        };
        let key = chain
            .view(cfg.contract, CivicRegistry::authorityKeyCall {})
            .map_err(not_ours)?;
        let authority = keys::verifying_key_from_bytes(&key).map_err(not_ours)?;
        let genesis = chain
            .view(cfg.contract, CivicRegistry::genesisBlockCall {})
            .map_err(not_ours)?;
        // The mirror starts just before the genesis block; the genesis event must come first.
        let before = chain.block(genesis.saturating_sub(1))?;
        let reg = EvmRegistry {
            chain,
            cfg,
            signers,
            genesis,
            mirror: RefCell::new(Mirror {
                state: State::new(authority),
                head: before,
                blocks: BTreeMap::new(),
                events: 0,
                terminals: BTreeMap::new(),
                effects: Vec::new(),
            }),
            last_receipt: None,
            node: None,
        };
        reg.sync()?;
        Ok(reg)
    }

    /// Keep a local node alive as long as this registry (tests, benchmarks, the demo).
    pub fn with_node(mut self, node: LocalNode) -> Self {
        self.node = Some(node);
        self
    }

    /// The receipt of the last transaction this client sent (gas used, block).
    pub fn last_receipt(&self) -> Option<&Receipt> {
        self.last_receipt.as_ref()
    }

    pub fn config(&self) -> &EvmConfig {
        &self.cfg
    }

    pub fn signers_mut(&mut self) -> &mut Signers {
        &mut self.signers
    }

    /// The block that created the contract.
    pub fn genesis_block(&self) -> u64 {
        self.genesis
    }

    /// Contract events mirrored so far.
    pub fn events_mirrored(&self) -> u64 {
        self.mirror.borrow().events
    }

    /// Revoked terminals: terminal id -> (reason, unix seconds of the revoking block).
    pub fn revoked_terminals(&self) -> Result<BTreeMap<String, (String, u64)>> {
        self.sync()?;
        Ok(self.mirror.borrow().terminals.clone())
    }

    /// Send one contract call (ABI-encoded `input`, e.g. from [`abi`]) from `from`, with none of
    /// the registry's own checks: simulated, signed, sent, receipt awaited. For tooling and for
    /// tests of what readers do with events the backend would never send.
    pub fn call_contract(&self, from: &EthKey, input: Vec<u8>) -> Result<Receipt> {
        self.chain
            .send(from, TxKind::Call(self.cfg.contract), input)
    }

    /// Put a terminal on the revocation list (authority only).
    pub fn revoke_terminal(&mut self, terminal_id: &str, reason: &str) -> Result<Watermark> {
        let input = CivicRegistry::revokeTerminalCall {
            terminalId: terminal_id.to_owned(),
            reason: reason.to_owned(),
        }
        .abi_encode();
        self.send_as_authority(input)
    }

    /// The verified effects in the blocks after `after` (None: from the contract's genesis) up
    /// to the confirmed head, for a clinic cache that stands at `after`. They come out of the
    /// same replay as this mirror's (`apply_log`: the ledger's rules plus the event/statement
    /// match), so a cache fed from them needs no second verification. `after` must still be on
    /// the chain (its hash unchanged) and not above the confirmed head, else `ChainBroken`: a
    /// cache can only move forward along the chain it was built from.
    pub fn verified_effects(&self, after: Option<&Watermark>) -> Result<VerifiedEffects> {
        self.sync()?;
        let m = self.mirror.borrow();
        if let Some(a) = after {
            if a.height > m.head.height {
                return Err(Error::ChainBroken {
                    height: a.height,
                    reason: format!(
                        "the cache stands at block {} but the confirmed head is block {} (fewer                          confirmations before, or a chain rolled back)",
                        a.height, m.head.height
                    ),
                });
            }
            let on_chain = match self.chain.block(a.height) {
                Ok(b) => Some(b),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            if on_chain.is_none_or(|b| b.block_hash != a.block_hash) {
                return Err(Error::ChainBroken {
                    height: a.height,
                    reason: format!(
                        "block {} the cache stands at was reorganised away; raise the number                          of confirmations (now {}) and rebuild the cache",
                        a.height, self.cfg.confirmations
                    ),
                });
            }
        }
        let from = after.map(|a| a.height);
        Ok(VerifiedEffects {
            head: m.head.clone(),
            effects: m
                .effects
                .iter()
                .filter(|(w, _)| from.is_none_or(|f| w.height > f))
                .cloned()
                .collect(),
        })
    }

    /// Mirror new events up to the head less the confirmations.
    fn sync(&self) -> Result<()> {
        let mut m = self.mirror.borrow_mut();
        let newest = self.chain.block_number()?;
        let target = newest.saturating_sub(self.cfg.confirmations);
        // The block the mirror rests on must still be on the chain (a chain that got shorter or
        // replaced it was reorganised below the mirrored point).
        let still = match self.chain.block(m.head.height) {
            Ok(b) => Some(b),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if still.is_none_or(|b| b.block_hash != m.head.block_hash) {
            return Err(Error::ChainBroken {
                height: m.head.height,
                reason: format!(
                    "block {} was reorganised away after it was mirrored; raise the number of \
                     confirmations (now {})",
                    m.head.height, self.cfg.confirmations
                ),
            });
        }
        if target <= m.head.height {
            return Ok(());
        }
        let mut from = m.head.height + 1;
        while from <= target {
            let to = (from + LOG_PAGE_BLOCKS - 1).min(target);
            let logs = self.chain.rpc.req(
                "eth_getLogs",
                json!([{"address": self.cfg.contract.to_string(),
                        "fromBlock": qty(from), "toBlock": qty(to)}]),
            )?;
            let logs = logs
                .as_array()
                .ok_or_else(|| Error::Encoding("eth_getLogs: not a list".into()))?;
            for log in logs {
                apply_log(&self.chain, &mut m, log)?;
            }
            from = to + 1;
        }
        m.head = self.chain.block(target)?;
        Ok(())
    }

    fn send_as_authority(&mut self, input: Vec<u8>) -> Result<Watermark> {
        let key = self.signers.authority.clone().ok_or(Error::ReadOnly)?;
        let r = self
            .chain
            .send(&key, TxKind::Call(self.cfg.contract), input)?;
        let block = r.block;
        self.last_receipt = Some(r);
        self.settle(block)
    }

    fn send_as_issuer(&mut self, issuer_id: &str, input: Vec<u8>) -> Result<Watermark> {
        let key = self
            .signers
            .issuers
            .get(issuer_id)
            .cloned()
            .ok_or_else(|| {
                Error::NotAuthorised(format!(
                    "this registry client holds no Ethereum account key for issuer {issuer_id:?}"
                ))
            })?;
        let r = self
            .chain
            .send(&key, TxKind::Call(self.cfg.contract), input)?;
        let block = r.block;
        self.last_receipt = Some(r);
        self.settle(block)
    }

    /// After a transaction mined in `block`: mirror up to it (when confirmations allow) and
    /// return the watermark of that block.
    fn settle(&self, block: u64) -> Result<Watermark> {
        self.sync()?;
        self.chain.block(block)
    }

    /// Check an event against the mirror by the ledger's rules, as if it were the next block.
    fn precheck(&self, event: &Event) -> Result<Effect> {
        self.sync()?;
        let m = self.mirror.borrow();
        let time = m.head.time.max(now_secs());
        validate(&m.state, event, time)
    }

    /// The registered key (by hash) that signed `req`.
    fn signing_key<T: Request>(&self, req: &SignedRequest<T>) -> Result<B256> {
        let m = self.mirror.borrow();
        for row in m
            .state
            .issuers
            .get(req.request().issuer_id())
            .into_iter()
            .flatten()
        {
            if req.verify(&row.body.verifying_key()?).is_ok() {
                return Ok(key_hash(&row.body.public_key));
            }
        }
        Err(Error::BadSignature(
            "request is not signed by the issuer's current key",
        ))
    }

    /// The batch of `issuer_id` covering `index`.
    fn batch_of(&self, issuer_id: &str, index: u32) -> Result<u64> {
        self.mirror
            .borrow()
            .state
            .batches
            .iter()
            .find(|b| b.issuer_id == issuer_id && b.covers(index))
            .map(|b| b.batch_id)
            .ok_or_else(|| {
                Error::NotAuthorised(format!(
                    "status index {index} was never anchored by issuer {issuer_id:?}"
                ))
            })
    }

    fn records(&self, issuer_id: Option<&str>) -> Result<Vec<IssuerRecord>> {
        self.sync()?;
        let m = self.mirror.borrow();
        let mut out = Vec::new();
        for (id, rows) in &m.state.issuers {
            if issuer_id.is_some_and(|want| want != id) {
                continue;
            }
            for row in rows {
                out.push(IssuerRecord {
                    cert: IssuerCertificate::from_bytes(&row.cert)?,
                    body: row.body.clone(),
                    registered_at: m.blocks.get(&row.height).cloned().ok_or_else(|| {
                        Error::NotFound(format!("block {} in the mirror", row.height))
                    })?,
                });
            }
        }
        Ok(out)
    }

    /// Compare the contract's own storage with the replay of its events.
    fn check_storage(&self, m: &Mirror) -> Result<()> {
        let broken = |reason: String| Error::ChainBroken {
            height: m.head.height,
            reason,
        };
        let contract = self.cfg.contract;
        let count = self
            .chain
            .view(contract, CivicRegistry::batchCountCall {})?;
        if count != m.state.batches.len() as u64 {
            return Err(broken(format!(
                "the contract holds {count} batches, its events {}",
                m.state.batches.len()
            )));
        }
        for b in &m.state.batches {
            let r = self.chain.view(
                contract,
                CivicRegistry::batchCall {
                    batchId: b.batch_id,
                },
            )?;
            if r.issuer != id_hash(&b.issuer_id)
                || r.root.0 != b.root
                || r.size != b.size
                || r.first != b.first_status_index
                || r.count != b.status_count
                || r.blockNumber != b.height
            {
                return Err(broken(format!(
                    "batch {} in contract storage differs from its event",
                    b.batch_id
                )));
            }
        }
        for (issuer, list) in &m.state.status {
            let bytes = list.as_bytes();
            // 4 indices per list byte, 128 per contract word.
            let words = bytes.len().div_ceil(32);
            for w in 0..words {
                let want = status_word(list, w as u32);
                let have = self.chain.view(
                    contract,
                    CivicRegistry::statusWordCall {
                        issuer: id_hash(issuer),
                        word: U256::from(w),
                    },
                )?;
                if have != want {
                    return Err(broken(format!(
                        "status word {w} of issuer {issuer:?} in contract storage differs from \
                         its events"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The contract's status word `w` (indices 128w..128w+128, 2 bits each from bit 0) as the
/// mirror's status list holds it.
fn status_word(list: &crate::StatusList, w: u32) -> U256 {
    let mut word = U256::ZERO;
    for i in 0..128u32 {
        let s = list.get(w * 128 + i).as_bits();
        word |= U256::from(s) << (2 * i as usize);
    }
    word
}

/// Replay one log into the mirror: decode it, check it by the ledger's rules at its block's
/// time, and check that what the contract recorded matches the signed request.
fn apply_log(chain: &Chain, m: &mut Mirror, log: &Value) -> Result<()> {
    let height = quantity(&log["blockNumber"], "log block")?;
    let broken = |reason: String| Error::ChainBroken { height, reason };
    if log.get("removed").and_then(Value::as_bool) == Some(true) {
        return Err(broken("a removed (reorganised) log was served".into()));
    }
    let topics: Vec<B256> = log["topics"]
        .as_array()
        .ok_or_else(|| Error::Encoding("log topics".into()))?
        .iter()
        .map(|t| hash32(t, "topic").map(B256::from))
        .collect::<Result<_>>()?;
    let payload = data(&log["data"], "log data")?;
    let ev = CivicRegistryEvents::decode_raw_log(&topics, &payload)
        .map_err(|e| broken(format!("undecodable contract event: {e}")))?;
    let wm = match m.blocks.get(&height) {
        Some(w) => w.clone(),
        None => {
            // Nodes that put the block's time in its logs (anvil, recent geth) save one
            // eth_getBlockByNumber per event block; the hash comes from the same answer either way.
            let w = match log.get("blockTimestamp") {
                Some(t) if t.is_string() => Watermark {
                    height,
                    block_hash: hash32(&log["blockHash"], "log block hash")?,
                    time: quantity(t, "log block time")?,
                },
                _ => chain.block(height)?,
            };
            m.blocks.insert(height, w.clone());
            w
        }
    };
    if wm.block_hash != hash32(&log["blockHash"], "log block hash")? {
        return Err(broken("log block hash is not the block's hash".into()));
    }
    let event = match &ev {
        CivicRegistryEvents::RegistryCreated(e) => {
            if m.events != 0 {
                return Err(broken("a second RegistryCreated event".into()));
            }
            if e.authorityKey.as_ref() != keys::public_key_bytes(&m.state.authority).as_slice() {
                return Err(broken("genesis authority key changed".into()));
            }
            m.events += 1;
            return Ok(());
        }
        CivicRegistryEvents::TerminalRevoked(e) => {
            m.terminals
                .insert(e.terminalId.clone(), (e.reason.clone(), wm.time));
            m.events += 1;
            return Ok(());
        }
        CivicRegistryEvents::IssuerRegistered(e) => Event::RegisterIssuer {
            cert: e.cert.to_vec(),
        },
        CivicRegistryEvents::KeyRetired(e) => Event::RetireIssuerKey {
            retirement: e.retirement.to_vec(),
        },
        CivicRegistryEvents::BatchAnchored(e) => Event::AnchorBatch {
            request: e.request.to_vec(),
        },
        CivicRegistryEvents::StatusChanged(e) => Event::SetStatus {
            request: e.request.to_vec(),
        },
        CivicRegistryEvents::StatusBatchChanged(e) => Event::SetStatusBatch {
            request: e.request.to_vec(),
        },
    };
    if m.events == 0 {
        return Err(broken(
            "the first contract event is not RegistryCreated".into(),
        ));
    }
    let effect = validate(&m.state, &event, wm.time)
        .map_err(|e| broken(format!("event rejected on replay: {e}")))?;
    // What the contract acted on must be what the issuer or authority signed.
    let consistent = match (&ev, &effect) {
        (
            CivicRegistryEvents::IssuerRegistered(e),
            Effect::Issuer {
                issuer_id, body, ..
            },
        ) => e.issuer == id_hash(issuer_id) && e.keyHash == key_hash(&body.public_key),
        (CivicRegistryEvents::KeyRetired(e), Effect::Retire { body, .. }) => {
            e.issuer == id_hash(&body.issuer_id)
                && e.keyHash == key_hash(&body.public_key)
                && e.from == body.from
        }
        (CivicRegistryEvents::BatchAnchored(e), Effect::Batch { batch, .. }) => {
            e.batchId == batch.batch_id
                && e.issuer == id_hash(&batch.issuer_id)
                && e.root.0 == batch.root
                && e.size == batch.size
                && e.first == batch.first_status_index
                && e.count == batch.status_count
        }
        (
            CivicRegistryEvents::StatusChanged(e),
            Effect::Status {
                issuer_id,
                index,
                status,
                ..
            },
        ) => e.issuer == id_hash(issuer_id) && e.index == *index && e.status == status.as_bits(),
        (
            CivicRegistryEvents::StatusBatchChanged(e),
            Effect::StatusBatch {
                issuer_id, changes, ..
            },
        ) => e.issuer == id_hash(issuer_id) && e.changes == U256::from(changes.len()),
        _ => false,
    };
    if !consistent {
        return Err(broken(
            "the contract event does not match the signed statement it carries".into(),
        ));
    }
    m.effects.push((wm, effect.clone()));
    m.state.apply(effect, height);
    m.events += 1;
    Ok(())
}

impl Registry for EvmRegistry {
    fn authority_key(&self) -> Result<VerifyingKey> {
        Ok(self.mirror.borrow().state.authority)
    }

    fn watermark(&self) -> Result<Watermark> {
        self.sync()?;
        Ok(self.mirror.borrow().head.clone())
    }

    fn register_issuer(&mut self, cert: &IssuerCertificate) -> Result<Watermark> {
        let Effect::Issuer {
            issuer_id, body, ..
        } = self.precheck(&Event::RegisterIssuer {
            cert: cert.to_bytes(),
        })?
        else {
            return Err(Error::Invalid(
                "internal: registration produced no issuer".into(),
            ));
        };
        let account = self.signers.account_of(&issuer_id).ok_or_else(|| {
            Error::Invalid(format!(
                "no Ethereum account is configured for issuer {issuer_id:?}"
            ))
        })?;
        let kinds = body
            .kinds
            .iter()
            .fold(0u8, |acc, k| acc | (1u8 << (*k as u8)));
        let input = CivicRegistry::registerIssuerCall {
            issuer: id_hash(&issuer_id),
            account,
            kinds,
            keyHash: key_hash(&body.public_key),
            notBefore: body.not_before,
            notAfter: body.not_after,
            cert: Bytes::from(cert.to_bytes()),
        }
        .abi_encode();
        self.send_as_authority(input)
    }

    fn retire_issuer_key(&mut self, retirement: &KeyRetirement) -> Result<Watermark> {
        let Effect::Retire { body, statement } = self.precheck(&Event::RetireIssuerKey {
            retirement: retirement.to_bytes(),
        })?
        else {
            return Err(Error::Invalid(
                "internal: retirement produced no effect".into(),
            ));
        };
        let input = CivicRegistry::retireKeyCall {
            issuer: id_hash(&body.issuer_id),
            keyHash: key_hash(&body.public_key),
            from: body.from,
            retirement: Bytes::from(statement),
        }
        .abi_encode();
        self.send_as_authority(input)
    }

    fn retired_keys(&self, issuer_id: &str) -> Result<Vec<RetiredKey>> {
        self.sync()?;
        let mut rows: Vec<(u64, RetiredKey)> = Vec::new();
        {
            let m = self.mirror.borrow();
            for ((id, _), row) in &m.state.retired {
                if id != issuer_id {
                    continue;
                }
                rows.push((
                    row.height,
                    RetiredKey {
                        retirement: KeyRetirement::from_bytes(&row.statement)?,
                        body: row.body.clone(),
                        recorded_at: m.blocks.get(&row.height).cloned().ok_or_else(|| {
                            Error::NotFound(format!("block {} in the mirror", row.height))
                        })?,
                    },
                ));
            }
        }
        rows.sort_by_key(|(h, _)| *h);
        Ok(rows.into_iter().map(|(_, r)| r).collect())
    }

    fn anchor_batch(&mut self, req: &SignedAnchor) -> Result<BatchRecord> {
        let request = req.to_bytes();
        self.precheck(&Event::AnchorBatch {
            request: request.clone(),
        })?;
        let key = self.signing_key(req)?;
        let a = req.request();
        let input = CivicRegistry::anchorCall {
            root: B256::from(a.root),
            size: a.size,
            first: a.first_status_index,
            count: a.status_count,
            keyHash: key,
            request: Bytes::from(request),
        }
        .abi_encode();
        let wm = self.send_as_issuer(&a.issuer_id, input)?;
        // From the receipt, not the mirror: with confirmations the mirror may not hold the
        // block yet, and the anchor is on chain all the same.
        let batch_id = self
            .last_receipt
            .as_ref()
            .and_then(|r| r.anchored_batch)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the anchor transaction in block {} logged no BatchAnchored event",
                    wm.height
                ))
            })?;
        Ok(BatchRecord {
            batch_id,
            issuer_id: a.issuer_id.clone(),
            root: a.root,
            size: a.size,
            first_status_index: a.first_status_index,
            status_count: a.status_count,
            height: wm.height,
            anchored_at: wm.time,
        })
    }

    fn set_status(&mut self, change: &SignedStatusChange) -> Result<Watermark> {
        let request = change.to_bytes();
        self.precheck(&Event::SetStatus {
            request: request.clone(),
        })?;
        let key = self.signing_key(change)?;
        let c = change.request();
        let input = CivicRegistry::setStatusCall {
            batchId: self.batch_of(&c.issuer_id, c.status_index)?,
            index: c.status_index,
            newStatus: c.status.as_bits(),
            keyHash: key,
            request: Bytes::from(request),
        }
        .abi_encode();
        self.send_as_issuer(&c.issuer_id, input)
    }

    fn set_status_batch(&mut self, batch: &SignedStatusBatch) -> Result<Watermark> {
        let request = batch.to_bytes();
        self.precheck(&Event::SetStatusBatch {
            request: request.clone(),
        })?;
        let key = self.signing_key(batch)?;
        let b = batch.request();
        let mut changes: Vec<(u32, CredentialStatus)> = b.changes.clone();
        // The contract takes strictly ascending indices (its O(1) duplicate check).
        changes.sort_unstable_by_key(|(i, _)| *i);
        let mut packed = Vec::with_capacity(changes.len());
        for (index, status) in changes {
            let batch_id = self.batch_of(&b.issuer_id, index)?;
            packed.push(
                (U256::from(batch_id) << 64)
                    | (U256::from(index) << 8)
                    | U256::from(status.as_bits()),
            );
        }
        let input = CivicRegistry::setStatusBatchCall {
            changes: packed,
            keyHash: key,
            request: Bytes::from(request),
        }
        .abi_encode();
        self.send_as_issuer(&b.issuer_id, input)
    }

    fn issuer_certs(&self, issuer_id: &str) -> Result<Vec<IssuerRecord>> {
        self.records(Some(issuer_id))
    }

    fn issuers(&self) -> Result<Vec<IssuerRecord>> {
        self.records(None)
    }

    fn batch(&self, batch_id: u64) -> Result<Option<BatchRecord>> {
        self.sync()?;
        let m = self.mirror.borrow();
        Ok(batch_id
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| m.state.batches.get(i))
            .cloned())
    }

    fn status(&self, issuer_id: &str, index: u32) -> Result<CredentialStatus> {
        self.sync()?;
        Ok(self
            .mirror
            .borrow()
            .state
            .status
            .get(issuer_id)
            .map_or(CredentialStatus::Valid, |l| l.get(index)))
    }

    fn next_status_index(&self, issuer_id: &str) -> Result<u32> {
        self.sync()?;
        let m = self.mirror.borrow();
        Ok(m.state
            .batches
            .iter()
            .filter(|b| b.issuer_id == issuer_id)
            .map(|b| b.first_status_index + b.status_count)
            .max()
            .unwrap_or(0))
    }

    /// Replay every event of the contract from its genesis block into a fresh mirror (each
    /// signature and rule checked again), then compare the contract's storage with the replay.
    /// `blocks` counts the chain's blocks up to the head.
    fn verify_chain(&self) -> Result<ChainReport> {
        let fresh = EvmRegistry::open(self.cfg.clone(), Signers::default())?;
        let m = fresh.mirror.borrow();
        fresh.check_storage(&m)?;
        Ok(ChainReport {
            blocks: m.head.height + 1,
            issuers: m.state.issuers.len(),
            batches: m.state.batches.len(),
            status_changes: m.state.status_changes,
            retired_keys: m.state.retired.len(),
            head: m.head.clone(),
        })
    }
}
