//! The fixed-base table multiplication (`card_applet::fixed_base`, used by PACE on both sides)
//! must give exactly `ProjectivePoint::GENERATOR * k`: a wrong table entry, digit recoding
//! (the signed digits' carries, the 65th window) or sign would change PACE's points and break
//! every session with another implementation.

use card_applet::fixed_base::{mul_generator, mul_generator_u128};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::elliptic_curve::PrimeField;
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256};
use proptest::prelude::*;

fn enc(p: &ProjectivePoint) -> Vec<u8> {
    AffinePoint::from(*p)
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

fn scalar_be(bytes: [u8; 32]) -> Scalar {
    <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(bytes))
}

fn assert_matches_generator(k: &Scalar, what: &str) {
    assert_eq!(
        enc(&mul_generator(k)),
        enc(&(ProjectivePoint::GENERATOR * k)),
        "fixed-base k*G differs from GENERATOR * k for {what}"
    );
}

fn nibbles(n: u8) -> [u8; 32] {
    [n << 4 | n; 32]
}

#[test]
fn fixed_base_comb_equals_generator_times_k_for_edge_scalars() {
    let n_minus = |i: u64| -Scalar::from(i);
    let mut top_bit = [0u8; 32];
    top_bit[0] = 0x80;
    let mut low_128_ones = [0u8; 32];
    low_128_ones[16..].fill(0xFF);
    let mut ones_below_top_nibble = [0xFFu8; 32];
    ones_below_top_nibble[0] = 0x0F;
    let cases: Vec<(Scalar, String)> = vec![
        (Scalar::ZERO, "0".into()),
        (Scalar::ONE, "1".into()),
        (Scalar::from(2u64), "2".into()),
        (Scalar::from(7u64), "7 (largest positive digit)".into()),
        (Scalar::from(8u64), "8 (first negative digit, carry)".into()),
        (Scalar::from(15u64), "15".into()),
        (Scalar::from(16u64), "16".into()),
        (Scalar::from(0x88u64), "0x88 (carry chain)".into()),
        (
            n_minus(1),
            "n-1 (top nibble F: carry into window 65)".into(),
        ),
        (n_minus(2), "n-2".into()),
        (scalar_be(top_bit), "2^255".into()),
        (scalar_be(low_128_ones), "2^128-1 (all-ones nibbles)".into()),
        (
            scalar_be(ones_below_top_nibble),
            "2^252-1 (all-ones nibbles)".into(),
        ),
        (
            scalar_be(nibbles(0xF)),
            "all-ones nibbles, reduced mod n".into(),
        ),
        (scalar_be(nibbles(0x8)), "all nibbles 8".into()),
        (scalar_be(nibbles(0x7)), "all nibbles 7".into()),
    ];
    for (k, what) in &cases {
        assert_matches_generator(k, what);
    }
    // Digits every value 0..=15 in every window position.
    for d in 0u8..16 {
        assert_matches_generator(&scalar_be(nibbles(d)), &format!("all nibbles {d:x}"));
    }
}

#[test]
fn fixed_base_comb_of_a_128_bit_nonce_equals_generator_times_s() {
    for s in [[0u8; 16], [0xFF; 16], [0x88; 16], [0x77; 16], {
        let mut b = [0u8; 16];
        b[15] = 1;
        b
    }] {
        let mut fb = FieldBytes::default();
        fb[16..].copy_from_slice(&s);
        let k = Scalar::from_repr(fb).unwrap();
        assert_eq!(
            enc(&mul_generator_u128(&s)),
            enc(&(ProjectivePoint::GENERATOR * k)),
            "fixed-base s*G (33 windows) differs for s = {s:02x?}"
        );
    }
}

proptest! {
    #[test]
    fn fixed_base_comb_equals_generator_times_k_for_random_scalars(bytes in any::<[u8; 32]>()) {
        let k = scalar_be(bytes);
        prop_assert_eq!(enc(&mul_generator(&k)), enc(&(ProjectivePoint::GENERATOR * k)));
    }

    #[test]
    fn fixed_base_comb_of_random_128_bit_nonces_equals_generator_times_s(s in any::<[u8; 16]>()) {
        let mut fb = FieldBytes::default();
        fb[16..].copy_from_slice(&s);
        let k = Scalar::from_repr(fb).unwrap();
        prop_assert_eq!(enc(&mul_generator_u128(&s)), enc(&(ProjectivePoint::GENERATOR * k)));
    }
}
