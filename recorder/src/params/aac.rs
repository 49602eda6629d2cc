//! The AAC AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1): what an RTMP
//! AAC sequence header or an RTSP `config=` parameter says about a stream.

use super::BitReader;

/// What an AudioSpecificConfig says about an AAC stream, seen from its
/// core coder.
///
/// HE-AAC signalled explicitly (object type 5 for SBR, 29 for SBR + PS)
/// is reported as its core: `object_type` is the core's (AAC-LC, 2, in
/// practice) and `sample_rate` the core's rate, with the SBR output rate
/// in `sbr_sample_rate`. That is the view everything downstream is built
/// on: an access unit holds 1024 core samples, and the MP4 sink, which
/// writes its own AAC-LC AudioSpecificConfig from `(sample_rate,
/// channels)`, then times samples correctly, and decoders that know SBR
/// find it in the stream anyway (implicit signalling). Backward-compatible
/// signalling (the `0x2b7` sync extension after the core's config) is not
/// read: such a config reads as its AAC-LC core, which is also how it is
/// meant to look to a decoder that ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// Audio object type of the core coder: 2 for AAC-LC.
    pub object_type: u8,
    /// The core coder's sampling rate, in Hz.
    pub sample_rate: u32,
    /// Channels the core decodes to; for channel configuration 0, counted
    /// from the program config element. With parametric stereo the core is
    /// mono (1) and only a PS-aware decoder outputs two.
    pub channels: u8,
    /// Samples per access unit (1024 or 960; 512 or 480 for AAC-LD), for
    /// object types whose frame length the config states; `None` otherwise.
    pub frame_samples: Option<u16>,
    /// HE-AAC signalled explicitly: the SBR output rate.
    pub sbr_sample_rate: Option<u32>,
    /// HE-AACv2 signalled explicitly (object type 29): parametric stereo.
    pub parametric_stereo: bool,
}

/// Sampling rates by `samplingFrequencyIndex`; 13 and 14 are reserved and
/// 15 escapes to an explicit 24-bit rate.
const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

const AOT_SBR: u8 = 5;
const AOT_PS: u8 = 29;
const AOT_ER_AAC_LD: u8 = 23;

impl AacConfig {
    /// Parses an AudioSpecificConfig; `None` for reserved values, object
    /// type 0, a zero rate or truncated input.
    pub fn parse(asc: &[u8]) -> Option<AacConfig> {
        let mut r = BitReader::new(asc);
        let mut object_type = object_type(&mut r)?;
        let sample_rate = sample_rate(&mut r)?;
        let channel_config = r.u8(4)?;
        let mut sbr_sample_rate = None;
        let mut parametric_stereo = false;
        if matches!(object_type, AOT_SBR | AOT_PS) {
            parametric_stereo = object_type == AOT_PS;
            // The rate read above is the core's; the extension's follows,
            // then the core's object type.
            sbr_sample_rate = Some(self::sample_rate(&mut r)?);
            object_type = self::object_type(&mut r)?;
            if object_type == 22 {
                r.skip(4)?; // extensionChannelConfiguration (ER BSAC)
            }
            // An explicit SBR config around an SBR core is nonsense.
            if matches!(object_type, AOT_SBR | AOT_PS) {
                return None;
            }
        }
        let mut channels = fixed_channels(channel_config);
        let mut frame_samples = None;
        if is_general_audio(object_type) {
            // GASpecificConfig (§4.4.1).
            let short_frames = r.bit()?; // frameLengthFlag
            frame_samples = Some(match (object_type == AOT_ER_AAC_LD, short_frames) {
                (false, false) => 1024,
                (false, true) => 960,
                (true, false) => 512,
                (true, true) => 480,
            });
            if r.bit()? {
                r.skip(14)?; // dependsOnCoreCoder: coreCoderDelay
            }
            r.skip(1)?; // extensionFlag
            if channel_config == 0 {
                channels = Some(program_config_channels(&mut r)?);
            }
        }
        Some(AacConfig {
            object_type,
            sample_rate,
            channels: channels.filter(|c| *c > 0)?,
            frame_samples,
            sbr_sample_rate,
            parametric_stereo,
        })
    }
}

/// GetAudioObjectType(): 5 bits, 31 escaping to 32 + 6 more.
fn object_type(r: &mut BitReader<'_>) -> Option<u8> {
    let t = r.u8(5)?;
    let t = if t == 31 { 32 + r.u8(6)? } else { t };
    (t != 0).then_some(t)
}

fn sample_rate(r: &mut BitReader<'_>) -> Option<u32> {
    let rate = match r.u8(4)? {
        15 => r.u32(24)?,
        index => *SAMPLE_RATES.get(usize::from(index))?,
    };
    (rate > 0).then_some(rate)
}

/// Channel count of a channelConfiguration (Table 1.19, with the 7.1 and
/// 22.2 layouts of later amendments); `None` for 0 (a program config
/// element follows) and reserved values.
fn fixed_channels(config: u8) -> Option<u8> {
    match config {
        1..=6 => Some(config),
        7 | 12 | 14 => Some(8),
        11 => Some(7),
        13 => Some(24),
        _ => None,
    }
}

/// Object types whose config is a GASpecificConfig: AAC main, LC, SSR,
/// LTP, scalable, TwinVQ and their error-resilient forms.
fn is_general_audio(object_type: u8) -> bool {
    matches!(object_type, 1..=4 | 6 | 7 | 17 | 19..=23)
}

/// Counts the channels of a program_config_element (§4.4.1.1): one per
/// single channel element, two per channel pair, one per LFE.
fn program_config_channels(r: &mut BitReader<'_>) -> Option<u8> {
    r.skip(4 + 2 + 4)?; // element_instance_tag, object_type, sampling index
    let front = r.u8(4)?;
    let side = r.u8(4)?;
    let back = r.u8(4)?;
    let lfe = r.u8(2)?;
    r.skip(3 + 4)?; // num_assoc_data_elements, num_valid_cc_elements
    for _ in 0..2 {
        // mono_mixdown, stereo_mixdown: element numbers
        if r.bit()? {
            r.skip(4)?;
        }
    }
    if r.bit()? {
        r.skip(3)?; // matrix_mixdown_idx, pseudo_surround_enable
    }
    let mut channels = lfe;
    for _ in 0..u32::from(front) + u32::from(side) + u32::from(back) {
        let pair = r.bit()?; // *_element_is_cpe
        r.skip(4)?; // *_element_tag_select
        channels += 1 + u8::from(pair);
    }
    r.skip(4 * usize::from(lfe))?; // lfe_element_tag_select
    Some(channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes fields MSB first, zero-padded to a byte.
    fn bits(fields: &[(u32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = 0;
        for &(value, width) in fields {
            for i in (0..width).rev() {
                if n % 8 == 0 {
                    out.push(0);
                }
                if value >> i & 1 == 1 {
                    *out.last_mut().expect("pushed") |= 0x80 >> (n % 8);
                }
                n += 1;
            }
        }
        out
    }

    fn lc(sample_rate: u32, channels: u8) -> AacConfig {
        AacConfig {
            object_type: 2,
            sample_rate,
            channels,
            frame_samples: Some(1024),
            sbr_sample_rate: None,
            parametric_stereo: false,
        }
    }

    #[test]
    fn aac_lc() {
        assert_eq!(AacConfig::parse(&[0x12, 0x10]), Some(lc(44100, 2)));
        assert_eq!(AacConfig::parse(&[0x11, 0x88]), Some(lc(48000, 1)));
        // frameLengthFlag: 960-sample frames.
        let short = AacConfig::parse(&[0x12, 0x14]).expect("asc");
        assert_eq!(short.frame_samples, Some(960));
        // An explicit rate (index 15) and the 7.1 layout (7).
        let asc = bits(&[(2, 5), (15, 4), (37800, 24), (7, 4), (0, 3)]);
        assert_eq!(AacConfig::parse(&asc), Some(lc(37800, 8)));
    }

    #[test]
    fn explicit_sbr_reports_the_core() {
        // HE-AAC: SBR at 44.1 kHz over an AAC-LC core at 22.05 kHz.
        let he = AacConfig::parse(&[0x2b, 0x92, 0x08, 0x00]).expect("asc");
        assert_eq!(
            he,
            AacConfig {
                sbr_sample_rate: Some(44100),
                ..lc(22050, 2)
            }
        );
        // HE-AACv2: SBR + PS at 48 kHz over a mono core at 24 kHz.
        let v2 = AacConfig::parse(&[0xeb, 0x09, 0x88, 0x00]).expect("asc");
        assert_eq!(
            v2,
            AacConfig {
                sbr_sample_rate: Some(48000),
                parametric_stereo: true,
                ..lc(24000, 1)
            }
        );
        // An SBR config around another SBR config is corrupt.
        assert_eq!(
            AacConfig::parse(&bits(&[(5, 5), (6, 4), (2, 4), (3, 4), (5, 5)])),
            None
        );
    }

    #[test]
    fn escaped_object_type_and_program_config() {
        // 31 + 6 bits: object type 42 (USAC), which has no GASpecificConfig.
        let usac = AacConfig::parse(&bits(&[(31, 5), (10, 6), (3, 4), (2, 4)])).expect("asc");
        assert_eq!(
            (usac.object_type, usac.sample_rate, usac.channels),
            (42, 48000, 2)
        );
        assert_eq!(usac.frame_samples, None);
        // Channel configuration 0: a 5.1 program config element (front
        // SCE + CPE, back CPE, one LFE).
        let asc = bits(&[
            (2, 5),
            (3, 4),
            (0, 4),
            (0, 3), // GASpecificConfig flags
            (0, 4), // element_instance_tag
            (1, 2),
            (3, 4),
            (2, 4), // front
            (0, 4), // side
            (1, 4), // back
            (1, 2), // lfe
            (0, 3),
            (0, 4),
            (0, 3), // no mixdowns
            (0, 5),
            (0b1_0000, 5), // front SCE, CPE (is_cpe, then the tag)
            (0b1_0000, 5), // back CPE
            (0, 4),        // LFE tag
        ]);
        assert_eq!(AacConfig::parse(&asc), Some(lc(48000, 6)));
        // The same, cut inside the element list.
        assert_eq!(AacConfig::parse(&asc[..5]), None);
    }

    #[test]
    fn reserved_and_truncated_configs_are_refused() {
        for asc in [
            &[][..],
            &[0x12][..],
            &[0x00, 0x10][..],                                      // object type 0
            &bits(&[(2, 5), (13, 4), (2, 4), (0, 3)])[..],          // reserved rate
            &bits(&[(2, 5), (4, 4), (8, 4), (0, 3)])[..],           // reserved layout
            &bits(&[(2, 5), (4, 4), (0, 4), (0, 3)])[..],           // PCE missing
            &bits(&[(2, 5), (15, 4), (0, 24), (2, 4), (0, 3)])[..], // rate 0
        ] {
            assert_eq!(AacConfig::parse(asc), None, "{asc:02x?}");
        }
        for len in 0..4 {
            let _ = AacConfig::parse(&[0xeb, 0x09, 0x88, 0x00][..len]);
        }
    }
}
