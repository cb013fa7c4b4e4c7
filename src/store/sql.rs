//! What the SQL backends share: the schema's versions, the stored form of
//! a stage's answers, and how a database error is reported.

use super::{ModelAnswer, StageRecord, StoreError};

/// The newest schema this build knows. Version 1: `pipelens_runs`, one row
/// per judged stage of a run, keyed by pipeline + run id + stage, indexed
/// by time (overall and per pipeline). Version 2:
/// `pipelens_drift_references`, each pipeline's drift references, keyed by
/// pipeline + part.
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// The answers of a stage as stored (JSON: `[{"model", "answer"}]`).
pub(crate) fn encode_answers(answers: &[ModelAnswer]) -> String {
    serde_json::to_string(answers).unwrap_or_else(|_| "[]".to_owned())
}

/// Late answers grouped by their stored row (pipeline, run id as stored,
/// stage), each group's answers as one JSON array to append, in order.
pub(crate) fn group_late(late: &[super::LateAnswer]) -> Vec<(&str, String, &str, String)> {
    let mut groups: Vec<(&str, String, &str, Vec<&ModelAnswer>)> = Vec::new();
    for l in late {
        let id = super::run_id_hex(l.run_id);
        match groups
            .iter_mut()
            .find(|(p, r, s, _)| *p == l.pipeline && *r == id && *s == l.stage)
        {
            Some(group) => group.3.push(&l.answer),
            None => groups.push((&l.pipeline, id, &l.stage, vec![&l.answer])),
        }
    }
    groups
        .into_iter()
        .map(|(p, r, s, answers)| {
            let json = serde_json::to_string(&answers).unwrap_or_else(|_| "[]".to_owned());
            (p, r, s, json)
        })
        .collect()
}

/// A claimed row back into a stage record.
pub(crate) fn decode_stage(
    backend: &'static str,
    stage: &str,
    selected: Option<String>,
    answers: &str,
) -> Result<StageRecord, StoreError> {
    let answers = serde_json::from_str(answers).map_err(|e| StoreError::Unavailable {
        backend,
        message: format!("a stored run of stage `{stage}` cannot be read: {e}"),
    })?;
    Ok(StageRecord {
        stage: stage.to_owned(),
        selected,
        answers,
    })
}

/// A failed call as [`StoreError::Unavailable`], without `secret` in it.
pub(crate) fn unavailable<'a>(
    backend: &'static str,
    secret: Option<&'a str>,
) -> impl Fn(sqlx::Error) -> StoreError + 'a {
    move |e| StoreError::Unavailable {
        backend,
        message: scrub(&e.to_string(), secret),
    }
}

/// `message` with `secret` replaced by `***`.
pub(crate) fn scrub(message: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => message.replace(s, "***"),
        _ => message.to_owned(),
    }
}

/// Checks the schema version a database holds against this build's.
pub(crate) fn check_version(target: &str, found: Option<i64>) -> Result<i64, StoreError> {
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            target: target.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}
