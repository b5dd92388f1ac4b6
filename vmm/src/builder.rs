//! The PV domain builder: puts a kernel and its start-of-day state into guest memory.
//!
//! It follows Xen's PV start-of-day contract (libxenguest's `xc_dom_*` for a 64-bit PV domU):
//! the kernel at its virtual addresses, the initrd, the p2m list, start_info, the xenstore and
//! console pages, the initial page tables (mapped read-only), one boot-stack page, padding to a
//! 4 MiB boundary; shared_info with every upcall masked; the hypercall page. The virtual layout
//! itself is pure arithmetic in [`xen_abi::layout`]; this module writes it into memory.
//!
//! kxen uses an identity p2m: pseudo-physical frame N is machine frame N is guest-physical
//! address N * 4096. The frames Xen would own and share with the guest (shared_info, the grant
//! table) follow the guest's RAM: see [`shared_info_mfn`], [`grant_table_mfn`].

use std::io::Cursor;

use linux_loader::loader::{elf::Elf as ElfLoader, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use xen_abi::elf::Elf;
use xen_abi::layout::{self, Layout, LayoutError, LayoutInput, PAGE_SIZE};

/// Size of a hypercall-page entry and the number of entries.
// xen: arch/x86/pv/hypercall.c, one 32-byte stub per hypercall in a 4 KiB page
pub const HYPERCALL_ENTRY_SIZE: usize = 32;
/// Number of entries in the hypercall page.
pub const HYPERCALL_ENTRIES: usize = 128;
/// The iret hypercall's number (its entry differs).
const HYPERVISOR_IRET: usize = 23;

/// Most grant-table frames a domain may have: Xen's default (64 frames = 32768 v1 entries),
/// which xl gives every domain unless configured otherwise.
// xen: common/grant_table.c, opt_max_grant_frames ("gnttab_max_frames", 64);
// docs/man/xl.conf.5.pod.in, max_grant_frames defaults to it
pub const MAX_GRANT_FRAMES: u32 = 64;

/// Frames Xen owns and shares with the guest, placed right after the guest's RAM: shared_info,
/// then the grant-table frames (all [`MAX_GRANT_FRAMES`] are reserved up front, zeroed; the
/// guest learns them from `GNTTABOP_setup_table`). The VM's RAM slot must cover
/// `nr_pages + SHARED_FRAMES` frames.
pub const SHARED_FRAMES: u64 = 1 + MAX_GRANT_FRAMES as u64;

/// Machine frame of the shared_info page for a domain of `nr_pages` pages.
pub fn shared_info_mfn(nr_pages: u64) -> u64 {
    nr_pages
}

/// Machine frame of the first grant-table frame for a domain of `nr_pages` pages (the
/// table's frames are consecutive).
pub fn grant_table_mfn(nr_pages: u64) -> u64 {
    nr_pages + 1
}

/// The kernel facts the builder needs (from the parsed Xen notes, after Xen's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// `VIRT_BASE`.
    pub virt_base: u64,
    /// `PADDR_OFFSET`.
    pub paddr_offset: u64,
    /// Entry point (virtual).
    pub virt_entry: u64,
    /// First kernel virtual address.
    pub virt_kstart: u64,
    /// Kernel end (exclusive, virtual).
    pub virt_kend: u64,
    /// `HYPERCALL_PAGE`, virtual.
    pub hypercall_page: Option<u64>,
    /// `INIT_P2M`, virtual.
    pub init_p2m: Option<u64>,
    /// `MOD_START_PFN`: the initrd is placed outside the initial mapping.
    pub unmapped_initrd: bool,
}

/// Everything the builder is asked to build.
#[derive(Debug, Clone, Copy)]
pub struct DomainSpec<'a> {
    /// The kernel ELF image.
    pub elf: &'a [u8],
    /// Facts from its notes.
    pub kernel: KernelSpec,
    /// The initrd (empty for none).
    pub initrd: &'a [u8],
    /// Kernel command line (truncated to 1023 bytes as Xen does).
    pub cmdline: &'a str,
    /// Pages of guest RAM.
    pub nr_pages: u64,
    /// A privileged (dom0-like) domain: SIF_PRIVILEGED | SIF_INITDOMAIN.
    pub privileged: bool,
    /// Event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// Event channel of the console ring.
    pub console_evtchn: u32,
    /// L4 entries kxen installs in every guest L4 (its ring-0 area, the M2P).
    pub private_l4: &'a [(usize, u64)],
    /// kxen's exit page, which the hypercall page's entries store to.
    pub exit_va: u64,
}

/// What the vCPU needs to start, and where things are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// The layout that was built.
    pub layout: Layout,
    /// `rip` at entry.
    pub rip: u64,
    /// `rsp` at entry: top of the boot stack.
    pub rsp: u64,
    /// `rsi` at entry: start_info's virtual address.
    pub rsi: u64,
    /// `cr3`: machine address of the L4.
    pub cr3: u64,
    /// Machine frame of shared_info.
    pub shared_info_mfn: u64,
    /// Machine frame of the xenstore ring.
    pub store_mfn: u64,
    /// Machine frame of the console ring.
    pub console_mfn: u64,
    /// Guest-physical address of the hypercall page, if the kernel has one.
    pub hypercall_page_gpa: Option<u64>,
}

/// Why a domain cannot be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The start-of-day layout does not fit.
    #[error("cannot lay out the domain: {0}")]
    Layout(#[from] LayoutError),
    /// The ELF image is malformed.
    #[error("kernel image: {0}")]
    Elf(#[from] xen_abi::elf::ElfError),
    /// A loadable segment lies outside the kernel's frames.
    #[error(
        "ELF segment {index} at paddr {paddr:#x} (+{size:#x}) lies outside the kernel's frames"
    )]
    SegmentOutside {
        /// Program header index.
        index: usize,
        /// Its `p_paddr`.
        paddr: u64,
        /// Its `p_memsz`.
        size: u64,
    },
    /// linux-loader refused the image.
    #[error("loading the kernel: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    /// The hypercall page is outside the kernel.
    #[error("XEN_ELFNOTE_HYPERCALL_PAGE {0:#x} is outside the kernel")]
    HypercallPage(u64),
    /// Writing guest memory failed (the VM's memory is smaller than the layout).
    #[error("writing guest memory at {addr:#x}: {source}")]
    Memory {
        /// Guest-physical address.
        addr: u64,
        /// The error.
        source: vm_memory::GuestMemoryError,
    },
}

fn write<M: GuestMemoryBackend>(mem: &M, addr: u64, data: &[u8]) -> Result<(), BuildError> {
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|source| BuildError::Memory { addr, source })
}

fn write_u64<M: GuestMemoryBackend>(mem: &M, addr: u64, v: u64) -> Result<(), BuildError> {
    write(mem, addr, &v.to_le_bytes())
}

fn pfn_addr(pfn: u64) -> u64 {
    pfn * PAGE_SIZE
}

/// Build the domain into `mem` (which must hold the guest's RAM from GPA 0 plus
/// [`SHARED_FRAMES`]). Nothing is written outside the guest's frames.
pub fn build<M: GuestMemoryBackend>(
    mem: &M,
    spec: &DomainSpec<'_>,
) -> Result<BootState, BuildError> {
    let k = &spec.kernel;
    let layout = layout::compute(&LayoutInput {
        virt_base: k.virt_base,
        virt_kstart: k.virt_kstart,
        virt_kend: k.virt_kend,
        nr_pages: spec.nr_pages,
        initrd_len: spec.initrd.len() as u64,
        unmapped_initrd: k.unmapped_initrd,
        p2m_base: k.init_p2m,
    })?;
    tracing::debug!(?layout, "domain layout");

    load_kernel(mem, spec, &layout)?;

    if let Some(rd) = layout.initrd {
        write(mem, pfn_addr(rd.pfn), spec.initrd)?;
    }

    // The p2m list: identity, one u64 per page.
    // xen: xg_dom_x86.c setup_pgtables_x86_64 copies the p2m into the guest
    let p2m_gpa = pfn_addr(layout.p2m.pfn);
    let mut chunk = Vec::with_capacity(512 * 8);
    let mut pfn = 0u64;
    while pfn < spec.nr_pages {
        chunk.clear();
        let end = (pfn + 512).min(spec.nr_pages);
        for p in pfn..end {
            chunk.extend_from_slice(&p.to_le_bytes());
        }
        write(mem, p2m_gpa + pfn * 8, &chunk)?;
        pfn = end;
    }

    write_page_tables(mem, spec, &layout)?;

    let hypercall_page_gpa = match k.hypercall_page {
        Some(va) => Some(write_hypercall_page(mem, k, &layout, va, spec.exit_va)?),
        None => None,
    };

    let shared_info_mfn = shared_info_mfn(spec.nr_pages);
    write_shared_info(mem, shared_info_mfn)?;
    write_start_info(mem, spec, &layout, shared_info_mfn)?;

    Ok(BootState {
        rip: k.virt_entry,
        rsp: layout.boot_stack_top(),
        rsi: layout.start_info_va(),
        cr3: pfn_addr(layout.l4_pfn()),
        shared_info_mfn,
        store_mfn: layout.xenstore_pfn,
        console_mfn: layout.console_pfn,
        hypercall_page_gpa,
        layout,
    })
}

/// Load the PT_LOAD segments at `p_paddr - paddr_offset`, after checking every one lies in
/// the kernel's frames (so a hostile image cannot reach any other memory).
fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    spec: &DomainSpec<'_>,
    layout: &Layout,
) -> Result<(), BuildError> {
    let elf = Elf::parse(spec.elf)?;
    let lo = pfn_addr(layout.kernel.pfn);
    let hi = lo + layout.kernel.pages * PAGE_SIZE;
    let off = spec.kernel.paddr_offset;
    for ph in elf.program_headers() {
        if ph.p_type != xen_abi::elf::PT_LOAD || ph.p_memsz == 0 && ph.p_filesz == 0 {
            continue;
        }
        let outside = BuildError::SegmentOutside {
            index: ph.index,
            paddr: ph.p_paddr,
            size: ph.p_memsz,
        };
        let start = match ph.p_paddr.checked_sub(off) {
            Some(s) => s,
            None => return Err(outside),
        };
        let end = start.checked_add(ph.p_memsz.max(ph.p_filesz));
        if start < lo || end.is_none_or(|e| e > hi) {
            return Err(outside);
        }
        if off != 0 {
            // linux-loader only adds offsets; legacy images with PADDR_OFFSET = VIRT_BASE
            // are copied here, from the already-validated segment bytes.
            let data = elf.segment_data(&ph)?;
            write(mem, start, data)?;
        }
    }
    if off == 0 {
        ElfLoader::load(mem, None, &mut Cursor::new(spec.elf), None)?;
    }
    Ok(())
}

fn write_page_tables<M: GuestMemoryBackend>(
    mem: &M,
    spec: &DomainSpec<'_>,
    layout: &Layout,
) -> Result<(), BuildError> {
    // Xen's builder writes the entries unadjusted; pinning the L4 then validates and adjusts
    // them. kxen does the same: `crate::mm::DomainMm::start_of_day` runs the PTE engine
    // over these tables (USER on kernel mappings, kxen's L4 slots, reference counts).
    // xen: xg_dom_x86.c setup_pgtables_x86_64; arch/x86/mm.c alloc_l4_table
    let mut result = Ok(());
    layout.for_each_pt_entry(|addr, val| {
        if result.is_ok() {
            result = write_u64(mem, addr, val);
        }
    });
    result?;
    let l4 = pfn_addr(layout.l4_pfn());
    for &(slot, entry) in spec.private_l4 {
        if slot < 512 {
            write_u64(mem, l4 + slot as u64 * 8, entry)?;
        }
    }
    Ok(())
}

/// Fill the hypercall page: 0xCC, then one stub per hypercall.
// xen: arch/x86/pv/hypercall.c pv_ring3_init_hypercall_page (64-bit guest kernel in ring 3)
fn write_hypercall_page<M: GuestMemoryBackend>(
    mem: &M,
    k: &KernelSpec,
    layout: &Layout,
    va: u64,
    exit_va: u64,
) -> Result<u64, BuildError> {
    let page_va = va & !(PAGE_SIZE - 1);
    if page_va < layout.kernel.vstart || page_va >= layout.kernel.vend() {
        return Err(BuildError::HypercallPage(va));
    }
    let gpa = page_va - k.virt_base;
    write(mem, gpa, &hypercall_page(exit_va))?;
    Ok(gpa)
}

/// Length of the exit sequence of a hypercall-page entry (`lea`, `pushfq`, `pop %r11`, the
/// store): a continuation restarts the call this many bytes before its return address.
pub const HYPERCALL_EXIT_LEN: u64 = 19;

/// The bytes of the hypercall page; `exit_va` is kxen's exit page
/// (`Ring0Layer::syscall_exit_va`).
///
/// Xen's entries for a 64-bit guest kernel save rcx and r11, put the hypercall number in
/// eax and execute `syscall`. kxen's entries keep that contract (same registers saved and
/// restored, same stack for `iret`) but leave the VM directly: they load rcx with the return
/// address and r11 with the flags, as `syscall` would, and store eax to the exit page, the
/// store kxen's LSTAR stub would make. On this host a `syscall` from CPL3 is a trap of its
/// own before that store (docs/performance.md), so this saves it on every hypercall. A guest
/// that issues `syscall` itself still gets the same hypercall.
pub fn hypercall_page(exit_va: u64) -> [u8; PAGE_SIZE as usize] {
    let mut page = [0xccu8; PAGE_SIZE as usize];
    let ea = exit_va.to_le_bytes();
    // lea 12(%rip),%rcx ; pushfq ; pop %r11 ; mov %eax,exit_va  (rcx = the next instruction)
    let leave: [u8; HYPERCALL_EXIT_LEN as usize] = [
        0x48, 0x8d, 0x0d, 0x0c, 0x00, 0x00, 0x00, 0x9c, 0x41, 0x5b, 0xa3, ea[0], ea[1], ea[2],
        ea[3], ea[4], ea[5], ea[6], ea[7],
    ];
    for (i, entry) in page.chunks_exact_mut(HYPERCALL_ENTRY_SIZE).enumerate() {
        let nr = (i as u32).to_le_bytes();
        let mut code = Vec::with_capacity(HYPERCALL_ENTRY_SIZE);
        if i == HYPERVISOR_IRET {
            // push %rcx; push %r11; push %rax; mov $23,%eax; <leave> (never returns here)
            code.extend_from_slice(&[0x51, 0x41, 0x53, 0x50, 0xb8, nr[0], nr[1], nr[2], nr[3]]);
            code.extend_from_slice(&leave);
        } else {
            // push %rcx; push %r11; mov $i,%eax; <leave>; pop %r11; pop %rcx; ret
            code.extend_from_slice(&[0x51, 0x41, 0x53, 0xb8, nr[0], nr[1], nr[2], nr[3]]);
            code.extend_from_slice(&leave);
            code.extend_from_slice(&[0x41, 0x5b, 0x59, 0xc3]);
        }
        entry[..code.len()].copy_from_slice(&code);
    }
    page
}

fn write_shared_info<M: GuestMemoryBackend>(mem: &M, mfn: u64) -> Result<(), BuildError> {
    // xen: xg_dom_x86.c shared_info_x86_64: zeroed, every vcpu_info's upcall masked
    use xen_abi::arch::Pod;
    let mut page = [0u8; PAGE_SIZE as usize];
    let si = xen_abi::shared_info::SharedInfo::start_of_day();
    page[..core::mem::size_of_val(&si)].copy_from_slice(si.as_bytes());
    write(mem, pfn_addr(mfn), &page)
}

fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    spec: &DomainSpec<'_>,
    layout: &Layout,
    shared_info_mfn: u64,
) -> Result<(), BuildError> {
    use xen_abi::start_info::{StartInfo, SIF_INITDOMAIN, SIF_MOD_START_PFN, SIF_PRIVILEGED};
    // xen: xg_dom_x86.c start_info_x86_64
    let mut si = StartInfo::new();
    si.nr_pages = spec.nr_pages;
    si.shared_info = pfn_addr(shared_info_mfn);
    si.pt_base = layout.pfn_to_virt(layout.page_tables.pfn);
    si.nr_pt_frames = layout.mappings[0].tables;
    si.mfn_list = layout.p2m.vstart;
    if layout.n_mappings > 1 {
        si.first_p2m_pfn = layout.p2m.pfn;
        si.nr_p2m_frames = layout.p2m.pages;
    }
    let mut flags = 0;
    if spec.privileged {
        flags |= SIF_PRIVILEGED | SIF_INITDOMAIN;
    }
    si.store_mfn = layout.xenstore_pfn;
    si.store_evtchn = spec.store_evtchn;
    si.console_mfn = layout.console_pfn;
    si.console_evtchn = spec.console_evtchn;
    if let Some(rd) = layout.initrd {
        if spec.kernel.unmapped_initrd {
            flags |= SIF_MOD_START_PFN;
            si.mod_start = rd.pfn;
            si.mod_len = rd.pages * PAGE_SIZE;
        } else {
            si.mod_start = rd.vstart;
            si.mod_len = rd.pages * PAGE_SIZE;
        }
    }
    si.flags = flags;
    si.set_cmdline(spec.cmdline.as_bytes());
    write(
        mem,
        pfn_addr(layout.start_info_pfn),
        xen_abi::arch::Pod::as_bytes(&si),
    )
}

impl KernelSpec {
    /// The builder's view of a kernel's parsed notes.
    pub fn from_params(p: &xen_abi::elfnote::KernelParams<'_>) -> Self {
        KernelSpec {
            virt_base: p.virt_base,
            paddr_offset: p.paddr_offset,
            virt_entry: p.virt_entry,
            virt_kstart: p.virt_kstart,
            virt_kend: p.virt_kend,
            hypercall_page: p.virt_hypercall,
            init_p2m: p.init_p2m,
            unmapped_initrd: p.mod_start_pfn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;
    use xen_abi::arch::Pod;
    use xen_abi::start_info::StartInfo;

    const PTE_P: u64 = 1 << 0;
    const PTE_USER: u64 = 1 << 2;

    fn ram(pages: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(
            GuestAddress(0),
            ((pages + SHARED_FRAMES) * PAGE_SIZE) as usize,
        )])
        .unwrap()
    }

    fn read_u64(mem: &GuestMemoryMmap, gpa: u64) -> u64 {
        mem.read_obj::<u64>(GuestAddress(gpa)).unwrap()
    }

    /// Decode one hypercall-page entry at its address in the page.
    fn decode_entry(p: &[u8], nr: usize) -> Vec<iced_x86::Instruction> {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic};
        let at = nr * HYPERCALL_ENTRY_SIZE;
        let bytes = &p[at..at + HYPERCALL_ENTRY_SIZE];
        let mut d = Decoder::with_ip(64, bytes, at as u64, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            let i = d.decode();
            if i.mnemonic() == Mnemonic::Int3 {
                break;
            }
            out.push(i);
        }
        out
    }

    #[test]
    fn hypercall_page_entries_save_rcx_r11_and_leave_through_the_exit_page() {
        use iced_x86::{Mnemonic, Register};
        let exit_va = 0xffff_8080_001f_f000u64;
        let p = hypercall_page(exit_va);
        for nr in [0usize, 17, 40] {
            let ins = decode_entry(&p, nr);
            let m: Vec<Mnemonic> = ins.iter().map(|i| i.mnemonic()).collect();
            assert_eq!(
                m,
                [
                    Mnemonic::Push,
                    Mnemonic::Push,
                    Mnemonic::Mov,
                    Mnemonic::Lea,
                    Mnemonic::Pushfq,
                    Mnemonic::Pop,
                    Mnemonic::Mov,
                    Mnemonic::Pop,
                    Mnemonic::Pop,
                    Mnemonic::Ret
                ],
                "entry {nr}"
            );
            assert_eq!(ins[0].op0_register(), Register::RCX);
            assert_eq!(ins[1].op0_register(), Register::R11);
            assert_eq!(ins[2].op0_register(), Register::EAX);
            assert_eq!(ins[2].immediate32(), nr as u32);
            // rcx = where the guest resumes (the instruction after the store), as `syscall`
            // would leave it; r11 = the flags.
            assert_eq!(ins[3].op0_register(), Register::RCX);
            assert_eq!(ins[3].memory_displacement64(), ins[7].ip());
            assert_eq!(ins[5].op0_register(), Register::R11);
            assert_eq!(ins[6].memory_displacement64(), exit_va);
            assert_eq!(ins[6].op1_register(), Register::EAX);
            assert_eq!(ins[7].op0_register(), Register::R11);
            assert_eq!(ins[8].op0_register(), Register::RCX);
            assert!(ins[9].next_ip() <= ((nr + 1) * HYPERCALL_ENTRY_SIZE) as u64);
        }
        // iret: push rcx, r11, rax (Xen's frame), eax = 23, then leave; never returns.
        let ins = decode_entry(&p, 23);
        let m: Vec<Mnemonic> = ins.iter().map(|i| i.mnemonic()).collect();
        assert_eq!(
            m,
            [
                Mnemonic::Push,
                Mnemonic::Push,
                Mnemonic::Push,
                Mnemonic::Mov,
                Mnemonic::Lea,
                Mnemonic::Pushfq,
                Mnemonic::Pop,
                Mnemonic::Mov
            ]
        );
        assert_eq!(ins[2].op0_register(), Register::RAX);
        assert_eq!(ins[3].immediate32(), 23);
        assert_eq!(ins[7].memory_displacement64(), exit_va);
    }

    /// A minimal PV kernel: one PT_LOAD at paddr `paddr`, notes passed in as params.
    fn spec_for(elf: &[u8], kernel: KernelSpec, nr_pages: u64) -> DomainSpec<'_> {
        DomainSpec {
            elf,
            kernel,
            initrd: b"initrd-bytes",
            cmdline: "console=hvc0",
            nr_pages,
            privileged: false,
            store_evtchn: 1,
            console_evtchn: 2,
            private_l4: &[(257, 0x80_0000_0000_0067)],
            exit_va: 0xffff_8080_001f_f000,
        }
    }

    fn pvgrub() -> Option<Vec<u8>> {
        let dir = std::env::var("KXEN_ASSETS").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/assets").to_string()
        });
        std::fs::read(format!("{dir}/pvgrub-x86_64.elf")).ok()
    }

    #[test]
    fn builds_pvgrub_with_xens_start_of_day_state() {
        let Some(elf) = pvgrub() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PV-GRUB asset missing in CI"
            );
            eprintln!("skipped: PV-GRUB asset not present (run scripts/fetch-assets)");
            return;
        };
        let notes = xen_abi::elfnote::parse_xen_notes(&elf).unwrap();
        let params = notes.kernel_params().unwrap();
        let nr_pages = 32 << 8; // 32 MiB
        let mem = ram(nr_pages);
        let spec = spec_for(&elf, KernelSpec::from_params(&params), nr_pages);
        let boot = build(&mem, &spec).unwrap();
        let l = boot.layout;
        assert_eq!(boot.rip, params.virt_entry);
        assert_eq!(boot.rsp, l.pfn_to_virt(l.bootstack_pfn + 1));
        assert_eq!(boot.rsi, l.pfn_to_virt(l.start_info_pfn));
        assert_eq!(boot.cr3, l.page_tables.pfn * PAGE_SIZE);
        // start_info
        let mut buf = vec![0u8; core::mem::size_of::<StartInfo>()];
        mem.read_slice(&mut buf, GuestAddress(l.start_info_pfn * PAGE_SIZE))
            .unwrap();
        let si = StartInfo::from_bytes(&buf).unwrap();
        assert_eq!(si.magic_str(), b"xen-3.0-x86_64");
        assert_eq!(si.nr_pages, nr_pages);
        assert_eq!(si.shared_info, nr_pages * PAGE_SIZE);
        assert_eq!(si.pt_base, l.pfn_to_virt(l.page_tables.pfn));
        assert_eq!(si.nr_pt_frames, l.page_tables.pages);
        assert_eq!(si.mfn_list, l.p2m.vstart);
        assert_eq!((si.store_mfn, si.store_evtchn), (l.xenstore_pfn, 1));
        assert_eq!((si.console_mfn, si.console_evtchn), (l.console_pfn, 2));
        assert_eq!(si.cmdline(), b"console=hvc0");
        assert_eq!(si.flags, 0);
        let rd = l.initrd.unwrap();
        assert_eq!(si.mod_start, rd.vstart);
        // p2m is the identity
        for pfn in [0, 1, 4095, nr_pages - 1] {
            assert_eq!(read_u64(&mem, l.p2m.pfn * PAGE_SIZE + pfn * 8), pfn);
        }
        // the initrd bytes are where start_info says
        let mut rdb = [0u8; 12];
        mem.read_slice(&mut rdb, GuestAddress(rd.pfn * PAGE_SIZE))
            .unwrap();
        assert_eq!(&rdb, b"initrd-bytes");
        // After the start-of-day validation (the engine's adjust): kxen's slot installed, and
        // the first mapping reachable with USER set at every level.
        let ram = crate::memory::GuestRam::new(nr_pages + SHARED_FRAMES).unwrap();
        let mut page = vec![0u8; ((nr_pages + SHARED_FRAMES) * PAGE_SIZE) as usize];
        mem.read_slice(&mut page, GuestAddress(0)).unwrap();
        ram.mem().write_slice(&page, GuestAddress(0)).unwrap();
        let mut mm = crate::mm::DomainMm::new(
            nr_pages,
            &[(boot.shared_info_mfn, true)],
            Default::default(),
            spec.private_l4,
        );
        mm.start_of_day(&ram, boot.cr3 / PAGE_SIZE).unwrap();
        let mem = ram.mem().clone();
        let l4 = boot.cr3;
        assert_eq!(read_u64(&mem, l4 + 257 * 8), 0x80_0000_0000_0067);
        let mut t = l4;
        for level in (0..4).rev() {
            let e = read_u64(
                &mem,
                t + ((l.start_info_va() >> (12 + 9 * level)) & 511) * 8,
            );
            assert_ne!(e & PTE_P, 0);
            assert_ne!(e & PTE_USER, 0, "level {level} entry lacks USER");
            t = e & 0x000f_ffff_ffff_f000;
        }
        assert_eq!(t, l.start_info_pfn * PAGE_SIZE);
        // shared_info: every upcall masked
        for v in 0..32u64 {
            assert_eq!(
                mem.read_obj::<u8>(GuestAddress(si.shared_info + v * 64 + 1))
                    .unwrap(),
                1
            );
        }
        // the kernel's loaded bytes match the ELF's first loadable segment
        let e = Elf::parse(&elf).unwrap();
        let ph = e
            .program_headers()
            .find(|p| p.p_type == xen_abi::elf::PT_LOAD && p.p_filesz > 0)
            .unwrap();
        let want = e.segment_data(&ph).unwrap();
        let mut got = vec![0u8; want.len()];
        mem.read_slice(&mut got, GuestAddress(ph.p_paddr - params.paddr_offset))
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn segment_outside_the_kernel_frames_is_refused_before_loading() {
        let Some(elf) = pvgrub() else {
            eprintln!("skipped: PV-GRUB asset not present (run scripts/fetch-assets)");
            return;
        };
        let notes = xen_abi::elfnote::parse_xen_notes(&elf).unwrap();
        let mut k = KernelSpec::from_params(&notes.kernel_params().unwrap());
        // Claim a kernel that ends before its segments do.
        k.virt_kend = k.virt_kstart + PAGE_SIZE;
        let mem = ram(8192);
        let err = build(&mem, &spec_for(&elf, k, 8192)).unwrap_err();
        assert!(matches!(err, BuildError::SegmentOutside { .. }), "{err}");
    }

    #[test]
    fn memory_too_small_is_a_layout_error() {
        let Some(elf) = pvgrub() else {
            eprintln!("skipped: PV-GRUB asset not present (run scripts/fetch-assets)");
            return;
        };
        let notes = xen_abi::elfnote::parse_xen_notes(&elf).unwrap();
        let k = KernelSpec::from_params(&notes.kernel_params().unwrap());
        let mem = ram(512);
        let err = build(&mem, &spec_for(&elf, k, 512)).unwrap_err();
        assert!(matches!(err, BuildError::Layout(_)), "{err}");
    }
}
