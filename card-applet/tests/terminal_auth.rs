//! Terminal authentication (GET CHALLENGE, PSO VERIFY CERTIFICATE, EXTERNAL AUTHENTICATE),
//! the rights of each kind of terminal, the citizen's consent, the latest time seen and the
//! access log; every refusal checked to leave the state unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use card_applet::apdu::CommandApdu;
use card_applet::protocol::{access, role, tag, tlv, ACCESS_LOG_MAX, CLOCK_SKEW};
use card_applet::state::LogEntry;
use card_applet::terminal;
use card_applet::{Card, MemoryStore};
use common::*;
use p256::ecdsa::{signature::Signer, Signature, SigningKey};

const VERIFY_PIN: &str = "0020008106 313233343536";
const READ_IDENTITY: &str = "00CA020000";
const READ_HEALTH: &str = "00CA020100";
const READ_EMERGENCY: &str = "00CA020300";
const READ_EDUCATION: &str = "00CA020500";
const READ_LOG: &str = "00CA010400";
const IDENTITY: &str = "8001 01 8103 414243 9000";
const HEALTH: &str = "8001 02 8104 48454C54 9000";
const EMERGENCY: &str = "8001 04 8103 454D45 9000";
const EDUCATION: &str = "8001 03 8102 4544 9000";

/// An issued card, selected, no terminal, no PIN.
fn issued() -> TestCard {
    let mut card = personalised();
    run(&mut card, &format!("{SELECT} -> ..9000"));
    card
}

fn rights(card: &mut TestCard) -> u8 {
    info_field(card, tag::RIGHTS).unwrap()[0]
}

fn latest(card: &mut TestCard) -> u64 {
    u64::from_be_bytes(
        info_field(card, tag::LATEST_TIME)
            .unwrap()
            .try_into()
            .unwrap(),
    )
}

fn entry(t: &Terminal, time: u64, what: u8) -> LogEntry {
    LogEntry {
        terminal_id: t.body.terminal_id.clone(),
        role: t.body.role,
        time,
        what,
    }
}

/// Sign an arbitrary payload with `key` into a certificate (for hand-made bodies).
fn sign_payload(payload: &[u8], key: &SigningKey) -> Vec<u8> {
    let sig: Signature = key.sign(&terminal::sig_structure(payload));
    terminal::assemble(payload, &sig.to_bytes().into())
}

/// PSO and GET CHALLENGE for `t`, returning the challenge.
fn prepare(card: &mut TestCard, t: &Terminal) -> Vec<u8> {
    assert_eq!(card.process(&pso(&t.cert)), [0x90, 0x00]);
    challenge(card)
}

#[test]
fn clinic_reads_basics_without_pin_and_health_with_consent() {
    let mut card = issued();
    let clinic = clinic();
    authenticate(&mut card, &clinic, NOW);
    assert_eq!(
        rights(&mut card),
        access::READ_IDENTITY | access::READ_EMERGENCY | access::READ_HEALTH
    );
    run(
        &mut card,
        &format!(
            "{READ_IDENTITY} -> {IDENTITY}
            {READ_EMERGENCY} -> {EMERGENCY}
            # Public objects stay public
            00CA010300 -> 61 .. 9000"
        ),
    );
    // Health needs the citizen's PIN; education and the log are not the clinic's business.
    for req in [READ_HEALTH, READ_EDUCATION, READ_LOG] {
        refused_unchanged(&mut card, req, 0x6982);
    }
    // Never a write or PIN management, with or without the PIN.
    let writes = [
        "00DA0200 07 8001 03 8102 4544",
        "00DA0202 07 8001 03 8102 4544",
        "00DA0201",
        "002C0281 06 313131313131",
        "002C0381",
    ];
    for req in writes {
        refused_unchanged(&mut card, req, 0x6982);
    }
    // Consent: the citizen types the PIN at the clinic.
    run(
        &mut card,
        &format!(
            "{VERIFY_PIN} -> 9000
            {READ_HEALTH} -> {HEALTH}
            00CA010100 -> .. 8901 07 8A01 01 9000"
        ),
    );
    for req in writes {
        refused_unchanged(&mut card, req, 0x6982);
    }
    // The reads are logged as one entry: identity, emergency, health (education and the log
    // are readable now with the PIN, and the education read is logged too).
    assert_eq!(card.state().access_log, vec![entry(&clinic, NOW, 0x07)]);
    run(&mut card, &format!("{READ_EDUCATION} -> {EDUCATION}"));
    assert_eq!(card.state().access_log, vec![entry(&clinic, NOW, 0x0F)]);
    // SELECT ends the session: rights and PIN are gone.
    run(&mut card, &format!("{SELECT} -> ..9000"));
    assert_eq!(rights(&mut card), 0);
    refused_unchanged(&mut card, READ_IDENTITY, 0x6982);
    // So does a reset.
    authenticate(&mut card, &clinic, NOW);
    card.reset();
    run(&mut card, &format!("{SELECT} -> ..9000"));
    refused_unchanged(&mut card, READ_EMERGENCY, 0x6982);
}

#[test]
fn office_writes_deletes_and_unblocks() {
    let mut card = issued();
    // Block the PIN.
    run(
        &mut card,
        "0020008106 313131313131 -> 63C2
        0020008106 313131313131 -> 63C1
        0020008106 313131313131 -> 6983",
    );
    authenticate(&mut card, &office(), NOW);
    assert_eq!(rights(&mut card), 0x31);
    run(
        &mut card,
        "# Write slot 2, replace slot 0, delete slot 5
        00DA0202 07 8001 03 8102 4546 -> 9000
        00DA0200 08 8001 01 8103 58595A -> 9000
        00DA0205 -> 9000
        # The office reads identity (its right), not health
        00CA020000 -> 8001 01 8103 58595A 9000
        00CA020100 -> 6982
        # Unblock with a new PIN; counter only
        002C0281 06 363534333231 -> 9000
        0020008106 313131313131 -> 63C2
        002C0381 -> 9000
        00CA010100 -> .. 8501 03 .. 9000
        0020008106 363534333231 -> 9000",
    );
    // The office's identity read is in the log.
    assert_eq!(
        card.state().access_log,
        vec![entry(&office(), NOW, access::READ_IDENTITY)]
    );
}

#[test]
fn education_terminal_reads_education_only() {
    let mut card = issued();
    let edu = education();
    authenticate(&mut card, &edu, NOW + 60);
    run(&mut card, &format!("{READ_EDUCATION} -> {EDUCATION}"));
    for req in [READ_IDENTITY, READ_EMERGENCY, READ_HEALTH, READ_LOG] {
        refused_unchanged(&mut card, req, 0x6982);
    }
    for req in ["00DA0205 07 8001 03 8102 4546", "002C0381"] {
        refused_unchanged(&mut card, req, 0x6982);
    }
    assert_eq!(
        card.state().access_log,
        vec![entry(&edu, NOW + 60, access::READ_EDUCATION)]
    );
    assert_eq!(card.state().access_log[0].role, role::EDUCATION_OFFICE);
}

#[test]
fn citizen_pin_alone_reads_everything_unlogged() {
    let mut card = issued();
    // Some terminal history first.
    let clinic = clinic();
    authenticate(&mut card, &clinic, NOW);
    run(
        &mut card,
        &format!("{READ_EMERGENCY} -> {EMERGENCY}\n{SELECT} -> ..9000"),
    );
    let commits = card.store().commits();
    run(
        &mut card,
        &format!(
            "{VERIFY_PIN} -> 9000
            {READ_IDENTITY} -> {IDENTITY}
            {READ_HEALTH} -> {HEALTH}
            {READ_EMERGENCY} -> {EMERGENCY}
            {READ_EDUCATION} -> {EDUCATION}
            00CA010100 -> .. 8901 00 8A01 01 9000"
        ),
    );
    // VERIFY commits twice (decrement, restore); the reads not at all.
    assert_eq!(card.store().commits(), commits + 2);
    assert_eq!(
        card.state().access_log,
        vec![entry(&clinic, NOW, access::READ_EMERGENCY)]
    );
    // The log, byte-exact: 62 { 80 id, 81 role, 82 time, 83 what }.
    let mut want = Vec::new();
    let mut inner = Vec::new();
    tlv::push(&mut inner, 0x80, b"clinic-st-mary");
    tlv::push(&mut inner, 0x81, &[role::CLINIC]);
    tlv::push(&mut inner, 0x82, &NOW.to_be_bytes());
    tlv::push(&mut inner, 0x83, &[access::READ_EMERGENCY]);
    tlv::push(&mut want, 0x62, &inner);
    want.extend_from_slice(&[0x90, 0x00]);
    assert_eq!(card.process(&hex::decode(READ_LOG).unwrap()), want);
}

#[test]
fn access_log_widens_in_place_and_commits_only_on_change() {
    let mut card = issued();
    let clinic = clinic();
    authenticate(&mut card, &clinic, NOW + 10);
    let c0 = card.store().commits();
    run(&mut card, &format!("{READ_IDENTITY} -> {IDENTITY}"));
    assert_eq!(card.store().commits(), c0 + 1);
    assert_eq!(
        card.state().access_log,
        vec![entry(&clinic, NOW + 10, 0x01)]
    );
    // Same read again: nothing to record, nothing committed.
    run(&mut card, &format!("{READ_IDENTITY} -> {IDENTITY}"));
    assert_eq!(card.store().commits(), c0 + 1);
    // A new kind widens the same entry.
    run(&mut card, &format!("{READ_EMERGENCY} -> {EMERGENCY}"));
    assert_eq!(card.store().commits(), c0 + 2);
    assert_eq!(
        card.state().access_log,
        vec![entry(&clinic, NOW + 10, 0x03)]
    );
    // A refused read records nothing.
    refused_unchanged(&mut card, READ_HEALTH, 0x6982);
    // Reading nothing (empty slot, public objects) records nothing.
    run(&mut card, "00CA020900 -> 6A88\n00CA010300 -> ..9000");
    assert_eq!(card.store().commits(), c0 + 2);
    // A session that reads nothing leaves no entry; the next session gets its own.
    run(&mut card, &format!("{SELECT} -> ..9000"));
    authenticate(&mut card, &clinic, NOW + 20);
    run(&mut card, &format!("{SELECT} -> ..9000"));
    let edu = education();
    authenticate(&mut card, &edu, NOW + 30);
    run(&mut card, &format!("{READ_EDUCATION} -> {EDUCATION}"));
    assert_eq!(
        card.state().access_log,
        vec![
            entry(&clinic, NOW + 10, 0x03),
            entry(&edu, NOW + 30, access::READ_EDUCATION)
        ]
    );
    // Re-authenticating within one SELECT starts a new session (and entry).
    authenticate(&mut card, &clinic, NOW + 40);
    run(&mut card, &format!("{READ_IDENTITY} -> {IDENTITY}"));
    assert_eq!(card.state().access_log.len(), 3);
    assert_eq!(card.state().access_log[2], entry(&clinic, NOW + 40, 0x01));
    // Persisted: a reload has the same log.
    let data = card.store().data().unwrap().to_vec();
    let again = Card::new(MemoryStore::with_state(data), TestRng::new(5)).unwrap();
    assert_eq!(again.state().access_log, card.state().access_log);
}

#[test]
fn access_log_keeps_the_last_64_sessions() {
    let mut card = issued();
    let clinic = clinic();
    let sessions = ACCESS_LOG_MAX as u64 + 6;
    for i in 0..sessions {
        run(&mut card, &format!("{SELECT} -> ..9000"));
        authenticate(&mut card, &clinic, NOW + i);
        run(&mut card, &format!("{READ_IDENTITY} -> {IDENTITY}"));
    }
    let log = &card.state().access_log;
    assert_eq!(log.len(), ACCESS_LOG_MAX);
    assert_eq!(log[0].time, NOW + 6);
    assert_eq!(log[ACCESS_LOG_MAX - 1].time, NOW + sessions - 1);
    assert!(log.windows(2).all(|w| w[0].time < w[1].time));
    // The citizen reads 64 entries, oldest first.
    run(
        &mut card,
        &format!("{SELECT} -> ..9000\n{VERIFY_PIN} -> 9000"),
    );
    let r = card.process(&hex::decode("00CA0104000000").unwrap());
    assert_eq!(r[r.len() - 2..], [0x90, 0x00]);
    let entries: Vec<_> = tlv::iter(&r[..r.len() - 2]).map(|e| e.unwrap()).collect();
    assert_eq!(entries.len(), ACCESS_LOG_MAX);
    assert!(entries.iter().all(|(t, _)| *t == 0x62));
    let first_time = tlv::find(entries[0].1, 0x82).unwrap().unwrap();
    assert_eq!(first_time, (NOW + 6).to_be_bytes());
}

/// Fill the card so that `free` bytes are left, using the office terminal (then SELECT).
fn fill_to(card: &mut TestCard, free_left: usize) {
    authenticate(card, &office(), NOW);
    let free = u32::from_be_bytes(
        info_field(card, tag::FREE_STORAGE)
            .unwrap()
            .try_into()
            .unwrap(),
    ) as usize;
    // E0 82 xxxx { 80 01 slot, 81 01 kind, 82 82 xxxx record }: 14 bytes around the record.
    let n = free - free_left - 14;
    let mut body = vec![0x80, 0x01, 0x01, 0x81, 0x82];
    body.extend_from_slice(&(n as u16).to_be_bytes());
    body.extend(std::iter::repeat_n(0x33u8, n));
    let put = CommandApdu {
        cla: 0,
        ins: 0xDA,
        p1: 0x02,
        p2: 0x0C,
        data: body,
        ne: 0,
        extended: true,
    };
    assert_eq!(card.process(&put.to_bytes()), [0x90, 0x00]);
    let left = u32::from_be_bytes(
        info_field(card, tag::FREE_STORAGE)
            .unwrap()
            .try_into()
            .unwrap(),
    ) as usize;
    assert_eq!(left, free_left);
    run(card, &format!("{SELECT} -> ..9000"));
}

#[test]
fn full_storage_drops_the_oldest_log_entries_rather_than_refusing_the_read() {
    let mut card = issued();
    let clinic = clinic();
    for i in 0..5 {
        run(&mut card, &format!("{SELECT} -> ..9000"));
        authenticate(&mut card, &clinic, NOW + i);
        run(&mut card, &format!("{READ_IDENTITY} -> {IDENTITY}"));
    }
    fill_to(&mut card, 10);
    authenticate(&mut card, &clinic, NOW + 100);
    run(&mut card, &format!("{READ_EMERGENCY} -> {EMERGENCY}"));
    let log = &card.state().access_log;
    // One entry of the same size went to make room for the new one.
    assert_eq!(log.len(), 5);
    assert_eq!(log[0].time, NOW + 1);
    assert_eq!(log[4], entry(&clinic, NOW + 100, access::READ_EMERGENCY));
    assert!(card.serialized_state().len() <= card_applet::protocol::STORAGE_BUDGET);
    // Widening needs no room.
    run(&mut card, &format!("{READ_IDENTITY} -> {IDENTITY}"));
    assert_eq!(card.state().access_log[4].what, 0x03);
}

#[test]
fn a_read_that_cannot_be_logged_is_refused() {
    // Full card, empty log: nothing to drop, so the read is refused (6A84), unlogged.
    let mut card = issued();
    fill_to(&mut card, 10);
    assert!(card.state().access_log.is_empty());
    authenticate(&mut card, &clinic(), NOW);
    refused_unchanged(&mut card, READ_IDENTITY, 0x6A84);
    // The citizen alone is not logged, so still reads.
    run(
        &mut card,
        &format!("{SELECT} -> ..9000\n{VERIFY_PIN} -> 9000\n{READ_IDENTITY} -> {IDENTITY}"),
    );
    // A torn log append: the data does not leave the card.
    let mut card = issued();
    authenticate(&mut card, &clinic(), NOW);
    card.store_mut().set_fail_commits(true);
    refused_unchanged(&mut card, READ_IDENTITY, 0x6581);
    card.store_mut().set_fail_commits(false);
    run(&mut card, &format!("{READ_IDENTITY} -> {IDENTITY}"));
    assert_eq!(card.state().access_log.len(), 1);
}

#[test]
fn latest_time_moves_forward_only_and_persists() {
    let mut card = issued();
    assert_eq!(latest(&mut card), 0);
    let clinic = clinic();
    authenticate(&mut card, &clinic, NOW + 1000);
    assert_eq!(latest(&mut card), NOW + 1000);
    // FCI carries it too (88), without 89 / 8A.
    let fci = card.process(&hex::decode(SELECT).unwrap());
    let mut want = vec![0x88, 0x08];
    want.extend_from_slice(&(NOW + 1000).to_be_bytes());
    want.extend_from_slice(&[0x90, 0x00]);
    assert!(fci.ends_with(&want), "{fci:02X?}");
    // Within the skew, an earlier time is accepted but does not move the time back, and
    // commits nothing.
    let commits = card.store().commits();
    authenticate(&mut card, &clinic, NOW + 1000 - CLOCK_SKEW);
    assert_eq!(latest(&mut card), NOW + 1000);
    assert_eq!(card.store().commits(), commits);
    // Beyond the skew: refused, nothing granted.
    run(&mut card, &format!("{SELECT} -> ..9000"));
    let c = prepare(&mut card, &clinic);
    let ea = clinic.external_auth(CARD_ID, &c, NOW + 1000 - CLOCK_SKEW - 1);
    refused_unchanged(&mut card, &hex::encode(ea), 0x6982);
    assert_eq!(rights(&mut card), 0);
    // Later: moves forward.
    authenticate(&mut card, &clinic, NOW + 2000);
    assert_eq!(latest(&mut card), NOW + 2000);
    // Persisted across a reload.
    let data = card.store().data().unwrap().to_vec();
    let mut again: TestCard = Card::new(MemoryStore::with_state(data), TestRng::new(8))
        .unwrap()
        .into();
    assert_eq!(again.state().latest_time, NOW + 2000);
    run(&mut again, &format!("{SELECT} -> ..9000"));
    assert_eq!(latest(&mut again), NOW + 2000);
    // A certificate that expired before the latest time seen is refused at PSO, even
    // though its holder would claim a time inside its validity.
    let stale = Terminal::custom(
        "old-clinic",
        role::CLINIC,
        access::READ_IDENTITY,
        NOW - 10 * DAY,
        NOW + 1999,
        &authority(),
    );
    refused_unchanged(&mut again, &hex::encode(pso(&stale.cert)), 0x6982);
    let c = challenge(&mut again);
    let ea = stale.external_auth(CARD_ID, &c, NOW + 1990);
    refused_unchanged(&mut again, &hex::encode(ea), 0x6985);
    // One that expires exactly at the latest time is still good.
    let edge = Terminal::custom(
        "edge-clinic",
        role::CLINIC,
        access::READ_IDENTITY,
        NOW - 10 * DAY,
        NOW + 2000,
        &authority(),
    );
    authenticate(&mut again, &edge, NOW + 2000);
}

#[test]
fn a_torn_time_update_grants_nothing() {
    let mut card = issued();
    let clinic = clinic();
    let c = prepare(&mut card, &clinic);
    card.store_mut().set_fail_commits(true);
    let ea = clinic.external_auth(CARD_ID, &c, NOW);
    refused_unchanged(&mut card, &hex::encode(ea), 0x6581);
    assert_eq!(rights(&mut card), 0);
    refused_unchanged(&mut card, READ_IDENTITY, 0x6982);
}

/// Refused certificates: nothing granted, nothing changed, and the pending certificate is
/// gone (EXTERNAL AUTHENTICATE afterwards is 6985).
#[test]
fn bad_certificates_are_refused_6982() {
    let mut card = issued();
    // A session already set the latest time to NOW.
    authenticate(&mut card, &clinic(), NOW);
    run(&mut card, &format!("{SELECT} -> ..9000"));
    let good = clinic();
    let a = authority();

    // Forged: the body changed after signing (access escalated to everything).
    let mut forged = good.cert.clone();
    let at = forged.len() - 64 - 2 - 67 - 5 - 5 - 1;
    assert_eq!(forged[at], 0x07);
    forged[at] = 0x17;
    // Unknown signer: a well-formed certificate by another authority.
    let unknown = Terminal::custom(
        "clinic-st-mary",
        role::CLINIC,
        0x3F,
        NOW - DAY,
        NOW + 30 * DAY,
        &other_authority(),
    );
    // Self-signed by the terminal's own key.
    let self_signed = terminal::sign(&good.body, &good.key);
    // Expired relative to the latest time seen.
    let expired = Terminal::custom(
        "clinic-expired",
        role::CLINIC,
        0x07,
        NOW - 60 * DAY,
        NOW - 30 * DAY,
        &a,
    );
    // Truncated, trailing byte, nothing but the prefix.
    let truncated = good.cert[..good.cert.len() - 1].to_vec();
    let mut trailing = good.cert.clone();
    trailing.push(0x00);
    // Non-canonical heads: the outer payload length as 59 00 xx (the signature is still
    // valid: it covers the payload only), and a role of 18 01, re-signed by the authority.
    let mut long_head = good.cert[..7].to_vec();
    let (_, range, _) = terminal::parse(&good.cert).unwrap();
    long_head.extend_from_slice(&[0x59, 0x00, range.len() as u8]);
    long_head.extend_from_slice(&good.cert[range.start..]);
    assert!(terminal::verify(&long_head, &hex::decode(AUTHORITY_KEY).unwrap()).is_err());
    let payload = good.body.encode_body();
    let role_at = 1 + 1 + 1 + good.body.terminal_id.len();
    assert_eq!(payload[role_at], role::CLINIC);
    let mut p = payload.clone();
    p.splice(role_at..=role_at, [0x18, role::CLINIC]);
    let non_canonical_role = sign_payload(&p, &a);
    // Untagged COSE_Sign1 (no D2), and indefinite-length payload.
    let untagged = good.cert[1..].to_vec();
    let mut indefinite = good.cert[..7].to_vec();
    indefinite.push(0x5F);
    indefinite.extend_from_slice(&good.cert[7..]);
    // A 33-byte terminal id, properly signed.
    let mut long_id = good.body.clone();
    long_id.terminal_id = "x".repeat(33);
    let long_id = terminal::sign(&long_id, &a);

    for (what, cert) in [
        ("forged", forged),
        ("unknown signer", unknown.cert),
        ("self-signed", self_signed),
        ("expired", expired.cert),
        ("truncated", truncated),
        ("trailing byte", trailing),
        ("prefix only", good.cert[..7].to_vec()),
        ("non-canonical payload head", long_head),
        ("non-canonical role", non_canonical_role),
        ("untagged", untagged),
        ("indefinite", indefinite),
        ("33-byte id", long_id),
        ("garbage", vec![0xFF; 40]),
    ] {
        // A good certificate pending first: a refused one replaces it with nothing.
        assert_eq!(card.process(&pso(&good.cert)), [0x90, 0x00], "{what}");
        refused_unchanged(&mut card, &hex::encode(pso(&cert)), 0x6982);
        let c = challenge(&mut card);
        refused_unchanged(
            &mut card,
            &hex::encode(good.external_auth(CARD_ID, &c, NOW)),
            0x6985,
        );
        assert_eq!(rights(&mut card), 0, "{what}");
    }
    // The right certificate still works afterwards.
    authenticate(&mut card, &good, NOW);
    assert_eq!(rights(&mut card), 0x07);
}

#[test]
fn bad_external_authentication_6982_or_6985() {
    let mut card = issued();
    let clinic = clinic();
    let before = card.serialized_state();

    // Without a certificate, or without a challenge: 6985.
    let c = challenge(&mut card);
    refused_unchanged(
        &mut card,
        &hex::encode(clinic.external_auth(CARD_ID, &c, NOW)),
        0x6985,
    );
    // The challenge was consumed even so.
    assert_eq!(card.process(&pso(&clinic.cert)), [0x90, 0x00]);
    refused_unchanged(
        &mut card,
        &hex::encode(clinic.external_auth(CARD_ID, &c, NOW)),
        0x6985,
    );

    // Not yet valid / expired relative to the terminal's own time.
    for time in [clinic.body.not_before - 1, clinic.body.not_after + 1] {
        let c = challenge(&mut card);
        refused_unchanged(
            &mut card,
            &hex::encode(clinic.external_auth(CARD_ID, &c, time)),
            0x6982,
        );
    }

    // Signature bound to another card id.
    let c = challenge(&mut card);
    refused_unchanged(
        &mut card,
        &hex::encode(clinic.external_auth(b"CITIZEN-0002", &c, NOW)),
        0x6982,
    );
    // Signed by a key other than the certified one (another terminal's key).
    let c = challenge(&mut card);
    refused_unchanged(
        &mut card,
        &hex::encode(office().external_auth(CARD_ID, &c, NOW)),
        0x6982,
    );
    // A time other than the signed one.
    let c = challenge(&mut card);
    let mut ea = clinic.external_auth(CARD_ID, &c, NOW);
    ea[12] ^= 1;
    refused_unchanged(&mut card, &hex::encode(ea), 0x6982);
    // A zero signature (not even a valid scalar).
    let c = challenge(&mut card);
    let mut ea = clinic.external_auth(CARD_ID, &c, NOW);
    ea[13..].fill(0);
    refused_unchanged(&mut card, &hex::encode(ea), 0x6982);

    // Replay: a signature over a stale nonce.
    let c = challenge(&mut card);
    let ea = clinic.external_auth(CARD_ID, &c, NOW);
    assert_eq!(card.process(&ea), [0x90, 0x00]);
    refused_unchanged(&mut card, &hex::encode(&ea), 0x6985);
    let _fresh = challenge(&mut card);
    refused_unchanged(&mut card, &hex::encode(&ea), 0x6982);
    // A fresh challenge replaces an unused one: the old nonce is stale too.
    run(&mut card, &format!("{SELECT} -> ..9000"));
    let old = prepare(&mut card, &clinic);
    let _newer = challenge(&mut card);
    refused_unchanged(
        &mut card,
        &hex::encode(clinic.external_auth(CARD_ID, &old, NOW)),
        0x6982,
    );
    assert_eq!(rights(&mut card), 0);
    // SELECT forgets the certificate and the challenge.
    let c = prepare(&mut card, &clinic);
    run(&mut card, &format!("{SELECT} -> ..9000"));
    refused_unchanged(
        &mut card,
        &hex::encode(clinic.external_auth(CARD_ID, &c, NOW)),
        0x6985,
    );
    // Apart from the one success (latest time NOW, the clinic's certificate remembered as
    // verified), nothing changed.
    let mut expected = card_applet::state::PersistentState::decode(&before[..]).unwrap();
    expected.latest_time = NOW;
    let authority_key = card.state().authority_key.clone().unwrap();
    expected
        .verified_certs
        .insert(0, terminal::digest(&clinic.cert, &authority_key));
    assert_eq!(card.state(), &expected);
    assert!(card.state().access_log.is_empty());
}

#[test]
fn clinic_cannot_write_even_with_the_pin() {
    let mut card = issued();
    authenticate(&mut card, &clinic(), NOW);
    run(&mut card, &format!("{VERIFY_PIN} -> 9000"));
    for req in [
        "00DA0201 09 8001 02 8104 48454C55",
        "00DA0201",
        "00DA0206 07 8001 03 8102 4544",
        "002C0281 06 393939393939",
        "002C0381",
        "00DA0110 02 4142",
        "0047800000",
    ] {
        let want = if req.starts_with("00DA0110") || req.starts_with("0047") {
            0x6985
        } else {
            0x6982
        };
        refused_unchanged(&mut card, req, want);
    }
}

#[test]
fn terminal_authentication_needs_an_authority_key() {
    // A blank card has none: PSO is 6985.
    let mut card = blank();
    run(&mut card, &format!("{SELECT} -> ..9000"));
    refused_unchanged(&mut card, &hex::encode(pso(&clinic().cert)), 0x6985);
    // GET CHALLENGE works anywhere; Le absent announces 16 bytes.
    run(&mut card, "00840000 -> 6110\n00C0000010 -> ..9000");
    // Before SELECT: 6985 like every command.
    card.reset();
    run(&mut card, "0084000010 -> 6985");
    // In personalisation state a terminal can authenticate (nothing needs it there).
    let mut card = blank();
    run(
        &mut card,
        &format!("{SELECT} -> ..9000\n00DA0110 0C 434954495A454E2D30303031 -> 9000\n00DA0111 41 {AUTHORITY_KEY} -> 9000"),
    );
    authenticate(&mut card, &clinic(), NOW);
    assert_eq!(rights(&mut card), 0x07);
    // Changing the authority key drops what was verified under the old one.
    let other = other_authority()
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    run(
        &mut card,
        &format!("00DA0111 41 {} -> 9000", hex::encode(&other)),
    );
    assert_eq!(rights(&mut card), 0);
}

/// Mutating every byte of a certificate never panics and never verifies.
#[test]
fn every_single_byte_mutation_is_refused() {
    let good = clinic();
    let key = hex::decode(AUTHORITY_KEY).unwrap();
    assert!(terminal::verify(&good.cert, &key).is_ok());
    for at in 0..good.cert.len() {
        for x in [0x01u8, 0x80, 0xFF] {
            let mut c = good.cert.clone();
            c[at] ^= x;
            assert!(terminal::verify(&c, &key).is_err(), "byte {at} ^ {x:02X}");
        }
    }
}

/// Issue 8 (contactless model): a card that verified a terminal's certificate and saw the
/// terminal prove its key remembers the certificate's digest, so the next visit of that
/// terminal costs no signature verify on the card; the validity time is still checked, the
/// list is bounded, and a certificate is remembered only after EXTERNAL AUTHENTICATE passed.
#[test]
fn verified_terminal_certificates_are_remembered_bounded_and_still_checked_for_time() {
    let mut card = issued();
    let authority_key = card.state().authority_key.clone().unwrap();
    let before = card.state().verified_certs.clone();
    // PSO alone, or PSO and a failed EXTERNAL AUTHENTICATE: nothing remembered.
    let short = Terminal::custom(
        "clinic-short",
        role::CLINIC,
        access::READ_IDENTITY,
        NOW - DAY,
        NOW + DAY,
        &authority(),
    );
    let c = prepare(&mut card, &short);
    let mut ea = short.external_auth(CARD_ID, &c, NOW);
    ea[20] ^= 1;
    assert_eq!(sw(&card.process(&ea)), 0x6982);
    assert_eq!(card.state().verified_certs, before);
    // A success remembers it, most recent first.
    authenticate(&mut card, &short, NOW);
    let d = terminal::digest(&short.cert, &authority_key);
    assert_eq!(card.state().verified_certs[0], d);
    // A remembered certificate still authenticates (no signature check, same outcome).
    authenticate(&mut card, &short, NOW + 60);
    assert_eq!(rights(&mut card), access::READ_IDENTITY);
    assert_eq!(
        card.state()
            .verified_certs
            .iter()
            .filter(|k| **k == d)
            .count(),
        1
    );
    // Once the card's time passes its end, the remembered certificate is refused like any.
    authenticate(&mut card, &clinic(), NOW + 2 * DAY);
    assert_eq!(card.process(&pso(&short.cert)), [0x69, 0x82]);
    // Bounded: the oldest drops out.
    let many: Vec<Terminal> = (0..6)
        .map(|i| Terminal::new(&format!("clinic-{i}"), role::CLINIC, access::READ_IDENTITY))
        .collect();
    for t in &many {
        authenticate(&mut card, t, NOW + 2 * DAY);
    }
    let list = &card.state().verified_certs;
    assert_eq!(list.len(), card_applet::state::VERIFIED_CERTS_MAX);
    assert_eq!(list[0], terminal::digest(&many[5].cert, &authority_key));
    assert!(!list.contains(&d));
    // And it survives a restart of the card (it is in the persistent state).
    let state = card_applet::state::PersistentState::decode(&card.serialized_state()).unwrap();
    assert_eq!(&state.verified_certs, list);
}
