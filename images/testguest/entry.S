/*
 * Entry points of the hull test guest.
 *
 * _start64: the 64-bit Linux boot protocol (what hull's vmm uses for every kernel): long mode,
 *           paging on, interrupts off, %rsi = boot_params (the zero page).
 * pvh_start32: the PVH entry named by the Xen ELF note, so qemu -M microvm can run the same
 *           binary: 32-bit protected mode, paging off, %ebx = hvm_start_info.
 * Both land in guest_main(info, kind) on our own stack with our own 4 GiB identity map.
 */
    .section .note.pvh, "a"
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4

    .section .text.entry, "ax"
    .code64
    .globl _start64
_start64:
    cli
    lea stack_top(%rip), %rsp
    mov %rsi, %rdi
    xor %esi, %esi          /* kind 0: Linux zero page */
    call guest_main
1:  hlt
    jmp 1b

    .code32
    .globl pvh_start32
pvh_start32:
    cli
    mov %ebx, %ebp
    /* Clear the six table pages, then PML4[0] -> PDPT, PDPT[0..3] -> PD0..PD3 and
     * 2048 2 MiB pages covering 0..4 GiB (LAPIC and virtio-mmio windows included). */
    mov $pml4, %edi
    xor %eax, %eax
    mov $(6 * 1024), %ecx
    rep stosl
    mov $pdpt, %eax
    or $3, %eax
    mov %eax, pml4
    mov $pd, %eax
    or $3, %eax
    xor %ecx, %ecx
2:  mov %eax, pdpt(,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jne 2b
    xor %ecx, %ecx
3:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 3b
    mov %cr4, %eax
    or $0x20, %eax          /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx   /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax    /* PG | PE */
    mov %eax, %cr0
    lgdt gdt_desc
    ljmp $0x08, $pvh_long

    .code64
pvh_long:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea stack_top(%rip), %rsp
    mov %ebp, %edi
    mov $1, %esi            /* kind 1: PVH start info */
    call guest_main
4:  hlt
    jmp 4b

    /* Loads our own tables once running from the Linux entry, whose tables map only 1 GiB. */
    .globl load_page_tables
load_page_tables:
    mov $pml4, %eax
    mov %rax, %cr3
    ret

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .section .pgtables, "aw", @nobits
    .balign 4096
    .globl pml4, pdpt, pd
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4 * 4096

    .section .stack, "aw", @nobits
    .balign 16
    .skip 32768
stack_top:

/*
 * Application processor trampoline, copied to 0x3000 by the BSP (SIPI vector 3). Real mode
 * with CS = 0x300 -> long mode on the BSP's page tables, then ap_main() on its own stack.
 * The BSP fills ap_cr3, ap_stack and ap_entry in the copy.
 */
    .section .rodata.ap, "a"
    .code16
    .globl ap_start, ap_end, ap_cr3, ap_stack, ap_entry
ap_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_gdtr - ap_start
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl ap_cr3 - ap_start, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(0x3000 + ap64 - ap_start)
    .code64
ap64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq (0x3000 + ap_stack - ap_start), %rsp
    movq (0x3000 + ap_entry - ap_start), %rax
    call *%rax
5:  cli
    hlt
    jmp 5b
    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
ap_gdtr:
    .word 23
    .long 0x3000 + ap_gdt - ap_start
    .balign 8
ap_cr3:
    .quad 0
ap_stack:
    .quad 0
ap_entry:
    .quad 0
ap_end:
