//! hostile: hypercalls with bad arguments must fail with Xen's errno while the guest keeps
//! running. Every expected value below is what Xen itself returns (sources cited inline).

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use kit::abi::*;
use kit::hypercall as hc;

xen_notes!(features = "writable_page_tables");

/// Not mapped in the initial page tables (user half, far above anything Xen maps).
const UNMAPPED: u64 = 0x0000_0010_0000_0000;
const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;
/// Xen's reserved area (L4 slots 256-271); kxen keeps its ring-0 area in slots 257+.
const XEN_AREA: [u64; 3] = [
    0xffff_8000_0000_0000,
    0xffff_8080_0000_0000,
    0xffff_87ff_ffff_f000,
];

fn kmain(si: &'static StartInfo) {
    let end = kit::layout::initial_mapping_end(si);
    let bad_ptrs = [
        ("unmapped", UNMAPPED),
        ("non_canonical", NON_CANONICAL),
        ("xen_area_slot256", XEN_AREA[0]),
        ("xen_area_slot257", XEN_AREA[1]),
        ("xen_area_slot271", XEN_AREA[2]),
        ("after_initial_mapping", end),
    ];

    // xen: drivers/char/console.c, guest_console_write: copy_from_guest fails -> -EFAULT.
    for (what, p) in bad_ptrs {
        check_eq!(
            what_name("console_write_", what).as_str(),
            hc::console_io(CONSOLEIO_WRITE, 16, p),
            -EFAULT
        );
    }
    // A buffer that starts mapped and runs off the end of the initial mapping.
    check_eq!(
        "console_write_straddling_end",
        hc::console_io(CONSOLEIO_WRITE, 16, end - 8),
        -EFAULT
    );

    // xen: common/kernel.c, XENVER_extraversion: copy_to_guest fails -> -EFAULT.
    for (what, p) in bad_ptrs {
        // SAFETY: every pointer here is one the hypervisor must refuse without writing.
        let rc = unsafe { hc::xen_version_raw(XENVER_EXTRAVERSION, p) };
        check_eq!(
            what_name("xen_version_extraversion_", what).as_str(),
            rc,
            -EFAULT
        );
    }
    // The page tables are mapped read-only: a hypercall must not write through them.
    // SAFETY: read-only mapping; Xen's copy_to_guest faults on it.
    let l4_before = unsafe { core::ptr::read_volatile(si.pt_base as *const [u64; 2]) };
    // SAFETY: see above; the hypervisor must refuse the write.
    let rc = unsafe { hc::xen_version_raw(XENVER_EXTRAVERSION, si.pt_base) };
    check_eq!("xen_version_extraversion_read_only_page", rc, -EFAULT);
    // SAFETY: as above.
    let l4_after = unsafe { core::ptr::read_volatile(si.pt_base as *const [u64; 2]) };
    check!("read_only_page_unchanged", l4_before == l4_after);

    // xen: common/kernel.c, XENVER_pagesize: a non-NULL argument -> -EINVAL, else 4096.
    // SAFETY: XENVER_pagesize never dereferences its argument.
    let rc = unsafe { hc::xen_version_raw(XENVER_PAGESIZE, 0x1000) };
    check_eq!("xen_version_pagesize_non_null_einval", rc, -EINVAL);
    // SAFETY: as above.
    let rc = unsafe { hc::xen_version_raw(XENVER_PAGESIZE, 0) };
    check_eq!("xen_version_pagesize", rc, 4096);

    // Unknown hypercall numbers -> -ENOSYS (through the page, and with a raw syscall for
    // numbers the page cannot express; the high bits of rax must not be dropped).
    for nr in [60u32, 100, 127] {
        // SAFETY: no such hypercall; nothing is dereferenced.
        let rc = unsafe { hc::hypercall0(nr) };
        check_eq!(
            num_name("unknown_hypercall_", nr as u64, false).as_str(),
            rc,
            -ENOSYS
        );
    }
    for nr in [128u64, 200, 0x1_0000_0012, u64::MAX] {
        // SAFETY: no such hypercall; nothing is dereferenced.
        let rc = unsafe { hc::raw_hypercall(nr, 0, 0, 0, 0, 0) };
        check_eq!(
            num_name("unknown_raw_hypercall_", nr, true).as_str(),
            rc,
            -ENOSYS
        );
    }

    // xen: common/multicall.c, do_multicall: the list is checked with guest_handle_okay
    // and each entry copied in turn; a bad list -> -EFAULT.
    // SAFETY: the hypervisor must refuse these lists without running anything.
    let rc = unsafe { hc::multicall(UNMAPPED, 1 << 31) };
    check_eq!("multicall_huge_count_unmapped_list", rc, -EFAULT);
    // SAFETY: as above.
    let rc = unsafe { hc::multicall(XEN_AREA[1], 1) };
    check_eq!("multicall_list_in_xen_area", rc, -EFAULT);
    // SAFETY: a zero-length list is not read.
    let rc = unsafe { hc::multicall(0, 0) };
    check_eq!("multicall_count_zero", rc, 0);
    // One valid entry in the last page of the initial mapping (spare, writable), then the
    // unmapped page: entry 0 runs, entry 1 cannot be read -> -EFAULT.
    // (Only when the initial mapping was found: its last page must be spare RAM.)
    if check!(
        "initial_mapping_found",
        end > kit::image_end(),
        "page-table walk ended at {:#x}",
        end
    ) {
        let slot = (end - 64) as *mut MulticallEntry;
        let entry = MulticallEntry {
            op: HYPERVISOR_XEN_VERSION as u64,
            result: 0x5a5a,
            args: [XENVER_VERSION as u64, 0, 0, 0, 0, 0],
        };
        // SAFETY: the last page of the initial mapping is spare RAM the builder mapped RW.
        unsafe { core::ptr::write_volatile(slot, entry) };
        // SAFETY: entry 0 is a harmless xen_version; entry 1 lies in the unmapped page.
        let rc = unsafe { hc::multicall(slot as u64, 1 << 31) };
        check_eq!("multicall_huge_count_runs_into_unmapped", rc, -EFAULT);
        // SAFETY: as above; Xen wrote the result field.
        let result = unsafe { core::ptr::read_volatile(&raw const (*slot).result) };
        check_eq!("multicall_entry0_result", result, hc::xen_version_number());
    }
    // An unknown op inside a multicall: the call succeeds, the entry's result is -ENOSYS.
    let mut one = [MulticallEntry {
        op: 60,
        result: 0,
        args: [0; 6],
    }];
    // SAFETY: the list is valid; op 60 does not exist.
    let rc = unsafe { hc::multicall(one.as_mut_ptr() as u64, 1) };
    check_eq!("multicall_unknown_op_rc", rc, 0);
    // SAFETY: read back what Xen wrote into our own array.
    let result = unsafe { core::ptr::read_volatile(&raw const one[0].result) };
    check_eq!("multicall_unknown_op_result", result, -ENOSYS);

    // xen: arch/x86/pv/traps.c, do_set_trap_table: a non-canonical handler -> -EINVAL;
    // an unreadable table -> -EFAULT.
    let table = [
        TrapInfo {
            vector: 6,
            flags: 0,
            cs: FLAT_KERNEL_CS,
            address: NON_CANONICAL | 0x1000,
        },
        TrapInfo::default(),
    ];
    // SAFETY: the only entry is refused by the hypervisor, so nothing is installed.
    let rc = unsafe { hc::set_trap_table(table.as_ptr()) };
    check_eq!("set_trap_table_non_canonical_einval", rc, -EINVAL);
    // SAFETY: the hypervisor must refuse an unreadable table.
    let rc = unsafe { hc::set_trap_table(UNMAPPED as *const TrapInfo) };
    check_eq!("set_trap_table_unmapped_efault", rc, -EFAULT);

    // xen: common/sched/core.c, do_sched_op: unknown command -> -ENOSYS; SCHEDOP_shutdown
    // with an unreadable argument -> -EFAULT.
    // SAFETY: unknown command; nothing is dereferenced.
    let rc = unsafe { hc::sched_op(100, 0) };
    check_eq!("sched_op_unknown_enosys", rc, -ENOSYS);
    // SAFETY: the hypervisor must refuse to read the reason.
    let rc = unsafe { hc::sched_op(SCHEDOP_SHUTDOWN, UNMAPPED) };
    check_eq!("sched_op_shutdown_bad_pointer_efault", rc, -EFAULT);

    // xen: drivers/char/console.c, do_console_io: unknown command -> -ENOSYS.
    check_eq!(
        "console_io_unknown_enosys",
        hc::console_io(99, 0, 0),
        -ENOSYS
    );

    check!("still_running", true);
}

/// `prefix` + `what` in a small stack buffer (test names are built at run time).
fn what_name(prefix: &str, what: &str) -> Name {
    let mut n = Name::default();
    n.push(prefix);
    n.push(what);
    n
}

fn num_name(prefix: &str, nr: u64, hex: bool) -> Name {
    use core::fmt::Write;
    let mut n = Name::default();
    n.push(prefix);
    let _ = if hex {
        write!(n, "{:#x}", nr)
    } else {
        write!(n, "{}", nr)
    };
    n
}

struct Name {
    buf: [u8; 64],
    len: usize,
}

impl Default for Name {
    fn default() -> Self {
        Name {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl Name {
    fn push(&mut self, s: &str) {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl core::fmt::Write for Name {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push(s);
        Ok(())
    }
}
