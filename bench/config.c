/* Reads the parts of a broker config the bench needs: the socket, the plugin
 * directory and the model's backend, params and batching policy, so that the
 * baselines run exactly what the broker runs. */
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

struct cfg_ctx {
    struct bench_model *m;
    char section[80];
    int found;
    char *err;
    size_t errlen;
};

static int parse_u32(const char *v, uint32_t *out)
{
    char *end;
    unsigned long x = strtoul(v, &end, 10);
    if (end == v || *end || x > UINT32_MAX) return -1;
    *out = (uint32_t)x;
    return 0;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    struct cfg_ctx *c = user;
    struct bench_model *m = c->m;
    int bad = 0;
    if (!strcmp(section, "broker")) {
        if (!strcmp(name, "socket")) {
            snprintf(m->socket, sizeof m->socket, "%s", value);
        } else if (!strcmp(name, "plugin_dir")) {
            snprintf(m->plugin_dir, sizeof m->plugin_dir, "%s", value);
        } else if (!strcmp(name, "spin_us")) {
            uint32_t v = 0;
            bad = parse_u32(value, &v);
            m->spin_us = v;
        }
    } else if (!strcmp(section, c->section)) {
        c->found = 1;
        if (!strcmp(name, "backend")) {
            snprintf(m->backend, sizeof m->backend, "%s", value);
        } else if (!strcmp(name, "max_batch_size")) {
            bad = parse_u32(value, &m->max_batch_size);
        } else if (!strcmp(name, "max_wait_us")) {
            bad = parse_u32(value, &m->max_wait_us);
        } else if (!strcmp(name, "instances")) {
            bad = parse_u32(value, &m->instances);
        } else if (!strncmp(name, "param.", 6)) {
            if (m->nparams == sizeof m->params / sizeof m->params[0]) {
                snprintf(c->err, c->errlen, "[%s]: too many params", section);
                return 0;
            }
            snprintf(m->params[m->nparams].key, sizeof m->params[0].key, "%s", name + 6);
            snprintf(m->params[m->nparams].value, sizeof m->params[0].value, "%s", value);
            m->nparams++;
        }
    }
    if (bad) snprintf(c->err, c->errlen, "[%s] %s = \"%s\": not a number", section, name, value);
    return !bad;
}

int bench_model_load(const char *path, const char *model, struct bench_model *m, char *err,
                     size_t errlen)
{
    struct cfg_ctx c = {.m = m, .err = err, .errlen = errlen};
    snprintf(c.section, sizeof c.section, "model.%s", model);
    err[0] = 0;
    int rc = ini_parse(path, on_key, &c);
    if (rc < 0) {
        snprintf(err, errlen, "%s: cannot read", path);
        return -1;
    }
    if (rc > 0) {
        if (!err[0]) snprintf(err, errlen, "syntax error");
        char msg[256];
        snprintf(msg, sizeof msg, "%s:%d: %s", path, rc, err);
        snprintf(err, errlen, "%s", msg);
        return -1;
    }
    if (!c.found) {
        snprintf(err, errlen, "%s: no [%s] section", path, c.section);
        return -1;
    }
    return 0;
}
