// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2setup: a minimal streaming JSON writer (stdout, two-space indent).
 *
 * Strings are written as UTF-8; bytes that are not valid UTF-8 (file names
 * are arbitrary bytes) are written as \u00XX so that the output always parses.
 */
#include <stdio.h>
#include <string.h>

#include "qcow2setup.h"

static void indent(const struct json *j)
{
	int i;

	for (i = 0; i < j->depth; i++)
		fputs("  ", stdout);
}

/* Length of a valid UTF-8 sequence at @s, or 0. */
static int utf8_len(const unsigned char *s)
{
	int n, i;
	unsigned int cp;

	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xe0) == 0xc0) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		n = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
	    (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

static void put_string(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	putchar('"');
	while (*s) {
		int n;

		switch (*s) {
		case '"':
			fputs("\\\"", stdout);
			s++;
			continue;
		case '\\':
			fputs("\\\\", stdout);
			s++;
			continue;
		case '\n':
			fputs("\\n", stdout);
			s++;
			continue;
		case '\t':
			fputs("\\t", stdout);
			s++;
			continue;
		case '\r':
			fputs("\\r", stdout);
			s++;
			continue;
		}
		if (*s < 0x20 || *s == 0x7f) {
			printf("\\u%04x", *s);
			s++;
			continue;
		}
		n = utf8_len(s);
		if (!n) {
			printf("\\u%04x", *s);
			s++;
			continue;
		}
		fwrite(s, 1, (size_t)n, stdout);
		s += n;
	}
	putchar('"');
}

/* Separator, newline, indentation and "key": for the next value. */
static void prefix(struct json *j, const char *key)
{
	if (j->depth > 0) {
		if (j->need_comma[j->depth])
			putchar(',');
		putchar('\n');
		indent(j);
		j->need_comma[j->depth] = true;
	}
	if (key) {
		put_string(key);
		fputs(": ", stdout);
	}
}

static void open_container(struct json *j, const char *key, char ch)
{
	prefix(j, key);
	putchar(ch);
	if (j->depth < 31)
		j->depth++;
	j->need_comma[j->depth] = false;
}

static void close_container(struct json *j, char ch)
{
	bool had = j->need_comma[j->depth];

	j->depth--;
	if (had) {
		putchar('\n');
		indent(j);
	}
	putchar(ch);
}

void json_begin_obj(struct json *j, const char *key)
{
	open_container(j, key, '{');
}

void json_end_obj(struct json *j)
{
	close_container(j, '}');
}

void json_begin_arr(struct json *j, const char *key)
{
	open_container(j, key, '[');
}

void json_end_arr(struct json *j)
{
	close_container(j, ']');
}

void json_str(struct json *j, const char *key, const char *val)
{
	prefix(j, key);
	if (val)
		put_string(val);
	else
		fputs("null", stdout);
}

void json_u64(struct json *j, const char *key, uint64_t val)
{
	prefix(j, key);
	printf("%llu", (unsigned long long)val);
}

void json_bool(struct json *j, const char *key, bool val)
{
	prefix(j, key);
	fputs(val ? "true" : "false", stdout);
}

void json_null(struct json *j, const char *key)
{
	prefix(j, key);
	fputs("null", stdout);
}

void json_finish(struct json *j)
{
	(void)j;
	putchar('\n');
	fflush(stdout);
}
