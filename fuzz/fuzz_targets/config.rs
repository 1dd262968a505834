//! Configuration parsing: `GatewayConfig::from_yaml`, `from_toml` and `from_json` on arbitrary
//! text must return a configuration or an error, never panic.
//!
//! The first byte picks the reader; the rest is the text. Seeds from `fuzz/seeds/config` (the
//! example configurations) let the fuzzer start from valid documents and reach the checks that
//! run after parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::GatewayConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&format, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let parsed = match format % 3 {
        0 => GatewayConfig::from_yaml(text),
        1 => GatewayConfig::from_toml(text),
        _ => GatewayConfig::from_json(text),
    };
    if let Err(error) = parsed {
        // Rendering the error (field paths, lines, messages) is part of the contract too.
        let _ = error.to_string();
    }
});
