// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup: open an image and walk its backing chain the way QEMU resolves
 * it, reading headers with the shared format code (qcow2-format.c).
 *
 * Resolution rules (QEMU's): a relative backing file name is taken relative
 * to the directory part of the path of the image that names it (as given,
 * not canonicalised); an absolute one is used as is; a "file:" prefix is
 * dropped; other protocol prefixes (json:, nbd:, ...) are refused.  The
 * backing format comes from the backing-format header extension; an image
 * without one is refused: probing the format of a backing file from its
 * content is what the target refuses to do too.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2setup.h"

const char *fmt_name(enum layer_fmt f)
{
	return f == FMT_RAW ? "raw" : "qcow2";
}

/* QEMU's notion of a protocol prefix: a ':' before any '/'. */
static bool has_protocol(const char *name)
{
	return name[strcspn(name, ":/")] == ':';
}

char *resolve_backing(const char *parent_path, const char *name)
{
	const char *slash;

	if (!strncmp(name, "file:", 5))
		name += 5;
	if (!*name || has_protocol(name))
		return NULL;
	if (name[0] == '/')
		return xstrdup(name);
	slash = strrchr(parent_path, '/');
	if (!slash)
		return xstrdup(name);
	return xasprintf("%.*s%s", (int)(slash - parent_path + 1), parent_path, name);
}

static struct layer *chain_add(struct chain *c)
{
	struct layer *l;

	if (c->n == c->cap) {
		unsigned int cap = c->cap ? 2 * c->cap : 8;
		struct layer *n = realloc(c->layers, cap * sizeof(*n));

		if (!n) {
			msg_err("out of memory");
			exit(EXIT_IMAGE);
		}
		c->layers = n;
		c->cap = cap;
	}
	l = &c->layers[c->n++];
	memset(l, 0, sizeof(*l));
	l->fd = -1;
	l->loop_fd = -1;
	l->loop_nr = -1;
	return l;
}

void chain_close_fds(struct chain *c)
{
	unsigned int i;

	for (i = 0; i < c->n; i++) {
		if (c->layers[i].fd >= 0)
			close(c->layers[i].fd);
		c->layers[i].fd = -1;
	}
}

void chain_free(struct chain *c)
{
	unsigned int i;

	chain_close_fds(c);
	for (i = 0; i < c->n; i++) {
		free(c->layers[i].path);
		free(c->layers[i].backing_ref);
		free(c->layers[i].backing_name);
	}
	free(c->layers);
	memset(c, 0, sizeof(*c));
}

static const char *layer_what(unsigned int idx)
{
	return idx ? "backing file" : "image";
}

static int open_layer(struct layer *l, unsigned int idx, bool writable)
{
	struct stat st;
	int fd;

	fd = open(l->path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		if (e == ENOENT && idx)
			return fail(EXIT_NOTFOUND,
				    "backing file %s not found (named \"%s\" in %s)",
				    l->path, l->backing_ref, (l - 1)->path);
		if (writable && (e == EROFS || e == EACCES || e == EPERM))
			return fail(EXIT_IMAGE, "cannot open %s for writing: %s (use --read-only)",
				    l->path, strerror(e));
		return fail(errno_exit_code(e), "cannot open %s %s: %s",
			    layer_what(idx), l->path, strerror(e));
	}
	l->fd = fd;
	l->writable = writable;
	if (fstat(fd, &st) < 0)
		return fail(EXIT_IMAGE, "cannot stat %s: %s", l->path, strerror(errno));
	l->st_dev = st.st_dev;
	l->st_ino = st.st_ino;
	if (S_ISBLK(st.st_mode)) {
		uint64_t sz;

		if (ioctl(fd, BLKGETSIZE64, &sz) < 0)
			return fail(EXIT_IMAGE, "cannot get the size of %s: %s",
				    l->path, strerror(errno));
		l->is_blk = true;
		l->rdev = st.st_rdev;
		l->size = sz;
	} else if (S_ISREG(st.st_mode)) {
		l->size = (uint64_t)st.st_size;
	} else {
		return fail(EXIT_IMAGE, "%s %s is neither a regular file nor a block device",
			    layer_what(idx), l->path);
	}
	return 0;
}

static bool same_image(const struct layer *a, const struct layer *b)
{
	if (a->is_blk || b->is_blk)
		return a->is_blk && b->is_blk && a->rdev == b->rdev;
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Read and parse the header of a qcow2 layer; sets backing_name. */
static int read_header(struct layer *l, unsigned int idx, struct chain *c)
{
	const char *err = "?";
	size_t got, len;
	u32 cb;
	void *buf;
	char name[QCOW2_MAX_BACKING_NAME + 1];
	int r;

	buf = xmalloc(1U << QCOW2_MAX_CLUSTER_BITS);
	r = read_full(l->fd, buf, 512, 0, &got);
	if (r) {
		free(buf);
		return fail(EXIT_IMAGE, "cannot read %s: %s", l->path, strerror(-r));
	}
	if (qcow2_peek_cluster_bits(buf, got, &cb, &err)) {
		free(buf);
		if (idx)
			return fail(EXIT_IMAGE,
				    "backing file %s is not a qcow2 image (%s), but %s records its format as qcow2",
				    l->path, err, c->layers[idx - 1].path);
		return fail(EXIT_IMAGE, "%s is not a qcow2 image (%s)", l->path, err);
	}
	len = (size_t)1 << cb;
	if (len > l->size)
		len = (size_t)l->size;
	r = read_full(l->fd, buf, len, 0, &got);
	if (r) {
		free(buf);
		return fail(EXIT_IMAGE, "cannot read %s: %s", l->path, strerror(-r));
	}
	r = qcow2_parse_header(buf, got, l->size, &l->qi, &err);
	if (r) {
		int code = EXIT_IMAGE;

		if (r == -EOPNOTSUPP && l->qi.incompatible_features & ~QCOW2_INCOMPAT_KNOWN)
			fail(code, "%s: unsupported qcow2 feature: %s (0x%llx)", l->path, err,
			     (unsigned long long)(l->qi.incompatible_features & ~QCOW2_INCOMPAT_KNOWN));
		else if (r == -EOPNOTSUPP || r == -EFBIG)
			fail(code, "%s: unsupported qcow2 image: %s", l->path, err);
		else
			fail(code, "%s: invalid qcow2 header: %s", l->path, err);
		free(buf);
		return code;
	}
	if (l->qi.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
		free(buf);
		return fail(EXIT_IMAGE, "%s: unsupported qcow2 image: it has an external data file",
			    l->path);
	}
	if (l->qi.backing_file_offset) {
		r = qcow2_backing_name(&l->qi, buf, got, name, sizeof(name));
		if (r < 0) {
			free(buf);
			return fail(EXIT_IMAGE, "%s: backing file name too long", l->path);
		}
		l->backing_name = xstrdup(name);
		l->backing_fmt_absent = !l->qi.has_backing_fmt;
	}
	free(buf);
	return 0;
}

int chain_walk(const char *image, const struct open_opts *o, struct chain *c)
{
	char *path = xstrdup(image), *ref = NULL;
	enum layer_fmt fmt = FMT_QCOW2;
	unsigned int idx, k;
	int r;

	memset(c, 0, sizeof(*c));
	for (idx = 0;; idx++) {
		struct layer *l, *up;

		if (idx > MAX_BACKING) {
			free(path);
			free(ref);
			return fail(EXIT_IMAGE,
				    "backing chain of %s is longer than %u backing files (the target's limit)",
				    image, MAX_BACKING);
		}
		l = chain_add(c);
		l->path = path;
		l->backing_ref = ref;
		l->fmt = fmt;
		path = ref = NULL;
		r = open_layer(l, idx, idx == 0 && o->writable);
		if (r)
			return r;
		for (k = 0; k < idx; k++) {
			if (same_image(&c->layers[k], l))
				return fail(EXIT_IMAGE,
					    "loop in the backing chain: %s (named \"%s\" in %s) is the same file as layer %u (%s)",
					    l->path, l->backing_ref, c->layers[idx - 1].path,
					    k, c->layers[k].path);
		}
		if (fmt == FMT_RAW) {
			l->ok = true;
			return 0;
		}
		r = read_header(l, idx, c);
		if (r)
			return r;
		l->ok = true;
		if (!l->backing_name)
			return 0;
		up = l;
		if (!up->backing_name[0])
			return fail(EXIT_IMAGE, "%s names an empty backing file", up->path);
		if (up->backing_fmt_absent)
			return fail(EXIT_IMAGE,
				    "%s has a backing file (\"%s\") but records no backing format; "
				    "qcow2setup does not probe formats. Record it with: "
				    "qemu-img rebase -u -F FMT -b '%s' '%s' (FMT: qcow2 or raw)",
				    up->path, up->backing_name, up->backing_name, up->path);
		if (!strcmp(up->qi.backing_fmt, "qcow2"))
			fmt = FMT_QCOW2;
		else if (!strcmp(up->qi.backing_fmt, "raw"))
			fmt = FMT_RAW;
		else
			return fail(EXIT_IMAGE,
				    "%s: backing file \"%s\" has format \"%s\"; only qcow2 and raw are supported",
				    up->path, up->backing_name, up->qi.backing_fmt);
		path = resolve_backing(up->path, up->backing_name);
		if (!path)
			return fail(EXIT_IMAGE,
				    "%s: backing file \"%s\" uses a protocol (e.g. json:, nbd:); only local files and block devices are supported",
				    up->path, up->backing_name);
		ref = xstrdup(up->backing_name);
	}
}

/* Open one image and parse its header, without its backing chain. */
int open_image(const char *path, bool writable, struct layer *l)
{
	int r;

	memset(l, 0, sizeof(*l));
	l->fd = -1;
	l->loop_fd = -1;
	l->loop_nr = -1;
	l->path = xstrdup(path);
	l->fmt = FMT_QCOW2;
	r = open_layer(l, 0, writable);
	if (!r)
		r = read_header(l, 0, NULL);
	return r;
}

void free_snapshots(struct snapshot *s, unsigned int nr)
{
	unsigned int i;

	for (i = 0; i < nr; i++) {
		free(s[i].id);
		free(s[i].name);
	}
	free(s);
}

/* Read the snapshot table of a qcow2 layer. */
int read_snapshots(struct layer *l, struct snapshot **out, unsigned int *nr)
{
	const struct qcow2_info *qi = &l->qi;
	size_t cap = 1 << 20, len = 0, pos = 0;
	struct snapshot *snaps;
	unsigned int n;
	u8 *buf = NULL;
	bool eof = false;

	*out = NULL;
	*nr = 0;
	if (!qi->nb_snapshots)
		return 0;
	snaps = xcalloc(qi->nb_snapshots, sizeof(*snaps));
	for (n = 0; n < qi->nb_snapshots;) {
		struct qcow2_snapshot_info si;
		const char *err = "invalid snapshot table entry";
		int r = buf ? qcow2_parse_snapshot(qi, buf + pos, len - pos, l->size, &si, &err) :
			      -ENODATA;

		if (r == -ENODATA && !eof) {
			/* Read more: grow the buffer, re-read from the table start. */
			size_t got;
			int e;

			if (buf)
				cap *= 2;
			if (cap > QCOW2_MAX_SNAPSHOT_TABLE + (256 << 10))
				goto too_large;
			free(buf);
			buf = xmalloc(cap);
			e = read_full(l->fd, buf, cap, qi->snapshots_offset, &got);
			if (e) {
				free(buf);
				free_snapshots(snaps, n);
				return fail(EXIT_IMAGE, "%s: cannot read the snapshot table: %s",
					    l->path, strerror(-e));
			}
			len = got;
			eof = got < cap;
			continue;
		}
		if (r < 0) {
			free(buf);
			free_snapshots(snaps, n);
			if (r == -ENODATA)
				err = "snapshot table runs past the end of the image";
			return fail(EXIT_IMAGE, "%s: snapshot %u: %s", l->path, n, err);
		}
		{
			struct qcow2_snapshot_header sh;

			memcpy(&sh, buf + pos, sizeof(sh));
			snaps[n].id = xasprintf("%.*s", (int)si.id_len, si.id);
			snaps[n].name = xasprintf("%.*s", (int)si.name_len, si.name);
			snaps[n].disk_size = si.disk_size;
			snaps[n].vm_state_size = be32_to_cpu(sh.vm_state_size);
			if (be32_to_cpu(sh.extra_data_size) >= 8) {
				__be64 big;

				memcpy(&big, buf + pos + sizeof(sh), sizeof(big));
				snaps[n].vm_state_size = be64_to_cpu(big);
			}
			snaps[n].date_sec = be32_to_cpu(sh.date_sec);
			snaps[n].date_nsec = be32_to_cpu(sh.date_nsec);
			snaps[n].vm_clock_nsec = be64_to_cpu(sh.vm_clock_nsec);
		}
		pos += (size_t)r;
		n++;
		if (pos > QCOW2_MAX_SNAPSHOT_TABLE && n < qi->nb_snapshots)
			goto too_large;
		if (pos > len)	/* padding of the last entry may be missing */
			pos = len;
	}
	free(buf);
	*out = snaps;
	*nr = n;
	return 0;

too_large:
	free(buf);
	free_snapshots(snaps, n);
	return fail(EXIT_IMAGE, "%s: snapshot table too large", l->path);
}
