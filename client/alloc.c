#include "alloc.h"

#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX
#define ST_FREE 0x40u
#define ST_USED 0x80u
#define ST_ORDER 0x3fu

struct link {
    uint32_t next, prev;
};

static struct link *lk(struct bb__buddy *b, uint32_t idx)
{
    return (struct link *)(b->base + ((size_t)idx << BB_BUDDY_MIN_SHIFT));
}

static void push(struct bb__buddy *b, uint32_t idx, unsigned order)
{
    struct link *l = lk(b, idx);
    l->prev = NIL;
    l->next = b->free_head[order];
    if (l->next != NIL)
        lk(b, l->next)->prev = idx;
    b->free_head[order] = idx;
    b->state[idx] = (uint8_t)(ST_FREE | order);
}

static void unlink_block(struct bb__buddy *b, uint32_t idx, unsigned order)
{
    struct link *l = lk(b, idx);
    if (l->prev != NIL)
        lk(b, l->prev)->next = l->next;
    else
        b->free_head[order] = l->next;
    if (l->next != NIL)
        lk(b, l->next)->prev = l->prev;
    b->state[idx] = 0;
}

int bb__buddy_init(struct bb__buddy *b, void *base, size_t size)
{
    memset(b, 0, sizeof *b);
    size_t n = size >> BB_BUDDY_MIN_SHIFT;
    if (n == 0 || n > UINT32_MAX - 1)
        return -1;
    b->base = base;
    b->nblocks = (uint32_t)n;
    b->state = calloc(n, 1);
    if (!b->state)
        return -1;
    for (unsigned o = 0; o <= BB_BUDDY_MAX_ORDER; o++)
        b->free_head[o] = NIL;
    /* Carve the heap into the largest aligned power-of-two blocks, so that
     * buddies (idx ^ 1<<order) always lie inside the heap. */
    uint32_t idx = 0;
    while (idx < b->nblocks) {
        unsigned o = 0;
        while (o < BB_BUDDY_MAX_ORDER && (idx & ((2u << o) - 1)) == 0 &&
               (uint64_t)idx + (2u << o) <= b->nblocks)
            o++;
        push(b, idx, o);
        idx += 1u << o;
    }
    return 0;
}

void bb__buddy_fini(struct bb__buddy *b)
{
    free(b->state);
    b->state = NULL;
}

int64_t bb__buddy_alloc(struct bb__buddy *b, size_t size)
{
    unsigned order = 0;
    while (((size_t)1 << (order + BB_BUDDY_MIN_SHIFT)) < size) {
        if (++order > BB_BUDDY_MAX_ORDER)
            return -1;
    }
    unsigned k = order;
    while (k <= BB_BUDDY_MAX_ORDER && b->free_head[k] == NIL)
        k++;
    if (k > BB_BUDDY_MAX_ORDER)
        return -1;
    uint32_t idx = b->free_head[k];
    unlink_block(b, idx, k);
    while (k > order) {
        k--;
        push(b, idx + (1u << k), k);
    }
    b->state[idx] = (uint8_t)(ST_USED | order);
    return (int64_t)((uint64_t)idx << BB_BUDDY_MIN_SHIFT);
}

void bb__buddy_free(struct bb__buddy *b, uint64_t off)
{
    uint32_t idx = (uint32_t)(off >> BB_BUDDY_MIN_SHIFT);
    if (idx >= b->nblocks || !(b->state[idx] & ST_USED))
        abort(); /* double free or foreign offset: a bug in this library */
    unsigned order = b->state[idx] & ST_ORDER;
    b->state[idx] = 0;
    while (order < BB_BUDDY_MAX_ORDER) {
        uint32_t buddy = idx ^ (1u << order);
        if (buddy >= b->nblocks || b->state[buddy] != (ST_FREE | order))
            break;
        unlink_block(b, buddy, order);
        if (buddy < idx)
            idx = buddy;
        order++;
    }
    push(b, idx, order);
}
