/* Test harness: brokers as child processes, one unique socket per test.
 *
 * Criterion forks every test and runs two at once, so every socket, config
 * file and shm name carries the test process's pid and a counter. Every
 * broker started here is registered; bbt_cleanup_all() (installed with
 * atexit by bbt_broker_start, and called from the suites' .fini) stops it and
 * unlinks its socket and config file, even when an assertion failed. A broker
 * also gets PR_SET_PDEATHSIG(SIGKILL), so a test process that crashes does not
 * leave it running. */
#ifndef BB_TEST_HARNESS_H
#define BB_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "batchbroker/client.h"
#include "procfs_internal.h" /* bb__proc_status_kb, bb__proc_count_fds */

#ifndef BB_BROKER_BIN
#define BB_BROKER_BIN "batchbroker"
#endif
#ifndef BB_PLUGIN_DIR
#define BB_PLUGIN_DIR "."
#endif

#define BBT_MAX_ARGS 48

struct bbt_broker {
    pid_t pid;           /* 0 once stopped or reaped */
    char sock[108];      /* unique socket path */
    char cfg[108];       /* generated config file, "" if none */
    char log[108];       /* the broker's stderr (bbt_start.log), "" if not kept */
    int exit_status;     /* waitpid status once reaped */
    bool reaped;
};

/* How bbt_broker_start_ex starts a broker. */
struct bbt_start {
    const char *config_text;        /* NULL: no --config */
    const char *const *overrides;   /* NULL-terminated "-o" list, or NULL */
    bool log;                       /* keep the broker's stderr in b->log */
    uid_t uid;                      /* run the broker as this uid (and gid); 0: as we are */
    bool no_socket_arg;             /* no -s: the broker takes its default socket, which the
                                     * caller writes into b->sock first */
    const char *const *env;         /* NULL-terminated "NAME=VALUE" list to set, or NULL */
    const char *sock;               /* the socket path; NULL: a unique one (or no_socket_arg) */
    bool no_wait;                   /* return once started, without waiting for it to listen */
};

/* The broker binary and plugin directory the build compiled in, unless
 * $BBT_BROKER_BIN / $BBT_PLUGIN_DIR say otherwise (a test run from a bundle
 * carried to another machine, scripts/gpu-check.sh). */
const char *bbt_broker_bin(void);
const char *bbt_plugin_dir(void);

/* A unique path "/tmp/bbt-<pid>-<n><suffix>". */
void bbt_unique_path(char *buf, size_t len, const char *suffix);

/* Monotonic clock, nanoseconds. */
uint64_t bbt_now_ns(void);

/* Sleep ms milliseconds, the whole time: an interrupted sleep (EINTR) is
 * resumed for what is left. */
void bbt_msleep(int ms);

/* Deterministic payload for a request identified by `id`: pseudo-random bytes
 * (bbt_rand), and when len >= 8 the first 8 bytes are the id itself (readable
 * in a failure dump; tests/plugins/sched_recorder.c logs it). */
void bbt_fill(void *p, size_t len, uint64_t id);

/* True if the len bytes at p are exactly bbt_fill(…, len, id). Generates the
 * bytes as it compares: no buffer, no length limit, safe from any thread. */
bool bbt_check(const void *p, size_t len, uint64_t id);

/* Write text to a fresh unique file; returns 0 and the path in buf. */
int bbt_write_file(char *buf, size_t len, const char *suffix, const char *text);

/* Start a broker: `BB_BROKER_BIN -s SOCK [--config FILE] -o broker.log_level=warn
 * -o broker.plugin_dir=BB_PLUGIN_DIR [$BBT_BROKER_OVERRIDES] overrides...`. config_text may be NULL (no
 * --config); overrides is a NULL-terminated list or NULL. Waits (bounded, 10 s)
 * until bb_connect succeeds. Returns 0, or -1 (broker exited or never became
 * ready; b->exit_status says how it ended). */
int bbt_broker_start(struct bbt_broker *b, const char *config_text, const char *const *overrides);

/* Same, on a socket path chosen by the caller (to restart on the same path). */
int bbt_broker_start_at(struct bbt_broker *b, const char *sock, const char *config_text,
                        const char *const *overrides);

/* bbt_broker_start with every option (struct bbt_start). With no_socket_arg,
 * b->sock must hold the path the broker is expected to take (it is kept). */
int bbt_broker_start_ex(struct bbt_broker *b, const struct bbt_start *o);

/* Lines of b->log that contain needle. */
int bbt_log_count(const struct bbt_broker *b, const char *needle);

/* Wait (bounded) until b->log has at least n lines containing needle;
 * returns the count reached. */
int bbt_log_wait(const struct bbt_broker *b, const char *needle, int n, int timeout_ms);

/* SIGTERM, wait up to 10 s, then SIGKILL. Returns the waitpid status, or -1. */
int bbt_broker_stop(struct bbt_broker *b);

/* Send sig and reap (bounded, SIGKILL fallback). Returns the waitpid status. */
int bbt_broker_kill(struct bbt_broker *b, int sig);

/* Wait for the broker to exit by itself (SIGKILL after timeout_ms). Returns
 * the waitpid status, or -1 if it had to be killed. */
int bbt_broker_wait(struct bbt_broker *b, int timeout_ms);

/* Stop every broker this process started and remove its files. */
void bbt_cleanup_all(void);

/* Connect with a bounded retry (the broker may be starting). */
int bbt_connect(const struct bbt_broker *b, bb_client **out);

/* Run a program to completion with a timeout, capturing stdout and stderr
 * (each truncated to its buffer, NUL-terminated; buffers may be NULL).
 * Returns the waitpid status, or -1 on a timeout (the child is killed). */
int bbt_run(const char *const *argv, char *out, size_t outlen, char *err, size_t errlen,
            int timeout_ms);

/* Wait for a child with a bound; SIGKILL after timeout_ms. Returns the waitpid
 * status, or -1 if it had to be killed. */
int bbt_waitpid_bounded(pid_t pid, int timeout_ms);

/* A bare SOCK_SEQPACKET connection to path (no HELLO): the fd, or -1. */
int bbt_raw_connect(const char *path);

/* Send a HELLO on a bare connection (flags: BB_HELLO_*; max_inflight as in
 * struct bb_client_opts) and read the reply within 10 s. Returns its
 * status (0 or BB_E*), BB_EDISCONNECTED if the broker closed without one,
 * BB_ETIMEDOUT without an answer. Descriptors passed with it are closed. */
int bbt_raw_hello(int fd, uint32_t flags, uint32_t max_inflight);

/* True once the broker has closed fd: recv sees EOF (after any replies),
 * within timeout_ms. */
bool bbt_dropped(int fd, int timeout_ms);


/* A TCP port on 127.0.0.1 that nobody listens on now (a broker binds it a
 * moment later), or 0. */
unsigned bbt_free_port(void);

/* An HTTP/1.1 request to 127.0.0.1:port from source address src (NULL: any)
 * with Connection: close; the whole response (headers and body) in buf,
 * NUL-terminated. Returns the status code, or -1. Gives up after 10 s of
 * silence. */
int bbt_http(const char *src, unsigned port, const char *method, const char *path, char *buf,
             size_t cap);


/* xorshift64* PRNG. */
static inline uint64_t bbt_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

#endif
