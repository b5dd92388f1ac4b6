//! Event channels: `event_channel_op` sub-ops and layouts (xen: public/event_channel.h) and
//! VIRQ numbers (xen: public/xen.h).

use crate::arch::impl_pod;
use core::mem::{offset_of, size_of};

/// Event channel port number.
pub type EvtchnPort = u32;

/// Bind to a remote domain's unbound port.
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// Bind a VIRQ.
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// Bind a physical IRQ.
pub const EVTCHNOP_BIND_PIRQ: u32 = 2;
/// Close a port.
pub const EVTCHNOP_CLOSE: u32 = 3;
/// Notify the remote end.
pub const EVTCHNOP_SEND: u32 = 4;
/// Query a port's status.
pub const EVTCHNOP_STATUS: u32 = 5;
/// Allocate an unbound port.
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// Bind an IPI port.
pub const EVTCHNOP_BIND_IPI: u32 = 7;
/// Change the notified vCPU.
pub const EVTCHNOP_BIND_VCPU: u32 = 8;
/// Unmask a port.
pub const EVTCHNOP_UNMASK: u32 = 9;
/// Close all ports of a domain.
pub const EVTCHNOP_RESET: u32 = 10;
/// FIFO ABI: initialise the control block.
pub const EVTCHNOP_INIT_CONTROL: u32 = 11;
/// FIFO ABI: add an event array page.
pub const EVTCHNOP_EXPAND_ARRAY: u32 = 12;
/// FIFO ABI: set a port's priority.
pub const EVTCHNOP_SET_PRIORITY: u32 = 13;

/// Name of an `EVTCHNOP_*`.
pub const fn name(op: u32) -> Option<&'static str> {
    Some(match op {
        EVTCHNOP_BIND_INTERDOMAIN => "bind_interdomain",
        EVTCHNOP_BIND_VIRQ => "bind_virq",
        EVTCHNOP_BIND_PIRQ => "bind_pirq",
        EVTCHNOP_CLOSE => "close",
        EVTCHNOP_SEND => "send",
        EVTCHNOP_STATUS => "status",
        EVTCHNOP_ALLOC_UNBOUND => "alloc_unbound",
        EVTCHNOP_BIND_IPI => "bind_ipi",
        EVTCHNOP_BIND_VCPU => "bind_vcpu",
        EVTCHNOP_UNMASK => "unmask",
        EVTCHNOP_RESET => "reset",
        EVTCHNOP_INIT_CONTROL => "init_control",
        EVTCHNOP_EXPAND_ARRAY => "expand_array",
        EVTCHNOP_SET_PRIORITY => "set_priority",
        _ => return None,
    })
}

/// Ports of the 2-level ABI with 64-bit words: 64 * 64 (xen: EVTCHN_2L_NR_CHANNELS).
pub const NR_EVENT_CHANNELS: u32 = 4096;
/// Bits per word of the pending/mask bitmaps.
pub const EVTCHN_WORD_BITS: u32 = 64;
/// (word index, bit) of a port in the 2-level bitmaps; the word index is also the
/// `evtchn_pending_sel` bit. `None` for ports out of range.
pub const fn port_word_bit(port: EvtchnPort) -> Option<(usize, u32)> {
    if port < NR_EVENT_CHANNELS {
        Some(((port / EVTCHN_WORD_BITS) as usize, port % EVTCHN_WORD_BITS))
    } else {
        None
    }
}

/// Timebase update / timeout (per vCPU).
pub const VIRQ_TIMER: u32 = 0;
/// Request to dump debug info (per vCPU).
pub const VIRQ_DEBUG: u32 = 1;
/// Emergency console input (global, dom0).
pub const VIRQ_CONSOLE: u32 = 2;
/// Exceptional event for some domain (global, dom0).
pub const VIRQ_DOM_EXC: u32 = 3;
/// Trace buffer records (global, dom0).
pub const VIRQ_TBUF: u32 = 4;
/// A domain paused for debugging (global, dom0).
pub const VIRQ_DEBUGGER: u32 = 6;
/// Xenoprof sample (per vCPU).
pub const VIRQ_XENOPROF: u32 = 7;
/// Console ring bytes (global, dom0).
pub const VIRQ_CON_RING: u32 = 8;
/// Physical CPU state change (global, dom0).
pub const VIRQ_PCPU_STATE: u32 = 9;
/// Memory event (global, dom0).
pub const VIRQ_MEM_EVENT: u32 = 10;
/// Argo message (global).
pub const VIRQ_ARGO: u32 = 11;
/// Low on heap memory (global, dom0).
pub const VIRQ_ENOMEM: u32 = 12;
/// PMU interrupt (per vCPU).
pub const VIRQ_XENPMU: u32 = 13;
/// First architecture-specific VIRQ.
pub const VIRQ_ARCH_0: u32 = 16;
/// Last architecture-specific VIRQ.
pub const VIRQ_ARCH_7: u32 = 23;
/// VIRQs are below this.
pub const NR_VIRQS: u32 = 24;

/// Whether a VIRQ is per-vCPU (bindable once per vCPU) rather than global.
pub const fn virq_is_per_vcpu(virq: u32) -> bool {
    matches!(virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_XENOPROF | VIRQ_XENPMU)
}

/// Name of a VIRQ.
pub const fn virq_name(virq: u32) -> Option<&'static str> {
    Some(match virq {
        VIRQ_TIMER => "timer",
        VIRQ_DEBUG => "debug",
        VIRQ_CONSOLE => "console",
        VIRQ_DOM_EXC => "dom_exc",
        VIRQ_TBUF => "tbuf",
        VIRQ_DEBUGGER => "debugger",
        VIRQ_XENOPROF => "xenoprof",
        VIRQ_CON_RING => "con_ring",
        VIRQ_PCPU_STATE => "pcpu_state",
        VIRQ_MEM_EVENT => "mem_event",
        VIRQ_ARGO => "argo",
        VIRQ_ENOMEM => "enomem",
        VIRQ_XENPMU => "xenpmu",
        VIRQ_ARCH_0..=VIRQ_ARCH_7 => "arch",
        _ => return None,
    })
}

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    /// IN: allocating domain.
    pub dom: u16,
    /// IN: domain allowed to bind.
    pub remote_dom: u16,
    /// OUT: the new port.
    pub port: EvtchnPort,
}
impl_pod!(EvtchnAllocUnbound { u16, u16, u32 });
const _: () = assert!(size_of::<EvtchnAllocUnbound>() == 8);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, port) == 4);

/// `struct evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindInterdomain {
    /// IN: remote domain.
    pub remote_dom: u16,
    /// Padding (explicit).
    pub _pad: u16,
    /// IN: remote port.
    pub remote_port: EvtchnPort,
    /// OUT: local port.
    pub local_port: EvtchnPort,
}
impl_pod!(EvtchnBindInterdomain { u16, u16, u32, u32 });
const _: () = assert!(size_of::<EvtchnBindInterdomain>() == 12);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, remote_port) == 4);

/// `struct evtchn_bind_virq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindVirq {
    /// IN: VIRQ.
    pub virq: u32,
    /// IN: vCPU.
    pub vcpu: u32,
    /// OUT: port.
    pub port: EvtchnPort,
}
impl_pod!(EvtchnBindVirq { u32, u32, u32 });
const _: () = assert!(size_of::<EvtchnBindVirq>() == 12);

/// `struct evtchn_bind_pirq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindPirq {
    /// IN: physical IRQ.
    pub pirq: u32,
    /// IN: `BIND_PIRQ__WILL_SHARE`.
    pub flags: u32,
    /// OUT: port.
    pub port: EvtchnPort,
}
impl_pod!(EvtchnBindPirq { u32, u32, u32 });
const _: () = assert!(size_of::<EvtchnBindPirq>() == 12);
/// `EvtchnBindPirq::flags`: the IRQ may be shared.
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

/// `struct evtchn_bind_ipi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindIpi {
    /// IN: vCPU to notify.
    pub vcpu: u32,
    /// OUT: port.
    pub port: EvtchnPort,
}
impl_pod!(EvtchnBindIpi { u32, u32 });
const _: () = assert!(size_of::<EvtchnBindIpi>() == 8);

/// `struct evtchn_close`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnClose {
    /// IN: port.
    pub port: EvtchnPort,
}
impl_pod!(EvtchnClose { u32 });
const _: () = assert!(size_of::<EvtchnClose>() == 4);

/// `struct evtchn_send`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnSend {
    /// IN: port.
    pub port: EvtchnPort,
}
impl_pod!(EvtchnSend { u32 });
const _: () = assert!(size_of::<EvtchnSend>() == 4);

/// Port is free.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// Allocated, waiting for a remote binding.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// Connected to a remote domain.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// Bound to a physical IRQ.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// Bound to a VIRQ.
pub const EVTCHNSTAT_VIRQ: u32 = 4;
/// Bound to an IPI.
pub const EVTCHNSTAT_IPI: u32 = 5;

/// `struct evtchn_status` (24 bytes). The trailing C union `u` is kept as two raw words:
/// unbound `{dom}` = low u16 of `u0`; interdomain `{dom, port}` = low u16 of `u0`, `u1`;
/// pirq / virq = `u0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnStatus {
    /// IN: domain.
    pub dom: u16,
    /// Padding (explicit).
    pub _pad: u16,
    /// IN: port.
    pub port: EvtchnPort,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: vCPU notified.
    pub vcpu: u32,
    /// OUT: union word 0.
    pub u0: u32,
    /// OUT: union word 1.
    pub u1: u32,
}
impl_pod!(EvtchnStatus {
    u16,
    u16,
    u32,
    u32,
    u32,
    u32,
    u32
});
const _: () = assert!(size_of::<EvtchnStatus>() == 24);
const _: () = assert!(offset_of!(EvtchnStatus, status) == 8);
const _: () = assert!(offset_of!(EvtchnStatus, u0) == 16);

impl EvtchnStatus {
    /// Fill the union for `EVTCHNSTAT_unbound`.
    pub fn set_unbound(&mut self, remote_dom: u16) {
        self.u0 = remote_dom as u32;
        self.u1 = 0;
    }
    /// Fill the union for `EVTCHNSTAT_interdomain`.
    pub fn set_interdomain(&mut self, dom: u16, port: EvtchnPort) {
        self.u0 = dom as u32;
        self.u1 = port;
    }
    /// Fill the union for `EVTCHNSTAT_pirq` / `EVTCHNSTAT_virq`.
    pub fn set_irq(&mut self, irq: u32) {
        self.u0 = irq;
        self.u1 = 0;
    }
}

/// `struct evtchn_bind_vcpu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindVcpu {
    /// IN: port.
    pub port: EvtchnPort,
    /// IN: vCPU.
    pub vcpu: u32,
}
impl_pod!(EvtchnBindVcpu { u32, u32 });
const _: () = assert!(size_of::<EvtchnBindVcpu>() == 8);

/// `struct evtchn_unmask`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnUnmask {
    /// IN: port.
    pub port: EvtchnPort,
}
impl_pod!(EvtchnUnmask { u32 });
const _: () = assert!(size_of::<EvtchnUnmask>() == 4);

/// `struct evtchn_reset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnReset {
    /// IN: domain.
    pub dom: u16,
}
impl_pod!(EvtchnReset { u16 });
const _: () = assert!(size_of::<EvtchnReset>() == 2);

/// `struct evtchn_init_control` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnInitControl {
    /// IN: frame of the control block.
    pub control_gfn: u64,
    /// IN: offset of the control block in the frame.
    pub offset: u32,
    /// IN: vCPU.
    pub vcpu: u32,
    /// OUT: link bits.
    pub link_bits: u8,
    /// Padding.
    pub _pad: [u8; 7],
}
impl_pod!(EvtchnInitControl { u64, u32, u32, u8, [u8; 7] });
const _: () = assert!(size_of::<EvtchnInitControl>() == 24);
const _: () = assert!(offset_of!(EvtchnInitControl, link_bits) == 16);

/// `struct evtchn_expand_array`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnExpandArray {
    /// IN: frame of the new event array page.
    pub array_gfn: u64,
}
impl_pod!(EvtchnExpandArray { u64 });
const _: () = assert!(size_of::<EvtchnExpandArray>() == 8);

/// `struct evtchn_set_priority`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnSetPriority {
    /// IN: port.
    pub port: EvtchnPort,
    /// IN: priority (0 highest .. 15 lowest).
    pub priority: u32,
}
impl_pod!(EvtchnSetPriority { u32, u32 });
const _: () = assert!(size_of::<EvtchnSetPriority>() == 8);

/// Size of the argument structure for sub-op `op`, for copy-in/copy-out.
pub const fn arg_size(op: u32) -> Option<usize> {
    Some(match op {
        EVTCHNOP_BIND_INTERDOMAIN => size_of::<EvtchnBindInterdomain>(),
        EVTCHNOP_BIND_VIRQ => size_of::<EvtchnBindVirq>(),
        EVTCHNOP_BIND_PIRQ => size_of::<EvtchnBindPirq>(),
        EVTCHNOP_CLOSE => size_of::<EvtchnClose>(),
        EVTCHNOP_SEND => size_of::<EvtchnSend>(),
        EVTCHNOP_STATUS => size_of::<EvtchnStatus>(),
        EVTCHNOP_ALLOC_UNBOUND => size_of::<EvtchnAllocUnbound>(),
        EVTCHNOP_BIND_IPI => size_of::<EvtchnBindIpi>(),
        EVTCHNOP_BIND_VCPU => size_of::<EvtchnBindVcpu>(),
        EVTCHNOP_UNMASK => size_of::<EvtchnUnmask>(),
        EVTCHNOP_RESET => size_of::<EvtchnReset>(),
        EVTCHNOP_INIT_CONTROL => size_of::<EvtchnInitControl>(),
        EVTCHNOP_EXPAND_ARRAY => size_of::<EvtchnExpandArray>(),
        EVTCHNOP_SET_PRIORITY => size_of::<EvtchnSetPriority>(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Pod;

    #[test]
    fn numbers_match_event_channel_h() {
        assert_eq!(EVTCHNOP_BIND_INTERDOMAIN, 0);
        assert_eq!(EVTCHNOP_SEND, 4);
        assert_eq!(EVTCHNOP_ALLOC_UNBOUND, 6);
        assert_eq!(EVTCHNOP_UNMASK, 9);
        assert_eq!(EVTCHNOP_INIT_CONTROL, 11);
        assert_eq!(name(13), Some("set_priority"));
        assert_eq!(name(14), None);
        assert_eq!(NR_EVENT_CHANNELS, 64 * 64);
    }

    #[test]
    fn virqs_match_xen_h() {
        assert_eq!(
            (VIRQ_TIMER, VIRQ_DEBUG, VIRQ_CONSOLE, VIRQ_DOM_EXC),
            (0, 1, 2, 3)
        );
        assert_eq!(virq_name(5), None);
        assert_eq!(virq_name(0), Some("timer"));
        assert_eq!(virq_name(24), None);
        assert!(virq_is_per_vcpu(VIRQ_TIMER));
        assert!(!virq_is_per_vcpu(VIRQ_CONSOLE));
    }

    #[test]
    fn port_bitmap_position() {
        assert_eq!(port_word_bit(0), Some((0, 0)));
        assert_eq!(port_word_bit(65), Some((1, 1)));
        assert_eq!(port_word_bit(4095), Some((63, 63)));
        assert_eq!(port_word_bit(4096), None);
    }

    #[test]
    fn argument_layouts() {
        let b = [0xf0, 0x7f, 0, 0, 9, 0, 0, 0];
        let a = EvtchnAllocUnbound::from_bytes(&b).unwrap();
        assert_eq!((a.dom, a.remote_dom, a.port), (0x7ff0, 0, 9));
        let mut s = EvtchnStatus::default();
        s.set_interdomain(0, 7);
        assert_eq!(&s.as_bytes()[16..24], &[0, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(arg_size(EVTCHNOP_STATUS), Some(24));
        assert_eq!(arg_size(EVTCHNOP_BIND_INTERDOMAIN), Some(12));
        assert_eq!(arg_size(EVTCHNOP_RESET), Some(2));
        assert_eq!(arg_size(99), None);
    }
}
