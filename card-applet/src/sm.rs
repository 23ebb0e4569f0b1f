//! Secure messaging on the air interface: PACE key agreement and ISO 7816-4 secure messaging,
//! shared by the card (the `Card*` side, used by [`crate::io`]) and the reader (the terminal
//! side: [`establish`] and [`Channel`]).
//!
//! The construction follows ICAO Doc 9303 part 11 (8th ed.) and BSI TR-03110 parts 2-3, with
//! the parameters of `id-PACE-ECDH-GM-AES-CBC-CMAC-256` on NIST P-256 (standardised domain
//! parameters 12); `notes/SECURE-MESSAGING.md` spells out every byte for an independent client.
//!
//! - PACE, Generic Mapping (Doc 9303-11 section 4.4): MSE:SET AT names the password (CAN or
//!   PIN); the card sends `z = E(K_pi, s)` for a random 16-byte nonce `s`; both sides run an
//!   ephemeral ECDH on P-256 to get `H` and map the generator to `G' = s*G + H`; a second
//!   ephemeral ECDH on `G'` gives the shared secret `K`, and the session keys; each side
//!   proves them with an authentication token (CMAC over the other side's ephemeral key).
//!   A wrong password gives different `G'`, different keys and a failed token: one online
//!   guess per run, no offline dictionary attack on a recorded run.
//! - Key derivation (Doc 9303-11 section 9.7.1, AES-256): `KDF(K, c) = SHA-256(K || c)` with
//!   the 32-bit big-endian counter c = 1 (K_enc), 2 (K_mac), 3 (K_pi from the password).
//! - Secure messaging (Doc 9303-11 section 9.8, ISO 7816-4 section 10): every command and
//!   response after PACE is encrypted with AES-256-CBC (IV = E(K_enc, SSC), padding
//!   ISO 9797-1 method 2) and MACed with AES-CMAC truncated to 8 bytes over the padded send
//!   sequence counter, header and data objects. The 16-byte SSC starts at 0 and is
//!   incremented before each command and before each response, so a replayed, reordered or
//!   dropped APDU fails its MAC. Any SM error closes the session on the card (keys wiped).
//!
//! Deviation (documented): for the PIN the password is not the PIN's digits but
//! `SHA-256(salt || PIN)`, the value the card stores; the card sends the 16-byte salt (tag
//! 8F) beside the encrypted nonce so the terminal can compute it.

use alloc::vec::Vec;
use core::fmt;

use aes::cipher::{BlockDecryptMut, BlockEncrypt, BlockEncryptMut, KeyInit, KeyIvInit};
use aes::Aes256;
use cbc::cipher::block_padding::Iso7816;
use cmac::{Cmac, Mac};
use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::elliptic_curve::{Field, PrimeField};
use p256::{AffinePoint, FieldBytes, NonZeroScalar, ProjectivePoint, PublicKey, Scalar};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::apdu::{CommandApdu, SHORT_NE_MAX};
use crate::fixed_base;
use crate::protocol::{ins, tlv, Status};

/// `id-PACE-ECDH-GM-AES-CBC-CMAC-256` = 0.4.0.127.0.7.2.2.4.2.4 (BSI TR-03110-3 A.1.1.1),
/// DER content octets.
pub const PACE_OID: [u8; 10] = [0x04, 0x00, 0x7F, 0x00, 0x07, 0x02, 0x02, 0x04, 0x02, 0x04];
/// `id-PACE-ECDH-CAM-AES-CBC-CMAC-256` = 0.4.0.127.0.7.2.2.4.6.4 (Doc 9303-11 section 9.2.3,
/// TR-03110-3 A.1.1.1): the same Generic Mapping, plus Chip Authentication Mapping (Doc 9303-11
/// section 4.4.3.5): the card proves its static chip key inside the PACE run.
pub const PACE_CAM_OID: [u8; 10] = [0x04, 0x00, 0x7F, 0x00, 0x07, 0x02, 0x02, 0x04, 0x06, 0x04];
/// Standardised domain parameters 12: NIST P-256 (TR-03110-3 A.2.1.1).
pub const DOMAIN_P256: u8 = 12;

/// Password references of MSE:SET AT tag 83 (TR-03110-3 B.1.1 / D.3.3).
pub mod password {
    pub const CAN: u8 = 0x02;
    pub const PIN: u8 = 0x03;
}

/// The card access number: exactly this many ASCII digits.
pub const CAN_LEN: usize = 6;
/// Consecutive wrong CANs the card accepts before it refuses PACE with the CAN (6983) until
/// it is powered up again.
pub const CAN_FAILURES_MAX: u8 = 3;
/// Length of the PACE nonce s (one AES block) and of the PIN salt.
pub const NONCE_LEN: usize = 16;
/// Authentication tokens and SM MACs are truncated to 8 bytes (Doc 9303-11 9.8.6.2).
pub const MAC_LEN: usize = 8;
/// The SM bits of CLA (ISO 7816-4 5.4.1: b4 b3 = 11, header included in the MAC).
pub const CLA_SM: u8 = 0x0C;
/// The most plain data, command or answer, whose protected form fits a short APDU (Lc at most
/// 255, Ne at most 256), as eMRTD terminals read in blocks of 0xDF. A command: DO87 `87 81 E1
/// 01` + 224 bytes of cryptogram (223 bytes padded, ISO 9797-1 method 2 always adds at least
/// one byte), DO97 3 bytes, DO8E 10 bytes: 241. An answer: the same DO87, DO99 4, DO8E 10:
/// 242. At 224 bytes the cryptogram grows to 240 and neither fits.
pub const SHORT_PROTECTED_MAX: usize = 223;

/// PACE dynamic authentication data tags (TR-03110-3 B.1.2, Doc 9303-11 4.4.4).
pub mod tag {
    pub const DYNAMIC_AUTH: u16 = 0x7C;
    pub const ENCRYPTED_NONCE: u16 = 0x80;
    pub const MAP_PCD: u16 = 0x81;
    pub const MAP_PICC: u16 = 0x82;
    pub const EPH_PCD: u16 = 0x83;
    pub const EPH_PICC: u16 = 0x84;
    pub const TOKEN_PCD: u16 = 0x85;
    pub const TOKEN_PICC: u16 = 0x86;
    /// Encrypted chip authentication data A_IC (PACE-CAM, TR-03110-3 B.1.2, Doc 9303-11
    /// 4.4.4.2): in the card's answer to the last GENERAL AUTHENTICATE, after the token.
    pub const CAM_DATA: u16 = 0x8A;
    /// Not in TR-03110: the PIN's 16-byte salt, sent with the encrypted nonce for the PIN.
    pub const PIN_SALT: u16 = 0x8F;
    // MSE:SET AT
    pub const MSE_OID: u16 = 0x80;
    pub const MSE_PASSWORD: u16 = 0x83;
    pub const MSE_DOMAIN: u16 = 0x84;
    // SM data objects (ISO 7816-4 10.2, Doc 9303-11 9.8.5)
    pub const SM_CRYPTOGRAM: u16 = 0x87;
    pub const SM_LE: u16 = 0x97;
    pub const SM_STATUS: u16 = 0x99;
    pub const SM_MAC: u16 = 0x8E;
}

/// `KDF(secret, counter) = SHA-256(secret || counter)` (Doc 9303-11 9.7.1, AES-256 keys).
pub fn kdf(secret: &[u8], counter: u32) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(counter.to_be_bytes());
    Zeroizing::new(h.finalize().into())
}

/// f(PIN): what the card stores of the PIN, `SHA-256(salt || PIN)`.
pub fn pin_password(salt: &[u8; NONCE_LEN], pin: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(pin);
    Zeroizing::new(h.finalize().into())
}

/// A valid CAN: exactly [`CAN_LEN`] ASCII digits.
pub fn valid_can(can: &[u8]) -> bool {
    can.len() == CAN_LEN && can.iter().all(u8::is_ascii_digit)
}

/// Session keys from the PACE shared secret (x coordinate of K).
#[derive(Clone)]
pub struct SessionKeys {
    pub enc: Zeroizing<[u8; 32]>,
    pub mac: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    pub fn derive(shared_x: &[u8]) -> Self {
        SessionKeys {
            enc: kdf(shared_x, 1),
            mac: kdf(shared_x, 2),
        }
    }
}

/// AES-256 of one block (the nonce encryption of PACE is CBC with a zero IV over one block,
/// which is this; the SM IV is E(K_enc, SSC)).
fn aes_block(key: &[u8; 32], block: &[u8; 16]) -> [u8; 16] {
    let cipher = Aes256::new(key.into());
    let mut b = (*block).into();
    cipher.encrypt_block(&mut b);
    b.into()
}

fn aes_block_decrypt(key: &[u8; 32], block: &[u8; 16]) -> [u8; 16] {
    use aes::cipher::BlockDecrypt;
    let cipher = Aes256::new(key.into());
    let mut b = (*block).into();
    cipher.decrypt_block(&mut b);
    b.into()
}

/// `z = E(K_pi, s)`.
pub fn encrypt_nonce(k_pi: &[u8; 32], s: &[u8; NONCE_LEN]) -> [u8; NONCE_LEN] {
    aes_block(k_pi, s)
}

/// `s = D(K_pi, z)`.
pub fn decrypt_nonce(k_pi: &[u8; 32], z: &[u8; NONCE_LEN]) -> Zeroizing<[u8; NONCE_LEN]> {
    Zeroizing::new(aes_block_decrypt(k_pi, z))
}

/// Full AES-CMAC (RFC 4493 / NIST SP 800-38B) of `data` under `key`.
pub fn cmac(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    let mut m = <Cmac<Aes256> as KeyInit>::new(key.into());
    m.update(data);
    m.finalize().into_bytes().into()
}

/// ISO 9797-1 padding method 2: 0x80 then zeros up to a multiple of 16 bytes.
pub fn pad(data: &mut Vec<u8>) {
    data.push(0x80);
    while data.len() % 16 != 0 {
        data.push(0);
    }
}

/// The public key data object the authentication token covers (Doc 9303-11 4.4.3.4,
/// TR-03110-3 D.3.4): `7F49 { 06 OID, 86 uncompressed point }`.
pub fn token_input(point: &[u8]) -> Vec<u8> {
    token_input_for(&PACE_OID, point)
}

/// [`token_input`] for the protocol `oid` MSE:SET AT named (the token covers it: a GM run's
/// token does not verify as a CAM run's).
pub fn token_input_for(oid: &[u8], point: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(oid.len() + point.len() + 6);
    tlv::push(&mut inner, 0x06, oid);
    tlv::push(&mut inner, 0x86, point);
    let mut out = Vec::with_capacity(inner.len() + 4);
    tlv::push(&mut out, 0x7F49, &inner);
    out
}

/// Authentication token `T = CMAC(K_mac, token_input(other side's ephemeral key))[..8]`.
pub fn auth_token(k_mac: &[u8; 32], other_point: &[u8]) -> [u8; MAC_LEN] {
    auth_token_for(&PACE_OID, k_mac, other_point)
}

/// [`auth_token`] for the protocol `oid` of the run.
pub fn auth_token_for(oid: &[u8], k_mac: &[u8; 32], other_point: &[u8]) -> [u8; MAC_LEN] {
    let full = cmac(k_mac, &token_input_for(oid, other_point));
    let mut t = [0u8; MAC_LEN];
    t.copy_from_slice(&full[..MAC_LEN]);
    t
}

fn encode_point(p: &ProjectivePoint) -> [u8; 65] {
    let e = AffinePoint::from(*p).to_encoded_point(false);
    let mut out = [0u8; 65];
    out.copy_from_slice(e.as_bytes());
    out
}

/// An uncompressed P-256 point on the curve, not the identity.
fn decode_point(b: &[u8]) -> Option<ProjectivePoint> {
    if b.len() != 65 || b[0] != 0x04 {
        return None;
    }
    PublicKey::from_sec1_bytes(b)
        .ok()
        .map(|k| k.to_projective())
}

/// Generic Mapping: `G' = s*G + H` (Doc 9303-11 4.4.3.3.1). `s*G` by the fixed-base table
/// ([`fixed_base`]), constant time in `s`.
pub fn map_generator(s: &[u8; NONCE_LEN], h: &ProjectivePoint) -> Option<ProjectivePoint> {
    let g = fixed_base::mul_generator_u128(s) + h;
    (!bool::from(g.is_identity())).then_some(g)
}

/// PACE's nonce `s` (16 bytes, big-endian) as a scalar; below `2^128 < n`, so canonical.
fn nonce_scalar(s: &[u8; NONCE_LEN]) -> Scalar {
    let mut fb = Zeroizing::new(FieldBytes::default());
    fb[32 - NONCE_LEN..].copy_from_slice(s);
    Scalar::from_repr(*fb).unwrap_or(Scalar::ZERO)
}

/// Generic Mapping and the own ephemeral public key in one step (Doc 9303-11 4.4.3.3.1-2):
/// `PK = sk*G'` with `G' = s*G + sk_map*PK_map,other`, computed as
/// `(sk*s)*G + (sk*sk_map)*PK_map,other`. It is the same point, and `G'` itself is needed for
/// nothing else: only `PK` goes on the wire, and the shared secret `sk*PK_other` does not use
/// it. So it costs one variable-base multiplication and one by the fixed-base table
/// ([`fixed_base`]) where computing `H`, then `G'`, then `sk*G'` took two variable-base ones
/// (about 1.5 M instructions saved per side). Both scalars are secret and both
/// multiplications are constant time in them.
///
/// `None` when `PK` is the identity, which (`sk` non-zero, the group of prime order) is
/// exactly when `G'` is: the check Doc 9303-11 asks of the mapped generator.
pub fn mapped_public_key(
    s: &[u8; NONCE_LEN],
    sk_map: &Scalar,
    other_map: &ProjectivePoint,
    sk: &NonZeroScalar,
) -> Option<ProjectivePoint> {
    let sk: &Scalar = sk.as_ref();
    let on_g = Zeroizing::new(*sk * nonce_scalar(s));
    let on_other = Zeroizing::new(*sk * sk_map);
    let pk = fixed_base::mul_generator(&on_g) + *other_map * *on_other;
    (!bool::from(pk.is_identity())).then_some(pk)
}

fn x_coordinate(p: &ProjectivePoint) -> Option<Zeroizing<[u8; 32]>> {
    if bool::from(p.is_identity()) {
        return None;
    }
    Some(Zeroizing::new(AffinePoint::from(*p).x().into()))
}

/// The IV of the chip authentication data: `E(K_enc, -1)`, -1 being the 128-bit string of
/// all ones (Doc 9303-11 section 4.4.3.5.1 / 9.8: an SSC no SM APDU ever uses).
fn cam_iv(k_enc: &[u8; 32]) -> [u8; 16] {
    aes_block(k_enc, &[0xFF; 16])
}

/// Card, PACE-CAM (Doc 9303-11 section 4.4.3.5.1): the chip authentication data
/// `CA_IC = SK_IC^-1 * SK_Map,IC mod n` and its encryption `A_IC = E(K_enc, CA_IC)`
/// (AES-256-CBC, IV `E(K_enc, -1)`, padding ISO 9797-1 method 2: 48 bytes). `None` if the
/// chip key is not a valid scalar.
pub fn chip_authentication_data(
    k_enc: &[u8; 32],
    sk_ic: &[u8; 32],
    sk_map: &[u8; 32],
) -> Option<Vec<u8>> {
    let sk_ic = Option::<Scalar>::from(Scalar::from_repr((*sk_ic).into()))?;
    let sk_map = Option::<Scalar>::from(Scalar::from_repr((*sk_map).into()))?;
    let inv = Option::<Scalar>::from(sk_ic.invert())?;
    let ca = Zeroizing::new(<[u8; 32]>::from(FieldBytes::from(inv * sk_map)));
    let iv = cam_iv(k_enc);
    Some(
        cbc::Encryptor::<Aes256>::new(k_enc.into(), (&iv).into())
            .encrypt_padded_vec_mut::<Iso7816>(&ca[..]),
    )
}

/// Terminal, PACE-CAM: what the run left to check once the chip's static key is known
/// (Doc 9303-11 section 4.4.3.5.2): the card's mapping key `PK_Map,IC` and the decrypted
/// `CA_IC`. The check waits for the key because the key comes from the issuer-signed identity
/// credential, read inside the session (as passive authentication of the chip's key from
/// the document security object in Doc 9303).
#[derive(Clone)]
pub struct ChipAuthentication {
    pk_map_ic: [u8; 65],
    /// `None`: the card sent no chip authentication data, or data that does not decrypt to
    /// a scalar; such a card fails chip authentication.
    ca_ic: Option<[u8; 32]>,
}

impl fmt::Debug for ChipAuthentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChipAuthentication")
            .field("ca_ic_present", &self.ca_ic.is_some())
            .finish()
    }
}

impl ChipAuthentication {
    /// Decrypt `A_IC` (`a_ic`: the card's tag 8A, if it sent one) with the session's K_enc.
    pub fn from_card(k_enc: &[u8; 32], pk_map_ic: [u8; 65], a_ic: Option<&[u8]>) -> Self {
        let ca_ic = a_ic.and_then(|a| {
            if a.is_empty() || a.len() % 16 != 0 {
                return None;
            }
            let iv = cam_iv(k_enc);
            let plain = cbc::Decryptor::<Aes256>::new(k_enc.into(), (&iv).into())
                .decrypt_padded_vec_mut::<Iso7816>(a)
                .ok()?;
            <[u8; 32]>::try_from(plain.as_slice()).ok()
        });
        ChipAuthentication { pk_map_ic, ca_ic }
    }

    /// Whether the card sent chip authentication data that decrypts to 32 bytes.
    pub fn present(&self) -> bool {
        self.ca_ic.is_some()
    }

    /// The check of Doc 9303-11 section 4.4.3.5.2: `PK_Map,IC == CA_IC * PK_IC`, with `pk_ic`
    /// the chip's static public key (uncompressed SEC1) from an authenticated source. A card
    /// that does not hold `SK_IC` cannot produce a `CA_IC` that passes: it would need
    /// `log(PK_Map,IC) / log(PK_IC)`. One scalar multiplication.
    pub fn verify(&self, pk_ic: &[u8]) -> bool {
        let Some(ca) = self.ca_ic else {
            return false;
        };
        let Some(ca) = Option::<Scalar>::from(Scalar::from_repr(ca.into())) else {
            return false;
        };
        if bool::from(ca.is_zero()) {
            return false;
        }
        let Some(pk_ic) = decode_point(pk_ic) else {
            return false;
        };
        bool::from(encode_point(&(pk_ic * ca))[..].ct_eq(&self.pk_map_ic[..]))
    }
}

/// Why a protected APDU was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmError {
    /// The data objects are missing, malformed or out of order.
    Malformed,
    /// The MAC does not verify (tampered, replayed, reordered, or another session's).
    Mac,
    /// The cryptogram's padding is wrong.
    Padding,
    /// A plain status word where a protected response was expected.
    Plain(u16),
    /// The command is too long to protect in one extended APDU.
    TooLong,
}

impl fmt::Display for SmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmError::Malformed => f.write_str("malformed secure-messaging data objects"),
            SmError::Mac => f.write_str("secure-messaging MAC does not verify"),
            SmError::Padding => f.write_str("secure-messaging cryptogram badly padded"),
            SmError::Plain(sw) => write!(f, "unprotected answer {sw:04X} inside the session"),
            SmError::TooLong => f.write_str("command too long for a protected APDU"),
        }
    }
}

/// One side of an established secure-messaging session: the session keys and the send
/// sequence counter. Both sides hold one; the card's is wiped on any error, on a plain
/// command, on reset.
pub struct Channel {
    keys: SessionKeys,
    ssc: u128,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").field("ssc", &self.ssc).finish()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.ssc = 0;
    }
}

/// Lengths of the SM data objects' content, ISO 7816-4 10.2.
fn le_bytes(apdu: &CommandApdu) -> Vec<u8> {
    if !apdu.le_present() {
        return Vec::new();
    }
    if apdu.extended || apdu.ne > 256 {
        let v = if apdu.ne >= 65_536 { 0 } else { apdu.ne as u16 };
        v.to_be_bytes().to_vec()
    } else {
        alloc::vec![if apdu.ne >= 256 { 0 } else { apdu.ne as u8 }]
    }
}

impl Channel {
    /// A new channel with SSC = 0 (Doc 9303-11 9.8.6.3: after PACE, SSC starts at zero).
    pub fn new(keys: SessionKeys) -> Self {
        Channel { keys, ssc: 0 }
    }

    /// The send sequence counter's current value (for tests and benchmarks).
    pub fn ssc(&self) -> u128 {
        self.ssc
    }

    fn next_ssc(&mut self) -> [u8; 16] {
        self.ssc = self.ssc.wrapping_add(1);
        self.ssc.to_be_bytes()
    }

    fn encrypt(&self, ssc: &[u8; 16], data: &[u8]) -> Vec<u8> {
        let iv = aes_block(&self.keys.enc, ssc);
        cbc::Encryptor::<Aes256>::new((&*self.keys.enc).into(), (&iv).into())
            .encrypt_padded_vec_mut::<Iso7816>(data)
    }

    fn decrypt(&self, ssc: &[u8; 16], ct: &[u8]) -> Result<Vec<u8>, SmError> {
        if ct.is_empty() || ct.len() % 16 != 0 {
            return Err(SmError::Malformed);
        }
        let iv = aes_block(&self.keys.enc, ssc);
        cbc::Decryptor::<Aes256>::new((&*self.keys.enc).into(), (&iv).into())
            .decrypt_padded_vec_mut::<Iso7816>(ct)
            .map_err(|_| SmError::Padding)
    }

    fn mac(&self, ssc: &[u8; 16], parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(ssc);
        for p in parts {
            m.extend_from_slice(p);
        }
        pad(&mut m);
        let full = cmac(&self.keys.mac, &m);
        let mut t = [0u8; MAC_LEN];
        t.copy_from_slice(&full[..MAC_LEN]);
        t
    }

    fn padded_header(cla: u8, ins: u8, p1: u8, p2: u8) -> Vec<u8> {
        let mut h = alloc::vec![cla, ins, p1, p2];
        pad(&mut h);
        h
    }

    /// Terminal: protect a plain command APDU (Doc 9303-11 9.8.5.1). The protected APDU has
    /// CLA | 0C, the same INS P1 P2, data `[87] [97] 8E`, and Le 00 (or 0000 when extended).
    pub fn protect_command(&mut self, plain: &CommandApdu) -> Result<Vec<u8>, SmError> {
        // DO87 adds up to 16 bytes of padding, 5 of header; DO97 4; DO8E 10.
        if plain.data.len() > 0xFFFF - 40 {
            return Err(SmError::TooLong);
        }
        let ssc = self.next_ssc();
        let cla = plain.cla | CLA_SM;
        let mut do87 = Vec::new();
        if !plain.data.is_empty() {
            let mut v = Vec::with_capacity(plain.data.len() + 17);
            v.push(0x01);
            v.extend_from_slice(&self.encrypt(&ssc, &plain.data));
            tlv::push(&mut do87, tag::SM_CRYPTOGRAM, &v);
        }
        let mut do97 = Vec::new();
        let le = le_bytes(plain);
        if !le.is_empty() {
            tlv::push(&mut do97, tag::SM_LE, &le);
        }
        let header = Self::padded_header(cla, plain.ins, plain.p1, plain.p2);
        let mac = self.mac(&ssc, &[&header, &do87, &do97]);
        let mut data = do87;
        data.extend_from_slice(&do97);
        tlv::push(&mut data, tag::SM_MAC, &mac);
        // Extended when the protected data needs it, or when the plain command was extended
        // or asks for more than a short APDU's 256 bytes (DO97 then has two bytes). A short
        // protected command's answer is cut by the card at SHORT_PROTECTED_MAX plain bytes,
        // the rest waits for GET RESPONSE.
        let extended = data.len() > 255 || plain.extended || plain.ne > SHORT_NE_MAX;
        Ok(CommandApdu {
            cla,
            ins: plain.ins,
            p1: plain.p1,
            p2: plain.p2,
            data,
            ne: if extended { 65_536 } else { 256 },
            extended,
        }
        .to_bytes())
    }

    /// Card: check and decrypt a protected command. Any error: the caller closes the session.
    pub fn unprotect_command(&mut self, apdu: &CommandApdu) -> Result<CommandApdu, SmError> {
        let ssc = self.next_ssc();
        // The protected APDU's own Le is not MACed: it must be 00 (or 0000), the real one
        // travels in DO97 (Doc 9303-11 9.8.5.1).
        if apdu.ne != 256 && apdu.ne != 65_536 {
            return Err(SmError::Malformed);
        }
        let mut do87: Option<&[u8]> = None;
        let mut do97: Option<&[u8]> = None;
        let mut mac: Option<&[u8]> = None;
        let mut mac_start = 0;
        let mut consumed = 0;
        let total = apdu.data.len();
        let mut remaining = apdu.data.as_slice();
        for item in tlv::iter(&apdu.data) {
            let (t, v) = item.map_err(|_| SmError::Malformed)?;
            let len = tlv_len(remaining).ok_or(SmError::Malformed)?;
            remaining = &remaining[len..];
            match t {
                tag::SM_CRYPTOGRAM if do87.is_none() && do97.is_none() && mac.is_none() => {
                    do87 = Some(v)
                }
                tag::SM_LE if do97.is_none() && mac.is_none() => do97 = Some(v),
                tag::SM_MAC if mac.is_none() => {
                    mac = Some(v);
                    mac_start = consumed;
                }
                _ => return Err(SmError::Malformed),
            }
            consumed += len;
        }
        let mac = mac.ok_or(SmError::Malformed)?;
        if mac.len() != MAC_LEN || mac_start + 2 + MAC_LEN != total {
            return Err(SmError::Malformed);
        }
        let header = Self::padded_header(apdu.cla, apdu.ins, apdu.p1, apdu.p2);
        let want = self.mac(&ssc, &[&header, &apdu.data[..mac_start]]);
        if !bool::from(want.ct_eq(mac)) {
            return Err(SmError::Mac);
        }
        let data = match do87 {
            None => Vec::new(),
            Some([0x01, ct @ ..]) => self.decrypt(&ssc, ct)?,
            Some(_) => return Err(SmError::Malformed),
        };
        let (ne, extended_le) = match do97 {
            None => (0, false),
            Some([0]) => (256, false),
            Some([n]) => (usize::from(*n), false),
            Some([0, 0]) => (65_536, true),
            Some([a, b]) => (usize::from(u16::from_be_bytes([*a, *b])), true),
            Some(_) => return Err(SmError::Malformed),
        };
        Ok(CommandApdu {
            cla: apdu.cla & !CLA_SM,
            ins: apdu.ins,
            p1: apdu.p1,
            p2: apdu.p2,
            extended: extended_le || data.len() > 255,
            data,
            ne,
        })
    }

    /// Card: protect a response (data || SW1 SW2): `[87] 99 8E || SW1 SW2`, the plain
    /// trailer repeating DO99 (Doc 9303-11 9.8.5.2).
    pub fn protect_response(&mut self, response: &[u8]) -> Vec<u8> {
        let ssc = self.next_ssc();
        let (data, sw) = response.split_at(response.len().saturating_sub(2));
        let mut out = Vec::with_capacity(data.len() + 40);
        if !data.is_empty() {
            let mut v = Vec::with_capacity(data.len() + 17);
            v.push(0x01);
            v.extend_from_slice(&self.encrypt(&ssc, data));
            tlv::push(&mut out, tag::SM_CRYPTOGRAM, &v);
        }
        tlv::push(&mut out, tag::SM_STATUS, sw);
        let mac = self.mac(&ssc, &[&out]);
        tlv::push(&mut out, tag::SM_MAC, &mac);
        out.extend_from_slice(sw);
        out
    }

    /// Terminal: check and decrypt a protected response; returns the plain data || SW.
    pub fn unprotect_response(&mut self, raw: &[u8]) -> Result<Vec<u8>, SmError> {
        let ssc = self.next_ssc();
        if raw.len() < 2 {
            return Err(SmError::Malformed);
        }
        let (body, trailer) = raw.split_at(raw.len() - 2);
        if body.is_empty() {
            return Err(SmError::Plain(u16::from_be_bytes([trailer[0], trailer[1]])));
        }
        let mut do87 = None;
        let mut do99 = None;
        let mut mac = None;
        let mut mac_start = 0;
        let mut consumed = 0;
        let mut remaining = body;
        for item in tlv::iter(body) {
            let (t, v) = item.map_err(|_| SmError::Malformed)?;
            let len = tlv_len(remaining).ok_or(SmError::Malformed)?;
            remaining = &remaining[len..];
            match t {
                tag::SM_CRYPTOGRAM if do87.is_none() && do99.is_none() && mac.is_none() => {
                    do87 = Some(v)
                }
                tag::SM_STATUS if do99.is_none() && mac.is_none() => do99 = Some(v),
                tag::SM_MAC if mac.is_none() => {
                    mac = Some(v);
                    mac_start = consumed;
                }
                _ => return Err(SmError::Malformed),
            }
            consumed += len;
        }
        let (Some(sw), Some(mac)) = (do99, mac) else {
            return Err(SmError::Malformed);
        };
        if sw.len() != 2 || mac.len() != MAC_LEN || mac_start + 2 + MAC_LEN != body.len() {
            return Err(SmError::Malformed);
        }
        let want = self.mac(&ssc, &[&body[..mac_start]]);
        if !bool::from(want.ct_eq(mac)) {
            return Err(SmError::Mac);
        }
        let mut out = match do87 {
            None => Vec::new(),
            Some([0x01, ct @ ..]) => self.decrypt(&ssc, ct)?,
            Some(_) => return Err(SmError::Malformed),
        };
        out.extend_from_slice(sw);
        Ok(out)
    }
}

/// Length (tag + length + value) of the first TLV of `d`.
fn tlv_len(d: &[u8]) -> Option<usize> {
    let mut i = if d.first()? & 0x1F == 0x1F { 2 } else { 1 };
    let l0 = *d.get(i)?;
    i += 1;
    let len = match l0 {
        0x00..=0x7F => usize::from(l0),
        0x81 => {
            i += 1;
            usize::from(*d.get(i - 1)?)
        }
        0x82 => {
            i += 2;
            usize::from(u16::from_be_bytes([*d.get(i - 2)?, *d.get(i - 1)?]))
        }
        _ => return None,
    };
    (i + len <= d.len()).then_some(i + len)
}

/// The inner dynamic-authentication data of a GENERAL AUTHENTICATE: `7C { tag value }`.
fn dyn_auth(t: u16, v: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(v.len() + 4);
    tlv::push(&mut inner, t, v);
    let mut out = Vec::with_capacity(inner.len() + 4);
    tlv::push(&mut out, tag::DYNAMIC_AUTH, &inner);
    out
}

/// The objects inside `7C` (exactly one 7C, nothing after it).
fn dyn_auth_items(data: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut it = tlv::iter(data);
    let (t, inner) = it.next()?.ok()?;
    if t != tag::DYNAMIC_AUTH || it.next().is_some() {
        return None;
    }
    tlv::iter(inner).collect::<Result<Vec<_>, _>>().ok()
}

fn find<'a>(items: &[(u16, &'a [u8])], t: u16) -> Option<&'a [u8]> {
    items.iter().find(|(tt, _)| *tt == t).map(|(_, v)| *v)
}

// ---------------------------------------------------------------------------------------
// Card side
// ---------------------------------------------------------------------------------------

/// What the card keeps between the PACE steps. `cam`: MSE:SET AT named PACE-CAM, so the
/// mapping key is kept for the chip authentication data of the last step.
#[derive(Default)]
enum Step {
    #[default]
    Idle,
    /// MSE:SET AT accepted.
    SetAt { password: u8, cam: bool },
    /// Encrypted nonce sent.
    Nonce {
        password: u8,
        cam: bool,
        s: Zeroizing<[u8; NONCE_LEN]>,
    },
    /// Mapping keys exchanged. `G'` is not computed on its own: the next step derives the
    /// ephemeral key from `s`, `sk_map` and `pk_map_pcd` ([`mapped_public_key`]). `sk_map`
    /// (SK_Map,IC) is kept past that step only for PACE-CAM.
    Mapped {
        password: u8,
        cam: bool,
        s: Zeroizing<[u8; NONCE_LEN]>,
        sk_map: Zeroizing<[u8; 32]>,
        pk_map_pcd: ProjectivePoint,
    },
    /// Keys agreed, terminal token not yet checked.
    Agreed {
        password: u8,
        keys: SessionKeys,
        pk_pcd: [u8; 65],
        pk_picc: [u8; 65],
        sk_map: Option<Zeroizing<[u8; 32]>>,
    },
}

/// f(password), and the PIN's salt when the password is the PIN.
pub type PaceSecret = (Zeroizing<Vec<u8>>, Option<[u8; NONCE_LEN]>);

/// The terminal's raw APDU exchange: command bytes in, response bytes (data || SW) out.
pub type Transmit<'a, E> = dyn FnMut(&[u8]) -> Result<Vec<u8>, E> + 'a;

/// The password material the card holds for PACE, and its failure counting. Implemented by
/// the applet, which owns the persistent state (and, in the test harness, a malicious card
/// that terminates secure messaging itself).
pub trait PacePasswords {
    /// f(password) for `password` ([`password::CAN`] or [`password::PIN`]), with the PIN's
    /// salt for the PIN; 6A88 when not set, 6983 when blocked.
    fn pace_secret(&self, password: u8) -> Result<PaceSecret, Status>;
    /// Count an attempt before the token is compared (the PIN: decrement and persist its
    /// retry counter, exactly as VERIFY does).
    fn pace_attempt(&mut self, password: u8) -> Result<(), Status>;
    /// The terminal proved the password: restore the counter (the PIN: and count it as
    /// verified for this session).
    fn pace_success(&mut self, password: u8) -> Result<(), Status>;
    /// Wrong password: the attempt stays counted; 63Cx for the PIN.
    fn pace_failure(&mut self, password: u8) -> Status;
    /// The chip's static private key SK_IC for PACE-CAM (Doc 9303-11 4.4.3.5), if it has one.
    /// Without one the card refuses a PACE-CAM run (6A88) and only Generic Mapping is left.
    fn chip_key(&self) -> Option<Zeroizing<[u8; 32]>> {
        None
    }
}

/// The card's secure-messaging state: a PACE run in progress and the established channel.
#[derive(Default)]
pub struct CardSm {
    step: Step,
    channel: Option<Channel>,
}

impl fmt::Debug for CardSm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardSm")
            .field("session", &self.channel.is_some())
            .finish()
    }
}

impl CardSm {
    /// Whether a secure-messaging session is established.
    pub fn active(&self) -> bool {
        self.channel.is_some()
    }

    /// Forget the session and any PACE run (keys are wiped on drop).
    pub fn close(&mut self) {
        self.step = Step::Idle;
        self.channel = None;
    }

    pub fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    pub fn put_channel(&mut self, c: Channel) {
        self.channel = Some(c);
    }

    /// MSE:SET AT (P1P2 C1A4): `80 OID, 83 password reference [, 84 domain parameters]`.
    pub fn mse_set_at(&mut self, apdu: &CommandApdu) -> Result<Vec<u8>, Status> {
        self.close();
        if (apdu.p1, apdu.p2) != (0xC1, 0xA4) {
            return Err(Status::IncorrectP1P2);
        }
        let items: Vec<(u16, &[u8])> = tlv::iter(&apdu.data)
            .collect::<Result<_, _>>()
            .map_err(|_| Status::WrongData)?;
        let mut oid = None;
        let mut pw = None;
        let mut domain = None;
        for (t, v) in &items {
            match *t {
                tag::MSE_OID if oid.is_none() => oid = Some(*v),
                tag::MSE_PASSWORD if pw.is_none() => pw = Some(*v),
                tag::MSE_DOMAIN if domain.is_none() => domain = Some(*v),
                _ => return Err(Status::WrongData),
            }
        }
        let cam = match oid {
            Some(o) if o == PACE_OID => false,
            Some(o) if o == PACE_CAM_OID => true,
            _ => return Err(Status::ReferenceNotFound),
        };
        if domain.is_some_and(|d| d != [DOMAIN_P256]) {
            return Err(Status::ReferenceNotFound);
        }
        let password = match pw {
            Some([p @ (password::CAN | password::PIN)]) => *p,
            _ => return Err(Status::ReferenceNotFound),
        };
        self.step = Step::SetAt { password, cam };
        Ok(Vec::new())
    }

    /// One GENERAL AUTHENTICATE step. Any error ends the PACE run.
    pub fn general_authenticate<R: RngCore + CryptoRng>(
        &mut self,
        apdu: &CommandApdu,
        rng: &mut R,
        pw: &mut dyn PacePasswords,
    ) -> Result<Vec<u8>, Status> {
        let step = core::mem::take(&mut self.step);
        self.channel = None;
        if (apdu.p1, apdu.p2) != (0, 0) {
            return Err(Status::IncorrectP1P2);
        }
        let chained = apdu.cla & crate::protocol::cla::CHAINING != 0;
        let items = dyn_auth_items(&apdu.data).ok_or(Status::WrongData)?;
        match step {
            Step::SetAt { password, cam } => {
                if !chained || !items.is_empty() {
                    return Err(Status::WrongData);
                }
                // PACE-CAM needs the chip key; refuse it at the first step, before any work.
                if cam && pw.chip_key().is_none() {
                    return Err(Status::ReferenceNotFound);
                }
                let (secret, salt) = pw.pace_secret(password)?;
                let k_pi = kdf(&secret, 3);
                let mut s = Zeroizing::new([0u8; NONCE_LEN]);
                rng.fill_bytes(&mut s[..]);
                let z = encrypt_nonce(&k_pi, &s);
                let mut inner = Vec::new();
                tlv::push(&mut inner, tag::ENCRYPTED_NONCE, &z);
                if let Some(salt) = salt {
                    tlv::push(&mut inner, tag::PIN_SALT, &salt);
                }
                let mut out = Vec::new();
                tlv::push(&mut out, tag::DYNAMIC_AUTH, &inner);
                self.step = Step::Nonce { password, cam, s };
                Ok(out)
            }
            Step::Nonce { password, cam, s } => {
                let pk = match items.as_slice() {
                    [(tag::MAP_PCD, pk)] if chained => decode_point(pk).ok_or(Status::WrongData)?,
                    _ => return Err(Status::WrongData),
                };
                let sk = NonZeroScalar::random(&mut *rng);
                let own = encode_point(&fixed_base::mul_generator(&sk));
                self.step = Step::Mapped {
                    password,
                    cam,
                    s,
                    sk_map: Zeroizing::new(<[u8; 32]>::from(sk.to_repr())),
                    pk_map_pcd: pk,
                };
                Ok(dyn_auth(tag::MAP_PICC, &own))
            }
            Step::Mapped {
                password,
                cam,
                s,
                sk_map,
                pk_map_pcd,
            } => {
                let (pk, pk_pcd) = match items.as_slice() {
                    [(tag::EPH_PCD, pk)] if chained => {
                        (decode_point(pk).ok_or(Status::WrongData)?, *pk)
                    }
                    _ => return Err(Status::WrongData),
                };
                let sk = NonZeroScalar::random(&mut *rng);
                let sk_map_scalar = Zeroizing::new(
                    Option::<Scalar>::from(Scalar::from_repr((*sk_map).into()))
                        .ok_or(Status::WrongData)?,
                );
                let pk_picc = mapped_public_key(&s, &sk_map_scalar, &pk_map_pcd, &sk)
                    .ok_or(Status::WrongData)?;
                let pk_picc = encode_point(&pk_picc);
                // Doc 9303-11 4.4.3.3.2: the chip checks PK_PCD != PK_PICC.
                if pk_picc[..] == *pk_pcd {
                    return Err(Status::WrongData);
                }
                let x = x_coordinate(&(pk * *sk)).ok_or(Status::WrongData)?;
                let keys = SessionKeys::derive(&x[..]);
                let mut pcd = [0u8; 65];
                pcd.copy_from_slice(pk_pcd);
                self.step = Step::Agreed {
                    password,
                    keys,
                    pk_pcd: pcd,
                    pk_picc,
                    sk_map: cam.then_some(sk_map),
                };
                Ok(dyn_auth(tag::EPH_PICC, &pk_picc))
            }
            Step::Agreed {
                password,
                keys,
                pk_pcd,
                pk_picc,
                sk_map,
            } => {
                let token = match items.as_slice() {
                    [(tag::TOKEN_PCD, t)] if !chained && t.len() == MAC_LEN => *t,
                    _ => return Err(Status::WrongData),
                };
                // Counted before the comparison, like VERIFY: a torn run costs a try.
                pw.pace_attempt(password)?;
                let oid: &[u8] = if sk_map.is_some() {
                    &PACE_CAM_OID
                } else {
                    &PACE_OID
                };
                let want = auth_token_for(oid, &keys.mac, &pk_picc);
                if !bool::from(want.ct_eq(token)) {
                    return Err(pw.pace_failure(password));
                }
                pw.pace_success(password)?;
                let own = auth_token_for(oid, &keys.mac, &pk_pcd);
                let mut inner = Vec::with_capacity(80);
                tlv::push(&mut inner, tag::TOKEN_PICC, &own);
                // PACE-CAM (Doc 9303-11 4.4.3.5.1): only after the terminal proved the
                // password, the chip authentication data, encrypted with the session key.
                if let Some(sk_map) = &sk_map {
                    let sk_ic = pw.chip_key().ok_or(Status::ReferenceNotFound)?;
                    let a_ic = chip_authentication_data(&keys.enc, &sk_ic, sk_map)
                        .ok_or(Status::ReferenceNotFound)?;
                    tlv::push(&mut inner, tag::CAM_DATA, &a_ic);
                }
                self.channel = Some(Channel::new(keys));
                let mut out = Vec::with_capacity(inner.len() + 2);
                tlv::push(&mut out, tag::DYNAMIC_AUTH, &inner);
                Ok(out)
            }
            Step::Idle => Err(Status::ConditionsNotSatisfied),
        }
    }
}

/// Whether an instruction is part of session set-up (handled by [`CardSm`], never chained).
pub fn is_pace(ins_byte: u8) -> bool {
    ins_byte == ins::MSE || ins_byte == ins::GENERAL_AUTHENTICATE
}

// ---------------------------------------------------------------------------------------
// Terminal side
// ---------------------------------------------------------------------------------------

/// The password a terminal presents.
pub enum Password<'a> {
    /// The card access number printed on the card (6 digits).
    Can(&'a [u8]),
    /// The citizen's PIN (6 digits).
    Pin(&'a [u8]),
}

impl fmt::Debug for Password<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Password::Can(_) => "Password::Can(..)",
            Password::Pin(_) => "Password::Pin(..)",
        })
    }
}

/// Why PACE failed on the terminal side.
#[derive(Debug)]
pub enum PaceError<E> {
    /// The transport failed.
    Transport(E),
    /// The card refused a step with this status word (63Cx: wrong PIN, tries left; 6983:
    /// blocked; 6300: wrong CAN).
    Refused { step: &'static str, sw: u16 },
    /// The card's answer was malformed or its token did not verify (not this card, or a
    /// man in the middle).
    Protocol(&'static str),
}

impl<E: fmt::Display> fmt::Display for PaceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PaceError::Transport(e) => write!(f, "{e}"),
            PaceError::Refused { step, sw } => write!(f, "the card refused {step} ({sw:04X})"),
            PaceError::Protocol(why) => write!(f, "secure channel set-up failed: {why}"),
        }
    }
}

/// MSE:SET AT for PACE with `password` (a reference of [`password`]).
pub fn mse_set_at(password_ref: u8) -> Vec<u8> {
    mse_set_at_for(&PACE_OID, password_ref)
}

/// MSE:SET AT for the protocol `oid` ([`PACE_OID`] or [`PACE_CAM_OID`]).
pub fn mse_set_at_for(oid: &[u8], password_ref: u8) -> Vec<u8> {
    let mut data = Vec::new();
    tlv::push(&mut data, tag::MSE_OID, oid);
    tlv::push(&mut data, tag::MSE_PASSWORD, &[password_ref]);
    tlv::push(&mut data, tag::MSE_DOMAIN, &[DOMAIN_P256]);
    CommandApdu {
        cla: 0,
        ins: ins::MSE,
        p1: 0xC1,
        p2: 0xA4,
        data,
        ne: 0,
        extended: false,
    }
    .to_bytes()
}

/// GENERAL AUTHENTICATE with `7C { data }` (`chained`: CLA 10, all but the last step).
pub fn general_authenticate(chained: bool, t: Option<(u16, &[u8])>) -> Vec<u8> {
    let mut inner = Vec::new();
    if let Some((t, v)) = t {
        tlv::push(&mut inner, t, v);
    }
    let mut data = Vec::new();
    tlv::push(&mut data, tag::DYNAMIC_AUTH, &inner);
    CommandApdu {
        cla: if chained { 0x10 } else { 0 },
        ins: ins::GENERAL_AUTHENTICATE,
        p1: 0,
        p2: 0,
        data,
        ne: 256,
        extended: false,
    }
    .to_bytes()
}

/// Run PACE (Generic Mapping) as the terminal over `transmit` (raw APDU in, raw response out)
/// and return the established channel. The application must be selected first.
pub fn establish<E, R: RngCore + CryptoRng>(
    transmit: &mut Transmit<'_, E>,
    rng: &mut R,
    pass: &Password<'_>,
) -> Result<Channel, PaceError<E>> {
    establish_with(transmit, rng, pass, false).map(|e| e.channel)
}

/// A PACE run's result on the terminal side.
#[derive(Debug)]
pub struct Established {
    pub channel: Channel,
    /// PACE-CAM: what the chip authentication check needs (`None` for Generic Mapping).
    pub chip: Option<ChipAuthentication>,
}

/// Run PACE-CAM (Doc 9303-11 section 4.4 with Chip Authentication Mapping, 4.4.3.5) as the
/// terminal: the channel, and the chip authentication data to check against the chip's key
/// once the terminal has it ([`ChipAuthentication::verify`]). A card that omits the data
/// still gets its channel (the password was right), and fails that check.
pub fn establish_cam<E, R: RngCore + CryptoRng>(
    transmit: &mut Transmit<'_, E>,
    rng: &mut R,
    pass: &Password<'_>,
) -> Result<Established, PaceError<E>> {
    establish_with(transmit, rng, pass, true)
}

fn establish_with<E, R: RngCore + CryptoRng>(
    transmit: &mut Transmit<'_, E>,
    rng: &mut R,
    pass: &Password<'_>,
    cam: bool,
) -> Result<Established, PaceError<E>> {
    let oid: &[u8] = if cam { &PACE_CAM_OID } else { &PACE_OID };
    let mut step = |name: &'static str, apdu: Vec<u8>| -> Result<Vec<u8>, PaceError<E>> {
        let mut r = transmit(&apdu).map_err(PaceError::Transport)?;
        if r.len() < 2 {
            return Err(PaceError::Protocol("short answer"));
        }
        let sw = u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]]);
        if sw != 0x9000 {
            return Err(PaceError::Refused { step: name, sw });
        }
        r.truncate(r.len() - 2);
        Ok(r)
    };
    let password_ref = match pass {
        Password::Can(_) => password::CAN,
        Password::Pin(_) => password::PIN,
    };
    step("MSE:SET AT", mse_set_at_for(oid, password_ref))?;
    let r = step("the nonce", general_authenticate(true, None))?;
    let items = dyn_auth_items(&r).ok_or(PaceError::Protocol("malformed nonce"))?;
    let z: [u8; NONCE_LEN] = find(&items, tag::ENCRYPTED_NONCE)
        .and_then(|z| z.try_into().ok())
        .ok_or(PaceError::Protocol("malformed nonce"))?;
    let secret: Zeroizing<Vec<u8>> = match pass {
        Password::Can(can) => Zeroizing::new(can.to_vec()),
        Password::Pin(pin) => {
            let salt: [u8; NONCE_LEN] = find(&items, tag::PIN_SALT)
                .and_then(|s| s.try_into().ok())
                .ok_or(PaceError::Protocol("no PIN salt"))?;
            Zeroizing::new(pin_password(&salt, pin).to_vec())
        }
    };
    let s = decrypt_nonce(&kdf(&secret, 3), &z);
    // Mapping.
    let sk_map = NonZeroScalar::random(&mut *rng);
    let pk_map = encode_point(&fixed_base::mul_generator(&sk_map));
    let r = step(
        "the mapping",
        general_authenticate(true, Some((tag::MAP_PCD, &pk_map))),
    )?;
    let items = dyn_auth_items(&r).ok_or(PaceError::Protocol("malformed mapping"))?;
    let pk_map_ic: [u8; 65] = find(&items, tag::MAP_PICC)
        .and_then(|b| b.try_into().ok())
        .ok_or(PaceError::Protocol("bad mapping point"))?;
    let card_map = decode_point(&pk_map_ic).ok_or(PaceError::Protocol("bad mapping point"))?;
    // Key agreement on G' = s*G + sk_map*PK_map,IC (G' folded into the key, see
    // `mapped_public_key`).
    let sk = NonZeroScalar::random(&mut *rng);
    let pk_pcd = encode_point(
        &mapped_public_key(&s, &sk_map, &card_map, &sk)
            .ok_or(PaceError::Protocol("bad mapping"))?,
    );
    let r = step(
        "the key agreement",
        general_authenticate(true, Some((tag::EPH_PCD, &pk_pcd))),
    )?;
    let items = dyn_auth_items(&r).ok_or(PaceError::Protocol("malformed key agreement"))?;
    let pk_picc_bytes = find(&items, tag::EPH_PICC).ok_or(PaceError::Protocol("no key"))?;
    let pk_picc = decode_point(pk_picc_bytes).ok_or(PaceError::Protocol("bad card key"))?;
    if pk_picc_bytes == pk_pcd {
        return Err(PaceError::Protocol("card echoed our key"));
    }
    let x = x_coordinate(&(pk_picc * *sk)).ok_or(PaceError::Protocol("bad shared point"))?;
    let keys = SessionKeys::derive(&x[..]);
    let token = auth_token_for(oid, &keys.mac, pk_picc_bytes);
    let r = step(
        "the password (authentication token)",
        general_authenticate(false, Some((tag::TOKEN_PCD, &token))),
    )?;
    let items = dyn_auth_items(&r).ok_or(PaceError::Protocol("malformed token"))?;
    let card_token = find(&items, tag::TOKEN_PICC).ok_or(PaceError::Protocol("no token"))?;
    if !bool::from(auth_token_for(oid, &keys.mac, &pk_pcd).ct_eq(card_token)) {
        return Err(PaceError::Protocol("the card's token does not verify"));
    }
    let chip = if cam {
        Some(ChipAuthentication::from_card(
            &keys.enc,
            pk_map_ic,
            find(&items, tag::CAM_DATA),
        ))
    } else {
        None
    };
    Ok(Established {
        channel: Channel::new(keys),
        chip,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tlv_len_matches_push() {
        for n in [0usize, 5, 127, 128, 255, 256, 1000] {
            let mut v = Vec::new();
            tlv::push(&mut v, 0x87, &alloc::vec![1u8; n]);
            assert_eq!(tlv_len(&v), Some(v.len()));
        }
    }

    #[test]
    fn command_round_trip_and_ssc() {
        let keys = SessionKeys::derive(&[7u8; 32]);
        let mut term = Channel::new(keys.clone());
        let mut card = Channel::new(keys);
        for (data, ne) in [
            (alloc::vec![], 0usize),
            (alloc::vec![1, 2, 3], 256),
            (alloc::vec![9; 300], 65_536),
        ] {
            let plain = CommandApdu {
                cla: 0,
                ins: 0xCA,
                p1: 1,
                p2: 2,
                data: data.clone(),
                ne,
                extended: ne > 256,
            };
            let raw = term.protect_command(&plain).unwrap();
            let parsed = CommandApdu::parse(&raw).unwrap();
            let got = card.unprotect_command(&parsed).unwrap();
            assert_eq!(got.data, data);
            assert_eq!(got.ne, ne);
            let resp = card.protect_response(&[5, 6, 0x90, 0x00]);
            assert_eq!(term.unprotect_response(&resp).unwrap(), [5, 6, 0x90, 0x00]);
        }
        assert_eq!(term.ssc(), 6);
        assert_eq!(card.ssc(), 6);
    }
}
