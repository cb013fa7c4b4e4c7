//! The optional bearer token that feedback requires: ground truth changes
//! what the accuracy metrics, the quality SLO and `ModelAccuracyDegraded`
//! say, so who may send it can be restricted.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// A secret compared in constant time; its `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct FeedbackToken(Arc<[u8]>);

impl fmt::Debug for FeedbackToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FeedbackToken(<redacted>)")
    }
}

/// Why a token cannot be used; the message never holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is empty.
    #[error("the feedback token is empty; leave it unset to take feedback without one")]
    Empty,
    /// The token has a character a client cannot send in an
    /// `Authorization: Bearer` header (anything but visible ASCII).
    #[error("the feedback token must be visible ASCII characters (no spaces) to be sent as `Authorization: Bearer <token>`")]
    NotSendable,
}

impl FeedbackToken {
    /// Checks that `token` can be sent in a bearer header.
    pub(crate) fn new(token: &str) -> Result<Self, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotSendable);
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>` (the
    /// scheme in any case, as RFC 9110 allows).
    fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some(space) = value.iter().position(|b| *b == b' ') else {
            return false;
        };
        let (scheme, rest) = value.split_at(space);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return false;
        }
        let given = rest.trim_ascii();
        constant_time_eq(given, &self.0)
    }
}

/// Whether `given` equals `secret`, in a time that depends on the secret's
/// length only, never on where the two first differ.
fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != secret.len());
    for (i, s) in secret.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ s;
    }
    std::hint::black_box(diff) == 0
}

/// The middleware on the feedback routes: 401 with the JSON error body
/// unless the request carries the token.
pub(crate) async fn require(
    State(token): State<FeedbackToken>,
    request: Request,
    next: Next,
) -> Response {
    if token.accepts(request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_and_the_length_match() {
        for (given, secret, equal) in [
            (&b"s3cret"[..], &b"s3cret"[..], true),
            (b"s3creT", b"s3cret", false),
            (b"s3cre", b"s3cret", false),
            (b"s3crett", b"s3cret", false),
            (b"", b"s3cret", false),
            (b"s3cret\0", b"s3cret", false),
        ] {
            assert_eq!(constant_time_eq(given, secret), equal, "{given:?}");
        }
    }

    #[test]
    fn the_header_needs_the_bearer_scheme_and_the_token() {
        let token = FeedbackToken::new("s3cret").unwrap();
        for (header, accepted) in [
            (Some("Bearer s3cret"), true),
            (Some("bearer s3cret"), true),
            (Some("Bearer  s3cret "), true),
            (Some("Bearer s3cre"), false),
            (Some("Basic s3cret"), false),
            (Some("s3cret"), false),
            (Some("Bearer"), false),
            (None, false),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(h) = header {
                headers.insert(AUTHORIZATION, h.parse().unwrap());
            }
            assert_eq!(token.accepts(&headers), accepted, "{header:?}");
        }
    }

    #[test]
    fn unusable_tokens_are_refused_and_never_shown() {
        assert_eq!(FeedbackToken::new("").unwrap_err(), TokenError::Empty);
        assert_eq!(
            FeedbackToken::new("two words").unwrap_err(),
            TokenError::NotSendable
        );
        assert_eq!(
            FeedbackToken::new("naïve").unwrap_err(),
            TokenError::NotSendable
        );
        let token = FeedbackToken::new("s3cret").unwrap();
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
