//! The read-only TFTP service of `understudy serve` (RRQ only; network boot needs no
//! more). One socket on the listen address takes requests; every transfer gets its own
//! ephemeral socket (its TID, RFC 1350) and tokio task. What to send when — the OACK,
//! windows of blocks (RFC 7440), retransmission with exponential backoff, the retry budget,
//! the end — is decided by the pure [`transfer::Transfer`]; the task only carries it out
//! (reads, `sendmmsg` batches, timers). A semaphore caps concurrent transfers; a client
//! ERROR at any point ends its transfer.
//!
//! This is our own small server rather than async-tftp 0.4.2: that crate ignores a client
//! ERROR after OACK (UEFI firmware sends a tsize probe and then an ERROR, so each boot
//! would pin a transfer until it times out), serialises file opens behind a mutex, runs its
//! own executor beside tokio, and hands custom handlers the raw path anyway, so its
//! safety would be ours to write regardless.

pub mod packet;
pub mod path;
pub mod transfer;

use crate::config::TftpConfig;
use crate::ratelog::LogLimit;
use packet::{Limits, Packet, PacketError};
use path::{PathError, Root};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use transfer::{Blocks, Failure, Step, Transfer, TransferConfig};

/// TFTP service errors (start-up only; transfer failures are logged, not returned).
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The request socket cannot be set up.
    #[error("TFTP socket on {addr}: {source}")]
    Socket {
        /// The listen address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The root directory cannot be opened.
    #[error("TFTP root {path}: {source}")]
    Root {
        /// The configured root.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file the server makes cannot be set up.
    #[error("TFTP generated file {name}: {why}")]
    Generated {
        /// Its name.
        name: String,
        /// What went wrong.
        why: String,
    },
}

/// Why one transfer ended early.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("client sent ERROR {0}: {1}")]
    ClientError(u16, String),
    #[error("client went away (port unreachable)")]
    ClientGone,
    #[error("no answer after {0} retransmissions")]
    GaveUp(u32),
    #[error("file changed size during the transfer")]
    FileChanged,
    #[error("server shutting down")]
    Shutdown,
    #[error("I/O: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for TransferError {
    fn from(e: std::io::Error) -> Self {
        // On a connected UDP socket an ICMP port unreachable surfaces as ECONNREFUSED:
        // the client's socket is gone, so waiting out the retry budget would only hold
        // the slot.
        if e.kind() == std::io::ErrorKind::ConnectionRefused { TransferError::ClientGone } else { TransferError::Io(e) }
    }
}

/// What every transfer task shares.
struct Shared {
    root: Root,
    limits: Limits,
    timeout: Duration,
    retries: u32,
    listen: SocketAddr,
    log: Mutex<LogLimit>,
    /// Clients (address and port) with a transfer running: a retransmitted RRQ must not
    /// start a second transfer and take a second slot.
    active: Mutex<HashSet<SocketAddr>>,
    /// Files the server makes (the Secure Boot GRUB's config), served before the root's:
    /// path relative to the root, an anonymous in-memory file and its size.
    generated: std::collections::HashMap<std::path::PathBuf, (std::fs::File, u64)>,
    /// Files made per request by the server (the Secure Boot GRUB's per-node script and
    /// the boot environment under a deployment token), asked before the root.
    resolver: Option<Arc<dyn Resolver>>,
}

/// What a [`Resolver`] answers for a name.
pub type Resolved = Option<Result<(std::fs::File, u64), PathError>>;

/// Files the server makes when they are asked for: `None` for a name it does not make
/// (the root is tried next), else the file or why the client cannot have it.
pub trait Resolver: Send + Sync {
    /// Resolve `rel` (already checked by [`path::sanitize`]) for the client at `peer`.
    fn resolve<'a>(
        &'a self,
        rel: &'a std::path::Path,
        peer: std::net::IpAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Resolved> + Send + 'a>>;
}

/// An anonymous in-memory file holding `content`, for serving made-up files.
pub fn memory_file(content: &[u8]) -> std::io::Result<(std::fs::File, u64)> {
    let fd = rustix::fs::memfd_create("understudy-tftp", rustix::fs::MemfdFlags::CLOEXEC)?;
    let f = std::fs::File::from(fd);
    f.write_all_at(content, 0)?;
    Ok((f, content.len() as u64))
}

impl Shared {
    fn warn(&self, kind: &'static str, msg: impl FnOnce() -> String) {
        if let Ok(mut l) = self.log.lock() {
            l.warn(kind, msg);
        }
    }
}

/// Removes a client from the active set however its task ends.
struct Slot {
    shared: Arc<Shared>,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut a) = self.shared.active.lock() {
            a.remove(&self.peer);
        }
    }
}

/// A bound, not yet running TFTP service.
pub struct Service {
    sock: UdpSocket,
    shared: Arc<Shared>,
    max_transfers: usize,
}

/// The request socket, with a receive buffer large enough for a burst of RRQs from a
/// rack of machines booting at once.
fn bind(addr: SocketAddr) -> Result<UdpSocket, TftpError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| TftpError::Socket { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    // Best effort: the kernel caps it at rmem_max.
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&addr.into()).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

impl Service {
    /// Open the root and bind the request socket, so configuration errors fail the start.
    pub fn bind(cfg: &TftpConfig) -> Result<Service, TftpError> {
        let root = Root::open(&cfg.root).map_err(|source| TftpError::Root { path: cfg.root.clone(), source })?;
        let sock = bind(cfg.listen)?;
        let listen = sock.local_addr().map_err(|source| TftpError::Socket { addr: cfg.listen, source })?;
        let shared = Arc::new(Shared {
            root,
            limits: Limits { max_blksize: cfg.max_blksize, max_windowsize: packet::MAX_WINDOWSIZE },
            timeout: cfg.timeout,
            retries: cfg.retries,
            listen,
            log: Mutex::new(LogLimit::new("tftp")),
            active: Mutex::default(),
            generated: Default::default(),
            resolver: None,
        });
        Ok(Service { sock, shared, max_transfers: cfg.max_transfers })
    }

    /// Serve `content` as `name` (relative to the root, e.g. `grub/grub.cfg`), ahead of any
    /// file of that name in the root.
    pub fn with_generated(mut self, name: &str, content: &[u8]) -> Result<Service, TftpError> {
        let rel = path::sanitize(name).map_err(|e| TftpError::Generated { name: name.into(), why: e.to_string() })?;
        let file = memory_file(content).map_err(|e| TftpError::Generated { name: name.into(), why: e.to_string() })?;
        let shared = Arc::get_mut(&mut self.shared)
            .ok_or_else(|| TftpError::Generated { name: name.into(), why: "the service is already running".into() })?;
        shared.generated.insert(rel, file);
        Ok(self)
    }

    /// Ask `r` for every name before the root (see [`Resolver`]).
    pub fn with_resolver(mut self, r: Arc<dyn Resolver>) -> Result<Service, TftpError> {
        let shared = Arc::get_mut(&mut self.shared).ok_or_else(|| TftpError::Generated {
            name: "(resolver)".into(),
            why: "the service is already running".into(),
        })?;
        shared.resolver = Some(r);
        Ok(self)
    }

    /// The bound request address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Serve requests until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TftpError> {
        let Service { sock, shared, max_transfers } = self;
        tracing::info!(
            "TFTP on {} serving {} (at most {max_transfers} transfers)",
            shared.listen,
            shared.root.path().display()
        );
        let slots = Arc::new(Semaphore::new(max_transfers));
        // Requests are small; anything longer than this is truncated and then refused.
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, peer) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = sock.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        shared.warn("recv", || format!("receive failed: {e}"));
                        continue;
                    }
                },
            };
            let reply = match packet::decode(&buf[..n]) {
                Ok(Packet::Read(req)) => {
                    let fresh = shared.active.lock().map(|mut a| a.insert(peer)).unwrap_or(false);
                    if !fresh {
                        continue;
                    }
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let slot = Slot { shared: shared.clone(), peer, _permit: permit };
                            tokio::spawn(transfer(slot, req, shutdown.clone()));
                            continue;
                        }
                        Err(_) => {
                            if let Ok(mut a) = shared.active.lock() {
                                a.remove(&peer);
                            }
                            shared.warn("busy", || format!("{max_transfers} transfers running; refusing {peer}"));
                            packet::error(packet::E_UNDEFINED, "server busy, try again later")
                        }
                    }
                }
                Ok(Packet::Write(req)) => {
                    shared.warn("write", || format!("refused write request from {peer} for {:?}", req.filename));
                    packet::error(packet::E_ACCESS, "read-only server")
                }
                // Never answer an ERROR: two confused peers would bounce errors forever.
                Ok(Packet::Error(..)) => continue,
                Ok(_) => packet::error(packet::E_ILLEGAL, "only read requests on this port"),
                Err(_) if packet::opcode(&buf[..n]) == Some(packet::ERROR) => continue,
                Err(e @ PacketError::Mode(_)) => packet::error(packet::E_ILLEGAL, &e.to_string()),
                Err(e) => {
                    shared.warn("malformed", || format!("malformed packet from {peer}: {e}"));
                    packet::error(packet::E_ILLEGAL, "malformed request")
                }
            };
            if let Err(e) = sock.send_to(&reply, peer).await {
                shared.warn("send", || format!("send to {peer} failed: {e}"));
            }
        }
    }
}

/// Run until `shutdown` (binds first; see [`Service::bind`]).
pub async fn serve(cfg: TftpConfig, shutdown: CancellationToken) -> Result<(), TftpError> {
    Service::bind(&cfg)?.run(shutdown).await
}

/// One transfer, logged when it ends.
async fn transfer(slot: Slot, req: packet::Request, shutdown: CancellationToken) {
    let (shared, peer) = (slot.shared.clone(), slot.peer);
    let started = Instant::now();
    match send_file(&shared, peer, &req, &shutdown).await {
        Ok(size) => tracing::debug!(
            "tftp: sent {:?} ({size} bytes) to {peer} in {:.3}s",
            req.filename,
            started.elapsed().as_secs_f64()
        ),
        Err(TransferError::ClientError(code, msg)) => {
            // Routine: UEFI asks for the size, then aborts with an ERROR.
            tracing::debug!("tftp: {peer} ended {:?} with ERROR {code} {msg:?}", req.filename)
        }
        Err(TransferError::Shutdown) => {}
        Err(e) => shared.warn("transfer", || format!("{peer} {:?}: {e}", req.filename)),
    }
    drop(slot);
}

/// What the peer sent while we waited.
enum Event {
    Ack(u16),
    Error(u16, String),
    Other,
    Timeout,
}

/// Wait for one datagram until `deadline`; shutdown ends the transfer.
async fn next_event(
    sock: &UdpSocket,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
    shutdown: &CancellationToken,
) -> Result<Event, TransferError> {
    let n = tokio::select! {
        _ = shutdown.cancelled() => return Err(TransferError::Shutdown),
        r = tokio::time::timeout_at(deadline, sock.recv(buf)) => match r {
            Err(_) => return Ok(Event::Timeout),
            Ok(r) => r?,
        },
    };
    Ok(match packet::decode(&buf[..n]) {
        Ok(Packet::Ack(b)) => Event::Ack(b),
        Ok(Packet::Error(code, msg)) => Event::Error(code, msg),
        Err(_) if packet::opcode(&buf[..n]) == Some(packet::ERROR) => Event::Error(0, String::new()),
        _ => Event::Other,
    })
}

impl From<Failure> for TransferError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::GaveUp(n) => TransferError::GaveUp(n),
            Failure::ClientError(code, msg) => TransferError::ClientError(code, msg),
        }
    }
}

/// Send the requested file; returns its size. The decisions are [`Transfer`]'s; this
/// loop sends what it says, waits for the client until its timeout and reports back.
async fn send_file(
    sh: &Shared,
    peer: SocketAddr,
    req: &packet::Request,
    shutdown: &CancellationToken,
) -> Result<u64, TransferError> {
    // A new socket is the transfer's TID; connecting it makes the kernel drop datagrams
    // from anyone but this client.
    let sock = UdpSocket::bind(SocketAddr::new(sh.listen.ip(), 0)).await?;
    sock.connect(peer).await?;
    let opened = match path::sanitize(&req.filename) {
        Err(e) => Err(e),
        Ok(rel) => match sh.generated.get(&rel) {
            Some((f, size)) => f.try_clone().map(|f| (f, *size)).map_err(PathError::Denied),
            None => {
                let made = match &sh.resolver {
                    Some(r) => r.resolve(&rel, peer.ip()).await,
                    None => None,
                };
                made.unwrap_or_else(|| sh.root.open_file(&rel))
            }
        },
    };
    let (file, size) = match opened {
        Ok(x) => x,
        Err(e) => {
            let code = if matches!(e, PathError::NotFound) { packet::E_NOT_FOUND } else { packet::E_ACCESS };
            let _ = sock.send(&packet::error(code, &e.to_string())).await;
            return Err(e.into());
        }
    };
    let neg = packet::negotiate(&req.options, size, sh.limits);
    let (mut transfer, mut step) = Transfer::new(TransferConfig::negotiated(&neg, size, sh.timeout, sh.retries));
    let oack = packet::oack(&neg.oack);
    let blk = usize::from(neg.blksize.max(1));
    let window = usize::from(neg.windowsize.max(1));
    let mut rx = [0u8; 1024];
    let mut ra = ReadAhead::new((blk * window) as u64, size);
    let mut pkts = vec![0u8; (4 + blk) * window];
    let mut deadline = tokio::time::Instant::now();
    loop {
        match step {
            Step::Oack { timeout } => {
                sock.send(&oack).await?;
                deadline = tokio::time::Instant::now() + timeout;
            }
            Step::Data { blocks, timeout } => {
                send_window(&sock, &file, size, blk, &blocks, &mut ra, &mut pkts).await?;
                deadline = tokio::time::Instant::now() + timeout;
            }
            Step::Wait => {}
            Step::Done => return Ok(size),
            Step::Fail(f) => return Err(f.into()),
        }
        step = match next_event(&sock, &mut rx, deadline, shutdown).await? {
            Event::Ack(b) => transfer.on_ack(b),
            Event::Error(code, msg) => transfer.on_error(code, msg),
            Event::Timeout => transfer.on_timeout(),
            Event::Other => Step::Wait,
        };
    }
}

/// A read-ahead buffer over the file: lock-step transfers ask for one block at a time,
/// and one positional read per 256 KiB instead of per block saves most of the syscalls.
/// Boot files are small and hot in the page cache, so reads stay in the task rather than
/// paying a thread hop.
struct ReadAhead {
    buf: Vec<u8>,
    off: u64,
    len: usize,
}

/// Read-ahead size (at least one window).
const READ_AHEAD: u64 = 256 << 10;

impl ReadAhead {
    /// Never more than the file: a large blksize times a wide window would otherwise cost
    /// megabytes per transfer for a tiny file.
    fn new(window_bytes: u64, size: u64) -> ReadAhead {
        ReadAhead { buf: vec![0u8; window_bytes.max(READ_AHEAD).min(size) as usize], off: 0, len: 0 }
    }

    /// `want` bytes at `off` (the caller keeps `off + want` within the file).
    fn get(&mut self, file: &std::fs::File, size: u64, off: u64, want: usize) -> Result<&[u8], TransferError> {
        let cached = off >= self.off && off + want as u64 <= self.off + self.len as u64;
        if !cached {
            let fill = (size - off).min(self.buf.len() as u64) as usize;
            let mut got = 0;
            while got < fill {
                match file.read_at(&mut self.buf[got..fill], off + got as u64) {
                    Ok(0) => return Err(TransferError::FileChanged),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(TransferError::Io(e)),
                }
            }
            (self.off, self.len) = (off, fill);
        }
        let start = (off - self.off) as usize;
        Ok(&self.buf[start..start + want])
    }
}

/// Send `blocks`: their packets are laid out in `pkts` (one per `4 + blk` bytes) and
/// handed to the kernel with one `sendmmsg` (a window of 16 costs one syscall, not 16).
async fn send_window(
    sock: &UdpSocket,
    file: &std::fs::File,
    size: u64,
    blk: usize,
    blocks: &Blocks,
    ra: &mut ReadAhead,
    pkts: &mut [u8],
) -> Result<(), TransferError> {
    let off = blocks.offset();
    let win = ra.get(file, size, off, blocks.bytes())?;
    let stride = 4 + blk;
    let mut lens = Vec::with_capacity(blocks.count());
    for b in blocks.iter() {
        let start = (b.offset - off) as usize;
        let p = &mut pkts[lens.len() * stride..];
        packet::data_header(p, b.number);
        p[4..4 + b.len].copy_from_slice(&win[start..start + b.len]);
        lens.push(4 + b.len);
    }
    let mut sent = 0;
    while sent < lens.len() {
        sent += send_batch(sock, pkts, stride, &lens[sent..], sent).await?;
    }
    Ok(())
}

/// One `sendmmsg` of the packets `lens` (packet `i` starts at `(skip + i) * stride` in
/// `pkts`) on the connected socket; returns how many the kernel took (at least one).
// sendmmsg has no safe wrapper in the crates used here; the two unsafe blocks below say why they hold.
#[allow(unsafe_code)]
async fn send_batch(
    sock: &UdpSocket,
    pkts: &[u8],
    stride: usize,
    lens: &[usize],
    skip: usize,
) -> Result<usize, TransferError> {
    use std::os::fd::AsRawFd;
    loop {
        sock.writable().await?;
        let r = sock.try_io(tokio::io::Interest::WRITABLE, || {
            let mut iov: Vec<libc::iovec> = lens
                .iter()
                .enumerate()
                .map(|(i, &len)| libc::iovec {
                    iov_base: pkts[(skip + i) * stride..].as_ptr() as *mut libc::c_void,
                    iov_len: len,
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: an all-zero msghdr is valid (no name, no control data).
                    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    h.msg_hdr.msg_iov = v as *mut libc::iovec;
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            // SAFETY: every iovec points into `pkts`, alive and unmoved for the call; the
            // socket is connected, so no address is needed.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0) };
            if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
        });
        match r {
            Ok(0) => continue,
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_serves_every_range_byte_exact() {
        use std::io::Write;
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let size = data.len() as u64;
        let mut ra = ReadAhead::new(1468, size);
        for (off, want) in [(0u64, 1468usize), (1468, 1468), (262_000, 1468), (0, 10), (698_532, 1468), (size, 0)] {
            assert_eq!(ra.get(&f, size, off, want).unwrap(), &data[off as usize..off as usize + want], "{off}");
        }
        // A file that shrank under us is an error, not short data.
        let mut small = ReadAhead::new(512, 4096);
        assert!(matches!(small.get(&f, 800_000, 700_000, 10), Err(TransferError::FileChanged)));
    }
}
