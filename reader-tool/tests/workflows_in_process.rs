//! The three workflows end to end against the applet in this process (no pcscd): the same
//! bytes a PC/SC reader would carry, over both short and extended APDUs.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use civic_reader::apdu::ApduMode;
use civic_reader::office::{card_secret, IssuanceBook};
use civic_reader::session::{CardError, Pin, Session, WriteRecords};
use civic_reader::transport::InProcess;
use civic_reader::workflow::provision::{provision, Bureau, CitizenData, Office, Validity};
use civic_reader::workflow::scan::{scan, ChipCheck};
use civic_reader::workflow::view::view;
use civic_registry::cert::{IssuerCertBody, IssuerCertificate};
use civic_registry::credential::Kind;
use civic_registry::ledger::SqliteLedger;
use civic_registry::status::CredentialStatus;
use civic_registry::verdict::Verdict;
use civic_registry::{keys, Registry, SignedStatusChange, StatusChange};
use p256::ecdsa::SigningKey;

const NOW: u64 = 1_790_000_000;

struct World {
    registry: SqliteLedger,
    authority: SigningKey,
    bureaus: Vec<(IssuerCertBody, SigningKey)>,
    office_key: [u8; 32],
    book: IssuanceBook,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let authority = keys::generate();
    let mut registry = SqliteLedger::open_in_memory(&authority).unwrap();
    let mut bureaus = Vec::new();
    for (id, kind) in [
        ("identity-bureau", Kind::Identity),
        ("health-bureau", Kind::Health),
        ("education-bureau", Kind::Education),
    ] {
        let key = keys::generate();
        let body = IssuerCertBody {
            issuer_id: id.into(),
            name: format!("City {kind} bureau"),
            kinds: vec![kind],
            public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
            not_before: NOW - 86_400,
            not_after: NOW + 365 * 86_400,
        };
        registry
            .register_issuer(&IssuerCertificate::sign(&body, &authority).unwrap())
            .unwrap();
        bureaus.push((body, key));
    }
    let dir = tempfile::tempdir().unwrap();
    let book = IssuanceBook::open(&dir.path().join("office.sqlite")).unwrap();
    World {
        registry,
        authority,
        bureaus,
        office_key: [7; 32],
        book,
        _dir: dir,
    }
}

fn citizen() -> CitizenData {
    serde_json::from_str(include_str!("../../scripts/data/alice.json")).unwrap()
}

fn pin(s: &str) -> Pin {
    Pin::parse(s).unwrap()
}

fn provision_card(
    w: &mut World,
    card: &mut InProcess<card_applet::store::MemoryStore>,
    mode: ApduMode,
) {
    let office = Office {
        authority_public_key: keys::public_key_bytes(w.authority.verifying_key()),
        office_key: &w.office_key,
        book: &w.book,
        validity: Validity::default(),
    };
    let bureaus = &w.bureaus;
    let bureau_for = |k: Kind| {
        let (cert, key) = bureaus
            .iter()
            .find(|(c, _)| c.kinds.contains(&k))
            .expect("a bureau per kind");
        Ok(Bureau {
            cert: cert.clone(),
            key: key.clone(),
        })
    };
    let done = provision(
        card,
        mode,
        &mut w.registry,
        &office,
        &bureau_for,
        &citizen(),
        &pin("482913"),
        NOW,
    )
    .unwrap();
    assert_eq!(done.card_id, "CIV-2026-0000-0001");
    assert_eq!(done.credentials.len(), 3);
}

fn set_status(w: &mut World, kind: Kind, to: CredentialStatus) {
    let issued = w.book.find("CIV-2026-0000-0001", kind).unwrap().unwrap();
    let (_, key) = w
        .bureaus
        .iter()
        .find(|(c, _)| c.kinds.contains(&kind))
        .unwrap();
    let change = StatusChange {
        issuer_id: issued.issuer_id,
        status_index: issued.status_index,
        status: to,
    };
    w.registry
        .set_status(&SignedStatusChange::sign(&change, key).unwrap())
        .unwrap();
}

fn verdicts(r: &civic_reader::workflow::scan::ScanReport) -> Vec<(Kind, Verdict)> {
    r.credentials
        .iter()
        .map(|c| (c.kind.unwrap(), c.verdict))
        .collect()
}

fn whole_story(mode: ApduMode) {
    let mut w = world();
    let mut card = InProcess::blank();
    provision_card(&mut w, &mut card, mode);

    let r = scan(&mut card, mode, &w.registry, NOW + 60).unwrap();
    assert_eq!(r.chip, ChipCheck::Passed);
    assert!(r.valid, "{r:?}");
    assert_eq!(
        verdicts(&r),
        [
            (Kind::Identity, Verdict::Valid),
            (Kind::Health, Verdict::Valid),
            (Kind::Education, Verdict::Valid)
        ]
    );

    set_status(&mut w, Kind::Health, CredentialStatus::Revoked);
    let r = scan(&mut card, mode, &w.registry, NOW + 120).unwrap();
    assert!(!r.valid);
    assert_eq!(
        verdicts(&r),
        [
            (Kind::Identity, Verdict::Valid),
            (Kind::Health, Verdict::Revoked),
            (Kind::Education, Verdict::Valid)
        ]
    );

    let v = view(&mut card, mode, &w.registry, &pin("482913"), NOW + 180).unwrap();
    assert_eq!(v.credentials.len(), 3);
    assert_eq!(v.credentials[1].verdict, Verdict::Revoked);

    // Three wrong PINs block; the right PIN is then refused too.
    for left in [2u8, 1] {
        match view(&mut card, mode, &w.registry, &pin("000000"), NOW).map(drop) {
            Err(e) => assert!(
                matches!(e.downcast_ref::<CardError>(), Some(CardError::WrongPin(n)) if *n == left),
                "{e:#}"
            ),
            Ok(()) => panic!("a wrong PIN was accepted"),
        }
    }
    for p in ["000000", "482913"] {
        let e = view(&mut card, mode, &w.registry, &pin(p), NOW).unwrap_err();
        assert!(
            matches!(e.downcast_ref::<CardError>(), Some(CardError::PinBlocked)),
            "{e:#}"
        );
    }

    // The office unblocks with the card's office secret and a new PIN.
    let secret = card_secret(&w.office_key, "CIV-2026-0000-0001");
    let s = Session::open(&mut card, mode).unwrap();
    let mut office = s.office_login(secret.as_slice()).unwrap();
    office.reset_pin(&pin("246810")).unwrap();
    assert_eq!(office.pin_tries_left().unwrap(), 3);
    drop(office);
    view(&mut card, mode, &w.registry, &pin("246810"), NOW).unwrap();
}

#[test]
fn whole_story_over_extended_apdus() {
    whole_story(ApduMode::Extended);
}

#[test]
fn whole_story_over_short_apdus_with_chaining_and_get_response() {
    whole_story(ApduMode::Short);
}

#[test]
fn copied_card_with_its_own_key_scans_as_cloned() {
    let mut w = world();
    let mut original = InProcess::blank();
    provision_card(&mut w, &mut original, ApduMode::Extended);

    let mut s = Session::open(&mut original, ApduMode::Extended).unwrap();
    let authority = s.authority_key().unwrap();
    let records: Vec<_> = s
        .directory()
        .unwrap()
        .into_iter()
        .map(|e| (e.slot, e.kind, s.read_record(e.slot).unwrap()))
        .collect();

    let mut copy = InProcess::blank();
    let mut c = Session::open(&mut copy, ApduMode::Extended)
        .unwrap()
        .personalise()
        .unwrap();
    c.set_card_id("CIV-2026-0000-0001").unwrap();
    c.set_authority_key(&authority).unwrap();
    c.set_office_secret(&[1; 32]).unwrap();
    c.generate_key().unwrap();
    for (slot, kind, rec) in &records {
        c.write_record(*slot, *kind, rec).unwrap();
    }
    c.set_pin(&pin("000000")).unwrap();
    c.activate().unwrap();

    let r = scan(&mut copy, ApduMode::Extended, &w.registry, NOW).unwrap();
    assert!(!r.valid);
    // The copy signs with its own key, so chip authentication passes against that key;
    // the identity credential names the original's key: the registry says CLONED.
    assert_eq!(r.chip, ChipCheck::Passed);
    assert_eq!(r.credentials[0].verdict, Verdict::Cloned, "{r:?}");
    // Genuine health and education data on a copied card speak for nobody.
    assert!(
        r.credentials.iter().all(|c| c.verdict == Verdict::Cloned),
        "{r:?}"
    );
    assert!(r.problem.as_deref().unwrap().contains("copy"));
}

#[test]
fn provisioning_an_issued_card_or_a_reused_card_id_is_refused_and_changes_nothing() {
    let mut w = world();
    let mut card = InProcess::blank();
    provision_card(&mut w, &mut card, ApduMode::Extended);
    let before = w.registry.watermark().unwrap();
    let office = Office {
        authority_public_key: keys::public_key_bytes(w.authority.verifying_key()),
        office_key: &w.office_key,
        book: &w.book,
        validity: Validity::default(),
    };
    let bureaus = &w.bureaus;
    let bureau_for = |k: Kind| {
        let (cert, key) = bureaus.iter().find(|(c, _)| c.kinds.contains(&k)).unwrap();
        Ok(Bureau {
            cert: cert.clone(),
            key: key.clone(),
        })
    };
    // A second blank card with the same card number is refused before it is touched.
    let mut second = InProcess::blank();
    let e = provision(
        &mut second,
        ApduMode::Extended,
        &mut w.registry,
        &office,
        &bureau_for,
        &citizen(),
        &pin("111111"),
        NOW,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("already issued"), "{e:#}");
    assert_eq!(
        second.card.serialized_state(),
        InProcess::blank().card.serialized_state()
    );

    // An issued card is refused whatever the citizen file says.
    let mut other = citizen();
    other.card_id = Some("CIV-2026-0000-0002".into());
    let e = provision(
        &mut card,
        ApduMode::Extended,
        &mut w.registry,
        &office,
        &bureau_for,
        &other,
        &pin("111111"),
        NOW,
    )
    .unwrap_err();
    assert!(
        matches!(e.downcast_ref::<CardError>(), Some(CardError::NotBlank(_))),
        "{e:#}"
    );
    assert_eq!(w.registry.watermark().unwrap(), before, "nothing anchored");
}

#[test]
fn one_altered_byte_in_a_credential_on_the_card_scans_forged() {
    let mut w = world();
    let mut card = InProcess::blank();
    provision_card(&mut w, &mut card, ApduMode::Extended);

    // The office rewrites the health record with one byte of the claims flipped, as a
    // tamperer with write access would.
    let mut s = Session::open(&mut card, ApduMode::Extended).unwrap();
    let mut record = s.read_record(1).unwrap();
    let at = record
        .windows(b"penicillin".len())
        .position(|w| w == b"penicillin")
        .unwrap();
    record[at] ^= 0x20; // "Penicillin"
    let secret = card_secret(&w.office_key, "CIV-2026-0000-0001");
    let mut office = s.office_login(secret.as_slice()).unwrap();
    office
        .write_record(1, Kind::Health.as_byte(), &record)
        .unwrap();
    drop(office);

    let r = scan(&mut card, ApduMode::Extended, &w.registry, NOW).unwrap();
    assert!(!r.valid);
    assert_eq!(
        verdicts(&r),
        [
            (Kind::Identity, Verdict::Valid),
            (Kind::Health, Verdict::Forged),
            (Kind::Education, Verdict::Valid)
        ]
    );
}

#[test]
fn garbage_in_a_slot_scans_forged_and_the_rest_still_verifies() {
    let mut w = world();
    let mut card = InProcess::blank();
    provision_card(&mut w, &mut card, ApduMode::Extended);
    let secret = card_secret(&w.office_key, "CIV-2026-0000-0001");
    let s = Session::open(&mut card, ApduMode::Extended).unwrap();
    let mut office = s.office_login(secret.as_slice()).unwrap();
    office
        .write_record(2, Kind::Education.as_byte(), b"\xa1\x61x\x00not a record")
        .unwrap();
    drop(office);
    let r = scan(&mut card, ApduMode::Extended, &w.registry, NOW).unwrap();
    assert_eq!(r.credentials[2].verdict, Verdict::Forged);
    assert!(r.credentials[2].reason.contains("malformed"), "{r:?}");
    assert_eq!(r.credentials[0].verdict, Verdict::Valid);
}

#[test]
fn health_credential_scans_expired_after_its_validity() {
    let mut w = world();
    let mut card = InProcess::blank();
    provision_card(&mut w, &mut card, ApduMode::Extended);
    let later = NOW + Validity::default().health_days * 86_400 + 1;
    let r = scan(&mut card, ApduMode::Extended, &w.registry, later).unwrap();
    assert_eq!(r.credentials[1].verdict, Verdict::Expired, "{r:?}");
    assert_eq!(r.credentials[0].verdict, Verdict::Valid);
}

#[test]
fn suspended_then_reinstated_credential_scans_valid_again() {
    let mut w = world();
    let mut card = InProcess::blank();
    provision_card(&mut w, &mut card, ApduMode::Extended);
    set_status(&mut w, Kind::Education, CredentialStatus::Suspended);
    let r = scan(&mut card, ApduMode::Extended, &w.registry, NOW).unwrap();
    assert_eq!(r.credentials[2].verdict, Verdict::Suspended);
    set_status(&mut w, Kind::Education, CredentialStatus::Valid);
    let r = scan(&mut card, ApduMode::Extended, &w.registry, NOW).unwrap();
    assert!(r.valid, "{r:?}");
}

#[test]
fn office_write_without_the_office_secret_is_refused_and_changes_nothing() {
    let mut w = world();
    let mut card = InProcess::blank();
    provision_card(&mut w, &mut card, ApduMode::Extended);
    let before = card.card.serialized_state();
    let s = Session::open(&mut card, ApduMode::Extended).unwrap();
    let e = s.office_login(&[0u8; 32]).unwrap_err();
    assert_eq!(
        e.status(),
        Some(card_applet::protocol::Status::SecurityNotSatisfied)
    );
    assert_eq!(card.card.serialized_state(), before);
}
