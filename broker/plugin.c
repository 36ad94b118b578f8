/* Backend plugins: find the shared object, dlopen it, and accept its table only
 * if every field we rely on is one we understand (Redis modules, SQLite's
 * sqlite3_vfs.iVersion): a plugin built against another ABI is refused with a
 * message, never half-used. */
#include "plugin.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* The build points this at its backends/ output; "." keeps a bare compile
 * working. */
#ifndef BB_PLUGIN_DIR
#define BB_PLUGIN_DIR "."
#endif

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A built-in name becomes part of a file name: allow only characters that
 * cannot climb out of the plugin directory or surprise a shell reader. */
static int valid_builtin_name(const char *name)
{
    if (!name[0]) return 0;
    for (const char *c = name; *c; c++) {
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
              (*c >= '0' && *c <= '9') || *c == '_' || *c == '-'))
            return 0;
    }
    return 1;
}

/* Precedence: the caller's plugin_dir (broker config), then the environment,
 * then the build's default. An empty string counts as unset. */
static const char *plugin_dir_for(const char *plugin_dir)
{
    if (plugin_dir && plugin_dir[0]) return plugin_dir;
    const char *env = getenv("BATCHBROKER_PLUGIN_DIR");
    if (env && env[0]) return env;
    return BB_PLUGIN_DIR;
}

static int resolve_path(const char *name_or_path, const char *plugin_dir, char *path,
                        size_t pathlen, char *err, size_t errlen)
{
    int n;
    if (strchr(name_or_path, '/')) {
        n = snprintf(path, pathlen, "%s", name_or_path);
    } else {
        if (!valid_builtin_name(name_or_path))
            return fail(err, errlen,
                        "invalid backend name \"%s\": use a built-in name of "
                        "[A-Za-z0-9_-] or a path containing '/'",
                        name_or_path);
        n = snprintf(path, pathlen, "%s/bb_backend_%s.so", plugin_dir_for(plugin_dir),
                     name_or_path);
    }
    if (n < 0 || (size_t)n >= pathlen)
        return fail(err, errlen, "backend path for \"%s\" is longer than %zu bytes",
                    name_or_path, pathlen - 1);
    return 0;
}

/* Checks in an order that never reads past what the plugin promised: the first
 * two words exist in every ABI version, the rest only once struct_size says so. */
static int check_ops(const char *path, const struct bb_backend_ops *ops, char *err,
                     size_t errlen)
{
    if (!ops)
        return fail(err, errlen, "%s: %s() returned NULL", path, BB_BACKEND_ENTRY_SYMBOL);
    if (ops->abi_version != BB_BACKEND_ABI_VERSION)
        return fail(err, errlen, "%s: backend ABI version %u, this broker speaks %u", path,
                    (unsigned)ops->abi_version, (unsigned)BB_BACKEND_ABI_VERSION);
    if (ops->struct_size < sizeof(struct bb_backend_ops))
        return fail(err, errlen, "%s: backend table is %u bytes, this broker needs %zu",
                    path, (unsigned)ops->struct_size, sizeof(struct bb_backend_ops));
    if (ops->reserved0 != 0)
        return fail(err, errlen, "%s: backend table field reserved0 is %u, must be 0", path,
                    (unsigned)ops->reserved0);
    for (size_t i = 0; i < sizeof ops->reserved / sizeof ops->reserved[0]; i++) {
        if (ops->reserved[i])
            return fail(err, errlen, "%s: backend table field reserved[%zu] is not NULL",
                        path, i);
    }
    if (!ops->name) return fail(err, errlen, "%s: backend table has no name", path);
    if (!ops->init) return fail(err, errlen, "%s: backend table has no init()", path);
    if (!ops->process) return fail(err, errlen, "%s: backend table has no process()", path);
    if (!ops->fini) return fail(err, errlen, "%s: backend table has no fini()", path);
    return 0;
}

/* Look the entry symbol up, call it, and check the table it returns. */
static int find_ops(const char *path, void *dl, const struct bb_backend_ops **ops, char *err,
                    size_t errlen)
{
    dlerror();
    void *sym = dlsym(dl, BB_BACKEND_ENTRY_SYMBOL);
    if (!sym)
        return fail(err, errlen,
                    "%s: no entry symbol %s (not a batchbroker backend, or built "
                    "without BB_BACKEND_EXPORT)",
                    path, BB_BACKEND_ENTRY_SYMBOL);
    /* ISO C has no object-to-function pointer conversion; POSIX guarantees
     * the representation, and memcpy says so without a cast warning. */
    bb_backend_entry_fn entry;
    _Static_assert(sizeof entry == sizeof sym, "function and object pointers differ in size");
    memcpy(&entry, &sym, sizeof entry);
    *ops = entry();
    return check_ops(path, *ops, err, errlen);
}

int bb__plugin_load(const char *name_or_path, const char *plugin_dir, struct bb__plugin *out,
                    char *err, size_t errlen)
{
    if (!out) return fail(err, errlen, "bb__plugin_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!name_or_path) return fail(err, errlen, "no backend name given");

    if (resolve_path(name_or_path, plugin_dir, out->path, sizeof out->path, err, errlen)) {
        memset(out, 0, sizeof *out);
        return -1;
    }

    /* RTLD_NOW: an unresolved symbol fails here, at startup, not in the middle
     * of a batch. RTLD_LOCAL: two backends may define the same symbols. */
    void *dl = dlopen(out->path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        /* dlerror() usually names the file already, but not always (e.g.
         * for a missing dependency), so say which plugin we were loading. */
        const char *why = dlerror();
        fail(err, errlen, "%s: cannot load backend: %s", out->path, why ? why : "unknown error");
        memset(out, 0, sizeof *out);
        return -1;
    }

    const struct bb_backend_ops *ops = NULL;
    if (find_ops(out->path, dl, &ops, err, errlen)) {
        dlclose(dl);
        memset(out, 0, sizeof *out);
        return -1;
    }
    out->dl = dl;
    out->ops = ops;
    bb_debug("loaded backend \"%s\" from %s", ops->name, out->path);
    return 0;
}

void bb__plugin_unload(struct bb__plugin *p)
{
    if (!p) return;
    if (p->dl) dlclose(p->dl);
    memset(p, 0, sizeof *p);
}
