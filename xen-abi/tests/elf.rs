//! The ELF64 reader: header validation and bounds checks, each with its own error.

mod common;
use common::*;
use xen_abi::elf::*;

fn corrupt(f: impl FnOnce(&mut Vec<u8>)) -> Result<(), ElfError> {
    let mut img = Builder::with_section_notes(note(XEN, 1, &[0; 8])).build();
    f(&mut img);
    Elf::parse(&img).map(|_| ())
}

fn put(img: &mut [u8], off: usize, bytes: &[u8]) {
    img[off..off + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn valid_image_headers_and_sections_are_read() {
    let mut b = Builder::with_segment_notes(note(XEN, 1, &[0; 8]));
    b.sections
        .push(("__xen_guest".into(), 1, b"LOADER=generic\0".to_vec()));
    let img = b.build();
    let elf = Elf::parse(&img).unwrap();
    assert_eq!(elf.header().e_machine, EM_X86_64);
    assert_eq!(elf.entry(), KSTART);
    let phs: Vec<_> = elf.program_headers().collect();
    assert_eq!(phs.len(), 2);
    assert!(phs[0].is_loadable());
    assert_eq!(phs[0].p_paddr, 0x100_0000);
    assert_eq!(elf.segment_data(&phs[0]).unwrap(), &[0x90; 64][..]);
    assert_eq!(phs[1].p_type, PT_NOTE);
    let names: Vec<_> = elf
        .section_headers()
        .map(|s| elf.section_name(&s).unwrap())
        .collect();
    assert_eq!(names, ["", ".note.seg", "__xen_guest", ".shstrtab"]);
    let sh = elf.section_by_name("__xen_guest").unwrap().unwrap();
    assert_eq!(elf.section_data(&sh).unwrap(), b"LOADER=generic\0");
    assert_eq!(elf.section_by_name("nope").unwrap(), None);
}

#[test]
fn short_image_is_too_short() {
    assert_eq!(
        Elf::parse(&[0x7f, b'E', b'L', b'F']).unwrap_err(),
        ElfError::TooShort { len: 4 }
    );
}

#[test]
fn each_bad_ident_or_header_field_has_its_own_error() {
    assert_eq!(
        corrupt(|i| i[0] = 0),
        Err(ElfError::BadMagic {
            magic: [0, b'E', b'L', b'F']
        })
    );
    assert_eq!(corrupt(|i| i[4] = 1), Err(ElfError::Class32));
    assert_eq!(corrupt(|i| i[4] = 9), Err(ElfError::BadClass { value: 9 }));
    assert_eq!(
        corrupt(|i| i[5] = 2),
        Err(ElfError::NotLittleEndian { value: 2 })
    );
    assert_eq!(
        corrupt(|i| i[6] = 0),
        Err(ElfError::BadVersion { value: 0 })
    );
    assert_eq!(
        corrupt(|i| put(i, 18, &3u16.to_le_bytes())),
        Err(ElfError::BadMachine { value: 3 })
    );
    assert_eq!(
        corrupt(|i| put(i, 16, &1u16.to_le_bytes())),
        Err(ElfError::BadType { value: 1 })
    );
    assert!(corrupt(|i| put(i, 16, &3u16.to_le_bytes())).is_ok()); // ET_DYN
    assert_eq!(
        corrupt(|i| put(i, 54, &32u16.to_le_bytes())),
        Err(ElfError::BadEntrySize {
            field: "e_phentsize",
            value: 32,
            expected: 56
        })
    );
    assert_eq!(
        corrupt(|i| put(i, 58, &40u16.to_le_bytes())),
        Err(ElfError::BadEntrySize {
            field: "e_shentsize",
            value: 40,
            expected: 64
        })
    );
}

#[test]
fn header_tables_outside_the_image_or_overflowing_are_errors() {
    let e = corrupt(|i| put(i, 32, &u64::MAX.to_le_bytes())).unwrap_err();
    assert!(
        matches!(
            e,
            ElfError::TableOutOfBounds {
                table: Table::ProgramHeaders,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("e_phoff"), "{e}");
    assert!(e.to_string().contains("0xffffffffffffffff"), "{e}");
    let e = corrupt(|i| put(i, 60, &0xffffu16.to_le_bytes())).unwrap_err();
    assert!(
        matches!(
            e,
            ElfError::TableOutOfBounds {
                table: Table::SectionHeaders,
                count: 0xffff,
                ..
            }
        ),
        "{e:?}"
    );
    let e = corrupt(|i| put(i, 56, &1000u16.to_le_bytes())).unwrap_err();
    assert!(
        matches!(
            e,
            ElfError::TableOutOfBounds {
                table: Table::ProgramHeaders,
                count: 1000,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn segment_and_section_data_bounds_are_checked() {
    let mut img = Builder::with_section_notes(note(XEN, 1, &[0; 8])).build();
    // PT_LOAD 0: p_offset near u64::MAX (overflow with p_filesz).
    put(&mut img, 64 + 8, &(u64::MAX - 1).to_le_bytes());
    // Section 1: sh_size beyond the image.
    let elf = Elf::parse(&img).unwrap();
    let ph = elf.program_header(0).unwrap();
    let e = elf.segment_data(&ph).unwrap_err();
    assert!(
        matches!(e, ElfError::SegmentOutOfBounds { index: 0, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("p_offset 0xfffffffffffffffe"), "{e}");
    let shoff = elf.header().e_shoff as usize;
    put(&mut img, shoff + 64 + 32, &0x1_0000_0000u64.to_le_bytes());
    let elf = Elf::parse(&img).unwrap();
    let sh = elf.section_header(1).unwrap();
    let e = elf.section_data(&sh).unwrap_err();
    assert!(
        matches!(
            e,
            ElfError::SectionOutOfBounds {
                index: 1,
                size: 0x1_0000_0000,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("sh_size 0x100000000"), "{e}");
    assert!(matches!(
        elf.section_header(99),
        Err(ElfError::IndexOutOfRange { index: 99, .. })
    ));
    assert!(matches!(
        elf.program_header(9),
        Err(ElfError::IndexOutOfRange { index: 9, .. })
    ));
}

#[test]
fn section_names_bad_index_offset_or_terminator_are_errors() {
    let img = Builder::with_section_notes(note(XEN, 1, &[0; 8])).build();
    let elf = Elf::parse(&img).unwrap();
    let shoff = elf.header().e_shoff as usize;
    // e_shstrndx out of range.
    let mut bad = img.clone();
    put(&mut bad, 62, &50u16.to_le_bytes());
    let elf = Elf::parse(&bad).unwrap();
    let sh = elf.section_header(1).unwrap();
    assert!(matches!(
        elf.section_name(&sh),
        Err(ElfError::BadShstrndx { value: 50, .. })
    ));
    assert!(elf.section_by_name("x").is_err());
    // e_shstrndx 0: no names, and no section can be found by name.
    let mut none = img.clone();
    put(&mut none, 62, &0u16.to_le_bytes());
    assert_eq!(
        Elf::parse(&none)
            .unwrap()
            .section_by_name(".shstrtab")
            .unwrap(),
        None
    );
    // sh_name beyond the table.
    let mut bad = img.clone();
    put(&mut bad, shoff + 64, &0xffff_fff0u32.to_le_bytes());
    let elf = Elf::parse(&bad).unwrap();
    let sh = elf.section_header(1).unwrap();
    let e = elf.section_name(&sh).unwrap_err();
    assert_eq!(
        e,
        ElfError::BadSectionName {
            index: 1,
            sh_name: 0xffff_fff0
        }
    );
    // Unterminated: point at the last byte of the table after removing its NUL.
    let mut bad = img.clone();
    let strtab = Elf::parse(&img).unwrap().shstrtab().unwrap();
    let st_off = strtab.as_ptr() as usize - img.as_ptr() as usize;
    let last = st_off + strtab.len() - 1;
    bad[last] = b'x';
    let elf = Elf::parse(&bad).unwrap();
    let sh = elf.section_header(elf.shnum() - 1).unwrap();
    assert!(matches!(
        elf.section_name(&sh),
        Err(ElfError::BadSectionName { .. })
    ));
}

#[test]
fn nobits_sections_have_no_file_data() {
    let mut b = Builder::default();
    b.sections.push((".bss".into(), SHT_NOBITS, vec![]));
    let img = b.build();
    let elf = Elf::parse(&img).unwrap();
    let mut sh = elf.section_by_name(".bss").unwrap().unwrap();
    sh.sh_size = u64::MAX;
    assert_eq!(elf.section_data(&sh).unwrap(), &[] as &[u8]);
}
