//! A pool of short product reviews for the load generator, each with its
//! true label by construction: the ground truth `pipelens loadgen` sends back
//! as feedback, so the service can measure each candidate's accuracy.
//!
//! Reviews come from templates: a product (the subject) × an opinion
//! phrase, optionally intensified or negated, plus neutral factual
//! sentences. The label is the template's, chosen as a person would label
//! the sentence. Most phrasings are read right by all the candidates;
//! a few families are phrasings one candidate misreads (a neutral fact
//! containing a word the lexicon scores, a complaint the lexicon has no word
//! for, short phrasings the trained models saw too little of), so that
//! [`misread_only_by`] finds, for each hand-written candidate, reviews that
//! only it gets wrong (the reference model of `scripts/make-models` is
//! trained on this pool). No review is a text of the training [`CORPUS`](super::classify::CORPUS).

use std::sync::OnceLock;

use super::classify::{tokenize, Label};
use super::Candidate;

/// A review of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// The text, as sent in `{"text": ...}`.
    pub text: String,
    /// What the review says, as a person would label it.
    pub label: Label,
}

/// The products reviewed.
const PRODUCTS: &[&str] = &[
    "kettle",
    "blender",
    "desk lamp",
    "toaster",
    "backpack",
    "keyboard",
    "office chair",
    "rice cooker",
    "electric toothbrush",
    "hair dryer",
    "coffee grinder",
    "bike light",
    "water bottle",
    "yoga mat",
    "air fryer",
    "phone charger",
];

/// Favourable adjectives.
const GOOD: &[&str] = &[
    "great",
    "excellent",
    "amazing",
    "fantastic",
    "perfect",
    "wonderful",
    "brilliant",
    "superb",
    "good",
    "nice",
    "solid",
    "reliable",
    "sturdy",
    "impressive",
    "outstanding",
    "flawless",
];

/// Unfavourable adjectives.
const BAD: &[&str] = &[
    "terrible",
    "awful",
    "horrible",
    "useless",
    "rubbish",
    "bad",
    "poor",
    "defective",
    "flimsy",
    "noisy",
    "overpriced",
    "mediocre",
    "disappointing",
    "unusable",
    "frustrating",
];

/// How a bad product feels.
const FEELS: &[&str] = &[
    "flimsy",
    "cheap",
    "awful",
    "terrible",
    "uncomfortable",
    "horrible",
];

/// Words that strengthen an adjective (or nothing).
const INTENSIFIERS: &[&str] = &["", "really ", "absolutely ", "very ", "truly "];

/// Second halves of a favourable review.
const GOOD_TAILS: &[&str] = &[
    "I love it",
    "highly recommended",
    "works great",
    "worth every penny",
    "I would recommend it",
    "so glad I bought it",
    "it works perfectly",
];

/// Second halves of an unfavourable review.
const BAD_TAILS: &[&str] = &[
    "it broke after a week",
    "complete waste of money",
    "do not buy",
    "I returned it for a refund",
    "I regret buying it",
    "it stopped working after a month",
    "avoid it",
];

const DAYS: &[&str] = &["Monday", "Tuesday", "Friday", "Saturday"];
const PLACES: &[&str] = &["kitchen", "office", "bedroom", "garage", "caravan"];
const COLOURS: &[&str] = &["black", "white", "grey", "red", "green", "blue"];
const RELATIVES: &[&str] = &["sister", "neighbour", "brother", "flatmate"];

/// A family of templates with one label, and how many reviews to draw
/// from all its expansions.
struct Family {
    label: Label,
    templates: &'static [&'static str],
    count: usize,
}

/// The families, in the order the pool lists them. Placeholders: `{product}`,
/// `{good}`, `{bad}`, `{feel}`, `{int}` (an intensifier and a space, or nothing),
/// `{good_tail}`, `{bad_tail}`, `{day}`, `{place}`, `{colour}`, `{relative}`.
const FAMILIES: &[Family] = &[
    // Plain opinions with two cues: every candidate reads them.
    Family {
        label: Label::Positive,
        templates: &[
            "{int}{good} {product}, {good_tail}",
            "this {product} is {int}{good}, {good_tail}",
            "I love this {product}, it is {int}{good}",
            "so glad I bought this {product}, {good}",
            "really happy with this {product}, it is {good}",
        ],
        count: 170,
    },
    Family {
        label: Label::Negative,
        templates: &[
            "{int}{bad} {product}, {bad_tail}",
            "this {product} is {int}{bad}, {bad_tail}",
            "I hate this {product}, {bad_tail}",
            "very disappointed, the {product} is {bad}",
            "{bad} quality, the {product} stopped working",
        ],
        count: 170,
    },
    // Negated opinions: "not bad at all" is praise, "not good" a complaint.
    Family {
        label: Label::Positive,
        templates: &[
            "not bad at all, the {product} works great",
            "not bad at all, I love the {product}",
        ],
        count: 10,
    },
    Family {
        label: Label::Negative,
        templates: &[
            "not good at all, the {product} broke after a week",
            "not good at all, the {product} stopped working",
        ],
        count: 10,
    },
    // Facts with no opinion.
    Family {
        label: Label::Neutral,
        templates: &[
            "the {product} arrived on {day}",
            "I bought the {product} for my {place}",
            "the {product} comes in {colour}",
            "I ordered the {product} last week",
            "my {relative} has the same {product}",
            "the {product} came in a cardboard box",
            "the {product} has a switch on the side",
            "the {product} plugs into a standard socket",
            "I keep the {product} in the {place}",
            "the {product} is {colour}",
        ],
        count: 150,
    },
    // What the lexicon misreads: facts with a word it scores, complaints and
    // praise with no word it knows.
    Family {
        label: Label::Neutral,
        templates: &[
            "the {product} is shaped like a cube",
            "the {product} came with a return label",
            "the {product} comes in bright {colour}",
            "the {product} has a hard plastic case",
        ],
        count: 16,
    },
    Family {
        label: Label::Negative,
        templates: &["the {product} does not work"],
        count: 8,
    },
    Family {
        label: Label::Positive,
        templates: &["I would buy this {product} again"],
        count: 8,
    },
    // What the naive Bayes model misreads: very short verdicts.
    Family {
        label: Label::Negative,
        templates: &["{bad} product"],
        count: 12,
    },
    Family {
        label: Label::Positive,
        templates: &["a {good} {product}"],
        count: 16,
    },
    // What the logistic model misreads: one cue after a plain statement.
    Family {
        label: Label::Negative,
        templates: &[
            "the {product} is not worth it",
            "the {product} stopped working",
            "the {product} feels {feel}",
        ],
        count: 20,
    },
];

/// The pool: several hundred reviews, the same at every call.
pub fn pool() -> &'static [Review] {
    static POOL: OnceLock<Vec<Review>> = OnceLock::new();
    POOL.get_or_init(build)
}

/// The reviews of the pool that `model` misclassifies while all other
/// candidates classify them right (the classifiers run in-process: the
/// remote one is the logistic model the built-in scoring endpoint serves).
pub fn misread_only_by(model: Candidate) -> Vec<&'static Review> {
    pool()
        .iter()
        .filter(|review| {
            let tokens = tokenize(&review.text);
            Candidate::ALL
                .iter()
                .all(|&c| (c.classify(&tokens) == review.label) != (c == model))
        })
        .collect()
}

fn build() -> Vec<Review> {
    let mut seen = std::collections::HashSet::new();
    let mut pool = Vec::new();
    for (i, family) in FAMILIES.iter().enumerate() {
        let mut texts: Vec<String> = family
            .templates
            .iter()
            .flat_map(|template| expand(template))
            .collect();
        shuffle(&mut texts, 0x5eed_0000 + i as u64);
        pool.extend(
            texts
                .into_iter()
                .filter(|text| seen.insert(text.clone()))
                .take(family.count)
                .map(|text| Review {
                    text,
                    label: family.label,
                }),
        );
    }
    pool
}

/// Every filling of `template`'s placeholders, first letter capitalised.
fn expand(template: &str) -> Vec<String> {
    let slots: &[(&str, &[&str])] = &[
        ("{product}", PRODUCTS),
        ("{good}", GOOD),
        ("{bad}", BAD),
        ("{feel}", FEELS),
        ("{int}", INTENSIFIERS),
        ("{good_tail}", GOOD_TAILS),
        ("{bad_tail}", BAD_TAILS),
        ("{day}", DAYS),
        ("{place}", PLACES),
        ("{colour}", COLOURS),
        ("{relative}", RELATIVES),
    ];
    let mut texts = vec![template.to_owned()];
    for (slot, values) in slots {
        if !template.contains(slot) {
            continue;
        }
        texts = texts
            .iter()
            .flat_map(|text| values.iter().map(move |v| text.replacen(slot, v, 1)))
            .collect();
    }
    texts
        .into_iter()
        .map(|text| capitalise(&articles(&text)))
        .collect()
}

/// `a` becomes `an` before a vowel: "an impressive kettle".
fn articles(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let vowel_next = words
            .get(i + 1)
            .is_some_and(|next| next.starts_with(['a', 'e', 'i', 'o', 'u']));
        out.push(if *word == "a" && vowel_next {
            "an"
        } else {
            word
        });
    }
    out.join(" ")
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A Fisher–Yates shuffle driven by splitmix64: deterministic without a
/// random number crate (the sentiment example has none).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::super::classify::CORPUS;
    use super::*;

    fn label_of(text: &str) -> Option<Label> {
        pool().iter().find(|r| r.text == text).map(|r| r.label)
    }

    #[test]
    fn the_pool_is_several_hundred_distinct_reviews_the_same_every_time() {
        let pool = pool();
        assert!((400..=1000).contains(&pool.len()), "{} reviews", pool.len());
        assert_eq!(pool, build().as_slice());
        let distinct: std::collections::HashSet<&str> =
            pool.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(distinct.len(), pool.len(), "duplicate reviews");
        let wanted: usize = FAMILIES.iter().map(|f| f.count).sum();
        assert_eq!(pool.len(), wanted, "a family has too few expansions");
    }

    #[test]
    fn labels_are_what_the_reviews_say() {
        for (text, label) in [
            (
                "Terrible phone charger, I returned it for a refund",
                Label::Negative,
            ),
            (
                "This toaster is perfect, so glad I bought it",
                Label::Positive,
            ),
            ("Not bad at all, the yoga mat works great", Label::Positive),
            (
                "Not good at all, the office chair stopped working",
                Label::Negative,
            ),
            ("My neighbour has the same blender", Label::Neutral),
            ("The desk lamp comes in bright white", Label::Neutral),
            (
                "The electric toothbrush has a hard plastic case",
                Label::Neutral,
            ),
            ("The blender does not work", Label::Negative),
            ("I would buy this phone charger again", Label::Positive),
            ("Awful product", Label::Negative),
            ("An outstanding phone charger", Label::Positive),
            ("The toaster feels cheap", Label::Negative),
        ] {
            assert_eq!(label_of(text), Some(label), "{text}");
        }
        // By construction, a review's opinion words all lean one way and its
        // label follows them ("not bad" is praise, "not good" a complaint);
        // a review with none is a neutral fact or one of the few phrasings
        // the lexicon has no word for.
        let lean = |word: &str| {
            if GOOD.contains(&word) {
                1
            } else if BAD.contains(&word) || FEELS.contains(&word) {
                -1
            } else {
                0
            }
        };
        for review in pool() {
            let words = tokenize(&review.text).words;
            let leans: Vec<i32> = words
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let negated = i > 0 && words[i - 1] == "not";
                    lean(w) * if negated { -1 } else { 1 }
                })
                .filter(|&l| l != 0)
                .collect();
            if leans.is_empty() {
                continue;
            }
            assert!(
                leans.iter().all(|&l| l == leans[0]),
                "mixed opinion: {}",
                review.text
            );
            let expected = if leans[0] > 0 {
                Label::Positive
            } else {
                Label::Negative
            };
            assert_eq!(review.label, expected, "{}", review.text);
        }
    }

    #[test]
    fn no_review_is_a_training_text() {
        let corpus: std::collections::HashSet<Vec<String>> = CORPUS
            .iter()
            .map(|(text, _)| tokenize(text).words)
            .collect();
        for review in pool() {
            assert!(
                !corpus.contains(&tokenize(&review.text).words),
                "in the training corpus: {}",
                review.text
            );
        }
    }

    #[test]
    fn every_class_is_well_represented() {
        let pool = pool();
        for label in Label::ALL {
            let n = pool.iter().filter(|r| r.label == label).count();
            assert!(
                n * 4 >= pool.len(),
                "{label:?}: {n} of {} reviews",
                pool.len()
            );
        }
    }

    /// Each candidate is right on most of the pool (an accuracy alert at 0.8
    /// stays silent on this traffic), and each degradable one misreads at
    /// least ten reviews that all the others get right (what
    /// `loadgen --degrade-model` sends).
    #[test]
    fn each_candidate_reads_most_reviews_and_alone_misreads_some() {
        let pool = pool();
        for candidate in Candidate::ALL {
            let right = pool
                .iter()
                .filter(|r| candidate.classify(&tokenize(&r.text)) == r.label)
                .count();
            let accuracy = right as f64 / pool.len() as f64;
            let alone = misread_only_by(candidate);
            println!(
                "{}: accuracy {accuracy:.3} on {} reviews, {} misread by it alone",
                candidate.name(),
                pool.len(),
                alone.len()
            );
            assert!(accuracy >= 0.85, "{}: {accuracy}", candidate.name());
            if !Candidate::DEGRADABLE.contains(&candidate) {
                continue;
            }
            assert!(alone.len() >= 10, "{}: {}", candidate.name(), alone.len());
            for review in alone {
                let tokens = tokenize(&review.text);
                for other in Candidate::ALL {
                    assert_eq!(
                        other.classify(&tokens) == review.label,
                        other != candidate,
                        "{} on {:?}",
                        other.name(),
                        review.text
                    );
                }
            }
        }
    }

    /// The stage serves the most confident candidate (ties to the first
    /// declared); on the pool its answer must beat the served-prediction
    /// accuracy SLO's objective (95% in `prometheus/slos.yaml`) with room to
    /// spare, or healthy demo traffic would spend the error budget.
    #[test]
    fn the_served_answer_meets_the_accuracy_objective() {
        let pool = pool();
        let right = pool
            .iter()
            .filter(|r| {
                let tokens = tokenize(&r.text);
                let mut served = Candidate::ALL[0].score(&tokens);
                for candidate in &Candidate::ALL[1..] {
                    let scored = candidate.score(&tokens);
                    if scored.confidence > served.confidence {
                        served = scored;
                    }
                }
                served.label == r.label
            })
            .count();
        let accuracy = right as f64 / pool.len() as f64;
        println!("served accuracy {accuracy:.3} on {} reviews", pool.len());
        assert!(accuracy >= 0.97, "{accuracy}");
    }

    /// Where the pool is exported for `scripts/make-models`, from the crate
    /// root.
    const POOL_FILE: &str = "models/sentiment/reviews.tsv";

    /// The pool as `scripts/make-models` reads it: `label<TAB>text` lines
    /// under a header, in pool order. The committed file must be the pool of
    /// this build, so the reference models are trained on what the load
    /// generator sends; `PIPELENS_WRITE_POOL=1` rewrites it.
    #[test]
    fn the_committed_pool_file_is_the_pool() {
        let mut expected = String::from("label\ttext\n");
        for review in pool() {
            assert!(!review.text.contains(['\t', '\n']), "{:?}", review.text);
            expected.push_str(review.label.as_str());
            expected.push('\t');
            expected.push_str(&review.text);
            expected.push('\n');
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(POOL_FILE);
        if std::env::var_os("PIPELENS_WRITE_POOL").is_some() {
            std::fs::write(&path, &expected).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == expected,
            "{POOL_FILE} is not the pool of this build: regenerate it with \
             `PIPELENS_WRITE_POOL=1 cargo test --bin pipelens the_committed_pool_file_is_the_pool`, \
             then the models with `scripts/make-models`"
        );
    }
}
