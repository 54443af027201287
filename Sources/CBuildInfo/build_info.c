/* The build's revision, compiled in by scripts/release.sh ("unknown" otherwise). */
#include "build_info.h"
