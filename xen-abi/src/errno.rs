//! Xen's errno values (xen: public/errno.h). Hypercalls return `-errno` in `rax`.
//!
//! Each value exists twice: as a raw `u32` constant (`EINVAL`) and as an [`Errno`] associated
//! constant (`Errno::EINVAL`).

use core::fmt;

macro_rules! errnos {
    ($($(#[$m:meta])* $name:ident = $val:expr;)*) => {
        $( $(#[$m])* pub const $name: u32 = $val; )*

        impl Errno {
            $( $(#[$m])* pub const $name: Errno = Errno($val); )*

            /// Every errno Xen's errno.h defines (including the Xen-internal two).
            pub const ALL: &'static [Errno] = &[$(Errno($val)),*];

            /// The symbolic name ("EINVAL"), or "E?" for a value Xen does not define.
            pub const fn name(self) -> &'static str {
                match self.0 {
                    $( $val => stringify!($name), )*
                    _ => "E?",
                }
            }
        }
    };
}

/// A Xen errno value (positive), e.g. `Errno::EINVAL` = 22.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Errno(pub u32);

errnos! {
    /// Operation not permitted.
    EPERM = 1;
    /// No such file or directory.
    ENOENT = 2;
    /// No such process.
    ESRCH = 3;
    /// Interrupted system call (Xen-internal: never returned to a guest).
    EINTR = 4;
    /// I/O error.
    EIO = 5;
    /// No such device or address.
    ENXIO = 6;
    /// Argument list too long.
    E2BIG = 7;
    /// Exec format error.
    ENOEXEC = 8;
    /// Bad file number.
    EBADF = 9;
    /// No child processes.
    ECHILD = 10;
    /// Try again.
    EAGAIN = 11;
    /// Out of memory.
    ENOMEM = 12;
    /// Permission denied.
    EACCES = 13;
    /// Bad address.
    EFAULT = 14;
    /// Device or resource busy.
    EBUSY = 16;
    /// Exists.
    EEXIST = 17;
    /// Cross-device link.
    EXDEV = 18;
    /// No such device.
    ENODEV = 19;
    /// Invalid argument.
    EINVAL = 22;
    /// File table overflow.
    ENFILE = 23;
    /// Too many open files.
    EMFILE = 24;
    /// No space left on device.
    ENOSPC = 28;
    /// Too many links.
    EMLINK = 31;
    /// Math argument out of domain.
    EDOM = 33;
    /// Result not representable.
    ERANGE = 34;
    /// Resource deadlock would occur.
    EDEADLK = 35;
    /// Name too long.
    ENAMETOOLONG = 36;
    /// No record locks available.
    ENOLCK = 37;
    /// Function not implemented (unknown hypercall or sub-op).
    ENOSYS = 38;
    /// Invalid request code.
    EBADRQC = 56;
    /// Invalid slot.
    EBADSLT = 57;
    /// No data available.
    ENODATA = 61;
    /// Timer expired.
    ETIME = 62;
    /// Not a data message.
    EBADMSG = 74;
    /// Value too large.
    EOVERFLOW = 75;
    /// Illegal byte sequence.
    EILSEQ = 84;
    /// Restart the call (Xen-internal: never returned to a guest).
    ERESTART = 85;
    /// Too many users.
    EUSERS = 87;
    /// Not a socket.
    ENOTSOCK = 88;
    /// Operation not supported.
    EOPNOTSUPP = 95;
    /// Address in use.
    EADDRINUSE = 98;
    /// Cannot assign requested address.
    EADDRNOTAVAIL = 99;
    /// No buffer space available.
    ENOBUFS = 105;
    /// Already connected.
    EISCONN = 106;
    /// Not connected.
    ENOTCONN = 107;
    /// Endpoint shut down.
    ESHUTDOWN = 108;
    /// Too many references.
    ETOOMANYREFS = 109;
    /// Timed out.
    ETIMEDOUT = 110;
}

/// Alias of `EAGAIN` (xen: XEN_EWOULDBLOCK).
pub const EWOULDBLOCK: u32 = EAGAIN;
/// Alias of `EDEADLK` (xen: XEN_EDEADLOCK).
pub const EDEADLOCK: u32 = EDEADLK;

/// Largest magnitude a negative-errno return may have (Linux's MAX_ERRNO convention).
pub const MAX_ERRNO: u64 = 4095;

impl Errno {
    /// The raw positive value.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// The negative value as a signed hypercall result.
    pub const fn as_i64(self) -> i64 {
        -(self.0 as i64)
    }

    /// The negative value as the guest sees it in `rax`.
    pub const fn as_ret(self) -> u64 {
        self.as_i64() as u64
    }

    /// Decode a hypercall return value: `Some` if `rax` is `-e` with `1 <= e <= 4095`.
    pub const fn from_ret(rax: u64) -> Option<Errno> {
        let neg = rax.wrapping_neg();
        if neg >= 1 && neg <= MAX_ERRNO {
            Some(Errno(neg as u32))
        } else {
            None
        }
    }

    /// Whether Xen's errno.h defines this value.
    pub fn is_known(self) -> bool {
        Self::ALL.contains(&self)
    }
}

impl From<Errno> for u32 {
    fn from(e: Errno) -> u32 {
        e.0
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn values_match_xen_errno_h() {
        let expect = [
            (EPERM, 1),
            (ENOENT, 2),
            (ESRCH, 3),
            (EINTR, 4),
            (EIO, 5),
            (EAGAIN, 11),
            (ENOMEM, 12),
            (EACCES, 13),
            (EFAULT, 14),
            (EBUSY, 16),
            (EEXIST, 17),
            (ENODEV, 19),
            (EINVAL, 22),
            (ENOSPC, 28),
            (ERANGE, 34),
            (ENOSYS, 38),
            (ENODATA, 61),
            (ERESTART, 85),
            (EOPNOTSUPP, 95),
            (ENOBUFS, 105),
            (ETIMEDOUT, 110),
        ];
        for (got, want) in expect {
            assert_eq!(got, want);
        }
        assert_eq!(Errno::EINVAL, Errno(22));
        assert_eq!(EWOULDBLOCK, 11);
    }

    #[test]
    fn as_ret_is_twos_complement_negative() {
        assert_eq!(Errno::EINVAL.as_ret(), 0xffff_ffff_ffff_ffea);
        assert_eq!(Errno::EPERM.as_ret(), u64::MAX);
        assert_eq!(Errno::ENOSYS.as_i64(), -38);
        assert_eq!(Errno::from_ret(Errno::EFAULT.as_ret()), Some(Errno::EFAULT));
        assert_eq!(Errno::from_ret(0), None);
        assert_eq!(Errno::from_ret(5), None);
        assert_eq!(Errno::from_ret((-4096i64) as u64), None);
        assert_eq!(Errno::from_ret((-4095i64) as u64), Some(Errno(4095)));
    }

    #[test]
    fn names_and_display() {
        assert_eq!(Errno::EINVAL.name(), "EINVAL");
        assert_eq!(Errno::ETIMEDOUT.name(), "ETIMEDOUT");
        assert_eq!(Errno(15).name(), "E?");
        assert!(!Errno(15).is_known());
        assert!(Errno::ENOBUFS.is_known());
        assert_eq!(format!("{}", Errno::ENOSYS), "ENOSYS (38)");
        // Names are unique and every listed value round-trips through the table.
        for (i, a) in Errno::ALL.iter().enumerate() {
            for b in &Errno::ALL[i + 1..] {
                assert_ne!(a, b);
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(Errno::ALL.len(), 48);
    }
}
