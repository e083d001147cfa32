/* fusd-bench-ref
 * name: raw_fuse
 * transport: fuse
 * title: raw C /dev/fuse loop, no libfuse (the floor of a FUSE round trip)
 * libs: -pthread
 * needs: /dev/fuse
 */
/*
 * One blocking read(2) per request into a preallocated buffer, a switch on the
 * opcode, one writev(2) per reply: the least any /dev/fuse server can do, so
 * fusd's ratio to it is all the overhead a server adds.  The filesystem is
 * fusd's: MOUNTPOINT/dev0 is the perf device (perfdev.h), opened with
 * FOPEN_DIRECT_IO | FOPEN_NOFLUSH like a fusd device without a flush callback.
 *
 *   raw_fuse [--readers N] MOUNTPOINT
 *
 * Mounts with mount(2) as root, else through fusermount3 (_FUSE_COMMFD).  N
 * readers = N threads, each on its own fd cloned with FUSE_DEV_IOC_CLONE (as
 * fusd does).  The contract (READY, SKIP, SIGTERM) is README.md.
 */
#include "perfdev.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/fuse.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <dirent.h>
#include <sys/wait.h>
#include <time.h>

#define ROOT_ID 1
#define DEV0_ID 2
#define WANTED_INIT (FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_ATOMIC_O_TRUNC | FUSE_PARALLEL_DIROPS)

static const char *mountpoint;
static char dev0_path[PATH_MAX + 8];
static int readers;
static int use_fusermount;
static time_t start_time;

static void fill_attr(uint64_t ino, struct fuse_attr *a)
{
	memset(a, 0, sizeof(*a));
	a->ino = ino;
	a->atime = a->mtime = a->ctime = (uint64_t)start_time;
	a->blksize = 4096;
	a->uid = geteuid();
	a->gid = getegid();
	if (ino == ROOT_ID) {
		a->mode = S_IFDIR | 0755;
		a->nlink = 2;
	} else {
		a->mode = S_IFREG | 0666;
		a->nlink = 1;
	}
}

static void handle(int fd, const char *buf)
{
	const struct fuse_in_header *in = (const void *)buf;
	const void *arg = buf + sizeof(*in);
	uint64_t u = in->unique;

	switch (in->opcode) {
	case FUSE_INIT: {
		const struct fuse_init_in *ii = arg;
		struct fuse_init_out o = {0};
		o.major = FUSE_KERNEL_VERSION;
		o.minor = ii->minor < FUSE_KERNEL_MINOR_VERSION ? ii->minor : FUSE_KERNEL_MINOR_VERSION;
		o.max_readahead = ii->max_readahead;
		o.flags = ii->flags & WANTED_INIT;
		o.max_background = 16;
		o.congestion_threshold = 12;
		o.max_write = PERF_MAX_WRITE;
		o.time_gran = 1;
		o.max_pages = PERF_MAX_WRITE / 4096;
		perf_reply(fd, u, 0, &o, sizeof(o), NULL, 0);
		perf_ready(dev0_path, readers);
		break;
	}
	case FUSE_LOOKUP: {
		if (in->nodeid != ROOT_ID || strcmp(arg, "dev0")) {
			perf_reply(fd, u, ENOENT, NULL, 0, NULL, 0);
			break;
		}
		struct fuse_entry_out o = {0};
		o.nodeid = DEV0_ID;
		o.entry_valid = o.attr_valid = PERF_TIMEOUT;
		fill_attr(DEV0_ID, &o.attr);
		perf_reply(fd, u, 0, &o, sizeof(o), NULL, 0);
		break;
	}
	case FUSE_GETATTR: {
		if (in->nodeid != ROOT_ID && in->nodeid != DEV0_ID) {
			perf_reply(fd, u, ENOENT, NULL, 0, NULL, 0);
			break;
		}
		struct fuse_attr_out o = {0};
		o.attr_valid = PERF_TIMEOUT;
		fill_attr(in->nodeid, &o.attr);
		perf_reply(fd, u, 0, &o, sizeof(o), NULL, 0);
		break;
	}
	case FUSE_OPEN: {
		if (in->nodeid != DEV0_ID) {
			perf_reply(fd, u, EISDIR, NULL, 0, NULL, 0);
			break;
		}
		struct fuse_open_out o = {.fh = 1, .open_flags = FOPEN_DIRECT_IO | FOPEN_NOFLUSH};
		perf_reply(fd, u, 0, &o, sizeof(o), NULL, 0);
		break;
	}
	case FUSE_OPENDIR: {
		struct fuse_open_out o = {0};
		perf_reply(fd, u, in->nodeid == ROOT_ID ? 0 : ENOTDIR, &o, in->nodeid == ROOT_ID ? sizeof(o) : 0, NULL, 0);
		break;
	}
	case FUSE_READDIR: {
		const struct fuse_read_in *r = arg;
		char out[256];
		size_t len = 0;
		static const char *const names[] = {".", "..", "dev0"};
		for (uint64_t i = r->offset; i < 3; i++) {
			struct fuse_dirent *d = (void *)(out + len);
			size_t sz = FUSE_DIRENT_SIZE(&(struct fuse_dirent){.namelen = strlen(names[i])});
			if (len + sz > r->size)
				break;
			memset(d, 0, sz);
			d->ino = i == 2 ? DEV0_ID : ROOT_ID;
			d->off = i + 1;
			d->namelen = strlen(names[i]);
			d->type = i == 2 ? DT_REG : DT_DIR;
			memcpy(d->name, names[i], d->namelen);
			len += sz;
		}
		perf_reply(fd, u, 0, out, len, NULL, 0);
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
		if (io->cmd != PERF_IOCTL || io->out_size < sizeof(int)) {
			perf_reply(fd, u, ENOTTY, NULL, 0, NULL, 0);
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
	case FUSE_RELEASEDIR:
	case FUSE_DESTROY:
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
		perf_die("raw_fuse: out of memory");
	for (;;) {
		ssize_t n = read(fd, buf, PERF_BUFSIZE);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == ENOENT)
				continue; /* ENOENT: the request was interrupted before we read it */
			if (errno == ENODEV)
				exit(0); /* unmounted: done */
			perror("raw_fuse: read /dev/fuse");
			exit(1);
		}
		if ((size_t)n < sizeof(struct fuse_in_header))
			perf_die("raw_fuse: short request (%zd bytes)", n);
		handle(fd, buf);
	}
	return NULL;
}

/* Not root: fusermount3 mounts and hands us the fd over a socketpair (_FUSE_COMMFD). */
static int mount_with_fusermount(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		perf_die("raw_fuse: socketpair: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		perf_die("raw_fuse: fork: %s", strerror(errno));
	if (pid == 0) {
		char env[32];
		perf_unblock_stop_signals();
		close(sv[0]);
		snprintf(env, sizeof(env), "%d", sv[1]);
		setenv("_FUSE_COMMFD", env, 1);
		execlp("fusermount3", "fusermount3", "-o", "fsname=fusd-raw,subtype=fusd-raw,nosuid,nodev,default_permissions",
		       "--", mountpoint, (char *)NULL);
		fprintf(stderr, "SKIP: not root and no fusermount3 (%s)\n", strerror(errno));
		_exit(PERF_EXIT_SKIP);
	}
	close(sv[1]);
	char byte;
	char ctl[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {&byte, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
	ssize_t got = recvmsg(sv[0], &msg, 0);
	int status = 0;
	waitpid(pid, &status, 0);
	close(sv[0]);
	struct cmsghdr *c = got > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
	if (!c || c->cmsg_type != SCM_RIGHTS) {
		if (WIFEXITED(status) && WEXITSTATUS(status) == PERF_EXIT_SKIP)
			exit(PERF_EXIT_SKIP);
		perf_die("raw_fuse: fusermount3 could not mount %s (exit status %d)", mountpoint, WEXITSTATUS(status));
	}
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof(fd));
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	return fd;
}

static int mount_channel(void)
{
	if (geteuid() != 0) {
		use_fusermount = 1;
		return mount_with_fusermount();
	}
	int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		perf_skip("cannot open /dev/fuse: %s", strerror(errno));
	char opts[256];
	snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=%u,group_id=%u,default_permissions,allow_other", fd,
		 geteuid(), getegid());
	if (mount("fusd-raw", mountpoint, "fuse.fusd-raw", MS_NOSUID | MS_NODEV, opts) < 0)
		perf_die("raw_fuse: mount %s: %s", mountpoint, strerror(errno));
	return fd;
}

static void unmount_channel(void)
{
	if (!use_fusermount) {
		umount2(mountpoint, MNT_DETACH);
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		perf_unblock_stop_signals();
		execlp("fusermount3", "fusermount3", "-u", "-z", "-q", "--", mountpoint, (char *)NULL);
		_exit(1);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

int main(int argc, char **argv)
{
	mountpoint = perf_args(argc, argv, &readers, "MOUNTPOINT");
	char abs[PATH_MAX];
	if (!realpath(mountpoint, abs))
		perf_die("raw_fuse: %s: %s", mountpoint, strerror(errno));
	snprintf(dev0_path, sizeof(dev0_path), "%s/dev0", abs);
	perf_init();
	start_time = time(NULL);
	perf_block_stop_signals();
	int fd = mount_channel();
	pthread_t th[PERF_MAX_READERS];
	for (int i = 0; i < readers; i++) {
		int rfd = fd;
		if (i > 0) {
			uint32_t master = (uint32_t)fd;
			rfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
			if (rfd < 0 || ioctl(rfd, FUSE_DEV_IOC_CLONE, &master) < 0) {
				unmount_channel();
				perf_die("raw_fuse: FUSE_DEV_IOC_CLONE: %s", strerror(errno));
			}
		}
		pthread_create(&th[i], NULL, reader, (void *)(intptr_t)rfd);
	}
	perf_wait_for_stop();
	unmount_channel();
	return 0;
}
