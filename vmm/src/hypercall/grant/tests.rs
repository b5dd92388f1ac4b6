use super::*;
use crate::hypercall::handler_tests::{Guest, PAGES, UNMAPPED, VA};
use crate::memory::PAGE_SIZE;
use xen_abi::negotiate::LaunchMode;

const GNT: u64 = nr::GRANT_TABLE_OP;
/// Grant-table frames of the test domain (inside the fake guest's RAM, not mapped).
const TABLE: u64 = 56;
const ME: u16 = 1;

fn guest() -> Guest {
    let mut g = Guest::new(LaunchMode::Unprivileged);
    g.dom.grant_table = GrantTable::new(TABLE, 4);
    g
}

fn put(g: &Guest, va: u64, b: &[u8]) {
    g.ram
        .mem()
        .write_slice(b, GuestAddress(Guest::va_to_gpa(va)))
        .unwrap();
}
fn get(g: &Guest, va: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    g.ram
        .mem()
        .read_slice(&mut b, GuestAddress(Guest::va_to_gpa(va)))
        .unwrap();
    b
}
fn i16at(g: &Guest, va: u64) -> i16 {
    i16::from_le_bytes(get(g, va, 2).try_into().unwrap())
}
fn u32at(g: &Guest, va: u64) -> u32 {
    u32::from_le_bytes(get(g, va, 4).try_into().unwrap())
}
/// The guest's side of a grant: entry `gref` = (flags, domid, frame).
fn grant(g: &Guest, gref: u64, flags: u16, domid: u16, frame: u32) {
    let gpa = TABLE * PAGE_SIZE + gref * 8;
    let mut e = Vec::new();
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&domid.to_le_bytes());
    e.extend_from_slice(&frame.to_le_bytes());
    g.ram.mem().write_slice(&e, GuestAddress(gpa)).unwrap();
}
fn entry_flags(g: &Guest, gref: u64) -> u16 {
    g.ram
        .mem()
        .read_obj(GuestAddress(TABLE * PAGE_SIZE + gref * 8))
        .unwrap()
}

fn query(g: &mut Guest, dom: u16) -> (i64, u32, u32, i16) {
    put(g, VA, &[0xaa; 16]);
    put(g, VA, &dom.to_le_bytes());
    let r = g.call(GNT, [6, VA, 1, 0, 0]);
    (r, u32at(g, VA + 4), u32at(g, VA + 8), i16at(g, VA + 12))
}

#[test]
fn query_size_reports_current_and_maximum_frames() {
    let mut g = guest();
    assert_eq!(query(&mut g, DOMID_SELF), (0, 1, 4, GNTST_OKAY));
    assert_eq!(query(&mut g, ME), (0, 1, 4, GNTST_OKAY));
    assert_eq!(query(&mut g, 9).3, GNTST_BAD_DOMAIN);
    assert_eq!(query(&mut g, 0).3, GNTST_PERMISSION_DENIED);
    assert_eq!(g.call(GNT, [6, VA, 2, 0, 0]), err(EINVAL));
    assert_eq!(g.call(GNT, [6, VA, 0, 0, 0]), err(EINVAL));
    assert_eq!(g.call(GNT, [6, UNMAPPED, 1, 0, 0]), -EFAULT);
}

fn setup(g: &mut Guest, dom: u16, nr: u32, list: u64) -> (i64, i16) {
    let mut op = [0u8; 24];
    op[0..2].copy_from_slice(&dom.to_le_bytes());
    op[4..8].copy_from_slice(&nr.to_le_bytes());
    op[8..10].copy_from_slice(&0x7777u16.to_le_bytes());
    op[16..24].copy_from_slice(&list.to_le_bytes());
    put(g, VA, &op);
    let r = g.call(GNT, [2, VA, 1, 0, 0]);
    (r, i16at(g, VA + 8))
}

#[test]
fn setup_table_grows_the_table_and_returns_its_machine_frames() {
    let mut g = guest();
    let list = VA + 0x100;
    assert_eq!(setup(&mut g, DOMID_SELF, 3, list), (0, GNTST_OKAY));
    let frames: Vec<u64> = (0..3)
        .map(|i| u64::from_le_bytes(get(&g, list + i * 8, 8).try_into().unwrap()))
        .collect();
    assert_eq!(frames, [TABLE, TABLE + 1, TABLE + 2]);
    assert_eq!(query(&mut g, DOMID_SELF).1, 3);
    // Beyond the maximum: status general_error, table unchanged.
    assert_eq!(setup(&mut g, DOMID_SELF, 5, list), (0, GNTST_GENERAL_ERROR));
    assert_eq!(query(&mut g, DOMID_SELF).1, 3);
    // Another domain.
    assert_eq!(setup(&mut g, 9, 1, list), (0, GNTST_BAD_DOMAIN));
    assert_eq!(setup(&mut g, 0, 1, list), (0, GNTST_PERMISSION_DENIED));
    // An unmapped list: per-frame write fails -> bad_virt_addr; a list in Xen's range or
    // wrapping -> -EFAULT before anything happens.
    assert_eq!(
        setup(&mut g, DOMID_SELF, 1, UNMAPPED),
        (0, GNTST_BAD_VIRT_ADDR)
    );
    assert_eq!(
        setup(&mut g, DOMID_SELF, 1, 0xffff_8080_0000_0000).0,
        -EFAULT
    );
    assert_eq!(
        setup(&mut g, DOMID_SELF, 1, 0x8000_0000_0000_0000).0,
        -EFAULT
    );
    // Only the start is checked up front (as Xen's array_access_ok): a list running off the
    // end of the address space fails per frame.
    assert_eq!(
        setup(&mut g, DOMID_SELF, 2, u64::MAX - 8),
        (0, GNTST_BAD_VIRT_ADDR)
    );
    // count must be 1; an unreadable op is -EFAULT.
    assert_eq!(g.call(GNT, [2, VA, 0, 0, 0]), err(EINVAL));
    assert_eq!(g.call(GNT, [2, UNMAPPED, 1, 0, 0]), -EFAULT);
}

#[test]
fn versions_are_v1_only_as_xen_with_max_ver_1() {
    let mut g = guest();
    for (v, want) in [
        (1u32, 0),
        (2, err(ENOSYS)),
        (0, err(EINVAL)),
        (3, err(EINVAL)),
    ] {
        put(&g, VA, &v.to_le_bytes());
        assert_eq!(g.call(GNT, [8, VA, 1, 0, 0]), want, "set_version({v})");
        assert_eq!(u32at(&g, VA), 1, "version written back");
    }
    put(&g, VA, &[0xf0, 0x7f, 0, 0, 9, 9, 9, 9]);
    assert_eq!(g.call(GNT, [10, VA, 1, 0, 0]), 0);
    assert_eq!(u32at(&g, VA + 4), 1);
    put(&g, VA, &9u16.to_le_bytes());
    assert_eq!(g.call(GNT, [10, VA, 1, 0, 0]), err(ESRCH));
    put(&g, VA, &0u16.to_le_bytes());
    assert_eq!(g.call(GNT, [10, VA, 1, 0, 0]), err(EPERM));
    assert_eq!(g.call(GNT, [8, UNMAPPED, 1, 0, 0]), -EFAULT);
}

#[test]
fn status_frames_do_not_exist_in_v1() {
    let mut g = guest();
    let mut op = [0u8; 16];
    op[4..6].copy_from_slice(&DOMID_SELF.to_le_bytes());
    put(&g, VA, &op);
    assert_eq!(g.call(GNT, [9, VA, 1, 0, 0]), 0);
    assert_eq!(i16at(&g, VA + 6), GNTST_OKAY);
    op[0] = 1;
    put(&g, VA, &op);
    assert_eq!(g.call(GNT, [9, VA, 1, 0, 0]), 0);
    assert_eq!(i16at(&g, VA + 6), GNTST_GENERAL_ERROR);
    assert_eq!(g.call(GNT, [9, VA, 2, 0, 0]), err(EINVAL));
}

#[test]
fn map_and_unmap_from_a_lone_domu_get_xens_statuses() {
    let mut g = guest();
    // map: no host/device flag -> bad_gntref; unknown domain -> bad_domain.
    let mut ops = vec![0u8; 64];
    ops[16..18].copy_from_slice(&9u16.to_le_bytes()); // flags 0
    ops[32 + 8] = GNTMAP_HOST_MAP as u8;
    ops[32 + 16..32 + 18].copy_from_slice(&9u16.to_le_bytes());
    put(&g, VA, &ops);
    assert_eq!(g.call(GNT, [0, VA, 2, 0, 0]), 0);
    assert_eq!(i16at(&g, VA + 18), GNTST_BAD_GNTREF);
    assert_eq!(i16at(&g, VA + 32 + 18), GNTST_BAD_DOMAIN);
    // DOMID_SELF is not resolved by map (rcu_lock_domain_by_id).
    put(&g, VA + 16, &DOMID_SELF.to_le_bytes());
    put(&g, VA + 8, &[GNTMAP_HOST_MAP as u8]);
    assert_eq!(g.call(GNT, [0, VA, 1, 0, 0]), 0);
    assert_eq!(i16at(&g, VA + 18), GNTST_BAD_DOMAIN);
    // unmap and unmap_and_replace: no handle exists.
    put(&g, VA, &[0u8; 48]);
    for cmd in [1, 7] {
        assert_eq!(g.call(GNT, [cmd, VA, 2, 0, 0]), 0);
        assert_eq!(i16at(&g, VA + 20), GNTST_BAD_HANDLE);
        assert_eq!(i16at(&g, VA + 24 + 20), GNTST_BAD_HANDLE);
    }
    // Bad handles: unmapped array -> -EFAULT; array in Xen's range -> -EFAULT.
    assert_eq!(g.call(GNT, [0, UNMAPPED, 1, 0, 0]), -EFAULT);
    assert_eq!(g.call(GNT, [1, 0xffff_8000_0000_0000, 1, 0, 0]), -EFAULT);
    // count 0 does nothing.
    assert_eq!(g.call(GNT, [1, UNMAPPED, 0, 0, 0]), 0);
}

#[test]
fn long_batches_continue_like_xens_preemption() {
    let mut g = guest();
    g.regs.rip = 0x2000;
    put(&g, VA, &vec![0u8; 300 * 24]);
    let (r, replaced) = g.call_full(GNT, [1, VA, 300, 0, 0]);
    assert!(replaced);
    let _ = r;
    assert_eq!(g.regs.rip, 0x2000 - 2);
    assert_eq!(g.regs.rax, GNT);
    assert_eq!(g.regs.rsi, VA + 256 * 24);
    assert_eq!(g.regs.rdx, 44);
    assert_eq!(i16at(&g, VA + 255 * 24 + 20), GNTST_BAD_HANDLE);
    assert_eq!(i16at(&g, VA + 256 * 24 + 20), 0, "not yet done");
    // Inside a multicall the whole batch runs.
    let mut ctx = HypercallCtx::new(0, &g.ram, PAGE_SIZE, &mut g.regs, &mut g.pv, &g.dom);
    ctx.in_multicall = true;
    let r = grant_table_op(
        &mut ctx,
        &HypercallArgs {
            nr: GNT,
            a: [1, VA, 300, 0, 0],
        },
    );
    assert_eq!((r, ctx.regs_replaced), (0, false));
    assert_eq!(i16at(&g, VA + 299 * 24 + 20), GNTST_BAD_HANDLE);
}

#[test]
fn bad_commands_and_counts_are_refused() {
    let mut g = guest();
    assert_eq!(g.call(GNT, [3, VA, 1, 0, 0]), err(ENOSYS), "dump_table");
    assert_eq!(g.call(GNT, [13, VA, 1, 0, 0]), err(ENOSYS));
    assert_eq!(g.call(GNT, [0xfff, VA, 1, 0, 0]), err(ENOSYS));
    assert_eq!(g.call(GNT, [6 | (1 << 12), VA, 1, 0, 0]), err(EINVAL));
    assert_eq!(g.call(GNT, [6, VA, 0x8000_0000, 0, 0]), err(EINVAL));
    assert_eq!(g.call(GNT, [1, VA, u64::MAX, 0, 0]), err(EINVAL));
}

fn copy_op(src: (u64, u16, u16), dst: (u64, u16, u16), len: u16, flags: u16) -> [u8; 40] {
    let mut op = [0u8; 40];
    op[0..8].copy_from_slice(&src.0.to_le_bytes());
    op[8..10].copy_from_slice(&src.1.to_le_bytes());
    op[10..12].copy_from_slice(&src.2.to_le_bytes());
    op[16..24].copy_from_slice(&dst.0.to_le_bytes());
    op[24..26].copy_from_slice(&dst.1.to_le_bytes());
    op[26..28].copy_from_slice(&dst.2.to_le_bytes());
    op[32..34].copy_from_slice(&len.to_le_bytes());
    op[34..36].copy_from_slice(&flags.to_le_bytes());
    op[36..38].copy_from_slice(&0x5555u16.to_le_bytes());
    op
}

fn copy(g: &mut Guest, op: [u8; 40]) -> i16 {
    put(g, VA, &op);
    assert_eq!(g.call(GNT, [5, VA, 1, 0, 0]), 0);
    i16at(g, VA + 36)
}

#[test]
fn copy_between_own_frames_and_grants_follows_xens_checks() {
    let mut g = guest();
    let s = DOMID_SELF;
    let gpa = |f: u64, o: u64| GuestAddress(f * PAGE_SIZE + o);
    g.ram.mem().write_slice(b"granted!", gpa(20, 8)).unwrap();
    // frame -> frame within the caller.
    assert_eq!(
        copy(&mut g, copy_op((20, s, 8), (21, s, 100), 8, 0)),
        GNTST_OKAY
    );
    let mut b = [0u8; 8];
    g.ram.mem().read_slice(&mut b, gpa(21, 100)).unwrap();
    assert_eq!(&b, b"granted!");
    // Crossing the page: bad_copy_arg.
    assert_eq!(
        copy(&mut g, copy_op((20, s, 4090), (21, s, 0), 8, 0)),
        GNTST_BAD_COPY_ARG
    );
    // A frame of another domain named directly: permission_denied; a frame outside the
    // guest: bad_page; an unknown domain by gref: bad_domain.
    assert_eq!(
        copy(&mut g, copy_op((20, 0, 0), (21, s, 0), 8, 0)),
        GNTST_PERMISSION_DENIED
    );
    assert_eq!(
        copy(&mut g, copy_op((1 << 30, s, 0), (21, s, 0), 8, 0)),
        GNTST_BAD_PAGE
    );
    assert_eq!(
        copy(
            &mut g,
            copy_op((1, 9, 0), (21, s, 0), 8, GNTCOPY_SOURCE_GREF)
        ),
        GNTST_BAD_DOMAIN
    );
    // Through the caller's own grant (granted to itself): flags are set and cleared.
    grant(&g, 5, GTF_PERMIT_ACCESS | GTF_READONLY, ME, 20);
    assert_eq!(
        copy(
            &mut g,
            copy_op((5, s, 8), (22, s, 0), 8, GNTCOPY_SOURCE_GREF)
        ),
        GNTST_OKAY
    );
    g.ram.mem().read_slice(&mut b, gpa(22, 0)).unwrap();
    assert_eq!(&b, b"granted!");
    assert_eq!(entry_flags(&g, 5), GTF_PERMIT_ACCESS | GTF_READONLY);
    // ... but not as a destination (read-only), nor a ref beyond the table.
    assert_eq!(
        copy(&mut g, copy_op((22, s, 0), (5, s, 0), 8, GNTCOPY_DEST_GREF)),
        GNTST_GENERAL_ERROR
    );
    assert_eq!(
        copy(
            &mut g,
            copy_op((512, s, 0), (22, s, 0), 8, GNTCOPY_SOURCE_GREF)
        ),
        GNTST_BAD_GNTREF
    );
    assert_eq!(entry_flags(&g, 5), GTF_PERMIT_ACCESS | GTF_READONLY);
}

#[test]
fn backends_reach_a_granted_page_through_domain_shared() {
    let g = guest();
    g.ram
        .mem()
        .write_slice(b"ring", GuestAddress(30 * PAGE_SIZE))
        .unwrap();
    grant(&g, 8, GTF_PERMIT_ACCESS, BACKEND_DOMID, 30);
    let mem = GuestGrantMem(&g.ram);
    let gt = &g.dom.grant_table;
    let m = gt.access(&mem, 8, BACKEND_DOMID, true).unwrap();
    assert_eq!(
        entry_flags(&g, 8),
        GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
    );
    let mut b = [0u8; 4];
    m.read(&mem, 0, &mut b).unwrap();
    assert_eq!(&b, b"ring");
    m.write(&mem, 4, b"back").unwrap();
    gt.release(&mem, &m).unwrap();
    assert_eq!(entry_flags(&g, 8), GTF_PERMIT_ACCESS);
    let mut b = [0u8; 8];
    gt.copy_from(&mem, 8, BACKEND_DOMID, 0, &mut b).unwrap();
    assert_eq!(&b, b"ringback");
    // A grant naming a frame past the VM's memory is bad_page.
    grant(&g, 9, GTF_PERMIT_ACCESS, BACKEND_DOMID, PAGES as u32 + 100);
    assert_eq!(
        gt.access(&mem, 9, BACKEND_DOMID, false)
            .unwrap_err()
            .status(),
        GNTST_BAD_PAGE
    );
}

#[test]
fn swap_and_cache_flush_follow_xen() {
    let mut g = guest();
    grant(&g, 1, GTF_PERMIT_ACCESS, 0, 20);
    put(&g, VA, &[1, 0, 0, 0, 2, 0, 0, 0, 0x55, 0x55, 0, 0]);
    put(&g, VA + 12, &[1, 0, 0, 0, 0, 2, 0, 0, 0x55, 0x55, 0, 0]);
    assert_eq!(g.call(GNT, [11, VA, 2, 0, 0]), 0);
    assert_eq!(i16at(&g, VA + 8), GNTST_OKAY);
    assert_eq!(i16at(&g, VA + 20), GNTST_BAD_GNTREF);
    assert_eq!(entry_flags(&g, 1), 0);
    assert_eq!(entry_flags(&g, 2), GTF_PERMIT_ACCESS);
    // cache_flush: clean of an own frame is fine; bad ranges are -EINVAL.
    let flush = |g: &mut Guest, addr: u64, off: u16, len: u16, op: u32| {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..10].copy_from_slice(&off.to_le_bytes());
        b[10..12].copy_from_slice(&len.to_le_bytes());
        b[12..16].copy_from_slice(&op.to_le_bytes());
        put(g, VA, &b);
        g.call(GNT, [12, VA, 1, 0, 0])
    };
    assert_eq!(flush(&mut g, 20 * PAGE_SIZE, 0, 64, GNTTAB_CACHE_CLEAN), 0);
    assert_eq!(
        flush(&mut g, 20 * PAGE_SIZE, 4095, 2, GNTTAB_CACHE_CLEAN),
        err(EINVAL)
    );
    assert_eq!(flush(&mut g, 20 * PAGE_SIZE, 0, 64, 4), err(EINVAL));
    assert_eq!(
        flush(&mut g, 1 << 40, 0, 64, GNTTAB_CACHE_CLEAN),
        err(EINVAL)
    );
    assert_eq!(flush(&mut g, 20 * PAGE_SIZE, 0, 0, GNTTAB_CACHE_CLEAN), 0);
}

#[test]
fn add_to_physmap_is_refused_for_pv_guests() {
    use xen_abi::memory::{XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP};
    let mut g = guest();
    let mut x = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_GRANT_TABLE,
        idx: 0,
        gpfn: 1000,
    };
    g.put(VA, &x);
    let add = |g: &mut Guest| {
        g.call(
            nr::MEMORY_OP,
            [u64::from(XENMEM_ADD_TO_PHYSMAP), VA, 0, 0, 0],
        )
    };
    assert_eq!(add(&mut g), err(EACCES));
    x.space = XENMAPSPACE_GMFN_FOREIGN;
    g.put(VA, &x);
    assert_eq!(add(&mut g), err(ENOSYS));
    x.space = XENMAPSPACE_GRANT_TABLE;
    x.domid = 9;
    g.put(VA, &x);
    assert_eq!(add(&mut g), err(ESRCH));
    assert_eq!(
        g.call(
            nr::MEMORY_OP,
            [u64::from(XENMEM_ADD_TO_PHYSMAP), UNMAPPED, 0, 0, 0]
        ),
        -EFAULT
    );
}
