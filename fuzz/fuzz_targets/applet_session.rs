//! The `applet_session` target: see `civic_fuzz::applet_session` for what it checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    civic_fuzz::applet_session::check(data);
});
