//! DHCPv4 decisions as plain functions over plain data (RFC 2131, RFC 4578 PXE): which
//! address a client gets, what a reply holds, and where it goes. No sockets here.

use dhcproto::v4::{Architecture, DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// The Secure Boot loader in the TFTP root (Debian's signed shim); it loads `grubx64.efi`
/// from the same directory.
pub const SHIM: &str = "shimx64.efi";

/// Replies shorter than this are padded: some PXE ROMs drop short BOOTP replies.
pub const MIN_REPLY: usize = 300;
/// How long an offered address is held for the client.
pub const OFFER_HOLD: u64 = 60;
/// How long a declined address is kept out of the pool.
pub const DECLINE_HOLD: u64 = 600;

/// What the server hands out.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our address (server identifier, next-server).
    pub server_ip: Ipv4Addr,
    /// Subnet network address.
    pub net: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Pool, inclusive.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// Gateway.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// proxyDHCP: boot information only, never addresses.
    pub proxy: bool,
    /// Base URL of the HTTP boot service, e.g. `http://10.0.0.1:8080`.
    pub http_base: String,
    /// UEFI x86-64 PXE clients get the signed shim (Secure Boot) instead of iPXE.
    pub uefi_shim: bool,
}

impl Settings {
    fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - self.prefix))
    }

    /// Is `ip` inside the served subnet?
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.net)
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.range.0)..=u32::from(self.range.1)).contains(&u32::from(ip))
    }
}

/// A lease (or an offer being held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Address.
    pub ip: Ipv4Addr,
    /// Client MAC.
    pub mac: [u8; 6],
    /// Expiry, seconds since the epoch.
    pub expires: u64,
    /// Bound (ACKed) rather than only offered.
    pub bound: bool,
}

/// The lease table, indexed both ways so every lookup is O(1) at 10^5 clients.
#[derive(Debug, Default, Clone)]
pub struct Leases {
    /// Leases by address.
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<[u8; 6], Ipv4Addr>,
    /// Declined addresses and until when they stay out of the pool.
    pub declined: HashMap<Ipv4Addr, u64>,
    /// Where the next free-address search starts (allocation is mostly sequential).
    cursor: std::cell::Cell<u32>,
}

impl Leases {
    /// Record a lease; a client holds at most one.
    pub fn insert(&mut self, l: Lease) {
        if let Some(old) = self.by_mac.insert(l.mac, l.ip)
            && old != l.ip
        {
            self.by_ip.remove(&old);
        }
        if let Some(prev) = self.by_ip.insert(l.ip, l.clone())
            && prev.mac != l.mac
        {
            self.by_mac.remove(&prev.mac);
        }
    }

    /// Forget the lease of an address.
    pub fn remove(&mut self, ip: &Ipv4Addr) {
        if let Some(l) = self.by_ip.remove(ip) {
            self.by_mac.remove(&l.mac);
        }
    }

    /// The lease of an address.
    pub fn get(&self, ip: &Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(ip)
    }

    /// Number of leases and offers held.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// True when no lease is held.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    fn of_mac(&self, mac: &[u8; 6]) -> Option<&Lease> {
        self.by_mac.get(mac).and_then(|ip| self.by_ip.get(ip))
    }

    /// Is `ip` held by another client now?
    fn taken_by_other(&self, ip: Ipv4Addr, mac: &[u8; 6], now: u64) -> bool {
        self.by_ip.get(&ip).is_some_and(|l| &l.mac != mac && l.expires > now)
    }
}

/// What the inventory says about the client.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Node name, if this MAC belongs to one.
    pub node: Option<String>,
    /// Its reserved IPv4 address.
    pub reserved_ip: Option<Ipv4Addr>,
    /// Its state (assigned, deploying, deployed, ...).
    pub state: Option<crate::wire::NodeState>,
    /// Every reserved address (no dynamic client ever gets one).
    pub all_reserved: std::sync::Arc<HashSet<Ipv4Addr>>,
    /// MAC collection is on.
    pub collecting: bool,
}

/// PXE facts about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// Option 93.
    pub arch: Option<u16>,
    /// Option 60 text.
    pub vendor_class: String,
    /// Firmware PXE (`PXEClient`) or UEFI HTTP boot (`HTTPClient`).
    pub pxe: bool,
    /// UEFI HTTP boot.
    pub http_client: bool,
    /// Already running iPXE (user class "iPXE" or option 175).
    pub ipxe: bool,
}

/// Read the PXE-related options.
pub fn client_info(m: &Message) -> ClientInfo {
    let vendor_class = match m.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => String::from_utf8_lossy(v).into_owned(),
        _ => String::new(),
    };
    let arch = match m.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(Architecture(a))) => Some(*a),
        _ => None,
    };
    let user_ipxe = match m.opts().get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => v.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    let ipxe = user_ipxe || m.opts().get(OptionCode::Unknown(175)).is_some();
    ClientInfo {
        arch,
        pxe: vendor_class.starts_with("PXEClient") || vendor_class.starts_with("HTTPClient"),
        http_client: vendor_class.starts_with("HTTPClient"),
        vendor_class,
        ipxe,
    }
}

/// Format a MAC.
pub fn mac_str(mac: &[u8; 6]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        let sep = if i == 0 { "" } else { ":" };
        let _ = write!(s, "{sep}{b:02x}");
    }
    s
}

/// The boot file for a client, if it should network-boot: iPXE gets its per-node script
/// over HTTP; firmware gets the iPXE binary for its architecture. A node that is deployed
/// gets nothing from firmware PXE, so it falls through to its local disk.
pub fn boot_file(s: &Settings, c: &ClientInfo, k: &Known, mac: &[u8; 6]) -> Option<String> {
    if !c.pxe && !c.ipxe {
        return None;
    }
    if c.ipxe {
        return Some(format!("{}/boot/{}.ipxe", s.http_base, mac_str(mac)));
    }
    let wants_boot = match k.state {
        Some(s) => s.netboots(),
        None => k.collecting,
    };
    if !wants_boot {
        return None;
    }
    Some(match c.arch.unwrap_or(0) {
        0 => "undionly.kpxe".into(),
        0x7 | 0x9 if s.uefi_shim => SHIM.into(),
        0x7 | 0x9 => "snponly.efi".into(),
        0xF | 0x10 => format!("{}/boot/ipxe.efi", s.http_base),
        0xB => "ipxe-arm64.efi".into(),
        0x6 => "ipxe-i386.efi".into(),
        _ => "undionly.kpxe".into(),
    })
}

/// A decision: the reply and how the lease table changed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The reply, if any.
    pub reply: Option<Message>,
    /// A lease to write before the reply leaves.
    pub put: Option<Lease>,
    /// An address whose lease is gone.
    pub removed: Option<Ipv4Addr>,
    /// Why nothing was sent, for the log.
    pub note: Option<String>,
}

fn allowed(s: &Settings, l: &Leases, k: &Known, mac: &[u8; 6], ip: Ipv4Addr, now: u64) -> bool {
    if let Some(r) = k.reserved_ip {
        return r == ip && !l.taken_by_other(ip, mac, now);
    }
    s.in_pool(ip)
        && !k.all_reserved.contains(&ip)
        && !l.taken_by_other(ip, mac, now)
        && l.declined.get(&ip).is_none_or(|&until| until <= now)
        && ip != s.server_ip
}

fn pick(s: &Settings, l: &Leases, k: &Known, mac: &[u8; 6], requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
    if let Some(r) = k.reserved_ip {
        return allowed(s, l, k, mac, r, now).then_some(r);
    }
    if let Some(cur) = l.of_mac(mac).map(|l| l.ip).filter(|ip| allowed(s, l, k, mac, *ip, now)) {
        return Some(cur);
    }
    if let Some(r) = requested.filter(|ip| allowed(s, l, k, mac, *ip, now)) {
        return Some(r);
    }
    // Next free address after the cursor, wrapping once; an expired lease of another
    // client counts as free.
    let (lo, hi) = (u32::from(s.range.0), u32::from(s.range.1));
    let start = l.cursor.get().clamp(lo, hi);
    let found = (start..=hi).chain(lo..start).map(Ipv4Addr::from).find(|ip| allowed(s, l, k, mac, *ip, now));
    if let Some(ip) = found {
        l.cursor.set(u32::from(ip).saturating_add(1));
    }
    found
}

fn requested_ip(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// The client's MAC, when the request is an Ethernet BOOTREQUEST.
pub fn client_mac(m: &Message) -> Option<[u8; 6]> {
    if m.opcode() != Opcode::BootRequest || m.htype() != HType::Eth || m.hlen() != 6 {
        return None;
    }
    m.chaddr().get(..6)?.try_into().ok()
}

fn base_reply(s: &Settings, req: &Message, t: MessageType) -> Message {
    let mut r = Message::default();
    r.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr())
        .set_siaddr(s.server_ip);
    r.opts_mut().insert(DhcpOption::MessageType(t));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(s.server_ip));
    // RFC 6842: the client identifier goes back unaltered, so that a client (or a relay, or
    // a test client simulating thousands) can tell which of its clients a reply is for.
    if let Some(id @ DhcpOption::ClientIdentifier(_)) = req.opts().get(OptionCode::ClientIdentifier) {
        r.opts_mut().insert(id.clone());
    }
    r
}

fn add_config(s: &Settings, r: &mut Message, lease: bool) {
    let o = r.opts_mut();
    o.insert(DhcpOption::SubnetMask(s.mask()));
    if let Some(gw) = s.router {
        o.insert(DhcpOption::Router(vec![gw]));
    }
    if !s.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(s.dns.clone()));
    }
    if lease {
        o.insert(DhcpOption::AddressLeaseTime(s.lease_secs));
        o.insert(DhcpOption::Renewal(s.lease_secs / 2));
        o.insert(DhcpOption::Rebinding(s.lease_secs / 8 * 7));
    }
}

fn add_boot(s: &Settings, r: &mut Message, c: &ClientInfo, file: &str) {
    r.set_fname_str(file);
    let o = r.opts_mut();
    o.insert(DhcpOption::TFTPServerName(s.server_ip.to_string().into_bytes()));
    o.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    if c.http_client {
        o.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else if c.pxe {
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        // PXE vendor options: discovery control = 8 (use the boot file, no boot server
        // discovery), then end. Firmware waits for menus without it.
        o.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
}

/// Decide what to do with one request.
pub fn handle(s: &Settings, req: &Message, k: &Known, l: &Leases, now: u64) -> Outcome {
    let Some(mac) = client_mac(req) else {
        return Outcome { note: Some("not an Ethernet BOOTREQUEST".into()), ..Default::default() };
    };
    let Some(t) = req.opts().msg_type() else {
        return Outcome { note: Some("no message type".into()), ..Default::default() };
    };
    let c = client_info(req);
    let boot = boot_file(s, &c, k, &mac);
    if s.proxy {
        // proxyDHCP: PXE clients only, boot information only, never an address.
        let (Some(file), true) = (boot, c.pxe) else {
            return Outcome { note: Some("proxy mode: not a PXE client to boot".into()), ..Default::default() };
        };
        let rt = match t {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request | MessageType::Inform => MessageType::Ack,
            _ => return Outcome::default(),
        };
        let mut r = base_reply(s, req, rt);
        add_boot(s, &mut r, &c, &file);
        return Outcome { reply: Some(r), ..Default::default() };
    }
    match t {
        MessageType::Discover => {
            let Some(ip) = pick(s, l, k, &mac, requested_ip(req), now) else {
                return Outcome { note: Some(format!("no address free for {}", mac_str(&mac))), ..Default::default() };
            };
            let mut r = base_reply(s, req, MessageType::Offer);
            r.set_yiaddr(ip);
            add_config(s, &mut r, true);
            if let Some(f) = &boot {
                add_boot(s, &mut r, &c, f);
            }
            let bound = l.get(&ip).is_some_and(|x| x.mac == mac && x.bound && x.expires > now);
            let put = (!bound).then_some(Lease { ip, mac, expires: now + OFFER_HOLD, bound: false });
            Outcome { reply: Some(r), put, ..Default::default() }
        }
        MessageType::Request => {
            let sid = server_id(req);
            if sid.is_some_and(|id| id != s.server_ip) {
                // The client chose another server: release what we offered it.
                let removed = l.of_mac(&mac).filter(|x| !x.bound).map(|x| x.ip);
                return Outcome { removed, note: Some("client selected another server".into()), ..Default::default() };
            }
            let ip = requested_ip(req).or_else(|| (!req.ciaddr().is_unspecified()).then_some(req.ciaddr()));
            let Some(ip) = ip else {
                return Outcome { note: Some("REQUEST without an address".into()), ..Default::default() };
            };
            if !s.in_subnet(ip) || !allowed(s, l, k, &mac, ip, now) {
                let mut r = base_reply(s, req, MessageType::Nak);
                r.set_flags(Flags::default().set_broadcast());
                return Outcome {
                    reply: Some(r),
                    note: Some(format!("NAK {ip} for {}", mac_str(&mac))),
                    ..Default::default()
                };
            }
            let mut r = base_reply(s, req, MessageType::Ack);
            r.set_yiaddr(ip).set_ciaddr(req.ciaddr());
            add_config(s, &mut r, true);
            if let Some(f) = &boot {
                add_boot(s, &mut r, &c, f);
            }
            Outcome {
                reply: Some(r),
                put: Some(Lease { ip, mac, expires: now + s.lease_secs as u64, bound: true }),
                ..Default::default()
            }
        }
        MessageType::Release => {
            let ip = req.ciaddr();
            let ours = l.get(&ip).is_some_and(|x| x.mac == mac);
            Outcome { removed: ours.then_some(ip), ..Default::default() }
        }
        MessageType::Decline => {
            let ip = requested_ip(req);
            let ours = ip.filter(|ip| l.get(ip).is_some_and(|x| x.mac == mac));
            Outcome {
                removed: ours,
                note: ip.map(|ip| format!("{} declined {ip}: address in use on the wire", mac_str(&mac))),
                ..Default::default()
            }
        }
        MessageType::Inform => {
            let mut r = base_reply(s, req, MessageType::Ack);
            r.set_ciaddr(req.ciaddr());
            add_config(s, &mut r, false);
            Outcome { reply: Some(r), ..Default::default() }
        }
        other => Outcome { note: Some(format!("ignored message type {other:?}")), ..Default::default() },
    }
}

/// Where a reply goes (RFC 2131 4.1): the relay, the client's own address, or broadcast.
pub fn destination(req: &Message, reply: &Message) -> (Ipv4Addr, u16) {
    if !req.giaddr().is_unspecified() {
        return (req.giaddr(), 67);
    }
    let nak = reply.opts().has_msg_type(MessageType::Nak);
    if !nak && !req.ciaddr().is_unspecified() {
        return (req.ciaddr(), 68);
    }
    // Without a raw socket we cannot unicast to a client that has no address yet.
    (Ipv4Addr::BROADCAST, 68)
}

/// Encode a reply, padded to at least [`MIN_REPLY`] bytes.
pub fn encode(r: &Message) -> Result<Vec<u8>, String> {
    use dhcproto::Encodable;
    let mut v = r.to_vec().map_err(|e| e.to_string())?;
    if v.len() < MIN_REPLY {
        v.resize(MIN_REPLY, 0);
    }
    Ok(v)
}

/// A packet that is no DHCP request we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a BOOTP header with the magic cookie.
    #[error("packet of {0} bytes is shorter than a BOOTP header with cookie")]
    Short(usize),
    /// The decoder refused it.
    #[error("{0}")]
    Malformed(String),
    /// An option encoding the decoder would have panicked on.
    #[error("option encoding the decoder rejects")]
    Rejected,
}

/// Decode a request, bounding what we accept.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    use dhcproto::Decodable;
    if buf.len() < 240 {
        return Err(DecodeError::Short(buf.len()));
    }
    // dhcproto asserts on some malformed options (found by the garbage test below); a
    // hostile packet must cost one log line, never the server.
    match std::panic::catch_unwind(|| Message::from_bytes(buf)) {
        Ok(r) => r.map_err(|e| DecodeError::Malformed(e.to_string())),
        Err(_) => Err(DecodeError::Rejected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::DhcpOptions;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];
    const MAC2: [u8; 6] = [0x52, 0x54, 0, 9, 9, 9];

    fn settings() -> Settings {
        Settings {
            server_ip: "10.0.0.1".parse().unwrap(),
            net: "10.0.0.0".parse().unwrap(),
            prefix: 24,
            range: ("10.0.0.100".parse().unwrap(), "10.0.0.102".parse().unwrap()),
            router: Some("10.0.0.1".parse().unwrap()),
            dns: vec!["10.0.0.1".parse().unwrap()],
            lease_secs: 3600,
            proxy: false,
            http_base: "http://10.0.0.1:8080".into(),
            uefi_shim: false,
        }
    }

    fn msg(t: MessageType, mac: [u8; 6], opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest).set_htype(HType::Eth).set_chaddr(&mac).set_xid(7);
        let mut o = DhcpOptions::default();
        o.insert(DhcpOption::MessageType(t));
        for x in opts {
            o.insert(x);
        }
        m.set_opts(o);
        m
    }

    fn apply(l: &mut Leases, o: &Outcome) {
        if let Some(p) = &o.put {
            l.insert(p.clone());
        }
        if let Some(r) = o.removed {
            l.remove(&r);
        }
    }

    #[test]
    fn dora_then_renew_then_release() {
        let (s, k, mut l) = (settings(), Known::default(), Leases::default());
        let o = handle(&s, &msg(MessageType::Discover, MAC, vec![]), &k, &l, 1000);
        let offer = o.reply.clone().unwrap();
        assert!(offer.opts().has_msg_type(MessageType::Offer));
        let ip = offer.yiaddr();
        assert_eq!(ip, "10.0.0.100".parse::<Ipv4Addr>().unwrap());
        apply(&mut l, &o);
        let req = msg(
            MessageType::Request,
            MAC,
            vec![DhcpOption::RequestedIpAddress(ip), DhcpOption::ServerIdentifier(s.server_ip)],
        );
        let o = handle(&s, &req, &k, &l, 1001);
        assert!(o.reply.as_ref().unwrap().opts().has_msg_type(MessageType::Ack));
        assert!(o.put.as_ref().unwrap().bound);
        apply(&mut l, &o);
        // Renewing: ciaddr set, no option 50, no server id.
        let mut renew = msg(MessageType::Request, MAC, vec![]);
        renew.set_ciaddr(ip);
        let o = handle(&s, &renew, &k, &l, 2000);
        let ack = o.reply.clone().unwrap();
        assert!(ack.opts().has_msg_type(MessageType::Ack));
        assert_eq!(destination(&renew, &ack), (ip, 68));
        // Another client cannot take it.
        let steal = msg(MessageType::Request, MAC2, vec![DhcpOption::RequestedIpAddress(ip)]);
        assert!(handle(&s, &steal, &k, &l, 2001).reply.unwrap().opts().has_msg_type(MessageType::Nak));
        let mut rel = msg(MessageType::Release, MAC, vec![DhcpOption::ServerIdentifier(s.server_ip)]);
        rel.set_ciaddr(ip);
        assert_eq!(handle(&s, &rel, &k, &l, 2002).removed, Some(ip));
    }

    #[test]
    fn replies_echo_the_client_identifier() {
        let (s, k, mut l) = (settings(), Known::default(), Leases::default());
        let id = DhcpOption::ClientIdentifier(vec![1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let echoed =
            |r: &Message| decode(&encode(r).unwrap()).unwrap().opts().get(OptionCode::ClientIdentifier).cloned();
        let o = handle(&s, &msg(MessageType::Discover, MAC, vec![id.clone()]), &k, &l, 1000);
        let offer = o.reply.clone().unwrap();
        assert_eq!(echoed(&offer), Some(id.clone()));
        apply(&mut l, &o);
        let req = msg(
            MessageType::Request,
            MAC,
            vec![DhcpOption::RequestedIpAddress(offer.yiaddr()), DhcpOption::ServerIdentifier(s.server_ip), id.clone()],
        );
        let o = handle(&s, &req, &k, &l, 1001);
        let ack = o.reply.clone().unwrap();
        assert!(ack.opts().has_msg_type(MessageType::Ack));
        assert_eq!(echoed(&ack), Some(id.clone()));
        apply(&mut l, &o);
        let steal = msg(MessageType::Request, MAC2, vec![DhcpOption::RequestedIpAddress(offer.yiaddr()), id.clone()]);
        let nak = handle(&s, &steal, &k, &l, 1002).reply.unwrap();
        assert!(nak.opts().has_msg_type(MessageType::Nak));
        assert_eq!(echoed(&nak), Some(id));
        // A client that sent none gets none.
        let plain = handle(&s, &msg(MessageType::Discover, MAC2, vec![]), &k, &l, 1003).reply.unwrap();
        assert_eq!(echoed(&plain), None);
    }

    #[test]
    fn reservations_and_exhaustion() {
        let s = settings();
        let mut l = Leases::default();
        let k = Known {
            all_reserved: std::sync::Arc::new(["10.0.0.101".parse().unwrap()].into_iter().collect()),
            ..Default::default()
        };
        // Fill the pool with other clients; the reserved address is never handed out.
        for i in 0..3u8 {
            let o = handle(&s, &msg(MessageType::Discover, [2, 0, 0, 0, 0, i], vec![]), &k, &l, 10);
            apply(&mut l, &o);
        }
        let given: Vec<Ipv4Addr> = l.by_ip.keys().copied().collect();
        assert_eq!(l.len(), given.len());
        assert_eq!(given.len(), 2, "pool of 3 minus 1 reservation");
        assert!(!given.contains(&"10.0.0.101".parse().unwrap()));
        // The node with the reservation still gets its address.
        let kn = Known {
            node: Some("standby".into()),
            reserved_ip: Some("10.0.0.101".parse().unwrap()),
            state: Some(crate::wire::NodeState::Deployed),
            ..k.clone()
        };
        let o = handle(&s, &msg(MessageType::Discover, MAC, vec![]), &kn, &l, 11);
        assert_eq!(o.reply.unwrap().yiaddr(), "10.0.0.101".parse::<Ipv4Addr>().unwrap());
        // Expired offers free their addresses again.
        let o = handle(&s, &msg(MessageType::Discover, MAC2, vec![]), &k, &l, 10 + OFFER_HOLD + 1);
        assert!(o.reply.is_some());
    }

    #[test]
    fn init_reboot_outside_subnet_is_naked_and_other_server_is_ignored() {
        let (s, k, l) = (settings(), Known::default(), Leases::default());
        let m = msg(MessageType::Request, MAC, vec![DhcpOption::RequestedIpAddress("192.168.1.5".parse().unwrap())]);
        let r = handle(&s, &m, &k, &l, 1).reply.unwrap();
        assert!(r.opts().has_msg_type(MessageType::Nak));
        assert_eq!(destination(&m, &r).0, Ipv4Addr::BROADCAST);
        let m = msg(
            MessageType::Request,
            MAC,
            vec![
                DhcpOption::RequestedIpAddress("10.0.0.100".parse().unwrap()),
                DhcpOption::ServerIdentifier("10.0.0.9".parse().unwrap()),
            ],
        );
        assert!(handle(&s, &m, &k, &l, 1).reply.is_none());
    }

    #[test]
    fn pxe_boot_files_by_architecture_and_state() {
        let s = settings();
        let pxe = |arch: u16| {
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture(arch)),
            ]
        };
        let to_deploy =
            Known { node: Some("n".into()), state: Some(crate::wire::NodeState::Assigned), ..Default::default() };
        let file = |k: &Known, opts| {
            let r = handle(&s, &msg(MessageType::Discover, MAC, opts), k, &Leases::default(), 1).reply.unwrap();
            r.fname_str().and_then(|f| f.ok()).map(String::from).filter(|f| !f.is_empty())
        };
        assert_eq!(file(&to_deploy, pxe(0)).as_deref(), Some("undionly.kpxe"));
        assert_eq!(file(&to_deploy, pxe(7)).as_deref(), Some("snponly.efi"));
        assert_eq!(file(&to_deploy, pxe(11)).as_deref(), Some("ipxe-arm64.efi"));
        // Secure Boot: UEFI x86-64 firmware gets Debian's signed shim; BIOS stays on iPXE.
        let sb = Settings { uefi_shim: true, ..settings() };
        let file_sb = |opts| {
            let r =
                handle(&sb, &msg(MessageType::Discover, MAC, opts), &to_deploy, &Leases::default(), 1).reply.unwrap();
            r.fname_str().and_then(|f| f.ok()).map(String::from)
        };
        assert_eq!(file_sb(pxe(7)).as_deref(), Some("shimx64.efi"));
        assert_eq!(file_sb(pxe(9)).as_deref(), Some("shimx64.efi"));
        assert_eq!(file_sb(pxe(0)).as_deref(), Some("undionly.kpxe"));
        let http = vec![
            DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture(16)),
        ];
        assert_eq!(file(&to_deploy, http).as_deref(), Some("http://10.0.0.1:8080/boot/ipxe.efi"));
        let ipxe = vec![DhcpOption::UserClass(b"iPXE".to_vec())];
        assert_eq!(file(&to_deploy, ipxe).as_deref(), Some("http://10.0.0.1:8080/boot/52:54:00:01:02:03.ipxe"));
        // Deployed nodes boot from disk: firmware PXE gets no file. Unknown MACs only while collecting.
        let deployed =
            Known { node: Some("n".into()), state: Some(crate::wire::NodeState::Deployed), ..Default::default() };
        assert_eq!(file(&deployed, pxe(0)), None);
        assert_eq!(file(&Known::default(), pxe(0)), None);
        assert_eq!(file(&Known { collecting: true, ..Default::default() }, pxe(0)).as_deref(), Some("undionly.kpxe"));
        // Plain clients never get a boot file.
        assert_eq!(file(&to_deploy, vec![]), None);
    }

    #[test]
    fn proxy_mode_answers_pxe_clients_only_and_never_gives_addresses() {
        let s = Settings { proxy: true, ..settings() };
        let k = Known { node: Some("n".into()), state: Some(crate::wire::NodeState::Assigned), ..Default::default() };
        let plain = handle(&s, &msg(MessageType::Discover, MAC, vec![]), &k, &Leases::default(), 1);
        assert!(plain.reply.is_none());
        let o = handle(
            &s,
            &msg(MessageType::Discover, MAC, vec![DhcpOption::ClassIdentifier(b"PXEClient".to_vec())]),
            &k,
            &Leases::default(),
            1,
        );
        let r = o.reply.unwrap();
        assert!(r.yiaddr().is_unspecified() && o.put.is_none());
        assert!(r.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(r.fname_str().unwrap().unwrap(), "undionly.kpxe");
    }

    #[test]
    fn replies_are_padded_and_garbage_never_panics() {
        let s = settings();
        let o = handle(&s, &msg(MessageType::Discover, MAC, vec![]), &Known::default(), &Leases::default(), 1);
        let bytes = encode(&o.reply.unwrap()).unwrap();
        assert!(bytes.len() >= MIN_REPLY);
        assert!(decode(&bytes).is_ok());
        let good = encode(&msg(MessageType::Discover, MAC, vec![DhcpOption::Hostname("x".into())])).unwrap();
        let mut x = 0x1234_5678u32;
        for n in 0..good.len() {
            let _ = decode(&good[..n]);
        }
        for _ in 0..5000 {
            let mut b = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = (x as usize) % b.len();
                b[i] = (x >> 8) as u8;
            }
            if let Ok(m) = decode(&b) {
                let _ = handle(&s, &m, &Known::default(), &Leases::default(), 1);
            }
        }
        assert!(decode(&[0u8; 10]).is_err());
    }
}
