//! When to send gratuitous ARP after taking the VIP: at once, then again at 0.1, 0.5, 1, 2
//! and 5 s because switches and clients miss the first burst (keepalived grew repeat
//! options for the same reason), then every 60 s for as long as the VIP is held, so a
//! cache poisoned by a stale holder heals by itself.

use std::time::Duration;

/// Offsets of the initial burst from the moment the schedule starts.
pub const BURST: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Period of the refresh after the burst.
pub const REFRESH: Duration = Duration::from_secs(60);

/// A running schedule; `poll` says when to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarpSchedule {
    start: Duration,
    sent: u64,
}

impl GarpSchedule {
    /// A schedule whose first send is due at `now`.
    pub fn start(now: Duration) -> GarpSchedule {
        GarpSchedule { start: now, sent: 0 }
    }

    /// When the next send is due.
    pub fn next_at(&self) -> Duration {
        let burst = BURST.len() as u64;
        let offset = match usize::try_from(self.sent).ok().and_then(|i| BURST.get(i)) {
            Some(d) => *d,
            None => BURST[BURST.len() - 1]
                .saturating_add(REFRESH.saturating_mul(u32::try_from(self.sent - burst + 1).unwrap_or(u32::MAX))),
        };
        self.start.saturating_add(offset)
    }

    /// True when a send is due at `now`. Sends missed during a stall collapse into one.
    pub fn poll(&mut self, now: Duration) -> bool {
        if now < self.next_at() {
            return false;
        }
        while self.next_at() <= now {
            self.sent += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_refresh() {
        let t0 = Duration::from_secs(100);
        let mut g = GarpSchedule::start(t0);
        let mut sends = Vec::new();
        let mut t = t0;
        while t <= t0 + Duration::from_secs(190) {
            if g.poll(t) {
                sends.push((t - t0).as_millis());
            }
            t += ms(10);
        }
        assert_eq!(sends, vec![0, 100, 500, 1000, 2000, 5000, 65000, 125000, 185000]);
    }

    #[test]
    fn stall_collapses_missed_sends() {
        let mut g = GarpSchedule::start(Duration::ZERO);
        assert!(g.poll(Duration::ZERO));
        assert!(g.poll(Duration::from_secs(3)));
        assert_eq!(g.next_at(), Duration::from_secs(5));
        assert!(!g.poll(Duration::from_secs(4)));
    }
}
