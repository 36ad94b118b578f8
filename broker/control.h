/* The control socket (control.c): listening, admission, and the messages of
 * include/batchbroker/protocol.h. */
#ifndef BB_BROKER_CONTROL_H
#define BB_BROKER_CONTROL_H

#include <stdbool.h>
#include <stdint.h>

struct bb__client;
struct bb__worker;

struct bb__sockfile;

/* Bind and listen on path, noting the socket file in f; returns the fd or
 * -1 (logged). */
int bb__control_listen(const char *path, struct bb__sockfile *f);
/* A connection was accepted: admission, then a session. */
void bb__control_accept(struct bb__worker *w, int fd);
/* Give a client that said HELLO its segment, on the worker that serves it
 * (after the acceptor moved it there, or the acceptor itself). */
void bb__control_hello(struct bb__worker *w, struct bb__client *c);
/* The registration thread registered the session's segment (registrar.c):
 * answer the HELLO, unless the client left meanwhile. */
void bb__control_registered(struct bb__worker *w, struct bb__client *c);
/* The session's socket is readable: handle its queued messages, up to a
 * number a pass; a session with more goes on the worker's backlog. */
void bb__control_readable(struct bb__worker *w, struct bb__client *c);
/* Read on for the sessions of the backlog, once a pass; returns how many. */
int bb__control_backlog(struct bb__worker *w);
/* The process that connected has exited (its pidfd polled readable): the
 * session ends, unless replies to it lie unread on its socket, which
 * therefore another process holds (the dead one's descriptors are closed
 * before its pidfd fires): then it lives on, and counts against its uid
 * (no longer against the pid, which is free), until they are read or the
 * socket closes (bb__control_expire looks at every heartbeat). */
void bb__control_pid_exited(struct bb__worker *w, struct bb__client *c);
/* Drop the worker's sessions past hello_timeout_ms without a HELLO, its
 * operator sessions idle past operator_idle_timeout_ms, and those of exited
 * processes whose replies have been read since (heartbeat). */
void bb__control_expire(struct bb__worker *w, uint64_t now);
/* After a reload: end the worker's sessions whose uid and gid the allow-lists
 * no longer admit, attached clients and operators alike. */
void bb__control_revoke(struct bb__worker *w);

#endif
