//! The node's network identity and the primary→standby mapping, as plain data.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::error::NetcfgError;

/// An Ethernet hardware address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = NetcfgError;
    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetcfgError::Value { what: "MAC address", value: s.to_string() };
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl Mac {
    /// The address written the way `original` was (upper or lower case hex, `:` or `-`), so a
    /// rewritten file keeps its own style.
    pub fn styled_like(&self, original: &str) -> String {
        let mut s = self.to_string();
        if original.contains('-') {
            s = s.replace(':', "-");
        }
        if original.chars().any(|c| c.is_ascii_uppercase()) {
            s = s.to_ascii_uppercase();
        }
        s
    }
}

/// An address with its prefix length (`10.0.0.1/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = NetcfgError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetcfgError::Value { what: "address with prefix", value: s.to_string() };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What a network is used for; the failover channels and the VIP follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The cluster's private LAN (compute nodes, heartbeats).
    Private,
    /// The public LAN where the VIP lives.
    Public,
    /// Any other network (storage, management, …), by its admin-given name.
    Other(String),
}

/// One interface of a node: kernel name and/or MAC, static addresses, gateway, DNS, role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Kernel name (`eth0`, `enp1s0`), when known.
    pub name: Option<String>,
    /// Hardware address, when known.
    pub mac: Option<Mac>,
    /// Static addresses in configuration order.
    pub addresses: Vec<Cidr>,
    /// Default gateway on this interface, if any.
    pub gateway: Option<IpAddr>,
    /// DNS servers configured on this interface.
    pub dns: Vec<IpAddr>,
    /// What the network is for.
    pub role: Role,
}

/// A node's whole network identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Its interfaces.
    pub interfaces: Vec<Interface>,
}

/// How one primary interface becomes the standby's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceMap {
    /// The primary's interface as its configuration knows it.
    pub primary: Interface,
    /// The standby's MAC on the same network (None: keep MAC matches as they are).
    pub standby_mac: Option<Mac>,
    /// The standby's addresses, paired by position with `primary.addresses`.
    pub standby_addresses: Vec<Cidr>,
    /// The standby's kernel name for the interface, when known (the VIP's `interface`
    /// follows it).
    pub standby_name: Option<String>,
}

/// The primary→standby mapping a rewrite applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// One entry per primary interface.
    pub interfaces: Vec<InterfaceMap>,
    /// Failover VIPs: only the failover service raises them, never the standby's config.
    pub vips: Vec<IpAddr>,
}

/// What becomes of an address found in a configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrFate {
    /// A failover VIP: remove it.
    Vip,
    /// A primary address with a standby counterpart: write this instead.
    Mapped(Cidr),
    /// A primary address without a standby counterpart: the standby would take it.
    Unmapped,
    /// Not an address the mapping knows (a gateway, a peer, a DNS server).
    Foreign,
}

impl Mapping {
    /// Pair the primary's interfaces with the standby's by role (in order within a role: the
    /// first private with the first private, …) and check the result. Every primary interface
    /// needs a standby counterpart: one left over would keep the primary's addresses.
    pub fn from_identities(
        primary: &NodeIdentity,
        standby: &NodeIdentity,
        vips: Vec<IpAddr>,
    ) -> Result<Mapping, NetcfgError> {
        let mut used = vec![false; standby.interfaces.len()];
        let mut interfaces = Vec::new();
        for p in &primary.interfaces {
            let found = standby.interfaces.iter().enumerate().find(|(i, s)| !used[*i] && s.role == p.role);
            let Some((i, s)) = found else {
                let name = p.name.clone().or(p.mac.map(|m| m.to_string())).unwrap_or_default();
                return Err(NetcfgError::Mapping {
                    reason: format!(
                        "primary interface {name} ({:?}) has no standby interface of the same role",
                        p.role
                    ),
                });
            };
            used[i] = true;
            if s.addresses.len() < p.addresses.len() {
                return Err(NetcfgError::Mapping {
                    reason: format!(
                        "the standby's {:?} interface has {} addresses, the primary's {}",
                        p.role,
                        s.addresses.len(),
                        p.addresses.len()
                    ),
                });
            }
            interfaces.push(InterfaceMap {
                primary: p.clone(),
                standby_mac: s.mac,
                standby_addresses: s.addresses.clone(),
                standby_name: s.name.clone(),
            });
        }
        let m = Mapping { interfaces, vips };
        m.validate()?;
        Ok(m)
    }

    /// Check the mapping cannot make a rewrite loop or clash: no standby address or MAC equals a
    /// primary one or a VIP.
    pub fn validate(&self) -> Result<(), NetcfgError> {
        let primary_ips: Vec<IpAddr> =
            self.interfaces.iter().flat_map(|i| i.primary.addresses.iter().map(|c| c.addr)).collect();
        for m in &self.interfaces {
            for s in &m.standby_addresses {
                if primary_ips.contains(&s.addr) {
                    return Err(NetcfgError::Mapping { reason: format!("standby address {s} is a primary address") });
                }
                if self.vips.contains(&s.addr) {
                    return Err(NetcfgError::Mapping { reason: format!("standby address {s} is a VIP") });
                }
            }
            if let (Some(s), Some(_)) = (m.standby_mac, m.primary.mac)
                && self.interfaces.iter().any(|o| o.primary.mac == Some(s))
            {
                return Err(NetcfgError::Mapping { reason: format!("standby MAC {s} is a primary MAC") });
            }
        }
        for v in &self.vips {
            if primary_ips.contains(v) {
                return Err(NetcfgError::Mapping { reason: format!("VIP {v} is also listed as a primary address") });
            }
        }
        Ok(())
    }

    /// The standby's name for the primary's interface `name`, when the mapping knows it.
    pub fn interface_name(&self, name: &str) -> Option<&str> {
        self.interfaces.iter().find(|m| m.primary.name.as_deref() == Some(name)).and_then(|m| m.standby_name.as_deref())
    }

    /// Whether `ip` is a failover VIP.
    pub fn is_vip(&self, ip: IpAddr) -> bool {
        self.vips.contains(&ip)
    }

    /// What to do with `ip` found configured statically.
    pub fn address(&self, ip: IpAddr) -> AddrFate {
        if self.is_vip(ip) {
            return AddrFate::Vip;
        }
        for m in &self.interfaces {
            if let Some(i) = m.primary.addresses.iter().position(|c| c.addr == ip) {
                return match m.standby_addresses.get(i) {
                    Some(s) => AddrFate::Mapped(*s),
                    None => AddrFate::Unmapped,
                };
            }
        }
        AddrFate::Foreign
    }

    /// The standby's MAC for a primary MAC (None when the mapping does not know it).
    pub fn mac(&self, mac: Mac) -> Option<Mac> {
        self.interfaces.iter().find(|m| m.primary.mac == Some(mac)).and_then(|m| m.standby_mac)
    }

    /// Whether `mac` is one of the standby's MACs (a file already rewritten).
    pub fn is_standby_mac(&self, mac: Mac) -> bool {
        self.interfaces.iter().any(|m| m.standby_mac == Some(mac))
    }

    /// Whether `ip` is one of the standby's addresses (a file already rewritten).
    pub fn is_standby_address(&self, ip: IpAddr) -> bool {
        self.interfaces.iter().any(|m| m.standby_addresses.iter().any(|c| c.addr == ip))
    }

    /// Every address the primary holds (its static addresses and the VIPs), for scanning files
    /// that could not be parsed.
    pub fn primary_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> =
            self.interfaces.iter().flat_map(|i| i.primary.addresses.iter().map(|c| c.addr)).collect();
        v.extend(self.vips.iter().copied());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_both_styles_and_keeps_style() {
        let m: Mac = "52:54:00:AA:bb:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:aa:bb:01");
        assert_eq!(m, "52-54-00-aa-bb-01".parse().unwrap());
        assert_eq!(m.styled_like("AA-BB-CC-DD-EE-FF"), "52-54-00-AA-BB-01");
        assert!("52:54:00:aa:bb".parse::<Mac>().is_err());
        assert!("52:54:00:aa:bb:zz".parse::<Mac>().is_err());
    }

    #[test]
    fn cidr_round_trips_and_rejects_bad_prefix() {
        let c: Cidr = "10.0.0.1/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.1/24");
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("10.0.0.1".parse::<Cidr>().is_err());
        assert_eq!("fd00::1/64".parse::<Cidr>().unwrap().prefix, 64);
    }

    #[test]
    fn fates_and_validation() {
        let m = super::super::tests::mapping();
        assert_eq!(m.address("10.0.0.1".parse().unwrap()), AddrFate::Mapped("10.0.0.2/24".parse().unwrap()));
        assert_eq!(m.address("192.0.2.100".parse().unwrap()), AddrFate::Vip);
        assert_eq!(m.address("10.0.0.254".parse().unwrap()), AddrFate::Foreign);
        assert_eq!(m.address("10.0.0.9".parse().unwrap()), AddrFate::Unmapped);
        m.validate().unwrap();
        let mut bad = m.clone();
        bad.interfaces[0].standby_addresses[0] = "192.0.2.10/24".parse().unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn pairs_identities_by_role() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let iface = |name: &str, mac: &str, addr: &str, role: Role| Interface {
            name: Some(name.into()),
            mac: Some(mac.parse().unwrap()),
            addresses: vec![c(addr)],
            gateway: None,
            dns: vec![],
            role,
        };
        let primary = NodeIdentity {
            interfaces: vec![
                iface("eth0", "52:54:00:00:00:01", "10.0.0.1/24", Role::Private),
                iface("eth1", "52:54:00:00:00:02", "192.0.2.10/24", Role::Public),
            ],
        };
        let standby = NodeIdentity {
            interfaces: vec![
                iface("ens4", "52:54:00:00:01:02", "192.0.2.11/24", Role::Public),
                iface("ens3", "52:54:00:00:01:01", "10.0.0.2/24", Role::Private),
            ],
        };
        let m = Mapping::from_identities(&primary, &standby, vec!["192.0.2.100".parse().unwrap()]).unwrap();
        assert_eq!(m.mac("52:54:00:00:00:02".parse().unwrap()), Some("52:54:00:00:01:02".parse().unwrap()));
        assert_eq!(m.address("10.0.0.1".parse().unwrap()), AddrFate::Mapped(c("10.0.0.2/24")));
        let lonely = NodeIdentity { interfaces: standby.interfaces[..1].to_vec() };
        assert!(matches!(Mapping::from_identities(&primary, &lonely, vec![]), Err(NetcfgError::Mapping { .. })));
    }
}
