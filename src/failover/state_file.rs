//! The state file (`failover.state`): the term, our last boot id and the highest peer boot
//! id, written atomically and fsynced so a restart never reuses a term or a boot id.

use super::machine::Event;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// The state file name under the data dir.
pub const STATE_FILE: &str = "failover.state";

/// What survives a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The last term persisted.
    pub term: u64,
    /// The last boot id we used.
    pub boot: u64,
    /// The highest peer boot id seen.
    pub peer_boot: u64,
}

impl Persisted {
    /// Parse `key value` lines; unknown keys are ignored so older binaries read newer files.
    pub fn parse(text: &str) -> Persisted {
        let mut p = Persisted::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else { continue };
            match k {
                "term" => p.term = v,
                "boot" => p.boot = v,
                "peer_boot" => p.peer_boot = v,
                _ => {}
            }
        }
        p
    }

    /// The file's text.
    pub fn render(&self) -> String {
        format!("term {}\nboot {}\npeer_boot {}\n", self.term, self.boot, self.peer_boot)
    }
}

/// Write `data` to `path` atomically and durably: temp file, fsync, rename, fsync the dir.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes the state file in request order; acknowledges terms once they are on disk.
pub(super) async fn persister(
    path: PathBuf,
    mut rx: mpsc::UnboundedReceiver<(Persisted, Option<u64>)>,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some((p, ack)) = rx.recv().await {
        let path = path.clone();
        let r = tokio::task::spawn_blocking(move || write_durably(&path, p.render().as_bytes())).await;
        match r {
            Ok(Ok(())) => {
                if let Some(t) = ack {
                    let _ = events.send(Event::TermPersisted(t));
                }
            }
            // No answer: the machine times out and retries.
            Ok(Err(e)) => tracing::error!("failover: writing the state file: {e}"),
            Err(e) => tracing::error!("failover: state writer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trip_and_tolerance() {
        let p = Persisted { term: 7, boot: 1_700_000_000_000_000, peer_boot: 42 };
        assert_eq!(Persisted::parse(&p.render()), p);
        assert_eq!(
            Persisted::parse("garbage\nterm x\nterm 3\nfuture 9\n"),
            Persisted { term: 3, ..Default::default() }
        );
    }
}
