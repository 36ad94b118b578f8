/* What /proc says of another process, for the tests and bb-soak: a field of
 * /proc/PID/status in kB, and the count of its open descriptors. Reading
 * the broker's needs root (the broker is not dumpable). */
#ifndef BB_COMMON_PROCFS_INTERNAL_H
#define BB_COMMON_PROCFS_INTERNAL_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* FIELD of /proc/PID/status (e.g. "RssAnon"), in kB; -1 if unreadable. */
static inline long bb__proc_status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t len = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, len) == 0 && line[len] == ':') {
            v = strtol(line + len + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* Open descriptors of PID; -1 if unreadable. */
static inline int bb__proc_count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 2; /* . and .. */
}

#endif
