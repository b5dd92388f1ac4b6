//! grant: grant tables v1 from a lone domU — query_size, setup_table (the table's machine
//! frames follow shared_info), versions, status frames, map/unmap/copy/swap statuses, hostile
//! arguments, and a page granted to domain 0 (kxen's backends) that the host test then
//! reaches through the domain's grant table.
//!
//! The guest does not map the table frames (no update_va_mapping in the kit yet): it writes
//! its grant entries with GNTTABOP_copy from one of its own frames into the table frame
//! setup_table returned, which is also what proves that frame number is the real table.
//! Every expected value is Xen's (xen: common/grant_table.c, public/grant_table.h).

#![no_std]
#![no_main]

#[macro_use]
#[path = "../kit/mod.rs"]
mod kit;

use core::cell::UnsafeCell;

use kit::abi::*;
use kit::hypercall as hc;

xen_notes!(features = "writable_page_tables");

const GNTTABOP_MAP_GRANT_REF: u64 = 0;
const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
const GNTTABOP_SETUP_TABLE: u64 = 2;
const GNTTABOP_COPY: u64 = 5;
const GNTTABOP_QUERY_SIZE: u64 = 6;
const GNTTABOP_SET_VERSION: u64 = 8;
const GNTTABOP_GET_STATUS_FRAMES: u64 = 9;
const GNTTABOP_GET_VERSION: u64 = 10;

const GTF_PERMIT_ACCESS: u16 = 1;
const GTF_READONLY: u16 = 1 << 2;
const GNTMAP_HOST_MAP: u32 = 1 << 1;
const GNTCOPY_SOURCE_GREF: u16 = 1;

const GNTST_OKAY: i16 = 0;
const GNTST_GENERAL_ERROR: i16 = -1;
const GNTST_BAD_DOMAIN: i16 = -2;
const GNTST_BAD_GNTREF: i16 = -3;
const GNTST_BAD_HANDLE: i16 = -4;
const GNTST_PERMISSION_DENIED: i16 = -8;
const GNTST_BAD_COPY_ARG: i16 = -10;

const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
const XENMAPSPACE_GRANT_TABLE: u32 = 1;

/// The kit's own domain id under kxen (an unprivileged launch is domain 1).
const ME: u16 = 1;
/// Grant refs used: the backend's writable page, its read-only page, a self-grant.
const REF_RW: u32 = 10;
const REF_RO: u32 = 11;
const REF_SELF: u32 = 12;
/// What the granted page starts with; the host test checks it and writes a reply after it.
const PATTERN: &[u8; 16] = b"kxen-grant-page!";

#[repr(C, align(4096))]
struct Pages(UnsafeCell<[u8; 3 * 4096]>);
// SAFETY: the kit runs on one vCPU with events masked; the pages are only touched through
// raw pointers by this code and by hypercalls it makes.
unsafe impl Sync for Pages {}
/// Page 0: granted read-write to dom0; page 1: granted read-only; page 2: scratch.
static PAGES: Pages = Pages(UnsafeCell::new([0; 3 * 4096]));

fn page(i: usize) -> *mut u8 {
    // SAFETY: i < 3 keeps the pointer inside PAGES.
    unsafe { (PAGES.0.get() as *mut u8).add(i * 4096) }
}

/// Machine frame of a kit address (identity p2m; image at VIRT_BASE + paddr).
fn mfn(va: u64) -> u64 {
    (va - VIRT_BASE) >> 12
}

fn gnttab(cmd: u64, uop: u64, count: u64) -> i64 {
    // SAFETY: every uop passed below is either a valid kit buffer of the op's size or an
    // address the hypervisor must refuse.
    unsafe { hc::hypercall3(HYPERVISOR_GRANT_TABLE_OP, cmd, uop, count) }
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct QuerySize {
    dom: u16,
    nr_frames: u32,
    max_nr_frames: u32,
    status: i16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SetupTable {
    dom: u16,
    nr_frames: u32,
    status: i16,
    frame_list: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CopyPtr {
    u: u64,
    domid: u16,
    offset: u16,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct GntCopy {
    source: CopyPtr,
    dest: CopyPtr,
    len: u16,
    flags: u16,
    status: i16,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct MapGrantRef {
    host_addr: u64,
    flags: u32,
    gref: u32,
    dom: u16,
    status: i16,
    handle: u32,
    dev_bus_addr: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UnmapGrantRef {
    host_addr: u64,
    dev_bus_addr: u64,
    handle: u32,
    status: i16,
}

fn addr<T>(v: &T) -> u64 {
    v as *const T as u64
}

fn query(dom: u16) -> (i64, QuerySize) {
    let mut q = QuerySize {
        dom,
        status: 0x55,
        ..Default::default()
    };
    let rc = gnttab(GNTTABOP_QUERY_SIZE, addr(&mut q), 1);
    // SAFETY: q was written by the hypervisor through its address; re-read it.
    (rc, unsafe { core::ptr::read_volatile(&q) })
}

fn setup(dom: u16, nr_frames: u32, list: u64) -> (i64, i16) {
    let mut op = SetupTable {
        dom,
        nr_frames,
        status: 0x55,
        frame_list: list,
    };
    let rc = gnttab(GNTTABOP_SETUP_TABLE, addr(&mut op), 1);
    // SAFETY: as in `query`.
    (rc, unsafe { core::ptr::read_volatile(&op) }.status)
}

fn copy(op: GntCopy) -> (i64, i16) {
    let mut op = op;
    op.status = 0x55;
    let rc = gnttab(GNTTABOP_COPY, addr(&mut op), 1);
    // SAFETY: as in `query`.
    (rc, unsafe { core::ptr::read_volatile(&op) }.status)
}

fn self_frame(va: u64, offset: u16) -> CopyPtr {
    CopyPtr {
        u: mfn(va),
        domid: DOMID_SELF,
        offset: offset.wrapping_add((va & 0xfff) as u16),
    }
}

/// Write grant entry `gref` in table frame `table0` with GNTTABOP_copy from a staging buffer.
fn write_entry(table0: u64, gref: u32, flags: u16, domid: u16, frame: u32) -> i16 {
    let mut e = [0u8; 8];
    e[0..2].copy_from_slice(&flags.to_le_bytes());
    e[2..4].copy_from_slice(&domid.to_le_bytes());
    e[4..8].copy_from_slice(&frame.to_le_bytes());
    let staging = page(2) as u64;
    // SAFETY: page 2 is the guest's scratch page.
    unsafe { core::ptr::copy_nonoverlapping(e.as_ptr(), staging as *mut u8, 8) };
    copy(GntCopy {
        source: self_frame(staging, 0),
        dest: CopyPtr {
            u: table0,
            domid: DOMID_SELF,
            offset: (gref * 8) as u16,
        },
        len: 8,
        ..Default::default()
    })
    .1
}

fn kmain(si: &'static StartInfo) {
    // ---- query_size: one frame in use at start, Xen's default maximum of 64.
    let (rc, q) = query(DOMID_SELF);
    check_eq!("query_size_rc", rc, 0);
    check_eq!("query_size_status", q.status, GNTST_OKAY);
    check_eq!("query_size_nr_frames", q.nr_frames, 1);
    check_eq!("query_size_max_nr_frames", q.max_nr_frames, 64);
    check_eq!("query_size_own_domid", query(ME).1.status, GNTST_OKAY);
    check_eq!("query_size_missing_domain", query(77).1.status, GNTST_BAD_DOMAIN);
    check_eq!(
        "query_size_dom0_denied",
        query(0).1.status,
        GNTST_PERMISSION_DENIED
    );
    check_eq!(
        "query_size_count_2_einval",
        gnttab(GNTTABOP_QUERY_SIZE, addr(&q), 2),
        -EINVAL
    );
    check_eq!(
        "query_size_unmapped_efault",
        gnttab(GNTTABOP_QUERY_SIZE, 0x0000_0010_0000_0000, 1),
        -EFAULT
    );

    // ---- setup_table: 4 frames, right after shared_info (frame nr_pages).
    let mut frames = [0u64; 4];
    let (rc, st) = setup(DOMID_SELF, 4, addr(&frames));
    // SAFETY: written by the hypervisor through its address.
    frames = unsafe { core::ptr::read_volatile(&frames) };
    check_eq!("setup_table_rc", rc, 0);
    check_eq!("setup_table_status", st, GNTST_OKAY);
    value!("grant_frame0", "{:#x}", frames[0]);
    check_eq!("setup_table_first_frame_after_shared_info", frames[0], si.nr_pages + 1);
    check!(
        "setup_table_frames_consecutive",
        frames.windows(2).all(|w| w[1] == w[0] + 1),
        "{:x?}",
        frames
    );
    check_eq!("query_size_after_setup", query(DOMID_SELF).1.nr_frames, 4);
    // Hostile setup_table.
    check_eq!(
        "setup_table_too_many_frames",
        setup(DOMID_SELF, 65, addr(&frames)),
        (0, GNTST_GENERAL_ERROR)
    );
    check_eq!("query_size_unchanged", query(DOMID_SELF).1.nr_frames, 4);
    check_eq!(
        "setup_table_list_in_xen_area_efault",
        setup(DOMID_SELF, 1, 0xffff_8080_0000_0000).0,
        -EFAULT
    );
    check_eq!(
        "setup_table_missing_domain",
        setup(77, 1, addr(&frames)),
        (0, GNTST_BAD_DOMAIN)
    );
    check_eq!(
        "setup_table_count_0_einval",
        gnttab(GNTTABOP_SETUP_TABLE, addr(&frames), 0),
        -EINVAL
    );

    // ---- versions and status frames: v1 only.
    let mut v = [0u32; 2];
    v[0] = u32::from(DOMID_SELF);
    check_eq!("get_version_rc", gnttab(GNTTABOP_GET_VERSION, addr(&v), 1), 0);
    // SAFETY: written by the hypervisor.
    check_eq!("get_version", unsafe { core::ptr::read_volatile(&v) }[1], 1);
    let mut sv = 2u32;
    check_eq!(
        "set_version_2_enosys",
        gnttab(GNTTABOP_SET_VERSION, addr(&mut sv), 1),
        -ENOSYS
    );
    // SAFETY: written by the hypervisor.
    check_eq!("set_version_writes_back_1", unsafe { core::ptr::read_volatile(&sv) }, 1);
    sv = 1;
    check_eq!("set_version_1", gnttab(GNTTABOP_SET_VERSION, addr(&mut sv), 1), 0);
    sv = 7;
    check_eq!(
        "set_version_7_einval",
        gnttab(GNTTABOP_SET_VERSION, addr(&mut sv), 1),
        -EINVAL
    );
    let mut sf = [0u8; 16];
    sf[0] = 1;
    sf[4..6].copy_from_slice(&DOMID_SELF.to_le_bytes());
    check_eq!(
        "get_status_frames_rc",
        gnttab(GNTTABOP_GET_STATUS_FRAMES, addr(&mut sf), 1),
        0
    );
    // SAFETY: written by the hypervisor.
    let sf = unsafe { core::ptr::read_volatile(&sf) };
    check_eq!(
        "get_status_frames_v1_general_error",
        i16::from_le_bytes([sf[6], sf[7]]),
        GNTST_GENERAL_ERROR
    );
    check_eq!("unknown_cmd_enosys", gnttab(13, addr(&sf), 1), -ENOSYS);
    check_eq!("cmd_high_bits_einval", gnttab(6 | 1 << 12, addr(&q), 1), -EINVAL);
    check_eq!("negative_count_einval", gnttab(0, addr(&q), 0xffff_ffff), -EINVAL);

    // ---- map/unmap from a lone domU.
    let mut m = [
        MapGrantRef {
            flags: GNTMAP_HOST_MAP,
            dom: 77,
            gref: 1,
            ..Default::default()
        },
        MapGrantRef {
            flags: 0,
            dom: 0,
            ..Default::default()
        },
    ];
    check_eq!("map_rc", gnttab(GNTTABOP_MAP_GRANT_REF, addr(&mut m), 2), 0);
    // SAFETY: written by the hypervisor.
    let m = unsafe { core::ptr::read_volatile(&m) };
    check_eq!("map_missing_domain", m[0].status, GNTST_BAD_DOMAIN);
    check_eq!("map_without_host_flag", m[1].status, GNTST_BAD_GNTREF);
    let mut u = UnmapGrantRef {
        handle: 0,
        ..Default::default()
    };
    check_eq!("unmap_rc", gnttab(GNTTABOP_UNMAP_GRANT_REF, addr(&mut u), 1), 0);
    // SAFETY: written by the hypervisor.
    check_eq!(
        "unmap_bad_handle",
        unsafe { core::ptr::read_volatile(&u) }.status,
        GNTST_BAD_HANDLE
    );
    check_eq!(
        "map_unmapped_array_efault",
        gnttab(GNTTABOP_MAP_GRANT_REF, 0x0000_0010_0000_0000, 1),
        -EFAULT
    );

    // ---- XENMEM_add_to_physmap is for translated guests only.
    let xatp = [
        u64::from(DOMID_SELF) | u64::from(XENMAPSPACE_GRANT_TABLE) << 32,
        0,
        0x1000,
    ];
    // SAFETY: xatp is a valid xen_add_to_physmap; Xen refuses it for PV.
    let rc = unsafe { hc::memory_op(XENMEM_ADD_TO_PHYSMAP, addr(&xatp)) };
    check_eq!("add_to_physmap_grant_table_eacces", rc, -EACCES);
    let _ = ESRCH;

    // ---- grant pages to domain 0 (written into the table with copies).
    // SAFETY: pages 0 and 1 are the guest's own.
    unsafe {
        core::ptr::copy_nonoverlapping(PATTERN.as_ptr(), page(0), PATTERN.len());
        core::ptr::copy_nonoverlapping(PATTERN.as_ptr(), page(1), PATTERN.len());
    }
    let f0 = mfn(page(0) as u64) as u32;
    let f1 = mfn(page(1) as u64) as u32;
    check_eq!(
        "write_entry_rw",
        write_entry(frames[0], REF_RW, GTF_PERMIT_ACCESS, 0, f0),
        GNTST_OKAY
    );
    check_eq!(
        "write_entry_ro",
        write_entry(frames[0], REF_RO, GTF_PERMIT_ACCESS | GTF_READONLY, 0, f1),
        GNTST_OKAY
    );
    check_eq!(
        "write_entry_self",
        write_entry(frames[0], REF_SELF, GTF_PERMIT_ACCESS | GTF_READONLY, ME, f1),
        GNTST_OKAY
    );
    // Read the self-grant back through GNTTABOP_copy with a gref source.
    let dst = page(2) as u64 + 512;
    let (rc, st) = copy(GntCopy {
        source: CopyPtr {
            u: u64::from(REF_SELF),
            domid: DOMID_SELF,
            offset: 0,
        },
        dest: self_frame(dst, 0),
        len: PATTERN.len() as u16,
        flags: GNTCOPY_SOURCE_GREF,
        ..Default::default()
    });
    check_eq!("copy_via_own_grant", (rc, st), (0, GNTST_OKAY));
    // SAFETY: page 2 is ours; 16 bytes at dst were written by the copy.
    let got = unsafe { core::ptr::read_volatile(dst as *const [u8; 16]) };
    check!("copy_via_own_grant_bytes", &got == PATTERN);
    // Hostile copies.
    let src = self_frame(page(0) as u64, 0);
    let (_, st) = copy(GntCopy {
        source: src,
        dest: self_frame(page(2) as u64, 4090),
        len: 8,
        ..Default::default()
    });
    check_eq!("copy_crossing_page_bad_copy_arg", st, GNTST_BAD_COPY_ARG);
    let (_, st) = copy(GntCopy {
        source: CopyPtr {
            u: 4 * 512,
            domid: DOMID_SELF,
            offset: 0,
        },
        dest: self_frame(page(2) as u64, 0),
        len: 8,
        flags: GNTCOPY_SOURCE_GREF,
        ..Default::default()
    });
    check_eq!("copy_ref_out_of_range_bad_gntref", st, GNTST_BAD_GNTREF);
    let (_, st) = copy(GntCopy {
        source: CopyPtr {
            u: mfn(page(0) as u64),
            domid: 0,
            offset: 0,
        },
        dest: self_frame(page(2) as u64, 0),
        len: 8,
        ..Default::default()
    });
    check_eq!("copy_foreign_frame_permission_denied", st, GNTST_PERMISSION_DENIED);
    check_eq!(
        "copy_unmapped_array_efault",
        gnttab(GNTTABOP_COPY, 0x0000_0010_0000_0000, 1),
        -EFAULT
    );

    value!("grant_ref_rw", "{}", REF_RW);
    value!("grant_ref_ro", "{}", REF_RO);
    value!("granted_frame_rw", "{:#x}", f0);
    value!("granted_frame_ro", "{:#x}", f1);
}
