// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup: /run/qcow2setup/<dm uuid>, the image paths as they were given
 * and resolved at open time (the kernel only knows devices; loop devices
 * know their file's canonical path).  Keyed by the dm UUID so that a rename
 * of the device does not lose it.  Optional: everything else is recovered
 * from the kernel when it is missing.
 *
 * Format, one record per line, fields separated by single spaces, paths
 * %XX-escaped:
 *
 *   qcow2setup-state 1
 *   name NAME
 *   mode ro|rw
 *   grown ORIG_SIZE DEV INO        (layer 0 file extended by open)
 *   layer IDX qcow2|raw MAJOR:MINOR attached|device PATH
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "qcow2setup.h"

static char *state_path(const char *uuid)
{
	return xasprintf("%s/%s", STATE_DIR, uuid);
}

int state_write(const char *uuid, const char *name, const struct chain *c, bool writable)
{
	char *path = state_path(uuid), *tmp = xasprintf("%s.tmp", path);
	char cwd[4096];
	bool getcwd_ok;
	unsigned int i;
	FILE *f;
	int fd;

	if (mkdir(STATE_DIR, 0755) < 0 && errno != EEXIST)
		goto err;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		goto err;
	f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		goto err;
	}
	fprintf(f, "qcow2setup-state 1\nname %s\nmode %s\n", name, writable ? "rw" : "ro");
	if (c->n && c->layers[0].grown)
		fprintf(f, "grown %llu %llu %llu\n",
			(unsigned long long)c->layers[0].orig_size,
			(unsigned long long)c->layers[0].st_dev,
			(unsigned long long)c->layers[0].st_ino);
	getcwd_ok = getcwd(cwd, sizeof(cwd)) != NULL;
	for (i = 0; i < c->n; i++) {
		const struct layer *l = &c->layers[i];
		/* Relative paths are recorded absolute: status may run elsewhere. */
		char *abs = l->path[0] == '/' || !getcwd_ok ? xstrdup(l->path) :
			    xasprintf("%s/%s", strcmp(cwd, "/") ? cwd : "", l->path);
		char *esc = path_escape(abs);

		free(abs);
		fprintf(f, "layer %u %s %u:%u %s %s\n", i, fmt_name(l->fmt),
			major(l->dev), minor(l->dev),
			l->loop_nr >= 0 ? "attached" : "device", esc);
		free(esc);
	}
	if (fclose(f) != 0 || rename(tmp, path) < 0) {
		unlink(tmp);
		goto err;
	}
	free(tmp);
	free(path);
	return 0;
err:
	msg_warn("cannot write %s: %s (status shows the kernel's file names)",
		 path, strerror(errno));
	free(tmp);
	free(path);
	return -1;
}

void state_free(struct state *s)
{
	unsigned int i;

	for (i = 0; i < s->nr; i++)
		free(s->layers[i].path);
	free(s->layers);
	free(s->name);
	memset(s, 0, sizeof(*s));
}

int state_read(const char *uuid, struct state *s)
{
	char *path = state_path(uuid), *line = NULL;
	size_t cap = 0;
	ssize_t len;
	FILE *f;
	int r = -EINVAL;

	memset(s, 0, sizeof(*s));
	f = fopen(path, "re");
	free(path);
	if (!f)
		return -errno;
	len = getline(&line, &cap, f);
	if (len < 0 || strcmp(line, "qcow2setup-state 1\n"))
		goto out;
	while ((len = getline(&line, &cap, f)) > 0) {
		char fmt[8], kind[16];
		unsigned int idx, ma, mi;
		int off = -1;

		if (line[len - 1] == '\n')
			line[--len] = '\0';
		if (!strncmp(line, "name ", 5)) {
			free(s->name);
			s->name = xstrdup(line + 5);
		} else if (!strcmp(line, "mode rw")) {
			s->writable = true;
		} else if (!strncmp(line, "grown ", 6)) {
			unsigned long long sz, dv, in;

			if (sscanf(line + 6, "%llu %llu %llu", &sz, &dv, &in) == 3) {
				s->grown = true;
				s->orig_size = sz;
				s->file_dev = (dev_t)dv;
				s->file_ino = (ino_t)in;
			}
		} else if (sscanf(line, "layer %u %7s %u:%u %15s %n", &idx, fmt,
				  &ma, &mi, kind, &off) == 5 && off > 0) {
			struct state_layer *sl;

			if (idx != s->nr || idx > MAX_BACKING)
				goto out;
			sl = realloc(s->layers, (s->nr + 1) * sizeof(*sl));
			if (!sl)
				goto out;
			s->layers = sl;
			sl = &s->layers[s->nr++];
			sl->idx = idx;
			sl->fmt = strcmp(fmt, "raw") ? FMT_QCOW2 : FMT_RAW;
			sl->major = ma;
			sl->minor = mi;
			sl->attached = !strcmp(kind, "attached");
			sl->path = path_unescape(line + off);
		}
	}
	r = 0;
out:
	free(line);
	fclose(f);
	if (r)
		state_free(s);
	return r;
}

void state_remove(const char *uuid)
{
	char *path = state_path(uuid);

	if (unlink(path) < 0 && errno != ENOENT)
		msg_warn("cannot remove %s: %s", path, strerror(errno));
	free(path);
}
