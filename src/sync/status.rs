//! What the sync and capture tasks show: their status (the API's JSON, the
//! `failover status` line, the status file) and their metrics.

use super::decide::{Held, Version};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

/// The follower's status file in the data dir (also read back at start: what the root
/// holds), rewritten after every check.
pub const SYNC_FILE: &str = "sync.json";

/// The standby's follower.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncStatus {
    /// The image followed.
    pub image: String,
    /// The primary's URL.
    pub server: String,
    /// The root kept fresh.
    pub target: String,
    /// `starting`, `current`, `updating`, `behind`, `paused`, `held` (this node took
    /// over: it follows nobody) or `error` (the last check or update failed).
    pub state: String,
    /// The last version applied completely: what this node runs.
    pub applied: Option<Version>,
    /// An update to this version stopped at a safe point before its end (a takeover or a
    /// pause); the root then holds each path in its `applied` or in this version.
    pub partial: Option<Version>,
    /// The primary's newest version, as last seen.
    pub newest: Option<Version>,
    /// Age of the applied version against the primary's newest (0: current).
    pub lag_seconds: f64,
    /// File bytes the running update still has to write (0 when none runs).
    pub pending_bytes: u64,
    /// The lag alarm threshold.
    pub max_lag_seconds: f64,
    /// The lag is above `max_lag_seconds`.
    pub alarm: bool,
    /// Updates completed since start.
    pub updates: u64,
    /// Checks and updates that failed since start.
    pub failures: u64,
    /// The last failure, until a check succeeds again.
    pub last_error: Option<String>,
    /// When the primary was last asked (RFC 3339).
    pub last_check: Option<String>,
    /// When this status was made, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// The newest version this node's store holds as its replica of the primary's image
    /// (`sync.replicate`): what it would serve after a takeover.
    #[serde(default)]
    pub replica: Option<Version>,
    /// Chunk bytes pulled into the replica since start.
    #[serde(default)]
    pub replicated_bytes: u64,
    /// The last replication failure, until one succeeds again.
    #[serde(default)]
    pub replica_error: Option<String>,
}

/// The primary's scheduled capture.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaptureStatus {
    /// The image each run adds a version to.
    pub image: String,
    /// The root captured.
    pub source: String,
    /// Seconds between runs.
    pub interval_seconds: f64,
    /// A run is going on now.
    pub running: bool,
    /// Runs finished (successful or not) since start.
    pub runs: u64,
    /// Runs that failed since start.
    pub failures: u64,
    /// The last version made (`NAME@N`).
    pub last_version: Option<String>,
    /// Old versions deleted since start (`keep`).
    pub pruned: u64,
    /// Wall time of the last successful run.
    pub last_seconds: f64,
    /// Bytes the last run added to the store.
    pub last_added_bytes: u64,
    /// The last failure, until a run succeeds.
    pub last_error: Option<String>,
}

/// Both, as `GET /api/v1/sync` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncReport {
    /// The `[sync]` follower on this node (a standby), if any.
    pub follow: Option<SyncStatus>,
    /// The `[capture]` schedule on this node (a primary), if any.
    pub capture: Option<CaptureStatus>,
    /// The standbys following this node, as they last reported (a primary).
    #[serde(default)]
    pub standbys: Vec<super::board::ReportedStandby>,
}

impl SyncStatus {
    /// This node's store holds the primary's newest version (it could serve it after a
    /// takeover).
    pub fn replica_current(&self) -> bool {
        self.replica.as_ref().zip(self.newest.as_ref()).is_some_and(|(r, n)| r.manifest == n.manifest)
    }

    /// What the root holds, as the follower reads it back at start.
    pub fn held(&self) -> Held {
        Held { applied: self.applied.clone(), partial: self.partial.clone() }
    }

    /// The one-line form (`understudy failover status`).
    pub fn render_line(&self) -> String {
        let applied = self.applied.as_ref().map(|v| v.label.as_str()).unwrap_or("nothing yet");
        let newest = self.newest.as_ref().map(|v| v.label.as_str()).unwrap_or("unknown");
        let mut o = format!(
            "sync {} from {}: {}, runs {applied} (primary's newest {newest}), lag {:.0}s",
            self.image, self.server, self.state, self.lag_seconds
        );
        if let Some(p) = &self.partial {
            let _ = write!(o, ", PARTIAL update to {} (each path old or new)", p.label);
        }
        if self.pending_bytes > 0 {
            let _ = write!(o, ", {} bytes to apply", self.pending_bytes);
        }
        if self.alarm {
            let _ = write!(o, ", ALARM: lag above {:.0}s", self.max_lag_seconds);
        }
        if let Some(e) = &self.last_error {
            let _ = write!(o, ", last error: {e}");
        }
        match (&self.replica, &self.replica_error) {
            (_, Some(e)) => {
                let _ = write!(o, ", store replica FAILING: {e}");
            }
            (Some(r), None) => {
                let _ = write!(o, ", store replica {}", r.label);
            }
            (None, None) => {}
        }
        o.push('\n');
        o
    }

    /// Write the status file (a temporary, then rename).
    pub fn write_file(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = data_dir.join(SYNC_FILE);
        let tmp = data_dir.join(format!(".{SYNC_FILE}.tmp"));
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    /// Read the status file; `None` when there is none. A damaged file is an error.
    pub fn read_file(data_dir: &Path) -> std::io::Result<Option<SyncStatus>> {
        match std::fs::read_to_string(data_dir.join(SYNC_FILE)) {
            Ok(t) => {
                serde_json::from_str(&t).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The Prometheus text form of `r`.
pub fn render_metrics(r: &SyncReport) -> String {
    let mut s = String::new();
    let g = |s: &mut String, name: &str, help: &str, kind: &str, v: String| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    if let Some(f) = &r.follow {
        // Unknown (absent, not 0) until the primary's newest version was seen once.
        if f.newest.is_some() {
            g(
                &mut s,
                "understudy_sync_lag_seconds",
                "Age of the applied image version against the primary's newest (0: current).",
                "gauge",
                format!("{:.3}", f.lag_seconds),
            );
        }
        g(
            &mut s,
            "understudy_sync_pending_bytes",
            "File bytes the running update still has to write.",
            "gauge",
            f.pending_bytes.to_string(),
        );
        g(
            &mut s,
            "understudy_sync_alarm",
            "1 while the lag is above sync.max_lag.",
            "gauge",
            u8::from(f.alarm).to_string(),
        );
        g(
            &mut s,
            "understudy_sync_partial",
            "1 while the root holds a partly applied version.",
            "gauge",
            u8::from(f.partial.is_some()).to_string(),
        );
        g(&mut s, "understudy_sync_updates_total", "Updates completed.", "counter", f.updates.to_string());
        g(
            &mut s,
            "understudy_sync_failures_total",
            "Checks and updates that failed.",
            "counter",
            f.failures.to_string(),
        );
        g(
            &mut s,
            "understudy_sync_replicated_bytes_total",
            "Chunk bytes pulled into this node's replica of the primary's image.",
            "counter",
            f.replicated_bytes.to_string(),
        );
        if f.newest.is_some() {
            let current = f.replica_current();
            g(
                &mut s,
                "understudy_sync_replica_current",
                "1 while this node's store holds the primary's newest version (it can serve it after a takeover).",
                "gauge",
                u8::from(current).to_string(),
            );
        }
        if let Some(a) = &f.applied {
            let _ = writeln!(
                s,
                "# HELP understudy_sync_applied_info The image version this node runs.\n\
                 # TYPE understudy_sync_applied_info gauge\n\
                 understudy_sync_applied_info{{image=\"{}\",version=\"{}\",manifest=\"{}\"}} 1",
                label(&f.image),
                a.version,
                label(&a.manifest)
            );
        }
    }
    if !r.standbys.is_empty() {
        let mut fam = |name: &str, help: &str, v: &dyn Fn(&super::board::ReportedStandby) -> String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
            for b in &r.standbys {
                let _ = writeln!(
                    s,
                    "{name}{{standby=\"{}\",image=\"{}\"}} {}",
                    label(&b.node),
                    label(&b.status.image),
                    v(b)
                );
            }
        };
        fam("understudy_standby_lag_seconds", "A standby's lag, as it last reported.", &|b| {
            format!("{:.3}", b.status.lag_seconds)
        });
        fam("understudy_standby_alarm", "1 while a standby reports its lag alarm.", &|b| {
            u8::from(b.status.alarm).to_string()
        });
        fam("understudy_standby_report_age_seconds", "Seconds since a standby last reported.", &|b| {
            format!("{:.3}", b.age_seconds)
        });
        fam(
            "understudy_standby_replica_current",
            "1 while a standby reports its store holds the newest version.",
            &|b| u8::from(b.status.replica_current()).to_string(),
        );
    }
    if let Some(c) = &r.capture {
        g(&mut s, "understudy_capture_runs_total", "Scheduled captures finished.", "counter", c.runs.to_string());
        g(
            &mut s,
            "understudy_capture_failures_total",
            "Scheduled captures that failed.",
            "counter",
            c.failures.to_string(),
        );
        g(
            &mut s,
            "understudy_capture_running",
            "1 while a scheduled capture runs.",
            "gauge",
            u8::from(c.running).to_string(),
        );
        g(
            &mut s,
            "understudy_capture_last_seconds",
            "Wall time of the last successful scheduled capture.",
            "gauge",
            format!("{:.3}", c.last_seconds),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> SyncStatus {
        let v = |n: i64| Version {
            label: format!("head-a@{n}"),
            version: n,
            manifest: format!("{n:064}"),
            created: "2026-12-01T10:00:00Z".into(),
            created_unix_ms: 1,
        };
        SyncStatus {
            image: "head-a".into(),
            server: "http://10.0.0.1:8080".into(),
            target: "/".into(),
            state: "updating".into(),
            applied: Some(v(2)),
            partial: Some(v(3)),
            newest: Some(v(3)),
            lag_seconds: 42.0,
            pending_bytes: 4096,
            max_lag_seconds: 30.0,
            alarm: true,
            replica: Some(v(3)),
            replicated_bytes: 123,
            ..SyncStatus::default()
        }
    }

    #[test]
    fn the_line_says_what_runs_and_how_far_behind() {
        let l = status().render_line();
        for want in [
            "runs head-a@2",
            "newest head-a@3",
            "lag 42s",
            "PARTIAL update to head-a@3",
            "4096 bytes",
            "ALARM",
            "store replica head-a@3",
        ] {
            assert!(l.contains(want), "{want}: {l}");
        }
    }

    #[test]
    fn metrics_name_the_applied_version() {
        let m = render_metrics(&SyncReport { follow: Some(status()), capture: None, standbys: vec![] });
        assert!(m.contains("understudy_sync_lag_seconds 42.000\n"), "{m}");
        assert!(m.contains("understudy_sync_pending_bytes 4096\n"), "{m}");
        assert!(m.contains("understudy_sync_applied_info{image=\"head-a\",version=\"2\","), "{m}");
        assert!(m.contains("understudy_sync_alarm 1\n"), "{m}");
        assert!(m.contains("understudy_sync_replica_current 1\n"), "{m}");
        assert!(m.contains("understudy_sync_replicated_bytes_total 123\n"), "{m}");
        let failing = SyncStatus { replica_error: Some("disk full".into()), ..status() };
        assert!(failing.render_line().contains("store replica FAILING: disk full"));
        assert!(!m.contains("capture"), "{m}");
        let unseen = SyncStatus { newest: None, ..status() };
        let m = render_metrics(&SyncReport { follow: Some(unseen), capture: None, standbys: vec![] });
        assert!(!m.contains("understudy_sync_lag_seconds") && m.contains("understudy_sync_pending_bytes"), "{m}");
        let m = render_metrics(&SyncReport {
            follow: None,
            capture: Some(CaptureStatus { runs: 3, ..Default::default() }),
            standbys: vec![],
        });
        assert!(m.contains("understudy_capture_runs_total 3\n") && !m.contains("sync_"), "{m}");
        let m = render_metrics(&SyncReport {
            follow: None,
            capture: None,
            standbys: vec![super::super::board::ReportedStandby {
                node: "head-b".into(),
                status: status(),
                age_seconds: 2.5,
                stale: false,
            }],
        });
        assert!(m.contains("understudy_standby_lag_seconds{standby=\"head-b\",image=\"head-a\"} 42.000\n"), "{m}");
        assert!(
            m.contains("understudy_standby_report_age_seconds{standby=\"head-b\",image=\"head-a\"} 2.500\n"),
            "{m}"
        );
        assert!(m.contains("understudy_standby_replica_current{standby=\"head-b\",image=\"head-a\"} 1\n"), "{m}");
    }

    #[test]
    fn the_file_round_trips() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(SyncStatus::read_file(d.path()).unwrap(), None);
        status().write_file(d.path()).unwrap();
        assert_eq!(SyncStatus::read_file(d.path()).unwrap(), Some(status()));
        std::fs::write(d.path().join(SYNC_FILE), "{").unwrap();
        assert!(SyncStatus::read_file(d.path()).is_err());
    }
}
