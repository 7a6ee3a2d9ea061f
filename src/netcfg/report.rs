//! What a rewrite changed, left alone, did not understand, and refuses.

use std::path::PathBuf;

/// One remark about one line of a file (1-based; 0 for the whole file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// 1-based line number in the original text (0: the file as a whole).
    pub line: usize,
    /// What happened, for people.
    pub what: String,
}

/// The outcome of rewriting one file's text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Lines changed or removed.
    pub changed: Vec<Note>,
    /// Lines looked at and deliberately left as they are.
    pub kept: Vec<Note>,
    /// Constructs the parser does not understand; kept byte for byte.
    pub unknown: Vec<Note>,
    /// Lines that would bring the standby up with an address or MAC the primary holds.
    pub refused: Vec<Note>,
}

impl Changes {
    pub(crate) fn changed(&mut self, line: usize, what: impl Into<String>) {
        self.changed.push(Note { line, what: what.into() });
    }
    pub(crate) fn kept(&mut self, line: usize, what: impl Into<String>) {
        self.kept.push(Note { line, what: what.into() });
    }
    pub(crate) fn unknown(&mut self, line: usize, what: impl Into<String>) {
        self.unknown.push(Note { line, what: what.into() });
    }
    pub(crate) fn refused(&mut self, line: usize, what: impl Into<String>) {
        self.refused.push(Note { line, what: what.into() });
    }
}

/// A rewritten file's text and what the rewrite did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The new text (equal to the input when nothing needed changing).
    pub text: String,
    /// What changed and what was left alone.
    pub changes: Changes,
    /// The file has nothing left to configure (an ifcfg alias that only held a VIP): remove it.
    pub obsolete: bool,
}

/// Which network stack a file belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// Debian ifupdown.
    Ifupdown,
    /// Ubuntu netplan.
    Netplan,
    /// NetworkManager keyfiles.
    NetworkManager,
    /// systemd-networkd `.network`, `.link` and `.netdev`.
    Networkd,
    /// RHEL/SUSE ifcfg.
    Ifcfg,
    /// udev persistent-net rules.
    Udev,
}

/// One file `rewrite_tree` looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    /// The path inside the image (`/etc/netplan/50-cloud-init.yaml`).
    pub path: PathBuf,
    /// Its stack.
    pub stack: Stack,
    /// What the rewrite did (empty when the file could not be parsed).
    pub changes: Changes,
    /// Why the file was left alone untouched, when it was.
    pub error: Option<String>,
}

/// A reason the standby must not boot with its rewritten configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The path inside the image.
    pub path: PathBuf,
    /// 1-based line (0: the file as a whole).
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// The result of `rewrite_tree`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every file examined, in the order examined.
    pub files: Vec<FileReport>,
    /// Files rewritten in place (paths inside the image): the deployment records them so later
    /// updates leave them alone.
    pub rewritten: Vec<PathBuf>,
    /// Files removed (stale udev rules, ifcfg aliases that only held a VIP).
    pub removed: Vec<PathBuf>,
    /// Notes for the admin (stacks found, files skipped).
    pub notes: Vec<String>,
    /// Reasons to refuse the deploy unless forced; empty when the standby is safe to boot.
    pub refused: Vec<Refusal>,
}

impl Report {
    /// Whether the caller must refuse the deploy (unless forced).
    pub fn is_refused(&self) -> bool {
        !self.refused.is_empty()
    }
}
