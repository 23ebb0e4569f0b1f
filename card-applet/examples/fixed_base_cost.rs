//! What a multiplication by the P-256 generator costs with `fixed_base` against `p256` 0.13's
//! `GENERATOR * k`, for profiling (BENCHMARKS.md, secure-messaging section):
//!
//! ```sh
//! cargo build --release -p card-applet --example fixed_base_cost
//! valgrind --tool=callgrind target/release/examples/fixed_base_cost
//! callgrind_annotate --inclusive=yes callgrind.out.* | grep fixed_base_cost::
//! ```
//!
//! Each operation runs `N` times in its own non-inlined function (instructions per call =
//! the function's inclusive count / N); without valgrind it prints wall-clock times.
//! The table is built first, on its own, so no per-call figure includes it. With the argument
//! `background` the table is started with `build_table_in_background` and the process sleeps
//! 2 ms (a stand-in for the reader connecting and the card's first PACE answers) before the
//! first use, which then finds it built.

use std::hint::black_box;
use std::time::Instant;

use card_applet::fixed_base::{mul_generator, mul_generator_u128};
use p256::elliptic_curve::ops::LinearCombination;
use p256::elliptic_curve::Field;
use p256::{ProjectivePoint, Scalar};
use rand_core::OsRng;

const N: u32 = 100;

#[inline(never)]
fn build_table() -> ProjectivePoint {
    mul_generator(&Scalar::ONE)
}

#[inline(never)]
fn generic(ks: &[Scalar]) -> ProjectivePoint {
    ks.iter().map(|k| ProjectivePoint::GENERATOR * k).sum()
}

#[inline(never)]
fn fixed(ks: &[Scalar]) -> ProjectivePoint {
    ks.iter().map(mul_generator).sum()
}

#[inline(never)]
fn fixed_128(ss: &[[u8; 16]]) -> ProjectivePoint {
    ss.iter().map(mul_generator_u128).sum()
}

#[inline(never)]
fn lincomb(ks: &[Scalar], p: &ProjectivePoint) -> ProjectivePoint {
    ks.iter()
        .map(|k| ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, k, p, k))
        .sum()
}

#[inline(never)]
fn fixed_plus_variable(ss: &[[u8; 16]], ks: &[Scalar], p: &ProjectivePoint) -> ProjectivePoint {
    ss.iter()
        .zip(ks)
        .map(|(s, k)| mul_generator_u128(s) + *p * k)
        .sum()
}

fn timed(what: &str, f: impl FnOnce() -> ProjectivePoint) {
    let t = Instant::now();
    black_box(f());
    println!(
        "{what:<40} {:>9.1} us/call",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(N)
    );
}

fn main() {
    let ks: Vec<Scalar> = (0..N).map(|_| Scalar::random(&mut OsRng)).collect();
    let ss: Vec<[u8; 16]> = (0..N)
        .map(|_| {
            let mut s = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut OsRng, &mut s);
            s
        })
        .collect();
    let p = ProjectivePoint::GENERATOR * Scalar::random(&mut OsRng);
    if std::env::args().nth(1).as_deref() == Some("background") {
        card_applet::fixed_base::build_table_in_background();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let t = Instant::now();
    black_box(build_table());
    println!(
        "{:<40} {:>9.1} us (once)",
        "first use (table build)",
        t.elapsed().as_secs_f64() * 1e6
    );
    timed("GENERATOR * k (p256 0.13)", || generic(&ks));
    timed("fixed_base::mul_generator(k)", || fixed(&ks));
    timed("fixed_base::mul_generator_u128(s)", || fixed_128(&ss));
    timed("lincomb(G, k, P, k) (p256 0.13)", || lincomb(&ks, &p));
    timed("mul_generator_u128(s) + P * k", || {
        fixed_plus_variable(&ss, &ks, &p)
    });
}
