/* Before binding the control socket, make sure its path belongs to nobody.
 * Only ECONNREFUSED proves a socket file stale: a connect of the wrong type
 * (EPROTOTYPE) to a live stream or datagram server must not read as "no
 * broker here", or the broker would unlink a live socket of another program
 * and take its path over. */
#include "sockpath.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

/* connect()'s errno for one socket type, 0 if it connected. Non-blocking:
 * a live server with a full backlog answers EAGAIN instead of holding us. */
static int probe(const struct sockaddr_un *sa, int type)
{
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return errno;
    int err = connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0 ? 0 : errno;
    close(fd);
    return err;
}

enum probe_result { PATH_STALE, PATH_LIVE, PATH_UNKNOWN };

/* One look at the socket file: who, of which type, answers there. */
static enum probe_result probe_types(const struct sockaddr_un *sa, const char **type, int *err)
{
    static const struct {
        int type;
        const char *name;
    } types[] = {{SOCK_SEQPACKET, "SOCK_SEQPACKET"}, {SOCK_STREAM, "SOCK_STREAM"},
                 {SOCK_DGRAM, "SOCK_DGRAM"}};
    *err = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        *type = types[i].name;
        *err = probe(sa, types[i].type);
        if (*err == EPROTOTYPE)
            continue; /* bound, but to another type: try the next */
        if (*err == ECONNREFUSED)
            return PATH_STALE;
        if (*err == 0 || *err == EAGAIN || *err == EINPROGRESS)
            return PATH_LIVE;
        return PATH_UNKNOWN;
    }
    *type = NULL;
    return PATH_UNKNOWN;
}

static void lock_path(const char *path, char *buf, size_t len)
{
    snprintf(buf, len, "%s.lock", path);
}

/* Open and lock PATH.lock as it is now: 0 and the descriptor in *lock, 1 if
 * another broker removed the file meanwhile (lock the new one), -1 (*busy
 * set where another holds it). */
static int lock_once(const char *path, const char *name, int *lock, bool *busy)
{
    int fd = open(name, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0600);
    if (fd < 0) {
        bb_error("cannot open the lock %s of the socket path: %s", name, strerror(errno));
        return -1;
    }
    struct stat st, now;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        /* Another user's file is not ours to lock and remove. */
        bb_error("%s is not a file of uid %u; not using it as the lock of %s", name,
                 (unsigned)geteuid(), path);
        close(fd);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        *busy = e == EWOULDBLOCK;
        if (*busy)
            bb_error("another broker is taking %s (it holds %s)", path, name);
        else
            bb_error("cannot lock %s: %s", name, strerror(e));
        return -1;
    }
    /* Locked: but the file at name may be another one now. */
    if (lstat(name, &now) < 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
        close(fd);
        return 1;
    }
    *lock = fd;
    return 0;
}

static int lock_path_file(const char *path, bool *busy)
{
    char name[PATH_MAX];
    lock_path(path, name, sizeof name);
    *busy = false;
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = -1, rc = lock_once(path, name, &fd, busy);
        if (rc <= 0)
            return rc < 0 ? -1 : fd;
    }
    bb_error("cannot lock %s: it keeps being replaced", name);
    return -1;
}

int bb__sockpath_lock(const char *path)
{
    bool busy;
    return lock_path_file(path, &busy);
}

void bb__sockpath_unlock(const char *path, int lock)
{
    char name[PATH_MAX];
    lock_path(path, name, sizeof name);
    unlink(name); /* before the release: whoever locks it next finds it gone */
    close(lock);
}

int bb__sockpath_claim(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        bb_error("socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    struct stat st;
    if (lstat(path, &st) < 0)
        return 0; /* nothing there; bind() reports any other problem */
    if (!S_ISSOCK(st.st_mode)) {
        bb_error("%s exists and is not a socket; not replacing it", path);
        return -1;
    }
    /* A broker killed a moment ago still accepts for a few milliseconds: its
     * io_uring (which holds the listening socket for multishot accept) is
     * torn down after the process is gone. So a SOCK_SEQPACKET socket counts
     * as live only if it keeps answering for a while (measured here: 5 ms
     * after SIGKILL). */
    enum probe_result res = PATH_UNKNOWN;
    const char *type = NULL;
    int err = 0;
    for (int attempt = 0; attempt < 20; attempt++) {
        res = probe_types(&sa, &type, &err);
        /* Another program's server is probed once: each probe leaves a
         * connection in its accept queue. */
        if (res != PATH_LIVE || strcmp(type, "SOCK_SEQPACKET") != 0)
            break;
        usleep(10000);
    }
    if (res == PATH_STALE) {
        if (unlink(path) < 0 && errno != ENOENT) {
            bb_error("cannot remove the stale socket %s: %s", path, strerror(errno));
            return -1;
        }
        bb_info("replaced the stale socket %s (nothing listened on it)", path);
        return 0;
    }
    if (res == PATH_LIVE && strcmp(type, "SOCK_SEQPACKET") == 0)
        bb_error("another broker is already listening on %s", path);
    else if (res == PATH_LIVE)
        bb_error("%s is a live %s socket of another program (not a broker); not taking it "
                 "over: choose another [broker] socket path", path, type);
    else
        bb_error("cannot tell whether %s is in use (connect: %s); remove it if it is stale", path,
                 type ? strerror(err) : "no socket type connects");
    return -1;
}

/* Through a descriptor of the file at path, opened without following a
 * symlink: chmod(path) would follow one that replaced the socket meanwhile
 * (whoever may write to the directory can do that) and open its target,
 * any file for a broker run as root, to every user. */
int bb__sockpath_publish(const char *path, struct bb__sockfile *f)
{
    int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        bb_error("%s is not the socket just bound there any more (%s); not serving a socket "
                 "nobody can reach", path, fd < 0 ? strerror(errno) : "replaced");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (chmod(proc, 0666) < 0)
        bb_warn("cannot make %s mode 0666 (%s): only its owner's clients may connect", path,
                strerror(errno));
    close(fd);
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->noted = true;
    return 0;
}

/* Under the path's lock, which a starting broker takes before it looks at
 * the path: without it, one that found this socket stale (it listens no
 * more) between the look below and the unlink would have its own removed. */
void bb__sockpath_remove(const char *path, struct bb__sockfile *f)
{
    if (!f->noted)
        return;
    f->noted = false;
    bool busy;
    int lock = lock_path_file(path, &busy);
    if (lock < 0 && busy) {
        bb_info("leaving %s to the broker taking it", path);
        return;
    }
    struct stat st;
    if (lstat(path, &st) == 0 && st.st_dev == f->dev && st.st_ino == f->ino)
        unlink(path);
    if (lock >= 0)
        bb__sockpath_unlock(path, lock);
}
