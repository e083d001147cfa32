/*
 * uring_fuse: a C FUSE server answering through FUSE-over-io_uring (no libfuse, no
 * liburing: raw io_uring_setup/io_uring_enter), the reference `fusd bench --transport
 * uring` measures fusd's ring transport against.
 *
 *   uring_fuse [--count] [--depth N] MOUNTPOINT      (root: calls mount(2) itself)
 *
 * The filesystem is the one every perf-harness server exposes: /dev0, 64 KiB,
 * opened FOPEN_DIRECT_IO, entry/attr timeouts 3600 s, READ/WRITE of its bytes, the
 * _IOR('E', 1, int) ioctl, POLL answering POLLIN|POLLOUT.
 *
 * Structure (the kernel's rules, fs/fuse/dev_uring.c):
 *  - INIT is read from /dev/fuse.  The kernel offers FUSE_OVER_IO_URING (flags2 bit 9,
 *    with FUSE_INIT_EXT) only when the fuse module parameter enable_uring is Y; we grant
 *    it when offered.  Not offered: we serve read/write on /dev/fuse instead and say so.
 *  - After the INIT reply (a REGISTER before it fails EAGAIN) one thread per possible
 *    CPU, pinned to it, sets up a ring with IORING_SETUP_SQE128 (the 80-byte command area
 *    holds struct fuse_uring_cmd_req; without it the kernel answers EINVAL), registers
 *    /dev/fuse as fixed file 0 and submits FUSE_IO_URING_CMD_REGISTER for DEPTH entries
 *    (headers buffer + payload buffer each).  The kernel uses the ring only once every
 *    possible CPU has a queue.
 *  - Each completion is a request in an entry; the reply goes into the same buffers and
 *    FUSE_IO_URING_CMD_COMMIT_AND_FETCH both answers and frees the entry.  One
 *    io_uring_enter per round trip submits the commits and waits for the next request.
 *  - The main thread keeps reading /dev/fuse (FORGET and INTERRUPT still come there) and
 *    exits on ENODEV (unmounted).
 *
 * Exit: unmount the directory (umount / fusermount3 -u); --count prints per-opcode
 * request counts on stderr at exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

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

#define FILE_SIZE 65536
#define FILE_INO 2
#define FILE_NAME "dev0"
#define PERF_IOCTL_CMD _IOR('E', 1, int)
#define TMO 3600
#define MAX_WRITE (128 * 1024)
#define BUFSZ (MAX_WRITE + 4096)
#define MAX_QUEUES 256

static char data[FILE_SIZE];
static int devfd;
static int ioctl_counter;
static unsigned long counts[64];
static int do_count;
static int depth = 8;
static unsigned setup_flags; /* extra IORING_SETUP_* (--setup-flags, for experiments) */
static size_t payload_sz;

struct entry {
	struct uring_req_header *hdr;
	char *payload;
	struct iovec iov[2];
	uint64_t commit_id;
};

struct queue {
	int qid;
	int ringfd;
	unsigned sq_entries, cq_entries, sq_mask, cq_mask;
	unsigned *sq_head, *sq_tail, *sq_array, *cq_head, *cq_tail;
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

static void fill_attr(uint64_t ino, struct fuse_attr *a)
{
	memset(a, 0, sizeof(*a));
	a->ino = ino;
	a->blksize = 4096;
	if (ino == FUSE_ROOT_ID) {
		a->mode = S_IFDIR | 0755;
		a->nlink = 2;
	} else {
		a->mode = S_IFREG | 0666;
		a->nlink = 1;
		a->size = FILE_SIZE;
	}
}

/*
 * The filesystem, once for both channels: writes the reply body (after the out header)
 * into out (room: outsz) and returns its size; *err gets a negative errno or 0.
 * Returns -1 for requests without a reply (FORGET, INTERRUPT).
 */
static ssize_t handle(const struct fuse_in_header *ih, const void *arg, const void *payload, char *out,
		      size_t outsz, int *err)
{
	*err = 0;
	if (do_count && ih->opcode < 64)
		counts[ih->opcode]++;
	switch (ih->opcode) {
	case FUSE_LOOKUP: {
		const char *name = payload;
		if (ih->nodeid != FUSE_ROOT_ID || strcmp(name, FILE_NAME)) {
			*err = -ENOENT;
			return 0;
		}
		struct fuse_entry_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->nodeid = FILE_INO;
		o->entry_valid = TMO;
		o->attr_valid = TMO;
		fill_attr(FILE_INO, &o->attr);
		return sizeof(*o);
	}
	case FUSE_GETATTR: {
		struct fuse_attr_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->attr_valid = TMO;
		fill_attr(ih->nodeid, &o->attr);
		return sizeof(*o);
	}
	case FUSE_OPEN:
	case FUSE_OPENDIR: {
		struct fuse_open_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->fh = 1;
		if (ih->opcode == FUSE_OPEN)
			o->open_flags = FOPEN_DIRECT_IO;
		return sizeof(*o);
	}
	case FUSE_READ: {
		const struct fuse_read_in *in = arg;
		uint64_t off = in->offset;
		size_t size = in->size;
		if (off >= FILE_SIZE)
			size = 0;
		else if (off + size > FILE_SIZE)
			size = FILE_SIZE - off;
		if (size > outsz)
			size = outsz;
		memcpy(out, data + (off < FILE_SIZE ? off : 0), size);
		return size;
	}
	case FUSE_WRITE: {
		const struct fuse_write_in *in = arg;
		if (in->offset < FILE_SIZE) {
			size_t n = in->size;
			if (in->offset + n > FILE_SIZE)
				n = FILE_SIZE - in->offset;
			memcpy(data + in->offset, payload, n);
		}
		struct fuse_write_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->size = in->size;
		return sizeof(*o);
	}
	case FUSE_FLUSH:
	case FUSE_RELEASE:
	case FUSE_RELEASEDIR:
	case FUSE_DESTROY:
		return 0;
	case FUSE_IOCTL: {
		const struct fuse_ioctl_in *in = arg;
		if (in->cmd != PERF_IOCTL_CMD || in->out_size < sizeof(int)) {
			*err = -ENOTTY;
			return 0;
		}
		struct fuse_ioctl_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		int v = __atomic_add_fetch(&ioctl_counter, 1, __ATOMIC_RELAXED);
		memcpy(out + sizeof(*o), &v, sizeof(v));
		return sizeof(*o) + sizeof(v);
	}
	case FUSE_POLL: {
		struct fuse_poll_out *o = (void *)out;
		memset(o, 0, sizeof(*o));
		o->revents = POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM;
		return sizeof(*o);
	}
	case FUSE_FORGET:
	case FUSE_BATCH_FORGET:
	case FUSE_INTERRUPT:
		return -1;
	default:
		*err = -ENOSYS;
		return 0;
	}
}

/* ------------------------------------------------------------------ /dev/fuse (INIT, fallback) */
static int uring_granted;

static void dev_reply(uint64_t unique, int err, const void *body, size_t len)
{
	struct fuse_out_header oh = {.len = sizeof(oh) + len, .error = err, .unique = unique};
	struct iovec iov[2] = {{&oh, sizeof(oh)}, {(void *)body, len}};
	if (writev(devfd, iov, len ? 2 : 1) < 0 && errno != ENOENT)
		perror("writev /dev/fuse");
}

static void dev_init(const struct fuse_in_header *ih, const struct fuse_init_in *in)
{
	struct fuse_init_out out;
	uint64_t offered = in->flags;
	memset(&out, 0, sizeof(out));
	out.major = FUSE_KERNEL_VERSION;
	out.minor = in->minor < 45 ? in->minor : 45;
	if (in->minor >= 36 && (in->flags & FUSE_INIT_EXT))
		offered |= (uint64_t)in->flags2 << 32;
	uint64_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_ATOMIC_O_TRUNC | FUSE_ASYNC_DIO |
			FUSE_INIT_EXT | FUSE_OVER_IO_URING;
	uint64_t granted = offered & want;
	uring_granted = !!(granted & FUSE_OVER_IO_URING);
	out.max_readahead = in->max_readahead;
	out.flags = (uint32_t)granted;
	out.flags2 = (uint32_t)(granted >> 32);
	out.max_background = 16;
	out.congestion_threshold = 12;
	out.max_write = MAX_WRITE;
	out.time_gran = 1;
	out.max_pages = MAX_WRITE / 4096;
	dev_reply(ih->unique, 0, &out, sizeof(out));
	if (!uring_granted)
		fprintf(stderr, "uring_fuse: the kernel did not offer FUSE_OVER_IO_URING (is "
				"/sys/module/fuse/parameters/enable_uring Y?); serving read/write on /dev/fuse\n");
}

/* ------------------------------------------------------------------ io_uring */
static int sys_setup(unsigned entries, struct io_uring_params *p)
{
	return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags)
{
	return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static void publish(struct queue *q, unsigned slot)
{
	unsigned tail = *q->sq_tail;
	q->sq_array[tail & q->sq_mask] = slot;
	__atomic_store_n(q->sq_tail, tail + 1, __ATOMIC_RELEASE);
}

static void prep_cmd(struct queue *q, int idx, unsigned cmd_op, uint64_t commit_id)
{
	struct io_uring_sqe *sqe = (void *)(q->sqes + (size_t)idx * 128);
	memset(sqe, 0, 128);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->flags = IOSQE_FIXED_FILE;
	sqe->fd = 0;
	sqe->cmd_op = cmd_op;
	sqe->addr = (uint64_t)(uintptr_t)q->ents[idx].iov;
	sqe->len = 2;
	sqe->user_data = idx;
	struct uring_cmd_req *req = (void *)sqe->cmd;
	req->qid = q->qid;
	req->commit_id = commit_id;
	publish(q, idx);
}

static int queue_setup(struct queue *q)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SQE128 | setup_flags;
	q->ringfd = sys_setup(depth, &p);
	if (q->ringfd < 0) {
		perror("io_uring_setup");
		return -1;
	}
	size_t sqsz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	size_t sz = sqsz > cqsz ? sqsz : cqsz;
	char *ring = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->ringfd, IORING_OFF_SQ_RING);
	q->sqes = mmap(NULL, p.sq_entries * 128, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->ringfd,
		       IORING_OFF_SQES);
	if (ring == MAP_FAILED || q->sqes == MAP_FAILED || !(p.features & IORING_FEAT_SINGLE_MMAP)) {
		perror("mmap io_uring");
		return -1;
	}
	q->sq_entries = p.sq_entries;
	q->sq_head = (void *)(ring + p.sq_off.head);
	q->sq_tail = (void *)(ring + p.sq_off.tail);
	q->sq_mask = *(unsigned *)(ring + p.sq_off.ring_mask);
	q->sq_array = (void *)(ring + p.sq_off.array);
	q->cq_head = (void *)(ring + p.cq_off.head);
	q->cq_tail = (void *)(ring + p.cq_off.tail);
	q->cq_mask = *(unsigned *)(ring + p.cq_off.ring_mask);
	q->cqes = (void *)(ring + p.cq_off.cqes);
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
		prep_cmd(q, i, URING_CMD_REGISTER, 0);
	}
	if (sys_enter(q->ringfd, depth, 0, 0) != depth) {
		perror("io_uring_enter (REGISTER)");
		return -1;
	}
	/* a REGISTER the kernel refused has completed already, with its error */
	unsigned head = *q->cq_head, tail = __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE);
	if (head != tail) {
		fprintf(stderr, "uring_fuse: queue %d: REGISTER failed: %s\n", q->qid, strerror(-q->cqes[head & q->cq_mask].res));
		return -1;
	}
	return 0;
}

static void serve_entry(struct queue *q, int idx)
{
	struct entry *e = &q->ents[idx];
	struct fuse_in_header *ih = (void *)e->hdr->in_out;
	struct fuse_out_header *oh = (void *)e->hdr->in_out;
	uint64_t unique = ih->unique;
	int err;
	ssize_t n = handle(ih, e->hdr->op_in, e->payload, e->payload, payload_sz, &err);
	if (n < 0)
		n = 0; /* no reply expected; commit anyway so the entry comes back */
	oh->len = sizeof(*oh) + n;
	oh->error = err;
	oh->unique = unique;
	e->hdr->ring_ent_in_out.payload_sz = err ? 0 : n;
	struct io_uring_sqe *sqe = (void *)(q->sqes + (size_t)idx * 128);
	sqe->cmd_op = URING_CMD_COMMIT_AND_FETCH;
	((struct uring_cmd_req *)sqe->cmd)->commit_id = unique;
	publish(q, idx);
}

static void *queue_thread(void *arg)
{
	struct queue *q = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(q->qid, &set);
	sched_setaffinity(0, sizeof(set), &set); /* may fail where the CPU is not allowed: then unpinned */
	q->failed = queue_setup(q);
	pthread_mutex_lock(&start_lock);
	started++;
	pthread_cond_broadcast(&start_cond);
	pthread_mutex_unlock(&start_lock);
	if (q->failed)
		return NULL;
	for (;;) {
		unsigned pending = *q->sq_tail - __atomic_load_n(q->sq_head, __ATOMIC_ACQUIRE);
		/* exactly the SQEs published: asked for more, the kernel returns without waiting */
		if (sys_enter(q->ringfd, pending, 1, IORING_ENTER_GETEVENTS) < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EBUSY)
				continue;
			perror("io_uring_enter");
			return NULL;
		}
		unsigned head = *q->cq_head, tail = __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE);
		for (; head != tail; head++) {
			struct io_uring_cqe *cqe = &q->cqes[head & q->cq_mask];
			if (cqe->res == -EAGAIN || cqe->res == -EINTR) {
				publish(q, (unsigned)cqe->user_data);
				continue;
			}
			if (cqe->res < 0) {
				if (cqe->res != -ENOTCONN && cqe->res != -ECONNABORTED)
					fprintf(stderr, "uring_fuse: queue %d: %s\n", q->qid, strerror(-cqe->res));
				continue; /* the connection is going away */
			}
			serve_entry(q, (int)cqe->user_data);
		}
		__atomic_store_n(q->cq_head, head, __ATOMIC_RELEASE);
	}
}

static int possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
	int lo = 0, hi = 0, n = 0;
	if (!f)
		return (int)sysconf(_SC_NPROCESSORS_CONF);
	/* "0-1" or "0": the kernel's queues are indexed 0..nr_possible-1 */
	if (fscanf(f, "%d-%d", &lo, &hi) == 2)
		n = hi + 1;
	else
		n = lo + 1;
	fclose(f);
	return n;
}

static void start_queues(void)
{
	nqueues = possible_cpus();
	if (nqueues > MAX_QUEUES)
		nqueues = MAX_QUEUES;
	payload_sz = MAX_WRITE; /* max(FUSE_MIN_READ_BUFFER, max_write, max_pages * 4096) */
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
			fprintf(stderr, "uring_fuse: queue %d failed to start\n", i);
}

static void dev_loop(void)
{
	char *buf = aligned_alloc(4096, BUFSZ);
	char out[sizeof(struct fuse_entry_out) + 64];
	for (;;) {
		ssize_t n = read(devfd, buf, BUFSZ);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == ENOENT)
				continue;
			if (errno == ENODEV)
				break; /* unmounted */
			perror("read /dev/fuse");
			exit(1);
		}
		struct fuse_in_header *ih = (void *)buf;
		if (ih->opcode == FUSE_INIT) {
			dev_init(ih, (void *)(buf + sizeof(*ih)));
			if (uring_granted)
				start_queues();
			continue;
		}
		/* read/write (not granted): the body follows the fixed struct; for LOOKUP it is the name */
		const void *arg = buf + sizeof(*ih);
		const void *payload = arg;
		if (ih->opcode == FUSE_WRITE)
			payload = (const char *)arg + sizeof(struct fuse_write_in);
		char *body = ih->opcode == FUSE_READ ? data : out;
		int err;
		ssize_t len;
		if (ih->opcode == FUSE_READ) { /* zero copy: reply straight from data */
			const struct fuse_read_in *in = arg;
			size_t size = in->offset >= FILE_SIZE ? 0 : in->size;
			if (in->offset + size > FILE_SIZE)
				size = FILE_SIZE - in->offset;
			body = data + (in->offset < FILE_SIZE ? in->offset : 0);
			len = size;
			err = 0;
		} else {
			len = handle(ih, arg, payload, out, sizeof(out), &err);
		}
		if (len >= 0)
			dev_reply(ih->unique, err, body, err ? 0 : (size_t)len);
	}
	free(buf);
}

int main(int argc, char **argv)
{
	const char *mnt = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--count"))
			do_count = 1;
		else if (!strcmp(argv[i], "--depth") && i + 1 < argc)
			depth = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--setup-flags") && i + 1 < argc)
			setup_flags = strtoul(argv[++i], NULL, 0);
		else
			mnt = argv[i];
	}
	if (!mnt || depth < 1 || depth > 4096) {
		fprintf(stderr, "usage: %s [--count] [--depth N] MOUNTPOINT\n", argv[0]);
		return 2;
	}
	for (int i = 0; i < FILE_SIZE; i++)
		data[i] = 'a' + i % 26;
	devfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (devfd < 0) {
		perror("/dev/fuse");
		return 1;
	}
	char opts[256];
	snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", devfd);
	if (mount("uring_fuse", mnt, "fuse.uring_fuse", MS_NOSUID | MS_NODEV, opts) < 0) {
		perror("mount");
		return 1;
	}
	dev_loop();
	if (do_count)
		for (int i = 0; i < 64; i++)
			if (counts[i])
				fprintf(stderr, "opcode %d: %lu\n", i, counts[i]);
	return 0;
}
