/* Admission (admission.c): who may attach (the allow-lists), what the log
 * says when a connection is refused on either side, and the accounting of
 * what each admitted peer holds: the sessions of each uid and each process,
 * and the slots and segment bytes of each uid's attached clients, against the
 * [broker] limits that keep one peer from taking what the others need. */
#ifndef BB_BROKER_ADMISSION_H
#define BB_BROKER_ADMISSION_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "config.h"

/* Whether the peer (SO_PEERCRED) may attach: its uid in allowed_uids or its
 * gid in allowed_gids. A refusal is logged (rate-limited) with the ids and
 * the keys that would admit it. */
bool bb__admitted(const struct bb__broker_config *cfg, const struct ucred *cr);
/* The same check, silent (a reload revoking sessions logs its own line). */
bool bb__allowed(const struct bb__broker_config *cfg, const struct ucred *cr);

/* A client hung up on us because our uid is not one it trusts (its HELLO
 * carried BB_HELLO_DISTRUST): log what would make it trust us. */
void bb__admission_log_distrust(pid_t pid, uid_t uid);

/* One counter per uid and one per process, in one table: key is the uid, or
 * BB__ADM_PID | pid. A process entry counts sessions only. */
#define BB__ADM_PID (1ull << 32)

struct bb__adm_entry {
    uint64_t key;
    uint32_t sessions;         /* connecting, operator or attached */
    uint64_t slots, bytes;     /* uid entries: of its attached clients' segments */
};

/* Broker-wide, so a mutex: it is touched on connect, HELLO and the end of a
 * session only, never on the request path. */
struct bb__admission {
    pthread_mutex_t mu;
    struct bb__adm_entry *ents; /* at most two per session: its uid and its pid */
    uint32_t nents;
    uint32_t sessions, cap;    /* all of them; cap = max_clients */
};

int bb__admission_init(struct bb__admission *a, uint32_t max_clients);
void bb__admission_fini(struct bb__admission *a);

/* A new connection of uid from pid (0: unknown, e.g. another pid namespace,
 * counted by uid only). Returns 0 with the session counted, or BB_EMAXCLIENTS with
 * the limit's key in *why. */
int bb__admission_connect(struct bb__admission *a, const struct bb__broker_config *cfg,
                          uint32_t uid, pid_t pid, const char **why);

/* A HELLO: charge a segment of nslots slots and bytes to uid. Returns 0, or
 * BB_ENOMEM with the limit's key in *why. */
int bb__admission_attach(struct bb__admission *a, const struct bb__broker_config *cfg,
                         uint32_t uid, uint32_t nslots, uint64_t bytes, const char **why);

/* The process pid exited while one of its sessions lives on (another
 * process holds its socket): that session no longer counts against pid,
 * which the next process to get it may use. Once per session; the session's
 * release then passes pid 0. */
void bb__admission_forget_pid(struct bb__admission *a, pid_t pid);

/* The session ended: give back its place and whatever attach charged. */
void bb__admission_release(struct bb__admission *a, uint32_t uid, pid_t pid, uint32_t nslots,
                           uint64_t bytes);

#endif
