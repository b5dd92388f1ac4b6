//! kxen guest kit: the runtime of kxen's own 64-bit Xen PV test kernels.
//!
//! A guest is one `#![no_std] #![no_main]` file that includes this directory as a module
//! (`#[macro_use] #[path = "kit/mod.rs"] mod kit;`), invokes [`xen_notes!`] once and
//! defines `fn kmain(si: &'static kit::abi::StartInfo)`. See resources/guests/README.md.

#![allow(dead_code, unused_macros)]

/// `print!` over CONSOLEIO_write, buffered per line.
macro_rules! print {
    ($($arg:tt)*) => { $crate::kit::console::print_fmt(format_args!($($arg)*)) };
}

/// `println!` over CONSOLEIO_write.
macro_rules! println {
    () => { $crate::kit::console::print_fmt(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::kit::console::print_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `check!(name, cond)` or `check!(name, cond, "reason {}", args...)`: prints
/// `KXEN-TEST: PASS name` or `KXEN-TEST: FAIL name: reason` and returns `cond`.
macro_rules! check {
    ($name:expr, $cond:expr $(,)?) => {
        $crate::kit::test::record($name, $cond, format_args!("{}", stringify!($cond)))
    };
    ($name:expr, $cond:expr, $($fmt:tt)+) => {
        $crate::kit::test::record($name, $cond, format_args!($($fmt)+))
    };
}

/// `check_eq!(name, got, expected)`: PASS when equal, else FAIL with both values (decimal
/// and hex).
macro_rules! check_eq {
    ($name:expr, $got:expr, $want:expr $(,)?) => {{
        let got = $got;
        let want = $want;
        $crate::kit::test::record(
            $name,
            got == want,
            format_args!(
                "got {:?} ({:#x?}), expected {:?} ({:#x?})",
                got, got, want, want
            ),
        )
    }};
}

/// `value!(name, "fmt", args...)`: prints `KXEN-TEST: VALUE name=<formatted>`.
macro_rules! value {
    ($name:expr, $($fmt:tt)+) => {
        $crate::kit::test::value($name, format_args!($($fmt)+))
    };
}

/// Emit the guest's Xen ELF notes (section `.note.Xen`, PT_NOTE). Invoke exactly once:
/// `xen_notes!()`, `xen_notes!(features = "...")` or
/// `xen_notes!(features = "...", supported = 0x801)` (SUPPORTED_FEATURES, one u32 word).
macro_rules! xen_notes {
    () => {
        core::arch::global_asm!($crate::kit::xen_note_base!());
    };
    (features = $f:literal $(,)?) => {
        core::arch::global_asm!(
            $crate::kit::xen_note_base!(),
            $crate::kit::xen_note_str!(10, $f),
        );
    };
    (features = $f:literal, supported = $s:literal $(,)?) => {
        core::arch::global_asm!(
            $crate::kit::xen_note_base!(),
            $crate::kit::xen_note_str!(10, $f),
            $crate::kit::xen_note_u32!(17, $s),
        );
    };
    (supported = $s:literal $(,)?) => {
        core::arch::global_asm!(
            $crate::kit::xen_note_base!(),
            $crate::kit::xen_note_u32!(17, $s),
        );
    };
}

// One ELF note named "Xen" (public/elfnote.h); 4-byte aligned as Xen's libelf reads them.
macro_rules! xen_note_begin {
    ($ty:literal) => {
        concat!(
            ".pushsection .note.Xen, \"a\", @note\n",
            ".balign 4\n",
            ".long 4\n",
            ".long 9f - 8f\n",
            ".long ",
            stringify!($ty),
            "\n",
            ".asciz \"Xen\"\n",
            "8:\n"
        )
    };
}
macro_rules! xen_note_end {
    () => {
        "9:\n.balign 4\n.popsection\n"
    };
}
macro_rules! xen_note_str {
    ($ty:literal, $s:literal) => {
        concat!(
            $crate::kit::xen_note_begin!($ty),
            ".asciz \"",
            $s,
            "\"\n",
            $crate::kit::xen_note_end!()
        )
    };
}
macro_rules! xen_note_quad {
    ($ty:literal, $v:literal) => {
        concat!(
            $crate::kit::xen_note_begin!($ty),
            ".quad ",
            $v,
            "\n",
            $crate::kit::xen_note_end!()
        )
    };
}
macro_rules! xen_note_u32 {
    ($ty:literal, $v:literal) => {
        concat!(
            $crate::kit::xen_note_begin!($ty),
            ".long ",
            stringify!($v),
            "\n",
            $crate::kit::xen_note_end!()
        )
    };
}
// The notes every kit guest carries: GUEST_OS, GUEST_VERSION, XEN_VERSION, LOADER,
// VIRT_BASE, PADDR_OFFSET, ENTRY, HYPERCALL_PAGE.
macro_rules! xen_note_base {
    () => {
        concat!(
            $crate::kit::xen_note_str!(6, "kxen-kit"),
            $crate::kit::xen_note_str!(7, "0.1"),
            $crate::kit::xen_note_str!(5, "xen-3.0"),
            $crate::kit::xen_note_str!(8, "generic"),
            $crate::kit::xen_note_quad!(3, "0xffffffff80000000"),
            $crate::kit::xen_note_quad!(4, "0"),
            $crate::kit::xen_note_quad!(1, "kit_entry"),
            $crate::kit::xen_note_quad!(2, "hypercall_page"),
        )
    };
}
#[allow(unused_imports)]
pub(crate) use {
    xen_note_base, xen_note_begin, xen_note_end, xen_note_quad, xen_note_str, xen_note_u32,
};

pub mod abi;
pub mod console;
pub mod events;
pub mod hypercall;
pub mod layout;
pub mod pure;
pub mod rt;
pub mod smp;
pub mod test;
pub mod time;
pub mod traps;

use abi::StartInfo;

/// Registers as found at the entry point, captured before anything else runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rflags: u64,
}

/// Lives in .data (not .bss) so that zeroing .bss does not erase it.
#[no_mangle]
#[link_section = ".data.kit_entry_regs"]
static mut kit_entry_regs: EntryRegs = EntryRegs {
    rax: 0,
    rbx: 0,
    rcx: 0,
    rdx: 0,
    rsi: 0,
    rdi: 0,
    rbp: 0,
    rsp: 0,
    r8: 0,
    r9: 0,
    r10: 0,
    r11: 0,
    r12: 0,
    r13: 0,
    r14: 0,
    r15: 0,
    rflags: 0,
};

/// The kit's own kernel stack (Xen's boot stack is a single page).
const KIT_STACK_SIZE: usize = 64 * 1024;
#[repr(C, align(16))]
struct Stack([u8; KIT_STACK_SIZE]);
#[no_mangle]
static mut kit_stack: Stack = Stack([0; KIT_STACK_SIZE]);

// Start of day (public/xen.h, xen-abi-facts.md): rip = ENTRY, rsi = start_info's virtual
// address, rsp = top of the boot-stack page, rflags 0x202, other GPRs 0, CPL3, events
// masked. Capture every register first, then zero .bss, switch to the kit stack and call
// `kit_start(start_info)`.
core::arch::global_asm!(
    ".pushsection .text.kit_entry, \"ax\"",
    ".globl kit_entry",
    ".type kit_entry, @function",
    "kit_entry:",
    "mov %rax, kit_entry_regs+0(%rip)",
    "mov %rbx, kit_entry_regs+8(%rip)",
    "mov %rcx, kit_entry_regs+16(%rip)",
    "mov %rdx, kit_entry_regs+24(%rip)",
    "mov %rsi, kit_entry_regs+32(%rip)",
    "mov %rdi, kit_entry_regs+40(%rip)",
    "mov %rbp, kit_entry_regs+48(%rip)",
    "mov %rsp, kit_entry_regs+56(%rip)",
    "mov %r8, kit_entry_regs+64(%rip)",
    "mov %r9, kit_entry_regs+72(%rip)",
    "mov %r10, kit_entry_regs+80(%rip)",
    "mov %r11, kit_entry_regs+88(%rip)",
    "mov %r12, kit_entry_regs+96(%rip)",
    "mov %r13, kit_entry_regs+104(%rip)",
    "mov %r14, kit_entry_regs+112(%rip)",
    "mov %r15, kit_entry_regs+120(%rip)",
    "pushfq",
    "pop %rax",
    "mov %rax, kit_entry_regs+128(%rip)",
    "cld",
    "lea __bss_start(%rip), %rdi",
    "lea __bss_end(%rip), %rcx",
    "sub %rdi, %rcx",
    "xor %eax, %eax",
    "rep stosb",
    "lea kit_stack+{stack}(%rip), %rsp",
    "xor %ebp, %ebp",
    "mov kit_entry_regs+32(%rip), %rdi",
    "call kit_start",
    "ud2",
    ".size kit_entry, . - kit_entry",
    ".popsection",
    // The hypercall page: page-aligned in .text, int3-filled; the VMM overwrites it.
    ".pushsection .text.hypercall_page, \"ax\"",
    ".balign 4096",
    ".globl hypercall_page",
    ".type hypercall_page, @object",
    "hypercall_page:",
    ".fill 4096, 1, 0xcc",
    ".size hypercall_page, 4096",
    ".popsection",
    stack = const KIT_STACK_SIZE,
    options(att_syntax),
);

const _: () = assert!(core::mem::size_of::<EntryRegs>() == 17 * 8);

static START_INFO: rt::Global<usize> = rt::Global::new(0);

#[no_mangle]
extern "C" fn kit_start(si: *const StartInfo) -> ! {
    START_INFO.set(si as usize);
    // SAFETY: Xen's contract: rsi holds the virtual address of the start_info page, mapped
    // for the guest. A VMM that breaks it makes this read fault, which is the test outcome.
    let si: &'static StartInfo = unsafe { &*si };
    // Install the kit's trap table so that an unexpected exception prints a PANIC line
    // instead of silently killing the domain. A VMM without set_trap_table yet answers
    // -ENOSYS, which is ignored here (the traps guest checks it).
    traps::install();
    crate::kmain(si);
    test::finish()
}

/// The registers captured at the entry point.
pub fn entry_regs() -> EntryRegs {
    // SAFETY: written once by kit_entry before any Rust code runs, read-only afterwards.
    unsafe { core::ptr::read_volatile(&raw const kit_entry_regs) }
}

/// The start_info page handed over at entry.
pub fn start_info() -> &'static StartInfo {
    // SAFETY: set by kit_start before kmain from the pointer Xen passed; see kit_start.
    unsafe { &*(START_INFO.get() as *const StartInfo) }
}

/// First byte after the image (page-aligned `_end` from the linker script).
pub fn image_end() -> u64 {
    extern "C" {
        static _end: u8;
    }
    (&raw const _end) as u64
}
