//! Membership merge is a join-semilattice; death rumours can be refuted;
//! phi rises with silence; preference lists skip down nodes.

use dynkv_ring::{
    claim, ClaimNode, Lifecycle, Liveness, Membership, NodeId, NodeRecord, PartitionCount, PhiAccrual, PhiConfig,
    PreferenceList, RingError, ZoneId,
};
use proptest::prelude::*;

fn record_strategy() -> impl Strategy<Value = NodeRecord> {
    (0u64..6, 0u64..4, 0u8..4, 0u8..3, 0u16..3, 1u32..4).prop_map(|(id, inc, life, live, port, weight)| NodeRecord {
        id: NodeId(id),
        incarnation: inc,
        lifecycle: [Lifecycle::Joining, Lifecycle::Up, Lifecycle::Leaving, Lifecycle::Left][life as usize],
        liveness: [Liveness::Alive, Liveness::Suspect, Liveness::Dead][live as usize],
        address: format!("127.0.0.{}:7700", id + 1),
        shard_ports: vec![7600 + port; 1 + port as usize],
        weight,
        zone: ZoneId(0),
    })
}

fn membership_strategy() -> impl Strategy<Value = Membership> {
    proptest::collection::vec(record_strategy(), 0..8).prop_map(|records| {
        let mut m = Membership::default();
        for r in records {
            m.merge_record(r);
        }
        m
    })
}

fn merged(a: &Membership, b: &Membership) -> Membership {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    #[test]
    fn encoding_round_trips_and_truncation_is_an_error(a in membership_strategy()) {
        let bytes = a.encode();
        prop_assert_eq!(&Membership::decode(&bytes).unwrap(), &a);
        for cut in 0..bytes.len() {
            prop_assert!(Membership::decode(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Membership::decode(&bytes);
    }

    #[test]
    fn merge_is_commutative(a in membership_strategy(), b in membership_strategy()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a), "a = {:?}\nb = {:?}", a, b);
    }

    #[test]
    fn merge_is_associative(a in membership_strategy(), b in membership_strategy(), c in membership_strategy()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent_and_digests_agree(a in membership_strategy(), b in membership_strategy()) {
        let ab = merged(&a, &b);
        prop_assert_eq!(merged(&ab, &ab), ab.clone());
        prop_assert_eq!(merged(&ab, &a), ab.clone(), "merging what is already included changes nothing");
        prop_assert_eq!(merged(&a, &b).digest(), merged(&b, &a).digest());
    }
}

fn up(id: u64) -> NodeRecord {
    NodeRecord {
        id: NodeId(id),
        incarnation: 1,
        lifecycle: Lifecycle::Up,
        liveness: Liveness::Alive,
        address: format!("127.0.0.{id}:7700"),
        shard_ports: vec![7600, 7601],
        weight: 2,
        zone: ZoneId(0),
    }
}

#[test]
fn a_node_refutes_a_rumour_of_its_death_by_raising_its_incarnation() {
    let mut mine = Membership::default();
    mine.insert(up(1)).unwrap();
    let mut theirs = mine.clone();
    assert!(theirs.suspect(NodeId(1), 1, Liveness::Dead));
    mine.merge(&theirs);
    assert_eq!(
        mine.get(NodeId(1)).unwrap().liveness,
        Liveness::Dead,
        "the rumour spreads"
    );
    let incarnation = mine.refute(NodeId(1)).unwrap();
    assert_eq!(incarnation, 2);
    theirs.merge(&mine);
    let seen = theirs.get(NodeId(1)).unwrap();
    assert_eq!(
        (seen.incarnation, seen.liveness),
        (2, Liveness::Alive),
        "the refutation wins everywhere"
    );
    assert!(
        !theirs.suspect(NodeId(1), 1, Liveness::Dead),
        "a stale rumour has no effect"
    );
    assert_eq!(mine.digest(), theirs.digest());
}

#[test]
fn left_is_terminal() {
    let mut m = Membership::default();
    m.insert(up(3)).unwrap();
    let mut gone = up(3);
    gone.lifecycle = Lifecycle::Left;
    m.merge_record(gone);
    let mut late = up(3);
    late.incarnation = 99;
    assert!(
        !m.merge_record(late),
        "a higher incarnation cannot resurrect a node that left"
    );
    assert_eq!(m.refute(NodeId(3)), None);
    assert!(m.placement_nodes().is_empty());
}

#[test]
fn a_duplicate_node_id_with_another_address_is_an_error() {
    let mut m = Membership::default();
    m.insert(up(4)).unwrap();
    let mut other = up(4);
    other.address = "127.0.0.99:7700".into();
    let err = m.insert(other).unwrap_err();
    assert!(matches!(err, RingError::DuplicateNode { .. }));
    assert!(err.to_string().contains("127.0.0.99:7700"), "{err}");
}

#[test]
fn phi_rises_with_silence_and_stays_low_with_regular_heartbeats() {
    let mut detector = PhiAccrual::new(PhiConfig::default());
    assert_eq!(detector.phi(0), 0.0, "no heartbeat yet, no suspicion");
    let mut now = 0;
    for _ in 0..50 {
        now += 1000;
        detector.heartbeat(now);
    }
    assert!(detector.phi(now + 500) < 1.0, "on time: {}", detector.phi(now + 500));
    assert!(detector.is_available(now + 1000));
    let mut last = 0.0;
    for silence in (1000..=20_000).step_by(1000) {
        let phi = detector.phi(now + silence);
        assert!(
            phi >= last,
            "phi must not fall as silence grows ({silence} ms: {phi} < {last})"
        );
        last = phi;
    }
    assert!(
        !detector.is_available(now + 20_000),
        "20 s of silence is a failure: phi {last}"
    );
    detector.heartbeat(now - 10);
    assert!(!detector.is_available(now + 20_000), "a stale heartbeat is ignored");
    detector.heartbeat(now + 20_000);
    assert!(detector.is_available(now + 20_500), "a heartbeat restores availability");
}

#[test]
fn phi_window_is_bounded() {
    let config = PhiConfig {
        window: 10,
        ..PhiConfig::default()
    };
    let mut detector = PhiAccrual::new(config);
    let mut now = 0;
    // Slow heartbeats, then fast ones: only the last 10 intervals count.
    for _ in 0..100 {
        now += 5000;
        detector.heartbeat(now);
    }
    for _ in 0..10 {
        now += 100;
        detector.heartbeat(now);
    }
    assert!(
        detector.phi(now + 4000) > PhiConfig::default().threshold,
        "old slow samples were forgotten"
    );
}

#[test]
fn preference_lists_give_distinct_healthy_fallbacks_deterministically() {
    let nodes: Vec<ClaimNode> = (1..=8).map(|i| ClaimNode::new(i, 2)).collect();
    let table = claim(None, &nodes, PartitionCount::default(), 3).unwrap();
    let down = |id: NodeId| id == table.owners(10)[0].node;
    let list = PreferenceList::new(&table, 10, down, 3);
    assert_eq!(list.primaries, table.owners(10));
    assert_eq!(list.fallbacks.len(), 3);
    for f in &list.fallbacks {
        assert!(!down(f.node), "a down node is never a fallback");
        assert!(
            !list.primaries.iter().any(|p| p.node == f.node),
            "fallbacks are not primaries"
        );
    }
    let mut ids: Vec<NodeId> = list.fallbacks.iter().map(|f| f.node).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "fallbacks are distinct");
    assert_eq!(list, PreferenceList::new(&table, 10, down, 3), "deterministic");
    let targets = list.healthy_targets(down);
    assert_eq!(targets.len(), 3);
    assert_eq!(
        targets[2], list.fallbacks[0],
        "the first fallback replaces the down primary"
    );
}
