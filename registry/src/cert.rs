//! Issuer certificates: the authority's statement that an issuer key may issue some kinds of
//! credential during a validity window.

use p256::ecdsa::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cose::{self, Signed, CT_ISSUER_CERT};
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
}
