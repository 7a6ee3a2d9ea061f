//! Heartbeat and failover: the standby takes over the VIP when the primary dies, and the
//! two nodes never both hold it while they can hear each other.
//!
//! The decisions are pure logic with no I/O, so they can be tested exhaustively and run
//! under a simulated clock:
//!
//! - [`packet`]: the heartbeat datagram (fixed layout, keyed BLAKE3, key ids for rotation),
//!   the key file, and the replay guard;
//! - [`machine`]: the state machine, `step(state, event, now) -> (state, actions)`;
//! - [`monitor`]: the service-monitor policy (thresholds, restart budget, escalation);
//! - [`config`]: the `[failover]` section; [`join`]: the standby's derived from the primary's;
//! - [`garp`] and [`link`]: the gratuitous-ARP schedule and per-channel bookkeeping;
//! - [`jitter`]: the adaptive dead time, from the peer's recent heartbeat gaps;
//! - [`metrics`]: a [`Status`] rendered in the Prometheus text format;
//! - `sim` (tests only): the machine pair under a simulated clock and network.
//!
//! The adapter does the I/O and only translates between the world and [`Event`]/[`Action`]:
//!
//! - [`service`]: the start (key, state file, sockets) and the loop that owns the machine;
//! - [`rt`]: the loop's own thread (real-time priority, locked memory, where permitted);
//! - [`stamp`]: kernel receive timestamps, so the loop's lateness is not the peer's jitter;
//! - `tasks`: its helper tasks (heartbeat receivers, carrier poller, monitors, VIP worker);
//! - `checks`: monitor checks, hooks, the fence command, the tie-breaker probe;
//! - [`net`]: rtnetlink for the VIP, gratuitous ARP, carrier and MAC from sysfs;
//! - [`state_file`]: the term and boot ids, written durably;
//! - [`status`]: the [`Status`] shown by the API and the CLI, its text form, the status file;
//! - `view`: the adapter's bookkeeping that the status is built from;
//! - [`handle`] and [`request`]: the in-process [`Handle`] (status, admin requests) and the
//!   CLI's request file.
//!
//! # Adapter contract
//!
//! - One task owns the [`Machine`] and feeds it every event in arrival order with a
//!   monotonic `now` (`Instant` since start); it sends a [`Event::Tick`] no later than
//!   [`Machine::next_wakeup_in`] after the previous event, and carries out the returned
//!   actions in order before taking the next event.
//! - At start: read the state file (term, last boot id, highest peer boot id), compute
//!   [`next_boot_id`], write it durably *before* the first send, and tell the machine
//!   whether the VIP is already on the interface ([`MachineInit`]).
//! - [`Action::PersistTerm`] and [`Action::ReserveTerm`]: write + fsync the file and its
//!   directory (the term in it never goes down), then send [`Event::TermPersisted`]; on
//!   failure send nothing (the machine times out and retries).
//!   [`Action::PersistPeerBoot`]: same file, no answer.
//! - Sockets: one UDP socket per channel bound to `local`, sending to `peer:port`; drop
//!   datagrams whose source address is not the configured peer; [`decode`] each one with
//!   the [`Keyring`] and pass [`Event::Heartbeat`] (with the time it waited in the kernel's
//!   queue, [`stamp`]) or [`Event::Rejected`]; report send errors as
//!   [`Event::ChannelSendFailed`]. Before a [`Event::Tick`], pass every event already
//!   queued and every datagram the sockets hold, so what arrived in time is never judged
//!   as silence. Never block the machine on I/O; run it on its own thread ([`rt`]).
//! - Tie-breaker, fence, hooks: run them off the machine's task with their timeouts and
//!   report [`Event::TieBreakerResult`], [`Event::FenceResult`], [`Event::StartHooksDone`],
//!   [`Event::StopHooksDone`]. Hooks run in configuration order; the first failure stops
//!   the list and reports `ok: false`.
//! - VIP: [`Action::AddVip`]/[`Action::RemoveVip`] through rtnetlink (with the label),
//!   idempotent; [`Action::SendGarp`] sends gratuitous ARP (IPv4) or an unsolicited
//!   neighbour advertisement (IPv6) for every VIP on its interface.
//! - Carrier changes of the VIP interfaces become [`Event::LinkState`]; monitors run through
//!   [`MonitorTracker`] and map `Escalate`/`Recovered` to the two monitor events.
//! - Emit [`Action::RecordEvent`] and [`Action::Alarm`] as [`LogEvent`]s for the event log
//!   (on the sink given to [`start`]) and expose alarms, [`Machine::channels`] and
//!   [`Machine::stats`] in the [`Status`] (and so as metrics).
//! - Limitation: if only the understudy process dies, the kernel keeps answering ARP for
//!   the VIP while the peer takes over. Configure fencing, or have the service manager
//!   remove the VIP when the process exits (the restarted process removes it anyway).

mod checks;
pub mod config;
pub mod garp;
pub mod handle;
pub mod jitter;
pub mod join;
pub mod link;
pub mod machine;
pub mod metrics;
pub mod monitor;
pub mod net;
pub mod packet;
pub mod request;
pub mod rt;
pub mod service;
#[cfg(test)]
mod sim;
pub mod stamp;
pub mod state_file;
pub mod status;
mod tasks;
mod view;

pub use config::{Check, FailoverConfig, Hook};
pub use handle::Handle;
pub use machine::{
    AcquireReason, Action, Alarm, ChannelStatus, Event, EventKind, Failback, Machine, MachineConfig, MachineInit,
    ReleaseReason, State, step,
};
pub use monitor::{Health, MonitorAction, MonitorPolicy, MonitorTracker};
pub use packet::{
    Decoded, Flags, Heartbeat, Keyring, NodeName, PACKET_LEN, PacketError, Role, RxStats, decode, encode,
    generate_key_file, next_boot_id, parse_key_file,
};
pub use request::{AdminRequest, Refused};
pub use service::{EventSink, FailoverError, LogEvent, Prepared, prepare, start};
pub use status::Status;
