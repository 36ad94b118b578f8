/* METRICS round trips for bbctl: the reply carries its document in a memfd
 * (protocol.h), read here into memory. */
#include "fetch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batchbroker/client.h"

#define FETCH_MAX (256u << 20) /* far above any page; a broken length stops here */

static void close_fds(struct msghdr *mh)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof fd, sizeof fd);
            close(fd);
        }
    }
}

int bbctl_fetch(int sock, uint32_t format, uint32_t model_id, char **out, size_t *len)
{
    struct bb_msg_metrics req = {.h = {.type = BB_MSG_METRICS}, .format = format,
                                 .model_id = model_id};
    ssize_t n;
    do /* bbctl profile's SIGINT may land here */
        n = send(sock, &req, sizeof req, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof req)
        return n < 0 && errno == EAGAIN ? BB_ETIMEDOUT : BB_EDISCONNECTED;
    struct bb_msg_metrics_reply rep;
    char cbuf[CMSG_SPACE(4 * sizeof(int))];
    struct iovec iov = {.iov_base = &rep, .iov_len = sizeof rep};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    do
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n <= 0) /* EAGAIN: SO_RCVTIMEO ran out */
        return n < 0 && errno == EAGAIN ? BB_ETIMEDOUT : BB_EDISCONNECTED;
    int fd = -1;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
        cm->cmsg_len == CMSG_LEN(sizeof fd) && !CMSG_NXTHDR(&mh, cm))
        memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    int rc = 0;
    if ((size_t)n < sizeof rep.h || rep.h.type != BB_MSG_METRICS_REPLY)
        rc = BB_EPROTO;
    else if (rep.h.status < 0)
        rc = rep.h.status;
    else if ((size_t)n != sizeof rep || fd < 0 || (mh.msg_flags & MSG_CTRUNC) ||
             rep.length > FETCH_MAX)
        rc = BB_EPROTO;
    struct stat st;
    if (rc == 0 && (fstat(fd, &st) < 0 || (uint64_t)st.st_size < rep.length))
        rc = BB_EPROTO;
    char *buf = rc == 0 ? malloc(rep.length + 1) : NULL;
    if (rc == 0 && !buf)
        rc = BB_ENOMEM;
    for (size_t got = 0; rc == 0 && got < rep.length;) {
        ssize_t r = pread(fd, buf + got, rep.length - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            rc = BB_ESYS;
        else
            got += (size_t)r;
    }
    close_fds(&mh);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[rep.length] = '\0';
    *out = buf;
    *len = rep.length;
    return 0;
}

int bbctl_dump(int sock, uint32_t model_id, struct bb_wire_dump *out)
{
    char *doc;
    size_t len;
    int rc = bbctl_fetch(sock, BB_METRICS_DUMP, model_id, &doc, &len);
    if (rc < 0)
        return rc;
    const struct bb_wire_dump *d = (const struct bb_wire_dump *)doc;
    if (len != sizeof *d || d->size != sizeof *d || d->version != BB_DUMP_VERSION ||
        d->hist_sub_bits != BB_HIST_SUB_BITS || d->hist_buckets != BB_HIST_BUCKETS)
        rc = BB_EPROTO; /* a broker of another build */
    else
        memcpy(out, d, sizeof *out);
    free(doc);
    return rc;
}
