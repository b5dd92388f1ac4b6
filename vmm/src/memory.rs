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
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

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
        assert!(ram.mem().read_obj::<u64>(GuestAddress(4 * PAGE_SIZE)).is_err());
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
