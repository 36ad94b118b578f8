/* The README's example: one request to the echo model, zero copy both ways.
 * Run it with BATCHBROKER_SOCKET=/path/to/socket build/examples/bb-hello. */
#include <stdio.h>
#include <string.h>
#include <batchbroker/client.h>

int main(void)
{
    bb_client *c;
    bb_model *m;
    bb_request *r;
    if (bb_connect(NULL, NULL, &c) < 0) /* NULL: $BATCHBROKER_SOCKET, else the default socket */
        return 1;
    if (bb_model_open(c, "echo", &m) < 0 || bb_request_new(m, 64, 64, &r) < 0)
        return 1;
    strcpy(bb_request_input(r), "hello");         /* write straight into shared memory */
    bb_request_set_input_len(r, 6);               /* send 6 of the 64 bytes */
    int rc = bb_submit(r, NULL);                  /* a few stores, no system call */
    if (rc == 0)
        rc = bb_wait(r, 1000000000);              /* up to 1 s */
    if (rc == 0)
        rc = bb_request_status(r);                /* this request's own outcome */
    size_t len;
    const char *out = bb_request_output(r, &len); /* zero-copy view, NULL unless rc == 0 */
    printf("%s: %.*s\n", bb_strerror(rc), (int)len, out ? out : "");
    bb_request_free(r);
    bb_disconnect(c);
    return rc != 0;
}
