/* SPDX-License-Identifier: MIT */
/*
 * test_types.c - calls whose arrays do not match the exported function are
 * rejected by the compiler: wrong element type, wrong output type, too few
 * or too many arguments, a function that was not exported.  Each snippet is
 * compiled with the project's compiler and flags, and again with the
 * compiler's defaults (no -Werror: gcc 12 only warns about a mismatched
 * pointer) by gcc and clang where they are installed, whose first error
 * must name the mistake; a correct one must compile, so that the failures
 * are not for some unrelated reason.  Programs of several files
 * (PMAP_DECLARE in a header, PMAP_EXPORT in one file) link and run.
 */
#include "test.h"

#include <stdbool.h>
#include <string.h>
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

/* Writes prelude + body + "}" to BUILD/tests/KIND_NAME.EXT, whose path
 * goes to path. */
static void write_program(char *path, size_t size, const char *kind,
                          const char *name, const char *ext,
                          const char *prelude_text, const char *body)
{
    snprintf(path, size, "%s/tests/%s_%s.%s", test_build_dir(), kind, name,
             ext);
    FILE *f = fopen(path, "w");
    ASSERT(f != NULL);
    fprintf(f, "%s%s\n}\n", prelude_text, body);
    fclose(f);
}

/* Compiles prelude + body + "}"; returns the compiler's exit status. */
static int compile(const char *name, const char *body)
{
    const char *cc = getenv("PMAP_CC");
    const char *flags = getenv("PMAP_CFLAGS");
    if (cc == NULL || flags == NULL)
        SKIP("PMAP_CC and PMAP_CFLAGS are set by make test");
    char path[256], cmd[2048];
    write_program(path, sizeof path, "types", name, "c", prelude, body);
    snprintf(cmd, sizeof cmd, "%s %s -Iinclude -fsyntax-only %s 2>/dev/null",
             cc, flags, path);
    return test_run(cmd, NULL, 0);
}

/* Runs a compiler's command line; returns its exit status and stores its
 * first line that says "error" in first. */
static int run_compiler(const char *cmd, char *first, size_t size)
{
    char out[16384];
    int rc = test_run(cmd, out, sizeof out);
    first[0] = 0;
    for (char *line = strtok(out, "\n"); line != NULL;
         line = strtok(NULL, "\n")) {
        if (strstr(line, "error") != NULL) {
            snprintf(first, size, "%s", line);
            break;
        }
    }
    return rc;
}

/* Compiles prelude + body + "}" with cc's default flags; returns its exit
 * status and stores its first line that says "error" in first. */
static int compile_plain(const char *cc, const char *name, const char *body,
                         char *first, size_t size)
{
    char path[256], cmd[2048], kind[64];
    snprintf(kind, sizeof kind, "plain_%s", cc);
    write_program(path, sizeof path, kind, name, "c", prelude, body);
    snprintf(cmd, sizeof cmd, "%s -Iinclude -fsyntax-only %s 2>&1", cc, path);
    return run_compiler(cmd, first, size);
}

static bool have(const char *tool)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", tool);
    return test_run(cmd, NULL, 0) == 0;
}

/* A mistake must fail with gcc's and clang's defaults, and the first error
 * must mention `want`. */
static void expect_error(const char *name, const char *body, const char *want)
{
    static const char *const compilers[] = {"gcc", "clang"};
    int tried = 0;
    for (size_t i = 0; i < 2; i++) {
        if (!have(compilers[i]))
            continue;
        tried++;
        char first[1024];
        if (compile_plain(compilers[i], name, body, first, sizeof first) == 0)
            test_fail(__FILE__, __LINE__, "%s compiles %s with its defaults",
                      compilers[i], name);
        else if (strstr(first, want) == NULL)
            test_fail(__FILE__, __LINE__,
                      "%s: first error of %s does not say \"%s\": %s",
                      compilers[i], name, want, first);
    }
    if (tried == 0)
        SKIP("neither gcc nor clang is installed");
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

TEST(types_mistakes_are_errors_with_default_flags)
{
    char first[1024];
    if (have("gcc"))
        ASSERT_EQ(compile_plain("gcc", "good",
                                "return pool_map(p, add, 4, out, xs, xs)\n"
                                "     + pool_map(p, len, 4, out, strs);",
                                first, sizeof first), 0);
    /* Each names the argument's type and the one expected. */
    expect_error("array", "return pool_map(p, add, 4, out, xs, ds);",
                 "incompatible pointer type");
    expect_error("scalar", "return pool_map(p, add, 4, out, xs, 5);",
                 "int");
    expect_error("out", "return pool_map(p, add, 4, ls, xs, xs);",
                 "incompatible pointer type");
    expect_error("few", "return pool_map(p, add, 4, out, xs);",
                 "wrong number of arguments");
    expect_error("many", "return pool_map(p, add, 4, out, xs, xs, xs);",
                 "wrong number of arguments");
}

TEST(types_common_slips_name_their_fix)
{
    expect_error("unexported", "return pool_map(p, other, 4, out, xs);",
                 "other_is_not_exported__use_PMAP_EXPORT");
    expect_error("pointer",
                 "int (*fp)(int, int) = add;\n"
                 "return pool_map(p, fp, 4, out, xs, xs);",
                 "fp_is_not_exported__use_PMAP_EXPORT");
    expect_error("export_after_declare",
                 "return 0; }\n"
                 "static long twice(long x) { return 2 * x; }\n"
                 "PMAP_DECLARE(twice, long, long);\n"
                 "PMAP_EXPORT(twice, long, long);\n"
                 "static void nothing(void) {",
                 "twice_was_PMAP_DECLAREd__export_it_by_name_alone");
}

/* The example of three files (examples/multi: a header with PMAP_DECLARE,
 * the functions' file with PMAP_EXPORT(fn), main's file) runs; linked
 * without the file that exports, it fails to link, naming what is
 * missing. */
TEST(types_program_of_several_files)
{
    char path[256], out[4096];
    snprintf(path, sizeof path, "%s/examples/multi 2>&1", test_build_dir());
    ASSERT_EQ(test_run(path, out, sizeof out), 0);
    ASSERT(strstr(out, "sum of squares of 1..1000: 333833500") != NULL);
    ASSERT(strstr(out, "mean of 1..1000: 500.5") != NULL);
}

TEST(types_declared_but_not_exported_fails_to_link)
{
    const char *cc = getenv("PMAP_CC"), *flags = getenv("PMAP_CFLAGS");
    const char *lib = getenv("PMAP_LIB");
    if (cc == NULL || flags == NULL || lib == NULL)
        SKIP("PMAP_CC, PMAP_CFLAGS and PMAP_LIB are set by make test");
    char cmd[4096], out[8192];
    snprintf(cmd, sizeof cmd,
             "%s %s -Iinclude -Iexamples/multi -o %s/tests/multi_unlinked "
             "examples/multi/main.c %s 2>&1",
             cc, flags, test_build_dir(), lib);
    ASSERT(test_run(cmd, out, sizeof out) != 0);
    ASSERT(strstr(out, "pmap_export__scaled") != NULL);
}

/* ---- C++ ---------------------------------------------------------------- */

static const char cxx_prelude[] =
    "#include <pmap.h>\n"
    "#include <vector>\n"
    "static int add(int x, int y) { return x + y; }\n"
    "PMAP_EXPORT(add, int, int, int);\n"
    "static int other(int x) { return x; }\n"
    "int f(pool_t *p);\n"
    "int f(pool_t *p) {\n"
    "    std::vector<int> xs(4), out(4); double ds[4] = {0}; long ls[4];\n"
    "    (void)ds; (void)ls; (void)other;\n";

/* Compiles cxx_prelude + body + "}" as C++17 with cxx's defaults; returns
 * its exit status and its first line that says "error" in first. */
static int compile_cxx(const char *cxx, const char *name, const char *body,
                       char *first, size_t size)
{
    char path[256], cmd[2048], kind[64];
    snprintf(kind, sizeof kind, "cxx_%s", cxx);
    write_program(path, sizeof path, kind, name, "cc", cxx_prelude, body);
    snprintf(cmd, sizeof cmd, "%s -std=c++17 -Iinclude -fsyntax-only %s 2>&1",
             cxx, path);
    return run_compiler(cmd, first, size);
}

/* The same macros in C++17, with g++ and clang++ where installed: a
 * correct call compiles, each mistake fails and its first error says what
 * it is. */
TEST(types_cpp_checks_as_c_does)
{
    static const char *const compilers[] = {"g++", "clang++"};
    static const struct {
        const char *name, *body, *want;
    } mistakes[] = {
        {"array", "return pool_map(p, add, 4, out.data(), xs.data(), ds);",
         "double"},
        {"out", "return pool_map(p, add, 4, ls, xs.data(), xs.data());",
         "long"},
        {"count", "return pool_map(p, add, 4, out.data(), xs.data());",
         "wrong number of arguments"},
        {"unexported", "return pool_map(p, other, 4, out.data(), xs.data());",
         "other_is_not_exported__use_PMAP_EXPORT"},
    };
    int tried = 0;
    for (size_t c = 0; c < 2; c++) {
        if (!have(compilers[c]))
            continue;
        tried++;
        char first[1024];
        ASSERT_EQ(compile_cxx(compilers[c], "good",
                              "return pool_map(p, add, 4, out.data(), "
                              "xs.data(), PMAP_CONST(2))\n"
                              "     + pool_call(p, add, &out[0], 1, 2);",
                              first, sizeof first),
                  0);
        for (size_t i = 0; i < sizeof mistakes / sizeof mistakes[0]; i++) {
            int rc = compile_cxx(compilers[c], mistakes[i].name,
                                 mistakes[i].body, first, sizeof first);
            if (rc == 0)
                test_fail(__FILE__, __LINE__, "%s compiles %s", compilers[c],
                          mistakes[i].name);
            else if (strstr(first, mistakes[i].want) == NULL)
                test_fail(__FILE__, __LINE__,
                          "%s: first error of %s does not say \"%s\": %s",
                          compilers[c], mistakes[i].name, mistakes[i].want,
                          first);
        }
    }
    if (tried == 0)
        SKIP("neither g++ nor clang++ is installed");
}

/* The C++ example (examples/cpp/pathos.cc), built by make where a C++
 * compiler is, runs the essay's maps with the right results. */
TEST(types_cpp_example_runs)
{
    const char *cxx = getenv("PMAP_CXX");
    if (cxx == NULL || cxx[0] == 0)
        SKIP("no C++ compiler: make did not build the C++ example");
    char path[256], out[4096];
    snprintf(path, sizeof path, "%s/examples/pathos_cpp 2>&1",
             test_build_dir());
    ASSERT_EQ(test_run(path, out, sizeof out), 0);
    ASSERT(strstr(out, "add:     11 22 33 44") != NULL);
    ASSERT(strstr(out, "scale:   0.5 1 1.5") != NULL);
    ASSERT(strstr(out, "const:   101 102 103 104") != NULL);
    ASSERT(strstr(out, "length:  7 5 2 3") != NULL);
    ASSERT(strstr(out, "total:   6 500") != NULL);
    ASSERT(strstr(out, "call:    42") != NULL);
}
