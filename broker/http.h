/* The metrics HTTP endpoint (http.c): GET /metrics on [broker] metrics_listen,
 * served by libmicrohttpd's own thread. */
#ifndef BB_BROKER_HTTP_H
#define BB_BROKER_HTTP_H

struct bb__broker;
struct bb__http;

/* Bind b->cfg->metrics_listen and start serving (nothing when it is empty:
 * *out = NULL). Returns 0, or -1 when the address cannot be bound or the
 * server cannot start (logged: a runtime failure, exit status 1). */
int bb__http_start(struct bb__broker *b, struct bb__http **out);

/* Stop the server and join its thread. Accepts NULL. */
void bb__http_stop(struct bb__http *h);

#endif
