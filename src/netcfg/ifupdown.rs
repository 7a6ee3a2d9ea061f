//! Debian ifupdown (`/etc/network/interfaces`, and what its `source` and `source-directory`
//! lines include).
//!
//! Covered: `iface` stanzas and their `address` (with or without `/prefix`; a VIP line is
//! removed, and an alias stanza `iface eth0:1` holding only VIPs is removed whole together with
//! its name on `auto`/`allow-*` lines), `hwaddress` (sets the MAC), `client` (a DHCP client id:
//! dropped), hook commands (`up`, `post-up`, …: primary addresses substituted, a line raising or
//! dropping a VIP removed); `gateway`, `netmask`, `dns-*` kept. `source`/`source-directory` are
//! listed by [`includes`] for `rewrite_tree` to follow. Not covered: `mapping` scripts' output
//! (the script is kept and reported), lines before any stanza (reported as unknown).

use std::collections::HashSet;

use super::error::SyntaxError;
use super::model::Mapping;
use super::report::{Changes, Rewritten};
use super::text::{self, AddrAction, Line};

/// One parsed line of an interfaces file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Blank or comment.
    Other,
    /// Continuation of the previous line (it ended with a backslash).
    Continued,
    /// `auto`/`allow-*` with the interface names.
    Auto(Vec<String>),
    /// `iface NAME FAMILY METHOD`.
    Iface {
        /// The logical interface name.
        name: String,
    },
    /// Another stanza keyword (`mapping`, `rename`, `no-auto-down`, `no-scripts`).
    Stanza,
    /// `source PATH` or `source-directory PATH`.
    Source {
        /// True for `source-directory`.
        directory: bool,
        /// The path as written (may hold wildcards; relative to the file's directory).
        path: String,
    },
    /// An option line inside a stanza: its key and the value's byte range.
    Option {
        /// The option name.
        key: String,
        /// Byte range of the value.
        value: (usize, usize),
        /// Whether the stanza is an `iface` (a `mapping`'s options are left alone).
        iface: bool,
    },
    /// A line outside any stanza that is no stanza keyword.
    Unknown,
}

/// A parsed interfaces file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    lines: Vec<Line>,
    items: Vec<Item>,
}

/// Parse an interfaces file (syntax only; never fails on content, only on binary data).
pub fn parse(text: &str) -> Result<Doc, SyntaxError> {
    let lines = text::split(text)?;
    let mut items = Vec::new();
    let mut stanza: Option<bool> = None; // Some(true): in iface, Some(false): in mapping
    let mut continued = false;
    for l in &lines {
        let t = l.body.trim();
        if continued {
            continued = t.ends_with('\\');
            items.push(Item::Continued);
            continue;
        }
        if t.is_empty() || t.starts_with('#') {
            items.push(Item::Other);
            continue;
        }
        continued = t.ends_with('\\');
        let mut words = t.split_whitespace();
        let first = words.next().unwrap_or_default();
        let item = match first {
            "iface" => {
                stanza = Some(true);
                Item::Iface { name: words.next().unwrap_or_default().to_string() }
            }
            "mapping" => {
                stanza = Some(false);
                Item::Stanza
            }
            "rename" | "no-auto-down" | "no-scripts" => {
                stanza = None;
                Item::Stanza
            }
            "source" | "source-directory" => {
                stanza = None;
                Item::Source { directory: first == "source-directory", path: words.collect::<Vec<_>>().join(" ") }
            }
            w if w == "auto" || w.starts_with("allow-") => {
                stanza = None;
                Item::Auto(words.map(str::to_string).collect())
            }
            key => match stanza {
                Some(iface) => {
                    let lead = l.body.len() - l.body.trim_start().len();
                    let after = &l.body[lead + key.len()..];
                    let b = lead + key.len() + (after.len() - after.trim_start().len());
                    let e = (lead + t.len()).max(b);
                    Item::Option { key: key.to_string(), value: (b, e), iface }
                }
                None => Item::Unknown,
            },
        };
        items.push(item);
    }
    Ok(Doc { lines, items })
}

/// Render a parsed interfaces file back to text.
pub fn render(doc: &Doc) -> String {
    text::join(&doc.lines)
}

/// The `source` (false) and `source-directory` (true) paths of a file, in order.
pub fn includes(text: &str) -> Result<Vec<(bool, String)>, SyntaxError> {
    Ok(parse(text)?
        .items
        .into_iter()
        .filter_map(|i| match i {
            Item::Source { directory, path } => Some((directory, path)),
            _ => None,
        })
        .collect())
}

const HOOKS: [&str; 6] = ["up", "down", "pre-up", "post-up", "pre-down", "post-down"];

/// Rewrite an interfaces file for the standby.
pub fn rewrite(text: &str, m: &Mapping) -> Result<Rewritten, SyntaxError> {
    let mut doc = parse(text)?;
    let mut ch = Changes::default();
    let n = doc.lines.len();
    let mut drop: HashSet<usize> = HashSet::new();

    // Pass 1: alias stanzas whose addresses are all VIPs go whole.
    let mut dropped: Vec<String> = Vec::new();
    let mut i = 0;
    while i < n {
        if let Item::Iface { name } = &doc.items[i]
            && name.contains(':')
        {
            let mut j = i + 1;
            let mut addrs = Vec::new();
            while j < n && matches!(doc.items[j], Item::Option { .. } | Item::Continued | Item::Other) {
                if let Item::Option { key, value: (b, e), .. } = &doc.items[j]
                    && key == "address"
                {
                    addrs.push(doc.lines[j].body[*b..*e].to_string());
                }
                j += 1;
            }
            let is_vip = |a: &String| a.split('/').next().and_then(|s| s.parse().ok()).is_some_and(|ip| m.is_vip(ip));
            if !addrs.is_empty() && addrs.iter().all(is_vip) {
                ch.changed(i + 1, format!("alias stanza {name} holding VIP {} removed", addrs.join(", ")));
                dropped.push(name.clone());
                for k in i..j {
                    if !matches!(doc.items[k], Item::Other) {
                        drop.insert(k);
                    }
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }

    // Pass 2: line by line.
    for i in 0..n {
        if drop.contains(&i) {
            continue;
        }
        let line = i + 1;
        match doc.items[i].clone() {
            Item::Auto(names) => {
                if names.iter().any(|x| dropped.contains(x)) {
                    let body = &doc.lines[i].body;
                    let kw = body.split_whitespace().next().unwrap_or("auto").to_string();
                    let left: Vec<&String> = names.iter().filter(|x| !dropped.contains(x)).collect();
                    if left.is_empty() {
                        drop.insert(i);
                    } else {
                        let lead = &body[..body.len() - body.trim_start().len()];
                        let mut nb = format!("{lead}{kw}");
                        for x in left {
                            nb.push(' ');
                            nb.push_str(x);
                        }
                        doc.lines[i].body = nb;
                    }
                    ch.changed(line, "removed alias names from the auto line");
                }
            }
            Item::Option { key, value: (b, e), iface } => {
                let v = doc.lines[i].body[b..e].to_string();
                let set = |doc: &mut Doc, new: &str| doc.lines[i].body.replace_range(b..e, new);
                if !iface {
                    ch.kept(line, format!("mapping option {key} left alone"));
                    continue;
                }
                match key.as_str() {
                    "address" => match text::address_action(&v, line, m, &mut ch) {
                        AddrAction::Remove => {
                            drop.insert(i);
                        }
                        AddrAction::Replace(new) => set(&mut doc, &new),
                        AddrAction::Keep => {}
                    },
                    "hwaddress" => {
                        let (pre, mac) = match v.rsplit_once(char::is_whitespace) {
                            Some((p, mac)) => (format!("{p} "), mac.to_string()),
                            None => (String::new(), v.clone()),
                        };
                        if let Some(new) = text::mac_action(&mac, true, line, m, &mut ch) {
                            set(&mut doc, &format!("{pre}{new}"));
                        }
                    }
                    "client" => {
                        drop.insert(i);
                        ch.changed(line, format!("client {v} removed: a DHCP client id of the primary"));
                    }
                    k => {
                        let (new, vip) = text::substitute(&v, line, m, &mut ch);
                        if vip && HOOKS.contains(&k) {
                            drop.insert(i);
                            ch.changed(
                                line,
                                format!("{k} hook handling a VIP removed: only the failover service raises it"),
                            );
                        } else {
                            if vip {
                                ch.kept(line, format!("{k} mentions a VIP; left alone"));
                            }
                            if new != v {
                                set(&mut doc, &new);
                            }
                        }
                    }
                }
            }
            Item::Continued => {
                let body = doc.lines[i].body.clone();
                let (new, vip) = text::substitute(&body, line, m, &mut ch);
                if vip {
                    ch.kept(line, "continued line mentions a VIP; left alone");
                }
                doc.lines[i].body = new;
            }
            Item::Unknown => {
                ch.unknown(line, format!("not a stanza: {:?}; left alone", doc.lines[i].body.trim()));
                let mut scratch = Changes::default();
                text::substitute(&doc.lines[i].body, line, m, &mut scratch);
                if !scratch.changed.is_empty() || !scratch.refused.is_empty() {
                    ch.refused(line, "an unknown line mentions a primary address or MAC");
                }
            }
            Item::Stanza => {
                if doc.lines[i].body.trim_start().starts_with("mapping") {
                    ch.unknown(line, "mapping stanza: its script's choices are not rewritten");
                }
            }
            Item::Iface { .. } | Item::Source { .. } | Item::Other => {}
        }
    }
    let lines: Vec<_> = doc.lines.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, l)| l).collect();
    Ok(Rewritten { text: text::join(lines), changes: ch, obsolete: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = include_str!("../../tests/fixtures/netcfg/ifupdown/interfaces");
    const PUBLIC: &str = include_str!("../../tests/fixtures/netcfg/ifupdown/interfaces.d/public");

    #[test]
    fn rewrites_the_main_file() {
        let m = super::super::tests::mapping();
        let r = rewrite(MAIN, &m).unwrap();
        assert!(r.text.contains("\taddress 10.0.0.2/24\n"), "{}", r.text);
        assert!(r.text.contains("\thwaddress ether 52:54:00:00:01:01\n"));
        assert!(r.text.contains("\tgateway 10.0.0.254\n"));
        assert!(r.text.contains("    address fd00::2/64\n"));
        assert!(r.text.contains("# The loopback network interface\n"));
        assert!(r.text.contains("source /etc/network/interfaces.d/*\n"));
        assert!(!r.text.contains("client 01:52"));
        assert!(r.changes.refused.is_empty(), "{:?}", r.changes.refused);
        assert!(r.changes.unknown.iter().any(|n| n.what.contains("mapping")));
        assert_eq!(rewrite(&r.text, &m).unwrap().text, r.text, "idempotent");
        assert_eq!(render(&parse(MAIN).unwrap()), MAIN);
        assert_eq!(includes(MAIN).unwrap(), vec![(false, "/etc/network/interfaces.d/*".to_string())]);
    }

    #[test]
    fn removes_the_vip_alias_and_hooks() {
        let m = super::super::tests::mapping();
        let r = rewrite(PUBLIC, &m).unwrap();
        assert!(!r.text.contains("192.0.2.100"), "{}", r.text);
        assert!(!r.text.contains("eth1:0"), "{}", r.text);
        assert!(r.text.contains("auto eth1\n"));
        assert!(r.text.contains("address 192.0.2.11\n"));
        assert!(r.text.contains("# VIP alias: raised by hand before understudy.\n"), "comments kept");
        assert!(r.changes.changed.iter().any(|n| n.what.contains("alias stanza")));
        assert_eq!(rewrite(&r.text, &m).unwrap().text, r.text, "idempotent");
    }

    #[test]
    fn unknown_line_with_a_primary_address_is_refused() {
        let m = super::super::tests::mapping();
        let r = rewrite("frobnicate 10.0.0.1\niface eth0 inet dhcp\n", &m).unwrap();
        assert_eq!(r.changes.unknown.len(), 1);
        assert_eq!(r.changes.refused.len(), 1);
        assert_eq!(r.text, "frobnicate 10.0.0.1\niface eth0 inet dhcp\n");
    }
}
