//! NetworkManager keyfiles (`/etc/NetworkManager/system-connections/*.nmconnection`).
//!
//! Covered: `[ethernet]`/`[wifi]` `mac-address` (a match) and `cloned-mac-address` (sets the
//! MAC); `[ipv4]`/`[ipv6]` `addressN=ADDR/PREFIX[,GATEWAY]` (and the older `addressesN`),
//! `dhcp-client-id` and `dhcp-duid` literals (dropped: they are the primary's). Every other value
//! is scanned for primary addresses and MACs. Not covered: the pre-1.0 `addresses1=a;p;g;` list
//! form (reported as unknown, addresses still substituted).

use std::collections::HashSet;

use super::error::SyntaxError;
use super::ini::{self, Item};
use super::model::Mapping;
use super::report::{Changes, Rewritten};
use super::text::{self, AddrAction};

/// Parse a keyfile (syntax only).
pub fn parse(text: &str) -> Result<ini::Doc, SyntaxError> {
    ini::parse(text, false, false)
}

/// Render a parsed keyfile back to text.
pub fn render(doc: &ini::Doc) -> String {
    doc.render()
}

fn is_address_key(k: &str) -> bool {
    let digits = |s: &str| s.is_empty() || s.chars().all(|c| c.is_ascii_digit());
    k.strip_prefix("addresses").is_some_and(digits) || k.strip_prefix("address").is_some_and(digits)
}

/// A literal client id or DUID (hex bytes), as opposed to a mode like `mac` or `stable`.
fn is_literal_id(v: &str) -> bool {
    v.contains(':') && v.split(':').all(|p| p.len() <= 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Rewrite a keyfile for the standby.
pub fn rewrite(text: &str, m: &Mapping) -> Result<Rewritten, SyntaxError> {
    let mut doc = parse(text)?;
    let secs = ini::sections(&doc);
    let mut ch = Changes::default();
    let mut drop: HashSet<usize> = HashSet::new();
    for (i, sec) in secs.iter().enumerate() {
        let Item::Pair { key, .. } = doc.items[i].clone() else { continue };
        let line = i + 1;
        let v = doc.value(i).to_string();
        let sec = sec.as_str();
        let eth = matches!(sec, "ethernet" | "802-3-ethernet" | "wifi" | "802-11-wireless");
        let ip = matches!(sec, "ipv4" | "ipv6");
        if eth && (key == "mac-address" || key == "cloned-mac-address") {
            let sets = key == "cloned-mac-address";
            if sets && matches!(v.as_str(), "preserve" | "permanent" | "random" | "stable" | "stable-ssid") {
                continue;
            }
            if let Some(n) = text::mac_action(&v, sets, line, m, &mut ch) {
                doc.set_value(i, &n);
            }
        } else if ip && is_address_key(&key) {
            if v.contains(';') {
                ch.unknown(line, format!("old list form {key}={v} not rewritten field by field"));
                let (n, _) = text::substitute(&v, line, m, &mut ch);
                doc.set_value(i, &n);
                continue;
            }
            let (addr, gw) = match v.split_once(',') {
                Some((a, g)) => (a, Some(g)),
                None => (v.as_str(), None),
            };
            match text::address_action(addr.trim(), line, m, &mut ch) {
                AddrAction::Remove => {
                    drop.insert(i);
                }
                AddrAction::Replace(n) => {
                    let n = match gw {
                        Some(g) => format!("{n},{g}"),
                        None => n,
                    };
                    doc.set_value(i, &n);
                }
                AddrAction::Keep => {}
            }
        } else if ip && (key == "dhcp-client-id" || key == "dhcp-duid") && is_literal_id(&v) {
            drop.insert(i);
            ch.changed(line, format!("{key}={v} removed: it identifies the primary to DHCP"));
        } else {
            let (n, vip) = text::substitute(&v, line, m, &mut ch);
            if vip {
                ch.kept(line, format!("{key} mentions a VIP; left alone"));
            }
            if n != v {
                doc.set_value(i, &n);
            }
        }
    }
    let lines: Vec<_> = doc.lines.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, l)| l).collect();
    Ok(Rewritten { text: text::join(lines), changes: ch, obsolete: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = include_str!("../../tests/fixtures/netcfg/nm/private.nmconnection");

    #[test]
    fn rewrites_the_fixture() {
        let m = super::super::tests::mapping();
        let r = rewrite(FIX, &m).unwrap();
        assert!(r.text.contains("mac-address=52:54:00:00:01:01\n"), "{}", r.text);
        assert!(r.text.contains("address1=10.0.0.2/24,10.0.0.254\n"));
        assert!(r.text.contains("address1=fd00::2/64\n"));
        assert!(!r.text.contains("192.0.2.100"), "VIP removed");
        assert!(!r.text.contains("dhcp-duid=00:01"), "DUID removed");
        assert!(r.text.contains("dns=10.0.0.254;"), "DNS kept");
        assert!(r.text.contains("# Managed by the site playbook; keep the profile name.\n"));
        assert!(r.changes.refused.is_empty(), "{:?}", r.changes.refused);
        assert_eq!(rewrite(&r.text, &m).unwrap().text, r.text, "idempotent");
        assert_eq!(render(&parse(FIX).unwrap()), FIX);
    }

    #[test]
    fn unknown_static_address_is_refused() {
        let m = super::super::tests::mapping();
        let r = rewrite("[ipv4]\nmethod=manual\naddress1=10.9.9.9/24\n", &m).unwrap();
        assert_eq!(r.changes.refused.len(), 1);
        assert!(rewrite("[ipv4]\nthis is garbage\n", &m).is_err());
    }
}
