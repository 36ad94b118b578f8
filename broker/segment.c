/* Client segments and worker pages.
 *
 * A client segment is a memfd of the size the layout needs, sealed against
 * shrinking (which would make the broker's next read raise SIGBUS), growing
 * and further sealing, mapped, and its header written with the version word
 * last (protocol.h). */
#include "segment.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "batchbroker/client.h"
#include "util_internal.h"

int bb__segment_create(uint32_t client_id, uint32_t nslots, uint64_t want_bytes, char **base,
                       struct bb__layout *lay, int *memfd)
{
    bb__layout_compute(nslots, want_bytes, lay);
    char name[32];
    snprintf(name, sizeof name, "batchbroker-client-%u", client_id);
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return BB_ESYS;
    if (ftruncate(fd, (off_t)lay->size) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        close(fd);
        return BB_ESYS;
    }
    void *p = mmap(NULL, lay->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return BB_ENOMEM;
    }
    struct bb_shm_header *hd = p;
    hd->magic = BB_SHM_MAGIC;
    hd->header_size = BB_SHM_HEADER_SIZE;
    hd->slot_size = BB_SHM_SLOT_SIZE;
    hd->segment_size = lay->size;
    hd->nslots = lay->nslots;
    hd->sq_entries = lay->sq_entries;
    hd->cq_entries = lay->cq_entries;
    hd->client_id = client_id;
    hd->sq_off = lay->sq_off;
    hd->cq_off = lay->cq_off;
    hd->slots_off = lay->slots_off;
    hd->heap_off = lay->heap_off;
    hd->heap_size = lay->size - lay->heap_off;
    hd->broker_pid = (uint32_t)getpid();
    hd->max_input_bytes = UINT32_MAX;
    /* Written last: a client that sees the version sees everything above. */
    atomic_store_explicit(&hd->shm_version, BB_SHM_VERSION, memory_order_release);
    *base = p;
    *memfd = fd;
    return 0;
}

int bb__worker_page_create(uint32_t id, int node, uint32_t flags, struct bb_shm_worker **page,
                           int *fd)
{
    char name[32];
    snprintf(name, sizeof name, "batchbroker-worker-%u", id);
    int mfd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0)
        return BB_ESYS;
    void *p = MAP_FAILED;
    if (ftruncate(mfd, BB_SHM_WORKER_SIZE) == 0)
        p = mmap(NULL, BB_SHM_WORKER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    /* Our mapping stays writable; any new writable mapping (a client's) is
     * refused from now on. */
    if (p == MAP_FAILED || fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW |
                                                     F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0) {
        if (p != MAP_FAILED)
            munmap(p, BB_SHM_WORKER_SIZE);
        close(mfd);
        return BB_ESYS;
    }
    struct bb_shm_worker *w = p;
    w->magic = BB_SHM_WORKER_MAGIC;
    w->size = BB_SHM_WORKER_SIZE;
    w->flags = flags;
    w->worker_id = id;
    w->numa_node = node;
    atomic_store_explicit(&w->shm_heartbeat_ns, bb__now_ns(), memory_order_relaxed);
    atomic_store_explicit(&w->shm_broker_state, BB_BROKER_RUNNING, memory_order_relaxed);
    atomic_store_explicit(&w->shm_version, BB_SHM_VERSION, memory_order_release);
    *page = w;
    *fd = mfd;
    return 0;
}
