//! The primary's own network identity, read from the running host (`ip -j addr`,
//! `ip -j route`), and the proposal of a standby's identity from it.
//!
//! Pure: [`parse_host`] (the two JSON documents → interfaces), [`assign_roles`] (which network
//! is which, from the server's configuration), [`propose`] (the standby's interfaces: same
//! networks, the next free address on each). The I/O edge is [`read_host`].

use super::error::NetcfgError;
use super::model::{Cidr, Interface, Mac, NodeIdentity, Role};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    dynamic: bool,
}

#[derive(Deserialize)]
struct Route {
    #[serde(default)]
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: String,
}

/// The host's Ethernet interfaces with their static global addresses (DHCP-obtained and
/// link-local ones are not part of an identity: the clone gets its own) and default gateways,
/// from `ip -j addr show` and `ip -j route show` (v4 and v6 documents concatenated as arrays).
/// `vips` are left out: the failover service raises them, they belong to no node. Roles are
/// all `Other(ifname)` until [`assign_roles`].
pub fn parse_host(addr_json: &str, route_json: &[&str], vips: &[IpAddr]) -> Result<NodeIdentity, NetcfgError> {
    let bad = |what: &str, e: serde_json::Error| NetcfgError::Mapping { reason: format!("{what}: {e}") };
    let links: Vec<Link> = serde_json::from_str(addr_json).map_err(|e| bad("ip -j addr", e))?;
    let mut routes: Vec<Route> = Vec::new();
    for r in route_json {
        let mut v: Vec<Route> = serde_json::from_str(r).map_err(|e| bad("ip -j route", e))?;
        routes.append(&mut v);
    }
    let mut interfaces = Vec::new();
    for l in links {
        if l.link_type != "ether" {
            continue;
        }
        let mut addresses = Vec::new();
        for a in &l.addr_info {
            if a.scope != "global" || a.dynamic || !matches!(a.family.as_str(), "inet" | "inet6") {
                continue;
            }
            let Ok(addr) = a.local.parse::<IpAddr>() else { continue };
            if vips.contains(&addr) {
                continue;
            }
            addresses.push(Cidr { addr, prefix: a.prefixlen });
        }
        if addresses.is_empty() {
            continue;
        }
        let gateway = routes
            .iter()
            .filter(|r| r.dst == "default" && r.dev == l.ifname)
            .find_map(|r| r.gateway.as_deref().and_then(|g| g.parse().ok()));
        interfaces.push(Interface {
            name: Some(l.ifname.clone()),
            mac: l.address.parse::<Mac>().ok(),
            addresses,
            gateway,
            dns: Vec::new(),
            role: Role::Other(other_role(&l.ifname)),
        });
    }
    Ok(NodeIdentity { interfaces })
}

/// A role name for a network known only by the primary's interface name (`ens5` → `net-ens5`).
fn other_role(ifname: &str) -> String {
    let mut s: String =
        ifname.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    s.insert_str(0, "net-");
    s.truncate(32);
    s
}

/// What the server's configuration says about its networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks {
    /// Failover VIPs with their prefix: the interface on a VIP's subnet is the public one.
    pub vips: Vec<Cidr>,
    /// Interfaces named by the VIPs' `interface`.
    pub vip_interfaces: Vec<String>,
    /// The interface DHCP serves on: the private cluster LAN.
    pub dhcp_interface: Option<String>,
}

/// Name each interface's network: `public` where a VIP lives (by its interface or its
/// subnet), `private` where DHCP serves, others keep `net-<ifname>`.
pub fn assign_roles(id: &mut NodeIdentity, nets: &Networks) {
    for i in &mut id.interfaces {
        let name = i.name.clone().unwrap_or_default();
        let on_vip_subnet = nets.vips.iter().any(|v| i.addresses.iter().any(|a| same_subnet(a, v.addr)));
        if nets.vip_interfaces.contains(&name) || on_vip_subnet {
            i.role = Role::Public;
        } else if nets.dhcp_interface.as_deref() == Some(name.as_str()) {
            i.role = Role::Private;
        }
    }
}

/// Whether `ip` is inside `net`'s subnet.
pub fn same_subnet(net: &Cidr, ip: IpAddr) -> bool {
    match (net.addr, ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = mask_v4(net.prefix);
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = mask_v6(net.prefix);
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

fn mask_v4(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) }
}

fn mask_v6(prefix: u8) -> u128 {
    if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) }
}

/// The next address after `from` in its subnet that `taken` does not hold: not the network
/// or broadcast address, at most `limit` candidates looked at (a /8 is not walked whole).
pub fn next_free(from: &Cidr, taken: &dyn Fn(IpAddr) -> bool, limit: u32) -> Option<Cidr> {
    match from.addr {
        IpAddr::V4(a) => {
            let m = mask_v4(from.prefix);
            let net = u32::from(a) & m;
            let bcast = net | !m;
            let mut x = u32::from(a);
            for _ in 0..limit {
                x = if x >= bcast.saturating_sub(1) { net + 1 } else { x + 1 };
                if x == u32::from(a) {
                    return None;
                }
                let ip = IpAddr::V4(Ipv4Addr::from(x));
                if x != net && x != bcast && !taken(ip) {
                    return Some(Cidr { addr: ip, prefix: from.prefix });
                }
            }
            None
        }
        IpAddr::V6(a) => {
            let m = mask_v6(from.prefix);
            let net = u128::from(a) & m;
            let mut x = u128::from(a);
            for _ in 0..limit {
                x = x.wrapping_add(1);
                if x & m != net {
                    x = net + 1;
                }
                if x == u128::from(a) {
                    return None;
                }
                let ip = IpAddr::V6(Ipv6Addr::from(x));
                if !taken(ip) {
                    return Some(Cidr { addr: ip, prefix: from.prefix });
                }
            }
            None
        }
    }
}

/// The standby's identity proposed from the primary's: the same networks (role, interface
/// name, gateway, DNS), the next free address on each, the given MACs by role (the MAC it
/// network-boots with goes on the private network), none where unknown. An address nothing
/// free could be found for is an error naming the network.
pub fn propose(
    primary: &NodeIdentity,
    macs: &[(Role, Mac)],
    taken: &dyn Fn(IpAddr) -> bool,
) -> Result<NodeIdentity, NetcfgError> {
    let mut chosen: Vec<IpAddr> = Vec::new();
    let mut used_macs: HashSet<Mac> = HashSet::new();
    let mut interfaces = Vec::new();
    for p in &primary.interfaces {
        let mut addresses = Vec::new();
        for a in &p.addresses {
            let busy = |ip: IpAddr| taken(ip) || chosen.contains(&ip);
            let Some(n) = next_free(a, &busy, 4096) else {
                return Err(NetcfgError::Mapping {
                    reason: format!("no free address left near {a} on the {} network", role_name(&p.role)),
                });
            };
            chosen.push(n.addr);
            addresses.push(n);
        }
        let mac = macs.iter().find(|(r, m)| *r == p.role && !used_macs.contains(m)).map(|(_, m)| *m);
        if let Some(m) = mac {
            used_macs.insert(m);
        }
        interfaces.push(Interface {
            name: p.name.clone(),
            mac,
            addresses,
            gateway: p.gateway,
            dns: p.dns.clone(),
            role: p.role.clone(),
        });
    }
    Ok(NodeIdentity { interfaces })
}

/// A role as people write it.
pub fn role_name(r: &Role) -> &str {
    match r {
        Role::Private => "private",
        Role::Public => "public",
        Role::Other(n) => n,
    }
}

/// Run `ip -j` on this host and parse it (see [`parse_host`]).
pub async fn read_host(vips: &[IpAddr]) -> Result<NodeIdentity, NetcfgError> {
    async fn ip(args: &[&str]) -> Result<String, NetcfgError> {
        let out = tokio::process::Command::new("ip")
            .args(args)
            .output()
            .await
            .map_err(|e| NetcfgError::Mapping { reason: format!("running ip {}: {e}", args.join(" ")) })?;
        if !out.status.success() {
            return Err(NetcfgError::Mapping {
                reason: format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
    let addr = ip(&["-j", "addr", "show"]).await?;
    let r4 = ip(&["-j", "-4", "route", "show"]).await?;
    let r6 = ip(&["-j", "-6", "route", "show"]).await?;
    // An empty table prints nothing rather than `[]`.
    let fix = |s: &str| if s.trim().is_empty() { "[]".to_string() } else { s.to_string() };
    parse_host(&fix(&addr), &[&fix(&r4), &fix(&r6)], vips)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = r#"[
 {"ifindex":1,"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00",
  "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
 {"ifindex":2,"ifname":"ens3","link_type":"ether","address":"52:54:00:00:00:01",
  "addr_info":[{"family":"inet","local":"10.0.0.1","prefixlen":24,"scope":"global","label":"ens3"},
               {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
 {"ifindex":3,"ifname":"ens4","link_type":"ether","address":"52:54:00:00:00:02",
  "addr_info":[{"family":"inet","local":"192.0.2.10","prefixlen":24,"scope":"global"},
               {"family":"inet","local":"192.0.2.100","prefixlen":24,"scope":"global","secondary":true,"label":"ens4:1"}]},
 {"ifindex":4,"ifname":"ens5","link_type":"ether","address":"52:54:00:00:00:03",
  "addr_info":[{"family":"inet","local":"172.16.0.7","prefixlen":16,"scope":"global","dynamic":true}]},
 {"ifindex":5,"ifname":"ib0","link_type":"infiniband","address":"80:00:00:48","addr_info":[]}
]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"ens4","flags":[]},
 {"dst":"10.0.0.0/24","dev":"ens3","protocol":"kernel","scope":"link","prefsrc":"10.0.0.1","flags":[]}]"#;

    fn host() -> NodeIdentity {
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        parse_host(ADDR, &[ROUTES, "[]"], &[vip]).unwrap()
    }

    #[test]
    fn host_identity_keeps_static_global_addresses_and_drops_vips() {
        let h = host();
        assert_eq!(h.interfaces.len(), 2, "{h:?}");
        assert_eq!(h.interfaces[0].name.as_deref(), Some("ens3"));
        assert_eq!(h.interfaces[0].addresses, vec!["10.0.0.1/24".parse().unwrap()]);
        assert_eq!(h.interfaces[1].addresses, vec!["192.0.2.10/24".parse().unwrap()]);
        assert_eq!(h.interfaces[1].gateway, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(h.interfaces[1].mac, Some("52:54:00:00:00:02".parse().unwrap()));
        assert!(parse_host("{", &[], &[]).is_err());
        assert!(parse_host("[]", &["not json"], &[]).is_err());
    }

    #[test]
    fn roles_come_from_the_vip_and_dhcp() {
        let mut h = host();
        let nets = Networks {
            vips: vec!["192.0.2.100/24".parse().unwrap()],
            vip_interfaces: vec![],
            dhcp_interface: Some("ens3".into()),
        };
        assign_roles(&mut h, &nets);
        assert_eq!(h.interfaces[0].role, Role::Private);
        assert_eq!(h.interfaces[1].role, Role::Public);
        let mut h2 = host();
        assign_roles(&mut h2, &Networks::default());
        assert_eq!(h2.interfaces[0].role, Role::Other("net-ens3".into()));
    }

    #[test]
    fn next_free_skips_taken_network_and_broadcast() {
        let c: Cidr = "10.0.0.253/24".parse().unwrap();
        let taken = |ip: IpAddr| ip == "10.0.0.254".parse::<IpAddr>().unwrap();
        assert_eq!(next_free(&c, &taken, 100), Some("10.0.0.1/24".parse().unwrap()));
        let full = |_: IpAddr| true;
        assert_eq!(next_free(&c, &full, 1000), None);
        let p2p: Cidr = "10.9.0.1/31".parse().unwrap();
        assert_eq!(next_free(&p2p, &|_| false, 10), None, "a /31 has no other usable address here");
        let v6: Cidr = "fd00::1/64".parse().unwrap();
        assert_eq!(next_free(&v6, &|_| false, 10), Some("fd00::2/64".parse().unwrap()));
    }

    #[test]
    fn proposal_takes_the_next_free_address_on_each_network() {
        let mut h = host();
        assign_roles(
            &mut h,
            &Networks { vips: vec!["192.0.2.100/24".parse().unwrap()], vip_interfaces: vec![], dhcp_interface: None },
        );
        let pxe: Mac = "52:54:00:00:01:01".parse().unwrap();
        let taken = |ip: IpAddr| ip == "192.0.2.11".parse::<IpAddr>().unwrap();
        let p = propose(&h, &[(Role::Other("net-ens3".into()), pxe)], &taken).unwrap();
        assert_eq!(p.interfaces[0].addresses, vec!["10.0.0.2/24".parse().unwrap()]);
        assert_eq!(p.interfaces[0].mac, Some(pxe));
        assert_eq!(p.interfaces[1].addresses, vec!["192.0.2.12/24".parse().unwrap()]);
        assert_eq!(p.interfaces[1].mac, None);
        assert_eq!(p.interfaces[1].gateway, Some("192.0.2.1".parse().unwrap()));
        assert!(propose(&h, &[], &|_| true).is_err());
    }
}
