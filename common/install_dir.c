#include "install_dir.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef BB_PLUGIN_DIR
#define BB_PLUGIN_DIR "."
#endif

const char *bb__beside_exe(char *buf, size_t len, const char *build_path, const char *rel)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        snprintf(buf, len, "%s", build_path);
        return buf;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = '\0';
#ifdef BB_BUILD_EXE_DIR
    /* /proc/self/exe is already canonical; the build directory may not be. */
    char build[PATH_MAX];
    if (realpath(BB_BUILD_EXE_DIR, build) && strcmp(build, exe) == 0) {
        snprintf(buf, len, "%s", build_path);
        return buf;
    }
#endif
    char joined[PATH_MAX + 256], canon[PATH_MAX];
    snprintf(joined, sizeof joined, "%s/%s", exe, rel);
    /* Canonical when it exists, for messages a person can read. */
    snprintf(buf, len, "%s", realpath(joined, canon) ? canon : joined);
    return buf;
}

static char default_dir[PATH_MAX];
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void find_default_dir(void)
{
#ifdef BB_PLUGIN_DIR_REL
    bb__beside_exe(default_dir, sizeof default_dir, BB_PLUGIN_DIR, BB_PLUGIN_DIR_REL);
#else
    snprintf(default_dir, sizeof default_dir, "%s", BB_PLUGIN_DIR);
#endif
}

const char *bb__default_plugin_dir(void)
{
    pthread_once(&default_once, find_default_dir);
    return default_dir;
}

const char *bb__plugin_dir(const char *configured)
{
    if (configured && configured[0])
        return configured;
    const char *env = getenv("BATCHBROKER_PLUGIN_DIR");
    if (env && env[0])
        return env;
    return bb__default_plugin_dir();
}
