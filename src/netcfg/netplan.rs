//! Ubuntu netplan YAML (`/etc/netplan/*.yaml`), edited line by line so comments, order and
//! layout stay byte for byte.
//!
//! The editor understands the block-style YAML netplan and cloud-init write: nested mappings,
//! block sequences (compact or indented), one-line flow sequences (`[a, b]`), quoted and plain
//! scalars, comments. Covered: `<device>.match.macaddress` (a match), `<device>.macaddress`
//! (sets the MAC), `<device>.addresses` (block or flow; a VIP is removed, with its `lifetime`/
//! `label` options), routes' `from`/`via` (primary addresses substituted); `set-name`,
//! `nameservers`, `gateway4/6` kept. Anchors, aliases, tags, flow mappings and block scalars are
//! reported as unknown and kept. Syntax errors (tabs in indentation, an unterminated quote or
//! flow sequence, a line that is not `key: value`, indentation under a scalar) are errors: a
//! truncated file fails instead of being half-edited.

use std::collections::HashSet;

use super::error::{SyntaxError, SyntaxKind};
use super::model::Mapping;
use super::report::{Changes, Rewritten};
use super::text::{self, AddrAction, Line};

const DEVICE_TYPES: [&str; 8] = ["ethernets", "bonds", "bridges", "vlans", "wifis", "tunnels", "vrfs", "modems"];

/// One parsed YAML line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Blank, comment, or inside a block scalar.
    Other,
    /// A document marker or something else kept but not interpreted.
    Unknown,
    /// A mapping entry or sequence item: the path of keys to it (`-` for a sequence item), and
    /// the byte range of its scalar value (empty when it opens a block).
    Node {
        /// Keys from the root; `-` marks a sequence item.
        path: Vec<String>,
        /// Byte range of the value in the line (without comment).
        value: (usize, usize),
        /// Indentation of the line (of the `-` for items).
        indent: usize,
    },
}

/// A parsed netplan file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    lines: Vec<Line>,
    items: Vec<Item>,
}

/// End of the content before a comment, checking quotes; None if a quote is unterminated.
fn content_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        match quote {
            Some('\'') if c == '\'' => {
                if b.get(i + 1) == Some(&b'\'') {
                    i += 1;
                } else {
                    quote = None;
                }
            }
            Some('"') if c == '\\' => i += 1,
            Some('"') if c == '"' => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && prev_space => quote = Some(c),
            None if c == '#' && prev_space => return Some(s[..i].trim_end().len()),
            None => {}
        }
        prev_space = c == ' ' || c == '[' || c == ',' || c == '{' || c == '-' || c == ':';
        i += 1;
    }
    if quote.is_some() { None } else { Some(s.trim_end().len()) }
}

/// Split `key: value` at the first `: ` (or trailing `:`) outside quotes.
fn split_key(s: &str) -> Option<(&str, usize)> {
    let mut quote: Option<char> = None;
    let b = s.as_bytes();
    for i in 0..b.len() {
        let c = b[i] as char;
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && i == 0 => quote = Some(c),
            None if c == ':' && (i + 1 == b.len() || b[i + 1] == b' ') => return Some((&s[..i], i + 1)),
            None => {}
        }
    }
    None
}

struct Frame {
    indent: usize,
    key: String,
    scalar: bool,
}

/// Parse a netplan file (its structure, not its meaning).
pub fn parse(text: &str) -> Result<Doc, SyntaxError> {
    let lines = text::split(text)?;
    let mut items = Vec::with_capacity(lines.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut block_scalar: Option<usize> = None;
    for (n, l) in lines.iter().enumerate() {
        let err = |kind| SyntaxError { line: n + 1, kind };
        let body = l.body.as_str();
        let indent = body.len() - body.trim_start_matches(' ').len();
        let rest = &body[indent..];
        if let Some(b) = block_scalar {
            if rest.trim().is_empty() || indent > b {
                items.push(Item::Other);
                continue;
            }
            block_scalar = None;
        }
        if rest.starts_with('\t') {
            return Err(err(SyntaxKind::TabIndent));
        }
        let end = content_end(rest).ok_or_else(|| err(SyntaxKind::UnterminatedQuote))?;
        let content = &rest[..end];
        if content.is_empty() {
            items.push(Item::Other);
            continue;
        }
        if content == "---" || content == "..." || content.starts_with('%') {
            items.push(Item::Unknown);
            continue;
        }
        // Sequence items: `- value` or `- key: value`.
        let (item, mut col, mut s) = match content.strip_prefix('-') {
            Some(r) if r.is_empty() || r.starts_with(' ') => {
                let skip = 1 + (r.len() - r.trim_start().len());
                (true, indent + skip, &content[skip..])
            }
            _ => (false, indent, content),
        };
        if item {
            while stack.last().is_some_and(|f| f.indent > indent || (f.indent == indent && f.key == "-")) {
                stack.pop();
            }
            if stack.last().is_some_and(|f| f.scalar) {
                return Err(err(SyntaxKind::BadIndent(content.to_string())));
            }
            let scalar = !s.is_empty() && split_key(s).is_none();
            stack.push(Frame { indent, key: "-".into(), scalar });
            if scalar || s.is_empty() {
                let path = stack.iter().map(|f| f.key.clone()).collect();
                let b = indent + (content.len() - s.len());
                items.push(Item::Node { path, value: (b, b + s.len()), indent });
                check_flow(s).map_err(err)?;
                if is_block_scalar(s) {
                    block_scalar = Some(indent);
                }
                continue;
            }
        }
        let Some((key, after)) = split_key(s) else {
            return Err(err(SyntaxKind::NotKeyValue(content.to_string())));
        };
        let key_col = col;
        while stack.last().is_some_and(|f| f.indent >= key_col && !(item && f.key == "-" && f.indent == indent)) {
            stack.pop();
        }
        if stack.last().is_some_and(|f| f.scalar) {
            return Err(err(SyntaxKind::BadIndent(content.to_string())));
        }
        let v = &s[after..];
        let vstart = after + (v.len() - v.trim_start().len());
        col = key_col;
        s = &s[vstart..];
        let (k, _) = text::unquote(key.trim());
        stack.push(Frame { indent: key_col, key: k.to_string(), scalar: !s.is_empty() });
        let path = stack.iter().map(|f| f.key.clone()).collect();
        let b = col + vstart;
        items.push(Item::Node { path, value: (b, b + s.len()), indent });
        check_flow(s).map_err(err)?;
        if is_block_scalar(s) {
            block_scalar = Some(indent);
        }
    }
    Ok(Doc { lines, items })
}

fn is_block_scalar(s: &str) -> bool {
    s.starts_with('|') || s.starts_with('>')
}

fn check_flow(s: &str) -> Result<(), SyntaxKind> {
    if (s.starts_with('[') && !s.ends_with(']')) || (s.starts_with('{') && !s.ends_with('}')) {
        return Err(SyntaxKind::UnterminatedFlow);
    }
    Ok(())
}

/// Render a parsed netplan file back to text.
pub fn render(doc: &Doc) -> String {
    text::join(&doc.lines)
}

/// Rewrite a netplan file for the standby.
pub fn rewrite(text: &str, m: &Mapping) -> Result<Rewritten, SyntaxError> {
    let mut doc = parse(text)?;
    let mut ch = Changes::default();
    let n = doc.lines.len();
    let mut drop: HashSet<usize> = HashSet::new();
    let mut i = 0;
    while i < n {
        let line = i + 1;
        let Item::Node { path, value: (b, e), indent } = doc.items[i].clone() else {
            if doc.items[i] == Item::Unknown {
                ch.unknown(line, format!("{:?} not interpreted; kept", doc.lines[i].body.trim()));
            }
            i += 1;
            continue;
        };
        let raw = doc.lines[i].body[b..e].to_string();
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let in_device = p.len() >= 3 && p[0] == "network" && DEVICE_TYPES.contains(&p[1]);
        if p.len() == 2 && p[0] == "network" && !DEVICE_TYPES.contains(&p[1]) && !matches!(p[1], "version" | "renderer")
        {
            ch.unknown(line, format!("network.{} not interpreted; kept", p[1]));
        }
        if raw.starts_with(['&', '*', '!', '{', '|', '>']) {
            ch.unknown(line, format!("YAML construct {raw:?} not interpreted; kept"));
            let mut scratch = Changes::default();
            text::substitute(&raw, line, m, &mut scratch);
            if !scratch.changed.is_empty() || !scratch.refused.is_empty() {
                ch.refused(line, "an uninterpreted YAML construct mentions a primary address or MAC");
            }
            i += 1;
            continue;
        }
        let (v, q) = text::unquote(&raw);
        let v = v.to_string();
        let set = |doc: &mut Doc, new: &str| doc.lines[i].body.replace_range(b..e, new);
        let tail = if in_device { &p[3..] } else { &[][..] };
        match tail {
            ["match", "macaddress"] | ["macaddress"] => {
                if let Some(new) = text::mac_action(&v, tail.len() == 1, line, m, &mut ch) {
                    set(&mut doc, &text::requote(&new, q));
                }
            }
            ["addresses"] if q.is_none() && v.starts_with('[') => {
                let inner = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or_default();
                let mut out = Vec::new();
                for el in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let (a, eq) = text::unquote(el);
                    match text::address_action(a, line, m, &mut ch) {
                        AddrAction::Remove => {}
                        AddrAction::Replace(new) => out.push(text::requote(&new, eq)),
                        AddrAction::Keep => out.push(el.to_string()),
                    }
                }
                let new = format!("[{}]", out.join(", "));
                if new != v {
                    set(&mut doc, &text::requote(&new, q));
                }
            }
            ["addresses", "-"] | ["addresses", "-", _] => {
                // `- 10.0.0.1/24` or `- 10.0.0.1/24:` with lifetime/label options below it.
                let addr = if tail.len() == 3 { tail[2].to_string() } else { v.clone() };
                if tail.len() == 3 && !v.is_empty() {
                    i += 1;
                    continue;
                }
                match text::address_action(&addr, line, m, &mut ch) {
                    AddrAction::Remove => {
                        drop.insert(i);
                        let mut j = i + 1;
                        while j < n && sub_of(&doc, j, indent) {
                            drop.insert(j);
                            j += 1;
                        }
                        i = j;
                        continue;
                    }
                    AddrAction::Replace(new) if tail.len() == 2 => set(&mut doc, &text::requote(&new, q)),
                    AddrAction::Replace(new) => {
                        let body = doc.lines[i].body.clone();
                        doc.lines[i].body = body.replacen(&addr, &new, 1);
                    }
                    AddrAction::Keep => {}
                }
            }
            ["nameservers", ..] | ["set-name"] | ["dhcp-identifier"] => {}
            _ if v.is_empty() => {}
            _ => {
                let (new, vip) = text::substitute(&v, line, m, &mut ch);
                if vip {
                    ch.kept(line, format!("{} mentions a VIP; left alone", p.join(".")));
                }
                if new != v {
                    set(&mut doc, &text::requote(&new, q));
                }
            }
        }
        i += 1;
    }
    let lines: Vec<_> = doc.lines.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, l)| l).collect();
    Ok(Rewritten { text: text::join(lines), changes: ch, obsolete: false })
}

/// Whether line `j` belongs under a sequence item at `indent` (deeper, or blank/comment).
fn sub_of(doc: &Doc, j: usize, indent: usize) -> bool {
    match &doc.items[j] {
        Item::Node { indent: k, .. } => *k > indent,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = include_str!("../../tests/fixtures/netcfg/netplan/50-cloud-init.yaml");

    #[test]
    fn rewrites_the_fixture() {
        let m = super::super::tests::mapping();
        let r = rewrite(FIX, &m).unwrap();
        let t = &r.text;
        assert!(t.contains("        macaddress: \"52:54:00:00:01:01\"\n"), "{t}");
        assert!(t.contains("      set-name: priv0\n"));
        assert!(t.contains("        - 10.0.0.2/24\n"));
        assert!(t.contains("      addresses: [192.0.2.11/24]\n"), "{t}");
        assert!(t.contains("        - \"fd00::2/64\":\n"), "{t}");
        assert!(t.contains("        addresses: [10.0.0.254, 1.1.1.1]\n"), "DNS kept");
        assert!(t.contains("# This file is generated from information provided by the datasource."));
        assert!(t.contains("          from: 10.0.0.2\n"));
        assert!(!t.contains("192.0.2.100"));
        assert!(!t.contains("label: \"priv0:vip\""), "the VIP's options went with it");
        assert!(r.changes.refused.is_empty(), "{:?}", r.changes.refused);
        assert_eq!(rewrite(t, &m).unwrap().text, *t, "idempotent");
        assert_eq!(render(&parse(FIX).unwrap()), FIX);
    }

    #[test]
    fn truncated_and_garbage_yaml_are_errors() {
        let m = super::super::tests::mapping();
        let cut = "network:\n  ethernets:\n    eth0:\n      addresses: [10.0.0.1/24,\n";
        assert_eq!(rewrite(cut, &m).unwrap_err().kind, SyntaxKind::UnterminatedFlow);
        let cut = "network:\n  ethernets:\n    eth0:\n      match:\n        macaddress: \"52:54:00:00\n";
        assert_eq!(rewrite(cut, &m).unwrap_err().kind, SyntaxKind::UnterminatedQuote);
        assert_eq!(rewrite("network:\n\tversion: 2\n", &m).unwrap_err().kind, SyntaxKind::TabIndent);
        let e = rewrite("network:\n  version: 2\n  ethern", &m).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(matches!(rewrite("a: 1\n  b: 2\n", &m).unwrap_err().kind, SyntaxKind::BadIndent(_)));
    }

    #[test]
    fn unknown_constructs_are_reported() {
        let m = super::super::tests::mapping();
        let t = "network:\n  version: 2\n  ethernets:\n    eth0: {addresses: [10.0.0.1/24]}\n";
        let r = rewrite(t, &m).unwrap();
        assert_eq!(r.text, t);
        assert_eq!(r.changes.unknown.len(), 1);
        assert_eq!(r.changes.refused.len(), 1, "a primary address it could not rewrite");
    }
}
