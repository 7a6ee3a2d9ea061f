//! The failover loop's own thread: the heartbeats never wait behind image streaming,
//! captures or the API on the shared async workers, and (with `realtime`, where
//! permitted) not behind other processes either.
//!
//! - The loop and its helper tasks run on one thread with its own current-thread tokio
//!   runtime; blocking work (state file fsync, gratuitous ARP) goes to that runtime's own
//!   blocking pool.
//! - `realtime`: the thread and that pool's threads run at `SCHED_FIFO` priority
//!   [`PRIORITY`] (the term's fsync and the ARP are on the takeover's path) with
//!   `SCHED_RESET_ON_FORK`, so hooks, monitors and fence commands start at normal priority
//!   (a runaway hook must not starve the machine); and the pages
//!   mapped so far are locked as they are touched (`mlockall(MCL_CURRENT | MCL_ONFAULT)`),
//!   so the heartbeat path is not paged out. Future mappings (image packs, buffers) are
//!   not locked: locking them could exhaust `RLIMIT_MEMLOCK` and fail allocations.
//! - Without the privilege (no `CAP_SYS_NICE`, or a memlock limit), each step falls back
//!   to normal scheduling with a warning; the loop runs on its own thread anyway.

use std::future::Future;

/// The real-time priority of the heartbeat thread (1-99; keepalived uses a similar low
/// value, leaving room above for the kernel's own threads).
pub const PRIORITY: i32 = 10;

/// What [`elevate`] managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elevation {
    /// The thread runs at `SCHED_FIFO`.
    pub fifo: bool,
    /// Memory mapped so far is locked.
    pub locked: bool,
}

/// Raise the calling thread to `SCHED_FIFO` (reset for whatever it forks); false where
/// not permitted.
fn fifo() -> bool {
    let param = libc::sched_param { sched_priority: PRIORITY };
    // SAFETY: a plain syscall on the calling thread (pid 0) with a valid, initialised
    // sched_param that lives across the call.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) };
    r == 0
}

/// Raise the calling thread to `SCHED_FIFO` and lock the memory mapped so far, each where
/// permitted; failures are logged and leave the thread as it was.
pub fn elevate() -> Elevation {
    let fifo = fifo();
    if !fifo {
        tracing::warn!(
            "failover: cannot run heartbeats at SCHED_FIFO ({}); they run at normal priority",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: mlockall takes flags only.
    #[allow(unsafe_code)]
    let locked = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_ONFAULT) } == 0;
    if !locked {
        tracing::warn!("failover: cannot lock memory ({}); pages may be swapped out", std::io::Error::last_os_error());
    }
    Elevation { fifo, locked }
}

/// Run `fut` to completion on a new thread named `name` with its own runtime (elevated
/// first when `realtime`), and await its result from the caller's runtime. The thread's
/// end does not depend on the returned future: cancel the service's token to stop it.
pub fn on_own_thread<F, Fut, T>(
    name: &str,
    realtime: bool,
    fut: F,
) -> impl Future<Output = Result<T, std::io::Error>> + Send + 'static
where
    // The future is made and run on the new thread, so only the closure crosses threads.
    F: FnOnce(Option<Elevation>) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = name.to_string();
    async move {
        std::thread::Builder::new().name(name).spawn(move || {
            let elevation = realtime.then(elevate);
            let pool_fifo = elevation.is_some_and(|e| e.fifo);
            let built = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_start(move || {
                    if pool_fifo {
                        fifo();
                    }
                })
                .build();
            match built {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.block_on(fut(elevation))));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        rx.await.unwrap_or_else(|_| Err(std::io::Error::other("the failover thread ended without a result")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_its_own_named_thread_and_returns_the_result() {
        let caller = std::thread::current().id();
        let r = on_own_thread("us-rt-test", false, move |e| async move {
            tokio::task::yield_now().await;
            let t = std::thread::current();
            (t.id() != caller, t.name().map(str::to_string), e)
        })
        .await
        .unwrap();
        assert_eq!(r, (true, Some("us-rt-test".to_string()), None));
    }

    fn policy() -> i32 {
        // SAFETY: reads the calling thread's policy.
        #[allow(unsafe_code)]
        let p = unsafe { libc::sched_getscheduler(0) };
        p & !libc::SCHED_RESET_ON_FORK
    }

    #[tokio::test]
    async fn the_pool_is_raised_with_the_loop_and_what_they_start_is_not() {
        let r = on_own_thread("us-rt-test2", true, |e| {
            async move {
                let pool = tokio::task::spawn_blocking(policy).await.unwrap();
                let thread = std::thread::spawn(policy).join().unwrap();
                // Field 41 of /proc/PID/stat is the policy of the process the shell forks.
                let out = tokio::process::Command::new("sh")
                    .args(["-c", "cut -d' ' -f41 /proc/self/stat"])
                    .output()
                    .await
                    .unwrap();
                let child: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
                (e.unwrap(), policy(), pool, thread, child)
            }
        })
        .await
        .unwrap();
        let (e, main, pool, thread, child) = r;
        // Root here: permitted. Where it is not, everything stays normal, and says so.
        let want = if e.fifo { libc::SCHED_FIFO } else { libc::SCHED_OTHER };
        assert_eq!((main, pool), (want, want), "{e:?}");
        assert_eq!(thread, libc::SCHED_OTHER, "a thread started by hand inherited SCHED_FIFO");
        assert_eq!(child, libc::SCHED_OTHER, "a forked process inherited SCHED_FIFO");
    }
}
