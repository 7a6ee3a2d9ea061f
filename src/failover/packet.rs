//! Heartbeat datagrams: one fixed-size layout, authenticated with keyed BLAKE3, plus the
//! key file, the keyring (two keys during rotation) and the replay guard.
//!
//! # Layout (version 1, 126 bytes, integers big-endian)
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! |      0 |    4 | magic `USHB`                                                 |
//! |      4 |    1 | version (1)                                                  |
//! |      5 |    1 | key id (selects the key in the receiver's keyring)           |
//! |      6 |    1 | configured role (0 standby, 1 primary)                       |
//! |      7 |    1 | priority                                                     |
//! |      8 |    2 | flags (see [`Flags`]; unknown bits are rejected)             |
//! |     10 |    4 | channel tag ([`channel_tag`] of the channel name)            |
//! |     14 |    8 | boot id of the sender (unique per process start, increasing) |
//! |     22 |    8 | sequence number (per boot id, +1 per send round)             |
//! |     30 |    8 | term (last term the sender persisted)                        |
//! |     38 |    8 | echo: the receiver's boot id as last heard on this channel   |
//! |     46 |    8 | echo: the receiver's last sequence heard on this channel     |
//! |     54 |    8 | echo: the receiver's last sequence heard on any channel      |
//! |     62 |   32 | node name, UTF-8, zero-padded                                |
//! |     94 |   32 | MAC: `blake3::keyed_hash(key, bytes[0..94])`                 |
//!
//! Two echoes: the per-channel one tells whether that channel works both ways; the
//! any-channel one tells whether the peer hears us at all, even when each direction
//! survives only on a different channel.
//!
//! Decoding is strict: anything but exactly 126 bytes, a wrong magic, another version or
//! an unknown key id is refused before the MAC is computed; nothing after the MAC check
//! is trusted until it passes, and only then are field values validated.
//!
//! # Replay and boot ids
//!
//! A receiver keeps, per channel, the highest sequence accepted from the peer's current
//! boot id, and refuses anything not newer ([`ReplayGuard`]). A boot id cannot be used to
//! replay old packets because:
//!
//! - boot ids only go up ([`next_boot_id`]: the last one used is persisted and the next is
//!   above both it and the wall clock), so the guard refuses a boot id lower than the
//!   peer's current one ([`PacketError::StaleBoot`]), and the adapter persists the peer's
//!   highest boot id (`Action::PersistPeerBoot`) so a restart of the receiver keeps that floor;
//! - every packet echoes the receiver's own boot id and last sequence (any channel). Our
//!   boot id is new at every start, so a packet echoing it, with an echo newer than any
//!   accepted before on that channel, was necessarily produced after the receiver started and after that
//!   receiver's packet: it is fresh whatever its sequence number. This proof of freshness
//!   lets a peer whose boot counter went backwards (reinstalled, lost state) be accepted,
//!   and it is what makes a channel count as working both ways. A recording never carries
//!   a fresh echo, so replayed packets can never make a channel look up both ways.
//!
//! What remains: right after the receiver restarts, packets of the peer's current boot
//! recorded earlier are accepted until the first genuine packet advances the window.
//! If the peer is really dead, an attacker holding such a recording can delay a takeover
//! for as long as the recording lasts; it cannot cause one. The state machine raises an
//! alarm when the peer is heard but never confirms our packets.

use std::fmt;

/// The first four bytes of every heartbeat.
pub const MAGIC: [u8; 4] = *b"USHB";
/// The only layout version this build speaks.
pub const VERSION: u8 = 1;
/// Exact size of a heartbeat datagram.
pub const PACKET_LEN: usize = 126;
/// Longest node name, in bytes.
pub const NODE_NAME_MAX: usize = 32;
/// Bytes covered by the MAC (everything before it).
const MAC_OFFSET: usize = 94;
const NAME_OFFSET: usize = 62;

/// Why a datagram was refused. Each variant has its own counter in [`RxStats`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Not exactly [`PACKET_LEN`] bytes (truncated, oversized, or not ours at all).
    #[error("datagram of {got} bytes, expected {PACKET_LEN}")]
    Length {
        /// Bytes received.
        got: usize,
    },
    /// The magic is not `USHB`.
    #[error("bad magic")]
    Magic,
    /// A layout version this build does not speak.
    #[error("unsupported heartbeat version {0}")]
    Version(u8),
    /// The key id is not in our keyring (rotation not finished on one side, or a stranger).
    #[error("unknown key id {0}")]
    UnknownKey(u8),
    /// The MAC does not verify: wrong key, corruption, or forgery.
    #[error("bad MAC (key id {0})")]
    Mac(u8),
    /// Authenticated but a field holds a value this version does not define.
    #[error("invalid field: {0}")]
    Field(&'static str),
    /// A sequence number not newer than the last accepted on this channel.
    #[error("replayed or reordered sequence {seq} on channel {channel}")]
    Replay {
        /// Channel index.
        channel: usize,
        /// The refused sequence.
        seq: u64,
    },
    /// A boot id lower than the peer's current one, with no proof of freshness.
    #[error("stale boot id {0:#x}")]
    StaleBoot(u64),
    /// Our own packet came back (a loop, or a reflection attack).
    #[error("our own heartbeat came back")]
    OwnPacket,
    /// A third node speaks on our channels (only one peer is supported).
    #[error("heartbeat from unexpected node {0:?}")]
    ForeignNode(String),
    /// The channel tag does not match the channel it arrived on, or no such channel.
    #[error("heartbeat for another channel arrived on channel {0}")]
    WrongChannel(usize),
}

/// Counters of accepted and refused datagrams, one per [`PacketError`] variant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RxStats {
    /// Accepted heartbeats.
    pub accepted: u64,
    /// [`PacketError::Length`].
    pub length: u64,
    /// [`PacketError::Magic`].
    pub magic: u64,
    /// [`PacketError::Version`].
    pub version: u64,
    /// [`PacketError::UnknownKey`].
    pub unknown_key: u64,
    /// [`PacketError::Mac`].
    pub mac: u64,
    /// [`PacketError::Field`].
    pub field: u64,
    /// [`PacketError::Replay`].
    pub replay: u64,
    /// [`PacketError::StaleBoot`].
    pub stale_boot: u64,
    /// [`PacketError::OwnPacket`].
    pub own_packet: u64,
    /// [`PacketError::ForeignNode`].
    pub foreign_node: u64,
    /// [`PacketError::WrongChannel`].
    pub wrong_channel: u64,
}

impl RxStats {
    /// Count one refusal.
    pub fn record(&mut self, e: &PacketError) {
        let c = match e {
            PacketError::Length { .. } => &mut self.length,
            PacketError::Magic => &mut self.magic,
            PacketError::Version(_) => &mut self.version,
            PacketError::UnknownKey(_) => &mut self.unknown_key,
            PacketError::Mac(_) => &mut self.mac,
            PacketError::Field(_) => &mut self.field,
            PacketError::Replay { .. } => &mut self.replay,
            PacketError::StaleBoot(_) => &mut self.stale_boot,
            PacketError::OwnPacket => &mut self.own_packet,
            PacketError::ForeignNode(_) => &mut self.foreign_node,
            PacketError::WrongChannel(_) => &mut self.wrong_channel,
        };
        *c += 1;
    }

    /// All refusals together.
    pub fn rejected(&self) -> u64 {
        self.length
            + self.magic
            + self.version
            + self.unknown_key
            + self.mac
            + self.field
            + self.replay
            + self.stale_boot
            + self.own_packet
            + self.foreign_node
            + self.wrong_channel
    }
}

/// A node name: 1 to 32 bytes of `[A-Za-z0-9._-]`, so it fits the packet and logs safely.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    /// Validate a name.
    pub fn new(s: &str) -> Result<NodeName, crate::config::ValueError> {
        if s.is_empty() || s.len() > NODE_NAME_MAX {
            return Err(format!("node name must be 1 to {NODE_NAME_MAX} bytes, got {}", s.len()).into());
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(format!("node name {s:?} may only hold letters, digits, '.', '_' and '-'").into());
        }
        Ok(NodeName(s.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The role a node is configured with; it says who holds the VIP when both are healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes over when the primary dies.
    Standby,
    /// Holds the VIP when both nodes are healthy and nothing says otherwise.
    Primary,
}

/// State bits carried by every heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// The sender holds the VIP (or is still stopping the services after removing it).
    pub vip_held: bool,
    /// The sender's public link is up and its monitors pass: it could serve.
    pub healthy: bool,
    /// The sender just released the VIP (announced for a while after a release).
    pub releasing: bool,
    /// The sender steps aside: it will not take the VIP while the peer could.
    pub yielding: bool,
    /// The sender asks the holder to hand the VIP over (admin takeover or fail-back).
    pub requesting: bool,
    /// The sender is in the middle of taking the VIP (checks or persisting its term).
    pub acquiring: bool,
    /// The sender's public link is up (it could serve the VIP, healthy services or not).
    pub link_up: bool,
    /// The sender is shutting down (SIGTERM): it has released the VIP and stopped its
    /// services, and it sends nothing after this, so the peer need not wait out the dead time.
    pub leaving: bool,
}

const F_VIP_HELD: u16 = 1;
const F_HEALTHY: u16 = 1 << 1;
const F_RELEASING: u16 = 1 << 2;
const F_YIELDING: u16 = 1 << 3;
const F_REQUESTING: u16 = 1 << 4;
const F_ACQUIRING: u16 = 1 << 5;
const F_LINK_UP: u16 = 1 << 6;
const F_LEAVING: u16 = 1 << 7;
const F_ALL: u16 = (1 << 8) - 1;

impl Flags {
    /// The wire form.
    pub fn bits(self) -> u16 {
        let bit = |b: bool, v: u16| if b { v } else { 0 };
        bit(self.vip_held, F_VIP_HELD)
            | bit(self.healthy, F_HEALTHY)
            | bit(self.releasing, F_RELEASING)
            | bit(self.yielding, F_YIELDING)
            | bit(self.requesting, F_REQUESTING)
            | bit(self.acquiring, F_ACQUIRING)
            | bit(self.link_up, F_LINK_UP)
            | bit(self.leaving, F_LEAVING)
    }

    /// Parse the wire form; bits this version does not define are refused.
    pub fn from_bits(b: u16) -> Option<Flags> {
        if b & !F_ALL != 0 {
            return None;
        }
        Some(Flags {
            vip_held: b & F_VIP_HELD != 0,
            healthy: b & F_HEALTHY != 0,
            releasing: b & F_RELEASING != 0,
            yielding: b & F_YIELDING != 0,
            requesting: b & F_REQUESTING != 0,
            acquiring: b & F_ACQUIRING != 0,
            link_up: b & F_LINK_UP != 0,
            leaving: b & F_LEAVING != 0,
        })
    }
}

/// The content of one heartbeat (everything but magic, version, key id and MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender's node name.
    pub node: NodeName,
    /// Sender's boot id.
    pub boot: u64,
    /// Sender's sequence number in this boot.
    pub seq: u64,
    /// Tag of the channel this packet was sent on.
    pub channel_tag: u32,
    /// Last term the sender persisted.
    pub term: u64,
    /// Sender's configured role.
    pub role: Role,
    /// Sender's priority.
    pub priority: u8,
    /// Sender's state bits.
    pub flags: Flags,
    /// The receiver's boot id as the sender last heard it on this channel (0: none).
    pub echo_boot: u64,
    /// The receiver's last sequence the sender heard on this channel (0: none).
    pub echo_seq: u64,
    /// The receiver's last sequence the sender heard on any channel (0: none).
    pub echo_any_seq: u64,
}

/// A datagram that passed the MAC check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The key that authenticated it.
    pub key_id: u8,
    /// Its content.
    pub heartbeat: Heartbeat,
}

/// The 4-byte tag of a channel name; both nodes must name a channel the same way. It binds
/// a packet to its channel so one captured on one network cannot be replayed on another.
pub fn channel_tag(name: &str) -> u32 {
    let h = blake3::derive_key("understudy failover channel tag v1", name.as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// The next boot id: above the last one used (persisted by the caller before the first
/// send) and, when the clock is sane, the wall clock in microseconds, so ids stay unique
/// even if the persisted value is lost together with a clock that did not go back.
pub fn next_boot_id(last_used: u64, wall_clock_micros: u64) -> u64 {
    last_used.saturating_add(1).max(wall_clock_micros)
}

/// Encode and sign with the keyring's signing key.
pub fn encode(hb: &Heartbeat, keys: &Keyring) -> [u8; PACKET_LEN] {
    let (key_id, key) = keys.signing();
    let mut b = [0u8; PACKET_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = key_id;
    b[6] = match hb.role {
        Role::Standby => 0,
        Role::Primary => 1,
    };
    b[7] = hb.priority;
    b[8..10].copy_from_slice(&hb.flags.bits().to_be_bytes());
    b[10..14].copy_from_slice(&hb.channel_tag.to_be_bytes());
    b[14..22].copy_from_slice(&hb.boot.to_be_bytes());
    b[22..30].copy_from_slice(&hb.seq.to_be_bytes());
    b[30..38].copy_from_slice(&hb.term.to_be_bytes());
    b[38..46].copy_from_slice(&hb.echo_boot.to_be_bytes());
    b[46..54].copy_from_slice(&hb.echo_seq.to_be_bytes());
    b[54..62].copy_from_slice(&hb.echo_any_seq.to_be_bytes());
    let name = hb.node.as_str().as_bytes();
    b[NAME_OFFSET..NAME_OFFSET + name.len()].copy_from_slice(name);
    let mac = blake3::keyed_hash(key, &b[..MAC_OFFSET]);
    b[MAC_OFFSET..].copy_from_slice(mac.as_bytes());
    b
}

/// Decode and authenticate one datagram. Never panics, whatever the bytes.
pub fn decode(buf: &[u8], keys: &Keyring) -> Result<Decoded, PacketError> {
    let b: &[u8; PACKET_LEN] = buf.try_into().map_err(|_| PacketError::Length { got: buf.len() })?;
    if b[0..4] != MAGIC {
        return Err(PacketError::Magic);
    }
    if b[4] != VERSION {
        return Err(PacketError::Version(b[4]));
    }
    let key_id = b[5];
    let key = keys.get(key_id).ok_or(PacketError::UnknownKey(key_id))?;
    let mut mac = [0u8; 32];
    mac.copy_from_slice(&b[MAC_OFFSET..]);
    // blake3::Hash equality is constant-time, so the comparison leaks nothing.
    if blake3::keyed_hash(key, &b[..MAC_OFFSET]) != blake3::Hash::from_bytes(mac) {
        return Err(PacketError::Mac(key_id));
    }
    let heartbeat = fields(b)?;
    Ok(Decoded { key_id, heartbeat })
}

fn be64(b: &[u8; PACKET_LEN], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn fields(b: &[u8; PACKET_LEN]) -> Result<Heartbeat, PacketError> {
    let role = match b[6] {
        0 => Role::Standby,
        1 => Role::Primary,
        _ => return Err(PacketError::Field("role")),
    };
    let flags = Flags::from_bits(u16::from_be_bytes([b[8], b[9]])).ok_or(PacketError::Field("flags"))?;
    let name_field = &b[NAME_OFFSET..MAC_OFFSET];
    let len = name_field.iter().position(|&c| c == 0).unwrap_or(NODE_NAME_MAX);
    // The padding must be all zeros so one name has exactly one encoding.
    if name_field[len..].iter().any(|&c| c != 0) {
        return Err(PacketError::Field("node name padding"));
    }
    let name = std::str::from_utf8(&name_field[..len]).map_err(|_| PacketError::Field("node name"))?;
    let node = NodeName::new(name).map_err(|_| PacketError::Field("node name"))?;
    let boot = be64(b, 14);
    let seq = be64(b, 22);
    // Zero is reserved for "nothing heard" in the echo fields, so real values start at 1.
    if boot == 0 || seq == 0 {
        return Err(PacketError::Field("boot id and sequence must be non-zero"));
    }
    Ok(Heartbeat {
        node,
        boot,
        seq,
        channel_tag: u32::from_be_bytes([b[10], b[11], b[12], b[13]]),
        term: be64(b, 30),
        role,
        priority: b[7],
        flags,
        echo_boot: be64(b, 38),
        echo_seq: be64(b, 46),
        echo_any_seq: be64(b, 54),
    })
}

/// Key file and keyring errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// A line does not read `ID KEYHEX`.
    #[error("key file line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No key at all.
    #[error("key file holds no key")]
    Empty,
    /// More than two keys (one signing key plus one during rotation).
    #[error("key file holds {0} keys; at most 2 (during rotation)")]
    TooMany(usize),
    /// Two keys with one id.
    #[error("key id {0} appears twice")]
    DuplicateId(u8),
    /// A key that is obviously not random (such as the all-zero default key of old tools).
    #[error("key id {0} is not random (all bytes equal)")]
    Weak(u8),
}

/// A 32-byte key; its Debug output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
struct Key([u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// One or two heartbeat keys. The first signs outgoing packets; every key verifies, so a
/// key can be rotated without a flag day: add the new key second on both nodes, then move
/// it first on both, then remove the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<(u8, Key)>,
}

impl Keyring {
    /// Build a keyring; the first key signs.
    pub fn new(keys: &[(u8, [u8; 32])]) -> Result<Keyring, KeyFileError> {
        match keys.len() {
            0 => return Err(KeyFileError::Empty),
            1 | 2 => {}
            n => return Err(KeyFileError::TooMany(n)),
        }
        if keys.len() == 2 && keys[0].0 == keys[1].0 {
            return Err(KeyFileError::DuplicateId(keys[0].0));
        }
        for (id, k) in keys {
            if k.iter().all(|&b| b == k[0]) {
                return Err(KeyFileError::Weak(*id));
            }
        }
        Ok(Keyring { keys: keys.iter().map(|(id, k)| (*id, Key(*k))).collect() })
    }

    /// The signing key and its id.
    fn signing(&self) -> (u8, &[u8; 32]) {
        let (id, k) = &self.keys[0];
        (*id, &k.0)
    }

    /// The id of the signing key.
    pub fn signing_id(&self) -> u8 {
        self.keys[0].0
    }

    /// Every key id, signing key first.
    pub fn ids(&self) -> Vec<u8> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    fn get(&self, id: u8) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(i, _)| *i == id).map(|(_, k)| &k.0)
    }
}

/// Parse a key file: lines `ID KEYHEX` (id 0-255, 64 hex digits), `#` comments and blank
/// lines ignored; the first key signs.
pub fn parse_key_file(text: &str) -> Result<Keyring, KeyFileError> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: &str| KeyFileError::Line { line: i + 1, message: m.to_string() };
        let mut parts = line.split_whitespace();
        let (Some(id), Some(hexkey), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected `ID KEYHEX`"));
        };
        let id: u8 = id.parse().map_err(|_| bad("key id must be a number from 0 to 255"))?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(hexkey, &mut key).map_err(|_| bad("key must be 64 hex digits (32 bytes)"))?;
        keys.push((id, key));
    }
    Keyring::new(&keys)
}

/// The text of a key file for this keyring (signing key first).
pub fn format_key_file(keys: &Keyring) -> String {
    let mut s = String::from(
        "# understudy failover heartbeat keys (keyed BLAKE3). Keep this file 0600.\n\
         # One `ID KEYHEX` per line; the first key signs, every key verifies.\n",
    );
    for (id, k) in &keys.keys {
        s.push_str(&format!("{id} {}\n", hex::encode(k.0)));
    }
    s
}

/// A new key file with one key; the caller supplies the 32 random bytes (this module does
/// no I/O and reads no entropy itself).
pub fn generate_key_file(id: u8, random: [u8; 32]) -> Result<String, KeyFileError> {
    Ok(format_key_file(&Keyring::new(&[(id, random)])?))
}

/// What [`ReplayGuard::admit`] found out about the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A newer packet of the peer's current boot.
    Accepted,
    /// The first packet of a boot id (a new peer process, or the first heard at all).
    NewBoot {
        /// The boot id it replaces, if any.
        previous: Option<u64>,
    },
}

/// Refuses replayed and reordered heartbeats: per channel, the highest sequence accepted
/// from the peer's current boot id (see the module docs for why boot ids cannot be reused).
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    boot: Option<u64>,
    floor: u64,
    last_seq: Vec<Option<u64>>,
    last_echo: Vec<u64>,
}

impl ReplayGuard {
    /// A guard for `channels` channels, refusing boot ids below `boot_floor` (the highest
    /// peer boot id persisted before a restart; 0 when none).
    pub fn new(channels: usize, boot_floor: u64) -> ReplayGuard {
        ReplayGuard { boot: None, floor: boot_floor, last_seq: vec![None; channels], last_echo: vec![0; channels] }
    }

    /// The peer's current boot id, once one was accepted.
    pub fn boot(&self) -> Option<u64> {
        self.boot
    }

    /// Admit or refuse a packet. `fresh_echo` is the echoed sequence when the packet
    /// echoes our current boot id and a sequence we really sent; a new such echo proves the
    /// packet is not a recording.
    pub fn admit(
        &mut self,
        channel: usize,
        boot: u64,
        seq: u64,
        fresh_echo: Option<u64>,
    ) -> Result<Admission, PacketError> {
        let Some(&last_echo) = self.last_echo.get(channel) else { return Err(PacketError::WrongChannel(channel)) };
        let proven_fresh = fresh_echo.is_some_and(|e| e > last_echo);
        let admission = match self.boot {
            Some(cur) if boot == cur => {
                let newer = self.last_seq[channel].is_none_or(|l| seq > l);
                // Not newer but provably fresh: the peer restarted and reused its boot id.
                if !newer && !proven_fresh {
                    return Err(PacketError::Replay { channel, seq });
                }
                Admission::Accepted
            }
            Some(cur) if boot > cur => Admission::NewBoot { previous: Some(cur) },
            Some(_) if !proven_fresh => return Err(PacketError::StaleBoot(boot)),
            None if boot < self.floor && !proven_fresh => return Err(PacketError::StaleBoot(boot)),
            previous => Admission::NewBoot { previous },
        };
        if let Admission::NewBoot { .. } = admission {
            self.boot = Some(boot);
            self.last_seq.iter_mut().for_each(|s| *s = None);
        }
        self.last_seq[channel] = Some(seq);
        if let Some(e) = fresh_echo {
            self.last_echo[channel] = self.last_echo[channel].max(e);
        }
        Ok(admission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn ring(id: u8, fill: u8) -> Keyring {
        let mut k = [fill; 32];
        k[0] = fill.wrapping_add(1);
        Keyring::new(&[(id, k)]).unwrap()
    }

    fn sample() -> Heartbeat {
        Heartbeat {
            node: NodeName::new("head-a").unwrap(),
            boot: 0x0102_0304_0506_0708,
            seq: 42,
            channel_tag: channel_tag("private"),
            term: 7,
            role: Role::Primary,
            priority: 150,
            flags: Flags { vip_held: true, healthy: true, ..Flags::default() },
            echo_boot: 99,
            echo_seq: 41,
            echo_any_seq: 41,
        }
    }

    #[test]
    fn roundtrip_and_layout() {
        let keys = ring(3, 0x11);
        let hb = sample();
        let b = encode(&hb, &keys);
        assert_eq!(&b[0..4], b"USHB");
        assert_eq!(b[4], 1);
        assert_eq!(b[5], 3);
        assert_eq!(b[6], 1);
        assert_eq!(b[7], 150);
        assert_eq!(u16::from_be_bytes([b[8], b[9]]), 0b11);
        assert_eq!(&b[22..30], &42u64.to_be_bytes());
        assert_eq!(&b[62..68], b"head-a");
        let d = decode(&b, &keys).unwrap();
        assert_eq!(d.key_id, 3);
        assert_eq!(d.heartbeat, hb);
        let all = Flags {
            vip_held: true,
            healthy: true,
            releasing: true,
            yielding: true,
            requesting: true,
            acquiring: true,
            link_up: true,
            leaving: true,
        };
        assert_eq!(Flags::from_bits(all.bits()), Some(all));
        assert_eq!(all.bits(), 0xff);
        assert_eq!(Flags::from_bits(1 << 8), None);
        let long = Heartbeat { node: NodeName::new(&"n".repeat(32)).unwrap(), ..hb };
        assert_eq!(decode(&encode(&long, &keys), &keys).unwrap().heartbeat, long);
    }

    #[test]
    fn strict_errors_are_distinct() {
        let keys = ring(3, 0x11);
        let good = encode(&sample(), &keys);
        assert_eq!(decode(&good[..125], &keys), Err(PacketError::Length { got: 125 }));
        let mut big = good.to_vec();
        big.push(0);
        assert_eq!(decode(&big, &keys), Err(PacketError::Length { got: 127 }));
        assert_eq!(decode(&[0u8; 70000], &keys), Err(PacketError::Length { got: 70000 }));
        let mut m = good;
        m[0] = b'X';
        assert_eq!(decode(&m, &keys), Err(PacketError::Magic));
        let mut v = good;
        v[4] = 2;
        assert_eq!(decode(&v, &keys), Err(PacketError::Version(2)));
        let mut k = good;
        k[5] = 9;
        assert_eq!(decode(&k, &keys), Err(PacketError::UnknownKey(9)));
        assert_eq!(decode(&good, &ring(3, 0x22)), Err(PacketError::Mac(3)));
        let mut t = good;
        t[30] ^= 1;
        assert_eq!(decode(&t, &keys), Err(PacketError::Mac(3)));
    }

    /// Field validation runs only after the MAC: build validly signed packets with bad fields.
    #[test]
    fn bad_fields_after_valid_mac() {
        let keys = ring(3, 0x11);
        let resign = |mut b: [u8; PACKET_LEN]| {
            let (_, key) = keys.signing();
            let mac = blake3::keyed_hash(key, &b[..MAC_OFFSET]);
            b[MAC_OFFSET..].copy_from_slice(mac.as_bytes());
            b
        };
        let good = encode(&sample(), &keys);
        let cases: Vec<(usize, u8, &str)> = vec![
            (6, 2, "role"),
            (8, 0x80, "flags"),
            (NAME_OFFSET, 0, "node name padding"),
            (NAME_OFFSET + 1, b'/', "node name"),
            (NAME_OFFSET + 20, b'x', "node name padding"),
            (NAME_OFFSET + 1, 0xff, "node name"),
        ];
        for (at, val, what) in cases {
            let mut b = good;
            b[at] = val;
            match decode(&resign(b), &keys) {
                Err(PacketError::Field(f)) => assert_eq!(f, what, "byte {at}"),
                other => panic!("byte {at}: {other:?}"),
            }
        }
        let mut empty = good;
        empty[NAME_OFFSET..MAC_OFFSET].fill(0);
        assert_eq!(decode(&resign(empty), &keys), Err(PacketError::Field("node name")));
        let mut z = good;
        z[22..30].copy_from_slice(&0u64.to_be_bytes());
        assert!(matches!(decode(&resign(z), &keys), Err(PacketError::Field(_))));
    }

    /// Random bytes, every truncation and every single-bit flip: no panic, never authentic.
    #[test]
    fn fuzz_never_panics_never_authenticates() {
        let keys = ring(3, 0x11);
        let good = encode(&sample(), &keys);
        for len in 0..good.len() {
            assert_eq!(decode(&good[..len], &keys), Err(PacketError::Length { got: len }));
        }
        for bit in 0..good.len() * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            let r = decode(&b, &keys);
            assert!(r.is_err(), "bit {bit} flipped still decodes");
        }
        let mut rng = StdRng::seed_from_u64(7);
        let mut stats = RxStats::default();
        for i in 0..20_000 {
            let len = if i % 2 == 0 { PACKET_LEN } else { rng.random_range(0..300) };
            let mut b = vec![0u8; len];
            rng.fill(&mut b[..]);
            if i % 4 == 0 && len >= 6 {
                // Get past the cheap checks so the MAC check itself is exercised.
                b[0..4].copy_from_slice(&MAGIC);
                b[4] = VERSION;
                b[5] = 3;
            }
            match decode(&b, &keys) {
                Ok(d) => panic!("random bytes authenticated: {d:?}"),
                Err(e) => stats.record(&e),
            }
        }
        assert_eq!(stats.rejected(), 20_000);
        assert!(stats.mac > 0 && stats.length > 0 && stats.magic > 0, "{stats:?}");
    }

    #[test]
    fn key_rotation() {
        let old = [0x11u8; 31].iter().chain([0x12].iter()).copied().collect::<Vec<_>>();
        let new = [0x21u8; 31].iter().chain([0x22].iter()).copied().collect::<Vec<_>>();
        let old: [u8; 32] = old.try_into().unwrap();
        let new: [u8; 32] = new.try_into().unwrap();
        let a = Keyring::new(&[(1, old)]).unwrap();
        let both_old_first = Keyring::new(&[(1, old), (2, new)]).unwrap();
        let both_new_first = Keyring::new(&[(2, new), (1, old)]).unwrap();
        let b = Keyring::new(&[(2, new)]).unwrap();
        let hb = sample();
        // Step by step, each node always accepts what the other sends.
        assert!(decode(&encode(&hb, &a), &both_old_first).is_ok());
        assert!(decode(&encode(&hb, &both_old_first), &a).is_ok());
        assert!(decode(&encode(&hb, &both_new_first), &both_old_first).is_ok());
        assert_eq!(decode(&encode(&hb, &both_new_first), &both_old_first).unwrap().key_id, 2);
        assert!(decode(&encode(&hb, &b), &both_new_first).is_ok());
        assert_eq!(decode(&encode(&hb, &a), &b), Err(PacketError::UnknownKey(1)));
        assert_eq!(Keyring::new(&[(1, old), (1, new)]), Err(KeyFileError::DuplicateId(1)));
        assert_eq!(Keyring::new(&[(1, old), (2, new), (3, old)]), Err(KeyFileError::TooMany(3)));
        assert_eq!(Keyring::new(&[(4, [0; 32])]), Err(KeyFileError::Weak(4)));
    }

    #[test]
    fn key_file_parse_and_generate() {
        let mut rng = StdRng::seed_from_u64(1);
        let text = generate_key_file(7, rng.random()).unwrap();
        let k = parse_key_file(&text).unwrap();
        assert_eq!(k.ids(), vec![7]);
        assert_eq!(format_key_file(&k), text);
        assert!(!format!("{k:?}").contains(&text.lines().last().unwrap()[2..10]), "Debug leaks key bytes");
        let (k1, k2) = ("0123456789abcdef".repeat(4), "fedcba9876543210".repeat(4));
        let two = format!("# rotation\n\n2 {k1}  # new\n1 {k2}\n");
        let k2 = parse_key_file(&two).unwrap();
        assert_eq!(k2.ids(), vec![2, 1]);
        assert_eq!(k2.signing_id(), 2);
        let bad: Vec<(String, usize)> = vec![
            (format!("x {k1}\n"), 1),
            (format!("256 {k1}\n"), 1),
            ("#c\n1 abcd\n".into(), 2),
            (format!("1 {}\n", "zz".repeat(32)), 1),
            (format!("1 {k1} extra\n"), 1),
            ("1\n".into(), 1),
        ];
        for (t, line) in bad {
            match parse_key_file(&t) {
                Err(KeyFileError::Line { line: l, .. }) => assert_eq!(l, line, "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
        assert_eq!(parse_key_file("# nothing\n"), Err(KeyFileError::Empty));
    }

    #[test]
    fn node_names() {
        assert!(NodeName::new("head-a.cluster_1").is_ok());
        for bad in ["", "a b", "x/y", "é", &"n".repeat(33)] {
            assert!(NodeName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replay_guard_windows() {
        let mut g = ReplayGuard::new(2, 0);
        assert_eq!(g.admit(0, 100, 5, None), Ok(Admission::NewBoot { previous: None }));
        assert_eq!(g.admit(0, 100, 6, None), Ok(Admission::Accepted));
        assert_eq!(g.admit(0, 100, 6, None), Err(PacketError::Replay { channel: 0, seq: 6 }));
        assert_eq!(g.admit(0, 100, 3, None), Err(PacketError::Replay { channel: 0, seq: 3 }));
        // Windows are per channel: the same sequence is new on the other channel.
        assert_eq!(g.admit(1, 100, 6, None), Ok(Admission::Accepted));
        // A newer boot replaces the old one and resets every window ...
        assert_eq!(g.admit(1, 200, 1, None), Ok(Admission::NewBoot { previous: Some(100) }));
        assert_eq!(g.admit(0, 200, 1, None), Ok(Admission::Accepted));
        // ... and the old boot can no longer be replayed, whatever its sequence.
        assert_eq!(g.admit(0, 100, 1000, None), Err(PacketError::StaleBoot(100)));
        assert_eq!(g.admit(2, 200, 9, None), Err(PacketError::WrongChannel(2)));
    }

    #[test]
    fn replay_guard_freshness_proof() {
        let mut g = ReplayGuard::new(1, 0);
        g.admit(0, 500, 10, Some(3)).unwrap();
        // Same boot id reused by a restarted peer: low sequence, but a new echo of ours.
        assert_eq!(g.admit(0, 500, 1, Some(4)), Ok(Admission::Accepted));
        // A recording of that packet carries the same echo: refused.
        assert_eq!(g.admit(0, 500, 1, Some(4)), Err(PacketError::Replay { channel: 0, seq: 1 }));
        // A lower boot id (peer lost its counter) is accepted only with a new echo.
        assert_eq!(g.admit(0, 400, 1, None), Err(PacketError::StaleBoot(400)));
        assert_eq!(g.admit(0, 400, 1, Some(4)), Err(PacketError::StaleBoot(400)));
        assert_eq!(g.admit(0, 400, 1, Some(5)), Ok(Admission::NewBoot { previous: Some(500) }));
        assert_eq!(g.boot(), Some(400));
    }

    #[test]
    fn replay_guard_floor_survives_restart() {
        // After our restart the persisted floor still refuses older boots without proof.
        let mut g = ReplayGuard::new(1, 300);
        assert_eq!(g.admit(0, 299, 50, None), Err(PacketError::StaleBoot(299)));
        assert_eq!(g.admit(0, 300, 50, None), Ok(Admission::NewBoot { previous: None }));
    }

    #[test]
    fn boot_ids_increase() {
        assert_eq!(next_boot_id(10, 5), 11);
        assert_eq!(next_boot_id(10, 500), 500);
        assert_eq!(next_boot_id(u64::MAX, 0), u64::MAX);
        assert_ne!(channel_tag("private"), channel_tag("public"));
    }
}
