/* The metrics endpoint: GET /metrics over HTTP with libmicrohttpd, off
 * unless [broker] metrics_listen names an address.
 *
 * libmicrohttpd runs its own thread (one epoll loop for every connection).
 * It renders the page there from the single-writer atomics of metrics.h
 * (expo.c) and never calls into a dispatcher: a scrape costs the request path
 * nothing but the cache lines it reads, and a slow or hostile HTTP client
 * can only tie up this thread. The limits below bound what such a client
 * can hold: connections in all and per address, an idle timeout, and memory
 * per connection; what is over a limit is closed at once. The idle timeout
 * counts from the last byte, so a client that trickles a header line every
 * few seconds would hold its connection for ever: a watchdog thread also
 * closes every connection that has not sent a whole request within
 * HTTP_REQUEST_S of its start or of its last answer (shutdown() of its
 * socket, under the lock that the library's close notification takes, so
 * never a descriptor the library has closed and reused). */
#include "http.h"

#include <errno.h>
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "config.h"
#include "expo.h"
#include "log.h"

#define HTTP_CONNECTIONS 64u  /* a Prometheus server keeps one open */
#define HTTP_PER_ADDRESS 8u   /* so that one host cannot take all of them */
#define HTTP_TIMEOUT_S 10u    /* idle, or stalled mid-request */
#define HTTP_MEMORY 16384u    /* per connection: a GET needs little */
#define HTTP_BACKLOG SOMAXCONN /* the kernel queues a burst; we accept and sort it */
#define HTTP_REQUEST_S 10u    /* to send a whole request, idle or not */
#define HTTP_TRACKED (HTTP_CONNECTIONS + 8u)

/* A connection the watchdog watches: its socket, and since when it has owed
 * a whole request (0: one is being answered). */
struct watched {
    int fd;
    uint64_t since_ns;
};

struct bb__http {
    struct MHD_Daemon *d;
    const struct bb__broker *b;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, watching;
    pthread_t watchdog;
    struct watched conns[HTTP_TRACKED]; /* fd -1: free */
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Library thread: a connection starts (watched from now) or closes (no longer,
 * before the library closes its socket). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct bb__http *h = cls;
    pthread_mutex_lock(&h->mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = NULL;
        for (unsigned i = 0; ci && i < HTTP_TRACKED; i++)
            if (h->conns[i].fd < 0) {
                h->conns[i] = (struct watched){.fd = ci->connect_fd, .since_ns = mono_ns()};
                *socket_context = &h->conns[i];
                break;
            }
    } else if (*socket_context) {
        ((struct watched *)*socket_context)->fd = -1;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&h->mu);
}

/* Library thread: a request has come whole (being answered: since 0), or its
 * answer went out (the next one is owed from now). */
static void owed_since(struct bb__http *h, struct MHD_Connection *conn, uint64_t since_ns)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct watched *w = ci ? ci->socket_context : NULL; /* NULL: not watched */
    pthread_mutex_lock(&h->mu);
    if (w)
        w->since_ns = since_ns;
    pthread_mutex_unlock(&h->mu);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode code)
{
    (void)req_cls;
    (void)code;
    owed_since(cls, conn, mono_ns());
}

/* Once a second: shut the socket of every connection that has owed a whole
 * request for HTTP_REQUEST_S; the library then sees it end and closes it. */
static void *watchdog_main(void *arg)
{
    struct bb__http *h = arg;
    pthread_mutex_lock(&h->mu);
    while (!h->stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&h->cv, &h->mu, &until);
        uint64_t now = mono_ns();
        for (unsigned i = 0; i < HTTP_TRACKED; i++) {
            struct watched *w = &h->conns[i];
            if (w->fd >= 0 && w->since_ns && now - w->since_ns > HTTP_REQUEST_S * 1000000000ull) {
                bb_debug("metrics http: a connection sent no whole request in %u s: closed",
                         HTTP_REQUEST_S);
                shutdown(w->fd, SHUT_RDWR);
                w->since_ns = 0; /* once */
            }
        }
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* libmicrohttpd's own messages ("reached per-IP limit", ...): one a refused
 * connection, so a flood would flood the log; debug only. */
static void on_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    bb_debug("metrics http: %s", msg);
}

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *text,
                              const char *allow)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    (void)version;
    (void)upload_data;
    static int headers_seen;
    struct bb__http *h = cls;
    /* The first call brings the headers only: an answer queued then would
     * make the library close the connection after it (the body might not be
     * over), and a scraper reconnect for every scrape. Answer once the
     * request is whole; a body, which no method here takes, is dropped. Until
     * then the watchdog still counts, so a trickled body is no way around it. */
    if (!*req_cls) {
        *req_cls = &headers_seen;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    owed_since(h, conn, 0);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return answer(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n", "GET, HEAD");
    if (strcmp(url, "/metrics") != 0)
        return answer(conn, MHD_HTTP_NOT_FOUND, "batchbroker: the metrics are at /metrics\n",
                      NULL);
    size_t len;
    char *page = bb__expo_page(h->b, &len);
    if (!page)
        return answer(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n", NULL);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, page, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(page);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

int bb__http_start(struct bb__broker *b, struct bb__http **out)
{
    *out = NULL;
    const char *where = b->cfg->metrics_listen;
    struct sockaddr_storage sa;
    socklen_t salen;
    char msg[256];
    int rc = bb__config_listen_addr(where, &sa, &salen, msg, sizeof msg);
    if (rc < 0)
        bb_error("%s", msg); /* checked with the configuration; cannot happen */
    if (rc <= 0)
        return rc;
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port;
    if (sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
    }
    const char *lb = sa.ss_family == AF_INET6 ? "[" : "", *rb = sa.ss_family == AF_INET6 ? "]" : "";

    /* Our own socket, so that a busy port is our clear error, not the
     * library's. SO_REUSEADDR: a restart does not wait for TIME_WAIT (a
     * second listener on the port still fails). */
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&sa, salen) < 0 || listen(fd, HTTP_BACKLOG) < 0) {
        bb_error("metrics_listen = %s: cannot listen on %s%s%s:%u: %s", where, lb, host, rb, port,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct bb__http *h = calloc(1, sizeof *h);
    if (!h) {
        bb_error("out of memory");
        close(fd);
        return -1;
    }
    h->b = b;
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    for (unsigned i = 0; i < HTTP_TRACKED; i++)
        h->conns[i].fd = -1;
    /* The server's thread inherits this mask: SIGTERM, SIGINT and SIGHUP stay
     * with the threads that expect them. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG,
                            0, NULL, NULL, on_request, h,
                            /* First, or the library logs its own way before it. */
                            MHD_OPTION_EXTERNAL_LOGGER, on_log, NULL,
                            MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_CONNECTION_LIMIT, HTTP_CONNECTIONS,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, HTTP_PER_ADDRESS,
                            MHD_OPTION_CONNECTION_TIMEOUT, HTTP_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_MEMORY,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_END);
    if (h->d)
        h->watching = pthread_create(&h->watchdog, NULL, watchdog_main, h) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!h->d || !h->watching) {
        bb_error("metrics_listen = %s: cannot start the HTTP server", where);
        if (h->d)
            MHD_stop_daemon(h->d);
        else
            close(fd);
        pthread_cond_destroy(&h->cv);
        pthread_mutex_destroy(&h->mu);
        free(h);
        return -1;
    }
    bb_info("metrics at http://%s%s%s:%u/metrics", lb, host, rb, port);
    *out = h;
    return 0;
}

void bb__http_stop(struct bb__http *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->stop = true;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->watchdog, NULL);
    MHD_stop_daemon(h->d); /* joins its thread, closes the listening socket */
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
