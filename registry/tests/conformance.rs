//! The registry conformance suite: one generic suite that every backend must pass.
//!
//! A new backend (the EVM one) adds one `#[test]` calling [`conformance_suite`] with its
//! constructor. Block times are the real clock, so certificates here are valid around "now".

#![allow(clippy::unwrap_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use civic_registry::keys::{self, SigningKey};
use civic_registry::verdict::assess_bytes;
use civic_registry::*;

const YEAR: u64 = 365 * 24 * 3600;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn cert(
    authority: &SigningKey,
    id: &str,
    kinds: &[Kind],
    key: &SigningKey,
    not_before: u64,
    not_after: u64,
) -> IssuerCertificate {
    IssuerCertificate::sign(
        &IssuerCertBody {
            issuer_id: id.into(),
            name: format!("{id} bureau"),
            kinds: kinds.to_vec(),
            public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
            not_before,
            not_after,
        },
        authority,
    )
    .unwrap()
}

fn identity(issuer: &str, card: &str, card_key: &[u8; 65], index: u32, t: u64) -> Credential {
    Credential {
        version: 1,
        kind: Kind::Identity,
        card_id: card.into(),
        issuer_id: issuer.into(),
        issued_at: t - 100,
        expires_at: t + 5 * YEAR,
        status_index: index,
        salt: Credential::new_salt(),
        claims: Claims::Identity(IdentityClaims {
            name: "Li Wei".into(),
            birth_date: "1990-01-02".into(),
            card_public_key: card_key.to_vec(),
        }),
    }
}

fn health(issuer: &str, card: &str, index: u32, t: u64) -> Credential {
    Credential {
        version: 1,
        kind: Kind::Health,
        card_id: card.into(),
        issuer_id: issuer.into(),
        issued_at: t - 100,
        expires_at: t + YEAR,
        status_index: index,
        salt: Credential::new_salt(),
        claims: Claims::Health(HealthClaims {
            emergency: EmergencyInfo {
                blood_type: "AB-".into(),
                allergies: vec!["penicillin".into()],
                emergency_contact: "Zhang Min +86 10 5555 0100".into(),
            },
            chronic_conditions: vec!["asthma".into()],
            vaccinations: vec![Vaccination {
                name: "MMR".into(),
                date: "1991-06-01".into(),
            }],
        }),
    }
}

fn education(issuer: &str, card: &str, index: u32, issued_at: u64) -> Credential {
    Credential {
        version: 1,
        kind: Kind::Education,
        card_id: card.into(),
        issuer_id: issuer.into(),
        issued_at,
        expires_at: issued_at + 50 * YEAR,
        status_index: index,
        salt: Credential::new_salt(),
        claims: Claims::Education(EducationClaims {
            degrees: vec![Degree {
                title: "BSc Physics".into(),
                institution: "Peking University".into(),
                year: 2012,
            }],
        }),
    }
}

fn anchor_request(issuer: &str, leaves: &[[u8; 32]], first: u32, count: u32) -> AnchorRequest {
    AnchorRequest {
        issuer_id: issuer.into(),
        root: merkle::root(leaves),
        size: leaves.len() as u64,
        first_status_index: first,
        status_count: count,
    }
}

/// Sign `creds` with `key`, anchor them as one batch covering their status indices, and return
/// the card records.
fn issue<R: Registry>(reg: &mut R, key: &SigningKey, creds: &[Credential]) -> Vec<CardRecord> {
    let signed: Vec<SignedCredential> = creds
        .iter()
        .map(|c| SignedCredential::sign(c, key).unwrap())
        .collect();
    let leaves: Vec<[u8; 32]> = signed.iter().map(|s| s.commitment()).collect();
    let first = creds.iter().map(|c| c.status_index).min().unwrap();
    let last = creds.iter().map(|c| c.status_index).max().unwrap();
    let req = anchor_request(&creds[0].issuer_id, &leaves, first, last - first + 1);
    let batch = reg
        .anchor_batch(&SignedAnchor::sign(&req, key).unwrap())
        .unwrap();
    assert_eq!(batch.root, req.root);
    assert_eq!(batch.size, leaves.len() as u64);
    assert_eq!(reg.batch(batch.batch_id).unwrap().as_ref(), Some(&batch));
    signed
        .into_iter()
        .enumerate()
        .map(|(i, credential)| CardRecord {
            credential,
            batch_id: batch.batch_id,
            proof: merkle::prove(&leaves, i).unwrap(),
        })
        .collect()
}

fn set<R: Registry>(
    reg: &mut R,
    key: &SigningKey,
    issuer: &str,
    index: u32,
    status: CredentialStatus,
) -> Result<Watermark> {
    let change = StatusChange {
        issuer_id: issuer.into(),
        status_index: index,
        status,
    };
    reg.set_status(&SignedStatusChange::sign(&change, key).unwrap())
}

#[track_caller]
fn expect<R: Registry>(
    reg: &R,
    record: &CardRecord,
    evidence: Option<&CardEvidence>,
    now: u64,
    want: Verdict,
) -> VerdictReport {
    // Through the wire format too, as a reader sees it.
    let record = CardRecord::decode(&record.encode()).unwrap();
    let r = reg.verdict(&record, evidence, now).unwrap();
    assert_eq!(r.verdict, want, "{}", r.reason);
    assert!(!r.reason.is_empty());
    assert_eq!(r.watermark, reg.watermark().unwrap());
    r
}

/// Replace the first occurrence of `from` by `to` (same length) in `bytes`.
fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let pos = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = bytes.to_vec();
    out[pos..pos + to.len()].copy_from_slice(to);
    out
}

pub fn conformance_suite<R: Registry>(make: impl Fn(&SigningKey) -> R) {
    let t = now();
    let authority = keys::generate();
    let mut reg = make(&authority);
    assert_eq!(&reg.authority_key().unwrap(), authority.verifying_key());
    let genesis = reg.watermark().unwrap();

    // --- issuers ------------------------------------------------------------------------------
    let id_key = keys::generate();
    let health_key = keys::generate();
    let edu_key = keys::generate();
    let id_cert = cert(
        &authority,
        "id-bureau",
        &[Kind::Identity],
        &id_key,
        t - 10 * YEAR,
        t + 10 * YEAR,
    );
    let health_cert = cert(
        &authority,
        "health",
        &[Kind::Health],
        &health_key,
        t - 10 * YEAR,
        t + 10 * YEAR,
    );
    // The education bureau's certificate only started 1000 s ago.
    let edu_cert = cert(
        &authority,
        "edu",
        &[Kind::Education],
        &edu_key,
        t - 1000,
        t + 10 * YEAR,
    );
    let wm1 = reg.register_issuer(&id_cert).unwrap();
    assert!(wm1.height > genesis.height);
    reg.register_issuer(&health_cert).unwrap();
    reg.register_issuer(&edu_cert).unwrap();
    assert!(matches!(
        reg.register_issuer(&health_cert),
        Err(Error::Conflict(_))
    ));
    // Same id, same key, new certificate: not a rotation.
    let same_key = cert(
        &authority,
        "health",
        &[Kind::Health, Kind::Education],
        &health_key,
        t - YEAR,
        t + YEAR,
    );
    assert!(matches!(
        reg.register_issuer(&same_key),
        Err(Error::Conflict(_))
    ));
    // Signed by someone else than the authority.
    let rogue = keys::generate();
    let fake = cert(&rogue, "rogue", &[Kind::Identity], &rogue, 0, u64::MAX);
    assert!(matches!(
        reg.register_issuer(&fake),
        Err(Error::BadSignature(_))
    ));
    assert!(reg.issuer_certs("rogue").unwrap().is_empty());
    let certs = reg.issuer_certs("health").unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].cert, health_cert);
    assert_eq!(certs[0].body.kinds, vec![Kind::Health]);
    assert_eq!(reg.issuers().unwrap().len(), 3);

    // --- issuing ------------------------------------------------------------------------------
    let card_key = keys::generate();
    let card_pk = keys::public_key_bytes(card_key.verifying_key());
    assert_eq!(reg.next_status_index("id-bureau").unwrap(), 0);
    let id_records = issue(
        &mut reg,
        &id_key,
        &[identity("id-bureau", "CARD-1", &card_pk, 0, t)],
    );
    assert_eq!(id_records[0].batch_id, 1, "batch ids start at 1");
    assert_eq!(reg.next_status_index("id-bureau").unwrap(), 1);

    let mut expired = health("health", "CARD-1", 3, t);
    expired.expires_at = t - 1;
    let h = issue(
        &mut reg,
        &health_key,
        &[
            health("health", "CARD-1", 0, t),
            health("health", "CARD-1", 1, t),
            health("health", "CARD-1", 2, t),
            expired,
        ],
    );
    assert_eq!(h[0].batch_id, 2);
    assert_eq!(reg.next_status_index("health").unwrap(), 4);
    let h2 = issue(
        &mut reg,
        &health_key,
        &[
            health("health", "CARD-9", 4, t),
            health("health", "CARD-9", 5, t),
        ],
    );
    assert_eq!(h2[0].batch_id, 3);
    assert_eq!(reg.next_status_index("health").unwrap(), 6);

    // --- anchoring rules ----------------------------------------------------------------------
    let leaves = [[7u8; 32]];
    for (first, count) in [(0, 1), (3, 2), (5, 10), (0, 100)] {
        let req = anchor_request("health", &leaves, first, count);
        assert!(
            matches!(
                reg.anchor_batch(&SignedAnchor::sign(&req, &health_key).unwrap()),
                Err(Error::Conflict(_))
            ),
            "overlapping anchor {first}+{count} accepted"
        );
    }
    // The same range is fine for another issuer (status lists are per issuer).
    let req = anchor_request("edu", &leaves, 0, 1);
    let edu_batch = reg
        .anchor_batch(&SignedAnchor::sign(&req, &edu_key).unwrap())
        .unwrap();
    assert_eq!(edu_batch.batch_id, 4);
    // An anchor signed by another issuer's key, and one for an unknown issuer.
    let req = anchor_request("health", &leaves, 100, 1);
    assert!(reg
        .anchor_batch(&SignedAnchor::sign(&req, &edu_key).unwrap())
        .is_err());
    let req = anchor_request("ghost", &leaves, 0, 1);
    assert!(reg
        .anchor_batch(&SignedAnchor::sign(&req, &rogue).unwrap())
        .is_err());
    let req = anchor_request("health", &leaves, u32::MAX, 2);
    assert!(reg
        .anchor_batch(&SignedAnchor::sign(&req, &health_key).unwrap())
        .is_err());
    assert_eq!(reg.batch(5).unwrap(), None);

    // --- Valid --------------------------------------------------------------------------------
    let card1 = CardEvidence {
        card_id: "CARD-1".into(),
        chip_key: card_pk,
    };
    let r = expect(&reg, &id_records[0], Some(&card1), t, Verdict::Valid);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["verdict"], "valid");
    assert_eq!(json["credential"]["kind"], "identity");
    assert_eq!(json["watermark"]["block_hash"].as_str().unwrap().len(), 64);
    assert_eq!(json["credential"]["salt"].as_str().unwrap().len(), 32);
    assert_eq!(r.credential.unwrap().card_id, "CARD-1");
    assert!(Verdict::Valid.is_valid() && Verdict::Valid.label() == "VALID");
    expect(&reg, &h[0], None, t, Verdict::Valid);
    expect(&reg, &h[0], Some(&card1), t, Verdict::Valid);
    expect(&reg, &h2[1], None, t, Verdict::Valid);

    // --- Revoked, Suspended, reinstated -------------------------------------------------------
    set(
        &mut reg,
        &health_key,
        "health",
        1,
        CredentialStatus::Revoked,
    )
    .unwrap();
    expect(&reg, &h[1], None, t, Verdict::Revoked);
    assert_eq!(reg.status("health", 1).unwrap(), CredentialStatus::Revoked);
    let suspend = StatusChange {
        issuer_id: "health".into(),
        status_index: 2,
        status: CredentialStatus::Suspended,
    };
    let signed_suspend = SignedStatusChange::sign(&suspend, &health_key).unwrap();
    reg.set_status(&signed_suspend).unwrap();
    expect(&reg, &h[2], None, t, Verdict::Suspended);
    set(&mut reg, &health_key, "health", 2, CredentialStatus::Valid).unwrap();
    expect(&reg, &h[2], None, t, Verdict::Valid);
    // A recorded request cannot be replayed to suspend it again...
    assert!(matches!(
        reg.set_status(&signed_suspend),
        Err(Error::Conflict(_))
    ));
    expect(&reg, &h[2], None, t, Verdict::Valid);
    // ...but a fresh request can.
    set(
        &mut reg,
        &health_key,
        "health",
        2,
        CredentialStatus::Suspended,
    )
    .unwrap();
    expect(&reg, &h[2], None, t, Verdict::Suspended);
    set(&mut reg, &health_key, "health", 2, CredentialStatus::Valid).unwrap();
    expect(&reg, &h[0], None, t, Verdict::Valid);

    // Status changes by someone who is not the issuer, or for indices never anchored.
    assert!(set(&mut reg, &edu_key, "health", 0, CredentialStatus::Revoked).is_err());
    assert!(set(&mut reg, &rogue, "health", 0, CredentialStatus::Revoked).is_err());
    assert!(set(&mut reg, &edu_key, "edu", 3, CredentialStatus::Revoked).is_err());
    assert!(set(
        &mut reg,
        &health_key,
        "health",
        6,
        CredentialStatus::Revoked
    )
    .is_err());
    assert!(set(&mut reg, &rogue, "ghost", 0, CredentialStatus::Revoked).is_err());
    assert_eq!(reg.status("health", 0).unwrap(), CredentialStatus::Valid);
    expect(&reg, &h[0], None, t, Verdict::Valid);

    // --- Expired ------------------------------------------------------------------------------
    expect(&reg, &h[3], None, t, Verdict::Expired);
    expect(&reg, &h[0], None, t + 2 * YEAR, Verdict::Expired);
    // Revocation is reported before expiry.
    expect(&reg, &h[1], None, t + 2 * YEAR, Verdict::Revoked);

    // --- UnknownIssuer ------------------------------------------------------------------------
    let ghost = SignedCredential::sign(&health("ghost", "CARD-1", 0, t), &rogue).unwrap();
    let rec = CardRecord {
        credential: ghost,
        ..h[0].clone()
    };
    expect(&reg, &rec, None, t, Verdict::UnknownIssuer);

    // --- IssuerNotAuthorised ------------------------------------------------------------------
    // Kind: the health bureau signs an education credential.
    let wrong_kind =
        SignedCredential::sign(&education("health", "CARD-1", 0, t - 100), &health_key).unwrap();
    let rec = CardRecord {
        credential: wrong_kind,
        ..h[0].clone()
    };
    expect(&reg, &rec, None, t, Verdict::IssuerNotAuthorised);
    // Window: the education bureau "issued" it before its certificate started.
    let early = education("edu", "CARD-1", 0, t - 5000);
    let early_signed = SignedCredential::sign(&early, &edu_key).unwrap();
    let rec = CardRecord {
        credential: early_signed.clone(),
        batch_id: edu_batch.batch_id,
        proof: merkle::prove(&[early_signed.commitment()], 0).unwrap(),
    };
    expect(&reg, &rec, None, t, Verdict::IssuerNotAuthorised);

    // --- NotAnchored --------------------------------------------------------------------------
    // Wrong root: claims a batch of the same issuer that does not hold it.
    let rec = CardRecord {
        batch_id: h2[0].batch_id,
        ..h[0].clone()
    };
    expect(&reg, &rec, None, t, Verdict::NotAnchored);
    // Altered proof.
    let mut rec = h[0].clone();
    rec.proof.path[0][5] ^= 0x20;
    expect(&reg, &rec, None, t, Verdict::NotAnchored);
    let mut rec = h[0].clone();
    rec.proof.leaf_index = 1;
    expect(&reg, &rec, None, t, Verdict::NotAnchored);
    let mut rec = h[0].clone();
    rec.proof.tree_size = 5;
    expect(&reg, &rec, None, t, Verdict::NotAnchored);
    // Another issuer's batch, even with a proof that reaches its root.
    let rec = CardRecord {
        batch_id: id_records[0].batch_id,
        ..h[0].clone()
    };
    expect(&reg, &rec, None, t, Verdict::NotAnchored);
    // A batch that does not exist.
    let rec = CardRecord {
        batch_id: 999,
        ..h[0].clone()
    };
    expect(&reg, &rec, None, t, Verdict::NotAnchored);
    // Signed but never anchored: a batch of one that the issuer never submitted.
    let lone = SignedCredential::sign(&health("health", "CARD-1", 0, t), &health_key).unwrap();
    let rec = CardRecord {
        credential: lone.clone(),
        batch_id: h[0].batch_id,
        proof: merkle::prove(&[lone.commitment()], 0).unwrap(),
    };
    expect(&reg, &rec, None, t, Verdict::NotAnchored);
    // Status index outside the batch's range (index 4 is in batch 3, not batch 2).
    let outside = health("health", "CARD-1", 4, t);
    let batch_two: Vec<[u8; 32]> = h.iter().map(|r| r.credential.commitment()).collect();
    let outside_signed = SignedCredential::sign(&outside, &health_key).unwrap();
    let mut leaves2 = batch_two.clone();
    leaves2[0] = outside_signed.commitment();
    let rec = CardRecord {
        credential: outside_signed,
        batch_id: h[0].batch_id,
        proof: merkle::prove(&leaves2, 0).unwrap(),
    };
    expect(&reg, &rec, None, t, Verdict::NotAnchored);

    // --- Forged -------------------------------------------------------------------------------
    // One altered byte in the payload (the name).
    let bytes = id_records[0].credential.to_bytes();
    let altered = patch(&bytes, b"Li Wei", b"Li Wen");
    let rec = CardRecord {
        credential: SignedCredential::from_bytes(&altered).unwrap(),
        ..id_records[0].clone()
    };
    let r = expect(&reg, &rec, Some(&card1), t, Verdict::Forged);
    assert!(r.credential.is_some());
    // A signature by another key.
    let other = SignedCredential::sign(&health("health", "CARD-1", 0, t), &rogue).unwrap();
    let rec = CardRecord {
        credential: other,
        ..h[0].clone()
    };
    expect(&reg, &rec, None, t, Verdict::Forged);
    // A valid COSE_Sign1 around garbage.
    let payload = h[0].credential.payload_bytes().to_vec();
    let garbage = patch(
        &h[0].credential.to_bytes(),
        &payload,
        &vec![0xff; payload.len()],
    );
    let rec = CardRecord {
        credential: SignedCredential::from_bytes(&garbage).unwrap(),
        ..h[0].clone()
    };
    let r = expect(&reg, &rec, None, t, Verdict::Forged);
    assert!(r.credential.is_none());
    // Garbage bytes for a whole record.
    for junk in [&b""[..], b"garbage", &[0xd2, 0x84, 0x40], &[0xa0]] {
        let r = assess_bytes(&reg, junk, None, t).unwrap();
        assert_eq!(r.verdict, Verdict::Forged);
    }
    let r = assess_bytes(&reg, &h[0].encode(), None, t).unwrap();
    assert_eq!(r.verdict, Verdict::Valid);

    // --- Cloned -------------------------------------------------------------------------------
    let other_card = CardEvidence {
        card_id: "CARD-2".into(),
        chip_key: card_pk,
    };
    expect(&reg, &id_records[0], Some(&other_card), t, Verdict::Cloned);
    expect(&reg, &h[0], Some(&other_card), t, Verdict::Cloned);
    let copied_chip = CardEvidence {
        card_id: "CARD-1".into(),
        chip_key: keys::public_key_bytes(keys::generate().verifying_key()),
    };
    expect(&reg, &id_records[0], Some(&copied_chip), t, Verdict::Cloned);
    // Health credentials do not carry the chip key: only the card id is compared.
    expect(&reg, &h[0], Some(&copied_chip), t, Verdict::Valid);

    // --- key rotation -------------------------------------------------------------------------
    let health_key2 = keys::generate();
    let rotated = cert(
        &authority,
        "health",
        &[Kind::Health],
        &health_key2,
        t - 500,
        t + 10 * YEAR,
    );
    reg.register_issuer(&rotated).unwrap();
    assert_eq!(reg.issuer_certs("health").unwrap().len(), 2);
    // Old credentials stay valid.
    expect(&reg, &h[0], None, t, Verdict::Valid);
    // New credentials under the new key.
    let h3 = issue(&mut reg, &health_key2, &[health("health", "CARD-1", 10, t)]);
    expect(&reg, &h3[0], None, t, Verdict::Valid);
    set(&mut reg, &health_key2, "health", 1, CredentialStatus::Valid).unwrap();
    expect(&reg, &h[1], None, t, Verdict::Valid);
    // The new key cannot back-date a credential to before its certificate.
    let mut backdated = health("health", "CARD-1", 10, t);
    backdated.issued_at = t - 2000;
    let bd = SignedCredential::sign(&backdated, &health_key2).unwrap();
    let rec = CardRecord {
        credential: bd.clone(),
        batch_id: h3[0].batch_id,
        proof: merkle::prove(&[bd.commitment()], 0).unwrap(),
    };
    expect(&reg, &rec, None, t, Verdict::Forged);

    // --- key retirement -----------------------------------------------------------------------
    // The old health key (rotated out above) turns out to have been copied. The compromise time
    // T lies just after every anchor so far, so everything issued until now stays valid.
    let old_pk = keys::public_key_bytes(health_key.verifying_key()).to_vec();
    let cut = reg.watermark().unwrap().time.max(now()) + 1;
    // Before anyone notices: the thief signs a credential dated after T...
    let mut late = health("health", "CARD-1", 20, t);
    late.issued_at = cut + 5;
    let late = issue(&mut reg, &health_key, &[late]);
    // ...and, once the clock has passed T, one backdated to before T, anchored after T.
    while now() < cut {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let backdated = issue(&mut reg, &health_key, &[health("health", "CARD-7", 21, t)]);
    assert!(
        backdated[0]
            .credential
            .credential_unverified()
            .unwrap()
            .issued_at
            < cut
    );
    assert!(
        reg.batch(backdated[0].batch_id)
            .unwrap()
            .unwrap()
            .anchored_at
            >= cut
    );
    expect(&reg, &backdated[0], None, t, Verdict::Valid);
    assert!(reg.retired_keys("health").unwrap().is_empty());

    let retirement = |issuer: &str, pk: &[u8], from: u64, by: &SigningKey| {
        KeyRetirement::sign(
            &KeyRetirementBody {
                issuer_id: issuer.into(),
                public_key: pk.to_vec(),
                from,
                reason: "key copied from a stolen laptop".into(),
            },
            by,
        )
        .unwrap()
    };
    // Refused: an unknown issuer, a key the issuer never had, a statement not by the authority.
    assert!(matches!(
        reg.retire_issuer_key(&retirement("ghost", &old_pk, cut, &authority)),
        Err(Error::UnknownIssuer(_))
    ));
    let edu_pk = keys::public_key_bytes(edu_key.verifying_key());
    assert!(matches!(
        reg.retire_issuer_key(&retirement("health", &edu_pk, cut, &authority)),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        reg.retire_issuer_key(&retirement("health", &old_pk, cut, &health_key2)),
        Err(Error::BadSignature(_))
    ));
    assert!(reg.retired_keys("health").unwrap().is_empty());

    let wm = reg
        .retire_issuer_key(&retirement("health", &old_pk, cut, &authority))
        .unwrap();
    let retired = reg.retired_keys("health").unwrap();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].body.public_key, old_pk);
    assert_eq!(retired[0].body.from, cut);
    assert_eq!(retired[0].recorded_at, wm);
    let new_pk = keys::public_key_bytes(health_key2.verifying_key());
    assert_eq!(reg.retirement("health", &new_pk).unwrap(), None);
    assert!(reg.retired_keys("edu").unwrap().is_empty());

    // Issued and anchored before T: still valid (and revocation still reported as such).
    expect(&reg, &h[0], None, t, Verdict::Valid);
    expect(&reg, &h2[1], None, t, Verdict::Valid);
    set(
        &mut reg,
        &health_key2,
        "health",
        5,
        CredentialStatus::Revoked,
    )
    .unwrap();
    expect(&reg, &h2[1], None, t, Verdict::Revoked);
    // Dated after T.
    let r = expect(&reg, &late[0], None, t, Verdict::IssuerKeyRetired);
    assert!(r.reason.contains("stolen laptop"), "{}", r.reason);
    assert_eq!(
        serde_json::to_value(&r).unwrap()["verdict"],
        "issuer_key_retired"
    );
    assert_eq!(Verdict::IssuerKeyRetired.label(), "ISSUER KEY RETIRED");
    assert!(!Verdict::IssuerKeyRetired.is_valid());
    // Backdated to before T, but anchored after T.
    let r = expect(&reg, &backdated[0], None, t, Verdict::IssuerKeyRetired);
    assert!(r.reason.contains("anchored"), "{}", r.reason);
    // The new key is untouched: its credentials stay valid and it keeps issuing.
    expect(&reg, &h3[0], None, t, Verdict::Valid);
    let h4 = issue(&mut reg, &health_key2, &[health("health", "CARD-1", 22, t)]);
    expect(&reg, &h4[0], None, t, Verdict::Valid);
    // The retired key signs nothing more for the registry.
    assert!(matches!(
        set(
            &mut reg,
            &health_key,
            "health",
            0,
            CredentialStatus::Revoked
        ),
        Err(Error::NotAuthorised(_))
    ));
    let req = anchor_request("health", &leaves, 30, 1);
    assert!(matches!(
        reg.anchor_batch(&SignedAnchor::sign(&req, &health_key).unwrap()),
        Err(Error::NotAuthorised(_))
    ));
    expect(&reg, &h[0], None, t, Verdict::Valid);

    // A retirement only moves earlier: the same or a later time is refused...
    for from in [cut, cut + 1000] {
        assert!(matches!(
            reg.retire_issuer_key(&retirement("health", &old_pk, from, &authority)),
            Err(Error::Conflict(_))
        ));
    }
    assert_eq!(reg.retired_keys("health").unwrap()[0].body.from, cut);
    // ...an earlier one is recorded: now everything anchored with that key after t - 50 falls.
    let wm2 = reg
        .retire_issuer_key(&retirement("health", &old_pk, t - 50, &authority))
        .unwrap();
    let retired = reg.retired_keys("health").unwrap();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].body.from, t - 50);
    assert_eq!(retired[0].recorded_at, wm2);
    expect(&reg, &h[0], None, t, Verdict::IssuerKeyRetired);
    expect(&reg, &h3[0], None, t, Verdict::Valid);
    expect(&reg, &h4[0], None, t, Verdict::Valid);

    // --- the whole chain ----------------------------------------------------------------------
    let report = reg.verify_chain().unwrap();
    assert_eq!(report.head, reg.watermark().unwrap());
    assert_eq!(report.blocks, report.head.height + 1);
    assert_eq!(report.issuers, 3);
    assert_eq!(report.batches, 8);
    assert_eq!(report.status_changes, 7);
    assert_eq!(report.retired_keys, 1);
}

/// Status batches: one issuer-signed request, one block, all changes or none.
pub fn status_batch_suite<R: Registry>(make: impl Fn(&SigningKey) -> R) {
    let t = now();
    let authority = keys::generate();
    let mut reg = make(&authority);
    let health_key = keys::generate();
    let edu_key = keys::generate();
    reg.register_issuer(&cert(
        &authority,
        "health",
        &[Kind::Health],
        &health_key,
        t - YEAR,
        t + YEAR,
    ))
    .unwrap();
    reg.register_issuer(&cert(
        &authority,
        "edu",
        &[Kind::Education],
        &edu_key,
        t - YEAR,
        t + YEAR,
    ))
    .unwrap();
    // health anchors indices 0..10 and 20..30; edu anchors 0..10.
    for (issuer, key, first) in [
        ("health", &health_key, 0),
        ("health", &health_key, 20),
        ("edu", &edu_key, 0),
    ] {
        let leaves = [[first as u8 + 1; 32], [first as u8 + 2; 32]];
        reg.anchor_batch(
            &SignedAnchor::sign(&anchor_request(issuer, &leaves, first, 10), key).unwrap(),
        )
        .unwrap();
    }
    let sign = |issuer: &str, changes: &[(u32, CredentialStatus)], key: &SigningKey| {
        SignedStatusBatch::sign(
            &StatusBatch {
                issuer_id: issuer.into(),
                changes: changes.to_vec(),
            },
            key,
        )
        .unwrap()
    };
    let snapshot = |reg: &R| -> Vec<CredentialStatus> {
        (0..30)
            .map(|i| reg.status("health", i).unwrap())
            .chain((0..10).map(|i| reg.status("edu", i).unwrap()))
            .collect()
    };
    use CredentialStatus::{Revoked, Suspended, Valid};

    // One batch, one block, every change applied (across both of the issuer's ranges).
    let before = reg.watermark().unwrap();
    let good = sign(
        "health",
        &[(3, Revoked), (0, Suspended), (29, Revoked), (21, Suspended)],
        &health_key,
    );
    let wm = reg.set_status_batch(&good).unwrap();
    assert_eq!(wm.height, before.height + 1);
    assert_eq!(reg.watermark().unwrap(), wm);
    assert_eq!(reg.status("health", 3).unwrap(), Revoked);
    assert_eq!(reg.status("health", 0).unwrap(), Suspended);
    assert_eq!(reg.status("health", 29).unwrap(), Revoked);
    assert_eq!(reg.status("health", 21).unwrap(), Suspended);
    assert_eq!(reg.status("health", 1).unwrap(), Valid);
    assert_eq!(reg.status("edu", 3).unwrap(), Valid);
    // The round trip through bytes keeps the batch.
    assert_eq!(
        SignedStatusBatch::from_bytes(&good.to_bytes())
            .unwrap()
            .request(),
        good.request()
    );

    // Refused, and nothing changes (no block, no status).
    let state = snapshot(&reg);
    let head = reg.watermark().unwrap();
    let refused: Vec<(&str, SignedStatusBatch)> = vec![
        // a replay of the batch just recorded
        ("replay", good.clone()),
        // one index never anchored (15 is between health's two ranges)
        (
            "un-anchored",
            sign("health", &[(1, Revoked), (15, Revoked)], &health_key),
        ),
        // past every range
        (
            "past the end",
            sign("health", &[(2, Revoked), (30, Revoked)], &health_key),
        ),
        // the same index twice
        (
            "duplicate",
            sign(
                "health",
                &[(4, Revoked), (5, Valid), (4, Suspended)],
                &health_key,
            ),
        ),
        // signed by another issuer's key
        (
            "other issuer's signature",
            sign("health", &[(6, Revoked)], &edu_key),
        ),
        // edu's indices are not health's (edu key, health id is refused above; here edu's own
        // id with an index only health anchored)
        (
            "other issuer's index",
            sign("edu", &[(25, Revoked)], &edu_key),
        ),
        // empty
        ("empty", sign("health", &[], &health_key)),
    ];
    for (what, batch) in &refused {
        assert!(reg.set_status_batch(batch).is_err(), "{what} was accepted");
        assert_eq!(reg.watermark().unwrap(), head, "{what} added a block");
        assert_eq!(snapshot(&reg), state, "{what} changed a status");
    }
    assert!(matches!(
        reg.set_status_batch(&good),
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        reg.set_status_batch(&refused[4].1),
        Err(Error::BadSignature(_))
    ));
    // Too many changes.
    let huge: Vec<(u32, CredentialStatus)> = (0..=MAX_BATCH_CHANGES as u32)
        .map(|i| (i, Revoked))
        .collect();
    assert!(matches!(
        reg.set_status_batch(&sign("health", &huge, &health_key)),
        Err(Error::Invalid(_))
    ));
    assert_eq!(reg.watermark().unwrap(), head);

    // Batches and single changes mix; a later batch overrides an earlier one.
    let wm = reg
        .set_status_batch(&sign("health", &[(3, Valid), (7, Revoked)], &health_key))
        .unwrap();
    assert_eq!(wm.height, head.height + 1);
    reg.set_status(
        &SignedStatusChange::sign(
            &StatusChange {
                issuer_id: "edu".into(),
                status_index: 9,
                status: Suspended,
            },
            &edu_key,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(reg.status("health", 3).unwrap(), Valid);
    assert_eq!(reg.status("health", 7).unwrap(), Revoked);
    assert_eq!(reg.status("edu", 9).unwrap(), Suspended);

    // The replay re-checks every batch and counts each change.
    let report = reg.verify_chain().unwrap();
    assert_eq!(report.head, reg.watermark().unwrap());
    assert_eq!(report.status_changes, 4 + 2 + 1);
}

#[test]
fn sqlite_in_memory() {
    conformance_suite(|k| SqliteLedger::open_in_memory(k).unwrap());
    status_batch_suite(|k| SqliteLedger::open_in_memory(k).unwrap());
}

#[test]
fn status_batches_on_disk_verify_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    status_batch_suite(|k| SqliteLedger::create(&path, k).unwrap());
    let reader = SqliteLedger::open(&path).unwrap();
    let report = reader.verify_chain().unwrap();
    assert_eq!(report.status_changes, 7);
    assert_eq!(
        reader.status("health", 29).unwrap(),
        CredentialStatus::Revoked
    );
}

#[test]
fn sqlite_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    conformance_suite(|k| SqliteLedger::create(&path, k).unwrap());
    // Everything survives a reopen, read-only.
    let reader = SqliteLedger::open(&path).unwrap();
    let report = reader.verify_chain().unwrap();
    assert_eq!(report.batches, 8);
    assert_eq!(report.retired_keys, 1);
    assert_eq!(reader.retired_keys("health").unwrap().len(), 1);
    assert_eq!(reader.watermark().unwrap(), report.head);
}

/// Every single-byte mutation of a valid record gets a verdict (never an error, never a panic),
/// and none of them is Valid.
#[test]
fn mutated_records_are_never_valid() {
    let t = now();
    let authority = keys::generate();
    let mut reg = SqliteLedger::open_in_memory(&authority).unwrap();
    let key = keys::generate();
    reg.register_issuer(&cert(
        &authority,
        "health",
        &[Kind::Health],
        &key,
        t - YEAR,
        t + YEAR,
    ))
    .unwrap();
    let recs = issue(
        &mut reg,
        &key,
        &[health("health", "C", 0, t), health("health", "C", 1, t)],
    );
    let bytes = recs[0].encode();
    assert_eq!(
        verdict::assess_bytes(&reg, &bytes, None, t)
            .unwrap()
            .verdict,
        Verdict::Valid
    );
    for i in 0..bytes.len() {
        let mut m = bytes.clone();
        m[i] ^= 0x01;
        let r = verdict::assess_bytes(&reg, &m, None, t).unwrap();
        assert_ne!(r.verdict, Verdict::Valid, "byte {i} flipped still valid");
    }
}

/// The EVM backend: each test runs its own anvil (127.0.0.1, port 0), stopped by PID when the
/// registry is dropped. The authority deploys from dev account #0; each issuer sends from its
/// own fresh account.
#[cfg(feature = "evm")]
mod evm {
    use super::*;
    use civic_registry::evm::{
        self, default_anvil_path, EthKey, EvmConfig, EvmRegistry, LocalNode, Signers,
        DEV_ACCOUNT_0, LOCAL_CHAIN_ID,
    };

    /// Every issuer id the suites use.
    const ISSUERS: &[&str] = &["id-bureau", "health", "edu", "rogue", "ghost"];

    pub fn on_anvil(authority: &SigningKey) -> EvmRegistry {
        let node = LocalNode::start(&default_anvil_path(), &[]).unwrap();
        let admin = EthKey::from_hex(DEV_ACCOUNT_0).unwrap();
        let mut cfg = EvmConfig::new(node.url(), LOCAL_CHAIN_ID, Default::default());
        let receipt = evm::deploy(&cfg, &admin, authority.verifying_key()).unwrap();
        cfg.contract = receipt.contract.unwrap();
        let mut signers = Signers {
            authority: Some(admin),
            ..Default::default()
        };
        for id in ISSUERS {
            let k = EthKey::generate();
            node.fund(k.address()).unwrap();
            signers.issuers.insert((*id).to_owned(), k);
        }
        EvmRegistry::open(cfg, signers).unwrap().with_node(node)
    }

    #[test]
    fn evm_conformance() {
        conformance_suite(on_anvil);
    }

    #[test]
    fn evm_status_batches() {
        status_batch_suite(on_anvil);
    }
}
