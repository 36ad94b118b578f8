/* A test shim for the broker (LD_PRELOAD): it holds the broker in one call
 * on one path, once, so that a test can do there what a racing process
 * could do at that moment. $BBT_HOLD_CALL names the call (unlink, or
 * listen: on a Unix socket bound to the path) and $BBT_HOLD_PATH the path;
 * the shim creates PATH.held, and waits until the test removes it (10 s at
 * most) before it makes the call. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void hold(const char *call, const char *path)
{
    static bool held;
    const char *c = getenv("BBT_HOLD_CALL"), *p = getenv("BBT_HOLD_PATH");
    if (held || !c || !p || strcmp(c, call) != 0 || strcmp(p, path) != 0)
        return;
    held = true;
    char mark[4200];
    snprintf(mark, sizeof mark, "%s.held", p);
    int fd = open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
    for (int i = 0; i < 10000 && access(mark, F_OK) == 0; i++)
        usleep(1000);
}

int unlink(const char *path)
{
    hold("unlink", path);
    int (*real)(const char *) = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    return real(path);
}

int listen(int fd, int backlog)
{
    struct sockaddr_un sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && sa.sun_family == AF_UNIX &&
        len > sizeof sa.sun_family)
        hold("listen", sa.sun_path);
    int (*real)(int, int) = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
    return real(fd, backlog);
}
