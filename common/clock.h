/* common/clock.h — the one clock for durations and deadlines: CLOCK_MONOTONIC in seconds, so a
 * wall-clock step (NTP, an operator's date) never stretches a timeout. Any thread. */
#ifndef VS_CLOCK_H
#define VS_CLOCK_H

double vs_now_s(void);

#endif
