//! The INI dialects of NetworkManager keyfiles (GLib key files) and systemd unit files:
//! `[Section]` headers, `Key=Value` lines, `#` (and for systemd `;`) comments.

use super::error::{SyntaxError, SyntaxKind};
use super::text::{self, Line};

/// One parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// Blank or comment: kept byte for byte.
    Other,
    /// `[name]`.
    Section(String),
    /// `key=value`; the value's byte range in the line body, so it can be replaced in place.
    Pair { key: String, value: (usize, usize) },
    /// A continuation of the previous line (systemd's trailing backslash).
    Continued,
}

/// A parsed INI file (keyfile or networkd): its lines and what each is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub(crate) lines: Vec<Line>,
    pub(crate) items: Vec<Item>,
}

impl Doc {
    /// The value of line `i` (a `Pair`).
    pub(crate) fn value(&self, i: usize) -> &str {
        match &self.items[i] {
            Item::Pair { value: (b, e), .. } => &self.lines[i].body[*b..*e],
            _ => "",
        }
    }

    /// Replace the value of line `i`, keeping the key and surrounding spaces.
    pub(crate) fn set_value(&mut self, i: usize, new: &str) {
        if let Item::Pair { value: (b, e), .. } = &mut self.items[i] {
            let body = &mut self.lines[i].body;
            body.replace_range(*b..*e, new);
            *e = *b + new.len();
        }
    }

    /// The rendered text.
    pub fn render(&self) -> String {
        text::join(&self.lines)
    }
}

/// Parse INI text. `semicolon_comments` is systemd's dialect; `continuations` allows a trailing
/// backslash to continue a value on the next line.
pub(crate) fn parse(text: &str, semicolon_comments: bool, continuations: bool) -> Result<Doc, SyntaxError> {
    let lines = text::split(text)?;
    let mut items = Vec::with_capacity(lines.len());
    let mut in_section = false;
    let mut continued = false;
    for (n, l) in lines.iter().enumerate() {
        let t = l.body.trim();
        if continued {
            items.push(Item::Continued);
            continued = t.ends_with('\\');
            continue;
        }
        let is_comment = t.starts_with('#') || (semicolon_comments && t.starts_with(';'));
        if t.is_empty() || is_comment {
            items.push(Item::Other);
        } else if t.starts_with('[') {
            let name = t
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .filter(|n| !n.is_empty() && !n.contains(['[', ']']))
                .ok_or_else(|| SyntaxError { line: n + 1, kind: SyntaxKind::BadSection(t.to_string()) })?;
            in_section = true;
            items.push(Item::Section(name.to_string()));
        } else if let Some(eq) = l.body.find('=') {
            let key = l.body[..eq].trim();
            if key.is_empty() || key.chars().any(|c| c.is_control() || c == '[' && !key.ends_with(']')) {
                return Err(SyntaxError { line: n + 1, kind: SyntaxKind::NotKeyValue(t.to_string()) });
            }
            if !in_section {
                return Err(SyntaxError { line: n + 1, kind: SyntaxKind::OutsideSection(t.to_string()) });
            }
            let rest = &l.body[eq + 1..];
            let b = eq + 1 + (rest.len() - rest.trim_start().len());
            let e = eq + 1 + rest.trim_end().len();
            let e = e.max(b);
            items.push(Item::Pair { key: key.to_string(), value: (b, e) });
            continued = continuations && t.ends_with('\\');
        } else {
            return Err(SyntaxError { line: n + 1, kind: SyntaxKind::NotKeyValue(t.to_string()) });
        }
    }
    Ok(Doc { lines, items })
}

/// The section each line belongs to (`""` before the first header).
pub(crate) fn sections(doc: &Doc) -> Vec<String> {
    let mut cur = String::new();
    doc.items
        .iter()
        .map(|it| {
            if let Item::Section(s) = it {
                cur = s.clone();
            }
            cur.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_render_round_trip_and_values() {
        let t = "# c\n[Match]\nName = eth0 \n\n[Network]\nAddress=10.0.0.1/24\r\n";
        let mut d = parse(t, true, true).unwrap();
        assert_eq!(d.render(), t);
        assert_eq!(d.value(2), "eth0");
        d.set_value(2, "eth1");
        assert_eq!(d.lines[2].body, "Name = eth1 ");
        assert_eq!(sections(&d)[5], "Network");
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        let e = parse("[a]\nk=v\nthis is not ini\n", false, false).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(matches!(e.kind, SyntaxKind::NotKeyValue(_)));
        assert!(matches!(parse("k=v\n", false, false).unwrap_err().kind, SyntaxKind::OutsideSection(_)));
        assert!(matches!(parse("[a\n", false, false).unwrap_err().kind, SyntaxKind::BadSection(_)));
        assert!(matches!(parse("[a]\n\0\0\0", false, false).unwrap_err().kind, SyntaxKind::Binary));
    }
}
