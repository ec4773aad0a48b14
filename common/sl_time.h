/* Clocks: wall-clock time for what is stored or sent (event ids, message
 * ages), monotonic time for deadlines and intervals. Safe from any thread. */
#ifndef SL_TIME_H
#define SL_TIME_H

#include <stdint.h>

/* Wall-clock time (CLOCK_REALTIME) in nanoseconds since the epoch. */
int64_t sl_now_ns(void);

/* Monotonic time (CLOCK_MONOTONIC) in milliseconds from an arbitrary
 * start; never goes back. */
int64_t sl_mono_ms(void);

#endif
