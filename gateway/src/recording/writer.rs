//! One recording file, whichever its container.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use recorder::catalog::Container;
use recorder::codec::Codec;
use recorder::mp4::{AudioTrackConfig, Mp4Options, Mp4Recording};
use recorder::params::{AudioParams, VideoConfig};
use recorder::rtp::Frame;
use recorder::webm::WebmRecording;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Mp4(#[from] recorder::mp4::Mp4Error),
    #[error(transparent)]
    Webm(#[from] recorder::webm::WebmError),
}

pub enum Writer {
    Mp4(Box<Mp4Recording>),
    Webm(Box<WebmRecording<File>>),
}

impl Writer {
    pub fn create(
        container: Container,
        path: &Path,
        video: Option<&VideoConfig>,
        audio: Option<(Codec, AudioParams)>,
    ) -> Result<Self, WriteError> {
        Ok(match container {
            Container::Mp4 => Self::Mp4(Box::new(Mp4Recording::create_with_audio(
                path,
                video.cloned(),
                audio.map(|(codec, params)| match codec {
                    // An RTMP or RTSP source's own AAC, kept as sent.
                    Codec::Aac => AudioTrackConfig::Aac(params),
                    _ => AudioTrackConfig::Opus(params),
                }),
                Mp4Options {
                    fragment: Duration::from_secs(1),
                },
            )?)),
            Container::Webm => Self::Webm(Box::new(WebmRecording::create(
                path,
                video.cloned(),
                audio.map(|(_, params)| params),
            )?)),
        })
    }

    pub fn write(&mut self, frame: &Frame, time_ns: u64) -> Result<(), WriteError> {
        match self {
            Self::Mp4(w) => w.write(frame, time_ns)?,
            Self::Webm(w) => w.write(frame, time_ns)?,
        }
        Ok(())
    }

    /// Finishes the file (duration, index); its size comes from the file.
    pub fn finish(self) -> Result<(), WriteError> {
        match self {
            Self::Mp4(w) => {
                w.finish()?;
            }
            Self::Webm(w) => {
                w.finish()?;
            }
        }
        Ok(())
    }
}
