//! Guest RAM and kxen-private memory.
//!
//! * Guest RAM: GPA `0 .. nr_pages * 4096`, one KVM memslot. Guest pseudo-physical == machine.
//! * kxen-private memory: GPA [`PRIVATE_BASE`]`..`, a second memslot holding the ring-0 layer
//!   (descriptor tables, stubs, ring-0 stacks, private page tables). No guest frame number can
//!   name it because every guest MFN is checked against `nr_pages`.
//!
//! The two are separate [`GuestMemoryMmap`] objects, so code handed the guest RAM (hypercall
//! handlers) cannot reach private memory or host memory by construction.

use thiserror::Error;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
/// Guest-physical base of kxen-private memory (above any guest frame).
pub const PRIVATE_BASE: u64 = 1 << 39;
/// Largest guest RAM accepted, in pages (must stay below [`PRIVATE_BASE`]).
pub const MAX_GUEST_PAGES: u64 = PRIVATE_BASE / PAGE_SIZE;

/// Errors creating memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// A zero or too large size was asked for.
    #[error("invalid guest memory size: {0} pages (1..={MAX_GUEST_PAGES})")]
    BadSize(u64),
    /// mmap failed.
    #[error("cannot allocate guest memory: {0}")]
    Alloc(#[from] vm_memory::mmap::FromRangesError),
}

/// A contiguous memory area seen by the VM at one guest-physical base.
#[derive(Debug, Clone)]
pub struct MemArea {
    mem: GuestMemoryMmap,
    base: u64,
    size: u64,
}

impl MemArea {
    fn new(base: u64, pages: u64) -> Result<Self, MemoryError> {
        let size = pages
            .checked_mul(PAGE_SIZE)
            .filter(|_| pages > 0)
            .ok_or(MemoryError::BadSize(pages))?;
        let len = usize::try_from(size).map_err(|_| MemoryError::BadSize(pages))?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(base), len)])?;
        Ok(Self { mem, base, size })
    }

    /// The memory, for `vm_memory::Bytes` reads and writes at guest-physical addresses.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }
    /// Guest-physical base.
    pub fn base(&self) -> u64 {
        self.base
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }
    /// Whether `[gpa, gpa + len)` lies inside this area.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.base
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.size)
    }
    /// Host address of the mapping (for `KVM_SET_USER_MEMORY_REGION`).
    pub(crate) fn host_addr(&self) -> u64 {
        // The area is built from exactly one range, so there is one region.
        self.mem
            .get_host_address(GuestAddress(self.base))
            .map_or(0, |p| p as u64)
    }
}

/// Guest RAM: GPA `0 .. pages * 4096`.
#[derive(Debug, Clone)]
pub struct GuestRam(MemArea);

impl GuestRam {
    /// Allocate `pages` pages of guest RAM.
    pub fn new(pages: u64) -> Result<Self, MemoryError> {
        if pages == 0 || pages > MAX_GUEST_PAGES {
            return Err(MemoryError::BadSize(pages));
        }
        MemArea::new(0, pages).map(Self)
    }
    /// Number of guest pages (`nr_pages`); valid frame numbers are `0..nr_pages()`.
    pub fn nr_pages(&self) -> u64 {
        self.0.pages()
    }
    /// Whether `pfn` names a guest RAM frame.
    pub fn is_valid_pfn(&self, pfn: u64) -> bool {
        pfn < self.nr_pages()
    }
}

impl std::ops::Deref for GuestRam {
    type Target = MemArea;
    fn deref(&self) -> &MemArea {
        &self.0
    }
}

/// kxen-private memory: GPA `PRIVATE_BASE ..`.
#[derive(Debug, Clone)]
pub struct PrivateMem(MemArea);

impl PrivateMem {
    /// Allocate `pages` private pages.
    pub fn new(pages: u64) -> Result<Self, MemoryError> {
        if pages == 0 || pages > (1 << 20) {
            return Err(MemoryError::BadSize(pages));
        }
        MemArea::new(PRIVATE_BASE, pages).map(Self)
    }
}

impl std::ops::Deref for PrivateMem {
    type Target = MemArea;
    fn deref(&self) -> &MemArea {
        &self.0
    }
}

/// Start of Xen's reserved virtual range (L4 slots 256..=271); guests may not name it.
pub const XEN_RESERVED_START: u64 = 0xffff_8000_0000_0000;
/// End (exclusive) of Xen's reserved virtual range.
pub const XEN_RESERVED_END: u64 = 0xffff_8800_0000_0000;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Why a guest-virtual access failed. Every variant maps to Xen's `-EFAULT`.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum GuestAccessError {
    /// The address is not canonical, or `va + len` wraps.
    #[error("non-canonical or wrapping guest address {0:#x}")]
    NonCanonical(u64),
    /// The address is in Xen's reserved range.
    #[error("guest address {0:#x} is in the hypervisor range")]
    Reserved(u64),
    /// A paging entry is not present.
    #[error("guest address {va:#x} not mapped (level {level})")]
    NotPresent {
        /// Address.
        va: u64,
        /// Paging level (4..=1) of the missing entry.
        level: u8,
    },
    /// A paging entry is supervisor-only (the guest kernel runs at CPL3).
    #[error("guest address {0:#x} is not user-accessible")]
    NotUser(u64),
    /// A write through a read-only mapping.
    #[error("guest address {0:#x} is read-only")]
    ReadOnly(u64),
    /// A superpage mapping (PV guests may not use them).
    #[error("guest address {0:#x} is mapped by a superpage")]
    Superpage(u64),
    /// A paging entry or the final mapping names a frame outside guest RAM.
    #[error("guest address {va:#x}: frame {pfn:#x} outside guest RAM")]
    BadFrame {
        /// Address.
        va: u64,
        /// Frame number.
        pfn: u64,
    },
}

/// Whether `va` is canonical with 48-bit virtual addresses.
pub fn is_canonical(va: u64) -> bool {
    ((va as i64) << 16 >> 16) as u64 == va
}

/// Guest-virtual access through the guest's own page tables (a software walk of
/// CR3 -> L4 -> L3 -> L2 -> L1 in guest RAM). Never reaches memory outside guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct GuestVirt<'a> {
    ram: &'a GuestRam,
    cr3: u64,
}

impl<'a> GuestVirt<'a> {
    /// Access through the page tables at `cr3`.
    pub fn new(ram: &'a GuestRam, cr3: u64) -> Self {
        Self { ram, cr3 }
    }

    /// The page-table base used.
    pub fn cr3(&self) -> u64 {
        self.cr3
    }

    fn frame(&self, va: u64, entry_or_cr3: u64) -> Result<u64, GuestAccessError> {
        let pfn = (entry_or_cr3 & PTE_ADDR) >> 12;
        if self.ram.is_valid_pfn(pfn) {
            Ok(pfn * PAGE_SIZE)
        } else {
            Err(GuestAccessError::BadFrame { va, pfn })
        }
    }

    /// Translate `va` to a guest-physical address, checking P and U at every level and RW
    /// for writes. Accessed/dirty bits are not updated.
    pub fn translate(&self, va: u64, write: bool) -> Result<u64, GuestAccessError> {
        if !is_canonical(va) {
            return Err(GuestAccessError::NonCanonical(va));
        }
        if (XEN_RESERVED_START..XEN_RESERVED_END).contains(&va) {
            return Err(GuestAccessError::Reserved(va));
        }
        let mut table = self.frame(va, self.cr3)?;
        for level in (1..=4u8).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let idx = (va >> shift) & 511;
            let entry: u64 = self
                .ram
                .mem()
                .read_obj(GuestAddress(table + idx * 8))
                .map_err(|_| GuestAccessError::BadFrame {
                    va,
                    pfn: table >> 12,
                })?;
            if entry & PTE_P == 0 {
                return Err(GuestAccessError::NotPresent { va, level });
            }
            if entry & PTE_US == 0 {
                return Err(GuestAccessError::NotUser(va));
            }
            if write && entry & PTE_RW == 0 {
                return Err(GuestAccessError::ReadOnly(va));
            }
            if level > 1 && level < 4 && entry & PTE_PS != 0 {
                return Err(GuestAccessError::Superpage(va));
            }
            table = self.frame(va, entry)?;
        }
        Ok(table + (va & (PAGE_SIZE - 1)))
    }

    /// Split `[va, va+len)` into per-page pieces `(va, offset into buffer, len)`.
    fn pieces(
        va: u64,
        len: usize,
    ) -> Result<impl Iterator<Item = (u64, usize, usize)>, GuestAccessError> {
        let len64 = u64::try_from(len).map_err(|_| GuestAccessError::NonCanonical(va))?;
        if len64 > 0 && va.checked_add(len64 - 1).is_none() {
            return Err(GuestAccessError::NonCanonical(va));
        }
        let mut off = 0usize;
        Ok(std::iter::from_fn(move || {
            if off >= len {
                return None;
            }
            let cur = va + off as u64;
            let in_page = (PAGE_SIZE - (cur & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(len - off);
            let piece = (cur, off, n);
            off += n;
            Some(piece)
        }))
    }

    /// Copy `buf.len()` bytes from guest-virtual `va`. On failure part of `buf` may be filled.
    pub fn copy_from_guest(&self, va: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        for (cur, off, n) in Self::pieces(va, buf.len())? {
            let gpa = self.translate(cur, false)?;
            self.ram
                .mem()
                .read_slice(&mut buf[off..off + n], GuestAddress(gpa))
                .map_err(|_| GuestAccessError::BadFrame {
                    va: cur,
                    pfn: gpa >> 12,
                })?;
        }
        Ok(())
    }

    /// Copy `buf` to guest-virtual `va`. On failure a prefix may have been written (as Xen).
    pub fn copy_to_guest(&self, va: u64, buf: &[u8]) -> Result<(), GuestAccessError> {
        for (cur, off, n) in Self::pieces(va, buf.len())? {
            let gpa = self.translate(cur, true)?;
            self.ram
                .mem()
                .write_slice(&buf[off..off + n], GuestAddress(gpa))
                .map_err(|_| GuestAccessError::BadFrame {
                    va: cur,
                    pfn: gpa >> 12,
                })?;
        }
        Ok(())
    }

    /// Read a plain-data object at `va`.
    pub fn read_obj<T: ByteValued>(&self, va: u64) -> Result<T, GuestAccessError> {
        // SAFETY: `ByteValued` types are plain data for which every bit pattern, including
        // all zeroes, is a valid value.
        let mut v: T = unsafe { std::mem::zeroed() };
        self.copy_from_guest(va, v.as_mut_slice())?;
        Ok(v)
    }

    /// Write a plain-data object at `va`.
    pub fn write_obj<T: ByteValued>(&self, va: u64, v: &T) -> Result<(), GuestAccessError> {
        self.copy_to_guest(va, v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_rejects_zero_and_oversized() {
        assert!(GuestRam::new(0).is_err());
        assert!(GuestRam::new(MAX_GUEST_PAGES + 1).is_err());
    }

    #[test]
    fn guest_ram_bounds_and_pfns() {
        let ram = GuestRam::new(4).unwrap();
        assert_eq!(ram.nr_pages(), 4);
        assert!(ram.is_valid_pfn(3));
        assert!(!ram.is_valid_pfn(4));
        assert!(ram.contains(0, 4 * PAGE_SIZE));
        assert!(!ram.contains(1, 4 * PAGE_SIZE));
        assert!(!ram.contains(u64::MAX, 2));
        ram.mem().write_obj(0x55u64, GuestAddress(8)).unwrap();
        assert!(ram
            .mem()
            .read_obj::<u64>(GuestAddress(4 * PAGE_SIZE))
            .is_err());
        assert_ne!(ram.host_addr(), 0);
    }

    #[test]
    fn private_mem_sits_at_private_base() {
        let p = PrivateMem::new(2).unwrap();
        assert_eq!(p.base(), PRIVATE_BASE);
        assert!(p.contains(PRIVATE_BASE, 2 * PAGE_SIZE));
        assert!(!p.contains(0, 1));
        p.mem()
            .write_obj(1u32, GuestAddress(PRIVATE_BASE + 4))
            .unwrap();
    }
}

#[cfg(test)]
mod walk_tests {
    use super::*;

    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const T: u64 = P | RW | US;
    const VA: u64 = 0xffff_ffff_8000_0000;

    /// RAM of 32 pages: L4 at pfn 1, L3 2, L2 3, L1 4; VA maps pfn 10 (RW), VA+4K pfn 11 (RO),
    /// VA+8K pfn 12 (supervisor), VA+12K pfn 999 (outside RAM), VA+16K pfn 13 (RW).
    fn setup() -> (GuestRam, u64) {
        let ram = GuestRam::new(32).unwrap();
        let w = |pfn: u64, idx: u64, v: u64| {
            ram.mem()
                .write_obj(v, GuestAddress(pfn * PAGE_SIZE + idx * 8))
                .unwrap()
        };
        w(1, 511, (2 * PAGE_SIZE) | T);
        w(1, 257, (1u64 << 39) | T); // a kxen-private entry: must never be followed
        w(1, 0, (20 * PAGE_SIZE) | T);
        w(20, 0, (21 * PAGE_SIZE) | P | RW | US | PTE_PS); // 1G superpage at VA 0
        w(1, 1, (5000 * PAGE_SIZE) | T); // L3 frame outside RAM
        w(2, 510, (3 * PAGE_SIZE) | T);
        w(3, 0, (4 * PAGE_SIZE) | T);
        w(3, 1, (22 * PAGE_SIZE) | T | PTE_PS); // 2M superpage
        w(4, 0, (10 * PAGE_SIZE) | T);
        w(4, 1, (11 * PAGE_SIZE) | P | US);
        w(4, 2, (12 * PAGE_SIZE) | P | RW);
        w(4, 3, (999 * PAGE_SIZE) | T);
        w(4, 4, (13 * PAGE_SIZE) | T);
        (ram, PAGE_SIZE)
    }

    #[test]
    fn translate_follows_tables_and_copies_across_pages() {
        let (ram, cr3) = setup();
        let g = GuestVirt::new(&ram, cr3);
        assert_eq!(g.translate(VA + 0x123, false), Ok(10 * PAGE_SIZE + 0x123));
        let data: Vec<u8> = (0..100).collect();
        // Crosses from pfn 13 (VA+16K) into... keep within RW: write at end of pfn 10 fails at RO.
        g.copy_to_guest(VA + 0x4000 + 4000, &data[..90]).unwrap();
        let mut back = [0u8; 90];
        g.copy_from_guest(VA + 0x4000 + 4000, &mut back).unwrap();
        assert_eq!(&back[..], &data[..90]);
        // read across the RW -> RO boundary works, write fails.
        let mut two = [0u8; 16];
        g.copy_from_guest(VA + 0x1000 - 8, &mut two).unwrap();
        assert_eq!(
            g.copy_to_guest(VA + 0x1000 - 8, &two),
            Err(GuestAccessError::ReadOnly(VA + 0x1000))
        );
        g.write_obj(VA + 8, &0x1122_3344_5566_7788u64).unwrap();
        assert_eq!(g.read_obj::<u64>(VA + 8), Ok(0x1122_3344_5566_7788));
        g.copy_from_guest(VA, &mut []).unwrap();
    }

    #[test]
    fn hostile_addresses_fault() {
        let (ram, cr3) = setup();
        let g = GuestVirt::new(&ram, cr3);
        let mut b = [0u8; 8];
        assert_eq!(
            g.copy_from_guest(0x0000_8000_0000_0000, &mut b),
            Err(GuestAccessError::NonCanonical(0x0000_8000_0000_0000))
        );
        assert!(matches!(
            g.copy_from_guest(0xffff_8080_0000_0000, &mut b),
            Err(GuestAccessError::Reserved(_))
        ));
        assert!(matches!(
            g.copy_from_guest(0xffff_8000_0000_0000, &mut b),
            Err(GuestAccessError::Reserved(_))
        ));
        assert!(matches!(
            g.copy_from_guest(0xffff_87ff_ffff_fff8, &mut b),
            Err(GuestAccessError::Reserved(_))
        ));
        assert!(matches!(
            g.copy_from_guest(VA + 0x5000, &mut b),
            Err(GuestAccessError::NotPresent { level: 1, .. })
        ));
        assert!(matches!(
            g.copy_from_guest(0x0000_7000_0000_0000, &mut b),
            Err(GuestAccessError::NotPresent { level: 4, .. })
        ));
        assert_eq!(
            g.copy_from_guest(VA + 0x2000, &mut b),
            Err(GuestAccessError::NotUser(VA + 0x2000))
        );
        assert!(matches!(
            g.copy_from_guest(VA + 0x3000, &mut b),
            Err(GuestAccessError::BadFrame { pfn: 999, .. })
        ));
        assert!(matches!(
            g.copy_from_guest(0x0000_0080_0000_0000, &mut b),
            Err(GuestAccessError::BadFrame { pfn: 5000, .. })
        ));
        assert!(matches!(
            g.copy_from_guest(0x1000, &mut b),
            Err(GuestAccessError::Superpage(_))
        ));
        assert!(matches!(
            g.copy_from_guest(VA + 0x20_0000, &mut b),
            Err(GuestAccessError::Superpage(_))
        ));
        assert!(matches!(
            g.copy_to_guest(VA + 0x1000, &b),
            Err(GuestAccessError::ReadOnly(_))
        ));
        // Wrapping ranges.
        assert!(matches!(
            g.copy_from_guest(u64::MAX - 3, &mut b),
            Err(GuestAccessError::NonCanonical(_))
        ));
        // A CR3 outside guest RAM.
        let bad = GuestVirt::new(&ram, 1 << 39);
        assert!(matches!(
            bad.copy_from_guest(VA, &mut b),
            Err(GuestAccessError::BadFrame { .. })
        ));
    }
}
