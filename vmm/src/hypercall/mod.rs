//! Hypercall dispatch: a table from hypercall number to handler, typed arguments, a context
//! giving handlers checked access to guest-virtual memory, and the PV handlers themselves (one
//! module per family).
//!
//! # Run-loop contract
//!
//! On [`crate::vcpu::VcpuExit::Syscall`] from guest kernel mode the run loop does:
//!
//! ```text
//! let args = HypercallArgs::from_regs(&regs);
//! let (ret, replaced, cs) = {
//!     let mut ctx = vcpu.hypercall_ctx(&mut regs, &shared);
//!     let ret = pv_hypercalls().dispatch(&mut ctx, &args);
//!     (ret, ctx.regs_replaced, ctx.return_cs)
//! };
//! if !replaced { regs.rax = ret as u64; }
//! service backends; if shared.shutdown_reason().is_some() { stop }
//! deliver a pending, unmasked event upcall (trap::bounce_event_callback), then
//! vcpu.return_to_guest(&regs, cs)?;
//! ```
//!
//! * `regs_replaced == false` (nearly every hypercall): the handler's return value goes in
//!   `rax`; every other register is as the guest left it (`rip` = after the `syscall`).
//! * `regs_replaced == true`: the handler rewrote the registers itself and `ret` must be
//!   ignored. Used by `iret` (the whole frame, `rax` included, comes from the guest stack) and
//!   by hypercall *continuations*: a long-running call (`multicall`, `set_trap_table`) stops
//!   after a batch, sets `rip` back onto the `syscall` instruction and updates its argument
//!   registers so the guest re-issues it (Xen's `hypercall_create_continuation`); the loop
//!   gets a chance to see shutdowns and kicks in between.
//! * `return_cs` is the code segment to return with: [`GuestCs::Long64`] unless a handler
//!   that replaced the registers chose otherwise (`iret` to a `FLAT_RING3_CS32` frame). For
//!   a compat `syscall` whose registers were not replaced, return with `Compat32`.
//! * Exceptions: [`crate::trap::handle_exception`] (its own contract is in `trap`).
//! * A handler that crashes the domain (`DomainShared::crash`) sets the shutdown reason; the
//!   loop must check [`DomainShared::shutdown_reason`] after every hypercall and exception.
//! * Events: handlers raising events for their own vCPU (`DomainEvents::apply` with
//!   `from = Some(caller)`) do not kick it: the loop checks for a deliverable upcall before
//!   every return to the guest, as Xen does.
//!
//! Handlers return Xen's convention: `>= 0` success, `-errno` (Xen errno values) on failure.
//! They touch guest memory only through the context (`-EFAULT` on any failure).

pub mod console;
pub mod cpu;
pub mod event;
pub mod grant;
pub mod memory;
pub mod mmu;
pub mod multicall;
pub mod pv;
pub mod sched;
pub mod version;

#[cfg(test)]
pub(crate) mod handler_tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use thiserror::Error;
use tracing::info;
use vm_memory::ByteValued;
use xen_abi::arch::Pod;
use xen_abi::hypercall as nr;
use xen_abi::pv_vcpu::PvVcpuState;

use crate::domain::DomainShared;
use crate::memory::{GuestAccessError, GuestRam, GuestVirt};
use crate::vcpu::{ExitStats, GuestCs, GuestRegs};

/// Xen `EFAULT` (positive; handlers return `-EFAULT`).
pub const EFAULT: i64 = xen_abi::errno::EFAULT as i64;
/// Xen `EINVAL` (positive).
pub const EINVAL: i64 = xen_abi::errno::EINVAL as i64;
/// Xen `ENOSYS` (positive).
pub const ENOSYS: i64 = xen_abi::errno::ENOSYS as i64;

/// `-errno` for a Xen errno value.
pub const fn err(e: u32) -> i64 {
    -(e as i64)
}

/// Hypercall numbers handled individually by the table (Xen's are all below 64).
pub const NR_HYPERCALLS: usize = 64;

/// A hypercall's number and arguments as the 64-bit PV ABI passes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HypercallArgs {
    /// Hypercall number (`rax`).
    pub nr: u64,
    /// Arguments: `rdi, rsi, rdx, r10, r8`.
    // xen: public/arch-x86/xen-x86_64.h, hypercall argument registers
    pub a: [u64; 5],
}

impl HypercallArgs {
    /// Take the number and arguments from the registers at a `syscall` exit.
    pub fn from_regs(r: &GuestRegs) -> Self {
        Self {
            nr: r.rax,
            a: [r.rdi, r.rsi, r.rdx, r.r10, r.r8],
        }
    }
}

/// What a handler gets besides its arguments. `D` is the domain-wide state handlers share
/// (event channels, console, ...), defined by the domain code; it is shared by all vCPUs, so
/// it uses interior mutability.
#[derive(Debug)]
pub struct HypercallCtx<'a, D = ()> {
    /// The calling vCPU.
    pub vcpu_id: u32,
    /// Domain-wide state.
    pub domain: &'a D,
    /// The guest's registers at the call (handlers like `iret` change more than `rax`).
    pub regs: &'a mut GuestRegs,
    /// The calling vCPU's PV state.
    pub pv: &'a mut PvVcpuState,
    /// Set by a handler that rewrote `regs` itself (`iret`, continuations): the run loop
    /// must then not store the return value in `rax`.
    pub regs_replaced: bool,
    /// Code segment to return to the guest with.
    pub return_cs: GuestCs,
    /// Inside a `multicall` (nested multicalls and continuations are refused).
    pub in_multicall: bool,
    /// Set by a handler that switched the base pointer or must flush the TLB: the run loop
    /// reloads CR3 from `pv.current_cr3()` with [`crate::vcpu::Vcpu::flush_tlb`].
    pub reload_cr3: bool,
    /// Bytes before the return address where the call restarts (continuations): 2 for a
    /// `syscall`, the length of the exit sequence for kxen's hypercall page
    /// ([`crate::builder::HYPERCALL_EXIT_LEN`]).
    pub restart_len: u64,
    ram: &'a GuestRam,
    mem: GuestVirt<'a>,
}

impl<'a, D> HypercallCtx<'a, D> {
    /// A context for vCPU `vcpu_id` whose current page tables are at `cr3`.
    pub fn new(
        vcpu_id: u32,
        ram: &'a GuestRam,
        cr3: u64,
        regs: &'a mut GuestRegs,
        pv: &'a mut PvVcpuState,
        domain: &'a D,
    ) -> Self {
        Self {
            vcpu_id,
            domain,
            regs,
            pv,
            regs_replaced: false,
            return_cs: GuestCs::Long64,
            in_multicall: false,
            reload_cr3: false,
            restart_len: 2,
            ram,
            mem: GuestVirt::new(ram, cr3),
        }
    }

    /// Guest-virtual memory through the caller's current page tables.
    pub fn guest(&self) -> &GuestVirt<'a> {
        &self.mem
    }

    /// Guest RAM by physical address (shared_info and other frames kxen owns a view of).
    pub fn ram(&self) -> &'a GuestRam {
        self.ram
    }

    /// Copy from guest-virtual memory; `Err(-EFAULT)` on any failure.
    pub fn copy_from_guest(&self, va: u64, buf: &mut [u8]) -> Result<(), i64> {
        self.mem.copy_from_guest(va, buf).map_err(fault)
    }

    /// Copy to guest-virtual memory; `Err(-EFAULT)` on any failure.
    pub fn copy_to_guest(&self, va: u64, buf: &[u8]) -> Result<(), i64> {
        self.mem.copy_to_guest(va, buf).map_err(fault)
    }

    /// Read a plain-data object; `Err(-EFAULT)` on any failure.
    pub fn read_obj<T: ByteValued>(&self, va: u64) -> Result<T, i64> {
        self.mem.read_obj(va).map_err(fault)
    }

    /// Write a plain-data object; `Err(-EFAULT)` on any failure.
    pub fn write_obj<T: ByteValued>(&self, va: u64, v: &T) -> Result<(), i64> {
        self.mem.write_obj(va, v).map_err(fault)
    }

    /// Read a `xen_abi` layout; `Err(-EFAULT)` on any failure.
    pub fn read_pod<T: Pod>(&self, va: u64) -> Result<T, i64> {
        let mut v = T::zeroed();
        self.copy_from_guest(va, v.as_bytes_mut())?;
        Ok(v)
    }

    /// Write a `xen_abi` layout; `Err(-EFAULT)` on any failure.
    pub fn write_pod<T: Pod>(&self, va: u64, v: &T) -> Result<(), i64> {
        self.copy_to_guest(va, v.as_bytes())
    }

    /// Turn the current call into a continuation: the guest re-executes the `syscall`
    /// (2 bytes before the return address; for kxen's hypercall page, its exit sequence,
    /// [`HypercallCtx::restart_len`]) with `rax = nr` and the given argument registers
    /// (`rdi, rsi, rdx, r10, r8`), as Xen's `hypercall_create_continuation` does for 64-bit PV.
    pub fn continuation(&mut self, nr: u64, args: [u64; 5]) {
        // xen: arch/x86/hypercall.c, hypercall_create_continuation (regs->rip -= 2)
        self.regs.rip = self.regs.rip.wrapping_sub(self.restart_len);
        self.regs.rax = nr;
        self.regs.rdi = args[0];
        self.regs.rsi = args[1];
        self.regs.rdx = args[2];
        self.regs.r10 = args[3];
        self.regs.r8 = args[4];
        self.regs_replaced = true;
    }
}

fn fault(e: GuestAccessError) -> i64 {
    tracing::debug!("guest access: {e}");
    -EFAULT
}

/// A hypercall handler: returns the value for the guest's `rax`.
pub type HypercallFn<D = ()> = fn(&mut HypercallCtx<'_, D>, &HypercallArgs) -> i64;

/// Errors registering handlers.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HypercallError {
    /// The number is beyond the table.
    #[error("hypercall number {0} out of range (0..{NR_HYPERCALLS})")]
    OutOfRange(u64),
}

/// The dispatch table, for handlers over domain state `D`.
#[derive(Debug)]
pub struct HypercallTable<D = ()> {
    handlers: [Option<(&'static str, HypercallFn<D>)>; NR_HYPERCALLS],
    logged: [AtomicBool; NR_HYPERCALLS],
    logged_high: AtomicBool,
    stats: Option<Arc<ExitStats>>,
}

impl<D> Default for HypercallTable<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> HypercallTable<D> {
    /// An empty table: every hypercall returns `-ENOSYS`.
    pub fn new() -> Self {
        Self {
            handlers: [None; NR_HYPERCALLS],
            logged: std::array::from_fn(|_| AtomicBool::new(false)),
            logged_high: AtomicBool::new(false),
            stats: None,
        }
    }

    /// Count dispatched hypercalls in `stats`.
    pub fn with_stats(mut self, stats: Arc<ExitStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Install `f` as the handler for `nr`; returns the previous one's name.
    pub fn register(
        &mut self,
        nr: u64,
        name: &'static str,
        f: HypercallFn<D>,
    ) -> Result<Option<&'static str>, HypercallError> {
        let slot = usize::try_from(nr)
            .ok()
            .and_then(|i| self.handlers.get_mut(i))
            .ok_or(HypercallError::OutOfRange(nr))?;
        Ok(slot.replace((name, f)).map(|(n, _)| n))
    }

    /// The name a handler was registered with.
    pub fn name(&self, nr: u64) -> Option<&'static str> {
        self.lookup(nr).map(|(n, _)| n)
    }

    fn lookup(&self, nr: u64) -> Option<(&'static str, HypercallFn<D>)> {
        usize::try_from(nr)
            .ok()
            .and_then(|i| self.handlers.get(i))
            .copied()
            .flatten()
    }

    /// Run the handler for `args.nr`; unknown numbers give `-ENOSYS` (logged once each).
    pub fn dispatch(&self, ctx: &mut HypercallCtx<'_, D>, args: &HypercallArgs) -> i64 {
        if let Some(s) = &self.stats {
            s.count_hypercall(args.nr);
        }
        match self.lookup(args.nr) {
            Some((_, f)) => f(ctx, args),
            None => {
                let flag = usize::try_from(args.nr)
                    .ok()
                    .and_then(|i| self.logged.get(i))
                    .unwrap_or(&self.logged_high);
                if !flag.swap(true, Ordering::Relaxed) {
                    info!(nr = args.nr, vcpu = ctx.vcpu_id, "unimplemented hypercall");
                }
                -ENOSYS
            }
        }
    }
}

/// A fresh table with every PV handler kxen implements registered (for a table with
/// [`HypercallTable::with_stats`]); [`pv_hypercalls`] is the shared one.
pub fn pv_hypercall_table() -> HypercallTable<DomainShared> {
    let mut t = HypercallTable::new();
    let handlers: [(u64, HypercallFn<DomainShared>); 29] = [
        (nr::MMU_UPDATE, mmu::mmu_update),
        (nr::UPDATE_VA_MAPPING, mmu::update_va_mapping),
        (
            nr::UPDATE_VA_MAPPING_OTHERDOMAIN,
            mmu::update_va_mapping_otherdomain,
        ),
        (nr::MMUEXT_OP, mmu::mmuext_op),
        (nr::SET_TRAP_TABLE, pv::set_trap_table),
        (nr::STACK_SWITCH, pv::stack_switch),
        (nr::SET_CALLBACKS, pv::set_callbacks),
        (nr::SCHED_OP_COMPAT, sched::sched_op_compat),
        (nr::MEMORY_OP, memory::memory_op),
        (nr::MULTICALL, multicall::multicall),
        (nr::XEN_VERSION, version::xen_version),
        (nr::CONSOLE_IO, console::console_io),
        (nr::VM_ASSIST, pv::vm_assist),
        (nr::IRET, pv::iret),
        (nr::SCHED_OP, sched::sched_op),
        (nr::SET_TIMER_OP, sched::set_timer_op),
        (nr::CALLBACK_OP, pv::callback_op),
        (nr::EVENT_CHANNEL_OP, event::event_channel_op),
        (nr::EVENT_CHANNEL_OP_COMPAT, event::event_channel_op_compat),
        (nr::VCPU_OP, event::vcpu_op),
        (nr::SET_GDT, cpu::set_gdt),
        (nr::FPU_TASKSWITCH, cpu::fpu_taskswitch),
        (nr::SET_DEBUGREG, cpu::set_debugreg),
        (nr::GET_DEBUGREG, cpu::get_debugreg),
        (nr::UPDATE_DESCRIPTOR, cpu::update_descriptor),
        (nr::PHYSDEV_OP_COMPAT, cpu::physdev_op_compat),
        (nr::SET_SEGMENT_BASE, cpu::set_segment_base),
        (nr::PHYSDEV_OP, cpu::physdev_op),
        (nr::GRANT_TABLE_OP, grant::grant_table_op),
    ];
    for (n, f) in handlers {
        let name = nr::name(n).unwrap_or("?");
        // Every number above is below NR_HYPERCALLS.
        let _ = t.register(n, name, f);
    }
    t
}

/// The shared PV hypercall table (built once).
pub fn pv_hypercalls() -> &'static HypercallTable<DomainShared> {
    static TABLE: OnceLock<HypercallTable<DomainShared>> = OnceLock::new();
    TABLE.get_or_init(pv_hypercall_table)
}

/// Truncate a hypercall argument to a C `unsigned int` parameter, as the C prototype does.
pub(crate) const fn uint(v: u64) -> u32 {
    v as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::PAGE_SIZE;
    use vm_memory::{Bytes, GuestAddress};

    fn sum(_: &mut HypercallCtx<'_>, a: &HypercallArgs) -> i64 {
        a.a.iter().fold(0i64, |s, v| s.wrapping_add(*v as i64))
    }

    /// Reads a u64 at a0, writes it + 1 at a1.
    fn bump(ctx: &mut HypercallCtx<'_>, a: &HypercallArgs) -> i64 {
        let v: u64 = match ctx.read_obj(a.a[0]) {
            Ok(v) => v,
            Err(e) => return e,
        };
        match ctx.write_obj(a.a[1], &(v + 1)) {
            Ok(()) => 0,
            Err(e) => e,
        }
    }

    fn ram_with_one_page() -> GuestRam {
        // L4 pfn 1 -> L3 pfn 2 -> L2 pfn 3 -> L1 pfn 4 -> data pfn 5 at VA 0 .. (slot 0).
        let ram = GuestRam::new(8).unwrap();
        for (pfn, next) in [(1u64, 2u64), (2, 3), (3, 4), (4, 5)] {
            ram.mem()
                .write_obj((next * PAGE_SIZE) | 7, GuestAddress(pfn * PAGE_SIZE))
                .unwrap();
        }
        ram
    }

    #[test]
    fn args_come_from_the_abi_registers() {
        let r = GuestRegs {
            rax: 17,
            rdi: 1,
            rsi: 2,
            rdx: 3,
            r10: 4,
            r8: 5,
            rcx: 99,
            r9: 98,
            ..Default::default()
        };
        assert_eq!(
            HypercallArgs::from_regs(&r),
            HypercallArgs {
                nr: 17,
                a: [1, 2, 3, 4, 5]
            }
        );
    }

    #[test]
    fn dispatch_runs_registered_handlers_and_enosys_otherwise() {
        let stats = Arc::new(ExitStats::default());
        let mut t = HypercallTable::new().with_stats(stats.clone());
        assert_eq!(t.register(17, "sum", sum), Ok(None));
        assert_eq!(t.register(17, "sum", sum), Ok(Some("sum")));
        assert_eq!(
            t.register(64, "x", sum),
            Err(HypercallError::OutOfRange(64))
        );
        assert_eq!(t.name(17), Some("sum"));
        let ram = ram_with_one_page();
        let mut regs = GuestRegs::default();
        let mut pv = PvVcpuState::default();
        let mut ctx = HypercallCtx::new(0, &ram, PAGE_SIZE, &mut regs, &mut pv, &());
        let args = HypercallArgs {
            nr: 17,
            a: [1, 2, 3, 4, 5],
        };
        assert_eq!(t.dispatch(&mut ctx, &args), 15);
        for nr in [0, 63, 64, u64::MAX] {
            let args = HypercallArgs { nr, a: [0; 5] };
            assert_eq!(t.dispatch(&mut ctx, &args), -ENOSYS);
            assert_eq!(t.dispatch(&mut ctx, &args), -ENOSYS);
        }
        assert_eq!(stats.hypercalls(17), 1);
        assert_eq!(stats.hypercalls(0), 2);
        assert_eq!(stats.hypercalls(64), 4);
    }

    #[test]
    fn handlers_reach_shared_domain_state() {
        use std::sync::atomic::AtomicU64;
        struct Dom {
            calls: AtomicU64,
        }
        fn count(ctx: &mut HypercallCtx<'_, Dom>, a: &HypercallArgs) -> i64 {
            ctx.domain.calls.fetch_add(a.a[0], Ordering::Relaxed) as i64
        }
        let mut t: HypercallTable<Dom> = HypercallTable::new();
        t.register(3, "count", count).unwrap();
        let dom = Dom {
            calls: AtomicU64::new(10),
        };
        let ram = ram_with_one_page();
        let mut regs = GuestRegs::default();
        let mut pv = PvVcpuState::default();
        let mut ctx = HypercallCtx::new(1, &ram, PAGE_SIZE, &mut regs, &mut pv, &dom);
        let args = HypercallArgs {
            nr: 3,
            a: [5, 0, 0, 0, 0],
        };
        assert_eq!(t.dispatch(&mut ctx, &args), 10);
        assert_eq!(t.dispatch(&mut ctx, &args), 15);
        assert_eq!(dom.calls.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn handlers_get_efault_for_bad_pointers() {
        let mut t = HypercallTable::new();
        t.register(1, "bump", bump).unwrap();
        let ram = ram_with_one_page();
        ram.mem()
            .write_obj(41u64, GuestAddress(5 * PAGE_SIZE + 16))
            .unwrap();
        let mut regs = GuestRegs::default();
        let mut pv = PvVcpuState::default();
        let mut ctx = HypercallCtx::new(0, &ram, PAGE_SIZE, &mut regs, &mut pv, &());
        let call = |ctx: &mut HypercallCtx<'_>, a0, a1| {
            t.dispatch(
                ctx,
                &HypercallArgs {
                    nr: 1,
                    a: [a0, a1, 0, 0, 0],
                },
            )
        };
        assert_eq!(call(&mut ctx, 16, 24), 0);
        assert_eq!(
            ram.mem()
                .read_obj::<u64>(GuestAddress(5 * PAGE_SIZE + 24))
                .unwrap(),
            42
        );
        for bad in [
            0x1000,                // unmapped
            0x0000_8000_0000_0000, // non-canonical
            0xffff_8080_0000_0000, // Xen range
            4090,                  // crosses into an unmapped page
        ] {
            assert_eq!(call(&mut ctx, bad, 24), -EFAULT, "read {bad:#x}");
            assert_eq!(call(&mut ctx, 16, bad), -EFAULT, "write {bad:#x}");
        }
    }
}
