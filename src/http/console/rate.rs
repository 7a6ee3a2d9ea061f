//! A deployment's rate and time left, from its progress samples.
//!
//! The agent reports `bytes_done` every few seconds and the inventory keeps only the last
//! report, so the console samples it: each time a console page reads a running deployment
//! (the deployments page and the wizard poll every 2 s while one runs) it records
//! (now, bytes done). The rate is the slope over the samples of the last [`WINDOW`]
//! (bytes between the oldest and the newest, over the seconds between them); until two
//! samples at least [`MIN_SPAN`] apart exist, it is the average since the agent started
//! (bytes done over the time since `started`). The time left is the bytes still to write
//! over that rate. All of it is plain functions over the samples, with the clock passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The samples a rate is measured over.
pub const WINDOW: Duration = Duration::from_secs(30);
/// The shortest span between two samples that gives a rate (shorter spans are noise).
pub const MIN_SPAN: Duration = Duration::from_secs(1);
/// Samples kept per deployment (the window at a poll every 2 s fits many times).
const KEEP: usize = 64;
/// Deployments tracked at once (the oldest is dropped past it).
const TRACKED: usize = 256;

/// How a rate was measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Basis {
    /// The slope over this many seconds of samples.
    Window(f64),
    /// The average since the agent started.
    SinceStart,
}

/// A deployment's speed and what is left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bytes per second.
    pub bytes_per_sec: f64,
    /// Seconds until `total` at this rate (`None` at rate 0 or without a total).
    pub eta_secs: Option<f64>,
    /// How the rate was measured.
    pub basis: Basis,
}

/// Every running deployment's recent samples.
#[derive(Debug, Default)]
pub struct Samples {
    map: HashMap<i64, VecDeque<(Instant, i64)>>,
}

impl Samples {
    /// Record deployment `id` at `bytes` done at `now`. A sample equal to the last one in
    /// bytes only moves nothing (the rate must fall when the agent stalls, so it is kept
    /// when time passed).
    pub fn record(&mut self, id: i64, now: Instant, bytes: i64) {
        if !self.map.contains_key(&id) && self.map.len() >= TRACKED {
            let oldest = self.map.iter().min_by_key(|(_, v)| v.back().map(|s| s.0)).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        let v = self.map.entry(id).or_default();
        if v.back().is_some_and(|(t, b)| *b > bytes || *t > now) {
            // A restarted agent counts from zero again: start over.
            v.clear();
        }
        v.push_back((now, bytes));
        while v.len() > KEEP || v.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW * 2) {
            v.pop_front();
        }
    }

    /// Forget deployments not in `running` (finished ones need no rate).
    pub fn retain(&mut self, running: &[i64]) {
        self.map.retain(|k, _| running.contains(k));
    }

    /// The rate of deployment `id` at `now`: `done` of `total` bytes, `since_start` the time
    /// since the agent started (when known).
    pub fn rate(&self, id: i64, now: Instant, done: i64, total: i64, since_start: Option<Duration>) -> Option<Rate> {
        let empty = VecDeque::new();
        rate(self.map.get(&id).unwrap_or(&empty), now, done, total, since_start)
    }
}

/// The rate from `samples` (oldest first) at `now`, else from the start (see the module doc).
pub fn rate(
    samples: &VecDeque<(Instant, i64)>,
    now: Instant,
    done: i64,
    total: i64,
    since_start: Option<Duration>,
) -> Option<Rate> {
    let recent: Vec<&(Instant, i64)> =
        samples.iter().filter(|(t, _)| now.checked_duration_since(*t).is_some_and(|d| d <= WINDOW)).collect();
    let windowed = match (recent.first(), recent.last()) {
        (Some((t0, b0)), Some((t1, b1))) if t1.duration_since(*t0) >= MIN_SPAN => {
            let span = t1.duration_since(*t0).as_secs_f64();
            Some(((b1 - b0).max(0) as f64 / span, Basis::Window(span)))
        }
        _ => None,
    };
    let (bytes_per_sec, basis) = windowed.or_else(|| {
        let s = since_start.filter(|d| *d >= MIN_SPAN)?;
        Some((done.max(0) as f64 / s.as_secs_f64(), Basis::SinceStart))
    })?;
    let left = (total - done).max(0) as f64;
    let eta_secs = (bytes_per_sec > 0.0 && total > 0).then(|| left / bytes_per_sec);
    Some(Rate { bytes_per_sec, eta_secs, basis })
}

/// Seconds for people: `45 s`, `3 min 20 s`, `2 h 05 min`.
pub fn duration_words(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// How long ago `then` (RFC 3339) was at `now` (Unix seconds): `5 min ago`; `None` when
/// the time does not parse.
pub fn age(then: &str, now: i64) -> Option<String> {
    let t = time::OffsetDateTime::parse(then, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = (now - t.unix_timestamp()).max(0);
    Some(match secs {
        0..60 => "just now".to_string(),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    })
}

/// Seconds from `then` (RFC 3339) to `now` (Unix seconds).
pub fn since(then: &str, now: i64) -> Option<Duration> {
    let t = time::OffsetDateTime::parse(then, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(now - t.unix_timestamp()).ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_slope_over_the_window() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        // 10 MB/s for 20 s, sampled every 2 s.
        for i in 0..=10 {
            s.record(7, t0 + Duration::from_secs(2 * i), (i * 20_000_000) as i64);
        }
        let now = t0 + Duration::from_secs(20);
        let r = s.rate(7, now, 200_000_000, 500_000_000, Some(Duration::from_secs(100))).unwrap();
        assert!((r.bytes_per_sec - 10_000_000.0).abs() < 1.0, "{r:?}");
        assert_eq!(r.basis, Basis::Window(20.0));
        assert!((r.eta_secs.unwrap() - 30.0).abs() < 0.01, "{r:?}");
        // Only the last WINDOW counts: a stall shows as a falling rate.
        for i in 11..=25 {
            s.record(7, t0 + Duration::from_secs(2 * i), 200_000_000);
        }
        let r = s.rate(7, t0 + Duration::from_secs(50), 200_000_000, 500_000_000, None).unwrap();
        assert_eq!(r.bytes_per_sec, 0.0);
        assert_eq!(r.eta_secs, None, "no time left at a standstill");
    }

    #[test]
    fn one_sample_falls_back_to_the_average_since_the_start() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.record(1, t0, 50);
        let r = s.rate(1, t0, 50, 100, Some(Duration::from_secs(10))).unwrap();
        assert_eq!((r.bytes_per_sec, r.basis), (5.0, Basis::SinceStart));
        assert_eq!(r.eta_secs, Some(10.0));
        assert!(s.rate(1, t0, 50, 100, None).is_none(), "no rate from nothing");
        assert!(s.rate(2, t0, 0, 0, Some(Duration::ZERO)).is_none());
    }

    #[test]
    fn a_restart_from_zero_starts_the_samples_over_and_finished_ones_go() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.record(1, t0, 1000);
        s.record(1, t0 + Duration::from_secs(2), 3000);
        s.record(1, t0 + Duration::from_secs(4), 10);
        s.record(1, t0 + Duration::from_secs(6), 210);
        let r = s.rate(1, t0 + Duration::from_secs(6), 210, 1000, None).unwrap();
        assert_eq!(r.bytes_per_sec, 100.0);
        s.retain(&[]);
        assert!(s.rate(1, t0 + Duration::from_secs(6), 210, 1000, None).is_none());
    }

    #[test]
    fn words_for_durations_and_ages() {
        assert_eq!(duration_words(44.6), "45 s");
        assert_eq!(duration_words(200.0), "3 min 20 s");
        assert_eq!(duration_words(7500.0), "2 h 05 min");
        let now = time::macros::datetime!(2026-12-01 12:00:00 UTC).unix_timestamp();
        assert_eq!(age("2026-12-01T11:59:30Z", now).as_deref(), Some("just now"));
        assert_eq!(age("2026-12-01T11:30:00Z", now).as_deref(), Some("30 min ago"));
        assert_eq!(age("2026-11-28T12:00:00Z", now).as_deref(), Some("3 days ago"));
        assert_eq!(age("yesterday", now), None);
        assert_eq!(since("2026-12-01T11:59:00Z", now), Some(Duration::from_secs(60)));
    }
}
