//! RHEL-style ifcfg files (`/etc/sysconfig/network-scripts/ifcfg-*`, SUSE's
//! `/etc/sysconfig/network/ifcfg-*`): shell `KEY=value` assignments.
//!
//! Covered: `HWADDR` (a match), `MACADDR` (sets the MAC), `IPADDR`/`IPADDRn` (with `/prefix` as
//! SUSE writes it; a VIP removes the address and its `PREFIXn`/`NETMASKn`, and an alias file
//! `DEVICE=eth0:1` left with no address is obsolete), `IPV6ADDR`, `IPV6ADDR_SECONDARIES`,
//! `DHCP_CLIENT_ID` and literal `DHCPV6_DUID` (dropped). `GATEWAY`, `DNSn` are kept; every other
//! value is scanned for primary addresses and MACs. Not covered: shell code (`if`, `$(…)`,
//! `export`) is reported as unknown and left alone.

use std::collections::HashSet;

use super::error::SyntaxError;
use super::model::Mapping;
use super::report::{Changes, Rewritten};
use super::text::{self, AddrAction, Line};

/// One parsed ifcfg line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Blank or comment.
    Other,
    /// `KEY=value`: the key and the value's byte range (quotes included).
    Assign {
        /// The variable name.
        key: String,
        /// Byte range of the value in the line.
        value: (usize, usize),
    },
    /// Anything else (shell code): kept, reported.
    Unknown,
}

/// A parsed ifcfg file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    lines: Vec<Line>,
    items: Vec<Item>,
}

fn is_name(k: &str) -> bool {
    !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
}

/// Parse an ifcfg file (syntax only).
pub fn parse(text: &str) -> Result<Doc, SyntaxError> {
    let lines = text::split(text)?;
    let mut items = Vec::new();
    for (n, l) in lines.iter().enumerate() {
        let t = l.body.trim();
        if t.is_empty() || t.starts_with('#') {
            items.push(Item::Other);
            continue;
        }
        let lead = l.body.len() - l.body.trim_start().len();
        match t.split_once('=') {
            Some((k, v)) if is_name(k) => {
                let b = lead + k.len() + 1;
                let e = b + v.trim_end().len();
                let (inner, q) = text::unquote(v.trim_end());
                if q.is_none() && (v.starts_with(['"', '\'']) || inner.contains(char::is_whitespace)) {
                    return Err(SyntaxError { line: n + 1, kind: super::error::SyntaxKind::UnterminatedQuote });
                }
                items.push(Item::Assign { key: k.to_string(), value: (b, e) });
            }
            _ => items.push(Item::Unknown),
        }
    }
    Ok(Doc { lines, items })
}

/// Render a parsed ifcfg file back to text.
pub fn render(doc: &Doc) -> String {
    text::join(&doc.lines)
}

impl Doc {
    fn raw(&self, i: usize) -> &str {
        match &self.items[i] {
            Item::Assign { value: (b, e), .. } => &self.lines[i].body[*b..*e],
            _ => "",
        }
    }
    fn set(&mut self, i: usize, inner: &str) {
        let (_, q) = text::unquote(self.raw(i));
        let new = text::requote(inner, q);
        if let Item::Assign { value: (b, e), .. } = &mut self.items[i] {
            self.lines[i].body.replace_range(*b..*e, &new);
            *e = *b + new.len();
        }
    }
}

/// Rewrite an ifcfg file for the standby.
pub fn rewrite(text: &str, m: &Mapping) -> Result<Rewritten, SyntaxError> {
    let mut doc = parse(text)?;
    let mut ch = Changes::default();
    let mut drop: HashSet<usize> = HashSet::new();
    let mut vip_suffixes: HashSet<String> = HashSet::new();
    let mut mapped_prefix: Vec<(String, u8)> = Vec::new();
    let mut device = String::new();
    let mut addresses_left = 0usize;
    for i in 0..doc.lines.len() {
        let line = i + 1;
        let key = match &doc.items[i] {
            Item::Assign { key, .. } => key.clone(),
            Item::Unknown => {
                ch.unknown(line, format!("not a KEY=value assignment: {:?}; left alone", doc.lines[i].body.trim()));
                let mut scratch = Changes::default();
                text::substitute(&doc.lines[i].body, line, m, &mut scratch);
                if !scratch.changed.is_empty() || !scratch.refused.is_empty() {
                    ch.refused(line, "shell code mentions a primary address or MAC");
                }
                continue;
            }
            Item::Other => continue,
        };
        let (v, _) = text::unquote(doc.raw(i));
        let v = v.to_string();
        if key == "DEVICE" {
            device = v.clone();
        }
        if let Some(suffix) = key.strip_prefix("IPADDR").filter(|s| s.chars().all(|c| c.is_ascii_digit())) {
            match text::address_action(&v, line, m, &mut ch) {
                AddrAction::Remove => {
                    drop.insert(i);
                    vip_suffixes.insert(suffix.to_string());
                }
                AddrAction::Replace(n) => {
                    addresses_left += 1;
                    // The standby's prefix, for the PREFIXn line that goes with this address.
                    let ip = n.split_once('/').map_or(n.as_str(), |(a, _)| a);
                    if let Some(c) =
                        m.interfaces.iter().flat_map(|x| &x.standby_addresses).find(|c| c.addr.to_string() == ip)
                    {
                        mapped_prefix.push((suffix.to_string(), c.prefix));
                    }
                    doc.set(i, &n);
                }
                AddrAction::Keep => addresses_left += 1,
            }
            continue;
        }
        match key.as_str() {
            "HWADDR" | "MACADDR" => {
                if let Some(n) = text::mac_action(&v, key == "MACADDR", line, m, &mut ch) {
                    doc.set(i, &n);
                }
            }
            "IPV6ADDR" | "IPV6ADDR_SECONDARIES" => {
                let mut out = Vec::new();
                for a in v.split_whitespace() {
                    match text::address_action(a, line, m, &mut ch) {
                        AddrAction::Remove => {}
                        AddrAction::Replace(n) => out.push(n),
                        AddrAction::Keep => out.push(a.to_string()),
                    }
                }
                addresses_left += out.len();
                let n = out.join(" ");
                if n.is_empty() {
                    drop.insert(i);
                } else if n != v {
                    doc.set(i, &n);
                }
            }
            "DHCP_CLIENT_ID" => {
                drop.insert(i);
                ch.changed(line, format!("{key}={v} removed: it identifies the primary to DHCP"));
            }
            "DHCPV6_DUID" if v.contains(':') => {
                drop.insert(i);
                ch.changed(line, format!("{key}={v} removed: it identifies the primary to DHCP"));
            }
            _ => {
                let (n, vip) = text::substitute(&v, line, m, &mut ch);
                if vip {
                    ch.kept(line, format!("{key} mentions a VIP; left alone"));
                }
                if n != v {
                    doc.set(i, &n);
                }
            }
        }
    }
    // Second pass: the prefix or netmask of a removed VIP goes with it; a mapped address's
    // prefix follows the standby's.
    for i in 0..doc.lines.len() {
        let Item::Assign { key, .. } = doc.items[i].clone() else { continue };
        for base in ["PREFIX", "NETMASK"] {
            let Some(suffix) = key.strip_prefix(base).filter(|s| s.chars().all(|c| c.is_ascii_digit())) else {
                continue;
            };
            if vip_suffixes.contains(suffix) {
                drop.insert(i);
                ch.changed(i + 1, format!("{key} of the removed VIP removed"));
            } else if base == "PREFIX"
                && let Some((_, p)) = mapped_prefix.iter().find(|(s, _)| s == suffix)
            {
                let (cur, _) = text::unquote(doc.raw(i));
                if cur != p.to_string() {
                    let what = format!("{key} {cur} → {p}");
                    doc.set(i, &p.to_string());
                    ch.changed(i + 1, what);
                }
            }
        }
    }
    let obsolete = device.contains(':') && !vip_suffixes.is_empty() && addresses_left == 0;
    let lines: Vec<_> = doc.lines.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, l)| l).collect();
    Ok(Rewritten { text: text::join(lines), changes: ch, obsolete })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETH0: &str = include_str!("../../tests/fixtures/netcfg/ifcfg/ifcfg-eth0");
    const ALIAS: &str = include_str!("../../tests/fixtures/netcfg/ifcfg/ifcfg-eth1:0");

    #[test]
    fn rewrites_the_fixture() {
        let m = super::super::tests::mapping();
        let r = rewrite(ETH0, &m).unwrap();
        assert!(r.text.contains("HWADDR=52:54:00:00:01:01\n"), "{}", r.text);
        assert!(r.text.contains("IPADDR=10.0.0.2\n"));
        assert!(r.text.contains("PREFIX=24\n"));
        assert!(r.text.contains("IPV6ADDR=\"fd00::2/64\"\n"));
        assert!(!r.text.contains("DHCP_CLIENT_ID"));
        assert!(!r.text.contains("192.0.2.100"), "secondary VIP gone");
        assert!(!r.text.contains("PREFIX1"), "its prefix gone");
        assert!(r.text.contains("# Generated by the kickstart, edited by hand.\n"));
        assert!(r.changes.unknown.iter().any(|n| n.what.contains("KEY=value")));
        assert!(r.changes.refused.is_empty(), "{:?}", r.changes.refused);
        assert!(!r.obsolete);
        assert_eq!(rewrite(&r.text, &m).unwrap().text, r.text, "idempotent");
        assert_eq!(render(&parse(ETH0).unwrap()), ETH0);
    }

    #[test]
    fn vip_alias_file_is_obsolete() {
        let r = rewrite(ALIAS, &super::super::tests::mapping()).unwrap();
        assert!(r.obsolete);
        assert!(!r.text.contains("192.0.2.100"));
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        assert!(rewrite("DEVICE=eth0\nIPADDR=\"10.0.0.1\n", &super::super::tests::mapping()).is_err());
    }
}
