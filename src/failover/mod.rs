//! Heartbeat and failover: the standby takes over the VIP when the primary dies, and the
//! two nodes never both hold it while they can hear each other.
//!
//! Everything here is pure logic with no I/O, so it can be tested exhaustively and run
//! under a simulated clock:
//!
//! - [`packet`]: the heartbeat datagram (fixed layout, keyed BLAKE3, key ids for rotation),
//!   the key file, and the replay guard;
//! - [`machine`]: the state machine, `step(state, event, now) -> (state, actions)`;
//! - [`monitor`]: the service-monitor policy (thresholds, restart budget, escalation);
//! - [`config`]: the `[failover]` section;
//! - [`garp`] and [`link`]: the gratuitous-ARP schedule and per-channel bookkeeping.
//!
//! The adapters (UDP sockets, rtnetlink for the VIP, ARP, hook processes, the term file)
//! live elsewhere and only translate between the world and [`Event`]/[`Action`].

pub mod config;
pub mod garp;
pub mod link;
pub mod machine;
pub mod monitor;
pub mod packet;
#[cfg(test)]
mod sim;

pub use config::{Check, FailoverConfig, Hook};
pub use machine::{
    AcquireReason, Action, Alarm, ChannelStatus, Event, EventKind, Failback, Machine, MachineConfig, MachineInit,
    ReleaseReason, State, step,
};
pub use monitor::{Health, MonitorAction, MonitorPolicy, MonitorTracker};
pub use packet::{
    Decoded, Flags, Heartbeat, Keyring, NodeName, PACKET_LEN, PacketError, Role, RxStats, decode, encode,
    generate_key_file, next_boot_id, parse_key_file,
};
