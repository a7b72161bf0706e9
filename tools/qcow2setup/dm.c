// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup: device-mapper through libdevmapper, and the qcow2 table
 * grammar (Documentation/admin-guide/device-mapper/qcow2.rst).
 */
#include <errno.h>
#include <inttypes.h>
#include <libdevmapper.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2setup.h"

/* libdevmapper log levels (libdm's internal _LOG_* values) */
#define DMLOG_ERR	3
#define DMLOG_LEVEL_MASK 0x7f

static char last_err[512];
static bool udev_sync = true;

static void dm_log(int level, const char *file, int line, int dm_errno_or_class,
		   const char *f, ...)
{
	char buf[512];
	va_list ap;

	(void)file;
	(void)line;
	(void)dm_errno_or_class;
	level &= DMLOG_LEVEL_MASK;
	if (level > DMLOG_ERR && verbose < 2)
		return;
	va_start(ap, f);
	vsnprintf(buf, sizeof(buf), f, ap);
	va_end(ap);
	if (level <= DMLOG_ERR)
		snprintf(last_err, sizeof(last_err), "%s", buf);
	if (verbose)
		fprintf(stderr, "qcow2setup: libdevmapper: %s\n", buf);
}

const char *dm_last_error(void)
{
	return last_err[0] ? last_err : "unknown error";
}

void dm_setup(bool udev_wait)
{
	dm_log_with_errno_init(dm_log);
	udev_sync = udev_wait;
	/*
	 * Without udev synchronisation libdevmapper makes the /dev/mapper
	 * node itself, so the device is usable right away either way.
	 */
	dm_udev_set_sync_support(udev_wait ? 1 : 0);
}

void dm_info_free(struct dm_dev_info *di)
{
	free(di->name);
	free(di->uuid);
	free(di->target);
	free(di->table);
	free(di->status);
	memset(di, 0, sizeof(*di));
}

/* One DM_DEVICE_TABLE or DM_DEVICE_STATUS query of @name. */
static int dm_query_targets(const char *name, int type, struct dm_dev_info *di)
{
	struct dm_task *dmt = dm_task_create(type);
	uint64_t start, length;
	char *ttype, *params;
	void *next = NULL;
	int r = 0;

	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_name(dmt, name) || !dm_task_no_open_count(dmt) ||
	    !dm_task_run(dmt)) {
		dm_task_destroy(dmt);
		return -EIO;
	}
	di->nr_targets = 0;
	do {
		next = dm_get_next_target(dmt, next, &start, &length, &ttype, &params);
		if (!ttype)
			break;
		if (di->nr_targets++ == 0) {
			di->start = start;
			di->length = length;
			if (type == DM_DEVICE_TABLE) {
				free(di->target);
				di->target = xstrdup(ttype);
				free(di->table);
				di->table = xstrdup(params ? params : "");
			} else {
				free(di->status);
				di->status = xstrdup(params ? params : "");
			}
		}
	} while (next);
	dm_task_destroy(dmt);
	return r;
}

/* Info, table and (optionally) status of @name.  -ENXIO: no such device. */
int dm_get(const char *name, bool with_status, struct dm_dev_info *di)
{
	struct dm_task *dmt;
	struct dm_info info;
	const char *uuid;
	int r;

	memset(di, 0, sizeof(*di));
	dmt = dm_task_create(DM_DEVICE_INFO);
	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_name(dmt, name) || !dm_task_run(dmt) ||
	    !dm_task_get_info(dmt, &info)) {
		dm_task_destroy(dmt);
		return -EIO;
	}
	if (!info.exists) {
		dm_task_destroy(dmt);
		return -ENXIO;
	}
	di->name = xstrdup(name);
	uuid = dm_task_get_uuid(dmt);
	di->uuid = xstrdup(uuid ? uuid : "");
	di->exists = true;
	di->read_only = info.read_only;
	di->suspended = info.suspended;
	di->open_count = info.open_count;
	di->major = (unsigned int)info.major;
	di->minor = (unsigned int)info.minor;
	dm_task_destroy(dmt);

	r = dm_query_targets(name, DM_DEVICE_TABLE, di);
	if (!r && with_status)
		r = dm_query_targets(name, DM_DEVICE_STATUS, di);
	if (r == -EIO) {
		/* Removed in between? */
		dm_info_free(di);
		return -ENXIO;
	}
	return r;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int dm_list_names(char ***names, unsigned int *nr)
{
	struct dm_task *dmt = dm_task_create(DM_DEVICE_LIST);
	struct dm_names *n;
	unsigned int count = 0, cap = 16;
	char **v;

	*names = NULL;
	*nr = 0;
	if (!dmt)
		return -ENOMEM;
	if (!dm_task_run(dmt) || !(n = dm_task_get_names(dmt))) {
		dm_task_destroy(dmt);
		return -EIO;
	}
	v = xcalloc(cap, sizeof(*v));
	if (n->dev) {
		for (;;) {
			if (count == cap) {
				cap *= 2;
				v = realloc(v, cap * sizeof(*v));
				if (!v) {
					msg_err("out of memory");
					exit(EXIT_DM);
				}
			}
			v[count++] = xstrdup(n->name);
			if (!n->next)
				break;
			n = (struct dm_names *)((char *)n + n->next);
		}
	}
	dm_task_destroy(dmt);
	qsort(v, count, sizeof(*v), cmp_str);
	*names = v;
	*nr = count;
	return 0;
}

bool dm_has_target(const char *type, unsigned int version[3])
{
	struct dm_task *dmt = dm_task_create(DM_DEVICE_LIST_VERSIONS);
	struct dm_versions *v, *last;
	bool found = false;

	if (!dmt)
		return false;
	if (dm_task_run(dmt) && (v = dm_task_get_versions(dmt))) {
		do {
			last = v;
			if (!strcmp(v->name, type)) {
				found = true;
				if (version)
					memcpy(version, v->version, 3 * sizeof(*version));
				break;
			}
			v = (struct dm_versions *)((char *)v + v->next);
		} while (last != v);
	}
	dm_task_destroy(dmt);
	return found;
}

/* Create, load and resume in one go (libdevmapper removes it on failure). */
int dm_create_dev(const char *name, const char *uuid, uint64_t sectors,
		  const char *params, bool read_only)
{
	struct dm_task *dmt = dm_task_create(DM_DEVICE_CREATE);
	uint32_t cookie = 0;
	int ok, e;

	last_err[0] = '\0';
	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_name(dmt, name) || !dm_task_set_uuid(dmt, uuid) ||
	    !dm_task_add_target(dmt, 0, sectors, TARGET_NAME, params) ||
	    (read_only && !dm_task_set_ro(dmt)) ||
	    (udev_sync && !dm_task_set_cookie(dmt, &cookie, 0))) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	ok = dm_task_run(dmt);
	e = ok ? 0 : dm_task_get_errno(dmt);
	if (udev_sync)
		(void)dm_udev_wait(cookie);
	dm_task_destroy(dmt);
	if (ok)
		return 0;
	return e ? -e : -EIO;
}

int dm_remove_dev(const char *name)
{
	struct dm_task *dmt = dm_task_create(DM_DEVICE_REMOVE);
	uint32_t cookie = 0;
	int ok, e;

	last_err[0] = '\0';
	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_name(dmt, name) || !dm_task_retry_remove(dmt) ||
	    (udev_sync && !dm_task_set_cookie(dmt, &cookie, 0))) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	ok = dm_task_run(dmt);
	e = ok ? 0 : dm_task_get_errno(dmt);
	if (udev_sync)
		(void)dm_udev_wait(cookie);
	dm_task_destroy(dmt);
	if (ok)
		return 0;
	return e == EBUSY || strstr(last_err, "busy") ? -EBUSY : -EIO;
}

/*
 * Send the target message @msg to sector 0 of @name.  With @response, a
 * copy of the target's answer goes there (NULL when it sent none).
 * 0 or -errno of the ioctl (-ENXIO: no such device).
 */
int dm_message(const char *name, const char *msg, char **response)
{
	struct dm_task *dmt = dm_task_create(DM_DEVICE_TARGET_MSG);
	const char *resp;
	int e;

	last_err[0] = '\0';
	if (response)
		*response = NULL;
	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_name(dmt, name) || !dm_task_set_sector(dmt, 0) ||
	    !dm_task_set_message(dmt, msg)) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	if (!dm_task_run(dmt)) {
		e = dm_task_get_errno(dmt);
		dm_task_destroy(dmt);
		return e ? -e : -EIO;
	}
	resp = dm_task_get_message_response(dmt);
	if (response && resp)
		*response = xstrdup(resp);
	dm_task_destroy(dmt);
	return 0;
}

void table_free(struct parsed_table *t)
{
	free(t->layers);
	free(t->snapshot);
	memset(t, 0, sizeof(*t));
}

static int parse_majmin(const char *s, unsigned int *ma, unsigned int *mi)
{
	char tail;

	if (sscanf(s, "%u:%u%c", ma, mi, &tail) != 2)
		return -EINVAL;
	return 0;
}

/*
 * <image_dev> [<#opt_args> <opt_arg>...] with
 * <opt_arg> := backing qcow2|raw <dev> | snapshot <id> | cache_size <bytes>
 *            | lazy_refcounts
 * (devices as major:minor, as the kernel prints them).
 */
int table_parse(const char *params, struct parsed_table *t)
{
	char *copy = xstrdup(params), *save = NULL, *tok;
	char **argv;
	unsigned int argc = 0, i, nopt;
	int r = -EINVAL;

	memset(t, 0, sizeof(*t));
	argv = xcalloc(strlen(params) / 2 + 2, sizeof(*argv));
	for (tok = strtok_r(copy, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save))
		argv[argc++] = tok;
	if (argc < 1)
		goto out;
	t->layers = xcalloc(argc, sizeof(*t->layers));
	t->nr_layers = 1;
	t->layers[0].fmt = FMT_QCOW2;
	if (parse_majmin(argv[0], &t->layers[0].major, &t->layers[0].minor))
		goto out;
	if (argc == 1) {
		r = 0;
		goto out;
	}
	nopt = (unsigned int)strtoul(argv[1], NULL, 10);
	if (nopt != argc - 2)
		goto out;
	for (i = 2; i < argc;) {
		if (!strcmp(argv[i], "backing") && i + 2 < argc) {
			struct tbl_layer *l = &t->layers[t->nr_layers++];

			l->fmt = strcmp(argv[i + 1], "raw") ? FMT_QCOW2 : FMT_RAW;
			if (parse_majmin(argv[i + 2], &l->major, &l->minor))
				goto out;
			i += 3;
		} else if (!strcmp(argv[i], "snapshot") && i + 1 < argc) {
			free(t->snapshot);
			t->snapshot = xstrdup(argv[i + 1]);
			i += 2;
		} else if (!strcmp(argv[i], "lazy_refcounts")) {
			t->lazy_refcounts = true;
			i++;
		} else if (!strcmp(argv[i], "cache_size") && i + 1 < argc) {
			t->cache_size = strtoull(argv[i + 1], NULL, 10);
			i += 2;
		} else {
			i++;	/* an argument of a later version: ignore */
		}
	}
	r = 0;
out:
	free(argv);
	free(copy);
	if (r)
		table_free(t);
	return r;
}
