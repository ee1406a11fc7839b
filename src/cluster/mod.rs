//! The cluster's request logic as sans-IO state machines: no sockets, no
//! disks, no clocks. Each takes replies and `now_ms` as inputs and returns
//! the messages to send, so the server's shards and the seeded simulation in
//! `tests/simulation.rs` drive the very same code.
//!
//! - [`replica`]: what a replica does with a write or a coordinated write
//!   (pure functions over the stored [`Clock`](crate::version::Clock)).
//! - [`PutRound`]: one write, from the coordinator's local write to W acks,
//!   with sloppy quorum: a primary that fails or does not answer in time is
//!   replaced by the next fallback, which stores a hint naming it.
//! - [`GetRound`]: one read, from R replies to the merged value, and the
//!   read repairs owed to replicas that answered with less.
//! - [`liveness`]: which peers are down, by phi accrual over the times they
//!   were last heard from.
//! - [`merkle_sync`]: what anti-entropy exchanges between two replicas of
//!   a partition, from their Merkle trees.

mod get;
pub mod heartbeats;
pub mod liveness;
pub mod merkle_sync;
mod put;
pub mod replica;

pub use get::{GetPlan, GetRound};
pub use put::{PutPlan, PutRound};

use dynkv_ring::NodeId;

/// A message a round wants sent: the round's object (a put's new version,
/// or a get's repair) to `to`, or a read of `to`. `hint_for` names the
/// primary this copy stands in for when `to` is a fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Send {
    pub to: NodeId,
    pub hint_for: Option<NodeId>,
}

/// Why a round could not reach its quorum.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error(
        "only {got} of {needed} replicas answered ({primaries} of {primaries_needed} primaries) before the timeout"
    )]
    Timeout {
        got: usize,
        needed: usize,
        primaries: usize,
        primaries_needed: usize,
    },
    #[error(
        "only {got} of {needed} replicas can answer ({primaries} of {primaries_needed} primaries); the rest failed"
    )]
    Unavailable {
        got: usize,
        needed: usize,
        primaries: usize,
        primaries_needed: usize,
    },
}

/// The quorum a request needs: `r` or `w` replies in all, of which
/// `primaries` (pr, pw) from primary owners rather than fallbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    pub total: usize,
    pub primaries: usize,
}

/// A round's answer for the client: decided once, handed out once.
#[derive(Debug)]
struct Decision<T> {
    outcome: Option<Result<T, QuorumError>>,
    taken: bool,
}

impl<T: Clone> Decision<T> {
    fn new() -> Decision<T> {
        Decision {
            outcome: None,
            taken: false,
        }
    }

    fn is_decided(&self) -> bool {
        self.outcome.is_some()
    }

    /// Records the answer unless one was already decided.
    fn decide(&mut self, outcome: Result<T, QuorumError>) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    /// The answer, the first time it is asked for once decided.
    fn poll(&mut self) -> Option<Result<T, QuorumError>> {
        if self.taken {
            return None;
        }
        let outcome = self.outcome.clone()?;
        self.taken = true;
        Some(outcome)
    }
}

/// Counts what may still answer: `(all, primaries)` among `sends` for which
/// `may_answer` holds; a send with no `hint_for` is a primary's.
fn may_still_answer<'a, T: 'a>(
    sends: impl Iterator<Item = (&'a Send, &'a T)>,
    may_answer: impl Fn(&T) -> bool,
) -> (usize, usize) {
    let mut all = 0;
    let mut primaries = 0;
    for (send, state) in sends {
        if may_answer(state) {
            all += 1;
            primaries += usize::from(send.hint_for.is_none());
        }
    }
    (all, primaries)
}

/// Counts replies toward a [`Quorum`] and decides when a round has won or
/// can no longer win.
#[derive(Clone, Copy, Debug)]
struct Tally {
    quorum: Quorum,
    got: usize,
    primaries: usize,
}

impl Tally {
    fn new(quorum: Quorum) -> Tally {
        assert!(quorum.primaries <= quorum.total, "pr/pw exceed r/w: {quorum:?}");
        Tally {
            quorum,
            got: 0,
            primaries: 0,
        }
    }

    fn count(&mut self, primary: bool) {
        self.got += 1;
        if primary {
            self.primaries += 1;
        }
    }

    fn met(&self) -> bool {
        self.got >= self.quorum.total && self.primaries >= self.quorum.primaries
    }

    /// True if even every pending reply could not meet the quorum.
    fn lost(&self, pending: usize, pending_primaries: usize) -> bool {
        self.got + pending < self.quorum.total || self.primaries + pending_primaries < self.quorum.primaries
    }

    fn timeout(&self) -> QuorumError {
        QuorumError::Timeout {
            got: self.got,
            needed: self.quorum.total,
            primaries: self.primaries,
            primaries_needed: self.quorum.primaries,
        }
    }

    fn unavailable(&self) -> QuorumError {
        QuorumError::Unavailable {
            got: self.got,
            needed: self.quorum.total,
            primaries: self.primaries,
            primaries_needed: self.quorum.primaries,
        }
    }
}
