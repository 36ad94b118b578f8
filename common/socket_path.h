/* The default socket path, computed the same way by the broker (when its
 * configuration names no socket) and by the client library (bb_connect with
 * no path and no $BATCHBROKER_SOCKET): always inside a directory where only
 * the broker's user can create entries, so that no other local user can
 * take the path before the broker starts (docs/operations.md).
 *
 *   $XDG_RUNTIME_DIR/batchbroker.sock       XDG_RUNTIME_DIR set (absolute)
 *   /run/batchbroker/batchbroker.sock       as root
 *   /tmp/batchbroker-UID/batchbroker.sock   otherwise
 *
 * The broker creates the directory of the last two (mode 0755) and refuses to
 * listen in one that another user owns or may write to. */
#ifndef BB_SOCKET_PATH_H
#define BB_SOCKET_PATH_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define BB__SOCKET_NAME "batchbroker.sock"
#define BB__ROOT_SOCKET_DIR "/run/batchbroker"

/* Write the default path for a process of effective uid euid into buf.
 * Returns its length, or -1 if it does not fit. */
static inline int bb__default_socket_path(uid_t euid, char *buf, size_t len)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n;
    if (xdg && xdg[0] == '/')
        n = snprintf(buf, len, "%s/" BB__SOCKET_NAME, xdg);
    else if (euid == 0)
        n = snprintf(buf, len, BB__ROOT_SOCKET_DIR "/" BB__SOCKET_NAME);
    else
        n = snprintf(buf, len, "/tmp/batchbroker-%u/" BB__SOCKET_NAME, (unsigned)euid);
    return n < 0 || (size_t)n >= len ? -1 : n;
}

#endif
