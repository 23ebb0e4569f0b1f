//! Merkle inclusion proofs (`civic_registry::merkle`, RFC 9162 section 2.1): an honest proof
//! always verifies, and no edited proof lets other data through. See `civic_fuzz::merkle` for
//! the input format and the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    civic_fuzz::merkle_proof::check(data);
});
