/* A shared object that loads fine but is not a backend: it exports a
 * near-miss of the entry symbol, so only dlsym can tell. */
#include "batchbroker/backend.h"

BB_BACKEND_EXPORT int bb_backend_entry_missing(void);

BB_BACKEND_EXPORT int bb_backend_entry_missing(void)
{
    return 0;
}
