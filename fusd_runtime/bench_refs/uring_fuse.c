/* fusd-bench-ref
 * name: uring_fuse
 * transport: fuse
 * title: C FUSE-over-io_uring server, a ring per CPU (fusd --transport uring's reference)
 * libs: -pthread
 * needs: /dev/fuse /sys/module/fuse/parameters/enable_uring
 */
/*
 * The reference `fusd bench --transport uring` measures fusd's ring transport
 * against: the same perf device as fusd's perfserver dev0, answered through
 * FUSE-over-io_uring with raw io_uring_setup/io_uring_enter (no libfuse, no
 * liburing), the way fusd_runtime/uring does it, so the ratio is what Python
 * costs on top of the same kernel path.
 *
 *   uring_fuse [--readers N] [--depth N] [--setup-flags F] [--enable-uring] MOUNTPOINT     (root)
 *
 * --enable-uring: set the fuse parameter enable_uring to Y while this server starts and
 * put the old value back once it serves (a connection keeps io_uring); for harnesses that
 * start servers one by one.  Without it the parameter is read, never changed.
 *
 * The kernel's rules (fs/fuse/dev_uring.c) shape it:
 *  - INIT comes on /dev/fuse.  FUSE_OVER_IO_URING (flags2 bit 9, with FUSE_INIT_EXT)
 *    is offered only while the fuse parameter enable_uring is Y; not offered: SKIP.
 *  - After the INIT reply (a REGISTER before it fails EAGAIN) one thread per
 *    possible CPU, pinned there (where this process may run), makes its own ring
 *    with IORING_SETUP_SQE128 (the command area holds fuse_uring_cmd_req; without
 *    it: EINVAL), SINGLE_ISSUER | DEFER_TASKRUN (the completion work runs in our
 *    wait: ~0.4 us less per round trip here), /dev/fuse as fixed file 0, and
 *    REGISTERs DEPTH entries (header + payload buffer each).  The kernel uses the
 *    rings only once every possible CPU has a queue.
 *  - A completion is a request in an entry; the reply goes into the same buffers
 *    and FUSE_IO_URING_CMD_COMMIT_AND_FETCH answers and frees the entry: one
 *    io_uring_enter per round trip submits the commit and waits for the next.
 *  - FORGET and INTERRUPT still come on /dev/fuse: the main thread reads them
 *    (and ignores them) until the kernel ends the connection.
 *
 * The contract is bench_refs/README.md and the device perfdev.h.  --readers is
 * accepted for it, but the readers are the queues, one per possible CPU: the READY
 * line says how many.  SKIP (exit 3) without root, without the kernel's offer
 * (enable_uring N) or when a ring cannot start; SIGTERM/SIGINT: unmount lazily and
 * exit 0.
 */
#include "perfdev.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/fuse.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>

/* FUSE 7.42 io_uring definitions (the machine's linux/fuse.h may predate them) */
#ifndef FUSE_OVER_IO_URING
#define FUSE_OVER_IO_URING (1ULL << 41)
#endif
#define URING_IN_OUT_HEADER_SZ 128
#define URING_OP_IN_OUT_SZ 128
struct uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};
struct uring_req_header {
	char in_out[URING_IN_OUT_HEADER_SZ];
	char op_in[URING_OP_IN_OUT_SZ];
	struct uring_ent_in_out ring_ent_in_out;
};
struct uring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};
enum { URING_CMD_REGISTER = 1, URING_CMD_COMMIT_AND_FETCH = 2 };
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

#define ROOT_ID 1
#define DEV0_ID 2
#define MAX_QUEUES 256
#define WANTED_INIT (FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_ATOMIC_O_TRUNC | FUSE_PARALLEL_DIROPS | FUSE_INIT_EXT)

static int devfd;
static int depth = 8;
static unsigned setup_flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
static size_t payload_sz = PERF_MAX_WRITE; /* max(FUSE_MIN_READ_BUFFER, max_write, max_pages * 4096) */
static const char *mountpoint;
static char dev0_path[PATH_MAX + 8];
static time_t start_time;
static int enable_uring_flag;
static char old_enable_uring = 0; /* 'Y' or 'N' once we changed it */
#define ENABLE_URING "/sys/module/fuse/parameters/enable_uring"

static void set_enable_uring(char value)
{
	FILE *f = fopen(ENABLE_URING, "w");
	if (f) {
		fputc(value, f);
		fclose(f);
	}
}

static void restore_enable_uring(void)
{
	if (old_enable_uring) {
		set_enable_uring(old_enable_uring);
		old_enable_uring = 0;
	}
}

struct entry {
	struct uring_req_header *hdr;
	char *payload;
	struct iovec iov[2];
};

struct queue {
	int qid;
	int ringfd;
	unsigned sq_mask, cq_mask;
	unsigned *sq_head, *sq_tail, *sq_array, *cq_head, *cq_tail;
	unsigned tail; /* our next SQ tail */
	struct io_uring_cqe *cqes;
	char *sqes; /* 128-byte SQEs */
	struct entry *ents;
	pthread_t thread;
	int failed;
};

static struct queue queues[MAX_QUEUES];
static int nqueues;
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cond = PTHREAD_COND_INITIALIZER;
static int started;

static void skip(const char *why) /* perf_skip, after putting back what we changed */
{
	restore_enable_uring();
	if (mountpoint)
		umount2(mountpoint, MNT_DETACH);
	perf_skip("%s", why);
}

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
		a->size = PERF_SIZE;
	}
}

/*
 * The filesystem, for both channels: the reply body goes to out (room: outsz); returns its
 * size and sets *err (negative errno or 0), or returns -1 for requests without a reply.
 * arg is the fixed request struct, payload what follows it (LOOKUP's name, WRITE's data).
 */
static ssize_t handle(const struct fuse_in_header *ih, const void *arg, const char *payload, char *out, size_t outsz,
		      int *err)
{
	*err = 0;
	switch (ih->opcode) {
	case FUSE_LOOKUP: {
		if (ih->nodeid != ROOT_ID || strcmp(payload, "dev0")) {
			*err = -ENOENT;
			return 0;
		}
		struct fuse_entry_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->nodeid = DEV0_ID;
		o->entry_valid = o->attr_valid = PERF_TIMEOUT;
		fill_attr(DEV0_ID, &o->attr);
		return sizeof(*o);
	}
	case FUSE_GETATTR: {
		struct fuse_attr_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->attr_valid = PERF_TIMEOUT;
		fill_attr(ih->nodeid, &o->attr);
		return sizeof(*o);
	}
	case FUSE_OPEN:
	case FUSE_OPENDIR: {
		struct fuse_open_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->fh = 1;
		if (ih->opcode == FUSE_OPEN)
			o->open_flags = FOPEN_DIRECT_IO | FOPEN_NOFLUSH;
		return sizeof(*o);
	}
	case FUSE_READ: {
		const struct fuse_read_in *in = arg;
		const char *start;
		size_t n = perf_read(in->offset, in->size, &start);
		if (n > outsz)
			n = outsz;
		memcpy(out, start, n); /* into the ring's payload buffer: the copy read/write spares */
		return n;
	}
	case FUSE_WRITE: {
		const struct fuse_write_in *in = arg;
		perf_write(in->offset, payload, in->size);
		struct fuse_write_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->size = in->size;
		return sizeof(*o);
	}
	case FUSE_READDIR: {
		const struct fuse_read_in *in = arg;
		static const char *names[] = {".", "..", "dev0"};
		static const uint64_t inos[] = {ROOT_ID, ROOT_ID, DEV0_ID};
		size_t pos = 0;
		for (uint64_t i = in->offset; i < 3; i++) {
			size_t namelen = strlen(names[i]);
			size_t reclen = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen);
			if (pos + reclen > in->size || pos + reclen > outsz)
				break;
			struct fuse_dirent *d = (void *)(out + pos);
			memset(d, 0, reclen);
			d->ino = inos[i];
			d->off = i + 1;
			d->namelen = namelen;
			d->type = i < 2 ? S_IFDIR >> 12 : S_IFREG >> 12;
			memcpy(d->name, names[i], namelen);
			pos += reclen;
		}
		return pos;
	}
	case FUSE_IOCTL: {
		const struct fuse_ioctl_in *in = arg;
		if (in->cmd != PERF_IOCTL || in->out_size < sizeof(int)) {
			*err = -ENOTTY;
			return 0;
		}
		struct fuse_ioctl_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		int v = perf_ioctl_value();
		memcpy(out + sizeof(*o), &v, sizeof(v));
		return sizeof(*o) + sizeof(v);
	}
	case FUSE_POLL: {
		struct fuse_poll_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->revents = PERF_POLL_MASK;
		return sizeof(*o);
	}
	case FUSE_FLUSH:
	case FUSE_RELEASE:
	case FUSE_RELEASEDIR:
	case FUSE_DESTROY:
		return 0;
	case FUSE_FORGET:
	case FUSE_BATCH_FORGET:
	case FUSE_INTERRUPT:
	case FUSE_NOTIFY_REPLY:
		return -1;
	default:
		*err = -ENOSYS;
		return 0;
	}
}

/* ------------------------------------------------------------------ /dev/fuse: INIT, then the rest */
static void dev_reply(uint64_t unique, int err, const void *body, size_t len)
{
	struct fuse_out_header oh = {.len = sizeof(oh) + len, .error = err, .unique = unique};
	struct iovec iov[2] = {{&oh, sizeof(oh)}, {(void *)body, len}};
	if (writev(devfd, iov, len ? 2 : 1) < 0 && errno != ENOENT && errno != ENODEV)
		perror("writev /dev/fuse");
}

static int dev_init(const struct fuse_in_header *ih, const struct fuse_init_in *in)
{
	struct fuse_init_out out;
	uint64_t offered = in->flags;
	memset(&out, 0, sizeof(out));
	if (in->minor >= 36 && (in->flags & FUSE_INIT_EXT))
		offered |= (uint64_t)in->flags2 << 32;
	if (!(offered & FUSE_OVER_IO_URING))
		skip("the kernel does not offer FUSE-over-io_uring (/sys/module/fuse/parameters/enable_uring is N?)");
	uint64_t granted = offered & (WANTED_INIT | FUSE_OVER_IO_URING);
	out.major = FUSE_KERNEL_VERSION;
	out.minor = in->minor < 45 ? in->minor : 45;
	out.max_readahead = in->max_readahead;
	out.flags = (uint32_t)granted;
	out.flags2 = (uint32_t)(granted >> 32);
	out.max_background = 16;
	out.congestion_threshold = 12;
	out.max_write = PERF_MAX_WRITE;
	out.time_gran = 1;
	out.max_pages = PERF_MAX_WRITE / 4096;
	dev_reply(ih->unique, 0, &out, sizeof(out));
	return 0;
}

/* ------------------------------------------------------------------ the rings */
static void publish(struct queue *q, unsigned slot)
{
	q->sq_array[q->tail & q->sq_mask] = slot;
	q->tail++;
}

static int enter(struct queue *q, unsigned min_complete, unsigned flags)
{
	unsigned n = q->tail - __atomic_load_n(q->sq_head, __ATOMIC_ACQUIRE);
	__atomic_store_n(q->sq_tail, q->tail, __ATOMIC_RELEASE);
	/* exactly the SQEs published: asked for more, the kernel returns without waiting */
	return (int)syscall(__NR_io_uring_enter, q->ringfd, n, min_complete, flags, NULL, 0);
}

static void prep_register(struct queue *q, int idx)
{
	struct io_uring_sqe *sqe = (void *)(q->sqes + (size_t)idx * 128);
	memset(sqe, 0, 128);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->flags = IOSQE_FIXED_FILE;
	sqe->fd = 0;
	sqe->cmd_op = URING_CMD_REGISTER;
	sqe->addr = (uint64_t)(uintptr_t)q->ents[idx].iov;
	sqe->len = 2;
	sqe->user_data = idx;
	((struct uring_cmd_req *)sqe->cmd)->qid = q->qid;
	publish(q, idx);
}

static int queue_setup(struct queue *q)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SQE128 | setup_flags;
	q->ringfd = (int)syscall(__NR_io_uring_setup, depth, &p);
	if (q->ringfd < 0 && errno == EINVAL && setup_flags) { /* an older kernel: no DEFER_TASKRUN */
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_SQE128;
		q->ringfd = (int)syscall(__NR_io_uring_setup, depth, &p);
	}
	if (q->ringfd < 0) {
		perror("io_uring_setup");
		return -1;
	}
	size_t sqsz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *ring = mmap(NULL, sqsz > cqsz ? sqsz : cqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
			  q->ringfd, IORING_OFF_SQ_RING);
	q->sqes = mmap(NULL, p.sq_entries * 128, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->ringfd,
		       IORING_OFF_SQES);
	if (ring == MAP_FAILED || q->sqes == MAP_FAILED || !(p.features & IORING_FEAT_SINGLE_MMAP)) {
		perror("mmap io_uring");
		return -1;
	}
	q->sq_head = (void *)(ring + p.sq_off.head);
	q->sq_tail = (void *)(ring + p.sq_off.tail);
	q->sq_mask = *(unsigned *)(ring + p.sq_off.ring_mask);
	q->sq_array = (void *)(ring + p.sq_off.array);
	q->cq_head = (void *)(ring + p.cq_off.head);
	q->cq_tail = (void *)(ring + p.cq_off.tail);
	q->cq_mask = *(unsigned *)(ring + p.cq_off.ring_mask);
	q->cqes = (void *)(ring + p.cq_off.cqes);
	q->tail = *q->sq_tail;
	int files[1] = {devfd};
	if (syscall(__NR_io_uring_register, q->ringfd, IORING_REGISTER_FILES, files, 1) < 0) {
		perror("IORING_REGISTER_FILES");
		return -1;
	}
	q->ents = calloc(depth, sizeof(*q->ents));
	for (int i = 0; i < depth; i++) {
		struct entry *e = &q->ents[i];
		e->hdr = aligned_alloc(4096, 4096);
		e->payload = aligned_alloc(4096, payload_sz);
		memset(e->hdr, 0, 4096);
		memset(e->payload, 0, payload_sz);
		e->iov[0] = (struct iovec){e->hdr, sizeof(*e->hdr)};
		e->iov[1] = (struct iovec){e->payload, payload_sz};
		prep_register(q, i);
	}
	if (enter(q, 0, 0) != depth || enter(q, 0, IORING_ENTER_GETEVENTS) < 0) {
		perror("io_uring_enter (REGISTER)");
		return -1;
	}
	/* a REGISTER the kernel refused has completed already, with its error */
	if (*q->cq_head != __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE)) {
		fprintf(stderr, "uring_fuse: queue %d: REGISTER failed: %s\n", q->qid,
			strerror(-q->cqes[*q->cq_head & q->cq_mask].res));
		return -1;
	}
	for (int i = 0; i < depth; i++) /* from now on each entry's SQE is its commit */
		((struct io_uring_sqe *)(q->sqes + (size_t)i * 128))->cmd_op = URING_CMD_COMMIT_AND_FETCH;
	return 0;
}

static void serve_entry(struct queue *q, int idx)
{
	struct entry *e = &q->ents[idx];
	struct fuse_in_header *ih = (void *)e->hdr->in_out;
	uint64_t unique = ih->unique;
	int err;
	ssize_t n = handle(ih, e->hdr->op_in, e->payload, e->payload, payload_sz, &err);
	struct fuse_out_header *oh = (void *)e->hdr->in_out;
	if (n < 0)
		n = 0; /* no reply expected: commit anyway, so the entry comes back */
	oh->len = sizeof(*oh) + n;
	oh->error = err;
	oh->unique = unique;
	e->hdr->ring_ent_in_out.payload_sz = err ? 0 : n;
	((struct uring_cmd_req *)((struct io_uring_sqe *)(q->sqes + (size_t)idx * 128))->cmd)->commit_id = unique;
	publish(q, idx);
}

static void *queue_thread(void *arg)
{
	struct queue *q = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(q->qid, &set);
	sched_setaffinity(0, sizeof(set), &set); /* fails where the CPU is not ours: then it stays unpinned */
	q->failed = queue_setup(q);
	pthread_mutex_lock(&start_lock);
	started++;
	pthread_cond_broadcast(&start_cond);
	pthread_mutex_unlock(&start_lock);
	if (q->failed)
		return NULL;
	for (;;) {
		if (enter(q, 1, IORING_ENTER_GETEVENTS) < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EBUSY)
				continue;
			return NULL;
		}
		unsigned head = *q->cq_head, tail = __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE);
		for (; head != tail; head++) {
			struct io_uring_cqe *cqe = &q->cqes[head & q->cq_mask];
			if (cqe->res == -EAGAIN || cqe->res == -EINTR)
				publish(q, (unsigned)cqe->user_data); /* not taken: submit it again */
			else if (cqe->res == 0)
				serve_entry(q, (int)cqe->user_data);
			/* else: ENOTCONN/ECONNABORTED, the connection is going away */
		}
		__atomic_store_n(q->cq_head, head, __ATOMIC_RELEASE);
	}
}

static int possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
	int lo = 0, hi = 0, n;
	if (!f)
		return (int)sysconf(_SC_NPROCESSORS_CONF);
	n = fscanf(f, "%d-%d", &lo, &hi) == 2 ? hi + 1 : lo + 1; /* queues are 0..nr_possible-1 */
	fclose(f);
	return n;
}

static void start_queues(void)
{
	nqueues = possible_cpus();
	if (nqueues > MAX_QUEUES)
		skip("more possible CPUs than queues this server has room for");
	for (int i = 0; i < nqueues; i++) {
		queues[i].qid = i;
		pthread_create(&queues[i].thread, NULL, queue_thread, &queues[i]);
	}
	pthread_mutex_lock(&start_lock);
	while (started < nqueues)
		pthread_cond_wait(&start_cond, &start_lock);
	pthread_mutex_unlock(&start_lock);
	for (int i = 0; i < nqueues; i++)
		if (queues[i].failed)
			skip("a ring queue could not start (see above)");
}

static void *dev_loop(void *unused)
{
	(void)unused;
	char *buf = aligned_alloc(4096, PERF_BUFSIZE);
	char out[256];
	for (;;) {
		ssize_t n = read(devfd, buf, PERF_BUFSIZE);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == ENOENT)
				continue;
			break; /* ENODEV: unmounted; ECONNABORTED: aborted */
		}
		struct fuse_in_header *ih = (void *)buf;
		if (ih->opcode == FUSE_INIT) {
			dev_init(ih, (void *)(buf + sizeof(*ih)));
			start_queues();
			restore_enable_uring();
			perf_ready(dev0_path, nqueues);
			continue;
		}
		int err; /* FORGET/INTERRUPT come here; anything else only before the rings are up */
		ssize_t len = handle(ih, buf + sizeof(*ih), buf + sizeof(*ih), out, sizeof(out), &err);
		if (len >= 0)
			dev_reply(ih->unique, err, out, err ? 0 : (size_t)len);
	}
	exit(0); /* the kernel ended the connection */
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--readers") && i + 1 < argc)
			i++; /* the queues are the readers: one per possible CPU */
		else if (!strcmp(argv[i], "--depth") && i + 1 < argc)
			depth = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--setup-flags") && i + 1 < argc)
			setup_flags = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--enable-uring"))
			enable_uring_flag = 1;
		else if (argv[i][0] == '-') {
			fprintf(stderr, "%s: unknown option %s\n", argv[0], argv[i]);
			return 2;
		} else
			mountpoint = argv[i];
	}
	if (!mountpoint || depth < 1 || depth > 4096) {
		fprintf(stderr, "usage: %s [--readers N] [--depth N] [--setup-flags F] MOUNTPOINT\n", argv[0]);
		return 2;
	}
	if (geteuid() != 0)
		skip("needs root (mount(2), and the enable_uring parameter)");
	char real[PATH_MAX];
	if (!realpath(mountpoint, real))
		skip("the mount point does not exist");
	snprintf(dev0_path, sizeof(dev0_path), "%s/dev0", real);
	perf_init();
	start_time = time(NULL);
	devfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (devfd < 0)
		skip("cannot open /dev/fuse");
	char opts[256];
	snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=%d,group_id=%d,allow_other", devfd, geteuid(),
		 getegid());
	perf_block_stop_signals(); /* SIGTERM/SIGINT: taken by the main thread below, blocked in all others */
	if (enable_uring_flag) {
		FILE *f = fopen(ENABLE_URING, "r");
		int c = f ? fgetc(f) : EOF;
		if (f)
			fclose(f);
		if (c != 'Y' && c != 'N')
			skip("this kernel has no fuse enable_uring parameter");
		old_enable_uring = (char)c;
		set_enable_uring('Y');
	}
	if (mount("uring_fuse", real, "fuse.uring_fuse", MS_NOSUID | MS_NODEV, opts) < 0) {
		restore_enable_uring();
		perror("mount");
		return 1;
	}
	mountpoint = real;
	pthread_t dev;
	pthread_create(&dev, NULL, dev_loop, NULL);
	perf_wait_for_stop();
	umount2(real, MNT_DETACH);
	return 0;
}
