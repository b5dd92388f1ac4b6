//! Hostile input never panics the ELF reader, the note parser or `kernel_params`.

mod common;
use common::*;
use proptest::prelude::*;
use xen_abi::elf::Elf;
use xen_abi::elfnote::*;
use xen_abi::negotiate::*;

fn exercise(img: &[u8]) {
    if let Ok(elf) = Elf::parse(img) {
        for ph in elf.program_headers() {
            let _ = elf.segment_data(&ph);
        }
        for sh in elf.section_headers() {
            let _ = elf.section_data(&sh);
            let _ = elf.section_name(&sh);
        }
        let _ = elf.section_by_name("__xen_guest");
    }
    if let Ok(n) = parse_xen_notes(img) {
        let _ = n.raw().count();
        if let Ok(p) = n.kernel_params() {
            for mode in [LaunchMode::Privileged, LaunchMode::Unprivileged] {
                let _ = check_launch(&p, mode);
                let _ = features_submap(mode, &p, KXEN_IMPLEMENTED, 0);
            }
        }
    }
}

fn valid_images() -> Vec<Vec<u8>> {
    let mut legacy = Builder::default();
    legacy.sections.push((
        "__xen_guest".into(),
        1,
        b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,HYPERCALL_PAGE=0x1001,FEATURES=!dom0\0".to_vec(),
    ));
    vec![
        Builder::with_segment_notes(cat(&debian_notes())).build(),
        Builder::with_section_notes(cat(&minimal_notes())).build(),
        legacy.build(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_elf_magic_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 64..2048)
    ) {
        bytes[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        bytes[18] = 62;
        bytes[19] = 0;
        exercise(&bytes);
    }

    #[test]
    fn mutated_valid_images_never_panic(
        which in 0usize..3,
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut img = valid_images().swap_remove(which);
        for (idx, byte) in muts {
            let i = idx.index(img.len());
            img[i] = byte;
        }
        if let Some(t) = truncate {
            let n = t.index(img.len());
            img.truncate(n);
        }
        exercise(&img);
    }

    #[test]
    fn random_note_payloads_never_panic(
        notes in proptest::collection::vec(
            (0u32..24, proptest::collection::vec(any::<u8>(), 0..80)), 0..24),
        in_section in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        for (t, d) in &notes {
            bytes.extend(xraw(*t, d));
        }
        let img = if in_section {
            Builder::with_section_notes(bytes).build()
        } else {
            Builder::with_segment_notes(bytes).build()
        };
        exercise(&img);
    }
}
