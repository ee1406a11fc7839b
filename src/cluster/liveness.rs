//! Which peers are down, from when this node last heard from each: one
//! phi-accrual detector per peer (`dynkv_ring::PhiAccrual`), fed each time
//! gossip brings a higher heartbeat of that peer, directly or relayed
//! (`super::heartbeats`). Pure: time is an argument.
//!
//! A peer is tracked from the moment it is known, as if it had just been
//! heard from, so that one that never answers is declared down after the
//! detector's first interval instead of being trusted forever.

use std::collections::BTreeMap;

use dynkv_ring::{NodeId, PhiAccrual, PhiConfig};

pub struct FailureDetector {
    config: PhiConfig,
    peers: BTreeMap<NodeId, PhiAccrual>,
}

impl FailureDetector {
    pub fn new(config: PhiConfig) -> FailureDetector {
        FailureDetector {
            config,
            peers: BTreeMap::new(),
        }
    }

    /// Starts tracking `node` (if it is new) as heard from at `now_ms`.
    pub fn track(&mut self, node: NodeId, now_ms: u64) {
        let config = self.config;
        self.peers.entry(node).or_insert_with(|| {
            let mut detector = PhiAccrual::new(config);
            detector.heartbeat(now_ms);
            detector
        });
    }

    /// Stops tracking nodes not in `known`.
    pub fn retain(&mut self, known: &[NodeId]) {
        self.peers.retain(|node, _| known.contains(node));
    }

    /// `node` answered (or called) at `now_ms`.
    pub fn heard(&mut self, node: NodeId, now_ms: u64) {
        self.track(node, now_ms);
        if let Some(detector) = self.peers.get_mut(&node) {
            detector.heartbeat(now_ms);
        }
    }

    /// Tracked peers whose phi has reached the threshold, in id order.
    pub fn down(&self, now_ms: u64) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, d)| !d.is_available(now_ms))
            .map(|(node, _)| *node)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_goes_down_and_comes_back_when_heard() {
        let mut fd = FailureDetector::new(PhiConfig::default());
        let (a, b) = (NodeId(1), NodeId(2));
        fd.track(a, 0);
        fd.track(b, 0);
        for t in (1_000..=20_000).step_by(1_000) {
            fd.heard(a, t);
            fd.heard(b, t);
        }
        assert!(fd.down(20_500).is_empty());
        // b falls silent.
        for t in (21_000..=40_000).step_by(1_000) {
            fd.heard(a, t);
        }
        assert_eq!(fd.down(40_000), vec![b]);
        fd.heard(b, 40_100);
        assert!(fd.down(40_200).is_empty());
        fd.retain(&[a]);
        assert!(fd.down(1_000_000).contains(&a) && !fd.down(1_000_000).contains(&b));
    }

    #[test]
    fn a_peer_never_heard_from_is_declared_down_in_time() {
        let mut fd = FailureDetector::new(PhiConfig::default());
        fd.track(NodeId(9), 0);
        assert!(fd.down(100).is_empty());
        assert_eq!(fd.down(60_000), vec![NodeId(9)]);
    }
}
