//! Heartbeats that travel with gossip, and the choice of gossip peers.
//!
//! Each node raises its own beat once per gossip round. Every exchange
//! carries the sender's whole table of beats, and each side keeps the
//! highest beat it has seen per node; a node whose beat rose was alive a
//! moment ago, whoever relayed the news. So a round may contact only a few
//! random peers (Dynamo's gossip) and every node still hears of every
//! other about once a round, which is what the failure detector needs.
//! Pure: time and randomness are arguments.

use std::collections::BTreeMap;

use dynkv_ring::NodeId;

/// Most entries a table on the wire may hold (the largest membership it
/// can describe).
pub const HEARTBEAT_NODES_MAX: usize = 4096;

/// A table as it travels: (node, beat) pairs.
pub type BeatTable = Vec<(NodeId, u64)>;

/// The highest beat known per node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeats {
    beats: BTreeMap<NodeId, u64>,
}

impl Heartbeats {
    /// Raises `me`'s beat for a new round and returns it: past its last
    /// one, and at least `now_unix_ms`, so that the beats of a restarted
    /// node pass those it sent before (unless its clock went back).
    pub fn beat(&mut self, me: NodeId, now_unix_ms: u64) -> u64 {
        let beat = self.beats.get(&me).map_or(0, |b| b.saturating_add(1)).max(now_unix_ms);
        self.beats.insert(me, beat);
        beat
    }

    /// The highest beat known of `node`.
    pub fn get(&self, node: NodeId) -> Option<u64> {
        self.beats.get(&node).copied()
    }

    /// Appends the table: `count u16 | (node u64, beat u64) * count`, all
    /// little-endian, `me` first and then by node id, at most
    /// [`HEARTBEAT_NODES_MAX`] entries.
    pub fn encode(&self, me: NodeId, out: &mut Vec<u8>) {
        let mine = self.beats.get(&me).map(|b| (me, *b));
        let entries: Vec<(NodeId, u64)> = mine
            .into_iter()
            .chain(self.beats.iter().filter(|(n, _)| **n != me).map(|(n, b)| (*n, *b)))
            .take(HEARTBEAT_NODES_MAX)
            .collect();
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (node, beat) in entries {
            out.extend_from_slice(&node.0.to_le_bytes());
            out.extend_from_slice(&beat.to_le_bytes());
        }
    }

    /// Reads a table from the front of `bytes`; returns it and the rest.
    pub fn decode(bytes: &[u8]) -> Result<(BeatTable, &[u8]), String> {
        let count = bytes
            .get(..2)
            .map(|c| u16::from_le_bytes(c.try_into().expect("2 bytes")) as usize)
            .ok_or("a heartbeat table starts with a u16 count")?;
        if count > HEARTBEAT_NODES_MAX {
            return Err(format!(
                "a heartbeat table of {count} entries (at most {HEARTBEAT_NODES_MAX})"
            ));
        }
        let end = 2 + count * 16;
        let body = bytes
            .get(2..end)
            .ok_or_else(|| format!("a heartbeat table of {count} entries is cut short"))?;
        let entries = body
            .chunks_exact(16)
            .map(|e| {
                let node = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
                let beat = u64::from_le_bytes(e[8..].try_into().expect("8 bytes"));
                (NodeId(node), beat)
            })
            .collect();
        Ok((entries, &bytes[end..]))
    }

    /// Takes a peer's table, keeping the highest beat per node among those
    /// `known` accepts. Beats above `beat_max` (the receiver's clock plus
    /// the clock skew allowed) are ignored: one absurd beat, relayed
    /// everywhere, would otherwise leave its node unable to raise its beat
    /// again, and held down for good. Returns the nodes other than `me`
    /// whose beat rose: they were heard from.
    pub fn merge(
        &mut self,
        incoming: &[(NodeId, u64)],
        me: NodeId,
        beat_max: u64,
        known: impl Fn(NodeId) -> bool,
    ) -> Vec<NodeId> {
        let mut heard = Vec::new();
        for &(node, beat) in incoming {
            if beat > beat_max || !known(node) {
                continue;
            }
            let held = self.beats.entry(node).or_insert(0);
            if beat > *held {
                *held = beat;
                if node != me {
                    heard.push(node);
                }
            }
        }
        heard
    }

    /// Forgets nodes `known` rejects.
    pub fn retain(&mut self, known: impl Fn(NodeId) -> bool) {
        self.beats.retain(|node, _| known(*node));
    }
}

/// The members a gossip round contacts: `fanout` chosen at random among
/// those not held down, and one among those held down (so that a node that
/// returns is reached even before it reaches out). Contacting held-down
/// members in place of live ones would thin out the heartbeats the live
/// ones get, and bring false downs when many members are away.
pub fn gossip_peers(
    peers: &[NodeId],
    is_down: impl Fn(NodeId) -> bool,
    fanout: usize,
    mut random: impl FnMut() -> u64,
) -> Vec<NodeId> {
    let (down, up): (Vec<NodeId>, Vec<NodeId>) = peers.iter().partition(|p| is_down(**p));
    let mut chosen = choose_peers(&up, fanout, &mut random);
    chosen.extend(choose_peers(&down, 1, &mut random));
    chosen
}

/// Up to `fanout` distinct peers of `peers`, chosen uniformly; `random`
/// gives a fresh random number per pick.
pub fn choose_peers(peers: &[NodeId], fanout: usize, mut random: impl FnMut() -> u64) -> Vec<NodeId> {
    let mut pool = peers.to_vec();
    let picks = fanout.min(pool.len());
    // A partial Fisher-Yates shuffle: the first `picks` slots.
    for i in 0..picks {
        let j = i + (random() % (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(picks);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_rise_every_round_and_pass_a_restarted_nodes_old_ones() {
        let mut hb = Heartbeats::default();
        let me = NodeId(1);
        assert_eq!(hb.beat(me, 1_000), 1_000);
        assert_eq!(hb.beat(me, 1_000), 1_001, "a stalled clock still raises the beat");
        assert_eq!(hb.beat(me, 5_000), 5_000);
        // A restart begins from the clock, past what it sent before.
        let mut restarted = Heartbeats::default();
        assert!(restarted.beat(me, 9_000) > hb.get(me).unwrap());
    }

    #[test]
    fn a_merge_keeps_the_highest_beats_and_reports_who_was_heard() {
        let (me, a, b, stranger) = (NodeId(1), NodeId(2), NodeId(3), NodeId(9));
        let known = |n: NodeId| n != stranger;
        let mut hb = Heartbeats::default();
        hb.beat(me, 100);
        let heard = hb.merge(&[(a, 10), (b, 20), (stranger, 5), (me, 50)], me, u64::MAX, known);
        assert_eq!(heard, vec![a, b], "me and strangers are never heard of");
        assert_eq!(hb.get(stranger), None);
        assert_eq!(
            hb.merge(&[(a, 10), (b, 19)], me, u64::MAX, known),
            Vec::<NodeId>::new(),
            "nothing rose"
        );
        assert_eq!(hb.merge(&[(b, 21)], me, u64::MAX, known), vec![b]);
        assert_eq!(hb.get(b), Some(21));
        assert_eq!(hb.get(me), Some(100), "a lower report of my own beat is ignored");
        hb.merge(&[(me, 500)], me, u64::MAX, known);
        assert!(
            hb.merge(&[(b, 1_000_000)], me, 900_000, known).is_empty(),
            "a beat past the limit is ignored"
        );
        assert_eq!(hb.get(b), Some(21));
        assert!(hb.beat(me, 0) > 500, "my next beat passes any reported for me");
        hb.retain(|n| n != a);
        assert_eq!(hb.get(a), None);
    }

    #[test]
    fn tables_round_trip_with_mine_first_and_bad_ones_are_refused() {
        let me = NodeId(7);
        let mut hb = Heartbeats::default();
        hb.merge(&[(NodeId(2), 20), (NodeId(9), 90)], me, u64::MAX, |_| true);
        hb.beat(me, 70);
        let mut bytes = Vec::new();
        hb.encode(me, &mut bytes);
        bytes.extend_from_slice(b"rest");
        let (entries, rest) = Heartbeats::decode(&bytes).unwrap();
        assert_eq!(entries, vec![(me, 70), (NodeId(2), 20), (NodeId(9), 90)]);
        assert_eq!(rest, b"rest");
        assert!(Heartbeats::decode(&[]).is_err());
        assert!(Heartbeats::decode(&bytes[..bytes.len() - 10]).is_err(), "cut short");
        let too_many = ((HEARTBEAT_NODES_MAX + 1) as u16).to_le_bytes();
        assert!(Heartbeats::decode(&too_many).is_err());
    }

    /// Seeded: `nodes` nodes, each gossiping a round (1 s, with up to 100 ms
    /// of jitter) with the peers `gossip_peers` picks, exchanging heartbeat
    /// tables both ways, each feeding its failure detector. The last `dead`
    /// nodes never run. Node 0 dies at 120 s and restarts at 180 s, empty
    /// and with its clock 30 s behind; the run ends at 240 s. Returns the
    /// largest number of live nodes any live node held down after a warm-up
    /// (a cluster starting all at once spreads its first beats over a few
    /// rounds); how long after node 0 died each other node took to hold it
    /// down; and how long after it came back each took to hold it up.
    const WARM_UP_MS: u64 = 10_000;

    fn simulate(nodes: u64, dead: u64, fanout: usize, seed: u64) -> (usize, Vec<u64>, Vec<u64>) {
        use crate::cluster::liveness::FailureDetector;
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let ids: Vec<NodeId> = (0..nodes).map(NodeId).collect();
        let mut beats: Vec<Heartbeats> = vec![Heartbeats::default(); nodes as usize];
        let mut detectors: Vec<FailureDetector> = (0..nodes)
            .map(|_| FailureDetector::new(dynkv_ring::PhiConfig::default()))
            .collect();
        for d in &mut detectors {
            for id in &ids {
                d.track(*id, 0);
            }
        }
        let mut next_round: Vec<u64> = (0..nodes).map(|_| random() % 1_000).collect();
        let (died_ms, back_ms, end_ms) = (120_000, 180_000, 240_000);
        let mut false_down = 0;
        let mut detected = vec![None; nodes as usize];
        let mut recovered = vec![None; nodes as usize];
        let mut now = 0;
        while now < end_ms {
            // The next round, the next check (every 250 ms), or node 0's
            // restart, whichever comes first.
            let next_check = (now / 250 + 1) * 250;
            let restart = if now < back_ms { back_ms } else { u64::MAX };
            now = next_round.iter().copied().min().unwrap().min(next_check).min(restart);
            let running = |i: usize| i < (nodes - dead) as usize;
            let alive = |i: usize| running(i) && (i != 0 || !(died_ms..back_ms).contains(&now));
            if now == back_ms {
                // Node 0 restarts: no table, a fresh detector.
                beats[0] = Heartbeats::default();
                detectors[0] = FailureDetector::new(dynkv_ring::PhiConfig::default());
                for id in &ids {
                    detectors[0].track(*id, now);
                }
            }
            for i in 0..nodes as usize {
                if next_round[i] != now {
                    continue;
                }
                next_round[i] = now + 1_000 + random() % 100;
                if !alive(i) {
                    continue;
                }
                let clock = if i == 0 && now >= back_ms { now - 30_000 } else { now };
                beats[i].beat(ids[i], clock);
                let others: Vec<NodeId> = ids.iter().copied().filter(|n| *n != ids[i]).collect();
                let down = detectors[i].down(now);
                for peer in gossip_peers(&others, |n| down.contains(&n), fanout, &mut random) {
                    let j = peer.0 as usize;
                    if !alive(j) {
                        continue; // No answer: nothing is learned either way.
                    }
                    let mut table = Vec::new();
                    beats[i].encode(ids[i], &mut table);
                    let (theirs, _) = Heartbeats::decode(&table).unwrap();
                    for node in beats[j].merge(&theirs, ids[j], now + 60_000, |_| true) {
                        detectors[j].heard(node, now);
                    }
                    table.clear();
                    beats[j].encode(ids[j], &mut table);
                    let (theirs, _) = Heartbeats::decode(&table).unwrap();
                    for node in beats[i].merge(&theirs, ids[i], now + 60_000, |_| true) {
                        detectors[i].heard(node, now);
                    }
                }
            }
            if now % 250 != 0 {
                continue;
            }
            for i in (0..nodes as usize).filter(|i| alive(*i)) {
                let down = detectors[i].down(now);
                // Node 0 is counted by the detection and recovery times.
                let live_down = down
                    .iter()
                    .filter(|n| n.0 != 0 && **n != ids[i] && running(n.0 as usize))
                    .count();
                if now >= WARM_UP_MS {
                    false_down = false_down.max(live_down);
                }
                let zero_down = down.contains(&ids[0]);
                if i == 0 {
                    continue;
                }
                if (died_ms..back_ms).contains(&now) && zero_down && detected[i].is_none() {
                    detected[i] = Some(now - died_ms);
                }
                if now >= back_ms && !zero_down && recovered[i].is_none() {
                    recovered[i] = Some(now - back_ms);
                }
            }
        }
        let never = u64::MAX;
        let live = 1..(nodes - dead) as usize;
        let detected = detected[live.clone()].iter().map(|d| d.unwrap_or(never)).collect();
        let recovered = recovered[live].iter().map(|d| d.unwrap_or(never)).collect();
        (false_down, detected, recovered)
    }

    #[test]
    fn gossip_with_a_few_random_peers_keeps_every_node_heard_and_finds_a_dead_one() {
        // A third of the 64 never running: live nodes must not gossip
        // with them in place of each other.
        for (nodes, dead, fanout) in [(5, 0, 3), (20, 0, 3), (64, 0, 3), (64, 21, 3)] {
            for seed in 1..=3 {
                let (false_down, detected, recovered) = simulate(nodes, dead, fanout, seed);
                let case = format!("{nodes} nodes ({dead} dead), fanout {fanout}, seed {seed}");
                assert_eq!(false_down, 0, "{case}: a live node was held down");
                let slowest = detected.iter().max().unwrap();
                assert!(*slowest <= 20_000, "{case}: detection took {detected:?} ms");
                let slowest = recovered.iter().max().unwrap();
                assert!(*slowest <= 10_000, "{case}: recovery took {recovered:?} ms");
            }
        }
    }

    #[test]
    fn peers_are_chosen_distinct_uniformly_and_at_most_fanout() {
        let peers: Vec<NodeId> = (1..=10).map(NodeId).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut counts = [0u32; 10];
        for _ in 0..3_000 {
            let chosen = choose_peers(&peers, 3, &mut random);
            assert_eq!(chosen.len(), 3);
            let mut sorted = chosen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "distinct: {chosen:?}");
            for node in chosen {
                counts[(node.0 - 1) as usize] += 1;
            }
        }
        // Each peer is picked 900 times on average.
        assert!(counts.iter().all(|c| (750..=1050).contains(c)), "{counts:?}");
        assert_eq!(
            choose_peers(&peers[..2], 3, &mut random).len(),
            2,
            "fewer peers than fanout"
        );
        assert!(choose_peers(&[], 3, &mut random).is_empty());
    }
}
