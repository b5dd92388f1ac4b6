//! A ptrace "mini-Xen" that runs hosted builds of the kit guests (`--cfg kxen_hosted`,
//! linked at 0x40200000) as ordinary Linux processes, without KVM.
//!
//! It proves the guest side of the kit — notes, entry, hypercall wrappers and page layout,
//! console buffering, the test protocol, trap stubs and the iret frame — against Xen's
//! conventions, independently of kxen. It is NOT a model of Xen: only the hypercalls the
//! guests use are answered, with Xen's errnos; the start-of-day layout follows
//! xg_dom_x86.c's order for a 16 MiB domU.
//!
//! How: the child is started under `PTRACE_SYSEMU`, so every `syscall` (the hypercall
//! page's instruction) stops it without entering Linux. Before it runs, the harness maps
//! the guest RAM (injected mmap syscalls), writes Xen's hypercall page, the p2m, start_info,
//! page tables and M2P, and sets Xen's entry registers; then it answers each hypercall
//! from rax/rdi.. and turns SIGILL/SIGTRAP/SIGSEGV/SIGFPE into Xen bounce frames for the
//! guest's trap table.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::FileExt;

const ENOSYS: i64 = 38;
const EFAULT: i64 = 14;
const EINVAL: i64 = 22;
const STEP_LIMIT: u32 = 1_000_000;

/// Errors of the harness itself (not of the guest).
#[derive(Debug, thiserror::Error)]
pub enum HostedError {
    #[error("guest image {0}: {1}")]
    Image(String, &'static str),
    #[error("ptrace unavailable here: {0}")]
    Ptrace(String),
    #[error("guest memory access: {0}")]
    Memory(#[from] std::io::Error),
}

/// What a hosted guest did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Everything written with CONSOLEIO_write.
    pub console: String,
    /// The SCHEDOP_shutdown reason, if the guest shut down.
    pub shutdown: Option<u32>,
    /// Exceptions bounced to the guest's trap table.
    pub traps_bounced: u32,
    /// Why the run ended without a shutdown (unhandled exception, exit, step limit).
    pub abnormal: Option<String>,
}

struct Child {
    pid: i32,
    mem: File,
    traps: [u64; 256],
    out: Vec<u8>,
    shutdown: Option<u32>,
    /// Guest pages mapped read-only by its page tables (the page-table frames).
    read_only: std::ops::Range<u64>,
    /// XENMEM_machphys_mapping answer: v_start, v_end, max_mfn.
    m2p: [u64; 3],
}

fn canonical(v: u64) -> bool {
    let top = (v as i64) >> 47;
    top == 0 || top == -1
}

impl Child {
    /// Xen's guest-access rule: canonical, outside Xen's slots 256-271, and mapped.
    fn range_ok(a: u64, n: u64) -> bool {
        let Some(end) = a.checked_add(n) else {
            return false;
        };
        let last = end.saturating_sub(1).max(a);
        canonical(a)
            && canonical(last)
            && !(0xffff_8000_0000_0000..0xffff_8800_0000_0000).contains(&a)
            && !(0xffff_8000_0000_0000..0xffff_8800_0000_0000).contains(&last)
    }

    fn read(&self, a: u64, n: usize) -> Option<Vec<u8>> {
        if !Self::range_ok(a, n as u64) {
            return None;
        }
        let mut b = vec![0; n];
        self.mem.read_exact_at(&mut b, a).ok()?;
        Some(b)
    }

    /// Writes honour the mapping's permissions (a ptracer could write read-only pages).
    fn write(&self, a: u64, b: &[u8]) -> bool {
        let n = b.len() as u64;
        Self::range_ok(a, n)
            && !(a < self.read_only.end && a.saturating_add(n) > self.read_only.start)
            && self.writable(a, n)
            && self.mem.write_all_at(b, a).is_ok()
    }

    fn writable(&self, a: u64, n: u64) -> bool {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)) else {
            return false;
        };
        maps.lines().any(|l| {
            let mut it = l.split_whitespace();
            let (Some(range), Some(perm)) = (it.next(), it.next()) else {
                return false;
            };
            let Some((lo, hi)) = range.split_once('-') else {
                return false;
            };
            let lo = u64::from_str_radix(lo, 16).unwrap_or(u64::MAX);
            let hi = u64::from_str_radix(hi, 16).unwrap_or(0);
            perm.starts_with("rw") && lo <= a && a.saturating_add(n) <= hi
        })
    }

    fn u64_at(&self, a: u64) -> Option<u64> {
        self.read(a, 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    fn hypercall(&mut self, nr: u64, a: [u64; 5]) -> i64 {
        match nr {
            // console_io: write returns 0 (Xen's drivers/char/console.c).
            18 => match a[0] {
                0 => match self.read(a[2], a[1] as u32 as usize) {
                    Some(b) => {
                        self.out.extend(b);
                        0
                    }
                    None => -EFAULT,
                },
                _ => -ENOSYS,
            },
            17 => self.xen_version(a[0], a[1]),
            29 => match a[0] {
                2 => match self.read(a[1], 4) {
                    Some(r) => {
                        self.shutdown = Some(u32::from_le_bytes([r[0], r[1], r[2], r[3]]));
                        0
                    }
                    None => -EFAULT,
                },
                _ => -ENOSYS,
            },
            0 => self.set_trap_table(a[0]),
            // memory_op(XENMEM_machphys_mapping)
            12 if a[0] == 12 => {
                let b: Vec<u8> = self.m2p.iter().flat_map(|v| v.to_le_bytes()).collect();
                if self.write(a[1], &b) {
                    0
                } else {
                    -EFAULT
                }
            }
            13 => self.multicall(a[0], a[1]),
            _ => -ENOSYS,
        }
    }

    fn xen_version(&mut self, cmd: u64, arg: u64) -> i64 {
        let string = |s: &[u8], n: usize| {
            let mut v = s.to_vec();
            v.resize(n, 0);
            v
        };
        let ok = |w: bool| if w { 0 } else { -EFAULT };
        match cmd {
            0 => (4 << 16) | 20,
            1 => ok(self.write(arg, &string(b"-hosted", 16))),
            3 => ok(self.write(arg, &string(b"xen-3.0-x86_64", 1024))),
            6 => match self.read(arg, 4) {
                None => -EFAULT,
                Some(i) if i != [0, 0, 0, 0] => -EINVAL,
                Some(_) => ok(self.write(arg + 4, &0x801u32.to_le_bytes())),
            },
            7 if arg != 0 => -EINVAL,
            7 => 4096,
            _ => -ENOSYS,
        }
    }

    fn set_trap_table(&mut self, mut p: u64) -> i64 {
        loop {
            let Some(e) = self.read(p, 16) else {
                return -EFAULT;
            };
            let addr = u64::from_le_bytes(e[8..16].try_into().unwrap_or([0; 8]));
            if addr == 0 {
                return 0;
            }
            if !canonical(addr) {
                return -EINVAL;
            }
            self.traps[usize::from(e[0])] = addr;
            p += 16;
        }
    }

    fn multicall(&mut self, list: u64, count: u64) -> i64 {
        for i in 0..count {
            let at = list.wrapping_add(i.wrapping_mul(64));
            let Some(e) = self.read(at, 64) else {
                return -EFAULT;
            };
            let w = |k: usize| u64::from_le_bytes(e[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8]));
            let r = self.hypercall(w(0), [w(2), w(3), w(4), w(5), w(6)]);
            if !self.write(at + 8, &r.to_le_bytes()) {
                return -EFAULT;
            }
            if self.shutdown.is_some() {
                break;
            }
        }
        0
    }
}

fn xen_note_u64(elf: &[u8], ty: u32) -> Option<u64> {
    let notes = crate::xen_notes(elf)?;
    let (_, d) = notes.into_iter().rev().find(|(t, _)| *t == ty)?;
    Some(u64::from_le_bytes(d.get(..8)?.try_into().ok()?))
}

fn get_regs(pid: i32) -> libc::user_regs_struct {
    // SAFETY: user_regs_struct is plain data; all-zero is a valid value.
    let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our stopped tracee; PTRACE_GETREGS fills `r`.
    unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut r) };
    r
}

fn set_regs(pid: i32, r: &libc::user_regs_struct) {
    // SAFETY: `pid` is our stopped tracee; PTRACE_SETREGS reads `r`.
    unsafe { libc::ptrace(libc::PTRACE_SETREGS, pid, 0, r) };
}

/// Xen's hypercall page for a 64-bit PV guest (see kit::pure::expected_hypercall_entry).
fn hypercall_page() -> Vec<u8> {
    (0..128u32)
        .flat_map(crate::kit_pure::expected_hypercall_entry)
        .collect()
}

/// Hosted VIRT_BASE (kit/abi.rs with `kxen_hosted`).
const VIRT_BASE: u64 = 0x4000_0000;
/// Guest RAM in pages (16 MiB).
const NR_PAGES: u64 = 4096;
/// Where the harness puts the M2P table.
const M2P_BASE: u64 = 0x5000_0000;

fn round_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Make the tracee run one real Linux syscall (used before the guest starts, to map its
/// RAM): point rip at a `syscall` instruction and step over it with PTRACE_SYSCALL.
fn inject_syscall(pid: i32, syscall_insn: u64, nr: i64, args: [u64; 6]) -> i64 {
    let saved = get_regs(pid);
    let mut r = saved;
    r.rax = nr as u64;
    r.orig_rax = nr as u64;
    (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) =
        (args[0], args[1], args[2], args[3], args[4], args[5]);
    r.rip = syscall_insn;
    set_regs(pid, &r);
    let mut status = 0;
    for _ in 0..2 {
        // SAFETY: step our stopped tracee to its syscall entry, then exit stop.
        unsafe {
            libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, 0);
            libc::waitpid(pid, &mut status, 0);
        }
    }
    let res = get_regs(pid).rax as i64;
    set_regs(pid, &saved);
    res
}

/// Where things landed; see [`build_start_of_day`].
struct StartOfDay {
    start_info: u64,
    boot_stack_top: u64,
}

/// Build Xen's PV start-of-day layout (xg_dom_x86.c order) in the tracee: image, p2m list,
/// start_info, xenstore and console pages, page tables (L4, L3, L2, L1s; identity frames,
/// page-table frames read-only), one boot-stack page, the mapping rounded to 4 MiB with at
/// least 512 KiB spare; plus an identity M2P.
fn build_start_of_day(c: &mut Child, elf: &[u8], hc_page: u64) -> Result<StartOfDay, HostedError> {
    let bad = |what| HostedError::Image("hosted guest".into(), what);
    // Image extent from the PT_LOADs.
    let phoff = u64::from_le_bytes(
        elf.get(32..40)
            .ok_or(bad("short ELF"))?
            .try_into()
            .unwrap_or([0; 8]),
    ) as usize;
    let phnum = usize::from(u16::from_le_bytes([elf[56], elf[57]]));
    let (mut kstart, mut kend) = (u64::MAX, 0u64);
    for i in 0..phnum {
        let ph = elf
            .get(phoff + i * 56..phoff + (i + 1) * 56)
            .ok_or(bad("short phdrs"))?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != 1 {
            continue;
        }
        let f = |o: usize| u64::from_le_bytes(ph[o..o + 8].try_into().unwrap_or([0; 8]));
        kstart = kstart.min(f(16));
        kend = kend.max(f(16) + f(40));
    }
    let kend = round_up(kend, 4096);
    let mfn_list = kend;
    let start_info = round_up(mfn_list + NR_PAGES * 8, 4096);
    let pt_base = start_info + 3 * 4096;
    // Page tables for [VIRT_BASE, end): one L4, one L3, one L2, one L1 per 2 MiB.
    let extra = 1 + 128;
    let mut pages = extra;
    let (end, nr_pt) = loop {
        let end = round_up(pt_base + pages * 4096, 4 << 20);
        let nr_pt = 3 + (end - VIRT_BASE) / (2 << 20);
        if pt_base + (nr_pt + extra) * 4096 <= end {
            break (end, nr_pt);
        }
        pages = nr_pt + extra;
    };
    let boot_stack_top = pt_base + (nr_pt + 1) * 4096;

    // Map the guest RAM around the image, and the M2P.
    let syscall_insn = hc_page + 8; // entry 0: push, push, mov $0,%eax, then syscall
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let m2p_len = round_up(NR_PAGES * 8, 4096);
    for (lo, hi) in [
        (VIRT_BASE, kstart),
        (kend, end),
        (M2P_BASE, M2P_BASE + m2p_len),
    ] {
        let args = [lo, hi - lo, prot, flags, u64::MAX, 0];
        if inject_syscall(c.pid, syscall_insn, libc::SYS_mmap, args) != lo as i64 {
            return Err(HostedError::Ptrace("mmap in the tracee failed".into()));
        }
    }
    let ident: Vec<u8> = (0..NR_PAGES).flat_map(u64::to_le_bytes).collect();
    c.mem.write_all_at(&ident, mfn_list)?;
    c.mem.write_all_at(&ident, M2P_BASE)?;
    c.m2p = [M2P_BASE, M2P_BASE + m2p_len, NR_PAGES - 1];

    let pfn = |va: u64| (va - VIRT_BASE) / 4096;
    let mut si = vec![0u8; 4096];
    let mut put = |off: usize, v: u64| si[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(32, NR_PAGES);
    put(40, (NR_PAGES + 16) << 12); // shared_info: a machine address outside RAM
    put(56, pfn(start_info) + 1);
    put(64, 1); // store_evtchn
    put(72, pfn(start_info) + 2);
    put(80, 2); // console_evtchn
    put(88, pt_base);
    put(96, nr_pt);
    put(104, mfn_list);
    si[..14].copy_from_slice(b"xen-3.0-x86_64");
    si[128..140].copy_from_slice(b"console=hvc0");
    c.mem.write_all_at(&si, start_info)?;

    // Page tables: L4 at pt_base, then L3, L2, L1s; entries name frames (pfn == mfn).
    let upper = 0x67; // P|RW|US|A|D
    let (l4, l3, l2) = (pt_base, pt_base + 4096, pt_base + 2 * 4096);
    let idx = |va: u64, level: u32| ((va >> (12 + 9 * (level - 1))) & 511) * 8;
    c.mem.write_all_at(
        &((pfn(l3) << 12) | upper).to_le_bytes(),
        l4 + idx(VIRT_BASE, 4),
    )?;
    c.mem.write_all_at(
        &((pfn(l2) << 12) | upper).to_le_bytes(),
        l3 + idx(VIRT_BASE, 3),
    )?;
    let nr_l1 = nr_pt - 3;
    for i in 0..nr_l1 {
        let l1 = pt_base + (3 + i) * 4096;
        let va = VIRT_BASE + i * (2 << 20);
        c.mem
            .write_all_at(&((pfn(l1) << 12) | upper).to_le_bytes(), l2 + idx(va, 2))?;
        let mut t = Vec::with_capacity(4096);
        for k in 0..512u64 {
            let page = pfn(va) + k;
            let is_pt = (pfn(pt_base)..pfn(pt_base) + nr_pt).contains(&page);
            let flags = if is_pt { 0x21 } else { 0x23 }; // P|A, RW unless a page table
            t.extend_from_slice(&((page << 12) | flags).to_le_bytes());
        }
        c.mem.write_all_at(&t, l1)?;
    }
    c.read_only = pt_base..pt_base + nr_pt * 4096;
    Ok(StartOfDay {
        start_info,
        boot_stack_top,
    })
}

/// Run the hosted guest at `path` to its shutdown (or failure).
pub fn run(path: &str) -> Result<Outcome, HostedError> {
    let elf = std::fs::read(path)?;
    let hc_page =
        xen_note_u64(&elf, 2).ok_or(HostedError::Image(path.into(), "no HYPERCALL_PAGE note"))?;
    let cpath = CString::new(path).map_err(|_| HostedError::Image(path.into(), "NUL in path"))?;

    // SAFETY: fork in a test process; the child only calls async-signal-safe functions
    // (ptrace, execve, _exit) before exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(HostedError::Ptrace(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    if pid == 0 {
        let argv = [cpath.as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: in the forked child: become a tracee and exec the guest; _exit on failure.
        // Never exec untraced: the guest's `syscall`s would reach Linux.
        unsafe {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                libc::_exit(126);
            }
            libc::execve(cpath.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFSTOPPED(status) {
        return Err(HostedError::Ptrace(format!(
            "child did not stop at exec: {status:#x}"
        )));
    }
    let opts = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL;
    // SAFETY: `pid` is our stopped tracee.
    unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts) };
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    let mut c = Child {
        pid,
        mem,
        traps: [0; 256],
        out: Vec::new(),
        shutdown: None,
        read_only: 0..0,
        m2p: [0; 3],
    };
    c.mem.write_all_at(&hypercall_page(), hc_page)?;

    let layout = build_start_of_day(&mut c, &elf, hc_page)?;
    let mut r = get_regs(pid);
    (r.rax, r.rbx, r.rcx, r.rdx, r.rdi, r.rbp) = (0, 0, 0, 0, 0, 0);
    (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) = (0, 0, 0, 0, 0, 0, 0, 0);
    r.rsi = layout.start_info;
    r.rsp = layout.boot_stack_top;
    r.eflags = 0x202;
    set_regs(pid, &r);

    let mut outcome = Outcome::default();
    let mut sig = 0;
    for _ in 0..STEP_LIMIT {
        // SAFETY: resume our tracee in SYSEMU mode and wait for its next stop.
        unsafe {
            libc::ptrace(libc::PTRACE_SYSEMU, pid, 0, sig);
            libc::waitpid(pid, &mut status, 0);
        }
        sig = 0;
        if !libc::WIFSTOPPED(status) {
            outcome.abnormal = Some(format!("guest process ended: status {status:#x}"));
            break;
        }
        let stop = libc::WSTOPSIG(status);
        let mut r = get_regs(pid);
        if stop == libc::SIGTRAP | 0x80 {
            if r.orig_rax == 23 {
                // iret: rax, r11, rcx, flags, rip, cs, rflags, rsp, ss at rsp.
                let f: Option<Vec<u64>> = (0..9).map(|k| c.u64_at(r.rsp + k * 8)).collect();
                let Some(f) = f else {
                    outcome.abnormal = Some("iret frame unreadable".into());
                    break;
                };
                (r.rax, r.r11, r.rcx, r.rip, r.rsp) = (f[0], f[1], f[2], f[4], f[7]);
            } else {
                r.rax = c.hypercall(r.orig_rax, [r.rdi, r.rsi, r.rdx, r.r10, r.r8]) as u64;
            }
            set_regs(pid, &r);
            if c.shutdown.is_some() {
                break;
            }
            continue;
        }
        // SAFETY: siginfo_t is plain data; PTRACE_GETSIGINFO fills it for our tracee.
        let info = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::ptrace(libc::PTRACE_GETSIGINFO, pid, 0, &mut info);
            info
        };
        // Map the Linux signal back to the x86 exception (and error code) Xen would bounce.
        let (vector, err) = match stop {
            libc::SIGILL => (6, None),
            libc::SIGTRAP => (3, None),
            libc::SIGFPE => (0, None),
            libc::SIGSEGV if info.si_code == 0x80 => (13, Some(0u64)),
            libc::SIGSEGV => (14, Some(0u64)),
            other => {
                sig = other;
                continue;
            }
        };
        let handler = c.traps[vector];
        if handler == 0 {
            outcome.abnormal = Some(format!("unhandled vector {vector} at {:#x}", r.rip));
            break;
        }
        // Xen's bounce frame from guest kernel mode, events masked: rcx, r11, [err], rip,
        // cs (RPL cleared, saved upcall mask 1 in bits 32-39), rflags (IF = !mask), rsp, ss.
        let mut frame = vec![r.rcx, r.r11];
        frame.extend(err);
        frame.extend([r.rip, 0xe030 | (1 << 32), r.eflags & !0x200, r.rsp, 0xe02b]);
        let sp = (r.rsp & !15) - 8 * frame.len() as u64;
        let bytes: Vec<u8> = frame.iter().flat_map(|v| v.to_le_bytes()).collect();
        c.mem.write_all_at(&bytes, sp)?;
        (r.rsp, r.rip) = (sp, handler);
        set_regs(pid, &r);
        outcome.traps_bounced += 1;
    }
    if outcome.abnormal.is_none() && c.shutdown.is_none() {
        outcome.abnormal = Some("step limit reached".into());
    }
    // SAFETY: kill and reap our own tracee.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
    outcome.console = String::from_utf8_lossy(&c.out).into_owned();
    outcome.shutdown = c.shutdown;
    Ok(outcome)
}
