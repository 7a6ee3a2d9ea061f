//! The DHCPv4 service of `understudy serve`: a UDP socket bound to the configured
//! interface only, the decisions in [`policy`], leases persisted in sqlite before a reply
//! leaves, MAC collection, and a per-MAC flood guard.

pub mod policy;

use crate::config::{DhcpConfig, parse_range, parse_subnet};
use crate::inventory::Inventory;
use crate::inventory::dhcp::LeaseRecord;
use crate::ratelog::LogLimit;
use crate::wire::{LeaseState, NodeState};
use policy::{Known, Lease, Leases, Settings, mac_str};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// DHCP service errors.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Socket setup failed.
    #[error("DHCP socket on {iface} port {port}: {source}")]
    Socket {
        /// Interface.
        iface: String,
        /// Port.
        port: u16,
        /// The error.
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error("DHCP config: {0}")]
    Config(String),
    /// The inventory failed.
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Build the settings the policy uses from the config.
pub fn settings(cfg: &DhcpConfig, http_port: Option<u16>) -> Result<Settings, DhcpError> {
    let (net, prefix) = parse_subnet(&cfg.subnet).map_err(|e| DhcpError::Config(e.to_string()))?;
    let range = parse_range(&cfg.range).map_err(|e| DhcpError::Config(e.to_string()))?;
    let http_base = cfg
        .http_boot_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", cfg.server_ip, http_port.unwrap_or(80)))
        .trim_end_matches('/')
        .to_string();
    Ok(Settings {
        server_ip: cfg.server_ip,
        net,
        prefix,
        range,
        router: cfg.router,
        dns: cfg.dns.clone(),
        lease_secs: cfg.lease_time.as_secs().min(u32::MAX as u64) as u32,
        proxy: cfg.mode == "proxy",
        http_base,
        uefi_shim: cfg.uefi_loader == crate::config::UefiLoader::Shim,
    })
}

/// A UDP socket on `port`, bound to `iface` (SO_BINDTODEVICE) so no other network is
/// ever answered, able to broadcast.
pub fn bind(iface: &str, port: u16) -> Result<UdpSocket, DhcpError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| DhcpError::Socket { iface: iface.into(), port, source };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    // Room for the packets that arrive while a batch gathers (the kernel caps it at
    // net.core.rmem_max).
    s.set_recv_buffer_size(1 << 20).map_err(err)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into()).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// Per-MAC replies per second.
struct FloodGuard {
    per_sec: u32,
    seen: HashMap<[u8; 6], (u64, u32)>,
}

impl FloodGuard {
    fn allow(&mut self, mac: [u8; 6], now: u64) -> bool {
        if self.seen.len() > 65_536 {
            self.seen.retain(|_, (t, _)| *t == now);
        }
        let e = self.seen.entry(mac).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= self.per_sec
    }
}

/// Inventory facts refreshed at most once a second.
struct Cached {
    at: Option<Instant>,
    reserved: std::sync::Arc<HashSet<Ipv4Addr>>,
    collecting: bool,
    /// MAC -> (node, reserved IPv4, state).
    nodes: HashMap<[u8; 6], (String, Option<Ipv4Addr>, NodeState)>,
}

impl Cached {
    async fn refresh(&mut self, inv: &Inventory, now: u64) -> Result<(), DhcpError> {
        if self.at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        self.reserved = std::sync::Arc::new(inv.reserved_ips().await?.iter().filter_map(|i| i.parse().ok()).collect());
        self.collecting = inv.collecting(now as i64).await?;
        self.nodes = inv
            .reservations()
            .await?
            .into_iter()
            .filter_map(|r| Some((parse_mac(&r.mac)?, (r.node, r.ipv4.and_then(|i| i.parse().ok()), r.state))))
            .collect();
        self.at = Some(Instant::now());
        Ok(())
    }
}

/// Packets handled per batch; their leases are committed together.
const BATCH: usize = 256;
/// How long a batch keeps gathering packets after its first one.
const GATHER: Duration = Duration::from_millis(2);

/// Run until `shutdown`.
pub async fn serve(
    inv: Inventory,
    cfg: DhcpConfig,
    http_port: Option<u16>,
    shutdown: CancellationToken,
) -> Result<(), DhcpError> {
    let s = settings(&cfg, http_port)?;
    let mut socks = vec![bind(&cfg.interface, 67)?];
    if s.proxy {
        socks.push(bind(&cfg.interface, 4011)?);
    }
    let mut leases = Leases::default();
    for r in inv.lease_records().await? {
        let (Ok(ip), Some(mac)) = (r.ip.parse::<Ipv4Addr>(), parse_mac(&r.mac)) else { continue };
        leases.insert(Lease { ip, mac, expires: r.expires.max(0) as u64, bound: r.state == LeaseState::Bound });
    }
    tracing::info!(
        "DHCP ({}) on {} as {}: pool {}, {} lease(s) restored",
        cfg.mode,
        cfg.interface,
        s.server_ip,
        cfg.range,
        leases.len()
    );
    let mut log = LogLimit::new("dhcp");
    let mut guard = FloodGuard { per_sec: cfg.per_mac_rate.max(1), seen: HashMap::new() };
    let mut cache = Cached { at: None, reserved: Default::default(), collecting: false, nodes: HashMap::new() };
    let mut buf = vec![0u8; 1500];
    loop {
        // Wait for one packet, then take whatever else is already queued.
        let mut batch: Vec<(usize, Vec<u8>, SocketAddr)> = Vec::new();
        {
            let readable: Vec<_> = socks.iter().map(|s| Box::pin(s.readable())).collect();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = futures_util::future::select_all(readable) => {}
            }
        }
        // Gather for GATHER after the first packet, so that under load one commit (one
        // fsync) covers many ACKs; an idle server answers within GATHER. One sleep rather
        // than a wake-up per arriving packet: the kernel queues them meanwhile.
        tokio::time::sleep(GATHER).await;
        for (i, sock) in socks.iter().enumerate() {
            while batch.len() < BATCH {
                match sock.try_recv_from(&mut buf) {
                    Ok((n, from)) => batch.push((i, buf[..n].to_vec(), from)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log.warn("recv", || format!("receive failed: {e}"));
                        break;
                    }
                }
            }
        }
        let now = now_secs();
        cache.refresh(&inv, now).await?;
        let mut puts = Vec::new();
        let mut removes = Vec::new();
        let mut found = Vec::new();
        let mut replies = Vec::new();
        for (i, pkt, from) in batch {
            let req = match policy::decode(&pkt) {
                Ok(m) => m,
                Err(e) => {
                    log.warn("decode", || format!("malformed packet from {from}: {e}"));
                    continue;
                }
            };
            let Some(mac) = policy::client_mac(&req) else { continue };
            if !guard.allow(mac, now) {
                log.warn("flood", || format!("{} sends too fast; dropping", mac_str(&mac)));
                continue;
            }
            let node = cache.nodes.get(&mac);
            let known = Known {
                reserved_ip: node.and_then(|n| n.1).filter(|ip| s.in_subnet(*ip)),
                state: node.map(|n| n.2),
                node: node.map(|n| n.0.clone()),
                all_reserved: cache.reserved.clone(),
                collecting: cache.collecting,
            };
            if known.collecting && req.opts().has_msg_type(dhcproto::v4::MessageType::Discover) {
                let info = policy::client_info(&req);
                found.push((mac_str(&mac), info.arch, info.vendor_class));
            }
            if req.opts().has_msg_type(dhcproto::v4::MessageType::Decline)
                && let Some(dhcproto::v4::DhcpOption::RequestedIpAddress(ip)) =
                    req.opts().get(dhcproto::v4::OptionCode::RequestedIpAddress)
            {
                leases.declined.insert(*ip, now + policy::DECLINE_HOLD);
            }
            let out = policy::handle(&s, &req, &known, &leases, now);
            if let Some(note) = &out.note {
                tracing::debug!("dhcp: {note}");
            }
            if let Some(l) = &out.put {
                // Offers live in memory only; bound leases are written before any reply of
                // this batch leaves.
                if l.bound {
                    puts.push(LeaseRecord {
                        ip: l.ip.to_string(),
                        mac: mac_str(&mac),
                        expires: l.expires as i64,
                        state: LeaseState::Bound,
                    });
                }
                leases.insert(l.clone());
            }
            if let Some(ip) = out.removed {
                removes.push(ip.to_string());
                leases.remove(&ip);
            }
            if let Some(reply) = out.reply {
                let (dst, port) = policy::destination(&req, &reply);
                // proxyDHCP answers on 4011 go back to where the request came from.
                let (dst, port) = match (i, from) {
                    (1, SocketAddr::V4(a)) => (*a.ip(), a.port()),
                    _ => (dst, port),
                };
                replies.push((i, reply, dst, port));
            }
        }
        inv.apply_leases(&puts, &removes).await?;
        for (mac, arch, vc) in found {
            inv.record_discovered(&mac, arch, &vc, &cfg.interface).await?;
        }
        for (i, reply, dst, port) in replies {
            match policy::encode(&reply) {
                Ok(bytes) => {
                    if let Err(e) = socks[i].send_to(&bytes, (dst, port)).await {
                        log.warn("send", || format!("send to {dst}:{port} failed: {e}"));
                    }
                }
                Err(e) => log.warn("encode", || format!("cannot encode reply: {e}")),
            }
        }
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>().ok()?;
    v.try_into().ok()
}
