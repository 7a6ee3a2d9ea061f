//! The adaptive dead time: how long the peer must be silent before it counts as dead,
//! derived from how irregular its heartbeats have lately been.
//!
//! Invariants (checked by the tests here and by `sim`):
//! - the dead time is never below the configured floor (`dead_time`) nor above the cap
//!   (`dead_time_max`); with a steady peer it is the floor;
//! - it is at least `2 x gap + interval` for the longest gap between two of the peer's
//!   heartbeats (any channel) completed in the last [`WINDOWS`] x [`WINDOW`]: a peer as
//!   late as it already was once, twice over, is not declared dead;
//! - the silence in progress never counts (only completed gaps do), so a dead peer cannot
//!   push its own detection further away;
//! - no gap is measured across our own stall or a restart of the peer ([`GapTracker::forget_last`]).
//!
//! Like BFD's detect multiplier and corosync's token timeout, but measured instead of set:
//! a quiet network gets the fast floor, a jittery one (a loaded peer, two lossy channels)
//! gets a longer wait until it has been calm for a minute again.

use std::time::Duration;

/// Length of one window of the gap history.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Windows kept: the longest gap is remembered for 50–60 s.
pub const WINDOWS: usize = 6;

/// The longest recent gaps between the peer's heartbeats.
#[derive(Debug, Clone, Default)]
pub struct GapTracker {
    /// When the latest heartbeat arrived (None: the next one starts afresh).
    last: Option<Duration>,
    /// Longest gap per window, the current window at `current`.
    longest: [Duration; WINDOWS],
    current: usize,
    /// Start of the current window.
    window_start: Duration,
}

impl GapTracker {
    /// A heartbeat from the peer arrived at `at` (on the machine's clock).
    pub fn arrived(&mut self, at: Duration) {
        self.rotate(at);
        if let Some(last) = self.last
            && at > last
        {
            let gap = at - last;
            let slot = &mut self.longest[self.current];
            *slot = (*slot).max(gap);
        }
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
    }

    /// Measure no gap up to the next arrival (our loop stalled, the peer restarted).
    pub fn forget_last(&mut self) {
        self.last = None;
    }

    /// The longest gap completed within the remembered windows, as of `now`.
    pub fn longest(&self, now: Duration) -> Duration {
        let age = now.saturating_sub(self.window_start);
        let expired = usize::try_from(age.as_nanos() / WINDOW.as_nanos()).unwrap_or(usize::MAX);
        if expired >= WINDOWS {
            return Duration::ZERO;
        }
        // Windows older than WINDOWS - expired rotations are gone by `now`.
        (0..WINDOWS - expired)
            .map(|back| self.longest[(self.current + WINDOWS - back) % WINDOWS])
            .max()
            .unwrap_or_default()
    }

    /// The dead time as of `now`: `2 x longest gap + interval`, within `floor..=cap`.
    pub fn dead_time(&self, now: Duration, interval: Duration, floor: Duration, cap: Duration) -> Duration {
        let wanted = self.longest(now).saturating_mul(2).saturating_add(interval);
        wanted.clamp(floor, cap.max(floor))
    }

    fn rotate(&mut self, now: Duration) {
        while now.saturating_sub(self.window_start) >= WINDOW {
            self.window_start += WINDOW;
            self.current = (self.current + 1) % WINDOWS;
            self.longest[self.current] = Duration::ZERO;
            if now.saturating_sub(self.window_start) >= WINDOW.saturating_mul(WINDOWS as u32) {
                // Long quiet: everything remembered is old; jump instead of looping.
                self.longest = [Duration::ZERO; WINDOWS];
                let skip = now.saturating_sub(self.window_start).as_nanos() / WINDOW.as_nanos();
                self.window_start += WINDOW.saturating_mul(u32::try_from(skip).unwrap_or(u32::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const I: Duration = Duration::from_millis(50);

    fn dead(g: &GapTracker, now: u64) -> Duration {
        g.dead_time(ms(now), I, ms(200), ms(2000))
    }

    #[test]
    fn a_steady_peer_gets_the_floor() {
        let mut g = GapTracker::default();
        for t in (0..20_000).step_by(50) {
            g.arrived(ms(t));
        }
        assert_eq!(g.longest(ms(20_000)), ms(50));
        assert_eq!(dead(&g, 20_000), ms(200));
    }

    #[test]
    fn a_late_heartbeat_lengthens_the_wait_for_a_minute_then_it_decays() {
        let mut g = GapTracker::default();
        let mut t = 0;
        while t < 5_000 {
            g.arrived(ms(t));
            t += 50;
        }
        // One heartbeat 400 ms late.
        t += 400;
        g.arrived(ms(t));
        assert_eq!(g.longest(ms(t)), ms(450));
        assert_eq!(dead(&g, t), ms(950));
        let late = t;
        while t < late + 70_000 {
            t += 50;
            g.arrived(ms(t));
            if t < late + 50_000 {
                assert_eq!(dead(&g, t), ms(950), "forgotten after {} ms", t - late);
            }
        }
        assert_eq!(dead(&g, t), ms(200), "still remembered after 70 s");
    }

    #[test]
    fn the_silence_in_progress_and_gaps_across_a_stall_do_not_count() {
        let mut g = GapTracker::default();
        for t in (0..1_000).step_by(50) {
            g.arrived(ms(t));
        }
        // Dead peer: time passes, nothing arrives; the dead time stays at the floor.
        assert_eq!(dead(&g, 5_000), ms(200));
        g.forget_last();
        g.arrived(ms(6_000));
        assert_eq!(g.longest(ms(6_000)), ms(50));
    }

    #[test]
    fn the_cap_holds_and_a_cap_below_the_floor_is_the_floor() {
        let mut g = GapTracker::default();
        g.arrived(ms(0));
        g.arrived(ms(5_000));
        assert_eq!(dead(&g, 5_000), ms(2_000));
        assert_eq!(g.dead_time(ms(5_000), I, ms(300), ms(100)), ms(300));
    }

    #[test]
    fn out_of_order_and_idle_for_hours_are_harmless() {
        let mut g = GapTracker::default();
        g.arrived(ms(1_000));
        g.arrived(ms(900));
        assert_eq!(g.longest(ms(1_000)), Duration::ZERO);
        g.arrived(ms(1_100));
        assert_eq!(g.longest(ms(10 * 3_600_000)), Duration::ZERO, "a gap of hours ago is older than every window");
        // The machine forgets the last arrival when it declares the peer lost.
        g.forget_last();
        g.arrived(ms(10 * 3_600_000));
        g.arrived(ms(10 * 3_600_000 + 50));
        assert_eq!(g.longest(ms(10 * 3_600_000 + 50)), ms(50));
    }
}
