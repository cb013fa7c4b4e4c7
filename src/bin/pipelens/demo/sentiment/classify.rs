//! The sentiment pipeline's models, in plain Rust with no ML framework: a
//! tokenizer, a valence lexicon with negation and intensifiers, a
//! multinomial naive Bayes classifier and a softmax (multinomial logistic)
//! regression, both trained on a small built-in corpus of product reviews.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A text split into lower-case words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    /// The words, in order.
    pub words: Vec<String>,
}

/// A sentiment class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// Favourable.
    Positive,
    /// Unfavourable.
    Negative,
    /// Neither.
    Neutral,
}

impl Label {
    /// Every label, in the order classifiers index them.
    pub const ALL: [Label; 3] = [Label::Positive, Label::Negative, Label::Neutral];

    /// The label as it appears in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Positive => "positive",
            Label::Negative => "negative",
            Label::Neutral => "neutral",
        }
    }
}

/// A classifier's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The predicted class.
    pub label: Label,
    /// Polarity from -1 (negative) to 1 (positive).
    pub score: f64,
    /// How sure the classifier is, from 0 to 1.
    pub confidence: f64,
}

/// Splits `text` into lower-case words; apostrophes inside a word stay
/// (`don't`), every other non-alphanumeric character separates words.
pub fn tokenize(text: &str) -> Tokens {
    let words = text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    Tokens { words }
}

const NEGATORS: &[&str] = &[
    "not",
    "no",
    "never",
    "nothing",
    "nobody",
    "none",
    "neither",
    "nor",
    "without",
    "hardly",
    "don't",
    "doesn't",
    "didn't",
    "isn't",
    "wasn't",
    "aren't",
    "weren't",
    "won't",
    "wouldn't",
    "can't",
    "cannot",
    "couldn't",
    "shouldn't",
    "dont",
    "doesnt",
    "didnt",
    "isnt",
    "wasnt",
    "cant",
    "wont",
];

/// How far back (in words) a negator reaches.
const NEGATION_WINDOW: usize = 3;

fn negated(words: &[String], at: usize) -> bool {
    words[at.saturating_sub(NEGATION_WINDOW)..at]
        .iter()
        .any(|w| NEGATORS.contains(&w.as_str()))
}

/// Word valences on a -3..3 scale, in the spirit of VADER's lexicon.
const VALENCES: &[(&str, f64)] = &[
    ("love", 3.0),
    ("loved", 3.0),
    ("loves", 3.0),
    ("excellent", 3.0),
    ("amazing", 2.8),
    ("awesome", 2.8),
    ("fantastic", 2.8),
    ("perfect", 2.8),
    ("outstanding", 2.8),
    ("superb", 2.8),
    ("wonderful", 2.7),
    ("brilliant", 2.6),
    ("great", 2.5),
    ("best", 2.5),
    ("delighted", 2.5),
    ("impressive", 2.2),
    ("beautiful", 2.2),
    ("happy", 2.1),
    ("enjoy", 2.0),
    ("enjoyed", 2.0),
    ("good", 1.9),
    ("nice", 1.8),
    ("pleased", 1.8),
    ("recommend", 1.8),
    ("recommended", 1.8),
    ("reliable", 1.7),
    ("solid", 1.5),
    ("comfortable", 1.6),
    ("glad", 1.6),
    ("like", 1.5),
    ("liked", 1.5),
    ("fast", 1.2),
    ("quick", 1.2),
    ("easy", 1.4),
    ("smooth", 1.3),
    ("sturdy", 1.4),
    ("helpful", 1.6),
    ("fine", 0.8),
    ("works", 1.0),
    ("worth", 1.4),
    ("fun", 1.9),
    ("favorite", 2.0),
    ("favourite", 2.0),
    ("satisfied", 1.8),
    ("thanks", 1.5),
    ("clean", 1.0),
    ("bright", 1.0),
    ("quiet", 0.8),
    ("well", 0.8),
    ("better", 1.5),
    ("exceeded", 2.0),
    ("flawless", 2.8),
    ("gorgeous", 2.6),
    ("durable", 1.6),
    ("bargain", 1.6),
    ("hate", -3.0),
    ("hated", -3.0),
    ("terrible", -3.0),
    ("horrible", -3.0),
    ("awful", -3.0),
    ("worst", -3.0),
    ("useless", -2.6),
    ("disgusting", -2.8),
    ("garbage", -2.6),
    ("junk", -2.4),
    ("rubbish", -2.4),
    ("disappointed", -2.2),
    ("disappointing", -2.2),
    ("bad", -2.3),
    ("poor", -2.0),
    ("broke", -2.0),
    ("broken", -2.0),
    ("breaks", -1.8),
    ("defective", -2.3),
    ("waste", -2.2),
    ("refund", -1.4),
    ("return", -0.8),
    ("returned", -1.2),
    ("slow", -1.4),
    ("cheap", -1.0),
    ("flimsy", -1.8),
    ("annoying", -2.0),
    ("angry", -2.3),
    ("sad", -2.0),
    ("ugly", -2.2),
    ("fails", -2.0),
    ("failed", -2.1),
    ("fail", -2.0),
    ("problem", -1.5),
    ("problems", -1.5),
    ("issue", -1.0),
    ("issues", -1.1),
    ("wrong", -1.8),
    ("worse", -2.1),
    ("noisy", -1.5),
    ("loud", -1.0),
    ("leaks", -1.8),
    ("leaked", -1.8),
    ("stopped", -1.2),
    ("crashed", -2.0),
    ("crashes", -2.0),
    ("dead", -2.0),
    ("scam", -2.8),
    ("avoid", -2.0),
    ("regret", -2.2),
    ("uncomfortable", -1.8),
    ("overpriced", -1.9),
    ("mediocre", -1.3),
    ("meh", -0.8),
    ("bland", -1.1),
    ("late", -1.1),
    ("missing", -1.4),
    ("damaged", -2.0),
    ("unusable", -2.6),
    ("frustrating", -2.2),
    ("hard", -0.6),
];

/// Words that strengthen the next sentiment word, with how much.
const BOOSTERS: &[(&str, f64)] = &[
    ("very", 0.3),
    ("really", 0.3),
    ("extremely", 0.4),
    ("so", 0.25),
    ("totally", 0.3),
    ("absolutely", 0.4),
    ("incredibly", 0.4),
    ("super", 0.3),
    ("truly", 0.3),
    ("highly", 0.3),
    ("slightly", -0.3),
    ("somewhat", -0.3),
    ("barely", -0.4),
    ("mostly", -0.2),
    ("kinda", -0.3),
    ("little", -0.2),
];

/// A hand-built valence lexicon: each sentiment word adds its valence,
/// boosted by a preceding intensifier and flipped (and damped) by a negator
/// within three words before it.
#[derive(Debug, Clone)]
pub struct Lexicon {
    valences: HashMap<&'static str, f64>,
    boosters: HashMap<&'static str, f64>,
}

impl Default for Lexicon {
    fn default() -> Self {
        Self::new()
    }
}

impl Lexicon {
    /// The built-in lexicon.
    pub fn new() -> Self {
        Self {
            valences: VALENCES.iter().copied().collect(),
            boosters: BOOSTERS.iter().copied().collect(),
        }
    }

    /// Scores `tokens`: the normalised sum of valences, `sum / sqrt(sum² +
    /// 15)`, labelled neutral within ±0.05. Confidence grows with the
    /// share of sentiment-bearing words and with the score's magnitude.
    pub fn classify(&self, tokens: &Tokens) -> Scored {
        let words = &tokens.words;
        let mut sum = 0.0;
        let mut hits = 0usize;
        for (i, word) in words.iter().enumerate() {
            let Some(&valence) = self.valences.get(word.as_str()) else {
                continue;
            };
            hits += 1;
            let mut value = valence;
            if let Some(&boost) = i
                .checked_sub(1)
                .and_then(|j| self.boosters.get(words[j].as_str()))
            {
                value += boost * valence.signum();
            }
            if negated(words, i) {
                value *= -0.74;
            }
            sum += value;
        }
        let score = sum / (sum * sum + 15.0).sqrt();
        let label = if score >= 0.05 {
            Label::Positive
        } else if score <= -0.05 {
            Label::Negative
        } else {
            Label::Neutral
        };
        let coverage = if words.is_empty() {
            0.0
        } else {
            (hits as f64 / words.len() as f64).min(1.0)
        };
        let confidence = if hits == 0 {
            0.4
        } else {
            (0.45 + 0.35 * score.abs() + 0.2 * coverage.sqrt()).min(0.99)
        };
        Scored {
            label,
            score,
            confidence,
        }
    }
}

/// Features shared by the trained models: the words, with the ones under a
/// negator marked `NOT_word`, so "not good" and "good" are different
/// evidence.
fn features(tokens: &Tokens) -> Vec<String> {
    (0..tokens.words.len())
        .filter(|&i| !NEGATORS.contains(&tokens.words[i].as_str()))
        .map(|i| {
            if negated(&tokens.words, i) {
                format!("NOT_{}", tokens.words[i])
            } else {
                tokens.words[i].clone()
            }
        })
        .collect()
}

/// The built-in training corpus: short product reviews, 32 per class.
pub const CORPUS: &[(&str, Label)] = &[
    ("I love this blender, it is excellent", Label::Positive),
    ("Works great and arrived quickly", Label::Positive),
    ("Absolutely fantastic sound quality", Label::Positive),
    ("The best purchase I made this year", Label::Positive),
    ("Very comfortable and well made", Label::Positive),
    (
        "Great value, I would recommend it to anyone",
        Label::Positive,
    ),
    ("My kids love it and so do I", Label::Positive),
    ("Perfect fit and the colour is beautiful", Label::Positive),
    ("Setup was easy and it works perfectly", Label::Positive),
    (
        "Exceeded my expectations, really impressive",
        Label::Positive,
    ),
    ("Sturdy, reliable and fast", Label::Positive),
    ("Happy with this, good battery life", Label::Positive),
    ("Amazing product, highly recommended", Label::Positive),
    ("It is wonderful, I use it every day", Label::Positive),
    ("Nice design and great build quality", Label::Positive),
    (
        "Superb customer service and a great product",
        Label::Positive,
    ),
    ("I am delighted with how well it works", Label::Positive),
    ("The screen is bright and gorgeous", Label::Positive),
    (
        "Brilliant little gadget, worth every penny",
        Label::Positive,
    ),
    ("Not bad at all, actually quite good", Label::Positive),
    ("Comfortable to wear all day", Label::Positive),
    ("Excellent quality for the price", Label::Positive),
    ("It never fails, solid and durable", Label::Positive),
    ("So glad I bought this", Label::Positive),
    ("Quiet, smooth and easy to clean", Label::Positive),
    ("Five stars, flawless from day one", Label::Positive),
    ("Fun to use and looks great", Label::Positive),
    (
        "Outstanding performance, my favourite tool",
        Label::Positive,
    ),
    ("I enjoyed every minute with it", Label::Positive),
    ("Good product, I am satisfied", Label::Positive),
    ("A real bargain and it works well", Label::Positive),
    (
        "Thanks, this is exactly what I wanted, love it",
        Label::Positive,
    ),
    ("This is terrible, it broke after a day", Label::Negative),
    ("I hate it, complete waste of money", Label::Negative),
    ("Awful quality, do not buy", Label::Negative),
    ("The worst product I have ever owned", Label::Negative),
    ("It stopped working after a week", Label::Negative),
    (
        "Arrived damaged and customer service was useless",
        Label::Negative,
    ),
    ("Very disappointed, it does not work", Label::Negative),
    ("Cheap and flimsy, it feels like junk", Label::Negative),
    ("Horrible smell and it leaks", Label::Negative),
    ("Returned it for a refund, total garbage", Label::Negative),
    ("Too noisy and very slow", Label::Negative),
    ("The battery is dead already", Label::Negative),
    ("It is not good, I regret buying it", Label::Negative),
    ("Poor build quality and missing parts", Label::Negative),
    ("The app crashes all the time", Label::Negative),
    ("Defective unit, avoid this seller", Label::Negative),
    ("Uncomfortable and overpriced", Label::Negative),
    (
        "Frustrating to set up and it failed anyway",
        Label::Negative,
    ),
    ("Bad experience, it is broken", Label::Negative),
    ("Annoying buzzing sound, really bad", Label::Negative),
    ("Ugly colour and wrong size", Label::Negative),
    ("Not worth the money at all", Label::Negative),
    ("Mediocre at best and it breaks easily", Label::Negative),
    ("The lid is broken and the handle fell off", Label::Negative),
    ("Do not recommend, it is a scam", Label::Negative),
    ("Unusable, the buttons do not respond", Label::Negative),
    ("It arrived late and the box was damaged", Label::Negative),
    ("Worse than the old one, many problems", Label::Negative),
    ("I was angry, nothing works as described", Label::Negative),
    ("Rubbish, it is sad how bad this is", Label::Negative),
    ("The package arrived on Tuesday", Label::Neutral),
    ("It is a blue phone case with two buttons", Label::Neutral),
    ("I bought this for my office", Label::Neutral),
    ("The box contains a cable and a manual", Label::Neutral),
    ("It comes in three sizes", Label::Neutral),
    ("I have used it for two weeks now", Label::Neutral),
    (
        "The manual is written in English and French",
        Label::Neutral,
    ),
    ("It weighs about two kilograms", Label::Neutral),
    ("This is the second one I ordered", Label::Neutral),
    ("The charger uses a standard plug", Label::Neutral),
    ("It was delivered by the usual courier", Label::Neutral),
    ("The product is made of plastic and steel", Label::Neutral),
    ("I use it in the kitchen", Label::Neutral),
    ("The colour is grey as shown in the picture", Label::Neutral),
    ("It runs on four batteries", Label::Neutral),
    ("My brother has the same model", Label::Neutral),
    ("The size is as described", Label::Neutral),
    ("It has a power button on the side", Label::Neutral),
    ("Bought it last month for the garden", Label::Neutral),
    ("The cable is one metre long", Label::Neutral),
    ("It connects over bluetooth", Label::Neutral),
    (
        "The instructions are on the back of the box",
        Label::Neutral,
    ),
    ("I ordered the medium version", Label::Neutral),
    ("It replaces my previous kettle", Label::Neutral),
    ("The lid opens upwards", Label::Neutral),
    ("We keep it in the living room", Label::Neutral),
    ("It needs to be charged every night", Label::Neutral),
    ("The model number is printed underneath", Label::Neutral),
    ("It is available in black or white", Label::Neutral),
    ("I received it yesterday", Label::Neutral),
    ("The store had it on the shelf", Label::Neutral),
    ("It uses the same cartridges as before", Label::Neutral),
];

fn index(label: Label) -> usize {
    match label {
        Label::Positive => 0,
        Label::Negative => 1,
        Label::Neutral => 2,
    }
}

/// Polarity from three class probabilities (positive, negative, neutral):
/// P(positive) - P(negative), labelled with the most probable class.
pub fn scored(probabilities: [f64; 3]) -> Scored {
    let best = (0..3)
        .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
        .unwrap_or(2);
    Scored {
        label: Label::ALL[best],
        score: (probabilities[0] - probabilities[1]).clamp(-1.0, 1.0),
        confidence: probabilities[best],
    }
}

/// The majority of `votes`: the label most of them give (the most
/// confident vote's when no label has more votes than another), with the
/// agreeing votes' mean score, and their mean confidence times the share
/// of votes that agree.
pub fn majority(votes: &[Scored]) -> Scored {
    let count = |l: Label| votes.iter().filter(|v| v.label == l).count();
    let most = Label::ALL.iter().map(|&l| count(l)).max().unwrap_or(0);
    let tied = Label::ALL.iter().filter(|&&l| count(l) == most).count();
    let label = if tied == 1 {
        Label::ALL.into_iter().find(|&l| count(l) == most)
    } else {
        votes
            .iter()
            .max_by(|a, b| a.confidence.total_cmp(&b.confidence))
            .map(|v| v.label)
    }
    .unwrap_or(Label::Neutral);
    let agreeing: Vec<&Scored> = votes.iter().filter(|v| v.label == label).collect();
    let n = agreeing.len().max(1) as f64;
    let mean = |f: fn(&Scored) -> f64| agreeing.iter().map(|v| f(v)).sum::<f64>() / n;
    Scored {
        label,
        score: mean(|v| v.score),
        confidence: mean(|v| v.confidence) * agreeing.len() as f64 / votes.len().max(1) as f64,
    }
}

fn softmax(logits: [f64; 3]) -> [f64; 3] {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp = logits.map(|l| (l - max).exp());
    let total: f64 = exp.iter().sum();
    exp.map(|e| e / total)
}

/// Multinomial naive Bayes with Laplace smoothing over [`features`].
#[derive(Debug, Clone)]
pub struct NaiveBayes {
    log_prior: [f64; 3],
    log_likelihood: HashMap<String, [f64; 3]>,
    log_unseen: [f64; 3],
}

impl NaiveBayes {
    /// Trains on `examples` (text, label).
    pub fn train(examples: &[(&str, Label)]) -> Self {
        let mut docs = [0usize; 3];
        let mut counts: HashMap<String, [f64; 3]> = HashMap::new();
        let mut totals = [0.0f64; 3];
        for (text, label) in examples {
            let class = index(*label);
            docs[class] += 1;
            for feature in features(&tokenize(text)) {
                counts.entry(feature).or_default()[class] += 1.0;
                totals[class] += 1.0;
            }
        }
        let vocabulary = counts.len() as f64;
        let n = examples.len().max(1) as f64;
        let log_prior = [0, 1, 2].map(|c| ((docs[c] as f64 + 1.0) / (n + 3.0)).ln());
        let log_unseen = [0, 1, 2].map(|c| (1.0 / (totals[c] + vocabulary + 1.0)).ln());
        let log_likelihood = counts
            .into_iter()
            .map(|(feature, count)| {
                let logs =
                    [0, 1, 2].map(|c| ((count[c] + 1.0) / (totals[c] + vocabulary + 1.0)).ln());
                (feature, logs)
            })
            .collect();
        Self {
            log_prior,
            log_likelihood,
            log_unseen,
        }
    }

    /// Trains on the built-in [`CORPUS`].
    pub fn trained_default() -> Self {
        Self::train(CORPUS)
    }

    /// The posterior over the three classes for `tokens`. Words never seen
    /// in training carry no evidence.
    pub fn classify(&self, tokens: &Tokens) -> Scored {
        let mut logits = self.log_prior;
        for feature in features(tokens) {
            if let Some(logs) = self.log_likelihood.get(&feature) {
                for c in 0..3 {
                    logits[c] += logs[c] - self.log_unseen[c];
                }
            }
        }
        scored(softmax(logits))
    }
}

/// Softmax regression over a bag of [`features`], trained by full-batch
/// gradient descent with L2 regularisation.
#[derive(Debug, Clone)]
pub struct Logistic {
    vocabulary: HashMap<String, usize>,
    weights: Vec<[f64; 3]>,
    bias: [f64; 3],
}

impl Logistic {
    /// Trains on `examples` for `epochs` passes.
    pub fn train(examples: &[(&str, Label)], epochs: usize) -> Self {
        let mut vocabulary = HashMap::new();
        let rows: Vec<(Vec<usize>, usize)> = examples
            .iter()
            .map(|(text, label)| {
                let mut ids: Vec<usize> = features(&tokenize(text))
                    .into_iter()
                    .map(|f| {
                        let next = vocabulary.len();
                        *vocabulary.entry(f).or_insert(next)
                    })
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                (ids, index(*label))
            })
            .collect();
        let mut model = Self {
            weights: vec![[0.0; 3]; vocabulary.len()],
            vocabulary,
            bias: [0.0; 3],
        };
        let (rate, l2) = (0.5, 1e-3);
        let n = rows.len().max(1) as f64;
        for _ in 0..epochs {
            let mut grad = vec![[0.0; 3]; model.weights.len()];
            let mut grad_bias = [0.0; 3];
            for (ids, class) in &rows {
                let p = model.probabilities(ids);
                for c in 0..3 {
                    let error = p[c] - if c == *class { 1.0 } else { 0.0 };
                    grad_bias[c] += error;
                    for &id in ids {
                        grad[id][c] += error;
                    }
                }
            }
            for (w, g) in model.weights.iter_mut().zip(&grad) {
                for c in 0..3 {
                    w[c] -= rate * (g[c] / n + l2 * w[c]);
                }
            }
            for (bias, g) in model.bias.iter_mut().zip(grad_bias) {
                *bias -= rate * g / n;
            }
        }
        model
    }

    fn probabilities(&self, ids: &[usize]) -> [f64; 3] {
        let mut logits = self.bias;
        for &id in ids {
            for (logit, w) in logits.iter_mut().zip(self.weights[id]) {
                *logit += w;
            }
        }
        softmax(logits)
    }

    /// The class probabilities for `tokens`.
    pub fn classify(&self, tokens: &Tokens) -> Scored {
        let mut ids: Vec<usize> = features(tokens)
            .iter()
            .filter_map(|f| self.vocabulary.get(f).copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        scored(self.probabilities(&ids))
    }
}

/// Scores `tokens` with the softmax regression trained (once, on first use)
/// on the built-in corpus: what the remote scoring endpoint runs.
pub fn logistic_score(tokens: &Tokens) -> Scored {
    static MODEL: OnceLock<Logistic> = OnceLock::new();
    MODEL
        .get_or_init(|| Logistic::train(CORPUS, 300))
        .classify(tokens)
}

/// The scoring endpoint's request body for `tokens`: `{"words": [...]}`.
pub fn tokens_json(tokens: &Tokens) -> String {
    serde_json::to_string(tokens).unwrap_or_else(|_| r#"{"words":[]}"#.to_owned())
}

/// The scoring endpoint's handler: `{"words": [...]}` in, a [`Scored`] as
/// JSON out, or a message saying what is wrong with the body.
pub fn score_json(body: &str) -> Result<String, String> {
    let tokens: Tokens =
        serde_json::from_str(body).map_err(|e| format!("invalid scoring request: {e}"))?;
    serde_json::to_string(&logistic_score(&tokens)).map_err(|e| e.to_string())
}

/// Reads the scoring endpoint's answer.
pub fn parse_scored(body: &str) -> Result<Scored, String> {
    let scored: Scored =
        serde_json::from_str(body).map_err(|e| format!("invalid scorer answer: {e}"))?;
    if !(-1.0..=1.0).contains(&scored.score) || !(0.0..=1.0).contains(&scored.confidence) {
        return Err(format!("scorer answer out of range: {body}"));
    }
    Ok(scored)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELD_OUT: &[(&str, Label)] = &[
        (
            "I love this, it is excellent and works great",
            Label::Positive,
        ),
        ("Really good, I would buy it again", Label::Positive),
        (
            "This is terrible, I hate it, it broke after a day",
            Label::Negative,
        ),
        (
            "Awful, it stopped working and the seller ignored me",
            Label::Negative,
        ),
        ("The parcel came in a brown box", Label::Neutral),
    ];

    #[test]
    fn tokenize_lowercases_and_keeps_contractions() {
        assert_eq!(
            tokenize("Don't BUY it -- really!").words,
            ["don't", "buy", "it", "really"]
        );
        assert!(tokenize("  ,;  ").words.is_empty());
    }

    #[test]
    fn lexicon_negation_flips_and_boosters_strengthen() {
        let lexicon = Lexicon::new();
        let good = lexicon.classify(&tokenize("it is good"));
        let not_good = lexicon.classify(&tokenize("it is not good"));
        let very_good = lexicon.classify(&tokenize("it is very good"));
        assert_eq!(good.label, Label::Positive);
        assert_eq!(not_good.label, Label::Negative);
        assert!(very_good.score > good.score);
        let nothing = lexicon.classify(&tokenize("the box is on the table"));
        assert_eq!(nothing.label, Label::Neutral);
        assert!(nothing.confidence < good.confidence);
    }

    #[test]
    fn every_classifier_gets_the_held_out_reviews_right() {
        let lexicon = Lexicon::new();
        let bayes = NaiveBayes::trained_default();
        for (text, label) in HELD_OUT {
            let tokens = tokenize(text);
            assert_eq!(bayes.classify(&tokens).label, *label, "bayes: {text}");
            assert_eq!(logistic_score(&tokens).label, *label, "logistic: {text}");
            if *label != Label::Neutral {
                assert_eq!(lexicon.classify(&tokens).label, *label, "lexicon: {text}");
            }
        }
    }

    #[test]
    fn the_majority_wins_and_a_three_way_split_goes_to_the_most_confident() {
        let vote = |label, confidence| Scored {
            label,
            score: 0.5,
            confidence,
        };
        let m = majority(&[
            vote(Label::Positive, 0.9),
            vote(Label::Negative, 0.99),
            vote(Label::Positive, 0.7),
        ]);
        assert_eq!(m.label, Label::Positive);
        assert!((m.confidence - 0.8 * 2.0 / 3.0).abs() < 1e-12);
        let split = majority(&[
            vote(Label::Positive, 0.5),
            vote(Label::Negative, 0.9),
            vote(Label::Neutral, 0.6),
        ]);
        assert_eq!(split.label, Label::Negative);
        assert!((split.confidence - 0.3).abs() < 1e-12);
    }

    #[test]
    fn trained_models_fit_their_corpus() {
        let bayes = NaiveBayes::trained_default();
        let logistic = Logistic::train(CORPUS, 300);
        let fit = |classify: &dyn Fn(&Tokens) -> Scored| {
            CORPUS
                .iter()
                .filter(|(text, label)| classify(&tokenize(text)).label == *label)
                .count() as f64
                / CORPUS.len() as f64
        };
        assert!(fit(&|t| bayes.classify(t)) >= 0.95);
        assert!(fit(&|t| logistic.classify(t)) >= 0.95);
    }

    #[test]
    fn scores_and_confidences_stay_in_range() {
        let bayes = NaiveBayes::trained_default();
        let lexicon = Lexicon::new();
        for text in ["", "love love love love love love", "hate hate hate hate"] {
            let tokens = tokenize(text);
            for s in [
                bayes.classify(&tokens),
                lexicon.classify(&tokens),
                logistic_score(&tokens),
            ] {
                assert!((-1.0..=1.0).contains(&s.score), "{text}: {s:?}");
                assert!((0.0..=1.0).contains(&s.confidence), "{text}: {s:?}");
            }
        }
    }

    #[test]
    fn the_scoring_wire_format_round_trips_and_rejects_garbage() {
        let tokens = tokenize("excellent, I love it");
        let answer = score_json(&tokens_json(&tokens)).unwrap();
        let scored = parse_scored(&answer).unwrap();
        assert_eq!(scored, logistic_score(&tokens));
        assert_eq!(scored.label, Label::Positive);
        assert!(score_json(r#"{"words": 3}"#)
            .unwrap_err()
            .contains("invalid"));
        assert!(parse_scored(r#"{"label":"positive","score":7,"confidence":0.5}"#).is_err());
    }
}
