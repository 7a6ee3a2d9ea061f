//! The error policy, and how an error reaches a person.
//!
//! - Library code returns a `thiserror` enum per module: variants say what failed and
//!   carry the context a reader needs (the path, the name, the value and what is allowed).
//!   No `Result<_, String>`, no `unwrap()` on anything from outside.
//! - Every public error answers [`ErrorKind`] (directly, or through the enum it is wrapped
//!   in), which decides the HTTP status and the exit code: callers branch on the kind,
//!   never on message text.
//! - A variant that wraps another error says what was being done ("cannot read config
//!   /etc/x.toml") or is `#[error(transparent)]`. A message may end with its source's text,
//!   so that a log line of just `{e}` is whole; [`render`] then says each cause once.
//! - `anyhow` only at the binary's edge (`cli`, `main`), which adds context for a person
//!   and maps the kind to an exit code ([`exit_code`]).

use std::fmt::Write;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command line or a value in it is wrong (exit 2).
    Usage,
    /// A value given is not acceptable (a bad name, MAC, state; a malformed archive) (exit 2).
    Invalid,
    /// The named thing does not exist (exit 3).
    NotFound,
    /// The change conflicts with the current state (exit 4).
    Conflict,
    /// The server refused the token, or one is needed (exit 5).
    Refused,
    /// The server cannot be reached (exit 6).
    Unreachable,
    /// Reading or writing local files failed (exit 1).
    Io,
    /// Anything else (exit 1).
    Internal,
}

/// The exit-code table (also in the README).
pub const EXIT_CODES: &[(i32, &str)] = &[
    (0, "success"),
    (1, "the operation failed (I/O, a server error, faults found by `images verify`)"),
    (2, "usage: the command line or a value in it is invalid"),
    (3, "not found: the named image, node, deployment or file does not exist"),
    (4, "conflict: the change conflicts with the current state"),
    (5, "refused: the server wants a (different) token"),
    (6, "unreachable: the server cannot be reached"),
];

/// The process exit code for an error of this kind.
pub fn exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Usage | ErrorKind::Invalid => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::Conflict => 4,
        ErrorKind::Refused => 5,
        ErrorKind::Unreachable => 6,
        ErrorKind::Io | ErrorKind::Internal => 1,
    }
}

/// The kind of the first error in the chain that knows its kind.
pub fn kind_of(e: &anyhow::Error) -> ErrorKind {
    for cause in e.chain() {
        if let Some(k) = known_kind(cause) {
            return k;
        }
    }
    ErrorKind::Internal
}

fn known_kind(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    if let Some(x) = e.downcast_ref::<crate::inventory::InventoryError>() {
        return Some(x.kind());
    }
    if let Some(x) = e.downcast_ref::<crate::remote::RemoteError>() {
        return Some(x.kind());
    }
    if let Some(x) = e.downcast_ref::<crate::config::ConfigError>() {
        return Some(x.kind());
    }
    if e.downcast_ref::<UsageError>().is_some() {
        return Some(ErrorKind::Usage);
    }
    if let Some(x) = e.downcast_ref::<std::io::Error>() {
        return Some(if x.kind() == std::io::ErrorKind::NotFound { ErrorKind::NotFound } else { ErrorKind::Io });
    }
    None
}

/// A command line that cannot be right (found after parsing, before any work).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// One line for a person: the chain of causes joined by `: `, each said once (a cause
/// whose text its parent already holds is left out).
pub fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        let _ = write!(out, "{text}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_say_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read config /tmp/nosuch.toml: {0}")]
        struct Repeats(#[source] std::io::Error);
        let e = anyhow::Error::new(Repeats(io));
        assert_eq!(render(&e), "cannot read config /tmp/nosuch.toml: No such file or directory (os error 2)");
        assert_eq!(kind_of(&e), ErrorKind::NotFound);
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render(&e), "outer: inner");
        assert_eq!(exit_code(kind_of(&e)), 1);
        let e = anyhow::Error::new(UsageError("bad".into())).context("while parsing");
        assert_eq!(exit_code(kind_of(&e)), 2);
    }

    #[test]
    fn the_table_covers_every_code() {
        for k in [
            ErrorKind::Usage,
            ErrorKind::Invalid,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Refused,
            ErrorKind::Unreachable,
            ErrorKind::Io,
            ErrorKind::Internal,
        ] {
            assert!(EXIT_CODES.iter().any(|(c, _)| *c == exit_code(k)), "{k:?}");
        }
    }
}
