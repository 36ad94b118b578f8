/* Deduplication of identical inputs (same model, same bytes).
 *
 * The first request with a given input becomes a group's representative: the
 * broker copies its input into private memory and the backend reads that copy
 * and writes a private output buffer. Copies, because the group's result goes
 * to other clients: a client must not be able to change the input or the
 * output of a computation it shares by scribbling on its own segment. Later
 * identical requests join the group while it is queued or running, and when
 * the batch finishes the dispatcher copies the output to every member. The
 * result then stays in a small cache until dedup_ttl_ms passes. All private
 * copies together stay within dedup_memory_mb, and requests larger than
 * dedup_max_request_bytes are never deduplicated, so that no client can make
 * the broker allocate or hash without bound. When the
 * cache is full the oldest entry goes (insertion order, which is also expiry
 * order while dedup_ttl_ms stays the same; after a reload shortens it, a
 * lookup drops a stale entry that the expiry from the oldest end missed).
 *
 * Identity is the input (xxh3 hash *and* a byte-for-byte comparison) and the
 * output capacity, so that one outcome is right for every member; the test hook
 * BATCHBROKER_TEST_DEDUP_COLLIDE=1 makes every hash collide to prove that.
 *
 * Sharing is a timing side channel: a request answered from the cache or
 * riding on a twin comes back sooner, which tells its client that someone
 * submitted the same input recently. With dedup_scope = uid (the default)
 * only requests of one user share, so a user learns nothing about another's
 * inputs; each group and cache entry remembers its user. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "dedup.h"

#include "batchbroker/client.h"
#include "completion.h"
#include "model.h"
#include "mailbox.h"
#include "session.h"
#include "util_internal.h"
#include "worker.h"

#define GROUP_BUCKETS 1024u

struct bb__group {
    uint64_t hash;
    uint32_t uid;               /* of the client that started it: dedup_scope = uid */
    uint32_t in_len, out_cap;
    void *in, *out;
    struct bb__req *rep;        /* the member in the queue; NULL once running */
    struct bb__req *members;    /* via group_next, rep included */
    uint32_t nmembers;
    bool running;
    struct bb__group *hnext;
};

struct bb__cache_ent {
    uint64_t hash, expires_ns;
    uint32_t uid;
    uint32_t in_len, out_len;
    void *in, *out;
    struct bb__cache_ent *hnext, *prev, *next; /* hash chain; insertion order */
};

struct bb__dedup {
    struct bb__group *groups[GROUP_BUCKETS];
    uint64_t bytes;             /* private copies: groups' buffers + cache entries */
    struct bb__cache_ent **cache;
    uint32_t cmask, ncache;
    struct bb__cache_ent *mru, *lru;    /* newest, oldest */
    bool collide;
};

int bb__dedup_init(struct bb__model *m)
{
    struct bb__dedup *d = calloc(1, sizeof *d);
    if (!d)
        return -1;
    uint32_t n = 16;
    while (n < m->cfg.dedup_cache_entries && n < (1u << 20))
        n <<= 1;
    d->cache = calloc(n, sizeof *d->cache);
    if (!d->cache) {
        free(d);
        return -1;
    }
    d->cmask = n - 1;
    const char *hook = getenv("BATCHBROKER_TEST_DEDUP_COLLIDE");
    d->collide = hook && strcmp(hook, "1") == 0;
    if (d->collide)
        bb_warn("model %s: test hook BATCHBROKER_TEST_DEDUP_COLLIDE: every input hashes alike",
                m->cfg.name);
    m->dedup = d;
    return 0;
}

static void cache_unlink(struct bb__dedup *d, struct bb__cache_ent *e)
{
    d->bytes -= (uint64_t)e->in_len + e->out_len;
    struct bb__cache_ent **pp = &d->cache[e->hash & d->cmask];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->prev)
        e->prev->next = e->next;
    else
        d->mru = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        d->lru = e->prev;
    d->ncache--;
    free(e->in);
    free(e->out);
    free(e);
}

void bb__dedup_fini(struct bb__model *m)
{
    struct bb__dedup *d = m->dedup;
    if (!d)
        return;
    while (d->mru)
        cache_unlink(d, d->mru);
    for (uint32_t i = 0; i < GROUP_BUCKETS; i++)
        for (struct bb__group *g = d->groups[i], *next; g; g = next) {
            next = g->hnext;
            free(g->in);
            free(g->out);
            free(g);
        }
    free(d->cache);
    free(d);
    m->dedup = NULL;
}

void bb__dedup_expire_cache(struct bb__model *m, uint64_t now)
{
    struct bb__dedup *d = m->dedup;
    /* Entries are inserted with one TTL, so the oldest expire first (a
     * reload that shortens it leaves stale entries behind older ones: the
     * lookup in bb__dedup_submit drops those). */
    while (d && d->lru && d->lru->expires_ns <= now)
        cache_unlink(d, d->lru);
}

/* Answer member r of a group (or a cache hit) with the shared outcome and
 * give it back to its client's worker. t: the stamps of the batch that
 * computed the result (a cached result: all four are now). */
static void answer(struct bb__model *m, struct bb__req *r, int st, const void *out, uint32_t len,
                   const struct bb__stamps *t, bool profile)
{
    if (st == 0 && len > r->cl_out_cap)
        st = BB_ETOOBIG;
    if (st == 0 && len)
        memcpy(r->cl_out, out, len);
    /* Counted for the adaptive SLO and score as a batch entry is
     * (executor.c): the group's representative is no entry of its own. */
    bb__adaptive_done(&m->adapt, t->done > r->submit_ns ? t->done - r->submit_ns : 0);
    bb__finish(m, r, st, st == 0 ? len : 0, t, profile);
}

int bb__dedup_submit(struct bb__model *m, struct bb__req *r, uint64_t now)
{
    struct bb__dedup *d = m->dedup;
    uint64_t h = d->collide ? 0 : XXH3_64bits(r->in, r->in_len);
    uint32_t uid = r->cl->uid;
    bool any_uid = m->cfg.dedup_scope == 0;

    if (m->cfg.dedup_cache_entries) {
        bb__dedup_expire_cache(m, now);
        for (struct bb__cache_ent *e = d->cache[h & d->cmask], *next; e; e = next) {
            next = e->hnext;
            if (e->hash != h || (!any_uid && e->uid != uid) || e->in_len != r->in_len ||
                memcmp(e->in, r->in, r->in_len) != 0)
                continue;
            if (e->expires_ns <= now) {
                /* Stale behind an older entry with a longer TTL (a reload
                 * shortened dedup_ttl_ms): the expiry above did not reach it. */
                cache_unlink(d, e);
                continue;
            }
            bb__metrics_deduplicated(&m->metrics, 1);
            const struct bb__stamps at_intake = {now, now, now, now};
            answer(m, r, 0, e->out, e->out_len, &at_intake,
                   bb__metrics_time_answer(&m->metrics, m->w->profile));
            return 2;
        }
    }

    for (struct bb__group *g = d->groups[h & (GROUP_BUCKETS - 1)]; g; g = g->hnext) {
        /* Same input and same output capacity: then the one computation's
         * outcome, ETOOBIG included, is right for every member. */
        if (g->hash != h || (!any_uid && g->uid != uid) || g->in_len != r->in_len ||
            g->out_cap != r->cl_out_cap || memcmp(g->in, r->in, r->in_len) != 0)
            continue;
        r->group = g;
        r->group_next = g->members;
        g->members = r;
        g->nmembers++;
        if (g->running) {
            atomic_store_explicit(&r->state, BB__REQ_RUNNING, memory_order_relaxed);
        } else if (g->rep && r->level < g->rep->level) {
            /* A more urgent member represents the group from its own level. */
            struct bb__req *old = g->rep;
            bb__queue_remove(&m->q, old);
            atomic_store_explicit(&old->state, BB__REQ_GROUPED, memory_order_release);
            m->q.grouped++;
            r->in = g->in;
            r->out = g->out;
            r->out_cap = g->out_cap;
            g->rep = r;
            atomic_store_explicit(&r->state, BB__REQ_QUEUED, memory_order_release);
            bb__queue_push(&m->q, r, NULL);
            bb__deadline_push(&m->q, r);
        } else {
            atomic_store_explicit(&r->state, BB__REQ_GROUPED, memory_order_release);
            m->q.grouped++;
            bb__deadline_push(&m->q, r);
        }
        return 1;
    }

    /* A new group copies input and output capacity: within dedup_memory_mb,
     * making room by dropping the oldest cached results; else run as usual. */
    uint64_t need = (uint64_t)r->in_len + r->cl_out_cap;
    uint64_t budget = (uint64_t)m->cfg.dedup_memory_mb << 20;
    while (d->bytes + need > budget && d->lru)
        cache_unlink(d, d->lru);
    if (d->bytes + need > budget)
        return 3;
    struct bb__group *g = calloc(1, sizeof *g);
    if (!g)
        return BB_ENOMEM;
    g->in = malloc(r->in_len ? r->in_len : 1);
    g->out = malloc(r->cl_out_cap ? r->cl_out_cap : 1);
    if (!g->in || !g->out) {
        free(g->in);
        free(g->out);
        free(g);
        return BB_ENOMEM;
    }
    memcpy(g->in, r->in, r->in_len);
    d->bytes += need;
    g->hash = h;
    g->uid = uid;
    g->in_len = r->in_len;
    g->out_cap = r->cl_out_cap;
    g->rep = g->members = r;
    g->nmembers = 1;
    g->hnext = d->groups[h & (GROUP_BUCKETS - 1)];
    d->groups[h & (GROUP_BUCKETS - 1)] = g;
    r->group = g;
    r->group_next = NULL;
    r->in = g->in;
    r->out = g->out;
    r->out_cap = g->out_cap;
    return 0;
}

static void group_free(struct bb__dedup *d, struct bb__group *g)
{
    if (g->in) /* the cache may have taken the buffers over */
        d->bytes -= (uint64_t)g->in_len + g->out_cap;
    struct bb__group **pp = &d->groups[g->hash & (GROUP_BUCKETS - 1)];
    while (*pp != g)
        pp = &(*pp)->hnext;
    *pp = g->hnext;
    free(g->in);
    free(g->out);
    free(g);
}

void bb__dedup_leave(struct bb__model *m, struct bb__req *r)
{
    struct bb__group *g = r->group;
    struct bb__req **pp = &g->members;
    while (*pp != r)
        pp = &(*pp)->group_next;
    *pp = r->group_next;
    g->nmembers--;
    r->group = NULL;
    r->group_next = NULL;
    if (atomic_load_explicit(&r->state, memory_order_relaxed) == BB__REQ_GROUPED)
        m->q.grouped--;
    if (g->rep == r) {
        g->rep = NULL;
        /* Promote the most urgent member (highest level, then the oldest): it
         * takes the representative's place in its own level, with its own
         * deadline (it is in the deadline heap already). */
        struct bb__req *nr = NULL;
        for (struct bb__req *q = g->members; q; q = q->group_next)
            if (!nr || q->level < nr->level || (q->level == nr->level && q->enq_ns < nr->enq_ns))
                nr = q;
        if (nr) {
            m->q.grouped--;
            nr->in = g->in;
            nr->out = g->out;
            nr->out_cap = g->out_cap;
            atomic_store_explicit(&nr->state, BB__REQ_QUEUED, memory_order_release);
            bb__queue_push(&m->q, nr, NULL);
            g->rep = nr;
        }
    }
    if (g->nmembers == 0 && !g->running)
        group_free(m->dedup, g);
}

void bb__dedup_dispatched(struct bb__model *m, struct bb__group *g)
{
    g->running = true;
    g->rep = NULL;
    for (struct bb__req *r = g->members; r; r = r->group_next) {
        if (atomic_load_explicit(&r->state, memory_order_relaxed) != BB__REQ_GROUPED)
            continue;
        bb__deadline_remove(&m->q, r);
        m->q.grouped--;
        atomic_store_explicit(&r->state, BB__REQ_RUNNING, memory_order_relaxed);
    }
}

void bb__dedup_complete(struct bb__model *m, struct bb__group *g, int status, size_t out_len,
                        const struct bb__stamps *t, bool profile)
{
    uint64_t end_ns = t->end;
    struct bb__dedup *d = m->dedup;
    /* One member's computation answers them all: the others are what
     * deduplication saved (counted now, not when they joined: a member
     * may leave before the batch, or be promoted and compute itself). */
    bb__metrics_deduplicated(&m->metrics, g->nmembers - 1);
    for (struct bb__req *r = g->members, *next; r; r = next) {
        next = r->group_next;
        r->group = NULL;
        r->group_next = NULL;
        r->cl->cm[m->id].inflight--;
        m->bytes -= r->bytes;
        answer(m, r, status, g->out, (uint32_t)out_len, t, profile);
    }
    g->members = NULL;
    g->nmembers = 0;
    uint64_t ttl = (uint64_t)m->cfg.dedup_ttl_ms * 1000000ull;
    if (status == 0 && m->cfg.dedup_cache_entries && ttl) {
        struct bb__cache_ent *e = calloc(1, sizeof *e);
        void *out = e ? realloc(g->out, out_len ? out_len : 1) : NULL; /* keep what is used */
        if (out)
            g->out = out;
        if (e && out) {
            /* The group's charge becomes the entry's, which is smaller. */
            d->bytes -= (uint64_t)g->in_len + g->out_cap;
            d->bytes += (uint64_t)g->in_len + out_len;
            e->hash = g->hash;
            e->uid = g->uid;
            e->in_len = g->in_len;
            e->out_len = (uint32_t)out_len;
            e->in = g->in;
            e->out = g->out;
            e->expires_ns = end_ns + ttl;
            g->in = g->out = NULL; /* the cache owns them now */
            struct bb__cache_ent **b = &d->cache[e->hash & d->cmask];
            e->hnext = *b;
            *b = e;
            e->next = d->mru;
            if (d->mru)
                d->mru->prev = e;
            d->mru = e;
            if (!d->lru)
                d->lru = e;
            if (++d->ncache > m->cfg.dedup_cache_entries)
                cache_unlink(d, d->lru);
        } else {
            free(e);
        }
    }
    group_free(d, g);
}
