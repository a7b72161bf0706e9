// SPDX-License-Identifier: GPL-2.0
/*
 * replay-log - replay a dm-log-writes log onto a device or a file.
 *
 * The log (written by the kernel's log-writes target) is a superblock
 * followed by entries in completion order: writes with their data,
 * discards, flushes, FUA writes and marks.  This tool applies the entries
 * in order to a replay device that holds what the logged device held when
 * logging started, so that the device can be inspected at any point: after
 * entry N, at a mark, or at every FLUSH/FUA point in turn with a check
 * command run at each one.  With --torn, a check point that is a flush also
 * gets crash states in which only the last writes before it reached the
 * device (see check_torn()).  See usage() and README in this directory.
 *
 * Entries are numbered from 0 in log order.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define LW_MAGIC	0x6a736677736872ULL
#define LW_VERSION	1ULL

#define LW_FLUSH	(1U << 0)
#define LW_FUA		(1U << 1)
#define LW_DISCARD	(1U << 2)
#define LW_MARK		(1U << 3)
#define LW_METADATA	(1U << 4)
#define LW_KNOWN_FLAGS	(LW_FLUSH | LW_FUA | LW_DISCARD | LW_MARK | LW_METADATA)

/* Size of the four little-endian fields of an entry header. */
#define LW_ENTRY_FIELDS	32
#define LW_MIN_SECTOR	512
#define LW_MAX_SECTOR	65536

#define IO_CHUNK	(1U << 20)

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

/* Exit statuses */
#define EXIT_CHECK	1	/* a check command failed */
#define EXIT_USAGE	2
#define EXIT_LOG	3	/* malformed log or I/O error */

/* What a check point is */
#define CHECK_FLUSH	(1U << 0)
#define CHECK_FUA	(1U << 1)
#define CHECK_MARK	(1U << 2)
#define CHECK_DISCARD	(1U << 3)

enum discard_mode {
	DISCARD_PUNCH,
	DISCARD_ZERO,
	DISCARD_SKIP,
};

struct entry {
	uint64_t pos;		/* byte offset of the header in the log */
	uint64_t sector;	/* in units of the log's sector size */
	uint64_t nr_sectors;
	uint64_t flags;
	char *mark;		/* mark text, NULL if not a mark */
};

struct opts {
	const char *log;
	const char *replay;
	const char *check_cmd;
	const char *start_mark;
	const char *end_mark;
	uint64_t start_entry;
	uint64_t end_entry;	/* inclusive; UINT64_MAX: none */
	uint64_t limit;		/* entries to apply; UINT64_MAX: no limit */
	uint64_t check_every;	/* check every N applied entries (0: off) */
	uint64_t max_checks;	/* 0: no cap */
	uint64_t torn;		/* torn states per flush point (0: none) */
	unsigned int check_kinds;
	enum discard_mode discard;
	bool list;
	bool keep_going;
	int verbose;
};

/* A plain write applied since the last entry of another kind. */
struct pre {
	uint64_t idx;		/* its entry */
	char *data;		/* what its range held before it was applied */
};

struct run {
	struct pre *w;
	size_t n, cap;
};

struct log {
	int fd;
	uint32_t sectorsize;
	uint64_t nr_entries;
	uint64_t size;
	struct entry *entries;
};

static const char *prog = "replay-log";

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s --log LOG [--replay DEV] [options]\n"
		"\n"
		"Replay a dm-log-writes log onto DEV (a block device or a file that\n"
		"holds what the logged device held when logging started).\n"
		"Entries are numbered from 0.\n"
		"\n"
		"  --log LOG            the log device or file\n"
		"  --replay DEV         the device or file to write to\n"
		"  --list               print the entries (without --replay: all of\n"
		"                       them, nothing is replayed)\n"
		"  --start-entry N      do not apply entries before entry N\n"
		"  --start-mark NAME    do not apply entries up to mark NAME\n"
		"  --end-entry N        stop after entry N\n"
		"  --end-mark NAME      stop at mark NAME\n"
		"  --limit N            apply at most N entries\n"
		"  --check-cmd CMD      run 'sh -c CMD' at every check point, after\n"
		"                       fsync of DEV; a non-zero exit stops the replay\n"
		"  --check WHAT         check points: a comma list of flush, fua,\n"
		"                       mark, discard (default flush,fua), or a\n"
		"                       number N: after every N applied entries\n"
		"  --max-checks N       check at most N of the points, spread evenly\n"
		"                       (the last point is always checked)\n"
		"  --keep-going         go on after a failed check\n"
		"  --torn N             at a check point that is a flush, before it,\n"
		"                       also check up to N states in which only the\n"
		"                       last 1, 2, 4, ... of the plain writes logged\n"
		"                       right before it reached the device (a crash\n"
		"                       that lost the earlier ones); the device is\n"
		"                       put back before the replay goes on\n"
		"  --discard MODE       punch (default: punch a hole, or write zeros\n"
		"                       where that is not supported), zero (write\n"
		"                       zeros) or skip\n"
		"  --no-discard         same as --discard skip\n"
		"  -v, --verbose        print every applied entry (twice: more)\n"
		"  -h, --help\n"
		"\n"
		"The check command gets REPLAY_ENTRY (entry number), REPLAY_FLAGS\n"
		"(e.g. WRITE|FLUSH|FUA), REPLAY_MARK (the last mark at or before the\n"
		"entry, empty if none), REPLAY_MARK_ENTRY (its entry number, -1 if\n"
		"none), REPLAY_CHECK and REPLAY_CHECKS (number of this check and of\n"
		"all planned checks), REPLAY_POINTS (number of candidate points),\n"
		"REPLAY_DEV and REPLAY_LOG in its environment.  In a torn state\n"
		"REPLAY_TORN is \"S N\" (the last S of a run of N writes kept) and\n"
		"REPLAY_TORN_FIRST the first entry kept; REPLAY_ENTRY is the entry\n"
		"before the flush.  Elsewhere REPLAY_TORN is empty.\n"
		"\n"
		"Exit status: 0 done, 1 a check failed, 2 bad arguments, 3 malformed\n"
		"log or I/O error.\n", prog);
}

/* Error messages: "replay-log: ..." on stderr. */
#define errmsg(fmt, ...) \
	fprintf(stderr, "%s: " fmt "\n", prog, ##__VA_ARGS__)

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;
	unsigned long long x;

	if (!s || !*s || *s == '-')
		return -1;
	errno = 0;
	x = strtoull(s, &end, 0);
	if (errno || *end)
		return -1;
	*v = x;
	return 0;
}

static int parse_check(const char *s, struct opts *o)
{
	char *copy, *tok, *save = NULL;
	int ret = 0;

	if (parse_u64(s, &o->check_every) == 0) {
		if (!o->check_every)
			return -1;
		o->check_kinds = 0;
		return 0;
	}
	o->check_every = 0;
	o->check_kinds = 0;
	copy = strdup(s);
	if (!copy)
		return -1;
	for (tok = strtok_r(copy, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		if (!strcmp(tok, "flush"))
			o->check_kinds |= CHECK_FLUSH;
		else if (!strcmp(tok, "fua"))
			o->check_kinds |= CHECK_FUA;
		else if (!strcmp(tok, "mark"))
			o->check_kinds |= CHECK_MARK;
		else if (!strcmp(tok, "discard"))
			o->check_kinds |= CHECK_DISCARD;
		else
			ret = -1;
	}
	free(copy);
	if (!o->check_kinds)
		ret = -1;
	return ret;
}

static void flag_names(uint64_t flags, uint64_t nr_sectors, char *buf,
		       size_t len)
{
	static const struct {
		uint64_t bit;
		const char *name;
	} names[] = {
		{ LW_FLUSH, "FLUSH" },
		{ LW_FUA, "FUA" },
		{ LW_DISCARD, "DISCARD" },
		{ LW_MARK, "MARK" },
		{ LW_METADATA, "META" },
	};
	size_t i;

	if ((flags & (LW_DISCARD | LW_MARK)) || !nr_sectors)
		buf[0] = '\0';
	else
		snprintf(buf, len, "WRITE");
	for (i = 0; i < ARRAY_SIZE(names); i++) {
		if (!(flags & names[i].bit))
			continue;
		if (buf[0])
			strncat(buf, "|", len - strlen(buf) - 1);
		strncat(buf, names[i].name, len - strlen(buf) - 1);
	}
}

/* @short_zero: a regular file reads as zeros past its end */
static int __read_full(int fd, void *buf, size_t len, uint64_t off,
		       bool short_zero)
{
	char *p = buf;

	while (len) {
		ssize_t n = pread(fd, p, len, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0 && short_zero) {
			memset(p, 0, len);
			return 0;
		}
		if (n == 0)
			return -EIO;
		p += n;
		len -= n;
		off += n;
	}
	return 0;
}

static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
	return __read_full(fd, buf, len, off, false);
}

static int write_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		p += n;
		len -= n;
		off += n;
	}
	return 0;
}

static int fd_size(int fd, uint64_t *size, bool *blk)
{
	struct stat st;

	if (fstat(fd, &st))
		return -errno;
	*blk = S_ISBLK(st.st_mode);
	if (*blk) {
		if (ioctl(fd, BLKGETSIZE64, size))
			return -errno;
	} else {
		*size = st.st_size;
	}
	return 0;
}

static uint64_t get_le64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

static uint32_t get_le32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

/*
 * Read the superblock and every entry header (nr_entries of the superblock;
 * entries after it may be on the log but were never counted).  Validates
 * the structure of the whole log before anything is replayed.
 */
static int load_log(struct log *lg, const char *path)
{
	unsigned char *blk;
	uint64_t pos, i;
	bool isblk;
	int ret;

	lg->fd = open(path, O_RDONLY);
	if (lg->fd < 0) {
		errmsg("cannot open log %s: %s", path, strerror(errno));
		return -1;
	}
	ret = fd_size(lg->fd, &lg->size, &isblk);
	if (ret) {
		errmsg("cannot get the size of %s: %s", path, strerror(-ret));
		return -1;
	}
	blk = calloc(1, LW_MAX_SECTOR);
	if (!blk)
		return -1;
	if (lg->size < LW_MIN_SECTOR ||
	    read_full(lg->fd, blk, LW_MIN_SECTOR, 0)) {
		errmsg("%s: cannot read the superblock", path);
		goto err;
	}
	if (get_le64(blk) != LW_MAGIC) {
		errmsg("%s: bad magic 0x%" PRIx64 ": not a log-writes log",
		       path, get_le64(blk));
		goto err;
	}
	if (get_le64(blk + 8) != LW_VERSION) {
		errmsg("%s: unsupported log version %" PRIu64, path,
		       get_le64(blk + 8));
		goto err;
	}
	lg->nr_entries = get_le64(blk + 16);
	lg->sectorsize = get_le32(blk + 24);
	if (lg->sectorsize < LW_MIN_SECTOR || lg->sectorsize > LW_MAX_SECTOR ||
	    (lg->sectorsize & (lg->sectorsize - 1))) {
		errmsg("%s: bad sector size %u", path, lg->sectorsize);
		goto err;
	}
	/* Every entry takes at least one block: bound the allocation. */
	if (lg->nr_entries > lg->size / lg->sectorsize) {
		errmsg("%s: %" PRIu64 " entries cannot fit in a log of %" PRIu64 " bytes",
		       path, lg->nr_entries, lg->size);
		goto err;
	}
	lg->entries = calloc(lg->nr_entries ? lg->nr_entries : 1,
			     sizeof(*lg->entries));
	if (!lg->entries) {
		errmsg("out of memory for %" PRIu64 " entries", lg->nr_entries);
		goto err;
	}

	pos = lg->sectorsize;
	for (i = 0; i < lg->nr_entries; i++) {
		struct entry *e = &lg->entries[i];
		uint64_t data_len, payload = 0;

		if (pos + lg->sectorsize > lg->size ||
		    read_full(lg->fd, blk, lg->sectorsize, pos)) {
			errmsg("%s: entry %" PRIu64 " at byte %" PRIu64 " is past the end of the log (%" PRIu64 " bytes)",
			       path, i, pos, lg->size);
			goto err;
		}
		e->pos = pos;
		e->sector = get_le64(blk);
		e->nr_sectors = get_le64(blk + 8);
		e->flags = get_le64(blk + 16);
		data_len = get_le64(blk + 24);
		if (e->flags & ~(uint64_t)LW_KNOWN_FLAGS) {
			errmsg("%s: entry %" PRIu64 ": unknown flags 0x%" PRIx64,
			       path, i, e->flags);
			goto err;
		}
		if (!e->flags && !e->nr_sectors) {
			errmsg("%s: entry %" PRIu64 " at byte %" PRIu64 ": no flags and no sectors (not an entry)",
			       path, i, pos);
			goto err;
		}
		if (e->flags & LW_MARK) {
			if (e->nr_sectors ||
			    data_len > lg->sectorsize - LW_ENTRY_FIELDS - 1 ||
			    blk[LW_ENTRY_FIELDS + data_len]) {
				errmsg("%s: entry %" PRIu64 ": malformed mark", path, i);
				goto err;
			}
			e->mark = strndup((char *)blk + LW_ENTRY_FIELDS, data_len);
			if (!e->mark)
				goto err;
		} else {
			if (data_len || blk[LW_ENTRY_FIELDS]) {
				errmsg("%s: entry %" PRIu64 ": inline data or a non-zero header pad (not supported)",
				       path, i);
				goto err;
			}
			if (e->nr_sectors > (UINT64_MAX / lg->sectorsize) ||
			    e->sector > UINT64_MAX / lg->sectorsize - e->nr_sectors) {
				errmsg("%s: entry %" PRIu64 ": range overflows", path, i);
				goto err;
			}
			if (!(e->flags & LW_DISCARD))
				payload = e->nr_sectors * lg->sectorsize;
		}
		pos += lg->sectorsize;
		if (payload > lg->size || pos > lg->size - payload) {
			errmsg("%s: entry %" PRIu64 ": data past the end of the log", path, i);
			goto err;
		}
		pos += payload;
	}
	free(blk);
	return 0;
err:
	free(blk);
	return -1;
}

static const char *entry_desc(const struct log *lg, uint64_t i, char *buf,
			      size_t len)
{
	const struct entry *e = &lg->entries[i];
	char fl[64];

	flag_names(e->flags, e->nr_sectors, fl, sizeof(fl));
	if (e->mark)
		snprintf(buf, len, "entry %" PRIu64 " @%" PRIu64 ": %s \"%s\"",
			 i, e->pos, fl, e->mark);
	else if (!e->nr_sectors)
		snprintf(buf, len, "entry %" PRIu64 " @%" PRIu64 ": %s", i,
			 e->pos, fl);
	else
		snprintf(buf, len, "entry %" PRIu64 " @%" PRIu64 ": %s sector %" PRIu64 " +%" PRIu64 " (bytes %" PRIu64 "+%" PRIu64 ")",
			 i, e->pos, fl, e->sector, e->nr_sectors,
			 e->sector * lg->sectorsize,
			 e->nr_sectors * lg->sectorsize);
	return buf;
}

static int zero_range(int fd, bool blk, uint64_t off, uint64_t len)
{
	static char zeros[IO_CHUNK];
	int ret;

	if (blk) {
		uint64_t r[2] = { off, len };

		if (!ioctl(fd, BLKZEROOUT, r))
			return 0;
	}
	while (len) {
		size_t n = len < IO_CHUNK ? len : IO_CHUNK;

		ret = write_full(fd, zeros, n, off);
		if (ret)
			return ret;
		off += n;
		len -= n;
	}
	return 0;
}

static int do_discard(int fd, bool blk, enum discard_mode mode, uint64_t off,
		      uint64_t len)
{
	if (mode == DISCARD_SKIP)
		return 0;
	if (mode == DISCARD_PUNCH &&
	    !fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len))
		return 0;
	return zero_range(fd, blk, off, len);
}

static int copy_data(const struct log *lg, const struct entry *e, int out,
		     char *buf)
{
	uint64_t left = e->nr_sectors * lg->sectorsize;
	uint64_t src = e->pos + lg->sectorsize;
	uint64_t dst = e->sector * lg->sectorsize;
	int ret;

	while (left) {
		size_t n = left < IO_CHUNK ? left : IO_CHUNK;

		ret = read_full(lg->fd, buf, n, src);
		if (ret) {
			errmsg("reading the log at %" PRIu64 ": %s", src,
			       strerror(-ret));
			return ret;
		}
		ret = write_full(out, buf, n, dst);
		if (ret) {
			errmsg("writing the replay device at %" PRIu64 ": %s",
			       dst, strerror(-ret));
			return ret;
		}
		src += n;
		dst += n;
		left -= n;
	}
	return 0;
}

/* A write that becomes durable only at a later flush. */
static bool is_plain(const struct entry *e)
{
	return e->nr_sectors &&
	       !(e->flags & (LW_FLUSH | LW_FUA | LW_DISCARD | LW_MARK));
}

static bool is_point(const struct opts *o, const struct entry *e,
		     uint64_t applied)
{
	if (o->check_every)
		return applied % o->check_every == 0;
	if ((o->check_kinds & CHECK_FLUSH) && (e->flags & LW_FLUSH))
		return true;
	if ((o->check_kinds & CHECK_FUA) && (e->flags & LW_FUA))
		return true;
	if ((o->check_kinds & CHECK_MARK) && (e->flags & LW_MARK))
		return true;
	if ((o->check_kinds & CHECK_DISCARD) && (e->flags & LW_DISCARD))
		return true;
	return false;
}

static void setenv_u64(const char *name, uint64_t v)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	setenv(name, buf, 1);
}

/* @torn: "S N" in a torn state (see check_torn()), else NULL */
static int run_check(const struct opts *o, const struct log *lg, uint64_t i,
		     const char *mark, int64_t mark_entry, uint64_t check,
		     uint64_t checks, uint64_t points, const char *torn,
		     uint64_t torn_first)
{
	const struct entry *e = &lg->entries[i];
	char fl[64], buf[32];
	pid_t pid;
	int status;

	flag_names(e->flags, e->nr_sectors, fl, sizeof(fl));
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		errmsg("fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		setenv_u64("REPLAY_ENTRY", i);
		setenv("REPLAY_FLAGS", fl, 1);
		setenv("REPLAY_MARK", mark ? mark : "", 1);
		snprintf(buf, sizeof(buf), "%" PRId64, mark_entry);
		setenv("REPLAY_MARK_ENTRY", buf, 1);
		setenv_u64("REPLAY_CHECK", check);
		setenv_u64("REPLAY_CHECKS", checks);
		setenv_u64("REPLAY_POINTS", points);
		setenv("REPLAY_DEV", o->replay, 1);
		setenv("REPLAY_LOG", o->log, 1);
		setenv("REPLAY_TORN", torn ? torn : "", 1);
		if (torn)
			setenv_u64("REPLAY_TORN_FIRST", torn_first);
		else
			unsetenv("REPLAY_TORN_FIRST");
		execl("/bin/sh", "sh", "-c", o->check_cmd, (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			errmsg("waitpid: %s", strerror(errno));
			return -1;
		}
	}
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* Find the first mark called @name at or after entry @from. */
static int find_mark(const struct log *lg, const char *name, uint64_t from,
		     uint64_t *idx)
{
	uint64_t i;

	for (i = from; i < lg->nr_entries; i++) {
		if (lg->entries[i].mark && !strcmp(lg->entries[i].mark, name)) {
			*idx = i;
			return 0;
		}
	}
	return -1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	enum {
		OPT_LOG = 256, OPT_REPLAY, OPT_LIST, OPT_START_ENTRY,
		OPT_START_MARK, OPT_END_ENTRY, OPT_END_MARK, OPT_LIMIT,
		OPT_CHECK_CMD, OPT_CHECK, OPT_MAX_CHECKS, OPT_KEEP_GOING,
		OPT_DISCARD, OPT_NO_DISCARD, OPT_TORN,
	};
	static const struct option longopts[] = {
		{ "log", required_argument, NULL, OPT_LOG },
		{ "replay", required_argument, NULL, OPT_REPLAY },
		{ "list", no_argument, NULL, OPT_LIST },
		{ "start-entry", required_argument, NULL, OPT_START_ENTRY },
		{ "start-mark", required_argument, NULL, OPT_START_MARK },
		{ "end-entry", required_argument, NULL, OPT_END_ENTRY },
		{ "end-mark", required_argument, NULL, OPT_END_MARK },
		{ "limit", required_argument, NULL, OPT_LIMIT },
		{ "check-cmd", required_argument, NULL, OPT_CHECK_CMD },
		{ "fsck", required_argument, NULL, OPT_CHECK_CMD },
		{ "check", required_argument, NULL, OPT_CHECK },
		{ "max-checks", required_argument, NULL, OPT_MAX_CHECKS },
		{ "keep-going", no_argument, NULL, OPT_KEEP_GOING },
		{ "discard", required_argument, NULL, OPT_DISCARD },
		{ "no-discard", no_argument, NULL, OPT_NO_DISCARD },
		{ "torn", required_argument, NULL, OPT_TORN },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->end_entry = UINT64_MAX;
	o->limit = UINT64_MAX;
	o->check_kinds = CHECK_FLUSH | CHECK_FUA;
	o->discard = DISCARD_PUNCH;

	while ((c = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_LOG:
			o->log = optarg;
			break;
		case OPT_REPLAY:
			o->replay = optarg;
			break;
		case OPT_LIST:
			o->list = true;
			break;
		case OPT_START_ENTRY:
			if (parse_u64(optarg, &o->start_entry))
				goto bad;
			break;
		case OPT_START_MARK:
			o->start_mark = optarg;
			break;
		case OPT_END_ENTRY:
			if (parse_u64(optarg, &o->end_entry))
				goto bad;
			break;
		case OPT_END_MARK:
			o->end_mark = optarg;
			break;
		case OPT_LIMIT:
			if (parse_u64(optarg, &o->limit))
				goto bad;
			break;
		case OPT_CHECK_CMD:
			o->check_cmd = optarg;
			break;
		case OPT_CHECK:
			if (parse_check(optarg, o))
				goto bad;
			break;
		case OPT_MAX_CHECKS:
			if (parse_u64(optarg, &o->max_checks) || !o->max_checks)
				goto bad;
			break;
		case OPT_KEEP_GOING:
			o->keep_going = true;
			break;
		case OPT_DISCARD:
			if (!strcmp(optarg, "punch"))
				o->discard = DISCARD_PUNCH;
			else if (!strcmp(optarg, "zero"))
				o->discard = DISCARD_ZERO;
			else if (!strcmp(optarg, "skip"))
				o->discard = DISCARD_SKIP;
			else
				goto bad;
			break;
		case OPT_NO_DISCARD:
			o->discard = DISCARD_SKIP;
			break;
		case OPT_TORN:
			if (parse_u64(optarg, &o->torn) || o->torn > 64)
				goto bad;
			break;
		case 'v':
			o->verbose++;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc) {
		errmsg("unexpected argument '%s'", argv[optind]);
		return -1;
	}
	if (!o->log) {
		errmsg("--log is required");
		return -1;
	}
	if (!o->replay && !o->list) {
		errmsg("--replay is required (or --list)");
		return -1;
	}
	if (o->check_cmd && !o->replay) {
		errmsg("--check-cmd needs --replay");
		return -1;
	}
	return 0;
bad:
	errmsg("bad value '%s' for an option", optarg);
	return -1;
}

/* The last mark at or before entry @i, and its number (-1 if none). */
static const char *last_mark(const struct log *lg, uint64_t i, int64_t *at)
{
	for (;;) {
		if (lg->entries[i].mark) {
			*at = (int64_t)i;
			return lg->entries[i].mark;
		}
		if (!i)
			break;
		i--;
	}
	*at = -1;
	return NULL;
}

static void run_reset(struct run *run)
{
	while (run->n)
		free(run->w[--run->n].data);
}

/* Before plain write @i is applied: keep what its range holds. */
static int run_push(struct run *run, const struct log *lg, uint64_t i, int out)
{
	const struct entry *e = &lg->entries[i];
	size_t len = e->nr_sectors * lg->sectorsize;
	char *data;
	int ret;

	if (run->n == run->cap) {
		size_t cap = run->cap ? 2 * run->cap : 16;
		struct pre *w = realloc(run->w, cap * sizeof(*w));

		if (!w)
			return -ENOMEM;
		run->w = w;
		run->cap = cap;
	}
	data = malloc(len);
	if (!data)
		return -ENOMEM;
	ret = __read_full(out, data, len, e->sector * lg->sectorsize, true);
	if (ret) {
		free(data);
		return ret;
	}
	run->w[run->n].idx = i;
	run->w[run->n].data = data;
	run->n++;
	return 0;
}

/*
 * Undo the whole run: what each write's range held before it, the last
 * write first, leaves every byte as it was before the first write that
 * covers it, whatever of the run was applied since.
 */
static int run_undo(const struct run *run, const struct log *lg, int out)
{
	size_t k;
	int ret;

	for (k = run->n; k-- > 0;) {
		const struct entry *e = &lg->entries[run->w[k].idx];

		ret = write_full(out, run->w[k].data, e->nr_sectors * lg->sectorsize,
				 e->sector * lg->sectorsize);
		if (ret) {
			errmsg("restoring the replay device at %" PRIu64 ": %s",
			       e->sector * lg->sectorsize, strerror(-ret));
			return ret;
		}
	}
	return 0;
}

/* Apply the run's writes from the @from-th on. */
static int run_apply(const struct run *run, const struct log *lg, size_t from,
		     int out, char *buf)
{
	for (; from < run->n; from++)
		if (copy_data(lg, &lg->entries[run->w[from].idx], out, buf))
			return -EIO;
	return 0;
}

/*
 * Torn states before flush entry @i.  The plain writes logged right before a
 * flush are those that completed before it was issued: until it completes,
 * a crash may have kept any of them and lost the others.  The states
 * checked keep only the last S of the run of @run->n writes, S = 1, 2, 4,
 * ... below n, at most o->torn of them: the newest writes on the device,
 * the ones before them lost, which is what a write order that relies on the
 * completion of earlier writes without a flush in between cannot survive.
 * The run is applied in full again afterwards, unless a check fails
 * without --keep-going: the device is then left in that state.  Returns 0,
 * 1 when a check failed (@nfailed counts them), or -1 on an I/O error.
 */
static int check_torn(const struct opts *o, const struct log *lg, uint64_t i,
		      const struct run *run, int out, char *buf, uint64_t check,
		      uint64_t checks, uint64_t points, uint64_t *nchecked,
		      uint64_t *nfailed)
{
	int status = 0;
	uint64_t s, t;
	char torn[48], desc[512];
	const char *m;
	int64_t mat;
	int ret;

	m = last_mark(lg, i - 1, &mat);
	for (s = 1, t = 0; s < run->n && t < o->torn; s *= 2, t++) {
		if (run_undo(run, lg, out) ||
		    run_apply(run, lg, run->n - s, out, buf))
			return -1;
		if (fsync(out)) {
			errmsg("fsync %s: %s", o->replay, strerror(errno));
			return -1;
		}
		snprintf(torn, sizeof(torn), "%" PRIu64 " %zu", s, run->n);
		(*nchecked)++;
		if (o->verbose > 1)
			printf("check %" PRIu64 "/%" PRIu64 " before entry %" PRIu64
			       ", torn: the last %s writes\n", check, checks, i, torn);
		ret = run_check(o, lg, i - 1, m, mat, check, checks, points, torn,
				run->w[run->n - s].idx);
		if (ret) {
			printf("check failed (exit %d) in a torn state before %s: "
			       "only entries %" PRIu64 "..%" PRIu64 " of the %zu "
			       "writes from entry %" PRIu64 " on applied\n",
			       ret, entry_desc(lg, i, desc, sizeof(desc)),
			       run->w[run->n - s].idx, i - 1, run->n, run->w[0].idx);
			(*nfailed)++;
			status = 1;
			if (!o->keep_going)
				return 1;
		}
	}
	if (run_undo(run, lg, out) || run_apply(run, lg, 0, out, buf))
		return -1;
	return status;
}

int main(int argc, char **argv)
{
	struct log lg = { .fd = -1 };
	struct opts o;
	uint64_t i, start, stop, applied, points, checks, check, point, failed;
	uint64_t nwrite = 0, ndiscard = 0, nflush = 0, nfua = 0, nmark = 0;
	uint64_t ntorn = 0, ntorn_failed = 0;
	struct run run = { 0 };
	uint64_t rsize = 0;
	bool rblk = false;
	char desc[512];
	char *buf = NULL;
	int out = -1, ret, status = 0;

	if (parse_args(argc, argv, &o))
		return EXIT_USAGE;
	if (load_log(&lg, o.log))
		return EXIT_LOG;

	if (o.list && !o.replay) {
		printf("log %s: %" PRIu64 " entries, sector size %u\n", o.log,
		       lg.nr_entries, lg.sectorsize);
		for (i = 0; i < lg.nr_entries; i++)
			printf("%s\n", entry_desc(&lg, i, desc, sizeof(desc)));
		return 0;
	}

	/* The range of entries to apply: [start, stop). */
	start = o.start_entry;
	if (o.start_mark) {
		if (find_mark(&lg, o.start_mark, 0, &start)) {
			errmsg("no mark \"%s\" in the log", o.start_mark);
			return EXIT_USAGE;
		}
		start++;
	}
	stop = lg.nr_entries;
	if (o.end_entry != UINT64_MAX) {
		if (o.end_entry >= lg.nr_entries) {
			errmsg("entry %" PRIu64 " is past the last entry (%" PRIu64 " entries)",
			       o.end_entry, lg.nr_entries);
			return EXIT_USAGE;
		}
		stop = o.end_entry + 1;
	}
	if (o.end_mark) {
		uint64_t m;

		if (find_mark(&lg, o.end_mark, start, &m)) {
			errmsg("no mark \"%s\" in the log after the start", o.end_mark);
			return EXIT_USAGE;
		}
		if (m + 1 < stop)
			stop = m + 1;
	}
	if (o.limit != UINT64_MAX && start < stop && stop - start > o.limit)
		stop = start + o.limit;

	/* Candidate check points in the range. */
	points = 0;
	for (i = start, applied = 0; i < stop; i++)
		if (is_point(&o, &lg.entries[i], ++applied))
			points++;
	checks = (o.check_cmd && o.max_checks && o.max_checks < points) ?
		 o.max_checks : (o.check_cmd ? points : 0);

	out = open(o.replay, O_RDWR);
	if (out < 0) {
		errmsg("cannot open %s: %s", o.replay, strerror(errno));
		return EXIT_LOG;
	}
	ret = fd_size(out, &rsize, &rblk);
	if (ret) {
		errmsg("cannot get the size of %s: %s", o.replay, strerror(-ret));
		return EXIT_LOG;
	}
	/* A block device cannot grow: refuse a log that writes past its end. */
	for (i = start; rblk && i < stop; i++) {
		const struct entry *e = &lg.entries[i];

		if (e->nr_sectors &&
		    (e->sector + e->nr_sectors) * lg.sectorsize > rsize) {
			errmsg("%s is past the end of %s (%" PRIu64 " bytes)",
			       entry_desc(&lg, i, desc, sizeof(desc)), o.replay, rsize);
			return EXIT_LOG;
		}
	}
	buf = malloc(IO_CHUNK);
	if (!buf)
		return EXIT_LOG;

	check = 0;
	point = 0;
	failed = 0;
	for (i = start, applied = 0; i < stop; i++) {
		const struct entry *e = &lg.entries[i];
		bool chosen = false;

		if (o.check_cmd && is_point(&o, e, applied + 1)) {
			point++;
			/* Spread @checks over @points evenly, the last one included. */
			chosen = checks >= points ||
				 point == (check + 1) * points / checks +
					  !!((check + 1) * points % checks);
		}
		if (chosen && o.torn && (e->flags & LW_FLUSH) && run.n > 1) {
			ret = check_torn(&o, &lg, i, &run, out, buf, check + 1,
					 checks, points, &ntorn, &ntorn_failed);
			if (ret < 0) {
				status = EXIT_LOG;
				break;
			}
			if (ret) {
				status = EXIT_CHECK;
				if (!o.keep_going)
					break;
			}
		}
		if (!is_plain(e)) {
			run_reset(&run);
		} else if (o.torn && o.check_cmd) {
			ret = run_push(&run, &lg, i, out);
			if (ret) {
				errmsg("%s: keeping what it overwrites: %s",
				       entry_desc(&lg, i, desc, sizeof(desc)), strerror(-ret));
				status = EXIT_LOG;
				break;
			}
		}

		if (o.list || o.verbose)
			printf("%s\n", entry_desc(&lg, i, desc, sizeof(desc)));
		if (e->flags & LW_MARK) {
			nmark++;
		} else if (e->flags & LW_DISCARD) {
			ndiscard++;
			ret = do_discard(out, rblk, o.discard,
					 e->sector * lg.sectorsize,
					 e->nr_sectors * lg.sectorsize);
			if (ret) {
				errmsg("%s: %s", entry_desc(&lg, i, desc, sizeof(desc)),
				       strerror(-ret));
				status = EXIT_LOG;
				break;
			}
		} else if (e->nr_sectors) {
			nwrite++;
			if (copy_data(&lg, e, out, buf)) {
				status = EXIT_LOG;
				break;
			}
		}
		if (e->flags & LW_FLUSH)
			nflush++;
		if (e->flags & LW_FUA)
			nfua++;
		applied++;

		if (!chosen)
			continue;
		check++;
		if (fsync(out)) {
			errmsg("fsync %s: %s", o.replay, strerror(errno));
			status = EXIT_LOG;
			break;
		}
		{
			int64_t mat;
			const char *m = last_mark(&lg, i, &mat);

			if (o.verbose > 1)
				printf("check %" PRIu64 "/%" PRIu64 " at entry %" PRIu64 "\n",
				       check, checks, i);
			ret = run_check(&o, &lg, i, m, mat, check, checks, points,
					NULL, 0);
		}
		if (ret) {
			failed++;
			printf("check failed (exit %d) at %s\n", ret,
			       entry_desc(&lg, i, desc, sizeof(desc)));
			status = EXIT_CHECK;
			if (!o.keep_going) {
				i++;
				break;
			}
		}
	}
	if (!status && fsync(out)) {
		errmsg("fsync %s: %s", o.replay, strerror(errno));
		status = EXIT_LOG;
	}
	printf("replay-log: %" PRIu64 " entries applied (%" PRIu64 " writes, %" PRIu64 " discards, %" PRIu64 " flushes, %" PRIu64 " FUA, %" PRIu64 " marks), last entry %" PRId64 "; %" PRIu64 " of %" PRIu64 " check points checked, %" PRIu64 " failed",
	       applied, nwrite, ndiscard, nflush, nfua, nmark,
	       applied ? (int64_t)(start + applied - 1) : (int64_t)-1,
	       check, points, failed);
	if (o.torn)
		printf("; %" PRIu64 " torn states checked, %" PRIu64 " failed",
		       ntorn, ntorn_failed);
	printf("\n");
	run_reset(&run);
	free(run.w);
	free(buf);
	close(out);
	return status;
}
