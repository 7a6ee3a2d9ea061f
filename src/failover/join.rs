//! The standby's side of the pair, derived from the primary's configuration: what the agent
//! writes into a deployed standby so that it joins failover by itself.
//!
//! The primary's `understudy.toml` is edited, not re-rendered (`toml_edit`), so its comments
//! and layout survive: only the top-level `data_dir` and `[failover]` are kept; `node` becomes
//! the standby's name and `role` `standby`; each channel's `local` becomes the standby's
//! address on that network (mapped from the primary's `local`) and `peer` the primary's
//! `local`; `fence` is dropped (on the primary it targets the standby, on the standby it would
//! fence itself). Everything else (VIPs, tie-breaker, monitors, hooks, key file, timings,
//! priority) is kept as it is. The result must load as a [`Config`]: a broken one is an error,
//! never a file.
//!
//! When the primary re-captures itself (`[capture]`), the standby also gets a `[sync]`
//! section that follows that image ([`crate::sync`]): so a standby made by `standby add`
//! keeps up with the primary by itself. Its `server` is the primary's HTTP API at the
//! address the standby reaches it on ([`primary_api`]: `boot.server_url` — the URL the
//! standby network-booted from — else the specific `http.listen` address, else the DHCP
//! `server_ip` on the private LAN, else the primary's private-network address; never a
//! VIP, which moves to the standby on takeover); its token is a file in the standby's data
//! dir ([`SYNC_TOKEN_FILE`], which an update by `[sync]` never touches); its `interval` and
//! `max_lag` follow from the capture interval ([`sync_timings`]); the capture's excludes
//! become the sync's (what the primary does not capture is the standby's own).

use crate::config::{Config, ConfigError};
use crate::failover::packet::NodeName;
use crate::netcfg::{AddrFate, Mapping};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml_edit::{DocumentMut, Item, TableLike, Value};

/// The name errors give the primary's file (it is the server's own configuration).
const PRIMARY_FILE: &str = "primary understudy.toml";
/// The name errors give the generated file.
const STANDBY_FILE: &str = "standby understudy.toml";

/// The standby's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The configuration file's text (`data_dir` when the primary sets one, and `[failover]`).
    pub text: String,
    /// What was changed or dropped and what the admin should fix, for the logs.
    pub notes: Vec<String>,
    /// What the `[sync]` section follows, when the primary has `[capture]`.
    pub follows: Option<Follows>,
    /// What was decided about `[sync]` and why, for the logs (kept apart from `notes`,
    /// which are about the failover part).
    pub sync_note: String,
}

/// What the standby's `[sync]` follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follows {
    /// The primary's HTTP API (`sync.server`).
    pub server: String,
    /// The image followed (the primary's `capture.image`).
    pub image: String,
}

/// The standby's token file for the primary's API, relative to its data dir (`sync.token_file`).
pub const SYNC_TOKEN_FILE: &str = "primary.token";

/// Why the standby's configuration cannot be derived.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The primary's configuration does not load.
    #[error("the primary's configuration: {0}")]
    Primary(#[source] ConfigError),
    /// The primary's configuration loads but `toml_edit` cannot parse it.
    #[error("the primary's configuration cannot be edited: {0}")]
    Edit(#[source] toml_edit::TomlError),
    /// The primary runs no failover.
    #[error("the primary's configuration has no [failover] section: there is no pair for the standby to join")]
    NoFailover,
    /// The standby's node name is not a valid failover node name.
    #[error("standby node name {node:?}: {reason}")]
    BadNode {
        /// The name given.
        node: String,
        /// Why it is refused.
        reason: String,
    },
    /// The standby would carry the primary's own node name.
    #[error("the standby's node name {node:?} is the primary's failover node name: the pair needs two names")]
    SameNode {
        /// The name.
        node: String,
    },
    /// A channel's `local` has no standby counterpart in the mapping.
    #[error(
        "failover channel {channel:?}: the primary's local address {local} {why}, so the standby's \
         address on that network is unknown (give the node an address on that network)"
    )]
    Unmapped {
        /// The channel's name.
        channel: String,
        /// The primary's `local`.
        local: IpAddr,
        /// What the mapping says about it.
        why: &'static str,
    },
    /// The document's shape is not what the typed configuration says (a value that is not a
    /// table where one is expected).
    #[error("the primary's configuration: {what}")]
    Shape {
        /// What is off.
        what: String,
    },
    /// The derived configuration does not load (a bug, or a mapping that breaks validation,
    /// such as two channels ending at one address pair).
    #[error("the standby's configuration would not load: {0}")]
    Result(#[source] ConfigError),
}

/// Derive the standby `standby_node`'s configuration from the primary's whole
/// `understudy.toml`, with the channels' addresses mapped through `mapping` (the primary's
/// network identity paired with the standby's).
pub fn standby_config(primary_toml: &str, standby_node: &str, mapping: &Mapping) -> Result<Joined, JoinError> {
    let typed = Config::parse(primary_toml, Path::new(PRIMARY_FILE)).map_err(JoinError::Primary)?;
    let Some(fo) = typed.failover.clone() else { return Err(JoinError::NoFailover) };
    NodeName::new(standby_node)
        .map_err(|e| JoinError::BadNode { node: standby_node.to_string(), reason: e.to_string() })?;
    if fo.node == standby_node {
        return Err(JoinError::SameNode { node: standby_node.to_string() });
    }
    let mut notes = Vec::new();
    if fo.role != crate::failover::Role::Primary {
        notes.push(format!(
            "the configuration the standby is derived from says role = standby for {:?}; the standby {standby_node} \
             is written as standby too, so priority decides which one holds the VIP",
            fo.node
        ));
    }

    // Where each channel's ends go, decided on the typed values before anything is edited.
    let mut ends = Vec::with_capacity(fo.channels.len());
    for c in &fo.channels {
        let why = match mapping.address(c.local) {
            AddrFate::Mapped(s) => {
                if c.peer != s.addr {
                    notes.push(format!(
                        "the primary sends heartbeats on channel {:?} to {} while the standby will be at {}: \
                         set peer = \"{}\" in that [[failover.channel]] of the primary's configuration",
                        c.name, c.peer, s.addr, s.addr
                    ));
                }
                ends.push((c.name.clone(), s.addr, c.local));
                continue;
            }
            AddrFate::Unmapped => "has no standby counterpart in the node's network identity",
            AddrFate::Foreign => "is not one of the primary's interface addresses",
            AddrFate::Vip => "is a failover VIP",
        };
        return Err(JoinError::Unmapped { channel: c.name.clone(), local: c.local, why });
    }

    let mut doc: DocumentMut = primary_toml.parse().map_err(JoinError::Edit)?;
    let mut dropped = Vec::new();
    doc.as_table_mut().retain(|k, _| {
        let keep = k == "data_dir" || k == "failover";
        if !keep {
            dropped.push(format!("[{k}]"));
        }
        keep
    });
    if !dropped.is_empty() {
        notes.push(format!(
            "the standby runs failover{}: the primary's {} {} not copied",
            if typed.capture.is_some() { " (and [sync] when it can reach the primary)" } else { " only" },
            dropped.join(", "),
            if dropped.len() == 1 { "is" } else { "are" }
        ));
    }
    let failover = doc
        .get_mut("failover")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| JoinError::Shape { what: "failover is not a table".into() })?;
    set_str(failover, "node", standby_node);
    set_str(failover, "role", "standby");
    if failover.remove("fence").is_some() {
        notes.push(
            "fence is not copied: on the primary it fences the standby, on the standby it would fence itself; \
             give the standby its own fence command against the primary if it needs one"
                .into(),
        );
    }
    let mut tables = channel_tables(failover)?;
    if tables.len() != ends.len() {
        return Err(JoinError::Shape {
            what: format!("{} channels parsed but {} channel tables found", ends.len(), tables.len()),
        });
    }
    for (t, (name, standby, primary)) in tables.iter_mut().zip(&ends) {
        if t.get("name").and_then(Item::as_str) != Some(name.as_str()) {
            return Err(JoinError::Shape { what: format!("failover channel {name:?} is not where it was parsed") });
        }
        set_str(&mut **t, "local", &standby.to_string());
        set_str(&mut **t, "peer", &primary.to_string());
    }

    // The VIPs stay as they are, but on the standby's interface of the same network.
    for t in vip_tables(failover)? {
        let Some(iface) = t.get("interface").and_then(Item::as_str).map(str::to_string) else { continue };
        let Some(to) = mapping.interface_name(&iface).filter(|n| *n != iface).map(str::to_string) else { continue };
        set_str(&mut *t, "interface", &to);
        if let Some(label) = t.get("label").and_then(Item::as_str).map(str::to_string)
            && let Some(rest) = label.strip_prefix(&format!("{iface}:"))
        {
            set_str(&mut *t, "label", &format!("{to}:{rest}"));
        }
        notes.push(format!("a VIP on the primary's {iface} is raised on the standby's {to}"));
    }

    let (follows, sync_note) = match &typed.capture {
        None => (
            None,
            "the primary has no [capture]: the standby gets no [sync] and does not follow the primary's \
             changes by itself (add [capture] to the primary, or run `understudy update` on the standby)"
                .to_string(),
        ),
        Some(cap) => match primary_api(&typed, mapping) {
            Err(why) => (
                None,
                format!(
                    "the primary has [capture] but the standby gets no [sync]: {why}; add a [sync] section to the \
                     standby's configuration by hand"
                ),
            ),
            Ok((server, how)) => {
                let (interval, max_lag) = sync_timings(cap.interval);
                doc.insert("sync", Item::Table(sync_table(&server, &cap.image, interval, max_lag, &cap.exclude)));
                let note = format!(
                    "the standby follows the primary's image {} ([sync]) from {server} ({how}), asking every {} \
                     (alarm after {} of lag)",
                    cap.image,
                    fmt_duration(interval),
                    fmt_duration(max_lag)
                );
                (Some(Follows { server, image: cap.image.clone() }), note)
            }
        },
    };

    let header = format!(
        "# The failover configuration of the standby {standby_node}, written when it was deployed from the\n\
         # primary {:?}'s: role standby, this node's name, each channel's local and peer swapped.\n{}\n",
        fo.node,
        if follows.is_some() { "# [sync] follows the primary's scheduled captures.\n" } else { "" }
    );
    let text = format!("{header}{doc}");
    let cfg = Config::parse(&text, Path::new(STANDBY_FILE)).map_err(JoinError::Result)?;
    notes.extend(cfg.warnings().into_iter().map(|w| format!("the standby's failover: {w}")));
    Ok(Joined { text, notes, follows, sync_note })
}

/// The `[sync]` table of the standby: the primary's API, the token file, the image, the
/// whole root as the target, the timings and the capture's excludes.
fn sync_table(
    server: &str,
    image: &str,
    interval: Duration,
    max_lag: Duration,
    exclude: &[String],
) -> toml_edit::Table {
    let mut t = toml_edit::Table::new();
    t.decor_mut().set_prefix(
        "\n# Follow the primary: every new version its [capture] adds is applied to this root (keeping this\n\
         # node's identity, its understudy and its data dir). The token file is the primary's API token.\n",
    );
    t.insert("server", toml_edit::value(server));
    t.insert("token_file", toml_edit::value(SYNC_TOKEN_FILE));
    t.insert("image", toml_edit::value(image));
    t.insert("target", toml_edit::value("/"));
    t.insert("interval", toml_edit::value(fmt_duration(interval)));
    t.insert("max_lag", toml_edit::value(fmt_duration(max_lag)));
    if !exclude.is_empty() {
        t.insert("exclude", toml_edit::value(exclude.iter().map(String::as_str).collect::<toml_edit::Array>()));
    }
    t
}

/// The standby's `sync.interval` and `sync.max_lag` from the primary's capture interval: it
/// asks ten times per capture interval (between 1 s and the default 30 s, so that a new
/// version arrives well before the next one), and raises the alarm when three captures went
/// by without it catching up.
pub fn sync_timings(capture_interval: Duration) -> (Duration, Duration) {
    let interval = (capture_interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let max_lag = capture_interval.saturating_mul(3).max(Duration::from_secs(1));
    (interval, max_lag)
}

/// A duration as the configuration reads it back (`30s`, `15m`, `2h`, `1500ms`).
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// The primary's HTTP API as the standby reaches it, with how it was chosen, or why there
/// is none. In order: `boot.server_url` (the URL the standby's agent fetched its deploy
/// from), the `http.listen` address when it is a specific one (the only address the API
/// answers on), the DHCP `server_ip` (the primary's address on the LAN the standby
/// network-boots on), the first address of the primary's private interface. A VIP is never
/// chosen: on takeover it moves to the standby, which would then ask itself.
pub fn primary_api(cfg: &Config, mapping: &Mapping) -> Result<(String, &'static str), String> {
    let Some(http) = &cfg.http else { return Err("the primary serves no HTTP API ([http] is absent)".into()) };
    let is_vip = |ip: IpAddr| mapping.vips.contains(&ip);
    if let Some(u) = &cfg.boot.server_url
        && !url_host(u).is_some_and(is_vip)
    {
        return Ok((u.trim_end_matches('/').to_string(), "boot.server_url, the URL the standby booted from"));
    }
    let port = http.listen.port();
    let url = |ip: IpAddr| match ip {
        IpAddr::V4(a) => format!("http://{a}:{port}"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}"),
    };
    let listen = http.listen.ip();
    if listen.is_loopback() {
        return Err(format!("the primary's HTTP API listens on {} only", http.listen));
    }
    if !listen.is_unspecified() && !is_vip(listen) {
        return Ok((url(listen), "http.listen"));
    }
    if !listen.is_unspecified() {
        return Err(format!("the primary's HTTP API listens on the VIP {listen} only, which moves on takeover"));
    }
    if let Some(d) = &cfg.dhcp
        && !is_vip(IpAddr::V4(d.server_ip))
    {
        return Ok((url(IpAddr::V4(d.server_ip)), "dhcp.server_ip, where the standby network-booted from"));
    }
    let private = mapping
        .interfaces
        .iter()
        .filter(|m| m.primary.role == crate::netcfg::Role::Private)
        .flat_map(|m| m.primary.addresses.iter().map(|c| c.addr))
        .find(|a| !is_vip(*a));
    match private {
        Some(a) => Ok((url(a), "the primary's private-network address")),
        None => Err("the primary's address on the private network is unknown (no [dhcp], no private interface)".into()),
    }
}

/// The host of `http://host[:port][/…]` as an address, when it is one.
fn url_host(u: &str) -> Option<IpAddr> {
    let rest = u.split_once("://").map_or(u, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.parse().ok()
}

/// Where the packaged unit reads the configuration (`packaging/understudy.service`).
pub const STANDBY_CONFIG_PATH: &str = "/etc/understudy/understudy.toml";
/// The packaged unit's `--data-dir`, which the configuration's `data_dir` overrides.
pub const STANDBY_DATA_DIR: &str = "/var/lib/understudy";

/// Where the standby's configuration and heartbeat key go inside its root, as
/// [`crate::wire::StandbyFailover`] carries them: the packaged unit's configuration file, and
/// the key file (`failover.key_file`) in the configuration's `data_dir` (default the unit's).
pub fn standby_paths(joined: &Joined) -> Result<(String, String), JoinError> {
    let (cfg, data_dir) = standby_data_dir(joined)?;
    let Some(fo) = cfg.failover else { return Err(JoinError::NoFailover) };
    let key = data_dir.join(&fo.key_file);
    Ok((STANDBY_CONFIG_PATH.to_string(), key.to_string_lossy().into_owned()))
}

/// Where the token file of the standby's `[sync]` goes inside its root (its data dir's
/// [`SYNC_TOKEN_FILE`]), when the configuration has one.
pub fn standby_token_path(joined: &Joined) -> Result<Option<String>, JoinError> {
    let (cfg, data_dir) = standby_data_dir(joined)?;
    Ok(cfg.sync.and_then(|s| s.token_file).map(|f| data_dir.join(f).to_string_lossy().into_owned()))
}

/// The standby's configuration, loaded, and its absolute data dir.
fn standby_data_dir(joined: &Joined) -> Result<(Config, PathBuf), JoinError> {
    let cfg = Config::parse(&joined.text, Path::new(STANDBY_FILE)).map_err(JoinError::Result)?;
    let data_dir = cfg.data_dir.clone().unwrap_or_else(|| STANDBY_DATA_DIR.into());
    if !data_dir.is_absolute() {
        return Err(JoinError::Shape {
            what: format!("data_dir {:?} is relative: the standby's key file would have no fixed place", data_dir),
        });
    }
    Ok((cfg, data_dir))
}

/// Replace a string value, keeping the comments and spacing around the old one.
fn set_str(t: &mut dyn TableLike, key: &str, new: &str) {
    match t.get_mut(key) {
        Some(Item::Value(v)) => {
            let decor = v.decor().clone();
            *v = Value::from(new);
            *v.decor_mut() = decor;
        }
        _ => {
            t.insert(key, toml_edit::value(new));
        }
    }
}

/// The `[[failover.channel]]` tables (or `channel = [{ … }]` inline tables), in order.
fn channel_tables(failover: &mut dyn TableLike) -> Result<Vec<&mut dyn TableLike>, JoinError> {
    sub_tables(failover, "channel")
}

/// The `[[failover.vip]]` tables, whichever TOML form they were written in.
fn vip_tables(failover: &mut dyn TableLike) -> Result<Vec<&mut dyn TableLike>, JoinError> {
    sub_tables(failover, "vip")
}

/// The tables of the list `failover.<key>`, as `[[…]]` or an inline array.
fn sub_tables<'a>(failover: &'a mut dyn TableLike, key: &str) -> Result<Vec<&'a mut dyn TableLike>, JoinError> {
    let shape = |what: String| JoinError::Shape { what };
    let mut out: Vec<&mut dyn TableLike> = Vec::new();
    match failover.get_mut(key) {
        None => {}
        Some(Item::ArrayOfTables(a)) => out.extend(a.iter_mut().map(|t| t as &mut dyn TableLike)),
        Some(Item::Value(Value::Array(a))) => {
            for v in a.iter_mut() {
                let t = v.as_inline_table_mut().ok_or_else(|| shape(format!("a failover {key} is not a table")))?;
                out.push(t);
            }
        }
        Some(_) => return Err(shape(format!("failover.{key} is not a list of tables"))),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcfg::{Cidr, Interface, NodeIdentity, Role};

    /// A primary's configuration as an admin would write it: every service, comments, two
    /// channels, a fence against the standby.
    const PRIMARY: &str = r#"# understudy on head-a, the cluster's primary head node.
data_dir = "/var/lib/understudy"

[http]
listen = "10.0.0.1:8080"

[dhcp]
interface = "eth0"
subnet = "10.0.0.0/24"
range = "10.0.0.100-10.0.0.199"
server_ip = "10.0.0.1"

[tftp]
root = "/var/lib/understudy/tftp"

[boot]
retries = 10

# Heartbeats and the public alias address.
[failover]
node = "head-a"        # this node
role = "primary"
priority = 150
key_file = "failover.key"
interval = "100ms"
dead_time = "500ms"
tiebreaker = ["192.0.2.1"]
fence = ["/usr/sbin/fence_ipmilan", "-a", "10.1.0.2", "-o", "off"]
fence_timeout = "30s"
start_hooks = [{ unit = "slurmctld.service" }]
stop_hooks = [{ unit = "slurmctld.service" }]

# The cluster LAN.
[[failover.channel]]
name = "private"
local = "10.0.0.1"     # head-a on eth0
peer = "10.0.0.2"
port = 694

[[failover.channel]]
name = "public"
local = "192.0.2.10"
peer = "192.0.2.99"

[[failover.vip]]
address = "192.0.2.100/24"
interface = "eth1"
label = "eth1:1"

[[failover.monitor]]
name = "slurmctld"
unit = "slurmctld.service"
interval = "5s"
# end of file
"#;

    fn mapping() -> Mapping {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let iface = |name: &str, addr: &str, role: Role| Interface {
            name: Some(name.into()),
            mac: None,
            addresses: vec![c(addr)],
            gateway: None,
            dns: vec![],
            role,
        };
        let primary = NodeIdentity {
            interfaces: vec![iface("eth0", "10.0.0.1/24", Role::Private), iface("eth1", "192.0.2.10/24", Role::Public)],
        };
        let standby = NodeIdentity {
            interfaces: vec![iface("ens3", "10.0.0.2/24", Role::Private), iface("ens4", "192.0.2.11/24", Role::Public)],
        };
        Mapping::from_identities(&primary, &standby, vec!["192.0.2.100".parse().unwrap()]).unwrap()
    }

    fn standby_failover(text: &str) -> crate::failover::FailoverConfig {
        Config::parse(text, Path::new("t")).unwrap().failover.unwrap()
    }

    #[test]
    fn standby_gets_its_name_role_and_swapped_channels_with_comments_kept() {
        let j = standby_config(PRIMARY, "head-b", &mapping()).unwrap();
        let f = standby_failover(&j.text);
        assert_eq!(f.node, "head-b");
        assert_eq!(f.role, crate::failover::Role::Standby);
        let ch: Vec<(String, String, String, u16)> =
            f.channels.iter().map(|c| (c.name.clone(), c.local.to_string(), c.peer.to_string(), c.port)).collect();
        assert_eq!(
            ch,
            vec![
                ("private".into(), "10.0.0.2".into(), "10.0.0.1".into(), 694),
                ("public".into(), "192.0.2.11".into(), "192.0.2.10".into(), 694),
            ]
        );
        // Unchanged: VIPs, tie-breaker, hooks, monitors, timings, priority, key file.
        assert_eq!(f.vips.len(), 1);
        assert_eq!(f.vips[0].address, "192.0.2.100/24");
        // On the standby's interface of the same network (ens4 where the primary has eth1).
        assert_eq!((f.vips[0].interface.as_str(), f.vips[0].label.as_deref()), ("ens4", Some("ens4:1")));
        assert!(j.notes.iter().any(|n| n.contains("primary's eth1 is raised on the standby's ens4")), "{:?}", j.notes);
        assert_eq!(f.tiebreaker, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(f.start_hooks.len(), 1);
        assert_eq!(f.stop_hooks.len(), 1);
        assert_eq!(f.monitors.len(), 1);
        assert_eq!(f.priority, 150);
        assert_eq!(f.key_file, Path::new("failover.key"));
        assert_eq!(f.interval, std::time::Duration::from_millis(100));
        assert_eq!(f.fence_timeout, std::time::Duration::from_secs(30));
        // Comments and layout survive.
        for kept in [
            "data_dir = \"/var/lib/understudy\"",
            "# Heartbeats and the public alias address.\n[failover]",
            "node = \"head-b\"        # this node",
            "# The cluster LAN.\n[[failover.channel]]",
            "local = \"10.0.0.2\"     # head-a on eth0",
            "# end of file",
        ] {
            assert!(j.text.contains(kept), "{kept:?} missing from:\n{}", j.text);
        }
        assert!(j.text.starts_with("# The failover configuration of the standby head-b"), "{}", j.text);
        // The primary's peer on "public" is not the standby's address: the admin is told.
        let peer_notes: Vec<&String> = j.notes.iter().filter(|n| n.contains("sends heartbeats")).collect();
        assert_eq!(peer_notes.len(), 1, "{:?}", j.notes);
        assert!(peer_notes[0].contains("\"public\" to 192.0.2.99") && peer_notes[0].contains("at 192.0.2.11"));
    }

    #[test]
    fn paths_follow_data_dir_and_key_file() {
        let j = standby_config(PRIMARY, "head-b", &mapping()).unwrap();
        assert_eq!(
            standby_paths(&j).unwrap(),
            ("/etc/understudy/understudy.toml".into(), "/var/lib/understudy/failover.key".into())
        );
        let text = PRIMARY
            .replace("data_dir = \"/var/lib/understudy\"", "data_dir = \"/srv/us\"")
            .replace("key_file = \"failover.key\"", "key_file = \"keys/hb.key\"");
        let j = standby_config(&text, "head-b", &mapping()).unwrap();
        assert_eq!(standby_paths(&j).unwrap().1, "/srv/us/keys/hb.key");
        let j = standby_config(&PRIMARY.replace("data_dir = \"/var/lib/understudy\"\n", ""), "b", &mapping()).unwrap();
        assert_eq!(standby_paths(&j).unwrap().1, "/var/lib/understudy/failover.key");
        let j = standby_config(&PRIMARY.replace("\"/var/lib/understudy\"", "\"rel\""), "b", &mapping()).unwrap();
        assert!(matches!(standby_paths(&j), Err(JoinError::Shape { .. })));
    }

    #[test]
    fn fence_and_other_services_are_dropped_with_notes() {
        let j = standby_config(PRIMARY, "head-b", &mapping()).unwrap();
        let cfg = Config::parse(&j.text, Path::new("t")).unwrap();
        assert!(cfg.http.is_none() && cfg.dhcp.is_none() && cfg.tftp.is_none());
        assert_eq!(cfg.data_dir.as_deref(), Some(Path::new("/var/lib/understudy")));
        for gone in ["[http]", "[dhcp]", "[tftp]", "[boot]", "retries", "fence_ipmilan", "listen"] {
            assert!(!j.text.contains(gone), "{gone} still in:\n{}", j.text);
        }
        assert!(cfg.failover.unwrap().fence.is_none());
        assert!(j.notes.iter().any(|n| n.contains("fence is not copied")), "{:?}", j.notes);
        assert!(j.notes.iter().any(|n| n.contains("[http], [dhcp], [tftp], [boot]")), "{:?}", j.notes);
    }

    #[test]
    fn no_note_when_the_primary_already_points_at_the_standby() {
        let text = PRIMARY.replace("peer = \"192.0.2.99\"", "peer = \"192.0.2.11\"");
        let j = standby_config(&text, "head-b", &mapping()).unwrap();
        assert!(!j.notes.iter().any(|n| n.contains("sends heartbeats")), "{:?}", j.notes);
    }

    #[test]
    fn inline_channels_and_a_config_without_data_dir() {
        let text = r#"
[failover]
node = "a"
role = "primary"
tiebreaker = ["192.0.2.1"]
channel = [{ name = "private", local = "10.0.0.1", peer = "10.0.0.2" }, { name = "public", local = "192.0.2.10", peer = "192.0.2.11" }]
vip = [{ address = "192.0.2.100/24", interface = "eth1" }]
"#;
        let j = standby_config(text, "b", &mapping()).unwrap();
        let cfg = Config::parse(&j.text, Path::new("t")).unwrap();
        assert!(cfg.data_dir.is_none());
        let f = cfg.failover.unwrap();
        assert_eq!(f.channels[1].local.to_string(), "192.0.2.11");
        assert_eq!(f.channels[1].peer.to_string(), "192.0.2.10");
        assert_eq!(f.vips[0].interface, "ens4");
        assert_eq!(j.notes.len(), 1, "only the VIP's interface: {:?}", j.notes);
    }

    #[test]
    fn unmapped_local_names_the_channel() {
        let text = PRIMARY.replace("local = \"192.0.2.10\"", "local = \"198.51.100.7\"");
        match standby_config(&text, "head-b", &mapping()) {
            Err(e @ JoinError::Unmapped { .. }) => {
                let s = e.to_string();
                assert!(s.contains("\"public\"") && s.contains("198.51.100.7"), "{s}");
            }
            other => panic!("expected Unmapped, got {other:?}"),
        }
        let mut m = mapping();
        m.interfaces[0].standby_addresses.clear();
        assert!(matches!(
            standby_config(PRIMARY, "head-b", &m),
            Err(JoinError::Unmapped { ref channel, .. }) if channel == "private"
        ));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let no_failover = "data_dir = \"/srv/u\"\n[http]\nlisten = \"0.0.0.0:8080\"\n";
        assert!(matches!(standby_config(no_failover, "b", &mapping()), Err(JoinError::NoFailover)));
        assert!(matches!(standby_config("[failover\nnode = ", "b", &mapping()), Err(JoinError::Primary(_))));
        assert!(matches!(standby_config("\u{0}\u{1}garbage = = =", "b", &mapping()), Err(JoinError::Primary(_))));
        assert!(matches!(standby_config(PRIMARY, "head-a", &mapping()), Err(JoinError::SameNode { .. })));
        assert!(matches!(standby_config(PRIMARY, "bad name!", &mapping()), Err(JoinError::BadNode { .. })));
        assert!(matches!(standby_config(PRIMARY, "", &mapping()), Err(JoinError::BadNode { .. })));
    }

    #[test]
    fn a_result_that_would_not_load_is_an_error() {
        // The primary's config is valid; the standby's public end would be IPv6 with an IPv4
        // peer, which the failover section refuses: an error, never a file.
        let mut m = mapping();
        m.interfaces[1].standby_addresses = vec!["fd00::11/64".parse().unwrap()];
        match standby_config(PRIMARY, "head-b", &m) {
            Err(e @ JoinError::Result(_)) => assert!(e.to_string().contains("one family"), "{e}"),
            other => panic!("expected Result, got {other:?}"),
        }
    }

    /// The primary's configuration with a `[capture]` (and its comment) at `listen`.
    fn with_capture(listen: &str) -> String {
        PRIMARY.replace("listen = \"10.0.0.1:8080\"", &format!("listen = \"{listen}\"")).replace(
            "[boot]\n",
            "# Re-capture head-a every 5 minutes.\n[capture]\nimage = \"head-a\"\ninterval = \"5m\"\nexclude = [\"/scratch/**\"]\n\n[boot]\n",
        )
    }

    #[test]
    fn a_primary_with_capture_gives_the_standby_a_sync_section() {
        let j = standby_config(&with_capture("0.0.0.0:8080"), "head-b", &mapping()).unwrap();
        let cfg = Config::parse(&j.text, Path::new("t")).unwrap();
        let s = cfg.sync.expect("a [sync] section");
        // listen is 0.0.0.0: the DHCP server_ip, where the standby network-booted from.
        assert_eq!(s.server, "http://10.0.0.1:8080");
        assert_eq!(s.image, "head-a");
        assert_eq!(s.target, Path::new("/"));
        assert_eq!(s.token_file.as_deref(), Some(Path::new(SYNC_TOKEN_FILE)));
        assert!(s.token.is_none());
        assert_eq!((s.interval, s.max_lag), (Duration::from_secs(30), Duration::from_secs(900)));
        assert_eq!(s.exclude, vec!["/scratch/**".to_string()]);
        assert!(cfg.capture.is_none(), "the standby does not capture itself:\n{}", j.text);
        assert_eq!(j.follows, Some(Follows { server: "http://10.0.0.1:8080".into(), image: "head-a".into() }));
        assert_eq!(standby_token_path(&j).unwrap().as_deref(), Some("/var/lib/understudy/primary.token"));
        // The failover part is what it was without [capture]; comments are kept.
        let f = cfg.failover.unwrap();
        assert_eq!((f.node.as_str(), f.channels[0].peer.to_string()), ("head-b", "10.0.0.1".to_string()));
        for kept in [
            "# Heartbeats and the public alias address.\n[failover]",
            "node = \"head-b\"        # this node",
            "# end of file",
            "# Follow the primary",
        ] {
            assert!(j.text.contains(kept), "{kept:?} missing from:\n{}", j.text);
        }
        assert!(!j.text.contains("Re-capture head-a"), "{}", j.text);
        assert!(
            j.sync_note.contains("follows the primary's image head-a") && j.sync_note.contains("dhcp.server_ip"),
            "{}",
            j.sync_note
        );
        assert!(j.sync_note.contains("every 30s") && j.sync_note.contains("15m"), "{}", j.sync_note);
        // A data dir elsewhere: the token file is in it.
        let j = standby_config(
            &with_capture("0.0.0.0:8080").replace("\"/var/lib/understudy\"", "\"/srv/us\""),
            "b",
            &mapping(),
        )
        .unwrap();
        assert_eq!(standby_token_path(&j).unwrap().as_deref(), Some("/srv/us/primary.token"));
    }

    #[test]
    fn without_capture_there_is_no_sync_and_a_note_says_so() {
        let j = standby_config(PRIMARY, "head-b", &mapping()).unwrap();
        assert!(Config::parse(&j.text, Path::new("t")).unwrap().sync.is_none());
        assert!(!j.text.contains("[sync]"), "{}", j.text);
        assert_eq!(j.follows, None);
        assert_eq!(standby_token_path(&j).unwrap(), None);
        assert!(j.sync_note.contains("no [capture]") && j.sync_note.contains("no [sync]"), "{}", j.sync_note);
        // The primary's own [sync] (it follows something else) is not the standby's.
        let text =
            PRIMARY.replace("[boot]\n", "[sync]\nserver = \"http://10.9.9.9\"\ntoken = \"t\"\nimage = \"x\"\n[boot]\n");
        let j = standby_config(&text, "head-b", &mapping()).unwrap();
        assert!(Config::parse(&j.text, Path::new("t")).unwrap().sync.is_none(), "{}", j.text);
    }

    #[test]
    fn the_primarys_api_address_is_one_the_standby_reaches_and_never_a_vip() {
        let api = |text: &str| {
            let cfg = Config::parse(text, Path::new("t")).unwrap();
            primary_api(&cfg, &mapping()).map(|(u, _)| u)
        };
        // A specific listen address is the only one the API answers on.
        assert_eq!(api(&with_capture("10.0.0.1:9000")).unwrap(), "http://10.0.0.1:9000");
        // 0.0.0.0: the DHCP server's address, with the listen port.
        assert_eq!(api(&with_capture("0.0.0.0:9000")).unwrap(), "http://10.0.0.1:9000");
        // No DHCP: the primary's private interface (eth0), not the public one or the VIP.
        let dhcp = "[dhcp]\ninterface = \"eth0\"\nsubnet = \"10.0.0.0/24\"\nrange = \"10.0.0.100-10.0.0.199\"\nserver_ip = \"10.0.0.1\"\n";
        let no_dhcp = with_capture("0.0.0.0:9000").replace(dhcp, "");
        assert!(!no_dhcp.contains("[dhcp]"));
        assert_eq!(api(&no_dhcp).unwrap(), "http://10.0.0.1:9000");
        assert_eq!(api(&with_capture("[fd00::1]:9000")).unwrap(), "http://[fd00::1]:9000");
        // boot.server_url is what the standby booted from, unless it names the VIP.
        let booted = with_capture("0.0.0.0:9000")
            .replace("retries = 10", "retries = 10\nserver_url = \"http://head-a.lan:9000/\"");
        assert_eq!(api(&booted).unwrap(), "http://head-a.lan:9000");
        let on_vip = booted.replace("head-a.lan", "192.0.2.100");
        assert_eq!(api(&on_vip).unwrap(), "http://10.0.0.1:9000");
        // Nowhere the standby can reach: no [sync], and a note says why.
        assert!(api(&with_capture("127.0.0.1:8080")).unwrap_err().contains("127.0.0.1:8080 only"));
        assert!(api(&with_capture("192.0.2.100:8080")).unwrap_err().contains("VIP"));
        let j = standby_config(&with_capture("127.0.0.1:8080"), "head-b", &mapping()).unwrap();
        assert!(Config::parse(&j.text, Path::new("t")).unwrap().sync.is_none());
        assert!(j.sync_note.contains("has [capture] but the standby gets no [sync]"), "{}", j.sync_note);
        let no_http = with_capture("0.0.0.0:8080").replace("[http]\nlisten = \"0.0.0.0:8080\"\n", "");
        assert!(api(&no_http).unwrap_err().contains("no HTTP"));
    }

    #[test]
    fn sync_timings_follow_the_capture_interval() {
        let s = Duration::from_secs;
        assert_eq!(sync_timings(s(600)), (s(30), s(1800)));
        assert_eq!(sync_timings(s(60)), (s(6), s(180)));
        assert_eq!(sync_timings(s(5)), (s(1), s(15)));
        assert_eq!(sync_timings(s(86400)), (s(30), s(3 * 86400)));
        for d in [s(30), s(1800), Duration::from_millis(1500), s(7200), s(90)] {
            assert_eq!(crate::config::parse_duration(&fmt_duration(d)).unwrap(), d, "{}", fmt_duration(d));
        }
        assert_eq!((fmt_duration(s(1800)).as_str(), fmt_duration(s(7200)).as_str()), ("30m", "2h"));
    }
}
