// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup - map qcow2 images through the dm-qcow2 device-mapper target.
 *
 *   qcow2setup open IMAGE NAME [options]   map IMAGE as /dev/mapper/NAME
 *   qcow2setup close NAME [--force]        remove the mapping
 *   qcow2setup status NAME [--json]
 *   qcow2setup stats NAME [--json]         the target's counters
 *   qcow2setup commit NAME                 write the metadata back
 *   qcow2setup list [--json]
 *   qcow2setup info IMAGE [--json]
 *
 * See qcow2setup(8).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "qcow2setup.h"

#define DM_NAME_MAX	127
#define DM_UUID_MAX	128

static const char usage_text[] =
"Usage: qcow2setup [-v] COMMAND [ARGS]\n"
"\n"
"Map qcow2 images as block devices through the dm-qcow2 device-mapper target.\n"
"\n"
"Commands:\n"
"  open IMAGE NAME [options]  map IMAGE (file or block device) and its backing\n"
"                             chain as /dev/mapper/NAME\n"
"      -r, --read-only        map read-only (default: read-write; needs target 1.1)\n"
"      -s, --snapshot ID|NAME map an internal snapshot (ID or name; read-only)\n"
"          --snapshot-id ID, --snapshot-name NAME   the same, unambiguous\n"
"      -c, --cache-size SIZE  metadata cache bound (bytes; K, M, G suffixes;\n"
"                             at least 16K; default 8M)\n"
"          --lazy-refcounts   write refcounts back lazily (read-write, v3 images)\n"
"          --no-udev-wait     do not wait for udev to finish with the device\n"
"          --dry-run          check the chain and print the table, with file\n"
"                             paths for the devices; attach and create nothing\n"
"  close NAME [--force]       remove the mapping (and the loop devices it used);\n"
"                             --force: also a device not made by qcow2setup\n"
"  status NAME [--json]       show a mapping: layers, sizes, cache, counters\n"
"  stats NAME [--json]        show the target's statistics counters, one\n"
"                             'name value' per line\n"
"  commit NAME                write all dirty metadata back (and clear the\n"
"                             dirty bit of lazy refcounts): the image is\n"
"                             consistent while it stays mapped\n"
"  list [--json]              list the qcow2setup mappings\n"
"  info IMAGE [--json]        show the header, snapshots and backing chain of\n"
"                             IMAGE without mapping it\n"
"\n"
"Options: -v, --verbose (twice: libdevmapper debug), -h, --help, -V, --version\n"
"\n"
"Exit status:\n"
"  0  success\n"
"  1  usage error (bad option or argument, ambiguous snapshot name)\n"
"  2  image or format error (not qcow2, unsupported feature, loop in the chain,\n"
"     chain too long, missing backing format, unreadable image)\n"
"  3  device-mapper or kernel error (the kernel refused the table or a\n"
"     message, no qcow2 target, loop device setup failed, not a qcow2 device)\n"
"  4  busy or locked (image in use by QEMU or another mapping, device exists\n"
"     or is open)\n"
"  5  not found (image, backing file, device or snapshot)\n";

static void usage(FILE *f)
{
	fputs(usage_text, f);
}

static int usage_err(const char *fmt, const char *arg)
{
	fprintf(stderr, "qcow2setup: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry 'qcow2setup --help'.\n");
	return EXIT_USAGE;
}

/* device-mapper names: a conservative character set, no mangling needed. */
static bool valid_name(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > DM_NAME_MAX || !strcmp(s, ".") || !strcmp(s, ".."))
		return false;
	for (; *s; s++) {
		if (!isalnum((unsigned char)*s) && !strchr("#+-.:=@_", *s))
			return false;
	}
	return true;
}

static bool is_qcow2setup_uuid(const char *uuid)
{
	return uuid && !strncmp(uuid, UUID_PREFIX, strlen(UUID_PREFIX));
}

/*
 * QCOW2-<16 hex digits>-<name>: the digits are a 64-bit FNV-1a hash of the
 * image's canonical path, so the same image mapped under the same name gets
 * the same UUID every time (stable /dev/disk/by-id/dm-uuid-* links).
 */
static char *make_uuid(const char *image, const char *name)
{
	char *canon = realpath(image, NULL);
	const unsigned char *p = (const unsigned char *)(canon ? canon : image);
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t room;

	for (; *p; p++) {
		h ^= *p;
		h *= 0x100000001b3ULL;
	}
	free(canon);
	room = DM_UUID_MAX - strlen(UUID_PREFIX) - 16 - 1;
	return xasprintf("%s%016llx-%.*s", UUID_PREFIX, (unsigned long long)h,
			 (int)room, name);
}

/* ------------------------------------------------------------------ open */

struct open_args {
	const char *image;
	const char *name;
	bool read_only;
	bool dry_run;
	bool no_udev_wait;
	bool lazy_refcounts;
	const char *snapshot;
	int snapshot_by;	/* 0 either, 1 id, 2 name */
	uint64_t cache_size;
};

/* Resolve --snapshot to an ID and the mapped size. */
static int resolve_snapshot(struct layer *top, const struct open_args *a,
			    char **id, uint64_t *size)
{
	struct snapshot *s;
	unsigned int nr, i, hits = 0, pick = 0;
	int r;

	r = read_snapshots(top, &s, &nr);
	if (r)
		return r;
	for (i = 0; i < nr; i++) {
		bool by_id = a->snapshot_by != 2 && !strcmp(s[i].id, a->snapshot);
		bool by_name = a->snapshot_by != 1 && !strcmp(s[i].name, a->snapshot);

		if (by_id || by_name) {
			if (hits++ == 0)
				pick = i;
		}
	}
	if (!hits) {
		free_snapshots(s, nr);
		return fail(EXIT_NOTFOUND, "%s has no snapshot with %s \"%s\" (%u snapshot%s; see qcow2setup info)",
			    top->path, a->snapshot_by == 1 ? "ID" : a->snapshot_by == 2 ? "name" : "ID or name",
			    a->snapshot, nr, nr == 1 ? "" : "s");
	}
	if (hits > 1) {
		free_snapshots(s, nr);
		return fail(EXIT_USAGE, "snapshot \"%s\" of %s is ambiguous: %u snapshots have it as ID or name; use --snapshot-id or --snapshot-name",
			    a->snapshot, top->path, hits);
	}
	if (!s[pick].id[0] || strpbrk(s[pick].id, " \t\n")) {
		free_snapshots(s, nr);
		return fail(EXIT_IMAGE, "snapshot ID \"%s\" of %s cannot be passed to the target",
			    a->snapshot, top->path);
	}
	*id = xstrdup(s[pick].id);
	*size = s[pick].disk_size ? s[pick].disk_size : top->qi.size;
	msg_info("snapshot \"%s\": ID %s, name \"%s\", %llu bytes", a->snapshot,
		 s[pick].id, s[pick].name, (unsigned long long)*size);
	free_snapshots(s, nr);
	return 0;
}

/* Does any existing dm-qcow2 mapping use an image of @c in a conflicting mode? */
static int check_existing_mappings(const struct chain *c, bool writable)
{
	char **names;
	unsigned int nr, i, k, j;
	int code = 0;

	if (dm_list_names(&names, &nr))
		return fail(EXIT_DM, "cannot list device-mapper devices: %s", dm_last_error());
	for (i = 0; i < nr && !code; i++) {
		struct dm_dev_info di;
		struct parsed_table t;

		if (dm_get(names[i], false, &di))
			continue;
		if (!di.target || strcmp(di.target, TARGET_NAME) || di.nr_targets != 1 ||
		    table_parse(di.table, &t)) {
			dm_info_free(&di);
			continue;
		}
		for (k = 0; k < t.nr_layers && !code; k++) {
			bool ex_w = k == 0 && !di.read_only;
			dev_t fdev = 0;
			ino_t fino = 0;
			bool is_loop = loop_file_id(t.layers[k].major, t.layers[k].minor,
						    &fdev, &fino) == 0;
			dev_t rdev = makedev(t.layers[k].major, t.layers[k].minor);

			for (j = 0; j < c->n && !code; j++) {
				const struct layer *l = &c->layers[j];
				bool new_w = j == 0 && writable;
				bool same = l->is_blk ? rdev == l->rdev :
					    is_loop && fdev == l->st_dev && fino == l->st_ino;

				if (!same || (!ex_w && !new_w))
					continue;
				code = fail(EXIT_BUSY,
					    "%s is already mapped by %s (as its %s, %s); "
					    "a second mapping is only possible when both are read-only",
					    l->path, names[i], k ? "backing layer" : "image",
					    ex_w ? "read-write" : "read-only");
			}
		}
		table_free(&t);
		dm_info_free(&di);
	}
	for (i = 0; i < nr; i++)
		free(names[i]);
	free(names);
	return code;
}

/*
 * A loop device ends at the file's last full sector.  Writable images are
 * padded (bytes past the end of a qcow2 image read as zeros, so padding
 * changes nothing); read-only ones are left alone, with a warning when the
 * dropped bytes are not zeros.
 */
static int handle_partial_sector(struct layer *l)
{
	unsigned int tail = (unsigned int)(l->size & 511);
	unsigned char buf[512];
	size_t got;
	unsigned int i;

	if (l->is_blk || !tail)
		return 0;
	if (l->writable) {
		uint64_t nsize = (l->size | 511) + 1;

		if (ftruncate(l->fd, (off_t)nsize) < 0)
			return fail(EXIT_IMAGE, "cannot pad %s to a multiple of 512 bytes: %s",
				    l->path, strerror(errno));
		msg_info("padded %s from %llu to %llu bytes", l->path,
			 (unsigned long long)l->size, (unsigned long long)nsize);
		l->size = nsize;
		return 0;
	}
	if (read_full(l->fd, buf, tail, l->size - tail, &got) || got != tail)
		return 0;
	for (i = 0; i < tail && !buf[i]; i++)
		;
	if (i < tail)
		msg_warn("the last %u bytes of %s are past its last full 512-byte sector: the loop device "
			 "does not show them and the target reads them as zeros, but they hold data "
			 "(e.g. the end of a compressed cluster). 'truncate -s %%512 FILE' makes them visible.",
			 tail, l->path);
	else
		msg_info("%s: %u zero bytes past the last full sector are not visible (harmless)",
			 l->path, tail);
	return 0;
}

static char *build_params(const struct chain *c, const char *snap_id,
			  const struct open_args *a, bool paths)
{
	size_t cap = 256 + (size_t)c->n * 64, len = 0;
	char *p = xmalloc(cap);
	unsigned int nopt = 3 * (c->n - 1) + (snap_id ? 2 : 0) + (a->cache_size ? 2 : 0) +
			    (a->lazy_refcounts ? 1 : 0);
	unsigned int i;

#define APPEND(...) do {						\
		int _n = snprintf(p + len, cap - len, __VA_ARGS__);	\
		if (_n < 0)						\
			break;						\
		if ((size_t)_n >= cap - len) {				\
			cap = 2 * cap + (size_t)_n;			\
			p = realloc(p, cap);				\
			if (!p) {					\
				msg_err("out of memory");		\
				exit(EXIT_IMAGE);			\
			}						\
			_n = snprintf(p + len, cap - len, __VA_ARGS__);	\
		}							\
		len += (size_t)_n;					\
	} while (0)

	for (i = 0; i < c->n; i++) {
		const struct layer *l = &c->layers[i];

		if (i == 0)
			APPEND("%s", "");
		else
			APPEND(" backing %s", fmt_name(l->fmt));
		if (paths)
			APPEND(" %s", l->path);
		else
			APPEND(" %u:%u", major(l->dev), minor(l->dev));
		if (i == 0 && nopt)
			APPEND(" %u", nopt);
	}
	if (snap_id)
		APPEND(" snapshot %s", snap_id);
	if (a->cache_size)
		APPEND(" cache_size %llu", (unsigned long long)a->cache_size);
	if (a->lazy_refcounts)
		APPEND(" lazy_refcounts");
#undef APPEND
	/* drop the leading space */
	memmove(p, p + 1, len);
	return p;
}

static void undo_open(struct chain *c)
{
	struct layer *top = &c->layers[0];
	unsigned int i;

	for (i = 0; i < c->n; i++)
		loop_detach(&c->layers[i]);
	/* Give the file its size back (the padding, the room to grow). */
	if (c->n && !top->is_blk && top->writable && top->fd >= 0 &&
	    top->size != top->orig_size && ftruncate(top->fd, (off_t)top->orig_size) < 0)
		msg_warn("cannot restore the size of %s: %s", top->path, strerror(errno));
}

/*
 * A writable image file cannot grow inside its loop device: extend it
 * (sparsely) to the largest size the image can reach (see grow.c).
 */
static int make_room(struct layer *l)
{
	uint64_t used, need;
	char hs[32];
	int r;

	r = image_used_end(l, &used);
	if (r)
		return fail(EXIT_IMAGE, "%s: cannot read the refcounts: %s", l->path,
			    strerror(-r));
	need = image_max_size(l, used);
	if (l->is_blk) {
		if (need > l->size)
			msg_info("%s: %s device; writing every cluster could need up to %s",
				 l->path, human_size(l->size, hs, sizeof(hs)),
				 human_size(need, hs, sizeof(hs)));
		return 0;
	}
	if (need <= l->size)
		return 0;
	if (ftruncate(l->fd, (off_t)need) < 0) {
		msg_warn("cannot extend %s to %llu bytes for writing (%s): writes that need new clusters may fail with ENOSPC",
			 l->path, (unsigned long long)need, strerror(errno));
		return 0;
	}
	msg_info("extended %s from %llu to %llu bytes (sparse) to leave room for writes",
		 l->path, (unsigned long long)l->size, (unsigned long long)need);
	l->size = need;
	l->grown = true;
	return 0;
}

static int cmd_open(const struct open_args *a)
{
	struct open_opts oo = { .writable = !a->read_only };
	struct chain c;
	struct dm_dev_info di;
	char *snap_id = NULL, *params = NULL, *uuid = NULL;
	uint64_t size, sectors;
	unsigned int i, block_size = 0, tver[3] = { 0 };
	int r;

	if (!valid_name(a->name))
		return usage_err("invalid device name '%s' (1-127 characters: letters, digits and #+-.:=@_)",
				 a->name);
	if (a->lazy_refcounts && a->read_only)
		return usage_err("%s is only meaningful for read-write mappings", "--lazy-refcounts");
	if (a->snapshot && !a->read_only)
		return usage_err("%s: snapshots are mapped read-only: add --read-only", "--snapshot");

	dm_setup(!a->no_udev_wait);
	if (!a->dry_run) {
		r = dm_get(a->name, false, &di);
		if (r == 0) {
			dm_info_free(&di);
			return fail(EXIT_BUSY, "device %s already exists", a->name);
		}
		if (r != -ENXIO)
			return fail(EXIT_DM, "cannot query device-mapper: %s%s", dm_last_error(),
				    geteuid() ? " (qcow2setup open must be run as root)" : "");
	}

	r = chain_walk(a->image, &oo, &c);
	if (r)
		goto out;
	if (!a->read_only && (c.layers[0].qi.incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
		r = fail(EXIT_IMAGE, "%s is marked corrupt: it can only be mapped read-only (repair: qemu-img check -r all)",
			 c.layers[0].path);
		goto out;
	}
	if (!a->read_only && (c.layers[0].qi.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
		r = fail(EXIT_IMAGE, "%s is marked dirty (lazy refcounts not yet written back): "
			 "map it read-only, or let QEMU repair it first (qemu-img check -r all)",
			 c.layers[0].path);
		goto out;
	}
	if (a->lazy_refcounts && c.layers[0].qi.version < 3) {
		r = fail(EXIT_IMAGE, "%s is a version %u image: lazy refcounts need version 3 "
			 "(qemu-img amend -o compat=1.1)", c.layers[0].path, c.layers[0].qi.version);
		goto out;
	}
	size = c.layers[0].qi.size;
	if (a->snapshot) {
		r = resolve_snapshot(&c.layers[0], a, &snap_id, &size);
		if (r)
			goto out;
	}
	sectors = size >> 9;
	if (!sectors) {
		r = fail(EXIT_IMAGE, "%s has a virtual size of %llu bytes: nothing to map",
			 a->image, (unsigned long long)size);
		goto out;
	}

	if (a->dry_run) {
		params = build_params(&c, snap_id, a, true);
		printf("0 %llu %s %s\n", (unsigned long long)sectors, TARGET_NAME, params);
		r = 0;
		goto out;
	}

	r = check_existing_mappings(&c, !a->read_only);
	if (r)
		goto out;
	if (!a->read_only && c.layers[0].is_blk) {
		/* Mounted or claimed by another holder (dm, md, ...)? */
		int fd = open(c.layers[0].path, O_RDONLY | O_EXCL | O_CLOEXEC);

		if (fd < 0 && errno == EBUSY) {
			r = fail(EXIT_BUSY, "%s is in use (mounted or held by another device)",
				 c.layers[0].path);
			goto out;
		}
		if (fd >= 0)
			close(fd);
	}
	for (i = 0; i < c.n; i++) {
		r = qemu_lock_image(&c.layers[i], i == 0 && !a->read_only);
		if (r)
			goto out;
	}
	c.layers[0].orig_size = c.layers[0].size;
	for (i = 0; i < c.n; i++) {
		struct layer *l = &c.layers[i];

		if (l->fmt == FMT_QCOW2 && l->qi.cluster_size < 4096)
			block_size = 512;
		r = handle_partial_sector(l);
		if (r)
			goto out;
	}
	if (!a->read_only) {
		r = make_room(&c.layers[0]);
		if (r)
			goto out;
	}
	for (i = 0; i < c.n; i++) {
		struct layer *l = &c.layers[i];

		if (l->is_blk) {
			l->dev = l->rdev;
			continue;
		}
		r = loop_attach(l, !(i == 0 && !a->read_only), block_size);
		if (r) {
			undo_open(&c);
			goto out;
		}
	}

	params = build_params(&c, snap_id, a, false);
	uuid = make_uuid(a->image, a->name);
	msg_info("table: 0 %llu %s %s", (unsigned long long)sectors, TARGET_NAME, params);
	r = dm_create_dev(a->name, uuid, sectors, params, a->read_only);
	if (r) {
		int e = -r;

		undo_open(&c);
		if (e == EBUSY || e == EEXIST)
			r = fail(EXIT_BUSY, "cannot create %s: %s", a->name, dm_last_error());
		else if (!dm_has_target(TARGET_NAME, tver))
			r = fail(EXIT_DM, "the kernel has no qcow2 device-mapper target (modprobe dm-qcow2)");
		else if (!a->read_only && tver[0] == 1 && tver[1] == 0)
			r = fail(EXIT_DM, "the kernel refused the read-write table for %s (%s): "
				 "the loaded dm-qcow2 target (version 1.0) cannot write; use --read-only",
				 a->image, dm_last_error());
		else if (!a->read_only)
			r = fail(EXIT_DM, "the kernel refused the read-write table for %s (%s); "
				 "'dmesg | grep qcow2' shows the kernel's reason, --read-only may work",
				 a->image, dm_last_error());
		else
			r = fail(EXIT_DM, "the kernel refused the table for %s (%s); "
				 "'dmesg | grep qcow2' shows the kernel's reason",
				 a->image, dm_last_error());
		goto out;
	}
	state_write(uuid, a->name, &c, !a->read_only);
	/* The mapping holds the loop devices now: let autoclear take over. */
	for (i = 0; i < c.n; i++)
		loop_release_fd(&c.layers[i]);
	msg_info("mapped %s as /dev/mapper/%s (%s, %u layer%s)", a->image, a->name,
		 a->read_only ? "read-only" : "read-write", c.n, c.n == 1 ? "" : "s");
	r = 0;
out:
	free(uuid);
	free(params);
	free(snap_id);
	chain_free(&c);
	return r;
}

/* ----------------------------------------------------------------- close */

/* Cut an image file extended by open back to the end of its clusters. */
static void shrink_image(const struct state *st)
{
	const char *path = st->nr ? st->layers[0].path : NULL;
	struct layer l;
	uint64_t used, want;
	int r;

	if (!path)
		return;
	r = open_image(path, true, &l);
	if (r)
		goto skip;
	if (l.st_dev != st->file_dev || l.st_ino != st->file_ino) {
		msg_warn("%s is no longer the file that was mapped: its size is left alone", path);
		goto out;
	}
	if (qemu_lock_image(&l, true))
		goto skip;
	if (l.qi.incompatible_features & (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT)) {
		msg_warn("%s is marked %s: not cutting it back (qemu-img check -r all repairs it)",
			 path, l.qi.incompatible_features & QCOW2_INCOMPAT_CORRUPT ? "corrupt" : "dirty");
		goto out;
	}
	if (image_used_end(&l, &used))
		goto skip;
	want = used > st->orig_size ? used : st->orig_size;
	if (want < l.size) {
		if (ftruncate(l.fd, (off_t)want) < 0)
			goto skip;
		msg_info("cut %s back from %llu to %llu bytes", path,
			 (unsigned long long)l.size, (unsigned long long)want);
	}
	goto out;
skip:
	msg_warn("%s keeps the room to grow that open gave it (a sparse tail); "
		 "QEMU does not mind", path);
out:
	if (l.fd >= 0)
		close(l.fd);
	free(l.path);
	free(l.backing_name);
}

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static int cmd_close(const char *name, bool force, bool udev_wait)
{
	struct dm_dev_info di;
	struct parsed_table t = { 0 };
	struct state st = { 0 };
	unsigned int i, waited = 0, left;
	bool have_state, have_table;
	int r;

	dm_setup(udev_wait);
	r = dm_get(name, false, &di);
	if (r == -ENXIO)
		return fail(EXIT_NOTFOUND, "no device %s", name);
	if (r)
		return fail(EXIT_DM, "cannot query device %s: %s%s", name, dm_last_error(),
			    geteuid() ? " (run as root)" : "");
	if (!is_qcow2setup_uuid(di.uuid) && !force) {
		r = fail(EXIT_USAGE, "%s was not created by qcow2setup (its UUID \"%s\" lacks the %s prefix); use --force to remove it anyway",
			 name, di.uuid, UUID_PREFIX);
		dm_info_free(&di);
		return r;
	}
	have_table = di.target && !strcmp(di.target, TARGET_NAME) && !table_parse(di.table, &t);
	have_state = is_qcow2setup_uuid(di.uuid) && !state_read(di.uuid, &st);

	r = dm_remove_dev(name);
	if (r) {
		r = r == -EBUSY ?
			fail(EXIT_BUSY, "cannot remove %s: it is in use (mounted or open)", name) :
			fail(EXIT_DM, "cannot remove %s: %s", name, dm_last_error());
		goto out;
	}
	msg_info("removed %s", name);
	if (have_state && st.grown)
		shrink_image(&st);
	if (is_qcow2setup_uuid(di.uuid))
		state_remove(di.uuid);

	/*
	 * The loop devices qcow2setup attached have autoclear set: they detach
	 * when the mapping releases them, or once a process that still has
	 * them open (udev probing them, say) closes them.  Wait a little.
	 */
	if (!have_table)
		goto out;
	for (;;) {
		left = 0;
		for (i = 0; i < t.nr_layers; i++) {
			struct tbl_layer *tl = &t.layers[i];
			char *ac = read_sysfs("/sys/dev/block/%u:%u/loop/autoclear",
					      tl->major, tl->minor);
			bool ours = have_state && i < st.nr && st.layers[i].attached &&
				    st.layers[i].major == tl->major &&
				    st.layers[i].minor == tl->minor;

			if (ac && (ours || !strcmp(ac, "1")))
				left++;
			free(ac);
		}
		if (!left || waited >= 5000)
			break;
		nap_ms(20);
		waited += 20;
	}
	if (left)
		msg_warn("%u loop device%s of %s still attached: held open by another process; "
			 "they detach when it closes them", left, left == 1 ? " is" : "s are", name);
	r = 0;
out:
	table_free(&t);
	state_free(&st);
	dm_info_free(&di);
	return r;
}

/* ---------------------------------------------------------------- status */

struct status_fields {
	bool ok;
	char mode[8];
	unsigned long long vsize, csize, nlayers, used, slots, hits, misses, mreads, oreads, ioerr;
	bool has_dirty;			/* target 1.1: dirty_slices and flags */
	unsigned long long dirty;
	bool corrupt, no_space;
};

/*
 * <mode> <virtual_size> <cluster_size> <nr_layers> <used>/<slots> <hits>
 * <misses> <metadata_reads> <open_reads> <io_errors> [<dirty_slices>
 * [corrupt] [no_space]]  (the part in brackets since target version 1.1)
 */
static void parse_status(const char *s, struct status_fields *f)
{
	char word[16];
	int n = 0, m;

	memset(f, 0, sizeof(*f));
	if (!s || sscanf(s, "%7s %llu %llu %llu %llu/%llu %llu %llu %llu %llu %llu%n", f->mode,
			 &f->vsize, &f->csize, &f->nlayers, &f->used, &f->slots, &f->hits,
			 &f->misses, &f->mreads, &f->oreads, &f->ioerr, &n) != 11)
		return;
	f->ok = true;
	s += n;
	if (sscanf(s, "%llu%n", &f->dirty, &m) == 1) {
		f->has_dirty = true;
		s += m;
	}
	while (sscanf(s, "%15s%n", word, &m) == 1) {
		if (!strcmp(word, "corrupt"))
			f->corrupt = true;
		else if (!strcmp(word, "no_space"))
			f->no_space = true;
		s += m;
	}
}

struct layer_view {
	unsigned int major, minor;
	enum layer_fmt fmt;
	char *node;		/* /dev/loop0, /dev/sdb1 */
	char *file;		/* loop backing file (kernel's view) */
	char *path;		/* path as given at open (state file) */
	bool is_loop;
	bool dio;
};

static void free_views(struct layer_view *v, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		free(v[i].node);
		free(v[i].file);
		free(v[i].path);
	}
	free(v);
}

static struct layer_view *layer_views(const struct parsed_table *t, const struct state *st)
{
	struct layer_view *v = xcalloc(t->nr_layers, sizeof(*v));
	unsigned int i;

	for (i = 0; i < t->nr_layers; i++) {
		const struct tbl_layer *tl = &t->layers[i];
		char *dio;

		v[i].major = tl->major;
		v[i].minor = tl->minor;
		v[i].fmt = tl->fmt;
		v[i].node = devnode_of(tl->major, tl->minor);
		v[i].file = read_sysfs("/sys/dev/block/%u:%u/loop/backing_file",
				       tl->major, tl->minor);
		v[i].is_loop = v[i].file != NULL;
		dio = read_sysfs("/sys/dev/block/%u:%u/loop/dio", tl->major, tl->minor);
		v[i].dio = dio && !strcmp(dio, "1");
		free(dio);
		if (st && i < st->nr && st->layers[i].major == tl->major &&
		    st->layers[i].minor == tl->minor)
			v[i].path = xstrdup(st->layers[i].path);
		else if (v[i].file)
			v[i].path = xstrdup(v[i].file);
		else if (v[i].node)
			v[i].path = xstrdup(v[i].node);
	}
	return v;
}

/*
 * Look up @name, which must have a single qcow2 target: 0 with *@di filled
 * (dm_info_free() it), else the exit code of the error reported.
 */
static int get_qcow2_dev(const char *name, bool with_status, struct dm_dev_info *di)
{
	int r = dm_get(name, with_status, di);

	if (r == -ENXIO)
		return fail(EXIT_NOTFOUND, "no device %s", name);
	if (r)
		return fail(EXIT_DM, "cannot query device %s: %s%s", name, dm_last_error(),
			    geteuid() ? " (run as root)" : "");
	if (!di->target || strcmp(di->target, TARGET_NAME) || di->nr_targets != 1) {
		r = di->nr_targets > 1 ?
		    fail(EXIT_DM, "%s is not a qcow2 device (%u targets)", name, di->nr_targets) :
		    fail(EXIT_DM, "%s is not a qcow2 device (target %s)", name,
			 di->target ? di->target : "none");
		dm_info_free(di);
		return r;
	}
	return 0;
}

static int show_status(const char *name, bool json)
{
	struct dm_dev_info di;
	struct parsed_table t;
	struct state st;
	struct status_fields f;
	struct layer_view *v;
	bool have_state;
	char hs[32], path[256];
	uint64_t cache_size;
	unsigned int i;
	int r;

	r = get_qcow2_dev(name, true, &di);
	if (r)
		return r;
	if (table_parse(di.table, &t)) {
		r = fail(EXIT_DM, "%s is not a qcow2 device (unparsable table)", name);
		dm_info_free(&di);
		return r;
	}
	have_state = is_qcow2setup_uuid(di.uuid) && !state_read(di.uuid, &st);
	v = layer_views(&t, have_state ? &st : NULL);
	parse_status(di.status, &f);
	/* Without cache_size in the table, the target chose the bound. */
	cache_size = t.cache_size;
	if (!cache_size && f.ok)
		cache_size = f.slots * (uint64_t)sysconf(_SC_PAGESIZE);

	if (json) {
		struct json j = { 0 };

		json_begin_obj(&j, NULL);
		json_str(&j, "name", name);
		json_str(&j, "uuid", di.uuid);
		json_bool(&j, "qcow2setup", is_qcow2setup_uuid(di.uuid));
		snprintf(path, sizeof(path), "/dev/mapper/%s", name);
		json_str(&j, "device", path);
		snprintf(path, sizeof(path), "/dev/dm-%u", di.minor);
		json_str(&j, "dm_device", path);
		json_u64(&j, "major", di.major);
		json_u64(&j, "minor", di.minor);
		json_bool(&j, "read_only", di.read_only);
		json_bool(&j, "suspended", di.suspended);
		json_u64(&j, "open_count", (uint64_t)(di.open_count < 0 ? 0 : di.open_count));
		json_str(&j, "mode", f.ok ? f.mode : NULL);
		json_u64(&j, "sectors", di.length);
		if (f.ok) {
			json_u64(&j, "virtual_size", f.vsize);
			json_u64(&j, "cluster_size", f.csize);
		} else {
			json_null(&j, "virtual_size");
			json_null(&j, "cluster_size");
		}
		json_u64(&j, "nr_layers", t.nr_layers);
		json_str(&j, "snapshot", t.snapshot);
		if (cache_size)
			json_u64(&j, "cache_size", cache_size);
		else
			json_null(&j, "cache_size");
		json_bool(&j, "cache_size_default", !t.cache_size);
		json_bool(&j, "lazy_refcounts", t.lazy_refcounts);
		json_begin_arr(&j, "layers");
		for (i = 0; i < t.nr_layers; i++) {
			char mm[32];

			snprintf(mm, sizeof(mm), "%u:%u", v[i].major, v[i].minor);
			json_begin_obj(&j, NULL);
			json_u64(&j, "index", i);
			json_str(&j, "format", fmt_name(v[i].fmt));
			json_str(&j, "device", mm);
			json_str(&j, "device_node", v[i].node);
			json_bool(&j, "loop", v[i].is_loop);
			if (v[i].is_loop) {
				json_str(&j, "backing_file", v[i].file);
				json_bool(&j, "direct_io", v[i].dio);
			}
			json_str(&j, "path", v[i].path);
			json_bool(&j, "read_only", i > 0 || di.read_only);
			json_end_obj(&j);
		}
		json_end_arr(&j);
		if (f.ok) {
			json_begin_obj(&j, "cache");
			json_u64(&j, "used_slices", f.used);
			json_u64(&j, "slices", f.slots);
			json_u64(&j, "hits", f.hits);
			json_u64(&j, "misses", f.misses);
			json_end_obj(&j);
			json_u64(&j, "metadata_reads", f.mreads);
			json_u64(&j, "open_reads", f.oreads);
			json_u64(&j, "io_errors", f.ioerr);
			if (f.has_dirty)
				json_u64(&j, "dirty_slices", f.dirty);
			else
				json_null(&j, "dirty_slices");
			json_bool(&j, "corrupt", f.corrupt);
			json_bool(&j, "no_space", f.no_space);
		}
		json_str(&j, "table", di.table);
		json_str(&j, "status", di.status);
		json_end_obj(&j);
		json_finish(&j);
	} else {
		printf("/dev/mapper/%s is active%s%s.\n", name,
		       di.read_only ? " (read-only)" : " (read-write)",
		       di.suspended ? ", suspended" : "");
		printf("  uuid:           %s%s\n", di.uuid[0] ? di.uuid : "(none)",
		       is_qcow2setup_uuid(di.uuid) ? "" : " (not made by qcow2setup)");
		printf("  device:         /dev/dm-%u (%u:%u), open count %d\n", di.minor,
		       di.major, di.minor, di.open_count);
		if (f.ok) {
			printf("  mode:           %s%s\n", f.mode,
			       !strcmp(f.mode, "fail") ? " (the target failed: I/O errors)" : "");
			printf("  virtual size:   %s (%llu bytes)\n", human_size(f.vsize, hs, sizeof(hs)),
			       f.vsize);
			printf("  cluster size:   %llu\n", f.csize);
		}
		printf("  mapped size:    %llu sectors\n", (unsigned long long)di.length);
		if (t.snapshot)
			printf("  snapshot:       %s\n", t.snapshot);
		if (t.lazy_refcounts)
			printf("  lazy refcounts: yes\n");
		printf("  layers:         %u\n", t.nr_layers);
		for (i = 0; i < t.nr_layers; i++) {
			printf("    %-3u %-5s %u:%u %s", i, fmt_name(v[i].fmt), v[i].major, v[i].minor,
			       v[i].node ? v[i].node : "?");
			if (v[i].is_loop)
				printf(" (%s I/O)", v[i].dio ? "direct" : "buffered");
			if (v[i].path && (!v[i].node || strcmp(v[i].path, v[i].node)))
				printf(" %s", v[i].path);
			putchar('\n');
		}
		if (f.ok) {
			printf("  cache:          %llu/%llu slices in use (bound %s%s), %llu hits, %llu misses\n",
			       f.used, f.slots, human_size(cache_size, hs, sizeof(hs)),
			       t.cache_size ? "" : ", default", f.hits, f.misses);
			printf("  metadata reads: %llu (%llu while opening)\n", f.mreads, f.oreads);
			if (f.has_dirty)
				printf("  dirty slices:   %llu (metadata not yet committed)\n", f.dirty);
			printf("  I/O errors:     %llu\n", f.ioerr);
			if (f.corrupt)
				printf("  corrupt:        yes: the target found corrupt metadata, set the image's "
				       "corrupt bit and went read-only (qemu-img check -r all)\n");
			if (f.no_space)
				printf("  no space:       yes: the image device is full; grow it, then "
				       "suspend and resume the device\n");
		} else {
			printf("  status:         %s\n", di.status ? di.status : "(none)");
		}
	}
	free_views(v, t.nr_layers);
	if (have_state)
		state_free(&st);
	table_free(&t);
	dm_info_free(&di);
	return 0;
}

static int cmd_list(bool json)
{
	char **names;
	unsigned int nr, i, shown = 0;
	struct json j = { 0 };

	dm_setup(false);
	if (dm_list_names(&names, &nr))
		return fail(EXIT_DM, "cannot list device-mapper devices: %s%s", dm_last_error(),
			    geteuid() ? " (run as root)" : "");
	if (json) {
		json_begin_obj(&j, NULL);
		json_begin_arr(&j, "devices");
	}
	for (i = 0; i < nr; i++) {
		struct dm_dev_info di;
		struct parsed_table t;
		struct status_fields f;
		struct state st;
		struct layer_view *v;
		bool have_state;
		char hs[32], path[256];

		if (dm_get(names[i], true, &di))
			continue;
		if (!is_qcow2setup_uuid(di.uuid) || !di.target || strcmp(di.target, TARGET_NAME) ||
		    table_parse(di.table, &t)) {
			dm_info_free(&di);
			continue;
		}
		have_state = !state_read(di.uuid, &st);
		v = layer_views(&t, have_state ? &st : NULL);
		parse_status(di.status, &f);
		if (json) {
			json_begin_obj(&j, NULL);
			json_str(&j, "name", names[i]);
			json_str(&j, "uuid", di.uuid);
			snprintf(path, sizeof(path), "/dev/mapper/%s", names[i]);
			json_str(&j, "device", path);
			json_bool(&j, "read_only", di.read_only);
			json_str(&j, "mode", f.ok ? f.mode : NULL);
			json_u64(&j, "virtual_size", f.ok ? f.vsize : di.length << 9);
			json_u64(&j, "nr_layers", t.nr_layers);
			json_str(&j, "snapshot", t.snapshot);
			json_str(&j, "image", v[0].path);
			json_u64(&j, "open_count", (uint64_t)(di.open_count < 0 ? 0 : di.open_count));
			json_end_obj(&j);
		} else {
			if (!shown)
				printf("%-20s %-4s %-12s %-6s %s\n", "NAME", "MODE", "SIZE", "LAYERS", "IMAGE");
			printf("%-20s %-4s %-12s %-6u %s%s%s\n", names[i], f.ok ? f.mode : "?",
			       human_size(f.ok ? f.vsize : di.length << 9, hs, sizeof(hs)),
			       t.nr_layers, v[0].path ? v[0].path : "?",
			       t.snapshot ? " @" : "", t.snapshot ? t.snapshot : "");
		}
		shown++;
		free_views(v, t.nr_layers);
		if (have_state)
			state_free(&st);
		table_free(&t);
		dm_info_free(&di);
	}
	if (json) {
		json_end_arr(&j);
		json_end_obj(&j);
		json_finish(&j);
	}
	for (i = 0; i < nr; i++)
		free(names[i]);
	free(names);
	return 0;
}

/* --------------------------------------------------------- stats, commit */

/* @name exists and has a single qcow2 target (any such device, as status). */
static int check_qcow2_dev(const char *name)
{
	struct dm_dev_info di;
	int r;

	r = get_qcow2_dev(name, false, &di);
	if (!r)
		dm_info_free(&di);
	return r;
}

/* Exit code and message for the target message @msg that failed with @r. */
static int message_failed(const char *name, const char *msg, int r)
{
	unsigned int tver[3] = { 0 };
	struct status_fields f;
	struct dm_dev_info di;
	char err[512];

	/* the queries below may replace libdevmapper's message */
	snprintf(err, sizeof(err), "%s", dm_last_error());
	if (r == -ENXIO)
		return fail(EXIT_NOTFOUND, "no device %s", name);
	if (r == -EINVAL && dm_has_target(TARGET_NAME, tver))
		return fail(EXIT_DM, "the kernel refused the %s message for %s (%s): "
			    "the loaded qcow2 target (version %u.%u.%u) may not support it",
			    msg, name, err, tver[0], tver[1], tver[2]);
	if (r == -EIO && !dm_get(name, true, &di)) {
		parse_status(di.status, &f);
		dm_info_free(&di);
		if (f.ok && !strcmp(f.mode, "fail"))
			return fail(EXIT_DM, "%s of %s failed (%s): the target is in fail mode; "
				    "'dmesg | grep qcow2' shows why", msg, name, err);
	}
	return fail(EXIT_DM, "%s of %s failed: %s", msg, name, err);
}

struct counter {
	const char *name;
	unsigned long long val;
};

/* @line made printable and cut to fit @buf, for an error message. */
static const char *excerpt(const char *line, char *buf, size_t len)
{
	size_t i;

	for (i = 0; line[i] && i + 1 < len; i++)
		buf[i] = isprint((unsigned char)line[i]) ? line[i] : '?';
	buf[i] = '\0';
	return buf;
}

/*
 * The answer to "stats": a line "<name> <value>" per counter, names of
 * [a-z0-9_], values unsigned decimal (qcow2.rst, "Messages"); the set of
 * counters may grow.  Splits @text in place: the names point into it.
 */
static int parse_stats(const char *name, char *text, struct counter **out,
		       unsigned int *nr)
{
	struct counter *v;
	unsigned int n = 0, cap = 1, lineno = 0, i;
	char *line, *end, *num, buf[64];
	size_t nlen, digits;

	for (end = text; *end; end++)
		cap += *end == '\n';
	v = xcalloc(cap, sizeof(*v));
	for (line = text; *line; line = end) {
		lineno++;
		end = strchr(line, '\n');
		if (end)
			*end++ = '\0';
		else
			end = line + strlen(line);
		nlen = strspn(line, "abcdefghijklmnopqrstuvwxyz0123456789_");
		num = line + nlen + strspn(line + nlen, " \t");
		digits = strspn(num, "0123456789");
		if (!nlen || num == line + nlen || !digits || num[digits])
			goto bad;
		errno = 0;
		v[n].val = strtoull(num, NULL, 10);
		if (errno)
			goto bad;
		line[nlen] = '\0';
		for (i = 0; i < n && strcmp(v[i].name, line); i++)
			;
		if (i < n) {
			free(v);
			return fail(EXIT_DM, "the stats of %s list the counter %s twice",
				    name, line);
		}
		v[n++].name = line;
	}
	*out = v;
	*nr = n;
	return 0;
bad:
	free(v);
	return fail(EXIT_DM, "malformed line %u in the stats of %s: \"%s\"", lineno, name,
		    excerpt(line, buf, sizeof(buf)));
}

static int cmd_stats(const char *name, bool json)
{
	struct counter *v = NULL;
	unsigned int nr = 0, i;
	char *resp = NULL;
	int r;

	r = check_qcow2_dev(name);
	if (r)
		return r;
	r = dm_message(name, "stats", &resp);
	if (r)
		return message_failed(name, "stats", r);
	if (!resp || !resp[0]) {
		free(resp);
		return fail(EXIT_DM, "the qcow2 target of %s sent no statistics "
			    "(the loaded target may not support the stats message)", name);
	}
	r = parse_stats(name, resp, &v, &nr);
	if (r)
		goto out;
	if (json) {
		struct json j = { 0 };

		json_begin_obj(&j, NULL);
		json_str(&j, "name", name);
		json_begin_obj(&j, "stats");
		for (i = 0; i < nr; i++)
			json_u64(&j, v[i].name, v[i].val);
		json_end_obj(&j);
		json_end_obj(&j);
		json_finish(&j);
	} else {
		for (i = 0; i < nr; i++)
			printf("%s %llu\n", v[i].name, v[i].val);
	}
out:
	free(v);
	free(resp);
	return r;
}

static int cmd_commit(const char *name)
{
	int r;

	r = check_qcow2_dev(name);
	if (r)
		return r;
	r = dm_message(name, "commit", NULL);
	if (r)
		return message_failed(name, "commit", r);
	msg_info("committed the metadata of %s", name);
	return 0;
}

/* ------------------------------------------------------------------ info */

static const char *compression_name(const struct qcow2_info *qi)
{
	return qi->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "deflate";
}

static void format_date(uint32_t sec, char *buf, size_t len)
{
	time_t t = (time_t)sec;
	struct tm tm;

	if (gmtime_r(&t, &tm))
		strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
	else
		snprintf(buf, len, "%u", sec);
}

static void info_layer_json(struct json *j, struct layer *l, unsigned int idx)
{
	const struct qcow2_info *qi = &l->qi;
	struct snapshot *s = NULL;
	unsigned int nr = 0, i;
	int locked;

	json_begin_obj(j, NULL);
	json_u64(j, "index", idx);
	json_str(j, "path", l->path);
	json_str(j, "backing_name", l->backing_ref);
	json_str(j, "format", fmt_name(l->fmt));
	json_str(j, "type", l->is_blk ? "block" : "file");
	json_u64(j, "size", l->size);
	locked = l->fd >= 0 ? qemu_write_locked(l->fd) : 0;
	json_bool(j, "write_locked", locked > 0);
	if (l->fmt == FMT_RAW || !qi->version) {
		json_end_obj(j);
		return;
	}
	json_u64(j, "version", qi->version);
	json_u64(j, "virtual_size", qi->size);
	json_u64(j, "cluster_size", qi->cluster_size);
	json_u64(j, "refcount_bits", 1ULL << qi->refcount_order);
	json_str(j, "compression_type", compression_name(qi));
	json_u64(j, "header_length", qi->header_length);
	json_begin_obj(j, "features");
	json_bool(j, "dirty", qi->incompatible_features & QCOW2_INCOMPAT_DIRTY);
	json_bool(j, "corrupt", qi->incompatible_features & QCOW2_INCOMPAT_CORRUPT);
	json_bool(j, "lazy_refcounts", qi->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS);
	json_bool(j, "extended_l2", qi->extended_l2);
	json_bool(j, "external_data_file", qi->incompatible_features & QCOW2_INCOMPAT_DATA_FILE);
	json_bool(j, "bitmaps", qi->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS);
	json_end_obj(j);
	json_u64(j, "incompatible_features", qi->incompatible_features);
	json_u64(j, "compatible_features", qi->compatible_features);
	json_u64(j, "autoclear_features", qi->autoclear_features);
	json_str(j, "backing_file", l->backing_name);
	json_str(j, "backing_format", qi->has_backing_fmt ? qi->backing_fmt : NULL);
	json_u64(j, "nb_snapshots", qi->nb_snapshots);
	if (qi->nb_snapshots && !read_snapshots(l, &s, &nr)) {
		json_begin_arr(j, "snapshots");
		for (i = 0; i < nr; i++) {
			json_begin_obj(j, NULL);
			json_str(j, "id", s[i].id);
			json_str(j, "name", s[i].name);
			if (s[i].disk_size)
				json_u64(j, "disk_size", s[i].disk_size);
			else
				json_null(j, "disk_size");
			json_u64(j, "vm_state_size", s[i].vm_state_size);
			json_u64(j, "date_sec", s[i].date_sec);
			json_u64(j, "date_nsec", s[i].date_nsec);
			json_u64(j, "vm_clock_nsec", s[i].vm_clock_nsec);
			json_end_obj(j);
		}
		json_end_arr(j);
		free_snapshots(s, nr);
	}
	json_end_obj(j);
}

static void info_human(struct chain *c)
{
	struct layer *l = &c->layers[0];
	const struct qcow2_info *qi = &l->qi;
	struct snapshot *s = NULL;
	unsigned int nr = 0, i;
	char hs[32], feat[256] = "", date[32];
	int locked;

	printf("image:            %s\n", l->path);
	if (!qi->version)
		return;
	printf("format:           qcow2, version %u\n", qi->version);
	printf("virtual size:     %s (%llu bytes)\n", human_size(qi->size, hs, sizeof(hs)),
	       (unsigned long long)qi->size);
	printf("%-18s%llu bytes\n", l->is_blk ? "device size:" : "file size:",
	       (unsigned long long)l->size);
	printf("cluster size:     %llu\n", (unsigned long long)qi->cluster_size);
	printf("refcount bits:    %llu\n", 1ULL << qi->refcount_order);
	printf("compression type: %s\n", compression_name(qi));
	if (qi->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS)
		strcat(feat, " lazy_refcounts");
	if (qi->extended_l2)
		strcat(feat, " extended_l2");
	if (qi->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)
		strcat(feat, " bitmaps");
	printf("features:        %s\n", feat[0] ? feat : " none");
	feat[0] = '\0';
	if (qi->incompatible_features & QCOW2_INCOMPAT_DIRTY)
		strcat(feat, " dirty");
	if (qi->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
		strcat(feat, " corrupt");
	printf("flags:           %s\n", feat[0] ? feat : " clean");
	locked = qemu_write_locked(l->fd);
	if (locked > 0)
		printf("in use:           open for writing by another process (values may change)\n");
	if (l->backing_name)
		printf("backing file:     %s (format %s)\n", l->backing_name,
		       qi->has_backing_fmt ? qi->backing_fmt : "not recorded");
	printf("snapshots:        %u\n", qi->nb_snapshots);
	if (qi->nb_snapshots && !read_snapshots(l, &s, &nr)) {
		printf("  %-8s %-20s %12s %12s  %s\n", "ID", "NAME", "DISK SIZE", "VM STATE", "DATE (UTC)");
		for (i = 0; i < nr; i++) {
			char ds[32];

			format_date(s[i].date_sec, date, sizeof(date));
			if (s[i].disk_size)
				human_size(s[i].disk_size, ds, sizeof(ds));
			else
				snprintf(ds, sizeof(ds), "-");
			printf("  %-8s %-20s %12s %12s  %s\n", s[i].id, s[i].name, ds,
			       human_size(s[i].vm_state_size, hs, sizeof(hs)), date);
		}
		free_snapshots(s, nr);
	}
	printf("backing chain:    %u layer%s\n", c->n, c->n == 1 ? "" : "s");
	for (i = 0; i < c->n; i++) {
		struct layer *b = &c->layers[i];

		printf("  %-3u %-5s %s", i, fmt_name(b->fmt), b->path);
		if (b->fmt == FMT_QCOW2 && b->qi.version && i)
			printf(" (v%u, %llu-byte clusters)", b->qi.version,
			       (unsigned long long)b->qi.cluster_size);
		if (b->backing_ref && strcmp(b->backing_ref, b->path))
			printf(" (named \"%s\")", b->backing_ref);
		putchar('\n');
	}
}

static int cmd_info(const char *image, bool json)
{
	struct open_opts oo = { .writable = false, .no_lock_check = true };
	struct chain c;
	int r;
	unsigned int i;

	last_error[0] = '\0';
	r = chain_walk(image, &oo, &c);
	if (json) {
		struct json j = { 0 };

		json_begin_obj(&j, NULL);
		json_str(&j, "image", image);
		json_begin_arr(&j, "layers");
		for (i = 0; i < c.n && c.layers[i].ok; i++)
			info_layer_json(&j, &c.layers[i], i);
		json_end_arr(&j);
		json_str(&j, "error", r ? last_error : NULL);
		json_end_obj(&j);
		json_finish(&j);
	} else {
		unsigned int n = c.n;

		/* Show the layers that could be read, up to the failing one. */
		while (c.n && !c.layers[c.n - 1].ok)
			c.n--;
		if (c.n)
			info_human(&c);
		c.n = n;
	}
	chain_free(&c);
	return r;
}

/* ------------------------------------------------------------------ main */

static void raise_nofile(void)
{
	struct rlimit rl;

	/* Up to 1024 layers, each with an image fd and a loop fd at once. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

enum {
	OPT_NO_UDEV_WAIT = 256,
	OPT_LAZY,
	OPT_DRY_RUN,
	OPT_SNAP_ID,
	OPT_SNAP_NAME,
	OPT_FORCE,
	OPT_JSON,
};

static const struct option long_opts[] = {
	{ "read-only", no_argument, NULL, 'r' },
	{ "snapshot", required_argument, NULL, 's' },
	{ "snapshot-id", required_argument, NULL, OPT_SNAP_ID },
	{ "snapshot-name", required_argument, NULL, OPT_SNAP_NAME },
	{ "cache-size", required_argument, NULL, 'c' },
	{ "lazy-refcounts", no_argument, NULL, OPT_LAZY },
	{ "no-udev-wait", no_argument, NULL, OPT_NO_UDEV_WAIT },
	{ "dry-run", no_argument, NULL, OPT_DRY_RUN },
	{ "force", no_argument, NULL, OPT_FORCE },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 }
};

static const char *opt_name(int c)
{
	const struct option *o;

	for (o = long_opts; o->name; o++)
		if (o->val == c)
			return o->name;
	return "?";
}

static int run(int argc, char **argv, char **pos)
{
	struct open_args oa = { 0 };
	bool force = false, json = false, no_udev_wait = false;
	const char *cmd = NULL;
	int seen[16], nseen = 0, i;
	int npos = 0, c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:rs:c:vhV", long_opts, NULL)) != -1 ||
	       optind < argc) {
		if (c == -1) {
			/* a positional argument: collect it and go on */
			pos[npos++] = argv[optind++];
			continue;
		}
		switch (c) {
		case 'r':
			oa.read_only = true;
			break;
		case 's':
		case OPT_SNAP_ID:
		case OPT_SNAP_NAME:
			if (oa.snapshot)
				return usage_err("%s: only one snapshot can be given", "--snapshot");
			oa.snapshot = optarg;
			oa.snapshot_by = c == OPT_SNAP_ID ? 1 : c == OPT_SNAP_NAME ? 2 : 0;
			break;
		case 'c':
			if (parse_size(optarg, &oa.cache_size) || oa.cache_size < CACHE_MIN)
				return usage_err("invalid --cache-size '%s' (bytes, K/M/G suffixes, at least 16K)",
						 optarg);
			break;
		case OPT_LAZY:
			oa.lazy_refcounts = true;
			break;
		case OPT_NO_UDEV_WAIT:
			no_udev_wait = true;
			break;
		case OPT_DRY_RUN:
			oa.dry_run = true;
			break;
		case OPT_FORCE:
			force = true;
			break;
		case OPT_JSON:
			json = true;
			break;
		case 'v':
			verbose++;
			continue;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		case 'V':
			printf("qcow2setup %s\n", QCOW2SETUP_VERSION);
			return EXIT_OK;
		case ':':
			return usage_err("option '%s' needs an argument", argv[optind - 1]);
		default:
			return usage_err("unknown option '%s'", argv[optind - 1]);
		}
		if (nseen < 16)
			seen[nseen++] = c;
	}
	if (npos < 1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = pos[0];
	raise_nofile();

	/* Which options each command takes. */
	for (i = 0; i < nseen; i++) {
		int o = seen[i];
		bool ok;

		if (!strcmp(cmd, "open"))
			ok = o != OPT_FORCE && o != OPT_JSON;
		else if (!strcmp(cmd, "close"))
			ok = o == OPT_FORCE || o == OPT_NO_UDEV_WAIT;
		else if (!strcmp(cmd, "status") || !strcmp(cmd, "list") || !strcmp(cmd, "info") ||
			 !strcmp(cmd, "stats"))
			ok = o == OPT_JSON;
		else if (!strcmp(cmd, "commit"))
			ok = false;
		else
			break;
		if (!ok)
			return usage_err("option --%s does not apply to this command", opt_name(o));
	}

	if (!strcmp(cmd, "open")) {
		if (npos != 3)
			return usage_err("%s: needs IMAGE and NAME", "open");
		oa.image = pos[1];
		oa.name = pos[2];
		oa.no_udev_wait = no_udev_wait;
		return cmd_open(&oa);
	}
	if (!strcmp(cmd, "close")) {
		if (npos != 2)
			return usage_err("%s: needs NAME", "close");
		return cmd_close(pos[1], force, !no_udev_wait);
	}
	if (!strcmp(cmd, "status")) {
		if (npos != 2)
			return usage_err("%s: needs NAME", "status");
		dm_setup(false);
		return show_status(pos[1], json);
	}
	if (!strcmp(cmd, "stats")) {
		if (npos != 2)
			return usage_err("%s: needs NAME", "stats");
		dm_setup(false);
		return cmd_stats(pos[1], json);
	}
	if (!strcmp(cmd, "commit")) {
		if (npos != 2)
			return usage_err("%s: needs NAME", "commit");
		dm_setup(false);
		return cmd_commit(pos[1]);
	}
	if (!strcmp(cmd, "list")) {
		if (npos != 1)
			return usage_err("%s: takes no arguments", "list");
		return cmd_list(json);
	}
	if (!strcmp(cmd, "info")) {
		if (npos != 2)
			return usage_err("%s: needs IMAGE", "info");
		return cmd_info(pos[1], json);
	}
	return usage_err("unknown command '%s'", cmd);
}

int main(int argc, char **argv)
{
	char **pos = xcalloc((size_t)argc + 1, sizeof(*pos));
	int r = run(argc, argv, pos);

	free(pos);
	return r;
}
