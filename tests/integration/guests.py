"""Guests for the qemu tier: a boot sector that keeps dirtying memory, so that a live
migration throttled below its dirty rate never converges on its own (an idle guest's
memory is zero pages, which cost a migration next to nothing, and one that dirties only
the first MiB converged anyway in a trial)."""

from __future__ import annotations

from pathlib import Path

# Loaded at 0x7c00 by SeaBIOS; assembled with GNU as (--32, .code16) from:
#       cli; cld; xor %ax,%ax; mov %ax,%ds
#       lgdtl %cs:gdtr              # a flat 4 GiB data segment...
#       mov %cr0,%eax; or $1,%al; mov %eax,%cr0; mov $8,%bx; mov %bx,%ds
#       and $0xfe,%al; mov %eax,%cr0; xor %ax,%ax; mov %ax,%ds   # ...kept in real mode
# again: inc %edx; mov $0x100000,%edi
# page:  addr32 mov %edx,(%edi); add $0x1000,%edi; cmp $0x5f00000,%edi; jb page
#       jmp again
# gdt:  .quad 0, 0x00cf92000000ffff; gdtr: .word 15; .long gdt
# It writes a pass counter into each 4 KiB page from 1 MiB to 95 MiB of its 96, over and
# over: every iteration of a live migration finds ~94 MiB to send again, so at a bandwidth
# limit far below the guest's dirty rate (50 MiB/s here) it never completes on its own;
# paused, the guest stops writing and the migration ends in seconds. (With 16 MiB of zero
# pages left, up to 80 MiB, a migration sometimes completed anyway: sending zero pages
# costs next to nothing, and QEMU's bandwidth estimate, taken over such a burst, let it
# switch over with 24 MiB to go.)
_CODE = bytes.fromhex(
    "fafc31c08ed82e660f0116587c0f20c00c010f22c0bb08008edb24fe0f22c031c08ed8664266bf0000"
    "1000676689176681c7001000006681ff0000f00572ecebe28db400008d74000000000000000000ffff"
    "00000092cf000f00487c0000"
)


def dirty_boot_sector() -> bytes:
    """512 bytes: the loop above, padded, with the boot signature."""
    return _CODE + bytes(510 - len(_CODE)) + b"\x55\xaa"


def make_dirtying(disk: str | Path) -> None:
    """Write the boot sector at the start of a (raw) disk image: the VM boots into it."""
    with open(disk, "r+b") as f:
        f.write(dirty_boot_sector())
