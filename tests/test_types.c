/* SPDX-License-Identifier: MIT */
/*
 * test_types.c - calls whose arrays do not match the exported function are
 * rejected by the compiler: wrong element type, wrong output type, too few
 * or too many arguments, a function that was not exported.  Each snippet is
 * compiled with the project's compiler and flags; a correct one must
 * compile, so that the failures are not for some unrelated reason.
 */
#include "test.h"

#include <unistd.h>

static const char prelude[] =
    "#include <pmap.h>\n"
    "struct s { int a; };\n"
    "static int add(int x, int y) { return x + y; }\n"
    "PMAP_EXPORT(add, int, int, int);\n"
    "static int len(const char *s) { return s[0]; }\n"
    "PMAP_EXPORT(len, int, const char *);\n"
    "static int get(const struct s *self, int x) { return self->a + x; }\n"
    "PMAP_EXPORT_METHOD(get, int, struct s, int);\n"
    "static int other(int x) { return x; }\n"
    "int f(pool_t *p);\n"
    "int f(pool_t *p) {\n"
    "    int xs[4] = {0}, out[4]; double ds[4] = {0}; long ls[4];\n"
    "    const char *strs[4] = {0}; struct s obj = {1}; (void)ds; (void)ls;\n"
    "    (void)strs; (void)obj; (void)other;\n";

/* Compiles prelude + body + "}"; returns the compiler's exit status. */
static int compile(const char *name, const char *body)
{
    const char *cc = getenv("PMAP_CC");
    const char *flags = getenv("PMAP_CFLAGS");
    if (cc == NULL || flags == NULL)
        SKIP("PMAP_CC and PMAP_CFLAGS are set by make test");
    char path[256], cmd[2048];
    snprintf(path, sizeof path, "%s/tests/types_%s.c", test_build_dir(), name);
    FILE *f = fopen(path, "w");
    ASSERT(f != NULL);
    fprintf(f, "%s%s\n}\n", prelude, body);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s %s -Iinclude -fsyntax-only %s 2>/dev/null",
             cc, flags, path);
    return test_run(cmd, NULL, 0);
}

TEST(types_correct_calls_compile)
{
    ASSERT_EQ(compile("good",
                      "return pool_map(p, add, 4, out, xs, xs)\n"
                      "     + pool_map(p, add, 4, out, xs, PMAP_CONST(2))\n"
                      "     + pool_map(p, len, 4, out, strs)\n"
                      "     + pool_map(p, get, 4, out, &obj, xs);"),
              0);
}

TEST(types_wrong_array_type_is_a_compile_error)
{
    ASSERT(compile("array", "return pool_map(p, add, 4, out, xs, ds);") != 0);
    ASSERT(compile("string", "return pool_map(p, len, 4, out, xs);") != 0);
    ASSERT(compile("object", "return pool_map(p, get, 4, out, xs, xs);") != 0);
}

TEST(types_wrong_output_type_is_a_compile_error)
{
    ASSERT(compile("out", "return pool_map(p, add, 4, ls, xs, xs);") != 0);
}

TEST(types_wrong_argument_count_is_a_compile_error)
{
    ASSERT(compile("few", "return pool_map(p, add, 4, out, xs);") != 0);
    ASSERT(compile("many", "return pool_map(p, add, 4, out, xs, xs, xs);")
           != 0);
}

TEST(types_unexported_function_is_a_compile_error)
{
    ASSERT(compile("unexported", "return pool_map(p, other, 4, out, xs);")
           != 0);
}
