/*
 * perfdev.h: what every reference server serves and how it runs, written once.
 *
 * The perf device is fusd's PerfFile (fusd_runtime/examples.py): 64 KiB of
 * 'a'..'z', reads and writes at the given offset, the ioctl _IOR('E', 1, int)
 * answering a counter that counts up, and always ready for poll.  The process
 * rules (argv, READY line, SKIP exit, stop on SIGTERM) are the contract in
 * README.md next to this file.  Header-only: each reference is one .c file that
 * includes this.
 */
#ifndef FUSD_BENCH_PERFDEV_H
#define FUSD_BENCH_PERFDEV_H

#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define PERF_SIZE 65536
#define PERF_IOCTL 0x80044501u /* _IOR('E', 1, int) */
#define PERF_POLL_MASK (POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM)
#define PERF_MAX_WRITE (128 * 1024) /* the largest WRITE payload; fusd's max_write */
#define PERF_BUFSIZE (PERF_MAX_WRITE + 4096)
#define PERF_TIMEOUT 3600 /* entry/attr cache timeout, seconds (fusd's) */
#define PERF_MAX_READERS 64
#define PERF_EXIT_SKIP 3

static char perf_data[PERF_SIZE];
static int perf_counter;

static inline void perf_init(void)
{
	for (int i = 0; i < PERF_SIZE; i++)
		perf_data[i] = (char)('a' + i % 26);
}

/* READ at off: where the answer starts and how long it is (short at the end, empty beyond). */
static inline size_t perf_read(uint64_t off, size_t size, const char **start)
{
	if (off >= PERF_SIZE) {
		*start = perf_data;
		return 0;
	}
	*start = perf_data + off;
	return size < PERF_SIZE - off ? size : (size_t)(PERF_SIZE - off);
}

/* WRITE at off: store what fits, the caller answers the full size (as PerfFile does). */
static inline void perf_write(uint64_t off, const void *src, size_t n)
{
	if (off < PERF_SIZE)
		memcpy(perf_data + off, src, n < PERF_SIZE - off ? n : (size_t)(PERF_SIZE - off));
}

static inline int perf_ioctl_value(void)
{
	return __atomic_add_fetch(&perf_counter, 1, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ process rules */

static inline void perf_die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* "cannot run here": one SKIP line on stderr, exit status 3 (before READY). */
static inline void perf_skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("SKIP: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(PERF_EXIT_SKIP);
}

/* argv: [--readers N] ARG */
static inline const char *perf_args(int argc, char **argv, int *readers, const char *what)
{
	const char *arg = NULL;
	*readers = 1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--readers") && i + 1 < argc)
			*readers = atoi(argv[++i]);
		else if (argv[i][0] == '-')
			perf_die("%s: unknown option %s", argv[0], argv[i]);
		else
			arg = argv[i];
	}
	if (!arg || *readers < 1 || *readers > PERF_MAX_READERS)
		perf_die("usage: %s [--readers N] %s", argv[0], what);
	return arg;
}

static inline void perf_ready(const char *path, int readers)
{
	printf("READY dev0=%s readers=%d\n", path, readers);
	fflush(stdout);
}

/* Block SIGTERM/SIGINT in every thread (call before starting any): perf_wait_for_stop() takes them. */
static inline void perf_block_stop_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static inline void perf_unblock_stop_signals(void) /* in a child before exec */
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

static inline void perf_wait_for_stop(void)
{
	sigset_t set;
	int sig;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	while (sigwait(&set, &sig) != 0)
		;
}

/* One reply on a raw /dev/fuse or /dev/cuse channel: header + up to two parts, one writev. */
static inline void perf_reply(int fd, uint64_t unique, int err, const void *a, size_t alen, const void *b,
			      size_t blen)
{
	struct {
		uint32_t len;
		int32_t error;
		uint64_t unique;
	} out = {(uint32_t)(16 + alen + blen), -err, unique};
	struct iovec iov[3] = {{&out, sizeof(out)}, {(void *)a, alen}, {(void *)b, blen}};
	int n = 1;
	if (alen)
		iov[n++] = (struct iovec){(void *)a, alen};
	if (blen)
		iov[n++] = (struct iovec){(void *)b, blen};
	/* ENOENT: the caller was interrupted and the kernel dropped the request; nothing to do */
	if (writev(fd, iov, n) < 0 && errno != ENOENT && errno != ENODEV)
		perror("writev");
}

#endif
