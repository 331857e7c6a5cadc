//! The configuration loader on any text: it never panics, and what it accepts passes the
//! validation it promises (a configuration that loads has no broken rule).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = vpn_config::load_str(text, []) {
        assert!(vpn_config::validate(&config).is_empty());
    }
});
