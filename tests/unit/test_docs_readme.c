/*
 * test_docs_readme.c - the README a newcomer reads first: its
 * documentation list links every page in docs/, and no paragraph is glued
 * to the list item above it (Markdown renders such a line inside the
 * bullet; a blank line must separate them).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>

#include "support/tool_run.h"

Test(docs_readme, every_page_in_docs_is_linked)
{
    char *readme = tool_slurp(KVRT_SOURCE_DIR "/README.md");
    DIR *d = opendir(KVRT_SOURCE_DIR "/docs");
    cr_assert_not_null(d);
    int pages = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t n = strlen(e->d_name);
        if (n < 4 || strcmp(e->d_name + n - 3, ".md") != 0)
            continue;
        char link[300];
        snprintf(link, sizeof(link), "](docs/%s)", e->d_name);
        cr_assert(strstr(readme, link), "README.md does not link docs/%s", e->d_name);
        pages++;
    }
    closedir(d);
    cr_assert_geq(pages, 9);
    free(readme);
}

Test(docs_readme, no_paragraph_continues_a_list_item)
{
    char *readme = tool_slurp(KVRT_SOURCE_DIR "/README.md");
    bool in_item = false, in_code = false;
    int number = 1;
    for (char *line = readme; *line; number++) {
        size_t len = strcspn(line, "\n");
        if (!strncmp(line, "```", 3))
            in_code = !in_code;
        bool blank = len == 0, item = !strncmp(line, "- ", 2), indented = line[0] == ' ';
        if (!in_code && in_item && !blank && !item && !indented)
            cr_assert_fail("README.md:%d continues the list item above it: %.*s", number,
                           (int)len, line);
        in_item = !in_code && (item || (in_item && indented));
        line += len + (line[len] == '\n');
    }
    free(readme);
}
