/* bb_version: the version this library was built as (CMakeLists.txt). */
#include "batchbroker/client.h"
#include "batchbroker/version.h"

const char *bb_version(int *major, int *minor, int *patch)
{
    if (major)
        *major = BB_VERSION_MAJOR;
    if (minor)
        *minor = BB_VERSION_MINOR;
    if (patch)
        *patch = BB_VERSION_PATCH;
    return BB_VERSION_STRING;
}
