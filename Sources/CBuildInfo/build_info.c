/* The build's revision. Defined here, not in the header, so that only this file is compiled again when
   the revision changes (passed to every C target, it rebuilt BoringSSL at each commit). */
#include "build_info.h"

#ifndef TELTONIKA_REVISION
#define TELTONIKA_REVISION "unknown"
#endif

const char *teltonika_build_revision(void) { return TELTONIKA_REVISION; }
