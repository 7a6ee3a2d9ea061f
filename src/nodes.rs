//! Node rules as plain functions: names, MAC and IP syntax, roles and states.

use std::net::IpAddr;

/// Node roles.
pub const ROLES: &[&str] = &["standby", "compute"];
/// Node states, in their usual order.
pub const STATES: &[&str] = &["discovered", "assigned", "deploying", "deployed", "failed"];

/// Normalise a MAC address to lowercase `aa:bb:cc:dd:ee:ff`; accepts `:`, `-` or no
/// separators.
pub fn normalize_mac(s: &str) -> Result<String, String> {
    let hex: String = s.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("invalid MAC address {s:?}"));
    }
    let b = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).map(|i| &b[i * 2..i * 2 + 2]).collect();
    let mac = parts.join(":");
    // Broadcast and multicast addresses have the group bit set; no NIC owns one.
    if u8::from_str_radix(parts[0], 16).is_ok_and(|o| o & 1 == 1) {
        return Err(format!("MAC address {s:?} is a multicast address"));
    }
    Ok(mac)
}

/// Check and normalise an IP address.
pub fn normalize_ip(s: &str) -> Result<String, String> {
    let ip: IpAddr = s.trim().parse().map_err(|_| format!("invalid IP address {s:?}"))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("IP address {s:?} cannot belong to a node"));
    }
    Ok(ip.to_string())
}

/// Check a role.
pub fn check_role(r: &str) -> Result<(), String> {
    if ROLES.contains(&r) { Ok(()) } else { Err(format!("invalid role {r:?}: use standby or compute")) }
}

/// Check a state.
pub fn check_state(s: &str) -> Result<(), String> {
    if STATES.contains(&s) { Ok(()) } else { Err(format!("invalid state {s:?}: use one of {}", STATES.join(", "))) }
}

/// Normalise a list; the same address given twice (in any spelling) counts once.
pub fn normalize_list(items: &[String], f: fn(&str) -> Result<String, String>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = items.iter().map(|i| f(i)).collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn ips_roles_states() {
        assert_eq!(normalize_ip("10.0.0.5").unwrap(), "10.0.0.5");
        assert!(normalize_ip("10.0.0.256").is_err());
        assert!(normalize_ip("0.0.0.0").is_err());
        assert!(check_role("standby").is_ok() && check_role("primary").is_err());
        assert!(check_state("deployed").is_ok() && check_state("gone").is_err());
        assert_eq!(
            normalize_list(&["10.0.0.2".into(), "10.0.0.1".into(), "10.0.0.2".into()], normalize_ip).unwrap(),
            vec!["10.0.0.1", "10.0.0.2"]
        );
        assert!(normalize_list(&["10.0.0.1".into(), "x".into()], normalize_ip).is_err());
    }
}
