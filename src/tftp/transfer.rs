//! The sending side of one read transfer as a pure state machine: the OACK handshake,
//! windows of DATA blocks (RFC 7440), ACK handling, retransmission with exponential
//! backoff and the retry budget. No sockets, no clock, no file: the socket loop in
//! [`super`] feeds it what the client sent (or that the timer fired) and carries out the
//! [`Step`] it returns.
//!
//! # Rules
//!
//! - Blocks are numbered from 1; the last block is shorter than blksize, and empty when
//!   the file size is a multiple of blksize (RFC 1350: a full block means more follows).
//! - A transfer with accepted options starts with the OACK; ACK 0 acknowledges it
//!   (RFC 2347). Any other ACK meanwhile is ignored.
//! - A window is up to windowsize blocks from the first unacknowledged one. An ACK of any
//!   block in the window acknowledges everything up to it, and the next window starts
//!   right after it (RFC 7440 section 4: a client that misses a block ACKs the last one it
//!   has in sequence).
//! - Only a timeout retransmits. A repeated ACK of the block before the window, an ACK
//!   older than that, or one beyond what was sent changes nothing: answering a duplicate
//!   ACK with data is the Sorcerer's Apprentice bug (RFC 1123 4.2.3.1), which with windows
//!   doubles every window for the rest of the transfer.
//! - Block numbers on the wire are the block index modulo 65536, so after 65535 comes 0
//!   (RFC 1350 leaves the rollover open; 0 is what this server always sent, and what
//!   16-bit block counters in clients produce); ACK numbers are read relative to the
//!   window, so a file of any length can be sent.
//! - Each timeout doubles the wait (capped at 30 s); after `retries` retransmissions
//!   without progress the transfer gives up. Progress resets the count.
//! - A client ERROR ends the transfer at once, in any phase.

use super::packet::Negotiated;
use std::time::Duration;

/// Longest wait for an answer, however often the timeout has doubled.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// The retransmission timeout after `tries` unanswered sends: doubling, at most 30 s
/// (never below `base`).
pub fn backoff(base: Duration, tries: u32) -> Duration {
    base.saturating_mul(1u32 << tries.min(16)).min(MAX_TIMEOUT).max(base)
}

/// What a transfer runs with: the outcome of option negotiation and the server's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferConfig {
    /// Bytes per DATA block (negotiated blksize, 512 without the option).
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK (negotiated windowsize, 1 without it).
    pub windowsize: u16,
    /// File length in bytes (what tsize announced).
    pub size: u64,
    /// First retransmission timeout (the negotiated timeout or the server's default).
    pub timeout: Duration,
    /// Retransmissions without progress before giving up.
    pub retries: u32,
    /// Whether an OACK must be sent and acknowledged before DATA.
    pub oack: bool,
}

impl TransferConfig {
    /// The configuration for a file of `size` bytes after negotiation `neg`: the client's
    /// timeout if it asked for one, else the server's `default_timeout`; an OACK if any
    /// option was accepted.
    pub fn negotiated(neg: &Negotiated, size: u64, default_timeout: Duration, retries: u32) -> TransferConfig {
        TransferConfig {
            blksize: neg.blksize,
            windowsize: neg.windowsize,
            size,
            timeout: neg.timeout_secs.map(|s| Duration::from_secs(s.into())).unwrap_or(default_timeout),
            retries,
            oack: !neg.oack.is_empty(),
        }
    }
}

/// One DATA block of a [`Blocks`] range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The block number on the wire (index modulo 65536).
    pub number: u16,
    /// Offset of its payload in the file.
    pub offset: u64,
    /// Payload length (less than blksize only for the last block; may be 0).
    pub len: usize,
}

/// Consecutive DATA blocks to send, by absolute index (1-based, never wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// Index of the first block.
    pub first: u64,
    /// Index of the last block (inclusive).
    pub last: u64,
    blksize: u64,
    size: u64,
}

impl Blocks {
    /// How many blocks.
    pub fn count(&self) -> usize {
        (self.last + 1 - self.first) as usize
    }

    /// File offset of the first block's payload.
    pub fn offset(&self) -> u64 {
        (self.first - 1) * self.blksize
    }

    /// Payload bytes of all the blocks together (a contiguous range from [`Self::offset`]).
    pub fn bytes(&self) -> usize {
        self.size.saturating_sub(self.offset()).min(self.count() as u64 * self.blksize) as usize
    }

    /// The blocks in sending order.
    pub fn iter(&self) -> impl Iterator<Item = Block> + '_ {
        (self.first..=self.last).map(|i| {
            let offset = (i - 1) * self.blksize;
            let len = self.size.saturating_sub(offset).min(self.blksize) as usize;
            Block { number: i as u16, offset, len }
        })
    }
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No progress after this many retransmissions.
    GaveUp(u32),
    /// The client sent an ERROR (code, message).
    ClientError(u16, String),
}

/// What the socket loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send the OACK and wait for an answer for `timeout`.
    Oack {
        /// How long to wait before [`Transfer::on_timeout`].
        timeout: Duration,
    },
    /// Send these DATA blocks, then wait for an answer for `timeout`.
    Data {
        /// The blocks, in order.
        blocks: Blocks,
        /// How long to wait before [`Transfer::on_timeout`].
        timeout: Duration,
    },
    /// Send nothing; keep waiting until the current timeout.
    Wait,
    /// The last block is acknowledged: the transfer is complete.
    Done,
    /// The transfer failed.
    Fail(Failure),
}

/// Where a transfer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for ACK 0.
    Oack,
    /// Blocks `first..=end` sent, waiting for an ACK.
    Data,
    /// Complete or failed; the step that ended it.
    Over(Step),
}

/// The state of one read transfer (see the module documentation for its rules).
#[derive(Debug, Clone)]
pub struct Transfer {
    blksize: u64,
    window: u64,
    size: u64,
    /// Index of the last block (the short or empty one).
    last: u64,
    base: Duration,
    retries: u32,
    phase: Phase,
    /// First block not yet acknowledged.
    first: u64,
    /// Last block of the window in flight.
    end: u64,
    /// Retransmissions since the last progress.
    tries: u32,
}

impl Transfer {
    /// A transfer and its first step (the OACK, or the first window).
    pub fn new(cfg: TransferConfig) -> (Transfer, Step) {
        // Negotiation never yields 0 for either; a zero must not divide or stall anyway.
        let blksize = u64::from(cfg.blksize.max(1));
        let window = u64::from(cfg.windowsize.max(1));
        let mut t = Transfer {
            blksize,
            window,
            size: cfg.size,
            last: cfg.size / blksize + 1,
            base: cfg.timeout,
            retries: cfg.retries,
            phase: Phase::Oack,
            first: 1,
            end: 0,
            tries: 0,
        };
        let step = if cfg.oack { Step::Oack { timeout: backoff(t.base, 0) } } else { t.send_from(1) };
        (t, step)
    }

    /// Index of the last block; the transfer is complete when it is acknowledged.
    pub fn last_block(&self) -> u64 {
        self.last
    }

    /// Whether the transfer is complete or failed.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Over(_))
    }

    /// The client acknowledged block number `block`.
    pub fn on_ack(&mut self, block: u16) -> Step {
        match self.phase {
            Phase::Over(ref s) => s.clone(),
            Phase::Oack if block == 0 => {
                // The data phase has its own retry budget.
                self.tries = 0;
                self.send_from(1)
            }
            Phase::Oack => Step::Wait,
            Phase::Data => {
                // The ACK names a block in [first-1, end], modulo 65536: how far past the
                // block before the window it is. 0 is a duplicate; anything past `end` was
                // never sent, and an ACK older than the window wraps to a large distance.
                let prev = self.first - 1;
                let ahead = u64::from(block.wrapping_sub(prev as u16));
                if ahead == 0 || ahead > self.end - prev {
                    return Step::Wait;
                }
                let acked = prev + ahead;
                if acked == self.last {
                    return self.over(Step::Done);
                }
                self.tries = 0;
                self.send_from(acked + 1)
            }
        }
    }

    /// The timeout of the last [`Step::Oack`] or [`Step::Data`] passed without progress.
    pub fn on_timeout(&mut self) -> Step {
        if let Phase::Over(ref s) = self.phase {
            return s.clone();
        }
        self.tries += 1;
        if self.tries > self.retries {
            return self.over(Step::Fail(Failure::GaveUp(self.retries)));
        }
        let timeout = backoff(self.base, self.tries);
        match self.phase {
            Phase::Oack => Step::Oack { timeout },
            _ => Step::Data { blocks: self.window(), timeout },
        }
    }

    /// The client sent ERROR `code` with `message`: the transfer ends.
    pub fn on_error(&mut self, code: u16, message: String) -> Step {
        if let Phase::Over(ref s) = self.phase {
            return s.clone();
        }
        self.over(Step::Fail(Failure::ClientError(code, message)))
    }

    /// Start a new window at block `first`.
    fn send_from(&mut self, first: u64) -> Step {
        self.phase = Phase::Data;
        self.first = first;
        self.end = (first + self.window - 1).min(self.last);
        Step::Data { blocks: self.window(), timeout: backoff(self.base, self.tries) }
    }

    fn window(&self) -> Blocks {
        Blocks { first: self.first, last: self.end, blksize: self.blksize, size: self.size }
    }

    fn over(&mut self, step: Step) -> Step {
        self.phase = Phase::Over(step.clone());
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn cfg(blksize: u16, windowsize: u16, size: u64, oack: bool) -> TransferConfig {
        TransferConfig { blksize, windowsize, size, timeout: T, retries: 3, oack }
    }

    /// The blocks of a Data step as (wire number, offset, len).
    fn data(s: &Step) -> Vec<(u16, u64, usize)> {
        match s {
            Step::Data { blocks, .. } => blocks.iter().map(|b| (b.number, b.offset, b.len)).collect(),
            other => panic!("expected Data, got {other:?}"),
        }
    }

    fn numbers(s: &Step) -> Vec<u16> {
        data(s).into_iter().map(|b| b.0).collect()
    }

    fn timeout(s: &Step) -> Duration {
        match s {
            Step::Data { timeout, .. } | Step::Oack { timeout } => *timeout,
            other => panic!("no timeout in {other:?}"),
        }
    }

    #[test]
    fn configuration_follows_the_negotiation() {
        use crate::tftp::packet::{Limits, negotiate};
        let lim = Limits { max_blksize: 1468, max_windowsize: 64 };
        let opts = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let neg = negotiate(&opts(&[("blksize", "9000"), ("windowsize", "16"), ("timeout", "3")]), 77, lim);
        let c = TransferConfig::negotiated(&neg, 77, T, 5);
        assert_eq!(
            c,
            TransferConfig {
                blksize: 1468,
                windowsize: 16,
                size: 77,
                timeout: Duration::from_secs(3),
                retries: 5,
                oack: true
            }
        );
        // No options: lock-step 512-byte blocks, the server's timeout, no OACK.
        let neg = negotiate(&[], 77, lim);
        let c = TransferConfig::negotiated(&neg, 77, T, 5);
        assert_eq!((c.blksize, c.windowsize, c.timeout, c.oack), (512, 1, T, false));
        let (_, first) = Transfer::new(c);
        assert_eq!(data(&first), [(1, 0, 77)]);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(500);
        assert_eq!(backoff(b, 0), b);
        assert_eq!(backoff(b, 3), Duration::from_secs(4));
        assert_eq!(backoff(b, 40), Duration::from_secs(30));
        assert_eq!(backoff(Duration::from_secs(60), 2), Duration::from_secs(60));
    }

    #[test]
    fn lock_step_sends_one_block_per_ack_and_ends_with_the_short_block() {
        // 1300 bytes in 512-byte blocks: 512, 512, 276.
        let (mut t, s) = Transfer::new(cfg(512, 1, 1300, false));
        assert_eq!(data(&s), [(1, 0, 512)]);
        assert_eq!(timeout(&s), T);
        assert_eq!(data(&t.on_ack(1)), [(2, 512, 512)]);
        assert_eq!(data(&t.on_ack(2)), [(3, 1024, 276)]);
        assert_eq!(t.on_ack(3), Step::Done);
        assert!(t.is_over());
        // Anything after the end repeats the end.
        assert_eq!(t.on_ack(3), Step::Done);
        assert_eq!(t.on_timeout(), Step::Done);
    }

    #[test]
    fn a_multiple_of_blksize_ends_with_an_empty_block() {
        let (mut t, s) = Transfer::new(cfg(512, 1, 1024, false));
        assert_eq!(t.last_block(), 3);
        assert_eq!(data(&s), [(1, 0, 512)]);
        assert_eq!(data(&t.on_ack(1)), [(2, 512, 512)]);
        // Block 2 was full, so the client waits for more: an empty block 3 ends it.
        assert_eq!(data(&t.on_ack(2)), [(3, 1024, 0)]);
        assert_eq!(t.on_ack(3), Step::Done);
        // An empty file is one empty block.
        let (mut t, s) = Transfer::new(cfg(512, 4, 0, false));
        assert_eq!(data(&s), [(1, 0, 0)]);
        assert_eq!(t.on_ack(1), Step::Done);
        // Windowed: the empty block rides in the last window.
        let (mut t, s) = Transfer::new(cfg(100, 8, 300, false));
        assert_eq!(data(&s), [(1, 0, 100), (2, 100, 100), (3, 200, 100), (4, 300, 0)]);
        let Step::Data { blocks, .. } = s else { unreachable!() };
        assert_eq!((blocks.offset(), blocks.bytes(), blocks.count()), (0, 300, 4));
        assert_eq!(
            t.on_ack(3),
            Step::Data { blocks: Blocks { first: 4, last: 4, blksize: 100, size: 300 }, timeout: T }
        );
        assert_eq!(t.on_ack(4), Step::Done);
    }

    #[test]
    fn windows_advance_by_the_acked_block() {
        // 10 blocks of 10 bytes plus an empty 11th, windows of 4.
        let (mut t, s) = Transfer::new(cfg(10, 4, 100, false));
        assert_eq!(numbers(&s), [1, 2, 3, 4]);
        assert_eq!(numbers(&t.on_ack(4)), [5, 6, 7, 8]);
        // A partial ACK (block 7 lost, the client ACKs 6): the next window starts at 7.
        let s = t.on_ack(6);
        assert_eq!(numbers(&s), [7, 8, 9, 10]);
        let Step::Data { blocks, .. } = s else { unreachable!() };
        assert_eq!((blocks.offset(), blocks.bytes()), (60, 40));
        // The last window is cut at the last block.
        assert_eq!(numbers(&t.on_ack(10)), [11]);
        assert_eq!(t.on_ack(11), Step::Done);
    }

    #[test]
    fn duplicate_acks_never_retransmit() {
        // Lock-step: a repeated ACK of the previous block (the client's own retransmission
        // crossing our DATA) must not be answered, or every block goes out twice from then
        // on (the Sorcerer's Apprentice, RFC 1123 4.2.3.1).
        let (mut t, _) = Transfer::new(cfg(512, 1, 5000, false));
        assert_eq!(numbers(&t.on_ack(1)), [2]);
        for _ in 0..3 {
            assert_eq!(t.on_ack(1), Step::Wait);
        }
        assert_eq!(numbers(&t.on_ack(2)), [3]);
        // Windowed: a repeated ACK of the block before the window does not resend it
        // either, however often it comes.
        let (mut t, _) = Transfer::new(cfg(512, 4, 50_000, false));
        assert_eq!(numbers(&t.on_ack(4)), [5, 6, 7, 8]);
        for _ in 0..3 {
            assert_eq!(t.on_ack(4), Step::Wait);
        }
        // Only the timeout resends the window.
        let s = t.on_timeout();
        assert_eq!(numbers(&s), [5, 6, 7, 8]);
        assert_eq!(timeout(&s), 2 * T);
        assert_eq!(t.on_ack(4), Step::Wait);
        assert_eq!(numbers(&t.on_ack(8)), [9, 10, 11, 12]);
    }

    #[test]
    fn stale_and_future_acks_are_ignored() {
        let (mut t, _) = Transfer::new(cfg(512, 4, 50_000, false));
        assert_eq!(numbers(&t.on_ack(4)), [5, 6, 7, 8]);
        assert_eq!(numbers(&t.on_ack(8)), [9, 10, 11, 12]);
        // Older than the window: ACKs of blocks 1..7 are stale.
        for old in [0, 1, 3, 7] {
            assert_eq!(t.on_ack(old), Step::Wait, "ACK {old}");
        }
        // Beyond what was sent: 13 and far beyond (including ones that would wrap).
        for future in [13, 14, 1000, 65535] {
            assert_eq!(t.on_ack(future), Step::Wait, "ACK {future}");
        }
        // The window is still in flight: its last block moves on.
        assert_eq!(numbers(&t.on_ack(12)), [13, 14, 15, 16]);
        // An ignored ACK is no progress: the retry count keeps growing.
        assert_eq!(timeout(&t.on_timeout()), 2 * T);
        assert_eq!(t.on_ack(20), Step::Wait);
        assert_eq!(timeout(&t.on_timeout()), 4 * T);
    }

    #[test]
    fn block_numbers_wrap_to_zero() {
        // 70000 blocks of 8 bytes (plus the empty last one): past 65535 the wire number
        // is 0, then 1, ...; the offsets keep growing.
        let size = 70_000 * 8;
        let (mut t, mut s) = Transfer::new(cfg(8, 16, size, false));
        assert_eq!(t.last_block(), 70_001);
        let mut sent = 0u64;
        let mut wrapped = None;
        loop {
            let blocks = match s {
                Step::Data { blocks, .. } => blocks,
                Step::Done => break,
                other => panic!("{other:?}"),
            };
            for b in blocks.iter() {
                sent += 1;
                assert_eq!(b.number, sent as u16);
                assert_eq!(b.offset, (sent - 1) * 8);
                if sent == 65_536 {
                    wrapped = Some(blocks);
                }
            }
            s = t.on_ack(blocks.last as u16);
        }
        assert_eq!(sent, 70_001);
        // The window across the wrap: 65521..=65536 on the wire is 65521..=65535, 0.
        let w = wrapped.unwrap();
        let nums: Vec<u16> = w.iter().map(|b| b.number).collect();
        assert_eq!(nums.first(), Some(&65521));
        assert_eq!(&nums[nums.len() - 2..], &[65535, 0]);
    }

    #[test]
    fn acks_across_the_wrap_are_read_relative_to_the_window() {
        let (mut t, _) = Transfer::new(cfg(8, 4, 70_000 * 8, false));
        // Walk to the window 65533..=65536 (wire 65533, 65534, 65535, 0).
        let mut acked = 0u64;
        while acked + 4 < 65_532 {
            acked += 4;
            t.on_ack(acked as u16);
        }
        assert_eq!(numbers(&t.on_ack(65_532)), [65533, 65534, 65535, 0]);
        // A duplicate of 65532 and a stale one from before the wrap: nothing.
        assert_eq!(t.on_ack(65_532), Step::Wait);
        assert_eq!(t.on_ack(65_000), Step::Wait);
        // 1 is beyond the window (block 65537 was not sent yet).
        assert_eq!(t.on_ack(1), Step::Wait);
        // ACK 0 is block 65536: the next window is 65537.. = wire 1..
        assert_eq!(numbers(&t.on_ack(0)), [1, 2, 3, 4]);
        // The old ACK 65535 is now stale.
        assert_eq!(t.on_ack(65_535), Step::Wait);
        assert_eq!(numbers(&t.on_ack(2)), [3, 4, 5, 6]);
    }

    #[test]
    fn timeouts_back_off_and_give_up_after_the_retries() {
        let (mut t, s) = Transfer::new(cfg(512, 2, 5000, false));
        assert_eq!(numbers(&s), [1, 2]);
        for (i, want) in [2, 4, 8].into_iter().enumerate() {
            let s = t.on_timeout();
            assert_eq!(numbers(&s), [1, 2], "retry {i}");
            assert_eq!(timeout(&s), want * T);
        }
        assert_eq!(t.on_timeout(), Step::Fail(Failure::GaveUp(3)));
        assert!(t.is_over());
        assert_eq!(t.on_ack(2), Step::Fail(Failure::GaveUp(3)));
        // Progress resets the count (and the backoff).
        let (mut t, _) = Transfer::new(cfg(512, 2, 5000, false));
        t.on_timeout();
        t.on_timeout();
        t.on_timeout();
        let s = t.on_ack(1);
        assert_eq!((numbers(&s), timeout(&s)), (vec![2, 3], T));
        for _ in 0..3 {
            assert!(matches!(t.on_timeout(), Step::Data { .. }));
        }
        assert_eq!(t.on_timeout(), Step::Fail(Failure::GaveUp(3)));
    }

    #[test]
    fn oack_is_acknowledged_by_ack_zero() {
        let (mut t, s) = Transfer::new(cfg(1468, 16, 1468 * 20, true));
        assert_eq!(s, Step::Oack { timeout: T });
        // Nothing but ACK 0 starts the data.
        assert_eq!(t.on_ack(1), Step::Wait);
        assert_eq!(t.on_ack(16), Step::Wait);
        assert_eq!(t.on_timeout(), Step::Oack { timeout: 2 * T });
        let s = t.on_ack(0);
        assert_eq!(numbers(&s), (1..=16).collect::<Vec<_>>());
        // Data starts with a fresh retry count.
        assert_eq!(timeout(&s), T);
        // A late second ACK 0 is a duplicate now.
        assert_eq!(t.on_ack(0), Step::Wait);
        assert_eq!(numbers(&t.on_ack(16)), [17, 18, 19, 20, 21]);
        assert_eq!(t.on_ack(21), Step::Done);
    }

    #[test]
    fn unanswered_oack_gives_up() {
        let (mut t, _) = Transfer::new(cfg(512, 1, 10, true));
        for want in [2, 4, 8] {
            assert_eq!(t.on_timeout(), Step::Oack { timeout: want * T });
        }
        assert_eq!(t.on_timeout(), Step::Fail(Failure::GaveUp(3)));
    }

    #[test]
    fn a_client_error_ends_the_transfer_in_any_phase() {
        let (mut t, _) = Transfer::new(cfg(1468, 1, 1 << 20, true));
        let fail = Step::Fail(Failure::ClientError(8, "tsize probe".into()));
        assert_eq!(t.on_error(8, "tsize probe".into()), fail);
        assert_eq!(t.on_ack(0), fail);
        assert_eq!(t.on_timeout(), fail);
        let (mut t, _) = Transfer::new(cfg(512, 4, 1 << 20, false));
        t.on_ack(4);
        assert_eq!(t.on_error(0, String::new()), Step::Fail(Failure::ClientError(0, String::new())));
        assert!(t.is_over());
    }

    #[test]
    fn zero_options_do_not_stall_or_divide_by_zero() {
        let (mut t, s) = Transfer::new(cfg(0, 0, 3, false));
        assert_eq!(data(&s), [(1, 0, 1)]);
        assert_eq!(numbers(&t.on_ack(1)), [2]);
    }
}
