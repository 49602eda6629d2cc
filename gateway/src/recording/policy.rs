//! Which streams are recorded, and in which container.

use std::fmt;
use std::str::FromStr;
use web_admin::pattern::glob_match;

use recorder::catalog::Container;
use recorder::codec::Codec;
use serde::Deserialize;

/// Which streams get recorded when they start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RecordPolicy {
    All,
    None,
    /// Stream names matching any of these patterns (`*` any run of
    /// characters, `?` one character).
    Patterns(Vec<String>),
}

impl RecordPolicy {
    pub fn records(&self, stream: &str) -> bool {
        match self {
            Self::All => true,
            Self::None => false,
            Self::Patterns(patterns) => patterns.iter().any(|p| glob_match(p, stream)),
        }
    }
}

impl FromStr for RecordPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" | "" => Ok(Self::All),
            "none" => Ok(Self::None),
            list => {
                let patterns: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
                if patterns.is_empty() {
                    return Err(format!("no stream patterns in {s:?}"));
                }
                Ok(Self::Patterns(patterns))
            }
        }
    }
}

impl TryFrom<String> for RecordPolicy {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for RecordPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::None => f.write_str("none"),
            Self::Patterns(p) => f.write_str(&p.join(",")),
        }
    }
}

/// What a recording does when a new publisher takes over its stream (an
/// encoder reconnecting after a network drop, or `publisher_takeover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReconnectMode {
    /// Close the file and start a new one.
    NewFile,
    /// Keep writing into the same file, continuing its timeline.
    Continue,
}

/// Container choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// By codec: H264, H265 and AV1 in MP4; VP8 and VP9 (and audio-only
    /// Opus) in WebM.
    Auto,
    Mp4,
    Webm,
}

impl RecordFormat {
    /// The container for a recording whose video codec is `video`. A forced
    /// container that cannot carry the codec gives way to one that can.
    pub fn container_for(self, video: Option<Codec>) -> Container {
        let natural = match video {
            Some(Codec::H264 | Codec::H265 | Codec::Av1) => Container::Mp4,
            Some(Codec::Vp8 | Codec::Vp9) | None => Container::Webm,
            Some(_) => Container::Mp4,
        };
        match (self, video) {
            (Self::Auto, _) => natural,
            // MP4 carries everything we record but VP8.
            (Self::Mp4, Some(Codec::Vp8)) => Container::Webm,
            (Self::Mp4, _) => Container::Mp4,
            // WebM carries VP8, VP9, AV1 and Opus only.
            (Self::Webm, Some(Codec::Vp8 | Codec::Vp9 | Codec::Av1) | None) => Container::Webm,
            (Self::Webm, _) => Container::Mp4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parsing() {
        assert_eq!("all".parse::<RecordPolicy>().unwrap(), RecordPolicy::All);
        assert_eq!("none".parse::<RecordPolicy>().unwrap(), RecordPolicy::None);
        let p: RecordPolicy = "cam-*, meeting".parse().unwrap();
        assert!(p.records("cam-3") && p.records("meeting") && !p.records("other"));
        assert!(",".parse::<RecordPolicy>().is_err());
    }

    #[test]
    fn containers() {
        use Container::*;
        assert_eq!(RecordFormat::Auto.container_for(Some(Codec::H264)), Mp4);
        assert_eq!(RecordFormat::Auto.container_for(Some(Codec::Vp8)), Webm);
        assert_eq!(RecordFormat::Auto.container_for(Some(Codec::Av1)), Mp4);
        assert_eq!(RecordFormat::Auto.container_for(None), Webm);
        assert_eq!(RecordFormat::Mp4.container_for(Some(Codec::Vp9)), Mp4);
        assert_eq!(RecordFormat::Mp4.container_for(Some(Codec::Vp8)), Webm);
        assert_eq!(RecordFormat::Webm.container_for(Some(Codec::H264)), Mp4);
        assert_eq!(RecordFormat::Webm.container_for(Some(Codec::Av1)), Webm);
    }
}
