//! Names and addresses as the inventory accepts them: image and node names, image
//! references (`NAME`, `NAME@N`), MAC and IP addresses. Plain functions; each error says
//! what is allowed.

use std::net::IpAddr;

/// What a name may be, for messages.
pub const NAME_RULE: &str = "use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'";

/// A value the inventory does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A bad image name or reference.
    #[error("invalid image name {0:?}: {NAME_RULE}")]
    Image(String),
    /// A bad image reference (`NAME@N` with a bad N).
    #[error("invalid image reference {0:?}: use NAME, NAME@N (N from 1) or an id of 8-64 hex digits")]
    ImageRef(String),
    /// A bad node name.
    #[error("invalid node name {0:?}: {NAME_RULE}")]
    Node(String),
    /// A bad MAC address.
    #[error("invalid MAC address {0:?}: use six hex pairs such as 52:54:00:12:34:56 (':', '-' or no separators)")]
    Mac(String),
    /// A group (multicast or broadcast) MAC.
    #[error("MAC address {0:?} is a multicast address: no network card owns one")]
    MulticastMac(String),
    /// A bad IP address.
    #[error("invalid IP address {0:?}: use an IPv4 (10.0.0.5) or IPv6 (fd00::5) address")]
    Ip(String),
    /// An IP no node can hold.
    #[error("IP address {0:?} cannot belong to a node (unspecified or multicast)")]
    UnusableIp(String),
}

/// Is `name` a valid image or node name?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Check an image name.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if valid_name(name) { Ok(()) } else { Err(NameError::Image(name.into())) }
}

/// Check a node name.
pub fn check_node_name(name: &str) -> Result<(), NameError> {
    if valid_name(name) { Ok(()) } else { Err(NameError::Node(name.into())) }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `NAME` (newest) or `NAME@N`.
    Name(String, Option<i64>),
}

/// Parse `NAME` or `NAME@N`; an id prefix is tried by the inventory when no image has
/// that name.
pub fn parse_ref(s: &str) -> Result<ImageRef, NameError> {
    match s.rsplit_once('@') {
        Some((n, v)) => {
            check_name(n)?;
            let v: i64 = v.parse().map_err(|_| NameError::ImageRef(s.into()))?;
            if v < 1 {
                return Err(NameError::ImageRef(s.into()));
            }
            Ok(ImageRef::Name(n.into(), Some(v)))
        }
        None => {
            check_name(s)?;
            Ok(ImageRef::Name(s.into(), None))
        }
    }
}

/// Could `s` be a manifest id prefix (8 to 64 hex digits)?
pub fn is_hex_prefix(s: &str) -> bool {
    s.len() >= 8 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Normalise a MAC address to lowercase `aa:bb:cc:dd:ee:ff`; accepts `:`, `-` or no
/// separators.
pub fn normalize_mac(s: &str) -> Result<String, NameError> {
    let hex: String = s.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(NameError::Mac(s.into()));
    }
    let b = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).map(|i| &b[i * 2..i * 2 + 2]).collect();
    let mac = parts.join(":");
    // Broadcast and multicast addresses have the group bit set; no NIC owns one.
    if u8::from_str_radix(parts[0], 16).is_ok_and(|o| o & 1 == 1) {
        return Err(NameError::MulticastMac(s.into()));
    }
    Ok(mac)
}

/// Check and normalise an IP address.
pub fn normalize_ip(s: &str) -> Result<String, NameError> {
    let ip: IpAddr = s.trim().parse().map_err(|_| NameError::Ip(s.into()))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(NameError::UnusableIp(s.into()));
    }
    Ok(ip.to_string())
}

/// Normalise a list; the same address given twice (in any spelling) counts once.
pub fn normalize_list(items: &[String], f: fn(&str) -> Result<String, NameError>) -> Result<Vec<String>, NameError> {
    let mut out: Vec<String> = items.iter().map(|i| f(i)).collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["head-a", "a", "x.y_z-1", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", "é", &"a".repeat(65), "a\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_node_name("s p").unwrap_err().to_string(),
            "invalid node name \"s p\": use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        );
    }

    #[test]
    fn refs() {
        assert_eq!(parse_ref("head-a").unwrap(), ImageRef::Name("head-a".into(), None));
        assert_eq!(parse_ref("head-a@3").unwrap(), ImageRef::Name("head-a".into(), Some(3)));
        assert!(parse_ref("head-a@0").is_err());
        assert!(parse_ref("head-a@x").is_err());
        assert!(parse_ref("../x@1").is_err());
        assert!(is_hex_prefix("deadbeef") && !is_hex_prefix("deadbee") && !is_hex_prefix("head-a00"));
    }

    #[test]
    fn macs() {
        assert_eq!(normalize_mac("52:54:00:AB:cd:01").unwrap(), "52:54:00:ab:cd:01");
        assert_eq!(normalize_mac("52-54-00-ab-cd-01").unwrap(), "52:54:00:ab:cd:01");
        assert_eq!(normalize_mac("525400abcd01").unwrap(), "52:54:00:ab:cd:01");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "zz:54:00:ab:cd:01",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "52:54:00:ab:cd:01:02",
        ] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
        assert!(normalize_mac("52:54:00:12:34").unwrap_err().to_string().contains("six hex pairs"));
    }

    #[test]
    fn ips() {
        assert_eq!(normalize_ip("10.0.0.5").unwrap(), "10.0.0.5");
        assert!(normalize_ip("10.0.0.256").is_err());
        assert!(normalize_ip("0.0.0.0").is_err());
        assert_eq!(
            normalize_list(&["10.0.0.2".into(), "10.0.0.1".into(), "10.0.0.2".into()], normalize_ip).unwrap(),
            vec!["10.0.0.1", "10.0.0.2"]
        );
        assert!(normalize_list(&["10.0.0.1".into(), "x".into()], normalize_ip).is_err());
    }
}
