#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Replies with fuse_reply_data (splice) and takes writes with write_buf (splice reads).
   1 /, 2 small (fuse_reply_buf), 3 mem (fuse_reply_data from memory: header vmspliced,
   payload written into the pipe), 4 file (fuse_reply_data from an fd: payload spliced
   from the file), 5 sink (write_buf into a file: spliced out of the pipe), 6 memsink
   (write_buf into memory: read out of the pipe). */
#define MEM_SIZE 65536
static char memdata[MEM_SIZE];
static char memsink[1 << 20];
static int file_fd = -1, sink_fd = -1;
static off_t file_size;
static const char *names[] = {NULL, NULL, "small", "mem", "file", "sink", "memsink"};
static const char *small = "hello world\n";

static void fill(fuse_ino_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_nlink = 1;
    if (ino == 1) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; return; }
    st->st_mode = S_IFREG | (ino >= 5 ? 0666 : 0444);
    st->st_size = ino == 2 ? (off_t)strlen(small) : ino == 3 ? MEM_SIZE : ino == 4 ? file_size : 0;
}
static void op_init(void *data, struct fuse_conn_info *conn) {
    (void)data;
    conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE | FUSE_CAP_SPLICE_READ;
}
static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    for (fuse_ino_t i = 2; parent == 1 && i <= 6; i++)
        if (strcmp(name, names[i]) == 0) {
            e.ino = i;
            fill(i, &e.attr);
            fuse_reply_entry(req, &e);
            return;
        }
    fuse_reply_err(req, ENOENT);
}
static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct stat st;
    (void)fi;
    if (ino < 1 || ino > 6) { fuse_reply_err(req, ENOENT); return; }
    fill(ino, &st);
    fuse_reply_attr(req, &st, 0);
}
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
    (void)attr; (void)to_set;
    op_getattr(req, ino, fi);
}
static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    char buf[1024];
    size_t n = 0;
    struct stat st;
    (void)fi;
    if (ino != 1) { fuse_reply_err(req, ENOTDIR); return; }
    for (int i = (int)off; i < 7; i++) {
        if (i < 2) fill(1, &st); else fill(i, &st);
        size_t len = fuse_add_direntry(req, buf + n, sizeof buf - n, i == 0 ? "." : i == 1 ? ".." : names[i], &st,
                                       i + 1);
        if (n + len > size || n + len > sizeof buf) break;
        n += len;
    }
    fuse_reply_buf(req, buf, n);
}
static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    if (ino == 1) { fuse_reply_err(req, EISDIR); return; }
    fi->direct_io = 1;  /* every read and write reaches us, sized as the client asked */
    fuse_reply_open(req, fi);
}
static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    struct fuse_bufvec bv = FUSE_BUFVEC_INIT(0);
    off_t len = ino == 2 ? (off_t)strlen(small) : ino == 3 ? MEM_SIZE : ino == 4 ? file_size : 0;
    (void)fi;
    if (off >= len) { fuse_reply_buf(req, NULL, 0); return; }
    if ((off_t)(off + size) > len) size = len - off;
    if (ino == 2) { fuse_reply_buf(req, small + off, size); return; }
    bv.buf[0].size = size;
    if (ino == 3) {
        bv.buf[0].mem = memdata + off;
    } else {
        bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
        bv.buf[0].fd = file_fd;
        bv.buf[0].pos = off;
    }
    fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
}
static void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
                         struct fuse_file_info *fi) {
    struct fuse_bufvec dst = FUSE_BUFVEC_INIT(fuse_buf_size(in));
    ssize_t res;
    (void)fi;
    if (ino == 5) {
        dst.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
        dst.buf[0].fd = sink_fd;
        dst.buf[0].pos = off;
        res = fuse_buf_copy(&dst, in, FUSE_BUF_SPLICE_NONBLOCK);
    } else if (ino == 6) {
        if (dst.buf[0].size > sizeof memsink) dst.buf[0].size = sizeof memsink;
        dst.buf[0].mem = memsink;
        res = fuse_buf_copy(&dst, in, 0);
    } else {
        res = -EACCES;
    }
    if (res < 0) fuse_reply_err(req, (int)-res); else fuse_reply_write(req, (size_t)res);
}
static const struct fuse_lowlevel_ops ops = {
    .init = op_init, .lookup = op_lookup, .getattr = op_getattr, .setattr = op_setattr, .readdir = op_readdir,
    .open = op_open, .read = op_read, .write_buf = op_write_buf,
};
int main(int argc, char *argv[]) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse_cmdline_opts opts;
    struct fuse_session *se;
    const char *backing = getenv("SPLICER_FILE"), *sink = getenv("SPLICER_SINK");
    int ret = 1;
    for (int i = 0; i < MEM_SIZE; i++) memdata[i] = (char)(i * 7);
    if (!backing || !sink) { fprintf(stderr, "set SPLICER_FILE and SPLICER_SINK\n"); return 2; }
    file_fd = open(backing, O_RDONLY);
    sink_fd = open(sink, O_WRONLY | O_CREAT, 0600);
    if (file_fd < 0 || sink_fd < 0) { perror("open"); return 2; }
    file_size = lseek(file_fd, 0, SEEK_END);
    if (fuse_parse_cmdline(&args, &opts) != 0 || !opts.mountpoint) return 2;
    se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (se && fuse_set_signal_handlers(se) == 0) {
        if (fuse_session_mount(se, opts.mountpoint) == 0) {
            ret = fuse_session_loop(se);
            fuse_session_unmount(se);
        }
        fuse_remove_signal_handlers(se);
    }
    if (se) fuse_session_destroy(se);
    free(opts.mountpoint);
    fuse_opt_free_args(&args);
    return ret ? 1 : 0;
}
