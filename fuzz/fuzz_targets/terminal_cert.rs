//! The `terminal_cert` target: see `civic_fuzz::terminal_cert` for what it checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    civic_fuzz::terminal_cert::check(data);
});
