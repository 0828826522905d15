/*
 * test_snapshot.c: the store file: slots taken and freed, the pages a
 * freed slot keeps for the next connection and gives back when swept,
 * what another process sees when it opens the store (adoption), and a
 * standby's warm mappings of other workers' stores.
 */
#include "core/xrayd.h"
#include "relay/snapshot.h"

#include <stdlib.h>
#include <sys/wait.h>

#include "unit.h"

#define RING 8192

static xr_store_t *new_store(char *path, size_t n, uint32_t nslots)
{
    snprintf(path, n, "/tmp/xrayd-unit-snap.%d", (int) getpid());
    char err[256];
    xr_store_t *s = xr_store_create(path, nslots, RING, err, sizeof(err));
    if (s == NULL)
        FAIL("%s", err);
    return s;
}

static xr_pslot_t *take(xr_store_t *s, uint64_t id, char fill)
{
    xr_pslot_t *p = xr_store_alloc(s);
    ASSERT_NOT_NULL(p);
    p->id = id;
    p->live = XR_PSLOT_LIVE;
    memset(xr_store_ring(s, p, XR_RING_IN_UP), fill, RING);
    return p;
}

/* A slot freed last is taken first, with its pages: the next
 * connection finds the previous one's bytes (it writes before it reads),
 * and a sweep gives back only the pages of slots free long enough. */
TEST(freed_slots_keep_their_pages_until_swept)
{
    char path[128];
    xr_store_t *s = new_store(path, sizeof(path), 4);
    xr_pslot_t *a = take(s, 1, 'a'), *b = take(s, 2, 'b');
    xr_store_release(s, a, 1000);
    xr_store_release(s, b, 1500);
    ASSERT_EQ(xr_store_used(s), 0);
    /* b, freed last, is taken first, and still has its bytes */
    xr_pslot_t *c = take(s, 3, 0);
    ASSERT_PTR_EQ(c, b);
    /* a has been free 600 ms: kept at an age of 1 s, given back at 0.5 s */
    ASSERT_EQ(xr_store_sweep(s, 1600, 1000), 1);
    ASSERT_EQ(xr_store_ring(s, a, XR_RING_IN_UP)[100], 'a');
    ASSERT_EQ(xr_store_sweep(s, 1600, 500), 0);
    ASSERT_EQ(xr_store_ring(s, a, XR_RING_IN_UP)[100], 0);
    /* a live slot is never swept, and a slot released without keeping
     * gives its pages back at once */
    ASSERT_EQ(xr_store_sweep(s, 99999, 0), 0);
    memset(xr_store_ring(s, c, XR_RING_IN_UP), 'c', RING);
    xr_store_release(s, c, 0);
    ASSERT_EQ(xr_store_ring(s, c, XR_RING_IN_UP)[7], 0);
    ASSERT_EQ(xr_store_sweep(s, 99999, 0), 0);
    xr_store_close(s, 1);
}

/* Another process opening the store (a replacement adopting a dead
 * worker's) finds the live slots with their bytes, and no kept page of
 * a free slot turns it live. */
TEST(adopter_sees_live_slots_only)
{
    char path[128], err[256];
    xr_store_t *s = new_store(path, sizeof(path), 300);
    xr_pslot_t *live[200];
    for (int i = 0; i < 200; i++)
        live[i] = take(s, 100 + (uint64_t) i, (char) ('A' + i % 26));
    for (int i = 0; i < 200; i += 2)
        xr_store_release(s, live[i], 5000); /* kept, not trimmed */
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        xr_store_t *a = xr_store_open(path, err, sizeof(err));
        if (a == NULL || xr_store_used(a) != 100)
            _exit(1);
        uint32_t found = 0;
        for (uint32_t i = 0; i < xr_store_nslots(a); i++) {
            if (!xr_store_is_live(a, i))
                continue;
            xr_pslot_t *p = xr_store_slot(a, i);
            int k = (int) (p->id - 100);
            if (p->live != XR_PSLOT_LIVE || k % 2 != 1 ||
                xr_store_ring(a, p, XR_RING_IN_UP)[RING - 1] != 'A' + k % 26)
                _exit(2);
            found++;
        }
        xr_store_close(a, 0);
        _exit(found == 100 ? 0 : 3);
    }
    ASSERT_CHILD_OK(pid);
    xr_store_close(s, 1);
}

/* How many of this process's mappings are of path. */
static int mappings_of(const char *path)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return -1;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, path) != NULL;
    fclose(f);
    return n;
}

/* A standby maps another process's store ahead (xr_store_warm counts its
 * live slots as they come and go), and its takeover opens the store
 * through that mapping, renamed meanwhile, instead of mapping it again. */
TEST(standby_warms_a_store_and_adopts_through_that_mapping)
{
    char path[128], moved[160], err[256];
    xr_store_t *s = new_store(path, sizeof(path), 300);
    xr_pslot_t *live[50];
    for (int i = 0; i < 50; i++)
        live[i] = take(s, 100 + (uint64_t) i, (char) ('a' + i % 26));
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        char *paths[] = {path};
        if (xr_store_warm(paths, 1) != 50 || mappings_of(path) != 2)
            _exit(1);
        xr_store_release(s, live[0], 0); /* the running worker ends one */
        if (xr_store_warm(paths, 1) != 49)
            _exit(2);
        snprintf(moved, sizeof(moved), "%s.adopted", path);
        if (rename(path, moved) != 0)
            _exit(3);
        xr_store_t *a = xr_store_open(moved, err, sizeof(err));
        if (a == NULL || xr_store_used(a) != 49 || mappings_of(path) != 2)
            _exit(4);
        xr_pslot_t *p = xr_store_slot(a, 1);
        if (p->id != 101 || xr_store_ring(a, p, XR_RING_IN_UP)[RING - 1] != 'b')
            _exit(5);
        /* The warm mapping is the store's now: not unmapped under it. */
        xr_store_unwarm();
        if (mappings_of(path) != 2 || p->id != 101)
            _exit(6);
        xr_store_close(a, 1);
        _exit(0);
    }
    ASSERT_CHILD_OK(pid);
    xr_store_close(s, 0);
}

/* A store whose file is gone (its worker ended) is unmapped at the next
 * round; a file that is not a store is skipped. */
TEST(standby_forgets_stores_whose_files_are_gone)
{
    char path[128], junk[160];
    xr_store_t *s = new_store(path, sizeof(path), 10);
    take(s, 7, 'x');
    snprintf(junk, sizeof(junk), "%s.junk", path);
    FILE *f = fopen(junk, "w");
    ASSERT_NOT_NULL(f);
    fputs("not a store\n", f);
    fclose(f);
    char *paths[] = {path, junk};
    ASSERT_EQ(xr_store_warm(paths, 2), 1);
    ASSERT_EQ(mappings_of(path), 2);
    ASSERT_EQ(mappings_of(junk), 0);
    xr_store_close(s, 1);
    ASSERT_EQ(xr_store_warm(paths, 0), 0);
    ASSERT_EQ(mappings_of(path), 0);
    unlink(junk);
}
