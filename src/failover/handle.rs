//! The in-process handle on a running failover service: its latest [`Status`] (a
//! `watch` channel the service publishes to at least every second) and its admin
//! requests (an `mpsc` queue, each request with a oneshot reply). The HTTP API uses it;
//! nothing on this path touches files, polls or sleeps.

use super::request::{AdminRequest, Refused, Request};
use super::status::Status;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How long [`Handle::request`] waits for the service's answer (as long as the CLI waits
/// for it to take the request file). The service answers as soon as its intake task
/// runs, so only a wedged runtime gets near this.
pub const REQUEST_WAIT: Duration = Duration::from_secs(2);

/// Requests that can wait in the queue before senders wait for room.
const QUEUE: usize = 16;

/// A cheap-to-clone handle on a failover service (see [`super::service::start`]).
#[derive(Debug, Clone)]
pub struct Handle {
    status: watch::Receiver<Status>,
    requests: mpsc::Sender<Request>,
}

/// The service's end of a [`Handle`]: where it publishes its status and reads requests.
#[derive(Debug)]
pub struct ServiceEnd {
    /// Publish each new status here (`send_replace`: there may be no reader).
    pub status: watch::Sender<Status>,
    /// The requests sent through the handle, in order.
    pub requests: mpsc::Receiver<Request>,
}

/// A connected pair; the handle shows `initial` until the service publishes.
pub fn channel(initial: Status) -> (Handle, ServiceEnd) {
    let (status_tx, status_rx) = watch::channel(initial);
    let (req_tx, req_rx) = mpsc::channel(QUEUE);
    (Handle { status: status_rx, requests: req_tx }, ServiceEnd { status: status_tx, requests: req_rx })
}

impl Handle {
    /// The latest status the service published (the last one, once it has stopped).
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of the status, to wait for changes.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Ask the service to take `req`; `Ok` once it queued it for the machine (the VIP then
    /// moves only with the peer's agreement), waiting at most [`REQUEST_WAIT`].
    pub async fn request(&self, req: AdminRequest) -> Result<(), Refused> {
        self.request_within(req, REQUEST_WAIT).await
    }

    /// [`Handle::request`] with its own limit. A request not answered in time is withdrawn:
    /// the service drops it unacted once it sees nobody waits for the answer.
    pub async fn request_within(&self, req: AdminRequest, wait: Duration) -> Result<(), Refused> {
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.requests.send(Request { req, reply }).await.map_err(|_| Refused::NotRunning)?;
            answer.await.map_err(|_| Refused::NotRunning)?
        };
        tokio::time::timeout(wait, asked).await.unwrap_or(Err(Refused::NoAnswer(wait)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_get_the_services_answer() {
        let (h, mut end) = channel(Status::default());
        let service = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(r) = end.requests.recv().await {
                seen.push(r.req);
                let answer = if r.req == AdminRequest::Release { Err(Refused::ShuttingDown) } else { Ok(()) };
                let _ = r.reply.send(answer);
            }
            seen
        });
        assert_eq!(h.clone().request(AdminRequest::Takeover).await, Ok(()));
        assert_eq!(h.request(AdminRequest::Release).await, Err(Refused::ShuttingDown));
        drop(h);
        assert_eq!(service.await.unwrap(), vec![AdminRequest::Takeover, AdminRequest::Release]);
    }

    #[tokio::test]
    async fn a_gone_or_silent_service_is_reported() {
        let (h, end) = channel(Status::default());
        // Read but never answered: the reply is dropped.
        let ServiceEnd { status, mut requests } = end;
        let reader = tokio::spawn(async move { requests.recv().await.map(|r| r.req) });
        assert_eq!(h.request(AdminRequest::Takeover).await, Err(Refused::NotRunning));
        assert_eq!(reader.await.unwrap(), Some(AdminRequest::Takeover));
        // Nobody reads at all.
        assert_eq!(h.request(AdminRequest::Release).await, Err(Refused::NotRunning));
        drop(status);
        // Queued, never read: the caller stops waiting.
        let (h, _end) = channel(Status::default());
        let wait = Duration::from_millis(50);
        assert_eq!(h.request_within(AdminRequest::Release, wait).await, Err(Refused::NoAnswer(wait)));
    }

    #[tokio::test]
    async fn the_status_follows_what_the_service_publishes() {
        let (h, end) = channel(Status { node: "head-a".into(), ..Status::default() });
        let mut rx = h.watch();
        assert_eq!(h.status().node, "head-a");
        end.status.send_replace(Status { node: "head-a".into(), term: 3, ..Status::default() });
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().term, 3);
        assert_eq!(h.status().term, 3);
        // The service stopped: its last status stays readable.
        drop(end);
        assert_eq!(h.status().term, 3);
    }
}
