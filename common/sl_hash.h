/* String hashing for the in-memory tables of every tier (FNV-1a, 64 bits).
 * Not for anything stored or sent: the values may change between versions. */
#ifndef SL_HASH_H
#define SL_HASH_H

#include <stdint.h>

/* The FNV-1a offset basis: the seed of a hash that starts from nothing. */
#define SL_HASH_SEED 14695981039346656037ULL

/* Returns the FNV-1a hash of the NUL-terminated s, continuing from seed
 * (SL_HASH_SEED, or that mixed with a key of another kind). */
static inline uint64_t sl_hash_str(uint64_t seed, const char *s)
{
    uint64_t h = seed;

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

#endif
