//! `card_applet::terminal::parse` and `verify` never panic on arbitrary bytes; where `parse`
//! succeeds the certificate is in canonical form: the payload range holds exactly the parsed
//! body's `encode_body`, and `assemble(encode_body, signature)` gives back the input bytes.
//! A certificate that verifies parses to the same body; a parsed body that is re-signed by
//! the test authority verifies to the same body.

use std::sync::OnceLock;

use super::{authority, hex, public_point, AUTHORITY_KEY};
use card_applet::terminal::{self, CertError};
use p256::ecdsa::{signature::Signer, Signature};

fn authority_key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| hex(AUTHORITY_KEY))
}

/// Run the target on one input; panics where an invariant fails.
pub fn check(data: &[u8]) {
    let parsed = terminal::parse(data);
    if let Ok((body, range, sig)) = &parsed {
        let payload = body.encode_body();
        assert_eq!(
            data.get(range.clone()),
            Some(payload.as_slice()),
            "payload range is not the canonical body"
        );
        assert_eq!(
            terminal::assemble(&payload, sig),
            data,
            "re-assembled certificate differs"
        );
        assert!(
            body.is_well_formed(),
            "parsed a body that is not well formed"
        );
        // Re-signed by the test authority, the body verifies to itself.
        let s: Signature = authority().sign(&terminal::sig_structure(&payload));
        let resigned = terminal::assemble(&payload, &s.to_bytes().into());
        assert_eq!(
            terminal::verify(&resigned, authority_key()).as_ref(),
            Ok(body),
            "a re-signed body does not verify"
        );
    }

    // verify: the test authority, a valid point that did not sign, and malformed keys.
    let verified = terminal::verify(data, authority_key());
    match (&verified, &parsed) {
        (Ok(v), Ok((body, _, _))) => assert_eq!(v, body, "verify and parse disagree"),
        (Ok(_), Err(e)) => panic!("verifies but does not parse: {e:?}"),
        (Err(CertError::Malformed), Ok(_)) => panic!("parses but verify says malformed"),
        (Err(CertError::BadSignature), Err(_)) => panic!("does not parse, bad signature"),
        (Err(CertError::BadAuthorityKey), _) => panic!("the test authority key refused"),
        _ => {}
    }
    let other = public_point(super::other_authority());
    let _ = terminal::verify(data, &other);
    let _ = terminal::verify(data, &other[..64]);
    let _ = terminal::verify(data, &[0x04; 65]);
    let _ = terminal::verify(data, &[]);
    // The input as an authority key, too.
    let _ = terminal::verify(data, data);
}
