//! Per-key mutual exclusion within one shard, for read-modify-write of a
//! key's version (a replica must not merge two incoming versions from the
//! same stale read). Shard-local and lock-free in the thread sense: a map of
//! wait queues in a `RefCell`; waiters are handed the key in FIFO order.
//!
//! Keys are held by their 64-bit hash, so taking a lock allocates nothing;
//! two keys that collide merely wait for each other.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use futures::channel::oneshot;

#[derive(Default)]
pub(crate) struct KeyLocks {
    held: RefCell<HashMap<u64, VecDeque<oneshot::Sender<()>>, foldhash::fast::FixedState>>,
}

/// Holds a key until dropped.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: u64,
}

/// A queued waiter. If its future is dropped after the key was handed to
/// it but before it ran, the key is passed on instead of leaking.
struct Waiter<'a> {
    locks: &'a KeyLocks,
    key: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if let Ok(Some(())) = rx.try_recv() {
                self.locks.release(self.key);
            }
        }
    }
}

impl KeyLocks {
    /// Waits until no one else holds `key`, then holds it.
    pub(crate) async fn lock(&self, key: &[u8]) -> KeyGuard<'_> {
        let key = xxhash_rust::xxh3::xxh3_64(key);
        let rx = {
            let mut held = self.held.borrow_mut();
            match held.get_mut(&key) {
                None => {
                    held.insert(key, VecDeque::new());
                    None
                }
                Some(queue) => {
                    let (tx, rx) = oneshot::channel();
                    queue.push_back(tx);
                    Some(rx)
                }
            }
        };
        if let Some(rx) = rx {
            let mut waiter = Waiter {
                locks: self,
                key,
                rx: Some(rx),
            };
            let handed = waiter.rx.as_mut().expect("set above").await;
            waiter.rx = None;
            debug_assert!(
                handed.is_ok(),
                "a queued waiter is always handed the key or the map outlives it"
            );
        }
        KeyGuard { locks: self, key }
    }

    /// Holds `key` if no one else does; `None` if someone does.
    pub(crate) fn try_lock(&self, key: &[u8]) -> Option<KeyGuard<'_>> {
        let key = xxhash_rust::xxh3::xxh3_64(key);
        let mut held = self.held.borrow_mut();
        if held.contains_key(&key) {
            return None;
        }
        held.insert(key, VecDeque::new());
        Some(KeyGuard { locks: self, key })
    }

    /// Hands `key` to the next live waiter, or frees it.
    fn release(&self, key: u64) {
        let mut held = self.held.borrow_mut();
        let queue = held.get_mut(&key).expect("a released key is held");
        while let Some(next) = queue.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        held.remove(&key);
    }

    #[cfg(test)]
    fn is_held(&self, key: &[u8]) -> bool {
        self.held.borrow().contains_key(&xxhash_rust::xxh3::xxh3_64(key))
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.locks.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn holders_of_one_key_run_one_at_a_time_in_order() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let locks = Rc::new(KeyLocks::default());
                let inside = Rc::new(Cell::new(0));
                let order = Rc::new(RefCell::new(Vec::new()));
                let tasks: Vec<_> = (0..5)
                    .map(|i| {
                        let (locks, inside, order) = (locks.clone(), inside.clone(), order.clone());
                        glommio::spawn_local(async move {
                            let _guard = locks.lock(b"k").await;
                            inside.set(inside.get() + 1);
                            assert_eq!(inside.get(), 1, "two holders at once");
                            order.borrow_mut().push(i);
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                            inside.set(inside.get() - 1);
                        })
                    })
                    .collect();
                // Another key is never blocked by this one.
                drop(locks.lock(b"other").await);
                for t in tasks {
                    t.await;
                }
                assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4]);
                assert!(!locks.is_held(b"k"));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn try_lock_takes_only_a_free_key() {
        let locks = KeyLocks::default();
        let held = locks.try_lock(b"k").expect("a free key");
        assert!(locks.try_lock(b"k").is_none(), "held");
        assert!(locks.try_lock(b"other").is_some(), "another key is free");
        drop(held);
        assert!(!locks.is_held(b"k"));
        assert!(locks.try_lock(b"k").is_some());
    }

    #[test]
    fn a_cancelled_waiter_does_not_leak_the_key() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let locks = KeyLocks::default();
                let first = locks.lock(b"k").await;
                {
                    let waiting = std::pin::pin!(locks.lock(b"k"));
                    // Poll once so it queues, then drop it.
                    assert!(futures_lite::future::poll_once(waiting).await.is_none());
                }
                drop(first);
                drop(locks.lock(b"k").await);
                assert!(!locks.is_held(b"k"));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
