//! Kernel image formats: bzImage payloads in every codec Linux uses, compressed ELFs,
//! hostile inputs, and the real Debian kernel / PV-GRUB when the assets are present.

mod common;

use std::process::Command;

use common::*;
use kxen::image::{
    load_kernel_image, load_kernel_image_with_limit, BzImageError, Codec, DecompressError, Format,
    ImageError,
};

type Compressor = fn(&[u8]) -> Vec<u8>;

/// Each codec as Linux packs a bzImage payload (size word appended to all but gzip).
fn linux_payloads(elf: &[u8]) -> Vec<(Codec, Vec<u8>)> {
    let codecs: [(Codec, Compressor, bool); 6] = [
        (Codec::Gzip, gzip, false),
        (Codec::Xz, xz_bcj, true),
        (Codec::Lzma, lzma, true),
        (Codec::Lz4, lz4_legacy, true),
        (Codec::Zstd, zstd, true),
        (Codec::Bzip2, bzip2, true),
    ];
    codecs
        .iter()
        .map(|&(codec, f, append)| {
            let c = f(elf);
            (codec, if append { size_append(c, elf.len()) } else { c })
        })
        .collect()
}

#[test]
fn bzimage_payload_in_every_codec_yields_the_original_elf() {
    let elf = tiny_kernel();
    for (codec, payload) in linux_payloads(&elf) {
        for setup_sects in [0u8, 1, 27] {
            let img = load_kernel_image(&bzimage(&payload, setup_sects))
                .unwrap_or_else(|e| panic!("{codec} setup_sects={setup_sects}: {e}"));
            assert_eq!(img.format, Format::BzImage);
            assert_eq!(img.codec, Some(codec));
            assert_eq!(img.elf, elf, "{codec}");
            assert_eq!(img.to_string(), format!("bzImage ({codec} payload)"));
        }
    }
}

#[test]
fn xz_bcj_x86_filter_is_undone() {
    // Code with many E8/E9 (call/jmp rel32) so the BCJ filter actually rewrites bytes: a
    // decoder that ignored the filter would return different bytes.
    let mut elf = tiny_kernel();
    for (i, b) in elf.iter_mut().enumerate().skip(0x1100).take(0x800) {
        *b = if i % 5 == 0 { 0xe8 } else { (i * 13) as u8 };
    }
    let xz = xz_bcj(&elf);
    // The BCJ x86 filter id (0x04) is in the block header's filter flags.
    assert!(xz[12..40].contains(&0x04));
    let img = load_kernel_image(&bzimage(&size_append(xz, elf.len()), 1)).unwrap();
    assert_eq!(img.elf, elf);
}

#[test]
fn uncompressed_bzimage_payload_is_accepted() {
    let elf = tiny_kernel();
    let img = load_kernel_image(&bzimage(&elf, 3)).unwrap();
    assert_eq!((img.format, img.codec), (Format::BzImage, None));
    assert_eq!(img.elf, elf);
}

#[test]
fn compressed_elf_files_are_accepted() {
    let elf = tiny_kernel();
    for (codec, data) in [(Codec::Gzip, gzip(&elf)), (Codec::Xz, xz_bcj(&elf))] {
        let img = load_kernel_image(&data).unwrap();
        assert_eq!(
            (img.format, img.codec),
            (Format::CompressedElf, Some(codec))
        );
        assert_eq!(img.elf, elf);
    }
}

#[test]
fn truncated_payloads_are_typed_errors() {
    let elf = tiny_kernel();
    for (codec, payload) in linux_payloads(&elf) {
        // Drop the size word and then part of the stream.
        for keep in [payload.len() / 2, payload.len().saturating_sub(12), 7] {
            let err = load_kernel_image(&bzimage(&payload[..keep], 1))
                .expect_err(&format!("{codec} truncated to {keep}"));
            assert!(
                matches!(
                    err,
                    ImageError::Decompress(DecompressError::Corrupt { .. })
                        | ImageError::BzImage(BzImageError::UnknownPayload { .. })
                ),
                "{codec} truncated to {keep}: {err:?}"
            );
        }
    }
}

#[test]
fn payload_outside_the_file_is_refused() {
    let elf = tiny_kernel();
    let mut f = bzimage(&gzip(&elf), 1);
    f[0x248..0x24c].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    assert!(matches!(
        load_kernel_image(&f),
        Err(ImageError::BzImage(BzImageError::PayloadOutOfBounds { .. }))
    ));
    let mut f = bzimage(&gzip(&elf), 1);
    let len = f.len() as u32;
    f[0x24c..0x250].copy_from_slice(&len.to_le_bytes());
    let err = load_kernel_image(&f).unwrap_err();
    assert!(err.to_string().contains("lies outside"), "{err}");
}

#[test]
fn old_boot_protocol_is_refused() {
    let mut f = bzimage(&gzip(&tiny_kernel()), 1);
    f[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
    assert_eq!(
        load_kernel_image(&f),
        Err(ImageError::BzImage(BzImageError::OldProtocol {
            version: 0x0207
        }))
    );
}

#[test]
fn decompression_bomb_is_capped_for_every_codec() {
    // 3 MiB of zeros after the ELF: compresses to almost nothing.
    let mut elf = tiny_kernel();
    elf.resize(3 << 20, 0);
    for (codec, payload) in linux_payloads(&elf) {
        assert_eq!(
            load_kernel_image_with_limit(&bzimage(&payload, 1), 1 << 20),
            Err(ImageError::Decompress(DecompressError::TooLarge {
                codec,
                limit: 1 << 20
            })),
            "{codec}"
        );
    }
}

#[test]
fn non_elf_payload_is_not_a_kernel() {
    let err = load_kernel_image(&bzimage(&gzip(b"not an elf at all"), 1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a Xen PV kernel: the bzImage payload does not decompress to an ELF file"
    );
    let err = load_kernel_image(&bzimage(b"\x00\x01\x02\x03 unknown", 1)).unwrap_err();
    assert!(matches!(
        err,
        ImageError::BzImage(BzImageError::UnknownPayload { .. })
    ));
}

#[test]
fn corrupted_streams_never_panic() {
    let elf = tiny_kernel();
    for (codec, payload) in linux_payloads(&elf) {
        for i in (0..payload.len()).step_by(payload.len() / 97 + 1) {
            for x in [0x01u8, 0x80, 0xff] {
                let mut p = payload.clone();
                p[i] ^= x;
                // Any outcome but a panic is fine; an accepted result must be an ELF.
                if let Ok(img) = load_kernel_image(&bzimage(&p, 1)) {
                    assert!(img.elf.starts_with(b"\x7fELF"), "{codec} flip at {i}");
                }
            }
        }
    }
}

#[test]
fn random_bytes_are_refused() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for len in [1usize, 3, 64, 600, 4096] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(load_kernel_image(&bytes).is_err(), "len {len}");
    }
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Compress with the real command-line tool the way Linux's scripts/Makefile.lib does.
fn linux_tool_compress(codec: Codec, data: &[u8]) -> Option<Vec<u8>> {
    let (prog, args): (&str, &[&str]) = match codec {
        Codec::Gzip => ("gzip", &["-n", "-f", "-9", "-c"]),
        Codec::Bzip2 => ("bzip2", &["-9", "-c"]),
        Codec::Lzma => ("lzma", &["-9", "-c"]),
        // scripts/xz_wrap.sh: --check=crc32 --x86 --lzma2=,dict=32MiB
        Codec::Xz => (
            "xz",
            &["--check=crc32", "--x86", "--lzma2=,dict=32MiB", "-c"],
        ),
        Codec::Lz4 => ("lz4", &["-l", "-9", "-c"]),
        Codec::Zstd => ("zstd", &["-22", "--ultra", "-c"]),
        Codec::Lzo => return None,
    };
    if !tool(prog) {
        println!("skipped {codec}: `{prog}` not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("vmlinux.bin");
    std::fs::write(&input, data).unwrap();
    let out = Command::new(prog).args(args).arg(&input).output().unwrap();
    assert!(out.status.success(), "{prog} failed");
    let stream = out.stdout;
    Some(if codec == Codec::Gzip {
        stream
    } else {
        size_append(stream, data.len())
    })
}

#[test]
fn payloads_made_by_the_real_compression_tools_decode() {
    // A larger, code-like ELF so the tools use several blocks/filters meaningfully.
    let mut elf = tiny_kernel();
    let mut x = 1u32;
    elf.extend((0..300_000).map(|i| {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        if i % 7 == 0 {
            0xe8
        } else {
            (x >> 28) as u8
        }
    }));
    for codec in [
        Codec::Gzip,
        Codec::Bzip2,
        Codec::Lzma,
        Codec::Xz,
        Codec::Lz4,
        Codec::Zstd,
    ] {
        let Some(payload) = linux_tool_compress(codec, &elf) else {
            continue;
        };
        let img =
            load_kernel_image(&bzimage(&payload, 1)).unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(img.codec, Some(codec));
        assert!(img.elf == elf, "{codec}: decoded bytes differ");
    }
}

#[test]
fn real_debian_cloud_kernel_is_an_lz4_bzimage_of_an_elf64() {
    let Some(path) = asset("vmlinuz-cloud") else {
        return;
    };
    let img = load_kernel_image(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(img.format, Format::BzImage);
    assert_eq!(img.codec, Some(Codec::Lz4));
    assert!(
        img.elf.len() > 8 << 20,
        "vmlinux is {} bytes",
        img.elf.len()
    );
}

#[test]
fn real_pvgrub_is_a_raw_elf() {
    let Some(path) = asset("pvgrub-x86_64.elf") else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let img = load_kernel_image(&bytes).unwrap();
    assert_eq!((img.format, img.codec), (Format::Elf, None));
    assert_eq!(img.elf, bytes);
}

mod hostile {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const MAGICS: [&[u8]; 8] = [
        &[0x1f, 0x8b, 0x08, 0x00],
        &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
        &[0x5d, 0x00, 0x00],
        &[0x02, 0x21, 0x4c, 0x18],
        &[0x28, 0xb5, 0x2f, 0xfd],
        b"BZh9",
        b"\x7fELF\x02\x01\x01",
        b"",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bzImage header values and any payload bytes behind any codec magic give a
        /// result or a typed error, never a panic.
        #[test]
        fn arbitrary_bzimage_fields_and_payloads_never_panic(
            setup_sects in any::<u8>(),
            version in prop_oneof![Just(0x020fu16), any::<u16>()],
            off_delta in prop_oneof![Just(0u32), any::<u32>()],
            len_delta in prop_oneof![Just(0i64), -64i64..64, any::<u32>().prop_map(i64::from)],
            magic in 0..MAGICS.len(),
            body in vec(any::<u8>(), 0..1500),
        ) {
            let mut payload = MAGICS[magic].to_vec();
            payload.extend_from_slice(&body);
            let mut f = bzimage(&payload, setup_sects);
            f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
            let off = u32::from_le_bytes(f[0x248..0x24c].try_into().unwrap());
            f[0x248..0x24c].copy_from_slice(&off.wrapping_add(off_delta).to_le_bytes());
            let len = payload.len() as i64 + len_delta;
            f[0x24c..0x250].copy_from_slice(&(len as u32).to_le_bytes());
            if let Ok(img) = load_kernel_image_with_limit(&f, 8 << 20) {
                prop_assert!(img.elf.starts_with(b"\x7fELF"));
            }
        }

        /// Valid streams cut anywhere decode to the original or fail with a typed error.
        #[test]
        fn every_codec_cut_anywhere_is_original_or_error(cut in 0.0f64..1.0) {
            static PAYLOADS: std::sync::OnceLock<Vec<(Codec, Vec<u8>)>> = std::sync::OnceLock::new();
            let elf = tiny_kernel();
            for (codec, payload) in PAYLOADS.get_or_init(|| linux_payloads(&tiny_kernel())) {
                let codec = *codec;
                let keep = ((payload.len() as f64) * cut) as usize;
                if let Ok(img) = load_kernel_image(&bzimage(&payload[..keep], 1)) {
                    prop_assert_eq!(img.elf, elf.clone(), "{} cut at {}", codec, keep);
                }
            }
        }
    }
}
