/* NUMA topology: see topology.h. */
#include "topology.h"

#include <numa.h>
#include <numaif.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

int bb__topo_init(struct bb__topology *t, unsigned fake_nodes, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) < 0) {
        snprintf(err, errlen, "sched_getaffinity failed");
        return -1;
    }
    int ncpus = CPU_COUNT(&allowed);
    if (fake_nodes) {
        if ((int)fake_nodes > ncpus || fake_nodes > BB__MAX_NODES) {
            snprintf(err, errlen, "numa_fake_nodes = %u, but the broker may use %d CPU(s)",
                     fake_nodes, ncpus);
            return -1;
        }
        t->fake = true;
        t->nnodes = (int)fake_nodes;
        int k = 0;
        for (int cpu = 0; cpu < CPU_SETSIZE && k < ncpus; cpu++) {
            if (!CPU_ISSET(cpu, &allowed))
                continue;
            int node = (int)((long)k * fake_nodes / ncpus);
            CPU_SET(cpu, &t->cpus[node]);
            k++;
        }
        for (int i = 0; i < t->nnodes; i++)
            t->node_id[i] = i;
        return 0;
    }
    if (numa_available() >= 0) {
        int max = numa_max_node();
        struct bitmask *bm = numa_allocate_cpumask();
        for (int n = 0; n <= max && t->nnodes < BB__MAX_NODES && bm; n++) {
            if (numa_node_to_cpus(n, bm) < 0)
                continue;
            cpu_set_t set;
            CPU_ZERO(&set);
            for (int cpu = 0; cpu < CPU_SETSIZE && cpu < (int)bm->size; cpu++)
                if (numa_bitmask_isbitset(bm, (unsigned)cpu) && CPU_ISSET(cpu, &allowed))
                    CPU_SET(cpu, &set);
            if (CPU_COUNT(&set) == 0)
                continue; /* memory-only node, or none of its CPUs is ours */
            t->cpus[t->nnodes] = set;
            t->node_id[t->nnodes++] = n;
        }
        if (bm)
            numa_free_cpumask(bm);
    }
    if (t->nnodes == 0) { /* no libnuma: one node of every allowed CPU */
        t->nnodes = 1;
        t->cpus[0] = allowed;
        t->node_id[0] = -1;
    }
    return 0;
}

int bb__topo_node_of_cpu(const struct bb__topology *t, int cpu)
{
    for (int i = 0; cpu >= 0 && cpu < CPU_SETSIZE && i < t->nnodes; i++)
        if (CPU_ISSET(cpu, &t->cpus[i]))
            return i;
    return 0;
}

void bb__topo_pin(const struct bb__topology *t, int node)
{
    if (node < 0 || node >= t->nnodes || t->nnodes == 1)
        return;
    if (sched_setaffinity(0, sizeof t->cpus[node], &t->cpus[node]) < 0)
        bb_warn("cannot pin a thread to the CPUs of node %d", t->node_id[node]);
}

void bb__thread_name(pthread_t t, const char *fmt, ...)
{
    char name[16]; /* TASK_COMM_LEN */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    pthread_setname_np(t, name);
}

void bb__topo_bind(const struct bb__topology *t, void *p, size_t len, int node)
{
    if (t->fake || node < 0 || node >= t->nnodes || t->node_id[node] < 0 || t->nnodes == 1)
        return;
    unsigned long mask[BB__MAX_NODES / (8 * sizeof(unsigned long)) + 1] = {0};
    int n = t->node_id[node];
    mask[n / (8 * sizeof(unsigned long))] |= 1ul << (n % (8 * sizeof(unsigned long)));
    if (mbind(p, len, MPOL_PREFERRED, mask, sizeof mask * 8 + 1, 0) < 0)
        bb_debug("mbind to node %d failed", n);
}
