//! In-process APDU scripts against `Card` with a `MemoryStore` and a deterministic RNG: the
//! ISO 7816-4 layer, personalisation, the PIN, storage and every error status word. Terminal
//! authentication, rights and the access log are in `terminal_auth.rs`. The harness and the
//! script format are in `common/mod.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use card_applet::apdu::CommandApdu;
use card_applet::protocol::{internal_auth_message, Status};
use card_applet::state::PersistentState;
use card_applet::{Card, MemoryStore};
use common::*;
use p256::ecdsa::{signature::Verifier, Signature, VerifyingKey};
use rand_core::RngCore;

/// Issued-state behaviour without any terminal, run right after PERSONALISE.
const ISSUED: &str = "
00A4040007F043495649430100 -> 6F .. 8201 05 .. 9000
# Personalisation objects are frozen
00DA0110 02 4142 -> 6985
00DA0111 41 046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5 -> 6985
0047800000 -> 6985
0047810000 -> 7F49 43 86 41 04 .. 9000
# Credential writes and PIN management need a terminal with that right
00DA0202 07 8001 03 8102 4544 -> 6982
002C0281 06 313131313131 -> 6982
002C0381 -> 6982
# The office secret is gone: no object, no reference
00DA0112 20 2222222222222222222222222222222222222222222222222222222222222222 -> 6A82
0020008220 2222222222222222222222222222222222222222222222222222222222222222 -> 6A86
00200082 -> 6A86
# Anyone: card info, public key, directory, authority key
00CA010100 -> 8002 0100 .. 8901 00 8A01 00 9000
00CA010200 -> 7F49 .. 9000
00CA010300 -> 61 0A 8001 00 .. 9000
00CA011100 -> 04 .. 9000
# Credentials and the log: a right or the PIN
00CA020000 -> 6982
00CA020100 -> 6982
00CA020300 -> 6982
00CA020500 -> 6982
00CA010400 -> 6982
# Empty slot: not found, whoever asks
00CA020200 -> 6A88
# The citizen's PIN reads everything; nothing is logged
00200081 -> 63C3
0020008106 313233343536 -> 9000
00200081 -> 9000
00CA010100 -> .. 8901 00 8A01 01 9000
00CA020000 -> 8001 01 8103 414243 9000
00CA020100 -> 8001 02 8104 48454C54 9000
00CA020300 -> 8001 04 8103 454D45 9000
00CA020500 -> 8001 03 8102 4544 9000
00CA010400 -> 9000
# SELECT clears the verification
00A4040007F043495649430100 -> 6F .. 9000
00CA020000 -> 6982
00CA010100 -> .. 8901 00 8A01 00 9000
";

#[test]
fn script_matcher_works() {
    assert!(matches("AB..CD", "ABCD"));
    assert!(matches("AB..CD", "AB0011CD"));
    assert!(!matches("AB..CD", "AB0CD"));
    assert!(matches("..9000", "0102039000"));
    assert!(matches("01..03..9000", "0102039000"));
    assert!(!matches("01..04..9000", "0102039000"));
}

#[test]
fn personalisation_then_issued() {
    let mut card = personalised();
    run(&mut card, ISSUED);
    // The issuing office writes slot 2.
    authenticate(&mut card, &office(), NOW);
    run(
        &mut card,
        "00DA0202 07 8001 03 8102 4544 -> 9000
        00CA010300 -> 61 0A 8001 00 .. 61 0A 8001 02 8101 03 8202 0002 .. 9000
        # Still frozen for the office
        00DA0110 02 4142 -> 6985
        0047800000 -> 6985",
    );
    // Survives a restart from the committed state.
    let data = card.store().data().unwrap().to_vec();
    let mut again: TestCard = Card::new(MemoryStore::with_state(data), TestRng::new(1))
        .unwrap()
        .into();
    assert_eq!(again.state(), card.state());
    run(
        &mut again,
        &format!(
            "{SELECT} -> 6F .. 8201 05 .. 9000
            0020008106 313233343536 -> 9000
            00CA020200 -> 8001 03 8102 4544 9000"
        ),
    );
}

#[test]
fn select_first_and_unknown_aid() {
    let mut card = blank();
    run(
        &mut card,
        "
        00CA010100 -> 6985
        00DA0110 02 4142 -> 6985
        00A4040007F043495649430200 -> 6A82
        00CA010100 -> 6985
        00A4040C07F0434956494301 -> 9000
        00CA010100 -> 8002 0100 .. 9000
        ",
    );
    card.reset();
    run(&mut card, "00CA010100 -> 6985");
}

#[test]
fn generate_key_without_le_uses_get_response() {
    let mut card = blank();
    run(
        &mut card,
        &format!("{SELECT} -> ..9000\n00478000 -> 6146\n00C0000046 -> 7F494386410 4..9000\n00C0000000 -> 6985"),
    );
}

#[test]
fn internal_authenticate_signature_verifies() {
    let mut card = personalised();
    run(&mut card, &format!("{SELECT} -> ..9000"));
    let pk = card.process(&hex::decode("00CA010200").unwrap());
    assert_eq!(sw(&pk), 0x9000);
    assert_eq!(&pk[..5], &[0x7F, 0x49, 0x43, 0x86, 0x41]);
    let vk = VerifyingKey::from_sec1_bytes(&pk[5..70]).unwrap();
    let challenge: Vec<u8> = (0u8..32).collect();
    let mut apdu = vec![0x00, 0x88, 0x00, 0x00, 32];
    apdu.extend_from_slice(&challenge);
    apdu.push(0x00);
    let resp = card.process(&apdu);
    assert_eq!(sw(&resp), 0x9000);
    assert_eq!(resp.len(), 66);
    let sig = Signature::from_slice(&resp[..64]).unwrap();
    let msg = internal_auth_message(b"CITIZEN-0001", &challenge);
    vk.verify(&msg, &sig).unwrap();
    // Deterministic (RFC 6979): the same challenge gives the same signature.
    assert_eq!(card.process(&apdu), resp);
    // Bound to the challenge.
    let other = internal_auth_message(b"CITIZEN-0001", &[0u8; 32]);
    assert!(vk.verify(&other, &sig).is_err());
    // Challenge bounds: 15 and 65 bytes are refused.
    for n in [15usize, 65] {
        let mut a = vec![0x00, 0x88, 0x00, 0x00, n as u8];
        a.extend(std::iter::repeat_n(7u8, n));
        assert_eq!(sw(&card.process(&a)), 0x6700);
    }
}

fn credential_body(record: &[u8]) -> Vec<u8> {
    let mut b = vec![0x80, 0x01, 0x02, 0x81, 0x82];
    b.extend_from_slice(&(record.len() as u16).to_be_bytes());
    b.extend_from_slice(record);
    b
}

fn big_record() -> Vec<u8> {
    (0..1000u32).map(|i| (i * 7 + 3) as u8).collect()
}

/// PUT DATA of `body` as chained short APDUs (255-byte links).
fn put_chained(card: &mut TestCard, p1p2: [u8; 2], body: &[u8]) {
    let chunks: Vec<&[u8]> = body.chunks(255).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut apdu = vec![
            if last { 0x00 } else { 0x10 },
            0xDA,
            p1p2[0],
            p1p2[1],
            chunk.len() as u8,
        ];
        apdu.extend_from_slice(chunk);
        assert_eq!(sw(&card.process(&apdu)), 0x9000, "link {i}");
    }
}

/// GET DATA with short Le 00 then GET RESPONSE until 9000.
fn get_short(card: &mut TestCard, p1p2: [u8; 2]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut resp = card.process(&[0x00, 0xCA, p1p2[0], p1p2[1], 0x00]);
    let mut rounds = 0;
    loop {
        let (data, s) = resp.split_at(resp.len() - 2);
        out.extend_from_slice(data);
        match s {
            [0x90, 0x00] => return out,
            [0x61, xx] => {
                assert!(data.len() <= 256);
                resp = card.process(&[0x00, 0xC0, 0x00, 0x00, *xx]);
            }
            other => panic!("unexpected SW {other:02X?}"),
        }
        rounds += 1;
        assert!(rounds < 300);
    }
}

#[test]
fn chained_1000_byte_credential_read_via_get_response() {
    // The office writes; the citizen's PIN reads health data back.
    let mut card = selected_personalised();
    run(&mut card, "0020008106 313233343536 -> 9000");
    let body = credential_body(&big_record());
    assert_eq!(body.len(), 1007);
    put_chained(&mut card, [0x02, 0x06], &body);
    // Exact chunking. The card is in a secure-messaging session and these are short
    // protected APDUs, so each answer carries at most 223 plain bytes (its protected form must
    // fit 256: `sm::SHORT_PROTECTED_MAX`): 223 + 61 00 three times (784, 561, 338 bytes
    // left), 223 + 61 73, then 115 + 9000.
    let max = card_applet::sm::SHORT_PROTECTED_MAX;
    assert_eq!(max, 223);
    let r = card.process(&hex::decode("00CA020600").unwrap());
    assert_eq!(r.len(), max + 2);
    assert_eq!(&r[max..], &[0x61, 0x00]);
    assert_eq!(&r[..max], &body[..max]);
    for _ in 0..2 {
        let r = card.process(&hex::decode("00C0000000").unwrap());
        assert_eq!(&r[max..], &[0x61, 0x00]);
    }
    let r = card.process(&hex::decode("00C0000000").unwrap());
    assert_eq!(&r[max..], &[0x61, 0x73]);
    let r = card.process(&hex::decode("00C0000073").unwrap());
    assert_eq!(r.len(), 0x73 + 2);
    assert_eq!(&r[0x73..], &[0x90, 0x00]);
    assert_eq!(&r[..0x73], &body[1007 - 0x73..]);
    // And the whole thing through the helper.
    assert_eq!(get_short(&mut card, [0x02, 0x06]), body);
    // Directory shows the length.
    run(
        &mut card,
        "00CA010300 -> .. 61 0A 8001 06 8101 02 8202 03E8 9000",
    );
    // Nothing pending any more.
    run(&mut card, "00C0000000 -> 6985");
}

#[test]
fn extended_apdus_write_and_read_in_one_go() {
    // The office writes; the citizen's PIN reads health data back.
    let mut card = selected_personalised();
    run(&mut card, "0020008106 313233343536 -> 9000");
    let body = credential_body(&big_record());
    let put = CommandApdu {
        cla: 0,
        ins: 0xDA,
        p1: 0x02,
        p2: 0x04,
        data: body.clone(),
        ne: 0,
        extended: true,
    };
    assert_eq!(card.process(&put.to_bytes()), vec![0x90, 0x00]);
    let r = card.process(&hex::decode("00CA0204000000").unwrap());
    assert_eq!(sw(&r), 0x9000);
    assert_eq!(&r[..r.len() - 2], &body[..]);
    // Extended Le smaller than the data: Ne bytes + 61xx.
    let r = card.process(&hex::decode("00CA0204000100").unwrap());
    assert_eq!(r.len(), 258);
    assert_eq!(&r[256..], &[0x61, 0x00]);
    let r = card.process(&hex::decode("00C00000000000").unwrap());
    assert_eq!(sw(&r), 0x9000);
    assert_eq!(&r[..r.len() - 2], &body[256..]);
}

#[test]
fn le_absent_announces_everything_pending() {
    let mut card = personalised();
    run(
        &mut card,
        &format!(
            "{SELECT} -> ..9000
            0020008106 313233343536 -> 9000
            # Le absent: 61xx with the whole response pending
            00CA0200 -> 6108
            00C0000008 -> 8001 01 8103 414243 9000
            # Le shorter than the data
            00CA020003 -> 800101 6105
            00C0000000 -> 8103 414243 9000
            # Any other command discards pending data
            00CA020003 -> 800101 6105
            {SELECT} -> ..9000
            00C0000000 -> 6985
            0020008106 313233343536 -> 9000
            # GET RESPONSE with bad P1P2 keeps the data, and wrong length
            00CA020003 -> 800101 6105
            00C0010000 -> 6A86
            00C0000002 -> 8103 6103
            00C0000000 -> 414243 9000
            "
        ),
    );
}

#[test]
fn chain_mismatch_and_cap() {
    let mut card = selected_personalised();
    run(
        &mut card,
        &format!(
            "# A chain broken by a different INS/P1/P2: 6883, chain dropped
            10DA0206 03 800103 -> 9000
            00DA0207 04 81024544 -> 6883
            # The rest alone is now malformed (the chain was dropped)
            00DA0206 04 81024544 -> 6A80
            00CA020600 -> 6A88
            # A chain with GET RESPONSE or an unknown INS
            10C0000000 -> 6884
            10B0000001 00 -> 6D00
            # A chain interrupted by SELECT
            10DA0206 03 800103 -> 9000
            {SELECT} -> 6883
            "
        ),
    );
    // Chain cap: STORAGE_BUDGET + 1 KiB.
    let before = card.serialized_state();
    let link = {
        // The largest link that still fits one extended APDU once protected (SM adds the
        // padding, DO87 and the MAC).
        let mut a = vec![0x10, 0xDA, 0x02, 0x06, 0x00, 0xFF, 0x00];
        a.extend(std::iter::repeat_n(0u8, 0xFF00));
        a
    };
    assert_eq!(sw(&card.process(&link)), 0x9000);
    assert_eq!(sw(&card.process(&link)), 0x6700);
    // The chain is gone: a final link alone is just a (bad) command.
    assert_eq!(
        sw(&card.process(&[0x00, 0xDA, 0x02, 0x06, 0x01, 0x00])),
        0x6A80
    );
    assert_eq!(card.serialized_state(), before);
}

#[test]
fn pin_tries_block_and_office_unblocks() {
    let mut card = personalised();
    run(
        &mut card,
        &format!(
            "{SELECT} -> ..9000
            0020008106 313131313131 -> 63C2
            00200081 -> 63C2
            0020008106 313131313131 -> 63C1
            # Format errors cost no try
            0020008106 31313131313A -> 6A80
            0020008105 3131313131 -> 6700
            00200081 -> 63C1
            0020008106 313131313131 -> 6983
            # Blocked: even the right PIN fails, and the status says blocked
            0020008106 313233343536 -> 6983
            00200081 -> 6983
            00CA010100 -> .. 8501 00 .. 9000
            # The citizen cannot change a blocked PIN
            002400810C 313233343536 393939393939 -> 6983
            # Unblocking needs a terminal with PIN management
            002C0281 06 363534333231 -> 6982
            "
        ),
    );
    // A clinic terminal has no PIN management.
    authenticate(&mut card, &clinic(), NOW);
    refused_unchanged(&mut card, "002C0281 06 363534333231", 0x6982);
    refused_unchanged(&mut card, "002C0381", 0x6982);
    // The issuing office unblocks: RESET RETRY COUNTER with a new PIN.
    authenticate(&mut card, &office(), NOW);
    run(
        &mut card,
        "002C0281 06 363534333231 -> 9000
        00CA010100 -> .. 8501 03 .. 9000
        0020008106 313233343536 -> 63C2
        0020008106 363534333231 -> 9000
        00200081 -> 9000
        # A successful VERIFY restores the counter
        00CA010100 -> .. 8501 03 .. 9000
        # P1=03: counter only
        0020008106 313131313131 -> 63C2
        002C0381 -> 9000
        00CA010100 -> .. 8501 03 .. 9000",
    );
    // Survives a power cycle: the counter is persistent.
    run(&mut card, "0020008106 313131313131 -> 63C2");
    card.reset();
    run(
        &mut card,
        &format!("{SELECT} -> ..9000\n00200081 -> 63C2\n0020008106 313131313131 -> 63C1"),
    );
    let reloaded = Card::new(
        MemoryStore::with_state(card.store().data().unwrap().to_vec()),
        TestRng::new(3),
    )
    .unwrap();
    assert_eq!(reloaded.state().pin_tries, 1);
}

#[test]
fn change_reference_data() {
    let mut card = personalised();
    run(
        &mut card,
        &format!(
            "{SELECT} -> ..9000
            # Wrong old PIN costs a try
            002400810C 313131313131 393939393939 -> 63C2
            # Length and format
            002400810B 313233343536 3939393939 -> 6700
            002400810C 313233343536 39393939393A -> 6A80
            0024008200 -> 6A86
            # Right old PIN: the new one is set and the counter restored
            002400810C 313233343536 393939393939 -> 9000
            00200081 -> 9000
            00CA010100 -> .. 8501 03 .. 9000
            0020008106 313233343536 -> 63C2
            0020008106 393939393939 -> 9000
            "
        ),
    );
}

#[test]
fn pin_counter_is_persisted_before_the_comparison() {
    let mut card = personalised();
    run(&mut card, &format!("{SELECT} -> ..9000"));
    let before = card.serialized_state();
    card.store_mut().set_fail_commits(true);
    // The decrement cannot be persisted: no comparison happens, even for the right PIN.
    run(
        &mut card,
        "0020008106 313233343536 -> 6581\n0020008106 313131313131 -> 6581\n00200081 -> 63C3",
    );
    assert_eq!(card.serialized_state(), before);
    card.store_mut().set_fail_commits(false);
    run(&mut card, "0020008106 313233343536 -> 9000");
}

#[test]
fn unknown_cla_6e00() {
    let mut card = selected_blank();
    for req in [
        "80CA010100",
        "01CA010100",
        "20CA010100",
        "40CA010100",
        "FFCA010100",
        "84DA0110024142",
        "11DA0110024142",
    ] {
        refused_unchanged(&mut card, req, 0x6E00);
    }
}

#[test]
fn unknown_ins_6d00() {
    let mut card = selected_blank();
    for req in [
        "00B0000000",
        "00CB010100",
        "00DB0110024142",
        "00000000",
        "00E60000",
        "00870000",
        "002B00BE 01 00",
    ] {
        refused_unchanged(&mut card, req, 0x6D00);
    }
}

#[test]
fn wrong_lc_le_6700() {
    let mut card = selected_personalised();
    for req in [
        // GET DATA with a data field
        "00CA01010100",
        // ACTIVATE / GENERATE KEY with data
        "004400000100",
        "00478000 01 00",
        // VERIFY PIN with 5 and 7 digits
        "0020008105 3132333435",
        "0020008107 31323334353637",
        // CHANGE REFERENCE DATA with 11 bytes
        "002400810B 3132333435363132333435",
        // INTERNAL AUTHENTICATE challenge of 15 bytes
        "008800000F 000102030405060708090A0B0C0D0E",
        // SELECT with 17 bytes of AID
        "00A4040011 F0434956494301F0434956494301F0434956",
        // GET CHALLENGE with data or a Le too short for 16 bytes; PSO without a certificate;
        // EXTERNAL AUTHENTICATE with 71 or 73 bytes or none
        "0084000001 00 10",
        "0084000008",
        "002A00BE",
        "002A00BE 00",
        "00820000",
        "0082000047 000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F00010203040506",
        "0082000049 000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F0001020304050607 08",
    ] {
        refused_unchanged(&mut card, req, 0x6700);
    }
}

#[test]
fn truncated_and_oversize_apdus_6700() {
    let mut card = selected_personalised();
    for req in [
        "",
        "00",
        "00CA01",
        // short Lc = 5 with 3 bytes
        "00DA0110 05 414243",
        // short Lc = 0
        "00DA0110 00 41",
        // trailing bytes after Le
        "00CA0101 00 00",
        "00DA0110 02 4142 00 00",
        // extended: Lc = 0, truncated, one-byte Le, trailing
        "00DA0110 000000 41",
        "00DA0110 000004 414243",
        "00DA0110 000002 4142 00",
        "00DA0110 000002 4142 0000 00",
        "00CA0101 00 00",
    ] {
        refused_unchanged(&mut card, req, 0x6700);
    }
    // 70,000 bytes: no length form describes it.
    let mut huge = vec![0x00, 0xDA, 0x02, 0x00, 0x00, 0xFF, 0xFF];
    huge.extend(std::iter::repeat_n(0u8, 70_000));
    let before = card.serialized_state();
    assert_eq!(card.process(&huge), vec![0x67, 0x00]);
    assert_eq!(card.serialized_state(), before);
}

#[test]
fn bad_p1p2_6a86() {
    let mut card = selected_personalised();
    for req in [
        "00A4000007F043495649430100",
        "00A4040407F043495649430100",
        "0047820000",
        "0047800100",
        "00880100200000000000000000000000000000000000000000000000000000000000000000",
        "0020018106313233343536",
        "0020008306313233343536",
        "0024008006313233343536",
        "002C0181",
        "002C0282 06 313233343536",
        "00440100",
        // The office secret reference (VERIFY P2=82) is gone
        "0020008220 1111111111111111111111111111111111111111111111111111111111111111",
        "00200082",
        // GET CHALLENGE, PSO other than VERIFY CERTIFICATE, EXTERNAL AUTHENTICATE P1P2
        "0084000110",
        "0084010010",
        "002A9E9A 01 00",
        "002A00BF 01 00",
        "002A80BE 01 00",
        "0082000148 000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F000102030405060708090A0B0C0D0E0F0001020304050607",
    ] {
        refused_unchanged(&mut card, req, 0x6A86);
    }
}

#[test]
fn bad_data_6a80() {
    let mut card = selected_personalised();
    // Back to a personalisation-state card for the personalisation objects.
    let mut perso = selected_blank();
    for req in [
        // card id: control character, too long (33), empty handled as delete? no: empty is bad
        "00DA0110 03 41 0A 42",
        "00DA0110 21 414141414141414141414141414141414141414141414141414141414141414141",
        "00DA0110",
        // authority key: not on the curve, compressed form, wrong length
        "00DA0111 41 046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F6",
        "00DA0111 21 036B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296",
        "00DA0111 02 0400",
        // credential bodies: bad kind, missing record, empty record, extra TLV, bad TLV
        "00DA0200 07 8001 09 8102 4142",
        "00DA0200 03 8001 01",
        "00DA0200 05 8001 01 8100",
        "00DA0200 09 8001 01 8102 4142 8300",
        "00DA0200 04 8001 01 81",
        "00DA0200 07 8102 4142 8001 01",
    ] {
        refused_unchanged(&mut perso, req, 0x6A80);
    }
    for req in [
        // non-digit PINs
        "0020008106 31323334353A",
        "002C0281 06 3132333435 20",
    ] {
        refused_unchanged(&mut card, req, 0x6A80);
    }
}

#[test]
fn unknown_object_6a82() {
    let mut card = selected_personalised();
    for req in [
        "00CA030000",
        "00CA021000",
        "00CA000000",
        "00CA010500",
        // The office secret object of issue 2 is gone
        "00CA011200",
        "00DA0112 20 1111111111111111111111111111111111111111111111111111111111111111",
        "00DA0999 01 00",
        "00DA0210 08 8001 01 8103 414243",
    ] {
        refused_unchanged(&mut card, req, 0x6A82);
    }
}

#[test]
fn storage_full_6a84() {
    let mut card = selected_personalised();
    let record = vec![0x5Au8; 8000];
    let mut full = false;
    for slot in 2u8..16 {
        let put = CommandApdu {
            cla: 0,
            ins: 0xDA,
            p1: 0x02,
            p2: slot,
            data: credential_body(&record),
            ne: 0,
            extended: true,
        };
        let before = card.serialized_state();
        let r = card.process(&put.to_bytes());
        match sw(&r) {
            0x9000 => assert!(card.serialized_state().len() <= 65_536),
            0x6A84 => {
                assert_eq!(card.serialized_state(), before);
                full = true;
                // Card info reports little free space left.
                let info = card.process(&hex::decode("00CA010100").unwrap());
                let free = card_applet::protocol::tlv::find(&info[..info.len() - 2], 0x83)
                    .unwrap()
                    .unwrap();
                let free = u32::from_be_bytes(free.try_into().unwrap()) as usize;
                assert!(free < 8000 + 20, "free {free}");
                break;
            }
            other => panic!("SW {other:04X}"),
        }
    }
    assert!(full, "the card never filled up");
    // A record larger than the whole budget.
    let put = CommandApdu {
        cla: 0,
        ins: 0xDA,
        p1: 0x02,
        p2: 0x0F,
        data: credential_body(&vec![1u8; 65_000]),
        ne: 0,
        extended: true,
    };
    refused_unchanged(&mut card, &hex::encode(put.to_bytes()), 0x6A84);
    // Deleting frees space again.
    run(&mut card, "00DA0202 -> 9000");
}

#[test]
fn no_rights_on_issued_card_6982() {
    let mut card = personalised();
    run(&mut card, &format!("{SELECT} -> ..9000\n00440000 -> 6985"));
    for req in [
        "00DA0200 07 8001 03 8102 4544",
        "00DA0200",
        "002C0281 06 313131313131",
        "002C0381",
        "00CA020000",
        "00CA020100",
        "00CA020300",
        "00CA020500",
        "00CA010400",
    ] {
        refused_unchanged(&mut card, req, 0x6982);
    }
    // Even the citizen's PIN does not allow writes or PIN management.
    run(&mut card, "0020008106 313233343536 -> 9000");
    for req in [
        "00DA0200 07 8001 03 8102 4544",
        "00DA0200",
        "002C0281 06 313131313131",
        "002C0381",
    ] {
        refused_unchanged(&mut card, req, 0x6982);
    }
}

#[test]
fn personalisation_objects_after_activation_6985() {
    // Even the issuing office cannot change them.
    let mut card = selected_personalised();
    for req in [
        "00DA0110 02 4142".to_string(),
        format!("00DA0111 41 {AUTHORITY_KEY}"),
        "0047800000".to_string(),
        "00440000".to_string(),
        "00DA0101 01 00".to_string(),
        "00DA0104 01 00".to_string(),
        "00DA0104".to_string(),
    ] {
        refused_unchanged(&mut card, &req, 0x6985);
    }
}

#[test]
fn activate_needs_everything() {
    let mut card = selected_blank();
    run(
        &mut card,
        &format!(
            "00DA0110 02 4142 -> 9000
            00440000 -> 6985
            0047800000 -> ..9000
            00440000 -> 6985
            002C0281 06 313233343536 -> 9000
            # No authority key: no terminal could ever write to the card
            00440000 -> 6985
            00DA0111 41 {AUTHORITY_KEY} -> 9000
            00440000 -> 9000"
        ),
    );
}

#[test]
fn torn_writes_6581_leave_state_unchanged() {
    let mut card = selected_personalised();
    card.store_mut().set_fail_commits(true);
    for req in [
        "00DA0202 07 8001 03 8102 4544",
        "00DA0200",
        "002C0281 06 393939393939",
        "002C0381",
        "002400810C 313233343536 393939393939",
        "0020008106 313233343536",
    ] {
        refused_unchanged(&mut card, req, 0x6581);
    }
    // Personalisation-state writes.
    let mut perso = selected_blank();
    run(
        &mut perso,
        "00DA0110 02 4142 -> 9000\n002C0281 06 313233343536 -> 9000",
    );
    perso.store_mut().set_fail_commits(true);
    for req in [
        "0047800000".to_string(),
        "00DA0110 02 4143".to_string(),
        format!("00DA0111 41 {AUTHORITY_KEY}"),
        "00DA0200 07 8001 03 8102 4544".to_string(),
    ] {
        refused_unchanged(&mut perso, &req, 0x6581);
    }
    assert!(perso.state().card_key.is_none());
    perso.store_mut().set_fail_commits(false);
    run(
        &mut perso,
        &format!("0047800000 -> ..9000\n00DA0111 41 {AUTHORITY_KEY} -> 9000"),
    );
    perso.store_mut().set_fail_commits(true);
    refused_unchanged(&mut perso, "00440000", 0x6581);
    // The card works again once the store does, and memory equals the store.
    card.store_mut().set_fail_commits(false);
    run(&mut card, "00DA0202 07 8001 03 8102 4544 -> 9000");
    assert_eq!(card.store().data().unwrap(), &card.serialized_state()[..]);
}

#[test]
fn corrupt_state_is_an_error_at_startup() {
    let card = personalised();
    let mut data = card.store().data().unwrap().to_vec();
    let n = data.len();
    data[n / 2] ^= 1;
    assert!(Card::new(MemoryStore::with_state(data), TestRng::new(0)).is_err());
    assert!(Card::new(MemoryStore::with_state(vec![]), TestRng::new(0)).is_err());
    assert!(Card::new(
        MemoryStore::with_state(b"garbage".to_vec()),
        TestRng::new(0)
    )
    .is_err());
    // The serialised state decodes to what the card holds.
    let decoded = PersistentState::decode(card.store().data().unwrap()).unwrap();
    assert_eq!(&decoded, card.state());
}

#[test]
fn file_store_card_persists_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.state");
    {
        let mut card = Card::new(card_applet::FileStore::new(&path), TestRng::new(9)).unwrap();
        let raw = hex::decode(SELECT).unwrap();
        assert_eq!(sw(&card.process(&raw)), 0x9000);
        assert!(!path.exists());
        assert_eq!(
            card.process(&hex::decode("00DA0110024142").unwrap()),
            [0x90, 0]
        );
        assert!(path.exists());
    }
    let mut card = Card::with_os_rng(card_applet::FileStore::new(&path)).unwrap();
    assert_eq!(card.state().card_id.as_deref(), Some(&b"AB"[..]));
    card.process(&hex::decode(SELECT).unwrap());
    assert_eq!(
        card.process(&hex::decode("00CA011000").unwrap()),
        [0x41, 0x42, 0x90, 0]
    );
}

#[test]
fn status_words_match_protocol() {
    assert_eq!(Status::WrongLength.sw(), 0x6700);
    assert_eq!(Status::NotEnoughMemory.sw(), 0x6A84);
}

/// `process` never panics, whatever the input, in any state.
#[test]
fn process_never_panics_on_arbitrary_input() {
    let mut rng = TestRng::new(7);
    let mut cards = [blank(), personalised(), selected_personalised()];
    let interesting_ins = [
        0xA4u8, 0xCA, 0xDA, 0x47, 0x88, 0x20, 0x24, 0x2C, 0x44, 0xC0, 0x84, 0x2A, 0x82, 0x00, 0xFF,
    ];
    let cert = clinic().cert;
    for i in 0..30_000u32 {
        let card = &mut cards[(i % 3) as usize];
        let len = match rng.next_u32() % 64 {
            0..=7 => rng.next_u32() as usize % 5,
            8..=39 => 4 + rng.next_u32() as usize % 40,
            40..=55 => 4 + rng.next_u32() as usize % 300,
            56..=62 => 4 + rng.next_u32() as usize % 2000,
            _ => 4 + rng.next_u32() as usize % 70_000,
        };
        let mut apdu = vec![0u8; len];
        rng.fill_bytes(&mut apdu);
        if len >= 4 && rng.next_u32() % 4 != 0 {
            apdu[0] &= 0x10;
            apdu[1] = interesting_ins[rng.next_u32() as usize % interesting_ins.len()];
            if rng.next_u32() % 2 == 0 {
                // Make the length fields consistent half of the time.
                let data_len = len.saturating_sub(5).min(255);
                apdu.truncate(5 + data_len);
                if apdu.len() > 4 {
                    apdu[4] = data_len as u8;
                }
            }
        }
        if rng.next_u32() % 50 == 0 {
            card.process(&hex::decode(SELECT).unwrap());
        }
        if rng.next_u32() % 500 == 0 {
            card.reset();
        }
        if rng.next_u32() % 20 == 0 {
            // A valid, truncated or mutated certificate, then a random EXTERNAL AUTHENTICATE.
            let mut c = cert.clone();
            match rng.next_u32() % 3 {
                0 => {}
                1 => c.truncate(rng.next_u32() as usize % c.len()),
                _ => {
                    let at = rng.next_u32() as usize % c.len();
                    c[at] = rng.next_u32() as u8;
                }
            }
            if !c.is_empty() {
                card.process(&pso(&c));
            }
            card.process(&[0x00, 0x84, 0x00, 0x00, 0x10]);
        }
        // Mostly the card's raw bytes; one in four through the test reader's secure channel
        // (protected when a session is open).
        let protectable = card.channel.is_some()
            && card_applet::apdu::CommandApdu::parse(&apdu).is_ok_and(|a| a.cla & !0x10 == 0);
        let r = if protectable && rng.next_u32() % 4 == 0 {
            card.process(&apdu)
        } else {
            card.card.process(&apdu)
        };
        assert!(r.len() >= 2 && r.len() <= 65_535);
    }
}

#[test]
fn select_without_le_announces_the_whole_fci() {
    let mut card = blank();
    // A blank card's FCI is 6F 30 { .. }: 0x32 bytes pending.
    run(
        &mut card,
        "00A4040007F0434956494301 -> 6132\n00C0000032 -> 6F30 .. 8808 0000000000000000 9000",
    );
}
