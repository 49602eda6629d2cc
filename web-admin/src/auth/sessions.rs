//! Panel sessions, in memory: a restart logs everyone out, which is the
//! safe side for an admin panel.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::secret;

/// Sessions kept at most; the least recently used goes first. Bounds the
/// memory an attacker with the password could make us hold.
const MAX_SESSIONS: usize = 1024;

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token state-changing requests must echo (`X-CSRF-Token`).
    pub csrf: String,
    pub client: Option<String>,
    last_seen: Instant,
}

pub struct Sessions {
    idle: Duration,
    /// Keyed by the digest of the cookie value, so a memory dump holds no
    /// usable cookie.
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Starts a session; returns the cookie value.
    pub fn create(&self, client: Option<String>) -> String {
        let cookie = secret::generate("");
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.last_seen) < self.idle);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            secret::digest(&cookie),
            Session {
                csrf: secret::generate(""),
                client,
                last_seen: now,
            },
        );
        cookie
    }

    /// The live session of `cookie`, whose idle clock restarts.
    pub fn touch(&self, cookie: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = secret::digest(cookie);
        let now = Instant::now();
        match map.get_mut(&key) {
            Some(session) if now.duration_since(session.last_seen) < self.idle => {
                session.last_seen = now;
                Some(session.clone())
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Whether `cookie`'s session is live, without restarting its idle
    /// clock (an open event stream is not activity).
    pub fn is_live(&self, cookie: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&secret::digest(cookie))
            .is_some_and(|s| s.last_seen.elapsed() < self.idle)
    }

    pub fn remove(&self, cookie: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&secret::digest(cookie));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_on_logout() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let cookie = sessions.create(None);
        let csrf = sessions.touch(&cookie).expect("live").csrf;
        assert_eq!(sessions.touch(&cookie).expect("live").csrf, csrf);
        assert!(sessions.touch("forged").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.touch(&cookie).is_none(), "idle expiry");

        let sessions = Sessions::new(Duration::from_secs(60));
        let cookie = sessions.create(None);
        sessions.remove(&cookie);
        assert!(sessions.touch(&cookie).is_none(), "logged out");
    }
}
