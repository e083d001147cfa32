/* fusd-bench-ref
 * name: raw_cuse
 * transport: cuse
 * title: raw C /dev/cuse loop, no libfuse (the floor of a CUSE round trip)
 * libs: -pthread
 * needs: /dev/cuse
 */
/*
 * The CUSE twin of raw_fuse.c: one blocking read(2) per request, one writev(2)
 * per reply, on a /dev/cuse connection that serves the perf device (perfdev.h)
 * as the character device /dev/DEVNAME.  Answers like fusd's CUSE transport
 * serves a non-seekable PerfFile, so both see the same requests:
 *   - OPEN: FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE | FOPEN_STREAM | FOPEN_NOFLUSH;
 *     the kernel sends offset 0 on CUSE, READ answers the first `size` bytes;
 *   - ioctls are unrestricted (CUSE_UNRESTRICTED_IOCTL): the first IOCTL of
 *     _IOR('E', 1, int) carries no room for the answer, so it is answered
 *     FUSE_IOCTL_RETRY naming the caller's 4 bytes, and the kernel asks again.
 *
 *   raw_cuse [--readers N] DEVNAME
 *
 * N readers = N threads on the one fd (/dev/cuse cannot be cloned).  SIGTERM
 * closes the connection, which removes the node.  The contract is README.md.
 */
#include "perfdev.h"

#include <fcntl.h>
#include <linux/fuse.h>

#ifndef CUSE_INIT
#define CUSE_INIT 4096
#endif

static const char *devname;
static char dev_path[4096 + 8];
static int readers;

static void handle(int fd, const char *buf)
{
	const struct fuse_in_header *in = (const void *)buf;
	const void *arg = buf + sizeof(*in);
	uint64_t u = in->unique;

	switch (in->opcode) {
	case CUSE_INIT: {
		const struct cuse_init_in *ci = arg;
		struct cuse_init_out o = {0};
		char info[4096 + 16];
		int ilen = snprintf(info, sizeof(info), "DEVNAME=%s", devname) + 1;
		o.major = FUSE_KERNEL_VERSION;
		o.minor = ci->minor < FUSE_KERNEL_MINOR_VERSION ? ci->minor : FUSE_KERNEL_MINOR_VERSION;
		o.flags = ci->flags & CUSE_UNRESTRICTED_IOCTL;
		o.max_read = PERF_MAX_WRITE;
		o.max_write = PERF_MAX_WRITE;
		perf_reply(fd, u, 0, &o, sizeof(o), info, (size_t)ilen); /* the kernel makes the node here */
		perf_ready(dev_path, readers);
		break;
	}
	case FUSE_OPEN: {
		struct fuse_open_out o = {.fh = 1,
					  .open_flags = FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE | FOPEN_STREAM | FOPEN_NOFLUSH};
		perf_reply(fd, u, 0, &o, sizeof(o), NULL, 0);
		break;
	}
	case FUSE_READ: {
		const struct fuse_read_in *r = arg;
		const char *p;
		size_t n = perf_read(r->offset, r->size, &p);
		perf_reply(fd, u, 0, p, n, NULL, 0);
		break;
	}
	case FUSE_WRITE: {
		const struct fuse_write_in *w = arg;
		perf_write(w->offset, w + 1, w->size);
		struct fuse_write_out o = {.size = w->size};
		perf_reply(fd, u, 0, &o, sizeof(o), NULL, 0);
		break;
	}
	case FUSE_IOCTL: {
		const struct fuse_ioctl_in *io = arg;
		if (io->cmd != PERF_IOCTL) {
			perf_reply(fd, u, ENOTTY, NULL, 0, NULL, 0);
			break;
		}
		if ((io->flags & FUSE_IOCTL_UNRESTRICTED) && io->out_size < sizeof(int)) {
			struct fuse_ioctl_out o = {.flags = FUSE_IOCTL_RETRY, .in_iovs = 0, .out_iovs = 1};
			struct fuse_ioctl_iovec iov = {.base = io->arg, .len = sizeof(int)};
			perf_reply(fd, u, 0, &o, sizeof(o), &iov, sizeof(iov));
			break;
		}
		struct fuse_ioctl_out o = {0};
		int v = perf_ioctl_value();
		perf_reply(fd, u, 0, &o, sizeof(o), &v, sizeof(v));
		break;
	}
	case FUSE_POLL: {
		struct fuse_poll_out o = {.revents = PERF_POLL_MASK};
		perf_reply(fd, u, 0, &o, sizeof(o), NULL, 0);
		break;
	}
	case FUSE_FLUSH:
	case FUSE_RELEASE:
	case FUSE_FSYNC:
		perf_reply(fd, u, 0, NULL, 0, NULL, 0);
		break;
	case FUSE_FORGET:
	case FUSE_BATCH_FORGET:
	case FUSE_INTERRUPT:
		break; /* no reply */
	default:
		perf_reply(fd, u, ENOSYS, NULL, 0, NULL, 0);
	}
}

static void *reader(void *fdp)
{
	int fd = (int)(intptr_t)fdp;
	char *buf = aligned_alloc(4096, PERF_BUFSIZE);
	if (!buf)
		perf_die("raw_cuse: out of memory");
	for (;;) {
		ssize_t n = read(fd, buf, PERF_BUFSIZE);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == ENOENT)
				continue;
			if (errno == ENODEV)
				exit(0); /* the connection went away */
			perror("raw_cuse: read /dev/cuse");
			exit(1);
		}
		if ((size_t)n < sizeof(struct fuse_in_header))
			perf_die("raw_cuse: short request (%zd bytes)", n);
		handle(fd, buf);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	devname = perf_args(argc, argv, &readers, "DEVNAME");
	if (strlen(devname) > 4000)
		perf_die("raw_cuse: device name too long");
	snprintf(dev_path, sizeof(dev_path), "/dev/%s", devname);
	perf_init();
	perf_block_stop_signals();
	int fd = open("/dev/cuse", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		perf_skip("cannot open /dev/cuse: %s", strerror(errno));
	pthread_t th[PERF_MAX_READERS];
	for (int i = 0; i < readers; i++)
		pthread_create(&th[i], NULL, reader, (void *)(intptr_t)fd);
	perf_wait_for_stop();
	close(fd); /* the kernel removes /dev/DEVNAME */
	return 0;
}
