//! The credential model: a CBOR map signed by its issuer as a COSE_Sign1.

use std::fmt;
use std::str::FromStr;

use p256::ecdsa::{SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cose::{self, Signed, CT_CREDENTIAL};
use crate::{Error, Result};

/// The only credential format version this crate reads and writes.
pub const CREDENTIAL_VERSION: u8 = 1;

/// Credential kinds. The byte values equal `card_applet::protocol::kind`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Identity,
    Health,
    Education,
    /// The health credential's emergency subset (blood type, allergies, emergency contact),
    /// signed separately by the health bureau so a clinic can read and verify it without the
    /// citizen's PIN while the full health record stays behind the PIN.
    Emergency,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Identity,
        Kind::Health,
        Kind::Education,
        Kind::Emergency,
    ];

    pub fn as_byte(self) -> u8 {
        match self {
            Kind::Identity => 1,
            Kind::Health => 2,
            Kind::Education => 3,
            Kind::Emergency => 4,
        }
    }

    pub fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Identity),
            2 => Some(Kind::Health),
            3 => Some(Kind::Education),
            4 => Some(Kind::Emergency),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Identity => "identity",
            Kind::Health => "health",
            Kind::Education => "education",
            Kind::Emergency => "emergency",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::Encoding(format!(
                    "unknown credential kind {s:?} (identity, health, education, emergency)"
                ))
            })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityClaims {
    pub name: String,
    /// YYYY-MM-DD
    pub birth_date: String,
    /// 65-byte SEC1 key of the card itself: a copied card fails chip authentication.
    #[serde(with = "serde_bytes")]
    pub card_public_key: Vec<u8>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EmergencyInfo {
    pub blood_type: String,
    pub allergies: Vec<String>,
    pub emergency_contact: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vaccination {
    pub name: String,
    pub date: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthClaims {
    pub emergency: EmergencyInfo,
    pub chronic_conditions: Vec<String>,
    pub vaccinations: Vec<Vaccination>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Degree {
    pub title: String,
    pub institution: String,
    pub year: u16,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EducationClaims {
    pub degrees: Vec<Degree>,
}

/// The claims of a credential. In CBOR this is the bare claims map; which variant it is follows
/// from the credential's `kind` (see [`Credential::decode`]).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Claims {
    Identity(IdentityClaims),
    Health(HealthClaims),
    Education(EducationClaims),
    Emergency(EmergencyInfo),
}

impl Claims {
    pub fn kind(&self) -> Kind {
        match self {
            Claims::Identity(_) => Kind::Identity,
            Claims::Health(_) => Kind::Health,
            Claims::Education(_) => Kind::Education,
            Claims::Emergency(_) => Kind::Emergency,
        }
    }
}

/// A credential as the issuer signs it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "CredentialWire")]
pub struct Credential {
    pub version: u8,
    pub kind: Kind,
    pub card_id: String,
    pub issuer_id: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the credential is expired at and after this instant.
    pub expires_at: u64,
    pub status_index: u32,
    #[serde(with = "cose::fixed_bytes")]
    pub salt: [u8; 16],
    pub claims: Claims,
}

/// Wire shape: claims kept as a CBOR value until `kind` is known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialWire {
    version: u8,
    kind: Kind,
    card_id: String,
    issuer_id: String,
    issued_at: u64,
    expires_at: u64,
    status_index: u32,
    #[serde(with = "cose::fixed_bytes")]
    salt: [u8; 16],
    claims: ciborium::Value,
}

impl TryFrom<CredentialWire> for Credential {
    type Error = Error;
    fn try_from(w: CredentialWire) -> Result<Self> {
        if w.version != CREDENTIAL_VERSION {
            return Err(Error::Encoding(format!(
                "credential version {} is not supported",
                w.version
            )));
        }
        let bad = |e: ciborium::value::Error| {
            Error::Encoding(format!(
                "credential claims do not match kind {}: {e}",
                w.kind
            ))
        };
        let claims = match w.kind {
            Kind::Identity => Claims::Identity(w.claims.deserialized().map_err(bad)?),
            Kind::Health => Claims::Health(w.claims.deserialized().map_err(bad)?),
            Kind::Education => Claims::Education(w.claims.deserialized().map_err(bad)?),
            Kind::Emergency => Claims::Emergency(w.claims.deserialized().map_err(bad)?),
        };
        Ok(Credential {
            version: w.version,
            kind: w.kind,
            card_id: w.card_id,
            issuer_id: w.issuer_id,
            issued_at: w.issued_at,
            expires_at: w.expires_at,
            status_index: w.status_index,
            salt: w.salt,
            claims,
        })
    }
}

impl Credential {
    /// 16 random bytes that make the commitment unguessable.
    pub fn new_salt() -> [u8; 16] {
        let mut s = [0u8; 16];
        OsRng.fill_bytes(&mut s);
        s
    }

    /// Canonical CBOR encoding (fields in declaration order).
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of strings, integers and byte strings into a Vec cannot fail.
        cose::to_cbor(self).unwrap_or_default()
    }

    /// Decode one credential: rejects trailing bytes, unknown versions, unknown fields and
    /// claims that do not match `kind`.
    pub fn decode(b: &[u8]) -> Result<Self> {
        cose::from_cbor(b, "credential")
    }

    fn check_consistent(&self) -> Result<()> {
        if self.version != CREDENTIAL_VERSION {
            return Err(Error::Encoding(format!(
                "credential version {} is not supported",
                self.version
            )));
        }
        if self.claims.kind() != self.kind {
            return Err(Error::Encoding(format!(
                "credential kind {} but {} claims",
                self.kind,
                self.claims.kind()
            )));
        }
        Ok(())
    }
}

/// SHA-256 of the encoded credential: the exact payload bytes, never a re-encoding.
pub fn commitment(encoded: &[u8]) -> [u8; 32] {
    Sha256::digest(encoded).into()
}

/// A credential signed by its issuer: tagged COSE_Sign1, ES256, kid = issuer id.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedCredential {
    inner: Signed,
}

impl SignedCredential {
    pub fn sign(cred: &Credential, issuer_key: &SigningKey) -> Result<Self> {
        cred.check_consistent()?;
        let payload = cose::to_cbor(cred)?;
        let inner = Signed::sign(
            payload,
            cred.issuer_id.as_bytes(),
            CT_CREDENTIAL,
            issuer_key,
        )?;
        Ok(Self { inner })
    }

    /// Parse the COSE framing. The payload is not decoded here: see
    /// [`credential_unverified`](Self::credential_unverified) and [`verify`](Self::verify).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        Ok(Self {
            inner: Signed::from_bytes(b, CT_CREDENTIAL)?,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.inner.as_bytes()
    }

    /// The issuer id from the protected `kid`. Unauthenticated: only to find the key.
    pub fn issuer_id(&self) -> Result<String> {
        String::from_utf8(self.inner.kid().to_vec())
            .map_err(|_| Error::Encoding("credential kid is not UTF-8".into()))
    }

    pub fn payload_bytes(&self) -> &[u8] {
        self.inner.payload()
    }

    pub fn commitment(&self) -> [u8; 32] {
        commitment(self.payload_bytes())
    }

    /// Decode the payload without checking the signature.
    pub fn credential_unverified(&self) -> Result<Credential> {
        Credential::decode(self.payload_bytes())
    }

    /// Check the signature and that the kid names the payload's issuer; return the credential.
    pub fn verify(&self, issuer_key: &VerifyingKey) -> Result<Credential> {
        self.inner.verify(issuer_key, "credential signature")?;
        let cred = self.credential_unverified()?;
        if cred.issuer_id.as_bytes() != self.inner.kid() {
            return Err(Error::BadSignature(
                "credential kid does not name its issuer",
            ));
        }
        Ok(cred)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_identity(card_key: &[u8; 65]) -> Credential {
        Credential {
            version: 1,
            kind: Kind::Identity,
            card_id: "CARD-0001".into(),
            issuer_id: "id-bureau".into(),
            issued_at: 1_700_000_000,
            expires_at: 1_900_000_000,
            status_index: 7,
            salt: [9; 16],
            claims: Claims::Identity(IdentityClaims {
                name: "Li Wei".into(),
                birth_date: "1990-01-02".into(),
                card_public_key: card_key.to_vec(),
            }),
        }
    }

    fn sample_health() -> Credential {
        Credential {
            version: 1,
            kind: Kind::Health,
            card_id: "CARD-0001".into(),
            issuer_id: "health".into(),
            issued_at: 1,
            expires_at: 2,
            status_index: 0,
            salt: Credential::new_salt(),
            claims: Claims::Health(HealthClaims {
                emergency: EmergencyInfo {
                    blood_type: "O+".into(),
                    allergies: vec!["penicillin".into()],
                    emergency_contact: "+86 10 1234".into(),
                },
                chronic_conditions: vec![],
                vaccinations: vec![Vaccination {
                    name: "MMR".into(),
                    date: "2001-03-04".into(),
                }],
            }),
        }
    }

    #[test]
    fn encode_decode_roundtrip() {
        let k = crate::keys::generate();
        let c = sample_identity(&crate::keys::public_key_bytes(k.verifying_key()));
        assert_eq!(Credential::decode(&c.encode()).unwrap(), c);
        let h = sample_health();
        assert_eq!(Credential::decode(&h.encode()).unwrap(), h);
        let e = Credential {
            kind: Kind::Education,
            claims: Claims::Education(EducationClaims {
                degrees: vec![Degree {
                    title: "BSc".into(),
                    institution: "PKU".into(),
                    year: 2012,
                }],
            }),
            ..h.clone()
        };
        assert_eq!(Credential::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn decode_rejects_bad_input() {
        let h = sample_health();
        let mut b = h.encode();
        b.push(0);
        assert!(Credential::decode(&b).is_err(), "trailing byte");
        let mut v2 = h.clone();
        v2.version = 2;
        assert!(Credential::decode(&v2.encode()).is_err(), "version");
        let mut mismatch = h.clone();
        mismatch.kind = Kind::Education;
        assert!(Credential::decode(&mismatch.encode()).is_err(), "kind");
        assert!(Credential::decode(&[]).is_err());
        assert!(Credential::decode(&[0xff, 0x00, 0x12]).is_err());
        // every truncation fails without panicking
        let full = h.encode();
        for n in 0..full.len() {
            assert!(Credential::decode(&full[..n]).is_err());
        }
    }

    #[test]
    fn sign_verify() {
        let issuer = crate::keys::generate();
        let other = crate::keys::generate();
        let c = sample_health();
        let s = SignedCredential::sign(&c, &issuer).unwrap();
        let back = SignedCredential::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.issuer_id().unwrap(), "health");
        assert_eq!(back.verify(issuer.verifying_key()).unwrap(), c);
        assert_eq!(back.commitment(), commitment(&c.encode()));
        assert!(matches!(
            back.verify(other.verifying_key()),
            Err(Error::BadSignature(_))
        ));
        let mut bad = sample_health();
        bad.kind = Kind::Identity;
        assert!(SignedCredential::sign(&bad, &issuer).is_err());
        // every single-byte change is rejected somewhere
        let bytes = s.to_bytes();
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= 0x01;
            let ok = SignedCredential::from_bytes(&m)
                .and_then(|s| s.verify(issuer.verifying_key()))
                .is_ok();
            assert!(!ok, "byte {i}");
        }
    }
}
