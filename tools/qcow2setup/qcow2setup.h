/* SPDX-License-Identifier: GPL-2.0 */
/*
 * qcow2setup: map qcow2 images through the dm-qcow2 device-mapper target.
 * Internal interfaces shared by the tool's source files.
 */
#ifndef QCOW2SETUP_H
#define QCOW2SETUP_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "qcow2-format.h"

#define QCOW2SETUP_VERSION	"1.15.0"

/* Exit codes (documented in --help and qcow2setup(8)). */
#define EXIT_OK		0
#define EXIT_USAGE	1	/* bad command line */
#define EXIT_IMAGE	2	/* image or format error, unsupported feature */
#define EXIT_DM		3	/* device-mapper or kernel error */
#define EXIT_BUSY	4	/* busy or locked */
#define EXIT_NOTFOUND	5	/* image, backing file, device or snapshot not found */

#define UUID_PREFIX	"QCOW2-"
#define STATE_DIR	"/run/qcow2setup"
#define TARGET_NAME	"qcow2"
#define MAX_BACKING	1023		/* backing layers the target accepts */
#define CACHE_MIN	16384ULL

extern int verbose;
extern char last_error[1024];	/* message of the last fail() */

/* util.c */
void msg_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int errno_exit_code(int err);
int read_full(int fd, void *buf, size_t len, uint64_t off, size_t *got);
char *read_sysfs(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *devnode_of(unsigned int major, unsigned int minor);
const char *human_size(uint64_t bytes, char *buf, size_t len);
int parse_size(const char *s, uint64_t *out);
char *path_escape(const char *s);
char *path_unescape(const char *s);

/* json.c: a small streaming JSON writer on stdout */
struct json {
	int depth;
	bool need_comma[32];
	bool after_key;
};
void json_begin_obj(struct json *j, const char *key);
void json_end_obj(struct json *j);
void json_begin_arr(struct json *j, const char *key);
void json_end_arr(struct json *j);
void json_str(struct json *j, const char *key, const char *val);
void json_u64(struct json *j, const char *key, uint64_t val);
void json_bool(struct json *j, const char *key, bool val);
void json_null(struct json *j, const char *key);
void json_finish(struct json *j);

/* chain.c: images and backing chains */
enum layer_fmt { FMT_QCOW2, FMT_RAW };

struct snapshot {
	char *id;
	char *name;
	uint64_t disk_size;		/* 0 = unknown (old v2 snapshot) */
	uint64_t vm_state_size;
	uint32_t date_sec;
	uint32_t date_nsec;
	uint64_t vm_clock_nsec;
};

struct layer {
	char *path;			/* path as resolved the way QEMU does */
	char *backing_ref;		/* name stored in the image above (NULL for layer 0) */
	enum layer_fmt fmt;
	int fd;
	bool is_blk;
	bool writable;
	dev_t st_dev;
	ino_t st_ino;
	dev_t rdev;			/* block device number (is_blk) */
	uint64_t size;			/* bytes of the file or device */

	/* qcow2 layers */
	struct qcow2_info qi;
	char *backing_name;		/* as stored, NULL without a backing file */
	bool backing_fmt_absent;	/* backing file without a backing format */

	/* set up by open */
	int loop_nr;			/* -1: not a loop we attached */
	int loop_fd;
	bool dio;
	dev_t dev;			/* the device given to the target */
	bool locked;
	bool ok;			/* opened and (qcow2) header parsed */
	bool grown;			/* file extended for writing (grow.c) */
	uint64_t orig_size;		/* its size before */
};

struct chain {
	struct layer *layers;
	unsigned int n;
	unsigned int cap;
};

struct open_opts {
	bool writable;			/* layer 0 opened read-write */
	bool no_lock_check;		/* info: no locks */
};

int chain_walk(const char *image, const struct open_opts *o, struct chain *c);
void chain_free(struct chain *c);
void chain_close_fds(struct chain *c);
int open_image(const char *path, bool writable, struct layer *l);
int read_snapshots(struct layer *l, struct snapshot **out, unsigned int *nr);
void free_snapshots(struct snapshot *s, unsigned int nr);
const char *fmt_name(enum layer_fmt f);
char *resolve_backing(const char *parent_path, const char *name);

/* grow.c */
int image_used_end(struct layer *l, uint64_t *end);
uint64_t image_max_size(const struct layer *l, uint64_t used_end);

/* lock.c: QEMU-compatible image locks */
int qemu_lock_image(struct layer *l, bool writable);
int qemu_write_locked(int fd);

/* loopdev.c */
int loop_attach(struct layer *l, bool read_only, unsigned int block_size);
void loop_detach(struct layer *l);
void loop_release_fd(struct layer *l);
int loop_file_id(unsigned int major, unsigned int minor, dev_t *dev, ino_t *ino);
bool loop_is_bound(unsigned int major, unsigned int minor);

/* dm.c */
struct dm_dev_info {
	char *name;
	char *uuid;
	bool exists;
	bool read_only;
	bool suspended;
	int open_count;
	unsigned int major, minor;
	char *target;			/* type of the (single) target */
	uint64_t start, length;		/* sectors */
	unsigned int nr_targets;
	char *table;			/* params of the table */
	char *status;			/* params of the status */
};

struct tbl_layer {
	enum layer_fmt fmt;
	unsigned int major, minor;
};

struct parsed_table {
	unsigned int nr_layers;
	struct tbl_layer *layers;
	char *snapshot;
	uint64_t cache_size;		/* 0: default */
	bool lazy_refcounts;
};

void dm_setup(bool udev_wait);
int dm_get(const char *name, bool with_status, struct dm_dev_info *di);
void dm_info_free(struct dm_dev_info *di);
int dm_list_names(char ***names, unsigned int *nr);
int dm_create_dev(const char *name, const char *uuid, uint64_t sectors,
		  const char *params, bool read_only);
int dm_remove_dev(const char *name);
int dm_message(const char *name, const char *msg, char **response);
const char *dm_last_error(void);
bool dm_has_target(const char *type, unsigned int version[3]);
int table_parse(const char *params, struct parsed_table *t);
void table_free(struct parsed_table *t);

/* state.c: /run/qcow2setup/UUID, the paths given at open */
struct state_layer {
	unsigned int idx;
	enum layer_fmt fmt;
	unsigned int major, minor;
	bool attached;			/* loop attached by qcow2setup */
	char *path;
};

struct state {
	char *name;
	bool writable;
	bool grown;			/* layer 0 file extended at open */
	uint64_t orig_size;
	dev_t file_dev;
	ino_t file_ino;
	unsigned int nr;
	struct state_layer *layers;
};

int state_write(const char *uuid, const char *name, const struct chain *c, bool writable);
int state_read(const char *uuid, struct state *s);
void state_remove(const char *uuid);
void state_free(struct state *s);

#endif /* QCOW2SETUP_H */
