//! What an issuing office writes into a card slot: the signed credential, the batch it was
//! anchored in and its inclusion proof.

use serde::{Deserialize, Serialize};

use crate::cose;
use crate::credential::SignedCredential;
use crate::merkle::InclusionProof;
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct CardRecord {
    pub credential: SignedCredential,
    pub batch_id: u64,
    pub proof: InclusionProof,
}

#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(with = "serde_bytes")]
    credential: &'a [u8],
    batch_id: u64,
    proof: &'a InclusionProof,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    #[serde(with = "serde_bytes")]
    credential: Vec<u8>,
    batch_id: u64,
    proof: InclusionProof,
}

impl CardRecord {
    /// CBOR map `{"credential": bstr, "batch_id": uint, "proof": {...}}`.
    pub fn encode(&self) -> Vec<u8> {
        let w = WireOut {
            credential: self.credential.as_bytes(),
            batch_id: self.batch_id,
            proof: &self.proof,
        };
        // Plain integers and byte strings into a Vec: cannot fail.
        cose::to_cbor(&w).unwrap_or_default()
    }

    /// Decode a record; rejects trailing bytes and a credential that is not a COSE_Sign1.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let w: WireIn = cose::from_cbor(b, "card record")?;
        Ok(Self {
            credential: SignedCredential::from_bytes(&w.credential)?,
            batch_id: w.batch_id,
            proof: w.proof,
        })
    }
}
