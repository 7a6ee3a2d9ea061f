//! `[failover]`: heartbeat channels, VIPs, checks before a takeover, hooks and monitors.
//!
//! ```toml
//! [failover]
//! node = "head-a"                # this node's name: 1-32 of [A-Za-z0-9._-], unique in the pair
//! role = "primary"               # or "standby"
//! priority = 150                 # 1-254; ranks the nodes after role (default 100)
//! key_file = "failover.key"      # relative to data_dir; `understudy failover keygen FILE`
//!                                # writes one (0600); it may hold two keys during rotation
//! interval = "50ms"              # heartbeat interval (default 50ms, at least 10ms)
//! dead_time = "200ms"            # silence on every channel for this long = peer dead
//!                                # (default 200ms; must exceed 2 x interval)
//! dead_time_max = "2s"           # the dead time grows up to this while the peer's
//!                                # heartbeats come irregularly (2 x the longest gap of the
//!                                # last minute + interval); default the larger of 2s and
//!                                # dead_time; = dead_time turns adaptation off
//! realtime = true                # heartbeats on their own thread at SCHED_FIFO priority,
//!                                # memory locked, where permitted (default true)
//! tiebreaker = ["192.0.2.254"]   # optional: one must answer before a failover
//! tiebreaker_timeout = "1s"      # how long the probe may take (default 1s)
//! fence = ["/usr/sbin/fence_ipmilan", "-a", "10.1.0.2", "-l", "admin", "-o", "off"]
//!                                # optional: argv run before a failover; it must exit 0
//! fence_timeout = "60s"          # default 60s
//! failback = "manual"            # or "delayed 30s": the primary asks for the VIP back after
//!                                # holding healthy for 30 s while the standby holds it
//! start_hooks = [{ unit = "slurmctld.service" }, { command = ["/usr/local/sbin/promote"] }]
//! stop_hooks = [{ unit = "slurmctld.service" }]  # run in order after removing the VIP
//! hook_timeout = "120s"          # per hook list (default 120s)
//!
//! [[failover.channel]]           # one per detection channel; use two or more
//! name = "private"               # same name on both nodes (it is bound into each packet)
//! local = "10.0.0.1"
//! peer = "10.0.0.2"
//! port = 694                     # UDP port, default 694
//!
//! [[failover.vip]]
//! address = "198.51.100.10/24"
//! interface = "eth1"
//! label = "eth1:1"               # optional, IPv4 only, must start with "<interface>:"
//!
//! [[failover.monitor]]           # runs on the VIP holder
//! name = "slurmctld"
//! unit = "slurmctld.service"     # exactly one of: process, unit, tcp, http, command
//! interval = "5s"                # default 5s
//! timeout = "2s"                 # default 2s, at most the interval
//! fall = 3                       # failures in a row before it is down (default 3)
//! rise = 2                       # successes in a row before it is up (default 2)
//! restart = { unit = "slurmctld.service" }  # default for unit checks: restart that unit
//! restart_budget = 3             # restarts allowed per restart_window (default 3)
//! restart_window = "10m"
//! backoff = "2s"                 # first wait between restarts, doubling (default 2s)
//! backoff_max = "60s"
//! escalate = true                # out of budget: hand over if the peer is healthy
//! ```
//!
//! Other checks: `process = "slurmdbd"` (a process with that name exists),
//! `tcp = "127.0.0.1:6817"` (connects), `http = "http://127.0.0.1:8080/health"` with
//! `expect_status = 200`, `command = ["/usr/local/bin/check", "--quick"]` (exits 0).

use super::machine::{Failback, MachineConfig};
use super::monitor::MonitorPolicy;
use super::packet::{NodeName, Role};
use crate::config::{ValueError, parse_duration};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

fn de_dur<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn d_priority() -> u8 {
    100
}
fn d_key_file() -> PathBuf {
    PathBuf::from("failover.key")
}
fn de_opt_dur<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_dur(d).map(Some)
}

fn d_interval() -> Duration {
    ms(50)
}
fn d_dead_time() -> Duration {
    ms(200)
}

fn d_1s() -> Duration {
    ms(1000)
}
fn d_60s() -> Duration {
    ms(60_000)
}
fn d_120s() -> Duration {
    ms(120_000)
}
fn d_port() -> u16 {
    694
}

/// `[failover]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// This node's name.
    pub node: String,
    /// Configured role.
    pub role: Role,
    /// Priority, 1-254.
    #[serde(default = "d_priority")]
    pub priority: u8,
    /// Heartbeat key file, relative to the data dir.
    #[serde(default = "d_key_file")]
    pub key_file: PathBuf,
    /// Heartbeat interval.
    #[serde(default = "d_interval", deserialize_with = "de_dur")]
    pub interval: Duration,
    /// Silence on every channel for this long means the peer is dead (the floor of the
    /// adaptive dead time).
    #[serde(default = "d_dead_time", deserialize_with = "de_dur")]
    pub dead_time: Duration,
    /// The most the dead time grows to with measured jitter (None: the larger of 2 s and
    /// `dead_time`).
    #[serde(default, deserialize_with = "de_opt_dur")]
    pub dead_time_max: Option<Duration>,
    /// Run the heartbeat loop on its own real-time thread with locked memory, where permitted.
    #[serde(default = "d_true")]
    pub realtime: bool,
    /// Addresses probed before a failover; one must answer.
    #[serde(default)]
    pub tiebreaker: Vec<IpAddr>,
    /// Time limit of the tie-breaker probe.
    #[serde(default = "d_1s", deserialize_with = "de_dur")]
    pub tiebreaker_timeout: Duration,
    /// Fence command (argv) run against the peer before a failover.
    #[serde(default)]
    pub fence: Option<Vec<String>>,
    /// Time limit of the fence command.
    #[serde(default = "d_60s", deserialize_with = "de_dur")]
    pub fence_timeout: Duration,
    /// Fail-back policy.
    #[serde(default = "d_failback", deserialize_with = "de_failback")]
    pub failback: Failback,
    /// Hooks run in order after adding the VIP.
    #[serde(default)]
    pub start_hooks: Vec<Hook>,
    /// Hooks run in order after removing the VIP.
    #[serde(default)]
    pub stop_hooks: Vec<Hook>,
    /// Time limit of a hook list.
    #[serde(default = "d_120s", deserialize_with = "de_dur")]
    pub hook_timeout: Duration,
    /// Detection channels.
    #[serde(default, rename = "channel")]
    pub channels: Vec<Channel>,
    /// Virtual addresses moved on failover.
    #[serde(default, rename = "vip")]
    pub vips: Vec<Vip>,
    /// Service monitors.
    #[serde(default, rename = "monitor")]
    pub monitors: Vec<MonitorConfig>,
}

fn d_failback() -> Failback {
    Failback::Manual
}

/// Parse `manual` or `delayed <duration>`.
pub fn parse_failback(s: &str) -> Result<Failback, ValueError> {
    let s = s.trim();
    if s == "manual" {
        return Ok(Failback::Manual);
    }
    match s.strip_prefix("delayed") {
        Some(rest) if rest.starts_with(' ') => Ok(Failback::Delayed(parse_duration(rest)?)),
        _ => Err(format!("failback must be \"manual\" or \"delayed <duration>\", got {s:?}").into()),
    }
}

fn de_failback<'de, D: Deserializer<'de>>(d: D) -> Result<Failback, D::Error> {
    parse_failback(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// `[[failover.channel]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// Name, the same on both nodes.
    pub name: String,
    /// Our address on this network.
    pub local: IpAddr,
    /// The peer's address on this network.
    pub peer: IpAddr,
    /// UDP port.
    #[serde(default = "d_port")]
    pub port: u16,
}

/// `[[failover.vip]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// `ADDRESS/PREFIX`.
    pub address: String,
    /// Interface to add it to.
    pub interface: String,
    /// Optional IPv4 label (`eth1:1`).
    #[serde(default)]
    pub label: Option<String>,
}

impl Vip {
    /// The address and prefix length.
    pub fn parse_address(&self) -> Result<(IpAddr, u8), ValueError> {
        let (ip, prefix) = self
            .address
            .split_once('/')
            .ok_or_else(|| format!("vip address {:?} must be ADDRESS/PREFIX", self.address))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("vip address {:?}: bad IP address", self.address))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("vip address {:?}: bad prefix", self.address))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("vip address {:?}: prefix above {max}", self.address).into());
        }
        Ok((ip, prefix))
    }
}

/// A start, stop or restart hook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "HookSpec")]
pub enum Hook {
    /// `systemctl start|stop|restart UNIT`.
    Unit(String),
    /// Run this argv; it must exit 0.
    Command(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookSpec {
    unit: Option<String>,
    command: Option<Vec<String>>,
}

impl TryFrom<HookSpec> for Hook {
    type Error = ValueError;
    fn try_from(h: HookSpec) -> Result<Hook, ValueError> {
        match (h.unit, h.command) {
            (Some(u), None) if valid_unit(&u) => Ok(Hook::Unit(u)),
            (Some(u), None) => Err(format!("unit {u:?} is not a systemd unit name (such as \"x.service\")").into()),
            (None, Some(c)) if c.first().is_some_and(|p| !p.is_empty()) => Ok(Hook::Command(c)),
            (None, Some(_)) => Err("command must be a non-empty argv list".into()),
            _ => Err("a hook is either { unit = \"NAME\" } or { command = [\"ARGV\", ...] }".into()),
        }
    }
}

fn valid_unit(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 255
        && u.contains('.')
        && u.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
        && !u.starts_with('-')
}

/// What a monitor checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A process with this name exists.
    Process(String),
    /// This systemd unit is active.
    Unit(String),
    /// A TCP connect to `host:port` succeeds.
    Tcp(String),
    /// A GET returns the expected status.
    Http {
        /// The URL.
        url: String,
        /// Expected status (default 200).
        expect_status: u16,
    },
    /// This argv exits 0.
    Command(Vec<String>),
}

/// `[[failover.monitor]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "MonitorSpec")]
pub struct MonitorConfig {
    /// Name, unique.
    pub name: String,
    /// What to check.
    pub check: Check,
    /// Check interval.
    pub interval: Duration,
    /// Time limit of one check.
    pub timeout: Duration,
    /// The thresholds, restart and escalation policy.
    pub policy: MonitorPolicy,
    /// How to restart the service (none: escalate at once when down).
    pub restart: Option<Hook>,
}

fn d_5s() -> Duration {
    ms(5000)
}
fn d_2s() -> Duration {
    ms(2000)
}
fn d_10m() -> Duration {
    ms(600_000)
}
fn d_3() -> u32 {
    3
}
fn d_2() -> u32 {
    2
}
fn d_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MonitorSpec {
    name: String,
    process: Option<String>,
    unit: Option<String>,
    tcp: Option<String>,
    http: Option<String>,
    command: Option<Vec<String>>,
    expect_status: Option<u16>,
    #[serde(default = "d_5s", deserialize_with = "de_dur")]
    interval: Duration,
    #[serde(default = "d_2s", deserialize_with = "de_dur")]
    timeout: Duration,
    #[serde(default = "d_3")]
    fall: u32,
    #[serde(default = "d_2")]
    rise: u32,
    restart: Option<Hook>,
    #[serde(default = "d_3")]
    restart_budget: u32,
    #[serde(default = "d_10m", deserialize_with = "de_dur")]
    restart_window: Duration,
    #[serde(default = "d_2s", deserialize_with = "de_dur")]
    backoff: Duration,
    #[serde(default = "d_60s", deserialize_with = "de_dur")]
    backoff_max: Duration,
    #[serde(default = "d_true")]
    escalate: bool,
}

impl TryFrom<MonitorSpec> for MonitorConfig {
    type Error = ValueError;
    fn try_from(s: MonitorSpec) -> Result<MonitorConfig, ValueError> {
        let name = s.name;
        let bad = |m: String| Err(format!("monitor {name:?}: {m}").into());
        if NodeName::new(&name).is_err() {
            return bad("name must be 1-32 of [A-Za-z0-9._-]".into());
        }
        let kinds = [s.process.is_some(), s.unit.is_some(), s.tcp.is_some(), s.http.is_some(), s.command.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return bad("set exactly one of process, unit, tcp, http, command".into());
        }
        if s.expect_status.is_some() && s.http.is_none() {
            return bad("expect_status applies to http checks only".into());
        }
        let check = if let Some(p) = s.process {
            if p.is_empty() || p.contains('/') {
                return bad(format!("process {p:?} must be a bare process name"));
            }
            Check::Process(p)
        } else if let Some(u) = s.unit {
            if !valid_unit(&u) {
                return bad(format!("unit {u:?} is not a systemd unit name"));
            }
            Check::Unit(u)
        } else if let Some(t) = s.tcp {
            let port_ok =
                t.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return bad(format!("tcp {t:?} must be HOST:PORT"));
            }
            Check::Tcp(t)
        } else if let Some(u) = s.http {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad(format!("http {u:?} must be an http:// or https:// URL"));
            }
            let expect_status = s.expect_status.unwrap_or(200);
            if !(100..=599).contains(&expect_status) {
                return bad(format!("expect_status {expect_status} is not an HTTP status"));
            }
            Check::Http { url: u, expect_status }
        } else {
            let c = s.command.unwrap_or_default();
            if c.first().is_none_or(|p| p.is_empty()) {
                return bad("command must be a non-empty argv list".into());
            }
            Check::Command(c)
        };
        if s.interval < ms(100) || s.timeout.is_zero() || s.timeout > s.interval {
            return bad("interval must be at least 100ms and timeout between 1ms and the interval".into());
        }
        if s.fall == 0 || s.rise == 0 || s.fall > 100 || s.rise > 100 {
            return bad("fall and rise must be between 1 and 100".into());
        }
        if s.backoff.is_zero() || s.backoff > s.backoff_max || s.restart_window.is_zero() {
            return bad("backoff must be above zero and at most backoff_max; restart_window above zero".into());
        }
        let restart = match (s.restart, &check) {
            (Some(h), _) => Some(h),
            (None, Check::Unit(u)) => Some(Hook::Unit(u.clone())),
            (None, _) => None,
        };
        let policy = MonitorPolicy {
            fall: s.fall,
            rise: s.rise,
            restart_budget: if restart.is_some() { s.restart_budget } else { 0 },
            restart_window: s.restart_window,
            backoff: s.backoff,
            backoff_max: s.backoff_max,
            escalate: s.escalate,
        };
        Ok(MonitorConfig { name, check, interval: s.interval, timeout: s.timeout, policy, restart })
    }
}

impl FailoverConfig {
    /// Check what serde cannot; returns warnings (the caller logs them) or the first error,
    /// naming the key.
    pub fn validate(&self) -> Result<Vec<String>, ValueError> {
        let mut warnings = Vec::new();
        NodeName::new(&self.node).map_err(|e| format!("failover.node: {e}"))?;
        if !(1..=254).contains(&self.priority) {
            return Err("failover.priority must be between 1 and 254".into());
        }
        if self.key_file.as_os_str().is_empty()
            || self.key_file.is_absolute()
            || self.key_file.components().any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err("failover.key_file must be a relative path inside the data dir".into());
        }
        if self.interval < ms(10) || self.interval > ms(10_000) {
            return Err("failover.interval must be between 10ms and 10s".into());
        }
        if self.dead_time <= self.interval.saturating_mul(2) {
            return Err(format!(
                "failover.dead_time ({:?}) must exceed 2 x interval ({:?}): one late packet must not look like a death",
                self.dead_time, self.interval
            )
            .into());
        }
        if self.dead_time > ms(3_600_000) {
            return Err("failover.dead_time must be at most 1h".into());
        }
        if let Some(max) = self.dead_time_max
            && (max < self.dead_time || max > ms(3_600_000))
        {
            return Err(format!(
                "failover.dead_time_max ({max:?}) must be between dead_time ({:?}) and 1h",
                self.dead_time
            )
            .into());
        }
        for (what, d) in [
            ("tiebreaker_timeout", self.tiebreaker_timeout),
            ("fence_timeout", self.fence_timeout),
            ("hook_timeout", self.hook_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("failover.{what} must be above zero").into());
            }
        }
        if let Some(f) = &self.fence
            && f.first().is_none_or(|p| p.is_empty())
        {
            return Err("failover.fence must be a non-empty argv list".into());
        }
        self.validate_channels(&mut warnings)?;
        self.validate_vips()?;
        let mut names = BTreeSet::new();
        for m in &self.monitors {
            if !names.insert(&m.name) {
                return Err(format!("failover.monitor: name {:?} appears twice", m.name).into());
            }
        }
        if self.tiebreaker.is_empty() && self.fence.is_none() {
            warnings.push(
                "failover: neither tiebreaker nor fence is set; if every channel fails while both nodes run, \
                 both will hold the VIP until the channels heal"
                    .into(),
            );
        }
        Ok(warnings)
    }

    fn validate_channels(&self, warnings: &mut Vec<String>) -> Result<(), ValueError> {
        match self.channels.len() {
            0 => return Err("failover: at least one [[failover.channel]] is required".into()),
            1 => warnings.push(format!(
                "WARNING: failover has a single heartbeat channel ({:?}): losing it alone will make the \
                 standby take over while the primary still runs. Configure a second channel on another \
                 network (or a serial/dedicated link).",
                self.channels[0].name
            )),
            _ => {}
        }
        let mut names = BTreeSet::new();
        let mut ends = BTreeSet::new();
        for c in &self.channels {
            if NodeName::new(&c.name).is_err() {
                return Err(format!("failover.channel: name {:?} must be 1-32 of [A-Za-z0-9._-]", c.name).into());
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("failover.channel: name {:?} appears twice", c.name).into());
            }
            if c.local == c.peer || c.local.is_ipv4() != c.peer.is_ipv4() {
                return Err(format!(
                    "failover.channel {:?}: local and peer must be two addresses of one family",
                    c.name
                )
                .into());
            }
            if c.port == 0 {
                return Err(format!("failover.channel {:?}: port must not be 0", c.name).into());
            }
            if !ends.insert((c.local, c.peer, c.port)) {
                return Err(format!("failover.channel {:?}: same addresses as another channel", c.name).into());
            }
        }
        Ok(())
    }

    fn validate_vips(&self) -> Result<(), ValueError> {
        if self.vips.is_empty() {
            return Err("failover: at least one [[failover.vip]] is required".into());
        }
        for v in &self.vips {
            let (ip, _) = v.parse_address().map_err(|e| format!("failover.{e}"))?;
            let ifname_ok = |s: &str| {
                !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
            };
            if !ifname_ok(&v.interface) {
                return Err(format!(
                    "failover.vip {:?}: interface {:?} is not an interface name",
                    v.address, v.interface
                )
                .into());
            }
            if let Some(l) = &v.label {
                let ok = ip.is_ipv4()
                    && l.len() <= 15
                    && l.strip_prefix(&format!("{}:", v.interface)).is_some_and(|rest| !rest.is_empty());
                if !ok {
                    return Err(format!(
                        "failover.vip {:?}: label {l:?} must be IPv4, at most 15 bytes and start with \"{}:\"",
                        v.address, v.interface
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The cap of the adaptive dead time.
    pub fn dead_time_max(&self) -> Duration {
        self.dead_time_max.unwrap_or_else(|| self.dead_time.max(ms(2000)))
    }

    /// The state machine's configuration (call after [`FailoverConfig::validate`]).
    pub fn machine_config(&self) -> Result<MachineConfig, ValueError> {
        let node = NodeName::new(&self.node)?;
        let mut m =
            MachineConfig::new(node, self.role, self.priority, self.channels.iter().map(|c| c.name.clone()).collect());
        m.interval = self.interval;
        m.dead_time = self.dead_time;
        m.dead_time_max = self.dead_time_max();
        m.tiebreaker = !self.tiebreaker.is_empty();
        m.tiebreaker_timeout = self.tiebreaker_timeout;
        m.fence = self.fence.is_some();
        m.fence_timeout = self.fence_timeout;
        m.failback = self.failback;
        m.hook_timeout = self.hook_timeout;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FailoverConfig, ValueError> {
        #[derive(Deserialize)]
        struct W {
            failover: FailoverConfig,
        }
        toml::from_str::<W>(text).map(|w| w.failover).map_err(|e| ValueError(e.to_string()))
    }

    const BASE: &str = r#"
[failover]
node = "head-a"
role = "primary"
priority = 150
key_file = "failover.key"
interval = "100ms"
dead_time = "500ms"
tiebreaker = ["192.0.2.254"]
[[failover.channel]]
name = "private"
local = "10.0.0.1"
peer = "10.0.0.2"
[[failover.channel]]
name = "public"
local = "198.51.100.2"
peer = "198.51.100.3"
[[failover.vip]]
address = "198.51.100.10/24"
interface = "eth1"
label = "eth1:1"
"#;

    #[test]
    fn issue_example_parses() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.validate().unwrap(), Vec::<String>::new());
        assert_eq!(c.role, Role::Primary);
        assert_eq!(c.dead_time, ms(500));
        assert_eq!(c.channels[1].port, 694);
        assert_eq!(c.vips[0].parse_address().unwrap().1, 24);
        let m = c.machine_config().unwrap();
        assert!(m.tiebreaker && !m.fence);
        assert_eq!(m.channels, vec!["private".to_string(), "public".to_string()]);
        assert_eq!(m.failback, Failback::Manual);
    }

    #[test]
    fn extras_parse() {
        let text = BASE.replacen(
            "[failover]\n",
            "[failover]\nfence = [\"/usr/sbin/fence_ipmilan\", \"-o\", \"off\"]\nfailback = \"delayed 30s\"\n\
             start_hooks = [{ unit = \"slurmctld.service\" }, { command = [\"/bin/true\"] }]\n\
             stop_hooks = [{ unit = \"slurmctld.service\" }]\n",
            1,
        );
        let mut text = text;
        // Keys after a [[table]] header belong to that table, so monitors go last.
        text.push_str(
            "[[failover.monitor]]\nname = \"slurmctld\"\nunit = \"slurmctld.service\"\n\
             [[failover.monitor]]\nname = \"web\"\nhttp = \"http://127.0.0.1/health\"\nexpect_status = 204\nfall = 5\n",
        );
        let c = parse(&text).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.failback, Failback::Delayed(ms(30_000)));
        assert_eq!(c.start_hooks[1], Hook::Command(vec!["/bin/true".into()]));
        assert_eq!(c.monitors[0].restart, Some(Hook::Unit("slurmctld.service".into())));
        assert_eq!(c.monitors[1].check, Check::Http { url: "http://127.0.0.1/health".into(), expect_status: 204 });
        assert_eq!(c.monitors[1].policy.fall, 5);
        assert_eq!(c.monitors[1].policy.restart_budget, 0, "no restart action: no restarts");
        assert!(c.machine_config().unwrap().fence);
    }

    #[test]
    fn single_channel_is_a_loud_warning() {
        let text = BASE.replace(
            "[[failover.channel]]\nname = \"public\"\nlocal = \"198.51.100.2\"\npeer = \"198.51.100.3\"\n",
            "",
        );
        let w = parse(&text).unwrap().validate().unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("WARNING") && w[0].contains("single heartbeat channel"), "{w:?}");
    }

    #[test]
    fn invalid_values_are_errors() {
        let cases: Vec<(&str, &str, &str)> = vec![
            ("dead_time = \"500ms\"", "dead_time = \"200ms\"", "dead_time"),
            ("node = \"head-a\"", "node = \"head a\"", "failover.node"),
            ("priority = 150", "priority = 255", "priority"),
            ("key_file = \"failover.key\"", "key_file = \"/etc/k\"", "key_file"),
            ("interval = \"100ms\"", "interval = \"1ms\"", "interval"),
            ("peer = \"10.0.0.2\"", "peer = \"10.0.0.1\"", "local and peer"),
            ("peer = \"10.0.0.2\"", "peer = \"fe80::1\"", "local and peer"),
            ("name = \"public\"", "name = \"private\"", "twice"),
            ("address = \"198.51.100.10/24\"", "address = \"198.51.100.10/33\"", "prefix"),
            ("address = \"198.51.100.10/24\"", "address = \"198.51.100.10\"", "ADDRESS/PREFIX"),
            ("label = \"eth1:1\"", "label = \"eth0:1\"", "label"),
            ("interface = \"eth1\"", "interface = \"a-very-long-interface\"", "interface"),
        ];
        for (from, to, want) in cases {
            let text = BASE.replacen(from, to, 1);
            let e = parse(&text).and_then(|c| c.validate().map(|_| ())).unwrap_err();
            assert!(e.to_string().contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn serde_level_errors() {
        let cases: Vec<(String, &str)> = vec![
            (BASE.replacen("role = \"primary\"", "role = \"master\"", 1), "role"),
            (BASE.replacen("dead_time = \"500ms\"", "dead_time = \"soon\"", 1), "duration"),
            (BASE.replacen("priority = 150", "priority = 150\nprioritty = 1", 1), "prioritty"),
            (BASE.replacen("tiebreaker = [\"192.0.2.254\"]", "tiebreaker = [\"nowhere\"]", 1), "address"),
            (format!("{BASE}[[failover.monitor]]\nname = \"m\"\ntcp = \"x:1\"\nunit = \"a.service\"\n"), "exactly one"),
            (format!("{BASE}[[failover.monitor]]\nname = \"m\"\ntcp = \"nohost\"\n"), "HOST:PORT"),
            (format!("{BASE}[[failover.monitor]]\nname = \"m\"\ntcp = \"h:1\"\nfall = 0\n"), "fall"),
            (format!("{BASE}[[failover.monitor]]\nname = \"m\"\ntcp = \"h:1\"\ntimeout = \"9s\"\n"), "timeout"),
            (BASE.replacen("[failover]\n", "[failover]\nstart_hooks = [{ unit = \"x\" }]\n", 1), "unit"),
            (BASE.replacen("[failover]\n", "[failover]\nstart_hooks = [{ command = [] }]\n", 1), "argv"),
            (BASE.replacen("[failover]\n", "[failover]\nfailback = \"later\"\n", 1), "failback"),
            (BASE.replacen("[failover]\n", "[failover]\nstop_hooks = [{ unit = \"a.service\", x = 1 }]\n", 1), "x"),
        ];
        for (text, want) in cases {
            let e = parse(&text).and_then(|c| c.validate().map(|_| ())).unwrap_err();
            assert!(e.to_string().contains(want), "want {want:?} in: {e}");
        }
    }

    #[test]
    fn failback_forms() {
        assert_eq!(parse_failback("manual"), Ok(Failback::Manual));
        assert_eq!(parse_failback("delayed 2m"), Ok(Failback::Delayed(ms(120_000))));
        for bad in ["", "delayed", "delayed5s", "delayed soon", "auto"] {
            assert!(parse_failback(bad).is_err(), "{bad}");
        }
    }
}
