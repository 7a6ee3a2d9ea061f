//! `[capture]` (the primary re-captures on a schedule) and `[sync]` (a standby follows the
//! primary's newest version of an image).
//!
//! ```toml
//! [capture]                      # on the primary
//! image = "head-a"               # the image name each run adds a version to
//! source = "/"                   # the root captured (default "/")
//! interval = "10m"               # time between the start of one run and the next (>= 1s)
//! exclude = ["/scratch/**"]      # more excludes (capture's syntax; the usual root ones apply)
//!
//! [sync]                         # on the standby
//! server = "http://10.0.0.1:8080"  # the primary's HTTP API
//! token_file = "primary.token"   # the primary's sync token (a copy of its sync.token, which
//!                                # only reads images and reports freshness; its admin token
//!                                # works too); relative to the data dir; or `token = "..."`
//! image = "head-a"               # the image followed
//! target = "/"                   # the root brought to each new version (default "/")
//! interval = "30s"               # how often the primary is asked for its newest version
//! max_lag = "30m"                # alarm when the applied version is this much older than
//!                                # the primary's newest (default 3 x capture-ish: 1h)
//! exclude = ["/var/log/**"]      # more paths the update leaves alone
//! stop_timeout = "10s"           # a takeover waits at most this long for a running
//!                                # update to reach its next safe point (default 10s)
//! replicate = true               # hold each version followed in this node's own store
//!                                # too, so that after a takeover it serves the image
//!                                # itself (default true)
//! keep = 24                      # replica versions kept (older ones are deleted; 0 keeps all)
//! ```
//!
//! Whatever the exclude list says, an update run by `[sync]` never touches
//! [`ALWAYS_KEPT`] (this node's own understudy, its configuration, failover key and
//! state) nor this node's data dir.

use crate::config::{ValueError, parse_duration};
use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use std::time::Duration;

/// Paths an update run by `[sync]` always leaves alone (capture's pattern syntax): the
/// standby's own understudy binary, its configuration and failover key, and its state
/// dir. Replacing them under a running standby would change the service that decides
/// the takeover, or give it the primary's identity.
pub const ALWAYS_KEPT: &[&str] = &[
    "/usr/bin/understudy",
    "/usr/local/bin/understudy",
    "/usr/sbin/understudy",
    "/usr/local/sbin/understudy",
    "/etc/understudy",
    "/var/lib/understudy",
    "/etc/systemd/system/understudy*.service",
    "/lib/systemd/system/understudy*.service",
    "/usr/lib/systemd/system/understudy*.service",
];

fn de_dur<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn d_source() -> PathBuf {
    PathBuf::from("/")
}
fn d_capture_interval() -> Duration {
    Duration::from_secs(600)
}
fn d_sync_interval() -> Duration {
    Duration::from_secs(30)
}
fn d_max_lag() -> Duration {
    Duration::from_secs(3600)
}
fn d_stop_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[capture]`: scheduled re-captures on the primary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// The image each run adds a version to.
    pub image: String,
    /// The root captured.
    #[serde(default = "d_source")]
    pub source: PathBuf,
    /// Time from the start of one run to the start of the next.
    #[serde(default = "d_capture_interval", deserialize_with = "de_dur")]
    pub interval: Duration,
    /// More exclude patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Versions of the image kept: older ones are deleted after each new version (not
    /// those a node names as `NAME@N` or a deployment still uses); 0 keeps them all.
    #[serde(default = "d_keep")]
    pub keep: usize,
}

fn d_keep() -> usize {
    24
}

/// `[sync]`: a standby that follows the primary's newest image version.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The primary's HTTP API (`http://host:port`).
    pub server: String,
    /// The primary's sync (or admin) token, inline.
    pub token: Option<String>,
    /// A file holding it (relative to the data dir, or absolute).
    pub token_file: Option<PathBuf>,
    /// The image followed.
    pub image: String,
    /// The root brought to each new version.
    #[serde(default = "d_source")]
    pub target: PathBuf,
    /// How often the primary is asked for its newest version.
    #[serde(default = "d_sync_interval", deserialize_with = "de_dur")]
    pub interval: Duration,
    /// Lag above which the alarm is raised.
    #[serde(default = "d_max_lag", deserialize_with = "de_dur")]
    pub max_lag: Duration,
    /// More paths the update leaves alone.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// How long a takeover waits for a running update to stop at a safe point.
    #[serde(default = "d_stop_timeout", deserialize_with = "de_dur")]
    pub stop_timeout: Duration,
    /// Hold each version followed in this node's store too (the pair heals itself: after
    /// a takeover the new primary serves the image with no other server).
    #[serde(default = "d_true")]
    pub replicate: bool,
    /// Replica versions kept, as `capture.keep` (0 keeps them all).
    #[serde(default = "d_keep")]
    pub keep: usize,
}

fn d_true() -> bool {
    true
}

/// An image name as the inventory takes it: 1-64 of `[A-Za-z0-9._-]`, not starting with
/// `.` or `-`.
fn check_image(key: &str, name: &str) -> Result<(), ValueError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!("{key} {name:?} must be 1-64 of [A-Za-z0-9._-], starting with a letter or digit").into())
    }
}

fn check_patterns(key: &str, p: &[String]) -> Result<(), ValueError> {
    crate::capture::Excludes::new(p).map(|_| ()).map_err(|e| ValueError(format!("{key}: {e}")))
}

impl CaptureConfig {
    /// Check the values (the key named in every message).
    pub fn validate(&self) -> Result<(), ValueError> {
        check_image("capture.image", &self.image)?;
        if !self.source.is_absolute() {
            return Err("capture.source must be an absolute path".into());
        }
        if self.interval < Duration::from_secs(1) {
            return Err("capture.interval must be at least 1s".into());
        }
        check_patterns("capture.exclude", &self.exclude)
    }
}

impl SyncConfig {
    /// Check the values (the key named in every message).
    pub fn validate(&self) -> Result<(), ValueError> {
        check_server(&self.server)?;
        check_image("sync.image", &self.image)?;
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => return Err("sync: give token or token_file, not both".into()),
            (None, None) => {
                return Err("sync: token or token_file is required (the primary's sync token: images hold \
                            its secrets, so the primary serves them only to its followers and the admin)"
                    .into());
            }
            (Some(t), None) if t.trim().is_empty() || t.len() > 256 => {
                return Err("sync.token must be 1-256 characters".into());
            }
            (None, Some(f)) if f.as_os_str().is_empty() => return Err("sync.token_file must name a file".into()),
            _ => {}
        }
        if !self.target.is_absolute() {
            return Err("sync.target must be an absolute path".into());
        }
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(86400) {
            return Err("sync.interval must be between 100ms and 24h".into());
        }
        if self.max_lag < Duration::from_secs(1) {
            return Err("sync.max_lag must be at least 1s".into());
        }
        if self.stop_timeout.is_zero() || self.stop_timeout > Duration::from_secs(600) {
            return Err("sync.stop_timeout must be between 1ms and 10m".into());
        }
        check_patterns("sync.exclude", &self.exclude)
    }

    /// The token: inline, or read from `token_file` (relative to `data_dir`).
    pub fn read_token(&self, data_dir: &std::path::Path) -> Result<String, super::SyncError> {
        if let Some(t) = &self.token {
            return Ok(t.trim().to_string());
        }
        let f = self.token_file.as_ref().map(|f| data_dir.join(f)).unwrap_or_default();
        let t = std::fs::read_to_string(&f).map_err(|source| super::SyncError::Token { path: f.clone(), source })?;
        let t = t.trim().to_string();
        if t.is_empty() {
            return Err(super::SyncError::Token {
                path: f,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the token file is empty"),
            });
        }
        Ok(t)
    }

    /// Every pattern an update run by `[sync]` leaves alone: [`ALWAYS_KEPT`], then `exclude`.
    pub fn kept_patterns(&self) -> Vec<String> {
        ALWAYS_KEPT.iter().map(|s| s.to_string()).chain(self.exclude.iter().cloned()).collect()
    }
}

/// `http://host[:port]` or `https://...`, with a host and no path beyond `/`.
fn check_server(s: &str) -> Result<(), ValueError> {
    let bad = |why: &str| ValueError(format!("sync.server {s:?}: {why} (such as \"http://10.0.0.1:8080\")"));
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if host.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad("must be a bare base URL (no path, query or user)"));
    }
    if let Some((h, port)) = host.rsplit_once(':')
        && !h.ends_with(']')
        && !h.contains(':')
        && (port.parse::<u16>().map(|p| p == 0).unwrap_or(true))
    {
        return Err(bad("has a bad port"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(extra: &str) -> Result<SyncConfig, String> {
        let text = format!("server = \"http://10.0.0.1:8080\"\nimage = \"head-a\"\ntoken = \"t\"\n{extra}");
        let c: SyncConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.0)?;
        Ok(c)
    }

    #[test]
    fn sync_defaults_and_errors_name_the_key() {
        let c = sync("").unwrap();
        assert_eq!(c.target, PathBuf::from("/"));
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.max_lag, Duration::from_secs(3600));
        assert!(c.kept_patterns().iter().any(|p| p == "/var/lib/understudy"));
        for (extra, key) in [
            ("interval = \"10ms\"", "sync.interval"),
            ("interval = \"ten\"", "duration"),
            ("max_lag = \"0s\"", "sync.max_lag"),
            ("target = \"rel\"", "sync.target"),
            ("token_file = \"x\"", "not both"),
            ("exclude = [\"[\"]", "sync.exclude"),
            ("colour = 3", "colour"),
        ] {
            let e = sync(extra).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
        for bad in ["10.0.0.1:8080", "ftp://x", "http://", "http://h/api", "http://h:0", "http://h:99999", "http://u@h"]
        {
            let e = check_server(bad).unwrap_err().0;
            assert!(e.contains("sync.server"), "{bad}: {e}");
        }
        for good in ["http://10.0.0.1:8080", "https://head-a/", "http://[fd00::1]:8080", "http://head-a"] {
            assert!(check_server(good).is_ok(), "{good}");
        }
        let e = toml::from_str::<SyncConfig>("server = \"http://h\"\nimage = \"a\"\n").map(|c| c.validate());
        assert!(matches!(e, Ok(Err(ValueError(m))) if m.contains("token")));
    }

    #[test]
    fn the_standbys_own_understudy_is_always_kept() {
        let ex = crate::capture::Excludes::new(&sync("exclude = [\"/srv/**\"]").unwrap().kept_patterns()).unwrap();
        for (p, dir) in [
            (&b"usr/bin/understudy"[..], false),
            (b"usr/local/sbin/understudy", false),
            (b"etc/understudy", true),
            (b"var/lib/understudy", true),
            (b"etc/systemd/system/understudy.service", false),
            (b"lib/systemd/system/understudy-agent.service", false),
            (b"srv/data", true),
        ] {
            assert!(ex.matches(p, dir), "{}", String::from_utf8_lossy(p));
        }
        for p in [&b"usr/bin/understudy-old"[..], b"etc/understudy.conf", b"etc/systemd/system/sshd.service"] {
            assert!(!ex.matches(p, false), "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn capture_section() {
        let c: CaptureConfig = toml::from_str("image = \"head-a\"\ninterval = \"5m\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!((c.source.clone(), c.interval), (PathBuf::from("/"), Duration::from_secs(300)));
        for (t, key) in [
            ("image = \"../x\"", "capture.image"),
            ("image = \"a\"\ninterval = \"500ms\"", "capture.interval"),
            ("image = \"a\"\nsource = \"x\"", "capture.source"),
        ] {
            let c: CaptureConfig = toml::from_str(t).unwrap();
            assert!(c.validate().unwrap_err().0.contains(key), "{t}");
        }
        assert!(toml::from_str::<CaptureConfig>("image = \"a\"\nevery = \"5m\"\n").is_err());
    }

    #[test]
    fn token_file_is_read_relative_to_the_data_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("p.token"), "secret\n").unwrap();
        let mut c = sync("").unwrap();
        c.token = None;
        c.token_file = Some("p.token".into());
        assert_eq!(c.read_token(d.path()).unwrap(), "secret");
        std::fs::write(d.path().join("p.token"), "\n").unwrap();
        assert!(c.read_token(d.path()).is_err());
        c.token_file = Some("missing".into());
        assert!(c.read_token(d.path()).unwrap_err().to_string().contains("missing"));
    }
}
