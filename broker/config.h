/* Broker configuration: one table of keys drives parsing, validation, --help,
 * the docs and the config dump (see config.c). */
#ifndef BB_BROKER_CONFIG_H
#define BB_BROKER_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

#define BB_MAX_MODELS 64
#define BB_MAX_PARAMS 32
#define BB_MAX_IDS 32

struct bb__kv {
    char key[64];
    char value[256];
};

enum { BB__FORMATION_SHARED, BB__FORMATION_PER_WORKER };

#define BB_MAX_WEIGHTS 32

struct bb__weight {
    uint32_t uid, weight;
};

struct bb__model_config {
    char name[64];
    char backend[256];          /* built-in plugin name or path to a .so */
    char backend_origin[320];   /* where backend was set: "FILE:LINE", "-o ...", "default" */
    uint32_t max_batch_size;
    uint32_t max_wait_us;
    uint32_t instances;         /* executor threads; 0 = run in the dispatcher */
    uint32_t inline_max_us;     /* with executors: a shorter batch runs in the dispatcher */
    uint32_t inline_quiet_max_us; /* and a batch nothing would overlap, up to this long */
    uint32_t max_queue;
    uint32_t default_priority;  /* BB_PRIORITY_CRITICAL..LOW */
    uint32_t default_timeout_us;/* 0 = none */
    uint64_t max_request_bytes; /* input + output of one request; 0 = no limit */
    /* Scheduling (docs/scheduling.md). */
    uint32_t priorities;        /* 0 = one FIFO queue, 1 = four levels */
    uint32_t max_starvation_us; /* 0 = lower levels may wait forever */
    uint32_t drop_late;
    uint32_t max_queue_level[4];/* per level, 0 = only max_queue */
    uint32_t max_inflight_per_client; /* 0 = unlimited */
    uint32_t fairness;          /* round-robin across clients within a level */
    uint32_t fair_quantum;      /* consecutive requests of a client per round */
    char client_weights[256];   /* "uid:weight,..." */
    uint32_t dedup;
    uint32_t dedup_scope;       /* 0 global, 1 uid */
    uint32_t dedup_cache_entries;
    uint32_t dedup_ttl_ms;
    uint32_t dedup_memory_mb;   /* private copies: in-flight groups + cache */
    uint64_t dedup_max_request_bytes; /* larger requests are never deduplicated */
    uint64_t max_batch_bytes;   /* 0 = no limit */
    uint32_t memory_limit_mb;   /* 0 = no limit */
    char strategy[256];         /* throughput | latency | deadline | path to .so */
    /* Adaptive batch sizing (docs/adaptive.md). */
    uint32_t adaptive;
    uint32_t optimize;          /* 0 throughput, 1 latency */
    uint32_t latency_slo_us;    /* 0 = none */
    uint32_t adaptation_interval_ms;
    uint32_t hardware;          /* 0 auto, 1 cpu, 2 gpu */
    uint32_t formation;         /* BB__FORMATION_* */
    uint32_t auto_tune;
    uint32_t tune_duration_s;
    size_t nsparams;            /* strategy.* keys, for a custom strategy's init */
    struct bb__kv sparams[8];
    size_t nparams;
    struct bb__kv params[BB_MAX_PARAMS];
};

struct bb__broker_config {
    char socket_path[108];
    char plugin_dir[256];
    uint32_t spin_us;
    uint32_t doorbell;          /* 0 auto, 1 futex, 2 eventfd */
    uint32_t wake_offload_ms;   /* 0: the worker wakes its clients itself */
    uint32_t workers;           /* 0 = auto: one per NUMA node */
    uint32_t numa_fake_nodes;   /* 0 = the real topology */
    uint32_t max_clients;
    uint32_t default_segment_mb;
    uint32_t max_segment_mb;
    uint32_t default_max_inflight;
    uint32_t max_inflight;      /* upper bound on slots a client may ask for */
    /* Admission limits (admission.c, docs/operations.md). */
    uint32_t max_clients_per_uid;   /* 0 = max_clients less an eighth */
    uint32_t max_clients_per_pid;
    uint32_t hello_timeout_ms;
    uint32_t operator_idle_timeout_ms; /* 0 = never */
    uint32_t max_uid_slots;
    uint32_t max_uid_segment_mb;
    int log_level;              /* 0 error, 1 warn, 2 info, 3 debug */
    char metrics_listen[64];    /* "" = no HTTP server; see bb__config_listen_addr */
    uint32_t profile;           /* time the phases of batches */
    uint32_t profile_max_rate;  /* batches/s per model timed in full; 0 = no limit */
    size_t nuids, ngids;
    uid_t allowed_uids[BB_MAX_IDS];
    gid_t allowed_gids[BB_MAX_IDS];
    size_t nmodels;
    struct bb__model_config models[BB_MAX_MODELS];
};

/* Fill cfg with the defaults: the broker's own uid plus root allowed, and one
 * model "echo" served by the echo backend (used when no file is given). */
void bb__config_defaults(struct bb__broker_config *cfg);

/* Parse an INI file over the defaults (the default echo model is dropped as
 * soon as the file defines a model). On error returns -1 and writes
 * "FILE:LINE: message" to err. */
int bb__config_load(struct bb__broker_config *cfg, const char *path, char *err, size_t errlen);

/* client_weights = "uid:weight,uid:weight" (weight 1..1000): the pairs, at
 * most BB_MAX_WEIGHTS, into w and *n. Returns 0, or -1 with msg
 * ("client_weights: ..."). */
int bb__config_weights(const char *s, struct bb__weight *w, uint32_t *n, char *msg,
                       size_t msglen);

/* Apply "section.key=value" overrides from the command line (same validation). */
int bb__config_set(struct bb__broker_config *cfg, const char *section, const char *key,
                   const char *value, char *err, size_t errlen);

/* Write the effective configuration as INI. */
void bb__config_dump(const struct bb__broker_config *cfg, FILE *out);

/* How bb__config_help writes the key table. */
enum bb__help_format {
    BB__HELP_TEXT = 0,     /* --help: plain text for a terminal */
    BB__HELP_MARKDOWN = 1, /* the table of docs/configuration.md */
    BB__HELP_MAN = 2,      /* roff for the KEYS section of batchbroker.ini(5) */
};

/* Write every key with type, range, default and description. */
void bb__config_help(FILE *out, int format);

/* --config-reference[=FORMAT]: FORMAT NULL or "markdown", or "man". Returns
 * 0, or -1 for an unknown format (nothing written). */
int bb__config_reference(FILE *out, const char *format);

/* Cross-key checks that no single key can make: every model has a backend,
 * default_segment_mb <= max_segment_mb, default_max_inflight <= max_inflight.
 * bb__config_load runs it on the file's result; run it again after the
 * command-line overrides. Returns 0, or -1 with a message in err. */
int bb__config_check(const struct bb__broker_config *cfg, char *err, size_t errlen);

/* bb__config_set for one "-o" argument: "broker.KEY=VALUE" or
 * "model.NAME.KEY=VALUE" (NAME may contain '.'; the first split whose KEY
 * is a model key wins). A new model needs a backend before
 * bb__config_check passes. Returns 0, or -1 with "SECTION.KEY: message". */
int bb__config_set_arg(struct bb__broker_config *cfg, const char *arg, char *err, size_t errlen);

/* Parse [broker] metrics_listen: "" (off: returns 0), "PORT" (127.0.0.1),
 * "HOST:PORT" (HOST an IPv4 address, "localhost" or "*") or "[IPV6]:PORT".
 * Returns 1 with the address in *sa and *salen, 0 when empty, or -1 with
 * "metrics_listen: problem" in msg. */
int bb__config_listen_addr(const char *s, struct sockaddr_storage *sa, socklen_t *salen,
                           char *msg, size_t msglen);

/* The model called name, or NULL. Valid until cfg changes. */
struct bb__model_config *bb__config_model(struct bb__broker_config *cfg, const char *name);

/* Defaults, then the file (if any), then the -o overrides, then the cross-key
 * checks: the configuration the broker runs with. Returns 0 or -1 with err. */
int bb__config_build(struct bb__broker_config *cfg, const char *path, const char *const *overrides,
                     int noverrides, char *err, size_t errlen);

/* SIGHUP: copy the keys marked reloadable from next into cur (the running
 * configuration). The keys applied are listed in changed as
 * "SECTION.KEY OLD -> NEW, ..." ("" if none); changes that need a restart
 * (other keys, models added or removed, param.* keys) are listed in skipped
 * and not applied. Returns how many keys changed. */
int bb__config_reload(struct bb__broker_config *cur, const struct bb__broker_config *next,
                      char *changed, size_t changedlen, char *skipped, size_t skippedlen);

#endif
