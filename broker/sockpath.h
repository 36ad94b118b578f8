/* The control socket's path: taking it over only when nobody uses it. */
#ifndef BB_BROKER_SOCKPATH_H
#define BB_BROKER_SOCKPATH_H

#include <stdbool.h>
#include <sys/types.h>

/* The socket file this broker bound, as bb__sockpath_note found it. */
struct bb__sockfile {
    dev_t dev;
    ino_t ino;
    bool noted;
};

/* Two brokers started at once on one path could both find a stale socket
 * there, and the later one's unlink remove the socket the other had just
 * bound. So a broker takes the path (claim, bind, publish) holding an
 * exclusive lock of PATH.lock, a file it removes once done: returns the
 * lock's descriptor, or -1 after logging why (another broker holds it:
 * it is starting on the path). */
int bb__sockpath_lock(const char *path);
/* Remove PATH.lock and release it. */
void bb__sockpath_unlock(const char *path, int lock);

/* Make path ready for bind(): nothing there, or a stale socket file (one
 * nobody listens on, e.g. left by a killed broker), which is removed.
 * Returns 0, or -1 after logging why: the path is not a socket, something
 * (a broker or any other program, of any socket type) still listens on it,
 * or it cannot be probed. */
int bb__sockpath_claim(const char *path);

/* Open the socket just bound at path to every user (mode 0666: admission
 * is by credentials, not file modes) and note it in f. Returns 0, or -1
 * after logging that path no longer holds a socket (someone replaced it). */
int bb__sockpath_publish(const char *path, struct bb__sockfile *f);

/* Remove path if it is still the file noted: by the time the broker stops,
 * the path may be another broker's (its file removed by hand and a new
 * broker started, or one that found ours stale once we stopped listening).
 * Then forget it. */
void bb__sockpath_remove(const char *path, struct bb__sockfile *f);

#endif
