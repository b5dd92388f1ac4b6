//! smp_2 / smp_4: secondary vCPUs. vCPU 0 checks VCPUOP_is_up/up/initialise errnos, brings
//! every other vCPU up with VCPUOP_initialise + VCPUOP_up (same page tables, own stack); each
//! one counts itself in a shared counter, binds an IPI port, polls it until vCPU 0's IPI
//! arrives, answers with an IPI to vCPU 0, then goes down (VCPUOP_down) — except the last
//! vCPU of smp_4, which spins without hypercalls to prove the shutdown stops a running vCPU.
//! vCPU 0 waits for all of it and powers off.
//! Runstate: vCPU 0 registers vCPU 1's runstate area before bringing it up (offline); once
//! vCPU 1 went down the area must say offline with its running time accounted; vCPU 0 then
//! brings it up again (VCPUOP_up) and the area must say running, offline time accounted.
//! Remote TLB flushes: vCPU 1 spins reading a page through a VA (no hypercalls, so its TLB
//! stays hot); vCPU 0 remaps the VA with update_va_mapping(UVMF_INVLPG|UVMF_ALL), then
//! remaps it back without a flush and flushes with MMUEXT_TLB_FLUSH_MULTI naming vCPU 1;
//! after each, vCPU 1 (told through a shared flag) must see the new frame at once.

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use kit::abi::*;
use kit::events::*;
use kit::hypercall::{hypercall3, hypercall4, sched_yield};
use kit::smp::{self, vcpu_op, Stacks};

xen_notes!(features = "writable_page_tables");

#[cfg(kxen_guest = "smp_2")]
const NR: u32 = 2;
#[cfg(kxen_guest = "smp_4")]
const NR: u32 = 4;

/// vCPUs that reached their entry point.
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// vCPUs that received vCPU 0's IPI and answered.
static PONGS: AtomicU32 = AtomicU32::new(0);
/// Each vCPU's IPI port (0 = not bound yet).
static AP_PORT: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];
/// vCPU 0's IPI port.
static BSP_PORT: AtomicU32 = AtomicU32::new(0);
/// vCPU 1's runstate area (struct vcpu_runstate_info: state, state_entry_time, time[4]),
/// registered by vCPU 0.
static RUNSTATE1: [AtomicU64; 6] = [const { AtomicU64::new(u64::MAX) }; 6];

/// Entry argument (rdi) each vCPU saw.
static SEEN_ID: [AtomicU64; 4] = [const { AtomicU64::new(u64::MAX) }; 4];

static STACKS: Stacks<4> = Stacks::new();

// Remote TLB flush test (see the module docs).
const VAL_A: u64 = 0xaaaa_0000_0000_0001;
const VAL_B: u64 = 0xbbbb_0000_0000_0002;
/// The VA vCPU 1 reads (0 until vCPU 0 set it up).
static TLB_VA: AtomicU64 = AtomicU64::new(0);
/// 1: vCPU 1 read the VA; 2/4: vCPU 0 asks vCPU 1 to record what it sees; 3/5: recorded;
/// 6: done.
static TLB_PHASE: AtomicU32 = AtomicU32::new(0);
/// What vCPU 1 saw in phases 2 and 4.
static TLB_SEEN: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

fn rd(va: u64) -> u64 {
    // SAFETY: callers pass a mapped address.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// vCPU 1's side: spin reading the VA until vCPU 0 is done.
fn tlb_reader() {
    let va = loop {
        let v = TLB_VA.load(Ordering::SeqCst);
        if v != 0 {
            break v;
        }
        core::hint::spin_loop();
    };
    let _ = rd(va);
    TLB_PHASE.store(1, Ordering::SeqCst);
    for _ in 0..2_000_000_000u64 {
        let _ = rd(va);
        match TLB_PHASE.load(Ordering::SeqCst) {
            2 => {
                TLB_SEEN[0].store(rd(va), Ordering::SeqCst);
                TLB_PHASE.store(3, Ordering::SeqCst);
            }
            4 => {
                TLB_SEEN[1].store(rd(va), Ordering::SeqCst);
                TLB_PHASE.store(5, Ordering::SeqCst);
            }
            6 => return,
            _ => {}
        }
    }
}

/// vCPU 0's side.
fn remote_tlb_flush(si: &StartInfo) {
    let end = kit::layout::initial_mapping_end(si);
    let (a, b) = (end - PAGE_SIZE, end - 2 * PAGE_SIZE);
    let (fa, fb) = (pfn_of(a), pfn_of(b));
    // SAFETY: spare pages at the end of the initial mapping, mapped writable, unused.
    unsafe {
        core::ptr::write_volatile(a as *mut u64, VAL_A);
        core::ptr::write_volatile(b as *mut u64, VAL_B);
    }
    TLB_VA.store(a, Ordering::SeqCst);
    if !wait_until("tlb_reader_ready", || TLB_PHASE.load(Ordering::SeqCst) == 1) {
        return;
    }
    let uvm = |mfn: u64, flags: u64| {
        // SAFETY: remaps the spare page's VA; the hypervisor validates the entry.
        unsafe { hypercall3(HYPERVISOR_UPDATE_VA_MAPPING, a, (mfn << 12) | 0x63, flags) }
    };
    check_eq!("uvm_all_remap", uvm(fb, UVMF_INVLPG | UVMF_ALL), 0);
    TLB_PHASE.store(2, Ordering::SeqCst);
    if wait_until("tlb_reader_saw_uvm_all", || TLB_PHASE.load(Ordering::SeqCst) == 3) {
        check_eq!(
            "uvm_all_flushes_other_vcpu",
            TLB_SEEN[0].load(Ordering::SeqCst),
            VAL_B
        );
    }
    check_eq!("uvm_remap_back_no_flush", uvm(fa, UVMF_NONE), 0);
    let mask: u64 = 1 << 1;
    // struct mmuext_op: cmd (+pad), arg1, arg2 = vcpumask.
    let op: [u64; 3] = [
        u64::from(MMUEXT_TLB_FLUSH_MULTI),
        0,
        &mask as *const u64 as u64,
    ];
    // SAFETY: one mmuext_op on our stack, its vcpumask too.
    let rc = unsafe { hypercall4(HYPERVISOR_MMUEXT_OP, op.as_ptr() as u64, 1, 0, u64::from(DOMID_SELF)) };
    check_eq!("tlb_flush_multi", rc, 0);
    TLB_PHASE.store(4, Ordering::SeqCst);
    if wait_until("tlb_reader_saw_flush_multi", || TLB_PHASE.load(Ordering::SeqCst) == 5) {
        check_eq!(
            "tlb_flush_multi_flushes_other_vcpu",
            TLB_SEEN[1].load(Ordering::SeqCst),
            VAL_A
        );
    }
    TLB_PHASE.store(6, Ordering::SeqCst);
}

/// A secondary vCPU's entry (its argument is its id).
extern "C" fn ap_main(id: u64) -> ! {
    let i = id as usize;
    SEEN_ID[i.min(3)].store(id, Ordering::SeqCst);
    ARRIVED.fetch_add(1, Ordering::SeqCst);
    let port = match bind_ipi(id as u32) {
        Ok(p) => p,
        Err(_) => 0,
    };
    AP_PORT[i.min(3)].store(port, Ordering::SeqCst);
    // Wait for vCPU 0's IPI (poll returns once the port is pending).
    while poll(&[port], 0) != 0 {}
    PONGS.fetch_add(1, Ordering::SeqCst);
    send(BSP_PORT.load(Ordering::SeqCst));
    if id == 1 {
        tlb_reader();
    }
    if NR == 4 && id == 3 {
        // Stay up, without hypercalls: the domain's shutdown must stop this vCPU too.
        loop {
            core::hint::spin_loop();
        }
    }
    vcpu_op(VCPUOP_DOWN, id, 0);
    // Not reached while down; if the VMM let it run on, stay here.
    loop {
        sched_yield();
    }
}

/// The context of vCPU `id`: entry ap_main(id), its own stack, the current page tables.
fn context(si: &StartInfo, id: u32) -> u64 {
    smp::context(si, ap_main, u64::from(id), STACKS.top(id as usize))
}

fn wait_until(what: &str, cond: impl Fn() -> bool) -> bool {
    kit::test::wait_until(what, 2_000_000, cond)
}

fn kmain(si: &'static StartInfo) {
    check_eq!("register_vcpu_info", register_vcpu_info(), 0);
    check_eq!("register_event_callback", register_event_callback(), 0);
    set_upcall_mask(false);
    force_callback();
    match bind_ipi(0) {
        Ok(p) => BSP_PORT.store(p, Ordering::SeqCst),
        Err(e) => {
            check!("bind_ipi_bsp", false, "rc {}", e);
        }
    }

    check_eq!("is_up_vcpu0", vcpu_op(VCPUOP_IS_UP, 0, 0), 1);
    check_eq!("is_up_vcpu1_before", vcpu_op(VCPUOP_IS_UP, 1, 0), 0);
    check_eq!("is_up_no_such_vcpu", vcpu_op(VCPUOP_IS_UP, u64::from(NR), 0), -ENOENT);
    check_eq!("up_before_initialise", vcpu_op(VCPUOP_UP, 1, 0), -EINVAL);
    check_eq!(
        "initialise_vcpu0_exists",
        vcpu_op(VCPUOP_INITIALISE, 0, context(si, 0)),
        -EEXIST
    );
    check_eq!(
        "initialise_bad_pointer",
        vcpu_op(VCPUOP_INITIALISE, 1, 0x10),
        -EFAULT
    );

    // vCPU 1's runstate area, registered before it first runs: offline until it is up.
    let area = (&raw const RUNSTATE1) as u64;
    check_eq!(
        "register_runstate_area_vcpu1",
        vcpu_op(VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, 1, (&raw const area) as u64),
        0
    );
    check_eq!(
        "runstate_vcpu1_offline_before_up",
        RUNSTATE1[0].load(Ordering::SeqCst) & 0xffff_ffff,
        RUNSTATE_OFFLINE
    );
    for id in 1..NR {
        let c = context(si, id);
        check_eq!("initialise", vcpu_op(VCPUOP_INITIALISE, u64::from(id), c), 0);
        check_eq!(
            "initialise_twice",
            vcpu_op(VCPUOP_INITIALISE, u64::from(id), c),
            -EEXIST
        );
        check_eq!("up", vcpu_op(VCPUOP_UP, u64::from(id), 0), 0);
        check_eq!("is_up_after_up", vcpu_op(VCPUOP_IS_UP, u64::from(id), 0), 1);
    }
    let others = NR - 1;
    if wait_until("all_arrived", || ARRIVED.load(Ordering::SeqCst) == others) {
        check!("all_arrived", true);
    }
    for id in 1..NR {
        check_eq!(
            "entry_argument",
            SEEN_ID[id as usize].load(Ordering::SeqCst),
            u64::from(id)
        );
    }
    // IPIs: one to each vCPU, each answers with one to vCPU 0.
    let before = UPCALLS.get();
    for id in 1..NR {
        let i = id as usize;
        if wait_until("ap_port_bound", || AP_PORT[i].load(Ordering::SeqCst) != 0) {
            check_eq!("ipi_send", send(AP_PORT[i].load(Ordering::SeqCst)), 0);
        }
    }
    if wait_until("all_pongs", || PONGS.load(Ordering::SeqCst) == others) {
        check!("all_pongs", true);
    }
    check!(
        "ipi_upcall_on_vcpu0",
        wait_until("ipi_upcall_on_vcpu0", || UPCALLS.get() > before)
    );
    value!("pongs", "{}", PONGS.load(Ordering::SeqCst));
    remote_tlb_flush(si);

    // The vCPUs that went down report so.
    let downs = if NR == 4 { 1..3 } else { 1..NR };
    for id in downs {
        let ok = wait_until("went_down", || vcpu_op(VCPUOP_IS_UP, u64::from(id), 0) == 0);
        check!("went_down", ok, "vcpu {}", id);
    }
    if NR == 4 {
        check_eq!("still_up_vcpu3", vcpu_op(VCPUOP_IS_UP, 3, 0), 1);
    }
    runstate_down_up();
}

/// vCPU 1 went down: its runstate area must say RUNSTATE_offline with the time it ran
/// accounted; after VCPUOP_up it says running, with time accounted to offline.
fn runstate_down_up() {
    let state = || RUNSTATE1[0].load(Ordering::SeqCst) & 0xffff_ffff;
    let offline = wait_until("runstate_vcpu1_offline", || state() == RUNSTATE_OFFLINE);
    check!("runstate_vcpu1_offline", offline, "state {}", state());
    let ran = RUNSTATE1[2].load(Ordering::SeqCst);
    check!("runstate_vcpu1_running_time_accounted", ran > 0 && ran != u64::MAX, "time[running] {}", ran);
    check_eq!("up_again_vcpu1", vcpu_op(VCPUOP_UP, 1, 0), 0);
    let running = wait_until("runstate_vcpu1_running_again", || state() == RUNSTATE_RUNNING);
    check!("runstate_vcpu1_running_again", running, "state {}", state());
    let off = RUNSTATE1[5].load(Ordering::SeqCst);
    check!("runstate_vcpu1_offline_time_accounted", off > 0 && off != u64::MAX, "time[offline] {}", off);
    value!("runstate_vcpu1_offline_ns", "{}", off);
}
