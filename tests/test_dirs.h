/*
 * test_dirs.h - removing a test's temporary directory (an SSD tier's, made
 * with mkdtemp) and the files in it. Shared by the tier and cluster tests.
 */
#ifndef KVRT_TESTS_TEST_DIRS_H
#define KVRT_TESTS_TEST_DIRS_H

#include <dirent.h>
#include <stdio.h>
#include <unistd.h>

/* Removes a test's SSD directory and the files in it. */
__attribute__((unused)) static void remove_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *e;
    char file[512];
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(file, sizeof(file), "%s/%s", path, e->d_name);
            unlink(file);
        }
    closedir(d);
    rmdir(path);
}

#endif /* KVRT_TESTS_TEST_DIRS_H */
