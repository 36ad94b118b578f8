/* bbctl profile (profile.c): sample a broker, write an HTML report. */
#ifndef BBCTL_PROFILE_H
#define BBCTL_PROFILE_H

/* argv[0] is "profile"; the rest: --html FILE [--seconds N] [--model NAME].
 * Returns the exit status: 0, 1 (broker or file failure), 2 (usage). */
int bbctl_profile(int sock, const char *socket_path, int argc, char **argv);

#endif
