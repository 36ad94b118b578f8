/* libFuzzer harness: the control-message handler (broker/control.c) of an
 * in-process broker, on two sessions at once.
 *
 * Input: records of [session and flags: 1 byte][length: 2 bytes LE][bytes],
 * each sent as one datagram to session (byte & 1); with bit 1 set the broker
 * reads what is queued right away. Any sequence (HELLOs of both kinds,
 * model opens, statistics, pins, garbage, truncations) must leave the broker
 * consistent: once both sessions are closed, nothing is held. */
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "inproc.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static const char *const ov[] = {
        "model.echo.instances=0", "model.echo.max_batch_size=4",
        "model.syn.backend=synthetic", "model.syn.instances=0", "model.syn.adaptive=on",
        "broker.max_clients=8", "broker.max_inflight=64", "broker.max_segment_mb=2",
        "broker.default_segment_mb=1", "broker.default_max_inflight=16", NULL};
    bbf_start(ov);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bbf_session s[2];
    bool open[2];
    for (int i = 0; i < 2; i++)
        open[i] = bbf_session_open(&s[i]);
    size_t at = 0;
    while (at + 3 <= size) {
        uint8_t head = data[at];
        size_t len = (size_t)data[at + 1] | (size_t)data[at + 2] << 8;
        at += 3;
        if (len > size - at)
            len = size - at;
        if (len > 1024)
            len = 1024;
        struct bbf_session *t = &s[head & 1];
        if (open[head & 1] && bbf_session_alive(t)) {
            ssize_t n = send(t->peer, data + at, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n; /* a full or closed socket is part of the game */
            if (head & 2)
                bbf_session_feed(t);
        }
        at += len;
    }
    for (int i = 0; i < 2; i++)
        if (open[i]) {
            bbf_session_feed(&s[i]);
            bbf_session_close(&s[i]);
        }
    bbf_check_idle();
    return 0;
}
