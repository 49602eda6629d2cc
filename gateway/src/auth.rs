//! Bearer-token checks for publishing and watching.
//!
//! A stream key made in the admin panel is checked first. Otherwise a
//! stream's own token (from `[[stream]]`) takes precedence over the global
//! one; with neither configured, the action is open unless a live stream
//! key covers the stream, which then takes only keys.

use tracing::warn;
use web_admin::store::{KeyAction, KeyCheck, Store};

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
    #[error("stream key revoked")]
    Revoked,
    #[error("stream key expired")]
    Expired,
    #[error("stream keys cannot be checked right now")]
    KeyStore,
}

pub use web_admin::auth::principal::bearer_token as bearer;
pub use web_admin::secret::constant_time_eq;

/// Checks `presented` for `action` on `stream`; on success, returns the
/// stream key it was (if it was one).
pub fn check(
    config: &Config,
    keys: Option<&Store>,
    stream: &StreamName,
    action: Action,
    presented: Option<&str>,
) -> Result<Option<i64>, AuthError> {
    let key_action = match action {
        Action::Publish => KeyAction::Publish,
        Action::Watch => KeyAction::Watch,
    };
    if let (Some(store), Some(token)) = (keys, presented) {
        match store.check_key(stream.as_str(), key_action, token) {
            Ok(KeyCheck::Valid(id)) => return Ok(Some(id)),
            Ok(KeyCheck::Revoked(_)) => return Err(AuthError::Revoked),
            Ok(KeyCheck::Expired(_)) => return Err(AuthError::Expired),
            Ok(KeyCheck::NotForThis(_) | KeyCheck::Unknown) => {}
            Err(err) => {
                // Fail closed: a broken database must not open every stream.
                warn!("checking a stream key: {err}");
                return Err(AuthError::KeyStore);
            }
        }
    }
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
        (None, presented) => {
            let keyed = match keys.map(|k| k.stream_has_keys(stream.as_str(), key_action)) {
                None | Some(Ok(false)) => false,
                Some(Ok(true)) => true,
                Some(Err(err)) => {
                    warn!("checking stream keys: {err}");
                    return Err(AuthError::KeyStore);
                }
            };
            match (keyed, presented) {
                (false, _) => Ok(None),
                (true, None) => Err(AuthError::Missing),
                (true, Some(_)) => Err(AuthError::Invalid),
            }
        }
        (Some(_), None) => Err(AuthError::Missing),
        (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()) => Ok(None),
        (Some(_), Some(_)) => Err(AuthError::Invalid),
    }
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
        assert_eq!(
            check(&config, None, &cam, Action::Publish, Some("cam")),
            Ok(None)
        );
        assert_eq!(
            check(&config, None, &cam, Action::Publish, Some("global")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            check(&config, None, &other, Action::Publish, Some("global")),
            Ok(None)
        );
        assert_eq!(
            check(&config, None, &other, Action::Publish, None),
            Err(AuthError::Missing)
        );
        assert_eq!(check(&config, None, &other, Action::Watch, None), Ok(None));
    }

    #[test]
    fn stream_keys_close_an_open_stream() {
        use web_admin::store::NewKey;
        let config = Config::default();
        let store = Store::in_memory().expect("store");
        let cam = StreamName::parse("cam").expect("valid");
        let other = StreamName::parse("other").expect("valid");
        let keys = Some(&store);
        assert_eq!(check(&config, keys, &cam, Action::Publish, None), Ok(None));
        let (key, secret) = store
            .create_key(&NewKey {
                name: String::new(),
                stream_pattern: "cam".into(),
                action: KeyAction::Publish,
                expires_in_s: None,
            })
            .expect("key");
        assert_eq!(
            check(&config, keys, &cam, Action::Publish, Some(&secret)),
            Ok(Some(key.id))
        );
        assert_eq!(
            check(&config, keys, &cam, Action::Publish, None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check(&config, keys, &cam, Action::Publish, Some("guess")),
            Err(AuthError::Invalid)
        );
        // Other streams and watching stay open.
        assert_eq!(
            check(&config, keys, &other, Action::Publish, None),
            Ok(None)
        );
        assert_eq!(check(&config, keys, &cam, Action::Watch, None), Ok(None));
        store.revoke_key(key.id).expect("revoke");
        assert_eq!(
            check(&config, keys, &cam, Action::Publish, Some(&secret)),
            Err(AuthError::Revoked)
        );
        assert_eq!(check(&config, keys, &cam, Action::Publish, None), Ok(None));
    }
}
