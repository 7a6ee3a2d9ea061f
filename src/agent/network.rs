//! The deployed standby's own network identity and its side of the failover pair, applied to
//! the written root: the image's network configuration is rewritten from the primary's
//! addresses and MACs to the node's ([`crate::netcfg`]), and when the node is a standby of a
//! primary running `[failover]`, the standby's configuration and heartbeat key are written and
//! `understudy.service` is enabled the way `systemctl enable` would.
//!
//! Everything under the root is reached through [`resolve_in_root`], the way a chroot would see
//! it: an absolute symlink in the image points into the image, never at the installer's own
//! files.

use crate::config::{Config, ConfigError};
use crate::failover::packet::{KeyFileError, parse_key_file};
use crate::netcfg::{InterfaceMap, Mac, Mapping, NetcfgError, NodeIdentity, Report, resolve_in_root, rewrite_tree};
use crate::wire::{NetInterface, NetworkPlan, StandbyFailover};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where an image may carry the understudy binary.
const BINARIES: [&str; 4] =
    ["/usr/bin/understudy", "/usr/sbin/understudy", "/usr/local/bin/understudy", "/usr/local/sbin/understudy"];
/// systemd's unit directories, highest precedence first (`/usr/lib` before `/lib`: on a merged
/// /usr both are one directory and the link names the canonical one).
const UNIT_DIRS: [&str; 4] =
    ["/etc/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"];
/// The unit that runs understudy.
const UNIT: &str = "understudy.service";
/// How many changes of one file are listed before the rest are counted.
const CHANGES_SHOWN: usize = 6;

/// Why the network step cannot go on; the deploy fails with it.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// An interface in the plan is not valid.
    #[error("the network plan's {side} interface {index}: {source}")]
    Interface {
        /// `primary` or `standby`.
        side: &'static str,
        /// Its position in the plan (0-based).
        index: usize,
        /// What is wrong.
        #[source]
        source: NetcfgError,
    },
    /// A VIP in the plan is not an address.
    #[error("the network plan's VIP {0:?} is not an IP address")]
    Vip(String),
    /// The node has no network identity and the image configures the primary's addresses:
    /// the clone would come up with them.
    #[error(
        "node {node} has no network identity, and the image configures the primary's addresses:\n  {}\nthe \
         clone would come up with them; give the node its own (`understudy nodes network {node} --from-primary`)",
        problems.join("\n  ")
    )]
    NoIdentity {
        /// The node.
        node: String,
        /// Each problem as `path:line: reason`.
        problems: Vec<String>,
    },
    /// The primary's and the node's identities do not pair up.
    #[error("the node's network identity does not fit the primary's: {0}")]
    Mapping(#[source] NetcfgError),
    /// Reading or rewriting the image's network configuration failed.
    #[error("rewriting the image's network configuration: {0}")]
    Rewrite(#[source] NetcfgError),
    /// The standby would come up with what the primary holds, or with configuration nobody
    /// understood, and the node is not forced.
    #[error(
        "the image's network configuration cannot be rewritten safely for {node}:\n  {}\nset the node's network \
         force flag (`understudy nodes network {node} --force`) to deploy anyway",
        problems.join("\n  ")
    )]
    Refused {
        /// The node.
        node: String,
        /// Each problem as `path:line: reason`.
        problems: Vec<String>,
    },
    /// A path in the plan that is not a plain absolute path inside the image.
    #[error("the network plan's {what} {path:?} {reason}")]
    BadPath {
        /// Which path (`config_path`, `key_path`).
        what: &'static str,
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The standby's failover configuration in the plan does not load.
    #[error("the standby's failover configuration from the server: {0}")]
    Config(#[source] ConfigError),
    /// The standby's failover configuration has no `[failover]`.
    #[error("the standby's failover configuration from the server has no [failover] section")]
    NoFailover,
    /// The heartbeat key in the plan does not parse.
    #[error("the standby's heartbeat key from the server: {0}")]
    Key(#[source] KeyFileError),
    /// The standby's `[sync]` and the plan's token do not go together (a `[sync]` without
    /// its token would keep the standby's service from starting).
    #[error("the standby's [sync] from the server: {0}")]
    Sync(&'static str),
    /// The systemd unit's `[Install]` names something that is not a unit.
    #[error("{unit}: [Install] {key}={value:?} is not a unit name")]
    Install {
        /// The unit file, as an image path.
        unit: String,
        /// `WantedBy` or `RequiredBy`.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// Something under the root is in the way (a file where a directory must be).
    #[error("{path}: {reason}")]
    InTheWay {
        /// The image path.
        path: String,
        /// What is there.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file on the installer's side.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError + use<> {
    let path = path.to_path_buf();
    move |source| NetworkError::Io { op, path, source }
}

/// Apply the server's network plan to the root written at `root`; returns lines for the
/// agent's log. A refused rewrite fails unless the plan is forced (then each problem is
/// logged); the failover configuration is written only when the plan has one.
pub fn apply(root: &Path, plan: &NetworkPlan) -> Result<Vec<String>, NetworkError> {
    apply_recorded(root, plan).map(|a| a.lines)
}

/// What [`apply_recorded`] did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Lines for the agent's log.
    pub lines: Vec<String>,
    /// Image paths written, removed or linked for this node (network files, the failover
    /// configuration and key, the unit's enable links): the deployment record keeps them.
    pub paths: Vec<PathBuf>,
}

/// [`apply`], also returning the paths it touched.
pub fn apply_recorded(root: &Path, plan: &NetworkPlan) -> Result<Applied, NetworkError> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut lines: Vec<String> = plan.notes.iter().map(|n| format!("server: {n}")).collect();
    let primary = identity("primary", &plan.primary)?;
    let standby = identity("standby", &plan.standby)?;
    let vips = plan
        .vips
        .iter()
        .map(|v| v.parse::<IpAddr>().map_err(|_| NetworkError::Vip(v.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    if primary.interfaces.is_empty() {
        lines.push(
            "the primary's network identity is empty: nothing to map, the image's network configuration is \
             left as it is"
                .into(),
        );
    } else {
        // Without an identity of its own the node gets none of the primary's addresses:
        // an image configured by DHCP deploys as it is, one holding the primary's static
        // addresses is refused below, address by address.
        let unmapped = standby.interfaces.is_empty();
        let mapping = if unmapped {
            let interfaces = primary
                .interfaces
                .iter()
                .map(|p| InterfaceMap {
                    primary: p.clone(),
                    standby_mac: None,
                    standby_addresses: vec![],
                    standby_name: None,
                })
                .collect();
            let m = Mapping { interfaces, vips };
            m.validate().map_err(NetworkError::Mapping)?;
            lines.push(format!(
                "node {} has no network identity: only the primary's addresses are looked for",
                plan.node
            ));
            m
        } else {
            Mapping::from_identities(&primary, &standby, vips).map_err(NetworkError::Mapping)?
        };
        let report = rewrite_tree(root, &mapping).map_err(NetworkError::Rewrite)?;
        paths.extend(report.rewritten.iter().chain(&report.removed).cloned());
        let (summary, problems) = assess(&report, &mapping);
        lines.extend(summary);
        if !problems.is_empty() {
            if !plan.force && unmapped {
                return Err(NetworkError::NoIdentity { node: plan.node.clone(), problems });
            }
            if !plan.force {
                return Err(NetworkError::Refused { node: plan.node.clone(), problems });
            }
            lines.push(format!("forced: deploying despite {} problem(s):", problems.len()));
            lines.extend(problems.into_iter().map(|p| format!("  {p}")));
        }
    }
    if let Some(f) = &plan.failover {
        lines.extend(write_failover(root, f)?);
        paths.push(image_path("config_path", &f.config_path)?);
        paths.push(image_path("key_path", &f.key_path)?);
        if let Some(sync) = &f.sync {
            paths.push(image_path("token_path", &sync.token_path)?);
        }
        lines.extend(enable_service(root, &mut paths)?);
    }
    Ok(Applied { lines, paths })
}

fn identity(side: &'static str, interfaces: &[NetInterface]) -> Result<NodeIdentity, NetworkError> {
    let interfaces = interfaces
        .iter()
        .enumerate()
        .map(|(index, i)| i.to_interface().map_err(|source| NetworkError::Interface { side, index, source }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NodeIdentity { interfaces })
}

/// What the rewrite did, as log lines, and what stops the deploy unless forced, each as
/// `path:line: reason`: refusals, files that could not be parsed, and constructs not
/// understood that mention a primary address, a VIP or a primary MAC.
pub fn assess(report: &Report, mapping: &Mapping) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let at =
        |p: &Path, line: usize| if line == 0 { p.display().to_string() } else { format!("{}:{line}", p.display()) };
    for f in &report.files {
        if let Some(e) = &f.error {
            problems.push(format!("{}: could not be parsed, left alone: {e}", f.path.display()));
        }
        let ch = &f.changes;
        if !ch.changed.is_empty() {
            let mut shown: Vec<String> =
                ch.changed.iter().take(CHANGES_SHOWN).map(|n| format!("{}: {}", n.line, n.what)).collect();
            if ch.changed.len() > CHANGES_SHOWN {
                shown.push(format!("and {} more", ch.changed.len() - CHANGES_SHOWN));
            }
            lines.push(format!("{} ({:?}): {}", f.path.display(), f.stack, shown.join("; ")));
        }
        for n in &ch.unknown {
            if mentions_primary(&n.what, mapping) {
                problems.push(format!(
                    "{}: not understood and mentions a primary address: {}",
                    at(&f.path, n.line),
                    n.what
                ));
            } else {
                lines.push(format!("{}: not understood, left alone: {}", at(&f.path, n.line), n.what));
            }
        }
    }
    for r in &report.refused {
        problems.push(format!("{}: {}", at(&r.path, r.line), r.reason));
    }
    lines.extend(report.removed.iter().map(|p| format!("{}: removed", p.display())));
    lines.extend(report.notes.iter().cloned());
    (lines, problems)
}

/// Whether `text` holds a primary address, a VIP or a primary MAC (as a word of its own).
fn mentions_primary(text: &str, m: &Mapping) -> bool {
    let primary_ips = m.primary_addresses();
    text.split(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '-' | '/')))
        .map(|t| t.split('/').next().unwrap_or(t).trim_matches(|c| matches!(c, '.' | ':' | '-')))
        .filter(|t| !t.is_empty())
        .any(|t| {
            t.parse::<IpAddr>().is_ok_and(|ip| primary_ips.contains(&ip))
                || t.parse::<Mac>().is_ok_and(|mac| m.mac(mac).is_some())
        })
}

/// Check a path from the plan: absolute, no `.` or `..`, not the root itself.
fn image_path(what: &'static str, path: &str) -> Result<PathBuf, NetworkError> {
    let bad = |reason| Err(NetworkError::BadPath { what, path: path.to_string(), reason });
    if !path.starts_with('/') {
        return bad("is not an absolute path");
    }
    if path.contains('\0') {
        return bad("holds a NUL byte");
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return bad("has a . or .. component");
    }
    if parts.is_empty() {
        return bad("names no file");
    }
    Ok(PathBuf::from(format!("/{}", parts.join("/"))))
}

/// Make the image directory `dir` (absolute) exist, creating what is missing (`dir` itself with
/// `mode`, its parents with 0755); returns it on the installer's side.
fn ensure_dir(root: &Path, dir: &Path, mode: u32) -> Result<PathBuf, NetworkError> {
    let mut image = PathBuf::from("/");
    let mut host = root.to_path_buf();
    let parts: Vec<_> = dir.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
    for (i, c) in parts.iter().enumerate() {
        let mode = if i + 1 == parts.len() { mode } else { 0o755 };
        image.push(c);
        host = match resolve_in_root(root, &image).map_err(NetworkError::Rewrite)? {
            Some(h) if h.is_dir() => h,
            Some(_) => {
                return Err(NetworkError::InTheWay {
                    path: image.display().to_string(),
                    reason: "is not a directory".into(),
                });
            }
            None => {
                let h = host.join(c);
                // A dangling symlink resolves to nothing: creating through it could leave the root.
                if h.symlink_metadata().is_ok() {
                    return Err(NetworkError::InTheWay {
                        path: image.display().to_string(),
                        reason: "is a symlink to nothing".into(),
                    });
                }
                fs::DirBuilder::new().mode(mode).create(&h).map_err(io("mkdir", &h))?;
                fs::set_permissions(&h, fs::Permissions::from_mode(mode)).map_err(io("chmod", &h))?;
                h
            }
        };
    }
    Ok(host)
}

/// Write `data` at image path `path` with `mode` (its directory made with `dir_mode` when
/// missing): a temporary file, fsync, rename over whatever was there (a symlink is replaced,
/// never followed).
fn write_file(root: &Path, path: &Path, data: &[u8], mode: u32, dir_mode: u32) -> Result<(), NetworkError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dir = ensure_dir(root, parent, dir_mode)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let host = dir.join(&name);
    if host.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(NetworkError::InTheWay { path: path.display().to_string(), reason: "is a directory".into() });
    }
    let tmp = dir.join(format!(".{name}.understudy-tmp"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &tmp)(e)),
        _ => {}
    }
    let result = (|| {
        let mut f =
            fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io("create", &tmp))?;
        f.write_all(data).map_err(io("write", &tmp))?;
        // The umask may have narrowed the mode given at creation.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, &host).map_err(io("rename", &host))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write the standby's failover configuration and key (both checked first).
fn write_failover(root: &Path, f: &StandbyFailover) -> Result<Vec<String>, NetworkError> {
    let config_path = image_path("config_path", &f.config_path)?;
    let key_path = image_path("key_path", &f.key_path)?;
    let cfg = Config::parse(&f.config, &config_path).map_err(NetworkError::Config)?;
    let Some(fo) = &cfg.failover else { return Err(NetworkError::NoFailover) };
    parse_key_file(&f.key).map_err(NetworkError::Key)?;
    let token = sync_token(&cfg, f)?;
    write_file(root, &config_path, f.config.as_bytes(), 0o644, 0o755)?;
    write_file(root, &key_path, f.key.as_bytes(), 0o600, 0o700)?;
    let channels: Vec<String> = fo.channels.iter().map(|c| format!("{} {} → {}", c.name, c.local, c.peer)).collect();
    let mut lines = vec![
        format!("{}: failover as {} ({:?}), channels {}", config_path.display(), fo.node, fo.role, channels.join(", ")),
        format!("{}: heartbeat key written (0600)", key_path.display()),
    ];
    match (token, &cfg.sync) {
        (Some((path, token)), Some(s)) => {
            // The token itself is never logged.
            write_file(root, &path, format!("{token}\n").as_bytes(), 0o600, 0o700)?;
            lines.push(format!(
                "{}: follows the primary's image {} from {} ([sync]); its API token in {} (0600)",
                config_path.display(),
                s.image,
                s.server,
                path.display()
            ));
        }
        _ => lines
            .push(format!("{}: no [sync]: the standby does not follow the primary by itself", config_path.display())),
    }
    Ok(lines)
}

/// The token file the standby's `[sync]` reads, checked against the configuration: the
/// plan's token goes exactly where `sync.token_file` points (relative to the data dir), and
/// a `[sync]` reading a file needs the plan's token. Refused before anything is written.
fn sync_token<'a>(cfg: &Config, f: &'a StandbyFailover) -> Result<Option<(PathBuf, &'a str)>, NetworkError> {
    let wanted = cfg
        .sync
        .as_ref()
        .and_then(|s| s.token_file.as_ref())
        .map(|t| cfg.data_dir.clone().unwrap_or_else(|| crate::failover::join::STANDBY_DATA_DIR.into()).join(t));
    match (&f.sync, wanted) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(NetworkError::Sync("it reads a token file, but the plan carries no token")),
        (Some(_), None) => Err(NetworkError::Sync("the plan carries a token, but no [sync] reads a token file")),
        (Some(s), Some(wanted)) => {
            let path = image_path("token_path", &s.token_path)?;
            if path != wanted {
                return Err(NetworkError::Sync("the token's path is not the file sync.token_file names"));
            }
            let token = s.token.trim();
            if token.is_empty() || token.len() > 256 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(NetworkError::Sync("the token is not one word of 1-256 characters"));
            }
            Ok(Some((path, token)))
        }
    }
}

/// Where the unit was found.
#[derive(Debug, PartialEq, Eq)]
enum UnitFile {
    /// At this image path, read from this installer path.
    Found(PathBuf, PathBuf),
    /// Masked (a link to /dev/null) at this image path.
    Masked(PathBuf),
    /// Nowhere.
    Missing,
}

fn find_unit(root: &Path) -> Result<UnitFile, NetworkError> {
    for dir in UNIT_DIRS {
        let Some(host_dir) = resolve_in_root(root, Path::new(dir)).map_err(NetworkError::Rewrite)? else { continue };
        let image = Path::new(dir).join(UNIT);
        let entry = host_dir.join(UNIT);
        let Ok(md) = entry.symlink_metadata() else { continue };
        if md.file_type().is_symlink() {
            let target = fs::read_link(&entry).map_err(io("readlink", &entry))?;
            if target == Path::new("/dev/null") {
                return Ok(UnitFile::Masked(image));
            }
        }
        match resolve_in_root(root, &image).map_err(NetworkError::Rewrite)? {
            Some(h) if h.is_file() => return Ok(UnitFile::Found(image, h)),
            Some(h) if h.symlink_metadata().is_ok_and(|m| m.file_type().is_char_device()) => {
                return Ok(UnitFile::Masked(image));
            }
            _ => {}
        }
    }
    Ok(UnitFile::Missing)
}

fn find_binary(root: &Path) -> Result<Option<&'static str>, NetworkError> {
    for b in BINARIES {
        if let Some(h) = resolve_in_root(root, Path::new(b)).map_err(NetworkError::Rewrite)?
            && h.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// Whether `s` can be a unit name (no path separators, a known unit suffix).
fn is_unit_name(s: &str) -> bool {
    let ok_chars = s.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
    let suffix = [".target", ".service", ".socket", ".path", ".timer", ".slice", ".device", ".mount"]
        .iter()
        .any(|x| s.len() > x.len() && s.ends_with(x));
    ok_chars && suffix && !s.starts_with('.') && s.len() <= 255
}

/// The `.wants`/`.requires` links `systemctl enable` makes for a unit: its `[Install]`
/// `WantedBy=` and `RequiredBy=` (an empty assignment resets the list, as in systemd);
/// `multi-user.target` wanted when it names none.
fn install_targets(unit_text: &str, unit: &Path) -> Result<Vec<(&'static str, String)>, NetworkError> {
    let mut wanted: Vec<String> = Vec::new();
    let mut required: Vec<String> = Vec::new();
    let mut in_install = false;
    for raw in unit_text.lines() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else { continue };
        let list = match k.trim() {
            "WantedBy" => &mut wanted,
            "RequiredBy" => &mut required,
            _ => continue,
        };
        if v.trim().is_empty() {
            list.clear();
        }
        list.extend(v.split_whitespace().map(str::to_string));
    }
    if wanted.is_empty() && required.is_empty() {
        wanted.push("multi-user.target".into());
    }
    let mut out = Vec::new();
    for (key, suffix, list) in [("WantedBy", "wants", wanted), ("RequiredBy", "requires", required)] {
        for t in list {
            if !is_unit_name(&t) {
                return Err(NetworkError::Install { unit: unit.display().to_string(), key, value: t });
            }
            if !out.iter().any(|(s, o)| *s == suffix && *o == t) {
                out.push((suffix, t));
            }
        }
    }
    Ok(out)
}

/// Enable `understudy.service` in the image when it carries both the binary and the unit;
/// otherwise a note says why the failover configuration will not run.
fn enable_service(root: &Path, links: &mut Vec<PathBuf>) -> Result<Vec<String>, NetworkError> {
    let binary = find_binary(root)?;
    let unit = find_unit(root)?;
    let (image_unit, host_unit) = match (binary, unit) {
        (_, UnitFile::Masked(at)) => {
            return Ok(vec![format!(
                "{UNIT} is masked in the image ({} → /dev/null): not enabled, so the standby's failover will not \
                 run until it is unmasked (systemctl unmask {UNIT})",
                at.display()
            )]);
        }
        (Some(_), UnitFile::Found(image, host)) => (image, host),
        (b, u) => {
            let missing = match (b.is_none(), u == UnitFile::Missing) {
                (true, true) => "binary or unit",
                (true, false) => "binary",
                _ => "unit",
            };
            return Ok(vec![format!(
                "the image has no understudy {missing}: the standby's failover configuration is written but nothing \
                 runs it; install understudy on the primary (make install / the .deb) and capture again"
            )]);
        }
    };
    let text = fs::read_to_string(&host_unit).map_err(io("read", &host_unit))?;
    let mut lines = Vec::new();
    for (suffix, target) in install_targets(&text, &image_unit)? {
        let dir_image = PathBuf::from(format!("/etc/systemd/system/{target}.{suffix}"));
        let dir = ensure_dir(root, &dir_image, 0o755)?;
        let link = dir.join(UNIT);
        let link_image = dir_image.join(UNIT);
        links.push(link_image.clone());
        match link.symlink_metadata() {
            Ok(md) if md.file_type().is_symlink() => {
                // The captured primary had it enabled already, perhaps through another of the
                // unit's paths (/lib for /usr/lib): the same file is the same unit.
                if resolve_in_root(root, &link_image).map_err(NetworkError::Rewrite)?.as_ref() == Some(&host_unit) {
                    lines.push(format!("{UNIT}: already enabled ({})", link_image.display()));
                    continue;
                }
                fs::remove_file(&link).map_err(io("remove", &link))?;
            }
            Ok(_) => {
                return Err(NetworkError::InTheWay {
                    path: link_image.display().to_string(),
                    reason: "is not a symlink".into(),
                });
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&image_unit, &link).map_err(io("symlink", &link))?;
        lines.push(format!("{UNIT}: enabled ({} → {})", link_image.display(), image_unit.display()));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/netcfg");

    fn iface(name: &str, mac: &str, addr: &str, role: &str) -> NetInterface {
        NetInterface {
            name: Some(name.into()),
            mac: Some(mac.into()),
            addresses: vec![addr.into()],
            gateway: None,
            dns: vec![],
            role: role.into(),
        }
    }

    fn plan() -> NetworkPlan {
        NetworkPlan {
            node: "head-b".into(),
            primary: vec![
                iface("eth0", "52:54:00:00:00:01", "10.0.0.1/24", "private"),
                iface("eth1", "52:54:00:00:00:02", "192.0.2.10/24", "public"),
            ],
            standby: vec![
                iface("eth0", "52:54:00:00:01:01", "10.0.0.2/24", "private"),
                iface("eth1", "52:54:00:00:01:02", "192.0.2.11/24", "public"),
            ],
            vips: vec!["192.0.2.100".into()],
            force: false,
            failover: None,
            notes: vec!["node head-b is the standby of head-a".into()],
        }
    }

    fn put(root: &Path, image: &str, text: &str) {
        let p = root.join(image.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn read(root: &Path, image: &str) -> String {
        fs::read_to_string(root.join(image.trim_start_matches('/'))).unwrap()
    }

    const NETWORKD: &str = "[Match]\nMACAddress=52:54:00:00:00:01\n\n[Network]\nAddress=10.0.0.1/24\nDNS=10.0.0.254\n";

    #[test]
    fn networkd_match_and_address_become_the_standby_s() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, "/etc/systemd/network/10-private.network", NETWORKD);
        let lines = apply(root, &plan()).unwrap();
        let t = read(root, "/etc/systemd/network/10-private.network");
        assert!(t.contains("MACAddress=52:54:00:00:01:01"), "{t}");
        assert!(t.contains("Address=10.0.0.2/24"), "{t}");
        assert!(!t.contains("10.0.0.1/"), "{t}");
        assert!(lines.iter().any(|l| l.starts_with("server: node head-b")), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("/etc/systemd/network/10-private.network (Networkd):")
                && l.contains("10.0.0.2")),
            "{lines:?}"
        );
    }

    #[test]
    fn ifupdown_fixture_is_rewritten_and_the_vip_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, "/etc/network/interfaces", &fs::read_to_string(Path::new(FIX).join("ifupdown/interfaces")).unwrap());
        put(
            root,
            "/etc/network/interfaces.d/public",
            &fs::read_to_string(Path::new(FIX).join("ifupdown/interfaces.d/public")).unwrap(),
        );
        // The fixture's private interface has an IPv6 address too.
        let mut p = plan();
        p.primary[0].addresses = vec!["10.0.0.1/24".into(), "fd00::1/64".into()];
        p.standby[0].addresses = vec!["10.0.0.2/24".into(), "fd00::2/64".into()];
        let lines = apply(root, &p).unwrap();
        let all = read(root, "/etc/network/interfaces") + &read(root, "/etc/network/interfaces.d/public");
        assert!(all.contains("10.0.0.2"), "{all}");
        for bad in ["10.0.0.1/", "192.0.2.10\n", "192.0.2.100", "fd00::1/", "52:54:00:00:00:01"] {
            assert!(!all.contains(bad), "{bad} left in:\n{all}");
        }
        assert!(lines.iter().any(|l| l.contains("Ifupdown")), "{lines:?}");
    }

    #[test]
    fn an_unmapped_primary_address_refuses_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // A static address in no mapping is the primary's as far as anyone knows; a file that
        // cannot be parsed holds a primary address.
        let text = "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.7/24\n";
        put(root, "/etc/systemd/network/10-private.network", text);
        let broken = "network:\n  ethernets:\n    eth0:\n      addresses: [10.0.0.1/24,\n";
        put(root, "/etc/netplan/60-broken.yaml", broken);
        let e = apply(root, &plan()).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, NetworkError::Refused { .. }), "{e:?}");
        assert!(s.contains("/etc/systemd/network/10-private.network:5: "), "{s}");
        assert!(s.contains("/etc/netplan/60-broken.yaml: could not be parsed"), "{s}");
        assert!(s.contains("/etc/netplan/60-broken.yaml:4: holds primary address 10.0.0.1"), "{s}");
        assert!(s.contains("understudy nodes network head-b --force"), "{s}");

        let mut forced = plan();
        forced.force = true;
        let lines = apply(root, &forced).unwrap();
        let i = lines.iter().position(|l| l.starts_with("forced: deploying despite 3 problem")).unwrap();
        assert!(lines[i + 1..].iter().any(|l| l.contains("60-broken.yaml")), "{lines:?}");
        assert_eq!(read(root, "/etc/netplan/60-broken.yaml"), broken, "a file not understood is left alone");
    }

    #[test]
    fn unknown_constructs_refuse_only_when_they_mention_the_primary() {
        let m = Mapping::from_identities(
            &identity("primary", &plan().primary).unwrap(),
            &identity("standby", &plan().standby).unwrap(),
            vec!["192.0.2.100".parse().unwrap()],
        )
        .unwrap();
        assert!(mentions_primary("\"up ip addr add 10.0.0.1/24 dev eth0\" not interpreted", &m));
        assert!(mentions_primary("VIP 192.0.2.100, kept", &m));
        assert!(mentions_primary("matches 52:54:00:00:00:02.", &m));
        assert!(!mentions_primary("mapping stanza: its script's choices are not rewritten", &m));
        assert!(!mentions_primary("address 10.0.0.10/24 and 10.0.0.2", &m));
        let mut report = Report::default();
        report.files.push(crate::netcfg::FileReport {
            path: "/etc/network/interfaces".into(),
            stack: crate::netcfg::Stack::Ifupdown,
            changes: crate::netcfg::Changes {
                unknown: vec![
                    crate::netcfg::Note { line: 3, what: "mapping stanza".into() },
                    crate::netcfg::Note { line: 9, what: "\"x 192.0.2.10\" not interpreted".into() },
                ],
                ..Default::default()
            },
            error: None,
        });
        let (lines, problems) = assess(&report, &m);
        assert_eq!(
            problems,
            vec![
                "/etc/network/interfaces:9: not understood and mentions a primary address: \"x 192.0.2.10\" not interpreted"
            ]
        );
        assert!(lines.iter().any(|l| l == "/etc/network/interfaces:3: not understood, left alone: mapping stanza"));
    }

    fn failover_plan() -> NetworkPlan {
        let mut p = plan();
        p.failover = Some(StandbyFailover {
            config: "[failover]\nnode = \"head-b\"\nrole = \"standby\"\ntiebreaker = [\"192.0.2.1\"]\n\
                     [[failover.channel]]\nname = \"private\"\nlocal = \"10.0.0.2\"\npeer = \"10.0.0.1\"\n\
                     [[failover.channel]]\nname = \"public\"\nlocal = \"192.0.2.11\"\npeer = \"192.0.2.10\"\n\
                     [[failover.vip]]\naddress = \"192.0.2.100/24\"\ninterface = \"eth1\"\n"
                .into(),
            config_path: "/etc/understudy/understudy.toml".into(),
            key: crate::failover::generate_key_file(1, std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a))
                .unwrap(),
            key_path: "/var/lib/understudy/failover.key".into(),
            sync: None,
        });
        p
    }

    /// A Debian bookworm root: /lib → usr/lib, the unit in /lib/systemd/system as the .deb
    /// installs it, the binary in /usr/bin.
    fn bookworm(root: &Path) {
        fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        put(root, "/lib/systemd/system/understudy.service", include_str!("../../packaging/understudy.service"));
        put(root, "/usr/bin/understudy", "#!/bin/sh\n");
        fs::set_permissions(root.join("usr/bin/understudy"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn failover_is_written_and_the_unit_enabled() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        bookworm(root);
        // The captured primary's own config is replaced, and a stale key too.
        put(root, "/etc/understudy/understudy.toml", "[http]\n");
        let p = failover_plan();
        let lines = apply(root, &p).unwrap();
        let f = p.failover.as_ref().unwrap();
        assert_eq!(read(root, "/etc/understudy/understudy.toml"), f.config);
        assert_eq!(mode(&root.join("etc/understudy/understudy.toml")), 0o644);
        assert_eq!(read(root, "/var/lib/understudy/failover.key"), f.key);
        assert_eq!(mode(&root.join("var/lib/understudy/failover.key")), 0o600);
        assert_eq!(mode(&root.join("var/lib/understudy")), 0o700);
        assert_eq!(mode(&root.join("var/lib")), 0o755, "only the key's own directory is private");
        let link = root.join("etc/systemd/system/multi-user.target.wants/understudy.service");
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("/usr/lib/systemd/system/understudy.service"));
        assert!(lines.iter().any(|l| l.contains("failover as head-b (Standby)")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("understudy.service: enabled")), "{lines:?}");
        // Again: idempotent.
        let again = apply(root, &p).unwrap();
        assert!(again.iter().any(|l| l.contains("already enabled")), "{again:?}");
    }

    #[test]
    fn a_unit_the_primary_had_enabled_is_left_enabled_and_a_stale_link_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        bookworm(root);
        let wants = root.join("etc/systemd/system/multi-user.target.wants");
        fs::create_dir_all(&wants).unwrap();
        symlink("/lib/systemd/system/understudy.service", wants.join("understudy.service")).unwrap();
        let lines = apply(root, &failover_plan()).unwrap();
        assert!(lines.iter().any(|l| l.contains("already enabled")), "{lines:?}");
        assert_eq!(
            fs::read_link(wants.join("understudy.service")).unwrap(),
            Path::new("/lib/systemd/system/understudy.service")
        );
        fs::remove_file(wants.join("understudy.service")).unwrap();
        symlink("/opt/gone.service", wants.join("understudy.service")).unwrap();
        let lines = apply(root, &failover_plan()).unwrap();
        assert!(lines.iter().any(|l| l.starts_with("understudy.service: enabled")), "{lines:?}");
        assert_eq!(
            fs::read_link(wants.join("understudy.service")).unwrap(),
            Path::new("/usr/lib/systemd/system/understudy.service")
        );
    }

    #[test]
    fn wanted_by_and_a_unit_in_etc_are_honoured() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        bookworm(root);
        put(
            root,
            "/etc/systemd/system/understudy.service",
            "[Service]\nExecStart=/usr/bin/understudy serve\n[Install]\nWantedBy=\nWantedBy=graphical.target\nRequiredBy=x.target\n",
        );
        apply(root, &failover_plan()).unwrap();
        let etc = root.join("etc/systemd/system");
        assert_eq!(
            fs::read_link(etc.join("graphical.target.wants/understudy.service")).unwrap(),
            Path::new("/etc/systemd/system/understudy.service")
        );
        assert!(etc.join("x.target.requires/understudy.service").symlink_metadata().is_ok());
        assert!(etc.join("multi-user.target.wants").symlink_metadata().is_err());
        assert!(matches!(
            install_targets("[Install]\nWantedBy=../../etc/passwd\n", Path::new("/u")),
            Err(NetworkError::Install { .. })
        ));
    }

    #[test]
    fn no_understudy_in_the_image_is_a_note_and_no_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, "/usr/lib/systemd/system/ssh.service", "[Install]\nWantedBy=multi-user.target\n");
        let lines = apply(root, &failover_plan()).unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("the image has no understudy binary or unit") && l.contains("capture again")),
            "{lines:?}"
        );
        assert!(root.join("etc/understudy/understudy.toml").is_file(), "the configuration is still written");
        assert!(!root.join("etc/systemd/system/multi-user.target.wants").exists());

        // The unit without the binary: still no link.
        put(root, "/usr/lib/systemd/system/understudy.service", "[Install]\nWantedBy=multi-user.target\n");
        let lines = apply(root, &failover_plan()).unwrap();
        assert!(lines.iter().any(|l| l.contains("has no understudy binary:")), "{lines:?}");
        assert!(!root.join("etc/systemd/system/multi-user.target.wants").exists());
    }

    #[test]
    fn a_masked_unit_is_not_enabled() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        bookworm(root);
        fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        symlink("/dev/null", root.join("etc/systemd/system/understudy.service")).unwrap();
        let lines = apply(root, &failover_plan()).unwrap();
        assert!(lines.iter().any(|l| l.contains("is masked")), "{lines:?}");
        assert!(!root.join("etc/systemd/system/multi-user.target.wants").exists());
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("host");
        let root = tmp.path().join("root");
        fs::create_dir_all(&outside).unwrap();
        bookworm(&root);
        // The image's /var/lib points at an absolute path that exists on the host too.
        fs::create_dir_all(root.join("var")).unwrap();
        symlink(&outside, root.join("var/lib")).unwrap();
        fs::create_dir_all(root.join(outside.strip_prefix("/").unwrap())).unwrap();
        apply(&root, &failover_plan()).unwrap();
        assert!(fs::read_dir(&outside).unwrap().next().is_none(), "nothing written on the host");
        assert!(root.join(outside.strip_prefix("/").unwrap()).join("understudy/failover.key").is_file());
    }

    /// [`failover_plan`] with a `[sync]` reading `primary.token` and the token for it.
    fn sync_plan() -> NetworkPlan {
        let mut p = failover_plan();
        let f = p.failover.as_mut().unwrap();
        f.config.push_str(
            "[sync]\nserver = \"http://10.0.0.1:8080\"\ntoken_file = \"primary.token\"\nimage = \"head-a\"\n",
        );
        f.sync = Some(crate::wire::StandbySync {
            token: "s3cret-admin-token-0123456789".into(),
            token_path: "/var/lib/understudy/primary.token".into(),
        });
        p
    }

    #[test]
    fn the_sync_token_is_written_0600_and_never_logged() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        bookworm(root);
        let applied = apply_recorded(root, &sync_plan()).unwrap();
        assert_eq!(read(root, "/var/lib/understudy/primary.token"), "s3cret-admin-token-0123456789\n");
        assert_eq!(mode(&root.join("var/lib/understudy/primary.token")), 0o600);
        assert_eq!(mode(&root.join("var/lib/understudy")), 0o700);
        assert!(applied.paths.contains(&PathBuf::from("/var/lib/understudy/primary.token")), "{:?}", applied.paths);
        assert!(applied.lines.iter().any(|l| l.contains("follows the primary's image head-a")), "{:?}", applied.lines);
        assert!(!applied.lines.iter().any(|l| l.contains("s3cret")), "{:?}", applied.lines);
        assert!(!format!("{:?}", sync_plan()).contains("s3cret"), "Debug shows the token");
        // Without [sync], a line says the standby does not follow.
        let lines = apply(tempfile::tempdir().unwrap().path(), &failover_plan()).unwrap();
        assert!(lines.iter().any(|l| l.contains("no [sync]")), "{lines:?}");
    }

    #[test]
    fn a_sync_token_that_does_not_fit_the_configuration_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        type Change = Box<dyn Fn(&mut StandbyFailover)>;
        let cases: Vec<(&str, Change)> = vec![
            ("no token", Box::new(|f| f.sync = None)),
            ("no [sync]", Box::new(|f| f.config = failover_plan().failover.unwrap().config)),
            ("elsewhere", Box::new(|f| f.sync.as_mut().unwrap().token_path = "/etc/primary.token".into())),
            ("two words", Box::new(|f| f.sync.as_mut().unwrap().token = "a b".into())),
            ("empty", Box::new(|f| f.sync.as_mut().unwrap().token = " \n".into())),
        ];
        for (what, change) in cases {
            let mut p = sync_plan();
            change(p.failover.as_mut().unwrap());
            assert!(matches!(apply(root, &p), Err(NetworkError::Sync(_))), "{what}");
            assert!(!root.join("etc/understudy/understudy.toml").exists(), "{what}: written anyway");
        }
        let mut p = sync_plan();
        p.failover.as_mut().unwrap().sync.as_mut().unwrap().token_path = "/var/lib/../understudy/primary.token".into();
        assert!(matches!(apply(root, &p), Err(NetworkError::BadPath { what: "token_path", .. })));
    }

    #[test]
    fn bad_paths_and_bad_content_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for (cfg, key) in [
            ("etc/understudy/understudy.toml", "/var/lib/understudy/failover.key"),
            ("/etc/../../understudy.toml", "/var/lib/understudy/failover.key"),
            ("/etc/understudy/understudy.toml", "/var/lib/./understudy/failover.key"),
            ("/etc/understudy/understudy.toml", "/"),
        ] {
            let mut p = failover_plan();
            let f = p.failover.as_mut().unwrap();
            f.config_path = cfg.into();
            f.key_path = key.into();
            assert!(matches!(apply(root, &p), Err(NetworkError::BadPath { .. })), "{cfg} {key}");
        }
        let mut p = failover_plan();
        p.failover.as_mut().unwrap().key = "not a key\n".into();
        assert!(matches!(apply(root, &p), Err(NetworkError::Key(_))));
        let mut p = failover_plan();
        p.failover.as_mut().unwrap().config = "[http]\n".into();
        assert!(matches!(apply(root, &p), Err(NetworkError::NoFailover)));
        let mut p = failover_plan();
        p.failover.as_mut().unwrap().config = "[failover\n".into();
        assert!(matches!(apply(root, &p), Err(NetworkError::Config(_))));
        assert!(!root.join("etc/understudy").exists() && !root.join("var").exists());
    }

    #[test]
    fn an_empty_primary_skips_the_rewrite_and_bad_plans_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, "/etc/systemd/network/10-private.network", NETWORKD);
        let mut p = plan();
        p.primary.clear();
        let lines = apply(root, &p).unwrap();
        assert!(lines.iter().any(|l| l.contains("nothing to map")), "{lines:?}");
        assert_eq!(read(root, "/etc/systemd/network/10-private.network"), NETWORKD);

        let mut p = plan();
        p.vips = vec!["192.0.2.100/24".into()];
        assert!(matches!(apply(root, &p), Err(NetworkError::Vip(_))));
        let mut p = plan();
        p.standby[1].mac = Some("zz".into());
        assert!(matches!(apply(root, &p), Err(NetworkError::Interface { side: "standby", index: 1, .. })));
        let mut p = plan();
        p.standby.pop();
        assert!(matches!(apply(root, &p), Err(NetworkError::Mapping(_))));
        // No identity of its own: an image holding the primary's static address is refused,
        // naming the file; one without it deploys untouched.
        let mut p = plan();
        p.standby.clear();
        let e = apply(root, &p).unwrap_err();
        assert!(matches!(&e, NetworkError::NoIdentity { problems, .. } if !problems.is_empty()), "{e:?}");
        assert!(e.to_string().contains("understudy nodes network head-b"), "{e}");
        assert!(e.to_string().contains("10-private.network"), "{e}");
        assert_eq!(read(root, "/etc/systemd/network/10-private.network"), NETWORKD, "nothing rewritten");
        let dhcp = "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n";
        put(root, "/etc/systemd/network/10-private.network", dhcp);
        let lines = apply(root, &p).unwrap();
        assert!(lines.iter().any(|l| l.contains("no network identity")), "{lines:?}");
        assert_eq!(read(root, "/etc/systemd/network/10-private.network"), dhcp);
    }
}
