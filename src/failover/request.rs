//! Admin requests (planned switchover: take the VIP, or give it away) and the two ways they
//! reach the service:
//!
//! - in process, through a [`super::Handle`]: a [`Request`] on the service's queue with a
//!   oneshot reply, so the caller (the HTTP API) learns at once whether the service took it;
//! - from the CLI (`understudy failover takeover|release`, which runs without an HTTP
//!   server): the request file [`REQUEST_FILE`] under the data dir, which the service polls
//!   and deletes once taken. The HTTP API never uses the file.

use super::machine::Event;
use super::state_file::write_durably;
use super::status::{load_status, wall_micros};
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The admin request file name under the data dir (the CLI's path to the service).
pub const REQUEST_FILE: &str = "failover.request";

/// How often the service looks for [`REQUEST_FILE`].
const FILE_POLL: Duration = Duration::from_millis(200);

/// An admin request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRequest {
    /// Take the VIP.
    Takeover,
    /// Give the VIP away.
    Release,
}

impl AdminRequest {
    /// The word in the request file (and in answers).
    pub fn word(self) -> &'static str {
        match self {
            AdminRequest::Takeover => "takeover",
            AdminRequest::Release => "release",
        }
    }

    /// What the machine is told.
    pub(super) fn event(self) -> Event {
        match self {
            AdminRequest::Takeover => Event::AdminTakeover,
            AdminRequest::Release => Event::AdminRelease,
        }
    }
}

/// An admin request sent through a [`super::Handle`], with where its answer goes.
#[derive(Debug)]
pub struct Request {
    /// What is asked.
    pub req: AdminRequest,
    /// `Ok` once the service queued it for the machine; why not otherwise.
    pub reply: oneshot::Sender<Result<(), Refused>>,
}

/// Why the service did not take a request sent through a [`super::Handle`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The service has stopped (or never got to run).
    #[error("the failover service is not running")]
    NotRunning,
    /// The service is releasing the VIP to stop; it takes no more requests.
    #[error("the failover service is shutting down")]
    ShuttingDown,
    /// The service did not answer in time; the request was withdrawn.
    #[error("the failover service did not take the request within {0:?}")]
    NoAnswer(Duration),
}

/// Answer one request from the handle: queue its event for the machine unless the service
/// is stopping. A request whose caller already gave up is dropped unanswered, so it cannot
/// act by surprise later.
fn admit(r: Request, events: &mpsc::UnboundedSender<Event>, stopping: bool) {
    if r.reply.is_closed() {
        return;
    }
    let answer = if stopping {
        Err(Refused::ShuttingDown)
    } else {
        let e = r.req.event();
        tracing::info!("failover: admin request {e:?}");
        events.send(e).map_err(|_| Refused::NotRunning)
    };
    let _ = r.reply.send(answer);
}

/// The service end of the handle's request queue: one task that answers each [`Request`]
/// as it arrives (refusing while `stopping` is cancelled), until `stop`. Requests still
/// queued then are dropped, which their callers see as [`Refused::NotRunning`].
pub(super) fn spawn_request_intake(
    tasks: &TaskTracker,
    mut requests: mpsc::Receiver<Request>,
    events: &mpsc::UnboundedSender<Event>,
    stopping: &CancellationToken,
    stop: &CancellationToken,
) {
    let (events, stopping, stop) = (events.clone(), stopping.clone(), stop.clone());
    tasks.spawn(async move {
        loop {
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            admit(r, &events, stopping.is_cancelled());
        }
    });
}

/// Drop an admin request for a running service (atomically, so it never reads half).
pub fn submit_request(data_dir: &Path, req: AdminRequest) -> std::io::Result<()> {
    write_durably(&data_dir.join(REQUEST_FILE), req.word().as_bytes())
}

/// Why an admin request through the request file did not reach the service.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No status file: failover is not configured here, or never ran.
    #[error("failover is not running on this server (no [failover] section)")]
    NotRunning,
    /// The status file is old: the service is not running now.
    #[error("the failover service is not running (its status is {0} s old)")]
    Stale(u64),
    /// The service did not take the request in time.
    #[error("the failover service did not pick up the request within {0:?}")]
    NotPickedUp(Duration),
    /// The request file cannot be written.
    #[error("writing the request: {0}")]
    Io(#[from] std::io::Error),
}

/// The CLI's path: hand `req` to the service running on `data_dir` through the request file
/// and wait until it took it (at most `wait`); a request it did not take is withdrawn, so
/// it cannot act by surprise later. Blocking.
pub fn deliver_request(data_dir: &Path, req: AdminRequest, wait: Duration) -> Result<(), RequestError> {
    let status = load_status(data_dir).ok_or(RequestError::NotRunning)?;
    let age_ms = (wall_micros() / 1000).saturating_sub(status.updated_unix_ms);
    // The service rewrites it every second; a few seconds of slack for a busy machine.
    if age_ms > 5000 {
        return Err(RequestError::Stale(age_ms / 1000));
    }
    submit_request(data_dir, req)?;
    let path = data_dir.join(REQUEST_FILE);
    let start = std::time::Instant::now();
    while start.elapsed() < wait {
        if !path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match std::fs::remove_file(&path) {
        // Taken between the last look and now.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(RequestError::NotPickedUp(wait)),
    }
}

/// Read and delete a pending admin request, if any.
fn take_request(data_dir: &Path) -> Option<AdminRequest> {
    let path = data_dir.join(REQUEST_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    match text.trim() {
        "takeover" => Some(AdminRequest::Takeover),
        "release" => Some(AdminRequest::Release),
        other => {
            tracing::warn!("failover: ignoring unknown admin request {other:?}");
            None
        }
    }
}

/// The service end of the CLI's path: look for [`REQUEST_FILE`] every 200 ms and pass what
/// it asks to the machine, until `stop`. A request left from before this process started
/// is deleted first, so it cannot act now.
pub(super) fn spawn_request_file_poller(
    tasks: &TaskTracker,
    data_dir: &Path,
    events: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
) {
    let (dir, events, stop) = (data_dir.to_path_buf(), events.clone(), stop.clone());
    let _ = std::fs::remove_file(dir.join(REQUEST_FILE));
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(FILE_POLL) => {}
            }
            let Some(req) = take_request(&dir) else { continue };
            let e = req.event();
            tracing::info!("failover: admin request {e:?}");
            if events.send(e).is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::status::{STATUS_FILE, Status};
    use super::*;

    #[test]
    fn admin_requests_go_through_the_file_once() {
        let d = tempfile::tempdir().unwrap();
        submit_request(d.path(), AdminRequest::Takeover).unwrap();
        assert_eq!(take_request(d.path()), Some(AdminRequest::Takeover));
        assert_eq!(take_request(d.path()), None);
        std::fs::write(d.path().join(REQUEST_FILE), "nonsense").unwrap();
        assert_eq!(take_request(d.path()), None);
    }

    #[test]
    fn delivering_a_request_needs_a_live_service() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let wait = Duration::from_millis(300);
        let r = deliver_request(&dir, AdminRequest::Takeover, wait);
        assert!(matches!(r, Err(RequestError::NotRunning)), "{r:?}");
        let write_status = |ms: u64| {
            let s = Status { updated_unix_ms: ms, ..Status::default() };
            std::fs::write(dir.join(STATUS_FILE), serde_json::to_vec(&s).unwrap()).unwrap();
        };
        write_status(wall_micros() / 1000 - 60_000);
        assert!(matches!(deliver_request(&dir, AdminRequest::Takeover, wait), Err(RequestError::Stale(60))));
        // Fresh status but nobody reads requests: refused, and nothing is left behind.
        write_status(wall_micros() / 1000);
        let r = deliver_request(&dir, AdminRequest::Release, wait);
        assert!(matches!(r, Err(RequestError::NotPickedUp(_))), "{r:?}");
        assert!(!dir.join(REQUEST_FILE).exists());
        // A reader that takes it: delivered, and it read the right word.
        let reader = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if let Some(r) = take_request(&dir) {
                        return Some(r);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                None
            })
        };
        deliver_request(&dir, AdminRequest::Release, Duration::from_secs(2)).unwrap();
        assert_eq!(reader.join().unwrap(), Some(AdminRequest::Release));
    }

    fn ask(req: AdminRequest) -> (Request, oneshot::Receiver<Result<(), Refused>>) {
        let (reply, rx) = oneshot::channel();
        (Request { req, reply }, rx)
    }

    #[tokio::test]
    async fn the_intake_answers_each_request_and_queues_its_event() {
        let tasks = TaskTracker::new();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let (req_tx, req_rx) = mpsc::channel(4);
        let (stopping, stop) = (CancellationToken::new(), CancellationToken::new());
        spawn_request_intake(&tasks, req_rx, &ev_tx, &stopping, &stop);
        let (r, answer) = ask(AdminRequest::Takeover);
        req_tx.send(r).await.unwrap();
        assert_eq!(answer.await.unwrap(), Ok(()));
        assert!(matches!(ev_rx.try_recv(), Ok(Event::AdminTakeover)));
        // A caller that gave up: nothing reaches the machine.
        let (r, answer) = ask(AdminRequest::Release);
        drop(answer);
        let (r2, answer2) = ask(AdminRequest::Release);
        req_tx.send(r).await.unwrap();
        req_tx.send(r2).await.unwrap();
        assert_eq!(answer2.await.unwrap(), Ok(()));
        assert!(matches!(ev_rx.try_recv(), Ok(Event::AdminRelease)));
        assert!(ev_rx.try_recv().is_err(), "the withdrawn request acted");
        // Shutting down: refused, and nothing queued.
        stopping.cancel();
        let (r, answer) = ask(AdminRequest::Takeover);
        req_tx.send(r).await.unwrap();
        assert_eq!(answer.await.unwrap(), Err(Refused::ShuttingDown));
        assert!(ev_rx.try_recv().is_err());
        // Stopped: the intake ends and the queue closes.
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        assert!(req_tx.send(ask(AdminRequest::Takeover).0).await.is_err());
    }

    #[tokio::test]
    async fn the_intake_says_not_running_once_the_machine_is_gone() {
        let tasks = TaskTracker::new();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        drop(ev_rx);
        let (req_tx, req_rx) = mpsc::channel(4);
        spawn_request_intake(&tasks, req_rx, &ev_tx, &CancellationToken::new(), &CancellationToken::new());
        let (r, answer) = ask(AdminRequest::Release);
        req_tx.send(r).await.unwrap();
        assert_eq!(answer.await.unwrap(), Err(Refused::NotRunning));
    }
}
