//! Where the time structures are written: a small area of guest memory (`vcpu_time_info`
//! inside `vcpu_info`, a registered secondary time area, the wallclock fields of
//! `shared_info`, a registered runstate area).
//!
//! The writers in this module only need two primitives: a plain byte copy and single aligned
//! 32/64-bit stores, which the guest may read concurrently (seqlock style).

use super::TimeError;
use crate::memory::{GuestRam, GuestVirt};
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress};

/// A destination for time structures. Offsets are relative to the structure's start.
pub trait TimeInfoSink {
    /// Copy `bytes` to `offset` (no atomicity promised).
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), TimeError>;
    /// One 32-bit store at `offset`, atomic if `offset` is 4-aligned in memory.
    fn store_u32(&self, offset: usize, v: u32) -> Result<(), TimeError>;
    /// One 64-bit store at `offset`, atomic if `offset` is 8-aligned in memory.
    fn store_u64(&self, offset: usize, v: u64) -> Result<(), TimeError>;
}

fn area_check(offset: usize, len: usize, area: usize) -> Result<u64, TimeError> {
    match offset.checked_add(len) {
        Some(end) if end <= area => Ok(offset as u64),
        _ => Err(TimeError::OutOfArea { offset, len, area }),
    }
}

/// An area at a guest-physical address in guest RAM (e.g. inside the shared_info frame).
#[derive(Debug, Clone, Copy)]
pub struct GpaSink<'a> {
    ram: &'a GuestRam,
    gpa: u64,
    len: usize,
}

impl<'a> GpaSink<'a> {
    /// The `len` bytes at `gpa`; fails unless they are all in guest RAM.
    pub fn new(ram: &'a GuestRam, gpa: u64, len: usize) -> Result<Self, TimeError> {
        if !ram.contains(gpa, len as u64) {
            return Err(TimeError::BadGpa(gpa));
        }
        Ok(Self { ram, gpa, len })
    }

    fn addr(&self, offset: usize, len: usize) -> Result<GuestAddress, TimeError> {
        let off = area_check(offset, len, self.len)?;
        Ok(GuestAddress(self.gpa + off))
    }

    fn store<T: vm_memory::AtomicAccess>(
        &self,
        offset: usize,
        v: T,
        bytes: &[u8],
    ) -> Result<(), TimeError> {
        let a = self.addr(offset, bytes.len())?;
        if a.0.is_multiple_of(bytes.len() as u64) {
            self.ram
                .mem()
                .store(v, a, Ordering::Release)
                .map_err(|_| TimeError::BadGpa(a.0))
        } else {
            // The guest chose a misaligned area: no atomicity is possible (Xen copies too).
            self.write(offset, bytes)
        }
    }
}

impl TimeInfoSink for GpaSink<'_> {
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), TimeError> {
        let a = self.addr(offset, bytes.len())?;
        self.ram
            .mem()
            .write_slice(bytes, a)
            .map_err(|_| TimeError::BadGpa(a.0))
    }
    fn store_u32(&self, offset: usize, v: u32) -> Result<(), TimeError> {
        self.store(offset, v, &v.to_le_bytes())
    }
    fn store_u64(&self, offset: usize, v: u64) -> Result<(), TimeError> {
        self.store(offset, v, &v.to_le_bytes())
    }
}

/// An area at a guest-virtual address, translated through the guest's page tables at each
/// write (Xen keeps the virtual address of a registered area and copies to it the same way;
/// a failed write is dropped by the caller, as Xen ignores it).
#[derive(Debug, Clone, Copy)]
pub struct VirtSink<'a> {
    virt: GuestVirt<'a>,
    ram: &'a GuestRam,
    va: u64,
    len: usize,
}

impl<'a> VirtSink<'a> {
    /// `len` bytes at guest-virtual `va` through `virt` (which must walk `ram`).
    pub fn new(ram: &'a GuestRam, virt: GuestVirt<'a>, va: u64, len: usize) -> Self {
        Self { virt, ram, va, len }
    }

    fn va(&self, offset: usize, len: usize) -> Result<u64, TimeError> {
        let off = area_check(offset, len, self.len)?;
        self.va.checked_add(off).ok_or(TimeError::BadGpa(self.va))
    }

    fn store<T: vm_memory::AtomicAccess>(
        &self,
        offset: usize,
        v: T,
        bytes: &[u8],
    ) -> Result<(), TimeError> {
        let va = self.va(offset, bytes.len())?;
        if !va.is_multiple_of(bytes.len() as u64) {
            return self.write(offset, bytes);
        }
        // Aligned and at most 8 bytes: within one page.
        let gpa = self.virt.translate(va, true)?;
        self.ram
            .mem()
            .store(v, GuestAddress(gpa), Ordering::Release)
            .map_err(|_| TimeError::BadGpa(gpa))
    }
}

impl TimeInfoSink for VirtSink<'_> {
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), TimeError> {
        let va = self.va(offset, bytes.len())?;
        Ok(self.virt.copy_to_guest(va, bytes)?)
    }
    fn store_u32(&self, offset: usize, v: u32) -> Result<(), TimeError> {
        self.store(offset, v, &v.to_le_bytes())
    }
    fn store_u64(&self, offset: usize, v: u64) -> Result<(), TimeError> {
        self.store(offset, v, &v.to_le_bytes())
    }
}

/// An in-memory area of atomics, for tests and for readers in the same process.
#[derive(Debug)]
pub struct AtomicArea {
    words: Vec<std::sync::atomic::AtomicU32>,
}

impl AtomicArea {
    /// `len` bytes (rounded up to whole 32-bit words), zeroed.
    pub fn new(len: usize) -> Self {
        Self {
            words: (0..len.div_ceil(4))
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
        }
    }

    /// Copy out the current bytes (word-wise, relaxed).
    pub fn snapshot(&self) -> Vec<u8> {
        self.words
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .collect()
    }

    /// One word's value, acquire.
    pub fn load_u32(&self, offset: usize) -> u32 {
        self.words
            .get(offset / 4)
            .map_or(0, |w| w.load(Ordering::Acquire))
    }

    fn len(&self) -> usize {
        self.words.len() * 4
    }

    fn store_byte(&self, at: usize, b: u8) {
        if let Some(w) = self.words.get(at / 4) {
            let sh = (at % 4) * 8;
            let _ = w.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some((old & !(0xff << sh)) | (u32::from(b) << sh))
            });
        }
    }
}

impl TimeInfoSink for AtomicArea {
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), TimeError> {
        area_check(offset, bytes.len(), self.len())?;
        for (i, b) in bytes.iter().enumerate() {
            self.store_byte(offset + i, *b);
        }
        Ok(())
    }
    fn store_u32(&self, offset: usize, v: u32) -> Result<(), TimeError> {
        area_check(offset, 4, self.len())?;
        if offset.is_multiple_of(4) {
            self.words[offset / 4].store(v, Ordering::Release);
            Ok(())
        } else {
            self.write(offset, &v.to_le_bytes())
        }
    }
    fn store_u64(&self, offset: usize, v: u64) -> Result<(), TimeError> {
        // Two word stores (the test readers only rely on the 32-bit version word).
        self.write(offset, &v.to_le_bytes())
    }
}
