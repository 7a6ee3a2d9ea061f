//! The config file (`understudy.toml`, every section: http, dhcp, tftp, boot, failover,
//! capture, sync) as `serve` loads it: errors, never panics; a parse error points at a
//! line and column inside the text; a config that validates gives a failover state machine
//! configuration; durations and sizes read back from their canonical spelling.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use understudy::config::{Config, ConfigError, parse_duration, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(cfg) => {
            let _ = cfg.warnings();
            if let Some(f) = &cfg.failover {
                f.machine_config().expect("a validated failover section configures the state machine");
            }
        }
        Err(ConfigError::Parse { line, column, .. }) => {
            let lines = text.split('\n').count();
            assert!((1..=lines.max(1)).contains(&line), "line {line} of {lines}");
            assert!(column >= 1 && column <= text.len() + 1, "column {column}");
        }
        Err(_) => {}
    }
    // The value parsers on their own (each line a value), as the TOML string forms reach them.
    for v in text.lines().take(8) {
        if let Ok(d) = parse_duration(v)
            && let Ok(ms) = u64::try_from(d.as_millis())
        {
            assert_eq!(parse_duration(&format!("{ms}ms")), Ok(d), "{v:?}");
        }
        if let Ok(n) = parse_size(v) {
            assert_eq!(parse_size(&n.to_string()), Ok(n), "{v:?}");
        }
    }
});
