//! Prometheus text metrics: requests by route and status, bytes served, deploys in
//! flight, chunk-stream throughput.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters of one server process.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Response body bytes of image content (manifests, chunks, streams).
    pub bytes_served: AtomicU64,
    /// Chunk streams open now.
    pub streams_active: AtomicI64,
    /// Bytes sent by finished chunk streams.
    pub stream_bytes: AtomicU64,
    /// Wall time of finished chunk streams, microseconds.
    pub stream_micros: AtomicU64,
    /// Chunk streams finished.
    pub streams_total: AtomicU64,
}

impl Metrics {
    /// Count one request.
    pub fn request(&self, route: &str, method: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), method.to_string(), status)).or_default() += 1;
    }

    /// Record a finished stream.
    pub fn stream_done(&self, bytes: u64, micros: u64) {
        self.stream_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stream_micros.fetch_add(micros, Ordering::Relaxed);
        self.streams_total.fetch_add(1, Ordering::Relaxed);
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Render in the Prometheus text format; `deploys_running` comes from the inventory.
    pub fn render(&self, deploys_running: i64) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP understudy_http_requests_total HTTP requests by route, method and status.");
        let _ = writeln!(s, "# TYPE understudy_http_requests_total counter");
        for ((route, method, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                s,
                "understudy_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                route.replace('"', "'")
            );
        }
        let gauge = |s: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            &mut s,
            "understudy_bytes_served_total",
            "Bytes of image content served.",
            "counter",
            self.bytes_served.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut s,
            "understudy_deploys_in_flight",
            "Deployments reported running.",
            "gauge",
            deploys_running.to_string(),
        );
        gauge(
            &mut s,
            "understudy_streams_active",
            "Chunk streams being sent now.",
            "gauge",
            self.streams_active.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut s,
            "understudy_stream_bytes_total",
            "Bytes sent by finished chunk streams.",
            "counter",
            self.stream_bytes.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut s,
            "understudy_stream_seconds_total",
            "Wall time of finished chunk streams (throughput = rate(bytes) / rate(seconds)).",
            "counter",
            format!("{:.6}", self.stream_micros.load(Ordering::Relaxed) as f64 / 1e6),
        );
        gauge(
            &mut s,
            "understudy_streams_total",
            "Chunk streams finished.",
            "counter",
            self.streams_total.load(Ordering::Relaxed).to_string(),
        );
        s
    }
}
