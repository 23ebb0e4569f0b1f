//! The registry's decoders never panic on arbitrary bytes, and where one succeeds the value
//! round-trips: encode(decode(x)) decodes to the same value. For the COSE objects the round
//! trip goes through the crate's own signing: decode -> payload -> sign -> verify -> same value.

use std::sync::OnceLock;

use civic_registry::cert::{IssuerCertBody, IssuerCertificate};
use civic_registry::credential::{Credential, SignedCredential};
use civic_registry::record::CardRecord;
use p256::ecdsa::SigningKey;

/// A fixed key (scalar 1..=32): signing in the target is deterministic.
fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let scalar: Vec<u8> = (1..=32).collect();
        SigningKey::from_slice(&scalar).expect("valid scalar")
    })
}

fn credential(data: &[u8]) {
    let Ok(c) = Credential::decode(data) else {
        return;
    };
    let again = Credential::decode(&c.encode()).expect("re-encoded credential decodes");
    assert_eq!(again, c);
}

fn card_record(data: &[u8]) {
    let Ok(r) = CardRecord::decode(data) else {
        return;
    };
    let again = CardRecord::decode(&r.encode()).expect("re-encoded card record decodes");
    assert_eq!(again, r);
    signed_credential_checks(&r.credential);
}

fn signed_credential_checks(s: &SignedCredential) {
    let bytes = s.to_bytes();
    let again = SignedCredential::from_bytes(&bytes).expect("re-encoded COSE_Sign1 parses");
    assert_eq!(&again, s);
    let _ = s.issuer_id();
    let _ = s.commitment();
    let _ = s.verify(key().verifying_key());
    if let Ok(c) = s.credential_unverified() {
        // decode -> sign -> parse -> verify gives the same credential back.
        let resigned = SignedCredential::sign(&c, key()).expect("a decoded credential signs");
        let parsed = SignedCredential::from_bytes(&resigned.to_bytes()).expect("parses");
        assert_eq!(parsed.verify(key().verifying_key()).expect("verifies"), c);
        assert_eq!(parsed.payload_bytes(), c.encode().as_slice());
    }
}

fn signed_credential(data: &[u8]) {
    if let Ok(s) = SignedCredential::from_bytes(data) {
        assert_eq!(s.as_bytes(), data);
        signed_credential_checks(&s);
    }
}

fn issuer_certificate(data: &[u8]) {
    let Ok(cert) = IssuerCertificate::from_bytes(data) else {
        return;
    };
    assert_eq!(cert.as_bytes(), data);
    let again = IssuerCertificate::from_bytes(&cert.to_bytes()).expect("re-encoded cert parses");
    assert_eq!(again, cert);
    let _ = cert.verify(key().verifying_key());
    let Ok(body) = cert.body_unverified() else {
        return;
    };
    let body: IssuerCertBody = body;
    if body.check().is_ok() {
        let resigned = IssuerCertificate::sign(&body, key()).expect("a checked body signs");
        let parsed = IssuerCertificate::from_bytes(&resigned.to_bytes()).expect("parses");
        assert_eq!(
            parsed.verify(key().verifying_key()).expect("verifies"),
            body
        );
    }
}

/// Run the target on one input; panics where an invariant fails.
pub fn check(data: &[u8]) {
    credential(data);
    card_record(data);
    signed_credential(data);
    issuer_certificate(data);
}
