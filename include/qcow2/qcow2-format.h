/* SPDX-License-Identifier: GPL-2.0 */
/*
 * qcow2 on-disk format: packed big-endian structures, constants and the
 * pure (I/O-free) parse, validate and decode helpers shared by the dm-qcow2
 * kernel module and its userspace tools.
 *
 * Nothing here allocates memory or performs I/O: callers read bytes from the
 * image and hand them in.  Every function validates what it is given and
 * reports a short human-readable reason on failure, suitable for ti->error.
 *
 * Format reference: QEMU docs/interop/qcow2.rst.
 */
#ifndef _QCOW2_FORMAT_H
#define _QCOW2_FORMAT_H

#include "qcow2-types.h"

#define QCOW2_MAGIC			0x514649fbU	/* "QFI\xfb" */

#define QCOW2_MIN_CLUSTER_BITS		9
#define QCOW2_MAX_CLUSTER_BITS		21
#define QCOW2_MIN_EXT_L2_CLUSTER_BITS	14
#define QCOW2_V2_HEADER_LENGTH		72
#define QCOW2_V3_MIN_HEADER_LENGTH	104
#define QCOW2_MAX_REFCOUNT_ORDER	6
#define QCOW2_MAX_BACKING_NAME		1023
#define QCOW2_MAX_BACKING_FMT		15	/* QEMU's buffer is 16 bytes */
#define QCOW2_MAX_L1_BYTES		(32ULL << 20)
#define QCOW2_MAX_REFTABLE_BYTES	(8ULL << 20)
#define QCOW2_MAX_SNAPSHOTS		65536
#define QCOW2_MAX_SNAPSHOT_TABLE	(64ULL << 20)
#define QCOW2_MAX_SNAPSHOT_EXTRA	1024
#define QCOW2_SUBCLUSTERS		32

/* Incompatible feature bits (header offset 72) */
#define QCOW2_INCOMPAT_DIRTY		BIT_ULL(0)
#define QCOW2_INCOMPAT_CORRUPT		BIT_ULL(1)
#define QCOW2_INCOMPAT_DATA_FILE	BIT_ULL(2)
#define QCOW2_INCOMPAT_COMPRESSION	BIT_ULL(3)
#define QCOW2_INCOMPAT_EXTL2		BIT_ULL(4)
#define QCOW2_INCOMPAT_KNOWN		(QCOW2_INCOMPAT_DIRTY | \
					 QCOW2_INCOMPAT_CORRUPT | \
					 QCOW2_INCOMPAT_DATA_FILE | \
					 QCOW2_INCOMPAT_COMPRESSION | \
					 QCOW2_INCOMPAT_EXTL2)
/* Compatible feature bits (offset 80) */
#define QCOW2_COMPAT_LAZY_REFCOUNTS	BIT_ULL(0)
/* Autoclear feature bits (offset 88) */
#define QCOW2_AUTOCLEAR_BITMAPS		BIT_ULL(0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW	BIT_ULL(1)

#define QCOW2_CRYPT_NONE		0
#define QCOW2_CRYPT_AES			1
#define QCOW2_CRYPT_LUKS		2

#define QCOW2_COMPRESSION_DEFLATE	0
#define QCOW2_COMPRESSION_ZSTD		1

/* Header extension types */
#define QCOW2_EXT_END			0x00000000U
#define QCOW2_EXT_BACKING_FORMAT	0xe2792acaU
#define QCOW2_EXT_FEATURE_TABLE		0x6803f857U
#define QCOW2_EXT_BITMAPS		0x23852875U
#define QCOW2_EXT_CRYPTO		0x0537be77U
#define QCOW2_EXT_DATA_FILE		0x44415441U

/* L1/L2/refcount table entry bits */
#define QCOW2_OFLAG_COPIED		BIT_ULL(63)
#define QCOW2_OFLAG_COMPRESSED		BIT_ULL(62)
#define QCOW2_OFLAG_ZERO		BIT_ULL(0)
#define QCOW2_L1E_OFFSET_MASK		0x00fffffffffffe00ULL
#define QCOW2_L1E_RESERVED_MASK		0x7f000000000001ffULL
#define QCOW2_L2E_OFFSET_MASK		0x00fffffffffffe00ULL
#define QCOW2_L2E_STD_RESERVED_MASK	0x3f000000000001feULL
#define QCOW2_REFT_OFFSET_MASK		0xfffffffffffffe00ULL
#define QCOW2_REFT_RESERVED_MASK	0x1ffULL
#define QCOW2_L2_BITMAP_ALL_ALLOC	0x00000000ffffffffULL
#define QCOW2_L2_BITMAP_ALL_ZEROES	0xffffffff00000000ULL

struct qcow2_header {
	__be32 magic;
	__be32 version;
	__be64 backing_file_offset;
	__be32 backing_file_size;
	__be32 cluster_bits;
	__be64 size;
	__be32 crypt_method;
	__be32 l1_size;
	__be64 l1_table_offset;
	__be64 refcount_table_offset;
	__be32 refcount_table_clusters;
	__be32 nb_snapshots;
	__be64 snapshots_offset;
	/* version 3 and later */
	__be64 incompatible_features;
	__be64 compatible_features;
	__be64 autoclear_features;
	__be32 refcount_order;
	__be32 header_length;
	/* optional, present when header_length > 104 */
	u8 compression_type;
	u8 padding[7];
} __packed;

struct qcow2_ext_header {
	__be32 type;
	__be32 len;
} __packed;

struct qcow2_snapshot_header {
	__be64 l1_table_offset;
	__be32 l1_size;
	__be16 id_str_size;
	__be16 name_size;
	__be32 date_sec;
	__be32 date_nsec;
	__be64 vm_clock_nsec;
	__be32 vm_state_size;
	__be32 extra_data_size;
	/* extra data, id string, name, padding to 8 bytes follow */
} __packed;

struct qcow2_snapshot_extra {
	__be64 vm_state_size_large;
	__be64 disk_size;
	__be64 icount;
} __packed;

/* Header decoded to CPU order, with derived quantities. */
struct qcow2_info {
	u32 version;
	u32 cluster_bits;
	u64 cluster_size;
	u64 size;			/* virtual disk size, bytes */
	u64 backing_file_offset;
	u32 backing_file_size;
	u32 crypt_method;
	u32 l1_size;
	u64 l1_table_offset;
	u64 refcount_table_offset;
	u32 refcount_table_clusters;
	u32 nb_snapshots;
	u64 snapshots_offset;
	u64 incompatible_features;
	u64 compatible_features;
	u64 autoclear_features;
	u32 refcount_order;
	u32 header_length;
	u8 compression_type;

	/* derived */
	bool extended_l2;
	u32 l2_entry_shift;		/* 3 (8-byte entries) or 4 (16-byte) */
	u32 l2_bits;			/* log2(entries per L2 table) */
	u32 subcluster_bits;		/* == cluster_bits without extended L2 */
	u32 l1_needed;			/* L1 entries needed to map size */
	u32 csize_shift;		/* compressed descriptor: 62 - (cb - 8) */
	u64 csize_mask;			/* mask of the sector-count field */
	u64 coffset_mask;		/* mask of the byte-offset field */

	/* header extensions */
	u64 ext_end;			/* end of the extension area */
	bool has_backing_fmt;
	char backing_fmt[QCOW2_MAX_BACKING_FMT + 1];
	bool has_data_file_ext;
	bool has_crypto_ext;
	bool has_bitmaps_ext;
	u32 nr_unknown_ext;
};

/* Cluster (or subcluster) types, after QEMU's qcow2_get_(sub)cluster_type. */
enum qcow2_cluster_type {
	QCOW2_CL_UNALLOCATED,		/* read from backing layer or zeros */
	QCOW2_CL_ZERO_PLAIN,		/* zeros, no host cluster */
	QCOW2_CL_ZERO_ALLOC,		/* zeros, host cluster preallocated */
	QCOW2_CL_NORMAL,		/* data at host offset */
	QCOW2_CL_COMPRESSED,		/* compressed descriptor */
	QCOW2_CL_UNALLOCATED_ALLOC,	/* ext. L2: subcluster unallocated, host cluster reserved */
	QCOW2_CL_INVALID,		/* corrupt entry */
};

/* One decoded L2 entry (the subcluster bitmap is only used with extended L2). */
struct qcow2_l2_entry {
	u64 entry;
	u64 bitmap;
};

/* A decoded compressed-cluster descriptor. */
struct qcow2_compressed {
	u64 offset;	/* host byte offset of the compressed stream */
	u64 nb_sectors;	/* 512-byte sectors to read, starting at offset & ~511 */
};

/* A decoded snapshot table entry (strings are not NUL-terminated). */
struct qcow2_snapshot_info {
	u64 l1_table_offset;
	u32 l1_size;
	u64 disk_size;			/* from extra data, else 0 (unknown) */
	const char *id;			/* points into the caller's buffer */
	u16 id_len;
	const char *name;
	u16 name_len;
	u32 entry_len;			/* bytes, including padding to 8 */
};

/*
 * Validate magic, version and cluster_bits from the first bytes of an image
 * (at least 24 bytes needed; 512 recommended) so the caller knows how much of
 * the first cluster to read before calling qcow2_parse_header().
 * Returns 0 or -EINVAL and sets *err.
 */
int qcow2_peek_cluster_bits(const void *buf, size_t len, u32 *cluster_bits,
			    const char **err);

/*
 * Parse and validate the header and its extensions.  @buf holds the start of
 * the image: min(cluster_size, image_size) bytes (a shorter buffer is treated
 * as zero-padded: bytes past @len read as zero).  @image_size is the size of
 * the device holding the image; table offsets beyond it are refused.
 * Returns 0 or a negative errno (-EINVAL malformed, -EOPNOTSUPP unsupported
 * feature, -EFBIG out of supported range) and sets *err.  On failure @qi
 * keeps the fields decoded so far (e.g. incompatible_features) for logging.
 */
int qcow2_parse_header(const void *buf, size_t len, u64 image_size,
		       struct qcow2_info *qi, const char **err);

/*
 * Copy the backing file name (not NUL-terminated on disk) from @buf and
 * NUL-terminate it.  Returns its length (0 without a backing file) or
 * -ENAMETOOLONG when @name_size cannot hold it.
 */
int qcow2_backing_name(const struct qcow2_info *qi, const void *buf,
		       size_t len, char *name, size_t name_size);

/*
 * Validate one L1 entry (CPU order).  Returns the L2 table offset (0 = no L2
 * table) or a negative errno on a corrupt entry (reserved bits, misaligned,
 * beyond @image_size) and sets *err.
 */
s64 qcow2_l1_entry_l2_offset(const struct qcow2_info *qi, u64 l1e,
			     u64 image_size, const char **err);

/*
 * Classify guest subcluster @sc (0 for standard L2) of a decoded L2 entry.
 * For QCOW2_CL_INVALID *err tells why.
 */
enum qcow2_cluster_type qcow2_l2_type(const struct qcow2_info *qi,
				      const struct qcow2_l2_entry *l2e,
				      unsigned int sc, const char **err);

/*
 * Host offset of the data of a NORMAL or ZERO_ALLOC (sub)cluster entry,
 * validated: cluster aligned, no reserved bits, not inside the header
 * cluster, and below @image_size.  Returns the offset or -EINVAL (*err set).
 */
s64 qcow2_l2_host_offset(const struct qcow2_info *qi,
			 const struct qcow2_l2_entry *l2e, u64 image_size,
			 const char **err);

/*
 * Decode a compressed descriptor and check that its stream starts after the
 * header cluster and below @image_size.  Returns 0 or -EINVAL (*err set).
 */
int qcow2_decode_compressed(const struct qcow2_info *qi, u64 entry,
			    u64 image_size, struct qcow2_compressed *c,
			    const char **err);

/*
 * Number of consecutive subclusters starting at @sc that share its type
 * (and, for data, are contiguous on the host).  1..32-sc; 1 without ext. L2.
 */
unsigned int qcow2_subcluster_run(const struct qcow2_info *qi,
				  const struct qcow2_l2_entry *l2e,
				  unsigned int sc);

/*
 * Parse one snapshot table entry at the start of @buf (@len bytes available).
 * Returns the entry length in bytes (including padding), -ENODATA when more
 * bytes are needed (the caller reads further and retries), or -EINVAL.
 */
int qcow2_parse_snapshot(const struct qcow2_info *qi, const void *buf,
			 size_t len, u64 image_size,
			 struct qcow2_snapshot_info *si, const char **err);

/* Decode a refcount from a refcount block (used by the write path). */
u64 qcow2_refcount_get(const void *block, u32 refcount_order, u64 index);
void qcow2_refcount_set(void *block, u32 refcount_order, u64 index, u64 value);

/* Read an L2 entry (and bitmap) from an L2 table or slice, CPU order. */
static inline void qcow2_l2_entry_load(const struct qcow2_info *qi,
				       const void *table, unsigned int idx,
				       struct qcow2_l2_entry *l2e)
{
	const __be64 *p = (const __be64 *)table + ((size_t)idx << (qi->l2_entry_shift - 3));

	l2e->entry = be64_to_cpu(p[0]);
	l2e->bitmap = qi->extended_l2 ? be64_to_cpu(p[1]) : 0;
}

/*
 * Store an L2 entry (and bitmap) into an L2 table or slice.  Readers may look
 * at the entry concurrently without locks: the word that makes the new state
 * valid is stored last.
 */
static inline void qcow2_l2_entry_store(const struct qcow2_info *qi, void *table,
					unsigned int idx,
					const struct qcow2_l2_entry *l2e)
{
	__be64 *p = (__be64 *)table + ((size_t)idx << (qi->l2_entry_shift - 3));

	if (qi->extended_l2 && (l2e->entry & QCOW2_L2E_OFFSET_MASK)) {
		/* Allocating: the host offset first, then what uses it. */
		p[0] = cpu_to_be64(l2e->entry);
		p[1] = cpu_to_be64(l2e->bitmap);
	} else if (qi->extended_l2) {
		/* Dropping the host offset: stop using it first. */
		p[1] = cpu_to_be64(l2e->bitmap);
		p[0] = cpu_to_be64(l2e->entry);
	} else {
		p[0] = cpu_to_be64(l2e->entry);
	}
}

#endif /* _QCOW2_FORMAT_H */
