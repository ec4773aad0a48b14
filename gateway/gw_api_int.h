/* Private to the server API (gw_api.c, gw_api_parse.c): what these files
 * share. Not for other modules. */
#ifndef GW_API_INT_H
#define GW_API_INT_H

#include "gw_server_int.h"

#define API_PREFIX "/v1/api"

#endif /* GW_API_INT_H */
