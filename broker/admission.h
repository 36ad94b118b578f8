/* Admission by peer credentials, and what the log says when a connection is
 * refused on either side. */
#ifndef BB_BROKER_ADMISSION_H
#define BB_BROKER_ADMISSION_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "config.h"

/* Whether the peer (SO_PEERCRED) may attach: its uid in allowed_uids or its
 * gid in allowed_gids. A refusal is logged with the ids and the keys that
 * would admit it. */
bool bb__admitted(const struct bb__broker_config *cfg, const struct ucred *cr);

/* A client hung up on us because our uid is not one it trusts (its HELLO
 * carried BB_HELLO_DISTRUST): log what would make it trust us. */
void bb__admission_log_distrust(pid_t pid, uid_t uid);

#endif
