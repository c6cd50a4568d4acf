/* SPDX-License-Identifier: MIT */
/*
 * error.c - names and descriptions of libpmap's error codes, generated from
 * the one list in pmap.h, so that a new code needs one line there.
 */
#include "pmap_internal.h"

const char *pmap_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define PMAP__ERROR_TEXT(name, value, text)                                   \
    case PMAP_##name:                                                         \
        return text;
        PMAP_ERROR_MAP(PMAP__ERROR_TEXT)
#undef PMAP__ERROR_TEXT
    default:
        return code > 0 ? "some items failed" : "unknown error";
    }
}

const char *pmap_err_name(int code)
{
    switch (code) {
    case 0:
        return "OK";
#define PMAP__ERROR_NAME(name, value, text)                                   \
    case PMAP_##name:                                                         \
        return #name;
        PMAP_ERROR_MAP(PMAP__ERROR_NAME)
#undef PMAP__ERROR_NAME
    default:
        return code > 0 ? "EITEMS" : "EUNKNOWN";
    }
}
