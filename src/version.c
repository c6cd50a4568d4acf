/* SPDX-License-Identifier: MIT */
/*
 * version.c - the library's version at run time, for a program to check
 * against the header it was compiled with.
 */
#include "pmap_internal.h"

int pmap_version(void)
{
    return PMAP_VERSION;
}
