/* The control socket's path: taking it over only when nobody uses it. */
#ifndef BB_BROKER_SOCKPATH_H
#define BB_BROKER_SOCKPATH_H

/* Make path ready for bind(): nothing there, or a stale socket file (one
 * nobody listens on, e.g. left by a killed broker), which is removed.
 * Returns 0, or -1 after logging why: the path is not a socket, something
 * (a broker or any other program, of any socket type) still listens on it,
 * or it cannot be probed. */
int bb__sockpath_claim(const char *path);

#endif
