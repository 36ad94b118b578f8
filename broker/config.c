/* Broker configuration. Every key lives in one table (bb__keys) that drives
 * parsing, range checks, defaults, --help, the markdown in
 * docs/configuration.md and the INI dump, so the five cannot drift apart
 * (the shape of Redis' static_configs[]).
 *
 * inih does the key = value lexing, but this file feeds it lines through its
 * own reader because inih alone gets three things wrong for us: it gives the
 * handler no line number, it truncates section names to 49 bytes (a
 * [model.NAME] header may need 69), and it never tells the handler about a
 * section that has no keys (which we must reject when it lacks a backend). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <sys/stat.h>
#include <ini.h>
#include <netinet/in.h>

#include "batchbroker/client.h"
#include "log.h"
#include "socket_path.h"

enum bb__ctype {
    BB__CT_UINT,    /* decimal, stored in a 4- or 8-byte unsigned member */
    BB__CT_BYTES,   /* like UINT, with an optional K, M or G (x1024) suffix */
    BB__CT_STRING,  /* min..max is the length in bytes */
    BB__CT_ENUM,    /* one of names[], or its number min..max */
    BB__CT_UIDS,    /* comma-separated uids or user names */
    BB__CT_GIDS,    /* comma-separated gids or group names */
    BB__CT_PARAM,   /* "param.*": any key, kept for the backend */
    BB__CT_LISTEN,  /* a string: empty, PORT or HOST:PORT (bb__config_listen_addr) */
    BB__CT_WEIGHTS, /* a string: uid:weight pairs (bb__config_weights) */
};

enum bb__csect { BB__SEC_NONE, BB__SEC_BROKER, BB__SEC_MODEL };

struct bb__config_key {
    enum bb__csect section;
    const char *name;
    enum bb__ctype type;
    size_t offset, size;        /* the member inside the section's struct */
    uint64_t min, max;
    const char *def;            /* parsed like a file value; NULL = none or computed */
    const char *def_help;       /* how --help shows a computed default */
    const char *const *names;   /* BB__CT_ENUM: names of min, min+1, ... */
    int reloadable;
    const char *desc;
};

/* Where a key's value lives: offset and size of the member. */
#define BB__BROKER(f) offsetof(struct bb__broker_config, f), sizeof(((struct bb__broker_config *)0)->f)
#define BB__MODEL(f) offsetof(struct bb__model_config, f), sizeof(((struct bb__model_config *)0)->f)
/* A configuration file is at most this big (bb__config_build). */
#define CONFIG_MAX_BYTES (1 << 20)
#define BB__STR(s) #s
#define BB__XSTR(s) BB__STR(s)

static const char *const bb__log_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const bb__prio_names[] = {"critical", "high", "normal", "low", NULL};
static const char *const bb__onoff_names[] = {"off", "on", NULL};
static const char *const bb__optimize_names[] = {"throughput", "latency", NULL};
static const char *const bb__hardware_names[] = {"auto", "cpu", "gpu", NULL};
static const char *const bb__formation_names[] = {"shared", "per_worker", NULL};
static const char *const bb__doorbell_names[] = {"auto", "futex", "eventfd", NULL};
static const char *const bb__scope_names[] = {"global", "uid", NULL};

/* Rows: section, name, type, member, min, max, default, default shown by
 * --help when it is computed, enum names, reloadable, description. */
static const struct bb__config_key bb__keys[] = {
    {BB__SEC_BROKER, "socket", BB__CT_STRING, BB__BROKER(socket_path), 1, 107, NULL,
     "$XDG_RUNTIME_DIR/batchbroker.sock; as root /run/batchbroker/batchbroker.sock; else "
     "/tmp/batchbroker-UID/batchbroker.sock", NULL, 0,
     "Path of the Unix control socket that clients connect to. The default is in a directory "
     "only the broker's user can create entries in (docs/operations.md)."},
    {BB__SEC_BROKER, "plugin_dir", BB__CT_STRING, BB__BROKER(plugin_dir), 0, 255, "", NULL, NULL, 0,
     "Directory of the backend plugins named without a path; empty means "
     "$BATCHBROKER_PLUGIN_DIR, else the built-in location."},
    {BB__SEC_BROKER, "spin_us", BB__CT_UINT, BB__BROKER(spin_us), 0, 1000000, "50", NULL, NULL, 1,
     "How long a worker busy-polls its rings (and an idle executor its queue) before it "
     "sleeps; 0 = never spin. A spin that keeps missing its work is skipped until one would "
     "have caught it, and every spin for a second after yields let another task hold the "
     "CPU well past spin_us (a busy host; docs/architecture.md)."},
    {BB__SEC_BROKER, "workers", BB__CT_UINT, BB__BROKER(workers), 0, 64, "auto", NULL, NULL, 0,
     "Dispatcher workers: auto = one per NUMA node; N = N workers over the nodes in turn. "
     "Each serves the clients of its node (shared out evenly among a node's workers); a "
     "model's batches still span every client, unless its formation = per_worker."},
    {BB__SEC_BROKER, "numa_fake_nodes", BB__CT_UINT, BB__BROKER(numa_fake_nodes), 0, 64, "0",
     NULL, NULL, 0,
     "For testing: pretend the CPUs form this many NUMA nodes (pins threads to those "
     "groups, binds no memory); 0 = the machine's real topology."},
    {BB__SEC_BROKER, "doorbell", BB__CT_ENUM, BB__BROKER(doorbell), 0, 2, "auto", NULL,
     bb__doorbell_names, 0,
     "How clients wake a sleeping worker: futex = one io_uring FUTEX_WAIT per worker "
     "(Linux 6.7+), eventfd = one eventfd read per client; auto = futex when the kernel "
     "has it."},
    {BB__SEC_BROKER, "wake_offload_ms", BB__CT_UINT, BB__BROKER(wake_offload_ms), 0, 60000, "0",
     NULL, NULL, 0,
     "0 = each worker wakes its sleeping clients itself. N = a kernel thread per worker "
     "(io_uring SQPOLL; Linux 6.7+) makes those wake-ups, polling for them at least N ms "
     "after the last (in whole clock ticks), then sleeping: the worker only queues them. "
     "For many sleeping clients on a machine with CPUs to spare, where the worker's "
     "wake-ups bound throughput (docs/architecture.md)."},
    {BB__SEC_BROKER, "max_clients", BB__CT_UINT, BB__BROKER(max_clients), 1, 4096, "256", NULL,
     NULL, 0, "Most clients attached at once; further connections are refused."},
    {BB__SEC_BROKER, "default_segment_mb", BB__CT_UINT, BB__BROKER(default_segment_mb), 1, 4096,
     "64", NULL, NULL, 0,
     "Shared-memory segment size (MiB) of a client that does not ask for one; "
     "at most max_segment_mb."},
    {BB__SEC_BROKER, "max_segment_mb", BB__CT_UINT, BB__BROKER(max_segment_mb), 1, 65536, "1024",
     NULL, NULL, 0, "Largest segment (MiB) a client may ask for."},
    {BB__SEC_BROKER, "default_max_inflight", BB__CT_UINT, BB__BROKER(default_max_inflight), 1,
     1048576, "1024", NULL, NULL, 0,
     "Request slots of a client that does not ask for a number; at most max_inflight."},
    {BB__SEC_BROKER, "max_inflight", BB__CT_UINT, BB__BROKER(max_inflight), 1, 1048576, "65536",
     NULL, NULL, 0, "Most request slots a client may ask for."},
    {BB__SEC_BROKER, "max_clients_per_uid", BB__CT_UINT, BB__BROKER(max_clients_per_uid), 0,
     4096, "0", NULL, NULL, 1,
     "Sessions (clients, operators, connections still in their handshake) one uid may hold; "
     "0 = max_clients less an eighth of it, so that one uid cannot take every place."},
    {BB__SEC_BROKER, "max_clients_per_pid", BB__CT_UINT, BB__BROKER(max_clients_per_pid), 1,
     4096, "64", NULL, NULL, 1,
     "Sessions one process may hold (a peer in another pid namespace counts by uid only)."},
    {BB__SEC_BROKER, "hello_timeout_ms", BB__CT_UINT, BB__BROKER(hello_timeout_ms), 10, 600000,
     "2000", NULL, NULL, 1, "A connection that has not said HELLO by then is dropped."},
    {BB__SEC_BROKER, "operator_idle_timeout_ms", BB__CT_UINT,
     BB__BROKER(operator_idle_timeout_ms), 0, 86400000, "60000", NULL, NULL, 1,
     "An operator session (bbctl) that sends nothing for this long is dropped; 0 = never. "
     "Attached clients are never dropped for being idle."},
    {BB__SEC_BROKER, "max_uid_slots", BB__CT_UINT, BB__BROKER(max_uid_slots), 1, 1u << 30,
     "262144", NULL, NULL, 1,
     "Request slots all attached clients of one uid may hold together; a HELLO past it fails "
     "with BB_ENOMEM."},
    {BB__SEC_BROKER, "max_uid_segment_mb", BB__CT_UINT, BB__BROKER(max_uid_segment_mb), 1,
     16777216, "16384", NULL, NULL, 1,
     "Segment memory (MiB) all attached clients of one uid may hold together; a HELLO past it "
     "fails with BB_ENOMEM."},
    {BB__SEC_BROKER, "log_level", BB__CT_ENUM, BB__BROKER(log_level), 0, 3, "info", NULL,
     bb__log_names, 1, "Least severe message that is logged."},
    {BB__SEC_BROKER, "allowed_uids", BB__CT_UIDS, BB__BROKER(allowed_uids), 0, BB_MAX_IDS, NULL,
     "broker's uid,0", NULL, 1,
     "Users allowed to attach: uids or user names, comma-separated."},
    {BB__SEC_BROKER, "metrics_listen", BB__CT_LISTEN, BB__BROKER(metrics_listen), 0, 63, "",
     NULL, NULL, 0,
     "Serve Prometheus metrics over HTTP at /metrics on this address: PORT (on 127.0.0.1), "
     "HOST:PORT (HOST an IPv4 address, localhost, or * for every interface) or [IPV6]:PORT; "
     "empty = no HTTP server."},
    {BB__SEC_BROKER, "profile", BB__CT_ENUM, BB__BROKER(profile), 0, 1, "on", NULL,
     bb__onoff_names, 1,
     "Time the phases of batches (queue wait, formation, backend, delivery) for the "
     "metrics, bb_model_stats and bbctl profile: two clock reads a timed batch (see "
     "profile_max_rate)."},
    {BB__SEC_BROKER, "profile_max_rate", BB__CT_UINT, BB__BROKER(profile_max_rate), 0,
     100000000, "100000", NULL, NULL, 1,
     "Batches a second per model the profiler times every one of; a model that cuts more "
     "has one batch in 2, 4, ... 64 timed, so that profiling costs the dispatcher little "
     "however small the batches; 0 = time every batch."},
    {BB__SEC_BROKER, "allowed_gids", BB__CT_GIDS, BB__BROKER(allowed_gids), 0, BB_MAX_IDS, "",
     NULL, NULL, 1,
     "Groups whose members (by the gid SO_PEERCRED reports) may also attach: gids or "
     "group names, comma-separated; empty = no group-based admission."},

    {BB__SEC_MODEL, "backend", BB__CT_STRING, BB__MODEL(backend), 1, 255, NULL, "required", NULL,
     0, "Backend plugin: the name of one in plugin_dir (NAME loads bb_backend_NAME.so; "
        "batchbroker --help lists those there) or a path to a .so."},
    {BB__SEC_MODEL, "max_batch_size", BB__CT_UINT, BB__MODEL(max_batch_size), 1, 65536, "32", NULL,
     NULL, 0, "Most requests in one batch."},
    {BB__SEC_MODEL, "max_wait_us", BB__CT_UINT, BB__MODEL(max_wait_us), 0, 10000000, "1000", NULL,
     NULL, 1, "Longest the oldest queued request waits for its batch to fill."},
    {BB__SEC_MODEL, "instances", BB__CT_UINT, BB__MODEL(instances), 0, 64, "1", NULL, NULL, 0,
     "Backend executor threads; 0 = the backend runs in the dispatcher thread."},
    {BB__SEC_MODEL, "inline_max_us", BB__CT_UINT, BB__MODEL(inline_max_us), 0, 1000, "2", NULL,
     NULL, 1,
     "With executors: a synchronous batch expected to take at most this runs in the dispatcher "
     "while every executor is idle, saving the hand-off; 0 = always hand batches over."},
    {BB__SEC_MODEL, "inline_quiet_max_us", BB__CT_UINT, BB__MODEL(inline_quiet_max_us), 0,
     1000000, "1000", NULL, NULL, 1,
     "With executors: a synchronous batch that takes every queued request of a model whose "
     "last 8 batches ran with nothing arriving meanwhile (a closed loop that the batch holds "
     "whole) runs in the dispatcher if expected to take at most this, saving the hand-off; "
     "0 = never."},
    {BB__SEC_MODEL, "max_queue", BB__CT_UINT, BB__MODEL(max_queue), 1, 1048576, "4096", NULL, NULL,
     1, "Queued requests beyond which submissions fail at once with BB_EBUSY."},
    {BB__SEC_MODEL, "default_priority", BB__CT_ENUM, BB__MODEL(default_priority),
     BB_PRIORITY_CRITICAL, BB_PRIORITY_LOW, "normal", NULL, bb__prio_names, 1,
     "Priority of requests submitted with BB_PRIORITY_DEFAULT."},
    {BB__SEC_MODEL, "default_timeout_us", BB__CT_UINT, BB__MODEL(default_timeout_us), 0,
     3600000000u, "0", NULL, NULL, 1,
     "Deadline of requests submitted without a timeout; 0 = none."},
    {BB__SEC_MODEL, "max_request_bytes", BB__CT_BYTES, BB__MODEL(max_request_bytes), 0, 4ull << 30,
     "16M", NULL, NULL, 1,
     "Largest input + output of one request; 0 = no limit. The default bounds how long one "
     "request can hold a model that other clients share."},
    {BB__SEC_MODEL, "priorities", BB__CT_ENUM, BB__MODEL(priorities), 0, 1, "on", NULL,
     bb__onoff_names, 0,
     "Four priority levels (critical > high > normal > low); off = one FIFO queue."},
    {BB__SEC_MODEL, "max_starvation_us", BB__CT_UINT, BB__MODEL(max_starvation_us), 0,
     3600000000u, "100000", NULL, NULL, 1,
     "Longest a request waits behind higher levels before it is served as critical; "
     "0 = no limit."},
    {BB__SEC_MODEL, "drop_late", BB__CT_ENUM, BB__MODEL(drop_late), 0, 1, "off", NULL,
     bb__onoff_names, 1,
     "Fail with BB_ETIMEDOUT, before it runs, a request that cannot finish by its deadline "
     "given the expected batch latency."},
    {BB__SEC_MODEL, "max_queue_critical", BB__CT_UINT, BB__MODEL(max_queue_level[0]), 0, 1048576,
     "0", NULL, NULL, 1, "Queued critical requests beyond which BB_EBUSY; 0 = only max_queue."},
    {BB__SEC_MODEL, "max_queue_high", BB__CT_UINT, BB__MODEL(max_queue_level[1]), 0, 1048576,
     "0", NULL, NULL, 1, "Same for high."},
    {BB__SEC_MODEL, "max_queue_normal", BB__CT_UINT, BB__MODEL(max_queue_level[2]), 0, 1048576,
     "0", NULL, NULL, 1, "Same for normal."},
    {BB__SEC_MODEL, "max_queue_low", BB__CT_UINT, BB__MODEL(max_queue_level[3]), 0, 1048576,
     "0", NULL, NULL, 1, "Same for low."},
    {BB__SEC_MODEL, "max_inflight_per_client", BB__CT_UINT, BB__MODEL(max_inflight_per_client),
     0, 1048576, "1024", NULL, NULL, 1,
     "Queued + running requests one client may have on this model before BB_EBUSY; "
     "0 = unlimited. The default is a quarter of the default max_queue, so that one client "
     "cannot fill a shared queue alone."},
    {BB__SEC_MODEL, "fairness", BB__CT_ENUM, BB__MODEL(fairness), 0, 1, "on", NULL,
     bb__onoff_names, 0,
     "Within a level, requests without a deadline are taken round-robin across clients."},
    {BB__SEC_MODEL, "fair_quantum", BB__CT_UINT, BB__MODEL(fair_quantum), 1, 65536, "8", NULL,
     NULL, 1,
     "Fair queueing serves up to this many consecutive requests of a client per round: a "
     "batch then holds fewer clients, each woken once."},
    {BB__SEC_MODEL, "client_weights", BB__CT_WEIGHTS, BB__MODEL(client_weights), 0, 255, "", NULL,
     NULL, 0,
     "Weighted round-robin: uid:weight pairs, comma-separated (weight 1..1000, default 1)."},
    {BB__SEC_MODEL, "dedup", BB__CT_ENUM, BB__MODEL(dedup), 0, 1, "off", NULL, bb__onoff_names, 1,
     "Deduplicate identical inputs for every request (else only with BB_SUBMIT_DEDUP)."},
    {BB__SEC_MODEL, "dedup_scope", BB__CT_ENUM, BB__MODEL(dedup_scope), 0, 1, "uid", NULL,
     bb__scope_names, 1,
     "Who shares computations and cached results: uid = only requests of the same user (a "
     "cache hit answers much sooner, so sharing across users tells one user what another "
     "submitted); global = every client of the model."},
    {BB__SEC_MODEL, "dedup_cache_entries", BB__CT_UINT, BB__MODEL(dedup_cache_entries), 0,
     1048576, "1024", NULL, NULL, 0, "Completed results kept for reuse; 0 = no cache."},
    {BB__SEC_MODEL, "dedup_memory_mb", BB__CT_UINT, BB__MODEL(dedup_memory_mb), 0, 65536, "64",
     NULL, NULL, 1,
     "Most memory (MiB) of the broker's private copies for deduplication, in-flight groups "
     "and cached results together; past it the oldest cached results go, and requests "
     "that would need more run without deduplication."},
    {BB__SEC_MODEL, "dedup_max_request_bytes", BB__CT_BYTES, BB__MODEL(dedup_max_request_bytes),
     0, 1ull << 32, "1M", NULL, NULL, 1,
     "Input + output of the largest request that is deduplicated (hashing and copying it "
     "costs the dispatcher); larger ones run as usual."},
    {BB__SEC_MODEL, "dedup_ttl_ms", BB__CT_UINT, BB__MODEL(dedup_ttl_ms), 0, 86400000, "1000",
     NULL, NULL, 1, "How long a cached result is served."},
    {BB__SEC_MODEL, "max_batch_bytes", BB__CT_BYTES, BB__MODEL(max_batch_bytes), 0, 1ull << 40,
     "0", NULL, NULL, 1,
     "Most input + output bytes in one batch (a larger request fails with BB_ETOOBIG); "
     "0 = no limit."},
    {BB__SEC_MODEL, "memory_limit_mb", BB__CT_UINT, BB__MODEL(memory_limit_mb), 0, 1048576, "0",
     NULL, NULL, 1,
     "Most input + output bytes (MiB) queued and running on the model; beyond it BB_EBUSY, "
     "a single larger request BB_ETOOBIG; 0 = no limit."},
    {BB__SEC_MODEL, "strategy", BB__CT_STRING, BB__MODEL(strategy), 1, 255, "throughput", NULL,
     NULL, 0, "Batching strategy: throughput, latency, deadline, or a path to a strategy .so."},
    {BB__SEC_MODEL, "adaptive", BB__CT_ENUM, BB__MODEL(adaptive), 0, 1, "on", NULL,
     bb__onoff_names, 1,
     "Let the broker pick the batch target and wait from a fitted model of the backend "
     "(bounded by max_batch_size and max_wait_us; never more than the requests that recently "
     "queued at once); "
     "off = always max_batch_size and max_wait_us."},
    {BB__SEC_MODEL, "optimize", BB__CT_ENUM, BB__MODEL(optimize), 0, 1, "throughput", NULL,
     bb__optimize_names, 1,
     "Adaptive goal: throughput grows batches while latency_slo_us holds; latency keeps "
     "them as small as the load allows."},
    {BB__SEC_MODEL, "latency_slo_us", BB__CT_UINT, BB__MODEL(latency_slo_us), 0, 3600000000u, "0",
     NULL, NULL, 1, "Target p99 from submit to completion for the adaptive controller; 0 = none."},
    {BB__SEC_MODEL, "adaptation_interval_ms", BB__CT_UINT, BB__MODEL(adaptation_interval_ms), 1,
     60000, "100", NULL, NULL, 1, "How often the adaptive controller re-decides."},
    {BB__SEC_MODEL, "hardware", BB__CT_ENUM, BB__MODEL(hardware), 0, 2, "auto", NULL,
     bb__hardware_names, 0,
     "Adaptive starting batch target: cpu 32, gpu 128, auto asks the backend. A cpu model with several executors shares a cut among the idle ones; a gpu model never splits one."},
    {BB__SEC_MODEL, "formation", BB__CT_ENUM, BB__MODEL(formation), 0, 1, "shared", NULL,
     bb__formation_names, 0,
     "shared = one queue across the clients of every worker, batches formed on the model's "
     "home worker; per_worker = each dispatcher worker batches its own clients' requests "
     "with backend instances of its own (instances, max_queue and memory_limit_mb apply per "
     "worker), so one model's batches form in parallel but never mix workers. For CPU "
     "backends at rates one dispatcher cannot form; never for a GPU model."},
    {BB__SEC_MODEL, "auto_tune", BB__CT_ENUM, BB__MODEL(auto_tune), 0, 1, "off", NULL,
     bb__onoff_names, 0,
     "Sweep batch sizes 1, 2, 4, ... in the first tune_duration_s of traffic to learn "
     "the backend fast."},
    {BB__SEC_MODEL, "tune_duration_s", BB__CT_UINT, BB__MODEL(tune_duration_s), 1, 3600, "5", NULL,
     NULL, 0, "Length of the auto_tune sweep."},
    {BB__SEC_MODEL, "strategy.*", BB__CT_PARAM, 0, 0, 0, 255, NULL, "none", NULL, 0,
     "Handed to a custom strategy's init without the \"strategy.\" prefix (at most 8)."},
    {BB__SEC_MODEL, "param.*", BB__CT_PARAM, 0, 0, 0, 255, NULL, "none", NULL, 0,
     "Handed to the backend's init without the \"param.\" prefix, uninterpreted "
     "(name 1..63 bytes, at most " BB__XSTR(BB_MAX_PARAMS) " per model)."},
};

#define BB__NKEYS (sizeof bb__keys / sizeof bb__keys[0])
#define BB__PARAM_PREFIX "param."

static const struct bb__config_key *bb__key_find(enum bb__csect section, const char *name)
{
    for (size_t i = 0; i < BB__NKEYS; i++) {
        const struct bb__config_key *k = &bb__keys[i];
        if (k->section != section)
            continue;
        /* A PARAM row "prefix.*" matches every key that starts with "prefix.". */
        if (k->type == BB__CT_PARAM ? strncmp(name, k->name, strlen(k->name) - 1) == 0
                                    : strcmp(name, k->name) == 0)
            return k;
    }
    return NULL;
}

/* ---- values ---------------------------------------------------------------- */

/* Decimal only, and nothing strtoull would quietly accept: no sign, no
 * leading blanks, no trailing junk, no wrap-around. */
static int bb__parse_u64(const char *key, const char *s, uint64_t *out, int bytes, char *msg,
                         size_t msglen)
{
    if (*s == '-') {
        snprintf(msg, msglen, "%s: '%s' must not be negative", key, s);
        return -1;
    }
    if (!isdigit((unsigned char)*s)) {
        snprintf(msg, msglen, "%s: '%s' is not a number", key, s);
        return -1;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE) {
        snprintf(msg, msglen, "%s: '%s' is too large", key, s);
        return -1;
    }
    static const char units[] = "KMG";
    unsigned shift = 0;
    if (bytes && *end) {
        const char *unit = strchr(units, toupper((unsigned char)*end));
        if (unit && end[1] == '\0') {
            shift = 10u * (unsigned)(unit - units + 1);
            end++;
        }
    }
    if (*end) {
        snprintf(msg, msglen, "%s: '%s' is not a number (junk after the digits: '%s')", key, s,
                 end);
        return -1;
    }
    if (shift && v > (UINT64_MAX >> shift)) {
        snprintf(msg, msglen, "%s: '%s' is too large", key, s);
        return -1;
    }
    *out = (uint64_t)v << shift;
    return 0;
}

static void bb__store_uint(void *p, size_t size, uint64_t v)
{
    if (size == sizeof(uint64_t)) {
        memcpy(p, &v, sizeof v);
    } else {
        bb_assert(size == sizeof(uint32_t), "config table: numeric members are 4 or 8 bytes");
        uint32_t v32 = (uint32_t)v;
        memcpy(p, &v32, sizeof v32);
    }
}

static uint64_t bb__load_uint(const void *p, size_t size)
{
    if (size == sizeof(uint64_t)) {
        uint64_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    uint32_t v32;
    memcpy(&v32, p, sizeof v32);
    return v32;
}

/* A name can look like a number ("123" as a user name); like chown, digits
 * win. */
static int bb__parse_ids(const struct bb__config_key *k, const char *s, uint32_t *ids, size_t *n,
                         char *msg, size_t msglen)
{
    int is_uid = k->type == BB__CT_UIDS;
    char item[256];
    *n = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        const char *next = s[len] ? s + len + 1 : s + len;
        while (len && isspace((unsigned char)*s)) {
            s++;
            len--;
        }
        while (len && isspace((unsigned char)s[len - 1]))
            len--;
        if (len == 0 || len >= sizeof item) {
            snprintf(msg, msglen, "%s: %s entry in '%s'", k->name, len ? "overlong" : "empty", s);
            return -1;
        }
        memcpy(item, s, len);
        item[len] = '\0';
        if (*n == BB_MAX_IDS) {
            snprintf(msg, msglen, "%s: more than %d entries", k->name, BB_MAX_IDS);
            return -1;
        }
        uint64_t v;
        if (isdigit((unsigned char)item[0])) {
            if (bb__parse_u64(k->name, item, &v, 0, msg, msglen) < 0)
                return -1;
            /* (uid_t)-1 means "no change" to the kernel, never a peer. */
            if (v >= UINT32_MAX) {
                snprintf(msg, msglen, "%s: '%s' is out of range (0..%" PRIu32 ")", k->name, item,
                         UINT32_MAX - 1);
                return -1;
            }
        } else if (is_uid) {
            const struct passwd *pw = getpwnam(item);
            if (!pw) {
                snprintf(msg, msglen, "%s: unknown user '%s'", k->name, item);
                return -1;
            }
            v = pw->pw_uid;
        } else {
            const struct group *gr = getgrnam(item);
            if (!gr) {
                snprintf(msg, msglen, "%s: unknown group '%s'", k->name, item);
                return -1;
            }
            v = gr->gr_gid;
        }
        ids[(*n)++] = (uint32_t)v;
        s = next;
    }
    return 0;
}

int bb__config_weights(const char *s, struct bb__weight *w, uint32_t *n, char *msg,
                       size_t msglen)
{
    const char *p = s;
    *n = 0;
    while (*p) {
        char *end;
        unsigned long uid = strtoul(p, &end, 10);
        unsigned long wt = 0;
        bool ok = end != p && *end == ':';
        if (ok) {
            const char *q = end + 1;
            wt = strtoul(q, &end, 10);
            ok = end != q && wt >= 1 && wt <= 1000 && (*end == ',' || *end == 0) &&
                 uid <= UINT32_MAX && *n < BB_MAX_WEIGHTS;
        }
        if (!ok) {
            snprintf(msg, msglen, "client_weights: expected uid:weight pairs (weight 1..1000, "
                     "at most %d) near '%s'", BB_MAX_WEIGHTS, p);
            return -1;
        }
        w[*n].uid = (uint32_t)uid;
        w[*n].weight = (uint32_t)wt;
        (*n)++;
        p = *end ? end + 1 : end;
    }
    return 0;
}

static int bb__weights_ok(const char *value, char *msg, size_t msglen)
{
    struct bb__weight w[BB_MAX_WEIGHTS];
    uint32_t n;
    return bb__config_weights(value, w, &n, msg, msglen);
}

static int bb__set_param(struct bb__model_config *m, const char *key, const char *value, char *msg,
                         size_t msglen)
{
    bool strategy = strncmp(key, "strategy.", 9) == 0;
    const char *name = key + (strategy ? 9 : strlen(BB__PARAM_PREFIX));
    size_t max = strategy ? sizeof m->sparams / sizeof m->sparams[0] : BB_MAX_PARAMS;
    size_t *np = strategy ? &m->nsparams : &m->nparams;
    struct bb__kv *kv = strategy ? m->sparams : m->params;
    size_t klen = strlen(name), vlen = strlen(value);
    if (klen == 0 || klen >= sizeof kv[0].key) {
        snprintf(msg, msglen, "%s: parameter name must be 1..%zu bytes", key,
                 sizeof kv[0].key - 1);
        return -1;
    }
    if (vlen >= sizeof kv[0].value) {
        snprintf(msg, msglen, "%s: value longer than %zu bytes", key, sizeof kv[0].value - 1);
        return -1;
    }
    size_t i = 0;
    while (i < *np && strcmp(kv[i].key, name) != 0)
        i++;
    if (i == max) {
        snprintf(msg, msglen, "%s: more than %zu parameters", key, max);
        return -1;
    }
    memset(&kv[i], 0, sizeof kv[i]);
    memcpy(kv[i].key, name, klen);
    memcpy(kv[i].value, value, vlen);
    if (i == *np)
        (*np)++;
    return 0;
}

int bb__config_listen_addr(const char *s, struct sockaddr_storage *sa, socklen_t *salen,
                           char *msg, size_t msglen)
{
    memset(sa, 0, sizeof *sa);
    if (!*s)
        return 0;
    char host[64];
    const char *port;
    const char *colon = strrchr(s, ':');
    if (s[0] == '[') { /* [IPV6]:PORT */
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof host) {
            snprintf(msg, msglen, "metrics_listen: '%s' is not [IPV6]:PORT", s);
            return -1;
        }
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        port = close + 2;
    } else if (colon) {
        if ((size_t)(colon - s) >= sizeof host) {
            snprintf(msg, msglen, "metrics_listen: host in '%s' is too long", s);
            return -1;
        }
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port = colon + 1;
    } else {
        strcpy(host, "127.0.0.1"); /* a port alone: loopback, not the world */
        port = s;
    }
    char *end;
    errno = 0;
    unsigned long pn = isdigit((unsigned char)*port) ? strtoul(port, &end, 10) : 0;
    if (!isdigit((unsigned char)*port) || *end || errno || pn < 1 || pn > 65535) {
        snprintf(msg, msglen, "metrics_listen: port '%s' is not a number in 1..65535", port);
        return -1;
    }
    struct sockaddr_in *in4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
    if (s[0] == '[') {
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) {
            snprintf(msg, msglen, "metrics_listen: '%s' is not an IPv6 address", host);
            return -1;
        }
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)pn);
        *salen = sizeof *in6;
        return 1;
    }
    const char *v4 = strcmp(host, "localhost") == 0 ? "127.0.0.1"
                     : strcmp(host, "*") == 0       ? "0.0.0.0"
                                                    : host;
    if (inet_pton(AF_INET, v4, &in4->sin_addr) != 1) {
        snprintf(msg, msglen,
                 "metrics_listen: '%s' is not an IPv4 address, localhost or * (IPv6: [ADDR]:PORT)",
                 host);
        return -1;
    }
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)pn);
    *salen = sizeof *in4;
    return 1;
}

static int bb__listen_ok(const char *value, char *msg, size_t msglen)
{
    struct sockaddr_storage sa;
    socklen_t salen;
    return bb__config_listen_addr(value, &sa, &salen, msg, msglen);
}

/* Why s would not read back as itself from the "key = value" line the dump
 * writes, or NULL. A file's lines never hold these (inih strips the blanks
 * and the comment, and a line ends at its break); -o can. is_key: nor '='
 * or ':', where inih splits the line. */
static const char *bb__unreadable(const char *s, bool is_key)
{
    size_t len = strlen(s);
    if (strchr(s, '\n'))
        return "contains a line break";
    if (len && (isspace((unsigned char)s[0]) || isspace((unsigned char)s[len - 1])))
        return "begins or ends with a blank";
    for (size_t i = 1; i < len; i++)
        if (s[i] == ';' && isspace((unsigned char)s[i - 1]))
            return "contains a blank and ';', where a comment begins";
    if (is_key && strpbrk(s, "=:"))
        return "contains '=' or ':'";
    return NULL;
}

/* inih hands its reader a buffer of the library's INI_MAX_LINE, which its
 * header need not tell right: ask the library. */
static char *bb__probe_reader(char *str, int num, void *user)
{
    (void)str;
    *(int *)user = num;
    return NULL;
}

static int bb__probe_key(void *user, const char *section, const char *name, const char *value)
{
    (void)user, (void)section, (void)name, (void)value;
    return 1;
}

/* Characters a line may have: inih's buffer less '\n' and NUL. */
static int bb__line_max(void)
{
    int num = 0;
    ini_parse_stream(bb__probe_reader, &num, bb__probe_key, NULL);
    return num - 2;
}

/* Validate value for key k and store it in base (the broker or model
 * struct). Nothing is written unless the whole value is valid. msg gets
 * "KEY: problem". */
static int bb__set_value(const struct bb__config_key *k, void *base, const char *key,
                         const char *value, char *msg, size_t msglen)
{
    unsigned char *p = (unsigned char *)base + k->offset;
    uint64_t v;
    if (value[0] == ';') {
        /* inih keeps it right after the '=', but the dump writes
         * "key = value", where it would read back as a comment. */
        snprintf(msg, msglen, "%s: a value cannot begin with ';' (a comment)", key);
        return -1;
    }
    const char *why = k->type == BB__CT_PARAM ? bb__unreadable(key, true) : NULL;
    if (why) {
        snprintf(msg, msglen, "%s: the name %s (a file could not hold it)", key, why);
        return -1;
    }
    if ((why = bb__unreadable(value, false))) {
        snprintf(msg, msglen, "%s: the value %s (a file could not hold it)", key, why);
        return -1;
    }
    /* bb__config_dump writes the key back as "name = value": that line must
     * fit the reader too, or the dump of an accepted configuration would not
     * load (fuzz_config found a value that filled its line after "name=",
     * with no blanks around the '='; -o has no line at all). */
    size_t dumped = strlen(key) + 3 + strlen(value);
    int line_max = bb__line_max();
    if (dumped > (size_t)line_max) {
        snprintf(msg, msglen, "%s: line too long: '%s = VALUE' is %zu characters (at most %d)",
                 key, key, dumped, line_max);
        return -1;
    }
    switch (k->type) {
    case BB__CT_UINT:
    case BB__CT_BYTES:
        /* A number key whose default is "auto" takes that word, stored as 0. */
        if (k->def && strcmp(k->def, "auto") == 0 && strcmp(value, "auto") == 0) {
            bb__store_uint(p, k->size, 0);
            return 0;
        }
        if (bb__parse_u64(k->name, value, &v, k->type == BB__CT_BYTES, msg, msglen) < 0)
            return -1;
        if (v < k->min || v > k->max) {
            snprintf(msg, msglen, "%s: %s is out of range (%" PRIu64 "..%" PRIu64 ")", k->name,
                     value, k->min, k->max);
            return -1;
        }
        bb__store_uint(p, k->size, v);
        return 0;
    case BB__CT_LISTEN:
    case BB__CT_WEIGHTS:
        /* Checked here, not first at the start: a reload refuses it too. */
        if ((k->type == BB__CT_LISTEN ? bb__listen_ok(value, msg, msglen)
                                      : bb__weights_ok(value, msg, msglen)) < 0)
            return -1;
        __attribute__((fallthrough)); /* stored as the string it is */
    case BB__CT_STRING: {
        size_t len = strlen(value);
        if (len < k->min || len > k->max) {
            snprintf(msg, msglen, "%s: must be %" PRIu64 "..%" PRIu64 " bytes long, not %zu",
                     k->name, k->min, k->max, len);
            return -1;
        }
        memset(p, 0, k->size);
        memcpy(p, value, len);
        return 0;
    }
    case BB__CT_ENUM:
        for (uint64_t i = 0; k->names[i]; i++) {
            if (strcasecmp(value, k->names[i]) == 0) {
                bb__store_uint(p, k->size, k->min + i);
                return 0;
            }
        }
        if (isdigit((unsigned char)*value) &&
            bb__parse_u64(k->name, value, &v, 0, msg, msglen) == 0 && v >= k->min && v <= k->max) {
            bb__store_uint(p, k->size, v);
            return 0;
        }
        snprintf(msg, msglen, "%s: '%s' is not one of ", k->name, value);
        for (size_t i = 0; k->names[i]; i++) {
            size_t used = strlen(msg);
            snprintf(msg + used, msglen - used, "%s%s", i ? "|" : "", k->names[i]);
        }
        size_t used = strlen(msg);
        snprintf(msg + used, msglen - used, " or %" PRIu64 "..%" PRIu64, k->min, k->max);
        return -1;
    case BB__CT_UIDS:
    case BB__CT_GIDS: {
        uint32_t ids[BB_MAX_IDS];
        size_t n;
        if (bb__parse_ids(k, value, ids, &n, msg, msglen) < 0)
            return -1;
        struct bb__broker_config *cfg = base;
        _Static_assert(sizeof(uid_t) == sizeof(uint32_t) && sizeof(gid_t) == sizeof(uint32_t),
                       "ids are stored as 32-bit words");
        memset(p, 0, k->size);
        memcpy(p, ids, n * sizeof ids[0]);
        *(k->type == BB__CT_UIDS ? &cfg->nuids : &cfg->ngids) = n;
        return 0;
    }
    case BB__CT_PARAM:
        return bb__set_param(base, key, value, msg, msglen);
    }
    bb_assert(0, "config table: every type is handled");
    return -1;
}

/* The text a value has in a dump: re-parsing it gives the same value. */
static void bb__format_value(const struct bb__config_key *k, const void *base, char *buf,
                             size_t len)
{
    const unsigned char *p = (const unsigned char *)base + k->offset;
    switch (k->type) {
    case BB__CT_UINT:
    case BB__CT_BYTES:
        if (k->def && strcmp(k->def, "auto") == 0 && bb__load_uint(p, k->size) == 0)
            snprintf(buf, len, "auto");
        else
            snprintf(buf, len, "%" PRIu64, bb__load_uint(p, k->size));
        return;
    case BB__CT_STRING:
    case BB__CT_LISTEN:
    case BB__CT_WEIGHTS:
        snprintf(buf, len, "%.*s", (int)k->size, (const char *)p);
        return;
    case BB__CT_ENUM: {
        uint64_t v = bb__load_uint(p, k->size);
        if (v >= k->min && v <= k->max)
            snprintf(buf, len, "%s", k->names[v - k->min]);
        else
            snprintf(buf, len, "%" PRIu64, v);
        return;
    }
    case BB__CT_UIDS:
    case BB__CT_GIDS: {
        const struct bb__broker_config *cfg = base;
        size_t n = k->type == BB__CT_UIDS ? cfg->nuids : cfg->ngids;
        buf[0] = '\0';
        for (size_t i = 0; i < n; i++) {
            uint32_t id;
            memcpy(&id, p + i * sizeof id, sizeof id);
            size_t used = strlen(buf);
            snprintf(buf + used, len - used, "%s%" PRIu32, i ? "," : "", id);
        }
        return;
    }
    case BB__CT_PARAM:
        break;
    }
    buf[0] = '\0';
}

/* ---- sections and models --------------------------------------------------- */

static int bb__model_name_ok(const char *name)
{
    size_t len = strlen(name);
    return len >= 1 && len <= 63 &&
           strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == len;
}

static void bb__apply_defaults(enum bb__csect section, void *base)
{
    char msg[256];
    for (size_t i = 0; i < BB__NKEYS; i++) {
        const struct bb__config_key *k = &bb__keys[i];
        if (k->section != section || !k->def)
            continue;
        int rc = bb__set_value(k, base, k->name, k->def, msg, sizeof msg);
        bb_assert(rc == 0, "config table: every default passes its own validation");
    }
}

struct bb__model_config *bb__config_model(struct bb__broker_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nmodels; i++)
        if (strcmp(cfg->models[i].name, name) == 0)
            return &cfg->models[i];
    return NULL;
}

/* A new model with every default but no backend (which has none). */
static struct bb__model_config *bb__model_add(struct bb__broker_config *cfg, const char *name)
{
    if (cfg->nmodels == BB_MAX_MODELS)
        return NULL;
    struct bb__model_config *m = &cfg->models[cfg->nmodels++];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    bb__apply_defaults(BB__SEC_MODEL, m);
    return m;
}

void bb__config_defaults(struct bb__broker_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    bb__apply_defaults(BB__SEC_BROKER, cfg);
    if (bb__default_socket_path(geteuid(), cfg->socket_path, sizeof cfg->socket_path) < 0)
        cfg->socket_path[0] = '\0'; /* too long: bb__config_check says so */
    /* Root is allowed because it can read any segment anyway. */
    cfg->allowed_uids[cfg->nuids++] = geteuid();
    if (geteuid() != 0)
        cfg->allowed_uids[cfg->nuids++] = 0;
    struct bb__model_config *m = bb__model_add(cfg, "echo");
    snprintf(m->backend, sizeof m->backend, "echo");
    snprintf(m->backend_origin, sizeof m->backend_origin, "the default configuration");
}

int bb__config_check(const struct bb__broker_config *cfg, char *err, size_t errlen)
{
    if (!cfg->socket_path[0]) {
        snprintf(err, errlen, "no socket configured and the default ($XDG_RUNTIME_DIR/"
                 "batchbroker.sock) is longer than 107 bytes: set [broker] socket");
        return -1;
    }
    for (size_t i = 0; i < cfg->nmodels; i++) {
        const struct bb__model_config *m = &cfg->models[i];
        if (m->backend[0] == '\0') {
            snprintf(err, errlen, "[model.%s] has no backend", m->name);
            return -1;
        }
        /* The names bb__strategy_load knows, here so that a reload refuses a
         * typo the restart would (a path is for the start to open). */
        bool builtin = strcmp(m->strategy, "throughput") == 0 ||
                       strcmp(m->strategy, "latency") == 0 || strcmp(m->strategy, "deadline") == 0;
        if (!builtin && !strchr(m->strategy, '/')) {
            snprintf(err, errlen, "[model.%s]: unknown strategy '%s' (throughput, latency, "
                     "deadline, or a path to a .so)", m->name, m->strategy);
            return -1;
        }
        if (m->nsparams && !strchr(m->strategy, '/')) {
            snprintf(err, errlen, "[model.%s]: strategy.* keys apply to a custom strategy only "
                     "(strategy = a path to a .so), not to strategy = %s", m->name, m->strategy);
            return -1;
        }
    }
    if (cfg->default_segment_mb > cfg->max_segment_mb) {
        snprintf(err, errlen, "default_segment_mb (%" PRIu32 ") exceeds max_segment_mb (%" PRIu32 ")",
                 cfg->default_segment_mb, cfg->max_segment_mb);
        return -1;
    }
    if (cfg->default_max_inflight > cfg->max_inflight) {
        snprintf(err, errlen,
                 "default_max_inflight (%" PRIu32 ") exceeds max_inflight (%" PRIu32 ")",
                 cfg->default_max_inflight, cfg->max_inflight);
        return -1;
    }
    return 0;
}

/* ---- loading a file ---------------------------------------------------------- */

struct bb__parse {
    struct bb__broker_config *cfg;
    FILE *file;
    const char *path;
    int lineno;          /* of the line inih is working on: we count reader calls */
    int err_line;        /* 0 until the first error */
    char err[512];
    enum bb__csect section;
    struct bb__model_config *model;
    int section_line;
    int file_models;     /* [model.*] sections seen */
    int model_lines[BB_MAX_MODELS]; /* header line of each model, for duplicates */
};

static void bb__fail(struct bb__parse *ps, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Only the first error counts: later ones are often its consequences. */
static void bb__fail(struct bb__parse *ps, int line, const char *fmt, ...)
{
    if (ps->err_line)
        return;
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ps->err_line = line;
    snprintf(ps->err, sizeof ps->err, "%s:%d: %s", ps->path, line, msg);
}

static void bb__end_section(struct bb__parse *ps)
{
    if (ps->section == BB__SEC_MODEL && ps->model->backend[0] == '\0')
        bb__fail(ps, ps->section_line, "[model.%s] has no backend (the key is required)",
                 ps->model->name);
    ps->section = BB__SEC_NONE;
}

static void bb__begin_section(struct bb__parse *ps, const char *name)
{
    bb__end_section(ps);
    if (ps->err_line)
        return;
    ps->section_line = ps->lineno;
    if (strcmp(name, "broker") == 0) {
        ps->section = BB__SEC_BROKER;
        return;
    }
    if (strncmp(name, "model.", 6) != 0) {
        bb__fail(ps, ps->lineno, "unknown section [%s] (expected [broker] or [model.NAME])", name);
        return;
    }
    const char *mname = name + 6;
    if (!bb__model_name_ok(mname)) {
        bb__fail(ps, ps->lineno,
                 "bad model name '%s' (1..63 characters from A-Z a-z 0-9 _ . -)", mname);
        return;
    }
    /* The file's models replace the default ones rather than add to them. */
    if (ps->file_models++ == 0)
        ps->cfg->nmodels = 0;
    struct bb__model_config *m = bb__config_model(ps->cfg, mname);
    if (m) {
        bb__fail(ps, ps->lineno, "duplicate section [model.%s] (first at line %d)", mname,
                 ps->model_lines[m - ps->cfg->models]);
        return;
    }
    m = bb__model_add(ps->cfg, mname);
    if (!m) {
        bb__fail(ps, ps->lineno, "too many models (at most %d)", BB_MAX_MODELS);
        return;
    }
    ps->model_lines[m - ps->cfg->models] = ps->lineno;
    ps->section = BB__SEC_MODEL;
    ps->model = m;
}

/* fgets that returns the length read: after a NUL byte, strlen would take
 * the line for shorter than it is. 0 at the end of the file. */
static size_t bb__get_line(FILE *f, char *str, int num)
{
    size_t len = 0;
    int ch;
    while (len + 1 < (size_t)num && (ch = getc(f)) != EOF) {
        str[len++] = (char)ch;
        if (ch == '\n')
            break;
    }
    str[len] = '\0';
    return len;
}

/* Handles "[...]" itself (see the top of the file) and hands inih an empty
 * line instead. Strips leading blanks too, so that an indented key is a key
 * and not, as inih would take it, a continuation of the previous value. */
static char *bb__read_line(char *str, int num, void *user)
{
    struct bb__parse *ps = user;
    size_t len = ps->err_line ? 0 : bb__get_line(ps->file, str, num);
    if (len == 0)
        return NULL;
    ps->lineno++;
    const char *nul = memchr(str, '\0', len);
    if (nul) {
        bb__fail(ps, ps->lineno, "NUL byte at column %d (not a text file?)", (int)(nul - str) + 1);
        return NULL;
    }
    if (str[len - 1] != '\n' && !feof(ps->file)) {
        bb__fail(ps, ps->lineno, "line too long (at most %d characters)", num - 2);
        return NULL;
    }
    char *s = str;
    if (ps->lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3;
    while (isspace((unsigned char)*s))
        s++;
    memmove(str, s, strlen(s) + 1);
    if (str[0] != '[')
        return str;

    char *close = strchr(str, ']');
    if (!close) {
        bb__fail(ps, ps->lineno, "section header without ']'");
        return NULL;
    }
    char *rest = close + 1;
    while (isspace((unsigned char)*rest))
        rest++;
    if (*rest && *rest != ';' && *rest != '#') {
        bb__fail(ps, ps->lineno, "unexpected text after section header: '%s'", rest);
        return NULL;
    }
    char *name = str + 1;
    while (isspace((unsigned char)*name))
        name++;
    while (close > name && isspace((unsigned char)close[-1]))
        close--;
    *close = '\0';
    bb__begin_section(ps, name);
    str[0] = '\0';
    return ps->err_line ? NULL : str;
}

static int bb__on_key(void *user, const char *section, const char *name, const char *value)
{
    struct bb__parse *ps = user;
    (void)section; /* always "": the reader keeps the headers from inih */
    if (ps->err_line)
        return 0;
    if (ps->section == BB__SEC_NONE) {
        bb__fail(ps, ps->lineno, "key '%s' before any section", name);
        return 0;
    }
    const struct bb__config_key *k = bb__key_find(ps->section, name);
    if (!k) {
        if (ps->section == BB__SEC_BROKER)
            bb__fail(ps, ps->lineno, "unknown key '%s' in [broker]", name);
        else
            bb__fail(ps, ps->lineno, "unknown key '%s' in [model.%s]", name, ps->model->name);
        return 0;
    }
    char msg[384];
    void *base = ps->section == BB__SEC_BROKER ? (void *)ps->cfg : (void *)ps->model;
    if (bb__set_value(k, base, name, value, msg, sizeof msg) < 0) {
        bb__fail(ps, ps->lineno, "%s", msg);
        return 0;
    }
    if (base == ps->model && k->offset == offsetof(struct bb__model_config, backend))
        snprintf(ps->model->backend_origin, sizeof ps->model->backend_origin, "%s:%d",
                 ps->path, ps->lineno);
    return 1;
}

int bb__config_load(struct bb__broker_config *cfg, const char *path, char *err, size_t errlen)
{
    /* Parse into a copy so that a bad file leaves cfg as it was. */
    struct bb__parse ps = {.path = path};
    ps.cfg = malloc(sizeof *ps.cfg);
    if (!ps.cfg) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    memcpy(ps.cfg, cfg, sizeof *cfg);
    /* A regular file of a sane size only: a reload reads it on a dispatcher,
     * which a FIFO (open blocks until a writer comes) or an endless file
     * would hold for as long as it lasts. O_NONBLOCK changes nothing for a
     * regular file. */
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    const char *why = fd < 0 ? strerror(errno)
                      : fstat(fd, &st) < 0 ? strerror(errno)
                      : !S_ISREG(st.st_mode) ? "not a regular file"
                      : st.st_size > CONFIG_MAX_BYTES ? "larger than 1 MiB"
                      : NULL;
    ps.file = why ? NULL : fdopen(fd, "r");
    if (!ps.file) {
        snprintf(err, errlen, "%s: %s", path, why ? why : strerror(errno));
        if (fd >= 0)
            close(fd);
        free(ps.cfg);
        return -1;
    }
    int rc = ini_parse_stream(bb__read_line, &ps, bb__on_key, &ps);
    if (ferror(ps.file))
        bb__fail(&ps, ps.lineno + 1, "read error");
    fclose(ps.file);
    bb__end_section(&ps);
    /* inih reports lines it could not make sense of only through rc. */
    if (rc > 0 && (!ps.err_line || rc < ps.err_line)) {
        ps.err_line = 0;
        bb__fail(&ps, rc, "syntax error (expected [section], key = value or a comment)");
    }
    char msg[384];
    if (!ps.err_line && bb__config_check(ps.cfg, msg, sizeof msg) < 0)
        snprintf(ps.err, sizeof ps.err, "%s: %s", path, msg);
    int ok = !ps.err[0];
    if (ok)
        memcpy(cfg, ps.cfg, sizeof *cfg);
    else
        snprintf(err, errlen, "%s", ps.err);
    free(ps.cfg);
    return ok ? 0 : -1;
}

/* ---- command-line overrides -------------------------------------------------- */

int bb__config_set(struct bb__broker_config *cfg, const char *section, const char *key,
                   const char *value, char *err, size_t errlen)
{
    char msg[384];
    if (strcmp(section, "broker") == 0) {
        const struct bb__config_key *k = bb__key_find(BB__SEC_BROKER, key);
        if (!k) {
            snprintf(err, errlen, "broker.%s: unknown key", key);
            return -1;
        }
        if (bb__set_value(k, cfg, key, value, msg, sizeof msg) < 0) {
            snprintf(err, errlen, "broker.%s", msg);
            return -1;
        }
        return 0;
    }
    const char *name = strncmp(section, "model.", 6) == 0 ? section + 6 : NULL;
    if (!name) {
        snprintf(err, errlen, "%s.%s: unknown section (expected broker or model.NAME)", section,
                 key);
        return -1;
    }
    if (!bb__model_name_ok(name)) {
        snprintf(err, errlen,
                 "%s.%s: bad model name '%s' (1..63 characters from A-Z a-z 0-9 _ . -)", section,
                 key, name);
        return -1;
    }
    const struct bb__config_key *k = bb__key_find(BB__SEC_MODEL, key);
    if (!k) {
        snprintf(err, errlen, "%s.%s: unknown key", section, key);
        return -1;
    }
    struct bb__model_config *m = bb__config_model(cfg, name);
    if (!m) {
        m = bb__model_add(cfg, name);
        if (!m) {
            snprintf(err, errlen, "%s.%s: too many models (at most %d)", section, key,
                     BB_MAX_MODELS);
            return -1;
        }
        if (bb__set_value(k, m, key, value, msg, sizeof msg) < 0) {
            cfg->nmodels--; /* a failed override must not leave a half-made model */
            snprintf(err, errlen, "%s.%s", section, msg);
            return -1;
        }
        if (k->offset == offsetof(struct bb__model_config, backend))
            snprintf(m->backend_origin, sizeof m->backend_origin, "-o %s.%s=%s", section, key,
                     value);
        return 0;
    }
    if (bb__set_value(k, m, key, value, msg, sizeof msg) < 0) {
        snprintf(err, errlen, "%s.%s", section, msg);
        return -1;
    }
    if (k->offset == offsetof(struct bb__model_config, backend))
        snprintf(m->backend_origin, sizeof m->backend_origin, "-o %s.%s=%s", section, key, value);
    return 0;
}

/* Model names may contain '.', and so may keys (param.x): split after
 * "model." where the right-hand side is a model key. Where several splits
 * are, the one that names a model already configured; one that would name
 * none or several is refused (model.a.param.b.max_wait_us: param
 * "b.max_wait_us" of model a, or max_wait_us of model a.param.b). */
int bb__config_set_arg(struct bb__broker_config *cfg, const char *arg, char *err, size_t errlen)
{
    char buf[512];
    const char *eq = strchr(arg, '=');
    if (!eq || (size_t)(eq - arg) >= sizeof buf) {
        snprintf(err, errlen, "'%s': expected SECTION.KEY=VALUE", arg);
        return -1;
    }
    memcpy(buf, arg, (size_t)(eq - arg));
    buf[eq - arg] = '\0';
    const char *value = eq + 1;
    char *dot = NULL;
    if (strncmp(buf, "broker.", 7) == 0) {
        dot = buf + 6;
    } else if (strncmp(buf, "model.", 6) == 0) {
        int splits = 0, known = 0;
        char *first = NULL;
        for (char *d = strchr(buf + 6, '.'); d; d = strchr(d + 1, '.')) {
            if (!bb__key_find(BB__SEC_MODEL, d + 1))
                continue;
            first = first ? first : d;
            splits++;
            *d = '\0';
            if (bb__config_model(cfg, buf + 6)) {
                dot = d;
                known++;
            }
            *d = '.';
        }
        if (known == 0 && splits == 1)
            dot = first;
        else if (known != 1 && splits > 1) {
            snprintf(err, errlen,
                     "'%s': ambiguous: names %s model.NAME.KEY; set it in the configuration file",
                     arg, known ? "several" : "no configured");
            return -1;
        }
    }
    if (!dot) {
        snprintf(err, errlen, "'%s': expected broker.KEY=VALUE or model.NAME.KEY=VALUE", arg);
        return -1;
    }
    *dot = '\0';
    return bb__config_set(cfg, buf, dot + 1, value, err, errlen);
}

/* ---- dump and help ------------------------------------------------------------ */

static void bb__dump_section(FILE *out, enum bb__csect section, const void *base)
{
    char buf[BB_MAX_IDS * 12 + 300];
    for (size_t i = 0; i < BB__NKEYS; i++) {
        const struct bb__config_key *k = &bb__keys[i];
        if (k->section != section || k->type == BB__CT_PARAM)
            continue;
        bb__format_value(k, base, buf, sizeof buf);
        fprintf(out, "%s =%s%s\n", k->name, *buf ? " " : "", buf);
    }
}

void bb__config_dump(const struct bb__broker_config *cfg, FILE *out)
{
    fprintf(out, "[broker]\n");
    bb__dump_section(out, BB__SEC_BROKER, cfg);
    for (size_t i = 0; i < cfg->nmodels; i++) {
        const struct bb__model_config *m = &cfg->models[i];
        fprintf(out, "\n[model.%s]\n", m->name);
        bb__dump_section(out, BB__SEC_MODEL, m);
        for (size_t j = 0; j < m->nparams; j++)
            fprintf(out, BB__PARAM_PREFIX "%s = %s\n", m->params[j].key, m->params[j].value);
        for (size_t j = 0; j < m->nsparams; j++)
            fprintf(out, "strategy.%s = %s\n", m->sparams[j].key, m->sparams[j].value);
    }
}

static const char *bb__type_name(enum bb__ctype t)
{
    static const char *const names[] = {
        [BB__CT_UINT] = "integer", [BB__CT_BYTES] = "bytes",    [BB__CT_STRING] = "string",
        [BB__CT_ENUM] = "enum",    [BB__CT_UIDS] = "uid list", [BB__CT_GIDS] = "gid list",
        [BB__CT_PARAM] = "string", [BB__CT_LISTEN] = "address", [BB__CT_WEIGHTS] = "string",
    };
    return names[t];
}

/* A byte count the way a person would write it: 4G, not 4294967296. */
static void bb__format_bytes(uint64_t v, char *buf, size_t len)
{
    const char *sfx = "KMG";
    int i = -1;
    while (i < 2 && v && v % 1024 == 0) {
        v /= 1024;
        i++;
    }
    if (i < 0)
        snprintf(buf, len, "%" PRIu64, v);
    else
        snprintf(buf, len, "%" PRIu64 "%c", v, sfx[i]);
}

static void bb__format_range(const struct bb__config_key *k, char *buf, size_t len)
{
    char lo[32], hi[32];
    switch (k->type) {
    case BB__CT_UINT:
        snprintf(buf, len, "%" PRIu64 "..%" PRIu64, k->min, k->max);
        return;
    case BB__CT_BYTES:
        bb__format_bytes(k->min, lo, sizeof lo);
        bb__format_bytes(k->max, hi, sizeof hi);
        snprintf(buf, len, "%s..%s (suffix K, M or G)", lo, hi);
        return;
    case BB__CT_STRING:
    case BB__CT_PARAM:
    case BB__CT_WEIGHTS:
        snprintf(buf, len, "%" PRIu64 "..%" PRIu64 " bytes", k->min, k->max);
        return;
    case BB__CT_ENUM:
        buf[0] = '\0';
        for (size_t i = 0; k->names[i]; i++) {
            size_t used = strlen(buf);
            snprintf(buf + used, len - used, "%s%s", i ? "\\|" : "", k->names[i]);
        }
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, " or %" PRIu64 "..%" PRIu64, k->min, k->max);
        return;
    case BB__CT_UIDS:
    case BB__CT_GIDS:
        snprintf(buf, len, "0..%" PRIu64 " entries", k->max);
        return;
    case BB__CT_LISTEN:
        snprintf(buf, len, "empty, PORT or HOST:PORT (port 1..65535)");
        return;
    }
    buf[0] = '\0';
}

/* "\|" keeps a '|' inside a markdown table cell; plain text wants a bare one. */
static void bb__unescape_bars(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++)
        if (!(r[0] == '\\' && r[1] == '|'))
            *w++ = *r;
    *w = '\0';
}

/* --help goes to a terminal: break text at spaces to fit width columns. */
static void bb__print_wrapped(FILE *out, const char *text, int indent, int width)
{
    while (*text) {
        int room = width - indent, len = (int)strlen(text);
        if (len > room) {
            len = room;
            while (len > 0 && text[len] != ' ')
                len--;
            if (len == 0)
                len = (int)strcspn(text, " ");
        }
        fprintf(out, "%*s%.*s\n", indent, "", len, text);
        text += len;
        while (*text == ' ')
            text++;
    }
}

/* Text in roff: backslashes and minus signs escaped, and a line that would
 * start with a control character guarded. */
static void bb__roff_text(FILE *out, const char *s)
{
    if (*s == '.' || *s == '\'')
        fputs("\\&", out);
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\e", out);
        else if (*s == '-')
            fputs("\\-", out);
        else
            fputc(*s, out);
    }
}

/* The KEYS section of batchbroker.ini(5): one tagged paragraph per key. */
static void bb__config_help_man(FILE *out)
{
    char range[256];
    enum bb__csect last = BB__SEC_NONE;
    for (size_t i = 0; i < BB__NKEYS; i++) {
        const struct bb__config_key *k = &bb__keys[i];
        if (k->section != last) {
            fprintf(out, ".SS \"%s\"\n",
                    k->section == BB__SEC_BROKER ? "[broker]" : "[model.NAME]");
            last = k->section;
        }
        bb__format_range(k, range, sizeof range);
        bb__unescape_bars(range);
        const char *def = k->def ? k->def : k->def_help;
        fputs(".TP\n.B ", out);
        bb__roff_text(out, k->name);
        fputs("\n", out);
        bb__roff_text(out, bb__type_name(k->type));
        fputs(", ", out);
        bb__roff_text(out, range);
        fputs(", default ", out);
        if (k->def && *def) {
            fputs("\\fB", out);
            bb__roff_text(out, def);
            fputs("\\fP", out);
        } else {
            bb__roff_text(out, *def ? def : "(empty)");
        }
        fputs(k->reloadable ? ", reloadable.\n" : ".\n", out);
        fputs(".br\n", out);
        bb__roff_text(out, k->desc);
        fputs("\n", out);
    }
}

int bb__config_reference(FILE *out, const char *format)
{
    if (!format || strcmp(format, "markdown") == 0)
        bb__config_help(out, BB__HELP_MARKDOWN);
    else if (strcmp(format, "man") == 0)
        bb__config_help(out, BB__HELP_MAN);
    else
        return -1;
    return 0;
}

void bb__config_help(FILE *out, int format)
{
    char range[256];
    if (format == BB__HELP_MAN) {
        bb__config_help_man(out);
        return;
    }
    int markdown = format == BB__HELP_MARKDOWN;
    if (markdown) {
        fprintf(out, "| section | key | type | range | default | reloadable | description |\n"
                     "|---|---|---|---|---|---|---|\n");
    } else {
        fprintf(out, "Configuration keys (in the file, or as -o SECTION.KEY=VALUE):\n");
    }
    enum bb__csect last = BB__SEC_NONE;
    for (size_t i = 0; i < BB__NKEYS; i++) {
        const struct bb__config_key *k = &bb__keys[i];
        const char *section = k->section == BB__SEC_BROKER ? "broker" : "model.NAME";
        bb__format_range(k, range, sizeof range);
        const char *def = k->def ? k->def : k->def_help;
        if (markdown) {
            /* Backticks mark a literal value; a computed default is prose. */
            const char *tick = k->def && *def ? "`" : "";
            fprintf(out, "| `[%s]` | `%s` | %s | %s | %s%s%s | %s | %s |\n", section, k->name,
                    bb__type_name(k->type), range, tick, *def ? def : "(empty)", tick,
                    k->reloadable ? "yes" : "no", k->desc);
            continue;
        }
        if (k->section != last)
            fprintf(out, "\n[%s]\n", section);
        last = k->section;
        bb__unescape_bars(range);
        fprintf(out, "  %s = %s\n      %s, %s%s.\n", k->name, *def ? def : "(empty)",
                bb__type_name(k->type), range, k->reloadable ? ", reloadable" : "");
        bb__print_wrapped(out, k->desc, 6, 78);
    }
}

/* ---- reload ---------------------------------------------------------------- */

/* Append ", item" (or "item" first) to a list being built in buf. */
static void bb__list_add(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void bb__list_add(char *buf, size_t len, const char *fmt, ...)
{
    size_t used = strlen(buf);
    if (used && used < len)
        used += (size_t)snprintf(buf + used, len - used, ", ");
    if (used >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

/* The id lists are compared by value, count included. */
static bool bb__ids_equal(const struct bb__config_key *k, const void *a, const void *b)
{
    const struct bb__broker_config *x = a, *y = b;
    size_t nx = k->type == BB__CT_UIDS ? x->nuids : x->ngids;
    size_t ny = k->type == BB__CT_UIDS ? y->nuids : y->ngids;
    return nx == ny && memcmp((const char *)a + k->offset, (const char *)b + k->offset,
                              nx * sizeof(uint32_t)) == 0;
}

static int bb__section_reload(enum bb__csect section, void *dst, const void *src, const char *what,
                              char *changed_keys, size_t changedlen, char *msg, size_t msglen)
{
    int changed = 0;
    char before[BB_MAX_IDS * 12 + 300], after[sizeof before];
    for (size_t i = 0; i < BB__NKEYS; i++) {
        const struct bb__config_key *k = &bb__keys[i];
        if (k->section != section || k->type == BB__CT_PARAM)
            continue;
        unsigned char *d = (unsigned char *)dst + k->offset;
        const unsigned char *sv = (const unsigned char *)src + k->offset;
        bool ids = k->type == BB__CT_UIDS || k->type == BB__CT_GIDS;
        if (ids ? bb__ids_equal(k, dst, src) : memcmp(d, sv, k->size) == 0)
            continue;
        if (!k->reloadable) {
            bb__list_add(msg, msglen, "%s%s", what, k->name);
            continue;
        }
        bb__format_value(k, dst, before, sizeof before);
        memcpy(d, sv, k->size);
        if (ids) {
            struct bb__broker_config *cd = dst;
            const struct bb__broker_config *cs = src;
            *(k->type == BB__CT_UIDS ? &cd->nuids : &cd->ngids) =
                k->type == BB__CT_UIDS ? cs->nuids : cs->ngids;
        }
        bb__format_value(k, dst, after, sizeof after);
        bb__list_add(changed_keys, changedlen, "%s%s %s -> %s", what, k->name,
                     *before ? before : "(empty)", *after ? after : "(empty)");
        changed++;
    }
    return changed;
}

int bb__config_reload(struct bb__broker_config *cur, const struct bb__broker_config *next,
                      char *changed_keys, size_t changedlen, char *skipped, size_t skippedlen)
{
    skipped[0] = '\0';
    changed_keys[0] = '\0';
    int changed = bb__section_reload(BB__SEC_BROKER, cur, next, "broker.", changed_keys,
                                     changedlen, skipped, skippedlen);
    for (size_t i = 0; i < cur->nmodels; i++) {
        struct bb__model_config *m = &cur->models[i];
        const struct bb__model_config *n = NULL;
        for (size_t j = 0; j < next->nmodels && !n; j++)
            if (strcmp(next->models[j].name, m->name) == 0)
                n = &next->models[j];
        if (!n) {
            bb__list_add(skipped, skippedlen, "model %s removed", m->name);
            continue;
        }
        char what[80];
        snprintf(what, sizeof what, "model.%s.", m->name);
        changed += bb__section_reload(BB__SEC_MODEL, m, n, what, changed_keys, changedlen,
                                      skipped, skippedlen);
        bool params_differ = m->nparams != n->nparams ||
                             memcmp(m->params, n->params, m->nparams * sizeof m->params[0]) != 0 ||
                             m->nsparams != n->nsparams ||
                             memcmp(m->sparams, n->sparams, m->nsparams * sizeof m->sparams[0]) != 0;
        if (params_differ)
            bb__list_add(skipped, skippedlen, "model.%s.param/strategy keys", m->name);
    }
    for (size_t j = 0; j < next->nmodels; j++) {
        bool known = false;
        for (size_t i = 0; i < cur->nmodels && !known; i++)
            known = strcmp(next->models[j].name, cur->models[i].name) == 0;
        if (!known)
            bb__list_add(skipped, skippedlen, "model %s added", next->models[j].name);
    }
    return changed;
}

int bb__config_build(struct bb__broker_config *cfg, const char *path, const char *const *overrides,
                     int noverrides, char *err, size_t errlen)
{
    bb__config_defaults(cfg);
    if (path && bb__config_load(cfg, path, err, errlen) < 0)
        return -1;
    for (int i = 0; i < noverrides; i++)
        if (bb__config_set_arg(cfg, overrides[i], err, errlen) < 0)
            return -1;
    return bb__config_check(cfg, err, errlen);
}
