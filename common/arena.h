/* common/arena.h — a bump allocator: many allocations, one free.
 *
 * Used for model weights (one allocation per model) and for scratch sized at start-up, so the
 * per-step path never calls malloc. Not thread-safe: one owner. */
#ifndef VS_ARENA_H
#define VS_ARENA_H

#include <stddef.h>

typedef struct {
    unsigned char *base; /* owned; NULL until init */
    size_t cap_bytes;
    size_t used_bytes;
} vs_arena;

/* Reserves cap_bytes (zeroed). Returns 0 on success, -1 when the allocation fails. */
int vs_arena_init(vs_arena *a, size_t cap_bytes);
/* 64-byte aligned; NULL when the arena is full (a sizing bug in the caller). */
void *vs_arena_alloc(vs_arena *a, size_t bytes);
void vs_arena_reset(vs_arena *a);
void vs_arena_free(vs_arena *a); /* accepts a zeroed or already-freed arena */

#endif
