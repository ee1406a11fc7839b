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
//! Requests sent together (a pipeline, `Client::pipeline`) may share one
//! *group*: the group holds a count of its requests still waiting and one
//! waker, woken once when the last of them ends, so a batch of P requests
//! costs one wake-up instead of P.
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
    Waiting(Waiter),
    Done(Outcome<R>),
}

/// Who is told when a waiting request ends.
enum Waiter {
    /// Its own caller (the waker of its last poll, if polled yet).
    Caller(Option<Waker>),
    /// Its group, by index.
    Group(u32),
}

struct Group {
    generation: u32,
    in_use: bool,
    /// Requests of the group still waiting.
    pending: u32,
    waker: Option<Waker>,
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
    groups: Vec<Group>,
    free_groups: Vec<u32>,
}

/// A group of requests that are waited for together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupId {
    index: u32,
    generation: u32,
}

/// The index of a free entry of `items`: the most recently freed, or a new
/// one made by `make` while there are fewer than `max`. `None` if full.
fn take_index<T>(free: &mut Vec<u32>, items: &mut Vec<T>, max: usize, make: impl FnOnce() -> T) -> Option<u32> {
    if let Some(index) = free.pop() {
        return Some(index);
    }
    if items.len() >= max {
        return None;
    }
    items.push(make());
    Some(u32::try_from(items.len() - 1).expect("max fits in u32, asserted in Inflight::new"))
}

/// Keeps the waker of the latest poll (cloning only if it changed).
fn remember(waker: &mut Option<Waker>, cx: &Context<'_>) {
    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *waker = Some(cx.waker().clone());
    }
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
            groups: Vec::new(),
            free_groups: Vec::new(),
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
        self.start_as(Waiter::Caller(None), deadline)
    }

    /// [`Inflight::start`] for a request of `group`, which is told when
    /// the request ends instead of its caller. The outcome is then taken
    /// with [`Inflight::take`].
    pub(crate) fn start_in(&mut self, group: GroupId, deadline: Instant) -> Option<(u64, bool)> {
        assert!(self.group_is_open(group), "requests join only an open group");
        let started = self.start_as(Waiter::Group(group.index), deadline)?;
        self.groups[group.index as usize].pending += 1;
        Some(started)
    }

    fn start_as(&mut self, waiter: Waiter, deadline: Instant) -> Option<(u64, bool)> {
        if self.closed {
            return None;
        }
        let index = take_index(&mut self.free, &mut self.slots, self.slots_max, || Slot {
            generation: 1,
            deadline,
            state: State::Free,
        })?;
        let slot = &mut self.slots[index as usize];
        assert!(matches!(slot.state, State::Free), "a free-listed slot is free");
        slot.state = State::Waiting(waiter);
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
        self.settle(split_id(id).0, Outcome::Answered(answer))
    }

    /// Ends the waiting request in slot `index` with `outcome`; returns the
    /// waker to wake: its caller's, or its group's if it was the group's
    /// last request waiting.
    fn settle(&mut self, index: usize, outcome: Outcome<R>) -> Option<Waker> {
        let State::Waiting(waiter) = std::mem::replace(&mut self.slots[index].state, State::Done(outcome)) else {
            unreachable!("only waiting requests are settled")
        };
        self.waiting -= 1;
        match waiter {
            Waiter::Caller(waker) => waker,
            Waiter::Group(group) => self.group_ended_one(group),
        }
    }

    /// One request of group `index` stopped waiting; the group's waker if
    /// none waits any more.
    fn group_ended_one(&mut self, index: u32) -> Option<Waker> {
        let group = &mut self.groups[index as usize];
        debug_assert!(group.in_use && group.pending > 0);
        group.pending -= 1;
        if group.pending == 0 {
            group.waker.take()
        } else {
            None
        }
    }

    /// Opens a group for requests to be waited for together. `None` if the
    /// table is closed, or as many groups as slots are open (a group
    /// without requests has no use, so more means groups are leaking).
    pub(crate) fn open_group(&mut self) -> Option<GroupId> {
        if self.closed {
            return None;
        }
        let index = take_index(&mut self.free_groups, &mut self.groups, self.slots_max, || Group {
            generation: 1,
            in_use: false,
            pending: 0,
            waker: None,
        })?;
        let group = &mut self.groups[index as usize];
        debug_assert!(!group.in_use && group.pending == 0);
        group.in_use = true;
        Some(GroupId {
            index,
            generation: group.generation,
        })
    }

    fn group_is_open(&self, group: GroupId) -> bool {
        self.groups
            .get(group.index as usize)
            .is_some_and(|g| g.in_use && g.generation == group.generation)
    }

    /// Ready once no request of `group` waits any more (each has an
    /// outcome to take); otherwise keeps the waker.
    pub(crate) fn poll_group(&mut self, group: GroupId, cx: &mut Context<'_>) -> Poll<()> {
        assert!(self.group_is_open(group), "only an open group is waited for");
        let group = &mut self.groups[group.index as usize];
        if group.pending == 0 {
            return Poll::Ready(());
        }
        remember(&mut group.waker, cx);
        Poll::Pending
    }

    /// Takes the outcome of request `id` of a group, which has one (its
    /// group was polled ready), and frees its slot.
    pub(crate) fn take(&mut self, id: u64) -> Outcome<R> {
        let Some(slot) = self.slot_of(id) else {
            debug_assert!(false, "request {id:#x} taken after its slot was freed");
            return Outcome::Disconnected;
        };
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Done(outcome) => {
                self.release(id);
                outcome
            }
            other => {
                slot.state = other;
                debug_assert!(false, "request {id:#x} taken while it waits");
                Outcome::Disconnected
            }
        }
    }

    /// Closes `group` once its caller is done with it: requests of it not
    /// taken yet are abandoned by the caller first.
    pub(crate) fn close_group(&mut self, group: GroupId) {
        if !self.group_is_open(group) {
            return;
        }
        let g = &mut self.groups[group.index as usize];
        debug_assert_eq!(
            g.pending, 0,
            "a group's requests are taken or abandoned before it closes"
        );
        g.in_use = false;
        g.pending = 0;
        g.waker = None;
        g.generation = g.generation.wrapping_add(1);
        self.free_groups.push(group.index);
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
            State::Waiting(Waiter::Caller(waker)) => {
                remember(waker, cx);
                Poll::Pending
            }
            State::Waiting(Waiter::Group(_)) => unreachable!("a group's requests are polled through their group"),
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
        if let State::Waiting(waiter) = std::mem::replace(&mut slot.state, State::Free) {
            self.waiting -= 1;
            if let Waiter::Group(group) = waiter {
                // Its caller is giving up on the whole group: no one to wake.
                let _ = self.group_ended_one(group);
            }
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
            for index in 0..self.slots.len() {
                let slot = &self.slots[index];
                if !matches!(slot.state, State::Waiting(_)) {
                    continue;
                }
                if slot.deadline <= now {
                    wake.extend(self.settle(index, Outcome::TimedOut));
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
        for index in 0..self.slots.len() {
            if matches!(self.slots[index].state, State::Waiting(_)) {
                wake.extend(self.settle(index, Outcome::Disconnected));
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

    #[test]
    fn a_group_is_woken_once_when_its_last_request_ends() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut table = Inflight::new(8);
        let group = table.open_group().unwrap();
        let ids: Vec<u64> = (0..3)
            .map(|i| table.start_in(group, t0 + ms(10 * (i + 1))).unwrap().0)
            .collect();
        let (count, w) = waker();
        assert!(table.poll_group(group, &mut Context::from_waker(&w)).is_pending());
        assert!(table.answer(ids[2], "c").is_none(), "two still wait");
        let mut wake = Vec::new();
        assert_eq!(table.expire(t0 + ms(10), &mut wake), Some(t0 + ms(20)));
        assert!(wake.is_empty(), "one still waits");
        table.answer(ids[1], "b").expect("the last one wakes the group").wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(table.poll_group(group, &mut Context::from_waker(&w)).is_ready());
        assert!(matches!(table.take(ids[0]), Outcome::TimedOut));
        assert!(matches!(table.take(ids[1]), Outcome::Answered("b")));
        assert!(matches!(table.take(ids[2]), Outcome::Answered("c")));
        table.close_group(group);
        assert_eq!((table.waiting(), table.free.len()), (0, 3));
        let again = table.open_group().unwrap();
        assert_ne!(again, group, "a reopened group has a new generation");
        table.close_group(group);
        let (id, _) = table.start_in(again, t0).unwrap();
        assert!(table.answer(id, "d").is_none(), "never polled: no waker yet");
        assert!(table.poll_group(again, &mut Context::from_waker(&w)).is_ready());
    }

    #[test]
    fn a_group_given_up_frees_its_slots_and_close_wakes_a_waiting_group() {
        let t0 = Instant::now();
        let mut table = Inflight::new(4);
        let dropped = table.open_group().unwrap();
        let ids: Vec<u64> = (0..2).map(|_| table.start_in(dropped, t0).unwrap().0).collect();
        ids.iter().for_each(|&id| table.abandon(id));
        table.close_group(dropped);
        assert_eq!((table.waiting(), table.free.len()), (0, 2));
        assert!(table.answer(ids[0], "late").is_none());

        let group = table.open_group().unwrap();
        let (id, _) = table.start_in(group, t0).unwrap();
        let (solo, _) = table.start(t0).unwrap();
        let (count, w) = waker();
        assert!(table.poll_group(group, &mut Context::from_waker(&w)).is_pending());
        assert!(poll(&mut table, solo, &w).is_pending());
        let mut wake = Vec::new();
        table.close(&mut wake);
        wake.drain(..).for_each(Waker::wake);
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "the group and the lone caller");
        assert!(matches!(table.take(id), Outcome::Disconnected));
        assert!(table.open_group().is_none(), "closed");
    }
}
