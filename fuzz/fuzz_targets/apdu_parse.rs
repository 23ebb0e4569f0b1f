//! The `apdu_parse` target: see `civic_fuzz::apdu_parse` for what it checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    civic_fuzz::apdu_parse::check(data);
});
