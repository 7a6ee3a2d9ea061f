//! The change list of an update: the target's current tree against the image's manifest,
//! both as entry lists in manifest order. Pure: no I/O, so every case is a unit test.
//!
//! Paths the caller keeps (the node's identity, excludes) are left alone on both sides, a
//! kept directory with everything under it. A directory that holds a kept path is never
//! removed, and the image may not turn it into something else.

use crate::store::manifest::{Entry, Kind, Xattr, path_cmp, split_parent};
use std::cmp::Ordering;
use std::collections::HashSet;

/// What differs between the target's entry and the image's, as `rsync -i` would flag it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Diff {
    /// Content (a file's size or mtime, a symlink's target, a device's number).
    pub content: bool,
    /// Size.
    pub size: bool,
    /// Modification time.
    pub time: bool,
    /// Permission bits.
    pub perms: bool,
    /// Owner.
    pub owner: bool,
    /// Group.
    pub group: bool,
    /// POSIX ACLs (the `system.posix_acl_*` xattrs).
    pub acl: bool,
    /// Other extended attributes.
    pub xattrs: bool,
}

impl Diff {
    /// Anything at all differs.
    pub fn any(&self) -> bool {
        self.content || self.time || self.perms || self.owner || self.group || self.acl || self.xattrs
    }
}

/// One change, naming entries by their index in the image (`idx`) or by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The image's entry is missing on the target (or was removed for a type change).
    Create {
        /// Image entry.
        idx: usize,
    },
    /// The target's entry is not in the image.
    Remove {
        /// Target path.
        path: Vec<u8>,
        /// It is a directory (removed after everything under it).
        dir: bool,
    },
    /// Written anew and renamed over the old entry (content or a non-directory type change).
    Replace {
        /// Image entry.
        idx: usize,
        /// What differs.
        diff: Diff,
        /// The target's entry has another type.
        retype: bool,
    },
    /// Only metadata differs; applied in place.
    Meta {
        /// Image entry.
        idx: usize,
        /// What differs.
        diff: Diff,
    },
    /// A hard link of the image to (re)make.
    Link {
        /// Image entry (a [`Kind::Hardlink`]).
        idx: usize,
    },
}

/// The changes, in image order (removals where rsync shows them: before the path that
/// takes their place).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every change.
    pub changes: Vec<Change>,
    /// Notes: directories kept because they hold a kept path.
    pub notes: Vec<String>,
}

/// Why no plan can be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The image turns a directory holding a kept path into something else.
    #[error("{path}: the image makes it a {kind}, but it holds {kept}, which the update must keep")]
    KeptParent {
        /// The directory.
        path: String,
        /// What the image has there.
        kind: &'static str,
        /// The kept path inside.
        kept: String,
    },
    /// An entry list is not in manifest order.
    #[error("entry list out of order at {0}")]
    Order(String),
}

fn show(p: &[u8]) -> String {
    if p.is_empty() { "/".into() } else { format!("/{}", String::from_utf8_lossy(p)) }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::File { .. } => "file",
        Kind::Dir => "directory",
        Kind::Symlink { .. } => "symlink",
        Kind::Hardlink { .. } => "hard link",
        Kind::CharDev { .. } => "character device",
        Kind::BlockDev { .. } => "block device",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

/// Is `p` `dir` or below it?
fn under(p: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || p == dir || (p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/')
}

fn is_acl(x: &Xattr) -> bool {
    x.name.starts_with(b"system.posix_acl_")
}

/// Metadata differences of two entries of the same type.
pub fn meta_diff(cur: &Entry, img: &Entry) -> Diff {
    let symlink = matches!(img.kind, Kind::Symlink { .. });
    let acls = |e: &Entry| e.xattrs.iter().filter(|x| is_acl(x)).cloned().collect::<Vec<_>>();
    let other = |e: &Entry| e.xattrs.iter().filter(|x| !is_acl(x)).cloned().collect::<Vec<_>>();
    Diff {
        content: false,
        size: false,
        time: cur.mtime != img.mtime || cur.mtime_nsec != img.mtime_nsec,
        // A symlink's mode cannot be set on Linux.
        perms: !symlink && cur.mode != img.mode,
        owner: cur.uid != img.uid,
        group: cur.gid != img.gid,
        acl: acls(cur) != acls(img),
        xattrs: other(cur) != other(img),
    }
}

/// Content differences of two entries of the same type (a file by size and mtime, the
/// quick check rsync makes; the caller re-hashes when it wants more).
fn content_diff(cur: &Entry, img: &Entry) -> (bool, bool) {
    match (&cur.kind, &img.kind) {
        (Kind::File { size: a, .. }, Kind::File { size: b, .. }) => {
            let size = a != b;
            (size || cur.mtime != img.mtime || cur.mtime_nsec != img.mtime_nsec, size)
        }
        (Kind::Symlink { target: a }, Kind::Symlink { target: b }) => (a != b, false),
        (Kind::CharDev { rdev: a }, Kind::CharDev { rdev: b })
        | (Kind::BlockDev { rdev: a }, Kind::BlockDev { rdev: b }) => (a != b, false),
        _ => (false, false),
    }
}

fn same_type(a: &Kind, b: &Kind) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn check_order(list: &[Entry]) -> Result<(), PlanError> {
    for w in list.windows(2) {
        if path_cmp(&w[0].path, &w[1].path) != Ordering::Less {
            return Err(PlanError::Order(show(&w[1].path)));
        }
    }
    Ok(())
}

/// Plan the update of `current` (the target, as the scan lists it: hard-link members after
/// the first as [`Kind::Hardlink`]) to `image` (the manifest's entries). `keep(path, is_dir)`
/// says whether a path is left alone (a kept directory keeps everything under it).
pub fn plan(current: &[Entry], image: &[Entry], keep: &dyn Fn(&[u8], bool) -> bool) -> Result<Plan, PlanError> {
    check_order(current)?;
    check_order(image)?;
    let mut out = Plan::default();
    // Kept paths of the target and the directories above them: those stay directories.
    let mut pinned: HashSet<&[u8]> = HashSet::new();
    let mut kept_below: Vec<(&[u8], &[u8])> = Vec::new();
    let mut kept_dir: Option<&[u8]> = None;
    for e in current {
        if kept_dir.is_some_and(|d| under(&e.path, d)) {
            continue;
        }
        if !e.path.is_empty() && keep(&e.path, e.kind == Kind::Dir) {
            if e.kind == Kind::Dir {
                kept_dir = Some(&e.path);
            }
            let mut p: &[u8] = &e.path;
            while let Some((parent, _)) = split_parent(p) {
                if pinned.insert(parent) {
                    kept_below.push((parent, &e.path));
                }
                p = parent;
            }
        }
    }
    let kept_in = |dir: &[u8]| kept_below.iter().find(|(d, _)| *d == dir).map(|(_, k)| show(k)).unwrap_or_default();

    // Merge both lists in manifest order.
    let (mut i, mut j) = (0usize, 0usize);
    let mut skip_cur: Option<&[u8]> = None;
    let mut skip_img: Option<&[u8]> = None;
    // Image paths written anew (their hard links must be made again).
    let mut rewritten: HashSet<&[u8]> = HashSet::new();
    let mut links: Vec<(usize, usize)> = Vec::new(); // (position in changes to fill, image idx)
    let mut removes: Vec<Change> = Vec::new();
    let flush_removes = |out: &mut Plan, removes: &mut Vec<Change>| {
        // Deepest first, so a directory goes after its contents.
        removes.reverse();
        out.changes.append(removes);
    };
    loop {
        let c = current.get(i);
        let m = image.get(j);
        let ord = match (c, m) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(c), Some(m)) => path_cmp(&c.path, &m.path),
        };
        if ord == Ordering::Less {
            let c = &current[i];
            i += 1;
            if skip_cur.is_some_and(|d| under(&c.path, d)) {
                continue;
            }
            let is_dir = c.kind == Kind::Dir;
            if keep(&c.path, is_dir) {
                if is_dir {
                    skip_cur = Some(&c.path);
                }
                continue;
            }
            if pinned.contains(c.path.as_slice()) {
                out.notes.push(format!("{}: not in the image, kept: it holds {}", show(&c.path), kept_in(&c.path)));
                continue;
            }
            removes.push(Change::Remove { path: c.path.clone(), dir: is_dir });
            continue;
        }
        // The removals before this image path are complete (no image path sorts inside a
        // removed directory): deepest first, so a directory goes after its contents.
        flush_removes(&mut out, &mut removes);
        let idx = j;
        let m = &image[j];
        j += 1;
        let cur = if ord == Ordering::Equal {
            i += 1;
            current.get(i - 1)
        } else {
            None
        };
        if skip_img.is_some_and(|d| under(&m.path, d)) {
            if let Some(c) = cur
                && c.kind == Kind::Dir
            {
                skip_cur = Some(&c.path);
            }
            continue;
        }
        let img_dir = m.kind == Kind::Dir;
        if !m.path.is_empty() && (keep(&m.path, img_dir) || cur.is_some_and(|c| keep(&c.path, c.kind == Kind::Dir))) {
            if img_dir {
                skip_img = Some(&m.path);
            }
            if let Some(c) = cur
                && c.kind == Kind::Dir
            {
                skip_cur = Some(&c.path);
            }
            continue;
        }
        if pinned.contains(m.path.as_slice()) && !img_dir {
            return Err(PlanError::KeptParent {
                path: show(&m.path),
                kind: kind_name(&m.kind),
                kept: kept_in(&m.path),
            });
        }
        if let Kind::Hardlink { .. } = m.kind {
            if let Some(c) = cur
                && c.kind == Kind::Dir
            {
                remove_subtree(current, &mut i, c, keep, &mut out.changes);
            }
            // Decided once every write is known (see below).
            links.push((out.changes.len(), idx));
            out.changes.push(Change::Link { idx });
            continue;
        }
        match cur {
            None => {
                rewritten.insert(&m.path);
                out.changes.push(Change::Create { idx });
            }
            Some(c) if same_type(&c.kind, &m.kind) => {
                let (content, size) = content_diff(c, m);
                let mut diff = meta_diff(c, m);
                diff.content = content;
                diff.size = size;
                if content {
                    rewritten.insert(&m.path);
                    out.changes.push(Change::Replace { idx, diff, retype: false });
                } else if diff.any() {
                    out.changes.push(Change::Meta { idx, diff });
                }
            }
            Some(c) => {
                rewritten.insert(&m.path);
                let cur_dir = c.kind == Kind::Dir;
                if cur_dir || img_dir {
                    // rename(2) cannot put a directory over a file or the reverse: the old
                    // entry (and everything under an old directory) goes first.
                    if cur_dir {
                        remove_subtree(current, &mut i, c, keep, &mut out.changes);
                    } else {
                        out.changes.push(Change::Remove { path: c.path.clone(), dir: false });
                    }
                    out.changes.push(Change::Create { idx });
                } else {
                    // A file that was a member of a hard-link set is written as its own.
                    let diff = Diff { content: true, ..meta_diff(c, m) };
                    out.changes.push(Change::Replace { idx, diff, retype: !matches!(c.kind, Kind::Hardlink { .. }) });
                }
            }
        }
    }
    flush_removes(&mut out, &mut removes);
    // A hard link is right when the target has the same link and its file stays.
    let mut drop_at: Vec<usize> = Vec::new();
    for (pos, idx) in links {
        let m = &image[idx];
        let Kind::Hardlink { target } = &m.kind else { continue };
        let cur = current.binary_search_by(|c| path_cmp(&c.path, &m.path)).ok().map(|k| &current[k]);
        let same = cur.is_some_and(|c| matches!(&c.kind, Kind::Hardlink { target: t } if t == target));
        if same && !rewritten.contains(target.as_slice()) {
            drop_at.push(pos);
        }
    }
    for pos in drop_at.into_iter().rev() {
        out.changes.remove(pos);
    }
    Ok(out)
}

/// Remove the target's directory `c` (at `current[*i - 1]`) with everything under it,
/// deepest first; `*i` moves past its descendants.
fn remove_subtree(
    current: &[Entry],
    i: &mut usize,
    c: &Entry,
    keep: &dyn Fn(&[u8], bool) -> bool,
    changes: &mut Vec<Change>,
) {
    let mut kids: Vec<Change> = Vec::new();
    while let Some(k) = current.get(*i).filter(|k| under(&k.path, &c.path)) {
        *i += 1;
        if !keep(&k.path, k.kind == Kind::Dir) {
            kids.push(Change::Remove { path: k.path.clone(), dir: k.kind == Kind::Dir });
        }
    }
    kids.reverse();
    changes.extend(kids);
    changes.push(Change::Remove { path: c.path.clone(), dir: true });
}

impl Change {
    /// The image entry this change writes, if any.
    pub fn idx(&self) -> Option<usize> {
        match self {
            Change::Create { idx } | Change::Replace { idx, .. } | Change::Meta { idx, .. } | Change::Link { idx } => {
                Some(*idx)
            }
            Change::Remove { .. } => None,
        }
    }
}

fn type_char(k: &Kind) -> char {
    match k {
        Kind::File { .. } | Kind::Hardlink { .. } => 'f',
        Kind::Dir => 'd',
        Kind::Symlink { .. } => 'L',
        Kind::CharDev { .. } | Kind::BlockDev { .. } => 'D',
        Kind::Fifo | Kind::Socket => 'S',
    }
}

fn rel(p: &[u8], dir: bool) -> String {
    let s = String::from_utf8_lossy(p);
    match (p.is_empty(), dir) {
        (true, _) => "./".into(),
        (false, true) => format!("{s}/"),
        (false, false) => s.into_owned(),
    }
}

/// One line per change in the style of `rsync -i` (`YXcstpoguax path`).
pub fn itemize(c: &Change, image: &[Entry]) -> String {
    let flags = |d: &Diff| {
        let f = |b: bool, ch: char| if b { ch } else { '.' };
        format!(
            "{}{}{}{}{}{}.{}{}",
            f(d.content && !d.size && !d.time, 'c'),
            f(d.size, 's'),
            f(d.time, 't'),
            f(d.perms, 'p'),
            f(d.owner, 'o'),
            f(d.group, 'g'),
            f(d.acl, 'a'),
            f(d.xattrs, 'x')
        )
    };
    let tail = |e: &Entry| match &e.kind {
        Kind::Symlink { target } => format!(" -> {}", String::from_utf8_lossy(target)),
        Kind::Hardlink { target } => format!(" => {}", String::from_utf8_lossy(target)),
        _ => String::new(),
    };
    match c {
        Change::Remove { path, dir } => format!("*deleting   {}", rel(path, *dir)),
        Change::Create { idx } | Change::Link { idx } => {
            let e = &image[*idx];
            let y = match e.kind {
                Kind::File { .. } => '>',
                Kind::Hardlink { .. } => 'h',
                _ => 'c',
            };
            format!("{y}{}+++++++++ {}{}", type_char(&e.kind), rel(&e.path, e.kind == Kind::Dir), tail(e))
        }
        Change::Replace { idx, diff, retype } => {
            let e = &image[*idx];
            let y = if matches!(e.kind, Kind::File { .. }) { '>' } else { 'c' };
            // A new type is a new entry to rsync.
            let f = if *retype { "+++++++++".to_string() } else { flags(diff) };
            format!("{y}{}{f} {}{}", type_char(&e.kind), rel(&e.path, false), tail(e))
        }
        Change::Meta { idx, diff } => {
            let e = &image[*idx];
            format!(".{}{} {}", type_char(&e.kind), flags(diff), rel(&e.path, e.kind == Kind::Dir))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::{ChunkRef, Extent};

    fn e(p: &str, kind: Kind) -> Entry {
        Entry {
            path: p.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 100,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }
    fn d(p: &str) -> Entry {
        Entry { mode: 0o755, ..e(p, Kind::Dir) }
    }
    fn f(p: &str, size: u64) -> Entry {
        let extents = vec![Extent { offset: 0, chunks: vec![ChunkRef { id: [size as u8; 32], len: size as u32 }] }];
        e(p, Kind::File { size, extents })
    }
    fn l(p: &str, t: &str) -> Entry {
        e(p, Kind::Symlink { target: t.as_bytes().to_vec() })
    }
    fn h(p: &str, t: &str) -> Entry {
        e(p, Kind::Hardlink { target: t.as_bytes().to_vec() })
    }
    fn none(_: &[u8], _: bool) -> bool {
        false
    }
    fn lines(cur: &[Entry], img: &[Entry], keep: &dyn Fn(&[u8], bool) -> bool) -> Vec<String> {
        plan(cur, img, keep).unwrap().changes.iter().map(|c| itemize(c, img)).collect()
    }

    #[test]
    fn identical_trees_need_nothing() {
        let t = vec![d(""), d("a"), f("a/x", 3), l("a/y", "x"), h("a/z", "a/x")];
        assert_eq!(plan(&t, &t, &none).unwrap(), Plan::default());
    }

    #[test]
    fn creates_removes_and_changes_in_rsync_style() {
        let cur = vec![d(""), d("a"), f("a/grow", 3), f("a/old", 1), f("a/same", 2), d("gone"), f("gone/f", 1)];
        let mut touched = f("a/same", 2);
        touched.mode = 0o600;
        touched.mtime = 5;
        let img = vec![d(""), d("a"), f("a/grow", 4), f("a/new", 1), touched, l("ln", "a/new")];
        assert_eq!(
            lines(&cur, &img, &none),
            [
                ">f.s....... a/grow",
                ">f+++++++++ a/new",
                "*deleting   a/old",
                ">f..tp..... a/same",
                "*deleting   gone/f",
                "*deleting   gone/",
                "cL+++++++++ ln -> a/new",
            ]
        );
    }

    #[test]
    fn a_file_becoming_a_directory_or_symlink() {
        let cur = vec![d(""), f("a", 1), f("b", 1), d("c"), f("c/x", 1), d("c/y"), f("c/y/z", 1)];
        let img = vec![d(""), d("a"), f("a/in", 1), l("b", "a"), f("c", 9)];
        assert_eq!(
            lines(&cur, &img, &none),
            [
                "*deleting   a",
                "cd+++++++++ a/",
                ">f+++++++++ a/in",
                "cL+++++++++ b -> a",
                "*deleting   c/y/z",
                "*deleting   c/y/",
                "*deleting   c/x",
                "*deleting   c/",
                ">f+++++++++ c",
            ]
        );
        let p = plan(&cur, &img, &none).unwrap();
        assert!(matches!(p.changes[3], Change::Replace { retype: true, .. }));
    }

    #[test]
    fn hard_link_sets_follow_their_files() {
        // Unchanged set: nothing. Target file rewritten: its link is made again.
        let cur = vec![d(""), f("a", 1), h("b", "a"), f("c", 1), h("d", "c")];
        let img = vec![d(""), f("a", 1), h("b", "a"), f("c", 2), h("d", "c")];
        assert_eq!(lines(&cur, &img, &none), [">f.s....... c", "hf+++++++++ d => c"]);
        // A link broken up: the old member is written as its own file; a new link made.
        let img2 = vec![d(""), f("a", 1), f("b", 1), f("c", 1), h("d", "a")];
        let p = plan(&cur, &img2, &none).unwrap();
        assert_eq!(p.changes.len(), 2, "{p:?}");
        assert!(matches!(p.changes[0], Change::Replace { idx: 2, retype: false, .. }));
        assert_eq!(p.changes[1], Change::Link { idx: 4 });
        // A plain file becoming a link; a directory becoming one.
        let cur3 = vec![d(""), f("a", 1), d("b"), f("b/x", 1), f("c", 1)];
        let img3 = vec![d(""), f("a", 1), h("b", "a"), h("c", "a")];
        assert_eq!(
            lines(&cur3, &img3, &none),
            ["*deleting   b/x", "*deleting   b/", "hf+++++++++ b => a", "hf+++++++++ c => a"]
        );
    }

    #[test]
    fn kept_paths_are_left_alone_on_both_sides() {
        let cur = vec![d(""), d("etc"), f("etc/hostname", 5), f("etc/passwd", 1), d("keep"), f("keep/x", 1)];
        let img = vec![d(""), d("etc"), f("etc/hostname", 9), f("etc/machine-id", 3), f("etc/passwd", 2)];
        let keep = |p: &[u8], _: bool| matches!(p, b"etc/hostname" | b"etc/machine-id" | b"keep");
        assert_eq!(lines(&cur, &img, &keep), [">f.s....... etc/passwd"]);
    }

    #[test]
    fn a_directory_holding_a_kept_path_stays() {
        let cur =
            vec![d(""), d("var"), d("var/lib"), d("var/lib/understudy"), f("var/lib/understudy/deployed.json", 1)];
        let img = vec![d("")];
        let keep = |p: &[u8], _: bool| p == b"var/lib/understudy/deployed.json";
        let p = plan(&cur, &img, &keep).unwrap();
        assert!(p.changes.is_empty(), "{p:?}");
        assert_eq!(p.notes.len(), 3);
        // The image may not put a file there.
        let img2 = vec![d(""), f("var", 1)];
        let err = plan(&cur, &img2, &keep).unwrap_err();
        assert!(matches!(err, PlanError::KeptParent { ref path, .. } if path == "/var"), "{err}");
    }

    #[test]
    fn metadata_flags_split_acls_from_other_xattrs() {
        let cur = vec![d(""), f("a", 1)];
        let mut x = f("a", 1);
        x.xattrs = vec![Xattr { name: b"system.posix_acl_access".to_vec(), value: vec![1] }];
        x.uid = 7;
        let img = vec![d(""), x];
        assert_eq!(lines(&cur, &img, &none), [".f....o..a. a"]);
        let mut y = d("");
        y.xattrs = vec![Xattr { name: b"user.x".to_vec(), value: vec![1] }];
        assert_eq!(lines(&cur[..1], &[y], &none), [".d........x ./"]);
    }

    #[test]
    fn out_of_order_input_is_refused() {
        let bad = vec![d(""), f("b", 1), f("a", 1)];
        assert!(matches!(plan(&bad, &[d("")], &none), Err(PlanError::Order(_))));
    }
}
