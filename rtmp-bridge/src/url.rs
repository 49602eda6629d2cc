//! `rtmp://` and `rtmps://` target URLs. The stream key is a secret (it
//! lets anyone publish to the account), so it never appears in `Display`
//! or `Debug` output, which is what logs and the API show.

use std::fmt;

use thiserror::Error;

/// A parsed publish URL: `rtmp[s]://host[:port]/app[/instance]/KEY[?query]`.
///
/// The key is the last path segment plus the query (services put tokens
/// there); the app is everything between the host and the key, which is how
/// FFmpeg and OBS split YouTube's and Twitch's URLs.
#[derive(Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    /// `rtmps://`: the connection runs over TLS.
    pub tls: bool,
    /// Host name or IP address, without brackets for IPv6.
    pub host: String,
    /// The given port, or 1935 (`rtmp`) / 443 (`rtmps`).
    pub port: u16,
    /// The application, e.g. `live2` or `app/instance`.
    pub app: String,
    /// The stream key, including any `?query`.
    pub key: String,
    /// `scheme://host:port/app`, sent in `connect`.
    pub tc_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("the URL must start with rtmp:// or rtmps://")]
    Scheme,
    #[error("the URL has no host")]
    MissingHost,
    #[error("the URL's port is not a number from 1 to 65535")]
    BadPort,
    #[error("user names and passwords in RTMP URLs are not supported")]
    UserInfo,
    #[error("the URL needs an application and a stream key: rtmp://host/app/KEY")]
    MissingKey,
}

impl RtmpUrl {
    pub fn parse(url: &str) -> Result<RtmpUrl, UrlError> {
        let url = url.trim();
        let (tls, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "rtmps://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(url, "rtmp://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme);
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        let port = port.unwrap_or(if tls { 443 } else { 1935 });

        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let path = path.trim_start_matches('/');
        let (app, last) = path.rsplit_once('/').ok_or(UrlError::MissingKey)?;
        let app = app.trim_end_matches('/');
        if app.is_empty() || last.is_empty() {
            return Err(UrlError::MissingKey);
        }
        let key = match query {
            Some(q) => format!("{last}?{q}"),
            None => last.to_owned(),
        };
        let scheme = if tls { "rtmps" } else { "rtmp" };
        let host_in_url = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Ok(RtmpUrl {
            tls,
            tc_url: format!("{scheme}://{host_in_url}:{port}/{app}"),
            host: host.to_owned(),
            port,
            app: app.to_owned(),
            key,
        })
    }
}

impl std::str::FromStr for RtmpUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RtmpUrl::parse(s)
    }
}

/// The URL with the key replaced by `****`: safe for logs.
impl fmt::Display for RtmpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/****", self.tc_url)
    }
}

impl fmt::Debug for RtmpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RtmpUrl({self})")
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), UrlError> {
    let parse_port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(UrlError::BadPort),
        Ok(n) => Ok(n),
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(UrlError::MissingHost)?;
        return match after {
            "" => Ok((host, None)),
            p => Ok((
                host,
                Some(parse_port(p.strip_prefix(':').ok_or(UrlError::BadPort)?)?),
            )),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(parse_port(port)?))),
        None => Ok((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn youtube_style() {
        let u = RtmpUrl::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh").unwrap();
        assert!(!u.tls);
        assert_eq!(u.host, "a.rtmp.youtube.com");
        assert_eq!(u.port, 1935);
        assert_eq!(u.app, "live2");
        assert_eq!(u.key, "abcd-efgh");
        assert_eq!(u.tc_url, "rtmp://a.rtmp.youtube.com:1935/live2");
    }

    #[test]
    fn rtmps_default_port_instance_and_query() {
        let u =
            RtmpUrl::parse("rtmps://live-api-s.facebook.com/rtmp/inst/FB-123?s_bl=1&a=b").unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 443);
        assert_eq!(u.app, "rtmp/inst");
        assert_eq!(u.key, "FB-123?s_bl=1&a=b");
        assert_eq!(u.tc_url, "rtmps://live-api-s.facebook.com:443/rtmp/inst");
    }

    #[test]
    fn explicit_port_and_ipv6() {
        let u = RtmpUrl::parse("rtmp://127.0.0.1:19350/live/teststream").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 19350));
        let u = RtmpUrl::parse("RTMP://[::1]:2000/live/k").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 2000));
        assert_eq!(u.tc_url, "rtmp://[::1]:2000/live");
        let u = RtmpUrl::parse("rtmp://[::1]/live/k").unwrap();
        assert_eq!(u.port, 1935);
    }

    #[test]
    fn key_is_redacted() {
        let u = RtmpUrl::parse("rtmp://host/live/secret-key?token=abc").unwrap();
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("token"), "{shown}");
        assert_eq!(u.to_string(), "rtmp://host:1935/live/****");
    }

    #[test]
    fn bad_urls() {
        assert_eq!(RtmpUrl::parse("http://h/a/k"), Err(UrlError::Scheme));
        assert_eq!(RtmpUrl::parse("rtmp:///a/k"), Err(UrlError::MissingHost));
        assert_eq!(RtmpUrl::parse("rtmp://h:0/a/k"), Err(UrlError::BadPort));
        assert_eq!(RtmpUrl::parse("rtmp://h:99999/a/k"), Err(UrlError::BadPort));
        assert_eq!(RtmpUrl::parse("rtmp://h:x/a/k"), Err(UrlError::BadPort));
        assert_eq!(RtmpUrl::parse("rtmp://u:p@h/a/k"), Err(UrlError::UserInfo));
        assert_eq!(RtmpUrl::parse("rtmp://h"), Err(UrlError::MissingKey));
        assert_eq!(RtmpUrl::parse("rtmp://h/app"), Err(UrlError::MissingKey));
        assert_eq!(RtmpUrl::parse("rtmp://h/app/"), Err(UrlError::MissingKey));
        assert_eq!(
            RtmpUrl::parse("rtmp://h/app?x=1"),
            Err(UrlError::MissingKey)
        );
    }
}
