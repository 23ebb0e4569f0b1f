//! Terminal certificates: a checked-in test vector (RFC 6979 makes ECDSA deterministic) and
//! interoperability with `coset`, an independent COSE implementation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use card_applet::protocol::{access, role};
use card_applet::terminal::{self, CertError, TerminalCert, MAX_CERT_LEN};
use coset::{iana, CborSerializable, TaggedCborSerializable};
use p256::ecdsa::{signature::Verifier, Signature, SigningKey, VerifyingKey};

/// The vector's authority key: scalar 01 02 .. 20.
fn authority() -> SigningKey {
    let scalar: Vec<u8> = (1u8..=32).collect();
    SigningKey::from_slice(&scalar).unwrap()
}

/// The vector's terminal key: scalar 21 22 .. 40.
fn terminal_key() -> SigningKey {
    let scalar: Vec<u8> = (33u8..=64).collect();
    SigningKey::from_slice(&scalar).unwrap()
}

fn sec1(k: &SigningKey) -> [u8; 65] {
    k.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .try_into()
        .unwrap()
}

/// The vector's body: a clinic terminal, 30 days from 2026-01-01T00:00:00Z.
fn vector_body() -> TerminalCert {
    TerminalCert {
        terminal_id: "clinic-st-mary-01".into(),
        role: role::CLINIC,
        access: access::READ_IDENTITY | access::READ_EMERGENCY | access::READ_HEALTH,
        not_before: 1_767_225_600,
        not_after: 1_767_225_600 + 30 * 86_400,
        public_key: sec1(&terminal_key()),
    }
}

fn vector_bytes() -> Vec<u8> {
    hex::decode(include_str!("vectors/terminal_cert.hex").trim()).expect("vector hex")
}

#[test]
fn vector_signs_and_parses_byte_exact() {
    let cert = terminal::sign(&vector_body(), &authority());
    assert_eq!(
        hex::encode(&cert),
        hex::encode(vector_bytes()),
        "re-signing the vector body changed the bytes"
    );
    let (body, payload, sig) = terminal::parse(&cert).unwrap();
    assert_eq!(body, vector_body());
    assert_eq!(&cert[payload.clone()], &vector_body().encode_body()[..]);
    assert_eq!(&cert[cert.len() - 64..], &sig);
    assert_eq!(
        terminal::assemble(&cert[payload], &sig),
        cert,
        "assemble(parse(x)) == x"
    );
    assert_eq!(
        terminal::verify(&cert, &sec1(&authority())).unwrap(),
        vector_body()
    );
    assert_eq!(
        terminal::verify(&cert, &sec1(&terminal_key())),
        Err(CertError::BadSignature)
    );
}

/// coset parses our bytes as a tagged COSE_Sign1, sees ES256 in the protected header, and
/// its to-be-signed bytes verify with our signature: we emit real COSE.
#[test]
fn coset_accepts_our_certificates() {
    let cert = vector_bytes();
    let sign1 = coset::CoseSign1::from_tagged_slice(&cert).expect("coset parses");
    assert_eq!(
        sign1.protected.header.alg,
        Some(coset::RegisteredLabelWithPrivate::Assigned(
            iana::Algorithm::ES256
        ))
    );
    assert!(sign1.unprotected.is_empty());
    assert_eq!(
        sign1.payload.as_deref(),
        Some(&vector_body().encode_body()[..])
    );
    let vk = VerifyingKey::from(&authority());
    sign1
        .verify_signature(b"", |sig, tbs| {
            let sig = Signature::from_slice(sig).map_err(|e| e.to_string())?;
            vk.verify(tbs, &sig).map_err(|e| e.to_string())
        })
        .expect("coset's Sig_structure verifies");
    assert_eq!(
        sign1.tbs_data(b""),
        terminal::sig_structure(&vector_body().encode_body())
    );
    // And coset re-serialises to the same bytes.
    assert_eq!(sign1.clone().to_tagged_vec().unwrap(), cert);
    // A COSE_Sign1 built by coset with the same content is byte-identical to ours.
    let built = coset::CoseSign1Builder::new()
        .protected(
            coset::HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .build(),
        )
        .payload(vector_body().encode_body())
        .signature(cert[cert.len() - 64..].to_vec())
        .build();
    assert_eq!(built.to_tagged_vec().unwrap(), cert);
    // The untagged form is not a certificate.
    assert_eq!(
        terminal::parse(&sign1.to_vec().unwrap()).err(),
        Some(CertError::Malformed)
    );
}

#[test]
fn a_32_byte_id_fits_one_short_apdu() {
    let body = TerminalCert {
        terminal_id: "T".repeat(32),
        role: role::EDUCATION_OFFICE,
        access: 0xFF,
        not_before: u64::MAX - 1,
        not_after: u64::MAX,
        ..vector_body()
    };
    let cert = terminal::sign(&body, &authority());
    assert!(cert.len() <= MAX_CERT_LEN, "{} bytes", cert.len());
    assert!(cert.len() <= 255);
    assert_eq!(terminal::verify(&cert, &sec1(&authority())).unwrap(), body);
}
