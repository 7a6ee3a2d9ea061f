//! Per-channel bookkeeping of the state machine: when the peer was last heard, when it
//! last proved it hears us (the echo), a loss estimate, and the log of our recent sends
//! that turns an echoed sequence back into the time we sent it.

use std::collections::VecDeque;
use std::time::Duration;

/// Weight of one packet in the loss estimate (an exponential moving average over about
/// 16 send rounds: reacts within seconds, ignores a single drop).
const LOSS_ALPHA: f64 = 1.0 / 16.0;

/// What one channel knows about the peer.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// When a heartbeat last arrived (machine clock).
    pub last_heard: Option<Duration>,
    /// When we sent the newest packet the peer echoed back on this channel.
    pub confirmed_sent_at: Option<Duration>,
    /// The peer's last sequence heard here (echoed in our packets).
    pub last_rx_seq: u64,
    /// Estimated fraction of the peer's packets lost on this channel, 0..=1.
    pub loss: f64,
    /// Sends the adapter reported as failed.
    pub send_failures: u64,
    /// The last round trip measured through the echo (includes up to one interval of the
    /// peer's send delay).
    pub rtt: Option<Duration>,
}

impl Link {
    /// Account for an accepted heartbeat with sequence `seq`; `echo_sent_at` is when we
    /// sent the packet it echoes, if that echo is ours.
    pub fn on_receive(&mut self, seq: u64, now: Duration, echo_sent_at: Option<Duration>) {
        if self.last_rx_seq != 0 && seq > self.last_rx_seq {
            let missed = (seq - self.last_rx_seq - 1).min(64);
            for _ in 0..missed {
                self.loss += LOSS_ALPHA * (1.0 - self.loss);
            }
        }
        self.loss -= LOSS_ALPHA * self.loss;
        self.last_rx_seq = seq;
        self.last_heard = Some(now);
        if let Some(sent) = echo_sent_at
            && self.confirmed_sent_at.is_none_or(|c| sent > c)
        {
            self.confirmed_sent_at = Some(sent);
            self.rtt = Some(now.saturating_sub(sent));
        }
    }

    /// Forget the peer's sequence numbers (it restarted with a new boot id).
    pub fn reset_peer_boot(&mut self) {
        self.last_rx_seq = 0;
        self.loss = 0.0;
    }

    /// Heard within `window` before `now`.
    pub fn heard_within(&self, now: Duration, window: Duration) -> bool {
        self.last_heard.is_some_and(|t| now.saturating_sub(t) < window)
    }

    /// The peer echoed a packet we sent within `window` before `now`: it hears us.
    pub fn confirmed_within(&self, now: Duration, window: Duration) -> bool {
        self.confirmed_sent_at.is_some_and(|t| now.saturating_sub(t) < window)
    }

    /// Working both ways within `window`.
    pub fn up(&self, now: Duration, window: Duration) -> bool {
        self.heard_within(now, window) && self.confirmed_within(now, window)
    }
}

/// Our recent sends: sequence and send time, oldest first, kept for `keep`.
#[derive(Debug, Clone)]
pub struct SentLog {
    entries: VecDeque<(u64, Duration)>,
    keep: Duration,
}

impl SentLog {
    /// A log that keeps entries for `keep`.
    pub fn new(keep: Duration) -> SentLog {
        SentLog { entries: VecDeque::new(), keep }
    }

    /// Record a send and drop entries older than the window.
    pub fn push(&mut self, seq: u64, at: Duration) {
        self.entries.push_back((seq, at));
        while self.entries.front().is_some_and(|&(_, t)| at.saturating_sub(t) > self.keep) {
            self.entries.pop_front();
        }
    }

    /// When `seq` was sent, if still in the window.
    pub fn sent_at(&self, seq: u64) -> Option<Duration> {
        let i = self.entries.binary_search_by_key(&seq, |&(s, _)| s).ok()?;
        Some(self.entries[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn loss_estimate_tracks_gaps() {
        let mut l = Link::default();
        for s in 1..200 {
            l.on_receive(s, ms(s * 100), None);
        }
        assert!(l.loss < 0.01, "{}", l.loss);
        let mut seq = 200;
        for _ in 0..200 {
            seq += 2; // every other packet lost
            l.on_receive(seq, ms(seq * 100), None);
        }
        assert!((l.loss - 0.5).abs() < 0.1, "{}", l.loss);
    }

    #[test]
    fn confirmation_and_rtt() {
        let mut l = Link::default();
        l.on_receive(1, ms(1000), Some(ms(990)));
        assert_eq!(l.rtt, Some(ms(10)));
        assert!(l.up(ms(1400), ms(500)));
        assert!(!l.up(ms(1500), ms(500)));
        // An older echo does not move the confirmation back.
        l.on_receive(2, ms(1100), Some(ms(900)));
        assert_eq!(l.confirmed_sent_at, Some(ms(990)));
    }

    #[test]
    fn sent_log_window() {
        let mut log = SentLog::new(ms(1000));
        for s in 1..=30 {
            log.push(s, ms(s * 100));
        }
        assert_eq!(log.sent_at(30), Some(ms(3000)));
        assert_eq!(log.sent_at(20), Some(ms(2000)));
        assert_eq!(log.sent_at(19), None);
        assert_eq!(log.sent_at(31), None);
    }
}
