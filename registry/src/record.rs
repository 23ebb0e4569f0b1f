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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Claims, Credential, EducationClaims, Kind};

    fn sample() -> CardRecord {
        let key = crate::keys::generate();
        let cred = Credential {
            version: 1,
            kind: Kind::Education,
            card_id: "C1".into(),
            issuer_id: "edu".into(),
            issued_at: 10,
            expires_at: 20,
            status_index: 3,
            salt: [1; 16],
            claims: Claims::Education(EducationClaims { degrees: vec![] }),
        };
        let credential = SignedCredential::sign(&cred, &key).unwrap();
        let leaves = [credential.commitment(), [0; 32], [1; 32]];
        CardRecord {
            credential,
            batch_id: 7,
            proof: crate::merkle::prove(&leaves, 0).unwrap(),
        }
    }

    #[test]
    fn roundtrip_and_shape() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(CardRecord::decode(&bytes).unwrap(), r);
        let v: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
        let keys: Vec<&str> = v
            .as_map()
            .unwrap()
            .iter()
            .filter_map(|(k, _)| k.as_text())
            .collect();
        assert_eq!(keys, ["credential", "batch_id", "proof"]);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(CardRecord::decode(&trailing).is_err());
    }

    #[test]
    fn mutations_never_panic() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut m = bytes.clone();
                m[i] ^= x;
                let _ = CardRecord::decode(&m);
            }
            let _ = CardRecord::decode(&bytes[..i]);
        }
    }
}
