//! Console sessions as plain data: a map from random session ids to their CSRF token,
//! expiry and one pending message; cookie headers built and parsed here. The clock is
//! passed in, so the rules are tested without waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "understudy_session";
/// Name of the cookie that carries the login form's CSRF token before a session exists.
pub const LOGIN_COOKIE: &str = "understudy_login";
/// How long a session lives after login (it does not slide: log in again after a shift).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; logging in past it drops the oldest.
pub const SESSIONS_MAX: usize = 256;

/// What a page shows once, after the action that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// The action failed (shown as an error).
    pub error: bool,
    /// What happened.
    pub text: String,
}

/// One logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token every form of this session carries.
    pub csrf: String,
    /// When it stops being valid.
    pub expires: Instant,
    /// A message for the next page.
    pub flash: Option<Flash>,
}

/// Every live session, by id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: HashMap<String, Session>,
}

impl Sessions {
    /// Open a session at `now`: returns its id (the cookie value) and CSRF token.
    pub fn create(&mut self, now: Instant) -> (String, String) {
        self.map.retain(|_, s| s.expires > now);
        while self.map.len() >= SESSIONS_MAX {
            let Some(oldest) = self.map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) else { break };
            self.map.remove(&oldest);
        }
        let (id, csrf) = (crate::inventory::tokens::new_token(), crate::inventory::tokens::new_token());
        self.map.insert(id.clone(), Session { csrf: csrf.clone(), expires: now + SESSION_TTL, flash: None });
        (id, csrf)
    }

    /// The live session `id` at `now` (an expired one is dropped).
    pub fn get(&mut self, id: &str, now: Instant) -> Option<&mut Session> {
        if self.map.get(id).is_some_and(|s| s.expires <= now) {
            self.map.remove(id);
        }
        self.map.get_mut(id)
    }

    /// End a session; true when it existed.
    pub fn remove(&mut self, id: &str) -> bool {
        self.map.remove(id).is_some()
    }

    /// Sessions held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No sessions at all.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    // blake3::Hash equality is constant-time; hashing first hides the lengths too.
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

/// A cookie named `name` from a `Cookie` request header value.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/, Secure when the console is
/// reached over https; `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let (id, csrf) = s.create(t0);
        assert_eq!((id.len(), csrf.len()), (64, 64));
        assert_ne!(id, csrf);
        assert_eq!(s.get(&id, t0 + Duration::from_secs(60)).map(|x| x.csrf.clone()), Some(csrf));
        assert!(s.get("nope", t0).is_none());
        assert!(s.get(&id, t0 + SESSION_TTL).is_none(), "an expired session is refused");
        assert!(s.is_empty(), "and dropped");
        let (id2, _) = s.create(t0);
        assert!(s.remove(&id2));
        assert!(s.get(&id2, t0).is_none());
        assert!(!s.remove(&id2));
    }

    #[test]
    fn the_map_is_bounded_dropping_the_oldest() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let (first, _) = s.create(t0);
        for i in 1..SESSIONS_MAX + 10 {
            s.create(t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), SESSIONS_MAX);
        assert!(s.get(&first, t0).is_none());
    }

    #[test]
    fn cookies_parse_and_carry_their_flags() {
        let h = "a=1; understudy_session=abc ; b=2";
        assert_eq!(cookie_value(h, COOKIE), Some("abc"));
        assert_eq!(cookie_value(h, "understudy"), None);
        assert_eq!(cookie_value("", COOKIE), None);
        let c = set_cookie(COOKIE, "x", Duration::from_secs(5), false);
        assert_eq!(c, "understudy_session=x; Path=/; HttpOnly; SameSite=Strict; Max-Age=5");
        assert!(set_cookie(COOKIE, "x", Duration::ZERO, true).ends_with("Max-Age=0; Secure"));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", ""));
    }
}
