/* libFuzzer harness: the broker's ingest path, from a client segment the
 * fuzzer writes into, through descriptor validation, the queues, dedup,
 * batching and the backends to completion (broker/intake.c and below).
 *
 * Two clients attach to an in-process broker with four models (echo with
 * dedup; synthetic with failing batches, byte and memory limits, deadlines
 * and drop_late; a FIFO latency model; an adaptive one), all running
 * inline. The input is a program of one-byte opcodes and their arguments:
 * write a descriptor (shaped to pass validation often), write raw bytes as
 * a descriptor, fill a slot's input, submit or cancel a slot, push a raw
 * ring entry, lose count of the ring's position, scribble anywhere in the
 * segment (header, rings, slots), run a dispatcher pass. Nothing may crash
 * (ASan, UBSan), and once both clients are gone the broker holds nothing. */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "batchbroker/protocol.h"
#include "inproc.h"

#define NSLOTS 8
static const char *const models[] = {"echo", "syn", "lat", "ada"};
#define NMODELS 4

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static const char *const ov[] = {
        "model.echo.instances=0", "model.echo.max_batch_size=4", "model.echo.max_wait_us=0",
        "model.echo.dedup=on", "model.echo.dedup_cache_entries=8", "model.echo.max_queue=16",
        "model.echo.max_inflight_per_client=8",
        "model.syn.backend=synthetic", "model.syn.instances=0", "model.syn.param.fail_every=3",
        "model.syn.max_batch_bytes=4096", "model.syn.memory_limit_mb=1",
        "model.syn.dedup_scope=global", "model.syn.max_queue_low=2", "model.syn.drop_late=on",
        "model.syn.default_timeout_us=500", "model.syn.max_wait_us=200",
        "model.syn.strategy=deadline", "model.syn.max_starvation_us=300",
        "model.lat.backend=echo", "model.lat.instances=0", "model.lat.priorities=off",
        "model.lat.fairness=off", "model.lat.strategy=latency", "model.lat.max_request_bytes=1K",
        "model.ada.backend=echo", "model.ada.instances=0", "model.ada.adaptive=on",
        "model.ada.auto_tune=on",
        "broker.max_clients=4", NULL};
    bbf_start(ov);
    return 0;
}

/* What the harness remembers of its client: the layout as the broker wrote
 * it (before any scribbling), the ring tail it keeps, the last descriptor
 * written to each slot. */
struct client {
    struct bbf_session s;
    bool ok;
    struct bb_shm_header h;
    uint32_t tail, gen;
    struct bb_shm_slot last[NSLOTS];
};

struct input {
    const uint8_t *p;
    size_t left;
};

static uint64_t take(struct input *in, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes && in->left; i++, in->left--)
        v |= (uint64_t)*in->p++ << (8 * i);
    return v;
}

static struct bb_shm_slot *slot_of(struct client *c, uint32_t i)
{
    return (struct bb_shm_slot *)(c->s.seg + c->h.slots_off) + i % c->h.nslots;
}

/* Publish an entry as the client library does: at the next position, tagged
 * with that position's lap (protocol.h), with one release store. */
static void push(struct client *c, uint32_t entry)
{
    _Atomic uint32_t *ents = (_Atomic uint32_t *)(c->s.seg + c->h.sq_off + BB_SHM_RING_HDR_SIZE);
    uint32_t lg = (uint32_t)__builtin_ctz(c->h.sq_entries);
    uint32_t e = (entry & ~BB_SQE_LAP_MASK) | BB_SQE_LAP(c->tail, lg);
    atomic_store_explicit(&ents[c->tail & (c->h.sq_entries - 1)], e, memory_order_release);
    c->tail++;
}

/* A descriptor that passes validation unless the fuzzer wants otherwise:
 * offsets in 64-byte steps inside the heap, lengths up to 64 KiB. */
static void shaped_desc(struct client *c, struct input *in)
{
    uint32_t i = (uint32_t)take(in, 1) % NSLOTS;
    struct bb_shm_slot d = {0};
    uint64_t heap_units = c->h.heap_size / 64;
    d.gen = ++c->gen;
    d.model_id = (uint32_t)take(in, 1) % (NMODELS + 1);
    d.in_off = c->h.heap_off + take(in, 2) % heap_units * 64;
    d.in_len = (uint32_t)take(in, 2);
    d.out_off = c->h.heap_off + take(in, 2) % heap_units * 64;
    d.out_cap = (uint32_t)take(in, 2);
    d.priority = (uint8_t)(take(in, 1) % 6);
    uint8_t f = (uint8_t)take(in, 1);
    d.flags = f & 1 ? 1u : f & 2 ? f : 0;
    d.timeout_us = (uint32_t)take(in, 1) * 100;
    d.submit_ns = take(in, 1) ? take(in, 8) : 0;
    c->last[i] = d;
    memcpy(slot_of(c, i), &d, offsetof(struct bb_shm_slot, shm_done_gen));
}

/* Fill a slot's input with one byte value: identical inputs for dedup. */
static void fill_input(struct client *c, struct input *in)
{
    uint32_t i = (uint32_t)take(in, 1) % NSLOTS;
    uint8_t v = (uint8_t)take(in, 1);
    const struct bb_shm_slot *d = &c->last[i];
    if (d->in_off >= c->h.heap_off && d->in_off + d->in_len <= c->s.seg_size)
        memset(c->s.seg + d->in_off, v, d->in_len);
}

static void run(struct client *cl, struct input *in)
{
    while (in->left) {
        uint8_t op = (uint8_t)take(in, 1);
        struct client *c = &cl[(op >> 4) & 1];
        if (!c->ok)
            continue;
        switch (op % 9) {
        case 0:
            shaped_desc(c, in);
            break;
        case 1:
            push(c, (uint32_t)take(in, 1) % NSLOTS);
            break;
        case 2:
            push(c, ((uint32_t)take(in, 1) % NSLOTS) | BB_SQE_CANCEL);
            break;
        case 3:
            push(c, (uint32_t)take(in, 4)); /* any slot index, flags, lap */
            break;
        case 4: /* the client loses count: entries at the wrong place or lap */
            c->tail = (uint32_t)take(in, 4);
            break;
        case 5: {
            size_t off = (size_t)take(in, 4) % c->s.seg_size;
            size_t len = (size_t)take(in, 1);
            if (len > in->left)
                len = in->left;
            if (len > c->s.seg_size - off)
                len = c->s.seg_size - off;
            memcpy(c->s.seg + off, in->p, len);
            in->p += len;
            in->left -= len;
            break;
        }
        case 6:
            bbf_pass();
            break;
        case 7:
            fill_input(c, in);
            break;
        case 8: {
            uint32_t i = (uint32_t)take(in, 1) % NSLOTS;
            uint8_t raw[64] = {0};
            for (int k = 0; k < 64 && in->left; k++)
                raw[k] = (uint8_t)take(in, 1);
            memcpy(slot_of(c, i), raw, sizeof raw);
            break;
        }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct client cl[2];
    memset(cl, 0, sizeof cl);
    for (int i = 0; i < 2; i++) {
        if (!bbf_session_open(&cl[i].s) || !bbf_attach(&cl[i].s, NSLOTS))
            continue;
        memcpy(&cl[i].h, cl[i].s.seg, sizeof cl[i].h);
        cl[i].tail = 0;
        for (int m = 0; m < NMODELS; m++)
            bbf_model_open(&cl[i].s, models[m]);
        cl[i].ok = true;
    }
    struct input in = {.p = data, .left = size};
    run(cl, &in);
    bbf_pass();
    bbf_pass();
    for (int i = 0; i < 2; i++)
        if (cl[i].s.peer > 0)
            bbf_session_close(&cl[i].s);
    bbf_check_idle();
    return 0;
}
