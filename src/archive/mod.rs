//! Tar export and import of images, with the parts the tar crate leaves out built here:
//! xattrs (PAX `SCHILY.xattr.*`), hard links, device nodes, nanosecond mtimes and sparse
//! files (PAX sparse format 1.0, as GNU tar writes and reads it).

pub mod export;
pub mod import;

pub use export::export;
pub use import::import;

/// Archive errors.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing the archive failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// An entry tries to leave the image or conflicts with another.
    #[error("archive entry {path:?} rejected: {why}")]
    Unsafe {
        /// Entry path as found in the archive (lossy).
        path: String,
        /// Why.
        why: String,
    },
    /// The archive is malformed.
    #[error("malformed archive entry {path:?}: {why}")]
    Malformed {
        /// Entry path (lossy).
        path: String,
        /// Why.
        why: String,
    },
}

impl ArchiveError {
    /// The archive is at fault (unsafe or malformed entries), not the machine.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ArchiveError::Unsafe { .. } | ArchiveError::Malformed { .. })
    }
}

/// Format a time as a PAX decimal `sec[.nnnnnnnnn]`, correct for negative times.
pub fn pax_time(sec: i64, nsec: u32) -> String {
    let total = sec as i128 * 1_000_000_000 + nsec as i128;
    let sign = if total < 0 { "-" } else { "" };
    let a = total.unsigned_abs();
    let (s, n) = (a / 1_000_000_000, a % 1_000_000_000);
    if n == 0 { format!("{sign}{s}") } else { format!("{sign}{s}.{n:09}") }
}

/// Parse a PAX decimal time into (sec, nsec).
pub fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (neg, v) = match v.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, v),
    };
    let (s, f) = v.split_once('.').unwrap_or((v, ""));
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || !f.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i128 = s.parse().ok()?;
    let mut frac = f.chars().take(9).collect::<String>();
    while frac.len() < 9 {
        frac.push('0');
    }
    let ns: i128 = frac.parse().ok()?;
    let mut total = secs.checked_mul(1_000_000_000)? + ns;
    if neg {
        total = -total;
    }
    let sec = i64::try_from(total.div_euclid(1_000_000_000)).ok()?;
    Some((sec, total.rem_euclid(1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_round_trip() {
        for (s, n) in [(0, 0), (1, 5), (1_700_000_000, 123_456_789), (-1, 500_000_000), (-5, 0), (-2, 1)] {
            assert_eq!(parse_pax_time(&pax_time(s, n)), Some((s, n)), "{s}.{n}");
        }
        assert_eq!(parse_pax_time("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        for bad in ["", "x", "1.x", "--1", "1e5", "."] {
            assert_eq!(parse_pax_time(bad), None, "{bad}");
        }
    }
}
