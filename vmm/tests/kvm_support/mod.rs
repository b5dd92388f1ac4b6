//! Shared helpers for the KVM integration tests: a tiny x86-64 assembler and a guest layout
//! with hand-built page tables.
#![allow(dead_code)]

use kxen::memory::PAGE_SIZE;
use kxen::vcpu::{kvm_available, PvEntry, Vcpu, Vm};
use vm_memory::{Bytes, GuestAddress};

/// Skip the calling test (with a one-line reason) when /dev/kvm is absent.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !kxen::vcpu::kvm_available() {
            eprintln!("skipped: /dev/kvm not available");
            return;
        }
    };
}

pub fn have_kvm() -> bool {
    kvm_available()
}

/// Guest virtual layout used by the tests (all in L4 slot 511).
pub const CODE_VA: u64 = 0xffff_ffff_8000_0000;
pub const STACK_VA: u64 = CODE_VA + 0x10000; // one page, RW
pub const STACK_TOP: u64 = STACK_VA + PAGE_SIZE;
pub const DATA_VA: u64 = CODE_VA + 0x11000; // RW
pub const RO_VA: u64 = CODE_VA + 0x12000; // read-only
pub const SUPER_VA: u64 = CODE_VA + 0x13000; // supervisor-only (U=0)
pub const UNMAPPED_VA: u64 = CODE_VA + 0x20000;

const L4_PFN: u64 = 1;
const L3_PFN: u64 = 2;
const L2_PFN: u64 = 3;
pub const L1_PFN: u64 = 4;
pub const CODE_PFN: u64 = 16; // up to 4 pages of code
pub const STACK_PFN: u64 = 20;
pub const DATA_PFN: u64 = 21;
pub const RO_PFN: u64 = 22;
pub const SUPER_PFN: u64 = 23;
pub const GUEST_PAGES: u64 = 64;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const NX: u64 = 1 << 63;

pub struct TestGuest {
    pub vm: Vm,
    pub vcpu: Vcpu,
    pub cr3: u64,
}

impl TestGuest {
    /// Build a VM with `code` at CODE_VA and start the vCPU at CPL3 there.
    pub fn new(code: &[u8]) -> TestGuest {
        Self::with_vcpus(code, 1)
    }

    /// Like `new`, for a VM sized for `nr_vcpus` (only vCPU 0 is created and started).
    pub fn with_vcpus(code: &[u8], nr_vcpus: u32) -> TestGuest {
        assert!(code.len() as u64 <= 4 * PAGE_SIZE);
        let vm = Vm::new(GUEST_PAGES, nr_vcpus).expect("create VM");
        let mem = vm.ram().mem();
        let w = |pfn: u64, idx: u64, v: u64| {
            mem.write_obj(v, GuestAddress(pfn * PAGE_SIZE + idx * 8))
                .unwrap()
        };
        let table = P | RW | US;
        w(L4_PFN, 511, (L3_PFN * PAGE_SIZE) | table);
        for &(slot, e) in vm.ring0().private_l4_entries() {
            w(L4_PFN, slot as u64, e);
        }
        w(L3_PFN, 510, (L2_PFN * PAGE_SIZE) | table);
        w(L2_PFN, 0, (L1_PFN * PAGE_SIZE) | table);
        for i in 0..4 {
            w(L1_PFN, i, ((CODE_PFN + i) * PAGE_SIZE) | P | US);
        }
        w(L1_PFN, 0x10, (STACK_PFN * PAGE_SIZE) | P | RW | US | NX);
        w(L1_PFN, 0x11, (DATA_PFN * PAGE_SIZE) | P | RW | US | NX);
        w(L1_PFN, 0x12, (RO_PFN * PAGE_SIZE) | P | US | NX);
        w(L1_PFN, 0x13, (SUPER_PFN * PAGE_SIZE) | P | RW | NX);
        mem.write_slice(code, GuestAddress(CODE_PFN * PAGE_SIZE))
            .unwrap();
        let mut vcpu = vm.create_vcpu(0).expect("create vCPU");
        let cr3 = L4_PFN * PAGE_SIZE;
        vcpu.set_pv_entry(PvEntry {
            rip: CODE_VA,
            rsp: STACK_TOP,
            rsi: 0x5151,
            cr3,
            rflags: 0x202,
        })
        .expect("set entry");
        TestGuest { vm, vcpu, cr3 }
    }

    pub fn read_data(&self, off: u64) -> u64 {
        self.vm
            .ram()
            .mem()
            .read_obj(GuestAddress(DATA_PFN * PAGE_SIZE + off))
            .unwrap()
    }
}

/// A minimal assembler for the handful of instructions the tests need.
#[derive(Default)]
pub struct Asm {
    pub code: Vec<u8>,
}

#[derive(Clone, Copy)]
pub enum R {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }
    /// Address (guest virtual, code at CODE_VA) of the next instruction.
    pub fn here(&self) -> u64 {
        CODE_VA + self.code.len() as u64
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.code.extend_from_slice(b);
        self
    }
    /// mov reg, imm64
    pub fn mov_imm(&mut self, r: R, imm: u64) -> &mut Self {
        let r = r as u8;
        let rex = 0x48 | (r >> 3);
        self.bytes(&[rex, 0xb8 + (r & 7)]);
        self.bytes(&imm.to_le_bytes())
    }
    /// mov dst, src (64-bit)
    pub fn mov_rr(&mut self, dst: R, src: R) -> &mut Self {
        let (d, s) = (dst as u8, src as u8);
        let rex = 0x48 | ((s >> 3) << 2) | (d >> 3);
        self.bytes(&[rex, 0x89, 0xc0 | ((s & 7) << 3) | (d & 7)])
    }
    /// mov [abs64], rax
    pub fn store_rax(&mut self, addr: u64) -> &mut Self {
        self.bytes(&[0x48, 0xa3]);
        self.bytes(&addr.to_le_bytes())
    }
    /// mov rax, [abs64]
    pub fn load_rax(&mut self, addr: u64) -> &mut Self {
        self.bytes(&[0x48, 0xa1]);
        self.bytes(&addr.to_le_bytes())
    }
    pub fn syscall(&mut self) -> &mut Self {
        self.bytes(&[0x0f, 0x05])
    }
    pub fn ud2(&mut self) -> &mut Self {
        self.bytes(&[0x0f, 0x0b])
    }
    pub fn int3(&mut self) -> &mut Self {
        self.bytes(&[0xcc])
    }
    pub fn int(&mut self, v: u8) -> &mut Self {
        self.bytes(&[0xcd, v])
    }
    /// out %al, $port
    pub fn out_al(&mut self, port: u8) -> &mut Self {
        self.bytes(&[0xe6, port])
    }
    pub fn cli(&mut self) -> &mut Self {
        self.bytes(&[0xfa])
    }
    pub fn inc(&mut self, r: R) -> &mut Self {
        let r = r as u8;
        self.bytes(&[0x48 | (r >> 3), 0xff, 0xc0 | (r & 7)])
    }
    /// cmp reg, imm32 (sign-extended)
    pub fn cmp_imm(&mut self, r: R, imm: i32) -> &mut Self {
        let r = r as u8;
        self.bytes(&[0x48 | (r >> 3), 0x81, 0xf8 | (r & 7)]);
        self.bytes(&imm.to_le_bytes())
    }
    /// jne to an absolute code address
    pub fn jne(&mut self, target: u64) -> &mut Self {
        let next = self.here() + 6;
        let rel = (target as i64 - next as i64) as i32;
        self.bytes(&[0x0f, 0x85]);
        self.bytes(&rel.to_le_bytes())
    }
    /// jmp to an absolute code address (rel32)
    pub fn jmp(&mut self, target: u64) -> &mut Self {
        let next = self.here() + 5;
        let rel = (target as i64 - next as i64) as i32;
        self.bytes(&[0xe9]);
        self.bytes(&rel.to_le_bytes())
    }
}
