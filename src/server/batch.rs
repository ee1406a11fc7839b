//! Runs the requests of one pipelined read concurrently and collects their
//! results in request order.
//!
//! Each request's future is boxed and polled once at once. Most finish on
//! that first poll (a cached read, a write into the log buffer), so they
//! cost one allocation and one copy of the future; only the ones still
//! waiting (a disk read, a key lock, a replica round) are queued and polled
//! again when woken. `futures::future::join_all` moved every future two or
//! three times (into its list, its task cell and its task allocation), and
//! a request's future is over a kilobyte.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use futures::stream::{FuturesUnordered, StreamExt};

/// The keys requests of a pipelined batch read and write, so that requests
/// run concurrently still behave as if run in order: a read must not
/// overtake an earlier write of its key, nor a write an earlier read or
/// write of its key.
#[derive(Default)]
pub(crate) struct KeyConflicts<'a> {
    reads: std::collections::HashSet<&'a [u8], foldhash::fast::RandomState>,
    writes: std::collections::HashSet<&'a [u8], foldhash::fast::RandomState>,
}

impl<'a> KeyConflicts<'a> {
    pub(crate) fn note_read(&mut self, key: &'a [u8]) {
        self.reads.insert(key);
    }

    pub(crate) fn note_write(&mut self, key: &'a [u8]) {
        self.writes.insert(key);
    }

    /// Whether a read of `key` must wait for a write noted before it.
    pub(crate) fn read_conflicts(&self, key: &[u8]) -> bool {
        !self.writes.is_empty() && self.writes.contains(key)
    }

    /// Whether a write of `key` must wait for a read or write noted before it.
    pub(crate) fn write_conflicts(&self, key: &[u8]) -> bool {
        self.read_conflicts(key) || (!self.reads.is_empty() && self.reads.contains(key))
    }

    pub(crate) fn clear(&mut self) {
        self.reads.clear();
        self.writes.clear();
    }
}

/// Runs every future of `futures` concurrently; their outputs, in order.
pub(crate) async fn join_in_order<'a, T: 'a, F>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: Future<Output = T> + 'a,
{
    let mut futures = futures.into_iter();
    let mut results: Vec<Option<T>> = Vec::with_capacity(futures.size_hint().0);
    let mut waiting = FuturesUnordered::new();
    poll_fn(|cx| {
        for future in futures.by_ref() {
            let index = results.len();
            let mut future: Pin<Box<dyn Future<Output = T> + 'a>> = Box::pin(future);
            match future.as_mut().poll(cx) {
                Poll::Ready(output) => results.push(Some(output)),
                Poll::Pending => {
                    results.push(None);
                    waiting.push(async move { (index, future.await) });
                }
            }
        }
        while let Poll::Ready(Some((index, output))) = waiting.poll_next_unpin(cx) {
            results[index] = Some(output);
        }
        if !waiting.is_empty() {
            return Poll::Pending;
        }
        let done = std::mem::take(&mut results);
        Poll::Ready(
            done.into_iter()
                .map(|r| r.expect("every future has finished"))
                .collect(),
        )
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wait_only_for_writes_and_writes_for_both() {
        let mut noted = KeyConflicts::default();
        assert!(
            !noted.read_conflicts(b"a") && !noted.write_conflicts(b"a"),
            "nothing noted"
        );
        noted.note_read(b"r");
        noted.note_write(b"w");
        assert!(!noted.read_conflicts(b"r"), "reads do not order reads");
        assert!(noted.write_conflicts(b"r"));
        assert!(noted.read_conflicts(b"w") && noted.write_conflicts(b"w"));
        assert!(!noted.read_conflicts(b"x") && !noted.write_conflicts(b"x"));
        noted.clear();
        assert!(!noted.write_conflicts(b"w"));
    }

    #[test]
    fn outputs_come_in_order_whatever_order_the_futures_finish_in() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            // Later futures finish first; some finish on the first poll.
            let delays_ms = [30u64, 0, 20, 0, 10, 0];
            let outputs = join_in_order(delays_ms.iter().enumerate().map(|(i, &ms)| async move {
                if ms > 0 {
                    glommio::timer::sleep(std::time::Duration::from_millis(ms)).await;
                }
                i
            }))
            .await;
            assert_eq!(outputs, vec![0, 1, 2, 3, 4, 5]);
            let started = std::time::Instant::now();
            let none: Vec<()> = join_in_order(Vec::<std::future::Ready<()>>::new()).await;
            assert!(none.is_empty());
            // Concurrent, not one after another: 3 x 50 ms in ~50 ms.
            join_in_order((0..3).map(|_| glommio::timer::sleep(std::time::Duration::from_millis(50)))).await;
            assert!(started.elapsed() < std::time::Duration::from_millis(140));
        });
    }
}
