//! The kernel side of the VIP: addresses through rtnetlink, gratuitous ARP through an
//! AF_PACKET socket, carrier and MAC from sysfs.

use super::config::Vip;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use std::net::{IpAddr, Ipv4Addr};

/// Network errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The interface does not exist (or sysfs says nothing about it).
    #[error("interface {0}: not found")]
    NoInterface(String),
    /// A VIP address does not parse.
    #[error("{0}")]
    Address(String),
    /// A netlink request failed.
    #[error("netlink on {iface}: {message}")]
    Netlink {
        /// Interface.
        iface: String,
        /// What failed.
        message: String,
    },
    /// Socket I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const EADDRNOTAVAIL: i32 = 99;

fn sysfs(iface: &str, what: &str) -> Option<String> {
    // The name was validated (no '/'), so it cannot leave /sys/class/net.
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}")).ok().map(|s| s.trim().to_string())
}

/// Interface index.
pub fn ifindex(iface: &str) -> Result<u32, NetError> {
    sysfs(iface, "ifindex").and_then(|s| s.parse().ok()).ok_or_else(|| NetError::NoInterface(iface.into()))
}

/// Carrier present (an interface that is down or missing has none).
pub fn carrier(iface: &str) -> bool {
    sysfs(iface, "carrier").is_some_and(|s| s == "1")
}

/// The interface's MAC address.
pub fn mac(iface: &str) -> Result<[u8; 6], NetError> {
    let s = sysfs(iface, "address").ok_or_else(|| NetError::NoInterface(iface.into()))?;
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(NetError::NoInterface(format!("{iface} (no Ethernet address)")));
    }
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| NetError::NoInterface(format!("{iface} (bad MAC {s})")))?;
    }
    Ok(m)
}

fn nl_err(iface: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Netlink { iface: iface.into(), message: e.to_string() }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn handle() -> Result<rtnetlink::Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    // The connection task ends once every handle is dropped.
    tokio::spawn(conn);
    Ok(handle)
}

fn parse(v: &Vip) -> Result<(IpAddr, u8), NetError> {
    v.parse_address().map_err(|e| NetError::Address(e.to_string()))
}

/// Whether any VIP is configured on its interface (a leftover of a crashed process).
pub async fn any_vip_present(vips: &[Vip]) -> Result<bool, NetError> {
    let h = handle()?;
    for v in vips {
        let (ip, _) = parse(v)?;
        let idx = ifindex(&v.interface)?;
        let mut found = std::pin::pin!(h.address().get().set_link_index_filter(idx).set_address_filter(ip).execute());
        let found = found.try_next().await.map_err(|e| nl_err(&v.interface, e))?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Add every VIP (with its label); one already present is fine.
pub async fn add_vips(vips: &[Vip]) -> Result<(), NetError> {
    let h = handle()?;
    for v in vips {
        let (ip, prefix) = parse(v)?;
        let idx = ifindex(&v.interface)?;
        let mut req = h.address().add(idx, ip, prefix);
        if let Some(l) = &v.label {
            req.message_mut().attributes.push(AddressAttribute::Label(l.clone()));
        }
        match req.execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(nl_err(&v.interface, e)),
        }
    }
    Ok(())
}

/// Remove every VIP; one already gone is fine.
pub async fn remove_vips(vips: &[Vip]) -> Result<(), NetError> {
    let h = handle()?;
    let mut first_err = None;
    for v in vips {
        let (ip, _) = parse(v)?;
        let Ok(idx) = ifindex(&v.interface) else { continue };
        let mut found = std::pin::pin!(h.address().get().set_link_index_filter(idx).set_address_filter(ip).execute());
        loop {
            let msg = match found.try_next().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    first_err.get_or_insert(nl_err(&v.interface, e));
                    break;
                }
            };
            match h.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if matches!(errno(&e), Some(ENOENT | EADDRNOTAVAIL)) => {}
                Err(e) => {
                    first_err.get_or_insert(nl_err(&v.interface, e));
                }
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The gratuitous ARP request for `ip` from `mac`: sender and target are both the VIP,
/// broadcast, so every neighbour updates its cache (the form Linux and keepalived use).
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Send one gratuitous ARP for an IPv4 VIP on its interface. IPv6 VIPs are skipped (the
/// kernel sends unsolicited neighbour advertisements itself after DAD).
pub fn send_garp(v: &Vip) -> Result<(), NetError> {
    let IpAddr::V4(ip) = parse(v)?.0 else { return Ok(()) };
    let frame = garp_frame(mac(&v.interface)?, ip);
    send_raw(ifindex(&v.interface)?, &frame)
}

// An AF_PACKET socket has no safe wrapper in the crates used here; each unsafe block below
// says why it holds.
#[allow(unsafe_code)]
fn send_raw(ifindex: u32, frame: &[u8; 42]) -> Result<(), NetError> {
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2); the result is checked and owned by an OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = i32::try_from(ifindex).map_err(|_| NetError::NoInterface(format!("index {ifindex}")))?;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and sa outlive the call; the lengths are theirs.
    let n = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::from_ref(&sa).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frame_layout() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &f[38..42], "sender = target = VIP");
        assert_eq!(&f[6..12], &f[22..28]);
    }
}
