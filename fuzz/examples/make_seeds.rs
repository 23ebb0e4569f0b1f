//! Writes the seed corpora into `corpus-seeds/<target>/` (run from `fuzz/`):
//!
//!     cargo run --example make_seeds
//!
//! APDU, session and terminal-certificate seeds are fixed bytes (the harness's keys are
//! fixed and ECDSA signing is deterministic); the CBOR seeds are real objects made with the
//! registry's own API (fresh keys each run, so their bytes differ between runs).

use std::fs;
use std::path::Path;

use card_applet::protocol::{access, role};
use civic_fuzz::{
    encode_session, hex, personalise_script, AuthSpec, CertSpec, Op, Start, ACTIVATE,
    AUTH_BAD_SIGNATURE, AUTH_FRESH_CHALLENGE, AUTH_WRONG_CARD, CARD_ID, CERT_BAD_SIGNATURE,
    CERT_FORGED, DAY, GET_CHALLENGE, NOW, PIN, SELECT,
};
use civic_registry::cert::{IssuerCertBody, IssuerCertificate};
use civic_registry::credential::{
    Claims, Credential, Degree, EducationClaims, EmergencyInfo, HealthClaims, IdentityClaims, Kind,
    SignedCredential, Vaccination,
};
use civic_registry::keys;
use civic_registry::merkle;
use civic_registry::record::CardRecord;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus-seeds").join(target);
    fs::create_dir_all(&dir).expect("create the seed directory");
    fs::write(dir.join(name), bytes).expect("write a seed");
    println!("{target}/{name}: {} bytes", bytes.len());
}

fn apdu_seeds() {
    let t = "apdu_parse";
    write(t, "select", &hex(SELECT));
    write(t, "get_data_short", &hex("00CA010100"));
    write(t, "get_data_extended", &hex("00CA0200000000"));
    // First link of a chained PUT DATA (CLA 10), short Lc.
    let mut link = hex("10DA0203 08 800101 8103");
    link.extend_from_slice(b"abc");
    write(t, "put_data_chained_link", &link);
    // Extended PUT DATA with an extended Le (case 4E), 300-byte record.
    let mut ext = hex("00DA0203 00 0133 800101 81 82 012C");
    ext.extend_from_slice(&[0x5A; 300]);
    ext.extend_from_slice(&[0x00, 0x00]);
    write(t, "put_data_extended_4e", &ext);
    write(t, "verify_pin", &hex(&format!("0020008106 {PIN}")));
    write(t, "get_challenge", &hex(GET_CHALLENGE));
    let cert = CertSpec {
        flags: 0,
        role: role::CLINIC,
        access: CLINIC,
        not_before: NOW - DAY,
        not_after: NOW + 30 * DAY,
        id: b"clinic-st-mary",
    };
    write(t, "pso_verify_certificate", &cert.apdu());
    let ea = AuthSpec {
        flags: 0,
        time: NOW,
    }
    .apdu(cert.key(), CARD_ID, &[0; 16]);
    write(t, "external_authenticate", &ea);
}

/// A harness-signed certificate valid from NOW - 1 day to NOW + 30 days.
fn cert(flags: u8, role: u8, access: u8, id: &'static [u8]) -> Op<'static> {
    Op::Cert(CertSpec {
        flags,
        role,
        access,
        not_before: NOW - DAY,
        not_after: NOW + 30 * DAY,
        id,
    })
}

/// GET CHALLENGE then EXTERNAL AUTHENTICATE at `time`, signed by the harness.
fn auth(time: u64) -> Op<'static> {
    Op::Auth(AuthSpec {
        flags: AUTH_FRESH_CHALLENGE,
        time,
    })
}

fn apdus(steps: &[Vec<u8>]) -> Vec<Op<'_>> {
    steps.iter().map(|a| Op::Apdu(a)).collect()
}

const CLINIC: u8 = access::READ_IDENTITY | access::READ_EMERGENCY | access::READ_HEALTH;
const OFFICE: u8 = access::READ_IDENTITY | access::WRITE_CREDENTIALS | access::PIN_MANAGEMENT;

fn session_seeds() {
    let t = "applet_session";
    let select = hex(SELECT);
    let verify_pin = hex(&format!("0020008106 {PIN}"));

    // Issued card, no terminal: card info, directory, slot 0 via short Le + GET RESPONSE
    // and extended (refused without rights), the public key.
    let steps = [
        select.clone(),
        hex("00CA010100"),
        hex("00CA010300"),
        hex("00CA020000"),
        hex("00C0000000"),
        hex("00CA0201000000"),
        hex("0047810000"),
    ];
    write(
        t,
        "issued_reads",
        &encode_session(Start::Issued, &apdus(&steps)),
    );

    // Issued card: a clinic reads identity and emergency data, health only after the PIN,
    // then the citizen reads the access log; SELECT ends the rights.
    let reads = [
        hex("00CA020000"),
        hex("00CA020300"),
        hex("00CA020100"),
        hex("00CA020200"),
        hex("00CA010400"),
        verify_pin.clone(),
        hex("00CA020100"),
        hex("00CA010400"),
        hex("00CA010100"),
        select.clone(),
        hex("00CA020000"),
    ];
    let mut ops = vec![
        Op::Apdu(&select),
        cert(0, role::CLINIC, CLINIC, b"clinic-st-mary"),
        auth(NOW),
    ];
    ops.extend(apdus(&reads));
    write(t, "issued_clinic", &encode_session(Start::Issued, &ops));

    // Issued card: the office authenticates, writes a 600-byte identity record to slot 4 by
    // a chained PUT DATA, reads it back with short APDUs (61xx / GET RESPONSE); power cycle,
    // the citizen reads it with the PIN.
    let mut body = hex("800101 81 82 0258");
    body.extend((0..600u16).map(|i| i as u8));
    let (a, b) = body.split_at(250);
    let mut link1 = hex("10DA0204");
    link1.push(a.len() as u8);
    link1.extend_from_slice(a);
    let (b1, b2) = b.split_at(250);
    let mut link2 = hex("10DA0204");
    link2.push(b1.len() as u8);
    link2.extend_from_slice(b1);
    let mut link3 = hex("00DA0204");
    link3.push(b2.len() as u8);
    link3.extend_from_slice(b2);
    let puts = [
        link1,
        link2,
        link3,
        hex("00CA020400"),
        hex("00C0000000"),
        hex("00C0000000"),
    ];
    let again = [select.clone(), verify_pin.clone(), hex("00CA0204000000")];
    let mut ops = vec![
        Op::Apdu(&select),
        cert(1, role::ISSUING_OFFICE, OFFICE, b"office-city-hall"),
        auth(NOW),
    ];
    ops.extend(apdus(&puts));
    ops.push(Op::Reset);
    ops.extend(apdus(&again));
    write(
        t,
        "issued_office_chained_put",
        &encode_session(Start::Issued, &ops),
    );

    // Issued card: PIN tries down to blocked, the office unblocks, PIN verified, PIN
    // changed, chip authentication.
    let blocked = [
        select.clone(),
        hex("0020008106 393939393939"),
        hex("0020008106 393939393939"),
        hex("00200081"),
        hex("0020008106 393939393939"),
        verify_pin.clone(),
    ];
    let unblocked = [
        hex("002C0381"),
        verify_pin.clone(),
        hex(&format!("002400810C {PIN} 363534333231")),
        hex("00200081"),
        hex("00880000 10 000102030405060708090A0B0C0D0E0F 00"),
    ];
    let mut ops = apdus(&blocked);
    ops.push(cert(1, role::ISSUING_OFFICE, OFFICE, b"office-city-hall"));
    ops.push(auth(NOW + 60));
    ops.extend(apdus(&unblocked));
    write(t, "issued_pin_story", &encode_session(Start::Issued, &ops));

    // Issued card: refusals. A forged certificate, a bad authority signature, a bad terminal
    // signature, a signature for another card, a replayed (stale) challenge, a time before
    // not_before; a good authentication moves the latest time seen to NOW; then a
    // certificate that expired before it, and a terminal whose time lags more than the skew.
    let read = hex("00CA020000");
    let ops = vec![
        Op::Apdu(&select),
        cert(CERT_FORGED, role::CLINIC, CLINIC, b"forger"),
        cert(CERT_BAD_SIGNATURE, role::CLINIC, CLINIC, b"clinic-st-mary"),
        cert(0, role::CLINIC, CLINIC, b"clinic-st-mary"),
        Op::Auth(AuthSpec {
            flags: AUTH_FRESH_CHALLENGE | AUTH_BAD_SIGNATURE,
            time: NOW,
        }),
        Op::Auth(AuthSpec {
            flags: AUTH_FRESH_CHALLENGE | AUTH_WRONG_CARD,
            time: NOW,
        }),
        Op::Auth(AuthSpec {
            flags: 0,
            time: NOW,
        }),
        auth(NOW - 2 * DAY),
        Op::Apdu(&read),
        auth(NOW),
        Op::Apdu(&read),
        Op::Cert(CertSpec {
            flags: 2,
            role: role::CLINIC,
            access: CLINIC,
            not_before: NOW - 30 * DAY,
            not_after: NOW - 20 * DAY,
            id: b"expired",
        }),
        auth(NOW - 25 * DAY),
        Op::Apdu(&select),
        cert(3, role::EDUCATION_OFFICE, access::READ_EDUCATION, b"school"),
        auth(NOW - 1000),
        Op::Apdu(&read),
        auth(NOW + DAY),
        Op::Apdu(&read),
    ];
    write(t, "issued_refusals", &encode_session(Start::Issued, &ops));

    // Issued card: 66 terminal sessions that each read: the log stays at 64 entries.
    let read_emergency = hex("00CA020300");
    let mut ops = Vec::new();
    for i in 0..66u64 {
        ops.push(Op::Apdu(&select));
        ops.push(cert(0, role::CLINIC, CLINIC, b"clinic-st-mary"));
        ops.push(auth(NOW + i * 60));
        ops.push(Op::Apdu(&read_emergency));
    }
    let log = [verify_pin.clone(), hex("00CA0104000000")];
    ops.extend(apdus(&log));
    write(t, "issued_log_full", &encode_session(Start::Issued, &ops));

    // Personalised, not activated: authenticate, regenerate the key, authenticate the
    // chip, activate, read with the terminal's rights.
    let before = [select.clone(), hex("0047800000")];
    let after = [
        hex("00880000 20 0000000000000000000000000000000000000000000000000000000000000000 00"),
        hex(ACTIVATE),
        hex("00CA010100"),
        hex("00CA020000"),
        hex("00CA020300"),
    ];
    let mut ops = apdus(&before);
    ops.push(cert(2, role::CLINIC, CLINIC, b"clinic-st-mary"));
    ops.push(auth(NOW));
    ops.extend(apdus(&after));
    write(
        t,
        "personalised_activate",
        &encode_session(Start::Personalised, &ops),
    );

    // Blank card: the whole personalisation, then ACTIVATE.
    let mut steps = personalise_script();
    steps.push(hex(ACTIVATE));
    write(
        t,
        "blank_personalise",
        &encode_session(Start::Blank, &apdus(&steps)),
    );
}

fn terminal_cert_seeds() {
    let t = "terminal_cert";
    let spec = CertSpec {
        flags: 0,
        role: role::CLINIC,
        access: CLINIC,
        not_before: NOW - DAY,
        not_after: NOW + 30 * DAY,
        id: b"clinic-st-mary",
    };
    write(t, "clinic", &spec.certificate());
    let office = CertSpec {
        flags: 1,
        role: role::ISSUING_OFFICE,
        access: OFFICE,
        id: b"office-city-hall",
        ..spec.clone()
    };
    write(t, "office", &office.certificate());
    // Largest fields: a 32-byte id, 8-byte times, all access bits.
    let big = CertSpec {
        flags: 2,
        role: 0xFF,
        access: 0xFF,
        not_before: 1 << 32,
        not_after: u64::MAX,
        id: b"terminal-with-a-32-byte-long-id!",
    };
    write(t, "max_fields", &big.certificate());
    let forged = CertSpec {
        flags: CERT_FORGED,
        not_before: 0,
        not_after: 0,
        id: b"x",
        ..spec.clone()
    };
    write(t, "forged_zero_times", &forged.certificate());
    // Not canonical: a trailing byte.
    let mut trailing = spec.certificate();
    trailing.push(0);
    write(t, "trailing_byte", &trailing);
}

fn cbor_seeds() {
    let t = "cbor_decoders";
    let issuer = keys::generate();
    let card = keys::generate();
    let identity = Credential {
        version: 1,
        kind: Kind::Identity,
        card_id: "CIV-2026-0000-0001".into(),
        issuer_id: "identity-bureau".into(),
        issued_at: 1_790_000_000,
        expires_at: 2_100_000_000,
        status_index: 0,
        salt: [7; 16],
        claims: Claims::Identity(IdentityClaims {
            name: "Alice Example".into(),
            birth_date: "1990-04-12".into(),
            card_public_key: keys::public_key_bytes(card.verifying_key()).to_vec(),
        }),
    };
    let health = Credential {
        kind: Kind::Health,
        issuer_id: "health-bureau".into(),
        status_index: 3,
        claims: Claims::Health(HealthClaims {
            emergency: EmergencyInfo {
                blood_type: "A+".into(),
                allergies: vec!["penicillin".into()],
                emergency_contact: "Bob Example +86 10 5555 0100".into(),
            },
            chronic_conditions: vec!["asthma".into()],
            vaccinations: vec![Vaccination {
                name: "influenza".into(),
                date: "2026-10-01".into(),
            }],
        }),
        ..identity.clone()
    };
    let education = Credential {
        kind: Kind::Education,
        issuer_id: "education-bureau".into(),
        claims: Claims::Education(EducationClaims {
            degrees: vec![Degree {
                title: "BSc Computer Science".into(),
                institution: "City University".into(),
                year: 2012,
            }],
        }),
        ..identity.clone()
    };
    write(t, "credential_identity", &identity.encode());
    write(t, "credential_health", &health.encode());
    write(t, "credential_education", &education.encode());
    let emergency = Credential {
        kind: Kind::Emergency,
        issuer_id: "health-bureau".into(),
        claims: Claims::Emergency(EmergencyInfo {
            blood_type: "0-".into(),
            allergies: vec!["latex".into(), "penicillin".into()],
            emergency_contact: "Bob Example +86 10 5555 0100".into(),
        }),
        ..identity.clone()
    };
    write(t, "credential_emergency", &emergency.encode());

    let signed = SignedCredential::sign(&health, &issuer).expect("sign");
    write(t, "signed_credential", &signed.to_bytes());

    let leaves = [signed.commitment(), [1; 32], [2; 32], [3; 32], [4; 32]];
    let record = CardRecord {
        credential: signed,
        batch_id: 2,
        proof: merkle::prove(&leaves, 0).expect("proof"),
    };
    write(t, "card_record", &record.encode());

    let authority = keys::generate();
    let body = IssuerCertBody {
        issuer_id: "health-bureau".into(),
        name: "City Health Bureau".into(),
        kinds: vec![Kind::Health],
        public_key: keys::public_key_bytes(issuer.verifying_key()).to_vec(),
        not_before: 1_700_000_000,
        not_after: 2_200_000_000,
    };
    let cert = IssuerCertificate::sign(&body, &authority).expect("sign");
    write(t, "issuer_certificate", &cert.to_bytes());
}

fn main() {
    apdu_seeds();
    session_seeds();
    terminal_cert_seeds();
    cbor_seeds();
}
