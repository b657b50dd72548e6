/*
 * Block load for the nested bench's data-path rows (issue 17): O_DIRECT reads and writes of
 * a block device through Linux AIO (io_submit, as fio's libaio engine does), random 4 KiB at
 * queue depth 1 and 32, sequential 1 MiB at depth 1. Each job runs for SECONDS and prints
 * "L2: blk JOB iops N MiB/s M". Built static by run.sh (Debian's fio would bring librados,
 * librbd and glusterfs into the guest's initramfs).
 *
 *   blkbench DEVICE [SECONDS]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t seed = 88172645463325252ULL;

static uint64_t xorshift(void)
{
	seed ^= seed << 13;
	seed ^= seed >> 7;
	seed ^= seed << 17;
	return seed;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* One job: `depth` requests of `bs` bytes kept in flight for `secs` seconds, at random
 * bs-aligned offsets or one after the other below `size`. */
static void job(int fd, const char *name, int write, int random, size_t bs, int depth,
		uint64_t size, double secs)
{
	aio_context_t ctx = 0;
	if (syscall(SYS_io_setup, depth, &ctx) < 0)
		die("io_setup");
	struct iocb *cbs = calloc(depth, sizeof(*cbs));
	struct iocb **ptrs = calloc(depth, sizeof(*ptrs));
	struct io_event *ev = calloc(depth, sizeof(*ev));
	char *buf;
	if (!cbs || !ptrs || !ev || posix_memalign((void **)&buf, 4096, bs * depth))
		die("memory");
	memset(buf, 0x5a, bs * depth);
	uint64_t blocks = size / bs, next = 0, done = 0;
	for (int i = 0; i < depth; i++) {
		memset(&cbs[i], 0, sizeof(cbs[i]));
		cbs[i].aio_fildes = fd;
		cbs[i].aio_lio_opcode = write ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
		cbs[i].aio_buf = (uint64_t)(uintptr_t)(buf + i * bs);
		cbs[i].aio_nbytes = bs;
		cbs[i].aio_offset = (random ? xorshift() % blocks : next++ % blocks) * bs;
		ptrs[i] = &cbs[i];
	}
	double t0 = now(), end = t0 + secs;
	if (syscall(SYS_io_submit, ctx, depth, ptrs) != depth)
		die("io_submit");
	int inflight = depth;
	while (inflight) {
		long n = syscall(SYS_io_getevents, ctx, 1, depth, ev, NULL);
		if (n < 0)
			die("io_getevents");
		double t = now();
		for (long k = 0; k < n; k++) {
			if (ev[k].res != (int64_t)bs) {
				fprintf(stderr, "L2: blk %s: I/O error %lld\n", name, (long long)ev[k].res);
				exit(1);
			}
			done++;
			struct iocb *cb = (struct iocb *)(uintptr_t)ev[k].obj;
			if (t < end) {
				cb->aio_offset = (random ? xorshift() % blocks : next++ % blocks) * bs;
				if (syscall(SYS_io_submit, ctx, 1, &cb) != 1)
					die("io_submit");
			} else {
				inflight--;
			}
		}
	}
	double t = now() - t0;
	printf("L2: blk %s iops %.0f MiB/s %.2f\n", name, done / t, done * (double)bs / t / 1048576);
	fflush(stdout);
	syscall(SYS_io_destroy, ctx);
	free(buf);
	free(ev);
	free(ptrs);
	free(cbs);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: blkbench DEVICE [SECONDS]\n");
		return 2;
	}
	double secs = argc > 2 ? atof(argv[2]) : 3;
	int fd = open(argv[1], O_RDWR | O_DIRECT);
	if (fd < 0)
		die(argv[1]);
	uint64_t size;
	if (ioctl(fd, BLKGETSIZE64, &size) < 0)
		die("BLKGETSIZE64");
	job(fd, "randread-4k-qd1", 0, 1, 4096, 1, size, secs);
	job(fd, "randread-4k-qd32", 0, 1, 4096, 32, size, secs);
	job(fd, "randwrite-4k-qd1", 1, 1, 4096, 1, size, secs);
	job(fd, "randwrite-4k-qd32", 1, 1, 4096, 32, size, secs);
	job(fd, "read-1m-qd1", 0, 0, 1 << 20, 1, size, secs);
	job(fd, "write-1m-qd1", 1, 0, 1 << 20, 1, size, secs);
	return 0;
}
