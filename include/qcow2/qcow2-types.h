/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Fixed-width and byte-order helpers for code shared between the dm-qcow2
 * kernel module and its userspace tools (qcow2setup, unit tests, fuzzers).
 */
#ifndef _QCOW2_TYPES_H
#define _QCOW2_TYPES_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/errno.h>
#include <linux/string.h>
#include <linux/kernel.h>
#include <asm/byteorder.h>
#else
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <endian.h>
#include <linux/types.h>	/* __be16, __be32, __be64 */

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;

#define be16_to_cpu(x)	be16toh((__force uint16_t)(x))
#define be32_to_cpu(x)	be32toh((__force uint32_t)(x))
#define be64_to_cpu(x)	be64toh((__force uint64_t)(x))
#define cpu_to_be16(x)	((__force __be16)htobe16(x))
#define cpu_to_be32(x)	((__force __be32)htobe32(x))
#define cpu_to_be64(x)	((__force __be64)htobe64(x))

#ifndef __force
#define __force
#endif
#ifndef __packed
#define __packed __attribute__((packed))
#endif
#ifndef BIT_ULL
#define BIT_ULL(n)	(1ULL << (n))
#endif
#endif /* __KERNEL__ */

#endif /* _QCOW2_TYPES_H */
