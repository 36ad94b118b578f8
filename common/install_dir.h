/* Where the installed files are, for the broker and bb-bench: found relative
 * to the running executable, so that an installed tree can be moved (or
 * staged with DESTDIR), while an executable still in its build directory
 * uses the build tree's files. */
#ifndef BB_INSTALL_DIR_H
#define BB_INSTALL_DIR_H

#include <stddef.h>

/* build_path while this executable runs from its build directory
 * (BB_BUILD_EXE_DIR, compiled in), else rel (a path relative to the
 * directory the executable is installed in) resolved against the
 * executable's directory. Without /proc (nothing to resolve against):
 * build_path. Written to buf; returns buf. */
const char *bb__beside_exe(char *buf, size_t len, const char *build_path, const char *rel);

/* The directory a backend named without a path is looked up in: configured
 * if it is non-empty (the [broker] plugin_dir key), else
 * $BATCHBROKER_PLUGIN_DIR if non-empty, else bb__default_plugin_dir(). */
const char *bb__plugin_dir(const char *configured);

/* The compiled-in default: the build's plugins (BB_PLUGIN_DIR) or the
 * installed ones (BB_PLUGIN_DIR_REL from the executable's install
 * directory), as bb__beside_exe decides. Without BB_PLUGIN_DIR_REL (tests
 * that compile this file) always BB_PLUGIN_DIR. */
const char *bb__default_plugin_dir(void);

#endif
