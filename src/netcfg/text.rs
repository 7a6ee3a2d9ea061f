//! Line handling shared by the parsers: lines keep their own ends so rendering is byte-exact.

use std::net::IpAddr;

use super::error::{SyntaxError, SyntaxKind};
use super::model::{AddrFate, Mac, Mapping};
use super::report::Changes;

/// One physical line: its text and its end (`"\n"`, `"\r\n"`, or `""` on a last line without one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub body: String,
    pub eol: String,
}

/// Split text into lines keeping line ends; refuses binary data.
pub(crate) fn split(text: &str) -> Result<Vec<Line>, SyntaxError> {
    if let Some(pos) = text.find('\0') {
        let line = text[..pos].matches('\n').count() + 1;
        return Err(SyntaxError { line, kind: SyntaxKind::Binary });
    }
    Ok(text
        .split_inclusive('\n')
        .map(|l| {
            let (body, eol) = if let Some(b) = l.strip_suffix("\r\n") {
                (b, "\r\n")
            } else if let Some(b) = l.strip_suffix('\n') {
                (b, "\n")
            } else {
                (l, "")
            };
            Line { body: body.to_string(), eol: eol.to_string() }
        })
        .collect())
}

/// Render lines back into text.
pub(crate) fn join<'a>(lines: impl IntoIterator<Item = &'a Line>) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(&l.body);
        s.push_str(&l.eol);
    }
    s
}

/// The byte range of a maximal run of address-ish characters starting at each position.
fn tokens(s: &str) -> Vec<(usize, usize)> {
    let ok = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.' || c == '-';
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (ok(c), start) {
            (true, None) => start = Some(i),
            (false, Some(b)) => {
                out.push((b, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(b) = start {
        out.push((b, s.len()));
    }
    out
}

/// Parse a token as an IP address, allowing trailing `.`/`:`/`-` punctuation around it.
fn as_ip(t: &str) -> Option<IpAddr> {
    t.parse().ok().or_else(|| t.trim_matches(|c| c == '.' || c == '-' || c == ':').parse().ok())
}

/// Replace in free text (a hook command, an option nobody models) every primary address with
/// the standby's and every primary MAC with the standby's. A primary address with no standby
/// counterpart is refused; a VIP is reported as left alone (the caller decides to drop it).
/// Returns the new text and whether a VIP appears in it.
pub(crate) fn substitute(s: &str, line: usize, m: &Mapping, ch: &mut Changes) -> (String, bool) {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut vip = false;
    for (b, e) in tokens(s) {
        let t = &s[b..e];
        let trimmed = t.trim_matches(|c| c == '.' || c == '-' || c == ':');
        let off = b + t.find(trimmed).unwrap_or(0);
        let replacement = if let Ok(mac) = trimmed.parse::<Mac>() {
            m.mac(mac).map(|n| (n.styled_like(trimmed), format!("MAC {trimmed} → {n}")))
        } else if let Some(ip) = as_ip(t) {
            match m.address(ip) {
                AddrFate::Mapped(c) => Some((c.addr.to_string(), format!("address {ip} → {}", c.addr))),
                AddrFate::Unmapped => {
                    ch.refused(line, format!("primary address {ip} has no standby counterpart"));
                    None
                }
                AddrFate::Vip => {
                    vip = true;
                    None
                }
                AddrFate::Foreign => None,
            }
        } else {
            None
        };
        if let Some((new, what)) = replacement {
            out.push_str(&s[last..off]);
            out.push_str(&new);
            last = off + trimmed.len();
            ch.changed(line, what);
        }
    }
    out.push_str(&s[last..]);
    (out, vip)
}

/// Strip matching surrounding quotes; returns (inner, quote char if any).
pub(crate) fn unquote(v: &str) -> (&str, Option<char>) {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return (&v[1..v.len() - 1], Some(q));
        }
    }
    (v, None)
}

/// Put `v` back in the quotes it had.
pub(crate) fn requote(v: &str, q: Option<char>) -> String {
    match q {
        Some(q) => format!("{q}{v}{q}"),
        None => v.to_string(),
    }
}

/// Loopback addresses are the same on every machine: never a clash.
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_are_exact() {
        for t in ["a\nb\r\nc", "", "x\n", "\n\n"] {
            assert_eq!(join(&split(t).unwrap()), t);
        }
        assert_eq!(split("a\nb\0").unwrap_err(), SyntaxError { line: 2, kind: SyntaxKind::Binary });
    }

    #[test]
    fn substitute_maps_addresses_and_macs_and_flags_vips() {
        let m = super::super::tests::mapping();
        let mut ch = Changes::default();
        let (s, vip) = substitute("ip addr add 10.0.0.1/24 dev eth0; ether 52:54:00:00:00:01.", 3, &m, &mut ch);
        assert_eq!(s, "ip addr add 10.0.0.2/24 dev eth0; ether 52:54:00:00:01:01.");
        assert!(!vip);
        assert_eq!(ch.changed.len(), 2);
        let (_, vip) = substitute("ip addr add 192.0.2.100/24 dev eth1", 4, &m, &mut ch);
        assert!(vip);
        let (s, _) = substitute("ping 10.0.0.9", 5, &m, &mut ch);
        assert_eq!(s, "ping 10.0.0.9");
        assert_eq!(ch.refused.len(), 1);
    }
}

/// What to do with a statically configured address value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AddrAction {
    /// Write this instead.
    Replace(String),
    /// Remove it (a VIP).
    Remove,
    /// Leave it as it is.
    Keep,
}

/// Decide the fate of `v` (`10.0.0.1/24` or `10.0.0.1`), a static address of this node, and note
/// it. A static address the mapping does not know is one the primary holds: refused.
pub(crate) fn address_action(v: &str, line: usize, m: &Mapping, ch: &mut Changes) -> AddrAction {
    let (ip_part, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let Ok(ip) = ip_part.parse::<IpAddr>() else {
        ch.unknown(line, format!("address value {v:?} not understood; left alone"));
        let mut scratch = Changes::default();
        substitute(v, line, m, &mut scratch);
        if !scratch.changed.is_empty() || !scratch.refused.is_empty() {
            ch.refused(line, format!("{v:?} holds a primary address in a form not understood"));
        }
        return AddrAction::Keep;
    };
    match m.address(ip) {
        AddrFate::Vip => {
            ch.changed(line, format!("VIP {ip} removed: only the failover service raises it"));
            AddrAction::Remove
        }
        AddrFate::Mapped(c) => {
            let new = match prefix {
                Some(_) => c.to_string(),
                None => c.addr.to_string(),
            };
            ch.changed(line, format!("address {v} → {new}"));
            AddrAction::Replace(new)
        }
        AddrFate::Unmapped => {
            ch.refused(line, format!("primary address {ip} has no standby counterpart"));
            AddrAction::Keep
        }
        AddrFate::Foreign if is_loopback(ip) || m.is_standby_address(ip) => AddrAction::Keep,
        AddrFate::Foreign if matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) => {
            ch.kept(line, format!("link-local address {ip} kept"));
            AddrAction::Keep
        }
        AddrFate::Foreign => {
            ch.refused(line, format!("static address {ip} is not in the mapping: the primary holds it"));
            AddrAction::Keep
        }
    }
}

/// Decide the fate of a MAC value. `sets` is true when the key assigns the MAC to the device
/// (an unknown one then clashes with the primary's); false when it only matches a device.
pub(crate) fn mac_action(v: &str, sets: bool, line: usize, m: &Mapping, ch: &mut Changes) -> Option<String> {
    let Ok(mac) = v.parse::<Mac>() else {
        ch.unknown(line, format!("MAC value {v:?} not understood; left alone"));
        return None;
    };
    if let Some(n) = m.mac(mac) {
        ch.changed(line, format!("MAC {v} → {n}"));
        return Some(n.styled_like(v));
    }
    if m.is_standby_mac(mac) {
        return None;
    }
    if sets {
        ch.refused(line, format!("sets MAC {v}, which the mapping does not know: it would clash with the primary"));
    } else {
        ch.kept(line, format!("matches MAC {v}, which the mapping does not know; left alone"));
    }
    None
}

/// Reasons a text this module could not parse must not boot as is: each line holding a primary
/// address or a VIP (the standby would take it).
pub(crate) fn scan_raw(text: &str, m: &Mapping) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        for (b, e) in tokens(l) {
            let Some(ip) = as_ip(&l[b..e]) else { continue };
            let why = match m.address(ip) {
                AddrFate::Vip => format!("holds VIP {ip} and could not be rewritten"),
                AddrFate::Mapped(_) | AddrFate::Unmapped => {
                    format!("holds primary address {ip} and could not be rewritten")
                }
                AddrFate::Foreign => continue,
            };
            out.push((n + 1, why));
        }
    }
    out
}
