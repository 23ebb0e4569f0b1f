//! The fuzz targets' own checks (`fuzz/src`, included here as a module, so the invariants are
//! written once) run in the workspace test suite, which CI runs: on every checked-in seed and
//! every input of a crash fixed before (`fuzz/corpus-seeds/<target>`,
//! `fuzz/regressions/<target>`), then on inputs proptest makes, arbitrary and by editing the
//! seeds. This is not fuzzing (no coverage feedback; `scripts/fuzz` does that) but it keeps
//! every target building and every known input passing on the stable toolchain in CI.
//!
//! Case counts are small so the suite stays quick; `PROPTEST_CASES=N` runs N of each.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations,
    dead_code
)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;

#[path = "../../fuzz/src/lib.rs"]
mod civic_fuzz;

/// The seeds and regression inputs of one target, with their paths.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["corpus-seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let all = inputs(target);
    assert!(!all.is_empty(), "no seeds for {target}");
    for (path, data) in &all {
        // Printed only when the test fails: which input broke.
        eprintln!("{target}: {}", path.display());
        check(data);
    }
    all.len()
}

/// One edit of a seed: overwrite, insert or delete a byte at a position, or cut the input.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn mutate(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = data.len();
        match *e {
            Edit::Set(i, b) if n > 0 => data[i % n] = b,
            Edit::Insert(i, b) => data.insert(i % (n + 1), b),
            Edit::Delete(i) if n > 0 => {
                data.remove(i % n);
            }
            Edit::Truncate(i) => data.truncate(i % (n + 1)),
            _ => {}
        }
    }
    data
}

/// A seed of `target` with up to 8 edits.
fn edited_seed(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = inputs(target).into_iter().map(|(_, d)| d).collect();
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, edits)| mutate(seed, &edits))
}

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // A failure is reported with its minimal input; turn it into a file under
        // fuzz/regressions/<target> rather than a proptest-regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

macro_rules! target_tests {
    ($target:ident, $seeds:ident, $arbitrary:ident, $edited:ident, $max_len:expr, $cases:expr) => {
        #[test]
        fn $seeds() {
            let n = replay(stringify!($target), civic_fuzz::$target::check);
            eprintln!("{}: {n} inputs", stringify!($target));
        }

        proptest! {
            #![proptest_config(config($cases))]
            #[test]
            fn $arbitrary(data in proptest::collection::vec(any::<u8>(), 0..$max_len)) {
                civic_fuzz::$target::check(&data);
            }

            #[test]
            fn $edited(data in edited_seed(stringify!($target))) {
                civic_fuzz::$target::check(&data);
            }
        }
    };
}

target_tests!(
    apdu_parse,
    apdu_parse_seeds_and_regressions,
    apdu_parse_arbitrary,
    apdu_parse_edited_seeds,
    300,
    512
);
target_tests!(
    terminal_cert,
    terminal_cert_seeds_and_regressions,
    terminal_cert_arbitrary,
    terminal_cert_edited_seeds,
    300,
    128
);
target_tests!(
    cbor_decoders,
    cbor_decoders_seeds_and_regressions,
    cbor_decoders_arbitrary,
    cbor_decoders_edited_seeds,
    600,
    128
);
target_tests!(
    merkle_proof,
    merkle_proof_seeds_and_regressions,
    merkle_proof_arbitrary,
    merkle_proof_edited_seeds,
    200,
    256
);
target_tests!(
    applet_session,
    applet_session_seeds_and_regressions,
    applet_session_arbitrary,
    applet_session_edited_seeds,
    400,
    32
);
target_tests!(
    chain_verify,
    chain_verify_seeds_and_regressions,
    chain_verify_arbitrary,
    chain_verify_edited_seeds,
    64,
    16
);
