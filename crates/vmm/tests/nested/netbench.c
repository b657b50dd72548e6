/* TCP stream check and throughput for the nested tier: one end in L1 (the host side of the
 * guest's TAP), the other in the L2 guest. The stream is a known byte pattern, so the
 * receiving end checks every byte (a frame lost, reordered or corrupted by a device's
 * offloads shows as "corrupt at OFFSET"), and reports bytes, seconds and MiB/s from its
 * first byte to the sender's close.
 *
 *   netbench source PORT AMOUNT   listen, accept one connection, send, close
 *   netbench sink PORT            listen, accept one connection, receive until EOF, check
 *   netbench send HOST PORT AMOUNT connect, send, close
 *   netbench recv HOST PORT       connect, receive until EOF, check
 *
 * AMOUNT is a byte count, or sN for N seconds. Output: one line,
 * "netbench MODE bytes N seconds S MiB/s M intact" (or "... corrupt at OFFSET"); exit 1 on
 * any error or corruption. Static glibc, no dependencies. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
/* The pattern repeats every P bytes, a prime: no segment or buffer size is a multiple of it,
 * so a lost, repeated or misplaced piece shows. Byte i of the stream is table[i % P]; the
 * table holds CHUNK more so any offset has a whole chunk after it (no per-byte work: a
 * nested guest's CPU is slow enough to bound what it measures otherwise). */
#define P 65521
static unsigned char table[P + CHUNK];

static void fill_table(void) {
	for (unsigned long long i = 0; i < sizeof table; i++) {
		unsigned long long k = i % P;
		table[i] = (unsigned char)((k * 2654435761ULL >> 13) ^ (k >> 9) ^ k);
	}
}

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int listen_accept(int port) {
	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (l < 0) return -1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1)) return -1;
	int c = accept(l, NULL, NULL);
	close(l);
	return c;
}

static int dial(const char *host, int port) {
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return -1;
	/* The other end may not listen yet: try for 30 s. */
	for (int i = 0; i < 300; i++) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0) return -1;
		if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) return s;
		close(s);
		usleep(100000);
	}
	return -1;
}

static void report(const char *mode, unsigned long long n, double secs, long long bad) {
	double mib = secs > 0 ? n / secs / 1048576.0 : 0;
	if (bad >= 0)
		printf("netbench %s bytes %llu seconds %.3f MiB/s %.2f corrupt at %lld\n", mode, n, secs, mib, bad);
	else
		printf("netbench %s bytes %llu seconds %.3f MiB/s %.2f intact\n", mode, n, secs, mib);
	fflush(stdout);
}

static int do_send(int s, const char *mode, const char *amount) {
	static unsigned char buf[CHUNK];
	unsigned long long total = 0, limit = ~0ULL;
	const unsigned char *p;
	double secs = 0, t0 = now();
	if (amount[0] == 's') secs = atof(amount + 1);
	else limit = strtoull(amount, NULL, 0);
	while (total < limit && (secs == 0 || now() - t0 < secs)) {
		size_t n = CHUNK;
		if (limit - total < n) n = limit - total;
		p = table + total % P;
		size_t off = 0;
		while (off < n) {
			ssize_t w = write(s, p + off, n - off);
			if (w < 0 && errno == EINTR) continue;
			if (w <= 0) { perror("netbench: write"); return 1; }
			off += w;
		}
		total += n;
	}
	shutdown(s, SHUT_WR);
	/* Wait for the receiver's close, so the time covers delivery. */
	while (read(s, buf, sizeof buf) > 0) {}
	report(mode, total, now() - t0, -1);
	return 0;
}

static int do_recv(int s, const char *mode) {
	static unsigned char buf[CHUNK];
	unsigned long long total = 0;
	long long bad = -1;
	double t0 = 0;
	for (;;) {
		ssize_t r = read(s, buf, sizeof buf);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) { perror("netbench: read"); return 1; }
		if (r == 0) break;
		if (t0 == 0) t0 = now();
		const unsigned char *want = table + total % P;
		if (bad < 0 && memcmp(buf, want, r))
			for (ssize_t i = 0; i < r && bad < 0; i++)
				if (buf[i] != want[i]) bad = (long long)(total + i);
		total += r;
	}
	report(mode, total, t0 ? now() - t0 : 0, bad);
	close(s);
	return bad >= 0 || total == 0;
}

int main(int argc, char **argv) {
	int s;
	fill_table();
	if (argc == 4 && !strcmp(argv[1], "source")) {
		if ((s = listen_accept(atoi(argv[2]))) < 0) { perror("netbench: accept"); return 1; }
		return do_send(s, "source", argv[3]);
	}
	if (argc == 3 && !strcmp(argv[1], "sink")) {
		if ((s = listen_accept(atoi(argv[2]))) < 0) { perror("netbench: accept"); return 1; }
		return do_recv(s, "sink");
	}
	if (argc == 5 && !strcmp(argv[1], "send")) {
		if ((s = dial(argv[2], atoi(argv[3]))) < 0) { perror("netbench: connect"); return 1; }
		return do_send(s, "send", argv[4]);
	}
	if (argc == 4 && !strcmp(argv[1], "recv")) {
		if ((s = dial(argv[2], atoi(argv[3]))) < 0) { perror("netbench: connect"); return 1; }
		return do_recv(s, "recv");
	}
	fprintf(stderr, "usage: netbench source PORT AMOUNT | sink PORT | send HOST PORT AMOUNT | recv HOST PORT\n");
	return 2;
}
