/* Backend plugins: dlopen, ABI checks, one loaded table per model. */
#ifndef BB_BROKER_PLUGIN_H
#define BB_BROKER_PLUGIN_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "batchbroker/backend.h"
#include "config.h"

struct bb__plugin {
    void *dl;
    /* The plugin's table as a version-2 table (points at `table`): a
     * version-1 table is copied into its prefix, the rest stays zero, so the
     * broker reads every field without looking at the version again. */
    const struct bb_backend_ops *ops;
    struct bb_backend_ops table;
    uint32_t abi;                  /* the version the plugin was built against */
    char path[512];
};

/* Load a backend. name_or_path with a '/' is a path; otherwise it names a
 * built-in plugin, found as "<plugin_dir>/bb_backend_<name>.so". Refuses a
 * missing entry symbol, an abi_version other than 1 or 2, a struct_size that
 * is not its version's, non-zero reserved fields, a missing required
 * function or a combination the version does not allow (backend.h): returns
 * -1 with a message naming the file and the problem in err. */
int bb__plugin_load(const char *name_or_path, const char *plugin_dir, struct bb__plugin *out,
                    char *err, size_t errlen);

/* bb__plugin_load for a model's backend key. A failure's message starts with
 * the model, its backend value and where that was set (FILE:LINE, a -o
 * override, or the default configuration); for a built-in name that is not
 * installed it ends with the directory searched and the names found there. */
int bb__plugin_load_model(const struct bb__model_config *m, const char *plugin_dir,
                          struct bb__plugin *out, char *err, size_t errlen);

/* --help: one line naming the plugin directory and the backends in it. */
void bb__plugin_list(FILE *out, const char *plugin_dir);

/* dlclose. Accepts a zeroed struct. */
void bb__plugin_unload(struct bb__plugin *p);

#endif
