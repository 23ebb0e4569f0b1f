//! Terminal certificates: a COSE_Sign1 (RFC 9052) by the authority over a compact CBOR body,
//! byte-exact and strict so the `no_std` card can parse it without a CBOR library.
//!
//! ```text
//! D2 84  43 A1 01 26   A0   <bstr payload>   58 40 <64-byte r||s>
//! tag 18, array(4), protected = bstr{1: -7 (ES256)}, unprotected = {}, payload, signature
//!
//! payload = [1, terminal_id: tstr 1..=32, role: uint, access: uint,
//!            not_before: uint, not_after: uint, public_key: bstr 65]
//! ```
//!
//! The signature is ECDSA P-256/SHA-256 over the Sig_structure
//! `["Signature1", h'A10126', h'', payload]` (RFC 9052 section 4.4), r||s as in RFC 9053.
//!
//! Parsing accepts exactly this shape: shortest-form (canonical) CBOR heads, no indefinite
//! lengths, no trailing bytes, a whole certificate of at most [`MAX_CERT_LEN`] bytes; anything
//! else is [`CertError::Malformed`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use p256::ecdsa::{signature::Verifier, Signature, VerifyingKey};

/// Body format version (first element of the payload array).
pub const BODY_VERSION: u64 = 1;
/// Terminal id: a CBOR text string of 1..=32 bytes.
pub const TERMINAL_ID_MAX: usize = 32;
/// Uncompressed SEC1 P-256 point.
pub const PUBLIC_KEY_LEN: usize = 65;
/// r||s.
pub const SIGNATURE_LEN: usize = 64;
/// A certificate travels in one short APDU.
pub const MAX_CERT_LEN: usize = 255;

/// The serialised protected header: `{1: -7}` (alg ES256).
pub const PROTECTED_HEADER: [u8; 3] = [0xA1, 0x01, 0x26];
/// Everything before the payload: tag 18, array(4), bstr(protected), empty unprotected map.
const PREFIX: [u8; 7] = [0xD2, 0x84, 0x43, 0xA1, 0x01, 0x26, 0xA0];
/// Head of the 64-byte signature bstr.
const SIGNATURE_HEAD: [u8; 2] = [0x58, 0x40];
const BODY_FIELDS: u64 = 7;

/// CBOR major types used here.
mod major {
    pub const UINT: u8 = 0;
    pub const BYTES: u8 = 2;
    pub const TEXT: u8 = 3;
    pub const ARRAY: u8 = 4;
}

/// The body of a terminal certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminalCert {
    /// 1..=32 bytes of UTF-8.
    pub terminal_id: String,
    /// [`crate::protocol::role`].
    pub role: u8,
    /// [`crate::protocol::access`] bits.
    pub access: u8,
    /// Validity, unix seconds, inclusive at both ends; `not_before <= not_after`.
    pub not_before: u64,
    pub not_after: u64,
    /// The terminal's ECDSA P-256 public key, uncompressed SEC1.
    pub public_key: [u8; PUBLIC_KEY_LEN],
}

/// Why a certificate was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertError {
    /// Not exactly the certificate shape (or a field out of range).
    Malformed,
    /// The authority's signature does not verify.
    BadSignature,
    /// The authority key given to [`verify`] is not a 65-byte SEC1 P-256 point.
    BadAuthorityKey,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertError::Malformed => "malformed terminal certificate",
            CertError::BadSignature => "terminal certificate not signed by the authority",
            CertError::BadAuthorityKey => "invalid authority key",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for CertError {}

/// Append a canonical (shortest-form) CBOR head.
fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    if value < 24 {
        out.push(m | value as u8);
    } else if value <= 0xFF {
        out.extend_from_slice(&[m | 24, value as u8]);
    } else if value <= 0xFFFF {
        out.push(m | 25);
        out.extend_from_slice(&(value as u16).to_be_bytes());
    } else if value <= 0xFFFF_FFFF {
        out.push(m | 26);
        out.extend_from_slice(&(value as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn bstr(out: &mut Vec<u8>, bytes: &[u8]) {
    head(out, major::BYTES, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl TerminalCert {
    /// The CBOR payload (array of 7). Only meaningful for a certificate that
    /// [`is_well_formed`](Self::is_well_formed); otherwise the card will refuse it.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.terminal_id.len());
        head(&mut out, major::ARRAY, BODY_FIELDS);
        head(&mut out, major::UINT, BODY_VERSION);
        head(&mut out, major::TEXT, self.terminal_id.len() as u64);
        out.extend_from_slice(self.terminal_id.as_bytes());
        head(&mut out, major::UINT, self.role.into());
        head(&mut out, major::UINT, self.access.into());
        head(&mut out, major::UINT, self.not_before);
        head(&mut out, major::UINT, self.not_after);
        bstr(&mut out, &self.public_key);
        out
    }

    /// Decode a payload produced by [`encode_body`](Self::encode_body), strictly.
    pub fn decode_body(payload: &[u8]) -> Result<Self, CertError> {
        let mut r = Reader::new(payload);
        r.expect_head(major::ARRAY, BODY_FIELDS)?;
        r.expect_head(major::UINT, BODY_VERSION)?;
        let id_len = r.head_of(major::TEXT)?;
        let id = r.take(id_len)?;
        let id = core::str::from_utf8(id).map_err(|_| CertError::Malformed)?;
        let role = u8::try_from(r.head_of(major::UINT)?).map_err(|_| CertError::Malformed)?;
        let access = u8::try_from(r.head_of(major::UINT)?).map_err(|_| CertError::Malformed)?;
        let not_before = r.head_of(major::UINT)?;
        let not_after = r.head_of(major::UINT)?;
        let key_len = r.head_of(major::BYTES)?;
        let public_key: [u8; PUBLIC_KEY_LEN] = r
            .take(key_len)?
            .try_into()
            .map_err(|_| CertError::Malformed)?;
        r.end()?;
        let cert = TerminalCert {
            terminal_id: String::from(id),
            role,
            access,
            not_before,
            not_after,
            public_key,
        };
        if !cert.is_well_formed() {
            return Err(CertError::Malformed);
        }
        Ok(cert)
    }

    /// Field constraints: id of 1..=32 bytes, `not_before <= not_after`, the public key an
    /// uncompressed SEC1 point on P-256.
    pub fn is_well_formed(&self) -> bool {
        (1..=TERMINAL_ID_MAX).contains(&self.terminal_id.len())
            && self.not_before <= self.not_after
            && self.public_key[0] == 0x04
            && VerifyingKey::from_sec1_bytes(&self.public_key).is_ok()
    }

    /// Whether `time` lies within the validity period (inclusive).
    pub fn valid_at(&self, time: u64) -> bool {
        (self.not_before..=self.not_after).contains(&time)
    }
}

/// The COSE Sig_structure for a COSE_Sign1 with our protected header and no external AAD:
/// `["Signature1", h'A10126', h'', payload]`.
pub fn sig_structure(payload: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"Signature1";
    let mut out = Vec::with_capacity(payload.len() + 24);
    head(&mut out, major::ARRAY, 4);
    head(&mut out, major::TEXT, CONTEXT.len() as u64);
    out.extend_from_slice(CONTEXT);
    bstr(&mut out, &PROTECTED_HEADER);
    bstr(&mut out, &[]);
    bstr(&mut out, payload);
    out
}

/// The tagged COSE_Sign1 bytes of `payload` and its signature.
pub fn assemble(payload: &[u8], sig: &[u8; SIGNATURE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + PREFIX.len() + 4 + SIGNATURE_LEN);
    out.extend_from_slice(&PREFIX);
    bstr(&mut out, payload);
    out.extend_from_slice(&SIGNATURE_HEAD);
    out.extend_from_slice(sig);
    out
}

/// Split a certificate into its body, the byte range of the payload inside `cert` and the
/// signature. Checks the shape only, not the signature.
pub fn parse(cert: &[u8]) -> Result<(TerminalCert, Range<usize>, [u8; SIGNATURE_LEN]), CertError> {
    if cert.len() > MAX_CERT_LEN {
        return Err(CertError::Malformed);
    }
    let mut r = Reader::new(cert);
    r.expect_bytes(&PREFIX)?;
    let len = r.head_of(major::BYTES)?;
    let start = r.pos;
    r.take(len)?;
    let payload = start..r.pos;
    r.expect_bytes(&SIGNATURE_HEAD)?;
    let sig: [u8; SIGNATURE_LEN] = r
        .take(SIGNATURE_LEN as u64)?
        .try_into()
        .map_err(|_| CertError::Malformed)?;
    r.end()?;
    let body = TerminalCert::decode_body(&cert[payload.clone()])?;
    Ok((body, payload, sig))
}

/// Parse `cert` and verify the authority's signature with `authority_sec1` (65-byte
/// uncompressed SEC1 point). Validity dates are the caller's business.
pub fn verify(cert: &[u8], authority_sec1: &[u8]) -> Result<TerminalCert, CertError> {
    if authority_sec1.len() != PUBLIC_KEY_LEN || authority_sec1[0] != 0x04 {
        return Err(CertError::BadAuthorityKey);
    }
    let vk =
        VerifyingKey::from_sec1_bytes(authority_sec1).map_err(|_| CertError::BadAuthorityKey)?;
    let (body, payload, sig) = parse(cert)?;
    let sig = Signature::from_slice(&sig).map_err(|_| CertError::BadSignature)?;
    vk.verify(&sig_structure(&cert[payload]), &sig)
        .map_err(|_| CertError::BadSignature)?;
    Ok(body)
}

/// The key under which the card remembers a certificate it verified: SHA-256(authority key
/// || certificate bytes), so a certificate is only ever taken as verified under the
/// authority key that verified it.
pub fn digest(cert: &[u8], authority_sec1: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(authority_sec1);
    h.update(cert);
    h.finalize().into()
}

/// Parse `cert` without checking its signature: only for a certificate whose [`digest`] the
/// card recorded after [`verify`] accepted these exact bytes.
pub fn parse_verified_before(cert: &[u8]) -> Result<TerminalCert, CertError> {
    parse(cert).map(|(body, _, _)| body)
}

/// Sign `cert` with the authority key (ECDSA with RFC 6979 nonces: deterministic). The caller
/// checks [`TerminalCert::is_well_formed`] first; the card refuses anything else.
#[cfg(feature = "std")]
pub fn sign(cert: &TerminalCert, authority: &p256::ecdsa::SigningKey) -> Vec<u8> {
    use p256::ecdsa::signature::Signer;
    let payload = cert.encode_body();
    let sig: Signature = authority.sign(&sig_structure(&payload));
    let mut bytes = [0u8; SIGNATURE_LEN];
    bytes.copy_from_slice(&sig.to_bytes());
    assemble(&payload, &bytes)
}

/// A strict reader for the subset of CBOR above.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CertError> {
        let n = usize::try_from(n).map_err(|_| CertError::Malformed)?;
        let end = self.pos.checked_add(n).ok_or(CertError::Malformed)?;
        let out = self.data.get(self.pos..end).ok_or(CertError::Malformed)?;
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, CertError> {
        Ok(self.take(1)?[0])
    }

    fn expect_bytes(&mut self, want: &[u8]) -> Result<(), CertError> {
        if self.take(want.len() as u64)? == want {
            Ok(())
        } else {
            Err(CertError::Malformed)
        }
    }

    /// One head in shortest form: (major type, argument). Indefinite lengths and reserved
    /// additional-information values are malformed.
    fn head(&mut self) -> Result<(u8, u64), CertError> {
        let b = self.byte()?;
        let (major, info) = (b >> 5, b & 0x1F);
        let (value, min) = match info {
            0..=23 => return Ok((major, info.into())),
            24 => (self.byte()?.into(), 24),
            25 => (be(self.take(2)?), 0x100),
            26 => (be(self.take(4)?), 0x1_0000),
            27 => (be(self.take(8)?), 0x1_0000_0000),
            _ => return Err(CertError::Malformed),
        };
        if value < min {
            return Err(CertError::Malformed);
        }
        Ok((major, value))
    }

    /// The argument of a head of major type `major`.
    fn head_of(&mut self, major: u8) -> Result<u64, CertError> {
        match self.head()? {
            (m, v) if m == major => Ok(v),
            _ => Err(CertError::Malformed),
        }
    }

    fn expect_head(&mut self, major: u8, value: u64) -> Result<(), CertError> {
        if self.head_of(major)? == value {
            Ok(())
        } else {
            Err(CertError::Malformed)
        }
    }

    fn end(&self) -> Result<(), CertError> {
        if self.pos == self.data.len() {
            Ok(())
        } else {
            Err(CertError::Malformed)
        }
    }
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| acc << 8 | u64::from(b))
}

#[cfg(all(test, feature = "std"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec;
    use p256::ecdsa::SigningKey;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn point(k: &SigningKey) -> [u8; 65] {
        k.verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .unwrap()
    }

    fn body() -> TerminalCert {
        TerminalCert {
            terminal_id: "clinic-1".into(),
            role: 1,
            access: 0x07,
            not_before: 1_700_000_000,
            not_after: 1_702_592_000,
            public_key: point(&key(9)),
        }
    }

    #[test]
    fn canonical_heads() {
        let mut out = Vec::new();
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX.into(),
            1 << 32,
        ] {
            out.clear();
            head(&mut out, major::UINT, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.head().unwrap(), (0, v));
            r.end().unwrap();
        }
        // Non-shortest forms and indefinite / reserved values are refused.
        for bad in [
            &[0x18, 0x17][..],
            &[0x19, 0x00, 0xFF],
            &[0x1A, 0x00, 0x00, 0xFF, 0xFF],
            &[0x1B, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],
            &[0x1C],
            &[0x1F],
            &[0x5F],
            &[0x19, 0x01],
        ] {
            assert_eq!(
                Reader::new(bad).head(),
                Err(CertError::Malformed),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let authority = key(1);
        let cert = sign(&body(), &authority);
        assert_eq!(&cert[..7], &PREFIX);
        let (b, range, _) = parse(&cert).unwrap();
        assert_eq!(b, body());
        assert_eq!(&cert[range], &body().encode_body()[..]);
        assert_eq!(verify(&cert, &point(&authority)).unwrap(), body());
        assert_eq!(verify(&cert, &point(&key(2))), Err(CertError::BadSignature));
        assert_eq!(verify(&cert, &[4; 65]), Err(CertError::BadAuthorityKey));
        assert_eq!(
            verify(&cert, &point(&authority)[..64]),
            Err(CertError::BadAuthorityKey)
        );
    }

    #[test]
    fn every_truncation_and_extension_is_malformed() {
        let cert = sign(&body(), &key(1));
        for cut in 0..cert.len() {
            assert_eq!(
                parse(&cert[..cut]).err(),
                Some(CertError::Malformed),
                "{cut}"
            );
        }
        let mut longer = cert.clone();
        longer.push(0);
        assert_eq!(parse(&longer).err(), Some(CertError::Malformed));
    }

    #[test]
    fn field_constraints() {
        let a = key(1);
        let mut bad = vec![];
        let mut b = body();
        b.terminal_id = String::new();
        bad.push(b);
        let mut b = body();
        b.terminal_id = "x".repeat(33);
        bad.push(b);
        let mut b = body();
        b.not_before = b.not_after + 1;
        bad.push(b);
        let mut b = body();
        b.public_key[64] ^= 1; // off the curve
        bad.push(b);
        let mut b = body();
        b.public_key[0] = 0x05;
        bad.push(b);
        for b in bad {
            assert!(!b.is_well_formed());
            assert_eq!(parse(&sign(&b, &a)).err(), Some(CertError::Malformed));
        }
        let mut b = body();
        b.terminal_id = "x".repeat(32);
        b.not_before = u64::MAX;
        b.not_after = u64::MAX;
        b.role = 255;
        b.access = 255;
        let cert = sign(&b, &a);
        assert!(cert.len() <= MAX_CERT_LEN, "{}", cert.len());
        assert_eq!(verify(&cert, &point(&a)).unwrap(), b);
    }

    #[test]
    fn hand_edited_bodies_are_malformed() {
        let a = key(1);
        let good = body().encode_body();
        let resign = |payload: &[u8]| {
            use p256::ecdsa::signature::Signer;
            let sig: Signature = a.sign(&sig_structure(payload));
            assemble(payload, &sig.to_bytes().into())
        };
        assert!(verify(&resign(&good), &point(&a)).is_ok());
        // version 2
        let mut p = good.clone();
        p[1] = 0x02;
        assert_eq!(verify(&resign(&p), &point(&a)), Err(CertError::Malformed));
        // array of 8 with a trailing element
        let mut p = good.clone();
        p[0] = 0x88;
        p.push(0x00);
        assert_eq!(verify(&resign(&p), &point(&a)), Err(CertError::Malformed));
        // trailing byte inside the payload
        let mut p = good.clone();
        p.push(0x00);
        assert_eq!(verify(&resign(&p), &point(&a)), Err(CertError::Malformed));
        // role 256 (does not fit a byte)
        let mut p = vec![0x87, 0x01, 0x61, b'x', 0x19, 0x01, 0x00];
        p.extend_from_slice(&good[good.len() - 67 - 5 - 5 - 1..]);
        assert_eq!(verify(&resign(&p), &point(&a)), Err(CertError::Malformed));
        // terminal id as a byte string instead of text
        let mut p = good.clone();
        p[2] = 0x48;
        assert_eq!(verify(&resign(&p), &point(&a)), Err(CertError::Malformed));
        // invalid UTF-8 id
        let mut p = good.clone();
        p[3] = 0xFF;
        assert_eq!(verify(&resign(&p), &point(&a)), Err(CertError::Malformed));
        // non-canonical head for the access field (0x07 as 18 07)
        let mut p = good.clone();
        let at = 1 + 1 + 1 + 8 + 1; // array, version, id head, id, role
        assert_eq!(p[at], 0x07);
        p.splice(at..=at, [0x18, 0x07]);
        assert_eq!(verify(&resign(&p), &point(&a)), Err(CertError::Malformed));
    }
}
