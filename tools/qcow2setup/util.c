// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup: messages, allocation, I/O and string helpers.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2setup.h"

int verbose;
char last_error[1024];

static void vmsg(const char *prefix, const char *fmt, va_list ap)
{
	fprintf(stderr, "qcow2setup: %s", prefix);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void msg_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg("error: ", fmt, ap);
	va_end(ap);
}

void msg_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg("warning: ", fmt, ap);
	va_end(ap);
}

void msg_info(const char *fmt, ...)
{
	va_list ap;

	if (!verbose)
		return;
	va_start(ap, fmt);
	vmsg("", fmt, ap);
	va_end(ap);
}

int fail(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	fprintf(stderr, "qcow2setup: error: %s\n", last_error);
	return code;
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		msg_err("out of memory");
		exit(EXIT_IMAGE);
	}
	return p;
}

void *xcalloc(size_t n, size_t m)
{
	void *p = calloc(n ? n : 1, m ? m : 1);

	if (!p) {
		msg_err("out of memory");
		exit(EXIT_IMAGE);
	}
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p) {
		msg_err("out of memory");
		exit(EXIT_IMAGE);
	}
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0) {
		msg_err("out of memory");
		exit(EXIT_IMAGE);
	}
	va_end(ap);
	return p;
}

/* Exit code for a failed open() of an image or backing file. */
int errno_exit_code(int err)
{
	switch (err) {
	case ENOENT:
	case ENOTDIR:
	case ENXIO:
	case ENODEV:
		return EXIT_NOTFOUND;
	case EBUSY:
	case ETXTBSY:
		return EXIT_BUSY;
	default:
		return EXIT_IMAGE;
	}
}

/* pread until @len bytes or end of file; *got tells how many. */
int read_full(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = pread(fd, (char *)buf + done, len - done,
				  (off_t)(off + done));

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		done += (size_t)r;
	}
	*got = done;
	return 0;
}

/* Contents of a sysfs attribute without the trailing newline, or NULL. */
char *read_sysfs(const char *fmt, ...)
{
	char path[512], buf[4096];
	va_list ap;
	ssize_t r;
	int fd;

	va_start(ap, fmt);
	vsnprintf(path, sizeof(path), fmt, ap);
	va_end(ap);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (r < 0)
		return NULL;
	buf[r] = '\0';
	while (r > 0 && buf[r - 1] == '\n')
		buf[--r] = '\0';
	return xstrdup(buf);
}

/* "/dev/NAME" of a block device number (from its uevent), or NULL. */
char *devnode_of(unsigned int major, unsigned int minor)
{
	char *ue = read_sysfs("/sys/dev/block/%u:%u/uevent", major, minor);
	char *p, *line, *res = NULL;

	if (!ue)
		return NULL;
	for (line = strtok_r(ue, "\n", &p); line; line = strtok_r(NULL, "\n", &p)) {
		if (!strncmp(line, "DEVNAME=", 8)) {
			res = xasprintf("/dev/%s", line + 8);
			break;
		}
	}
	free(ue);
	return res;
}

const char *human_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	unsigned int u = 0;
	uint64_t v = bytes;

	while (v >= 1024 && !(v & 1023) && u < 6) {
		v >>= 10;
		u++;
	}
	if (u || bytes < 1024) {
		snprintf(buf, len, "%llu %s", (unsigned long long)v, units[u]);
	} else {
		double d = (double)bytes;

		while (d >= 1024 && u < 6) {
			d /= 1024;
			u++;
		}
		snprintf(buf, len, "%.2f %s", d, units[u]);
	}
	return buf;
}

/* "1048576", "64k", "8M", "1GiB": binary units. */
int parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned int shift = 0;
	char *end;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	switch (toupper((unsigned char)*end)) {
	case '\0':
		break;
	case 'K':
		shift = 10;
		break;
	case 'M':
		shift = 20;
		break;
	case 'G':
		shift = 30;
		break;
	case 'T':
		shift = 40;
		break;
	case 'B':
		if (end[1])
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if (shift) {
		end++;
		if (!strcasecmp(end, "iB") || !strcasecmp(end, "B"))
			end += strlen(end);
		if (*end)
			return -EINVAL;
		if (v > (~0ULL >> shift))
			return -ERANGE;
		v <<= shift;
	}
	*out = v;
	return 0;
}

/* Escape control characters, space and '%' as %XX (state file fields). */
char *path_escape(const char *s)
{
	char *out = xmalloc(strlen(s) * 3 + 1), *o = out;

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch <= ' ' || ch == '%' || ch == 0x7f)
			o += sprintf(o, "%%%02X", ch);
		else
			*o++ = (char)ch;
	}
	*o = '\0';
	return out;
}

char *path_unescape(const char *s)
{
	char *out = xmalloc(strlen(s) + 1), *o = out;

	for (; *s; s++) {
		if (s[0] == '%' && isxdigit((unsigned char)s[1]) &&
		    isxdigit((unsigned char)s[2])) {
			char hex[3] = { s[1], s[2], 0 };

			*o++ = (char)strtoul(hex, NULL, 16);
			s += 2;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
	return out;
}
