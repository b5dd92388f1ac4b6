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
//!
//! Events and time (shared_info mapped, kxen's legacy vcpu_info slots, this file's own
//! event callback, which reads the TSC first thing):
//! * `evtchn_self`: N `EVTCHNOP_send` on an IPI port bound to the sending vCPU 0; cycles
//!   summed from `rdtsc` before each send to `rdtsc` at the upcall entry (kxen bounces the
//!   upcall as the send hypercall returns; the upcall's `iret` is not counted).
//! * `evtchn_ipi`: N `EVTCHNOP_send` from vCPU 0 on an IPI port of vCPU 1, which is blocked
//!   in `SCHEDOP_block` (vCPU 0 waits until `VCPUOP_get_runstate_info` says so before each
//!   send); cycles summed from vCPU 0's `rdtsc` before the send to vCPU 1's `rdtsc` at its
//!   upcall entry. Needs a second vCPU.
//! * timer wakeups: min(N, 1000) times `VCPUOP_set_singleshot_timer` at pvclock now + 1 ms,
//!   then `SCHEDOP_block`; the VIRQ_TIMER upcall reads pvclock system time. Printed as
//!   `timer_wakeup_count`, `timer_wakeup_late_{mean,median,min,max}_ns` (signed: negative
//!   = early), or `timer_wakeup_count=not measured: <reason>`.

#![no_std]
#![no_main]

#[macro_use]
#[path = "kit/mod.rs"]
mod kit;

use core::arch::asm;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use kit::abi::*;
use kit::events as ev;
use kit::hypercall as hc;
use kit::pure;
use kit::smp::{self, Stacks};
use kit::time::{pvclock, rdtsc, rdtsc_ordered};
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
    events_and_time(si, n);
}

// ---------------------------------------------------------------------------------------
// PV memory: PTE updates through mmu_update batches and writable page tables.

const P: u64 = 1;
const RW: u64 = 2;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Entries of one L1 table.
const ENTRIES: u64 = 512;

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
    unsafe { hc::hypercall4(HYPERVISOR_MMU_UPDATE, reqs, count, 0, u64::from(DOMID_SELF)) }
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
                u64::from(DOMID_SELF),
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

// ---------------------------------------------------------------------------------------
// Events and time: send-to-upcall latency, timer wakeup lateness.

/// Timer wakeups measured at most (each waits 1 ms).
const TIMER_WAKEUPS_MAX: u64 = 1000;
/// How far ahead each timer is set.
const TIMER_AHEAD_NS: u64 = 1_000_000;
/// Give up waiting for an upcall after this many TSC cycles (seconds at GHz rates).
const WAIT_CYCLES: u64 = 20_000_000_000;

/// The port whose upcalls are timed (0 = none).
static EXPECT_PORT: AtomicU32 = AtomicU32::new(0);
/// Upcalls that found [`EXPECT_PORT`] pending, and the TSC / pvclock time at the last one's entry.
static HITS: AtomicU64 = AtomicU64::new(0);
static HIT_TSC: AtomicU64 = AtomicU64::new(0);
static HIT_SYSTIME: AtomicU64 = AtomicU64::new(0);
/// vCPU 1: callback registered and events unmasked / about to block / told to stop.
static AP_READY: AtomicU32 = AtomicU32::new(0);
static AP_ARMED: AtomicU32 = AtomicU32::new(0);
static AP_STOP: AtomicU32 = AtomicU32::new(0);
static AP_CALLBACK_RC: AtomicU64 = AtomicU64::new(0);

/// vCPU 1's stack.
static AP_STACK: Stacks<1> = Stacks::new();
#[repr(C, align(8))]
struct Samples([i64; TIMER_WAKEUPS_MAX as usize]);
static mut SAMPLES: Samples = Samples([0; TIMER_WAKEUPS_MAX as usize]);

// The event callback: Xen's frame is rcx, r11, rip, cs, rflags, rsp, ss (events masked).
// The TSC is read before anything else; then the usual register save and a call into Rust
// (`bench_upcall(tsc, rsp)`), and back through the iret hypercall, which restores the mask.
core::arch::global_asm!(
    ".pushsection .text.bench_event, \"ax\"",
    ".globl bench_event_entry",
    "bench_event_entry:",
    "push %rax",
    "push %rdx",
    "rdtsc",
    "shl $32, %rdx",
    "or %rax, %rdx",
    "push %rbx", "push %rsi", "push %rdi", "push %rbp", "push %r8", "push %r9",
    "push %r10", "push %r12", "push %r13", "push %r14", "push %r15",
    "mov %rdx, %rdi",
    "mov %rsp, %rsi",
    "mov %rsp, %rbx",
    "sub $512, %rsp",
    "and $-16, %rsp",
    "fxsave64 (%rsp)",
    "cld",
    "call bench_upcall",
    "fxrstor64 (%rsp)",
    "mov %rbx, %rsp",
    "pop %r15", "pop %r14", "pop %r13", "pop %r12", "pop %r10", "pop %r9",
    "pop %r8", "pop %rbp", "pop %rdi", "pop %rsi", "pop %rbx",
    "pop %rdx",
    "pop %rax",
    "pop %rcx",
    "pop %r11",
    "push $0",
    "jmp hypercall_page + 23 * 32",
    ".popsection",
    options(att_syntax),
);

extern "C" {
    fn bench_event_entry();
}

/// A word of the mapped shared_info.
fn shinfo(word: usize) -> &'static AtomicU64 {
    &kit::events::SHINFO.0[word % 512]
}

/// Word `i` of vCPU `me`'s vcpu_info (legacy slot in shared_info; 8 words).
fn vcpu_info(me: usize, i: usize) -> &'static AtomicU64 {
    shinfo(me * 8 + i)
}

/// System time (ns) from vCPU `me`'s pvclock (its vcpu_info in shared_info).
fn system_time(me: usize) -> u64 {
    pvclock(ev::shared_vcpu_info(me)).0
}

/// Which vCPU runs on stack pointer `rsp`: 1 on vCPU 1's stack, else 0.
fn vcpu_of_stack(rsp: u64) -> usize {
    usize::from(AP_STACK.contains(0, rsp))
}

/// The event upcall (from `bench_event_entry`): Linux's 2-level scan over the mapped
/// shared_info, clearing every pending unmasked port; a hit on [`EXPECT_PORT`] records
/// `tsc` (read at the entry) and the pvclock time.
#[no_mangle]
extern "C" fn bench_upcall(tsc: u64, rsp: u64) {
    let me = vcpu_of_stack(rsp);
    let expect = EXPECT_PORT.load(Ordering::SeqCst);
    let mut hit = false;
    loop {
        vcpu_info(me, 0).fetch_and(!0xff, Ordering::SeqCst);
        let mut sel = vcpu_info(me, 1).swap(0, Ordering::SeqCst);
        while sel != 0 {
            let w = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            let bits = shinfo(SHINFO_PENDING_WORD0 + w).load(Ordering::SeqCst)
                & !shinfo(SHINFO_MASK_WORD0 + w).load(Ordering::SeqCst);
            shinfo(SHINFO_PENDING_WORD0 + w).fetch_and(!bits, Ordering::SeqCst);
            if expect != 0 && w == (expect / 64) as usize && bits & (1 << (expect % 64)) != 0 {
                hit = true;
            }
        }
        if vcpu_info(me, 0).load(Ordering::SeqCst) & 0xff == 0 {
            break;
        }
    }
    if hit {
        HIT_TSC.store(tsc, Ordering::SeqCst);
        HIT_SYSTIME.store(system_time(me), Ordering::SeqCst);
        HITS.fetch_add(1, Ordering::SeqCst);
    }
}

/// EVTCHNOP_bind_ipi for `vcpu`: the port.
fn bind_ipi(vcpu: u32) -> Result<u32, NotMeasured> {
    ev::bind_ipi(vcpu).map_err(|rc| NotMeasured("EVTCHNOP_bind_ipi", rc))
}

/// Register `bench_event_entry` as this vCPU's event callback.
fn register_callback() -> i64 {
    ev::register_callback(CALLBACKTYPE_EVENT, 0, bench_event_entry as *const () as u64)
}

/// Unmask events on vCPU `me` (its vcpu_info's upcall mask) and let a pending upcall in.
fn unmask_events(me: usize) {
    vcpu_info(me, 0).fetch_and(!(0xff << 8), Ordering::SeqCst);
    hc::xen_version_number();
}

/// Wait (spinning) until [`HITS`] moves past `hits`; false after [`WAIT_CYCLES`].
fn wait_hit(hits: u64) -> bool {
    let t0 = rdtsc_ordered();
    while HITS.load(Ordering::SeqCst) == hits {
        if rdtsc_ordered().wrapping_sub(t0) > WAIT_CYCLES {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn events_and_time(si: &StartInfo, n: u64) {
    let keys = [
        ("evtchn_self_cycles", "evtchn_self_ops"),
        ("evtchn_ipi_cycles", "evtchn_ipi_ops"),
    ];
    let rc = kit::events::map_shared_info(si);
    let rc = if rc == 0 { register_callback() } else { rc };
    if rc != 0 {
        let why = NotMeasured("mapping shared_info / registering the event callback", rc);
        for (c, o) in keys {
            report(c, o, Err(NotMeasured(why.0, why.1)));
        }
        value!("timer_wakeup_count", "not measured: {} returned {}", why.0, why.1);
        return;
    }
    unmask_events(0);
    report(keys[0].0, keys[0].1, evtchn_self(n));
    timer_wakeups(n.min(TIMER_WAKEUPS_MAX));
    report(keys[1].0, keys[1].1, evtchn_ipi(si, n));
}

/// `n` sends to an IPI port of the sending vCPU, each upcall timed from before the send.
fn evtchn_self(n: u64) -> Result<(u64, u64), NotMeasured> {
    let port = bind_ipi(0)?;
    EXPECT_PORT.store(port, Ordering::SeqCst);
    let mut total = 0u64;
    let mut result = Ok(());
    for _ in 0..n {
        let hits = HITS.load(Ordering::SeqCst);
        let t0 = rdtsc_ordered();
        let rc = ev::send(port);
        if rc != 0 {
            result = Err(NotMeasured("EVTCHNOP_send", rc));
            break;
        }
        // The upcall ran before the send returned to this code.
        if HITS.load(Ordering::SeqCst) == hits {
            result = Err(NotMeasured("the upcall as the send returned", 0));
            break;
        }
        total += HIT_TSC.load(Ordering::SeqCst).wrapping_sub(t0);
    }
    EXPECT_PORT.store(0, Ordering::SeqCst);
    ev::close(port);
    result.map(|()| (total, n))
}

/// Timer wakeups: print their lateness (pvclock at the upcall minus the deadline).
fn timer_wakeups(m: u64) {
    let port = match ev::bind_virq(VIRQ_TIMER, 0) {
        Ok(p) => p,
        Err(rc) => {
            value!("timer_wakeup_count", "not measured: EVTCHNOP_bind_virq returned {}", rc);
            return;
        }
    };
    EXPECT_PORT.store(port, Ordering::SeqCst);
    // SAFETY: only vCPU 0 runs this; the upcall does not touch SAMPLES.
    let samples = unsafe { &mut (*(&raw mut SAMPLES)).0 };
    let mut failed: Option<NotMeasured> = None;
    for s in samples.iter_mut().take(m as usize) {
        let hits = HITS.load(Ordering::SeqCst);
        let deadline = system_time(0) + TIMER_AHEAD_NS;
        let rc = kit::time::set_singleshot_timer(0, deadline, 0);
        if rc != 0 {
            failed = Some(NotMeasured("VCPUOP_set_singleshot_timer", rc));
            break;
        }
        let mut blocks = 0;
        while HITS.load(Ordering::SeqCst) == hits && blocks < 10_000 {
            ev::block();
            blocks += 1;
        }
        if HITS.load(Ordering::SeqCst) == hits {
            failed = Some(NotMeasured("waiting for VIRQ_TIMER (10000 SCHEDOP_block)", 0));
            break;
        }
        *s = HIT_SYSTIME.load(Ordering::SeqCst).wrapping_sub(deadline) as i64;
    }
    EXPECT_PORT.store(0, Ordering::SeqCst);
    ev::close(port);
    match failed {
        Some(NotMeasured(what, 0)) => {
            value!("timer_wakeup_count", "not measured: {} failed", what);
            return;
        }
        Some(NotMeasured(what, rc)) => {
            value!("timer_wakeup_count", "not measured: {} returned {}", what, rc);
            return;
        }
        None => {}
    }
    let v = &mut samples[..m as usize];
    v.sort_unstable();
    let sum: i128 = v.iter().map(|&x| i128::from(x)).sum();
    value!("timer_wakeup_count", "{}", m);
    value!("timer_wakeup_ahead_ns", "{}", TIMER_AHEAD_NS);
    value!("timer_wakeup_late_mean_ns", "{}", sum / i128::from(m.max(1)));
    value!("timer_wakeup_late_median_ns", "{}", v[v.len() / 2]);
    value!("timer_wakeup_late_min_ns", "{}", v[0]);
    value!("timer_wakeup_late_max_ns", "{}", v[v.len() - 1]);
}

/// vCPU 1: register the callback, unmask, then block until told to stop; each block ends
/// with vCPU 0's event delivered to the upcall.
extern "C" fn ap_main(_: u64) -> ! {
    AP_CALLBACK_RC.store(register_callback() as u64, Ordering::SeqCst);
    unmask_events(1);
    AP_READY.store(1, Ordering::SeqCst);
    while AP_STOP.load(Ordering::SeqCst) == 0 {
        AP_ARMED.store(1, Ordering::SeqCst);
        ev::block();
    }
    smp::down(1);
    loop {
        hc::sched_yield();
    }
}

/// Whether vCPU 1 is in RUNSTATE_blocked (VCPUOP_get_runstate_info).
fn ap_blocked() -> bool {
    let mut info = [0u64; 6];
    smp::vcpu_op(VCPUOP_GET_RUNSTATE_INFO, 1, info.as_mut_ptr() as u64) == 0
        && info[0] & 0xffff_ffff == RUNSTATE_BLOCKED
}

/// `n` sends from vCPU 0 to blocked vCPU 1, each timed to vCPU 1's upcall entry.
fn evtchn_ipi(si: &StartInfo, n: u64) -> Result<(u64, u64), NotMeasured> {
    let port = bind_ipi(1)?;
    let rc = smp::initialise(1, smp::context(si, ap_main, 0, AP_STACK.top(0)));
    if rc != 0 {
        ev::close(port);
        return Err(NotMeasured("VCPUOP_initialise(vCPU 1)", rc));
    }
    let rc = smp::up(1);
    if rc != 0 {
        ev::close(port);
        return Err(NotMeasured("VCPUOP_up(vCPU 1)", rc));
    }
    let mut result = Ok(());
    let mut spins = 0u32;
    while AP_READY.load(Ordering::SeqCst) == 0 {
        spins += 1;
        if spins > 1_000_000 {
            result = Err(NotMeasured("starting vCPU 1", 0));
            break;
        }
        hc::sched_yield();
    }
    let cb = AP_CALLBACK_RC.load(Ordering::SeqCst) as i64;
    if result.is_ok() && cb != 0 {
        result = Err(NotMeasured("callback_op on vCPU 1", cb));
    }
    EXPECT_PORT.store(port, Ordering::SeqCst);
    let mut total = 0u64;
    let mut done = 0;
    while result.is_ok() && done < n {
        // vCPU 1 must be inside SCHEDOP_block before the timed send.
        let w0 = rdtsc_ordered();
        while AP_ARMED.load(Ordering::SeqCst) == 0 || !ap_blocked() {
            if rdtsc_ordered().wrapping_sub(w0) > WAIT_CYCLES {
                result = Err(NotMeasured("waiting for vCPU 1 to block", 0));
                break;
            }
            core::hint::spin_loop();
        }
        if result.is_err() {
            break;
        }
        AP_ARMED.store(0, Ordering::SeqCst);
        let hits = HITS.load(Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let t0 = rdtsc_ordered();
        let rc = ev::send(port);
        if rc != 0 {
            result = Err(NotMeasured("EVTCHNOP_send", rc));
            break;
        }
        if !wait_hit(hits) {
            result = Err(NotMeasured("waiting for vCPU 1's upcall", 0));
            break;
        }
        total += HIT_TSC.load(Ordering::SeqCst).wrapping_sub(t0);
        done += 1;
    }
    EXPECT_PORT.store(0, Ordering::SeqCst);
    AP_STOP.store(1, Ordering::SeqCst);
    ev::send(port);
    result.map(|()| (total, n))
}
