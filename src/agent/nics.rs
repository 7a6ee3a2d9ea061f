//! The machine's Ethernet interfaces, from sysfs, for the hardware report: the server maps
//! the node's network identity onto them (a standby interface without a MAC gets one here).

use crate::wire::{NICS_MAX, Nic, is_ifname};
use std::path::Path;

/// ARPHRD_ETHER: the only link type a node's network identity describes.
const ARPHRD_ETHER: &str = "1";

/// Physical Ethernet interfaces under `sys_net` (`/sys/class/net`), by name: those with a
/// device behind them (not lo, bridges, veths or bonds), a valid MAC and a kernel name.
pub fn list(sys_net: &Path) -> std::io::Result<Vec<Nic>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(sys_net)? {
        let e = e?;
        let dir = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string()).unwrap_or_default();
        if !is_ifname(&name) || !dir.join("device").exists() || read("type") != ARPHRD_ETHER {
            continue;
        }
        let Ok(mac) = read("address").parse::<crate::netcfg::Mac>() else { continue };
        out.push(Nic { name, mac: mac.to_string() });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.truncate(NICS_MAX);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_physical_ethernet() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, ty: &str, mac: &str, device: bool| {
            let p = d.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("type"), format!("{ty}\n")).unwrap();
            std::fs::write(p.join("address"), format!("{mac}\n")).unwrap();
            if device {
                std::fs::create_dir(p.join("device")).unwrap();
            }
        };
        mk("ens4", "1", "52:54:00:00:01:02", true);
        mk("ens3", "1", "52:54:00:00:01:01", true);
        mk("lo", "772", "00:00:00:00:00:00", false);
        mk("br0", "1", "52:54:00:00:09:09", false);
        mk("ib0", "32", "80:00:00:48:fe:80", true);
        mk("bad", "1", "not-a-mac", true);
        let got = list(d.path()).unwrap();
        let names: Vec<&str> = got.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["ens3", "ens4"]);
        assert_eq!(got[0].mac, "52:54:00:00:01:01");
    }
}
