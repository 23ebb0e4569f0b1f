//! Constant-time fixed-base multiplication by the P-256 generator `G`, with a table of
//! precomputed multiples built once per process.
//!
//! Why: `p256` 0.13 / `primeorder` 0.13 have no base-point tables (`MulByGenerator` is
//! `generator() * k`, "TODO: precomputed basepoint tables"), so `G * k` costs a full
//! variable-base multiplication (256 doublings; 1.54 M instructions under callgrind). PACE
//! multiplies by `G` twice per side (the mapping key pair and `s*G` of the Generic Mapping,
//! Doc 9303-11 4.4.3.3.1), on the card and in the reader, on every clinic scan (issue 7).
//! `p256` 0.14 ships such tables: **remove this module when upgrading** and call
//! `ProjectivePoint::mul_by_generator`.
//!
//! Technique: the fixed-base windowing method (Brickell-Gordon-McCurley-Wilson; Hankerson,
//! Menezes, Vanstone, *Guide to Elliptic Curve Cryptography*, Algorithm 3.41, the
//! precomputed-table "comb" family of 3.41-3.44) with signed radix-16 digits, the layout of
//! curve25519-dalek's and BoringSSL's base-point tables. The scalar is recoded into 65 digits
//! `d_i` in `[-8, 8]` with `k = sum d_i * 16^i`; the table holds `j * 16^i * G` for
//! `j = 1..=8` and every window `i` (65 x 8 projective points, ~50 KB), so
//! `k*G = sum_i sign(d_i) * T[i][|d_i|]`: 65 additions and no doubling.
//!
//! Constant time (the scalars are the PACE secrets: mapping keys, the nonce `s`):
//! - the recoding is arithmetic on the scalar's nibbles, no branch on their values;
//! - every lookup reads all 8 entries of its window and keeps one with
//!   `subtle::ConditionallySelectable` (the identity for a zero digit), then negates it with a
//!   conditional select; no table index or branch depends on a digit;
//! - the additions are `primeorder`'s complete addition formulas (Renes-Costello-Batina
//!   2015, algorithm 4), correct for every input, the identity included, with no
//!   data-dependent branch.
//!
//! The table is public data (multiples of `G`) built lazily on first use: with `std` in a
//! `std::sync::OnceLock` (other threads wait for the one building it); without `std` in
//! `once_cell::race::OnceBox` (no_std + alloc, lock-free; if two threads race at first use both
//! build it and one copy is dropped: wasted time, never a wrong table). Building it costs
//! about 1.6 variable-base multiplications (520 point operations, no inversion; callgrind
//! 2.49 M instructions), paid once per process (the card runner, the reader tool); the reader
//! starts it early on a thread of its own ([`build_table_in_background`]).

use alloc::vec::Vec;

use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::PrimeField;
use p256::{ProjectivePoint, Scalar};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

/// Digits of a 256-bit scalar: 64 radix-16 digits, plus one for the carry out of the top one
/// (`n` is close to `2^256`, so a scalar's top nibble can be 15 and carry).
const WINDOWS: usize = 65;
/// Entries per window: `1*16^i*G ..= 8*16^i*G` (signed digits halve the 16 of unsigned ones).
const ENTRIES: usize = 8;

/// The precomputed multiples, window-major: entry `i * ENTRIES + (j - 1)` is `j * 16^i * G`.
struct Table(Vec<ProjectivePoint>);

impl Table {
    fn build() -> Self {
        let mut points = Vec::with_capacity(WINDOWS * ENTRIES);
        let mut base = ProjectivePoint::GENERATOR; // 16^i * G
        for _ in 0..WINDOWS {
            let mut p = base;
            points.push(p);
            p = base.double();
            points.push(p);
            for _ in 2..ENTRIES {
                p += &base;
                points.push(p);
            }
            // p = 8 * 16^i * G; the next window's base is 16 * 16^i * G.
            base = p.double();
        }
        // Kept projective: p256 0.13 has no batched inversion (`BatchNormalize` needs `Invert`
        // on its field, which 0.13.2 does not implement) and 520 single inversions would cost
        // more than the table's additions; a full addition costs little more than a mixed one.
        Self(points)
    }

    /// `d * 16^window * G` for a digit `d` in `[-8, 8]`, in constant time: all 8 entries
    /// are read, the identity stays for `d = 0`, the sign is applied by a conditional select.
    fn select(&self, window: usize, d: i8) -> ProjectivePoint {
        let negative = Choice::from(((d as u8) >> 7) & 1);
        let mask = d >> 7; // all ones if negative, else 0
        let magnitude = (d ^ mask).wrapping_sub(mask) as u8; // |d|, 0..=8
        let row = &self.0[window * ENTRIES..(window + 1) * ENTRIES];
        let mut p = ProjectivePoint::IDENTITY;
        for (j, entry) in (1u8..).zip(row) {
            p.conditional_assign(entry, magnitude.ct_eq(&j));
        }
        let minus = -p;
        p.conditional_assign(&minus, negative);
        p
    }
}

#[cfg(feature = "std")]
static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();

#[cfg(feature = "std")]
fn table() -> &'static Table {
    TABLE.get_or_init(Table::build)
}

/// Start building the table on a thread of its own, once per process, if it is not built yet.
/// For a process that runs a single PACE (a one-shot `civic scan`), building it on first use
/// would cost about what the table saves in that PACE (callgrind: 2.49 M instructions to
/// build, ~2.5 M saved per side; BENCHMARKS.md); started when the reader is set up, it is built
/// while the reader connects and the card answers the first PACE steps. A first use before it
/// is done waits for it (`OnceLock`); if the thread cannot be started, the first use builds it.
#[cfg(feature = "std")]
pub fn build_table_in_background() {
    use core::sync::atomic::{AtomicBool, Ordering};
    static STARTED: AtomicBool = AtomicBool::new(false);
    if TABLE.get().is_some() || STARTED.swap(true, Ordering::Relaxed) {
        return;
    }
    // Detached; an error to spawn leaves the build to the first use.
    let _ = std::thread::Builder::new()
        .name("civic-fixed-base-table".into())
        .spawn(|| {
            table();
        });
}

#[cfg(not(feature = "std"))]
fn table() -> &'static Table {
    static TABLE: once_cell::race::OnceBox<Table> = once_cell::race::OnceBox::new();
    TABLE.get_or_init(|| alloc::boxed::Box::new(Table::build()))
}

/// Signed radix-16 recoding, constant time: `k = sum d_i * 16^i`, `d_i` in `[-8, 7]` for
/// `i < 64` and `d_64` in `{0, 1}` (the final carry).
fn recode(k: &Scalar) -> Zeroizing<[i8; WINDOWS]> {
    let repr = Zeroizing::new(k.to_repr()); // big-endian
    let mut digits = Zeroizing::new([0i8; WINDOWS]);
    let mut carry = 0u8;
    for i in 0..WINDOWS - 1 {
        let byte = repr[31 - i / 2];
        let nibble = (byte >> (4 * (i % 2))) & 0x0F;
        let v = nibble + carry; // 0..=16
        carry = (v + 8) >> 4; // 1 iff v >= 8
        digits[i] = (v as i8) - ((carry as i8) << 4);
    }
    digits[WINDOWS - 1] = carry as i8;
    digits
}

fn sum_windows(digits: &[i8]) -> ProjectivePoint {
    let t = table();
    let mut acc = ProjectivePoint::IDENTITY;
    for (window, &d) in digits.iter().enumerate() {
        acc += t.select(window, d);
    }
    acc
}

/// `k * G`, constant time in `k`; equal to `ProjectivePoint::GENERATOR * k` for every `k`.
pub fn mul_generator(k: &Scalar) -> ProjectivePoint {
    sum_windows(&recode(k)[..])
}

/// `k * G` for a scalar known (publicly, by its type) to be below `2^128`, such as PACE's
/// 16-byte nonce `s`: only the 33 windows that can be non-zero (32 digits and the carry) are
/// summed. Constant time in the value of `k`; which windows are summed depends only on the
/// width, which is public.
pub fn mul_generator_u128(k: &[u8; 16]) -> ProjectivePoint {
    let mut fb = Zeroizing::new(p256::FieldBytes::default());
    fb[16..].copy_from_slice(k);
    // Below 2^128 < n: always a canonical scalar.
    let s = Scalar::from_repr(*fb).unwrap_or(Scalar::ZERO);
    let digits = recode(&s);
    // Digits 33.. of a value below 2^128 are all zero (digit 32 holds the carry).
    sum_windows(&digits[..33])
}
