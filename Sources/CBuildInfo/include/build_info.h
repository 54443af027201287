/* The build's revision, for teltonika_build_info. */
#ifndef TELTONIKA_BUILD_INFO_H
#define TELTONIKA_BUILD_INFO_H

/* The source revision of this build. scripts/release.sh defines it on the command line
   (-Xcc -DTELTONIKA_REVISION="\"<git revision>\""); other builds report "unknown". */
#ifndef TELTONIKA_REVISION
#define TELTONIKA_REVISION "unknown"
#endif

static inline const char *teltonika_build_revision(void) { return TELTONIKA_REVISION; }

#endif
