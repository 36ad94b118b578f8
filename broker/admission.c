/* Admission: who may attach, refusals explained in the log, and what each
 * admitted peer may hold.
 *
 * Both sides check the other (the broker its allow-lists, the client library
 * the broker's uid): whichever side refuses, the broker's log says what was
 * refused and which setting would allow it. Only numbers are logged: a name
 * lookup may go to the network (NSS), and this runs on the dispatcher.
 *
 * max_clients alone let one admitted process lock everybody else out (it
 * held every place with operator sessions or half-open connections), and one
 * HELLO could make the broker create a 65,536-slot segment per connection.
 * So every place and every byte of segment a session holds is charged to its
 * uid (and its place to its process too) from accept to the sweep that
 * destroys it, and refused beyond the [broker] limits. The table is a small
 * array searched linearly: it holds at most two entries per session and is
 * touched only when a session starts, attaches or ends. */
#include "admission.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "log.h"

static void id_list(char *buf, size_t len, const uint32_t *ids, size_t n)
{
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s%" PRIu32, i ? "," : "", ids[i]);
    }
    if (!n)
        snprintf(buf, len, "none");
}

bool bb__allowed(const struct bb__broker_config *cfg, const struct ucred *cr)
{
    for (size_t i = 0; i < cfg->nuids; i++)
        if (cfg->allowed_uids[i] == cr->uid)
            return true;
    for (size_t i = 0; i < cfg->ngids; i++)
        if (cfg->allowed_gids[i] == cr->gid)
            return true;
    return false;
}

bool bb__admitted(const struct bb__broker_config *cfg, const struct ucred *cr)
{
    if (bb__allowed(cfg, cr))
        return true;
    char uids[BB_MAX_IDS * 11 + 8], gids[BB_MAX_IDS * 11 + 8];
    id_list(uids, sizeof uids, cfg->allowed_uids, cfg->nuids);
    id_list(gids, sizeof gids, cfg->allowed_gids, cfg->ngids);
    bb_warn_limited("refused client pid %d: uid %u gid %u not allowed (allowed_uids = %s, "
            "allowed_gids = %s); to admit it, add uid %u to allowed_uids or gid %u to "
            "allowed_gids in [broker]",
            (int)cr->pid, (unsigned)cr->uid, (unsigned)cr->gid, uids, gids, (unsigned)cr->uid,
            (unsigned)cr->gid);
    return false;
}

void bb__admission_log_distrust(pid_t pid, uid_t uid)
{
    unsigned me = (unsigned)geteuid();
    bb_warn_limited("client pid %d (uid %u) refused this broker: the client library trusts only "
            "root, its own uid and the uids in its $BATCHBROKER_TRUSTED_UIDS, and this broker "
            "runs as uid %u; add %u to the client's BATCHBROKER_TRUSTED_UIDS, or run the "
            "broker as uid %u or root",
            (int)pid, (unsigned)uid, me, me, (unsigned)uid);
}

int bb__admission_init(struct bb__admission *a, uint32_t max_clients)
{
    pthread_mutex_init(&a->mu, NULL);
    a->cap = max_clients;
    a->nents = a->sessions = 0;
    a->ents = calloc(2 * (size_t)max_clients, sizeof *a->ents);
    return a->ents ? 0 : -1;
}

void bb__admission_fini(struct bb__admission *a)
{
    free(a->ents);
    a->ents = NULL;
    pthread_mutex_destroy(&a->mu);
}

/* The sessions one uid may hold: max_clients_per_uid, or when that is 0,
 * max_clients less an eighth of it (at least one place) kept for others. */
static uint32_t uid_cap(const struct bb__broker_config *cfg)
{
    if (cfg->max_clients_per_uid)
        return cfg->max_clients_per_uid;
    uint32_t reserve = cfg->max_clients / 8 ? cfg->max_clients / 8 : 1;
    return cfg->max_clients > reserve ? cfg->max_clients - reserve : cfg->max_clients;
}

static struct bb__adm_entry *entry(struct bb__admission *a, uint64_t key, int add)
{
    for (uint32_t i = 0; i < a->nents; i++)
        if (a->ents[i].key == key)
            return &a->ents[i];
    if (!add)
        return NULL;
    bb_assert(a->nents < 2 * a->cap, "two admission entries per session at most");
    a->ents[a->nents] = (struct bb__adm_entry){.key = key};
    return &a->ents[a->nents++];
}

/* An entry that counts nothing any more goes (the last one moves into the
 * gap). */
static void drop_if_idle(struct bb__admission *a, struct bb__adm_entry *e)
{
    if (e->sessions)
        return;
    bb_assert(e->slots == 0 && e->bytes == 0, "a uid without sessions holds no segment");
    *e = a->ents[--a->nents];
}

int bb__admission_connect(struct bb__admission *a, const struct bb__broker_config *cfg,
                          uint32_t uid, pid_t pid, const char **why)
{
    int rc = BB_EMAXCLIENTS;
    pthread_mutex_lock(&a->mu);
    struct bb__adm_entry *u = entry(a, uid, 0);
    struct bb__adm_entry *p = pid > 0 ? entry(a, BB__ADM_PID | (uint32_t)pid, 0) : NULL;
    if (a->sessions >= a->cap) {
        *why = "max_clients reached";
    } else if (u && u->sessions >= uid_cap(cfg)) {
        *why = cfg->max_clients_per_uid ? "max_clients_per_uid reached"
                                        : "max_clients_per_uid reached (the default keeps an "
                                          "eighth of max_clients for other uids)";
    } else if (p && p->sessions >= cfg->max_clients_per_pid) {
        *why = "max_clients_per_pid reached";
    } else {
        a->sessions++;
        entry(a, uid, 1)->sessions++;
        if (pid > 0)
            entry(a, BB__ADM_PID | (uint32_t)pid, 1)->sessions++;
        rc = 0;
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int bb__admission_attach(struct bb__admission *a, const struct bb__broker_config *cfg,
                         uint32_t uid, uint32_t nslots, uint64_t bytes, const char **why)
{
    int rc = BB_ENOMEM;
    pthread_mutex_lock(&a->mu);
    struct bb__adm_entry *u = entry(a, uid, 0);
    bb_assert(u, "a session that says HELLO was counted at connect");
    if (u->slots + nslots > cfg->max_uid_slots) {
        *why = "max_uid_slots";
    } else if (u->bytes + bytes > (uint64_t)cfg->max_uid_segment_mb << 20) {
        *why = "max_uid_segment_mb";
    } else {
        u->slots += nslots;
        u->bytes += bytes;
        rc = 0;
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

void bb__admission_forget_pid(struct bb__admission *a, pid_t pid)
{
    pthread_mutex_lock(&a->mu);
    struct bb__adm_entry *p = entry(a, BB__ADM_PID | (uint32_t)pid, 0);
    bb_assert(p && p->sessions > 0, "a process forgotten holds a session");
    p->sessions--;
    drop_if_idle(a, p);
    pthread_mutex_unlock(&a->mu);
}

void bb__admission_release(struct bb__admission *a, uint32_t uid, pid_t pid, uint32_t nslots,
                           uint64_t bytes)
{
    pthread_mutex_lock(&a->mu);
    struct bb__adm_entry *u = entry(a, uid, 0);
    bb_assert(u && u->sessions > 0 && u->slots >= nslots && u->bytes >= bytes,
              "a session gives back what it was charged, once");
    a->sessions--;
    u->sessions--;
    u->slots -= nslots;
    u->bytes -= bytes;
    drop_if_idle(a, u);
    struct bb__adm_entry *p = pid > 0 ? entry(a, BB__ADM_PID | (uint32_t)pid, 0) : NULL;
    if (p) {
        p->sessions--;
        drop_if_idle(a, p);
    }
    pthread_mutex_unlock(&a->mu);
}
