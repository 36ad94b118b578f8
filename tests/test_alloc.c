/* The client's heap allocator (client/alloc.c, a buddy allocator over the
 * segment's heap): blocks are aligned powers of two of at least 64 bytes,
 * never overlap and never leave the heap; freeing coalesces so that the
 * whole heap comes back; a random sequence keeps every invariant. */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "alloc.h"

TestSuite(alloc, .timeout = 60);

static size_t block_of(size_t size)
{
    size_t b = 64;
    while (b < size)
        b <<= 1;
    return b;
}

Test(alloc, sizes_round_up_and_align)
{
    enum { HEAP = 1 << 20 };
    char *heap = malloc(HEAP);
    struct bb__buddy b;
    cr_assert_eq(bb__buddy_init(&b, heap, HEAP), 0);
    static const size_t sizes[] = {0, 1, 63, 64, 65, 4000, 4096, 70000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int64_t off = bb__buddy_alloc(&b, sizes[i]);
        cr_assert_geq(off, 0, "size %zu", sizes[i]);
        size_t blk = block_of(sizes[i]);
        cr_assert_eq((uint64_t)off % blk, 0, "size %zu at %lld: not aligned to its block %zu",
                     sizes[i], (long long)off, blk);
        cr_assert_leq((uint64_t)off + blk, HEAP);
        bb__buddy_free(&b, (uint64_t)off);
    }
    bb__buddy_fini(&b);
    free(heap);
}

Test(alloc, exhaustion_and_full_coalescing)
{
    enum { HEAP = 1 << 16 };
    char *heap = malloc(HEAP);
    struct bb__buddy b;
    cr_assert_eq(bb__buddy_init(&b, heap, HEAP), 0);
    cr_assert_eq(bb__buddy_alloc(&b, HEAP + 1), -1, "larger than the heap");
    int64_t offs[HEAP / 64];
    int n = 0;
    int64_t o;
    while ((o = bb__buddy_alloc(&b, 64)) >= 0)
        offs[n++] = o;
    cr_assert_eq(n, HEAP / 64, "every 64-byte block is handed out once");
    cr_assert_eq(bb__buddy_alloc(&b, 1), -1);
    /* Free in a scrambled order; then the whole heap is one block again. */
    for (int i = 0; i < n; i++) {
        int j = (int)((unsigned)i * 40503u % (unsigned)n);
        int64_t t = offs[i];
        offs[i] = offs[j];
        offs[j] = t;
    }
    for (int i = 0; i < n; i++)
        bb__buddy_free(&b, (uint64_t)offs[i]);
    cr_assert_eq(bb__buddy_alloc(&b, HEAP), 0, "the free blocks merged back into one");
    bb__buddy_fini(&b);
    free(heap);
}

/* A heap that is not a power of two is carved into aligned blocks that all
 * lie inside it. */
Test(alloc, odd_sized_heap)
{
    enum { HEAP = 3 * 4096 + 5 * 64 };
    char *heap = malloc(HEAP);
    struct bb__buddy b;
    cr_assert_eq(bb__buddy_init(&b, heap, HEAP), 0);
    size_t total = 0;
    int64_t o;
    while ((o = bb__buddy_alloc(&b, 64)) >= 0) {
        cr_assert_leq((uint64_t)o + 64, HEAP);
        total += 64;
    }
    cr_assert_eq(total, HEAP);
    bb__buddy_fini(&b);
    free(heap);
}

/* Random allocations and frees: no two live blocks overlap, each stays in
 * the heap, and the free-list links (kept inside free blocks) never clobber
 * a live block's bytes. */
Test(alloc, random_sequence_keeps_blocks_apart)
{
    enum { HEAP = 1 << 20, LIVE = 512 };
    unsigned char *heap = malloc(HEAP);
    struct bb__buddy b;
    cr_assert_eq(bb__buddy_init(&b, heap, HEAP), 0);
    struct { int64_t off; size_t len; unsigned char tag; } live[LIVE];
    int n = 0;
    uint64_t s = 7;
    for (int step = 0; step < 100000; step++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        if (n < LIVE && (n == 0 || (s >> 60) < 9)) {
            size_t len = 1 + (size_t)((s >> 20) % (1u << (1 + (s >> 40) % 14)));
            int64_t off = bb__buddy_alloc(&b, len);
            if (off < 0)
                continue;
            cr_assert_leq((uint64_t)off + len, HEAP);
            for (int i = 0; i < n; i++)
                cr_assert(off + (int64_t)len <= live[i].off ||
                              live[i].off + (int64_t)live[i].len <= off,
                          "step %d: [%lld,+%zu) overlaps [%lld,+%zu)", step, (long long)off, len,
                          (long long)live[i].off, live[i].len);
            live[n].off = off;
            live[n].len = len;
            live[n].tag = (unsigned char)step;
            memset(heap + off, live[n].tag, len);
            n++;
        } else {
            int i = (int)((s >> 8) % (uint64_t)n);
            for (size_t k = 0; k < live[i].len; k++)
                cr_assert_eq(heap[live[i].off + (int64_t)k], live[i].tag,
                             "step %d: a live block was written by the allocator", step);
            bb__buddy_free(&b, (uint64_t)live[i].off);
            live[i] = live[--n];
        }
    }
    while (n)
        bb__buddy_free(&b, (uint64_t)live[--n].off);
    cr_assert_eq(bb__buddy_alloc(&b, HEAP), 0);
    bb__buddy_fini(&b);
    free(heap);
}
