//! systemd-networkd `.network`, `.link` and `.netdev` files (`/etc/systemd/network/`).
//!
//! Covered: `[Match] MACAddress=`/`PermanentMACAddress=` (space-separated lists, matches),
//! `[Link] MACAddress=` and `[NetDev] MACAddress=` (set the MAC), `[Network] Address=`,
//! `[Address] Address=` (a VIP there removes the whole `[Address]` section), `DUIDRawData=` and
//! `IAID=` in `[DHCP]`/`[DHCPv4]`/`[DHCPv6]` (dropped: they are the primary's). `Name=`,
//! `Gateway=`, `DNS=` are kept; every other value is scanned for primary addresses and MACs.
//! Not covered: drop-in directories (`foo.network.d/*.conf`) are not visited by `rewrite_tree`.

use std::collections::HashSet;

use super::error::SyntaxError;
use super::ini::{self, Item};
use super::model::Mapping;
use super::report::{Changes, Rewritten};
use super::text::{self, AddrAction};

/// Parse a networkd file (syntax only).
pub fn parse(text: &str) -> Result<ini::Doc, SyntaxError> {
    ini::parse(text, true, true)
}

/// Render a parsed networkd file back to text.
pub fn render(doc: &ini::Doc) -> String {
    doc.render()
}

/// Rewrite a `.network`, `.link` or `.netdev` file for the standby.
pub fn rewrite(text: &str, m: &Mapping) -> Result<Rewritten, SyntaxError> {
    let mut doc = parse(text)?;
    let secs = ini::sections(&doc);
    let mut ch = Changes::default();
    let mut drop: HashSet<usize> = HashSet::new();
    let mut drop_sections: Vec<usize> = Vec::new();
    let mut section_start = 0;
    for (i, sec) in secs.iter().enumerate() {
        let line = i + 1;
        let key = match doc.items[i].clone() {
            Item::Section(_) => {
                section_start = i;
                continue;
            }
            Item::Pair { key, .. } => key,
            Item::Continued => {
                ch.unknown(line, "continued line: values scanned, not parsed");
                let body = doc.lines[i].body.clone();
                let (n, _) = text::substitute(&body, line, m, &mut ch);
                doc.lines[i].body = n;
                continue;
            }
            Item::Other => continue,
        };
        let v = doc.value(i).to_string();
        let sec = sec.as_str();
        match (sec, key.as_str()) {
            ("Match", "MACAddress" | "PermanentMACAddress") => {
                let mut out = Vec::new();
                for mac in v.split_whitespace() {
                    out.push(text::mac_action(mac, false, line, m, &mut ch).unwrap_or_else(|| mac.to_string()));
                }
                let n = out.join(" ");
                if n != v {
                    doc.set_value(i, &n);
                }
            }
            ("Link" | "NetDev", "MACAddress") => {
                if let Some(n) = text::mac_action(&v, true, line, m, &mut ch) {
                    doc.set_value(i, &n);
                }
            }
            ("Network" | "Address", "Address") if !v.is_empty() => match text::address_action(&v, line, m, &mut ch) {
                AddrAction::Remove if sec == "Address" => drop_sections.push(section_start),
                AddrAction::Remove => {
                    drop.insert(i);
                }
                AddrAction::Replace(n) => doc.set_value(i, &n),
                AddrAction::Keep => {}
            },
            ("DHCP" | "DHCPv4" | "DHCPv6", "DUIDRawData" | "IAID") => {
                drop.insert(i);
                ch.changed(line, format!("{key}={v} removed: it identifies the primary to DHCP"));
            }
            ("Match", "Name" | "OriginalName") => {}
            _ => {
                let (n, vip) = text::substitute(&v, line, m, &mut ch);
                if vip {
                    ch.kept(line, format!("{key}= mentions a VIP; left alone"));
                }
                if n != v {
                    doc.set_value(i, &n);
                }
            }
        }
    }
    // A VIP's [Address] section goes whole: header to the next header.
    for start in drop_sections {
        drop.insert(start);
        for j in start + 1..doc.lines.len() {
            if matches!(doc.items[j], Item::Section(_)) {
                break;
            }
            drop.insert(j);
        }
    }
    let lines: Vec<_> = doc.lines.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, l)| l).collect();
    Ok(Rewritten { text: text::join(lines), changes: ch, obsolete: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = include_str!("../../tests/fixtures/netcfg/networkd/10-private.network");
    const PUB: &str = include_str!("../../tests/fixtures/netcfg/networkd/20-public.network");
    const LINK: &str = include_str!("../../tests/fixtures/netcfg/networkd/10-private.link");

    #[test]
    fn rewrites_network_files() {
        let m = super::super::tests::mapping();
        let r = rewrite(NET, &m).unwrap();
        assert!(r.text.contains("MACAddress=52:54:00:00:01:01\n"), "{}", r.text);
        assert!(r.text.contains("Address=10.0.0.2/24\n"));
        assert!(!r.text.contains("DUIDRawData"));
        assert!(r.text.contains("DNS=10.0.0.254\n"));
        assert!(r.text.contains("# Cluster private network, written by the installer.\n"));
        assert!(r.changes.refused.is_empty(), "{:?}", r.changes.refused);
        assert_eq!(rewrite(&r.text, &m).unwrap().text, r.text, "idempotent");

        let p = rewrite(PUB, &m).unwrap();
        assert!(!p.text.contains("192.0.2.100"), "VIP section removed: {}", p.text);
        assert!(p.text.contains("Address=192.0.2.11/24\n"));
        assert!(p.text.contains("[Route]\nGateway=192.0.2.1\n"));
        assert!(p.changes.changed.iter().any(|n| n.what.contains("VIP")));
        assert!(p.changes.unknown.iter().any(|n| n.what.contains("continued")), "{:?}", p.changes);
        assert_eq!(rewrite(&p.text, &m).unwrap().text, p.text, "idempotent");
    }

    #[test]
    fn rewrites_link_files() {
        let m = super::super::tests::mapping();
        let r = rewrite(LINK, &m).unwrap();
        assert!(r.text.contains("MACAddress=52:54:00:00:01:01\n"));
        assert!(r.text.contains("Name=priv0\n"));
        assert_eq!(render(&parse(LINK).unwrap()), LINK);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(rewrite("[Match]\nName=eth0\n<<<garbage>>>\n", &super::super::tests::mapping()).is_err());
    }
}
