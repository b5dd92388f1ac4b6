//! Unit tests of the PV handlers over a small fake guest (no KVM needed).

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use xen_abi::arch::Pod;
use xen_abi::hypercall as nr;
use xen_abi::negotiate::LaunchMode;
use xen_abi::pv_vcpu::PvVcpuState;
use xen_abi::sched::ShutdownReason;

use super::*;
use crate::domain::DomainShared;
use crate::memory::{GuestRam, PAGE_SIZE};

/// Guest RAM pages.
pub const PAGES: u64 = 64;
/// First mapped VA: pages `VA .. VA + 32 pages` map pfns 16..48 read-write.
pub const VA: u64 = 0x10000;
/// One past the last RW page.
pub const VA_END: u64 = VA + 32 * PAGE_SIZE;
/// A read-only page (pfn 48).
pub const RO: u64 = VA_END;
/// Not mapped.
pub const UNMAPPED: u64 = 0x4000_0000;
/// shared_info frame (not mapped in the guest page tables; reached by GPA).
pub const SHINFO_MFN: u64 = 60;

/// Console output captured by the test domain.
#[derive(Clone, Default)]
pub struct Out(pub Arc<Mutex<Vec<u8>>>);
impl Write for Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A fake guest: RAM with page tables at pfn 1 (L4) .. 4 (L1).
pub struct Guest {
    pub ram: GuestRam,
    pub pv: PvVcpuState,
    pub regs: GuestRegs,
    pub dom: DomainShared,
    pub out: Out,
}

impl Guest {
    pub fn new(mode: LaunchMode) -> Self {
        let ram = GuestRam::new(PAGES).unwrap();
        let w = |gpa: u64, v: u64| ram.mem().write_obj(v, GuestAddress(gpa)).unwrap();
        w(PAGE_SIZE, (2 * PAGE_SIZE) | 7);
        w(2 * PAGE_SIZE, (3 * PAGE_SIZE) | 7);
        w(3 * PAGE_SIZE, (4 * PAGE_SIZE) | 7);
        for i in 0..32u64 {
            w(4 * PAGE_SIZE + (16 + i) * 8, ((16 + i) * PAGE_SIZE) | 7);
        }
        w(4 * PAGE_SIZE + 48 * 8, (48 * PAGE_SIZE) | 5); // RO
        let out = Out::default();
        let dom = DomainShared::new(
            "t".into(),
            mode,
            0x1234,
            "console=hvc0".into(),
            PAGES,
            SHINFO_MFN,
            Box::new(out.clone()),
        );
        let mut g = Guest {
            ram,
            pv: PvVcpuState::default(),
            regs: GuestRegs {
                rip: 0x1002,
                rsp: VA_END - 0x100,
                rflags: 0x202,
                ..Default::default()
            },
            dom,
            out,
        };
        g.set_mask(1);
        g
    }

    pub fn call(&mut self, n: u64, a: [u64; 5]) -> i64 {
        self.call_full(n, a).0
    }

    /// Returns (ret, regs_replaced).
    pub fn call_full(&mut self, n: u64, a: [u64; 5]) -> (i64, bool) {
        let mut ctx = HypercallCtx::new(
            0,
            &self.ram,
            PAGE_SIZE,
            &mut self.regs,
            &mut self.pv,
            &self.dom,
        );
        let r = pv_hypercalls().dispatch(&mut ctx, &HypercallArgs { nr: n, a });
        (r, ctx.regs_replaced)
    }

    pub fn va_to_gpa(va: u64) -> u64 {
        assert!((VA..VA_END + PAGE_SIZE).contains(&va));
        va - VA + 16 * PAGE_SIZE
    }
    pub fn put<T: Pod>(&self, va: u64, v: &T) {
        self.ram
            .mem()
            .write_slice(v.as_bytes(), GuestAddress(Self::va_to_gpa(va)))
            .unwrap();
    }
    pub fn get<T: Pod>(&self, va: u64) -> T {
        let mut v = T::zeroed();
        self.ram
            .mem()
            .read_slice(v.as_bytes_mut(), GuestAddress(Self::va_to_gpa(va)))
            .unwrap();
        v
    }
    pub fn mask(&self) -> u8 {
        self.dom.upcall_mask(&self.ram, 0).unwrap()
    }
    pub fn set_mask(&mut self, m: u8) {
        assert!(self.dom.set_upcall_mask(&self.ram, 0, m));
    }
    pub fn console(&self) -> Vec<u8> {
        self.out.0.lock().unwrap().clone()
    }
}

mod version {
    use super::*;
    use xen_abi::errno::{ENOBUFS, ENODATA, EPERM};
    use xen_abi::version::*;

    const BAD: [u64; 4] = [UNMAPPED, 0x8000_0000_0000_0000, 0xffff_8080_0000_0000, RO];

    #[test]
    fn version_word_and_strings_are_xen_4_19_kxen() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::XEN_VERSION, [0, 0, 0, 0, 0]), 0x0004_0013);
        assert_eq!(g.call(nr::XEN_VERSION, [1, VA, 0, 0, 0]), 0);
        let ev: [u8; 16] = g.get(VA);
        assert_eq!(&ev[..8], b".0-kxen\0");
        assert_eq!(g.call(nr::XEN_VERSION, [3, VA, 0, 0, 0]), 0);
        let caps: [u8; 1024] = g.get(VA);
        assert_eq!(&caps[..16], b"xen-3.0-x86_64 \0");
        assert_eq!(g.call(nr::XEN_VERSION, [5, VA, 0, 0, 0]), 0);
        assert_eq!(g.get::<u64>(VA), 0xffff_8000_0000_0000);
        // the upper half of cmd is ignored (int cmd)
        assert_eq!(g.call(nr::XEN_VERSION, [1 << 32, 0, 0, 0, 0]), 0x0004_0013);
        for cmd in [15u64, 16, 1000] {
            assert_eq!(g.call(nr::XEN_VERSION, [cmd, VA, 0, 0, 0]), -ENOSYS);
        }
    }

    #[test]
    fn every_copying_subop_faults_on_bad_pointers() {
        let mut g = Guest::new(LaunchMode::Privileged);
        for cmd in [1u64, 2, 3, 4, 5, 6, 8, 9] {
            for bad in BAD {
                assert_eq!(
                    g.call(nr::XEN_VERSION, [cmd, bad, 0, 0, 0]),
                    -EFAULT,
                    "cmd {cmd} ptr {bad:#x}"
                );
            }
        }
        // read-only page unchanged
        assert_eq!(g.get::<u64>(RO), 0);
    }

    #[test]
    fn get_features_submap0_only() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.put(
            VA,
            &XenFeatureInfo {
                submap_idx: 0,
                submap: 0,
            },
        );
        assert_eq!(g.call(nr::XEN_VERSION, [6, VA, 0, 0, 0]), 0);
        assert_eq!(g.get::<XenFeatureInfo>(VA).submap, 0x1234);
        g.put(
            VA,
            &XenFeatureInfo {
                submap_idx: 1,
                submap: 7,
            },
        );
        assert_eq!(g.call(nr::XEN_VERSION, [6, VA, 0, 0, 0]), -EINVAL);
        assert_eq!(g.get::<XenFeatureInfo>(VA).submap, 7);
    }

    #[test]
    fn pagesize_needs_null_argument() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::XEN_VERSION, [7, 0, 0, 0, 0]), 4096);
        assert_eq!(g.call(nr::XEN_VERSION, [7, 0x1000, 0, 0, 0]), -EINVAL);
    }

    #[test]
    fn commandline_is_denied_to_unprivileged_domains() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.put(VA, &[0xaau8; 16]);
        assert_eq!(g.call(nr::XEN_VERSION, [9, VA, 0, 0, 0]), 0);
        let b: [u8; 16] = g.get(VA);
        assert_eq!(&b[..9], b"<denied>\0");
        assert_eq!(b[9], 0xaa, "only the string and its NUL are written");
        for cmd in [10u64, 14] {
            assert_eq!(g.call(nr::XEN_VERSION, [cmd, 0, 0, 0, 0]), -(EPERM as i64));
        }
        let mut p = Guest::new(LaunchMode::Privileged);
        assert_eq!(p.call(nr::XEN_VERSION, [9, VA, 0, 0, 0]), 0);
        let b: [u8; 16] = p.get(VA);
        assert_eq!(&b[..13], b"console=hvc0\0");
    }

    #[test]
    fn varbuf_ops_return_size_enobufs_and_data() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        // extraversion2: NULL -> length
        assert_eq!(g.call(nr::XEN_VERSION, [11, 0, 0, 0, 0]), 7);
        g.put(VA, &3u32);
        assert_eq!(
            g.call(nr::XEN_VERSION, [11, VA, 0, 0, 0]),
            -(ENOBUFS as i64)
        );
        g.put(VA, &64u32);
        assert_eq!(g.call(nr::XEN_VERSION, [11, VA, 0, 0, 0]), 7);
        let b: [u8; 11] = g.get(VA);
        assert_eq!(&b[4..], b".0-kxen");
        assert_eq!(g.call(nr::XEN_VERSION, [12, 0, 0, 0, 0]), 15);
        assert_eq!(g.call(nr::XEN_VERSION, [13, UNMAPPED, 0, 0, 0]), -EFAULT);
        let mut p = Guest::new(LaunchMode::Privileged);
        assert_eq!(p.call(nr::XEN_VERSION, [10, 0, 0, 0, 0]), -(ENODATA as i64));
        assert_eq!(p.call(nr::XEN_VERSION, [14, 0, 0, 0, 0]), 12);
    }
}

mod console {
    use super::*;

    #[test]
    fn write_outputs_bytes_in_chunks_and_returns_zero() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        let text: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut buf = [0u8; 300];
        buf.copy_from_slice(&text);
        g.put(VA + 10, &buf);
        assert_eq!(g.call(nr::CONSOLE_IO, [0, 300, VA + 10, 0, 0]), 0);
        assert_eq!(g.console(), text);
        // count is an unsigned int: the upper half is ignored
        assert_eq!(g.call(nr::CONSOLE_IO, [0, 1 << 32, VA, 0, 0]), 0);
        assert_eq!(g.console().len(), 300);
    }

    #[test]
    fn write_faults_on_any_bad_range_after_printing_good_chunks() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::CONSOLE_IO, [0, 16, UNMAPPED, 0, 0]), -EFAULT);
        assert_eq!(
            g.call(nr::CONSOLE_IO, [0, 16, VA_END + PAGE_SIZE - 8, 0, 0]),
            -EFAULT
        );
        assert!(g.console().is_empty());
        // 200 bytes ending past the RO page: the first chunk (127) prints, then -EFAULT.
        let start = VA_END + PAGE_SIZE - 150;
        assert_eq!(g.call(nr::CONSOLE_IO, [0, 200, start, 0, 0]), -EFAULT);
        assert_eq!(g.console().len(), 127);
        // a huge count over unmapped memory terminates at once
        assert_eq!(
            g.call(nr::CONSOLE_IO, [0, u32::MAX as u64, UNMAPPED, 0, 0]),
            -EFAULT
        );
    }

    #[test]
    fn huge_writes_continue_in_batches_until_the_mapping_ends() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        let rip = g.regs.rip;
        let mut args = [0, u32::MAX as u64, VA, 0, 0];
        let mut rounds = 0;
        let ret = loop {
            rounds += 1;
            let (ret, replaced) = g.call_full(nr::CONSOLE_IO, args);
            if !replaced {
                break ret;
            }
            // What the guest re-issues: rip back on the syscall, updated arguments.
            assert_eq!((g.regs.rip, g.regs.rax), (rip - 2, nr::CONSOLE_IO));
            args = [g.regs.rdi, g.regs.rsi, g.regs.rdx, g.regs.r10, g.regs.r8];
            g.regs.rip = rip;
        };
        assert_eq!(ret, -EFAULT);
        // 33 readable pages (32 RW + 1 RO), printed whole chunks only.
        let readable = 33 * PAGE_SIZE as usize;
        assert_eq!(g.console().len(), readable - readable % 127);
        assert_eq!(rounds, 9);
    }

    #[test]
    fn read_takes_pending_input_and_unknown_cmd_is_enosys() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.dom.console.lock().unwrap().input.extend(b"hello");
        assert_eq!(g.call(nr::CONSOLE_IO, [1, 3, VA, 0, 0]), 3);
        assert_eq!(&g.get::<[u8; 3]>(VA), b"hel");
        assert_eq!(g.call(nr::CONSOLE_IO, [1, 0x8000_0000, VA, 0, 0]), -7);
        assert_eq!(g.call(nr::CONSOLE_IO, [1, 100, UNMAPPED, 0, 0]), -EFAULT);
        assert_eq!(g.call(nr::CONSOLE_IO, [1, 100, VA, 0, 0]), 2);
        assert_eq!(g.call(nr::CONSOLE_IO, [1, 100, VA, 0, 0]), 0);
        assert_eq!(g.call(nr::CONSOLE_IO, [99, 0, 0, 0, 0]), -ENOSYS);
    }
}

mod sched {
    use super::*;
    use xen_abi::sched::*;

    #[test]
    fn shutdown_reasons_reach_the_domain_and_bad_pointer_faults() {
        for (reason, want) in [
            (SHUTDOWN_POWEROFF, ShutdownReason::Poweroff),
            (SHUTDOWN_REBOOT, ShutdownReason::Reboot),
            (SHUTDOWN_SUSPEND, ShutdownReason::Suspend),
            (SHUTDOWN_CRASH, ShutdownReason::Crash),
            (SHUTDOWN_WATCHDOG, ShutdownReason::Watchdog),
            (SHUTDOWN_SOFT_RESET, ShutdownReason::SoftReset),
            (77, ShutdownReason::Crash),
        ] {
            let mut g = Guest::new(LaunchMode::Unprivileged);
            assert_eq!(g.call(nr::SCHED_OP, [2, UNMAPPED, 0, 0, 0]), -EFAULT);
            assert_eq!(g.dom.shutdown_reason(), None);
            g.put(VA, &SchedShutdown { reason });
            assert_eq!(g.call(nr::SCHED_OP, [2, VA, 0, 0, 0]), 0);
            assert_eq!(g.dom.shutdown_reason(), Some(want), "reason {reason}");
        }
    }

    #[test]
    fn shutdown_code_overrides_a_later_shutdown_and_compat_takes_reason_in_arg() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.put(
            VA,
            &SchedShutdown {
                reason: SHUTDOWN_CRASH,
            },
        );
        assert_eq!(g.call(nr::SCHED_OP, [5, VA, 0, 0, 0]), 0);
        assert_eq!(g.dom.shutdown_reason(), None);
        assert_eq!(g.call(nr::SCHED_OP_COMPAT, [2, 0, 0, 0, 0]), 0);
        assert_eq!(g.dom.shutdown_reason(), Some(ShutdownReason::Crash));
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::SCHED_OP_COMPAT, [2, 1, 0, 0, 0]), 0);
        assert_eq!(g.dom.shutdown_reason(), Some(ShutdownReason::Reboot));
        assert_eq!(g.call(nr::SCHED_OP_COMPAT, [9, 1, 0, 0, 0]), -ENOSYS);
    }

    #[test]
    fn yield_block_watchdog_poll_unknown() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::SCHED_OP, [0, 0, 0, 0, 0]), 0);
        assert_eq!(g.mask(), 1);
        assert_eq!(g.call(nr::SCHED_OP, [1, 0, 0, 0, 0]), 0);
        assert_eq!(g.mask(), 0, "block enables events");
        g.put(VA, &SchedWatchdog { id: 0, timeout: 10 });
        assert_eq!(g.call(nr::SCHED_OP, [6, VA, 0, 0, 0]), 1);
        assert_eq!(g.call(nr::SCHED_OP, [6, VA, 0, 0, 0]), 2);
        assert_eq!(g.call(nr::SCHED_OP, [6, VA, 0, 0, 0]), -28);
        g.put(VA, &SchedWatchdog { id: 1, timeout: 0 });
        assert_eq!(g.call(nr::SCHED_OP, [6, VA, 0, 0, 0]), 0);
        assert_eq!(g.call(nr::SCHED_OP, [6, VA, 0, 0, 0]), -EINVAL, "freed");
        g.put(VA, &SchedWatchdog { id: 3, timeout: 0 });
        assert_eq!(g.call(nr::SCHED_OP, [6, VA, 0, 0, 0]), -EINVAL);
        assert_eq!(g.call(nr::SCHED_OP, [6, UNMAPPED, 0, 0, 0]), -EFAULT);
        assert_eq!(g.call(nr::SCHED_OP, [3, VA, 0, 0, 0]), -ENOSYS);
        assert_eq!(g.call(nr::SCHED_OP, [100, 0, 0, 0, 0]), -ENOSYS);
        assert_eq!(g.dom.shutdown_reason(), None);
    }
}

mod pv_state {
    use super::*;
    use xen_abi::callback::*;
    use xen_abi::trap::{IretContext, TrapInfo};

    fn ti(vector: u8, flags: u8, address: u64) -> TrapInfo {
        TrapInfo {
            vector,
            flags,
            cs: 0xe030,
            _pad: 0,
            address,
        }
    }

    #[test]
    fn set_trap_table_installs_until_terminator_and_null_clears() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.put(
            VA,
            &[
                ti(14, 4, 0xffff_ffff_8000_1000),
                ti(0x80, 3, 0x2000),
                ti(6, 0, 0),
            ],
        );
        assert_eq!(g.call(nr::SET_TRAP_TABLE, [VA, 0, 0, 0, 0]), 0);
        assert_eq!(g.pv.traps[14].address, 0xffff_ffff_8000_1000);
        assert_eq!(g.pv.traps[14].cs, 0xe033, "RPL forced to 3");
        assert!(g.pv.traps[14].masks_events());
        assert_eq!(g.pv.traps[0x80].dpl(), 3);
        assert!(!g.pv.traps[6].is_set());
        assert_eq!(g.call(nr::SET_TRAP_TABLE, [0, 0, 0, 0, 0]), 0);
        assert!(g.pv.traps.iter().all(|t| !t.is_set()));
    }

    #[test]
    fn set_trap_table_refuses_non_canonical_and_faults() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.put(
            VA,
            &[
                ti(3, 0, 0x1000),
                ti(6, 0, 0x8000_0000_0000_1000),
                ti(0, 0, 0),
            ],
        );
        assert_eq!(g.call(nr::SET_TRAP_TABLE, [VA, 0, 0, 0, 0]), -EINVAL);
        assert_eq!(g.pv.traps[3].address, 0x1000, "entries before stay");
        assert!(!g.pv.traps[6].is_set());
        assert_eq!(g.call(nr::SET_TRAP_TABLE, [UNMAPPED, 0, 0, 0, 0]), -EFAULT);
        // runs off the end of the mapping
        g.put(RO - 16, &ti(4, 0, 0x3000));
        assert_eq!(
            g.call(nr::SET_TRAP_TABLE, [RO - 16, 0, 0, 0, 0]),
            0,
            "RO page reads as 0"
        );
    }

    #[test]
    fn set_trap_table_long_tables_continue() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        for i in 0..600u64 {
            g.put(VA + i * 16, &ti(i as u8, 0, 0x1000 + i));
        }
        let rip = g.regs.rip;
        let (ret, replaced) = g.call_full(nr::SET_TRAP_TABLE, [VA, 0, 0, 0, 0]);
        assert_eq!(ret, 0);
        assert!(replaced);
        assert_eq!(g.regs.rip, rip - 2);
        assert_eq!(g.regs.rax, nr::SET_TRAP_TABLE);
        assert_eq!(g.regs.rdi, VA + 512 * 16);
    }

    #[test]
    fn callbacks_register_unregister_and_set_callbacks() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        let reg = |ty, flags, address| CallbackRegister {
            ty,
            flags,
            _pad: 0,
            address,
        };
        g.put(
            VA,
            &reg(CALLBACKTYPE_SYSCALL, CALLBACKF_MASK_EVENTS, 0x5000),
        );
        assert_eq!(g.call(nr::CALLBACK_OP, [0, VA, 0, 0, 0]), 0);
        assert_eq!(g.pv.callbacks[2].address, 0x5000);
        assert_eq!(g.pv.callbacks[2].flags, 1);
        g.put(VA, &reg(CALLBACKTYPE_EVENT, 0, 0x8000_0000_0000_0000));
        assert_eq!(g.call(nr::CALLBACK_OP, [0, VA, 0, 0, 0]), -EINVAL);
        g.put(VA, &reg(6, 0, 0x1000));
        assert_eq!(g.call(nr::CALLBACK_OP, [0, VA, 0, 0, 0]), -ENOSYS);
        g.put(VA, &reg(CALLBACKTYPE_NMI, 0, 0x7000));
        assert_eq!(g.call(nr::CALLBACK_OP, [0, VA, 0, 0, 0]), 0);
        assert_eq!(g.pv.traps[2].address, 0x7000);
        g.put(
            VA,
            &CallbackUnregister {
                ty: CALLBACKTYPE_NMI,
                _unused: 0,
            },
        );
        assert_eq!(g.call(nr::CALLBACK_OP, [1, VA, 0, 0, 0]), 0);
        assert!(!g.pv.traps[2].is_set());
        g.put(
            VA,
            &CallbackUnregister {
                ty: CALLBACKTYPE_EVENT,
                _unused: 0,
            },
        );
        assert_eq!(g.call(nr::CALLBACK_OP, [1, VA, 0, 0, 0]), -EINVAL);
        assert_eq!(g.call(nr::CALLBACK_OP, [0, UNMAPPED, 0, 0, 0]), -EFAULT);
        assert_eq!(g.call(nr::CALLBACK_OP, [7, VA, 0, 0, 0]), -ENOSYS);
        // set_callbacks: always 0, non-canonical ones ignored
        let nc = 0x8000_0000_0000_0000;
        assert_eq!(g.call(nr::SET_CALLBACKS, [0x100, nc, 0x300, 0, 0]), 0);
        assert_eq!(g.pv.callbacks[0].address, 0x100);
        assert_eq!(g.pv.callbacks[1].address, 0);
        assert_eq!(g.pv.callbacks[2].address, 0x300);
        assert_eq!(g.pv.callbacks[2].flags, 0);
    }

    #[test]
    fn stack_switch_and_vm_assist() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::STACK_SWITCH, [0xe028, 0x9000, 0, 0, 0]), 0);
        assert_eq!((g.pv.kernel_ss, g.pv.kernel_sp), (0xe02b, 0x9000));
        assert_eq!(g.call(nr::VM_ASSIST, [0, 2, 0, 0, 0]), 0);
        assert_eq!(g.call(nr::VM_ASSIST, [0, 32, 0, 0, 0]), 0);
        assert!(g.pv.vm_assist(2) && g.pv.vm_assist(32));
        assert_eq!(g.call(nr::VM_ASSIST, [1, 2, 0, 0, 0]), 0);
        assert!(!g.pv.vm_assist(2));
        for ty in [6u64, 31, 33, 64, (1 << 40) | 7] {
            assert_eq!(
                g.call(nr::VM_ASSIST, [0, ty, 0, 0, 0]),
                -EINVAL,
                "type {ty}"
            );
        }
        // `unsigned int type`: the upper half is dropped
        assert_eq!(g.call(nr::VM_ASSIST, [0, 1 << 40, 0, 0, 0]), 0);
        assert!(g.pv.vm_assist(0));
        assert_eq!(g.call(nr::VM_ASSIST, [5, 2, 0, 0, 0]), -ENOSYS);
    }

    fn frame(flags: u64, cs: u64, rflags: u64, rip: u64) -> IretContext {
        IretContext {
            rax: 0xaa,
            r11: 0x11,
            rcx: 0xcc,
            flags,
            rip,
            cs,
            rflags,
            rsp: VA + 0x800,
            ss: 0xe02b,
        }
    }

    #[test]
    fn iret_restores_the_frame_and_event_mask() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.regs.rsp = VA + 0x100;
        g.regs.rcx = 1;
        g.regs.r11 = 2;
        g.put(VA + 0x100, &frame(0, 0xe030, 0x3202 | (1 << 17), 0x4000));
        let (_, replaced) = g.call_full(nr::IRET, [0; 5]);
        assert!(replaced);
        assert_eq!(
            (g.regs.rax, g.regs.rcx, g.regs.r11, g.regs.rip, g.regs.rsp),
            (0xaa, 0xcc, 0x11, 0x4000, VA + 0x800)
        );
        assert_eq!(g.regs.rflags, 0x202, "IOPL and VM stripped");
        assert_eq!(g.mask(), 0, "IF set -> events unmasked");
        // in_syscall: returns like sysretq (rcx = rip, r11 = rflags); IF clear -> masked
        // (IF still forced on)
        g.regs.rsp = VA + 0x100;
        g.regs.rcx = 1;
        g.regs.r11 = 2;
        g.put(VA + 0x100, &frame(1 << 8, 0xe030, 0x2, 0x4000));
        g.call_full(nr::IRET, [0; 5]);
        assert_eq!((g.regs.rcx, g.regs.r11), (0x4000, 0x202));
        assert_eq!(g.regs.rflags & 0x200, 0x200);
        assert_eq!(g.mask(), 1);
        assert_eq!(g.dom.shutdown_reason(), None);
    }

    #[test]
    fn iret_to_user_mode_or_from_a_bad_stack_crashes() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.regs.rsp = VA + 0x100;
        g.put(VA + 0x100, &frame(0, 0xe033, 0x202, 0x4000));
        let (_, replaced) = g.call_full(nr::IRET, [0; 5]);
        assert!(replaced);
        assert_eq!(g.dom.shutdown_reason(), Some(ShutdownReason::Crash));
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.regs.rsp = UNMAPPED;
        g.call_full(nr::IRET, [0; 5]);
        assert_eq!(g.dom.shutdown_reason(), Some(ShutdownReason::Crash));
    }

    #[test]
    fn iret_to_non_canonical_rip_delivers_gp_or_crashes() {
        let bad_rip = 0x8000_0000_0000_0000;
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.regs.rsp = VA + 0x100;
        g.put(VA + 0x100, &frame(0, 0xe030, 0x202, bad_rip));
        g.call_full(nr::IRET, [0; 5]);
        assert_eq!(g.dom.shutdown_reason(), Some(ShutdownReason::Crash));
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.pv.traps[13].address = 0x6000;
        g.regs.rsp = VA + 0x100;
        g.put(VA + 0x100, &frame(0, 0xe030, 0x202, bad_rip));
        g.call_full(nr::IRET, [0; 5]);
        assert_eq!(g.dom.shutdown_reason(), None);
        assert_eq!(g.regs.rip, 0x6000);
        // bounce frame: rcx r11 err rip cs ...
        let f: [u64; 8] = g.get(g.regs.rsp);
        assert_eq!(f[2], 0);
        assert_eq!(f[3], bad_rip);
        assert_eq!(f[4] & 0xffff, 0xe030);
    }
}

mod multicall {
    use super::*;
    use xen_abi::hypercall::MulticallEntry;

    fn entry(op: u64, args: [u64; 6]) -> MulticallEntry {
        MulticallEntry {
            op,
            result: 0x5a5a,
            args,
        }
    }

    #[test]
    fn runs_each_entry_and_writes_results() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.put(
            VA,
            &[
                entry(nr::XEN_VERSION, [0; 6]),
                entry(60, [0; 6]),
                entry(nr::MULTICALL, [VA, 1, 0, 0, 0, 0]),
                entry(nr::XEN_VERSION, [7, 5, 0, 0, 0, 0]),
            ],
        );
        assert_eq!(g.call(nr::MULTICALL, [VA, 4, 0, 0, 0]), 0);
        let r: [MulticallEntry; 4] = g.get(VA);
        assert_eq!(r[0].result, 0x0004_0013);
        assert_eq!(r[1].result as i64, -ENOSYS);
        assert_eq!(r[2].result as i64, -EINVAL, "nested multicall refused");
        assert_eq!(r[3].result as i64, -EINVAL);
        assert_eq!(g.call(nr::MULTICALL, [0, 0, 0, 0, 0]), 0);
    }

    #[test]
    fn bad_lists_fault_and_huge_counts_terminate() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::MULTICALL, [UNMAPPED, 1 << 31, 0, 0, 0]), -EFAULT);
        assert_eq!(
            g.call(nr::MULTICALL, [0xffff_8080_0000_0000, 1, 0, 0, 0]),
            -EFAULT
        );
        assert_eq!(
            g.call(nr::MULTICALL, [0xffff_8080_0000_0000, 0, 0, 0, 0]),
            -EFAULT
        );
        // last RW slot then the RO page: entry 0 runs, entry 1's result cannot be written
        let last = RO - 64;
        g.put(last, &entry(nr::XEN_VERSION, [0; 6]));
        assert_eq!(
            g.call(nr::MULTICALL, [last, u32::MAX as u64, 0, 0, 0]),
            -EFAULT
        );
        assert_eq!(g.get::<MulticallEntry>(last).result, 0x0004_0013);
    }

    #[test]
    fn long_lists_become_continuations() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        for i in 0..300u64 {
            g.put(VA + i * 64, &entry(nr::XEN_VERSION, [0; 6]));
        }
        let rip = g.regs.rip;
        let (ret, replaced) = g.call_full(nr::MULTICALL, [VA, 300, 0, 0, 0]);
        assert_eq!(ret, 0);
        assert!(replaced);
        assert_eq!(g.regs.rip, rip - 2);
        assert_eq!(
            (g.regs.rax, g.regs.rdi, g.regs.rsi),
            (13, VA + 256 * 64, 44)
        );
        let (a, b) = (g.regs.rdi, g.regs.rsi);
        g.regs.rip = rip;
        assert_eq!(g.call_full(nr::MULTICALL, [a, b, 0, 0, 0]), (0, false));
        assert_eq!(g.get::<MulticallEntry>(VA + 299 * 64).result, 0x0004_0013);
    }

    #[test]
    fn shutdown_inside_a_multicall_stops_it() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.put(
            VA,
            &[
                entry(nr::SCHED_OP_COMPAT, [2, 0, 0, 0, 0, 0]),
                entry(nr::XEN_VERSION, [0; 6]),
            ],
        );
        assert_eq!(g.call(nr::MULTICALL, [VA, 2, 0, 0, 0]), 0);
        assert_eq!(g.dom.shutdown_reason(), Some(ShutdownReason::Poweroff));
        assert_eq!(g.get::<[MulticallEntry; 2]>(VA)[1].result, 0x5a5a);
    }
}

mod memory {
    use super::*;
    use xen_abi::memory::*;
    use xen_abi::mmu::DOMID_SELF;

    #[test]
    fn reservations_and_ram_page() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::MEMORY_OP, [2, 0, 0, 0, 0]), PAGES as i64);
        assert_eq!(g.call(nr::MEMORY_OP, [2 | (1 << 6), 0, 0, 0, 0]), -EINVAL);
        g.put(VA, &DOMID_SELF);
        assert_eq!(g.call(nr::MEMORY_OP, [3, VA, 0, 0, 0]), PAGES as i64);
        assert_eq!(g.call(nr::MEMORY_OP, [4, VA, 0, 0, 0]), PAGES as i64);
        assert_eq!(g.call(nr::MEMORY_OP, [14, VA, 0, 0, 0]), PAGES as i64 - 1);
        assert_eq!(g.call(nr::MEMORY_OP, [3, UNMAPPED, 0, 0, 0]), -EFAULT);
        g.put(VA, &5u16);
        assert_eq!(g.call(nr::MEMORY_OP, [3, VA, 0, 0, 0]), -3);
        // increase_reservation of zero extents (nr_extents read as 0): nothing done.
        assert_eq!(g.call(nr::MEMORY_OP, [0, VA, 0, 0, 0]), 0);
        assert_eq!(g.call(nr::MEMORY_OP, [11, VA, 0, 0, 0]), -ENOSYS);
    }

    #[test]
    fn machphys_mfn_list_reports_m2p_extents_up_to_max_and_faults_on_bad_handles() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        // A guest of 2^19 pages: a 4 MiB M2P, two 2 MiB extents.
        let ring0 = crate::ring0::Ring0Layer::new(1, 1 << 19).unwrap();
        let mfns = ring0.m2p_extent_mfns();
        assert_eq!(mfns.len(), 2);
        assert_eq!(mfns[1], mfns[0] + 512);
        g.dom.m2p_extent_mfns.set(mfns.clone()).unwrap();
        let list = |max: u32, at: u64| XenMachphysMfnList {
            max_extents: max,
            extent_start: at,
            ..Default::default()
        };
        g.put::<[u64; 3]>(VA + 64, &[!0; 3]);
        g.put(VA, &list(8, VA + 64));
        assert_eq!(g.call(nr::MEMORY_OP, [5, VA, 0, 0, 0]), 0);
        assert_eq!(g.get::<XenMachphysMfnList>(VA).nr_extents, 2);
        assert_eq!(g.get::<[u64; 3]>(VA + 64), [mfns[0], mfns[1], !0]);
        // max_extents caps what is written.
        g.put::<[u64; 3]>(VA + 64, &[!0; 3]);
        g.put(VA, &list(1, VA + 64));
        assert_eq!(g.call(nr::MEMORY_OP, [5, VA, 0, 0, 0]), 0);
        assert_eq!(g.get::<XenMachphysMfnList>(VA).nr_extents, 1);
        assert_eq!(g.get::<[u64; 3]>(VA + 64), [mfns[0], !0, !0]);
        // Bad handles: the array, and the argument itself.
        g.put(VA, &list(2, UNMAPPED));
        assert_eq!(g.call(nr::MEMORY_OP, [5, VA, 0, 0, 0]), -EFAULT);
        g.put(VA, &list(2, RO));
        assert_eq!(g.call(nr::MEMORY_OP, [5, VA, 0, 0, 0]), -EFAULT);
        assert_eq!(g.call(nr::MEMORY_OP, [5, UNMAPPED, 0, 0, 0]), -EFAULT);
        assert_eq!(g.call(nr::MEMORY_OP, [5, RO, 0, 0, 0]), -EFAULT);
    }

    #[test]
    fn memory_map_is_one_ram_entry() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        g.put(
            VA,
            &XenMemoryMap {
                nr_entries: 8,
                _pad: 0,
                buffer: VA + 64,
            },
        );
        assert_eq!(g.call(nr::MEMORY_OP, [9, VA, 0, 0, 0]), 0);
        assert_eq!(g.get::<XenMemoryMap>(VA).nr_entries, 1);
        let e: E820Entry = g.get(VA + 64);
        let (addr, size, ty) = (e.addr, e.size, e.ty);
        assert_eq!((addr, size, ty), (0, PAGES * PAGE_SIZE, E820_RAM));
        g.put(
            VA,
            &XenMemoryMap {
                nr_entries: 1,
                _pad: 0,
                buffer: UNMAPPED,
            },
        );
        assert_eq!(g.call(nr::MEMORY_OP, [9, VA, 0, 0, 0]), -EFAULT);
    }

    #[test]
    fn machphys_mapping_points_at_slot_258() {
        let mut g = Guest::new(LaunchMode::Unprivileged);
        assert_eq!(g.call(nr::MEMORY_OP, [12, VA, 0, 0, 0]), 0);
        let m: XenMachphysMapping = g.get(VA);
        assert_eq!(m.v_start, 0xffff_8100_0000_0000);
        assert_eq!(m.v_end, m.v_start + PAGE_SIZE);
        assert_eq!(m.max_mfn, PAGES - 1);
        assert_eq!(g.call(nr::MEMORY_OP, [12, RO, 0, 0, 0]), -EFAULT);
    }
}
