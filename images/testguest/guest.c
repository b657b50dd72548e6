/*
 * hull test guest: a freestanding x86-64 program entered through the same 64-bit Linux boot
 * path hull's vmm uses for a kernel (or through PVH under qemu -M microvm). It checks what the
 * VMM handed over (zero page, e820, command line, initrd, MP table), drives the virtio-mmio
 * devices declared on the command line by polling (no interrupts), prints one PASS or FAIL
 * line per check on the 8250 at 0x3f8 and resets through the i8042.
 *
 * Command-line switches read here (all optional):
 *   virtio_mmio.device=SIZE@ADDR:IRQ   a device to probe (as Linux reads it)
 *   testguest.cpus=N                   expect N enabled processors in the MP table
 *   testguest.net_echo=1               expect the peer to answer our frame with "pong"
 *   testguest.dhcp=1                   lease an address by DHCP on the first NIC first
 *   testguest.ping=A.B.C.D             then ARP for and ping that address from it
 *   testguest.mdata=1                  speak SmartOS's metadata protocol on COM2
 *   testguest.mdata_bench=N            then time N GETs over COM2 (p50, p99 in µs)
 *   testguest.mdata_key=KEY            of that key rather than sdc:uuid
 *   testguest.blk_io=N                 also time N sequential + N random 4 KiB reads
 *   testguest.hold=1                   after the checks, halt instead of resetting
 *   testguest.hold=kbd                 after the checks, poll the i8042 until Ctrl-Alt-Del
 *                                      arrives, then reset
 *   testguest.spin=1                   after the checks, spin forever with interrupts off
 *   testguest.exit=acpi                power off through the ACPI sleep register, not i8042
 *   testguest.fault=1                  triple-fault right after boot (VMM error paths)
 *   testguest.corrupt=1                after the block checks, offer malformed chains and
 *                                      move the avail index past the ring
 *   testguest.smp=0                    do not start the application processors
 *   testguest.blk_resize=1             after the first disk's checks, wait (polling its
 *                                      InterruptStatus) for a configuration change, then
 *                                      print and use the new capacity
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long size_t;

#define QSZ 16
#define SPIN_LIMIT 400000000UL

/* ---------- libc bits gcc may call ---------- */

/*
 * String instructions rather than loops: under a hypervisor that emulates the guest's
 * instructions (this project's nested PVM KVM does), one "rep stosb" costs one decode, a
 * byte loop costs several per byte.
 */
void *memset(void *d, int c, size_t n)
{
	void *p = d;
	size_t q = n / 8, r = n % 8;
	u64 v = (u8)c * 0x0101010101010101UL;
	__asm__ volatile("rep stosq" : "+D"(p), "+c"(q) : "a"(v) : "memory");
	__asm__ volatile("rep stosb" : "+D"(p), "+c"(r) : "a"(v) : "memory");
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *p = d;
	__asm__ volatile("rep movsb" : "+D"(p), "+S"(s), "+c"(n) : : "memory");
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *p = a, *q = b;
	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p - *q;
	return 0;
}

static size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* Whether needle occurs in the NUL-terminated s. */
static int contains(const char *s, const char *needle)
{
	size_t n = strlen(needle);
	for (; *s; s++)
		if (memcmp(s, needle, n) == 0)
			return 1;
	return 0;
}

/* ---------- port and MMIO access ---------- */

static inline void outb(u16 port, u8 v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u32 mmio_read32(u64 addr)
{
	return *(volatile u32 *)addr;
}

static inline void mmio_write32(u64 addr, u32 v)
{
	*(volatile u32 *)addr = v;
}

static inline void barrier(void)
{
	__asm__ volatile("lock; addl $0, (%%rsp)" : : : "memory");
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

/* ---------- serial output ---------- */

/*
 * THRE set means the 16550's 16-byte transmit FIFO is empty: check it once per 16 bytes, not
 * per byte, since every port access is a VM exit.
 */
static void putc(char c)
{
	static int room;
	if (room == 0) {
		int spins = 100000;
		while (!(inb(0x3fd) & 0x20) && spins--)
			;
		room = 16;
	}
	outb(0x3f8, (u8)c);
	room--;
}

static void puts(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			putc('\r');
		putc(*s);
	}
}

static void put_hex(u64 v)
{
	char buf[19];
	int i;
	buf[0] = '0';
	buf[1] = 'x';
	for (i = 0; i < 16; i++)
		buf[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 0xf];
	buf[18] = 0;
	/* Trim leading zeros but keep at least one digit. */
	for (i = 2; i < 17 && buf[i] == '0'; i++)
		;
	putc('0');
	putc('x');
	puts(buf + i);
}

static void put_dec(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts(buf + i);
}

static int passed, failed;

static void result(int ok, const char *name)
{
	puts(ok ? "testguest: PASS " : "testguest: FAIL ");
	puts(name);
	if (ok)
		passed++;
	else
		failed++;
}

/* ---------- command line ---------- */

static const char *cmdline = "";

/* Returns the value of the next "key=" token at or after *pos, advancing *pos past it. */
static const char *next_param(const char **pos, const char *key)
{
	size_t klen = strlen(key);
	const char *p = *pos;
	while (*p) {
		while (*p == ' ')
			p++;
		const char *tok = p;
		while (*p && *p != ' ')
			p++;
		if ((size_t)(p - tok) > klen && memcmp(tok, key, klen) == 0 && tok[klen] == '=') {
			*pos = p;
			return tok + klen + 1;
		}
	}
	*pos = p;
	return 0;
}

static const char *param(const char *key)
{
	const char *pos = cmdline;
	return next_param(&pos, key);
}

/* memparse-like: decimal or 0x hex, optional K/M/G suffix. */
static u64 parse_num(const char **s)
{
	const char *p = *s;
	u64 v = 0;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		p += 2;
		for (;;) {
			char c = *p;
			int d;
			if (c >= '0' && c <= '9')
				d = c - '0';
			else if (c >= 'a' && c <= 'f')
				d = c - 'a' + 10;
			else if (c >= 'A' && c <= 'F')
				d = c - 'A' + 10;
			else
				break;
			v = v * 16 + (u64)d;
			p++;
		}
	} else {
		while (*p >= '0' && *p <= '9')
			v = v * 10 + (u64)(*p++ - '0');
	}
	switch (*p) {
	case 'G': case 'g': v <<= 10; /* fall through */
	case 'M': case 'm': v <<= 10; /* fall through */
	case 'K': case 'k': v <<= 10; p++; break;
	default: break;
	}
	*s = p;
	return v;
}

/* ---------- boot information ---------- */

struct e820 {
	u64 addr;
	u64 size;
	u32 type;
} __attribute__((packed));

#define MAX_E820 128
static struct e820 map[MAX_E820];
static u32 map_len;
static u64 initrd_addr, initrd_size, rsdp_addr;

extern char __bss_start[], __bss_end[];
extern void load_page_tables(void);
extern u64 pml4[], pdpt[], pd[];

static int in_ram(u64 addr, u64 len)
{
	for (u32 i = 0; i < map_len; i++)
		if (map[i].type == 1 && addr >= map[i].addr && addr + len <= map[i].addr + map[i].size)
			return 1;
	return 0;
}

static void read_zero_page(const u8 *zp)
{
	u32 n = zp[0x1e8];
	const struct e820 *t = (const struct e820 *)(zp + 0x2d0);
	if (n > MAX_E820)
		n = MAX_E820;
	for (u32 i = 0; i < n; i++)
		map[i] = t[i];
	map_len = n;
	int hdr_ok = *(const u16 *)(zp + 0x1fe) == 0xaa55 && memcmp(zp + 0x202, "HdrS", 4) == 0;
	result(hdr_ok, "zeropage: setup header has boot flag 0xaa55 and HdrS magic\n");
	u64 cmd = *(const u32 *)(zp + 0x228) | ((u64) * (const u32 *)(zp + 0x0c8) << 32);
	if (cmd)
		cmdline = (const char *)cmd;
	initrd_addr = *(const u32 *)(zp + 0x218) | ((u64) * (const u32 *)(zp + 0x0c0) << 32);
	initrd_size = *(const u32 *)(zp + 0x21c) | ((u64) * (const u32 *)(zp + 0x0c4) << 32);
	rsdp_addr = *(const u64 *)(zp + 0x070);
}

struct hvm_start_info {
	u32 magic, version, flags, nr_modules;
	u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	u32 memmap_entries, reserved;
};

struct hvm_memmap {
	u64 addr, size;
	u32 type, reserved;
};

struct hvm_module {
	u64 paddr, size, cmdline_paddr, reserved;
};

static void read_pvh(const struct hvm_start_info *si)
{
	result(si->magic == 0x336ec578, "pvh: start info magic\n");
	if (si->cmdline_paddr)
		cmdline = (const char *)si->cmdline_paddr;
	const struct hvm_memmap *m = (const struct hvm_memmap *)si->memmap_paddr;
	u32 n = si->version >= 1 && m ? si->memmap_entries : 0;
	if (n > MAX_E820)
		n = MAX_E820;
	for (u32 i = 0; i < n; i++) {
		map[i].addr = m[i].addr;
		map[i].size = m[i].size;
		map[i].type = m[i].type;
	}
	map_len = n;
	if (si->nr_modules && si->modlist_paddr) {
		const struct hvm_module *mod = (const struct hvm_module *)si->modlist_paddr;
		initrd_addr = mod->paddr;
		initrd_size = mod->size;
	}
	rsdp_addr = si->rsdp_paddr;
}

static void check_boot_info(void)
{
	u64 ram = 0;
	int covers_us = in_ram((u64)&__bss_start, 4096);
	for (u32 i = 0; i < map_len; i++) {
		puts("testguest: e820 ");
		put_hex(map[i].addr);
		puts(" +");
		put_hex(map[i].size);
		puts(map[i].type == 1 ? " ram\n" : " reserved\n");
		if (map[i].type == 1)
			ram += map[i].size;
	}
	result(map_len > 0 && covers_us, "e820: map present and covers the guest image, ");
	put_dec(ram >> 20);
	puts(" MiB RAM\n");

	size_t len = strlen(cmdline);
	result(len > 0 && len < 4096, "cmdline: \"");
	puts(cmdline);
	puts("\"\n");

	if (initrd_size) {
		const u8 *rd = (const u8 *)initrd_addr;
		int ok = in_ram(initrd_addr, initrd_size) && initrd_addr >= 0x100000;
		/* An initrd made by hull's tests starts with a magic and its own length. */
		int ours = initrd_size >= 16 && memcmp(rd, "HULLRD01", 8) == 0;
		if (ours)
			ok = ok && *(const u64 *)(rd + 8) == initrd_size;
		result(ok, "initrd: at ");
		put_hex(initrd_addr);
		puts(", ");
		put_dec(initrd_size);
		puts(ours ? " bytes, in RAM, magic and length match\n" : " bytes, in RAM\n");
	} else {
		puts("testguest: initrd: none\n");
	}
}

/* ---------- MP table ---------- */

static u32 mp_cpus;
static u32 virtio_declared;
static u16 fadt_sleep_port;

static u8 sum(const u8 *p, u32 n)
{
	u8 s = 0;
	while (n--)
		s += *p++;
	return s;
}

static const u8 *find_mpf(u64 start, u64 len)
{
	for (u64 a = start; a + 16 <= start + len; a += 16) {
		const u8 *p = (const u8 *)a;
		if (memcmp(p, "_MP_", 4) == 0 && sum(p, 16) == 0)
			return p;
	}
	return 0;
}

static void check_mptable(void)
{
	const u8 *mpf = find_mpf(0x9fc00, 0x400);
	if (!mpf)
		mpf = find_mpf(0xf0000, 0x10000);
	const char *want_s = param("testguest.cpus");
	u64 want = want_s ? parse_num(&want_s) : 0;
	if (!mpf) {
		result(want == 0, "mptable: no MP floating pointer found\n");
		return;
	}
	const u8 *cfg = (const u8 *)(u64) * (const u32 *)(mpf + 4);
	u16 len = cfg ? *(const u16 *)(cfg + 4) : 0;
	if (!cfg || memcmp(cfg, "PCMP", 4) != 0 || len < 44 || sum(cfg, len) != 0) {
		result(0, "mptable: configuration table missing or bad checksum\n");
		return;
	}
	u16 count = *(const u16 *)(cfg + 34);
	const u8 *e = cfg + 44, *end = cfg + len;
	u32 cpus = 0, bsps = 0, ioapics = 0;
	for (u16 i = 0; i < count && e < end; i++) {
		if (e[0] == 0) {
			if (e[3] & 1)
				cpus++;
			if (e[3] & 2)
				bsps++;
			e += 20;
		} else {
			if (e[0] == 2)
				ioapics++;
			e += 8;
		}
	}
	mp_cpus = cpus;
	int ok = bsps == 1 && (want == 0 || cpus == want);
	result(ok, "mptable: ");
	put_dec(cpus);
	puts(" enabled cpus, ");
	put_dec(bsps);
	puts(" bsp, ");
	put_dec(ioapics);
	puts(" ioapic");
	if (want) {
		puts(", expected ");
		put_dec(want);
	}
	puts("\n");
}

static void check_cpuid(void)
{
	u32 a, b, c, d;
	cpuid(1, 0, &a, &b, &c, &d);
	u32 apic = b >> 24;
	/* The hypervisor bit tells us the VMM's CPUID filter ran; the BSP has APIC id 0. */
	result(apic == 0, "cpuid: bsp apic id ");
	put_dec(apic);
	puts((c >> 31) & 1 ? ", hypervisor bit set\n" : ", hypervisor bit clear\n");
}

/* ---------- i8254 PIT ---------- */

static u16 pit_count2(void)
{
	outb(0x43, 0x80); /* latch counter 2 */
	u8 lo = inb(0x42);
	u8 hi = inb(0x42);
	return (u16)(lo | (hi << 8));
}

/*
 * The VMM creates the PIT on the guest's first access to its ports and has that access
 * executed again: the control word below is that first access, and the read-back status
 * shows whether it reached the PIT. Counter 2 (gated by port 0x61, as Linux calibrates) then
 * has to count down from 0xffff.
 */
static void check_pit(int in_first)
{
	if (in_first) {
		/* The other kind of first access: an IN, which KVM finishes differently. The
		 * in-kernel port 0x61 never reads as all-ones (its bits 7-6 and 3-2 are 0). */
		u8 v = inb(0x61);
		result(v != 0xff, "pit: first access an IN of port 0x61, read ");
		put_hex(v);
		puts("\n");
	}
	outb(0x43, 0xb0); /* counter 2, low then high byte, mode 0, binary */
	outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01)); /* gate 2 on, speaker off */
	outb(0x42, 0xff);
	outb(0x42, 0xff);
	u16 a = pit_count2();
	u64 t = rdtsc();
	while (rdtsc() - t < 200000)
		__asm__ volatile("pause");
	u16 b = pit_count2();
	outb(0x43, 0xe8); /* read-back: status only, counter 2 */
	u8 st = inb(0x42);

	result((st & 0x3f) == 0x30 && b < a, "pit: counter 2 mode 0, status ");
	put_hex(st);
	puts(", counted ");
	put_hex(a);
	puts(" to ");
	put_hex(b);
	puts("\n");
}

/* ---------- ACPI ---------- */


static int table_ok(const u8 *t, const char *sig)
{
	return memcmp(t, sig, 4) == 0 && *(const u32 *)(t + 4) >= 36 && sum(t, *(const u32 *)(t + 4)) == 0;
}

static void check_acpi(void)
{
	const u8 *rsdp = (const u8 *)rsdp_addr;
	if (!rsdp) {
		for (u64 a = 0xe0000; a < 0x100000; a += 16)
			if (memcmp((const u8 *)a, "RSD PTR ", 8) == 0) {
				rsdp = (const u8 *)a;
				break;
			}
	}
	if (!rsdp) {
		puts("testguest: acpi: no RSDP\n");
		return;
	}
	if (memcmp(rsdp, "RSD PTR ", 8) != 0 || sum(rsdp, 20) != 0 || rsdp[15] < 2 || sum(rsdp, 36) != 0) {
		result(0, "acpi: RSDP signature or checksum bad\n");
		return;
	}
	const u8 *xsdt = (const u8 *)*(const u64 *)(rsdp + 24);
	if (!table_ok(xsdt, "XSDT")) {
		result(0, "acpi: XSDT missing or bad checksum\n");
		return;
	}
	u32 n = (*(const u32 *)(xsdt + 4) - 36) / 8, cpus = 0, virtio = 0, ged = 0, bad = 0;
	int hw_reduced = 0;
	for (u32 i = 0; i < n; i++) {
		const u8 *t = (const u8 *)*(const u64 *)(xsdt + 36 + 8 * i);
		if (table_ok(t, "FACP")) {
			hw_reduced = (*(const u32 *)(t + 112) >> 20) & 1;
			/* SLEEP_CONTROL_REG: a GAS at 244, system I/O space. */
			if (t[244] == 1)
				fadt_sleep_port = (u16) * (const u64 *)(t + 248);
			const u8 *dsdt = (const u8 *)*(const u64 *)(t + 140);
			if (!dsdt)
				dsdt = (const u8 *)(u64) * (const u32 *)(t + 40);
			if (!table_ok(dsdt, "DSDT")) {
				bad++;
				continue;
			}
			u32 len = *(const u32 *)(dsdt + 4);
			for (u32 k = 36; k + 8 <= len; k++) {
				if (memcmp(dsdt + k, "LNRO0005", 8) == 0)
					virtio++;
				if (memcmp(dsdt + k, "ACPI0013", 8) == 0)
					ged++;
			}
		} else if (table_ok(t, "APIC")) {
			u32 len = *(const u32 *)(t + 4);
			for (u32 k = 44; k + 2 <= len && t[k + 1] >= 2; k += t[k + 1])
				if (t[k] == 0 && (*(const u32 *)(t + k + 4) & 1))
					cpus++;
		} else if (memcmp(t, "FACP", 4) == 0 || memcmp(t, "APIC", 4) == 0) {
			bad++;
		}
	}
	int ok = !bad && hw_reduced && ged == 1 && cpus == mp_cpus && virtio == virtio_declared;
	result(ok, "acpi: hardware-reduced FADT, MADT ");
	put_dec(cpus);
	puts(" cpus, DSDT ");
	put_dec(virtio);
	puts(" LNRO0005 devices and a GED, sleep register port ");
	put_hex(fadt_sleep_port);
	puts("\n");
}

/* ---------- SMBIOS ---------- */

/* What the type 1 structure says, for the metadata check (the serial is the VM's uuid). */
static char smbios_serial[64];

/* String number n (from 1) of the structure at t. */
static const char *smbios_string(const u8 *t, u8 n)
{
	const char *s = (const char *)t + t[1];
	if (n == 0)
		return "";
	while (--n && *s)
		s += strlen(s) + 1;
	return s;
}

static void check_smbios(void)
{
	const u8 *ep = 0;
	for (u64 a = 0xf0000; a < 0x100000; a += 16)
		if (memcmp((const u8 *)a, "_SM3_", 5) == 0) {
			ep = (const u8 *)a;
			break;
		}
	if (!ep || ep[6] < 0x18 || sum(ep, ep[6]) != 0) {
		result(0, "smbios: no SMBIOS 3 entry point with a good checksum\n");
		return;
	}
	const u8 *t = (const u8 *)*(const u64 *)(ep + 16);
	const u8 *end = t + *(const u32 *)(ep + 12);
	const char *maker = 0, *product = 0, *serial = 0;
	int vm = 0;
	while (t + 4 <= end && t[0] != 127) {
		if (t[0] == 0 && t[1] >= 0x14)
			vm = (t[0x13] >> 4) & 1;
		if (t[0] == 1 && t[1] >= 0x1b) {
			maker = smbios_string(t, t[4]);
			product = smbios_string(t, t[5]);
			serial = smbios_string(t, t[7]);
		}
		/* Past the formatted part and its strings, which end with a double NUL. */
		const u8 *p = t + t[1];
		while (p + 1 < end && (p[0] || p[1]))
			p++;
		t = p + 2;
	}
	int ok = maker && product && vm && memcmp(maker, "Joyent", 7) == 0 &&
		 memcmp(product, "SmartDC HVM", 12) == 0;
	if (serial) {
		size_t n = strlen(serial);
		if (n >= sizeof(smbios_serial))
			n = sizeof(smbios_serial) - 1;
		memcpy(smbios_serial, serial, n);
	}
	result(ok, "smbios: ");
	puts(maker ? maker : "?");
	puts(" ");
	puts(product ? product : "?");
	puts(", a virtual machine, serial ");
	puts(smbios_serial[0] ? smbios_serial : "(none)");
	puts("\n");
}

/* ---------- the metadata agent on COM2 ---------- */

#define COM2 0x2f8

static u32 crc32(const char *p, size_t n)
{
	u32 c = 0xffffffffu;
	while (n--) {
		c ^= (u8)*p++;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0xedb88320u : c >> 1;
	}
	return ~c;
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Decodes base64 from s (up to a NUL) into out; returns the length, or -1. */
static int b64decode(const char *s, char *out, int max)
{
	u32 acc = 0;
	int bits = 0, n = 0;
	for (; *s && *s != '='; s++) {
		int v = b64val(*s);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (u32)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n >= max)
				return -1;
			out[n++] = (char)((acc >> bits) & 0xff);
		}
	}
	return n;
}

static void com2_putc(char c)
{
	for (u32 spins = 1u << 20; !(inb(COM2 + 5) & 0x20) && spins--;)
		;
	outb(COM2, (u8)c);
}

static void com2_puts(const char *s)
{
	while (*s)
		com2_putc(*s++);
}

/* Reads one line from COM2 (without its newline) into buf; -1 when none comes within
 * `polls` reads of the line status register. */
static int com2_line(char *buf, int max, u32 polls)
{
	int n = 0;
	while (polls--) {
		if (!(inb(COM2 + 5) & 1)) {
			__asm__ volatile("pause");
			continue;
		}
		char c = (char)inb(COM2);
		if (c == '\n') {
			buf[n] = 0;
			return n;
		}
		if (n < max - 1)
			buf[n++] = c;
	}
	return -1;
}

static int streq(const char *a, const char *b)
{
	size_t n = strlen(b);
	return strlen(a) == n && memcmp(a, b, n) == 0;
}

/* TSC ticks per microsecond, measured against PIT counter 2 (1.193182 MHz) over ~20 ms. */
static u64 tsc_per_us(void)
{
	outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01)); /* gate 2 on, speaker off */
	outb(0x43, 0xb0);			       /* counter 2, lo/hi, mode 0 */
	outb(0x42, 0xff);
	outb(0x42, 0xff);
	u16 c0 = pit_count2();
	u64 t0 = rdtsc();
	u16 c1 = c0;
	while ((u16)(c0 - c1) < 24000)
		c1 = pit_count2();
	u64 t1 = rdtsc();
	u64 us = (u64)(u16)(c0 - c1) * 1000000 / 1193182;
	return us ? (t1 - t0) / us : 1;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Encodes n bytes of s as base64 into out (NUL-terminated); returns its length. */
static int b64encode(const char *s, int n, char *out)
{
	int o = 0;
	for (int i = 0; i < n; i += 3) {
		u32 v = (u32)(u8)s[i] << 16;
		if (i + 1 < n)
			v |= (u32)(u8)s[i + 1] << 8;
		if (i + 2 < n)
			v |= (u8)s[i + 2];
		out[o++] = B64[(v >> 18) & 63];
		out[o++] = B64[(v >> 12) & 63];
		out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? B64[v & 63] : '=';
	}
	out[o] = 0;
	return o;
}

/* Appends the decimal digits of v to out at *o. */
static void append_dec(char *out, int *o, u64 v)
{
	char d[20];
	int k = 0;
	do {
		d[k++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (k)
		out[(*o)++] = d[--k];
}

/* The V2 GET request line for key (up to a space or NUL, at most 64 bytes), request id
 * dc4fae17, into req. */
static void get_request(const char *key, char *req)
{
	char k[65], body[128];
	int kn = 0;
	while (key[kn] && key[kn] != ' ' && kn < 64) {
		k[kn] = key[kn];
		kn++;
	}
	int bn = 0;
	memcpy(body, "dc4fae17 GET ", 13);
	bn = 13 + b64encode(k, kn, body + 13);
	int o = 0;
	memcpy(req, "V2 ", 3);
	o = 3;
	append_dec(req, &o, (u64)bn);
	req[o++] = ' ';
	u32 crc = crc32(body, (size_t)bn);
	for (int sh = 28; sh >= 0; sh -= 4)
		req[o++] = "0123456789abcdef"[(crc >> sh) & 15];
	req[o++] = ' ';
	memcpy(req + o, body, (size_t)bn);
	o += bn;
	req[o++] = '\n';
	req[o] = 0;
}

/* testguest.mdata_bench=N: N GETs over COM2, each timed, of sdc:uuid or of the key
 * testguest.mdata_key names (a customer_metadata key, up to 64 KiB); p50 and p99 in µs.
 * Each answer must be a V2 SUCCESS of the expected size class. */
static void bench_mdata(u32 n)
{
	static u64 t[1000];
	static char line[96 << 10];
	static char req[256];
	if (n > 1000)
		n = 1000;
	const char *key = param("testguest.mdata_key");
	get_request(key ? key : "sdc:uuid", req);
	u64 per_us = tsc_per_us();
	u32 done = 0;
	int len = 0;
	for (; done < n; done++) {
		u64 a = rdtsc();
		com2_puts(req);
		len = com2_line(line, sizeof(line), 1u << 30);
		if (len < 0 || memcmp(line, "V2 ", 3) != 0 || !contains(line, " dc4fae17 SUCCESS "))
			break;
		t[done] = rdtsc() - a;
	}
	for (u32 i = 1; i < done; i++)
		for (u32 j = i; j > 0 && t[j - 1] > t[j]; j--) {
			u64 x = t[j];
			t[j] = t[j - 1];
			t[j - 1] = x;
		}
	result(done == n && n > 0, "mdata bench: ");
	put_dec(done);
	puts(" GETs over COM2 (answers of ");
	put_dec((u64)(len > 0 ? len : 0));
	puts(" bytes), p50 ");
	put_dec(done ? t[done / 2] / per_us : 0);
	puts(" us, p99 ");
	put_dec(done ? t[(done * 99) / 100] / per_us : 0);
	puts(" us\n");
}

/* SmartOS's metadata protocol on COM2, as cloud-init's serial client speaks it: a newline
 * (answered "invalid command"), NEGOTIATE V2, then a V2 GET of sdc:uuid, whose answer must
 * carry a good length and CRC and be this VM's SMBIOS serial. */
static void check_mdata(void)
{
	static char line[512];
	static char value[128];
	outb(COM2 + 1, 0x00); /* no interrupts: polled */
	outb(COM2 + 3, 0x03); /* 8N1 */
	outb(COM2 + 2, 0x07); /* FIFO on, cleared */
	/* The agent may connect a little after the guest starts: the VMM keeps what the guest
	 * wrote until then. About a million polls is seconds even under nested KVM. */
	com2_puts("\n");
	if (com2_line(line, sizeof(line), 1u << 24) < 0 || !streq(line, "invalid command")) {
		result(0, "mdata: no \"invalid command\" answer to a newline on COM2\n");
		return;
	}
	com2_puts("NEGOTIATE V2\n");
	if (com2_line(line, sizeof(line), 1u << 24) < 0 || !streq(line, "V2_OK")) {
		result(0, "mdata: NEGOTIATE V2 was not answered V2_OK\n");
		return;
	}
	/* Request id dc4fae17, GET base64("sdc:uuid"); CRC as Python's binascii.crc32 gives. */
	com2_puts("V2 25 8cf8e622 dc4fae17 GET c2RjOnV1aWQ=\n");
	int n = com2_line(line, sizeof(line), 1u << 24);
	/* "V2 <len> <crc> <body>" */
	const char *p = line;
	u64 len = 0, crc = 0;
	if (n > 3 && memcmp(p, "V2 ", 3) == 0) {
		p += 3;
		len = parse_num(&p);
		p++;
		for (; *p && *p != ' '; p++)
			crc = crc * 16 + (u64)(*p <= '9' ? *p - '0' : *p - 'a' + 10);
		p++;
	}
	const char *body = p;
	int framed = n > 0 && len == strlen(body) && crc == crc32(body, strlen(body));
	int success = framed && memcmp(body, "dc4fae17 SUCCESS ", 17) == 0;
	int vlen = success ? b64decode(body + 17, value, sizeof(value) - 1) : -1;
	if (vlen >= 0)
		value[vlen] = 0;
	int ok = vlen > 0 && streq(value, smbios_serial);
	result(ok, "mdata: COM2 negotiated V2, sdc:uuid ");
	puts(vlen > 0 ? value : framed ? body : "(a bad frame)");
	puts(ok ? ", the SMBIOS serial\n" : ", not the SMBIOS serial\n");
}

/* ---------- application processors ---------- */

#define LAPIC 0xfee00000UL
#define AP_BASE 0x3000UL
extern char ap_start[], ap_end[], ap_cr3[], ap_stack[], ap_entry[];
static volatile u32 ap_alive;
static volatile u32 ap_ids;
static u8 ap_stacks[4][4096] __attribute__((aligned(16)));

void ap_main(void)
{
	u32 a, b, c, d;
	cpuid(1, 0, &a, &b, &c, &d);
	__atomic_fetch_or(&ap_ids, 1u << ((b >> 24) & 31), __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&ap_alive, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void lapic_wait_idle(void)
{
	for (int i = 0; i < 100000 && (mmio_read32(LAPIC + 0x300) & (1 << 12)); i++)
		;
}

/* INIT-SIPI-SIPI to every other CPU the MP table listed (APIC ids 1..n-1, as hull's VMM
 * numbers them); each AP comes up through the trampoline and checks in. */
static void start_aps(void)
{
	if (mp_cpus < 2 || mp_cpus > 5)
		return;
	memcpy((void *)AP_BASE, ap_start, (size_t)(ap_end - ap_start));
	*(u64 *)(AP_BASE + (u64)(ap_cr3 - ap_start)) = (u64)pml4;
	*(u64 *)(AP_BASE + (u64)(ap_entry - ap_start)) = (u64)ap_main;
	/* Software-enable the LAPIC (spurious vector 0xff). */
	mmio_write32(LAPIC + 0xf0, 0x1ff);
	for (u32 id = 1; id < mp_cpus; id++) {
		*(u64 *)(AP_BASE + (u64)(ap_stack - ap_start)) = (u64)&ap_stacks[id - 1][4096];
		u32 before = ap_alive;
		mmio_write32(LAPIC + 0x310, id << 24);
		mmio_write32(LAPIC + 0x300, 0x4500); /* INIT, assert */
		lapic_wait_idle();
		for (int sipi = 0; sipi < 2 && ap_alive == before; sipi++) {
			mmio_write32(LAPIC + 0x310, id << 24);
			mmio_write32(LAPIC + 0x300, 0x4600 | (AP_BASE >> 12)); /* SIPI */
			lapic_wait_idle();
			for (u64 spin = 0; spin < 2000000 && ap_alive == before; spin++)
				__asm__ volatile("pause");
		}
	}
	u32 want = mp_cpus - 1;
	if (ap_alive == want) {
		result(1, "smp: ");
		put_dec(ap_alive);
		puts(" application processor(s) started and ran cpuid, apic id mask ");
		put_hex(ap_ids);
		puts("\n");
	} else {
		/* Not a failure of the VMM on every host: real mode needs instruction emulation
		 * the host KVM may lack. The MP table and MADT checks cover the VMM's part. */
		puts("testguest: note: smp: ");
		put_dec(ap_alive);
		puts(" of ");
		put_dec(want);
		puts(" application processors started\n");
	}
}

/* ---------- virtio-mmio ---------- */

#define VIRTIO_MAGIC 0x74726976
enum {
	R_MAGIC = 0x000, R_VERSION = 0x004, R_DEVICE_ID = 0x008, R_DEV_FEAT = 0x010,
	R_DEV_FEAT_SEL = 0x014, R_DRV_FEAT = 0x020, R_DRV_FEAT_SEL = 0x024, R_QUEUE_SEL = 0x030,
	R_QUEUE_NUM_MAX = 0x034, R_QUEUE_NUM = 0x038, R_QUEUE_READY = 0x044,
	R_QUEUE_NOTIFY = 0x050, R_INT_STATUS = 0x060, R_INT_ACK = 0x064, R_STATUS = 0x070,
	R_DESC_LO = 0x080, R_DESC_HI = 0x084, R_AVAIL_LO = 0x090, R_AVAIL_HI = 0x094,
	R_USED_LO = 0x0a0, R_USED_HI = 0x0a4, R_CONFIG_GEN = 0x0fc, R_CONFIG = 0x100,
};
/* InterruptStatus bits: used buffers, configuration change. */
enum { INT_USED = 1, INT_CONFIG = 2 };
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8, S_FAILED = 128 };

struct desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};
#define D_NEXT 1
#define D_WRITE 2

struct vring {
	struct desc desc[QSZ];
	struct {
		u16 flags, idx, ring[QSZ], used_event;
	} avail __attribute__((aligned(256)));
	struct {
		u16 flags, idx;
		struct {
			u32 id, len;
		} ring[QSZ];
		u16 avail_event;
	} used __attribute__((aligned(256)));
} __attribute__((aligned(4096)));

static struct vring rings[12];
static u32 rings_used;

struct vq {
	u64 base;
	u32 index;
	struct vring *r;
	u16 avail_idx, used_idx;
};

struct vdev {
	u64 base;
	u32 irq;
	u32 id;
	u64 features;
};

static int vdev_init(struct vdev *d, u64 want)
{
	u64 b = d->base;
	mmio_write32(b + R_STATUS, 0);
	mmio_write32(b + R_STATUS, S_ACK);
	mmio_write32(b + R_STATUS, S_ACK | S_DRIVER);
	mmio_write32(b + R_DEV_FEAT_SEL, 0);
	u64 f = mmio_read32(b + R_DEV_FEAT);
	mmio_write32(b + R_DEV_FEAT_SEL, 1);
	f |= (u64)mmio_read32(b + R_DEV_FEAT) << 32;
	d->features = f & (want | (1UL << 32));
	mmio_write32(b + R_DRV_FEAT_SEL, 0);
	mmio_write32(b + R_DRV_FEAT, (u32)d->features);
	mmio_write32(b + R_DRV_FEAT_SEL, 1);
	mmio_write32(b + R_DRV_FEAT, (u32)(d->features >> 32));
	mmio_write32(b + R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (!(mmio_read32(b + R_STATUS) & S_FEATURES_OK) || !(f & (1UL << 32)))
		return 0;
	return 1;
}

static int vq_init(struct vdev *d, struct vq *q, u32 index)
{
	u64 b = d->base;
	if (rings_used >= sizeof(rings) / sizeof(rings[0]))
		return 0;
	q->r = &rings[rings_used++];
	memset(q->r, 0, sizeof(*q->r));
	q->base = b;
	q->index = index;
	q->avail_idx = q->used_idx = 0;
	mmio_write32(b + R_QUEUE_SEL, index);
	u32 max = mmio_read32(b + R_QUEUE_NUM_MAX);
	if (max < QSZ)
		return 0;
	mmio_write32(b + R_QUEUE_NUM, QSZ);
	u64 da = (u64)&q->r->desc, aa = (u64)&q->r->avail, ua = (u64)&q->r->used;
	mmio_write32(b + R_DESC_LO, (u32)da);
	mmio_write32(b + R_DESC_HI, (u32)(da >> 32));
	mmio_write32(b + R_AVAIL_LO, (u32)aa);
	mmio_write32(b + R_AVAIL_HI, (u32)(aa >> 32));
	mmio_write32(b + R_USED_LO, (u32)ua);
	mmio_write32(b + R_USED_HI, (u32)(ua >> 32));
	mmio_write32(b + R_QUEUE_READY, 1);
	return mmio_read32(b + R_QUEUE_READY) == 1;
}

static void vdev_ready(struct vdev *d)
{
	mmio_write32(d->base + R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

/* Offers the chain starting at descriptor `head`, without notifying. */
static void vq_offer(struct vq *q, u16 head)
{
	q->r->avail.ring[q->avail_idx % QSZ] = head;
	barrier();
	q->avail_idx++;
	*(volatile u16 *)&q->r->avail.idx = q->avail_idx;
	barrier();
}

static void vq_notify(struct vq *q)
{
	mmio_write32(q->base + R_QUEUE_NOTIFY, q->index);
}

/* Waits for one used element; returns its length or -1 on timeout. */
static long vq_wait(struct vq *q, u64 spins)
{
	while (*(volatile u16 *)&q->r->used.idx == q->used_idx)
		if (!spins--)
			return -1;
	barrier();
	u32 len = q->r->used.ring[q->used_idx % QSZ].len;
	q->used_idx++;
	/* Exercise the interrupt status/ack pair even though we poll. */
	u32 isr = mmio_read32(q->base + R_INT_STATUS);
	if (isr)
		mmio_write32(q->base + R_INT_ACK, isr);
	return len;
}

static void set_desc(struct vq *q, u16 i, void *addr, u32 len, u16 flags)
{
	q->r->desc[i].addr = (u64)addr;
	q->r->desc[i].len = len;
	q->r->desc[i].flags = flags;
	q->r->desc[i].next = (u16)(i + 1);
}

/* ---------- virtio-blk ---------- */

struct blk_req {
	u32 type, reserved;
	u64 sector;
};

static struct blk_req breq;
static volatile u8 bstatus;
static u8 sect_a[4096] __attribute__((aligned(4096)));
static u8 sect_b[4096] __attribute__((aligned(4096)));

/* One request: header, then `n` data buffers of `len` bytes each, then the status byte. */
static int blk_io(struct vq *q, u32 type, u64 sector, u8 **bufs, u32 n, u32 len)
{
	breq.type = type;
	breq.reserved = 0;
	breq.sector = sector;
	bstatus = 0xff;
	u16 i = 0;
	set_desc(q, i++, &breq, sizeof(breq), D_NEXT);
	for (u32 k = 0; k < n; k++)
		/* OUT (1), DISCARD (11) and WRITE_ZEROES (13) carry data to the device. */
		set_desc(q, i++, bufs[k], len, D_NEXT | (type == 1 || type == 11 || type == 13 ? 0 : D_WRITE));
	set_desc(q, i, (void *)&bstatus, 1, D_WRITE);
	vq_offer(q, 0);
	vq_notify(q);
	if (vq_wait(q, SPIN_LIMIT) < 0)
		return -1;
	return bstatus;
}

/* testguest.corrupt=1: what a broken or hostile driver might offer the block device after
 * its checks. The VMM must return each malformed chain unused (length 0, status untouched)
 * and keep serving the queue; then the avail index jumps 1000 entries past the ring, after
 * which the device may ignore the queue for good. The guest carries on either way. */
static void corrupt_queue(struct vq *q, const char *name)
{
	struct desc *dt = q->r->desc;
	breq.type = 0;
	breq.sector = 0;
	/* A loop: 0 -> 1 -> 0. */
	set_desc(q, 0, &breq, sizeof(breq), D_NEXT);
	set_desc(q, 1, sect_a, 512, D_NEXT | D_WRITE);
	dt[1].next = 0;
	vq_offer(q, 0);
	vq_notify(q);
	result(vq_wait(q, SPIN_LIMIT) == 0, name);
	puts("a looping chain is returned unused\n");
	/* A data buffer outside guest memory. */
	bstatus = 0xff;
	set_desc(q, 0, &breq, sizeof(breq), D_NEXT);
	set_desc(q, 1, (void *)0xfff000000000UL, 512, D_NEXT | D_WRITE);
	set_desc(q, 2, (void *)&bstatus, 1, D_WRITE);
	vq_offer(q, 0);
	vq_notify(q);
	result(vq_wait(q, SPIN_LIMIT) == 0 && bstatus == 0xff, name);
	puts("a buffer outside guest memory is refused\n");
	/* A status byte the device may not write. */
	set_desc(q, 0, &breq, sizeof(breq), D_NEXT);
	set_desc(q, 1, sect_a, 512, D_NEXT | D_WRITE);
	set_desc(q, 2, (void *)&bstatus, 1, 0);
	vq_offer(q, 0);
	vq_notify(q);
	result(vq_wait(q, SPIN_LIMIT) == 0 && bstatus == 0xff, name);
	puts("a read-only status descriptor is refused\n");
	/* The queue still serves a good request. */
	u8 *bufs[1] = {sect_a};
	memset(sect_a, 0, 512);
	int st = blk_io(q, 0, 0, bufs, 1, 512);
	result(st == 0 && memcmp(sect_a, "HULLDISK", 8) == 0, name);
	puts("a good request after them is served\n");
	q->avail_idx += 1000;
	*(volatile u16 *)&q->r->avail.idx = q->avail_idx;
	barrier();
	vq_notify(q);
	puts("testguest: corrupt: avail index moved 1000 entries past the ring\n");
}

/* Capacity as Linux's virtio_cread reads a 64-bit field: two 32-bit halves, retried until
 * ConfigGeneration is the same before and after. */
static u64 blk_capacity(struct vdev *d, u32 *gen)
{
	u32 g1, g2;
	u64 cap;
	do {
		g1 = mmio_read32(d->base + R_CONFIG_GEN);
		cap = mmio_read32(d->base + R_CONFIG) |
		      ((u64)mmio_read32(d->base + R_CONFIG + 4) << 32);
		g2 = mmio_read32(d->base + R_CONFIG_GEN);
	} while (g1 != g2);
	*gen = g1;
	return cap;
}

/* testguest.blk_resize=1: the host grows the image and tells the VMM (resize_disk). Interrupts
 * stay off, so this polls InterruptStatus for the configuration change bit, as a driver's
 * handler would find it, for up to about a minute of TSC ticks; then it reads the new capacity
 * and uses it. */
static void wait_blk_resize(struct vdev *d, struct vq *q, const char *name, u64 old_cap)
{
	u32 gen0, gen;
	blk_capacity(d, &gen0);
	puts("testguest: ");
	puts(name);
	puts("waiting for a config change\n");
	u64 t0 = rdtsc();
	u32 isr;
	while (!((isr = mmio_read32(d->base + R_INT_STATUS)) & INT_CONFIG) &&
	       rdtsc() - t0 < 100000000000UL)
		for (int i = 0; i < 2000; i++)
			__asm__ volatile("pause");
	result(isr & INT_CONFIG, name);
	puts("configuration change interrupt\n");
	if (!(isr & INT_CONFIG))
		return;
	mmio_write32(d->base + R_INT_ACK, INT_CONFIG);
	u64 cap = blk_capacity(d, &gen);
	result(gen != gen0 && cap > old_cap, name);
	puts("resized: config generation ");
	put_dec(gen0);
	puts(" -> ");
	put_dec(gen);
	puts(", capacity ");
	put_dec(cap);
	puts(" sectors\n");
	u8 *bufs[1] = {sect_a};
	int st = blk_io(q, 0, cap - 1, bufs, 1, 512);
	result(st == 0, name);
	puts("read the new last sector\n");
	st = blk_io(q, 0, cap, bufs, 1, 512);
	result(st == 1, name);
	puts("read past the new end refused with IOERR\n");
}

/* One range of a discard or write-zeroes request (virtio 1.1, 5.2.6). */
static struct {
	u64 sector;
	u32 sectors, flags;
} brange;

static int blk_range(struct vq *q, u32 type, u64 sector, u32 sectors, u32 flags)
{
	brange.sector = sector;
	brange.sectors = sectors;
	brange.flags = flags;
	u8 *bufs[1] = {(u8 *)&brange};
	return blk_io(q, type, 0, bufs, 1, sizeof(brange));
}

/* Write-zeroes and discard: sectors 8-15 get 0x5a, then write-zeroes clears 8-9 (the rest of
 * the block must stay), an unknown range flag is refused, and 16-23 are discarded. The host
 * side checks the image afterwards. */
static void blk_ranges(struct vq *q, const char *name, int discard)
{
	u8 *bufs[1] = {sect_a};
	memset(sect_a, 0x5a, 4096);
	int st = blk_io(q, 1, 8, bufs, 1, 4096);
	st = st ? st : blk_range(q, 13, 8, 2, 0);
	memset(sect_a, 0xee, 4096);
	st = st ? st : blk_io(q, 0, 8, bufs, 1, 4096);
	int ok = st == 0;
	for (int i = 0; i < 4096; i++)
		ok &= sect_a[i] == (i < 1024 ? 0 : 0x5a);
	result(ok, name);
	puts("write-zeroes sectors 8-9, the rest of the block kept\n");
	result(blk_range(q, 13, 8, 1, 1 << 1) == 2, name);
	puts("write-zeroes with an unknown flag refused with UNSUPP\n");
	if (discard) {
		result(blk_range(q, 11, 16, 8, 0) == 0, name);
		puts("discard sectors 16-23\n");
	}
}

static void test_blk(struct vdev *d, int n)
{
	struct vq q;
	char name[8] = "blk0: ";
	name[3] = (char)('0' + n);
	/* RO (5), BLK_SIZE (6), FLUSH (9), DISCARD (13), WRITE_ZEROES (14) */
	if (!vdev_init(d, (1UL << 5) | (1UL << 6) | (1UL << 9) | (1UL << 13) | (1UL << 14)) ||
	    !vq_init(d, &q, 0)) {
		result(0, name);
		puts("device setup failed\n");
		return;
	}
	vdev_ready(d);
	u64 cap = mmio_read32(d->base + R_CONFIG) | ((u64)mmio_read32(d->base + R_CONFIG + 4) << 32);
	int ro = (d->features >> 5) & 1;
	puts("testguest: ");
	puts(name);
	put_dec(cap);
	puts(ro ? " sectors, read-only\n" : " sectors, read-write\n");

	u8 *bufs[2] = {sect_a, sect_b};
	int st = blk_io(&q, 0, 0, bufs, 1, 512);
	result(st == 0 && memcmp(sect_a, "HULLDISK", 8) == 0, name);
	puts("read sector 0, magic HULLDISK\n");

	/* Write sector 1 with a pattern and read it back through a two-descriptor chain. */
	for (int i = 0; i < 512; i++)
		sect_b[i] = (u8)(i * 7 + 3);
	memcpy(sect_b, "HULLWROTE", 9);
	u8 *wb[1] = {sect_b};
	st = blk_io(&q, 1, 1, wb, 1, 512);
	if (ro) {
		result(st == 1, name);
		puts("write to a read-only disk refused with IOERR\n");
	} else {
		result(st == 0, name);
		puts("write sector 1\n");
		memset(sect_a, 0, 1024);
		u8 *rb[2] = {sect_a, sect_a + 512};
		st = blk_io(&q, 0, 0, rb, 2, 512);
		result(st == 0 && memcmp(sect_a + 512, sect_b, 512) == 0 &&
			       memcmp(sect_a, "HULLDISK", 8) == 0,
		       name);
		puts("read sectors 0-1 through split buffers, data matches\n");
	}

	if (!ro && ((d->features >> 14) & 1) && cap >= 24)
		blk_ranges(&q, name, (d->features >> 13) & 1);

	if ((d->features >> 9) & 1) {
		st = blk_io(&q, 4, 0, bufs, 0, 0);
		result(st == 0, name);
		puts("flush\n");
	}

	memset(sect_a, 0, 32);
	st = blk_io(&q, 8, 0, bufs, 1, 20);
	result(st == 0, name);
	puts("get-id \"");
	sect_a[20] = 0;
	puts((const char *)sect_a);
	puts("\"\n");

	st = blk_io(&q, 0, cap, bufs, 1, 512);
	result(st == 1, name);
	puts("read past the end refused with IOERR\n");

	const char *resize = param("testguest.blk_resize");
	if (n == 0 && resize && resize[0] == '1')
		wait_blk_resize(d, &q, name, cap);

	const char *io = param("testguest.blk_io");
	u64 count = io ? parse_num(&io) : 0;
	if (count && cap >= 16) {
		u64 t0 = rdtsc(), seed = 12345;
		int bad = 0;
		for (u64 k = 0; k < count; k++)
			bad |= blk_io(&q, 0, (k * 8) % (cap - 8), bufs, 1, 4096) != 0;
		u64 t1 = rdtsc();
		for (u64 k = 0; k < count; k++) {
			seed = seed * 6364136223846793005UL + 1442695040888963407UL;
			bad |= blk_io(&q, 0, ((seed >> 33) % (cap / 8)) * 8 % (cap - 8), bufs, 1, 4096) != 0;
		}
		u64 t2 = rdtsc();
		result(!bad, name);
		put_dec(count);
		puts(" x 4 KiB reads: sequential ");
		put_dec(t1 - t0);
		puts(" tsc, random ");
		put_dec(t2 - t1);
		puts(" tsc\n");
	}

	const char *corrupt = param("testguest.corrupt");
	if (corrupt && corrupt[0] == '1')
		corrupt_queue(&q, name);
}

/* ---------- virtio-balloon ---------- */

/* Memory this guest may give up: 1 MiB of its own, page aligned, and the PFNs naming it. */
static u8 balloon_area[256 * 4096] __attribute__((aligned(4096)));
static u32 balloon_pfns[256];

static int balloon_send(struct vq *q, u32 n)
{
	set_desc(q, 0, balloon_pfns, n * 4, 0);
	vq_offer(q, 0);
	vq_notify(q);
	return vq_wait(q, SPIN_LIMIT) >= 0;
}

/* The host asks for `num_pages` (vmm --balloon MIB): the guest fills that many pages, gives
 * them on the inflate queue, says so in `actual`, finds them zeroed (the host freed them;
 * a real driver would not look), and takes them back on the deflate queue. */
static void test_balloon(struct vdev *d)
{
	struct vq inflate, deflate;
	/* DEFLATE_ON_OOM (2); no page reporting: this guest has no page allocator to report. */
	if (!vdev_init(d, 1UL << 2) || !vq_init(d, &inflate, 0) || !vq_init(d, &deflate, 1)) {
		result(0, "balloon: device setup failed\n");
		return;
	}
	vdev_ready(d);
	u32 target = mmio_read32(d->base + R_CONFIG);
	result(target <= 256, "balloon: ");
	puts("target ");
	put_dec(target);
	puts(" pages\n");
	if (target == 0 || target > 256)
		return;
	memset(balloon_area, 0x77, sizeof(balloon_area));
	for (u32 i = 0; i < target; i++)
		balloon_pfns[i] = (u32)(((u64)balloon_area >> 12) + i);
	int ok = balloon_send(&inflate, target);
	mmio_write32(d->base + R_CONFIG + 4, target);
	result(ok, "balloon: ");
	puts("inflated ");
	put_dec(target);
	puts(" pages\n");
	int zero = 1;
	for (u32 i = 0; i < target * 4096; i += 512)
		zero &= balloon_area[i] == 0;
	result(ok && zero, "balloon: ");
	puts("inflated pages read back as zeroes: the host freed them\n");
	ok = balloon_send(&deflate, target);
	mmio_write32(d->base + R_CONFIG + 4, 0);
	result(ok && mmio_read32(d->base + R_CONFIG + 4) == 0, "balloon: ");
	puts("deflated\n");
}

/* ---------- virtio-rng ---------- */

static u8 rng_buf[64];

static void test_rng(struct vdev *d)
{
	struct vq q;
	if (!vdev_init(d, 0) || !vq_init(d, &q, 0)) {
		result(0, "rng: device setup failed\n");
		return;
	}
	vdev_ready(d);
	memset(rng_buf, 0, sizeof(rng_buf));
	set_desc(&q, 0, rng_buf, sizeof(rng_buf), D_WRITE);
	vq_offer(&q, 0);
	vq_notify(&q);
	long len = vq_wait(&q, SPIN_LIMIT);
	int nonzero = 0;
	for (u32 i = 0; i < sizeof(rng_buf); i++)
		nonzero += rng_buf[i] != 0;
	result(len == (long)sizeof(rng_buf) && nonzero > 16, "rng: read ");
	put_dec(len < 0 ? 0 : (u64)len);
	puts(" random bytes\n");
}

/* ---------- virtio-net ---------- */

#define NET_HDR 12
static u8 rx_buf[NET_HDR + 1518];
static u8 tx_buf[NET_HDR + 64];
static u8 dhcp_buf[NET_HDR + 342];

/* The one receive buffer: offered to the device at most once at a time. */
static int rx_out;

static void rx_give(struct vq *rx)
{
	if (rx_out)
		return;
	memset(rx_buf, 0, sizeof(rx_buf));
	vq_offer(rx, 0);
	vq_notify(rx);
	rx_out = 1;
}

static long rx_take(struct vq *rx, u64 spins)
{
	long n = vq_wait(rx, spins);
	if (n >= 0)
		rx_out = 0;
	return n;
}

static void put_ip(const u8 *a)
{
	for (int i = 0; i < 4; i++) {
		if (i)
			putc('.');
		put_dec(a[i]);
	}
}

/* A DHCP client message (DISCOVER, or REQUEST for `want` from `server`) in dhcp_buf;
 * returns the frame's length with the virtio-net header. */
static u32 dhcp_message(const u8 *mac, u8 kind, const u8 *want, const u8 *server)
{
	memset(dhcp_buf, 0, sizeof(dhcp_buf));
	u8 *f = dhcp_buf + NET_HDR;
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x08;
	u8 *ip = f + 14, *udp = ip + 20, *m = udp + 8;
	u32 mlen = 300, ulen = 8 + mlen, iplen = 20 + ulen;
	ip[0] = 0x45;
	ip[2] = (u8)(iplen >> 8);
	ip[3] = (u8)iplen;
	ip[8] = 64;
	ip[9] = 17;
	memset(ip + 16, 0xff, 4);
	u32 s = 0;
	for (int i = 0; i < 20; i += 2)
		s += (u32)(ip[i] << 8 | ip[i + 1]);
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	ip[10] = (u8)(~s >> 8);
	ip[11] = (u8)~s;
	udp[1] = 68;
	udp[3] = 67;
	udp[4] = (u8)(ulen >> 8);
	udp[5] = (u8)ulen;
	m[0] = 1;
	m[1] = 1;
	m[2] = 6;
	m[4] = 0x12, m[5] = 0x34, m[6] = 0xab, m[7] = 0xcd;
	m[10] = 0x80;
	memcpy(m + 28, mac, 6);
	u8 *o = m + 236;
	o[0] = 99, o[1] = 130, o[2] = 83, o[3] = 99;
	o += 4;
	*o++ = 53, *o++ = 1, *o++ = kind;
	if (want) {
		*o++ = 50, *o++ = 4;
		memcpy(o, want, 4);
		o += 4;
		*o++ = 54, *o++ = 4;
		memcpy(o, server, 4);
		o += 4;
	}
	*o = 255;
	return NET_HDR + 14 + iplen;
}

/* The DHCP reply of `kind` to our transaction in rx_buf, or 0: its BOOTP message. */
static const u8 *dhcp_reply(long len, u8 kind)
{
	const u8 *f = rx_buf + NET_HDR;
	if (len < NET_HDR + 14 + 20 + 8 + 240 || f[12] != 0x08 || f[13] != 0 || f[14 + 9] != 17)
		return 0;
	const u8 *udp = f + 14 + (f[14] & 15) * 4, *m = udp + 8;
	if (udp[3] != 68 || m[0] != 2 || m[4] != 0x12 || m[5] != 0x34 || m[6] != 0xab || m[7] != 0xcd)
		return 0;
	for (const u8 *o = m + 240; o < rx_buf + len && *o != 255; o += o[0] ? 2 + o[1] : 1)
		if (o[0] == 53 && o[2] == kind)
			return m;
	return 0;
}

/* The value of option `code` in message m (len bytes of frame), or 0. */
static const u8 *dhcp_option(const u8 *m, long len, u8 code)
{
	for (const u8 *o = m + 240; o < rx_buf + len && *o != 255; o += o[0] ? 2 + o[1] : 1)
		if (o[0] == code)
			return o + 1;
	return 0;
}

/* Sends the message in dhcp_buf and waits for a reply of `kind`, skipping other frames. */
static const u8 *dhcp_exchange(struct vq *rx, struct vq *tx, u32 flen, u8 kind, long *len)
{
	for (int round = 0; round < 40; round++) {
		if (round % 8 == 0) {
			set_desc(tx, 0, dhcp_buf, flen, 0);
			vq_offer(tx, 0);
			vq_notify(tx);
			vq_wait(tx, SPIN_LIMIT);
		}
		rx_give(rx);
		*len = rx_take(rx, SPIN_LIMIT / 16);
		const u8 *m = *len < 0 ? 0 : dhcp_reply(*len, kind);
		if (m)
			return m;
	}
	return 0;
}

/* The address DHCP leased (testguest.ping uses it). */
static u8 leased_ip[4];
static int have_lease;

/* DISCOVER, OFFER, REQUEST, ACK with the VMM's DHCP server: prints what it leased. */
static void test_dhcp(struct vq *rx, struct vq *tx, const u8 *mac)
{
	long len;
	const u8 *m = dhcp_exchange(rx, tx, dhcp_message(mac, 1, 0, 0), 2, &len);
	if (!m) {
		result(0, "dhcp: no offer\n");
		return;
	}
	u8 yi[4], server[4] = {0, 0, 0, 0};
	memcpy(yi, m + 16, 4);
	memcpy(leased_ip, yi, 4);
	const u8 *sid = dhcp_option(m, len, 54);
	if (sid && sid[0] == 4)
		memcpy(server, sid + 1, 4);
	m = dhcp_exchange(rx, tx, dhcp_message(mac, 3, yi, server), 5, &len);
	if (!m || memcmp(m + 16, yi, 4) != 0) {
		result(0, "dhcp: the request was not acknowledged\n");
		return;
	}
	const u8 *mask = dhcp_option(m, len, 1), *router = dhcp_option(m, len, 3);
	const u8 *dns = dhcp_option(m, len, 6), *host = dhcp_option(m, len, 12);
	u32 prefix = 0;
	if (mask && mask[0] == 4)
		for (int i = 1; i <= 4; i++)
			for (u8 b = mask[i]; b & 0x80; b = (u8)(b << 1))
				prefix++;
	have_lease = 1;
	result(1, "dhcp: ");
	put_ip(yi);
	puts("/");
	put_dec(prefix);
	if (router && router[0] >= 4) {
		puts(" router ");
		put_ip(router + 1);
	}
	if (dns && dns[0] >= 4) {
		puts(" dns ");
		put_ip(dns + 1);
	}
	if (host) {
		puts(" hostname ");
		for (int i = 0; i < host[0]; i++)
			putc((char)host[1 + i]);
	}
	puts("\n");
}

static u16 ip_sum(const u8 *p, u32 n)
{
	u32 s = 0;
	for (u32 i = 0; i + 1 < n; i += 2)
		s += (u32)(p[i] << 8 | p[i + 1]);
	if (n & 1)
		s += (u32)p[n - 1] << 8;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (u16)~s;
}

/* An ARP frame (op 1 request, 2 reply) from us in dhcp_buf; returns its length. */
static u32 arp_frame(const u8 *mac, u16 op, const u8 *to_mac, const u8 *to_ip)
{
	memset(dhcp_buf, 0, sizeof(dhcp_buf));
	u8 *f = dhcp_buf + NET_HDR;
	if (to_mac)
		memcpy(f, to_mac, 6);
	else
		memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x08, f[13] = 0x06;
	u8 *a = f + 14;
	a[1] = 1, a[2] = 0x08, a[4] = 6, a[5] = 4, a[7] = (u8)op;
	memcpy(a + 8, mac, 6);
	memcpy(a + 14, leased_ip, 4);
	if (to_mac)
		memcpy(a + 18, to_mac, 6);
	memcpy(a + 24, to_ip, 4);
	return NET_HDR + 60;
}

static void send_frame(struct vq *tx, u32 len)
{
	set_desc(tx, 0, dhcp_buf, len, 0);
	vq_offer(tx, 0);
	vq_notify(tx);
	vq_wait(tx, SPIN_LIMIT);
}

/* With the leased address: ARP for `peer` (dotted IPv4 on the command line), then an ICMP
 * echo to it, answering ARP for our own address meanwhile: a zone on the same switch. */
static void test_ping(struct vq *rx, struct vq *tx, const u8 *mac, const char *peer)
{
	u8 ip[4], peer_mac[6];
	const char *p = peer;
	for (int i = 0; i < 4; i++) {
		ip[i] = (u8)parse_num(&p);
		if (*p == '.')
			p++;
	}
	const u8 *f = rx_buf + NET_HDR;
	int step = 0; /* 0: ARP for the peer; 1: echo sent, waiting for the reply */
	for (int round = 0; round < 200 && step < 2; round++) {
		if (round % 8 == 0) {
			if (step == 0) {
				send_frame(tx, arp_frame(mac, 1, 0, ip));
			} else {
				memset(dhcp_buf, 0, sizeof(dhcp_buf));
				u8 *e = dhcp_buf + NET_HDR;
				memcpy(e, peer_mac, 6);
				memcpy(e + 6, mac, 6);
				e[12] = 0x08;
				u8 *iph = e + 14, *icmp = iph + 20;
				iph[0] = 0x45, iph[3] = 20 + 16, iph[8] = 64, iph[9] = 1;
				memcpy(iph + 12, leased_ip, 4);
				memcpy(iph + 16, ip, 4);
				u16 c = ip_sum(iph, 20);
				iph[10] = (u8)(c >> 8), iph[11] = (u8)c;
				icmp[0] = 8, icmp[4] = 0x48, icmp[5] = 0x55, icmp[7] = 1;
				memcpy(icmp + 8, "hull-tg!", 8);
				c = ip_sum(icmp, 16);
				icmp[2] = (u8)(c >> 8), icmp[3] = (u8)c;
				send_frame(tx, NET_HDR + 14 + 36);
			}
		}
		rx_give(rx);
		long len = rx_take(rx, SPIN_LIMIT / 16);
		if (len < 0)
			continue;
		if (len >= NET_HDR + 42 && f[12] == 0x08 && f[13] == 0x06) {
			const u8 *a = f + 14;
			if (a[7] == 2 && memcmp(a + 14, ip, 4) == 0 && step == 0) {
				memcpy(peer_mac, a + 8, 6);
				step = 1;
				round = -1; /* send the echo at once */
			} else if (a[7] == 1 && memcmp(a + 24, leased_ip, 4) == 0) {
				u8 who_mac[6], who_ip[4];
				memcpy(who_mac, a + 8, 6);
				memcpy(who_ip, a + 14, 4);
				send_frame(tx, arp_frame(mac, 2, who_mac, who_ip));
			}
		} else if (step == 1 && len >= NET_HDR + 14 + 28 && f[12] == 0x08 && f[13] == 0 &&
			   f[14 + 9] == 1 && memcmp(f + 14 + 12, ip, 4) == 0) {
			const u8 *icmp = f + 14 + (f[14] & 15) * 4;
			if (icmp[0] == 0 && icmp[4] == 0x48 && icmp[5] == 0x55)
				step = 2;
		}
	}
	result(step == 2, "ping: ");
	put_ip(ip);
	puts(step == 2 ? " answered our echo from the leased address\n"
		       : step == 1 ? " answered ARP, not the echo\n" : " did not answer ARP\n");
}

static void test_net(struct vdev *d)
{
	struct vq rx, tx;
	/* MAC (5) only: no offloads, no mergeable buffers. */
	if (!vdev_init(d, 1UL << 5) || !vq_init(d, &rx, 0) || !vq_init(d, &tx, 1)) {
		result(0, "net: device setup failed\n");
		return;
	}
	vdev_ready(d);
	u8 mac[6];
	for (int i = 0; i < 6; i++)
		mac[i] = *(volatile u8 *)(d->base + R_CONFIG + (u64)i);
	puts("testguest: net: mac");
	for (int i = 0; i < 6; i++) {
		putc(i ? ':' : ' ');
		putc("0123456789abcdef"[mac[i] >> 4]);
		putc("0123456789abcdef"[mac[i] & 15]);
	}
	puts("\n");

	memset(rx_buf, 0, sizeof(rx_buf));
	set_desc(&rx, 0, rx_buf, sizeof(rx_buf), D_WRITE);
	const char *dhcp = param("testguest.dhcp");
	if (dhcp && dhcp[0] == '1')
		test_dhcp(&rx, &tx, mac);
	const char *peer = param("testguest.ping");
	if (peer && have_lease)
		test_ping(&rx, &tx, mac, peer);
	rx_give(&rx);

	memset(tx_buf, 0, sizeof(tx_buf));
	u8 *f = tx_buf + NET_HDR;
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x88;
	f[13] = 0xb5;
	memcpy(f + 14, "hull-net-test ping", 18);
	set_desc(&tx, 0, tx_buf, sizeof(tx_buf), 0);
	vq_offer(&tx, 0);
	vq_notify(&tx);
	result(vq_wait(&tx, SPIN_LIMIT) >= 0, "net: sent a frame\n");

	const char *echo = param("testguest.net_echo");
	if (echo && echo[0] == '1') {
		/* A switch port may still be coming up when the first frame leaves, and other
		 * frames may arrive first: like any protocol over Ethernet, resend the ping now
		 * and then and skip what is not the answer. */
		const u8 *g = rx_buf + NET_HDR;
		long len = -1;
		int ok = 0;
		for (int round = 0; round < 40 && !ok; round++) {
			if (round > 0 && round % 4 == 0) {
				vq_offer(&tx, 0);
				vq_notify(&tx);
				vq_wait(&tx, SPIN_LIMIT);
			}
			len = vq_wait(&rx, SPIN_LIMIT / 16);
			if (len < 0)
				continue;
			ok = len >= NET_HDR + 32 && g[12] == 0x88 && g[13] == 0xb5 &&
			     memcmp(g + 14, "hull-net-test pong", 18) == 0;
			if (!ok) {
				memset(rx_buf, 0, sizeof(rx_buf));
				vq_offer(&rx, 0);
				vq_notify(&rx);
			}
		}
		result(ok, "net: received the peer's answer, ");
		put_dec(len < 0 ? 0 : (u64)len);
		puts(" bytes\n");
	}
}

/* ---------- probing ---------- */

static void probe_virtio(void)
{
	const char *pos = cmdline, *v;
	int found = 0, blk = 0;
	while ((v = next_param(&pos, "virtio_mmio.device"))) {
		struct vdev d;
		u64 size = parse_num(&v);
		if (*v++ != '@')
			continue;
		d.base = parse_num(&v);
		d.irq = *v == ':' ? (v++, (u32)parse_num(&v)) : 0;
		found++;
		virtio_declared++;
		if (size < 0x200 || mmio_read32(d.base + R_MAGIC) != VIRTIO_MAGIC ||
		    mmio_read32(d.base + R_VERSION) != 2) {
			result(0, "virtio: no modern virtio-mmio device at ");
			put_hex(d.base);
			puts("\n");
			continue;
		}
		d.id = mmio_read32(d.base + R_DEVICE_ID);
		puts("testguest: virtio: device type ");
		put_dec(d.id);
		puts(" at ");
		put_hex(d.base);
		puts(" irq ");
		put_dec(d.irq);
		puts("\n");
		if (d.id == 2)
			test_blk(&d, blk++);
		else if (d.id == 4)
			test_rng(&d);
		else if (d.id == 1)
			test_net(&d);
		else if (d.id == 5)
			test_balloon(&d);
	}
	if (!found)
		puts("testguest: virtio: no devices on the command line\n");
}

/* ---------- exit ---------- */

static void __attribute__((noreturn)) triple_fault(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) idt = {0, 0};
	__asm__ volatile("lidt %0; int3" : : "m"(idt));
	for (;;)
		__asm__ volatile("hlt");
}

static void __attribute__((noreturn)) reset(void)
{
	outb(0x64, 0xfe);
	/* No i8042 (qemu -M microvm): qemu's isa-debug-exit at 0xf4 if present, else triple
	 * fault with an empty IDT. */
	outb(0xf4, 0);
	triple_fault();
}

/* Our own identity map of 0..4 GiB (the VMM's covers 1 GiB): 1 GiB pages when the CPU has
 * them, which is four entries instead of 2048 to write. */
static void setup_paging(void)
{
	u32 a, b, c, d;
	cpuid(0x80000000, 0, &a, &b, &c, &d);
	int gbpages = 0;
	if (a >= 0x80000001) {
		cpuid(0x80000001, 0, &a, &b, &c, &d);
		gbpages = (d >> 26) & 1;
	}
	memset(pml4, 0, 4096 * 2);
	pml4[0] = (u64)pdpt | 3;
	if (gbpages) {
		for (u64 i = 0; i < 4; i++)
			pdpt[i] = (i << 30) | 0x83;
	} else {
		for (u64 i = 0; i < 4; i++)
			pdpt[i] = ((u64)pd + 4096 * i) | 3;
		for (u64 i = 0; i < 2048; i++)
			pd[i] = (i << 21) | 0x83;
	}
	load_page_tables();
}

void __attribute__((noreturn)) guest_main(u64 info, int kind)
{
	/* The command line first: testguest.quick=1 is the launch-to-exit benchmark (print one
	 * line, reset) and must not pay for zeroing memory or building page tables. */
	u64 cmd = kind == 0 ? (*(const u32 *)(info + 0x228) | ((u64) * (const u32 *)(info + 0x0c8) << 32))
			    : ((const struct hvm_start_info *)info)->cmdline_paddr;
	if (cmd)
		cmdline = (const char *)cmd;
	const char *quick = param("testguest.quick");
	if (quick && quick[0] == '1') {
		puts("testguest: quick boot, resetting\n");
		reset();
	}
	/* The stack and page tables live outside [__bss_start, __bss_end). */
	memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));
	if (kind == 0)
		setup_paging();
	puts("\ntestguest: hello from the hull test guest\n");
	const char *ier = param("testguest.uart_ier");
	if (ier && ier[0] == '1') {
		/* Enable the UART's transmit interrupt (nothing routes it: interrupts stay off).
		 * The VMM stops batching serial output at this write. */
		outb(0x3f9, 0x02);
		puts("testguest: uart transmit interrupt enabled\n");
	}
	if (kind == 0) {
		puts("testguest: boot: 64-bit Linux boot protocol\n");
		read_zero_page((const u8 *)info);
	} else {
		puts("testguest: boot: PVH\n");
		read_pvh((const struct hvm_start_info *)info);
	}
	const char *fault = param("testguest.fault");
	if (fault && fault[0] == '1') {
		puts("testguest: triple-faulting on request\n");
		triple_fault();
	}
	check_boot_info();
	check_cpuid();
	check_mptable();
	const char *pit = param("testguest.pit");
	if (!(pit && pit[0] == '0'))
		check_pit(pit && memcmp(pit, "in", 2) == 0);
	const char *smp = param("testguest.smp");
	if (!(smp && smp[0] == '0') && kind == 0)
		start_aps();
	probe_virtio();
	check_acpi();
	check_smbios();
	const char *mdata = param("testguest.mdata");
	if (mdata && mdata[0] == '1')
		check_mdata();
	const char *bench = param("testguest.mdata_bench");
	if (bench) {
		const char *b = bench;
		bench_mdata((u32)parse_num(&b));
	}
	puts("testguest: done, ");
	put_dec((u64)passed);
	puts(" passed, ");
	put_dec((u64)failed);
	puts(" failed\n");
	puts(failed == 0 && passed > 0 ? "testguest: ALL PASS\n" : "testguest: SOME FAILED\n");
	const char *hold = param("testguest.hold");
	if (hold && memcmp(hold, "kbd", 3) == 0) {
		/* Set-2 make codes: Ctrl 0x14, Alt 0x11, Del 0xe0 0x71. */
		static const u8 want[4] = {0x14, 0x11, 0xe0, 0x71};
		u32 got = 0;
		puts("testguest: waiting for ctrl-alt-del\n");
		while (got < 4) {
			if (inb(0x64) & 1) {
				u8 b = inb(0x60);
				got = b == want[got] ? got + 1 : (b == want[0] ? 1 : 0);
			} else {
				for (int i = 0; i < 200; i++)
					__asm__ volatile("pause");
			}
		}
		puts("testguest: got ctrl-alt-del\n");
		reset();
	}
	if (hold && hold[0] == '1') {
		puts("testguest: holding\n");
		for (;;)
			__asm__ volatile("cli; hlt");
	}
	const char *spin = param("testguest.spin");
	if (spin && spin[0] == '1') {
		puts("testguest: spinning\n");
		__asm__ volatile("cli");
		for (;;)
			__asm__ volatile("pause" ::: "memory");
	}
	const char *how = param("testguest.exit");
	if (how && memcmp(how, "acpi", 4) == 0 && fadt_sleep_port) {
		puts("testguest: powering off through ACPI\n");
		outb(fadt_sleep_port, (5 << 2) | (1 << 5));
	}
	reset();
}
