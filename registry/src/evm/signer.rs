//! The Ethereum account key that sends transactions (secp256k1), and legacy EIP-155
//! transactions. Legacy transactions run on every EVM chain governments use (Besu QBFT with a
//! zero base fee, FISCO BCOS, Neo X), where an EIP-1559 fee market may be off.

use std::fmt;
use std::path::Path;

use alloy_primitives::{keccak256, Address, Bytes, TxKind, U256};
use alloy_rlp::{Encodable, RlpEncodable};
use k256::ecdsa::SigningKey;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// A secp256k1 account key. Debug shows the address only; the secret never leaves this type.
#[derive(Clone)]
pub struct EthKey {
    key: SigningKey,
    address: Address,
}

impl fmt::Debug for EthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EthKey({})", self.address)
    }
}

impl EthKey {
    pub fn from_bytes(secret: &[u8]) -> Result<Self> {
        let key = SigningKey::from_slice(secret)
            .map_err(|_| Error::Encoding("not a secp256k1 private key".into()))?;
        let point = key.verifying_key().to_encoded_point(false);
        let raw: [u8; 64] = point.as_bytes()[1..]
            .try_into()
            .map_err(|_| Error::Encoding("secp256k1 public key".into()))?;
        let address = Address::from_raw_public_key(&raw);
        Ok(EthKey { key, address })
    }

    /// Hex ("0x" optional, surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self> {
        let hex_text = Zeroizing::new(text.trim().trim_start_matches("0x").to_owned());
        let bytes = Zeroizing::new(
            hex::decode(hex_text.as_str())
                .map_err(|_| Error::Encoding("account key: not hex".into()))?,
        );
        Self::from_bytes(&bytes)
    }

    /// A key file: one line of hex. The file's contents are never printed.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| Error::Io(format!("account key file {}: {e}", path.display())))?,
        );
        Self::from_hex(&text)
            .map_err(|e| Error::Encoding(format!("account key file {}: {e}", path.display())))
    }

    pub fn generate() -> Self {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let bytes = Zeroizing::new(key.to_bytes());
        Self::from_bytes(&bytes).expect("a fresh key is valid")
    }

    /// The secret as hex, for writing a key file (Zeroizing).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.key.to_bytes()))
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// Sign a legacy transaction with EIP-155 replay protection; return its raw bytes.
    pub(crate) fn sign_legacy(&self, tx: &LegacyTx) -> Result<Vec<u8>> {
        let unsigned = UnsignedLegacy {
            nonce: tx.nonce,
            gas_price: tx.gas_price,
            gas: tx.gas,
            to: tx.to,
            value: U256::ZERO,
            input: tx.input.clone(),
            chain_id: tx.chain_id,
            zero1: 0,
            zero2: 0,
        };
        let mut buf = Vec::new();
        unsigned.encode(&mut buf);
        let hash = keccak256(&buf);
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(hash.as_slice())
            .map_err(|e| Error::Encoding(format!("transaction signature: {e}")))?;
        let v = u64::from(recid.to_byte()) + 35 + 2 * tx.chain_id;
        let (r, s) = sig.split_bytes();
        let signed = SignedLegacy {
            nonce: tx.nonce,
            gas_price: tx.gas_price,
            gas: tx.gas,
            to: tx.to,
            value: U256::ZERO,
            input: tx.input.clone(),
            v,
            r: U256::from_be_slice(&r),
            s: U256::from_be_slice(&s),
        };
        let mut out = Vec::new();
        signed.encode(&mut out);
        Ok(out)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct LegacyTx {
    pub nonce: u64,
    pub gas_price: u128,
    pub gas: u64,
    pub to: TxKind,
    pub input: Bytes,
    pub chain_id: u64,
}

/// EIP-155 signing payload: the nine fields with (chain_id, 0, 0) in place of (v, r, s).
#[derive(RlpEncodable)]
struct UnsignedLegacy {
    nonce: u64,
    gas_price: u128,
    gas: u64,
    to: TxKind,
    value: U256,
    input: Bytes,
    chain_id: u64,
    zero1: u8,
    zero2: u8,
}

#[derive(RlpEncodable)]
struct SignedLegacy {
    nonce: u64,
    gas_price: u128,
    gas: u64,
    to: TxKind,
    value: U256,
    input: Bytes,
    v: u64,
    r: U256,
    s: U256,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_account_address() {
        // anvil / hardhat dev account #0.
        let k =
            EthKey::from_hex("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
                .unwrap();
        assert_eq!(
            k.address().to_string(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        assert!(!format!("{k:?}").contains("ac0974"));
    }
}
