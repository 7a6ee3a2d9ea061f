//! The service-monitor policy as a pure function of observations: fall and rise
//! thresholds, restarts with a budget per sliding window and exponential back-off, then
//! escalation. Running the checks (process, unit, TCP, HTTP, command) and the restarts is
//! the adapter's job; it feeds each check result here and carries out what comes back.
//! The adapter maps [`MonitorAction::Escalate`] to `Event::MonitorEscalation` and
//! [`MonitorAction::Recovered`] to `Event::MonitorRecovered`; the state machine hands the
//! VIP over only if the peer reports itself healthy.

use std::collections::VecDeque;
use std::time::Duration;

/// Thresholds and the restart policy of one monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorPolicy {
    /// Failures in a row before the service counts as down.
    pub fall: u32,
    /// Successes in a row before it counts as up.
    pub rise: u32,
    /// Restarts allowed within `restart_window` (0: never restart).
    pub restart_budget: u32,
    /// The sliding window of the budget.
    pub restart_window: Duration,
    /// Wait after the first restart before the next; doubles each time.
    pub backoff: Duration,
    /// Cap of the back-off.
    pub backoff_max: Duration,
    /// Out of budget: escalate (true) or only report it (false).
    pub escalate: bool,
}

/// The service as the monitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not enough observations yet.
    Unknown,
    /// `rise` successes in a row.
    Up,
    /// `fall` failures in a row.
    Down,
}

/// What the adapter should do after an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorAction {
    /// The service just counted as down.
    Down,
    /// The service just counted as up (not after an escalation).
    Up,
    /// Restart the service; `attempt` counts within this down episode.
    Restart {
        /// 1 for the first restart of the episode.
        attempt: u32,
    },
    /// Out of restarts: ask the state machine to hand over.
    Escalate,
    /// Up again after an escalation.
    Recovered,
    /// Out of restarts and escalation is off: only an alarm.
    GaveUp,
}

/// The state of one monitor.
#[derive(Debug, Clone)]
pub struct MonitorTracker {
    health: Health,
    ok_run: u32,
    fail_run: u32,
    restarts: VecDeque<Duration>,
    attempt: u32,
    next_restart_at: Option<Duration>,
    escalated: bool,
    gave_up: bool,
}

impl Default for MonitorTracker {
    fn default() -> Self {
        MonitorTracker::new()
    }
}

impl MonitorTracker {
    /// A monitor with no observation yet.
    pub fn new() -> MonitorTracker {
        MonitorTracker {
            health: Health::Unknown,
            ok_run: 0,
            fail_run: 0,
            restarts: VecDeque::new(),
            attempt: 0,
            next_restart_at: None,
            escalated: false,
            gave_up: false,
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Escalated and not recovered yet.
    pub fn escalated(&self) -> bool {
        self.escalated
    }

    /// Feed one check result taken at `now` (monotonic).
    pub fn observe(&mut self, p: &MonitorPolicy, ok: bool, now: Duration) -> Vec<MonitorAction> {
        let mut out = Vec::new();
        if ok {
            self.fail_run = 0;
            self.ok_run = self.ok_run.saturating_add(1);
            if self.health != Health::Up && self.ok_run >= p.rise {
                self.health = Health::Up;
                out.push(if self.escalated { MonitorAction::Recovered } else { MonitorAction::Up });
                self.escalated = false;
                self.gave_up = false;
                self.attempt = 0;
                self.next_restart_at = None;
            }
            return out;
        }
        self.ok_run = 0;
        self.fail_run = self.fail_run.saturating_add(1);
        if self.health != Health::Down && self.fail_run >= p.fall {
            self.health = Health::Down;
            self.next_restart_at = Some(now);
            out.push(MonitorAction::Down);
        }
        if self.health == Health::Down {
            self.maybe_restart(p, now, &mut out);
        }
        out
    }

    fn maybe_restart(&mut self, p: &MonitorPolicy, now: Duration, out: &mut Vec<MonitorAction>) {
        if self.escalated || self.gave_up || self.next_restart_at.is_none_or(|t| now < t) {
            return;
        }
        while self.restarts.front().is_some_and(|&t| now.saturating_sub(t) >= p.restart_window) {
            self.restarts.pop_front();
        }
        if (self.restarts.len() as u64) < u64::from(p.restart_budget) {
            self.restarts.push_back(now);
            self.attempt += 1;
            out.push(MonitorAction::Restart { attempt: self.attempt });
            let factor = 1u32.checked_shl(self.attempt - 1).unwrap_or(u32::MAX);
            self.next_restart_at = Some(now + p.backoff.saturating_mul(factor).min(p.backoff_max));
        } else if p.escalate {
            self.escalated = true;
            out.push(MonitorAction::Escalate);
        } else {
            self.gave_up = true;
            out.push(MonitorAction::GaveUp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn policy() -> MonitorPolicy {
        MonitorPolicy {
            fall: 3,
            rise: 2,
            restart_budget: 3,
            restart_window: s(600),
            backoff: s(2),
            backoff_max: s(5),
            escalate: true,
        }
    }

    /// Observe a failing check every second from `from` to `to`; collect (time, action).
    fn fail(m: &mut MonitorTracker, p: &MonitorPolicy, from: u64, to: u64) -> Vec<(u64, MonitorAction)> {
        (from..to).flat_map(|t| m.observe(p, false, s(t)).into_iter().map(move |a| (t, a))).collect()
    }

    #[test]
    fn fall_and_rise_thresholds() {
        let p = policy();
        let mut m = MonitorTracker::new();
        assert_eq!(m.observe(&p, true, s(0)), vec![]);
        assert_eq!(m.observe(&p, true, s(1)), vec![MonitorAction::Up]);
        // Two failures then a success: a blip, not down.
        m.observe(&p, false, s(2));
        m.observe(&p, false, s(3));
        m.observe(&p, true, s(4));
        assert_eq!(m.health(), Health::Up);
        m.observe(&p, false, s(5));
        m.observe(&p, false, s(6));
        assert_eq!(m.observe(&p, false, s(7)), vec![MonitorAction::Down, MonitorAction::Restart { attempt: 1 }]);
    }

    #[test]
    fn restarts_back_off_then_escalate() {
        let p = policy();
        let mut m = MonitorTracker::new();
        let got = fail(&mut m, &p, 0, 40);
        let want = vec![
            (2, MonitorAction::Down),
            (2, MonitorAction::Restart { attempt: 1 }),
            (4, MonitorAction::Restart { attempt: 2 }), // +2 s
            (8, MonitorAction::Restart { attempt: 3 }), // +4 s
            (13, MonitorAction::Escalate),              // +8 s capped at 5 s, budget spent
        ];
        assert_eq!(got, want);
        assert!(m.escalated());
        assert_eq!(m.observe(&p, true, s(41)), vec![]);
        assert_eq!(m.observe(&p, true, s(42)), vec![MonitorAction::Recovered]);
        assert!(!m.escalated());
    }

    #[test]
    fn budget_is_a_sliding_window() {
        let p = policy();
        let mut m = MonitorTracker::new();
        // A flapping service: down, restarted, up, down again ...
        let mut restarts = 0;
        let mut escalated_at = None;
        for episode in 0..6u64 {
            let t0 = episode * 20;
            for (t, a) in fail(&mut m, &p, t0, t0 + 3) {
                match a {
                    MonitorAction::Restart { .. } => restarts += 1,
                    MonitorAction::Escalate => escalated_at = escalated_at.or(Some(t)),
                    _ => {}
                }
            }
            m.observe(&p, true, s(t0 + 10));
            m.observe(&p, true, s(t0 + 11));
        }
        assert_eq!(restarts, 3, "only 3 restarts per 10 minutes");
        assert_eq!(escalated_at, Some(62));
        // After the window the budget is back.
        let mut m2 = m.clone();
        let got = fail(&mut m2, &p, 700, 703);
        assert!(got.contains(&(702, MonitorAction::Restart { attempt: 1 })), "{got:?}");
    }

    #[test]
    fn no_restart_action_escalates_at_once_or_gives_up() {
        let mut p = policy();
        p.restart_budget = 0;
        let mut m = MonitorTracker::new();
        assert_eq!(fail(&mut m, &p, 0, 10), vec![(2, MonitorAction::Down), (2, MonitorAction::Escalate)]);
        p.escalate = false;
        let mut m = MonitorTracker::new();
        assert_eq!(fail(&mut m, &p, 0, 10), vec![(2, MonitorAction::Down), (2, MonitorAction::GaveUp)]);
        m.observe(&p, true, s(11));
        assert_eq!(m.observe(&p, true, s(12)), vec![MonitorAction::Up]);
    }
}
