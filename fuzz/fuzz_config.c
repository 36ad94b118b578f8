/* libFuzzer harness: the configuration parser and the -o overrides
 * (broker/config.c).
 *
 * Input: the INI text up to the first NUL byte, then up to 8 NUL-separated
 * "-o" arguments. Whatever the input, the parser must return either a
 * configuration or an error with a message. A configuration built from a
 * file and overrides must survive its own dump: reading the dump back gives
 * the same values (bb__config_reload finds nothing changed and nothing
 * skipped). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* A memfd holding len bytes, named by a /proc path the parser can fopen. */
static int memfile(const void *p, size_t len, char *path, size_t pathlen)
{
    int fd = memfd_create("fuzz.ini", MFD_CLOEXEC);
    if (fd < 0 || (len && write(fd, p, len) != (ssize_t)len))
        abort();
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct bb__broker_config cfg, back;
    bb__log_level = -1;
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    size_t file_len = strnlen(buf, size);
    const char *ov[8];
    int nov = 0;
    for (size_t at = file_len + 1; at < size && nov < 8; at += strlen(buf + at) + 1)
        ov[nov++] = buf + at;

    char path[64], err[1024] = "";
    int fd = memfile(buf, file_len, path, sizeof path);
    int rc = bb__config_build(&cfg, path, ov, nov, err, sizeof err);
    close(fd);
    if (rc < 0 && !err[0])
        abort(); /* a refusal must say why */
    if (rc == 0) {
        char *dump = NULL;
        size_t dump_len = 0;
        FILE *f = open_memstream(&dump, &dump_len);
        if (!f)
            abort();
        bb__config_dump(&cfg, f);
        fclose(f);
        fd = memfile(dump, dump_len, path, sizeof path);
        bb__config_defaults(&back);
        if (bb__config_load(&back, path, err, sizeof err) < 0) {
            fprintf(stderr, "the dump of an accepted configuration does not load: %s\n%s", err,
                    dump);
            abort();
        }
        close(fd);
        char changed_keys[4096], skipped[4096];
        int changed = bb__config_reload(&cfg, &back, changed_keys, sizeof changed_keys, skipped,
                                        sizeof skipped);
        if (changed || skipped[0]) {
            fprintf(stderr, "the dump reads back different: %d changed (%s), skipped: %s\n%s",
                    changed, changed_keys, skipped, dump);
            abort();
        }
        free(dump);
    }
    free(buf);
    return 0;
}
