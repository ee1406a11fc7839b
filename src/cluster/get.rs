//! One read's round at its coordinator: ask the healthy replicas, answer
//! once R of them (pr of them primaries) have replied, with the merge of
//! every reply, and work out the read repairs: once every replica has
//! answered (or the deadline passed), each one that answered with less than
//! the merge is owed the merged version.

use dynkv_ring::NodeId;

use super::{Decision, Quorum, QuorumError, Send, Tally};
use crate::version::Clock;

/// What a get round needs to know, fixed at its start.
#[derive(Clone, Debug)]
pub struct GetPlan {
    /// The replicas to ask: up primaries, and fallbacks (with the primary
    /// they stand in for) in place of down ones. May include the
    /// coordinator itself; the driver answers that one locally.
    pub targets: Vec<Send>,
    /// Fallbacks not among the targets, in order: a primary that fails is
    /// replaced by the next one, asked for its hint for that primary.
    pub fallbacks: Vec<NodeId>,
    /// R and pr.
    pub quorum: Quorum,
    pub timeout_ms: u64,
}

#[derive(Debug)]
enum Reply {
    Pending,
    /// The replica's clock for the key (empty if it had none).
    Got(Clock),
    Failed,
}

/// The state of one get at its coordinator.
#[derive(Debug)]
pub struct GetRound {
    tally: Tally,
    deadline_ms: u64,
    replies: Vec<(Send, Reply)>,
    fallbacks: std::collections::VecDeque<NodeId>,
    merged: Clock,
    outcome: Decision<Clock>,
}

impl GetRound {
    /// Starts the round. Returns the reads to send now (every target).
    pub fn start(plan: &GetPlan, now_ms: u64) -> (GetRound, Vec<Send>) {
        assert!(plan.quorum.total >= 1, "R must be at least 1");
        let mut round = GetRound {
            tally: Tally::new(plan.quorum),
            deadline_ms: now_ms.saturating_add(plan.timeout_ms),
            replies: plan.targets.iter().map(|t| (*t, Reply::Pending)).collect(),
            fallbacks: plan
                .fallbacks
                .iter()
                .copied()
                .filter(|f| plan.targets.iter().all(|t| t.to != *f))
                .collect(),
            merged: Clock::new(),
            outcome: Decision::new(),
        };
        round.decide(now_ms);
        (round, plan.targets.clone())
    }

    /// A replica answered with its clock (`Some`, empty if it had nothing),
    /// or failed (`None`). Returns a read to send to a fallback in place of
    /// a primary that failed.
    pub fn handle_reply(&mut self, from: NodeId, reply: Option<Clock>, now_ms: u64) -> Option<Send> {
        let Some(slot) = self.replies.iter_mut().find(|(send, _)| send.to == from) else {
            return None; // Not ours.
        };
        if !matches!(slot.1, Reply::Pending) {
            return None; // A duplicate.
        }
        let mut replacement = None;
        if reply.is_none() && slot.0.hint_for.is_none() && !self.outcome.is_decided() {
            let primary = slot.0.to;
            replacement = self.fallbacks.pop_front().map(|to| Send {
                to,
                hint_for: Some(primary),
            });
        }
        let slot = self
            .replies
            .iter_mut()
            .find(|(send, _)| send.to == from)
            .expect("found above");
        match reply {
            // A fallback that holds no hint for the key knows nothing about
            // it: counting its empty answer toward R could hide a write the
            // unreachable primaries hold.
            Some(clock) if slot.0.hint_for.is_some() && clock.is_empty() => slot.1 = Reply::Failed,
            Some(clock) => {
                self.merged = self.merged.sync(&clock);
                self.tally.count(slot.0.hint_for.is_none());
                slot.1 = Reply::Got(clock);
            }
            None => slot.1 = Reply::Failed,
        }
        if let Some(send) = replacement {
            self.replies.push((send, Reply::Pending));
        }
        self.decide(now_ms);
        replacement
    }

    /// Advances time; past the deadline the round gives up on the rest.
    pub fn handle_tick(&mut self, now_ms: u64) {
        self.decide(now_ms);
    }

    fn pending(&self) -> (usize, usize) {
        super::may_still_answer(self.replies.iter().map(|(s, r)| (s, r)), |r| {
            matches!(r, Reply::Pending)
        })
    }

    fn decide(&mut self, now_ms: u64) {
        if self.outcome.is_decided() {
            return;
        }
        let (pending, pending_primaries) = self.pending();
        if self.tally.met() {
            self.outcome.decide(Ok(self.merged.clone()));
        } else if now_ms >= self.deadline_ms {
            self.outcome.decide(Err(self.tally.timeout()));
        } else if self.tally.lost(pending, pending_primaries) {
            self.outcome.decide(Err(self.tally.unavailable()));
        }
    }

    /// The merged clock for the client (empty if no replica had the key),
    /// once, when the quorum is met or lost.
    pub fn poll_outcome(&mut self) -> Option<Result<Clock, QuorumError>> {
        self.outcome.poll()
    }

    /// True when every replica answered or the deadline passed.
    pub fn is_finished(&self, now_ms: u64) -> bool {
        self.outcome.is_decided() && (self.pending().0 == 0 || now_ms >= self.deadline_ms)
    }

    pub fn next_timeout_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// The merge of every reply so far.
    pub fn merged(&self) -> &Clock {
        &self.merged
    }

    /// Read repair: the replicas that answered with less than the merge.
    /// Call when the round is finished; they should get [`GetRound::merged`].
    pub fn repairs(&self) -> Vec<Send> {
        self.repairs_except_absent(false)
    }

    /// [`GetRound::repairs`], leaving out replicas that answered without
    /// the key when `skip_absent`: the coordinator passes it for a delete
    /// old enough to be reaped, which such a replica may already have
    /// reaped (absent reads as deleted, so it lacks nothing).
    pub fn repairs_except_absent(&self, skip_absent: bool) -> Vec<Send> {
        self.replies
            .iter()
            .filter_map(|(send, reply)| match reply {
                Reply::Got(clock) if skip_absent && clock.is_empty() => None,
                Reply::Got(clock) if *clock != self.merged => Some(*send),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Sibling, VersionLimits};

    fn plan(targets: Vec<Send>, fallbacks: Vec<NodeId>, total: usize, primaries: usize) -> GetPlan {
        GetPlan {
            targets,
            fallbacks,
            quorum: Quorum { total, primaries },
            timeout_ms: 100,
        }
    }

    fn targets() -> Vec<Send> {
        (1..=3)
            .map(|n| Send {
                to: NodeId(n),
                hint_for: None,
            })
            .collect()
    }

    fn clock(node: u64, value: &str) -> Clock {
        let s = Sibling {
            timestamp_ms: 0,
            value: Some(bytes::Bytes::copy_from_slice(value.as_bytes())),
        };
        Clock::new()
            .update(None, NodeId(node), s, VersionLimits::default())
            .unwrap()
    }

    #[test]
    fn merges_r_replies_and_repairs_the_stale_ones() {
        let plan = plan(targets(), Vec::new(), 2, 0);
        let (mut round, sends) = GetRound::start(&plan, 0);
        assert_eq!(sends.len(), 3);
        let newer = clock(1, "a");
        round.handle_reply(NodeId(1), Some(newer.clone()), 1);
        assert_eq!(round.poll_outcome(), None);
        round.handle_reply(NodeId(2), Some(Clock::new()), 2);
        assert_eq!(round.poll_outcome(), Some(Ok(newer.clone())));
        assert!(!round.is_finished(2));
        round.handle_reply(NodeId(3), Some(newer), 3);
        assert!(round.is_finished(3));
        assert_eq!(
            round.repairs(),
            vec![Send {
                to: NodeId(2),
                hint_for: None
            }]
        );
    }

    #[test]
    fn concurrent_replies_become_siblings() {
        let plan = plan(targets(), Vec::new(), 2, 0);
        let (mut round, _) = GetRound::start(&plan, 0);
        round.handle_reply(NodeId(1), Some(clock(1, "a")), 1);
        round.handle_reply(NodeId(2), Some(clock(2, "b")), 1);
        let merged = round.poll_outcome().unwrap().unwrap();
        assert_eq!(merged.sibling_count(), 2);
    }

    #[test]
    fn failures_that_leave_too_few_replies_end_the_round_early() {
        let plan = plan(targets(), Vec::new(), 2, 0);
        let (mut round, _) = GetRound::start(&plan, 0);
        round.handle_reply(NodeId(1), None, 1);
        round.handle_reply(NodeId(2), None, 1);
        assert!(matches!(
            round.poll_outcome(),
            Some(Err(QuorumError::Unavailable { .. }))
        ));
    }

    #[test]
    fn pr_ignores_fallback_replies() {
        let mut t = targets();
        t[1].hint_for = Some(NodeId(9));
        t[2].hint_for = Some(NodeId(8));
        let plan = plan(t, Vec::new(), 2, 2);
        let (mut round, _) = GetRound::start(&plan, 0);
        assert!(matches!(
            round.poll_outcome(),
            Some(Err(QuorumError::Unavailable { .. }))
        ));
    }

    #[test]
    fn an_empty_fallback_does_not_count_toward_r() {
        let mut t = targets();
        t[2].hint_for = Some(NodeId(9));
        let plan = plan(t, Vec::new(), 2, 0);
        let (mut round, _) = GetRound::start(&plan, 0);
        round.handle_reply(NodeId(1), Some(Clock::new()), 1);
        round.handle_reply(NodeId(3), Some(Clock::new()), 1);
        assert_eq!(
            round.poll_outcome(),
            None,
            "one primary and an empty fallback are not R = 2"
        );
        round.handle_reply(NodeId(2), Some(clock(2, "b")), 2);
        assert_eq!(round.poll_outcome().unwrap().unwrap().sibling_count(), 1);
    }

    #[test]
    fn a_failed_primary_is_replaced_by_a_fallback_holding_its_hint() {
        let plan = plan(targets(), vec![NodeId(4)], 2, 0);
        let (mut round, _) = GetRound::start(&plan, 0);
        round.handle_reply(NodeId(1), Some(clock(1, "a")), 1);
        let next = round.handle_reply(NodeId(2), None, 1);
        assert_eq!(
            next,
            Some(Send {
                to: NodeId(4),
                hint_for: Some(NodeId(2))
            })
        );
        assert_eq!(round.handle_reply(NodeId(3), None, 1), None, "no fallback is left");
        assert_eq!(round.poll_outcome(), None, "the fallback may still answer");
        round.handle_reply(NodeId(4), Some(clock(4, "hinted")), 2);
        assert_eq!(round.poll_outcome().unwrap().unwrap().sibling_count(), 2);
    }

    #[test]
    fn silence_until_the_deadline_is_a_timeout() {
        let plan = plan(targets(), Vec::new(), 2, 0);
        let (mut round, _) = GetRound::start(&plan, 0);
        round.handle_tick(99);
        assert_eq!(round.poll_outcome(), None);
        round.handle_tick(100);
        assert!(matches!(
            round.poll_outcome(),
            Some(Err(QuorumError::Timeout { got: 0, .. }))
        ));
        assert!(round.is_finished(100));
    }
}
