//! Secure messaging (issue 7): independent test vectors for the key derivation, the mapping,
//! the tokens and the MACs (computed by `vectors/sm_vectors.py` with Python's `cryptography`),
//! and the bad-input cases: a flipped bit, a replay, a reordering, a wrong CAN or PIN, a plain
//! command. Each is refused and closes the session (the card's keys are gone: a correctly
//! protected command under them is refused too).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use card_applet::apdu::CommandApdu;
use card_applet::sm::{self, Channel, Password, SessionKeys, SmError};
use card_applet::{Card, MemoryStore};
use common::*;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{AffinePoint, ProjectivePoint, PublicKey, Scalar};

fn vectors() -> HashMap<String, Vec<u8>> {
    let text = include_str!("vectors/sm_vectors.txt");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(" = ").unwrap();
            (k.to_owned(), hex::decode(v).unwrap())
        })
        .collect()
}

fn scalar(b: &[u8]) -> Scalar {
    use p256::elliptic_curve::PrimeField;
    let b: [u8; 32] = b.try_into().unwrap();
    Scalar::from_repr(b.into()).unwrap()
}

fn point(b: &[u8]) -> ProjectivePoint {
    PublicKey::from_sec1_bytes(b).unwrap().to_projective()
}

fn enc(p: &ProjectivePoint) -> Vec<u8> {
    AffinePoint::from(*p)
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

#[test]
fn key_derivation_mapping_and_tokens_match_independent_vectors() {
    let v = vectors();
    assert_eq!(sm::kdf(&v["can"], 3)[..], v["k_pi_can"][..]);
    let salt: [u8; 16] = v["pin_salt"][..].try_into().unwrap();
    assert_eq!(sm::pin_password(&salt, b"482913")[..], v["pin_record"][..]);
    assert_eq!(sm::kdf(&v["pin_record"], 3)[..], v["k_pi_pin"][..]);
    let k_pi: [u8; 32] = v["k_pi_can"][..].try_into().unwrap();
    let nonce: [u8; 16] = v["nonce"][..].try_into().unwrap();
    assert_eq!(
        sm::encrypt_nonce(&k_pi, &nonce)[..],
        v["encrypted_nonce"][..]
    );
    let z: [u8; 16] = v["encrypted_nonce"][..].try_into().unwrap();
    assert_eq!(sm::decrypt_nonce(&k_pi, &z)[..], nonce[..]);

    // Generic Mapping: H = sk_picc * PK_pcd, G' = s*G + H.
    let pk_map_pcd = ProjectivePoint::GENERATOR * scalar(&v["sk_map_pcd"]);
    assert_eq!(enc(&pk_map_pcd), v["pk_map_pcd"]);
    let h = point(&v["pk_map_pcd"]) * scalar(&v["sk_map_picc"]);
    let g = sm::map_generator(&nonce, &h).unwrap();
    assert_eq!(enc(&g), v["mapped_generator"]);
    // The form both sides use, G' folded into the ephemeral key
    // ((sk*s)*G + (sk*sk_map)*PK_map,other), gives the same keys on either side.
    let folded = |sk_map: &str, other_map: &str, sk_eph: &str| {
        let sk = p256::NonZeroScalar::new(scalar(&v[sk_eph])).unwrap();
        enc(
            &sm::mapped_public_key(&nonce, &scalar(&v[sk_map]), &point(&v[other_map]), &sk)
                .unwrap(),
        )
    };
    assert_eq!(
        folded("sk_map_picc", "pk_map_pcd", "sk_eph_picc"),
        v["pk_eph_picc"]
    );
    assert_eq!(
        folded("sk_map_pcd", "pk_map_picc", "sk_eph_pcd"),
        v["pk_eph_pcd"]
    );

    // Key agreement on G' and the session keys.
    let pk_pcd = g * scalar(&v["sk_eph_pcd"]);
    let pk_picc = g * scalar(&v["sk_eph_picc"]);
    assert_eq!(enc(&pk_pcd), v["pk_eph_pcd"]);
    assert_eq!(enc(&pk_picc), v["pk_eph_picc"]);
    let shared = AffinePoint::from(pk_picc * scalar(&v["sk_eph_pcd"])).x();
    assert_eq!(shared[..], v["shared_secret"][..]);
    let keys = SessionKeys::derive(&shared);
    assert_eq!(keys.enc[..], v["k_enc"][..]);
    assert_eq!(keys.mac[..], v["k_mac"][..]);
    assert_eq!(
        sm::auth_token(&keys.mac, &v["pk_eph_picc"])[..],
        v["token_pcd"][..]
    );
    assert_eq!(
        sm::auth_token(&keys.mac, &v["pk_eph_pcd"])[..],
        v["token_picc"][..]
    );
}

#[test]
fn protected_apdus_and_macs_match_independent_vectors() {
    let v = vectors();
    let keys = SessionKeys::derive(&v["shared_secret"]);
    let mut term = Channel::new(keys.clone());
    let mut card = Channel::new(keys);
    for (cmd, rsp) in [("cmd1", "rsp1"), ("cmd3", "rsp3")] {
        let plain = CommandApdu::parse(&v[&format!("{cmd}_plain")]).unwrap();
        let protected = term.protect_command(&plain).unwrap();
        assert_eq!(
            hex::encode(&protected),
            hex::encode(&v[&format!("{cmd}_protected")])
        );
        let got = card
            .unprotect_command(&CommandApdu::parse(&protected).unwrap())
            .unwrap();
        assert_eq!(got.to_bytes(), plain.to_bytes());
        let r = card.protect_response(&v[&format!("{rsp}_plain")]);
        assert_eq!(
            hex::encode(&r),
            hex::encode(&v[&format!("{rsp}_protected")])
        );
        assert_eq!(
            term.unprotect_response(&r).unwrap(),
            v[&format!("{rsp}_plain")]
        );
    }
}

/// An issued card (CAN [`CAN`]) with a session open, the office authenticated inside it;
/// and a second terminal-side channel to craft APDUs by hand.
fn session() -> TestCard {
    let card = selected_personalised();
    assert!(card.card.sm_active());
    card
}

const GET_INFO: &[u8] = &[0x00, 0xCA, 0x01, 0x01, 0x00];

fn protect(card: &mut TestCard, raw: &[u8]) -> Vec<u8> {
    card.channel
        .as_mut()
        .unwrap()
        .protect_command(&CommandApdu::parse(raw).unwrap())
        .unwrap()
}

/// The session is gone on the card: keys wiped, rights gone; the next command under the old
/// keys is refused too.
fn assert_closed(card: &mut TestCard) {
    assert!(!card.card.sm_active(), "session still open");
    let next = protect(card, GET_INFO);
    assert_eq!(
        card.card.process(&next),
        [0x69, 0x88],
        "old keys still work"
    );
    // A new session starts from nothing: the office's rights are gone.
    card.channel = None;
    assert!(card.open_session());
    assert_eq!(
        info_field(card, card_applet::protocol::tag::RIGHTS),
        Some(vec![0])
    );
}

#[test]
fn a_flipped_bit_anywhere_in_a_protected_command_is_refused_and_closes_the_session() {
    let base = {
        let mut card = session();
        protect(&mut card, GET_INFO)
    };
    for byte in 0..base.len() {
        for bit in [0x01u8, 0x80] {
            let mut card = session();
            let mut a = protect(&mut card, GET_INFO);
            assert_eq!(a.len(), base.len());
            a[byte] ^= bit;
            let r = card.card.process(&a);
            assert_eq!(r.len(), 2, "byte {byte} bit {bit:02X}: answered {r:02X?}");
            assert_ne!(r, [0x90, 0x00], "byte {byte} bit {bit:02X}");
            assert_closed(&mut card);
        }
    }
}

#[test]
fn a_flipped_bit_in_a_protected_response_is_detected_by_the_reader() {
    let mut card = session();
    let a = protect(&mut card, GET_INFO);
    let mut r = card.card.process(&a);
    r[5] ^= 0x04;
    let e = card.channel.as_mut().unwrap().unprotect_response(&r);
    assert_eq!(e, Err(SmError::Mac));
}

#[test]
fn a_replayed_command_is_refused_and_closes_the_session() {
    let mut card = session();
    let a = protect(&mut card, GET_INFO);
    let first = card.card.process(&a);
    assert!(card
        .channel
        .as_mut()
        .unwrap()
        .unprotect_response(&first)
        .is_ok());
    assert_eq!(card.card.process(&a), [0x69, 0x88]);
    assert_closed(&mut card);
}

#[test]
fn two_reordered_commands_are_refused_and_close_the_session() {
    let mut card = session();
    let first = protect(&mut card, GET_INFO);
    // The terminal's counter moves past the first answer's value too.
    let _ = protect(&mut card, GET_INFO);
    let second = protect(&mut card, GET_INFO);
    assert_eq!(card.card.process(&second), [0x69, 0x88]);
    assert_eq!(card.card.process(&first), [0x69, 0x88]);
    assert_closed(&mut card);
}

#[test]
fn a_plain_command_inside_a_session_closes_it_and_is_refused() {
    let mut card = session();
    assert_eq!(card.card.process(GET_INFO), [0x69, 0x87]);
    assert_closed(&mut card);
    // SELECT and GET CHALLENGE still answer in plain; card data does not.
    card.channel = None;
    let select = hex::decode(SELECT).unwrap();
    assert_eq!(sw(&card.card.process(&select)), 0x9000);
    assert_eq!(sw(&card.card.process(&[0, 0x84, 0, 0, 0x10])), 0x9000);
    for a in [
        GET_INFO,
        &[0x00, 0xCA, 0x02, 0x00, 0x00],
        &[0x00, 0x20, 0x00, 0x81],
        &[
            0x00, 0x88, 0x00, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0,
        ],
    ] {
        assert_eq!(card.card.process(a), [0x69, 0x87], "{a:02X?}");
    }
}

#[test]
fn a_card_reset_ends_the_session() {
    let mut card = session();
    card.card.reset();
    assert!(!card.card.sm_active());
    let a = protect(&mut card, GET_INFO);
    assert_eq!(card.card.process(&a), [0x69, 0x88]);
}

fn pace(card: &mut TestCard, pass: &Password<'_>) -> Result<Channel, u16> {
    let c = &mut card.card;
    let mut transmit = |a: &[u8]| -> Result<Vec<u8>, ()> { Ok(c.process(a)) };
    sm::establish(&mut transmit, &mut TestRng::new(99), pass).map_err(|e| match e {
        sm::PaceError::Refused { sw, .. } => sw,
        e => panic!("{e:?}"),
    })
}

#[test]
fn a_wrong_can_is_refused_three_times_then_pace_with_the_can_is_blocked() {
    let mut card = session();
    card.channel = None;
    let select = hex::decode(SELECT).unwrap();
    card.card.process(&select);
    assert_eq!(
        pace(&mut card, &Password::Can(b"000000")).unwrap_err(),
        0x63C2
    );
    assert!(!card.card.sm_active());
    assert_eq!(
        pace(&mut card, &Password::Can(b"654320")).unwrap_err(),
        0x63C1
    );
    // The right CAN resets the count.
    assert!(pace(&mut card, &Password::Can(CAN)).is_ok());
    card.card.process(&select);
    for left in [0x63C2, 0x63C1, 0x6983] {
        assert_eq!(
            pace(&mut card, &Password::Can(b"111111")).unwrap_err(),
            left
        );
    }
    // Blocked now even with the right CAN, also after a warm reset; a power-up (the card
    // restarted from its stored state) clears it.
    assert_eq!(pace(&mut card, &Password::Can(CAN)).unwrap_err(), 0x6983);
    card.card.reset();
    card.card.process(&select);
    assert_eq!(pace(&mut card, &Password::Can(CAN)).unwrap_err(), 0x6983);
    let data = card.store().data().unwrap().to_vec();
    let mut again: TestCard = Card::new(MemoryStore::with_state(data), TestRng::new(3))
        .unwrap()
        .into();
    again.card.process(&select);
    assert!(pace(&mut again, &Password::Can(CAN)).is_ok());
}

#[test]
fn pace_with_the_pin_counts_against_the_pin_retry_counter() {
    let mut card = session();
    card.channel = None;
    let select = hex::decode(SELECT).unwrap();
    card.card.process(&select);
    // A wrong PIN costs a try, persisted before the comparison.
    let commits = card.store().commits();
    assert_eq!(
        pace(&mut card, &Password::Pin(b"999999")).unwrap_err(),
        0x63C2
    );
    assert_eq!(card.state().pin_tries, 2);
    assert_eq!(card.store().commits(), commits + 1);
    // The right PIN restores the counter and counts as verified in that session.
    let ch = pace(&mut card, &Password::Pin(b"123456")).unwrap();
    assert_eq!(card.state().pin_tries, 3);
    card.channel = Some(ch);
    assert_eq!(
        info_field(&mut card, card_applet::protocol::tag::PIN_VERIFIED),
        Some(vec![1])
    );
    // Three wrong ones block the PIN: PACE with the PIN is refused like VERIFY.
    card.channel = None;
    card.card.process(&select);
    for left in [0x63C2, 0x63C1, 0x6983] {
        assert_eq!(
            pace(&mut card, &Password::Pin(b"000000")).unwrap_err(),
            left
        );
    }
    assert_eq!(card.state().pin_tries, 0);
    assert_eq!(
        pace(&mut card, &Password::Pin(b"123456")).unwrap_err(),
        0x6983
    );
    // The CAN still opens a session; VERIFY inside it says blocked.
    card.channel = Some(pace(&mut card, &Password::Can(CAN)).unwrap());
    assert_eq!(tx(&mut card, "0020008106313233343536"), "6983");
}

#[test]
fn pace_steps_out_of_order_or_malformed_are_refused() {
    let mut card = session();
    card.channel = None;
    let select = hex::decode(SELECT).unwrap();
    card.card.process(&select);
    // GENERAL AUTHENTICATE without MSE:SET AT
    assert_eq!(
        card.card.process(&sm::general_authenticate(true, None)),
        [0x69, 0x85]
    );
    // Unknown protocol OID
    let mut mse = sm::mse_set_at(sm::password::CAN);
    mse[7] ^= 1;
    assert_eq!(card.card.process(&mse), [0x6A, 0x88]);
    // MRZ (01) is not a password of this card
    assert_eq!(card.card.process(&sm::mse_set_at(0x01)), [0x6A, 0x88]);
    // A mapping point not on the curve
    assert_eq!(
        card.card.process(&sm::mse_set_at(sm::password::CAN)),
        [0x90, 0]
    );
    let r = card.card.process(&sm::general_authenticate(true, None));
    assert_eq!(sw(&r), 0x9000);
    let mut bad = vec![0x04];
    bad.extend_from_slice(&[0x11; 64]);
    assert_eq!(
        card.card.process(&sm::general_authenticate(
            true,
            Some((sm::tag::MAP_PCD, &bad))
        )),
        [0x6A, 0x80]
    );
    // The run is over: the next step is out of order.
    assert_eq!(
        card.card.process(&sm::general_authenticate(
            true,
            Some((sm::tag::MAP_PCD, &bad))
        )),
        [0x69, 0x85]
    );
    assert!(!card.card.sm_active());
    // No session before SELECT.
    card.card.reset();
    assert_eq!(
        card.card.process(&sm::mse_set_at(sm::password::CAN)),
        [0x69, 0x85]
    );
}

// ---------------------------------------------------------------------------------------
// PACE-CAM (Doc 9303-11 4.4.3.5): chip authentication inside the PACE run

#[test]
fn pace_cam_chip_authentication_data_matches_independent_vectors() {
    let v = vectors();
    let k_enc: [u8; 32] = v["k_enc"][..].try_into().unwrap();
    let k_mac: [u8; 32] = v["k_mac"][..].try_into().unwrap();
    // The tokens of a CAM run cover the CAM OID.
    assert_eq!(
        sm::auth_token_for(&sm::PACE_CAM_OID, &k_mac, &v["pk_eph_picc"])[..],
        v["cam_token_pcd"][..]
    );
    assert_eq!(
        sm::auth_token_for(&sm::PACE_CAM_OID, &k_mac, &v["pk_eph_pcd"])[..],
        v["cam_token_picc"][..]
    );
    // The card: A_IC = E(K_enc, CA_IC), CA_IC = SK_IC^-1 * SK_Map,IC.
    let sk_ic: [u8; 32] = v["sk_ic"][..].try_into().unwrap();
    let sk_map: [u8; 32] = v["sk_map_picc"][..].try_into().unwrap();
    let a_ic = sm::chip_authentication_data(&k_enc, &sk_ic, &sk_map).unwrap();
    assert_eq!(hex::encode(&a_ic), hex::encode(&v["a_ic"]));
    assert_eq!(
        enc(&(ProjectivePoint::GENERATOR * scalar(&sk_ic))),
        v["pk_ic"]
    );
    // The terminal: PK_Map,IC == CA_IC * PK_IC for the chip's key, and for no other.
    let pk_map: [u8; 65] = v["pk_map_picc"][..].try_into().unwrap();
    let ca = sm::ChipAuthentication::from_card(&k_enc, pk_map, Some(&v["a_ic"]));
    assert!(ca.present());
    assert!(ca.verify(&v["pk_ic"]));
    assert!(!ca.verify(&v["pk_map_pcd"]));
    assert!(!ca.verify(&[0x04; 65]));
}

#[test]
fn pace_cam_chip_authentication_data_altered_or_missing_fails_the_check() {
    let v = vectors();
    let k_enc: [u8; 32] = v["k_enc"][..].try_into().unwrap();
    let pk_map: [u8; 65] = v["pk_map_picc"][..].try_into().unwrap();
    let missing = sm::ChipAuthentication::from_card(&k_enc, pk_map, None);
    assert!(!missing.present());
    assert!(!missing.verify(&v["pk_ic"]));
    for i in 0..v["a_ic"].len() {
        let mut a = v["a_ic"].clone();
        a[i] ^= 0x01;
        let altered = sm::ChipAuthentication::from_card(&k_enc, pk_map, Some(&a));
        assert!(
            !altered.verify(&v["pk_ic"]),
            "byte {i} flipped still verified"
        );
    }
    for a in [&v["a_ic"][..16], &v["a_ic"][..47], &[][..]] {
        let short = sm::ChipAuthentication::from_card(&k_enc, pk_map, Some(a));
        assert!(!short.verify(&v["pk_ic"]));
    }
    // Another run's (replayed) data: the right CA_IC for its own PK_Map,IC, not for this one.
    let other_map: [u8; 65] = v["pk_map_pcd"][..].try_into().unwrap();
    let replayed = sm::ChipAuthentication::from_card(&k_enc, other_map, Some(&v["a_ic"]));
    assert!(!replayed.verify(&v["pk_ic"]));
}

fn pace_cam(card: &mut TestCard, pass: &Password<'_>) -> sm::Established {
    let c = &mut card.card;
    let mut transmit = |a: &[u8]| -> Result<Vec<u8>, ()> { Ok(c.process(a)) };
    sm::establish_cam(&mut transmit, &mut TestRng::new(7), pass).unwrap()
}

#[test]
fn pace_cam_with_the_can_and_with_the_pin_proves_the_chip_key() {
    let mut card = session();
    let key = card.card.state().public_key().unwrap();
    let other = ProjectivePoint::GENERATOR * scalar(&[7u8; 32]);
    for pass in [Password::Can(CAN), Password::Pin(b"123456")] {
        card.channel = None;
        assert_eq!(
            sw(&card.card.process(&hex::decode(SELECT).unwrap())),
            0x9000
        );
        let done = pace_cam(&mut card, &pass);
        let chip = done.chip.expect("a CAM run gives chip authentication data");
        assert!(chip.present());
        assert!(chip.verify(&key), "{pass:?}");
        assert!(!chip.verify(&enc(&other)), "{pass:?}");
        // The channel works.
        let mut ch = done.channel;
        let cmd = CommandApdu::parse(GET_INFO).unwrap();
        let r = card.card.process(&ch.protect_command(&cmd).unwrap());
        assert_eq!(sw(&ch.unprotect_response(&r).unwrap()), 0x9000);
    }
    // Generic Mapping still runs, without chip authentication data.
    assert_eq!(
        sw(&card.card.process(&hex::decode(SELECT).unwrap())),
        0x9000
    );
    assert!(pace(&mut card, &Password::Can(CAN)).is_ok());
}

#[test]
fn pace_cam_is_refused_by_a_card_without_a_chip_key() {
    // A personalised card before GENERATE KEY: MSE names CAM, the first step answers 6A88.
    let mut card = selected_blank();
    let mut transmit = |a: &[u8]| -> Result<Vec<u8>, ()> { Ok(card.card.process(a)) };
    let mse = sm::mse_set_at_for(&sm::PACE_CAM_OID, sm::password::CAN);
    let r = transmit(&mse).unwrap();
    // No CAN either on a blank card; the chip key is checked first.
    let r2 = transmit(&sm::general_authenticate(true, None)).unwrap();
    assert_eq!(sw(&r), 0x9000, "{r:02X?}");
    assert_eq!(sw(&r2), 0x6A88, "{r2:02X?}");
}
