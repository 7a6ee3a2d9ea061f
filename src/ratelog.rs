//! Logging that cannot flood: one line per kind per second, counting what it held back.
//! Every UDP service uses it, since a hostile network can send garbage at line rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one warning per kind per second.
pub struct LogLimit {
    service: &'static str,
    last: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimit {
    /// A limiter whose lines start with `service: `.
    pub fn new(service: &'static str) -> LogLimit {
        LogLimit { service, last: HashMap::new() }
    }

    /// Warn about `kind` unless one was logged in the last second.
    pub fn warn(&mut self, kind: &'static str, msg: impl FnOnce() -> String) {
        let e = self.last.entry(kind).or_insert((Instant::now() - Duration::from_secs(10), 0));
        if e.0.elapsed() >= Duration::from_secs(1) {
            let suppressed = std::mem::take(&mut e.1);
            e.0 = Instant::now();
            let more = if suppressed > 0 { format!(" ({suppressed} more suppressed)") } else { String::new() };
            tracing::warn!("{}: {}{more}", self.service, msg());
        } else {
            e.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_within_a_second_are_counted_not_logged() {
        let mut l = LogLimit::new("t");
        l.warn("k", || "a".into());
        l.warn("k", || "b".into());
        l.warn("other", || "c".into());
        assert_eq!(l.last["k"].1, 1, "the second warning of a kind is held back");
        assert_eq!(l.last["other"].1, 0, "kinds are limited separately");
    }
}
