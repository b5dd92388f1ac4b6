//! Frame types, type reference counts and pins, as a pure state machine over a
//! caller-provided [`FrameTable`] (xen: arch/x86/mm.c `_get_page_type`, `_put_page_type`,
//! `get_page`/`put_page`, `do_mmuext_op` PIN/UNPIN).
//!
//! A frame has one type at a time. While its type count is non-zero the type cannot
//! change, so a frame is never both a page table (or descriptor table) and mapped
//! writable. Taking the first reference of a page-table type needs the caller to validate
//! the frame's contents ([`TypeGet::Validate`], then [`validation_done`]); dropping the
//! last one needs the caller to drop the references the table's entries hold
//! ([`TypePut::Devalidate`]).

use core::fmt;

use crate::errno::Errno;
use crate::pte::{FrameClass, FrameInfo, FrameType, Level, PteUpdate, Ref};

/// State of one frame of the domain (xen: `count_info` and `type_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FrameState {
    /// Type of the last type reference (kept when the count drops to zero, as in Xen).
    pub type_: FrameType,
    /// Type references held.
    pub type_count: u32,
    /// Contents validated for `type_` (page tables, descriptor tables).
    pub validated: bool,
    /// Pinned (`MMUEXT_PIN_L*_TABLE`); holds one type and one general reference.
    pub pinned: bool,
    /// General references held.
    pub refs: u32,
    /// A Xen page shared with the guest (`Some(writable)`), e.g. shared_info.
    pub xen_shared: Option<bool>,
}

impl FrameState {
    /// The type that counts: `None` when no type reference is held.
    pub const fn current_type(&self) -> FrameType {
        if self.type_count == 0 {
            FrameType::None
        } else {
            self.type_
        }
    }
}

/// The caller's per-frame state store.
pub trait FrameTable {
    /// State of `mfn`, or `None` if it is not the domain's.
    fn state(&self, mfn: u64) -> Option<&FrameState>;
    /// Mutable state of `mfn`, or `None` if it is not the domain's.
    fn state_mut(&mut self, mfn: u64) -> Option<&mut FrameState>;
}

/// [`FrameInfo`] over a [`FrameTable`], for the PTE engine.
pub struct TableFrames<'a, T: FrameTable>(pub &'a T);

impl<T: FrameTable> FrameInfo for TableFrames<'_, T> {
    fn frame_class(&self, mfn: u64) -> FrameClass {
        match self.0.state(mfn) {
            None => FrameClass::NotGuest,
            Some(s) => match s.xen_shared {
                Some(writable) => FrameClass::SharedXen { writable },
                None => FrameClass::Ram {
                    type_: s.current_type(),
                    pinned: s.pinned,
                },
            },
        }
    }
}

/// A fixed table of `N` frames, MFNs `0..N` (tests, small domains).
#[derive(Clone, Debug)]
pub struct FixedFrameTable<const N: usize> {
    /// Frame states, indexed by MFN.
    pub frames: [FrameState; N],
}

impl<const N: usize> Default for FixedFrameTable<N> {
    fn default() -> Self {
        FixedFrameTable {
            frames: [FrameState::default(); N],
        }
    }
}

impl<const N: usize> FrameTable for FixedFrameTable<N> {
    fn state(&self, mfn: u64) -> Option<&FrameState> {
        usize::try_from(mfn).ok().and_then(|i| self.frames.get(i))
    }
    fn state_mut(&mut self, mfn: u64) -> Option<&mut FrameState> {
        usize::try_from(mfn)
            .ok()
            .and_then(|i| self.frames.get_mut(i))
    }
}

/// Why a frame operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameErrorKind {
    /// Not the domain's frame.
    NotGuest,
    /// The frame holds type references of another type.
    TypeConflict {
        /// Current type.
        have: FrameType,
        /// Requested type.
        want: FrameType,
    },
    /// `FrameType::None` requested, or a type that cannot be pinned.
    BadType(FrameType),
    /// A Xen-shared page cannot take this type.
    XenShared,
    /// A type or general count would overflow.
    CountOverflow,
    /// Put without a matching get.
    NotHeld,
    /// The frame's validation has not completed.
    NotValidated,
    /// Pin of a pinned frame.
    AlreadyPinned,
    /// Unpin of an unpinned frame.
    NotPinned,
}

/// A refused frame operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// The frame.
    pub mfn: u64,
    /// Why.
    pub kind: FrameErrorKind,
}

impl FrameError {
    /// Xen's errno: every refusal here is `-EINVAL` (xen: `_get_page_type` "Bad type",
    /// pin "already pinned", unpin "not pinned", `get_page_from_gfn` failure).
    pub fn errno(&self) -> Errno {
        Errno::EINVAL
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mfn {:#x}: ", self.mfn)?;
        match self.kind {
            FrameErrorKind::NotGuest => f.write_str("not the domain's frame"),
            FrameErrorKind::TypeConflict { have, want } => {
                write!(f, "bad type (saw {have:?} != exp {want:?})")
            }
            FrameErrorKind::BadType(t) => write!(f, "bad type {t:?}"),
            FrameErrorKind::XenShared => f.write_str("Xen-shared page"),
            FrameErrorKind::CountOverflow => f.write_str("count overflow"),
            FrameErrorKind::NotHeld => f.write_str("reference not held"),
            FrameErrorKind::NotValidated => f.write_str("not validated"),
            FrameErrorKind::AlreadyPinned => f.write_str("already pinned"),
            FrameErrorKind::NotPinned => f.write_str("not pinned"),
        }
    }
}

impl core::error::Error for FrameError {}

/// Result of taking a type reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeGet {
    /// Taken; nothing else to do.
    Done,
    /// Taken (count now 1) but the contents must be validated as this type: validate
    /// every entry, then call [`validation_done`].
    Validate(FrameType),
}

/// Result of dropping a type reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypePut {
    /// Dropped; nothing else to do.
    Done,
    /// That was the last reference of a validated table of this type: drop the
    /// references its entries hold (xen: demote_lN_table).
    Devalidate(FrameType),
}

fn state_mut(t: &mut impl FrameTable, mfn: u64) -> Result<&mut FrameState, FrameError> {
    t.state_mut(mfn).ok_or(FrameError {
        mfn,
        kind: FrameErrorKind::NotGuest,
    })
}

/// Take a general reference (xen: get_page).
pub fn get_page(t: &mut impl FrameTable, mfn: u64) -> Result<(), FrameError> {
    let s = state_mut(t, mfn)?;
    s.refs = s.refs.checked_add(1).ok_or(FrameError {
        mfn,
        kind: FrameErrorKind::CountOverflow,
    })?;
    Ok(())
}

/// Drop a general reference (xen: put_page).
pub fn put_page(t: &mut impl FrameTable, mfn: u64) -> Result<(), FrameError> {
    let s = state_mut(t, mfn)?;
    s.refs = s.refs.checked_sub(1).ok_or(FrameError {
        mfn,
        kind: FrameErrorKind::NotHeld,
    })?;
    Ok(())
}

/// Take a type reference of `want` (xen: _get_page_type): the type may change only while
/// the count is zero; a changed page-table or descriptor type must be validated.
pub fn get_page_type(
    t: &mut impl FrameTable,
    mfn: u64,
    want: FrameType,
) -> Result<TypeGet, FrameError> {
    let err = |kind| FrameError { mfn, kind };
    if want == FrameType::None {
        return Err(err(FrameErrorKind::BadType(want)));
    }
    let s = state_mut(t, mfn)?;
    if let Some(writable) = s.xen_shared {
        // xen: share_xen_page_with_guest holds a permanent type reference (writable or
        // none): only writable references, and only on a writable share.
        if want != FrameType::Writable || !writable {
            return Err(err(FrameErrorKind::XenShared));
        }
    }
    let count = s
        .type_count
        .checked_add(1)
        .ok_or(err(FrameErrorKind::CountOverflow))?;
    if s.type_count == 0 {
        if s.type_ != want {
            s.type_ = want;
            s.validated = false;
        }
        s.type_count = count;
        if want == FrameType::Writable {
            s.validated = true;
        }
        return Ok(if s.validated {
            TypeGet::Done
        } else {
            TypeGet::Validate(want)
        });
    }
    if s.type_ != want {
        return Err(err(FrameErrorKind::TypeConflict {
            have: s.type_,
            want,
        }));
    }
    if !s.validated {
        // Another reference is mid-validation (xen spins; kxen validates synchronously,
        // so this is a recursive reference to a table under validation).
        return Err(err(FrameErrorKind::NotValidated));
    }
    s.type_count = count;
    Ok(TypeGet::Done)
}

/// Finish a validation started by [`TypeGet::Validate`]: on failure the type reference
/// taken is dropped and the frame loses its type (xen: validate_page error path).
pub fn validation_done(t: &mut impl FrameTable, mfn: u64, ok: bool) -> Result<(), FrameError> {
    let s = state_mut(t, mfn)?;
    if s.type_count == 0 || s.validated {
        return Err(FrameError {
            mfn,
            kind: FrameErrorKind::NotHeld,
        });
    }
    if ok {
        s.validated = true;
    } else {
        s.type_ = FrameType::None;
        s.type_count = 0;
    }
    Ok(())
}

/// Drop a type reference (xen: _put_page_type). The last reference of a validated page
/// table asks the caller to devalidate it.
pub fn put_page_type(t: &mut impl FrameTable, mfn: u64) -> Result<TypePut, FrameError> {
    let s = state_mut(t, mfn)?;
    let count = s.type_count.checked_sub(1).ok_or(FrameError {
        mfn,
        kind: FrameErrorKind::NotHeld,
    })?;
    s.type_count = count;
    if count == 0 && s.type_.is_page_table() && s.validated {
        s.validated = false;
        return Ok(TypePut::Devalidate(s.type_));
    }
    Ok(TypePut::Done)
}

/// `MMUEXT_PIN_Ln_TABLE`: take a general and a type reference of the level's table type
/// and mark the frame pinned (xen: do_mmuext_op pin_page).
pub fn pin(t: &mut impl FrameTable, mfn: u64, level: Level) -> Result<TypeGet, FrameError> {
    let err = |kind| FrameError { mfn, kind };
    let s = t.state(mfn).ok_or(err(FrameErrorKind::NotGuest))?;
    if s.pinned {
        // xen checks after taking the type; the outcome (-EINVAL, nothing held) is the same.
        return Err(err(FrameErrorKind::AlreadyPinned));
    }
    get_page(t, mfn)?;
    match get_page_type(t, mfn, level.table_type()) {
        Ok(g) => {
            state_mut(t, mfn)?.pinned = true;
            Ok(g)
        }
        Err(e) => {
            put_page(t, mfn)?;
            Err(e)
        }
    }
}

/// `MMUEXT_UNPIN_TABLE`: clear the pin and drop its references.
pub fn unpin(t: &mut impl FrameTable, mfn: u64) -> Result<TypePut, FrameError> {
    let s = state_mut(t, mfn)?;
    if !s.pinned {
        return Err(FrameError {
            mfn,
            kind: FrameErrorKind::NotPinned,
        });
    }
    s.pinned = false;
    let r = put_page_type(t, mfn)?;
    put_page(t, mfn)?;
    Ok(r)
}

/// Take the reference a new entry holds (`PteUpdate::new_ref`).
pub fn take_ref(t: &mut impl FrameTable, r: Ref) -> Result<TypeGet, FrameError> {
    match r {
        Ref::None => Ok(TypeGet::Done),
        Ref::Page(mfn) => get_page(t, mfn).map(|()| TypeGet::Done),
        Ref::Typed(mfn, ty) => {
            get_page(t, mfn)?;
            get_page_type(t, mfn, ty).inspect_err(|_| {
                let _ = put_page(t, mfn);
            })
        }
    }
}

/// Drop the reference an old entry held (`PteUpdate::old_ref`).
pub fn drop_ref(t: &mut impl FrameTable, r: Ref) -> Result<TypePut, FrameError> {
    match r {
        Ref::None => Ok(TypePut::Done),
        Ref::Page(mfn) => put_page(t, mfn).map(|()| TypePut::Done),
        Ref::Typed(mfn, _) => {
            let p = put_page_type(t, mfn)?;
            put_page(t, mfn)?;
            Ok(p)
        }
    }
}

/// Apply an accepted [`PteUpdate`]'s references: take the new one, then drop the old.
/// Returns what the caller must still do (validate a promoted frame, devalidate a
/// table that lost its last reference).
pub fn apply_update(
    t: &mut impl FrameTable,
    u: &PteUpdate,
) -> Result<(TypeGet, TypePut), FrameError> {
    let got = take_ref(t, u.new_ref)?;
    let put = drop_ref(t, u.old_ref)?;
    Ok((got, put))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::{make_pte, _PAGE_PRESENT, _PAGE_RW};
    use crate::pte::{update_entry, EntryAt, FixedSideTable, PteConfig};
    use std::string::ToString;

    type Table = FixedFrameTable<64>;

    fn kind(r: Result<impl core::fmt::Debug, FrameError>) -> FrameErrorKind {
        let e = r.unwrap_err();
        assert_eq!(e.errno(), Errno::EINVAL);
        e.kind
    }

    #[test]
    fn type_changes_only_at_count_zero() {
        let mut t = Table::default();
        assert_eq!(
            get_page_type(&mut t, 1, FrameType::Writable),
            Ok(TypeGet::Done)
        );
        assert_eq!(
            kind(get_page_type(&mut t, 1, FrameType::L1)),
            FrameErrorKind::TypeConflict {
                have: FrameType::Writable,
                want: FrameType::L1
            }
        );
        assert_eq!(put_page_type(&mut t, 1), Ok(TypePut::Done));
        assert_eq!(
            get_page_type(&mut t, 1, FrameType::L1),
            Ok(TypeGet::Validate(FrameType::L1))
        );
        validation_done(&mut t, 1, true).unwrap();
        assert_eq!(get_page_type(&mut t, 1, FrameType::L1), Ok(TypeGet::Done));
        assert_eq!(t.frames[1].type_count, 2);
        assert_eq!(put_page_type(&mut t, 1), Ok(TypePut::Done));
        assert_eq!(
            put_page_type(&mut t, 1),
            Ok(TypePut::Devalidate(FrameType::L1))
        );
        assert_eq!(kind(put_page_type(&mut t, 1)), FrameErrorKind::NotHeld);
        // Re-taking the same type after devalidation validates again.
        assert_eq!(
            get_page_type(&mut t, 1, FrameType::L1),
            Ok(TypeGet::Validate(FrameType::L1))
        );
    }

    #[test]
    fn failed_validation_drops_the_type() {
        let mut t = Table::default();
        assert!(matches!(
            get_page_type(&mut t, 2, FrameType::L2),
            Ok(TypeGet::Validate(_))
        ));
        // A recursive reference while validating is refused.
        assert_eq!(
            kind(get_page_type(&mut t, 2, FrameType::L2)),
            FrameErrorKind::NotValidated
        );
        validation_done(&mut t, 2, false).unwrap();
        assert_eq!(t.frames[2].current_type(), FrameType::None);
        assert_eq!(
            get_page_type(&mut t, 2, FrameType::Writable),
            Ok(TypeGet::Done)
        );
    }

    #[test]
    fn never_both_page_table_and_writable() {
        let mut t = Table::default();
        // Writable mapping first: pinning as any table fails, and the pin holds nothing.
        take_ref(&mut t, Ref::Typed(3, FrameType::Writable)).unwrap();
        for level in Level::ALL {
            assert!(matches!(
                kind(pin(&mut t, 3, level)),
                FrameErrorKind::TypeConflict { .. }
            ));
        }
        assert_eq!((t.frames[3].refs, t.frames[3].pinned), (1, false));
        drop_ref(&mut t, Ref::Typed(3, FrameType::Writable)).unwrap();
        // Pinned as L4: a writable reference fails.
        assert!(matches!(
            pin(&mut t, 3, Level::L4),
            Ok(TypeGet::Validate(FrameType::L4))
        ));
        validation_done(&mut t, 3, true).unwrap();
        assert!(take_ref(&mut t, Ref::Typed(3, FrameType::Writable)).is_err());
        assert_eq!(t.frames[3].refs, 1, "failed take_ref leaves no general ref");
        // Descriptor tables too.
        get_page_type(&mut t, 4, FrameType::SegDesc).unwrap();
        validation_done(&mut t, 4, true).unwrap();
        assert!(get_page_type(&mut t, 4, FrameType::Writable).is_err());
    }

    #[test]
    fn pin_and_unpin_rules() {
        let mut t = Table::default();
        assert_eq!(
            pin(&mut t, 5, Level::L1),
            Ok(TypeGet::Validate(FrameType::L1))
        );
        validation_done(&mut t, 5, true).unwrap();
        assert_eq!(
            kind(pin(&mut t, 5, Level::L1)),
            FrameErrorKind::AlreadyPinned
        );
        assert_eq!(
            TableFrames(&t).frame_class(5),
            FrameClass::Ram {
                type_: FrameType::L1,
                pinned: true
            }
        );
        assert_eq!(unpin(&mut t, 5), Ok(TypePut::Devalidate(FrameType::L1)));
        assert_eq!(kind(unpin(&mut t, 5)), FrameErrorKind::NotPinned);
        assert_eq!((t.frames[5].refs, t.frames[5].type_count), (0, 0));
        assert_eq!(kind(pin(&mut t, 64, Level::L1)), FrameErrorKind::NotGuest);
        assert_eq!(
            kind(pin(&mut t, u64::MAX, Level::L1)),
            FrameErrorKind::NotGuest
        );
    }

    #[test]
    fn xen_shared_pages_only_take_writable_references() {
        let mut t = Table::default();
        t.frames[6].xen_shared = Some(true);
        t.frames[7].xen_shared = Some(false);
        assert!(get_page_type(&mut t, 6, FrameType::Writable).is_ok());
        assert_eq!(
            kind(get_page_type(&mut t, 6, FrameType::L1)),
            FrameErrorKind::XenShared
        );
        assert_eq!(
            kind(get_page_type(&mut t, 7, FrameType::Writable)),
            FrameErrorKind::XenShared
        );
        assert_eq!(
            TableFrames(&t).frame_class(7),
            FrameClass::SharedXen { writable: false }
        );
        assert_eq!(TableFrames(&t).frame_class(99), FrameClass::NotGuest);
    }

    #[test]
    fn counts_never_overflow_or_underflow() {
        let mut t = Table::default();
        t.frames[8].refs = u32::MAX;
        assert_eq!(kind(get_page(&mut t, 8)), FrameErrorKind::CountOverflow);
        assert_eq!(kind(put_page(&mut t, 9)), FrameErrorKind::NotHeld);
        t.frames[9].type_ = FrameType::Writable;
        t.frames[9].validated = true;
        t.frames[9].type_count = u32::MAX;
        assert_eq!(
            kind(get_page_type(&mut t, 9, FrameType::Writable)),
            FrameErrorKind::CountOverflow
        );
        assert_eq!(
            kind(get_page_type(&mut t, 9, FrameType::None)),
            FrameErrorKind::BadType(FrameType::None)
        );
        assert!(FrameError {
            mfn: 9,
            kind: FrameErrorKind::NotPinned
        }
        .to_string()
        .contains("not pinned"));
    }

    #[test]
    fn pte_updates_drive_the_counts() {
        let mut t = Table::default();
        let mut side = FixedSideTable::<4>::new();
        // Frame 10 is an L1 table (pinned), 11 a data page.
        pin(&mut t, 10, Level::L1).unwrap();
        validation_done(&mut t, 10, true).unwrap();
        let at = EntryAt::new(10, Level::L1, 0);
        let cfg = PteConfig::default();
        let rw = make_pte(11, _PAGE_PRESENT | _PAGE_RW);
        let u = update_entry(at, rw, 0, cfg, &TableFrames(&t), &mut side).unwrap();
        apply_update(&mut t, &u).unwrap();
        assert_eq!(t.frames[11].current_type(), FrameType::Writable);
        // Now frame 11 cannot become a table, and the L1 cannot be mapped writable.
        assert!(pin(&mut t, 11, Level::L1).is_err());
        let self_rw = make_pte(10, _PAGE_PRESENT | _PAGE_RW);
        let e = update_entry(
            EntryAt::new(10, Level::L1, 1),
            self_rw,
            0,
            cfg,
            &TableFrames(&t),
            &mut side,
        )
        .unwrap_err();
        assert_eq!(e.errno(), Errno::EBUSY);
        // Clearing the mapping frees frame 11's type.
        let u = update_entry(at, 0, u.value, cfg, &TableFrames(&t), &mut side).unwrap();
        apply_update(&mut t, &u).unwrap();
        assert_eq!((t.frames[11].type_count, t.frames[11].refs), (0, 0));
        assert!(pin(&mut t, 11, Level::L1).is_ok());
        // An L2 entry at an untyped frame asks for promotion.
        let at2 = EntryAt::new(12, Level::L2, 0);
        let u = update_entry(
            at2,
            make_pte(13, _PAGE_PRESENT),
            0,
            cfg,
            &TableFrames(&t),
            &mut side,
        )
        .unwrap();
        assert!(u.promote);
        assert_eq!(
            apply_update(&mut t, &u),
            Ok((TypeGet::Validate(FrameType::L1), TypePut::Done))
        );
    }
}
