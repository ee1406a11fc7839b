//! A single-threaded broadcast signal: tasks wait for "something changed",
//! then re-check their condition.
//!
//! Shard-local and lock-free (it lives inside one executor). A waiter reads
//! its condition and creates the wait future with no await in between, so a
//! notification can never fall into the gap.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(crate) struct Signal {
    epoch: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    /// Wakes every current waiter.
    pub(crate) fn notify(&self) {
        self.epoch.set(self.epoch.get() + 1);
        // Take the list out before waking, in case a waker re-registers
        // synchronously; then give its allocation back for reuse.
        let mut waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        if waiters.is_empty() {
            return;
        }
        for waker in waiters.drain(..) {
            waker.wake();
        }
        let mut slot = self.waiters.borrow_mut();
        if slot.is_empty() {
            *slot = waiters;
        }
    }

    /// Resolves at the next `notify` after this call.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            epoch: self.epoch.get(),
        }
    }
}

pub(crate) struct Wait<'a> {
    signal: &'a Signal,
    epoch: u64,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        // A spurious re-poll usually comes from the task registered last;
        // checking only that one keeps registration O(1) with many waiters.
        if !waiters.last().is_some_and(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
