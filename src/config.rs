//! The TOML configuration of `understudy serve`. Every key is documented in README;
//! unknown keys are errors, reported with their line and column.

use crate::failover::FailoverConfig;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Config errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not parse or a value is invalid.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong (names the key).
        message: String,
    },
    /// A value is well-formed but not usable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// What kind of failure this is.
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                crate::error::ErrorKind::NotFound
            }
            ConfigError::Read { .. } => crate::error::ErrorKind::Io,
            ConfigError::Parse { .. } | ConfigError::Invalid { .. } => crate::error::ErrorKind::Invalid,
        }
    }
}

/// A setting's value that does not parse; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

impl From<ValueError> for String {
    fn from(e: ValueError) -> String {
        e.0
    }
}

impl From<String> for ValueError {
    fn from(s: String) -> ValueError {
        ValueError(s)
    }
}

impl From<&str> for ValueError {
    fn from(s: &str) -> ValueError {
        ValueError(s.into())
    }
}

/// Parse a duration such as `500ms`, `30s`, `5m`, `12h`, `7d` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ValueError("empty duration".into()));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(ValueError(format!("invalid duration {s:?}: expected a number")));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| ValueError(format!("invalid duration {s:?}")))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => return Err(ValueError(format!("invalid duration {s:?}: missing unit (ms, s, m, h, d)"))),
            u => return Err(ValueError(format!("invalid duration {s:?}: unknown unit {u:?} (use ms, s, m, h, d)"))),
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

/// Parse a size such as `1048576`, `512KiB`, `64MiB` or `1GiB`.
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().map_err(|_| ValueError(format!("invalid size {s:?}")))?;
    let mult = match s[digits..].trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        u => return Err(ValueError(format!("invalid size {s:?}: unknown unit {u:?} (use B, KiB, MiB, GiB)"))),
    };
    n.checked_mul(mult).ok_or_else(|| ValueError(format!("size {s:?} is too large")))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        T(String),
    }
    match S::deserialize(d)? {
        S::N(n) => Ok(n),
        S::T(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory (store + inventory). Overrides `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// The HTTP service; absent means no HTTP (e.g. a failover-only standby).
    pub http: Option<HttpConfig>,
    /// The DHCP service; absent means no DHCP.
    pub dhcp: Option<DhcpConfig>,
    /// Heartbeat and failover (see [`crate::failover::config`]); absent means none.
    pub failover: Option<FailoverConfig>,
    /// The TFTP service; absent means no TFTP.
    pub tftp: Option<TftpConfig>,
    /// Network boot over HTTP (per-node iPXE scripts, kernel, initramfs); defaults apply.
    #[serde(default)]
    pub boot: BootConfig,
    /// Scheduled re-captures (the primary; see [`crate::sync::config`]); absent means none.
    pub capture: Option<crate::sync::CaptureConfig>,
    /// Follow the primary's newest image version (a standby); absent means none.
    pub sync: Option<crate::sync::SyncConfig>,
}

/// `[boot]`: what `GET /boot/{mac}.ipxe` hands out and where the boot files live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootConfig {
    /// Kernel and initramfs directory (what `understudy pxe build` writes), relative to the data dir.
    pub dir: PathBuf,
    /// iPXE binaries served over HTTP for UEFI HTTP boot; default the TFTP root, else `pxe`.
    pub pxe_dir: Option<PathBuf>,
    /// Extra kernel command line for the boot environment.
    pub cmdline: String,
    /// URL the agent reaches the server at; default `http://` + the Host the script was fetched from.
    pub server_url: Option<String>,
    /// How long a waiting machine (unknown MAC, node without image, failed deploy) sleeps between checks.
    #[serde(deserialize_with = "de_duration")]
    pub retry_interval: Duration,
    /// Checks before a waiting machine powers off.
    pub retries: u32,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            dir: PathBuf::from("boot"),
            pxe_dir: None,
            cmdline: "console=tty0 console=ttyS0,115200".into(),
            server_url: None,
            retry_interval: Duration::from_secs(30),
            retries: 120,
        }
    }
}

/// `[tftp]`: read-only TFTP for network boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpConfig {
    /// Address and port requests arrive on; transfers use ephemeral ports on the same address.
    pub listen: SocketAddr,
    /// Directory served; relative paths resolve against the current directory at start.
    pub root: PathBuf,
    /// Largest block size granted (default 1468: a 1500-byte MTU less IP, UDP and TFTP headers).
    pub max_blksize: u16,
    /// Most concurrent transfers; more requests are answered "busy".
    pub max_transfers: usize,
    /// First retransmission timeout (doubles per retry) unless the client negotiates one.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Retransmissions before a silent client's transfer is abandoned and its slot freed.
    pub retries: u32,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            root: PathBuf::from("pxe"),
            max_blksize: 1468,
            max_transfers: 512,
            timeout: Duration::from_secs(1),
            retries: 5,
        }
    }
}

/// `[dhcp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    /// Interface to serve on (the socket is bound to it; nothing else is answered).
    pub interface: String,
    /// This server's address on that interface (server identifier, next-server).
    pub server_ip: std::net::Ipv4Addr,
    /// The served subnet, `a.b.c.d/len`.
    pub subnet: String,
    /// Dynamic pool, `first-last`, inside the subnet.
    pub range: String,
    /// Default gateway handed out.
    pub router: Option<std::net::Ipv4Addr>,
    /// DNS servers handed out.
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Lease time.
    #[serde(default = "default_lease", deserialize_with = "de_duration")]
    pub lease_time: Duration,
    /// `server` (hands out addresses) or `proxy` (boot information only).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Base URL iPXE clients fetch their scripts from; default `http://SERVER_IP:HTTP_PORT`.
    pub http_boot_url: Option<String>,
    /// Replies per second allowed to one MAC (flood guard).
    #[serde(default = "default_rate")]
    pub per_mac_rate: u32,
    /// What UEFI x86-64 PXE clients load: `ipxe` (snponly.efi) or `shim` (Debian's signed
    /// shimx64.efi, then the signed GRUB network image as grubx64.efi: the Secure Boot chain).
    #[serde(default)]
    pub uefi_loader: UefiLoader,
}

/// The first loader of UEFI x86-64 PXE clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UefiLoader {
    /// iPXE (`snponly.efi`), then the per-node iPXE script.
    #[default]
    Ipxe,
    /// Signed shim (`shimx64.efi`), signed GRUB (`grubx64.efi`), then the per-node GRUB
    /// script over HTTP: boots with Secure Boot on.
    Shim,
}

fn default_lease() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_mode() -> String {
    "server".into()
}

fn default_rate() -> u32 {
    10
}

/// Parse `a.b.c.d/len` into (network, prefix length).
pub fn parse_subnet(s: &str) -> Result<(std::net::Ipv4Addr, u8), ValueError> {
    let (a, l) = s.split_once('/').ok_or_else(|| ValueError(format!("subnet {s:?} must look like 10.0.0.0/24")))?;
    let ip: std::net::Ipv4Addr = a.trim().parse().map_err(|_| ValueError(format!("subnet {s:?}: bad address")))?;
    let len: u8 = l
        .trim()
        .parse()
        .ok()
        .filter(|l| (8..=30).contains(l))
        .ok_or_else(|| ValueError(format!("subnet {s:?}: prefix must be 8..=30")))?;
    let mask = u32::MAX << (32 - len);
    Ok((std::net::Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// Parse `first-last`.
pub fn parse_range(s: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr), ValueError> {
    let (a, b) =
        s.split_once('-').ok_or_else(|| ValueError(format!("range {s:?} must look like 10.0.0.100-10.0.0.200")))?;
    let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| ValueError(format!("range {s:?}: bad first address")))?;
    let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| ValueError(format!("range {s:?}: bad last address")))?;
    if u32::from(a) > u32::from(b) {
        return Err(ValueError(format!("range {s:?}: first address is after the last")));
    }
    Ok((a, b))
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Admin bearer token file, relative to the data dir; created 0600 when missing.
    pub admin_token_file: PathBuf,
    /// The followers' token file (a standby's `[sync]`: it reads images and reports its
    /// freshness, nothing else), relative to the data dir; created 0600 when missing.
    pub sync_token_file: PathBuf,
    /// Allow GET on image and node lists without a token.
    pub public_reads: bool,
    /// Largest accepted request body for ordinary API calls.
    #[serde(deserialize_with = "de_size")]
    pub body_limit: u64,
    /// Largest accepted body of a chunk-stream request (its list of chunk ids).
    #[serde(deserialize_with = "de_size")]
    pub stream_body_limit: u64,
    /// Time limit for reading a request and producing a response head.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// A streaming client that reads nothing for this long is disconnected.
    #[serde(deserialize_with = "de_duration")]
    pub stream_stall_timeout: Duration,
    /// Lifetime of per-deployment tokens.
    #[serde(deserialize_with = "de_duration")]
    pub deploy_token_ttl: Duration,
    /// Most concurrent requests; more wait.
    pub max_concurrent_requests: usize,
    /// Serve the admin's web console at `/` (false: only the API).
    pub console: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token_file: PathBuf::from("admin.token"),
            sync_token_file: PathBuf::from("sync.token"),
            public_reads: false,
            body_limit: 1 << 20,
            stream_body_limit: 64 << 20,
            request_timeout: Duration::from_secs(30),
            stream_stall_timeout: Duration::from_secs(60),
            deploy_token_ttl: Duration::from_secs(24 * 3600),
            max_concurrent_requests: 512,
            console: true,
        }
    }
}

impl Config {
    /// The configuration `serve` runs with when no file is given.
    pub fn embedded_default() -> Config {
        Config {
            data_dir: None,
            http: Some(HttpConfig::default()),
            dhcp: None,
            tftp: None,
            failover: None,
            boot: BootConfig::default(),
            capture: None,
            sync: None,
        }
    }

    /// Parse TOML text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError::Parse { path: path.into(), line, column, message: e.message().to_string() }
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |m: String| ConfigError::Invalid { path: path.into(), message: m };
        let bad = |m: String| Err(invalid(m));
        if let Some(d) = &self.dhcp {
            let (net, len) = parse_subnet(&d.subnet).map_err(|e| invalid(format!("dhcp.subnet: {e}")))?;
            let (a, b) = parse_range(&d.range).map_err(|e| invalid(format!("dhcp.range: {e}")))?;
            let inside = |ip: std::net::Ipv4Addr| u32::from(ip) & (u32::MAX << (32 - len)) == u32::from(net);
            if !inside(a) || !inside(b) {
                return bad(format!("dhcp.range {} is not inside dhcp.subnet {}", d.range, d.subnet));
            }
            if !inside(d.server_ip) {
                return bad(format!("dhcp.server_ip {} is not inside dhcp.subnet {}", d.server_ip, d.subnet));
            }
            if d.mode != "server" && d.mode != "proxy" {
                return bad(format!("dhcp.mode must be \"server\" or \"proxy\", not {:?}", d.mode));
            }
            if d.interface.is_empty() || d.interface.len() > 15 {
                return bad("dhcp.interface must name a network interface".into());
            }
            if d.lease_time < Duration::from_secs(60) {
                return bad("dhcp.lease_time must be at least 60s".into());
            }
        }
        if let Some(t) = &self.tftp {
            if t.max_blksize < 8 || t.max_blksize > 65464 {
                return bad("tftp.max_blksize must be 8..=65464".into());
            }
            if t.max_transfers == 0 {
                return bad("tftp.max_transfers must be at least 1".into());
            }
            if t.timeout < Duration::from_millis(10) || t.timeout > Duration::from_secs(255) {
                return bad("tftp.timeout must be 10ms..=255s".into());
            }
            if t.retries == 0 || t.retries > 20 {
                return bad("tftp.retries must be 1..=20".into());
            }
            if t.root.as_os_str().is_empty() {
                return bad("tftp.root must name a directory".into());
            }
        }
        if let Some(h) = &self.http {
            for (key, f) in [("admin_token_file", &h.admin_token_file), ("sync_token_file", &h.sync_token_file)] {
                if f.is_absolute() || f.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    return bad(format!("http.{key} must be a relative path inside the data dir"));
                }
            }
            if h.admin_token_file == h.sync_token_file {
                return bad("http.sync_token_file must not be the admin token file".into());
            }
            if h.body_limit < 1024 {
                return bad("http.body_limit must be at least 1KiB".into());
            }
            if h.request_timeout.is_zero() || h.stream_stall_timeout.is_zero() || h.deploy_token_ttl.is_zero() {
                return bad("http timeouts and deploy_token_ttl must be greater than zero".into());
            }
            if h.max_concurrent_requests == 0 {
                return bad("http.max_concurrent_requests must be at least 1".into());
            }
        }
        let b = &self.boot;
        if b.dir.is_absolute() || b.dir.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return bad("boot.dir must be a relative path inside the data dir".into());
        }
        if let Err(m) = crate::boot::check_cmdline(&b.cmdline) {
            return bad(format!("boot.cmdline: {m}"));
        }
        if let Some(u) = &b.server_url
            && let Err(m) = crate::boot::check_server_url(u)
        {
            return bad(format!("boot.server_url: {m}"));
        }
        if b.retry_interval < Duration::from_secs(1) || b.retry_interval > Duration::from_secs(3600) {
            return bad("boot.retry_interval must be 1s..=1h".into());
        }
        if b.retries == 0 {
            return bad("boot.retries must be at least 1".into());
        }
        if let Some(f) = &self.failover
            && let Err(m) = f.validate()
        {
            return bad(m.to_string());
        }
        if let Some(c) = &self.capture
            && let Err(m) = c.validate()
        {
            return bad(m.to_string());
        }
        if let Some(c) = &self.sync
            && let Err(m) = c.validate()
        {
            return bad(m.to_string());
        }
        Ok(())
    }

    /// Problems that do not stop the service but must be shown loudly (such as a failover
    /// with a single heartbeat channel). The caller logs them.
    pub fn warnings(&self) -> Vec<String> {
        self.failover.as_ref().and_then(|f| f.validate().ok()).unwrap_or_default()
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| before.len() - i).unwrap_or(before.len() + 1);
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in ["", "12", "h", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            "data_dir = \"/var/lib/understudy\"\n[http]\nlisten = \"127.0.0.1:9000\"\nadmin_token_file = \"admin.token\"\npublic_reads = true\nbody_limit = \"2MiB\"\nrequest_timeout = \"10s\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let h = c.http.unwrap();
        assert_eq!(h.listen.port(), 9000);
        assert!(h.public_reads);
        assert_eq!(h.body_limit, 2 << 20);
    }

    const FAILOVER: &str = "[failover]\nnode = \"head-b\"\nrole = \"standby\"\npriority = 100\n\
        key_file = \"failover.key\"\ninterval = \"100ms\"\ndead_time = \"500ms\"\n\
        [[failover.channel]]\nname = \"private\"\nlocal = \"10.0.0.2\"\npeer = \"10.0.0.1\"\n\
        [[failover.vip]]\naddress = \"198.51.100.10/24\"\ninterface = \"eth1\"\n";

    #[test]
    fn failover_section_parses_with_warnings() {
        let c = Config::parse(FAILOVER, Path::new("f.toml")).unwrap();
        let f = c.failover.as_ref().unwrap();
        assert_eq!(f.node, "head-b");
        assert_eq!(f.dead_time, Duration::from_millis(500));
        assert!(c.http.is_none());
        let w = c.warnings();
        assert!(w.iter().any(|w| w.contains("single heartbeat channel")), "{w:?}");
        assert!(Config::embedded_default().warnings().is_empty());
    }

    #[test]
    fn failover_errors_name_the_key() {
        let e = Config::parse(&FAILOVER.replace("dead_time = \"500ms\"", "dead_time = \"150ms\""), Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml: failover.dead_time"), "{e}");
        let e = Config::parse(
            &FAILOVER.replace("interface = \"eth1\"", "interface = \"eth1\"\nnetmask = 3"),
            Path::new("f.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("f.toml:") && e.contains("netmask"), "{e}");
    }

    #[test]
    fn dhcp_section() {
        let ok = "[dhcp]\ninterface = \"eth0\"\nserver_ip = \"10.0.0.1\"\nsubnet = \"10.0.0.0/24\"\nrange = \"10.0.0.100-10.0.0.200\"\nrouter = \"10.0.0.1\"\ndns = [\"10.0.0.1\"]\nlease_time = \"12h\"\nmode = \"server\"\n";
        let c = Config::parse(ok, Path::new("d.toml")).unwrap();
        assert_eq!(c.dhcp.unwrap().lease_time, Duration::from_secs(43200));
        let e = Config::parse(&ok.replace("10.0.0.200", "10.0.1.5"), Path::new("d.toml")).unwrap_err().to_string();
        assert!(e.contains("not inside"), "{e}");
        let e = Config::parse(&ok.replace("\"server\"", "\"relay\""), Path::new("d.toml")).unwrap_err().to_string();
        assert!(e.contains("dhcp.mode"), "{e}");
        assert_eq!(parse_subnet("10.0.0.77/24").unwrap(), ("10.0.0.0".parse().unwrap(), 24));
        assert!(parse_range("10.0.0.9-10.0.0.1").is_err());
    }

    #[test]
    fn tftp_section() {
        let c = Config::parse("[tftp]\nlisten = \"10.0.0.1:69\"\nroot = \"pxe\"\n", Path::new("t.toml")).unwrap();
        let t = c.tftp.unwrap();
        assert_eq!(t.listen, "10.0.0.1:69".parse().unwrap());
        assert_eq!((t.max_blksize, t.max_transfers, t.retries), (1468, 512, 5));
        assert_eq!(t.timeout, Duration::from_secs(1));
        let c = Config::parse("[tftp]\ntimeout = \"250ms\"\nretries = 3\nmax_transfers = 1\n", Path::new("t.toml"))
            .unwrap();
        assert_eq!(c.tftp.unwrap().timeout, Duration::from_millis(250));
        for (bad, key) in [
            ("max_blksize = 4", "max_blksize"),
            ("max_transfers = 0", "max_transfers"),
            ("timeout = \"1ms\"", "timeout"),
            ("retries = 0", "retries"),
        ] {
            let e = Config::parse(&format!("[tftp]\n{bad}\n"), Path::new("t.toml")).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = Config::parse("[tftp]\nwindow = 4\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:2:"), "{e}");
        assert!(Config::embedded_default().tftp.is_none());
    }

    #[test]
    fn capture_and_sync_sections() {
        let c = Config::parse(
            "[capture]\nimage = \"head-a\"\ninterval = \"5m\"\n[sync]\nserver = \"http://10.0.0.1:8080\"\n\
             token_file = \"primary.token\"\nimage = \"head-a\"\ntarget = \"/\"\ninterval = \"10s\"\nmax_lag = \"20m\"\n",
            Path::new("s.toml"),
        )
        .unwrap();
        assert_eq!(c.capture.unwrap().interval, Duration::from_secs(300));
        assert_eq!(c.sync.unwrap().max_lag, Duration::from_secs(1200));
        let e = Config::parse("[sync]\nserver = \"10.0.0.1\"\nimage = \"a\"\ntoken = \"t\"\n", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.toml: sync.server"), "{e}");
        let e = Config::parse("[capture]\nimage = \"a\"\ninterval = \"soon\"\n", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.toml:3:") && e.contains("duration"), "{e}");
        let e = Config::parse(
            "[sync]\nserver = \"http://h\"\nimage = \"a\"\ntoken = \"t\"\nlag = 3\n",
            Path::new("s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lag"), "{e}");
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = Config::parse("[http]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 3\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:3:") && e.contains("listen_typo"), "{e}");
        let e =
            Config::parse("[http]\nrequest_timeout = \"5 parsecs\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("c.toml:2:") && e.contains("duration"), "{e}");
        let e = Config::parse("[http]\nlisten = \"not an address\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains(":2:"), "{e}");
        let e = Config::parse("[http]\nadmin_token_file = \"../../etc/shadow\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin_token_file"), "{e}");
        for bad in ["sync_token_file = \"/etc/shadow\"", "sync_token_file = \"admin.token\""] {
            let e = Config::parse(&format!("[http]\n{bad}\n"), Path::new("c.toml")).unwrap_err().to_string();
            assert!(e.contains("sync_token_file"), "{bad}: {e}");
        }
    }
}
