//! The ring-0 layer inside the VM: GDT, IDT, TSS, exit stubs, ring-0 stacks and the private
//! page tables mapping them at L4 slot 257 (`0xffff808000000000`).
//!
//! All of it lives in kxen-private memory (GPA [`PRIVATE_BASE`]..), mapped linearly:
//! `va = RING0_VIRT_BASE + (gpa - PRIVATE_BASE)`.
//!
//! Private page layout (page index within the private area):
//!
//! | pages | content | mapping |
//! |---|---|---|
//! | 0 | IDT (256 gates, shared) | supervisor, RW, NX |
//! | 1 | stub code (shared) | **user**, read-only, executable (ring-0 code must be U=1 here) |
//! | 2 | private L3 (slot 257) | supervisor, RW, NX |
//! | 3 | private L2 | supervisor, RW, NX |
//! | 4 .. 4+n | private L1s | supervisor, RW, NX |
//! | then per vCPU | 16 GDT pages, 1 TSS page, 2 ring-0 stack pages, 3 IST stack pages, 16 LDT pages (kxen's copy of the guest's `MMUEXT_SET_LDT` table) | supervisor, RW, NX |
//! | last entry of the last L1 | the syscall exit page: GPA [`SYSCALL_EXIT_GPA`], no memslot | **user**, RW, NX |
//! | then (not in slot 257) | the M2P's L3, L2, L1s and table pages, mapped at L4 slot 258 ([`M2P_VIRT_BASE`]) | table pages **user**, read-only, NX |
//!
//! The M2P (machine-to-phys table) holds `m2p[mfn] = mfn` for every guest frame (kxen's p2m
//! is the identity) and `!0` (INVALID) for the rest of its last page; `XENMEM_machphys_mapping`
//! tells the guest where it is.
//!
//! # Exit port map
//!
//! Every stub is `out <reg>, $imm8` followed by `ud2`; the `out` reads a register but writes
//! none, so guest registers reach the VMM untouched. The VMM tells the stubs apart by port and
//! access size:
//!
//! | access | port | meaning |
//! |---|---|---|
//! | 1 byte (`out %al`) | `v` (0..=255) | IDT vector `v` was delivered (exception or `int`) |
//! | 4 bytes (`out %eax`) | [`PORT_SYSCALL`] (0) | 64-bit `syscall` (LSTAR) |
//! | 4 bytes | [`PORT_SYSCALL32`] (1) | compat `syscall` (CSTAR) |
//! | 4 bytes | [`PORT_SYSENTER`] (2) | `sysenter` |
//!
//! | 4-byte MMIO write to [`SYSCALL_EXIT_GPA`] | — | 64-bit `syscall`: LSTAR points at [`Ring0Layer::syscall_stub`], `mov %eax, (exit page)` |
//!
//! The 64-bit `syscall` entry uses an MMIO write instead of `out` because on nested KVM on PVM
//! `syscall` reaches LSTAR still at CPL3, where `out` faults; the #GP detour costs ~65 µs per
//! round trip against ~40 µs for the MMIO exit. The exit page must be user-writable for that
//! reason, so a guest can write it directly: that is treated as a `syscall` too, which is
//! harmless (the guest can make a `syscall` with any rcx/r11 it likes anyway).
//!
//! The guest itself can never issue the port exits: it runs at CPL3 with IOPL 0 and no TSS I/O
//! bitmap, so its `in`/`out` raise #GP. Do not create an in-kernel PIC/PIT (`KVM_CREATE_IRQCHIP`,
//! `KVM_CREATE_PIT2`): they would swallow ports 0x20/0x21/0x40-0x43/0x61/0xa0/0xa1.
//! A split irqchip (in-kernel LAPIC only) is fine.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{MemoryError, PrivateMem, PAGE_SIZE, PRIVATE_BASE};

// TODO: use xen_abi::arch once merged (h-abi).
/// Xen's ring-0 64-bit code selector.
pub const RING0_CS: u16 = 0xe008;
/// Xen's ring-0 data/stack selector.
pub const RING0_DS: u16 = 0xe010;
/// `FLAT_RING3_CS32`.
pub const RING3_CS32: u16 = 0xe023;
/// `FLAT_RING3_DS32` / `FLAT_RING3_SS64` (also the 64-bit guest's stack selector).
pub const RING3_DS: u16 = 0xe02b;
/// `FLAT_RING3_CS64`.
pub const RING3_CS64: u16 = 0xe033;
/// kxen's TSS selector (16-byte system descriptor at 0xe040..0xe050).
pub const TSS_SEL: u16 = 0xe040;
/// The LDT selector (16-byte system descriptor at 0xe050..0xe060, Xen's `LDT_ENTRY`): it
/// describes the vCPU's LDT copy ([`VcpuRing0::ldt_base`]); LDTR is loaded from it.
pub const LDT_SEL: u16 = 0xe050;
/// Pages of a vCPU's LDT copy (8192 entries, Xen's maximum).
pub const LDT_PAGES: u64 = 16;
/// GDT byte offset where Xen's reserved entries start; below it the guest's (`set_gdt`) ones.
pub const GDT_XEN_FIRST: usize = 0xe000;
/// GDT pages per vCPU (limit 0xffff).
pub const GDT_PAGES: u64 = 16;

/// L4 slot of the ring-0 area.
pub const RING0_L4_SLOT: usize = 257;
/// Virtual base of the ring-0 area (L4 slot 257).
pub const RING0_VIRT_BASE: u64 = 0xffff_8080_0000_0000;

/// L4 slot of the read-only M2P table.
pub const M2P_L4_SLOT: usize = xen_abi::arch::KXEN_M2P_L4_SLOT;
/// Virtual base of the M2P table (L4 slot 258).
pub const M2P_VIRT_BASE: u64 = xen_abi::arch::KXEN_M2P_VIRT_START;
/// M2P entry for a frame that is not guest RAM.
pub const M2P_INVALID: u64 = !0;

/// Pages of M2P table for `guest_pages` guest frames (8 bytes per frame).
pub const fn m2p_pages(guest_pages: u64) -> u64 {
    guest_pages.div_ceil(PAGE_SIZE / 8)
}

/// Guest-physical address of the syscall exit page: no memslot backs it, so a write exits to
/// the VMM as MMIO. Above the private memslot (which stays below 1 GiB).
pub const SYSCALL_EXIT_GPA: u64 = PRIVATE_BASE + (1 << 30);
/// Offset of the MMIO syscall stub in the stub page.
const SYSCALL_MMIO_STUB: u64 = 0x800;

/// Port of the 64-bit `syscall` port stub (4-byte access; reached only via the #GP fallback).
pub const PORT_SYSCALL: u16 = 0;
/// Port of the compat `syscall` stub (4-byte access).
pub const PORT_SYSCALL32: u16 = 1;
/// Port of the `sysenter` stub (4-byte access).
pub const PORT_SYSENTER: u16 = 2;

/// L4 slot of kxen's supervisor-only alias of guest RAM (ring 0 replays the VMM's
/// page-table writes through it so that KVM's shadow MMU sees them).
pub const GUEST_ALIAS_L4_SLOT: usize = 259;
/// Virtual base of the guest-RAM alias: GPA `x` is at `GUEST_ALIAS_BASE + x`.
pub const GUEST_ALIAS_BASE: u64 = 0xffff_8180_0000_0000;
const _: () = assert!((GUEST_ALIAS_BASE >> 39) & 511 == GUEST_ALIAS_L4_SLOT as u64);
/// Most page-table writes one replay program holds (`crate::replay`; it is generated
/// into the vCPU's [`REPLAY_PAGES`] code pages).
pub const MAX_REPLAY: usize = crate::replay::capacity((REPLAY_PAGES * PAGE_SIZE) as usize);
// Room for a whole L1's worth of entries and more in one program.
const _: () = assert!(MAX_REPLAY >= 960);
const PTE_PS: u64 = 1 << 7;

/// Port a replay program that exits writes (`crate::replay::End::Exit`; 1-byte access).
pub const PORT_TLB_FLUSH: u16 = 0xf1;

/// IST index used for #DF.
pub const IST_DF: u8 = 1;
/// IST index used for NMI.
pub const IST_NMI: u8 = 2;
/// IST index used for #MC.
pub const IST_MC: u8 = 3;

// Page-table entry bits.
pub(crate) const PTE_P: u64 = 1 << 0;
pub(crate) const PTE_RW: u64 = 1 << 1;
pub(crate) const PTE_US: u64 = 1 << 2;
pub(crate) const PTE_NX: u64 = 1 << 63;
#[cfg(test)]
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const IDT_PAGE: u64 = 0;
const STUB_PAGE: u64 = 1;
const L3_PAGE: u64 = 2;
const L2_PAGE: u64 = 3;
const FIRST_L1_PAGE: u64 = 4;
const TSS_OFF: u64 = GDT_PAGES;
const STACK_OFF: u64 = TSS_OFF + 1;
const STACK_PAGES: u64 = 2;
const IST_OFF: u64 = STACK_OFF + STACK_PAGES;
const IST_COUNT: u64 = 3;
const LDT_OFF: u64 = IST_OFF + IST_COUNT;
const REPLAY_OFF: u64 = LDT_OFF + LDT_PAGES;
/// Code pages per vCPU for its replay program (mapped user-accessible, read-only and
/// executable, as this host requires of ring-0 code; the VMM rewrites them).
pub const REPLAY_PAGES: u64 = 4;
const PER_VCPU_PAGES: u64 = REPLAY_OFF + REPLAY_PAGES;
/// Offset of the special (syscall/sysenter) stubs in the stub page.
const SPECIAL_STUBS: u64 = 256 * 4;
/// Most vCPUs one private area supports (all of it must fit under one L2 = 1 GiB).
pub const MAX_VCPUS: u32 = 1024;

/// Size of a 64-bit TSS.
const TSS_SIZE: u64 = 104;

/// Vectors for which the CPU pushes an error code.
pub const fn vector_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Errors building the ring-0 layer.
#[derive(Debug, Error)]
pub enum Ring0Error {
    /// Zero or too many vCPUs.
    #[error("unsupported number of vCPUs: {0} (1..={MAX_VCPUS})")]
    BadVcpuCount(u32),
    /// Allocating private memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The private area (ring-0 layer plus M2P) would not fit below the exit page.
    #[error("guest too large for the M2P: {0} pages")]
    TooLarge(u64),
    /// Writing private memory failed (a layout bug).
    #[error("writing private memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Where one vCPU's ring-0 structures are (virtual addresses in slot 257).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuRing0 {
    /// GDT base (limit [`Self::GDT_LIMIT`]).
    pub gdt_base: u64,
    /// TSS base (limit `103`).
    pub tss_base: u64,
    /// Top of the ring-0 stack (TSS RSP0): `[rsp0_top - 2 pages, rsp0_top)`.
    pub rsp0_top: u64,
    /// Tops of the IST stacks 1..=3 (#DF, NMI, #MC), one page each.
    pub ist_tops: [u64; 3],
    /// Base of the LDT copy ([`LDT_PAGES`] pages).
    pub ldt_base: u64,
    /// The vCPU's replay program ([`REPLAY_PAGES`] pages of code, `crate::replay`).
    pub replay_code: u64,
}

impl VcpuRing0 {
    /// GDT limit: 16 pages.
    pub const GDT_LIMIT: u16 = 0xffff;
    /// TSS limit.
    pub const TSS_LIMIT: u32 = (TSS_SIZE - 1) as u32;

    /// Whether `[va, va+len)` lies on one of this vCPU's ring-0 stacks (RSP0 or IST).
    pub fn on_ring0_stack(&self, va: u64, len: u64) -> bool {
        let within =
            |top: u64, size: u64| va >= top - size && va.checked_add(len).is_some_and(|e| e <= top);
        within(self.rsp0_top, STACK_PAGES * PAGE_SIZE)
            || self.ist_tops.iter().any(|&t| within(t, PAGE_SIZE))
    }
}

/// The ring-0 layer: private memory with everything written into it.
#[derive(Debug, Clone)]
pub struct Ring0Layer {
    mem: PrivateMem,
    nr_vcpus: u32,
    first_vcpu_page: u64,
    nr_l1: u64,
    /// First private page past the slot-257 area (the M2P's tables start there).
    ring0_pages: u64,
    guest_pages: u64,
    l4_entries: Vec<(usize, u64)>,
}

fn gpa_of(page: u64) -> u64 {
    PRIVATE_BASE + page * PAGE_SIZE
}
fn va_of(page: u64) -> u64 {
    RING0_VIRT_BASE + page * PAGE_SIZE
}

/// A code/data segment descriptor.
const fn seg_desc(access: u64, flags: u64) -> u64 {
    // base 0, limit 0xfffff; access byte at bits 40..48, flags (G, D/B, L) at 52..56.
    0xffff | (0xf << 48) | (access << 40) | (flags << 52)
}

impl Ring0Layer {
    /// Build the ring-0 layer for `nr_vcpus` vCPUs, and the M2P for `guest_pages` frames.
    pub fn new(nr_vcpus: u32, guest_pages: u64) -> Result<Self, Ring0Error> {
        if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
            return Err(Ring0Error::BadVcpuCount(nr_vcpus));
        }
        let per_vcpu_total = u64::from(nr_vcpus) * PER_VCPU_PAGES;
        // Enough L1s to map every private page, the L1s included, plus the exit page.
        let mut nr_l1 = 1;
        while FIRST_L1_PAGE + nr_l1 + per_vcpu_total + 1 > nr_l1 * 512 {
            nr_l1 += 1;
        }
        let first_vcpu_page = FIRST_L1_PAGE + nr_l1;
        let total = first_vcpu_page + per_vcpu_total;
        // M2P: L3, L2, L1s, table pages (one L2 maps 1 GiB of table = 2^27 guest pages).
        let m2p = m2p_pages(guest_pages);
        let m2p_l1s = m2p.div_ceil(512);
        if guest_pages == 0 || m2p_l1s > 512 {
            return Err(Ring0Error::TooLarge(guest_pages));
        }
        // Guest-RAM alias: one L3 and an L2 of 2 MiB pages per GiB.
        let alias_l2s = guest_pages.div_ceil(512 * 512);
        let alias_l3 = total + 2 + m2p_l1s + m2p;
        let all = alias_l3 + 1 + alias_l2s;
        if all * PAGE_SIZE >= SYSCALL_EXIT_GPA - PRIVATE_BASE {
            return Err(Ring0Error::TooLarge(guest_pages));
        }
        let mem = PrivateMem::new(all)?;
        let upper = PTE_P | PTE_RW | PTE_US;
        let this = Self {
            mem,
            nr_vcpus,
            first_vcpu_page,
            nr_l1,
            ring0_pages: total,
            guest_pages,
            l4_entries: vec![
                (RING0_L4_SLOT, gpa_of(L3_PAGE) | upper),
                (M2P_L4_SLOT, gpa_of(total) | upper),
                // Supervisor-only (U=0 here already): the guest never reaches it.
                (GUEST_ALIAS_L4_SLOT, gpa_of(alias_l3) | PTE_P | PTE_RW),
            ],
        };
        this.write_alias(alias_l3, alias_l2s)?;
        this.write_page_tables(total, nr_l1)?;
        this.write_m2p()?;
        this.write_idt()?;
        this.write_stubs()?;
        for cpu in 0..nr_vcpus {
            this.write_vcpu(cpu)?;
        }
        Ok(this)
    }

    fn w64(&self, gpa: u64, v: u64) -> Result<(), Ring0Error> {
        Ok(self.mem.mem().write_obj(v, GuestAddress(gpa))?)
    }

    fn write_page_tables(&self, total: u64, nr_l1: u64) -> Result<(), Ring0Error> {
        // Upper levels allow everything; each L1 entry decides U/RW/NX.
        let upper = PTE_P | PTE_RW | PTE_US;
        self.w64(gpa_of(L3_PAGE), gpa_of(L2_PAGE) | upper)?;
        for i in 0..nr_l1 {
            self.w64(gpa_of(L2_PAGE) + i * 8, gpa_of(FIRST_L1_PAGE + i) | upper)?;
        }
        let replay_page = |page: u64| {
            page >= self.first_vcpu_page
                && (page - self.first_vcpu_page) % PER_VCPU_PAGES >= REPLAY_OFF
        };
        for page in 0..total {
            let flags = if page == STUB_PAGE || replay_page(page) {
                PTE_P | PTE_US
            } else {
                PTE_P | PTE_RW | PTE_NX
            };
            // L1s are contiguous, so the entry for `page` is at index `page` from the first.
            self.w64(gpa_of(FIRST_L1_PAGE) + page * 8, gpa_of(page) | flags)?;
        }
        self.w64(
            gpa_of(FIRST_L1_PAGE) + self.exit_page_index() * 8,
            SYSCALL_EXIT_GPA | PTE_P | PTE_RW | PTE_US | PTE_NX,
        )?;
        Ok(())
    }

    /// The guest-RAM alias at slot 259: 2 MiB pages, RW, NX, supervisor-only.
    fn write_alias(&self, l3: u64, l2s: u64) -> Result<(), Ring0Error> {
        for i in 0..l2s {
            self.w64(gpa_of(l3) + i * 8, gpa_of(l3 + 1 + i) | PTE_P | PTE_RW)?;
            for j in 0..512u64 {
                let gpa = (i * 512 + j) << 21;
                self.w64(
                    gpa_of(l3 + 1 + i) + j * 8,
                    gpa | PTE_P | PTE_RW | PTE_PS | PTE_NX,
                )?;
            }
        }
        Ok(())
    }

    /// Where ring 0 reaches guest-physical `gpa` (the alias of guest RAM).
    pub fn guest_alias_va(&self, gpa: u64) -> Option<u64> {
        (gpa < self.guest_pages.checked_mul(PAGE_SIZE)?).then(|| GUEST_ALIAS_BASE + gpa)
    }

    /// Write `bytes` into the ring-0 area at `va` (private memory only).
    pub fn write_bytes(&self, va: u64, bytes: &[u8]) -> Option<()> {
        let gpa = self.va_to_gpa(va, u64::try_from(bytes.len()).ok()?)?;
        self.mem.mem().write_slice(bytes, GuestAddress(gpa)).ok()
    }

    /// Write `words` into the ring-0 area at `va` (private memory only).
    pub fn write_words(&self, va: u64, words: &[u64]) -> Option<()> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.write_bytes(va, &bytes)
    }

    /// The M2P at slot 258: L3 at page `ring0_pages`, L2 next, then the L1s and the table.
    fn write_m2p(&self) -> Result<(), Ring0Error> {
        let upper = PTE_P | PTE_RW | PTE_US;
        let l3 = self.ring0_pages;
        let l2 = l3 + 1;
        let first_l1 = l2 + 1;
        let pages = m2p_pages(self.guest_pages);
        let first_data = first_l1 + pages.div_ceil(512);
        self.w64(gpa_of(l3), gpa_of(l2) | upper)?;
        for i in 0..pages.div_ceil(512) {
            self.w64(gpa_of(l2) + i * 8, gpa_of(first_l1 + i) | upper)?;
        }
        let mut buf = [0u8; PAGE_SIZE as usize];
        for p in 0..pages {
            // L1s are contiguous: the entry for table page `p` is at index `p`.
            self.w64(
                gpa_of(first_l1) + p * 8,
                gpa_of(first_data + p) | PTE_P | PTE_US | PTE_NX,
            )?;
            for (i, b) in buf.chunks_exact_mut(8).enumerate() {
                let mfn = p * 512 + i as u64;
                let v = if mfn < self.guest_pages {
                    mfn
                } else {
                    M2P_INVALID
                };
                b.copy_from_slice(&v.to_le_bytes());
            }
            self.mem
                .mem()
                .write_slice(&buf, GuestAddress(gpa_of(first_data + p)))?;
        }
        Ok(())
    }

    /// Machine frame (guest-physical address >> 12 in kxen's identity scheme) of the first
    /// table page of each 2 MiB extent of the M2P, in order (`XENMEM_machphys_mfn_list`). The
    /// table pages are private memory, contiguous, and never guest-writable.
    pub fn m2p_extent_mfns(&self) -> Vec<u64> {
        let pages = m2p_pages(self.guest_pages);
        // Same layout as `write_m2p`: L3, L2, the L1s, then the table pages.
        let first_data = self.ring0_pages + 2 + pages.div_ceil(512);
        (0..pages.div_ceil(512))
            .map(|i| gpa_of(first_data + i * 512) / PAGE_SIZE)
            .collect()
    }

    /// Mark `count` frames from `first` as not guest RAM in the M2P (`M2P_INVALID`): the
    /// frames kxen shares with the guest (shared_info, grant frames) are hypervisor pages.
    // xen: share_xen_page_with_guest gives a Xen page shared with a guest no M2P entry.
    pub fn invalidate_m2p(&self, first: u64, count: u64) -> Result<(), Ring0Error> {
        let pages = m2p_pages(self.guest_pages);
        let first_data = self.ring0_pages + 2 + pages.div_ceil(512);
        let end = first.saturating_add(count).min(self.guest_pages);
        for mfn in first.min(end)..end {
            self.w64(gpa_of(first_data) + mfn * 8, M2P_INVALID)?;
        }
        Ok(())
    }

    /// Guest frames the M2P covers.
    pub fn m2p_entries(&self) -> u64 {
        self.guest_pages
    }

    fn write_idt(&self) -> Result<(), Ring0Error> {
        for v in 0..=255u8 {
            let target = self.vector_stub(v);
            let dpl: u64 = if v == 3 || v == 4 { 3 } else { 0 };
            let ist: u64 = match v {
                8 => IST_DF.into(),
                2 => IST_NMI.into(),
                18 => IST_MC.into(),
                _ => 0,
            };
            // 64-bit interrupt gate (type 0xe), present.
            let lo = (target & 0xffff)
                | (u64::from(RING0_CS) << 16)
                | (ist << 32)
                | ((0x80 | (dpl << 5) | 0xe) << 40)
                | (((target >> 16) & 0xffff) << 48);
            let hi = target >> 32;
            let at = gpa_of(IDT_PAGE) + u64::from(v) * 16;
            self.w64(at, lo)?;
            self.w64(at + 8, hi)?;
        }
        Ok(())
    }

    fn write_stubs(&self) -> Result<(), Ring0Error> {
        let mut page = [0xccu8; PAGE_SIZE as usize]; // int3 filler
        for v in 0..=255u8 {
            let o = usize::from(v) * 4;
            // out %al, $v ; ud2
            page[o..o + 4].copy_from_slice(&[0xe6, v, 0x0f, 0x0b]);
        }
        for (i, port) in [PORT_SYSCALL, PORT_SYSCALL32, PORT_SYSENTER]
            .into_iter()
            .enumerate()
        {
            let o = SPECIAL_STUBS as usize + i * 4;
            // out %eax, $port ; ud2
            page[o..o + 4].copy_from_slice(&[0xe7, port as u8, 0x0f, 0x0b]);
        }
        // mov %eax, (syscall exit page) ; ud2
        let o = SYSCALL_MMIO_STUB as usize;
        page[o] = 0xa3;
        page[o + 1..o + 9].copy_from_slice(&self.syscall_exit_va().to_le_bytes());
        page[o + 9..o + 11].copy_from_slice(&[0x0f, 0x0b]);
        self.mem
            .mem()
            .write_slice(&page, GuestAddress(gpa_of(STUB_PAGE)))?;
        Ok(())
    }

    fn vcpu_first_page(&self, cpu: u32) -> u64 {
        self.first_vcpu_page + u64::from(cpu) * PER_VCPU_PAGES
    }

    fn write_vcpu(&self, cpu: u32) -> Result<(), Ring0Error> {
        let first = self.vcpu_first_page(cpu);
        let l = self.vcpu(cpu).ok_or(Ring0Error::BadVcpuCount(cpu))?;
        // GDT: Xen's reserved entries.
        let gdt = gpa_of(first);
        let ent = |sel: u16| gdt + u64::from(sel & !7);
        self.w64(ent(RING0_CS), seg_desc(0x9b, 0xa))?; // P, DPL0, code exec/read, accessed; G, L
        self.w64(ent(RING0_DS), seg_desc(0x93, 0xc))?; // P, DPL0, data rw, accessed; G, D/B
        self.w64(ent(RING3_CS32), seg_desc(0xfb, 0xc))?; // DPL3 code, G, D
        self.w64(ent(RING3_DS), seg_desc(0xf3, 0xc))?; // DPL3 data
        self.w64(ent(RING3_CS64), seg_desc(0xfb, 0xa))?; // DPL3 code, G, L
                                                         // TSS descriptor (64-bit available TSS, type 9).
        let b = l.tss_base;
        let lo =
            (TSS_SIZE - 1) | ((b & 0xff_ffff) << 16) | (0x89 << 40) | (((b >> 24) & 0xff) << 56);
        self.w64(ent(TSS_SEL), lo)?;
        self.w64(ent(TSS_SEL) + 8, b >> 32)?;
        // TSS: RSP0 at offset 4, IST1..3 at 36.., I/O map base beyond the limit (no bitmap).
        let tss = gpa_of(first + TSS_OFF);
        self.w64(tss + 4, l.rsp0_top)?;
        for (i, top) in l.ist_tops.iter().enumerate() {
            self.w64(tss + 36 + 8 * i as u64, *top)?;
        }
        self.mem
            .mem()
            .write_obj(TSS_SIZE as u16, GuestAddress(tss + 102))?;
        Ok(())
    }

    /// Number of vCPUs the layer was built for.
    pub fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    /// The L4 entries (slot, entry) to install in every guest L4 kxen validates.
    pub fn private_l4_entries(&self) -> &[(usize, u64)] {
        &self.l4_entries
    }

    /// The private memory (for the memslot and for reading ring-0 stacks).
    pub fn private_mem(&self) -> &PrivateMem {
        &self.mem
    }

    /// IDT base (limit 0xfff).
    pub fn idt_base(&self) -> u64 {
        va_of(IDT_PAGE)
    }

    /// Address of the stub IDT vector `v` enters.
    pub fn vector_stub(&self, v: u8) -> u64 {
        va_of(STUB_PAGE) + u64::from(v) * 4
    }

    fn exit_page_index(&self) -> u64 {
        self.nr_l1 * 512 - 1
    }

    /// Virtual address of the syscall exit page (user-writable, MMIO).
    pub fn syscall_exit_va(&self) -> u64 {
        va_of(self.exit_page_index())
    }

    /// The 64-bit `syscall` entry point (MSR_LSTAR): an MMIO write to the exit page.
    pub fn syscall_stub(&self) -> u64 {
        va_of(STUB_PAGE) + SYSCALL_MMIO_STUB
    }

    /// Address of the special port stub for `port` (`PORT_SYSCALL`, ...).
    pub fn special_stub(&self, port: u16) -> u64 {
        va_of(STUB_PAGE) + SPECIAL_STUBS + u64::from(port) * 4
    }

    /// Per-vCPU ring-0 structures, `None` for an out-of-range vCPU.
    pub fn vcpu(&self, cpu: u32) -> Option<VcpuRing0> {
        if cpu >= self.nr_vcpus {
            return None;
        }
        let first = self.vcpu_first_page(cpu);
        Some(VcpuRing0 {
            gdt_base: va_of(first),
            tss_base: va_of(first + TSS_OFF),
            rsp0_top: va_of(first + STACK_OFF + STACK_PAGES),
            ist_tops: [1, 2, 3].map(|i| va_of(first + IST_OFF + i)),
            ldt_base: va_of(first + LDT_OFF),
            replay_code: va_of(first + REPLAY_OFF),
        })
    }

    /// Translate a ring-0-area virtual address to its private GPA.
    pub fn va_to_gpa(&self, va: u64, len: u64) -> Option<u64> {
        let off = va.checked_sub(RING0_VIRT_BASE)?;
        let gpa = PRIVATE_BASE.checked_add(off)?;
        let end = gpa.checked_add(len)?;
        (self.mem.contains(gpa, len) && end <= gpa_of(self.ring0_pages)).then_some(gpa)
    }

    /// Read a u64 of the ring-0 area by virtual address.
    pub fn read_u64(&self, va: u64) -> Option<u64> {
        let gpa = self.va_to_gpa(va, 8)?;
        self.mem.mem().read_obj(GuestAddress(gpa)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(l: &Ring0Layer, va: u64) -> Option<u64> {
        let slot = ((va >> 39) & 511) as usize;
        let (_, l4e) = *l.private_l4_entries().iter().find(|(s, _)| *s == slot)?;
        let mut e = l4e;
        let mut flags = e;
        for shift in [30u32, 21, 12] {
            let table = e & PTE_ADDR_MASK;
            let idx = (va >> shift) & 511;
            e = l
                .mem
                .mem()
                .read_obj::<u64>(GuestAddress(table + idx * 8))
                .ok()?;
            if e & PTE_P == 0 {
                return None;
            }
            flags &= e | PTE_NX;
            flags |= e & PTE_NX;
        }
        Some((e & PTE_ADDR_MASK) | (flags & (PTE_US | PTE_RW | PTE_NX)))
    }

    #[test]
    fn m2p_is_identity_read_only_user_nx_at_slot_258() {
        for pages in [1u64, 511, 512, 513, 5000, 512 * 512 + 1] {
            let l = Ring0Layer::new(2, pages).unwrap();
            assert_eq!(l.private_l4_entries().len(), 3);
            let read = |mfn: u64| {
                let va = M2P_VIRT_BASE + mfn * 8;
                let e = walk(&l, va)?;
                assert_eq!(
                    e & (PTE_US | PTE_RW | PTE_NX),
                    PTE_US | PTE_NX,
                    "pages {pages}"
                );
                let gpa = (e & PTE_ADDR_MASK) + (va & 0xfff);
                l.mem.mem().read_obj::<u64>(GuestAddress(gpa)).ok()
            };
            for mfn in [0, pages / 2, pages - 1] {
                assert_eq!(read(mfn), Some(mfn), "pages {pages} mfn {mfn}");
            }
            let end = m2p_pages(pages) * 512;
            for mfn in pages..end.min(pages + 3) {
                assert_eq!(read(mfn), Some(M2P_INVALID));
            }
            assert_eq!(
                walk(&l, M2P_VIRT_BASE + end * 8),
                None,
                "nothing past the table"
            );
            // The slot-257 view does not reach the M2P's private pages.
            let past = RING0_VIRT_BASE + l.ring0_pages * PAGE_SIZE;
            assert!(l.va_to_gpa(past, 8).is_none());
        }
        assert!(Ring0Layer::new(1, 0).is_err());
        assert!(Ring0Layer::new(1, 1 << 30).is_err());
    }

    #[test]
    fn layout_rejects_bad_vcpu_counts() {
        assert!(Ring0Layer::new(0, 16).is_err());
        assert!(Ring0Layer::new(MAX_VCPUS + 1, 16).is_err());
    }

    #[test]
    fn private_tables_map_stub_user_readonly_and_data_supervisor_nx() {
        let l = Ring0Layer::new(3, 16).unwrap();
        assert_eq!(l.private_l4_entries()[0].0, 257);
        assert_eq!(l.private_l4_entries()[1].0, 258);
        let stub = walk(&l, l.vector_stub(14)).unwrap();
        assert_eq!(stub & PTE_ADDR_MASK, PRIVATE_BASE + PAGE_SIZE);
        assert_eq!(stub & (PTE_US | PTE_RW | PTE_NX), PTE_US);
        let v = l.vcpu(2).unwrap();
        let tss = walk(&l, v.tss_base).unwrap();
        assert_eq!(tss & (PTE_US | PTE_RW | PTE_NX), PTE_RW | PTE_NX);
        assert_eq!(
            tss & PTE_ADDR_MASK,
            l.va_to_gpa(v.tss_base, 1).unwrap() & PTE_ADDR_MASK
        );
        assert!(walk(&l, v.rsp0_top - 8).is_some());
        assert!(l.vcpu(3).is_none());
    }

    #[test]
    fn syscall_exit_page_is_user_writable_and_unbacked() {
        for n in [1, 20, 23, 24, 100] {
            let l = Ring0Layer::new(n, 16).unwrap();
            let e = walk(&l, l.syscall_exit_va()).unwrap();
            assert_eq!(e & PTE_ADDR_MASK, SYSCALL_EXIT_GPA);
            assert_eq!(e & (PTE_US | PTE_RW | PTE_NX), PTE_US | PTE_RW | PTE_NX);
            assert!(!l.private_mem().contains(SYSCALL_EXIT_GPA, 1));
            // It does not shadow a private page.
            assert!(l.va_to_gpa(l.syscall_exit_va(), 1).is_none());
            let stub = l.syscall_stub();
            let gpa = l.va_to_gpa(stub, 11).unwrap();
            let mut b = [0u8; 11];
            l.private_mem()
                .mem()
                .read_slice(&mut b, GuestAddress(gpa))
                .unwrap();
            assert_eq!(b[0], 0xa3);
            assert_eq!(
                u64::from_le_bytes(b[1..9].try_into().unwrap()),
                l.syscall_exit_va()
            );
        }
    }

    #[test]
    fn many_vcpus_need_several_l1s_and_all_pages_are_mapped() {
        let l = Ring0Layer::new(100, 16).unwrap();
        let v = l.vcpu(99).unwrap();
        for va in [v.gdt_base, v.tss_base, v.rsp0_top - 8, v.ist_tops[2] - 8] {
            let e = walk(&l, va).unwrap();
            assert_eq!(e & PTE_ADDR_MASK, l.va_to_gpa(va & !0xfff, 1).unwrap());
        }
    }

    #[test]
    fn invalidated_m2p_entries_read_invalid_and_the_rest_stay_identity() {
        let l = Ring0Layer::new(1, 40).unwrap();
        l.invalidate_m2p(32, 8).unwrap();
        l.invalidate_m2p(39, 100).unwrap(); // clipped at the end, no error
        let m2p = |mfn: u64| {
            l.mem
                .mem()
                .read_obj::<u64>(GuestAddress(
                    walk(&l, M2P_VIRT_BASE + mfn * 8).unwrap() & PTE_ADDR_MASK
                        | ((mfn * 8) & 0xfff),
                ))
                .unwrap()
        };
        for mfn in 0..32 {
            assert_eq!(m2p(mfn), mfn);
        }
        for mfn in 32..40 {
            assert_eq!(m2p(mfn), M2P_INVALID);
        }
    }

    #[test]
    fn replay_code_pages_are_user_readonly_executable_and_the_rest_is_not() {
        let l = Ring0Layer::new(3, 16).unwrap();
        for cpu in 0..3 {
            let v = l.vcpu(cpu).unwrap();
            for p in 0..REPLAY_PAGES {
                let e = walk(&l, v.replay_code + p * PAGE_SIZE).unwrap();
                assert_eq!(e & (PTE_US | PTE_RW | PTE_NX), PTE_US, "cpu {cpu} page {p}");
            }
            for va in [v.gdt_base, v.tss_base, v.rsp0_top - 8, v.ist_tops[2] - 8] {
                let e = walk(&l, va).unwrap();
                assert_eq!(e & (PTE_US | PTE_RW | PTE_NX), PTE_RW | PTE_NX);
            }
            let code = vec![0x90u8; (REPLAY_PAGES * PAGE_SIZE) as usize];
            assert!(l.write_bytes(v.replay_code, &code).is_some());
        }
    }

    #[test]
    fn idt_gates_point_at_stubs_with_dpl3_only_for_bp_and_of() {
        let l = Ring0Layer::new(1, 16).unwrap();
        for v in 0..=255u8 {
            let lo = l.read_u64(l.idt_base() + u64::from(v) * 16).unwrap();
            let hi = l.read_u64(l.idt_base() + u64::from(v) * 16 + 8).unwrap();
            let target = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi << 32);
            assert_eq!(target, l.vector_stub(v));
            assert_eq!((lo >> 16) & 0xffff, u64::from(RING0_CS));
            let dpl = (lo >> 45) & 3;
            assert_eq!(dpl, if v == 3 || v == 4 { 3 } else { 0 }, "vector {v}");
            let ist = (lo >> 32) & 7;
            assert_eq!(ist != 0, matches!(v, 2 | 8 | 18));
        }
    }

    #[test]
    fn gdt_has_xen_selectors_and_tss_points_to_stacks() {
        let l = Ring0Layer::new(2, 16).unwrap();
        let v = l.vcpu(1).unwrap();
        let d = |sel: u16| l.read_u64(v.gdt_base + u64::from(sel & !7)).unwrap();
        assert_eq!(d(RING0_CS), 0x00af_9b00_0000_ffff);
        assert_eq!(d(RING3_CS64), 0x00af_fb00_0000_ffff);
        assert_eq!(d(RING3_DS), 0x00cf_f300_0000_ffff);
        assert_eq!(d(RING3_CS32), 0x00cf_fb00_0000_ffff);
        assert_eq!(l.read_u64(v.tss_base + 4).unwrap(), v.rsp0_top);
        assert_eq!(l.read_u64(v.tss_base + 36).unwrap(), v.ist_tops[0]);
        assert!(v.on_ring0_stack(v.rsp0_top - 48, 48));
        assert!(!v.on_ring0_stack(v.rsp0_top - 8, 16));
        assert!(!v.on_ring0_stack(v.gdt_base, 8));
    }

    #[test]
    fn va_to_gpa_refuses_outside_private_area() {
        let l = Ring0Layer::new(1, 16).unwrap();
        assert!(l.va_to_gpa(RING0_VIRT_BASE - 1, 1).is_none());
        assert!(l.va_to_gpa(u64::MAX - 2, 8).is_none());
        assert_eq!(l.va_to_gpa(RING0_VIRT_BASE, 8), Some(PRIVATE_BASE));
    }
}
