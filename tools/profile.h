/* bbctl profile (profile.c): sample a broker, write an HTML report. */
#ifndef BBCTL_PROFILE_H
#define BBCTL_PROFILE_H

struct bbctl_profile_args {
    const char *html, *only; /* only: --model, or NULL for every model */
    double seconds;
};

/* argv[0] is "profile"; the rest: --html FILE [--seconds N] [--model NAME].
 * Returns 0, or 2 after saying what is wrong (a usage error, found before
 * the broker is asked anything). */
int bbctl_profile_args(int argc, char **argv, struct bbctl_profile_args *out);

/* Sample the broker on sock as a and write the report. Returns the exit
 * status: 0, or 1 (broker or file failure). */
int bbctl_profile(int sock, const char *socket_path, const struct bbctl_profile_args *a);

#endif
