/* Backend plugins: find the shared object, dlopen it, and accept its table only
 * if every field we rely on is one we understand (Redis modules, SQLite's
 * sqlite3_vfs.iVersion): a plugin built against another ABI is refused with a
 * message, never half-used. */
#include "plugin.h"

#include <dirent.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "install_dir.h"

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
        n = snprintf(path, pathlen, "%s/bb_backend_%s.so", bb__plugin_dir(plugin_dir),
                     name_or_path);
    }
    if (n < 0 || (size_t)n >= pathlen)
        return fail(err, errlen, "backend path for \"%s\" is longer than %zu bytes",
                    name_or_path, pathlen - 1);
    return 0;
}

#define REBUILD "rebuild it against this broker's include/batchbroker/backend.h"

static bool all_null(void *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i])
            return false;
    return true;
}

/* Checks in an order that never reads past what the plugin promised: the first
 * two words exist in every ABI version, the rest only once the version and its
 * struct_size say so. */
static int check_ops(const char *path, const struct bb_backend_ops *ops, char *err,
                     size_t errlen)
{
    if (!ops)
        return fail(err, errlen, "%s: %s() returned NULL", path, BB_BACKEND_ENTRY_SYMBOL);
    uint32_t v = ops->abi_version;
    if (v != 1 && v != 2)
        return fail(err, errlen,
                    "%s: built against backend ABI version %u; this broker speaks versions 1 "
                    "and 2: " REBUILD, path, (unsigned)v);
    size_t want = v == 1 ? BB_BACKEND_OPS_V1_SIZE : sizeof(struct bb_backend_ops);
    if (ops->struct_size != want)
        return fail(err, errlen,
                    "%s: backend table of ABI version %u is %u bytes, but that version's is "
                    "%zu: " REBUILD, path, (unsigned)v, (unsigned)ops->struct_size, want);
    if (ops->reserved0 != 0)
        return fail(err, errlen, "%s: backend table field reserved0 is %u, must be 0", path,
                    (unsigned)ops->reserved0);
    if (!all_null(ops->reserved, sizeof ops->reserved / sizeof ops->reserved[0]))
        return fail(err, errlen, "%s: backend table field reserved[] is not NULL", path);
    if (!ops->name) return fail(err, errlen, "%s: backend table has no name", path);
    if (!ops->fini) return fail(err, errlen, "%s: backend table has no fini()", path);
    if (v == 1) {
        if (!ops->init) return fail(err, errlen, "%s: backend table has no init()", path);
        if (!ops->process) return fail(err, errlen, "%s: backend table has no process()", path);
        return 0;
    }
    if (ops->reserved1 != 0 ||
        !all_null(ops->reserved2, sizeof ops->reserved2 / sizeof ops->reserved2[0]))
        return fail(err, errlen, "%s: backend table fields reserved1/reserved2[] are not zero",
                    path);
    if (!ops->init == !ops->init2)
        return fail(err, errlen, "%s: an ABI 2 backend table has exactly one of init() and "
                    "init2()", path);
    if (!ops->process && !ops->submit)
        return fail(err, errlen, "%s: backend table has neither process() nor submit()", path);
    if (ops->register_memory || ops->unregister_memory)
        return fail(err, errlen, "%s: register_memory()/unregister_memory() are ABI 1's; an ABI "
                    "2 table uses register_segment()/unregister_segment()", path);
    if (!ops->register_segment != !ops->unregister_segment)
        return fail(err, errlen, "%s: backend table has only one of register_segment() and "
                    "unregister_segment()", path);
    if (ops->submit && (ops->max_inflight < 1 || ops->max_inflight > BB_BACKEND_MAX_INFLIGHT))
        return fail(err, errlen, "%s: max_inflight is %u; with submit() it must be 1..%u", path,
                    (unsigned)ops->max_inflight, BB_BACKEND_MAX_INFLIGHT);
    if (!ops->submit && ops->max_inflight)
        return fail(err, errlen, "%s: max_inflight is %u without submit(); must be 0", path,
                    (unsigned)ops->max_inflight);
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
        size_t plen = strlen(out->path);
        if (why && strncmp(why, out->path, plen) == 0 && strncmp(why + plen, ": ", 2) == 0)
            why += plen + 2; /* named once is enough */
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
    out->abi = ops->abi_version;
    memcpy(&out->table, ops, ops->struct_size); /* a version-1 table: its prefix */
    out->ops = &out->table;
    bb_debug("loaded backend \"%s\" (ABI %u) from %s", ops->name, (unsigned)out->abi, out->path);
    return 0;
}

void bb__plugin_unload(struct bb__plugin *p)
{
    if (!p) return;
    if (p->dl) dlclose(p->dl);
    memset(p, 0, sizeof *p);
}

/* The built-in names in dir ("echo, synthetic"), sorted; "nothing" if none. */
static void builtin_names(const char *dir, char *buf, size_t len)
{
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, alphasort);
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        size_t l = strlen(name);
        if (strncmp(name, "bb_backend_", 11) == 0 && l > 14 && strcmp(name + l - 3, ".so") == 0) {
            size_t used = strlen(buf);
            snprintf(buf + used, len - used, "%s%.*s", used ? ", " : "", (int)(l - 14), name + 11);
        }
        free(ents[i]);
    }
    if (n >= 0)
        free(ents);
    if (!buf[0])
        snprintf(buf, len, n < 0 ? "cannot be read" : "has no backend plugins");
}

void bb__plugin_list(FILE *out, const char *plugin_dir)
{
    char names[1024];
    const char *dir = bb__plugin_dir(plugin_dir);
    builtin_names(dir, names, sizeof names);
    fprintf(out, "Backends in %s: %s\n(backend = NAME loads bb_backend_NAME.so from there; "
                 "plugin_dir or\n$BATCHBROKER_PLUGIN_DIR name another directory)\n", dir, names);
}

int bb__plugin_load_model(const struct bb__model_config *m, const char *plugin_dir,
                          struct bb__plugin *out, char *err, size_t errlen)
{
    char why[768];
    if (bb__plugin_load(m->backend, plugin_dir, out, why, sizeof why) == 0)
        return 0;
    /* A built-in name that is not there: say where we looked and what is. */
    char names[512] = "";
    if (!strchr(m->backend, '/')) {
        char path[600];
        snprintf(path, sizeof path, "%s/bb_backend_%s.so", bb__plugin_dir(plugin_dir), m->backend);
        if (access(path, F_OK) < 0) {
            char list[400];
            builtin_names(bb__plugin_dir(plugin_dir), list, sizeof list);
            snprintf(names, sizeof names, "; backends in %s: %s (plugin_dir or "
                     "$BATCHBROKER_PLUGIN_DIR name another directory)",
                     bb__plugin_dir(plugin_dir), list);
        }
    }
    return fail(err, errlen, "model %s (backend = %s, set at %s): %s%s", m->name, m->backend,
                m->backend_origin[0] ? m->backend_origin : "an unknown place", why, names);
}
