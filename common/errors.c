#include "batchbroker/client.h"

const char *bb_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define BB__ERR_STR(name, value, msg) \
    case BB_##name:                   \
        return msg;
        BB_ERRNO_MAP(BB__ERR_STR)
#undef BB__ERR_STR
    }
    return "unknown error";
}

const char *bb_errname(int code)
{
    switch (code) {
    case 0:
        return "OK";
#define BB__ERR_NAME(name, value, msg) \
    case BB_##name:                    \
        return "BB_" #name;
        BB_ERRNO_MAP(BB__ERR_NAME)
#undef BB__ERR_NAME
    }
    return "BB_EUNKNOWN";
}
