//! The DHCPv4 service of `understudy serve`: a UDP socket bound to the configured
//! interface only, the decisions in [`policy`], leases persisted in sqlite before a reply
//! leaves, MAC collection, and a per-MAC flood guard.

pub mod policy;

use crate::config::{DhcpConfig, parse_range, parse_subnet};
use crate::images::Inventory;
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
    Db(#[from] crate::db::DbError),
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Build the settings the policy uses from the config.
pub fn settings(cfg: &DhcpConfig, http_port: Option<u16>) -> Result<Settings, DhcpError> {
    let (net, prefix) = parse_subnet(&cfg.subnet).map_err(DhcpError::Config)?;
    let range = parse_range(&cfg.range).map_err(DhcpError::Config)?;
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
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into()).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// Logs at most one line per interval per kind, counting what it suppressed.
struct LogLimit {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimit {
    fn warn(&mut self, kind: &'static str, msg: impl FnOnce() -> String) {
        let e = self.last.entry(kind).or_insert((Instant::now() - Duration::from_secs(10), 0));
        if e.0.elapsed() >= Duration::from_secs(1) {
            let suppressed = std::mem::take(&mut e.1);
            e.0 = Instant::now();
            tracing::warn!(
                "dhcp: {}{}",
                msg(),
                if suppressed > 0 { format!(" ({suppressed} more suppressed)") } else { String::new() }
            );
        } else {
            e.1 += 1;
        }
    }
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
    reserved: HashSet<Ipv4Addr>,
    collecting: bool,
}

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
    for r in inv.db.leases().await? {
        let (Ok(ip), Some(mac)) = (r.ip.parse::<Ipv4Addr>(), parse_mac(&r.mac)) else { continue };
        leases.by_ip.insert(ip, Lease { ip, mac, expires: r.expires.max(0) as u64, bound: r.state == "bound" });
    }
    tracing::info!(
        "DHCP ({}) on {} as {}: pool {}, {} lease(s) restored",
        cfg.mode,
        cfg.interface,
        s.server_ip,
        cfg.range,
        leases.by_ip.len()
    );
    let mut log = LogLimit { last: HashMap::new() };
    let mut guard = FloodGuard { per_sec: cfg.per_mac_rate.max(1), seen: HashMap::new() };
    let mut cache = Cached { at: None, reserved: HashSet::new(), collecting: false };
    let mut bufs = vec![vec![0u8; 1500]; socks.len()];
    loop {
        let (i, n, from) = {
            let mut futs = Vec::new();
            for (sock, buf) in socks.iter().zip(bufs.iter_mut()) {
                futs.push(Box::pin(sock.recv_from(buf)));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                (r, i, _) = futures_util::future::select_all(futs) => match r {
                    Ok((n, from)) => (i, n, from),
                    Err(e) => {
                        log.warn("recv", || format!("receive failed: {e}"));
                        continue;
                    }
                },
            }
        };
        let req = match policy::decode(&bufs[i][..n]) {
            Ok(m) => m,
            Err(e) => {
                log.warn("decode", || format!("malformed packet from {from}: {e}"));
                continue;
            }
        };
        let Some(mac) = policy::client_mac(&req) else { continue };
        let now = now_secs();
        if !guard.allow(mac, now) {
            log.warn("flood", || format!("{} sends too fast; dropping", mac_str(&mac)));
            continue;
        }
        if cache.at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            cache.reserved = inv.db.reserved_ips().await?.iter().filter_map(|i| i.parse().ok()).collect();
            cache.collecting = inv.db.collect_until().await? > now as i64;
            cache.at = Some(Instant::now());
        }
        let node = inv.db.node_by_mac(&mac_str(&mac)).await?;
        let known = Known {
            reserved_ip: node
                .as_ref()
                .and_then(|n| n.ips.iter().filter_map(|i| i.parse::<Ipv4Addr>().ok()).find(|ip| s.in_subnet(*ip))),
            state: node.as_ref().map(|n| n.state.clone()),
            node: node.map(|n| n.name),
            all_reserved: cache.reserved.clone(),
            collecting: cache.collecting,
        };
        let info = policy::client_info(&req);
        if known.collecting && req.opts().has_msg_type(dhcproto::v4::MessageType::Discover) {
            inv.db.record_discovered(&mac_str(&mac), info.arch, &info.vendor_class, &cfg.interface).await?;
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
        // Durable before the reply leaves.
        if let Some(l) = &out.put {
            let row = crate::db::LeaseRow {
                ip: l.ip.to_string(),
                mac: mac_str(&l.mac),
                expires: l.expires as i64,
                state: if l.bound { "bound".into() } else { "offered".into() },
            };
            inv.db.put_lease(&row).await?;
            leases.by_ip.retain(|_, x| x.mac != l.mac || x.ip == l.ip);
            leases.by_ip.insert(l.ip, l.clone());
        }
        if let Some(ip) = out.removed {
            inv.db.delete_lease(&ip.to_string()).await?;
            leases.by_ip.remove(&ip);
        }
        if let Some(reply) = out.reply {
            let (dst, port) = policy::destination(&req, &reply);
            // proxyDHCP answers on 4011 go back to the client's port.
            let port = if i == 1 { from.port() } else { port };
            let dst = if i == 1 {
                match from {
                    SocketAddr::V4(a) => *a.ip(),
                    _ => dst,
                }
            } else {
                dst
            };
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
