/* Self-test of the bench's pure parts (histogram, framing, JWT, parsing). */
#ifndef SB_SELFTEST_H
#define SB_SELFTEST_H

/* Runs every check, prints one line per failure and a closing
 * "N passed, N failed" line; returns the number of failures. */
int sb_selftest(void);

#endif
