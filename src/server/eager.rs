//! Running a request's future in place when it can finish without
//! waiting, and giving it a task of its own only when it must wait.
//!
//! Requests that arrive on a channel (forwarded from another shard) or on
//! an internode connection used to get a task each, so that one that waits
//! (for a sync, a lock, a replica) holds up none behind it. Most do not
//! wait: a cached read, a write under `sync=interval`. For those the task
//! was pure cost: its allocation, its trip through the run queue, its
//! join handle. Spawning alone was 3.6% of a shard's CPU serving RESP GETs
//! on two shards, half of them forwarded.

use std::future::Future;

/// Polls `task` once from the calling task; if it is not done, spawns the
/// rest. Either way the caller goes on at once (after yielding if its
/// time slice is used up, since it may now be doing the requests' work).
///
/// A task that returns `Pending` here has registered the caller's waker
/// too; that wake-up is spurious and harmless, and the spawned task polls
/// again at once, registering its own (every future must honour the waker
/// of its latest poll).
pub(crate) async fn run_or_spawn(task: impl Future<Output = ()> + 'static) {
    let mut task = Box::pin(task);
    if futures_lite::future::poll_once(&mut task).await.is_none() {
        glommio::spawn_local(task).detach();
    }
    glommio::yield_if_needed().await;
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::run_or_spawn;

    #[test]
    fn a_task_that_need_not_wait_is_done_in_place_and_one_that_waits_finishes_later() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let done = Rc::new(Cell::new(0));
            let d = done.clone();
            run_or_spawn(async move { d.set(d.get() + 1) }).await;
            assert_eq!(done.get(), 1, "finished before run_or_spawn returned");
            let d = done.clone();
            let (tx, rx) = futures::channel::oneshot::channel::<()>();
            run_or_spawn(async move {
                rx.await.unwrap();
                d.set(d.get() + 10);
            })
            .await;
            assert_eq!(done.get(), 1, "still waiting");
            tx.send(()).unwrap();
            for _ in 0..100 {
                if done.get() == 11 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(done.get(), 11, "the spawned rest ran once woken");
        });
    }
}
