//! Shared COSE_Sign1 (RFC 9052) framing for every signed object of the registry.
//!
//! Every object is a tagged COSE_Sign1 with ES256, the key id of the signer in the protected
//! header and a content type that names the kind of object, so a signature made for one kind of
//! object (a credential) can never be replayed as another (an anchor request).

use coset::{
    iana, CoseSign1, CoseSign1Builder, HeaderBuilder, RegisteredLabelWithPrivate,
    TaggedCborSerializable,
};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};

use crate::{Error, Result};

/// Content types (protected header 3) of the registry's signed objects.
pub(crate) const CT_CREDENTIAL: &str = "application/vnd.civic.credential+cbor";
pub(crate) const CT_ISSUER_CERT: &str = "application/vnd.civic.issuer-cert+cbor";
pub(crate) const CT_ANCHOR: &str = "application/vnd.civic.anchor+cbor";
pub(crate) const CT_STATUS: &str = "application/vnd.civic.status+cbor";
pub(crate) const CT_STATUS_BATCH: &str = "application/vnd.civic.status-batch+cbor";
pub(crate) const CT_KEY_RETIREMENT: &str = "application/vnd.civic.key-retirement+cbor";

/// A parsed COSE_Sign1 together with the exact bytes it was parsed from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Signed {
    raw: Vec<u8>,
    sign1: CoseSign1,
}

impl Signed {
    /// Sign `payload` with ES256, `kid` and `content_type` in the protected header.
    pub(crate) fn sign(
        payload: Vec<u8>,
        kid: &[u8],
        content_type: &str,
        key: &SigningKey,
    ) -> Result<Self> {
        Self::sign_inner(payload, kid, content_type, None, key)
    }

    /// As [`sign`](Self::sign), with a random nonce in the protected header (label "nonce").
    pub(crate) fn sign_with_nonce(
        payload: Vec<u8>,
        kid: &[u8],
        content_type: &str,
        nonce: &[u8; 16],
        key: &SigningKey,
    ) -> Result<Self> {
        Self::sign_inner(payload, kid, content_type, Some(nonce), key)
    }

    fn sign_inner(
        payload: Vec<u8>,
        kid: &[u8],
        content_type: &str,
        nonce: Option<&[u8; 16]>,
        key: &SigningKey,
    ) -> Result<Self> {
        let mut builder = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .key_id(kid.to_vec())
            .content_type(content_type.to_owned());
        if let Some(n) = nonce {
            builder = builder.text_value("nonce".to_owned(), ciborium::Value::Bytes(n.to_vec()));
        }
        let protected = builder.build();
        let sign1 = CoseSign1Builder::new()
            .protected(protected)
            .payload(payload)
            .create_signature(b"", |tbs| {
                let sig: Signature = key.sign(tbs);
                sig.to_bytes().to_vec()
            })
            .build();
        let raw = sign1
            .to_tagged_vec()
            .map_err(|e| Error::Encoding(format!("COSE_Sign1: {e}")))?;
        // Parse back so the protected header keeps its original bytes, exactly as a verifier sees it.
        Self::from_bytes(&raw, content_type)
    }

    /// Parse a tagged COSE_Sign1, checking the framing: ES256, no critical headers we do not
    /// understand, an attached payload and the expected content type.
    pub(crate) fn from_bytes(b: &[u8], content_type: &str) -> Result<Self> {
        let sign1 = CoseSign1::from_tagged_slice(b)
            .map_err(|e| Error::Encoding(format!("COSE_Sign1: {e}")))?;
        let h = &sign1.protected.header;
        if h.alg != Some(RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256)) {
            return Err(Error::Encoding("COSE_Sign1: algorithm is not ES256".into()));
        }
        if !h.crit.is_empty() {
            return Err(Error::Encoding(
                "COSE_Sign1: unsupported critical headers".into(),
            ));
        }
        match &h.content_type {
            Some(coset::ContentType::Text(t)) if t == content_type => {}
            _ => {
                return Err(Error::Encoding(format!(
                    "COSE_Sign1: content type is not {content_type}"
                )))
            }
        }
        if sign1.payload.is_none() {
            return Err(Error::Encoding("COSE_Sign1: detached payload".into()));
        }
        // Reject a tagged object that is not exactly one CBOR item (coset checks trailing data).
        Ok(Self {
            raw: b.to_vec(),
            sign1,
        })
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.raw.clone()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub(crate) fn kid(&self) -> &[u8] {
        &self.sign1.protected.header.key_id
    }

    /// The Sig_structure this object's signature covers.
    pub(crate) fn tbs(&self) -> Vec<u8> {
        self.sign1.tbs_data(b"")
    }

    pub(crate) fn payload(&self) -> &[u8] {
        self.sign1.payload.as_deref().unwrap_or(&[])
    }

    /// Verify the ES256 signature (raw r||s, 64 bytes) over the Sig_structure (RFC 9052 4.4).
    pub(crate) fn verify(&self, key: &VerifyingKey, what: &'static str) -> Result<()> {
        self.sign1.verify_signature(b"", |sig, tbs| {
            let sig = Signature::from_slice(sig).map_err(|_| Error::BadSignature(what))?;
            key.verify(tbs, &sig).map_err(|_| Error::BadSignature(what))
        })
    }
}

/// CBOR-encode a serde value.
pub(crate) fn to_cbor<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|e| Error::Encoding(format!("CBOR: {e}")))?;
    Ok(out)
}

/// Decode exactly one CBOR item; trailing bytes are an error.
pub(crate) fn from_cbor<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T> {
    let mut rest = b;
    let v =
        ciborium::from_reader(&mut rest).map_err(|e| Error::Encoding(format!("{what}: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Encoding(format!(
            "{what}: {} trailing bytes",
            rest.len()
        )));
    }
    Ok(v)
}

/// Serde helper: a fixed-size byte array as a CBOR byte string (hex in JSON).
pub(crate) mod fixed_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let mut out = [0u8; N];
            hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
            return Ok(out);
        }
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        <[u8; N]>::try_from(b.as_slice())
            .map_err(|_| serde::de::Error::invalid_length(b.len(), &format!("{N} bytes").as_str()))
    }
}

/// Serde helper: a list of 32-byte hashes as a CBOR array of byte strings.
pub(crate) mod hash_list {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for h in v {
            seq.serialize_element(serde_bytes::Bytes::new(h))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let v = Vec::<serde_bytes::ByteBuf>::deserialize(d)?;
        v.into_iter()
            .map(|b| {
                <[u8; 32]>::try_from(b.as_slice())
                    .map_err(|_| serde::de::Error::invalid_length(b.len(), &"32 bytes"))
            })
            .collect()
    }
}
