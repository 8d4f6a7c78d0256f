#ifndef DDPTRAIN_CZLIB_SHIM_H
#define DDPTRAIN_CZLIB_SHIM_H
#include <zlib.h>
#endif
