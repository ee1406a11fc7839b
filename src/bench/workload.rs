//! What a benchmark asks for, as pure logic: the operation mix (YCSB's
//! workloads A, B, C, D, F, or a custom mix), which key each operation
//! touches (uniform, zipfian, or latest), and value sizes. Deterministic
//! for a seed, so two runs ask the same questions.

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Zipf};

/// One operation a worker performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum OpKind {
    Read,
    /// Overwrites an existing key (supersedes what its coordinator holds).
    Update,
    /// Writes a key past the loaded ones.
    Insert,
    Delete,
    /// Reads a key, then writes it back with the read's context.
    ReadModifyWrite,
}

impl OpKind {
    pub(crate) const COUNT: usize = 5;
    pub(crate) const ALL: [OpKind; OpKind::COUNT] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Delete,
        OpKind::ReadModifyWrite,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Delete => "delete",
            OpKind::ReadModifyWrite => "read-modify-write",
        }
    }
}

/// Relative weights of each operation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Mix {
    weights: [u32; 5],
}

impl Mix {
    /// `read, update, insert, delete, read-modify-write` weights.
    pub(crate) fn new(weights: [u32; 5]) -> Result<Mix, String> {
        if weights.iter().all(|w| *w == 0) {
            return Err("the operation mix is empty: give at least one positive ratio".into());
        }
        if weights.iter().map(|w| u64::from(*w)).sum::<u64>() > u64::from(u32::MAX) {
            return Err("the operation ratios are too large".into());
        }
        Ok(Mix { weights })
    }

    pub(crate) fn pick(&self, rng: &mut impl Rng) -> OpKind {
        let total: u32 = self.weights.iter().sum();
        let mut roll = rng.random_range(0..total);
        for (kind, weight) in OpKind::ALL.iter().zip(self.weights) {
            if roll < weight {
                return *kind;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }
}

/// Which keys operations touch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum KeyChoice {
    Uniform,
    /// Popular keys, by YCSB's zipfian constant `theta` (0.99 by default).
    Zipfian {
        theta: f64,
    },
    /// Recently inserted keys are the most popular (zipfian over recency).
    Latest {
        theta: f64,
    },
}

/// Zipfian ranks, 0 the most popular.
enum Skew {
    /// `0 < theta < 1` (YCSB's range; its default is 0.99).
    Ycsb(YcsbZipfian),
    /// Any other theta: an exact sampler, about three times the cost.
    Exact(Zipf<f64>),
}

impl Skew {
    fn rank(&self, rng: &mut impl Rng) -> u64 {
        match self {
            Skew::Ycsb(zipfian) => zipfian.rank(rng.random::<f64>()),
            Skew::Exact(zipf) => zipf.sample(rng) as u64 - 1,
        }
    }
}

/// YCSB's zipfian generator, after Gray et al., "Quickly generating
/// billion-record synthetic databases" (SIGMOD 1994): one `powf` a draw
/// (the exact rejection sampler needs about three, and was a tenth of a
/// load thread's CPU), with YCSB's formulas (its `ZipfianGenerator`; the
/// scrambled variant YCSB uses by default draws over a fixed 10^10 items,
/// where this one draws over the run's keys and then scrambles them).
struct YcsbZipfian {
    items: f64,
    zetan: f64,
    alpha: f64,
    eta: f64,
    /// 1 + 0.5^theta: below this (times zetan), the draw is rank 1.
    rank1_below: f64,
}

impl YcsbZipfian {
    fn new(items: u64, theta: f64) -> YcsbZipfian {
        assert!(theta > 0.0 && theta < 1.0 && items > 0, "checked by KeyChooser::new");
        let n = items as f64;
        let zetan = zeta(items, theta);
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        YcsbZipfian {
            items: n,
            zetan,
            alpha: 1.0 / (1.0 - theta),
            eta: (1.0 - (2.0 / n).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
            rank1_below: zeta2,
        }
    }

    /// The rank for the uniform draw `u` in `[0, 1)`.
    fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.rank1_below {
            return 1;
        }
        let rank = self.items * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (rank as u64).min(self.items as u64 - 1)
    }
}

/// The generalized harmonic number: the sum of 1 / i^theta for i in
/// 1..=n. The first million terms are summed; past them the sum of a
/// smooth decreasing function is its integral over the half-open steps
/// (midpoint rule, relative error far below a draw's resolution), so that
/// a billion keys do not take a billion `powf`s to set up.
fn zeta(n: u64, theta: f64) -> f64 {
    const EXACT_TERMS: u64 = 1 << 20;
    let exact: f64 = (1..=n.min(EXACT_TERMS)).map(|i| (i as f64).powf(-theta)).sum();
    if n <= EXACT_TERMS {
        return exact;
    }
    let antiderivative = |x: f64| x.powf(1.0 - theta) / (1.0 - theta);
    exact + antiderivative(n as f64 + 0.5) - antiderivative(EXACT_TERMS as f64 + 0.5)
}

/// Picks key indexes in `0..key_count` (or below the newest insert).
pub(crate) struct KeyChooser {
    choice: KeyChoice,
    skew: Option<Skew>,
}

impl KeyChooser {
    pub(crate) fn new(choice: KeyChoice, key_count: u64) -> Result<KeyChooser, String> {
        if key_count == 0 {
            return Err("the key count must be positive".into());
        }
        let skew = match choice {
            KeyChoice::Uniform => None,
            KeyChoice::Zipfian { theta } | KeyChoice::Latest { theta } => {
                if !(theta > 0.0 && theta.is_finite()) {
                    return Err(format!("zipfian theta {theta} must be a positive number"));
                }
                Some(if theta < 1.0 {
                    Skew::Ycsb(YcsbZipfian::new(key_count, theta))
                } else {
                    let zipf = Zipf::new(key_count as f64, theta);
                    Skew::Exact(zipf.map_err(|e| format!("zipfian over {key_count} keys: {e}"))?)
                })
            }
        };
        Ok(KeyChooser { choice, skew })
    }

    /// A key index; `newest` is one past the newest key written so far.
    pub(crate) fn pick(&self, rng: &mut impl Rng, newest: u64) -> u64 {
        let newest = newest.max(1);
        match (self.choice, &self.skew) {
            (KeyChoice::Uniform, _) => rng.random_range(0..newest),
            // Rank 0 is the most popular; spread ranks over the key space
            // with a fixed permutation, as YCSB's scrambled zipfian does,
            // so that popular keys are not neighbours.
            (KeyChoice::Zipfian { .. }, Some(skew)) => {
                let rank = skew.rank(rng);
                xxhash_rust::xxh3::xxh3_64(&rank.to_le_bytes()) % newest
            }
            (KeyChoice::Latest { .. }, Some(skew)) => {
                let back = skew.rank(rng);
                newest - 1 - back.min(newest - 1)
            }
            (_, None) => unreachable!("zipfian choices carry their distribution"),
        }
    }
}

/// The key of an index, `user` and at least 12 decimal digits
/// (`user000000000042`), as YCSB names its keys. Built on the stack: the
/// load generator makes one per operation.
pub(crate) struct KeyName {
    bytes: [u8; KeyName::BYTES_MAX],
    len: usize,
}

impl KeyName {
    const PREFIX: &'static [u8] = b"user";
    const DIGITS_MIN: usize = 12;
    /// The prefix and the 20 digits of `u64::MAX`.
    const BYTES_MAX: usize = 4 + 20;

    pub(crate) fn of(index: u64) -> KeyName {
        let mut digits = [b'0'; 20];
        let mut at = digits.len();
        let mut rest = index;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let first = at.min(digits.len() - Self::DIGITS_MIN);
        let mut bytes = [0u8; Self::BYTES_MAX];
        let len = Self::PREFIX.len() + digits.len() - first;
        bytes[..Self::PREFIX.len()].copy_from_slice(Self::PREFIX);
        bytes[Self::PREFIX.len()..len].copy_from_slice(&digits[first..]);
        KeyName { bytes, len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Value sizes: fixed, or uniform in an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ValueSize {
    pub(crate) min_bytes: usize,
    pub(crate) max_bytes: usize,
}

impl ValueSize {
    /// Parses `100` or `100..1000`.
    pub(crate) fn parse(text: &str) -> Result<ValueSize, String> {
        let bad = || format!("value size {text:?}: give bytes (100) or an inclusive range (100..1000)");
        let (min, max) = match text.split_once("..") {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let n = text.trim().parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if min > max || max == 0 {
            return Err(bad());
        }
        Ok(ValueSize {
            min_bytes: min,
            max_bytes: max,
        })
    }

    pub(crate) fn pick(&self, rng: &mut impl Rng) -> usize {
        rng.random_range(self.min_bytes..=self.max_bytes)
    }
}

/// A named YCSB workload: its mix, and the key choice it implies (D reads
/// the latest inserts).
pub(crate) fn ycsb(name: &str) -> Result<(Mix, Option<KeyChoice>), String> {
    let mix = |w| Mix::new(w).expect("the YCSB mixes are not empty");
    Ok(match name.to_ascii_uppercase().as_str() {
        "A" => (mix([50, 50, 0, 0, 0]), None),
        "B" => (mix([95, 5, 0, 0, 0]), None),
        "C" => (mix([100, 0, 0, 0, 0]), None),
        "D" => (mix([95, 0, 5, 0, 0]), Some(KeyChoice::Latest { theta: 0.99 })),
        "F" => (mix([50, 0, 0, 0, 50]), None),
        other => return Err(format!("unknown workload {other:?}: use A, B, C, D, F or custom")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_xorshift::XorShiftRng {
        rand_xorshift::XorShiftRng::seed_from_u64(7)
    }

    #[test]
    fn mixes_follow_their_weights() {
        let (mix, _) = ycsb("b").unwrap();
        let mut rng = rng();
        let reads = (0..10_000).filter(|_| mix.pick(&mut rng) == OpKind::Read).count();
        assert!((9_300..9_700).contains(&reads), "{reads} reads of 10,000 in workload B");
        assert!(Mix::new([0; 5]).is_err());
        assert!(ycsb("Z").unwrap_err().contains("unknown workload"));
    }

    #[test]
    fn key_names_are_ycsb_style_zero_padded_decimals() {
        for index in [
            0,
            7,
            42,
            999_999_999_999,
            1_000_000_000_000,
            123_456_789_012_345,
            u64::MAX,
        ] {
            let expected = format!("user{index:012}");
            assert_eq!(KeyName::of(index).as_bytes(), expected.as_bytes(), "index {index}");
        }
    }

    #[test]
    fn zipfian_keys_are_skewed_and_in_range() {
        let chooser = KeyChooser::new(KeyChoice::Zipfian { theta: 0.99 }, 1000).unwrap();
        let mut rng = rng();
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[chooser.pick(&mut rng, 1000) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = counts[..10].iter().sum();
        assert!(top10 > 30_000, "the 10 hottest keys got only {top10} of 100,000 picks");
        let uniform = KeyChooser::new(KeyChoice::Uniform, 1000).unwrap();
        assert!((0..1000).all(|_| uniform.pick(&mut rng, 1000) < 1000));
        // theta >= 1 takes the exact sampler.
        let steep = KeyChooser::new(KeyChoice::Zipfian { theta: 1.2 }, 1000).unwrap();
        assert!((0..1000).all(|_| steep.pick(&mut rng, 1000) < 1000));
    }

    #[test]
    fn ycsb_zipfian_draws_ranks_in_proportion_to_one_over_rank_to_the_theta() {
        for (items, theta) in [(1000u64, 0.99), (1000, 0.5), (50, 0.8)] {
            let zipfian = YcsbZipfian::new(items, theta);
            let mut rng = rng();
            let draws = 400_000;
            let mut counts = vec![0u64; items as usize];
            for _ in 0..draws {
                counts[zipfian.rank(rng.random::<f64>()) as usize] += 1;
            }
            let zetan = zeta(items, theta);
            // Gray's method is exact for the two most popular ranks and
            // approximates the rest; compare ranks 0, 1, and the mass of
            // the top tenth with the true law.
            let expected = |rank: u64| draws as f64 * ((rank + 1) as f64).powf(-theta) / zetan;
            for rank in [0u64, 1] {
                let got = counts[rank as usize] as f64;
                assert!(
                    (got / expected(rank) - 1.0).abs() < 0.03,
                    "n={items} theta={theta} rank {rank}: {got} draws, expected {}",
                    expected(rank)
                );
            }
            let top: u64 = counts[..(items / 10) as usize].iter().sum();
            let expected_top: f64 = (0..items / 10).map(expected).sum();
            assert!(
                (top as f64 / expected_top - 1.0).abs() < 0.05,
                "n={items} theta={theta}: top tenth drew {top}, expected {expected_top}"
            );
        }
    }

    #[test]
    fn zeta_past_the_exact_terms_matches_the_sum() {
        let n = (1u64 << 20) + 300_000;
        let exact: f64 = (1..=n).map(|i| (i as f64).powf(-0.99)).sum();
        assert!(
            (zeta(n, 0.99) / exact - 1.0).abs() < 1e-9,
            "{} vs {exact}",
            zeta(n, 0.99)
        );
    }

    #[test]
    fn latest_prefers_the_newest_keys() {
        let chooser = KeyChooser::new(KeyChoice::Latest { theta: 0.99 }, 1000).unwrap();
        let mut rng = rng();
        let picks: Vec<u64> = (0..10_000).map(|_| chooser.pick(&mut rng, 5000)).collect();
        assert!(picks.iter().all(|p| *p < 5000));
        let recent = picks.iter().filter(|p| **p >= 4990).count();
        assert!(recent > 3_000, "only {recent} of 10,000 picks among the 10 newest keys");
    }

    #[test]
    fn value_sizes_parse_and_bad_ones_are_named() {
        assert_eq!(
            ValueSize::parse("100").unwrap(),
            ValueSize {
                min_bytes: 100,
                max_bytes: 100
            }
        );
        let range = ValueSize::parse("10..20").unwrap();
        let mut rng = rng();
        assert!((0..100).all(|_| (10..=20).contains(&range.pick(&mut rng))));
        assert!(ValueSize::parse("20..10").unwrap_err().contains("20..10"));
        assert!(ValueSize::parse("big").is_err());
        assert!(KeyChooser::new(KeyChoice::Zipfian { theta: -1.0 }, 10).is_err());
    }
}
