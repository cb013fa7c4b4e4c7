//! Decoding a pipeline's input from JSON, with errors that name the field:
//! what the server answers with 400 or 422, and what batch runs and the CLI
//! report per line or file.

use serde::de::DeserializeOwned;

/// A field-level problem with an input: which field (its JSON path, such as
/// `obstacles[2].x`, or `.` for the whole input) and what is wrong. Returned
/// by decoding and by validation and conversion functions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {message}")]
pub struct FieldError {
    /// JSON path of the field.
    pub field: String,
    /// What is wrong, for the caller.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a JSON input could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The text is not JSON at all.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// The JSON does not fit the input type, or fails its validation.
    #[error(transparent)]
    Field(#[from] FieldError),
}

/// Decodes a JSON object into `T`, naming the offending field on error.
/// Inputs must be JSON objects (serde would otherwise also accept a struct
/// as an array of its fields).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, InputError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| InputError::Malformed(e.to_string()))?;
    Ok(from_value(value)?)
}

/// Decodes a parsed JSON object into `T`, naming the offending field on
/// error.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new(".", "expected a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // A missing field is reported at its parent; name the field itself
        // so the caller knows what to fix.
        let field = named_field(&message)
            .map(|f| {
                if path == "." {
                    f.to_owned()
                } else {
                    format!("{path}.{f}")
                }
            })
            .unwrap_or(path);
        FieldError { field, message }
    })
}

/// The field named in serde's "missing field `x`".
fn named_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Point {
        x: u32,
        tags: Vec<Tag>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Tag {
        name: String,
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"x": "one", "tags": []}"#, "x"),
            (r#"{"tags": []}"#, "x"),
            (r#"{"x": 1, "tags": [{"name": "a"}, {}]}"#, "tags[1].name"),
            (r#"{"x": 1, "tags": [], "y": 2}"#, "y"),
            (r#"[1, []]"#, "."),
            ("null", "."),
        ];
        for (json, field) in cases {
            match decode_json::<Point>(json.as_bytes()) {
                Err(InputError::Field(e)) => assert_eq!(e.field, *field, "{json}: {e}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(matches!(
            decode_json::<Point>(b"{\"x\": "),
            Err(InputError::Malformed(_))
        ));
    }
}
