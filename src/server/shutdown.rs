//! Graceful shutdown on SIGINT or SIGTERM.
//!
//! The first signal sets a flag that every shard polls; each shard stops
//! accepting, finishes the requests it has read, makes its log durable and
//! exits. A second signal exits at once (status 1), for an operator who
//! will not wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How often shards look at the flag. Bounds shutdown latency, costs a
/// timer wake-up per shard per period.
const SHUTDOWN_POLL_MS: u64 = 20;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers. Call once, before starting shards.
pub(crate) fn install() -> std::io::Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Order matters: the conditional exit checks the flag before the
        // plain handler sets it, so only a second signal exits.
        signal_hook::flag::register_conditional_shutdown(signal, 1, flag().clone())?;
        signal_hook::flag::register(signal, flag().clone())?;
    }
    Ok(())
}

pub(crate) fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}

/// Resolves once shutdown is requested. One poller per shard; everything
/// else waits on the shard's [`Gate`], which costs no timer.
pub(crate) async fn wait() {
    while !requested() {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
}

/// A shard-local shutdown notice. Connections race their reads against
/// [`Gate::closed`]; one task per shard closes the gate when the process
/// flag is set.
pub(crate) struct Gate {
    semaphore: glommio::sync::Semaphore,
}

impl Gate {
    /// Creates the gate and the task that closes it on shutdown.
    pub(crate) fn new() -> std::rc::Rc<Gate> {
        let gate = std::rc::Rc::new(Gate {
            semaphore: glommio::sync::Semaphore::new(0),
        });
        let closer = gate.clone();
        glommio::spawn_local(async move {
            wait().await;
            closer.semaphore.close();
        })
        .detach();
        gate
    }

    /// Sleeps for `pause` unless shutdown comes first; returns true if it
    /// did (the caller should stop).
    pub(crate) async fn sleep(&self, pause: std::time::Duration) -> bool {
        futures_lite::future::or(
            async {
                glommio::timer::sleep(pause).await;
                false
            },
            async {
                self.closed().await;
                true
            },
        )
        .await
    }

    /// Resolves when the node is shutting down.
    pub(crate) async fn closed(&self) {
        // No permit is ever signalled: acquiring only ends when the
        // semaphore is closed.
        let _ = self.semaphore.acquire(1).await;
    }
}

/// Requests shutdown from inside the process (a fatal shard error).
pub(crate) fn request() {
    flag().store(true, Ordering::Relaxed);
}
