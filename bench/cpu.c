/* CPU accounting and pinning. */
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench.h"

/* utime + stime of one /proc stat file, or -1. The fields after ")" (the
 * command name may contain spaces): state(3) ppid pgrp session tty tpgid
 * flags minflt cminflt majflt cmajflt utime(14) stime(15). */
static double stat_cpu_s(const char *path)
{
    char buf[1024];
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

int bench_proc_tasks(pid_t pid, struct bench_task_cpu *out, int max)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while (n < max && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[64 + sizeof e->d_name + 8];
        snprintf(path, sizeof path, "%s/%s/stat", dir, e->d_name);
        double cpu = stat_cpu_s(path);
        snprintf(path, sizeof path, "%s/%s/comm", dir, e->d_name);
        FILE *f = fopen(path, "r");
        if (cpu < 0 || !f) { /* the thread ended */
            if (f) fclose(f);
            continue;
        }
        struct bench_task_cpu *t = &out[n];
        if (!fgets(t->name, sizeof t->name, f)) t->name[0] = 0;
        fclose(f);
        t->name[strcspn(t->name, "\n")] = 0;
        /* io_uring's threads are named for the process ("iou-sqp-PID"),
         * which each spawned broker changes: without it rounds merge. */
        char *dash = strrchr(t->name, '-');
        if (!strncmp(t->name, "iou-", 4) && dash && dash > t->name + 4 &&
            strspn(dash + 1, "0123456789") == strlen(dash + 1))
            *dash = 0;
        t->tid = atoi(e->d_name);
        t->cpu_s = cpu;
        n++;
    }
    closedir(d);
    return n;
}

/* Add cpu to the row called name, made if there is room; returns the row,
 * or NULL where there was none. */
static struct bench_thread_cpu *add_row(struct bench_run_result *r, const char *name, double cpu)
{
    int i = 0;
    while (i < r->nserver_threads && strcmp(r->server_threads[i].name, name)) i++;
    if (i == r->nserver_threads) {
        if (i == BENCH_MAX_THREAD_ROWS) return NULL;
        snprintf(r->server_threads[i].name, sizeof r->server_threads[i].name, "%s", name);
        r->server_threads[i].threads = 0;
        r->server_threads[i].cpu_s = 0;
        r->nserver_threads++;
    }
    r->server_threads[i].cpu_s += cpu;
    return &r->server_threads[i];
}

static int by_cpu_desc(const void *x, const void *y)
{
    double a = ((const struct bench_thread_cpu *)x)->cpu_s;
    double b = ((const struct bench_thread_cpu *)y)->cpu_s;
    return (a < b) - (a > b);
}

void bench_thread_rows(const struct bench_task_cpu *a, int na, const struct bench_task_cpu *b,
                       int nb, struct bench_run_result *r)
{
    r->nserver_threads = 0;
    for (int j = 0; j < nb; j++) {
        double before = 0;
        for (int i = 0; i < na; i++)
            if (a[i].tid == b[j].tid) before = a[i].cpu_s;
        struct bench_thread_cpu *row = add_row(r, b[j].name, b[j].cpu_s - before);
        if (row) row->threads++;
    }
    qsort(r->server_threads, (size_t)r->nserver_threads, sizeof r->server_threads[0], by_cpu_desc);
}

void bench_thread_rows_add(struct bench_run_result *acc, const struct bench_run_result *one)
{
    if (!acc->nserver_threads || !one->nserver_threads) {
        acc->nserver_threads = 0; /* unknown in some round */
        return;
    }
    /* A round's thread counts are each round's own: keep the largest. */
    for (int j = 0; j < one->nserver_threads; j++) {
        const struct bench_thread_cpu *t = &one->server_threads[j];
        struct bench_thread_cpu *row = add_row(acc, t->name, t->cpu_s);
        if (row && row->threads < t->threads) row->threads = t->threads;
    }
    qsort(acc->server_threads, (size_t)acc->nserver_threads, sizeof acc->server_threads[0],
          by_cpu_desc);
}

/* utime + stime of the whole thread group (clock ticks, usually 10 ms: runs
 * of a few seconds are accurate to a percent or so). */
double bench_proc_cpu_s(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    return stat_cpu_s(path);
}

double bench_self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int bench_pin_self(const int *cpus, int n, uint32_t idx)
{
    if (n <= 0) return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpus[idx % (uint32_t)n], &set);
    return sched_setaffinity(0, sizeof set, &set);
}

/* "0-3,6" -> {0,1,2,3,6}. Returns the count, or -1. */
int bench_parse_cpus(const char *s, int *cpus, int max)
{
    int n = 0;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b;
        if (end == s || a < 0) return -1;
        b = a;
        if (*end == '-') {
            s = end + 1;
            b = strtol(s, &end, 10);
            if (end == s || b < a) return -1;
        }
        for (long c = a; c <= b; c++) {
            if (n == max || c >= CPU_SETSIZE) return -1;
            cpus[n++] = (int)c;
        }
        if (*end == ',') end++;
        else if (*end) return -1;
        s = end;
    }
    return n;
}
