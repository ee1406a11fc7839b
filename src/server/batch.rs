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

/// How a request touches the keys it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// No keys (a ping, stats, an unknown command).
    None,
    Read,
    Write,
}

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
    /// Whether a request touching `keys` as `access` must wait for one
    /// noted before it.
    pub(crate) fn conflicts(&self, access: Access, mut keys: impl Iterator<Item = &'a [u8]>) -> bool {
        let written = |key: &[u8]| !self.writes.is_empty() && self.writes.contains(key);
        let read = |key: &[u8]| !self.reads.is_empty() && self.reads.contains(key);
        match access {
            Access::None => false,
            Access::Read => keys.any(written),
            Access::Write => keys.any(|key| written(key) || read(key)),
        }
    }

    /// Notes a request touching `keys` as `access`.
    pub(crate) fn note(&mut self, access: Access, keys: impl Iterator<Item = &'a [u8]>) {
        let set = match access {
            Access::None => return,
            Access::Read => &mut self.reads,
            Access::Write => &mut self.writes,
        };
        set.extend(keys);
    }
}

/// Runs `requests` concurrently, in waves: a request that conflicts with
/// an earlier one of its wave (see `KeyConflicts`) starts the next wave,
/// which begins once every request before it finished. Outputs come in
/// request order. Requests on different keys (nearly all of them) share a
/// wave; the rest behave as if run one after another.
pub(crate) async fn join_in_waves<'a, R: ?Sized, K, T, Fut>(
    requests: &[&'a R],
    touches: impl Fn(&'a R) -> (Access, K),
    run: impl Fn(&'a R) -> Fut,
) -> Vec<T>
where
    K: Iterator<Item = &'a [u8]> + Clone,
    Fut: Future<Output = T> + 'a,
    T: 'a,
{
    let mut outputs = Vec::with_capacity(requests.len());
    let mut start = 0;
    while start < requests.len() {
        let mut wave = KeyConflicts::default();
        let mut end = start;
        while end < requests.len() {
            let (access, keys) = touches(requests[end]);
            if end > start && wave.conflicts(access, keys.clone()) {
                break;
            }
            wave.note(access, keys);
            end += 1;
        }
        outputs.extend(join_in_order(requests[start..end].iter().map(|r| run(r))).await);
        start = end;
    }
    outputs
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
        let key = |k: &'static [u8]| std::iter::once(k);
        let mut noted = KeyConflicts::default();
        assert!(!noted.conflicts(Access::Write, key(b"a")), "nothing noted");
        noted.note(Access::Read, key(b"r"));
        noted.note(Access::Write, key(b"w"));
        noted.note(Access::None, key(b"n"));
        assert!(!noted.conflicts(Access::Read, key(b"r")), "reads do not order reads");
        assert!(noted.conflicts(Access::Write, key(b"r")));
        assert!(noted.conflicts(Access::Read, key(b"w")) && noted.conflicts(Access::Write, key(b"w")));
        assert!(!noted.conflicts(Access::Write, key(b"n")), "no access, no key");
        assert!(!noted.conflicts(Access::None, key(b"w")));
        assert!(
            noted.conflicts(Access::Read, [&b"x"[..], b"w"].into_iter()),
            "any key of several"
        );
    }

    #[test]
    fn a_conflicting_request_waits_for_the_ones_before_it() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            // (access, key, delay): the write of k is slow; the read of k
            // after it must still see it, while the read of j need not wait.
            let requests: Vec<&(Access, &[u8], u64)> = vec![
                &(Access::Write, b"k", 30),
                &(Access::Read, b"j", 0),
                &(Access::Read, b"k", 0),
            ];
            let log = std::cell::RefCell::new(Vec::new());
            let outputs = join_in_waves(
                &requests,
                |r| (r.0, std::iter::once(r.1)),
                |r| {
                    let log = &log;
                    async move {
                        if r.2 > 0 {
                            glommio::timer::sleep(std::time::Duration::from_millis(r.2)).await;
                        }
                        log.borrow_mut().push(r.1);
                        r.1
                    }
                },
            )
            .await;
            assert_eq!(outputs, vec![&b"k"[..], b"j", b"k"]);
            assert_eq!(
                *log.borrow(),
                vec![&b"j"[..], b"k", b"k"],
                "j ran beside the write, k after it"
            );
        });
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
