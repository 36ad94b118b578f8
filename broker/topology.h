/* The machine's NUMA topology as the broker uses it (topology.c): nodes and
 * their CPUs, real (libnuma) or fake. A fake topology splits the CPUs the
 * broker may use into N equal groups, so that a one-node machine runs the
 * multi-worker code paths; it pins threads to those groups but binds no
 * memory. It is for testing (docs/configuration.md, numa_fake_nodes). */
#ifndef BB_BROKER_TOPOLOGY_H
#define BB_BROKER_TOPOLOGY_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>

#define BB__MAX_NODES 64

struct bb__topology {
    int nnodes;                    /* nodes with CPUs we may use */
    int node_id[BB__MAX_NODES];    /* the kernel's number of each (fake: 0..n-1) */
    cpu_set_t cpus[BB__MAX_NODES];
    bool fake;
};

/* fake_nodes = 0: the real topology (one node without libnuma). Returns 0, or
 * -1 with a message in err. */
int bb__topo_init(struct bb__topology *t, unsigned fake_nodes, char *err, size_t errlen);
/* The node (index into the topology) a CPU belongs to; 0 if unknown. */
int bb__topo_node_of_cpu(const struct bb__topology *t, int cpu);
/* Pin the calling thread to a node's CPUs. */
void bb__topo_pin(const struct bb__topology *t, int node);
/* Name a thread (top -H, perf, /proc/PID/task/TID/comm), cut to the
 * kernel's 15 characters. Its creator names it, so that the name is there
 * before the broker answers anyone. */
void bb__thread_name(pthread_t t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Ask the kernel to place the pages of [p, p+len) on the node (real
 * topologies only; a preference, not a hard binding). */
void bb__topo_bind(const struct bb__topology *t, void *p, size_t len, int node);

#endif
