//! Progress reporting: an indicatif bar on a terminal, periodic log lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared progress counters for one long operation.
pub struct Progress {
    what: &'static str,
    bar: Option<ProgressBar>,
    files: AtomicU64,
    bytes: AtomicU64,
    total: Option<u64>,
    started: Instant,
    last_log: Mutex<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Start reporting `what`; `total` bytes when known. `quiet` turns off the bar.
    pub fn new(what: &'static str, total: Option<u64>, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let tmpl = if total.is_some() {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
            } else {
                "{spinner} {msg} {bytes} {binary_bytes_per_sec} {elapsed}"
            };
            if let Ok(s) = ProgressStyle::with_template(tmpl) {
                b.set_style(s.progress_chars("=> "));
            }
            b.set_message(what);
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress {
            what,
            bar,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total,
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// Count finished files and bytes.
    pub fn add(&self, files: u64, bytes: u64) {
        let f = self.files.fetch_add(files, Ordering::Relaxed) + files;
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.set_position(b);
            bar.set_message(format!("{} {f} files", self.what));
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            match self.total {
                Some(t) => {
                    tracing::info!("{}: {f} files, {b} of {t} bytes ({:.0} MB/s)", self.what, b as f64 / secs / 1e6)
                }
                None => tracing::info!("{}: {f} files, {b} bytes ({:.0} MB/s)", self.what, b as f64 / secs / 1e6),
            }
        }
    }

    /// Stop the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
