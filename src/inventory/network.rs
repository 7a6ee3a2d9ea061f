//! A node's network identity: set (checked against every holder of an address), proposed
//! from the primary's own configuration, and planned for its deploy (what the agent
//! rewrites in the written root, and the standby's side of the failover pair).
//!
//! The primary is the host `serve` runs on: its interfaces come from `ip -j` at the moment
//! they are needed, its networks' roles and VIPs from the config file `serve` last started
//! with (recorded in the database, so the CLI on the same data dir sees the same).

use super::{Inventory, InventoryError, Result};
use crate::config::{Config, parse_range};
use crate::db::InterfaceRecord;
use crate::netcfg::live::{self, Networks, same_subnet};
use crate::netcfg::{Cidr, Interface, Mac, Mapping, NodeIdentity, Role as NetRole};
use crate::wire::{EventKind, NICS_MAX, NetInterface, NetworkPlan, NodeNetwork, Role, StandbyFailover, StandbySync};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most addresses on one interface, DNS servers per interface.
const ADDRESSES_MAX: usize = 16;
const DNS_MAX: usize = 8;
/// How long an address may stay silent before it counts as free.
const PROBE_WAIT: Duration = Duration::from_millis(3500);

/// The primary as the server sees it: its configuration and its interfaces.
#[derive(Debug, Clone)]
pub struct Primary {
    /// The config file `serve` runs with, its text and parsed form (`None`: embedded
    /// defaults, no failover).
    pub config: Option<(PathBuf, String, Config)>,
    /// Failover VIPs with prefix.
    pub vips: Vec<Cidr>,
    /// The host's interfaces, roles assigned.
    pub identity: NodeIdentity,
}

impl Primary {
    /// The VIP addresses.
    pub fn vip_ips(&self) -> Vec<IpAddr> {
        self.vips.iter().map(|c| c.addr).collect()
    }

    /// Whether the primary itself holds `ip` (an interface address or a VIP), and how to say so.
    fn holds(&self, ip: IpAddr) -> Option<String> {
        if self.vips.iter().any(|v| v.addr == ip) {
            return Some(format!("{ip} is a failover VIP (only the failover service raises it)"));
        }
        self.identity
            .interfaces
            .iter()
            .find(|i| i.addresses.iter().any(|a| a.addr == ip))
            .map(|i| format!("{ip} is the primary's own address on {}", i.name.as_deref().unwrap_or("an interface")))
    }

    /// Why `ip` cannot be a node's static address on the DHCP network (the server's own,
    /// inside the dynamic pool), if it cannot.
    fn dhcp_refuses(&self, ip: IpAddr) -> Option<String> {
        let dhcp = self.config.as_ref()?.2.dhcp.as_ref()?;
        let IpAddr::V4(v4) = ip else { return None };
        if v4 == dhcp.server_ip {
            return Some(format!("{ip} is the DHCP server's own address"));
        }
        let (first, last) = parse_range(&dhcp.range).ok()?;
        (first <= v4 && v4 <= last).then(|| {
            format!(
                "{ip} is inside the DHCP pool {} (it could be leased to another machine); pick one outside it",
                dhcp.range
            )
        })
    }

    /// Whether `ip` is on a network this host has an address on (so ARP/ND can probe it).
    fn on_link(&self, ip: IpAddr) -> bool {
        self.identity.interfaces.iter().any(|i| i.addresses.iter().any(|a| same_subnet(a, ip)))
    }
}

impl From<&InterfaceRecord> for NetInterface {
    fn from(r: &InterfaceRecord) -> Self {
        NetInterface {
            name: r.name.clone(),
            mac: r.mac.clone(),
            addresses: r.addresses.clone(),
            gateway: r.gateway.clone(),
            dns: r.dns.clone(),
            role: r.role.clone(),
        }
    }
}

/// Check a network identity as plain data: each interface parses, and within the node no
/// name, MAC or address appears twice; returns the parsed interfaces and the stored form.
pub fn check_identity(ifaces: &[NetInterface]) -> Result<(Vec<Interface>, Vec<InterfaceRecord>)> {
    let bad = |m: String| Err(InventoryError::Invalid(m));
    if ifaces.len() > NICS_MAX {
        return bad(format!("at most {NICS_MAX} interfaces"));
    }
    let (mut names, mut macs, mut ips) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut parsed = Vec::new();
    let mut records = Vec::new();
    for (n, w) in ifaces.iter().enumerate() {
        let which = w.name.clone().unwrap_or_else(|| format!("interface {}", n + 1));
        let i = w.to_interface().map_err(|e| InventoryError::Invalid(format!("{which}: {e}")))?;
        if i.addresses.len() > ADDRESSES_MAX || i.dns.len() > DNS_MAX {
            return bad(format!("{which}: at most {ADDRESSES_MAX} addresses and {DNS_MAX} DNS servers"));
        }
        if let Some(nm) = &i.name
            && !names.insert(nm.clone())
        {
            return bad(format!("interface name {nm} is listed twice"));
        }
        if let Some(m) = i.mac {
            if !macs.insert(m) {
                return bad(format!("MAC {m} is listed on two interfaces"));
            }
            if m.0[0] & 1 == 1 {
                return bad(format!("{which}: MAC {m} is a multicast address"));
            }
        }
        for a in &i.addresses {
            if !ips.insert(a.addr) {
                return bad(format!("address {} is listed twice", a.addr));
            }
            if let Some(why) = unusable(a) {
                return bad(format!("{which}: {why}"));
            }
        }
        records.push(InterfaceRecord {
            name: i.name.clone(),
            mac: i.mac.map(|m| m.to_string()),
            addresses: i.addresses.iter().map(|c| c.to_string()).collect(),
            gateway: i.gateway.map(|g| g.to_string()),
            dns: i.dns.iter().map(|d| d.to_string()).collect(),
            role: live::role_name(&i.role).to_string(),
        });
        parsed.push(i);
    }
    Ok((parsed, records))
}

/// Why an address cannot be a host's static address, if it cannot: unspecified, loopback,
/// multicast, link-local, or its subnet's network or broadcast address.
fn unusable(c: &Cidr) -> Option<String> {
    let ip = c.addr;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Some(format!("{c} is not a host address"));
    }
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() || v4.is_broadcast() {
                return Some(format!("{c} is not a host address"));
            }
            if c.prefix < 31 {
                let m = u32::MAX << (32 - u32::from(c.prefix));
                let x = u32::from(v4);
                if x & !m == 0 || x & !m == !m {
                    return Some(format!("{c} is its subnet's network or broadcast address"));
                }
            }
        }
        IpAddr::V6(v6) => {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return Some(format!("{c} is link-local (the interface makes its own)"));
            }
        }
    }
    None
}

/// The node's interfaces with MACs filled in where it has none: by name from the NICs its
/// boot environment reported, the private network's from the MAC it network-boots with, any
/// other from the next reported NIC nobody claimed (in name order). Returns notes of what
/// was filled.
pub fn fill_macs(ifaces: &mut [Interface], node_macs: &[Mac], nics: &[(String, Mac)]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut used: HashSet<Mac> = ifaces.iter().filter_map(|i| i.mac).collect();
    let label = |i: &Interface| i.name.clone().unwrap_or_else(|| live::role_name(&i.role).to_string());
    for i in ifaces.iter_mut().filter(|i| i.mac.is_none()) {
        let by_name = i.name.as_ref().and_then(|n| nics.iter().find(|(nn, m)| nn == n && !used.contains(m)));
        let pick = by_name.map(|(_, m)| (*m, "its boot environment's NIC of that name"));
        let pick = pick.or_else(|| {
            (i.role == NetRole::Private)
                .then(|| node_macs.iter().find(|m| !used.contains(m)).map(|m| (*m, "the MAC it network-boots with")))
                .flatten()
        });
        let pick = pick.or_else(|| {
            nics.iter()
                .find(|(_, m)| !used.contains(m) && !node_macs.contains(m))
                .map(|(_, m)| (*m, "the next NIC its boot environment reported"))
        });
        if let Some((m, why)) = pick {
            used.insert(m);
            notes.push(format!("{}: MAC {m} ({why})", label(i)));
            i.mac = Some(m);
        }
    }
    notes
}

impl Inventory {
    /// Record the config file `serve` runs with, so the node network rules (and the CLI on
    /// this data dir) know the primary's networks and `[failover]`.
    pub async fn set_serve_config(&self, path: Option<&Path>) -> Result<()> {
        let abs = path.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
        Ok(self.db.set_serve_config(abs.as_deref().and_then(Path::to_str)).await?)
    }

    /// The primary: its configuration and its live interfaces.
    pub async fn primary(&self) -> Result<Primary> {
        let config = match self.db.serve_config().await? {
            None => None,
            Some(p) => {
                let path = PathBuf::from(p);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    InventoryError::Conflict(format!(
                        "cannot read {} (the config `serve` runs with): {e}",
                        path.display()
                    ))
                })?;
                let cfg = Config::parse(&text, &path).map_err(|e| InventoryError::Conflict(e.to_string()))?;
                Some((path, text, cfg))
            }
        };
        let mut nets = Networks::default();
        if let Some((_, _, cfg)) = &config {
            if let Some(f) = &cfg.failover {
                for v in &f.vips {
                    let (addr, prefix) =
                        v.parse_address().map_err(|e| InventoryError::Conflict(format!("[failover] vip: {e}")))?;
                    nets.vips.push(Cidr { addr, prefix });
                    nets.vip_interfaces.push(v.interface.clone());
                }
            }
            nets.dhcp_interface = cfg.dhcp.as_ref().map(|d| d.interface.clone());
        }
        let vip_ips: Vec<IpAddr> = nets.vips.iter().map(|c| c.addr).collect();
        let mut identity = live::read_host(&vip_ips)
            .await
            .map_err(|e| InventoryError::Conflict(format!("reading this host's interfaces: {e}")))?;
        live::assign_roles(&mut identity, &nets);
        Ok(Primary { config, vips: nets.vips, identity })
    }

    /// A node's network identity.
    pub async fn network(&self, name: &str) -> Result<NodeNetwork> {
        let (ifaces, force) =
            self.db.network(name).await?.ok_or_else(|| InventoryError::NotFound(format!("no node {name}")))?;
        Ok(NodeNetwork { interfaces: ifaces.iter().map(NetInterface::from).collect(), force })
    }

    /// Why a node cannot have these addresses, beyond what the database refuses: the
    /// primary holds one, DHCP would, or something on the LAN answers for it (a MAC that is
    /// not the node's own).
    async fn check_addresses(&self, name: &str, ifaces: &[Interface], primary: &Primary, probe: bool) -> Result<()> {
        let mut own: HashSet<Mac> = ifaces.iter().filter_map(|i| i.mac).collect();
        if let Ok(n) = self.node(name).await {
            own.extend(n.macs.iter().filter_map(|m| m.parse::<Mac>().ok()));
        }
        let mut to_probe = Vec::new();
        for i in ifaces {
            for a in &i.addresses {
                if let Some(why) = primary.holds(a.addr).or_else(|| primary.dhcp_refuses(a.addr)) {
                    return Err(InventoryError::Conflict(format!("node {name}: {why}")));
                }
                if probe && primary.on_link(a.addr) {
                    to_probe.push(a.addr);
                }
            }
        }
        let answers =
            futures_util::future::join_all(to_probe.iter().map(|ip| crate::netcfg::probe::answering(*ip, PROBE_WAIT)))
                .await;
        for (ip, r) in to_probe.iter().zip(answers) {
            match r {
                Ok(Some(mac)) if !own.contains(&mac) => {
                    return Err(InventoryError::Conflict(format!(
                        "node {name}: {ip} is in use on the LAN (answered from MAC {mac}); pick a free one"
                    )));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("could not probe {ip}: {e}"),
            }
        }
        Ok(())
    }

    /// Set a node's network identity (replacing it): checked as data, against the
    /// primary's own addresses and DHCP pool, against every other node and lease, and (with
    /// `probe`) against what answers on the LAN.
    pub async fn set_network(&self, name: &str, net: NodeNetwork, probe: bool) -> Result<NodeNetwork> {
        let (parsed, records) = check_identity(&net.interfaces)?;
        self.node(name).await?;
        let primary = self.primary().await?;
        self.check_addresses(name, &parsed, &primary, probe).await?;
        let summary: Vec<String> = records
            .iter()
            .map(|r| format!("{} {}", r.role, if r.addresses.is_empty() { "-".into() } else { r.addresses.join(",") }))
            .collect();
        let msg = format!(
            "node {name} network: {}{}",
            if summary.is_empty() { "none".into() } else { summary.join("; ") },
            if net.force { " (forced)" } else { "" }
        );
        self.db.set_network(name, &records, net.force, &EventKind::NodeNetwork.as_str(), &msg).await?;
        self.network(name).await
    }

    /// The network identity proposed for a node from the primary's: the same networks, the
    /// next address on each that nobody holds (the primary, the VIPs, DHCP, other nodes,
    /// leases, and, with `probe`, anything answering on the LAN), the MAC it network-boots
    /// with on the private network and its other reported NICs on the rest.
    pub async fn propose_network(&self, name: &str, probe: bool) -> Result<NodeNetwork> {
        let node = self.node(name).await?;
        let primary = self.primary().await?;
        if primary.identity.interfaces.is_empty() {
            return Err(InventoryError::Conflict(
                "this host has no static addresses to propose from (is the server running on the primary?)".into(),
            ));
        }
        let held: HashSet<IpAddr> = self
            .db
            .held_addresses()
            .await?
            .into_iter()
            .filter(|h| h.node != name)
            .filter_map(|h| h.ip.parse().ok())
            .collect();
        let node_macs: Vec<Mac> = node.macs.iter().filter_map(|m| m.parse().ok()).collect();
        let nics: Vec<(String, Mac)> = match self.hardware(name).await {
            Ok(h) => h.hardware.nics.iter().filter_map(|n| Some((n.name.clone(), n.mac.parse().ok()?))).collect(),
            Err(_) => Vec::new(),
        };
        let mut busy: HashSet<IpAddr> = HashSet::new();
        // Each round probes what it proposed; anything answering is skipped next round.
        for _ in 0..8 {
            let taken = |ip: IpAddr| {
                held.contains(&ip)
                    || busy.contains(&ip)
                    || primary.holds(ip).is_some()
                    || primary.dhcp_refuses(ip).is_some()
            };
            let mut proposal = live::propose(&primary.identity, &[], &taken)
                .map_err(|e| InventoryError::Conflict(format!("node {name}: {e}")))?;
            fill_macs(&mut proposal.interfaces, &node_macs, &nics);
            let mut answered = false;
            if probe {
                let ips: Vec<IpAddr> =
                    proposal.interfaces.iter().flat_map(|i| i.addresses.iter().map(|a| a.addr)).collect();
                let own: HashSet<Mac> =
                    proposal.interfaces.iter().filter_map(|i| i.mac).chain(node_macs.iter().copied()).collect();
                let answers = futures_util::future::join_all(
                    ips.iter().map(|ip| crate::netcfg::probe::answering(*ip, PROBE_WAIT)),
                )
                .await;
                for (ip, r) in ips.iter().zip(answers) {
                    if let Ok(Some(mac)) = r
                        && !own.contains(&mac)
                    {
                        busy.insert(*ip);
                        answered = true;
                    }
                }
            }
            if !answered {
                let interfaces = proposal.interfaces.iter().map(NetInterface::from_interface).collect();
                return Ok(NodeNetwork { interfaces, force: false });
            }
        }
        Err(InventoryError::Conflict(format!("node {name}: every address tried answers on the LAN; set them by hand")))
    }

    /// What the agent of a deployment applies to the written root (see [`NetworkPlan`]).
    pub async fn network_plan(&self, deployment: i64) -> Result<NetworkPlan> {
        let d = self.deployment(deployment).await?;
        let node = self.node(&d.node).await?;
        let net = self.network(&d.node).await?;
        let (mut standby, _) = check_identity(&net.interfaces)?;
        let primary = self.primary().await?;
        let mut notes = Vec::new();
        let node_macs: Vec<Mac> = node.macs.iter().filter_map(|m| m.parse().ok()).collect();
        let nics: Vec<(String, Mac)> = match self.hardware(&d.node).await {
            Ok(h) => h.hardware.nics.iter().filter_map(|n| Some((n.name.clone(), n.mac.parse().ok()?))).collect(),
            Err(_) => Vec::new(),
        };
        notes.extend(fill_macs(&mut standby, &node_macs, &nics));
        if standby.is_empty() && !primary.identity.interfaces.is_empty() {
            notes.push(format!(
                "node {} has no network identity: set one with `understudy nodes network {} --from-primary`",
                d.node, d.node
            ));
        }
        let failover = match (&primary.config, node.role) {
            (Some((_, text, cfg)), Role::Standby) if cfg.failover.is_some() => {
                let mapping = Mapping::from_identities(
                    &primary.identity,
                    &NodeIdentity { interfaces: standby.clone() },
                    primary.vip_ips(),
                )
                .map_err(|e| InventoryError::Conflict(format!("node {}: {e}", d.node)))?;
                Some(self.standby_failover(text, cfg, &d.node, &mapping, &mut notes)?)
            }
            (Some((_, _, cfg)), Role::Standby) if cfg.failover.is_none() => {
                notes.push("the primary's config has no [failover]: the standby joins no failover pair".into());
                None
            }
            (None, Role::Standby) => {
                notes.push("the server runs without a config file: no [failover] to join".into());
                None
            }
            _ => None,
        };
        Ok(NetworkPlan {
            node: d.node.clone(),
            primary: primary.identity.interfaces.iter().map(NetInterface::from_interface).collect(),
            standby: standby.iter().map(NetInterface::from_interface).collect(),
            vips: primary.vip_ips().iter().map(|v| v.to_string()).collect(),
            force: net.force,
            failover,
            notes,
        })
    }

    /// The standby's failover configuration and key, from the primary's.
    fn standby_failover(
        &self,
        text: &str,
        cfg: &Config,
        node: &str,
        mapping: &Mapping,
        notes: &mut Vec<String>,
    ) -> Result<StandbyFailover> {
        let Some(f) = &cfg.failover else {
            return Err(InventoryError::Conflict("the primary's config has no [failover]".into()));
        };
        let joined = crate::failover::join::standby_config(text, node, mapping)
            .map_err(|e| InventoryError::Conflict(format!("the standby's failover configuration: {e}")))?;
        let (config_path, key_path) = crate::failover::join::standby_paths(&joined)
            .map_err(|e| InventoryError::Conflict(format!("the standby's failover configuration: {e}")))?;
        let token_path = crate::failover::join::standby_token_path(&joined)
            .map_err(|e| InventoryError::Conflict(format!("the standby's failover configuration: {e}")))?;
        notes.extend(joined.notes);
        notes.push(joined.sync_note);
        let data_dir = cfg.data_dir.clone().unwrap_or_else(|| self.data_dir.clone());
        let key_file = data_dir.join(&f.key_file);
        let key = std::fs::read_to_string(&key_file)
            .map_err(|e| InventoryError::Conflict(format!("reading the failover key {}: {e}", key_file.display())))?;
        // The standby's [sync] reads the primary's images and reports its freshness: it
        // gets a copy of the followers' token (see crate::http::auth), which can do only
        // that, as it gets the heartbeat key.
        let sync = match (token_path, &cfg.http) {
            (Some(token_path), Some(http)) => {
                let file = data_dir.join(&http.sync_token_file);
                let token = std::fs::read_to_string(&file)
                    .map_err(|e| InventoryError::Conflict(format!("reading the sync token {}: {e}", file.display())))?
                    .trim()
                    .to_string();
                if token.is_empty() {
                    return Err(InventoryError::Conflict(format!("the sync token file {} is empty", file.display())));
                }
                Some(StandbySync { token, token_path })
            }
            _ => None,
        };
        Ok(StandbyFailover { config: joined.text, config_path, key, key_path, sync })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: Option<&str>, mac: Option<&str>, addrs: &[&str], role: &str) -> NetInterface {
        NetInterface {
            name: name.map(Into::into),
            mac: mac.map(Into::into),
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            gateway: None,
            dns: vec![],
            role: role.into(),
        }
    }

    #[test]
    fn identities_are_checked_as_data() {
        let ok = [iface(Some("ens3"), Some("52:54:00:00:01:01"), &["10.0.0.2/24"], "private")];
        let (p, r) = check_identity(&ok).unwrap();
        assert_eq!(p[0].role, NetRole::Private);
        assert_eq!(r[0].addresses, ["10.0.0.2/24"]);
        let cases: Vec<(Vec<NetInterface>, &str)> = vec![
            (vec![iface(Some("ens3"), None, &["10.0.0.2"], "private")], "address with prefix"),
            (vec![iface(Some("ens3"), None, &["10.0.0.0/24"], "private")], "network or broadcast"),
            (vec![iface(Some("ens3"), None, &["10.0.0.255/24"], "private")], "network or broadcast"),
            (vec![iface(Some("ens3"), None, &["127.0.0.2/8"], "private")], "not a host address"),
            (vec![iface(Some("ens3"), None, &["fe80::2/64"], "private")], "link-local"),
            (vec![iface(Some("a/b"), None, &[], "private")], "interface name"),
            (vec![iface(Some("ens3"), None, &[], "Public!")], "network role"),
            (vec![iface(Some("ens3"), Some("01:00:5e:00:00:01"), &[], "private")], "multicast"),
            (vec![iface(Some("ens3"), Some("zz"), &[], "private")], "MAC"),
            (
                vec![
                    iface(Some("ens3"), None, &["10.0.0.2/24"], "private"),
                    iface(Some("ens4"), None, &["10.0.0.2/24"], "public"),
                ],
                "listed twice",
            ),
            (vec![iface(Some("ens3"), None, &[], "private"), iface(Some("ens3"), None, &[], "public")], "listed twice"),
        ];
        for (c, want) in cases {
            let e = check_identity(&c).unwrap_err().to_string();
            assert!(e.contains(want), "{c:?}: {e} (wanted {want})");
        }
    }

    #[test]
    fn macs_are_filled_by_name_then_boot_mac_then_next_nic() {
        let mac = |s: &str| s.parse::<Mac>().unwrap();
        let mut ifaces: Vec<Interface> = [
            iface(None, None, &["10.0.0.2/24"], "private"),
            iface(Some("ens5"), None, &["192.0.2.11/24"], "public"),
            iface(None, None, &["172.16.0.2/24"], "storage"),
        ]
        .iter()
        .map(|w| w.to_interface().unwrap())
        .collect();
        let nics = vec![
            ("ens3".to_string(), mac("52:54:00:00:01:01")),
            ("ens4".to_string(), mac("52:54:00:00:01:02")),
            ("ens5".to_string(), mac("52:54:00:00:01:03")),
        ];
        let notes = fill_macs(&mut ifaces, &[mac("52:54:00:00:01:01")], &nics);
        assert_eq!(ifaces[0].mac, Some(mac("52:54:00:00:01:01")));
        assert_eq!(ifaces[1].mac, Some(mac("52:54:00:00:01:03")));
        assert_eq!(ifaces[2].mac, Some(mac("52:54:00:00:01:02")));
        assert_eq!(notes.len(), 3, "{notes:?}");
    }
}
