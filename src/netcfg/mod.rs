//! Network identity of a cloned root: rewrite whichever network stacks the image uses so the
//! standby comes up with its own addresses and MACs instead of the primary's, never with a
//! failover VIP configured statically, and without the primary's DHCP client ids.
//!
//! Pure cores (each takes a file's text and the [`Mapping`], returns the new text and a report
//! of what changed, what was left alone, what it did not understand and what it refuses):
//! [`ifupdown`], [`netplan`], [`keyfile`] (NetworkManager), [`networkd`], [`ifcfg`]. The I/O edge
//! is [`rewrite_tree`].

pub mod error;
pub mod ifcfg;
pub mod ifupdown;
pub mod ini;
pub mod keyfile;
pub mod live;
pub mod model;
pub mod netplan;
pub mod networkd;
pub mod probe;
pub mod report;
mod text;
mod tree;

pub use error::{NetcfgError, SyntaxError, SyntaxKind};
pub use model::{AddrFate, Cidr, Interface, InterfaceMap, Mac, Mapping, NodeIdentity, Role};
pub use report::{Changes, FileReport, Note, Refusal, Report, Rewritten, Stack};
pub use tree::{resolve as resolve_in_root, rewrite_tree};

/// Rewrite one file's text for `stack` (the dispatcher `rewrite_tree` uses).
pub fn rewrite_text(stack: Stack, text: &str, mapping: &Mapping) -> Result<Rewritten, SyntaxError> {
    match stack {
        Stack::Ifupdown => ifupdown::rewrite(text, mapping),
        Stack::Netplan => netplan::rewrite(text, mapping),
        Stack::NetworkManager => keyfile::rewrite(text, mapping),
        Stack::Networkd => networkd::rewrite(text, mapping),
        Stack::Ifcfg => ifcfg::rewrite(text, mapping),
        Stack::Udev => Ok(Rewritten { text: text.to_string(), changes: Changes::default(), obsolete: true }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The mapping every fixture is written against: a private and a public interface, one VIP.
    pub(crate) fn mapping() -> Mapping {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let mac = |s: &str| Some(s.parse::<Mac>().unwrap());
        Mapping {
            interfaces: vec![
                InterfaceMap {
                    primary: Interface {
                        name: Some("eth0".into()),
                        mac: mac("52:54:00:00:00:01"),
                        addresses: vec![c("10.0.0.1/24"), c("fd00::1/64"), c("10.0.0.9/24")],
                        gateway: None,
                        dns: vec!["10.0.0.254".parse().unwrap()],
                        role: Role::Private,
                    },
                    standby_mac: mac("52:54:00:00:01:01"),
                    standby_addresses: vec![c("10.0.0.2/24"), c("fd00::2/64")],
                    standby_name: Some("eth0".into()),
                },
                InterfaceMap {
                    primary: Interface {
                        name: Some("eth1".into()),
                        mac: mac("52:54:00:00:00:02"),
                        addresses: vec![c("192.0.2.10/24")],
                        gateway: Some("192.0.2.1".parse().unwrap()),
                        dns: vec![],
                        role: Role::Public,
                    },
                    standby_mac: mac("52:54:00:00:01:02"),
                    standby_addresses: vec![c("192.0.2.11/24")],
                    standby_name: Some("eth1".into()),
                },
            ],
            vips: vec!["192.0.2.100".parse().unwrap()],
        }
    }

    /// Every fixture cut at every character, and salted with odd bytes, never panics: each
    /// rewriter returns text or a syntax error.
    #[test]
    fn truncated_and_mangled_input_never_panics() {
        let m = mapping();
        let fixtures: [(Stack, &str); 6] = [
            (Stack::Ifupdown, include_str!("../../tests/fixtures/netcfg/ifupdown/interfaces")),
            (Stack::Netplan, include_str!("../../tests/fixtures/netcfg/netplan/50-cloud-init.yaml")),
            (Stack::NetworkManager, include_str!("../../tests/fixtures/netcfg/nm/private.nmconnection")),
            (Stack::Networkd, include_str!("../../tests/fixtures/netcfg/networkd/20-public.network")),
            (Stack::Ifcfg, include_str!("../../tests/fixtures/netcfg/ifcfg/ifcfg-eth0")),
            (Stack::Netplan, "network:\n  ethernets:\n    e:\n      addresses: \"[\"\n      macaddress: '\n"),
        ];
        let mut errors = 0;
        for (stack, text) in fixtures {
            for (cut, _) in text.char_indices() {
                for salt in ["", "\u{0}", "\"", "[", ":", "\t", "é"] {
                    let t = format!("{}{salt}", &text[..cut]);
                    if rewrite_text(stack, &t, &m).is_err() {
                        errors += 1;
                    }
                }
            }
        }
        assert!(errors > 0, "some of the mangled inputs must be refused as errors");
    }
}
