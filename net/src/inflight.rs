//! The requests in flight on one pipelined connection: a slab of slots, each
//! waiting for its response, its deadline, or the connection's end.
//!
//! A request id names a slot and the slot's generation, so an answer that
//! arrives after its request timed out (or its caller gave up) finds a newer
//! generation and is dropped: it can never complete the slot's next request.
//! Deadlines are enforced by one reaper per connection that sleeps until the
//! earliest of them, instead of a timer per request (a timer is a node
//! inserted into and removed from the reactor's ordered map, and with the
//! one-shot channel and the map of pending ids this replaces, it was about a
//! fifth of a load generator thread's CPU).
//!
//! Pure logic: it never reads the clock or does I/O; time is an argument.
//! The connection (`client.rs`) drives it and wakes the wakers it returns
//! after releasing its borrow.

use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// How a request ended.
#[derive(Debug)]
pub(crate) enum Outcome<R> {
    Answered(R),
    /// Its deadline passed first.
    TimedOut,
    /// The connection ended first.
    Disconnected,
}

enum State<R> {
    Free,
    Waiting(Option<Waker>),
    Done(Outcome<R>),
}

struct Slot<R> {
    generation: u32,
    deadline: Instant,
    state: State<R>,
}

/// The in-flight table of one connection.
pub(crate) struct Inflight<R> {
    slots: Vec<Slot<R>>,
    /// Indexes of free slots; the most recently freed is reused first, so
    /// a steady load keeps touching the same few cache lines.
    free: Vec<u32>,
    slots_max: usize,
    /// Slots in `State::Waiting`.
    waiting: usize,
    /// The earliest deadline the reaper knows of, if any request waits.
    armed: Option<Instant>,
    closed: bool,
}

fn request_id(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

fn split_id(id: u64) -> (usize, u32) {
    ((id & u64::from(u32::MAX)) as usize, (id >> 32) as u32)
}

impl<R> Inflight<R> {
    /// A table of at most `slots_max` requests at once. Slots are made as
    /// they are first needed.
    pub(crate) fn new(slots_max: usize) -> Inflight<R> {
        assert!(
            (1..=u32::MAX as usize).contains(&slots_max),
            "slot indexes are the low 32 bits of a request id"
        );
        Inflight {
            slots: Vec::new(),
            free: Vec::new(),
            slots_max,
            waiting: 0,
            armed: None,
            closed: false,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Requests waiting for an answer.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting
    }

    /// Takes a slot for a request due by `deadline`. Returns its request id,
    /// and whether the reaper must be told (no deadline was armed, or this
    /// one is earlier). `None` if the table is full or closed.
    pub(crate) fn start(&mut self, deadline: Instant) -> Option<(u64, bool)> {
        if self.closed {
            return None;
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None if self.slots.len() < self.slots_max => {
                self.slots.push(Slot {
                    generation: 1,
                    deadline,
                    state: State::Free,
                });
                u32::try_from(self.slots.len() - 1).expect("slots_max fits in u32, asserted in new")
            }
            None => return None,
        };
        let slot = &mut self.slots[index as usize];
        assert!(matches!(slot.state, State::Free), "a free-listed slot is free");
        slot.state = State::Waiting(None);
        slot.deadline = deadline;
        self.waiting += 1;
        let tell_reaper = self.armed.is_none_or(|armed| deadline < armed);
        if tell_reaper {
            self.armed = Some(deadline);
        }
        Some((request_id(index, slot.generation), tell_reaper))
    }

    fn slot_of(&mut self, id: u64) -> Option<&mut Slot<R>> {
        let (index, generation) = split_id(id);
        self.slots
            .get_mut(index)
            .filter(|slot| slot.generation == generation && !matches!(slot.state, State::Free))
    }

    /// Hands `answer` to request `id` if it still waits; returns the waker
    /// to wake. An answer for a request that timed out, was given up, or
    /// never existed is dropped.
    pub(crate) fn answer(&mut self, id: u64, answer: R) -> Option<Waker> {
        let slot = self.slot_of(id)?;
        if !matches!(slot.state, State::Waiting(_)) {
            return None;
        }
        let State::Waiting(waker) = std::mem::replace(&mut slot.state, State::Done(Outcome::Answered(answer))) else {
            unreachable!("checked just above")
        };
        self.waiting -= 1;
        waker
    }

    /// Polls request `id` on behalf of its caller: its outcome once it has
    /// one (the slot is then free), or `Pending` with the waker kept.
    pub(crate) fn poll(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<Outcome<R>> {
        let Some(slot) = self.slot_of(id) else {
            // Only the caller frees its slot, so this cannot happen; if it
            // did, the honest answer is that the request has no outcome.
            debug_assert!(false, "request {id:#x} polled after its slot was freed");
            return Poll::Ready(Outcome::Disconnected);
        };
        match &mut slot.state {
            State::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Done(_) => {
                let State::Done(outcome) = std::mem::replace(&mut slot.state, State::Free) else {
                    unreachable!("matched just above")
                };
                self.release(id);
                Poll::Ready(outcome)
            }
            State::Free => unreachable!("slot_of skips free slots"),
        }
    }

    /// The caller of request `id` no longer wants its outcome (its future
    /// was dropped): the slot is freed, and a late answer will be dropped.
    /// Does nothing if the slot was already freed.
    pub(crate) fn abandon(&mut self, id: u64) {
        let Some(slot) = self.slot_of(id) else { return };
        let was_waiting = matches!(slot.state, State::Waiting(_));
        slot.state = State::Free;
        if was_waiting {
            self.waiting -= 1;
        }
        self.release(id);
    }

    fn release(&mut self, id: u64) {
        let (index, _) = split_id(id);
        let slot = &mut self.slots[index];
        debug_assert!(matches!(slot.state, State::Free));
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
    }

    /// Ends every request whose deadline is at or before `now`, pushing
    /// their wakers onto `wake`. Returns the earliest deadline still
    /// pending, which the reaper should sleep until (`None`: sleep until
    /// told of a new request).
    pub(crate) fn expire(&mut self, now: Instant, wake: &mut Vec<Waker>) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        if self.waiting > 0 {
            for slot in &mut self.slots {
                if !matches!(slot.state, State::Waiting(_)) {
                    continue;
                }
                if slot.deadline <= now {
                    if let State::Waiting(Some(waker)) =
                        std::mem::replace(&mut slot.state, State::Done(Outcome::TimedOut))
                    {
                        wake.push(waker);
                    }
                    self.waiting -= 1;
                } else {
                    earliest = Some(earliest.map_or(slot.deadline, |e| e.min(slot.deadline)));
                }
            }
        }
        self.armed = earliest;
        earliest
    }

    /// The connection ended: every waiting request is told so, and no new
    /// one starts.
    pub(crate) fn close(&mut self, wake: &mut Vec<Waker>) {
        self.closed = true;
        for slot in &mut self.slots {
            if let State::Waiting(waker) = &mut slot.state {
                wake.extend(waker.take());
                slot.state = State::Done(Outcome::Disconnected);
                self.waiting -= 1;
            }
        }
        self.armed = None;
        debug_assert_eq!(self.waiting, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn poll<R>(table: &mut Inflight<R>, id: u64, waker: &Waker) -> Poll<Outcome<R>> {
        table.poll(id, &mut Context::from_waker(waker))
    }

    #[test]
    fn an_answer_reaches_its_request_and_frees_the_slot() {
        let t0 = Instant::now();
        let mut table = Inflight::new(4);
        let (a, tell) = table.start(t0 + Duration::from_secs(1)).unwrap();
        assert!(tell, "the first deadline arms the reaper");
        let (b, tell) = table.start(t0 + Duration::from_secs(2)).unwrap();
        assert!(!tell, "a later deadline does not need the reaper");
        let (count, w) = waker();
        assert!(poll(&mut table, a, &w).is_pending());
        assert!(table.answer(b, "b").is_none(), "b was never polled: no waker");
        table.answer(a, "a").unwrap().wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(matches!(poll(&mut table, a, &w), Poll::Ready(Outcome::Answered("a"))));
        assert!(matches!(poll(&mut table, b, &w), Poll::Ready(Outcome::Answered("b"))));
        assert_eq!(table.waiting(), 0);
        assert_eq!(table.free.len(), 2);
    }

    #[test]
    fn a_late_answer_never_completes_the_slots_next_request() {
        let t0 = Instant::now();
        let mut table = Inflight::new(1);
        let (old, _) = table.start(t0 + Duration::from_millis(10)).unwrap();
        let (_, w) = waker();
        assert!(poll(&mut table, old, &w).is_pending());
        let mut wake = Vec::new();
        assert_eq!(table.expire(t0 + Duration::from_millis(10), &mut wake), None);
        assert_eq!(wake.len(), 1, "the timed-out caller is woken");
        assert!(matches!(poll(&mut table, old, &w), Poll::Ready(Outcome::TimedOut)));
        let (new, _) = table.start(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(split_id(new).0, split_id(old).0, "the one slot is reused");
        assert_ne!(new, old, "under a new generation");
        assert!(table.answer(old, "late").is_none());
        assert!(poll(&mut table, new, &w).is_pending(), "the late answer was dropped");
        assert!(table.start(t0).is_none(), "one slot, in use: full");
    }

    #[test]
    fn expiry_ends_only_due_requests_and_reports_the_next_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut table: Inflight<()> = Inflight::new(8);
        let ids: Vec<u64> = [30, 10, 20]
            .iter()
            .map(|&d| table.start(t0 + ms(d)).unwrap().0)
            .collect();
        let mut wake = Vec::new();
        assert_eq!(table.expire(t0 + ms(5), &mut wake), Some(t0 + ms(10)));
        assert_eq!(table.expire(t0 + ms(15), &mut wake), Some(t0 + ms(20)));
        assert_eq!(table.waiting(), 2);
        let (_, w) = waker();
        assert!(matches!(poll(&mut table, ids[1], &w), Poll::Ready(Outcome::TimedOut)));
        assert!(poll(&mut table, ids[0], &w).is_pending());
        let (_, tell) = table.start(t0 + ms(12)).unwrap();
        assert!(tell, "earlier than the armed 20 ms");
    }

    #[test]
    fn close_ends_every_waiting_request_and_refuses_new_ones() {
        let t0 = Instant::now();
        let mut table: Inflight<()> = Inflight::new(8);
        let (a, _) = table.start(t0).unwrap();
        let (b, _) = table.start(t0).unwrap();
        let (count, w) = waker();
        assert!(poll(&mut table, a, &w).is_pending());
        let mut wake = Vec::new();
        table.close(&mut wake);
        wake.drain(..).for_each(Waker::wake);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(matches!(poll(&mut table, a, &w), Poll::Ready(Outcome::Disconnected)));
        assert!(matches!(poll(&mut table, b, &w), Poll::Ready(Outcome::Disconnected)));
        assert!(table.start(t0).is_none());
    }

    #[test]
    fn an_abandoned_request_frees_its_slot_and_drops_its_answer() {
        let t0 = Instant::now();
        let mut table = Inflight::new(1);
        let (id, _) = table.start(t0).unwrap();
        table.abandon(id);
        assert_eq!(table.waiting(), 0);
        assert!(table.answer(id, 1).is_none());
        table.abandon(id);
        assert_eq!(table.free.len(), 1, "abandoning twice frees once");
        assert!(table.start(t0).is_some());
    }
}
