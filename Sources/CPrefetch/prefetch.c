// The target's functions are inline in include/prefetch.h; SwiftPM wants a source file.
#include "prefetch.h"
