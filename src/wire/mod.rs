//! The wire contract between the server and its clients (the CLI, `deploy --server`, the
//! boot agent, the web console): API request and response bodies, the closed sets of
//! values they carry (node states, deployment statuses, roles, event kinds), and the
//! kernel command line the boot script writes for the agent ([`cmdline`]).
//!
//! Nothing here does I/O or knows about the database: the server builds these from its
//! inventory, clients decode them, and both sides name every value through one enum with
//! one `as_str`/`FromStr`, stored as the same strings in the database.

pub mod cmdline;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// A string that names none of a closed set's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: use {allowed}")]
pub struct UnknownValue {
    /// What kind of value (state, role, ...).
    pub what: &'static str,
    /// The string given.
    pub value: String,
    /// The values allowed, for the message.
    pub allowed: String,
}

/// A closed set of values with one spelling each (`as_str` / `FromStr` / serde).
macro_rules! closed_set {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $var),+
        }

        impl $name {
            /// Every value, in their usual order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The value's one spelling (API, CLI and database alike).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $s),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.to_string(),
                        allowed: one_of(&[$($s),+]),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `a, b or c`.
fn one_of(v: &[&str]) -> String {
    match v {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

closed_set!(
    /// What a node is for.
    Role, "role", {
        /// The head node's standby: takes over when the primary dies.
        Standby = "standby",
        /// A compute node.
        Compute = "compute",
    }
);

closed_set!(
    /// Where a node is in its life: discovered → assigned → deploying → deployed, or failed.
    NodeState, "state", {
        /// Known (its MAC), nothing to deploy yet.
        Discovered = "discovered",
        /// Has an image; its next network boot installs it.
        Assigned = "assigned",
        /// Network-booted into the installer.
        Deploying = "deploying",
        /// Installed; boots from its own disk.
        Deployed = "deployed",
        /// The last deployment failed.
        Failed = "failed",
    }
);

impl NodeState {
    /// Does firmware PXE of a node in this state get an iPXE binary? Nodes with work to do
    /// (or a failure to show) do; a deployed node falls through to its disk and a
    /// discovered one waits for an image. The DHCP server and the boot script both ask here.
    pub fn netboots(self) -> bool {
        matches!(self, NodeState::Assigned | NodeState::Deploying | NodeState::Failed)
    }
}

closed_set!(
    /// Where a deployment is.
    DeploymentStatus, "status", {
        /// Created; the client has not reported yet.
        Pending = "pending",
        /// The client is writing.
        Running = "running",
        /// Finished (terminal).
        Done = "done",
        /// Failed or superseded (terminal).
        Failed = "failed",
    }
);

impl DeploymentStatus {
    /// Terminal: no more progress, and the token is spent.
    pub fn is_final(self) -> bool {
        matches!(self, DeploymentStatus::Done | DeploymentStatus::Failed)
    }
}

closed_set!(
    /// What a deploy client may report.
    ProgressStatus, "status", {
        /// Still writing.
        Running = "running",
        /// Finished.
        Done = "done",
        /// Gave up.
        Failed = "failed",
    }
);

impl From<ProgressStatus> for DeploymentStatus {
    fn from(p: ProgressStatus) -> Self {
        match p {
            ProgressStatus::Running => DeploymentStatus::Running,
            ProgressStatus::Done => DeploymentStatus::Done,
            ProgressStatus::Failed => DeploymentStatus::Failed,
        }
    }
}

closed_set!(
    /// How a machine boots.
    Firmware, "firmware", {
        /// Legacy BIOS (or UEFI's CSM).
        Bios = "bios",
        /// UEFI.
        Uefi = "uefi",
    }
);

closed_set!(
    /// DHCP lease states.
    LeaseState, "lease state", {
        /// Offered, not yet requested.
        Offered = "offered",
        /// ACKed.
        Bound = "bound",
    }
);

closed_set!(
    /// Background job kinds.
    JobKind, "job kind", {
        /// Re-hash every chunk an image reaches.
        Verify = "verify",
        /// Garbage collection.
        Gc = "gc",
    }
);

closed_set!(
    /// Background job states.
    JobState, "job state", {
        /// Still working.
        Running = "running",
        /// Finished; `result` holds the report.
        Done = "done",
        /// Failed; `error` says why.
        Failed = "failed",
    }
);

closed_set!(
    /// Who a token belongs to.
    CallerRole, "caller role", {
        /// The admin token.
        Admin = "admin",
        /// A deployment token.
        Deploy = "deploy",
        /// The followers' (standbys') sync token.
        Follower = "follower",
        /// No token.
        Anonymous = "anonymous",
    }
);

/// Event kinds, dotted: the inventory's own closed set, and failover's (`failover.*`,
/// named by the failover service from its machine's events and alarms).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An image version was captured.
    ImageCapture,
    /// An image version was imported from a tar archive.
    ImageImport,
    /// Image versions were deleted.
    ImageDelete,
    /// Garbage collection ran.
    ImageGc,
    /// An image's disk layout was set or recorded.
    ImageLayout,
    /// A node was created.
    NodeCreate,
    /// A node was changed.
    NodeUpdate,
    /// A node was deleted.
    NodeDelete,
    /// A node's network identity was set.
    NodeNetwork,
    /// A deployment was created.
    DeployCreate,
    /// A deployment moved to a status (`deploy.running`, `deploy.done`, `deploy.failed`).
    Deploy(DeploymentStatus),
    /// A node network-booted into a deployment.
    BootDeploy,
    /// A deployed node network-booted and was told to boot from its disk.
    BootLocal,
    /// A deploy script was refused (request from the wrong address).
    BootRefused,
    /// A node could not be deployed: no boot environment, or its image is gone.
    BootMissing,
    /// A machine was seen for the first time while MAC collection was on.
    DhcpDiscovered,
    /// MAC collection was opened or closed.
    DhcpCollect,
    /// The server started.
    ServerStart,
    /// The server stopped.
    ServerStop,
    /// A scheduled capture (`[capture]`) failed.
    ImageCaptureFailed,
    /// The standby's follower (`[sync]`) applied a new version.
    SyncApplied,
    /// An update by the follower stopped at a safe point before its end (takeover, pause).
    SyncStopped,
    /// The follower's check or update failed (recorded once until it recovers).
    SyncFailed,
    /// The follower works again after a failure.
    SyncRecovered,
    /// The standby's lag went above `sync.max_lag`.
    SyncLagAlarm,
    /// The lag is back under half of `sync.max_lag`.
    SyncLagCleared,
    /// The standby's store took a version of the primary's image (its replica).
    ImageReplica,
    /// Replicating the primary's image into the standby's store failed (recorded once
    /// until it works again).
    SyncReplicaFailed,
    /// A failover event: the part after `failover.` (lower case, digits and `_`).
    Failover(String),
}

impl EventKind {
    /// The dotted name.
    pub fn as_str(&self) -> std::borrow::Cow<'static, str> {
        use EventKind::*;
        std::borrow::Cow::Borrowed(match self {
            ImageCapture => "image.capture",
            ImageImport => "image.import",
            ImageDelete => "image.delete",
            ImageGc => "image.gc",
            ImageLayout => "image.layout",
            NodeCreate => "node.create",
            NodeUpdate => "node.update",
            NodeDelete => "node.delete",
            NodeNetwork => "node.network",
            DeployCreate => "deploy.create",
            Deploy(s) => match s {
                DeploymentStatus::Pending => "deploy.pending",
                DeploymentStatus::Running => "deploy.running",
                DeploymentStatus::Done => "deploy.done",
                DeploymentStatus::Failed => "deploy.failed",
            },
            BootDeploy => "boot.deploy",
            BootLocal => "boot.local",
            BootRefused => "boot.refused",
            BootMissing => "boot.missing",
            DhcpDiscovered => "dhcp.discovered",
            DhcpCollect => "dhcp.collect",
            ServerStart => "server.start",
            ServerStop => "server.stop",
            ImageCaptureFailed => "image.capture_failed",
            SyncApplied => "sync.applied",
            SyncStopped => "sync.stopped",
            SyncFailed => "sync.failed",
            SyncRecovered => "sync.recovered",
            SyncLagAlarm => "sync.lag_alarm",
            SyncLagCleared => "sync.lag_cleared",
            ImageReplica => "image.replica",
            SyncReplicaFailed => "sync.replica_failed",
            Failover(s) => return std::borrow::Cow::Owned(format!("failover.{s}")),
        })
    }

    /// A failover event kind; `None` unless `suffix` is lower-case letters, digits and `_`.
    pub fn failover(suffix: &str) -> Option<EventKind> {
        let ok = !suffix.is_empty()
            && suffix.len() <= 64
            && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        ok.then(|| EventKind::Failover(suffix.to_string()))
    }

    /// Every kind but the failover ones, for parsing and documentation.
    pub const FIXED: &'static [EventKind] = &[
        EventKind::ImageCapture,
        EventKind::ImageImport,
        EventKind::ImageDelete,
        EventKind::ImageGc,
        EventKind::ImageLayout,
        EventKind::NodeCreate,
        EventKind::NodeUpdate,
        EventKind::NodeDelete,
        EventKind::NodeNetwork,
        EventKind::DeployCreate,
        EventKind::Deploy(DeploymentStatus::Pending),
        EventKind::Deploy(DeploymentStatus::Running),
        EventKind::Deploy(DeploymentStatus::Done),
        EventKind::Deploy(DeploymentStatus::Failed),
        EventKind::BootDeploy,
        EventKind::BootLocal,
        EventKind::BootRefused,
        EventKind::BootMissing,
        EventKind::DhcpDiscovered,
        EventKind::DhcpCollect,
        EventKind::ServerStart,
        EventKind::ServerStop,
        EventKind::ImageCaptureFailed,
        EventKind::SyncApplied,
        EventKind::SyncStopped,
        EventKind::SyncFailed,
        EventKind::SyncRecovered,
        EventKind::SyncLagAlarm,
        EventKind::SyncLagCleared,
        EventKind::ImageReplica,
        EventKind::SyncReplicaFailed,
    ];
}

impl FromStr for EventKind {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        if let Some(k) = EventKind::FIXED.iter().find(|k| k.as_str() == s) {
            return Ok(k.clone());
        }
        if let Some(k) = s.strip_prefix("failover.").and_then(EventKind::failover) {
            return Ok(k);
        }
        Err(UnknownValue {
            what: "event kind",
            value: s.to_string(),
            allowed: "a kind such as image.capture, node.create, deploy.done, boot.local or failover.takeover".into(),
        })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

// ---------------------------------------------------------------- paging

/// One page of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Items in the whole list.
    pub total: i64,
    /// Page size used.
    pub limit: i64,
    /// Offset used.
    pub offset: i64,
}

// ---------------------------------------------------------------- images

/// One image version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Image {
    /// Image name.
    pub name: String,
    /// Version, counting from 1 per name.
    pub version: i64,
    /// Manifest id (hex).
    pub id: String,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// What was captured or imported.
    pub source: String,
    /// Entries of all types.
    pub entries: i64,
    /// Regular files.
    pub files: i64,
    /// Logical bytes of regular files.
    pub bytes: i64,
    /// Compressed bytes of the distinct chunks the image references.
    pub stored_bytes: i64,
    /// Bytes this version added to the store when it was made.
    pub added_bytes: i64,
}

impl Image {
    /// `NAME@N`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// An image with what it holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageDetail {
    /// The version row.
    pub image: Image,
    /// Entry counts by type.
    pub kinds: std::collections::BTreeMap<String, u64>,
    /// Distinct chunks.
    pub chunks: u64,
}

/// An image's disk layout: the one recorded at capture (or set by the admin), else the
/// default layout an image without one is deployed with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageLayout {
    /// The image (NAME@N).
    pub image: String,
    /// Recorded with the image (or set by the admin); false for the default layout.
    pub recorded: bool,
    /// The layout document (see `understudy images layout`).
    #[schema(value_type = Object)]
    pub layout: crate::layout::doc::Layout,
}

/// A node's layout plan: the node's image layout mapped onto its reported disks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodePlan {
    /// The node.
    pub node: String,
    /// The image (NAME@N).
    pub image: String,
    /// Whether the layout was recorded with the image (false: the default layout).
    pub recorded: bool,
    /// The plan as text, as the agent prints it.
    pub text: String,
    /// The plan.
    #[schema(value_type = Object)]
    pub plan: crate::layout::plan::Plan,
}

/// Result of a delete.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// Versions deleted.
    pub deleted: u64,
}

/// A background job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Job id.
    pub id: u64,
    /// verify or gc.
    pub kind: JobKind,
    /// running, done or failed.
    pub state: JobState,
    /// Start time.
    pub started: String,
    /// End time.
    pub finished: Option<String>,
    /// The report when done.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The error when failed.
    pub error: Option<String>,
}

/// A chunk id: 64 hex digits.
#[derive(ToSchema)]
#[schema(pattern = "^[0-9a-fA-F]{64}$")]
pub struct ChunkIdHex(#[allow(dead_code)] String);

/// What a stream client has and wants.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    /// Chunk ids (hex) the client already has; they are not sent.
    #[serde(default)]
    #[schema(value_type = Vec<ChunkIdHex>)]
    pub have: Vec<String>,
    /// Only these chunk ids (hex), in this order; all of the image when absent.
    #[schema(value_type = Option<Vec<ChunkIdHex>>)]
    pub want: Option<Vec<String>>,
}

// ---------------------------------------------------------------- nodes

/// A node with its addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// `standby` or `compute`.
    pub role: Role,
    /// Image to deploy (a reference: NAME, NAME@N or id), if any.
    pub image: Option<String>,
    /// discovered, assigned, deploying, deployed or failed.
    pub state: NodeState,
    /// MAC addresses, lowercase colon form.
    pub macs: Vec<String>,
    /// IP addresses.
    pub ips: Vec<String>,
    /// Creation time.
    pub created: String,
    /// Last change.
    pub updated: String,
}

/// A node to create.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCreate {
    /// Node name (letters, digits, `.`, `_`, `-`).
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub name: String,
    /// standby (default) or compute.
    #[schema(pattern = "^(standby|compute)$")]
    pub role: Option<String>,
    /// Image reference to deploy.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")]
    pub image: Option<String>,
    /// MAC addresses (unicast; `:`, `-` or no separators).
    #[serde(default)]
    #[schema(value_type = Vec<MacAddr>)]
    pub macs: Vec<String>,
    /// IP addresses (static reservations).
    #[serde(default)]
    #[schema(value_type = Vec<IpAddress>)]
    pub ips: Vec<String>,
}

/// A unicast MAC address.
#[derive(ToSchema)]
#[schema(pattern = "^[0-9A-Fa-f][02468aceACE]([:-]?[0-9A-Fa-f]{2}){5}$")]
pub struct MacAddr(#[allow(dead_code)] String);

/// An IP address a node can hold (IPv4 or IPv6; not unspecified, not multicast).
#[derive(ToSchema)]
#[schema(format = Ipv4, pattern = r"^(?!0\.0\.0\.0$)(?!2(2[4-9]|3[0-9])\.)[0-9a-fA-F.:]+$")]
pub struct IpAddress(#[allow(dead_code)] String);

/// Fields to change on a node; absent fields stay.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    /// standby or compute.
    #[schema(pattern = "^(standby|compute)$")]
    pub role: Option<String>,
    /// Image reference; an empty string clears it.
    #[schema(pattern = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?)?$")]
    pub image: Option<String>,
    /// New state.
    #[schema(pattern = "^(discovered|assigned|deploying|deployed|failed)$")]
    pub state: Option<String>,
    /// Replace the MACs.
    #[schema(value_type = Option<Vec<MacAddr>>)]
    pub macs: Option<Vec<String>>,
    /// Replace the IPs.
    #[schema(value_type = Option<Vec<IpAddress>>)]
    pub ips: Option<Vec<String>>,
}

// ---------------------------------------------------------------- deployments

/// A deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    /// Deployment id.
    pub id: i64,
    /// Target node.
    pub node: String,
    /// Image reference as resolved (NAME@N).
    pub image: String,
    /// Manifest id the token is scoped to.
    pub manifest_id: String,
    /// Token expiry.
    pub expires: String,
    /// pending, running, done or failed.
    pub status: DeploymentStatus,
    /// Current phase (free text from the deploy client: fetching, writing, ...).
    pub phase: String,
    /// Bytes written so far.
    pub bytes_done: i64,
    /// Bytes to write.
    pub bytes_total: i64,
    /// Files written so far.
    pub files_done: i64,
    /// Files to write.
    pub files_total: i64,
    /// Creation time.
    pub created: String,
    /// When the client started.
    pub started: Option<String>,
    /// When it finished or failed.
    pub finished: Option<String>,
    /// Failure message.
    pub error: Option<String>,
}

/// A deployment to create.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentCreate {
    /// Target node.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub node: String,
    /// Image reference; defaults to the node's image.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")]
    pub image: Option<String>,
}

/// A created deployment and its token (shown only here).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DeploymentCreated {
    /// The deployment.
    pub deployment: Deployment,
    /// Bearer token for the deploy client, scoped to this node and image.
    pub token: String,
}

/// Longest phase text a client may report.
pub const PHASE_MAX: usize = 200;
/// Longest error text a client may report.
pub const ERROR_MAX: usize = 4000;

/// Progress reported by a deploy client.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// running, done or failed.
    #[schema(pattern = "^(running|done|failed)$")]
    pub status: String,
    /// Free-text phase.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub phase: String,
    /// Bytes written so far.
    #[serde(default, deserialize_with = "de_count")]
    #[schema(minimum = 0)]
    pub bytes_done: i64,
    /// Files written so far.
    #[serde(default, deserialize_with = "de_count")]
    #[schema(minimum = 0)]
    pub files_done: i64,
    /// Failure message.
    #[schema(max_length = 4000)]
    pub error: Option<String>,
}

impl Progress {
    /// A report of `status` in `phase` with the counters so far.
    pub fn new(status: ProgressStatus, phase: &str, bytes_done: u64, files_done: u64, error: Option<String>) -> Self {
        Progress {
            status: status.as_str().into(),
            phase: phase.into(),
            bytes_done: i64::try_from(bytes_done).unwrap_or(i64::MAX),
            files_done: i64::try_from(files_done).unwrap_or(i64::MAX),
            error,
        }
    }
}

/// A count that JSON may spell as an integral float (`123.0`).
fn de_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = serde_json::Number::deserialize(d)?;
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!("{v} is not a whole number"))),
    }
}

/// A disk the boot environment found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Kernel name (`vda`, `sda`, `nvme0n1`).
    #[schema(pattern = "^[a-z][a-z0-9_.!-]{0,31}$")]
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size in bytes.
    #[serde(default = "default_sector")]
    pub logical_sector_size: u32,
    /// Model, when the device says.
    #[serde(default)]
    pub model: String,
    /// Serial number, when the device says.
    #[serde(default)]
    pub serial: String,
    /// World-wide id, when the device has one.
    #[serde(default)]
    pub wwid: String,
    /// Removable media.
    #[serde(default)]
    pub removable: bool,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
}

fn default_sector() -> u32 {
    512
}

/// What a node's boot environment found: its firmware and disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// How it booted.
    pub firmware: Firmware,
    /// Whether UEFI Secure Boot is on.
    #[serde(default)]
    pub secure_boot: bool,
    /// Its disks.
    #[schema(max_items = 256)]
    pub disks: Vec<Disk>,
    /// Its Ethernet interfaces (physical ones: with a device behind them).
    #[serde(default)]
    #[schema(max_items = 64)]
    pub nics: Vec<Nic>,
}

/// An Ethernet interface the boot environment found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// Kernel name in the boot environment (`ens3`, `eth0`).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,15}$")]
    pub name: String,
    /// Hardware address, lowercase colon form.
    #[schema(value_type = MacAddr)]
    pub mac: String,
}

/// Most interfaces a hardware report or a node's network identity may list.
pub const NICS_MAX: usize = 64;

/// A hardware report the server will not keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReport(pub String);

/// Most disks a report may list.
pub const DISKS_MAX: usize = 256;

impl Hardware {
    /// Check a report from a node: names that are kernel names, sane sizes, few enough.
    pub fn check(&self) -> Result<(), BadReport> {
        let bad = |m: String| Err(BadReport(m));
        if self.disks.len() > DISKS_MAX {
            return bad(format!("at most {DISKS_MAX} disks"));
        }
        for d in &self.disks {
            let ok = !d.name.is_empty()
                && d.name.len() <= 32
                && d.name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && d.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!".contains(&b))
                && !d.name.contains("..");
            if !ok {
                return bad(format!("disk name {:?} is not a kernel disk name (such as vda, sda, nvme0n1)", d.name));
            }
            if !matches!(d.logical_sector_size, 512 | 1024 | 2048 | 4096) {
                return bad(format!(
                    "disk {}: logical sector size {} is not 512, 1024, 2048 or 4096",
                    d.name, d.logical_sector_size
                ));
            }
            if d.model.len() > 128 || d.serial.len() > 128 || d.wwid.len() > 256 {
                return bad(format!("disk {}: model, serial or wwid too long", d.name));
            }
        }
        if self.nics.len() > NICS_MAX {
            return bad(format!("at most {NICS_MAX} interfaces"));
        }
        for n in &self.nics {
            if !is_ifname(&n.name) {
                return bad(format!(
                    "interface name {:?} is not a kernel interface name (1-15 of A-Z a-z 0-9 . _ -)",
                    n.name
                ));
            }
            if n.mac.parse::<crate::netcfg::Mac>().is_err() {
                return bad(format!("interface {}: {:?} is not a MAC address", n.name, n.mac));
            }
        }
        Ok(())
    }
}

/// A node's last hardware report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HardwareReport {
    /// When it was reported.
    pub reported: String,
    /// The deployment whose boot environment reported it.
    pub deployment: Option<i64>,
    /// What was found.
    pub hardware: Hardware,
}

// ---------------------------------------------------------------- network identity

/// Whether `s` can be a kernel interface name (1-15 of `A-Z a-z 0-9 . _ -`, not `.`/`..`).
pub fn is_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// One interface of a node's network identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    /// Kernel name (`ens3`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,15}$")]
    pub name: Option<String>,
    /// Hardware address, when known (lowercase colon form once stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<MacAddr>)]
    pub mac: Option<String>,
    /// Static addresses with prefix (`10.0.0.2/24`), in order.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub addresses: Vec<String>,
    /// Default gateway on this interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8)]
    pub dns: Vec<String>,
    /// What the network is for: `private` (the cluster LAN), `public` (where the VIP lives)
    /// or another network's name.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,31}$")]
    pub role: String,
}

impl NetInterface {
    /// The interface as the network rewriters take it; an error says which field is wrong.
    pub fn to_interface(&self) -> Result<crate::netcfg::Interface, crate::netcfg::NetcfgError> {
        use crate::netcfg::{Interface, NetcfgError, Role as NetRole};
        let value = |what: &'static str, v: &str| NetcfgError::Value { what, value: v.to_string() };
        if let Some(n) = &self.name
            && !is_ifname(n)
        {
            return Err(value("interface name (1-15 of A-Z a-z 0-9 . _ -)", n));
        }
        let mac = self.mac.as_deref().map(str::parse).transpose()?;
        let addresses = self.addresses.iter().map(|a| a.parse()).collect::<Result<Vec<_>, _>>()?;
        let gateway =
            self.gateway.as_deref().map(|g| g.parse().map_err(|_| value("gateway address", g))).transpose()?;
        let dns = self
            .dns
            .iter()
            .map(|d| d.parse().map_err(|_| value("DNS server address", d)))
            .collect::<Result<Vec<_>, _>>()?;
        let role = match self.role.as_str() {
            "private" => NetRole::Private,
            "public" => NetRole::Public,
            r if !r.is_empty()
                && r.len() <= 32
                && r.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
            {
                NetRole::Other(r.to_string())
            }
            r => return Err(value("network role (private, public, or a name of a-z 0-9 -)", r)),
        };
        Ok(Interface { name: self.name.clone(), mac, addresses, gateway, dns, role })
    }

    /// Parse the command line's form: `role=private,name=ens3,mac=52:54:00:00:01:01,
    /// address=10.0.0.2/24,address=fd00::2/64,gateway=10.0.0.254,dns=10.0.0.254` (keys in
    /// any order; `address` and `dns` repeat; `role` is required).
    pub fn parse_spec(spec: &str) -> Result<NetInterface, String> {
        let mut i =
            NetInterface { name: None, mac: None, addresses: vec![], gateway: None, dns: vec![], role: String::new() };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: expected KEY=VALUE (keys: role, name, mac, address, gateway, dns)")
            })?;
            let v = v.trim().to_string();
            let once = |slot: &mut Option<String>, key: &str| {
                if slot.replace(v.clone()).is_some() { Err(format!("{key} given twice")) } else { Ok(()) }
            };
            match k.trim() {
                "role" if i.role.is_empty() => i.role = v,
                "role" => return Err("role given twice".into()),
                "name" => once(&mut i.name, "name")?,
                "mac" => once(&mut i.mac, "mac")?,
                "gateway" => once(&mut i.gateway, "gateway")?,
                "address" | "addr" => i.addresses.push(v),
                "dns" => i.dns.push(v),
                other => return Err(format!("unknown key {other:?} (keys: role, name, mac, address, gateway, dns)")),
            }
        }
        if i.role.is_empty() {
            return Err(format!("{spec:?}: role= is required (private, public, or a network name)"));
        }
        i.to_interface().map_err(|e| e.to_string())?;
        Ok(i)
    }

    /// The wire form of a rewriter interface.
    pub fn from_interface(i: &crate::netcfg::Interface) -> NetInterface {
        use crate::netcfg::Role as NetRole;
        NetInterface {
            name: i.name.clone(),
            mac: i.mac.map(|m| m.to_string()),
            addresses: i.addresses.iter().map(|c| c.to_string()).collect(),
            gateway: i.gateway.map(|g| g.to_string()),
            dns: i.dns.iter().map(|d| d.to_string()).collect(),
            role: match &i.role {
                NetRole::Private => "private".into(),
                NetRole::Public => "public".into(),
                NetRole::Other(n) => n.clone(),
            },
        }
    }
}

/// A node's network identity: what it is set to, and what `--from-primary` proposes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeNetwork {
    /// Its interfaces.
    #[schema(max_items = 64)]
    pub interfaces: Vec<NetInterface>,
    /// Deploy even when the image's network configuration cannot be fully rewritten (what was
    /// left alone is reported).
    #[serde(default)]
    pub force: bool,
}

/// What a deployed standby's agent applies to the written root: the primary's network
/// identity, the node's, the VIPs it must never configure, and the standby's failover
/// configuration (with the heartbeat key and the token of its `[sync]`: secrets). Served
/// only to the deployment's own token and the admin.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkPlan {
    /// The node.
    pub node: String,
    /// The primary's interfaces, as the server (running on the primary) sees them.
    pub primary: Vec<NetInterface>,
    /// The node's interfaces (MACs filled in from its hardware report where it had none).
    pub standby: Vec<NetInterface>,
    /// Failover VIPs (addresses without prefix).
    pub vips: Vec<String>,
    /// Go on when parts of the configuration could not be rewritten.
    pub force: bool,
    /// The standby's failover configuration, when the primary runs `[failover]` and the node
    /// is a standby.
    pub failover: Option<StandbyFailover>,
    /// What the server decided and why, for the agent's log.
    pub notes: Vec<String>,
}

/// The standby's side of the failover pair, written into its root by the agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StandbyFailover {
    /// The configuration file's text (`[failover]`: role standby, its own name, the
    /// channels' ends swapped; and `[sync]` when the primary has `[capture]`).
    pub config: String,
    /// Where it goes inside the root (`/etc/understudy/understudy.toml`).
    pub config_path: String,
    /// The heartbeat key file's text (secret).
    pub key: String,
    /// Where the key goes inside the root (the data dir's key file).
    pub key_path: String,
    /// The token the standby's `[sync]` reads the primary's images with, when the
    /// configuration has `[sync]` (the primary has `[capture]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<StandbySync>,
}

/// The token file of the standby's `[sync]` (secret: its `Debug` does not show it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StandbySync {
    /// The primary's API token that `sync.token_file` holds: its followers' token
    /// (`http.sync_token_file`), which reads images and reports freshness, nothing else.
    pub token: String,
    /// Where the token file goes inside the root (the data dir's `primary.token`, written 0600).
    pub token_path: String,
}

impl std::fmt::Debug for StandbySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandbySync").field("token", &"<secret>").field("token_path", &self.token_path).finish()
    }
}

// ---------------------------------------------------------------- events, whoami

/// An event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Event id (increasing).
    pub id: i64,
    /// Time, RFC 3339 UTC.
    pub ts: String,
    /// Node concerned, if any.
    pub node: Option<String>,
    /// Kind, dotted (image.capture, node.create, deploy.done, ...).
    pub kind: String,
    /// Human-readable text.
    pub message: String,
}

/// Who the caller is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// admin, deploy or anonymous.
    pub role: CallerRole,
    /// The deployment, for a deployment token.
    pub deployment: Option<Deployment>,
}

// ---------------------------------------------------------------- DHCP: collection, leases

/// Longest MAC collection window, in minutes (a week).
pub const COLLECT_MAX_MINUTES: i64 = 10080;

/// Open or close the MAC collection window.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Collect {
    /// Minutes to collect from now; 0 closes the window.
    #[schema(minimum = 0, maximum = 10080)]
    pub minutes: i64,
}

/// The collection window.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CollectState {
    /// Whether collection is on.
    pub collecting: bool,
    /// Until when (RFC 3339), when on.
    pub until: String,
}

/// A DHCP lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Lease {
    /// Leased address.
    pub ip: String,
    /// Client MAC.
    pub mac: String,
    /// Expiry, seconds since the epoch.
    pub expires: i64,
    /// offered or bound.
    pub state: LeaseState,
}

/// A machine seen during MAC collection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Discovered {
    /// MAC address.
    pub mac: String,
    /// PXE client architecture (DHCP option 93), when sent.
    pub arch: Option<i64>,
    /// Vendor class (option 60).
    pub vendor_class: String,
    /// Interface it was seen on.
    pub interface: String,
    /// First seen.
    pub first_seen: String,
    /// Last seen.
    pub last_seen: String,
    /// DHCP packets seen.
    pub count: i64,
    /// The node that already owns this MAC, if any (then it is flagged, not collected).
    pub assigned_to: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_specs_parse_or_say_why() {
        let i = NetInterface::parse_spec(
            "role=private, name=ens3,mac=52:54:00:00:01:01,address=10.0.0.2/24,address=fd00::2/64,gateway=10.0.0.254,dns=10.0.0.254",
        )
        .unwrap();
        assert_eq!(i.name.as_deref(), Some("ens3"));
        assert_eq!(i.addresses, ["10.0.0.2/24", "fd00::2/64"]);
        assert_eq!(i.to_interface().unwrap().role, crate::netcfg::Role::Private);
        let back = NetInterface::from_interface(&i.to_interface().unwrap());
        assert_eq!(back, i);
        for (bad, why) in [
            ("name=ens3", "role= is required"),
            ("role=private,colour=red", "unknown key"),
            ("role=private,mac", "KEY=VALUE"),
            ("role=private,name=a,name=b", "twice"),
            ("role=private,address=10.0.0.2", "address with prefix"),
            ("role=private,mac=52:54", "MAC"),
            ("role=Private", "network role"),
            ("role=private,gateway=x", "gateway"),
        ] {
            let e = NetInterface::parse_spec(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn closed_sets_round_trip_and_explain() {
        for s in NodeState::ALL {
            assert_eq!(s.as_str().parse::<NodeState>(), Ok(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
        }
        let e = "primary".parse::<Role>().unwrap_err();
        assert_eq!(e.to_string(), "invalid role \"primary\": use standby or compute");
        let e = "gone".parse::<NodeState>().unwrap_err();
        assert_eq!(e.to_string(), "invalid state \"gone\": use discovered, assigned, deploying, deployed or failed");
        assert!(NodeState::Assigned.netboots() && NodeState::Failed.netboots());
        assert!(!NodeState::Deployed.netboots() && !NodeState::Discovered.netboots());
        assert!(DeploymentStatus::Done.is_final() && !DeploymentStatus::Running.is_final());
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in EventKind::FIXED {
            assert_eq!(k.as_str().parse::<EventKind>().as_ref(), Ok(k));
        }
        assert_eq!("failover.takeover".parse::<EventKind>(), Ok(EventKind::Failover("takeover".into())));
        assert_eq!(EventKind::Deploy(DeploymentStatus::Done).as_str(), "deploy.done");
        assert!("failover.Bad-Kind".parse::<EventKind>().is_err());
        assert!("image.".parse::<EventKind>().is_err());
        assert!(EventKind::failover("").is_none());
    }

    #[test]
    fn progress_counts_accept_integral_floats_only() {
        let p: Progress = serde_json::from_str(r#"{"status":"running","bytes_done":12.0,"files_done":3}"#).unwrap();
        assert_eq!((p.bytes_done, p.files_done), (12, 3));
        assert!(serde_json::from_str::<Progress>(r#"{"status":"running","bytes_done":1.5}"#).is_err());
        let q = Progress::new(ProgressStatus::Done, "done", u64::MAX, 2, None);
        assert_eq!((q.status.as_str(), q.bytes_done), ("done", i64::MAX));
    }
}
