/* common/arena.c — see arena.h. */
#include "common/arena.h"

#include <stdlib.h>
#include <string.h>

#define VS_ARENA_ALIGN 64

int vs_arena_init(vs_arena *a, size_t cap_bytes)
{
    a->used_bytes = 0;
    a->cap_bytes = (cap_bytes + VS_ARENA_ALIGN - 1) & ~(size_t)(VS_ARENA_ALIGN - 1);
    if (a->cap_bytes == 0)
        a->cap_bytes = VS_ARENA_ALIGN;
    a->base = aligned_alloc(VS_ARENA_ALIGN, a->cap_bytes);
    if (!a->base)
        return -1;
    memset(a->base, 0, a->cap_bytes);
    return 0;
}

void *vs_arena_alloc(vs_arena *a, size_t bytes)
{
    size_t need = (bytes + VS_ARENA_ALIGN - 1) & ~(size_t)(VS_ARENA_ALIGN - 1);
    if (!a->base || need > a->cap_bytes - a->used_bytes)
        return NULL;
    void *p = a->base + a->used_bytes;
    a->used_bytes += need;
    return p;
}

void vs_arena_reset(vs_arena *a) { a->used_bytes = 0; }

void vs_arena_free(vs_arena *a)
{
    free(a->base);
    a->base = NULL;
    a->cap_bytes = a->used_bytes = 0;
}
