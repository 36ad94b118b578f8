/* The fuzz harnesses' one window into the broker's internals (inproc.c): an
 * in-process broker without a listening socket, sessions on socketpairs, and
 * dispatcher passes driven by hand. When the broker's internals change
 * (several dispatcher workers, handoff rings between them), this pair of
 * files is what to adapt: the harnesses use nothing else of the broker but
 * its configuration parser. */
#ifndef BB_FUZZ_INPROC_H
#define BB_FUZZ_INPROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A session: the harness's end of its socketpair, and where to find the
 * broker's side (its table index and generation). */
struct bbf_session {
    int peer;
    uint32_t idx, gen;
    char *seg;              /* the client segment once attached (bbf_attach) */
    size_t seg_size;
};

/* Start the one in-process broker with "-o" style overrides (plugins from
 * the build's backends directory), with one dispatcher worker: sessions and
 * models all live on workers[0], so no request crosses a mailbox. Aborts on
 * failure: a harness cannot run without it. Idempotent. */
void bbf_start(const char *const *overrides);

/* A new session as if accepted on the socket (admission included). false if
 * the broker refused it. */
bool bbf_session_open(struct bbf_session *s);

/* The broker reads what the peer sent (bb__control_readable); replies are
 * read and dropped, descriptors passed with them closed. */
void bbf_session_feed(struct bbf_session *s);

/* Send a client HELLO for nslots slots and a minimal segment, feed it, and
 * map the segment the broker passes back. false if it did not attach. */
bool bbf_attach(struct bbf_session *s, uint32_t nslots);

/* Send MODEL_OPEN for name and feed it. */
void bbf_model_open(struct bbf_session *s, const char *name);

/* The session is still alive in the broker. */
bool bbf_session_alive(const struct bbf_session *s);

/* One dispatcher pass: drain every live ring, expire and cut batches,
 * publish completions, sweep dead sessions. */
void bbf_pass(void);

/* End the session (as a hang-up would), run passes until the broker let go
 * of it, unmap its segment. */
void bbf_session_close(struct bbf_session *s);

/* With every session closed: the broker holds no request, no byte of model
 * memory, no session, no admission charge. Aborts (a finding) otherwise. */
void bbf_check_idle(void);

#endif
