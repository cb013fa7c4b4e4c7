//! What every run store must do with a shadow's late answer: add it to its
//! stored stage until the stage is judged, and never after.

use pipelens::store::{Claim, LateAnswer, ModelAnswer, RunRecord, RunStore, StageRecord};
use pipelens::Answer;

fn answer(model: &str, label: &str) -> ModelAnswer {
    ModelAnswer {
        model: model.to_owned(),
        answer: Some(Answer::Label(label.to_owned())),
    }
}

fn late(pipeline: &str, run_id: u128, model: &str) -> LateAnswer {
    LateAnswer {
        pipeline: pipeline.to_owned(),
        run_id,
        stage: "classify".to_owned(),
        answer: answer(model, "late"),
    }
}

/// Stores run `run_id`, adds two shadows' answers (one batch) and one of
/// another pipeline, claims, then adds one more after the claim.
pub async fn join_until_judged(store: &RunStore, run_id: u128) {
    store.record(RunRecord {
        pipeline: "reviews".to_owned(),
        run_id,
        at: std::time::SystemTime::now(),
        stages: vec![StageRecord {
            stage: "classify".to_owned(),
            selected: Some("served".to_owned()),
            answers: vec![answer("served", "\"quoted\" ünïcode")],
        }],
    });
    store.add_answer(late("reviews", run_id, "shadow-1"));
    store.add_answer(late("reviews", run_id, "shadow-2"));
    store.add_answer(late("other", run_id, "elsewhere"));
    store.flush().await;
    let Claim::Claimed(stage) = store.claim("reviews", run_id, "classify").await.unwrap() else {
        panic!("run {run_id:x} not claimed")
    };
    let mut models: Vec<&str> = stage.answers.iter().map(|a| a.model.as_str()).collect();
    models.sort_unstable();
    assert_eq!(models, ["served", "shadow-1", "shadow-2"]);
    assert!(
        stage
            .answers
            .contains(&answer("served", "\"quoted\" ünïcode")),
        "the stored answer survives the append: {stage:?}"
    );
    assert!(stage.answers.contains(&answer("shadow-2", "late")));
    // After the truth, a late answer changes nothing and fails nothing.
    store.add_answer(late("reviews", run_id, "too-late"));
    store.flush().await;
    assert_eq!(
        store.claim("reviews", run_id, "classify").await.unwrap(),
        Claim::AlreadyClaimed
    );
    assert!(store.status().up);
}
