//! Writes the seed corpora into `corpus-seeds/<target>/` (run from `fuzz/`):
//!
//!     cargo run --example make_seeds
//!
//! APDU and session seeds are fixed bytes; the CBOR seeds are real objects made with the
//! registry's own API (fresh keys each run, so their bytes differ between runs).

use std::fs;
use std::path::Path;

use civic_fuzz::{
    encode_session, hex, personalise_script, Op, Start, ACTIVATE, OFFICE_SECRET, PIN, SELECT,
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
}

fn session_seeds() {
    let t = "applet_session";
    let select = hex(SELECT);
    let verify_office = hex(&format!("0020008220 {OFFICE_SECRET}"));

    // Issued card: card info, directory, slot 0 via short Le + GET RESPONSE, extended read.
    let steps = [
        select.clone(),
        hex("00CA010100"),
        hex("00CA010300"),
        hex("00CA020000"),
        hex("00C0000000"),
        hex("00CA0201000000"),
        hex("0047810000"),
    ];
    let ops: Vec<Op> = steps.iter().map(|a| Op::Apdu(a)).collect();
    write(t, "issued_reads", &encode_session(Start::Issued, &ops));

    // Issued card: office secret, a chained PUT DATA of a 600-byte record, read it back
    // with short APDUs (61xx / GET RESPONSE), power cycle, read again.
    let mut body = hex("800102 81 82 0258");
    body.extend((0..600u16).map(|i| i as u8));
    let (a, b) = body.split_at(250);
    let mut link1 = hex("10DA0203");
    link1.push(a.len() as u8);
    link1.extend_from_slice(a);
    let (b1, b2) = b.split_at(250);
    let mut link2 = hex("10DA0203");
    link2.push(b1.len() as u8);
    link2.extend_from_slice(b1);
    let mut link3 = hex("00DA0203");
    link3.push(b2.len() as u8);
    link3.extend_from_slice(b2);
    let steps = [
        select.clone(),
        verify_office.clone(),
        link1,
        link2,
        link3,
        hex("00CA020300"),
        hex("00C0000000"),
        hex("00C0000000"),
    ];
    let mut ops: Vec<Op> = steps.iter().map(|a| Op::Apdu(a)).collect();
    ops.push(Op::Reset);
    let again = [select.clone(), hex("00CA0203000000")];
    ops.extend(again.iter().map(|a| Op::Apdu(a)));
    write(
        t,
        "issued_chained_put",
        &encode_session(Start::Issued, &ops),
    );

    // Issued card: PIN tries down to blocked, office unblocks, PIN verified, PIN changed,
    // chip authentication.
    let steps = [
        select.clone(),
        hex("0020008106 393939393939"),
        hex("0020008106 393939393939"),
        hex("00200081"),
        hex("0020008106 393939393939"),
        hex(&format!("0020008106 {PIN}")),
        verify_office,
        hex("002C0381"),
        hex(&format!("0020008106 {PIN}")),
        hex(&format!("002400810C {PIN} 363534333231")),
        hex("00880000 10 000102030405060708090A0B0C0D0E0F 00"),
    ];
    let ops: Vec<Op> = steps.iter().map(|a| Op::Apdu(a)).collect();
    write(t, "issued_pin_story", &encode_session(Start::Issued, &ops));

    // Personalised, not activated: regenerate the key, authenticate, activate.
    let steps = [
        select.clone(),
        hex("0047800000"),
        hex("00880000 20 0000000000000000000000000000000000000000000000000000000000000000 00"),
        hex(ACTIVATE),
        hex("00CA010100"),
    ];
    let ops: Vec<Op> = steps.iter().map(|a| Op::Apdu(a)).collect();
    write(
        t,
        "personalised_activate",
        &encode_session(Start::Personalised, &ops),
    );

    // Blank card: the whole personalisation, then ACTIVATE.
    let mut steps = personalise_script();
    steps.push(hex(ACTIVATE));
    let ops: Vec<Op> = steps.iter().map(|a| Op::Apdu(a)).collect();
    write(t, "blank_personalise", &encode_session(Start::Blank, &ops));
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
    cbor_seeds();
}
