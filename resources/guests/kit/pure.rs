//! Pure helpers shared by the guest kit and the host-side unit tests (`kxen-tests`).
//!
//! No `unsafe`, no allocation, `core` only: this file is compiled both into every guest and
//! into the host test crate (via `#[path]`), where its unit tests run.

#![allow(dead_code)]

/// Size of one hypercall-page entry.
pub const HYPERCALL_ENTRY_SIZE: usize = 32;
/// The iret entry number (public/xen.h `__HYPERVISOR_iret`).
pub const IRET_ENTRY: u32 = 23;

/// The 32 bytes Xen writes for hypercall-page entry `i` of a 64-bit PV guest.
///
/// xen: arch/x86 hypercall page for ring-3 kernels, summarised in xen-abi-facts.md:
/// `push %rcx; push %r11; mov $i,%eax; syscall; pop %r11; pop %rcx; ret`, and for the iret
/// entry `push %rcx; push %r11; push %rax; mov $23,%eax; syscall`; the rest is `int3` (0xCC).
pub fn expected_hypercall_entry(i: u32) -> [u8; HYPERCALL_ENTRY_SIZE] {
    let mut e = [0xccu8; HYPERCALL_ENTRY_SIZE];
    let n = i.to_le_bytes();
    if i == IRET_ENTRY {
        let code = [
            0x51, 0x41, 0x53, 0x50, 0xb8, n[0], n[1], n[2], n[3], 0x0f, 0x05,
        ];
        e[..code.len()].copy_from_slice(&code);
    } else {
        let code = [
            0x51, 0x41, 0x53, 0xb8, n[0], n[1], n[2], n[3], 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3,
        ];
        e[..code.len()].copy_from_slice(&code);
    }
    e
}

/// kxen's ring-0 area (L4 slot 257), where its exit page is.
pub const KXEN_RING0_AREA: core::ops::Range<u64> = 0xffff_8080_0000_0000..0xffff_8100_0000_0000;

/// Whether hypercall-page entry `i` keeps Xen's contract: either Xen's own bytes
/// ([`expected_hypercall_entry`]), or kxen's form, which saves and restores the same
/// registers, pushes the same iret frame and leaves by a store to kxen's exit page instead of
/// `syscall`: `push %rcx; push %r11; [push %rax;] mov $i,%eax; lea 12(%rip),%rcx; pushfq;
/// pop %r11; mov %eax,<exit page in slot 257>; [pop %r11; pop %rcx; ret]`, then `int3`s.
pub fn hypercall_entry_keeps_xens_contract(i: u32, entry: &[u8]) -> bool {
    if entry.len() != HYPERCALL_ENTRY_SIZE {
        return false;
    }
    if entry == expected_hypercall_entry(i) {
        return true;
    }
    let n = i.to_le_bytes();
    let iret = i == IRET_ENTRY;
    let (head, rest): (&[u8], &[u8]) = if iret {
        entry.split_at(9)
    } else {
        entry.split_at(8)
    };
    let want_head: &[u8] = if iret {
        &[0x51, 0x41, 0x53, 0x50, 0xb8, n[0], n[1], n[2], n[3]]
    } else {
        &[0x51, 0x41, 0x53, 0xb8, n[0], n[1], n[2], n[3]]
    };
    if head != want_head || rest.len() < 19 {
        return false;
    }
    let (leave, tail) = rest.split_at(19);
    if leave[..11]
        != [
            0x48, 0x8d, 0x0d, 0x0c, 0x00, 0x00, 0x00, 0x9c, 0x41, 0x5b, 0xa3,
        ]
    {
        return false;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&leave[11..19]);
    if !KXEN_RING0_AREA.contains(&u64::from_le_bytes(a)) {
        return false;
    }
    let fill = if iret {
        tail
    } else {
        if tail.len() < 4 || tail[..4] != [0x41, 0x5b, 0x59, 0xc3] {
            return false;
        }
        &tail[4..]
    };
    fill.iter().all(|&b| b == 0xcc)
}

/// Name of XENFEAT bit `bit` (public/features.h), if known.
pub fn feature_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        0 => "writable_page_tables",
        1 => "writable_descriptor_tables",
        2 => "auto_translated_physmap",
        3 => "supervisor_mode_kernel",
        4 => "pae_pgdir_above_4gb",
        5 => "mmu_pt_update_preserve_ad",
        6 => "highmem_assist",
        7 => "gnttab_map_avail_bits",
        8 => "hvm_callback_vector",
        9 => "hvm_safe_pvclock",
        10 => "hvm_pirqs",
        11 => "dom0",
        12 => "grant_map_identity",
        13 => "memory_op_vnode_supported",
        14 => "ARM_SMCCC_supported",
        15 => "linux_rsdp_unrestricted",
        16 => "not_direct_mapped",
        17 => "direct_mapped",
        18 => "runstate_phys_area",
        19 => "vcpu_time_phys_area",
        20 => "dm_msix_all_writes",
        _ => return None,
    })
}

/// `(major, minor)` from a `XENVER_version` result (`major << 16 | minor`).
pub fn split_version(v: i64) -> (u32, u32) {
    let v = v as u64 as u32;
    (v >> 16, v & 0xffff)
}

/// The bytes before the first NUL, or `None` when `buf` holds no NUL.
pub fn c_str(buf: &[u8]) -> Option<&[u8]> {
    buf.iter().position(|&b| b == 0).map(|n| &buf[..n])
}

pub fn round_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// x86_64 canonical address (48-bit virtual addresses).
pub fn is_canonical(va: u64) -> bool {
    let top = (va as i64) >> 47;
    top == 0 || top == -1
}

/// Xen's PV start-of-day layout, as far as a guest can check it (xg_dom_x86.c,
/// xg_dom_core.c): p2m list, then start_info, xenstore, console pages, then the page
/// tables, then one boot-stack page; the initial mapping ends on a 4 MiB boundary with at
/// least 512 KiB to spare after the boot stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct Layout {
    pub virt_base: u64,
    pub image_end: u64,
    pub nr_pages: u64,
    pub mfn_list: u64,
    pub start_info: u64,
    pub store_mfn: u64,
    pub console_mfn: u64,
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    /// End of the contiguous initial mapping from `virt_base` (found by walking the tables).
    pub mapping_end: u64,
}

impl Layout {
    pub fn pfn_of(&self, va: u64) -> u64 {
        va.wrapping_sub(self.virt_base) / 4096
    }
    /// Top of the boot stack page (the page right after the page tables).
    pub fn boot_stack_top(&self) -> u64 {
        self.pt_base + (self.nr_pt_frames + 1) * 4096
    }
    /// Every rule a guest can check, as `(rule, holds)` pairs.
    pub fn rules(&self) -> [(&'static str, bool); 12] {
        let page = 4096;
        let p2m_end = round_up(self.mfn_list + self.nr_pages * 8, page);
        let si_pfn = self.pfn_of(self.start_info);
        let modules_ok = if self.mod_len == 0 {
            self.mod_start == 0 && self.mfn_list == self.image_end
        } else {
            self.mod_start >= self.image_end && self.mod_start + self.mod_len <= self.mfn_list
        };
        [
            (
                "p2m_after_image_and_modules",
                self.mfn_list & (page - 1) == 0 && modules_ok,
            ),
            ("start_info_after_p2m", self.start_info == p2m_end),
            ("store_page_after_start_info", self.store_mfn == si_pfn + 1),
            ("console_page_after_store", self.console_mfn == si_pfn + 2),
            (
                "page_tables_after_console",
                self.pt_base == self.start_info + 3 * page,
            ),
            ("pt_base_page_aligned", self.pt_base & (page - 1) == 0),
            ("nr_pt_frames_at_least_4", self.nr_pt_frames >= 4),
            (
                "mapping_end_4mib_aligned",
                self.mapping_end & ((4 << 20) - 1) == 0,
            ),
            (
                "spare_512k_after_boot_stack",
                self.boot_stack_top() + (512 << 10) <= self.mapping_end,
            ),
            (
                "mapping_covers_boot_stack",
                self.mapping_end >= self.boot_stack_top(),
            ),
            (
                "mapping_within_ram",
                self.mapping_end.wrapping_sub(self.virt_base) <= self.nr_pages * page,
            ),
            (
                "store_console_in_ram",
                self.store_mfn < self.nr_pages && self.console_mfn < self.nr_pages,
            ),
        ]
    }
}

/// A line buffer: bytes accumulate until a newline (or a full buffer) and are handed to
/// `flush` one line at a time.
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineBuf<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
    pub fn push(&mut self, bytes: &[u8], flush: &mut dyn FnMut(&[u8])) {
        for &b in bytes {
            if self.len == N {
                flush(&self.buf[..self.len]);
                self.len = 0;
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                flush(&self.buf[..self.len]);
                self.len = 0;
            }
        }
    }
    pub fn flush(&mut self, flush: &mut dyn FnMut(&[u8])) {
        if self.len > 0 {
            flush(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}
