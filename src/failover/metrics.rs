//! Failover metrics in the Prometheus text format, rendered from a [`Status`] snapshot (the
//! one the service publishes at least every second; `/metrics` takes it from the service's
//! [`super::Handle`]), so the numbers are exactly what the API and the CLI show.

use super::status::{ChannelInfo, MonitorInfo, Status};
use std::fmt::Write;

/// Escape a label value (backslash, double quote, newline), as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn bit(b: bool) -> u8 {
    u8::from(b)
}

/// Render `s`; `now_unix_ms` dates the snapshot (`understudy_failover_status_age_seconds`).
pub fn render(s: &Status, now_unix_ms: u64) -> String {
    let mut o = String::new();
    head(&mut o, "understudy_failover_info", "gauge", "This node's failover identity (always 1).");
    let _ = writeln!(
        o,
        "understudy_failover_info{{node=\"{}\",role=\"{}\",peer=\"{}\"}} 1",
        label(&s.node),
        label(&s.role),
        label(s.peer.as_deref().unwrap_or(""))
    );
    head(
        &mut o,
        "understudy_failover_status_age_seconds",
        "gauge",
        "Age of the status snapshot (rewritten every second).",
    );
    let age = now_unix_ms.saturating_sub(s.updated_unix_ms) as f64 / 1000.0;
    let _ = writeln!(o, "understudy_failover_status_age_seconds {age:.3}");
    head(&mut o, "understudy_failover_state", "gauge", "1 for the current state of the failover machine.");
    for st in ["backup", "acquiring", "holding", "releasing"] {
        let _ = writeln!(o, "understudy_failover_state{{state=\"{st}\"}} {}", bit(s.state == st));
    }
    head(&mut o, "understudy_failover_holding", "gauge", "1 when this node holds the VIP.");
    let _ = writeln!(o, "understudy_failover_holding {}", bit(s.holding));
    head(&mut o, "understudy_failover_term", "gauge", "Last term persisted by this node.");
    let _ = writeln!(o, "understudy_failover_term {}", s.term);
    head(
        &mut o,
        "understudy_failover_dead_time_seconds",
        "gauge",
        "Silence after which the peer counts as dead now (the floor, longer after irregular heartbeats).",
    );
    let _ = writeln!(o, "understudy_failover_dead_time_seconds {}", s.dead_time_ms as f64 / 1000.0);
    if let Some(ms) = s.peer_last_heard_ms {
        head(
            &mut o,
            "understudy_failover_peer_last_heard_seconds",
            "gauge",
            "Time since the peer was heard on any channel.",
        );
        let _ = writeln!(o, "understudy_failover_peer_last_heard_seconds {:.3}", ms as f64 / 1000.0);
    }
    channels(&mut o, s);
    heartbeats(&mut o, s);
    head(&mut o, "understudy_failover_alarm", "gauge", "1 for every raised alarm.");
    for a in &s.alarms {
        let _ = writeln!(o, "understudy_failover_alarm{{alarm=\"{}\"}} 1", label(a));
    }
    head(&mut o, "understudy_failover_alarms", "gauge", "Number of raised alarms.");
    let _ = writeln!(o, "understudy_failover_alarms {}", s.alarms.len());
    for (name, help, v) in [
        ("understudy_failover_takeovers_total", "VIP additions by this node.", s.counters.takeovers),
        ("understudy_failover_releases_total", "VIP removals by this node.", s.counters.releases),
        ("understudy_failover_garp_total", "Gratuitous ARP rounds sent.", s.counters.garps),
    ] {
        head(&mut o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    monitors(&mut o, s);
    o
}

/// One labelled family: a sample per item that has a value.
#[allow(clippy::too_many_arguments)]
fn family<T>(
    o: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    key: &str,
    items: &[T],
    label_of: fn(&T) -> &str,
    value: impl Fn(&T) -> Option<String>,
) {
    head(o, name, kind, help);
    for it in items {
        if let Some(v) = value(it) {
            let _ = writeln!(o, "{name}{{{key}=\"{}\"}} {v}", label(label_of(it)));
        }
    }
}

fn channels(o: &mut String, s: &Status) {
    let c = &s.channels;
    let n: fn(&ChannelInfo) -> &str = |c| &c.name;
    family(o, "understudy_failover_channel_up", "gauge", "1 when the channel works both ways.", "channel", c, n, |c| {
        Some(bit(c.up).to_string())
    });
    family(
        o,
        "understudy_failover_channel_loss_ratio",
        "gauge",
        "Estimated loss of the peer's heartbeats (0-1).",
        "channel",
        c,
        n,
        |c| Some(format!("{:.4}", c.loss)),
    );
    family(
        o,
        "understudy_failover_channel_last_heard_seconds",
        "gauge",
        "Time since the peer was heard on the channel.",
        "channel",
        c,
        n,
        |c| c.last_heard_ms.map(|ms| format!("{:.3}", ms as f64 / 1000.0)),
    );
    family(
        o,
        "understudy_failover_channel_rtt_seconds",
        "gauge",
        "Last heartbeat round trip on the channel.",
        "channel",
        c,
        n,
        |c| c.rtt_ms.map(|ms| format!("{:.6}", ms / 1000.0)),
    );
    family(
        o,
        "understudy_failover_channel_send_failures_total",
        "counter",
        "Heartbeats that could not be sent.",
        "channel",
        c,
        n,
        |c| Some(c.send_failures.to_string()),
    );
}

fn heartbeats(o: &mut String, s: &Status) {
    head(o, "understudy_failover_heartbeats_accepted_total", "counter", "Authentic, fresh heartbeats from the peer.");
    let _ = writeln!(o, "understudy_failover_heartbeats_accepted_total {}", s.rx.accepted);
    head(
        o,
        "understudy_failover_heartbeats_rejected_total",
        "counter",
        "Datagrams refused on the heartbeat ports, by reason.",
    );
    let r = &s.rx;
    for (reason, n) in [
        ("length", r.length),
        ("magic", r.magic),
        ("version", r.version),
        ("unknown_key", r.unknown_key),
        ("mac", r.mac),
        ("field", r.field),
        ("replay", r.replay),
        ("stale_boot", r.stale_boot),
        ("own_packet", r.own_packet),
        ("foreign_node", r.foreign_node),
        ("wrong_channel", r.wrong_channel),
        ("foreign_source", s.counters.foreign_source),
    ] {
        let _ = writeln!(o, "understudy_failover_heartbeats_rejected_total{{reason=\"{reason}\"}} {n}");
    }
}

fn monitors(o: &mut String, s: &Status) {
    let m = &s.monitors;
    let n: fn(&MonitorInfo) -> &str = |m| &m.name;
    if m.is_empty() {
        return;
    }
    let up = "1 when the monitored service counts as up.";
    family(o, "understudy_failover_monitor_up", "gauge", up, "monitor", m, n, |m| {
        Some(bit(m.health == "up").to_string())
    });
    let esc = "1 when the monitor ran out of restarts and escalated.";
    family(o, "understudy_failover_monitor_escalated", "gauge", esc, "monitor", m, n, |m| {
        Some(bit(m.escalated).to_string())
    });
    let rs = "Restarts of the monitored service.";
    family(o, "understudy_failover_monitor_restarts_total", "counter", rs, "monitor", m, n, |m| {
        Some(m.restarts.to_string())
    });
    family(o, "understudy_failover_monitor_failures_total", "counter", "Failed checks.", "monitor", m, n, |m| {
        Some(m.failures.to_string())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        let mut s = Status {
            node: "head-a".into(),
            role: "primary".into(),
            state: "holding".into(),
            holding: true,
            term: 7,
            peer: Some("head-b".into()),
            peer_last_heard_ms: Some(40),
            dead_time_ms: 450,
            alarms: vec!["channel_down:public".into()],
            updated_unix_ms: 10_000,
            ..Status::default()
        };
        s.channels = vec![
            ChannelInfo {
                name: "private".into(),
                up: true,
                last_heard_ms: Some(40),
                loss: 0.25,
                rtt_ms: Some(0.5),
                send_failures: 0,
            },
            ChannelInfo {
                name: "public".into(),
                up: false,
                last_heard_ms: None,
                loss: 1.0,
                rtt_ms: None,
                send_failures: 3,
            },
        ];
        s.rx.accepted = 100;
        s.rx.mac = 2;
        s.counters.foreign_source = 5;
        s.counters.takeovers = 1;
        s.monitors = vec![MonitorInfo {
            name: "we\"ird".into(),
            health: "down".into(),
            escalated: true,
            restarts: 3,
            ..Default::default()
        }];
        s
    }

    #[test]
    fn renders_every_family_with_values() {
        let text = render(&sample(), 12_500);
        for line in [
            "understudy_failover_info{node=\"head-a\",role=\"primary\",peer=\"head-b\"} 1",
            "understudy_failover_status_age_seconds 2.500",
            "understudy_failover_state{state=\"holding\"} 1",
            "understudy_failover_state{state=\"backup\"} 0",
            "understudy_failover_holding 1",
            "understudy_failover_term 7",
            "understudy_failover_dead_time_seconds 0.45",
            "understudy_failover_peer_last_heard_seconds 0.040",
            "understudy_failover_channel_up{channel=\"public\"} 0",
            "understudy_failover_channel_loss_ratio{channel=\"private\"} 0.2500",
            "understudy_failover_channel_rtt_seconds{channel=\"private\"} 0.000500",
            "understudy_failover_channel_send_failures_total{channel=\"public\"} 3",
            "understudy_failover_heartbeats_accepted_total 100",
            "understudy_failover_heartbeats_rejected_total{reason=\"mac\"} 2",
            "understudy_failover_heartbeats_rejected_total{reason=\"foreign_source\"} 5",
            "understudy_failover_alarm{alarm=\"channel_down:public\"} 1",
            "understudy_failover_takeovers_total 1",
            "understudy_failover_monitor_escalated{monitor=\"we\\\"ird\"} 1",
            "understudy_failover_monitor_restarts_total{monitor=\"we\\\"ird\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // A channel never heard has no last-heard sample rather than a made-up one.
        assert!(!text.contains("understudy_failover_channel_last_heard_seconds{channel=\"public\"}"));
    }

    #[test]
    fn every_sample_has_help_and_type() {
        let text = render(&sample(), 12_500);
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        }
    }
}
