//! The ledger's `verify_chain` and the clinic cache's `sync` fed tampered blocks: nothing but
//! the real chain is ever accepted, and a refused sync writes nothing. See `civic_fuzz::chain`
//! for the input format and the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    civic_fuzz::chain_verify::check(data);
});
