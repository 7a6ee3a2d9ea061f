//! The safe point between the failover service and the sync task: a takeover closes the
//! gate and waits (bounded) for a running update to stop at its next safe point; the
//! sync task starts an update only through an open gate.
//!
//! The takeover side never waits on the sync task's goodwill: closing sets the stop flag
//! the update checks between files and between the chunks of a file, and the wait is
//! bounded by `[sync] stop_timeout`, after which the takeover goes on anyway (each path
//! is still old or new; only the rename of the file being written can follow).

use crate::update::Control;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Why no update may run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// This node takes over or holds the VIP: it follows nobody.
    Takeover,
    /// The admin paused the sync.
    Paused,
}

/// A cheap-to-clone gate (see the module doc).
#[derive(Debug, Clone)]
pub struct Gate(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    takeover: AtomicBool,
    paused: AtomicBool,
    /// The running update's control (its stop flag and progress).
    ctl: std::sync::Mutex<Arc<Control>>,
    /// True while an update runs.
    busy: watch::Sender<bool>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(Inner {
            takeover: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            ctl: std::sync::Mutex::new(Arc::new(Control::default())),
            busy: watch::channel(false).0,
        }))
    }
}

/// An update let through the gate; dropping it marks the update finished.
#[derive(Debug)]
pub struct Pass {
    gate: Gate,
    /// The update's control: give it to [`crate::update::Prepared::apply_with`].
    pub ctl: Arc<Control>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate.0.busy.send_replace(false);
    }
}

impl Gate {
    /// Why the gate is closed, if it is (a takeover before a pause).
    pub fn closed(&self) -> Option<Closed> {
        if self.0.takeover.load(Ordering::SeqCst) {
            Some(Closed::Takeover)
        } else if self.0.paused.load(Ordering::SeqCst) {
            Some(Closed::Paused)
        } else {
            None
        }
    }

    /// Whether an update runs now.
    pub fn busy(&self) -> bool {
        *self.0.busy.borrow()
    }

    /// Start an update: `None` when the gate is closed. Marked busy before the gate is
    /// looked at, so a takeover that closes it at the same time either sees the update
    /// (and stops it) or the update sees the closed gate.
    pub fn enter(&self) -> Option<Pass> {
        let ctl = Arc::new(Control::default());
        *self.0.ctl.lock().unwrap_or_else(|e| e.into_inner()) = ctl.clone();
        self.0.busy.send_replace(true);
        let pass = Pass { gate: self.clone(), ctl };
        if self.closed().is_some() {
            return None;
        }
        Some(pass)
    }

    fn stop_current(&self) {
        self.0.ctl.lock().unwrap_or_else(|e| e.into_inner()).stop.store(true, Ordering::SeqCst);
    }

    /// A takeover starts: close the gate, stop a running update at its next safe point and
    /// wait at most `limit` for it. True when no update runs any more.
    pub async fn close_for_takeover(&self, limit: Duration) -> bool {
        self.0.takeover.store(true, Ordering::SeqCst);
        self.stop_current();
        let mut rx = self.0.busy.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|b| !*b)).await.map(|r| r.is_ok()).unwrap_or(false)
    }

    /// This node gave the VIP up: updates may run again (unless paused).
    pub fn open_after_release(&self) {
        self.0.takeover.store(false, Ordering::SeqCst);
    }

    /// Pause (stopping a running update at its next safe point) or resume.
    pub fn set_paused(&self, paused: bool) {
        self.0.paused.store(paused, Ordering::SeqCst);
        if paused {
            self.stop_current();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_takeover_stops_the_running_update_and_keeps_new_ones_out() {
        let g = Gate::default();
        let pass = g.enter().unwrap();
        assert!(g.busy());
        let ctl = pass.ctl.clone();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.close_for_takeover(Duration::from_secs(5)).await })
        };
        // The update sees the stop flag at its next safe point and ends.
        while !ctl.stop.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        drop(pass);
        assert!(waiter.await.unwrap());
        assert_eq!(g.closed(), Some(Closed::Takeover));
        assert!(g.enter().is_none());
        assert!(!g.busy());
        g.open_after_release();
        let p = g.enter().unwrap();
        assert!(!p.ctl.stop.load(Ordering::SeqCst), "a new update starts with a clear flag");
    }

    #[tokio::test]
    async fn the_wait_is_bounded_and_a_pause_stops_too() {
        let g = Gate::default();
        let pass = g.enter().unwrap();
        assert!(!g.close_for_takeover(Duration::from_millis(20)).await, "an update that does not stop");
        assert!(pass.ctl.stop.load(Ordering::SeqCst));
        drop(pass);
        g.open_after_release();
        let pass = g.enter().unwrap();
        g.set_paused(true);
        assert!(pass.ctl.stop.load(Ordering::SeqCst));
        assert_eq!(g.closed(), Some(Closed::Paused));
        drop(pass);
        g.set_paused(false);
        assert_eq!(g.closed(), None);
    }
}
