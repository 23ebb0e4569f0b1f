//! Issuer certificates: the authority's statement that an issuer key may issue some kinds of
//! credential during a validity window; and key retirements: the authority's statement that an
//! issuer key must not be trusted from some time on (after a compromise).

use p256::ecdsa::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cose::{self, Signed, CT_ISSUER_CERT, CT_KEY_RETIREMENT};
use crate::credential::Kind;
use crate::{keys, Error, Result};

/// The key id the authority puts in the certificates it signs.
pub const AUTHORITY_KID: &[u8] = b"authority";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerCertBody {
    pub issuer_id: String,
    pub name: String,
    pub kinds: Vec<Kind>,
    /// 65-byte SEC1 uncompressed P-256 key.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// Unix seconds, inclusive.
    pub not_before: u64,
    /// Unix seconds, inclusive.
    pub not_after: u64,
}

impl IssuerCertBody {
    /// Whether `at` lies in the validity window.
    pub fn valid_at(&self, at: u64) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// Whether this certificate allows issuing `kind` at time `at`.
    pub fn may_issue(&self, kind: Kind, at: u64) -> bool {
        self.valid_at(at) && self.kinds.contains(&kind)
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        keys::verifying_key_from_bytes(&self.public_key)
    }

    /// Structural checks every certificate must pass.
    pub fn check(&self) -> Result<()> {
        if self.issuer_id.is_empty() || self.issuer_id.len() > 128 {
            return Err(Error::Encoding("issuer id must be 1..=128 bytes".into()));
        }
        if self.kinds.is_empty() {
            return Err(Error::Encoding("issuer certificate names no kinds".into()));
        }
        if self.not_before > self.not_after {
            return Err(Error::Encoding(
                "issuer certificate window ends before it starts".into(),
            ));
        }
        if self.public_key.len() != 65 {
            return Err(Error::Encoding(
                "issuer public key must be 65-byte SEC1 uncompressed".into(),
            ));
        }
        self.verifying_key().map(|_| ())
    }
}

/// An [`IssuerCertBody`] signed by the authority (tagged COSE_Sign1, ES256).
#[derive(Clone, Debug, PartialEq)]
pub struct IssuerCertificate {
    inner: Signed,
}

impl IssuerCertificate {
    pub fn sign(body: &IssuerCertBody, authority: &SigningKey) -> Result<Self> {
        body.check()?;
        let payload = cose::to_cbor(body)?;
        Ok(Self {
            inner: Signed::sign(payload, AUTHORITY_KID, CT_ISSUER_CERT, authority)?,
        })
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        Ok(Self {
            inner: Signed::from_bytes(b, CT_ISSUER_CERT)?,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.inner.as_bytes()
    }

    /// The body without checking the signature.
    pub fn body_unverified(&self) -> Result<IssuerCertBody> {
        cose::from_cbor(self.inner.payload(), "issuer certificate")
    }

    /// Check the authority's signature and the body; return the body.
    pub fn verify(&self, authority: &VerifyingKey) -> Result<IssuerCertBody> {
        self.inner
            .verify(authority, "issuer certificate signature")?;
        let body = self.body_unverified()?;
        body.check()?;
        Ok(body)
    }
}

/// Longest reason a key retirement may give, in bytes.
pub const MAX_RETIREMENT_REASON: usize = 1024;

/// The authority's statement that `public_key`, certified for `issuer_id`, is retired from time
/// `from`: nothing it signed that claims to be issued at or after `from`, or that was anchored
/// in a block at or after `from`, is valid any more; what it signed and anchored before stays
/// valid.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyRetirementBody {
    pub issuer_id: String,
    /// 65-byte SEC1 uncompressed P-256 key, as in the issuer's certificate.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// Unix seconds, inclusive: the earliest time the key may have been in other hands.
    pub from: u64,
    /// Why, in one plain sentence (shown to whoever gets a negative verdict).
    pub reason: String,
}

impl KeyRetirementBody {
    /// Whether a credential (or request) of this key at time `at` falls under the retirement.
    pub fn covers(&self, at: u64) -> bool {
        at >= self.from
    }

    /// Structural checks every retirement must pass.
    pub fn check(&self) -> Result<()> {
        if self.issuer_id.is_empty() || self.issuer_id.len() > 128 {
            return Err(Error::Encoding("issuer id must be 1..=128 bytes".into()));
        }
        if self.public_key.len() != 65 {
            return Err(Error::Encoding(
                "retired key must be 65-byte SEC1 uncompressed".into(),
            ));
        }
        keys::verifying_key_from_bytes(&self.public_key)?;
        if self.reason.trim().is_empty() || self.reason.len() > MAX_RETIREMENT_REASON {
            return Err(Error::Encoding(format!(
                "a key retirement needs a reason of 1..={MAX_RETIREMENT_REASON} bytes"
            )));
        }
        Ok(())
    }
}

/// A [`KeyRetirementBody`] signed by the authority (tagged COSE_Sign1, ES256, its own content
/// type). Signed on its own, like a certificate, so that it can be checked without the ledger
/// block that recorded it: by the EVM backend (whose blocks the authority does not sign), by a
/// clinic's mirror, by anyone.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRetirement {
    inner: Signed,
}

impl KeyRetirement {
    pub fn sign(body: &KeyRetirementBody, authority: &SigningKey) -> Result<Self> {
        body.check()?;
        let payload = cose::to_cbor(body)?;
        Ok(Self {
            inner: Signed::sign(payload, AUTHORITY_KID, CT_KEY_RETIREMENT, authority)?,
        })
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        Ok(Self {
            inner: Signed::from_bytes(b, CT_KEY_RETIREMENT)?,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.inner.as_bytes()
    }

    /// The body without checking the signature.
    pub fn body_unverified(&self) -> Result<KeyRetirementBody> {
        cose::from_cbor(self.inner.payload(), "key retirement")
    }

    /// Check the authority's signature and the body; return the body.
    pub fn verify(&self, authority: &VerifyingKey) -> Result<KeyRetirementBody> {
        self.inner.verify(authority, "key retirement signature")?;
        let body = self.body_unverified()?;
        body.check()?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_window() {
        let auth = keys::generate();
        let issuer = keys::generate();
        let body = IssuerCertBody {
            issuer_id: "health".into(),
            name: "Health Bureau".into(),
            kinds: vec![Kind::Health],
            public_key: keys::public_key_bytes(issuer.verifying_key()).to_vec(),
            not_before: 100,
            not_after: 200,
        };
        let cert = IssuerCertificate::sign(&body, &auth).unwrap();
        let back = IssuerCertificate::from_bytes(&cert.to_bytes()).unwrap();
        assert_eq!(back.verify(auth.verifying_key()).unwrap(), body);
        assert!(back.verify(issuer.verifying_key()).is_err());
        assert!(body.may_issue(Kind::Health, 100));
        assert!(body.may_issue(Kind::Health, 200));
        assert!(!body.may_issue(Kind::Health, 201));
        assert!(!body.may_issue(Kind::Identity, 150));
        assert_eq!(&body.verifying_key().unwrap(), issuer.verifying_key());
        let mut bad = body.clone();
        bad.kinds.clear();
        assert!(IssuerCertificate::sign(&bad, &auth).is_err());
        // a credential is not a certificate (content type differs)
        assert!(IssuerCertificate::from_bytes(&[0xd2, 0x84]).is_err());
    }

    #[test]
    fn retirement_sign_verify() {
        let auth = keys::generate();
        let issuer = keys::generate();
        let body = KeyRetirementBody {
            issuer_id: "health".into(),
            public_key: keys::public_key_bytes(issuer.verifying_key()).to_vec(),
            from: 1000,
            reason: "key copied from a stolen laptop".into(),
        };
        let r = KeyRetirement::sign(&body, &auth).unwrap();
        let back = KeyRetirement::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(back.verify(auth.verifying_key()).unwrap(), body);
        assert!(back.verify(issuer.verifying_key()).is_err());
        assert!(body.covers(1000) && body.covers(2000) && !body.covers(999));
        // A retirement is not a certificate, nor the other way round.
        assert!(IssuerCertificate::from_bytes(&r.to_bytes()).is_err());
        let mut bad = body.clone();
        bad.reason = " ".into();
        assert!(KeyRetirement::sign(&bad, &auth).is_err());
        let mut bad = body;
        bad.public_key[0] = 0x05;
        assert!(KeyRetirement::sign(&bad, &auth).is_err());
    }
}
