//! `xen_version` (hypercall 17).
// xen: common/kernel.c, do_xen_version and xenver_varbuf_op; public/version.h;
// xsm/dummy.h, xsm_xen_version (which sub-ops an unprivileged domain may use).

use xen_abi::arch::{c_string, HYPERVISOR_VIRT_START, PAGE_SIZE};
use xen_abi::errno::{E2BIG, EINVAL, ENOBUFS, ENODATA, EPERM};
use xen_abi::version::*;

use super::{err, uint, HypercallArgs, HypercallCtx, ENOSYS};
use crate::domain::DomainShared;

/// What the `deny` strings read (xen: common/version.c, xen_deny).
const DENY: &str = COMMANDLINE_DENIED;

/// Whether the XSM default policy denies sub-op `cmd` to this domain.
// xen: xsm/dummy.h, xsm_xen_version: version, platform_parameters, get_features always;
// extraversion(2), compile_info, capabilities(2), changeset(2), pagesize, guest_handle for
// everyone (XSM_HOOK); everything else (commandline(2), build_id) privileged only.
fn denied(d: &DomainShared, cmd: u32) -> bool {
    let open = matches!(
        cmd,
        XENVER_VERSION
            | XENVER_PLATFORM_PARAMETERS
            | XENVER_GET_FEATURES
            | XENVER_EXTRAVERSION
            | XENVER_EXTRAVERSION2
            | XENVER_COMPILE_INFO
            | XENVER_CAPABILITIES
            | XENVER_CAPABILITIES2
            | XENVER_CHANGESET
            | XENVER_CHANGESET2
            | XENVER_PAGESIZE
            | XENVER_GUEST_HANDLE
    );
    !open && !d.privileged()
}

/// The hypervisor command line kxen reports (the domain's, as configured).
fn cmdline(d: &DomainShared) -> &str {
    &d.cmdline
}

/// `HYPERVISOR_xen_version(cmd, arg)`.
pub fn xen_version(ctx: &mut HypercallCtx<'_, DomainShared>, a: &HypercallArgs) -> i64 {
    // `int cmd` in Xen's prototype.
    let cmd = uint(a.a[0]);
    let arg = a.a[1];
    let d = ctx.domain;
    let deny = denied(d, cmd);
    let done = |r: Result<(), i64>| r.map_or_else(|e| e, |()| 0);
    match cmd {
        XENVER_VERSION => i64::from(KXEN_XEN_VERSION),
        XENVER_EXTRAVERSION => {
            let b: XenExtraversion = c_string(KXEN_EXTRAVERSION);
            done(ctx.copy_to_guest(arg, &b))
        }
        XENVER_COMPILE_INFO => {
            let info = XenCompileInfo {
                compiler: c_string("rustc"),
                compile_by: c_string("kxen"),
                compile_domain: c_string("kxen"),
                compile_date: c_string(""),
            };
            done(ctx.write_pod(arg, &info))
        }
        XENVER_CAPABILITIES => {
            let b: XenCapabilitiesInfo = kxen_capabilities();
            done(ctx.copy_to_guest(arg, &b))
        }
        XENVER_CHANGESET => {
            let b: XenChangesetInfo = c_string(KXEN_CHANGESET);
            done(ctx.copy_to_guest(arg, &b))
        }
        XENVER_PLATFORM_PARAMETERS => {
            // Release builds of Xen report HYPERVISOR_VIRT_START to 64-bit PV guests.
            let p = XenPlatformParameters {
                virt_start: HYPERVISOR_VIRT_START,
            };
            done(ctx.write_pod(arg, &p))
        }
        XENVER_GET_FEATURES => {
            let mut fi: XenFeatureInfo = match ctx.read_pod(arg) {
                Ok(v) => v,
                Err(e) => return e,
            };
            if fi.submap_idx != 0 {
                return err(EINVAL);
            }
            fi.submap = d.features_submap0;
            done(ctx.write_pod(arg, &fi))
        }
        XENVER_PAGESIZE => {
            if deny {
                0
            } else if arg != 0 {
                err(EINVAL)
            } else {
                PAGE_SIZE as i64
            }
        }
        XENVER_GUEST_HANDLE => done(ctx.copy_to_guest(arg, &d.handle)),
        XENVER_COMMANDLINE => {
            if deny {
                // Only "<denied>" and its NUL are written.
                let mut b = DENY.as_bytes().to_vec();
                b.push(0);
                done(ctx.copy_to_guest(arg, &b))
            } else {
                let b: XenCommandline = c_string(cmdline(d));
                done(ctx.copy_to_guest(arg, &b))
            }
        }
        XENVER_BUILD_ID | XENVER_EXTRAVERSION2 | XENVER_CAPABILITIES2 | XENVER_CHANGESET2
        | XENVER_COMMANDLINE2 => {
            if deny {
                return err(EPERM);
            }
            let s: &[u8] = match cmd {
                // kxen has no build id: Xen's xen_build_id() fails with -ENODATA, which is
                // returned before the handle is looked at.
                XENVER_BUILD_ID => return err(ENODATA),
                XENVER_EXTRAVERSION2 => KXEN_EXTRAVERSION.as_bytes(),
                XENVER_CAPABILITIES2 => KXEN_CAPABILITIES.as_bytes(),
                XENVER_CHANGESET2 => KXEN_CHANGESET.as_bytes(),
                _ => cmdline(d).as_bytes(),
            };
            varbuf(ctx, arg, s)
        }
        _ => -ENOSYS,
    }
}

/// `xenver_varbuf_op`: NULL handle -> the length; else `{u32 len; u8 buf[]}` gets the bytes
/// (no NUL) if `len` is big enough (-ENOBUFS otherwise); returns the length.
fn varbuf(ctx: &HypercallCtx<'_, DomainShared>, arg: u64, s: &[u8]) -> i64 {
    let sz = s.len();
    if sz > 64 * 1024 {
        return err(E2BIG);
    }
    if arg == 0 {
        return sz as i64;
    }
    let hdr: XenVarbufHeader = match ctx.read_pod(arg) {
        Ok(v) => v,
        Err(e) => return e,
    };
    if sz > hdr.len as usize {
        return err(ENOBUFS);
    }
    let Some(buf) = arg.checked_add(XEN_VARBUF_DATA_OFFSET as u64) else {
        return -super::EFAULT;
    };
    match ctx.copy_to_guest(buf, s) {
        Ok(()) => sz as i64,
        Err(e) => e,
    }
}
