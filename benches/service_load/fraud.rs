//! The fraud-scoring work both services of the `peer` suite do, identically:
//! parse a card transaction, featurize it into a small vector, score it
//! with three CPU models of a few microseconds each (a small neural net, a
//! boosted ensemble of oblivious trees, a nearest-neighbour scorer), keep
//! the most confident score and decide approve, review or decline.
//!
//! The models' parameters are fixed at start-up from a seeded generator
//! around a hand-written risk rule (as if trained on it), so answers are
//! plausible and the same in every process.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The run route both services serve.
pub(crate) const ROUTE: &str = "/v1/pipelines/fraud/runs";
/// The pipeline's name on pipelens (`POST /v1/pipelines/fraud/runs`).
pub(crate) const NAME: &str = "fraud";
/// The request the load generator sends.
pub(crate) const BODY: &str = r#"{"amount": 182.5, "merchant_category": "electronics", "hour": 23, "country_mismatch": true, "card_age_days": 41, "transactions_last_hour": 3, "distance_from_home_km": 412.0}"#;

/// Merchant categories and their prior risk.
const CATEGORIES: [(&str, f64); 8] = [
    ("grocery", 0.1),
    ("fuel", 0.2),
    ("restaurant", 0.2),
    ("travel", 0.5),
    ("electronics", 0.7),
    ("digital_goods", 0.8),
    ("gambling", 0.9),
    ("other", 0.4),
];

/// How many features [`featurize`] produces.
pub(crate) const FEATURES: usize = 12;

/// A card transaction to score (the request body).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Transaction {
    /// Amount in the card's currency, above 0 and at most 1,000,000.
    pub(crate) amount: f64,
    /// One of [`CATEGORIES`].
    pub(crate) merchant_category: String,
    /// Local hour of day, 0 to 23.
    pub(crate) hour: u8,
    /// Whether the card's country differs from the merchant's.
    pub(crate) country_mismatch: bool,
    /// Days since the card was issued.
    pub(crate) card_age_days: u32,
    /// Transactions on the card in the last hour, before this one.
    pub(crate) transactions_last_hour: u32,
    /// Distance from the card holder's home, in km.
    pub(crate) distance_from_home_km: f64,
}

/// A field that fails validation: its name and what is wrong.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) field: &'static str,
    pub(crate) message: String,
}

/// Checks what serde cannot: ranges and the category.
pub(crate) fn validate(t: &Transaction) -> Result<(), Invalid> {
    let invalid = |field, message: &str| {
        Err(Invalid {
            field,
            message: message.to_owned(),
        })
    };
    if !(t.amount.is_finite() && t.amount > 0.0 && t.amount <= 1e6) {
        return invalid("amount", "must be above 0 and at most 1000000");
    }
    if !CATEGORIES.iter().any(|(c, _)| *c == t.merchant_category) {
        return Err(Invalid {
            field: "merchant_category",
            message: format!("must be one of {}", CATEGORIES.map(|(c, _)| c).join(", ")),
        });
    }
    if t.hour > 23 {
        return invalid("hour", "must be 0 to 23");
    }
    if !(t.distance_from_home_km.is_finite() && t.distance_from_home_km >= 0.0) {
        return invalid("distance_from_home_km", "must be a number >= 0");
    }
    Ok(())
}

/// The model input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Features(pub(crate) [f64; FEATURES]);

/// Turns a (validated) transaction into the models' input, each feature
/// roughly in 0..1.
pub(crate) fn featurize(t: &Transaction) -> Features {
    let risk = CATEGORIES
        .iter()
        .find(|(c, _)| *c == t.merchant_category)
        .map_or(0.4, |(_, r)| *r);
    let angle = f64::from(t.hour) / 24.0 * std::f64::consts::TAU;
    let night = if t.hour < 6 || t.hour >= 22 { 1.0 } else { 0.0 };
    let amount = (1.0 + t.amount).ln() / 14.0;
    let velocity = (f64::from(t.transactions_last_hour) / 10.0).min(1.0);
    let new_card = 1.0 / (1.0 + f64::from(t.card_age_days) / 30.0);
    let distance = (1.0 + t.distance_from_home_km).ln() / 10.0;
    let mismatch = if t.country_mismatch { 1.0 } else { 0.0 };
    Features([
        amount,
        risk,
        0.5 + 0.5 * angle.sin(),
        0.5 + 0.5 * angle.cos(),
        night,
        mismatch,
        new_card,
        velocity,
        distance,
        amount * risk,
        mismatch * distance,
        velocity * new_card,
    ])
}

/// The hand-written rule the models stand in for: a logit.
const RULE: [f64; FEATURES] = [1.5, 2.0, 0.0, -0.3, 0.8, 1.2, 1.5, 2.0, 0.8, 1.0, 1.5, 2.0];
const RULE_BIAS: f64 = -5.2;

fn rule(x: &[f64; FEATURES]) -> f64 {
    RULE_BIAS + RULE.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// A fraud probability and how sure the model is of it (0..1).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Score {
    pub(crate) model: &'static str,
    pub(crate) probability: f64,
    pub(crate) confidence: f64,
}

/// A deterministic generator for the models' fixed parameters.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in -1..1.
    fn signed(&mut self) -> f64 {
        self.next() * 2.0 - 1.0
    }
}

const HIDDEN1: usize = 64;
const HIDDEN2: usize = 32;

/// A 12→64→32→1 tanh network with a skip connection carrying the rule.
pub(crate) struct Mlp {
    w1: Vec<[f64; FEATURES]>,
    b1: Vec<f64>,
    w2: Vec<[f64; HIDDEN1]>,
    b2: Vec<f64>,
    w3: [f64; HIDDEN2],
}

impl Mlp {
    pub(crate) const NAME: &'static str = "mlp";

    fn new() -> Self {
        let mut g = SplitMix(1);
        let scale1 = 1.0 / (FEATURES as f64).sqrt();
        let scale2 = 1.0 / (HIDDEN1 as f64).sqrt();
        Self {
            w1: (0..HIDDEN1)
                .map(|_| std::array::from_fn(|_| g.signed() * scale1))
                .collect(),
            b1: (0..HIDDEN1).map(|_| g.signed() * 0.1).collect(),
            w2: (0..HIDDEN2)
                .map(|_| std::array::from_fn(|_| g.signed() * scale2))
                .collect(),
            b2: (0..HIDDEN2).map(|_| g.signed() * 0.1).collect(),
            w3: std::array::from_fn(|_| g.signed() * 0.2),
        }
    }

    pub(crate) fn predict(&self, x: &Features) -> Score {
        let x = &x.0;
        let h1: Vec<f64> = self
            .w1
            .iter()
            .zip(&self.b1)
            .map(|(w, b)| (b + w.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()).tanh())
            .collect();
        let out: f64 = self
            .w2
            .iter()
            .zip(&self.b2)
            .zip(&self.w3)
            .map(|((w, b), w3)| {
                w3 * (b + w.iter().zip(&h1).map(|(w, v)| w * v).sum::<f64>()).tanh()
            })
            .sum();
        let p = sigmoid(rule(x) + out);
        Score {
            model: Self::NAME,
            probability: p,
            confidence: (2.0 * p - 1.0).abs(),
        }
    }
}

const TREES: usize = 512;
const DEPTH: usize = 6;

/// Gradient-boosted oblivious trees (one feature and threshold per level,
/// as CatBoost grows them): 512 trees of depth 6.
pub(crate) struct Forest {
    splits: Vec<[(usize, f64); DEPTH]>,
    leaves: Vec<[f64; 1 << DEPTH]>,
}

impl Forest {
    pub(crate) const NAME: &'static str = "boosted_trees";

    fn new() -> Self {
        let mut g = SplitMix(2);
        let mut splits = Vec::with_capacity(TREES);
        let mut leaves = Vec::with_capacity(TREES);
        for _ in 0..TREES {
            let split: [(usize, f64); DEPTH] = std::array::from_fn(|_| {
                let feature = (g.next() * FEATURES as f64) as usize % FEATURES;
                (feature, 0.2 + 0.6 * g.next())
            });
            // Each leaf moves the logit the way the rule would for the
            // sides of the splits it lies on, plus some noise.
            let leaf = std::array::from_fn(|index| {
                let pull: f64 = split
                    .iter()
                    .enumerate()
                    .map(|(level, (f, _))| {
                        let above = index >> level & 1 == 1;
                        RULE[*f] * if above { 0.5 } else { -0.5 }
                    })
                    .sum();
                0.05 * pull + 0.02 * g.signed()
            });
            splits.push(split);
            leaves.push(leaf);
        }
        Self { splits, leaves }
    }

    pub(crate) fn predict(&self, x: &Features) -> Score {
        let x = &x.0;
        let mut logit = -1.5;
        let mut votes = 0usize;
        for (split, leaves) in self.splits.iter().zip(&self.leaves) {
            let index = split
                .iter()
                .enumerate()
                .fold(0, |i, (level, (f, t))| i | usize::from(x[*f] > *t) << level);
            let value = leaves[index];
            logit += value;
            votes += usize::from(value > 0.0);
        }
        let p = sigmoid(logit);
        // How much the trees agree with the ensemble's side.
        let agree = if p >= 0.5 { votes } else { TREES - votes };
        Score {
            model: Self::NAME,
            probability: p,
            confidence: agree as f64 / TREES as f64,
        }
    }
}

const PROTOTYPES: usize = 512;
const NEIGHBOURS: usize = 15;

/// A k-nearest-neighbour scorer over 512 labelled prototypes (k = 15,
/// distance-weighted).
pub(crate) struct Neighbours {
    points: Vec<[f64; FEATURES]>,
    fraud: Vec<bool>,
}

impl Neighbours {
    pub(crate) const NAME: &'static str = "nearest_neighbours";

    fn new() -> Self {
        let mut g = SplitMix(3);
        let mut points = Vec::with_capacity(PROTOTYPES);
        let mut fraud = Vec::with_capacity(PROTOTYPES);
        for _ in 0..PROTOTYPES {
            let point: [f64; FEATURES] = std::array::from_fn(|_| g.next());
            fraud.push(g.next() < sigmoid(rule(&point)));
            points.push(point);
        }
        Self { points, fraud }
    }

    pub(crate) fn predict(&self, x: &Features) -> Score {
        let x = &x.0;
        // The k smallest squared distances, kept sorted.
        let mut nearest = [(f64::INFINITY, false); NEIGHBOURS];
        for (point, fraud) in self.points.iter().zip(&self.fraud) {
            let d: f64 = point.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
            if d < nearest[NEIGHBOURS - 1].0 {
                let at = nearest.partition_point(|(n, _)| *n <= d);
                nearest.copy_within(at..NEIGHBOURS - 1, at + 1);
                nearest[at] = (d, *fraud);
            }
        }
        let (mut fraud_weight, mut total) = (0.0, 0.0);
        for (d, is_fraud) in nearest {
            let w = 1.0 / (1e-6 + d.sqrt());
            total += w;
            if is_fraud {
                fraud_weight += w;
            }
        }
        let p = fraud_weight / total;
        Score {
            model: Self::NAME,
            probability: p,
            confidence: p.max(1.0 - p),
        }
    }
}

/// The three models, built once per process.
pub(crate) struct Models {
    pub(crate) mlp: Mlp,
    pub(crate) forest: Forest,
    pub(crate) neighbours: Neighbours,
}

/// The process's models.
pub(crate) fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| Models {
        mlp: Mlp::new(),
        forest: Forest::new(),
        neighbours: Neighbours::new(),
    })
}

/// The most confident score; ties go to the first.
pub(crate) fn most_confident(scores: &[Score]) -> Option<Score> {
    scores.iter().copied().reduce(|best, s| {
        if s.confidence > best.confidence {
            s
        } else {
            best
        }
    })
}

/// The run's answer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Decision {
    pub(crate) decision: &'static str,
    pub(crate) fraud_probability: f64,
    pub(crate) confidence: f64,
    pub(crate) model: &'static str,
}

/// Decline at 0.8, review at 0.5, approve below.
pub(crate) fn decide(score: &Score) -> Decision {
    let decision = match score.probability {
        p if p >= 0.8 => "decline",
        p if p >= 0.5 => "review",
        _ => "approve",
    };
    Decision {
        decision,
        fraud_probability: score.probability,
        confidence: score.confidence,
        model: score.model,
    }
}
