/* Admission: who may attach, and refusals explained in the log. Both sides
 * check the other (the broker its allow-lists, the client library the
 * broker's uid): whichever side refuses, the broker's log says what was
 * refused and which setting would allow it. Only numbers are logged: a
 * name lookup may go to the network (NSS), and this runs on the dispatcher. */
#include "admission.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static void id_list(char *buf, size_t len, const uint32_t *ids, size_t n)
{
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s%" PRIu32, i ? "," : "", ids[i]);
    }
    if (!n)
        snprintf(buf, len, "none");
}

bool bb__admitted(const struct bb__broker_config *cfg, const struct ucred *cr)
{
    for (size_t i = 0; i < cfg->nuids; i++)
        if (cfg->allowed_uids[i] == cr->uid)
            return true;
    for (size_t i = 0; i < cfg->ngids; i++)
        if (cfg->allowed_gids[i] == cr->gid)
            return true;
    char uids[BB_MAX_IDS * 11 + 8], gids[BB_MAX_IDS * 11 + 8];
    id_list(uids, sizeof uids, cfg->allowed_uids, cfg->nuids);
    id_list(gids, sizeof gids, cfg->allowed_gids, cfg->ngids);
    bb_warn("refused client pid %d: uid %u gid %u not allowed (allowed_uids = %s, "
            "allowed_gids = %s); to admit it, add uid %u to allowed_uids or gid %u to "
            "allowed_gids in [broker]",
            (int)cr->pid, (unsigned)cr->uid, (unsigned)cr->gid, uids, gids, (unsigned)cr->uid,
            (unsigned)cr->gid);
    return false;
}

void bb__admission_log_distrust(pid_t pid, uid_t uid)
{
    unsigned me = (unsigned)geteuid();
    bb_warn("client pid %d (uid %u) refused this broker: the client library trusts only "
            "root, its own uid and the uids in its $BATCHBROKER_TRUSTED_UIDS, and this broker "
            "runs as uid %u; add %u to the client's BATCHBROKER_TRUSTED_UIDS, or run the "
            "broker as uid %u or root",
            (int)pid, (unsigned)uid, me, me, (unsigned)uid);
}
