//! The primary's view of its standbys' freshness: each standby's follower reports its
//! status after every check (`POST /api/v1/sync/standby`), and the primary keeps the last
//! report of each, so its console, API and metrics show what the standby runs against
//! the newest version, its lag, alarm and replica, without asking the standby.
//!
//! A report is only as fresh as its arrival: one older than three check intervals (and
//! a few seconds of slack) is shown as stale, since a standby that stopped reporting may
//! be down or cut off. At most [`MAX_STANDBYS`] are kept (the least recently heard goes).

use super::status::SyncStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Standbys remembered at most (a pair has one; a few is plenty).
pub const MAX_STANDBYS: usize = 16;

/// Largest report accepted, serialized (a status is well under 4 KiB).
pub const MAX_REPORT_BYTES: usize = 64 << 10;

/// What a standby's follower tells the primary after each check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StandbyReport {
    /// The standby's node name (its failover node, else its host name).
    pub node: String,
    /// Its check interval (`sync.interval`), which says when a report is overdue.
    pub interval_seconds: f64,
    /// Its follower's status.
    pub status: SyncStatus,
}

/// A standby's last report as the primary shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportedStandby {
    /// The standby's node name.
    pub node: String,
    /// Its status as it reported it.
    pub status: SyncStatus,
    /// Seconds since the report arrived.
    pub age_seconds: f64,
    /// The report is overdue (more than three intervals and 5 s old).
    pub stale: bool,
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The node name is not a name.
    #[error("node {0:?} must be 1-64 of [A-Za-z0-9._-], starting with a letter or digit")]
    Node(String),
    /// The interval is not a duration a follower can have.
    #[error("interval_seconds {0} is outside 0.1-86400")]
    Interval(String),
    /// The report is too large.
    #[error("report of {0} bytes is larger than {MAX_REPORT_BYTES}")]
    Size(usize),
}

impl StandbyReport {
    /// Check what a standby sent (`size`: its serialized length).
    pub fn validate(&self, size: usize) -> Result<(), ReportError> {
        if size > MAX_REPORT_BYTES {
            return Err(ReportError::Size(size));
        }
        let n = self.node.as_bytes();
        let ok = !n.is_empty()
            && n.len() <= 64
            && n[0].is_ascii_alphanumeric()
            && n.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
        if !ok {
            return Err(ReportError::Node(self.node.chars().take(80).collect()));
        }
        if !(0.1..=86400.0).contains(&self.interval_seconds) {
            return Err(ReportError::Interval(self.interval_seconds.to_string()));
        }
        Ok(())
    }
}

/// Is a report `age_ms` old overdue for a follower checking every `interval_seconds`?
pub fn stale(age_ms: u64, interval_seconds: f64) -> bool {
    age_ms as f64 > (3.0 * interval_seconds + 5.0) * 1000.0
}

/// The last report of each standby, shared by the HTTP handlers.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, (StandbyReport, u64)>>>);

impl Board {
    /// Keep `r` (validated) as `r.node`'s last report, received at `now_ms`.
    pub fn put(&self, r: StandbyReport, now_ms: u64) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains_key(&r.node)
            && m.len() >= MAX_STANDBYS
            && let Some(oldest) = m.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        m.insert(r.node.clone(), (r, now_ms));
    }

    /// No standby has reported.
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Every standby's last report, by name, aged at `now_ms`.
    pub fn list(&self, now_ms: u64) -> Vec<ReportedStandby> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.values()
            .map(|(r, at)| {
                let age = now_ms.saturating_sub(*at);
                ReportedStandby {
                    node: r.node.clone(),
                    status: r.status.clone(),
                    age_seconds: age as f64 / 1000.0,
                    stale: stale(age, r.interval_seconds),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str) -> StandbyReport {
        StandbyReport { node: node.into(), interval_seconds: 30.0, status: SyncStatus::default() }
    }

    #[test]
    fn reports_are_checked() {
        assert_eq!(report("head-b").validate(100), Ok(()));
        for bad in ["", "-x", "a b", "<script>", &"x".repeat(65)] {
            assert!(matches!(report(bad).validate(100), Err(ReportError::Node(_))), "{bad:?}");
        }
        let mut r = report("head-b");
        r.interval_seconds = f64::NAN;
        assert!(matches!(r.validate(100), Err(ReportError::Interval(_))));
        r.interval_seconds = 0.0;
        assert!(matches!(r.validate(100), Err(ReportError::Interval(_))));
        assert_eq!(report("head-b").validate(MAX_REPORT_BYTES + 1), Err(ReportError::Size(MAX_REPORT_BYTES + 1)));
    }

    #[test]
    fn the_last_report_wins_and_old_ones_go_stale() {
        let b = Board::default();
        assert!(b.is_empty());
        b.put(report("head-b"), 1_000);
        assert!(!b.is_empty());
        let mut newer = report("head-b");
        newer.status.state = "current".into();
        b.put(newer, 2_000);
        let l = b.list(2_500);
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].status.state.as_str(), l[0].age_seconds, l[0].stale), ("current", 0.5, false));
        // Three 30 s intervals and 5 s of slack: 95 s.
        assert!(!b.list(2_000 + 95_000)[0].stale);
        assert!(b.list(2_000 + 95_001)[0].stale);
    }

    #[test]
    fn the_board_is_bounded_and_forgets_the_least_recently_heard() {
        let b = Board::default();
        for i in 0..MAX_STANDBYS as u64 {
            b.put(report(&format!("s{i:02}")), 10 + i);
        }
        b.put(report("s00"), 100); // heard again: now the freshest
        b.put(report("new"), 200);
        let names: Vec<String> = b.list(300).into_iter().map(|r| r.node).collect();
        assert_eq!(names.len(), MAX_STANDBYS);
        assert!(names.contains(&"new".into()) && names.contains(&"s00".into()), "{names:?}");
        assert!(!names.contains(&"s01".into()), "{names:?}");
    }
}
