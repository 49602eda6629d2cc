//! A source's URL split into what may be shown and what must not.
//!
//! Camera URLs usually carry the camera's password
//! (`rtsp://admin:secret@10.0.0.7/stream1`). retina wants the credentials
//! apart from the URL anyway, so they are taken out once here and the
//! rest of the module only ever handles the URL without them: nothing it
//! logs, stores or shows can contain the password.

use std::net::{IpAddr, SocketAddr};

use retina::client::Credentials;
use url::Url;

/// RTSP's registered port; the `url` crate knows none for `rtsp:`.
const DEFAULT_PORT: u16 = 554;
/// Passwords shorter than this are not searched for in text: replacing
/// every `1` of a message would hide more than it protects.
const MIN_SCRUBBED_SECRET: usize = 4;

/// A configured source URL, split.
#[derive(Clone)]
pub struct SourceUrl {
    /// What retina is given: the URL without user and password.
    pub url: Url,
    pub credentials: Option<Credentials>,
    /// For logs and the admin panel: `rtsp://host:port/path`, with `?…`
    /// for a query (some cameras take the password there).
    pub public: String,
}

// Hand-written so a stray `{:?}` can never print the credentials.
impl std::fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceUrl")
            .field("public", &self.public)
            .field("credentials", &self.credentials.as_ref().map(|_| "…"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    // The text itself is never repeated: it may hold the password.
    #[error("the source URL is not a valid URL")]
    Invalid,
    #[error("{0}:// sources are not supported (the RTSP client speaks rtsp:// only)")]
    Scheme(String),
    #[error("the source URL has no host")]
    NoHost,
    #[error("the user or password in the source URL is not valid percent-encoded UTF-8")]
    Encoding,
}

impl SourceUrl {
    /// Splits `raw` (`rtsp://[user[:pass]@]host[:port]/path[?query]`); the
    /// user and password are percent-decoded (`p%40ss` is `p@ss`).
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let mut url = Url::parse(raw.trim()).map_err(|_| UrlError::Invalid)?;
        if url.scheme() != "rtsp" {
            return Err(UrlError::Scheme(url.scheme().to_owned()));
        }
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.to_owned(),
            _ => return Err(UrlError::NoHost),
        };
        let username = percent_decode(url.username())?;
        let password = url.password().map(percent_decode).transpose()?;
        let credentials = (!username.is_empty() || password.is_some()).then(|| Credentials {
            username,
            password: password.unwrap_or_default(),
        });
        url.set_username("").map_err(|()| UrlError::Invalid)?;
        url.set_password(None).map_err(|()| UrlError::Invalid)?;
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let query = if url.query().is_some() { "?…" } else { "" };
        let public = format!("rtsp://{host}:{port}{}{query}", url.path());
        Ok(Self {
            url,
            credentials,
            public,
        })
    }

    /// The camera's address when the URL names it by IP: what the admin
    /// panel shows as the publisher's address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let host = self.url.host_str()?;
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        Some(SocketAddr::new(ip, self.url.port().unwrap_or(DEFAULT_PORT)))
    }

    /// `text` without anything that could be this URL's credentials:
    /// userinfo of any URL in it, and the password itself.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = scrub_credentials(text);
        if let Some(creds) = &self.credentials
            && creds.password.len() >= MIN_SCRUBBED_SECRET
        {
            text = text.replace(&creds.password, "***");
        }
        text
    }
}

/// `text` with the `user:pass@` of every `scheme://user:pass@host` removed.
pub fn scrub_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends where the path, query, fragment or text does.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        // The last `@`: an unencoded `@` in a password comes before it.
        match authority.rfind('@') {
            Some(userinfo_end) => out.push_str(&authority[userinfo_end + 1..]),
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// RFC 3986 percent-decoding, as UTF-8.
fn percent_decode(encoded: &str) -> Result<String, UrlError> {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).map_err(|_| UrlError::Encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(url: &SourceUrl) -> Option<(&str, &str)> {
        url.credentials
            .as_ref()
            .map(|c| (c.username.as_str(), c.password.as_str()))
    }

    #[test]
    fn userinfo_is_taken_out_of_the_url() {
        let url = SourceUrl::parse("rtsp://admin:secret@10.0.0.7/stream1").expect("valid");
        assert_eq!(creds(&url), Some(("admin", "secret")));
        assert_eq!(url.url.as_str(), "rtsp://10.0.0.7/stream1");
        assert_eq!(url.public, "rtsp://10.0.0.7:554/stream1");
        assert_eq!(
            url.socket_addr(),
            Some("10.0.0.7:554".parse().expect("addr"))
        );
    }

    #[test]
    fn userinfo_is_percent_decoded() {
        let url = SourceUrl::parse("rtsp://us%20er:p%40ss%3Aw%C3%B6rd@cam.local:8554/live")
            .expect("valid");
        assert_eq!(creds(&url), Some(("us er", "p@ss:wörd")));
        assert_eq!(url.url.as_str(), "rtsp://cam.local:8554/live");
        assert_eq!(url.socket_addr(), None);
        // An unencoded `@` in the password: the last one ends the userinfo.
        let url = SourceUrl::parse("rtsp://admin:p@ss@cam/live").expect("valid");
        assert_eq!(creds(&url), Some(("admin", "p@ss")));
        assert_eq!(url.public, "rtsp://cam:554/live");
        // Invalid UTF-8 after decoding.
        assert_eq!(
            SourceUrl::parse("rtsp://a:%FF@cam/").map(|_| ()),
            Err(UrlError::Encoding)
        );
    }

    #[test]
    fn user_without_password_and_no_userinfo() {
        let url = SourceUrl::parse("rtsp://viewer@cam/x").expect("valid");
        assert_eq!(creds(&url), Some(("viewer", "")));
        let url = SourceUrl::parse("rtsp://[::1]:10554/x?channel=1&pwd=hunter2").expect("valid");
        assert_eq!(creds(&url), None);
        assert_eq!(url.public, "rtsp://[::1]:10554/x?…");
        assert_eq!(
            url.url.as_str(),
            "rtsp://[::1]:10554/x?channel=1&pwd=hunter2"
        );
        assert_eq!(
            url.socket_addr(),
            Some("[::1]:10554".parse().expect("addr"))
        );
    }

    #[test]
    fn unusable_urls_are_refused_without_repeating_them() {
        assert_eq!(
            SourceUrl::parse("rtsps://a:b@cam/").map(|_| ()),
            Err(UrlError::Scheme("rtsps".into()))
        );
        assert_eq!(
            SourceUrl::parse("not a url").map(|_| ()),
            Err(UrlError::Invalid)
        );
        assert_eq!(
            SourceUrl::parse("rtsp:///path").map(|_| ()),
            Err(UrlError::NoHost)
        );
        let err = SourceUrl::parse("rtsps://admin:secret@cam/").expect_err("refused");
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn credentials_are_scrubbed_from_text() {
        assert_eq!(
            scrub_credentials("DESCRIBE rtsp://admin:secret@10.0.0.7:554/s1 failed"),
            "DESCRIBE rtsp://10.0.0.7:554/s1 failed"
        );
        assert_eq!(
            scrub_credentials("a rtsp://u:p@ss@h/x and http://x:y@z?q then rtsp://plain/"),
            "a rtsp://h/x and http://z?q then rtsp://plain/"
        );
        assert_eq!(scrub_credentials("no urls: a@b"), "no urls: a@b");
        assert_eq!(scrub_credentials("ends rtsp://u:p@h"), "ends rtsp://h");
        assert_eq!(scrub_credentials("odd ://@"), "odd ://");
    }

    #[test]
    fn the_password_itself_is_scrubbed() {
        let url = SourceUrl::parse("rtsp://admin:hunter22@cam/").expect("valid");
        assert_eq!(
            url.scrub("auth with hunter22 failed"),
            "auth with *** failed"
        );
        // Short passwords would mangle messages: only URLs are scrubbed.
        let url = SourceUrl::parse("rtsp://admin:1@cam/").expect("valid");
        assert_eq!(
            url.scrub("error 1 at rtsp://admin:1@cam/"),
            "error 1 at rtsp://cam/"
        );
        assert!(!format!("{url:?}").contains("admin"));
    }
}
