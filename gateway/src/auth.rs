//! Bearer-token checks for publishing and watching.
//!
//! A stream's own token (from `[[stream]]`) takes precedence over the global
//! one; with neither configured, the action is open.

use crate::config::Config;
use crate::stream_name::StreamName;

/// What a client asks to do with a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Watch,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
}

/// Extracts the token from an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks `presented` against the token required for `action` on `stream`.
pub fn check(
    config: &Config,
    stream: &StreamName,
    action: Action,
    presented: Option<&str>,
) -> Result<(), AuthError> {
    let per_stream = config.stream(stream.as_str());
    let required = match action {
        Action::Publish => per_stream
            .and_then(|s| s.publish_token.as_deref())
            .or(config.publish_token.as_deref()),
        Action::Watch => per_stream
            .and_then(|s| s.watch_token.as_deref())
            .or(config.watch_token.as_deref()),
    };
    match (required, presented) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(AuthError::Missing),
        (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()) => Ok(()),
        (Some(_), Some(_)) => Err(AuthError::Invalid),
    }
}

/// Compares without an early exit so response timing does not reveal how
/// much of a guessed token was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StreamConfig;

    #[test]
    fn per_stream_token_wins() {
        let config = Config {
            publish_token: Some("global".into()),
            streams: vec![StreamConfig {
                name: "cam".into(),
                publish_token: Some("cam".into()),
                watch_token: None,
            }],
            ..Config::default()
        };
        let cam = StreamName::parse("cam").expect("valid");
        let other = StreamName::parse("other").expect("valid");
        assert_eq!(check(&config, &cam, Action::Publish, Some("cam")), Ok(()));
        assert_eq!(
            check(&config, &cam, Action::Publish, Some("global")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            check(&config, &other, Action::Publish, Some("global")),
            Ok(())
        );
        assert_eq!(
            check(&config, &other, Action::Publish, None),
            Err(AuthError::Missing)
        );
        assert_eq!(check(&config, &other, Action::Watch, None), Ok(()));
    }

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
