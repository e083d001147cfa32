/* fusd-bench-ref
 * name: libfuse_ll
 * transport: fuse
 * title: libfuse 3 low-level API in C (fuse_session_loop; _mt with --readers > 1)
 * pkg-config: fuse3
 * libs: -pthread
 * needs: /dev/fuse
 */
/*
 * What a C programmer writes with libfuse: the low-level API, one callback per
 * operation, libfuse's own loop, buffers and reply functions.  Serves the perf
 * device (perfdev.h) as MOUNTPOINT/dev0 like fusd: direct_io and noflush on
 * open (a fusd device without a flush callback), 3600 s entry/attr timeouts,
 * negative lookups not cached.
 *
 *   libfuse_ll [--readers N] MOUNTPOINT
 *
 * N = 1: fuse_session_loop; N > 1: fuse_session_loop_mt with N threads, each on
 * a cloned fd.  libfuse mounts (mount(2) as root, fusermount3 otherwise) and
 * takes SIGTERM/SIGINT itself (fuse_set_signal_handlers): the loop ends and it
 * unmounts.  The contract (READY, SKIP, SIGTERM) is README.md.
 */
#define FUSE_USE_VERSION 312
#include "perfdev.h"

#include <fuse_lowlevel.h>
#include <limits.h>
#include <sys/stat.h>
#include <time.h>

#define DEV0_ID 2

static char dev0_path[PATH_MAX + 8];
static int readers;
static time_t start_time;

static void attr_of(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = geteuid();
	st->st_gid = getegid();
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = start_time;
	st->st_mode = ino == FUSE_ROOT_ID ? S_IFDIR | 0755 : S_IFREG | 0666;
	st->st_nlink = ino == FUSE_ROOT_ID ? 2 : 1;
}

static void ll_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = PERF_MAX_WRITE;
	perf_ready(dev0_path, readers); /* libfuse answers INIT right after this returns */
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	if (parent != FUSE_ROOT_ID || strcmp(name, "dev0")) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct fuse_entry_param e = {.ino = DEV0_ID, .attr_timeout = PERF_TIMEOUT, .entry_timeout = PERF_TIMEOUT};
	attr_of(DEV0_ID, &e.attr);
	fuse_reply_entry(req, &e);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct stat st;
	if (ino != FUSE_ROOT_ID && ino != DEV0_ID) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	attr_of(ino, &st);
	fuse_reply_attr(req, &st, PERF_TIMEOUT);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != DEV0_ID) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->direct_io = 1;
	fi->noflush = 1;
	fi->fh = 1;
	fuse_reply_open(req, fi);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	const char *p;
	size_t n = perf_read((uint64_t)off, size, &p);
	fuse_reply_buf(req, p, n);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	perf_write((uint64_t)off, buf, size);
	fuse_reply_write(req, size);
}

static void ll_ok(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void ll_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
		     unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	(void)ino;
	(void)arg;
	(void)fi;
	(void)flags;
	(void)in_buf;
	(void)in_bufsz;
	if (cmd != PERF_IOCTL || out_bufsz < sizeof(int)) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	int v = perf_ioctl_value();
	fuse_reply_ioctl(req, 0, &v, sizeof(v));
}

static void ll_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct fuse_pollhandle *ph)
{
	(void)ino;
	(void)fi;
	if (ph)
		fuse_pollhandle_destroy(ph); /* always ready: never notifies */
	fuse_reply_poll(req, PERF_POLL_MASK);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != FUSE_ROOT_ID)
		fuse_reply_err(req, ENOTDIR);
	else
		fuse_reply_open(req, fi);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	static const char *const names[] = {".", "..", "dev0"};
	char buf[512];
	size_t len = 0;
	for (off_t i = off; i < 3; i++) {
		struct stat st;
		attr_of(i == 2 ? DEV0_ID : FUSE_ROOT_ID, &st);
		size_t need = fuse_add_direntry(req, NULL, 0, names[i], NULL, 0);
		if (len + need > size || len + need > sizeof(buf))
			break;
		len += fuse_add_direntry(req, buf + len, sizeof(buf) - len, names[i], &st, i + 1);
	}
	fuse_reply_buf(req, buf, len);
}

static const struct fuse_lowlevel_ops ops = {
	.init = ll_init,
	.lookup = ll_lookup,
	.getattr = ll_getattr,
	.open = ll_open,
	.read = ll_read,
	.write = ll_write,
	.flush = ll_ok,
	.release = ll_ok,
	.ioctl = ll_ioctl,
	.poll = ll_poll,
	.opendir = ll_opendir,
	.readdir = ll_readdir,
};

int main(int argc, char **argv)
{
	const char *mnt = perf_args(argc, argv, &readers, "MOUNTPOINT");
	char abs[PATH_MAX];
	if (!realpath(mnt, abs))
		perf_die("libfuse_ll: %s: %s", mnt, strerror(errno));
	snprintf(dev0_path, sizeof(dev0_path), "%s/dev0", abs);
	perf_init();
	start_time = time(NULL);
	char *fargv[] = {argv[0], "-o",
			 geteuid() == 0 ? "fsname=fusd-libfuse,default_permissions,allow_other"
					: "fsname=fusd-libfuse,default_permissions",
			 NULL};
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se)
		perf_die("libfuse_ll: fuse_session_new failed");
	if (fuse_set_signal_handlers(se) != 0)
		perf_die("libfuse_ll: fuse_set_signal_handlers failed");
	if (fuse_session_mount(se, abs) != 0)
		perf_die("libfuse_ll: cannot mount %s", abs);
	int rc;
	if (readers > 1) {
		struct fuse_loop_config *cfg = fuse_loop_cfg_create();
		fuse_loop_cfg_set_max_threads(cfg, (unsigned)readers);
		fuse_loop_cfg_set_idle_threads(cfg, (unsigned)readers);
		fuse_loop_cfg_set_clone_fd(cfg, 1);
		rc = fuse_session_loop_mt(se, cfg);
		fuse_loop_cfg_destroy(cfg);
	} else {
		rc = fuse_session_loop(se);
	}
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	fuse_opt_free_args(&args);
	return rc < 0 ? 1 : 0;
}
