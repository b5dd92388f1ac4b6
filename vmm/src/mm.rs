//! The domain's frames as Xen's PV memory management sees them: one [`FrameState`] per guest
//! frame (RAM, then the Xen-shared frames after it), the PTE engine's side table, and the
//! operations built on them: validating (promoting) and devalidating page tables, pins, base
//! pointers, and single checked page-table entry updates.
//!
//! The rules are the pure engine's ([`xen_abi::pte`], [`xen_abi::frame`]); this module reads
//! and writes the tables in guest RAM and keeps the counts (xen: arch/x86/mm.c
//! `alloc_lN_table`, `free_lN_table`, `mod_lN_entry`, `new_guest_cr3`).
//!
//! Deep structures never recurse on the host stack without bound: promotion nests at most
//! four levels (a linear entry never promotes), and devalidation uses a worklist.
//!
//! Descriptor tables: every frame of a vCPU's GDT (`set_gdt`) and every usable page of its
//! LDT (`MMUEXT_SET_LDT`) holds a `SegDesc` type reference (xen: `PGT_seg_desc_page`), so
//! while it is in use it cannot be mapped writable or become a page table, and its
//! descriptors were validated (and fixed up in place) when it took the type. kxen copies
//! the tables into the vCPU's ring-0 area (GDT below Xen's reserved entries, the LDT copy
//! described by the descriptor at `ring0::LDT_SEL`); `update_descriptor` writes the guest
//! frame and every vCPU's copy of it under the same lock, so no vCPU ever sees a stale
//! or unchecked descriptor after the hypercall returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use thiserror::Error;
use tracing::{debug, warn};
use vm_memory::{Bytes, GuestAddress};
use xen_abi::cpu::{check_descriptor, guest_address_ok, MAX_GDT_FRAMES};
use xen_abi::errno::Errno;
use xen_abi::frame::{
    self, get_page, get_page_type, put_page, put_page_type, take_ref, validation_done, FrameError,
    FrameState, FrameTable, TableFrames, TypeGet, TypePut,
};
use xen_abi::mmu::{pte_mfn, _PAGE_PRESENT};
use xen_abi::pte::{
    held_ref, preserve_ad, update_entry, EntryAt, FrameType, Level, PteConfig, PteError, Ref,
    SideEntry, SideTable, SideTableFull, TableBits, ENTRIES_PER_TABLE, L4_XEN_FIRST_SLOT,
    L4_XEN_LAST_SLOT,
};

use crate::memory::{GuestRam, PAGE_SIZE};
use crate::ring0::{Ring0Layer, LDT_PAGES, LDT_SEL};

/// Why a memory-management operation failed. [`MmError::errno`] is Xen's errno for it.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum MmError {
    /// The PTE engine refused an entry.
    #[error("{0}")]
    Pte(PteError),
    /// A frame operation (type, count, pin) was refused.
    #[error("{0}")]
    Frame(FrameError),
    /// The frame is not one of the domain's (or not usable for this operation).
    #[error("frame {0:#x} is not usable here")]
    BadFrame(u64),
    /// Guest RAM could not be read or written at this frame.
    #[error("frame {0:#x} is not in guest RAM")]
    Memory(u64),
}

impl MmError {
    /// Xen's errno for the failure.
    pub fn errno(&self) -> Errno {
        match self {
            MmError::Pte(e) => e.errno(),
            MmError::Frame(e) => e.errno(),
            MmError::BadFrame(_) | MmError::Memory(_) => Errno::EINVAL,
        }
    }

    /// `-errno` as a hypercall return value.
    pub fn ret(&self) -> i64 {
        -i64::from(self.errno().0)
    }
}

impl From<PteError> for MmError {
    fn from(e: PteError) -> Self {
        MmError::Pte(e)
    }
}

impl From<FrameError> for MmError {
    fn from(e: FrameError) -> Self {
        MmError::Frame(e)
    }
}

/// One [`FrameState`] per frame, indexed by MFN (`0..len`); frames the guest gave back
/// (`decrease_reservation`) are absent: not the domain's until populated again.
#[derive(Debug, Clone, Default)]
pub struct FrameVec {
    frames: Vec<FrameState>,
    absent: Vec<bool>,
}

impl FrameVec {
    fn index(&self, mfn: u64) -> Option<usize> {
        let i = usize::try_from(mfn).ok()?;
        (i < self.frames.len() && !self.absent.get(i).copied().unwrap_or(false)).then_some(i)
    }
}

impl FrameTable for FrameVec {
    fn state(&self, mfn: u64) -> Option<&FrameState> {
        self.index(mfn).and_then(|i| self.frames.get(i))
    }
    fn state_mut(&mut self, mfn: u64) -> Option<&mut FrameState> {
        self.index(mfn).and_then(|i| self.frames.get_mut(i))
    }
}

/// The side table: per page-table frame, 2 bits per slot; only tables with a record
/// are stored.
#[derive(Debug, Clone, Default)]
pub struct SideMap(HashMap<u64, TableBits>);

impl SideTable for SideMap {
    fn get(&self, table_mfn: u64, slot: usize) -> SideEntry {
        self.0
            .get(&table_mfn)
            .map_or_else(SideEntry::default, |b| b.get(slot))
    }
    fn set(&mut self, table_mfn: u64, slot: usize, entry: SideEntry) -> Result<(), SideTableFull> {
        if entry == SideEntry::default() {
            if let Some(b) = self.0.get_mut(&table_mfn) {
                b.set(slot, entry);
                if b.is_empty() {
                    self.0.remove(&table_mfn);
                }
            }
            return Ok(());
        }
        self.0.entry(table_mfn).or_default().set(slot, entry);
        Ok(())
    }
}

/// What an `mmu_update` NORMAL request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormalUpdate {
    /// A validated page-table entry was updated (the value installed).
    Entry(u64),
    /// The frame is no page table: the value was written as plain data (xen:
    /// `PGT_writable_page` case).
    Plain,
}

/// The domain's memory-management state (owned by `DomainShared`, behind a mutex).
#[derive(Debug, Clone, Default)]
pub struct DomainMm {
    frames: FrameVec,
    side: SideMap,
    cfg: PteConfig,
    private_l4: Vec<(usize, u64)>,
    nr_pages: u64,
    /// Per vCPU: its descriptor tables' frames (each holding a `SegDesc` reference).
    desc: HashMap<u32, VcpuDescTables>,
    /// Where the vCPUs' GDT and LDT copies live (absent in unit tests without a VM).
    ring0: Option<Ring0Layer>,
    /// A frame gained or lost a page-table type since the last [`DomainMm::take_flush`]:
    /// stale translations through (or of) it must go before the guest runs on (xen: the
    /// TLB-flush filter on type changes in `_get_page_type`).
    flush_needed: bool,
    /// Guest-physical addresses of entries written in guest RAM since the last
    /// [`DomainMm::take_replay`]: KVM's shadow MMU must be told (`Vcpu::sync_pte_writes`).
    replay: BTreeSet<u64>,
}

/// One vCPU's descriptor tables as the frame table sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuDescTables {
    /// GDT frames (`set_gdt`), each holding a `SegDesc` reference.
    pub gdt: Vec<u64>,
    /// `MMUEXT_SET_LDT`: linear base.
    pub ldt_base: u64,
    /// `MMUEXT_SET_LDT`: entries (0 = no LDT).
    pub ldt_ents: u32,
    /// Per LDT page: the frame mapped there, holding a `SegDesc` reference, or `None` when
    /// the page could not be used (unmapped, outside guest space, mapped writable elsewhere,
    /// a page table, or holding a descriptor Xen refuses): its copy reads as empty.
    pub ldt: Vec<Option<u64>>,
}

/// A descriptor page with every descriptor checked and fixed up ([`check_descriptor`]), or
/// `None` if one is refused.
// xen: arch/x86/mm.c, alloc_segdesc_page
pub fn checked_segdesc_page(page: &[u8; PAGE_SIZE as usize]) -> Option<[u8; PAGE_SIZE as usize]> {
    let mut out = [0u8; PAGE_SIZE as usize];
    for (e, o) in page.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(e);
        o.copy_from_slice(&check_descriptor(u64::from_le_bytes(w))?.to_le_bytes());
    }
    Some(out)
}

/// The LDT system descriptor (16 bytes, type 2, present, DPL 0) for a table at `base`
/// with `ents` entries; two zero words for no LDT.
pub fn ldt_descriptor(base: u64, ents: u32) -> [u64; 2] {
    if ents == 0 {
        return [0, 0];
    }
    let limit = u64::from(ents) * 8 - 1;
    let lo = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x82 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [lo, base >> 32]
}

fn is_xen_l4_slot(level: Level, slot: usize) -> bool {
    level == Level::L4 && (L4_XEN_FIRST_SLOT..=L4_XEN_LAST_SLOT).contains(&slot)
}

fn entry_gpa(mfn: u64, slot: usize) -> Option<GuestAddress> {
    mfn.checked_mul(PAGE_SIZE)
        .and_then(|a| a.checked_add(slot as u64 * 8))
        .map(GuestAddress)
}

impl DomainMm {
    /// State for a domain of `nr_pages` RAM frames followed by the Xen-shared frames
    /// `shared` (`(mfn, writable)`, each at or above `nr_pages`). `private_l4` are the
    /// entries kxen installs in Xen's L4 slots of every validated L4.
    pub fn new(
        nr_pages: u64,
        shared: &[(u64, bool)],
        cfg: PteConfig,
        private_l4: &[(usize, u64)],
    ) -> Self {
        let top = shared
            .iter()
            .map(|&(m, _)| m.saturating_add(1))
            .fold(nr_pages, u64::max);
        let mut frames = vec![FrameState::default(); usize::try_from(top).unwrap_or(0)];
        for &(mfn, writable) in shared {
            if let Some(s) = usize::try_from(mfn).ok().and_then(|i| frames.get_mut(i)) {
                // xen: share_xen_page_with_guest: a Xen page, never the guest's RAM.
                s.xen_shared = Some(writable);
            }
        }
        let absent = vec![false; frames.len()];
        DomainMm {
            frames: FrameVec { frames, absent },
            side: SideMap::default(),
            cfg,
            private_l4: private_l4.to_vec(),
            nr_pages,
            desc: HashMap::new(),
            ring0: None,
            flush_needed: false,
            replay: BTreeSet::new(),
        }
    }

    /// Pages of guest RAM (the domain's maximum reservation).
    pub fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    fn is_absent(&self, mfn: u64) -> bool {
        mfn < self.nr_pages
            && usize::try_from(mfn)
                .ok()
                .and_then(|i| self.frames.absent.get(i))
                .copied()
                .unwrap_or(false)
    }

    /// RAM frames the domain gave back and holds no more.
    pub fn absent_pages(&self) -> u64 {
        self.nr_pages - self.present_pages()
    }

    /// RAM frames the domain holds now (`XENMEM_current_reservation`).
    pub fn present_pages(&self) -> u64 {
        let gone = self
            .frames
            .absent
            .iter()
            .take(usize::try_from(self.nr_pages).unwrap_or(usize::MAX))
            .filter(|&&a| a)
            .count() as u64;
        self.nr_pages - gone
    }

    /// Give RAM frames `mfn .. mfn + n` back (`decrease_reservation`): each must be the
    /// domain's and unused (no mapping, type or pin); stops at the first that is not.
    /// Returns how many were removed.
    // xen: common/memory.c guest_remove_page (Xen frees a still-referenced page when its
    // last reference goes; kxen refuses it instead).
    pub fn remove_pages(&mut self, mfn: u64, n: u64) -> u64 {
        for k in 0..n {
            let Some(m) = mfn.checked_add(k) else {
                return k;
            };
            let ok = self.is_ram(m)
                && self.frames.state(m).is_some_and(|s| {
                    s.refs == 0 && s.type_count == 0 && !s.pinned && s.xen_shared.is_none()
                });
            if !ok {
                return k;
            }
            if let Some(a) = usize::try_from(m)
                .ok()
                .and_then(|i| self.frames.absent.get_mut(i))
            {
                *a = true;
            }
            if let Some(s) = usize::try_from(m)
                .ok()
                .and_then(|i| self.frames.frames.get_mut(i))
            {
                *s = FrameState::default();
            }
        }
        n
    }

    /// Give frames `mfn .. mfn + n` back to the domain, zeroed (`populate_physmap` with an
    /// identity p2m): all must be absent RAM frames, or nothing happens.
    pub fn populate_pages(&mut self, ram: &GuestRam, mfn: u64, n: u64) -> bool {
        let all_absent = (0..n).all(|k| mfn.checked_add(k).is_some_and(|m| self.is_absent(m)));
        if !all_absent {
            return false;
        }
        for m in mfn..mfn + n {
            if let Some(a) = usize::try_from(m)
                .ok()
                .and_then(|i| self.frames.absent.get_mut(i))
            {
                *a = false;
            }
            if let Some(gpa) = m.checked_mul(PAGE_SIZE) {
                let _ = ram
                    .mem()
                    .write_slice(&[0u8; PAGE_SIZE as usize], GuestAddress(gpa));
            }
            self.note_page_written(m);
        }
        true
    }

    /// The first naturally aligned run of `n` absent frames (`increase_reservation`).
    pub fn find_absent(&self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        let mut m = 0u64;
        while m.checked_add(n)? <= self.nr_pages {
            if (m..m + n).all(|k| self.is_absent(k)) {
                return Some(m);
            }
            m += n;
        }
        None
    }

    /// The engine configuration.
    pub fn config(&self) -> PteConfig {
        self.cfg
    }

    /// State of frame `mfn` (`None`: not the domain's).
    pub fn frame(&self, mfn: u64) -> Option<FrameState> {
        self.frames.state(mfn).copied()
    }

    /// Whether `mfn` is guest RAM (not a shared frame, not outside).
    pub fn is_ram(&self, mfn: u64) -> bool {
        self.frames
            .state(mfn)
            .is_some_and(|s| s.xen_shared.is_none())
    }

    /// The current type of `mfn` (`None` type when no type reference is held).
    pub fn current_type(&self, mfn: u64) -> FrameType {
        self.frames
            .state(mfn)
            .map_or(FrameType::None, FrameState::current_type)
    }

    /// Whether `mfn` is a validated page table of `level`.
    pub fn is_validated_table(&self, mfn: u64, level: Level) -> bool {
        self.frames.state(mfn).is_some_and(|s| {
            s.current_type() == level.table_type() && s.validated && s.xen_shared.is_none()
        })
    }

    /// The validated page-table level of `mfn`, if it is one.
    pub fn table_level(&self, mfn: u64) -> Option<Level> {
        let s = self.frames.state(mfn)?;
        if s.validated && s.xen_shared.is_none() {
            s.current_type().level()
        } else {
            None
        }
    }

    /// Whether a TLB flush is due because a frame changed type; clears the flag.
    pub fn take_flush(&mut self) -> bool {
        std::mem::take(&mut self.flush_needed)
    }

    /// Where the vCPUs' descriptor-table copies live (set once the VM exists).
    pub fn attach_ring0(&mut self, ring0: Ring0Layer) {
        self.ring0 = Some(ring0);
    }

    /// `vcpu`'s descriptor tables (empty if it never set any).
    pub fn desc_tables(&self, vcpu: u32) -> VcpuDescTables {
        self.desc.get(&vcpu).cloned().unwrap_or_default()
    }

    /// Read guest frame `mfn` (RAM only).
    fn read_page(&self, ram: &GuestRam, mfn: u64) -> Result<[u8; PAGE_SIZE as usize], MmError> {
        let mut page = [0u8; PAGE_SIZE as usize];
        if !self.is_ram(mfn) {
            return Err(MmError::BadFrame(mfn));
        }
        let gpa = mfn.checked_mul(PAGE_SIZE).ok_or(MmError::Memory(mfn))?;
        ram.mem()
            .read_slice(&mut page, GuestAddress(gpa))
            .map_err(|_| MmError::Memory(mfn))?;
        Ok(page)
    }

    /// Validate frame `mfn` as a descriptor page, writing the fixed-up descriptors back
    /// (xen: alloc_segdesc_page validates in place).
    fn validate_segdesc(&mut self, ram: &GuestRam, mfn: u64) -> Result<(), MmError> {
        let page = self.read_page(ram, mfn)?;
        let fixed = checked_segdesc_page(&page).ok_or(MmError::BadFrame(mfn))?;
        if fixed != page {
            ram.mem()
                .write_slice(&fixed, GuestAddress(mfn * PAGE_SIZE))
                .map_err(|_| MmError::Memory(mfn))?;
        }
        Ok(())
    }

    /// The copy of descriptor frame `mfn` the CPU may use: checked again on the way (a
    /// descriptor refused now reads as empty), zeroes if `mfn` is `None` or unreadable.
    fn segdesc_copy(&self, ram: &GuestRam, mfn: Option<u64>) -> [u8; PAGE_SIZE as usize] {
        let mut page = mfn
            .and_then(|m| self.read_page(ram, m).ok())
            .unwrap_or([0u8; PAGE_SIZE as usize]);
        for e in page.chunks_exact_mut(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(e);
            let d = check_descriptor(u64::from_le_bytes(w)).unwrap_or(0);
            e.copy_from_slice(&d.to_le_bytes());
        }
        page
    }

    fn write_ring0(&self, va: u64, bytes: &[u8]) -> bool {
        let Some(r0) = &self.ring0 else {
            return false;
        };
        let Some(gpa) = r0.va_to_gpa(va, bytes.len() as u64) else {
            warn!(va, "descriptor-table copy outside the ring-0 area");
            return false;
        };
        r0.private_mem()
            .mem()
            .write_slice(bytes, GuestAddress(gpa))
            .is_ok()
    }

    /// `set_gdt` for `vcpu` (also `VCPUOP_initialise`): take a `SegDesc` reference on each
    /// frame (validating a frame that is not one yet; a frame that is a page table, mapped
    /// writable, Xen's or not the domain's is refused with `-EINVAL`), then drop the old
    /// GDT's references and write the vCPU's GDT copy. Nothing changes on failure. Returns
    /// whether the copy was written (false without a ring-0 layer).
    // xen: arch/x86/pv/descriptor-tables.c, pv_set_gdt / pv_destroy_gdt
    pub fn set_gdt(&mut self, ram: &GuestRam, vcpu: u32, frames: &[u64]) -> Result<bool, MmError> {
        if frames.len() > MAX_GDT_FRAMES {
            return Err(MmError::BadFrame(0));
        }
        for (i, &mfn) in frames.iter().enumerate() {
            let r = if self.is_ram(mfn) {
                self.get_typed(ram, mfn, FrameType::SegDesc)
            } else {
                Err(MmError::BadFrame(mfn))
            };
            if let Err(e) = r {
                for &taken in &frames[..i] {
                    self.put_typed(ram, taken);
                }
                return Err(e);
            }
        }
        let old = std::mem::replace(&mut self.desc.entry(vcpu).or_default().gdt, frames.to_vec());
        for mfn in old {
            self.put_typed(ram, mfn);
        }
        Ok(self.copy_gdt(ram, vcpu))
    }

    fn copy_gdt(&self, ram: &GuestRam, vcpu: u32) -> bool {
        let Some(r0) = self.ring0.as_ref().and_then(|r| r.vcpu(vcpu)) else {
            return false;
        };
        let frames = self
            .desc
            .get(&vcpu)
            .map(|t| t.gdt.as_slice())
            .unwrap_or(&[]);
        let mut ok = true;
        for page in 0..MAX_GDT_FRAMES {
            let copy = self.segdesc_copy(ram, frames.get(page).copied());
            ok &= self.write_ring0(r0.gdt_base + page as u64 * PAGE_SIZE, &copy);
        }
        ok
    }

    /// `MMUEXT_SET_LDT` for `vcpu` (arguments already checked): drop the old LDT's
    /// references, then take a `SegDesc` reference on each page of the new one as the
    /// guest kernel's page tables at `kernel_cr3` map it, write the LDT copy and the LDT
    /// descriptor in the vCPU's GDT. Xen maps each LDT page when the guest first uses it and
    /// a page that cannot be used faults then; kxen looks at the pages now and a page that
    /// cannot be used reads as empty descriptors. Returns whether the copy was written.
    // xen: arch/x86/mm.c, MMUEXT_SET_LDT; pv/descriptor-tables.c, pv_destroy_ldt;
    // pv/mm.c, pv_map_ldt_shadow_page
    pub fn set_ldt(
        &mut self,
        ram: &GuestRam,
        vcpu: u32,
        base: u64,
        ents: u32,
        kernel_cr3: u64,
    ) -> bool {
        let old = std::mem::take(&mut self.desc.entry(vcpu).or_default().ldt);
        for mfn in old.into_iter().flatten() {
            self.put_typed(ram, mfn);
        }
        let pages = (u64::from(ents.min(8192)) * 8).div_ceil(PAGE_SIZE);
        let mut ldt = Vec::with_capacity(pages as usize);
        for i in 0..pages {
            let mfn = base
                .checked_add(i * PAGE_SIZE)
                .filter(|&va| guest_address_ok(va) && guest_address_ok(va + PAGE_SIZE - 1))
                .and_then(|va| self.l1_slot_for(ram, kernel_cr3, va))
                .and_then(|(l1, slot)| self.read_entry(ram, l1, slot).ok())
                .filter(|e| e & _PAGE_PRESENT != 0)
                .map(pte_mfn)
                .filter(|&m| self.is_ram(m));
            let held = mfn.filter(|&m| match self.get_typed(ram, m, FrameType::SegDesc) {
                Ok(()) => true,
                Err(e) => {
                    debug!(vcpu, page = i, "LDT page unusable: {e}");
                    false
                }
            });
            ldt.push(held);
        }
        let t = self.desc.entry(vcpu).or_default();
        t.ldt = ldt;
        t.ldt_base = base;
        t.ldt_ents = ents;
        self.copy_ldt(ram, vcpu)
    }

    fn copy_ldt(&self, ram: &GuestRam, vcpu: u32) -> bool {
        let Some(r0) = self.ring0.as_ref().and_then(|r| r.vcpu(vcpu)) else {
            return false;
        };
        let t = self.desc.get(&vcpu).cloned().unwrap_or_default();
        let mut ok = true;
        for (i, &mfn) in t.ldt.iter().enumerate().take(LDT_PAGES as usize) {
            let copy = self.segdesc_copy(ram, mfn);
            ok &= self.write_ring0(r0.ldt_base + i as u64 * PAGE_SIZE, &copy);
        }
        let d = ldt_descriptor(r0.ldt_base, t.ldt_ents);
        let bytes: Vec<u8> = d.iter().flat_map(|w| w.to_le_bytes()).collect();
        ok & self.write_ring0(r0.gdt_base + u64::from(LDT_SEL), &bytes)
    }

    /// `update_descriptor`: write the (already checked and fixed-up) descriptor `desc` at
    /// machine address `ma` (8-byte aligned). The frame must be able to take the type it
    /// has to hold meanwhile: `SegDesc` if it is a descriptor page, else writable (so a page
    /// table is refused with `-EINVAL`). Every vCPU's GDT/LDT copy of that frame is updated
    /// too, before this returns.
    // xen: arch/x86/pv/descriptor-tables.c, do_update_descriptor
    pub fn update_descriptor(&mut self, ram: &GuestRam, ma: u64, desc: u64) -> Result<(), MmError> {
        let mfn = ma / PAGE_SIZE;
        let off = ma % PAGE_SIZE;
        if !off.is_multiple_of(8) || !self.is_ram(mfn) {
            return Err(MmError::BadFrame(mfn));
        }
        let ty = match self.frames.state(mfn).map(|s| s.type_) {
            Some(FrameType::SegDesc) => FrameType::SegDesc,
            _ => FrameType::Writable,
        };
        self.get_typed(ram, mfn, ty)?;
        let r = ram
            .mem()
            .store(desc, GuestAddress(ma), Ordering::SeqCst)
            .map_err(|_| MmError::Memory(mfn));
        self.put_typed(ram, mfn);
        r?;
        if ty != FrameType::SegDesc {
            return Ok(());
        }
        let Some(r0) = &self.ring0 else {
            return Ok(());
        };
        for (&vcpu, t) in &self.desc {
            let Some(v) = r0.vcpu(vcpu) else {
                continue;
            };
            let gdt = t.gdt.iter().enumerate().filter(|(_, &m)| m == mfn);
            let ldt = t.ldt.iter().enumerate().filter(|(_, &m)| m == Some(mfn));
            let targets = gdt
                .map(|(p, _)| v.gdt_base + p as u64 * PAGE_SIZE)
                .chain(ldt.map(|(p, _)| v.ldt_base + p as u64 * PAGE_SIZE));
            for page_va in targets {
                let stored = r0.va_to_gpa(page_va + off, 8).and_then(|gpa| {
                    r0.private_mem()
                        .mem()
                        .store(desc, GuestAddress(gpa), Ordering::SeqCst)
                        .ok()
                });
                if stored.is_none() {
                    warn!(vcpu, mfn, "descriptor copy not updated");
                }
            }
        }
        Ok(())
    }

    /// Read entry `slot` of table frame `mfn`.
    pub fn read_entry(&self, ram: &GuestRam, mfn: u64, slot: usize) -> Result<u64, MmError> {
        let gpa = entry_gpa(mfn, slot).ok_or(MmError::Memory(mfn))?;
        if self.frames.state(mfn).is_none() {
            return Err(MmError::Memory(mfn));
        }
        ram.mem().read_obj(gpa).map_err(|_| MmError::Memory(mfn))
    }

    fn write_entry(
        &mut self,
        ram: &GuestRam,
        mfn: u64,
        slot: usize,
        v: u64,
    ) -> Result<(), MmError> {
        let gpa = entry_gpa(mfn, slot).ok_or(MmError::Memory(mfn))?;
        if self.frames.state(mfn).is_none() {
            return Err(MmError::Memory(mfn));
        }
        ram.mem()
            .write_obj(v, gpa)
            .map_err(|_| MmError::Memory(mfn))?;
        self.replay.insert(gpa.0);
        Ok(())
    }

    /// Guest-physical addresses of entries written since the last call (each once).
    pub fn take_replay(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.replay).into_iter().collect()
    }

    /// Note that the VMM wrote all of frame `mfn` (CLEAR_PAGE, COPY_PAGE).
    pub fn note_page_written(&mut self, mfn: u64) {
        if let Some(base) = mfn.checked_mul(PAGE_SIZE) {
            self.replay
                .extend((0..PAGE_SIZE).step_by(8).map(|o| base + o));
        }
    }

    /// Take a general and a type reference of `ty` on `mfn`, validating it as a page table
    /// if this is its first reference of that type (xen: get_page_and_type).
    pub fn get_typed(&mut self, ram: &GuestRam, mfn: u64, ty: FrameType) -> Result<(), MmError> {
        match take_ref(&mut self.frames, Ref::Typed(mfn, ty))? {
            TypeGet::Done => Ok(()),
            TypeGet::Validate(t) => self.finish_validation(ram, mfn, t),
        }
    }

    /// After a type reference asked for validation: validate, and on failure drop the
    /// references just taken.
    fn finish_validation(
        &mut self,
        ram: &GuestRam,
        mfn: u64,
        ty: FrameType,
    ) -> Result<(), MmError> {
        self.flush_needed = true;
        let r = match ty.level() {
            Some(level) => self.validate_table(ram, mfn, level),
            None if ty == FrameType::SegDesc => self.validate_segdesc(ram, mfn),
            None => Ok(()),
        };
        validation_done(&mut self.frames, mfn, r.is_ok())?;
        if r.is_err() {
            put_page(&mut self.frames, mfn)?;
        }
        r
    }

    /// Drop a reference an entry or base pointer held; tables losing their last type
    /// reference are devalidated (their entries' references dropped in turn).
    pub fn put_ref(&mut self, ram: &GuestRam, r: Ref) {
        let mut work = vec![r];
        while let Some(r) = work.pop() {
            match frame::drop_ref(&mut self.frames, r) {
                Ok(TypePut::Done) => {}
                Ok(TypePut::Devalidate(ty)) => {
                    let (Ref::Typed(mfn, _), Some(level)) = (r, ty.level()) else {
                        continue;
                    };
                    debug!(mfn, %level, "devalidating page table");
                    self.flush_needed = true;
                    for slot in 0..ENTRIES_PER_TABLE {
                        if is_xen_l4_slot(level, slot) {
                            continue;
                        }
                        let v = match self.read_entry(ram, mfn, slot) {
                            Ok(v) => v,
                            Err(_) => break,
                        };
                        let at = EntryAt::new(mfn, level, slot);
                        let held = held_ref(at, v, &TableFrames(&self.frames));
                        if held != Ref::None {
                            work.push(held);
                        }
                        let _ = self.side.set(mfn, slot, SideEntry::default());
                    }
                }
                Err(e) => warn!("dropping {r:?}: {e} (frame accounting inconsistent)"),
            }
        }
    }

    /// Drop a general plus type reference on `mfn` (xen: put_page_and_type).
    pub fn put_typed(&mut self, ram: &GuestRam, mfn: u64) {
        let ty = self.current_type(mfn);
        self.put_ref(ram, Ref::Typed(mfn, ty));
    }

    /// Validate every entry of table `mfn` as `level` (xen: alloc_lN_table): take the
    /// references its entries hold, adjust them, install kxen's L4 slots. On failure the
    /// references taken so far are dropped again.
    fn validate_table(&mut self, ram: &GuestRam, mfn: u64, level: Level) -> Result<(), MmError> {
        if !self.is_ram(mfn) {
            return Err(MmError::BadFrame(mfn));
        }
        for slot in 0..ENTRIES_PER_TABLE {
            let res = if is_xen_l4_slot(level, slot) {
                // xen: init_xen_l4_slots: Xen's own entries, whatever the guest put there.
                let v = self
                    .private_l4
                    .iter()
                    .find(|(s, _)| *s == slot)
                    .map_or(0, |&(_, v)| v);
                self.write_entry(ram, mfn, slot, v)
            } else {
                self.validate_entry(ram, EntryAt::new(mfn, level, slot))
            };
            if let Err(e) = res {
                debug!(mfn, %level, slot, "validation failed: {e}");
                for undo in 0..slot {
                    if is_xen_l4_slot(level, undo) {
                        continue;
                    }
                    if let Ok(v) = self.read_entry(ram, mfn, undo) {
                        let at = EntryAt::new(mfn, level, undo);
                        let held = held_ref(at, v, &TableFrames(&self.frames));
                        self.put_ref(ram, held);
                    }
                    let _ = self.side.set(mfn, undo, SideEntry::default());
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Validate one present entry of a table being validated and take its reference.
    fn validate_entry(&mut self, ram: &GuestRam, at: EntryAt) -> Result<(), MmError> {
        let v = self.read_entry(ram, at.table_mfn, at.slot)?;
        let _ = self.side.set(at.table_mfn, at.slot, SideEntry::default());
        if v & _PAGE_PRESENT == 0 {
            return Ok(());
        }
        let u = update_entry(
            at,
            v,
            0,
            self.cfg,
            &TableFrames(&self.frames),
            &mut self.side,
        )?;
        if let Err(e) = self.take_new_ref(ram, u.new_ref) {
            let _ = self.side.set(at.table_mfn, at.slot, SideEntry::default());
            return Err(e);
        }
        if u.value != v {
            self.write_entry(ram, at.table_mfn, at.slot, u.value)?;
        }
        Ok(())
    }

    fn take_new_ref(&mut self, ram: &GuestRam, r: Ref) -> Result<(), MmError> {
        match take_ref(&mut self.frames, r)? {
            TypeGet::Done => Ok(()),
            TypeGet::Validate(t) => {
                let Ref::Typed(mfn, _) = r else {
                    return Ok(());
                };
                self.finish_validation(ram, mfn, t)
            }
        }
    }

    /// `MMUEXT_PIN_Ln_TABLE` (xen: do_mmuext_op pin_page).
    pub fn pin(&mut self, ram: &GuestRam, mfn: u64, level: Level) -> Result<(), MmError> {
        if !self.is_ram(mfn) {
            return Err(MmError::BadFrame(mfn));
        }
        match frame::pin(&mut self.frames, mfn, level)? {
            TypeGet::Done => Ok(()),
            TypeGet::Validate(t) => {
                let r = self.finish_validation(ram, mfn, t);
                if r.is_err() {
                    if let Some(s) = self.frames.state_mut(mfn) {
                        s.pinned = false;
                    }
                }
                r
            }
        }
    }

    /// `MMUEXT_UNPIN_TABLE`.
    pub fn unpin(&mut self, ram: &GuestRam, mfn: u64) -> Result<(), MmError> {
        if !self.is_ram(mfn) {
            return Err(MmError::BadFrame(mfn));
        }
        let s = self.frames.state(mfn).copied().unwrap_or_default();
        if !s.pinned {
            return Err(FrameError {
                mfn,
                kind: frame::FrameErrorKind::NotPinned,
            }
            .into());
        }
        if let Some(s) = self.frames.state_mut(mfn) {
            s.pinned = false;
        }
        self.put_ref(ram, Ref::Typed(mfn, s.type_));
        Ok(())
    }

    /// Start of day, as Xen's builder and pin do: validate the initial tables from the L4
    /// down (typing every table, counting every mapped frame, adjusting every entry,
    /// installing kxen's L4 slots), pin the L4 and take the reference vCPU 0's CR3 holds.
    pub fn start_of_day(&mut self, ram: &GuestRam, l4_mfn: u64) -> Result<(), MmError> {
        self.pin(ram, l4_mfn, Level::L4)?;
        self.get_typed(ram, l4_mfn, FrameType::L4)?;
        // Nothing ran yet: KVM has no view of these tables to correct.
        self.replay.clear();
        self.flush_needed = false;
        Ok(())
    }

    /// Update entry `slot` of validated table `table_mfn` to `new` (xen: mod_lN_entry):
    /// validate and adjust, take the new reference (validating a promoted table), write,
    /// drop the old reference. Returns the installed value.
    pub fn update_entry(
        &mut self,
        ram: &GuestRam,
        table_mfn: u64,
        level: Level,
        slot: usize,
        new: u64,
        keep_ad: bool,
    ) -> Result<u64, MmError> {
        let old = self.read_entry(ram, table_mfn, slot)?;
        let at = EntryAt::new(table_mfn, level, slot);
        let saved = self.side.get(table_mfn, slot);
        let u = update_entry(
            at,
            new,
            old,
            self.cfg,
            &TableFrames(&self.frames),
            &mut self.side,
        )?;
        if let Err(e) = self.take_new_ref(ram, u.new_ref) {
            let _ = self.side.set(table_mfn, slot, saved);
            return Err(e);
        }
        let value = if keep_ad {
            // xen: update_intpte with preserve_ad: OR in the A/D bits present right now.
            let cur = self.read_entry(ram, table_mfn, slot).unwrap_or(old);
            preserve_ad(u.value, cur)
        } else {
            u.value
        };
        if let Err(e) = self.write_entry(ram, table_mfn, slot, value) {
            self.put_ref(ram, u.new_ref);
            let _ = self.side.set(table_mfn, slot, saved);
            return Err(e);
        }
        self.put_ref(ram, u.old_ref);
        Ok(value)
    }

    /// `MMU_NORMAL_PT_UPDATE` / `MMU_PT_UPDATE_PRESERVE_AD` at machine address `ptr`
    /// (command bits already cleared): a validated table's entry goes through the engine,
    /// a frame that can be writable is written plainly, anything else is `-EINVAL`
    /// (xen: do_mmu_update).
    pub fn normal_update(
        &mut self,
        ram: &GuestRam,
        ptr: u64,
        val: u64,
        keep_ad: bool,
    ) -> Result<NormalUpdate, MmError> {
        let mfn = ptr >> 12;
        let slot = ((ptr & (PAGE_SIZE - 1)) / 8) as usize;
        if !self.is_ram(mfn) {
            // xen: get_page_from_gfn fails (not the domain's, or Xen's shared page).
            return Err(MmError::BadFrame(mfn));
        }
        let s = self.frames.state(mfn).copied().unwrap_or_default();
        if s.type_count > 0 && s.validated {
            if let Some(level) = s.type_.level() {
                return self
                    .update_entry(ram, mfn, level, slot, val, keep_ad)
                    .map(NormalUpdate::Entry);
            }
            if s.type_ != FrameType::Writable {
                // A descriptor table: page_lock succeeds, no case matches.
                return Err(MmError::BadFrame(mfn));
            }
        }
        // xen: get_page_type(PGT_writable_page), plain write, put it back.
        get_page_type(&mut self.frames, mfn, FrameType::Writable)?;
        let r = self.write_entry(ram, mfn, slot, val);
        let _ = put_page_type(&mut self.frames, mfn);
        r.map(|()| NormalUpdate::Plain)
    }

    /// Check `mfn` can be written as data (xen: get_page_type(PGT_writable_page) for
    /// CLEAR_PAGE / COPY_PAGE destinations) and give its type reference back.
    pub fn check_writable(&mut self, mfn: u64) -> Result<(), MmError> {
        if !self.is_ram(mfn) {
            return Err(MmError::BadFrame(mfn));
        }
        get_page(&mut self.frames, mfn)?;
        let r = get_page_type(&mut self.frames, mfn, FrameType::Writable);
        if r.is_ok() {
            let _ = put_page_type(&mut self.frames, mfn);
        }
        let _ = put_page(&mut self.frames, mfn);
        r.map(|_| ()).map_err(Into::into)
    }

    /// Switch a base pointer: take an L4 reference on `new` (validating it), then drop
    /// `old`'s (0 = none) (xen: new_guest_cr3 / NEW_USER_BASEPTR).
    pub fn switch_base(&mut self, ram: &GuestRam, old: u64, new: u64) -> Result<(), MmError> {
        if new != 0 {
            if !self.is_ram(new) {
                return Err(MmError::BadFrame(new));
            }
            self.get_typed(ram, new, FrameType::L4)?;
        }
        if old != 0 {
            self.put_typed(ram, old);
        }
        Ok(())
    }

    /// The L1 entry mapping `va` in the tables at `cr3`: (L1 frame, slot), if the walk
    /// down to the L1 finds present entries in the domain's frames (xen:
    /// guest_map_l1e / map_guest_l1e).
    pub fn l1_slot_for(&self, ram: &GuestRam, cr3: u64, va: u64) -> Option<(u64, usize)> {
        let mut table = cr3 >> 12;
        for shift in [39u32, 30, 21] {
            let slot = ((va >> shift) & 511) as usize;
            let e = self.read_entry(ram, table, slot).ok()?;
            if e & _PAGE_PRESENT == 0 || e & (1 << 7) != 0 {
                return None;
            }
            table = pte_mfn(e);
            if !self.is_ram(table) {
                return None;
            }
        }
        Some((table, ((va >> 12) & 511) as usize))
    }

    /// `MMU_MACHPHYS_UPDATE` for an identity p2m: the M2P entry of `mfn` may only be set
    /// to `mfn` itself (then nothing changes); anything else is refused with `-EINVAL`, the
    /// errno Xen gives a request for a frame it will not update.
    pub fn machphys_update(&self, mfn: u64, gpfn: u64) -> Result<(), MmError> {
        if !self.is_ram(mfn) || gpfn != mfn {
            return Err(MmError::BadFrame(mfn));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::mmu::{make_pte, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_RW, _PAGE_USER};

    const P: u64 = _PAGE_PRESENT;
    const RW: u64 = _PAGE_RW;
    const U: u64 = _PAGE_USER;

    fn ram() -> GuestRam {
        GuestRam::new(65).unwrap()
    }

    /// L4 at 1 -> L3 2 -> L2 3 -> L1 4 -> data 10 (RW), 11 (RO), and the L4 mapped RO.
    fn setup(ram: &GuestRam) -> DomainMm {
        let w = |pfn: u64, slot: u64, v: u64| {
            ram.mem()
                .write_obj(v, GuestAddress(pfn * PAGE_SIZE + slot * 8))
                .unwrap()
        };
        w(1, 0, make_pte(2, P | RW));
        w(1, 260, 0xdead_beef); // guest junk in a Xen slot: replaced
        w(2, 0, make_pte(3, P | RW));
        w(3, 0, make_pte(4, P | RW));
        w(4, 0, make_pte(10, P | RW));
        w(4, 1, make_pte(11, P));
        w(4, 2, make_pte(1, P));
        DomainMm::new(
            64,
            &[(64, true)],
            PteConfig::default(),
            &[(257, 0x1234_5067)],
        )
    }

    #[test]
    fn start_of_day_types_counts_adjusts_and_pins() {
        let ram = ram();
        let mut mm = setup(&ram);
        mm.start_of_day(&ram, 1).unwrap();
        let l4 = mm.frame(1).unwrap();
        assert!(l4.pinned && l4.validated);
        assert_eq!((l4.type_, l4.type_count, l4.refs), (FrameType::L4, 2, 3));
        for (mfn, lvl) in [(2, Level::L3), (3, Level::L2), (4, Level::L1)] {
            assert!(mm.is_validated_table(mfn, lvl));
        }
        assert_eq!(mm.current_type(10), FrameType::Writable);
        assert_eq!(mm.frame(11).unwrap().refs, 1);
        // Adjusted: L1 kernel mapping gets USER; L4 gets USER|A; Xen slot replaced.
        assert_eq!(mm.read_entry(&ram, 4, 0).unwrap(), make_pte(10, P | RW | U));
        assert_eq!(
            mm.read_entry(&ram, 1, 0).unwrap(),
            make_pte(2, P | RW | U | _PAGE_ACCESSED)
        );
        assert_eq!(mm.read_entry(&ram, 1, 260).unwrap(), 0);
        assert_eq!(mm.read_entry(&ram, 1, 257).unwrap(), 0x1234_5067);
    }

    #[test]
    fn updates_refuse_writable_tables_and_unpin_frees_everything() {
        let ram = ram();
        let mut mm = setup(&ram);
        mm.start_of_day(&ram, 1).unwrap();
        // Writable mapping of the L1 itself: -EBUSY; nothing changed.
        let e = mm
            .update_entry(&ram, 4, Level::L1, 5, make_pte(4, P | RW), false)
            .unwrap_err();
        assert_eq!(e.errno(), Errno::EBUSY);
        assert_eq!(mm.read_entry(&ram, 4, 5).unwrap(), 0);
        // Shared frame writable: fine; frames past it: -EPERM.
        mm.update_entry(&ram, 4, Level::L1, 5, make_pte(64, P | RW), false)
            .unwrap();
        let e = mm
            .update_entry(&ram, 4, Level::L1, 6, make_pte(65, P | RW), false)
            .unwrap_err();
        assert_eq!(e.errno(), Errno::EPERM);
        // Xen slot: -EINVAL.
        let e = mm
            .update_entry(&ram, 1, Level::L4, 260, 0, false)
            .unwrap_err();
        assert_eq!(e.errno(), Errno::EINVAL);
        // New L2 entry at an untyped frame promotes it to L1 (after validating it).
        ram.mem()
            .write_obj(make_pte(12, P | RW), GuestAddress(20 * PAGE_SIZE))
            .unwrap();
        mm.update_entry(&ram, 3, Level::L2, 1, make_pte(20, P | RW), false)
            .unwrap();
        assert!(mm.is_validated_table(20, Level::L1));
        assert_eq!(mm.current_type(12), FrameType::Writable);
        // A/D preserved on request.
        ram.mem()
            .write_obj(
                make_pte(10, P | RW | U | _PAGE_ACCESSED | _PAGE_DIRTY),
                GuestAddress(4 * PAGE_SIZE),
            )
            .unwrap();
        let v = mm
            .update_entry(&ram, 4, Level::L1, 0, make_pte(10, P), true)
            .unwrap();
        assert_eq!(v, make_pte(10, P | U | _PAGE_ACCESSED | _PAGE_DIRTY));
        // Drop the CR3 reference and unpin: every count returns to zero.
        mm.put_typed(&ram, 1);
        mm.unpin(&ram, 1).unwrap();
        for mfn in [1, 2, 3, 4, 10, 11, 12, 20] {
            let s = mm.frame(mfn).unwrap();
            assert_eq!((s.type_count, s.refs), (0, 0), "mfn {mfn}");
        }
        assert!(mm.side.0.is_empty());
        assert_eq!(mm.unpin(&ram, 1).unwrap_err().errno(), Errno::EINVAL);
    }

    #[test]
    fn failed_validation_drops_what_it_took() {
        let ram = ram();
        let mut mm = setup(&ram);
        // The L1 maps the L4 writable: pinning the L4 must fail, leaving nothing held.
        ram.mem()
            .write_obj(make_pte(1, P | RW), GuestAddress(4 * PAGE_SIZE + 2 * 8))
            .unwrap();
        // (The L4 under validation is typed L4 when the L1 is checked: -EBUSY.)
        let e = mm.pin(&ram, 1, Level::L4).unwrap_err();
        assert_eq!(e.errno(), Errno::EBUSY);
        for mfn in 1..=11 {
            let s = mm.frame(mfn).unwrap();
            assert_eq!((s.type_count, s.refs, s.pinned), (0, 0, false), "mfn {mfn}");
        }
    }

    #[test]
    fn ballooning_removes_only_unused_frames_and_gives_them_back_zeroed() {
        let ram = ram();
        let mut mm = setup(&ram);
        mm.start_of_day(&ram, 1).unwrap();
        assert_eq!(mm.present_pages(), 64);
        // Frame 10 is mapped, 4 is a table, 64 is shared: none can go.
        for m in [10, 4, 64, 99] {
            assert_eq!(mm.remove_pages(m, 1), 0, "mfn {m}");
        }
        ram.mem()
            .write_obj(7u64, GuestAddress(40 * PAGE_SIZE))
            .unwrap();
        assert_eq!(mm.remove_pages(40, 2), 2);
        assert_eq!(mm.present_pages(), 62);
        assert_eq!(mm.frame(40), None);
        assert!(!mm.populate_pages(&ram, 39, 2), "39 is present");
        assert_eq!(mm.find_absent(2), Some(40));
        assert_eq!(mm.find_absent(1), Some(40));
        assert!(mm.populate_pages(&ram, 40, 2));
        assert_eq!(mm.present_pages(), 64);
        assert_eq!(
            ram.mem()
                .read_obj::<u64>(GuestAddress(40 * PAGE_SIZE))
                .unwrap(),
            0
        );
        assert_eq!(mm.find_absent(1), None);
        assert_eq!(mm.find_absent(0), None);
    }

    #[test]
    fn plain_writes_machphys_and_walks() {
        let ram = ram();
        let mut mm = setup(&ram);
        mm.start_of_day(&ram, 1).unwrap();
        assert_eq!(
            mm.normal_update(&ram, 30 * PAGE_SIZE + 8, 77, false),
            Ok(NormalUpdate::Plain)
        );
        assert_eq!(mm.read_entry(&ram, 30, 1).unwrap(), 77);
        assert!(mm.normal_update(&ram, 64 * PAGE_SIZE, 1, false).is_err());
        assert!(mm.normal_update(&ram, 99 * PAGE_SIZE, 1, false).is_err());
        assert!(mm.machphys_update(5, 5).is_ok());
        assert!(mm.machphys_update(5, 6).is_err());
        assert!(mm.machphys_update(64, 64).is_err());
        assert_eq!(mm.l1_slot_for(&ram, PAGE_SIZE, 0x1000), Some((4, 1)));
        assert_eq!(mm.l1_slot_for(&ram, PAGE_SIZE, 1 << 39), None);
        mm.check_writable(30).unwrap();
        assert!(mm.check_writable(4).is_err());
        assert_eq!(mm.frame(30).unwrap().refs, 0);
    }

    fn ring0_mm(ram: &GuestRam) -> DomainMm {
        let mut mm = setup(ram);
        mm.start_of_day(ram, 1).unwrap();
        mm.attach_ring0(Ring0Layer::new(2, 64).unwrap());
        mm
    }

    fn copy_word(mm: &DomainMm, va: u64) -> u64 {
        mm.ring0.as_ref().unwrap().read_u64(va).unwrap()
    }

    #[test]
    fn segdesc_pages_and_ldt_descriptor_encoding() {
        let mut page = [0u8; PAGE_SIZE as usize];
        page[8..16].copy_from_slice(&0x00cf_9200_0000_ffffu64.to_le_bytes());
        let fixed = checked_segdesc_page(&page).unwrap();
        assert_eq!(fixed[8..16], 0x00cf_f200_0000_ffffu64.to_le_bytes());
        page[4088..].copy_from_slice(&0x0000_8900_0000_0067u64.to_le_bytes());
        assert!(
            checked_segdesc_page(&page).is_none(),
            "a TSS refuses the page"
        );
        assert_eq!(ldt_descriptor(0x1234, 0), [0, 0]);
        let [lo, hi] = ldt_descriptor(0xffff_8080_1234_5000, 8192);
        assert_eq!(
            xen_abi::cpu::descriptor_base(lo) | (hi << 32),
            0xffff_8080_1234_5000
        );
        assert_eq!(xen_abi::cpu::descriptor_limit(lo), 0xffff);
        assert_eq!((lo >> 40) & 0xff, 0x82, "present LDT, DPL 0");
    }

    #[test]
    fn update_descriptor_refreshes_every_vcpus_gdt_and_ldt_copy() {
        let ram = ram();
        let mut mm = ring0_mm(&ram);
        let vcpus = [0, 1].map(|v| mm.ring0.as_ref().unwrap().vcpu(v).unwrap());
        let r0 = |v: u32| vcpus[v as usize];
        // Frame 30 is both vCPUs' GDT; frame 31, mapped read-only at 0x3000, vCPU 1's LDT.
        ram.mem()
            .write_obj(0x00cf_9200_0000_ffffu64, GuestAddress(30 * PAGE_SIZE + 16))
            .unwrap();
        assert!(mm.set_gdt(&ram, 0, &[30]).unwrap());
        assert!(mm.set_gdt(&ram, 1, &[30]).unwrap());
        assert_eq!(mm.frame(30).unwrap().type_count, 2);
        for v in 0..2 {
            assert_eq!(copy_word(&mm, r0(v).gdt_base + 16), 0x00cf_f200_0000_ffff);
        }
        mm.update_entry(&ram, 4, Level::L1, 3, make_pte(31, P), false)
            .unwrap();
        ram.mem()
            .write_obj(0x00cf_f200_0000_ffffu64, GuestAddress(31 * PAGE_SIZE + 8))
            .unwrap();
        assert!(mm.set_ldt(&ram, 1, 0x3000, 2, PAGE_SIZE));
        assert_eq!(mm.desc_tables(1).ldt, vec![Some(31)]);
        assert_eq!(copy_word(&mm, r0(1).ldt_base + 8), 0x00cf_f200_0000_ffff);
        let ldt_desc = copy_word(&mm, r0(1).gdt_base + u64::from(LDT_SEL));
        assert_eq!(xen_abi::cpu::descriptor_limit(ldt_desc), 15);
        // One update reaches both GDT copies and the LDT copy.
        let d = 0x00cf_f200_1000_ffffu64;
        mm.update_descriptor(&ram, 30 * PAGE_SIZE + 16, d).unwrap();
        mm.update_descriptor(&ram, 31 * PAGE_SIZE + 8, d).unwrap();
        for v in 0..2 {
            assert_eq!(copy_word(&mm, r0(v).gdt_base + 16), d, "vCPU {v} GDT");
        }
        assert_eq!(copy_word(&mm, r0(1).ldt_base + 8), d, "vCPU 1 LDT");
        assert_eq!(copy_word(&mm, r0(0).ldt_base + 8), 0, "vCPU 0 has no LDT");
        // The LDT frame cannot be mapped writable meanwhile; dropping the LDT allows it.
        let e = mm
            .update_entry(&ram, 4, Level::L1, 5, make_pte(31, P | RW), false)
            .unwrap_err();
        assert_eq!(e.errno(), Errno::EBUSY);
        assert!(mm.set_ldt(&ram, 1, 0, 0, PAGE_SIZE));
        assert_eq!(copy_word(&mm, r0(1).gdt_base + u64::from(LDT_SEL)), 0);
        mm.update_entry(&ram, 4, Level::L1, 5, make_pte(31, P | RW), false)
            .unwrap();
        // A page table is no descriptor page.
        assert!(mm.update_descriptor(&ram, 4 * PAGE_SIZE, 0).is_err());
        assert!(mm.set_gdt(&ram, 0, &[30, 3]).is_err());
        assert_eq!(mm.desc_tables(0).gdt, vec![30], "the old GDT stays");
    }
}
