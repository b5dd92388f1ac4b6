//! Decompression of kernel payloads, by magic, with a cap on the output size.
//!
//! Linux builds its bzImage payload with one of gzip, bzip2, lzma, xz (with the x86 BCJ
//! filter), lzo, lz4 (the legacy frame format) or zstd, and appends the uncompressed size as
//! a 32-bit little-endian word after every stream but gzip (scripts/Makefile.lib,
//! `size_append`). Each decoder here stops at the end of its stream, so that trailing word is
//! ignored — except for lz4's legacy format, which has no end marker (see [`decode_lz4_legacy`]).

use std::fmt;
use std::io::{self, Read};

use serde::Serialize;
use thiserror::Error;

/// A compression format kxen recognises by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// gzip (1f 8b).
    Gzip,
    /// xz (fd 37 7a 58 5a 00), any filter chain incl. x86 BCJ.
    Xz,
    /// The legacy .lzma format (properties 0x5d, dictionary size LE).
    Lzma,
    /// lz4 legacy frame (02 21 4c 18), as `lz4 -l` writes it.
    Lz4,
    /// zstd (28 b5 2f fd).
    Zstd,
    /// bzip2 ("BZh").
    Bzip2,
    /// lzop (89 4c 5a 4f): recognised, not supported.
    Lzo,
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Gzip => "gzip",
            Codec::Xz => "xz",
            Codec::Lzma => "lzma",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
            Codec::Bzip2 => "bzip2",
            Codec::Lzo => "lzo",
        })
    }
}

impl Codec {
    /// Recognise a compressed stream by its first bytes.
    pub fn detect(data: &[u8]) -> Option<Codec> {
        const MAGICS: &[(&[u8], Codec)] = &[
            (&[0x1f, 0x8b], Codec::Gzip),
            (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], Codec::Xz),
            (&[0x5d, 0x00, 0x00], Codec::Lzma),
            (&LZ4_LEGACY_MAGIC, Codec::Lz4),
            (&[0x28, 0xb5, 0x2f, 0xfd], Codec::Zstd),
            (b"BZh", Codec::Bzip2),
            (&[0x89, 0x4c, 0x5a, 0x4f], Codec::Lzo),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| data.starts_with(magic))
            .map(|&(_, codec)| codec)
    }
}

/// Why a compressed stream could not be decoded.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DecompressError {
    /// The stream is corrupt or truncated.
    #[error("bad kernel image: the {codec} data is corrupt or truncated: {reason}")]
    Corrupt {
        /// The codec.
        codec: Codec,
        /// The decoder's explanation.
        reason: String,
    },
    /// The output would exceed the cap.
    #[error(
        "bad kernel image: the {codec} data decompresses to more than {} MiB \
         (decompression bomb?)",
        limit >> 20
    )]
    TooLarge {
        /// The codec.
        codec: Codec,
        /// The cap in bytes.
        limit: usize,
    },
    /// A codec kxen recognises but cannot decode.
    #[error("unsupported kernel compression: {codec} (use gzip, xz, lzma, lz4, zstd or bzip2)")]
    Unsupported {
        /// The codec.
        codec: Codec,
    },
}

/// Memory the LZMA/xz decoders may use for their dictionary (Linux uses at most 64 MiB).
const LZMA_MEM_LIMIT_KIB: u32 = 256 * 1024;
/// Largest zstd window accepted (`zstd --ultra -22` uses 128 MiB).
const ZSTD_MAX_WINDOW: u64 = 256 << 20;

/// Decompress `data` (which starts with `codec`'s magic), producing at most `limit` bytes.
pub(super) fn decompress(
    codec: Codec,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |e: &dyn fmt::Display| DecompressError::Corrupt {
        codec,
        reason: e.to_string(),
    };
    let out = match codec {
        Codec::Gzip => read_capped(codec, flate2::read::GzDecoder::new(data), limit),
        Codec::Xz => read_capped(
            codec,
            lzma_rust2::XzReader::new_mem_limit(data, false, LZMA_MEM_LIMIT_KIB),
            limit,
        ),
        Codec::Lzma => {
            let reader = lzma_rust2::LzmaReader::new_mem_limit(data, LZMA_MEM_LIMIT_KIB, None)
                .map_err(|e| corrupt(&e))?;
            read_capped(codec, reader, limit)
        }
        Codec::Lz4 => decode_lz4_legacy(data, limit),
        Codec::Zstd => {
            let reader =
                ruzstd::decoding::StreamingDecoder::new_with_max_window_size(data, ZSTD_MAX_WINDOW)
                    .map_err(|e| corrupt(&e))?;
            read_capped(codec, reader, limit)
        }
        Codec::Bzip2 => read_capped(codec, bzip2::read::BzDecoder::new(data), limit),
        Codec::Lzo => Err(DecompressError::Unsupported { codec }),
    }?;
    tracing::debug!(%codec, compressed = data.len(), decompressed = out.len(), "payload decompressed");
    Ok(out)
}

/// Read a decoder to its end, failing once the output would pass `limit`.
fn read_capped(
    codec: Codec,
    mut reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DecompressError::Corrupt {
                    codec,
                    reason: e.to_string(),
                })
            }
        };
        push_capped(codec, &mut out, buf.get(..n).unwrap_or_default(), limit)?;
    }
    Ok(out)
}

fn push_capped(
    codec: Codec,
    out: &mut Vec<u8>,
    chunk: &[u8],
    limit: usize,
) -> Result<(), DecompressError> {
    if chunk.len() > limit.saturating_sub(out.len()) {
        return Err(DecompressError::TooLarge { codec, limit });
    }
    out.try_reserve(chunk.len())
        .map_err(|_| DecompressError::TooLarge { codec, limit })?;
    out.extend_from_slice(chunk);
    Ok(())
}

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Uncompressed size of every legacy-frame block but the last.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// LZ4_compressBound(8 MiB): the largest a legacy block's compressed form can be.
const LZ4_LEGACY_MAX_COMPRESSED: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;

/// Decode lz4's legacy frame: the magic, then blocks of `[u32 LE compressed size][lz4
/// block]`, each decompressing to at most 8 MiB. The format has no end marker: it ends with
/// the input, and a repeated magic starts a new frame. In a Linux payload the last 4 bytes
/// are the appended uncompressed size, which is recognised as such (it must match the
/// output length) rather than read as a block header.
fn decode_lz4_legacy(data: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let codec = Codec::Lz4;
    let corrupt = |reason: String| DecompressError::Corrupt { codec, reason };
    let mut out: Vec<u8> = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut rest = data
        .strip_prefix(&LZ4_LEGACY_MAGIC[..])
        .ok_or_else(|| corrupt("missing legacy frame magic".into()))?;
    let mut blocks = 0usize;
    while !rest.is_empty() {
        let (word, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(format!("{} stray bytes after the last block", rest.len())))?;
        if *word == LZ4_LEGACY_MAGIC {
            rest = tail;
            continue;
        }
        let word = u32::from_le_bytes(*word);
        if tail.is_empty() && blocks > 0 {
            // The appended uncompressed size (Linux's size_append).
            if u64::from(word) != out.len() as u64 {
                return Err(corrupt(format!(
                    "trailing size word says {word} bytes but the blocks decode to {}",
                    out.len()
                )));
            }
            break;
        }
        let size = usize::try_from(word).unwrap_or(usize::MAX);
        if size > LZ4_LEGACY_MAX_COMPRESSED {
            return Err(corrupt(format!(
                "block {blocks} claims {size} compressed bytes"
            )));
        }
        let compressed = tail.get(..size).ok_or_else(|| {
            corrupt(format!(
                "block {blocks} needs {size} bytes but only {} remain",
                tail.len()
            ))
        })?;
        let n = lz4_flex::block::decompress_into(compressed, &mut block)
            .map_err(|e| corrupt(format!("block {blocks}: {e}")))?;
        push_capped(codec, &mut out, block.get(..n).unwrap_or_default(), limit)?;
        rest = tail.get(size..).unwrap_or_default();
        blocks += 1;
    }
    if blocks == 0 {
        return Err(corrupt("no blocks".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial.
        (0..len).map(|i| ((i * 7) ^ (i >> 5)) as u8).collect()
    }

    pub(crate) fn lz4_legacy(data: &[u8], size_word: bool) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        if size_word {
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
        out
    }

    #[test]
    fn detects_every_codec_by_magic() {
        assert_eq!(Codec::detect(&[0x1f, 0x8b, 8]), Some(Codec::Gzip));
        assert_eq!(Codec::detect(b"\xfd7zXZ\0\0"), Some(Codec::Xz));
        assert_eq!(Codec::detect(&[0x5d, 0, 0, 0x80]), Some(Codec::Lzma));
        assert_eq!(Codec::detect(&[2, 0x21, 0x4c, 0x18]), Some(Codec::Lz4));
        assert_eq!(Codec::detect(&[0x28, 0xb5, 0x2f, 0xfd]), Some(Codec::Zstd));
        assert_eq!(Codec::detect(b"BZh9"), Some(Codec::Bzip2));
        assert_eq!(Codec::detect(b"\x89LZO"), Some(Codec::Lzo));
        assert_eq!(Codec::detect(b"\x7fELF"), None);
        assert_eq!(Codec::detect(&[0x1f]), None);
    }

    #[test]
    fn lz4_legacy_multi_block_with_and_without_size_word() {
        let data = sample(LZ4_LEGACY_BLOCK + 12345);
        for size_word in [false, true] {
            let c = lz4_legacy(&data, size_word);
            assert_eq!(decompress(Codec::Lz4, &c, usize::MAX).unwrap(), data);
        }
    }

    #[test]
    fn lz4_legacy_wrong_size_word_and_truncation_are_errors() {
        let data = sample(100_000);
        let mut c = lz4_legacy(&data, true);
        let n = c.len();
        c[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            decompress(Codec::Lz4, &c, usize::MAX),
            Err(DecompressError::Corrupt { .. })
        ));
        let c = lz4_legacy(&data, false);
        for cut in [4, 6, 8, c.len() / 2, c.len() - 1] {
            assert!(
                matches!(
                    decompress(Codec::Lz4, &c[..cut], usize::MAX),
                    Err(DecompressError::Corrupt { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn lz4_block_size_over_bound_is_refused() {
        let mut c = LZ4_LEGACY_MAGIC.to_vec();
        c.extend_from_slice(&u32::MAX.to_le_bytes());
        c.extend_from_slice(&[0; 64]);
        let err = decompress(Codec::Lz4, &c, usize::MAX).unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");
    }

    #[test]
    fn output_cap_stops_a_bomb_for_every_streaming_codec() {
        let zeros = vec![0u8; 4 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        let gz = gz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        bz.write_all(&zeros).unwrap();
        let bz = bz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &zeros[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let lz4 = lz4_legacy(&zeros, true);
        for (codec, data) in [
            (Codec::Gzip, gz),
            (Codec::Bzip2, bz),
            (Codec::Zstd, zst),
            (Codec::Lz4, lz4),
        ] {
            assert_eq!(
                decompress(codec, &data, 1 << 20),
                Err(DecompressError::TooLarge {
                    codec,
                    limit: 1 << 20
                }),
                "{codec}"
            );
            assert_eq!(decompress(codec, &data, 4 << 20).unwrap().len(), 4 << 20);
        }
    }

    #[test]
    fn lzma_header_with_huge_dictionary_is_refused_without_allocating_it() {
        // props 0x5d, dict 0xffff_0000 (4 GiB), unknown size, then garbage.
        let mut data = vec![0x5d, 0x00, 0x00, 0xff, 0xff];
        data.extend_from_slice(&[0xff; 8]);
        data.extend_from_slice(&[0u8; 32]);
        assert!(matches!(
            decompress(Codec::Lzma, &data, usize::MAX),
            Err(DecompressError::Corrupt {
                codec: Codec::Lzma,
                ..
            })
        ));
    }

    #[test]
    fn lzo_is_recognised_but_unsupported() {
        assert_eq!(
            decompress(Codec::Lzo, b"\x89LZO\0", usize::MAX),
            Err(DecompressError::Unsupported { codec: Codec::Lzo })
        );
    }
}
