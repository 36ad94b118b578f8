// The public headers a C++ program uses, compiled with the project's C++
// warning flags (-Wall -Wextra -Wshadow -Werror) and -pedantic: a header
// change that breaks C++ users fails the build. protocol.h is the C11
// shared-memory layout (_Atomic) and is not meant for C++.
#include <batchbroker/backend.h>
#include <batchbroker/client.h>
#include <batchbroker/strategy.h>

static_assert(sizeof(struct bb_model_stats) > 0, "struct reachable from C++");
