//! The Xen ELF-note parser and `kernel_params`: every rule, on hostile images built here.

mod common;
use common::*;
use xen_abi::elf::ElfError;
use xen_abi::elfnote::*;
use xen_abi::features::*;

fn params(image: &[u8]) -> Result<(), NoteError> {
    parse_xen_notes(image)?.kernel_params().map(|_| ())
}

#[test]
fn note_type_numbers_and_names_match_public_elfnote_h() {
    assert_eq!(XEN_ELFNOTE_INFO, 0);
    assert_eq!(XEN_ELFNOTE_ENTRY, 1);
    assert_eq!(XEN_ELFNOTE_PAE_MODE, 9);
    assert_eq!(XEN_ELFNOTE_L1_MFN_VALID, 13);
    assert_eq!(XEN_ELFNOTE_SUPPORTED_FEATURES, 17);
    assert_eq!(XEN_ELFNOTE_PHYS32_RELOC, 19);
    assert_eq!(XEN_ELFNOTE_MAX, 19);
    assert_eq!(note_name(0), Some("INFO"));
    assert_eq!(note_name(15), Some("INIT_P2M"));
    assert_eq!(note_name(19), Some("PHYS32_RELOC"));
    assert_eq!(note_name(20), None);
}

#[test]
fn debian_like_note_set_is_parsed_with_xen_defaults() {
    let img = Builder::with_segment_notes(cat(&debian_notes())).build();
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.source, NoteSource::Segments);
    assert_eq!(n.total_notes, 18);
    assert_eq!(n.xen_notes, 16);
    assert_eq!(
        n.features_str,
        Some("!writable_page_tables|pae_pgdir_above_4gb")
    );
    let p = n.kernel_params().unwrap();
    assert_eq!(p.virt_base, VIRT_BASE);
    assert_eq!(p.paddr_offset, 0);
    assert_eq!(p.virt_kstart, KSTART);
    assert_eq!(p.virt_kend, KEND);
    assert_eq!(p.virt_entry, KSTART + 0x1c0);
    assert_eq!(p.virt_hypercall, None);
    assert_eq!(p.init_p2m, Some(0x80_0000_0000));
    assert_eq!(p.hv_start_low, Some(0xffff_8000_0000_0000));
    assert!(p.mod_start_pfn && p.suspend_cancel);
    assert_eq!(p.phys32_entry, Some(0x100_0850));
    assert_eq!(p.pae, PaeMode::Yes);
    assert_eq!(p.guest_os, Some("linux"));
    assert_eq!(p.guest_version, Some("2.6"));
    assert_eq!(p.loader, Some("generic"));
    assert_eq!(p.xen_version, Some("xen-3.0"));
    assert_eq!(p.supported_note.unwrap().submap(0), 0x8801);
    // supported = FEATURES names | SUPPORTED_FEATURES bits (bits 0, 4, 11, 15).
    assert_eq!(p.features.supported.submap(0), 0x8811);
    assert_eq!(p.features.required.submap(0), 0x1);
    assert!(p.features.unknown_required().is_empty());
    assert_eq!(n.l1_mfn_valid.map(<[u8]>::len), Some(16));
}

#[test]
fn pvgrub_like_note_set_with_zero_bases_is_accepted() {
    let notes = cat(&[
        xstr(XEN_ELFNOTE_GUEST_OS, "GRUB"),
        xstr(XEN_ELFNOTE_LOADER, "generic"),
        xstr(XEN_ELFNOTE_XEN_VERSION, "xen-3.0"),
        xnum(XEN_ELFNOTE_ENTRY, 0),
        xnum(XEN_ELFNOTE_VIRT_BASE, 0),
        xnum(XEN_ELFNOTE_PADDR_OFFSET, 0),
    ]);
    let mut b = Builder::with_segment_notes(notes);
    b.entry = 0;
    b.loads[0].vaddr = 0;
    b.loads[0].paddr = 0;
    b.loads[0].memsz = 0x41_e1f0;
    let img = b.build();
    let p = parse_xen_notes(&img).unwrap().kernel_params().unwrap();
    assert_eq!((p.virt_base, p.paddr_offset, p.virt_entry), (0, 0, 0));
    assert_eq!((p.virt_kstart, p.virt_kend), (0, 0x41_e1f0));
    assert_eq!(p.supported_note, None);
    assert_eq!(p.guest_os, Some("GRUB"));
}

#[test]
fn real_pvgrub_image_is_accepted_when_present() {
    let Ok(img) = std::fs::read("/tmp/debs/pvgrub.elf") else {
        eprintln!("skipped: /tmp/debs/pvgrub.elf absent");
        return;
    };
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.source, NoteSource::Segments);
    assert_eq!(n.raw().count(), 5);
    assert!(n.raw().all(|r| r.is_xen()));
    let p = n.kernel_params().unwrap();
    assert_eq!((p.virt_base, p.virt_entry, p.virt_kstart), (0, 0, 0));
    assert_eq!(p.virt_kend, 0x41e1f0 + 0x49418);
    assert_eq!(p.loader, Some("generic"));
}

#[test]
fn real_debian_vmlinux_is_accepted_when_present() {
    let Ok(img) = std::fs::read("/tmp/h-notes/vmlinux") else {
        eprintln!("skipped: /tmp/h-notes/vmlinux absent (extract it from the Debian vmlinuz)");
        return;
    };
    let p = parse_xen_notes(&img).unwrap().kernel_params().unwrap();
    assert_eq!(p.virt_kstart, 0xffff_ffff_8100_0000);
    assert_eq!(p.virt_kend, 0xffff_ffff_83e0_0000);
    assert_eq!(p.virt_entry, 0xffff_ffff_8304_e1c0);
    assert_eq!(p.supported_note.unwrap().submap(0), 0x8801);
    assert_eq!(p.features.required.submap(0), 1);
}

#[test]
fn raw_notes_list_every_note_of_the_source_region_in_order() {
    let img = Builder::with_segment_notes(cat(&debian_notes())).build();
    let n = parse_xen_notes(&img).unwrap();
    let raw: Vec<_> = n.raw().collect();
    assert_eq!(raw.len(), 18);
    assert_eq!(raw[0].type_name(), Some("GUEST_OS"));
    assert_eq!(raw[0].desc, b"linux\0");
    assert_eq!(raw[15].name, b"GNU");
    assert_eq!(raw[15].type_name(), None);
    assert_eq!(raw[17].n_type, XEN_ELFNOTE_PHYS32_ENTRY);
}

#[test]
fn no_notes_at_all_is_not_a_xen_kernel() {
    let img = Builder::default().build();
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.source, NoteSource::None);
    let e = n.kernel_params().unwrap_err();
    assert_eq!(e, NoteError::NotXenKernel);
    assert!(e.to_string().contains("not a Xen PV kernel"));
}

#[test]
fn only_non_xen_notes_is_not_a_xen_kernel() {
    let img = Builder::with_segment_notes(note(b"GNU", 3, &[1; 20])).build();
    assert_eq!(params(&img), Err(NoteError::NotXenKernel));
}

#[test]
fn notes_in_sections_only_are_used() {
    let img = Builder::with_section_notes(cat(&minimal_notes())).build();
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.source, NoteSource::Sections);
    assert_eq!(n.raw().count(), 4);
    let p = n.kernel_params().unwrap();
    assert_eq!(p.virt_entry, KSTART);
}

#[test]
fn sections_are_used_when_segments_hold_no_xen_note() {
    let mut b = Builder::with_segment_notes(note(b"GNU", 3, &[1; 20]));
    b.note_sections.push(cat(&minimal_notes()));
    let img = b.build();
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.source, NoteSource::Sections);
    assert_eq!(n.entry, Some(KSTART));
}

#[test]
fn segment_notes_win_over_section_notes() {
    let mut b = Builder::with_segment_notes(cat(&minimal_notes()));
    b.note_sections.push(xnum(XEN_ELFNOTE_ENTRY, KSTART + 8));
    let img = b.build();
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.source, NoteSource::Segments);
    assert_eq!(n.entry, Some(KSTART));
}

#[test]
fn note_segment_with_zero_p_offset_is_skipped() {
    let mut b = Builder::with_segment_notes(cat(&minimal_notes()));
    b.note_segment_zero_offset = true;
    // The builder also gives the notes a SHT_NOTE section: they are found there.
    let img = b.build();
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.source, NoteSource::Sections);
}

#[test]
fn legacy_xen_guest_section_only() {
    let mut b = Builder::default();
    b.loads[0].paddr = KSTART; // legacy kernels put virtual addresses in p_paddr
    b.sections.push((
        "__xen_guest".into(),
        1,
        b"GUEST_OS=linux,GUEST_VER=2.6,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,\
          HYPERCALL_PAGE=0x1002,LOADER=generic,FEATURES=!writable_page_tables|dom0,\
          PAE=yes[extended-cr3],BSD_SYMTAB\0garbage"
            .to_vec(),
    ));
    let img = b.build();
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.source, NoteSource::LegacyGuestInfo);
    assert!(n.legacy_guest_info.unwrap().ends_with("BSD_SYMTAB"));
    assert_eq!(n.raw().count(), 0);
    let p = n.kernel_params().unwrap();
    // PADDR_OFFSET defaults to VIRT_BASE with __xen_guest.
    assert_eq!(p.paddr_offset, VIRT_BASE);
    assert_eq!(p.virt_kstart, KSTART);
    assert_eq!(p.virt_entry, KSTART); // e_entry
                                      // HYPERCALL_PAGE is a PFN relative to VIRT_BASE.
    assert_eq!(p.virt_hypercall, Some(VIRT_BASE + (0x1002 << 12)));
    assert_eq!(p.pae, PaeMode::YesExtendedCr3);
    assert!(p.bsd_symtab);
    assert!(p.features.required.contains(XENFEAT_WRITABLE_PAGE_TABLES));
    assert!(p.features.supported.contains(XENFEAT_DOM0));
}

#[test]
fn legacy_numbers_accept_c_radixes_and_refuse_garbage() {
    let legacy = |s: &str| {
        let mut b = Builder::default();
        b.sections
            .push(("__xen_guest".into(), 1, s.as_bytes().to_vec()));
        parse_xen_notes(&b.build()).map(|n| n.virt_base)
    };
    assert_eq!(legacy("VIRT_BASE=0x10"), Ok(Some(16)));
    assert_eq!(legacy("VIRT_BASE=010"), Ok(Some(8)));
    assert_eq!(legacy("VIRT_BASE=10"), Ok(Some(10)));
    let e = legacy("VIRT_BASE=0xzz").unwrap_err();
    assert!(
        matches!(
            e,
            NoteError::LegacyBadNumber {
                key: "VIRT_BASE",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("VIRT_BASE=\"0xzz\""), "{e}");
    let e = legacy("HYPERCALL_PAGE=0xffffffffffffff").unwrap_err();
    assert!(matches!(e, NoteError::Overflow { .. }), "{e:?}");
}

#[test]
fn truncated_note_header_is_an_error() {
    let mut notes = cat(&minimal_notes());
    notes.extend_from_slice(&[4, 0, 0, 0, 8, 0, 0, 0]); // 8 of 12 header bytes
    let img = Builder::with_segment_notes(notes.clone()).build();
    let e = parse_xen_notes(&img).unwrap_err();
    assert!(
        matches!(
            e,
            NoteError::TruncatedHeader {
                region: Region::Segment(1),
                remaining: 8,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("truncated note header"), "{e}");
}

#[test]
fn namesz_overflowing_the_section_is_an_error() {
    let mut n = xnum(XEN_ELFNOTE_ENTRY, KSTART);
    n[0..4].copy_from_slice(&0x1000u32.to_le_bytes());
    let img = Builder::with_section_notes(n).build();
    let e = parse_xen_notes(&img).unwrap_err();
    assert!(
        matches!(e, NoteError::NameOverflow { namesz: 0x1000, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("namesz 0x1000"), "{e}");
}

#[test]
fn descsz_overflowing_the_section_is_an_error() {
    let mut n = xnum(XEN_ELFNOTE_ENTRY, KSTART);
    n[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let img = Builder::with_section_notes(n).build();
    let e = parse_xen_notes(&img).unwrap_err();
    assert!(
        matches!(
            e,
            NoteError::DescOverflow {
                region: Region::Section(1),
                descsz: u32::MAX,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("descsz 0xffffffff"), "{e}");
}

#[test]
fn descsz_3_on_a_numeric_note_is_an_error_naming_note_and_size() {
    let img = image_with(&[xraw(XEN_ELFNOTE_INIT_P2M, &[1, 2, 3])]);
    let e = parse_xen_notes(&img).unwrap_err();
    assert_eq!(
        e,
        NoteError::BadNumericSize {
            note: "INIT_P2M",
            descsz: 3
        }
    );
    assert!(
        e.to_string()
            .contains("XEN_ELFNOTE_INIT_P2M: numeric note of 3 bytes"),
        "{e}"
    );
}

#[test]
fn numeric_notes_accept_1_2_4_8_bytes() {
    for (bytes, want) in [
        (vec![0x12], 0x12u64),
        (vec![0x34, 0x12], 0x1234),
        (vec![0x78, 0x56, 0x34, 0x12], 0x1234_5678),
        (
            0x1122_3344_5566_7788u64.to_le_bytes().to_vec(),
            0x1122_3344_5566_7788,
        ),
    ] {
        let img = image_with(&[xraw(XEN_ELFNOTE_INIT_P2M, &bytes)]);
        assert_eq!(parse_xen_notes(&img).unwrap().init_p2m, Some(want));
    }
}

#[test]
fn seventy_thousand_notes_is_an_error() {
    let one = note(b"X", 1, &[]);
    let img = Builder::with_segment_notes(one.repeat(70_000)).build();
    assert_eq!(parse_xen_notes(&img).unwrap_err(), NoteError::TooManyNotes);
    // Exactly the limit is fine.
    let mut notes = one.repeat(MAX_TOTAL_NOTES - 4);
    notes.extend(cat(&minimal_notes()));
    let img = Builder::with_segment_notes(notes).build();
    assert_eq!(parse_xen_notes(&img).unwrap().total_notes, MAX_TOTAL_NOTES);
}

#[test]
fn feature_token_of_200_chars_is_an_error_naming_its_start() {
    let long = format!("writable_page_tables|{}", "a".repeat(200));
    let img = image_with(&[xstr(XEN_ELFNOTE_FEATURES, &long)]);
    let e = parse_xen_notes(&img).unwrap_err();
    assert!(
        matches!(
            e,
            NoteError::FeatureTokenTooLong {
                offset: 21,
                len: 200,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("token at offset 21 is 200 characters"),
        "{e}"
    );
    assert!(e.to_string().contains("\"aaaaaaaa"), "{e}");
    // 63 characters is still fine.
    let ok = format!("!{}", "b".repeat(62));
    assert!(parse_xen_notes(&image_with(&[xstr(XEN_ELFNOTE_FEATURES, &ok)])).is_ok());
}

#[test]
fn features_string_supported_required_and_unknown() {
    let img = image_with(&[xstr(
        XEN_ELFNOTE_FEATURES,
        "writable_descriptor_tables|!dom0||no_such|!frobnicate|!a|!b|!c|!d",
    )]);
    let n = parse_xen_notes(&img).unwrap();
    let f = n.features;
    assert!(f.supported.contains(XENFEAT_WRITABLE_DESCRIPTOR_TABLES));
    assert!(!f.required.contains(XENFEAT_WRITABLE_DESCRIPTOR_TABLES));
    assert!(f.supported.contains(XENFEAT_DOM0) && f.required.contains(XENFEAT_DOM0));
    assert_eq!(f.unknown_required(), ["frobnicate", "a", "b", "c"]);
    assert_eq!(f.unknown_required_total(), 5);
}

#[test]
fn repeated_features_notes_accumulate_like_xen() {
    let img = image_with(&[
        xstr(XEN_ELFNOTE_FEATURES, "dom0"),
        xstr(XEN_ELFNOTE_FEATURES, "!writable_page_tables"),
    ]);
    let n = parse_xen_notes(&img).unwrap();
    assert!(n.features.supported.contains(XENFEAT_DOM0));
    assert!(n.features.required.contains(XENFEAT_WRITABLE_PAGE_TABLES));
    assert_eq!(n.features_str, Some("!writable_page_tables"));
}

#[test]
fn repeated_value_note_later_wins() {
    let img = image_with(&[xnum(XEN_ELFNOTE_ENTRY, KSTART + 0x40)]);
    assert_eq!(parse_xen_notes(&img).unwrap().entry, Some(KSTART + 0x40));
}

#[test]
fn unknown_types_and_info_are_ignored_but_listed() {
    let img = image_with(&[
        xnum(XEN_ELFNOTE_INFO, 7),
        xraw(20, &[1, 2, 3]),
        xraw(0xdead, &[]),
    ]);
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.xen_notes, 7);
    assert_eq!(n.raw().filter(|r| r.type_name().is_none()).count(), 2);
    assert!(n.kernel_params().is_ok());
}

#[test]
fn only_notes_named_exactly_xen_count() {
    let img = Builder::with_segment_notes(cat(&[
        note(b"Xenon", XEN_ELFNOTE_ENTRY, &[0; 3]),
        note(b"xen", XEN_ELFNOTE_ENTRY, &[0; 3]),
    ]))
    .build();
    let n = parse_xen_notes(&img).unwrap();
    // Walked twice: the PT_NOTE segment, then (no Xen note found) its SHT_NOTE section.
    assert_eq!(
        (n.total_notes, n.xen_notes, n.source),
        (4, 0, NoteSource::None)
    );
}

#[test]
fn string_note_without_nul_is_taken_whole_and_non_utf8_is_an_error() {
    let img = image_with(&[xraw(XEN_ELFNOTE_GUEST_VERSION, b"6.1")]);
    assert_eq!(parse_xen_notes(&img).unwrap().guest_version, Some("6.1"));
    let img = image_with(&[xraw(XEN_ELFNOTE_GUEST_VERSION, &[0xff, 0xfe, 0])]);
    assert_eq!(
        parse_xen_notes(&img).unwrap_err(),
        NoteError::NotUtf8 {
            note: "GUEST_VERSION"
        }
    );
}

#[test]
fn supported_features_bitmap_any_length_multiple_of_4() {
    let words: Vec<u8> = [0x8801u32, 0x2, 0, 0, 0xffff_ffff, 7]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let img = image_with(&[xraw(XEN_ELFNOTE_SUPPORTED_FEATURES, &words)]);
    let n = parse_xen_notes(&img).unwrap();
    let s = n.supported_features.unwrap();
    assert_eq!(s.words(), [0x8801, 2, 0, 0]); // words beyond the capacity ignored
                                              // Empty bitmap: note present, no bits.
    let img = image_with(&[xraw(XEN_ELFNOTE_SUPPORTED_FEATURES, &[])]);
    let n = parse_xen_notes(&img).unwrap();
    assert_eq!(n.supported_features, Some(FeatureSet::EMPTY));
    // Absent note.
    assert_eq!(
        parse_xen_notes(&image_with(&[]))
            .unwrap()
            .supported_features,
        None
    );
    // Size not a multiple of 4.
    let e = parse_xen_notes(&image_with(&[xraw(
        XEN_ELFNOTE_SUPPORTED_FEATURES,
        &[1; 6],
    )]))
    .unwrap_err();
    assert_eq!(e, NoteError::BadBitmapSize { descsz: 6 });
}

#[test]
fn loader_or_guest_os_must_be_generic_or_linux() {
    let notes = |extra: Vec<Vec<u8>>| {
        let mut v = vec![
            xstr(XEN_ELFNOTE_XEN_VERSION, "xen-3.0"),
            xnum(XEN_ELFNOTE_VIRT_BASE, VIRT_BASE),
            xnum(XEN_ELFNOTE_ENTRY, KSTART),
        ];
        v.extend(extra);
        Builder::with_segment_notes(cat(&v)).build()
    };
    let e = params(&notes(vec![xstr(XEN_ELFNOTE_GUEST_OS, "NetBSD")])).unwrap_err();
    assert!(matches!(e, NoteError::BadLoader { .. }), "{e:?}");
    assert!(e.to_string().contains("\"NetBSD\""), "{e}");
    assert!(params(&notes(vec![xstr(XEN_ELFNOTE_GUEST_OS, "linux-6.1")])).is_ok());
    assert!(params(&notes(vec![
        xstr(XEN_ELFNOTE_GUEST_OS, "NetBSD"),
        xstr(XEN_ELFNOTE_LOADER, "generic-ish")
    ]))
    .is_ok());
    assert!(matches!(
        params(&notes(vec![])),
        Err(NoteError::BadLoader { .. })
    ));
}

#[test]
fn xen_version_must_be_xen_3_0() {
    let mk = |v: Option<&str>| {
        let mut n = vec![
            xstr(XEN_ELFNOTE_GUEST_OS, "linux"),
            xnum(XEN_ELFNOTE_VIRT_BASE, VIRT_BASE),
            xnum(XEN_ELFNOTE_ENTRY, KSTART),
        ];
        if let Some(v) = v {
            n.push(xstr(XEN_ELFNOTE_XEN_VERSION, v));
        }
        params(&Builder::with_segment_notes(cat(&n)).build())
    };
    let e = mk(Some("xen-4.0")).unwrap_err();
    assert!(
        e.to_string()
            .contains("XEN_ELFNOTE_XEN_VERSION \"xen-4.0\""),
        "{e}"
    );
    assert!(matches!(mk(None), Err(NoteError::BadXenVersion { .. })));
    assert!(mk(Some("xen-3.0-x86_64")).is_ok());
}

#[test]
fn paddr_offset_without_virt_base_is_refused() {
    let img = Builder::with_segment_notes(cat(&[
        xstr(XEN_ELFNOTE_GUEST_OS, "linux"),
        xstr(XEN_ELFNOTE_XEN_VERSION, "xen-3.0"),
        xnum(XEN_ELFNOTE_PADDR_OFFSET, 0x1000),
    ]))
    .build();
    let e = params(&img).unwrap_err();
    assert_eq!(
        e,
        NoteError::PaddrOffsetWithoutVirtBase {
            paddr_offset: 0x1000
        }
    );
    assert!(
        e.to_string().contains("XEN_ELFNOTE_PADDR_OFFSET 0x1000"),
        "{e}"
    );
}

#[test]
fn virt_base_unset_defaults_to_zero_and_entry_to_e_entry() {
    let mut b = Builder::with_segment_notes(cat(&[
        xstr(XEN_ELFNOTE_GUEST_OS, "linux"),
        xstr(XEN_ELFNOTE_XEN_VERSION, "xen-3.0"),
    ]));
    b.entry = 0x100_0010;
    let img = b.build();
    let p = parse_xen_notes(&img).unwrap().kernel_params().unwrap();
    assert_eq!((p.virt_base, p.paddr_offset), (0, 0));
    assert_eq!((p.virt_kstart, p.virt_kend), (0x100_0000, 0x120_0000));
    assert_eq!(p.virt_entry, 0x100_0010);
}

#[test]
fn entry_outside_the_kernel_is_refused() {
    for entry in [KSTART - 1, KEND, 0] {
        let e = params(&image_with(&[xnum(XEN_ELFNOTE_ENTRY, entry)])).unwrap_err();
        assert_eq!(
            e,
            NoteError::EntryOutside {
                entry,
                kstart: KSTART,
                kend: KEND
            }
        );
    }
    let e = params(&image_with(&[xnum(XEN_ELFNOTE_ENTRY, KEND)])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "XEN_ELFNOTE_ENTRY 0xffffffff81200000 is outside the kernel [0xffffffff81000000,0xffffffff81200000)"
    );
    assert!(params(&image_with(&[xnum(XEN_ELFNOTE_ENTRY, KEND - 1)])).is_ok());
}

#[test]
fn init_p2m_inside_the_kernel_is_refused() {
    let e = params(&image_with(&[xnum(XEN_ELFNOTE_INIT_P2M, KSTART + 0x1000)])).unwrap_err();
    assert_eq!(
        e,
        NoteError::InitP2mInsideKernel {
            init_p2m: KSTART + 0x1000,
            kstart: KSTART,
            kend: KEND
        }
    );
    assert!(
        e.to_string()
            .starts_with("XEN_ELFNOTE_INIT_P2M 0xffffffff81001000 is inside"),
        "{e}"
    );
    assert!(params(&image_with(&[xnum(XEN_ELFNOTE_INIT_P2M, KEND)])).is_ok());
}

#[test]
fn hypercall_page_outside_the_kernel_is_refused() {
    let e = params(&image_with(&[xnum(XEN_ELFNOTE_HYPERCALL_PAGE, KEND)])).unwrap_err();
    assert!(
        matches!(e, NoteError::HypercallPageOutside { va: KEND, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("XEN_ELFNOTE_HYPERCALL_PAGE"), "{e}");
    let img = image_with(&[xnum(XEN_ELFNOTE_HYPERCALL_PAGE, KSTART + 0x1000)]);
    let p = parse_xen_notes(&img).unwrap().kernel_params().unwrap();
    assert_eq!(p.virt_hypercall, Some(KSTART + 0x1000));
}

#[test]
fn virt_base_above_kernel_start_is_refused() {
    // VIRT_BASE above kstart, PADDR_OFFSET compensating so that entry stays inside.
    let img = Builder::with_segment_notes(cat(&[
        xstr(XEN_ELFNOTE_GUEST_OS, "linux"),
        xstr(XEN_ELFNOTE_XEN_VERSION, "xen-3.0"),
        xnum(XEN_ELFNOTE_VIRT_BASE, KSTART + 0x1000),
        xnum(XEN_ELFNOTE_PADDR_OFFSET, 0x100_1000),
        xnum(XEN_ELFNOTE_ENTRY, KSTART),
    ]))
    .build();
    let e = params(&img).unwrap_err();
    assert_eq!(
        e,
        NoteError::VirtBaseAboveKernel {
            virt_base: KSTART + 0x1000,
            kstart: KSTART
        }
    );
}

#[test]
fn kernel_start_above_end_is_refused() {
    // The paddr range wraps past 2^64 once shifted: kstart > kend.
    let mut b = Builder::with_segment_notes(cat(&[
        xstr(XEN_ELFNOTE_GUEST_OS, "linux"),
        xstr(XEN_ELFNOTE_XEN_VERSION, "xen-3.0"),
        xnum(XEN_ELFNOTE_VIRT_BASE, 0xffff_ffff_ffff_f000),
    ]));
    b.loads[0].paddr = 0;
    b.loads[0].memsz = 0x2000;
    let e = params(&b.build()).unwrap_err();
    assert!(matches!(e, NoteError::KernelRange { .. }), "{e:?}");
}

#[test]
fn load_segment_end_overflow_and_no_load_segment_are_errors() {
    let mut b = Builder::with_segment_notes(cat(&minimal_notes()));
    b.loads[0].memsz = u64::MAX;
    assert!(matches!(
        params(&b.build()),
        Err(NoteError::Overflow { .. })
    ));
    let mut b = Builder::with_segment_notes(cat(&minimal_notes()));
    b.loads.clear();
    assert_eq!(params(&b.build()), Err(NoteError::NoLoadSegments));
}

#[test]
fn pae_mode_values() {
    for (v, want) in [
        ("yes", PaeMode::Yes),
        ("no", PaeMode::No),
        ("bimodal", PaeMode::Bimodal),
    ] {
        let img = image_with(&[xstr(XEN_ELFNOTE_PAE_MODE, v)]);
        let p = parse_xen_notes(&img).unwrap().kernel_params().unwrap();
        assert_eq!(p.pae, want);
    }
    let e = params(&image_with(&[xstr(XEN_ELFNOTE_PAE_MODE, "maybe")])).unwrap_err();
    assert!(
        e.to_string().contains("XEN_ELFNOTE_PAE_MODE \"maybe\""),
        "{e}"
    );
    // The legacy-only spelling is refused in a note.
    assert!(params(&image_with(&[xstr(
        XEN_ELFNOTE_PAE_MODE,
        "yes[extended-cr3]"
    )]))
    .is_err());
}

#[test]
fn thirty_two_bit_elf_is_refused_clearly() {
    let mut b = Builder::with_segment_notes(cat(&minimal_notes()));
    b.class = 1;
    let e = parse_xen_notes(&b.build()).unwrap_err();
    assert_eq!(e, NoteError::Elf(ElfError::Class32));
    assert!(
        e.to_string()
            .contains("32-bit ELF kernels are not supported"),
        "{e}"
    );
}

#[test]
fn note_segment_outside_the_image_is_an_error() {
    let mut img = Builder::with_segment_notes(cat(&minimal_notes())).build();
    // Second program header (the PT_NOTE): p_filesz huge.
    let o = 64 + 56 + 32;
    img[o..o + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = parse_xen_notes(&img).unwrap_err();
    assert!(
        matches!(
            e,
            NoteError::Elf(ElfError::SegmentOutOfBounds { index: 1, .. })
        ),
        "{e:?}"
    );
}

#[test]
fn short_str_keeps_a_prefix_cut_at_a_char_boundary() {
    let s = ShortStr::new(&"é".repeat(30)); // 60 bytes, 2 per char
    assert_eq!(s.as_str(), "é".repeat(20));
    assert!(s.is_truncated());
    assert_eq!(s.to_string(), format!("{}...", "é".repeat(20)));
    let s = ShortStr::new("linux");
    assert_eq!((s.as_str(), s.is_truncated()), ("linux", false));
}

#[test]
fn trailing_note_without_desc_padding_is_accepted() {
    // Last note of the region: descsz 5, region ends right after the descriptor.
    let mut notes = cat(&minimal_notes());
    let mut last = xraw(XEN_ELFNOTE_GUEST_VERSION, b"6.1\0\0");
    last.truncate(last.len() - 3);
    notes.extend(last);
    let img = Builder::with_section_notes(notes).build();
    assert_eq!(parse_xen_notes(&img).unwrap().guest_version, Some("6.1"));
}
