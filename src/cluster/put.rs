//! One write's round at its coordinator: replicate the new version to the
//! other replicas and decide once W of them (pw of them primaries) hold it.
//!
//! The coordinator has already made the version and stored it locally when
//! the round starts; that copy counts as the first ack.
//!
//! A primary coordinates while any primary is reachable. When none is,
//! the first healthy fallback does (`PutPlan::stands_in_for`): it keeps its
//! copy as a hint for the first primary, and the other fallbacks take the
//! rest. A version's new dot `(writer, counter)` is only unique if the
//! writer still holds every dot it made for the key; a primary keeps them
//! in its store, but a fallback hands its copy off and deletes it, and would
//! then reuse a dot, making replicas that saw the old one drop the new
//! write (the bug Riak tracked as kv679). So a fallback writes under a
//! writer id it renews whenever it deletes a hint of the partition (see the
//! server's hint store). A primary that is
//! known to be down, refuses, or does not answer within
//! `replica_timeout_ms` is replaced by the next unused fallback, which gets
//! the same version with a hint naming that primary (sloppy quorum). The
//! round keeps running after it has answered, until every copy is placed or
//! the deadline passes, so that N copies exist whenever the cluster allows.

use dynkv_ring::NodeId;

use super::{Decision, Quorum, QuorumError, Send, Tally};

/// What a put round needs to know, fixed at its start.
#[derive(Clone, Debug)]
pub struct PutPlan {
    /// The partition's owners in preference order, whether up or down.
    pub primaries: Vec<NodeId>,
    /// Healthy non-owners in the order to try them.
    pub fallbacks: Vec<NodeId>,
    /// Nodes believed down now; their copies go straight to fallbacks.
    pub down: Vec<NodeId>,
    /// The node running the round, which already holds the version: a
    /// primary, or a fallback when every primary is unreachable.
    pub coordinator: NodeId,
    /// When the coordinator is a fallback: the primary whose hint holds its
    /// copy. No other node is sent a copy for that primary.
    pub stands_in_for: Option<NodeId>,
    /// W and pw.
    pub quorum: Quorum,
    /// How long one replica may take before a fallback replaces it.
    pub replica_timeout_ms: u64,
    /// How long the client waits for the quorum.
    pub timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending {
        sent_ms: u64,
    },
    /// Did not answer in time and was replaced; a late ack still counts,
    /// since it means the copy is durable there.
    Late,
    Acked,
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct Copy {
    send: Send,
    state: State,
}

/// The state of one put at its coordinator.
#[derive(Debug)]
pub struct PutRound {
    tally: Tally,
    deadline_ms: u64,
    replica_timeout_ms: u64,
    /// Fallbacks not yet used, in order.
    fallbacks: std::collections::VecDeque<NodeId>,
    copies: Vec<Copy>,
    /// Primaries other than the coordinator, that should each end up with
    /// the version.
    others: Vec<NodeId>,
    outcome: Decision<()>,
}

impl PutRound {
    /// Starts the round after the coordinator's local write succeeded.
    /// Returns the copies to send now.
    pub fn start(plan: &PutPlan, now_ms: u64) -> (PutRound, Vec<Send>) {
        assert!(plan.quorum.total >= 1, "W must be at least 1");
        let mut round = PutRound {
            tally: Tally::new(plan.quorum),
            deadline_ms: now_ms.saturating_add(plan.timeout_ms),
            replica_timeout_ms: plan.replica_timeout_ms,
            fallbacks: plan
                .fallbacks
                .iter()
                .copied()
                .filter(|f| *f != plan.coordinator && !plan.down.contains(f) && !plan.primaries.contains(f))
                .collect(),
            copies: Vec::with_capacity(plan.primaries.len() + 1),
            others: plan
                .primaries
                .iter()
                .copied()
                .filter(|p| *p != plan.coordinator && Some(*p) != plan.stands_in_for)
                .collect(),
            outcome: Decision::new(),
        };
        // The coordinator is a primary, unless ownership moved while it
        // wrote; then its copy still counts, but not as a primary's.
        round.tally.count(plan.primaries.contains(&plan.coordinator));
        let mut sends = Vec::new();
        for &primary in &plan.primaries {
            if primary == plan.coordinator || Some(primary) == plan.stands_in_for {
                continue;
            }
            let send = if plan.down.contains(&primary) {
                round.next_fallback(primary)
            } else {
                Some(Send {
                    to: primary,
                    hint_for: None,
                })
            };
            if let Some(send) = send {
                round.copies.push(Copy {
                    send,
                    state: State::Pending { sent_ms: now_ms },
                });
                sends.push(send);
            }
        }
        round.decide(now_ms);
        (round, sends)
    }

    fn next_fallback(&mut self, primary: NodeId) -> Option<Send> {
        self.fallbacks.pop_front().map(|to| Send {
            to,
            hint_for: Some(primary),
        })
    }

    /// A replica answered: `ok` if it stored the copy durably.
    pub fn handle_reply(&mut self, from: NodeId, ok: bool, now_ms: u64) -> Vec<Send> {
        let Some(i) = self.copies.iter().position(|c| c.send.to == from) else {
            return Vec::new(); // Not ours: a stale or duplicated reply.
        };
        let copy = self.copies[i];
        let mut sends = Vec::new();
        match (copy.state, ok) {
            (State::Pending { .. } | State::Late, true) => {
                self.copies[i].state = State::Acked;
                self.tally.count(copy.send.hint_for.is_none());
            }
            (State::Pending { .. }, false) => {
                self.copies[i].state = State::Failed;
                sends.extend(self.replace(copy.send, now_ms));
            }
            // A duplicate, or a refusal after we already moved on.
            _ => {}
        }
        self.decide(now_ms);
        sends
    }

    /// A replica is known unreachable (its connection failed): the same as
    /// a refusal.
    pub fn handle_unreachable(&mut self, node: NodeId, now_ms: u64) -> Vec<Send> {
        self.handle_reply(node, false, now_ms)
    }

    /// Advances time: copies past `replica_timeout_ms` are replaced.
    pub fn handle_tick(&mut self, now_ms: u64) -> Vec<Send> {
        let mut sends = Vec::new();
        for i in 0..self.copies.len() {
            if let State::Pending { sent_ms } = self.copies[i].state {
                if now_ms >= sent_ms.saturating_add(self.replica_timeout_ms) {
                    self.copies[i].state = State::Late;
                    let send = self.copies[i].send;
                    sends.extend(self.replace(send, now_ms));
                }
            }
        }
        self.decide(now_ms);
        sends
    }

    /// The copy that failed stood in for a primary; a fallback takes over.
    fn replace(&mut self, failed: Send, now_ms: u64) -> Option<Send> {
        let primary = failed.hint_for.unwrap_or(failed.to);
        let send = self.next_fallback(primary)?;
        self.copies.push(Copy {
            send,
            state: State::Pending { sent_ms: now_ms },
        });
        Some(send)
    }

    /// Copies that may still be acknowledged: pending, or late (a late ack
    /// still counts).
    fn pending(&self) -> (usize, usize) {
        super::may_still_answer(self.copies.iter().map(|c| (&c.send, &c.state)), |state| {
            matches!(state, State::Pending { .. } | State::Late)
        })
    }

    fn decide(&mut self, now_ms: u64) {
        if self.outcome.is_decided() {
            return;
        }
        let (pending, pending_primaries) = self.pending();
        if self.tally.met() {
            self.outcome.decide(Ok(()));
        } else if now_ms >= self.deadline_ms {
            self.outcome.decide(Err(self.tally.timeout()));
        } else if self.tally.lost(pending, pending_primaries) {
            self.outcome.decide(Err(self.tally.unavailable()));
        }
    }

    /// The answer for the client, once, when it is known.
    pub fn poll_outcome(&mut self) -> Option<Result<(), QuorumError>> {
        self.outcome.poll()
    }

    /// True when the round has nothing left to wait for.
    pub fn is_finished(&self, now_ms: u64) -> bool {
        self.outcome.is_decided() && (self.pending().0 == 0 || now_ms >= self.deadline_ms)
    }

    /// When the round gives up on whatever has not answered.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// When the driver should next call [`PutRound::handle_tick`].
    pub fn next_timeout_ms(&self) -> u64 {
        self.copies
            .iter()
            .filter_map(|c| match c.state {
                State::Pending { sent_ms } => Some(sent_ms.saturating_add(self.replica_timeout_ms)),
                _ => None,
            })
            .min()
            .unwrap_or(self.deadline_ms)
            .min(self.deadline_ms)
    }

    /// Primaries that neither acknowledged the version nor had a fallback
    /// take it for them. Once the round is finished, the coordinator keeps
    /// a hint for each (as Cassandra's coordinators do), so a primary that
    /// was down gets the write when it returns even when no fallback node
    /// exists (N equal to the cluster size).
    pub fn unplaced(&self) -> Vec<NodeId> {
        self.others
            .iter()
            .copied()
            .filter(|p| {
                !self
                    .copies
                    .iter()
                    .any(|c| c.state == State::Acked && c.send.hint_for.unwrap_or(c.send.to) == *p)
            })
            .collect()
    }

    /// Copies placed on fallbacks with hints so far.
    pub fn hinted(&self) -> usize {
        self.copies
            .iter()
            .filter(|c| c.send.hint_for.is_some() && c.state == State::Acked)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(down: &[u64]) -> PutPlan {
        PutPlan {
            primaries: vec![NodeId(1), NodeId(2), NodeId(3)],
            fallbacks: vec![NodeId(4), NodeId(5)],
            down: down.iter().map(|d| NodeId(*d)).collect(),
            coordinator: NodeId(1),
            stands_in_for: None,
            quorum: Quorum { total: 2, primaries: 0 },
            replica_timeout_ms: 100,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn answers_after_w_acks_including_its_own() {
        let (mut round, sends) = PutRound::start(&plan(&[]), 0);
        assert_eq!(sends.len(), 2);
        assert!(sends.iter().all(|s| s.hint_for.is_none()));
        assert_eq!(round.poll_outcome(), None);
        round.handle_reply(NodeId(2), true, 5);
        assert_eq!(round.poll_outcome(), Some(Ok(())));
        assert_eq!(round.poll_outcome(), None, "the outcome is given once");
        assert!(!round.is_finished(5), "node 3 is still owed its copy");
        round.handle_reply(NodeId(3), true, 6);
        assert!(round.is_finished(6));
    }

    #[test]
    fn a_down_primary_is_replaced_by_a_fallback_with_a_hint() {
        let (mut round, sends) = PutRound::start(&plan(&[2]), 0);
        assert_eq!(
            sends,
            vec![
                Send {
                    to: NodeId(4),
                    hint_for: Some(NodeId(2))
                },
                Send {
                    to: NodeId(3),
                    hint_for: None
                },
            ]
        );
        round.handle_reply(NodeId(4), true, 1);
        assert_eq!(round.poll_outcome(), Some(Ok(())));
        assert_eq!(round.hinted(), 1);
    }

    #[test]
    fn a_silent_primary_times_out_to_a_fallback_and_a_refusal_to_the_next() {
        let (mut round, _) = PutRound::start(&plan(&[]), 0);
        assert_eq!(round.next_timeout_ms(), 100);
        let sends = round.handle_tick(100);
        assert_eq!(
            sends,
            vec![
                Send {
                    to: NodeId(4),
                    hint_for: Some(NodeId(2))
                },
                Send {
                    to: NodeId(5),
                    hint_for: Some(NodeId(3))
                },
            ]
        );
        let sends = round.handle_reply(NodeId(4), false, 101);
        assert!(sends.is_empty(), "no fallback is left");
        round.handle_reply(NodeId(5), true, 102);
        assert_eq!(round.poll_outcome(), Some(Ok(())));
        assert_eq!(
            round.unplaced(),
            vec![NodeId(2)],
            "node 3's copy is on node 5; node 2's nowhere"
        );
    }

    #[test]
    fn pw_counts_only_primaries_and_fails_when_they_cannot_answer() {
        let mut p = plan(&[2, 3]);
        p.quorum = Quorum { total: 2, primaries: 2 };
        let (mut round, sends) = PutRound::start(&p, 0);
        assert!(sends.iter().all(|s| s.hint_for.is_some()));
        round.handle_reply(NodeId(4), true, 1);
        round.handle_reply(NodeId(5), true, 1);
        let outcome = round.poll_outcome().unwrap().unwrap_err();
        assert!(
            matches!(
                outcome,
                QuorumError::Unavailable {
                    primaries: 1,
                    primaries_needed: 2,
                    ..
                }
            ),
            "{outcome}"
        );
    }

    #[test]
    fn a_fallback_coordinator_stands_in_for_the_first_primary_and_places_the_rest() {
        // Every primary unreachable: node 4 coordinates, holding node 1's
        // copy as a hint; node 5 takes node 2's, and nobody node 3's.
        let mut p = plan(&[1, 2, 3]);
        p.coordinator = NodeId(4);
        p.stands_in_for = Some(NodeId(1));
        let (mut round, sends) = PutRound::start(&p, 0);
        assert_eq!(
            sends,
            vec![Send {
                to: NodeId(5),
                hint_for: Some(NodeId(2))
            }]
        );
        assert_eq!(round.poll_outcome(), None, "its own copy is one of W = 2");
        round.handle_reply(NodeId(5), true, 1);
        assert_eq!(round.poll_outcome(), Some(Ok(())));
        assert_eq!(
            round.unplaced(),
            vec![NodeId(3)],
            "the coordinator keeps node 3's hint too"
        );
        assert!(round.is_finished(1));

        // pw counts primaries only, which a fallback round never reaches.
        p.quorum = Quorum { total: 1, primaries: 1 };
        let (mut round, _) = PutRound::start(&p, 0);
        round.handle_reply(NodeId(5), true, 1);
        assert!(matches!(
            round.poll_outcome(),
            Some(Err(QuorumError::Unavailable { .. }))
        ));
    }

    #[test]
    fn the_deadline_gives_a_timeout() {
        let (mut round, _) = PutRound::start(&plan(&[4, 5]), 0);
        round.handle_tick(1000);
        let err = round.poll_outcome().unwrap().unwrap_err();
        assert!(matches!(err, QuorumError::Timeout { got: 1, needed: 2, .. }), "{err}");
        assert!(round.is_finished(1000));
    }
}
