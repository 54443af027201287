// hiredis 0.14 (Debian's libhiredis-dev): synchronous API only; no TLS.
#include <hiredis/hiredis.h>
