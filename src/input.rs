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
///
/// The bytes are deserialised into `T` directly, without a
/// `serde_json::Value` in between (which cost a tree of allocations per
/// request); what is reported is the same as [`from_value`] reports.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, InputError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Not an object, or not JSON: say which, as for a parsed value.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
        return Ok(from_value(value)?);
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let decoded = serde_path_to_error::deserialize(&mut json);
    match decoded {
        Ok(value) => {
            json.end().map_err(malformed)?;
            Ok(value)
        }
        Err(e) if e.inner().is_data() => {
            let path = e.path().to_string();
            let message = without_position(&e.inner().to_string()).to_owned();
            Err(field_error(path, message).into())
        }
        Err(e) => Err(malformed(e.into_inner())),
    }
}

fn malformed(e: serde_json::Error) -> InputError {
    InputError::Malformed(e.to_string())
}

/// serde_json's message without the " at line L column C" it appends when
/// reading text (a parsed value's errors carry none).
fn without_position(message: &str) -> &str {
    let Some(at) = message.rfind(" at line ") else {
        return message;
    };
    let rest = &message[at + " at line ".len()..];
    let position = rest.split_once(" column ").is_some_and(|(line, column)| {
        !line.is_empty()
            && line.bytes().all(|b| b.is_ascii_digit())
            && !column.is_empty()
            && column.bytes().all(|b| b.is_ascii_digit())
    });
    if position {
        &message[..at]
    } else {
        message
    }
}

/// Decodes a parsed JSON object into `T`, naming the offending field on
/// error.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new(".", "expected a JSON object"));
    }
    serde_path_to_error::deserialize(value)
        .map_err(|e| field_error(e.path().to_string(), e.inner().to_string()))
}

/// The error for `message` at `path`. A missing field is reported at its
/// parent; this names the field itself so the caller knows what to fix.
fn field_error(path: String, message: String) -> FieldError {
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
                Err(InputError::Field(e)) => {
                    assert_eq!(e.field, *field, "{json}: {e}");
                    // Decoding from text says what decoding a parsed value says.
                    let value: serde_json::Value = serde_json::from_str(json).unwrap();
                    assert_eq!(Err(e), from_value::<Point>(value).map(|_| ()), "{json}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        let point: Point = decode_json(br#" {"x": 7, "tags": [{"name": "a"}]} "#).unwrap();
        assert_eq!((point.x, point.tags.len()), (7, 1));
        for bad in [
            &b"{\"x\": 1, \"tags\": []} trailing"[..],
            b"{\"x\": 1, \"tags\": [",
            b"",
        ] {
            assert!(
                matches!(decode_json::<Point>(bad), Err(InputError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            decode_json::<Point>(b"{\"x\": "),
            Err(InputError::Malformed(_))
        ));
    }
}
