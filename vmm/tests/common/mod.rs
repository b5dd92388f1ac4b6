//! Shared helpers for kxen's image/inspect integration tests: a tiny ELF64 writer that
//! produces a Xen PV "kernel" with Linux-like notes, bzImage/compression wrappers, and
//! the real-kernel asset lookup.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
pub const LOAD_VADDR: u64 = 0xffff_ffff_8100_0000;
pub const ENTRY: u64 = LOAD_VADDR + 0x40;
pub const HYPERCALL_PAGE: u64 = LOAD_VADDR + 0x1000;

// xen: public/elfnote.h note numbers.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
pub const XEN_ELFNOTE_LOADER: u32 = 8;
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;

/// One ELF note with name "Xen".
pub fn xen_note(ty: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&4u32.to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&ty.to_le_bytes());
    n.extend_from_slice(b"Xen\0");
    n.extend_from_slice(desc);
    while n.len() % 4 != 0 {
        n.push(0);
    }
    n
}

pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Linux-like Xen notes (as a 6.1 x86_64 kernel declares them).
pub fn linux_like_notes(features: &str) -> Vec<(u32, Vec<u8>)> {
    vec![
        (XEN_ELFNOTE_GUEST_OS, cstr("linux")),
        (XEN_ELFNOTE_GUEST_VERSION, cstr("2.6")),
        (XEN_ELFNOTE_XEN_VERSION, cstr("xen-3.0")),
        (XEN_ELFNOTE_VIRT_BASE, VIRT_BASE.to_le_bytes().to_vec()),
        (XEN_ELFNOTE_ENTRY, ENTRY.to_le_bytes().to_vec()),
        (
            XEN_ELFNOTE_HYPERCALL_PAGE,
            HYPERCALL_PAGE.to_le_bytes().to_vec(),
        ),
        (
            XEN_ELFNOTE_INIT_P2M,
            0x80_0000_0000u64.to_le_bytes().to_vec(),
        ),
        (XEN_ELFNOTE_FEATURES, cstr(features)),
        (
            XEN_ELFNOTE_SUPPORTED_FEATURES,
            0x8801u32.to_le_bytes().to_vec(),
        ),
        (XEN_ELFNOTE_PAE_MODE, cstr("yes")),
        (XEN_ELFNOTE_LOADER, cstr("generic")),
        (
            XEN_ELFNOTE_HV_START_LOW,
            0xffff_8000_0000_0000u64.to_le_bytes().to_vec(),
        ),
        (XEN_ELFNOTE_PADDR_OFFSET, 0u64.to_le_bytes().to_vec()),
    ]
}

/// A small ELF64 x86_64 executable: one PT_LOAD (8 KiB at LOAD_VADDR, physical 16 MiB)
/// and one PT_NOTE holding `notes`.
pub fn tiny_elf(notes: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let note_bytes: Vec<u8> = notes.iter().flat_map(|(t, d)| xen_note(*t, d)).collect();
    let phoff = 64u64;
    let phnum = 2u16;
    let note_off = 0x200u64;
    let load_off = 0x1000u64;
    let load_len = 0x2000u64;
    let mut f = vec![0u8; (load_off + load_len) as usize];
    // ELF header
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little-endian
    f[6] = 1; // EV_CURRENT
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&ENTRY.to_le_bytes());
    f[32..40].copy_from_slice(&phoff.to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&phnum.to_le_bytes());
    f[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    let ph = |f: &mut Vec<u8>,
              i: usize,
              ty: u32,
              flags: u32,
              off: u64,
              va: u64,
              pa: u64,
              sz: u64,
              align: u64| {
        let b = 64 + i * 56;
        f[b..b + 4].copy_from_slice(&ty.to_le_bytes());
        f[b + 4..b + 8].copy_from_slice(&flags.to_le_bytes());
        f[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
        f[b + 16..b + 24].copy_from_slice(&va.to_le_bytes());
        f[b + 24..b + 32].copy_from_slice(&pa.to_le_bytes());
        f[b + 32..b + 40].copy_from_slice(&sz.to_le_bytes());
        f[b + 40..b + 48].copy_from_slice(&sz.to_le_bytes());
        f[b + 48..b + 56].copy_from_slice(&align.to_le_bytes());
    };
    ph(
        &mut f, 0, 1, 7, load_off, LOAD_VADDR, 0x100_0000, load_len, 0x1000,
    ); // PT_LOAD RWX
    ph(&mut f, 1, 4, 4, note_off, 0, 0, note_bytes.len() as u64, 4); // PT_NOTE
    f[note_off as usize..note_off as usize + note_bytes.len()].copy_from_slice(&note_bytes);
    // Entry: a `hlt; jmp .` loop, recognisable in a dump.
    let e = (load_off + (ENTRY - LOAD_VADDR)) as usize;
    f[e..e + 3].copy_from_slice(&[0xf4, 0xeb, 0xfd]);
    f
}

/// A tiny Xen PV kernel with Linux-like notes.
pub fn tiny_kernel() -> Vec<u8> {
    tiny_elf(&linux_like_notes(
        "!writable_page_tables|pae_pgdir_above_4gb",
    ))
}

/// Wrap a payload in a bzImage: boot sector + `setup_sects` setup sectors, "HdrS" header
/// with protocol 2.15, then the protected-mode part, whose first `payload_offset` bytes are
/// filler, followed by the payload.
pub fn bzimage(payload: &[u8], setup_sects: u8) -> Vec<u8> {
    let sects = if setup_sects == 0 { 4 } else { setup_sects } as usize;
    let payload_offset = 0x3a0usize; // arbitrary "decompressor code" size
    let mut f = vec![0u8; (sects + 1) * 512 + payload_offset];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
    f[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    // Linux's bzImage carries more code after the payload; a trailer checks we use the length.
    f.extend_from_slice(&[0xcc; 64]);
    f
}

/// Linux's size_append: the uncompressed size as a 32-bit LE word after the stream.
pub fn size_append(mut stream: Vec<u8>, raw_len: usize) -> Vec<u8> {
    stream.extend_from_slice(&(raw_len as u32).to_le_bytes());
    stream
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// xz with the x86 BCJ filter in front of LZMA2, as Linux's scripts/xz_wrap.sh does.
pub fn xz_bcj(data: &[u8]) -> Vec<u8> {
    let mut opts = lzma_rust2::XzOptions::with_preset(6);
    opts.set_check_sum_type(lzma_rust2::CheckType::Crc32);
    opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
    let mut w = lzma_rust2::XzWriter::new(Vec::new(), opts).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// The legacy .lzma format (`lzma -9` output: header with unknown size, end marker).
pub fn lzma(data: &[u8]) -> Vec<u8> {
    let opts = lzma_rust2::LzmaOptions::with_preset(6);
    let mut w = lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &opts, None).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// lz4's legacy frame (`lz4 -l`), built by hand around block compression.
pub fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x02, 0x21, 0x4c, 0x18];
    for chunk in data.chunks(8 << 20) {
        let c = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(&c);
    }
    out
}

/// Where the real guests live: `$KXEN_ASSETS`, default `<workspace>/target/assets`.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("KXEN_ASSETS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/assets"),
    }
}

/// The path of a real-guest asset; `None` (after printing one line) when absent outside
/// CI; panics when absent under CI=true.
pub fn asset(name: &str) -> Option<PathBuf> {
    let p = assets_dir().join(name);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "asset {} missing under CI (run scripts/fetch-assets)",
            p.display()
        );
    }
    println!(
        "skipped: asset {} absent (run scripts/fetch-assets)",
        p.display()
    );
    None
}
