//! kxen bench guest: times N round trips of each PV operation with `rdtsc` around the loop
//! and reports the cycle counts as `KXEN-TEST: VALUE` lines for `kxen bench`
//! (vmm/src/bench.rs), then powers off. Embedded in the kxen binary.
//!
//! Command line: `iterations=<N>` (default 10000).
//!
//! Lines printed:
//! ```text
//! KXEN-TEST: VALUE iterations=<N>
//! KXEN-TEST: VALUE hypercall_cycles=<TSC cycles for N xen_version(XENVER_version)>
//! KXEN-TEST: VALUE exception_cycles=<TSC cycles for N int3 bounced + iret>
//! KXEN-TEST: VALUE <mode>_cycles=<TSC cycles for <mode>_ops operations>
//! KXEN-TEST: VALUE <mode>_ops=<operations timed>
//! ```
//!
//! PV memory modes (`<mode>`): `mmuext_flush` (mmuext_op TLB_FLUSH_LOCAL, no PTE written),
//! `mmu_update_x1`, `mmu_update_x32`, `mmu_update_x512` (N PTE updates through
//! mmu_update batches of that many requests; at least one batch) and `ptwr_store` (N
//! 64-bit `mov`s into the guest's own L1, emulated by kxen's writable-page-table path);
//! `mmu_same_x512` (batches of 512 requests rewriting one entry: one replayed entry per
//! batch instead of 512).
//! A mode that cannot run prints `<mode>_cycles=not measured: <reason>` instead, and the
//! run goes on.

#![no_std]
#![no_main]

#[macro_use]
#[path = "kit/mod.rs"]
mod kit;

use core::arch::asm;
use kit::abi::*;
use kit::hypercall as hc;
use kit::pure;
use kit::traps::{self, ANY_RIP};

xen_notes!(features = "writable_page_tables");

const DEFAULT_ITERATIONS: u64 = 10_000;

// The smallest #BP handler a PV kernel can have: Xen's bounce frame is rcx, r11, rip, cs,
// rflags, rsp, ss (no error code for #BP); pop rcx/r11 back, push `flags = 0` and return
// through hypercall-page entry 23 (iret), which pushes rcx, r11, rax itself.
core::arch::global_asm!(
    ".pushsection .text.bench_int3, \"ax\"",
    ".globl bench_int3",
    "bench_int3:",
    "pop %rcx",
    "pop %r11",
    "push $0",
    "jmp hypercall_page + 23 * 32",
    ".popsection",
    options(att_syntax),
);

extern "C" {
    fn bench_int3();
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `iterations=<N>` from the command line.
fn iterations(si: &StartInfo) -> u64 {
    let cmdline = pure::c_str(&si.cmd_line).unwrap_or(&si.cmd_line);
    for word in cmdline.split(|&b| b == b' ') {
        if let Some(v) = word.strip_prefix(b"iterations=") {
            let mut n: u64 = 0;
            for &d in v {
                if !d.is_ascii_digit() {
                    return DEFAULT_ITERATIONS;
                }
                n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
            }
            if n > 0 {
                return n;
            }
        }
    }
    DEFAULT_ITERATIONS
}

fn kmain(si: &'static StartInfo) {
    let n = iterations(si);
    value!("iterations", "{}", n);

    // (a) xen_version(XENVER_version): the cheapest hypercall, through the hypercall page.
    let expected = hc::xen_version_number();
    let mut wrong = 0u64;
    let t0 = rdtsc();
    for _ in 0..n {
        if hc::xen_version_number() != expected {
            wrong += 1;
        }
    }
    let t1 = rdtsc();
    check_eq!("hypercall_results_consistent", wrong, 0u64);
    value!("hypercall_cycles", "{}", t1.wrapping_sub(t0));

    // (b) int3 -> kxen -> bench_int3 -> iret hypercall. Only vector 3 is (re)registered.
    let table = [
        TrapInfo {
            vector: 3,
            flags: 3, // DPL 3: `int3` allowed from the guest kernel (ring 3)
            cs: FLAT_KERNEL_CS,
            address: bench_int3 as *const () as u64,
        },
        TrapInfo {
            vector: 0,
            flags: 0,
            cs: 0,
            address: 0,
        },
    ];
    // SAFETY: terminated table; bench_int3 takes Xen's #BP bounce frame.
    let rc = unsafe { hc::set_trap_table(table.as_ptr()) };
    if !check_eq!("set_trap_table", rc, 0) {
        return;
    }
    let mut done = 0u64;
    let t0 = rdtsc();
    for _ in 0..n {
        // SAFETY: int3 is bounced to bench_int3, which returns right after it with every
        // register but rcx/r11 (restored from the frame by iret) untouched.
        unsafe { asm!("int3", out("rcx") _, out("r11") _, options(att_syntax)) };
        done += 1;
    }
    let t1 = rdtsc();
    check_eq!("exception_round_trips", done, n);
    value!("exception_cycles", "{}", t1.wrapping_sub(t0));
    // Back to the kit's handlers for whatever follows.
    kit::traps::install();

    pv_memory(si, n);
}

// ---------------------------------------------------------------------------------------
// PV memory: PTE updates through mmu_update batches and writable page tables.

const P: u64 = 1;
const RW: u64 = 2;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
// xen: public/xen.h, MMU_NORMAL_PT_UPDATE (ptr's low bits), DOMID_SELF, UVMF_INVLPG,
// MMUEXT_TLB_FLUSH_LOCAL, __HYPERVISOR_update_va_mapping / __HYPERVISOR_mmuext_op
const MMU_NORMAL_PT_UPDATE: u64 = 0;
const DOMID_SELF: u64 = 0x7ff0;
const UVMF_INVLPG: u64 = 2;
const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
const HYPERVISOR_UPDATE_VA_MAPPING: u32 = 14;
const HYPERVISOR_MMUEXT_OP: u32 = 26;
/// Entries of one L1 table.
const ENTRIES: u64 = 512;

#[repr(C)]
#[derive(Clone, Copy)]
struct MmuUpdate {
    ptr: u64,
    val: u64,
}

#[repr(C)]
struct MmuextOp {
    cmd: u32,
    pad: u32,
    arg1: u64,
    arg2: u64,
}

/// Why a mode was not measured: what failed and the hypercall's return code, if any.
struct NotMeasured(&'static str, i64);

fn pte(mfn: u64, flags: u64) -> u64 {
    (mfn << 12) | flags
}

fn mfn_of(va: u64) -> u64 {
    (va - VIRT_BASE) / PAGE_SIZE
}

fn rd(va: u64) -> u64 {
    // SAFETY: callers pass addresses mapped in the initial mapping.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

fn uvm(va: u64, val: u64, flags: u64) -> i64 {
    // SAFETY: the hypervisor validates the entry.
    unsafe { hc::hypercall3(HYPERVISOR_UPDATE_VA_MAPPING, va, val, flags) }
}

fn mmu_update(reqs: u64, count: u64) -> i64 {
    // SAFETY: `count` requests at `reqs` are ours; no pdone.
    unsafe { hc::hypercall4(HYPERVISOR_MMU_UPDATE, reqs, count, 0, DOMID_SELF) }
}

/// One 64-bit store `mov [rdi], rsi` (3 bytes).
fn store(va: u64, v: u64) {
    // SAFETY: `va` is an entry of the scratch L1, mapped read-only: the store faults and
    // kxen emulates it (or bounces the #PF, which the kit skips when it was expected).
    unsafe { asm!("mov [rdi], rsi", in("rdi") va, in("rsi") v, options(nostack)) };
}

/// A page table of the guest's own for the PTE updates: a fresh L1 (a padding page of the
/// initial mapping, made read-only) hooked into a free slot of the boot L2, whose 512
/// entries the modes rewrite in turn, mapping two other padding pages alternately (every
/// update changes the entry, so each one drops a reference and takes one).
struct Scratch {
    /// The L1's read-only mapping (the writable-page-table target).
    l1_va: u64,
    /// The L1's machine address (the mmu_update target).
    l1_ma: u64,
    frames: [u64; 2],
    /// Two writable pages for request lists (512 requests).
    reqs: u64,
    next: u64,
    last: (u64, u64),
}

impl Scratch {
    fn new(si: &StartInfo) -> Result<Self, NotMeasured> {
        let end = kit::layout::initial_mapping_end(si);
        // Padding at the end of the initial mapping (>= 512 KiB, unused by the kit).
        let page = |i: u64| end.wrapping_sub((i + 1) * PAGE_SIZE);
        let stack = &end as *const u64 as u64;
        let pt_end = si.pt_base + si.nr_pt_frames * PAGE_SIZE;
        if page(4) < pt_end || page(4) < stack || end <= VIRT_BASE {
            return Err(NotMeasured(
                "no padding pages after the page tables and stack",
                0,
            ));
        }
        let l1_va = page(0);
        for i in 0..ENTRIES {
            // SAFETY: a writable padding page of the initial mapping.
            unsafe { core::ptr::write_volatile((l1_va + i * 8) as *mut u64, 0) };
        }
        let rc = uvm(l1_va, pte(mfn_of(l1_va), P), UVMF_INVLPG);
        if rc != 0 {
            return Err(NotMeasured("update_va_mapping (scratch L1 read-only)", rc));
        }
        // The boot L2 covering VIRT_BASE (L4 slot 511, L3 slot 510).
        let next_table = |table: u64, idx: u64| {
            let e = rd(table + idx * 8);
            let mfn = (e & ADDR) >> 12;
            (e & P != 0 && mfn < si.nr_pages).then(|| VIRT_BASE + mfn * PAGE_SIZE)
        };
        let l2 = next_table(si.pt_base, 511)
            .and_then(|l3| next_table(l3, 510))
            .ok_or(NotMeasured("no boot L2 at VIRT_BASE", 0))?;
        let first = ((end - VIRT_BASE) >> 21) + 1;
        let slot = (first..ENTRIES)
            .rev()
            .find(|&i| rd(l2 + i * 8) & P == 0)
            .ok_or(NotMeasured("no free slot in the boot L2", 0))?;
        let hook = MmuUpdate {
            ptr: (mfn_of(l2) * PAGE_SIZE + slot * 8) | MMU_NORMAL_PT_UPDATE,
            val: pte(mfn_of(l1_va), P | RW),
        };
        let rc = mmu_update(&hook as *const MmuUpdate as u64, 1);
        if rc != 0 {
            return Err(NotMeasured(
                "mmu_update (hooking the scratch L1 into the L2)",
                rc,
            ));
        }
        Ok(Self {
            l1_va,
            l1_ma: mfn_of(l1_va) * PAGE_SIZE,
            frames: [mfn_of(page(1)), mfn_of(page(2))],
            reqs: page(4),
            next: 0,
            last: (0, 0),
        })
    }

    /// The next update: (slot, value).
    fn target(&mut self) -> (u64, u64) {
        let k = self.next;
        self.next += 1;
        let frame = self.frames[((k / ENTRIES) % 2) as usize];
        self.last = (k % ENTRIES, pte(frame, P | RW));
        self.last
    }

    /// The last update is in the table.
    fn verify(&self) -> Result<(), NotMeasured> {
        let (slot, val) = self.last;
        let got = rd(self.l1_va + slot * 8);
        if got & (ADDR | P) != val & (ADDR | P) {
            return Err(NotMeasured("the entry read back is not the one written", 0));
        }
        Ok(())
    }

    /// `n` updates (at least one batch) through mmu_update batches of `batch` requests.
    fn mmu_update(&mut self, n: u64, batch: u64) -> Result<(u64, u64), NotMeasured> {
        let calls = n.div_ceil(batch).max(1);
        let reqs = self.reqs as *mut MmuUpdate;
        let t0 = rdtsc();
        for _ in 0..calls {
            for j in 0..batch {
                let (slot, val) = self.target();
                let r = MmuUpdate {
                    ptr: (self.l1_ma + slot * 8) | MMU_NORMAL_PT_UPDATE,
                    val,
                };
                // SAFETY: j < 512: inside the two writable request pages.
                unsafe { reqs.add(j as usize).write(r) };
            }
            let rc = mmu_update(reqs as u64, batch);
            if rc != 0 {
                return Err(NotMeasured("mmu_update", rc));
            }
        }
        let t1 = rdtsc();
        self.verify()?;
        Ok((t1.wrapping_sub(t0), calls * batch))
    }

    /// `n` updates (at least one batch) in batches of 512 requests that all rewrite the
    /// same entry (alternating between the two frames, ending where it started): kxen's
    /// replay list then holds one entry per batch instead of 512.
    fn mmu_update_same(&mut self, n: u64) -> Result<(u64, u64), NotMeasured> {
        let calls = n.div_ceil(ENTRIES).max(1);
        let reqs = self.reqs as *mut MmuUpdate;
        let slot = 0;
        let cur = (rd(self.l1_va + slot * 8) & ADDR) >> 12;
        let other = if cur == self.frames[0] {
            self.frames[1]
        } else {
            self.frames[0]
        };
        for j in 0..ENTRIES {
            let frame = if j % 2 == 0 { other } else { cur };
            let r = MmuUpdate {
                ptr: (self.l1_ma + slot * 8) | MMU_NORMAL_PT_UPDATE,
                val: pte(frame, P | RW),
            };
            // SAFETY: j < 512: inside the two writable request pages.
            unsafe { reqs.add(j as usize).write(r) };
        }
        self.last = (slot, pte(cur, P | RW));
        let t0 = rdtsc();
        for _ in 0..calls {
            let rc = mmu_update(reqs as u64, ENTRIES);
            if rc != 0 {
                return Err(NotMeasured("mmu_update", rc));
            }
        }
        let t1 = rdtsc();
        self.verify()?;
        Ok((t1.wrapping_sub(t0), calls * ENTRIES))
    }

    /// `n` direct stores into the L1 (writable page tables).
    fn ptwr(&mut self, n: u64) -> Result<(u64, u64), NotMeasured> {
        let rc = hc::vm_assist(VMASST_CMD_ENABLE, VMASST_TYPE_WRITABLE_PAGETABLES);
        if rc != 0 {
            return Err(NotMeasured("vm_assist(writable_pagetables)", rc));
        }
        // A probe: a store kxen does not emulate comes back as a #PF, skipped here.
        let (slot, val) = self.target();
        traps::expect(14, ANY_RIP, 3);
        store(self.l1_va + slot * 8, val);
        if traps::take_last().is_some() {
            return Err(NotMeasured("the store was bounced as #PF, not emulated", 0));
        }
        self.verify()?;
        let t0 = rdtsc();
        for _ in 0..n {
            let (slot, val) = self.target();
            store(self.l1_va + slot * 8, val);
        }
        let t1 = rdtsc();
        self.verify()?;
        Ok((t1.wrapping_sub(t0), n))
    }
}

/// `n` mmuext_op(TLB_FLUSH_LOCAL): a hypercall plus kxen's CR3 reload, no PTE written.
fn flushes(n: u64) -> Result<(u64, u64), NotMeasured> {
    let op = MmuextOp {
        cmd: MMUEXT_TLB_FLUSH_LOCAL,
        pad: 0,
        arg1: 0,
        arg2: 0,
    };
    let t0 = rdtsc();
    for _ in 0..n {
        // SAFETY: one op on our stack.
        let rc = unsafe {
            hc::hypercall4(
                HYPERVISOR_MMUEXT_OP,
                &op as *const MmuextOp as u64,
                1,
                0,
                DOMID_SELF,
            )
        };
        if rc != 0 {
            return Err(NotMeasured("mmuext_op(TLB_FLUSH_LOCAL)", rc));
        }
    }
    let t1 = rdtsc();
    Ok((t1.wrapping_sub(t0), n))
}

fn report(cycles_key: &str, ops_key: &str, r: Result<(u64, u64), NotMeasured>) {
    match r {
        Ok((cycles, ops)) => {
            value!(cycles_key, "{}", cycles);
            value!(ops_key, "{}", ops);
        }
        Err(NotMeasured(what, 0)) => value!(cycles_key, "not measured: {} failed", what),
        Err(NotMeasured(what, rc)) => {
            value!(cycles_key, "not measured: {} returned {}", what, rc)
        }
    }
}

fn pv_memory(si: &StartInfo, n: u64) {
    report("mmuext_flush_cycles", "mmuext_flush_ops", flushes(n));
    let modes = [
        ("mmu_update_x1_cycles", "mmu_update_x1_ops", 1),
        ("mmu_update_x32_cycles", "mmu_update_x32_ops", 32),
        ("mmu_update_x512_cycles", "mmu_update_x512_ops", ENTRIES),
    ];
    let mut scratch = match Scratch::new(si) {
        Ok(s) => s,
        Err(e) => {
            for (c, o, _) in modes {
                report(c, o, Err(NotMeasured(e.0, e.1)));
            }
            report(
                "mmu_same_x512_cycles",
                "mmu_same_x512_ops",
                Err(NotMeasured(e.0, e.1)),
            );
            report("ptwr_store_cycles", "ptwr_store_ops", Err(e));
            return;
        }
    };
    for (c, o, batch) in modes {
        report(c, o, scratch.mmu_update(n, batch));
    }
    report(
        "mmu_same_x512_cycles",
        "mmu_same_x512_ops",
        scratch.mmu_update_same(n),
    );
    report("ptwr_store_cycles", "ptwr_store_ops", scratch.ptwr(n));
}
