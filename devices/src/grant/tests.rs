use super::*;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

/// Guest RAM frames in the test memory; the table's frames follow them.
const RAM_FRAMES: u64 = 8;
const TABLE_FRAMES: u32 = 4;
const BACKEND: DomId = 0;

/// Memory of `RAM_FRAMES + TABLE_FRAMES` frames as 32-bit atomic words.
#[derive(Debug)]
struct TestMem {
    words: Vec<AtomicU32>,
    /// Compare-exchanges that fail artificially (a guest racing every attempt).
    hostile_cmpxchg: AtomicU32,
}

#[derive(Debug, thiserror::Error)]
#[error("bad test address {0:#x}")]
struct BadAddr(u64);

impl TestMem {
    fn new() -> Self {
        let n = ((RAM_FRAMES + u64::from(TABLE_FRAMES)) * PAGE_SIZE / 4) as usize;
        TestMem {
            words: (0..n).map(|_| AtomicU32::new(0)).collect(),
            hostile_cmpxchg: AtomicU32::new(0),
        }
    }
    fn word(&self, gpa: u64) -> Result<&AtomicU32, BadAddr> {
        if !gpa.is_multiple_of(4) {
            return Err(BadAddr(gpa));
        }
        self.words.get((gpa / 4) as usize).ok_or(BadAddr(gpa))
    }
    fn byte(&self, gpa: u64) -> Result<u8, BadAddr> {
        let w = self.word(gpa & !3)?.load(Ordering::SeqCst);
        Ok((w >> ((gpa & 3) * 8)) as u8)
    }
    fn set_byte(&self, gpa: u64, v: u8) -> Result<(), BadAddr> {
        let sh = (gpa & 3) * 8;
        let w = self.word(gpa & !3)?;
        let _ = w.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| {
            Some((x & !(0xff << sh)) | (u32::from(v) << sh))
        });
        Ok(())
    }
}

impl GrantMemory for TestMem {
    type Error = BadAddr;
    fn is_grantable_frame(&self, frame: u64) -> bool {
        frame < RAM_FRAMES
    }
    fn load_u32(&self, gpa: u64) -> Result<u32, BadAddr> {
        Ok(self.word(gpa)?.load(Ordering::SeqCst))
    }
    fn compare_exchange_u32(
        &self,
        gpa: u64,
        current: u32,
        new: u32,
    ) -> Result<Result<u32, u32>, BadAddr> {
        let w = self.word(gpa)?;
        if self
            .hostile_cmpxchg
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            // The "guest" flips a harmless bit (GTF_PAT) between the read and the exchange.
            let v = w.fetch_xor(u32::from(GTF_PAT), Ordering::SeqCst) ^ u32::from(GTF_PAT);
            return Ok(Err(v));
        }
        Ok(w.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst))
    }
    fn fetch_and_u16(&self, gpa: u64, mask: u16) -> Result<u16, BadAddr> {
        let sh = (gpa & 2) * 8;
        let w = self.word(gpa & !3)?;
        let old = w.fetch_and(!(u32::from(!mask) << sh), Ordering::SeqCst);
        Ok((old >> sh) as u16)
    }
    fn fetch_or_u16(&self, gpa: u64, bits: u16) -> Result<u16, BadAddr> {
        let sh = (gpa & 2) * 8;
        let old = self
            .word(gpa & !3)?
            .fetch_or(u32::from(bits) << sh, Ordering::SeqCst);
        Ok((old >> sh) as u16)
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), BadAddr> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(gpa + i as u64)?;
        }
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), BadAddr> {
        for (i, b) in data.iter().enumerate() {
            self.set_byte(gpa + i as u64, *b)?;
        }
        Ok(())
    }
}

fn table() -> (TestMem, GrantTable) {
    (TestMem::new(), GrantTable::new(RAM_FRAMES, TABLE_FRAMES))
}

/// The guest's side: write an entry as public/grant_table.h says (domid, frame, then flags).
fn grant(mem: &TestMem, t: &GrantTable, gref: GrantRef, domid: DomId, frame: u32, flags: u16) {
    let gpa = t.entry_gpa(gref).unwrap();
    mem.write(gpa + FRAME_OFFSET, &frame.to_le_bytes()).unwrap();
    mem.word(gpa).unwrap().store(
        u32::from(flags) | (u32::from(domid) << 16),
        Ordering::SeqCst,
    );
}

/// The guest's `end_foreign_access_ref`: succeeds only when neither status bit is set.
fn guest_end_access(mem: &TestMem, t: &GrantTable, gref: GrantRef) -> bool {
    let gpa = t.entry_gpa(gref).unwrap();
    let w = mem.word(gpa).unwrap();
    let cur = w.load(Ordering::SeqCst);
    if cur as u16 & (GTF_READING | GTF_WRITING) != 0 {
        return false;
    }
    w.compare_exchange(cur, cur & 0xffff_0000, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

fn flags(mem: &TestMem, t: &GrantTable, gref: GrantRef) -> u16 {
    t.read_entry(mem, gref).unwrap().0
}

#[test]
fn entry_layout_and_status_codes_are_xens() {
    assert_eq!(ENTRIES_PER_FRAME, 512);
    assert_eq!((FLAGS_OFFSET, DOMID_OFFSET, FRAME_OFFSET), (0, 2, 4));
    assert_eq!(
        [GTF_PERMIT_ACCESS, GTF_ACCEPT_TRANSFER, GTF_TRANSITIVE],
        [1, 2, 3]
    );
    assert_eq!(
        [GTF_READONLY, GTF_READING, GTF_WRITING, GTF_SUB_PAGE],
        [4, 8, 16, 256]
    );
    assert_eq!([GTF_TRANSFER_COMMITTED, GTF_TRANSFER_COMPLETED], [4, 8]);
    assert_eq!(
        [
            GNTST_BAD_GNTREF,
            GNTST_PERMISSION_DENIED,
            GNTST_BAD_COPY_ARG,
            GNTST_EAGAIN
        ],
        [-3, -8, -10, -12]
    );
}

#[test]
fn table_starts_with_one_frame_and_grows_up_to_its_maximum() {
    let (_, t) = table();
    assert_eq!((t.nr_frames(), t.max_frames(), t.version()), (1, 4, 1));
    assert_eq!(t.nr_entries(), 512);
    assert_eq!(t.grow(3), Ok(3));
    assert_eq!(t.grow(2), Ok(3), "never shrinks");
    assert_eq!(t.grow(5), Err(4));
    assert_eq!(t.nr_frames(), 3);
    assert_eq!(t.frame(0), Some(RAM_FRAMES));
    assert_eq!(t.frame(3), Some(RAM_FRAMES + 3));
    assert_eq!(t.frame(4), None);
}

#[test]
fn read_grant_sets_reading_and_release_clears_it() {
    let (mem, t) = table();
    mem.write(3 * PAGE_SIZE + 100, b"hello").unwrap();
    grant(&mem, &t, 10, BACKEND, 3, GTF_PERMIT_ACCESS | GTF_READONLY);
    let m = t.access(&mem, 10, BACKEND, false).unwrap();
    assert_eq!((m.frame, m.writable), (3, false));
    assert_eq!(
        flags(&mem, &t, 10),
        GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING
    );
    assert!(
        !guest_end_access(&mem, &t, 10),
        "guest must not revoke in use"
    );
    let mut b = [0u8; 5];
    m.read(&mem, 100, &mut b).unwrap();
    assert_eq!(&b, b"hello");
    assert_eq!(m.write(&mem, 0, b"x"), Err(GrantError::ReadOnlyMapping(10)));
    t.release(&mem, &m).unwrap();
    assert_eq!(flags(&mem, &t, 10), GTF_PERMIT_ACCESS | GTF_READONLY);
    assert!(!t.is_pinned(10));
    assert!(guest_end_access(&mem, &t, 10));
    assert_eq!(t.release(&mem, &m), Err(GrantError::NotMapped(10)));
}

#[test]
fn write_grant_sets_reading_and_writing_until_the_last_user_releases() {
    let (mem, t) = table();
    grant(&mem, &t, 7, BACKEND, 2, GTF_PERMIT_ACCESS);
    let w = t.access(&mem, 7, BACKEND, true).unwrap();
    let r = t.access(&mem, 7, BACKEND, false).unwrap();
    assert_eq!(
        flags(&mem, &t, 7),
        GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
    );
    w.write(&mem, 4090, b"abcdef").unwrap();
    let mut b = [0u8; 6];
    mem.read(2 * PAGE_SIZE + 4090, &mut b).unwrap();
    assert_eq!(&b, b"abcdef");
    t.release(&mem, &w).unwrap();
    assert_eq!(flags(&mem, &t, 7), GTF_PERMIT_ACCESS | GTF_READING);
    t.release(&mem, &r).unwrap();
    assert_eq!(flags(&mem, &t, 7), GTF_PERMIT_ACCESS);
}

#[test]
fn write_access_to_a_readonly_grant_is_a_general_error_and_leaves_flags_alone() {
    let (mem, t) = table();
    grant(&mem, &t, 1, BACKEND, 2, GTF_PERMIT_ACCESS | GTF_READONLY);
    let e = t.access(&mem, 1, BACKEND, true).unwrap_err();
    assert_eq!(e.status(), GNTST_GENERAL_ERROR);
    assert_eq!(flags(&mem, &t, 1), GTF_PERMIT_ACCESS | GTF_READONLY);
    // Also when already pinned for reading.
    let r = t.access(&mem, 1, BACKEND, false).unwrap();
    let e = t.access(&mem, 1, BACKEND, true).unwrap_err();
    assert_eq!(e.status(), GNTST_GENERAL_ERROR);
    t.release(&mem, &r).unwrap();
    assert_eq!(flags(&mem, &t, 1), GTF_PERMIT_ACCESS | GTF_READONLY);
}

#[test]
fn wrong_domain_wrong_type_and_v2_only_entries_are_refused() {
    let (mem, t) = table();
    let cases: [(u16, DomId, &str); 6] = [
        (GTF_PERMIT_ACCESS, 5, "granted to another domain"),
        (GTF_INVALID, BACKEND, "invalid entry"),
        (GTF_ACCEPT_TRANSFER, BACKEND, "transfer entry"),
        (GTF_TRANSITIVE, BACKEND, "transitive (v2 only)"),
        (
            GTF_PERMIT_ACCESS | GTF_SUB_PAGE,
            BACKEND,
            "sub-page (v2 only)",
        ),
        (
            GTF_PERMIT_ACCESS | GTF_READING,
            5,
            "in use by another domain",
        ),
    ];
    for (i, (f, d, what)) in cases.into_iter().enumerate() {
        let gref = 20 + i as u32;
        grant(&mem, &t, gref, d, 1, f);
        let e = t.access(&mem, gref, BACKEND, false).unwrap_err();
        assert_eq!(e.status(), GNTST_GENERAL_ERROR, "{what}: {e}");
        assert_eq!(flags(&mem, &t, gref), f, "{what}: flags untouched");
        assert!(!t.is_pinned(gref));
    }
}

#[test]
fn sub_page_flag_only_blocks_mappings_not_copies() {
    // xen: _set_status_v1 adds GTF_sub_page to the type mask for mappings only.
    let (mem, t) = table();
    grant(&mem, &t, 2, BACKEND, 4, GTF_PERMIT_ACCESS | GTF_SUB_PAGE);
    assert!(t.access(&mem, 2, BACKEND, false).is_err());
    let mut b = [0u8; 4];
    t.copy_from(&mem, 2, BACKEND, 0, &mut b).unwrap();
}

#[test]
fn out_of_range_refs_are_bad_gntref_without_touching_memory() {
    let (mem, t) = table();
    for gref in [512, 513, 4 * 512, u32::MAX] {
        let e = t.access(&mem, gref, BACKEND, false).unwrap_err();
        assert_eq!(e, GrantError::BadGntref(gref));
        assert_eq!(e.status(), GNTST_BAD_GNTREF);
        let mut b = [0u8; 1];
        assert_eq!(
            t.copy_from(&mem, gref, BACKEND, 0, &mut b)
                .unwrap_err()
                .status(),
            GNTST_BAD_GNTREF
        );
    }
    // After growing, ref 512 exists.
    t.grow(2).unwrap();
    grant(&mem, &t, 512, BACKEND, 1, GTF_PERMIT_ACCESS);
    assert!(t.access(&mem, 512, BACKEND, false).is_ok());
}

#[test]
fn granted_frame_outside_guest_ram_is_bad_page_and_status_is_undone() {
    let (mem, t) = table();
    for frame in [RAM_FRAMES as u32, RAM_FRAMES as u32 + 1, u32::MAX] {
        grant(&mem, &t, 3, BACKEND, frame, GTF_PERMIT_ACCESS);
        let e = t.access(&mem, 3, BACKEND, true).unwrap_err();
        assert_eq!(e.status(), GNTST_BAD_PAGE, "{e}");
        assert_eq!(flags(&mem, &t, 3), GTF_PERMIT_ACCESS);
        assert!(!t.is_pinned(3));
    }
}

#[test]
fn copies_check_the_page_boundary() {
    let (mem, t) = table();
    grant(&mem, &t, 4, BACKEND, 5, GTF_PERMIT_ACCESS);
    t.copy_to(&mem, 4, BACKEND, 4000, &[7u8; 96]).unwrap();
    let mut b = [0u8; 96];
    t.copy_from(&mem, 4, BACKEND, 4000, &mut b).unwrap();
    assert_eq!(b, [7u8; 96]);
    for (off, len) in [(4000u64, 97usize), (4096, 1), (u64::MAX, 2)] {
        let mut b = vec![0u8; len];
        let e = t.copy_from(&mem, 4, BACKEND, off, &mut b).unwrap_err();
        assert_eq!(e.status(), GNTST_BAD_COPY_ARG, "{off} {len}");
        let e = t.copy_to(&mem, 4, BACKEND, off, &b).unwrap_err();
        assert_eq!(e.status(), GNTST_BAD_COPY_ARG, "{off} {len}");
    }
    // Copies leave no status bits behind.
    assert_eq!(flags(&mem, &t, 4), GTF_PERMIT_ACCESS);
    assert!(!t.is_pinned(4));
    // copy_to needs a writable grant.
    grant(&mem, &t, 5, BACKEND, 5, GTF_PERMIT_ACCESS | GTF_READONLY);
    let e = t.copy_to(&mem, 5, BACKEND, 0, b"x").unwrap_err();
    assert_eq!(e.status(), GNTST_GENERAL_ERROR);
}

#[test]
fn a_guest_racing_the_flags_gets_five_attempts_then_a_general_error() {
    let (mem, t) = table();
    grant(&mem, &t, 6, BACKEND, 1, GTF_PERMIT_ACCESS);
    mem.hostile_cmpxchg.store(4, Ordering::SeqCst);
    let m = t
        .access(&mem, 6, BACKEND, false)
        .expect("fifth attempt wins");
    t.release(&mem, &m).unwrap();
    mem.hostile_cmpxchg.store(5, Ordering::SeqCst);
    let e = t.access(&mem, 6, BACKEND, false).unwrap_err();
    assert_eq!(e.status(), GNTST_GENERAL_ERROR);
    assert!(e.to_string().contains("unstable"), "{e}");
    assert_eq!(flags(&mem, &t, 6) & (GTF_READING | GTF_WRITING), 0);
}

#[test]
fn pinned_entry_refuses_other_domains_and_pin_overflow() {
    let (mem, t) = table();
    grant(&mem, &t, 9, BACKEND, 1, GTF_PERMIT_ACCESS);
    let mut held = Vec::new();
    for _ in 0..PIN_LIMIT {
        held.push(t.access(&mem, 9, BACKEND, false).unwrap());
    }
    assert_eq!(
        t.access(&mem, 9, BACKEND, false).unwrap_err().status(),
        GNTST_GENERAL_ERROR
    );
    assert!(t.access(&mem, 9, 3, false).is_err());
    for m in &held {
        t.release(&mem, m).unwrap();
    }
    assert_eq!(flags(&mem, &t, 9), GTF_PERMIT_ACCESS);
}

#[test]
fn concurrent_guest_revocation_and_backend_access_never_both_win() {
    // The guest loops: grant, try to end access; the backend loops: access, release. Whenever
    // the backend holds the mapping, the guest's end_foreign_access must fail; whenever the
    // guest revoked, the backend must be refused.
    let mem = Arc::new(TestMem::new());
    let t = Arc::new(GrantTable::new(RAM_FRAMES, TABLE_FRAMES));
    let in_use = Arc::new(AtomicU32::new(0));
    let violations = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let backend = {
        let (mem, t, in_use, violations, done) = (
            mem.clone(),
            t.clone(),
            in_use.clone(),
            violations.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            let mut wins = 0u32;
            let mut i = 0u32;
            while done.load(Ordering::SeqCst) == 0 {
                i = i.wrapping_add(1);
                if let Ok(m) = t.access(&*mem, 11, BACKEND, i.is_multiple_of(2)) {
                    wins += 1;
                    in_use.store(1, Ordering::SeqCst);
                    // While held, the entry must still be a live grant.
                    let f = t.read_entry(&*mem, 11).unwrap().0;
                    if f & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || f & GTF_READING == 0 {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    in_use.store(0, Ordering::SeqCst);
                    t.release(&*mem, &m).unwrap();
                }
            }
            wins
        })
    };
    // The guest re-grants only after it revoked (as a real guest reuses a ref).
    let mut revoked = 0;
    let mut refused = 0;
    for _ in 0..20_000 {
        grant(&mem, &t, 11, BACKEND, 1, GTF_PERMIT_ACCESS);
        loop {
            if guest_end_access(&mem, &t, 11) {
                if in_use.load(Ordering::SeqCst) != 0 {
                    violations.fetch_add(1, Ordering::SeqCst);
                }
                revoked += 1;
                break;
            }
            refused += 1;
            if in_use.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
        }
    }
    done.store(1, Ordering::SeqCst);
    let wins = backend.join().unwrap();
    assert_eq!(violations.load(Ordering::SeqCst), 0);
    assert_eq!(revoked, 20_000);
    assert_eq!(flags(&mem, &t, 11), GTF_INVALID);
    eprintln!("backend used the grant {wins} times; guest revocations refused {refused} times");
}

#[test]
fn transfer_commit_then_complete_follows_the_accept_transfer_protocol() {
    let (mem, t) = table();
    grant(&mem, &t, 12, BACKEND, 0, GTF_ACCEPT_TRANSFER);
    assert_eq!(
        t.prepare_transfer(&mem, 12, 4).unwrap_err().status(),
        GNTST_GENERAL_ERROR
    );
    t.prepare_transfer(&mem, 12, BACKEND).unwrap();
    assert_eq!(
        flags(&mem, &t, 12),
        GTF_ACCEPT_TRANSFER | GTF_TRANSFER_COMMITTED
    );
    // A committed entry is not accepted twice.
    assert!(t.prepare_transfer(&mem, 12, BACKEND).is_err());
    t.complete_transfer(&mem, 12, 6).unwrap();
    assert_eq!(
        t.read_entry(&mem, 12).unwrap(),
        (
            GTF_ACCEPT_TRANSFER | GTF_TRANSFER_COMMITTED | GTF_TRANSFER_COMPLETED,
            BACKEND,
            6
        )
    );
    grant(&mem, &t, 13, BACKEND, 0, GTF_PERMIT_ACCESS);
    assert!(t.prepare_transfer(&mem, 13, BACKEND).is_err());
}

#[test]
fn memory_failures_are_general_errors_not_panics() {
    // A table whose frames lie outside the accessor's memory.
    let mem = TestMem::new();
    let t = GrantTable::new(1 << 40, 1);
    let e = t.access(&mem, 0, BACKEND, false).unwrap_err();
    assert!(matches!(e, GrantError::Memory(_)), "{e}");
    assert_eq!(e.status(), GNTST_GENERAL_ERROR);
}

#[test]
fn swap_exchanges_entries_and_refuses_bad_or_busy_refs() {
    let (mem, t) = table();
    grant(&mem, &t, 1, BACKEND, 2, GTF_PERMIT_ACCESS);
    grant(&mem, &t, 2, 7, 3, GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(t.swap(&mem, 1, 2), GNTST_OKAY);
    assert_eq!(
        t.read_entry(&mem, 1).unwrap(),
        (GTF_PERMIT_ACCESS | GTF_READONLY, 7, 3)
    );
    assert_eq!(
        t.read_entry(&mem, 2).unwrap(),
        (GTF_PERMIT_ACCESS, BACKEND, 2)
    );
    assert_eq!(t.swap(&mem, 2, 2), GNTST_OKAY);
    assert_eq!(t.swap(&mem, 1, 512), GNTST_BAD_GNTREF);
    assert_eq!(t.swap(&mem, u32::MAX, 1), GNTST_BAD_GNTREF);
    let m = t.access(&mem, 2, BACKEND, false).unwrap();
    assert_eq!(t.swap(&mem, 1, 2), GNTST_EAGAIN);
    t.release(&mem, &m).unwrap();
}
