/* server/version.h — the varserve version, reported by /info, /metrics (build_info) and logs. */
#ifndef VS_SRV_VERSION_H
#define VS_SRV_VERSION_H

#define VS_VERSION "0.1.0"

#endif
