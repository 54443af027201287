/* The build's revision, for teltonika_build_info. */
#ifndef TELTONIKA_BUILD_INFO_H
#define TELTONIKA_BUILD_INFO_H

/* The source revision of this build: TELTONIKA_REVISION in the environment of `swift build`
   (scripts/release.sh sets it; Package.swift defines it for this target only), else "unknown". */
const char *teltonika_build_revision(void);

#endif
