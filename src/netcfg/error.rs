//! Errors of the network-configuration rewrite.

use std::path::PathBuf;

/// What is wrong with a file's syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxKind {
    /// The file holds NUL bytes: not a text configuration file.
    #[error("binary data (NUL byte)")]
    Binary,
    /// YAML indentation with a tab.
    #[error("tab in indentation")]
    TabIndent,
    /// A quoted string that never closes.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// A `[` flow sequence that never closes (often a truncated file).
    #[error("unterminated flow sequence")]
    UnterminatedFlow,
    /// A line that is neither a comment, a section, nor a key and value.
    #[error("not a key and value: {0:?}")]
    NotKeyValue(String),
    /// A `[section` header without its `]`.
    #[error("bad section header: {0:?}")]
    BadSection(String),
    /// A key before any section header.
    #[error("key outside any section: {0:?}")]
    OutsideSection(String),
    /// YAML indentation that does not fit the structure so far.
    #[error("bad indentation: {0:?}")]
    BadIndent(String),
}

/// A syntax error at a line (1-based) of a file's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct SyntaxError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: SyntaxKind,
}

/// Errors of `netcfg`: each carries its kind and the file (and line) it is about.
#[derive(Debug, thiserror::Error)]
pub enum NetcfgError {
    /// A file's syntax could not be understood.
    #[error("{file}: {source}")]
    Syntax {
        /// The file, as a path inside the image.
        file: PathBuf,
        /// What and where.
        #[source]
        source: SyntaxError,
    },
    /// A file is not UTF-8 text.
    #[error("{file}: not UTF-8 text")]
    NotText {
        /// The file, as a path inside the image.
        file: PathBuf,
    },
    /// A value that should be a MAC or an address is not.
    #[error("bad {what}: {value:?}")]
    Value {
        /// What was expected.
        what: &'static str,
        /// What was found.
        value: String,
    },
    /// The mapping itself is inconsistent.
    #[error("bad network mapping: {reason}")]
    Mapping {
        /// Why.
        reason: String,
    },
    /// A symlink chain under the root that does not end.
    #[error("{file}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The path being resolved.
        file: PathBuf,
    },
    /// A file system operation failed.
    #[error("{op} {file}: {source}")]
    Io {
        /// The operation (read, write, rename, …).
        op: &'static str,
        /// The file on the host.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl NetcfgError {
    /// An I/O error with its operation and file.
    pub fn io(op: &'static str, file: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> NetcfgError {
        let file = file.into();
        move |source| NetcfgError::Io { op, file, source }
    }
}
