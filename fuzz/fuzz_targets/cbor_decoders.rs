//! The `cbor_decoders` target: see `civic_fuzz::cbor_decoders` for what it checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    civic_fuzz::cbor_decoders::check(data);
});
