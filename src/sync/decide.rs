//! The follower's decisions as plain functions over plain data: what to do with the
//! primary's newest version, how far behind the root is, and when the lag alarm moves.

use super::gate::Closed;
use serde::{Deserialize, Serialize};

/// An image version as the follower knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Version {
    /// `NAME@N`.
    pub label: String,
    /// The version number `N`.
    pub version: i64,
    /// Manifest id (hex).
    pub manifest: String,
    /// When the primary made it (RFC 3339).
    pub created: String,
    /// The same, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// What the root holds, as far as the follower knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The last version applied completely (`None`: nothing yet, or unknown).
    pub applied: Option<Version>,
    /// An update to this version stopped before its end (a takeover or a pause): the root
    /// holds each path in its `applied` or in this version.
    pub partial: Option<Version>,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The root holds the newest version.
    Current,
    /// The newest version has the content the root holds (an unchanged re-capture):
    /// record its name, change no file.
    Relabel,
    /// Bring the root to the newest version.
    Update,
    /// Behind, but no update may run now.
    Hold(Closed),
}

/// The next step for a root holding `held` when the primary's newest version is
/// `newest` and the gate says `closed`.
pub fn decide(held: &Held, newest: &Version, closed: Option<Closed>) -> Action {
    let same_content = held.applied.as_ref().is_some_and(|a| a.manifest == newest.manifest);
    let action = match (&held.applied, &held.partial) {
        (Some(a), None) if a.label == newest.label && same_content => return Action::Current,
        (Some(_), None) if same_content => Action::Relabel,
        _ => Action::Update,
    };
    match (action, closed) {
        // Relabelling touches no file of the root: it may run under a closed gate too.
        (Action::Update, Some(c)) => Action::Hold(c),
        (a, _) => a,
    }
}

/// How far behind the root is, in milliseconds: 0 when it holds the newest version's
/// content; else the age of the applied version against the newest one (their creation
/// times), or, with nothing applied yet, the newest version's age at `now_ms`.
pub fn lag_ms(held: &Held, newest: &Version, now_ms: u64) -> u64 {
    match &held.applied {
        Some(a) if a.manifest == newest.manifest && held.partial.is_none() => 0,
        // A version created within the same millisecond is still behind: never 0.
        Some(a) => newest.created_unix_ms.saturating_sub(a.created_unix_ms).max(1),
        None => now_ms.saturating_sub(newest.created_unix_ms).max(1),
    }
}

/// The lag alarm's next state: `Some(true)` to raise it, `Some(false)` to clear it,
/// `None` when it stays as it is. Raised above `max_ms`; cleared only once the lag is
/// back at or below half of it, so a lag hovering at the threshold does not flap.
pub fn alarm(raised: bool, lag_ms: u64, max_ms: u64) -> Option<bool> {
    match raised {
        false if lag_ms > max_ms => Some(true),
        true if lag_ms <= max_ms / 2 => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: i64, manifest: &str, at: u64) -> Version {
        Version {
            label: format!("head-a@{n}"),
            version: n,
            manifest: manifest.into(),
            created: String::new(),
            created_unix_ms: at,
        }
    }

    #[test]
    fn decisions() {
        let v1 = v(1, "aa", 1_000);
        let held = Held { applied: Some(v1.clone()), partial: None };
        assert_eq!(decide(&held, &v1, None), Action::Current);
        assert_eq!(decide(&held, &v1, Some(Closed::Takeover)), Action::Current);
        // An unchanged re-capture: same manifest, new version.
        assert_eq!(decide(&held, &v(2, "aa", 2_000), None), Action::Relabel);
        assert_eq!(decide(&held, &v(2, "aa", 2_000), Some(Closed::Paused)), Action::Relabel);
        let v2 = v(2, "bb", 2_000);
        assert_eq!(decide(&held, &v2, None), Action::Update);
        assert_eq!(decide(&held, &v2, Some(Closed::Takeover)), Action::Hold(Closed::Takeover));
        assert_eq!(decide(&Held::default(), &v1, None), Action::Update);
        // A stopped update leaves a mixed root: it is finished even when the newest
        // version is the one applied before.
        let mixed = Held { applied: Some(v1.clone()), partial: Some(v2.clone()) };
        assert_eq!(decide(&mixed, &v1, None), Action::Update);
        assert_eq!(decide(&mixed, &v2, Some(Closed::Paused)), Action::Hold(Closed::Paused));
    }

    #[test]
    fn lag_is_the_age_of_the_applied_version_against_the_newest() {
        let v1 = v(1, "aa", 10_000);
        let held = Held { applied: Some(v1.clone()), partial: None };
        assert_eq!(lag_ms(&held, &v1, 99_000), 0);
        assert_eq!(lag_ms(&held, &v(2, "aa", 20_000), 99_000), 0, "same content");
        assert_eq!(lag_ms(&held, &v(2, "bb", 25_000), 99_000), 15_000);
        assert_eq!(lag_ms(&held, &v(2, "bb", 10_000), 99_000), 1, "behind, however close");
        assert_eq!(lag_ms(&Held::default(), &v1, 12_500), 2_500);
        let mixed = Held { applied: Some(v1.clone()), partial: Some(v(2, "bb", 25_000)) };
        assert_eq!(lag_ms(&mixed, &v1, 99_000), 1);
    }

    #[test]
    fn the_alarm_has_hysteresis() {
        assert_eq!(alarm(false, 10, 10), None);
        assert_eq!(alarm(false, 11, 10), Some(true));
        assert_eq!(alarm(true, 11, 10), None);
        assert_eq!(alarm(true, 6, 10), None);
        assert_eq!(alarm(true, 5, 10), Some(false));
        assert_eq!(alarm(false, 0, 10), None);
    }
}
